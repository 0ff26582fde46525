/* call.h: the uniform-price call auction's clearing rule over one slot's book (docs/market.md,
 * "Call auction"). Pure integer arithmetic over the book's aggregated price levels; the market
 * contract then allocates the clearing volume pair by pair through the grid check.
 *
 * Rule, in order:
 *   1. Candidate prices are the limit prices present in the book. D(p) = Wh of buys with limit
 *      >= p, S(p) = Wh of sells with limit <= p, V(p) = min(D(p), S(p)).
 *   2. Keep the candidates with the largest V; among them those with the smallest |D - S|.
 *   3. lo and hi are the lowest and highest kept candidate; the clearing price is
 *      lo + floor((hi - lo) / 2): the middle of the interval, rounded down to the micro-unit.
 *      Every price in [lo, hi] clears V, so the midpoint does too.
 *   4. V = 0 means no clearing. */
#ifndef CALL_H
#define CALL_H

#include "contracts/cda_book.h"

typedef struct {
    uint64_t price;     /* uniform clearing price, micro-units per kWh (0 when volume is 0) */
    uint64_t volume_wh; /* Wh that clear at that price */
    uint64_t lo, hi;    /* the kept candidate interval (step 3) */
    uint64_t demand_wh, supply_wh; /* D and S at the clearing price */
} call_result;

/* Computes the clearing of `b` (not modified). Quantities are bounded by the market's order
 * limits, so the sums fit in 64 bits (asserted). */
void call_clear(const cda_book *b, call_result *out);

#endif
