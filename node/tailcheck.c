/* tailcheck.c: storage faults a node survives (tailcheck.h). A failed mempool-log recovery
 * leaves the node up but degraded: it cannot make accepted txs durable, so it takes none, and it
 * does not vote (a validator that lost track of what it acknowledged should not help decide what
 * commits) until an operator has looked. A damaged stored block is taken out of service and
 * refetched: the certificate proves which block 2f+1 validators committed, so a peer's copy that
 * hashes to the hash this node recorded when it applied the block, and carries a certificate
 * that verifies for it, is the block. */
#include "node/node_internal.h"

#include <errno.h>

/* ------------------------------------------------------------------ mempool-log recovery */
int node_faults_mempool_recover(node *n, const char *logpath) {
    node_faults *f = &n->faults;
    uint32_t recovered = 0;
    int rc = node_mempool_recover(n->mp, &recovered);
    if (rc == NODE_MEMPOOL_ECORRUPT && n->cfg.mempool_log_reset) {
        /* The operator asked for it: keep the damaged file for inspection, start empty. */
        char aside[NODE_PATH_MAX + 64];
        snprintf(aside, sizeof aside, "%s.damaged-%llu", logpath, (unsigned long long)(node_now_ms() / 1000));
        if (rename(logpath, aside) != 0) {
            node_log(n, NODE_LOG_ERROR, "cannot move the damaged mempool log %s aside: %s", logpath, strerror(errno));
            return -1;
        }
        node_log(n, NODE_LOG_ERROR, "mempool log %s was damaged: moved to %s (--mempool-log-reset); its txs are not recovered",
                 logpath, aside);
        rc = node_mempool_recover(n->mp, &recovered);
    }
    if (rc != 0) {
        f->mempool_failed = true;
        f->mempool_rc = rc;
        snprintf(f->mempool_path, sizeof f->mempool_path, "%s", logpath);
        snprintf(f->mempool_action, sizeof f->mempool_action, "%s",
                 rc == NODE_MEMPOOL_ECORRUPT ? "its header is damaged or belongs to another chain: inspect it, then restart "
                                               "temd once with --mempool-log-reset to move it aside"
                 : rc == NODE_MEMPOOL_EFULL ? "it holds more txs than mempool_txs_max: raise the limit and restart"
                                            : "check the disk and the file's permissions, then restart");
        /* Up, but degraded: reads are served and the chain followed, nothing is voted or taken
         * in until the operator restarts it (docs/operate.md, "Limits and faults"). */
        node_log(n, NODE_LOG_ERROR,
                 "mempool log %s: %s (%s); NOT VOTING, refusing txs (503 EMEMPOOLLOG), serving reads and following "
                 "the chain until restarted: %s",
                 logpath, node_mempool_strerror(rc), node_mempool_errname(rc), f->mempool_action);
        return 0;
    }
    node_mempool_stats ms;
    node_mempool_get_stats(n->mp, &ms);
    if (ms.recover_damaged)
        node_log(n, NODE_LOG_ERROR, "mempool log %s: %llu damaged stretch(es), %llu bytes skipped; the intact records "
                 "after them were recovered", logpath, (unsigned long long)ms.recover_damaged,
                 (unsigned long long)ms.recover_skipped_bytes);
    if (recovered) node_log(n, NODE_LOG_INFO, "recovered %u txs from the mempool log", recovered);
    return 0;
}

bool node_faults_may_vote(const node *n) { return !n->faults.mempool_failed; }

bool node_faults_refuse_submit(node *n, net_http_req *req) {
    if (!n->faults.mempool_failed) return false;
    n->http_txs_rejected++;
    char msg[256];
    snprintf(msg, sizeof msg, "this node's mempool log could not be recovered (%s): it takes no txs until its operator "
             "acts; submit to another node", node_mempool_errname(n->faults.mempool_rc));
    node_reply_err(req, 503, "EMEMPOOLLOG", msg);
    return true;
}

/* ------------------------------------------------------------------ damaged blocks */
static int bad_index(const node_faults *f, uint64_t h) {
    for (uint32_t i = 0; i < f->nbad; i++)
        if (f->bad[i] == h) return (int)i;
    return -1;
}

bool node_tail_is_bad(const node *n, uint64_t h) { return n->faults.nbad && bad_index(&n->faults, h) >= 0; }

static bool mark_bad(node *n, uint64_t h, const uint8_t hash[32], const char *why) {
    node_faults *f = &n->faults;
    if (bad_index(f, h) >= 0) return true;
    char hx[65];
    tem_hex(hx, hash, 32);
    if (f->nbad >= NODE_TAIL_BAD_MAX) {
        node_log(n, NODE_LOG_ERROR, "stored block %llu (hash %s) is damaged (%s); more than %u damaged blocks: not "
                 "refetching it now (never served; restore the data dir)", (unsigned long long)h, hx, why, NODE_TAIL_BAD_MAX);
        return false;
    }
    f->bad[f->nbad] = h;
    memcpy(f->bad_hash[f->nbad], hash, 32);
    snprintf(f->bad_why[f->nbad], sizeof f->bad_why[0], "%s", why);
    f->nbad++;
    f->found++;
    f->next_round_ms = 0; /* ask at the next tick */
    node_log(n, NODE_LOG_ERROR, "stored block %llu (hash %s) is damaged: %s; not serving it, refetching it from peers",
             (unsigned long long)h, hx, why);
    return true;
}

void node_tail_check(node *n) {
    uint64_t tip = ledger_store_height(n->store), k = n->cfg.tail_check_blocks;
    if (tip == 0 || k == 0) return;
    uint64_t from = tip > k ? tip - k + 1 : 1;
    uint64_t base = ledger_store_base_height(n->store); /* a state-synced store holds nothing below */
    if (from <= base) from = base + 1;
    if (from > tip) return;
    n->faults.checked_from = from;
    n->faults.checked_to = tip;
    uint32_t bad = 0;
    for (uint64_t h = from; h <= tip; h++) {
        uint8_t hash[32];
        char why[128];
        int rc = ledger_store_check_block(n->store, h, hash, why, sizeof why);
        if (rc == LEDGER_ECORRUPT) {
            bad++;
            (void)mark_bad(n, h, hash, why);
        } else if (rc != LEDGER_OK) {
            node_log(n, NODE_LOG_WARN, "tail check: cannot read block %llu: %s", (unsigned long long)h, ledger_strerror(rc));
        }
    }
    node_log(n, bad ? NODE_LOG_ERROR : NODE_LOG_INFO, "tail check: blocks %llu..%llu checked against their certificates, "
             "%u damaged", (unsigned long long)from, (unsigned long long)tip, bad);
}

bool node_tail_read_failed(node *n, uint64_t h) {
    if (node_tail_is_bad(n, h)) return true;
    uint8_t hash[32];
    char why[128];
    if (ledger_store_check_block(n->store, h, hash, why, sizeof why) != LEDGER_ECORRUPT) return false;
    return mark_bad(n, h, hash, why);
}

static void request_block(node *n, uint64_t h) {
    uint32_t nv = n->g.n_validators;
    Tem__V1__BlockRequest r = TEM__V1__BLOCK_REQUEST__INIT;
    r.from_height = h;
    r.max_blocks = 1;
    Tem__V1__NodeMessage m;
    tem__v1__node_message__init(&m);
    m.kind_case = TEM__V1__NODE_MESSAGE__KIND_BLOCK_REQUEST;
    m.block_request = &r;
    uint8_t buf[64];
    size_t len = tem__v1__node_message__get_packed_size(&m);
    if (len > sizeof buf) return;
    tem__v1__node_message__pack(&m, buf);
    /* The next connected validator each time: one that lacks or damaged the block too, or lies,
     * costs one round, not the repair. */
    for (uint32_t k = 0; k < nv; k++) {
        uint32_t p = (n->faults.rr + k) % nv;
        if ((int)p == n->self || !net_peer_connected(n->net, p)) continue;
        n->faults.rr = p + 1;
        if (net_send(n->net, p, buf, len) == NET_OK) return;
    }
}

void node_tail_tick(node *n) {
    node_faults *f = &n->faults;
    if (!f->nbad || !n->net) return;
    uint64_t now = uv_now(&n->loop);
    if (now < f->next_round_ms) return;
    f->next_round_ms = now + NODE_TAIL_RETRY_MS;
    /* A window that moves each round, so blocks no peer can give do not hold up the rest. */
    uint32_t k = f->nbad < NODE_TAIL_REQS_PER_ROUND ? f->nbad : NODE_TAIL_REQS_PER_ROUND;
    for (uint32_t i = 0; i < k; i++) request_block(n, f->bad[(f->round * NODE_TAIL_REQS_PER_ROUND + i) % f->nbad]);
    f->round++;
}

void node_tail_got_blocks(node *n, uint32_t peer, const Tem__V1__BlockBatch *bb) {
    node_faults *f = &n->faults;
    for (size_t i = 0; f->nbad && i < bb->n_blocks; i++) {
        const Tem__V1__CommittedBlock *cb = bb->blocks[i];
        int k = bad_index(f, cb->height);
        if (k < 0) continue;
        char why[128] = "";
        int rc = ledger_store_repair_block(n->store, cb->height, cb->block.data, cb->block.len, cb->cert.data,
                                           cb->cert.len, why, sizeof why);
        char hx[65];
        tem_hex(hx, f->bad_hash[k], 32);
        if (rc != LEDGER_OK) {
            f->refetch_refused++;
            node_log(n, NODE_LOG_WARN, "refetched block %llu from peer %u not taken: %s%s%s", (unsigned long long)cb->height,
                     peer, ledger_strerror(rc), why[0] ? ": " : "", why);
            if (node_is_disk_full(n, rc)) node_enter_disk_full(n, "rewriting a damaged block", rc);
            continue;
        }
        f->repaired++;
        node_log(n, NODE_LOG_INFO, "repaired stored block %llu (hash %s) with the copy from peer %u, verified against its "
                 "certificate", (unsigned long long)cb->height, hx, peer);
        f->nbad--;
        f->bad[k] = f->bad[f->nbad];
        memcpy(f->bad_hash[k], f->bad_hash[f->nbad], 32);
        memcpy(f->bad_why[k], f->bad_why[f->nbad], sizeof f->bad_why[0]);
    }
}

/* ------------------------------------------------------------------ reporting */
void node_faults_status(node *n, json_t *o) {
    const node_faults *f = &n->faults;
    json_t *faults = json_array();
    json_object_set_new(o, "mempool_recovery", json_string(f->mempool_failed ? "failed" : "ok"));
    if (f->mempool_failed) {
        json_t *e = json_object();
        json_object_set_new(e, "kind", json_string("mempool_recovery_failed"));
        json_object_set_new(e, "path", json_string(f->mempool_path));
        json_object_set_new(e, "code", json_string(node_mempool_errname(f->mempool_rc)));
        json_object_set_new(e, "reason", json_string(node_mempool_strerror(f->mempool_rc)));
        json_object_set_new(e, "action", json_string(f->mempool_action));
        json_array_append_new(faults, e);
    }
    if (n->disk_full) {
        json_t *e = json_object();
        json_object_set_new(e, "kind", json_string("disk_full"));
        json_object_set_new(e, "path", json_string(n->cfg.data_dir));
        json_array_append_new(faults, e);
    }
    for (uint32_t i = 0; i < f->nbad; i++) {
        json_t *e = json_object();
        json_object_set_new(e, "kind", json_string("block_damaged"));
        json_object_set_new(e, "height", json_integer((json_int_t)f->bad[i]));
        json_object_set_new(e, "hash", node_hexj(f->bad_hash[i], 32));
        json_object_set_new(e, "reason", json_string(f->bad_why[i]));
        json_object_set_new(e, "action", json_string("refetching from peers"));
        json_array_append_new(faults, e);
    }
    json_object_set_new(o, "faults", faults);
    json_object_set_new(o, "blocks_repaired", json_integer((json_int_t)f->repaired));
}

void node_faults_metrics(node *n, FILE *out) {
    const node_faults *f = &n->faults;
    fprintf(out, "# HELP tem_mempool_recovery_failed 1 while the mempool log could not be recovered (not voting, "
                 "refusing txs).\n# TYPE tem_mempool_recovery_failed gauge\ntem_mempool_recovery_failed %d\n",
            f->mempool_failed ? 1 : 0);
    fprintf(out, "# HELP tem_blocks_damaged Stored blocks found damaged and waiting for their refetch.\n"
                 "# TYPE tem_blocks_damaged gauge\ntem_blocks_damaged %u\n", f->nbad);
    fprintf(out, "# HELP tem_blocks_repaired_total Damaged stored blocks rewritten from a verified peer copy.\n"
                 "# TYPE tem_blocks_repaired_total counter\ntem_blocks_repaired_total %llu\n",
            (unsigned long long)f->repaired);
}
