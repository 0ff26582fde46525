/* pbft.h: a pBFT replica (Castro & Liskov) as a pure state machine, and the signed consensus
 * messages it exchanges. docs/consensus.md describes the protocol as implemented.
 *
 * The replica owns no socket, clock, disk or random source. The caller (temd's node/, or the
 * simulator in tests/sim/) feeds it events with pbft_replica_step() and performs the actions it
 * returns, in order:
 *
 *   events  in : a message from a peer, a timer firing, a proposal the node built, the result of
 *                validating a proposal, a committed block fetched from a peer;
 *   actions out: send / broadcast a message, persist the vote record (durably, before any later
 *                action of the same list is performed), set / cancel a timer, deliver a committed
 *                block with its certificate, ask the node for a proposal, a validation, or the
 *                committed blocks from a height on.
 *
 * Errors are `enum pbft_err` values (0 = PBFT_OK, -2xx otherwise); pbft_strerror() names them.
 * A step that returns an error ignored its event: the replica's state is as before. */
#ifndef PBFT_H
#define PBFT_H

#include "ledger/ledger.h"

#define PBFT_REPLICAS_MAX LEDGER_VALIDATORS_MAX
/* Heights the log holds above its low watermark; the window is min(2K, PBFT_LOG_MAX). */
#define PBFT_LOG_MAX 64
#define PBFT_CHECKPOINT_INTERVAL_MAX (PBFT_LOG_MAX / 2)
/* Largest block the replica accepts in a pre-prepare or a fetch, and largest message. */
#define PBFT_BLOCK_BYTES_MAX (16u << 20)
#define PBFT_MSG_BYTES_MAX (64u << 20)
/* Actions one step can return (sized for a full window of deliveries plus their messages). */
#define PBFT_ACTIONS_MAX (8 * PBFT_LOG_MAX + 64)
/* Name under which the node stores the vote record with ledger_store_meta_put. */
#define PBFT_VOTES_KEY "pbft/votes"

/* ------------------------------------------------------------------ errors */
#define PBFT_ERRNO_MAP(X)                                                                          \
    X(EDECODE, -201, "malformed consensus message")                                                \
    X(ESIG, -202, "signature does not verify")                                                     \
    X(ESENDER, -203, "sender is not a validator of this genesis")                                  \
    X(EVIEW, -204, "message is for another view or from a non-primary")                            \
    X(EWATERMARK, -205, "height outside the log's watermarks")                                     \
    X(ECONFLICT, -206, "conflicts with an accepted proposal or an own vote")                       \
    X(EDUP, -207, "duplicate or replayed message")                                                 \
    X(ENOMEM, -208, "out of memory")                                                               \
    X(EINVAL, -209, "invalid argument or configuration")                                           \
    X(EFULL, -210, "a bounded queue or table is full")                                             \
    X(ESTATE, -211, "call not expected in the current state")                                      \
    X(ECERT, -212, "invalid certificate or proof")                                                 \
    X(EHASH, -213, "block does not match its hash")                                                \
    X(ERECORD, -214, "malformed vote record")                                                      \
    X(ESTALE, -215, "stale event (old timer, old view or already delivered height)")                \
    X(EHALTED, -216, "the host halted after a failed write or apply")

enum pbft_err {
    PBFT_OK = 0,
#define PBFT_X(name, val, msg) PBFT_##name = val,
    PBFT_ERRNO_MAP(PBFT_X)
#undef PBFT_X
};

/* Static string naming `err` ("unknown pbft error" for codes outside the list). */
const char *pbft_strerror(int err);

/* ------------------------------------------------------------------ planted bugs
 * Each removes one safety rule so the simulator can prove it catches the violation
 * (`tem-sim --planted-bug NAME`). temd always runs with PBFT_BUG_NONE. SEND_BEFORE_PERSIST is
 * planted in the host (consensus/host.c), the others in the replica. */
#define PBFT_PLANTED_BUGS(X)                                                                       \
    X(NONE, "none")                                                                                \
    X(PREPARE_QUORUM_F1, "prepare-quorum-f1")                                                      \
    X(NEW_VIEW_IGNORES_PREPARED, "new-view-ignores-prepared")                                      \
    X(SKIP_SIGNATURE_CHECK, "skip-signature-check")                                                \
    X(FETCH_SKIPS_CERT_CHECK, "fetch-skips-cert-check")                                            \
    X(FORGET_VOTES_ON_RESTART, "forget-votes-on-restart")                                         \
    X(SEND_BEFORE_PERSIST, "send-before-persist")                                                  \
    X(RECORD_DROPS_COMMIT_CERT, "record-drops-commit-cert")

typedef enum {
#define PBFT_BUGX(id, name) PBFT_BUG_##id,
    PBFT_PLANTED_BUGS(PBFT_BUGX)
#undef PBFT_BUGX
    PBFT_BUG_COUNT
} pbft_planted_bug;

/* Name of a planted bug, NULL past the end. */
const char *pbft_planted_bug_name(int bug);
/* The bug with that name, or -1. */
int pbft_planted_bug_by_name(const char *name);

/* ------------------------------------------------------------------ configuration */
/* Block identity: writes the 32-byte hash of a serialised block; returns 0, or -1 when the bytes
 * are not a block (the replica then drops the message carrying them). temd hashes the header with
 * ledger_block_hash; the simulator hashes the bytes. */
typedef int (*pbft_hash_fn)(void *ctx, const uint8_t *block, size_t len, uint8_t out[32]);
/* Signature check, 0 when valid: ledger_ed_verify unless the caller supplies its own (the
 * simulator memoises results, since one broadcast is checked by every replica). */
typedef int (*pbft_verify_fn)(void *ctx, const uint8_t pub[32], const uint8_t *msg, size_t len,
                              const uint8_t sig[64]);

typedef struct {
    uint32_t n;                                 /* validators, 4 <= n <= PBFT_REPLICAS_MAX */
    uint32_t self;                              /* own index in the validator list */
    uint8_t pubkeys[PBFT_REPLICAS_MAX][32];     /* Ed25519 keys in genesis order */
    uint8_t secret[LEDGER_ED_SEC_BYTES];        /* own Ed25519 key (copied in; wiped on free) */
    uint8_t genesis_hash[32];                   /* domain separation of every digest */
    uint32_t checkpoint_interval;               /* K, 1..PBFT_CHECKPOINT_INTERVAL_MAX */
    uint64_t view_timeout_ms;                   /* first view timeout, > 0 */
    uint32_t view_timeout_doublings_max;        /* timeout stops growing after this many, <= 16 */
    pbft_hash_fn hash;                          /* required */
    pbft_verify_fn verify;                      /* NULL = ledger_ed_verify */
    void *ctx;                                  /* passed to hash and verify */
    /* Where the node's chain is: its last applied block (0 and the genesis hash for a fresh
     * node) and that block's serialised CommitCertificate (borrowed during init only; NULL at
     * height 0). */
    uint64_t start_height;
    uint8_t start_hash[32];
    const uint8_t *start_cert;
    size_t start_cert_len;
    pbft_planted_bug planted_bug;               /* PBFT_BUG_NONE outside the simulator */
} pbft_config;

/* Fills the fields every deployment derives from its genesis: n, pubkeys, genesis_hash,
 * checkpoint_interval, view_timeout_ms (the rest keep their values). PBFT_EINVAL if the genesis
 * has fewer than 4 validators or a checkpoint interval above PBFT_CHECKPOINT_INTERVAL_MAX. */
TEM_WUR int pbft_config_from_genesis(pbft_config *cfg, const ledger_genesis *g);

/* ------------------------------------------------------------------ events */
typedef enum {
    PBFT_EV_MESSAGE = 1,    /* data/len: a serialised PbftMessage; from: the peer it came from */
    PBFT_EV_TIMER,          /* timer: PBFT_TIMER_*; timer_seq: the seq of the SET that armed it */
    PBFT_EV_PROPOSAL,       /* height, data/len: the block the node built after REQUEST_PROPOSAL */
    PBFT_EV_VALIDATED,      /* height, block_hash, ok: the answer to REQUEST_VALIDATION */
    PBFT_EV_BLOCK_FETCHED,  /* height, data/len: a committed block; cert/cert_len: its
                             * serialised CommitCertificate (the answer to REQUEST_BLOCKS) */
} pbft_event_kind;

typedef enum { PBFT_TIMER_VIEW = 1, PBFT_TIMER_FETCH = 2 } pbft_timer;

typedef struct {
    pbft_event_kind kind;
    uint32_t from;
    pbft_timer timer;
    uint64_t timer_seq;
    uint64_t height;
    uint8_t block_hash[32];
    bool ok;
    const uint8_t *data; /* borrowed for the step */
    size_t len;
    const uint8_t *cert; /* borrowed for the step */
    size_t cert_len;
} pbft_event;

/* ------------------------------------------------------------------ actions */
typedef enum {
    PBFT_ACT_SEND = 1,            /* to, msg/msg_len */
    PBFT_ACT_BROADCAST,           /* msg/msg_len to every other validator */
    PBFT_ACT_PERSIST,             /* msg/msg_len: the PbftVoteRecord to store under
                                   * PBFT_VOTES_KEY, durably, before any later action */
    PBFT_ACT_SET_TIMER,           /* timer, duration_ms, timer_seq: (re)arms; replaces that
                                   * timer's pending firing */
    PBFT_ACT_CANCEL_TIMER,        /* timer */
    PBFT_ACT_DELIVER,             /* height, view, block_hash, msg/msg_len: the block;
                                   * cert/cert_len: its serialised CommitCertificate. Apply it
                                   * before the next DELIVER; make it durable before any PERSIST
                                   * that follows the next DELIVER (at a checkpoint height:
                                   * before any later PERSIST). docs/consensus.md */
    PBFT_ACT_REQUEST_PROPOSAL,    /* height: build a block on the last delivered one and answer
                                   * with PBFT_EV_PROPOSAL */
    PBFT_ACT_REQUEST_VALIDATION,  /* height, block_hash, msg/msg_len: check the block against the
                                   * state after height-1 (already delivered); answer with
                                   * PBFT_EV_VALIDATED */
    PBFT_ACT_REQUEST_BLOCKS,      /* height: fetch committed blocks from this height on from
                                   * peers and feed them in order as PBFT_EV_BLOCK_FETCHED */
} pbft_action_kind;

#define PBFT_TO_ALL UINT32_MAX

typedef struct {
    pbft_action_kind kind;
    uint32_t to;
    pbft_timer timer;
    uint64_t duration_ms;
    uint64_t timer_seq;
    uint64_t height;
    uint64_t view;
    uint8_t block_hash[32];
    uint8_t *msg; /* owned by the action list */
    size_t msg_len;
    uint8_t *cert; /* owned by the action list */
    size_t cert_len;
} pbft_action;

/* Caller-provided output of one step. Byte buffers stay valid until pbft_actions_clear. */
typedef struct {
    uint32_t n;
    pbft_action a[PBFT_ACTIONS_MAX];
} pbft_actions;

void pbft_actions_init(pbft_actions *out);
/* Frees the buffers of every action and empties the list. */
void pbft_actions_clear(pbft_actions *out);

/* ------------------------------------------------------------------ the replica */
/* Everything below is private to consensus/: read it through the accessors. */
typedef struct {
    bool set;
    uint64_t view;
    uint8_t hash[32];
    uint8_t sig[64];
} pbft__vote;

typedef struct {
    uint32_t n;
    uint8_t idx[PBFT_REPLICAS_MAX];
    uint8_t sig[PBFT_REPLICAS_MAX][64];
} pbft__sigset;

enum { PBFT__VAL_NONE = 0, PBFT__VAL_REQUESTED, PBFT__VAL_OK, PBFT__VAL_BAD };

#define PBFT__SLOT_BLOCKS 3
typedef struct {
    bool used;
    uint8_t hash[32];
    uint8_t *bytes; /* tem_malloc'd */
    size_t len;
    int valid; /* PBFT__VAL_* */
} pbft__block;

typedef struct {
    uint64_t height; /* 0 = free */
    pbft__block blocks[PBFT__SLOT_BLOCKS];
    bool has_pp; /* an accepted pre-prepare (from NEW-VIEW or the primary) */
    uint64_t pp_view;
    uint8_t pp_hash[32];
    pbft__vote prepares[PBFT_REPLICAS_MAX]; /* latest per validator; the primary's = its pp */
    pbft__vote commits[PBFT_REPLICAS_MAX];  /* latest per validator */
    pbft__vote my_prepare, my_commit;       /* own signed votes (persisted) */
    bool has_pc;                            /* highest-view prepared certificate */
    uint64_t pc_view;
    uint8_t pc_hash[32];
    pbft__sigset pc_sigs;
    bool committed; /* a commit certificate is known */
    uint64_t c_view;
    uint8_t c_hash[32];
    pbft__sigset c_sigs;
} pbft__slot;

#define PBFT__CKPT_KEEP 4
typedef struct {
    uint64_t height;
    uint8_t hash[32];
    uint8_t sig[64];
} pbft__ckpt;

typedef struct {
    pbft_config cfg;
    uint32_t f, quorum, window;
    uint64_t view;
    bool in_view_change;
    uint32_t failed_views; /* consecutive views without a delivered block */
    uint64_t timer_seq;
    uint64_t view_timer_seq, fetch_timer_seq;
    /* Chain position. */
    uint64_t delivered;
    uint64_t durable; /* highest height the host said is on disk (pbft_replica_durable) */
    uint8_t delivered_hash[32];
    uint64_t delivered_view;
    pbft__sigset delivered_cert;
    /* Stable checkpoint and its proof. */
    uint64_t stable;
    uint8_t stable_hash[32];
    pbft__sigset stable_proof;
    uint64_t low; /* low watermark: max(stable, delivered rounded down to K) */
    uint64_t view_floor; /* commit point of the current view's NEW-VIEW (persisted) */
    pbft__slot *slots; /* window entries, index height % window; tem_calloc'd */
    pbft__ckpt ckpts[PBFT_REPLICAS_MAX][PBFT__CKPT_KEEP];
    uint64_t seen_height[PBFT_REPLICAS_MAX];
    /* Highest view each validator signed a PRE-PREPARE, PREPARE or COMMIT in (verified): how a
     * replica that missed a view change (stopped, restarted, cut off) learns it is behind. */
    uint64_t seen_view[PBFT_REPLICAS_MAX];
    /* Latest VIEW-CHANGE per sender (verified): its view and serialised signed message. */
    uint64_t vc_view[PBFT_REPLICAS_MAX];
    uint8_t *vc_msg[PBFT_REPLICAS_MAX];
    size_t vc_len[PBFT_REPLICAS_MAX];
    /* Own NEW-VIEW of the current view, resent to replicas still asking for that view. */
    uint8_t *nv_msg;
    size_t nv_len;
    bool proposal_requested; /* REQUEST_PROPOSAL for delivered+1 in this view is pending */
    uint64_t fetch_from;     /* REQUEST_BLOCKS already issued from this height (0 = none) */
    bool started;
} pbft_replica;

/* Initialises r from cfg (copied). Allocates the log. PBFT_EINVAL (bad config or start
 * certificate), PBFT_ENOMEM. On error r holds nothing to free. */
TEM_WUR int pbft_replica_init(pbft_replica *r, const pbft_config *cfg);
/* Reloads a vote record the replica emitted in a PERSIST action (before a restart). Call between
 * init and start. Votes at or below the start height are dropped. PBFT_ERECORD (the record is
 * malformed: nothing restored), PBFT_ENOMEM. */
TEM_WUR int pbft_replica_restore(pbft_replica *r, const uint8_t *record, size_t len);
/* First actions after init (and restore): arm the view timer, ask for a proposal if primary,
 * re-send the VIEW-CHANGE if the record says one was under way. PBFT_ENOMEM. */
TEM_WUR int pbft_replica_start(pbft_replica *r, pbft_actions *out);
/* Feeds one event; appends actions to out (the caller clears out between steps). Returns
 * PBFT_OK or the reason the event was ignored (any code above but ERECORD). */
TEM_WUR int pbft_replica_step(pbft_replica *r, const pbft_event *ev, pbft_actions *out);
/* Frees the log and wipes the secret key. Safe on a zeroed replica. */
void pbft_replica_free(pbft_replica *r);

uint64_t pbft_replica_view(const pbft_replica *r);
/* The host's word that the block it was delivered at `height` is durable: later vote records
 * leave that height out (until then they keep the last delivered height, docs/consensus.md). */
void pbft_replica_durable(pbft_replica *r, uint64_t height);
bool pbft_replica_in_view_change(const pbft_replica *r);
uint64_t pbft_replica_delivered(const pbft_replica *r);
uint64_t pbft_replica_stable(const pbft_replica *r);
uint32_t pbft_primary(uint64_t view, uint32_t n);

/* ------------------------------------------------------------------ messages and digests
 * Digests (docs/consensus.md): SHA-256 over a tag, the genesis hash and little-endian fields.
 *   prepare    : "TEM/pbft/prepare/v1"    || genesis || u64 view || u64 height || hash
 *   commit     : ledger_commit_digest (the certificate digest)
 *   checkpoint : "TEM/pbft/checkpoint/v1" || genesis || u64 height || hash
 *   view-change: "TEM/pbft/view-change/v1"|| genesis || u32 sender || SHA-256(body bytes)
 *   new-view   : "TEM/pbft/new-view/v1"   || genesis || u32 sender || SHA-256(body bytes) */
void pbft_prepare_digest(const uint8_t genesis[32], uint64_t view, uint64_t height,
                         const uint8_t hash[32], uint8_t out[32]);
void pbft_checkpoint_digest(const uint8_t genesis[32], uint64_t height, const uint8_t hash[32],
                            uint8_t out[32]);
void pbft_body_digest(const uint8_t genesis[32], int kind_case, uint32_t sender,
                      const uint8_t *body, size_t len, uint8_t out[32]);

/* Digest the envelope's signature covers, by kind. PBFT_EDECODE if a hash field is not 32 bytes
 * or the kind is unknown. */
TEM_WUR int pbft_msg_digest(const uint8_t genesis[32], const Tem__V1__PbftMessage *m,
                            uint8_t out[32]);
/* Signs m (its kind and sender must be set) with sec and serialises it into a new tem_malloc'd
 * buffer. PBFT_EDECODE (bad hash length), PBFT_ENOMEM. */
TEM_WUR int pbft_msg_sign_pack(const uint8_t genesis[32], const uint8_t sec[64],
                               Tem__V1__PbftMessage *m, uint8_t **out, size_t *out_len);

/* Serialises a CommitCertificate with the signatures of s sorted by validator index into a new
 * tem_malloc'd buffer (caller frees). PBFT_ENOMEM. */
TEM_WUR int pbft_cert_pack(uint64_t view, uint64_t height, const uint8_t hash[32],
                           const pbft__sigset *s, uint8_t **out, size_t *out_len);
/* PBFT_OK when cert is for (height, hash) and carries >= quorum distinct valid signatures over
 * the commit digest; PBFT_ECERT, PBFT_EDECODE otherwise. *view_out (may be NULL) gets its view. */
TEM_WUR int pbft_cert_check(const pbft_replica *r, const uint8_t *cert, size_t len,
                            uint64_t height, const uint8_t hash[32], uint64_t *view_out);

/* ------------------------------------------------------------------ progress (for status)
 * What the replica is waiting for at the next height, so a node can say why nothing commits.
 * Masks have bit i set for validator i. Pure read of the replica. */
typedef struct {
    uint64_t height;           /* delivered + 1 */
    uint64_t view;
    bool in_view_change;
    bool has_proposal;         /* a PRE-PREPARE for that height accepted in this view */
    uint64_t prepare_mask;     /* validators whose PREPARE for that proposal arrived */
    uint64_t commit_mask;      /* validators whose COMMIT for that proposal arrived */
    uint64_t view_change_mask; /* validators that asked for a view above the current one */
} pbft_progress;
void pbft_replica_progress(const pbft_replica *r, pbft_progress *out);

#endif
