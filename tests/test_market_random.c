/* test_market_random.c: randomised invariant tests of the market over many seeds and thousands
 * of operations (orders, IOC, cancels, readings, transfers, deposits, blocks crossing gate
 * closures and settlements), in both mechanisms. After every operation: money and tokens are
 * conserved (balances + escrow == supply, escrow == what orders and trades hold), no order is
 * filled beyond its quantity, a CDA book is never crossed, and a refused tx leaves the state
 * root as it was (checked on a sample of ops: each root is a Merkle tree). Every seed runs twice, the second time with executors thrown away at random
 * points, and must give byte-identical roots after every block. A failure names its seed. */
#include "market_harness.h"

#define OPS 1500
#define MAX_ORDERS OPS

typedef struct {
    uint8_t txid[32];
    uint64_t qty, filled;
    int owner;
} placed;

static uint64_t xs(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static placed *find_placed(placed *p, int n, const uint8_t txid[32]) {
    for (int i = 0; i < n; i++)
        if (memcmp(p[i].txid, txid, 32) == 0) return &p[i];
    return NULL;
}

/* Runs one seed; writes the root after every block into roots (returns their count). */
static int run_seed(uint64_t seed, int mech, bool feeder, bool restarts, uint8_t (*roots)[32],
                    int max_roots) {
    static mh h;
    static grid_fx_model model;
    static placed pl[MAX_ORDERS];
    int npl = 0, nroots = 0;
    uint64_t s = (seed + 1) * 0x9E3779B97F4A7C15ull, rs = (seed + 7) * 0xD1B54A32D192ED03ull;
    uint64_t cs = (seed + 3) * 0xA0761D6478BD642Full;
    mh_init_meters(&h, mech, 0);
    uint64_t now = T0 + 2 * SLOT_MS + 1000;
    mh_block(&h, now);
    if (feeder) {
        /* Everyone on the 4-bus feeder: trades get curtailed and pay fees to the DSO. */
        grid_fx_model_init(&model);
        MH_CHECK(mh_install(&h, ADMIN, &model) == 0, "install");
        const int who[] = {P1, P2, P3, C1, C2};
        const uint32_t bus[] = {2, 3, 4, 3, 4};
        const int role[] = {TEM__V1__ROLE__PROSUMER, TEM__V1__ROLE__PROSUMER, TEM__V1__ROLE__PROSUMER,
                            TEM__V1__ROLE__CONSUMER, TEM__V1__ROLE__CONSUMER};
        for (int i = 0; i < 5; i++)
            MH_CHECK(mh_register(&h, ADMIN, h.keys[who[i]], PUB, bus[i], role[i]) == 0, "register");
    }
    bool cross = mech == LEDGER_MECH_CDA && !feeder;
    const int traders[] = {P1, P2, P3, C1, C2};
    for (int op = 0; op < OPS; op++) {
        uint64_t r = xs(&s) % 100;
        uint64_t cur = (now - T0) / SLOT_MS;
        if (r < 6) {
            mh_end(&h);
            if (nroots < max_roots) mh_root(&h, roots[nroots++]);
            if (restarts && xs(&rs) % 3 == 0) {
                contracts_market_free(h.m);
                ck_assert_int_eq(contracts_market_new(&h.m), 0);
                contracts_executor(h.m, &h.ex);
            }
            now += 1 + xs(&s) % 200000;
            mh_block(&h, now);
            mh_check_invariants(&h, cross);
            continue;
        }
        /* Roots cost a Merkle tree each: check refusals against the root on a sample of ops
         * (chosen by a second generator so the op stream stays the same). */
        uint8_t before[32], after[32];
        bool sample = xs(&cs) % 8 == 0;
        if (sample) mh_root(&h, before);
        int code;
        if (r < 70) {
            int who = traders[xs(&s) % 5];
            uint64_t slot = cur + 1 + xs(&s) % 4;
            int side = (xs(&s) & 1) ? BUY : SELL;
            uint64_t price = 90000 + xs(&s) % 40 * 1000;
            if (xs(&s) % 50 == 0) price = RETAIL + 1;
            uint64_t qty = xs(&s) % 50 == 0 ? 0 : 1 + xs(&s) % 3000;
            int tif = (mech == LEDGER_MECH_CDA && xs(&s) % 5 == 0) ? IOC : GTC;
            code = mh_order(&h, who, slot, side, price, qty, tif);
            if (code == 0 && npl < MAX_ORDERS) {
                placed *p = &pl[npl++];
                memcpy(p->txid, h.last_txid, 32);
                p->qty = qty;
                p->filled = 0;
                p->owner = who;
            }
            if (code == 0) {
                uint64_t sum = 0;
                for (size_t i = 0; i < h.rc.n_fills; i++) {
                    const Tem__V1__Fill *f = h.rc.fills[i];
                    sum += f->quantity_wh;
                    placed *c = find_placed(pl, npl, f->counter_txid.data);
                    MH_CHECK(c != NULL, "seed %lu: fill against an unknown order", (unsigned long)seed);
                    c->filled += f->quantity_wh;
                    MH_CHECK(c->filled <= c->qty, "seed %lu: resting order overfilled", (unsigned long)seed);
                }
                MH_CHECK(sum + h.rc.remaining_wh <= qty, "seed %lu: taker overfilled", (unsigned long)seed);
                pl[npl - 1].filled = sum;
            }
        } else if (r < 82 && npl > 0) {
            placed *p = &pl[xs(&s) % (uint64_t)npl];
            int who = xs(&s) % 4 == 0 ? traders[xs(&s) % 5] : p->owner;
            code = mh_cancel(&h, who, p->txid);
        } else if (r < 94) {
            int who = traders[xs(&s) % 5];
            uint64_t slot = cur > 2 ? cur - 1 - xs(&s) % 2 : 0;
            bool consumer = who == C1 || who == C2;
            code = mh_reading(&h, who, slot, xs(&s) % 2000, consumer ? 0 : xs(&s) % 3000);
        } else if (r < 97) {
            code = mh_transfer(&h, traders[xs(&s) % 5], traders[xs(&s) % 5], 1 + xs(&s) % 100000);
        } else {
            code = mh_deposit(&h, xs(&s) & 1 ? UTIL : P1, traders[xs(&s) % 5], 1 + xs(&s) % 1000000);
        }
        if (code != 0 && sample) {
            mh_root(&h, after);
            MH_CHECK(memcmp(before, after, 32) == 0, "seed %lu op %d: refusal %d changed the state",
                          (unsigned long)seed, op, code);
        }
        mh_check_invariants(&h, cross);
    }
    /* Run far past every slot: everything settles, no escrow is left anywhere. */
    mh_block(&h, now + 10 * SLOT_MS);
    mh_end(&h);
    if (nroots < max_roots) mh_root(&h, roots[nroots++]);
    mh_check_invariants(&h, cross);
    contracts_account all[NKEYS];
    for (int i = UTIL; i <= C2; i++) {
        all[i] = mh_acct(&h, i);
        MH_CHECK(all[i].money_escrow_uunit == 0 && all[i].tokens_escrow_wh == 0,
                      "seed %lu: escrow left after settlement", (unsigned long)seed);
    }
    mh_free(&h);
    return nroots;
}

static void run_twice(uint64_t seed, int mech, bool feeder) {
    static uint8_t a[OPS + 2][32], b[OPS + 2][32];
    int na = run_seed(seed, mech, feeder, false, a, OPS + 2);
    int nb = run_seed(seed, mech, feeder, true, b, OPS + 2);
    ck_assert_int_eq(na, nb);
    for (int i = 0; i < na; i++)
        MH_CHECK(memcmp(a[i], b[i], 32) == 0, "seed %lu: roots differ after block %d",
                      (unsigned long)seed, i);
}

START_TEST(market_random_cda_keeps_every_invariant_and_is_deterministic) {
    run_twice((uint64_t)_i, LEDGER_MECH_CDA, false);
}
END_TEST

START_TEST(market_random_call_keeps_every_invariant_and_is_deterministic) {
    run_twice((uint64_t)_i + 1000, LEDGER_MECH_CALL, false);
}
END_TEST

START_TEST(market_random_with_a_feeder_conserves_money_including_fees) {
    run_twice((uint64_t)_i + 2000, _i % 3 == 2 ? LEDGER_MECH_CALL : LEDGER_MECH_CDA, true);
}
END_TEST

/* ------------------------------------------------------------------ truthful reporting
 * For many seeds: a slot of random orders (CDA or call auction, with or without a feeder) and
 * random true meter readings for the five traders. One trader is the target; the same slot is
 * run again with its meter silent, and with random deviations it could make by tampering with
 * what its meter sends (import reported higher, export reported lower, or both). Its bill
 * (money paid, debt included) with the truth is never above any of them. The truthful run's
 * settlement lines also match an independent reference that allocates energy Wh by Wh, balance
 * energy line by line and over the slot, and sum to zero money. */
#define PSLOT 4
#define PM0 1000000000ll

typedef struct {
    int seller, buyer;
    int64_t q, p;
} rtrade;

typedef struct {
    rtrade t[256];
    int nt;
    bool bound;
    mh *h;
} rcollect;

static int key_index(mh *h, const uint8_t pub[PUB]) {
    for (int i = 0; i < NKEYS; i++)
        if (memcmp(h->keys[i], pub, PUB) == 0) return i;
    return -1;
}

static int rcollect_trade(void *ctx, const contracts_trade *t) {
    rcollect *c = ctx;
    MH_CHECK(c->nt < 256, "too many trades");
    c->t[c->nt++] = (rtrade){key_index(c->h, t->seller), key_index(c->h, t->buyer), (int64_t)t->qty_wh,
                             (int64_t)t->price};
    return 0;
}

/* floor(x / 1000) */
static int64_t ref_floor(int64_t x) { return x >= 0 ? x / 1000 : -((-x + 999) / 1000); }

/* The reference: every exported Wh walks to the first trade of its seller that still wants
 * one; every imported Wh is met by a delivered Wh, else by the first short trade of its buyer
 * (covered at the seller's retail cost), else bought at retail; what is left is sold at
 * feed-in. out[k]: trader k's money result, thousandths summed then rounded down once. */
static void ref_settle(const rcollect *c, const int64_t *imp, const int64_t *exp, int64_t r,
                       int64_t f, int dso, int64_t out[NKEYS]) {
    int64_t net[NKEYS] = {0}, left[NKEYS], recv[NKEYS] = {0}, need[NKEYS], d[256] = {0}, cv[256] = {0};
    for (int k = 0; k < NKEYS; k++) left[k] = exp[k];
    for (int i = 0; i < c->nt; i++)
        for (int64_t w = 0; w < c->t[i].q && left[c->t[i].seller] > 0; w++) {
            left[c->t[i].seller]--;
            d[i]++;
            recv[c->t[i].buyer]++;
        }
    for (int k = 0; k < NKEYS; k++) need[k] = imp[k] > recv[k] ? imp[k] - recv[k] : 0;
    for (int i = 0; i < c->nt; i++)
        for (int64_t w = d[i]; w < c->t[i].q && need[c->t[i].buyer] > 0; w++) {
            need[c->t[i].buyer]--;
            cv[i]++;
        }
    int64_t met[NKEYS] = {0};
    for (int i = 0; i < c->nt; i++) {
        const rtrade *t = &c->t[i];
        net[t->buyer] -= (d[i] + cv[i]) * t->p;
        net[t->seller] += (d[i] + cv[i]) * t->p - cv[i] * r;
        met[t->buyer] += d[i] + cv[i];
        if (c->bound) {
            net[t->seller] -= (t->q - d[i]) * (r - f);
            net[dso] += (t->q - d[i]) * (r - f);
        }
    }
    for (int k = 0; k < NKEYS; k++) {
        int64_t used = imp[k] < met[k] ? imp[k] : met[k];
        net[k] += (met[k] - used + left[k]) * f - (imp[k] - used) * r;
        out[k] = ref_floor(net[k]);
    }
}

enum { V_TRUTH, V_SILENT, V_MORE_IMPORT, V_LESS_EXPORT, V_BOTH, V_N };

/* Runs the seed's slot with the target's meter sending `variant`; returns the target's bill. */
static int64_t truth_run(uint64_t seed, int target, int variant, bool check_ref) {
    static mh h;
    static grid_fx_model model;
    uint64_t s = (seed + 11) * 0x9E3779B97F4A7C15ull, rs = (seed + 5) * 0xD1B54A32D192ED03ull;
    uint64_t vs = (seed + 13) * 0xA0761D6478BD642Full;
    int mech = seed % 3 == 2 ? LEDGER_MECH_CALL : LEDGER_MECH_CDA;
    bool feeder = seed % 4 == 3;
    mh_init_meters(&h, mech, PSLOT);
    mh_block(&h, T0 + 2 * SLOT_MS + 1000);
    if (feeder) {
        grid_fx_model_init(&model);
        MH_CHECK(mh_install(&h, ADMIN, &model) == 0, "install");
        const int who[] = {P1, P2, P3, C1, C2};
        const uint32_t bus[] = {2, 3, 4, 3, 4};
        const int role[] = {TEM__V1__ROLE__PROSUMER, TEM__V1__ROLE__PROSUMER, TEM__V1__ROLE__PROSUMER,
                            TEM__V1__ROLE__CONSUMER, TEM__V1__ROLE__CONSUMER};
        for (int i = 0; i < 5; i++)
            MH_CHECK(mh_register(&h, ADMIN, h.keys[who[i]], PUB, bus[i], role[i]) == 0, "register");
    }
    int norders = 8 + (int)(xs(&s) % 24);
    for (int i = 0; i < norders; i++) {
        int who = P1 + (int)(xs(&s) % 5);
        int side = who >= C1 || (xs(&s) & 1) ? BUY : SELL;
        uint64_t price = 60000 + xs(&s) % 60 * 4000 + xs(&s) % 7;
        uint64_t qty = feeder ? 1 + xs(&s) % 30000 : 1 + xs(&s) % 4000;
        (void)mh_order(&h, who, PSLOT, side, price, qty, GTC);
    }
    mh_block(&h, mh_slot_start(PSLOT) + SLOT_MS);
    rcollect c = {.h = &h};
    MH_CHECK(contracts_trade_iter(h.st, PSLOT, rcollect_trade, &c) == 0, "trades");
    mk_slot sr;
    bool found;
    MH_CHECK(mk_slot_get(h.st, PSLOT, &sr, &found) == 0, "slot");
    c.bound = (sr.flags & MK_SLOT_BOUND) != 0;
    int64_t imp[NKEYS] = {0}, exp[NKEYS] = {0};
    for (int w = P1; w <= C2; w++) {
        imp[w] = (int64_t)(xs(&rs) % (MH_CAP_WH + 1));
        exp[w] = w >= C1 ? 0 : (int64_t)(xs(&rs) % (MH_CAP_WH + 1));
        if (xs(&rs) % 4 == 0) imp[w] = 0;
    }
    int64_t send_i = imp[target], send_e = exp[target];
    if (variant == V_MORE_IMPORT || variant == V_BOTH) send_i += (int64_t)(xs(&vs) % (uint64_t)(MH_CAP_WH - send_i + 1));
    if (variant == V_LESS_EXPORT || variant == V_BOTH) send_e -= (int64_t)(xs(&vs) % (uint64_t)(send_e + 1));
    for (int w = P1; w <= C2; w++) {
        if (w == target && variant == V_SILENT) continue;
        int64_t i = w == target ? send_i : imp[w], e = w == target ? send_e : exp[w];
        MH_CHECK(mh_reading(&h, w, PSLOT, (uint64_t)i, (uint64_t)e) == 0, "seed %lu: reading",
                 (unsigned long)seed);
    }
    contracts_account before = mh_acct(&h, target);
    (void)before;
    mh_block(&h, mh_deadline(PSLOT) + 1);
    mh_check_invariants(&h, false);
    contracts_account a = mh_acct(&h, target);
    MH_CHECK(a.money_escrow_uunit == 0, "seed %lu: escrow left", (unsigned long)seed);
    if (check_ref) {
        int64_t ref[NKEYS];
        mk_period tar;
        MH_CHECK(mk_tariff_for_slot(h.st, &h.g, PSLOT, &tar) == 0, "tariff");
        ref_settle(&c, imp, exp, tar.retail, tar.feed_in, DSOK, ref);
        /* Per slot: energy and money balance line by line and in sum. */
        int64_t del = 0, rec = 0, cov = 0, cvr = 0, total = 0, unpaid = 0;
        for (int w = UTIL; w <= C2; w++) {
            mk_settle_line l;
            int e = settle_line_get(h.st, PSLOT, h.keys[w], &l);
            if (e == LEDGER_ENOTFOUND && w < P1) continue;
            MH_CHECK(e == 0, "line");
            if (w >= P1)
                MH_CHECK(l.total_uunit == ref[w], "seed %lu: trader %d settles %ld, reference %ld",
                         (unsigned long)seed, w, (long)l.total_uunit, (long)ref[w]);
            MH_CHECK(l.import_wh == l.burnt_wh + l.lack_wh &&
                         l.surplus_wh == l.received_wh + l.covered_wh - l.burnt_wh + l.export_wh - l.delivered_wh &&
                         l.sold_wh == l.delivered_wh + l.shortfall_wh && l.cover_wh <= l.shortfall_wh,
                     "seed %lu: trader %d's energy does not balance", (unsigned long)seed, w);
            del += l.delivered_wh;
            rec += l.received_wh;
            cov += l.covered_wh;
            cvr += l.cover_wh;
            total += l.total_uunit;
            unpaid += l.unpaid_uunit;
        }
        MH_CHECK(del == rec && cov == cvr, "seed %lu: delivered %ld != received %ld or cover",
                 (unsigned long)seed, (long)del, (long)rec);
        MH_CHECK(unpaid != 0 || total == 0, "seed %lu: the slot's results sum to %ld",
                 (unsigned long)seed, (long)total);
    }
    int64_t bill = PM0 - a.money_uunit + a.debt_uunit;
    mh_free(&h);
    return bill;
}

START_TEST(market_random_truthful_reading_is_a_best_response) {
    for (uint64_t seed = (uint64_t)_i * 50; seed < (uint64_t)_i * 50 + 50; seed++) {
        int target = P1 + (int)(seed % 5);
        int64_t truth = truth_run(seed, target, V_TRUTH, true);
        for (int v = V_SILENT; v < V_N; v++) {
            int64_t other = truth_run(seed, target, v, false);
            MH_CHECK(truth <= other, "seed %lu: trader %d pays %ld truthfully, %ld with variant %d",
                     (unsigned long)seed, target, (long)truth, (long)other, v);
        }
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("market_random");
    TCase *t = tcase_create("invariants");
    tcase_set_timeout(t, 600);
    tcase_add_loop_test(t, market_random_cda_keeps_every_invariant_and_is_deterministic, 0, 24);
    tcase_add_loop_test(t, market_random_call_keeps_every_invariant_and_is_deterministic, 0, 12);
    tcase_add_loop_test(t, market_random_with_a_feeder_conserves_money_including_fees, 0, 12);
    tcase_add_loop_test(t, market_random_truthful_reading_is_a_best_response, 0, 8);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
