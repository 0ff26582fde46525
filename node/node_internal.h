/* node_internal.h: the node's state, shared by node.c (wiring, consensus, sync) and api.c (the
 * HTTP API). Nothing outside node/ includes it. */
#ifndef NODE_INTERNAL_H
#define NODE_INTERNAL_H

#include "consensus/pbft.h"
#include "contracts/contracts.h"
#include "net/http.h"
#include "net/net.h"
#include "node/archive.h"
#include "node/mempool.h"
#include "node/node.h"

#include <jansson.h>
#include <uv.h>

#define NODE_VALIDATION_QUEUE_MAX PBFT_LOG_MAX
#define NODE_VALIDATED_CACHE 16
#define NODE_EVENT_QUEUE_MAX 256
#define NODE_GOSSIP_TXS_MAX 4096
#define NODE_SYNC_BLOCKS_MAX 64
#define NODE_SYNC_BYTES_MAX (8u << 20)
#define NODE_LATENCY_TABLE (1u << 16)
#define NODE_LATENCY_BUCKETS 14
#define NODE_SIGCACHE (1u << 16)

/* One verified (txid, signature) pair: the pair itself, so a hit needs no hashing. */
typedef struct {
    uint8_t txid[32];
    uint8_t sig[64];
} node_sigcache_entry;

typedef struct {
    uint64_t height;
    uint8_t hash[32];
    uint8_t *bytes;
    size_t len;
} node_val_req;

/* A queued consensus event whose byte buffers the node owns until it is stepped. */
typedef struct {
    pbft_event ev;
    uint8_t *data, *cert;
} node_queued_event;

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

    /* consensus (validators only) */
    bool rep_ok;
    pbft_replica rep;
    pbft_actions *acts;
    uv_timer_t t_view, t_fetch, t_propose, t_tick;
    uint64_t seq_view, seq_fetch;
    uint64_t want_proposal; /* height the replica asked a proposal for, 0 = none */
    bool propose_armed;
    node_val_req valq[NODE_VALIDATION_QUEUE_MAX];
    uint32_t nvalq;
    bool validating;
    uint8_t validated[NODE_VALIDATED_CACHE][32];
    /* validated[i]'s block view, kept for its apply (NULL once used or dropped). Its txs may be
     * borrowed from the mempool, so every view is freed before node_mempool_block_applied. */
    ledger_block_view *views[NODE_VALIDATED_CACHE];
    uint32_t validated_next;
    node_queued_event evq[NODE_EVENT_QUEUE_MAX];
    uint32_t evq_head, evq_n;
    bool stepping;
    uint64_t fetch_from;  /* block sync wanted from this height (0 = none) */
    uint32_t sync_rr;
    uint64_t sync_sent_ms;
    uint64_t last_regossip_ms;

    /* gossip of client txs to the other validators: txids of durable mempool txs, whose bytes
     * are read from the mempool when the batch is sent */
    uint8_t gossip[NODE_GOSSIP_TXS_MAX][32];
    uint32_t ngossip;

    uv_signal_t sig_int, sig_term;
    bool stopping;
    int exit_code;

    /* metrics */
    uint64_t blocks_applied, txs_committed, txs_refused, view_changes, last_view;
    uint64_t last_commit_wall_ms, started_wall_ms;
    uint64_t http_txs_accepted, http_txs_rejected;
    uint64_t lat_key[NODE_LATENCY_TABLE];
    uint64_t lat_ms[NODE_LATENCY_TABLE];
    uint64_t lat_bucket[NODE_LATENCY_BUCKETS + 1];
    uint64_t lat_sum_ms, lat_count;
    node_sigcache_entry sigcache[NODE_SIGCACHE];
    node_archive archive;
} node;

/* Wall-clock milliseconds since the Unix epoch. */
uint64_t node_now_ms(void);
/* One log line: time, level, height, view, message. */
void node_log(node *n, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Called when the mempool has made a client tx durable (it is PENDING there): queue it for
 * gossip and note its time for the commit-latency histogram. */
void node_tx_accepted(node *n, const uint8_t txid[32]);
/* Remembers that the pair (txid, sig) verified (the mempool admitted the tx), and asks. */
void node_sigcache_add(node *n, const uint8_t txid[32], const uint8_t sig[64]);
bool node_sigcache_has(const node *n, const uint8_t txid[32], const uint8_t sig[64]);
/* Asks for a proposal to be built sooner (a tx arrived while the primary waited idle). */
void node_kick_proposal(node *n);

/* api.c: starts the HTTP API (its own routes and api_market.c's). */
TEM_WUR int node_api_start(node *n);
/* api_market.c: the market views' routes. */
void node_api_market_routes(node *n, net_http *h);
/* api_json.c: JSON answers: bytes as hex; j is consumed; errors as {"error","code"}. A client
 * that has gone away is not an error for the node. */
void node_reply_raw(net_http_req *req, int status, const char *ct, const void *body, size_t len);
json_t *node_hexj(const uint8_t *b, size_t n);
json_t *node_pb_json(const ProtobufCMessage *m);
void node_reply_json(net_http_req *req, int status, json_t *j);
void node_reply_err(net_http_req *req, int status, const char *code, const char *msg);

#endif
