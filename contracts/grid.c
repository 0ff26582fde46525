/* grid.c: the grid check's ledger side: the InstallFeeder admin tx, the state keys (prefix 'g'),
 * the per-match check and commit against a slot's state, network-use fees and loss charges, and
 * the error names. The arithmetic itself is in grid_model.c. Integers only (docs/grid.md). */
#include "contracts/grid.h"

#define GRID__KEY_MODEL "gm"
#define GRID__KEY_SLOT "gs"
#define GRID__SLOT_KEY_BYTES 10
/* Caps on inputs that keep the fee products inside 128 bits. */
#define GRID__FEE_QTY_MAX 1000000000000000LL /* Wh */

/* Implemented in grid_model.c for the escrow maxima. */
int grid__model_farthest(const uint8_t *blob, size_t blob_len, uint32_t bus, int64_t *r_uohm,
                         int64_t *loss_factor_ppm);

const char *grid_strerror(int err) {
    switch (err) {
#define GRID_X(name, val, msg) case val: return msg;
        GRID_ERRNO_MAP(GRID_X)
#undef GRID_X
    default: return ledger_strerror(err);
    }
}

const char *grid_errname(int err) {
    switch (err) {
#define GRID_X(name, val, msg) case val: return #name;
        GRID_ERRNO_MAP(GRID_X)
#undef GRID_X
    default: return NULL;
    }
}

static void slot_key(uint8_t key[GRID__SLOT_KEY_BYTES], uint64_t slot) {
    key[0] = 'g';
    key[1] = 's';
    tem_put_u64be(key + 2, slot);
}

/* The installed model, or *blob = NULL when there is none. */
static int model_get(ledger_state *st, const uint8_t **blob, size_t *len) {
    int rc = ledger_state_get(st, GRID__KEY_MODEL, 2, blob, len);
    if (rc == LEDGER_ENOTFOUND) {
        *blob = NULL;
        *len = 0;
        return GRID_OK;
    }
    return rc == LEDGER_OK ? GRID_OK : GRID_ECORRUPT;
}

bool grid_installed(ledger_state *st) {
    const uint8_t *b;
    size_t n;
    return model_get(st, &b, &n) == GRID_OK && b != NULL;
}

int grid_bus_check(ledger_state *st, uint32_t bus) {
    const uint8_t *b;
    size_t n;
    int rc = model_get(st, &b, &n);
    if (rc != GRID_OK || !b) return rc;
    int64_t r, lf;
    return grid__model_farthest(b, n, bus, &r, &lf);
}

/* The slot blob, or NULL for a slot with nothing committed. */
static int slot_get(ledger_state *st, uint64_t slot, size_t bytes, const uint8_t **val) {
    uint8_t key[GRID__SLOT_KEY_BYTES];
    slot_key(key, slot);
    size_t len;
    int rc = ledger_state_get(st, key, sizeof key, val, &len);
    if (rc == LEDGER_ENOTFOUND) {
        *val = NULL;
        return GRID_OK;
    }
    if (rc != LEDGER_OK || len != bytes) return GRID_ECORRUPT;
    return GRID_OK;
}

int grid_check_match(ledger_state *st, uint64_t slot, uint32_t seller_bus, uint32_t buyer_bus,
                     uint64_t qty_wh, int64_t slot_ms, grid_match_result *out) {
    TEM_ASSERT(st && out);
    if (slot_ms <= 0) return GRID_EINVAL;
    const uint8_t *blob, *sv;
    size_t len;
    int rc = model_get(st, &blob, &len);
    if (rc != GRID_OK) return rc;
    if (!blob) {
        memset(out, 0, sizeof *out);
        out->max_wh = UINT64_MAX;
        out->allowed_wh = qty_wh;
        return GRID_OK;
    }
    size_t bytes = grid_model_slot_bytes(blob, len);
    if (bytes == 0) return GRID_ECORRUPT;
    rc = slot_get(st, slot, bytes, &sv);
    if (rc != GRID_OK) return rc;
    return grid_model_check(blob, len, sv, slot, seller_bus, buyer_bus, qty_wh, slot_ms, out);
}

int grid_commit_match(ledger_state *st, uint64_t slot, uint32_t seller_bus, uint32_t buyer_bus,
                      uint64_t qty_wh, int64_t slot_ms) {
    TEM_ASSERT(st);
    if (slot_ms <= 0) return GRID_EINVAL;
    const uint8_t *blob, *sv;
    size_t len;
    int rc = model_get(st, &blob, &len);
    if (rc != GRID_OK || !blob) return rc;
    size_t bytes = grid_model_slot_bytes(blob, len);
    if (bytes == 0) return GRID_ECORRUPT;
    if (seller_bus == buyer_bus || qty_wh == 0) {
        grid_match_result tmp; /* still refuse unknown buses */
        return grid_model_check(blob, len, NULL, 0, seller_bus, buyer_bus, 0, slot_ms, &tmp);
    }
    rc = slot_get(st, slot, bytes, &sv);
    if (rc != GRID_OK) return rc;
    /* Work on a copy: the state value must not change unless the whole commit succeeds. */
    uint8_t stack[256 * GRID_SLOT_BYTES_PER_BUS];
    uint8_t *buf = bytes <= sizeof stack ? stack : tem_malloc(bytes);
    if (!buf) return GRID_ENOMEM;
    if (sv)
        memcpy(buf, sv, bytes);
    else
        memset(buf, 0, bytes);
    rc = grid_model_commit(blob, len, buf, seller_bus, buyer_bus, qty_wh, slot_ms);
    if (rc == GRID_OK) {
        uint8_t key[GRID__SLOT_KEY_BYTES];
        slot_key(key, slot);
        if (ledger_state_put(st, key, sizeof key, buf, bytes) != LEDGER_OK) rc = GRID_ENOMEM;
    }
    if (buf != stack) tem_free(buf);
    return rc;
}

/* ------------------------------------------------------------------ slot keys */

typedef struct {
    uint8_t (*keys)[GRID__SLOT_KEY_BYTES];
    size_t n, cap;
    uint64_t before; /* collect slots < before */
    bool oom;
} grid__keylist;

static int collect_slot(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen) {
    (void)val;
    (void)vlen;
    grid__keylist *kl = ctx;
    if (klen != GRID__SLOT_KEY_BYTES) return 0; /* not ours: skip */
    if (tem_get_u64be(key + 2) >= kl->before) return 1; /* keys are in slot order: done */
    if (kl->n == kl->cap) {
        size_t cap = kl->cap ? 2 * kl->cap : 16;
        void *p = tem_realloc(kl->keys, cap * GRID__SLOT_KEY_BYTES);
        if (!p) {
            kl->oom = true;
            return 1;
        }
        kl->keys = p;
        kl->cap = cap;
    }
    memcpy(kl->keys[kl->n++], key, GRID__SLOT_KEY_BYTES);
    return 0;
}

static int delete_slots(ledger_state *st, uint64_t before) {
    grid__keylist kl = {.before = before};
    int rc = ledger_state_iter(st, GRID__KEY_SLOT, 2, collect_slot, &kl);
    (void)rc; /* the callback's stop value; errors are reported through kl.oom */
    int out = kl.oom ? GRID_ENOMEM : GRID_OK;
    for (size_t i = 0; out == GRID_OK && i < kl.n; i++) {
        if (ledger_state_del(st, kl.keys[i], GRID__SLOT_KEY_BYTES) != LEDGER_OK) out = GRID_ENOMEM;
    }
    tem_free(kl.keys);
    return out;
}

int grid_slot_prune(ledger_state *st, uint64_t before_slot) {
    TEM_ASSERT(st);
    return delete_slots(st, before_slot);
}

/* ------------------------------------------------------------------ install */

/* Re-indexes every open slot's blob from the old model's records to the new model's, by bus
 * number. Pass `write` = false to only check that every bus with accepted trades exists in the
 * new model (a refusal then names the bus and the slot in why). */
static int remap_slots(ledger_state *st, const uint8_t *oblob, size_t olen, const uint8_t *nblob, size_t nlen,
                       bool write, char *why, size_t whylen) {
    grid__keylist kl = {.before = UINT64_MAX};
    int irc = ledger_state_iter(st, GRID__KEY_SLOT, 2, collect_slot, &kl);
    (void)irc; /* the callback's stop value; errors are reported through kl.oom */
    int out = kl.oom ? GRID_ENOMEM : GRID_OK;
    const uint32_t on = grid_model_buses(oblob, olen), nn = grid_model_buses(nblob, nlen);
    uint8_t *buf = kl.n ? tem_calloc(nn, GRID_SLOT_BYTES_PER_BUS) : NULL;
    if (kl.n && !buf) out = GRID_ENOMEM;
    for (size_t i = 0; out == GRID_OK && i < kl.n; i++) {
        const uint8_t *val;
        size_t vlen;
        if (ledger_state_get(st, kl.keys[i], GRID__SLOT_KEY_BYTES, &val, &vlen) != LEDGER_OK ||
            vlen != (size_t)on * GRID_SLOT_BYTES_PER_BUS) {
            out = GRID_ECORRUPT;
            break;
        }
        memset(buf, 0, (size_t)nn * GRID_SLOT_BYTES_PER_BUS);
        for (uint32_t k = 0; out == GRID_OK && k < on; k++) {
            int64_t q = (int64_t)tem_get_u64le(val + 8 * (size_t)k);
            if (q == 0) continue;
            uint32_t bus = grid_model_bus_id(oblob, olen, k), nk;
            int rc = grid_model_bus_record(nblob, nlen, bus, &nk);
            if (rc != GRID_OK) {
                snprintf(why, whylen, "bus %u has accepted trades in open slot %llu and is not in the new model",
                         bus, (unsigned long long)tem_get_u64be(kl.keys[i] + 2));
                out = rc;
                break;
            }
            tem_put_u64le(buf + 8 * (size_t)nk, (uint64_t)q);
        }
        if (out == GRID_OK && write &&
            ledger_state_put(st, kl.keys[i], GRID__SLOT_KEY_BYTES, buf, (size_t)nn * GRID_SLOT_BYTES_PER_BUS) != LEDGER_OK)
            out = GRID_ENOMEM;
    }
    tem_free(buf);
    tem_free(kl.keys);
    return out;
}

int grid_exec_install(ledger_state *st, const ledger_block_ctx *b, const ledger_tx *tx,
                      Tem__V1__Receipt *rc) {
    TEM_ASSERT(st && b && tx && tx->body && rc);
    const Tem__V1__InstallFeeder *msg = tx->body->install_feeder;
    if (tx->body->kind_case != TEM__V1__TX_BODY__KIND_INSTALL_FEEDER || !msg) {
        rc->code = GRID_EINVAL;
        rc->reason = ledger_arena_strdup(b->arena, "not an install_feeder tx");
        return rc->reason ? LEDGER_OK : LEDGER_ENOMEM;
    }
    char why[160];
    uint8_t *blob = NULL, *old = NULL;
    size_t len = 0, olen = 0;
    int err = grid_model_compile(msg, UINT32_MAX, &blob, &len, why, sizeof why);
    if (err == GRID_OK) {
        /* A copy of the old model: the state's pointer does not survive the puts below. */
        const uint8_t *ob;
        err = model_get(st, &ob, &olen);
        if (err == GRID_OK && ob && grid_model_buses(ob, olen) > 0) {
            old = tem_malloc(olen);
            if (!old) err = GRID_ENOMEM;
            else memcpy(old, ob, olen);
        }
        why[0] = 0;
        /* Accepted trades of open slots stay counted under the new model; one that the new model
         * cannot place refuses the install (docs/grid.md, "Versioned models"). */
        if (err == GRID_OK && old) err = remap_slots(st, old, olen, blob, len, false, why, sizeof why);
    }
    if (err == GRID_ENOMEM) {
        tem_free(blob);
        tem_free(old);
        return LEDGER_ENOMEM;
    }
    if (err != GRID_OK) {
        tem_free(blob);
        tem_free(old);
        rc->code = err;
        rc->reason = ledger_arena_strdup(b->arena, why[0] ? why : grid_strerror(err));
        return rc->reason ? LEDGER_OK : LEDGER_ENOMEM;
    }
    if (old)
        err = remap_slots(st, old, olen, blob, len, true, why, sizeof why);
    else
        err = delete_slots(st, UINT64_MAX); /* no model (or one of an older format): nothing to map */
    if (err == GRID_OK && ledger_state_put(st, GRID__KEY_MODEL, 2, blob, len) != LEDGER_OK) err = GRID_ENOMEM;
    tem_free(blob);
    tem_free(old);
    if (err != GRID_OK) return LEDGER_ENOMEM;
    rc->code = 0;
    return LEDGER_OK;
}

/* ------------------------------------------------------------------ fees and losses */

/* ceil(a * b * c / d) for non-negative a, b, c and d > 0, into int64. */
static int mul3_div_ceil(int64_t a, int64_t b, int64_t c, int64_t d, int64_t *out) {
    __int128 p;
    if (__builtin_mul_overflow((__int128)a, (__int128)b, &p)) return GRID_EOVERFLOW;
    if (__builtin_mul_overflow(p, (__int128)c, &p)) return GRID_EOVERFLOW;
    __int128 q = p / d + (p % d != 0);
    if (q > INT64_MAX) return GRID_EOVERFLOW;
    *out = (int64_t)q;
    return GRID_OK;
}

/* What every fee and loss call starts with: argument checks, then the installed model (*blob
 * NULL when none is installed, and then every charge is 0). */
static int fee_model(ledger_state *st, uint64_t qty_wh, int64_t rate, const uint8_t **blob, size_t *len) {
    if (rate < 0) return GRID_EINVAL;
    if (qty_wh > (uint64_t)GRID__FEE_QTY_MAX) return GRID_EOVERFLOW;
    return model_get(st, blob, len);
}

int grid_network_fee(ledger_state *st, uint32_t seller_bus, uint32_t buyer_bus, uint64_t qty_wh,
                     int64_t rate_uunit_per_kwh_per_ohm, int64_t *fee_uunit) {
    TEM_ASSERT(st && fee_uunit);
    const uint8_t *blob;
    size_t len;
    int rc = fee_model(st, qty_wh, rate_uunit_per_kwh_per_ohm, &blob, &len);
    if (rc != GRID_OK) return rc;
    if (!blob) {
        *fee_uunit = 0;
        return GRID_OK;
    }
    int64_t r, lf;
    rc = grid_model_path(blob, len, seller_bus, buyer_bus, &r, &lf);
    if (rc != GRID_OK) return rc;
    /* Wh -> kWh (1e3) and micro-ohm -> ohm (1e6); the DSO gets the rounding. */
    return mul3_div_ceil((int64_t)qty_wh, r, rate_uunit_per_kwh_per_ohm, 1000000000LL, fee_uunit);
}

/* What both _max bounds compute: qty_wh x rate x (the resistance, or with `by_loss` the loss
 * factor, towards the farthest bus from `bus`) / 1e9, rounded up; 0 when no model is installed. */
static int farthest_charge(ledger_state *st, uint32_t bus, uint64_t qty_wh, int64_t rate, bool by_loss,
                           int64_t *out) {
    const uint8_t *blob;
    size_t len;
    int rc = fee_model(st, qty_wh, rate, &blob, &len);
    if (rc != GRID_OK) return rc;
    if (!blob) {
        *out = 0;
        return GRID_OK;
    }
    int64_t r, lf;
    rc = grid__model_farthest(blob, len, bus, &r, &lf);
    if (rc != GRID_OK) return rc;
    return mul3_div_ceil((int64_t)qty_wh, by_loss ? lf : r, rate, 1000000000LL, out);
}

int grid_network_fee_max(ledger_state *st, uint32_t bus, uint64_t qty_wh,
                         int64_t rate_uunit_per_kwh_per_ohm, int64_t *fee_uunit) {
    TEM_ASSERT(st && fee_uunit);
    return farthest_charge(st, bus, qty_wh, rate_uunit_per_kwh_per_ohm, false, fee_uunit);
}

/* ceil(p / d) for any sign of p, d > 0. */
static int64_t div_ceil_i128(__int128 p, int64_t d, bool *ok) {
    __int128 q = p / d;
    if (p % d > 0) q++;
    *ok = q <= INT64_MAX && q >= INT64_MIN;
    return *ok ? (int64_t)q : 0;
}

int grid_loss_charge(ledger_state *st, uint64_t slot, int64_t slot_ms, uint32_t seller_bus, uint32_t buyer_bus,
                     uint64_t qty_wh, int64_t loss_price_uunit_per_kwh, grid_loss *out) {
    TEM_ASSERT(st && out);
    const uint8_t *blob;
    size_t len;
    if (slot_ms <= 0) return GRID_EINVAL;
    int rc = fee_model(st, qty_wh, loss_price_uunit_per_kwh, &blob, &len);
    if (rc != GRID_OK) return rc;
    grid_loss l = {0};
    if (blob) {
        size_t bytes = grid_model_slot_bytes(blob, len);
        const uint8_t *sv;
        if (bytes == 0) return GRID_ECORRUPT;
        if ((rc = slot_get(st, slot, bytes, &sv)) != GRID_OK) return rc;
        int64_t lf;
        rc = grid_model_loss_factor(blob, len, sv, slot, slot_ms, seller_bus, buyer_bus, &lf);
        if (rc != GRID_OK) return rc;
        l.loss_factor_ppm = lf;
        /* Wh * ppm / 1e3 = mWh; Wh * ppm * uunit/kWh / 1e9 = uunit. Both rounded up (towards the
         * DSO): a credit is rounded towards zero, a charge away from it. */
        bool ok1, ok2;
        __int128 p = (__int128)qty_wh * lf;
        l.loss_mwh = div_ceil_i128(p, 1000, &ok1);
        __int128 pv;
        if (__builtin_mul_overflow(p, (__int128)loss_price_uunit_per_kwh, &pv)) return GRID_EOVERFLOW;
        l.total_uunit = div_ceil_i128(pv, 1000000000LL, &ok2);
        if (!ok1 || !ok2) return GRID_EOVERFLOW;
        /* floor(total / 2) for either sign */
        l.seller_uunit = l.total_uunit >= 0 ? l.total_uunit / 2 : -((-l.total_uunit + 1) / 2);
        l.buyer_uunit = l.total_uunit - l.seller_uunit;
    }
    *out = l;
    return GRID_OK;
}

int grid_loss_charge_max(ledger_state *st, uint32_t bus, uint64_t qty_wh,
                         int64_t loss_price_uunit_per_kwh, int64_t *total_uunit) {
    TEM_ASSERT(st && total_uunit);
    return farthest_charge(st, bus, qty_wh, loss_price_uunit_per_kwh, true, total_uunit);
}
