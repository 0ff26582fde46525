/* genesis.c: parsing the genesis file (docs/ledger.md, "Genesis"). The genesis hash is the
 * SHA-256 of the file's exact bytes, so every node must hold the same file byte for byte; every
 * block commits to that hash. */
#include "ledger/ledger.h"

#include <jansson.h>

#define GERR(...)                                                                                  \
    do {                                                                                           \
        if (err) snprintf(err, errlen, __VA_ARGS__);                                               \
        rc = LEDGER_EGENESIS;                                                                      \
        goto fail;                                                                                 \
    } while (0)

static int role_from_name(const char *s) {
    static const char *names[] = {NULL,       "prosumer", "consumer", "utility",
                                  "dso",      "aggregator", "meter", "meter_data"};
    for (int i = 1; i <= 7; i++)
        if (s && strcmp(s, names[i]) == 0) return i;
    return -1;
}

/* Reads an optional non-negative integer member; false if present but not an integer >= 0. */
static bool opt_int(json_t *obj, const char *key, int64_t *out) {
    json_t *v = json_object_get(obj, key);
    if (!v) return true;
    if (!json_is_integer(v) || json_integer_value(v) < 0) return false;
    *out = json_integer_value(v);
    return true;
}

uint32_t ledger_genesis_f(const ledger_genesis *g) { return g->n_validators ? (g->n_validators - 1) / 3 : 0; }
/* The smallest q with 2q - n >= f + 1: any two quorums share an honest validator, for every n,
 * not only n = 3f+1 (where q = 2f+1). With n = 5 the old 2f+1 = 3 let two quorums of 3 meet in
 * one validator, which may be the faulty one. q <= n - f, so the honest validators alone reach it. */
uint32_t ledger_genesis_quorum(const ledger_genesis *g) {
    return ledger_quorum_of(g->n_validators);
}
uint32_t ledger_quorum_of(uint32_t n) { return n ? (n + (n - 1) / 3) / 2 + 1 : 1; }

int ledger_genesis_validator_index(const ledger_genesis *g, const uint8_t pub[LEDGER_ED_PUB_BYTES]) {
    for (uint32_t i = 0; i < g->n_validators; i++)
        if (memcmp(g->validators[i].pubkey, pub, LEDGER_ED_PUB_BYTES) == 0) return (int)i;
    return -1;
}

bool ledger_genesis_is_admin(const ledger_genesis *g, const uint8_t pub[LEDGER_SECP_PUB_BYTES]) {
    for (uint32_t i = 0; i < g->n_admins; i++)
        if (memcmp(g->admins[i], pub, LEDGER_SECP_PUB_BYTES) == 0) return true;
    return false;
}

void ledger_genesis_free(ledger_genesis *g) {
    tem_free(g->participants);
    g->participants = NULL;
    g->n_participants = 0;
}

static int part_cmp(const void *a, const void *b, void *ctx) {
    const ledger_participant *p = ctx;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    int c = memcmp(p[x].pubkey, p[y].pubkey, LEDGER_SECP_PUB_BYTES);
    return c ? c : (x < y ? -1 : x > y);
}

int ledger_genesis_parse(const char *text, size_t len, ledger_genesis *g, char *err, size_t errlen) {
    int rc = LEDGER_EGENESIS;
    memset(g, 0, sizeof *g);
    if (err && errlen) err[0] = 0;
    if (len > LEDGER_GENESIS_BYTES_MAX) {
        if (err) snprintf(err, errlen, "genesis larger than %u bytes", LEDGER_GENESIS_BYTES_MAX);
        return LEDGER_EGENESIS;
    }
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (err) snprintf(err, errlen, "line %d: %s", jerr.line, jerr.text);
        return LEDGER_EGENESIS;
    }
    if (!json_is_object(root)) GERR("genesis is not a JSON object");
    ledger_sha256(g->hash, text, len);

    const char *cid = json_string_value(json_object_get(root, "chain_id"));
    if (!cid || !cid[0] || strlen(cid) > LEDGER_CHAIN_ID_MAX) GERR("chain_id missing or longer than %d", LEDGER_CHAIN_ID_MAX);
    snprintf(g->chain_id, sizeof g->chain_id, "%s", cid);
    int64_t t = 0;
    if (!opt_int(root, "genesis_time_ms", &t)) GERR("genesis_time_ms must be an integer >= 0");
    g->genesis_time_ms = (uint64_t)t;

    json_t *vals = json_object_get(root, "validators");
    if (!json_is_array(vals) || json_array_size(vals) == 0 || json_array_size(vals) > LEDGER_VALIDATORS_MAX)
        GERR("validators must be a list of 1..%d entries", LEDGER_VALIDATORS_MAX);
    size_t i;
    json_t *v;
    json_array_foreach(vals, i, v) {
        ledger_validator *lv = &g->validators[i];
        const char *name = json_string_value(json_object_get(v, "name"));
        const char *pk = json_string_value(json_object_get(v, "pubkey"));
        const char *addr = json_string_value(json_object_get(v, "address"));
        const char *http = json_string_value(json_object_get(v, "http"));
        if (!pk || tem_unhex(lv->pubkey, LEDGER_ED_PUB_BYTES, pk) != 0) GERR("validators[%zu].pubkey must be 32 bytes of hex", i);
        snprintf(lv->name, sizeof lv->name, "%s", name ? name : "");
        snprintf(lv->address, sizeof lv->address, "%s", addr ? addr : "");
        snprintf(lv->http, sizeof lv->http, "%s", http ? http : "");
        for (size_t j = 0; j < i; j++)
            if (memcmp(g->validators[j].pubkey, lv->pubkey, LEDGER_ED_PUB_BYTES) == 0) GERR("validators[%zu] repeats a key", i);
        g->n_validators = (uint32_t)(i + 1);
    }

    json_t *admins = json_object_get(root, "admins");
    if (admins && (!json_is_array(admins) || json_array_size(admins) > LEDGER_ADMINS_MAX)) GERR("admins must be a list of at most %d keys", LEDGER_ADMINS_MAX);
    json_array_foreach(admins, i, v) {
        const char *pk = json_string_value(v);
        if (!pk || tem_unhex(g->admins[i], LEDGER_SECP_PUB_BYTES, pk) != 0 || !ledger_secp_pubkey_valid(g->admins[i]))
            GERR("admins[%zu] must be a 33-byte compressed secp256k1 key in hex", i);
        g->n_admins = (uint32_t)(i + 1);
    }

    json_t *parts = json_object_get(root, "participants");
    if (parts && (!json_is_array(parts) || json_array_size(parts) > LEDGER_PARTICIPANTS_MAX)) GERR("participants must be a list of at most %d", LEDGER_PARTICIPANTS_MAX);
    if (parts && json_array_size(parts) > 0) {
        g->participants = tem_calloc(json_array_size(parts), sizeof *g->participants);
        if (!g->participants) { rc = LEDGER_ENOMEM; goto fail; }
    }
    json_array_foreach(parts, i, v) {
        ledger_participant *p = &g->participants[i];
        const char *pk = json_string_value(json_object_get(v, "pubkey"));
        if (!pk || tem_unhex(p->pubkey, LEDGER_SECP_PUB_BYTES, pk) != 0 || (p->pubkey[0] != 2 && p->pubkey[0] != 3))
            GERR("participants[%zu].pubkey must be a 33-byte compressed secp256k1 key in hex", i);
        int role = role_from_name(json_string_value(json_object_get(v, "role")));
        if (role < 0) GERR("participants[%zu].role must be prosumer, consumer, utility, dso, aggregator, meter or meter_data", i);
        p->role = role;
        if (role == TEM__V1__ROLE__METER) {
            const char *ow = json_string_value(json_object_get(v, "owner"));
            if (!ow || tem_unhex(p->owner, LEDGER_SECP_PUB_BYTES, ow) != 0 || (p->owner[0] != 2 && p->owner[0] != 3))
                GERR("participants[%zu].owner must be the metered participant's 33-byte key in hex", i);
            if (!opt_int(v, "import_capacity_w", &p->import_capacity_w) || !opt_int(v, "export_capacity_w", &p->export_capacity_w))
                GERR("participants[%zu]: import_capacity_w and export_capacity_w must be integers >= 0", i);
            int64_t fs = 0;
            if (!opt_int(v, "from_slot", &fs)) GERR("participants[%zu].from_slot must be an integer >= 0", i);
            p->from_slot = (uint64_t)fs;
            int64_t us = 0;
            if (!opt_int(v, "until_slot", &us) || (us != 0 && us <= fs))
                GERR("participants[%zu].until_slot must be an integer above from_slot", i);
            p->until_slot = (uint64_t)us;
        }
        int64_t bus = 0;
        if (!opt_int(v, "bus", &bus) || bus > UINT32_MAX) GERR("participants[%zu].bus must be an integer >= 0", i);
        p->bus = (uint32_t)bus;
        if (!opt_int(v, "money_uunit", &p->money_uunit)) GERR("participants[%zu].money_uunit must be an integer >= 0", i);
        if (!opt_int(v, "tokens_wh", &p->tokens_wh)) GERR("participants[%zu].tokens_wh must be an integer >= 0", i);
        g->n_participants = (uint32_t)(i + 1);
    }
    if (g->n_participants > 1) {
        /* Repeated keys: sort indices by key, compare neighbours (O(N log N); a pairwise scan
         * took minutes at 1M participants). The error names the later of the two entries. */
        uint32_t *ix = tem_malloc((size_t)g->n_participants * sizeof *ix);
        if (!ix) { rc = LEDGER_ENOMEM; goto fail; }
        for (uint32_t k = 0; k < g->n_participants; k++) ix[k] = k;
        qsort_r(ix, g->n_participants, sizeof *ix, part_cmp, g->participants);
        size_t dup = SIZE_MAX;
        for (uint32_t k = 1; k < g->n_participants; k++)
            if (memcmp(g->participants[ix[k - 1]].pubkey, g->participants[ix[k]].pubkey, LEDGER_SECP_PUB_BYTES) == 0) {
                size_t later = ix[k] > ix[k - 1] ? ix[k] : ix[k - 1];
                if (later < dup) dup = later;
            }
        tem_free(ix);
        if (dup != SIZE_MAX) GERR("participants[%zu] repeats a key", dup);
    }

    json_t *tariffs = json_object_get(root, "tariffs");
    if (!json_is_array(tariffs) || json_array_size(tariffs) == 0 || json_array_size(tariffs) > LEDGER_TARIFF_PERIODS_MAX)
        GERR("tariffs must be a list of 1..%d periods", LEDGER_TARIFF_PERIODS_MAX);
    json_array_foreach(tariffs, i, v) {
        ledger_tariff *tp = &g->tariffs[i];
        int64_t sm = -1, r = -1, f = -1;
        if (!opt_int(v, "start_minute", &sm) || !opt_int(v, "retail_uunit_per_kwh", &r) || !opt_int(v, "feed_in_uunit_per_kwh", &f) || sm < 0 || r < 0 || f < 0)
            GERR("tariffs[%zu] needs start_minute, retail_uunit_per_kwh and feed_in_uunit_per_kwh (integers >= 0)", i);
        if (sm >= 1440 || (i == 0 && sm != 0) || (i > 0 && sm <= g->tariffs[i - 1].start_minute))
            GERR("tariffs[%zu].start_minute must increase from 0 and stay below 1440", i);
        if (f > r) GERR("tariffs[%zu]: feed-in tariff above the retail tariff", i);
        tp->start_minute = (uint32_t)sm;
        tp->retail_uunit_per_kwh = r;
        tp->feed_in_uunit_per_kwh = f;
        g->n_tariffs = (uint32_t)(i + 1);
    }

    /* Market parameters: defaults first, then the file's values. */
    ledger_market_params *m = &g->market;
    m->slot_ms = 900000;
    m->gate_closure_ms = 300000;
    m->settlement_deadline_ms = 3600000;
    m->mechanism = LEDGER_MECH_CDA;
    m->seller_collateral_ppm = 0;
    m->network_fee_uunit_per_kwh_per_ohm = 0;
    m->loss_price_uunit_per_kwh = 0;
    m->book_orders_max = 100000;
    json_t *mk = json_object_get(root, "market");
    if (mk) {
        if (!json_is_object(mk)) GERR("market must be an object");
        if (!opt_int(mk, "slot_ms", &m->slot_ms) || m->slot_ms < 1000) GERR("market.slot_ms must be an integer >= 1000");
        if (!opt_int(mk, "gate_closure_ms", &m->gate_closure_ms)) GERR("market.gate_closure_ms must be an integer >= 0");
        if (!opt_int(mk, "settlement_deadline_ms", &m->settlement_deadline_ms)) GERR("market.settlement_deadline_ms must be an integer >= 0");
        if (!opt_int(mk, "seller_collateral_ppm", &m->seller_collateral_ppm) || m->seller_collateral_ppm > 10000000) GERR("market.seller_collateral_ppm must be 0..10000000");
        if (!opt_int(mk, "network_fee_uunit_per_kwh_per_ohm", &m->network_fee_uunit_per_kwh_per_ohm)) GERR("market.network_fee_uunit_per_kwh_per_ohm must be an integer >= 0");
        if (!opt_int(mk, "loss_price_uunit_per_kwh", &m->loss_price_uunit_per_kwh)) GERR("market.loss_price_uunit_per_kwh must be an integer >= 0");
        if (!opt_int(mk, "book_orders_max", &m->book_orders_max) || m->book_orders_max < 1) GERR("market.book_orders_max must be >= 1");
        json_t *mech = json_object_get(mk, "mechanism");
        if (mech) {
            const char *ms = json_string_value(mech);
            if (ms && strcmp(ms, "cda") == 0) m->mechanism = LEDGER_MECH_CDA;
            else if (ms && strcmp(ms, "call") == 0) m->mechanism = LEDGER_MECH_CALL;
            else GERR("market.mechanism must be \"cda\" or \"call\"");
        }
    }

    int64_t lim = 4096, alim = 4 << 20, bl = 2000, ck = 16, vt = 2000;
    json_t *limits = json_object_get(root, "limits");
    if (limits && !json_is_object(limits)) GERR("limits must be an object");
    if (limits) {
        if (!opt_int(limits, "max_tx_bytes", &lim) || lim < 256 || lim > (1 << 20)) GERR("limits.max_tx_bytes must be 256..1048576");
        if (!opt_int(limits, "max_admin_tx_bytes", &alim) || alim < lim || alim > (64 << 20)) GERR("limits.max_admin_tx_bytes must be max_tx_bytes..67108864");
        if (!opt_int(limits, "max_block_txs", &bl) || bl < 1 || bl > LEDGER_BLOCK_TXS_MAX) GERR("limits.max_block_txs must be 1..%d", LEDGER_BLOCK_TXS_MAX);
    }
    json_t *cons = json_object_get(root, "consensus");
    if (cons && !json_is_object(cons)) GERR("consensus must be an object");
    if (cons) {
        if (!opt_int(cons, "checkpoint_interval", &ck) || ck < 1 || ck > 1024) GERR("consensus.checkpoint_interval must be 1..1024");
        if (!opt_int(cons, "view_timeout_ms", &vt) || vt < 10) GERR("consensus.view_timeout_ms must be >= 10");
    }
    g->max_tx_bytes = (uint32_t)lim;
    g->max_admin_tx_bytes = (uint32_t)alim;
    g->max_block_txs = (uint32_t)bl;
    g->checkpoint_interval = (uint32_t)ck;
    g->view_timeout_ms = (uint64_t)vt;
    rc = LEDGER_OK;
fail:
    json_decref(root);
    if (rc != LEDGER_OK) ledger_genesis_free(g);
    return rc;
}

int ledger_genesis_load(const char *path, ledger_genesis *g, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (err) snprintf(err, errlen, "cannot open %s", path);
        return LEDGER_EGENESIS;
    }
    char *buf = tem_malloc(LEDGER_GENESIS_BYTES_MAX + 1);
    if (!buf) {
        fclose(f);
        return LEDGER_ENOMEM;
    }
    size_t n = fread(buf, 1, LEDGER_GENESIS_BYTES_MAX + 1, f);
    bool bad = ferror(f);
    fclose(f);
    int rc;
    if (bad) {
        if (err) snprintf(err, errlen, "cannot read %s", path);
        rc = LEDGER_EGENESIS;
    } else {
        rc = ledger_genesis_parse(buf, n, g, err, errlen);
    }
    tem_free(buf);
    return rc;
}
