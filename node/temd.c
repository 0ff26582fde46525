/* temd.c: the TEM validator daemon's entry point: configuration from --config FILE and flags,
 * then node_run() until SIGTERM or SIGINT. */
#include "node/node.h"

#include <errno.h>
#include <signal.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f, "usage: temd --config FILE [--data-dir DIR] [--genesis FILE] [--key FILE]\n"
               "            [--listen HOST:PORT] [--http HOST:PORT] [--observer] [--log-level LEVEL]\n"
               "            [--tls-cert PEM --tls-key PEM] [--block-interval-ms MS] ...\n"
               "            [--mempool-log-reset] (once, after an ERROR about a damaged mempool log:\n"
               "            moves it aside; until then temd serves reads but neither votes nor takes txs)\n"
               "            [--state-sync] (an empty data dir joins from a certified snapshot; [sync] keys\n"
               "            are flags --sync-<key>)\n"
               "       temd --version | --help\n"
               "Every [node] key of the config file is also a flag (underscores as dashes);\n"
               "flags override the file. See docs/operate.md.\n");
}

int main(int argc, char **argv) {
    /* A client or peer that closes while we write must cost that one connection (EPIPE), not
     * the process: the default SIGPIPE action would end temd with no log line. */
    signal(SIGPIPE, SIG_IGN);
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        usage(stdout);
        return 0;
    }
    if (argc == 2 && !strcmp(argv[1], "--version")) {
        printf("temd %s\n", NODE_VERSION);
        return 0;
    }
    node_config c;
    node_config_defaults(&c);
    char err[512];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config")) {
            if (i + 1 >= argc || node_config_load(&c, argv[i + 1], err, sizeof err) != NODE_OK) {
                fprintf(stderr, "temd: %s\n", i + 1 >= argc ? "--config needs a file" : err);
                return 2;
            }
        }
    }
    if (node_config_flags(&c, argc, argv, err, sizeof err) != NODE_OK) {
        fprintf(stderr, "temd: %s\n", err);
        usage(stderr);
        return 2;
    }
    if (!c.data_dir[0] || !c.genesis[0] || !c.key[0]) {
        fprintf(stderr, "temd: data_dir, genesis and key are required\n");
        usage(stderr);
        return 2;
    }
    int rc = node_run(&c);
    if (rc == NODE_EXIT_RESTART) {
        /* Everything node_run opened is closed (its descriptors are close-on-exec anyway):
         * start over in place, so a node that paused for a full disk resumes on its own. */
        fprintf(stderr, "temd: restarting\n");
        execv("/proc/self/exe", argv);
        fprintf(stderr, "temd: cannot restart: %s\n", strerror(errno));
        return 1;
    }
    return rc;
}
