/* bench_pbft.c: committed blocks per second and consensus signatures verified per second for a
 * pBFT cluster of n = 4 and n = 7 run in one process without network delay, 1,000 txs a block,
 * printed beside the machine's own Ed25519 verifications per second measured in the same run.
 * Each replica runs behind the shared host (consensus/host.c), as in temd and the simulator. */
#include "consensus/host.h"

#include <sodium.h>
#include <time.h>

#define N_MAX 7
#define TXS_PER_BLOCK 1000
#define TX_BYTES 150 /* a signed order is about this size on the wire */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t g_verifies;

static int count_verify(void *ctx, const uint8_t pub[32], const uint8_t *msg, size_t len,
                        const uint8_t sig[64]) {
    (void)ctx;
    g_verifies++;
    return ledger_ed_verify(pub, msg, len, sig);
}

/* The node hashes a block's header; hashing all 150 kB here would bench SHA-256 instead. */
static int hash_header(void *ctx, const uint8_t *b, size_t len, uint8_t out[32]) {
    (void)ctx;
    if (len < 64) return -1;
    ledger_sha256(out, b, 64);
    return 0;
}

typedef struct {
    uint32_t to, from;
    uint8_t *msg;
    size_t len;
} qmsg;

struct cluster;
typedef struct {
    struct cluster *c;
    uint32_t i;
} member;

typedef struct cluster {
    uint32_t n;
    pbft_replica r[N_MAX];
    host h[N_MAX];
    member m[N_MAX];
    qmsg *q;
    size_t qn, qhead, qcap;
    uint64_t want_proposal[N_MAX];
    uint64_t want_valid[N_MAX];
    uint8_t want_hash[N_MAX][32];
    uint64_t delivered[N_MAX];
    uint8_t *block;
    size_t block_len;
} cluster;

/* The host's I/O: an in-memory network, no disk (writes are done at once), no clock. */
static void io_send(void *ctx, uint32_t dst, const uint8_t *msg, size_t len) {
    member *me = ctx;
    cluster *c = me->c;
    for (uint32_t to = 0; to < c->n; to++) {
        if (to == me->i || (dst != PBFT_TO_ALL && dst != to)) continue;
        if (c->qn == c->qcap) {
            c->qcap = c->qcap ? 2 * c->qcap : 1024;
            c->q = tem_realloc(c->q, c->qcap * sizeof *c->q);
            TEM_ASSERT(c->q != NULL);
        }
        qmsg *m = &c->q[c->qn++];
        m->to = to;
        m->from = me->i;
        m->msg = tem_malloc(len);
        TEM_ASSERT(m->msg != NULL);
        memcpy(m->msg, msg, len);
        m->len = len;
    }
}
static int io_persist(void *ctx, const uint8_t *rec, size_t len) {
    (void)ctx, (void)rec, (void)len;
    return PBFT_OK;
}
static void io_set_timer(void *ctx, pbft_timer t, uint64_t ms, uint64_t seq) {
    (void)ctx, (void)t, (void)ms, (void)seq; /* no clock, no loss: timers never fire */
}
static void io_cancel_timer(void *ctx, pbft_timer t) { (void)ctx, (void)t; }
static int io_deliver(void *ctx, const pbft_action *a) {
    member *me = ctx;
    me->c->delivered[me->i] = a->height;
    return PBFT_OK;
}
static void io_request_proposal(void *ctx, uint64_t height) {
    member *me = ctx;
    me->c->want_proposal[me->i] = height;
}
static int io_validate(void *ctx, uint64_t height, const uint8_t hash[32], const uint8_t *b, size_t len) {
    (void)b, (void)len;
    member *me = ctx;
    me->c->want_valid[me->i] = height;
    memcpy(me->c->want_hash[me->i], hash, 32);
    return PBFT_OK;
}
static void io_request_blocks(void *ctx, uint64_t from) { (void)ctx, (void)from; }
static void io_stepped(void *ctx, const pbft_event *ev, int rc) {
    (void)ctx, (void)ev;
    TEM_ASSERT(rc != PBFT_ENOMEM);
}

static void step(cluster *c, uint32_t i, const pbft_event *ev) {
    TEM_ASSERT(host_post(&c->h[i], ev) == PBFT_OK);
}

static uint64_t min_delivered(const cluster *c) {
    uint64_t m = UINT64_MAX;
    for (uint32_t i = 0; i < c->n; i++)
        if (c->delivered[i] < m) m = c->delivered[i];
    return m;
}

/* Runs a cluster of n until every replica delivered `blocks`; returns seconds taken. */
static double run(uint32_t n, uint64_t blocks, uint64_t *verifies) {
    static uint8_t pub[N_MAX][32], sec[N_MAX][64];
    for (uint32_t i = 0; i < n; i++) {
        uint8_t seed[32];
        memset(seed, 0x60 + (int)i, 32);
        TEM_ASSERT(crypto_sign_seed_keypair(pub[i], sec[i], seed) == 0);
    }
    cluster *c = tem_calloc(1, sizeof *c);
    TEM_ASSERT(c != NULL);
    c->n = n;
    c->block_len = 64 + (size_t)TXS_PER_BLOCK * TX_BYTES;
    c->block = tem_malloc(c->block_len);
    TEM_ASSERT(c->block != NULL);
    for (size_t i = 0; i < c->block_len; i++) c->block[i] = (uint8_t)(i * 131 + 7);
    for (uint32_t i = 0; i < n; i++) {
        pbft_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.n = n;
        cfg.self = i;
        for (uint32_t k = 0; k < n; k++) memcpy(cfg.pubkeys[k], pub[k], 32);
        memcpy(cfg.secret, sec[i], 64);
        memset(cfg.genesis_hash, 0xb1, 32);
        cfg.checkpoint_interval = 16;
        cfg.view_timeout_ms = 2000;
        cfg.view_timeout_doublings_max = 4;
        cfg.hash = hash_header;
        cfg.verify = count_verify;
        TEM_ASSERT(pbft_replica_init(&c->r[i], &cfg) == PBFT_OK);
        c->m[i] = (member){c, i};
        host_io io = {.ctx = &c->m[i], .send = io_send, .persist = io_persist, .set_timer = io_set_timer,
                      .cancel_timer = io_cancel_timer, .deliver = io_deliver,
                      .request_proposal = io_request_proposal, .validate = io_validate,
                      .request_blocks = io_request_blocks, .stepped = io_stepped};
        TEM_ASSERT(host_init(&c->h[i], &c->r[i], &io) == PBFT_OK);
        TEM_ASSERT(host_start(&c->h[i]) == PBFT_OK);
    }
    g_verifies = 0;
    double t0 = now_s();
    while (min_delivered(c) < blocks) {
        bool work = false;
        while (c->qhead < c->qn) {
            qmsg m = c->q[c->qhead++];
            pbft_event ev = {0};
            ev.kind = PBFT_EV_MESSAGE;
            ev.from = m.from;
            ev.data = m.msg;
            ev.len = m.len;
            step(c, m.to, &ev);
            tem_free(m.msg);
            work = true;
        }
        if (c->qhead == c->qn) c->qhead = c->qn = 0;
        for (uint32_t i = 0; i < n; i++) {
            if (c->want_proposal[i]) {
                uint64_t h = c->want_proposal[i];
                c->want_proposal[i] = 0;
                tem_put_u64le(c->block, h); /* a new header per height */
                pbft_event ev = {0};
                ev.kind = PBFT_EV_PROPOSAL;
                ev.height = h;
                ev.data = c->block;
                ev.len = c->block_len;
                step(c, i, &ev);
                work = true;
            }
            if (c->want_valid[i]) {
                uint64_t h = c->want_valid[i];
                c->want_valid[i] = 0;
                TEM_ASSERT(host_validated(&c->h[i], h, c->want_hash[i], true) == PBFT_OK);
                work = true;
            }
        }
        TEM_ASSERT(work); /* a lossless cluster never stalls */
    }
    double dt = now_s() - t0;
    *verifies = g_verifies;
    for (uint32_t i = 0; i < n; i++) {
        host_free(&c->h[i]);
        pbft_replica_free(&c->r[i]);
    }
    for (size_t j = c->qhead; j < c->qn; j++) tem_free(c->q[j].msg);
    tem_free(c->q);
    tem_free(c->block);
    tem_free(c);
    return dt;
}

/* The machine's limit: bare Ed25519 verifications of 32-byte digests, one core. */
static double ed25519_verifies_per_s(void) {
    uint8_t pk[32], sk[64], msg[32] = {1}, sig[64];
    TEM_ASSERT(crypto_sign_keypair(pk, sk) == 0);
    ledger_ed_sign(sk, msg, 32, sig);
    uint64_t n = 0;
    double t0 = now_s(), dt;
    do {
        for (int i = 0; i < 256; i++) TEM_ASSERT(ledger_ed_verify(pk, msg, 32, sig) == 0);
        n += 256;
        dt = now_s() - t0;
    } while (dt < 0.5);
    return (double)n / dt;
}

int main(void) {
    TEM_ASSERT(sodium_init() >= 0);
    double limit = ed25519_verifies_per_s();
    const struct {
        uint32_t n;
        uint64_t blocks;
    } runs[] = {{4, 300}, {7, 150}};
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        uint64_t verifies;
        double dt = run(runs[i].n, runs[i].blocks, &verifies);
        double bps = (double)runs[i].blocks / dt, vps = (double)verifies / dt;
        printf("bench pbft_n%u_committed_blocks %.1f blocks/s limit %.0f ed25519-verifies/s "
               "ratio %.6f\n",
               runs[i].n, bps, limit, bps / limit);
        printf("bench pbft_n%u_votes_verified %.0f verifies/s limit %.0f ed25519-verifies/s "
               "ratio %.3f\n",
               runs[i].n, vps, limit, vps / limit);
    }
    return 0;
}
