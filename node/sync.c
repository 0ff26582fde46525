/* sync.c: state sync (sync.h; docs/ledger.md "State sync", docs/operate.md "Joining by state
 * sync"). Nothing a peer sends is trusted: an offer counts only if block h+1's certificate
 * verifies against the genesis validators and its manifest hashes to the state root that
 * certified header holds; a chunk counts only if it hashes to its manifest line. A bad peer can
 * cost time (its chunks are refused and fetched elsewhere; after SYNC_STRIKES_MAX refusals it is
 * no longer asked), never a wrong state: the install also rebuilds the tree and compares roots. */
#include "node/sync.h"
#include "ledger/snapshot.h"
#include "node/node_internal.h"

#define SYNC_PEERS (LEDGER_VALIDATORS_MAX + NET_OBSERVERS_MAX)
#define SYNC_QUEUE 4               /* chunk requests parked per peer; more are dropped */
#define SYNC_OFFER_WAIT_MS 1000    /* after the first good offer, wait this long for better ones */
#define SYNC_ASK_EVERY_MS 2000     /* re-ask for offers (more sources) */
#define SYNC_ASK_EMPTY_MS 250      /* ... while there is none at all */
#define SYNC_NO_SOURCE_MS 30000    /* no peer serves the target this long: give it up */
#define SYNC_STRIKES_MAX 3         /* refused chunks before a peer is no longer asked */

enum { PH_OFFERS, PH_FETCH };

typedef struct {
    uint32_t q[SYNC_QUEUE];
    uint64_t qh[SYNC_QUEUE];
    uint32_t nq;
    uint64_t tokens_m, last_ms; /* milli-tokens */
} serve_peer;

typedef struct node_sync {
    node *n;
    /* ---- serving */
    ledger_snapshot *snaps[2]; /* [0] the newest ready one */
    ledger_snapshot *building;
    uv_work_t work;
    int build_rc;
    bool build_busy;
    serve_peer peers[SYNC_PEERS];
    uint32_t serve_rr;
    /* the one chunk being read and encoded in the thread pool */
    bool serve_busy;
    uv_work_t serve_work;
    ledger_snapshot *job_sn, *retired;
    uint64_t job_h;
    uint32_t job_index, job_to;
    uint8_t *job_buf;
    size_t job_len;
    uint64_t served_chunks, served_offers, dropped;
    /* ---- joining */
    bool joining;
    int phase;
    ledger_snap_stage *stage;
    uint64_t asked_ms, first_offer_ms, started_ms, last_source_ms, last_req_ms;
    uint64_t answered;   /* validators that answered the current round of offers */
    uint8_t *best;       /* the best offer so far (packed), PH_OFFERS */
    size_t best_len;
    uint64_t best_h, best_sources;
    Tem__V1__SnapshotOffer *tgt; /* the target, PH_FETCH */
    ledger_snap_anchor anchor;
    uint32_t nchunks, ndone, next_chunk;
    uint8_t *done;
    int32_t *inflight; /* peer id, -1 none */
    int32_t *last_peer;
    uint64_t *sent_ms;
    uint64_t sources; /* validators known to serve the target */
    uint32_t peer_inflight[LEDGER_VALIDATORS_MAX], strikes[LEDGER_VALIDATORS_MAX];
    uint32_t peer_rr, fetched, refused, resumed;
} node_sync;

static int peer_slot(uint32_t id) {
    if (id < LEDGER_VALIDATORS_MAX) return (int)id;
    if (id >= NET_OBSERVER_ID_BASE && id - NET_OBSERVER_ID_BASE < NET_OBSERVERS_MAX)
        return LEDGER_VALIDATORS_MAX + (int)(id - NET_OBSERVER_ID_BASE);
    return -1;
}

static int send_msg(node *n, uint32_t to, const Tem__V1__NodeMessage *m) {
    size_t len = tem__v1__node_message__get_packed_size(m);
    uint8_t *buf = tem_malloc(len ? len : 1);
    if (!buf) return NODE_ENOMEM;
    tem__v1__node_message__pack(m, buf);
    int rc = net_send(n->net, to, buf, len);
    tem_free(buf);
    if (rc != NET_OK) node_log(n, NODE_LOG_DEBUG, "state sync: send to %u: %s", to, net_strerror(rc));
    return rc;
}

/* ------------------------------------------------------------------ serving */
static void build_work(uv_work_t *w) {
    node_sync *y = w->data;
    y->build_rc = ledger_snapshot_build(y->building);
}

static void build_after(uv_work_t *w, int status) {
    node_sync *y = w->data;
    node *n = y->n;
    y->build_busy = false;
    if (status != 0 || y->build_rc != LEDGER_OK) {
        node_log(n, NODE_LOG_WARN, "state sync: snapshot of height %llu not kept: %s",
                 (unsigned long long)ledger_snapshot_height(y->building),
                 status ? "cancelled" : ledger_strerror(y->build_rc));
        ledger_snapshot_close(y->building);
        y->building = NULL;
        return;
    }
    /* Two are kept, so a joiner that started on the previous one can finish (or resume). */
    if (y->serve_busy && y->job_sn == y->snaps[1]) y->retired = y->snaps[1];
    else ledger_snapshot_close(y->snaps[1]);
    y->snaps[1] = y->snaps[0];
    y->snaps[0] = y->building;
    y->building = NULL;
    const uint64_t *c = ledger_snapshot_counts(y->snaps[0]);
    uint64_t total = 0;
    uint32_t w2 = 1u << ledger_snapshot_depth(y->snaps[0]);
    for (uint32_t i = 0; i < w2; i++) total += c[i];
    node_log(n, NODE_LOG_INFO, "state sync: serving the snapshot of height %llu (%u chunks, %llu entries)",
             (unsigned long long)ledger_snapshot_height(y->snaps[0]), w2, (unsigned long long)total);
}

void node_sync_block_applied(node *n, uint64_t height) {
    node_sync *y = n->sync;
    uint64_t every = n->cfg.sync_snapshot_interval;
    if (!y || !every || height % every != 0 || y->build_busy || n->stopping) return;
    int rc = ledger_snapshot_open(n->store, &y->building);
    if (rc != LEDGER_OK) {
        node_log(n, NODE_LOG_WARN, "state sync: cannot open a snapshot of height %llu: %s", (unsigned long long)height,
                 ledger_strerror(rc));
        return;
    }
    y->work.data = y;
    y->build_busy = true;
    if (uv_queue_work(&n->loop, &y->work, build_work, build_after) != 0) {
        y->build_busy = false;
        ledger_snapshot_close(y->building);
        y->building = NULL;
    }
}

static ledger_snapshot *snap_at(node_sync *y, uint64_t h) {
    uint64_t tip = ledger_store_durable_height(y->n->store); /* the offer reads block h+1 from LMDB */
    for (int i = 0; i < 2; i++) {
        ledger_snapshot *s = y->snaps[i];
        if (!s || ledger_snapshot_height(s) >= tip) continue; /* h+1 not certified here yet */
        if (h == 0 || ledger_snapshot_height(s) == h) return s;
    }
    return NULL;
}

/* Charges one request to the peer's bucket (sync_serve_chunks_per_s, a second's burst). */
static bool take_token(node_sync *y, int slot) {
    serve_peer *p = &y->peers[slot];
    uint64_t now = uv_now(&y->n->loop), rate = y->n->cfg.sync_serve_chunks_per_s, cap = rate * 1000;
    if (p->last_ms == 0 || now < p->last_ms) p->tokens_m = cap;
    else p->tokens_m += (now - p->last_ms) * rate;
    if (p->tokens_m > cap) p->tokens_m = cap;
    p->last_ms = now;
    if (p->tokens_m < 1000) return false;
    p->tokens_m -= 1000;
    return true;
}

static void serve_offer(node_sync *y, uint32_t to, uint64_t want) {
    node *n = y->n;
    Tem__V1__SnapshotOffer o = TEM__V1__SNAPSHOT_OFFER__INIT;
    uint8_t *b = NULL, *nb = NULL, *c = NULL;
    size_t bl = 0, nbl = 0, cl = 0;
    ledger_snapshot *s = snap_at(y, want);
    if (s) {
        uint64_t h = ledger_snapshot_height(s);
        if (ledger_store_block(n->store, h, &b, &bl) != LEDGER_OK || ledger_store_block(n->store, h + 1, &nb, &nbl) != LEDGER_OK ||
            ledger_store_cert(n->store, h + 1, &c, &cl) != LEDGER_OK) {
            s = NULL; /* e.g. a node that itself joined by state sync above h */
        } else {
            unsigned d = ledger_snapshot_depth(s);
            o.height = h;
            o.depth = d;
            o.block = (ProtobufCBinaryData){bl, b};
            o.next_block = (ProtobufCBinaryData){nbl, nb};
            o.next_cert = (ProtobufCBinaryData){cl, c};
            o.hashes = (ProtobufCBinaryData){(size_t)32 << d, (uint8_t *)ledger_snapshot_hashes(s)};
            o.n_counts = (size_t)1 << d;
            o.counts = (uint64_t *)ledger_snapshot_counts(s);
        }
    }
    Tem__V1__NodeMessage m;
    tem__v1__node_message__init(&m);
    m.kind_case = TEM__V1__NODE_MESSAGE__KIND_SNAPSHOT_OFFER;
    m.snapshot_offer = &o;
    (void)send_msg(n, to, &m);
    y->served_offers++;
    tem_free(b);
    tem_free(nb);
    tem_free(c);
}

/* Thread pool: reads chunk `index` of the job's snapshot and encodes the reply. One job at a
 * time (a read transaction is used by one thread at a time), so serving takes at most one
 * worker and no loop time beyond the send. */
static void serve_work(uv_work_t *w) {
    node_sync *y = w->data;
    Tem__V1__StateChunk sc = TEM__V1__STATE_CHUNK__INIT;
    sc.height = y->job_h;
    sc.index = y->job_index;
    ledger_snap_entry *e = NULL;
    size_t k = 0;
    ProtobufCBinaryData *keys = NULL, *vals = NULL;
    if (!y->job_sn || ledger_snapshot_chunk(y->job_sn, y->job_index, &e, &k) != LEDGER_OK) {
        sc.unavailable = true;
    } else {
        keys = tem_malloc((k ? k : 1) * sizeof *keys);
        vals = tem_malloc((k ? k : 1) * sizeof *vals);
        if (!keys || !vals) {
            sc.unavailable = true;
            k = 0;
        }
        for (size_t i = 0; i < k; i++) {
            keys[i] = (ProtobufCBinaryData){e[i].klen, (uint8_t *)e[i].key};
            vals[i] = (ProtobufCBinaryData){e[i].vlen, (uint8_t *)e[i].val};
        }
        sc.n_keys = sc.n_values = k;
        sc.keys = keys;
        sc.values = vals;
    }
    /* Fault injection for tests (sync_test_corrupt_chunks): the last entry's value changes, as
     * a lying peer's would. */
    uint8_t bad[8] = {0};
    if (y->n->cfg.sync_test_corrupt_chunks && !sc.unavailable && k > 0) {
        vals[k - 1] = (ProtobufCBinaryData){sizeof bad, bad};
        memcpy(bad, e[k - 1].val, e[k - 1].vlen < sizeof bad ? e[k - 1].vlen : sizeof bad);
        bad[0] ^= 1;
    }
    Tem__V1__NodeMessage m;
    tem__v1__node_message__init(&m);
    m.kind_case = TEM__V1__NODE_MESSAGE__KIND_CHUNK;
    m.chunk = &sc;
    y->job_len = tem__v1__node_message__get_packed_size(&m);
    y->job_buf = tem_malloc(y->job_len ? y->job_len : 1);
    if (y->job_buf) tem__v1__node_message__pack(&m, y->job_buf);
    tem_free(e);
    tem_free(keys);
    tem_free(vals);
}

static void serve_after(uv_work_t *w, int status) {
    node_sync *y = w->data;
    node *n = y->n;
    y->serve_busy = false;
    if (status == 0 && y->job_buf && !n->stopping && net_peer_connected(n->net, y->job_to)) {
        int rc = net_send(n->net, y->job_to, y->job_buf, y->job_len);
        if (rc != NET_OK) node_log(n, NODE_LOG_DEBUG, "state sync: chunk to %u: %s", y->job_to, net_strerror(rc));
        else y->served_chunks++;
    }
    tem_free(y->job_buf);
    y->job_buf = NULL;
    /* a snapshot replaced while this job read it */
    ledger_snapshot_close(y->retired);
    y->retired = NULL;
}

static uint32_t slot_id(int slot) {
    return slot < LEDGER_VALIDATORS_MAX ? (uint32_t)slot : NET_OBSERVER_ID_BASE + (uint32_t)(slot - LEDGER_VALIDATORS_MAX);
}

static void serve_queued(node_sync *y) {
    for (uint32_t k = 0; k < SYNC_PEERS && !y->serve_busy; k++) {
        int slot = (int)((y->serve_rr + k) % SYNC_PEERS);
        serve_peer *p = &y->peers[slot];
        if (!p->nq) continue;
        uint32_t idx = p->q[0];
        uint64_t h = p->qh[0];
        memmove(p->q, p->q + 1, (p->nq - 1) * sizeof p->q[0]);
        memmove(p->qh, p->qh + 1, (p->nq - 1) * sizeof p->qh[0]);
        p->nq--;
        if (!net_peer_connected(y->n->net, slot_id(slot))) continue;
        y->serve_rr = (uint32_t)slot + 1;
        y->job_sn = h ? snap_at(y, h) : NULL;
        y->job_h = h;
        y->job_index = idx;
        y->job_to = slot_id(slot);
        y->serve_work.data = y;
        y->serve_busy = true;
        if (uv_queue_work(&y->n->loop, &y->serve_work, serve_work, serve_after) != 0) y->serve_busy = false;
    }
}

/* ------------------------------------------------------------------ joining */
static void target_free(node_sync *y) {
    if (y->tgt) tem__v1__snapshot_offer__free_unpacked(y->tgt, &ledger_pb_allocator);
    y->tgt = NULL;
    tem_free(y->done);
    tem_free(y->inflight);
    tem_free(y->last_peer);
    tem_free(y->sent_ms);
    y->done = NULL;
    y->inflight = y->last_peer = NULL;
    y->sent_ms = NULL;
    y->sources = 0;
    memset(y->peer_inflight, 0, sizeof y->peer_inflight);
    memset(y->strikes, 0, sizeof y->strikes);
}

static void to_offers(node_sync *y) {
    target_free(y);
    tem_free(y->best);
    y->best = NULL;
    y->best_h = 0;
    y->best_sources = 0;
    y->answered = 0;
    y->asked_ms = 0;
    y->first_offer_ms = 0;
    y->phase = PH_OFFERS;
}

/* The offer's proof and manifest, and the operator's trust options. */
static int offer_check(node *n, const Tem__V1__SnapshotOffer *o, ledger_snap_anchor *a) {
    if (o->height == 0) return LEDGER_ENOTFOUND;
    if (o->depth < LEDGER_SNAP_DEPTH_MIN || o->depth > LEDGER_SNAP_DEPTH_MAX) return LEDGER_EINVAL;
    size_t w = (size_t)1 << o->depth;
    if (o->hashes.len != 32 * w || o->n_counts != w) return LEDGER_EINVAL;
    if (n->cfg.sync_trust_height && o->height != n->cfg.sync_trust_height) return LEDGER_EHEIGHT;
    int rc = ledger_snap_anchor_check(&n->g, o->height, o->block.data, o->block.len, o->next_block.data, o->next_block.len,
                                      o->next_cert.data, o->next_cert.len, a);
    if (rc != LEDGER_OK) return rc;
    if (n->cfg.sync_trust_hash_set && memcmp(a->block_hash, n->cfg.sync_trust_hash, 32) != 0) return LEDGER_EPREV;
    uint8_t root[32];
    if ((rc = ledger_snap_manifest_root(o->depth, (const uint8_t(*)[32])o->hashes.data, o->counts, root)) != LEDGER_OK) return rc;
    return memcmp(root, a->state_root, 32) == 0 ? LEDGER_OK : LEDGER_EROOT;
}

static bool same_manifest(const Tem__V1__SnapshotOffer *a, const Tem__V1__SnapshotOffer *b) {
    return a->height == b->height && a->depth == b->depth && a->hashes.len == b->hashes.len &&
           memcmp(a->hashes.data, b->hashes.data, a->hashes.len) == 0 && a->n_counts == b->n_counts &&
           memcmp(a->counts, b->counts, a->n_counts * sizeof *a->counts) == 0;
}

/* Makes the packed offer the target (checked again: it may come from disk). */
static int load_target(node_sync *y, const uint8_t *bytes, size_t len) {
    node *n = y->n;
    target_free(y);
    Tem__V1__SnapshotOffer *o = tem__v1__snapshot_offer__unpack(&ledger_pb_allocator, len, bytes);
    if (!o) return LEDGER_EDECODE;
    int rc = offer_check(n, o, &y->anchor);
    if (rc != LEDGER_OK) {
        tem__v1__snapshot_offer__free_unpacked(o, &ledger_pb_allocator);
        return rc;
    }
    y->tgt = o;
    y->nchunks = 1u << o->depth;
    y->done = tem_calloc(y->nchunks, 1);
    y->inflight = tem_malloc(y->nchunks * sizeof *y->inflight);
    y->last_peer = tem_malloc(y->nchunks * sizeof *y->last_peer);
    y->sent_ms = tem_calloc(y->nchunks, sizeof *y->sent_ms);
    if (!y->done || !y->inflight || !y->last_peer || !y->sent_ms) {
        target_free(y);
        return LEDGER_ENOMEM;
    }
    y->ndone = 0;
    for (uint32_t i = 0; i < y->nchunks; i++) {
        y->inflight[i] = y->last_peer[i] = -1;
        /* An empty chunk needs no fetch: its EMPTY hash is all there is to check. */
        if (o->counts[i] == 0 || ledger_snap_stage_has(y->stage, i)) {
            y->done[i] = 1;
            y->ndone++;
        }
    }
    y->next_chunk = 0;
    y->phase = PH_FETCH;
    y->last_source_ms = uv_now(&n->loop);
    y->asked_ms = 0;
    return LEDGER_OK;
}

static void ask_offers(node_sync *y, uint64_t height) {
    node *n = y->n;
    Tem__V1__SnapshotRequest r = TEM__V1__SNAPSHOT_REQUEST__INIT;
    r.height = height;
    Tem__V1__NodeMessage m;
    tem__v1__node_message__init(&m);
    m.kind_case = TEM__V1__NODE_MESSAGE__KIND_SNAPSHOT_REQUEST;
    m.snapshot_request = &r;
    for (uint32_t p = 0; p < n->g.n_validators; p++)
        if ((int)p != n->self && net_peer_connected(n->net, p)) (void)send_msg(n, p, &m);
    y->asked_ms = uv_now(&n->loop);
}

static void adopt_best(node_sync *y) {
    node *n = y->n;
    int rc = ledger_snap_stage_begin(y->stage, y->best, y->best_len);
    if (rc == LEDGER_OK) rc = load_target(y, y->best, y->best_len);
    if (rc != LEDGER_OK) {
        node_log(n, NODE_LOG_ERROR, "state sync: cannot record the target: %s; stopping", ledger_strerror(rc));
        node_stop(n, 1);
        return;
    }
    y->sources = y->best_sources;
    uint64_t entries = 0;
    for (uint32_t i = 0; i < y->nchunks; i++) entries += y->tgt->counts[i];
    char hh[17];
    tem_hex(hh, y->anchor.block_hash, 8);
    node_log(n, NODE_LOG_INFO, "state sync: target height %llu (block %s), %u chunks (%u to fetch), %llu entries, from %d peers",
             (unsigned long long)y->anchor.height, hh, y->nchunks, y->nchunks - y->ndone, (unsigned long long)entries,
             __builtin_popcountll(y->sources));
}

static void install(node_sync *y) {
    node *n = y->n;
    uint64_t t0 = uv_hrtime();
    int rc = ledger_snap_stage_install(y->stage, n->store, &y->anchor);
    if (rc == LEDGER_EROOT) {
        /* Every chunk verified when it arrived: the staged copy was damaged on disk. Start over. */
        node_log(n, NODE_LOG_ERROR, "state sync: the staged state does not hash to the root of height %llu; starting over",
                 (unsigned long long)y->anchor.height);
        if (ledger_snap_stage_clear(y->stage) != LEDGER_OK) {
            node_stop(n, 1);
            return;
        }
        to_offers(y);
        return;
    }
    if (rc != LEDGER_OK) {
        node_log(n, NODE_LOG_ERROR, "state sync: cannot install the state of height %llu: %s; stopping",
                 (unsigned long long)y->anchor.height, ledger_strerror(rc));
        node_stop(n, 1);
        return;
    }
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    node_log(n, NODE_LOG_INFO, "state sync: installed the state of height %llu (%zu entries) in %llu ms",
             (unsigned long long)y->anchor.height, ledger_state_count(ledger_store_state(n->store)), (unsigned long long)ms);
    /* Block h+1 came with the offer, certified: applying it checks the installed roots the
     * usual way (its header's state and receipts roots) and moves the node onto the chain. */
    node_apply_committed(n, y->anchor.height + 1, y->tgt->next_block.data, y->tgt->next_block.len, y->tgt->next_cert.data,
                         y->tgt->next_cert.len, NULL);
    if (n->stopping) return;
    if ((rc = ledger_snap_stage_clear(y->stage)) != LEDGER_OK)
        node_log(n, NODE_LOG_WARN, "state sync: cannot clear the staging area: %s", ledger_strerror(rc));
    node_log(n, NODE_LOG_INFO,
             "state sync: done in %llu ms (%u chunks fetched here, %u refused, %u resumed from disk); following blocks from %llu",
             (unsigned long long)(uv_now(&n->loop) - y->started_ms), y->fetched, y->refused, y->resumed,
             (unsigned long long)ledger_store_height(n->store) + 1);
    y->joining = false;
    target_free(y);
}

/* The next source for chunk i: round-robin over connected sources under the in-flight cap,
 * avoiding the peer that last failed it when another can take it. -1 when none. */
static int pick_peer(node_sync *y, uint32_t i) {
    node *n = y->n;
    int fallback = -1;
    uint32_t nv = n->g.n_validators;
    for (uint32_t k = 0; k < nv; k++) {
        uint32_t p = (y->peer_rr + k) % nv;
        if (!(y->sources >> p & 1) || !net_peer_connected(n->net, p) || y->peer_inflight[p] >= n->cfg.sync_peer_inflight_max ||
            y->strikes[p] >= SYNC_STRIKES_MAX)
            continue;
        if ((int)p == y->last_peer[i]) {
            if (fallback < 0) fallback = (int)p;
            continue;
        }
        y->peer_rr = p + 1;
        return (int)p;
    }
    return fallback;
}

static void fetch_tick(node_sync *y, uint64_t now) {
    node *n = y->n;
    if (y->ndone == y->nchunks) {
        install(y);
        return;
    }
    /* Often while no peer is known to serve the target (just started: peers still connecting). */
    if (now - y->asked_ms >= (y->sources ? SYNC_ASK_EVERY_MS : SYNC_ASK_EMPTY_MS)) ask_offers(y, y->anchor.height);
    for (uint32_t i = 0; i < y->nchunks; i++) {
        if (y->inflight[i] < 0 || now - y->sent_ms[i] < n->cfg.sync_chunk_timeout_ms) continue;
        node_log(n, NODE_LOG_INFO, "state sync: chunk %u timed out at peer %d; asking another", i, y->inflight[i]);
        y->peer_inflight[y->inflight[i]]--;
        y->last_peer[i] = y->inflight[i];
        y->inflight[i] = -1;
    }
    uint64_t live = 0;
    for (uint32_t p = 0; p < n->g.n_validators && p < 64; p++)
        if ((y->sources >> p & 1) && y->strikes[p] < SYNC_STRIKES_MAX && net_peer_connected(n->net, p)) live |= 1ull << p;
    if (live) y->last_source_ms = now;
    else if (now - y->last_source_ms > SYNC_NO_SOURCE_MS) {
        node_log(n, NODE_LOG_WARN, "state sync: no peer has served the snapshot of height %llu for %u s; choosing another",
                 (unsigned long long)y->anchor.height, SYNC_NO_SOURCE_MS / 1000);
        if (ledger_snap_stage_clear(y->stage) != LEDGER_OK) node_log(n, NODE_LOG_WARN, "state sync: cannot clear the staging area");
        to_offers(y);
        return;
    }
    for (uint32_t scanned = 0; scanned < y->nchunks; scanned++) {
        if (n->cfg.sync_chunk_delay_ms && now - y->last_req_ms < n->cfg.sync_chunk_delay_ms) return;
        uint32_t i = (y->next_chunk + scanned) % y->nchunks;
        if (y->done[i] || y->inflight[i] >= 0) continue;
        int p = pick_peer(y, i);
        if (p < 0) return;
        Tem__V1__ChunkRequest r = TEM__V1__CHUNK_REQUEST__INIT;
        r.height = y->anchor.height;
        r.index = i;
        Tem__V1__NodeMessage m;
    tem__v1__node_message__init(&m);
        m.kind_case = TEM__V1__NODE_MESSAGE__KIND_CHUNK_REQUEST;
        m.chunk_request = &r;
        if (send_msg(n, (uint32_t)p, &m) != NET_OK) continue;
        y->inflight[i] = p;
        y->sent_ms[i] = now;
        y->peer_inflight[p]++;
        y->last_req_ms = now;
        y->next_chunk = i + 1;
    }
}

static void got_offer(node_sync *y, uint32_t from, const Tem__V1__SnapshotOffer *o) {
    node *n = y->n;
    if (from >= n->g.n_validators || from >= 64) return;
    if (y->phase == PH_FETCH) {
        if (y->tgt && same_manifest(o, y->tgt) && !(y->sources >> from & 1)) {
            y->sources |= 1ull << from;
            node_log(n, NODE_LOG_INFO, "state sync: peer %u serves the target too", from);
        }
        return;
    }
    y->answered |= 1ull << from;
    ledger_snap_anchor a;
    int rc = offer_check(n, o, &a);
    if (rc == LEDGER_ENOTFOUND) return;
    if (rc != LEDGER_OK) {
        node_log(n, NODE_LOG_WARN, "state sync: refused the offer of height %llu from peer %u: %s", (unsigned long long)o->height,
                 from, ledger_strerror(rc));
        return;
    }
    if (o->height == y->best_h) {
        Tem__V1__SnapshotOffer *b = tem__v1__snapshot_offer__unpack(&ledger_pb_allocator, y->best_len, y->best);
        if (b && same_manifest(o, b)) y->best_sources |= 1ull << from;
        if (b) tem__v1__snapshot_offer__free_unpacked(b, &ledger_pb_allocator);
        return;
    }
    if (o->height < y->best_h) return;
    size_t len = tem__v1__snapshot_offer__get_packed_size(o);
    uint8_t *buf = tem_malloc(len ? len : 1);
    if (!buf) return;
    tem__v1__snapshot_offer__pack(o, buf);
    tem_free(y->best);
    y->best = buf;
    y->best_len = len;
    y->best_h = o->height;
    y->best_sources = 1ull << from;
    if (!y->first_offer_ms) y->first_offer_ms = uv_now(&n->loop);
}

static void got_chunk(node_sync *y, uint32_t from, const Tem__V1__StateChunk *c) {
    node *n = y->n;
    if (y->phase != PH_FETCH || !y->tgt || c->height != y->anchor.height || c->index >= y->nchunks || from >= 64) return;
    uint32_t i = c->index;
    if (y->inflight[i] == (int32_t)from) {
        y->inflight[i] = -1;
        y->peer_inflight[from]--;
    }
    if (y->done[i]) return;
    if (c->unavailable) {
        if (y->sources >> from & 1)
            node_log(n, NODE_LOG_INFO, "state sync: peer %u no longer serves height %llu", from, (unsigned long long)c->height);
        y->sources &= ~(1ull << from);
        y->last_peer[i] = (int32_t)from;
        return;
    }
    int rc = LEDGER_EINVAL;
    ledger_snap_entry *e = NULL;
    if (c->n_keys == c->n_values && (e = tem_malloc((c->n_keys ? c->n_keys : 1) * sizeof *e)) != NULL) {
        for (size_t k = 0; k < c->n_keys; k++)
            e[k] = (ledger_snap_entry){c->keys[k].data, c->keys[k].len, c->values[k].data, c->values[k].len};
        rc = ledger_snap_chunk_verify(y->tgt->depth, i, (const uint8_t *)y->tgt->hashes.data + 32 * (size_t)i,
                                      y->tgt->counts[i], e, c->n_keys);
    }
    if (rc != LEDGER_OK) {
        tem_free(e);
        y->refused++;
        y->last_peer[i] = (int32_t)from;
        if (++y->strikes[from] >= SYNC_STRIKES_MAX) y->sources &= ~(1ull << from);
        node_log(n, NODE_LOG_WARN, "state sync: refused chunk %u from peer %u: %s (%u refusals from it)", i, from,
                 ledger_strerror(rc), y->strikes[from]);
        return;
    }
    rc = ledger_snap_stage_put(y->stage, i, e, c->n_keys);
    tem_free(e);
    if (rc != LEDGER_OK && rc != LEDGER_EEXISTS) {
        if (node_is_disk_full(n, rc)) node_enter_disk_full(n, "storing a state sync chunk", rc);
        else {
            node_log(n, NODE_LOG_ERROR, "state sync: cannot store chunk %u: %s; stopping", i, ledger_strerror(rc));
            node_stop(n, 1);
        }
        return;
    }
    y->done[i] = 1;
    y->ndone++;
    y->fetched++;
    node_log(n, NODE_LOG_INFO, "state sync: stored chunk %u (%zu entries) from peer %u, %u of %u done", i, c->n_keys, from, y->ndone,
             y->nchunks);
}

/* ------------------------------------------------------------------ hooks */
int node_sync_start(node *n) {
    node_sync *y = tem_calloc(1, sizeof *y);
    if (!y) return NODE_ENOMEM;
    y->n = n;
    n->sync = y;
    if (!n->cfg.sync_enable) return NODE_OK;
    if (n->cfg.indexer_postgres_url[0]) {
        /* The indexer loads every block from height 1; a synced store starts above its snapshot. */
        node_log(n, NODE_LOG_ERROR, "state sync: cannot be combined with the indexer, which needs every block from "
                                    "height 1; run the indexer beside a node that replayed the chain");
        return NODE_ECONFIG;
    }
    char dir[NODE_PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s/statesync", n->cfg.data_dir);
    int rc = ledger_snap_stage_open(dir, &y->stage);
    if (rc != LEDGER_OK) {
        node_log(n, NODE_LOG_ERROR, "state sync: cannot open %s: %s", dir, ledger_strerror(rc));
        return NODE_ESTORE;
    }
    uint8_t *t;
    size_t tl;
    rc = ledger_snap_stage_target(y->stage, &t, &tl);
    uint64_t h = ledger_store_height(n->store);
    y->started_ms = uv_now(&n->loop);
    if (rc == LEDGER_OK) {
        rc = load_target(y, t, tl);
        tem_free(t);
        if (rc == LEDGER_OK && y->anchor.height > h) {
            y->joining = true;
            y->resumed = ledger_snap_stage_count(y->stage);
            node_log(n, NODE_LOG_INFO, "state sync: resuming the sync to height %llu: %u chunks already stored, %u of %u done",
                     (unsigned long long)y->anchor.height, y->resumed, y->ndone, y->nchunks);
            return NODE_OK;
        }
        /* Installed already (killed before the staging area was cleared), or unusable. */
        target_free(y);
        if (ledger_snap_stage_clear(y->stage) != LEDGER_OK) return NODE_ESTORE;
    } else if (rc != LEDGER_ENOTFOUND) {
        return NODE_ESTORE;
    }
    if (h > 0) {
        node_log(n, NODE_LOG_INFO, "state sync: the store is at height %llu already; following blocks instead",
                 (unsigned long long)h);
        return NODE_OK;
    }
    y->joining = true;
    to_offers(y);
    node_log(n, NODE_LOG_INFO, "state sync: empty store; asking the validators for a snapshot");
    return NODE_OK;
}

void node_sync_free(node *n) {
    node_sync *y = n->sync;
    if (!y) return;
    TEM_ASSERT(!y->build_busy && !y->serve_busy);
    ledger_snapshot_close(y->retired);
    tem_free(y->job_buf);
    ledger_snapshot_close(y->building);
    ledger_snapshot_close(y->snaps[0]);
    ledger_snapshot_close(y->snaps[1]);
    target_free(y);
    tem_free(y->best);
    ledger_snap_stage_close(y->stage);
    tem_free(y);
    n->sync = NULL;
}

bool node_sync_joining(const node *n) { return n->sync && n->sync->joining; }

void node_sync_tick(node *n) {
    node_sync *y = n->sync;
    if (!y || n->stopping) return;
    serve_queued(y);
    if (!y->joining || n->disk_full) return;
    uint64_t now = uv_now(&n->loop);
    if (y->phase == PH_OFFERS) {
        if (now - y->asked_ms >= (y->best ? SYNC_ASK_EVERY_MS : SYNC_ASK_EMPTY_MS)) {
            y->answered = 0;
            ask_offers(y, n->cfg.sync_trust_height);
        }
        uint64_t connected = 0;
        for (uint32_t p = 0; p < n->g.n_validators && p < 64; p++)
            if ((int)p != n->self && net_peer_connected(n->net, p)) connected |= 1ull << p;
        if (y->best && (now - y->first_offer_ms >= SYNC_OFFER_WAIT_MS || (connected & ~y->answered) == 0)) adopt_best(y);
        return;
    }
    fetch_tick(y, now);
}

void node_sync_frame(node *n, const net_peer_info *p, const Tem__V1__NodeMessage *m) {
    node_sync *y = n->sync;
    if (!y) return;
    int slot = peer_slot(p->id);
    switch (m->kind_case) {
    case TEM__V1__NODE_MESSAGE__KIND_SNAPSHOT_REQUEST:
        if (!m->snapshot_request || slot < 0) return;
        if (!take_token(y, slot)) {
            if (y->dropped++ % 1000 == 0)
                node_log(n, NODE_LOG_WARN, "state sync: peer %u asks too often; dropping (%llu so far)", p->id,
                         (unsigned long long)y->dropped);
            return;
        }
        serve_offer(y, p->id, m->snapshot_request->height);
        return;
    case TEM__V1__NODE_MESSAGE__KIND_CHUNK_REQUEST:
        if (!m->chunk_request || slot < 0) return;
        if (y->peers[slot].nq >= SYNC_QUEUE || !take_token(y, slot)) {
            if (y->dropped++ % 1000 == 0)
                node_log(n, NODE_LOG_WARN, "state sync: peer %u asks for chunks too fast; dropping (%llu so far)", p->id,
                         (unsigned long long)y->dropped);
            return;
        }
        y->peers[slot].q[y->peers[slot].nq] = m->chunk_request->index;
        y->peers[slot].qh[y->peers[slot].nq++] = m->chunk_request->height;
        return;
    case TEM__V1__NODE_MESSAGE__KIND_SNAPSHOT_OFFER:
        if (y->joining && m->snapshot_offer && p->is_validator) got_offer(y, p->id, m->snapshot_offer);
        return;
    case TEM__V1__NODE_MESSAGE__KIND_CHUNK:
        if (y->joining && m->chunk && p->is_validator) got_chunk(y, p->id, m->chunk);
        return;
    default:
        return;
    }
}

void node_sync_peer_down(node *n, uint32_t peer_id) {
    node_sync *y = n->sync;
    int slot = peer_slot(peer_id);
    if (!y || slot < 0) return;
    memset(&y->peers[slot], 0, sizeof y->peers[slot]);
    if (!y->joining || y->phase != PH_FETCH || peer_id >= 64) return;
    /* Its chunks go to others now rather than after the timeout. */
    for (uint32_t i = 0; i < y->nchunks; i++)
        if (y->inflight[i] == (int32_t)peer_id) {
            y->inflight[i] = -1;
            y->last_peer[i] = (int32_t)peer_id;
        }
    y->peer_inflight[peer_id] = 0;
}
