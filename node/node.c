/* node.c: temd's core. One libuv loop carries everything: the peer transport, the HTTP API, the
 * mempool's durable log, timers, and the pBFT replica, whose actions this file performs in order:
 * persist a vote (fsync'd) before anything after it is sent, apply a delivered block in one LMDB
 * transaction, build proposals from the mempool, validate proposals (signatures in the thread
 * pool), fetch blocks from peers when behind. Observers skip consensus and follow the chain by
 * block sync, verifying every certificate. */
#include "node/node_internal.h"

#include <sodium.h>
#include <stdarg.h>
#include <time.h>

uint64_t node_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void node_log(node *n, int level, const char *fmt, ...) {
    if (level < n->cfg.log_level) return;
    static const char *names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    char ts[32], msg[768];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s.%03ldZ %-5s h=%llu v=%llu %s\n", ts, now.tv_nsec / 1000000, names[level & 3],
            (unsigned long long)(n->store ? ledger_store_height(n->store) : 0),
            (unsigned long long)(n->rep_ok ? pbft_replica_view(&n->rep) : 0), msg);
}

static void net_log_cb(void *ctx, int level, const char *msg) { node_log(ctx, level, "net: %s", msg); }

/* ------------------------------------------------------------------ node messages */
static int send_node_msg(node *n, uint32_t to, const Tem__V1__NodeMessage *m) {
    size_t len = tem__v1__node_message__get_packed_size(m);
    uint8_t *buf = tem_malloc(len ? len : 1);
    if (!buf) return NODE_ENOMEM;
    tem__v1__node_message__pack(m, buf);
    int rc;
    if (to == PBFT_TO_ALL) rc = net_broadcast(n->net, buf, len, NET_TO_VALIDATORS) >= 0 ? NET_OK : NET_ETOOBIG;
    else rc = net_send(n->net, to, buf, len);
    tem_free(buf);
    if (rc != NET_OK && rc != NET_ENOTCONN)
        node_log(n, NODE_LOG_DEBUG, "send to %u: %s", to, net_strerror(rc));
    return rc;
}

static void send_pbft(node *n, uint32_t to, const uint8_t *msg, size_t len) {
    Tem__V1__NodeMessage m;
    tem__v1__node_message__init(&m);
    m.kind_case = TEM__V1__NODE_MESSAGE__KIND_PBFT;
    m.pbft = (ProtobufCBinaryData){len, (uint8_t *)msg};
    (void)send_node_msg(n, to, &m);
}

static void request_blocks(node *n, uint64_t from) {
    uint32_t nv = n->g.n_validators;
    Tem__V1__NodeMessage m;
    tem__v1__node_message__init(&m);
    Tem__V1__BlockRequest r = TEM__V1__BLOCK_REQUEST__INIT;
    r.from_height = from;
    r.max_blocks = NODE_SYNC_BLOCKS_MAX;
    m.kind_case = TEM__V1__NODE_MESSAGE__KIND_BLOCK_REQUEST;
    m.block_request = &r;
    /* Round-robin over connected validators, so one slow or lying peer does not stall sync. */
    for (uint32_t k = 0; k < nv; k++) {
        uint32_t p = (n->sync_rr + k) % nv;
        if ((int)p == n->self || !net_peer_connected(n->net, p)) continue;
        n->sync_rr = p + 1;
        if (send_node_msg(n, p, &m) == NET_OK) {
            n->sync_sent_ms = uv_now(&n->loop);
            return;
        }
    }
}

/* ------------------------------------------------------------------ consensus plumbing */
static void pump(node *n);

static int queue_event(node *n, const pbft_event *ev, const uint8_t *data, size_t len, const uint8_t *cert,
                       size_t cert_len) {
    if (n->evq_n >= NODE_EVENT_QUEUE_MAX) {
        node_log(n, NODE_LOG_WARN, "consensus event queue full, dropping event %d", ev->kind);
        return NODE_ENOMEM;
    }
    node_queued_event *q = &n->evq[(n->evq_head + n->evq_n) % NODE_EVENT_QUEUE_MAX];
    memset(q, 0, sizeof *q);
    q->ev = *ev;
    if (data && len) {
        if (!(q->data = tem_malloc(len))) return NODE_ENOMEM;
        memcpy(q->data, data, len);
        q->ev.data = q->data;
        q->ev.len = len;
    }
    if (cert && cert_len) {
        if (!(q->cert = tem_malloc(cert_len))) {
            tem_free(q->data);
            return NODE_ENOMEM;
        }
        memcpy(q->cert, cert, cert_len);
        q->ev.cert = q->cert;
        q->ev.cert_len = cert_len;
    }
    n->evq_n++;
    return NODE_OK;
}

static int block_hash_cb(void *ctx, const uint8_t *blk, size_t len, uint8_t out[32]) {
    (void)ctx;
    /* The header only: the txs are decoded once, in the block view. */
    return ledger_block_hash_bytes(blk, len, out) == LEDGER_OK ? 0 : -1;
}

static void stop_node(node *n, int code);

/* ------------------------------------------------------------------ block views */
/* ledger_tx_lookup_fn over the mempool: a tx this node admitted is neither decoded nor hashed
 * nor verified again when a block brings it back. */
static const ledger_tx *mempool_lookup(void *ctx, const uint8_t *stx, size_t len) {
    node *n = ctx;
    return n->mp ? node_mempool_find_bytes(n->mp, stx, len) : NULL;
}

/* Marks the view's txs whose (txid, signature) pair this node already verified. */
static void mark_known(node *n, ledger_block_view *v) {
    if (v->tx_rc != LEDGER_OK) return;
    for (size_t i = 0; i < v->n; i++)
        if (!v->txs[i].verified)
            v->txs[i].verified = node_sigcache_has(n, v->txs[i].tx->txid, v->txs[i].tx->stx->sig.data);
}

static void view_drop(ledger_block_view *v) {
    ledger_block_view_free(v);
    tem_free(v);
}

/* Frees every kept view: they may borrow mempool txs that the next block_applied releases. */
static void drop_views(node *n) {
    for (uint32_t i = 0; i < NODE_VALIDATED_CACHE; i++) {
        if (n->views[i]) view_drop(n->views[i]);
        n->views[i] = NULL;
    }
}

/* Takes the view validation kept for this block, if its bytes are these. */
static ledger_block_view *take_view(node *n, const uint8_t hash[32], const uint8_t *blk, size_t len) {
    for (uint32_t i = 0; i < NODE_VALIDATED_CACHE; i++) {
        ledger_block_view *v = n->views[i];
        if (!v || memcmp(n->validated[i], hash, 32) != 0) continue;
        if (v->block_len != len || memcmp(v->block, blk, len) != 0) return NULL;
        n->views[i] = NULL;
        return v;
    }
    return NULL;
}

/* A new view of blk (borrowed), its known txs marked; NULL with *rc on failure. */
static ledger_block_view *view_new(node *n, const uint8_t *blk, size_t len, int *rc) {
    ledger_block_view *v = tem_calloc(1, sizeof *v);
    *rc = v ? ledger_block_view_build(&n->g, blk, len, NULL, mempool_lookup, n, v) : LEDGER_ENOMEM;
    if (*rc != LEDGER_OK) {
        tem_free(v);
        return NULL;
    }
    mark_known(n, v);
    return v;
}

static void apply_view(node *n, uint64_t height, ledger_block_view *v, const uint8_t *cert, size_t cert_len,
                       unsigned flags);

/* Applies a committed block and everything that follows from it, from one block view: the one
 * validation built for it, or one built here (fetched blocks, the primary's own). */
static void apply_committed(node *n, uint64_t height, const uint8_t *blk, size_t len, const uint8_t *cert,
                            size_t cert_len, const uint8_t hash[32]) {
    if (height <= ledger_store_height(n->store)) return; /* already applied (replayed delivery) */
    unsigned flags = 0;
    ledger_block_view *v = hash ? take_view(n, hash, blk, len) : NULL;
    if (v) {
        flags = LEDGER_APPLY_SIGS_OK; /* validation verified every signature of these bytes */
    } else {
        int rc;
        if (!(v = view_new(n, blk, len, &rc))) {
            node_log(n, NODE_LOG_ERROR, "certified block %llu does not decode: %s; stopping",
                     (unsigned long long)height, ledger_strerror(rc));
            stop_node(n, 1);
            return;
        }
    }
    apply_view(n, height, v, cert, cert_len, flags);
}

/* Applies v (consumed) and does the node's bookkeeping from it. */
static void apply_view(node *n, uint64_t height, ledger_block_view *v, const uint8_t *cert, size_t cert_len,
                       unsigned flags) {
    if (v->header) {
        uint64_t slot = 0;
        if (node_archive_trades(&n->archive, n->store, v->header->time_ms, &slot) > 0)
            node_log(n, NODE_LOG_WARN, "cannot archive the trades of slot %llu", (unsigned long long)slot);
    }
    ledger_apply_info info;
    int rc = ledger_store_apply_view(n->store, v, cert, cert_len, &n->ex, flags, &info);
    if (rc != LEDGER_OK) {
        /* A certified block that does not apply means this node's state or code differs from
         * 2f+1 validators'. Running on would diverge: stop and let the operator look. */
        node_log(n, NODE_LOG_ERROR, "certified block %llu does not apply: %s; stopping",
                 (unsigned long long)height, ledger_strerror(rc));
        view_drop(v);
        stop_node(n, 1);
        return;
    }
    n->blocks_applied++;
    n->txs_committed += info.n_txs - info.n_refused;
    n->txs_refused += info.n_refused;
    uint64_t now = node_now_ms();
    n->last_commit_wall_ms = now;
    /* the latency histogram, from the view's txids */
    for (size_t i = 0; i < v->n; i++) {
        uint64_t k = tem_get_u64le(v->txids[i]);
        uint32_t slot = (uint32_t)(k % NODE_LATENCY_TABLE);
        if (n->lat_key[slot] == k && k) {
            uint64_t ms = now > n->lat_ms[slot] ? now - n->lat_ms[slot] : 0;
            uint32_t bkt = 0;
            while (bkt < NODE_LATENCY_BUCKETS && ms > (5ull << bkt)) bkt++;
            n->lat_bucket[bkt]++;
            n->lat_sum_ms += ms;
            n->lat_count++;
            n->lat_key[slot] = 0;
        }
    }
    node_archive_note_curtailments(&n->archive, n->store, height, (const uint8_t(*)[32])v->txids, v->n);
    /* Every view may borrow mempool txs: all go before the mempool lets the block's txs go. */
    uint8_t(*ids)[32] = v->txids;
    size_t nids = v->n;
    v->txids = NULL;
    view_drop(v);
    drop_views(n);
    if (n->mp) node_mempool_block_applied(n->mp, (const uint8_t(*)[32])ids, nids);
    tem_free(ids);
    char hh[17];
    tem_hex(hh, info.block_hash, 8);
    node_log(n, NODE_LOG_INFO, "committed block %llu txs=%u refused=%u hash=%s", (unsigned long long)height, info.n_txs,
             info.n_refused, hh);
}

static void schedule_validation(node *n);
static void maybe_propose(node *n);
static void step_now(node *n, const pbft_event *ev);

/* ------------------------------------------------------------------ timers */
static void on_view_timer(uv_timer_t *t) {
    node *n = t->data;
    pbft_event ev = {.kind = PBFT_EV_TIMER, .timer = PBFT_TIMER_VIEW, .timer_seq = n->seq_view};
    step_now(n, &ev);
}
static void on_fetch_timer(uv_timer_t *t) {
    node *n = t->data;
    pbft_event ev = {.kind = PBFT_EV_TIMER, .timer = PBFT_TIMER_FETCH, .timer_seq = n->seq_fetch};
    step_now(n, &ev);
}


static void do_actions(node *n) {
    pbft_actions *a = n->acts;
    for (uint32_t i = 0; i < a->n && !n->stopping; i++) {
        pbft_action *x = &a->a[i];
        switch (x->kind) {
        case PBFT_ACT_SEND: send_pbft(n, x->to, x->msg, x->msg_len); break;
        case PBFT_ACT_BROADCAST: send_pbft(n, PBFT_TO_ALL, x->msg, x->msg_len); break;
        case PBFT_ACT_PERSIST: {
            /* The vote record must be on disk before the vote leaves: a restart that forgot it
             * could sign a different block for the same (view, height). meta_put fsyncs. */
            int rc = ledger_store_meta_put(n->store, PBFT_VOTES_KEY, x->msg, x->msg_len);
            if (rc != LEDGER_OK) {
                node_log(n, NODE_LOG_ERROR, "cannot persist votes: %s; stopping", ledger_strerror(rc));
                stop_node(n, 1);
                return;
            }
            break;
        }
        case PBFT_ACT_SET_TIMER: {
            bool view = x->timer == PBFT_TIMER_VIEW;
            if (view) n->seq_view = x->timer_seq;
            else n->seq_fetch = x->timer_seq;
            if (uv_timer_start(view ? &n->t_view : &n->t_fetch, view ? on_view_timer : on_fetch_timer, x->duration_ms, 0) != 0)
                node_log(n, NODE_LOG_ERROR, "cannot arm consensus timer %d", x->timer);
            break;
        }
        case PBFT_ACT_CANCEL_TIMER:
            (void)uv_timer_stop(x->timer == PBFT_TIMER_VIEW ? &n->t_view : &n->t_fetch);
            break;
        case PBFT_ACT_DELIVER:
            apply_committed(n, x->height, x->msg, x->msg_len, x->cert, x->cert_len, x->block_hash);
            break;
        case PBFT_ACT_REQUEST_PROPOSAL:
            n->want_proposal = x->height;
            maybe_propose(n);
            break;
        case PBFT_ACT_REQUEST_VALIDATION: {
            if (n->nvalq >= NODE_VALIDATION_QUEUE_MAX) {
                node_log(n, NODE_LOG_WARN, "validation queue full; dropping height %llu", (unsigned long long)x->height);
                break;
            }
            node_val_req *v = &n->valq[n->nvalq];
            v->bytes = tem_malloc(x->msg_len ? x->msg_len : 1);
            if (!v->bytes) break;
            memcpy(v->bytes, x->msg, x->msg_len);
            v->len = x->msg_len;
            v->height = x->height;
            memcpy(v->hash, x->block_hash, 32);
            n->nvalq++;
            break;
        }
        case PBFT_ACT_REQUEST_BLOCKS:
            n->fetch_from = x->height;
            request_blocks(n, x->height);
            break;
        }
    }
    pbft_actions_clear(a);
}

/* Steps every queued event; actions may queue more, which run in the same pump. */
static void pump(node *n) {
    if (!n->rep_ok || n->stepping) return;
    n->stepping = true;
    while (n->evq_n > 0 && !n->stopping) {
        node_queued_event q = n->evq[n->evq_head];
        n->evq_head = (n->evq_head + 1) % NODE_EVENT_QUEUE_MAX;
        n->evq_n--;
        uint64_t view_before = pbft_replica_view(&n->rep);
        int rc = pbft_replica_step(&n->rep, &q.ev, n->acts);
        if (rc != PBFT_OK && rc != PBFT_ESTALE && rc != PBFT_EDUP)
            node_log(n, NODE_LOG_DEBUG, "consensus ignored event %d from %u: %s", q.ev.kind, q.ev.from, pbft_strerror(rc));
        if (pbft_replica_view(&n->rep) != view_before) {
            n->view_changes++;
            node_log(n, NODE_LOG_WARN, "view change to %llu (primary %u)", (unsigned long long)pbft_replica_view(&n->rep),
                     pbft_primary(pbft_replica_view(&n->rep), n->g.n_validators));
        }
        do_actions(n);
        tem_free(q.data);
        tem_free(q.cert);
    }
    n->stepping = false;
    schedule_validation(n);
}

static void step_now(node *n, const pbft_event *ev) {
    if (!n->rep_ok) return;
    if (queue_event(n, ev, ev->data, ev->len, ev->cert, ev->cert_len) == NODE_OK) pump(n);
}

/* ------------------------------------------------------------------ proposals */
static void on_propose(uv_timer_t *t) {
    node *n = t->data;
    n->propose_armed = false;
    uint64_t h = n->want_proposal;
    if (!h || h != ledger_store_height(n->store) + 1 || n->stopping) return;
    n->want_proposal = 0;
    uint32_t max = n->g.max_block_txs, cnt = 0;
    const ledger_tx **txs = tem_calloc(max ? max : 1, sizeof *txs);
    if (!txs) goto out;
    if (node_mempool_select_txs(n->mp, ledger_store_state(n->store), max, txs, &cnt) != 0) cnt = 0;
    uint64_t now = node_now_ms(), last = ledger_store_last_time(n->store);
    uint64_t tms = now > last ? now : last + 1;
    uint8_t *blk;
    size_t blen;
    int rc = ledger_block_build_txs(n->store, txs, cnt, tms, n->key.ed_pub, &blk, &blen);
    if (rc != LEDGER_OK) {
        node_log(n, NODE_LOG_WARN, "cannot build block %llu: %s", (unsigned long long)h, ledger_strerror(rc));
        goto out;
    }
    node_log(n, NODE_LOG_DEBUG, "proposing block %llu with %u txs", (unsigned long long)h, cnt);
    pbft_event ev = {.kind = PBFT_EV_PROPOSAL, .height = h, .data = blk, .len = blen};
    step_now(n, &ev);
    tem_free(blk);
out:
    tem_free(txs);
}

/* Arms the proposal timer: soon when txs are waiting, after the idle interval otherwise, so
 * block time (which drives gate closure and settlement) keeps moving on an idle chain. */
static void maybe_propose(node *n) {
    if (!n->want_proposal || n->want_proposal != ledger_store_height(n->store) + 1) return;
    uint64_t delay = node_mempool_size(n->mp) > 0 ? n->cfg.batch_delay_ms : n->cfg.block_interval_ms;
    if (n->propose_armed) {
        uint64_t due = uv_timer_get_due_in(&n->t_propose);
        if (due <= delay) return;
    }
    n->propose_armed = true;
    if (uv_timer_start(&n->t_propose, on_propose, delay, 0) != 0) n->propose_armed = false;
}

void node_kick_proposal(node *n) { maybe_propose(n); }

/* ------------------------------------------------------------------ validation */
typedef struct {
    uv_work_t w;
    node *n;
    size_t lo, hi;
    int rc;
    struct val_job *job;
} val_part;

typedef struct val_job {
    node *n;
    uint64_t height;
    uint8_t hash[32];
    ledger_block_view *view; /* owned until val_finish keeps or frees it */
    int parts_left;
    int rc;
    val_part parts[2];
} val_job;

/* Thread pool: verifies the view's txs not yet known good. Reads only txs the view owns (a
 * verified tx may be borrowed from the mempool and is never touched here). */
static void val_work(uv_work_t *w) {
    val_part *p = w->data;
    p->rc = LEDGER_OK;
    const ledger_block_view *v = p->job->view;
    for (size_t i = p->lo; i < p->hi; i++) {
        if (v->txs[i].verified) continue; /* admitted by our mempool or in the signature cache */
        int rc = ledger_tx_verify(v->txs[i].tx);
        if (rc != LEDGER_OK) {
            p->rc = rc;
            return;
        }
    }
}

static void val_finish(node *n, val_job *j) {
    n->validating = false;
    if (j->rc == LEDGER_OK) {
        uint32_t k = n->validated_next;
        memcpy(n->validated[k], j->hash, 32);
        if (n->views[k]) view_drop(n->views[k]);
        n->views[k] = NULL;
        /* Kept for the apply only while its height is still to come: a view of an applied height
         * may borrow mempool txs that are gone. */
        if (j->view && j->height == ledger_store_height(n->store) + 1 && !n->stopping) {
            n->views[k] = j->view;
            j->view = NULL;
        }
        n->validated_next = (k + 1) % NODE_VALIDATED_CACHE;
    } else {
        node_log(n, NODE_LOG_WARN, "proposal %llu is invalid: %s", (unsigned long long)j->height, ledger_strerror(j->rc));
    }
    pbft_event ev = {.kind = PBFT_EV_VALIDATED, .height = j->height, .ok = j->rc == LEDGER_OK};
    memcpy(ev.block_hash, j->hash, 32);
    if (j->view) view_drop(j->view);
    tem_free(j);
    if (!n->stopping) step_now(n, &ev);
    schedule_validation(n);
}

static void val_after(uv_work_t *w, int status) {
    val_part *p = w->data;
    val_job *j = p->job;
    if (status != 0) p->rc = LEDGER_EIO;
    if (p->rc != LEDGER_OK && j->rc == LEDGER_OK) j->rc = p->rc;
    if (--j->parts_left == 0) val_finish(j->n, j);
}

/* Starts the next queued validation whose parent is applied: builds the proposal's block view
 * (kept for its apply), prechecks it on the loop thread and verifies the unknown signatures in
 * the thread pool. */
static void schedule_validation(node *n) {
    if (n->validating || n->stopping) return;
    uint64_t h = ledger_store_height(n->store);
    uint32_t k = 0;
    while (k < n->nvalq) {
        node_val_req *v = &n->valq[k];
        if (v->height <= h) { /* stale: that height is already applied */
            tem_free(v->bytes);
            n->valq[k] = n->valq[--n->nvalq];
            continue;
        }
        if (v->height == h + 1) break;
        k++;
    }
    if (k >= n->nvalq) return;
    node_val_req v = n->valq[k];
    n->valq[k] = n->valq[--n->nvalq];
    val_job *j = tem_calloc(1, sizeof *j);
    if (j) j->view = tem_calloc(1, sizeof *j->view);
    if (!j || !j->view) {
        if (j) tem_free(j);
        tem_free(v.bytes);
        return;
    }
    j->n = n;
    j->height = v.height;
    memcpy(j->hash, v.hash, 32);
    n->validating = true;
    /* The view takes the proposal's buffer. */
    int rc = ledger_block_view_build(&n->g, v.bytes, v.len, v.bytes, mempool_lookup, n, j->view);
    if (rc != LEDGER_OK) {
        tem_free(v.bytes);
        tem_free(j->view);
        j->view = NULL;
    } else {
        rc = ledger_block_view_precheck(n->store, j->view, node_now_ms() + n->cfg.max_clock_drift_ms);
    }
    if (rc != LEDGER_OK) {
        j->rc = rc;
        val_finish(n, j);
        return;
    }
    /* A tx whose (txid, signature) pair this node verified on admission needs no second check:
     * that would double every validator's signature work. The signature is part of the key
     * because the txid covers only the body. */
    mark_known(n, j->view);
    /* Two halves, one per core: the loop thread never verifies a signature. */
    size_t ntx = j->view->n, half = ntx / 2;
    j->parts_left = 2;
    for (int i = 0; i < 2; i++) {
        val_part *p = &j->parts[i];
        p->n = n;
        p->job = j;
        p->lo = i == 0 ? 0 : half;
        p->hi = i == 0 ? half : ntx;
        p->w.data = p;
        if (uv_queue_work(&n->loop, &p->w, val_work, val_after) != 0) {
            p->rc = LEDGER_EIO;
            val_after(&p->w, 0);
        }
    }
}

/* ------------------------------------------------------------------ peer frames */
static void serve_blocks(node *n, const net_peer_info *p, const Tem__V1__BlockRequest *r) {
    uint64_t tip = ledger_store_height(n->store);
    uint32_t max = r->max_blocks && r->max_blocks < NODE_SYNC_BLOCKS_MAX ? r->max_blocks : NODE_SYNC_BLOCKS_MAX;
    Tem__V1__CommittedBlock cbs[NODE_SYNC_BLOCKS_MAX], *cbp[NODE_SYNC_BLOCKS_MAX];
    uint8_t *bufs[2 * NODE_SYNC_BLOCKS_MAX];
    uint32_t k = 0, nb = 0;
    size_t bytes = 0;
    for (uint64_t h = r->from_height ? r->from_height : 1; h <= tip && k < max && bytes < NODE_SYNC_BYTES_MAX; h++) {
        uint8_t *b, *c;
        size_t bl, cl;
        if (ledger_store_block(n->store, h, &b, &bl) != LEDGER_OK) break;
        if (ledger_store_cert(n->store, h, &c, &cl) != LEDGER_OK) {
            tem_free(b);
            break;
        }
        bufs[nb++] = b;
        bufs[nb++] = c;
        tem__v1__committed_block__init(&cbs[k]);
        cbs[k].height = h;
        cbs[k].block = (ProtobufCBinaryData){bl, b};
        cbs[k].cert = (ProtobufCBinaryData){cl, c};
        cbp[k] = &cbs[k];
        bytes += bl + cl;
        k++;
    }
    Tem__V1__BlockBatch bb = TEM__V1__BLOCK_BATCH__INIT;
    bb.n_blocks = k;
    bb.blocks = cbp;
    bb.tip_height = tip;
    Tem__V1__NodeMessage m;
    tem__v1__node_message__init(&m);
    m.kind_case = TEM__V1__NODE_MESSAGE__KIND_BLOCKS;
    m.blocks = &bb;
    (void)send_node_msg(n, p->id, &m);
    for (uint32_t i = 0; i < nb; i++) tem_free(bufs[i]);
}

static void got_blocks(node *n, const Tem__V1__BlockBatch *bb) {
    for (size_t i = 0; i < bb->n_blocks && !n->stopping; i++) {
        Tem__V1__CommittedBlock *cb = bb->blocks[i];
        if (cb->height != ledger_store_height(n->store) + 1 && !n->rep_ok) continue;
        if (n->rep_ok) {
            pbft_event ev = {.kind = PBFT_EV_BLOCK_FETCHED, .height = cb->height, .data = cb->block.data,
                             .len = cb->block.len, .cert = cb->cert.data, .cert_len = cb->cert.len};
            (void)queue_event(n, &ev, cb->block.data, cb->block.len, cb->cert.data, cb->cert.len);
        } else {
            /* Observer: a block that does not even decode is the peer's fault, not a divergence;
             * the store verifies the certificate against the genesis validators. */
            int rc;
            ledger_block_view *v = view_new(n, cb->block.data, cb->block.len, &rc);
            if (!v || v->hash_rc != LEDGER_OK || v->tx_rc != LEDGER_OK) {
                node_log(n, NODE_LOG_WARN, "sync: peer sent a malformed block %llu", (unsigned long long)cb->height);
                if (v) view_drop(v);
                return;
            }
            apply_view(n, cb->height, v, cb->cert.data, cb->cert.len, 0);
        }
    }
    pump(n);
    n->sync_sent_ms = 0;
    if (!n->rep_ok && bb->tip_height > ledger_store_height(n->store)) request_blocks(n, ledger_store_height(n->store) + 1);
}

/* ------------------------------------------------------------------ verified-signature cache
 * Direct-mapped on the txid (already a SHA-256, so nothing is hashed again): a collision only
 * evicts, and an evicted pair is simply verified again. The whole pair is kept and compared. */
void node_sigcache_add(node *n, const uint8_t txid[32], const uint8_t sig[64]) {
    node_sigcache_entry *e = &n->sigcache[tem_get_u32le(txid) % NODE_SIGCACHE];
    memcpy(e->txid, txid, 32);
    memcpy(e->sig, sig, 64);
}

bool node_sigcache_has(const node *n, const uint8_t txid[32], const uint8_t sig[64]) {
    const node_sigcache_entry *e = &n->sigcache[tem_get_u32le(txid) % NODE_SIGCACHE];
    return memcmp(e->txid, txid, 32) == 0 && memcmp(e->sig, sig, 64) == 0;
}

/* Remembers a tx the mempool made durable: it is PENDING there now, decoded and verified. */
static void sigcache_add_pending(node *n, const uint8_t txid[32]) {
    const ledger_tx *t = n->mp ? node_mempool_get(n->mp, txid, NULL, NULL) : NULL;
    if (t) node_sigcache_add(n, t->txid, t->stx->sig.data);
}

static void gossip_done(void *ctx, int rc, const uint8_t txid[32]) {
    node *n = ctx;
    if (rc == 0 && !n->stopping) sigcache_add_pending(n, txid);
}

static void on_frame(void *ctx, const net_peer_info *p, const uint8_t *data, size_t len) {
    node *n = ctx;
    if (n->stopping) return;
    Tem__V1__NodeMessage *m = tem__v1__node_message__unpack(&ledger_pb_allocator, len, data);
    if (!m) {
        node_log(n, NODE_LOG_WARN, "malformed message from peer %u (%s)", p->id, p->remote);
        return;
    }
    switch (m->kind_case) {
    case TEM__V1__NODE_MESSAGE__KIND_PBFT:
        if (n->rep_ok && p->is_validator) {
            pbft_event ev = {.kind = PBFT_EV_MESSAGE, .from = p->id, .data = m->pbft.data, .len = m->pbft.len};
            step_now(n, &ev);
        }
        break;
    case TEM__V1__NODE_MESSAGE__KIND_TXS:
        if (n->mp && p->is_validator && m->txs)
            for (size_t i = 0; i < m->txs->n_txs; i++) {
                /* already known or refused here too: gossip is best effort. The mempool keeps
                 * its own copy; the frame is freed below. */
                if (node_mempool_submit(n->mp, m->txs->txs[i].data, m->txs->txs[i].len, gossip_done, n, NULL) != 0)
                    continue;
            }
        break;
    case TEM__V1__NODE_MESSAGE__KIND_BLOCK_REQUEST:
        if (m->block_request) serve_blocks(n, p, m->block_request);
        break;
    case TEM__V1__NODE_MESSAGE__KIND_BLOCKS:
        if (m->blocks) got_blocks(n, m->blocks);
        break;
    default:
        node_log(n, NODE_LOG_DEBUG, "unknown message kind from peer %u", p->id);
    }
    tem__v1__node_message__free_unpacked(m, &ledger_pb_allocator);
}

static void on_peer_up(void *ctx, const net_peer_info *p) {
    node *n = ctx;
    node_log(n, NODE_LOG_INFO, "peer %u up (%s, %s)", p->id, p->remote, p->is_validator ? "validator" : "observer");
}
static void on_peer_down(void *ctx, const net_peer_info *p, int reason) {
    node *n = ctx;
    node_log(n, reason == NET_ECLOSING ? NODE_LOG_DEBUG : NODE_LOG_INFO, "peer %u down: %s", p->id, net_strerror(reason));
}

/* ------------------------------------------------------------------ gossip, sync, tick */
void node_tx_accepted(node *n, const uint8_t txid[32]) {
    sigcache_add_pending(n, txid);
    uint64_t k = tem_get_u64le(txid);
    uint32_t slot = (uint32_t)(k % NODE_LATENCY_TABLE);
    n->lat_key[slot] = k;
    n->lat_ms[slot] = node_now_ms();
    if (n->ngossip < NODE_GOSSIP_TXS_MAX) memcpy(n->gossip[n->ngossip++], txid, 32);
    maybe_propose(n);
}

/* Sends the txs accepted since the last tick, read from the mempool (one committed meanwhile is
 * skipped: the others have it or will fetch its block). */
static void flush_gossip(node *n) {
    if (!n->ngossip) return;
    Tem__V1__TxBatch tb = TEM__V1__TX_BATCH__INIT;
    ProtobufCBinaryData *items = tem_calloc(n->ngossip, sizeof *items);
    if (items) {
        uint32_t k = 0;
        for (uint32_t i = 0; i < n->ngossip; i++) {
            const uint8_t *b;
            size_t l;
            if (node_mempool_get(n->mp, n->gossip[i], &b, &l)) items[k++] = (ProtobufCBinaryData){l, (uint8_t *)b};
        }
        tb.n_txs = k;
        tb.txs = items;
        Tem__V1__NodeMessage m;
        tem__v1__node_message__init(&m);
        m.kind_case = TEM__V1__NODE_MESSAGE__KIND_TXS;
        m.txs = &tb;
        if (k) (void)send_node_msg(n, PBFT_TO_ALL, &m);
        tem_free(items);
    }
    n->ngossip = 0;
}

/* Re-sends the txs this node holds that could go into the next block. Gossip is best effort
 * (a peer may be down or restarting when a tx arrives, and recovered txs were never gossiped),
 * and only the primary proposes: without this a tx accepted here could wait forever. Receivers
 * drop what they already hold. */
static void regossip(node *n) {
    enum { REGOSSIP_MAX = 512 };
    const uint8_t *txs[REGOSSIP_MAX];
    size_t lens[REGOSSIP_MAX];
    uint32_t cnt = 0;
    if (node_mempool_select(n->mp, ledger_store_state(n->store), REGOSSIP_MAX, txs, lens, &cnt) != 0 || cnt == 0) return;
    ProtobufCBinaryData items[REGOSSIP_MAX];
    for (uint32_t i = 0; i < cnt; i++) items[i] = (ProtobufCBinaryData){lens[i], (uint8_t *)txs[i]};
    Tem__V1__TxBatch tb = TEM__V1__TX_BATCH__INIT;
    tb.n_txs = cnt;
    tb.txs = items;
    Tem__V1__NodeMessage m;
    tem__v1__node_message__init(&m);
    m.kind_case = TEM__V1__NODE_MESSAGE__KIND_TXS;
    m.txs = &tb;
    (void)send_node_msg(n, PBFT_TO_ALL, &m);
}

static void on_tick(uv_timer_t *t) {
    node *n = t->data;
    if (n->stopping) return;
    flush_gossip(n);
    uint64_t now = uv_now(&n->loop);
    if (n->rep_ok && now - n->last_regossip_ms >= 1000) {
        n->last_regossip_ms = now;
        regossip(n);
    }
    /* Observers poll for new blocks; validators re-ask when a fetch got no answer. */
    if (!n->rep_ok && (n->sync_sent_ms == 0 || now - n->sync_sent_ms > 1000)) request_blocks(n, ledger_store_height(n->store) + 1);
    if (n->rep_ok && n->fetch_from && n->fetch_from > ledger_store_height(n->store) && now - n->sync_sent_ms > 500)
        request_blocks(n, ledger_store_height(n->store) + 1);
    maybe_propose(n);
}

/* ------------------------------------------------------------------ lifecycle */
static void close_cb(uv_handle_t *h) { (void)h; }

static void stop_node(node *n, int code) {
    if (n->stopping) return;
    n->stopping = true;
    if (code) n->exit_code = code;
    node_log(n, NODE_LOG_INFO, "stopping");
    uv_timer_t *timers[] = {&n->t_view, &n->t_fetch, &n->t_propose, &n->t_tick};
    for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++)
        if (!uv_is_closing((uv_handle_t *)timers[i])) uv_close((uv_handle_t *)timers[i], close_cb);
    if (!uv_is_closing((uv_handle_t *)&n->sig_int)) uv_close((uv_handle_t *)&n->sig_int, close_cb);
    if (!uv_is_closing((uv_handle_t *)&n->sig_term)) uv_close((uv_handle_t *)&n->sig_term, close_cb);
    if (n->net) net_close(n->net);
    if (n->http) net_http_close(n->http);
    if (n->mp) node_mempool_close(n->mp);
}

static void on_signal(uv_signal_t *s, int sig) {
    node *n = s->data;
    node_log(n, NODE_LOG_INFO, "signal %d", sig);
    stop_node(n, 0);
}

static int start_consensus(node *n) {
    pbft_config pc;
    memset(&pc, 0, sizeof pc);
    if (pbft_config_from_genesis(&pc, &n->g) != PBFT_OK) return NODE_ECONSENSUS;
    pc.self = (uint32_t)n->self;
    memcpy(pc.secret, n->key.ed_sec, sizeof pc.secret);
    pc.view_timeout_doublings_max = 6;
    pc.hash = block_hash_cb;
    pc.ctx = n;
    pc.start_height = ledger_store_height(n->store);
    ledger_store_last_hash(n->store, pc.start_hash);
    uint8_t *cert = NULL;
    size_t cl = 0;
    if (pc.start_height > 0 && ledger_store_cert(n->store, pc.start_height, &cert, &cl) != LEDGER_OK) return NODE_ESTORE;
    pc.start_cert = cert;
    pc.start_cert_len = cl;
    int rc = pbft_replica_init(&n->rep, &pc);
    tem_free(cert);
    sodium_memzero(pc.secret, sizeof pc.secret);
    if (rc != PBFT_OK) {
        node_log(n, NODE_LOG_ERROR, "consensus init: %s", pbft_strerror(rc));
        return NODE_ECONSENSUS;
    }
    n->rep_ok = true;
    uint8_t *rec;
    size_t rl;
    if (ledger_store_meta_get(n->store, PBFT_VOTES_KEY, &rec, &rl) == LEDGER_OK) {
        rc = pbft_replica_restore(&n->rep, rec, rl);
        tem_free(rec);
        if (rc != PBFT_OK) {
            node_log(n, NODE_LOG_ERROR, "cannot restore persisted votes: %s", pbft_strerror(rc));
            return NODE_ECONSENSUS;
        }
        node_log(n, NODE_LOG_INFO, "restored persisted votes");
    }
    if (pbft_replica_start(&n->rep, n->acts) != PBFT_OK) return NODE_ECONSENSUS;
    n->stepping = true;
    do_actions(n);
    n->stepping = false;
    pump(n);
    return NODE_OK;
}

static void walk_close(uv_handle_t *h, void *arg) {
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, close_cb);
}

int node_run(const node_config *cfg) {
    node *n = tem_calloc(1, sizeof *n);
    if (!n) return 1;
    n->cfg = *cfg;
    n->self = -1;
    n->exit_code = 1;
    int rc;
    char err[512];
    n->acts = tem_calloc(1, sizeof *n->acts);
    if (!n->acts || uv_loop_init(&n->loop) != 0) {
        tem_free(n->acts);
        tem_free(n);
        return 1;
    }
    pbft_actions_init(n->acts);
    /* Every handle the node owns exists from here on, so one shutdown path closes them all. */
    uv_timer_t *timers[] = {&n->t_view, &n->t_fetch, &n->t_propose, &n->t_tick};
    for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++) {
        TEM_ASSERT(uv_timer_init(&n->loop, timers[i]) == 0);
        timers[i]->data = n;
    }
    TEM_ASSERT(uv_signal_init(&n->loop, &n->sig_int) == 0 && uv_signal_init(&n->loop, &n->sig_term) == 0);
    n->sig_int.data = n->sig_term.data = n;

    if ((rc = ledger_genesis_load(cfg->genesis, &n->g, err, sizeof err)) != LEDGER_OK) {
        node_log(n, NODE_LOG_ERROR, "genesis %s: %s", cfg->genesis, err);
        goto stop;
    }
    if (ledger_keyfile_read(cfg->key, &n->key) != LEDGER_OK || !n->key.is_validator) {
        node_log(n, NODE_LOG_ERROR, "key %s: not an Ed25519 (validator) key file", cfg->key);
        goto stop;
    }
    n->self = n->cfg.observer ? -1 : ledger_genesis_validator_index(&n->g, n->key.ed_pub);
    if (!n->cfg.observer && n->self < 0) {
        node_log(n, NODE_LOG_ERROR, "key %s is not a genesis validator (use --observer to follow the chain)", cfg->key);
        goto stop;
    }
    if (!n->cfg.block_interval_ms) n->cfg.block_interval_ms = n->g.view_timeout_ms / 4 ? n->g.view_timeout_ms / 4 : 1;
    if (n->self >= 0 && !n->cfg.listen[0]) snprintf(n->cfg.listen, sizeof n->cfg.listen, "%s", n->g.validators[n->self].address);
    if (n->self >= 0 && !n->cfg.http[0]) snprintf(n->cfg.http, sizeof n->cfg.http, "%s", n->g.validators[n->self].http);
    if (contracts_market_new(&n->mkt) != LEDGER_OK) goto stop;
    contracts_executor(n->mkt, &n->ex);
    if ((rc = ledger_store_open(cfg->data_dir, &n->g, contracts_genesis_init, NULL, &n->store)) != LEDGER_OK) {
        node_log(n, NODE_LOG_ERROR, "store %s: %s", cfg->data_dir, ledger_strerror(rc));
        goto stop;
    }
    node_log(n, NODE_LOG_INFO, "temd %s chain %s, %s %d, data %s", NODE_VERSION, n->g.chain_id,
             n->self >= 0 ? "validator" : "observer", n->self, cfg->data_dir);
    if (uv_signal_start(&n->sig_int, on_signal, SIGINT) != 0 || uv_signal_start(&n->sig_term, on_signal, SIGTERM) != 0) goto stop;

    char logpath[NODE_PATH_MAX + 32];
    snprintf(logpath, sizeof logpath, "%s/mempool.log", cfg->data_dir);
    node_mempool_config mc = {.log_path = logpath, .txs_max = cfg->mempool_txs_max, .nonce_window = cfg->mempool_nonce_window,
                              .per_signer_max = cfg->mempool_nonce_window, .genesis = &n->g};
    mc.precheck = node_mempool_precheck_signer;
    mc.precheck_ctx = n->store;
    if (node_mempool_new(&n->loop, &mc, n->store, &n->mp) != 0) {
        node_log(n, NODE_LOG_ERROR, "cannot open the mempool log %s", logpath);
        goto stop;
    }
    uint32_t recovered = 0;
    if (node_mempool_recover(n->mp, &recovered) != 0) node_log(n, NODE_LOG_WARN, "mempool recovery failed");
    else if (recovered) node_log(n, NODE_LOG_INFO, "recovered %u txs from the mempool log", recovered);

    net_config nc;
    memset(&nc, 0, sizeof nc);
    nc.genesis = &n->g;
    memcpy(nc.sec, n->key.ed_sec, sizeof nc.sec);
    nc.listen = n->self >= 0 && n->cfg.listen[0] ? n->cfg.listen : NULL;
    nc.accept_observers = cfg->accept_observers;
    nc.rate_bytes_per_s = cfg->peer_rate_bytes_per_s;
    nc.rate_msgs_per_s = cfg->peer_rate_msgs_per_s;
    nc.rate_policy = NET_LIMIT_DROP;
    nc.log_level = cfg->log_level;
    net_callbacks cb = {.peer_up = on_peer_up, .peer_down = on_peer_down, .frame = on_frame, .log = net_log_cb, .ctx = n};
    rc = net_new(&n->loop, &nc, &cb, &n->net);
    sodium_memzero(nc.sec, sizeof nc.sec);
    if (rc != NET_OK || net_start(n->net) != NET_OK) {
        node_log(n, NODE_LOG_ERROR, "cannot start the peer transport on %s", nc.listen ? nc.listen : "(dial only)");
        goto stop;
    }
    if (n->cfg.http[0] && node_api_start(n) != NODE_OK) {
        node_log(n, NODE_LOG_ERROR, "cannot start the HTTP API on %s", n->cfg.http);
        goto stop;
    }
    n->started_wall_ms = node_now_ms();
    if (uv_timer_start(&n->t_tick, on_tick, 10, 10) != 0) goto stop;
    if (n->self >= 0 && start_consensus(n) != NODE_OK) goto stop;
    n->exit_code = 0;
    goto run;
stop:
    stop_node(n, 1);
run:
    (void)uv_run(&n->loop, UV_RUN_DEFAULT);
    int status = n->exit_code;
    uv_walk(&n->loop, walk_close, NULL);
    (void)uv_run(&n->loop, UV_RUN_DEFAULT);
    if (n->net) net_free(n->net);
    if (n->http) net_http_free(n->http);
    if (n->mp) node_mempool_free(n->mp);
    drop_views(n);
    for (uint32_t i = 0; i < n->nvalq; i++) tem_free(n->valq[i].bytes);
    for (uint32_t i = 0; i < n->evq_n; i++) {
        tem_free(n->evq[(n->evq_head + i) % NODE_EVENT_QUEUE_MAX].data);
        tem_free(n->evq[(n->evq_head + i) % NODE_EVENT_QUEUE_MAX].cert);
    }
    if (n->rep_ok) pbft_replica_free(&n->rep);
    if (n->store) node_log(n, NODE_LOG_INFO, "stopped");
    ledger_store_close(n->store);
    n->store = NULL;
    contracts_market_free(n->mkt);
    ledger_genesis_free(&n->g);
    if (uv_loop_close(&n->loop) != 0) fprintf(stderr, "temd: loop still had handles at exit\n");
    pbft_actions_clear(n->acts);
    tem_free(n->acts);
    sodium_memzero(&n->key, sizeof n->key);
    tem_free(n);
    return status;
}
