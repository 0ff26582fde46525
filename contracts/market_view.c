/* market_view.c: read-only walks over a slot's orders, trades and settlement lines for the HTTP
 * API and tools (contracts.h, "market views"). They decode the records of market_internal.h and
 * never write. */
#include "contracts/market_internal.h"

typedef struct {
    union {
        int (*order)(void *ctx, const contracts_order *o);
        int (*trade)(void *ctx, const contracts_trade *t);
        int (*line)(void *ctx, const contracts_settlement *l);
        int (*curt)(void *ctx, const contracts_curtailment *c);
    } fn;
    void *ctx;
    uint64_t slot;
} view_ctx;

static int order_one(void *c, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen) {
    view_ctx *v = c;
    if (klen != 17 || vlen != MK_ORDER_BYTES) return LEDGER_ECORRUPT;
    mk_order o;
    mk_order_decode(val, &o);
    contracts_order out = {.side = o.side, .tif = o.tif, .bus = o.bus, .slot = v->slot,
                           .seq = tem_get_u64be(key + 9), .price = o.price, .qty_wh = o.qty_wh,
                           .remaining_wh = o.remaining_wh,
                           .escrow_uunit = o.escrow_price + o.escrow_fee,
                           .escrow_collateral_uunit = o.escrow_coll};
    memcpy(out.txid, o.txid, 32);
    memcpy(out.owner, o.owner, PUB);
    return v->fn.order(v->ctx, &out);
}

static int trade_one(void *c, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen) {
    view_ctx *v = c;
    if (klen != 17 || vlen != MK_TRADE_BYTES) return LEDGER_ECORRUPT;
    mk_trade t;
    mk_trade_decode(val, &t);
    contracts_trade out = {.slot = v->slot, .seq = tem_get_u64be(key + 9), .qty_wh = t.qty_wh,
                           .price = t.price, .value_uunit = t.value, .buyer_fee_uunit = t.buyer_fee,
                           .seller_fee_uunit = t.seller_fee, .collateral_uunit = t.collateral};
    memcpy(out.seller, t.seller, PUB);
    memcpy(out.buyer, t.buyer, PUB);
    return v->fn.trade(v->ctx, &out);
}

static int line_one(void *c, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen) {
    view_ctx *v = c;
    if (klen != 1 + 8 + PUB || vlen != MK_SETTLE_BYTES) return LEDGER_ECORRUPT;
    /* MK_SETTLE_FIELDS little-endian i64 in the order of mk_settle_line. */
    int64_t f[MK_SETTLE_FIELDS];
    for (int i = 0; i < MK_SETTLE_FIELDS; i++) f[i] = mk_get_i64(val + 8 * i);
    contracts_settlement out = {.slot = tem_get_u64be(key + 1), .export_wh = f[0], .import_wh = f[1],
                                .sold_wh = f[2], .bought_wh = f[3], .delivered_wh = f[4],
                                .received_wh = f[5], .shortfall_wh = f[6], .burnt_wh = f[7],
                                .lack_wh = f[8], .surplus_wh = f[9], .trade_net_uunit = f[10],
                                .penalty_net_uunit = f[11], .utility_net_uunit = f[12],
                                .unpaid_uunit = f[13], .covered_wh = f[14], .cover_wh = f[15],
                                .withheld_wh = f[16], .fees_uunit = f[17], .estimated = f[18],
                                .total_uunit = f[19]};
    memcpy(out.pubkey, key + 9, PUB);
    return v->fn.line(v->ctx, &out);
}

static int curt_one(void *c, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen) {
    view_ctx *v = c;
    if (klen != 17 || vlen != MK_CURT_BYTES) return LEDGER_ECORRUPT;
    uint64_t id = tem_get_u64be(key + 9);
    contracts_curtailment out = {.slot = v->slot, .executed = id < (1ull << 63),
                                 .trade_seq = id < (1ull << 63) ? id : 0,
                                 .wanted_wh = tem_get_u64le(val + 2 * PUB),
                                 .allowed_wh = tem_get_u64le(val + 2 * PUB + 8),
                                 .price = tem_get_u64le(val + 2 * PUB + 16)};
    memcpy(out.seller, val, PUB);
    memcpy(out.buyer, val + PUB, PUB);
    memcpy(out.binding, val + 2 * PUB + 24, MK_CURT_BINDING_BYTES);
    out.binding[MK_CURT_BINDING_BYTES] = 0;
    return v->fn.curt(v->ctx, &out);
}

static int walk(ledger_state *st, uint8_t kind, ledger_state_iter_fn one, view_ctx *v) {
    uint8_t prefix[9];
    prefix[0] = kind;
    tem_put_u64be(prefix + 1, v->slot);
    return ledger_state_iter(st, prefix, sizeof prefix, one, v);
}

int contracts_order_iter(ledger_state *st, uint64_t slot,
                         int (*fn)(void *ctx, const contracts_order *o), void *ctx) {
    view_ctx v = {.fn.order = fn, .ctx = ctx, .slot = slot};
    return walk(st, MK_ORDER, order_one, &v);
}

int contracts_trade_iter(ledger_state *st, uint64_t slot,
                         int (*fn)(void *ctx, const contracts_trade *t), void *ctx) {
    view_ctx v = {.fn.trade = fn, .ctx = ctx, .slot = slot};
    return walk(st, MK_TRADE, trade_one, &v);
}

int contracts_trade_get(ledger_state *st, uint64_t slot, uint64_t seq, contracts_trade *out) {
    uint8_t k[17];
    k[0] = MK_TRADE;
    tem_put_u64be(k + 1, slot);
    tem_put_u64be(k + 9, seq);
    const uint8_t *val;
    size_t vlen;
    int rc = ledger_state_get(st, k, sizeof k, &val, &vlen);
    if (rc) return rc;
    if (vlen != MK_TRADE_BYTES) return LEDGER_ECORRUPT;
    mk_trade t;
    mk_trade_decode(val, &t);
    *out = (contracts_trade){.slot = slot, .seq = seq, .qty_wh = t.qty_wh, .price = t.price, .value_uunit = t.value,
                             .buyer_fee_uunit = t.buyer_fee, .seller_fee_uunit = t.seller_fee,
                             .collateral_uunit = t.collateral};
    memcpy(out->seller, t.seller, PUB);
    memcpy(out->buyer, t.buyer, PUB);
    return LEDGER_OK;
}

int contracts_trade_next_seq(ledger_state *st, uint64_t slot, uint64_t *next) {
    mk_slot s;
    bool found;
    int rc = mk_slot_get(st, slot, &s, &found);
    *next = rc == LEDGER_OK && found ? s.next_tseq : 0;
    return rc;
}

int contracts_settlement_iter(ledger_state *st, uint64_t slot,
                              int (*fn)(void *ctx, const contracts_settlement *l), void *ctx) {
    view_ctx v = {.fn.line = fn, .ctx = ctx, .slot = slot};
    return walk(st, MK_SETTLED, line_one, &v);
}

int contracts_settlement_iter_all(ledger_state *st,
                                  int (*fn)(void *ctx, const contracts_settlement *l), void *ctx) {
    view_ctx v = {.fn.line = fn, .ctx = ctx};
    uint8_t prefix = MK_SETTLED;
    return ledger_state_iter(st, &prefix, 1, line_one, &v);
}

int contracts_curtailment_iter(ledger_state *st, uint64_t slot,
                               int (*fn)(void *ctx, const contracts_curtailment *c), void *ctx) {
    view_ctx v = {.fn.curt = fn, .ctx = ctx, .slot = slot};
    return walk(st, MK_CURT, curt_one, &v);
}
