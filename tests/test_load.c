/* test_load.c: Check suite for the open-loop load generator (node/sim/load.c) against a fake
 * node in a thread: plain sockets speaking just enough HTTP/1.1 for POST /v1/tx, POST /v1/txs
 * and GET /v1/events, on two ports (two nodes to the generator, one chain: one event stream for
 * both). It decodes every tx it receives, refuses every fifth one 503 EBUSY with Retry-After,
 * and announces each accepted one at once on its event stream. Asserted against the fake
 * node's own counts: the number of offers a phase makes (the open-loop schedule: one per
 * 1/rate from the phase's start), that each answer is counted once and as what it was through
 * reused requests and connections, that every signer's txs reach its own node and its nonces
 * arrive in order without a gap (a refused tx is offered again), that a cut event stream is
 * resumed after the last id seen, that latency runs from the due time, and that a phase with
 * --settle starts only once every node's GET /v1/status reports an empty mempool (or its wait
 * ran out, which the result says). No time is asserted but the settle wait's own minimum. */
#include <check.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>

#include "node/sim/load.h"

#define SIGNERS 256
#define CONNS_MAX 64
#define LOG_MAX 4096
#define DROP_AT 100 /* the event stream is cut once, after the event with this id */

typedef struct {
    int fd;
    int node; /* which listening socket it came in on */
    bool sse;
    char in[1 << 16];
    size_t len;
} fconn;

/* Two listening sockets: two "nodes" to the generator (signer i to node i % 2), one chain. */
typedef struct {
    int lfd[2], port[2];
    pthread_t th;
    atomic_bool stop;
    fconn c[CONNS_MAX];
    int sse_fd;
    uint8_t pub[SIGNERS][33];
    uint64_t next_nonce[SIGNERS];
    char log[LOG_MAX + 1][65]; /* txid of the commit event with id i */
    unsigned sse_opens;
    long resumed_from;         /* Last-Event-ID of the latest stream request, -1 none */
    /* counts, read by the test after the generator's run (the thread runs on) */
    atomic_ulong received, accepted, refused, gaps, requests, bulk_requests, bad;
    /* GET /v1/status: each answer reports status_left[node] txs in the mempool, then one fewer
     * (a validator applying the blocks it is behind on) */
    atomic_ulong status_left[2], status_polls[2];
} fnode;

static void send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) return;
        p += w;
        n -= (size_t)w;
    }
}

static void fnode_event(fnode *f, int fd, unsigned long id) {
    char ev[160];
    int k = snprintf(ev, sizeof ev, "event: tx\nid: %lu\ndata: {\"txid\":\"%s\",\"status\":\"committed\"}\n\n", id,
                     f->log[id]);
    send_all(fd, ev, (size_t)k);
}

/* One tx: its answer (NULL = accepted) and, when accepted, its commit event. */
static const char *fnode_tx(fnode *f, int node, const uint8_t *b, size_t n, char hex[65]) {
    ledger_tx_limits lim = {.chain_id = NULL, .max_tx_bytes = 1 << 16, .max_admin_tx_bytes = 1 << 16};
    ledger_tx tx = {0};
    f->received++;
    if (ledger_tx_decode(b, n, &lim, &tx) != LEDGER_OK) {
        f->bad++;
        ledger_tx_free(&tx);
        hex[0] = 0;
        return "EDECODE";
    }
    tem_hex(hex, tx.txid, 32);
    int si = -1;
    for (int i = 0; i < SIGNERS && si < 0; i++)
        if (tx.body->signer.len == 33 && !memcmp(tx.body->signer.data, f->pub[i], 33)) si = i;
    uint64_t nonce = tx.body->nonce;
    ledger_tx_free(&tx);
    if (si < 0 || si % 2 != node) {
        f->bad++; /* not a signer, or not this node's */
        return "ESIGNER";
    }
    if (nonce != f->next_nonce[si]) f->gaps++;
    if (f->received % 5 == 0) {
        f->refused++;
        return "EBUSY";
    }
    f->next_nonce[si] = nonce + 1;
    f->accepted++;
    if (f->accepted <= LOG_MAX) memcpy(f->log[f->accepted], hex, 65);
    else f->bad++;
    if (f->sse_fd >= 0) fnode_event(f, f->sse_fd, (unsigned long)f->accepted);
    if (f->accepted == DROP_AT && f->sse_fd >= 0) {
        /* As a node does to a slow reader: the stream ends; the generator must resume after
         * the last id it saw, and the events in between are replayed then. */
        shutdown(f->sse_fd, SHUT_RDWR);
        f->sse_fd = -1;
    }
    return NULL;
}

/* As temd: a refusal for being busy, alone or in a batch, says when to retry. */
static void reply(int fd, int status, const char *body, bool busy) {
    /* One write: a header then a body in two would wait out Nagle and a delayed ACK. */
    static char h[(1 << 15) + 256];
    int k = snprintf(h, sizeof h, "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n%s\r\n%s", status,
                     strlen(body), busy ? "Retry-After: 2\r\n" : "", body);
    send_all(fd, h, (size_t)k);
}

/* Handles every complete request in c->in; false when the connection is to be closed. */
static bool fnode_serve(fnode *f, fconn *c) {
    for (;;) {
        c->in[c->len] = 0;
        char *eoh = strstr(c->in, "\r\n\r\n");
        if (!eoh) return c->len < sizeof c->in - 1;
        size_t hlen = (size_t)(eoh + 4 - c->in), blen = 0;
        const char *cl = strcasestr(c->in, "\r\ncontent-length:");
        if (cl && cl < eoh) blen = strtoul(cl + 17, NULL, 10);
        if (hlen + blen > sizeof c->in - 1) return false;
        if (c->len < hlen + blen) return true;
        const uint8_t *body = (const uint8_t *)c->in + hlen;
        char hex[65];
        if (!strncmp(c->in, "GET /v1/events", 14)) {
            static const char h[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n: hello\n\n";
            send_all(c->fd, h, sizeof h - 1);
            c->sse = true;
            f->sse_fd = c->fd;
            f->sse_opens++;
            const char *le = strcasestr(c->in, "\r\nlast-event-id:");
            f->resumed_from = le && le < eoh ? strtol(le + 16, NULL, 10) : -1;
            for (unsigned long id = f->resumed_from > 0 ? (unsigned long)f->resumed_from + 1 : 1;
                 id <= f->accepted && id <= LOG_MAX; id++)
                fnode_event(f, c->fd, id);
        } else if (!strncmp(c->in, "GET /v1/status ", 15)) {
            f->status_polls[c->node]++;
            unsigned long m = f->status_left[c->node];
            if (m > 0) f->status_left[c->node] = m - 1;
            char out[96];
            snprintf(out, sizeof out, "{\"height\":7,\"mempool\":%lu}", m);
            reply(c->fd, 200, out, false);
        } else if (!strncmp(c->in, "POST /v1/tx ", 12)) {
            f->requests++;
            const char *code = fnode_tx(f, c->node, body, blen, hex);
            char out[160];
            if (!code) snprintf(out, sizeof out, "{\"txid\":\"%s\"}", hex);
            else snprintf(out, sizeof out, "{\"error\":\"refused\",\"code\":\"%s\"}", code);
            bool busy = code && !strcmp(code, "EBUSY");
            reply(c->fd, code ? (busy ? 503 : 400) : 202, out, busy);
        } else if (!strncmp(c->in, "POST /v1/txs ", 13)) {
            f->requests++;
            f->bulk_requests++;
            char out[1 << 15];
            size_t o = 0;
            bool busy = false;
            out[o++] = '[';
            for (size_t off = 0; off + 4 <= blen && o < sizeof out - 200;) {
                size_t n = tem_get_u32be(body + off);
                if (off + 4 + n > blen) break;
                const char *code = fnode_tx(f, c->node, body + off + 4, n, hex);
                off += 4 + n;
                busy |= code && !strcmp(code, "EBUSY");
                if (o > 1) out[o++] = ',';
                o += (size_t)(code ? snprintf(out + o, sizeof out - o, "{\"error\":\"refused\",\"code\":\"%s\"}", code)
                                   : snprintf(out + o, sizeof out - o, "{\"txid\":\"%s\"}", hex));
            }
            out[o++] = ']';
            out[o] = 0;
            reply(c->fd, 200, out, busy);
        } else {
            f->bad++;
            reply(c->fd, 404, "{\"code\":\"ENOTFOUND\"}", false);
        }
        memmove(c->in, c->in + hlen + blen, c->len - hlen - blen);
        c->len -= hlen + blen;
    }
}

static void *fnode_main(void *arg) {
    fnode *f = arg;
    while (!f->stop) {
        struct pollfd p[CONNS_MAX + 2];
        int map[CONNS_MAX + 2], n = 0;
        for (int k = 0; k < 2; k++) {
            p[n] = (struct pollfd){.fd = f->lfd[k], .events = POLLIN};
            map[n++] = -1 - k;
        }
        for (int i = 0; i < CONNS_MAX; i++)
            if (f->c[i].fd >= 0) {
                p[n] = (struct pollfd){.fd = f->c[i].fd, .events = POLLIN};
                map[n++] = i;
            }
        if (poll(p, (nfds_t)n, 10) <= 0) continue;
        for (int k = 0; k < n; k++) {
            if (!p[k].revents) continue;
            if (map[k] < 0) {
                int fd = accept(f->lfd[-1 - map[k]], NULL, NULL);
                int i = 0;
                while (i < CONNS_MAX && f->c[i].fd >= 0) i++;
                if (fd >= 0 && i == CONNS_MAX) close(fd);
                else if (fd >= 0) f->c[i] = (fconn){.fd = fd, .node = -1 - map[k]};
                continue;
            }
            fconn *c = &f->c[map[k]];
            ssize_t r = recv(c->fd, c->in + c->len, sizeof c->in - 1 - c->len, 0);
            if (r > 0) c->len += (size_t)r;
            if (r <= 0 || !fnode_serve(f, c)) {
                if (c->fd == f->sse_fd) f->sse_fd = -1;
                close(c->fd);
                c->fd = -1;
            }
        }
    }
    return NULL;
}

static void fnode_start(fnode *f, uint64_t seed) {
    memset(f, 0, sizeof *f);
    f->sse_fd = -1;
    for (int i = 0; i < CONNS_MAX; i++) f->c[i].fd = -1;
    for (uint32_t i = 0; i < SIGNERS; i++) {
        uint8_t sec[32];
        ctl_load_signer_key(seed, i, sec, f->pub[i]);
    }
    for (int k = 0; k < 2; k++) {
        f->lfd[k] = socket(AF_INET, SOCK_STREAM, 0);
        ck_assert_int_ge(f->lfd[k], 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = 0};
        ck_assert_int_eq(bind(f->lfd[k], (struct sockaddr *)&a, sizeof a), 0);
        ck_assert_int_eq(listen(f->lfd[k], 64), 0);
        socklen_t al = sizeof a;
        ck_assert_int_eq(getsockname(f->lfd[k], (struct sockaddr *)&a, &al), 0);
        f->port[k] = ntohs(a.sin_port);
    }
    ck_assert_int_eq(pthread_create(&f->th, NULL, fnode_main, f), 0);
}

static void fnode_stop(fnode *f) {
    f->stop = true;
    pthread_join(f->th, NULL);
    for (int i = 0; i < CONNS_MAX; i++)
        if (f->c[i].fd >= 0) close(f->c[i].fd);
    close(f->lfd[0]);
    close(f->lfd[1]);
}

/* A genesis with one validator and the seed's signers, as ctl_load_new needs. */
static void write_genesis(const char *path, uint64_t seed) {
    json_t *g = json_object(), *parts = json_array();
    uint8_t esec[64], epub[32];
    char h[67];
    ck_assert_int_eq(ledger_ed_keygen(esec, epub), LEDGER_OK);
    tem_hex(h, epub, 32);
    json_object_set_new(g, "chain_id", json_string("tem-load-test"));
    json_object_set_new(g, "genesis_time_ms", json_integer(1700000040000));
    json_object_set_new(g, "validators", json_pack("[{s:s,s:s,s:s,s:s}]", "name", "v0", "pubkey", h, "address",
                                                   "127.0.0.1:1", "http", "127.0.0.1:2"));
    for (uint32_t i = 0; i < SIGNERS; i++) {
        uint8_t sec[32], pub[33];
        ctl_load_signer_key(seed, i, sec, pub);
        tem_hex(h, pub, 33);
        json_array_append_new(parts, json_pack("{s:s,s:i,s:s,s:I,s:I}", "pubkey", h, "bus", 1, "role", "prosumer",
                                               "money_uunit", (json_int_t)1000000, "tokens_wh", (json_int_t)1000));
    }
    json_object_set_new(g, "admins", json_array());
    json_object_set_new(g, "participants", parts);
    json_object_set_new(g, "tariffs", json_pack("[{s:i,s:i,s:i}]", "start_minute", 0, "retail_uunit_per_kwh", 300000,
                                                "feed_in_uunit_per_kwh", 80000));
    json_object_set_new(g, "market", json_pack("{s:i,s:i,s:i}", "slot_ms", 60000, "gate_closure_ms", 1000,
                                               "book_orders_max", 1000000));
    ck_assert_int_eq(json_dump_file(g, path, JSON_COMPACT), 0);
    json_decref(g);
}

/* What one phase must show, given the fake node's counts before and after it. */
static void check_phase(const ctl_load_result *r, uint64_t want_offered, uint64_t acc, uint64_t ref) {
    ck_assert_uint_eq(r->offered, want_offered);
    ck_assert_uint_eq(r->transport_errors, 0);
    ck_assert_uint_eq(r->refused_other, 0);
    ck_assert_uint_eq(r->unsent_backlog, 0);
    /* Every due offer was sent (or found no idle signer), and answered as the node answered. */
    ck_assert_uint_eq(r->accepted + r->refused_busy + r->no_signer, r->offered);
    ck_assert_uint_eq(r->accepted, acc);
    ck_assert_uint_eq(r->refused_busy, ref);
    ck_assert_uint_gt(r->refused_busy, 0);
    ck_assert_uint_eq(r->refused_retry_after, r->refused_busy);
    ck_assert_uint_eq(r->retry_after_max_s, 2);
    /* Each accepted tx's commit event was matched to it, once. */
    ck_assert_uint_eq(r->committed, r->accepted);
    ck_assert_uint_eq(r->uncommitted, 0);
    /* Latency runs from the due time: it holds the wait for the 202 as well as 202 -> commit. */
    ck_assert(r->ack_p50_ms >= 0);
    ck_assert(r->lat_p50_ms >= r->wait_p50_ms);
    ck_assert(r->lat_max_ms >= r->wait_max_ms);
    ck_assert(r->gen_cpu_us_per_offer > 0);
}

START_TEST(load_offers_on_schedule_and_counts_each_answer_once) {
    const uint64_t seed = 3;
    char gpath[] = "/tmp/tem-load-genesis-XXXXXX";
    int gfd = mkstemp(gpath);
    ck_assert_int_ge(gfd, 0);
    close(gfd);
    write_genesis(gpath, seed);
    static fnode f;
    fnode_start(&f, seed);
    char node[2][32];
    snprintf(node[0], sizeof node[0], "127.0.0.1:%d", f.port[0]);
    snprintf(node[1], sizeof node[1], "127.0.0.1:%d", f.port[1]);
    const char *nodes[] = {node[0], node[1]};
    /* Few connections for many requests: requests and connections are reused. */
    ctl_load_config lc = {.nodes = nodes, .n_nodes = 2, .genesis = gpath, .seed = seed, .signers = SIGNERS,
                          .conns_per_node = 4, .timeout_ms = 5000, .fresh = true};
    ctl_load *l = NULL;
    ck_assert_int_eq(ctl_load_new(&lc, &l), 0);

    /* 400/s for 1.5 s: due at t0 + k/400 for k = 0..599, one tx per POST /v1/tx. */
    ctl_load_phase ph = {.rate_per_s = 400, .duration_s = 1.5, .batch = 1, .drain_s = 5, .warmup_s = 0};
    ctl_load_result r;
    uint64_t acc0 = f.accepted, ref0 = f.refused;
    ck_assert_int_eq(ctl_load_run(l, &ph, &r), 0);
    check_phase(&r, 600, f.accepted - acc0, f.refused - ref0);
    ck_assert_uint_eq(f.bulk_requests, 0);
    ck_assert_uint_eq(f.requests, f.received);
    /* The stream cut after id DROP_AT was reopened once, resuming after that id. */
    ck_assert_uint_eq(f.sse_opens, 2);
    ck_assert_int_eq(f.resumed_from, DROP_AT);

    /* The same rate in requests of up to 8 txs on POST /v1/txs; nonces carry over. */
    ph.batch = 8;
    ph.duration_s = 1.0;
    acc0 = f.accepted;
    ref0 = f.refused;
    uint64_t req0 = f.requests;
    ck_assert_int_eq(ctl_load_run(l, &ph, &r), 0);
    check_phase(&r, 400, f.accepted - acc0, f.refused - ref0);
    ck_assert_uint_eq(f.bulk_requests, f.requests - req0);
    ck_assert_uint_le(f.bulk_requests, 400);

    ck_assert_uint_eq(f.gaps, 0);
    ck_assert_uint_eq(f.bad, 0);
    ck_assert_uint_eq(f.sse_opens, 3); /* the second phase opened its own */
    /* Without --settle no phase asked for the nodes' status. */
    ck_assert_uint_eq(f.status_polls[0] + f.status_polls[1], 0);
    ck_assert(r.settled);

    /* --settle: node 0 still holds 3 txs, node 1 holds 5; the phase waits until both report an
     * empty mempool, so each was asked until it said 0. */
    ph.batch = 1;
    ph.duration_s = 0.5;
    ph.settle_s = 30;
    f.status_left[0] = 3;
    f.status_left[1] = 5;
    acc0 = f.accepted;
    ref0 = f.refused;
    ck_assert_int_eq(ctl_load_run(l, &ph, &r), 0);
    ck_assert(r.settled);
    ck_assert(r.settle_ms > 0);
    ck_assert_uint_eq(f.status_left[0], 0);
    ck_assert_uint_eq(f.status_left[1], 0);
    ck_assert_uint_ge(f.status_polls[0], 4);
    ck_assert_uint_ge(f.status_polls[1], 6);
    check_phase(&r, 200, f.accepted - acc0, f.refused - ref0);
    /* A node that never empties: the wait ends after settle_s, the phase runs, the result says
     * it did not settle. */
    ph.settle_s = 0.5;
    f.status_left[1] = 1000000;
    ck_assert_int_eq(ctl_load_run(l, &ph, &r), 0);
    ck_assert(!r.settled);
    ck_assert(r.settle_ms >= 500);
    ck_assert_uint_gt(r.accepted, 0);
    ctl_load_free(l);
    fnode_stop(&f);
    unlink(gpath);
}
END_TEST

/* The cluster's genesis with scale participants (extra_participants): every signer, then each
 * scale key once in order (re-derived here from its definition, not from load.c), read back by
 * the node's own genesis loader; a cluster asking for more than LEDGER_PARTICIPANTS_MAX in all is
 * refused before anything is written. */
START_TEST(cluster_genesis_streams_the_scale_participants_and_refuses_too_many) {
    char dir[] = "/tmp/tem-load-genesis-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ctl_load_cluster cl;
    ctl_load_cluster_config cc = {.dir = dir, .base_port = 20000, .n_nodes = 4, .signers = 5, .seed = 3,
                                  .extra_participants = 1000};
    memset(&cl, 0, sizeof cl);
    ck_assert_int_eq(ctl_load_cluster_genesis(&cc, &cl), 0);
    ck_assert_str_eq(cl.http[3], "127.0.0.1:20013");
    char path[128];
    snprintf(path, sizeof path, "%s/genesis.json", dir);
    ck_assert_str_eq(cl.genesis, path);
    ledger_genesis g;
    char err[256];
    ck_assert_msg(ledger_genesis_load(path, &g, err, sizeof err) == LEDGER_OK, "genesis: %s", err);
    ck_assert_uint_eq(g.n_participants, 1005);
    ck_assert_uint_eq(g.n_validators, 4);
    for (uint32_t i = 0; i < 1005; i++) {
        uint8_t sec[32], pub[33];
        if (i < 5) {
            ctl_load_signer_key(3, i, sec, pub);
        } else {
            uint8_t in[13] = "tem-scale";
            tem_put_u32le(in + 9, i - 5);
            pub[0] = 0x02;
            ledger_sha256(pub + 1, in, sizeof in);
        }
        ck_assert_msg(memcmp(g.participants[i].pubkey, pub, 33) == 0, "participant %u", i);
    }
    ledger_genesis_free(&g);
    char cmd[96];
    snprintf(cmd, sizeof cmd, "rm -rf %s/*", dir); /* a clean dir: refused for the count alone */
    ck_assert_int_eq(system(cmd), 0);
    cc.extra_participants = LEDGER_PARTICIPANTS_MAX - 4; /* 5 signers: one too many */
    ck_assert_int_eq(ctl_load_cluster_genesis(&cc, &cl), -1);
    ck_assert_int_eq(ctl_load_cluster_start(&cc, &cl), -1);
    ck_assert_int_eq(access(path, F_OK), -1);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

int main(void) {
    Suite *s = suite_create("load");
    TCase *t = tcase_create("load");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, load_offers_on_schedule_and_counts_each_answer_once);
    tcase_add_test(t, cluster_genesis_streams_the_scale_participants_and_refuses_too_many);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
