/* settle.c: settlement of one delivery slot after its reading deadline (docs/market.md, section 8,
 * "Settlement"). Everything is computed from the slot's own records: the readings of every meter
 * active in the slot (a silent meter is estimated at its import capacity and zero export), and
 * the slot's trades. Energy of the slot settles only the slot: sellers deliver from the slot's
 * metered export, a buyer's import the trades did not deliver is covered at its seller's cost
 * (retail) as far as the buyer actually imported it, what is left is bought from or sold to the
 * utility at the slot's tariff, and undelivered trade energy in a slot whose grid capacity bound
 * pays the withholding charge to the DSO. Each participant's money result is computed exactly
 * (in thousandths of a micro-unit) and rounded once, down; the utility is the counterparty of
 * every net amount and keeps the rounding remainder. Nothing carries to a later slot. */
#include "contracts/grid.h"
#include "contracts/market_internal.h"

typedef __int128 mu_t; /* thousandths of a micro-unit: Wh x micro-units per kWh */

typedef struct {
    uint8_t pub[PUB];
    bool involved;             /* has a meter or a trade in the slot */
    int64_t export_left;       /* metered export not yet delivered */
    int64_t need_left;         /* import not met by deliveries, still to be covered */
    mu_t trade_mu, penalty_mu, utility_mu;
    mk_settle_line line;
} party;

typedef struct {
    uint8_t owner[PUB];
    int64_t import_wh, export_wh;
    bool estimated;
} meter_amt;

typedef struct {
    party *p;
    size_t n, cap;
    mk_trade *t;
    int64_t *d, *c; /* per trade: delivered, covered */
    size_t nt, capt;
    meter_amt *m;
    size_t nm, capm;
    uint64_t slot;
    ledger_state *st;
    const ledger_block_ctx *b;
    int err;
} settle_ctx;

static bool grow(void **arr, size_t *cap, size_t n, size_t elem) {
    if (n < *cap) return true;
    size_t nc = *cap ? *cap * 2 : 16;
    void *na = tem_realloc(*arr, elem * nc);
    if (!na) return false;
    *arr = na;
    *cap = nc;
    return true;
}

static party *party_push(settle_ctx *c, const uint8_t pub[PUB]) {
    if (!grow((void **)&c->p, &c->cap, c->n, sizeof *c->p)) return NULL;
    party *p = &c->p[c->n++];
    memset(p, 0, sizeof *p);
    memcpy(p->pub, pub, PUB);
    return p;
}

static int party_cmp(const void *a, const void *b) {
    return memcmp(((const party *)a)->pub, ((const party *)b)->pub, PUB);
}

static int party_key_cmp(const void *key, const void *elem) {
    return memcmp(key, ((const party *)elem)->pub, PUB);
}

static party *party_find(settle_ctx *c, const uint8_t pub[PUB]) {
    party *p = bsearch(pub, c->p, c->n, sizeof *c->p, party_key_cmp);
    TEM_ASSERT(p != NULL);
    return p;
}

static void party_dedupe(settle_ctx *c) {
    if (c->n > 1) qsort(c->p, c->n, sizeof *c->p, party_cmp);
    size_t w = 0;
    for (size_t i = 0; i < c->n; i++)
        if (w == 0 || memcmp(c->p[w - 1].pub, c->p[i].pub, PUB) != 0) c->p[w++] = c->p[i];
    c->n = w;
}

/* Every meter active in the slot, with its reading or, without one, the estimate: import at the
 * registered import capacity times the slot length, export 0 (the worst reading the meter could
 * have sent, so that staying silent never pays). */
static int load_meter(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen) {
    settle_ctx *c = ctx;
    if (klen != 1 + PUB || vlen != MK_METER_BYTES) return c->err = LEDGER_ECORRUPT, 1;
    mk_meter m;
    mk_meter_decode(val, &m);
    if (c->slot < m.from_slot || c->slot >= m.until_slot) return 0;
    if (!grow((void **)&c->m, &c->capm, c->nm, sizeof *c->m)) return c->err = LEDGER_ENOMEM, 1;
    meter_amt *a = &c->m[c->nm++];
    memcpy(a->owner, m.owner, PUB);
    uint8_t rk[1 + 8 + PUB];
    rk[0] = MK_READ;
    tem_put_u64be(rk + 1, c->slot);
    memcpy(rk + 9, key + 1, PUB);
    const uint8_t *v;
    size_t rl;
    int rc = ledger_state_get(c->st, rk, sizeof rk, &v, &rl);
    if (rc == LEDGER_OK) {
        if (rl != 16) return c->err = LEDGER_ECORRUPT, 1;
        a->import_wh = (int64_t)tem_get_u64le(v);
        a->export_wh = (int64_t)tem_get_u64le(v + 8);
        a->estimated = false;
    } else if (rc == LEDGER_ENOTFOUND) {
        a->import_wh = mk_cap_wh(m.import_cap_w, c->b->genesis->market.slot_ms);
        a->export_wh = 0;
        a->estimated = true;
    } else {
        return c->err = rc, 1;
    }
    return 0;
}

static int load_trade(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen) {
    settle_ctx *c = ctx;
    (void)key;
    if (klen != 17 || vlen != MK_TRADE_BYTES) return c->err = LEDGER_ECORRUPT, 1;
    if (!grow((void **)&c->t, &c->capt, c->nt, sizeof *c->t)) return c->err = LEDGER_ENOMEM, 1;
    mk_trade_decode(val, &c->t[c->nt++]);
    return 0;
}

/* Adds deltas to an account (read, change, write, so two roles of one key never race). */
static int acct_add(ledger_state *st, const uint8_t pub[PUB], int64_t money, int64_t money_escrow,
                    int64_t debt) {
    mk_acct a;
    int rc = mk_acct_get(st, pub, &a);
    if (rc) return rc == LEDGER_ENOTFOUND ? LEDGER_ECORRUPT : rc;
    bool ok = tem_add_i64(&a.money, money) && tem_add_i64(&a.money_escrow, money_escrow);
    TEM_ASSERT(ok);
    /* Debt is a record, not money: it saturates instead of refusing a settlement. */
    if (!tem_add_i64(&a.debt, debt)) a.debt = INT64_MAX;
    return mk_acct_put(st, pub, &a);
}

/* Moves up to `amount` of free money; what `from` cannot pay becomes its debt. */
static int pay(ledger_state *st, const uint8_t from[PUB], const uint8_t to[PUB], int64_t amount,
               int64_t *paid, int64_t *unpaid) {
    *paid = *unpaid = 0;
    if (amount <= 0) return LEDGER_OK;
    mk_acct a;
    int rc = mk_acct_get(st, from, &a);
    if (rc) return rc == LEDGER_ENOTFOUND ? LEDGER_ECORRUPT : rc;
    int64_t p = a.money < amount ? a.money : amount;
    if ((rc = acct_add(st, from, -p, 0, amount - p))) return rc;
    if ((rc = acct_add(st, to, p, 0, 0))) return rc;
    *paid = p;
    *unpaid = amount - p;
    return LEDGER_OK;
}

/* floor(x / 1000), clamped to int64. */
static int64_t mu_floor(mu_t x) {
    mu_t q = x / 1000;
    if (x % 1000 != 0 && x < 0) q -= 1;
    if (q > INT64_MAX) return INT64_MAX;
    if (q < -INT64_MAX) return -INT64_MAX;
    return (int64_t)q;
}

static void line_encode(const mk_settle_line *l, uint8_t v[MK_SETTLE_BYTES]) {
    const int64_t f[MK_SETTLE_FIELDS] = {
        l->export_wh,  l->import_wh,      l->sold_wh,        l->bought_wh,         l->delivered_wh,
        l->received_wh, l->shortfall_wh,  l->burnt_wh,       l->lack_wh,           l->surplus_wh,
        l->trade_net_uunit, l->penalty_net_uunit, l->utility_net_uunit, l->unpaid_uunit,
        l->covered_wh, l->cover_wh,       l->withheld_wh,    l->fees_uunit,        l->estimated,
        l->total_uunit};
    for (int i = 0; i < MK_SETTLE_FIELDS; i++) mk_put_i64(v + 8 * i, f[i]);
}

int settle_line_get(ledger_state *st, uint64_t slot, const uint8_t pub[PUB], mk_settle_line *l) {
    uint8_t k[1 + 8 + PUB];
    k[0] = MK_SETTLED;
    tem_put_u64be(k + 1, slot);
    memcpy(k + 9, pub, PUB);
    const uint8_t *v;
    size_t vlen;
    int rc = ledger_state_get(st, k, sizeof k, &v, &vlen);
    if (rc) return rc;
    if (vlen != MK_SETTLE_BYTES) return LEDGER_ECORRUPT;
    int64_t f[MK_SETTLE_FIELDS];
    for (int i = 0; i < MK_SETTLE_FIELDS; i++) f[i] = mk_get_i64(v + 8 * i);
    *l = (mk_settle_line){f[0],  f[1],  f[2],  f[3],  f[4],  f[5],  f[6],  f[7],  f[8],  f[9],
                          f[10], f[11], f[12], f[13], f[14], f[15], f[16], f[17], f[18], f[19]};
    return LEDGER_OK;
}

typedef struct {
    uint8_t (*keys)[1 + 8 + PUB];
    size_t *lens;
    size_t n, cap;
    int err;
} key_list;

static int collect_key(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen) {
    (void)val;
    (void)vlen;
    key_list *l = ctx;
    if (klen > 1 + 8 + PUB) return l->err = LEDGER_ECORRUPT, 1;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        void *nk = tem_realloc(l->keys, sizeof(*l->keys) * cap);
        if (!nk) return l->err = LEDGER_ENOMEM, 1;
        l->keys = nk;
        void *nl = tem_realloc(l->lens, sizeof(*l->lens) * cap);
        if (!nl) return l->err = LEDGER_ENOMEM, 1;
        l->lens = nl;
        l->cap = cap;
    }
    memcpy(l->keys[l->n], key, klen);
    l->lens[l->n++] = klen;
    return 0;
}

static int delete_prefix(ledger_state *st, uint8_t kind, uint64_t slot) {
    uint8_t prefix[9];
    prefix[0] = kind;
    tem_put_u64be(prefix + 1, slot);
    key_list l = {0};
    int rc = ledger_state_iter(st, prefix, sizeof prefix, collect_key, &l);
    if (l.err) rc = l.err;
    for (size_t i = 0; rc == LEDGER_OK && i < l.n; i++) rc = ledger_state_del(st, l.keys[i], l.lens[i]);
    tem_free(l.keys);
    tem_free(l.lens);
    return rc;
}

/* The energy and money of the slot, before anything moves (steps 1-4 of docs/market.md 8). */
static void settle_compute(settle_ctx *c, const mk_period *tar, const uint8_t *dso, bool bound) {
    for (size_t i = 0; i < c->nm; i++) {
        party *p = party_find(c, c->m[i].owner);
        p->involved = true;
        p->line.import_wh += c->m[i].import_wh;
        p->line.export_wh += c->m[i].export_wh;
        p->line.estimated += c->m[i].estimated;
    }
    for (size_t i = 0; i < c->n; i++) c->p[i].export_left = c->p[i].line.export_wh;
    /* 1. Delivery, in trade order, from the seller's metered export of this slot only. */
    for (size_t i = 0; i < c->nt; i++) {
        const mk_trade *t = &c->t[i];
        party *s = party_find(c, t->seller), *bp = party_find(c, t->buyer);
        int64_t q = (int64_t)t->qty_wh, d = q < s->export_left ? q : s->export_left;
        s->export_left -= d;
        c->d[i] = d;
        s->involved = bp->involved = true;
        s->line.sold_wh += q;
        s->line.delivered_wh += d;
        s->line.shortfall_wh += q - d;
        bp->line.bought_wh += q;
        bp->line.received_wh += d;
    }
    /* 2. Cover: what a buyer imported beyond its deliveries is covered by its short trades, in
     * trade order, at the seller's cost; a buyer that did not import the energy gets nothing. */
    for (size_t i = 0; i < c->n; i++) {
        party *p = &c->p[i];
        int64_t need = p->line.import_wh - p->line.received_wh;
        p->need_left = need > 0 ? need : 0;
    }
    mu_t charge_rate = (mu_t)(tar->retail - tar->feed_in);
    for (size_t i = 0; i < c->nt; i++) {
        const mk_trade *t = &c->t[i];
        party *s = party_find(c, t->seller), *bp = party_find(c, t->buyer);
        int64_t q = (int64_t)t->qty_wh, d = c->d[i], miss = q - d;
        int64_t cv = miss < bp->need_left ? miss : bp->need_left;
        bp->need_left -= cv;
        c->c[i] = cv;
        bp->line.covered_wh += cv;
        s->line.cover_wh += cv;
        /* 3. Money of the trade, exact: the buyer pays the price for what it got (delivered or
         * covered), the seller pays retail for the cover. */
        mu_t got = (mu_t)(d + cv) * (mu_t)t->price;
        bp->trade_mu -= got;
        s->trade_mu += got;
        s->penalty_mu -= (mu_t)cv * tar->retail;
        /* Withholding: capacity reserved in a slot where it was scarce and not used. */
        if (bound && miss > 0) {
            s->line.withheld_wh += miss;
            mu_t ch = (mu_t)miss * charge_rate;
            s->penalty_mu -= ch;
            if (dso) party_find(c, dso)->penalty_mu += ch;
        }
    }
    /* 4. The rest with the utility: import not met is bought at retail, energy received but not
     * imported and export not delivered are sold at feed-in. */
    for (size_t i = 0; i < c->n; i++) {
        party *p = &c->p[i];
        mk_settle_line *l = &p->line;
        int64_t met = l->received_wh + l->covered_wh;
        int64_t used = l->import_wh < met ? l->import_wh : met;
        l->burnt_wh = used;
        l->lack_wh = l->import_wh - used;
        l->surplus_wh = met - used + p->export_left;
        p->utility_mu = (mu_t)l->surplus_wh * tar->feed_in - (mu_t)l->lack_wh * tar->retail;
        l->trade_net_uunit = mu_floor(p->trade_mu);
        l->penalty_net_uunit = mu_floor(p->penalty_mu);
        l->utility_net_uunit = mu_floor(p->utility_mu);
    }
}

/* Escrow of the slot's trades goes back to its owners, then the fees go to the current DSO
 * (refunded when the role is vacant). */
static int settle_escrow_and_fees(settle_ctx *c, const uint8_t *dso) {
    int rc;
    for (size_t i = 0; i < c->nt; i++) {
        const mk_trade *t = &c->t[i];
        int64_t b = t->value + t->buyer_fee;
        if ((rc = acct_add(c->st, t->buyer, b, -b, 0))) return rc;
        if ((rc = acct_add(c->st, t->seller, t->collateral, -t->collateral, 0))) return rc;
        if (!dso) continue;
        int64_t paid, unpaid;
        party *bp = party_find(c, t->buyer), *s = party_find(c, t->seller);
        if ((rc = pay(c->st, t->buyer, dso, t->buyer_fee, &paid, &unpaid))) return rc;
        bp->line.fees_uunit += t->buyer_fee;
        bp->line.unpaid_uunit += unpaid;
        if (t->seller_fee <= 0) continue;
        if ((rc = pay(c->st, t->seller, dso, t->seller_fee, &paid, &unpaid))) return rc;
        s->line.fees_uunit += t->seller_fee;
        s->line.unpaid_uunit += unpaid;
    }
    /* Loss credits (a negative seller_fee: the trade's whole credit C) after every charge, so the
     * slot's fees fund them. Only energy that flowed relieved the feeder: the credit paid is
     * floor(C x delivered / quantity), in the DSO's favour (before the fourteenth session the
     * whole C was paid, so two colluding keys without meters earned it every slot for Wh that
     * never moved). The DSO pays the seller ceil(C'/2) and the buyer floor(C'/2), as a charge
     * is split; what it cannot pay from its free money becomes its debt, and each line's fees
     * show what arrived (docs/grid.md, "Loss allocation"). */
    for (size_t i = 0; dso && i < c->nt; i++) {
        const mk_trade *t = &c->t[i];
        if (t->seller_fee >= 0) continue;
        int64_t cr, paid, unpaid;
        /* 0 <= delivered <= quantity and quantity >= 1: within C, never a division by 0. */
        bool ok = tem_mul_div_floor(-t->seller_fee, c->d[i], (int64_t)t->qty_wh, &cr);
        TEM_ASSERT(ok);
        if (cr == 0) continue;
        const int64_t share[2] = {cr - cr / 2, cr / 2};
        const uint8_t *to[2] = {t->seller, t->buyer};
        party *dp = party_find(c, dso);
        for (int k = 0; k < 2; k++) {
            if (memcmp(to[k], dso, PUB) == 0) continue; /* the DSO trading: nothing moves */
            if ((rc = pay(c->st, dso, to[k], share[k], &paid, &unpaid))) return rc;
            party_find(c, to[k])->line.fees_uunit -= paid;
            dp->line.fees_uunit += paid;
            dp->line.unpaid_uunit += unpaid;
        }
    }
    return LEDGER_OK;
}

/* Every participant's rounded net against the counterparty: payers first, so the counterparty
 * holds what it pays out. */
static int settle_pay(settle_ctx *c, const uint8_t *cp) {
    int rc;
    party *cpp = party_find(c, cp);
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < c->n; i++) {
            party *p = &c->p[i];
            if (p == cpp) continue;
            int64_t delta = mu_floor(p->trade_mu + p->penalty_mu + p->utility_mu), paid, unpaid;
            if (pass == 0 && delta < 0) {
                if ((rc = pay(c->st, p->pub, cp, -delta, &paid, &unpaid))) return rc;
                p->line.total_uunit = delta;
                p->line.unpaid_uunit += unpaid;
                cpp->line.total_uunit += paid;
            } else if (pass == 1 && delta > 0) {
                /* What the counterparty cannot pay is its debt; the line shows what arrived. */
                if ((rc = pay(c->st, cp, p->pub, delta, &paid, &unpaid))) return rc;
                p->line.total_uunit = paid;
                cpp->line.total_uunit -= paid;
                cpp->line.unpaid_uunit += unpaid;
            }
        }
    }
    return LEDGER_OK;
}

int settle_slot(ledger_state *st, const ledger_block_ctx *b, uint64_t slot) {
    settle_ctx c = {.slot = slot, .st = st, .b = b};
    mk_period tar = {0};
    int rc = mk_tariff_for_slot(st, b->genesis, slot, &tar);
    /* Without a tariff there is nothing to price imbalances at: they settle at 0. */
    if (rc == LEDGER_ENOTFOUND || rc == LEDGER_EINVAL) rc = LEDGER_OK;
    if (rc) return rc;
    mk_slot srec;
    bool found;
    if ((rc = mk_slot_get(st, slot, &srec, &found))) return rc;
    uint8_t prefix[9];
    prefix[0] = MK_METER;
    rc = ledger_state_iter(st, prefix, 1, load_meter, &c);
    if (c.err) rc = c.err;
    if (rc == LEDGER_OK) {
        prefix[0] = MK_TRADE;
        tem_put_u64be(prefix + 1, slot);
        rc = ledger_state_iter(st, prefix, sizeof prefix, load_trade, &c);
        if (c.err) rc = c.err;
    }
    uint8_t upub[PUB], dpub[PUB];
    const uint8_t *utility = mk_utility(st, upub) ? upub : NULL;
    const uint8_t *dso = mk_dso(st, dpub) ? dpub : NULL;
    /* The counterparty of every net amount: the utility (retailer of last resort), else the
     * DSO; with neither, the lines are written and no money moves. */
    const uint8_t *cp = utility ? utility : dso;
    mk_counters cnt;
    if (rc == LEDGER_OK) rc = mk_counters_get(st, &cnt);
    if (rc == LEDGER_OK && c.nt > 0) {
        c.d = tem_malloc(sizeof *c.d * c.nt);
        c.c = tem_malloc(sizeof *c.c * c.nt);
        if (!c.d || !c.c) rc = LEDGER_ENOMEM;
    }
    for (size_t i = 0; rc == LEDGER_OK && i < c.nm; i++)
        if (!party_push(&c, c.m[i].owner)) rc = LEDGER_ENOMEM;
    for (size_t i = 0; rc == LEDGER_OK && i < c.nt; i++)
        if (!party_push(&c, c.t[i].seller) || !party_push(&c, c.t[i].buyer)) rc = LEDGER_ENOMEM;
    if (rc == LEDGER_OK && utility && !party_push(&c, utility)) rc = LEDGER_ENOMEM;
    if (rc == LEDGER_OK && dso && !party_push(&c, dso)) rc = LEDGER_ENOMEM;
    if (rc == LEDGER_OK) {
        party_dedupe(&c);
        settle_compute(&c, &tar, dso, (srec.flags & MK_SLOT_BOUND) != 0);
        rc = settle_escrow_and_fees(&c, dso);
    }
    if (rc == LEDGER_OK && cp) rc = settle_pay(&c, cp);
    if (rc == LEDGER_OK) {
        /* The slot's metered export existed only inside the slot: counted in and out. */
        int64_t ex = 0;
        for (size_t i = 0; i < c.n; i++) ex += c.p[i].line.export_wh;
        if (!tem_add_i64(&cnt.minted, ex) || !tem_add_i64(&cnt.burnt, ex)) cnt.minted = cnt.burnt = INT64_MAX;
        rc = mk_counters_put(st, &cnt);
    }
    for (size_t i = 0; rc == LEDGER_OK && i < c.n; i++) {
        party *p = &c.p[i];
        if (!p->involved && p->line.total_uunit == 0 && p->penalty_mu == 0 && p->line.unpaid_uunit == 0)
            continue;
        uint8_t k[1 + 8 + PUB], v[MK_SETTLE_BYTES];
        k[0] = MK_SETTLED;
        tem_put_u64be(k + 1, slot);
        memcpy(k + 9, p->pub, PUB);
        line_encode(&p->line, v);
        rc = ledger_state_put(st, k, sizeof k, v, sizeof v);
    }
    if (rc == LEDGER_OK) rc = delete_prefix(st, MK_READ, slot);
    if (rc == LEDGER_OK) rc = delete_prefix(st, MK_TRADE, slot);
    if (rc == LEDGER_OK && found) {
        uint8_t sk[9];
        sk[0] = MK_SLOT;
        tem_put_u64be(sk + 1, slot);
        rc = ledger_state_del(st, sk, sizeof sk);
    }
    if (rc == LEDGER_OK && slot < UINT64_MAX) {
        int g = grid_slot_prune(st, slot + 1);
        if (g == GRID_ENOMEM) rc = LEDGER_ENOMEM;
    }
    tem_free(c.p);
    tem_free(c.t);
    tem_free(c.d);
    tem_free(c.c);
    tem_free(c.m);
    return rc;
}
