/* node_internal.h: the node's state, shared by node.c (wiring, blocks, validation, sync),
 * replica.c (the pBFT host's I/O) and api.c (the HTTP API). Nothing outside node/ includes it. */
#ifndef NODE_INTERNAL_H
#define NODE_INTERNAL_H

#include "consensus/host.h"
#include "contracts/contracts.h"
#include "net/http.h"
#include "net/net.h"
#include "node/admission.h"
#include "node/archive.h"
#include "node/mempool.h"
#include "node/node.h"
#include "node/replica.h"
#include "node/tailcheck.h"
#include "node/votes.h"

#include <jansson.h>
#include <uv.h>

#define NODE_VALIDATED_CACHE 16
#define NODE_GOSSIP_TXS_MAX 4096
#define NODE_SYNC_BLOCKS_MAX 64
#define NODE_SYNC_BYTES_MAX (8u << 20)
#define NODE_LATENCY_TABLE (1u << 16)
#define NODE_LATENCY_BUCKETS 14
#define NODE_SIGCACHE (1u << 16)
#define NODE_VAL_SIGS (1u << 12)
/* Least time a proposal's validation waits for the mempool to finish verifying txs it holds
 * (then it verifies them itself); it waits up to a quarter of the view timeout when that is
 * longer. Both go through the same thread pool, so waiting is rarely slower than repeating. */
#define NODE_VAL_WAIT_MS 200
/* A proposal's budget (docs/performance.md, "Proposal size"): at most this many bytes of txs,
 * and at most as many txs as this node applies in NODE_PROPOSAL_APPLY_MS by its own recent
 * apply cost per tx, but never fewer than NODE_PROPOSAL_TXS_MIN (so a slow disk cannot starve
 * the chain); while admission finds the queue contended, up to NODE_PROPOSAL_TXS_BUSY as long as
 * they apply within NODE_PROPOSAL_APPLY_BUSY_MS; never more than the genesis max_block_txs.
 * A block's LMDB cost grows slower than its tx count (its txs share B-tree pages), so under a
 * standing queue bigger blocks commit more txs per second; without one they would only hold a
 * burst's first txs back. */
#define NODE_PROPOSAL_BYTES_MAX (1u << 20)
#define NODE_PROPOSAL_APPLY_MS 100
#define NODE_PROPOSAL_TXS_MIN 256u
#define NODE_PROPOSAL_TXS_BUSY 1024u
#define NODE_PROPOSAL_APPLY_BUSY_MS 300

/* Block requests from observers: a token bucket per observer slot (NODE_OBS_REQS_PER_S, a
 * burst of as many), at most one waiting per observer (a newer one replaces it), served from
 * the tick at most NODE_OBS_SERVES_PER_TICK at a time with replies of at most
 * NODE_OBS_SYNC_BYTES_MAX, so observers never delay a consensus message. */
#define NODE_OBS_REQS_PER_S 20
#define NODE_OBS_SERVES_PER_TICK 2
#define NODE_OBS_SYNC_BYTES_MAX (2u << 20)
typedef struct {
    bool want;
    uint64_t from;
    uint32_t max;
    uint64_t tokens_m, last_ms; /* milli-tokens */
} node_obs_req;

#define NODE_DISK_CHECK_MS 2000
#define NODE_DISK_RESUME_BYTES (16u << 20)

/* One verified (txid, signature) pair: the pair itself, so a hit needs no hashing. */
typedef struct {
    uint8_t txid[32];
    uint8_t sig[64];
} node_sigcache_entry;

typedef struct node {
    uv_loop_t loop;
    node_config cfg;
    ledger_genesis g;
    ledger_keyfile key;
    int self; /* validator index, or -1 for an observer */
    ledger_store *store;
    node_votes *votes; /* validators only: the vote record, own LMDB env (votes.h) */
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
    uv_timer_t t_valwait;             /* ends a validation's wait for the mempool's checks */
    struct val_job *val_waiting;      /* that validation, or NULL */
    uint64_t seq_view, seq_fetch;
    uint64_t want_proposal; /* height the replica asked a proposal for, 0 = none */
    bool propose_armed;
    uint64_t apply_ns_per_tx; /* moving average over blocks of 32+ txs; 0 = none seen yet */
    /* The block executed last whose LMDB commit (on the store's writer thread) has not been
     * waited for: its view and what its bookkeeping needs (node_commit_done). */
    uv_async_t a_commit;
    bool pend_active;
    uint64_t pend_height;
    ledger_block_view *pend_v;
    ledger_apply_info pend_info;
    uint64_t pend_t0_ns, pend_exec_end_ns; /* when its apply began and its execution ended */
    _Atomic uint64_t commit_end_ns;        /* when the writer thread's last commit ended */
    bool validating; /* a node_validate job is under way */
    uint8_t validated[NODE_VALIDATED_CACHE][32];
    /* validated[i]'s block view, kept for its apply (NULL once used or dropped). Its txs may be
     * borrowed from the mempool, so every view is freed before node_mempool_block_applied. */
    ledger_block_view *views[NODE_VALIDATED_CACHE];
    uint32_t validated_next;
    uint64_t events_refused; /* consensus events the host refused (full FIFO, no memory) */
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
    uint64_t blocks_applied, txs_committed, txs_refused, view_changes;
    uint64_t last_commit_wall_ms, started_wall_ms;
    uint64_t http_txs_accepted, http_txs_rejected;
    uint64_t lat_key[NODE_LATENCY_TABLE];
    uint64_t lat_ms[NODE_LATENCY_TABLE];
    uint64_t lat_bucket[NODE_LATENCY_BUCKETS + 1];
    uint64_t lat_sum_ms, lat_count;
    node_sigcache_entry sigcache[NODE_SIGCACHE];
    /* Signatures of txs in recently applied blocks, direct-mapped on their first bytes: gossip
     * that brings one again is dropped before it is decoded (it can only be refused ECOMMITTED,
     * or be another body under a signature that cannot verify for it). */
    uint8_t committed_sig[NODE_SIGCACHE][64];
    /* Signatures the validation in flight is verifying (entries of val_epoch only): gossip that
     * brings one of them is dropped instead of being verified a second time. If the proposal
     * fails, the sender's regossip brings the tx back. */
    uint8_t val_sig[NODE_VAL_SIGS][64];
    uint32_t val_sig_epoch[NODE_VAL_SIGS];
    uint32_t val_epoch;
    node_archive archive;
    uint64_t orders_committed; /* order txs in applied blocks (applied or refused) */
    uint64_t events_maker_reads; /* stored blocks read to name a fill's maker in events (api_events.c) */
    struct node_events_src *events; /* GET /v1/events (api_events.c); NULL until first used */
    struct node_proofs *proofs;     /* proofs waiting for their header (api_proof.c); NULL until used */
    /* Disk full (docs/operate.md "Limits and faults"): no voting, no applying, txs refused
     * 503 EDISKFULL, reads served; free space is checked every NODE_DISK_CHECK_MS and once
     * NODE_DISK_RESUME_BYTES are free temd restarts itself (NODE_EXIT_RESTART) to resume. */
    bool disk_full;
    uint64_t disk_checked_ms;
    /* uv_now of the last consensus message from each validator (0 = none yet): /v1/status
     * names as disconnected the validators silent for a view timeout, whatever TCP says. */
    uint64_t last_pbft_ms[LEDGER_VALIDATORS_MAX];
    /* A validator started on an empty data dir may have voted before it lost its disk: it
     * follows the chain without voting until it has heard the tip from f+1 validators (one at
     * least honest) and passed the highest of them (docs/operate.md). */
    bool sync_first;
    uint64_t sf_tip_mask;
    uint64_t sf_tip;
    node_obs_req obs_req[NET_OBSERVERS_MAX];
    uint32_t obs_rr;
    uint64_t obs_reqs_dropped;
    uint64_t malformed_msgs; /* peer messages that did not decode (logged 1 in 1000) */
    node_faults faults; /* tailcheck.c: failed mempool recovery, damaged stored blocks */
    struct node_sync *sync; /* state sync (sync.c): serving snapshots, joining from one */
    /* Admission at the HTTP door (admission.h) and re-gossip (node.c regossip). */
    node_admission adm;
    uint64_t regossip_txs_sent;
    uint64_t regossip_budget; /* txs still allowed this second */
    uint64_t regossip_round_ms;
} node;

/* Wall-clock milliseconds since the Unix epoch. */
uint64_t node_now_ms(void);
/* One log line: time, level, height, view, message. */
void node_log(node *n, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Called when the mempool has made a client tx durable (it is PENDING there): note its time for
 * the commit-latency histogram and see whether a proposal is due. (Its gossip was queued when
 * its signature verified: node.c, mempool_announce.) */
void node_tx_accepted(node *n, const uint8_t txid[32]);
/* Remembers that the pair (txid, sig) verified (the mempool admitted the tx), and asks. */
void node_sigcache_add(node *n, const uint8_t txid[32], const uint8_t sig[64]);
bool node_sigcache_has(const node *n, const uint8_t txid[32], const uint8_t sig[64]);

/* The peer transport's frame callback: decodes one NodeMessage from peer p and dispatches it
 * (consensus, tx gossip, block requests and replies). Exposed for tests/fuzz/fuzz_dispatch.c. */
void node_on_frame(void *ctx, const net_peer_info *p, const uint8_t *data, size_t len);
/* Ends the pending commit of the block executed last, if any (ledger_store_commit_wait), and does
 * that block's bookkeeping: mempool, admission, events, snapshot, log. On a failed commit the
 * node pauses (disk full) or stops, as for a block that does not apply, and false is returned.
 * Called from the commit's wake-up, before every apply and at stop. */
bool node_commit_done(node *n);

/* node.c, for the host's I/O in replica.c. */
/* Stops the node: closes every handle; node_run returns `code` (if non-zero). */
void node_stop(node *n, int code);
/* Disk full: true for LEDGER_EDISKFULL and LMDB's map full, and for LEDGER_EIO while the data
 * dir's file system has less than NODE_DISK_RESUME_BYTES free (LMDB's short writes). node_enter_disk_full
 * pauses the node (no voting, txs refused 503 EDISKFULL, reads served) until on_tick sees
 * space again and restarts it. */
bool node_is_disk_full(const node *n, int rc);
void node_enter_disk_full(node *n, const char *what, int rc);
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


/* api_events.c: GET /v1/events; after each applied block; at shutdown after the loop ends. */
void node_events_http(void *ctx, net_http_req *req, const net_http_request *r);
/* Publishes block `height`'s events to the subscribers (built from v, the block's view, when
 * given and complete; else read back from the store). v is borrowed for the call. */
void node_events_committed(node *n, uint64_t height, const ledger_block_view *v);
void node_events_stop(node *n);
/* api_proof.c: GET /v1/accounts/{key}/proof (dispatched from api.c's accounts route); at
 * shutdown after the loop ends. */
void node_account_proof_http(void *ctx, net_http_req *req, const net_http_request *r);
void node_proofs_stop(node *n);
/* api_clock.c: GET /v1/genesis; the clock fields of /v1/status. */
void node_genesis_http(void *ctx, net_http_req *req, const net_http_request *r);
void node_status_clock(node *n, json_t *status);

/* api_feeder.c: GET /v1/feeder/slots/{s}; the records it needs, noted after every applied block;
 * the curtailed_wh and binding of /v1/trades' continuous-auction fills. */
void node_api_feeder_routes(node *n, net_http *h);
void node_feeder_note_block(node *n, uint64_t height, const ledger_block_view *v);
void node_feeder_trades_annotate(node *n, uint64_t slot, json_t *arr);
/* ui.c: GET /ui and /ui/, the live page (node/ui/index.html, embedded at build time). */
void node_ui_http(void *ctx, net_http_req *req, const net_http_request *r);

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
/* A delivery slot in a path or query: a decimal from 0 to the last slot the chain's clock can
 * hold. node_reply_bad_slot answers 400 ESLOT naming that range. */
bool node_parse_slot(const node *n, const char *s, uint64_t *out);
void node_reply_bad_slot(const node *n, net_http_req *req);

#endif
