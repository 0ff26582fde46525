/* archive.c: the node's trade archive and curtailment notes (archive.h), written by the apply
 * path only. */
#include "node/archive.h"
#include "node/node_internal.h" /* node_hexj */

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

json_t *node_archive_trades_json(ledger_state *st, uint64_t slot) {
    json_t *arr = json_array();
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

static bool recently_archived(const node_archive *a, uint64_t slot) {
    for (uint32_t i = 0; i < NODE_ARCHIVED_KEEP; i++)
        if (a->archived[i] == slot + 1) return true;
    return false;
}

/* Before a block at time_ms is applied: archive the trades of every slot whose gate has closed
 * by then. A closed slot's trades never change again, so each slot is written once, before the
 * settlement that deletes its records from the state can run. */
uint32_t node_archive_trades(node_archive *a, ledger_store *s, uint64_t time_ms, uint64_t *failed_slot) {
    slot_counts c = {.n = 0};
    uint32_t failed = 0;
    if (ledger_state_iter(ledger_store_state(s), "t", 1, count_fn, &c) < 0) return 0;
    const ledger_genesis *g = ledger_store_genesis(s);
    const ledger_market_params *m = &g->market;
    for (uint32_t i = 0; i < c.n; i++) {
        uint64_t slot = c.slots[i];
        int64_t gate = 0;
        /* gate closure of the slot: genesis time + slot * slot_ms - gate_closure_ms */
        if (__builtin_mul_overflow((int64_t)slot, m->slot_ms, &gate) ||
            __builtin_add_overflow(gate, (int64_t)g->genesis_time_ms - m->gate_closure_ms, &gate))
            continue;
        if ((int64_t)time_ms < gate || recently_archived(a, slot)) continue;
        char name[48];
        snprintf(name, sizeof name, "trades/%llu", (unsigned long long)slot);
        uint8_t *old;
        size_t ol;
        if (ledger_store_meta_get(s, name, &old, &ol) == LEDGER_OK) {
            tem_free(old);
        } else {
            json_t *arr = node_archive_trades_json(ledger_store_state(s), slot);
            char *js = arr ? json_dumps(arr, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
            json_decref(arr);
            if (!js || ledger_store_meta_put(s, name, js, strlen(js)) != LEDGER_OK) {
                if (failed++ == 0 && failed_slot) *failed_slot = slot;
                free(js);
                continue;
            }
            free(js);
        }
        a->archived[a->archived_next] = slot + 1;
        a->archived_next = (a->archived_next + 1) % NODE_ARCHIVED_KEEP;
    }
    return failed;
}

/* After a block: remember the fills the grid check curtailed (newest last). */
void node_archive_note_curtailments(node_archive *a, ledger_store *s, uint64_t height, const uint8_t (*txids)[32],
                                    size_t ntx) {
    for (size_t i = 0; i < ntx; i++) {
        uint64_t h;
        uint32_t pos;
        uint8_t *rb;
        size_t rl;
        if (ledger_store_receipt(s, txids[i], &h, &pos, &rb, &rl) != LEDGER_OK) continue;
        Tem__V1__Receipt *rc = tem__v1__receipt__unpack(&ledger_pb_allocator, rl, rb);
        tem_free(rb);
        if (!rc) continue;
        node_market_counts *mc = &a->mc;
        uint64_t bwh = 0, bval = 0;
        for (size_t k = 0; k < rc->n_fills; k++) {
            const Tem__V1__Fill *f = rc->fills[k];
            if (f->quantity_wh) {
                mc->trades++;
                mc->traded_wh += f->quantity_wh;
                bwh += f->quantity_wh;
                bval += f->quantity_wh * f->price / 1000;
            }
            mc->fees_uunit += f->network_fee + f->loss_fee;
            if (!f->curtailed_wh) continue;
            mc->curtailed_matches++;
            mc->curtailed_wh += f->curtailed_wh;
            const char *bn = f->binding && f->binding[0] ? f->binding : "unnamed";
            uint32_t b = 0;
            while (b < mc->nbindings && strcmp(mc->bindings[b].name, bn) != 0) b++;
            if (b == mc->nbindings && b < NODE_BINDINGS_MAX && strlen(bn) < sizeof mc->bindings[b].name) {
                snprintf(mc->bindings[b].name, sizeof mc->bindings[b].name, "%s", bn);
                mc->nbindings++;
            }
            if (b < mc->nbindings) mc->bindings[b].count++;
            else mc->bindings_other++;
        }
        mc->value_uunit += bval;
        if (bwh) {
            mc->last_price = bval * 1000 / bwh;
            mc->last_height = height;
        }
        for (size_t k = 0; k < rc->n_fills; k++) {
            if (!rc->fills[k]->curtailed_wh) continue;
            node_curtail *c = &a->curtail[a->curtail_next];
            a->curtail_next = (a->curtail_next + 1) % NODE_CURTAIL_KEEP;
            a->ncurtail++;
            c->height = height;
            memcpy(c->txid, txids[i], 32);
            c->curtailed_wh = rc->fills[k]->curtailed_wh;
            snprintf(c->binding, sizeof c->binding, "%s", rc->fills[k]->binding ? rc->fills[k]->binding : "");
        }
        tem__v1__receipt__free_unpacked(rc, &ledger_pb_allocator);
    }
}

const node_curtail *node_archive_curtailment(const node_archive *a, uint32_t i) {
    if (i >= a->ncurtail || i >= NODE_CURTAIL_KEEP) return NULL;
    return &a->curtail[(a->curtail_next + NODE_CURTAIL_KEEP - 1 - i) % NODE_CURTAIL_KEEP];
}
