/* test_cda.c: the matching core (contracts/cda_book.h) and the call-auction clearing rule
 * (contracts/call.h): worked examples, callback curtailment, and a randomised comparison with a
 * naive reference book over many seeds. */
#include <check.h>

#include "contracts/call.h"
#include "contracts/cda_book.h"

/* Check logs each passing ck_assert through a syscall; the random loops check this way. */
#define CK(cond)                                                                                   \
    do {                                                                                           \
        if (!(cond)) ck_abort_msg("failed: %s", #cond);                                            \
    } while (0)

typedef struct {
    uint64_t resting_id, qty_wh, price;
} fill_rec;

typedef struct {
    fill_rec fills[256];
    int n;
    /* curtailment table: allowed Wh per resting id (UINT64_MAX = everything) */
    uint64_t cap_id, cap_wh;
    int fail_on_id;
} fill_log;

static int64_t record_fill(void *ctx, const cda_order *r, uint64_t want) {
    fill_log *l = ctx;
    if (l->fail_on_id && r->id == (uint64_t)l->fail_on_id) return -77;
    uint64_t got = want;
    if (r->id == l->cap_id && got > l->cap_wh) got = l->cap_wh;
    if (got > 0) l->fills[l->n++] = (fill_rec){r->id, got, r->price};
    return (int64_t)got;
}

static void add(cda_book *b, uint64_t id, int side, uint64_t price, uint64_t qty) {
    ck_assert_int_eq(cda_book_add(b, id, side, price, qty), CDA_BOOK_OK);
}

START_TEST(cda_match_fills_at_resting_price_in_price_then_time_order) {
    cda_book b;
    cda_book_init(&b);
    add(&b, 1, CDA_SELL, 120, 100);
    add(&b, 2, CDA_SELL, 110, 100);
    add(&b, 3, CDA_SELL, 110, 100); /* same price, later: after 2 */
    add(&b, 4, CDA_SELL, 130, 100); /* above the buyer's limit */
    fill_log l = {0};
    uint64_t left = 0;
    ck_assert_int_eq(cda_book_submit(&b, 9, CDA_BUY, 125, 250, false, record_fill, &l, &left), 0);
    ck_assert_int_eq(l.n, 3);
    ck_assert_uint_eq(l.fills[0].resting_id, 2);
    ck_assert_uint_eq(l.fills[0].price, 110);
    ck_assert_uint_eq(l.fills[1].resting_id, 3);
    ck_assert_uint_eq(l.fills[2].resting_id, 1);
    ck_assert_uint_eq(l.fills[2].price, 120);
    ck_assert_uint_eq(l.fills[2].qty_wh, 50);
    ck_assert_uint_eq(left, 0);
    cda_order o;
    ck_assert_int_eq(cda_book_get(&b, 1, &o), 0);
    ck_assert_uint_eq(o.qty_wh, 50);
    ck_assert_int_eq(cda_book_get(&b, 2, &o), CDA_BOOK_ENOTFOUND);
    ck_assert_int_eq(cda_book_get(&b, 9, &o), CDA_BOOK_ENOTFOUND);
    ck_assert_int_eq(cda_book_count(&b), 2);
    ck_assert_int_eq(cda_book_check(&b), 0);
    cda_book_free(&b);
}
END_TEST

START_TEST(cda_match_partial_fill_keeps_time_priority) {
    cda_book b;
    cda_book_init(&b);
    add(&b, 1, CDA_BUY, 200, 100);
    add(&b, 2, CDA_BUY, 200, 100);
    fill_log l = {0};
    uint64_t left;
    ck_assert_int_eq(cda_book_submit(&b, 3, CDA_SELL, 150, 40, false, record_fill, &l, &left), 0);
    ck_assert_int_eq(cda_book_submit(&b, 4, CDA_SELL, 150, 40, false, record_fill, &l, &left), 0);
    /* Order 1 was partly filled twice and is still first in the queue. */
    ck_assert_int_eq(l.n, 2);
    ck_assert_uint_eq(l.fills[0].resting_id, 1);
    ck_assert_uint_eq(l.fills[1].resting_id, 1);
    ck_assert_int_eq(cda_book_submit(&b, 5, CDA_SELL, 150, 30, false, record_fill, &l, &left), 0);
    ck_assert_int_eq(l.n, 4);
    ck_assert_uint_eq(l.fills[2].resting_id, 1);
    ck_assert_uint_eq(l.fills[2].qty_wh, 20);
    ck_assert_uint_eq(l.fills[3].resting_id, 2);
    ck_assert_uint_eq(l.fills[3].qty_wh, 10);
    ck_assert_int_eq(cda_book_check(&b), 0);
    cda_book_free(&b);
}
END_TEST

START_TEST(cda_ioc_remainder_does_not_rest_and_gtc_remainder_does) {
    cda_book b;
    cda_book_init(&b);
    add(&b, 1, CDA_SELL, 100, 30);
    uint64_t left;
    ck_assert_int_eq(cda_book_submit(&b, 2, CDA_BUY, 100, 50, true, NULL, NULL, &left), 0);
    ck_assert_uint_eq(left, 20);
    ck_assert_int_eq(cda_book_count(&b), 0);
    add(&b, 3, CDA_SELL, 100, 30);
    ck_assert_int_eq(cda_book_submit(&b, 4, CDA_BUY, 100, 50, false, NULL, NULL, &left), 0);
    ck_assert_uint_eq(left, 20);
    cda_order o;
    ck_assert_int_eq(cda_book_get(&b, 4, &o), 0);
    ck_assert_uint_eq(o.qty_wh, 20);
    ck_assert_int_eq(o.side, CDA_BUY);
    uint64_t best;
    ck_assert(cda_book_best(&b, CDA_BUY, &best));
    ck_assert_uint_eq(best, 100);
    ck_assert(!cda_book_best(&b, CDA_SELL, &best));
    cda_book_free(&b);
}
END_TEST

START_TEST(cda_cancel_removes_order_and_its_empty_level) {
    cda_book b;
    cda_book_init(&b);
    add(&b, 1, CDA_SELL, 100, 30);
    add(&b, 2, CDA_SELL, 101, 30);
    cda_order o;
    ck_assert_int_eq(cda_book_remove(&b, 1, &o), 0);
    ck_assert_uint_eq(o.qty_wh, 30);
    ck_assert_int_eq(cda_book_remove(&b, 1, NULL), CDA_BOOK_ENOTFOUND);
    ck_assert_int_eq(cda_book_levels(&b, CDA_SELL), 1);
    uint64_t best;
    ck_assert(cda_book_best(&b, CDA_SELL, &best));
    ck_assert_uint_eq(best, 101);
    ck_assert_int_eq(cda_book_add(&b, 2, CDA_BUY, 1, 1), CDA_BOOK_EEXISTS);
    ck_assert_int_eq(cda_book_add(&b, 5, CDA_BUY, 1, 0), CDA_BOOK_EINVAL);
    ck_assert_int_eq(cda_book_check(&b), 0);
    cda_book_free(&b);
}
END_TEST

START_TEST(cda_curtailed_to_zero_leaves_both_and_continues_with_next) {
    cda_book b;
    cda_book_init(&b);
    add(&b, 1, CDA_SELL, 100, 50);
    add(&b, 2, CDA_SELL, 100, 50);
    add(&b, 3, CDA_SELL, 105, 50);
    fill_log l = {.cap_id = 1, .cap_wh = 0};
    uint64_t left;
    ck_assert_int_eq(cda_book_submit(&b, 9, CDA_BUY, 110, 80, false, record_fill, &l, &left), 0);
    ck_assert_int_eq(l.n, 2);
    ck_assert_uint_eq(l.fills[0].resting_id, 2);
    ck_assert_uint_eq(l.fills[1].resting_id, 3);
    ck_assert_uint_eq(l.fills[1].qty_wh, 30);
    cda_order o;
    ck_assert_int_eq(cda_book_get(&b, 1, &o), 0);
    ck_assert_uint_eq(o.qty_wh, 50);
    ck_assert_int_eq(cda_book_check(&b), 0);
    cda_book_free(&b);
}
END_TEST

START_TEST(cda_partial_curtailment_rests_the_rest_even_if_crossed) {
    cda_book b;
    cda_book_init(&b);
    add(&b, 1, CDA_SELL, 100, 50);
    fill_log l = {.cap_id = 1, .cap_wh = 20};
    uint64_t left;
    ck_assert_int_eq(cda_book_submit(&b, 9, CDA_BUY, 110, 50, false, record_fill, &l, &left), 0);
    ck_assert_uint_eq(left, 30);
    cda_order o;
    ck_assert_int_eq(cda_book_get(&b, 1, &o), 0);
    ck_assert_uint_eq(o.qty_wh, 30);
    ck_assert_int_eq(cda_book_get(&b, 9, &o), 0);
    ck_assert_uint_eq(o.qty_wh, 30);
    ck_assert_int_eq(cda_book_check(&b), 0);
    cda_book_free(&b);
}
END_TEST

START_TEST(cda_callback_error_stops_the_walk_and_is_returned) {
    cda_book b;
    cda_book_init(&b);
    add(&b, 1, CDA_SELL, 100, 50);
    add(&b, 2, CDA_SELL, 100, 50);
    fill_log l = {.fail_on_id = 2};
    uint64_t q = 80;
    ck_assert_int_eq(cda_book_match(&b, CDA_BUY, 100, &q, record_fill, &l), -77);
    ck_assert_uint_eq(q, 30);
    ck_assert_int_eq(cda_book_count(&b), 1);
    ck_assert_int_eq(cda_book_check(&b), 0);
    cda_book_free(&b);
}
END_TEST

static int64_t stop_on_second(void *ctx, const cda_order *r, uint64_t want) {
    int *calls = ctx;
    (void)r;
    return ++*calls == 2 ? CDA_FILL_STOP : (int64_t)want;
}

START_TEST(cda_callback_stop_ends_the_walk_without_error) {
    cda_book b;
    cda_book_init(&b);
    add(&b, 1, CDA_SELL, 100, 50);
    add(&b, 2, CDA_SELL, 100, 50);
    add(&b, 3, CDA_SELL, 101, 50);
    int calls = 0;
    uint64_t left;
    ck_assert_int_eq(cda_book_submit(&b, 9, CDA_BUY, 101, 120, false, stop_on_second, &calls, &left), 0);
    ck_assert_int_eq(calls, 2);
    ck_assert_uint_eq(left, 70);
    cda_order o;
    ck_assert_int_eq(cda_book_get(&b, 9, &o), 0); /* the rest rests */
    ck_assert_uint_eq(o.qty_wh, 70);
    ck_assert_int_eq(cda_book_count(&b), 3);
    ck_assert_int_eq(cda_book_check(&b), 0);
    cda_book_free(&b);
}
END_TEST

/* ------------------------------------------------------------------ reference model */
typedef struct {
    uint64_t id, price, qty, seq;
    int side;
    bool live;
} ref_order;

static uint64_t xs(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Best live counter-order by price then seq: O(n), obviously right. */
static int ref_best(ref_order *r, int n, int side) {
    int best = -1;
    for (int i = 0; i < n; i++) {
        if (!r[i].live || r[i].side != side) continue;
        if (best < 0) {
            best = i;
            continue;
        }
        bool better = side == CDA_SELL ? r[i].price < r[best].price : r[i].price > r[best].price;
        if (better || (r[i].price == r[best].price && r[i].seq < r[best].seq)) best = i;
    }
    return best;
}

START_TEST(cda_random_streams_match_a_naive_reference_book) {
    enum { OPS = 3000, MAXO = 3000 };
    static ref_order ref[MAXO];
    for (uint64_t seed = 1; seed <= 40; seed++) {
        uint64_t s = seed * 0x9E3779B97F4A7C15ull;
        cda_book b;
        cda_book_init(&b);
        int n = 0;
        uint64_t in_wh = 0, filled_wh = 0, cancelled_wh = 0;
        for (int op = 0; op < OPS; op++) {
            uint64_t r = xs(&s);
            if (r % 5 == 0 && n > 0) {
                int k = (int)(xs(&s) % (uint64_t)n);
                cda_order o;
                int rc = cda_book_remove(&b, ref[k].id, &o);
                if (ref[k].live) {
                    CK((rc) == (0));
                    CK((o.qty_wh) == (ref[k].qty));
                    cancelled_wh += ref[k].qty;
                    ref[k].live = false;
                } else {
                    CK((rc) == (CDA_BOOK_ENOTFOUND));
                }
                continue;
            }
            int side = (int)(xs(&s) & 1);
            uint64_t price = 95 + xs(&s) % 11, qty = 1 + xs(&s) % 100;
            bool ioc = xs(&s) % 7 == 0;
            in_wh += qty;
            /* reference matching */
            uint64_t rem = qty;
            fill_log want = {0};
            for (;;) {
                int k = ref_best(ref, n, side ^ 1);
                if (k < 0 || rem == 0) break;
                bool cross = side == CDA_BUY ? ref[k].price <= price : ref[k].price >= price;
                if (!cross) break;
                uint64_t q = rem < ref[k].qty ? rem : ref[k].qty;
                want.fills[want.n++ % 256] = (fill_rec){ref[k].id, q, ref[k].price};
                rem -= q;
                ref[k].qty -= q;
                if (ref[k].qty == 0) ref[k].live = false;
            }
            fill_log got = {0};
            uint64_t left;
            uint64_t id = 1000 + (uint64_t)op;
            CK(cda_book_submit(&b, id, side, price, qty, ioc, record_fill, &got, &left) == 0);
            CK((left) == (rem));
            CK((got.n) == (want.n));
            for (int i = 0; i < got.n && i < 256; i++) {
                CK((got.fills[i].resting_id) == (want.fills[i].resting_id));
                CK((got.fills[i].qty_wh) == (want.fills[i].qty_wh));
                CK((got.fills[i].price) == (want.fills[i].price));
                filled_wh += 2 * got.fills[i].qty_wh;
            }
            if (rem > 0 && !ioc && n < MAXO) {
                ref[n++] = (ref_order){id, price, rem, (uint64_t)op, side, true};
            } else if (rem > 0 && ioc) {
                cancelled_wh += rem;
            }
            /* The book is never crossed after an operation. */
            uint64_t bb, bs;
            if (cda_book_best(&b, CDA_BUY, &bb) && cda_book_best(&b, CDA_SELL, &bs))
                CK((bb) < (bs));
        }
        CK((cda_book_check(&b)) == (0));
        /* Every Wh that came in is resting, filled (counted on both sides) or cancelled. */
        uint64_t resting = 0;
        for (int i = 0; i < n; i++)
            if (ref[i].live) resting += ref[i].qty;
        CK((in_wh) == (resting + filled_wh + cancelled_wh));
        cda_book_free(&b);
    }
}
END_TEST

/* ------------------------------------------------------------------ call auction */
typedef struct {
    const char *name;
    struct {
        int side;
        uint64_t price, qty;
    } o[8];
    int n;
    uint64_t want_price, want_volume, want_lo, want_hi;
} call_case;

static const call_case call_cases[] = {
    {"empty side clears nothing", {{CDA_BUY, 100, 10}}, 1, 0, 0, 0, 0},
    {"no crossing clears nothing", {{CDA_BUY, 90, 10}, {CDA_SELL, 100, 10}}, 2, 0, 0, 0, 0},
    {"one pair clears in the middle of the spread",
     {{CDA_BUY, 120, 10}, {CDA_SELL, 100, 10}}, 2, 110, 10, 100, 120},
    {"odd interval rounds down", {{CDA_BUY, 121, 10}, {CDA_SELL, 100, 10}}, 2, 110, 10, 100, 121},
    {"short supply sets the price at the marginal buyer",
     {{CDA_BUY, 130, 10}, {CDA_BUY, 120, 10}, {CDA_BUY, 110, 10}, {CDA_SELL, 100, 15}},
     4, 120, 15, 120, 120},
    {"equal volume tie broken by smallest imbalance",
     {{CDA_BUY, 130, 10}, {CDA_BUY, 110, 5}, {CDA_SELL, 100, 10}, {CDA_SELL, 120, 10}},
     4, 105, 10, 100, 110},
    {"staircase crossing",
     {{CDA_BUY, 150, 30}, {CDA_BUY, 140, 20}, {CDA_BUY, 100, 50},
      {CDA_SELL, 90, 20}, {CDA_SELL, 120, 20}, {CDA_SELL, 145, 40}},
     6, 130, 40, 120, 140},
};

START_TEST(call_clearing_follows_the_documented_rule) {
    const call_case *c = &call_cases[_i];
    cda_book b;
    cda_book_init(&b);
    for (int i = 0; i < c->n; i++)
        ck_assert_int_eq(cda_book_add(&b, (uint64_t)i + 1, c->o[i].side, c->o[i].price, c->o[i].qty), 0);
    call_result r;
    call_clear(&b, &r);
    ck_assert_msg(r.volume_wh == c->want_volume, "%s: volume %lu", c->name, (unsigned long)r.volume_wh);
    ck_assert_msg(r.price == c->want_price, "%s: price %lu", c->name, (unsigned long)r.price);
    if (c->want_volume) {
        ck_assert_msg(r.lo == c->want_lo && r.hi == c->want_hi, "%s: [%lu,%lu]", c->name,
                      (unsigned long)r.lo, (unsigned long)r.hi);
        ck_assert_uint_ge(r.demand_wh, r.volume_wh);
        ck_assert_uint_ge(r.supply_wh, r.volume_wh);
    }
    cda_book_free(&b);
}
END_TEST

START_TEST(call_clearing_volume_is_the_maximum_over_all_prices) {
    for (uint64_t seed = 1; seed <= 200; seed++) {
        uint64_t s = seed * 0x2545F4914F6CDD1Dull;
        cda_book b;
        cda_book_init(&b);
        int n = 1 + (int)(xs(&s) % 30);
        uint64_t pr[40], q[40];
        int sd[40];
        for (int i = 0; i < n; i++) {
            sd[i] = (int)(xs(&s) & 1);
            pr[i] = 100 + xs(&s) % 20;
            q[i] = 1 + xs(&s) % 50;
            CK(cda_book_add(&b, (uint64_t)i, sd[i], pr[i], q[i]) == 0);
        }
        call_result r;
        call_clear(&b, &r);
        uint64_t best = 0;
        for (uint64_t p = 99; p <= 120; p++) {
            uint64_t d = 0, sp = 0;
            for (int i = 0; i < n; i++) {
                if (sd[i] == CDA_BUY && pr[i] >= p) d += q[i];
                if (sd[i] == CDA_SELL && pr[i] <= p) sp += q[i];
            }
            uint64_t v = d < sp ? d : sp;
            if (v > best) best = v;
            if (p == r.price && r.volume_wh) CK((v) == (r.volume_wh));
        }
        CK((r.volume_wh) == (best));
        cda_book_free(&b);
    }
}
END_TEST

static Suite *cda_suite(void) {
    Suite *s = suite_create("cda");
    TCase *t = tcase_create("core");
    tcase_add_test(t, cda_match_fills_at_resting_price_in_price_then_time_order);
    tcase_add_test(t, cda_match_partial_fill_keeps_time_priority);
    tcase_add_test(t, cda_ioc_remainder_does_not_rest_and_gtc_remainder_does);
    tcase_add_test(t, cda_cancel_removes_order_and_its_empty_level);
    tcase_add_test(t, cda_curtailed_to_zero_leaves_both_and_continues_with_next);
    tcase_add_test(t, cda_partial_curtailment_rests_the_rest_even_if_crossed);
    tcase_add_test(t, cda_callback_error_stops_the_walk_and_is_returned);
    tcase_add_test(t, cda_callback_stop_ends_the_walk_without_error);
    tcase_add_test(t, cda_random_streams_match_a_naive_reference_book);
    tcase_add_loop_test(t, call_clearing_follows_the_documented_rule, 0,
                        (int)(sizeof(call_cases) / sizeof(call_cases[0])));
    tcase_add_test(t, call_clearing_volume_is_the_maximum_over_all_prices);
    suite_add_tcase(s, t);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(cda_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
