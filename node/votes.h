/* votes.h: the validator's pBFT vote record (consensus/pbft.h PBFT_VOTES_KEY) in an LMDB
 * environment of its own, <data_dir>/votes, beside the ledger's data.mdb.
 *
 * Why its own environment: LMDB allows one write transaction per environment at a time, and a
 * block's commit (page writes and fdatasync, 9-60 ms) holds the ledger's writer lock for its
 * whole length. A vote must be durable before it leaves (consensus/host.h, io.persist), so a
 * vote record written to the ledger's environment would wait for the block's commit, and the
 * next height's votes could not overlap it. A separate environment has its own writer lock and
 * its own fsync: a vote never waits for a block.
 *
 * Older data dirs hold the record in the ledger's meta table (ledger_store_meta_put under
 * PBFT_VOTES_KEY); node_votes_adopt moves it here once, at start.
 *
 * One thread at a time per handle (temd: the loop thread); any thread may be that thread
 * (MDB_NOTLS). Error codes are the ledger's (ledger/ledger.h), so node_is_disk_full and
 * ledger_strerror apply to them unchanged. */
#ifndef NODE_VOTES_H
#define NODE_VOTES_H

#include "ledger/ledger.h"

#include <stddef.h>
#include <stdint.h>

/* The directory under the data dir. */
#define NODE_VOTES_DIR "votes"
/* LMDB map (address space; the file grows with use). A record carries the prepared block of
 * each height above the last delivered one (at most PBFT_LOG_MAX blocks of at most
 * PBFT_BLOCK_BYTES_MAX bytes, 1 GiB), and copy-on-write keeps the previous record's pages until
 * the new one is committed: room for three of the largest records. */
#define NODE_VOTES_MAP_BYTES ((size_t)4 << 30)

typedef struct node_votes node_votes;

/* Opens the vote store in <data_dir>/votes, creating the directory and the environment if
 * needed (the data dir itself must exist: ledger_store_open creates it), and remembers whether
 * it had to create it (node_votes_adopt). The directory entries are fsync'd, so a record
 * written later is not lost with its file's name in a crash.
 * *out is owned by the caller until node_votes_close. LEDGER_OK; LEDGER_EINVAL (path too long);
 * LEDGER_ENOMEM; LEDGER_EDISKFULL (no space for the new files); LEDGER_EIO (anything else,
 * logged on stderr with LMDB's or errno's name). On error *out is unchanged. */
TEM_WUR int node_votes_open(const char *data_dir, node_votes **out);
/* Closes the environment and frees v. NULL is a no-op. */
void node_votes_close(node_votes *v);

/* Replaces the record with rec[0..len) in one write transaction; durable when it returns
 * LEDGER_OK (the commit fsyncs). rec is borrowed. LEDGER_OK; LEDGER_EDISKFULL (ENOSPC, EDQUOT)
 * or LEDGER_EFULL (the map is full): node_is_disk_full recognises both; LEDGER_ENOMEM;
 * LEDGER_EIO. On error the previous record is still the one stored. */
TEM_WUR int node_votes_put(node_votes *v, const uint8_t *rec, size_t len);
/* A tem_malloc'd copy of the record (caller frees; a 0-byte record is a valid allocation of
 * length 0). LEDGER_OK; LEDGER_ENOTFOUND (no record was ever written); LEDGER_ENOMEM;
 * LEDGER_EIO. On error *rec and *len are unchanged. */
TEM_WUR int node_votes_get(node_votes *v, uint8_t **rec, size_t *len);

/* Where the record came from at start (node_votes_adopt). */
typedef enum {
    NODE_VOTES_NONE,     /* no record anywhere: a new data dir, or a vote store that exists but
                          * was never written (this validator has not voted from it) */
    NODE_VOTES_HELD,     /* the vote store holds it */
    NODE_VOTES_MIGRATED, /* copied from the ledger's meta table just now */
    NODE_VOTES_LOST,     /* data.mdb carries the mark (a vote store was opened for it before),
                          * but node_votes_open had to create the vote store: votes/ was lost
                          * or not restored with data.mdb. The node must act as if it had lost
                          * its votes; the vote store remembers this (across restarts) until
                          * node_votes_end_wait. */
} node_votes_origin;

/* The ledger's meta record under PBFT_VOTES_KEY once a vote store exists for the data dir. It
 * starts with a 0 byte, which no protobuf message can (field number 0 is invalid), so an older
 * temd that still reads the record there refuses it (PBFT_ERECORD: it does not start consensus)
 * instead of voting from a stale copy. */
#define NODE_VOTES_MOVED_MARK "\0vote record moved to <data_dir>/votes"
#define NODE_VOTES_MOVED_MARK_BYTES (sizeof NODE_VOTES_MOVED_MARK - 1)

/* Run once at start, before consensus: makes the vote store the only source of the record.
 * When the ledger's meta table holds a record under PBFT_VOTES_KEY (a data dir from before
 * the vote store, or one an older temd wrote to since), it is the newest: it is copied here
 * (durably), then replaced there by NODE_VOTES_MOVED_MARK (durably). A crash between the two
 * writes copies it again at the next start, which is harmless. Otherwise the mark is written
 * if it is not there yet, and a LOST finding is recorded in the vote store, so a restart
 * before node_votes_end_wait is LOST again. *origin says what was found.
 * LEDGER_OK, or a code of node_votes_get/put or ledger_store_meta_get/put (nothing is left
 * half-done: the ledger's record is replaced only after the copy is durable). */
TEM_WUR int node_votes_adopt(node_votes *v, ledger_store *s, node_votes_origin *origin);

/* After a LOST start, once the node may vote again (it has followed the chain past the tip f+1
 * validators name): forgets the LOST state, durably; call it before the first vote. A no-op
 * otherwise. LEDGER_OK, or a code of node_votes_put. */
TEM_WUR int node_votes_end_wait(node_votes *v);

#endif
