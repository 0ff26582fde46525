/* node.h: temd, the validator (or observer) daemon: configuration, and the node that wires the
 * LMDB ledger, the market contracts, the pBFT replica, the peer transport, the mempool and the
 * HTTP API on one libuv loop. docs/api.md and docs/operate.md describe it from the outside. */
#ifndef NODE_H
#define NODE_H

#include "ledger/ledger.h"

#define NODE_VERSION "0.1.0"
#define NODE_PATH_MAX 512
#define NODE_OBSERVER_KEYS_MAX 64
/* node_run's status when temd should start again in place (space came back after a full
 * disk): temd re-executes itself with the same arguments. */
#define NODE_EXIT_RESTART 75

#define NODE_ERRNO_MAP(X)                                                                          \
    X(ECONFIG, -501, "invalid configuration")                                                      \
    X(ESTORE, -503, "cannot open the ledger store")                                                \
    X(EHTTP, -505, "cannot start the HTTP API")                                                    \
    X(ECONSENSUS, -506, "cannot start consensus")                                                  \
    X(ENOMEM, -508, "out of memory")

enum node_err {
    NODE_OK = 0,
#define NODE_X(name, val, msg) NODE_##name = val,
    NODE_ERRNO_MAP(NODE_X)
#undef NODE_X
};
const char *node_strerror(int err);

enum { NODE_LOG_DEBUG = 0, NODE_LOG_INFO = 1, NODE_LOG_WARN = 2, NODE_LOG_ERROR = 3 };
/* log_format: one text line per event, or one JSON object per line for log collectors. */
enum { NODE_LOG_TEXT = 0, NODE_LOG_JSON = 1 };

typedef struct {
    char config[NODE_PATH_MAX];     /* the config file read, "" when none (for the start-up line) */
    char data_dir[NODE_PATH_MAX];
    char genesis[NODE_PATH_MAX];
    char key[NODE_PATH_MAX];        /* Ed25519 key file (validator, or the observer's own) */
    char listen[128];               /* peer listener host:port; default: the genesis address */
    char http[128];                 /* HTTP API host:port; default: the genesis http, or none */
    char tls_cert[NODE_PATH_MAX];   /* optional TLS for the HTTP API */
    char tls_key[NODE_PATH_MAX];
    bool observer;                  /* follow the chain without voting */
    /* Observers: only keys listed with observer_key (repeatable; 64-hex Ed25519) may connect;
     * accept_observers = true admits any key (an open read-only node; default false). */
    bool accept_observers;
    uint8_t observer_keys[NODE_OBSERVER_KEYS_MAX][32];
    uint32_t n_observer_keys;
    bool mempool_log_reset;         /* move a damaged mempool log aside and start empty */
    uint64_t tail_check_blocks;     /* stored blocks below the tip checked at start; default 64, 0 = off */
    int log_level;                  /* NODE_LOG_* */
    int log_format;                 /* NODE_LOG_TEXT (default) or NODE_LOG_JSON */
    uint32_t mempool_txs_max;       /* default 100000 */
    uint32_t mempool_nonce_window;  /* default 64 */
    uint64_t block_interval_ms;     /* longest gap between blocks when idle; default view_timeout/4 */
    uint64_t batch_delay_ms;        /* wait after the first pending tx before proposing; default 60 */
    uint64_t max_clock_drift_ms;    /* a proposal's time may be this far ahead of ours; default 5000 */
    uint64_t peer_rate_bytes_per_s; /* per-peer inbound limits; default 64 MiB/s, 20000 msgs/s */
    uint64_t peer_rate_msgs_per_s;
    uint64_t http_body_bytes_max;   /* default 4 MiB */
    /* HTTP limits per client address and overall (net/http.h; docs/operate.md "Limits and
     * faults"): connections, requests per second with a burst, and the request deadline. */
    uint64_t http_conns_max;          /* default 1024 */
    uint64_t http_conns_per_addr_max; /* default 32 */
    uint64_t http_rate_reqs_per_s;    /* default 200; 0 = unlimited */
    uint64_t http_rate_burst_ms;      /* default 5000 (1000 requests at the default rate) */
    uint64_t http_request_timeout_ms; /* default 10000 */
    /* Peer port (net/net.h): pre-handshake slots, in all and per address; observers' send
     * queue; how long a send queue may make no progress, and a frame may stay unfinished. */
    uint64_t peer_handshakes_max;           /* default 32 */
    uint64_t peer_handshakes_per_addr_max;  /* default 4 */
    uint64_t peer_handshakes_per_s;          /* default 100: new ones from non-validator hosts */
    uint64_t peer_handshakes_per_addr_per_s; /* default 10 */
    uint64_t peer_observer_queue_bytes_max; /* default 16 MiB */
    uint64_t peer_send_stall_timeout_ms;    /* default 20000 */
    uint64_t peer_frame_timeout_ms;         /* default 30000 */
    /* Admission (docs/operate.md "Admission"): the longest estimated wait a client's tx may
     * face (beyond it 503 EBUSY with Retry-After; 0 = off), and the share of that queue one
     * signer / one client address may hold (percent, 429 ESIGNERSHARE / EADDRSHARE). */
    uint64_t admission_wait_ms_max;     /* default 2000 */
    uint64_t admission_signer_share_pct; /* default 2 */
    uint64_t admission_addr_share_pct;  /* default 50 */
    /* Percent of admission_wait_ms_max kept as headroom: the estimate looks back over past
     * blocks and the chain may slow while a tx waits. */
    uint64_t admission_headroom_pct;    /* default 10 */
    /* Re-gossip of txs still waiting: only those held this long, at most this many per second,
     * to the current primary only and never to a validator known to hold them. */
    uint64_t regossip_age_ms;           /* default 2000 */
    /* Stored blocks /v1/events may read per block to name fills' makers (api_events.c);
     * default 4 MiB. */
    uint64_t events_maker_read_bytes_max;
    uint64_t regossip_txs_per_s;        /* default 1000; 0 = no re-gossip */
    /* [indexer] section (docs/indexer.md); flags --indexer-postgres-url etc. */
    char indexer_postgres_url[1024]; /* libpq URI; empty = no indexer */
    uint64_t indexer_poll_ms;        /* wait for the next block when caught up; default 100 */
    uint64_t indexer_retry_max_ms;   /* backoff cap after a database error; default 5000 */
    /* [sync] section (docs/operate.md, "Joining by state sync"); keys as below without the
     * sync_ prefix there, flags --state-sync and --sync-*. */
    bool sync_enable;                 /* join from a snapshot when the store is empty */
    bool pipeline_commit;             /* default true: a block's commit overlaps the next height */
    uint64_t sync_snapshot_interval;  /* keep a snapshot every this many blocks; default 1000, 0 = none */
    uint64_t sync_trust_height;       /* take only a snapshot of this height (0 = the newest offered) */
    bool sync_trust_hash_set;
    uint8_t sync_trust_hash[32];      /* ... whose block has this hash (64 hex) */
    uint64_t sync_chunk_timeout_ms;   /* a chunk not answered this long goes to another peer; 5000 */
    uint64_t sync_peer_inflight_max;  /* chunk requests outstanding per peer; default 4 */
    uint64_t sync_chunk_delay_ms;     /* pause between chunk requests (tests, slow links); 0 */
    uint64_t sync_serve_chunks_per_s; /* requests served per peer per second; default 20 */
    bool sync_test_corrupt_chunks;    /* tests only: flip a byte of every chunk served (a bad peer) */
} node_config;

/* Defaults for every field (paths empty). */
void node_config_defaults(node_config *c);
/* Reads an INI file (section [node], keys named like the fields: data_dir, genesis, key, listen,
 * http, tls_cert, tls_key, observer, accept_observers, observer_key (repeatable: each adds one
 * key), log_level (debug|info|warn|error), log_format (text|json),
 * mempool_txs_max, mempool_nonce_window, mempool_log_reset, tail_check_blocks, block_interval_ms, batch_delay_ms,
 * max_clock_drift_ms, peer_rate_bytes_per_s, peer_rate_msgs_per_s, http_body_bytes_max,
 * http_conns_max, http_conns_per_addr_max, http_rate_reqs_per_s, http_rate_burst_ms,
 * http_request_timeout_ms, events_maker_read_bytes_max) and section [indexer] (postgres_url, poll_ms, retry_max_ms).
 * Relative paths in the file (data_dir, genesis, key, tls_cert, tls_key) are taken from the
 * file's folder, as systemd and most daemons do, not from the current directory; flags keep the
 * current directory. NODE_OK or NODE_ECONFIG with a message in err. */
TEM_WUR int node_config_load(node_config *c, const char *path, char *err, size_t errlen);
/* Applies --data-dir, --genesis, --key, --listen, --http, --observer, --log-level, ... (the
 * same names with dashes) over c. NODE_OK or NODE_ECONFIG. */
TEM_WUR int node_config_flags(node_config *c, int argc, char **argv, char *err, size_t errlen);

/* Runs the node until SIGTERM/SIGINT. Returns a process exit status (0 after a clean stop). */
int node_run(const node_config *c);

#endif
