/* api_market.c: the market views of the HTTP API: a slot's order book, its trades, the money and
 * token supply, and the installed feeder with the grid check's recent curtailments.
 *
 * A settled slot's trades come from the node's trade archive (node/archive.h), which the apply
 * path writes; this file only reads it. */
#include "contracts/grid.h"
#include "node/node_internal.h"

#include <errno.h>
#include <jansson.h>

static void reply_bad_slot(const node *n, net_http_req *req) { node_reply_bad_slot(n, req); }

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
    if (!node_parse_slot(n, r->path + strlen("/v1/book/"), &slot)) {
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

/* ------------------------------------------------------------------ trades */
static void h_trades(void *ctx, net_http_req *req, const net_http_request *r) {
    node *n = ctx;
    uint64_t slot;
    const char *q = strstr(r->query, "slot=");
    if (!q || !node_parse_slot(n, q + 5, &slot)) {
        reply_bad_slot(n, req);
        return;
    }
    json_t *arr = node_archive_trades_json(ledger_store_state(n->store), slot);
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
    node_feeder_trades_annotate(n, slot, arr);
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
    node *n = ctx;
    /* The route is a prefix: /v1/feeder/slots/{s} has its own, anything else below is no page. */
    if (strcmp(r->path, "/v1/feeder") != 0) {
        node_reply_err(req, 404, "ENOTFOUND", "no such endpoint (the slot view is /v1/feeder/slots/{slot})");
        return;
    }
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
    const node_curtail *c;
    for (uint32_t i = 0; (c = node_archive_curtailment(&n->archive, i)) != NULL; i++) {
        json_t *j = json_object();
        json_object_set_new(j, "height", json_integer((json_int_t)c->height));
        json_object_set_new(j, "txid", node_hexj(c->txid, 32));
        json_object_set_new(j, "curtailed_wh", json_integer((json_int_t)c->curtailed_wh));
        json_object_set_new(j, "binding", json_string(c->binding));
        json_array_append_new(cur, j);
    }
    json_object_set_new(o, "recent_curtailments", cur);
    json_object_set_new(o, "curtailments_total", json_integer((json_int_t)n->archive.ncurtail));
    node_reply_json(req, 200, o);
}

void node_api_market_routes(node *n, net_http *h) {
    TEM_ASSERT(net_http_route(h, "GET", "/v1/book/", h_book, n) == NET_OK);
    TEM_ASSERT(net_http_route(h, "GET", "/v1/trades", h_trades, n) == NET_OK);
    TEM_ASSERT(net_http_route(h, "GET", "/v1/supply", h_supply, n) == NET_OK);
    TEM_ASSERT(net_http_route(h, "GET", "/v1/feeder", h_feeder, n) == NET_OK);
    node_api_feeder_routes(n, h);
}
