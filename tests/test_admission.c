/* test_admission.c: Check suite for node/admission.c (the wait estimator, its bound and
 * Retry-After, per-address shares) against a reference recomputed in floating point over many
 * seeds, and for the mempool's side of admission and re-gossip (node/mempool.c): the signer
 * share (ESIGNERSHARE), tags released exactly once whatever removes a tx, and re-gossip that
 * only picks txs older than the threshold, each at most once per threshold, never for a peer
 * that gossiped the tx to us. */
#include "node/admission.h"
#include "node/mempool.h"
#include "tests/ledger_fixture.h"

#include <check.h>
#include <sys/stat.h>
#include <unistd.h>

static node_admission_config cfg_of(uint64_t wait_ms) {
    return (node_admission_config){.wait_ms_max = wait_ms, .signer_share_pct = 2, .addr_share_pct = 50,
                                   .block_txs_max = 4000, .block_interval_ms = 500};
}

/* Blocks of `txs` every `dt` ms from t, each leaving `depth` behind; returns the last time. */
static uint64_t blocks(node_admission *a, uint64_t t, int n, uint32_t txs, uint64_t dt, uint32_t depth) {
    for (int i = 0; i < n; i++) {
        t += dt;
        node_admission_block(a, t, txs, depth);
    }
    return t;
}

/* ------------------------------------------------------------------ estimator */
START_TEST(admission_learns_from_waits_longer_than_estimated) {
    node_admission a;
    node_admission_config c = cfg_of(2000);
    node_admission_init(&a, &c);
    uint64_t t = blocks(&a, 1000000, 20, 100, 100, 1); /* 1,000 tx/s */
    ck_assert_uint_eq(a.corr_pm, 1000);
    uint32_t ra, tag = node_admission_addr_tag(&a, "10.0.0.1");
    ck_assert_uint_eq(node_admission_wait_ms(&a, t, 1700), 1700);
    ck_assert_int_eq(node_admission_check(&a, t, 1700, tag, &ra), NODE_ADMISSION_OK);
    /* Two of this node's txs waited 1.5 and 1.2 times their estimates: the larger counts, and
     * the correction moves half way to it at the next block. */
    node_admission_observe(&a, 1000, 1500);
    node_admission_observe(&a, 1000, 1200);
    t = blocks(&a, t, 1, 100, 100, 1);
    ck_assert_uint_eq(a.corr_pm, 1250);
    ck_assert_uint_eq(node_admission_model_ms(&a, t, 1500), 1500);
    ck_assert_uint_eq(node_admission_learn_ms(&a, t, 1500), 1500);
    ck_assert_uint_eq(node_admission_wait_ms(&a, t, 1500), 1875);
    ck_assert_uint_eq(node_admission_depth_max(&a), 1600);
    ck_assert_int_eq(node_admission_check(&a, t, 1500, tag, &ra), NODE_ADMISSION_OK);
    ck_assert_int_eq(node_admission_check(&a, t, 1700, tag, &ra), NODE_ADMISSION_BUSY); /* admitted before */
    ck_assert_uint_eq(ra, 1);
    /* A short queue (under 500 ms here) is not corrected and teaches nothing, whatever the
     * intake adds: a slow intake measured in an overload lingers in the estimate after it. */
    node_admission_intake_begin(&a);
    for (int i = 0; i < 40; i++) node_admission_intake(&a, 1000);
    uint64_t in = a.intake_ms;
    ck_assert_uint_gt(in, 900);
    ck_assert_uint_eq(node_admission_wait_ms(&a, t, 499), 499 + in);
    ck_assert_uint_eq(node_admission_learn_ms(&a, t, 499), 0);
    ck_assert_uint_eq(node_admission_wait_ms(&a, t, 500), (500 + in) * 1250 / 1000);
    ck_assert_uint_eq(node_admission_learn_ms(&a, t, 500), 500 + in);
    node_admission_intake_end(&a);
    /* A short queue's tx teaches nothing (its wait is mostly the block interval); a block with
     * nothing observed that leaves a queue (here 1,000 of depth_max 1,600) decays the
     * correction by 1/64 of its excess. */
    node_admission_observe(&a, 2000 / NODE_ADMISSION_OBSERVE_FRAC - 1, 5000);
    t = blocks(&a, t, 1, 100, 100, 1000);
    ck_assert_uint_eq(a.corr_pm, 1250 - 250 / 64);
    /* A wait as estimated pulls it down by a sixteenth of the gap. */
    node_admission_observe(&a, 1000, 1000);
    t = blocks(&a, t, 1, 100, 100, 1000);
    ck_assert_uint_eq(a.corr_pm, 1247 - 247 / 16);
    /* Once the queue left is short (under a quarter of depth_max) the load has passed: a
     * quarter of the excess per block, back to exactly 1000 and never below. */
    t = blocks(&a, t, 1, 100, 100, 1);
    ck_assert_uint_eq(a.corr_pm, 1232 - (232 + 3) / 4);
    t = blocks(&a, t, 40, 100, 100, 1);
    ck_assert_uint_eq(a.corr_pm, 1000);
    ck_assert_uint_eq(node_admission_wait_ms(&a, t, 1700), 1700);
    /* An absurd wait is capped: the correction never exceeds NODE_ADMISSION_CORR_PM_MAX. */
    for (int i = 0; i < 20; i++) {
        node_admission_observe(&a, 600, UINT64_MAX / 2);
        t = blocks(&a, t, 1, 100, 100, 1);
        ck_assert_uint_le(a.corr_pm, NODE_ADMISSION_CORR_PM_MAX);
    }
    ck_assert_uint_eq(a.corr_pm, NODE_ADMISSION_CORR_PM_MAX);
    ck_assert_uint_eq(node_admission_depth_max(&a), 500);
    /* Admission off: nothing is learnt. */
    node_admission_config off = cfg_of(0);
    node_admission_init(&a, &off);
    node_admission_observe(&a, 1000, 9000);
    blocks(&a, t, 1, 100, 100, 1);
    ck_assert_uint_eq(a.corr_pm, 1000);
}
END_TEST


START_TEST(admission_without_estimate_admits_a_modest_queue_only) {
    node_admission a;
    node_admission_config c = cfg_of(2000);
    node_admission_init(&a, &c);
    ck_assert_uint_eq(node_admission_depth_max(&a), NODE_ADMISSION_DEPTH_PRIOR);
    ck_assert_uint_eq(node_admission_wait_ms(&a, 1000, 0), 0);
    ck_assert_uint_eq(node_admission_wait_ms(&a, 1000, NODE_ADMISSION_DEPTH_PRIOR - 1), 0);
    ck_assert_uint_eq(node_admission_wait_ms(&a, 1000, NODE_ADMISSION_DEPTH_PRIOR), UINT64_MAX);
    uint32_t ra, tag = node_admission_addr_tag(&a, "10.0.0.1");
    ck_assert_int_eq(node_admission_check(&a, 1000, NODE_ADMISSION_DEPTH_PRIOR, tag, &ra), NODE_ADMISSION_BUSY);
    ck_assert_uint_eq(ra, 1);
    ck_assert_uint_eq(a.refused_busy, 1);
    /* A small genesis block limit caps the prior. */
    c.block_txs_max = 100;
    node_admission_init(&a, &c);
    ck_assert_uint_eq(node_admission_depth_max(&a), 100);
}
END_TEST

START_TEST(admission_steady_blocks_give_rate_wait_and_depth) {
    struct {
        const char *name;
        uint32_t txs;
        uint64_t dt;
        uint32_t depth;
        uint64_t want_wait, want_depth_max;
        uint32_t want_retry;
    } rows[] = {
        {"1000/s, 500 queued", 100, 100, 500, 500, 2000, 1},
        {"1000/s, 3000 queued", 100, 100, 3000, 3000, 2000, 1},
        {"1000/s, 12000 queued", 100, 100, 12000, 12000, 2000, 10},
        {"250/s, 1000 queued", 50, 200, 1000, 4000, 500, 2},
        {"10/s, 5000 queued", 5, 500, 5000, 500000, 20, 30},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        node_admission a;
        node_admission_config c = cfg_of(2000);
        node_admission_init(&a, &c);
        uint64_t t = blocks(&a, 1000000, 20, rows[i].txs, rows[i].dt, 1);
        ck_assert_msg(node_admission_wait_ms(&a, t, rows[i].depth) == rows[i].want_wait, "%s: wait %llu", rows[i].name,
                      (unsigned long long)node_admission_wait_ms(&a, t, rows[i].depth));
        ck_assert_msg(node_admission_depth_max(&a) == rows[i].want_depth_max, "%s: depth_max %u", rows[i].name,
                      node_admission_depth_max(&a));
        uint32_t ra, tag = node_admission_addr_tag(&a, "10.0.0.1");
        int v = node_admission_check(&a, t, rows[i].depth, tag, &ra);
        ck_assert_msg(v == (rows[i].want_wait > 2000 ? NODE_ADMISSION_BUSY : NODE_ADMISSION_OK), "%s: verdict %d", rows[i].name, v);
        if (v == NODE_ADMISSION_BUSY) ck_assert_msg(ra == rows[i].want_retry, "%s: retry %u", rows[i].name, ra);
    }
}
END_TEST

START_TEST(admission_idle_intervals_and_bursts_do_not_skew_the_rate) {
    node_admission a;
    node_admission_config c = cfg_of(2000);
    node_admission_init(&a, &c);
    /* 10 s idle, then a block: the interval began with an empty queue, no sample. */
    node_admission_block(&a, 1000, 0, 0);
    node_admission_block(&a, 11000, 50, 10);
    ck_assert_uint_eq(a.cap_mtps, 0);
    /* Now worked intervals at 1000/s, then a catch-up burst of two blocks in the same ms. */
    uint64_t t = blocks(&a, 11000, 10, 100, 100, 10);
    ck_assert_uint_eq(a.cap_mtps, 1000000);
    node_admission_block(&a, t + 100, 100, 10);
    node_admission_block(&a, t + 100, 100, 10);
    /* Long window (12 samples): 1200 txs over 1100 ms; short: 400 over 300 ms; the lower. A
     * rate per block would have seen an infinite rate. */
    ck_assert_uint_eq(a.cap_mtps, 1200u * 1000000u / 1100u);
    /* A slowdown is believed within the short window. */
    t = blocks(&a, t + 100, 4, 100, 1000, 10);
    ck_assert_uint_eq(a.cap_mtps, 100000);
}
END_TEST

/* Regression (t_indexer): a chain fed one tx a block, each leaving one more waiting, looked
 * able to take a few txs a second, and a burst of 60 from one client was refused after 3. Small
 * blocks took all there was: they measure demand, not capacity, and give no estimate. */
START_TEST(admission_trickle_of_small_blocks_does_not_refuse_a_burst) {
    node_admission a;
    node_admission_config c = cfg_of(2000);
    c.full_block_txs = 256;
    node_admission_init(&a, &c);
    uint64_t t = blocks(&a, 1000, 40, 1, 120, 1);
    ck_assert_uint_eq(a.cap_mtps, 0);
    /* Nor do small blocks that left a little behind here (this node's queue is not the
     * primary's): 1 tx a block with 2 held, 20 a block with 40 held. */
    t = blocks(&a, t, 40, 1, 120, 2);
    t = blocks(&a, t, 40, 20, 120, 40);
    ck_assert_uint_eq(a.cap_mtps, 0);
    uint32_t ra, tag = node_admission_addr_tag(&a, "127.0.0.1");
    for (int i = 0; i < 60; i++) node_admission_intake_begin(&a);
    ck_assert_int_eq(node_admission_check(&a, t + 10, 0, tag, &ra), NODE_ADMISSION_OK);
    ck_assert_int_eq(node_admission_check(&a, t + 10, 59, tag, &ra), NODE_ADMISSION_OK);
    /* The queue is short, so one signer's 60 are not held to its share either. */
    ck_assert(!node_admission_contended(&a, 59));
    /* Blocks that leave part of the queue behind do measure: 100 txs every 100 ms out of 500
     * waiting is 1000 txs/s; so do blocks of the proposer's full budget. */
    t = blocks(&a, t, 8, 100, 100, 500);
    ck_assert_uint_eq(a.cap_mtps, 1000000);
    ck_assert_uint_eq(node_admission_depth_max(&a), 2000);
    node_admission_init(&a, &c);
    t = blocks(&a, t, 8, 300, 150, 300);
    ck_assert_uint_eq(a.cap_mtps, 2000000);
}
END_TEST

START_TEST(admission_stalled_chain_refuses_until_a_block_commits) {
    node_admission a;
    node_admission_config c = cfg_of(2000);
    node_admission_init(&a, &c);
    uint64_t t = blocks(&a, 1000, 20, 100, 100, 5);
    uint64_t stall = c.wait_ms_max + 2 * c.block_interval_ms;
    ck_assert_uint_eq(node_admission_wait_ms(&a, t + stall, 10), 10);
    ck_assert_uint_eq(node_admission_wait_ms(&a, t + stall + 1, 10), UINT64_MAX);
    ck_assert_uint_eq(node_admission_wait_ms(&a, t + stall + 1, 0), 0); /* nothing waits: nothing is late */
    node_admission_block(&a, t + stall + 2, 100, 5);
    ck_assert_uint_lt(node_admission_wait_ms(&a, t + stall + 3, 10), 2000);
}
END_TEST

START_TEST(admission_slow_intake_adds_to_the_wait) {
    node_admission a;
    node_admission_config c = cfg_of(2000);
    node_admission_init(&a, &c);
    uint64_t t = blocks(&a, 1000, 20, 100, 100, 5); /* 1000/s */
    ck_assert_uint_eq(node_admission_wait_ms(&a, t, 1000), 1000);
    for (int i = 0; i < 200; i++) node_admission_intake(&a, 1500);
    ck_assert_uint_ge(a.intake_ms, 1490);
    ck_assert_uint_le(a.intake_ms, 1500);
    uint32_t ra, tag = node_admission_addr_tag(&a, "10.0.0.1");
    /* Nothing in intake now: the old slow intake does not count. */
    ck_assert_int_eq(node_admission_check(&a, t, 1000, tag, &ra), NODE_ADMISSION_OK);
    node_admission_intake_begin(&a);
    /* 1000 queued now wait 1 s in the queue and 1.5 s to become durable: over the bound. */
    ck_assert_int_eq(node_admission_check(&a, t, 1000, tag, &ra), NODE_ADMISSION_BUSY);
    ck_assert_int_eq(node_admission_check(&a, t, 400, tag, &ra), NODE_ADMISSION_OK);
    /* A block while a client tx is in intake keeps the slow intake time. */
    uint64_t slow = a.intake_ms;
    t = blocks(&a, t, 3, 100, 100, 5);
    ck_assert_uint_eq(a.intake_ms, slow);
    node_admission_intake_end(&a);
    /* Each block that finds the intake empty takes a quarter off (rounded up, so it reaches 0):
     * the queue behind that slow intake has drained. */
    t = blocks(&a, t, 1, 100, 100, 5);
    ck_assert_uint_eq(a.intake_ms, slow - (slow + 3) / 4);
    uint64_t want = a.intake_ms;
    for (int i = 0; i < 5; i++) want -= (want + 3) / 4;
    t = blocks(&a, t, 5, 100, 100, 5);
    ck_assert_uint_eq(a.intake_ms, want);
    ck_assert_uint_lt(a.intake_ms, 300);
    /* So a tx meeting another in intake is admitted again, though no quick tx has finished. */
    node_admission_intake_begin(&a);
    ck_assert_int_eq(node_admission_check(&a, t, 1000, tag, &ra), NODE_ADMISSION_OK);
    node_admission_intake_end(&a);
    t = blocks(&a, t, 40, 100, 100, 5);
    ck_assert_uint_eq(a.intake_ms, 0);
    node_admission_intake(&a, 1500);
    ck_assert_uint_eq(a.intake_ms, 1500 / 8);
    for (int i = 0; i < 200; i++) node_admission_intake(&a, 10);
    ck_assert_uint_le(a.intake_ms, 20);
    ck_assert_int_eq(node_admission_check(&a, t, 1000, tag, &ra), NODE_ADMISSION_OK);
    /* Txs in intake here stand for as many at each other validator, not yet visible here. */
    a.cfg.peers = 3;
    for (int i = 0; i < 300; i++) node_admission_intake_begin(&a);
    ck_assert_uint_eq(node_admission_queue(&a, 1000), 1900);
    ck_assert_int_eq(node_admission_check(&a, t, 1000, tag, &ra), NODE_ADMISSION_OK);
    for (int i = 0; i < 34; i++) node_admission_intake_begin(&a);
    /* 1000 + 3 x 334 = 2002 queued at 1000/s: over the bound whatever the intake. */
    ck_assert_uint_eq(node_admission_queue(&a, 1000), 2002);
    ck_assert_int_eq(node_admission_check(&a, t, 1000, tag, &ra), NODE_ADMISSION_BUSY);
    for (int i = 0; i < 334; i++) node_admission_intake_end(&a);
    ck_assert_uint_eq(node_admission_queue(&a, 1000), 1000);
    /* With 10 % headroom a 2000 ms bound admits estimated waits up to 1800 ms only. */
    a.cfg.headroom_pct = 10;
    ck_assert_uint_eq(node_admission_wait_ms(&a, t, 1800), 1800);
    ck_assert_int_eq(node_admission_check(&a, t, 1800, tag, &ra), NODE_ADMISSION_OK);
    ck_assert_int_eq(node_admission_check(&a, t, 1801, tag, &ra), NODE_ADMISSION_BUSY);
}
END_TEST

START_TEST(admission_off_admits_everything) {
    node_admission a;
    node_admission_config c = cfg_of(0);
    node_admission_init(&a, &c);
    uint32_t ra, tag = node_admission_addr_tag(&a, "10.0.0.1");
    for (int i = 0; i < 10000; i++) node_admission_hold(&a, tag);
    ck_assert_int_eq(node_admission_check(&a, 1, 999999, tag, &ra), NODE_ADMISSION_OK);
}
END_TEST

START_TEST(admission_address_share_bounds_one_client) {
    node_admission a;
    node_admission_config c = cfg_of(2000);
    node_admission_init(&a, &c);
    uint64_t t = blocks(&a, 1000, 20, 100, 100, 5); /* 1000/s: depth_max 2000, addr share 1000 */
    ck_assert_uint_eq(node_admission_addr_max(&a), 1000);
    ck_assert_uint_eq(node_admission_signer_max(&a), 40); /* 2 % of 2000 */
    uint32_t ra, busy = node_admission_addr_tag(&a, "10.0.0.1"), other = node_admission_addr_tag(&a, "10.0.0.2");
    ck_assert_uint_ge(busy, 1);
    ck_assert_uint_le(busy, NODE_ADMISSION_ADDR_BUCKETS);
    ck_assert_uint_eq(busy, node_admission_addr_tag(&a, "10.0.0.1"));
    for (int i = 0; i < 1000; i++) {
        ck_assert_int_eq(node_admission_check(&a, t, (uint32_t)i, busy, &ra), NODE_ADMISSION_OK);
        node_admission_hold(&a, busy);
    }
    /* Over its share but on an uncontended queue (under half of depth_max): admitted. */
    ck_assert(!node_admission_contended(&a, 999));
    ck_assert_int_eq(node_admission_check(&a, t, 999, busy, &ra), NODE_ADMISSION_OK);
    ck_assert(node_admission_contended(&a, 1000));
    ck_assert_int_eq(node_admission_check(&a, t, 1000, busy, &ra), NODE_ADMISSION_ADDR_SHARE);
    ck_assert_uint_eq(ra, 1); /* its 1000 txs drain in 1 s at 1000/s */
    ck_assert_uint_eq(a.refused_addr, 1);
    if (other != busy) ck_assert_int_eq(node_admission_check(&a, t, 1000, other, &ra), NODE_ADMISSION_OK);
    node_admission_release(&a, busy);
    ck_assert_int_eq(node_admission_check(&a, t, 999, busy, &ra), NODE_ADMISSION_OK);
    /* Shares never fall below their floors; above them they follow the depth. */
    node_admission_init(&a, &c);
    blocks(&a, 1000, 20, 1, 1000, 5); /* 1/s: depth_max 2 */
    ck_assert_uint_eq(node_admission_signer_max(&a), NODE_ADMISSION_SIGNER_SHARE_MIN);
    ck_assert_uint_eq(node_admission_addr_max(&a), NODE_ADMISSION_ADDR_SHARE_MIN);
    node_admission_init(&a, &c);
    blocks(&a, 1000, 20, 1000, 100, 5); /* 10000/s: depth_max 20000 */
    ck_assert_uint_eq(node_admission_signer_max(&a), 400);
    ck_assert_uint_eq(node_admission_addr_max(&a), 10000);
}
END_TEST

/* xorshift64*: a seeded stream for the randomised test (never the clock). */
static uint64_t rnd(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

START_TEST(admission_estimate_matches_a_float_reference_over_seeds) {
    for (uint64_t seed = 1; seed <= 300; seed++) {
        uint64_t s = seed * 0x9e3779b97f4a7c15ull;
        node_admission a;
        node_admission_config c = cfg_of(1000 + rnd(&s) % 4000);
        c.full_block_txs = 1 + (uint32_t)(rnd(&s) % 512);
        node_admission_init(&a, &c);
        /* The reference: worked samples, in order. */
        double st[4096], sm[4096];
        int ns = 0;
        uint64_t t = 1000, prev = 0;
        uint32_t prev_depth = 0;
        int steps = 20 + (int)(rnd(&s) % 200);
        for (int i = 0; i < steps; i++) {
            t += rnd(&s) % 4 == 0 ? 0 : 1 + rnd(&s) % 2000;
            uint32_t txs = rnd(&s) % 5 == 0 ? 0 : (uint32_t)(rnd(&s) % 4000);
            uint32_t depth = rnd(&s) % 3 == 0 ? 0 : (uint32_t)(rnd(&s) % 10000);
            node_admission_block(&a, t, txs, depth);
            uint32_t least = c.full_block_txs < NODE_ADMISSION_SAMPLE_TXS_MIN ? c.full_block_txs : NODE_ADMISSION_SAMPLE_TXS_MIN;
            if (prev && txs >= least && prev_depth && (prev_depth > txs || txs >= c.full_block_txs)) {
                st[ns] = txs;
                sm[ns++] = (double)(t - prev);
            }
            prev = t;
            prev_depth = depth;
        }
        double want = 0;
        if (ns > 0) {
            double r[2];
            int w[2] = {16, 4};
            for (int k = 0; k < 2; k++) {
                double tx = 0, ms = 0;
                for (int j = ns - 1; j >= 0 && j >= ns - w[k]; j--) tx += st[j], ms += sm[j];
                r[k] = ms > 0 ? tx * 1000.0 / ms : 0;
            }
            want = r[1] > 0 && r[1] < r[0] ? r[1] : r[0];
        }
        double got = (double)a.cap_mtps / 1000.0;
        /* The integer estimate truncates to milli-txs/s; a window spanning no time keeps the
         * previous estimate, so only compare where the reference has one. */
        if (want > 0) ck_assert_msg(got <= want + 1e-3 && got >= want - 1e-3 - want * 1e-9, "seed %llu: got %f want %f",
                                    (unsigned long long)seed, got, want);
        uint32_t depth = (uint32_t)(rnd(&s) % 20000);
        uint64_t w = node_admission_wait_ms(&a, t, depth);
        if (a.cap_mtps && depth)
            ck_assert_msg(w == UINT64_MAX || w == (uint64_t)depth * 1000000u / a.cap_mtps, "seed %llu: wait", (unsigned long long)seed);
    }
}
END_TEST

/* ------------------------------------------------------------------ mempool side */
#define CHAIN "tem-test"
static char DIR_[64], STORE_DIR[96], LOG[96];
static ledger_genesis G;
static ledger_store *S;
static uv_loop_t LOOP;
static node_mempool *M;
static int DONE_N, DONE_RC[256];
static uint32_t RELEASED[16];

static void on_done(void *ctx, int rc, const uint8_t txid[32]) {
    (void)ctx;
    (void)txid;
    ck_assert_int_lt(DONE_N, 256);
    DONE_RC[DONE_N++] = rc;
}
static void on_release(void *ctx, uint32_t tag) {
    (void)ctx;
    ck_assert_uint_lt(tag, 16);
    RELEASED[tag]++;
}
static int OBSERVED_N;
static uint64_t OBSERVED[8][2];
static void on_committed(void *ctx, uint64_t t_ms, uint32_t model_ms) {
    (void)ctx;
    ck_assert_int_lt(OBSERVED_N, 8);
    OBSERVED[OBSERVED_N][0] = t_ms;
    OBSERVED[OBSERVED_N++][1] = model_ms;
}

static void mp_setup(void) {
    snprintf(DIR_, sizeof DIR_, "/tmp/tem-admission-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(DIR_));
    snprintf(STORE_DIR, sizeof STORE_DIR, "%s/store", DIR_);
    snprintf(LOG, sizeof LOG, "%s/mempool.log", DIR_);
    ck_assert_int_eq(mkdir(STORE_DIR, 0700), 0);
    fx_genesis(&G, 4);
    ck_assert_int_eq(ledger_store_open(STORE_DIR, &G, NULL, NULL, &S), LEDGER_OK);
    ck_assert_int_eq(uv_loop_init(&LOOP), 0);
    DONE_N = 0;
    OBSERVED_N = 0;
    memset(RELEASED, 0, sizeof RELEASED);
    node_mempool_config c = {.log_path = LOG, .txs_max = 1000, .nonce_window = 16, .per_signer_max = 16, .genesis = &G,
                             .release = on_release, .client_committed = on_committed};
    ck_assert_int_eq(node_mempool_new(&LOOP, &c, S, &M), NODE_MEMPOOL_OK);
    ck_assert_int_eq(node_mempool_recover(M, NULL), NODE_MEMPOOL_OK);
}

static void on_timeout(uv_timer_t *t) { *(bool *)t->data = true; }
static bool run_until_done(int n) {
    uv_timer_t t;
    bool timed_out = false;
    ck_assert_int_eq(uv_timer_init(&LOOP, &t), 0);
    t.data = &timed_out;
    ck_assert_int_eq(uv_timer_start(&t, on_timeout, 10000, 0), 0);
    while (DONE_N < n && !timed_out) uv_run(&LOOP, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&LOOP, UV_RUN_NOWAIT);
    return DONE_N >= n;
}

static void mp_teardown(void) {
    node_mempool_close(M);
    for (int i = 0; i < 1000 && !node_mempool_is_closed(M); i++) uv_run(&LOOP, UV_RUN_ONCE);
    node_mempool_free(M);
    uv_run(&LOOP, UV_RUN_NOWAIT);
    ck_assert_int_eq(uv_loop_close(&LOOP), 0);
    ledger_store_close(S);
    ledger_genesis_free(&G);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", DIR_);
    ck_assert_int_eq(system(cmd), 0);
}

typedef struct {
    uint8_t *b;
    size_t len;
    uint8_t txid[32];
} tx_t;

/* A transfer from key `from` to key 1. */
static tx_t mk(uint32_t from, uint64_t nonce) {
    uint8_t sec[32], pub[33], tsec[32], tpub[33];
    fx_key(from, sec, pub);
    fx_key(1, tsec, tpub);
    Tem__V1__TxBody b = TEM__V1__TX_BODY__INIT;
    Tem__V1__Transfer t = TEM__V1__TRANSFER__INIT;
    t.to = (ProtobufCBinaryData){33, tpub};
    t.amount = 1 + nonce;
    b.chain_id = (char *)CHAIN;
    b.nonce = nonce;
    b.kind_case = TEM__V1__TX_BODY__KIND_TRANSFER;
    b.transfer = &t;
    tx_t x;
    ck_assert_int_eq(ledger_tx_build(&b, sec, &x.b, &x.len, x.txid), LEDGER_OK);
    return x;
}

static int submit_tag(const tx_t *x, uint32_t signer_max, uint32_t tag) {
    node_mempool_admit adm = {.signer_max = signer_max, .tag = tag};
    return node_mempool_submit_admit(M, x->b, x->len, &adm, on_done, NULL, NULL);
}

START_TEST(mempool_signer_share_refuses_past_the_share_with_its_own_code) {
    tx_t x[4];
    for (int i = 0; i < 4; i++) x[i] = mk(2, (uint64_t)i);
    ck_assert_int_eq(submit_tag(&x[0], 2, 3), NODE_MEMPOOL_OK);
    ck_assert_int_eq(submit_tag(&x[1], 2, 3), NODE_MEMPOOL_OK);
    ck_assert_int_eq(submit_tag(&x[2], 2, 3), NODE_MEMPOOL_ESIGNERSHARE);
    ck_assert_str_eq(node_mempool_errname(NODE_MEMPOOL_ESIGNERSHARE), "ESIGNERSHARE");
    /* No share asked (gossip, signer_max 0): only per_signer_max applies. */
    ck_assert_int_eq(submit_tag(&x[2], 0, 0), NODE_MEMPOOL_OK);
    /* A duplicate keeps its own code even past the share. */
    ck_assert_int_eq(submit_tag(&x[0], 1, 3), NODE_MEMPOOL_EDUP);
    ck_assert(run_until_done(3));
    ck_assert_uint_eq(node_mempool_size(M), 3);
    ck_assert_uint_eq(RELEASED[3], 0);
    for (int i = 0; i < 4; i++) tem_free(x[i].b);
}
END_TEST

START_TEST(mempool_tags_are_released_once_when_txs_leave) {
    tx_t x[3];
    for (int i = 0; i < 3; i++) x[i] = mk(2, (uint64_t)i);
    for (int i = 0; i < 3; i++) ck_assert_int_eq(submit_tag(&x[i], 0, 5), NODE_MEMPOOL_OK);
    ck_assert(run_until_done(3));
    ck_assert_uint_eq(RELEASED[5], 0);
    /* Commit the first two in a block. */
    const uint8_t *b[2] = {x[0].b, x[1].b};
    size_t l[2] = {x[0].len, x[1].len};
    uint8_t vsec[64], vpub[32], *blk;
    size_t blen;
    fx_vkey(0, vsec, vpub);
    ck_assert_int_eq(ledger_block_build(S, b, l, 2, ledger_store_last_time(S) + 1000, vpub, &blk, &blen), LEDGER_OK);
    ledger_apply_info info;
    ck_assert_int_eq(ledger_store_apply(S, blk, blen, NULL, 0, &FX_EXEC, LEDGER_APPLY_NO_CERT, &info), LEDGER_OK);
    tem_free(blk);
    uint8_t ids[2][32];
    memcpy(ids[0], x[0].txid, 32);
    memcpy(ids[1], x[1].txid, 32);
    node_mempool_block_applied(M, (const uint8_t(*)[32])ids, 2);
    ck_assert_uint_eq(RELEASED[5], 2);
    ck_assert_uint_eq(node_mempool_size(M), 1);
    node_mempool_block_applied(M, (const uint8_t(*)[32])ids, 2); /* again: nothing more */
    ck_assert_uint_eq(RELEASED[5], 2);
    for (int i = 0; i < 3; i++) tem_free(x[i].b);
}
END_TEST

/* A block of txs x[0..n), built, applied to the store and reported to the pool. */
static void commit_block(const tx_t *x, size_t n) {
    const uint8_t *b[8];
    size_t l[8];
    uint8_t ids[8][32], vsec[64], vpub[32], *blk;
    size_t blen;
    ck_assert_uint_le(n, 8);
    for (size_t i = 0; i < n; i++) {
        b[i] = x[i].b;
        l[i] = x[i].len;
        memcpy(ids[i], x[i].txid, 32);
    }
    fx_vkey(0, vsec, vpub);
    ck_assert_int_eq(ledger_block_build(S, b, l, n, ledger_store_last_time(S) + 1000, vpub, &blk, &blen), LEDGER_OK);
    ledger_apply_info info;
    ck_assert_int_eq(ledger_store_apply(S, blk, blen, NULL, 0, &FX_EXEC, LEDGER_APPLY_NO_CERT, &info), LEDGER_OK);
    tem_free(blk);
    node_mempool_block_applied(M, (const uint8_t(*)[32])ids, n);
    node_mempool_block_applied(M, (const uint8_t(*)[32])ids, n); /* again: nothing more */
}

START_TEST(mempool_reports_each_committed_client_tx_once_with_its_estimate) {
    /* Signer 2's nonces 0-2 as a client's (tagged, each with its own submission time and
     * estimate), signer 3's nonce 0 gossiped (no tag), and signer 4's nonce 1 before its
     * nonce 0: the first waits for its signer, not for the queue, and must not be reported. */
    tx_t x[6] = {mk(2, 0), mk(2, 1), mk(2, 2), mk(3, 0), mk(4, 1), mk(4, 0)};
    for (int i = 0; i < 6; i++) {
        node_mempool_admit adm = {.tag = 5, .t_ms = 1000 + (uint64_t)i, .model_ms = 700 + (uint32_t)i};
        ck_assert_int_eq(node_mempool_submit_admit(M, x[i].b, x[i].len, i == 3 ? NULL : &adm, on_done, NULL, NULL),
                         NODE_MEMPOOL_OK);
    }
    ck_assert(run_until_done(6));
    ck_assert_int_eq(OBSERVED_N, 0);
    tx_t blk1[3] = {x[0], x[1], x[3]};
    commit_block(blk1, 3);
    ck_assert_int_eq(OBSERVED_N, 2);
    tx_t blk2[3] = {x[2], x[5], x[4]};
    commit_block(blk2, 3);
    ck_assert_int_eq(OBSERVED_N, 4);
    /* (t_ms, model_ms) of x[0], x[1], then x[2] and x[5]: never the gossiped x[3] or the gapped x[4] */
    static const uint64_t want[4][2] = {{1000, 700}, {1001, 701}, {1002, 702}, {1005, 705}};
    for (int k = 0; k < 4; k++) {
        ck_assert_uint_eq(OBSERVED[k][0], want[k][0]);
        ck_assert_uint_eq(OBSERVED[k][1], want[k][1]);
    }
    ck_assert_uint_eq(RELEASED[5], 5);
    for (int i = 0; i < 6; i++) tem_free(x[i].b);
}
END_TEST

static void advance_loop_ms(uint64_t ms) {
    uv_timer_t t;
    bool fired = false;
    ck_assert_int_eq(uv_timer_init(&LOOP, &t), 0);
    t.data = &fired;
    ck_assert_int_eq(uv_timer_start(&t, on_timeout, ms, 0), 0);
    while (!fired) uv_run(&LOOP, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&LOOP, UV_RUN_NOWAIT);
}

START_TEST(regossip_skips_young_txs_peers_that_have_them_and_recent_sends) {
    tx_t x[3];
    for (int i = 0; i < 3; i++) x[i] = mk(2 + (uint32_t)i, 0);
    for (int i = 0; i < 3; i++) ck_assert_int_eq(submit_tag(&x[i], 0, 0), NODE_MEMPOOL_OK);
    ck_assert(run_until_done(3));
    const uint8_t *txs[8];
    size_t lens[8];
    uint64_t now = uv_now(&LOOP);
    /* Too young for a 200 ms threshold. */
    ck_assert_uint_eq(node_mempool_regossip(M, now, 200, 1, 8, 100, txs, lens), 0);
    advance_loop_ms(250);
    now = uv_now(&LOOP);
    /* Peer 1 gossiped x[1] to us: it is never sent there, but is to peer 2. */
    node_mempool_peer_has(M, x[1].txid, 1);
    ck_assert_uint_eq(node_mempool_regossip(M, now, 200, 1, 8, 100, txs, lens), 2);
    ck_assert_uint_eq(lens[0], x[0].len);
    ck_assert_mem_eq(txs[0], x[0].b, x[0].len);
    ck_assert_mem_eq(txs[1], x[2].b, x[2].len);
    /* Each tx at most once per threshold, whatever the peer. */
    ck_assert_uint_eq(node_mempool_regossip(M, now, 200, 2, 8, 100, txs, lens), 1);
    ck_assert_mem_eq(txs[0], x[1].b, x[1].len);
    ck_assert_uint_eq(node_mempool_regossip(M, now + 199, 200, 2, 8, 100, txs, lens), 0);
    /* After the threshold again: the bound on count (max) and on the walk (scan_max) hold. */
    ck_assert_uint_eq(node_mempool_regossip(M, now + 200, 200, 2, 1, 100, txs, lens), 1);
    ck_assert_uint_eq(node_mempool_regossip(M, now + 200, 200, 2, 8, 1, txs, lens), 0); /* x[0] taken; walk stops */
    ck_assert_uint_eq(node_mempool_regossip(M, now + 200, 200, 1, 8, 100, txs, lens), 1); /* x[2]; x[1] is peer 1's */
    ck_assert_mem_eq(txs[0], x[2].b, x[2].len);
    /* A tx peer 2 never had is never marked as had by sending it. */
    ck_assert_uint_eq(node_mempool_regossip(M, now + 400, 200, 1, 8, 100, txs, lens), 2);
    for (int i = 0; i < 3; i++) tem_free(x[i].b);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("admission");
    TCase *e = tcase_create("estimator");
    tcase_add_test(e, admission_without_estimate_admits_a_modest_queue_only);
    tcase_add_test(e, admission_learns_from_waits_longer_than_estimated);
    tcase_add_test(e, admission_steady_blocks_give_rate_wait_and_depth);
    tcase_add_test(e, admission_idle_intervals_and_bursts_do_not_skew_the_rate);
    tcase_add_test(e, admission_trickle_of_small_blocks_does_not_refuse_a_burst);
    tcase_add_test(e, admission_stalled_chain_refuses_until_a_block_commits);
    tcase_add_test(e, admission_slow_intake_adds_to_the_wait);
    tcase_add_test(e, admission_off_admits_everything);
    tcase_add_test(e, admission_address_share_bounds_one_client);
    tcase_add_test(e, admission_estimate_matches_a_float_reference_over_seeds);
    suite_add_tcase(s, e);
    TCase *m = tcase_create("mempool");
    tcase_add_checked_fixture(m, mp_setup, mp_teardown);
    tcase_add_test(m, mempool_signer_share_refuses_past_the_share_with_its_own_code);
    tcase_add_test(m, mempool_tags_are_released_once_when_txs_leave);
    tcase_add_test(m, mempool_reports_each_committed_client_tx_once_with_its_estimate);
    tcase_add_test(m, regossip_skips_young_txs_peers_that_have_them_and_recent_sends);
    tcase_set_timeout(m, 60);
    suite_add_tcase(s, m);
    return s;
}

int main(void) {
    SRunner *r = srunner_create(suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
