/* fuzz_genesis.c: libFuzzer target for genesis parsing: any input parses or is refused with
 * LEDGER_EGENESIS and a reason, never a crash or a leak. */
#include "ledger/ledger.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ledger_genesis g;
    char err[256];
    int rc = ledger_genesis_parse((const char *)data, size, &g, err, sizeof err);
    if (rc == LEDGER_OK) {
        TEM_ASSERT(g.n_validators >= 1 && g.n_tariffs >= 1);
        ledger_genesis_free(&g);
    } else {
        TEM_ASSERT(rc == LEDGER_EGENESIS || rc == LEDGER_ENOMEM);
        TEM_ASSERT(err[0] != 0 || rc == LEDGER_ENOMEM);
    }
    return 0;
}
