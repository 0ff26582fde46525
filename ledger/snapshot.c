/* snapshot.c: state snapshots for state sync (docs/ledger.md, "State sync"; snapshot.h). The
 * chunk hashes are computed here from the entries themselves, with their own small
 * implementation of the tree's definition, not from the tree's LMDB records: the serving side
 * then depends only on the state table, and the manifest it builds is checked against the root
 * the store recorded for that height before anyone is offered it. */
#include "ledger/ledger_internal.h"
#include "ledger/snapshot.h"

#include <errno.h>
#include <lmdb.h>
#include <sys/stat.h>

static const uint8_t ZERO[32];


static int map_err(int rc, const char *what) {
    if (rc == 0) return LEDGER_OK;
    if (rc == MDB_NOTFOUND) return LEDGER_ENOTFOUND;
    fprintf(stderr, "ledger: snapshot lmdb %s: %s\n", what, mdb_strerror(rc));
    if (rc == MDB_MAP_FULL) return LEDGER_EFULL;
    if (rc == ENOSPC || rc == EDQUOT) return LEDGER_EDISKFULL;
    if (rc == ENOMEM) return LEDGER_ENOMEM;
    return LEDGER_EIO;
}

static uint32_t prefix_of(unsigned depth, const uint8_t kh[32]) {
    uint32_t v = (uint32_t)kh[0] << 24 | (uint32_t)kh[1] << 16 | (uint32_t)kh[2] << 8 | kh[3];
    return depth ? v >> (32 - depth) : 0;
}

uint32_t ledger_snap_chunk_of(unsigned depth, const void *key, size_t klen) {
    uint8_t kh[32];
    ledger_sha256(kh, key, klen);
    return prefix_of(depth, kh);
}

/* ------------------------------------------------------------------ verification */
static void inner(uint8_t out[32], const uint8_t l[32], const uint8_t r[32]) {
    uint8_t buf[65];
    buf[0] = 0x01;
    memcpy(buf + 1, l, 32);
    memcpy(buf + 33, r, 32);
    ledger_sha256(out, buf, sizeof buf);
}

static int rec_cmp(const void *a, const void *b) { return memcmp(a, b, 32); }

int ledger_snap_chunk_hash(unsigned depth, uint32_t index, const ledger_snap_entry *e, size_t n, uint8_t out[32]) {
    if (depth < LEDGER_SNAP_DEPTH_MIN || depth > LEDGER_SNAP_DEPTH_MAX || index >> depth) return LEDGER_EINVAL;
    ledger__smt_leafrec *a = tem_malloc((n ? n : 1) * sizeof *a);
    if (!a) return LEDGER_ENOMEM;
    int rc = LEDGER_OK;
    for (size_t i = 0; i < n && rc == LEDGER_OK; i++) {
        if (e[i].klen == 0) rc = LEDGER_EINVAL;
        ledger_sha256(a[i].kh, e[i].key, e[i].klen);
        ledger_sha256(a[i].vh, e[i].val, e[i].vlen);
        if (prefix_of(depth, a[i].kh) != index) rc = LEDGER_EINVAL;
    }
    if (rc == LEDGER_OK) {
        qsort(a, n, sizeof *a, rec_cmp);
        for (size_t i = 1; i < n; i++)
            if (memcmp(a[i - 1].kh, a[i].kh, 32) == 0) rc = LEDGER_EINVAL; /* the same key twice */
    }
    if (rc == LEDGER_OK) ledger__smt_subtree_mem(a, 0, n, depth, out);
    tem_free(a);
    return rc;
}

int ledger_snap_chunk_verify(unsigned depth, uint32_t index, const uint8_t hash[32], uint64_t count,
                             const ledger_snap_entry *e, size_t n) {
    if (count != n) return LEDGER_EROOT;
    uint8_t h[32];
    int rc = ledger_snap_chunk_hash(depth, index, e, n, h);
    if (rc != LEDGER_OK) return rc;
    return memcmp(h, hash, 32) == 0 ? LEDGER_OK : LEDGER_EROOT;
}

int ledger_snap_manifest_root(unsigned depth, const uint8_t (*hashes)[32], const uint64_t *counts, uint8_t root[32]) {
    if (depth < LEDGER_SNAP_DEPTH_MIN || depth > LEDGER_SNAP_DEPTH_MAX) return LEDGER_EINVAL;
    size_t w = (size_t)1 << depth;
    uint8_t(*h)[32] = tem_malloc(w * 32);
    uint8_t *cls = tem_malloc(w); /* entries below: 0, 1 or 2 (= two or more) */
    if (!h || !cls) {
        tem_free(h);
        tem_free(cls);
        return LEDGER_ENOMEM;
    }
    int rc = LEDGER_OK;
    for (size_t i = 0; i < w; i++) {
        bool empty = memcmp(hashes[i], ZERO, 32) == 0;
        if (empty != (counts[i] == 0)) rc = LEDGER_EINVAL;
        memcpy(h[i], hashes[i], 32);
        cls[i] = counts[i] > 2 ? 2 : (uint8_t)counts[i];
    }
    for (; rc == LEDGER_OK && w > 1; w /= 2) {
        for (size_t i = 0; i < w / 2; i++) {
            uint8_t c = (uint8_t)(cls[2 * i] + cls[2 * i + 1]);
            c = c > 2 ? 2 : c;
            uint8_t out[32];
            if (c == 0) memcpy(out, ZERO, 32);
            else if (c == 1) memcpy(out, cls[2 * i] ? h[2 * i] : h[2 * i + 1], 32); /* a lone leaf moves up */
            else inner(out, h[2 * i], h[2 * i + 1]);
            memcpy(h[i], out, 32);
            cls[i] = c;
        }
    }
    if (rc == LEDGER_OK) memcpy(root, h[0], 32);
    tem_free(h);
    tem_free(cls);
    return rc;
}

int ledger_snap_anchor_check(const ledger_genesis *g, uint64_t h, const uint8_t *blk, size_t blen, const uint8_t *next,
                             size_t nlen, const uint8_t *cert, size_t clen, ledger_snap_anchor *a) {
    if (h == 0 || h == UINT64_MAX) return LEDGER_EHEIGHT;
    Tem__V1__Block *b = tem__v1__block__unpack(&ledger_pb_allocator, blen, blk);
    Tem__V1__Block *nb = tem__v1__block__unpack(&ledger_pb_allocator, nlen, next);
    int rc = LEDGER_OK;
    uint8_t bh[32], nh[32];
    if (!b || !nb || !b->header || !nb->header) rc = LEDGER_EDECODE;
    else if (b->header->height != h || nb->header->height != h + 1) rc = LEDGER_EHEIGHT;
    else if (strcmp(nb->header->chain_id, g->chain_id) != 0 || strcmp(b->header->chain_id, g->chain_id) != 0) rc = LEDGER_ECHAIN;
    else if (nb->header->genesis_hash.len != 32 || memcmp(nb->header->genesis_hash.data, g->hash, 32) != 0) rc = LEDGER_EBLOCK;
    else if (ledger_block_hash(b->header, bh) != LEDGER_OK || ledger_block_hash(nb->header, nh) != LEDGER_OK) rc = LEDGER_EBLOCK;
    else if (nb->header->state_root.len != 32 || nb->header->receipts_root.len != 32) rc = LEDGER_EBLOCK;
    else if (nb->header->prev_hash.len != 32 || memcmp(nb->header->prev_hash.data, bh, 32) != 0) rc = LEDGER_EPREV;
    else rc = ledger_cert_verify(g, cert, clen, h + 1, nh);
    if (rc == LEDGER_OK) {
        memset(a, 0, sizeof *a);
        a->height = h;
        memcpy(a->block_hash, bh, 32);
        a->time_ms = b->header->time_ms;
        memcpy(a->state_root, nb->header->state_root.data, 32);
        memcpy(a->receipts_root, nb->header->receipts_root.data, 32);
    }
    if (b) tem__v1__block__free_unpacked(b, &ledger_pb_allocator);
    if (nb) tem__v1__block__free_unpacked(nb, &ledger_pb_allocator);
    return rc;
}

/* ------------------------------------------------------------------ serving */
typedef struct {
    uint8_t kh[32], vh[32];
    const uint8_t *key;
    uint32_t klen;
} build_rec;

typedef struct {
    const uint8_t *key;
    uint32_t klen;
} key_ref;

struct ledger_snapshot {
    MDB_txn *txn; /* the read view */
    MDB_dbi state;
    uint64_t height;
    uint8_t root[32]; /* the store's root at height */
    bool built;
    unsigned depth;
    size_t n;
    key_ref *keys;     /* every key, in chunk order */
    size_t *start;     /* 2^depth + 1 offsets into keys */
    uint8_t (*hashes)[32];
    uint64_t *counts;
};

int ledger_snapshot_open(ledger_store *s, ledger_snapshot **out) {
    ledger__store_handles h;
    ledger__store_handles_get(s, &h);
    ledger_snapshot *sn = tem_calloc(1, sizeof *sn);
    if (!sn) return LEDGER_ENOMEM;
    int rc = map_err(mdb_txn_begin(h.env, NULL, MDB_RDONLY, &sn->txn), "begin ro");
    if (rc != LEDGER_OK) {
        tem_free(sn);
        return rc;
    }
    uint8_t rr[32];
    sn->state = h.state;
    sn->height = ledger_store_height(s);
    ledger_store_roots(s, sn->root, rr);
    *out = sn;
    return LEDGER_OK;
}

static int build_cmp(const void *a, const void *b) { return memcmp(a, b, 32); }

int ledger_snapshot_build(ledger_snapshot *sn) {
    MDB_stat ms;
    int rc = map_err(mdb_stat(sn->txn, sn->state, &ms), "stat");
    if (rc != LEDGER_OK) return rc;
    size_t n = ms.ms_entries, got = 0;
    uint64_t bytes = 0;
    build_rec *a = tem_malloc((n ? n : 1) * sizeof *a);
    sn->keys = tem_malloc((n ? n : 1) * sizeof *sn->keys);
    if (!a || !sn->keys) {
        tem_free(a);
        return LEDGER_ENOMEM;
    }
    MDB_cursor *cur;
    if ((rc = map_err(mdb_cursor_open(sn->txn, sn->state, &cur), "cursor")) != LEDGER_OK) {
        tem_free(a);
        return rc;
    }
    MDB_val k, v;
    int mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    while (mrc == 0 && got < n) {
        build_rec *r = &a[got++];
        ledger_sha256(r->kh, k.mv_data, k.mv_size);
        ledger_sha256(r->vh, v.mv_data, v.mv_size);
        r->key = k.mv_data; /* points into the map: valid while the read txn is open */
        r->klen = (uint32_t)k.mv_size;
        bytes += k.mv_size + v.mv_size;
        mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (mrc != 0 && mrc != MDB_NOTFOUND) rc = map_err(mrc, "cursor get");
    else if (got != n || mrc == 0) rc = LEDGER_ECORRUPT;
    /* Deeper cuts while the average chunk is over its entry or byte budget. */
    unsigned depth = LEDGER_SNAP_DEPTH_DEFAULT;
    while (depth < LEDGER_SNAP_DEPTH_MAX && ((n >> depth) > LEDGER_SNAP_CHUNK_ENTRIES || (bytes >> depth) > LEDGER_SNAP_CHUNK_BYTES))
        depth++;
    size_t w = (size_t)1 << depth;
    if (rc == LEDGER_OK) {
        sn->start = tem_calloc(w + 1, sizeof *sn->start);
        sn->hashes = tem_calloc(w, 32);
        sn->counts = tem_calloc(w, sizeof *sn->counts);
        if (!sn->start || !sn->hashes || !sn->counts) rc = LEDGER_ENOMEM;
    }
    if (rc == LEDGER_OK) {
        /* In key-hash order every chunk is one run, and a run is already in the order the
         * tree splits it. */
        qsort(a, n, sizeof *a, build_cmp);
        ledger__smt_leafrec *lr = tem_malloc((n ? n : 1) * sizeof *lr);
        if (!lr) rc = LEDGER_ENOMEM;
        for (size_t i = 0; lr && i < n; i++) {
            memcpy(lr[i].kh, a[i].kh, 32);
            memcpy(lr[i].vh, a[i].vh, 32);
            sn->keys[i] = (key_ref){a[i].key, a[i].klen};
        }
        size_t i = 0;
        for (size_t c = 0; lr && c < w; c++) {
            sn->start[c] = i;
            while (i < n && prefix_of(depth, a[i].kh) == c) i++;
            sn->counts[c] = i - sn->start[c];
            ledger__smt_subtree_mem(lr, sn->start[c], i, depth, sn->hashes[c]);
        }
        sn->start[w] = n;
        tem_free(lr);
    }
    tem_free(a);
    if (rc != LEDGER_OK) return rc;
    sn->depth = depth;
    sn->n = n;
    uint8_t root[32];
    if ((rc = ledger_snap_manifest_root(depth, (const uint8_t(*)[32])sn->hashes, sn->counts, root)) != LEDGER_OK) return rc;
    if (memcmp(root, sn->root, 32) != 0) {
        fprintf(stderr, "ledger: snapshot of height %llu does not hash to the stored state root\n",
                (unsigned long long)sn->height);
        return LEDGER_ECORRUPT;
    }
    sn->built = true;
    return LEDGER_OK;
}

uint64_t ledger_snapshot_height(const ledger_snapshot *sn) { return sn->height; }
unsigned ledger_snapshot_depth(const ledger_snapshot *sn) { return sn->depth; }
const uint8_t (*ledger_snapshot_hashes(const ledger_snapshot *sn))[32] { return (const uint8_t(*)[32])sn->hashes; }
const uint64_t *ledger_snapshot_counts(const ledger_snapshot *sn) { return sn->counts; }

int ledger_snapshot_chunk(ledger_snapshot *sn, uint32_t index, ledger_snap_entry **out, size_t *nout) {
    if (!sn->built || index >> sn->depth) return LEDGER_EINVAL;
    size_t lo = sn->start[index], n = sn->start[index + 1] - lo;
    ledger_snap_entry *e = tem_malloc((n ? n : 1) * sizeof *e);
    if (!e) return LEDGER_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        MDB_val k = {sn->keys[lo + i].klen, (void *)sn->keys[lo + i].key}, v;
        int rc = map_err(mdb_get(sn->txn, sn->state, &k, &v), "get");
        if (rc != LEDGER_OK) {
            tem_free(e);
            return rc == LEDGER_ENOTFOUND ? LEDGER_ECORRUPT : rc;
        }
        e[i] = (ledger_snap_entry){k.mv_data, k.mv_size, v.mv_data, v.mv_size};
    }
    *out = e;
    *nout = n;
    return LEDGER_OK;
}

void ledger_snapshot_close(ledger_snapshot *sn) {
    if (!sn) return;
    if (sn->txn) mdb_txn_abort(sn->txn);
    tem_free(sn->keys);
    tem_free(sn->start);
    tem_free(sn->hashes);
    tem_free(sn->counts);
    tem_free(sn);
}

/* ------------------------------------------------------------------ joining */
/* Tables: "meta" ("target" -> the target's bytes; "c" || u32be index -> u64le entries) and
 * "entries" (u32be chunk index || key -> value, every stored chunk's entries). The index comes
 * first so that one chunk's entries, put in key order, land on neighbouring pages: keyed by the
 * bare key they would scatter over the whole table (a chunk is a hash prefix), and staging 1M
 * entries cost several times more. */
struct ledger_snap_stage {
    MDB_env *env;
    MDB_dbi meta, entries;
};

int ledger_snap_stage_open(const char *dir, ledger_snap_stage **out) {
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) return LEDGER_EIO;
    ledger_snap_stage *st = tem_calloc(1, sizeof *st);
    if (!st) return LEDGER_ENOMEM;
    MDB_txn *txn = NULL;
    int rc = map_err(mdb_env_create(&st->env), "env create");
    if (rc == LEDGER_OK) rc = map_err(mdb_env_set_maxdbs(st->env, 4), "maxdbs");
    if (rc == LEDGER_OK) rc = map_err(mdb_env_set_mapsize(st->env, (size_t)64 << 30), "mapsize");
    /* MDB_NOMETASYNC: a system crash may undo the last chunk committed (fetched again), never
     * split a chunk from its record; the install's root check catches anything worse. */
    if (rc == LEDGER_OK) rc = map_err(mdb_env_open(st->env, dir, MDB_NOTLS | MDB_NOMETASYNC, 0600), "env open");
    if (rc == LEDGER_OK) rc = map_err(mdb_txn_begin(st->env, NULL, 0, &txn), "begin");
    if (rc == LEDGER_OK) rc = map_err(mdb_dbi_open(txn, "meta", MDB_CREATE, &st->meta), "dbi");
    if (rc == LEDGER_OK) rc = map_err(mdb_dbi_open(txn, "entries", MDB_CREATE, &st->entries), "dbi");
    if (rc == LEDGER_OK) {
        rc = map_err(mdb_txn_commit(txn), "commit");
        txn = NULL;
    }
    if (txn) mdb_txn_abort(txn);
    if (rc != LEDGER_OK) {
        ledger_snap_stage_close(st);
        return rc;
    }
    *out = st;
    return LEDGER_OK;
}

void ledger_snap_stage_close(ledger_snap_stage *st) {
    if (!st) return;
    if (st->env) mdb_env_close(st->env);
    tem_free(st);
}

int ledger_snap_stage_target(ledger_snap_stage *st, uint8_t **out, size_t *len) {
    return ledger__mdb_get_copy(st->env, st->meta, "target", 6, out, len);
}

static int stage_reset(ledger_snap_stage *st, const uint8_t *target, size_t len) {
    MDB_txn *txn;
    int rc = map_err(mdb_txn_begin(st->env, NULL, 0, &txn), "begin");
    if (rc != LEDGER_OK) return rc;
    rc = map_err(mdb_drop(txn, st->meta, 0), "drop meta");
    if (rc == LEDGER_OK) rc = map_err(mdb_drop(txn, st->entries, 0), "drop entries");
    if (rc == LEDGER_OK && target) {
        MDB_val k = {6, "target"}, v = {len, (void *)target};
        rc = map_err(mdb_put(txn, st->meta, &k, &v, 0), "put target");
    }
    if (rc != LEDGER_OK) {
        mdb_txn_abort(txn);
        return rc;
    }
    return map_err(mdb_txn_commit(txn), "commit");
}

int ledger_snap_stage_begin(ledger_snap_stage *st, const uint8_t *target, size_t len) {
    return stage_reset(st, target, len);
}
int ledger_snap_stage_clear(ledger_snap_stage *st) { return stage_reset(st, NULL, 0); }

bool ledger_snap_stage_has(ledger_snap_stage *st, uint32_t index) {
    MDB_txn *txn;
    if (mdb_txn_begin(st->env, NULL, MDB_RDONLY, &txn) != 0) return false;
    uint8_t key[5] = {'c'};
    tem_put_u32be(key + 1, index);
    MDB_val k = {5, key}, v;
    bool has = mdb_get(txn, st->meta, &k, &v) == 0;
    mdb_txn_abort(txn);
    return has;
}

uint32_t ledger_snap_stage_count(ledger_snap_stage *st) {
    MDB_txn *txn;
    MDB_stat ms;
    if (mdb_txn_begin(st->env, NULL, MDB_RDONLY, &txn) != 0) return 0;
    uint32_t n = 0;
    if (mdb_stat(txn, st->meta, &ms) == 0 && ms.ms_entries > 0) n = (uint32_t)(ms.ms_entries - 1); /* less "target" */
    mdb_txn_abort(txn);
    return n;
}

static int keycmp(const uint8_t *a, size_t al, const uint8_t *b, size_t bl) {
    int c = memcmp(a, b, al < bl ? al : bl);
    return c ? c : (al > bl) - (al < bl);
}
static int entry_ptr_cmp(const void *a, const void *b) {
    const ledger_snap_entry *x = *(const ledger_snap_entry *const *)a, *y = *(const ledger_snap_entry *const *)b;
    return keycmp(x->key, x->klen, y->key, y->klen);
}

int ledger_snap_stage_put(ledger_snap_stage *st, uint32_t index, const ledger_snap_entry *e, size_t n) {
    MDB_txn *txn;
    int rc = map_err(mdb_txn_begin(st->env, NULL, 0, &txn), "begin");
    if (rc != LEDGER_OK) return rc;
    uint8_t key[5] = {'c'}, cnt[8];
    tem_put_u32be(key + 1, index);
    tem_put_u64le(cnt, n);
    MDB_val k = {5, key}, v = {8, cnt};
    int mrc = mdb_put(txn, st->meta, &k, &v, MDB_NOOVERWRITE);
    rc = mrc == MDB_KEYEXIST ? LEDGER_EEXISTS : map_err(mrc, "put chunk mark");
    const ledger_snap_entry **ord = rc == LEDGER_OK ? tem_malloc((n ? n : 1) * sizeof *ord) : NULL;
    if (rc == LEDGER_OK && !ord) rc = LEDGER_ENOMEM;
    for (size_t i = 0; i < n && rc == LEDGER_OK; i++) ord[i] = &e[i];
    if (rc == LEDGER_OK) qsort(ord, n, sizeof *ord, entry_ptr_cmp);
    uint8_t kb[4 + 512];
    tem_put_u32be(kb, index);
    for (size_t i = 0; i < n && rc == LEDGER_OK; i++) {
        if (ord[i]->klen > sizeof kb - 4) {
            rc = LEDGER_EINVAL;
            break;
        }
        memcpy(kb + 4, ord[i]->key, ord[i]->klen);
        MDB_val ek = {4 + ord[i]->klen, kb}, ev = {ord[i]->vlen, (void *)ord[i]->val};
        mrc = mdb_put(txn, st->entries, &ek, &ev, MDB_NOOVERWRITE);
        rc = mrc == MDB_KEYEXIST ? LEDGER_EEXISTS : map_err(mrc, "put entry");
    }
    tem_free(ord);
    if (rc != LEDGER_OK) {
        mdb_txn_abort(txn);
        return rc;
    }
    return map_err(mdb_txn_commit(txn), "commit chunk");
}

static int op_cmp(const void *a, const void *b) { return memcmp(a, b, 32); }

typedef struct {
    const uint8_t *k, *v;
    size_t kl, vl;
} staged;
static int staged_cmp(const void *a, const void *b) {
    const staged *x = a, *y = b;
    return keycmp(x->k, x->kl, y->k, y->kl);
}

int ledger_snap_stage_install(ledger_snap_stage *st, ledger_store *s, const ledger_snap_anchor *a) {
    if (ledger_store_height(s) >= a->height) return LEDGER_EHEIGHT;
    ledger__store_handles h;
    ledger__store_handles_get(s, &h);
    MDB_txn *rtxn = NULL, *wtxn = NULL;
    MDB_cursor *r_cur = NULL, *w_cur = NULL;
    ledger__smt_op *ops = NULL;
    staged *all = NULL;
    MDB_stat ms;
    int rc = map_err(mdb_txn_begin(st->env, NULL, MDB_RDONLY, &rtxn), "begin ro");
    if (rc == LEDGER_OK) rc = map_err(mdb_stat(rtxn, st->entries, &ms), "stat");
    size_t n = rc == LEDGER_OK ? ms.ms_entries : 0, got = 0;
    if (rc == LEDGER_OK && (!(ops = tem_malloc((n ? n : 1) * sizeof *ops)) || !(all = tem_malloc((n ? n : 1) * sizeof *all))))
        rc = LEDGER_ENOMEM;
    /* Staged in chunk order; the state table wants key order. The pointers stay valid while
     * the read txn is open. */
    if (rc == LEDGER_OK) rc = map_err(mdb_cursor_open(rtxn, st->entries, &r_cur), "cursor");
    if (rc == LEDGER_OK) {
        MDB_val k, v;
        int mrc = mdb_cursor_get(r_cur, &k, &v, MDB_FIRST);
        while (mrc == 0 && rc == LEDGER_OK && got < n) {
            if (k.mv_size <= 4) rc = LEDGER_ECORRUPT;
            all[got++] = (staged){(const uint8_t *)k.mv_data + 4, v.mv_data, k.mv_size - 4, v.mv_size};
            mrc = mdb_cursor_get(r_cur, &k, &v, MDB_NEXT);
        }
        if (rc == LEDGER_OK && mrc != MDB_NOTFOUND) rc = mrc == 0 ? LEDGER_ECORRUPT : map_err(mrc, "cursor get");
        mdb_cursor_close(r_cur);
    }
    if (rc == LEDGER_OK) qsort(all, got, sizeof *all, staged_cmp);
    if (rc == LEDGER_OK) rc = map_err(mdb_txn_begin(h.env, NULL, 0, &wtxn), "begin");
    /* The genesis state (or whatever the store held) goes: the snapshot replaces it whole. */
    if (rc == LEDGER_OK) rc = map_err(mdb_drop(wtxn, h.state, 0), "drop state");
    if (rc == LEDGER_OK) rc = map_err(mdb_drop(wtxn, h.tree, 0), "drop tree");
    if (rc == LEDGER_OK) rc = map_err(mdb_cursor_open(wtxn, h.state, &w_cur), "cursor");
    for (size_t i = 0; i < got && rc == LEDGER_OK; i++) {
        if (i && keycmp(all[i - 1].k, all[i - 1].kl, all[i].k, all[i].kl) == 0) {
            rc = LEDGER_ECORRUPT; /* one key in two chunks: impossible for verified chunks */
            break;
        }
        MDB_val k = {all[i].kl, (void *)all[i].k}, v = {all[i].vl, (void *)all[i].v};
        rc = map_err(mdb_cursor_put(w_cur, &k, &v, MDB_APPEND), "put state");
        ledger_sha256(ops[i].kh, all[i].k, all[i].kl);
        ledger_sha256(ops[i].vh, all[i].v, all[i].vl);
        ops[i].del = false;
    }
    if (w_cur) mdb_cursor_close(w_cur);
    if (rtxn) mdb_txn_abort(rtxn);
    tem_free(all);
    uint8_t root[32];
    if (rc == LEDGER_OK) {
        qsort(ops, got, sizeof *ops, op_cmp);
        rc = ledger__smt_update(wtxn, h.tree, ops, got, root, NULL);
    }
    if (rc == LEDGER_OK && memcmp(root, a->state_root, 32) != 0) rc = LEDGER_EROOT;
    if (rc == LEDGER_OK)
        rc = ledger__store_put_tip(s, wtxn, a->height, a->state_root, a->receipts_root, a->block_hash, a->time_ms);
    if (rc == LEDGER_OK) {
        /* Where this store's history starts: blocks below are not held. */
        uint8_t h8[8];
        tem_put_u64le(h8, a->height);
        MDB_val k = {13, "u/sync_height"}, v = {8, h8};
        rc = map_err(mdb_put(wtxn, h.meta, &k, &v, 0), "put sync height");
    }
    tem_free(ops);
    if (rc != LEDGER_OK) {
        if (wtxn) mdb_txn_abort(wtxn);
        return rc;
    }
    if ((rc = map_err(mdb_txn_commit(wtxn), "commit install")) != LEDGER_OK) return rc;
    return ledger__store_reload(s);
}
