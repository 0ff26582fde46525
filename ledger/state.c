/* state.c: the in-memory ordered key-value state, its root and proofs by full recomputation,
 * the dirty set a store turns into state-tree updates, and savepoints. The state is small enough to hold in memory (accounts, open orders, a few slots of
 * trades) and is mirrored in LMDB by store.c; keeping it here makes contract reads cheap and
 * lets a block's execution be undone without touching the disk.
 *
 * Layout: `base` is a sorted array of entries; keys created since the last merge go to the small
 * sorted array `pend` and are merged into `base` before anything needs the full order (iteration,
 * roots, proofs, flushes). A deleted entry stays as a tombstone until the next flush, so the store
 * knows which LMDB keys to delete. Every entry written since the last flush is also on the
 * `dirty` list, so a block's flush and tree update cost O(changed keys), not O(N). Savepoints
 * journal the previous value of every write. */
#include "ledger/ledger_internal.h"

typedef struct entry {
    uint8_t *val;
    uint32_t klen, vlen;
    uint8_t kh[32], vh[32]; /* SHA-256 of key and value, cached for the state tree */
    bool kh_ok, vh_ok, dirty, deleted, listed;
    uint8_t key[];
} entry;

typedef struct {
    entry *e;
    uint8_t *old_val;
    uint32_t old_vlen;
    bool old_deleted, old_dirty, created;
} journal_rec;

struct ledger_state {
    entry **base;
    uint64_t *bpfx; /* bpfx[i]: the first 8 bytes of base[i]'s key, big-endian, zero-padded */
    size_t nbase, capbase;
    entry **pend;
    size_t npend, cappend;
    journal_rec *jr;
    size_t njr, capjr;
    entry **dl;    /* entries written since the last clear_dirty (listed = true) */
    size_t ndl, capdl;
    size_t live;   /* entries not deleted */
    size_t open_sp; /* savepoints open; the journal is kept while > 0 */
    bool root_ok;
    uint8_t root[32];
};

#define PEND_MERGE_AT 4096

int ledger_state_new(ledger_state **out) {
    ledger_state *st = tem_calloc(1, sizeof *st);
    if (!st) return LEDGER_ENOMEM;
    *out = st;
    return LEDGER_OK;
}

static void entry_free(entry *e) {
    if (!e) return;
    tem_free(e->val);
    tem_free(e);
}

void ledger_state_free(ledger_state *st) {
    if (!st) return;
    for (size_t i = 0; i < st->njr; i++) tem_free(st->jr[i].old_val);
    for (size_t i = 0; i < st->nbase; i++) entry_free(st->base[i]);
    for (size_t i = 0; i < st->npend; i++) entry_free(st->pend[i]);
    tem_free(st->base);
    tem_free(st->bpfx);
    tem_free(st->pend);
    tem_free(st->jr);
    tem_free(st->dl);
    tem_free(st);
}

static int keycmp(const uint8_t *a, size_t al, const uint8_t *b, size_t bl) {
    size_t n = al < bl ? al : bl;
    int c = memcmp(a, b, n);
    if (c) return c;
    return al < bl ? -1 : al > bl ? 1 : 0;
}

/* Index of the first entry >= key in arr. */
static size_t lower_bound(entry **arr, size_t n, const uint8_t *key, size_t klen) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (keycmp(arr[mid]->key, arr[mid]->klen, key, klen) < 0) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static uint64_t key_pfx(const uint8_t *key, size_t klen) {
    uint64_t p = 0;
    for (size_t i = 0; i < 8; i++) p = p << 8 | (i < klen ? key[i] : 0);
    return p;
}

/* lower_bound over base[0..n): the prefixes decide most probes without touching the entries,
 * which at 1M entries are scattered over ~200 MiB (one cache miss a probe otherwise). The
 * prefix order agrees with keycmp (memcmp, then shorter first), so only equal prefixes need the
 * keys. */
static size_t lower_bound_base(const ledger_state *st, size_t n, const uint8_t *key, size_t klen) {
    uint64_t kp = key_pfx(key, klen);
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        bool less = st->bpfx[mid] != kp ? st->bpfx[mid] < kp
                                         : keycmp(st->base[mid]->key, st->base[mid]->klen, key, klen) < 0;
        if (less) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* Grows base and bpfx together to hold `need` entries. */
static bool grow_base(ledger_state *st, size_t need) {
    if (need <= st->capbase) return true;
    size_t nc = st->capbase ? st->capbase * 2 : 64;
    while (nc < need) nc *= 2;
    entry **b = tem_realloc(st->base, nc * sizeof *b);
    if (!b) return false;
    st->base = b;
    uint64_t *p = tem_realloc(st->bpfx, nc * sizeof *p);
    if (!p) return false; /* base is larger, capbase unchanged: the next call retries */
    st->bpfx = p;
    st->capbase = nc;
    return true;
}

static entry *find(ledger_state *st, const uint8_t *key, size_t klen) {
    size_t i = lower_bound_base(st, st->nbase, key, klen);
    if (i < st->nbase && keycmp(st->base[i]->key, st->base[i]->klen, key, klen) == 0) return st->base[i];
    i = lower_bound(st->pend, st->npend, key, klen);
    if (i < st->npend && keycmp(st->pend[i]->key, st->pend[i]->klen, key, klen) == 0) return st->pend[i];
    return NULL;
}

static bool grow(void **arr, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return true;
    size_t nc = *cap ? *cap * 2 : 64;
    while (nc < need) nc *= 2;
    void *p = tem_realloc(*arr, nc * elem);
    if (!p) return false;
    *arr = p;
    *cap = nc;
    return true;
}

static int merge_pending(ledger_state *st) {
    if (st->npend == 0) return LEDGER_OK;
    if (!grow_base(st, st->nbase + st->npend)) return LEDGER_ENOMEM;
    /* From the back, in place: each pending entry's place in base is found by binary search and
     * the base entries above it move up in one memmove. A merge costs npend searches and one
     * pass of pointer moves, not a key comparison (a cache miss into the entry) per base entry:
     * at 1M entries that is ~1 ms instead of tens, and a genesis's 1M creations (a merge every
     * PEND_MERGE_AT) no longer take seconds. Keys in pend are never in base. */
    size_t hi = st->nbase, k = st->nbase + st->npend;
    for (size_t j = st->npend; j-- > 0;) {
        entry *p = st->pend[j];
        size_t pos = lower_bound_base(st, hi, p->key, p->klen);
        k -= hi - pos;
        memmove(st->base + k, st->base + pos, (hi - pos) * sizeof(entry *));
        memmove(st->bpfx + k, st->bpfx + pos, (hi - pos) * sizeof(uint64_t));
        st->base[--k] = p;
        st->bpfx[k] = key_pfx(p->key, p->klen);
        hi = pos;
    }
    TEM_ASSERT(k == hi);
    st->nbase += st->npend;
    st->npend = 0;
    return LEDGER_OK;
}

int ledger_state_get(ledger_state *st, const void *key, size_t klen, const uint8_t **val, size_t *vlen) {
    entry *e = find(st, key, klen);
    if (!e || e->deleted) return LEDGER_ENOTFOUND;
    *val = e->val;
    *vlen = e->vlen;
    return LEDGER_OK;
}

/* The caller reserved a dl slot before changing anything, so this cannot fail. */
static void mark_dirty(ledger_state *st, entry *e) {
    e->dirty = true;
    if (e->listed) return;
    TEM_ASSERT(st->ndl < st->capdl);
    st->dl[st->ndl++] = e;
    e->listed = true;
}

/* Journals are kept only while a savepoint is open (a block or a tx is executing). */
static bool in_savepoint(const ledger_state *st) { return st->open_sp > 0; }

int ledger_state_put(ledger_state *st, const void *key, size_t klen, const void *val, size_t vlen) {
    TEM_ASSERT(klen > 0 && klen <= UINT32_MAX && vlen <= UINT32_MAX);
    if (!grow((void **)&st->dl, &st->capdl, st->ndl + 1, sizeof(entry *))) return LEDGER_ENOMEM;
    uint8_t *nv = tem_malloc(vlen);
    if (!nv) return LEDGER_ENOMEM;
    memcpy(nv, val, vlen);
    entry *e = find(st, key, klen);
    bool created = false;
    if (!e) {
        if (!grow((void **)&st->pend, &st->cappend, st->npend + 1, sizeof(entry *))) goto oom;
        e = tem_calloc(1, sizeof *e + klen);
        if (!e) goto oom;
        memcpy(e->key, key, klen);
        e->klen = (uint32_t)klen;
        e->deleted = true; /* becomes live below; a rollback of the creation leaves a tombstone */
        size_t i = lower_bound(st->pend, st->npend, key, klen);
        memmove(st->pend + i + 1, st->pend + i, (st->npend - i) * sizeof(entry *));
        st->pend[i] = e;
        st->npend++;
        created = true;
    }
    if (in_savepoint(st)) {
        if (!grow((void **)&st->jr, &st->capjr, st->njr + 1, sizeof(journal_rec))) {
            if (created) e->dirty = false; /* an unborn tombstone: harmless, dropped at flush */
            goto oom;
        }
        st->jr[st->njr++] = (journal_rec){.e = e, .old_val = e->val, .old_vlen = e->vlen,
                                          .old_deleted = e->deleted, .old_dirty = e->dirty, .created = created};
    } else {
        tem_free(e->val);
    }
    if (e->deleted) st->live++;
    e->val = nv;
    e->vlen = (uint32_t)vlen;
    e->deleted = false;
    mark_dirty(st, e);
    e->vh_ok = false;
    st->root_ok = false;
    if (st->npend >= PEND_MERGE_AT && merge_pending(st) != LEDGER_OK) {
        /* The entry is in place either way; the merge is only retried later. */
    }
    return LEDGER_OK;
oom:
    tem_free(nv);
    return LEDGER_ENOMEM;
}

int ledger_state_del(ledger_state *st, const void *key, size_t klen) {
    entry *e = find(st, key, klen);
    if (!e || e->deleted) return LEDGER_OK;
    if (!grow((void **)&st->dl, &st->capdl, st->ndl + 1, sizeof(entry *))) return LEDGER_ENOMEM;
    if (in_savepoint(st)) {
        if (!grow((void **)&st->jr, &st->capjr, st->njr + 1, sizeof(journal_rec))) return LEDGER_ENOMEM;
        st->jr[st->njr++] = (journal_rec){.e = e, .old_val = e->val, .old_vlen = e->vlen,
                                          .old_deleted = false, .old_dirty = e->dirty, .created = false};
    } else {
        tem_free(e->val);
    }
    e->val = NULL;
    e->vlen = 0;
    e->deleted = true;
    mark_dirty(st, e);
    e->vh_ok = false;
    st->live--;
    st->root_ok = false;
    return LEDGER_OK;
}

int ledger_state_iter(ledger_state *st, const void *prefix, size_t plen, ledger_state_iter_fn fn, void *ctx) {
    int rc = merge_pending(st);
    if (rc != LEDGER_OK) return rc;
    size_t i = plen ? lower_bound_base(st, st->nbase, prefix, plen) : 0;
    for (; i < st->nbase; i++) {
        entry *e = st->base[i];
        if (plen && (e->klen < plen || memcmp(e->key, prefix, plen) != 0)) break;
        if (e->deleted) continue;
        int r = fn(ctx, e->key, e->klen, e->val, e->vlen);
        if (r) return r;
    }
    return LEDGER_OK;
}

size_t ledger_state_count(ledger_state *st) { return st->live; }

static void entry_hashes(entry *e) {
    if (!e->kh_ok) {
        ledger_sha256(e->kh, e->key, e->klen);
        e->kh_ok = true;
    }
    if (!e->vh_ok && !e->deleted) {
        ledger_sha256(e->vh, e->val ? (const void *)e->val : (const void *)"", e->vlen);
        e->vh_ok = true;
    }
}

static int leafrec_cmp(const void *a, const void *b) {
    return memcmp(((const ledger__smt_leafrec *)a)->kh, ((const ledger__smt_leafrec *)b)->kh, 32);
}

/* (key hash, value hash) of every live entry, sorted by key hash (tem_malloc'd). */
static int collect_leaves(ledger_state *st, ledger__smt_leafrec **out, size_t *n) {
    int rc = merge_pending(st);
    if (rc != LEDGER_OK) return rc;
    ledger__smt_leafrec *a = tem_malloc((st->live ? st->live : 1) * sizeof *a);
    if (!a) return LEDGER_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < st->nbase; i++) {
        entry *e = st->base[i];
        if (e->deleted) continue;
        entry_hashes(e);
        memcpy(a[k].kh, e->kh, 32);
        memcpy(a[k].vh, e->vh, 32);
        k++;
    }
    TEM_ASSERT(k == st->live);
    qsort(a, k, sizeof *a, leafrec_cmp);
    *out = a;
    *n = k;
    return LEDGER_OK;
}

int ledger_state_root(ledger_state *st, uint8_t out[LEDGER_HASH_BYTES]) {
    if (st->root_ok) {
        memcpy(out, st->root, 32);
        return LEDGER_OK;
    }
    ledger__smt_leafrec *a;
    size_t n;
    int rc = collect_leaves(st, &a, &n);
    if (rc != LEDGER_OK) return rc;
    ledger__smt_root_mem(a, n, st->root);
    tem_free(a);
    st->root_ok = true;
    memcpy(out, st->root, 32);
    return LEDGER_OK;
}

void ledger__state_set_root(ledger_state *st, const uint8_t root[32]) {
    memcpy(st->root, root, 32);
    st->root_ok = true;
}

int ledger_state_prove(ledger_state *st, const void *key, size_t klen, ledger_state_proof *out) {
    ledger__smt_leafrec *a;
    size_t n;
    int rc = collect_leaves(st, &a, &n);
    if (rc != LEDGER_OK) return rc;
    uint8_t kh[32];
    ledger_sha256(kh, key, klen);
    ledger__smt_prove_mem(a, n, kh, out);
    tem_free(a);
    return LEDGER_OK;
}

int ledger_state_proof_verify(const uint8_t root[LEDGER_HASH_BYTES], const void *key, size_t klen,
                              const void *val, size_t vlen, const ledger_state_proof *p) {
    if (klen == 0) return -1;
    uint8_t kh[32], vh[32];
    ledger_sha256(kh, key, klen);
    ledger_sha256(vh, vlen ? val : "", vlen);
    return ledger__smt_verify(root, kh, vh, p);
}

int ledger_state_proof_verify_absent(const uint8_t root[LEDGER_HASH_BYTES], const void *key, size_t klen,
                                     const ledger_state_proof *p) {
    if (klen == 0) return -1;
    uint8_t kh[32];
    ledger_sha256(kh, key, klen);
    return ledger__smt_verify(root, kh, NULL, p);
}

/* ------------------------------------------------------------------ savepoints
 * A savepoint is a position in the journal; savepoints nest strictly (LIFO). */
int ledger_state_savepoint(ledger_state *st, size_t *mark) {
    /* Reserve a slot so an open savepoint always has a journal array. */
    if (!grow((void **)&st->jr, &st->capjr, st->njr + 1, sizeof(journal_rec))) return LEDGER_ENOMEM;
    *mark = st->njr;
    st->open_sp++;
    return LEDGER_OK;
}

void ledger_state_rollback(ledger_state *st, size_t mark) {
    TEM_ASSERT(mark <= st->njr);
    TEM_ASSERT(st->open_sp > 0);
    while (st->njr > mark) {
        journal_rec *r = &st->jr[--st->njr];
        entry *e = r->e;
        if (!e->deleted) st->live--;
        tem_free(e->val);
        e->val = r->old_val;
        e->vlen = r->old_vlen;
        e->deleted = r->old_deleted;
        e->dirty = r->old_dirty;
        e->vh_ok = false;
        if (!e->deleted) st->live++;
    }
    st->root_ok = false;
    st->open_sp--;
}

void ledger_state_release(ledger_state *st, size_t mark) {
    TEM_ASSERT(mark <= st->njr);
    TEM_ASSERT(st->open_sp > 0);
    st->open_sp--;
    if (st->open_sp > 0) return; /* an outer savepoint may still roll these writes back */
    for (size_t i = mark; i < st->njr; i++) tem_free(st->jr[i].old_val);
    st->njr = mark;
}

size_t ledger__state_journal_depth(const ledger_state *st) { return st->njr; }

uint64_t ledger_state_nonce(ledger_state *st, const uint8_t signer[LEDGER_SECP_PUB_BYTES]) {
    uint8_t key[1 + LEDGER_SECP_PUB_BYTES];
    key[0] = 'n';
    memcpy(key + 1, signer, LEDGER_SECP_PUB_BYTES);
    const uint8_t *v;
    size_t vl;
    if (ledger_state_get(st, key, sizeof key, &v, &vl) != LEDGER_OK || vl != 8) return 0;
    return tem_get_u64le(v);
}

/* ------------------------------------------------------------------ load / flush / clone */
int ledger__state_load(ledger_state *st, const void *key, size_t klen, const void *val, size_t vlen) {
    if (klen == 0 || klen > UINT32_MAX || vlen > UINT32_MAX) return LEDGER_ECORRUPT;
    if (st->nbase && keycmp(st->base[st->nbase - 1]->key, st->base[st->nbase - 1]->klen, key, klen) >= 0)
        return LEDGER_ECORRUPT;
    if (!grow_base(st, st->nbase + 1)) return LEDGER_ENOMEM;
    entry *e = tem_calloc(1, sizeof *e + klen);
    uint8_t *v = tem_malloc(vlen);
    if (!e || !v) {
        tem_free(e);
        tem_free(v);
        return LEDGER_ENOMEM;
    }
    memcpy(e->key, key, klen);
    memcpy(v, val, vlen);
    e->klen = (uint32_t)klen;
    e->val = v;
    e->vlen = (uint32_t)vlen;
    st->bpfx[st->nbase] = key_pfx(key, klen);
    st->base[st->nbase++] = e;
    st->live++;
    st->root_ok = false;
    return LEDGER_OK;
}

static int entry_keycmp(const void *a, const void *b) {
    const entry *x = *(entry *const *)a, *y = *(entry *const *)b;
    return keycmp(x->key, x->klen, y->key, y->klen);
}

int ledger__state_flush(ledger_state *st, ledger__flush_fn fn, void *ctx) {
    /* Key order keeps LMDB's page splits local; the list holds each entry once. When every
     * entry is on it (a genesis: 1M entries), the merged base is that order already and a sort
     * of a million pointers to scattered entries (about a second) is skipped. */
    if (st->ndl > 1 && st->ndl == st->nbase + st->npend && merge_pending(st) == LEDGER_OK)
        memcpy(st->dl, st->base, st->ndl * sizeof *st->dl);
    else if (st->ndl > 1)
        qsort(st->dl, st->ndl, sizeof *st->dl, entry_keycmp);
    for (size_t i = 0; i < st->ndl; i++) {
        entry *e = st->dl[i];
        if (!e->dirty) continue;
        int rc = fn(ctx, e->key, e->klen, e->deleted ? NULL : e->val, e->vlen);
        if (rc != LEDGER_OK) return rc;
    }
    return LEDGER_OK;
}

static int op_cmp(const void *a, const void *b) {
    return memcmp(((const ledger__smt_op *)a)->kh, ((const ledger__smt_op *)b)->kh, 32);
}

int ledger__state_tree_ops(ledger_state *st, ledger__smt_op **out, size_t *n) {
    ledger__smt_op *ops = tem_malloc((st->ndl ? st->ndl : 1) * sizeof *ops);
    if (!ops) return LEDGER_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < st->ndl; i++) {
        entry *e = st->dl[i];
        if (!e->dirty) continue;
        entry_hashes(e);
        memcpy(ops[k].kh, e->kh, 32);
        if (e->deleted) memset(ops[k].vh, 0, 32);
        else memcpy(ops[k].vh, e->vh, 32);
        ops[k].del = e->deleted;
        k++;
    }
    qsort(ops, k, sizeof *ops, op_cmp);
    *out = ops;
    *n = k;
    return LEDGER_OK;
}

static int size_cmp(const void *a, const void *b) {
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

static int ptr_cmp(const void *a, const void *b) {
    uintptr_t x = (uintptr_t)*(entry *const *)a, y = (uintptr_t)*(entry *const *)b;
    return x < y ? -1 : x > y;
}

/* Removes the tombstones in dead[0..nd) (all in `arr`, which is sorted by key) in one pass. */
static void drop_from(entry **arr, uint64_t *pfx, size_t *n, entry **dead, size_t nd) {
    if (nd == 0) return;
    qsort(dead, nd, sizeof *dead, ptr_cmp);
    size_t k = 0;
    for (size_t i = 0; i < *n; i++) {
        entry *e = arr[i];
        if (e->deleted && bsearch(&e, dead, nd, sizeof *dead, ptr_cmp)) continue;
        if (pfx) pfx[k] = pfx[i];
        arr[k++] = e;
    }
    *n = k;
}

void ledger__state_clear_dirty(ledger_state *st) {
    /* Tombstones are freed here, so no journal may still point at them. */
    TEM_ASSERT(st->open_sp == 0);
    size_t nd = 0;
    for (size_t i = 0; i < st->ndl; i++) {
        entry *e = st->dl[i];
        e->dirty = false;
        e->listed = false;
        if (e->deleted) st->dl[nd++] = e; /* reuse the list's front for the dead */
    }
    st->ndl = 0;
    if (nd == 0) return;
    /* Each dead entry is found by binary search; base is then compacted in one sequential pass
     * of pointer moves (no entry is touched), so a block's cost does not grow with N beyond a
     * memmove. */
    size_t *idx = tem_malloc(nd * sizeof *idx);
    size_t ni = 0, np = 0;
    for (size_t i = 0; i < nd; i++) {
        entry *e = st->dl[i];
        size_t j = lower_bound_base(st, st->nbase, e->key, e->klen);
        if (idx && j < st->nbase && st->base[j] == e) idx[ni++] = j;
        else np++;
    }
    if (idx && ni > 0) {
        qsort(idx, ni, sizeof *idx, size_cmp);
        size_t w = idx[0];
        for (size_t i = 0; i < ni; i++) {
            size_t from = idx[i] + 1, to = i + 1 < ni ? idx[i + 1] : st->nbase;
            memmove(st->base + w, st->base + from, (to - from) * sizeof(entry *));
            memmove(st->bpfx + w, st->bpfx + from, (to - from) * sizeof(uint64_t));
            w += to - from;
        }
        st->nbase = w;
        tem_free(idx);
        if (np) drop_from(st->pend, NULL, &st->npend, st->dl, nd);
    } else if (idx) {
        tem_free(idx); /* every dead entry is still in pend */
        drop_from(st->pend, NULL, &st->npend, st->dl, nd);
    } else {
        /* Out of memory for the index list: the slower pass needs none. */
        drop_from(st->base, st->bpfx, &st->nbase, st->dl, nd);
        drop_from(st->pend, NULL, &st->npend, st->dl, nd);
    }
    for (size_t i = 0; i < nd; i++) entry_free(st->dl[i]);
}

int ledger_state_clone(ledger_state *st, ledger_state **out) {
    int rc = merge_pending(st);
    if (rc != LEDGER_OK) return rc;
    ledger_state *c;
    if ((rc = ledger_state_new(&c)) != LEDGER_OK) return rc;
    for (size_t i = 0; i < st->nbase; i++) {
        entry *e = st->base[i];
        if (e->deleted) continue;
        if ((rc = ledger__state_load(c, e->key, e->klen, e->val, e->vlen)) != LEDGER_OK) {
            ledger_state_free(c);
            return rc;
        }
    }
    *out = c;
    return LEDGER_OK;
}
