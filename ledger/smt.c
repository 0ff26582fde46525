/* smt.c: the state tree, a sparse Merkle tree over SHA-256(state key) with shortcut leaves
 * (docs/ledger.md, "State tree"). A subtree holding no key hashes to 32 zero bytes, a subtree
 * holding one key is that key's leaf hash whatever its depth, and any other subtree is
 * H(0x01 || left || right); so the root depends only on the set of (key, value) pairs and a
 * path is about log2(N) nodes long.
 *
 * Two implementations of the same definition live here: a full recomputation over a sorted
 * array (states not backed by a store, proofs of such states, tests' cross-checks), and the
 * incremental one that keeps every node in an LMDB table, four levels a record, and rewrites
 * only the nodes on the paths of a block's changed keys. Its records go through a cache
 * (ledger__smt_cache): one update's own, written back at its end (ledger__smt_update), or a
 * store's, kept across blocks and written back at tree checkpoints (store.c). */
#include "ledger/ledger_internal.h"

#include <errno.h>
#include <lmdb.h>

static const uint8_t ZERO[32];

static inline int bit_at(const uint8_t kh[32], unsigned d) { return (kh[d >> 3] >> (7 - (d & 7))) & 1; }

void ledger__smt_leaf(uint8_t out[32], const uint8_t kh[32], const uint8_t vh[32]) {
    uint8_t buf[65];
    buf[0] = 0x00;
    memcpy(buf + 1, kh, 32);
    memcpy(buf + 33, vh, 32);
    ledger_sha256(out, buf, sizeof buf);
}

static void inner_hash(uint8_t out[32], const uint8_t l[32], const uint8_t r[32]) {
    uint8_t buf[65];
    buf[0] = 0x01;
    memcpy(buf + 1, l, 32);
    memcpy(buf + 33, r, 32);
    ledger_sha256(out, buf, sizeof buf);
}

/* ------------------------------------------------------------------ full recomputation */
/* First index in [lo, hi) whose key hash has bit d set (the array is sorted by key hash). */
static size_t split_at(const ledger__smt_leafrec *a, size_t lo, size_t hi, unsigned d) {
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (bit_at(a[mid].kh, d)) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

static void mem_root(const ledger__smt_leafrec *a, size_t lo, size_t hi, unsigned d, uint8_t out[32]) {
    if (hi == lo) {
        memcpy(out, ZERO, 32);
        return;
    }
    if (hi - lo == 1) {
        ledger__smt_leaf(out, a[lo].kh, a[lo].vh);
        return;
    }
    TEM_ASSERT(d < 256); /* two distinct key hashes differ somewhere in 256 bits */
    size_t s = split_at(a, lo, hi, d);
    uint8_t l[32], r[32];
    mem_root(a, lo, s, d + 1, l);
    mem_root(a, s, hi, d + 1, r);
    inner_hash(out, l, r);
}

void ledger__smt_root_mem(const ledger__smt_leafrec *a, size_t n, uint8_t out[32]) { mem_root(a, 0, n, 0, out); }
void ledger__smt_subtree_mem(const ledger__smt_leafrec *a, size_t lo, size_t hi, unsigned d, uint8_t out[32]) {
    mem_root(a, lo, hi, d, out);
}

void ledger__smt_prove_mem(const ledger__smt_leafrec *a, size_t n, const uint8_t kh[32], ledger_state_proof *p) {
    memset(p, 0, sizeof *p);
    size_t lo = 0, hi = n;
    unsigned d = 0;
    for (;;) {
        if (hi == lo) {
            p->kind = LEDGER_PROOF_ABSENT_EMPTY;
            break;
        }
        if (hi - lo == 1) {
            if (memcmp(a[lo].kh, kh, 32) == 0) p->kind = LEDGER_PROOF_PRESENT;
            else p->kind = LEDGER_PROOF_ABSENT_LEAF;
            memcpy(p->leaf_kh, a[lo].kh, 32);
            memcpy(p->leaf_vh, a[lo].vh, 32);
            break;
        }
        TEM_ASSERT(d < 256);
        size_t s = split_at(a, lo, hi, d);
        if (bit_at(kh, d)) {
            mem_root(a, lo, s, d + 1, p->sibling[d]);
            lo = s;
        } else {
            mem_root(a, s, hi, d + 1, p->sibling[d]);
            hi = s;
        }
        d++;
    }
    p->depth = (uint16_t)d;
}

/* ------------------------------------------------------------------ verification */
int ledger__smt_verify(const uint8_t root[32], const uint8_t kh[32], const uint8_t *vh, const ledger_state_proof *p) {
    if (p->depth > LEDGER_STATE_PROOF_DEPTH_MAX) return -1;
    uint8_t node[32];
    switch (p->kind) {
    case LEDGER_PROOF_PRESENT:
        if (!vh || memcmp(p->leaf_kh, kh, 32) != 0 || memcmp(p->leaf_vh, vh, 32) != 0) return -1;
        ledger__smt_leaf(node, kh, vh);
        break;
    case LEDGER_PROOF_ABSENT_LEAF:
        /* Another key's leaf sits where this key's path ends: it must share the path so far. */
        if (vh || memcmp(p->leaf_kh, kh, 32) == 0) return -1;
        for (unsigned i = 0; i < p->depth; i++)
            if (bit_at(p->leaf_kh, i) != bit_at(kh, i)) return -1;
        ledger__smt_leaf(node, p->leaf_kh, p->leaf_vh);
        break;
    case LEDGER_PROOF_ABSENT_EMPTY:
        if (vh) return -1;
        memcpy(node, ZERO, 32);
        break;
    default:
        return -1;
    }
    /* Canonical form: a node below the root has a non-empty sibling, else the tree would have
     * stored it higher up (one key: a shortcut leaf; no key: an empty parent). */
    if (p->depth > 0 && memcmp(p->sibling[p->depth - 1], ZERO, 32) == 0) return -1;
    for (unsigned i = p->depth; i-- > 0;) {
        if (bit_at(kh, i)) inner_hash(node, p->sibling[i], node);
        else inner_hash(node, node, p->sibling[i]);
    }
    return memcmp(node, root, 32) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ LMDB tree */
/* Nodes are stored in groups of GROUP_LEVELS levels: the group of depth d is g = d / 4, and one
 * LMDB record holds every node of one group under one 4g-bit path prefix (a 4-level subtree, up
 * to 15 nodes). A changed key's path of ~log2(N) nodes touches ~log2(N)/4 records instead of
 * log2(N), which is what an update pays for in LMDB (B-tree lookups, copy-on-write pages). The
 * tree's definition, root and proofs do not depend on this layout. */
enum { N_EMPTY = 0, N_LEAF = 1, N_INNER = 2 };
enum { GROUP_LEVELS = 4, GROUP_SLOTS = 15, GROUP_VAL_MAX = 2 + GROUP_SLOTS * 65 };
typedef struct {
    int kind;
    uint8_t a[32], b[32]; /* leaf: kh, vh; inner: left, right */
} node;

/* One group record as loaded in an update: slot s = 2^r - 1 + (the r path bits below the
 * group's root) for the node r levels below it. */
typedef struct grec {
    uint8_t key[33], klen;
    bool dirty;
    uint16_t present; /* bit s: slot s holds a node */
    uint8_t kind[GROUP_SLOTS];
    uint8_t ab[GROUP_SLOTS][64];
} grec;

/* Records read or written, by key (open addressing; cap a power of 2). One update's own (the
 * uncached calls: written back once, sorted, at the end), or a store's write-back cache that
 * lives across blocks and is written back at tree checkpoints (ledger__smt_cache_flush). */
struct ledger__smt_cache {
    grec **map;
    size_t nmap, cap;
    grec **chunks; /* records are allocated CHUNK at a time */
    size_t nchunks, used_in_last;
    size_t ndirty; /* records changed since the last flush */
};

typedef struct {
    MDB_txn *txn;
    MDB_dbi dbi;
    ledger__smt_stats *stats;
    ledger__smt_cache *k;
    /* A proof's reads: a record missing from the cache is read into `scratch`, not cached, so
     * proofs between blocks cannot grow a store's cache. */
    bool peek;
    grec scratch;
    /* The record last used at each group: a path's levels come in runs of GROUP_LEVELS within
     * one record, and the keys of a sorted block share their upper records, so most lookups end
     * here instead of in the hash map. Not set with peek (scratch is reused). */
    grec *last[64];
    /* Bulk mode (an empty table): node records are collected per depth instead, then merged
     * into group records. A depth-first build emits each depth's nodes in path order, so every
     * group's records come out in key order and are appended to LMDB sorted (MDB_APPEND). */
    bool bulk;
    uint8_t *bk[256];
    size_t bklen[256], bkcap[256];
} tctx;
enum { CHUNK = 64 };

static int map_err(int rc) {
    if (rc == 0) return LEDGER_OK;
    if (rc == MDB_NOTFOUND) return LEDGER_ENOTFOUND;
    fprintf(stderr, "ledger: lmdb state tree: %s\n", mdb_strerror(rc));
    if (rc == MDB_MAP_FULL) return LEDGER_EFULL;
    /* A full disk is its own error, as in store.c: the node pauses instead of stopping. */
    if (rc == ENOSPC || rc == EDQUOT) return LEDGER_EDISKFULL;
    if (rc == ENOMEM) return LEDGER_ENOMEM;
    return LEDGER_EIO;
}

/* Record key of group g on path: u8(g) || the first ceil(4g/8) bytes of path, bits past 4g
 * zeroed. Keys sort by group, then by prefix. */
static size_t group_key(uint8_t key[33], unsigned g, const uint8_t path[32]) {
    TEM_ASSERT(g < 64);
    unsigned bits = g * GROUP_LEVELS;
    size_t nb = (bits + 7) / 8;
    key[0] = (uint8_t)g;
    memcpy(key + 1, path, nb);
    if (bits & 7) key[nb] &= (uint8_t)(0xFF << (8 - (bits & 7)));
    return 1 + nb;
}

static unsigned group_slot(unsigned d, const uint8_t path[32]) {
    unsigned g0 = d - d % GROUP_LEVELS, r = d - g0, bits = 0;
    for (unsigned i = g0; i < d; i++) bits = bits << 1 | (unsigned)bit_at(path, i);
    return (1u << r) - 1 + bits;
}

static int group_decode(grec *r, const uint8_t *p, size_t len) {
    if (len < 2) return LEDGER_ECORRUPT;
    r->present = (uint16_t)(p[0] << 8 | p[1]);
    if (r->present >> GROUP_SLOTS) return LEDGER_ECORRUPT;
    size_t off = 2;
    for (unsigned s = 0; s < GROUP_SLOTS; s++) {
        if (!(r->present >> s & 1)) continue;
        if (len - off < 65 || (p[off] != N_LEAF && p[off] != N_INNER)) return LEDGER_ECORRUPT;
        r->kind[s] = p[off];
        memcpy(r->ab[s], p + off + 1, 64);
        off += 65;
    }
    return off == len ? LEDGER_OK : LEDGER_ECORRUPT;
}

static size_t group_encode(const grec *r, uint8_t out[GROUP_VAL_MAX]) {
    out[0] = (uint8_t)(r->present >> 8);
    out[1] = (uint8_t)r->present;
    size_t off = 2;
    for (unsigned s = 0; s < GROUP_SLOTS; s++) {
        if (!(r->present >> s & 1)) continue;
        out[off] = r->kind[s];
        memcpy(out + off + 1, r->ab[s], 64);
        off += 65;
    }
    return off;
}

static uint64_t key_hash(const uint8_t *key, size_t klen) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < klen; i++) h = (h ^ key[i]) * 0x100000001b3ull;
    return h ^ h >> 29;
}

static grec *rec_alloc(ledger__smt_cache *c) {
    if (c->nchunks == 0 || c->used_in_last == CHUNK) {
        grec **nc = tem_realloc(c->chunks, (c->nchunks + 1) * sizeof *nc);
        if (!nc) return NULL;
        c->chunks = nc;
        if (!(nc[c->nchunks] = tem_malloc(CHUNK * sizeof(grec)))) return NULL;
        c->nchunks++;
        c->used_in_last = 0;
    }
    return &c->chunks[c->nchunks - 1][c->used_in_last++];
}

static void map_insert(grec **map, size_t cap, grec *r) {
    size_t i = key_hash(r->key, r->klen) & (cap - 1);
    while (map[i]) i = (i + 1) & (cap - 1);
    map[i] = r;
}

static int rec_read(tctx *c, grec *r, const uint8_t *key, size_t klen) {
    memcpy(r->key, key, klen);
    r->klen = (uint8_t)klen;
    r->dirty = false;
    r->present = 0;
    MDB_val k = {klen, (void *)key}, v;
    c->stats->reads++;
    int rc = mdb_get(c->txn, c->dbi, &k, &v);
    if (rc == 0) return group_decode(r, v.mv_data, v.mv_size);
    return rc == MDB_NOTFOUND ? LEDGER_OK : map_err(rc);
}

/* The record of group g on path, read from LMDB on first use (an absent record is empty). */
static int group_get(tctx *c, unsigned g, const uint8_t path[32], grec **out) {
    uint8_t key[33];
    size_t klen = group_key(key, g, path);
    ledger__smt_cache *k = c->k;
    grec *m = c->last[g];
    if (m && m->klen == klen && memcmp(m->key, key, klen) == 0) {
        *out = m;
        return LEDGER_OK;
    }
    if (k->cap) {
        size_t i = key_hash(key, klen) & (k->cap - 1);
        for (; k->map[i]; i = (i + 1) & (k->cap - 1))
            if (k->map[i]->klen == klen && memcmp(k->map[i]->key, key, klen) == 0) {
                *out = k->map[i];
                if (!c->peek) c->last[g] = k->map[i];
                return LEDGER_OK;
            }
    }
    if (c->peek) {
        *out = &c->scratch;
        return rec_read(c, &c->scratch, key, klen);
    }
    if (2 * (k->nmap + 1) > k->cap) {
        size_t nc = k->cap ? 2 * k->cap : 256;
        grec **nm = tem_calloc(nc, sizeof *nm);
        if (!nm) return LEDGER_ENOMEM;
        for (size_t i = 0; i < k->cap; i++)
            if (k->map[i]) map_insert(nm, nc, k->map[i]);
        tem_free(k->map);
        k->map = nm;
        k->cap = nc;
    }
    grec *r = rec_alloc(k);
    if (!r) return LEDGER_ENOMEM;
    int rc = rec_read(c, r, key, klen);
    if (rc != LEDGER_OK) {
        k->used_in_last--;
        return rc;
    }
    map_insert(k->map, k->cap, r);
    k->nmap++;
    c->last[g] = r;
    *out = r;
    return LEDGER_OK;
}

static int node_get(tctx *c, unsigned d, const uint8_t path[32], node *out) {
    TEM_ASSERT(d < 256);
    grec *r;
    int rc = group_get(c, d / GROUP_LEVELS, path, &r);
    if (rc != LEDGER_OK) return rc;
    unsigned s = group_slot(d, path);
    if (!(r->present >> s & 1)) {
        out->kind = N_EMPTY;
        return LEDGER_OK;
    }
    out->kind = r->kind[s];
    memcpy(out->a, r->ab[s], 32);
    memcpy(out->b, r->ab[s] + 32, 32);
    return LEDGER_OK;
}

/* Bulk mode's node record: u8(d) || ceil(d/8) path bytes (bits past d zeroed) || kind || a || b. */
static size_t node_key(uint8_t key[33], unsigned d, const uint8_t path[32]) {
    TEM_ASSERT(d < 256);
    size_t nb = (d + 7) / 8;
    key[0] = (uint8_t)d;
    memcpy(key + 1, path, nb);
    if (d & 7) key[nb] &= (uint8_t)(0xFF << (8 - (d & 7)));
    return 1 + nb;
}

/* Sets n at (d, path), or clears the slot when n is empty. */
static int node_put(tctx *c, unsigned d, const uint8_t path[32], const node *n) {
    c->stats->writes++;
    if (c->bulk) {
        TEM_ASSERT(n->kind != N_EMPTY);
        uint8_t key[33];
        size_t kl = node_key(key, d, path), rec = kl + 65;
        if (c->bklen[d] + rec > c->bkcap[d]) {
            size_t nc = c->bkcap[d] ? 2 * c->bkcap[d] : 4096;
            while (nc < c->bklen[d] + rec) nc *= 2;
            uint8_t *nb = tem_realloc(c->bk[d], nc);
            if (!nb) return LEDGER_ENOMEM;
            c->bk[d] = nb;
            c->bkcap[d] = nc;
        }
        uint8_t *w = c->bk[d] + c->bklen[d];
        memcpy(w, key, kl);
        w[kl] = (uint8_t)n->kind;
        memcpy(w + kl + 1, n->a, 32);
        memcpy(w + kl + 33, n->b, 32);
        c->bklen[d] += rec;
        return LEDGER_OK;
    }
    grec *r;
    int rc = group_get(c, d / GROUP_LEVELS, path, &r);
    if (rc != LEDGER_OK) return rc;
    TEM_ASSERT(!c->peek);
    unsigned s = group_slot(d, path);
    if (n->kind == N_EMPTY) {
        if (!(r->present >> s & 1)) return LEDGER_OK;
        r->present &= (uint16_t)~(1u << s);
    } else {
        r->present |= (uint16_t)(1u << s);
        r->kind[s] = (uint8_t)n->kind;
        memcpy(r->ab[s], n->a, 32);
        memcpy(r->ab[s] + 32, n->b, 32);
    }
    if (!r->dirty) c->k->ndirty++;
    r->dirty = true;
    return LEDGER_OK;
}

static int grec_cmp(const void *a, const void *b) {
    const grec *x = *(const grec *const *)a, *y = *(const grec *const *)b;
    size_t n = x->klen < y->klen ? x->klen : y->klen;
    int c = memcmp(x->key, y->key, n);
    return c ? c : (int)x->klen - (int)y->klen;
}

/* Writes back the changed records in key order (neighbouring puts share B-tree pages); they stay
 * cached, clean. On error the cache no longer says which records the txn holds: the caller
 * aborts the txn and clears the cache. */
static int cache_flush(ledger__smt_cache *k, MDB_txn *txn, MDB_dbi dbi) {
    if (k->ndirty == 0) return LEDGER_OK;
    grec **d = tem_malloc(k->ndirty * sizeof *d);
    if (!d) return LEDGER_ENOMEM;
    size_t nd = 0;
    for (size_t i = 0; i < k->cap; i++)
        if (k->map[i] && k->map[i]->dirty) {
            TEM_ASSERT(nd < k->ndirty);
            d[nd++] = k->map[i];
        }
    TEM_ASSERT(nd == k->ndirty);
    qsort(d, nd, sizeof *d, grec_cmp);
    int rc = LEDGER_OK;
    for (size_t i = 0; i < nd && rc == LEDGER_OK; i++) {
        grec *r = d[i];
        MDB_val key = {r->klen, r->key};
        if (r->present == 0) {
            int mrc = mdb_del(txn, dbi, &key, NULL);
            rc = mrc == MDB_NOTFOUND ? LEDGER_OK : map_err(mrc);
        } else {
            uint8_t val[GROUP_VAL_MAX];
            MDB_val v = {group_encode(r, val), val};
            rc = map_err(mdb_put(txn, dbi, &key, &v, 0));
        }
        if (rc == LEDGER_OK) r->dirty = false;
    }
    tem_free(d);
    if (rc == LEDGER_OK) k->ndirty = 0;
    return rc;
}

static void cache_clear(ledger__smt_cache *k) {
    for (size_t i = 0; i < k->nchunks; i++) tem_free(k->chunks[i]);
    tem_free(k->chunks);
    tem_free(k->map);
    memset(k, 0, sizeof *k);
}

static void node_hash(tctx *c, const node *n, uint8_t out[32]) {
    if (n->kind == N_EMPTY) {
        memcpy(out, ZERO, 32);
        return;
    }
    c->stats->hashes++;
    if (n->kind == N_LEAF) ledger__smt_leaf(out, n->a, n->b);
    else inner_hash(out, n->a, n->b);
}

static size_t op_split(const ledger__smt_op *ops, size_t n, unsigned d) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (bit_at(ops[mid].kh, d)) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

/* Position (d, path of ops/extra) holds nothing yet (no records at or below it). Builds the
 * subtree of the inserts in ops plus `extra` (a leaf pushed down, may be NULL), writes every
 * record strictly below d and returns the content for d itself in *out. */
static int build(tctx *c, unsigned d, const ledger__smt_op *ops, size_t n, const ledger__smt_op *extra, node *out) {
    size_t live = extra ? 1 : 0;
    const ledger__smt_op *one = extra;
    for (size_t i = 0; i < n && live < 2; i++)
        if (!ops[i].del) {
            live++;
            one = &ops[i];
        }
    if (live == 0) {
        out->kind = N_EMPTY;
        return LEDGER_OK;
    }
    if (live == 1) {
        out->kind = N_LEAF;
        memcpy(out->a, one->kh, 32);
        memcpy(out->b, one->vh, 32);
        return LEDGER_OK;
    }
    TEM_ASSERT(d < 255); /* children live at d + 1, which must fit the record key */
    size_t s = op_split(ops, n, d);
    const ledger__smt_op *xl = NULL, *xr = NULL;
    if (extra) {
        if (bit_at(extra->kh, d)) xr = extra;
        else xl = extra;
    }
    node l, r;
    int rc;
    if ((rc = build(c, d + 1, ops, s, xl, &l)) != LEDGER_OK) return rc;
    if ((rc = build(c, d + 1, ops + s, n - s, xr, &r)) != LEDGER_OK) return rc;
    if (l.kind != N_EMPTY && (rc = node_put(c, d + 1, s > 0 ? ops[0].kh : xl->kh, &l)) != LEDGER_OK) return rc;
    if (r.kind != N_EMPTY && (rc = node_put(c, d + 1, s < n ? ops[s].kh : xr->kh, &r)) != LEDGER_OK) return rc;
    out->kind = N_INNER;
    node_hash(c, &l, out->a);
    node_hash(c, &r, out->b);
    return LEDGER_OK;
}

/* Applies ops (non-empty, sorted, all on the path of this position) to the subtree at depth d
 * whose current content is *cur. Writes/deletes every record strictly below d and returns the
 * new content for d in *out (the caller writes it). */
static int update(tctx *c, unsigned d, const node *cur, const ledger__smt_op *ops, size_t n, node *out) {
    TEM_ASSERT(n > 0);
    if (cur->kind == N_EMPTY) return build(c, d, ops, n, NULL, out);
    if (cur->kind == N_LEAF) {
        /* The resident key becomes one more insert unless an op rewrites or deletes it. */
        for (size_t i = 0; i < n; i++)
            if (memcmp(ops[i].kh, cur->a, 32) == 0) return build(c, d, ops, n, NULL, out);
        ledger__smt_op extra = {.del = false};
        memcpy(extra.kh, cur->a, 32);
        memcpy(extra.vh, cur->b, 32);
        return build(c, d, ops, n, &extra, out);
    }
    TEM_ASSERT(d < 255);
    size_t s = op_split(ops, n, d);
    const ledger__smt_op *side_ops[2] = {ops, ops + s};
    size_t side_n[2] = {s, n - s};
    node nw[2];
    bool changed[2] = {false, false};
    uint8_t h[2][32];
    memcpy(h[0], cur->a, 32);
    memcpy(h[1], cur->b, 32);
    int rc;
    for (int side = 0; side < 2; side++) {
        if (side_n[side] == 0) continue;
        node ch;
        if ((rc = node_get(c, d + 1, side_ops[side][0].kh, &ch)) != LEDGER_OK) return rc;
        if ((rc = update(c, d + 1, &ch, side_ops[side], side_n[side], &nw[side])) != LEDGER_OK) return rc;
        changed[side] = true;
        node_hash(c, &nw[side], h[side]);
    }
    /* A side path for the record keys: an op's key hash for a changed side, else the other
     * side's path with bit d flipped. */
    uint8_t path[2][32];
    for (int side = 0; side < 2; side++) {
        const uint8_t *src = side_n[side] ? side_ops[side][0].kh : side_ops[!side][0].kh;
        memcpy(path[side], src, 32);
        if (!side_n[side]) path[side][d >> 3] ^= (uint8_t)(0x80 >> (d & 7));
    }
    bool empty[2] = {memcmp(h[0], ZERO, 32) == 0, memcmp(h[1], ZERO, 32) == 0};
    if (empty[0] && empty[1]) {
        for (int side = 0; side < 2; side++)
            if (changed[side] && (rc = node_put(c, d + 1, path[side], &nw[side])) != LEDGER_OK) return rc;
        out->kind = N_EMPTY;
        return LEDGER_OK;
    }
    if (empty[0] || empty[1]) {
        int full = empty[0] ? 1 : 0;
        node other;
        if (changed[full]) other = nw[full];
        else if ((rc = node_get(c, d + 1, path[full], &other)) != LEDGER_OK) return rc;
        if (other.kind == N_LEAF) {
            /* One key left below: its leaf moves up to this position. */
            node none = {.kind = N_EMPTY};
            if ((rc = node_put(c, d + 1, path[0], &none)) != LEDGER_OK) return rc;
            if ((rc = node_put(c, d + 1, path[1], &none)) != LEDGER_OK) return rc;
            *out = other;
            return LEDGER_OK;
        }
    }
    for (int side = 0; side < 2; side++)
        if (changed[side] && (rc = node_put(c, d + 1, path[side], &nw[side])) != LEDGER_OK) return rc;
    out->kind = N_INNER;
    memcpy(out->a, h[0], 32);
    memcpy(out->b, h[1], 32);
    return LEDGER_OK;
}

/* Bulk mode's end: merges the per-depth node buckets of each group into group records and
 * appends them, group by group, each group's records in prefix order. */
static int bulk_flush(tctx *c) {
    MDB_cursor *cur;
    int rc = map_err(mdb_cursor_open(c->txn, c->dbi, &cur));
    if (rc != LEDGER_OK) return rc;
    for (unsigned g = 0; g < 64 && rc == LEDGER_OK; g++) {
        size_t off[GROUP_LEVELS] = {0}, rec[GROUP_LEVELS];
        for (unsigned r = 0; r < GROUP_LEVELS; r++) rec[r] = 1 + (g * GROUP_LEVELS + r + 7) / 8 + 65;
        for (;;) {
            /* the smallest group prefix among the four depths' next nodes */
            uint8_t best[33], k[33];
            size_t bl = 0;
            for (unsigned r = 0; r < GROUP_LEVELS; r++) {
                unsigned d = g * GROUP_LEVELS + r;
                if (off[r] >= c->bklen[d]) continue;
                size_t kl = group_key(k, g, c->bk[d] + off[r] + 1);
                if (bl == 0 || memcmp(k, best, kl) < 0) {
                    memcpy(best, k, kl);
                    bl = kl;
                }
            }
            if (bl == 0) break;
            grec gr = {.present = 0};
            for (unsigned r = 0; r < GROUP_LEVELS; r++) {
                unsigned d = g * GROUP_LEVELS + r;
                while (off[r] < c->bklen[d]) {
                    const uint8_t *e = c->bk[d] + off[r];
                    group_key(k, g, e + 1);
                    if (memcmp(k, best, bl) != 0) break;
                    uint8_t path[32] = {0};
                    memcpy(path, e + 1, rec[r] - 66);
                    unsigned s = group_slot(d, path);
                    TEM_ASSERT(!(gr.present >> s & 1));
                    gr.present |= (uint16_t)(1u << s);
                    gr.kind[s] = e[rec[r] - 65];
                    memcpy(gr.ab[s], e + rec[r] - 64, 64);
                    off[r] += rec[r];
                }
            }
            uint8_t val[GROUP_VAL_MAX];
            MDB_val mk = {bl, best}, mv = {group_encode(&gr, val), val};
            if ((rc = map_err(mdb_cursor_put(cur, &mk, &mv, MDB_APPEND))) != LEDGER_OK) break;
        }
    }
    mdb_cursor_close(cur);
    return rc;
}

static void bulk_free(tctx *c) {
    for (unsigned d = 0; d < 256; d++) tem_free(c->bk[d]);
}

/* The update proper: ops applied through c's cache, nothing written to LMDB. */
static int update_root(tctx *c, const ledger__smt_op *ops, size_t n, uint8_t root[32]) {
    for (size_t i = 1; i < n; i++) TEM_ASSERT(memcmp(ops[i - 1].kh, ops[i].kh, 32) < 0);
    node cur, nw;
    int rc = node_get(c, 0, ZERO, &cur);
    if (rc != LEDGER_OK) return rc;
    if (n == 0) nw = cur;
    else {
        if ((rc = update(c, 0, &cur, ops, n, &nw)) != LEDGER_OK) return rc;
        if ((rc = node_put(c, 0, ZERO, &nw)) != LEDGER_OK) return rc;
    }
    node_hash(c, &nw, root);
    return LEDGER_OK;
}

int ledger__smt_update(void *txn, unsigned dbi, const ledger__smt_op *ops, size_t n, uint8_t root[32],
                       ledger__smt_stats *stats) {
    ledger__smt_stats local = {0};
    ledger__smt_cache k = {0};
    tctx c = {.txn = txn, .dbi = dbi, .stats = stats ? stats : &local, .k = &k};
    node cur, nw;
    int rc = node_get(&c, 0, ZERO, &cur);
    MDB_stat ms;
    if (rc == LEDGER_OK && n >= 1024 && cur.kind == N_EMPTY && mdb_stat(txn, dbi, &ms) == 0 && ms.ms_entries == 0) {
        /* A genesis: build the whole tree in one pass and append it sorted. */
        for (size_t i = 1; i < n; i++) TEM_ASSERT(memcmp(ops[i - 1].kh, ops[i].kh, 32) < 0);
        c.bulk = true;
        rc = build(&c, 0, ops, n, NULL, &nw);
        if (rc == LEDGER_OK && nw.kind != N_EMPTY) rc = node_put(&c, 0, ZERO, &nw);
        if (rc == LEDGER_OK) rc = bulk_flush(&c);
        bulk_free(&c);
        if (rc == LEDGER_OK) node_hash(&c, &nw, root);
    } else if (rc == LEDGER_OK && (rc = update_root(&c, ops, n, root)) == LEDGER_OK) {
        rc = cache_flush(&k, txn, dbi);
    }
    cache_clear(&k);
    return rc;
}

ledger__smt_cache *ledger__smt_cache_new(void) { return tem_calloc(1, sizeof(ledger__smt_cache)); }
void ledger__smt_cache_free(ledger__smt_cache *k) {
    if (!k) return;
    cache_clear(k);
    tem_free(k);
}
void ledger__smt_cache_clear(ledger__smt_cache *k) { cache_clear(k); }
size_t ledger__smt_cache_dirty(const ledger__smt_cache *k) { return k->ndirty; }
size_t ledger__smt_cache_records(const ledger__smt_cache *k) { return k->nmap; }

int ledger__smt_update_cached(ledger__smt_cache *k, void *txn, unsigned dbi, const ledger__smt_op *ops, size_t n,
                              uint8_t root[32], ledger__smt_stats *stats) {
    ledger__smt_stats local = {0};
    tctx c = {.txn = txn, .dbi = dbi, .stats = stats ? stats : &local, .k = k};
    return update_root(&c, ops, n, root);
}

int ledger__smt_cache_flush(ledger__smt_cache *k, void *txn, unsigned dbi) { return cache_flush(k, txn, dbi); }

int ledger__smt_prove_cached(ledger__smt_cache *k, void *txn, unsigned dbi, const uint8_t kh[32],
                             ledger_state_proof *p) {
    ledger__smt_stats st = {0};
    ledger__smt_cache none = {0};
    tctx c = {.txn = txn, .dbi = dbi, .stats = &st, .k = k ? k : &none, .peek = true};
    memset(p, 0, sizeof *p);
    node cur;
    int rc = node_get(&c, 0, ZERO, &cur);
    unsigned d = 0;
    while (rc == LEDGER_OK) {
        if (cur.kind == N_EMPTY) {
            p->kind = LEDGER_PROOF_ABSENT_EMPTY;
            break;
        }
        if (cur.kind == N_LEAF) {
            p->kind = memcmp(cur.a, kh, 32) == 0 ? LEDGER_PROOF_PRESENT : LEDGER_PROOF_ABSENT_LEAF;
            memcpy(p->leaf_kh, cur.a, 32);
            memcpy(p->leaf_vh, cur.b, 32);
            break;
        }
        if (d >= 255) {
            rc = LEDGER_ECORRUPT;
            break;
        }
        int b = bit_at(kh, d);
        memcpy(p->sibling[d], b ? cur.a : cur.b, 32);
        uint8_t child[32];
        memcpy(child, b ? cur.b : cur.a, 32); /* cur is overwritten by the read below */
        d++;
        if (memcmp(child, ZERO, 32) == 0) {
            p->kind = LEDGER_PROOF_ABSENT_EMPTY;
            break;
        }
        rc = node_get(&c, d, kh, &cur);
        /* The stored child must hash to what its parent says, or the table is damaged. */
        uint8_t got[32];
        if (rc == LEDGER_OK) {
            node_hash(&c, &cur, got);
            if (memcmp(got, child, 32) != 0) rc = LEDGER_ECORRUPT;
        }
    }
    p->depth = (uint16_t)d;
    return rc;
}

int ledger__smt_prove_db(void *txn, unsigned dbi, const uint8_t kh[32], ledger_state_proof *p) {
    return ledger__smt_prove_cached(NULL, txn, dbi, kh, p);
}

int ledger__smt_root_db(void *txn, unsigned dbi, uint8_t root[32]) {
    return ledger__smt_update(txn, dbi, NULL, 0, root, NULL);
}

/* ------------------------------------------------------------------ proof encoding */
int ledger_state_proof_encode(const ledger_state_proof *p, uint8_t *out, size_t cap, size_t *len) {
    if (p->depth > LEDGER_STATE_PROOF_DEPTH_MAX || p->kind > LEDGER_PROOF_ABSENT_LEAF) return LEDGER_EINVAL;
    size_t nb = ((size_t)p->depth + 7) / 8, need = 4 + nb;
    for (unsigned i = 0; i < p->depth; i++) need += memcmp(p->sibling[i], ZERO, 32) ? 32 : 0;
    if (p->kind != LEDGER_PROOF_ABSENT_EMPTY) need += 64;
    if (need > cap) return LEDGER_EFULL;
    out[0] = 1; /* version */
    out[1] = p->kind;
    out[2] = (uint8_t)(p->depth & 0xFF);
    out[3] = (uint8_t)(p->depth >> 8);
    uint8_t *bm = out + 4, *w = out + 4 + nb;
    memset(bm, 0, nb);
    for (unsigned i = 0; i < p->depth; i++) {
        if (memcmp(p->sibling[i], ZERO, 32) == 0) continue;
        bm[i >> 3] |= (uint8_t)(0x80 >> (i & 7));
        memcpy(w, p->sibling[i], 32);
        w += 32;
    }
    if (p->kind != LEDGER_PROOF_ABSENT_EMPTY) {
        memcpy(w, p->leaf_kh, 32);
        memcpy(w + 32, p->leaf_vh, 32);
        w += 64;
    }
    TEM_ASSERT((size_t)(w - out) == need);
    *len = need;
    return LEDGER_OK;
}

int ledger_state_proof_decode(const uint8_t *buf, size_t len, ledger_state_proof *p) {
    if (len < 4 || buf[0] != 1 || buf[1] > LEDGER_PROOF_ABSENT_LEAF) return LEDGER_EDECODE;
    unsigned depth = buf[2] | (unsigned)buf[3] << 8;
    if (depth > LEDGER_STATE_PROOF_DEPTH_MAX) return LEDGER_EDECODE;
    size_t nb = (depth + 7) / 8;
    if (len < 4 + nb) return LEDGER_EDECODE;
    const uint8_t *bm = buf + 4, *r = buf + 4 + nb, *end = buf + len;
    memset(p, 0, sizeof *p);
    p->kind = buf[1];
    p->depth = (uint16_t)depth;
    for (unsigned i = 0; i < depth; i++) {
        if (!(bm[i >> 3] & (0x80 >> (i & 7)))) continue;
        if (end - r < 32) return LEDGER_EDECODE;
        memcpy(p->sibling[i], r, 32);
        r += 32;
    }
    /* Bits past depth in the last bitmap byte must be zero: one proof, one encoding. */
    if ((depth & 7) && (bm[nb - 1] & (0xFF >> (depth & 7)))) return LEDGER_EDECODE;
    if (p->kind != LEDGER_PROOF_ABSENT_EMPTY) {
        if (end - r < 64) return LEDGER_EDECODE;
        memcpy(p->leaf_kh, r, 32);
        memcpy(p->leaf_vh, r + 32, 32);
        r += 64;
    }
    return r == end ? LEDGER_OK : LEDGER_EDECODE;
}
