/* node_internal.h: the node's state, shared by node.c (wiring, blocks, validation, sync),
 * replica.c (the pBFT host's I/O) and api.c (the HTTP API). Nothing outside node/ includes it. */
#ifndef NODE_INTERNAL_H
#define NODE_INTERNAL_H

#include "consensus/host.h"
#include "contracts/contracts.h"
#include "net/http.h"
#include "net/net.h"
#include "node/mempool.h"
#include "node/node.h"
#include "node/replica.h"

#include <jansson.h>
#include <uv.h>

#define NODE_VALIDATED_CACHE 16
#define NODE_GOSSIP_TXS_MAX 4096
#define NODE_SYNC_BLOCKS_MAX 64
#define NODE_SYNC_BYTES_MAX (8u << 20)
#define NODE_LATENCY_TABLE (1u << 16)
#define NODE_LATENCY_BUCKETS 14
#define NODE_SIGCACHE (1u << 16)
#define NODE_ARCHIVED_KEEP 64

#define NODE_CURTAIL_KEEP 32
typedef struct {
    uint64_t height;
    uint8_t txid[32];
    uint64_t curtailed_wh;
    char binding[48];
} node_curtail;

typedef struct node {
    uv_loop_t loop;
    node_config cfg;
    ledger_genesis g;
    ledger_keyfile key;
    int self; /* validator index, or -1 for an observer */
    ledger_store *store;
    contracts_market *mkt;
    ledger_executor ex;
    net *net;
    net_http *http;
    node_mempool *mp;

    /* consensus (validators only): the replica, driven by the host whose I/O is replica.c */
    bool rep_ok;
    pbft_replica rep;
    host host;
    bool host_ok;
    uint64_t rep_view; /* the view last logged, to count view changes */
    uv_timer_t t_view, t_fetch, t_propose, t_tick;
    uint64_t seq_view, seq_fetch;
    uint64_t want_proposal; /* height the replica asked a proposal for, 0 = none */
    bool propose_armed;
    bool validating; /* a node_validate job is under way */
    uint8_t validated[NODE_VALIDATED_CACHE][32];
    uint32_t validated_next;
    uint64_t events_refused; /* consensus events the host refused (full FIFO, no memory) */
    uint64_t fetch_from;  /* block sync wanted from this height (0 = none) */
    uint32_t sync_rr;
    uint64_t sync_sent_ms;
    uint64_t last_regossip_ms;

    /* gossip of client txs to the other validators */
    uint8_t *gossip[NODE_GOSSIP_TXS_MAX];
    size_t gossip_len[NODE_GOSSIP_TXS_MAX];
    uint32_t ngossip;

    uv_signal_t sig_int, sig_term;
    bool stopping;
    int exit_code;

    /* metrics */
    uint64_t blocks_applied, txs_committed, txs_refused, view_changes;
    uint64_t last_commit_wall_ms, started_wall_ms;
    uint64_t http_txs_accepted, http_txs_rejected;
    uint64_t lat_key[NODE_LATENCY_TABLE];
    uint64_t lat_ms[NODE_LATENCY_TABLE];
    uint64_t lat_bucket[NODE_LATENCY_BUCKETS + 1];
    uint64_t lat_sum_ms, lat_count;
    uint8_t sigcache[NODE_SIGCACHE][32];
    uint64_t archived[NODE_ARCHIVED_KEEP]; /* slot + 1 of recently archived trade lists */
    uint32_t archived_next;
    node_curtail curtail[NODE_CURTAIL_KEEP];
    uint32_t curtail_next;
    uint64_t ncurtail;
    struct node_events_src *events; /* GET /v1/events (api_events.c); NULL until first used */
} node;

/* Wall-clock milliseconds since the Unix epoch. */
uint64_t node_now_ms(void);
/* One log line: time, level, height, view, message. */
void node_log(node *n, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Called when the mempool has made a client tx durable: queue it for gossip and note its time
 * for the commit-latency histogram. */
void node_tx_accepted(node *n, const uint8_t txid[32], const uint8_t *tx, size_t len);
/* Remembers that this SignedTx's signature verified (the mempool admitted it), and asks. */
void node_sigcache_add_tx(node *n, const uint8_t *tx, size_t len);
bool node_sigcache_has(node *n, const uint8_t txid[32], const uint8_t sig[64]);

/* node.c, for the host's I/O in replica.c. */
/* Stops the node: closes every handle; node_run returns `code` (if non-zero). */
void node_stop(node *n, int code);
/* pbft_hash_fn for temd: ledger_block_hash of the block's header; -1 if the bytes are no block. */
int node_block_hash(void *ctx, const uint8_t *blk, size_t len, uint8_t out[32]);
/* A PbftMessage to validator `to` or to all (PBFT_TO_ALL); best effort, failures logged. */
void node_send_pbft(node *n, uint32_t to, const uint8_t *msg, size_t len);
/* Asks a connected validator (round-robin) for committed blocks from `from` on. */
void node_request_blocks(node *n, uint64_t from);
/* Applies a certified block durably and does the node's bookkeeping; on failure logs and stops
 * the node (n->stopping). hash: the block's hash when the replica delivered it, or NULL. */
void node_apply_committed(node *n, uint64_t height, const uint8_t *blk, size_t len, const uint8_t *cert,
                          size_t cert_len, const uint8_t hash[32]);
/* Arms the proposal timer if the replica asked for a proposal on the current tip. */
void node_maybe_propose(node *n);
/* Starts validating a proposal whose parent is applied; answers through node_replica_validated.
 * PBFT_OK or PBFT_ENOMEM. bytes are borrowed for the call. */
int node_validate(node *n, uint64_t height, const uint8_t hash[32], const uint8_t *bytes, size_t len);

/* api_market.c: before applying a block at time_ms, archive the trades of slots whose gate has
 * closed; after it, note the curtailed fills of the block's txs. */
void node_archive_trades(node *n, uint64_t time_ms);
void node_note_curtailments(node *n, uint64_t height, const uint8_t (*txids)[32], size_t ntx);

/* api_events.c: GET /v1/events; after each applied block; at shutdown after the loop ends. */
void node_events_http(void *ctx, net_http_req *req, const net_http_request *r);
void node_events_committed(node *n, uint64_t height);
void node_events_stop(node *n);
/* api_clock.c: GET /v1/genesis; the clock fields of /v1/status. */
void node_genesis_http(void *ctx, net_http_req *req, const net_http_request *r);
void node_status_clock(node *n, json_t *status);

/* api.c */
TEM_WUR int node_api_start(node *n);
/* JSON answers: bytes as hex; j is consumed; errors as {"error","code"}. A client that has gone
 * away is not an error for the node. */
json_t *node_hexj(const uint8_t *b, size_t n);
json_t *node_pb_json(const ProtobufCMessage *m);
void node_reply_json(net_http_req *req, int status, json_t *j);
void node_reply_err(net_http_req *req, int status, const char *code, const char *msg);
/* The mempool's pre-check: contracts_signer_check on the current state. 0 or its code. */
int node_api_precheck(void *ctx, const ledger_tx *tx);

#endif
