/* ctl.h: what the temctl verbs share: option lookup, file I/O, tx-to-JSON. Every verb is
 * `int ctl_<verb>_main(int argc, char **argv)` with argv[0] the verb name and returns the exit
 * status: 0 ok, 1 invalid input, 2 usage. */
#ifndef CTL_H
#define CTL_H

#include "ledger/ledger.h"

#include <jansson.h>

enum { CTL_OK = 0, CTL_INVALID = 1, CTL_USAGE = 2 };

/* The node the query verbs ask when neither --node nor $TEMCTL_NODE names one: the HTTP port of
 * the first validator of `make testnet`, the compose file and deploy/temd.conf.example. */
#define CTL_NODE_DEFAULT "127.0.0.1:26700"
/* temctl's version: the node's, so one number names a release. */
#define CTL_VERSION "0.1.0"

/* "--name value" options after argv[first]; flags without a value are listed in `bool_flags`
 * (space-separated names without dashes). Positional arguments are collected in order. */
#define CTL_OPTS_MAX 64
typedef struct {
    int n;
    const char *name[CTL_OPTS_MAX];
    char namebuf[CTL_OPTS_MAX][64];
    const char *val[CTL_OPTS_MAX];
    int npos;
    const char *pos[CTL_OPTS_MAX];
    bool help;
} ctl_opts;
/* Returns 0, or -1 with a message on stderr (unknown shape, too many options). */
int ctl_opts_parse(ctl_opts *o, int argc, char **argv, int first, const char *bool_flags);
/* Last value of --name, or NULL. For repeatable options use ctl_opt_next. */
const char *ctl_opt(const ctl_opts *o, const char *name);
/* Iterates values of a repeatable option: start with *it = 0. */
const char *ctl_opt_next(const ctl_opts *o, const char *name, int *it);
bool ctl_flag(const ctl_opts *o, const char *name);
/* Parses an unsigned decimal option; false on junk or overflow. */
bool ctl_parse_u64(const char *s, uint64_t *out);

/* Reads a whole file ("-" = stdin) into a tem_malloc'd buffer (NUL-terminated, not counted).
 * Returns 0 or -1 (message on stderr). max bounds the size. */
int ctl_read_file(const char *path, size_t max, uint8_t **out, size_t *len);
/* Writes bytes to path ("-" = stdout). 0 or -1. */
int ctl_write_file(const char *path, const void *data, size_t len);

/* JSON description of a decoded tx: txid, signer, nonce, chain_id, kind and its fields.
 * New reference; NULL on OOM. */
json_t *ctl_tx_json(const ledger_tx *tx);
/* Prints j compactly on one line to stdout and drops the reference. */
void ctl_print_json(json_t *j);
/* Hex string helper into a json string. */
json_t *ctl_json_hex(const uint8_t *b, size_t n);

/* Builds and signs a tx of `kind` (order, cancel, reading, transfer, register, deposit,
 * set-tariff) from the kind's options in o (see `temctl tx --help`). *buf is tem_malloc'd.
 * CTL_OK, CTL_USAGE (bad option values, message on stderr), CTL_INVALID. */
int ctl_tx_build(ctl_opts *o, const char *kind, const ledger_keyfile *k, const char *chain, uint64_t nonce,
                 uint8_t **buf, size_t *len, uint8_t txid[32]);
/* Chain id from --chain-id or --genesis; false (message on stderr) when required and absent. */
bool ctl_chain_id_of(const ctl_opts *o, char *buf, size_t n, bool required);

/* Verbs implemented in node/ctl/ctl_*.c. The testnet and sim verbs live in node/sim/testnet.h. */
int ctl_keygen_main(int argc, char **argv);
int ctl_genesis_main(int argc, char **argv);
int ctl_tx_main(int argc, char **argv);
int ctl_exec_main(int argc, char **argv);
int ctl_feeder_main(int argc, char **argv);
int ctl_replay_main(int argc, char **argv);
/* `temctl feeder VERB ...`: argv[1] = "flow" | "limit" | "install" | "help" (node/ctl/ctl_feeder.c). */
/* Node queries (node/ctl/ctl_node.c): submit, status, block, account, book, trades, tx TXID. */
int ctl_node_main(int argc, char **argv);
/* `account`: with --prove the proof check of node/ctl/ctl_proof.c, else ctl_node_main. */
int ctl_account_main(int argc, char **argv);

#endif
