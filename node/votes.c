/* votes.c: the vote store (votes.h): one LMDB environment in <data_dir>/votes with one record
 * in its unnamed database, written in its own write transaction per vote, and the one-time move
 * of the record out of the ledger's meta table. */
#include "node/votes.h"

#include "consensus/pbft.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static_assert(NODE_VOTES_MAP_BYTES >= (size_t)3 * PBFT_LOG_MAX * PBFT_BLOCK_BYTES_MAX,
              "the vote store's map must hold three of the largest records");
static_assert(NODE_VOTES_MOVED_MARK_BYTES > 1, "the mark is a 0 byte and a text");

/* Present while a validator whose votes/ was lost has not yet been allowed to vote again, so
 * a restart in between still waits (votes.h, NODE_VOTES_LOST). */
#define WAIT_KEY "lost/wait"

struct node_votes {
    MDB_env *env;
    MDB_dbi dbi;
    bool created; /* this open created the environment: no vote store existed before */
    bool waiting; /* WAIT_KEY is stored */
};

/* Same translation as ledger/store.c: a full disk or map has its own code because it is the
 * operator's to fix (node_is_disk_full pauses the node instead of stopping it). */
static int map_mdb(int rc, const char *what) {
    if (rc == 0) return LEDGER_OK;
    if (rc == MDB_NOTFOUND) return LEDGER_ENOTFOUND;
    const char *name = rc == MDB_MAP_FULL ? "MDB_MAP_FULL" : rc > 0 ? strerrorname_np(rc) : NULL;
    fprintf(stderr, "votes: %s: %s (%s)\n", what, mdb_strerror(rc), name ? name : "lmdb");
    if (rc == MDB_MAP_FULL) return LEDGER_EFULL;
    if (rc == ENOSPC || rc == EDQUOT) return LEDGER_EDISKFULL;
    if (rc == ENOMEM) return LEDGER_ENOMEM;
    return LEDGER_EIO;
}

/* A new file's name lives in its directory: without this a crash could lose the record's file
 * even though LMDB fsync'd the file's contents. */
static int fsync_dir(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return map_mdb(errno, "open dir");
    int rc = fsync(fd) == 0 ? 0 : errno;
    if (close(fd) != 0 && rc == 0) rc = errno;
    return map_mdb(rc, "fsync dir");
}

int node_votes_open(const char *data_dir, node_votes **out) {
    TEM_ASSERT(data_dir != NULL);
    TEM_ASSERT(out != NULL);
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", data_dir, NODE_VOTES_DIR) >= (int)sizeof path) return LEDGER_EINVAL;
    if (mkdir(path, 0700) != 0 && errno != EEXIST) return map_mdb(errno, "mkdir votes");
    node_votes *v = tem_calloc(1, sizeof *v);
    if (!v) return LEDGER_ENOMEM;
    int rc;
    MDB_txn *txn;
    char file[4096 + 16];
    struct stat st;
    snprintf(file, sizeof file, "%s/data.mdb", path);
    if (stat(file, &st) != 0) {
        if (errno != ENOENT) {
            rc = map_mdb(errno, "stat votes");
            goto fail;
        }
        v->created = true;
    }
    if ((rc = map_mdb(mdb_env_create(&v->env), "env create")) != LEDGER_OK) goto fail;
    if ((rc = map_mdb(mdb_env_set_mapsize(v->env, NODE_VOTES_MAP_BYTES), "mapsize")) != LEDGER_OK) goto fail;
    /* MDB_NOTLS as the ledger's store: the handle's transactions are not tied to the thread
     * that opened it. Default sync flags: a commit fsyncs, which is the point. */
    if ((rc = map_mdb(mdb_env_open(v->env, path, MDB_NOTLS, 0600), "env open")) != LEDGER_OK) goto fail;
    if ((rc = map_mdb(mdb_txn_begin(v->env, NULL, MDB_RDONLY, &txn), "begin ro")) != LEDGER_OK) goto fail;
    rc = map_mdb(mdb_dbi_open(txn, NULL, 0, &v->dbi), "dbi open");
    if (rc != LEDGER_OK) {
        mdb_txn_abort(txn);
        goto fail;
    }
    /* The unnamed database's handle stays valid after a read-only transaction ends. */
    mdb_txn_abort(txn);
    if ((rc = fsync_dir(path)) != LEDGER_OK) goto fail;
    if ((rc = fsync_dir(data_dir)) != LEDGER_OK) goto fail;
    *out = v;
    return LEDGER_OK;
fail:
    node_votes_close(v);
    return rc;
}

void node_votes_close(node_votes *v) {
    if (!v) return;
    if (v->env) mdb_env_close(v->env);
    tem_free(v);
}

/* One write transaction that puts (val != NULL) or deletes (val == NULL) key; durable on
 * LEDGER_OK (mdb_txn_commit writes the pages and fsyncs before it returns). */
static int write_key(node_votes *v, const char *key, const uint8_t *val, size_t len) {
    MDB_txn *txn;
    int rc = map_mdb(mdb_txn_begin(v->env, NULL, 0, &txn), "begin");
    if (rc != LEDGER_OK) return rc;
    MDB_val k = {strlen(key), (void *)key}, d = {len, (void *)val};
    int mrc = val ? mdb_put(txn, v->dbi, &k, &d, 0) : mdb_del(txn, v->dbi, &k, NULL);
    if (!val && mrc == MDB_NOTFOUND) mrc = 0;
    if ((rc = map_mdb(mrc, val ? "put" : "del")) != LEDGER_OK) {
        mdb_txn_abort(txn);
        return rc;
    }
    return map_mdb(mdb_txn_commit(txn), "commit");
}

/* A tem_malloc'd copy of key's value, or LEDGER_ENOTFOUND (not logged: it is an answer). */
static int read_key(node_votes *v, const char *key, uint8_t **out, size_t *len) {
    MDB_txn *txn;
    int rc = map_mdb(mdb_txn_begin(v->env, NULL, MDB_RDONLY, &txn), "begin ro");
    if (rc != LEDGER_OK) return rc;
    MDB_val k = {strlen(key), (void *)key}, d;
    int grc = mdb_get(txn, v->dbi, &k, &d);
    rc = grc == MDB_NOTFOUND ? LEDGER_ENOTFOUND : map_mdb(grc, "get");
    if (rc == LEDGER_OK) {
        uint8_t *b = tem_malloc(d.mv_size ? d.mv_size : 1);
        if (!b) {
            rc = LEDGER_ENOMEM;
        } else {
            memcpy(b, d.mv_data, d.mv_size);
            *out = b;
            *len = d.mv_size;
        }
    }
    mdb_txn_abort(txn);
    return rc;
}

int node_votes_put(node_votes *v, const uint8_t *rec, size_t len) {
    TEM_ASSERT(v != NULL);
    TEM_ASSERT(rec != NULL || len == 0);
    /* A 0-byte record is a record: write_key deletes only for a NULL value. */
    return write_key(v, PBFT_VOTES_KEY, rec ? rec : (const uint8_t *)"", len);
}

int node_votes_get(node_votes *v, uint8_t **rec, size_t *len) {
    TEM_ASSERT(v != NULL);
    TEM_ASSERT(rec != NULL);
    TEM_ASSERT(len != NULL);
    return read_key(v, PBFT_VOTES_KEY, rec, len);
}

static bool is_moved_mark(const uint8_t *rec, size_t len) {
    return len == NODE_VOTES_MOVED_MARK_BYTES && memcmp(rec, NODE_VOTES_MOVED_MARK, len) == 0;
}

int node_votes_adopt(node_votes *v, ledger_store *s, node_votes_origin *origin) {
    TEM_ASSERT(v != NULL);
    TEM_ASSERT(s != NULL);
    TEM_ASSERT(origin != NULL);
    uint8_t *old = NULL;
    size_t ol = 0;
    int rc = ledger_store_meta_get(s, PBFT_VOTES_KEY, &old, &ol);
    if (rc != LEDGER_OK && rc != LEDGER_ENOTFOUND) return rc;
    bool in_ledger = rc == LEDGER_OK;
    bool moved = in_ledger && is_moved_mark(old, ol);
    if (in_ledger && !moved) {
        /* The ledger's record is the newest one (only a temd from before the vote store writes
         * it there): copy it, and only once the copy is durable, retire the original. */
        rc = node_votes_put(v, old, ol);
        tem_free(old);
        if (rc != LEDGER_OK) return rc;
        rc = ledger_store_meta_put(s, PBFT_VOTES_KEY, NODE_VOTES_MOVED_MARK, NODE_VOTES_MOVED_MARK_BYTES);
        if (rc != LEDGER_OK) return rc;
        *origin = NODE_VOTES_MIGRATED;
        return LEDGER_OK;
    }
    tem_free(old);
    uint8_t *rec;
    size_t rl;
    rc = node_votes_get(v, &rec, &rl);
    if (rc != LEDGER_OK && rc != LEDGER_ENOTFOUND) return rc;
    bool held = rc == LEDGER_OK;
    if (held) tem_free(rec);
    rc = read_key(v, WAIT_KEY, &rec, &rl);
    if (rc != LEDGER_OK && rc != LEDGER_ENOTFOUND) return rc;
    v->waiting = rc == LEDGER_OK;
    if (v->waiting) tem_free(rec);
    /* The mark is also what tells a later start that this data.mdb had a vote store, so that
     * votes/ missing beside it is noticed (LOST) instead of taken for a validator that never
     * voted. A vote store that existed but holds no record is a validator that has not voted
     * yet (a record, once written, is only ever replaced). */
    if (!moved &&
        (rc = ledger_store_meta_put(s, PBFT_VOTES_KEY, NODE_VOTES_MOVED_MARK, NODE_VOTES_MOVED_MARK_BYTES)) != LEDGER_OK)
        return rc;
    bool lost = !held && ((moved && v->created) || v->waiting);
    if (lost && !v->waiting) {
        /* Remembered until node_votes_end_wait: the new, empty vote store alone would look like
         * a validator that has not voted yet at the next start. */
        if ((rc = write_key(v, WAIT_KEY, (const uint8_t *)"1", 1)) != LEDGER_OK) return rc;
        v->waiting = true;
    }
    *origin = held ? NODE_VOTES_HELD : lost ? NODE_VOTES_LOST : NODE_VOTES_NONE;
    return LEDGER_OK;
}

int node_votes_end_wait(node_votes *v) {
    TEM_ASSERT(v != NULL);
    if (!v->waiting) return LEDGER_OK;
    int rc = write_key(v, WAIT_KEY, NULL, 0);
    if (rc == LEDGER_OK) v->waiting = false;
    return rc;
}
