/* api_events.c: GET /v1/events on the node: builds each committed block's events from what the
 * store already holds (the block, its receipts, the market state after it) and serves the hub
 * of node/events.c over Server-Sent Events streams of net/http.c.
 *
 * A block's events, in order (their index is part of the event id "height:index"):
 *   block; then per tx in block order: tx, then per fill of its receipt: trade (and curtailment
 *   when the grid check curtailed it); then what the start of the block did to slots whose time
 *   came (docs/market.md section 2): a call auction's trades and curtailments for slots whose
 *   gate closed in this block, settlement lines for slots settled in this block. Receipt-derived
 *   events come first so their ids never change; slot work is read from the state, which a
 *   replay long after the fact may no longer hold (a call auction's trades leave it at
 *   settlement). */
#include "contracts/contracts.h"
#include "node/events.h"
#include "node/node_internal.h"

#include <jansson.h>

/* Slots handled per block for gate closures and settlements: an idle chain's first block after
 * a long pause must not walk an unbounded range. */
#define SLOT_WALK_MAX 4096

/* Signers of the txs of recently built blocks, by txid (direct-mapped: a colliding tx replaces
 * the older one). A fill names its maker's order only by txid; without this every fill against
 * an order of another block read that whole block back (its tx_root check hashes every tx) to
 * find one signer, which under load took more of the loop thread than everything else. */
#define SIGNER_CACHE 65536
typedef struct {
    uint8_t txid[32];
    uint8_t signer[33];
    bool used;
} signer_slot;

/* Makers of the executed fills of the block just applied, from the trade records it wrote, so
 * that no stored block is read for them: a continuous-auction fill with a positive quantity
 * wrote trade `next_tseq++` of its slot, in the order the block's receipts list the fills, so
 * the block's F such fills of slot s are the slot's last F trades in the state after it. Each
 * pairing is checked (quantity, price, the taker one of the two parties); at the first that does
 * not check, the slot's remaining fills fall back to the signer cache and the store. Only for the
 * block just applied: under a replay the state has moved on. */
#define FILL_SLOTS_MAX 64
typedef struct {
    uint64_t slot, next; /* next: the seq the block's next executed fill of the slot wrote */
    uint32_t count;
    bool ok;
} fill_slot;
typedef struct {
    fill_slot s[FILL_SLOTS_MAX];
    uint32_t n;
} fill_map;

struct node_events_src {
    node *n;
    node_events *hub;
    uint64_t last_h, last_time_ms; /* time of the last block loaded, for the next one's slot work */
    signer_slot *signers;          /* SIGNER_CACHE entries, or NULL (out of memory: the store only) */
    fill_map fills;                /* the block being built's executed fills (build_block) */
};

static void signer_note(struct node_events_src *src, const uint8_t txid[32], const Tem__V1__TxBody *body) {
    if (!src->signers || !body || body->signer.len != 33) return;
    signer_slot *e = &src->signers[tem_get_u64le(txid) % SIGNER_CACHE];
    memcpy(e->txid, txid, 32);
    memcpy(e->signer, body->signer.data, 33);
    e->used = true;
}

static bool signer_find(const struct node_events_src *src, const uint8_t txid[32], uint8_t out[33]) {
    if (!src->signers) return false;
    const signer_slot *e = &src->signers[tem_get_u64le(txid) % SIGNER_CACHE];
    if (!e->used || memcmp(e->txid, txid, 32) != 0) return false;
    memcpy(out, e->signer, 33);
    return true;
}

/* ------------------------------------------------------------------ building events */
static int add_json(node_events_batch *b, uint32_t kind, bool has_slot, uint64_t slot, const uint8_t (*acc)[33],
                    uint32_t nacc, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (s == NULL) return NODE_EVENTS_ENOMEM;
    int rc = node_events_batch_add(b, kind, has_slot, slot, acc, nacc, s);
    free(s);
    return rc;
}

static uint64_t block_time(node *n, uint64_t height) {
    if (height == 0) return n->g.genesis_time_ms;
    uint8_t *b;
    size_t bl;
    uint64_t t = 0;
    if (ledger_store_block(n->store, height, &b, &bl) != LEDGER_OK) return 0;
    Tem__V1__Block *blk = tem__v1__block__unpack(&ledger_pb_allocator, bl, b);
    tem_free(b);
    if (blk && blk->header) t = blk->header->time_ms;
    if (blk) tem__v1__block__free_unpacked(blk, &ledger_pb_allocator);
    return t;
}

/* The maker of a fill: the signer of the counter-order, from the store. One decoded block is
 * kept, since a taker's fills usually hit orders of few blocks. The bytes read per block (for
 * replays, fully curtailed fills, and fills the trade records do not answer) are bounded by the
 * config's events_maker_read_bytes_max, 4 MiB by default: about 5-15 ms of the loop thread. It
 * was 4096 reads, each of a whole block (0.15-1.3 ms measured): seconds for a block whose fills
 * an attacker spread over thousands of older blocks. */
typedef struct {
    uint64_t height;
    Tem__V1__Block *blk;
    uint64_t bytes; /* read so far for this block's events */
} maker_cache;

static bool maker_of(node *n, maker_cache *c, const uint8_t txid[32], uint8_t out[33]) {
    uint64_t h;
    uint32_t pos;
    uint8_t *rb;
    size_t rl;
    if (ledger_store_receipt(n->store, txid, &h, &pos, &rb, &rl) != LEDGER_OK) return false;
    tem_free(rb);
    if (c->blk == NULL || c->height != h) {
        if (c->bytes >= n->cfg.events_maker_read_bytes_max) return false;
        n->events_maker_reads++;
        if (c->blk) tem__v1__block__free_unpacked(c->blk, &ledger_pb_allocator);
        c->blk = NULL;
        uint8_t *b;
        size_t bl;
        if (ledger_store_block(n->store, h, &b, &bl) != LEDGER_OK) return false;
        c->bytes += bl;
        c->blk = tem__v1__block__unpack(&ledger_pb_allocator, bl, b);
        tem_free(b);
        c->height = h;
        if (c->blk == NULL) return false;
    }
    if (pos >= c->blk->n_txs) return false;
    Tem__V1__TxBody *body = tem__v1__tx_body__unpack(&ledger_pb_allocator, c->blk->txs[pos]->body.len,
                                                     c->blk->txs[pos]->body.data);
    bool ok = body && body->signer.len == 33;
    if (ok) memcpy(out, body->signer.data, 33);
    if (body) tem__v1__tx_body__free_unpacked(body, &ledger_pb_allocator);
    return ok;
}

static fill_slot *fill_slot_of(fill_map *fm, uint64_t slot, bool add) {
    for (uint32_t i = 0; i < fm->n; i++)
        if (fm->s[i].slot == slot) return &fm->s[i];
    if (!add || fm->n == FILL_SLOTS_MAX) return NULL;
    fm->s[fm->n] = (fill_slot){.slot = slot};
    return &fm->s[fm->n++];
}

/* Counts the block's executed fills per slot and finds where their trades begin. */
static void fill_map_build(node *n, fill_map *fm, size_t ntx, const Tem__V1__TxBody *const *bodies,
                           const uint8_t *rbuf, const size_t *offs) {
    fm->n = 0;
    for (size_t i = 0; rbuf && i < ntx; i++) {
        const Tem__V1__TxBody *b = bodies[i];
        if (!b || b->kind_case != TEM__V1__TX_BODY__KIND_ORDER || !b->order || offs[i + 1] == offs[i]) continue;
        Tem__V1__Receipt *rc = tem__v1__receipt__unpack(&ledger_pb_allocator, offs[i + 1] - offs[i], rbuf + offs[i]);
        if (!rc) continue;
        fill_slot *fs = NULL;
        for (size_t k = 0; k < rc->n_fills; k++)
            if (rc->fills[k]->quantity_wh > 0 && (fs || (fs = fill_slot_of(fm, b->order->slot, true)) != NULL))
                fs->count++;
        tem__v1__receipt__free_unpacked(rc, &ledger_pb_allocator);
    }
    ledger_state *st = ledger_store_state(n->store);
    for (uint32_t i = 0; i < fm->n; i++) {
        fill_slot *fs = &fm->s[i];
        uint64_t next;
        fs->ok = contracts_trade_next_seq(st, fs->slot, &next) == LEDGER_OK && next >= fs->count;
        fs->next = fs->ok ? next - fs->count : 0;
    }
}

/* The maker of executed fill f of `taker`'s order in `slot`, from its trade record; advances the
 * slot's cursor. False when the map has no answer. */
static bool fill_maker(node *n, fill_map *fm, uint64_t slot, const uint8_t taker[33], const Tem__V1__Fill *f,
                       uint8_t out[33]) {
    fill_slot *fs = fm && f->quantity_wh > 0 ? fill_slot_of(fm, slot, false) : NULL;
    if (!fs || !fs->ok) return false;
    contracts_trade t;
    uint64_t seq = fs->next++;
    bool ok = contracts_trade_get(ledger_store_state(n->store), slot, seq, &t) == LEDGER_OK &&
              t.qty_wh == f->quantity_wh && t.price == f->price && memcmp(t.seller, t.buyer, 33) != 0;
    bool taker_sells = ok && memcmp(t.seller, taker, 33) == 0;
    if (!ok || (!taker_sells && memcmp(t.buyer, taker, 33) != 0)) {
        fs->ok = false;
        return false;
    }
    memcpy(out, taker_sells ? t.buyer : t.seller, 33);
    return true;
}

static const char *kind_name(int k) {
    const char *name = ledger_tx_kind_name(k);
    return name ? name : "unknown";
}

/* tx, trade and curtailment events of one tx (body NULL: it did not decode); rb (rl bytes, none
 * when 0) is its Receipt. */
static int tx_events(node *n, node_events_batch *out, uint64_t height, uint32_t pos, const uint8_t txid[32],
                     const Tem__V1__TxBody *body, const uint8_t *rb, size_t rl, maker_cache *mc, fill_map *fm,
                     uint32_t *refused) {
    Tem__V1__Receipt *rc = rl ? tem__v1__receipt__unpack(&ledger_pb_allocator, rl, rb) : NULL;
    int ret = NODE_EVENTS_OK;
    uint8_t acc[2][33];
    uint32_t nacc = 0;
    bool has_slot = false;
    uint64_t slot = 0;
    int side = 0;
    json_t *j = json_object();
    json_object_set_new(j, "height", json_integer((json_int_t)height));
    json_object_set_new(j, "position", json_integer(pos));
    json_object_set_new(j, "txid", node_hexj(txid, 32));
    if (body && body->signer.len == 33) {
        memcpy(acc[nacc++], body->signer.data, 33);
        json_object_set_new(j, "signer", node_hexj(body->signer.data, 33));
        json_object_set_new(j, "nonce", json_integer((json_int_t)body->nonce));
        json_object_set_new(j, "kind", json_string(kind_name(body->kind_case)));
        const ProtobufCBinaryData *other = NULL;
        if (body->kind_case == TEM__V1__TX_BODY__KIND_ORDER && body->order) {
            has_slot = true;
            slot = body->order->slot;
            side = body->order->side;
        } else if (body->kind_case == TEM__V1__TX_BODY__KIND_READING && body->reading) {
            has_slot = true;
            slot = body->reading->slot;
        } else if (body->kind_case == TEM__V1__TX_BODY__KIND_TRANSFER && body->transfer) {
            other = &body->transfer->to;
        } else if (body->kind_case == TEM__V1__TX_BODY__KIND_DEPOSIT && body->deposit) {
            other = &body->deposit->to;
        } else if (body->kind_case == TEM__V1__TX_BODY__KIND_REGISTER && body->register_) {
            other = &body->register_->pubkey;
        }
        if (other && other->len == 33 && memcmp(other->data, acc[0], 33) != 0) {
            memcpy(acc[nacc++], other->data, 33);
            json_object_set_new(j, "counterparty", node_hexj(other->data, 33));
        }
        if (has_slot) json_object_set_new(j, "slot", json_integer((json_int_t)slot));
    }
    if (rc) {
        if (rc->code != 0) (*refused)++;
        json_object_set_new(j, "status", json_string(rc->code == 0 ? "committed" : "refused"));
        json_object_set_new(j, "code", json_integer(rc->code));
        if (rc->code != 0) {
            const char *name = contracts_errname(rc->code);
            json_object_set_new(j, "code_name", json_string(name ? name : ledger_errname(rc->code)));
        }
        json_object_set_new(j, "receipt", node_pb_json(&rc->base));
    }
    if ((ret = add_json(out, NODE_EV_TX, has_slot, slot, (const uint8_t(*)[33])acc, nacc, j)) != NODE_EVENTS_OK) goto done;
    for (size_t k = 0; rc && body && nacc > 0 && k < rc->n_fills; k++) {
        const Tem__V1__Fill *f = rc->fills[k];
        uint8_t maker[33];
        bool have_maker = (side != 0 && fill_maker(n, fm, slot, acc[0], f, maker)) ||
                          (f->counter_txid.len == 32 && (signer_find(n->events, f->counter_txid.data, maker) ||
                                                         maker_of(n, mc, f->counter_txid.data, maker)));
        bool taker_buys = side == TEM__V1__SIDE__BUY;
        uint8_t tacc[2][33];
        uint32_t tn = 0;
        memcpy(tacc[tn++], acc[0], 33);
        if (have_maker && memcmp(maker, acc[0], 33) != 0) memcpy(tacc[tn++], maker, 33);
        for (int pass = 0; pass < 2; pass++) {
            if (pass == 1 && f->curtailed_wh == 0) break;
            json_t *t = json_object();
            json_object_set_new(t, "height", json_integer((json_int_t)height));
            json_object_set_new(t, "txid", node_hexj(txid, 32));
            json_object_set_new(t, "counter_txid", node_hexj(f->counter_txid.data, f->counter_txid.len));
            json_object_set_new(t, "slot", json_integer((json_int_t)slot));
            json_object_set_new(t, "source", json_string("fill"));
            json_object_set_new(t, "taker_side", json_string(taker_buys ? "buy" : "sell"));
            json_t *mk = have_maker ? node_hexj(maker, 33) : json_null();
            json_object_set_new(t, "buyer", taker_buys ? node_hexj(acc[0], 33) : mk);
            json_object_set_new(t, "seller", taker_buys ? mk : node_hexj(acc[0], 33));
            json_object_set_new(t, "quantity_wh", json_integer((json_int_t)f->quantity_wh));
            json_object_set_new(t, "price", json_integer((json_int_t)f->price));
            if (pass == 0) {
                json_object_set_new(t, "network_fee", json_integer((json_int_t)f->network_fee));
                json_object_set_new(t, "loss_fee", json_integer((json_int_t)f->loss_fee));
            }
            json_object_set_new(t, "curtailed_wh", json_integer((json_int_t)f->curtailed_wh));
            json_object_set_new(t, "binding", json_string(f->binding ? f->binding : ""));
            ret = add_json(out, pass == 0 ? NODE_EV_TRADE : NODE_EV_CURTAILMENT, true, slot,
                           (const uint8_t(*)[33])tacc, tn, t);
            if (ret != NODE_EVENTS_OK) goto done;
        }
    }
done:
    if (rc) tem__v1__receipt__free_unpacked(rc, &ledger_pb_allocator);
    return ret;
}

/* ---- slot work: call-auction clearings and settlements */
typedef struct {
    node_events_batch *out;
    uint64_t height;
    int rc;
} slot_ctx;

static int call_trade_fn(void *ctx, const contracts_trade *t) {
    slot_ctx *c = ctx;
    json_t *j = json_object();
    json_object_set_new(j, "height", json_integer((json_int_t)c->height));
    json_object_set_new(j, "slot", json_integer((json_int_t)t->slot));
    json_object_set_new(j, "source", json_string("call"));
    json_object_set_new(j, "seq", json_integer((json_int_t)t->seq));
    json_object_set_new(j, "buyer", node_hexj(t->buyer, 33));
    json_object_set_new(j, "seller", node_hexj(t->seller, 33));
    json_object_set_new(j, "quantity_wh", json_integer((json_int_t)t->qty_wh));
    json_object_set_new(j, "price", json_integer((json_int_t)t->price));
    json_object_set_new(j, "value_uunit", json_integer(t->value_uunit));
    json_object_set_new(j, "buyer_fee_uunit", json_integer(t->buyer_fee_uunit));
    json_object_set_new(j, "seller_fee_uunit", json_integer(t->seller_fee_uunit));
    uint8_t acc[2][33];
    memcpy(acc[0], t->buyer, 33);
    memcpy(acc[1], t->seller, 33);
    c->rc = add_json(c->out, NODE_EV_TRADE, true, t->slot, (const uint8_t(*)[33])acc, 2, j);
    return c->rc != NODE_EVENTS_OK;
}

static int call_curt_fn(void *ctx, const contracts_curtailment *cu) {
    slot_ctx *c = ctx;
    json_t *j = json_object();
    json_object_set_new(j, "height", json_integer((json_int_t)c->height));
    json_object_set_new(j, "slot", json_integer((json_int_t)cu->slot));
    json_object_set_new(j, "source", json_string("call"));
    if (cu->executed) json_object_set_new(j, "trade_seq", json_integer((json_int_t)cu->trade_seq));
    json_object_set_new(j, "buyer", node_hexj(cu->buyer, 33));
    json_object_set_new(j, "seller", node_hexj(cu->seller, 33));
    json_object_set_new(j, "wanted_wh", json_integer((json_int_t)cu->wanted_wh));
    json_object_set_new(j, "allowed_wh", json_integer((json_int_t)cu->allowed_wh));
    json_object_set_new(j, "curtailed_wh", json_integer((json_int_t)(cu->wanted_wh - cu->allowed_wh)));
    json_object_set_new(j, "price", json_integer((json_int_t)cu->price));
    json_object_set_new(j, "binding", json_string(cu->binding));
    uint8_t acc[2][33];
    memcpy(acc[0], cu->buyer, 33);
    memcpy(acc[1], cu->seller, 33);
    c->rc = add_json(c->out, NODE_EV_CURTAILMENT, true, cu->slot, (const uint8_t(*)[33])acc, 2, j);
    return c->rc != NODE_EVENTS_OK;
}

static int settle_fn(void *ctx, const contracts_settlement *l) {
    slot_ctx *c = ctx;
    json_t *j = json_object();
    json_object_set_new(j, "height", json_integer((json_int_t)c->height));
    json_object_set_new(j, "slot", json_integer((json_int_t)l->slot));
    json_object_set_new(j, "pubkey", node_hexj(l->pubkey, 33));
#define F(name) json_object_set_new(j, #name, json_integer(l->name))
    F(export_wh); F(import_wh); F(sold_wh); F(bought_wh); F(delivered_wh); F(received_wh); F(shortfall_wh);
    F(burnt_wh); F(lack_wh); F(surplus_wh); F(trade_net_uunit); F(penalty_net_uunit); F(utility_net_uunit);
    F(unpaid_uunit);
#undef F
    c->rc = add_json(c->out, NODE_EV_SETTLEMENT, true, l->slot, (const uint8_t(*)[33])l->pubkey, 1, j);
    return c->rc != NODE_EVENTS_OK;
}

/* Smallest slot s >= 0 with base + s * slot_ms > t (t, base in ms; slot_ms > 0). */
static uint64_t first_slot_after(int64_t t, int64_t base, int64_t slot_ms) {
    if (t < base) return 0;
    return (uint64_t)((t - base) / slot_ms) + 1;
}

static int slot_events(node *n, node_events_batch *out, uint64_t height, uint64_t t_prev, uint64_t t) {
    const ledger_market_params *m = &n->g.market;
    if (m->slot_ms <= 0 || t <= t_prev) return NODE_EVENTS_OK;
    ledger_state *st = ledger_store_state(n->store);
    slot_ctx c = {out, height, NODE_EVENTS_OK};
    int64_t g = (int64_t)n->g.genesis_time_ms;
    /* Call auctions clear at the first block with time >= gate(s) = g + s*slot - gate_closure:
     * slots with t_prev < gate(s) <= t. */
    if (m->mechanism == LEDGER_MECH_CALL) {
        int64_t base = g - m->gate_closure_ms;
        uint64_t lo = first_slot_after((int64_t)t_prev, base, m->slot_ms);
        uint64_t hi = first_slot_after((int64_t)t, base, m->slot_ms); /* exclusive: gate(s) <= t */
        for (uint64_t s = lo, k = 0; s < hi && k < SLOT_WALK_MAX; s++, k++) {
            if (contracts_trade_iter(st, s, call_trade_fn, &c) < 0 || c.rc) return c.rc;
            if (contracts_curtailment_iter(st, s, call_curt_fn, &c) < 0 || c.rc) return c.rc;
        }
    }
    /* A slot settles at the first block with time > deadline(s) = g + (s+1)*slot + deadline_ms:
     * slots with t_prev <= deadline(s) < t. */
    int64_t base = g + m->slot_ms + m->settlement_deadline_ms;
    uint64_t lo = t_prev <= (uint64_t)base ? 0 : first_slot_after((int64_t)t_prev - 1, base, m->slot_ms);
    uint64_t hi = first_slot_after((int64_t)t - 1, base, m->slot_ms); /* exclusive: deadline(s) < t */
    for (uint64_t s = lo, k = 0; s < hi && k < SLOT_WALK_MAX; s++, k++)
        if (contracts_settlement_iter(st, s, settle_fn, &c) < 0 || c.rc) return c.rc;
    return NODE_EVENTS_OK;
}

/* Every event of committed block `height` from its decoded txs: txids[i] and bodies[i] (NULL
 * when tx i did not decode), n of them; hash: the block's. */
static int build_block(struct node_events_src *src, uint64_t height, uint64_t t, const uint8_t hash[32], size_t ntx,
                       const uint8_t (*txids)[32], const Tem__V1__TxBody *const *bodies, bool live,
                       node_events_batch *out) {
    node *n = src->n;
    uint64_t t_prev = src->last_h + 1 == height ? src->last_time_ms : block_time(n, height - 1);
    int rc = NODE_EVENTS_OK;
    /* The block event goes first but its refused count is known only after the receipts. */
    node_events_batch txs;
    node_events_batch_init(&txs, height);
    uint32_t refused = 0;
    maker_cache mc = {0, NULL, 0};
    size_t *offs = tem_malloc((ntx + 1) * sizeof *offs);
    uint8_t *rbuf = NULL;
    if (!offs || ledger_store_block_receipts(n->store, height, ntx, offs, &rbuf) != LEDGER_OK) rc = -1;
    for (size_t i = 0; i < ntx; i++) signer_note(src, txids[i], bodies[i]);
    fill_map *fm = &src->fills;
    if (live && rc == NODE_EVENTS_OK) fill_map_build(n, fm, ntx, bodies, rbuf, offs);
    for (size_t i = 0; i < ntx && rc == NODE_EVENTS_OK; i++)
        rc = tx_events(n, &txs, height, (uint32_t)i, txids[i], bodies[i], rbuf ? rbuf + offs[i] : NULL,
                       offs[i + 1] - offs[i], &mc, live ? fm : NULL, &refused);
    tem_free(rbuf);
    tem_free(offs);
    if (mc.blk) tem__v1__block__free_unpacked(mc.blk, &ledger_pb_allocator);
    if (rc == NODE_EVENTS_OK) {
        json_t *j = json_object();
        json_object_set_new(j, "height", json_integer((json_int_t)height));
        if (hash) json_object_set_new(j, "hash", node_hexj(hash, 32));
        json_object_set_new(j, "time_ms", json_integer((json_int_t)t));
        json_object_set_new(j, "txs", json_integer((json_int_t)ntx));
        json_object_set_new(j, "refused", json_integer(refused));
        rc = add_json(out, NODE_EV_BLOCK, false, 0, NULL, 0, j);
    }
    for (uint32_t i = 0; i < txs.n && rc == NODE_EVENTS_OK; i++) {
        const node_event *e = &txs.ev[i];
        rc = node_events_batch_add(out, e->kind, e->has_slot, e->slot, (const uint8_t(*)[33])e->accounts,
                                   e->n_accounts, e->json);
    }
    node_events_batch_free(&txs);
    if (rc == NODE_EVENTS_OK) rc = slot_events(n, out, height, t_prev, t);
    if (rc != NODE_EVENTS_OK) return -1;
    src->last_h = height;
    src->last_time_ms = t;
    return 0;
}

/* The loader (a subscriber replaying from an earlier height): every event of committed block
 * `height`, read back from the store. */
static int load_block(void *ctx, uint64_t height, node_events_batch *out) {
    struct node_events_src *src = ctx;
    node *n = src->n;
    uint8_t *b;
    size_t bl;
    if (ledger_store_block(n->store, height, &b, &bl) != LEDGER_OK) return -1;
    Tem__V1__Block *blk = tem__v1__block__unpack(&ledger_pb_allocator, bl, b);
    tem_free(b);
    if (blk == NULL || blk->header == NULL) {
        if (blk) tem__v1__block__free_unpacked(blk, &ledger_pb_allocator);
        return -1;
    }
    size_t ntx = blk->n_txs;
    uint8_t(*ids)[32] = tem_malloc((ntx ? ntx : 1) * 32);
    Tem__V1__TxBody **bodies = tem_calloc(ntx ? ntx : 1, sizeof *bodies);
    int rc = ids && bodies ? 0 : -1;
    for (size_t i = 0; i < ntx && rc == 0; i++) {
        const Tem__V1__SignedTx *stx = blk->txs[i];
        ledger_sha256(ids[i], stx->body.data, stx->body.len);
        bodies[i] = tem__v1__tx_body__unpack(&ledger_pb_allocator, stx->body.len, stx->body.data);
    }
    uint8_t hash[32];
    bool have_hash = ledger_block_hash(blk->header, hash) == LEDGER_OK;
    if (rc == 0)
        rc = build_block(src, height, blk->header->time_ms, have_hash ? hash : NULL, ntx, (const uint8_t(*)[32])ids,
                         (const Tem__V1__TxBody *const *)bodies, false, out);
    for (size_t i = 0; bodies && i < ntx; i++)
        if (bodies[i]) tem__v1__tx_body__free_unpacked(bodies[i], &ledger_pb_allocator);
    tem_free(bodies);
    tem_free(ids);
    tem__v1__block__free_unpacked(blk, &ledger_pb_allocator);
    return rc;
}

/* ------------------------------------------------------------------ HTTP sinks */
static int sink_write(void *sink, const void *data, size_t len) {
    return net_http_stream_write(sink, data, len) == NET_OK ? 0 : -1;
}
static size_t sink_queued(void *sink) { return net_http_stream_queued(sink); }
static void sink_discard(void *sink) { net_http_stream_discard(sink); }
static void sink_end(void *sink) { net_http_stream_end(sink); }

static const node_events_sink_ops sink_ops = {sink_write, sink_queued, sink_discard, sink_end};

static struct node_events_src *src_of(node *n) {
    if (n->events) return n->events;
    struct node_events_src *s = tem_calloc(1, sizeof *s);
    if (s == NULL) return NULL;
    s->n = n;
    s->signers = tem_calloc(SIGNER_CACHE, sizeof *s->signers);
    /* Defaults (docs/operate.md): not yet settable from temd.conf. */
    if (node_events_new(NULL, &sink_ops, load_block, s, ledger_store_durable_height(n->store), &s->hub) != NODE_EVENTS_OK) {
        tem_free(s->signers);
        tem_free(s);
        return NULL;
    }
    n->events = s;
    return s;
}

static void on_stream(void *ctx, net_http_req *req, int what) {
    node *n = ctx;
    if (n->events == NULL) {
        net_http_stream_end(req);
        return;
    }
    if (what == NET_HTTP_STREAM_DRAINED) node_events_drained(n->events->hub, req);
    else node_events_gone(n->events->hub, req);
}

void node_events_http(void *ctx, net_http_req *req, const net_http_request *r) {
    node *n = ctx;
    node_events_filter f;
    char err[160], last_id[64] = "";
    if (net_http_req_header(req, "last-event-id", last_id, sizeof last_id) != NET_OK) last_id[0] = '\0';
    if (node_events_filter_parse(&f, r->query, last_id, err, sizeof err) != NODE_EVENTS_OK) {
        node_reply_err(req, 400, "EFILTER", err);
        return;
    }
    struct node_events_src *src = src_of(n);
    if (src == NULL) {
        node_reply_err(req, 503, "ENOMEM", "out of memory");
        return;
    }
    /* Check the limits before the stream starts: a refusal is still a plain JSON error. */
    int rc = node_events_check(src->hub, r->remote, &f);
    if (rc != NODE_EVENTS_OK) {
        int status = rc == NODE_EVENTS_EREPLAY ? 410 : rc == NODE_EVENTS_ENOMEM ? 503 : 429;
        node_reply_err(req, status, node_events_errname(rc), node_events_strerror(rc));
        return;
    }
    if (net_http_stream_start(req, 200, "text/event-stream", on_stream, n) != NET_OK) return;
    rc = node_events_subscribe(src->hub, r->remote, &f, req);
    if (rc != NODE_EVENTS_OK) net_http_stream_end(req);
}

/* ------------------------------------------------------------------ node hooks */
void node_events_committed(node *n, uint64_t height, const ledger_block_view *v) {
    /* Nobody has subscribed yet: nothing to build. The hub then starts from the store. */
    if (n->events == NULL) return;
    struct node_events_src *src = n->events;
    if (node_events_count(src->hub) == 0) {
        node_events_publish(src->hub, &(node_events_batch){.height = height});
        return;
    }
    node_events_batch b;
    node_events_batch_init(&b, height);
    /* The block just applied is at hand decoded: reading it back would decode every tx again and
     * hash them all for the stored block's tx_root check, on the loop thread of a node that a
     * subscriber (an indexer, a load generator) makes do that for every block. */
    const Tem__V1__TxBody **bodies = NULL;
    int rc = -1;
    if (v && v->header && v->tx_rc == LEDGER_OK && v->hash_rc == LEDGER_OK && v->txids &&
        (bodies = tem_malloc((v->n ? v->n : 1) * sizeof *bodies)) != NULL) {
        for (size_t i = 0; i < v->n; i++) bodies[i] = v->txs[i].tx ? v->txs[i].tx->body : NULL;
        rc = build_block(src, height, v->header->time_ms, v->block_hash, v->n, (const uint8_t(*)[32])v->txids, bodies,
                         true, &b);
        tem_free(bodies);
    } else {
        rc = load_block(src, height, &b);
    }
    if (rc != 0) {
        node_log(n, NODE_LOG_WARN, "events: cannot build the events of block %llu", (unsigned long long)height);
        node_events_batch_free(&b);
        node_events_batch_init(&b, height);
    }
    node_events_publish(src->hub, &b);
    node_events_batch_free(&b);
}

void node_events_stop(node *n) {
    if (n->events == NULL) return;
    node_events_free(n->events->hub);
    tem_free(n->events->signers);
    tem_free(n->events);
    n->events = NULL;
}
