/* admission.c: the node's admission estimator and fair shares (admission.h). Integer
 * arithmetic throughout so the estimate is exact to reason about in tests: capacity is kept in
 * milli-txs per second, times in ms. */
#include "node/admission.h"

#include "ledger/tem.h"

#include <sodium.h>
#include <string.h>

void node_admission_init(node_admission *a, const node_admission_config *cfg) {
    TEM_ASSERT(cfg->signer_share_pct >= 1 && cfg->signer_share_pct <= 100);
    TEM_ASSERT(cfg->addr_share_pct >= 1 && cfg->addr_share_pct <= 100);
    TEM_ASSERT(cfg->headroom_pct <= 50);
    memset(a, 0, sizeof *a);
    a->cfg = *cfg;
    a->corr_pm = 1000;
    if (a->cfg.block_txs_max == 0) a->cfg.block_txs_max = 1;
    randombytes_buf(a->key, sizeof a->key);
}

/* txs per second (in milli) of the newest `n` samples of the window; 0 when they span no time. */
static uint64_t window_rate(const node_admission *a, uint32_t n) {
    uint64_t sum_txs = 0, sum_ms = 0;
    for (uint32_t k = 1; k <= n && k <= a->win_n; k++) {
        uint32_t i = (a->win_next + NODE_ADMISSION_WINDOW_BLOCKS - k) % NODE_ADMISSION_WINDOW_BLOCKS;
        sum_txs += a->win_txs[i];
        sum_ms += a->win_ms[i];
    }
    return sum_ms ? sum_txs * 1000000u / sum_ms : 0;
}

/* Folds the waits observed since the last block into corr_pm: quick to believe that txs wait
 * longer than estimated (the bound is a promise), slow to forget it (one quick block says
 * little). A block with nothing observed moves it back toward 1000: slowly while a queue
 * remains (its txs will teach more), by a quarter once the queue left is short, i.e. the load
 * has passed (a slow intake left over from it, which the estimate still carries for a while,
 * must not be multiplied into refusals of the light load that follows). */
static void correct(node_admission *a, uint32_t depth_after) {
    uint32_t c = a->corr_pm, o = a->obs_max_pm;
    if (o == 0) {
        if (c > 1000) {
            bool quiet = depth_after < node_admission_depth_max(a) / NODE_ADMISSION_OBSERVE_FRAC;
            uint32_t d = quiet ? (c - 1000 + 3) / 4 : (c - 1000) / 64;
            c -= d ? d : 1; /* reaches 1000, not just near it */
        }
    } else if (o > c) {
        c += (o - c + 1) / 2;
    } else {
        c -= (c - o) / 16;
    }
    a->corr_pm = c < 1000 ? 1000 : c > NODE_ADMISSION_CORR_PM_MAX ? NODE_ADMISSION_CORR_PM_MAX : c;
    a->obs_max_pm = 0;
}

void node_admission_observe(node_admission *a, uint64_t model_ms, uint64_t waited_ms) {
    if (a->cfg.wait_ms_max == 0 || model_ms == 0 || model_ms < a->cfg.wait_ms_max / NODE_ADMISSION_OBSERVE_FRAC) return;
    uint64_t r = waited_ms >= UINT64_MAX / 1000u ? UINT64_MAX : waited_ms * 1000u / model_ms;
    if (r > NODE_ADMISSION_CORR_PM_MAX) r = NODE_ADMISSION_CORR_PM_MAX;
    if (r > a->obs_max_pm) a->obs_max_pm = (uint32_t)r;
}

void node_admission_block(node_admission *a, uint64_t now_ms, uint32_t txs, uint32_t depth_after) {
    correct(a, depth_after);
    /* A block that finds no client tx in intake here: the intake queue that made it slow has
     * drained, and intake_ms, learnt only from txs that finish, would otherwise keep an
     * overload's seconds until a few dozen quick txs had come through; a light load after it
     * had a tx refused whenever two of them met in intake (a validator that had caught up
     * after an overload held 20 s of intake time). A quarter per such block: under load the
     * intake is never empty, and an idle block interval is 0.5 s. */
    if (a->inflight == 0) a->intake_ms -= (a->intake_ms + 3) / 4;
    uint64_t prev = a->last_block_ms;
    uint32_t waiting = a->prev_depth_after; /* held when this block's interval began */
    a->last_block_ms = now_ms;
    a->prev_depth_after = depth_after;
    /* An interval that began with an empty queue was partly idle, and a block that took all
     * that waited when its interval began took what it was offered: both measure demand, not
     * capacity (a chain fed one tx a block would look able to take a few txs a second). A
     * block measures capacity when it left some of what waited behind, or was as big as the
     * proposer's budget allows. */
    uint32_t full = a->cfg.full_block_txs ? a->cfg.full_block_txs : 1;
    /* A small block says little even when txs waited here: this node's queue is not the
     * primary's (a gossiped tx reaches each validator at its own time), and on a chain fed a
     * tx every 100 ms one-tx blocks with two txs held here made capacity look like a few txs a
     * second and refused a client's 60-tx burst after 3 (t_indexer.sh). Under real load the
     * primary proposes up to its budget, so big blocks keep measuring. */
    uint32_t least = full < NODE_ADMISSION_SAMPLE_TXS_MIN ? full : NODE_ADMISSION_SAMPLE_TXS_MIN;
    bool cut = txs >= least && (waiting > txs || txs >= full);
    if (prev == 0 || now_ms < prev || txs == 0 || waiting == 0 || !cut) return;
    a->win_txs[a->win_next] = txs;
    a->win_ms[a->win_next] = now_ms - prev;
    a->win_next = (a->win_next + 1) % NODE_ADMISSION_WINDOW_BLOCKS;
    if (a->win_n < NODE_ADMISSION_WINDOW_BLOCKS) a->win_n++;
    /* The lower of the long and the short window: a chain that slows down (a slow validator, a
     * busy machine) is believed at once, one that speeds up over a few blocks. */
    uint64_t lng = window_rate(a, NODE_ADMISSION_WINDOW_BLOCKS), shrt = window_rate(a, NODE_ADMISSION_SHORT_BLOCKS);
    uint64_t c = shrt && shrt < lng ? shrt : lng;
    /* A window applied within one ms (a catch-up burst) says nothing: keep the estimate. */
    if (c == 0) return;
    a->cap_mtps = c;
    TEM_ASSERT(a->win_n >= 1);
}

void node_admission_intake(node_admission *a, uint64_t ms) {
    if (ms >= a->intake_ms) a->intake_ms += (ms - a->intake_ms) >> 3;
    else a->intake_ms -= (a->intake_ms - ms) >> 3;
}

void node_admission_intake_begin(node_admission *a) { a->inflight++; }

void node_admission_intake_end(node_admission *a) {
    TEM_ASSERT(a->inflight > 0);
    a->inflight--;
}

uint32_t node_admission_queue(const node_admission *a, uint32_t depth) {
    uint64_t q = (uint64_t)depth + (uint64_t)a->cfg.peers * a->inflight;
    return q > UINT32_MAX ? UINT32_MAX : (uint32_t)q;
}

/* With nothing in intake here the queue behind a new tx's verification is empty: the last
 * slow intake says nothing about it (and would otherwise refuse the very txs that could show
 * intake is fast again). */
static uint64_t intake_now(const node_admission *a) { return a->inflight ? a->intake_ms : 0; }

/* The queue part of the model: depth / capacity (0 before any estimate). */
static uint64_t queue_part(const node_admission *a, uint32_t depth) {
    return a->cap_mtps ? (uint64_t)depth * 1000000u / a->cap_mtps : 0;
}

/* Only a queue long enough to teach the correction is corrected by it: a short one's wait is
 * mostly the block interval and the intake, which is measured (and after an overload, still
 * slow for a while: multiplied, it refused the light load that followed). */
static bool long_queue(const node_admission *a, uint32_t depth) {
    return queue_part(a, depth) >= a->cfg.wait_ms_max / NODE_ADMISSION_OBSERVE_FRAC;
}

uint64_t node_admission_wait_ms(const node_admission *a, uint64_t now_ms, uint32_t depth) {
    uint64_t m = node_admission_model_ms(a, now_ms, depth);
    if (m == UINT64_MAX || a->corr_pm == 1000 || !long_queue(a, depth)) return m;
    return m > UINT64_MAX / a->corr_pm ? UINT64_MAX : m * a->corr_pm / 1000u;
}

uint64_t node_admission_learn_ms(const node_admission *a, uint64_t now_ms, uint32_t depth) {
    uint64_t m = node_admission_model_ms(a, now_ms, depth);
    return m == UINT64_MAX || !long_queue(a, depth) ? 0 : m;
}

uint64_t node_admission_model_ms(const node_admission *a, uint64_t now_ms, uint32_t depth) {
    if (depth == 0) return 0;
    uint64_t stall_ms = a->cfg.wait_ms_max + 2 * a->cfg.block_interval_ms;
    if (a->last_block_ms && now_ms > a->last_block_ms && now_ms - a->last_block_ms > stall_ms) return UINT64_MAX;
    if (a->cap_mtps == 0) {
        /* No estimate yet: a modest queue, as if a block took it. */
        return depth < node_admission_depth_max(a) ? intake_now(a) : UINT64_MAX;
    }
    return queue_part(a, depth) + intake_now(a);
}

uint32_t node_admission_depth_max(const node_admission *a) {
    if (a->cap_mtps == 0) return a->cfg.block_txs_max < NODE_ADMISSION_DEPTH_PRIOR ? a->cfg.block_txs_max : NODE_ADMISSION_DEPTH_PRIOR;
    uint64_t d = a->cap_mtps * a->cfg.wait_ms_max / 1000u / a->corr_pm;
    return d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
}

static uint32_t share_of(uint32_t depth, uint32_t pct, uint32_t min) {
    uint64_t s = (uint64_t)depth * pct / 100u;
    return s < min ? min : (uint32_t)s;
}

uint32_t node_admission_signer_max(const node_admission *a) {
    return share_of(node_admission_depth_max(a), a->cfg.signer_share_pct, NODE_ADMISSION_SIGNER_SHARE_MIN);
}

uint32_t node_admission_addr_max(const node_admission *a) {
    return share_of(node_admission_depth_max(a), a->cfg.addr_share_pct, NODE_ADMISSION_ADDR_SHARE_MIN);
}

bool node_admission_contended(const node_admission *a, uint32_t depth) {
    return node_admission_queue(a, depth) >= node_admission_depth_max(a) / 2;
}

uint32_t node_admission_addr_tag(const node_admission *a, const char *addr) {
    uint8_t h[crypto_shorthash_BYTES];
    crypto_shorthash(h, (const uint8_t *)addr, strlen(addr), a->key);
    return (uint32_t)(tem_get_u64le(h) % NODE_ADMISSION_ADDR_BUCKETS) + 1;
}

uint32_t node_admission_retry_after_s(const node_admission *a, uint32_t txs) {
    if (a->cap_mtps == 0 || txs == 0) return 1;
    uint64_t s = ((uint64_t)txs * 1000000u + a->cap_mtps * 1000u - 1) / (a->cap_mtps * 1000u);
    if (s < 1) s = 1;
    return s > NODE_ADMISSION_RETRY_AFTER_S_MAX ? NODE_ADMISSION_RETRY_AFTER_S_MAX : (uint32_t)s;
}

/* Seconds until a queue of `depth` has drained back to the bound. */
static uint32_t retry_after_s(const node_admission *a, uint32_t depth) {
    uint32_t dmax = node_admission_depth_max(a);
    return node_admission_retry_after_s(a, depth > dmax ? depth - dmax : 0);
}

int node_admission_check(node_admission *a, uint64_t now_ms, uint32_t depth, uint32_t tag, uint32_t *retry_after) {
    TEM_ASSERT(tag >= 1 && tag <= NODE_ADMISSION_ADDR_BUCKETS);
    *retry_after = 1;
    if (a->cfg.wait_ms_max == 0) return NODE_ADMISSION_OK;
    depth = node_admission_queue(a, depth);
    uint64_t w = node_admission_wait_ms(a, now_ms, depth);
    if (w > a->cfg.wait_ms_max - a->cfg.wait_ms_max * a->cfg.headroom_pct / 100u) {
        a->refused_busy++;
        *retry_after = w == UINT64_MAX ? 1 : retry_after_s(a, depth);
        return NODE_ADMISSION_BUSY;
    }
    if (node_admission_contended(a, depth) && a->addr_count[tag - 1] >= node_admission_addr_max(a)) {
        a->refused_addr++;
        /* This client's own txs must drain first: about its share's worth of queue time. */
        *retry_after = node_admission_retry_after_s(a, a->addr_count[tag - 1]);
        return NODE_ADMISSION_ADDR_SHARE;
    }
    return NODE_ADMISSION_OK;
}

void node_admission_hold(node_admission *a, uint32_t tag) {
    if (tag == 0 || tag > NODE_ADMISSION_ADDR_BUCKETS) return;
    a->addr_count[tag - 1]++;
}

void node_admission_release(node_admission *a, uint32_t tag) {
    if (tag == 0 || tag > NODE_ADMISSION_ADDR_BUCKETS) return;
    TEM_ASSERT(a->addr_count[tag - 1] > 0);
    a->addr_count[tag - 1]--;
}
