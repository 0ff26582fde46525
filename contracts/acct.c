/* acct.c: accounts and energy tokens: the account and counter records, the genesis
 * initialisation, registration, deposits, transfers, meter readings (token minting), tariffs and
 * slot timing, plus the reason-code table. docs/market.md describes the rules. */
#include "contracts/grid.h"
#include "contracts/market_internal.h"

/* ------------------------------------------------------------------ reason codes */
const char *contracts_strerror(int code) {
    switch (code) {
    case 0: return "ok";
#define CONTRACTS_X(name, val, msg)                                                                \
    case val: return msg;
        CONTRACTS_ERRNO_MAP(CONTRACTS_X)
#undef CONTRACTS_X
    default: break;
    }
    if (code <= -380 && code >= -399) return grid_strerror(code);
    return ledger_strerror(code);
}

const char *contracts_errname(int code) {
    switch (code) {
#define CONTRACTS_X(name, val, msg)                                                                \
    case val: return #name;
        CONTRACTS_ERRNO_MAP(CONTRACTS_X)
#undef CONTRACTS_X
    default: break;
    }
    if (code <= -380 && code >= -399) return grid_errname(code);
    return NULL;
}

/* ------------------------------------------------------------------ accounts */
void mk_acct_key(uint8_t key[1 + PUB], const uint8_t pub[PUB]) {
    key[0] = MK_ACCT;
    memcpy(key + 1, pub, PUB);
}

static void acct_decode(const uint8_t *v, mk_acct *a) {
    a->bus = tem_get_u32le(v);
    a->role = (int32_t)v[4];
    a->money = mk_get_i64(v + 8);
    a->money_escrow = mk_get_i64(v + 16);
    a->tokens = mk_get_i64(v + 24);
    a->tokens_escrow = mk_get_i64(v + 32);
    a->debt = mk_get_i64(v + 40);
}

int mk_acct_get(ledger_state *st, const uint8_t pub[PUB], mk_acct *a) {
    uint8_t key[1 + PUB];
    mk_acct_key(key, pub);
    const uint8_t *v;
    size_t vlen;
    int rc = ledger_state_get(st, key, sizeof key, &v, &vlen);
    if (rc) return rc;
    if (vlen != MK_ACCT_BYTES) return LEDGER_ECORRUPT;
    acct_decode(v, a);
    return LEDGER_OK;
}

int mk_acct_put(ledger_state *st, const uint8_t pub[PUB], const mk_acct *a) {
    /* Balances never go negative: every debit is checked before it is made. */
    TEM_ASSERT(a->money >= 0 && a->money_escrow >= 0);
    TEM_ASSERT(a->tokens >= 0 && a->tokens_escrow >= 0);
    uint8_t key[1 + PUB], v[MK_ACCT_BYTES] = {0};
    mk_acct_key(key, pub);
    tem_put_u32le(v, a->bus);
    v[4] = (uint8_t)a->role;
    mk_put_i64(v + 8, a->money);
    mk_put_i64(v + 16, a->money_escrow);
    mk_put_i64(v + 24, a->tokens);
    mk_put_i64(v + 32, a->tokens_escrow);
    mk_put_i64(v + 40, a->debt);
    return ledger_state_put(st, key, sizeof key, v, sizeof v);
}

int contracts_account_get(ledger_state *st, const uint8_t pub[PUB], contracts_account *out) {
    mk_acct a;
    int rc = mk_acct_get(st, pub, &a);
    if (rc) return rc;
    memcpy(out->pubkey, pub, PUB);
    out->bus = a.bus;
    out->role = a.role;
    out->money_uunit = a.money;
    out->money_escrow_uunit = a.money_escrow;
    out->tokens_wh = a.tokens;
    out->tokens_escrow_wh = a.tokens_escrow;
    out->debt_uunit = a.debt;
    return LEDGER_OK;
}

typedef struct {
    int (*fn)(void *ctx, const contracts_account *a);
    void *ctx;
} acct_iter_ctx;

static int acct_iter_one(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val,
                         size_t vlen) {
    acct_iter_ctx *c = ctx;
    if (klen != 1 + PUB || vlen != MK_ACCT_BYTES) return LEDGER_ECORRUPT;
    mk_acct a;
    acct_decode(val, &a);
    contracts_account o = {.bus = a.bus, .role = a.role, .money_uunit = a.money,
                           .money_escrow_uunit = a.money_escrow, .tokens_wh = a.tokens,
                           .tokens_escrow_wh = a.tokens_escrow, .debt_uunit = a.debt};
    memcpy(o.pubkey, key + 1, PUB);
    return c->fn(c->ctx, &o);
}

int contracts_account_iter(ledger_state *st, int (*fn)(void *ctx, const contracts_account *a),
                           void *ctx) {
    acct_iter_ctx c = {fn, ctx};
    uint8_t prefix = MK_ACCT;
    return ledger_state_iter(st, &prefix, 1, acct_iter_one, &c);
}

/* ------------------------------------------------------------------ counters and roles */
static const uint8_t counters_key[2] = {MK_PARAM, 'c'};

int mk_counters_get(ledger_state *st, mk_counters *c) {
    const uint8_t *v;
    size_t vlen;
    int rc = ledger_state_get(st, counters_key, 2, &v, &vlen);
    if (rc == LEDGER_ENOTFOUND || (rc == 0 && vlen != MK_COUNTERS_BYTES)) return LEDGER_ECORRUPT;
    if (rc) return rc;
    c->money = mk_get_i64(v);
    c->tokens = mk_get_i64(v + 8);
    c->minted = mk_get_i64(v + 16);
    c->burnt = mk_get_i64(v + 24);
    c->deposited = mk_get_i64(v + 32);
    c->next_seq = tem_get_u64le(v + 40);
    return LEDGER_OK;
}

int mk_counters_put(ledger_state *st, const mk_counters *c) {
    uint8_t v[MK_COUNTERS_BYTES];
    mk_put_i64(v, c->money);
    mk_put_i64(v + 8, c->tokens);
    mk_put_i64(v + 16, c->minted);
    mk_put_i64(v + 24, c->burnt);
    mk_put_i64(v + 32, c->deposited);
    tem_put_u64le(v + 40, c->next_seq);
    return ledger_state_put(st, counters_key, 2, v, sizeof v);
}

int contracts_supply_get(ledger_state *st, contracts_supply *out) {
    mk_counters c;
    int rc = mk_counters_get(st, &c);
    if (rc) return rc;
    *out = (contracts_supply){.money_uunit = c.money, .tokens_wh = c.tokens,
                              .next_order_seq = c.next_seq, .minted_wh = c.minted,
                              .burnt_wh = c.burnt, .deposited_uunit = c.deposited};
    return LEDGER_OK;
}

static bool role_get(ledger_state *st, char which, uint8_t pub[PUB]) {
    uint8_t key[2] = {MK_PARAM, (uint8_t)which};
    const uint8_t *v;
    size_t vlen;
    if (ledger_state_get(st, key, 2, &v, &vlen) != LEDGER_OK || vlen != PUB) return false;
    memcpy(pub, v, PUB);
    return true;
}
bool mk_utility(ledger_state *st, uint8_t pub[PUB]) { return role_get(st, 'u', pub); }
bool mk_dso(ledger_state *st, uint8_t pub[PUB]) { return role_get(st, 'd', pub); }

int mk_role_put(ledger_state *st, char which, const uint8_t pub[PUB]) {
    uint8_t key[2] = {MK_PARAM, (uint8_t)which};
    return ledger_state_put(st, key, 2, pub, PUB);
}

bool mk_pubkey_ok(const uint8_t *p, size_t len) {
    return len == PUB && (p[0] == 0x02 || p[0] == 0x03);
}

/* ------------------------------------------------------------------ tariffs and slot times */
bool mk_slot_times(const ledger_genesis *g, uint64_t slot, int64_t *start_ms, int64_t *gate_ms,
                   int64_t *end_ms, int64_t *deadline_ms) {
    const ledger_market_params *m = &g->market;
    if (slot > (uint64_t)INT64_MAX || g->genesis_time_ms > (uint64_t)INT64_MAX) return false;
    int64_t start = (int64_t)slot;
    if (!tem_mul_i64(&start, m->slot_ms) || !tem_add_i64(&start, (int64_t)g->genesis_time_ms))
        return false;
    int64_t gate = start, end = start, dl;
    if (!tem_sub_i64(&gate, m->gate_closure_ms) || !tem_add_i64(&end, m->slot_ms)) return false;
    dl = end;
    if (!tem_add_i64(&dl, m->settlement_deadline_ms)) return false;
    if (start_ms) *start_ms = start;
    if (gate_ms) *gate_ms = gate;
    if (end_ms) *end_ms = end;
    if (deadline_ms) *deadline_ms = dl;
    return true;
}

int mk_tariff_check(const mk_tariff *t) {
    if (t->n == 0 || t->n > LEDGER_TARIFF_PERIODS_MAX || t->p[0].start_minute != 0) return -1;
    for (uint32_t i = 0; i < t->n; i++) {
        const mk_period *p = &t->p[i];
        if (p->start_minute >= 1440) return -1;
        if (i > 0 && p->start_minute <= t->p[i - 1].start_minute) return -1;
        if (p->feed_in < 0 || p->feed_in > p->retail || p->retail > CONTRACTS_PRICE_MAX) return -1;
    }
    return 0;
}

/* All tariff sets live in one record ('p' 't'), ascending by from_slot, so the lookup every
 * order makes is a single get: u32 nsets, then per set u64 from_slot, u32 n and n periods of
 * (u32 start_minute, i64 retail, i64 feed_in). */
static const uint8_t tariff_key[2] = {MK_PARAM, 't'};
#define TARIFF_SET_BYTES(n) (12 + 20 * (size_t)(n))

static int tariff_load(ledger_state *st, uint8_t *buf, size_t cap, size_t *len) {
    const uint8_t *v;
    size_t vlen;
    int rc = ledger_state_get(st, tariff_key, sizeof tariff_key, &v, &vlen);
    if (rc == LEDGER_ENOTFOUND) {
        tem_put_u32le(buf, 0);
        *len = 4;
        return LEDGER_OK;
    }
    if (rc) return rc;
    if (vlen < 4 || vlen > cap) return LEDGER_ECORRUPT;
    memcpy(buf, v, vlen);
    *len = vlen;
    /* Walk it once so readers below can trust the lengths. */
    uint32_t nsets = tem_get_u32le(buf);
    size_t off = 4;
    for (uint32_t i = 0; i < nsets; i++) {
        if (off + 12 > vlen) return LEDGER_ECORRUPT;
        uint32_t n = tem_get_u32le(buf + off + 8);
        if (n == 0 || n > LEDGER_TARIFF_PERIODS_MAX || off + TARIFF_SET_BYTES(n) > vlen) return LEDGER_ECORRUPT;
        off += TARIFF_SET_BYTES(n);
    }
    return off == vlen ? LEDGER_OK : LEDGER_ECORRUPT;
}

#define TARIFF_BLOB_MAX (4 + MK_TARIFF_SETS_MAX * TARIFF_SET_BYTES(LEDGER_TARIFF_PERIODS_MAX))

int mk_tariff_put(ledger_state *st, uint64_t from_slot, uint64_t keep_from_slot, const mk_tariff *t) {
    TEM_ASSERT(mk_tariff_check(t) == 0);
    static_assert(TARIFF_BLOB_MAX < 80000, "tariff record stays small");
    uint8_t *old = tem_malloc(TARIFF_BLOB_MAX), *nw = tem_malloc(TARIFF_BLOB_MAX);
    size_t olen, nlen = 4;
    int rc = LEDGER_ENOMEM;
    if (!old || !nw) goto out;
    if ((rc = tariff_load(st, old, TARIFF_BLOB_MAX, &olen))) goto out;
    uint32_t nsets = tem_get_u32le(old), kept = 0;
    size_t off = 4;
    for (uint32_t i = 0; i < nsets; i++) {
        uint64_t f = tem_get_u64le(old + off);
        size_t sz = TARIFF_SET_BYTES(tem_get_u32le(old + off + 8));
        /* A set is dead when the next one already covers every slot still traded or settled;
         * sets from the new from_slot on are replaced by the new one. */
        size_t next = off + sz;
        bool superseded = f >= from_slot;
        bool dead = (i + 1 < nsets && tem_get_u64le(old + next) <= keep_from_slot) ||
                    (i + 1 == nsets && from_slot <= keep_from_slot && f < from_slot);
        if (!superseded && !dead) {
            memcpy(nw + nlen, old + off, sz);
            nlen += sz;
            kept++;
        }
        off = next;
    }
    if (kept + 1 > MK_TARIFF_SETS_MAX) {
        rc = CONTRACTS_ETARIFF;
        goto out;
    }
    tem_put_u64le(nw + nlen, from_slot);
    tem_put_u32le(nw + nlen + 8, t->n);
    for (uint32_t i = 0; i < t->n; i++) {
        uint8_t *p = nw + nlen + 12 + 20 * i;
        tem_put_u32le(p, t->p[i].start_minute);
        mk_put_i64(p + 4, t->p[i].retail);
        mk_put_i64(p + 12, t->p[i].feed_in);
    }
    nlen += TARIFF_SET_BYTES(t->n);
    tem_put_u32le(nw, kept + 1);
    rc = ledger_state_put(st, tariff_key, sizeof tariff_key, nw, nlen);
out:
    tem_free(old);
    tem_free(nw);
    return rc;
}

int mk_tariff_for_slot(ledger_state *st, const ledger_genesis *g, uint64_t slot, mk_period *out) {
    int64_t start;
    if (!mk_slot_times(g, slot, &start, NULL, NULL, NULL) || start < 0) return LEDGER_EINVAL;
    const uint8_t *v;
    size_t vlen;
    int rc = ledger_state_get(st, tariff_key, sizeof tariff_key, &v, &vlen);
    if (rc) return rc;
    if (vlen < 4) return LEDGER_ECORRUPT;
    uint32_t nsets = tem_get_u32le(v);
    size_t off = 4, pick = 0;
    bool found = false;
    for (uint32_t i = 0; i < nsets; i++) {
        if (off + 12 > vlen) return LEDGER_ECORRUPT;
        uint32_t n = tem_get_u32le(v + off + 8);
        if (n == 0 || n > LEDGER_TARIFF_PERIODS_MAX || off + TARIFF_SET_BYTES(n) > vlen) return LEDGER_ECORRUPT;
        if (tem_get_u64le(v + off) > slot) break; /* ascending: nothing later applies */
        pick = off;
        found = true;
        off += TARIFF_SET_BYTES(n);
    }
    if (!found) return LEDGER_ENOTFOUND;
    uint32_t n = tem_get_u32le(v + pick + 8);
    /* Time of use by the slot's start minute of the (UTC) day. */
    uint32_t minute = (uint32_t)((start / 60000) % 1440), k = 0;
    for (uint32_t i = 0; i < n; i++)
        if (tem_get_u32le(v + pick + 12 + 20 * i) <= minute) k = i;
    const uint8_t *p = v + pick + 12 + 20 * k;
    out->start_minute = tem_get_u32le(p);
    out->retail = mk_get_i64(p + 4);
    out->feed_in = mk_get_i64(p + 12);
    return LEDGER_OK;
}

/* ------------------------------------------------------------------ genesis */
int contracts_genesis_init(void *ctx, ledger_state *st, const ledger_genesis *g) {
    (void)ctx;
    const ledger_market_params *m = &g->market;
    if (m->slot_ms <= 0 || m->gate_closure_ms < 0 || m->settlement_deadline_ms < 0 ||
        (m->mechanism != LEDGER_MECH_CDA && m->mechanism != LEDGER_MECH_CALL) ||
        m->seller_collateral_ppm < 0 || m->seller_collateral_ppm > 10 * 1000000ll ||
        m->network_fee_uunit_per_kwh_per_ohm < 0 || m->loss_price_uunit_per_kwh < 0 ||
        m->loss_price_uunit_per_kwh > CONTRACTS_PRICE_MAX || m->book_orders_max < 0)
        return LEDGER_EGENESIS;
    mk_counters c = {0};
    bool have_u = false, have_d = false;
    for (uint32_t i = 0; i < g->n_participants; i++) {
        const ledger_participant *p = &g->participants[i];
        if (!mk_pubkey_ok(p->pubkey, PUB) || p->role < TEM__V1__ROLE__PROSUMER ||
            p->role > TEM__V1__ROLE__AGGREGATOR || p->money_uunit < 0 || p->tokens_wh < 0)
            return LEDGER_EGENESIS;
        mk_acct a;
        if (mk_acct_get(st, p->pubkey, &a) == LEDGER_OK) return LEDGER_EGENESIS; /* duplicate */
        if (!tem_add_i64(&c.money, p->money_uunit) || !tem_add_i64(&c.tokens, p->tokens_wh))
            return LEDGER_EGENESIS;
        a = (mk_acct){.bus = p->bus, .role = p->role, .money = p->money_uunit,
                      .tokens = p->tokens_wh};
        int rc = mk_acct_put(st, p->pubkey, &a);
        if (rc) return rc;
        /* The first utility and the first DSO of the list are the market's counterparties. */
        if (p->role == TEM__V1__ROLE__UTILITY && !have_u) {
            if ((rc = mk_role_put(st, 'u', p->pubkey))) return rc;
            have_u = true;
        }
        if (p->role == TEM__V1__ROLE__DSO && !have_d) {
            if ((rc = mk_role_put(st, 'd', p->pubkey))) return rc;
            have_d = true;
        }
    }
    c.minted = 0;
    int rc = mk_counters_put(st, &c);
    if (rc) return rc;
    if (g->n_tariffs > 0) {
        mk_tariff t = {.n = g->n_tariffs};
        if (t.n > LEDGER_TARIFF_PERIODS_MAX) return LEDGER_EGENESIS;
        for (uint32_t i = 0; i < t.n; i++)
            t.p[i] = (mk_period){g->tariffs[i].start_minute, g->tariffs[i].retail_uunit_per_kwh,
                                 g->tariffs[i].feed_in_uunit_per_kwh};
        if (mk_tariff_check(&t)) return LEDGER_EGENESIS;
        if ((rc = mk_tariff_put(st, 0, 0, &t))) return rc;
    }
    return LEDGER_OK;
}

/* ------------------------------------------------------------------ tx handlers */
static bool is_admin(const ledger_block_ctx *b, const ledger_tx *tx) {
    return ledger_genesis_is_admin(b->genesis, tx->body->signer.data);
}

int mk_exec_register(ledger_state *st, const ledger_block_ctx *b, const ledger_tx *tx,
                     Tem__V1__Receipt *rc) {
    const Tem__V1__RegisterParticipant *r = tx->body->register_;
    if (!is_admin(b, tx)) return mk_refuse(rc, b, CONTRACTS_ENOTADMIN);
    if (!mk_pubkey_ok(r->pubkey.data, r->pubkey.len)) return mk_refuse(rc, b, CONTRACTS_EPUBKEY);
    if (r->role < TEM__V1__ROLE__PROSUMER || r->role > TEM__V1__ROLE__AGGREGATOR)
        return mk_refuse(rc, b, CONTRACTS_EBADROLE);
    int g = grid_bus_check(st, r->bus);
    if (g != GRID_OK) return mk_refuse(rc, b, g);
    mk_acct a = {0};
    int e = mk_acct_get(st, r->pubkey.data, &a);
    if (e != LEDGER_OK && e != LEDGER_ENOTFOUND) return e;
    /* Re-registration moves the participant (bus, role) and keeps its balances. */
    a.bus = r->bus;
    a.role = (int32_t)r->role;
    if ((e = mk_acct_put(st, r->pubkey.data, &a))) return e;
    uint8_t tmp[PUB];
    if (r->role == TEM__V1__ROLE__UTILITY && !mk_utility(st, tmp) &&
        (e = mk_role_put(st, 'u', r->pubkey.data)))
        return e;
    if (r->role == TEM__V1__ROLE__DSO && !mk_dso(st, tmp) && (e = mk_role_put(st, 'd', r->pubkey.data)))
        return e;
    return LEDGER_OK;
}

static int amount_i64(uint64_t amount, int64_t *out) {
    if (amount == 0) return CONTRACTS_EAMOUNT;
    if (amount > (uint64_t)INT64_MAX) return CONTRACTS_EOVERFLOW;
    *out = (int64_t)amount;
    return 0;
}

int contracts_signer_check(ledger_state *st, const ledger_genesis *g, const ledger_tx *tx) {
    const uint8_t *signer = tx->body->signer.data;
    int kind = tx->body->kind_case;
    mk_acct a;
    int e = mk_acct_get(st, signer, &a);
    if (e != LEDGER_OK && e != LEDGER_ENOTFOUND) return e;
    if (ledger_tx_kind_is_admin(kind)) {
        if (ledger_genesis_is_admin(g, signer)) return CONTRACTS_OK;
        /* The utility receives fiat off-chain, so it may credit participants itself
         * (docs/market.md, "Participants and roles"). */
        if (kind == TEM__V1__TX_BODY__KIND_DEPOSIT && e == LEDGER_OK && a.role == TEM__V1__ROLE__UTILITY)
            return CONTRACTS_OK;
        return CONTRACTS_ENOTADMIN;
    }
    if (e == LEDGER_ENOTFOUND)
        return kind == TEM__V1__TX_BODY__KIND_READING ? CONTRACTS_EMETER : CONTRACTS_ENOTREGISTERED;
    return CONTRACTS_OK;
}

int mk_exec_deposit(ledger_state *st, const ledger_block_ctx *b, const ledger_tx *tx,
                    Tem__V1__Receipt *rc) {
    const Tem__V1__Deposit *d = tx->body->deposit;
    mk_acct to;
    int e = contracts_signer_check(st, b->genesis, tx);
    if (e == CONTRACTS_ENOTADMIN) return mk_refuse(rc, b, e);
    if (e) return e;
    if (!mk_pubkey_ok(d->to.data, d->to.len)) return mk_refuse(rc, b, CONTRACTS_EPUBKEY);
    e = mk_acct_get(st, d->to.data, &to);
    if (e == LEDGER_ENOTFOUND) return mk_refuse(rc, b, CONTRACTS_ENORECIPIENT);
    if (e) return e;
    int64_t amount;
    if ((e = amount_i64(d->amount, &amount))) return mk_refuse(rc, b, e);
    mk_counters c;
    if ((e = mk_counters_get(st, &c))) return e;
    /* Every balance is part of the supply, so checking the supply bounds every balance. */
    if (!tem_add_i64(&c.money, amount) || !tem_add_i64(&c.deposited, amount))
        return mk_refuse(rc, b, CONTRACTS_EOVERFLOW);
    bool ok = tem_add_i64(&to.money, amount);
    TEM_ASSERT(ok);
    if ((e = mk_acct_put(st, d->to.data, &to)) || (e = mk_counters_put(st, &c))) return e;
    return LEDGER_OK;
}

int mk_exec_transfer(ledger_state *st, const ledger_block_ctx *b, const ledger_tx *tx,
                     Tem__V1__Receipt *rc) {
    const Tem__V1__Transfer *t = tx->body->transfer;
    const uint8_t *signer = tx->body->signer.data;
    mk_acct s, to;
    int e = mk_acct_get(st, signer, &s);
    if (e == LEDGER_ENOTFOUND) return mk_refuse(rc, b, CONTRACTS_ENOTREGISTERED);
    if (e) return e;
    if (!mk_pubkey_ok(t->to.data, t->to.len)) return mk_refuse(rc, b, CONTRACTS_EPUBKEY);
    if (memcmp(t->to.data, signer, PUB) == 0) return mk_refuse(rc, b, CONTRACTS_ESELF);
    e = mk_acct_get(st, t->to.data, &to);
    if (e == LEDGER_ENOTFOUND) return mk_refuse(rc, b, CONTRACTS_ENORECIPIENT);
    if (e) return e;
    int64_t amount;
    if ((e = amount_i64(t->amount, &amount))) return mk_refuse(rc, b, e);
    if (s.money < amount) return mk_refuse(rc, b, CONTRACTS_EFUNDS);
    s.money -= amount;
    bool ok = tem_add_i64(&to.money, amount);
    TEM_ASSERT(ok);
    if ((e = mk_acct_put(st, signer, &s)) || (e = mk_acct_put(st, t->to.data, &to))) return e;
    return LEDGER_OK;
}

int mk_exec_reading(ledger_state *st, const ledger_block_ctx *b, const ledger_tx *tx,
                    Tem__V1__Receipt *rc) {
    const Tem__V1__MeterReading *r = tx->body->reading;
    const uint8_t *signer = tx->body->signer.data;
    mk_acct a;
    int e = mk_acct_get(st, signer, &a);
    if (e == LEDGER_ENOTFOUND) return mk_refuse(rc, b, CONTRACTS_EMETER);
    if (e) return e;
    if (a.role != TEM__V1__ROLE__PROSUMER && a.role != TEM__V1__ROLE__CONSUMER)
        return mk_refuse(rc, b, CONTRACTS_EROLE);
    int64_t end, deadline;
    if (!mk_slot_times(b->genesis, r->slot, NULL, NULL, &end, &deadline))
        return mk_refuse(rc, b, CONTRACTS_ESLOT);
    if ((int64_t)b->time_ms < end) return mk_refuse(rc, b, CONTRACTS_EEARLY);
    if ((int64_t)b->time_ms > deadline) return mk_refuse(rc, b, CONTRACTS_ELATE);
    if (r->import_wh > (uint64_t)CONTRACTS_QTY_MAX_WH || r->export_wh > (uint64_t)CONTRACTS_QTY_MAX_WH)
        return mk_refuse(rc, b, CONTRACTS_EOVERFLOW);
    if (a.role == TEM__V1__ROLE__CONSUMER && r->export_wh > 0)
        return mk_refuse(rc, b, CONTRACTS_EEXPORT);
    uint8_t key[1 + 8 + PUB];
    key[0] = MK_READ;
    tem_put_u64be(key + 1, r->slot);
    memcpy(key + 9, signer, PUB);
    const uint8_t *v;
    size_t vlen;
    e = ledger_state_get(st, key, sizeof key, &v, &vlen);
    if (e == LEDGER_OK) return mk_refuse(rc, b, CONTRACTS_EDUPREADING);
    if (e != LEDGER_ENOTFOUND) return e;
    mk_counters c;
    if ((e = mk_counters_get(st, &c))) return e;
    int64_t ex = (int64_t)r->export_wh;
    if (!tem_add_i64(&c.tokens, ex) || !tem_add_i64(&c.minted, ex))
        return mk_refuse(rc, b, CONTRACTS_EOVERFLOW);
    bool ok = tem_add_i64(&a.tokens, ex);
    TEM_ASSERT(ok);
    uint8_t val[16];
    tem_put_u64le(val, r->import_wh);
    tem_put_u64le(val + 8, r->export_wh);
    if ((e = ledger_state_put(st, key, sizeof key, val, sizeof val))) return e;
    if ((e = mk_acct_put(st, signer, &a)) || (e = mk_counters_put(st, &c))) return e;
    /* The slot now has something to settle. */
    mk_slot s;
    bool found;
    if ((e = mk_slot_get(st, r->slot, &s, &found))) return e;
    if (!found && (e = mk_slot_put(st, r->slot, &(mk_slot){0}))) return e;
    /* Imports are burnt at settlement, once the tokens bought for the slot have arrived. */
    rc->minted_wh = ex;
    return LEDGER_OK;
}

int mk_exec_set_tariff(ledger_state *st, const ledger_block_ctx *b, const ledger_tx *tx,
                       Tem__V1__Receipt *rc) {
    const Tem__V1__SetTariff *s = tx->body->set_tariff;
    if (!is_admin(b, tx)) return mk_refuse(rc, b, CONTRACTS_ENOTADMIN);
    if (s->n_periods == 0 || s->n_periods > LEDGER_TARIFF_PERIODS_MAX)
        return mk_refuse(rc, b, CONTRACTS_ETARIFF);
    mk_tariff t = {.n = (uint32_t)s->n_periods};
    for (size_t i = 0; i < s->n_periods; i++) {
        const Tem__V1__TariffPeriod *p = s->periods[i];
        if (p->retail_uunit_per_kwh > (uint64_t)CONTRACTS_PRICE_MAX ||
            p->feed_in_uunit_per_kwh > (uint64_t)CONTRACTS_PRICE_MAX)
            return mk_refuse(rc, b, CONTRACTS_ETARIFF);
        t.p[i] = (mk_period){p->start_minute, (int64_t)p->retail_uunit_per_kwh,
                             (int64_t)p->feed_in_uunit_per_kwh};
    }
    if (mk_tariff_check(&t)) return mk_refuse(rc, b, CONTRACTS_ETARIFF);
    int64_t gate;
    if (!mk_slot_times(b->genesis, s->from_slot, NULL, &gate, NULL, NULL))
        return mk_refuse(rc, b, CONTRACTS_ESLOT);
    if ((int64_t)b->time_ms >= gate) return mk_refuse(rc, b, CONTRACTS_ETARIFFSLOT);
    /* Slots whose reading deadline has passed are settled (begin_block ran first), so sets
     * that only cover slots before `keep` are no longer needed. */
    const ledger_market_params *mp = &b->genesis->market;
    int64_t since = (int64_t)b->time_ms - (int64_t)b->genesis->genesis_time_ms - mp->settlement_deadline_ms;
    uint64_t keep = since > 0 ? (uint64_t)(since / mp->slot_ms) : 0;
    keep = keep > 1 ? keep - 1 : 0;
    int e = mk_tariff_put(st, s->from_slot, keep, &t);
    if (e == CONTRACTS_ETARIFF) return mk_refuse(rc, b, CONTRACTS_ETARIFF);
    return e;
}
