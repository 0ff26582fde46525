/* load.h: the open-loop load generator behind `temctl load` and tests/bench/bench_cluster.c
 * (docs/performance.md "Load generator"). Orders are pre-signed for many signers whose keys
 * derive from a seed; they are offered at a fixed rate, each at its due time whatever the
 * nodes answer (a slow node does not slow the offered rate: requests that cannot start at once
 * queue in the generator, at most 2 s of them, and their wait counts), over libcurl's multi interface with keep-alive
 * connections, spread over the validators. Commits are learned from one node's GET /v1/events;
 * latency is from a tx's due time to the arrival of its commit event, so queueing anywhere is
 * never hidden.
 *
 * A signer's txs go, in nonce order, to one validator (signer i to node i % n_nodes), one
 * request at a time per signer: a refused tx is offered again at a later due time, so a
 * refusal never leaves a nonce gap behind an accepted tx.
 *
 * Functions return 0 on success and -1 on failure with a message on stderr. */
#ifndef SIM_LOAD_H
#define SIM_LOAD_H

#include "ledger/ledger.h"

#include <stdio.h>
#include <sys/types.h>

#define CTL_LOAD_NODES_MAX 16
#define CTL_LOAD_SIGNERS_MAX 65536u
#define CTL_LOAD_BATCH_MAX 4096u

/* The secret key of load signer i under `seed`: SHA-256("tem-load" || seed || i || k) for the
 * first k = 0, 1, ... that is a valid secp256k1 key. */
void ctl_load_signer_key(uint64_t seed, uint32_t i, uint8_t sec[32], uint8_t pub[33]);
/* The public key of scale participant i: 02 || SHA-256("tem-scale" || u32le(i)), the right shape
 * for a compressed secp256k1 key that nobody holds the secret of (tests/tools/gen_genesis.py
 * writes the same keys). */
void ctl_load_scale_key(uint32_t i, uint8_t pub[33]);

/* ------------------------------------------------------------------ a local cluster */
typedef struct {
    const char *temd;       /* path of temd */
    const char *dir;        /* an existing empty directory: keys, genesis, data dirs, logs */
    int base_port;          /* peers on base_port + i, HTTP on base_port + 10 + i (below 32768) */
    uint32_t n_nodes;       /* 1..CTL_LOAD_NODES_MAX */
    uint32_t signers;       /* participants whose keys derive from seed */
    uint64_t seed;
    uint32_t max_block_txs; /* genesis limit; 0 = 4000 */
    /* Participants beyond the signers, for scale runs: ctl_load_scale_key(0..n-1), written to
     * the genesis as a stream; at most LEDGER_PARTICIPANTS_MAX - signers. */
    uint32_t extra_participants;
    const char *const *temd_args; /* extra flags for every temd (e.g. "--admission-wait-ms-max", "2000") */
    uint32_t n_temd_args;
} ctl_load_cluster_config;

typedef struct {
    uint32_t n;
    pid_t pid[CTL_LOAD_NODES_MAX];
    char http[CTL_LOAD_NODES_MAX][32]; /* "127.0.0.1:port" */
    char genesis[512];
} ctl_load_cluster;

/* Writes validator keys DIR/v<i>.key and DIR/genesis.json (60 s slots; every signer a prosumer
 * with money and tokens, then the extra participants) and sets out->http and out->genesis; -1
 * (nothing written) when signers + extra_participants exceed LEDGER_PARTICIPANTS_MAX, or when a
 * file cannot be written. ctl_load_cluster_start does this first. */
int ctl_load_cluster_genesis(const ctl_load_cluster_config *cfg, ctl_load_cluster *out);
/* Writes validator keys and a genesis (ctl_load_cluster_genesis), starts n temd (their pids also in DIR/pids; each gets SIGTERM if the generator
 * dies) and waits (60 s, plus 120 s per million extra participants, at most) until node 0 has
 * committed 2 blocks. On -1 every process started is already stopped. */
int ctl_load_cluster_start(const ctl_load_cluster_config *cfg, ctl_load_cluster *out);
/* SIGTERM, then SIGKILL after 5 s, to every pid started; waits for each. Idempotent. */
void ctl_load_cluster_stop(ctl_load_cluster *c);

/* ------------------------------------------------------------------ the generator */
typedef struct ctl_load ctl_load;

typedef struct {
    const char *const *nodes; /* HTTP "host:port" of each validator the load is spread over */
    uint32_t n_nodes;
    const char *genesis;      /* the chain's genesis file (chain id, slots) */
    uint64_t seed;
    uint32_t signers;         /* 1..CTL_LOAD_SIGNERS_MAX; must be participants of the chain */
    uint32_t conns_per_node;  /* keep-alive connections per node; 0 = 16 */
    int timeout_ms;           /* per request; 0 = 10000 */
    bool fresh;               /* the chain is new: every signer's nonce is 0 (no lookups) */
} ctl_load_config;

typedef struct {
    double rate_per_s;  /* offered txs per second */
    double duration_s;  /* how long to offer */
    uint32_t batch;     /* txs per request: 1 = POST /v1/tx, more = POST /v1/txs of the txs due */
    double drain_s;     /* after offering, wait this long at most for accepted txs to commit */
    double warmup_s;    /* commits in the first warmup_s do not count in committed_per_s */
    /* Before offering, wait this long at most until every node reports an empty mempool: each
     * has applied the blocks that hold what earlier phases left queued (a validator the quorum
     * left behind catches up). 0 = start at once. */
    double settle_s;
} ctl_load_phase;

typedef struct {
    double offered_per_s, duration_s;
    double settle_ms;          /* time spent waiting for the nodes to settle before the phase */
    bool settled;              /* every node reported an empty mempool (true when settle_s is 0) */
    uint64_t offered;          /* txs whose due time came */
    uint64_t accepted;         /* answered 202 (or accepted in a batch) */
    uint64_t refused_busy;     /* 503 EBUSY */
    uint64_t refused_share;    /* 429 ESIGNERSHARE / EADDRSHARE */
    uint64_t refused_other;    /* any other refusal (status or code) */
    uint64_t refused_retry_after; /* refusals (busy or share) that carried Retry-After */
    uint64_t retry_after_max_s;
    uint64_t transport_errors; /* no HTTP answer (timeout, connection refused) */
    uint64_t no_signer;        /* due with no idle signer left for its node: not sent */
    uint64_t unsent_backlog;   /* due while 2 s of offers already waited for a connection: not sent */
    uint64_t committed;        /* accepted txs seen committed (or refused in a block) */
    uint64_t committed_refused;/* ... of which the contracts refused (receipt code != 0) */
    uint64_t uncommitted;      /* accepted txs not seen committed by the end of the drain */
    double committed_per_s;    /* our txs committed per second after warmup, while offering */
    double lat_p50_ms, lat_p99_ms, lat_max_ms; /* due time -> commit event, accepted txs */
    double ack_p50_ms, ack_p99_ms;             /* due time -> its 202 */
    double wait_p50_ms, wait_p99_ms, wait_max_ms; /* 202 -> commit event: what admission bounds */
    double send_lag_max_ms;    /* longest gap between a due time and its request's start */
    double server_mean_ms, server_max_ms; /* request sent -> answer (libcurl's total minus pretransfer) */
    uint64_t blocks;           /* blocks seen while offering */
    double block_interval_ms;  /* mean interval of those blocks */
    double block_gap_max_ms;   /* longest time without a block while offering */
    double gen_cpu_us_per_offer; /* the generator's own CPU (user + system, getrusage) from the
                                  * first offer to the end of the drain, per offer */
    double gen_cpu_pct;        /* ... as a share of one core over that time */
} ctl_load_result;

/* Reads the genesis, derives the signers' keys and asks node 0 for each signer's next nonce.
 * -1 on a bad genesis, an unreachable node, or no memory. */
int ctl_load_new(const ctl_load_config *cfg, ctl_load **out);
void ctl_load_free(ctl_load *l);
/* Offers one phase and fills *out. Signs the txs the phase may need before its clock starts.
 * Signers' nonces carry over from phase to phase. 0, or -1 (event stream unreachable, OOM). */
int ctl_load_run(ctl_load *l, const ctl_load_phase *ph, ctl_load_result *out);
/* One line of JSON with every field of r, then a newline. */
void ctl_load_result_print(const ctl_load_result *r, FILE *f);

/* `temctl load`: run against given nodes, or start a local cluster first. */
int ctl_load_main(int argc, char **argv);

#endif
