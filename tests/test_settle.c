/* test_settle.c: settlement of a delivery slot, worked through by hand (docs/market.md, section
 * 8): delivery from the slot's metered export, cover of a buyer's imported shortfall at its
 * seller's cost, a silent meter's estimate, imports bought from the utility at retail, unsold
 * energy sold to it at feed-in, debts, and the cleanup. */
#include "market_harness.h"

#define SLOT 4
#define NOW (T0 + 2 * SLOT_MS + 1000)

static mh H;
static void setup(void) {
    mh_init_meters(&H, LEDGER_MECH_CDA, SLOT);
    mh_block(&H, NOW);
}
static void teardown(void) { mh_free(&H); }

static mk_settle_line line_of(int who) {
    mk_settle_line l;
    ck_assert_int_eq(settle_line_get(H.st, SLOT, H.keys[who], &l), 0);
    return l;
}

static int count_one(void *ctx, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl) {
    (void)k, (void)kl, (void)v, (void)vl;
    (*(size_t *)ctx)++;
    return 0;
}

static size_t count_prefix(uint8_t kind) {
    uint8_t p[9];
    p[0] = kind;
    tem_put_u64be(p + 1, SLOT);
    size_t n = 0;
    ck_assert_int_eq(ledger_state_iter(H.st, p, 9, count_one, &n), 0);
    return n;
}

typedef struct {
    contracts_trade t[8];
    contracts_settlement l[8];
    int nt, nl;
} views;

static int view_trade(void *ctx, const contracts_trade *t) {
    views *v = ctx;
    if (v->nt < 8) v->t[v->nt] = *t;
    v->nt++;
    return 0;
}

static int view_line(void *ctx, const contracts_settlement *l) {
    views *v = ctx;
    if (v->nl < 8) v->l[v->nl] = *l;
    v->nl++;
    return 0;
}

START_TEST(settle_slot_with_shortfall_and_surplus_moves_every_unit_as_documented) {
    ck_assert_int_eq(mh_order(&H, P1, SLOT, SELL, 100000, 1000, GTC), 0);
    ck_assert_int_eq(mh_order(&H, C1, SLOT, BUY, 120000, 600, GTC), 0);
    ck_assert_int_eq(mh_order(&H, P2, SLOT, SELL, 110000, 500, GTC), 0);
    ck_assert_int_eq(mh_order(&H, C2, SLOT, BUY, 110000, 700, GTC), 0);
    ck_assert_uint_eq(H.rc.n_fills, 2);
    ck_assert_uint_eq(H.rc.escrow_released, 4000);
    mh_block(&H, mh_gate(SLOT)); /* P2's unfilled 200 Wh expire */
    ck_assert_int_eq(mh_acct(&H, P2).money_escrow_uunit, 9000); /* collateral of the 300 Wh sold */
    uint64_t end = mh_slot_start(SLOT) + SLOT_MS;
    mh_block(&H, end);
    ck_assert_int_eq(mh_reading(&H, P1, SLOT, 0, 800), 0);
    ck_assert_int_eq(H.rc.minted_wh, 800);
    ck_assert_int_eq(mh_acct(&H, P1).tokens_wh, 10000); /* nothing credited before settlement */
    ck_assert_int_eq(mh_reading(&H, P2, SLOT, 100, 500), 0);
    ck_assert_int_eq(mh_reading(&H, C1, SLOT, 700, 0), 0);
    mh_block(&H, mh_deadline(SLOT)); /* the last moment a reading counts */
    ck_assert_int_eq(mh_reading(&H, C2, SLOT, 500, 0), 0);
    ck_assert_uint_eq(count_prefix(MK_TRADE), 3);
    views v = {0};
    ck_assert_int_eq(contracts_trade_iter(H.st, SLOT, view_trade, &v), 0);
    ck_assert_int_eq(v.nt, 3);
    ck_assert_mem_eq(v.t[1].seller, H.keys[P1], PUB);
    ck_assert_mem_eq(v.t[1].buyer, H.keys[C2], PUB);
    ck_assert_uint_eq(v.t[1].qty_wh, 400);
    ck_assert_int_eq(v.t[1].value_uunit, 40000);
    ck_assert_uint_eq(v.t[2].price, 110000);
    mh_check_invariants(&H, true);

    /* P3's meter never reported: estimated at 10 kWh import, 0 export. */
    mh_block(&H, mh_deadline(SLOT) + 1);
    contracts_account p1 = mh_acct(&H, P1), p2 = mh_acct(&H, P2), p3 = mh_acct(&H, P3),
                      c1 = mh_acct(&H, C1), c2 = mh_acct(&H, C2), u = mh_acct(&H, UTIL);
    /* P1 exported 800 of the 1000 Wh it sold: C1 got its 600, C2 200 of 400. C2 imported only
     * the 500 Wh it received, so it needs no cover: it pays for 500 Wh and P1 is paid for 800. */
    ck_assert_int_eq(p1.money_uunit, 1000000000 + 80000);
    ck_assert_int_eq(p1.money_escrow_uunit, 0);
    ck_assert_int_eq(p1.tokens_wh, 10000);
    ck_assert_int_eq(p2.money_uunit, 1000000000 + 33000 - 30000 + 10000); /* trade, lack, surplus */
    ck_assert_int_eq(p3.money_uunit, 1000000000 - 3000000);
    ck_assert_int_eq(c1.money_uunit, 1000000000 - 60000 - 30000); /* 600 Wh traded, 100 retail */
    ck_assert_int_eq(c1.money_escrow_uunit, 0);
    ck_assert_int_eq(c2.money_uunit, 1000000000 - 20000 - 33000);
    ck_assert_int_eq(c2.money_escrow_uunit, 0);
    ck_assert_int_eq(u.money_uunit, 1000000000000ll + 90000 + 53000 + 3000000 - 80000 - 13000);
    contracts_supply s;
    ck_assert_int_eq(contracts_supply_get(H.st, &s), 0);
    ck_assert_int_eq(s.tokens_wh, 30000);
    ck_assert_int_eq(s.minted_wh, 1300);
    ck_assert_int_eq(s.burnt_wh, 1300);

    mk_settle_line l = line_of(P1);
    ck_assert_int_eq(l.sold_wh, 1000);
    ck_assert_int_eq(l.delivered_wh, 800);
    ck_assert_int_eq(l.shortfall_wh, 200);
    ck_assert_int_eq(l.cover_wh, 0);
    ck_assert_int_eq(l.trade_net_uunit, 80000);
    ck_assert_int_eq(l.penalty_net_uunit, 0);
    ck_assert_int_eq(l.total_uunit, 80000);
    l = line_of(P2);
    ck_assert_int_eq(l.surplus_wh, 200);
    ck_assert_int_eq(l.lack_wh, 100);
    ck_assert_int_eq(l.utility_net_uunit, -20000);
    ck_assert_int_eq(l.total_uunit, 13000);
    l = line_of(P3);
    ck_assert_int_eq(l.estimated, 1);
    ck_assert_int_eq(l.import_wh, 10000);
    ck_assert_int_eq(l.lack_wh, 10000);
    ck_assert_int_eq(l.total_uunit, -3000000);
    l = line_of(C1);
    ck_assert_int_eq(l.lack_wh, 100);
    ck_assert_int_eq(l.utility_net_uunit, -30000);
    ck_assert_int_eq(l.burnt_wh, 600);
    l = line_of(C2);
    ck_assert_int_eq(l.bought_wh, 700);
    ck_assert_int_eq(l.received_wh, 500);
    ck_assert_int_eq(l.covered_wh, 0);
    ck_assert_int_eq(l.penalty_net_uunit, 0);
    ck_assert_int_eq(l.trade_net_uunit, -53000);
    ck_assert_int_eq(l.burnt_wh, 500);
    ck_assert_int_eq(l.lack_wh, 0);
    /* Trades, readings and the slot record are gone; the lines stay (the utility's too). */
    ck_assert_uint_eq(count_prefix(MK_TRADE), 0);
    ck_assert_uint_eq(count_prefix(MK_READ), 0);
    ck_assert_uint_eq(count_prefix(MK_SETTLED), 6);
    ck_assert_int_eq(contracts_settlement_iter(H.st, SLOT, view_line, &v), 0);
    ck_assert_int_eq(v.nl, 6);
    ck_assert_mem_eq(v.l[0].pubkey, H.keys[UTIL], PUB); /* key order */
    ck_assert_int_eq(v.l[0].total_uunit, 3050000);
    ck_assert_int_eq(v.l[1].shortfall_wh, 200);
    ck_assert_int_eq(v.l[5].received_wh, 500);
    v.nt = 0;
    ck_assert_int_eq(contracts_trade_iter(H.st, SLOT, view_trade, &v), 0);
    ck_assert_int_eq(v.nt, 0);
    mh_check_invariants(&H, true);
    /* Too late now. */
    ck_assert_int_eq(mh_reading(&H, P3, SLOT, 1, 1), CONTRACTS_ELATE);
}
END_TEST

START_TEST(settle_short_seller_without_money_carries_the_rest_as_debt) {
    ck_assert_int_eq(mh_transfer(&H, P1, P3, 1000000000 - 5000), 0);
    ck_assert_int_eq(mh_order(&H, P1, SLOT, SELL, 100000, 100, GTC), 0);
    ck_assert_int_eq(H.rc.escrow_held, 3000); /* collateral: 10 % of 100 Wh at retail */
    ck_assert_int_eq(mh_order(&H, C1, SLOT, BUY, 100000, 100, GTC), 0);
    mh_block(&H, mh_slot_start(SLOT) + SLOT_MS);
    ck_assert_int_eq(mh_reading(&H, P1, SLOT, 0, 0), 0);
    ck_assert_int_eq(mh_reading(&H, C1, SLOT, 100, 0), 0);
    mh_block(&H, mh_deadline(SLOT) + 1);
    /* P1 delivered nothing, C1 imported the 100 Wh: P1 covers them at retail (30000) and is
     * paid the trade price (10000). It had 5000 (collateral included): 15000 is debt. */
    contracts_account p1 = mh_acct(&H, P1), c1 = mh_acct(&H, C1);
    ck_assert_int_eq(p1.money_uunit, 0);
    ck_assert_int_eq(p1.debt_uunit, 15000);
    /* C1 pays the trade price for its import, as if delivered: no more, no less. */
    ck_assert_int_eq(c1.money_uunit, 1000000000 - 10000);
    mk_settle_line l = line_of(P1);
    ck_assert_int_eq(l.unpaid_uunit, 15000);
    ck_assert_int_eq(l.shortfall_wh, 100);
    ck_assert_int_eq(l.cover_wh, 100);
    ck_assert_int_eq(l.penalty_net_uunit, -30000);
    l = line_of(C1);
    ck_assert_int_eq(l.covered_wh, 100);
    ck_assert_int_eq(l.lack_wh, 0);
    ck_assert_int_eq(l.total_uunit, -10000);
    mh_check_invariants(&H, true);
}
END_TEST

START_TEST(settle_waits_for_the_deadline_and_settles_each_slot_once) {
    ck_assert_int_eq(mh_order(&H, P1, SLOT, SELL, 100000, 100, GTC), 0);
    ck_assert_int_eq(mh_order(&H, C1, SLOT, BUY, 100000, 100, GTC), 0);
    mh_block(&H, mh_deadline(SLOT));
    ck_assert_uint_eq(count_prefix(MK_TRADE), 1);
    ck_assert_int_eq(mh_acct(&H, C1).money_escrow_uunit, 10000);
    mh_block(&H, mh_deadline(SLOT) + 1);
    ck_assert_uint_eq(count_prefix(MK_TRADE), 0);
    int64_t p1 = mh_acct(&H, P1).money_uunit;
    mh_block(&H, mh_deadline(SLOT) + 2);
    ck_assert_int_eq(mh_acct(&H, P1).money_uunit, p1);
    mh_check_invariants(&H, true);
}
END_TEST

int main(void) {
    Suite *s = suite_create("settle");
    TCase *t = tcase_create("slot");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, settle_slot_with_shortfall_and_surplus_moves_every_unit_as_documented);
    tcase_add_test(t, settle_short_seller_without_money_carries_the_rest_as_debt);
    tcase_add_test(t, settle_waits_for_the_deadline_and_settles_each_slot_once);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
