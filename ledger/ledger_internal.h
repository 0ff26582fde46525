/* ledger_internal.h: what the ledger sources share and nothing outside ledger/ may call. */
#ifndef LEDGER_INTERNAL_H
#define LEDGER_INTERNAL_H
#include "ledger/ledger.h"

/* Appends an entry read from LMDB during load; keys must arrive in strictly increasing order.
 * The entry is not dirty. LEDGER_OK, LEDGER_ENOMEM, LEDGER_ECORRUPT (order). */
int ledger__state_load(ledger_state *st, const void *key, size_t klen, const void *val, size_t vlen);
/* Calls fn for every key written since the last clear_dirty (val NULL = deleted). fn's error
 * stops the walk and is returned. Marks are kept until ledger__state_clear_dirty. */
typedef int (*ledger__flush_fn)(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen);
int ledger__state_flush(ledger_state *st, ledger__flush_fn fn, void *ctx);
/* Forgets the dirty marks and frees tombstones, once the writes are durable. No savepoint may
 * be open. */
void ledger__state_clear_dirty(ledger_state *st);
size_t ledger__state_journal_depth(const ledger_state *st);

/* Tests: SHA-256 by libsodium, the reference for ledger_sha256 (libcrypto). */
void ledger__sha256_sodium(uint8_t out[32], const void *data, size_t len);

/* ---- the state tree (smt.c; docs/ledger.md, "State tree") */
typedef struct {
    uint8_t kh[32]; /* SHA-256(key) */
    uint8_t vh[32]; /* SHA-256(value) */
} ledger__smt_leafrec;
typedef struct {
    uint8_t kh[32], vh[32];
    bool del; /* vh unused when set */
} ledger__smt_op;
/* Work counters of one update: nodes hashed, LMDB node reads and writes. */
typedef struct {
    uint64_t hashes, reads, writes;
} ledger__smt_stats;

void ledger__smt_leaf(uint8_t out[32], const uint8_t kh[32], const uint8_t vh[32]);
/* Full recomputation over n leaves sorted by kh (distinct). */
void ledger__smt_root_mem(const ledger__smt_leafrec *a, size_t n, uint8_t out[32]);
/* The tree's hash of the subtree at depth d holding a[lo, hi) (sorted by kh, all sharing their
 * first d bits): what a state-sync chunk is checked against. */
void ledger__smt_subtree_mem(const ledger__smt_leafrec *a, size_t lo, size_t hi, unsigned d, uint8_t out[32]);
void ledger__smt_prove_mem(const ledger__smt_leafrec *a, size_t n, const uint8_t kh[32], ledger_state_proof *p);
/* 0 when the proof takes the leaf (kh, vh) (vh NULL: kh absent) to root, -1 otherwise. */
int ledger__smt_verify(const uint8_t root[32], const uint8_t kh[32], const uint8_t *vh, const ledger_state_proof *p);
/* The LMDB tree in table dbi of write txn `txn` (an MDB_txn *): applies ops (sorted by kh,
 * distinct; del of an absent key is a no-op) and returns the new root. stats may be NULL.
 * LEDGER_EIO, LEDGER_EFULL, LEDGER_ENOMEM, LEDGER_ECORRUPT; on error the txn must be aborted. */
int ledger__smt_update(void *txn, unsigned dbi, const ledger__smt_op *ops, size_t n, uint8_t root[32],
                       ledger__smt_stats *stats);
int ledger__smt_root_db(void *txn, unsigned dbi, uint8_t root[32]);
int ledger__smt_prove_db(void *txn, unsigned dbi, const uint8_t kh[32], ledger_state_proof *p);

/* A write-back cache of tree records (docs/ledger.md, "Tree checkpoints"): a store's updates
 * go through it and LMDB gets the changed records only at a checkpoint, so a record that many
 * blocks change is written once. Records missing from the cache are read from the txn given to
 * each call, which must see the table as of the last flush (or any later state holding no
 * record the cache lacks). Not thread-safe: one owner at a time. new: NULL when out of memory. */
typedef struct ledger__smt_cache ledger__smt_cache;
ledger__smt_cache *ledger__smt_cache_new(void);
void ledger__smt_cache_free(ledger__smt_cache *k);
/* Forgets every record, dirty ones included (after a failed block: recover from LMDB). */
void ledger__smt_cache_clear(ledger__smt_cache *k);
size_t ledger__smt_cache_dirty(const ledger__smt_cache *k);   /* records changed since the flush */
size_t ledger__smt_cache_records(const ledger__smt_cache *k); /* records held, clean or dirty */
/* Applies ops (as ledger__smt_update) to the cached tree; writes nothing. txn may be read-only.
 * On error the cache holds part of the update: clear it. */
int ledger__smt_update_cached(ledger__smt_cache *k, void *txn, unsigned dbi, const ledger__smt_op *ops, size_t n,
                              uint8_t root[32], ledger__smt_stats *stats);
/* Writes every dirty record into write txn `txn`; they stay cached, clean. On error abort the
 * txn and clear the cache. */
int ledger__smt_cache_flush(ledger__smt_cache *k, void *txn, unsigned dbi);
/* A proof from the cached tree (k may be NULL: LMDB's records alone); caches nothing. */
int ledger__smt_prove_cached(ledger__smt_cache *k, void *txn, unsigned dbi, const uint8_t kh[32],
                             ledger_state_proof *p);

/* The tree ops of every entry written since the last clear_dirty, sorted by key hash
 * (tem_malloc'd; caller frees). LEDGER_ENOMEM. */
int ledger__state_tree_ops(ledger_state *st, ledger__smt_op **ops, size_t *n);
/* Counters of the store's last tree update (bench and tests). */
void ledger__store_tree_stats(const ledger_store *s, ledger__smt_stats *out);
/* Tests and benches: a tree checkpoint every `every` blocks or at `dirty_max` changed records
 * (0: the defaults); the checkpoint the tree table holds; the records changed since; and a
 * one-shot failure of the next apply just after its tree update (point 3) or in place of its
 * commit (point 4), both with LEDGER_EIO. */
void ledger__store_tree_tune(ledger_store *s, uint64_t every, size_t dirty_max);
uint64_t ledger__store_tree_height(const ledger_store *s);
size_t ledger__store_tree_dirty(const ledger_store *s);
/* Tests: the records the tree's cache holds; the clean ones it may keep (TREE_CLEAN_MAX). */
size_t ledger__store_tree_cached(const ledger_store *s);
void ledger__store_tree_clean_max(ledger_store *s, size_t n);
void ledger__store_fail_at(ledger_store *s, int point);
/* Records the root of the current (clean) state, computed by the store's tree. */
void ledger__state_set_root(ledger_state *st, const uint8_t root[32]);

/* ---- snapshots (snapshot.c; docs/ledger.md, "State sync"): the store's LMDB handles, its tip
 * record written inside a caller's write txn, and a reload of height, roots and state after
 * snapshot.c installed a state. */
typedef struct {
    void *env; /* MDB_env * */
    unsigned state, tree, meta;
} ledger__store_handles;
void ledger__store_handles_get(ledger_store *s, ledger__store_handles *h);
/* Writes roots[h] and the height record in write txn `txn` (an MDB_txn *). LEDGER_EIO etc. */
int ledger__store_put_tip(ledger_store *s, void *txn, uint64_t h, const uint8_t state_root[32],
                          const uint8_t receipts_root[32], const uint8_t block_hash[32], uint64_t time_ms);
/* Drops the in-memory state and loads height, roots and state again from LMDB (checking the tree
 * against the stored root). On error the store must be closed. */
int ledger__store_reload(ledger_store *s);
/* Copies the value at `key` in table `dbi` of env (an MDB_env *), read in its own read txn, into
 * *out (tem_malloc'd, the caller frees it). LEDGER_ENOTFOUND, LEDGER_ENOMEM, LEDGER_EIO etc. */
int ledger__mdb_get_copy(void *env, unsigned dbi, const void *key, size_t klen, uint8_t **out, size_t *len);

#endif
