/* temd.c: the TEM validator daemon's entry point. The node itself (net + consensus + ledger +
 * contracts wiring) is issue #7; until it lands temd only checks its configuration's genesis. */
#include "ledger/ledger.h"

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--check-genesis") == 0) {
        ledger_genesis g;
        char err[256];
        int rc = ledger_genesis_load(argv[2], &g, err, sizeof err);
        if (rc != LEDGER_OK) {
            fprintf(stderr, "temd: genesis: %s\n", err);
            return 1;
        }
        char h[65];
        tem_hex(h, g.hash, 32);
        printf("%s %s validators=%u\n", g.chain_id, h, g.n_validators);
        ledger_genesis_free(&g);
        return 0;
    }
    fprintf(stderr, "usage: temd --check-genesis GENESIS.json\n");
    return 2;
}
