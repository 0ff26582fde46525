/* market.c: the market executor: per-block work due by block time (gate closure, call-auction
 * clearing, expiry, settlement), per-tx dispatch with a savepoint per tx, the continuous
 * two-sided auction's (CDA) order and cancel handling, the shared fill rule (grid check, fees,
 * escrow, trade record) and the order-book cache. Rules: docs/market.md. */
#include "contracts/call.h"
#include "contracts/grid.h"
#include "contracts/market_internal.h"

/* ================================================================== records */
void mk_order_encode(const mk_order *o, uint8_t out[MK_ORDER_BYTES]) {
    memset(out, 0, MK_ORDER_BYTES);
    memcpy(out, o->txid, 32);
    memcpy(out + 32, o->owner, PUB);
    out[65] = o->side;
    out[66] = o->tif;
    tem_put_u32le(out + 68, o->bus);
    tem_put_u64le(out + 72, o->price);
    tem_put_u64le(out + 80, o->qty_wh);
    tem_put_u64le(out + 88, o->remaining_wh);
    mk_put_i64(out + 96, o->escrow_price);
    mk_put_i64(out + 104, o->escrow_fee);
    mk_put_i64(out + 112, o->escrow_coll);
}

void mk_order_decode(const uint8_t in[MK_ORDER_BYTES], mk_order *o) {
    memcpy(o->txid, in, 32);
    memcpy(o->owner, in + 32, PUB);
    o->side = in[65];
    o->tif = in[66];
    o->bus = tem_get_u32le(in + 68);
    o->price = tem_get_u64le(in + 72);
    o->qty_wh = tem_get_u64le(in + 80);
    o->remaining_wh = tem_get_u64le(in + 88);
    o->escrow_price = mk_get_i64(in + 96);
    o->escrow_fee = mk_get_i64(in + 104);
    o->escrow_coll = mk_get_i64(in + 112);
}

void mk_trade_encode(const mk_trade *t, uint8_t out[MK_TRADE_BYTES]) {
    memset(out, 0, MK_TRADE_BYTES);
    memcpy(out, t->seller, PUB);
    memcpy(out + 33, t->buyer, PUB);
    tem_put_u64le(out + 72, t->qty_wh);
    tem_put_u64le(out + 80, t->price);
    mk_put_i64(out + 88, t->value);
    mk_put_i64(out + 96, t->buyer_fee);
    mk_put_i64(out + 104, t->seller_fee);
    mk_put_i64(out + 112, t->collateral);
}

void mk_trade_decode(const uint8_t in[MK_TRADE_BYTES], mk_trade *t) {
    memcpy(t->seller, in, PUB);
    memcpy(t->buyer, in + 33, PUB);
    t->qty_wh = tem_get_u64le(in + 72);
    t->price = tem_get_u64le(in + 80);
    t->value = mk_get_i64(in + 88);
    t->buyer_fee = mk_get_i64(in + 96);
    t->seller_fee = mk_get_i64(in + 104);
    t->collateral = mk_get_i64(in + 112);
}

static void order_key(uint8_t k[17], uint64_t slot, uint64_t seq) {
    k[0] = MK_ORDER;
    tem_put_u64be(k + 1, slot);
    tem_put_u64be(k + 9, seq);
}

static int order_get(ledger_state *st, uint64_t slot, uint64_t seq, mk_order *o) {
    uint8_t k[17];
    order_key(k, slot, seq);
    const uint8_t *v;
    size_t vlen;
    int rc = ledger_state_get(st, k, sizeof k, &v, &vlen);
    if (rc == LEDGER_ENOTFOUND) return LEDGER_ECORRUPT; /* the book cache named it */
    if (rc) return rc;
    if (vlen != MK_ORDER_BYTES) return LEDGER_ECORRUPT;
    mk_order_decode(v, o);
    o->slot = slot;
    o->seq = seq;
    return LEDGER_OK;
}

static int order_put(ledger_state *st, const mk_order *o, bool with_index) {
    uint8_t k[17], v[MK_ORDER_BYTES];
    order_key(k, o->slot, o->seq);
    mk_order_encode(o, v);
    int rc = ledger_state_put(st, k, sizeof k, v, sizeof v);
    if (rc || !with_index) return rc;
    uint8_t ik[33], iv[16];
    ik[0] = MK_OINDEX;
    memcpy(ik + 1, o->txid, 32);
    tem_put_u64be(iv, o->slot);
    tem_put_u64be(iv + 8, o->seq);
    return ledger_state_put(st, ik, sizeof ik, iv, sizeof iv);
}

static int order_del(ledger_state *st, const mk_order *o) {
    uint8_t k[17], ik[33];
    order_key(k, o->slot, o->seq);
    ik[0] = MK_OINDEX;
    memcpy(ik + 1, o->txid, 32);
    int rc = ledger_state_del(st, k, sizeof k);
    return rc ? rc : ledger_state_del(st, ik, sizeof ik);
}

int mk_slot_get(ledger_state *st, uint64_t slot, mk_slot *s, bool *found) {
    uint8_t k[9];
    k[0] = MK_SLOT;
    tem_put_u64be(k + 1, slot);
    const uint8_t *v;
    size_t vlen;
    int rc = ledger_state_get(st, k, sizeof k, &v, &vlen);
    *found = false;
    memset(s, 0, sizeof *s);
    if (rc == LEDGER_ENOTFOUND) return LEDGER_OK;
    if (rc) return rc;
    if (vlen != MK_SLOT_BYTES) return LEDGER_ECORRUPT;
    s->next_tseq = tem_get_u64le(v);
    s->flags = tem_get_u32le(v + 8);
    *found = true;
    return LEDGER_OK;
}

int mk_slot_put(ledger_state *st, uint64_t slot, const mk_slot *s) {
    uint8_t k[9], v[MK_SLOT_BYTES] = {0};
    k[0] = MK_SLOT;
    tem_put_u64be(k + 1, slot);
    tem_put_u64le(v, s->next_tseq);
    tem_put_u32le(v + 8, s->flags);
    return ledger_state_put(st, k, sizeof k, v, sizeof v);
}

int mk_refuse(Tem__V1__Receipt *rc, const ledger_block_ctx *b, int code) {
    TEM_ASSERT(code < 0);
    rc->code = code;
    rc->reason = ledger_arena_strdup(b->arena, contracts_strerror(code));
    return rc->reason ? LEDGER_OK : LEDGER_ENOMEM;
}

/* ================================================================== book cache
 * The books are a cache of the 'o' records. It is trusted only for the state object it was
 * built from and only while every block since was executed to its end: a block that aborted
 * (error, failed commit) leaves `in_block` set or `height_done` behind, and the next
 * begin_block rebuilds from the state. Refusals never touch a book: every check runs before the
 * first book change, and what can still fail after it (out of memory) aborts the block. */
static void cache_clear(contracts_market *m) {
    for (uint32_t i = 0; i < m->n_books; i++) cda_book_free(&m->books[i].book);
    m->n_books = 0;
    m->valid = false;
}

static cda_book *book_find(contracts_market *m, uint64_t slot) {
    for (uint32_t i = 0; i < m->n_books; i++)
        if (m->books[i].slot == slot) return &m->books[i].book;
    return NULL;
}

static cda_book *book_get(contracts_market *m, uint64_t slot) {
    cda_book *bk = book_find(m, slot);
    if (bk) return bk;
    if (m->n_books == m->cap_books) {
        uint32_t cap = m->cap_books ? m->cap_books * 2 : 8;
        mk_book *nb = tem_realloc(m->books, sizeof(*nb) * cap);
        if (!nb) return NULL;
        m->books = nb;
        m->cap_books = cap;
    }
    mk_book *e = &m->books[m->n_books++];
    e->slot = slot;
    cda_book_init(&e->book);
    return &e->book;
}

static void book_drop(contracts_market *m, uint64_t slot) {
    for (uint32_t i = 0; i < m->n_books; i++) {
        if (m->books[i].slot != slot) continue;
        cda_book_free(&m->books[i].book);
        m->books[i] = m->books[--m->n_books];
        return;
    }
}

static int cache_load_one(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val,
                          size_t vlen) {
    contracts_market *m = ctx;
    if (klen != 17 || vlen != MK_ORDER_BYTES) return LEDGER_ECORRUPT;
    mk_order o;
    mk_order_decode(val, &o);
    uint64_t slot = tem_get_u64be(key + 1), seq = tem_get_u64be(key + 9);
    cda_book *bk = book_get(m, slot);
    if (!bk) return LEDGER_ENOMEM;
    /* Keys ascend by (slot, seq), so each level's queue is rebuilt in time order. */
    int rc = cda_book_add(bk, seq, o.side == TEM__V1__SIDE__BUY ? CDA_BUY : CDA_SELL, o.price,
                          o.remaining_wh);
    if (rc == CDA_BOOK_ENOMEM) return LEDGER_ENOMEM;
    return rc ? LEDGER_ECORRUPT : 0;
}

static int cache_rebuild(contracts_market *m, ledger_state *st) {
    cache_clear(m);
    uint8_t prefix = MK_ORDER;
    int rc = ledger_state_iter(st, &prefix, 1, cache_load_one, m);
    if (rc) {
        cache_clear(m);
        return rc;
    }
    m->st = st;
    m->valid = true;
    return LEDGER_OK;
}

int contracts_market_new(contracts_market **out) {
    contracts_market *m = tem_calloc(1, sizeof *m);
    if (!m) return LEDGER_ENOMEM;
    *out = m;
    return LEDGER_OK;
}

void contracts_market_free(contracts_market *m) {
    if (!m) return;
    cache_clear(m);
    tem_free(m->books);
    tem_free(m);
}

/* ================================================================== escrow arithmetic */
typedef struct {
    ledger_state *st;
    const ledger_block_ctx *b;
    contracts_market *m;
    uint64_t slot;
    mk_slot srec;
    mk_period tariff;
    bool dso; /* fees are charged only when there is a DSO account to receive them */
    int64_t loss_price;
    /* the taker (NULL during a call-auction clearing) and its receipt */
    mk_order *taker;
    Tem__V1__Receipt *rc;
    Tem__V1__Fill **fills;
    size_t n_fills, cap_fills;
    int64_t taker_released, taker_fee;
    uint32_t skips; /* grid-blocked counter-orders so far (MK_GRID_SKIPS_MAX) */
    uint64_t blocked; /* fully blocked matches of this call clearing ('q' ids 2^63 + n) */
    bool self_stop;   /* the taker reached its owner's own resting order */
    int err;
} fill_env;

static bool price_part(uint64_t qty, uint64_t price, int64_t *out) {
    return tem_mul_div_ceil((int64_t)qty, (int64_t)price, 1000, out);
}

/* A seller's money collateral: ceil(ceil(qty * retail / 1000) * ppm / 1e6), held apart from any
 * metered energy, to pay the cover and withholding charges of a shortfall at settlement. */
static bool collateral_part(const ledger_genesis *g, uint64_t qty, int64_t retail, int64_t *out) {
    int64_t v;
    return tem_mul_div_ceil((int64_t)qty, retail, 1000, &v) &&
           tem_mul_div_ceil(v, g->market.seller_collateral_ppm, 1000000, out);
}

/* Most fees an order of qty at `bus` can owe: grid codes, GRID_OK. */
static int fee_part(const fill_env *e, uint32_t bus, uint64_t qty, int64_t *out) {
    *out = 0;
    if (!e->dso || qty == 0) return GRID_OK;
    int64_t nf = 0, lf = 0;
    int rc = grid_network_fee_max(e->st, bus, qty, e->b->genesis->market.network_fee_uunit_per_kwh_per_ohm, &nf);
    if (rc) return rc;
    if ((rc = grid_loss_charge_max(e->st, bus, qty, e->loss_price, &lf))) return rc;
    if (!tem_add_i64(&nf, lf)) return GRID_EOVERFLOW;
    *out = nf;
    return GRID_OK;
}

static int release_order(ledger_state *st, mk_order *o, int64_t *money, int64_t *tokens) {
    mk_acct a;
    int rc = mk_acct_get(st, o->owner, &a);
    if (rc) return rc == LEDGER_ENOTFOUND ? LEDGER_ECORRUPT : rc;
    int64_t mr = o->escrow_price + o->escrow_fee + o->escrow_coll;
    TEM_ASSERT(mr >= 0 && o->escrow_coll >= 0);
    TEM_ASSERT(a.money_escrow >= mr);
    a.money_escrow -= mr;
    a.money += mr;
    o->escrow_price = o->escrow_fee = o->escrow_coll = 0;
    if (money) *money += mr;
    (void)tokens; /* nothing escrows tokens any more */
    return mk_acct_put(st, o->owner, &a);
}

static int env_add_fill(fill_env *e, Tem__V1__Fill *f) {
    if (e->n_fills == e->cap_fills) {
        size_t cap = e->cap_fills ? e->cap_fills * 2 : 8;
        Tem__V1__Fill **nf = tem_realloc(e->fills, sizeof(*nf) * cap);
        if (!nf) return LEDGER_ENOMEM;
        e->fills = nf;
        e->cap_fills = cap;
    }
    e->fills[e->n_fills++] = f;
    return LEDGER_OK;
}

/* ================================================================== the fill rule
 * Executes up to `want` Wh between buy and sell at `price`, through the grid check. Writes the
 * trade, moves escrow, updates both order records in memory (the caller stores them) and the
 * grid's slot state. *got is what executed (0 when the grid allows nothing). Fatal errors only. */
static int mk_fill(fill_env *e, mk_order *buy, mk_order *sell, uint64_t want, uint64_t price,
                   uint64_t *got) {
    const ledger_genesis *g = e->b->genesis;
    int64_t slot_ms = g->market.slot_ms;
    TEM_ASSERT(want > 0 && want <= buy->remaining_wh && want <= sell->remaining_wh);
    *got = 0;
    grid_match_result gr;
    const char *binding = "";
    uint64_t q;
    int rc = grid_check_match(e->st, e->slot, sell->bus, buy->bus, want, slot_ms, &gr);
    if (rc == GRID_ENOMEM) return LEDGER_ENOMEM;
    if (rc != GRID_OK) {
        /* A bus the feeder no longer has (a new model was installed) blocks the pair. */
        q = 0;
        binding = grid_errname(rc) ? grid_errname(rc) : "grid";
    } else {
        q = gr.allowed_wh;
        if (gr.curtailed_wh > 0) binding = gr.binding.text;
    }
    /* Capacity was scarce in this slot: undelivered trade energy will pay for what it withheld. */
    if (q < want) e->srec.flags |= MK_SLOT_BOUND;
    mk_order *taker = e->taker;
    mk_order *counter = taker == buy ? sell : buy;
    if (!taker && q < want) {
        /* A call-auction clearing runs at gate closure, outside any tx: there is no receipt to
         * carry the curtailment, so it is kept in the state ('q'), where /v1/trades reads it. */
        uint8_t ck[17], cv[MK_CURT_BYTES] = {0};
        ck[0] = MK_CURT;
        tem_put_u64be(ck + 1, e->slot);
        tem_put_u64be(ck + 9, q > 0 ? e->srec.next_tseq : (1ull << 63) + e->blocked++);
        memcpy(cv, sell->owner, PUB);
        memcpy(cv + PUB, buy->owner, PUB);
        tem_put_u64le(cv + 2 * PUB, want);
        tem_put_u64le(cv + 2 * PUB + 8, q);
        tem_put_u64le(cv + 2 * PUB + 16, price);
        size_t bl = strlen(binding);
        memcpy(cv + 2 * PUB + 24, binding, bl < MK_CURT_BINDING_BYTES ? bl : MK_CURT_BINDING_BYTES - 1);
        if ((rc = ledger_state_put(e->st, ck, sizeof ck, cv, sizeof cv))) return rc;
    }
    Tem__V1__Fill *f = NULL;
    if (taker) {
        f = ledger_arena_alloc(e->b->arena, sizeof *f);
        if (!f) return LEDGER_ENOMEM;
        tem__v1__fill__init(f);
        uint8_t *cid = ledger_arena_alloc(e->b->arena, 32);
        char *bt = ledger_arena_strdup(e->b->arena, binding);
        if (!cid || !bt) return LEDGER_ENOMEM;
        memcpy(cid, counter->txid, 32);
        f->counter_txid = (ProtobufCBinaryData){32, cid};
        f->price = price;
        f->curtailed_wh = want - q;
        f->binding = bt;
        if ((rc = env_add_fill(e, f))) return rc;
    }
    if (q == 0) return LEDGER_OK;

    /* Money: the trade value, rounded down (the buyer keeps the sub-micro-unit remainder). */
    int64_t value, nf = 0;
    bool ok = tem_mul_div_floor((int64_t)q, (int64_t)price, 1000, &value);
    TEM_ASSERT(ok);
    grid_loss loss = {0};
    if (e->dso) {
        rc = grid_network_fee(e->st, sell->bus, buy->bus, q, g->market.network_fee_uunit_per_kwh_per_ohm, &nf);
        if (rc == GRID_ENOMEM) return LEDGER_ENOMEM;
        if (rc) nf = 0;
        rc = grid_loss_charge(e->st, e->slot, slot_ms, sell->bus, buy->bus, q, e->loss_price, &loss);
        if (rc == GRID_ENOMEM) return LEDGER_ENOMEM;
        if (rc) memset(&loss, 0, sizeof loss);
    }
    /* A loss-lowering trade earns a credit instead of a charge: nobody pays a loss share now,
     * and the trade records its whole credit as a negative seller_fee, which the DSO pays out
     * at settlement (contracts/settle.c; docs/grid.md, "Loss allocation"). */
    int64_t loss_credit = 0;
    if (loss.total_uunit < 0) {
        loss_credit = -loss.total_uunit;
        loss.seller_uunit = loss.buyer_uunit = 0;
    }
    /* The seller's loss share comes out of its proceeds; what exceeds them falls to the buyer.
     * The buyer's fees are capped at what its order escrowed for fees, because ceil-rounded
     * fees of split trades can exceed the single maximum by a micro-unit per fill. */
    int64_t seller_fee = loss.seller_uunit < value ? loss.seller_uunit : value;
    int64_t buyer_fee = nf;
    if (!tem_add_i64(&buyer_fee, loss.buyer_uunit) ||
        !tem_add_i64(&buyer_fee, loss.seller_uunit - seller_fee) || buyer_fee > buy->escrow_fee)
        buyer_fee = buy->escrow_fee;

    /* Buyer escrow: the price part stays exactly ceil(remaining * limit / 1000), which never
     * drops by less than the value paid, so the difference is a release (price improvement);
     * the fee part keeps the maximum for the remaining quantity and releases the rest. */
    uint64_t br = buy->remaining_wh - q;
    int64_t new_ep, new_fm = 0;
    ok = price_part(br, buy->price, &new_ep);
    TEM_ASSERT(ok);
    int64_t rel_p = buy->escrow_price - value - new_ep;
    TEM_ASSERT(rel_p >= 0);
    rc = fee_part(e, buy->bus, br, &new_fm);
    if (rc == GRID_ENOMEM) return LEDGER_ENOMEM;
    if (rc) new_fm = 0;
    int64_t rel_f = buy->escrow_fee - buyer_fee - new_fm;
    if (rel_f < 0) rel_f = 0;
    buy->escrow_price = new_ep;
    buy->escrow_fee -= buyer_fee + rel_f;
    TEM_ASSERT(buy->escrow_fee >= 0);
    mk_acct ba;
    if ((rc = mk_acct_get(e->st, buy->owner, &ba))) return rc == LEDGER_ENOTFOUND ? LEDGER_ECORRUPT : rc;
    TEM_ASSERT(ba.money_escrow >= rel_p + rel_f);
    ba.money_escrow -= rel_p + rel_f;
    ba.money += rel_p + rel_f;
    if ((rc = mk_acct_put(e->st, buy->owner, &ba))) return rc;

    /* Seller collateral: the part for q moves from the order to the trade, in proportion (so a
     * tariff change while the order rests cannot make it negative). */
    uint64_t sr = sell->remaining_wh - q;
    int64_t new_et;
    ok = tem_mul_div_ceil(sell->escrow_coll, (int64_t)sr, (int64_t)sell->remaining_wh, &new_et);
    TEM_ASSERT(ok && new_et <= sell->escrow_coll);
    int64_t coll = sell->escrow_coll - new_et;
    TEM_ASSERT(coll >= 0);
    sell->escrow_coll = new_et;
    buy->remaining_wh = br;
    sell->remaining_wh = sr;

    mk_trade t = {.qty_wh = q, .price = price, .value = value, .buyer_fee = buyer_fee,
                  .seller_fee = loss_credit ? -loss_credit : seller_fee, .collateral = coll};
    memcpy(t.seller, sell->owner, PUB);
    memcpy(t.buyer, buy->owner, PUB);
    uint8_t tk[17], tv[MK_TRADE_BYTES];
    tk[0] = MK_TRADE;
    tem_put_u64be(tk + 1, e->slot);
    tem_put_u64be(tk + 9, e->srec.next_tseq++);
    mk_trade_encode(&t, tv);
    if ((rc = ledger_state_put(e->st, tk, sizeof tk, tv, sizeof tv))) return rc;
    rc = grid_commit_match(e->st, e->slot, sell->bus, buy->bus, q, slot_ms);
    if (rc == GRID_ENOMEM) return LEDGER_ENOMEM;
    /* Any other grid error here would repeat the check's own error, which allowed q. */

    if (f) {
        f->quantity_wh = q;
        if (taker == buy) {
            /* What was actually paid: the network fee first, the loss share from the rest. */
            int64_t paid_nf = nf < buyer_fee ? nf : buyer_fee;
            f->network_fee = (uint64_t)paid_nf;
            f->loss_fee = (uint64_t)(buyer_fee - paid_nf);
            e->taker_fee += buyer_fee;
            e->taker_released += rel_p + rel_f;
        } else {
            f->loss_fee = (uint64_t)seller_fee;
            e->taker_fee += seller_fee;
        }
    }
    *got = q;
    return LEDGER_OK;
}

/* CDA: the core's callback against one resting order. */
static int64_t cda_fill_cb(void *ctx, const cda_order *r, uint64_t want) {
    fill_env *e = ctx;
    mk_order rest;
    int rc = order_get(e->st, e->slot, r->id, &rest);
    if (rc) return e->err = rc, -1;
    TEM_ASSERT(rest.remaining_wh == r->qty_wh);
    if (memcmp(rest.owner, e->taker->owner, PUB) == 0) {
        e->self_stop = true;
        return CDA_FILL_STOP;
    }
    mk_order *buy = e->taker->side == TEM__V1__SIDE__BUY ? e->taker : &rest;
    mk_order *sell = buy == e->taker ? &rest : e->taker;
    uint64_t got;
    /* Trades execute at the resting order's price. */
    if ((rc = mk_fill(e, buy, sell, want, rest.price, &got))) return e->err = rc, -1;
    if (got == 0) return ++e->skips >= MK_GRID_SKIPS_MAX ? CDA_FILL_STOP : 0;
    if (rest.remaining_wh == 0) {
        if ((rc = release_order(e->st, &rest, NULL, NULL)) || (rc = order_del(e->st, &rest)))
            return e->err = rc, -1;
    } else if ((rc = order_put(e->st, &rest, false))) {
        return e->err = rc, -1;
    }
    return (int64_t)got;
}

static int env_init(fill_env *e, contracts_market *m, ledger_state *st, const ledger_block_ctx *b,
                    uint64_t slot, const mk_period *tariff) {
    memset(e, 0, sizeof *e);
    e->st = st;
    e->b = b;
    e->m = m;
    e->slot = slot;
    e->tariff = *tariff;
    uint8_t dso[PUB];
    e->dso = mk_dso(st, dso);
    e->loss_price = b->genesis->market.loss_price_uunit_per_kwh ? b->genesis->market.loss_price_uunit_per_kwh
                                                                 : tariff->retail;
    bool found;
    return mk_slot_get(st, slot, &e->srec, &found);
}

static int env_finish_receipt(fill_env *e) {
    if (!e->rc || e->n_fills == 0) return LEDGER_OK;
    Tem__V1__Fill **arr = ledger_arena_alloc(e->b->arena, sizeof(*arr) * e->n_fills);
    if (!arr) return LEDGER_ENOMEM;
    memcpy(arr, e->fills, sizeof(*arr) * e->n_fills);
    e->rc->fills = arr;
    e->rc->n_fills = e->n_fills;
    return LEDGER_OK;
}

/* ================================================================== orders */
static int exec_order(contracts_market *m, ledger_state *st, const ledger_block_ctx *b,
                      const ledger_tx *tx, Tem__V1__Receipt *rc) {
    const Tem__V1__Order *o = tx->body->order;
    const ledger_market_params *mp = &b->genesis->market;
    const uint8_t *signer = tx->body->signer.data;
    mk_acct a;
    int e = mk_acct_get(st, signer, &a);
    if (e == LEDGER_ENOTFOUND) return mk_refuse(rc, b, CONTRACTS_ENOTREGISTERED);
    if (e) return e;
    if (o->side != TEM__V1__SIDE__BUY && o->side != TEM__V1__SIDE__SELL)
        return mk_refuse(rc, b, CONTRACTS_ESIDE);
    if (o->tif != TEM__V1__TIME_IN_FORCE__GTC && o->tif != TEM__V1__TIME_IN_FORCE__IOC)
        return mk_refuse(rc, b, CONTRACTS_ETIF);
    bool buy = o->side == TEM__V1__SIDE__BUY, ioc = o->tif == TEM__V1__TIME_IN_FORCE__IOC;
    /* The DSO (and its meter-data key) operates the network and stays out of the market; a
     * consumer has nothing to sell. */
    if (a.role == TEM__V1__ROLE__DSO || a.role == TEM__V1__ROLE__METER_DATA ||
        (!buy && a.role == TEM__V1__ROLE__CONSUMER))
        return mk_refuse(rc, b, CONTRACTS_EROLE);
    if (o->quantity_wh == 0) return mk_refuse(rc, b, CONTRACTS_EQTY);
    if (o->quantity_wh > (uint64_t)CONTRACTS_QTY_MAX_WH) return mk_refuse(rc, b, CONTRACTS_EOVERFLOW);
    int64_t gate;
    if (!mk_slot_times(b->genesis, o->slot, NULL, &gate, NULL, NULL))
        return mk_refuse(rc, b, CONTRACTS_ESLOT);
    if ((int64_t)b->time_ms >= gate) return mk_refuse(rc, b, CONTRACTS_EGATE);
    mk_period tariff;
    e = mk_tariff_for_slot(st, b->genesis, o->slot, &tariff);
    if (e == LEDGER_ENOTFOUND) return mk_refuse(rc, b, CONTRACTS_ENOTARIFF);
    if (e == LEDGER_EINVAL) return mk_refuse(rc, b, CONTRACTS_ESLOT);
    if (e) return e;
    if (o->price < (uint64_t)tariff.feed_in || o->price > (uint64_t)tariff.retail)
        return mk_refuse(rc, b, CONTRACTS_EPRICE);
    if (ioc && mp->mechanism == LEDGER_MECH_CALL) return mk_refuse(rc, b, CONTRACTS_EMECH);
    int g = grid_bus_check(st, a.bus);
    if (g != GRID_OK) return mk_refuse(rc, b, g);
    /* A book is created only for an accepted order, so refused orders for many slots cannot
     * fill the cache with empty books. */
    cda_book *bk = book_find(m, o->slot);
    if (!ioc && mp->book_orders_max > 0 && bk &&
        (int64_t)cda_book_count(bk) >= mp->book_orders_max)
        return mk_refuse(rc, b, CONTRACTS_EBOOKFULL);

    fill_env env;
    if ((e = env_init(&env, m, st, b, o->slot, &tariff))) return e;
    mk_order ord = {.side = (uint8_t)o->side, .tif = (uint8_t)o->tif, .bus = a.bus,
                    .price = o->price, .qty_wh = o->quantity_wh, .remaining_wh = o->quantity_wh,
                    .slot = o->slot};
    memcpy(ord.txid, tx->txid, 32);
    memcpy(ord.owner, signer, PUB);
    if (buy) {
        bool ok = price_part(o->quantity_wh, o->price, &ord.escrow_price);
        TEM_ASSERT(ok);
        g = fee_part(&env, a.bus, o->quantity_wh, &ord.escrow_fee);
        if (g == GRID_ENOMEM) return LEDGER_ENOMEM;
        if (g == GRID_EOVERFLOW) return mk_refuse(rc, b, CONTRACTS_EOVERFLOW);
        if (g) return mk_refuse(rc, b, g);
        int64_t total = ord.escrow_price;
        if (!tem_add_i64(&total, ord.escrow_fee)) return mk_refuse(rc, b, CONTRACTS_EOVERFLOW);
        if (a.money < total) return mk_refuse(rc, b, CONTRACTS_EFUNDS);
        a.money -= total;
        a.money_escrow += total;
        rc->escrow_held = (uint64_t)total;
    } else {
        if (!collateral_part(b->genesis, o->quantity_wh, tariff.retail, &ord.escrow_coll))
            return mk_refuse(rc, b, CONTRACTS_EOVERFLOW);
        if (a.money < ord.escrow_coll) return mk_refuse(rc, b, CONTRACTS_EFUNDS);
        a.money -= ord.escrow_coll;
        a.money_escrow += ord.escrow_coll;
        rc->escrow_held = (uint64_t)ord.escrow_coll;
    }
    /* ---- nothing below refuses: the book may change from here on. */
    if (!bk && !(bk = book_get(m, o->slot))) return LEDGER_ENOMEM;
    mk_counters c;
    if ((e = mk_counters_get(st, &c))) return e;
    ord.seq = c.next_seq++;
    if ((e = mk_counters_put(st, &c)) || (e = mk_acct_put(st, signer, &a))) return e;

    uint64_t rem = ord.qty_wh;
    int side = buy ? CDA_BUY : CDA_SELL;
    if (mp->mechanism == LEDGER_MECH_CDA) {
        env.taker = &ord;
        env.rc = rc;
        int r = cda_book_match(bk, side, ord.price, &rem, cda_fill_cb, &env);
        if (r) {
            e = env.err ? env.err : LEDGER_ECORRUPT;
            goto out;
        }
        TEM_ASSERT(rem == ord.remaining_wh);
    }
    /* Self-trade prevention, cancel-newest: an order that reaches one of its owner's own resting
     * orders stops there and its remainder is cancelled, as if it were IOC. */
    if (rem > 0 && !ioc && !env.self_stop) {
        if ((e = order_put(st, &ord, true))) goto out;
        int r = cda_book_add(bk, ord.seq, side, ord.price, rem);
        if (r) {
            e = r == CDA_BOOK_ENOMEM ? LEDGER_ENOMEM : LEDGER_ECORRUPT;
            goto out;
        }
        rc->remaining_wh = rem;
    } else {
        int64_t mr = 0, tr = 0;
        if ((e = release_order(st, &ord, &mr, &tr))) goto out;
        env.taker_released += mr;
    }
    bool found;
    mk_slot cur;
    if ((e = mk_slot_get(st, o->slot, &cur, &found))) goto out;
    env.srec.flags |= cur.flags;
    if ((e = mk_slot_put(st, o->slot, &env.srec))) goto out;
    rc->escrow_released += (uint64_t)env.taker_released;
    rc->fee += (uint64_t)env.taker_fee;
    e = env_finish_receipt(&env);
out:
    tem_free(env.fills);
    return e;
}

typedef struct {
    uint64_t slot, seq;
    bool found;
} oindex;

static int exec_cancel(contracts_market *m, ledger_state *st, const ledger_block_ctx *b,
                       const ledger_tx *tx, Tem__V1__Receipt *rc) {
    const Tem__V1__CancelOrder *c = tx->body->cancel;
    const uint8_t *signer = tx->body->signer.data;
    mk_acct a;
    int e = mk_acct_get(st, signer, &a);
    if (e == LEDGER_ENOTFOUND) return mk_refuse(rc, b, CONTRACTS_ENOTREGISTERED);
    if (e) return e;
    if (c->order_txid.len != 32) return mk_refuse(rc, b, CONTRACTS_ENOORDER);
    uint8_t ik[33];
    ik[0] = MK_OINDEX;
    memcpy(ik + 1, c->order_txid.data, 32);
    const uint8_t *v;
    size_t vlen;
    e = ledger_state_get(st, ik, sizeof ik, &v, &vlen);
    /* Filled, cancelled and expired orders have no index entry any more. */
    if (e == LEDGER_ENOTFOUND) return mk_refuse(rc, b, CONTRACTS_ENOORDER);
    if (e) return e;
    if (vlen != 16) return LEDGER_ECORRUPT;
    uint64_t slot = tem_get_u64be(v), seq = tem_get_u64be(v + 8);
    mk_order o;
    if ((e = order_get(st, slot, seq, &o))) return e;
    if (memcmp(o.owner, signer, PUB) != 0) return mk_refuse(rc, b, CONTRACTS_ENOTOWNER);
    int64_t mr = 0, tr = 0;
    if ((e = release_order(st, &o, &mr, &tr)) || (e = order_del(st, &o))) return e;
    cda_book *bk = book_find(m, slot);
    TEM_ASSERT(bk != NULL);
    e = cda_book_remove(bk, seq, NULL);
    TEM_ASSERT(e == CDA_BOOK_OK);
    rc->escrow_released = (uint64_t)mr;
    (void)tr;
    return LEDGER_OK;
}

/* ================================================================== gate closure */
typedef struct {
    uint64_t *seqs;
    size_t n, cap;
    uint64_t price;
    int side;
    int err;
} seq_list;

static int seq_push(seq_list *l, uint64_t seq) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        uint64_t *ns = tem_realloc(l->seqs, sizeof(*ns) * cap);
        if (!ns) return LEDGER_ENOMEM;
        l->seqs = ns;
        l->cap = cap;
    }
    l->seqs[l->n++] = seq;
    return LEDGER_OK;
}

static int collect_eligible(void *ctx, const cda_order *o) {
    seq_list *l = ctx;
    bool in = l->side == CDA_BUY ? o->price >= l->price : o->price <= l->price;
    if (!in) return 1; /* priority order: nothing after this is eligible either */
    if (seq_push(l, o->id)) return l->err = LEDGER_ENOMEM, 1;
    return 0;
}

static int collect_slot_orders(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val,
                               size_t vlen) {
    (void)val;
    (void)vlen;
    seq_list *l = ctx;
    if (klen != 17) return l->err = LEDGER_ECORRUPT, 1;
    if (seq_push(l, tem_get_u64be(key + 9))) return l->err = LEDGER_ENOMEM, 1;
    return 0;
}

/* Uniform-price clearing at gate closure: pairs buyers and sellers in priority order at the
 * clearing price, each pair through the grid check, until the clearing volume is done. */
static int call_clear_slot(fill_env *e, cda_book *bk) {
    call_result cr;
    call_clear(bk, &cr);
    if (cr.volume_wh == 0) return LEDGER_OK;
    seq_list bl = {.price = cr.price, .side = CDA_BUY}, sl = {.price = cr.price, .side = CDA_SELL};
    int rc = LEDGER_OK;
    (void)cda_book_walk(bk, CDA_BUY, collect_eligible, &bl);
    (void)cda_book_walk(bk, CDA_SELL, collect_eligible, &sl);
    if (bl.err || sl.err) {
        rc = LEDGER_ENOMEM;
        goto out;
    }
    uint64_t done = 0;
    size_t j0 = 0;
    for (size_t i = 0; i < bl.n && done < cr.volume_wh; i++) {
        mk_order buy;
        if ((rc = order_get(e->st, e->slot, bl.seqs[i], &buy))) goto out;
        uint32_t skips = 0;
        for (size_t j = j0; j < sl.n && buy.remaining_wh > 0 && done < cr.volume_wh &&
                            skips < MK_GRID_SKIPS_MAX;
             j++) {
            mk_order sell;
            if ((rc = order_get(e->st, e->slot, sl.seqs[j], &sell))) goto out;
            if (sell.remaining_wh == 0) {
                if (j == j0) j0++;
                continue;
            }
            /* Self-trade prevention: a buyer never meets its owner's own sell. */
            if (memcmp(sell.owner, buy.owner, PUB) == 0) continue;
            uint64_t want = buy.remaining_wh < sell.remaining_wh ? buy.remaining_wh : sell.remaining_wh;
            if (want > cr.volume_wh - done) want = cr.volume_wh - done;
            uint64_t got;
            if ((rc = mk_fill(e, &buy, &sell, want, cr.price, &got))) goto out;
            if (got == 0) skips++;
            done += got;
            if ((rc = order_put(e->st, &sell, false))) goto out;
            if (sell.remaining_wh == 0 && j == j0) j0++;
        }
        if ((rc = order_put(e->st, &buy, false))) goto out;
    }
out:
    tem_free(bl.seqs);
    tem_free(sl.seqs);
    return rc;
}

/* Gate closure of a slot: a call auction clears, then every open order expires and its
 * escrow goes back. */
static int close_slot(contracts_market *m, ledger_state *st, const ledger_block_ctx *b,
                      uint64_t slot, mk_slot *s) {
    int rc = LEDGER_OK;
    cda_book *bk = book_find(m, slot);
    if (b->genesis->market.mechanism == LEDGER_MECH_CALL && bk && cda_book_count(bk) > 0) {
        mk_period tariff;
        rc = mk_tariff_for_slot(st, b->genesis, slot, &tariff);
        if (rc) return rc == LEDGER_ENOTFOUND || rc == LEDGER_EINVAL ? LEDGER_ECORRUPT : rc;
        fill_env env;
        if ((rc = env_init(&env, m, st, b, slot, &tariff))) return rc;
        rc = call_clear_slot(&env, bk);
        tem_free(env.fills);
        if (rc) return rc;
        s->next_tseq = env.srec.next_tseq;
        s->flags |= env.srec.flags & MK_SLOT_BOUND;
    }
    seq_list l = {0};
    uint8_t prefix[9];
    prefix[0] = MK_ORDER;
    tem_put_u64be(prefix + 1, slot);
    rc = ledger_state_iter(st, prefix, sizeof prefix, collect_slot_orders, &l);
    if (l.err) rc = l.err;
    for (size_t i = 0; rc == LEDGER_OK && i < l.n; i++) {
        mk_order o;
        if ((rc = order_get(st, slot, l.seqs[i], &o))) break;
        if ((rc = release_order(st, &o, NULL, NULL))) break;
        rc = order_del(st, &o);
    }
    tem_free(l.seqs);
    if (rc) return rc;
    book_drop(m, slot);
    s->flags |= MK_SLOT_CLOSED;
    return LEDGER_OK;
}

/* ================================================================== the executor */
typedef struct {
    uint64_t *slots;
    size_t n, cap;
    const ledger_block_ctx *b;
    int err;
} slot_list;

static int collect_slot(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val,
                        size_t vlen) {
    (void)val;
    slot_list *l = ctx;
    if (klen != 9 || vlen != MK_SLOT_BYTES) return l->err = LEDGER_ECORRUPT, 1;
    /* Slots ascend and so do their gate times: from the first slot whose gate is still open,
     * nothing is due, however many future slots hold orders. */
    int64_t gate;
    if (!mk_slot_times(l->b->genesis, tem_get_u64be(key + 1), NULL, &gate, NULL, NULL) ||
        (int64_t)l->b->time_ms < gate)
        return 1;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        uint64_t *ns = tem_realloc(l->slots, sizeof(*ns) * cap);
        if (!ns) return l->err = LEDGER_ENOMEM, 1;
        l->slots = ns;
        l->cap = cap;
    }
    l->slots[l->n++] = tem_get_u64be(key + 1);
    return 0;
}

static int first_key(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen) {
    (void)val;
    (void)vlen;
    uint64_t *out = ctx;
    if (klen == 9) *out = tem_get_u64be(key + 1);
    return 1;
}

static bool any_meter(ledger_state *st) {
    uint8_t prefix = MK_METER;
    uint64_t dummy = 0;
    return ledger_state_iter(st, &prefix, 1, first_key, &dummy) == 1;
}

/* Settlement runs strictly in slot order from 'p' 'l' on: every slot whose reading deadline has
 * passed settles once. While any meter is registered every such slot settles (a silent meter is
 * estimated, docs/market.md section 8), at most MK_SETTLE_SLOTS_PER_BLOCK per block; without
 * meters only slots with a record (orders or trades) have anything to settle. */
static int settle_due(ledger_state *st, const ledger_block_ctx *b) {
    const ledger_market_params *mp = &b->genesis->market;
    uint64_t next;
    int rc = mk_settle_next_get(st, &next);
    if (rc) return rc;
    /* Slots s with deadline(s) = genesis + (s + 1) * slot_ms + settlement_deadline_ms < time. */
    int64_t rel = (int64_t)b->time_ms - (int64_t)b->genesis->genesis_time_ms;
    if (!tem_sub_i64(&rel, mp->settlement_deadline_ms) || rel <= 0) return LEDGER_OK;
    uint64_t end = (uint64_t)((rel - 1) / mp->slot_ms); /* settle slots < end */
    if (next >= end) return LEDGER_OK;
    bool meters = any_meter(st);
    for (uint32_t done = 0; next < end && done < MK_SETTLE_SLOTS_PER_BLOCK; done++) {
        uint64_t slot = next;
        if (!meters) {
            /* The next slot with a record, if it is due. */
            uint8_t prefix = MK_SLOT;
            uint64_t first = UINT64_MAX;
            rc = ledger_state_iter(st, &prefix, 1, first_key, &first);
            if (rc < 0) return rc;
            if (first == UINT64_MAX || first >= end) {
                next = end;
                break;
            }
            slot = first < next ? next : first;
            if (first < next) {
                /* A record below the settle mark cannot exist: it would have settled. */
                return LEDGER_ECORRUPT;
            }
        }
        if ((rc = settle_slot(st, b, slot))) return rc;
        next = slot + 1;
    }
    return mk_settle_next_put(st, next);
}

static int market_begin_block(void *ctx, ledger_state *st, const ledger_block_ctx *b) {
    contracts_market *m = ctx;
    int rc;
    if (m->in_block || !m->valid || m->st != st || m->height_done + 1 != b->height) {
        if ((rc = cache_rebuild(m, st))) return rc;
    }
    m->in_block = true;
    m->height_began = b->height;
    slot_list l = {.b = b};
    uint8_t prefix = MK_SLOT;
    rc = ledger_state_iter(st, &prefix, 1, collect_slot, &l);
    if (rc > 0) rc = LEDGER_OK; /* stopped at the first slot not yet due */
    if (l.err) rc = l.err;
    /* Slots in ascending order: gate closures first, then settlements whose deadline passed. */
    for (size_t i = 0; rc == LEDGER_OK && i < l.n; i++) {
        uint64_t slot = l.slots[i];
        int64_t gate, deadline;
        if (!mk_slot_times(b->genesis, slot, NULL, &gate, NULL, &deadline)) {
            rc = LEDGER_ECORRUPT;
            break;
        }
        mk_slot s;
        bool found;
        if ((rc = mk_slot_get(st, slot, &s, &found))) break;
        if (!(s.flags & MK_SLOT_CLOSED) && (int64_t)b->time_ms >= gate) {
            if ((rc = close_slot(m, st, b, slot, &s)) || (rc = mk_slot_put(st, slot, &s))) break;
        }
        (void)deadline;
    }
    tem_free(l.slots);
    if (rc == LEDGER_OK) rc = settle_due(st, b);
    if (rc) m->valid = false;
    return rc;
}

static void receipt_clear(Tem__V1__Receipt *rc) {
    int32_t code = rc->code;
    char *reason = rc->reason;
    tem__v1__receipt__init(rc);
    rc->code = code;
    rc->reason = reason;
}

static int market_exec_tx(void *ctx, ledger_state *st, const ledger_block_ctx *b,
                          const ledger_tx *tx, Tem__V1__Receipt *rc) {
    contracts_market *m = ctx;
    int e;
    if (!m->valid || m->st != st) {
        if ((e = cache_rebuild(m, st))) return e;
    }
    size_t sp;
    if ((e = ledger_state_savepoint(st, &sp))) return e;
    switch (tx->body->kind_case) {
    case TEM__V1__TX_BODY__KIND_ORDER: e = exec_order(m, st, b, tx, rc); break;
    case TEM__V1__TX_BODY__KIND_CANCEL: e = exec_cancel(m, st, b, tx, rc); break;
    case TEM__V1__TX_BODY__KIND_READING: e = mk_exec_reading(st, b, tx, rc); break;
    case TEM__V1__TX_BODY__KIND_TRANSFER: e = mk_exec_transfer(st, b, tx, rc); break;
    case TEM__V1__TX_BODY__KIND_REGISTER: e = mk_exec_register(st, b, tx, rc); break;
    case TEM__V1__TX_BODY__KIND_DEPOSIT: e = mk_exec_deposit(st, b, tx, rc); break;
    case TEM__V1__TX_BODY__KIND_SET_TARIFF: e = mk_exec_set_tariff(st, b, tx, rc); break;
    case TEM__V1__TX_BODY__KIND_INSTALL_FEEDER:
        if (!ledger_genesis_is_admin(b->genesis, tx->body->signer.data))
            e = mk_refuse(rc, b, CONTRACTS_ENOTADMIN);
        else
            e = grid_exec_install(st, b, tx, rc);
        break;
    default: e = mk_refuse(rc, b, CONTRACTS_EKIND); break;
    }
    if (e) {
        ledger_state_rollback(st, sp);
        m->valid = false;
        return e;
    }
    if (rc->code != 0) {
        /* A refusal changes nothing but the nonce the ledger already consumed. */
        ledger_state_rollback(st, sp);
        receipt_clear(rc);
    } else {
        ledger_state_release(st, sp);
    }
    return LEDGER_OK;
}

static int market_end_block(void *ctx, ledger_state *st, const ledger_block_ctx *b) {
    contracts_market *m = ctx;
    (void)st;
    m->in_block = false;
    m->height_done = b->height;
    return LEDGER_OK;
}

void contracts_executor(contracts_market *m, ledger_executor *ex) {
    ex->ctx = m;
    ex->begin_block = market_begin_block;
    ex->exec_tx = market_exec_tx;
    ex->end_block = market_end_block;
}
