/* replica.h: temd's side of the pBFT host (consensus/host.h). replica.c implements the host's I/O
 * with libuv timers, the vote store (votes.h: the vote record, fsync'd before a vote leaves) and
 * the peer transport, and calls node.c for what the node does with a delivered block, a proposal
 * request, a validation or a block fetch. Validators only: observers follow the chain by block sync. */
#ifndef NODE_REPLICA_H
#define NODE_REPLICA_H

struct node;

/* Initialises the replica from the store (last block, certificate) and the vote store (the
 * persisted vote record; n->votes must be open) and starts it. NODE_OK, NODE_ESTORE (the last
 * block's certificate or the vote record is unreadable), NODE_ENOMEM,
 * NODE_ECONSENSUS (bad genesis, unreadable record, or the first write failed; logged). */
int node_replica_start(struct node *n);
/* Feeds an event to the host (its bytes are copied if it has to wait). A refusal (the host's
 * FIFO is full, or no memory for the copy) is logged and counted: a peer's message is then as
 * lost as a dropped frame, which the protocol's retransmission and fetch timers cover. */
void node_replica_post(struct node *n, const pbft_event *ev);
/* The answer to a validation node_validate started. */
void node_replica_validated(struct node *n, const pbft_event *ev);
/* Frees the host and the replica. Safe when consensus never started. */
void node_replica_free(struct node *n);

#endif
