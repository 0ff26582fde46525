/* api_clock.c: what a client needs to time its transactions: GET /v1/genesis (the exact
 * genesis bytes and their hash) and the clock fields of GET /v1/status (the current delivery
 * slot, its gate closure, the next order gate still open and the next meter-reading deadline),
 * all from the slot rules of docs/market.md section 2. */
#include "node/node_internal.h"

#include <jansson.h>
#include <stdio.h>

#define GENESIS_FILE_BYTES_MAX (16u << 20)

/* ------------------------------------------------------------------ GET /v1/genesis */
void node_genesis_http(void *ctx, net_http_req *req, const net_http_request *r) {
    node *n = ctx;
    /* The file is read at each request so the bytes served are the bytes hashed; a file edited
     * on disk after start no longer matches the running chain and is refused, not served. */
    FILE *f = fopen(n->cfg.genesis, "rb");
    if (f == NULL) {
        node_reply_err(req, 500, "EGENESIS", "cannot read the genesis file");
        return;
    }
    char *buf = tem_malloc(GENESIS_FILE_BYTES_MAX);
    size_t len = buf ? fread(buf, 1, GENESIS_FILE_BYTES_MAX, f) : 0;
    bool too_big = buf && len == GENESIS_FILE_BYTES_MAX;
    fclose(f);
    if (buf == NULL || too_big) {
        tem_free(buf);
        node_reply_err(req, 500, "EGENESIS", "genesis file unreadable or too large");
        return;
    }
    uint8_t h[32];
    ledger_sha256(h, buf, len);
    if (memcmp(h, n->g.hash, 32) != 0) {
        tem_free(buf);
        node_reply_err(req, 500, "EGENESIS", "the genesis file on disk differs from the one this node started with");
        return;
    }
    if (strcmp(r->query, "format=raw") == 0) {
        if (net_http_reply(req, 200, "application/json", buf, len) != NET_OK) { /* client gone */ }
        tem_free(buf);
        return;
    }
    if (r->query[0]) {
        tem_free(buf);
        node_reply_err(req, 400, "EQUERY", "use /v1/genesis or /v1/genesis?format=raw");
        return;
    }
    json_error_t je;
    json_t *g = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
    tem_free(buf);
    if (g == NULL) {
        node_reply_err(req, 500, "EGENESIS", "genesis file does not parse");
        return;
    }
    json_t *o = json_object();
    json_object_set_new(o, "hash", node_hexj(h, 32));
    json_object_set_new(o, "bytes", json_integer((json_int_t)len));
    json_object_set_new(o, "genesis", g);
    node_reply_json(req, 200, o);
}

/* ------------------------------------------------------------------ /v1/status clock */
/* floor((t - base) / step) for t >= base, else -1 (before slot 0). */
static int64_t slot_at(int64_t t, int64_t base, int64_t step) { return t < base ? -1 : (t - base) / step; }

void node_status_clock(node *n, json_t *o) {
    const ledger_market_params *m = &n->g.market;
    int64_t g = (int64_t)n->g.genesis_time_ms, now = (int64_t)node_now_ms(), sm = m->slot_ms;
    if (sm <= 0) return;
    json_t *c = json_object();
    json_object_set_new(c, "now_ms", json_integer(now));
    json_object_set_new(c, "basis", json_string("wall clock of this node; the chain applies the rules at block time"));
    json_object_set_new(c, "slot_ms", json_integer(sm));
    int64_t cur = slot_at(now, g, sm);
    if (cur >= 0) {
        json_object_set_new(c, "current_slot", json_integer(cur));
        json_object_set_new(c, "current_slot_start_ms", json_integer(g + cur * sm));
        json_object_set_new(c, "current_slot_gate_closure_ms", json_integer(g + cur * sm - m->gate_closure_ms));
    } else {
        json_object_set_new(c, "current_slot", json_null());
    }
    /* The first slot still open for orders: gate(s) = g + s*slot - gate_closure > now. */
    int64_t open = slot_at(now + m->gate_closure_ms, g, sm) + 1;
    json_object_set_new(c, "next_open_slot", json_integer(open));
    json_object_set_new(c, "next_open_slot_gate_closure_ms", json_integer(g + open * sm - m->gate_closure_ms));
    /* The earliest slot whose reading window is not over: deadline(s) = g + (s+1)*slot +
     * settlement_deadline >= now. Its window opens at end(s), which may still be ahead. */
    int64_t rs = slot_at(now - m->settlement_deadline_ms - 1, g + sm, sm) + 1;
    json_object_set_new(c, "reading_slot", json_integer(rs));
    json_object_set_new(c, "reading_window_start_ms", json_integer(g + (rs + 1) * sm));
    json_object_set_new(c, "next_reading_deadline_ms", json_integer(g + (rs + 1) * sm + m->settlement_deadline_ms));
    uint64_t lt = ledger_store_last_time(n->store);
    json_object_set_new(c, "last_block_slot", json_integer(slot_at((int64_t)lt, g, sm)));
    json_object_set_new(o, "clock", c);
    /* The three figures clients asked for most, also at the top level. */
    json_object_set_new(o, "current_slot", json_incref(json_object_get(c, "current_slot")));
    if (cur >= 0) json_object_set_new(o, "gate_closure_ms", json_incref(json_object_get(c, "current_slot_gate_closure_ms")));
    json_object_set_new(o, "next_reading_deadline_ms", json_incref(json_object_get(c, "next_reading_deadline_ms")));
}
