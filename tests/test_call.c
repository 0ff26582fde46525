/* test_call.c: the uniform-price call auction through the market executor: orders rest without
 * matching until gate closure, one clearing at the documented price, rationing of the long side
 * by time priority at equal prices, escrow released to the micro-unit, IOC refused. */
#include "market_harness.h"

#define SLOT 4
#define NOW (T0 + 2 * SLOT_MS + 1000)

static mh H;
static void setup(void) {
    mh_init(&H, LEDGER_MECH_CALL);
    mh_block(&H, NOW);
}
static void teardown(void) { mh_free(&H); }

typedef struct {
    mk_trade t[16];
    int n;
} trades;

static int grab_trade(void *ctx, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl) {
    (void)k, (void)kl;
    trades *ts = ctx;
    ck_assert_uint_eq(vl, MK_TRADE_BYTES);
    ck_assert_int_lt(ts->n, 16);
    mk_trade_decode(v, &ts->t[ts->n++]);
    return 0;
}

START_TEST(call_orders_rest_crossed_until_gate_closure) {
    ck_assert_int_eq(mh_order(&H, P1, SLOT, SELL, 90000, 400, GTC), 0);
    ck_assert_int_eq(mh_order(&H, C1, SLOT, BUY, 120000, 300, GTC), 0);
    ck_assert_uint_eq(H.rc.n_fills, 0);
    ck_assert_uint_eq(H.rc.remaining_wh, 300);
    ck_assert_int_eq(mh_order(&H, C1, SLOT, BUY, 120000, 300, IOC), CONTRACTS_EMECH);
    trades ts = {0};
    uint8_t p = MK_TRADE;
    ck_assert_int_eq(ledger_state_iter(H.st, &p, 1, grab_trade, &ts), 0);
    ck_assert_int_eq(ts.n, 0);
    mh_check_invariants(&H, false);
}
END_TEST

START_TEST(call_clears_at_the_midpoint_and_rations_ties_by_time) {
    ck_assert_int_eq(mh_order(&H, C1, SLOT, BUY, 120000, 300, GTC), 0);
    ck_assert_int_eq(mh_order(&H, C2, SLOT, BUY, 110000, 300, GTC), 0);
    ck_assert_int_eq(mh_order(&H, P3, SLOT, BUY, 110000, 200, GTC), 0); /* same price, later */
    ck_assert_int_eq(mh_order(&H, P1, SLOT, SELL, 90000, 400, GTC), 0);
    ck_assert_int_eq(mh_order(&H, P2, SLOT, SELL, 105000, 300, GTC), 0);
    ck_assert_int_eq(mh_order(&H, P2, SLOT, SELL, 130000, 300, GTC), 0); /* out of the money */
    mh_block(&H, mh_gate(SLOT));
    trades ts = {0};
    uint8_t p = MK_TRADE;
    ck_assert_int_eq(ledger_state_iter(H.st, &p, 1, grab_trade, &ts), 0);
    /* V = 700 on [105000, 110000] with imbalance 100 at both ends: price 107500. */
    struct {
        int seller, buyer;
        uint64_t qty;
    } want[] = {{P1, C1, 300}, {P1, C2, 100}, {P2, C2, 200}, {P2, P3, 100}};
    ck_assert_int_eq(ts.n, 4);
    for (int i = 0; i < 4; i++) {
        ck_assert_mem_eq(ts.t[i].seller, H.keys[want[i].seller], PUB);
        ck_assert_mem_eq(ts.t[i].buyer, H.keys[want[i].buyer], PUB);
        ck_assert_uint_eq(ts.t[i].qty_wh, want[i].qty);
        ck_assert_uint_eq(ts.t[i].price, 107500);
    }
    /* C1 escrowed 36000 at its limit and keeps exactly the 32250 it pays. */
    contracts_account c1 = mh_acct(&H, C1), p3 = mh_acct(&H, P3), p2 = mh_acct(&H, P2);
    ck_assert_int_eq(c1.money_escrow_uunit, 32250);
    ck_assert_int_eq(c1.money_uunit, 1000000000 - 32250);
    /* P3 got 100 of 200 Wh: 10750 stays, 22000 - 10750 came back. */
    ck_assert_int_eq(p3.money_escrow_uunit, 10750);
    ck_assert_int_eq(p3.money_uunit, 1000000000 - 10750);
    /* P2: collateral of the 300 Wh sold stays for settlement; the unsold order's came back. */
    ck_assert_int_eq(p2.money_escrow_uunit, 9000); /* 10 % of 300 Wh at retail 0.30 */
    ck_assert_int_eq(p2.money_uunit, 1000000000 - 9000);
    mh_check_invariants(&H, false);
    uint8_t po = MK_ORDER;
    mh_escrow_sums e = {0};
    ck_assert_int_eq(ledger_state_iter(H.st, &po, 1, mh_sum_order, &e), 0);
    ck_assert_int_eq(e.order_money + e.order_tokens, 0);
}
END_TEST

START_TEST(call_without_crossing_clears_nothing_and_releases_everything) {
    ck_assert_int_eq(mh_order(&H, C1, SLOT, BUY, 90000, 300, GTC), 0);
    ck_assert_int_eq(mh_order(&H, P1, SLOT, SELL, 100000, 400, GTC), 0);
    mh_block(&H, mh_gate(SLOT));
    trades ts = {0};
    uint8_t p = MK_TRADE;
    ck_assert_int_eq(ledger_state_iter(H.st, &p, 1, grab_trade, &ts), 0);
    ck_assert_int_eq(ts.n, 0);
    ck_assert_int_eq(mh_acct(&H, C1).money_uunit, 1000000000);
    ck_assert_int_eq(mh_acct(&H, P1).tokens_wh, 10000);
    mh_check_invariants(&H, true);
}
END_TEST

int main(void) {
    Suite *s = suite_create("call");
    TCase *t = tcase_create("auction");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, call_orders_rest_crossed_until_gate_closure);
    tcase_add_test(t, call_clears_at_the_midpoint_and_rations_ties_by_time);
    tcase_add_test(t, call_without_crossing_clears_nothing_and_releases_everything);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
