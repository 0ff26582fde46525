/* tailcheck.h: storage faults temd survives instead of exiting or serving bad data
 * (docs/operate.md, "Limits and faults"):
 *   - a mempool log whose recovery failed: the node stays up, serves reads, follows the chain
 *     without voting and refuses txs (503 EMEMPOOLLOG) until the operator restarts it with
 *     --mempool-log-reset (or fixes what the ERROR line names);
 *   - damaged stored blocks: at start the last tail_check_blocks blocks are checked against
 *     their recorded hash, their certificate and the prev_hash chain, and any block that fails
 *     a read check later joins them; such a block is never served (503 EREPAIRING on HTTP,
 *     block sync stops before it) and is refetched from peers, verified and rewritten.
 * Everything here runs on the node's loop thread. node.c, api.c and metrics.c call the hooks. */
#ifndef NODE_TAILCHECK_H
#define NODE_TAILCHECK_H

#include "net/http.h"
#include "node/node.h"

#include <jansson.h>
#include <stdio.h>

/* Damaged blocks remembered for repair; past this many, the rest are still never served
 * (ledger_store_block refuses them) but wait for a restart to be refetched. */
#define NODE_TAIL_BAD_MAX 256
/* Refetch requests: one round every NODE_TAIL_RETRY_MS, at most NODE_TAIL_REQS_PER_ROUND
 * heights per round, each to the next connected validator. */
#define NODE_TAIL_RETRY_MS 1000
#define NODE_TAIL_REQS_PER_ROUND 8

typedef struct {
    /* mempool-log recovery */
    bool mempool_failed;
    int mempool_rc;
    char mempool_path[NODE_PATH_MAX + 32];
    char mempool_action[192];
    /* damaged stored blocks awaiting repair: height, recorded hash, reason */
    uint32_t nbad;
    uint64_t bad[NODE_TAIL_BAD_MAX];
    uint8_t bad_hash[NODE_TAIL_BAD_MAX][32];
    char bad_why[NODE_TAIL_BAD_MAX][64];
    uint64_t found, repaired, refetch_refused; /* since start */
    uint64_t checked_from, checked_to;          /* the start-up check's range (0, 0 = none) */
    uint64_t next_round_ms;
    uint32_t rr, round;
} node_faults;

struct node;

/* Recovers the mempool log at logpath. A damaged log is moved aside to
 * logpath.damaged-<unix time> first when cfg.mempool_log_reset is set. When recovery fails the
 * node is marked degraded (ERROR logged, not voting, txs refused) and 0 is returned: temd stays
 * up. -1 only when the operator's reset cannot be carried out (the log cannot be moved aside). */
int node_faults_mempool_recover(struct node *n, const char *logpath);
/* False while a fault forbids voting (a failed mempool-log recovery). */
bool node_faults_may_vote(const struct node *n);
/* Answers 503 EMEMPOOLLOG to a tx submission on a degraded node. True if it answered. */
bool node_faults_refuse_submit(struct node *n, net_http_req *req);

/* The start-up check of the stored tail (cfg.tail_check_blocks blocks below the tip). */
void node_tail_check(struct node *n);
/* True while block h is known damaged and waits for its refetch: it must not be served. */
bool node_tail_is_bad(const struct node *n, uint64_t h);
/* A read of block h failed its check (LEDGER_ECORRUPT): checks it in full and, if damaged,
 * queues it for refetch. True if h is now waiting for repair. */
bool node_tail_read_failed(struct node *n, uint64_t h);
/* From the tick: asks peers for the damaged blocks (at most once per NODE_TAIL_RETRY_MS). */
void node_tail_tick(struct node *n);
/* A BlockBatch from peer `peer`: the blocks at damaged heights are verified and rewritten. */
struct Tem__V1__BlockBatch;
void node_tail_got_blocks(struct node *n, uint32_t peer, const struct Tem__V1__BlockBatch *bb);

/* /v1/status fields: mempool_recovery, faults, blocks_repaired; /metrics series. */
void node_faults_status(struct node *n, json_t *status);
void node_faults_metrics(struct node *n, FILE *f);

#endif
