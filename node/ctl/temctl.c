/* temctl.c: the TEM command-line tool: one verb per subcommand, dispatched from a table. Verbs
 * live in node/ctl/ctl_*.c and node/sim/ (testnet, sim); each returns the exit status (0 ok, 1 invalid input, 2 usage). */
#include "node/ctl/ctl.h"
#include "node/sim/load.h"
#include "node/sim/testnet.h"

#include <signal.h>

typedef struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} verb;

int main(int argc, char **argv) {
    /* A node that closes mid-request is an error on that request, not the end of temctl. */
    signal(SIGPIPE, SIG_IGN);
    const verb verbs[] = {
        {"keygen", ctl_keygen_main, "new meter (secp256k1) or validator (Ed25519) key file"},
        {"genesis", ctl_genesis_main, "write a genesis file from flags or a JSON spec"},
        {"tx", ctl_tx_main, "tx sign | tx inspect"},
        {"exec", ctl_exec_main, "run txs through the contracts offline and print receipts"},
        {"feeder", ctl_feeder_main, "feeder flow | limit | install: power flow and the grid check offline"},
        {"replay", ctl_replay_main, "verify a chain from genesis"},
        {"submit", ctl_node_main, "sign and submit a tx to a node"},
        {"status", ctl_node_main, "node status"},
        {"block", ctl_node_main, "a block from a node"},
        {"account", ctl_account_main, "an account from a node; --prove checks its proof"},
        {"book", ctl_node_main, "a slot's order book from a node"},
        {"trades", ctl_node_main, "a slot's trades from a node"},
        {"testnet", ctl_testnet_main, "run a local testnet"},
        {"sim", ctl_sim_main, "run the prosumer simulator against a node"},
        {"load", ctl_load_main, "open-loop load generator (docs/performance.md)"},
    };
    size_t nv = sizeof verbs / sizeof verbs[0];
    if (argc >= 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0)) {
        printf("temctl %s\n", CTL_VERSION);
        return CTL_OK;
    }
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        FILE *f = argc < 2 ? stderr : stdout;
        fprintf(f, "usage: temctl VERB [OPTIONS]   (temctl VERB --help for each; temctl --version)\n");
        for (size_t i = 0; i < nv; i++)
            fprintf(f, "  %-9s %s\n", verbs[i].name, verbs[i].help);
        return argc < 2 ? CTL_USAGE : CTL_OK;
    }
    for (size_t i = 0; i < nv; i++) {
        if (strcmp(argv[1], verbs[i].name) != 0) continue;
        return verbs[i].fn(argc - 1, argv + 1);
    }
    fprintf(stderr, "temctl: unknown verb %s (temctl --help)\n", argv[1]);
    return CTL_USAGE;
}
