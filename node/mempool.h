/* mempool.h: the node's pool of signed txs waiting for a block. A tx enters through
 * node_mempool_submit: cheap checks run at once on the loop thread (decode, dedup by txid, nonce
 * window, bounds), the secp256k1 signature is verified in the libuv thread pool, and the tx is
 * appended to an append-only log on disk that is group-committed (one fdatasync serves every
 * record written since the previous one). Only after that fdatasync does the caller hear rc 0:
 * "accepted" (HTTP 202) means the tx survives a crash of this node until it is committed or
 * superseded. docs/mempool.md describes the log format, the bounds and the eviction rule.
 *
 * Threading: every function runs on the loop thread that owns `loop`. Only the signature check,
 * the record checksum and log compaction run in the thread pool; they touch nothing a function
 * here changes while they run.
 *
 * Errors: `enum node_mempool_err` (-520..-539) for the pool's own refusals; ledger codes
 * (-1xx) pass through unchanged when they come from ledger_tx_decode or the signature check;
 * a precheck callback's own negative code passes through unchanged. */
#ifndef NODE_MEMPOOL_H
#define NODE_MEMPOOL_H

#include <uv.h>

#include "ledger/ledger.h"

/* Bounds on the configuration (node_mempool_new refuses larger values with EINVAL). */
#define NODE_MEMPOOL_TXS_MAX 1000000u
#define NODE_MEMPOOL_NONCE_WINDOW_MAX 65536u
#define NODE_MEMPOOL_VERIFY_JOBS_MAX 16u
#define NODE_MEMPOOL_VERIFY_BATCH_MAX 4096u
#define NODE_MEMPOOL_SUPERSEDED_MAX 1000000u

/* Defaults used when a config field is 0. */
#define NODE_MEMPOOL_BYTES_DEFAULT (64ull << 20)
#define NODE_MEMPOOL_VERIFY_JOBS_DEFAULT 2u
#define NODE_MEMPOOL_VERIFY_BATCH_DEFAULT 256u
#define NODE_MEMPOOL_SUPERSEDED_DEFAULT 4096u
#define NODE_MEMPOOL_COMPACT_MIN_BYTES_DEFAULT (1ull << 20)

/* Log format (docs/mempool.md): a 40-byte header "TEMMPL01" || genesis hash (32), then records
 *   u32le len || u8 type || payload (len - 1 bytes) || u32le check
 * where check = the first 4 bytes (little-endian) of SHA-256(u32le len || type || payload).
 * Type 1 = a SignedTx as submitted. */
#define NODE_MEMPOOL_LOG_MAGIC "TEMMPL01"
#define NODE_MEMPOOL_LOG_HEADER_BYTES 40u
#define NODE_MEMPOOL_REC_TX 1u
#define NODE_MEMPOOL_REC_OVERHEAD_BYTES 9u /* len + type + check */

#define NODE_MEMPOOL_ERRNO_MAP(X)                                                                  \
    X(EFULL, -520, "mempool is full")                                                              \
    X(ESIGNERFULL, -521, "too many pending txs for this signer")                                   \
    X(EDUP, -522, "tx is already in the mempool")                                                  \
    X(ECOMMITTED, -523, "tx is already committed")                                                 \
    X(ENONCELOW, -524, "nonce already used (below the signer's next nonce)")                       \
    X(ENONCEFAR, -525, "nonce too far ahead of the signer's next nonce")                           \
    X(ENONCETAKEN, -526, "another pending tx has the same signer and nonce")                       \
    X(ESUPERSEDED, -527, "nonce consumed by another tx of the same signer")                        \
    X(EIO, -528, "mempool log I/O error")                                                          \
    X(ECORRUPT, -529, "mempool log is unreadable or belongs to another chain")                     \
    X(ENOMEM, -530, "out of memory")                                                               \
    X(ECLOSING, -531, "mempool is closing")                                                        \
    X(EINVAL, -532, "invalid mempool configuration")                                               \
    X(EDISKFULL, -533, "disk full: the mempool log cannot grow")                                   \
    X(EBUSY, -534, "node is busy: the estimated wait for a block exceeds the admission bound")     \
    X(ESIGNERSHARE, -535, "this signer holds its fair share of the queue")                         \
    X(EADDRSHARE, -536, "this client address holds its fair share of the queue")

enum node_mempool_err {
    NODE_MEMPOOL_OK = 0,
#define NODE_MEMPOOL_X(name, val, msg) NODE_MEMPOOL_##name = val,
    NODE_MEMPOOL_ERRNO_MAP(NODE_MEMPOOL_X)
#undef NODE_MEMPOOL_X
};

/* Static message / symbolic name ("EFULL") of a mempool code; any other code is handed to
 * ledger_strerror / ledger_errname. */
const char *node_mempool_strerror(int err);
const char *node_mempool_errname(int err);

typedef struct node_mempool node_mempool;

typedef struct {
    const char *log_path;          /* the log file (e.g. DATA_DIR/mempool.log); copied; its
                                    * directory must exist. LOG_PATH.tmp is used for rewrites. */
    uint32_t txs_max;              /* txs held (in flight + pending); 1..NODE_MEMPOOL_TXS_MAX */
    uint64_t bytes_max;            /* sum of SignedTx bytes held; 0 = NODE_MEMPOOL_BYTES_DEFAULT */
    uint32_t nonce_window;         /* accept nonces in [state nonce, state nonce + window); >= 1 */
    uint32_t per_signer_max;       /* txs held per signer; 1..txs_max */
    uint32_t verify_jobs_max;      /* thread-pool work items verifying at once; 0 = default 2 */
    uint32_t verify_batch_max;     /* txs per work item; 0 = default 256 */
    uint32_t superseded_max;       /* superseded txids remembered for status; 0 = default 4096 */
    uint64_t compact_min_bytes;    /* never rewrite a log smaller than this; 0 = default 1 MiB */
    const ledger_genesis *genesis; /* borrowed, must outlive the pool: limits, chain id, hash */
    /* Optional check on the loop thread after decode and the nonce checks (e.g. registered
     * participant, admin key for admin kinds). Returns 0 or a negative code that refuses the tx
     * (returned by node_mempool_submit unchanged). tx is borrowed for the call. */
    int (*precheck)(void *ctx, const ledger_tx *tx);
    void *precheck_ctx;
    /* Optional: called on the loop thread whenever a tx submitted with a non-zero
     * node_mempool_admit.tag leaves the pool (committed, superseded, refused, closed), so the
     * admission's per-client counts follow the pool exactly. */
    void (*release)(void *ctx, uint32_t tag);
    void *release_ctx;
    /* Optional: called on the loop thread from node_mempool_block_applied for each tx of the
     * block that was submitted here with a non-zero node_mempool_admit.tag, with that
     * submission's t_ms and model_ms: lets admission compare the wait it estimated with the
     * one the tx had (node_admission_observe). Called once per tx; a tx that leaves otherwise
     * (superseded, refused), or that arrived behind a nonce gap (it waited for its signer, not
     * for the queue), is not reported. */
    void (*client_committed)(void *ctx, uint64_t t_ms, uint32_t model_ms);
    void *client_committed_ctx;
    /* Optional, on the loop thread when a queued tx is handed to the thread pool: true if the
     * node already verified this (txid, signature) pair (a proposal's validation did), and the
     * signature is then not verified again. Every validator verifies each tx once. */
    bool (*sig_known)(void *ctx, const uint8_t txid[LEDGER_HASH_BYTES], const uint8_t sig[LEDGER_SECP_SIG_BYTES]);
    void *sig_known_ctx;
    /* Optional, on the loop thread after a verify work item's txs got their answers (each one
     * now verified or refused; node_mempool_sig_state tells which): lets a validation that
     * waits for the pool's checks look again exactly when one ended, instead of polling. */
    void (*verified)(void *ctx);
    void *verified_ctx;
    /* Optional, on the loop thread when a tx submitted with node_mempool_admit.announce passed
     * its signature check and its log record is queued, before the record is durable: lets the
     * node gossip a client's tx without first waiting for its fdatasync (txs being written are
     * selectable for a block too, see node_mempool_select). txid is borrowed for the call; the
     * callback must not call into the pool. */
    void (*announce)(void *ctx, const uint8_t txid[LEDGER_HASH_BYTES]);
    void *announce_ctx;
} node_mempool_config;

/* What admission asks of one submission (node/admission.h): a client's tx is refused with
 * NODE_MEMPOOL_ESIGNERSHARE when its signer already holds signer_max txs (0 = no share), and
 * carries `tag` (0 = none) until it leaves the pool (config.release). */
typedef struct {
    uint32_t signer_max;
    uint32_t tag;
    bool announce; /* call config.announce for it once verified */
    uint64_t t_ms;     /* the caller's clock at submission, given back to config.client_committed */
    uint32_t model_ms; /* admission's estimated wait at submission, likewise */
} node_mempool_admit;

/* Called exactly once for every node_mempool_submit that returned 0, on the loop thread:
 *   rc 0: the signature verified and the record is on disk (its fdatasync completed);
 *   a ledger signature code (LEDGER_ESIG, ESIGHIGHS, ESIGMALFORMED, EPUBKEY): refused, dropped;
 *   NODE_MEMPOOL_EIO: the log write or fdatasync failed, the tx was dropped;
 *   NODE_MEMPOOL_ECLOSING: node_mempool_close ran before the tx became durable.
 * txid is borrowed for the call. The callback may call submit, select, block_applied, status,
 * size and stats, but not node_mempool_close or node_mempool_free. */
typedef void (*node_mempool_done_fn)(void *ctx, int rc, const uint8_t txid[LEDGER_HASH_BYTES]);

/* Counters for tests, /metrics and benchmarks. */
typedef struct {
    uint64_t submitted;         /* submit calls that returned 0 */
    uint64_t refused;           /* submit calls that returned an error */
    uint64_t verify_jobs;       /* thread-pool work items run */
    uint64_t verify_failed;     /* done called with a signature code */
    uint64_t durable;           /* done called with 0 */
    uint64_t log_writes;        /* write(2) calls on the log (a short write counts again) */
    uint64_t log_fsyncs;        /* fdatasync calls on the log */
    uint64_t log_bytes;         /* current size of the log file */
    uint64_t log_live_bytes;    /* bytes of records of txs still pending */
    uint64_t compactions;       /* log rewrites completed (recovery's included) */
    uint64_t committed_dropped; /* pending txs dropped because a block committed them */
    uint64_t superseded;        /* pending txs dropped because their nonce was used */
    uint64_t recovered;         /* txs brought back by node_mempool_recover */
    uint64_t recover_dropped;   /* log records recovery dropped (committed, stale, bad) */
    uint64_t recover_torn_bytes;/* bytes ignored at the end of the log (torn last record) */
    uint64_t recover_damaged;   /* damaged stretches skipped with intact records after them */
    uint64_t recover_skipped_bytes; /* bytes in those stretches (their txs are lost, logged) */
    uint64_t lent;              /* node_mempool_lend calls that found the tx */
    uint32_t parked;            /* removed entries a block view still borrows (now) */
} node_mempool_stats;

/* Allocates the pool and every table at their maximum size and initialises its loop handles.
 * cfg and store are borrowed and must outlive the pool; the store is read on the loop thread
 * (nonces, receipts). Nothing is read or written on disk until node_mempool_recover.
 * NODE_MEMPOOL_OK, NODE_MEMPOOL_EINVAL (a field out of range, no log path, no genesis),
 * NODE_MEMPOOL_ENOMEM, NODE_MEMPOOL_EIO (a libuv handle could not be initialised). */
TEM_WUR int node_mempool_new(uv_loop_t *loop, const node_mempool_config *cfg, ledger_store *store,
                             node_mempool **out);

/* Must run once, before the first submit, at startup (until it succeeds, submit refuses with
 * NODE_MEMPOOL_EIO; a node should not serve without it). Reads the log (if present) up to the first
 * torn or corrupt record (the rest is ignored and counted in recover_torn_bytes), drops records
 * that are committed (ledger_store_receipt finds them), whose nonce is below the signer's state
 * nonce (remembered as superseded) or that fail to decode or verify, re-verifies the rest
 * synchronously on this thread, then rewrites the log compacted (temp file, fdatasync, rename,
 * directory fsync) and opens it for appending. *recovered = txs brought back (may be NULL).
 * NODE_MEMPOOL_OK, NODE_MEMPOOL_EIO, NODE_MEMPOOL_ENOMEM, NODE_MEMPOOL_ECORRUPT (bad header or
 * another chain's log: the file is left as it is), NODE_MEMPOOL_EFULL (the log holds more live
 * txs than txs_max/bytes_max allow: raise the limits rather than lose accepted txs). */
TEM_WUR int node_mempool_recover(node_mempool *m, uint32_t *recovered);

/* Offers one serialised SignedTx (copied; tx may be freed on return). txid_out (may be NULL)
 * receives the txid whenever the tx decoded. Synchronous refusals never call done:
 *   ledger_tx_decode's codes (LEDGER_EDECODE .. LEDGER_ECHAIN, LEDGER_ENOMEM);
 *   NODE_MEMPOOL_EDUP (the txid is in flight or pending), NODE_MEMPOOL_ECOMMITTED (a receipt
 *   exists), NODE_MEMPOOL_ENONCELOW (nonce below the state nonce: a replay, or superseded),
 *   NODE_MEMPOOL_ENONCEFAR (nonce >= state nonce + nonce_window), NODE_MEMPOOL_ENONCETAKEN
 *   (same signer and nonce held with another txid), the precheck's code, NODE_MEMPOOL_EFULL
 *   (txs_max or bytes_max reached: HTTP 503), NODE_MEMPOOL_ESIGNERFULL (per_signer_max),
 *   NODE_MEMPOOL_EIO (no usable log: recover has not succeeded, or a write failed and the log
 *   has not been rewritten yet), NODE_MEMPOOL_ENOMEM,
 *   NODE_MEMPOOL_ECLOSING.
 * Returns 0 when queued: done(ctx, rc, txid) follows later, exactly once. */
TEM_WUR int node_mempool_submit(node_mempool *m, const uint8_t *tx, size_t len,
                                node_mempool_done_fn done, void *ctx,
                                uint8_t txid_out[LEDGER_HASH_BYTES]);

/* node_mempool_submit with admission: as above, plus NODE_MEMPOOL_ESIGNERSHARE (adm->signer_max
 * reached; checked after the nonce checks, so a duplicate or replay keeps its own code). adm
 * may be NULL (= node_mempool_submit). On 0, a non-zero adm->tag is released exactly once. */
TEM_WUR int node_mempool_submit_admit(node_mempool *m, const uint8_t *tx, size_t len,
                                      const node_mempool_admit *adm, node_mempool_done_fn done,
                                      void *ctx, uint8_t txid_out[LEDGER_HASH_BYTES]);

/* Re-gossip bookkeeping (docs/mempool.md, docs/operate.md "Admission"): peer `peer` (validator index < 64) holds `txid`
 * (it gossiped the tx to us), so re-gossip never sends it there. No-op for a tx not held. */
void node_mempool_peer_has(node_mempool *m, const uint8_t txid[LEDGER_HASH_BYTES], uint32_t peer);

/* Picks, oldest first, up to `max` durable txs to re-gossip to `peer` at now_ms (uv_now):
 * held for at least age_ms, not re-gossiped in the last age_ms, and not known to be held by
 * `peer`. Marks them re-gossiped at now_ms. Walks at most scan_max held txs. txs/lens are
 * arrays of max (caller's), borrowed like select's. Returns the count. */
uint32_t node_mempool_regossip(node_mempool *m, uint64_t now_ms, uint64_t age_ms, uint32_t peer,
                               uint32_t max, uint32_t scan_max, const uint8_t **txs, size_t *lens);

/* Up to `max` verified txs valid for the next block on `st` (read-only here), durable or with
 * their log record still being written (a block needs a valid tx, not this node's copy on
 * disk): per signer, consecutive nonces from its nonce in `st`. Order: by arrival, except that
 * a tx whose predecessor nonce arrived later follows that predecessor at once; a gap ends the
 * signer's run. Deterministic for a given pool and state. txs[i]/lens[i] (arrays of `max`,
 * caller's) point into the pool: borrowed until the caller returns to the loop (a failed log
 * write frees the txs it held).
 * *n = count written. NODE_MEMPOOL_OK, NODE_MEMPOOL_ENOMEM (*n = 0). */
TEM_WUR int node_mempool_select(node_mempool *m, ledger_state *st, uint32_t max,
                                const uint8_t **txs, size_t *lens, uint32_t *n);

/* As node_mempool_select, but hands out the pool's decoded txs (txid, body, SignedTx) so a
 * proposal is built without decoding or hashing them again. Borrowed like select's bytes.
 * NODE_MEMPOOL_OK, NODE_MEMPOOL_ENOMEM (*n = 0). */
TEM_WUR int node_mempool_select_txs(node_mempool *m, ledger_state *st, uint32_t max,
                                    const ledger_tx **txs, uint32_t *n);

/* The decoded form of a held tx (being verified, written or durable) whose serialised SignedTx
 * is exactly (stx, len), found by its signature without decoding or hashing stx; NULL otherwise.
 * Borrowed: valid until the caller returns to the loop. */
const ledger_tx *node_mempool_find_bytes(const node_mempool *m, const uint8_t *stx, size_t len);
/* As node_mempool_find_bytes, for a block view (ledger_tx_source): the tx stays valid, even once
 * the pool lets go of it (a block commits it, its signature fails, the pool closes), until
 * node_mempool_unlend is called for it once per lend; the pool never writes it, so a worker
 * thread may read it meanwhile. *verified: its signature checked already (written or durable);
 * otherwise node_mempool_sig_state says where its check is. NULL for a tx not held, or one a
 * block already committed or superseded. A removed entry still lent keeps its slot, and the pool
 * counts it as full until it is given back (node_mempool_stats.parked). Loop thread. */
const ledger_tx *node_mempool_lend(node_mempool *m, const uint8_t *stx, size_t len, bool *verified);
/* Gives back a tx from node_mempool_lend. Must be called before node_mempool_free. */
void node_mempool_unlend(node_mempool *m, const ledger_tx *tx);

/* What the pool knows of the signature of the tx `txid` carrying `sig`: UNKNOWN (no such
 * entry, another signature, or one leaving), QUEUED (waiting for a thread-pool work item),
 * VERIFYING (in one now), VERIFIED (verified: being written or durable). Lets a proposal's
 * validation wait for a check already under way instead of repeating it; a queued one it first
 * moves to the front (node_mempool_verify_first), since under load the queue ahead of it holds
 * seconds of intake. */
enum { NODE_MEMPOOL_SIG_UNKNOWN = 0, NODE_MEMPOOL_SIG_QUEUED, NODE_MEMPOOL_SIG_VERIFYING, NODE_MEMPOOL_SIG_VERIFIED };
int node_mempool_sig_state(const node_mempool *m, const uint8_t txid[LEDGER_HASH_BYTES],
                           const uint8_t sig[LEDGER_SECP_SIG_BYTES]);
/* Moves the txs named by `txids` (borrowed for the call) that are QUEUED here to the front of
 * the verify queue, in queue order, ahead of the rest (also kept in order), and kicks dispatch:
 * a proposal's validation can then wait a few ms for checks this node would do anyway, instead
 * of waiting behind seconds of intake or doing them twice. Unknown, verifying or verified txids
 * are ignored. Returns how many moved. O(queue length). */
uint32_t node_mempool_verify_first(node_mempool *m, const uint8_t (*txids)[LEDGER_HASH_BYTES], size_t n);
/* The durable tx `txid`: its decoded form, and its bytes in *bytes and *len (each may be NULL).
 * NULL when the tx is not held or not durable yet. Borrowed as for node_mempool_find_bytes. */
const ledger_tx *node_mempool_get(const node_mempool *m, const uint8_t txid[LEDGER_HASH_BYTES],
                                  const uint8_t **bytes, size_t *len);
/* The bytes of the verified tx `txid`, durable or still being written (borrowed as for
 * node_mempool_find_bytes: valid until the caller returns to the loop). false when the tx is not
 * held, not verified yet, or leaving. */
bool node_mempool_get_verified(const node_mempool *m, const uint8_t txid[LEDGER_HASH_BYTES], const uint8_t **bytes,
                               size_t *len);

/* The node's precheck (node_mempool_config.precheck, with precheck_ctx = the ledger_store):
 * contracts_signer_check on the store's current state, so the pool never admits what the
 * executor would refuse for its signer alone. 0 or the contracts' code. */
int node_mempool_precheck_signer(void *store, const ledger_tx *tx);

/* After a block is applied (the store is at its height): drops those txids and every held tx
 * whose nonce is now below its signer's state nonce (remembered as superseded unless a receipt
 * shows it committed). Signers of the given txids are checked at once; others all at once
 * while at most 4096 signers hold txs, else 4096 per call, round robin (a stale tx is never
 * selected meanwhile). Txs still being verified or written are flagged and settle when their
 * work ends (done rc 0 if committed, NODE_MEMPOOL_ESUPERSEDED if superseded). Rewrites the log
 * in the thread pool when it is over compact_min_bytes and more than half dead, and retries a
 * failed log. txids is borrowed. */
void node_mempool_block_applied(node_mempool *m, const uint8_t (*txids)[LEDGER_HASH_BYTES], size_t n);

enum {
    NODE_MEMPOOL_STATUS_UNKNOWN = 0,
    NODE_MEMPOOL_STATUS_PENDING = 1,    /* durable, waiting for a block */
    NODE_MEMPOOL_STATUS_INFLIGHT = 2,   /* being verified or written */
    NODE_MEMPOOL_STATUS_SUPERSEDED = 3, /* dropped: its nonce was used by another tx */
};
/* One of NODE_MEMPOOL_STATUS_*. Committed txs are UNKNOWN here: ask the store. */
int node_mempool_status(const node_mempool *m, const uint8_t txid[LEDGER_HASH_BYTES]);
/* Txs held (in flight + pending). */
uint32_t node_mempool_size(const node_mempool *m);
/* Of those, the txs whose signature is verified (being written or durable): what a proposal
 * made now could take, nonces permitting. */
uint32_t node_mempool_verified(const node_mempool *m);
/* True while the last log write failed for lack of space (ENOSPC/EDQUOT): submissions get
 * NODE_MEMPOOL_EDISKFULL until a log rewrite succeeds (retried on every round). */
bool node_mempool_disk_full(const node_mempool *m);
void node_mempool_get_stats(const node_mempool *m, node_mempool_stats *out);

/* Starts closing: submissions not yet durable get done(NODE_MEMPOOL_ECLOSING) (at once, or
 * when their thread-pool work returns); a log write already in flight finishes and its txs get
 * done(0). Run the loop until node_mempool_is_closed, then node_mempool_free. Idempotent. */
void node_mempool_close(node_mempool *m);
bool node_mempool_is_closed(const node_mempool *m);
/* Frees everything (the log is closed as it is, not compacted). Only after close + is_closed
 * (or after the loop ran to completion once the handle was closed by a uv_walk), or NULL. */
void node_mempool_free(node_mempool *m);

#endif
