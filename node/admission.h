/* admission.h: admission control at the node's door (docs/operate.md "Admission"). Before a
 * client's tx is queued, the node estimates how long it would wait for a block: the mempool's
 * depth against the rate at which blocks have been taking txs off it. Beyond a bound the
 * client hears 503 EBUSY with Retry-After instead of joining a queue it would leave seconds
 * late; and no one client address, no one signer, may hold more than a share of the queue that
 * bound allows (429 EADDRSHARE / ESIGNERSHARE with Retry-After).
 *
 * The estimator is plain bookkeeping fed by the caller (the time of each applied block, its tx
 * count, the depth left behind): no clock, no I/O, so tests drive it with made-up times
 * (tests/test_admission.c). Everything runs on the node's loop thread. Not consensus code:
 * each node decides for itself whom it admits; blocks never depend on it. */
#ifndef NODE_ADMISSION_H
#define NODE_ADMISSION_H

#include <stdbool.h>
#include <stdint.h>

/* Client addresses are counted in this many buckets (keyed hash of the address text):
 * addresses that share a bucket share its share, never more. */
#define NODE_ADMISSION_ADDR_BUCKETS 4096u
/* A share is never smaller than this many txs, so a short queue does not refuse a client's
 * ordinary burst (half the default nonce window for a signer). */
#define NODE_ADMISSION_SIGNER_SHARE_MIN 32u
#define NODE_ADMISSION_ADDR_SHARE_MIN 64u
/* The capacity estimate is the txs of the last this-many blocks that carried txs over the
 * time they took (a ratio of sums, so blocks applied in a burst do not inflate it). */
#define NODE_ADMISSION_WINDOW_BLOCKS 16u
#define NODE_ADMISSION_SHORT_BLOCKS 4u
/* Before the first estimate (a node just started) the queue admitted is this deep at most (or
 * max_block_txs if smaller). */
#define NODE_ADMISSION_DEPTH_PRIOR 512u
/* Fewest txs a block needs (or full_block_txs if smaller) to be a capacity sample. */
#define NODE_ADMISSION_SAMPLE_TXS_MIN 32u
#define NODE_ADMISSION_RETRY_AFTER_S_MAX 30u
/* The estimate's correction (node_admission_observe), in per-mille: never below 1000 (it only
 * makes admission stricter), at most this. A tx teaches it only when its estimate was at least
 * 1/NODE_ADMISSION_OBSERVE_FRAC of wait_ms_max: a short queue's wait is mostly the block
 * interval, which the bound's "plus one block interval" already allows. */
#define NODE_ADMISSION_CORR_PM_MAX 4000u
#define NODE_ADMISSION_OBSERVE_FRAC 4u

/* Defaults of the config keys (docs/operate.md). */
#define NODE_ADMISSION_WAIT_MS_MAX_DEFAULT 2000u
#define NODE_ADMISSION_SIGNER_SHARE_PCT_DEFAULT 2u
#define NODE_ADMISSION_ADDR_SHARE_PCT_DEFAULT 50u

typedef struct {
    uint64_t wait_ms_max;       /* refuse beyond this estimated wait; 0 = admission off */
    uint32_t signer_share_pct;  /* 1..100: one signer's share of the admissible depth */
    uint32_t addr_share_pct;    /* 1..100: one client address's share */
    uint32_t block_txs_max;     /* the genesis' max_block_txs: the depth admitted with no estimate yet */
    uint64_t block_interval_ms; /* the idle block interval: a chain silent for wait_ms_max plus two
                                 * of these counts as stalled */
    uint32_t peers;             /* other validators, each assumed to have as many client txs in
                                 * intake as this node (their copies reach us only once durable) */
    uint32_t headroom_pct;      /* 0..50: a tx is admitted while its estimated wait is within
                                 * wait_ms_max less this percent of it (the estimate looks back;
                                 * the chain may slow while the tx waits) */
    uint32_t full_block_txs;    /* a block this big was cut by the proposer's budget; a smaller
                                 * one took every durable tx there was (0 counts as 1) */
} node_admission_config;

/* Verdicts of node_admission_check. */
enum { NODE_ADMISSION_OK = 0, NODE_ADMISSION_BUSY = 1, NODE_ADMISSION_ADDR_SHARE = 2 };

typedef struct {
    node_admission_config cfg;
    /* capacity estimate, in milli-txs per second; 0 = none yet */
    uint64_t cap_mtps;
    uint64_t last_block_ms; /* time of the last applied block, 0 = none yet */
    uint32_t win_txs[NODE_ADMISSION_WINDOW_BLOCKS];
    uint64_t win_ms[NODE_ADMISSION_WINDOW_BLOCKS];
    uint32_t win_next, win_n;
    uint32_t prev_depth_after; /* depth left by the previous block */
    /* How long a tx takes from submission to durable (verified, in the log), EWMA 1/8: every
     * validator's copy goes through the same steps before the primary can propose it, so it
     * adds to the wait whatever the depth. */
    uint64_t intake_ms;
    uint32_t inflight; /* client txs submitted here and not yet durable or refused */
    /* How far the estimate fell short: the largest (actual wait / estimated wait) of this node's
     * own client txs committed since the last block, folded into corr_pm at each block (up by
     * half the gap, down by a sixteenth; a block with none decays it by 1/64 of its excess while
     * a queue remains, by 1/4 once the queue left is under a quarter of depth_max). The estimate
     * looks back and sees only this node's queue: a chain that slows while txs wait, or a
     * primary with a backlog of its own clients' txs ahead of ours, makes actual waits longer. */
    uint32_t corr_pm;
    uint32_t obs_max_pm;
    uint8_t key[16];        /* keys the address hash, so a client cannot aim at another's bucket */
    uint32_t addr_count[NODE_ADMISSION_ADDR_BUCKETS];
    /* counters for /metrics */
    uint64_t refused_busy, refused_addr, refused_signer;
} node_admission;

/* Initialises a in place with cfg (copied) and a random hash key. */
void node_admission_init(node_admission *a, const node_admission_config *cfg);

/* A block was applied at now_ms taking `txs` txs; `depth_after` txs are still held that a
 * proposal could take (the node passes its verified txs: ones still being verified were not
 * on offer, and counting them made a quiet chain's one-tx blocks look cut short). A block
 * of at least NODE_ADMISSION_SAMPLE_TXS_MIN txs (or full_block_txs if smaller) that left txs
 * waiting, or of at least full_block_txs txs, adds (txs, time since
 * the previous block) to the window; a smaller block took all the chain was offered, so it
 * measures demand, not capacity (a chain fed one tx a block would otherwise look able to take
 * a few txs a second and refuse the next burst), and is left out; the estimate is the lower of
 * the rates over the last 16 and the last 4 samples. While the queue is short the window
 * measures demand, not capacity; that is safe: the bound admits wait_ms_max of that rate, many blocks' worth, so
 * blocks grow and the estimate climbs within a few blocks to what the chain really takes. */
void node_admission_block(node_admission *a, uint64_t now_ms, uint32_t txs, uint32_t depth_after);

/* A client tx became durable `ms` after its submission: feeds intake_ms. */
void node_admission_intake(node_admission *a, uint64_t ms);
/* A client tx entered intake here (queued for verification) / left it (durable or refused). */
void node_admission_intake_begin(node_admission *a);
void node_admission_intake_end(node_admission *a);
/* The queue a new tx joins: `depth` held here plus the txs the other validators are taking in
 * (peers x inflight), which this node cannot see yet. */
uint32_t node_admission_queue(const node_admission *a, uint32_t depth);

/* The model's wait in ms of a tx joining a queue of `depth` txs at now_ms: depth / capacity
 * plus intake_ms (while client txs are in intake here); UINT64_MAX when the chain looks stalled
 * (no block for wait_ms_max + 2 block intervals with txs waiting). */
uint64_t node_admission_model_ms(const node_admission *a, uint64_t now_ms, uint32_t depth);
/* The estimated wait the bound is checked against: the model's, times corr_pm / 1000 when the
 * queue part alone (depth / capacity) is at least wait_ms_max / NODE_ADMISSION_OBSERVE_FRAC. */
uint64_t node_admission_wait_ms(const node_admission *a, uint64_t now_ms, uint32_t depth);
/* What a tx admitted now can teach the correction: the model's wait when the queue part is that
 * long, else 0 (nothing: node_admission_observe ignores 0). */
uint64_t node_admission_learn_ms(const node_admission *a, uint64_t now_ms, uint32_t depth);

/* One of this node's own client txs committed `waited_ms` after its submission, when the model
 * had estimated `model_ms` (node_admission_learn_ms at its admission). Counted toward the next
 * node_admission_block's correction when model_ms >= wait_ms_max / NODE_ADMISSION_OBSERVE_FRAC. */
void node_admission_observe(node_admission *a, uint64_t model_ms, uint64_t waited_ms);

/* The depth the bound admits: capacity x wait_ms_max x 1000 / corr_pm (before any estimate the
 * smaller of NODE_ADMISSION_DEPTH_PRIOR and block_txs_max). */
uint32_t node_admission_depth_max(const node_admission *a);
/* The most txs one signer / one client address may hold: their share of depth_max, at least
 * NODE_ADMISSION_SIGNER_SHARE_MIN / NODE_ADMISSION_ADDR_SHARE_MIN. */
uint32_t node_admission_signer_max(const node_admission *a);
uint32_t node_admission_addr_max(const node_admission *a);

/* Seconds (1..NODE_ADMISSION_RETRY_AFTER_S_MAX) the chain needs to take `txs` txs at the
 * estimated rate: the Retry-After of a refusal that waits for that many to drain. */
uint32_t node_admission_retry_after_s(const node_admission *a, uint32_t txs);

/* Whether a queue of `depth` (held here; intake elsewhere is added) is contended: at least half
 * the admissible depth. Shares bind only then: on a quiet chain one client's burst takes no
 * one's place, and refusing it (a meter's backlog after an outage) would help nobody. */
bool node_admission_contended(const node_admission *a, uint32_t depth);

/* The bucket tag (1..NODE_ADMISSION_ADDR_BUCKETS) of a client address ("127.0.0.1"). */
uint32_t node_admission_addr_tag(const node_admission *a, const char *addr);

/* Whether one more tx from client bucket `tag` may join a queue of `depth` at now_ms:
 * NODE_ADMISSION_OK, _BUSY (estimated wait over the bound) or _ADDR_SHARE (the queue is
 * contended and the bucket holds its share). *retry_after_s gets the Retry-After to send with a refusal (1..30). Counts refusals. */
int node_admission_check(node_admission *a, uint64_t now_ms, uint32_t depth, uint32_t tag,
                         uint32_t *retry_after_s);

/* A tx of bucket `tag` was queued / left the mempool (committed, superseded, refused). */
void node_admission_hold(node_admission *a, uint32_t tag);
void node_admission_release(node_admission *a, uint32_t tag);

#endif
