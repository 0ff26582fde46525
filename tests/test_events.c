/* test_events.c: the event hub of GET /v1/events (node/events.c) without HTTP: fake sinks that
 * a test "reads" at chosen moments, and a synthetic chain of blocks whose events are known.
 * Filters, Server-Sent Events framing, resume by Last-Event-ID, paced replay, the replay
 * window, the subscriber limits, the drop of a slow subscriber, and a randomised run over many
 * seeds against a reference that filters the whole chain directly. */
#include "node/events.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ fake sinks */
typedef struct {
    char *q;      /* written, not yet read by the client */
    size_t qlen;
    char *got;    /* what the client has read */
    size_t glen;
    bool gone;    /* the client left: writes fail */
    bool ended;
} fsink;

static void append(char **b, size_t *len, const void *d, size_t n) {
    *b = realloc(*b, *len + n + 1);
    ck_assert_ptr_nonnull(*b);
    memcpy(*b + *len, d, n);
    *len += n;
    (*b)[*len] = '\0';
}
static int f_write(void *s, const void *d, size_t n) {
    fsink *f = s;
    ck_assert(!f->ended);
    if (f->gone) return -1;
    append(&f->q, &f->qlen, d, n);
    return 0;
}
static size_t f_queued(void *s) { return ((fsink *)s)->qlen; }
static void f_discard(void *s) { ((fsink *)s)->qlen = 0; }
static void f_end(void *s) {
    fsink *f = s;
    ck_assert(!f->ended);
    f->ended = true;
    if (!f->gone && f->qlen) append(&f->got, &f->glen, f->q, f->qlen); /* the rest still goes out */
    f->qlen = 0;
}
static const node_events_sink_ops ops = {f_write, f_queued, f_discard, f_end};

/* The client reads everything queued; the hub hears that the sink drained. */
static void f_read(node_events *h, fsink *f) {
    if (f->qlen) append(&f->got, &f->glen, f->q, f->qlen);
    f->qlen = 0;
    if (!f->ended) node_events_drained(h, f);
}
static void f_free(fsink *f) {
    free(f->q);
    free(f->got);
    memset(f, 0, sizeof *f);
}

/* ------------------------------------------------------------------ synthetic chain */
static const uint8_t *acct(int i) {
    static uint8_t a[4][33];
    for (int k = 0; k < 4; k++) {
        memset(a[k], 0x10 + k, 33);
        a[k][0] = 0x02;
    }
    return a[i & 3];
}

/* Block h: a block event, then h % 4 events of kinds tx/trade/curtailment/settlement with one
 * or two accounts and slot h % 3. `pad` bytes of payload make events bigger. */
static size_t pad = 0;
static uint64_t unreadable = 0; /* a height the loader fails on (0 = none) */
static int load_fn(void *ctx, uint64_t h, node_events_batch *out) {
    uint64_t tip = *(uint64_t *)ctx;
    if (h == 0 || h > tip || h == unreadable) return -1;
    char js[4096];
    snprintf(js, sizeof js, "{\"height\":%llu}", (unsigned long long)h);
    ck_assert_int_eq(node_events_batch_add(out, NODE_EV_BLOCK, false, 0, NULL, 0, js), 0);
    for (uint32_t i = 0; i < h % 4; i++) {
        uint32_t kind = 2u << ((h + i) % 4);
        uint8_t acc[2][33];
        memcpy(acc[0], acct((int)(h + i)), 33);
        memcpy(acc[1], acct((int)(h + 2 * i + 1)), 33);
        int n = snprintf(js, sizeof js, "{\"h\":%llu,\"i\":%u,\"p\":\"", (unsigned long long)h, i + 1);
        for (size_t k = 0; k < pad && n < (int)sizeof js - 8; k++) js[n++] = 'x';
        snprintf(js + n, sizeof js - (size_t)n, "\"}");
        ck_assert_int_eq(node_events_batch_add(out, kind, true, h % 3, (const uint8_t(*)[33])acc, 1 + (i & 1), js), 0);
    }
    return 0;
}

static uint64_t tip;
static void commit_block(node_events *h) {
    tip++;
    node_events_batch b;
    node_events_batch_init(&b, tip);
    ck_assert_int_eq(load_fn(&tip, tip, &b), 0);
    node_events_publish(h, &b);
    node_events_batch_free(&b);
}

/* The ids the client received, "H:I" joined by spaces, and the event names. */
static void ids_of(const fsink *f, char *ids, size_t cap, char *names, size_t ncap) {
    ids[0] = names[0] = '\0';
    const char *p = f->got ? f->got : "";
    while ((p = strstr(p, "id: ")) != NULL) {
        const char *e = strchr(p, '\n');
        ck_assert_ptr_nonnull(e);
        strncat(ids, p + 4, (size_t)(e - p - 4) < cap - strlen(ids) - 2 ? (size_t)(e - p - 4) : 0);
        strcat(ids, " ");
        p = e;
    }
    p = f->got ? f->got : "";
    while ((p = strstr(p, "event: ")) != NULL) {
        const char *e = strchr(p, '\n');
        if ((size_t)(e - p - 7) + 2 < ncap - strlen(names)) {
            strncat(names, p + 7, (size_t)(e - p - 7));
            strcat(names, " ");
        }
        p = e;
    }
}

/* Reference: every event of blocks [from, to] (skipping index <= after in block `from` when
 * resume) that f matches, as "H:I " ids. */
static void reference(const node_events_filter *f, uint64_t from, uint64_t to, char *out, size_t cap) {
    out[0] = '\0';
    for (uint64_t h = from; h <= to; h++) {
        node_events_batch b;
        node_events_batch_init(&b, h);
        uint64_t t = to;
        ck_assert_int_eq(load_fn(&t, h, &b), 0);
        for (uint32_t i = 0; i < b.n; i++) {
            if (f->resume && h == f->from_height && b.ev[i].index <= f->after_index) continue;
            if (!node_events_filter_match(f, &b.ev[i])) continue;
            char id[48];
            snprintf(id, sizeof id, "%llu:%u ", (unsigned long long)h, b.ev[i].index);
            ck_assert(strlen(out) + strlen(id) < cap);
            strcat(out, id);
        }
        node_events_batch_free(&b);
    }
}

static node_events *hub_new(uint32_t subs, uint32_t per_addr, size_t buf, uint32_t replay) {
    node_events_config c = {subs, per_addr, buf, replay};
    node_events *h;
    ck_assert_int_eq(node_events_new(&c, &ops, load_fn, &tip, tip, &h), NODE_EVENTS_OK);
    return h;
}

/* ------------------------------------------------------------------ filters */
START_TEST(events_filter_parse_accepts_documented_forms_and_refuses_the_rest) {
    static const struct {
        const char *name, *query, *last_id;
        int want;
        uint32_t kinds;
        uint64_t from;
        bool resume;
        uint32_t after;
    } rows[] = {
        {"empty", "", NULL, 0, 0, 0, false, 0},
        {"kinds", "kinds=tx,trade", NULL, 0, NODE_EV_TX | NODE_EV_TRADE, 0, false, 0},
        {"all kinds", "kinds=block,tx,trade,curtailment,settlement", NULL, 0, NODE_EV_ALL, 0, false, 0},
        {"from", "from_height=12", NULL, 0, 0, 12, false, 0},
        {"last id wins", "from_height=3", "12:4", 0, 0, 12, true, 4},
        {"slot", "slot=96&kinds=settlement", "", 0, NODE_EV_SETTLEMENT, 0, false, 0},
        {"account", "account=02aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", NULL, 0, 0, 0, false, 0},
        {"bad kind", "kinds=tx,nope", NULL, NODE_EVENTS_EINVAL, 0, 0, false, 0},
        {"empty kind", "kinds=", NULL, 0, 0, 0, false, 0},
        {"short account", "account=02ab", NULL, NODE_EVENTS_EINVAL, 0, 0, false, 0},
        {"bad hex", "account=zzaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", NULL, NODE_EVENTS_EINVAL, 0, 0, false, 0},
        {"slot not a number", "slot=-1", NULL, NODE_EVENTS_EINVAL, 0, 0, false, 0},
        {"slot overflow", "slot=99999999999999999999", NULL, NODE_EVENTS_EINVAL, 0, 0, false, 0},
        {"from 0", "from_height=0", NULL, NODE_EVENTS_EINVAL, 0, 0, false, 0},
        {"unknown param", "color=red", NULL, NODE_EVENTS_EINVAL, 0, 0, false, 0},
        {"no value", "kinds", NULL, NODE_EVENTS_EINVAL, 0, 0, false, 0},
        {"bad last id", "", "12", NODE_EVENTS_EINVAL, 0, 0, false, 0},
        {"last id height 0", "", "0:1", NODE_EVENTS_EINVAL, 0, 0, false, 0},
        {"last id junk", "", "12:x", NODE_EVENTS_EINVAL, 0, 0, false, 0},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        node_events_filter f;
        char err[160] = "";
        int rc = node_events_filter_parse(&f, rows[i].query, rows[i].last_id, err, sizeof err);
        ck_assert_msg(rc == rows[i].want, "row %s: rc %d", rows[i].name, rc);
        if (rc != 0) {
            ck_assert_msg(err[0] != '\0', "row %s: no message", rows[i].name);
            continue;
        }
        ck_assert_msg(f.kinds == rows[i].kinds, "row %s: kinds %u", rows[i].name, f.kinds);
        ck_assert_msg(f.from_height == rows[i].from && f.resume == rows[i].resume && f.after_index == rows[i].after,
                      "row %s: start", rows[i].name);
    }
}
END_TEST

START_TEST(events_filter_match_needs_kind_slot_and_account_together) {
    node_events_batch b;
    node_events_batch_init(&b, 5);
    uint8_t acc[2][33];
    memcpy(acc[0], acct(1), 33);
    memcpy(acc[1], acct(2), 33);
    ck_assert_int_eq(node_events_batch_add(&b, NODE_EV_TRADE, true, 7, (const uint8_t(*)[33])acc, 2, "{}"), 0);
    node_events_filter f;
    memset(&f, 0, sizeof f);
    ck_assert(node_events_filter_match(&f, &b.ev[0]));
    f.kinds = NODE_EV_TX;
    ck_assert(!node_events_filter_match(&f, &b.ev[0]));
    f.kinds = NODE_EV_TX | NODE_EV_TRADE;
    ck_assert(node_events_filter_match(&f, &b.ev[0]));
    f.has_slot = true;
    f.slot = 8;
    ck_assert(!node_events_filter_match(&f, &b.ev[0]));
    f.slot = 7;
    ck_assert(node_events_filter_match(&f, &b.ev[0]));
    f.has_account = true;
    memcpy(f.account, acct(2), 33); /* the second account counts too */
    ck_assert(node_events_filter_match(&f, &b.ev[0]));
    memcpy(f.account, acct(3), 33);
    ck_assert(!node_events_filter_match(&f, &b.ev[0]));
    node_events_batch_free(&b);
}
END_TEST

/* ------------------------------------------------------------------ delivery */
START_TEST(events_live_subscriber_gets_matching_events_in_sse_frames) {
    tip = 3;
    pad = 0;
    node_events *h = hub_new(0, 0, 0, 0);
    fsink s = {0};
    node_events_filter f;
    char err[128];
    ck_assert_int_eq(node_events_filter_parse(&f, "kinds=block,tx", NULL, err, sizeof err), 0);
    ck_assert_int_eq(node_events_subscribe(h, "10.0.0.1", &f, &s), 0);
    for (int i = 0; i < 6; i++) commit_block(h);
    f_read(h, &s);
    ck_assert_ptr_nonnull(strstr(s.got, "retry: 2000\n: tem events, tip 3\n\n"));
    /* block 4 = tx? (h+i)%4 for i=0: 0 -> kind 2 = tx */
    ck_assert_ptr_nonnull(strstr(s.got, "id: 4:0\nevent: block\ndata: {\"height\":4}\n\n"));
    char ids[4096], names[4096], want[4096];
    ids_of(&s, ids, sizeof ids, names, sizeof names);
    reference(&f, 4, 9, want, sizeof want);
    ck_assert_str_eq(ids, want);
    ck_assert_uint_eq(node_events_count(h), 1);
    node_events_free(h);
    ck_assert(s.ended);
    f_free(&s);
}
END_TEST

START_TEST(events_resume_from_last_event_id_replays_exactly_what_follows_it) {
    tip = 40;
    pad = 0;
    node_events *h = hub_new(0, 0, 0, 0);
    fsink s = {0};
    node_events_filter f;
    char err[128], ids[8192], names[8192], want[8192];
    ck_assert_int_eq(node_events_filter_parse(&f, "", "7:1", err, sizeof err), 0);
    ck_assert_int_eq(node_events_subscribe(h, "a", &f, &s), 0);
    /* Replay goes in steps while the client reads; a block committed meanwhile is not lost
     * nor doubled. */
    for (int round = 0; round < 20; round++) {
        f_read(h, &s);
        if (round == 1) commit_block(h);
    }
    commit_block(h);
    f_read(h, &s);
    ids_of(&s, ids, sizeof ids, names, sizeof names);
    reference(&f, 7, tip, want, sizeof want);
    ck_assert_str_eq(ids, want);
    /* block 7 holds events 0..3: the stream picks up right after 7:1 */
    ck_assert_int_eq(strncmp(ids, "7:2 7:3 8:0 ", 12), 0);
    node_events_free(h);
    f_free(&s);
}
END_TEST

START_TEST(events_replay_is_paced_by_the_reader) {
    tip = 200;
    pad = 200;
    node_events *h = hub_new(0, 0, 4096, 0);
    fsink s = {0};
    node_events_filter f;
    char err[128];
    ck_assert_int_eq(node_events_filter_parse(&f, "from_height=1", NULL, err, sizeof err), 0);
    ck_assert_int_eq(node_events_subscribe(h, "a", &f, &s), 0);
    /* Without reads, the hub stops after about half a buffer plus one block. */
    ck_assert_uint_lt(s.qlen, 4096 / 2 + 4096);
    ck_assert_ptr_eq(strstr(s.q, "id: 200:"), NULL);
    for (int i = 0; i < 1000 && !strstr(s.got ? s.got : "", "id: 200:0"); i++) f_read(h, &s);
    ck_assert_ptr_nonnull(strstr(s.got, "id: 200:0"));
    ck_assert(!s.ended);
    node_events_free(h);
    f_free(&s);
}
END_TEST

START_TEST(events_resume_older_than_the_window_is_refused_and_changes_nothing) {
    tip = 50;
    node_events *h = hub_new(0, 0, 0, 10);
    fsink s = {0};
    node_events_filter f;
    char err[128];
    ck_assert_int_eq(node_events_filter_parse(&f, "from_height=40", NULL, err, sizeof err), 0);
    ck_assert_int_eq(node_events_subscribe(h, "a", &f, &s), NODE_EVENTS_EREPLAY);
    ck_assert_uint_eq(s.qlen, 0);
    ck_assert_uint_eq(node_events_count(h), 0);
    ck_assert_int_eq(node_events_filter_parse(&f, "from_height=41", NULL, err, sizeof err), 0);
    ck_assert_int_eq(node_events_subscribe(h, "a", &f, &s), 0);
    node_events_free(h);
    f_free(&s);
}
END_TEST

START_TEST(events_unreadable_block_ends_the_replay_with_an_error_event) {
    tip = 10;
    pad = 0;
    unreadable = 5;
    node_events *h = hub_new(0, 0, 0, 0);
    fsink s = {0};
    node_events_filter f;
    char err[128];
    ck_assert_int_eq(node_events_filter_parse(&f, "from_height=2&kinds=block", NULL, err, sizeof err), 0);
    ck_assert_int_eq(node_events_subscribe(h, "a", &f, &s), 0);
    unreadable = 0;
    ck_assert(s.ended);
    ck_assert_uint_eq(node_events_count(h), 0);
    ck_assert_ptr_nonnull(strstr(s.got, "id: 4:0"));
    ck_assert_ptr_eq(strstr(s.got, "id: 5:0"), NULL);
    ck_assert_ptr_nonnull(strstr(s.got, "event: error\ndata: {\"code\":\"EREPLAY\",\"error\":\"cannot read block 5\"}"));
    node_events_free(h);
    f_free(&s);
}
END_TEST

START_TEST(events_subscribers_are_bounded_per_address_and_in_total) {
    tip = 1;
    node_events *h = hub_new(5, 2, 0, 0);
    fsink s[8];
    memset(s, 0, sizeof s);
    node_events_filter f;
    memset(&f, 0, sizeof f);
    ck_assert_int_eq(node_events_subscribe(h, "1.1.1.1", &f, &s[0]), 0);
    ck_assert_int_eq(node_events_subscribe(h, "1.1.1.1", &f, &s[1]), 0);
    ck_assert_int_eq(node_events_subscribe(h, "1.1.1.1", &f, &s[2]), NODE_EVENTS_ELIMIT);
    ck_assert_int_eq(node_events_subscribe(h, "2.2.2.2", &f, &s[2]), 0);
    ck_assert_int_eq(node_events_subscribe(h, "3.3.3.3", &f, &s[3]), 0);
    ck_assert_int_eq(node_events_subscribe(h, "4.4.4.4", &f, &s[4]), 0);
    ck_assert_int_eq(node_events_subscribe(h, "5.5.5.5", &f, &s[5]), NODE_EVENTS_EFULL);
    ck_assert_uint_eq(node_events_count(h), 5);
    /* A client that left frees its place, for its address and in total. */
    s[0].gone = true;
    node_events_gone(h, &s[0]);
    ck_assert(s[0].ended);
    ck_assert_int_eq(node_events_subscribe(h, "1.1.1.1", &f, &s[5]), 0);
    /* A vanished client is noticed at the next write as well. */
    s[1].gone = true;
    commit_block(h);
    ck_assert(s[1].ended);
    ck_assert_uint_eq(node_events_count(h), 4);
    /* One that asked for a height far ahead and left is noticed too: it is told each block's
     * height while it waits (before, nothing was ever written to it and its place stayed
     * taken: 256 of them refused every later subscriber). */
    node_events_filter far;
    memset(&far, 0, sizeof far);
    far.from_height = 1000000000000ull;
    ck_assert_int_eq(node_events_subscribe(h, "6.6.6.6", &far, &s[6]), 0);
    ck_assert_uint_eq(node_events_count(h), 5);
    commit_block(h);
    ck_assert(!s[6].ended);
    ck_assert_ptr_nonnull(strstr(s[6].q, ": height "));
    ck_assert_ptr_null(strstr(s[6].q, "event: "));
    s[6].gone = true;
    commit_block(h);
    ck_assert(s[6].ended);
    ck_assert_uint_eq(node_events_count(h), 4);
    ck_assert_int_eq(node_events_subscribe(h, "5.5.5.5", &f, &s[7]), NODE_EVENTS_OK);
    node_events_free(h);
    for (int i = 0; i < 8; i++) f_free(&s[i]);
}
END_TEST

START_TEST(events_slow_subscriber_is_dropped_with_a_final_event_and_others_continue) {
    tip = 0;
    pad = 500;
    node_events *h = hub_new(0, 0, 2048, 0);
    fsink slow = {0}, fast = {0};
    node_events_filter f;
    memset(&f, 0, sizeof f);
    ck_assert_int_eq(node_events_subscribe(h, "a", &f, &slow), 0);
    ck_assert_int_eq(node_events_subscribe(h, "b", &f, &fast), 0);
    f_read(h, &slow); /* it read the preamble, then stops reading */
    int dropped_at = 0;
    for (int i = 0; i < 40; i++) {
        commit_block(h);
        f_read(h, &fast);
        if (!dropped_at && slow.ended) dropped_at = (int)tip;
    }
    ck_assert_int_gt(dropped_at, 0);
    ck_assert_uint_eq(node_events_dropped_total(h), 1);
    ck_assert_uint_eq(node_events_count(h), 1);
    /* The backlog was discarded, the notice delivered, and it names the limit. */
    ck_assert_ptr_nonnull(strstr(slow.got, "event: dropped\ndata: {\"code\":\"ESLOW\""));
    ck_assert_ptr_nonnull(strstr(slow.got, "limit 2048"));
    ck_assert_ptr_eq(strstr(slow.got, "id: 1:0"), NULL);
    /* The fast one missed nothing. */
    char ids[65536], names[8192], want[65536];
    ids_of(&fast, ids, sizeof ids, names, sizeof names);
    reference(&f, 1, tip, want, sizeof want);
    ck_assert_str_eq(ids, want);
    node_events_free(h);
    f_free(&slow);
    f_free(&fast);
}
END_TEST

/* Random subscribers (filters, start points, reading speeds, departures) against the reference
 * over many seeds: every subscriber that was not dropped and did not leave received exactly the
 * reference's ids; a dropped one received a prefix of them and then the notice. */
static uint64_t rng;
static uint32_t rnd(uint32_t n) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

START_TEST(events_random_subscribers_match_the_reference_over_200_seeds) {
    for (uint64_t seed = 1; seed <= 200; seed++) {
        rng = seed * 0x9E3779B97F4A7C15ull;
        tip = rnd(30);
        pad = rnd(3) * 100;
        size_t buf = 1024 + rnd(8) * 512;
        node_events *h = hub_new(8, 8, buf, 64);
        enum { NS = 6 };
        fsink s[NS];
        node_events_filter f[NS];
        uint64_t start[NS];
        bool on[NS], left[NS];
        uint32_t speed[NS];
        memset(s, 0, sizeof s);
        for (int i = 0; i < NS; i++) {
            memset(&f[i], 0, sizeof f[i]);
            f[i].kinds = rnd(2) ? 0 : 1 + rnd(31);
            if (rnd(3) == 0) {
                f[i].has_account = true;
                memcpy(f[i].account, acct((int)rnd(4)), 33);
            }
            if (rnd(4) == 0) {
                f[i].has_slot = true;
                f[i].slot = rnd(3);
            }
            if (tip && rnd(2)) {
                f[i].from_height = 1 + rnd((uint32_t)tip);
                if (rnd(2)) {
                    f[i].resume = true;
                    f[i].after_index = rnd(4);
                }
            }
            start[i] = f[i].from_height ? f[i].from_height : tip + 1;
            speed[i] = rnd(4); /* 0: never reads */
            on[i] = false;
            left[i] = false;
        }
        for (int step = 0; step < 60; step++) {
            int i = (int)rnd(NS);
            if (!on[i] && step < 20) {
                if (node_events_subscribe(h, "x", &f[i], &s[i]) == 0) on[i] = true;
                start[i] = f[i].from_height ? f[i].from_height : tip + 1;
            }
            if (rnd(3) == 0) commit_block(h);
            for (int k = 0; k < NS; k++)
                if (on[k] && !s[k].ended && speed[k] && rnd(speed[k] + 1)) f_read(h, &s[k]);
            if (on[i] && !s[i].ended && rnd(40) == 0) {
                s[i].gone = true;
                left[i] = true;
            }
        }
        /* Let the readers catch up. */
        for (int r = 0; r < 400; r++)
            for (int k = 0; k < NS; k++)
                if (on[k] && !s[k].ended && speed[k]) f_read(h, &s[k]);
        for (int k = 0; k < NS; k++) {
            if (!on[k] || left[k]) continue;
            char ids[65536], names[16384], want[65536];
            ids_of(&s[k], ids, sizeof ids, names, sizeof names);
            reference(&f[k], start[k], tip, want, sizeof want);
            if (s[k].ended) {
                ck_assert_msg(strstr(s[k].got, "event: dropped") != NULL, "seed %llu sub %d ended without notice",
                              (unsigned long long)seed, k);
                ck_assert_msg(strncmp(want, ids, strlen(ids)) == 0, "seed %llu sub %d: not a prefix",
                              (unsigned long long)seed, k);
            } else {
                ck_assert_msg(speed[k] > 0 || strcmp(ids, want) == 0 || s[k].qlen > 0, "seed %llu", (unsigned long long)seed);
                if (speed[k]) ck_assert_msg(strcmp(ids, want) == 0, "seed %llu sub %d:\n got %s\nwant %s",
                                            (unsigned long long)seed, k, ids, want);
            }
        }
        node_events_free(h);
        for (int k = 0; k < NS; k++) {
            ck_assert(!on[k] || s[k].ended);
            f_free(&s[k]);
        }
    }
}
END_TEST

int main(void) {
    Suite *su = suite_create("events");
    TCase *tc = tcase_create("hub");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, events_filter_parse_accepts_documented_forms_and_refuses_the_rest);
    tcase_add_test(tc, events_filter_match_needs_kind_slot_and_account_together);
    tcase_add_test(tc, events_live_subscriber_gets_matching_events_in_sse_frames);
    tcase_add_test(tc, events_resume_from_last_event_id_replays_exactly_what_follows_it);
    tcase_add_test(tc, events_replay_is_paced_by_the_reader);
    tcase_add_test(tc, events_resume_older_than_the_window_is_refused_and_changes_nothing);
    tcase_add_test(tc, events_unreadable_block_ends_the_replay_with_an_error_event);
    tcase_add_test(tc, events_subscribers_are_bounded_per_address_and_in_total);
    tcase_add_test(tc, events_slow_subscriber_is_dropped_with_a_final_event_and_others_continue);
    tcase_add_test(tc, events_random_subscribers_match_the_reference_over_200_seeds);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
