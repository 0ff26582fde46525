/* test_market.c: worked examples of the continuous double auction through the market executor
 * (fills at the resting price, price-time priority, partial fills, IOC, cancel, expiry at gate
 * closure, escrow to the micro-unit) and every refusal with its reason code and an unchanged
 * state. */
#include "market_harness.h"

#define SLOT 4 /* open for orders at the harness' time */
#define NOW (T0 + 2 * SLOT_MS + 1000)

static mh H;

static void setup(void) {
    mh_init_meters(&H, LEDGER_MECH_CDA, 1);
    mh_block(&H, NOW);
}
static void teardown(void) { mh_free(&H); }

START_TEST(market_buy_fills_resting_sell_at_the_resting_price) {
    ck_assert_int_eq(mh_order(&H, P1, SLOT, SELL, 100000, 1000, GTC), 0);
    uint8_t sell_txid[32];
    memcpy(sell_txid, H.last_txid, 32);
    ck_assert_uint_eq(H.rc.escrow_held, 30000); /* collateral: 10 % of 1000 Wh at retail 0.30 */
    ck_assert_uint_eq(H.rc.remaining_wh, 1000);
    ck_assert_int_eq(mh_order(&H, C1, SLOT, BUY, 120000, 600, GTC), 0);
    ck_assert_uint_eq(H.rc.n_fills, 1);
    ck_assert_uint_eq(H.rc.fills[0]->quantity_wh, 600);
    ck_assert_uint_eq(H.rc.fills[0]->price, 100000);
    ck_assert_mem_eq(H.rc.fills[0]->counter_txid.data, sell_txid, 32);
    ck_assert_uint_eq(H.rc.escrow_held, 72000);     /* 600 Wh x 0.12 / Wh */
    ck_assert_uint_eq(H.rc.escrow_released, 12000); /* price improvement */
    ck_assert_uint_eq(H.rc.remaining_wh, 0);
    contracts_account c1 = mh_acct(&H, C1), p1 = mh_acct(&H, P1);
    ck_assert_int_eq(c1.money_uunit, 1000000000 - 60000);
    ck_assert_int_eq(c1.money_escrow_uunit, 60000);
    ck_assert_int_eq(p1.tokens_wh, 10000); /* tokens never move */
    ck_assert_int_eq(p1.money_escrow_uunit, 30000); /* 12000 on the order, 18000 on the trade */
    ck_assert_int_eq(p1.money_uunit, 1000000000 - 30000); /* the value is paid at settlement */
    mh_check_invariants(&H, true);
}
END_TEST

static int count_order(void *ctx, const contracts_order *o) {
    contracts_order *last = ctx;
    uint64_t n = last->seq == UINT64_MAX ? 0 : last->slot; /* slot field reused as a count */
    *last = *o;
    last->slot = n + 1;
    return 0;
}

START_TEST(market_sweep_follows_price_then_time_priority_with_partial_fills) {
    ck_assert_int_eq(mh_order(&H, P1, SLOT, SELL, 110000, 300, GTC), 0);
    uint8_t t1[32];
    memcpy(t1, H.last_txid, 32);
    ck_assert_int_eq(mh_order(&H, P2, SLOT, SELL, 100000, 300, GTC), 0);
    uint8_t t2[32];
    memcpy(t2, H.last_txid, 32);
    ck_assert_int_eq(mh_order(&H, P3, SLOT, SELL, 100000, 300, GTC), 0);
    uint8_t t3[32];
    memcpy(t3, H.last_txid, 32);
    ck_assert_int_eq(mh_order(&H, C1, SLOT, BUY, 110000, 700, GTC), 0);
    ck_assert_uint_eq(H.rc.n_fills, 3);
    ck_assert_mem_eq(H.rc.fills[0]->counter_txid.data, t2, 32);
    ck_assert_mem_eq(H.rc.fills[1]->counter_txid.data, t3, 32);
    ck_assert_mem_eq(H.rc.fills[2]->counter_txid.data, t1, 32);
    ck_assert_uint_eq(H.rc.fills[2]->quantity_wh, 100);
    ck_assert_uint_eq(H.rc.fills[2]->price, 110000);
    /* 300*100 + 300*100 + 100*110 = 71000 paid of 77000 held */
    ck_assert_uint_eq(H.rc.escrow_held, 77000);
    ck_assert_uint_eq(H.rc.escrow_released, 6000);
    ck_assert_int_eq(mh_order(&H, C2, SLOT, BUY, 110000, 500, GTC), 0);
    ck_assert_uint_eq(H.rc.n_fills, 1);
    ck_assert_mem_eq(H.rc.fills[0]->counter_txid.data, t1, 32);
    ck_assert_uint_eq(H.rc.fills[0]->quantity_wh, 200);
    ck_assert_uint_eq(H.rc.remaining_wh, 300);
    ck_assert_int_eq(mh_acct(&H, C2).money_escrow_uunit, 22000 + 33000);
    /* The view shows the one resting order, C2's remainder, with its escrow. */
    contracts_order last = {.seq = UINT64_MAX};
    ck_assert_int_eq(contracts_order_iter(H.st, SLOT, count_order, &last), 0);
    ck_assert_uint_eq(last.slot, 1); /* one order */
    ck_assert_mem_eq(last.owner, H.keys[C2], PUB);
    ck_assert_uint_eq(last.remaining_wh, 300);
    ck_assert_uint_eq(last.qty_wh, 500);
    ck_assert_int_eq(last.escrow_uunit, 33000);
    ck_assert_int_eq(last.side, BUY);
    mh_check_invariants(&H, true);
}
END_TEST

START_TEST(market_ioc_fills_what_it_can_and_releases_the_rest) {
    ck_assert_int_eq(mh_order(&H, P1, SLOT, SELL, 100000, 100, GTC), 0);
    ck_assert_int_eq(mh_order(&H, C1, SLOT, BUY, 100000, 250, IOC), 0);
    ck_assert_uint_eq(H.rc.n_fills, 1);
    ck_assert_uint_eq(H.rc.remaining_wh, 0);
    ck_assert_uint_eq(H.rc.escrow_held, 25000);
    ck_assert_uint_eq(H.rc.escrow_released, 15000);
    ck_assert_int_eq(mh_acct(&H, C1).money_escrow_uunit, 10000);
    /* Nothing to match: everything comes back in the same tx, nothing rests. */
    ck_assert_int_eq(mh_order(&H, C2, SLOT, BUY, 100000, 50, IOC), 0);
    ck_assert_uint_eq(H.rc.n_fills, 0);
    ck_assert_uint_eq(H.rc.escrow_released, 5000);
    ck_assert_int_eq(mh_acct(&H, C2).money_uunit, 1000000000);
    ck_assert_int_eq(mh_acct(&H, C2).money_escrow_uunit, 0);
    mh_check_invariants(&H, true);
}
END_TEST

START_TEST(market_cancel_releases_escrow_to_the_micro_unit) {
    ck_assert_int_eq(mh_order(&H, C1, SLOT, BUY, 90001, 333, GTC), 0);
    uint8_t t[32];
    memcpy(t, H.last_txid, 32);
    ck_assert_uint_eq(H.rc.escrow_held, 29971); /* ceil(333 * 90001 / 1000) = ceil(29970.333) */
    ck_assert_int_eq(mh_acct(&H, C1).money_uunit, 1000000000 - 29971);
    ck_assert_int_eq(mh_cancel(&H, C2, t), CONTRACTS_ENOTOWNER);
    ck_assert_int_eq(mh_cancel(&H, C1, t), 0);
    ck_assert_uint_eq(H.rc.escrow_released, 29971);
    ck_assert_int_eq(mh_acct(&H, C1).money_uunit, 1000000000);
    ck_assert_int_eq(mh_acct(&H, C1).money_escrow_uunit, 0);
    ck_assert_int_eq(mh_cancel(&H, C1, t), CONTRACTS_ENOORDER);
    ck_assert_int_eq(mh_order(&H, P1, SLOT, SELL, 100000, 1000, GTC), 0);
    memcpy(t, H.last_txid, 32);
    ck_assert_int_eq(mh_cancel(&H, P1, t), 0);
    ck_assert_uint_eq(H.rc.escrow_released, 30000);
    ck_assert_int_eq(mh_acct(&H, P1).money_uunit, 1000000000);
    mh_check_invariants(&H, true);
}
END_TEST

START_TEST(market_escrow_refund_after_a_fill_is_exact_to_the_micro_unit) {
    ck_assert_int_eq(mh_order(&H, P1, SLOT, SELL, 99999, 333, GTC), 0);
    ck_assert_int_eq(mh_order(&H, C1, SLOT, BUY, 100001, 333, GTC), 0);
    ck_assert_uint_eq(H.rc.escrow_held, 33301);   /* ceil(33300.333) */
    ck_assert_uint_eq(H.rc.escrow_released, 2);   /* value floor(33299.667) = 33299 */
    ck_assert_int_eq(mh_acct(&H, C1).money_uunit, 1000000000 - 33299);
    ck_assert_int_eq(mh_acct(&H, C1).money_escrow_uunit, 33299);
    mh_check_invariants(&H, true);
}
END_TEST

START_TEST(market_gate_closure_expires_orders_and_refuses_later_ones) {
    ck_assert_int_eq(mh_order(&H, C1, SLOT, BUY, 90000, 500, GTC), 0);
    ck_assert_int_eq(mh_order(&H, P1, SLOT, SELL, 95000, 400, GTC), 0);
    mh_block(&H, mh_gate(SLOT) - 1);
    ck_assert_int_eq(mh_order(&H, P2, SLOT, SELL, 95000, 100, GTC), 0);
    ck_assert_int_eq(mh_acct(&H, C1).money_escrow_uunit, 45000);
    mh_block(&H, mh_gate(SLOT));
    ck_assert_int_eq(mh_order(&H, P2, SLOT, SELL, 95000, 100, GTC), CONTRACTS_EGATE);
    contracts_account c1 = mh_acct(&H, C1), p1 = mh_acct(&H, P1), p2 = mh_acct(&H, P2);
    /* Slot 1 has settled meanwhile: C1's meter never reported, so it was estimated at its
     * import capacity: 10 kWh at retail 0.30 (docs/market.md, section 8). */
    ck_assert_int_eq(c1.money_uunit, 1000000000 - 3000000);
    ck_assert_int_eq(c1.money_escrow_uunit, 0);
    ck_assert_int_eq(p1.money_escrow_uunit, 0);
    ck_assert_int_eq(p2.money_escrow_uunit, 0);
    uint8_t p = MK_ORDER;
    mh_escrow_sums e = {0};
    ck_assert_int_eq(ledger_state_iter(H.st, &p, 1, mh_sum_order, &e), 0);
    ck_assert_int_eq(e.order_money + e.order_tokens, 0);
    mh_check_invariants(&H, true);
}
END_TEST

START_TEST(market_gate_closure_leaves_later_slots_open) {
    ck_assert_int_eq(mh_order(&H, C1, SLOT, BUY, 90000, 100, GTC), 0);
    ck_assert_int_eq(mh_order(&H, C1, 100, BUY, 90000, 100, GTC), 0);
    ck_assert_int_eq(mh_order(&H, C1, SLOT + 1, BUY, 90000, 100, GTC), 0);
    mh_block(&H, mh_gate(SLOT + 1) - 1);
    ck_assert_int_eq(mh_acct(&H, C1).money_escrow_uunit, 18000);
    mh_block(&H, mh_gate(SLOT + 1));
    ck_assert_int_eq(mh_acct(&H, C1).money_escrow_uunit, 9000);
    ck_assert_int_eq(mh_order(&H, P1, 100, SELL, 90000, 100, GTC), 0);
    ck_assert_uint_eq(H.rc.n_fills, 1);
    mh_check_invariants(&H, true);
}
END_TEST

START_TEST(market_restarted_executor_rebuilds_its_books_from_the_state) {
    ck_assert_int_eq(mh_order(&H, P1, SLOT, SELL, 100000, 300, GTC), 0);
    ck_assert_int_eq(mh_order(&H, P2, SLOT, SELL, 100000, 300, GTC), 0);
    uint8_t t2[32];
    memcpy(t2, H.last_txid, 32);
    mh_end(&H);
    /* A new context knows nothing; the state is the truth. */
    contracts_market_free(H.m);
    ck_assert_int_eq(contracts_market_new(&H.m), 0);
    contracts_executor(H.m, &H.ex);
    mh_block(&H, NOW + 1);
    ck_assert_int_eq(mh_cancel(&H, P2, t2), 0);
    ck_assert_int_eq(mh_order(&H, C1, SLOT, BUY, 100000, 400, GTC), 0);
    ck_assert_uint_eq(H.rc.n_fills, 1);
    ck_assert_uint_eq(H.rc.fills[0]->quantity_wh, 300);
    ck_assert_uint_eq(H.rc.remaining_wh, 100);
    mh_check_invariants(&H, true);
}
END_TEST

START_TEST(market_full_book_refuses_resting_orders_but_not_ioc) {
    H.g.market.book_orders_max = 2;
    ck_assert_int_eq(mh_order(&H, C1, SLOT, BUY, 90000, 10, GTC), 0);
    ck_assert_int_eq(mh_order(&H, C1, SLOT, BUY, 90000, 10, GTC), 0);
    uint8_t r0[32], r1[32];
    mh_root(&H, r0);
    ck_assert_int_eq(mh_order(&H, C2, SLOT, BUY, 90000, 10, GTC), CONTRACTS_EBOOKFULL);
    mh_root(&H, r1);
    ck_assert_mem_eq(r0, r1, 32);
    ck_assert_int_eq(mh_order(&H, P1, SLOT, SELL, 90000, 10, IOC), 0);
    ck_assert_uint_eq(H.rc.n_fills, 1);
}
END_TEST

/* ------------------------------------------------------------------ refusals */
enum op { O_ORDER, O_CANCEL_OTHER, O_CANCEL_UNKNOWN, O_READING, O_DEPOSIT, O_TRANSFER, O_REGISTER,
          O_TARIFF, O_READING_AS, O_METER };

typedef struct {
    const char *name;
    enum op op;
    int who;
    uint64_t slot, a, b;  /* order: price, qty; reading: import, export; amounts in a */
    int side, tif, role;  /* order side / tif; register role; deposit/transfer target in role */
    int want;
} bad_case;

static const bad_case bad_cases[] = {
    {"order from an unknown participant", O_ORDER, STRANGER, SLOT, 100000, 10, SELL, GTC, 0, CONTRACTS_ENOTREGISTERED},
    {"order after gate closure", O_ORDER, P1, 2, 100000, 10, SELL, GTC, 0, CONTRACTS_EGATE},
    {"order for a slot whose time overflows", O_ORDER, P1, UINT64_MAX, 100000, 10, SELL, GTC, 0, CONTRACTS_ESLOT},
    {"price above the retail tariff", O_ORDER, C1, SLOT, RETAIL + 1, 10, BUY, GTC, 0, CONTRACTS_EPRICE},
    {"price below the feed-in tariff", O_ORDER, P1, SLOT, FEEDIN - 1, 10, SELL, GTC, 0, CONTRACTS_EPRICE},
    {"buy without the money for its escrow", O_ORDER, C1, SLOT, RETAIL, 100000000, BUY, GTC, 0, CONTRACTS_EFUNDS},
    {"sell without the money for its collateral", O_ORDER, P1, SLOT, 100000, 40000000, SELL, GTC, 0, CONTRACTS_EFUNDS},
    {"zero quantity", O_ORDER, P1, SLOT, 100000, 0, SELL, GTC, 0, CONTRACTS_EQTY},
    {"overflowing quantity", O_ORDER, C1, SLOT, 100000, 2000000000ull, BUY, GTC, 0, CONTRACTS_EOVERFLOW},
    {"unspecified side", O_ORDER, P1, SLOT, 100000, 10, 0, GTC, 0, CONTRACTS_ESIDE},
    {"unknown time in force", O_ORDER, P1, SLOT, 100000, 10, SELL, 7, 0, CONTRACTS_ETIF},
    {"consumer selling", O_ORDER, C1, SLOT, 100000, 10, SELL, GTC, 0, CONTRACTS_EROLE},
    {"DSO trading", O_ORDER, DSOK, SLOT, 100000, 10, BUY, GTC, 0, CONTRACTS_EROLE},
    {"meter-data key trading", O_ORDER, MDATA, SLOT, 100000, 10, BUY, GTC, 0, CONTRACTS_EROLE},
    {"cancel of someone else's order", O_CANCEL_OTHER, P2, 0, 0, 0, 0, 0, 0, CONTRACTS_ENOTOWNER},
    {"cancel of an unknown order", O_CANCEL_UNKNOWN, P1, 0, 0, 0, 0, 0, 0, CONTRACTS_ENOORDER},
    {"reading from an unregistered meter", O_READING, STRANGER, 1, 10, 10, 0, 0, 0, CONTRACTS_EMETER},
    {"duplicate reading", O_READING, P3, 1, 10, 10, 0, 0, 0, CONTRACTS_EDUPREADING},
    {"reading before its slot ends", O_READING, P1, 2, 10, 10, 0, 0, 0, CONTRACTS_EEARLY},
    {"reading with an overflowing export", O_READING, P1, 1, 0, 2000000000ull, 0, 0, 0, CONTRACTS_EOVERFLOW},
    {"consumer meter reporting export", O_READING, C1, 1, 10, 10, 0, 0, 0, CONTRACTS_EEXPORT},
    {"reading from a utility", O_READING, UTIL, 1, 10, 10, 0, 0, 0, CONTRACTS_ENOTMETER},
    /* O_READING_AS: signer `who`, meter field `role` (-1: none) */
    {"reading signed by the trading key", O_READING_AS, P1, 1, 10, 10, 0, 0, -1, CONTRACTS_ENOTMETER},
    {"meter signing for another meter", O_READING_AS, MP1, 1, 10, 10, 0, 0, MP2, CONTRACTS_ENOTMETER},
    {"meter-data key naming no meter", O_READING_AS, MDATA, 1, 10, 10, 0, 0, STRANGER, CONTRACTS_EMETER},
    {"meter-data key naming a trading key", O_READING_AS, MDATA, 1, 10, 10, 0, 0, P1, CONTRACTS_EMETER},
    {"import above capacity x slot length", O_READING, P1, 1, MH_CAP_WH + 1, 0, 0, 0, 0, CONTRACTS_ECAPACITY},
    {"export above capacity x slot length", O_READING, P2, 1, 0, MH_CAP_WH + 1, 0, 0, 0, CONTRACTS_ECAPACITY},
    {"the 1 GWh of the old rule", O_READING, P2, 1, 0, 1000000000ull, 0, 0, 0, CONTRACTS_ECAPACITY},
    {"bulk import above capacity", O_READING_AS, MDATA, 1, MH_CAP_WH + 1, 0, 0, 0, MP1, CONTRACTS_ECAPACITY},
    {"reading before the meter existed", O_READING, P1, 0, 10, 10, 0, 0, 0, CONTRACTS_EMETER},
    /* O_METER: register key (slot: 0 new key, else that key index) for owner `role` */
    {"meter registered by a prosumer", O_METER, P1, 0, 0, 0, 0, 0, P1, CONTRACTS_ENOTADMIN},
    {"meter key that is a trading key", O_METER, ADMIN, P2, 0, 0, 0, 0, P1, CONTRACTS_EMETERKEY},
    {"meter rebound to another owner", O_METER, ADMIN, MP1, 0, 0, 0, 0, P2, CONTRACTS_EMETERKEY},
    {"meter for the DSO", O_METER, ADMIN, 0, 0, 0, 0, 0, DSOK, CONTRACTS_EROLE},
    {"meter for an unknown owner", O_METER, ADMIN, 0, 0, 0, 0, 0, STRANGER, CONTRACTS_ENORECIPIENT},
    {"trading registration of a meter key", O_REGISTER, ADMIN, 2, 7, 0, 0, 0, TEM__V1__ROLE__PROSUMER, CONTRACTS_EMETERKEY},
    {"deposit by a prosumer", O_DEPOSIT, P1, 0, 1000, 0, 0, 0, P2, CONTRACTS_ENOTADMIN},
    {"deposit to an unknown participant", O_DEPOSIT, ADMIN, 0, 1000, 0, 0, 0, STRANGER, CONTRACTS_ENORECIPIENT},
    {"deposit of zero", O_DEPOSIT, UTIL, 0, 0, 0, 0, 0, P2, CONTRACTS_EAMOUNT},
    {"deposit above int64", O_DEPOSIT, ADMIN, 0, (uint64_t)INT64_MAX + 1, 0, 0, 0, P2, CONTRACTS_EOVERFLOW},
    {"deposit overflowing the supply", O_DEPOSIT, ADMIN, 0, (uint64_t)INT64_MAX, 0, 0, 0, P2, CONTRACTS_EOVERFLOW},
    {"transfer to oneself", O_TRANSFER, P1, 0, 10, 0, 0, 0, P1, CONTRACTS_ESELF},
    {"transfer beyond the balance", O_TRANSFER, P1, 0, 1000000001, 0, 0, 0, P2, CONTRACTS_EFUNDS},
    {"transfer from an unknown participant", O_TRANSFER, STRANGER, 0, 10, 0, 0, 0, P2, CONTRACTS_ENOTREGISTERED},
    {"transfer to an unknown participant", O_TRANSFER, P1, 0, 10, 0, 0, 0, STRANGER, CONTRACTS_ENORECIPIENT},
    {"register by a non-admin", O_REGISTER, P1, 0, 7, 0, 0, 0, TEM__V1__ROLE__PROSUMER, CONTRACTS_ENOTADMIN},
    {"register with an unknown role", O_REGISTER, ADMIN, 0, 7, 0, 0, 0, 9, CONTRACTS_EBADROLE},
    {"register with a bad public key", O_REGISTER, ADMIN, 1, 7, 0, 0, 0, TEM__V1__ROLE__PROSUMER, CONTRACTS_EPUBKEY},
    {"tariff change by a non-admin", O_TARIFF, P1, 10, RETAIL, FEEDIN, 0, 0, 0, CONTRACTS_ENOTADMIN},
    {"tariff with feed-in above retail", O_TARIFF, ADMIN, 10, FEEDIN, RETAIL, 0, 0, 0, CONTRACTS_ETARIFF},
    {"tariff change for a closed slot", O_TARIFF, ADMIN, 2, RETAIL, FEEDIN, 0, 0, 0, CONTRACTS_ETARIFFSLOT},
};

START_TEST(market_bad_input_is_refused_with_its_code_and_changes_nothing) {
    const bad_case *c = &bad_cases[_i];
    /* Context some cases need: a resting order of P1 and a reading of P3 for slot 1. */
    ck_assert_int_eq(mh_order(&H, P1, SLOT, SELL, 100000, 10, GTC), 0);
    uint8_t p1_order[32];
    memcpy(p1_order, H.last_txid, 32);
    ck_assert_int_eq(mh_reading(&H, P3, 1, 10, 10), 0);
    uint8_t before[32], after[32];
    mh_root(&H, before);
    size_t count = ledger_state_count(H.st);
    int got = 0;
    uint8_t badkey[PUB] = {0x05};
    uint8_t newkey[PUB];
    mh_key(newkey, 40);
    switch (c->op) {
    case O_ORDER: got = mh_order(&H, c->who, c->slot, c->side, c->a, c->b, c->tif); break;
    case O_CANCEL_OTHER: got = mh_cancel(&H, c->who, p1_order); break;
    case O_CANCEL_UNKNOWN: {
        uint8_t z[32] = {1, 2, 3};
        got = mh_cancel(&H, c->who, z);
        break;
    }
    case O_READING: got = mh_reading(&H, c->who, c->slot, c->a, c->b); break;
    case O_DEPOSIT:
        if (c->a == (uint64_t)INT64_MAX) {
            ck_assert_int_eq(mh_deposit(&H, ADMIN, P1, 1), 0);
            mh_root(&H, before);
        }
        got = mh_deposit(&H, c->who, c->role, c->a);
        break;
    case O_TRANSFER: got = mh_transfer(&H, c->who, c->role, c->a); break;
    case O_REGISTER:
        got = mh_register(&H, c->who, c->slot == 1 ? badkey : c->slot == 2 ? H.keys[MP1] : newkey,
                          PUB, (uint32_t)c->a, c->role);
        break;
    case O_READING_AS: got = mh_reading_raw(&H, c->who, c->role, c->slot, c->a, c->b); break;
    case O_METER:
        got = mh_register_meter(&H, c->who, c->slot ? H.keys[c->slot] : newkey, H.keys[c->role], 2,
                                MH_CAP_W, MH_CAP_W);
        break;
    case O_TARIFF: {
        uint32_t start = 0;
        got = mh_set_tariff(&H, c->who, c->slot, 1, &start, &c->a, &c->b);
        break;
    }
    }
    ck_assert_msg(got == c->want, "%s: got %d (%s), want %d", c->name, got,
                  contracts_strerror(got), c->want);
    ck_assert_msg(H.rc.reason && strcmp(H.rc.reason, contracts_strerror(c->want)) == 0, "%s: reason",
                  c->name);
    ck_assert_msg(H.rc.n_fills == 0 && H.rc.escrow_held == 0 && H.rc.minted_wh == 0, "%s: receipt",
                  c->name);
    mh_root(&H, after);
    ck_assert_msg(memcmp(before, after, 32) == 0, "%s: state changed", c->name);
    ck_assert_uint_eq(ledger_state_count(H.st), count);
    mh_check_invariants(&H, true);
}
END_TEST

START_TEST(market_admin_txs_apply) {
    uint8_t k[PUB];
    mh_key(k, 41);
    ck_assert_int_eq(mh_register(&H, ADMIN, k, PUB, 9, TEM__V1__ROLE__CONSUMER), 0);
    contracts_account a;
    ck_assert_int_eq(contracts_account_get(H.st, k, &a), 0);
    ck_assert_uint_eq(a.bus, 9);
    ck_assert_int_eq(a.role, TEM__V1__ROLE__CONSUMER);
    ck_assert_int_eq(mh_deposit(&H, UTIL, P1, 500), 0);
    ck_assert_int_eq(mh_deposit(&H, ADMIN, P1, 500), 0);
    ck_assert_int_eq(mh_acct(&H, P1).money_uunit, 1000001000);
    contracts_supply s;
    ck_assert_int_eq(contracts_supply_get(H.st, &s), 0);
    ck_assert_int_eq(s.deposited_uunit, 1000);
    ck_assert_int_eq(mh_transfer(&H, P1, P2, 1000), 0);
    ck_assert_int_eq(mh_acct(&H, P2).money_uunit, 1000001000);
    /* A new tariff from slot 10 on narrows the band there and not before. */
    uint32_t start = 0;
    uint64_t r = 200000, f = 60000;
    ck_assert_int_eq(mh_set_tariff(&H, ADMIN, 10, 1, &start, &r, &f), 0);
    ck_assert_int_eq(mh_order(&H, C1, 10, BUY, 250000, 10, GTC), CONTRACTS_EPRICE);
    ck_assert_int_eq(mh_order(&H, C1, 9, BUY, 250000, 10, GTC), 0);
    ck_assert_int_eq(mh_order(&H, C1, 10, BUY, 200000, 10, GTC), 0);
    mh_check_invariants(&H, true);
}
END_TEST

START_TEST(market_time_of_use_tariff_follows_the_slot_start_minute) {
    /* From slot 10: 300000 before 08:00 UTC, 400000 from 08:00 (slot 32 starts at 08:00). */
    uint32_t start[2] = {0, 480};
    uint64_t retail[2] = {300000, 400000}, feed[2] = {50000, 60000};
    ck_assert_int_eq(mh_set_tariff(&H, ADMIN, 10, 2, start, retail, feed), 0);
    ck_assert_int_eq(mh_order(&H, C1, 31, BUY, 350000, 10, GTC), CONTRACTS_EPRICE);
    ck_assert_int_eq(mh_order(&H, C1, 32, BUY, 350000, 10, GTC), 0);
    ck_assert_int_eq(mh_order(&H, P1, 32, SELL, 55000, 10, GTC), CONTRACTS_EPRICE);
    ck_assert_int_eq(mh_order(&H, P1, 31, SELL, 55000, 10, GTC), 0);
}
END_TEST

START_TEST(market_later_tariff_change_replaces_sets_from_its_slot_on) {
    uint32_t start = 0;
    uint64_t f = 50000, r10 = 200000, r20 = 250000, r15 = 220000;
    ck_assert_int_eq(mh_set_tariff(&H, ADMIN, 10, 1, &start, &r10, &f), 0);
    ck_assert_int_eq(mh_set_tariff(&H, ADMIN, 20, 1, &start, &r20, &f), 0);
    ck_assert_int_eq(mh_set_tariff(&H, ADMIN, 15, 1, &start, &r15, &f), 0);
    ck_assert_int_eq(mh_order(&H, C1, 12, BUY, 210000, 10, GTC), CONTRACTS_EPRICE);
    ck_assert_int_eq(mh_order(&H, C1, 12, BUY, 200000, 10, GTC), 0);
    ck_assert_int_eq(mh_order(&H, C1, 25, BUY, 230000, 10, GTC), CONTRACTS_EPRICE);
    ck_assert_int_eq(mh_order(&H, C1, 25, BUY, 220000, 10, GTC), 0);
    ck_assert_int_eq(mh_order(&H, C1, 9, BUY, 300000, 10, GTC), 0);
    /* Far later, sets that only covered settled slots are pruned: the record stays small. */
    for (uint64_t k = 0; k < 100; k++) {
        mh_block(&H, mh_slot_start(30 + 2 * k));
        ck_assert_int_eq(mh_set_tariff(&H, ADMIN, 32 + 2 * k, 1, &start, &r10, &f), 0);
    }
    const uint8_t key[2] = {MK_PARAM, 't'};
    const uint8_t *v;
    size_t vlen;
    ck_assert_int_eq(ledger_state_get(H.st, key, 2, &v, &vlen), 0);
    ck_assert_uint_le(tem_get_u32le(v), 4);
}
END_TEST

/* The signer rule the executor applies and the node's mempool uses to refuse early. */
START_TEST(market_signer_check_names_who_may_send_each_kind) {
    static const struct {
        const char *name;
        int who, kind, want;
    } rows[] = {
        {"admin deposits", ADMIN, TEM__V1__TX_BODY__KIND_DEPOSIT, CONTRACTS_OK},
        {"utility deposits", UTIL, TEM__V1__TX_BODY__KIND_DEPOSIT, CONTRACTS_OK},
        {"prosumer deposits", P1, TEM__V1__TX_BODY__KIND_DEPOSIT, CONTRACTS_ENOTADMIN},
        {"utility registers", UTIL, TEM__V1__TX_BODY__KIND_REGISTER, CONTRACTS_ENOTADMIN},
        {"admin installs a feeder", ADMIN, TEM__V1__TX_BODY__KIND_INSTALL_FEEDER, CONTRACTS_OK},
        {"registered prosumer orders", P1, TEM__V1__TX_BODY__KIND_ORDER, CONTRACTS_OK},
        {"stranger orders", STRANGER, TEM__V1__TX_BODY__KIND_ORDER, CONTRACTS_ENOTREGISTERED},
        {"stranger transfers", STRANGER, TEM__V1__TX_BODY__KIND_TRANSFER, CONTRACTS_ENOTREGISTERED},
        {"stranger reads a meter", STRANGER, TEM__V1__TX_BODY__KIND_READING, CONTRACTS_EMETER},
        {"trading key reads its meter", P1, TEM__V1__TX_BODY__KIND_READING, CONTRACTS_ENOTMETER},
        {"DSO reads a meter", DSOK, TEM__V1__TX_BODY__KIND_READING, CONTRACTS_ENOTMETER},
        {"meter reads", MP1, TEM__V1__TX_BODY__KIND_READING, CONTRACTS_OK},
        {"meter-data key reads", MDATA, TEM__V1__TX_BODY__KIND_READING, CONTRACTS_OK},
        {"meter orders", MP1, TEM__V1__TX_BODY__KIND_ORDER, CONTRACTS_ENOTREGISTERED},
        {"stranger deposits", STRANGER, TEM__V1__TX_BODY__KIND_DEPOSIT, CONTRACTS_ENOTADMIN},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        Tem__V1__TxBody body = TEM__V1__TX_BODY__INIT;
        body.signer = (ProtobufCBinaryData){PUB, H.keys[rows[i].who]};
        body.kind_case = rows[i].kind;
        ledger_tx tx = {.body = &body};
        int got = contracts_signer_check(H.st, &H.g, &tx);
        ck_assert_msg(got == rows[i].want, "row '%s': got %d, want %d", rows[i].name, got, rows[i].want);
    }
    /* and the executor agrees: a prosumer's deposit is refused with the same code */
    ck_assert_int_eq(mh_deposit(&H, P1, P2, 5), CONTRACTS_ENOTADMIN);
    ck_assert_int_eq(mh_deposit(&H, UTIL, P2, 5), 0);
}
END_TEST

static Suite *market_suite(void) {
    Suite *s = suite_create("market");
    TCase *t = tcase_create("cda");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, market_buy_fills_resting_sell_at_the_resting_price);
    tcase_add_test(t, market_sweep_follows_price_then_time_priority_with_partial_fills);
    tcase_add_test(t, market_ioc_fills_what_it_can_and_releases_the_rest);
    tcase_add_test(t, market_cancel_releases_escrow_to_the_micro_unit);
    tcase_add_test(t, market_escrow_refund_after_a_fill_is_exact_to_the_micro_unit);
    tcase_add_test(t, market_gate_closure_expires_orders_and_refuses_later_ones);
    tcase_add_test(t, market_gate_closure_leaves_later_slots_open);
    tcase_add_test(t, market_restarted_executor_rebuilds_its_books_from_the_state);
    tcase_add_test(t, market_full_book_refuses_resting_orders_but_not_ioc);
    tcase_add_test(t, market_admin_txs_apply);
    tcase_add_test(t, market_time_of_use_tariff_follows_the_slot_start_minute);
    tcase_add_test(t, market_later_tariff_change_replaces_sets_from_its_slot_on);
    tcase_add_test(t, market_signer_check_names_who_may_send_each_kind);
    tcase_add_loop_test(t, market_bad_input_is_refused_with_its_code_and_changes_nothing, 0,
                        (int)(sizeof bad_cases / sizeof bad_cases[0]));
    suite_add_tcase(s, t);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(market_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
