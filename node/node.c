/* node.c: temd's core. One libuv loop carries everything: the peer transport, the HTTP API, the
 * mempool's durable log, timers, and the pBFT replica, whose host (consensus/host.c, with its I/O
 * in replica.c) calls this file to apply a delivered block in one LMDB transaction, build
 * proposals from the mempool, validate proposals (signatures in the thread pool) and fetch blocks
 * from peers when behind. Observers skip consensus and follow the chain by block sync, verifying
 * every certificate. */
#include "node/node_internal.h"

#include <sodium.h>
#include <stdarg.h>
#include <systemd/sd-daemon.h>
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
    unsigned long long h = n->store ? ledger_store_height(n->store) : 0;
    unsigned long long v = n->rep_ok ? pbft_replica_view(&n->rep) : 0;
    if (n->cfg.log_format == NODE_LOG_JSON) {
        /* One object per line; jansson escapes the message (peer addresses, paths). */
        char t[64];
        snprintf(t, sizeof t, "%s.%03dZ", ts, (int)(now.tv_nsec / 1000000) % 1000);
        json_t *j = json_pack("{s:s, s:s, s:I, s:I, s:s}", "ts", t, "level", names[level & 3], "height",
                              (json_int_t)h, "view", (json_int_t)v, "msg", msg);
        char *line = j ? json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
        if (line) fprintf(stderr, "%s\n", line);
        else fprintf(stderr, "{\"level\":\"ERROR\",\"msg\":\"log line lost: out of memory\"}\n");
        free(line);
        json_decref(j);
        return;
    }
    fprintf(stderr, "%s.%03ldZ %-5s h=%llu v=%llu %s\n", ts, now.tv_nsec / 1000000, names[level & 3], h, v, msg);
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

void node_send_pbft(node *n, uint32_t to, const uint8_t *msg, size_t len) {
    Tem__V1__NodeMessage m;
    tem__v1__node_message__init(&m);
    m.kind_case = TEM__V1__NODE_MESSAGE__KIND_PBFT;
    m.pbft = (ProtobufCBinaryData){len, (uint8_t *)msg};
    (void)send_node_msg(n, to, &m);
}

void node_request_blocks(node *n, uint64_t from) {
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

/* ------------------------------------------------------------------ blocks */
int node_block_hash(void *ctx, const uint8_t *blk, size_t len, uint8_t out[32]) {
    (void)ctx;
    Tem__V1__Block *b = tem__v1__block__unpack(&ledger_pb_allocator, len, blk);
    if (!b) return -1;
    int rc = b->header ? ledger_block_hash(b->header, out) : LEDGER_EBLOCK;
    tem__v1__block__free_unpacked(b, &ledger_pb_allocator);
    return rc == LEDGER_OK ? 0 : -1;
}

static bool was_validated(node *n, const uint8_t hash[32]) {
    for (uint32_t i = 0; i < NODE_VALIDATED_CACHE; i++)
        if (memcmp(n->validated[i], hash, 32) == 0) return true;
    return false;
}

/* Applies a committed block and everything that follows from it. */
void node_apply_committed(node *n, uint64_t height, const uint8_t *blk, size_t len, const uint8_t *cert,
                            size_t cert_len, const uint8_t hash[32]) {
    if (height <= ledger_store_height(n->store)) return; /* already applied (replayed delivery) */
    unsigned flags = hash && was_validated(n, hash) ? LEDGER_APPLY_SIGS_OK : 0;
    /* Decoded once here for the node's own bookkeeping; the store decodes the bytes itself. */
    Tem__V1__Block *b = tem__v1__block__unpack(&ledger_pb_allocator, len, blk);
    if (b && b->header) node_archive_trades(n, b->header->time_ms);
    ledger_apply_info info;
    int rc = ledger_store_apply(n->store, blk, len, cert, cert_len, &n->ex, flags, &info);
    if (rc != LEDGER_OK) {
        /* A certified block that does not apply means this node's state or code differs from
         * 2f+1 validators'. Running on would diverge: stop and let the operator look. */
        node_log(n, NODE_LOG_ERROR, "certified block %llu does not apply: %s; stopping",
                 (unsigned long long)height, ledger_strerror(rc));
        if (b) tem__v1__block__free_unpacked(b, &ledger_pb_allocator);
        node_stop(n, 1);
        return;
    }
    n->blocks_applied++;
    n->txs_committed += info.n_txs - info.n_refused;
    n->txs_refused += info.n_refused;
    uint64_t now = node_now_ms();
    n->last_commit_wall_ms = now;
    /* txids of the block, for the mempool and the latency histogram */
    if (b) {
        uint8_t(*ids)[32] = tem_malloc((b->n_txs ? b->n_txs : 1) * 32);
        if (ids) {
            for (size_t i = 0; i < b->n_txs; i++) {
                ledger_sha256(ids[i], b->txs[i]->body.data, b->txs[i]->body.len);
                uint64_t k = tem_get_u64le(ids[i]);
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
            if (n->mp) node_mempool_block_applied(n->mp, (const uint8_t(*)[32])ids, b->n_txs);
            node_note_curtailments(n, height, (const uint8_t(*)[32])ids, b->n_txs);
            tem_free(ids);
        }
        tem__v1__block__free_unpacked(b, &ledger_pb_allocator);
    }
    node_events_committed(n, height);
    char hh[17];
    tem_hex(hh, info.block_hash, 8);
    node_log(n, NODE_LOG_INFO, "committed block %llu txs=%u refused=%u hash=%s", (unsigned long long)height, info.n_txs,
             info.n_refused, hh);
}

/* ------------------------------------------------------------------ proposals */
static void on_propose(uv_timer_t *t) {
    node *n = t->data;
    n->propose_armed = false;
    uint64_t h = n->want_proposal;
    if (!h || h != ledger_store_height(n->store) + 1 || n->stopping) return;
    n->want_proposal = 0;
    uint32_t max = n->g.max_block_txs, cnt = 0;
    const uint8_t **txs = tem_calloc(max, sizeof *txs);
    size_t *lens = tem_calloc(max, sizeof *lens);
    if (!txs || !lens) goto out;
    if (node_mempool_select(n->mp, ledger_store_state(n->store), max, txs, lens, &cnt) != 0) cnt = 0;
    uint64_t now = node_now_ms(), last = ledger_store_last_time(n->store);
    uint64_t tms = now > last ? now : last + 1;
    uint8_t *blk;
    size_t blen;
    int rc = ledger_block_build(n->store, (const uint8_t *const *)txs, lens, cnt, tms, n->key.ed_pub, &blk, &blen);
    if (rc != LEDGER_OK) {
        node_log(n, NODE_LOG_WARN, "cannot build block %llu: %s", (unsigned long long)h, ledger_strerror(rc));
        goto out;
    }
    node_log(n, NODE_LOG_DEBUG, "proposing block %llu with %u txs", (unsigned long long)h, cnt);
    pbft_event ev = {.kind = PBFT_EV_PROPOSAL, .height = h, .data = blk, .len = blen};
    node_replica_post(n, &ev);
    tem_free(blk);
out:
    tem_free(txs);
    tem_free(lens);
}

/* Arms the proposal timer: soon when txs are waiting, after the idle interval otherwise, so
 * block time (which drives gate closure and settlement) keeps moving on an idle chain. */
void node_maybe_propose(node *n) {
    if (!n->want_proposal || n->want_proposal != ledger_store_height(n->store) + 1) return;
    uint64_t delay = node_mempool_size(n->mp) > 0 ? n->cfg.batch_delay_ms : n->cfg.block_interval_ms;
    if (n->propose_armed) {
        uint64_t due = uv_timer_get_due_in(&n->t_propose);
        if (due <= delay) return;
    }
    n->propose_armed = true;
    if (uv_timer_start(&n->t_propose, on_propose, delay, 0) != 0) n->propose_armed = false;
}

/* ------------------------------------------------------------------ validation */
typedef struct {
    uv_work_t w;
    node *n;
    ledger_tx *txs;
    size_t lo, hi;
    int rc;
    struct val_job *job;
} val_part;

typedef struct val_job {
    node *n;
    uint64_t height;
    uint8_t hash[32];
    ledger_tx *txs;
    size_t ntx;
    uint8_t *known; /* per tx: already verified by this node's mempool */
    int parts_left;
    int rc;
    val_part parts[2];
} val_job;

static void val_work(uv_work_t *w) {
    val_part *p = w->data;
    p->rc = LEDGER_OK;
    for (size_t i = p->lo; i < p->hi; i++) {
        if (p->job->known[i]) continue; /* verified when our mempool admitted it */
        int rc = ledger_tx_verify(&p->txs[i]);
        if (rc != LEDGER_OK) {
            p->rc = rc;
            return;
        }
    }
}

static void val_finish(node *n, val_job *j) {
    n->validating = false;
    if (j->rc == LEDGER_OK) {
        memcpy(n->validated[n->validated_next], j->hash, 32);
        n->validated_next = (n->validated_next + 1) % NODE_VALIDATED_CACHE;
    } else {
        node_log(n, NODE_LOG_WARN, "proposal %llu is invalid: %s", (unsigned long long)j->height, ledger_strerror(j->rc));
    }
    pbft_event ev = {.kind = PBFT_EV_VALIDATED, .height = j->height, .ok = j->rc == LEDGER_OK};
    memcpy(ev.block_hash, j->hash, 32);
    for (size_t i = 0; i < j->ntx; i++) ledger_tx_free(&j->txs[i]);
    tem_free(j->txs);
    tem_free(j->known);
    tem_free(j);
    if (!n->stopping) node_replica_validated(n, &ev);
}

static void val_after(uv_work_t *w, int status) {
    val_part *p = w->data;
    val_job *j = p->job;
    if (status != 0) p->rc = LEDGER_EIO;
    if (p->rc != LEDGER_OK && j->rc == LEDGER_OK) j->rc = p->rc;
    if (--j->parts_left == 0) val_finish(j->n, j);
}

/* Starts validating a proposal whose parent is applied: the host hands them out one at a time
 * and gets the answer through node_replica_validated. PBFT_OK, or PBFT_ENOMEM (the host keeps the
 * request and offers it again). */
int node_validate(node *n, uint64_t height, const uint8_t hash[32], const uint8_t *bytes, size_t len) {
    TEM_ASSERT(!n->validating);
    val_job *j = tem_calloc(1, sizeof *j);
    if (!j) return PBFT_ENOMEM;
    j->n = n;
    j->height = height;
    memcpy(j->hash, hash, 32);
    int rc = ledger_block_precheck(n->store, bytes, len, node_now_ms() + n->cfg.max_clock_drift_ms, &j->txs, &j->ntx);
    n->validating = true;
    if (rc != LEDGER_OK) {
        j->rc = rc;
        j->txs = NULL;
        j->ntx = 0;
        val_finish(n, j);
        return PBFT_OK;
    }
    /* A tx whose (txid, signature) pair our mempool verified on admission needs no second
     * check: that would double every validator's signature work. The signature is part of the
     * key because the txid covers only the body. */
    j->known = tem_calloc(j->ntx ? j->ntx : 1, 1);
    if (j->known)
        for (size_t i = 0; i < j->ntx; i++) j->known[i] = node_sigcache_has(n, j->txs[i].txid, j->txs[i].stx->sig.data);
    else {
        j->rc = LEDGER_ENOMEM;
        val_finish(n, j);
        return PBFT_OK;
    }
    /* Two halves, one per core: the loop thread never verifies a signature. */
    size_t half = j->ntx / 2;
    j->parts_left = 2;
    for (int i = 0; i < 2; i++) {
        val_part *p = &j->parts[i];
        p->n = n;
        p->job = j;
        p->txs = j->txs;
        p->lo = i == 0 ? 0 : half;
        p->hi = i == 0 ? half : j->ntx;
        p->w.data = p;
        if (uv_queue_work(&n->loop, &p->w, val_work, val_after) != 0) {
            p->rc = LEDGER_EIO;
            val_after(&p->w, 0);
        }
    }
    return PBFT_OK;
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
            node_replica_post(n, &ev);
        } else {
            /* Observer: the store verifies the certificate against the genesis validators. */
            uint8_t h[32];
            if (node_block_hash(NULL, cb->block.data, cb->block.len, h) != 0) {
                node_log(n, NODE_LOG_WARN, "sync: peer sent a malformed block %llu", (unsigned long long)cb->height);
                return;
            }
            node_apply_committed(n, cb->height, cb->block.data, cb->block.len, cb->cert.data, cb->cert.len, NULL);
        }
    }
    n->sync_sent_ms = 0;
    if (!n->rep_ok && bb->tip_height > ledger_store_height(n->store)) node_request_blocks(n, ledger_store_height(n->store) + 1);
}

/* ------------------------------------------------------------------ verified-signature cache
 * Direct-mapped: a collision only evicts, and an evicted pair is simply verified again. */
static void sigcache_key(const uint8_t txid[32], const uint8_t sig[64], uint8_t out[32]) {
    const void *parts[2] = {txid, sig};
    size_t lens[2] = {32, 64};
    ledger_sha256_parts(out, 2, parts, lens);
}

void node_sigcache_add_tx(node *n, const uint8_t *tx, size_t len) {
    Tem__V1__SignedTx *s = tem__v1__signed_tx__unpack(&ledger_pb_allocator, len, tx);
    if (!s) return;
    if (s->sig.len == 64) {
        uint8_t txid[32], k[32];
        ledger_sha256(txid, s->body.data, s->body.len);
        sigcache_key(txid, s->sig.data, k);
        memcpy(n->sigcache[tem_get_u32le(k) % NODE_SIGCACHE], k, 32);
    }
    tem__v1__signed_tx__free_unpacked(s, &ledger_pb_allocator);
}

bool node_sigcache_has(node *n, const uint8_t txid[32], const uint8_t sig[64]) {
    uint8_t k[32];
    sigcache_key(txid, sig, k);
    return memcmp(n->sigcache[tem_get_u32le(k) % NODE_SIGCACHE], k, 32) == 0;
}

typedef struct {
    node *n;
    size_t len;
    uint8_t tx[];
} gossip_ctx;

static void gossip_done(void *ctx, int rc, const uint8_t txid[32]) {
    gossip_ctx *g = ctx;
    (void)txid;
    if (rc == 0 && !g->n->stopping) node_sigcache_add_tx(g->n, g->tx, g->len);
    tem_free(g);
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
            node_replica_post(n, &ev);
        }
        break;
    case TEM__V1__NODE_MESSAGE__KIND_TXS:
        if (n->mp && p->is_validator && m->txs)
            for (size_t i = 0; i < m->txs->n_txs; i++) {
                size_t l = m->txs->txs[i].len;
                gossip_ctx *g = tem_malloc(sizeof *g + (l ? l : 1));
                if (!g) break;
                g->n = n;
                g->len = l;
                memcpy(g->tx, m->txs->txs[i].data, l);
                /* already known or refused here too: gossip is best effort */
                if (node_mempool_submit(n->mp, g->tx, l, gossip_done, g, NULL) != 0) tem_free(g);
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
void node_tx_accepted(node *n, const uint8_t txid[32], const uint8_t *tx, size_t len) {
    node_sigcache_add_tx(n, tx, len);
    uint64_t k = tem_get_u64le(txid);
    uint32_t slot = (uint32_t)(k % NODE_LATENCY_TABLE);
    n->lat_key[slot] = k;
    n->lat_ms[slot] = node_now_ms();
    if (n->ngossip < NODE_GOSSIP_TXS_MAX) {
        uint8_t *c = tem_malloc(len ? len : 1);
        if (c) {
            memcpy(c, tx, len);
            n->gossip[n->ngossip] = c;
            n->gossip_len[n->ngossip++] = len;
        }
    }
    node_maybe_propose(n);
}

static void flush_gossip(node *n) {
    if (!n->ngossip) return;
    Tem__V1__TxBatch tb = TEM__V1__TX_BATCH__INIT;
    ProtobufCBinaryData *items = tem_calloc(n->ngossip, sizeof *items);
    if (items) {
        for (uint32_t i = 0; i < n->ngossip; i++) items[i] = (ProtobufCBinaryData){n->gossip_len[i], n->gossip[i]};
        tb.n_txs = n->ngossip;
        tb.txs = items;
        Tem__V1__NodeMessage m;
    tem__v1__node_message__init(&m);
        m.kind_case = TEM__V1__NODE_MESSAGE__KIND_TXS;
        m.txs = &tb;
        (void)send_node_msg(n, PBFT_TO_ALL, &m);
        tem_free(items);
    }
    for (uint32_t i = 0; i < n->ngossip; i++) tem_free(n->gossip[i]);
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
    if (!n->rep_ok && (n->sync_sent_ms == 0 || now - n->sync_sent_ms > 1000)) node_request_blocks(n, ledger_store_height(n->store) + 1);
    if (n->rep_ok && n->fetch_from && n->fetch_from > ledger_store_height(n->store) && now - n->sync_sent_ms > 500)
        node_request_blocks(n, ledger_store_height(n->store) + 1);
    node_maybe_propose(n);
}

/* ------------------------------------------------------------------ lifecycle */
static void close_cb(uv_handle_t *h) { (void)h; }

void node_stop(node *n, int code) {
    if (n->stopping) return;
    n->stopping = true;
    if (code) n->exit_code = code;
    node_log(n, NODE_LOG_INFO, "stopping");
    /* systemd (Type=notify) learns the stop is ours, not a crash; a no-op outside systemd. */
    (void)sd_notify(0, "STOPPING=1");
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
    node_stop(n, 0);
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
    if (uv_loop_init(&n->loop) != 0) {
        tem_free(n);
        return 1;
    }
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
    char gh[65];
    tem_hex(gh, n->g.hash, 32);
    node_log(n, NODE_LOG_INFO, "temd %s config %s chain %s genesis %s, %s %d, data %s", NODE_VERSION,
             cfg->config[0] ? cfg->config : "(flags)", n->g.chain_id, gh, n->self >= 0 ? "validator" : "observer",
             n->self, cfg->data_dir);
    if (uv_signal_start(&n->sig_int, on_signal, SIGINT) != 0 || uv_signal_start(&n->sig_term, on_signal, SIGTERM) != 0) goto stop;

    char logpath[NODE_PATH_MAX + 32];
    snprintf(logpath, sizeof logpath, "%s/mempool.log", cfg->data_dir);
    node_mempool_config mc = {.log_path = logpath, .txs_max = cfg->mempool_txs_max, .nonce_window = cfg->mempool_nonce_window,
                              .per_signer_max = cfg->mempool_nonce_window, .genesis = &n->g};
    mc.precheck = node_api_precheck;
    mc.precheck_ctx = n;
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
    if (n->self >= 0 && node_replica_start(n) != NODE_OK) goto stop;
    n->exit_code = 0;
    /* Ready: the store is open, both ports listen and consensus has started. systemd's
     * Type=notify start (deploy/temd.service) waits for this; outside systemd it does nothing. */
    (void)sd_notifyf(0, "READY=1\nSTATUS=%s %d of chain %s at height %llu", n->self >= 0 ? "validator" : "observer",
                     n->self, n->g.chain_id, (unsigned long long)ledger_store_height(n->store));
    goto run;
stop:
    node_stop(n, 1);
run:
    (void)uv_run(&n->loop, UV_RUN_DEFAULT);
    int status = n->exit_code;
    uv_walk(&n->loop, walk_close, NULL);
    (void)uv_run(&n->loop, UV_RUN_DEFAULT);
    if (n->net) net_free(n->net);
    node_events_stop(n);
    if (n->http) net_http_free(n->http);
    if (n->mp) node_mempool_free(n->mp);
    for (uint32_t i = 0; i < n->ngossip; i++) tem_free(n->gossip[i]);
    node_replica_free(n);
    if (n->store) node_log(n, NODE_LOG_INFO, "stopped");
    ledger_store_close(n->store);
    n->store = NULL;
    contracts_market_free(n->mkt);
    ledger_genesis_free(&n->g);
    if (uv_loop_close(&n->loop) != 0) fprintf(stderr, "temd: loop still had handles at exit\n");
    sodium_memzero(&n->key, sizeof n->key);
    tem_free(n);
    return status;
}
