/* test_host.c: Check suite for consensus/host.c, the one pBFT host of temd and the simulator. A
 * real replica (n = 4) is driven through a recording I/O: the order in which actions leave
 * (PERSIST before the vote), a write in flight holding everything after it, the bounded event
 * FIFO refusing with PBFT_EFULL, a failed write or apply halting the host, the validation queue
 * handing one block at a time, events posted from inside a callback, the planted
 * send-before-persist bug, and an OOM ladder over every allocation the host makes. */
#include "consensus/host.h"

#include <check.h>
#include <sodium.h>

#include "pbft_fixture.h"

#define N 4

static uint8_t k_pub[N][32], k_sec[N][64];
static const uint8_t k_genesis[32] = {0x40, 0x57};

static void keys(void) {
    static bool done;
    if (done) return;
    pbft_fx_keys(N, 0x70, k_pub, k_sec);
    done = true;
}

static void replica(pbft_replica *r, uint32_t self, pbft_planted_bug bug) {
    keys();
    pbft_config c;
    memset(&c, 0, sizeof c);
    c.n = N;
    c.self = self;
    for (uint32_t i = 0; i < N; i++) memcpy(c.pubkeys[i], k_pub[i], 32);
    memcpy(c.secret, k_sec[self], 64);
    memcpy(c.genesis_hash, k_genesis, 32);
    c.checkpoint_interval = 4;
    c.view_timeout_ms = 1000;
    c.view_timeout_doublings_max = 4;
    c.hash = pbft_fx_hash;
    memcpy(c.start_hash, k_genesis, 32);
    c.planted_bug = bug;
    ck_assert_int_eq(pbft_replica_init(r, &c), PBFT_OK);
}

/* ------------------------------------------------------------------ recording I/O */
typedef struct {
    char log[512]; /* one letter per action performed, in order */
    size_t n;
    host *h;
    int persist_rc;  /* what io.persist answers */
    int deliver_rc;  /* what io.deliver answers */
    int validate_rc; /* what io.validate answers */
    uint32_t validates;
    uint64_t validate_height;
    uint8_t validate_hash[32];
    uint32_t reports;
    int report_err;
    char report_what[32];
    uint32_t steps;
    bool propose_inline; /* request_proposal answers with a PROPOSAL from inside the callback */
    int inline_rc;
} rec;

static void note(rec *r, char c) {
    ck_assert_uint_lt(r->n, sizeof r->log - 1);
    r->log[r->n++] = c;
    r->log[r->n] = 0;
}

static const uint8_t k_block[] = "block-1";

static void io_send(void *ctx, uint32_t to, const uint8_t *msg, size_t len) {
    (void)msg, (void)len;
    note(ctx, to == PBFT_TO_ALL ? 'B' : 'S');
}
static int io_persist(void *ctx, const uint8_t *m, size_t len) {
    (void)m, (void)len;
    rec *r = ctx;
    note(r, 'P');
    return r->persist_rc;
}
static void io_set_timer(void *ctx, pbft_timer t, uint64_t ms, uint64_t seq) {
    (void)t, (void)ms, (void)seq;
    note(ctx, 'T');
}
static void io_cancel_timer(void *ctx, pbft_timer t) {
    (void)t;
    note(ctx, 'C');
}
static int io_deliver(void *ctx, const pbft_action *a) {
    (void)a;
    rec *r = ctx;
    note(r, 'D');
    return r->deliver_rc;
}
static void io_request_proposal(void *ctx, uint64_t height) {
    rec *r = ctx;
    note(r, 'R');
    if (r->propose_inline) {
        pbft_event ev = {.kind = PBFT_EV_PROPOSAL, .height = height, .data = k_block,
                         .len = sizeof k_block};
        r->inline_rc = host_post(r->h, &ev);
    }
}
static int io_validate(void *ctx, uint64_t height, const uint8_t hash[32], const uint8_t *b,
                       size_t len) {
    (void)b, (void)len;
    rec *r = ctx;
    note(r, 'V');
    r->validates++;
    r->validate_height = height;
    memcpy(r->validate_hash, hash, 32);
    return r->validate_rc;
}
static void io_request_blocks(void *ctx, uint64_t from) {
    (void)from;
    note(ctx, 'F');
}
static void io_stepped(void *ctx, const pbft_event *ev, int rc) {
    (void)ev, (void)rc;
    rec *r = ctx;
    r->steps++;
    note(r, '|');
}
static void io_report(void *ctx, int err, const char *what, uint64_t height) {
    (void)height;
    rec *r = ctx;
    r->reports++;
    r->report_err = err;
    snprintf(r->report_what, sizeof r->report_what, "%s", what);
}

static host_io io_for(rec *r) {
    host_io io = {.ctx = r,
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
    return io;
}

/* A replica, its host and a recorder, started. */
typedef struct {
    pbft_replica r;
    host h;
    rec io;
} rig;

static void rig_up(rig *g, uint32_t self, pbft_planted_bug bug) {
    memset(g, 0, sizeof *g);
    replica(&g->r, self, bug);
    host_io io = io_for(&g->io);
    g->io.h = &g->h;
    ck_assert_int_eq(host_init(&g->h, &g->r, &io), PBFT_OK);
    ck_assert_int_eq(host_start(&g->h), PBFT_OK);
}

static void rig_down(rig *g) {
    host_free(&g->h);
    pbft_replica_free(&g->r);
}

static int post_proposal(rig *g) {
    pbft_event ev = {.kind = PBFT_EV_PROPOSAL, .height = 1, .data = k_block, .len = sizeof k_block};
    return host_post(&g->h, &ev);
}

static int post_timer(rig *g, uint64_t seq) {
    pbft_event ev = {.kind = PBFT_EV_TIMER, .timer = PBFT_TIMER_VIEW, .timer_seq = seq};
    return host_post(&g->h, &ev);
}

static uint8_t *msg_vote(int kind, uint32_t sender, uint64_t view, uint64_t height,
                         const uint8_t hash[32], size_t *len) {
    Tem__V1__PbftMessage m = TEM__V1__PBFT_MESSAGE__INIT;
    Tem__V1__PbftPrepare p = TEM__V1__PBFT_PREPARE__INIT;
    Tem__V1__PbftCommit c = TEM__V1__PBFT_COMMIT__INIT;
    Tem__V1__PbftPrePrepare pp = TEM__V1__PBFT_PRE_PREPARE__INIT;
    m.sender = sender;
    m.kind_case = kind;
    if (kind == TEM__V1__PBFT_MESSAGE__KIND_PREPARE) {
        p.view = view, p.height = height, p.block_hash.data = (uint8_t *)hash, p.block_hash.len = 32;
        m.prepare = &p;
    } else if (kind == TEM__V1__PBFT_MESSAGE__KIND_COMMIT) {
        c.view = view, c.height = height, c.block_hash.data = (uint8_t *)hash, c.block_hash.len = 32;
        m.commit = &c;
    } else {
        pp.view = view, pp.height = height, pp.block_hash.data = (uint8_t *)hash;
        pp.block_hash.len = 32;
        pp.block.data = (uint8_t *)k_block;
        pp.block.len = sizeof k_block;
        m.pre_prepare = &pp;
    }
    uint8_t *out;
    ck_assert_int_eq(pbft_msg_sign_pack(k_genesis, k_sec[sender], &m, &out, len), PBFT_OK);
    return out;
}

static int post_vote(rig *g, int kind, uint32_t sender) {
    uint8_t hash[32];
    ledger_sha256(hash, k_block, sizeof k_block);
    size_t len;
    uint8_t *m = msg_vote(kind, sender, 0, 1, hash, &len);
    pbft_event ev = {.kind = PBFT_EV_MESSAGE, .from = sender, .data = m, .len = len};
    int rc = host_post(&g->h, &ev);
    tem_free(m);
    return rc;
}

static size_t pos(const rec *r, char c) {
    const char *p = strchr(r->log, c);
    return p ? (size_t)(p - r->log) : SIZE_MAX;
}

/* ------------------------------------------------------------------ tests */
START_TEST(host_init_rejects_a_missing_callback) {
    pbft_replica r;
    replica(&r, 0, PBFT_BUG_NONE);
    rec rc = {0};
    host h;
    host_io io = io_for(&rc);
    io.persist = NULL;
    ck_assert_int_eq(host_init(&h, &r, &io), PBFT_EINVAL);
    io = io_for(&rc);
    io.stepped = NULL;
    io.report = NULL; /* optional */
    ck_assert_int_eq(host_init(&h, &r, &io), PBFT_OK);
    host_free(&h);
    pbft_replica_free(&r);
}
END_TEST

START_TEST(host_persists_the_vote_before_it_leaves) {
    rig g;
    rig_up(&g, 0, PBFT_BUG_NONE);
    /* start: the view timer and, as primary of view 0, a proposal request */
    ck_assert_ptr_nonnull(strchr(g.io.log, 'T'));
    ck_assert_ptr_nonnull(strchr(g.io.log, 'R'));
    g.io.n = 0;
    g.io.log[0] = 0;
    ck_assert_int_eq(post_proposal(&g), PBFT_OK);
    ck_assert_uint_ne(pos(&g.io, 'P'), SIZE_MAX);
    ck_assert_uint_ne(pos(&g.io, 'B'), SIZE_MAX);
    ck_assert_uint_lt(pos(&g.io, 'P'), pos(&g.io, 'B'));
    rig_down(&g);
}
END_TEST

START_TEST(host_holds_everything_after_a_pending_write) {
    rig g;
    rig_up(&g, 0, PBFT_BUG_NONE);
    g.io.persist_rc = HOST_PERSIST_PENDING;
    g.io.n = 0;
    g.io.log[0] = 0;
    ck_assert_int_eq(post_proposal(&g), PBFT_OK);
    ck_assert_str_eq(g.io.log, "|P"); /* the pre-prepare waits for the write */
    /* an event arriving meanwhile waits too, in the FIFO */
    ck_assert_int_eq(post_vote(&g, TEM__V1__PBFT_MESSAGE__KIND_PREPARE, 1), PBFT_OK);
    ck_assert_uint_eq(host_queued(&g.h), 1);
    ck_assert_uint_eq(g.io.steps, 1);
    g.io.persist_rc = PBFT_OK;
    ck_assert_int_eq(host_persist_done(&g.h, PBFT_OK), PBFT_OK);
    ck_assert_uint_eq(host_queued(&g.h), 0);
    ck_assert_uint_eq(g.io.steps, 2);
    ck_assert_uint_eq(pos(&g.io, 'B'), 2); /* the pre-prepare left right after the write */
    ck_assert_int_eq(host_persist_done(&g.h, PBFT_OK), PBFT_ESTATE); /* nothing pending */
    rig_down(&g);
}
END_TEST

START_TEST(host_refuses_with_efull_when_the_fifo_is_full) {
    rig g;
    rig_up(&g, 0, PBFT_BUG_NONE);
    g.io.persist_rc = HOST_PERSIST_PENDING;
    ck_assert_int_eq(post_proposal(&g), PBFT_OK);
    uint32_t steps = g.io.steps;
    for (uint32_t i = 0; i < HOST_EVENTS_MAX; i++) ck_assert_int_eq(post_timer(&g, 1000 + i), PBFT_OK);
    ck_assert_uint_eq(host_queued(&g.h), HOST_EVENTS_MAX);
    ck_assert_int_eq(post_timer(&g, 99), PBFT_EFULL);
    ck_assert_int_eq(post_vote(&g, TEM__V1__PBFT_MESSAGE__KIND_PREPARE, 1), PBFT_EFULL);
    ck_assert_uint_eq(host_queued(&g.h), HOST_EVENTS_MAX);
    ck_assert_uint_eq(g.h.events_refused, 2);
    ck_assert_uint_eq(g.io.steps, steps); /* nothing stepped while the write is in flight */
    g.io.persist_rc = PBFT_OK;
    ck_assert_int_eq(host_persist_done(&g.h, PBFT_OK), PBFT_OK);
    ck_assert_uint_eq(host_queued(&g.h), 0);
    ck_assert_uint_eq(g.io.steps, steps + HOST_EVENTS_MAX);
    rig_down(&g);
}
END_TEST

START_TEST(host_halts_when_a_write_fails) {
    static const struct {
        const char *name;
        bool pending; /* the failure comes through host_persist_done */
    } rows[] = {{"synchronous", false}, {"asynchronous", true}};
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        rig g;
        rig_up(&g, 0, PBFT_BUG_NONE);
        g.io.persist_rc = rows[i].pending ? HOST_PERSIST_PENDING : LEDGER_EIO;
        g.io.n = 0;
        g.io.log[0] = 0;
        ck_assert_int_eq(post_proposal(&g), PBFT_OK);
        if (rows[i].pending)
            ck_assert_int_eq(host_persist_done(&g.h, LEDGER_EIO), PBFT_EHALTED);
        ck_assert_msg(strcmp(g.io.log, "|P") == 0, "row %s: log %s", rows[i].name, g.io.log);
        int err = 0;
        ck_assert_msg(host_halted(&g.h, &err), "row %s", rows[i].name);
        ck_assert_int_eq(err, LEDGER_EIO);
        ck_assert_uint_eq(g.io.reports, 1);
        ck_assert_str_eq(g.io.report_what, "persist");
        ck_assert_int_eq(post_timer(&g, 1), PBFT_EHALTED);
        ck_assert_int_eq(host_persist_done(&g.h, PBFT_OK), PBFT_EHALTED);
        ck_assert_msg(strchr(g.io.log, 'B') == NULL, "row %s: the vote left", rows[i].name);
        rig_down(&g);
    }
}
END_TEST

/* Primary 0 proposes, 1 and 2 prepare and commit: the block is delivered. */
static void commit_block_one(rig *g) {
    ck_assert_int_eq(post_proposal(g), PBFT_OK);
    ck_assert_int_eq(post_vote(g, TEM__V1__PBFT_MESSAGE__KIND_PREPARE, 1), PBFT_OK);
    ck_assert_int_eq(post_vote(g, TEM__V1__PBFT_MESSAGE__KIND_PREPARE, 2), PBFT_OK);
    ck_assert_int_eq(post_vote(g, TEM__V1__PBFT_MESSAGE__KIND_COMMIT, 1), PBFT_OK);
    ck_assert_int_eq(post_vote(g, TEM__V1__PBFT_MESSAGE__KIND_COMMIT, 2), PBFT_OK);
}

START_TEST(host_delivers_and_halts_when_an_apply_fails) {
    rig g;
    rig_up(&g, 0, PBFT_BUG_NONE);
    commit_block_one(&g);
    ck_assert_uint_ne(pos(&g.io, 'D'), SIZE_MAX);
    ck_assert_uint_eq(pbft_replica_delivered(&g.r), 1);
    ck_assert(!host_halted(&g.h, NULL));
    rig_down(&g);

    rig_up(&g, 0, PBFT_BUG_NONE);
    g.io.deliver_rc = LEDGER_EBLOCK;
    commit_block_one(&g);
    int err;
    ck_assert(host_halted(&g.h, &err));
    ck_assert_int_eq(err, LEDGER_EBLOCK);
    ck_assert_str_eq(g.io.report_what, "deliver");
    /* nothing after the failed DELIVER: it is the last letter */
    ck_assert_int_eq(g.io.log[g.io.n - 1], 'D');
    rig_down(&g);
}
END_TEST

START_TEST(host_validates_one_block_and_retries_a_refused_start) {
    rig g;
    rig_up(&g, 1, PBFT_BUG_NONE);
    uint8_t hash[32];
    ledger_sha256(hash, k_block, sizeof k_block);
    g.io.validate_rc = PBFT_ENOMEM; /* the program cannot start it now */
    ck_assert_int_eq(post_vote(&g, TEM__V1__PBFT_MESSAGE__KIND_PRE_PREPARE, 0), PBFT_OK);
    ck_assert_uint_eq(g.io.validates, 1);
    ck_assert_uint_eq(g.io.reports, 1);
    ck_assert_int_eq(g.io.report_err, PBFT_ENOMEM);
    ck_assert_uint_eq(g.h.val_n, 1); /* kept */
    ck_assert_int_eq(host_validated(&g.h, 1, hash, true), PBFT_ESTALE);
    g.io.validate_rc = PBFT_OK;
    ck_assert_int_eq(post_timer(&g, 12345), PBFT_OK); /* any event: offered again */
    ck_assert_uint_eq(g.io.validates, 2);
    ck_assert_uint_eq(g.io.validate_height, 1);
    ck_assert_mem_eq(g.io.validate_hash, hash, 32);
    ck_assert_uint_eq(g.h.val_n, 0);
    uint8_t other[32] = {1};
    ck_assert_int_eq(host_validated(&g.h, 1, other, true), PBFT_ESTALE);
    g.io.n = 0;
    g.io.log[0] = 0;
    ck_assert_int_eq(host_validated(&g.h, 1, hash, true), PBFT_OK);
    /* the answer was stepped: the replica persisted its PREPARE, then broadcast it */
    ck_assert_uint_eq(pos(&g.io, '|'), 0);
    ck_assert_uint_lt(pos(&g.io, 'P'), pos(&g.io, 'B'));
    ck_assert_int_eq(host_validated(&g.h, 1, hash, true), PBFT_ESTALE); /* answered once */
    rig_down(&g);
}
END_TEST

START_TEST(host_steps_an_event_posted_from_a_callback_after_the_current_list) {
    pbft_replica r;
    replica(&r, 0, PBFT_BUG_NONE);
    rec rc = {0};
    host h;
    host_io io = io_for(&rc);
    rc.h = &h;
    rc.propose_inline = true;
    ck_assert_int_eq(host_init(&h, &r, &io), PBFT_OK);
    ck_assert_int_eq(host_start(&h), PBFT_OK);
    ck_assert_int_eq(rc.inline_rc, PBFT_OK);
    /* start's list (timer, proposal request) ends before the proposal is stepped */
    ck_assert_uint_eq(rc.steps, 1);
    ck_assert_uint_lt(pos(&rc, 'R'), pos(&rc, '|'));
    ck_assert_uint_lt(pos(&rc, '|'), pos(&rc, 'P'));
    ck_assert_uint_lt(pos(&rc, 'P'), pos(&rc, 'B'));
    ck_assert_uint_eq(host_queued(&h), 0);
    host_free(&h);
    pbft_replica_free(&r);
}
END_TEST

START_TEST(host_planted_bug_sends_before_the_write_completes) {
    rig g;
    rig_up(&g, 0, PBFT_BUG_SEND_BEFORE_PERSIST);
    g.io.persist_rc = HOST_PERSIST_PENDING;
    g.io.n = 0;
    g.io.log[0] = 0;
    ck_assert_int_eq(post_proposal(&g), PBFT_OK);
    /* the pre-prepare left while its record was still in flight: a crash now loses the record */
    ck_assert_uint_ne(pos(&g.io, 'B'), SIZE_MAX);
    ck_assert_uint_eq(g.h.persists_pending, 1);
    rig_down(&g);
}
END_TEST

START_TEST(host_oom_ladder_refuses_cleanly) {
    /* host_init: its one allocation */
    pbft_replica r;
    replica(&r, 0, PBFT_BUG_NONE);
    rec rc = {0};
    host h;
    host_io io = io_for(&rc);
    tem_alloc_fail_after(0);
    ck_assert_int_eq(host_init(&h, &r, &io), PBFT_ENOMEM);
    tem_alloc_fail_after(-1);
    pbft_replica_free(&r);

    /* queuing a copy: the event is refused, nothing queued, the host keeps working */
    for (long k = 0;; k++) {
        rig g;
        rig_up(&g, 0, PBFT_BUG_NONE);
        g.io.persist_rc = HOST_PERSIST_PENDING;
        ck_assert_int_eq(post_proposal(&g), PBFT_OK);
        uint8_t hash[32];
        ledger_sha256(hash, k_block, sizeof k_block);
        size_t len;
        uint8_t *m = msg_vote(TEM__V1__PBFT_MESSAGE__KIND_PREPARE, 1, 0, 1, hash, &len);
        pbft_event ev = {.kind = PBFT_EV_MESSAGE, .from = 1, .data = m, .len = len,
                         .cert = m, .cert_len = len};
        tem_alloc_fail_after(k);
        int got = host_post(&g.h, &ev);
        tem_alloc_fail_after(-1);
        tem_free(m);
        if (got == PBFT_OK) {
            ck_assert_uint_eq(host_queued(&g.h), 1);
            ck_assert_int_ge(k, 2); /* data and cert copies */
            g.io.persist_rc = PBFT_OK;
            ck_assert_int_eq(host_persist_done(&g.h, PBFT_OK), PBFT_OK);
            ck_assert_uint_eq(host_queued(&g.h), 0);
            rig_down(&g);
            break;
        }
        ck_assert_int_eq(got, PBFT_ENOMEM);
        ck_assert_uint_eq(host_queued(&g.h), 0);
        ck_assert(!host_halted(&g.h, NULL));
        rig_down(&g);
        ck_assert_int_lt(k, 10);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("host");
    TCase *t = tcase_create("host");
    tcase_add_test(t, host_init_rejects_a_missing_callback);
    tcase_add_test(t, host_persists_the_vote_before_it_leaves);
    tcase_add_test(t, host_holds_everything_after_a_pending_write);
    tcase_add_test(t, host_refuses_with_efull_when_the_fifo_is_full);
    tcase_add_test(t, host_halts_when_a_write_fails);
    tcase_add_test(t, host_delivers_and_halts_when_an_apply_fails);
    tcase_add_test(t, host_validates_one_block_and_retries_a_refused_start);
    tcase_add_test(t, host_steps_an_event_posted_from_a_callback_after_the_current_list);
    tcase_add_test(t, host_planted_bug_sends_before_the_write_completes);
    tcase_add_test(t, host_oom_ladder_refuses_cleanly);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
