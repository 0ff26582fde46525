/* cda_book.c: the matching core (see cda_book.h): sorted price-level arrays with the best price
 * at the end, FIFO order queues threaded through a node pool, and an open-addressing id index
 * with backward-shift deletion. Integer-only and free of hidden state, like all of contracts/. */
#include "contracts/cda_book.h"

/* ------------------------------------------------------------------ id index */
static inline uint32_t cda__hash(uint64_t id, uint32_t cap) {
    return (uint32_t)((id * 0x9E3779B97F4A7C15ull) >> 32) & (cap - 1);
}

static uint32_t cda__map_find(const cda_book *b, uint64_t id) {
    if (b->map_cap == 0) return CDA__NIL;
    uint32_t i = cda__hash(id, b->map_cap);
    for (;;) {
        uint32_t v = b->map_vals[i];
        if (v == 0) return CDA__NIL;
        if (b->map_ids[i] == id) return v - 1;
        i = (i + 1) & (b->map_cap - 1);
    }
}

static void cda__map_put_nogrow(uint64_t *ids, uint32_t *vals, uint32_t cap, uint64_t id,
                                uint32_t node) {
    uint32_t i = cda__hash(id, cap);
    while (vals[i] != 0) i = (i + 1) & (cap - 1);
    ids[i] = id;
    vals[i] = node + 1;
}

/* Keeps the load at most 1/2 so probes stay short. */
static int cda__map_reserve(cda_book *b, uint32_t n) {
    if ((uint64_t)n * 2 <= b->map_cap) return CDA_BOOK_OK;
    uint32_t cap = b->map_cap ? b->map_cap : 64;
    while ((uint64_t)n * 2 > cap) cap *= 2;
    uint64_t *ids = tem_malloc(sizeof(*ids) * cap);
    uint32_t *vals = tem_calloc(cap, sizeof(*vals));
    if (!ids || !vals) {
        tem_free(ids);
        tem_free(vals);
        return CDA_BOOK_ENOMEM;
    }
    for (uint32_t i = 0; i < b->map_cap; i++)
        if (b->map_vals[i]) cda__map_put_nogrow(ids, vals, cap, b->map_ids[i], b->map_vals[i] - 1);
    tem_free(b->map_ids);
    tem_free(b->map_vals);
    b->map_ids = ids;
    b->map_vals = vals;
    b->map_cap = cap;
    return CDA_BOOK_OK;
}

static void cda__map_del(cda_book *b, uint64_t id) {
    uint32_t mask = b->map_cap - 1;
    uint32_t i = cda__hash(id, b->map_cap);
    while (b->map_ids[i] != id || b->map_vals[i] == 0) {
        TEM_ASSERT(b->map_vals[i] != 0);
        i = (i + 1) & mask;
    }
    /* Backward-shift deletion: pull later members of the probe run into the hole so lookups
     * never need tombstones. */
    uint32_t hole = i, j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (b->map_vals[j] == 0) break;
        uint32_t home = cda__hash(b->map_ids[j], b->map_cap);
        bool movable = (hole <= j) ? (home <= hole || home > j) : (home <= hole && home > j);
        if (movable) {
            b->map_ids[hole] = b->map_ids[j];
            b->map_vals[hole] = b->map_vals[j];
            hole = j;
        }
    }
    b->map_vals[hole] = 0;
}

/* ------------------------------------------------------------------ levels */
/* Sort key that makes both sides ascending towards the best price at the array's end. */
static inline uint64_t cda__key(int side, uint64_t price) { return side == CDA_BUY ? price : ~price; }

/* Index of the first level whose key is >= key(price). */
static uint32_t cda__level_lb(const cda_book *b, int side, uint64_t price) {
    const cda__level *lv = b->levels[side];
    uint64_t k = cda__key(side, price);
    uint32_t n = b->n_levels[side];
    /* Most activity is at the touch: look at the end before searching. */
    if (n == 0 || cda__key(side, lv[n - 1].price) < k) return n;
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (cda__key(side, lv[mid].price) < k) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static void cda__level_erase(cda_book *b, int side, uint32_t idx) {
    cda__level *lv = b->levels[side];
    uint32_t n = b->n_levels[side];
    TEM_ASSERT(idx < n);
    memmove(&lv[idx], &lv[idx + 1], sizeof(*lv) * (n - idx - 1));
    b->n_levels[side] = n - 1;
}

static void cda__node_unlink(cda_book *b, cda__level *lv, uint32_t ni) {
    cda__node *n = &b->nodes[ni];
    if (n->prev != CDA__NIL) b->nodes[n->prev].next = n->next;
    else lv->head = n->next;
    if (n->next != CDA__NIL) b->nodes[n->next].prev = n->prev;
    else lv->tail = n->prev;
    lv->count--;
    lv->total_wh -= n->qty_wh;
    cda__map_del(b, n->id);
    n->next = b->free_head;
    b->free_head = ni;
    b->count--;
}

/* ------------------------------------------------------------------ public */
void cda_book_init(cda_book *b) {
    memset(b, 0, sizeof(*b));
    b->free_head = CDA__NIL;
}

void cda_book_free(cda_book *b) {
    tem_free(b->levels[0]);
    tem_free(b->levels[1]);
    tem_free(b->nodes);
    tem_free(b->map_ids);
    tem_free(b->map_vals);
    cda_book_init(b);
}

int cda_book_add(cda_book *b, uint64_t id, int side, uint64_t price, uint64_t qty_wh) {
    if ((side != CDA_BUY && side != CDA_SELL) || qty_wh == 0) return CDA_BOOK_EINVAL;
    if (b->count >= CDA_BOOK_ORDERS_MAX) return CDA_BOOK_ENOMEM;
    if (cda__map_find(b, id) != CDA__NIL) return CDA_BOOK_EEXISTS;
    /* Reserve everything first so a failure leaves the book untouched. */
    if (cda__map_reserve(b, b->count + 1)) return CDA_BOOK_ENOMEM;
    if (b->free_head == CDA__NIL && b->n_nodes == b->cap_nodes) {
        uint32_t cap = b->cap_nodes ? b->cap_nodes * 2 : 64;
        cda__node *nn = tem_realloc(b->nodes, sizeof(*nn) * cap);
        if (!nn) return CDA_BOOK_ENOMEM;
        b->nodes = nn;
        b->cap_nodes = cap;
    }
    uint32_t li = cda__level_lb(b, side, price);
    bool new_level = li == b->n_levels[side] || b->levels[side][li].price != price;
    if (new_level && b->n_levels[side] == b->cap_levels[side]) {
        uint32_t cap = b->cap_levels[side] ? b->cap_levels[side] * 2 : 16;
        cda__level *nl = tem_realloc(b->levels[side], sizeof(*nl) * cap);
        if (!nl) return CDA_BOOK_ENOMEM;
        b->levels[side] = nl;
        b->cap_levels[side] = cap;
    }
    uint32_t ni;
    if (b->free_head != CDA__NIL) {
        ni = b->free_head;
        b->free_head = b->nodes[ni].next;
    } else {
        ni = b->n_nodes++;
    }
    cda__level *lv = b->levels[side];
    if (new_level) {
        memmove(&lv[li + 1], &lv[li], sizeof(*lv) * (b->n_levels[side] - li));
        lv[li] = (cda__level){.price = price, .total_wh = 0, .head = CDA__NIL, .tail = CDA__NIL};
        b->n_levels[side]++;
    }
    cda__level *l = &lv[li];
    b->nodes[ni] = (cda__node){.id = id, .price = price, .qty_wh = qty_wh, .prev = l->tail,
                               .next = CDA__NIL, .side = (uint8_t)side};
    if (l->tail != CDA__NIL) b->nodes[l->tail].next = ni;
    else l->head = ni;
    l->tail = ni;
    l->count++;
    l->total_wh += qty_wh;
    cda__map_put_nogrow(b->map_ids, b->map_vals, b->map_cap, id, ni);
    b->count++;
    return CDA_BOOK_OK;
}

int cda_book_match(cda_book *b, int side, uint64_t price, uint64_t *qty_wh, cda_fill_fn fn,
                   void *ctx) {
    TEM_ASSERT(side == CDA_BUY || side == CDA_SELL);
    int other = side ^ 1;
    uint64_t rem = *qty_wh;
    /* Walk levels from the best; a level the callback leaves partly unfilled (grid-curtailed)
     * stays behind us, so the index only ever decreases. */
    for (int64_t li = (int64_t)b->n_levels[other] - 1; li >= 0 && rem > 0; li--) {
        cda__level *lv = &b->levels[other][li];
        bool crosses = side == CDA_BUY ? lv->price <= price : lv->price >= price;
        if (!crosses) break;
        uint32_t ni = lv->head;
        while (ni != CDA__NIL && rem > 0) {
            cda__node *n = &b->nodes[ni];
            uint32_t next = n->next;
            uint64_t want = rem < n->qty_wh ? rem : n->qty_wh;
            uint64_t got = want;
            if (fn) {
                cda_order o = {.id = n->id, .price = n->price, .qty_wh = n->qty_wh, .side = other};
                int64_t r = fn(ctx, &o, want);
                if (r == CDA_FILL_STOP) {
                    if (lv->count == 0) cda__level_erase(b, other, (uint32_t)li);
                    *qty_wh = rem;
                    return CDA_BOOK_OK;
                }
                if (r < 0) {
                    *qty_wh = rem;
                    return (int)r;
                }
                TEM_ASSERT((uint64_t)r <= want);
                got = (uint64_t)r;
            }
            if (got > 0) {
                rem -= got;
                lv->total_wh -= got;
                n->qty_wh -= got;
                /* unlink subtracts the node's quantity, now zero, from the level total */
                if (n->qty_wh == 0) cda__node_unlink(b, lv, ni);
            }
            ni = next;
        }
        if (lv->count == 0) cda__level_erase(b, other, (uint32_t)li);
    }
    *qty_wh = rem;
    return CDA_BOOK_OK;
}

int cda_book_submit(cda_book *b, uint64_t id, int side, uint64_t price, uint64_t qty_wh, bool ioc,
                    cda_fill_fn fn, void *ctx, uint64_t *left_wh) {
    if ((side != CDA_BUY && side != CDA_SELL) || qty_wh == 0) return CDA_BOOK_EINVAL;
    uint64_t rem = qty_wh;
    int rc = cda_book_match(b, side, price, &rem, fn, ctx);
    if (left_wh) *left_wh = rem;
    if (rc) return rc;
    if (rem > 0 && !ioc) return cda_book_add(b, id, side, price, rem);
    return CDA_BOOK_OK;
}

int cda_book_remove(cda_book *b, uint64_t id, cda_order *out) {
    uint32_t ni = cda__map_find(b, id);
    if (ni == CDA__NIL) return CDA_BOOK_ENOTFOUND;
    cda__node *n = &b->nodes[ni];
    int side = n->side;
    uint64_t price = n->price;
    if (out) *out = (cda_order){.id = n->id, .price = n->price, .qty_wh = n->qty_wh, .side = side};
    uint32_t li = cda__level_lb(b, side, price);
    TEM_ASSERT(li < b->n_levels[side]);
    TEM_ASSERT(b->levels[side][li].price == price);
    cda__level *lv = &b->levels[side][li];
    cda__node_unlink(b, lv, ni);
    if (lv->count == 0) cda__level_erase(b, side, li);
    return CDA_BOOK_OK;
}

int cda_book_reduce(cda_book *b, uint64_t id, uint64_t qty_wh) {
    uint32_t ni = cda__map_find(b, id);
    if (ni == CDA__NIL) return CDA_BOOK_ENOTFOUND;
    if (qty_wh == 0) return CDA_BOOK_EINVAL;
    cda__node *n = &b->nodes[ni];
    uint32_t li = cda__level_lb(b, n->side, n->price);
    TEM_ASSERT(li < b->n_levels[n->side]);
    cda__level *lv = &b->levels[n->side][li];
    lv->total_wh = lv->total_wh - n->qty_wh + qty_wh;
    n->qty_wh = qty_wh;
    return CDA_BOOK_OK;
}

int cda_book_get(const cda_book *b, uint64_t id, cda_order *out) {
    uint32_t ni = cda__map_find(b, id);
    if (ni == CDA__NIL) return CDA_BOOK_ENOTFOUND;
    const cda__node *n = &b->nodes[ni];
    *out = (cda_order){.id = n->id, .price = n->price, .qty_wh = n->qty_wh, .side = n->side};
    return CDA_BOOK_OK;
}

bool cda_book_best(const cda_book *b, int side, uint64_t *price) {
    if (b->n_levels[side] == 0) return false;
    *price = b->levels[side][b->n_levels[side] - 1].price;
    return true;
}

int cda_book_walk(const cda_book *b, int side, cda_walk_fn fn, void *ctx) {
    for (int64_t li = (int64_t)b->n_levels[side] - 1; li >= 0; li--) {
        const cda__level *lv = &b->levels[side][li];
        for (uint32_t ni = lv->head; ni != CDA__NIL; ni = b->nodes[ni].next) {
            const cda__node *n = &b->nodes[ni];
            cda_order o = {.id = n->id, .price = n->price, .qty_wh = n->qty_wh, .side = side};
            int r = fn(ctx, &o);
            if (r) return r;
        }
    }
    return 0;
}

bool cda_book_level(const cda_book *b, int side, uint32_t i, uint64_t *price, uint64_t *total_wh) {
    if (i >= b->n_levels[side]) return false;
    const cda__level *lv = &b->levels[side][b->n_levels[side] - 1 - i];
    *price = lv->price;
    *total_wh = lv->total_wh;
    return true;
}

int cda_book_check(const cda_book *b) {
    uint32_t seen = 0;
    for (int side = 0; side < 2; side++) {
        for (uint32_t li = 0; li < b->n_levels[side]; li++) {
            const cda__level *lv = &b->levels[side][li];
            if (li > 0 && cda__key(side, b->levels[side][li - 1].price) >= cda__key(side, lv->price))
                return -1;
            if (lv->count == 0 || lv->head == CDA__NIL) return -1;
            uint64_t total = 0;
            uint32_t cnt = 0, prev = CDA__NIL;
            for (uint32_t ni = lv->head; ni != CDA__NIL; ni = b->nodes[ni].next) {
                const cda__node *n = &b->nodes[ni];
                if (n->prev != prev || n->price != lv->price || n->side != side || n->qty_wh == 0)
                    return -1;
                if (cda__map_find(b, n->id) != ni) return -1;
                total += n->qty_wh;
                cnt++;
                prev = ni;
                if (cnt > b->count) return -1;
            }
            if (prev != lv->tail || cnt != lv->count || total != lv->total_wh) return -1;
            seen += cnt;
        }
    }
    return seen == b->count ? 0 : -1;
}
