/* snapshot.h: state snapshots for state sync (docs/ledger.md, "State sync"). A snapshot is the
 * state after block h, whose root block h+1's certified header holds. It is cut into 2^k chunks
 * by the first k bits of SHA-256(key) (the state tree's path), and a manifest lists, per chunk,
 * the hash of the state tree's subtree at depth k and the number of entries under it: the
 * manifest hashes up to the root, and each chunk is checked against its own subtree hash, so one
 * bad chunk is refused alone.
 *
 * Three parts: verification (pure functions), the serving side (a consistent LMDB read view of
 * a store at one height, indexed by chunk), and the joining side (a staging LMDB environment
 * that records the target and every verified chunk, so a killed node resumes, and installs the
 * whole state into a store in one write transaction).
 *
 * Errors are ledger_err codes; out-parameters are written only on LEDGER_OK. */
#ifndef LEDGER_SNAPSHOT_H
#define LEDGER_SNAPSHOT_H

#include "ledger/ledger.h"

#define LEDGER_SNAP_DEPTH_MIN 4
#define LEDGER_SNAP_DEPTH_MAX 16
#define LEDGER_SNAP_DEPTH_DEFAULT 8
/* A server deepens the cut past 8 until the average chunk holds at most this many entries and
 * bytes (keys and values), so a reply stays far below the 16 MiB frame limit. */
#define LEDGER_SNAP_CHUNK_ENTRIES 4096
#define LEDGER_SNAP_CHUNK_BYTES (1u << 20)

typedef struct {
    const uint8_t *key;
    size_t klen;
    const uint8_t *val;
    size_t vlen;
} ledger_snap_entry;

/* ------------------------------------------------------------------ verification */
/* The chunk a key belongs to: the first `depth` bits of SHA-256(key), MSB first. */
uint32_t ledger_snap_chunk_of(unsigned depth, const void *key, size_t klen);
/* The state tree's hash of the subtree at `depth` holding exactly these entries (any order),
 * all of whose keys must lie under prefix `index`. LEDGER_EINVAL (a key outside the prefix, an
 * empty key, a key twice, depth out of range), LEDGER_ENOMEM. */
TEM_WUR int ledger_snap_chunk_hash(unsigned depth, uint32_t index, const ledger_snap_entry *e, size_t n,
                                   uint8_t out[LEDGER_HASH_BYTES]);
/* A received chunk against its manifest line: n == count and the subtree hash equals hash.
 * LEDGER_OK, LEDGER_EROOT (does not match), LEDGER_EINVAL, LEDGER_ENOMEM. */
TEM_WUR int ledger_snap_chunk_verify(unsigned depth, uint32_t index, const uint8_t hash[LEDGER_HASH_BYTES],
                                     uint64_t count, const ledger_snap_entry *e, size_t n);
/* The state root a manifest (2^depth hashes and counts, prefix order) stands for, combining
 * pairs as the tree does: two empty sides give EMPTY, a side alone with one entry moves up
 * unchanged (the shortcut leaf), anything else is H(0x01 || left || right). LEDGER_EINVAL
 * (depth out of range; a count of 0 whose hash is not EMPTY or the reverse). */
TEM_WUR int ledger_snap_manifest_root(unsigned depth, const uint8_t (*hashes)[32], const uint64_t *counts,
                                      uint8_t root[LEDGER_HASH_BYTES]);

/* What a certified snapshot proves about height h: block h's hash and time, and the state and
 * receipts roots after it (from block h+1's header). */
typedef struct {
    uint64_t height;
    uint8_t block_hash[32];
    uint64_t time_ms;
    uint8_t state_root[32], receipts_root[32];
} ledger_snap_anchor;
/* Checks an offer's proof for height h >= 1: block h+1's certificate (2f+1 genesis validators),
 * its header (chain, genesis, height h+1), and block h's header hashing to h+1's prev_hash.
 * LEDGER_OK, LEDGER_EDECODE, LEDGER_EBLOCK, LEDGER_EHEIGHT, LEDGER_EPREV, LEDGER_ECERT,
 * LEDGER_ECHAIN. */
TEM_WUR int ledger_snap_anchor_check(const ledger_genesis *g, uint64_t h, const uint8_t *blk, size_t blen,
                                     const uint8_t *next, size_t nlen, const uint8_t *cert, size_t clen,
                                     ledger_snap_anchor *a);

/* ------------------------------------------------------------------ serving */
typedef struct ledger_snapshot ledger_snapshot;
/* Opens an LMDB read view of s at its current height (cheap; call on the thread that applies
 * blocks, between blocks). While open, LMDB cannot reuse the pages later blocks free, so the
 * caller bounds how long it keeps one. LEDGER_EIO, LEDGER_ENOMEM. */
TEM_WUR int ledger_snapshot_open(ledger_store *s, ledger_snapshot **out);
/* Indexes the view by chunk and computes the manifest: O(N) hashing and a sort; run it on one
 * thread at a time (a worker is fine). LEDGER_ECORRUPT when the manifest does not give the
 * root stored for that height, LEDGER_ENOMEM, LEDGER_EIO. */
TEM_WUR int ledger_snapshot_build(ledger_snapshot *sn);
uint64_t ledger_snapshot_height(const ledger_snapshot *sn);
/* After a successful build: the cut depth, and 2^depth hashes and counts (owned by sn). */
unsigned ledger_snapshot_depth(const ledger_snapshot *sn);
const uint8_t (*ledger_snapshot_hashes(const ledger_snapshot *sn))[32];
const uint64_t *ledger_snapshot_counts(const ledger_snapshot *sn);
/* The entries of chunk `index`: *out is tem_malloc'd (caller frees), its pointers point into
 * the view and stay valid until ledger_snapshot_close. LEDGER_EINVAL (bad index or not built),
 * LEDGER_EIO, LEDGER_ENOMEM. */
TEM_WUR int ledger_snapshot_chunk(ledger_snapshot *sn, uint32_t index, ledger_snap_entry **out, size_t *n);
void ledger_snapshot_close(ledger_snapshot *sn);

/* ------------------------------------------------------------------ joining */
typedef struct ledger_snap_stage ledger_snap_stage;
/* Opens (creating) the staging environment in directory dir. LEDGER_EIO, LEDGER_ENOMEM. */
TEM_WUR int ledger_snap_stage_open(const char *dir, ledger_snap_stage **out);
void ledger_snap_stage_close(ledger_snap_stage *st);
/* The recorded target (opaque bytes: the node keeps the offer there). LEDGER_ENOTFOUND. *out is
 * tem_malloc'd. */
TEM_WUR int ledger_snap_stage_target(ledger_snap_stage *st, uint8_t **out, size_t *len);
/* Drops every staged chunk and records a new target. */
TEM_WUR int ledger_snap_stage_begin(ledger_snap_stage *st, const uint8_t *target, size_t len);
/* Drops everything (after an install, or to give a target up). */
TEM_WUR int ledger_snap_stage_clear(ledger_snap_stage *st);
bool ledger_snap_stage_has(ledger_snap_stage *st, uint32_t index);
/* Chunks stored so far. */
uint32_t ledger_snap_stage_count(ledger_snap_stage *st);
/* Stores a verified chunk's entries and marks it stored, durably, in one transaction.
 * LEDGER_EEXISTS when it is already stored. */
TEM_WUR int ledger_snap_stage_put(ledger_snap_stage *st, uint32_t index, const ledger_snap_entry *e, size_t n);
/* Replaces s's state by the staged entries, in one write transaction of s: the state table, the
 * state tree (built in one pass), the roots and the height of the anchor. The tree's root must
 * equal a->state_root (LEDGER_EROOT, nothing written otherwise). s must be below a->height
 * (LEDGER_EHEIGHT). The store then reloads its state from disk. LEDGER_EIO, LEDGER_ENOMEM,
 * LEDGER_EFULL. */
TEM_WUR int ledger_snap_stage_install(ledger_snap_stage *st, ledger_store *s, const ledger_snap_anchor *a);

#endif
