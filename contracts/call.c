/* call.c: the uniform-price call auction's clearing price and volume (rule in call.h). */
#include "contracts/call.h"

/* Level i of a side in ascending price order. */
static void call__level_asc(const cda_book *b, int side, uint32_t i, uint64_t *price,
                            uint64_t *qty) {
    uint32_t n = cda_book_levels(b, side);
    /* cda_book_level counts from the best: buys best = highest, sells best = lowest. */
    bool ok = cda_book_level(b, side, side == CDA_BUY ? n - 1 - i : i, price, qty);
    TEM_ASSERT(ok);
}

static uint64_t call__sum(const cda_book *b, int side) {
    uint64_t total = 0, p, q;
    for (uint32_t i = 0; i < cda_book_levels(b, side); i++) {
        call__level_asc(b, side, i, &p, &q);
        bool ok = tem_add_u64(&total, q);
        TEM_ASSERT(ok);
    }
    return total;
}

void call_clear(const cda_book *b, call_result *out) {
    memset(out, 0, sizeof(*out));
    uint32_t nb = cda_book_levels(b, CDA_BUY), ns = cda_book_levels(b, CDA_SELL);
    if (nb == 0 || ns == 0) return;
    uint64_t buys_total = call__sum(b, CDA_BUY);
    /* Merge both sides' prices ascending. At candidate p: S = sells with price <= p (running
     * sum), D = all buys minus buys with price < p. */
    uint32_t ib = 0, is = 0;
    uint64_t s_cum = 0, b_below = 0;
    uint64_t best_v = 0, best_imb = 0;
    bool have = false;
    while (ib < nb || is < ns) {
        uint64_t pb = UINT64_MAX, qb = 0, ps = UINT64_MAX, qs = 0;
        if (ib < nb) call__level_asc(b, CDA_BUY, ib, &pb, &qb);
        if (is < ns) call__level_asc(b, CDA_SELL, is, &ps, &qs);
        uint64_t p = pb < ps ? pb : ps;
        uint64_t s_at = s_cum, qb_at = 0;
        if (ps == p) {
            s_at += qs;
            is++;
        }
        if (pb == p) {
            qb_at = qb;
            ib++;
        }
        uint64_t d_at = buys_total - b_below;
        uint64_t v = d_at < s_at ? d_at : s_at;
        uint64_t imb = d_at > s_at ? d_at - s_at : s_at - d_at;
        if (v > 0) {
            if (!have || v > best_v || (v == best_v && imb < best_imb)) {
                best_v = v;
                best_imb = imb;
                out->lo = out->hi = p;
                have = true;
            } else if (v == best_v && imb == best_imb) {
                out->hi = p;
            }
        }
        s_cum = s_at;
        b_below += qb_at;
    }
    if (!have) return;
    out->volume_wh = best_v;
    out->price = out->lo + (out->hi - out->lo) / 2;
    /* D and S at the price actually used, which may lie between candidates. */
    uint64_t d = 0, s = 0, p, q;
    for (uint32_t i = 0; i < nb; i++) {
        call__level_asc(b, CDA_BUY, i, &p, &q);
        if (p >= out->price) d += q;
    }
    for (uint32_t i = 0; i < ns; i++) {
        call__level_asc(b, CDA_SELL, i, &p, &q);
        if (p <= out->price) s += q;
    }
    out->demand_wh = d;
    out->supply_wh = s;
    TEM_ASSERT(d >= best_v);
    TEM_ASSERT(s >= best_v);
    TEM_ASSERT(out->price >= out->lo);
    TEM_ASSERT(out->price <= out->hi);
}
