/* host.h: the one pBFT host. It drives a pbft_replica for a program that embeds it: takes events,
 * steps the replica, and performs the actions it returns, in order, over an I/O interface
 * (host_io) the program implements. temd implements it with libuv, LMDB and the peer transport
 * (node/replica.c); the simulator implements it in memory (tests/sim/sim.c). There is no other
 * interpreter of pbft_actions. docs/consensus.md, "The host", describes the rules.
 *
 * Pure like the rest of consensus/: no socket, clock, disk or random source; the program feeds
 * time in as timer events and does all I/O in the callbacks.
 *
 * The rules the host enforces, so no program has to get them right itself:
 *   - a PERSIST completes (durably) before any later action of its list is performed, so no vote
 *     leaves before the record that remembers it is on disk; a failed PERSIST or DELIVER halts
 *     the host: nothing after it is performed and every later call returns PBFT_EHALTED;
 *   - events that arrive while the host is busy (inside a callback, or waiting for a PERSIST)
 *     wait in a FIFO of HOST_EVENTS_MAX; a full FIFO refuses the event with PBFT_EFULL and the
 *     caller decides (back-pressure or a logged refusal): nothing is dropped silently;
 *   - validation requests wait in a queue of HOST_VALIDATIONS_MAX and are handed to the program
 *     one at a time, only once the parent block is delivered (block h carries the state root
 *     after h-1); a request that finds the queue full is refused and reported, never dropped
 *     silently.
 *
 * Errors are the pbft codes (pbft.h). The host owns copies of queued events and of queued
 * validation requests; everything it passes to a callback is borrowed for that call only. */
#ifndef HOST_H
#define HOST_H

#include "consensus/pbft.h"

/* Events queued while the host is busy. Peers' messages arrive between steps; only a PERSIST in
 * flight (the simulator's asynchronous disk) or a burst of fetched blocks fills this. */
#define HOST_EVENTS_MAX 256
/* Validation requests waiting for their parent or for the one in flight. The replica asks only
 * for height delivered+1, at most PBFT__SLOT_BLOCKS blocks per height and view. */
#define HOST_VALIDATIONS_MAX PBFT_LOG_MAX
/* Returned by host_io.persist when the write is under way; the program calls host_persist_done. */
#define HOST_PERSIST_PENDING 1

typedef struct {
    void *ctx; /* passed to every callback */
    /* A consensus message to validator `to`, or to every other validator (PBFT_TO_ALL). Best
     * effort: the replica retransmits what matters, so a failed send is the program's to log. */
    void (*send)(void *ctx, uint32_t to, const uint8_t *msg, size_t len);
    /* Stores the vote record under PBFT_VOTES_KEY, replacing the previous one. Returns PBFT_OK
     * when it is durable, HOST_PERSIST_PENDING when the write is under way (the host performs
     * nothing more until host_persist_done), or a negative code: the host halts. */
    int (*persist)(void *ctx, const uint8_t *rec, size_t len);
    /* (Re)arms timer t to fire after ms with this seq (a later SET replaces the pending firing);
     * the firing comes back as a PBFT_EV_TIMER event carrying the seq. */
    void (*set_timer)(void *ctx, pbft_timer t, uint64_t ms, uint64_t seq);
    void (*cancel_timer)(void *ctx, pbft_timer t);
    /* Applies a committed block (a->height, view, block_hash, msg: the block, cert: its
     * CommitCertificate) durably. PBFT_OK, or a negative code: the host halts. */
    int (*deliver)(void *ctx, const pbft_action *a);
    /* Build a block at height on the last delivered one; answer with a PBFT_EV_PROPOSAL event. */
    void (*request_proposal)(void *ctx, uint64_t height);
    /* Start checking a proposal whose parent is delivered; answer with host_validated (possibly
     * from inside this call). PBFT_OK, or a negative code (the program cannot start it now, e.g.
     * out of memory): the host keeps the request and offers it again after the next event. */
    int (*validate)(void *ctx, uint64_t height, const uint8_t hash[32], const uint8_t *block,
                    size_t len);
    /* Fetch committed blocks from height `from` on; feed them as PBFT_EV_BLOCK_FETCHED. */
    void (*request_blocks)(void *ctx, uint64_t from);
    /* Optional (NULL = none). Called after every step with the replica's answer (PBFT_OK or why
     * it ignored the event), before the step's actions are performed. */
    void (*stepped)(void *ctx, const pbft_event *ev, int rc);
    /* Optional. Something the host refused or that failed inside it: err (a pbft code), what
     * ("validation", "persist", "deliver", "step"), the height concerned (0 if none). */
    void (*report)(void *ctx, int err, const char *what, uint64_t height);
} host_io;

/* Everything below is private to consensus/: use the functions. */
typedef struct {
    pbft_event ev;
    uint8_t *data, *cert; /* owned copies of ev.data / ev.cert */
} host__event;

typedef struct {
    uint64_t height;
    uint8_t hash[32];
    uint8_t *block; /* owned (taken from the action) */
    size_t len;
} host__validation;

typedef struct {
    pbft_replica *r; /* borrowed */
    host_io io;
    pbft_actions *acts; /* the list being performed; tem_calloc'd */
    uint32_t next;      /* index of the next action of acts to perform */
    uint32_t persists_pending;
    bool running, halted;
    int halt_err;
    host__event q[HOST_EVENTS_MAX];
    uint32_t q_head, q_n;
    host__validation val[HOST_VALIDATIONS_MAX];
    uint32_t val_n;
    bool validating; /* one validation is with the program */
    uint64_t validating_height;
    uint8_t validating_hash[32];
    bool answered; /* its answer arrived and waits to be stepped */
    bool answer_ok;
    uint64_t events_refused, validations_refused;
} host;

/* Prepares h to drive r, which the caller initialised (and restored) and keeps alive until
 * host_free. io is copied. Performs nothing yet. PBFT_EINVAL (a required callback is NULL: all
 * but stepped and report), PBFT_ENOMEM. On error h holds nothing to free. */
TEM_WUR int host_init(host *h, pbft_replica *r, const host_io *io);
/* pbft_replica_start, then performs its actions. PBFT_OK, PBFT_ENOMEM, PBFT_EHALTED (a PERSIST
 * or DELIVER failed; reported). */
TEM_WUR int host_start(host *h);
/* Feeds one event: steps it at once when the host is idle, else queues a copy. The replica's
 * verdict on the event goes to io.stepped, not to the return value. PBFT_OK (stepped or
 * queued), PBFT_EFULL (HOST_EVENTS_MAX events wait: refused, nothing changed), PBFT_ENOMEM (no
 * memory for the copy: refused, nothing changed), PBFT_EHALTED, PBFT_EINVAL (a VALIDATED event:
 * use host_validated). ev's buffers are borrowed for the call only. */
TEM_WUR int host_post(host *h, const pbft_event *ev);
/* The answer to the validation io.validate started. Never fails for lack of room: one answer
 * has one slot. PBFT_OK, PBFT_ESTALE (no validation of that block is in flight: ignored),
 * PBFT_EHALTED. */
int host_validated(host *h, uint64_t height, const uint8_t hash[32], bool ok);
/* The write io.persist answered HOST_PERSIST_PENDING for is durable (rc = PBFT_OK) or failed
 * (rc < 0: the host halts). Writes complete in the order they were issued. PBFT_OK,
 * PBFT_ESTATE (no write is pending), PBFT_EHALTED. */
int host_persist_done(host *h, int rc);
/* Events waiting in the FIFO; validation requests waiting (not counting the one in flight);
 * whether the host halted (and why). */
uint32_t host_queued(const host *h);
uint32_t host_validations_waiting(const host *h);
bool host_halted(const host *h, int *err);
/* Frees the queues and the action list (not the replica). Safe on a zeroed host. */
void host_free(host *h);

#endif
