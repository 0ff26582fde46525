/* events.h: the event hub behind GET /v1/events (docs/api.md "Events"). After each committed
 * block the node hands the hub that block's events (block, tx receipts, trades, curtailments,
 * settlements); the hub writes each subscriber the events its filter selects, as Server-Sent
 * Events. A subscriber may start from an earlier height: the hub replays committed blocks
 * through a loader, paced by the subscriber's own reading speed, then follows live.
 *
 * The node never waits on a subscriber: writes go to a per-subscriber queue (the sink's). A
 * subscriber whose queue still holds more than buffer_bytes_max when the next block's events
 * arrive is dropped with a final `dropped` event naming the id to resume from. Subscribers are
 * bounded in total and per client address.
 *
 * The hub knows subscribers only as opaque sinks driven through node_events_sink_ops, so the
 * tests run it without HTTP (tests/test_events.c). Everything runs on one thread. */
#ifndef NODE_EVENTS_H
#define NODE_EVENTS_H

#include "ledger/tem.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NODE_EVENTS_ERRNO_MAP(X)                                                                   \
    X(EINVAL, -540, "invalid argument or filter")                                                  \
    X(EFULL, -541, "too many event subscribers on this node")                                      \
    X(ELIMIT, -542, "too many event subscribers from this address")                                \
    X(EREPLAY, -543, "resume point is older than the replay window")                               \
    X(ENOMEM, -544, "out of memory")

enum node_events_err {
    NODE_EVENTS_OK = 0,
#define NODE_EVENTS_X(name, val, msg) NODE_EVENTS_##name = val,
    NODE_EVENTS_ERRNO_MAP(NODE_EVENTS_X)
#undef NODE_EVENTS_X
};
const char *node_events_strerror(int err);
/* "EINVAL", "EFULL", ...; NULL for a code not in the list. */
const char *node_events_errname(int err);

/* Event kinds, as bits of a filter. */
enum {
    NODE_EV_BLOCK = 1,
    NODE_EV_TX = 2,
    NODE_EV_TRADE = 4,
    NODE_EV_CURTAILMENT = 8,
    NODE_EV_SETTLEMENT = 16,
    NODE_EV_ALL = 31,
};
/* "block", "tx", "trade", "curtailment", "settlement"; NULL for anything else. */
const char *node_events_kind_name(uint32_t kind);

#define NODE_EVENTS_ACCOUNTS_MAX 2
#define NODE_EVENTS_SUBS_MAX_DEFAULT 256
#define NODE_EVENTS_SUBS_PER_ADDR_DEFAULT 8
#define NODE_EVENTS_BUFFER_BYTES_DEFAULT (1u << 20)
#define NODE_EVENTS_REPLAY_BLOCKS_DEFAULT 1000
#define NODE_EVENTS_ADDR_MAX 64

/* One event. `json` is the SSE data line (no newline), tem_malloc'd, owned by its batch. */
typedef struct {
    uint32_t index; /* position in its block's event list: the id is "height:index" */
    uint32_t kind;  /* one NODE_EV_* bit */
    bool has_slot;
    uint64_t slot;
    uint32_t n_accounts;
    uint8_t accounts[NODE_EVENTS_ACCOUNTS_MAX][33]; /* the participants it concerns */
    char *json;
    size_t json_len;
} node_event;

/* The events of one committed block, index 0, 1, ... in order. */
typedef struct {
    uint64_t height;
    node_event *ev;
    uint32_t n, cap;
} node_events_batch;

void node_events_batch_init(node_events_batch *b, uint64_t height);
/* Appends an event; `json` is copied; index is set to the batch position. NODE_EVENTS_OK or
 * NODE_EVENTS_ENOMEM (batch unchanged). accounts may be NULL when n_accounts is 0. */
TEM_WUR int node_events_batch_add(node_events_batch *b, uint32_t kind, bool has_slot, uint64_t slot,
                                  const uint8_t (*accounts)[33], uint32_t n_accounts, const char *json);
void node_events_batch_free(node_events_batch *b);

/* What a subscriber wants. kinds 0 = all. Start: from block `from_height` (events of that block
 * with index > after_index when `resume`, else all of them); from_height 0 = live only. */
typedef struct {
    uint32_t kinds;
    bool has_account;
    uint8_t account[33];
    bool has_slot;
    uint64_t slot;
    uint64_t from_height;
    bool resume;
    uint32_t after_index;
} node_events_filter;

/* Parses the query string (kinds=tx,trade&account=HEX&slot=N&from_height=H) and an optional
 * Last-Event-ID ("H:I", which wins over from_height). NODE_EVENTS_OK or NODE_EVENTS_EINVAL
 * with a message in err. */
TEM_WUR int node_events_filter_parse(node_events_filter *f, const char *query, const char *last_event_id,
                                     char *err, size_t errlen);
bool node_events_filter_match(const node_events_filter *f, const node_event *e);

/* How the hub drives a subscriber's sink. */
typedef struct {
    /* Queues bytes; 0, or negative when the client is gone (the hub then ends the sink). */
    int (*write)(void *sink, const void *data, size_t len);
    /* Bytes written and not yet taken by the client. */
    size_t (*queued)(void *sink);
    /* Forgets queued bytes not yet handed to the socket (a dropped subscriber's backlog). */
    void (*discard)(void *sink);
    /* Last call for a sink: flush, finish the response, release it. */
    void (*end)(void *sink);
} node_events_sink_ops;

/* Fills `out` (initialised by the caller) with the events of the committed block at `height`.
 * 0, or non-zero when that block cannot be read (the subscriber is then ended). */
typedef int (*node_events_load_fn)(void *ctx, uint64_t height, node_events_batch *out);

typedef struct {
    uint32_t subs_max;          /* 0 -> NODE_EVENTS_SUBS_MAX_DEFAULT */
    uint32_t subs_per_addr_max; /* 0 -> NODE_EVENTS_SUBS_PER_ADDR_DEFAULT */
    size_t buffer_bytes_max;    /* 0 -> NODE_EVENTS_BUFFER_BYTES_DEFAULT */
    uint32_t replay_blocks_max; /* 0 -> NODE_EVENTS_REPLAY_BLOCKS_DEFAULT */
} node_events_config;

typedef struct node_events node_events;

/* NODE_EVENTS_OK, NODE_EVENTS_ENOMEM. `tip` is the last committed height now. */
TEM_WUR int node_events_new(const node_events_config *cfg, const node_events_sink_ops *ops, node_events_load_fn load,
                            void *load_ctx, uint64_t tip, node_events **out);
/* Whether node_events_subscribe would accept (addr, f) now: the same codes, nothing changes. */
TEM_WUR int node_events_check(const node_events *hub, const char *addr, const node_events_filter *f);
/* Adds a subscriber; on success the hub owns `sink` (ends it when done) and has written the
 * stream's preamble and whatever replay fits. On an error nothing is written and the caller
 * keeps the sink. NODE_EVENTS_OK, EFULL (subs_max), ELIMIT (subs_per_addr_max for `addr`),
 * EREPLAY (from_height more than replay_blocks_max blocks below the tip), ENOMEM. */
TEM_WUR int node_events_subscribe(node_events *hub, const char *addr, const node_events_filter *f, void *sink);
/* The block at b->height (= tip + 1) committed: write its events to every live subscriber,
 * dropping those over their buffer. */
void node_events_publish(node_events *hub, const node_events_batch *b);
/* The sink has sent everything queued: continue its replay. */
void node_events_drained(node_events *hub, void *sink);
/* The sink's client left: the hub ends the sink and forgets the subscriber. */
void node_events_gone(node_events *hub, void *sink);
uint32_t node_events_count(const node_events *hub);
uint64_t node_events_dropped_total(const node_events *hub);
/* Ends every sink and frees the hub. NULL is a no-op. */
void node_events_free(node_events *hub);

#endif
