/* api_market.c: the market views of the HTTP API: a slot's order book, its trades, the money and
 * token supply, and the installed feeder with the grid check's recent curtailments.
 *
 * Trades live in the consensus state only until their slot is settled. So that clients and the
 * testnet report can still list a settled slot, the node keeps a trade archive of its own (not
 * consensus data): before applying a block it stores the trade list of every slot whose gate has
 * closed by that block's time (its trades are final), under the store's node records
 * ("trades/<slot>"), once per slot. Any node that applied the blocks
 * holds the same archive; `temctl replay` re-derives trades from the chain itself. */
#include "contracts/grid.h"
#include "node/node_internal.h"

#include <errno.h>
#include <jansson.h>

/* The largest slot whose start (genesis time + slot * slot_ms) fits the chain's int64 clock. */
static uint64_t slot_max(const node *n) {
    int64_t ms = n->g.market.slot_ms > 0 ? n->g.market.slot_ms : 1;
    return (uint64_t)((INT64_MAX - (int64_t)n->g.genesis_time_ms) / ms);
}

/* A slot number in 0..slot_max; anything else (not a number, past 2^64, past the clock) is
 * refused so a client gets 400 naming the range rather than an empty 200. */
static bool parse_slot(const node *n, const char *s, uint64_t *out) {
    char *end;
    if (!s || !*s || *s < '0' || *s > '9') return false;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno == ERANGE || v > slot_max(n)) return false;
    *out = v;
    return true;
}

static void reply_bad_slot(const node *n, net_http_req *req) {
    char msg[128];
    snprintf(msg, sizeof msg, "slot must be a number from 0 to %llu", (unsigned long long)slot_max(n));
    node_reply_err(req, 400, "ESLOT", msg);
}

/* ------------------------------------------------------------------ book */
typedef struct {
    json_t *bids, *asks;
} book_ctx;

static int book_fn(void *ctx, const contracts_order *o) {
    book_ctx *b = ctx;
    json_t *j = json_object();
    json_object_set_new(j, "txid", node_hexj(o->txid, 32));
    json_object_set_new(j, "owner", node_hexj(o->owner, 33));
    json_object_set_new(j, "bus", json_integer(o->bus));
    json_object_set_new(j, "price", json_integer((json_int_t)o->price));
    json_object_set_new(j, "quantity_wh", json_integer((json_int_t)o->qty_wh));
    json_object_set_new(j, "remaining_wh", json_integer((json_int_t)o->remaining_wh));
    json_object_set_new(j, "seq", json_integer((json_int_t)o->seq));
    json_array_append_new(o->side == TEM__V1__SIDE__BUY ? b->bids : b->asks, j);
    return 0;
}

/* Price-time priority: bids high to low, asks low to high, then arrival. */
static int cmp_bid(const void *a, const void *b) {
    const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    json_int_t px = json_integer_value(json_object_get(x, "price")), py = json_integer_value(json_object_get(y, "price"));
    if (px != py) return px > py ? -1 : 1;
    return json_integer_value(json_object_get(x, "seq")) < json_integer_value(json_object_get(y, "seq")) ? -1 : 1;
}
static int cmp_ask(const void *a, const void *b) {
    const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    json_int_t px = json_integer_value(json_object_get(x, "price")), py = json_integer_value(json_object_get(y, "price"));
    if (px != py) return px < py ? -1 : 1;
    return json_integer_value(json_object_get(x, "seq")) < json_integer_value(json_object_get(y, "seq")) ? -1 : 1;
}
static json_t *sorted(json_t *arr, int (*cmp)(const void *, const void *)) {
    size_t n = json_array_size(arr);
    json_t **v = tem_calloc(n ? n : 1, sizeof *v);
    json_t *out = json_array();
    if (v) {
        for (size_t i = 0; i < n; i++) v[i] = json_array_get(arr, i);
        qsort(v, n, sizeof *v, cmp);
        for (size_t i = 0; i < n; i++) json_array_append(out, v[i]);
        tem_free(v);
    }
    json_decref(arr);
    return out;
}

static void h_book(void *ctx, net_http_req *req, const net_http_request *r) {
    node *n = ctx;
    uint64_t slot;
    if (!parse_slot(n, r->path + strlen("/v1/book/"), &slot)) {
        reply_bad_slot(n, req);
        return;
    }
    book_ctx b = {json_array(), json_array()};
    if (contracts_order_iter(ledger_store_state(n->store), slot, book_fn, &b) != LEDGER_OK) {
        json_decref(b.bids);
        json_decref(b.asks);
        node_reply_err(req, 500, "ECORRUPT", "order records do not decode");
        return;
    }
    json_t *o = json_object();
    json_object_set_new(o, "slot", json_integer((json_int_t)slot));
    json_object_set_new(o, "height", json_integer((json_int_t)ledger_store_height(n->store)));
    json_object_set_new(o, "bids", sorted(b.bids, cmp_bid));
    json_object_set_new(o, "asks", sorted(b.asks, cmp_ask));
    node_reply_json(req, 200, o);
}

/* ------------------------------------------------------------------ trades and the archive */
static json_t *trade_json(const contracts_trade *t) {
    json_t *j = json_object();
    json_object_set_new(j, "seq", json_integer((json_int_t)t->seq));
    json_object_set_new(j, "seller", node_hexj(t->seller, 33));
    json_object_set_new(j, "buyer", node_hexj(t->buyer, 33));
    json_object_set_new(j, "quantity_wh", json_integer((json_int_t)t->qty_wh));
    json_object_set_new(j, "price", json_integer((json_int_t)t->price));
    json_object_set_new(j, "value_uunit", json_integer(t->value_uunit));
    json_object_set_new(j, "buyer_fee_uunit", json_integer(t->buyer_fee_uunit));
    json_object_set_new(j, "seller_fee_uunit", json_integer(t->seller_fee_uunit));
    /* The buyer's fee is the network-use fee plus the buyer's half of the loss charge; the
     * seller's is its half of the loss charge (docs/market.md, docs/grid.md). */
    json_object_set_new(j, "fees_uunit", json_integer(t->buyer_fee_uunit + t->seller_fee_uunit));
    return j;
}

static int trade_fn(void *ctx, const contracts_trade *t) {
    json_array_append_new(ctx, trade_json(t));
    return 0;
}

/* A call auction's curtailments (from the state): an executed match annotates its trade, a
 * fully blocked one is listed as a trade of 0 Wh, as a continuous auction's fills show them. */
static int curt_fn(void *ctx, const contracts_curtailment *c) {
    json_t *arr = ctx;
    uint64_t cut = c->wanted_wh - c->allowed_wh;
    if (c->executed) {
        size_t i;
        json_t *t;
        json_array_foreach(arr, i, t) {
            if ((uint64_t)json_integer_value(json_object_get(t, "seq")) != c->trade_seq) continue;
            json_object_set_new(t, "curtailed_wh", json_integer((json_int_t)cut));
            json_object_set_new(t, "binding", json_string(c->binding));
            return 0;
        }
        return 0;
    }
    json_t *j = json_object();
    json_object_set_new(j, "seller", node_hexj(c->seller, 33));
    json_object_set_new(j, "buyer", node_hexj(c->buyer, 33));
    json_object_set_new(j, "quantity_wh", json_integer(0));
    json_object_set_new(j, "price", json_integer((json_int_t)c->price));
    json_object_set_new(j, "curtailed_wh", json_integer((json_int_t)cut));
    json_object_set_new(j, "binding", json_string(c->binding));
    json_array_append_new(arr, j);
    return 0;
}

static json_t *trades_from_state(node *n, uint64_t slot) {
    json_t *arr = json_array();
    ledger_state *st = ledger_store_state(n->store);
    if (contracts_trade_iter(st, slot, trade_fn, arr) != LEDGER_OK ||
        contracts_curtailment_iter(st, slot, curt_fn, arr) != LEDGER_OK) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

typedef struct {
    uint64_t slots[256];
    uint32_t counts[256];
    uint32_t n;
} slot_counts;

/* Counts the state's trade records per slot from their keys ('t' || slot be8 || seq be8,
 * docs/market.md "State"). */
static int count_fn(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen) {
    (void)val;
    (void)vlen;
    slot_counts *c = ctx;
    if (klen != 17) return 0;
    uint64_t slot = tem_get_u64be(key + 1);
    if (c->n && c->slots[c->n - 1] == slot) {
        c->counts[c->n - 1]++;
        return 0;
    }
    if (c->n >= 256) return 1; /* bounded: the rest waits for the next block */
    c->slots[c->n] = slot;
    c->counts[c->n++] = 1;
    return 0;
}

static bool recently_archived(node *n, uint64_t slot) {
    for (uint32_t i = 0; i < NODE_ARCHIVED_KEEP; i++)
        if (n->archived[i] == slot + 1) return true;
    return false;
}

/* Before a block at time_ms is applied: archive the trades of every slot whose gate has closed
 * by then. A closed slot's trades never change again, so each slot is written once, before the
 * settlement that deletes its records from the state can run. */
void node_archive_trades(node *n, uint64_t time_ms) {
    slot_counts c = {.n = 0};
    if (ledger_state_iter(ledger_store_state(n->store), "t", 1, count_fn, &c) < 0) return;
    const ledger_market_params *m = &n->g.market;
    for (uint32_t i = 0; i < c.n; i++) {
        uint64_t slot = c.slots[i];
        int64_t gate = 0;
        /* gate closure of the slot: genesis time + slot * slot_ms - gate_closure_ms */
        if (__builtin_mul_overflow((int64_t)slot, m->slot_ms, &gate) ||
            __builtin_add_overflow(gate, (int64_t)n->g.genesis_time_ms - m->gate_closure_ms, &gate))
            continue;
        if ((int64_t)time_ms < gate || recently_archived(n, slot)) continue;
        char name[48];
        snprintf(name, sizeof name, "trades/%llu", (unsigned long long)slot);
        uint8_t *old;
        size_t ol;
        if (ledger_store_meta_get(n->store, name, &old, &ol) == LEDGER_OK) {
            tem_free(old);
        } else {
            json_t *arr = trades_from_state(n, slot);
            char *s = arr ? json_dumps(arr, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
            json_decref(arr);
            if (!s || ledger_store_meta_put(n->store, name, s, strlen(s)) != LEDGER_OK) {
                node_log(n, NODE_LOG_WARN, "cannot archive the trades of slot %llu", (unsigned long long)slot);
                free(s);
                continue;
            }
            free(s);
        }
        n->archived[n->archived_next] = slot + 1;
        n->archived_next = (n->archived_next + 1) % NODE_ARCHIVED_KEEP;
    }
}

static void h_trades(void *ctx, net_http_req *req, const net_http_request *r) {
    node *n = ctx;
    uint64_t slot;
    const char *q = strstr(r->query, "slot=");
    if (!q || !parse_slot(n, q + 5, &slot)) {
        reply_bad_slot(n, req);
        return;
    }
    json_t *arr = trades_from_state(n, slot);
    const char *source = "state";
    if (arr && json_array_size(arr) == 0) {
        char name[48];
        snprintf(name, sizeof name, "trades/%llu", (unsigned long long)slot);
        uint8_t *v;
        size_t vl;
        if (ledger_store_meta_get(n->store, name, &v, &vl) == LEDGER_OK) {
            json_t *j = json_loadb((const char *)v, vl, 0, NULL);
            tem_free(v);
            if (json_is_array(j)) {
                json_decref(arr);
                arr = j;
                source = "archive";
            } else {
                json_decref(j);
            }
        }
    }
    if (!arr) {
        node_reply_err(req, 500, "ECORRUPT", "trade records do not decode");
        return;
    }
    json_t *o = json_object();
    json_object_set_new(o, "slot", json_integer((json_int_t)slot));
    json_object_set_new(o, "source", json_string(source));
    json_object_set_new(o, "trades", arr);
    node_reply_json(req, 200, o);
}

/* ------------------------------------------------------------------ supply and feeder */
static void h_supply(void *ctx, net_http_req *req, const net_http_request *r) {
    (void)r;
    node *n = ctx;
    contracts_supply s;
    if (contracts_supply_get(ledger_store_state(n->store), &s) != LEDGER_OK) {
        node_reply_err(req, 500, "ECORRUPT", "supply counters missing");
        return;
    }
    json_t *o = json_object();
    json_object_set_new(o, "height", json_integer((json_int_t)ledger_store_height(n->store)));
    json_object_set_new(o, "money_uunit", json_integer(s.money_uunit));
    json_object_set_new(o, "tokens_wh", json_integer(s.tokens_wh));
    json_object_set_new(o, "minted_wh", json_integer(s.minted_wh));
    json_object_set_new(o, "burnt_wh", json_integer(s.burnt_wh));
    json_object_set_new(o, "deposited_uunit", json_integer(s.deposited_uunit));
    node_reply_json(req, 200, o);
}

static void h_feeder(void *ctx, net_http_req *req, const net_http_request *r) {
    (void)r;
    node *n = ctx;
    ledger_state *st = ledger_store_state(n->store);
    json_t *o = json_object();
    bool inst = grid_installed(st);
    json_object_set_new(o, "installed", json_boolean(inst));
    if (inst) {
        const uint8_t *v;
        size_t vl;
        if (ledger_state_get(st, "gm", 2, &v, &vl) == LEDGER_OK) {
            json_object_set_new(o, "buses", json_integer(grid_model_buses(v, vl)));
            uint8_t h[32];
            ledger_sha256(h, v, vl);
            json_object_set_new(o, "model_hash", node_hexj(h, 32));
        }
    }
    json_t *cur = json_array();
    for (uint32_t i = 0; i < n->ncurtail && i < NODE_CURTAIL_KEEP; i++) {
        const node_curtail *c = &n->curtail[(n->curtail_next + NODE_CURTAIL_KEEP - 1 - i) % NODE_CURTAIL_KEEP];
        json_t *j = json_object();
        json_object_set_new(j, "height", json_integer((json_int_t)c->height));
        json_object_set_new(j, "txid", node_hexj(c->txid, 32));
        json_object_set_new(j, "curtailed_wh", json_integer((json_int_t)c->curtailed_wh));
        json_object_set_new(j, "binding", json_string(c->binding));
        json_array_append_new(cur, j);
    }
    json_object_set_new(o, "recent_curtailments", cur);
    json_object_set_new(o, "curtailments_total", json_integer((json_int_t)n->ncurtail));
    node_reply_json(req, 200, o);
}

/* After a block: remember the fills the grid check curtailed (newest last). */
void node_note_curtailments(node *n, uint64_t height, const uint8_t (*txids)[32], size_t ntx) {
    for (size_t i = 0; i < ntx; i++) {
        uint64_t h;
        uint32_t pos;
        uint8_t *rb;
        size_t rl;
        if (ledger_store_receipt(n->store, txids[i], &h, &pos, &rb, &rl) != LEDGER_OK) continue;
        Tem__V1__Receipt *rc = tem__v1__receipt__unpack(&ledger_pb_allocator, rl, rb);
        tem_free(rb);
        if (!rc) continue;
        for (size_t k = 0; k < rc->n_fills; k++) {
            if (!rc->fills[k]->curtailed_wh) continue;
            node_curtail *c = &n->curtail[n->curtail_next];
            n->curtail_next = (n->curtail_next + 1) % NODE_CURTAIL_KEEP;
            n->ncurtail++;
            c->height = height;
            memcpy(c->txid, txids[i], 32);
            c->curtailed_wh = rc->fills[k]->curtailed_wh;
            snprintf(c->binding, sizeof c->binding, "%s", rc->fills[k]->binding ? rc->fills[k]->binding : "");
        }
        tem__v1__receipt__free_unpacked(rc, &ledger_pb_allocator);
    }
}

void node_api_market_routes(node *n, net_http *h) {
    TEM_ASSERT(net_http_route(h, "GET", "/v1/book/", h_book, n) == NET_OK);
    TEM_ASSERT(net_http_route(h, "GET", "/v1/trades", h_trades, n) == NET_OK);
    TEM_ASSERT(net_http_route(h, "GET", "/v1/supply", h_supply, n) == NET_OK);
    TEM_ASSERT(net_http_route(h, "GET", "/v1/feeder", h_feeder, n) == NET_OK);
}
