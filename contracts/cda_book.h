/* cda_book.h: the in-memory matching core of one delivery slot's order book: price levels with
 * FIFO queues (price-time priority), an id index for cancels, and a matching walk that asks a
 * callback how much of each candidate match may execute (the grid check curtails through it).
 *
 * The core knows nothing about accounts, escrow or the ledger: the market contract keeps it as
 * a cache of the resting orders stored in the ledger state and rebuilds it from there whenever
 * it cannot vouch for it. It is also what `bench_cda` measures, without signatures.
 *
 * Memory: a book owns its arrays (tem_malloc'd); cda_book_free releases them. Every function
 * that may grow an array returns CDA_BOOK_ENOMEM and leaves the book as it was. */
#ifndef CDA_BOOK_H
#define CDA_BOOK_H

#include "ledger/tem.h"

enum { CDA_BUY = 0, CDA_SELL = 1 };

enum {
    CDA_BOOK_OK = 0,
    CDA_BOOK_ENOMEM = -1,
    CDA_BOOK_EEXISTS = -2,  /* an order with this id is already in the book */
    CDA_BOOK_ENOTFOUND = -3,
    CDA_BOOK_EINVAL = -4,   /* zero quantity, bad side */
};

/* A resting order as the callback and lookups see it. */
typedef struct {
    uint64_t id;     /* caller's order id, unique within the book (the market uses its seq) */
    uint64_t price;  /* limit price, micro-units per kWh */
    uint64_t qty_wh; /* remaining quantity */
    int side;        /* CDA_BUY or CDA_SELL */
} cda_order;

typedef struct {
    uint64_t price;
    uint64_t total_wh; /* sum of remaining quantities at this price */
    uint32_t head, tail, count;
} cda__level;

typedef struct {
    uint64_t id, price, qty_wh;
    uint32_t prev, next; /* FIFO links within the level; CDA__NIL ends */
    uint8_t side;
} cda__node;

typedef struct {
    /* levels[CDA_BUY] ascending, levels[CDA_SELL] descending: the best price is always last,
     * so taking the best level is a pop and new orders near the touch move little memory. */
    cda__level *levels[2];
    uint32_t n_levels[2], cap_levels[2];
    cda__node *nodes;
    uint32_t n_nodes, cap_nodes, free_head;
    uint64_t *map_ids; /* open addressing id -> node index + 1 (0 = empty) */
    uint32_t *map_vals;
    uint32_t map_cap, count;
} cda_book;

#define CDA__NIL UINT32_MAX
#define CDA_BOOK_ORDERS_MAX (1u << 28)

/* Callback of cda_book_match: `want_wh` is min(incoming remaining, resting remaining). Returns
 * how much may execute, 0..want_wh (0 = skip this resting order, both stay intact),
 * CDA_FILL_STOP to end the walk normally, or another negative error that stops the walk and is
 * returned by cda_book_match. It must not modify the book. */
#define CDA_FILL_STOP INT64_MIN
typedef int64_t (*cda_fill_fn)(void *ctx, const cda_order *resting, uint64_t want_wh);

void cda_book_init(cda_book *b);
void cda_book_free(cda_book *b);
/* Number of resting orders. */
static inline uint32_t cda_book_count(const cda_book *b) { return b->count; }

/* Rests an order without matching. CDA_BOOK_OK, ENOMEM, EEXISTS, EINVAL. */
TEM_WUR int cda_book_add(cda_book *b, uint64_t id, int side, uint64_t price, uint64_t qty_wh);
/* Matches an incoming order of `side` with limit `price` against the opposite side in priority
 * order while prices cross. *qty_wh is the incoming quantity in, what is left out. `fn` may be
 * NULL (everything executes). Resting orders filled to zero leave the book. Returns 0 or the
 * callback's negative error (fills done before it stay done). */
TEM_WUR int cda_book_match(cda_book *b, int side, uint64_t price, uint64_t *qty_wh, cda_fill_fn fn,
                           void *ctx);
/* Match, then rest what is left unless `ioc`. *rested says whether something rested. */
TEM_WUR int cda_book_submit(cda_book *b, uint64_t id, int side, uint64_t price, uint64_t qty_wh,
                            bool ioc, cda_fill_fn fn, void *ctx, uint64_t *left_wh);
/* Removes order `id`, copying it to *out if out is not NULL. CDA_BOOK_OK or ENOTFOUND. */
int cda_book_remove(cda_book *b, uint64_t id, cda_order *out);
/* Sets the remaining quantity of a resting order (> 0; keeps its time priority). */
int cda_book_reduce(cda_book *b, uint64_t id, uint64_t qty_wh);
/* CDA_BOOK_OK with *out, or ENOTFOUND. */
int cda_book_get(const cda_book *b, uint64_t id, cda_order *out);
/* Best price of a side; false when the side is empty. */
bool cda_book_best(const cda_book *b, int side, uint64_t *price);
/* Calls fn for every resting order of `side` in priority order (best price first, then time);
 * a non-zero return stops the walk and is returned. fn must not modify the book. */
typedef int (*cda_walk_fn)(void *ctx, const cda_order *o);
int cda_book_walk(const cda_book *b, int side, cda_walk_fn fn, void *ctx);
/* Aggregated levels of a side in priority order: level i (0 = best). false past the end. */
bool cda_book_level(const cda_book *b, int side, uint32_t i, uint64_t *price, uint64_t *total_wh);
static inline uint32_t cda_book_levels(const cda_book *b, int side) { return b->n_levels[side]; }
/* Checks every internal invariant (sorted levels, totals, links, index); 0 or -1. Tests. */
int cda_book_check(const cda_book *b);

#endif
