/* api_feeder.c: the DSO's view of one slot, GET /v1/feeder/slots/{s} (docs/api.md): the slot's
 * base case, every line's loading and every bus voltage after the accepted trades, solved by the
 * chain's own fixed-point power flow (grid_model_state, the code the grid check runs), the
 * constraints that bound, the curtailments of both auctions, the fees and loss charges.
 *
 * The consensus state forgets a slot's grid state ("gs") at settlement and keeps only the current
 * model, so the node records what the view needs as blocks apply (node records, not consensus
 * data; every node that applied the blocks holds the same):
 *   "fills/<slot>"        JSON {"height","chunks"}; "fills/<slot>/<i>" the i-th chunk, a JSON
 *                         array: every fill of a continuous-auction order of the slot, in chain
 *                         order, one chunk per block that had some, with its curtailed Wh and
 *                         binding (the receipts carry them; the trade records do not), so a
 *                         block's bookkeeping costs one small write per slot it touched.
 *                         /v1/trades pairs the k-th fill that moved energy with the k-th trade.
 *   "feeder/slot/<slot>"  model hash (32) || the slot's "gs" value (empty: no trades), written in
 *                         the block whose time passes the slot's gate closure (after its call
 *                         auction cleared), when a feeder is installed
 *   "feeder/model/<hex>"  a compiled model ("gm") a slot record names
 *   "feeder/next"         the next slot to record, decimal
 * A crash between a block's commit and these writes loses that block's records (the view then
 * answers 404 for the slot, and /v1/trades gives its fills curtailed_wh 0). */
#include "contracts/grid.h"
#include "node/node_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>

/* Slot records written per block at most: a chain resuming after a long pause skips the oldest
 * (their view answers 404) rather than doing unbounded work in one block. */
#define FEEDER_RECORDS_PER_BLOCK 4096

static bool gate_of(const node *n, uint64_t slot, int64_t *gate) {
    const ledger_market_params *m = &n->g.market;
    return !__builtin_mul_overflow((int64_t)slot, m->slot_ms, gate) &&
           !__builtin_add_overflow(*gate, (int64_t)n->g.genesis_time_ms - m->gate_closure_ms, gate);
}

static json_t *meta_json(node *n, const char *name) {
    uint8_t *v;
    size_t vl;
    if (ledger_store_meta_get(n->store, name, &v, &vl) != LEDGER_OK) return NULL;
    json_t *j = json_loadb((const char *)v, vl, 0, NULL);
    tem_free(v);
    return j;
}

static bool meta_put_json(node *n, const char *name, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    bool ok = s && ledger_store_meta_put(n->store, name, s, strlen(s)) == LEDGER_OK;
    free(s);
    return ok;
}

/* ------------------------------------------------------------------ recording, after a block */

typedef struct {
    json_t *want; /* counter txid hex -> null, filled with the owner's key */
} owner_ctx;

static int owner_fn(void *ctx, const contracts_order *o) {
    owner_ctx *c = ctx;
    char hex[65];
    tem_hex(hex, o->txid, 32);
    if (json_object_get(c->want, hex)) json_object_set_new(c->want, hex, node_hexj(o->owner, 33));
    return 0;
}

/* Adds the fills of one continuous-auction order's receipt to byslot[slot]. */
static void note_fills(node *n, uint64_t height, const ledger_tx *tx, const Tem__V1__Receipt *rc, json_t *byslot) {
    const Tem__V1__Order *o = tx->body->order;
    char key[24];
    snprintf(key, sizeof key, "%" PRIu64, o->slot);
    json_t *fills = json_object_get(byslot, key);
    if (!fills) {
        fills = json_array();
        json_object_set_new(byslot, key, fills);
    }
    /* A fill the grid check blocked entirely made no trade to name its maker: take the owner of
     * the counter-order, which still rests (one walk of the slot's book for all of them). */
    owner_ctx oc = {json_object()};
    for (size_t k = 0; k < rc->n_fills; k++) {
        const Tem__V1__Fill *f = rc->fills[k];
        if (f->quantity_wh == 0 && f->counter_txid.len == 32) {
            char hex[65];
            tem_hex(hex, f->counter_txid.data, 32);
            json_object_set_new(oc.want, hex, json_null());
        }
    }
    if (json_object_size(oc.want) > 0 && contracts_order_iter(ledger_store_state(n->store), o->slot, owner_fn, &oc) < 0)
        node_log(n, NODE_LOG_WARN, "orders of slot %" PRIu64 " do not decode", o->slot);
    for (size_t k = 0; k < rc->n_fills; k++) {
        const Tem__V1__Fill *f = rc->fills[k];
        json_t *j = json_object();
        if (f->quantity_wh == 0 && f->counter_txid.len == 32) {
            char hex[65];
            tem_hex(hex, f->counter_txid.data, 32);
            json_t *ow = json_object_get(oc.want, hex);
            if (json_is_string(ow)) json_object_set(j, "counter_owner", ow);
        }
        json_object_set_new(j, "height", json_integer((json_int_t)height));
        json_object_set_new(j, "txid", node_hexj(rc->txid.data, rc->txid.len));
        json_object_set_new(j, "taker", node_hexj(tx->body->signer.data, tx->body->signer.len));
        json_object_set_new(j, "side", json_string(o->side == TEM__V1__SIDE__BUY ? "buy" : "sell"));
        json_object_set_new(j, "counter_txid", node_hexj(f->counter_txid.data, f->counter_txid.len));
        json_object_set_new(j, "quantity_wh", json_integer((json_int_t)f->quantity_wh));
        json_object_set_new(j, "price", json_integer((json_int_t)f->price));
        json_object_set_new(j, "curtailed_wh", json_integer((json_int_t)f->curtailed_wh));
        json_object_set_new(j, "binding", json_string(f->binding ? f->binding : ""));
        json_array_append_new(fills, j);
    }
    json_decref(oc.want);
}

/* Writes one block's fills of one slot as the slot's next chunk, once per block. */
static void fills_store(node *n, uint64_t height, const char *slot, json_t *fills) {
    char name[64];
    snprintf(name, sizeof name, "fills/%s", slot);
    json_t *head = meta_json(n, name);
    uint64_t h = (uint64_t)json_integer_value(json_object_get(head, "height"));
    json_int_t chunks = json_integer_value(json_object_get(head, "chunks"));
    json_decref(head);
    if (h >= height) return; /* this block's bookkeeping ran already */
    snprintf(name, sizeof name, "fills/%s/%lld", slot, (long long)chunks);
    bool ok = meta_put_json(n, name, fills);
    if (ok) {
        head = json_pack("{s:I,s:I}", "height", (json_int_t)height, "chunks", chunks + 1);
        snprintf(name, sizeof name, "fills/%s", slot);
        ok = head && meta_put_json(n, name, head);
        json_decref(head);
    }
    if (!ok) node_log(n, NODE_LOG_WARN, "cannot record the fills of slot %s", slot);
}

/* Every recorded fill of a continuous-auction slot in chain order (new reference; an empty
 * array when none). */
static json_t *fills_load(node *n, uint64_t slot) {
    json_t *all = json_array();
    char name[64];
    snprintf(name, sizeof name, "fills/%" PRIu64, slot);
    json_t *head = n->g.market.mechanism == LEDGER_MECH_CDA ? meta_json(n, name) : NULL;
    json_int_t chunks = json_integer_value(json_object_get(head, "chunks"));
    json_decref(head);
    for (json_int_t c = 0; c < chunks; c++) {
        snprintf(name, sizeof name, "fills/%" PRIu64 "/%lld", slot, (long long)c);
        json_t *a = meta_json(n, name);
        if (json_is_array(a)) json_array_extend(all, a);
        json_decref(a);
    }
    return all;
}

/* Records the grid state of every slot whose gate closed by `t`. */
static void note_gates(node *n, uint64_t t) {
    const ledger_market_params *m = &n->g.market;
    if (m->slot_ms <= 0) return;
    int64_t since = (int64_t)t - (int64_t)n->g.genesis_time_ms + m->gate_closure_ms;
    if (since < 0) return;
    uint64_t last = (uint64_t)(since / m->slot_ms); /* gate(last) <= t < gate(last + 1) */
    uint64_t next = 0;
    uint8_t *v;
    size_t vl;
    bool recorded = ledger_store_meta_get(n->store, "feeder/next", &v, &vl) == LEDGER_OK;
    if (recorded) {
        char buf[24];
        size_t l = vl < sizeof buf - 1 ? vl : sizeof buf - 1;
        memcpy(buf, v, l);
        buf[l] = 0;
        tem_free(v);
        next = strtoull(buf, NULL, 10);
    } else {
        /* First block this node records: slots already closed had no trades to show. */
        next = last + 1;
    }
    /* Nothing closed since: the record already says so. (Rewriting it anyway cost every block
     * a write transaction and its fdatasync on the loop thread, which also waited there for
     * the writer thread's transactions.) */
    if (next > last) {
        if (!recorded) goto store_next;
        return;
    }
    if (last - next >= FEEDER_RECORDS_PER_BLOCK) next = last - FEEDER_RECORDS_PER_BLOCK + 1;
    ledger_state *st = ledger_store_state(n->store);
    const uint8_t *gm;
    size_t gml;
    if (ledger_state_get(st, "gm", 2, &gm, &gml) == LEDGER_OK && grid_model_buses(gm, gml) > 0) {
        uint8_t h[32];
        ledger_sha256(h, gm, gml);
        char hex[65], name[96];
        tem_hex(hex, h, 32);
        snprintf(name, sizeof name, "feeder/model/%s", hex);
        uint8_t *old;
        size_t ol;
        if (ledger_store_meta_get(n->store, name, &old, &ol) == LEDGER_OK)
            tem_free(old);
        else if (ledger_store_meta_put(n->store, name, gm, gml) != LEDGER_OK)
            node_log(n, NODE_LOG_WARN, "cannot record the feeder model");
        size_t sb = grid_model_slot_bytes(gm, gml);
        uint8_t *buf = tem_malloc(32 + sb);
        for (uint64_t s = next; buf && s <= last; s++) {
            uint8_t key[10] = {'g', 's'};
            tem_put_u64be(key + 2, s);
            const uint8_t *gs;
            size_t gsl;
            size_t len = 32;
            memcpy(buf, h, 32);
            if (ledger_state_get(st, key, sizeof key, &gs, &gsl) == LEDGER_OK && gsl == sb) {
                memcpy(buf + 32, gs, sb);
                len += sb;
            }
            snprintf(name, sizeof name, "feeder/slot/%" PRIu64, s);
            if (ledger_store_meta_put(n->store, name, buf, len) != LEDGER_OK)
                node_log(n, NODE_LOG_WARN, "cannot record the feeder state of slot %" PRIu64, s);
        }
        tem_free(buf);
    }
store_next:;
    char nb[24];
    int nl = snprintf(nb, sizeof nb, "%" PRIu64, last + 1);
    if (ledger_store_meta_put(n->store, "feeder/next", nb, (size_t)nl) != LEDGER_OK)
        node_log(n, NODE_LOG_WARN, "cannot record the feeder progress");
}

void node_feeder_note_block(node *n, uint64_t height, const ledger_block_view *v) {
    if (n->g.market.mechanism == LEDGER_MECH_CDA) {
        json_t *byslot = json_object();
        for (size_t i = 0; i < v->n; i++) {
            const ledger_tx *tx = v->txs[i].tx;
            if (!tx || tx->body->kind_case != TEM__V1__TX_BODY__KIND_ORDER || !tx->body->order) continue;
            uint64_t h;
            uint32_t pos;
            uint8_t *rb;
            size_t rl;
            if (ledger_store_receipt(n->store, v->txids[i], &h, &pos, &rb, &rl) != LEDGER_OK) continue;
            Tem__V1__Receipt *rc = tem__v1__receipt__unpack(&ledger_pb_allocator, rl, rb);
            tem_free(rb);
            if (!rc) continue;
            if (rc->code == 0 && rc->n_fills > 0) note_fills(n, height, tx, rc, byslot);
            tem__v1__receipt__free_unpacked(rc, &ledger_pb_allocator);
        }
        const char *k;
        json_t *fills;
        json_object_foreach(byslot, k, fills) fills_store(n, height, k, fills);
        json_decref(byslot);
    }
    if (v->header) note_gates(n, v->header->time_ms);
}

/* ------------------------------------------------------------------ /v1/trades */

/* Gives every trade of a continuous-auction slot its fill's curtailed_wh and binding, and lists
 * the fills the grid check blocked entirely as trades of 0 Wh (as call-auction ones are listed);
 * every entry gets both fields (0 and "" when nothing was curtailed). */
void node_feeder_trades_annotate(node *n, uint64_t slot, json_t *arr) {
    json_t *fills = fills_load(n, slot);
    size_t ti = 0, nt = json_array_size(arr), i;
    json_t *f;
    json_array_foreach(fills, i, f) {
        json_int_t q = json_integer_value(json_object_get(f, "quantity_wh"));
        json_t *cw = json_object_get(f, "curtailed_wh"), *bd = json_object_get(f, "binding");
        if (q > 0) {
            /* The k-th fill that moved energy made the slot's k-th trade (by seq). */
            while (ti < nt && json_integer_value(json_object_get(json_array_get(arr, ti), "quantity_wh")) == 0) ti++;
            if (ti >= nt) break;
            json_t *t = json_array_get(arr, ti++);
            json_object_set(t, "curtailed_wh", cw);
            json_object_set(t, "binding", bd);
            continue;
        }
        if (json_integer_value(cw) <= 0) continue;
        bool buy = strcmp(json_string_value(json_object_get(f, "side")) ?: "", "buy") == 0;
        json_t *j = json_object();
        json_t *maker = json_object_get(f, "counter_owner");
        json_object_set(j, buy ? "buyer" : "seller", json_object_get(f, "taker"));
        if (maker) json_object_set(j, buy ? "seller" : "buyer", maker);
        json_object_set(j, "txid", json_object_get(f, "txid"));
        json_object_set(j, "counter_txid", json_object_get(f, "counter_txid"));
        json_object_set_new(j, "quantity_wh", json_integer(0));
        json_object_set(j, "price", json_object_get(f, "price"));
        json_object_set(j, "curtailed_wh", cw);
        json_object_set(j, "binding", bd);
        json_array_append_new(arr, j);
    }
    json_decref(fills);
    json_array_foreach(arr, i, f) {
        if (!json_object_get(f, "curtailed_wh")) json_object_set_new(f, "curtailed_wh", json_integer(0));
        if (!json_object_get(f, "binding")) json_object_set_new(f, "binding", json_string(""));
    }
}

/* ------------------------------------------------------------------ GET /v1/feeder/slots/{s} */

typedef struct {
    json_t *arr;
    uint64_t wh;
} curt_ctx;

static int call_curt_fn(void *ctx, const contracts_curtailment *c) {
    curt_ctx *cc = ctx;
    json_t *j = json_object();
    json_object_set_new(j, "auction", json_string("call"));
    json_object_set_new(j, "seller", node_hexj(c->seller, 33));
    json_object_set_new(j, "buyer", node_hexj(c->buyer, 33));
    json_object_set_new(j, "quantity_wh", json_integer((json_int_t)c->allowed_wh));
    json_object_set_new(j, "price", json_integer((json_int_t)c->price));
    json_object_set_new(j, "curtailed_wh", json_integer((json_int_t)(c->wanted_wh - c->allowed_wh)));
    json_object_set_new(j, "binding", json_string(c->binding));
    json_array_append_new(cc->arr, j);
    cc->wh += c->wanted_wh - c->allowed_wh;
    return 0;
}

/* The slot's trades: from the state until settlement, then the node's archive. */
static json_t *slot_trades(node *n, uint64_t slot) {
    json_t *arr = node_archive_trades_json(ledger_store_state(n->store), slot);
    if (arr && json_array_size(arr) == 0) {
        char name[48];
        snprintf(name, sizeof name, "trades/%" PRIu64, slot);
        json_t *j = meta_json(n, name);
        if (json_is_array(j)) {
            json_decref(arr);
            return j;
        }
        json_decref(j);
    }
    return arr;
}

static bool named(json_t *set, const char *text) { return json_object_get(set, text) != NULL; }

static bool hex_to_pub(const char *hex, uint8_t out[33]) {
    return hex && strlen(hex) == 66 && tem_unhex(out, 33, hex) == 0;
}

static void h_feeder_slot(void *ctx, net_http_req *req, const net_http_request *r) {
    node *n = ctx;
    uint64_t slot;
    const char *arg = r->path + strlen("/v1/feeder/slots/");
    if (!node_parse_slot(n, arg, &slot)) {
        node_reply_bad_slot(n, req);
        return;
    }
    ledger_state *st = ledger_store_state(n->store);
    int64_t gate;
    bool open = !gate_of(n, slot, &gate) || gate > (int64_t)ledger_store_last_time(n->store);
    const uint8_t *model = NULL, *gs = NULL;
    size_t ml = 0, gsl = 0;
    uint8_t *rec = NULL, *mrec = NULL;
    size_t rl = 0;
    const char *source = open ? "state" : "record";
    if (open) {
        uint8_t key[10] = {'g', 's'};
        tem_put_u64be(key + 2, slot);
        if (ledger_state_get(st, "gm", 2, &model, &ml) != LEDGER_OK) {
            node_reply_err(req, 404, "ENOFEEDER", "no feeder is installed");
            return;
        }
        if (ledger_state_get(st, key, sizeof key, &gs, &gsl) != LEDGER_OK) gs = NULL, gsl = 0;
    } else {
        char name[96];
        snprintf(name, sizeof name, "feeder/slot/%" PRIu64, slot);
        if (ledger_store_meta_get(n->store, name, &rec, &rl) != LEDGER_OK || rl < 32) {
            tem_free(rec);
            node_reply_err(req, 404, "ENOTRECORDED",
                           "this node holds no feeder state of the slot (closed with no feeder installed, or "
                           "before the node recorded slots)");
            return;
        }
        char hex[65];
        tem_hex(hex, rec, 32);
        snprintf(name, sizeof name, "feeder/model/%s", hex);
        if (ledger_store_meta_get(n->store, name, &mrec, &ml) != LEDGER_OK) {
            tem_free(rec);
            node_reply_err(req, 500, "ECORRUPT", "the slot's feeder model is not recorded");
            return;
        }
        model = mrec;
        if (rl > 32) gs = rec + 32, gsl = rl - 32;
    }
    uint32_t nb = grid_model_buses(model, ml);
    if (nb == 0 || (gs && gsl != grid_model_slot_bytes(model, ml))) {
        tem_free(rec);
        tem_free(mrec);
        node_reply_err(req, 500, "ECORRUPT", "the feeder model or slot state does not decode");
        return;
    }
    grid_bus_state *bs = tem_calloc(nb, sizeof *bs);
    grid_line_state *ls = tem_calloc(nb, sizeof *ls);
    json_t *trades = slot_trades(n, slot);
    if (!bs || !ls || !trades) {
        tem_free(bs);
        tem_free(ls);
        tem_free(rec);
        tem_free(mrec);
        json_decref(trades);
        node_reply_err(req, 500, trades ? "ENOMEM" : "ECORRUPT", trades ? "out of memory" : "trade records do not decode");
        return;
    }
    int grc = grid_model_state(model, ml, gs, slot, n->g.market.slot_ms, bs, ls);
    uint8_t mh[32];
    ledger_sha256(mh, model, ml);

    /* Curtailments: the continuous auction's from the fills, the call auction's from the state. */
    curt_ctx cc = {json_array(), 0};
    json_t *frec = fills_load(n, slot), *f;
    size_t i;
    json_array_foreach(frec, i, f) {
        json_int_t cw = json_integer_value(json_object_get(f, "curtailed_wh"));
        if (cw <= 0) continue;
        json_t *j = json_object();
        json_object_set_new(j, "auction", json_string("continuous"));
        json_object_set(j, "txid", json_object_get(f, "txid"));
        json_object_set(j, "counter_txid", json_object_get(f, "counter_txid"));
        json_object_set(j, "quantity_wh", json_object_get(f, "quantity_wh"));
        json_object_set(j, "price", json_object_get(f, "price"));
        json_object_set(j, "curtailed_wh", json_object_get(f, "curtailed_wh"));
        json_object_set(j, "binding", json_object_get(f, "binding"));
        json_array_append_new(cc.arr, j);
        cc.wh += (uint64_t)cw;
    }
    json_decref(frec);
    if (contracts_curtailment_iter(st, slot, call_curt_fn, &cc) < 0)
        node_log(n, NODE_LOG_WARN, "call-auction curtailments of slot %" PRIu64 " do not decode", slot);
    json_t *bset = json_object(), *bl = json_array();
    json_array_foreach(cc.arr, i, f) {
        const char *b = json_string_value(json_object_get(f, "binding"));
        if (b && *b && !named(bset, b)) {
            json_object_set_new(bset, b, json_true());
            json_array_append_new(bl, json_string(b));
        }
    }

    /* Fees: what the trades paid; the network-use part recomputed from the path (docs/api.md). */
    int64_t fees = 0, netfee = 0, credits = 0, traded = 0;
    json_array_foreach(trades, i, f) {
        json_int_t q = json_integer_value(json_object_get(f, "quantity_wh"));
        if (q <= 0) continue;
        int64_t bf = json_integer_value(json_object_get(f, "buyer_fee_uunit"));
        int64_t sf = json_integer_value(json_object_get(f, "seller_fee_uunit"));
        traded += q;
        fees += bf + (sf > 0 ? sf : 0);
        if (sf < 0) credits += -sf;
        uint8_t sp[33], bp[33];
        contracts_account sa, ba;
        int64_t r_uohm, lb, nf = 0;
        if (hex_to_pub(json_string_value(json_object_get(f, "seller")), sp) &&
            hex_to_pub(json_string_value(json_object_get(f, "buyer")), bp) && contracts_account_get(st, sp, &sa) == LEDGER_OK &&
            contracts_account_get(st, bp, &ba) == LEDGER_OK &&
            grid_model_path(model, ml, sa.bus, ba.bus, &r_uohm, &lb) == GRID_OK) {
            __int128 p = (__int128)q * r_uohm * n->g.market.network_fee_uunit_per_kwh_per_ohm;
            nf = (int64_t)((p + 999999999) / 1000000000);
        }
        netfee += nf < bf ? nf : bf;
    }

    json_t *o = json_object();
    json_object_set_new(o, "slot", json_integer((json_int_t)slot));
    json_object_set_new(o, "height", json_integer((json_int_t)ledger_store_height(n->store)));
    json_object_set_new(o, "source", json_string(source));
    json_object_set_new(o, "open", json_boolean(open));
    json_object_set_new(o, "model_hash", node_hexj(mh, 32));
    json_object_set_new(o, "solved", json_boolean(grc == GRID_OK));
    if (grc != GRID_OK) json_object_set_new(o, "error", json_string(grid_errname(grc) ? grid_errname(grc) : "grid"));
    int64_t bp = 0, bq = 0, vmin = INT64_MAX, vmax = 0;
    json_t *buses = json_array(), *lines = json_array();
    for (uint32_t k = 0; k < nb; k++) {
        char t[GRID_BINDING_TEXT_BYTES];
        snprintf(t, sizeof t, "bus %u", bs[k].bus);
        json_t *j = json_object();
        json_object_set_new(j, "bus", json_integer(bs[k].bus));
        json_object_set_new(j, "base_p_w", json_integer(bs[k].base_p_w));
        json_object_set_new(j, "base_q_var", json_integer(bs[k].base_q_var));
        json_object_set_new(j, "traded_wh", json_integer(bs[k].traded_wh));
        if (grc == GRID_OK) json_object_set_new(j, "v_npu", json_integer(bs[k].v_npu));
        json_object_set_new(j, "vmin_npu", json_integer(bs[k].vmin_npu));
        json_object_set_new(j, "vmax_npu", json_integer(bs[k].vmax_npu));
        json_object_set_new(j, "slack", json_boolean(k == 0));
        json_object_set_new(j, "binding", json_boolean(named(bset, t)));
        json_array_append_new(buses, j);
        bp += bs[k].base_p_w;
        bq += bs[k].base_q_var;
        if (grc == GRID_OK && k > 0) {
            if (bs[k].v_npu < vmin) vmin = bs[k].v_npu;
            if (bs[k].v_npu > vmax) vmax = bs[k].v_npu;
        }
    }
    int64_t maxl = -1;
    uint32_t maxk = 0;
    for (uint32_t k = 0; grc == GRID_OK && k + 1 < nb; k++) {
        char t[GRID_BINDING_TEXT_BYTES];
        snprintf(t, sizeof t, "line %u-%u", ls[k].from, ls[k].to);
        json_t *j = json_object();
        json_object_set_new(j, "from", json_integer(ls[k].from));
        json_object_set_new(j, "to", json_integer(ls[k].to));
        json_object_set_new(j, "s_va", json_integer(ls[k].s_va));
        json_object_set_new(j, "limit_va", json_integer(ls[k].limit_va));
        json_object_set_new(j, "loading_ppm", json_integer(ls[k].loading_ppm));
        json_object_set_new(j, "loading_permille", json_integer(ls[k].loading_ppm / 1000));
        json_object_set_new(j, "binding", json_boolean(named(bset, t)));
        json_array_append_new(lines, j);
        if (ls[k].loading_ppm > maxl) maxl = ls[k].loading_ppm, maxk = k;
    }
    json_object_set_new(o, "base_case", json_pack("{s:I,s:I}", "p_w", (json_int_t)bp, "q_var", (json_int_t)bq));
    if (maxl >= 0) {
        char t[GRID_BINDING_TEXT_BYTES];
        snprintf(t, sizeof t, "line %u-%u", ls[maxk].from, ls[maxk].to);
        json_object_set_new(o, "max_loading", json_pack("{s:s,s:I}", "line", t, "loading_ppm", (json_int_t)maxl));
    }
    if (grc == GRID_OK && nb > 1)
        json_object_set_new(o, "voltage_npu", json_pack("{s:I,s:I}", "min", (json_int_t)vmin, "max", (json_int_t)vmax));
    json_object_set_new(o, "lines", lines);
    json_object_set_new(o, "buses", buses);
    json_object_set_new(o, "binding", bl);
    json_object_set_new(o, "curtailments", cc.arr);
    json_object_set_new(o, "curtailed_wh", json_integer((json_int_t)cc.wh));
    json_object_set_new(o, "traded_wh", json_integer(traded));
    json_object_set_new(o, "fees", json_pack("{s:I,s:I,s:I,s:I}", "total_uunit", (json_int_t)fees, "network_uunit",
                                            (json_int_t)netfee, "loss_charge_uunit", (json_int_t)(fees - netfee),
                                            "loss_credit_uunit", (json_int_t)credits));
    json_decref(bset);
    json_decref(trades);
    tem_free(bs);
    tem_free(ls);
    tem_free(rec);
    tem_free(mrec);
    node_reply_json(req, 200, o);
}

void node_api_feeder_routes(node *n, net_http *h) {
    TEM_ASSERT(net_http_route(h, "GET", "/v1/feeder/slots/", h_feeder_slot, n) == NET_OK);
}
