/* settle.c: settlement of one delivery slot after its reading deadline (docs/market.md,
 * "Settlement"): trades deliver tokens and money, short sellers compensate their buyers at the
 * retail tariff, imports burn tokens and what they do not cover is bought from the utility at
 * retail, unsold exports are sold to the utility at feed-in; every line lands in an 'x' record. */
#include "contracts/grid.h"
#include "contracts/market_internal.h"

typedef struct {
    uint8_t pub[PUB];
    bool has_reading;
    int64_t export_left;
    mk_settle_line line;
} party;

typedef struct {
    party *p;
    size_t n, cap;
    mk_trade *t;
    size_t nt, capt;
    uint64_t slot;
    int err;
} settle_ctx;

static party *party_push(settle_ctx *c, const uint8_t pub[PUB]) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 16;
        party *np = tem_realloc(c->p, sizeof(*np) * cap);
        if (!np) return NULL;
        c->p = np;
        c->cap = cap;
    }
    party *p = &c->p[c->n++];
    memset(p, 0, sizeof *p);
    memcpy(p->pub, pub, PUB);
    return p;
}

/* By key, and for one key the entry with the reading first (the one dedupe keeps). */
static int party_cmp(const void *a, const void *b) {
    const party *x = a, *y = b;
    int c = memcmp(x->pub, y->pub, PUB);
    return c ? c : (int)y->has_reading - (int)x->has_reading;
}

static int party_key_cmp(const void *key, const void *elem) {
    return memcmp(key, ((const party *)elem)->pub, PUB);
}

static party *party_find(settle_ctx *c, const uint8_t pub[PUB]) {
    party *p = bsearch(pub, c->p, c->n, sizeof *c->p, party_key_cmp);
    TEM_ASSERT(p != NULL);
    return p;
}

static int load_reading(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val,
                        size_t vlen) {
    settle_ctx *c = ctx;
    if (klen != 1 + 8 + PUB || vlen != 16) return c->err = LEDGER_ECORRUPT, 1;
    party *p = party_push(c, key + 9);
    if (!p) return c->err = LEDGER_ENOMEM, 1;
    p->has_reading = true;
    p->line.import_wh = (int64_t)tem_get_u64le(val);
    p->line.export_wh = (int64_t)tem_get_u64le(val + 8);
    p->export_left = p->line.export_wh;
    return 0;
}

static int load_trade(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen) {
    settle_ctx *c = ctx;
    (void)key;
    if (klen != 17 || vlen != MK_TRADE_BYTES) return c->err = LEDGER_ECORRUPT, 1;
    if (c->nt == c->capt) {
        size_t cap = c->capt ? c->capt * 2 : 16;
        mk_trade *nt = tem_realloc(c->t, sizeof(*nt) * cap);
        if (!nt) return c->err = LEDGER_ENOMEM, 1;
        c->t = nt;
        c->capt = cap;
    }
    mk_trade *t = &c->t[c->nt++];
    mk_trade_decode(val, t);
    /* Both sides take part even without a reading; duplicates go at the dedupe below. */
    if (!party_push(c, t->seller) || !party_push(c, t->buyer)) return c->err = LEDGER_ENOMEM, 1;
    return 0;
}

/* Sorts the parties by key and keeps one entry per key (the one holding the reading). */
static void party_dedupe(settle_ctx *c) {
    if (c->n > 1) qsort(c->p, c->n, sizeof *c->p, party_cmp);
    size_t w = 0;
    for (size_t i = 0; i < c->n; i++)
        if (w == 0 || memcmp(c->p[w - 1].pub, c->p[i].pub, PUB) != 0) c->p[w++] = c->p[i];
    c->n = w;
}

/* Adds deltas to an account (read, change, write, so two roles of one key never race). */
static int acct_add(ledger_state *st, const uint8_t pub[PUB], int64_t money, int64_t money_escrow,
                    int64_t tokens, int64_t tokens_escrow, int64_t debt) {
    mk_acct a;
    int rc = mk_acct_get(st, pub, &a);
    if (rc) return rc == LEDGER_ENOTFOUND ? LEDGER_ECORRUPT : rc;
    bool ok = tem_add_i64(&a.money, money) && tem_add_i64(&a.money_escrow, money_escrow) &&
              tem_add_i64(&a.tokens, tokens) && tem_add_i64(&a.tokens_escrow, tokens_escrow);
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
    if ((rc = acct_add(st, from, -p, 0, 0, 0, amount - p))) return rc;
    if ((rc = acct_add(st, to, p, 0, 0, 0, 0))) return rc;
    *paid = p;
    *unpaid = amount - p;
    return LEDGER_OK;
}

static int64_t tokens_of(ledger_state *st, const uint8_t pub[PUB]) {
    mk_acct a;
    return mk_acct_get(st, pub, &a) == LEDGER_OK ? a.tokens : 0;
}

static int settle_trade(ledger_state *st, settle_ctx *c, const mk_trade *t, const mk_period *tar,
                        const uint8_t *dso) {
    party *s = party_find(c, t->seller), *bp = party_find(c, t->buyer);
    int rc;
    int64_t q = (int64_t)t->qty_wh, fees = t->buyer_fee + t->seller_fee;
    /* Money: the buyer's escrow pays the value and its fees; the seller gets the value less its
     * loss share; the DSO gets both fee shares. */
    if ((rc = acct_add(st, t->buyer, 0, -(t->value + t->buyer_fee), 0, 0, 0))) return rc;
    if ((rc = acct_add(st, t->seller, t->value - t->seller_fee, 0, t->collateral, -t->collateral, 0)))
        return rc;
    if (fees > 0) {
        if (!dso) return LEDGER_ECORRUPT;
        if ((rc = acct_add(st, dso, fees, 0, 0, 0, 0))) return rc;
    }
    /* Energy: the seller delivers from this slot's metered export, as far as it still holds
     * the tokens the export minted. */
    int64_t d = q < s->export_left ? q : s->export_left, have = tokens_of(st, t->seller);
    if (d > have) d = have;
    if (d > 0) {
        if ((rc = acct_add(st, t->seller, 0, 0, -d, 0, 0))) return rc;
        if ((rc = acct_add(st, t->buyer, 0, 0, d, 0, 0))) return rc;
    }
    s->export_left -= d;
    /* Penalty: a short seller pays its buyer the retail price of the missing energy, which the
     * buyer then buys from the utility as part of its uncovered import. */
    int64_t sh = q - d, penalty = 0, paid = 0, unpaid = 0;
    if (sh > 0) {
        bool ok = tem_mul_div_ceil(sh, tar->retail, 1000, &penalty);
        TEM_ASSERT(ok);
        if ((rc = pay(st, t->seller, t->buyer, penalty, &paid, &unpaid))) return rc;
    }
    s->line.sold_wh += q;
    s->line.delivered_wh += d;
    s->line.shortfall_wh += sh;
    s->line.trade_net_uunit += t->value - t->seller_fee;
    s->line.penalty_net_uunit -= paid;
    s->line.unpaid_uunit += unpaid;
    bp->line.bought_wh += q;
    bp->line.received_wh += d;
    bp->line.trade_net_uunit -= t->value + t->buyer_fee;
    bp->line.penalty_net_uunit += paid;
    return LEDGER_OK;
}

static int settle_meter(ledger_state *st, party *p, const mk_period *tar, const uint8_t *utility,
                        mk_counters *cnt) {
    int rc;
    /* Imports burn the tokens the participant holds; the rest came from the utility. */
    int64_t have = tokens_of(st, p->pub);
    int64_t burn = p->line.import_wh < have ? p->line.import_wh : have;
    int64_t lack = p->line.import_wh - burn;
    have -= burn;
    /* Exports no trade took are sold to the utility at feed-in; their tokens leave with them. */
    int64_t surplus = p->export_left < have ? p->export_left : have;
    if (surplus < 0) surplus = 0;
    if ((rc = acct_add(st, p->pub, 0, 0, -(burn + surplus), 0, 0))) return rc;
    bool ok = tem_sub_i64(&cnt->tokens, burn + surplus) && tem_add_i64(&cnt->burnt, burn + surplus);
    TEM_ASSERT(ok);
    p->line.burnt_wh = burn + surplus;
    p->line.lack_wh = lack;
    p->line.surplus_wh = surplus;
    if (!utility || memcmp(utility, p->pub, PUB) == 0) return LEDGER_OK;
    int64_t cost = 0, income = 0, paid, unpaid;
    ok = tem_mul_div_ceil(lack, tar->retail, 1000, &cost) &&
         tem_mul_div_floor(surplus, tar->feed_in, 1000, &income);
    TEM_ASSERT(ok);
    if ((rc = pay(st, p->pub, utility, cost, &paid, &unpaid))) return rc;
    p->line.utility_net_uunit -= paid;
    p->line.unpaid_uunit += unpaid;
    /* The utility's own shortfall is its debt; the participant's line shows what it got. */
    if ((rc = pay(st, utility, p->pub, income, &paid, &unpaid))) return rc;
    p->line.utility_net_uunit += paid;
    return LEDGER_OK;
}

static void line_encode(const mk_settle_line *l, uint8_t v[MK_SETTLE_BYTES]) {
    const int64_t f[14] = {l->export_wh, l->import_wh, l->sold_wh, l->bought_wh,
                           l->delivered_wh, l->received_wh, l->shortfall_wh, l->burnt_wh,
                           l->lack_wh, l->surplus_wh, l->trade_net_uunit, l->penalty_net_uunit,
                           l->utility_net_uunit, l->unpaid_uunit};
    for (int i = 0; i < 14; i++) mk_put_i64(v + 8 * i, f[i]);
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
    int64_t f[14];
    for (int i = 0; i < 14; i++) f[i] = mk_get_i64(v + 8 * i);
    *l = (mk_settle_line){f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10],
                          f[11], f[12], f[13]};
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

int settle_slot(ledger_state *st, const ledger_block_ctx *b, uint64_t slot) {
    settle_ctx c = {.slot = slot};
    mk_period tar = {0};
    int rc = mk_tariff_for_slot(st, b->genesis, slot, &tar);
    /* Without a tariff there is nothing to price shortfalls and imbalances at: they settle at 0. */
    if (rc == LEDGER_ENOTFOUND || rc == LEDGER_EINVAL) rc = LEDGER_OK;
    if (rc) return rc;
    uint8_t prefix[9];
    tem_put_u64be(prefix + 1, slot);
    prefix[0] = MK_READ;
    rc = ledger_state_iter(st, prefix, sizeof prefix, load_reading, &c);
    if (c.err) rc = c.err;
    if (rc == LEDGER_OK) {
        prefix[0] = MK_TRADE;
        rc = ledger_state_iter(st, prefix, sizeof prefix, load_trade, &c);
        if (c.err) rc = c.err;
    }
    uint8_t upub[PUB], dpub[PUB];
    const uint8_t *utility = mk_utility(st, upub) ? upub : NULL;
    const uint8_t *dso = mk_dso(st, dpub) ? dpub : NULL;
    mk_counters cnt;
    if (rc == LEDGER_OK) rc = mk_counters_get(st, &cnt);
    if (rc == LEDGER_OK) party_dedupe(&c);
    /* Trades in the order they happened. */
    for (size_t i = 0; rc == LEDGER_OK && i < c.nt; i++) rc = settle_trade(st, &c, &c.t[i], &tar, dso);
    /* Meters in key order, so the result does not depend on who reported first. */
    for (size_t i = 0; rc == LEDGER_OK && i < c.n; i++)
        if (c.p[i].has_reading) rc = settle_meter(st, &c.p[i], &tar, utility, &cnt);
    if (rc == LEDGER_OK) rc = mk_counters_put(st, &cnt);
    for (size_t i = 0; rc == LEDGER_OK && i < c.n; i++) {
        uint8_t k[1 + 8 + PUB], v[MK_SETTLE_BYTES];
        k[0] = MK_SETTLED;
        tem_put_u64be(k + 1, slot);
        memcpy(k + 9, c.p[i].pub, PUB);
        line_encode(&c.p[i].line, v);
        rc = ledger_state_put(st, k, sizeof k, v, sizeof v);
    }
    if (rc == LEDGER_OK) rc = delete_prefix(st, MK_READ, slot);
    if (rc == LEDGER_OK) rc = delete_prefix(st, MK_TRADE, slot);
    if (rc == LEDGER_OK) {
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
    return rc;
}
