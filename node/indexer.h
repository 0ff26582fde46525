/* indexer.h: temd's PostgreSQL indexer (docs/indexer.md). A worker thread reads committed blocks
 * from the node's LMDB store, re-executes them on a private replay store to recover what the
 * chain does at block start (call-auction trades, settlements, balance changes), and writes each
 * block's rows to PostgreSQL in one SQL transaction that also advances the indexed height. The
 * node never waits on it: the worker only reads the store (LMDB read transactions), lags behind
 * when the database is slow or down, and retries with backoff. */
#ifndef NODE_INDEXER_H
#define NODE_INDEXER_H

#include "ledger/ledger.h"
#include "node/node.h"

#define NODE_INDEXER_URL_MAX 1024

typedef struct {
    const char *postgres_url; /* borrowed for the call; copied */
    const char *replay_dir;   /* directory of the private replay store; wiped at start */
    uint64_t poll_ms;         /* wait for the next block when caught up (>= 1) */
    uint64_t retry_max_ms;    /* backoff cap after a database error (>= poll_ms) */
    int log_level;            /* NODE_LOG_* */
    int log_format;           /* NODE_LOG_TEXT or NODE_LOG_JSON, as the node logs */
} node_indexer_config;

typedef struct node_indexer node_indexer;

/* Starts the worker. `store` and `g` are borrowed: both must stay open until
 * node_indexer_stop returns (the worker reads the store from its own thread, which LMDB
 * allows: the environment is opened MDB_NOTLS and ledger_store_block/receipt only touch
 * handles fixed at open). Nothing is contacted yet: connection failures are retried by the
 * worker, and so are failures to create the replay store (logged). Returns 0, or -1 (out of
 * memory, cannot create the thread). */
TEM_WUR int node_indexer_start(const node_indexer_config *cfg, ledger_store *store, const ledger_genesis *g,
                               node_indexer **out);
/* node_indexer_start with temd's settings: the replay store in <data_dir>/indexer-replay. Logs
 * and returns -1 when it cannot start. */
TEM_WUR int node_indexer_start_for(const node_config *c, ledger_store *store, const ledger_genesis *g,
                                   node_indexer **out);

/* Asks the worker to stop, joins it (it finishes the SQL statement in flight; an open SQL
 * transaction is rolled back by the server) and frees everything. NULL is a no-op. */
void node_indexer_stop(node_indexer *ix);

/* Heights the worker has reached (for logs and tests): last block written to PostgreSQL. */
uint64_t node_indexer_height(const node_indexer *ix);

/* Slots s >= 0 whose time genesis_ms + s * slot_ms + off lies in (lo, hi] (lo = INT64_MIN:
 * unbounded below): true and [*first, *last], or false when there is none. The worker uses it
 * to find the slots a block closes (off = -gate_closure_ms) and settles. */
bool node_indexer_slot_range(int64_t genesis_ms, int64_t slot_ms, int64_t off, int64_t lo, int64_t hi,
                             uint64_t *first, uint64_t *last);

#endif
