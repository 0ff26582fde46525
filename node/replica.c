/* replica.c: temd's implementation of the pBFT host's I/O (consensus/host.h). The host decides
 * the order (a vote leaves only after the record that remembers it is fsync'd; nothing follows a
 * failed write or apply); this file says how each action happens on the node's libuv loop:
 * messages through the peer transport, the vote record through the vote store (votes.c: its
 * own LMDB environment, so a vote never waits for a block's commit; a put fsyncs, so every
 * write is complete when it returns), timers as libuv timers, delivered blocks
 * applied by node.c in one LMDB transaction, proposals, validations and block fetches by node.c.
 * It also starts the replica from the store and feeds it the node's events. */
#include "node/node_internal.h"

#include <sodium.h>

/* ------------------------------------------------------------------ the host's I/O */
static void io_send(void *ctx, uint32_t to, const uint8_t *msg, size_t len) { node_send_pbft(ctx, to, msg, len); }

static int io_persist(void *ctx, const uint8_t *rec, size_t len) {
    node *n = ctx;
    /* Durable on return (the vote store's commit fsyncs), so the host may let the vote leave
     * right after. A write that failed leaves this node unable to vote safely: stop and let the
     * operator look. */
    TEM_ASSERT(n->votes != NULL);
    int rc = node_votes_put(n->votes, rec, len);
    if (node_is_disk_full(n, rc)) {
        /* No space for the record: the vote must not leave. The host halts (this replica stops
         * voting); the node keeps serving reads and restarts itself once space is back. */
        node_enter_disk_full(n, "persisting a vote", rc);
        return rc;
    }
    if (rc != LEDGER_OK) {
        node_log(n, NODE_LOG_ERROR, "cannot persist votes: %s; stopping", ledger_strerror(rc));
        node_stop(n, 1);
        return rc;
    }
    return PBFT_OK;
}

static void on_view_timer(uv_timer_t *t) {
    node *n = t->data;
    pbft_event ev = {.kind = PBFT_EV_TIMER, .timer = PBFT_TIMER_VIEW, .timer_seq = n->seq_view};
    node_replica_post(n, &ev);
}

static void on_fetch_timer(uv_timer_t *t) {
    node *n = t->data;
    pbft_event ev = {.kind = PBFT_EV_TIMER, .timer = PBFT_TIMER_FETCH, .timer_seq = n->seq_fetch};
    node_replica_post(n, &ev);
}

static void io_set_timer(void *ctx, pbft_timer t, uint64_t ms, uint64_t seq) {
    node *n = ctx;
    bool view = t == PBFT_TIMER_VIEW;
    if (view) n->seq_view = seq;
    else n->seq_fetch = seq;
    if (uv_timer_start(view ? &n->t_view : &n->t_fetch, view ? on_view_timer : on_fetch_timer, ms, 0) != 0)
        node_log(n, NODE_LOG_ERROR, "cannot arm consensus timer %d", t);
}

static void io_cancel_timer(void *ctx, pbft_timer t) {
    node *n = ctx;
    (void)uv_timer_stop(t == PBFT_TIMER_VIEW ? &n->t_view : &n->t_fetch);
}

static int io_deliver(void *ctx, const pbft_action *a) {
    node *n = ctx;
    node_apply_committed(n, a->height, a->msg, a->msg_len, a->cert, a->cert_len, a->block_hash);
    /* node_apply_committed logged the failure and stopped (or paused, disk full) the node; the
     * host performs nothing after this block. */
    return n->stopping || n->disk_full ? PBFT_EHALTED : PBFT_OK;
}

static void io_request_proposal(void *ctx, uint64_t height) {
    node *n = ctx;
    n->want_proposal = height;
    node_maybe_propose(n);
}

static int io_validate(void *ctx, uint64_t height, const uint8_t hash[32], const uint8_t *block, size_t len) {
    return node_validate(ctx, height, hash, block, len);
}

static void io_request_blocks(void *ctx, uint64_t from) {
    node *n = ctx;
    n->fetch_from = from;
    node_request_blocks(n, from);
}

static void io_stepped(void *ctx, const pbft_event *ev, int rc) {
    node *n = ctx;
    if (rc != PBFT_OK && rc != PBFT_ESTALE && rc != PBFT_EDUP)
        node_log(n, NODE_LOG_DEBUG, "consensus ignored event %d from %u: %s", ev->kind, ev->from, pbft_strerror(rc));
    uint64_t v = pbft_replica_view(&n->rep);
    if (v != n->rep_view) {
        n->rep_view = v;
        n->view_changes++;
        node_log(n, NODE_LOG_WARN, "view change to %llu (primary %u)", (unsigned long long)v,
                 pbft_primary(v, n->g.n_validators));
    }
}

static void io_report(void *ctx, int err, const char *what, uint64_t height) {
    node *n = ctx;
    const char *why = err <= -100 && err > -200 ? ledger_strerror(err) : pbft_strerror(err);
    node_log(n, NODE_LOG_WARN, "consensus %s at height %llu: %s", what, (unsigned long long)height, why);
}

/* ------------------------------------------------------------------ entry points */
void node_replica_post(node *n, const pbft_event *ev) {
    if (!n->host_ok || n->stopping || n->disk_full) return;
    int rc = host_post(&n->host, ev);
    if (rc == PBFT_OK || rc == PBFT_EHALTED) return;
    /* A logged refusal, not a silent drop: the sender retransmits, the fetch timer re-asks. */
    n->events_refused++;
    node_log(n, NODE_LOG_WARN, "consensus refused event %d from %u (%u waiting): %s", ev->kind, ev->from,
             host_queued(&n->host), pbft_strerror(rc));
}

void node_replica_validated(node *n, const pbft_event *ev) {
    if (!n->host_ok) return;
    int rc = host_validated(&n->host, ev->height, ev->block_hash, ev->ok);
    if (rc != PBFT_OK && rc != PBFT_EHALTED)
        node_log(n, NODE_LOG_WARN, "validation of %llu answered nothing pending: %s", (unsigned long long)ev->height,
                 pbft_strerror(rc));
}

int node_replica_start(node *n) {
    /* The replica starts from the last block's certificate, read from LMDB: a block still
     * being committed (a node that followed the chain before voting) must be durable first. */
    if (!node_commit_done(n)) return NODE_ESTORE;
    pbft_config pc;
    memset(&pc, 0, sizeof pc);
    if (pbft_config_from_genesis(&pc, &n->g) != PBFT_OK) return NODE_ECONSENSUS;
    pc.self = (uint32_t)n->self;
    memcpy(pc.secret, n->key.ed_sec, sizeof pc.secret);
    pc.view_timeout_doublings_max = 6;
    pc.hash = node_block_hash;
    pc.ctx = n;
    pc.start_height = ledger_store_height(n->store);
    ledger_store_last_hash(n->store, pc.start_hash);
    uint8_t *cert = NULL;
    size_t cl = 0;
    if (pc.start_height > 0 && ledger_store_cert(n->store, pc.start_height, &cert, &cl) != LEDGER_OK) {
        sodium_memzero(pc.secret, sizeof pc.secret);
        return NODE_ESTORE;
    }
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
    /* node_run opened the vote store and moved an older data dir's record into it
     * (node_votes_adopt): it is the only place the record is read from. */
    TEM_ASSERT(n->votes != NULL);
    rc = node_votes_get(n->votes, &rec, &rl);
    if (rc != LEDGER_OK && rc != LEDGER_ENOTFOUND) {
        /* Starting without a record that exists could sign a second block at a height. */
        node_log(n, NODE_LOG_ERROR, "cannot read the vote record: %s", ledger_strerror(rc));
        return NODE_ESTORE;
    }
    if (rc == LEDGER_OK) {
        rc = pbft_replica_restore(&n->rep, rec, rl);
        tem_free(rec);
        if (rc != PBFT_OK) {
            node_log(n, NODE_LOG_ERROR, "cannot restore persisted votes: %s", pbft_strerror(rc));
            return NODE_ECONSENSUS;
        }
        node_log(n, NODE_LOG_INFO, "restored persisted votes");
    }
    /* Consensus starts only when this node may vote; a validator that lost votes/ gets here
     * after following the chain past the tip f+1 validators name, and must not wait again. */
    if ((rc = node_votes_end_wait(n->votes)) != LEDGER_OK) {
        node_log(n, NODE_LOG_ERROR, "cannot record in the vote store that this node votes again: %s",
                 ledger_strerror(rc));
        return NODE_ESTORE;
    }
    n->rep_view = pbft_replica_view(&n->rep);
    host_io io = {.ctx = n,
                  .send = io_send,
                  .persist = io_persist,
                  .set_timer = io_set_timer,
                  .cancel_timer = io_cancel_timer,
                  .deliver = io_deliver,
                  .request_proposal = io_request_proposal,
                  .validate = io_validate,
                  .request_blocks = io_request_blocks,
                  .stepped = io_stepped,
                  .report = io_report};
    rc = host_init(&n->host, &n->rep, &io);
    if (rc != PBFT_OK) {
        node_log(n, NODE_LOG_ERROR, "consensus host: %s", pbft_strerror(rc));
        return rc == PBFT_ENOMEM ? NODE_ENOMEM : NODE_ECONSENSUS;
    }
    n->host_ok = true;
    rc = host_start(&n->host);
    if (rc != PBFT_OK) {
        node_log(n, NODE_LOG_ERROR, "consensus start: %s", pbft_strerror(rc));
        return rc == PBFT_ENOMEM ? NODE_ENOMEM : NODE_ECONSENSUS;
    }
    /* The record held a block this node delivered before it stopped and whose commit had not
     * finished (docs/consensus.md, "What is persisted"): start() delivered it again. */
    if (pbft_replica_delivered(&n->rep) > pc.start_height)
        node_log(n, NODE_LOG_INFO, "block %llu delivered again from the vote record (it had not reached the disk)",
                 (unsigned long long)pbft_replica_delivered(&n->rep));
    return NODE_OK;
}

void node_replica_free(node *n) {
    if (n->host_ok) host_free(&n->host);
    n->host_ok = false;
    if (n->rep_ok) pbft_replica_free(&n->rep);
    n->rep_ok = false;
}
