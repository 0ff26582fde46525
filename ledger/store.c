/* store.c: the LMDB ledger (docs/ledger.md, "LMDB layout"). One environment per node holds the
 * blocks, their certificates, the tx index, receipts, the state and small metadata. Applying a
 * block is one write transaction: block, certificate, index, receipts, state changes and roots
 * land together or not at all, so a crash at any point leaves the store at a block boundary. The
 * state tree (smt.c) lives in the table "tree". Its records are written back at tree checkpoints
 * only (every TREE_CHECKPOINT_BLOCKS blocks, or sooner when the write-back cache fills); between
 * two, each block's transaction carries its tree ops in "treelog", and an open (or a failed
 * block) rebuilds the cache from the checkpoint and those ops, checking every block's root. */
#include "ledger/ledger_internal.h"

#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <sys/stat.h>

/* blocksum: SHA-256 of each block's bytes as applied, so the start-up tail check and every read
 * can tell exact bytes from damaged ones without verifying every tx signature again (stores from
 * before it lack the record; their blocks get the signature check instead). */
enum { DB_BLOCKS, DB_CERTS, DB_TXS, DB_RECEIPTS, DB_STATE, DB_ROOTS, DB_META, DB_TREE, DB_BSUM, DB_TLOG, DB_COUNT };
static const char *const DB_NAMES[DB_COUNT] = {"blocks", "certs", "txs",  "receipts", "state",
                                               "roots",  "meta",  "tree", "blocksum", "treelog"};

/* Tree checkpoints (docs/ledger.md, "Tree checkpoints"). A block changes records all over the
 * tree's B-tree, and LMDB rewrites a whole page per changed record: at 2,000 tx/s that was most
 * of a validator's disk writes. Held back for up to TREE_CHECKPOINT_BLOCKS blocks, a record
 * that several blocks change is written once. TREE_DIRTY_MAX bounds the memory held back
 * (a record is about 1 KiB) and TREE_CLEAN_MAX the clean records kept to spare reads. */
#define TREE_CHECKPOINT_BLOCKS 32
#define TREE_DIRTY_MAX 65536
#define TREE_CLEAN_MAX 65536
/* treelog[height] = one per op: u8 del || kh (32) || vh (32, zero when del), kh ascending */
#define TLOG_OP_BYTES 65

/* roots[height] = state_root || receipts_root || block_hash || u64le time_ms */
#define ROOTS_VAL_BYTES (32 * 3 + 8)

/* What a block's execution leaves for its commit: the open write transaction, the state's
 * savepoint, and the tip before the block (restored if the commit fails). */
typedef struct {
    MDB_txn *txn;
    size_t sp;
    uint64_t height, prev_height, prev_time_ms;
    uint8_t prev_hash[32], prev_state_root[32], prev_receipts_root[32];
} store_pending;

struct apply_job {
    const ledger_block_view *v;
    const uint8_t *cert;
    size_t clen;
    const ledger_executor *ex;
    unsigned flags;
    ledger_apply_info *info;
    int rc;
    bool done;
};

static void writer_stop(ledger_store *s);

struct ledger_store {
    MDB_env *env;
    MDB_dbi dbi[DB_COUNT];
    const ledger_genesis *g;
    ledger_state *st;
    uint64_t height, last_time_ms;
    uint64_t base_height; /* blocks 1..base_height are not held (a state-synced store) */
    uint8_t last_hash[32], state_root[32], receipts_root[32];
    void (*hook)(int point);
    ledger__smt_stats tree_stats; /* work of the last tree update */
    ledger__smt_cache *tk;        /* the tree's records changed since tree_h, and clean ones */
    uint64_t tree_h;              /* the checkpoint the tree table holds (once pend commits) */
    bool tree_stale;              /* tk holds changes of a block that failed: rebuild first */
    /* A checkpoint tree_block found due, taken after that block's commit in a transaction of
     * its own (tree_checkpoint), by whichever thread applied the block. */
    bool ckpt_due;
    uint64_t ckpt_height;
    uint64_t tree_every;          /* TREE_CHECKPOINT_BLOCKS; tests set less */
    uint64_t tree_phase;          /* checkpoints at heights h with (h + phase) % every == 0 ... */
    bool tree_phased;             /* ... once ledger_store_stagger_checkpoints set it */
    size_t tree_dirty_max;        /* TREE_DIRTY_MAX; tests set less */
    size_t tree_clean_max;        /* TREE_CLEAN_MAX; tests set less */
    int fail_at;                  /* tests: fail the next apply at this hook point (3, 4 or 6) */
    uint64_t durable_height;      /* the last block whose write transaction committed */
    store_pending pend;           /* the executed block whose commit is pending or unfinished */
    bool pend_open;
    /* The writer thread (ledger_store_writer_start): it executes each pipelined block while the
     * caller waits, then commits it while the caller goes on. LMDB ties a write transaction to
     * the thread that began it (its writer lock), so begin, puts and commit all happen there. */
    bool w_started, w_quit, w_committing, w_has_result;
    bool w_ckpt; /* the writer thread is taking a checkpoint: the tree cache is its own */
    int w_commit_rc;
    struct apply_job *w_job;
    pthread_t w_thread;
    pthread_mutex_t w_mu;
    pthread_cond_t w_cv;
    void (*w_notify)(void *ctx);
    void *w_notify_ctx;
};

/* The symbolic name of an LMDB or errno code, so a log line can be searched for and matched
 * against the LMDB and errno documentation whatever the message's wording. */
static const char *mdb_name(int rc) {
    switch (rc) {
#define N(x) case x: return #x;
    N(MDB_KEYEXIST) N(MDB_NOTFOUND) N(MDB_PAGE_NOTFOUND) N(MDB_CORRUPTED) N(MDB_PANIC)
    N(MDB_VERSION_MISMATCH) N(MDB_INVALID) N(MDB_MAP_FULL) N(MDB_DBS_FULL) N(MDB_READERS_FULL)
    N(MDB_TLS_FULL) N(MDB_TXN_FULL) N(MDB_CURSOR_FULL) N(MDB_PAGE_FULL) N(MDB_MAP_RESIZED)
    N(MDB_INCOMPATIBLE) N(MDB_BAD_RSLOT) N(MDB_BAD_TXN) N(MDB_BAD_VALSIZE) N(MDB_BAD_DBI)
#undef N
    default: {
        const char *e = strerrorname_np(rc);
        return e ? e : "unknown";
    }
    }
}

static int map_mdb(int rc, const char *what) {
    if (rc == 0) return LEDGER_OK;
    if (rc == MDB_NOTFOUND) return LEDGER_ENOTFOUND;
    fprintf(stderr, "ledger: lmdb %s: %s (%s)\n", what, mdb_strerror(rc), mdb_name(rc));
    if (rc == MDB_MAP_FULL) return LEDGER_EFULL;
    /* Its own code: a full disk is an operator's problem to fix, not corruption or a bug. */
    if (rc == ENOSPC || rc == EDQUOT) return LEDGER_EDISKFULL;
    if (rc == ENOMEM) return LEDGER_ENOMEM;
    return LEDGER_EIO;
}

void ledger_store_set_hook(ledger_store *s, void (*hook)(int point)) { s->hook = hook; }
static void hook(ledger_store *s, int point) {
    if (s->hook) s->hook(point);
}

uint64_t ledger_store_height(const ledger_store *s) { return s->height; }
uint64_t ledger_store_durable_height(const ledger_store *s) { return s->durable_height; }
uint64_t ledger_store_write_txns(const ledger_store *s) {
    MDB_envinfo info;
    return mdb_env_info(s->env, &info) == 0 ? (uint64_t)info.me_last_txnid : 0;
}
void ledger_store_durable_tip(const ledger_store *s, uint8_t hash[32], uint8_t sr[32], uint64_t *time_ms) {
    bool prev = s->pend_open;
    memcpy(hash, prev ? s->pend.prev_hash : s->last_hash, 32);
    memcpy(sr, prev ? s->pend.prev_state_root : s->state_root, 32);
    *time_ms = prev ? s->pend.prev_time_ms : s->last_time_ms;
}
uint64_t ledger_store_base_height(const ledger_store *s) { return s->base_height; }
void ledger_store_last_hash(const ledger_store *s, uint8_t out[32]) { memcpy(out, s->last_hash, 32); }
uint64_t ledger_store_last_time(const ledger_store *s) { return s->last_time_ms; }
void ledger_store_roots(const ledger_store *s, uint8_t sr[32], uint8_t rr[32]) {
    memcpy(sr, s->state_root, 32);
    memcpy(rr, s->receipts_root, 32);
}
ledger_state *ledger_store_state(ledger_store *s) { return s->st; }
const ledger_genesis *ledger_store_genesis(const ledger_store *s) { return s->g; }

typedef struct {
    ledger_store *s;
    MDB_txn *txn;
    bool append; /* the table was empty: the flush's key order lets LMDB append */
} flush_ctx;

static int flush_one(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen) {
    flush_ctx *f = ctx;
    MDB_val k = {klen, (void *)key};
    if (!val) {
        int rc = mdb_del(f->txn, f->s->dbi[DB_STATE], &k, NULL);
        return rc == MDB_NOTFOUND ? LEDGER_OK : map_mdb(rc, "del state");
    }
    MDB_val v = {vlen, (void *)val};
    return map_mdb(mdb_put(f->txn, f->s->dbi[DB_STATE], &k, &v, f->append ? MDB_APPEND : 0), "put state");
}

static int put_tree_height(ledger_store *s, MDB_txn *txn, uint64_t h);

static int treelog_put(ledger_store *s, MDB_txn *txn, uint64_t h, const ledger__smt_op *ops, size_t n) {
    uint8_t key[8];
    tem_put_u64be(key, h);
    MDB_val k = {8, key}, v = {n * TLOG_OP_BYTES, NULL};
    /* MDB_RESERVE: the ops are written straight into the page LMDB allocates. */
    int rc = map_mdb(mdb_put(txn, s->dbi[DB_TLOG], &k, &v, MDB_RESERVE), "put treelog");
    if (rc != LEDGER_OK) return rc;
    uint8_t *w = v.mv_data;
    for (size_t i = 0; i < n; i++, w += TLOG_OP_BYTES) {
        w[0] = ops[i].del;
        memcpy(w + 1, ops[i].kh, 32);
        if (ops[i].del) memset(w + 33, 0, 32);
        else memcpy(w + 33, ops[i].vh, 32);
    }
    return LEDGER_OK;
}

/* The tree part of block h: through the cache, its ops logged; a checkpoint, when one is due,
 * follows the block's commit (tree_checkpoint). */
static int tree_block(ledger_store *s, MDB_txn *txn, uint64_t h, const ledger__smt_op *ops, size_t n,
                      uint8_t root[32]) {
    /* Whatever fails from here leaves the cache ahead of LMDB. */
    s->tree_stale = true;
    memset(&s->tree_stats, 0, sizeof s->tree_stats);
    int rc = ledger__smt_update_cached(s->tk, txn, s->dbi[DB_TREE], ops, n, root, &s->tree_stats);
    if (rc != LEDGER_OK) return rc;
    if ((rc = treelog_put(s, txn, h, ops, n)) != LEDGER_OK) return rc;
    s->ckpt_due = h - s->tree_h >= s->tree_every || ledger__smt_cache_dirty(s->tk) >= s->tree_dirty_max ||
                  (s->tree_phased && (h + s->tree_phase) % s->tree_every == 0);
    s->ckpt_height = h;
    s->tree_stale = false;
    return LEDGER_OK;
}

/* Writes back the records changed since the last checkpoint, empties the tree log and records
 * the checkpoint at the block just committed, in a transaction of its own: a block's commit,
 * and so the commit events of its txs, never waits for these page writes (at 1M accounts a
 * checkpoint's 1,300-1,500 records lie on as many pages: docs/ledger.md, "Tree checkpoints").
 * A crash before its commit leaves the checkpoint before and a log that covers the block. On
 * failure the cache no longer says which records LMDB holds: it is rebuilt from the last
 * checkpoint and the log before its next use, and the next block finds the checkpoint due
 * again. Runs on the thread that owns the tree cache (the writer thread, or the caller's). */
static int tree_checkpoint(ledger_store *s) {
    if (!s->ckpt_due) return LEDGER_OK;
    s->ckpt_due = false;
    hook(s, 6);
    MDB_txn *txn;
    int rc = map_mdb(mdb_txn_begin(s->env, NULL, 0, &txn), "begin checkpoint");
    if (rc != LEDGER_OK) return rc;
    size_t dirty = ledger__smt_cache_dirty(s->tk);
    rc = ledger__smt_cache_flush(s->tk, txn, s->dbi[DB_TREE]);
    if (rc == LEDGER_OK) rc = map_mdb(mdb_drop(txn, s->dbi[DB_TLOG], 0), "empty treelog");
    if (rc == LEDGER_OK) rc = put_tree_height(s, txn, s->ckpt_height);
    if (rc == LEDGER_OK && s->fail_at == 6) { /* tests: the commit fails after every put */
        s->fail_at = 0;
        rc = LEDGER_EIO;
    }
    if (rc == LEDGER_OK) {
        rc = map_mdb(mdb_txn_commit(txn), "commit checkpoint");
        txn = NULL;
    }
    if (txn) mdb_txn_abort(txn);
    if (rc != LEDGER_OK) {
        s->tree_stale = true;
        return rc;
    }
    s->tree_h = s->ckpt_height;
    s->tree_stats.writes = dirty;
    hook(s, 7);
    return LEDGER_OK;
}

/* Waits while the writer thread takes a checkpoint: the caller is about to use the tree cache
 * or begin a write of its own. At most one checkpoint's time (tens of ms at 1M accounts). */
static void ckpt_wait(const ledger_store *cs) {
    ledger_store *s = (ledger_store *)cs; /* the lock, not the store, changes */
    if (!s->w_started) return;
    pthread_mutex_lock(&s->w_mu);
    while (s->w_ckpt) pthread_cond_wait(&s->w_cv, &s->w_mu);
    pthread_mutex_unlock(&s->w_mu);
}

/* Writes the changed entries to the state table and the state tree of block `height` (0: the
 * genesis, whose tree is written whole); returns the new root. */
static int flush_state(ledger_store *s, MDB_txn *txn, uint64_t height, uint8_t root[32]) {
    MDB_stat ms;
    flush_ctx a = {.s = s, .txn = txn};
    a.append = mdb_stat(txn, s->dbi[DB_STATE], &ms) == 0 && ms.ms_entries == 0;
    int rc = ledger__state_flush(s->st, flush_one, &a);
    if (rc != LEDGER_OK) return rc;
    ledger__smt_op *ops;
    size_t n;
    if ((rc = ledger__state_tree_ops(s->st, &ops, &n)) != LEDGER_OK) return rc;
    if (height > 0) rc = tree_block(s, txn, height, ops, n, root);
    else if ((rc = ledger__smt_update(txn, s->dbi[DB_TREE], ops, n, root, &s->tree_stats)) == LEDGER_OK)
        rc = put_tree_height(s, txn, 0);
    tem_free(ops);
    return rc;
}

static int put_roots(ledger_store *s, MDB_txn *txn, uint64_t height, const uint8_t sr[32],
                     const uint8_t rr[32], const uint8_t bh[32], uint64_t time_ms) {
    uint8_t key[8], val[ROOTS_VAL_BYTES];
    tem_put_u64be(key, height);
    memcpy(val, sr, 32);
    memcpy(val + 32, rr, 32);
    memcpy(val + 64, bh, 32);
    tem_put_u64le(val + 96, time_ms);
    MDB_val k = {8, key}, v = {sizeof val, val};
    return map_mdb(mdb_put(txn, s->dbi[DB_ROOTS], &k, &v, 0), "put roots");
}

static int meta_put_txn(ledger_store *s, MDB_txn *txn, const char *name, const void *val, size_t len) {
    MDB_val k = {strlen(name), (void *)name}, v = {len, (void *)val};
    return map_mdb(mdb_put(txn, s->dbi[DB_META], &k, &v, 0), "put meta");
}

static int put_tree_height(ledger_store *s, MDB_txn *txn, uint64_t h) {
    uint8_t h8[8];
    tem_put_u64le(h8, h);
    return meta_put_txn(s, txn, "tree_height", h8, 8);
}

static int roots_state_root(ledger_store *s, MDB_txn *txn, uint64_t h, uint8_t sr[32]) {
    uint8_t key[8];
    tem_put_u64be(key, h);
    MDB_val k = {8, key}, v;
    int rc = map_mdb(mdb_get(txn, s->dbi[DB_ROOTS], &k, &v), "get roots");
    if (rc == LEDGER_OK && v.mv_size != ROOTS_VAL_BYTES) rc = LEDGER_ECORRUPT;
    if (rc == LEDGER_OK) memcpy(sr, v.mv_data, 32);
    return rc;
}

/* Rebuilds the tree's cache from LMDB as txn sees it at `height`: the checkpoint's records, then
 * the logged ops of every block after it, each block's root checked against its roots record.
 * Anything else means the tree and the chain disagree and the node must not run on it. */
static int tree_recover(ledger_store *s, MDB_txn *txn, uint64_t height) {
    ledger__smt_cache_clear(s->tk);
    s->tree_stale = true;
    MDB_val k = {11, "tree_height"}, v;
    uint64_t c = height; /* stores from before tree checkpoints wrote the tree every block */
    int mrc = mdb_get(txn, s->dbi[DB_META], &k, &v);
    if (mrc == 0 && v.mv_size == 8) c = tem_get_u64le(v.mv_data);
    else if (mrc != MDB_NOTFOUND) return mrc ? map_mdb(mrc, "get tree height") : LEDGER_ECORRUPT;
    if (c > height || c < s->base_height) {
        fprintf(stderr, "ledger: the state tree's checkpoint %llu is not in %llu..%llu\n", (unsigned long long)c,
                (unsigned long long)s->base_height, (unsigned long long)height);
        return LEDGER_ECORRUPT;
    }
    uint8_t root[32], want[32];
    int rc = ledger__smt_update_cached(s->tk, txn, s->dbi[DB_TREE], NULL, 0, root, NULL);
    if (rc == LEDGER_ECORRUPT)
        fprintf(stderr, "ledger: the state tree's root record does not decode (a data dir from before the "
                        "grouped tree layout? re-create it from the genesis)\n");
    for (uint64_t h = c; rc == LEDGER_OK; h++) {
        if ((rc = roots_state_root(s, txn, h, want)) != LEDGER_OK) break;
        if (memcmp(root, want, 32) != 0) {
            fprintf(stderr, "ledger: state tree does not match the stored state root at height %llu\n",
                    (unsigned long long)h);
            rc = LEDGER_ECORRUPT;
            break;
        }
        if (h == height) break;
        uint8_t key[8];
        tem_put_u64be(key, h + 1);
        MDB_val lk = {8, key}, lv;
        if ((rc = map_mdb(mdb_get(txn, s->dbi[DB_TLOG], &lk, &lv), "get treelog")) != LEDGER_OK) {
            if (rc == LEDGER_ENOTFOUND) {
                fprintf(stderr, "ledger: the state tree's log lacks block %llu\n", (unsigned long long)(h + 1));
                rc = LEDGER_ECORRUPT;
            }
            break;
        }
        size_t n = lv.mv_size / TLOG_OP_BYTES;
        ledger__smt_op *ops = tem_malloc((n ? n : 1) * sizeof *ops);
        if (!ops) {
            rc = LEDGER_ENOMEM;
            break;
        }
        const uint8_t *r = lv.mv_data;
        if (lv.mv_size % TLOG_OP_BYTES) rc = LEDGER_ECORRUPT;
        for (size_t i = 0; i < n && rc == LEDGER_OK; i++, r += TLOG_OP_BYTES) {
            ops[i].del = r[0] == 1;
            memcpy(ops[i].kh, r + 1, 32);
            memcpy(ops[i].vh, r + 33, 32);
            /* smt.c asserts sorted, distinct ops: damaged bytes must be refused here instead */
            if (r[0] > 1 || (i && memcmp(ops[i - 1].kh, ops[i].kh, 32) >= 0)) rc = LEDGER_ECORRUPT;
        }
        if (rc == LEDGER_ECORRUPT) fprintf(stderr, "ledger: the state tree's log of block %llu does not decode\n", (unsigned long long)(h + 1));
        if (rc == LEDGER_OK) rc = ledger__smt_update_cached(s->tk, txn, s->dbi[DB_TREE], ops, n, root, NULL);
        tem_free(ops);
    }
    if (rc != LEDGER_OK) return rc;
    s->tree_h = c;
    s->tree_stale = false;
    return LEDGER_OK;
}

/* After a failed block: the cache again as LMDB has it. */
static int tree_rebuild(ledger_store *s) {
    TEM_ASSERT(!s->pend_open);
    MDB_txn *txn;
    int rc = map_mdb(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn), "begin ro");
    if (rc != LEDGER_OK) return rc;
    rc = tree_recover(s, txn, s->height);
    mdb_txn_abort(txn);
    return rc;
}

static void empty_root(uint8_t out[32]) { TEM_ASSERT(ledger_merkle_root(out, NULL, 0) == LEDGER_OK); }

/* First open of a new store: the genesis state and height 0. */
static int store_init(ledger_store *s, int (*init)(void *, ledger_state *, const ledger_genesis *), void *ictx) {
    int rc = LEDGER_OK;
    if (init && (rc = init(ictx, s->st, s->g)) != LEDGER_OK) return rc;
    MDB_txn *txn;
    if ((rc = map_mdb(mdb_txn_begin(s->env, NULL, 0, &txn), "begin")) != LEDGER_OK) return rc;
    uint8_t sr[32], rr[32], h8[8];
    empty_root(rr);
    /* The genesis tree is built in one pass over the sorted key hashes (no record exists yet, so
     * each node is written once). */
    if ((rc = flush_state(s, txn, 0, sr)) != LEDGER_OK) goto fail;
    if ((rc = put_roots(s, txn, 0, sr, rr, s->g->hash, s->g->genesis_time_ms)) != LEDGER_OK) goto fail;
    tem_put_u64le(h8, 0);
    if ((rc = meta_put_txn(s, txn, "height", h8, 8)) != LEDGER_OK) goto fail;
    /* Written last: a store without it is treated as new and initialised again. */
    if ((rc = meta_put_txn(s, txn, "genesis_hash", s->g->hash, 32)) != LEDGER_OK) goto fail;
    if ((rc = map_mdb(mdb_txn_commit(txn), "commit init")) != LEDGER_OK) return rc;
    ledger__state_clear_dirty(s->st);
    return LEDGER_OK;
fail:
    mdb_txn_abort(txn);
    return rc;
}

static int store_load(ledger_store *s) {
    MDB_txn *txn;
    MDB_cursor *cur;
    int rc = map_mdb(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn), "begin ro");
    if (rc != LEDGER_OK) return rc;
    MDB_val k, v;
    MDB_val mk = {6, "height"};
    if ((rc = map_mdb(mdb_get(txn, s->dbi[DB_META], &mk, &v), "get height")) != LEDGER_OK || v.mv_size != 8) {
        rc = rc ? rc : LEDGER_ECORRUPT;
        goto out;
    }
    s->height = tem_get_u64le(v.mv_data);
    s->durable_height = s->height;
    /* Written by a state sync's install (snapshot.c): history starts above it. */
    MDB_val bk = {13, "u/sync_height"};
    s->base_height = 0;
    if (mdb_get(txn, s->dbi[DB_META], &bk, &v) == 0 && v.mv_size == 8) s->base_height = tem_get_u64le(v.mv_data);
    uint8_t key[8];
    tem_put_u64be(key, s->height);
    k = (MDB_val){8, key};
    if ((rc = map_mdb(mdb_get(txn, s->dbi[DB_ROOTS], &k, &v), "get roots")) != LEDGER_OK || v.mv_size != ROOTS_VAL_BYTES) {
        rc = rc ? rc : LEDGER_ECORRUPT;
        goto out;
    }
    const uint8_t *rv = v.mv_data;
    memcpy(s->state_root, rv, 32);
    memcpy(s->receipts_root, rv + 32, 32);
    memcpy(s->last_hash, rv + 64, 32);
    s->last_time_ms = tem_get_u64le(rv + 96);
    if ((rc = map_mdb(mdb_cursor_open(txn, s->dbi[DB_STATE], &cur), "cursor")) != LEDGER_OK) goto out;
    int mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    while (mrc == 0) {
        if ((rc = ledger__state_load(s->st, k.mv_data, k.mv_size, v.mv_data, v.mv_size)) != LEDGER_OK) break;
        mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (rc == LEDGER_OK && mrc != MDB_NOTFOUND) rc = map_mdb(mrc, "cursor get");
    if (rc != LEDGER_OK) goto out;
    /* The tree must give the root stored with the last block. (tests/test_state_tree.c
     * recomputes the root from the table after crashes; a full recomputation here would cost
     * O(N) at every start, the checkpoint and its log O(changes since).) */
    uint8_t root[32];
    if ((rc = tree_recover(s, txn, s->height)) != LEDGER_OK) goto out;
    memcpy(root, s->state_root, 32);
    ledger__state_set_root(s->st, root);
out:
    mdb_txn_abort(txn);
    return rc;
}

int ledger_store_open(const char *dir, const ledger_genesis *g,
                      int (*init)(void *, ledger_state *, const ledger_genesis *), void *ictx,
                      ledger_store **out) {
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) return LEDGER_EIO;
    ledger_store *s = tem_calloc(1, sizeof *s);
    if (!s) return LEDGER_ENOMEM;
    s->g = g;
    int rc;
    if ((rc = ledger_state_new(&s->st)) != LEDGER_OK) goto fail;
    s->tree_every = TREE_CHECKPOINT_BLOCKS;
    s->tree_dirty_max = TREE_DIRTY_MAX;
    s->tree_clean_max = TREE_CLEAN_MAX;
    if (!(s->tk = ledger__smt_cache_new())) {
        rc = LEDGER_ENOMEM;
        goto fail;
    }
    if ((rc = map_mdb(mdb_env_create(&s->env), "env create")) != LEDGER_OK) goto fail;
    if ((rc = map_mdb(mdb_env_set_maxdbs(s->env, DB_COUNT + 4), "maxdbs")) != LEDGER_OK) goto fail;
    /* Address space only: LMDB grows the file as pages are used. */
    if ((rc = map_mdb(mdb_env_set_mapsize(s->env, (size_t)64 << 30), "mapsize")) != LEDGER_OK) goto fail;
    if ((rc = map_mdb(mdb_env_open(s->env, dir, MDB_NOTLS, 0600), "env open")) != LEDGER_OK) goto fail;
    MDB_txn *txn;
    if ((rc = map_mdb(mdb_txn_begin(s->env, NULL, 0, &txn), "begin")) != LEDGER_OK) goto fail;
    for (int i = 0; i < DB_COUNT; i++) {
        if ((rc = map_mdb(mdb_dbi_open(txn, DB_NAMES[i], MDB_CREATE, &s->dbi[i]), "dbi open")) != LEDGER_OK) {
            mdb_txn_abort(txn);
            goto fail;
        }
    }
    MDB_val k = {12, "genesis_hash"}, v;
    int grc = mdb_get(txn, s->dbi[DB_META], &k, &v);
    bool fresh = grc == MDB_NOTFOUND;
    if (!fresh && (grc != 0 || v.mv_size != 32 || memcmp(v.mv_data, g->hash, 32) != 0)) {
        mdb_txn_abort(txn);
        rc = grc ? map_mdb(grc, "get genesis") : LEDGER_EGENESIS;
        goto fail;
    }
    if ((rc = map_mdb(mdb_txn_commit(txn), "commit dbi")) != LEDGER_OK) goto fail;
    if (fresh && (rc = store_init(s, init, ictx)) != LEDGER_OK) goto fail;
    if (fresh) {
        /* Start again from a clean in-memory state loaded back from disk: what we run on is
         * exactly what a restart would see. */
        ledger_state_free(s->st);
        s->st = NULL;
        if ((rc = ledger_state_new(&s->st)) != LEDGER_OK) goto fail;
    }
    if ((rc = store_load(s)) != LEDGER_OK) goto fail;
    *out = s;
    return LEDGER_OK;
fail:
    ledger_store_close(s);
    return rc;
}

int ledger_store_scratch(ledger_store *s) { return map_mdb(mdb_env_set_flags(s->env, MDB_NOSYNC, 1), "set nosync"); }

void ledger_store_close(ledger_store *s) {
    if (!s) return;
    writer_stop(s);
    if (s->env) mdb_env_close(s->env);
    ledger_state_free(s->st);
    ledger__smt_cache_free(s->tk);
    tem_free(s);
}

/* ------------------------------------------------------------------ building and applying */
int ledger_block_build_txs(ledger_store *s, const ledger_tx *const *txs, size_t n, uint64_t time_ms,
                           const uint8_t proposer[32], uint8_t **out, size_t *out_len) {
    if (n > s->g->max_block_txs) return LEDGER_EINVAL;
    int rc = LEDGER_OK;
    Tem__V1__SignedTx **stx = tem_calloc(n ? n : 1, sizeof *stx);
    uint8_t(*ids)[32] = tem_malloc((n ? n : 1) * 32);
    if (!stx || !ids) { rc = LEDGER_ENOMEM; goto out; }
    for (size_t i = 0; i < n; i++) {
        TEM_ASSERT(txs[i]->stx != NULL);
        stx[i] = txs[i]->stx;
        memcpy(ids[i], txs[i]->txid, 32);
    }
    uint8_t txroot[32], sr[32], rr[32];
    if ((rc = ledger_merkle_root(txroot, (const uint8_t(*)[32])ids, n)) != LEDGER_OK) goto out;
    ledger_store_roots(s, sr, rr);
    Tem__V1__BlockHeader h = TEM__V1__BLOCK_HEADER__INIT;
    h.chain_id = (char *)s->g->chain_id;
    h.height = s->height + 1;
    h.prev_hash = (ProtobufCBinaryData){32, s->last_hash};
    h.time_ms = time_ms;
    h.proposer = (ProtobufCBinaryData){32, (uint8_t *)proposer};
    h.tx_root = (ProtobufCBinaryData){32, txroot};
    h.state_root = (ProtobufCBinaryData){32, sr};
    h.receipts_root = (ProtobufCBinaryData){32, rr};
    h.genesis_hash = (ProtobufCBinaryData){32, (uint8_t *)s->g->hash};
    Tem__V1__Block b = TEM__V1__BLOCK__INIT;
    b.header = &h;
    b.n_txs = n;
    b.txs = stx;
    size_t len = tem__v1__block__get_packed_size(&b);
    uint8_t *buf = tem_malloc(len);
    if (!buf) { rc = LEDGER_ENOMEM; goto out; }
    TEM_ASSERT(tem__v1__block__pack(&b, buf) == len);
    *out = buf;
    *out_len = len;
out:
    tem_free(stx);
    tem_free(ids);
    return rc;
}

int ledger_block_build(ledger_store *s, const uint8_t *const *txs, const size_t *tx_lens, size_t n,
                       uint64_t time_ms, const uint8_t proposer[32], uint8_t **out, size_t *out_len) {
    if (n > s->g->max_block_txs) return LEDGER_EINVAL;
    int rc = LEDGER_OK;
    ledger_tx_limits lim;
    ledger_tx_limits_from_genesis(s->g, &lim);
    ledger_tx *dec = tem_calloc(n ? n : 1, sizeof *dec);
    const ledger_tx **ptrs = tem_calloc(n ? n : 1, sizeof *ptrs);
    size_t done = 0;
    if (!dec || !ptrs) { rc = LEDGER_ENOMEM; goto out; }
    for (; done < n; done++) {
        if ((rc = ledger_tx_decode(txs[done], tx_lens[done], &lim, &dec[done])) != LEDGER_OK) goto out;
        ptrs[done] = &dec[done];
    }
    rc = ledger_block_build_txs(s, ptrs, n, time_ms, proposer, out, out_len);
out:
    for (size_t i = 0; i < done; i++) ledger_tx_free(&dec[i]);
    tem_free(dec);
    tem_free(ptrs);
    return rc;
}

static int check_header(ledger_store *s, const Tem__V1__BlockHeader *h) {
    if (!h) return LEDGER_EBLOCK;
    if (strcmp(h->chain_id, s->g->chain_id) != 0) return LEDGER_ECHAIN;
    if (h->height != s->height + 1) return LEDGER_EHEIGHT;
    if (h->prev_hash.len != 32 || memcmp(h->prev_hash.data, s->last_hash, 32) != 0) return LEDGER_EPREV;
    if (h->genesis_hash.len != 32 || memcmp(h->genesis_hash.data, s->g->hash, 32) != 0) return LEDGER_EBLOCK;
    if (h->time_ms <= s->last_time_ms) return LEDGER_ETIME;
    if (h->state_root.len != 32 || memcmp(h->state_root.data, s->state_root, 32) != 0) return LEDGER_EROOT;
    if (h->receipts_root.len != 32 || memcmp(h->receipts_root.data, s->receipts_root, 32) != 0) return LEDGER_EROOT;
    if (h->proposer.len != 32 || ledger_genesis_validator_index(s->g, h->proposer.data) < 0) return LEDGER_EBLOCK;
    return LEDGER_OK;
}

/* The checks every block passes before it executes, in the order callers have always seen:
 * header links, tx count, each tx's encoding, the tx root. */
static int check_view(ledger_store *s, const ledger_block_view *v) {
    int rc = check_header(s, v->header);
    if (rc != LEDGER_OK) return rc;
    if (v->n > s->g->max_block_txs) return LEDGER_EBLOCK;
    if (v->tx_rc != LEDGER_OK) return v->tx_rc;
    return v->tx_root_ok ? LEDGER_OK : LEDGER_EROOT;
}

int ledger_block_view_precheck(ledger_store *s, const ledger_block_view *v, uint64_t max_time_ms) {
    int rc = check_header(s, v->header);
    if (rc != LEDGER_OK) return rc;
    if (v->header->time_ms > max_time_ms) return LEDGER_ETIME;
    if ((rc = check_view(s, v)) != LEDGER_OK) return rc;
    /* Nonces: every tx of a signer must continue that signer's sequence. Quadratic in the
     * number of txs of one signer only: earlier txs of the same signer are counted. */
    for (size_t i = 0; i < v->n; i++) {
        const uint8_t *signer = v->txs[i].tx->body->signer.data;
        uint64_t want = ledger_state_nonce(s->st, signer);
        for (size_t j = 0; j < i; j++)
            if (memcmp(v->txs[j].tx->body->signer.data, signer, LEDGER_SECP_PUB_BYTES) == 0) want++;
        if (v->txs[i].tx->body->nonce != want) return LEDGER_ENONCE;
    }
    return LEDGER_OK;
}

int ledger_store_apply(ledger_store *s, const uint8_t *blk, size_t blen, const uint8_t *cert,
                       size_t clen, const ledger_executor *ex, unsigned flags, ledger_apply_info *info) {
    ledger_block_view v;
    int rc = ledger_block_view_build(s->g, blk, blen, NULL, NULL, &v);
    if (rc != LEDGER_OK) return rc;
    rc = ledger_store_apply_view(s, &v, cert, clen, ex, flags, info);
    ledger_block_view_free(&v);
    return rc;
}

/* Executes the block and makes every put of its write transaction, but does not commit: on
 * success the transaction and the state's savepoint are left open in s->pend and the tip (height,
 * hash, roots) already names the block. On failure nothing is left open and nothing changed. */
static int apply_exec(ledger_store *s, const ledger_block_view *v, const uint8_t *cert, size_t clen,
                      const ledger_executor *ex, unsigned flags, ledger_apply_info *info) {
    int rc;
    uint8_t(*rhash)[32] = NULL;
    uint8_t **rbuf = NULL;
    size_t *rlen = NULL;
    ledger_arena arena = {0};
    MDB_txn *txn = NULL;
    size_t sp = 0;
    bool sp_open = false, tree_touched = false;
    size_t n = v->n;
    const Tem__V1__BlockHeader *hdr = v->header;
    if ((rc = check_view(s, v)) != LEDGER_OK) goto out;
    if (s->tree_stale && (rc = tree_rebuild(s)) != LEDGER_OK) goto out;
    /* No commit is pending here, so LMDB holds every record flushed: clean ones may go. */
    if (ledger__smt_cache_dirty(s->tk) == 0 && ledger__smt_cache_records(s->tk) > s->tree_clean_max)
        ledger__smt_cache_clear(s->tk);
    rhash = tem_malloc((n ? n : 1) * 32);
    rbuf = tem_calloc(n ? n : 1, sizeof *rbuf);
    rlen = tem_calloc(n ? n : 1, sizeof *rlen);
    if (!rhash || !rbuf || !rlen) { rc = LEDGER_ENOMEM; goto out; }
    uint8_t bhash[32];
    if ((rc = v->hash_rc) != LEDGER_OK) goto out;
    memcpy(bhash, v->block_hash, 32);
    if (!(flags & LEDGER_APPLY_NO_CERT)) {
        if (!cert) { rc = LEDGER_ECERT; goto out; }
        if ((rc = ledger_cert_verify(s->g, cert, clen, hdr->height, bhash)) != LEDGER_OK) goto out;
    }
    if (!(flags & LEDGER_APPLY_SIGS_OK))
        for (size_t i = 0; i < n; i++)
            if (!v->txs[i].verified && (rc = ledger_tx_verify(v->txs[i].tx)) != LEDGER_OK) goto out;

    /* Execute under one savepoint: any failure below rolls the in-memory state back to the
     * previous block, matching what LMDB still holds. */
    if ((rc = ledger_state_savepoint(s->st, &sp)) != LEDGER_OK) goto out;
    sp_open = true;
    ledger_block_ctx bctx = {.height = hdr->height, .time_ms = hdr->time_ms, .genesis = s->g, .arena = &arena};
    if (ex && ex->begin_block && (rc = ex->begin_block(ex->ctx, s->st, &bctx)) != LEDGER_OK) goto out;
    uint32_t refused = 0;
    for (size_t i = 0; i < n; i++) {
        const ledger_tx *tx = v->txs[i].tx;
        const uint8_t *signer = tx->body->signer.data;
        uint64_t next = ledger_state_nonce(s->st, signer);
        if (tx->body->nonce != next || next == UINT64_MAX) { rc = LEDGER_ENONCE; goto out; }
        uint8_t nk[1 + LEDGER_SECP_PUB_BYTES], nv[8];
        nk[0] = 'n';
        memcpy(nk + 1, signer, LEDGER_SECP_PUB_BYTES);
        tem_put_u64le(nv, next + 1);
        if ((rc = ledger_state_put(s->st, nk, sizeof nk, nv, 8)) != LEDGER_OK) goto out;
        Tem__V1__Receipt r = TEM__V1__RECEIPT__INIT;
        if (ex && ex->exec_tx && (rc = ex->exec_tx(ex->ctx, s->st, &bctx, tx, &r)) != LEDGER_OK) goto out;
        r.txid = (ProtobufCBinaryData){32, (uint8_t *)tx->txid};
        if (r.code != 0) refused++;
        rlen[i] = tem__v1__receipt__get_packed_size(&r);
        rbuf[i] = ledger_arena_alloc(&arena, rlen[i] ? rlen[i] : 1);
        if (!rbuf[i]) { rc = LEDGER_ENOMEM; goto out; }
        TEM_ASSERT(tem__v1__receipt__pack(&r, rbuf[i]) == rlen[i]);
        ledger_sha256(rhash[i], rbuf[i], rlen[i]);
    }
    if (ex && ex->end_block && (rc = ex->end_block(ex->ctx, s->st, &bctx)) != LEDGER_OK) goto out;
    uint8_t sroot[32], rroot[32];
    if ((rc = ledger_merkle_root(rroot, (const uint8_t(*)[32])rhash, n)) != LEDGER_OK) goto out;

    /* ---- one LMDB write transaction for everything the block changes */
    uint64_t h = hdr->height;
    uint8_t hk[8];
    tem_put_u64be(hk, h);
    if ((rc = map_mdb(mdb_txn_begin(s->env, NULL, 0, &txn), "begin")) != LEDGER_OK) goto out;
    MDB_val k = {8, hk}, bv = {v->block_len, (void *)v->block};
    if ((rc = map_mdb(mdb_put(txn, s->dbi[DB_BLOCKS], &k, &bv, MDB_NOOVERWRITE), "put block")) != LEDGER_OK) goto out;
    uint8_t bsum[32];
    ledger_sha256(bsum, v->block, v->block_len);
    bv = (MDB_val){32, bsum};
    if ((rc = map_mdb(mdb_put(txn, s->dbi[DB_BSUM], &k, &bv, 0), "put blocksum")) != LEDGER_OK) goto out;
    if (cert) {
        bv = (MDB_val){clen, (void *)cert};
        if ((rc = map_mdb(mdb_put(txn, s->dbi[DB_CERTS], &k, &bv, 0), "put cert")) != LEDGER_OK) goto out;
    }
    hook(s, 1);
    for (size_t i = 0; i < n; i++) {
        uint8_t ik[12], iv[12];
        tem_put_u64be(ik, h);
        tem_put_u32be(ik + 8, (uint32_t)i);
        memcpy(iv, ik, 12);
        MDB_val tk = {32, (void *)v->txids[i]}, tv = {12, iv};
        /* A txid already in the index means the tx was included twice: its nonce check above
         * makes that impossible, so this is a store inconsistency, not bad input. */
        if ((rc = map_mdb(mdb_put(txn, s->dbi[DB_TXS], &tk, &tv, MDB_NOOVERWRITE), "put txidx")) != LEDGER_OK) goto out;
        MDB_val rk = {12, ik}, rv = {rlen[i], rbuf[i]};
        if ((rc = map_mdb(mdb_put(txn, s->dbi[DB_RECEIPTS], &rk, &rv, 0), "put receipt")) != LEDGER_OK) goto out;
    }
    hook(s, 2);
    tree_touched = true;
    if ((rc = flush_state(s, txn, h, sroot)) != LEDGER_OK) goto out;
    hook(s, 3);
    if (s->fail_at == 3) {
        s->fail_at = 0;
        rc = LEDGER_EIO;
        goto out;
    }
    if ((rc = put_roots(s, txn, h, sroot, rroot, bhash, hdr->time_ms)) != LEDGER_OK) goto out;
    uint8_t h8[8];
    tem_put_u64le(h8, h);
    if ((rc = meta_put_txn(s, txn, "height", h8, 8)) != LEDGER_OK) goto out;

    store_pending *p = &s->pend;
    p->txn = txn;
    p->sp = sp;
    p->height = h;
    p->prev_height = s->height;
    p->prev_time_ms = s->last_time_ms;
    memcpy(p->prev_hash, s->last_hash, 32);
    memcpy(p->prev_state_root, s->state_root, 32);
    memcpy(p->prev_receipts_root, s->receipts_root, 32);
    s->pend_open = true;
    txn = NULL;
    sp_open = false;
    ledger__state_set_root(s->st, sroot);
    s->height = h;
    s->last_time_ms = hdr->time_ms;
    memcpy(s->last_hash, bhash, 32);
    memcpy(s->state_root, sroot, 32);
    memcpy(s->receipts_root, rroot, 32);
    if (info) {
        info->height = h;
        memcpy(info->block_hash, bhash, 32);
        memcpy(info->state_root, sroot, 32);
        memcpy(info->receipts_root, rroot, 32);
        info->n_txs = (uint32_t)n;
        info->n_refused = refused;
    }
out:
    if (txn) mdb_txn_abort(txn);
    /* The cache has this block's tree changes, which LMDB will not: rebuilt before next use. */
    if (rc != LEDGER_OK && tree_touched) s->tree_stale = true;
    if (rc != LEDGER_OK) s->ckpt_due = false;
    if (sp_open) {
        ledger_state_rollback(s->st, sp);
        /* Back at the last block: its root is known without recomputation. */
        ledger__state_set_root(s->st, s->state_root);
    }
    tem_free(rhash);
    tem_free(rbuf);
    tem_free(rlen);
    ledger_arena_reset(&arena);
    return rc;
}

/* Ends s->pend after its commit returned crc (on the thread that owns the state): on success the
 * savepoint and the dirty list are released, on failure the state and the tip go back to the
 * block before, which is what LMDB still holds. Returns crc. */
static int apply_finish(ledger_store *s, int crc) {
    store_pending *p = &s->pend;
    TEM_ASSERT(s->pend_open);
    s->pend_open = false;
    if (crc == LEDGER_OK) {
        ledger_state_release(s->st, p->sp);
        ledger__state_clear_dirty(s->st);
        s->durable_height = p->height;
        return LEDGER_OK;
    }
    ledger_state_rollback(s->st, p->sp);
    /* The block's tree changes are in the cache; rebuilt from LMDB before the next use. */
    s->tree_stale = true;
    s->height = p->prev_height;
    s->last_time_ms = p->prev_time_ms;
    memcpy(s->last_hash, p->prev_hash, 32);
    memcpy(s->state_root, p->prev_state_root, 32);
    memcpy(s->receipts_root, p->prev_receipts_root, 32);
    ledger__state_set_root(s->st, s->state_root);
    return crc;
}

/* Commits s->pend's transaction (on the thread that began it). Test hooks: 4 just before the
 * commit (on the writer thread for a pipelined block, after the caller went on), 5 after it. */
static int commit_pending(ledger_store *s) {
    hook(s, 4);
    int crc;
    if (s->fail_at == 4) {
        s->fail_at = 0;
        mdb_txn_abort(s->pend.txn);
        crc = LEDGER_EIO;
    } else {
        crc = map_mdb(mdb_txn_commit(s->pend.txn), "commit block");
    }
    s->pend.txn = NULL;
    if (crc == LEDGER_OK) hook(s, 5);
    return crc;
}

int ledger_store_apply_view(ledger_store *s, const ledger_block_view *v, const uint8_t *cert,
                            size_t clen, const ledger_executor *ex, unsigned flags, ledger_apply_info *info) {
    int rc = ledger_store_commit_wait(s);
    if (rc != LEDGER_OK) return rc;
    ckpt_wait(s);
    if ((rc = apply_exec(s, v, cert, clen, ex, flags, info)) != LEDGER_OK) return rc;
    if ((rc = apply_finish(s, commit_pending(s))) != LEDGER_OK) {
        s->ckpt_due = false;
        return rc;
    }
    /* The block is durable whatever becomes of its checkpoint (map_mdb logged a failure). */
    (void)tree_checkpoint(s);
    return LEDGER_OK;
}

static void *writer_main(void *arg) {
    ledger_store *s = arg;
    pthread_mutex_lock(&s->w_mu);
    for (;;) {
        while (!s->w_job && !s->w_quit) pthread_cond_wait(&s->w_cv, &s->w_mu);
        if (!s->w_job) break;
        struct apply_job *j = s->w_job;
        pthread_mutex_unlock(&s->w_mu);
        /* The caller waits on the job meanwhile: the state is this thread's alone. */
        int rc = apply_exec(s, j->v, j->cert, j->clen, j->ex, j->flags, j->info);
        pthread_mutex_lock(&s->w_mu);
        j->rc = rc;
        j->done = true;
        s->w_job = NULL;
        s->w_committing = rc == LEDGER_OK;
        pthread_cond_broadcast(&s->w_cv);
        if (rc != LEDGER_OK) continue;
        /* From here the caller reads the state and the tip again, and this thread touches only
         * the LMDB transaction: its page writes and fdatasync overlap the caller's next steps. */
        pthread_mutex_unlock(&s->w_mu);
        int crc = commit_pending(s);
        pthread_mutex_lock(&s->w_mu);
        s->w_commit_rc = crc;
        s->w_committing = false;
        s->w_has_result = true;
        /* A due checkpoint follows the commit the caller is told of: the caller goes on with
         * the state (apply_finish touches neither the tree cache nor LMDB) while this thread
         * writes the tree back; whatever uses the cache or writes waits (ckpt_wait), and the
         * next block's job waits for this thread. */
        if (crc != LEDGER_OK) s->ckpt_due = false;
        s->w_ckpt = s->ckpt_due;
        pthread_cond_broadcast(&s->w_cv);
        /* Under the lock, so that after ledger_store_writer_notify_off no call is under way. */
        if (s->w_notify) s->w_notify(s->w_notify_ctx);
        if (s->w_ckpt) {
            pthread_mutex_unlock(&s->w_mu);
            (void)tree_checkpoint(s);
            pthread_mutex_lock(&s->w_mu);
            s->w_ckpt = false;
            pthread_cond_broadcast(&s->w_cv);
        }
    }
    pthread_mutex_unlock(&s->w_mu);
    return NULL;
}

int ledger_store_writer_start(ledger_store *s, void (*notify)(void *ctx), void *ctx) {
    if (s->w_started) return LEDGER_EINVAL;
    if (pthread_mutex_init(&s->w_mu, NULL) != 0) return LEDGER_ENOMEM;
    if (pthread_cond_init(&s->w_cv, NULL) != 0) {
        pthread_mutex_destroy(&s->w_mu);
        return LEDGER_ENOMEM;
    }
    s->w_notify = notify;
    s->w_notify_ctx = ctx;
    s->w_quit = false;
    if (pthread_create(&s->w_thread, NULL, writer_main, s) != 0) {
        pthread_cond_destroy(&s->w_cv);
        pthread_mutex_destroy(&s->w_mu);
        return LEDGER_ENOMEM;
    }
    s->w_started = true;
    return LEDGER_OK;
}

void ledger_store_writer_notify_off(ledger_store *s) {
    if (!s || !s->w_started) return;
    pthread_mutex_lock(&s->w_mu);
    s->w_notify = NULL;
    pthread_mutex_unlock(&s->w_mu);
}

static void writer_stop(ledger_store *s) {
    if (!s->w_started) return;
    /* A failed commit leaves the store at the block before; map_mdb logged why. */
    int rc = ledger_store_commit_wait(s);
    (void)rc;
    pthread_mutex_lock(&s->w_mu);
    s->w_quit = true;
    pthread_cond_broadcast(&s->w_cv);
    pthread_mutex_unlock(&s->w_mu);
    TEM_ASSERT(pthread_join(s->w_thread, NULL) == 0);
    pthread_cond_destroy(&s->w_cv);
    pthread_mutex_destroy(&s->w_mu);
    s->w_started = false;
}

int ledger_store_apply_view_pipelined(ledger_store *s, const ledger_block_view *v, const uint8_t *cert,
                                      size_t clen, const ledger_executor *ex, unsigned flags,
                                      ledger_apply_info *info) {
    if (!s->w_started) return ledger_store_apply_view(s, v, cert, clen, ex, flags, info);
    int rc = ledger_store_commit_wait(s);
    if (rc != LEDGER_OK) return rc;
    struct apply_job j = {.v = v, .cert = cert, .clen = clen, .ex = ex, .flags = flags, .info = info};
    pthread_mutex_lock(&s->w_mu);
    s->w_job = &j;
    pthread_cond_broadcast(&s->w_cv);
    while (!j.done) pthread_cond_wait(&s->w_cv, &s->w_mu);
    pthread_mutex_unlock(&s->w_mu);
    return j.rc;
}

bool ledger_store_commit_pending(const ledger_store *s) { return s->pend_open; }

int ledger_store_commit_wait(ledger_store *s) {
    if (!s->pend_open) return LEDGER_OK;
    if (!s->w_started) return apply_finish(s, commit_pending(s));
    pthread_mutex_lock(&s->w_mu);
    while (s->w_committing) pthread_cond_wait(&s->w_cv, &s->w_mu);
    TEM_ASSERT(s->w_has_result);
    s->w_has_result = false;
    int crc = s->w_commit_rc;
    pthread_mutex_unlock(&s->w_mu);
    return apply_finish(s, crc);
}

/* ------------------------------------------------------------------ reads */
int ledger__mdb_get_copy(void *env, unsigned dbi, const void *key, size_t klen, uint8_t **out, size_t *len) {
    MDB_txn *txn;
    int rc = map_mdb(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), "begin ro");
    if (rc != LEDGER_OK) return rc;
    MDB_val k = {klen, (void *)key}, v;
    rc = map_mdb(mdb_get(txn, dbi, &k, &v), "get");
    if (rc == LEDGER_OK) {
        uint8_t *b = tem_malloc(v.mv_size ? v.mv_size : 1);
        if (!b) rc = LEDGER_ENOMEM;
        else {
            memcpy(b, v.mv_data, v.mv_size);
            *out = b;
            *len = v.mv_size;
        }
    }
    mdb_txn_abort(txn);
    return rc;
}

static int get_copy(ledger_store *s, int db, const void *key, size_t klen, uint8_t **out, size_t *len) {
    return ledger__mdb_get_copy(s->env, s->dbi[db], key, klen, out, len);
}

/* The hash a stored block must have: its certificate's, or (offline-executed chains have no
 * certificates) the next block's prev_hash, or the tip's. 0 found, -1 none to compare with. */
static int expected_hash(ledger_store *s, uint64_t height, uint8_t out[32]) {
    uint8_t k[8], *v;
    size_t vl;
    tem_put_u64be(k, height);
    if (get_copy(s, DB_CERTS, k, 8, &v, &vl) == LEDGER_OK) {
        Tem__V1__CommitCertificate *c = tem__v1__commit_certificate__unpack(&ledger_pb_allocator, vl, v);
        tem_free(v);
        int rc = c && c->block_hash.len == 32 ? 0 : 1;
        if (rc == 0) memcpy(out, c->block_hash.data, 32);
        if (c) tem__v1__commit_certificate__free_unpacked(c, &ledger_pb_allocator);
        return rc == 0 ? 0 : -2; /* an undecodable certificate is corruption too */
    }
    if (height == s->height) {
        memcpy(out, s->last_hash, 32);
        return 0;
    }
    tem_put_u64be(k, height + 1);
    if (get_copy(s, DB_BLOCKS, k, 8, &v, &vl) != LEDGER_OK) return -1;
    Tem__V1__Block *nb = tem__v1__block__unpack(&ledger_pb_allocator, vl, v);
    tem_free(v);
    int rc = nb && nb->header && nb->header->prev_hash.len == 32 ? 0 : -2;
    if (rc == 0) memcpy(out, nb->header->prev_hash.data, 32);
    if (nb) tem__v1__block__free_unpacked(nb, &ledger_pb_allocator);
    return rc;
}

/* Whether blk's txs hash to its header's tx_root, which the caller checked is 32 bytes.
 * LEDGER_OK, LEDGER_ECORRUPT when they do not, LEDGER_ENOMEM. */
static int check_tx_root(const Tem__V1__Block *blk) {
    uint8_t(*ids)[32] = tem_malloc((blk->n_txs ? blk->n_txs : 1) * 32), root[32];
    if (ids == NULL) return LEDGER_ENOMEM;
    for (size_t i = 0; i < blk->n_txs; i++) ledger_sha256(ids[i], blk->txs[i]->body.data, blk->txs[i]->body.len);
    bool match = ledger_merkle_root(root, (const uint8_t(*)[32])ids, blk->n_txs) == LEDGER_OK &&
                 memcmp(root, blk->header->tx_root.data, 32) == 0;
    tem_free(ids);
    return match ? LEDGER_OK : LEDGER_ECORRUPT;
}

/* Checks stored block bytes before they leave the store: they decode, their header hash is the
 * one recorded for that height, and their txs hash to the header's tx_root. A flipped byte on
 * disk is reported (LEDGER_ECORRUPT, logged) instead of served with a wrong hash. */
static int check_stored_block(ledger_store *s, uint64_t height, const uint8_t *b, size_t len) {
    Tem__V1__Block *blk = tem__v1__block__unpack(&ledger_pb_allocator, len, b);
    const char *why = NULL;
    uint8_t h[32], want[32];
    if (blk == NULL || blk->header == NULL || blk->header->height != height) {
        why = "does not decode or has another height";
    } else if (ledger_block_hash(blk->header, h) != LEDGER_OK || blk->header->tx_root.len != 32) {
        why = "header has malformed hash fields";
    } else {
        int e = expected_hash(s, height, want);
        if (e == -2) why = "its certificate or successor does not decode";
        else if (e == 0 && memcmp(h, want, 32) != 0) why = "header hash differs from its certificate's";
    }
    if (why == NULL) {
        int rc = check_tx_root(blk);
        if (rc == LEDGER_ENOMEM) {
            tem__v1__block__free_unpacked(blk, &ledger_pb_allocator);
            return LEDGER_ENOMEM;
        }
        if (rc != LEDGER_OK) why = "txs do not match the header's tx_root";
    }
    if (blk) tem__v1__block__free_unpacked(blk, &ledger_pb_allocator);
    if (why == NULL) {
        uint8_t k[8], *sum, d[32];
        size_t sl;
        tem_put_u64be(k, height);
        if (get_copy(s, DB_BSUM, k, 8, &sum, &sl) == LEDGER_OK) {
            ledger_sha256(d, b, len);
            if (sl != 32 || memcmp(d, sum, 32) != 0) why = "bytes differ from the digest recorded when it was applied";
            tem_free(sum);
        }
    }
    if (why == NULL) return LEDGER_OK;
    fprintf(stderr, "ledger: ERROR: stored block %llu is corrupt (%s); not serving it\n", (unsigned long long)height, why);
    return LEDGER_ECORRUPT;
}

int ledger_store_block(ledger_store *s, uint64_t height, uint8_t **out, size_t *len) {
    uint8_t k[8];
    tem_put_u64be(k, height);
    int rc = get_copy(s, DB_BLOCKS, k, 8, out, len);
    if (rc != LEDGER_OK) return rc;
    if ((rc = check_stored_block(s, height, *out, *len)) != LEDGER_OK) {
        tem_free(*out);
        *out = NULL;
        *len = 0;
    }
    return rc;
}
/* The block hash recorded for `height` in the roots table (written in the block's own apply
 * transaction, so it is independent of the block and certificate records). */
static int recorded_hash(ledger_store *s, uint64_t height, uint8_t out[32]) {
    uint8_t k[8], *v;
    size_t vl;
    tem_put_u64be(k, height);
    int rc = get_copy(s, DB_ROOTS, k, 8, &v, &vl);
    if (rc != LEDGER_OK) return rc == LEDGER_ENOTFOUND ? LEDGER_ECORRUPT : rc;
    if (vl != ROOTS_VAL_BYTES) rc = LEDGER_ECORRUPT;
    else memcpy(out, v + 64, 32);
    tem_free(v);
    return rc;
}

/* The checks shared by the tail check and the repair: blk decodes as the block at `height`,
 * its header hashes to `want`, its prev_hash is the recorded hash of height - 1, its txs hash
 * to its tx_root and (verify_sigs) every tx signature verifies. NULL when it passes, else why. */
static const char *block_mismatch(ledger_store *s, uint64_t height, const uint8_t want[32], const uint8_t *b, size_t len,
                                  bool verify_sigs) {
    Tem__V1__Block *blk = tem__v1__block__unpack(&ledger_pb_allocator, len, b);
    const char *why = NULL;
    uint8_t h[32], prev[32];
    if (blk == NULL || blk->header == NULL || blk->header->height != height) why = "does not decode or has another height";
    else if (ledger_block_hash(blk->header, h) != LEDGER_OK || blk->header->tx_root.len != 32) why = "header has malformed hash fields";
    else if (memcmp(h, want, 32) != 0) why = "header hash differs from the recorded block hash";
    else if (recorded_hash(s, height - 1, prev) != LEDGER_OK || blk->header->prev_hash.len != 32 ||
             memcmp(blk->header->prev_hash.data, prev, 32) != 0)
        why = "prev_hash does not link to the block below";
    if (why == NULL) {
        int rc = check_tx_root(blk);
        if (rc == LEDGER_ENOMEM) why = "out of memory";
        else if (rc != LEDGER_OK) why = "txs do not match the header's tx_root";
    }
    if (blk) tem__v1__block__free_unpacked(blk, &ledger_pb_allocator);
    if (why || !verify_sigs) return why;
    /* The tx root covers the bodies only: a flipped byte in a signature shows only here. */
    ledger_block_view v;
    memset(&v, 0, sizeof v);
    if (ledger_block_view_build(s->g, b, len, NULL, NULL, &v) != LEDGER_OK || v.tx_rc != LEDGER_OK)
        why = "a tx does not decode";
    for (size_t i = 0; why == NULL && i < v.n; i++)
        if (ledger_tx_verify(v.txs[i].tx) != LEDGER_OK) why = "a tx signature does not verify";
    ledger_block_view_free(&v);
    return why;
}

int ledger_store_check_block(ledger_store *s, uint64_t height, uint8_t hash[32], char *why, size_t why_len) {
    if (height <= s->base_height || height > s->height) return LEDGER_ENOTFOUND; /* also height 0 */
    const char *bad = NULL;
    uint8_t k[8], *b = NULL, *c = NULL;
    size_t bl = 0, cl = 0;
    memset(hash, 0, 32);
    tem_put_u64be(k, height);
    int rc = recorded_hash(s, height, hash);
    if (rc == LEDGER_ECORRUPT) bad = "no readable roots record";
    else if (rc != LEDGER_OK) return rc;
    else if (height == s->height && memcmp(hash, s->last_hash, 32) != 0) bad = "roots record differs from the tip's hash";
    if (!bad && (rc = get_copy(s, DB_BLOCKS, k, 8, &b, &bl)) != LEDGER_OK) {
        if (rc != LEDGER_ENOTFOUND) return rc;
        bad = "block record missing";
    }
    if (!bad) {
        /* Bytes equal to the digest taken when the block was applied are the bytes whose
         * signatures were verified then; without a digest (an older store) verify them here. */
        uint8_t *sum = NULL, d[32];
        size_t sl = 0;
        int src = get_copy(s, DB_BSUM, k, 8, &sum, &sl);
        if (src != LEDGER_OK && src != LEDGER_ENOTFOUND) {
            tem_free(b);
            return src;
        }
        bool have = src == LEDGER_OK && sl == 32;
        bad = block_mismatch(s, height, hash, b, bl, !have);
        if (!bad && have) {
            ledger_sha256(d, b, bl);
            if (memcmp(d, sum, 32) != 0) bad = "block bytes differ from the digest recorded when it was applied";
        }
        tem_free(sum);
    }
    if (!bad && (rc = get_copy(s, DB_CERTS, k, 8, &c, &cl)) != LEDGER_OK) {
        if (rc != LEDGER_ENOTFOUND) {
            tem_free(b);
            return rc;
        }
        bad = "commit certificate missing";
    }
    if (!bad && ledger_cert_verify(s->g, c, cl, height, hash) != LEDGER_OK) bad = "commit certificate does not verify for it";
    tem_free(b);
    tem_free(c);
    if (!bad) return LEDGER_OK;
    if (why && why_len) snprintf(why, why_len, "%s", bad);
    return LEDGER_ECORRUPT;
}

int ledger_store_repair_block(ledger_store *s, uint64_t height, const uint8_t *blk, size_t blk_len,
                              const uint8_t *cert, size_t cert_len, char *why, size_t why_len) {
    if (height <= s->base_height || height > s->height) return LEDGER_EHEIGHT; /* also height 0 */
    uint8_t want[32], k[8], *old = NULL;
    size_t ol = 0;
    int rc = recorded_hash(s, height, want);
    if (rc != LEDGER_OK) {
        if (why && why_len) snprintf(why, why_len, "this node has no readable hash recorded for the height");
        return rc;
    }
    const char *bad = block_mismatch(s, height, want, blk, blk_len, true);
    if (bad) {
        if (why && why_len) snprintf(why, why_len, "fetched block: %s", bad);
        return LEDGER_EBLOCK;
    }
    /* The fetched certificate must prove the recorded hash: 2f+1 validators signed this block. */
    if ((rc = ledger_cert_verify(s->g, cert, cert_len, height, want)) != LEDGER_OK) {
        if (why && why_len) snprintf(why, why_len, "its commit certificate does not verify");
        return LEDGER_ECERT;
    }
    /* The stored certificate is kept when it still verifies: only damaged records change. */
    tem_put_u64be(k, height);
    bool cert_ok = get_copy(s, DB_CERTS, k, 8, &old, &ol) == LEDGER_OK && ledger_cert_verify(s->g, old, ol, height, want) == LEDGER_OK;
    tem_free(old);
    MDB_txn *txn;
    if ((rc = map_mdb(mdb_txn_begin(s->env, NULL, 0, &txn), "begin")) != LEDGER_OK) return rc;
    uint8_t bsum[32];
    ledger_sha256(bsum, blk, blk_len);
    MDB_val kv = {8, k}, bv = {blk_len, (void *)blk}, cv = {cert_len, (void *)cert}, sv = {32, bsum};
    if ((rc = map_mdb(mdb_put(txn, s->dbi[DB_BLOCKS], &kv, &bv, 0), "repair block")) == LEDGER_OK)
        rc = map_mdb(mdb_put(txn, s->dbi[DB_BSUM], &kv, &sv, 0), "repair blocksum");
    if (rc == LEDGER_OK && !cert_ok) rc = map_mdb(mdb_put(txn, s->dbi[DB_CERTS], &kv, &cv, 0), "repair cert");
    if (rc != LEDGER_OK) {
        mdb_txn_abort(txn);
        return rc;
    }
    return map_mdb(mdb_txn_commit(txn), "commit repair");
}

int ledger_store_cert(ledger_store *s, uint64_t height, uint8_t **out, size_t *len) {
    uint8_t k[8];
    tem_put_u64be(k, height);
    return get_copy(s, DB_CERTS, k, 8, out, len);
}
int ledger_store_receipt(ledger_store *s, const uint8_t txid[32], uint64_t *height, uint32_t *pos,
                         uint8_t **out, size_t *len) {
    uint8_t *idx;
    size_t il;
    int rc = get_copy(s, DB_TXS, txid, 32, &idx, &il);
    if (rc != LEDGER_OK) return rc;
    if (il != 12) {
        tem_free(idx);
        return LEDGER_ECORRUPT;
    }
    *height = tem_get_u64be(idx);
    *pos = tem_get_u32be(idx + 8);
    rc = get_copy(s, DB_RECEIPTS, idx, 12, out, len);
    tem_free(idx);
    return rc;
}
int ledger_store_block_receipts(ledger_store *s, uint64_t height, size_t n, size_t *offs, uint8_t **buf) {
    *buf = NULL;
    MDB_txn *txn;
    MDB_cursor *cur;
    int rc = map_mdb(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn), "begin ro");
    if (rc != LEDGER_OK) return rc;
    if ((rc = map_mdb(mdb_cursor_open(txn, s->dbi[DB_RECEIPTS], &cur), "cursor")) != LEDGER_OK) {
        mdb_txn_abort(txn);
        return rc;
    }
    uint8_t k0[12];
    tem_put_u64be(k0, height);
    tem_put_u32be(k0 + 8, 0);
    MDB_val k = {12, k0}, v;
    uint8_t *b = NULL;
    size_t used = 0, cap = 0, next = 0; /* next: the first tx whose offset is not yet set */
    int mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    for (; mrc == 0; mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 12 || tem_get_u64be(k.mv_data) != height) break;
        uint32_t pos = tem_get_u32be((const uint8_t *)k.mv_data + 8);
        if (pos >= n) break;
        if (cap - used < v.mv_size) {
            size_t nc = cap ? cap : 4096;
            while (nc - used < v.mv_size) nc *= 2;
            uint8_t *nb = tem_realloc(b, nc);
            if (!nb) {
                rc = LEDGER_ENOMEM;
                break;
            }
            b = nb;
            cap = nc;
        }
        while (next <= pos) offs[next++] = used; /* txs without a receipt before this one */
        memcpy(b + used, v.mv_data, v.mv_size);
        used += v.mv_size;
    }
    if (rc == LEDGER_OK && mrc != 0 && mrc != MDB_NOTFOUND) rc = map_mdb(mrc, "cursor get");
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    if (rc != LEDGER_OK) {
        tem_free(b);
        return rc;
    }
    while (next <= n) offs[next++] = used;
    *buf = b;
    return LEDGER_OK;
}

int ledger_store_block_roots(ledger_store *s, uint64_t height, uint8_t sr[32], uint8_t rr[32]) {
    uint8_t k[8], *v;
    size_t vl;
    tem_put_u64be(k, height);
    int rc = get_copy(s, DB_ROOTS, k, 8, &v, &vl);
    if (rc != LEDGER_OK) return rc;
    if (vl != ROOTS_VAL_BYTES) rc = LEDGER_ECORRUPT;
    else {
        memcpy(sr, v, 32);
        memcpy(rr, v + 32, 32);
    }
    tem_free(v);
    return rc;
}

int ledger_store_prove(ledger_store *s, const void *key, size_t klen, ledger_state_proof *out) {
    if (klen == 0) return LEDGER_EINVAL;
    int rc;
    ckpt_wait(s);
    if (s->tree_stale && (rc = tree_rebuild(s)) != LEDGER_OK) return rc;
    MDB_txn *txn;
    if ((rc = map_mdb(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn), "begin ro")) != LEDGER_OK) return rc;
    uint8_t kh[32];
    ledger_sha256(kh, key, klen);
    /* The cache holds every record changed since the checkpoint LMDB has (a pending commit's
     * flushed records included), so cache-then-LMDB is the tree of the tip. */
    rc = ledger__smt_prove_cached(s->tk, txn, s->dbi[DB_TREE], kh, out);
    mdb_txn_abort(txn);
    return rc;
}

void ledger__store_tree_stats(const ledger_store *s, ledger__smt_stats *out) {
    ckpt_wait(s);
    *out = s->tree_stats;
}
void ledger__store_tree_tune(ledger_store *s, uint64_t every, size_t dirty_max) {
    s->tree_every = every ? every : TREE_CHECKPOINT_BLOCKS;
    s->tree_dirty_max = dirty_max ? dirty_max : TREE_DIRTY_MAX;
}
uint64_t ledger__store_tree_height(const ledger_store *s) {
    ckpt_wait(s);
    return s->tree_h;
}

void ledger_store_stagger_checkpoints(ledger_store *s, uint32_t index, uint32_t count) {
    if (count == 0 || index >= count) return;
    /* Halfway between two of the even spread: never on a multiple of every / count, so not on
     * pBFT's checkpoint heights either (multiples of 16 by default), whose blocks every
     * validator commits in place, before the next height. */
    s->tree_phase = (2 * (uint64_t)index + 1) * s->tree_every / (2 * (uint64_t)count);
    s->tree_phased = true;
}
size_t ledger__store_tree_dirty(const ledger_store *s) {
    ckpt_wait(s);
    return ledger__smt_cache_dirty(s->tk);
}
size_t ledger__store_tree_cached(const ledger_store *s) {
    ckpt_wait(s);
    return ledger__smt_cache_records(s->tk);
}
void ledger__store_tree_clean_max(ledger_store *s, size_t n) { s->tree_clean_max = n; }
void ledger__store_fail_at(ledger_store *s, int point) { s->fail_at = point; }

/* ---- for snapshot.c (state sync) */
void ledger__store_handles_get(ledger_store *s, ledger__store_handles *h) {
    ckpt_wait(s); /* snapshot.c reads the tree table, or installs one */
    h->env = s->env;
    h->state = s->dbi[DB_STATE];
    h->tree = s->dbi[DB_TREE];
    h->meta = s->dbi[DB_META];
}

int ledger__store_put_tip(ledger_store *s, void *txn, uint64_t h, const uint8_t sr[32], const uint8_t rr[32],
                          const uint8_t bh[32], uint64_t time_ms) {
    int rc = put_roots(s, txn, h, sr, rr, bh, time_ms);
    uint8_t h8[8];
    tem_put_u64le(h8, h);
    /* The installed tree is written whole: a checkpoint at h with no log after it. */
    if (rc == LEDGER_OK) rc = map_mdb(mdb_drop(txn, s->dbi[DB_TLOG], 0), "empty treelog");
    if (rc == LEDGER_OK) rc = put_tree_height(s, txn, h);
    return rc != LEDGER_OK ? rc : meta_put_txn(s, txn, "height", h8, 8);
}

int ledger__store_reload(ledger_store *s) {
    ledger_state_free(s->st);
    s->st = NULL;
    int rc = ledger_state_new(&s->st);
    return rc != LEDGER_OK ? rc : store_load(s);
}

int ledger_store_meta_put(ledger_store *s, const char *name, const void *val, size_t len) {
    MDB_txn *txn;
    int rc = map_mdb(mdb_txn_begin(s->env, NULL, 0, &txn), "begin");
    if (rc != LEDGER_OK) return rc;
    char key[128];
    /* User records live under "u/" so they can never overwrite the store's own metadata. */
    if (snprintf(key, sizeof key, "u/%s", name) >= (int)sizeof key) {
        mdb_txn_abort(txn);
        return LEDGER_EINVAL;
    }
    if ((rc = meta_put_txn(s, txn, key, val, len)) != LEDGER_OK) {
        mdb_txn_abort(txn);
        return rc;
    }
    return map_mdb(mdb_txn_commit(txn), "commit meta");
}

int ledger_store_meta_get(ledger_store *s, const char *name, uint8_t **out, size_t *len) {
    char key[128];
    if (snprintf(key, sizeof key, "u/%s", name) >= (int)sizeof key) return LEDGER_EINVAL;
    return get_copy(s, DB_META, key, strlen(key), out, len);
}
