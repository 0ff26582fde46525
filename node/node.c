/* node.c: temd's core. One libuv loop carries everything: the peer transport, the HTTP API, the
 * mempool's durable log, timers, and the pBFT replica, whose host (consensus/host.c, with its I/O
 * in replica.c) calls this file to apply a delivered block in one LMDB transaction, build
 * proposals from the mempool, validate proposals (signatures in the thread pool) and fetch blocks
 * from peers when behind. Observers skip consensus and follow the chain by block sync, verifying
 * every certificate. */
#include "node/node_internal.h"

#include "node/indexer.h"
#include "node/sync.h"

#include <errno.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <systemd/sd-daemon.h>
#include <errno.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

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

/* Asks validator p for the blocks from `from` on; NET_OK when the request went out. */
static int request_blocks_from(node *n, uint32_t p, uint64_t from) {
    Tem__V1__NodeMessage m;
    tem__v1__node_message__init(&m);
    Tem__V1__BlockRequest r = TEM__V1__BLOCK_REQUEST__INIT;
    r.from_height = from;
    r.max_blocks = NODE_SYNC_BLOCKS_MAX;
    m.kind_case = TEM__V1__NODE_MESSAGE__KIND_BLOCK_REQUEST;
    m.block_request = &r;
    int rc = send_node_msg(n, p, &m);
    if (rc == NET_OK) n->sync_sent_ms = uv_now(&n->loop);
    return rc;
}

void node_request_blocks(node *n, uint64_t from) {
    uint32_t nv = n->g.n_validators;
    /* Round-robin over connected validators, so one slow or lying peer does not stall sync. */
    for (uint32_t k = 0; k < nv; k++) {
        uint32_t p = (n->sync_rr + k) % nv;
        if ((int)p == n->self || !net_peer_connected(n->net, p)) continue;
        n->sync_rr = p + 1;
        if (request_blocks_from(n, p, from) == NET_OK) return;
    }
}

/* ------------------------------------------------------------------ blocks */
int node_block_hash(void *ctx, const uint8_t *blk, size_t len, uint8_t out[32]) {
    (void)ctx;
    /* The header only: the txs are decoded once, in the block view. */
    return ledger_block_hash_bytes(blk, len, out) == LEDGER_OK ? 0 : -1;
}

bool node_is_disk_full(const node *n, int rc) {
    if (rc == LEDGER_EDISKFULL || rc == LEDGER_EFULL) return true;
    /* LMDB reports a write cut short by a full file system as EIO ("short write"), not ENOSPC:
     * an I/O error while the data dir's file system is (nearly) full is taken as a full disk. */
    if (rc != LEDGER_EIO) return false;
    struct statvfs sv;
    return statvfs(n->cfg.data_dir, &sv) == 0 && (uint64_t)sv.f_bavail * sv.f_frsize < NODE_DISK_RESUME_BYTES;
}

/* A write failed for lack of space: stop taking part (a vote or block we cannot store must
 * not be acted on), keep serving reads, and wait for space (on_tick). */
void node_enter_disk_full(node *n, const char *what, int rc) {
    if (n->disk_full) return;
    n->disk_full = true;
    n->disk_checked_ms = uv_now(&n->loop);
    node_log(n, NODE_LOG_ERROR,
             "disk full (%s): %s failed (%s); not voting, refusing txs (503 EDISKFULL), serving reads; "
             "resumes by itself once %u MiB are free",
             n->cfg.data_dir, what, ledger_strerror(rc), NODE_DISK_RESUME_BYTES >> 20);
}

/* ------------------------------------------------------------------ block views */
/* A view's ledger_tx_source over the mempool: a tx this node admitted is neither decoded nor
 * hashed again when a block brings it back, nor verified again once the pool verified it; one
 * still in the pool's verify queue is borrowed unverified (mark_known then waits for it). */
static const ledger_tx *mempool_lend(void *ctx, const uint8_t *stx, size_t len, bool *verified) {
    node *n = ctx;
    return n->mp ? node_mempool_lend(n->mp, stx, len, verified) : NULL;
}

static void mempool_unlend(void *ctx, const ledger_tx *tx) {
    node *n = ctx;
    TEM_ASSERT(n->mp); /* the pool outlives every view (node_run frees it last) */
    node_mempool_unlend(n->mp, tx);
}

static void view_source(node *n, ledger_tx_source *src) {
    src->lookup = mempool_lend;
    src->release = mempool_unlend;
    src->ctx = n;
}

/* Marks the view's txs whose (txid, signature) pair this node already verified: in the
 * signature cache, or verified by the mempool and not yet durable. Returns how many of the rest
 * the mempool will verify soon: those are waited for. With `expedite`, the ones still queued
 * there are first moved to the front of its queue: under overload the queue ahead of them
 * holds seconds of intake, and waiting behind it stretched every block to the wait's limit,
 * while checking them here as well would verify them twice. Without a mempool nothing waits. */
static size_t mark_known(node *n, ledger_block_view *v, bool expedite) {
    size_t verifying = 0, nq = 0;
    if (v->tx_rc != LEDGER_OK) return 0;
    uint8_t(*queued)[32] = expedite && n->mp ? tem_malloc((v->n ? v->n : 1) * 32) : NULL;
    for (size_t i = 0; i < v->n; i++) {
        if (v->txs[i].verified) continue;
        const uint8_t *id = v->txs[i].tx->txid, *sig = v->txs[i].tx->stx->sig.data;
        int st = n->mp ? node_mempool_sig_state(n->mp, id, sig) : NODE_MEMPOOL_SIG_UNKNOWN;
        v->txs[i].verified = st == NODE_MEMPOOL_SIG_VERIFIED || node_sigcache_has(n, id, sig);
        if (v->txs[i].verified) continue;
        if (st == NODE_MEMPOOL_SIG_VERIFYING) verifying++;
        if (st == NODE_MEMPOOL_SIG_QUEUED && queued) memcpy(queued[nq++], id, 32);
    }
    /* Out of memory: the queued ones are verified by the validation instead. */
    if (nq) verifying += node_mempool_verify_first(n->mp, (const uint8_t(*)[32])queued, nq);
    tem_free(queued);
    return verifying;
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
    ledger_tx_source src;
    view_source(n, &src);
    *rc = v ? ledger_block_view_build(&n->g, blk, len, NULL, &src, v) : LEDGER_ENOMEM;
    if (*rc != LEDGER_OK) {
        tem_free(v);
        return NULL;
    }
    (void)mark_known(n, v, false);
    return v;
}

static void apply_view(node *n, uint64_t height, ledger_block_view *v, const uint8_t *cert, size_t cert_len,
                       unsigned flags);

/* Applies a committed block and everything that follows from it, from one block view: the one
 * validation built for it, or one built here (fetched blocks, the primary's own). */
void node_apply_committed(node *n, uint64_t height, const uint8_t *blk, size_t len, const uint8_t *cert,
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
            node_stop(n, 1);
            return;
        }
    }
    apply_view(n, height, v, cert, cert_len, flags);
}

/* Frees the kept views of heights up to `height`: they may borrow mempool txs that the next
 * block_applied releases. Views of later heights (validated while this block's commit ran)
 * borrow none of this block's txs, nor txs its nonces make stale, or they would not have
 * passed the precheck against the state after it. */
static void drop_views_upto(node *n, uint64_t height) {
    for (uint32_t i = 0; i < NODE_VALIDATED_CACHE; i++) {
        ledger_block_view *v = n->views[i];
        if (!v || (v->header && v->header->height > height)) continue;
        view_drop(v);
        n->views[i] = NULL;
    }
}

static void apply_failed(node *n, uint64_t height, int rc) {
    if (node_is_disk_full(n, rc)) {
        char what[64];
        snprintf(what, sizeof what, "storing block %llu", (unsigned long long)height);
        node_enter_disk_full(n, what, rc);
        return;
    }
    /* A certified block that does not apply means this node's state or code differs from
     * 2f+1 validators'. Running on would diverge: stop and let the operator look. */
    node_log(n, NODE_LOG_ERROR, "certified block %llu does not apply: %s; stopping", (unsigned long long)height,
             ledger_strerror(rc));
    node_stop(n, 1);
}

/* Whether block h's commit may overlap the next height. Not at a pBFT checkpoint height: a
 * stable checkpoint lets every replica drop the votes and prepared certificate of h, so h must
 * be on disk before this node announces it (consensus/pbft.c keeps the last delivered height in
 * the vote record only until the next one is delivered). */
static bool may_pipeline(const node *n, uint64_t height) {
    if (!n->cfg.pipeline_commit) return false;
    if (n->g.checkpoint_interval && height % n->g.checkpoint_interval == 0) return false;
    return true;
}

static void on_commit_async(uv_async_t *a) { (void)node_commit_done(a->data); }
static void commit_notify(void *ctx) {
    node *n = ctx;
    atomic_store(&n->commit_end_ns, uv_hrtime());
    (void)uv_async_send(&n->a_commit);
}

/* Applies v (consumed) and does the node's bookkeeping from it once it is durable. */
static void apply_view(node *n, uint64_t height, ledger_block_view *v, const uint8_t *cert, size_t cert_len,
                       unsigned flags) {
    /* The block before first: its commit may still be running, and its bookkeeping (the mempool
     * letting its txs go, events, the snapshot) must happen before this one executes. */
    if (!node_commit_done(n)) {
        view_drop(v);
        return;
    }
    if (v->header) {
        uint64_t slot = 0;
        if (node_archive_trades(&n->archive, n->store, v->header->time_ms, &slot) > 0)
            node_log(n, NODE_LOG_WARN, "cannot archive the trades of slot %llu", (unsigned long long)slot);
    }
    /* A block no validation saw (fetched while catching up, or followed as an observer): its
     * signatures are checked on every core, not one after the other on the loop thread. */
    if (!(flags & LEDGER_APPLY_SIGS_OK)) {
        static long cores;
        if (!cores) cores = sysconf(_SC_NPROCESSORS_ONLN) > 0 ? sysconf(_SC_NPROCESSORS_ONLN) : 1;
        ledger_block_view_verify(v, (unsigned)cores);
        /* Gossiped copies of these txs may still arrive before the block is durable (when the
         * committed-signature table learns them): the mempool then finds them verified. */
        for (size_t i = 0; i < v->n; i++)
            if (v->txs[i].verified) node_sigcache_add(n, v->txs[i].tx->txid, v->txs[i].tx->stx->sig.data);
    }
    ledger_apply_info info;
    uint64_t t0 = uv_hrtime();
    int rc = may_pipeline(n, height) ? ledger_store_apply_view_pipelined(n->store, v, cert, cert_len, &n->ex, flags, &info)
                                     : ledger_store_apply_view(n->store, v, cert, cert_len, &n->ex, flags, &info);
    if (rc != LEDGER_OK) {
        view_drop(v);
        apply_failed(n, height, rc);
        return;
    }
    n->pend_active = true;
    n->pend_height = height;
    n->pend_v = v;
    n->pend_info = info;
    n->pend_t0_ns = t0;
    n->pend_exec_end_ns = uv_hrtime();
    if (!ledger_store_commit_pending(n->store)) (void)node_commit_done(n);
}

bool node_commit_done(node *n) {
    if (!n->pend_active) return true;
    int rc = ledger_store_commit_wait(n->store);
    ledger_block_view *v = n->pend_v;
    uint64_t height = n->pend_height;
    ledger_apply_info info = n->pend_info;
    n->pend_active = false;
    n->pend_v = NULL;
    if (rc != LEDGER_OK) {
        view_drop(v);
        apply_failed(n, height, rc);
        return false;
    }
    /* A block's cost is its execution and its commit: the commit overlaps the next height's
     * consensus, but the next block's execution waits for it, so under a standing queue it
     * bounds the block rate as much as the execution does (proposal_txs_max). Measured
     * without the commit, blocks grew to 1,024 txs whose commits took seconds on a busy disk,
     * and the primary fell behind into view changes. */
    uint64_t end = atomic_load(&n->commit_end_ns);
    if (end < n->pend_exec_end_ns) end = uv_hrtime(); /* committed inside the apply */
    if (info.n_txs >= 32) {
        uint64_t per = (end - n->pend_t0_ns) / info.n_txs;
        n->apply_ns_per_tx = n->apply_ns_per_tx ? (n->apply_ns_per_tx * 7 + per) / 8 : per;
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
    node_feeder_note_block(n, height, v);
    for (size_t i = 0; i < v->n; i++)
        if (v->txs[i].tx) memcpy(n->committed_sig[tem_get_u32le(v->txs[i].tx->stx->sig.data) % NODE_SIGCACHE], v->txs[i].tx->stx->sig.data, 64);
    for (size_t i = 0; i < v->n; i++)
        if (v->txs[i].tx && v->txs[i].tx->body->kind_case == TEM__V1__TX_BODY__KIND_ORDER) n->orders_committed++;
    /* Events are built from this view, so before it goes and before the mempool lets go of
     * the txs it may borrow; the whole of this function runs before the loop moves on, so
     * publishing them here rather than after the consensus bookkeeping delays nothing. */
    node_events_committed(n, height, v);
    /* Every view that may borrow this block's txs goes before the mempool lets them go. */
    uint8_t(*ids)[32] = v->txids;
    size_t nids = v->n;
    v->txids = NULL;
    view_drop(v);
    drop_views_upto(n, height);
    if (n->mp) {
        node_mempool_block_applied(n->mp, (const uint8_t(*)[32])ids, nids);
        /* What a proposal could have taken: txs still being verified here were not yet on
         * offer, so a block that left only those behind took what it was offered. */
        node_admission_block(&n->adm, uv_now(&n->loop), (uint32_t)nids, node_mempool_verified(n->mp));
    }
    tem_free(ids);
    if (n->rep_ok) pbft_replica_durable(&n->rep, height);
    node_sync_block_applied(n, height);
    char hh[17];
    tem_hex(hh, info.block_hash, 8);
    /* exec: checks, contracts, puts and root on the writer thread; commit: LMDB's page writes and
     * fsyncs, overlapped with the next height unless this block was committed in place. */
    node_log(n, NODE_LOG_INFO, "committed block %llu txs=%u refused=%u hash=%s exec_ms=%.1f commit_ms=%.1f",
             (unsigned long long)height, info.n_txs, info.n_refused, hh, (double)(n->pend_exec_end_ns - n->pend_t0_ns) / 1e6,
             (double)(end - n->pend_exec_end_ns) / 1e6);
    return true;
}

/* ------------------------------------------------------------------ proposals */
/* The latency budget: as many txs as this node applies in NODE_PROPOSAL_APPLY_MS. A bigger block
 * would hold every tx in it, and the next height, back for longer than that. */
static uint32_t proposal_txs_max(const node *n) {
    uint32_t max = n->g.max_block_txs;
    if (n->apply_ns_per_tx) {
        uint64_t fit = (uint64_t)NODE_PROPOSAL_APPLY_MS * 1000000u / n->apply_ns_per_tx;
        if (fit < NODE_PROPOSAL_TXS_MIN) fit = NODE_PROPOSAL_TXS_MIN;
        /* Under a standing queue: bigger blocks, but only as many txs as apply within a
         * bounded time, or one block's apply (the loop is busy meanwhile) could outlast the
         * view timer at every replica and turn overload into view changes. */
        if (n->mp && node_admission_contended(&n->adm, node_mempool_size(n->mp))) {
            uint64_t busy = (uint64_t)NODE_PROPOSAL_APPLY_BUSY_MS * 1000000u / n->apply_ns_per_tx;
            if (busy > NODE_PROPOSAL_TXS_BUSY) busy = NODE_PROPOSAL_TXS_BUSY;
            if (busy > fit) fit = busy;
        }
        if (fit < max) max = (uint32_t)fit;
    }
    return max;
}

static void on_propose(uv_timer_t *t) {
    node *n = t->data;
    n->propose_armed = false;
    uint64_t h = n->want_proposal;
    if (!h || h != ledger_store_height(n->store) + 1 || n->stopping || n->disk_full) return;
    n->want_proposal = 0;
    uint32_t max = proposal_txs_max(n), cnt = 0;
    const ledger_tx **txs = tem_calloc(max ? max : 1, sizeof *txs);
    if (!txs) goto out;
    if (node_mempool_select_txs(n->mp, ledger_store_state(n->store), max, txs, &cnt) != 0) cnt = 0;
    /* The byte budget: a prefix of the selection keeps every signer's nonces in order. */
    size_t bytes = 0;
    for (uint32_t k = 0; k < cnt; k++) {
        size_t b = txs[k]->stx->body.len + txs[k]->stx->sig.len + 8;
        if (k > 0 && bytes + b > NODE_PROPOSAL_BYTES_MAX) {
            cnt = k;
            break;
        }
        bytes += b;
    }
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
    node_replica_post(n, &ev);
    tem_free(blk);
out:
    tem_free(txs);
}

/* Arms the proposal timer: soon when txs are waiting, after the idle interval otherwise, so
 * block time (which drives gate closure and settlement) keeps moving on an idle chain. */
void node_maybe_propose(node *n) {
    if (!n->want_proposal || n->want_proposal != ledger_store_height(n->store) + 1) return;
    /* Batching where it pays: with a full block waiting, waiting longer gathers nothing. */
    uint32_t held = node_mempool_size(n->mp);
    uint64_t delay = held >= proposal_txs_max(n) ? 0 : held > 0 ? n->cfg.batch_delay_ms : n->cfg.block_interval_ms;
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
    size_t lo, hi;
    int rc;
    struct val_job *job;
} val_part;

typedef struct val_job {
    node *n;
    uint64_t t_start, t_dispatch; /* uv_now at the start and when its own checks began */
    uint32_t own;                 /* signatures it verified itself */
    uint64_t height;
    uint8_t hash[32];
    ledger_block_view *view; /* owned until val_finish keeps or frees it */
    int parts_left;
    int rc;
    val_part parts[2];
} val_job;

/* Thread pool: verifies the view's txs not yet known good (own or borrowed: a borrowed tx stays
 * unchanged until the view gives it back, node_mempool_lend). */
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
    size_t ntx = j->view ? j->view->n : 0;
    n->validating = false;
    n->val_epoch++; /* its signatures are no longer in flight */
    if (j->rc == LEDGER_OK) {
        /* Every signature of the proposal is good now: the mempool need not check them again
         * when their gossiped copies arrive (node_mempool_config.sig_known). */
        for (size_t i = 0; j->view && i < j->view->n; i++)
            if (!j->view->txs[i].verified) node_sigcache_add(n, j->view->txs[i].tx->txid, j->view->txs[i].tx->stx->sig.data);
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
    if (j->t_dispatch) {
        uint64_t now = uv_now(&n->loop);
        node_log(n, NODE_LOG_DEBUG, "validated proposal %llu: txs=%zu own_checks=%u waited_ms=%llu checked_ms=%llu",
                 (unsigned long long)j->height, ntx, j->own,
                 (unsigned long long)(j->t_dispatch - j->t_start), (unsigned long long)(now - j->t_dispatch));
    }
    pbft_event ev = {.kind = PBFT_EV_VALIDATED, .height = j->height, .ok = j->rc == LEDGER_OK};
    memcpy(ev.block_hash, j->hash, 32);
    if (j->view) view_drop(j->view);
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

static void on_val_wait(uv_timer_t *t);
static void val_dispatch(node *n, val_job *j);

/* Starts validating a proposal whose parent is applied: builds the proposal's block view (kept
 * for its apply), prechecks it on the loop thread and verifies the unknown signatures in the
 * thread pool. The host hands proposals out one at a time and gets the answer through
 * node_replica_validated. PBFT_OK, or PBFT_ENOMEM (the host keeps the request and offers it
 * again). bytes are borrowed for the call: the view keeps its own copy. */
int node_validate(node *n, uint64_t height, const uint8_t hash[32], const uint8_t *bytes, size_t len) {
    TEM_ASSERT(!n->validating);
    val_job *j = tem_calloc(1, sizeof *j);
    uint8_t *copy = tem_malloc(len ? len : 1);
    if (j) j->view = tem_calloc(1, sizeof *j->view);
    if (!j || !j->view || !copy) {
        if (j) tem_free(j->view);
        tem_free(j);
        tem_free(copy);
        return PBFT_ENOMEM;
    }
    memcpy(copy, bytes, len);
    struct {
        uint8_t *bytes;
        size_t len;
    } v = {copy, len};
    j->n = n;
    j->height = height;
    j->t_start = uv_now(&n->loop);
    memcpy(j->hash, hash, 32);
    n->validating = true;
    /* The view takes the proposal's buffer. */
    ledger_tx_source src;
    view_source(n, &src);
    int rc = ledger_block_view_build(&n->g, v.bytes, v.len, v.bytes, &src, j->view);
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
        return PBFT_OK;
    }
    /* A tx whose (txid, signature) pair this node verified on admission needs no second check:
     * that would double every validator's signature work. The signature is part of the key
     * because the txid covers only the body. A tx the mempool is verifying right now (its
     * gossiped copy came just before the proposal) is waited for, not verified twice. */
    uint64_t wait = n->g.view_timeout_ms / 4 > NODE_VAL_WAIT_MS ? n->g.view_timeout_ms / 4 : NODE_VAL_WAIT_MS;
    if (mark_known(n, j->view, true) > 0) {
        n->val_waiting = j;
        if (uv_timer_start(&n->t_valwait, on_val_wait, wait, 0) == 0) return PBFT_OK;
        n->val_waiting = NULL;
    }
    val_dispatch(n, j);
    return PBFT_OK;
}

/* The waiting validation looks again whenever one of the mempool's verify work items ends
 * (node_mempool_config.verified), the only event that settles a signature it waits for, and
 * not every millisecond: each look is a pass over the whole proposal on the loop thread. Past
 * the limit (the timer: a quarter of the view timeout, at least NODE_VAL_WAIT_MS) it verifies
 * the rest itself. */
static void val_wait_check(node *n, bool expired) {
    val_job *j = n->val_waiting;
    if (!j || n->stopping) return;
    if (!expired && mark_known(n, j->view, true) > 0) return;
    (void)uv_timer_stop(&n->t_valwait);
    n->val_waiting = NULL;
    if (expired) (void)mark_known(n, j->view, false);
    val_dispatch(n, j);
}

static void on_val_wait(uv_timer_t *t) { val_wait_check(t->data, true); }
static void mempool_verified(void *ctx) { val_wait_check(ctx, false); }

/* Verifies the view's txs not yet known good in the thread pool, in two halves (one per core:
 * the loop thread never verifies a signature), and answers the host when both are done. */
static void val_dispatch(node *n, val_job *j) {
    size_t ntx = j->view->n, half = ntx / 2;
    j->t_dispatch = uv_now(&n->loop);
    for (size_t i = 0; j->view->tx_rc == LEDGER_OK && i < ntx; i++) {
        if (j->view->txs[i].verified) continue;
        j->own++;
        const uint8_t *sig = j->view->txs[i].tx->stx->sig.data;
        uint32_t k = tem_get_u32le(sig) % NODE_VAL_SIGS;
        memcpy(n->val_sig[k], sig, 64);
        n->val_sig_epoch[k] = n->val_epoch;
    }
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
static void serve_blocks(node *n, uint32_t peer_id, uint64_t from, uint32_t max_blocks, size_t bytes_max) {
    uint64_t tip = ledger_store_durable_height(n->store); /* what LMDB holds */
    uint32_t max = max_blocks && max_blocks < NODE_SYNC_BLOCKS_MAX ? max_blocks : NODE_SYNC_BLOCKS_MAX;
    Tem__V1__CommittedBlock cbs[NODE_SYNC_BLOCKS_MAX], *cbp[NODE_SYNC_BLOCKS_MAX];
    uint8_t *bufs[2 * NODE_SYNC_BLOCKS_MAX];
    uint32_t k = 0, nb = 0;
    size_t bytes = 0;
    for (uint64_t h = from ? from : 1; h <= tip && k < max && bytes < bytes_max; h++) {
        uint8_t *b, *c;
        size_t bl, cl;
        if (node_tail_is_bad(n, h)) break; /* damaged, being refetched: never served */
        int brc = ledger_store_block(n->store, h, &b, &bl);
        if (brc == LEDGER_ECORRUPT) (void)node_tail_read_failed(n, h);
        if (brc != LEDGER_OK) break;
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
    (void)send_node_msg(n, peer_id, &m);
    for (uint32_t i = 0; i < nb; i++) tem_free(bufs[i]);
}

/* An observer's block request: charged to its bucket and parked; on_tick serves it. */
static void park_observer_request(node *n, const net_peer_info *p, const Tem__V1__BlockRequest *r) {
    uint32_t slot = p->id - NET_OBSERVER_ID_BASE;
    if (p->id < NET_OBSERVER_ID_BASE || slot >= NET_OBSERVERS_MAX) return;
    node_obs_req *o = &n->obs_req[slot];
    uint64_t now = uv_now(&n->loop), cap = (uint64_t)NODE_OBS_REQS_PER_S * 1000;
    if (o->last_ms == 0 || now < o->last_ms) o->tokens_m = cap;
    else o->tokens_m += (now - o->last_ms) * NODE_OBS_REQS_PER_S;
    if (o->tokens_m > cap) o->tokens_m = cap;
    o->last_ms = now;
    if (o->tokens_m < 1000) {
        if (n->obs_reqs_dropped++ % 1000 == 0)
            node_log(n, NODE_LOG_WARN, "observer %u (%s) asks for blocks too often; dropping requests (%llu so far)", slot,
                     p->remote, (unsigned long long)n->obs_reqs_dropped);
        return;
    }
    o->tokens_m -= 1000;
    o->want = true;
    o->from = r->from_height;
    o->max = r->max_blocks;
}

static void serve_observers(node *n) {
    uint32_t served = 0;
    for (uint32_t k = 0; k < NET_OBSERVERS_MAX && served < NODE_OBS_SERVES_PER_TICK; k++) {
        uint32_t slot = (n->obs_rr + k) % NET_OBSERVERS_MAX;
        node_obs_req *o = &n->obs_req[slot];
        if (!o->want) continue;
        o->want = false;
        if (!net_peer_connected(n->net, NET_OBSERVER_ID_BASE + slot)) continue;
        serve_blocks(n, NET_OBSERVER_ID_BASE + slot, o->from, o->max, NODE_OBS_SYNC_BYTES_MAX);
        served++;
        n->obs_rr = slot + 1;
    }
}


/* sync_first: notes a validator's tip; starts voting once f+1 validators have answered and
 * this node is past the highest tip they named (at once on a chain nobody has extended). */
static void sync_first_progress(node *n, uint32_t from, uint64_t tip) {
    if (!n->sync_first || from >= n->g.n_validators || from >= 64) return;
    uint32_t f = (n->g.n_validators - 1) / 3;
    uint32_t heard = (uint32_t)__builtin_popcountll(n->sf_tip_mask);
    /* The target is fixed once f+1 have answered: chasing later tips would never end. */
    if (heard < f + 1 && !(n->sf_tip_mask >> from & 1)) {
        n->sf_tip_mask |= 1ull << from;
        if (tip > n->sf_tip) n->sf_tip = tip;
        heard++;
    }
    uint64_t h = ledger_store_height(n->store);
    if (heard < f + 1 || (n->sf_tip > 0 && h <= n->sf_tip)) return;
    n->sync_first = false;
    node_log(n, NODE_LOG_INFO, "caught up to height %llu past the tip %llu named by %u validators: voting from now on",
             (unsigned long long)h, (unsigned long long)n->sf_tip, heard);
    if (node_replica_start(n) != NODE_OK) {
        node_log(n, NODE_LOG_ERROR, "cannot start consensus after catching up; stopping");
        node_stop(n, 1);
    }
}

static void got_blocks(node *n, uint32_t from_peer, const Tem__V1__BlockBatch *bb) {
    uint64_t before = ledger_store_height(n->store);
    for (size_t i = 0; i < bb->n_blocks && !n->stopping; i++) {
        Tem__V1__CommittedBlock *cb = bb->blocks[i];
        if (cb->height != ledger_store_height(n->store) + 1 && !n->rep_ok) continue;
        if (n->rep_ok) {
            pbft_event ev = {.kind = PBFT_EV_BLOCK_FETCHED, .height = cb->height, .data = cb->block.data,
                             .len = cb->block.len, .cert = cb->cert.data, .cert_len = cb->cert.len};
            node_replica_post(n, &ev);
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
    n->sync_sent_ms = 0;
    uint64_t h = ledger_store_height(n->store);
    if (!n->rep_ok && bb->tip_height > h) node_request_blocks(n, h + 1);
    /* A validator asks on for as long as a batch moved it forward and the peer has more: the
     * batches that on_peer_up's request starts end at the peer's tip, or at the first batch
     * that brought nothing new (stale or refused blocks; consensus's own fetch takes over). */
    else if (n->rep_ok && h > before && bb->tip_height > h && from_peer < n->g.n_validators)
        (void)request_blocks_from(n, from_peer, h + 1);
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

/* A gossiped tx whose signature a recently applied block carried (node.committed_sig), or that
 * the validation in flight is verifying (node.val_sig): either way a second check is waste. */
static bool gossip_redundant(const node *n, const uint8_t *stx, size_t len) {
    const uint8_t *sig;
    if (ledger_tx_wire_sig(stx, len, &sig) != LEDGER_OK) return false;
    uint32_t k = tem_get_u32le(sig);
    if (memcmp(n->committed_sig[k % NODE_SIGCACHE], sig, 64) == 0) return true;
    return n->validating && !n->val_waiting && n->val_sig_epoch[k % NODE_VAL_SIGS] == n->val_epoch &&
           memcmp(n->val_sig[k % NODE_VAL_SIGS], sig, 64) == 0;
}

static bool sig_known(void *ctx, const uint8_t txid[32], const uint8_t sig[64]) { return node_sigcache_has(ctx, txid, sig); }

static void gossip_done(void *ctx, int rc, const uint8_t txid[32]) {
    node *n = ctx;
    if (rc == 0 && !n->stopping) sigcache_add_pending(n, txid);
}

void node_on_frame(void *ctx, const net_peer_info *p, const uint8_t *data, size_t len) {
    node *n = ctx;
    if (n->stopping) return;
    Tem__V1__NodeMessage *m = tem__v1__node_message__unpack(&ledger_pb_allocator, len, data);
    if (!m) {
        /* One line in a thousand: an admitted peer (any key, when observers are accepted) sent
         * 20,000 undecodable messages a second, each a WARN line: 2 MB of log a second
         * (found by an audit). */
        if (n->malformed_msgs++ % 1000 == 0)
            node_log(n, NODE_LOG_WARN, "malformed message from peer %u (%s) (%llu so far)", p->id, p->remote,
                     (unsigned long long)n->malformed_msgs);
        return;
    }
    switch (m->kind_case) {
    case TEM__V1__NODE_MESSAGE__KIND_PBFT:
        if (p->is_validator && p->id < LEDGER_VALIDATORS_MAX) n->last_pbft_ms[p->id] = uv_now(&n->loop);
        if (n->rep_ok && p->is_validator) {
            pbft_event ev = {.kind = PBFT_EV_MESSAGE, .from = p->id, .data = m->pbft.data, .len = m->pbft.len};
            node_replica_post(n, &ev);
        }
        break;
    case TEM__V1__NODE_MESSAGE__KIND_TXS:
        if (n->mp && p->is_validator && m->txs)
            for (size_t i = 0; i < m->txs->n_txs; i++) {
                /* already known or refused here too: gossip is best effort. The mempool keeps
                 * its own copy; the frame is freed below. */
                if (gossip_redundant(n, m->txs->txs[i].data, m->txs->txs[i].len)) continue;
                uint8_t id[32];
                int rc = node_mempool_submit(n->mp, m->txs->txs[i].data, m->txs->txs[i].len, gossip_done, n, id);
                /* The sender holds it: re-gossip never sends it back there. */
                if (rc == 0 || rc == NODE_MEMPOOL_EDUP) node_mempool_peer_has(n->mp, id, p->id);
            }
        break;
    case TEM__V1__NODE_MESSAGE__KIND_BLOCK_REQUEST:
        /* Validators are answered at once (they may be catching up to vote); observers wait
         * for the tick, rate-limited, so they cannot crowd out consensus work. */
        if (m->block_request && p->is_validator)
            serve_blocks(n, p->id, m->block_request->from_height, m->block_request->max_blocks, NODE_SYNC_BYTES_MAX);
        else if (m->block_request)
            park_observer_request(n, p, m->block_request);
        break;
    case TEM__V1__NODE_MESSAGE__KIND_SNAPSHOT_REQUEST:
    case TEM__V1__NODE_MESSAGE__KIND_SNAPSHOT_OFFER:
    case TEM__V1__NODE_MESSAGE__KIND_CHUNK_REQUEST:
    case TEM__V1__NODE_MESSAGE__KIND_CHUNK:
        node_sync_frame(n, p, m);
        break;
    case TEM__V1__NODE_MESSAGE__KIND_BLOCKS:
        if (m->blocks && !node_sync_joining(n)) {
            node_tail_got_blocks(n, p->id, m->blocks);
            got_blocks(n, p->id, m->blocks);
            if (p->is_validator && !n->stopping) sync_first_progress(n, p->id, m->blocks->tip_height);
        }
        break;
    default:
        node_log(n, NODE_LOG_DEBUG, "unknown message kind from peer %u", p->id);
    }
    tem__v1__node_message__free_unpacked(m, &ledger_pb_allocator);
}

static void on_peer_up(void *ctx, const net_peer_info *p) {
    node *n = ctx;
    node_log(n, NODE_LOG_INFO, "peer %u up (%s, %s)", p->id, p->remote, p->is_validator ? "validator" : "observer");
    /* A validator that was stopped or cut off while the others went on learns it is behind
     * only from their next votes. On a quiet chain there are none for a while, and its view
     * timer fires first: it then sat alone in a view change for seconds before fetching
     * (docs/performance.md, "Replay and catch-up"). So it asks each validator that connects
     * for the blocks above its tip: one request per connect, answered with nothing when the
     * peer has nothing newer; the blocks carry their certificates and are checked as any
     * fetched block is. */
    if (p->is_validator && p->id < n->g.n_validators && n->rep_ok && !n->stopping && !node_sync_joining(n))
        (void)request_blocks_from(n, p->id, ledger_store_height(n->store) + 1);
}
static void on_peer_down(void *ctx, const net_peer_info *p, int reason) {
    node *n = ctx;
    if (p->id >= NET_OBSERVER_ID_BASE && p->id - NET_OBSERVER_ID_BASE < NET_OBSERVERS_MAX)
        memset(&n->obs_req[p->id - NET_OBSERVER_ID_BASE], 0, sizeof n->obs_req[0]); /* the slot's next holder starts afresh */
    node_sync_peer_down(n, p->id);
    node_log(n, reason == NET_ECLOSING ? NODE_LOG_DEBUG : NODE_LOG_INFO, "peer %u down: %s", p->id, net_strerror(reason));
}

/* ------------------------------------------------------------------ gossip, sync, tick */
void node_tx_accepted(node *n, const uint8_t txid[32]) {
    sigcache_add_pending(n, txid);
    uint64_t k = tem_get_u64le(txid);
    uint32_t slot = (uint32_t)(k % NODE_LATENCY_TABLE);
    n->lat_key[slot] = k;
    n->lat_ms[slot] = node_now_ms();
    node_maybe_propose(n);
}

/* A client's tx passed its signature check here (mempool config.announce): it is gossiped with
 * the next batch without waiting for its log record's fdatasync, which under disk contention
 * took 20 ms (median) to 200 ms (p99) and held every tx a non-primary node took in back from the
 * primary's proposal for as long. Durability is this node's promise behind its 202, not a
 * condition for the others to hold or commit the tx. */
static void mempool_announce(void *ctx, const uint8_t txid[32]) {
    node *n = ctx;
    if (!n->stopping && n->ngossip < NODE_GOSSIP_TXS_MAX) memcpy(n->gossip[n->ngossip++], txid, 32);
}

/* Sends the client txs verified since the last tick, read from the mempool (one committed or
 * refused meanwhile is skipped: the others have it or will fetch its block). */
static void flush_gossip(node *n) {
    if (!n->ngossip) return;
    Tem__V1__TxBatch tb = TEM__V1__TX_BATCH__INIT;
    ProtobufCBinaryData *items = tem_calloc(n->ngossip, sizeof *items);
    if (items) {
        uint32_t k = 0;
        for (uint32_t i = 0; i < n->ngossip; i++) {
            const uint8_t *b;
            size_t l;
            if (node_mempool_get_verified(n->mp, n->gossip[i], &b, &l)) items[k++] = (ProtobufCBinaryData){l, (uint8_t *)b};
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

/* Re-sends txs that have waited here for regossip_age_ms. Gossip is best effort (a peer may be
 * down or restarting when a tx arrives, or refuse it while full, and recovered txs were never
 * gossiped), and only the primary proposes: without this a tx accepted here could wait
 * forever. It cannot amplify load: only the current primary is sent anything (the one node
 * whose copy matters), never a tx it is known to hold (it gossiped it to us), each tx at most
 * once per regossip_age_ms, and at most regossip_txs_per_s txs per second in all. */
static void regossip(node *n, uint64_t now) {
    enum { REGOSSIP_MAX = 512, REGOSSIP_SCAN_MAX = 8192 };
    if (!n->rep_ok || n->regossip_budget == 0) return;
    uint32_t primary = pbft_primary(pbft_replica_view(&n->rep), n->g.n_validators);
    if ((int)primary == n->self || !net_peer_connected(n->net, primary)) return;
    const uint8_t *txs[REGOSSIP_MAX];
    size_t lens[REGOSSIP_MAX];
    uint32_t max = n->regossip_budget < REGOSSIP_MAX ? (uint32_t)n->regossip_budget : REGOSSIP_MAX;
    uint32_t cnt = node_mempool_regossip(n->mp, now, n->cfg.regossip_age_ms, primary, max, REGOSSIP_SCAN_MAX, txs, lens);
    if (cnt == 0) return;
    ProtobufCBinaryData items[REGOSSIP_MAX];
    for (uint32_t i = 0; i < cnt; i++) items[i] = (ProtobufCBinaryData){lens[i], (uint8_t *)txs[i]};
    Tem__V1__TxBatch tb = TEM__V1__TX_BATCH__INIT;
    tb.n_txs = cnt;
    tb.txs = items;
    Tem__V1__NodeMessage m;
    tem__v1__node_message__init(&m);
    m.kind_case = TEM__V1__NODE_MESSAGE__KIND_TXS;
    m.txs = &tb;
    (void)send_node_msg(n, primary, &m);
    n->regossip_budget -= cnt;
    n->regossip_txs_sent += cnt;
}

static void on_tick(uv_timer_t *t) {
    node *n = t->data;
    if (n->stopping) return;
    flush_gossip(n);
    serve_observers(n);
    node_tail_tick(n);
    node_sync_tick(n);
    uint64_t now = uv_now(&n->loop);
    if (!n->disk_full && n->mp && node_mempool_disk_full(n->mp)) node_enter_disk_full(n, "a mempool log write", LEDGER_EDISKFULL);
    if (n->disk_full) {
        if (now - n->disk_checked_ms < NODE_DISK_CHECK_MS) return;
        n->disk_checked_ms = now;
        struct statvfs sv;
        if (statvfs(n->cfg.data_dir, &sv) == 0 && (uint64_t)sv.f_bavail * sv.f_frsize >= NODE_DISK_RESUME_BYTES) {
            node_log(n, NODE_LOG_INFO, "disk space is back (%llu MiB free in %s): restarting to resume",
                     (unsigned long long)((uint64_t)sv.f_bavail * sv.f_frsize >> 20), n->cfg.data_dir);
            node_stop(n, NODE_EXIT_RESTART);
        }
        return;
    }
    if (now - n->last_regossip_ms >= 1000) {
        n->last_regossip_ms = now;
        n->regossip_budget = n->cfg.regossip_txs_per_s;
    }
    /* Ten rounds a second spread the budget; each walks at most REGOSSIP_SCAN_MAX txs. */
    if (now - n->regossip_round_ms >= 100) {
        n->regossip_round_ms = now;
        regossip(n, now);
    }
    /* Observers poll for new blocks; validators re-ask when a fetch got no answer. */
    if (!n->rep_ok && !node_sync_joining(n) && (n->sync_sent_ms == 0 || now - n->sync_sent_ms > 1000)) node_request_blocks(n, ledger_store_height(n->store) + 1);
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
    uv_timer_t *timers[] = {&n->t_view, &n->t_fetch, &n->t_propose, &n->t_tick, &n->t_valwait};
    for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++)
        if (!uv_is_closing((uv_handle_t *)timers[i])) uv_close((uv_handle_t *)timers[i], close_cb);
    if (!uv_is_closing((uv_handle_t *)&n->sig_int)) uv_close((uv_handle_t *)&n->sig_int, close_cb);
    if (!uv_is_closing((uv_handle_t *)&n->sig_term)) uv_close((uv_handle_t *)&n->sig_term, close_cb);
    /* A commit still running ends unannounced: the store's close waits for it. */
    ledger_store_writer_notify_off(n->store);
    if (!uv_is_closing((uv_handle_t *)&n->a_commit)) uv_close((uv_handle_t *)&n->a_commit, close_cb);
    if (n->net) net_close(n->net);
    if (n->http) net_http_close(n->http);
    if (n->mp) node_mempool_close(n->mp);
}

static void on_signal(uv_signal_t *s, int sig) {
    node *n = s->data;
    node_log(n, NODE_LOG_INFO, "signal %d", sig);
    node_stop(n, 0);
}

/* A client's tx left the mempool: its address bucket holds one fewer. */
static void adm_release(void *ctx, uint32_t tag) {
    node *n = ctx;
    node_admission_release(&n->adm, tag);
}

/* A client's tx committed: admission learns how long it really waited. */
static void adm_observe(void *ctx, uint64_t t_ms, uint32_t model_ms) {
    node *n = ctx;
    uint64_t now = uv_now(&n->loop);
    node_admission_observe(&n->adm, model_ms, now > t_ms ? now - t_ms : 0);
}

static void walk_close(uv_handle_t *h, void *arg) {
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, close_cb);
}

int node_run(const node_config *cfg) {
    node *n = tem_calloc(1, sizeof *n);
    if (!n) return 1;
    node_indexer *ix = NULL;
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
    uv_timer_t *timers[] = {&n->t_view, &n->t_fetch, &n->t_propose, &n->t_tick, &n->t_valwait};
    for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++) {
        TEM_ASSERT(uv_timer_init(&n->loop, timers[i]) == 0);
        timers[i]->data = n;
    }
    TEM_ASSERT(uv_signal_init(&n->loop, &n->sig_int) == 0 && uv_signal_init(&n->loop, &n->sig_term) == 0);
    n->sig_int.data = n->sig_term.data = n;
    TEM_ASSERT(uv_async_init(&n->loop, &n->a_commit, on_commit_async) == 0);
    n->a_commit.data = n;

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
    if (n->self >= 0) ledger_store_stagger_checkpoints(n->store, (uint32_t)n->self, n->g.n_validators);
    char gh[65];
    tem_hex(gh, n->g.hash, 32);
    node_log(n, NODE_LOG_INFO, "temd %s config %s chain %s genesis %s, %s %d, data %s", NODE_VERSION,
             cfg->config[0] ? cfg->config : "(flags)", n->g.chain_id, gh, n->self >= 0 ? "validator" : "observer",
             n->self, cfg->data_dir);
    node_votes_origin votes_origin = NODE_VOTES_NONE;
    if (n->self >= 0) {
        /* Before anything can vote: the record moves out of data.mdb once (votes.h). */
        if ((rc = node_votes_open(cfg->data_dir, &n->votes)) != LEDGER_OK ||
            (rc = node_votes_adopt(n->votes, n->store, &votes_origin)) != LEDGER_OK) {
            node_log(n, NODE_LOG_ERROR, "vote store %s/%s: %s", cfg->data_dir, NODE_VOTES_DIR, ledger_strerror(rc));
            goto stop;
        }
        if (votes_origin == NODE_VOTES_MIGRATED)
            node_log(n, NODE_LOG_INFO, "moved the vote record from data.mdb to %s/%s", cfg->data_dir, NODE_VOTES_DIR);
    }
    node_tail_check(n); /* damaged blocks found here are refetched once peers are up */
    if ((rc = ledger_store_writer_start(n->store, commit_notify, n)) != LEDGER_OK) {
        node_log(n, NODE_LOG_ERROR, "cannot start the store's writer thread: %s", ledger_strerror(rc));
        goto stop;
    }
    if (cfg->indexer_postgres_url[0] && node_indexer_start_for(cfg, n->store, &n->g, &ix) != 0) goto stop;
    if (uv_signal_start(&n->sig_int, on_signal, SIGINT) != 0 || uv_signal_start(&n->sig_term, on_signal, SIGTERM) != 0) goto stop;

    char logpath[NODE_PATH_MAX + 32];
    snprintf(logpath, sizeof logpath, "%s/mempool.log", cfg->data_dir);
    node_mempool_config mc = {.log_path = logpath, .txs_max = cfg->mempool_txs_max, .nonce_window = cfg->mempool_nonce_window,
                              .per_signer_max = cfg->mempool_nonce_window, .genesis = &n->g};
    mc.precheck = node_mempool_precheck_signer;
    mc.precheck_ctx = n->store;
    node_admission_config ac = {.wait_ms_max = cfg->admission_wait_ms_max,
                                .signer_share_pct = (uint32_t)cfg->admission_signer_share_pct,
                                .headroom_pct = (uint32_t)cfg->admission_headroom_pct,
                                .addr_share_pct = (uint32_t)cfg->admission_addr_share_pct,
                                .block_txs_max = n->g.max_block_txs,
                                .block_interval_ms = n->cfg.block_interval_ms,
                                .peers = n->g.n_validators > 0 ? n->g.n_validators - 1 : 0,
                                .full_block_txs = n->g.max_block_txs < NODE_PROPOSAL_TXS_MIN ? n->g.max_block_txs
                                                                                            : NODE_PROPOSAL_TXS_MIN};
    node_admission_init(&n->adm, &ac);
    mc.release = adm_release;
    mc.release_ctx = n;
    mc.client_committed = adm_observe;
    mc.client_committed_ctx = n;
    mc.sig_known = sig_known;
    mc.sig_known_ctx = n;
    mc.verified = mempool_verified;
    mc.verified_ctx = n;
    mc.announce = mempool_announce;
    mc.announce_ctx = n;
    if (node_mempool_new(&n->loop, &mc, n->store, &n->mp) != 0) {
        node_log(n, NODE_LOG_ERROR, "cannot open the mempool log %s", logpath);
        goto stop;
    }
    /* A log that cannot be recovered leaves the node up but degraded (tailcheck.c). */
    if (node_faults_mempool_recover(n, logpath) != 0) goto stop;

    net_config nc;
    memset(&nc, 0, sizeof nc);
    nc.genesis = &n->g;
    memcpy(nc.sec, n->key.ed_sec, sizeof nc.sec);
    nc.listen = n->self >= 0 && n->cfg.listen[0] ? n->cfg.listen : NULL;
    nc.accept_observers = cfg->accept_observers;
    nc.observer_keys = (const uint8_t(*)[LEDGER_ED_PUB_BYTES])cfg->observer_keys;
    nc.n_observer_keys = cfg->n_observer_keys;
    nc.handshakes_max = (uint32_t)cfg->peer_handshakes_max;
    nc.handshakes_per_addr_max = (uint32_t)cfg->peer_handshakes_per_addr_max;
    nc.handshakes_per_s = (uint32_t)cfg->peer_handshakes_per_s;
    nc.handshakes_per_addr_per_s = (uint32_t)cfg->peer_handshakes_per_addr_per_s;
    nc.observer_send_queue_bytes_max = cfg->peer_observer_queue_bytes_max;
    nc.send_stall_timeout_ms = cfg->peer_send_stall_timeout_ms;
    nc.frame_timeout_ms = cfg->peer_frame_timeout_ms;
    nc.rate_bytes_per_s = cfg->peer_rate_bytes_per_s;
    nc.rate_msgs_per_s = cfg->peer_rate_msgs_per_s;
    nc.rate_policy = NET_LIMIT_DROP;
    nc.log_level = cfg->log_level;
    net_callbacks cb = {.peer_up = on_peer_up, .peer_down = on_peer_down, .frame = node_on_frame, .log = net_log_cb, .ctx = n};
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
    if (node_sync_start(n) != NODE_OK) goto stop;
    n->started_wall_ms = node_now_ms();
    if (uv_timer_start(&n->t_tick, on_tick, 10, 10) != 0) goto stop;
    if (n->self >= 0 && !node_faults_may_vote(n)) {
        /* Degraded (the ERROR said why): follow the chain by block sync, as an observer does. */
    } else if (n->self >= 0) {
        /* Votes in either place count: node_votes_adopt has moved a record found in data.mdb. */
        bool has_votes = votes_origin == NODE_VOTES_HELD || votes_origin == NODE_VOTES_MIGRATED;
        if (votes_origin == NODE_VOTES_LOST) {
            /* data.mdb had a vote store and votes/ is gone: lost or not restored with it. Voting
             * now could sign a second block at a height this validator voted on, so it waits as
             * on an empty data dir. */
            n->sync_first = true;
            node_log(n, NODE_LOG_WARN, "vote store %s/%s was missing though data.mdb had one (lost or not restored "
                                       "with data.mdb): following the chain without voting until past the tip that "
                                       "f+1 validators name",
                     cfg->data_dir, NODE_VOTES_DIR);
        } else if (ledger_store_height(n->store) == 0 && !has_votes) {
            n->sync_first = true;
            node_log(n, NODE_LOG_INFO, "empty data dir: following the chain without voting until past the tip that "
                                       "f+1 validators name (it may have voted before it lost its data)");
        } else if (node_replica_start(n) != NODE_OK) {
            goto stop;
        }
    }
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
    node_proofs_stop(n);
    if (n->http) net_http_free(n->http);
    /* The last block's commit ends before the store closes (ledger_store_close waits for it);
     * its bookkeeping is skipped: a restart finds its txs committed. */
    if (n->pend_active) view_drop(n->pend_v);
    n->pend_active = false;
    drop_views(n);
    if (n->val_waiting) { /* stopped while it waited for the mempool */
        view_drop(n->val_waiting->view);
        tem_free(n->val_waiting);
    }
    /* After every view: they give their borrowed txs back to it. */
    if (n->mp) node_mempool_free(n->mp);
    n->mp = NULL;
    node_replica_free(n);
    node_votes_close(n->votes);
    n->votes = NULL;
    node_indexer_stop(ix); /* before the store it reads closes */
    node_sync_free(n);
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
