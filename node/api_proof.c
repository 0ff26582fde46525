/* api_proof.c: GET /v1/accounts/{key}/proof (docs/api.md; the document and how to check it:
 * docs/ledger.md, "Account proofs over HTTP").
 *
 * The state after block H is certified only by block H+1, whose header carries its root (roots
 * lag by one block), and the store keeps the tree of the current state only. So the record and
 * its path are read at once, from the state after the tip H, and the answer waits for block
 * H+1 and its certificate (about one block interval: blocks come even on an idle chain).
 * Nothing can interleave: blocks are applied on the loop thread that runs this handler, and the
 * tree, the state entries and the roots are written in one LMDB transaction. The path is checked
 * against the store's root before the wait and that root against header H+1 after it, so an
 * answer never mixes two heights.
 *
 * Waiting requests are bounded (NODE_PROOF_WAITING_MAX, NODE_PROOF_WAITING_PER_ADDR_MAX) and
 * time out after NODE_PROOF_WAIT_MS (docs/operate.md). */
#include "node/node_internal.h"
#include "node/proof.h"

#define NODE_PROOF_WAITING_MAX 64
#define NODE_PROOF_WAITING_PER_ADDR_MAX 8
#define NODE_PROOF_WAIT_MS 10000
#define NODE_PROOF_POLL_MS 10

typedef struct {
    net_http_req *req; /* NULL: free slot */
    char remote[64];
    uint64_t height;   /* the state proved is the one after this block */
    uint64_t deadline; /* uv_now */
    uint8_t root[LEDGER_HASH_BYTES];
    json_t *doc;       /* the answer so far */
} proof_wait;

struct node_proofs {
    node *n;
    uv_timer_t timer;
    bool timer_init;
    uint32_t waiting;
    proof_wait w[NODE_PROOF_WAITING_MAX];
};

/* ------------------------------------------------------------------ the decoded parts */
void node_proof_acct_key(uint8_t key[NODE_PROOF_ACCT_KEY_BYTES], const uint8_t pub[LEDGER_SECP_PUB_BYTES]) {
    key[0] = NODE_PROOF_ACCT_PREFIX;
    memcpy(key + 1, pub, LEDGER_SECP_PUB_BYTES);
}

static int64_t get_i64le(const uint8_t *p) { return (int64_t)tem_get_u64le(p); }

json_t *node_proof_record_json(const uint8_t *v, size_t len) {
    static const char *roles[] = {"unspecified", "prosumer", "consumer", "utility",
                                  "dso",         "aggregator", "meter",  "meter_data"};
    if (len != NODE_PROOF_ACCT_RECORD_BYTES || v[5] || v[6] || v[7]) return NULL;
    json_t *o = json_object();
    if (!o) return NULL;
    json_object_set_new(o, "hex", node_hexj(v, len));
    json_object_set_new(o, "bus", json_integer(tem_get_u32le(v)));
    json_object_set_new(o, "role", json_string(v[4] <= 7 ? roles[v[4]] : "unknown"));
    json_object_set_new(o, "money_uunit", json_integer(get_i64le(v + 8)));
    json_object_set_new(o, "escrow_uunit", json_integer(get_i64le(v + 16)));
    json_object_set_new(o, "tokens_wh", json_integer(get_i64le(v + 24)));
    json_object_set_new(o, "escrow_tokens_wh", json_integer(get_i64le(v + 32)));
    json_object_set_new(o, "debt_uunit", json_integer(get_i64le(v + 40)));
    return o;
}

const char *node_proof_kind_name(int kind) {
    switch (kind) {
    case LEDGER_PROOF_PRESENT: return "present";
    case LEDGER_PROOF_ABSENT_EMPTY: return "absent_empty";
    case LEDGER_PROOF_ABSENT_LEAF: return "absent_leaf";
    default: return NULL;
    }
}

json_t *node_proof_path_json(const ledger_state_proof *p) {
    const char *kind = node_proof_kind_name(p->kind);
    if (!kind || p->depth > LEDGER_STATE_PROOF_DEPTH_MAX) return NULL;
    uint8_t *wire = tem_malloc(LEDGER_STATE_PROOF_BYTES_MAX);
    size_t wl;
    if (!wire) return NULL;
    if (ledger_state_proof_encode(p, wire, LEDGER_STATE_PROOF_BYTES_MAX, &wl) != LEDGER_OK) {
        tem_free(wire);
        return NULL;
    }
    json_t *o = json_object(), *sib = json_array();
    json_object_set_new(o, "hex", node_hexj(wire, wl));
    tem_free(wire);
    json_object_set_new(o, "kind", json_string(kind));
    json_object_set_new(o, "depth", json_integer(p->depth));
    for (uint32_t i = 0; i < p->depth; i++) json_array_append_new(sib, node_hexj(p->sibling[i], LEDGER_HASH_BYTES));
    json_object_set_new(o, "siblings", sib);
    if (p->kind != LEDGER_PROOF_ABSENT_EMPTY) {
        json_object_set_new(o, "leaf_kh", node_hexj(p->leaf_kh, LEDGER_HASH_BYTES));
        json_object_set_new(o, "leaf_vh", node_hexj(p->leaf_vh, LEDGER_HASH_BYTES));
    }
    return o;
}

json_t *node_proof_header_json(const Tem__V1__BlockHeader *h, const uint8_t hash[LEDGER_HASH_BYTES]) {
    size_t len = tem__v1__block_header__get_packed_size(h);
    uint8_t *b = tem_malloc(len ? len : 1);
    if (!b) return NULL;
    tem__v1__block_header__pack(h, b);
    json_t *o = node_pb_json(&h->base);
    json_object_set_new(o, "hash", node_hexj(hash, LEDGER_HASH_BYTES));
    json_object_set_new(o, "hex", node_hexj(b, len));
    tem_free(b);
    return o;
}

json_t *node_proof_cert_json(const Tem__V1__CommitCertificate *c, const uint8_t *bytes, size_t len) {
    json_t *o = json_object(), *sigs = json_array();
    json_object_set_new(o, "hex", node_hexj(bytes, len));
    json_object_set_new(o, "view", json_integer((json_int_t)c->view));
    json_object_set_new(o, "height", json_integer((json_int_t)c->height));
    json_object_set_new(o, "block_hash", node_hexj(c->block_hash.data, c->block_hash.len));
    for (size_t i = 0; i < c->n_sigs; i++) {
        json_t *s = json_object();
        json_object_set_new(s, "validator", json_integer(c->sigs[i]->validator));
        json_object_set_new(s, "sig", node_hexj(c->sigs[i]->sig.data, c->sigs[i]->sig.len));
        json_array_append_new(sigs, s);
    }
    json_object_set_new(o, "sigs", sigs);
    return o;
}

/* ------------------------------------------------------------------ waiting for the header */
static void wait_free(struct node_proofs *p, proof_wait *w) {
    json_decref(w->doc);
    memset(w, 0, sizeof *w);
    p->waiting--;
}

/* Adds header H+1 and its certificate to w's answer and sends it. */
static void finish(struct node_proofs *p, proof_wait *w) {
    node *n = p->n;
    uint64_t hh = w->height + 1;
    uint8_t *b = NULL, *c = NULL;
    size_t bl, cl;
    Tem__V1__Block *blk = NULL;
    Tem__V1__CommitCertificate *cc = NULL;
    const char *code = "EIO", *msg = "cannot read the certifying block";
    int status = 500;
    if (ledger_store_block(n->store, hh, &b, &bl) != LEDGER_OK) goto fail;
    blk = tem__v1__block__unpack(&ledger_pb_allocator, bl, b);
    uint8_t hash[LEDGER_HASH_BYTES];
    code = "ECORRUPT";
    msg = "the certifying block does not decode";
    if (!blk || !blk->header || ledger_block_hash(blk->header, hash) != LEDGER_OK) goto fail;
    /* The root proved must be the one the next header committed to: anything else would be a
     * bug mixing heights, never an answer. */
    msg = "the certifying header does not carry the root the proof was made against";
    if (blk->header->state_root.len != LEDGER_HASH_BYTES || memcmp(blk->header->state_root.data, w->root, 32) != 0)
        goto fail;
    code = "ENOCERT";
    msg = "the certifying block has no commit certificate on this node (executed offline)";
    status = 503;
    if (ledger_store_cert(n->store, hh, &c, &cl) != LEDGER_OK) goto fail;
    status = 500;
    code = "ECORRUPT";
    msg = "the stored commit certificate does not verify";
    cc = tem__v1__commit_certificate__unpack(&ledger_pb_allocator, cl, c);
    if (!cc || ledger_cert_verify(&n->g, c, cl, hh, hash) != LEDGER_OK) goto fail;
    json_t *hj = node_proof_header_json(blk->header, hash), *cj = node_proof_cert_json(cc, c, cl);
    code = "ENOMEM";
    msg = "out of memory";
    if (!hj || !cj) {
        json_decref(hj);
        json_decref(cj);
        goto fail;
    }
    json_object_set_new(w->doc, "header", hj);
    json_object_set_new(w->doc, "cert", cj);
    node_reply_json(w->req, 200, json_incref(w->doc));
    w->req = NULL;
    goto out;
fail:
    node_log(n, NODE_LOG_WARN, "proof at height %llu: %s", (unsigned long long)w->height, msg);
    node_reply_err(w->req, status, code, msg);
    w->req = NULL;
out:
    if (blk) tem__v1__block__free_unpacked(blk, &ledger_pb_allocator);
    if (cc) tem__v1__commit_certificate__free_unpacked(cc, &ledger_pb_allocator);
    tem_free(b);
    tem_free(c);
    wait_free(p, w);
}

static void on_poll(uv_timer_t *t) {
    struct node_proofs *p = t->data;
    node *n = p->n;
    uint64_t tip = ledger_store_durable_height(n->store), now = uv_now(&n->loop);
    for (uint32_t i = 0; i < NODE_PROOF_WAITING_MAX; i++) {
        proof_wait *w = &p->w[i];
        if (!w->req) continue;
        if (tip > w->height) {
            finish(p, w);
        } else if (now >= w->deadline || n->stopping) {
            if (net_http_reply_header(w->req, "Retry-After", "1") != NET_OK) {
                /* the client left: the reply below frees the handle */
            }
            if (n->stopping) node_reply_err(w->req, 503, "ECLOSING", "the node is stopping");
            else node_reply_err(w->req, 503, "ETIMEOUT", "no block committed the state in time; retry");
            w->req = NULL;
            wait_free(p, w);
        }
    }
    if (p->waiting == 0) uv_timer_stop(t);
}

static struct node_proofs *proofs_of(node *n) {
    if (n->proofs) return n->proofs;
    struct node_proofs *p = tem_calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = n;
    if (uv_timer_init(&n->loop, &p->timer) != 0) {
        tem_free(p);
        return NULL;
    }
    p->timer.data = p;
    p->timer_init = true;
    n->proofs = p;
    return p;
}

/* ------------------------------------------------------------------ the handler */
/* "height=N" or nothing; false on anything else. */
static bool parse_query(const char *q, bool *has_h, uint64_t *h) {
    *has_h = false;
    if (!q || !*q) return true;
    if (strncmp(q, "height=", 7) != 0) return false;
    const char *s = q + 7;
    char *end;
    if (*s < '0' || *s > '9') return false;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno) return false;
    *has_h = true;
    *h = v;
    return true;
}

void node_account_proof_http(void *ctx, net_http_req *req, const net_http_request *r) {
    node *n = ctx;
    /* api.c's accounts route passes only paths ending in "/proof". */
    const char *hex = r->path + strlen("/v1/accounts/");
    size_t hl = strlen(hex) - strlen("/proof");
    char khex[2 * LEDGER_SECP_PUB_BYTES + 1];
    uint8_t pub[LEDGER_SECP_PUB_BYTES];
    if (hl != 2 * LEDGER_SECP_PUB_BYTES) {
        node_reply_err(req, 400, "EPUBKEY", "key must be 33 bytes of hex");
        return;
    }
    memcpy(khex, hex, hl);
    khex[hl] = '\0';
    if (tem_unhex(pub, sizeof pub, khex) != 0) {
        node_reply_err(req, 400, "EPUBKEY", "key must be 33 bytes of hex");
        return;
    }
    /* The proof reads the tree in LMDB: the last block's commit must be over first. */
    if (!node_commit_done(n)) {
        node_reply_err(req, 503, "ECLOSING", "the node is stopping");
        return;
    }
    bool has_h;
    uint64_t want_h = 0, tip = ledger_store_height(n->store);
    if (!parse_query(r->query, &has_h, &want_h)) {
        node_reply_err(req, 400, "EQUERY", "the only query parameter is height=N");
        return;
    }
    if (has_h && want_h != tip) {
        char m[160];
        snprintf(m, sizeof m, "this node proves its current state only (after block %llu); older trees are not kept",
                 (unsigned long long)tip);
        node_reply_err(req, 409, "EHEIGHT", m);
        return;
    }
    struct node_proofs *p = proofs_of(n);
    if (!p) {
        node_reply_err(req, 503, "ENOMEM", "out of memory");
        return;
    }
    uint32_t mine = 0;
    proof_wait *w = NULL;
    for (uint32_t i = 0; i < NODE_PROOF_WAITING_MAX; i++) {
        if (!p->w[i].req) {
            if (!w) w = &p->w[i];
        } else if (!strcmp(p->w[i].remote, r->remote)) {
            mine++;
        }
    }
    if (mine >= NODE_PROOF_WAITING_PER_ADDR_MAX) {
        node_reply_err(req, 429, "ELIMIT", "too many proofs waiting for this address");
        return;
    }
    if (!w) {
        node_reply_err(req, 503, "EBUSY", "too many proofs waiting; retry");
        return;
    }

    /* Record, path and root, all of the state after block `tip`. */
    uint8_t key[NODE_PROOF_ACCT_KEY_BYTES], root[LEDGER_HASH_BYTES], rr[LEDGER_HASH_BYTES];
    node_proof_acct_key(key, pub);
    ledger_state *st = ledger_store_state(n->store);
    const uint8_t *val = NULL;
    size_t vlen = 0;
    int grc = ledger_state_get(st, key, sizeof key, &val, &vlen);
    bool present = grc == LEDGER_OK;
    ledger_state_proof *pf = tem_malloc(sizeof *pf);
    if (!pf) {
        node_reply_err(req, 503, "ENOMEM", "out of memory");
        return;
    }
    ledger_store_roots(n->store, root, rr);
    int rc = ledger_store_prove(n->store, key, sizeof key, pf);
    int vrc = rc != LEDGER_OK ? -1
              : present       ? ledger_state_proof_verify(root, key, sizeof key, val, vlen, pf)
                              : ledger_state_proof_verify_absent(root, key, sizeof key, pf);
    json_t *rec = present ? node_proof_record_json(val, vlen) : json_null();
    json_t *path = vrc == 0 ? node_proof_path_json(pf) : NULL;
    tem_free(pf);
    if (vrc != 0 || !rec || !path) {
        json_decref(rec);
        json_decref(path);
        node_log(n, NODE_LOG_ERROR, "proof of an account at height %llu: %s", (unsigned long long)tip,
                 rc != LEDGER_OK ? ledger_strerror(rc) : vrc ? "the tree's path does not give the store's root"
                                                         : "the record is not an account record");
        node_reply_err(req, 500, "ECORRUPT", "cannot prove this account from the stored state; see the node's log");
        return;
    }
    json_t *doc = json_object();
    json_object_set_new(doc, "key", node_hexj(pub, sizeof pub));
    json_object_set_new(doc, "state_key", node_hexj(key, sizeof key));
    json_object_set_new(doc, "chain_id", json_string(n->g.chain_id));
    json_object_set_new(doc, "height", json_integer((json_int_t)tip));
    json_object_set_new(doc, "present", json_boolean(present));
    json_object_set_new(doc, "record", rec);
    json_object_set_new(doc, "state_root", node_hexj(root, sizeof root));
    json_object_set_new(doc, "proof", path);

    w->req = req;
    snprintf(w->remote, sizeof w->remote, "%s", r->remote);
    w->height = tip;
    w->deadline = uv_now(&n->loop) + NODE_PROOF_WAIT_MS;
    memcpy(w->root, root, sizeof root);
    w->doc = doc;
    p->waiting++;
    if (uv_timer_start(&p->timer, on_poll, 0, NODE_PROOF_POLL_MS) != 0) {
        node_reply_err(req, 503, "ENOMEM", "cannot start a timer");
        w->req = NULL;
        wait_free(p, w);
    }
}

void node_proofs_stop(node *n) {
    struct node_proofs *p = n->proofs;
    if (!p) return;
    /* After the loop has ended: the server has already answered these 503 ECLOSING, and each
     * reply only frees its handle. */
    for (uint32_t i = 0; i < NODE_PROOF_WAITING_MAX; i++) {
        if (!p->w[i].req) continue;
        node_reply_err(p->w[i].req, 503, "ECLOSING", "the node is stopping");
        p->w[i].req = NULL;
        wait_free(p, &p->w[i]);
    }
    TEM_ASSERT(p->waiting == 0);
    tem_free(p);
    n->proofs = NULL;
}
