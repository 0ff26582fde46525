/* sync.h: state sync in temd (docs/ledger.md "State sync", docs/operate.md "Joining by state
 * sync"). Serving: every sync_snapshot_interval blocks a node keeps an LMDB read view of its
 * state (the newest two), indexes it in the thread pool and answers SnapshotRequest and
 * ChunkRequest from it, each peer limited by a token bucket and a short queue; chunks are read
 * and encoded in the thread pool one at a time, so serving costs the loop thread only the send. Joining (sync_enable on an empty store): the node asks the validators for snapshots,
 * checks the newest offer's certificate and manifest, fetches the chunks from every validator
 * that offers the same snapshot (round-robin, a cap per peer, a timeout that moves a chunk to
 * another peer), stores each verified chunk durably (data_dir/statesync, so a restart resumes),
 * installs the state, applies block h+1 from the offer and then follows blocks as usual.
 * Everything runs on the loop thread except the snapshot index build. */
#ifndef NODE_SYNC_H
#define NODE_SYNC_H

#include "net/net.h"
#include "proto/tem.pb-c.h"

#include <stdbool.h>
#include <stdint.h>

struct node;

/* After the store and the transport are up. Opens the staging env when joining (resuming a
 * recorded target, or dropping it when the store is already past it). NODE_OK, NODE_ENOMEM,
 * NODE_ESTORE, NODE_ECONFIG (state sync with the indexer). */
int node_sync_start(struct node *n);
/* After the loop has ended, before the store closes. */
void node_sync_free(struct node *n);
/* True while the node is joining by state sync: it neither polls for blocks nor votes. */
bool node_sync_joining(const struct node *n);
/* From the tick: serves queued requests; drives the fetch (requests, timeouts, install). */
void node_sync_tick(struct node *n);
/* After each applied block: takes a snapshot at the interval. */
void node_sync_block_applied(struct node *n, uint64_t height);
/* A SnapshotRequest, SnapshotOffer, ChunkRequest or StateChunk from a peer. */
void node_sync_frame(struct node *n, const net_peer_info *p, const Tem__V1__NodeMessage *m);
void node_sync_peer_down(struct node *n, uint32_t peer_id);

#endif
