/* api.c: the node's HTTP JSON API (docs/api.md) and Prometheus metrics, served by net/http.c on
 * the node's loop. Tx submission answers 202 only once the mempool has verified the tx and made
 * it durable; everything else is a read of the store, the state or the node's counters. */
#include "node/metrics.h"
#include "node/node_internal.h"

#include <jansson.h>

static const char *err_name(int rc) {
    const char *s = contracts_errname(rc);
    return s ? s : node_mempool_errname(rc);
}
static const char *err_msg(int rc) {
    if (rc <= -300 && rc > -400) return contracts_strerror(rc);
    return node_mempool_strerror(rc);
}

/* HTTP status of a refusal: malformed input 400, conflicts with known txs 409, semantic
 * refusals 422, a full or closing node 503. */
static int http_status_of(int rc) {
    if (rc == NODE_MEMPOOL_EBUSY) return 503;
    if (rc == NODE_MEMPOOL_ESIGNERSHARE || rc == NODE_MEMPOOL_EADDRSHARE) return 429;
    if (rc == NODE_MEMPOOL_EFULL || rc == NODE_MEMPOOL_ECLOSING || rc == NODE_MEMPOOL_EDISKFULL || rc == NODE_MEMPOOL_EIO || rc == NODE_MEMPOOL_ENOMEM ||
        rc == LEDGER_ENOMEM)
        return 503;
    if (rc == NODE_MEMPOOL_EDUP || rc == NODE_MEMPOOL_ECOMMITTED || rc == NODE_MEMPOOL_ENONCELOW ||
        rc == NODE_MEMPOOL_ENONCETAKEN || rc == NODE_MEMPOOL_ESUPERSEDED || rc == LEDGER_ENONCE)
        return 409;
    if (rc <= -300 && rc > -400) return 422;
    if (rc == NODE_MEMPOOL_ESIGNERFULL || rc == NODE_MEMPOOL_ENONCEFAR) return 429;
    return 400;
}

/* ------------------------------------------------------------------ POST /v1/tx, /v1/txs */
typedef struct batch batch;
typedef struct {
    node *n;
    net_http_req *req; /* single submission */
    batch *b;          /* or one item of a batch */
    uint32_t index;
    uint64_t t_ms;     /* uv_now at submission: admission's intake time */
} submit_ctx;

struct batch {
    node *n;
    net_http_req *req;
    uint32_t left;
    uint32_t retry_after_s; /* the largest Retry-After of an item refused by admission, 0 = none */
    json_t *results;
};

/* An answer that may carry Retry-After (seconds; 0 = none): admission's refusals say when
 * the queue will have room again. */
static void reply_json_retry(net_http_req *req, int status, json_t *j, uint32_t retry_after_s) {
    if (retry_after_s) {
        char v[16];
        snprintf(v, sizeof v, "%u", retry_after_s);
        if (net_http_reply_header(req, "Retry-After", v) != NET_OK) {
            /* the client left; the reply below frees req */
        }
    }
    node_reply_json(req, status, j);
}

static void batch_item_done(batch *b, uint32_t i, json_t *res) {
    json_array_set_new(b->results, i, res);
    if (--b->left == 0) {
        reply_json_retry(b->req, 200, b->results, b->retry_after_s);
        tem_free(b);
    }
}

static json_t *err_json(int rc, const uint8_t *txid) {
    json_t *e = json_object();
    if (txid) json_object_set_new(e, "txid", node_hexj(txid, 32));
    json_object_set_new(e, "error", json_string(err_msg(rc)));
    json_object_set_new(e, "code", json_string(err_name(rc)));
    return e;
}

static void submit_done(void *ctx, int rc, const uint8_t txid[32]) {
    submit_ctx *s = ctx;
    node *n = s->n;
    node_admission_intake_end(&n->adm);
    if (rc == 0) {
        n->http_txs_accepted++;
        uint64_t now = uv_now(&n->loop);
        node_admission_intake(&n->adm, now > s->t_ms ? now - s->t_ms : 0);
        if (!n->stopping) node_tx_accepted(n, txid);
    } else {
        n->http_txs_rejected++;
    }
    if (s->b) {
        json_t *r;
        if (rc == 0) {
            r = json_object();
            json_object_set_new(r, "txid", node_hexj(txid, 32));
        } else {
            r = err_json(rc, txid);
        }
        batch_item_done(s->b, s->index, r);
    } else if (rc == 0) {
        json_t *r = json_object();
        json_object_set_new(r, "txid", node_hexj(txid, 32));
        node_reply_json(s->req, 202, r);
    } else {
        node_reply_json(s->req, http_status_of(rc), err_json(rc, txid));
    }
    tem_free(s);
}

/* Queues one client tx through admission (admission.h): the estimated wait against the bound,
 * the client address' share, then in the mempool the signer's share. On a synchronous refusal
 * returns its code (nothing queued) and, for admission's refusals, *retry_after_s. */
static int submit_one(node *n, const uint8_t *tx, size_t len, net_http_req *req, batch *b, uint32_t index,
                      uint32_t tag, uint8_t txid[32], bool *have_id, uint32_t *retry_after_s) {
    memset(txid, 0, 32);
    *have_id = false;
    *retry_after_s = 0;
    uint32_t ra;
    int v = node_admission_check(&n->adm, uv_now(&n->loop), node_mempool_size(n->mp), tag, &ra);
    if (v != NODE_ADMISSION_OK) {
        *retry_after_s = ra;
        return v == NODE_ADMISSION_BUSY ? NODE_MEMPOOL_EBUSY : NODE_MEMPOOL_EADDRSHARE;
    }
    submit_ctx *s = tem_calloc(1, sizeof *s);
    if (!s) return LEDGER_ENOMEM;
    s->n = n;
    s->req = req;
    s->b = b;
    s->index = index;
    s->t_ms = uv_now(&n->loop);
    bool share = n->adm.cfg.wait_ms_max && node_admission_contended(&n->adm, node_mempool_size(n->mp));
    /* The model's estimate goes with the tx, so its commit can tell admission how far off it was. */
    uint64_t model = node_admission_learn_ms(&n->adm, s->t_ms, node_admission_queue(&n->adm, node_mempool_size(n->mp)));
    node_mempool_admit adm = {.signer_max = share ? node_admission_signer_max(&n->adm) : 0, .tag = tag, .announce = true,
                              .t_ms = s->t_ms, .model_ms = model > UINT32_MAX ? UINT32_MAX : (uint32_t)model};
    /* Held before the submit so the mempool's release can never run ahead of it. */
    node_admission_hold(&n->adm, tag);
    int rc = node_mempool_submit_admit(n->mp, tx, len, &adm, submit_done, s, txid);
    for (int i = 0; i < 32; i++) *have_id |= txid[i] != 0;
    if (rc != 0) {
        node_admission_release(&n->adm, tag);
        tem_free(s);
    } else {
        node_admission_intake_begin(&n->adm);
    }
    if (rc == NODE_MEMPOOL_ESIGNERSHARE) {
        n->adm.refused_signer++;
        *retry_after_s = node_admission_retry_after_s(&n->adm, adm.signer_max);
    }
    return rc;
}

/* Media type of a tx submission: 1 JSON, 0 binary (application/x-protobuf, octet-stream, or no
 * Content-Type), -1 anything else (answered 415: a binary tx sent as text/plain is a client
 * bug that would otherwise be decoded by luck). */
static int tx_media(const char *ct) {
    size_t n = strcspn(ct, ";");
    while (n > 0 && (ct[n - 1] == ' ' || ct[n - 1] == '\t')) n--;
    if (n == 0) return 0;
    if (n == 16 && !strncasecmp(ct, "application/json", n)) return 1;
    if ((n == 22 && !strncasecmp(ct, "application/x-protobuf", n)) || (n == 24 && !strncasecmp(ct, "application/octet-stream", n)))
        return 0;
    return -1;
}

static bool refuse_media(node *n, net_http_req *req, int media) {
    if (media >= 0) return false;
    n->http_txs_rejected++;
    node_reply_err(req, 415, "ECONTENTTYPE",
                   "Content-Type must be application/json, application/x-protobuf or application/octet-stream");
    return true;
}

/* Refuses a submission the node cannot make durable: 503 EDISKFULL. True if it answered. */
static bool refuse_disk_full(node *n, net_http_req *req) {
    if (!n->disk_full) return false;
    n->http_txs_rejected++;
    node_reply_err(req, 503, "EDISKFULL", "disk full: this node cannot store txs now; submit to another node or retry later");
    return true;
}

/* Structural characters ({ [ , :) outside strings, counted until more than `stop`: a bound,
 * read in one pass, on how many values jansson would build. A 4 MiB body of "[0,0,...]" is 2
 * million values, 0.18 s of the loop thread that also runs consensus, for one 400 (found by an
 * audit: one address at 5 such requests a second halved a validator's block rate); the
 * documented bodies hold one value per tx. */
static size_t json_tokens(const uint8_t *p, size_t len, size_t stop) {
    size_t n = 0;
    bool in_str = false;
    for (size_t i = 0; i < len && n <= stop; i++) {
        uint8_t c = p[i];
        if (in_str) {
            if (c == '\\') i++;
            else if (c == '"') in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == ',' || c == ':' || c == '[' || c == '{') {
            n++;
        }
    }
    return n;
}

static void h_post_tx(void *ctx, net_http_req *req, const net_http_request *r) {
    node *n = ctx;
    int media = tx_media(r->content_type);
    if (refuse_media(n, req, media) || refuse_disk_full(n, req) || node_faults_refuse_submit(n, req)) return;
    uint8_t *buf = NULL;
    size_t len = r->body_len;
    const uint8_t *tx = r->body;
    if (media == 1) {
        if (json_tokens(r->body, r->body_len, 8) > 8) {
            n->http_txs_rejected++;
            node_reply_err(req, 400, "EJSON", "body must be {\"tx\":\"<hex of a SignedTx>\"} (too many JSON values)");
            return;
        }
        json_error_t je;
        json_t *j = json_loadb((const char *)r->body, r->body_len, 0, &je);
        const char *hex = j ? json_string_value(json_object_get(j, "tx")) : NULL;
        if (!hex || tem_unhex_alloc(hex, &buf, &len) != 0) {
            json_decref(j);
            n->http_txs_rejected++;
            node_reply_err(req, 400, "EJSON", "body must be {\"tx\":\"<hex of a SignedTx>\"}");
            return;
        }
        json_decref(j);
        tx = buf;
    }
    uint8_t txid[32];
    bool have_id;
    uint32_t ra;
    int rc = submit_one(n, tx, len, req, NULL, 0, node_admission_addr_tag(&n->adm, r->remote), txid, &have_id, &ra);
    tem_free(buf);
    if (rc != 0) {
        n->http_txs_rejected++;
        reply_json_retry(req, http_status_of(rc), err_json(rc, have_id ? txid : NULL), ra);
    }
}

static void h_post_txs(void *ctx, net_http_req *req, const net_http_request *r) {
    node *n = ctx;
    int media = tx_media(r->content_type);
    if (refuse_media(n, req, media) || refuse_disk_full(n, req) || node_faults_refuse_submit(n, req)) return;
    uint32_t tag = node_admission_addr_tag(&n->adm, r->remote), ra;
    /* A batch that would not get its first tx in is refused whole, before anything is parsed. */
    if (node_admission_check(&n->adm, uv_now(&n->loop), node_mempool_size(n->mp), tag, &ra) == NODE_ADMISSION_BUSY) {
        n->http_txs_rejected++;
        reply_json_retry(req, 503, err_json(NODE_MEMPOOL_EBUSY, NULL), ra);
        return;
    }
    /* Two encodings: a JSON array of hex strings, or a stream of u32 big-endian length-prefixed
     * SignedTx (application/x-protobuf), the same framing `temctl exec` reads. */
    const uint8_t *items[4096];
    size_t lens[4096];
    uint8_t *owned[4096];
    uint32_t cnt = 0, nown = 0;
    json_t *j = NULL;
    if (media == 1) {
        /* '[' and a comma between each two of 4096 items. */
        if (json_tokens(r->body, r->body_len, 4096) > 4096) {
            node_reply_err(req, 400, "EJSON", "body must be a JSON array of at most 4096 hex SignedTx (too many JSON values)");
            return;
        }
        json_error_t je;
        j = json_loadb((const char *)r->body, r->body_len, 0, &je);
        if (!json_is_array(j) || json_array_size(j) > 4096) {
            json_decref(j);
            node_reply_err(req, 400, "EJSON", "body must be a JSON array of at most 4096 hex SignedTx");
            return;
        }
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v) {
            uint8_t *b;
            size_t l;
            if (!json_string_value(v) || tem_unhex_alloc(json_string_value(v), &b, &l) != 0) {
                b = NULL;
                l = 0;
            }
            owned[nown++] = b;
            items[cnt] = b ? b : (const uint8_t *)"";
            lens[cnt++] = l;
        }
        json_decref(j);
    } else {
        size_t off = 0;
        while (off < r->body_len) {
            if (cnt >= 4096 || r->body_len - off < 4) {
                node_reply_err(req, 400, "EFRAME", "stream must be u32 big-endian length-prefixed SignedTx, at most 4096");
                return;
            }
            uint32_t l = tem_get_u32be(r->body + off);
            off += 4;
            if (l > r->body_len - off) {
                node_reply_err(req, 400, "EFRAME", "truncated length-prefixed tx");
                return;
            }
            items[cnt] = r->body + off;
            lens[cnt++] = l;
            off += l;
        }
    }
    batch *b = tem_calloc(1, sizeof *b);
    if (!b) {
        for (uint32_t i = 0; i < nown; i++) tem_free(owned[i]);
        node_reply_err(req, 500, "ENOMEM", "out of memory");
        return;
    }
    b->n = n;
    b->req = req;
    b->results = json_array();
    b->left = cnt + 1; /* +1 held until every item is queued, so an early finish cannot reply */
    for (uint32_t i = 0; i < cnt; i++) json_array_append_new(b->results, json_null());
    for (uint32_t i = 0; i < cnt; i++) {
        uint8_t txid[32];
        bool have_id;
        have_id = false;
        int rc = lens[i] ? submit_one(n, items[i], lens[i], NULL, b, i, tag, txid, &have_id, &ra) : LEDGER_EEMPTY;
        if (rc != 0) {
            if (lens[i] && ra > b->retry_after_s) b->retry_after_s = ra;
            n->http_txs_rejected++;
            batch_item_done(b, i, err_json(rc, lens[i] && have_id ? txid : NULL));
        }
    }
    for (uint32_t i = 0; i < nown; i++) tem_free(owned[i]);
    if (cnt == 0) {
        b->left = 1;
    }
    /* release the hold */
    if (--b->left == 0) {
        reply_json_retry(req, 200, b->results, b->retry_after_s);
        tem_free(b);
    }
}

/* ------------------------------------------------------------------ GET /v1/tx/{txid} */
static void h_get_tx(void *ctx, net_http_req *req, const net_http_request *r) {
    node *n = ctx;
    const char *hex = r->path + strlen("/v1/tx/");
    uint8_t txid[32];
    if (tem_unhex(txid, 32, hex) != 0) {
        node_reply_err(req, 400, "ETXID", "txid must be 32 bytes of hex");
        return;
    }
    json_t *o = json_object();
    json_object_set_new(o, "txid", node_hexj(txid, 32));
    uint64_t height;
    uint32_t pos;
    uint8_t *rb;
    size_t rl;
    if (ledger_store_receipt(n->store, txid, &height, &pos, &rb, &rl) == LEDGER_OK) {
        Tem__V1__Receipt *rc = tem__v1__receipt__unpack(&ledger_pb_allocator, rl, rb);
        tem_free(rb);
        if (!rc) {
            json_decref(o);
            node_reply_err(req, 500, "ECORRUPT", "stored receipt does not decode");
            return;
        }
        json_object_set_new(o, "status", json_string(rc->code == 0 ? "committed" : "refused"));
        json_object_set_new(o, "height", json_integer((json_int_t)height));
        json_object_set_new(o, "position", json_integer(pos));
        json_t *rj = node_pb_json(&rc->base);
        if (rc->code != 0) {
            const char *name = contracts_errname(rc->code);
            json_object_set_new(rj, "code_name", json_string(name ? name : ledger_errname(rc->code)));
        }
        json_object_set_new(o, "receipt", rj);
        tem__v1__receipt__free_unpacked(rc, &ledger_pb_allocator);
    } else {
        int st = node_mempool_status(n->mp, txid);
        if (st == NODE_MEMPOOL_STATUS_PENDING || st == NODE_MEMPOOL_STATUS_INFLIGHT) {
            json_object_set_new(o, "status", json_string("pending"));
        } else if (st == NODE_MEMPOOL_STATUS_SUPERSEDED) {
            json_object_set_new(o, "status", json_string("refused"));
            json_object_set_new(o, "reason", json_string("nonce used by another tx of the same signer"));
            json_object_set_new(o, "code", json_string("ENONCE"));
        } else {
            json_object_set_new(o, "status", json_string("unknown"));
        }
    }
    node_reply_json(req, 200, o);
}

/* ------------------------------------------------------------------ GET /v1/status */
static void h_status(void *ctx, net_http_req *req, const net_http_request *r) {
    (void)r;
    node *n = ctx;
    json_t *o = json_object();
    /* The last block this node holds on disk: a client that reads the status and then asks
     * for that block finds it, even while the next one's commit runs (docs/performance.md). */
    uint8_t h[32], sr[32];
    uint64_t height = ledger_store_durable_height(n->store), last_ms;
    ledger_store_durable_tip(n->store, h, sr, &last_ms);
    json_object_set_new(o, "chain_id", json_string(n->g.chain_id));
    json_object_set_new(o, "genesis_hash", node_hexj(n->g.hash, 32));
    json_object_set_new(o, "height", json_integer((json_int_t)height));
    json_object_set_new(o, "last_block_hash", node_hexj(h, 32));
    json_object_set_new(o, "state_root", node_hexj(sr, 32));
    json_object_set_new(o, "last_block_time_ms", json_integer((json_int_t)last_ms));
    json_object_set_new(o, "role", json_string(n->self >= 0 ? "validator" : "observer"));
    if (n->self >= 0) json_object_set_new(o, "validator_index", json_integer(n->self));
    if (n->self >= 0) json_object_set_new(o, "voting", json_boolean(n->rep_ok));
    uint64_t view = n->rep_ok ? pbft_replica_view(&n->rep) : 0;
    json_object_set_new(o, "view", json_integer((json_int_t)view));
    json_object_set_new(o, "primary", json_integer(pbft_primary(view, n->g.n_validators)));
    json_object_set_new(o, "in_view_change", json_boolean(n->rep_ok && pbft_replica_in_view_change(&n->rep)));
    json_t *peers = json_array(), *missing = json_array();
    for (uint32_t i = 0; i < n->g.n_validators; i++) {
        if ((int)i == n->self) continue;
        json_t *p = json_object();
        json_object_set_new(p, "index", json_integer(i));
        json_object_set_new(p, "name", json_string(n->g.validators[i].name));
        bool up = net_peer_connected(n->net, i);
        json_object_set_new(p, "connected", json_boolean(up));
        /* A stopped process keeps its TCP session open: what counts is whether it still takes
         * part, i.e. sent a consensus message within a view timeout. */
        uint64_t nowl = uv_now(&n->loop), last = n->last_pbft_ms[i];
        bool silent = !up || last == 0 || nowl - last > n->g.view_timeout_ms;
        if (last) json_object_set_new(p, "last_message_ms_ago", json_integer((json_int_t)(nowl - last)));
        json_array_append_new(peers, p);
        if (silent) json_array_append_new(missing, json_integer(i));
    }
    json_object_set_new(o, "peers", peers);
    json_object_set_new(o, "observers", json_integer(net_observers_connected(n->net)));
    json_object_set_new(o, "mempool", json_integer(node_mempool_size(n->mp)));
    json_object_set_new(o, "disk_full", json_boolean(n->disk_full));
    node_faults_status(n, o);
    uint64_t now = node_now_ms(), last = n->last_commit_wall_ms ? n->last_commit_wall_ms : n->started_wall_ms;
    uint64_t since = now > last ? now - last : 0;
    json_object_set_new(o, "ms_since_last_commit", json_integer((json_int_t)since));
    /* When nothing has committed for a while, say where the node waits and whom it misses. */
    if (since > 3 * n->cfg.block_interval_ms + n->g.view_timeout_ms) {
        json_t *w = json_object();
        const char *phase = !n->rep_ok ? "block sync (observer)"
                            : pbft_replica_in_view_change(&n->rep) ? "view change: collecting VIEW-CHANGE messages"
                            : n->fetch_from > height ? "catching up: fetching blocks from peers"
                            : n->validating || host_validations_waiting(&n->host) ? "validating a proposal"
                            : "normal case: waiting for the primary's proposal or 2f+1 votes";
        json_object_set_new(w, "phase", json_string(phase));
        json_object_set_new(w, "disconnected_validators", json_incref(missing));
        if (n->rep_ok) {
            pbft_progress pg;
            pbft_replica_progress(&n->rep, &pg);
            json_t *np = json_array(), *nc = json_array(), *vc = json_array();
            for (uint32_t i = 0; i < n->g.n_validators; i++) {
                if (!(pg.prepare_mask >> i & 1)) json_array_append_new(np, json_integer(i));
                if (!(pg.commit_mask >> i & 1)) json_array_append_new(nc, json_integer(i));
                if (pg.view_change_mask >> i & 1) json_array_append_new(vc, json_integer(i));
            }
            json_object_set_new(w, "height", json_integer((json_int_t)pg.height));
            json_object_set_new(w, "proposal_received", json_boolean(pg.has_proposal));
            json_object_set_new(w, "missing_prepares", np);
            json_object_set_new(w, "missing_commits", nc);
            json_object_set_new(w, "asking_for_view_change", vc);
        }
        json_object_set_new(w, "quorum", json_integer(ledger_genesis_quorum(&n->g)));
        json_object_set_new(o, "stalled", w);
    }
    json_decref(missing);
    node_status_clock(n, o);
    node_reply_json(req, 200, o);
}

/* ------------------------------------------------------------------ GET /v1/blocks/{h} */
static void h_block(void *ctx, net_http_req *req, const net_http_request *r) {
    node *n = ctx;
    const char *s = r->path + strlen("/v1/blocks/");
    char *end;
    unsigned long long h = strtoull(s, &end, 10);
    if (!*s || *end) {
        node_reply_err(req, 400, "EHEIGHT", "height must be a number");
        return;
    }
    uint8_t *b, *c = NULL;
    size_t bl, cl = 0;
    int brc = node_tail_is_bad(n, h) ? LEDGER_ECORRUPT : ledger_store_block(n->store, h, &b, &bl);
    if (brc == LEDGER_ECORRUPT && node_tail_read_failed(n, h)) {
        node_reply_err(req, 503, "EREPAIRING", "the stored block at that height is damaged and being refetched from "
                                               "peers; retry later or ask another node");
        return;
    }
    if (brc == LEDGER_ECORRUPT) {
        node_reply_err(req, 500, "ECORRUPT", "the stored block at that height is damaged; the operator must restore it");
        return;
    }
    if (brc != LEDGER_OK) {
        node_reply_err(req, 404, "ENOTFOUND", "no block at that height");
        return;
    }
    if (ledger_store_cert(n->store, h, &c, &cl) != LEDGER_OK) c = NULL; /* offline-executed blocks have none */
    Tem__V1__Block *blk = tem__v1__block__unpack(&ledger_pb_allocator, bl, b);
    json_t *o = json_object();
    json_object_set_new(o, "height", json_integer((json_int_t)h));
    if (blk && blk->header) {
        uint8_t hash[32];
        if (ledger_block_hash(blk->header, hash) == LEDGER_OK) json_object_set_new(o, "hash", node_hexj(hash, 32));
        json_object_set_new(o, "header", node_pb_json(&blk->header->base));
        json_t *txs = json_array();
        for (size_t i = 0; i < blk->n_txs; i++) {
            uint8_t id[32];
            ledger_sha256(id, blk->txs[i]->body.data, blk->txs[i]->body.len);
            json_array_append_new(txs, node_hexj(id, 32));
        }
        json_object_set_new(o, "txids", txs);
    }
    if (c) {
        Tem__V1__CommitCertificate *cc = tem__v1__commit_certificate__unpack(&ledger_pb_allocator, cl, c);
        if (cc) {
            json_object_set_new(o, "cert", node_pb_json(&cc->base));
            tem__v1__commit_certificate__free_unpacked(cc, &ledger_pb_allocator);
        }
        json_object_set_new(o, "cert_hex", node_hexj(c, cl));
    }
    json_object_set_new(o, "block_hex", node_hexj(b, bl));
    if (blk) tem__v1__block__free_unpacked(blk, &ledger_pb_allocator);
    tem_free(b);
    tem_free(c);
    node_reply_json(req, 200, o);
}

/* ------------------------------------------------------------------ GET /v1/accounts/{key} */
static void h_account(void *ctx, net_http_req *req, const net_http_request *r) {
    node *n = ctx;
    uint8_t pub[33];
    size_t pl = strlen(r->path);
    if (pl >= strlen("/v1/accounts//proof") && !strcmp(r->path + pl - 6, "/proof")) { /* /v1/accounts/{key}/proof */
        node_account_proof_http(ctx, req, r);
        return;
    }
    if (tem_unhex(pub, 33, r->path + strlen("/v1/accounts/")) != 0) {
        node_reply_err(req, 400, "EPUBKEY", "key must be 33 bytes of hex");
        return;
    }
    ledger_state *st = ledger_store_state(n->store);
    contracts_account a;
    int rc = contracts_account_get(st, pub, &a);
    if (rc != LEDGER_OK) {
        node_reply_err(req, 404, "ENOTFOUND", "no such participant");
        return;
    }
    static const char *roles[] = {"unspecified", "prosumer", "consumer", "utility", "dso", "aggregator", "meter", "meter_data"};
    json_t *o = json_object();
    json_object_set_new(o, "pubkey", node_hexj(pub, 33));
    json_object_set_new(o, "bus", json_integer(a.bus));
    json_object_set_new(o, "role", json_string(a.role >= 0 && a.role <= 7 ? roles[a.role] : "unknown"));
    json_object_set_new(o, "money_uunit", json_integer(a.money_uunit));
    json_object_set_new(o, "escrow_uunit", json_integer(a.money_escrow_uunit));
    json_object_set_new(o, "tokens_wh", json_integer(a.tokens_wh));
    json_object_set_new(o, "escrow_tokens_wh", json_integer(a.tokens_escrow_wh));
    json_object_set_new(o, "debt_uunit", json_integer(a.debt_uunit));
    json_object_set_new(o, "next_nonce", json_integer((json_int_t)ledger_state_nonce(st, pub)));
    node_reply_json(req, 200, o);
}


int node_api_start(node *n) {
    net_http_config hc;
    memset(&hc, 0, sizeof hc);
    hc.listen = n->cfg.http;
    hc.body_bytes_max = n->cfg.http_body_bytes_max;
    hc.conns_max = (uint32_t)n->cfg.http_conns_max;
    hc.conns_per_addr_max = (uint32_t)n->cfg.http_conns_per_addr_max;
    hc.rate_reqs_per_s = n->cfg.http_rate_reqs_per_s;
    hc.rate_burst_ms = n->cfg.http_rate_burst_ms;
    hc.request_timeout_ms = n->cfg.http_request_timeout_ms;
    hc.tls_cert_path = n->cfg.tls_cert[0] ? n->cfg.tls_cert : NULL;
    hc.tls_key_path = n->cfg.tls_key[0] ? n->cfg.tls_key : NULL;
    hc.log_level = n->cfg.log_level;
    if (net_http_new(&n->loop, &hc, &n->http) != NET_OK) return NODE_EHTTP;
    struct {
        const char *m, *p;
        net_http_handler_fn fn;
    } routes[] = {{"POST", "/v1/tx", h_post_tx},        {"POST", "/v1/txs", h_post_txs},
                  {"GET", "/v1/tx/", h_get_tx},         {"GET", "/v1/status", h_status},
                  {"GET", "/v1/blocks/", h_block},      {"GET", "/v1/accounts/", h_account},
                  {"GET", "/metrics", node_metrics_http},
                  {"GET", "/v1/events", node_events_http},
                  {"GET", "/v1/genesis", node_genesis_http}, {"GET", "/ui", node_ui_http}};
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (net_http_route(n->http, routes[i].m, routes[i].p, routes[i].fn, n) != NET_OK) return NODE_EHTTP;
    node_api_market_routes(n, n->http);
    if (net_http_start(n->http) != NET_OK) return NODE_EHTTP;
    node_log(n, NODE_LOG_INFO, "HTTP API on %s", n->cfg.http);
    return NODE_OK;
}
