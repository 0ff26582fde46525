/* acct.c: accounts, meters and role keys: the account, meter and counter records, the genesis
 * initialisation, registration (participants, meters, role keys), deposits, transfers, meter
 * readings (who may sign them, capacity, corrections), tariffs and slot timing, plus the
 * reason-code table. docs/market.md describes the rules. */
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

/* The fixed-size record under key: LEDGER_OK with *v pointing into the state, the state's code
 * (LEDGER_ENOTFOUND), or LEDGER_ECORRUPT when its size is not `bytes`. */
static int fixed_record_get(ledger_state *st, const uint8_t key[1 + PUB], size_t bytes, const uint8_t **v) {
    size_t vlen;
    int rc = ledger_state_get(st, key, 1 + PUB, v, &vlen);
    if (rc) return rc;
    return vlen == bytes ? LEDGER_OK : LEDGER_ECORRUPT;
}

int mk_acct_get(ledger_state *st, const uint8_t pub[PUB], mk_acct *a) {
    uint8_t key[1 + PUB];
    mk_acct_key(key, pub);
    const uint8_t *v;
    int rc = fixed_record_get(st, key, MK_ACCT_BYTES, &v);
    if (rc == LEDGER_OK) acct_decode(v, a);
    return rc;
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
bool mk_meter_data(ledger_state *st, uint8_t pub[PUB]) { return role_get(st, 'm', pub); }

/* ------------------------------------------------------------------ meters */
static void meter_key(uint8_t key[1 + PUB], const uint8_t pub[PUB]) {
    key[0] = MK_METER;
    memcpy(key + 1, pub, PUB);
}

void mk_meter_decode(const uint8_t v[MK_METER_BYTES], mk_meter *m) {
    memcpy(m->owner, v, PUB);
    m->bus = tem_get_u32le(v + 36);
    m->import_cap_w = mk_get_i64(v + 40);
    m->export_cap_w = mk_get_i64(v + 48);
    m->from_slot = tem_get_u64le(v + 56);
    m->until_slot = tem_get_u64le(v + 64);
}

int mk_meter_get(ledger_state *st, const uint8_t pub[PUB], mk_meter *m) {
    uint8_t key[1 + PUB];
    meter_key(key, pub);
    const uint8_t *v;
    int rc = fixed_record_get(st, key, MK_METER_BYTES, &v);
    if (rc == LEDGER_OK) mk_meter_decode(v, m);
    return rc;
}

int mk_meter_put(ledger_state *st, const uint8_t pub[PUB], const mk_meter *m) {
    uint8_t key[1 + PUB], v[MK_METER_BYTES] = {0};
    meter_key(key, pub);
    memcpy(v, m->owner, PUB);
    tem_put_u32le(v + 36, m->bus);
    mk_put_i64(v + 40, m->import_cap_w);
    mk_put_i64(v + 48, m->export_cap_w);
    tem_put_u64le(v + 56, m->from_slot);
    tem_put_u64le(v + 64, m->until_slot);
    return ledger_state_put(st, key, sizeof key, v, sizeof v);
}

int64_t mk_cap_wh(int64_t cap_w, int64_t slot_ms) {
    int64_t wh;
    if (cap_w <= 0 || slot_ms <= 0) return 0;
    if (!tem_mul_div_floor(cap_w, slot_ms, 3600000, &wh) || wh > CONTRACTS_QTY_MAX_WH)
        return CONTRACTS_QTY_MAX_WH;
    return wh;
}

static const uint8_t settle_next_key[2] = {MK_PARAM, 'l'};

int mk_settle_next_get(ledger_state *st, uint64_t *slot) {
    const uint8_t *v;
    size_t vlen;
    int rc = ledger_state_get(st, settle_next_key, 2, &v, &vlen);
    *slot = 0;
    if (rc == LEDGER_ENOTFOUND) return LEDGER_OK;
    if (rc) return rc;
    if (vlen != 8) return LEDGER_ECORRUPT;
    *slot = tem_get_u64le(v);
    return LEDGER_OK;
}

int mk_settle_next_put(ledger_state *st, uint64_t slot) {
    uint8_t v[8];
    tem_put_u64le(v, slot);
    return ledger_state_put(st, settle_next_key, 2, v, 8);
}

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
    bool have_u = false, have_d = false, have_m = false;
    for (uint32_t i = 0; i < g->n_participants; i++) {
        const ledger_participant *p = &g->participants[i];
        if (!mk_pubkey_ok(p->pubkey, PUB) || p->role < TEM__V1__ROLE__PROSUMER ||
            p->role > TEM__V1__ROLE__METER_DATA || p->money_uunit < 0 || p->tokens_wh < 0)
            return LEDGER_EGENESIS;
        mk_acct a;
        mk_meter mt;
        if (mk_acct_get(st, p->pubkey, &a) == LEDGER_OK) return LEDGER_EGENESIS; /* duplicate */
        if (mk_meter_get(st, p->pubkey, &mt) == LEDGER_OK) return LEDGER_EGENESIS;
        if (p->role == TEM__V1__ROLE__METER) {
            /* A meter is a device, not an account: it holds nothing and never trades. Its owner
             * must be listed before it. */
            if (p->money_uunit || p->tokens_wh || p->import_capacity_w < 0 || p->export_capacity_w < 0 ||
                mk_acct_get(st, p->owner, &a) != LEDGER_OK ||
                (a.role != TEM__V1__ROLE__PROSUMER && a.role != TEM__V1__ROLE__CONSUMER))
                return LEDGER_EGENESIS;
            mt = (mk_meter){.bus = p->bus, .import_cap_w = p->import_capacity_w,
                            .export_cap_w = a.role == TEM__V1__ROLE__CONSUMER ? 0 : p->export_capacity_w,
                            .from_slot = p->from_slot,
                            .until_slot = p->until_slot ? p->until_slot : UINT64_MAX};
            memcpy(mt.owner, p->owner, PUB);
            int rc = mk_meter_put(st, p->pubkey, &mt);
            if (rc) return rc;
            continue;
        }
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
        if (p->role == TEM__V1__ROLE__METER_DATA && !have_m) {
            if ((rc = mk_role_put(st, 'm', p->pubkey))) return rc;
            have_m = true;
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

/* The three role pointers ('p' 'u' utility, 'p' 'd' DSO, 'p' 'm' meter-data key) follow the
 * latest registration: registering a key in the role moves the role's rights to it, and
 * re-registering the holder in another role leaves the role vacant. The old key keeps none. */
static int role_pointers_update(ledger_state *st, const uint8_t pub[PUB], int role) {
    static const struct { char which; int role; } R[] = {
        {'u', TEM__V1__ROLE__UTILITY}, {'d', TEM__V1__ROLE__DSO}, {'m', TEM__V1__ROLE__METER_DATA}};
    for (size_t i = 0; i < sizeof R / sizeof R[0]; i++) {
        uint8_t cur[PUB];
        bool have = role_get(st, R[i].which, cur);
        int e = LEDGER_OK;
        uint8_t key[2] = {MK_PARAM, (uint8_t)R[i].which};
        if (role == R[i].role)
            e = mk_role_put(st, R[i].which, pub);
        else if (have && memcmp(cur, pub, PUB) == 0)
            e = ledger_state_del(st, key, 2);
        if (e) return e;
    }
    return LEDGER_OK;
}

/* First slot a meter registered in a block at time_ms answers for: the first slot starting at or
 * after the block, so it is never estimated for energy measured before it existed. */
static uint64_t first_full_slot(const ledger_genesis *g, uint64_t time_ms) {
    if (time_ms <= g->genesis_time_ms) return 0;
    uint64_t rel = time_ms - g->genesis_time_ms, sm = (uint64_t)g->market.slot_ms;
    return rel / sm + (rel % sm ? 1 : 0);
}

static int register_meter(ledger_state *st, const ledger_block_ctx *b,
                          const Tem__V1__RegisterParticipant *r, Tem__V1__Receipt *rc) {
    const uint8_t *pub = r->pubkey.data;
    mk_acct a;
    int e = mk_acct_get(st, pub, &a);
    if (e == LEDGER_OK) return mk_refuse(rc, b, CONTRACTS_EMETERKEY); /* a trading key */
    if (e != LEDGER_ENOTFOUND) return e;
    if (r->import_capacity_w > (uint64_t)INT64_MAX || r->export_capacity_w > (uint64_t)INT64_MAX)
        return mk_refuse(rc, b, CONTRACTS_EOVERFLOW);
    int g = grid_bus_check(st, r->bus);
    if (g != GRID_OK) return mk_refuse(rc, b, g);
    mk_meter m;
    e = mk_meter_get(st, pub, &m);
    if (e != LEDGER_OK && e != LEDGER_ENOTFOUND) return e;
    uint64_t next = first_full_slot(b->genesis, b->time_ms);
    if (r->owner.len == 0) {
        /* Retirement: the meter answers for no slot from the next one on. */
        if (e == LEDGER_ENOTFOUND) return mk_refuse(rc, b, CONTRACTS_EMETER);
        if (m.until_slot > next) m.until_slot = next < m.from_slot ? m.from_slot : next;
        return mk_meter_put(st, pub, &m);
    }
    if (!mk_pubkey_ok(r->owner.data, r->owner.len)) return mk_refuse(rc, b, CONTRACTS_EPUBKEY);
    mk_acct owner;
    int oe = mk_acct_get(st, r->owner.data, &owner);
    if (oe == LEDGER_ENOTFOUND) return mk_refuse(rc, b, CONTRACTS_ENORECIPIENT);
    if (oe) return oe;
    if (owner.role != TEM__V1__ROLE__PROSUMER && owner.role != TEM__V1__ROLE__CONSUMER)
        return mk_refuse(rc, b, CONTRACTS_EROLE);
    if (e == LEDGER_OK && memcmp(m.owner, r->owner.data, PUB) != 0)
        return mk_refuse(rc, b, CONTRACTS_EMETERKEY); /* bound to one participant for life */
    if (e == LEDGER_ENOTFOUND) {
        m = (mk_meter){.from_slot = next, .until_slot = UINT64_MAX};
        memcpy(m.owner, r->owner.data, PUB);
    }
    m.bus = r->bus;
    m.import_cap_w = (int64_t)r->import_capacity_w;
    /* A consumer's meter measures no export. */
    m.export_cap_w = owner.role == TEM__V1__ROLE__CONSUMER ? 0 : (int64_t)r->export_capacity_w;
    return mk_meter_put(st, pub, &m);
}

int mk_exec_register(ledger_state *st, const ledger_block_ctx *b, const ledger_tx *tx,
                     Tem__V1__Receipt *rc) {
    const Tem__V1__RegisterParticipant *r = tx->body->register_;
    int ce = contracts_signer_check(st, b->genesis, tx);
    if (ce == CONTRACTS_ENOTADMIN) return mk_refuse(rc, b, ce);
    if (ce) return ce;
    if (!mk_pubkey_ok(r->pubkey.data, r->pubkey.len)) return mk_refuse(rc, b, CONTRACTS_EPUBKEY);
    if (r->role < TEM__V1__ROLE__PROSUMER || r->role > TEM__V1__ROLE__METER_DATA)
        return mk_refuse(rc, b, CONTRACTS_EBADROLE);
    if (r->role == TEM__V1__ROLE__METER) return register_meter(st, b, r, rc);
    mk_meter mt;
    int e = mk_meter_get(st, r->pubkey.data, &mt);
    if (e == LEDGER_OK) return mk_refuse(rc, b, CONTRACTS_EMETERKEY); /* a meter never trades */
    if (e != LEDGER_ENOTFOUND) return e;
    int g = grid_bus_check(st, r->bus);
    if (g != GRID_OK) return mk_refuse(rc, b, g);
    mk_acct a = {0};
    e = mk_acct_get(st, r->pubkey.data, &a);
    if (e != LEDGER_OK && e != LEDGER_ENOTFOUND) return e;
    /* Re-registration moves the participant (bus, role) and keeps its balances. */
    a.bus = r->bus;
    a.role = (int32_t)r->role;
    if ((e = mk_acct_put(st, r->pubkey.data, &a))) return e;
    return role_pointers_update(st, r->pubkey.data, (int)r->role);
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
         * (docs/market.md, "Participants and roles"): the current holder of the role only. An
         * account's role field stays UTILITY after the role moves to a new key (and a genesis'
         * second utility never held it), and a deposit creates money: a key the utility
         * replaced (lost, leaked, an old device) could otherwise mint money without limit. */
        if (kind == TEM__V1__TX_BODY__KIND_DEPOSIT) {
            uint8_t u[PUB];
            if (mk_utility(st, u) && memcmp(u, signer, PUB) == 0) return CONTRACTS_OK;
        }
        /* The DSO and the utility install meters: only the current holders of the roles. */
        if (kind == TEM__V1__TX_BODY__KIND_REGISTER && tx->body->register_ &&
            tx->body->register_->role == TEM__V1__ROLE__METER) {
            uint8_t d[PUB], u[PUB];
            if ((mk_dso(st, d) && memcmp(d, signer, PUB) == 0) ||
                (mk_utility(st, u) && memcmp(u, signer, PUB) == 0))
                return CONTRACTS_OK;
        }
        return CONTRACTS_ENOTADMIN;
    }
    if (kind == TEM__V1__TX_BODY__KIND_READING) {
        /* Readings come from meter devices or the DSO's meter-data key, never a trading key. */
        mk_meter m;
        int me = mk_meter_get(st, signer, &m);
        if (me == LEDGER_OK) return CONTRACTS_OK;
        if (me != LEDGER_ENOTFOUND) return me;
        uint8_t md[PUB];
        if (mk_meter_data(st, md) && memcmp(md, signer, PUB) == 0) return CONTRACTS_OK;
        return e == LEDGER_OK ? CONTRACTS_ENOTMETER : CONTRACTS_EMETER;
    }
    if (e == LEDGER_ENOTFOUND) return CONTRACTS_ENOTREGISTERED;
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
    int e = contracts_signer_check(st, b->genesis, tx);
    if (e == CONTRACTS_EMETER || e == CONTRACTS_ENOTMETER) return mk_refuse(rc, b, e);
    if (e) return e;
    /* The meter-data key names the meter; a meter signs for itself. */
    mk_meter m;
    const uint8_t *meter = signer;
    e = mk_meter_get(st, signer, &m);
    bool bulk = e == LEDGER_ENOTFOUND;
    if (e != LEDGER_OK && !bulk) return e;
    if (bulk) {
        if (!mk_pubkey_ok(r->meter.data, r->meter.len)) return mk_refuse(rc, b, CONTRACTS_EPUBKEY);
        meter = r->meter.data;
        e = mk_meter_get(st, meter, &m);
        if (e == LEDGER_ENOTFOUND) return mk_refuse(rc, b, CONTRACTS_EMETER);
        if (e) return e;
    } else if (r->meter.len != 0 && (r->meter.len != PUB || memcmp(r->meter.data, signer, PUB) != 0)) {
        return mk_refuse(rc, b, CONTRACTS_ENOTMETER); /* a meter speaks only for itself */
    }
    if (r->slot < m.from_slot || r->slot >= m.until_slot) return mk_refuse(rc, b, CONTRACTS_EMETER);
    int64_t end, deadline;
    if (!mk_slot_times(b->genesis, r->slot, NULL, NULL, &end, &deadline))
        return mk_refuse(rc, b, CONTRACTS_ESLOT);
    if ((int64_t)b->time_ms < end) return mk_refuse(rc, b, CONTRACTS_EEARLY);
    if ((int64_t)b->time_ms > deadline) return mk_refuse(rc, b, CONTRACTS_ELATE);
    if (r->import_wh > (uint64_t)CONTRACTS_QTY_MAX_WH || r->export_wh > (uint64_t)CONTRACTS_QTY_MAX_WH)
        return mk_refuse(rc, b, CONTRACTS_EOVERFLOW);
    if (m.export_cap_w == 0 && r->export_wh > 0) return mk_refuse(rc, b, CONTRACTS_EEXPORT);
    int64_t slot_ms = b->genesis->market.slot_ms;
    if ((int64_t)r->import_wh > mk_cap_wh(m.import_cap_w, slot_ms) ||
        (int64_t)r->export_wh > mk_cap_wh(m.export_cap_w, slot_ms))
        return mk_refuse(rc, b, CONTRACTS_ECAPACITY);
    uint8_t key[1 + 8 + PUB];
    key[0] = MK_READ;
    tem_put_u64be(key + 1, r->slot);
    memcpy(key + 9, meter, PUB);
    const uint8_t *v;
    size_t vlen;
    e = ledger_state_get(st, key, sizeof key, &v, &vlen);
    /* A meter reports once; the meter-data key may correct until the deadline. */
    if (e == LEDGER_OK && !bulk) return mk_refuse(rc, b, CONTRACTS_EDUPREADING);
    if (e != LEDGER_OK && e != LEDGER_ENOTFOUND) return e;
    uint8_t val[16];
    tem_put_u64le(val, r->import_wh);
    tem_put_u64le(val + 8, r->export_wh);
    if ((e = ledger_state_put(st, key, sizeof key, val, sizeof val))) return e;
    /* The energy belongs to the slot: nothing is credited to an account until it settles. */
    rc->minted_wh = (int64_t)r->export_wh;
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
    /* Settlement may lag behind time (a bounded number of slots per block): keep what it needs. */
    uint64_t next;
    int e = mk_settle_next_get(st, &next);
    if (e) return e;
    if (next < keep) keep = next;
    e = mk_tariff_put(st, s->from_slot, keep, &t);
    if (e == CONTRACTS_ETARIFF) return mk_refuse(rc, b, CONTRACTS_ETARIFF);
    return e;
}
