/* test_pbft.c: Check suite for consensus/: every message handler fed hand-built messages (valid,
 * wrong view, wrong signature, unknown sender, outside the watermarks, conflicting digest,
 * replayed), the vote record across a restart, the normal case in a small lossless cluster, and
 * the regression scenarios from the PBFT family's known failures. */
#include "consensus/host.h"

#include <check.h>
#include <sodium.h>

#include "pbft_fixture.h"

#define N_MAX 7

static uint8_t k_pub[N_MAX][32], k_sec[N_MAX][64];
static const uint8_t k_genesis[32] = {0x9e, 0x11, 0x55};

static void keys(void) {
    static bool done;
    if (done) return;
    pbft_fx_keys(N_MAX, 0x40, k_pub, k_sec);
    done = true;
}

static void config(pbft_config *c, uint32_t n, uint32_t self, uint32_t k) {
    memset(c, 0, sizeof *c);
    c->n = n;
    c->self = self;
    for (uint32_t i = 0; i < n; i++) memcpy(c->pubkeys[i], k_pub[i], 32);
    memcpy(c->secret, k_sec[self], 64);
    memcpy(c->genesis_hash, k_genesis, 32);
    c->checkpoint_interval = k;
    c->view_timeout_ms = 1000;
    c->view_timeout_doublings_max = 4;
    c->hash = pbft_fx_hash;
    memcpy(c->start_hash, k_genesis, 32);
}

/* A block for height h: any non-empty bytes hash to its identity here. */
static size_t block(uint8_t out[16], uint64_t h, uint8_t variant) {
    memcpy(out, "blk", 3);
    tem_put_u64le(out + 3, h);
    out[11] = variant;
    memset(out + 12, 0, 4);
    return 16;
}

/* ------------------------------------------------------------------ message builders */
static uint8_t *msg_pp(uint32_t sender, uint64_t view, uint64_t h, const uint8_t *blk, size_t blen,
                       size_t *len) {
    uint8_t hash[32];
    ledger_sha256(hash, blk, blen);
    Tem__V1__PbftMessage m = TEM__V1__PBFT_MESSAGE__INIT;
    Tem__V1__PbftPrePrepare p = TEM__V1__PBFT_PRE_PREPARE__INIT;
    p.view = view;
    p.height = h;
    p.block_hash.data = hash;
    p.block_hash.len = 32;
    p.block.data = (uint8_t *)blk;
    p.block.len = blen;
    m.sender = sender;
    m.kind_case = TEM__V1__PBFT_MESSAGE__KIND_PRE_PREPARE;
    m.pre_prepare = &p;
    uint8_t *out;
    ck_assert_int_eq(pbft_msg_sign_pack(k_genesis, k_sec[sender % N_MAX], &m, &out, len), PBFT_OK);
    return out;
}

static uint8_t *msg_vote(int kind, uint32_t sender, uint64_t view, uint64_t h,
                         const uint8_t hash[32], size_t *len) {
    Tem__V1__PbftMessage m = TEM__V1__PBFT_MESSAGE__INIT;
    Tem__V1__PbftPrepare p = TEM__V1__PBFT_PREPARE__INIT;
    Tem__V1__PbftCommit c = TEM__V1__PBFT_COMMIT__INIT;
    Tem__V1__PbftCheckpoint k = TEM__V1__PBFT_CHECKPOINT__INIT;
    m.sender = sender;
    m.kind_case = kind;
    if (kind == TEM__V1__PBFT_MESSAGE__KIND_PREPARE) {
        p.view = view, p.height = h, p.block_hash.data = (uint8_t *)hash, p.block_hash.len = 32;
        m.prepare = &p;
    } else if (kind == TEM__V1__PBFT_MESSAGE__KIND_COMMIT) {
        c.view = view, c.height = h, c.block_hash.data = (uint8_t *)hash, c.block_hash.len = 32;
        m.commit = &c;
    } else {
        k.height = h, k.block_hash.data = (uint8_t *)hash, k.block_hash.len = 32;
        m.checkpoint = &k;
    }
    uint8_t *out;
    ck_assert_int_eq(pbft_msg_sign_pack(k_genesis, k_sec[sender % N_MAX], &m, &out, len), PBFT_OK);
    return out;
}

/* Re-labels a signed message with another sender (its signature no longer matches). */
static void relabel(uint8_t **buf, size_t *len, uint32_t sender) {
    Tem__V1__PbftMessage *m = tem__v1__pbft_message__unpack(NULL, *len, *buf);
    ck_assert_ptr_nonnull(m);
    m->sender = sender;
    size_t l = tem__v1__pbft_message__get_packed_size(m);
    uint8_t *b = tem_malloc(l);
    tem__v1__pbft_message__pack(m, b);
    tem__v1__pbft_message__free_unpacked(m, NULL);
    tem_free(*buf);
    *buf = b;
    *len = l;
}

static int feed(pbft_replica *r, pbft_actions *out, uint32_t from, const uint8_t *buf, size_t len) {
    pbft_event ev = {0};
    ev.kind = PBFT_EV_MESSAGE;
    ev.from = from;
    ev.data = buf;
    ev.len = len;
    return pbft_replica_step(r, &ev, out);
}

static uint32_t count_kind(const pbft_actions *a, pbft_action_kind k) {
    uint32_t c = 0;
    for (uint32_t i = 0; i < a->n; i++) c += a->a[i].kind == k;
    return c;
}

static const pbft_action *find_kind(const pbft_actions *a, pbft_action_kind k) {
    for (uint32_t i = 0; i < a->n; i++)
        if (a->a[i].kind == k) return &a->a[i];
    return NULL;
}

/* Kind of the message a SEND/BROADCAST carries. */
static int msg_kind_of(const pbft_action *a) {
    Tem__V1__PbftMessage *m = tem__v1__pbft_message__unpack(NULL, a->msg_len, a->msg);
    ck_assert_ptr_nonnull(m);
    int k = m->kind_case;
    tem__v1__pbft_message__free_unpacked(m, NULL);
    return k;
}

static uint32_t count_msgs(const pbft_actions *a, int kind) {
    uint32_t c = 0;
    for (uint32_t i = 0; i < a->n; i++)
        if ((a->a[i].kind == PBFT_ACT_BROADCAST || a->a[i].kind == PBFT_ACT_SEND) &&
            msg_kind_of(&a->a[i]) == kind)
            c++;
    return c;
}

/* ------------------------------------------------------------------ a small lossless cluster
 * Each replica runs behind the shared host (consensus/host.c), as in temd and the simulator; the
 * cluster implements the host's I/O in memory. */
typedef struct {
    uint32_t to, from;
    uint8_t *msg;
    size_t len;
} qmsg;

struct cluster;
typedef struct {
    struct cluster *c;
    uint32_t i;
} cl_member;

typedef struct cluster {
    uint32_t n, k;
    pbft_replica r[N_MAX];
    host h[N_MAX];
    cl_member m[N_MAX];
    int last_rc[N_MAX]; /* the replica's answer to the last event its host stepped */
    bool up[N_MAX];
    bool cut[N_MAX]; /* messages to and from a cut replica are dropped */
    uint8_t *record[N_MAX];
    size_t record_len[N_MAX];
    uint64_t view_timer[N_MAX];
    uint64_t view_timer_ms[N_MAX];
    uint64_t fetch_timer[N_MAX]; /* seq of the armed fetch timer, 0 = none */
    uint64_t fetch_timer_ms[N_MAX];
    bool delay[N_MAX][N_MAX]; /* messages from i to j wait in `held` while set */
    qmsg *held;
    size_t nheld;
    uint64_t max_height; /* proposals above this height wait */
    uint64_t delivered_n[N_MAX];
    uint8_t delivered[N_MAX][64][32];
    uint8_t *blocks[N_MAX][64];
    size_t block_len[N_MAX][64];
    uint8_t *certs[N_MAX][64];
    size_t cert_len[N_MAX][64];
    qmsg *q;
    size_t qn, qcap, qhead;
    /* pending node work */
    uint64_t want_proposal[N_MAX];
    uint64_t want_fetch[N_MAX];
    bool hold_fetch[N_MAX]; /* a fetch stays unanswered while set */
    bool withhold[N_MAX];   /* this replica serves no blocks (a Byzantine block server) */
    int drop_kind_to[N_MAX]; /* messages of this kind to the replica are lost (0 = none) */
    struct {
        uint64_t h;
        uint8_t hash[32];
    } want_valid[N_MAX][8];
    uint32_t want_valid_n[N_MAX];
    uint8_t variant;
} cluster;

/* The host's I/O. */
static void cl_send(void *ctx, uint32_t dst, const uint8_t *msg, size_t len) {
    cl_member *me = ctx;
    cluster *c = me->c;
    uint32_t i = me->i;
    for (uint32_t to = 0; to < c->n; to++) {
        if (to == i || (dst != PBFT_TO_ALL && dst != to)) continue;
        if (c->cut[to] || c->cut[i]) continue;
        if (c->qn == c->qcap) {
            c->qcap = c->qcap ? 2 * c->qcap : 256;
            c->q = tem_realloc(c->q, c->qcap * sizeof *c->q);
            ck_assert_ptr_nonnull(c->q);
        }
        qmsg *m = &c->q[c->qn++];
        m->to = to;
        m->from = i;
        m->msg = tem_malloc(len);
        memcpy(m->msg, msg, len);
        m->len = len;
    }
}

static int cl_persist(void *ctx, const uint8_t *rec, size_t len) {
    cl_member *me = ctx;
    cluster *c = me->c;
    tem_free(c->record[me->i]);
    c->record[me->i] = tem_malloc(len);
    memcpy(c->record[me->i], rec, len);
    c->record_len[me->i] = len;
    return PBFT_OK;
}

static void cl_set_timer(void *ctx, pbft_timer t, uint64_t ms, uint64_t seq) {
    cl_member *me = ctx;
    if (t == PBFT_TIMER_VIEW) {
        me->c->view_timer[me->i] = seq;
        me->c->view_timer_ms[me->i] = ms;
    } else {
        me->c->fetch_timer[me->i] = seq;
        me->c->fetch_timer_ms[me->i] = ms;
    }
}

static void cl_cancel_timer(void *ctx, pbft_timer t) {
    cl_member *me = ctx;
    if (t == PBFT_TIMER_FETCH) me->c->fetch_timer[me->i] = 0;
}

static int cl_deliver(void *ctx, const pbft_action *x) {
    cl_member *me = ctx;
    cluster *c = me->c;
    uint32_t i = me->i;
    uint64_t h = x->height;
    ck_assert_uint_eq(h, c->delivered_n[i] + 1);
    ck_assert_uint_lt(h, 64);
    memcpy(c->delivered[i][h], x->block_hash, 32);
    c->blocks[i][h] = tem_malloc(x->msg_len);
    memcpy(c->blocks[i][h], x->msg, x->msg_len);
    c->block_len[i][h] = x->msg_len;
    c->certs[i][h] = tem_malloc(x->cert_len);
    memcpy(c->certs[i][h], x->cert, x->cert_len);
    c->cert_len[i][h] = x->cert_len;
    c->delivered_n[i] = h;
    return PBFT_OK;
}

static void cl_request_proposal(void *ctx, uint64_t height) {
    cl_member *me = ctx;
    me->c->want_proposal[me->i] = height;
}

static int cl_validate(void *ctx, uint64_t height, const uint8_t hash[32], const uint8_t *b, size_t len) {
    (void)b, (void)len;
    cl_member *me = ctx;
    cluster *c = me->c;
    uint32_t i = me->i;
    ck_assert_uint_lt(c->want_valid_n[i], 8);
    c->want_valid[i][c->want_valid_n[i]].h = height;
    memcpy(c->want_valid[i][c->want_valid_n[i]].hash, hash, 32);
    c->want_valid_n[i]++;
    return PBFT_OK;
}

static void cl_request_blocks(void *ctx, uint64_t from) {
    cl_member *me = ctx;
    me->c->want_fetch[me->i] = from;
}

/* Node work whose outcome the cluster tests judge by delivered blocks, not by each return. */
static void cl_stepped(void *ctx, const pbft_event *ev, int rc) {
    cl_member *me = ctx;
    me->c->last_rc[me->i] = rc;
    ck_assert_int_ne(rc, PBFT_ENOMEM);
    if (ev->kind != PBFT_EV_MESSAGE) ck_assert_int_ne(rc, PBFT_EINVAL);
}

static void cl_post(cluster *c, uint32_t i, const pbft_event *ev) {
    ck_assert_int_eq(host_post(&c->h[i], ev), PBFT_OK);
}

static void cl_boot(cluster *c, uint32_t i) {
    pbft_config cfg;
    config(&cfg, c->n, i, c->k);
    uint64_t h = c->delivered_n[i];
    if (h > 0) {
        cfg.start_height = h;
        memcpy(cfg.start_hash, c->delivered[i][h], 32);
        cfg.start_cert = c->certs[i][h];
        cfg.start_cert_len = c->cert_len[i][h];
    }
    ck_assert_int_eq(pbft_replica_init(&c->r[i], &cfg), PBFT_OK);
    if (c->record[i])
        ck_assert_int_eq(pbft_replica_restore(&c->r[i], c->record[i], c->record_len[i]), PBFT_OK);
    c->m[i] = (cl_member){c, i};
    host_io io = {.ctx = &c->m[i], .send = cl_send, .persist = cl_persist, .set_timer = cl_set_timer,
                  .cancel_timer = cl_cancel_timer, .deliver = cl_deliver,
                  .request_proposal = cl_request_proposal, .validate = cl_validate,
                  .request_blocks = cl_request_blocks, .stepped = cl_stepped};
    ck_assert_int_eq(host_init(&c->h[i], &c->r[i], &io), PBFT_OK);
    c->up[i] = true;
    ck_assert_int_eq(host_start(&c->h[i]), PBFT_OK);
}

static void cl_init(cluster *c, uint32_t n, uint32_t k) {
    keys();
    memset(c, 0, sizeof *c);
    c->n = n;
    c->k = k;
    c->max_height = 40;
    for (uint32_t i = 0; i < n; i++) cl_boot(c, i);
}

static void cl_crash(cluster *c, uint32_t i) {
    host_free(&c->h[i]);
    pbft_replica_free(&c->r[i]);
    c->up[i] = false;
    c->want_proposal[i] = 0;
    c->want_fetch[i] = 0;
    c->want_valid_n[i] = 0;
}

static void cl_free(cluster *c) {
    for (uint32_t i = 0; i < c->n; i++) {
        if (c->up[i]) {
            host_free(&c->h[i]);
            pbft_replica_free(&c->r[i]);
        }
        tem_free(c->record[i]);
        for (int h = 0; h < 64; h++) {
            tem_free(c->blocks[i][h]);
            tem_free(c->certs[i][h]);
        }
    }
    for (size_t j = c->qhead; j < c->qn; j++) tem_free(c->q[j].msg);
    tem_free(c->q);
    for (size_t j = 0; j < c->nheld; j++) tem_free(c->held[j].msg);
    tem_free(c->held);
}

static void cl_fire_view_timer(cluster *c, uint32_t i) {
    pbft_event ev = {0};
    ev.kind = PBFT_EV_TIMER;
    ev.timer = PBFT_TIMER_VIEW;
    ev.timer_seq = c->view_timer[i];
    cl_post(c, i, &ev);
    ck_assert_int_eq(c->last_rc[i], PBFT_OK);
}

static void cl_fire_fetch_timer(cluster *c, uint32_t i) {
    pbft_event ev = {0};
    ev.kind = PBFT_EV_TIMER;
    ev.timer = PBFT_TIMER_FETCH;
    ev.timer_seq = c->fetch_timer[i];
    c->fetch_timer[i] = 0;
    cl_post(c, i, &ev);
    ck_assert_int_eq(c->last_rc[i], PBFT_OK);
}

/* Hands the held messages to their replicas, in the order they were held. */
static void cl_release(cluster *c) {
    for (size_t j = 0; j < c->nheld; j++) {
        qmsg m = c->held[j];
        pbft_event ev = {.kind = PBFT_EV_MESSAGE, .from = m.from, .data = m.msg, .len = m.len};
        if (c->up[m.to]) cl_post(c, m.to, &ev);
        tem_free(m.msg);
    }
    c->nheld = 0;
}

/* Runs messages and node work until nothing is left (or `budget` steps). Returns steps run. */
static uint32_t cl_run(cluster *c, uint32_t budget) {
    uint32_t steps = 0;
    bool work = true;
    while (work && steps < budget) {
        work = false;
        while (c->qhead < c->qn && steps < budget) {
            qmsg m = c->q[c->qhead++];
            steps++;
            work = true;
            if (c->delay[m.from][m.to]) {
                c->held = tem_realloc(c->held, (c->nheld + 1) * sizeof *c->held);
                ck_assert_ptr_nonnull(c->held);
                c->held[c->nheld++] = m;
                continue;
            }
            bool lost = false;
            if (c->drop_kind_to[m.to]) {
                Tem__V1__PbftMessage *pm = tem__v1__pbft_message__unpack(NULL, m.len, m.msg);
                lost = pm && (int)pm->kind_case == c->drop_kind_to[m.to];
                if (pm) tem__v1__pbft_message__free_unpacked(pm, NULL);
            }
            if (!lost && c->up[m.to] && !c->cut[m.to] && !c->cut[m.from]) {
                pbft_event ev = {.kind = PBFT_EV_MESSAGE, .from = m.from, .data = m.msg, .len = m.len};
                cl_post(c, m.to, &ev);
            }
            tem_free(m.msg);
        }
        for (uint32_t i = 0; i < c->n; i++) {
            if (!c->up[i] || c->cut[i]) continue;
            if (c->want_proposal[i] && c->want_proposal[i] <= c->max_height) {
                uint64_t h = c->want_proposal[i];
                c->want_proposal[i] = 0;
                uint8_t blk[16];
                size_t bl = block(blk, h, c->variant);
                pbft_event ev = {0};
                ev.kind = PBFT_EV_PROPOSAL;
                ev.height = h;
                ev.data = blk;
                ev.len = bl;
                cl_post(c, i, &ev);
                work = true;
            }
            while (c->want_valid_n[i] > 0) {
                uint32_t k = --c->want_valid_n[i];
                ck_assert_int_eq(host_validated(&c->h[i], c->want_valid[i][k].h, c->want_valid[i][k].hash, true),
                                 PBFT_OK);
                work = true;
            }
            if (c->want_fetch[i] && !c->hold_fetch[i]) {
                uint64_t from = c->want_fetch[i];
                c->want_fetch[i] = 0;
                uint32_t best = i;
                for (uint32_t j = 0; j < c->n; j++)
                    if (c->up[j] && !c->cut[j] && !c->withhold[j] && c->delivered_n[j] > c->delivered_n[best])
                        best = j;
                for (uint64_t h = from; h <= c->delivered_n[best]; h++) {
                    pbft_event ev = {0};
                    ev.kind = PBFT_EV_BLOCK_FETCHED;
                    ev.height = h;
                    ev.data = c->blocks[best][h];
                    ev.len = c->block_len[best][h];
                    ev.cert = c->certs[best][h];
                    ev.cert_len = c->cert_len[best][h];
                    cl_post(c, i, &ev);
                }
                work = true;
            }
        }
    }
    return steps;
}

static void cl_assert_agreement(const cluster *c) {
    for (uint32_t i = 0; i < c->n; i++)
        for (uint32_t j = 0; j < c->n; j++) {
            uint64_t m = c->delivered_n[i] < c->delivered_n[j] ? c->delivered_n[i] : c->delivered_n[j];
            for (uint64_t h = 1; h <= m; h++)
                ck_assert_msg(memcmp(c->delivered[i][h], c->delivered[j][h], 32) == 0,
                              "replicas %u and %u differ at height %llu", i, j,
                              (unsigned long long)h);
        }
}

static uint64_t cl_min_delivered(const cluster *c) {
    uint64_t m = UINT64_MAX;
    for (uint32_t i = 0; i < c->n; i++)
        if (c->up[i] && !c->cut[i] && c->delivered_n[i] < m) m = c->delivered_n[i];
    return m;
}

/* Lets the chain grow to height h and runs until the cluster is quiet. */
static void cl_run_to(cluster *c, uint64_t h) {
    c->max_height = h;
    cl_run(c, 1000000);
}

/* A 4-validator cluster past height 3 with every message delivered: where the view-change and
 * catch-up tests start. *before: the lowest height every replica has delivered. */
static cluster *cl_quiet_after_3(uint64_t *before) {
    cluster *c = tem_calloc(1, sizeof *c);
    cl_init(c, 4, 4);
    cl_run_to(c, 3);
    cl_run(c, 200000);
    *before = cl_min_delivered(c);
    return c;
}

/* ================================================================== tests */

START_TEST(pbft_error_codes_have_names_in_their_range) {
    ck_assert_str_eq(pbft_strerror(PBFT_OK), "ok");
    int codes[] = {
#define PBFT_X(name, val, msg) PBFT_##name,
        PBFT_ERRNO_MAP(PBFT_X)
#undef PBFT_X
    };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        ck_assert_int_le(codes[i], -200);
        ck_assert_int_gt(codes[i], -300);
        ck_assert_str_ne(pbft_strerror(codes[i]), "unknown pbft error");
    }
    ck_assert_str_eq(pbft_strerror(-1), "unknown pbft error");
    ck_assert_int_eq(pbft_planted_bug_by_name("prepare-quorum-f1"), PBFT_BUG_PREPARE_QUORUM_F1);
    ck_assert_int_eq(pbft_planted_bug_by_name("nope"), -1);
    ck_assert_ptr_null(pbft_planted_bug_name(PBFT_BUG_COUNT));
}
END_TEST

START_TEST(pbft_init_rejects_bad_configs) {
    keys();
    struct {
        const char *name;
        uint32_t n, self, k;
        uint64_t timeout;
        bool no_hash;
    } rows[] = {
        {"three validators", 3, 0, 4, 1000, false},
        {"self out of range", 4, 4, 4, 1000, false},
        {"zero checkpoint interval", 4, 0, 0, 1000, false},
        {"checkpoint interval above the log", 4, 0, PBFT_CHECKPOINT_INTERVAL_MAX + 1, 1000, false},
        {"zero timeout", 4, 0, 4, 0, false},
        {"no hash callback", 4, 0, 4, 1000, true},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        pbft_config cfg;
        config(&cfg, 4, 0, 4);
        cfg.n = rows[i].n;
        cfg.self = rows[i].self;
        cfg.checkpoint_interval = rows[i].k;
        cfg.view_timeout_ms = rows[i].timeout;
        if (rows[i].no_hash) cfg.hash = NULL;
        pbft_replica r;
        ck_assert_msg(pbft_replica_init(&r, &cfg) == PBFT_EINVAL, "row %s", rows[i].name);
    }
    /* A start height needs the certificate of that block. */
    pbft_config cfg;
    config(&cfg, 4, 0, 4);
    cfg.start_height = 5;
    pbft_replica r;
    ck_assert_int_eq(pbft_replica_init(&r, &cfg), PBFT_EINVAL);
}
END_TEST

/* A replica (index 1 of 4, view 0, K = 4 so the window is heights 1..8) and a valid block. */
typedef struct {
    pbft_replica r;
    pbft_actions out;
    uint8_t blk[16];
    size_t blen;
    uint8_t hash[32];
} one;

static void one_init(one *o, uint32_t self) {
    keys();
    pbft_config cfg;
    config(&cfg, 4, self, 4);
    ck_assert_int_eq(pbft_replica_init(&o->r, &cfg), PBFT_OK);
    pbft_actions_init(&o->out);
    ck_assert_int_eq(pbft_replica_start(&o->r, &o->out), PBFT_OK);
    ck_assert_int_eq(count_kind(&o->out, PBFT_ACT_SET_TIMER), 1);
    pbft_actions_clear(&o->out);
    o->blen = block(o->blk, 1, 0);
    ledger_sha256(o->hash, o->blk, o->blen);
}

static void one_free(one *o) {
    pbft_actions_clear(&o->out);
    pbft_replica_free(&o->r);
}

START_TEST(pbft_pre_prepare_handler_accepts_only_what_it_should) {
    struct {
        const char *name;
        uint32_t sender, signer;
        uint64_t view, height;
        int variant; /* block variant; -1 = hash of another block */
        int want;
    } rows[] = {
        {"valid", 0, 0, 0, 1, 0, PBFT_OK},
        {"from a replica that is not the primary", 2, 2, 0, 1, 0, PBFT_EVIEW},
        {"for a view below the current one", 0, 0, 0, 1, 0, PBFT_EVIEW}, /* replica moved to 4 */
        {"wrong signature", 0, 3, 0, 1, 0, PBFT_ESIG},
        {"unknown sender", 9, 0, 0, 1, 0, PBFT_ESENDER},
        {"above the high watermark", 0, 0, 0, 9, 0, PBFT_EWATERMARK},
        {"at height zero", 0, 0, 0, 0, 0, PBFT_EWATERMARK},
        {"block not matching its hash", 0, 0, 0, 1, -1, PBFT_EHASH},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        one o;
        one_init(&o, 1);
        if (i == 2) {
            /* Move the replica to view 4 (primary 0 again) through four timeouts' worth of
             * f+1 VIEW-CHANGEs is long; a restored record does the same. */
            Tem__V1__PbftVoteRecord rec = TEM__V1__PBFT_VOTE_RECORD__INIT;
            rec.view = 4;
            uint8_t buf[16];
            size_t l = tem__v1__pbft_vote_record__pack(&rec, buf);
            pbft_replica_free(&o.r);
            pbft_config cfg;
            config(&cfg, 4, 1, 4);
            ck_assert_int_eq(pbft_replica_init(&o.r, &cfg), PBFT_OK);
            ck_assert_int_eq(pbft_replica_restore(&o.r, buf, l), PBFT_OK);
            ck_assert_int_eq(pbft_replica_start(&o.r, &o.out), PBFT_OK);
            pbft_actions_clear(&o.out);
        }
        uint8_t blk[16];
        size_t bl = block(blk, rows[i].height, 0);
        size_t len;
        uint8_t *m = msg_pp(rows[i].signer, rows[i].view, rows[i].height, blk, bl, &len);
        if (rows[i].sender != rows[i].signer) relabel(&m, &len, rows[i].sender);
        if (rows[i].variant < 0) {
            /* Same signed header, different block bytes. */
            Tem__V1__PbftMessage *d = tem__v1__pbft_message__unpack(NULL, len, m);
            d->pre_prepare->block.data[11] ^= 1;
            size_t l2 = tem__v1__pbft_message__get_packed_size(d);
            uint8_t *b2 = tem_malloc(l2);
            tem__v1__pbft_message__pack(d, b2);
            tem__v1__pbft_message__free_unpacked(d, NULL);
            tem_free(m);
            m = b2;
            len = l2;
        }
        int rc = feed(&o.r, &o.out, 0, m, len);
        ck_assert_msg(rc == rows[i].want, "row '%s': got %s", rows[i].name, pbft_strerror(rc));
        if (rc == PBFT_OK) {
            /* Accepted: the block goes to the node for validation before any vote. */
            const pbft_action *v = find_kind(&o.out, PBFT_ACT_REQUEST_VALIDATION);
            ck_assert_ptr_nonnull(v);
            ck_assert_uint_eq(v->height, 1);
            ck_assert_int_eq(count_msgs(&o.out, TEM__V1__PBFT_MESSAGE__KIND_PREPARE), 0);
        } else {
            ck_assert_msg(o.out.n == 0, "row '%s' produced actions", rows[i].name);
        }
        tem_free(m);
        one_free(&o);
    }
}
END_TEST

START_TEST(pbft_pre_prepare_replayed_or_conflicting_is_refused) {
    one o;
    one_init(&o, 1);
    size_t len, len2;
    uint8_t *m = msg_pp(0, 0, 1, o.blk, o.blen, &len);
    ck_assert_int_eq(feed(&o.r, &o.out, 0, m, len), PBFT_OK);
    pbft_actions_clear(&o.out);
    ck_assert_int_eq(feed(&o.r, &o.out, 0, m, len), PBFT_EDUP);
    uint8_t other[16];
    size_t ol = block(other, 1, 7);
    uint8_t *m2 = msg_pp(0, 0, 1, other, ol, &len2);
    ck_assert_int_eq(feed(&o.r, &o.out, 0, m2, len2), PBFT_ECONFLICT);
    ck_assert_uint_eq(o.out.n, 0);
    /* Validation of the first block makes the replica PREPARE it, persisted first. */
    pbft_event ev = {0};
    ev.kind = PBFT_EV_VALIDATED;
    ev.height = 1;
    memcpy(ev.block_hash, o.hash, 32);
    ev.ok = true;
    ck_assert_int_eq(pbft_replica_step(&o.r, &ev, &o.out), PBFT_OK);
    ck_assert_uint_ge(o.out.n, 2);
    ck_assert_int_eq(o.out.a[0].kind, PBFT_ACT_PERSIST);
    ck_assert_int_eq(o.out.a[1].kind, PBFT_ACT_BROADCAST);
    ck_assert_int_eq(msg_kind_of(&o.out.a[1]), TEM__V1__PBFT_MESSAGE__KIND_PREPARE);
    /* The same answer twice is stale. */
    pbft_actions_clear(&o.out);
    ck_assert_int_eq(pbft_replica_step(&o.r, &ev, &o.out), PBFT_ESTALE);
    tem_free(m);
    tem_free(m2);
    one_free(&o);
}
END_TEST

/* PREPARE and COMMIT share a table: sender, signer, view, height, which block. */
static void vote_table(int kind) {
    struct {
        const char *name;
        uint32_t sender, signer;
        uint64_t view, height;
        int want;
    } rows[] = {
        {"valid", 2, 2, 0, 1, PBFT_OK},
        {"wrong signature", 2, 3, 0, 1, PBFT_ESIG},
        {"unknown sender", 4, 2, 0, 1, PBFT_ESENDER},
        {"above the high watermark", 2, 2, 0, 9, PBFT_EWATERMARK},
        {"own index echoed back", 1, 1, 0, 1, PBFT_EDUP},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        one o;
        one_init(&o, 1);
        size_t len;
        uint8_t *m = msg_vote(kind, rows[i].signer, rows[i].view, rows[i].height, o.hash, &len);
        if (rows[i].sender != rows[i].signer) relabel(&m, &len, rows[i].sender);
        int rc = feed(&o.r, &o.out, 2, m, len);
        ck_assert_msg(rc == rows[i].want, "kind %d row '%s': got %s", kind, rows[i].name,
                      pbft_strerror(rc));
        if (rc == PBFT_OK) {
            /* Replayed: the same vote again. */
            ck_assert_int_eq(feed(&o.r, &o.out, 2, m, len), PBFT_EDUP);
            /* Conflicting: the same sender, view and height, another block. */
            uint8_t other[32];
            memset(other, 0x33, 32);
            size_t l2;
            uint8_t *m2 = msg_vote(kind, 2, 0, 1, other, &l2);
            ck_assert_int_eq(feed(&o.r, &o.out, 2, m2, l2), PBFT_ECONFLICT);
            tem_free(m2);
        }
        ck_assert_uint_eq(o.out.n, 0);
        tem_free(m);
        one_free(&o);
    }
}

START_TEST(pbft_prepare_handler_table) {
    vote_table(TEM__V1__PBFT_MESSAGE__KIND_PREPARE);
    /* A PREPARE from the view's primary is not a thing: its pre-prepare is its vote. */
    one o;
    one_init(&o, 1);
    size_t len;
    uint8_t *m = msg_vote(TEM__V1__PBFT_MESSAGE__KIND_PREPARE, 0, 0, 1, o.hash, &len);
    ck_assert_int_eq(feed(&o.r, &o.out, 0, m, len), PBFT_EVIEW);
    tem_free(m);
    one_free(&o);
}
END_TEST

START_TEST(pbft_commit_handler_table) { vote_table(TEM__V1__PBFT_MESSAGE__KIND_COMMIT); }
END_TEST

START_TEST(pbft_malformed_messages_are_refused_without_actions) {
    one o;
    one_init(&o, 1);
    uint8_t junk[64];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)(i * 37 + 11);
    ck_assert_int_eq(feed(&o.r, &o.out, 0, junk, sizeof junk), PBFT_EDECODE);
    ck_assert_int_eq(feed(&o.r, &o.out, 0, junk, 0), PBFT_EDECODE);
    /* A vote whose hash is not 32 bytes. */
    uint8_t h31[32] = {0};
    size_t len;
    uint8_t *m = msg_vote(TEM__V1__PBFT_MESSAGE__KIND_COMMIT, 2, 0, 1, h31, &len);
    Tem__V1__PbftMessage *d = tem__v1__pbft_message__unpack(NULL, len, m);
    d->commit->block_hash.len = 31;
    size_t l2 = tem__v1__pbft_message__get_packed_size(d);
    uint8_t *b2 = tem_malloc(l2);
    tem__v1__pbft_message__pack(d, b2);
    tem__v1__pbft_message__free_unpacked(d, NULL);
    ck_assert_int_eq(feed(&o.r, &o.out, 2, b2, l2), PBFT_EDECODE);
    /* Every truncation of a valid pre-prepare is refused or ignored, never accepted. */
    size_t pl;
    uint8_t *pp = msg_pp(0, 0, 1, o.blk, o.blen, &pl);
    for (size_t cut = 0; cut < pl; cut++) ck_assert_int_ne(feed(&o.r, &o.out, 0, pp, cut), PBFT_OK);
    ck_assert_uint_eq(o.out.n, 0);
    ck_assert_int_eq(feed(&o.r, &o.out, 0, pp, pl), PBFT_OK);
    tem_free(pp);
    tem_free(m);
    tem_free(b2);
    one_free(&o);
}
END_TEST

START_TEST(pbft_checkpoint_handler_table_and_stability) {
    one o;
    one_init(&o, 1);
    uint8_t h[32];
    memset(h, 0x5c, 32);
    struct {
        const char *name;
        uint32_t sender, signer;
        uint64_t height;
        int want;
    } rows[] = {
        {"not a multiple of K", 2, 2, 3, PBFT_EDECODE},
        {"wrong signature", 2, 0, 4, PBFT_ESIG},
        {"unknown sender", 7, 2, 4, PBFT_ESENDER},
        {"valid", 2, 2, 4, PBFT_OK},
        {"replayed", 2, 2, 4, PBFT_EDUP},
        {"second valid", 3, 3, 4, PBFT_OK},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        size_t len;
        uint8_t *m = msg_vote(TEM__V1__PBFT_MESSAGE__KIND_CHECKPOINT, rows[i].signer, 0,
                              rows[i].height, h, &len);
        if (rows[i].sender != rows[i].signer) relabel(&m, &len, rows[i].sender);
        int rc = feed(&o.r, &o.out, rows[i].sender, m, len);
        ck_assert_msg(rc == rows[i].want, "row '%s': got %s", rows[i].name, pbft_strerror(rc));
        tem_free(m);
    }
    /* Two of the three needed: not stable yet. But f+1 validators are past height 1, so one
     * honest replica has blocks this one lacks: it asks for them. */
    ck_assert_uint_eq(pbft_replica_stable(&o.r), 0);
    const pbft_action *f = find_kind(&o.out, PBFT_ACT_REQUEST_BLOCKS);
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(f->height, 1);
    /* A conflicting checkpoint from 2 is refused. */
    uint8_t other[32];
    memset(other, 0x77, 32);
    size_t len;
    uint8_t *m = msg_vote(TEM__V1__PBFT_MESSAGE__KIND_CHECKPOINT, 2, 0, 4, other, &len);
    ck_assert_int_eq(feed(&o.r, &o.out, 2, m, len), PBFT_ECONFLICT);
    tem_free(m);
    pbft_actions_clear(&o.out);
    m = msg_vote(TEM__V1__PBFT_MESSAGE__KIND_CHECKPOINT, 0, 0, 4, h, &len);
    ck_assert_int_eq(feed(&o.r, &o.out, 0, m, len), PBFT_OK);
    tem_free(m);
    /* Stable at 4 with 2f+1 signatures, beyond what this replica delivered. */
    ck_assert_uint_eq(pbft_replica_stable(&o.r), 4);
    /* Below the stable checkpoint now: a pre-prepare at height 2 is outside the watermarks. */
    pbft_actions_clear(&o.out);
    uint8_t b2[16];
    size_t bl = block(b2, 2, 0);
    uint8_t *pp = msg_pp(0, 0, 2, b2, bl, &len);
    ck_assert_int_eq(feed(&o.r, &o.out, 0, pp, len), PBFT_EWATERMARK);
    tem_free(pp);
    one_free(&o);
}
END_TEST

START_TEST(pbft_cluster_of_four_commits_blocks_with_valid_certificates) {
    for (uint32_t n = 4; n <= 7; n += 3) {
        cluster *c = tem_calloc(1, sizeof *c);
        cl_init(c, n, 4);
        cl_run_to(c, 20);
        ck_assert_uint_eq(cl_min_delivered(c), 20);
        cl_assert_agreement(c);
        for (uint64_t h = 1; h <= 20; h++) {
            uint64_t view = 99;
            ck_assert_int_eq(pbft_cert_check(&c->r[0], c->certs[1][h], c->cert_len[1][h], h,
                                             c->delivered[1][h], &view),
                             PBFT_OK);
            ck_assert_uint_eq(view, 0);
        }
        /* Checkpoints every 4 blocks became stable and trimmed the log. */
        ck_assert_uint_ge(pbft_replica_stable(&c->r[2]), 16);
        cl_free(c);
        tem_free(c);
    }
}
END_TEST

START_TEST(pbft_restored_votes_stop_a_second_block_at_the_same_view_and_height) {
    one o;
    one_init(&o, 1);
    size_t len;
    uint8_t *m = msg_pp(0, 0, 1, o.blk, o.blen, &len);
    ck_assert_int_eq(feed(&o.r, &o.out, 0, m, len), PBFT_OK);
    pbft_actions_clear(&o.out);
    pbft_event ev = {0};
    ev.kind = PBFT_EV_VALIDATED;
    ev.height = 1;
    memcpy(ev.block_hash, o.hash, 32);
    ev.ok = true;
    ck_assert_int_eq(pbft_replica_step(&o.r, &ev, &o.out), PBFT_OK);
    const pbft_action *p = find_kind(&o.out, PBFT_ACT_PERSIST);
    ck_assert_ptr_nonnull(p);
    size_t rlen = p->msg_len;
    uint8_t *rec = tem_malloc(rlen);
    memcpy(rec, p->msg, rlen);
    one_free(&o);

    /* Restart: the record says it prepared block 1 in view 0. A pre-prepare for another block
     * at (0, 1), say from a primary that restarted without its own record, is refused. */
    pbft_config cfg;
    config(&cfg, 4, 1, 4);
    pbft_replica r;
    pbft_actions out;
    pbft_actions_init(&out);
    ck_assert_int_eq(pbft_replica_init(&r, &cfg), PBFT_OK);
    ck_assert_int_eq(pbft_replica_restore(&r, rec, rlen), PBFT_OK);
    ck_assert_int_eq(pbft_replica_start(&r, &out), PBFT_OK);
    pbft_actions_clear(&out);
    uint8_t other[16];
    size_t ol = block(other, 1, 9);
    size_t l2;
    uint8_t *m2 = msg_pp(0, 0, 1, other, ol, &l2);
    ck_assert_int_eq(feed(&r, &out, 0, m2, l2), PBFT_ECONFLICT);
    ck_assert_uint_eq(out.n, 0);
    /* The original block is still fine. */
    ck_assert_int_eq(feed(&r, &out, 0, m, len), PBFT_OK);
    /* A damaged record restores nothing. */
    pbft_replica r2;
    ck_assert_int_eq(pbft_replica_init(&r2, &cfg), PBFT_OK);
    ck_assert_int_eq(pbft_replica_restore(&r2, rec, rlen / 2), PBFT_ERECORD);
    ck_assert_uint_eq(pbft_replica_view(&r2), 0);
    pbft_replica_free(&r2);
    pbft_actions_clear(&out);
    pbft_replica_free(&r);
    tem_free(rec);
    tem_free(m);
    tem_free(m2);
}
END_TEST

/* Drives replica 1 of 4 in view 0 through height h with hand-fed messages: the primary's
 * pre-prepare, validation, PREPAREs from 2 and 3, COMMITs from 0 and 2. Leaves the actions in out
 * (the DELIVER among them when `commit`) and the block's hash in hash. */
static void drive_height(pbft_replica *r, pbft_actions *out, uint64_t h, bool commit,
                         uint8_t hash[32]) {
    uint8_t blk[16];
    size_t bl = block(blk, h, 0), len;
    ledger_sha256(hash, blk, bl);
    uint8_t *m = msg_pp(0, 0, h, blk, bl, &len);
    ck_assert_int_eq(feed(r, out, 0, m, len), PBFT_OK);
    tem_free(m);
    pbft_event ev = {0};
    ev.kind = PBFT_EV_VALIDATED;
    ev.height = h;
    memcpy(ev.block_hash, hash, 32);
    ev.ok = true;
    ck_assert_int_eq(pbft_replica_step(r, &ev, out), PBFT_OK);
    if (!commit) return;
    for (uint32_t j = 2; j <= 3; j++) {
        m = msg_vote(TEM__V1__PBFT_MESSAGE__KIND_PREPARE, j, 0, h, hash, &len);
        ck_assert_int_eq(feed(r, out, j, m, len), PBFT_OK);
        tem_free(m);
    }
    for (uint32_t j = 0; j <= 2; j += 2) {
        m = msg_vote(TEM__V1__PBFT_MESSAGE__KIND_COMMIT, j, 0, h, hash, &len);
        ck_assert_int_eq(feed(r, out, j, m, len), PBFT_OK);
        tem_free(m);
    }
}

/* The last PERSIST in out, copied. */
/* The seq of the last VIEW timer armed in out (0 if none). */
static uint64_t view_timer_seq(const pbft_actions *out) {
    uint64_t seq = 0;
    for (uint32_t i = 0; i < out->n; i++)
        if (out->a[i].kind == PBFT_ACT_SET_TIMER && out->a[i].timer == PBFT_TIMER_VIEW)
            seq = out->a[i].timer_seq;
    return seq;
}

static uint8_t *last_record(const pbft_actions *out, size_t *len) {
    const pbft_action *p = NULL;
    for (uint32_t i = 0; i < out->n; i++)
        if (out->a[i].kind == PBFT_ACT_PERSIST) p = &out->a[i];
    ck_assert_ptr_nonnull(p);
    uint8_t *b = tem_malloc(p->msg_len ? p->msg_len : 1);
    memcpy(b, p->msg, p->msg_len);
    *len = p->msg_len;
    return b;
}

/* Replica 1 of 4 (K = 4), started at height 0 with its start actions cleared. */
static void replica1_started(pbft_config *cfg, pbft_replica *r, pbft_actions *out) {
    keys();
    config(cfg, 4, 1, 4);
    pbft_actions_init(out);
    ck_assert_int_eq(pbft_replica_init(r, cfg), PBFT_OK);
    ck_assert_int_eq(pbft_replica_start(r, out), PBFT_OK);
    pbft_actions_clear(out);
}

/* Pipelining (issue 15): temd may make block h durable after the replica's next vote record.
 * Replica 1 delivers h = 2 (K = 4, so not a checkpoint), PREPAREs at 3, and crashes before block
 * 2 reaches its disk: it restarts at height 1 with the record written for that PREPARE. The
 * record must still hold its votes and prepared certificate for 2, or it could accept another
 * block at (0, 2), and its VIEW-CHANGE would drop the only copy of block 2 should every validator
 * have crashed in the same window. */
START_TEST(pbft_record_keeps_the_last_delivered_height_for_a_lagging_store) {
    pbft_config cfg;
    pbft_replica r;
    pbft_actions out;
    replica1_started(&cfg, &r, &out);
    uint8_t h1[32], h2[32], h3[32];
    drive_height(&r, &out, 1, true, h1);
    const pbft_action *d = find_kind(&out, PBFT_ACT_DELIVER);
    ck_assert_ptr_nonnull(d);
    ck_assert_uint_eq(d->height, 1);
    size_t cert1_len = d->cert_len;
    uint8_t *cert1 = tem_malloc(cert1_len);
    memcpy(cert1, d->cert, cert1_len);
    pbft_actions_clear(&out);
    drive_height(&r, &out, 2, true, h2);
    d = find_kind(&out, PBFT_ACT_DELIVER);
    ck_assert_ptr_nonnull(d);
    ck_assert_uint_eq(d->height, 2);
    size_t cert2_len = d->cert_len;
    uint8_t *cert2 = tem_malloc(cert2_len);
    memcpy(cert2, d->cert, cert2_len);
    ck_assert_uint_eq(pbft_replica_delivered(&r), 2);
    pbft_actions_clear(&out);
    drive_height(&r, &out, 3, false, h3);
    ck_assert_int_eq(count_msgs(&out, TEM__V1__PBFT_MESSAGE__KIND_PREPARE), 1);
    size_t rlen;
    uint8_t *rec = last_record(&out, &rlen);
    pbft_actions_clear(&out);
    pbft_replica_free(&r);

    /* The record names height 2 with both votes and the prepared certificate with the block. */
    Tem__V1__PbftVoteRecord *vr = tem__v1__pbft_vote_record__unpack(NULL, rlen, rec);
    ck_assert_ptr_nonnull(vr);
    ck_assert_uint_eq(vr->n_slots, 2);
    ck_assert_uint_eq(vr->slots[0]->height, 2);
    ck_assert(vr->slots[0]->prepared_vote && vr->slots[0]->commit_vote);
    ck_assert_ptr_nonnull(vr->slots[0]->prepared);
    ck_assert_mem_eq(vr->slots[0]->prepared->block_hash.data, h2, 32);
    ck_assert_uint_eq(vr->slots[1]->height, 3);
    ck_assert(vr->slots[1]->prepared_vote && !vr->slots[1]->commit_vote);
    /* ... and block 2's commit certificate, without a second copy of the block. */
    ck_assert_uint_eq(vr->slots[0]->commit_cert.len, cert2_len);
    ck_assert_mem_eq(vr->slots[0]->commit_cert.data, cert2, cert2_len);
    ck_assert_uint_eq(vr->slots[0]->block.len, 0);
    ck_assert_uint_eq(vr->slots[1]->commit_cert.len, 0);
    tem__v1__pbft_vote_record__free_unpacked(vr, NULL);

    /* Restart with the store at height 1: start() delivers block 2 again from the record, so
     * the node needs no peer to hold it (every validator may have lost it in one power cut). */
    cfg.start_height = 1;
    memcpy(cfg.start_hash, h1, 32);
    cfg.start_cert = cert1;
    cfg.start_cert_len = cert1_len;
    ck_assert_int_eq(pbft_replica_init(&r, &cfg), PBFT_OK);
    ck_assert_int_eq(pbft_replica_restore(&r, rec, rlen), PBFT_OK);
    ck_assert_uint_eq(pbft_replica_delivered(&r), 1);
    ck_assert_int_eq(pbft_replica_start(&r, &out), PBFT_OK);
    d = find_kind(&out, PBFT_ACT_DELIVER);
    ck_assert_ptr_nonnull(d);
    ck_assert_uint_eq(d->height, 2);
    ck_assert_mem_eq(d->block_hash, h2, 32);
    uint8_t dh[32];
    ledger_sha256(dh, d->msg, d->msg_len);
    ck_assert_mem_eq(dh, h2, 32);
    ck_assert_int_eq(pbft_cert_check(&r, d->cert, d->cert_len, 2, h2, NULL), PBFT_OK);
    ck_assert_uint_eq(pbft_replica_delivered(&r), 2);
    pbft_actions_clear(&out);
    /* It still will not vote for another block at (0, 2). */
    uint8_t other2[16];
    size_t ol2 = block(other2, 2, 9), len2;
    uint8_t *m2 = msg_pp(0, 0, 2, other2, ol2, &len2);
    ck_assert_int_ne(feed(&r, &out, 0, m2, len2), PBFT_OK);
    ck_assert_int_eq(count_msgs(&out, TEM__V1__PBFT_MESSAGE__KIND_PREPARE), 0);
    tem_free(m2);
    pbft_actions_clear(&out);
    pbft_replica_free(&r);

    /* A certificate damaged on disk (one signature byte) restores nothing. */
    vr = tem__v1__pbft_vote_record__unpack(NULL, rlen, rec);
    ck_assert_ptr_nonnull(vr);
    vr->slots[0]->commit_cert.data[vr->slots[0]->commit_cert.len - 3] ^= 1;
    size_t badl = tem__v1__pbft_vote_record__get_packed_size(vr);
    uint8_t *bad = tem_malloc(badl);
    ck_assert_uint_eq(tem__v1__pbft_vote_record__pack(vr, bad), badl);
    ck_assert_int_eq(pbft_replica_init(&r, &cfg), PBFT_OK);
    ck_assert_int_eq(pbft_replica_restore(&r, bad, badl), PBFT_ERECORD);
    ck_assert_uint_eq(pbft_replica_view(&r), 0);
    ck_assert_uint_eq(pbft_replica_delivered(&r), 1);
    pbft_replica_free(&r);
    tem_free(bad);
    vr->slots[0]->commit_cert.data[vr->slots[0]->commit_cert.len - 3] ^= 1;
    /* So does a valid certificate beside other block bytes (a record whose block was swapped),
     * and a second slot with a certificate (only the last delivered height has one). */
    uint8_t swapped[16];
    vr->slots[0]->block.data = swapped;
    vr->slots[0]->block.len = block(swapped, 2, 9);
    badl = tem__v1__pbft_vote_record__get_packed_size(vr);
    bad = tem_malloc(badl);
    ck_assert_uint_eq(tem__v1__pbft_vote_record__pack(vr, bad), badl);
    ck_assert_int_eq(pbft_replica_init(&r, &cfg), PBFT_OK);
    ck_assert_int_eq(pbft_replica_restore(&r, bad, badl), PBFT_ERECORD);
    ck_assert_uint_eq(pbft_replica_delivered(&r), 1);
    pbft_replica_free(&r);
    tem_free(bad);
    vr->slots[0]->block.data = NULL;
    vr->slots[0]->block.len = 0;
    /* The second slot repeats the first, so both certificates are valid. */
    Tem__V1__PbftSlotRecord **orig = vr->slots, *three[3] = {orig[0], orig[1], orig[0]};
    vr->slots = three;
    vr->n_slots = 3;
    badl = tem__v1__pbft_vote_record__get_packed_size(vr);
    bad = tem_malloc(badl);
    ck_assert_uint_eq(tem__v1__pbft_vote_record__pack(vr, bad), badl);
    vr->slots = orig;
    vr->n_slots = 2;
    ck_assert_int_eq(pbft_replica_init(&r, &cfg), PBFT_OK);
    ck_assert_int_eq(pbft_replica_restore(&r, bad, badl), PBFT_ERECORD);
    pbft_replica_free(&r);
    tem_free(bad);

    /* A record without the certificate (written before it was added) still keeps the votes and
     * the prepared block: the rest of this test restarts from that one. */
    vr->slots[0]->commit_cert.len = 0;
    size_t oldl = tem__v1__pbft_vote_record__get_packed_size(vr);
    uint8_t *oldrec = tem_malloc(oldl);
    ck_assert_uint_eq(tem__v1__pbft_vote_record__pack(vr, oldrec), oldl);
    tem__v1__pbft_vote_record__free_unpacked(vr, NULL);
    tem_free(rec);
    rec = oldrec;
    rlen = oldl;

    /* Restart with the store at height 1 (cfg still says so). */
    ck_assert_int_eq(pbft_replica_init(&r, &cfg), PBFT_OK);
    ck_assert_int_eq(pbft_replica_restore(&r, rec, rlen), PBFT_OK);
    ck_assert_int_eq(pbft_replica_start(&r, &out), PBFT_OK);
    uint64_t seq = view_timer_seq(&out);
    ck_assert_uint_ne(seq, 0);
    pbft_actions_clear(&out);
    ck_assert_uint_eq(pbft_replica_delivered(&r), 1);
    /* Another block at (0, 2), say from a primary restarted without its record: refused. */
    uint8_t other[16];
    size_t ol = block(other, 2, 9), len;
    uint8_t *m = msg_pp(0, 0, 2, other, ol, &len);
    ck_assert_int_eq(feed(&r, &out, 0, m, len), PBFT_ECONFLICT);
    ck_assert_uint_eq(out.n, 0);
    tem_free(m);
    /* Its VIEW-CHANGE reports the prepared certificate for 2 with the block, so a NEW-VIEW built
     * from it re-proposes block 2. */
    pbft_event ev = {0};
    ev.kind = PBFT_EV_TIMER;
    ev.timer = PBFT_TIMER_VIEW;
    ev.timer_seq = seq;
    ck_assert_int_eq(pbft_replica_step(&r, &ev, &out), PBFT_OK);
    const pbft_action *b = find_kind(&out, PBFT_ACT_BROADCAST);
    ck_assert_ptr_nonnull(b);
    Tem__V1__PbftMessage *env = tem__v1__pbft_message__unpack(NULL, b->msg_len, b->msg);
    ck_assert_ptr_nonnull(env);
    ck_assert_int_eq(env->kind_case, TEM__V1__PBFT_MESSAGE__KIND_VIEW_CHANGE);
    Tem__V1__PbftViewChange *vc = tem__v1__pbft_view_change__unpack(NULL, env->view_change.len,
                                                                     env->view_change.data);
    ck_assert_ptr_nonnull(vc);
    ck_assert_uint_eq(vc->new_view, 1);
    ck_assert_ptr_nonnull(vc->committed);
    ck_assert_uint_eq(vc->committed->height, 1);
    ck_assert_uint_eq(vc->n_prepared, 1);
    ck_assert_uint_eq(vc->prepared[0]->height, 2);
    ck_assert_uint_eq(vc->prepared[0]->view, 0);
    ck_assert_mem_eq(vc->prepared[0]->block_hash.data, h2, 32);
    uint8_t bh[32];
    ledger_sha256(bh, vc->prepared[0]->block.data, vc->prepared[0]->block.len);
    ck_assert_mem_eq(bh, h2, 32);
    tem__v1__pbft_view_change__free_unpacked(vc, NULL);
    tem__v1__pbft_message__free_unpacked(env, NULL);
    pbft_actions_clear(&out);
    pbft_replica_free(&r);

    /* Restarted with block 2 on disk, the same record restores nothing at 2: its VIEW-CHANGE
     * reports 2 as committed and no prepared certificate (3 has a PREPARE only). */
    cfg.start_height = 2;
    memcpy(cfg.start_hash, h2, 32);
    cfg.start_cert = cert2;
    cfg.start_cert_len = cert2_len;
    ck_assert_int_eq(pbft_replica_init(&r, &cfg), PBFT_OK);
    ck_assert_int_eq(pbft_replica_restore(&r, rec, rlen), PBFT_OK);
    ck_assert_int_eq(pbft_replica_start(&r, &out), PBFT_OK);
    ev.timer_seq = view_timer_seq(&out);
    pbft_actions_clear(&out);
    ck_assert_int_eq(pbft_replica_step(&r, &ev, &out), PBFT_OK);
    b = find_kind(&out, PBFT_ACT_BROADCAST);
    ck_assert_ptr_nonnull(b);
    env = tem__v1__pbft_message__unpack(NULL, b->msg_len, b->msg);
    ck_assert_ptr_nonnull(env);
    vc = tem__v1__pbft_view_change__unpack(NULL, env->view_change.len, env->view_change.data);
    ck_assert_ptr_nonnull(vc);
    ck_assert_uint_eq(vc->committed->height, 2);
    ck_assert_uint_eq(vc->n_prepared, 0);
    tem__v1__pbft_view_change__free_unpacked(vc, NULL);
    tem__v1__pbft_message__free_unpacked(env, NULL);
    /* The record it wrote for that VIEW-CHANGE has nothing at 2 either. */
    size_t l2;
    uint8_t *rec2 = last_record(&out, &l2);
    vr = tem__v1__pbft_vote_record__unpack(NULL, l2, rec2);
    ck_assert_ptr_nonnull(vr);
    for (size_t i = 0; i < vr->n_slots; i++) ck_assert_uint_ne(vr->slots[i]->height, 2);
    tem__v1__pbft_vote_record__free_unpacked(vr, NULL);
    tem_free(rec2);
    pbft_actions_clear(&out);
    pbft_replica_free(&r);
    tem_free(rec);
    tem_free(cert1);
    tem_free(cert2);
}
END_TEST

/* The attack the commit certificate in the record answers (tem-sim seeds 5520, 5921). Every
 * honest validator delivered block 2 and voted COMMIT on 3, then all three crashed before block 2
 * reached their disks; only validator 3 saw the COMMITs of 3 and delivered it, and it serves no
 * blocks. Its VIEW-CHANGE puts the commit point at 3, so no NEW-VIEW re-proposes 2, and the
 * honest replicas could only fetch block 2 from it: with the prepared certificate alone the chain
 * stopped for good. With the certificate each delivers 2 again from its own record, takes 3 from
 * the VIEW-CHANGE's certificate (it holds block 3 from its prepared certificate), and the chain
 * goes on. */
START_TEST(pbft_every_honest_replica_losing_a_block_recovers_it_without_the_byzantine_server) {
    cluster *c = tem_calloc(1, sizeof *c);
    cl_init(c, 4, 4);
    cl_run_to(c, 2);
    for (uint32_t i = 0; i < 4; i++) ck_assert_uint_eq(c->delivered_n[i], 2);
    for (uint32_t i = 0; i < 3; i++) c->drop_kind_to[i] = TEM__V1__PBFT_MESSAGE__KIND_COMMIT;
    cl_run_to(c, 3);
    for (uint32_t i = 0; i < 3; i++) ck_assert_uint_eq(c->delivered_n[i], 2);
    ck_assert_uint_eq(c->delivered_n[3], 3);
    /* The power cut: the queue goes, and with it block 2 of validators 0-2. */
    for (size_t j = c->qhead; j < c->qn; j++) tem_free(c->q[j].msg);
    c->qhead = c->qn;
    for (uint32_t i = 0; i < 3; i++) {
        cl_crash(c, i);
        tem_free(c->blocks[i][2]);
        tem_free(c->certs[i][2]);
        c->blocks[i][2] = c->certs[i][2] = NULL;
        c->delivered_n[i] = 1;
        c->drop_kind_to[i] = 0;
    }
    c->withhold[3] = true;
    for (uint32_t i = 0; i < 3; i++) cl_boot(c, i);
    for (uint32_t i = 0; i < 3; i++) ck_assert_uint_eq(c->delivered_n[i], 2);
    cl_run(c, 200000);
    /* Validator 3's VIEW-CHANGE reaches the next primary (1) first, so the NEW-VIEW holds it. */
    for (uint32_t i = 0; i < 4; i++) cl_fire_view_timer(c, (i + 3) % 4);
    cl_run_to(c, 6);
    ck_assert_uint_eq(pbft_replica_view(&c->r[0]), 1);
    for (uint32_t i = 0; i < 4; i++)
        ck_assert_msg(c->delivered_n[i] >= 6, "replica %u stopped at %llu", i, (unsigned long long)c->delivered_n[i]);
    cl_assert_agreement(c);
    cl_free(c);
    tem_free(c);
}
END_TEST

/* Once the host says block 2 is durable, the records of height 3's votes leave it out: a vote
 * is not fsync'd with a block the disk already holds. */
START_TEST(pbft_record_drops_the_delivered_height_once_durable) {
    pbft_config cfg;
    pbft_replica r;
    pbft_actions out;
    replica1_started(&cfg, &r, &out);
    uint8_t h1[32], h2[32], h3[32];
    drive_height(&r, &out, 1, true, h1);
    pbft_actions_clear(&out);
    drive_height(&r, &out, 2, true, h2);
    ck_assert_uint_eq(pbft_replica_delivered(&r), 2);
    pbft_actions_clear(&out);
    pbft_replica_durable(&r, 1); /* an older height changes nothing */
    pbft_replica_durable(&r, 2);
    pbft_replica_durable(&r, 1);
    drive_height(&r, &out, 3, false, h3);
    size_t rlen;
    uint8_t *rec = last_record(&out, &rlen);
    Tem__V1__PbftVoteRecord *vr = tem__v1__pbft_vote_record__unpack(NULL, rlen, rec);
    ck_assert_ptr_nonnull(vr);
    ck_assert_uint_eq(vr->n_slots, 1);
    ck_assert_uint_eq(vr->slots[0]->height, 3);
    ck_assert(vr->slots[0]->prepared_vote);
    tem__v1__pbft_vote_record__free_unpacked(vr, NULL);
    tem_free(rec);
    pbft_actions_clear(&out);
    pbft_replica_free(&r);
}
END_TEST

START_TEST(pbft_view_change_replaces_a_silent_primary_and_keeps_committed_blocks) {
    uint64_t before;
    cluster *c = cl_quiet_after_3(&before);
    ck_assert_uint_ge(before, 3);
    /* Primary 0 goes silent; the others time out and move to view 1 (primary 1). */
    c->cut[0] = true;
    for (uint32_t i = 1; i < 4; i++) cl_fire_view_timer(c, i);
    cl_run(c, 200000);
    for (uint32_t i = 1; i < 4; i++) {
        ck_assert_uint_eq(pbft_replica_view(&c->r[i]), 1);
        ck_assert(!pbft_replica_in_view_change(&c->r[i]));
    }
    cl_run_to(c, before + 5);
    ck_assert_uint_ge(cl_min_delivered(c), before + 5);
    cl_assert_agreement(c);
    /* The old primary comes back, learns the view from f+1 VIEW-CHANGEs or the NEW-VIEW
     * re-sent to it, and catches up by fetching. */
    c->cut[0] = false;
    cl_fire_view_timer(c, 0);
    cl_run_to(c, before + 10);
    ck_assert_uint_eq(pbft_replica_view(&c->r[0]), 1);
    ck_assert_uint_ge(c->delivered_n[0], before + 8);
    cl_assert_agreement(c);
    cl_free(c);
    tem_free(c);
}
END_TEST

/* Regression: a validator that was away while the others changed view (stopped, restarted) and
 * whose own view timer does not fire used to stay in its old view for good, following blocks
 * by fetching but never voting. f+1 votes of a later view now make it ask for that view. */
START_TEST(pbft_replica_that_missed_a_view_change_joins_it_from_votes) {
    uint64_t before;
    cluster *c = cl_quiet_after_3(&before);
    c->cut[0] = true;
    for (uint32_t i = 1; i < 4; i++) cl_fire_view_timer(c, i);
    cl_run(c, 200000);
    cl_run_to(c, before + 3);
    ck_assert_uint_eq(pbft_replica_view(&c->r[1]), 1);
    ck_assert_uint_eq(pbft_replica_view(&c->r[0]), 0);
    /* Back, with no timer fired: only the others' view-1 votes can tell it. */
    c->cut[0] = false;
    cl_run_to(c, before + 12);
    ck_assert_uint_eq(pbft_replica_view(&c->r[0]), 1);
    ck_assert(!pbft_replica_in_view_change(&c->r[0]));
    ck_assert_uint_ge(c->delivered_n[0], before + 10);
    /* It votes again: with replica 3 cut off, 0, 1 and 2 are exactly a quorum of 4. */
    uint64_t h = cl_min_delivered(c);
    c->cut[3] = true;
    cl_run_to(c, h + 4);
    ck_assert_uint_ge(c->delivered_n[1], h + 4);
    ck_assert_uint_ge(c->delivered_n[0], h + 4);
    cl_assert_agreement(c);
    cl_free(c);
    tem_free(c);
}
END_TEST

/* A replica the others left behind (cut off while they delivered) whose view timer fires
 * before its fetch is answered does not start a view change of its own: the others deliver in
 * this view, so the primary is not at fault. It fetches, stays in their view and votes again.
 * (Before, it went to view 1 alone and stayed out of the normal case.) */
START_TEST(pbft_lagging_replica_fetches_instead_of_changing_view) {
    uint64_t before;
    cluster *c = cl_quiet_after_3(&before);
    c->cut[3] = true;
    cl_run_to(c, before + 3);
    ck_assert_uint_eq(c->delivered_n[3], before);
    /* Back, but its fetches go unanswered: it hears the votes for the next height, f+1 of them
     * above its own next one. */
    c->cut[3] = false;
    c->hold_fetch[3] = true;
    cl_run_to(c, before + 5);
    ck_assert_uint_ge(c->delivered_n[0], before + 5);
    ck_assert_uint_eq(c->delivered_n[3], before);
    ck_assert_uint_ne(c->want_fetch[3], 0);
    ck_assert_uint_ne(c->view_timer[3], 0);
    cl_fire_view_timer(c, 3);
    cl_run(c, 200000);
    ck_assert_uint_eq(pbft_replica_view(&c->r[3]), 0);
    ck_assert(!pbft_replica_in_view_change(&c->r[3]));
    ck_assert_uint_eq(c->want_fetch[3], before + 1);
    ck_assert_uint_ne(c->view_timer[3], 0); /* armed again: it looks again after a timeout */
    /* The fetch is answered: it catches up in view 0 and votes, so that with replica 2 cut off
     * 0, 1 and 3 are exactly a quorum of 4. */
    c->hold_fetch[3] = false;
    cl_run_to(c, before + 8);
    ck_assert_uint_ge(c->delivered_n[3], before + 8);
    uint64_t h = cl_min_delivered(c);
    c->cut[2] = true;
    cl_run_to(c, h + 4);
    ck_assert_uint_ge(c->delivered_n[3], h + 4);
    ck_assert_uint_ge(c->delivered_n[0], h + 4);
    ck_assert_uint_eq(pbft_replica_view(&c->r[0]), 0);
    cl_assert_agreement(c);
    cl_free(c);
    tem_free(c);
}
END_TEST

/* A replica that holds the next height's block but not yet the commits that certify it (the
 * votes of a validator running behind are still on their way) while f+1 others already vote
 * above it is slow, not missing anything: it waits a grace (a quarter of the view timeout)
 * before it fetches, since a fetch would bring it the block it holds, whose txs a node then
 * verifies twice. When the late votes arrive in time it delivers without a fetch; held past
 * the grace, it fetches. */
START_TEST(pbft_slow_replica_holding_the_next_block_fetches_only_after_a_grace) {
    for (int late = 0; late <= 1; late++) {
        uint64_t before;
        cluster *c = cl_quiet_after_3(&before);
        c->delay[1][3] = c->delay[2][3] = true;
        cl_run_to(c, before + 1);
        ck_assert_uint_ge(c->delivered_n[0], before + 1);
        ck_assert_uint_eq(c->delivered_n[3], before);
        ck_assert_uint_eq(c->want_fetch[3], 0);
        /* 1 and 2 vote on the next height (their votes on before+1 still held) */
        uint8_t next[32];
        memset(next, 0x3c, sizeof next);
        for (uint32_t v = 1; v <= 2; v++) {
            size_t len;
            uint8_t *m = msg_vote(TEM__V1__PBFT_MESSAGE__KIND_PREPARE, v, 0, before + 2, next, &len);
            pbft_event ev = {.kind = PBFT_EV_MESSAGE, .from = v, .data = m, .len = len};
            cl_post(c, 3, &ev);
            ck_assert_int_eq(c->last_rc[3], PBFT_OK);
            tem_free(m);
        }
        ck_assert_uint_eq(c->want_fetch[3], 0);
        ck_assert_uint_ne(c->fetch_timer[3], 0);
        ck_assert_uint_eq(c->fetch_timer_ms[3], 1000 / 4);
        if (late) {
            cl_fire_fetch_timer(c, 3);
            ck_assert_uint_eq(c->want_fetch[3], before + 1);
            c->delay[1][3] = c->delay[2][3] = false;
            cl_run(c, 200000);
        } else {
            c->delay[1][3] = c->delay[2][3] = false;
            cl_release(c);
            ck_assert_uint_eq(c->delivered_n[3], before + 1);
            ck_assert_uint_eq(c->want_fetch[3], 0);
            ck_assert_uint_eq(c->fetch_timer[3], 0);
        }
        ck_assert_uint_ge(c->delivered_n[3], before + 1);
        cl_release(c);
        cl_run_to(c, before + 4);
        ck_assert_uint_ge(c->delivered_n[3], before + 4);
        cl_assert_agreement(c);
        cl_free(c);
        tem_free(c);
    }
}
END_TEST

/* Who gains by the rule above: f Byzantine validators would, if they could make an honest
 * replica believe it is behind, keep it from asking for a new view while their primary stalls.
 * They cannot: one validator (f = 1 of 4) signing votes far above the replica's next height is
 * not f+1, so with the primary silent the replica's timer still starts the view change. */
/* Replica 3 of a quiet cluster whose primary went silent gets COMMITs for heights 2-4 above
 * its tip from `claimants` validators, then its view timer fires. True if it started a view
 * change. */
static bool view_change_after_claims(const uint32_t *claimants, uint32_t nclaim) {
    uint64_t before;
    cluster *c = cl_quiet_after_3(&before);
    c->cut[0] = true;
    uint8_t fake[32];
    memset(fake, 0x5a, sizeof fake);
    for (uint32_t k = 0; k < nclaim; k++)
        for (uint64_t h = before + 2; h <= before + 4; h++) {
            size_t len;
            uint8_t *m = msg_vote(TEM__V1__PBFT_MESSAGE__KIND_COMMIT, claimants[k], 0, h, fake, &len);
            pbft_event ev = {.kind = PBFT_EV_MESSAGE, .from = claimants[k], .data = m, .len = len};
            cl_post(c, 3, &ev);
            ck_assert_int_eq(c->last_rc[3], PBFT_OK);
            tem_free(m);
        }
    ck_assert_uint_ne(c->view_timer[3], 0);
    cl_fire_view_timer(c, 3);
    bool vc = pbft_replica_in_view_change(&c->r[3]);
    if (vc) ck_assert_uint_eq(pbft_replica_view(&c->r[3]), 1);
    cl_free(c);
    tem_free(c);
    return vc;
}

START_TEST(pbft_f_validators_claiming_heights_ahead_do_not_stop_a_view_change) {
    const uint32_t one[] = {2}, two[] = {1, 2};
    ck_assert(view_change_after_claims(one, 1));
    /* The control: f+1 claimants (one of them must be honest) make it behind, and it fetches. */
    ck_assert(!view_change_after_claims(two, 2));
}
END_TEST

/* Regression: a view-change storm. Timeouts keep firing while the new primary is still
 * collecting VIEW-CHANGEs; replicas must not race ahead through views on their own. */
START_TEST(pbft_regression_view_change_storm_does_not_run_views_away) {
    cluster *c = tem_calloc(1, sizeof *c);
    cl_init(c, 4, 4);
    cl_run_to(c, 2);
    cl_run(c, 200000);
    /* Primary 0 and replica 3 are cut off: only 1 and 2 ask for view 1, short of 2f+1. */
    c->cut[0] = c->cut[3] = true;
    for (uint32_t i = 1; i <= 2; i++) cl_fire_view_timer(c, i);
    cl_run(c, 200000);
    for (int storm = 0; storm < 10; storm++) {
        for (uint32_t i = 1; i <= 2; i++) cl_fire_view_timer(c, i);
        cl_run(c, 200000);
    }
    for (uint32_t i = 1; i <= 2; i++) {
        ck_assert_uint_eq(pbft_replica_view(&c->r[i]), 1);
        ck_assert(pbft_replica_in_view_change(&c->r[i]));
    }
    /* Replica 3 returns and times out too: 2f+1 for view 1, primary 1 sends NEW-VIEW. */
    c->cut[3] = false;
    cl_fire_view_timer(c, 3);
    cl_run(c, 200000);
    uint64_t base = cl_min_delivered(c);
    cl_run_to(c, base + 3);
    ck_assert_uint_ge(cl_min_delivered(c), base + 3);
    for (uint32_t i = 1; i < 4; i++) ck_assert_uint_eq(pbft_replica_view(&c->r[i]), 1);
    cl_assert_agreement(c);
    cl_free(c);
    tem_free(c);
}
END_TEST

/* Regression: a checkpoint becomes stable while a view change is under way. */
START_TEST(pbft_regression_checkpoint_stable_during_view_change) {
    cluster *c = tem_calloc(1, sizeof *c);
    cl_init(c, 4, 2);
    /* Replica 3 misses blocks 1..4 (cut off); the others deliver them and checkpoint 2 and 4. */
    c->cut[3] = true;
    cl_run_to(c, 4);
    cl_run(c, 2000);
    /* Replica 3 times out alone and starts a view change. */
    c->cut[3] = false;
    cl_fire_view_timer(c, 3);
    ck_assert(pbft_replica_in_view_change(&c->r[3]));
    uint64_t stable_before = pbft_replica_stable(&c->r[3]);
    /* The others' next checkpoint reaches it while it is still in the view change. */
    cl_run(c, 200000);
    cl_run_to(c, 6);
    ck_assert_uint_gt(pbft_replica_stable(&c->r[3]), stable_before);
    ck_assert_uint_ge(c->delivered_n[3], 6);
    cl_assert_agreement(c);
    /* Once the others give up on view 0 as well, the view change completes for everyone. */
    for (uint32_t i = 0; i < 3; i++) cl_fire_view_timer(c, i);
    cl_run(c, 200000);
    uint64_t base = cl_min_delivered(c);
    cl_run_to(c, base + 2);
    ck_assert_uint_ge(cl_min_delivered(c), base + 2);
    for (uint32_t i = 0; i < 4; i++) ck_assert(!pbft_replica_in_view_change(&c->r[i]));
    cl_assert_agreement(c);
    cl_free(c);
    tem_free(c);
}
END_TEST

/* Regression: a replica restarts in the middle of a view change. */
START_TEST(pbft_regression_restart_mid_view_change_resumes_it) {
    cluster *c = tem_calloc(1, sizeof *c);
    cl_init(c, 4, 4);
    cl_run_to(c, 2);
    cl_run(c, 200000);
    c->cut[0] = true;
    for (uint32_t i = 1; i < 4; i++) cl_fire_view_timer(c, i);
    /* Replica 2 crashes right after its VIEW-CHANGE was persisted and sent. */
    cl_crash(c, 2);
    cl_run(c, 200000);
    cl_boot(c, 2);
    ck_assert_uint_eq(pbft_replica_view(&c->r[2]), 1);
    cl_run(c, 200000);
    uint64_t base = cl_min_delivered(c);
    cl_run_to(c, base + 3);
    ck_assert_uint_ge(cl_min_delivered(c), base + 3);
    ck_assert(!pbft_replica_in_view_change(&c->r[2]));
    ck_assert_uint_eq(pbft_replica_view(&c->r[2]), 1);
    cl_assert_agreement(c);
    cl_free(c);
    tem_free(c);
}
END_TEST

/* Regression: a primary proposes at a height at or below the stable checkpoint. */
START_TEST(pbft_regression_primary_proposing_below_stable_checkpoint_is_ignored) {
    cluster *c = tem_calloc(1, sizeof *c);
    cl_init(c, 4, 2);
    cl_run_to(c, 5);
    cl_run(c, 200000);
    ck_assert_uint_ge(pbft_replica_stable(&c->r[1]), 4);
    pbft_actions out;
    pbft_actions_init(&out);
    for (uint64_t h = 1; h <= 4; h++) {
        uint8_t blk[16];
        size_t bl = block(blk, h, 0xbd);
        size_t len;
        uint8_t *m = msg_pp(0, 0, h, blk, bl, &len);
        int rc = feed(&c->r[1], &out, 0, m, len);
        ck_assert_msg(rc == PBFT_EWATERMARK || rc == PBFT_ESTALE, "height %llu: %s",
                      (unsigned long long)h, pbft_strerror(rc));
        ck_assert_uint_eq(out.n, 0);
        tem_free(m);
    }
    pbft_actions_clear(&out);
    cl_free(c);
    tem_free(c);
}
END_TEST

START_TEST(pbft_fetched_blocks_need_a_valid_certificate) {
    cluster *c = tem_calloc(1, sizeof *c);
    cl_init(c, 4, 4);
    cl_run_to(c, 3);
    cl_run(c, 2000);
    one o;
    one_init(&o, 3);
    pbft_event ev = {0};
    ev.kind = PBFT_EV_BLOCK_FETCHED;
    ev.height = 1;
    ev.data = c->blocks[0][1];
    ev.len = c->block_len[0][1];
    /* The certificate of another height, then a truncated one, then a certificate whose
     * signatures are one short of the quorum. */
    ev.cert = c->certs[0][2];
    ev.cert_len = c->cert_len[0][2];
    ck_assert_int_eq(pbft_replica_step(&o.r, &ev, &o.out), PBFT_ECERT);
    ev.cert = c->certs[0][1];
    ev.cert_len = c->cert_len[0][1] - 5;
    ck_assert_int_ne(pbft_replica_step(&o.r, &ev, &o.out), PBFT_OK);
    Tem__V1__CommitCertificate *cert =
        tem__v1__commit_certificate__unpack(NULL, c->cert_len[0][1], c->certs[0][1]);
    ck_assert_ptr_nonnull(cert);
    cert->n_sigs = 2;
    uint8_t buf[1024];
    size_t bl = tem__v1__commit_certificate__pack(cert, buf);
    /* Tampering with one signature instead. */
    cert->n_sigs = 3;
    cert->sigs[1]->sig.data[5] ^= 1;
    uint8_t buf2[1024];
    size_t bl2 = tem__v1__commit_certificate__pack(cert, buf2);
    tem__v1__commit_certificate__free_unpacked(cert, NULL);
    ev.cert = buf;
    ev.cert_len = bl;
    ck_assert_int_eq(pbft_replica_step(&o.r, &ev, &o.out), PBFT_ECERT);
    ev.cert = buf2;
    ev.cert_len = bl2;
    ck_assert_int_eq(pbft_replica_step(&o.r, &ev, &o.out), PBFT_ECERT);
    ck_assert_uint_eq(o.out.n, 0);
    ck_assert_uint_eq(pbft_replica_delivered(&o.r), 0);
    /* The real one delivers, with the certificate passed through. */
    ev.cert = c->certs[0][1];
    ev.cert_len = c->cert_len[0][1];
    ck_assert_int_eq(pbft_replica_step(&o.r, &ev, &o.out), PBFT_OK);
    ck_assert_uint_eq(pbft_replica_delivered(&o.r), 1);
    const pbft_action *d = find_kind(&o.out, PBFT_ACT_DELIVER);
    ck_assert_ptr_nonnull(d);
    ck_assert_mem_eq(d->block_hash, c->delivered[0][1], 32);
    one_free(&o);
    cl_free(c);
    tem_free(c);
}
END_TEST

START_TEST(pbft_view_change_with_a_forged_prepared_certificate_is_refused) {
    cluster *c = tem_calloc(1, sizeof *c);
    cl_init(c, 4, 4);
    c->cut[0] = true;
    /* Replica 1 times out: its VIEW-CHANGE is valid and accepted by replica 2. */
    cl_fire_view_timer(c, 1);
    ck_assert_uint_ge(c->qn - c->qhead, 1);
    qmsg vc = c->q[c->qhead];
    pbft_actions out;
    pbft_actions_init(&out);
    /* A copy with a prepared certificate of two signatures (below 2f+1), re-signed by 1. */
    Tem__V1__PbftMessage *env = tem__v1__pbft_message__unpack(NULL, vc.len, vc.msg);
    Tem__V1__PbftViewChange *body =
        tem__v1__pbft_view_change__unpack(NULL, env->view_change.len, env->view_change.data);
    Tem__V1__PbftPreparedCert pc = TEM__V1__PBFT_PREPARED_CERT__INIT;
    Tem__V1__PbftSig s0 = TEM__V1__PBFT_SIG__INIT, s1 = TEM__V1__PBFT_SIG__INIT;
    Tem__V1__PbftSig *sp[2] = {&s0, &s1};
    uint8_t blk[16], hash[32], d[32], sig0[64], sig1[64];
    size_t bl = block(blk, 1, 0x44);
    ledger_sha256(hash, blk, bl);
    pbft_prepare_digest(k_genesis, 0, 1, hash, d);
    ledger_ed_sign(k_sec[0], d, 32, sig0);
    ledger_ed_sign(k_sec[1], d, 32, sig1);
    s0.validator = 0, s0.sig.data = sig0, s0.sig.len = 64;
    s1.validator = 1, s1.sig.data = sig1, s1.sig.len = 64;
    pc.view = 0, pc.height = 1, pc.block_hash.data = hash, pc.block_hash.len = 32;
    pc.n_sigs = 2, pc.sigs = sp, pc.block.data = blk, pc.block.len = bl;
    Tem__V1__PbftPreparedCert *pcs[1] = {&pc};
    body->n_prepared = 1;
    Tem__V1__PbftPreparedCert **saved = body->prepared;
    size_t saved_n = 0;
    body->prepared = pcs;
    uint8_t bbuf[4096];
    size_t blen = tem__v1__pbft_view_change__pack(body, bbuf);
    body->prepared = saved;
    body->n_prepared = saved_n;
    Tem__V1__PbftMessage m = TEM__V1__PBFT_MESSAGE__INIT;
    m.sender = 1;
    m.kind_case = TEM__V1__PBFT_MESSAGE__KIND_VIEW_CHANGE;
    m.view_change.data = bbuf;
    m.view_change.len = blen;
    uint8_t *forged;
    size_t flen;
    ck_assert_int_eq(pbft_msg_sign_pack(k_genesis, k_sec[1], &m, &forged, &flen), PBFT_OK);
    ck_assert_int_eq(feed(&c->r[2], &out, 1, forged, flen), PBFT_ECERT);
    ck_assert_uint_eq(out.n, 0);
    /* Signed by someone else: refused before the proofs are even read. */
    relabel(&forged, &flen, 3);
    ck_assert_int_eq(feed(&c->r[2], &out, 3, forged, flen), PBFT_ESIG);
    /* The genuine one is accepted; replayed, it is a duplicate. */
    ck_assert_int_eq(feed(&c->r[2], &out, 1, vc.msg, vc.len), PBFT_OK);
    pbft_actions_clear(&out);
    ck_assert_int_eq(feed(&c->r[2], &out, 1, vc.msg, vc.len), PBFT_EDUP);
    tem_free(forged);
    body->n_prepared = 0;
    tem__v1__pbft_view_change__free_unpacked(body, NULL);
    tem__v1__pbft_message__free_unpacked(env, NULL);
    pbft_actions_clear(&out);
    cl_free(c);
    tem_free(c);
}
END_TEST

START_TEST(pbft_new_view_from_a_non_primary_or_with_too_few_view_changes_is_refused) {
    cluster *c = tem_calloc(1, sizeof *c);
    cl_init(c, 4, 4);
    cl_run_to(c, 1);
    cl_run(c, 2000);
    c->cut[0] = true;
    /* Collect the three VIEW-CHANGEs for view 1 without delivering them. */
    c->cut[1] = true;
    for (uint32_t i = 1; i < 4; i++) cl_fire_view_timer(c, i);
    c->cut[1] = false;
    /* Build NEW-VIEWs by hand from the replicas' own stored VIEW-CHANGEs. */
    ProtobufCBinaryData vcs[3];
    for (uint32_t i = 1; i < 4; i++) {
        vcs[i - 1].data = c->r[i].vc_msg[i];
        vcs[i - 1].len = c->r[i].vc_len[i];
        ck_assert_ptr_nonnull(vcs[i - 1].data);
    }
    struct {
        const char *name;
        uint32_t sender;
        size_t n_vcs;
        int want;
    } rows[] = {
        {"from a replica that is not view 1's primary", 2, 3, PBFT_EVIEW},
        {"with two VIEW-CHANGEs for a quorum of three", 1, 2, PBFT_ECERT},
        {"valid", 1, 3, PBFT_OK},
        {"replayed", 1, 3, PBFT_EDUP},
    };
    pbft_actions out;
    pbft_actions_init(&out);
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        Tem__V1__PbftNewView nv = TEM__V1__PBFT_NEW_VIEW__INIT;
        nv.view = 1;
        nv.n_view_changes = rows[i].n_vcs;
        nv.view_changes = vcs;
        uint8_t body[8192];
        size_t blen = tem__v1__pbft_new_view__pack(&nv, body);
        Tem__V1__PbftMessage m = TEM__V1__PBFT_MESSAGE__INIT;
        m.sender = rows[i].sender;
        m.kind_case = TEM__V1__PBFT_MESSAGE__KIND_NEW_VIEW;
        m.new_view.data = body;
        m.new_view.len = blen;
        uint8_t *buf;
        size_t len;
        ck_assert_int_eq(pbft_msg_sign_pack(k_genesis, k_sec[rows[i].sender], &m, &buf, &len),
                         PBFT_OK);
        int rc = feed(&c->r[3], &out, rows[i].sender, buf, len);
        ck_assert_msg(rc == rows[i].want, "row '%s': got %s", rows[i].name, pbft_strerror(rc));
        pbft_actions_clear(&out);
        tem_free(buf);
    }
    ck_assert_uint_eq(pbft_replica_view(&c->r[3]), 1);
    ck_assert(!pbft_replica_in_view_change(&c->r[3]));
    pbft_actions_clear(&out);
    cl_free(c);
    tem_free(c);
}
END_TEST

START_TEST(pbft_timeouts_grow_on_failed_views_and_reset_on_progress) {
    cluster *c = tem_calloc(1, sizeof *c);
    cl_init(c, 4, 4);
    c->max_height = 0; /* no primary gets to propose: every view fails */
    cl_run(c, 100000);
    ck_assert_uint_eq(c->view_timer_ms[1], 1000);
    uint64_t want = 1000;
    for (int v = 1; v <= 6; v++) {
        for (uint32_t i = 0; i < 4; i++) cl_fire_view_timer(c, i);
        cl_run(c, 100000);
        if (v <= 4) want *= 2; /* capped at four doublings */
        for (uint32_t i = 0; i < 4; i++) {
            ck_assert_uint_eq(pbft_replica_view(&c->r[i]), (uint64_t)v);
            ck_assert(!pbft_replica_in_view_change(&c->r[i]));
            ck_assert_uint_eq(c->view_timer_ms[i], want);
        }
    }
    /* A stale firing of an older timer changes nothing. */
    pbft_event ev = {0};
    ev.kind = PBFT_EV_TIMER;
    ev.timer = PBFT_TIMER_VIEW;
    ev.timer_seq = c->view_timer[2] - 1;
    size_t sent = c->qn;
    uint64_t armed = c->view_timer[2];
    cl_post(c, 2, &ev);
    ck_assert_int_eq(c->last_rc[2], PBFT_ESTALE);
    ck_assert_uint_eq(c->qn, sent);
    ck_assert_uint_eq(c->view_timer[2], armed);
    /* Progress resets the timeout. */
    cl_run_to(c, 1);
    ck_assert_uint_eq(cl_min_delivered(c), 1);
    for (uint32_t i = 0; i < 4; i++) ck_assert_uint_eq(c->view_timer_ms[i], 1000);
    cl_free(c);
    tem_free(c);
}
END_TEST

START_TEST(pbft_config_from_genesis_takes_keys_interval_and_timeout) {
    keys();
    ledger_genesis *g = tem_calloc(1, sizeof *g);
    ck_assert_ptr_nonnull(g);
    g->n_validators = 4;
    for (int i = 0; i < 4; i++) memcpy(g->validators[i].pubkey, k_pub[i], 32);
    memcpy(g->hash, k_genesis, 32);
    g->checkpoint_interval = 16;
    g->view_timeout_ms = 2000;
    pbft_config cfg;
    memset(&cfg, 0, sizeof cfg);
    ck_assert_int_eq(pbft_config_from_genesis(&cfg, g), PBFT_OK);
    ck_assert_uint_eq(cfg.n, 4);
    ck_assert_mem_eq(cfg.pubkeys[3], k_pub[3], 32);
    ck_assert_mem_eq(cfg.genesis_hash, k_genesis, 32);
    ck_assert_uint_eq(cfg.checkpoint_interval, 16);
    ck_assert_uint_eq(cfg.view_timeout_ms, 2000);
    struct {
        const char *name;
        uint32_t n, k;
        uint64_t timeout;
    } bad[] = {
        {"three validators", 3, 16, 2000},
        {"interval too large for the log", 4, PBFT_CHECKPOINT_INTERVAL_MAX + 1, 2000},
        {"zero interval", 4, 0, 2000},
        {"zero timeout", 4, 16, 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        g->n_validators = bad[i].n;
        g->checkpoint_interval = bad[i].k;
        g->view_timeout_ms = bad[i].timeout;
        ck_assert_msg(pbft_config_from_genesis(&cfg, g) == PBFT_EINVAL, "row %s", bad[i].name);
    }
    tem_free(g);
}
END_TEST

/* OOM ladder: fail the N-th allocation for N = 0, 1, ... while a replica takes a pre-prepare,
 * its validation and the PREPAREs that make the block prepared; every step either succeeds or
 * says ENOMEM, and once enough memory is allowed the replica sends its COMMIT. ASan reports
 * anything leaked on the way. */
START_TEST(pbft_out_of_memory_at_any_allocation_is_an_error_not_a_crash) {
    bool delivered = false;
    for (long fail = 0; fail < 400 && !delivered; fail++) {
        one o;
        one_init(&o, 1);
        size_t len, lc[2];
        uint8_t *pp = msg_pp(0, 0, 1, o.blk, o.blen, &len);
        uint8_t *cm[2];
        for (uint32_t k = 0; k < 2; k++)
            cm[k] = msg_vote(TEM__V1__PBFT_MESSAGE__KIND_PREPARE, 2 + k, 0, 1, o.hash, &lc[k]);
        (void)tem_alloc_fail_after(fail);
        int rc = feed(&o.r, &o.out, 0, pp, len);
        ck_assert(rc == PBFT_OK || rc == PBFT_ENOMEM || rc == PBFT_EDECODE);
        pbft_event ev = {0};
        ev.kind = PBFT_EV_VALIDATED;
        ev.height = 1;
        memcpy(ev.block_hash, o.hash, 32);
        ev.ok = true;
        int rv = pbft_replica_step(&o.r, &ev, &o.out);
        ck_assert(rv == PBFT_OK || rv == PBFT_ENOMEM || rv == PBFT_ESTALE);
        for (uint32_t k = 0; k < 2; k++) {
            int rk = feed(&o.r, &o.out, 2 + k, cm[k], lc[k]);
            ck_assert(rk == PBFT_OK || rk == PBFT_ENOMEM || rk == PBFT_EDECODE || rk == PBFT_EDUP ||
                      rk == PBFT_EWATERMARK);
        }
        (void)tem_alloc_fail_after(-1);
        delivered = rc == PBFT_OK && rv == PBFT_OK &&
                    count_msgs(&o.out, TEM__V1__PBFT_MESSAGE__KIND_COMMIT) == 1;
        for (uint32_t k = 0; k < 2; k++) tem_free(cm[k]);
        tem_free(pp);
        one_free(&o);
    }
    ck_assert_msg(delivered, "never got through with enough memory");
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("pbft");
    TCase *t = tcase_create("handlers");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, pbft_error_codes_have_names_in_their_range);
    tcase_add_test(t, pbft_init_rejects_bad_configs);
    tcase_add_test(t, pbft_config_from_genesis_takes_keys_interval_and_timeout);
    tcase_add_test(t, pbft_pre_prepare_handler_accepts_only_what_it_should);
    tcase_add_test(t, pbft_pre_prepare_replayed_or_conflicting_is_refused);
    tcase_add_test(t, pbft_prepare_handler_table);
    tcase_add_test(t, pbft_commit_handler_table);
    tcase_add_test(t, pbft_malformed_messages_are_refused_without_actions);
    tcase_add_test(t, pbft_checkpoint_handler_table_and_stability);
    tcase_add_test(t, pbft_view_change_with_a_forged_prepared_certificate_is_refused);
    tcase_add_test(t, pbft_new_view_from_a_non_primary_or_with_too_few_view_changes_is_refused);
    tcase_add_test(t, pbft_fetched_blocks_need_a_valid_certificate);
    tcase_add_test(t, pbft_timeouts_grow_on_failed_views_and_reset_on_progress);
    tcase_add_test(t, pbft_out_of_memory_at_any_allocation_is_an_error_not_a_crash);
    suite_add_tcase(s, t);
    TCase *c = tcase_create("cluster");
    tcase_set_timeout(c, 300);
    tcase_add_test(c, pbft_cluster_of_four_commits_blocks_with_valid_certificates);
    tcase_add_test(c, pbft_restored_votes_stop_a_second_block_at_the_same_view_and_height);
    tcase_add_test(c, pbft_record_keeps_the_last_delivered_height_for_a_lagging_store);
    tcase_add_test(c, pbft_every_honest_replica_losing_a_block_recovers_it_without_the_byzantine_server);
    tcase_add_test(c, pbft_record_drops_the_delivered_height_once_durable);
    tcase_add_test(c, pbft_view_change_replaces_a_silent_primary_and_keeps_committed_blocks);
    tcase_add_test(c, pbft_replica_that_missed_a_view_change_joins_it_from_votes);
    tcase_add_test(c, pbft_lagging_replica_fetches_instead_of_changing_view);
    tcase_add_test(c, pbft_slow_replica_holding_the_next_block_fetches_only_after_a_grace);
    tcase_add_test(c, pbft_f_validators_claiming_heights_ahead_do_not_stop_a_view_change);
    tcase_add_test(c, pbft_regression_view_change_storm_does_not_run_views_away);
    tcase_add_test(c, pbft_regression_checkpoint_stable_during_view_change);
    tcase_add_test(c, pbft_regression_restart_mid_view_change_resumes_it);
    tcase_add_test(c, pbft_regression_primary_proposing_below_stable_checkpoint_is_ignored);
    suite_add_tcase(s, c);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
