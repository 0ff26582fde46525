/* market_harness.h: a small in-memory chain for the market tests: a genesis built in C, a
 * ledger_state initialised by contracts_genesis_init, and blocks driven straight through the
 * market executor (no store, no signatures: the contracts never look at either). Header-only,
 * included by tests/test_market*.c, test_settle*.c, test_call*.c. */
#ifndef MARKET_HARNESS_H
#define MARKET_HARNESS_H

#include <check.h>

#include "contracts/contracts.h"
#include "contracts/grid.h"
#include "contracts/market_internal.h"
#include "grid_fixture.h"

/* Check logs every passing assertion through a syscall; hot invariant loops use this instead. */
#define MH_CHECK(cond, ...)                                                                        \
    do {                                                                                           \
        if (!(cond)) ck_abort_msg(__VA_ARGS__);                                                    \
    } while (0)

#define T0 1699920000000ull /* a UTC midnight */
#define SLOT_MS 900000
#define GATE_MS 300000
#define DEADLINE_MS 600000
#define RETAIL 300000
#define FEEDIN 50000

enum { ADMIN, UTIL, DSOK, P1, P2, P3, C1, C2, STRANGER, MDATA, MP1, MP2, MP3, MC1, MC2, NKEYS };
/* The meter of trader P1..C2, and each meter's import and export capacity: 40 kW, so at most
 * 10 kWh per 15-minute slot (a silent meter is estimated at 10 kWh import, 0 export). */
#define MH_METER(who) (MP1 + (who) - P1)
#define MH_CAP_W 40000
#define MH_CAP_WH 10000
/* Meters answer from this slot on (mh_init_meters); mh_init leaves them inactive. */
#define MH_NO_METERS UINT64_MAX

typedef struct {
    ledger_genesis g;
    ledger_participant parts[24];
    ledger_state *st;
    contracts_market *m;
    ledger_executor ex;
    ledger_arena arena;
    ledger_block_ctx b;
    uint64_t height, time_ms, txn;
    bool in_block;
    uint8_t keys[NKEYS][PUB];
    Tem__V1__Receipt rc;
    uint8_t last_txid[32];
} mh;

static inline void mh_key(uint8_t out[PUB], int i) {
    memset(out, 0, PUB);
    out[0] = 0x02;
    out[1] = (uint8_t)(0x10 + i);
    out[32] = (uint8_t)i;
}

/* mechanism: LEDGER_MECH_CDA or LEDGER_MECH_CALL; the traders' meters answer from slot
 * meter_from on (MH_NO_METERS: never, so no slot is estimated). */
static inline void mh_init_meters(mh *h, int mechanism, uint64_t meter_from) {
    memset(h, 0, sizeof *h);
    for (int i = 0; i < NKEYS; i++) mh_key(h->keys[i], i);
    ledger_genesis *g = &h->g;
    strcpy(g->chain_id, "tem-test");
    g->genesis_time_ms = T0;
    g->n_admins = 1;
    memcpy(g->admins[0], h->keys[ADMIN], PUB);
    struct {
        int k, role;
        int64_t money, tokens;
        uint32_t bus;
    } ps[] = {
        {UTIL, TEM__V1__ROLE__UTILITY, 1000000000000ll, 0, 1},
        {DSOK, TEM__V1__ROLE__DSO, 0, 0, 1},
        {P1, TEM__V1__ROLE__PROSUMER, 1000000000ll, 10000, 2},
        {P2, TEM__V1__ROLE__PROSUMER, 1000000000ll, 10000, 3},
        {P3, TEM__V1__ROLE__PROSUMER, 1000000000ll, 10000, 4},
        {C1, TEM__V1__ROLE__CONSUMER, 1000000000ll, 0, 5},
        {C2, TEM__V1__ROLE__CONSUMER, 1000000000ll, 0, 6},
        {MDATA, TEM__V1__ROLE__METER_DATA, 0, 0, 1},
        {MP1, TEM__V1__ROLE__METER, 0, 0, 2},
        {MP2, TEM__V1__ROLE__METER, 0, 0, 3},
        {MP3, TEM__V1__ROLE__METER, 0, 0, 4},
        {MC1, TEM__V1__ROLE__METER, 0, 0, 5},
        {MC2, TEM__V1__ROLE__METER, 0, 0, 6},
    };
    g->n_participants = sizeof ps / sizeof ps[0];
    g->participants = h->parts;
    for (uint32_t i = 0; i < g->n_participants; i++) {
        memcpy(h->parts[i].pubkey, h->keys[ps[i].k], PUB);
        h->parts[i].role = ps[i].role;
        h->parts[i].money_uunit = ps[i].money;
        h->parts[i].tokens_wh = ps[i].tokens;
        h->parts[i].bus = ps[i].bus;
        if (ps[i].role == TEM__V1__ROLE__METER) {
            memcpy(h->parts[i].owner, h->keys[P1 + ps[i].k - MP1], PUB);
            h->parts[i].import_capacity_w = MH_CAP_W;
            h->parts[i].export_capacity_w = MH_CAP_W;
            h->parts[i].from_slot = meter_from;
        }
    }
    g->n_tariffs = 1;
    g->tariffs[0] = (ledger_tariff){0, RETAIL, FEEDIN};
    g->market = (ledger_market_params){.slot_ms = SLOT_MS, .gate_closure_ms = GATE_MS,
                                       .settlement_deadline_ms = DEADLINE_MS,
                                       .mechanism = mechanism, .seller_collateral_ppm = 100000,
                                       .network_fee_uunit_per_kwh_per_ohm = 1000,
                                       .loss_price_uunit_per_kwh = 0, .book_orders_max = 1000};
    ck_assert_int_eq(ledger_state_new(&h->st), 0);
    ck_assert_int_eq(contracts_genesis_init(NULL, h->st, g), 0);
    ck_assert_int_eq(contracts_market_new(&h->m), 0);
    contracts_executor(h->m, &h->ex);
    h->time_ms = T0;
}

static inline void mh_init(mh *h, int mechanism) { mh_init_meters(h, mechanism, MH_NO_METERS); }

static inline void mh_free(mh *h) {
    ledger_arena_reset(&h->arena);
    contracts_market_free(h->m);
    ledger_state_free(h->st);
}

static inline void mh_end(mh *h) {
    if (!h->in_block) return;
    MH_CHECK(h->ex.end_block(h->ex.ctx, h->st, &h->b) == 0, "end_block failed");
    h->in_block = false;
}

/* Starts the next block at `time_ms` (ending the open one). */
static inline void mh_block(mh *h, uint64_t time_ms) {
    mh_end(h);
    ledger_arena_reset(&h->arena);
    h->time_ms = time_ms;
    h->b = (ledger_block_ctx){.height = ++h->height, .time_ms = time_ms, .genesis = &h->g,
                              .arena = &h->arena};
    MH_CHECK(h->ex.begin_block(h->ex.ctx, h->st, &h->b) == 0, "begin_block failed");
    h->in_block = true;
}

/* Runs one tx body signed (nominally) by key `who`; returns the receipt code. */
static inline int mh_exec(mh *h, int who, Tem__V1__TxBody *body) {
    if (!h->in_block) mh_block(h, h->time_ms);
    body->signer = (ProtobufCBinaryData){PUB, h->keys[who]};
    ledger_tx tx = {.body = body};
    uint8_t seed[16];
    tem_put_u64le(seed, ++h->txn);
    tem_put_u64le(seed + 8, 0x54454d);
    ledger_sha256(tx.txid, seed, sizeof seed);
    memcpy(h->last_txid, tx.txid, 32);
    tem__v1__receipt__init(&h->rc);
    MH_CHECK(h->ex.exec_tx(h->ex.ctx, h->st, &h->b, &tx, &h->rc) == 0, "exec_tx failed");
    return h->rc.code;
}

static inline int mh_order(mh *h, int who, uint64_t slot, int side, uint64_t price, uint64_t qty,
                           int tif) {
    Tem__V1__TxBody body = TEM__V1__TX_BODY__INIT;
    Tem__V1__Order o = TEM__V1__ORDER__INIT;
    o.slot = slot;
    o.side = side;
    o.price = price;
    o.quantity_wh = qty;
    o.tif = tif;
    body.kind_case = TEM__V1__TX_BODY__KIND_ORDER;
    body.order = &o;
    return mh_exec(h, who, &body);
}
#define BUY TEM__V1__SIDE__BUY
#define SELL TEM__V1__SIDE__SELL
#define GTC TEM__V1__TIME_IN_FORCE__GTC
#define IOC TEM__V1__TIME_IN_FORCE__IOC

static inline int mh_cancel(mh *h, int who, const uint8_t txid[32]) {
    Tem__V1__TxBody body = TEM__V1__TX_BODY__INIT;
    Tem__V1__CancelOrder c = TEM__V1__CANCEL_ORDER__INIT;
    c.order_txid = (ProtobufCBinaryData){32, (uint8_t *)txid};
    body.kind_case = TEM__V1__TX_BODY__KIND_CANCEL;
    body.cancel = &c;
    return mh_exec(h, who, &body);
}

/* A reading signed by `signer`, naming meter key `meter` (-1: none, as a meter signs). */
static inline int mh_reading_raw(mh *h, int signer, int meter, uint64_t slot, uint64_t import_wh,
                                 uint64_t export_wh) {
    Tem__V1__TxBody body = TEM__V1__TX_BODY__INIT;
    Tem__V1__MeterReading r = TEM__V1__METER_READING__INIT;
    r.slot = slot;
    r.import_wh = import_wh;
    r.export_wh = export_wh;
    if (meter >= 0) r.meter = (ProtobufCBinaryData){PUB, h->keys[meter]};
    body.kind_case = TEM__V1__TX_BODY__KIND_READING;
    body.reading = &r;
    return mh_exec(h, signer, &body);
}

/* Trader who's meter (P1..C2) reports; any other key signs for itself. */
static inline int mh_reading(mh *h, int who, uint64_t slot, uint64_t import_wh, uint64_t export_wh) {
    int signer = who >= P1 && who <= C2 ? MH_METER(who) : who;
    return mh_reading_raw(h, signer, -1, slot, import_wh, export_wh);
}

static inline int mh_deposit(mh *h, int who, int to, uint64_t amount) {
    Tem__V1__TxBody body = TEM__V1__TX_BODY__INIT;
    Tem__V1__Deposit d = TEM__V1__DEPOSIT__INIT;
    d.to = (ProtobufCBinaryData){PUB, h->keys[to]};
    d.amount = amount;
    body.kind_case = TEM__V1__TX_BODY__KIND_DEPOSIT;
    body.deposit = &d;
    return mh_exec(h, who, &body);
}

static inline int mh_transfer(mh *h, int who, int to, uint64_t amount) {
    Tem__V1__TxBody body = TEM__V1__TX_BODY__INIT;
    Tem__V1__Transfer t = TEM__V1__TRANSFER__INIT;
    t.to = (ProtobufCBinaryData){PUB, h->keys[to]};
    t.amount = amount;
    body.kind_case = TEM__V1__TX_BODY__KIND_TRANSFER;
    body.transfer = &t;
    return mh_exec(h, who, &body);
}

static inline int mh_register(mh *h, int who, const uint8_t *pub, size_t publen, uint32_t bus,
                              int role) {
    Tem__V1__TxBody body = TEM__V1__TX_BODY__INIT;
    Tem__V1__RegisterParticipant r = TEM__V1__REGISTER_PARTICIPANT__INIT;
    r.pubkey = (ProtobufCBinaryData){publen, (uint8_t *)pub};
    r.bus = bus;
    r.role = role;
    body.kind_case = TEM__V1__TX_BODY__KIND_REGISTER;
    body.register_ = &r;
    return mh_exec(h, who, &body);
}

/* Registers (or retires, owner NULL) a meter key for `owner`, signed by `who`. */
static inline int mh_register_meter(mh *h, int who, const uint8_t *meter, const uint8_t *owner,
                                    uint32_t bus, uint64_t import_w, uint64_t export_w) {
    Tem__V1__TxBody body = TEM__V1__TX_BODY__INIT;
    Tem__V1__RegisterParticipant r = TEM__V1__REGISTER_PARTICIPANT__INIT;
    r.pubkey = (ProtobufCBinaryData){PUB, (uint8_t *)meter};
    if (owner) r.owner = (ProtobufCBinaryData){PUB, (uint8_t *)owner};
    r.bus = bus;
    r.role = TEM__V1__ROLE__METER;
    r.import_capacity_w = import_w;
    r.export_capacity_w = export_w;
    body.kind_case = TEM__V1__TX_BODY__KIND_REGISTER;
    body.register_ = &r;
    return mh_exec(h, who, &body);
}

static inline int mh_set_tariff(mh *h, int who, uint64_t from_slot, uint32_t n,
                                const uint32_t *start, const uint64_t *retail,
                                const uint64_t *feed) {
    Tem__V1__TxBody body = TEM__V1__TX_BODY__INIT;
    Tem__V1__SetTariff s = TEM__V1__SET_TARIFF__INIT;
    Tem__V1__TariffPeriod p[8], *pp[8];
    for (uint32_t i = 0; i < n; i++) {
        tem__v1__tariff_period__init(&p[i]);
        p[i].start_minute = start[i];
        p[i].retail_uunit_per_kwh = retail[i];
        p[i].feed_in_uunit_per_kwh = feed[i];
        pp[i] = &p[i];
    }
    s.from_slot = from_slot;
    s.n_periods = n;
    s.periods = pp;
    body.kind_case = TEM__V1__TX_BODY__KIND_SET_TARIFF;
    body.set_tariff = &s;
    return mh_exec(h, who, &body);
}

static inline int mh_install(mh *h, int who, grid_fx_model *m) {
    Tem__V1__TxBody body = TEM__V1__TX_BODY__INIT;
    body.kind_case = TEM__V1__TX_BODY__KIND_INSTALL_FEEDER;
    body.install_feeder = &m->msg;
    return mh_exec(h, who, &body);
}

static inline contracts_account mh_acct(mh *h, int who) {
    contracts_account a;
    ck_assert_int_eq(contracts_account_get(h->st, h->keys[who], &a), 0);
    return a;
}

static inline void mh_root(mh *h, uint8_t out[32]) { MH_CHECK(ledger_state_root(h->st, out) == 0, "root"); }

/* Start time of slot s and the time just before its gate closes. */
static inline uint64_t mh_slot_start(uint64_t s) { return T0 + s * SLOT_MS; }
static inline uint64_t mh_gate(uint64_t s) { return mh_slot_start(s) - GATE_MS; }
static inline uint64_t mh_deadline(uint64_t s) { return mh_slot_start(s) + SLOT_MS + DEADLINE_MS; }

/* ------------------------------------------------------------------ invariants */
typedef struct {
    int64_t money, money_escrow, tokens, tokens_escrow;
} mh_sums;

static inline int mh_sum_acct(void *ctx, const contracts_account *a) {
    mh_sums *s = ctx;
    s->money += a->money_uunit;
    s->money_escrow += a->money_escrow_uunit;
    s->tokens += a->tokens_wh;
    s->tokens_escrow += a->tokens_escrow_wh;
    return 0;
}

typedef struct {
    int64_t order_money, order_tokens, trade_money, trade_tokens;
    bool overfill;
    /* best bid / ask per slot while scanning (orders come grouped by slot) */
    uint64_t cur_slot, best_bid, best_ask;
    bool have_slot, crossed;
} mh_escrow_sums;

static inline void mh_check_cross(mh_escrow_sums *s) {
    if (s->have_slot && s->best_bid && s->best_ask && s->best_bid >= s->best_ask) s->crossed = true;
}

static inline int mh_sum_order(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val,
                               size_t vlen) {
    mh_escrow_sums *s = ctx;
    MH_CHECK(klen == 17, "key length");
    MH_CHECK(vlen == MK_ORDER_BYTES, "order length");
    mk_order o;
    mk_order_decode(val, &o);
    uint64_t slot = tem_get_u64be(key + 1);
    if (!s->have_slot || slot != s->cur_slot) {
        mh_check_cross(s);
        s->cur_slot = slot;
        s->best_bid = 0;
        s->best_ask = 0;
        s->have_slot = true;
    }
    if (o.side == BUY && o.price > s->best_bid) s->best_bid = o.price;
    if (o.side == SELL && (s->best_ask == 0 || o.price < s->best_ask)) s->best_ask = o.price;
    if (o.remaining_wh == 0 || o.remaining_wh > o.qty_wh) s->overfill = true;
    s->order_money += o.escrow_price + o.escrow_fee + o.escrow_coll;
    return 0;
}

static inline int mh_sum_trade(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val,
                               size_t vlen) {
    (void)key;
    mh_escrow_sums *s = ctx;
    MH_CHECK(klen == 17, "key length");
    MH_CHECK(vlen == MK_TRADE_BYTES, "trade length");
    mk_trade t;
    mk_trade_decode(val, &t);
    s->trade_money += t.value + t.buyer_fee + t.collateral;
    return 0;
}

/* Conservation of money and tokens (balances + escrow == supply; escrow == what orders and
 * trades hold; no token escrow and the genesis 30000 tokens never move: energy lives in its
 * slot), no overfilled order, and (for a CDA without feeder) no crossed book. */
static inline void mh_check_invariants(mh *h, bool check_cross) {
    mh_sums s = {0};
    MH_CHECK(contracts_account_iter(h->st, mh_sum_acct, &s) == 0, "account iter");
    contracts_supply sup;
    MH_CHECK(contracts_supply_get(h->st, &sup) == 0, "supply");
    MH_CHECK(s.money + s.money_escrow == sup.money_uunit, "money not conserved: %ld + %ld != %ld",
             (long)s.money, (long)s.money_escrow, (long)sup.money_uunit);
    MH_CHECK(s.tokens + s.tokens_escrow == sup.tokens_wh, "tokens not conserved: %ld + %ld != %ld",
             (long)s.tokens, (long)s.tokens_escrow, (long)sup.tokens_wh);
    mh_escrow_sums e = {0};
    uint8_t p = MK_ORDER;
    MH_CHECK(ledger_state_iter(h->st, &p, 1, mh_sum_order, &e) == 0, "order iter");
    mh_check_cross(&e);
    p = MK_TRADE;
    MH_CHECK(ledger_state_iter(h->st, &p, 1, mh_sum_trade, &e) == 0, "trade iter");
    MH_CHECK(s.money_escrow == e.order_money + e.trade_money, "money escrow %ld != %ld + %ld",
             (long)s.money_escrow, (long)e.order_money, (long)e.trade_money);
    MH_CHECK(s.tokens_escrow == 0, "tokens escrowed: %ld", (long)s.tokens_escrow);
    MH_CHECK(sup.tokens_wh == sup.minted_wh - sup.burnt_wh + 30000, "token supply moved");
    MH_CHECK(!e.overfill, "an order is overfilled or empty");
    MH_CHECK(!check_cross || !e.crossed, "book crossed in slot %lu", (unsigned long)e.cur_slot);
}

#endif
