/* test_net.c: Check suite for net/: the handshake and frame AEAD as pure functions, then the
 * transport on a real libuv loop over 127.0.0.1 (ephemeral ports): sessions between in-process
 * nodes, refusal of unknown keys, replayed handshakes and frames, oversize and garbage frames,
 * reconnect after a restart, rate limits and observers. Raw-socket clients run in a helper
 * thread with blocking sockets and receive timeouts; the loop runs on the test thread, bounded
 * by uv timers. */
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net/net.h"
#include "loop_fixture.h"

/* ------------------------------------------------------------------ fixtures */
#define NV 4
static ledger_genesis G;
static uint8_t VSEC[NV][64];
static uint8_t OUTSIDER_SEC[64], OUTSIDER_PK[32];

static void genesis_setup(void) {
    ck_assert_int_ge(sodium_init(), 0);
    memset(&G, 0, sizeof G);
    snprintf(G.chain_id, sizeof G.chain_id, "tem-test");
    randombytes_buf(G.hash, sizeof G.hash);
    G.n_validators = NV;
    for (int i = 0; i < NV; i++) {
        ck_assert_int_eq(crypto_sign_keypair(G.validators[i].pubkey, VSEC[i]), 0);
        snprintf(G.validators[i].name, sizeof G.validators[i].name, "v%d", i);
        G.validators[i].address[0] = '\0';
    }
    ck_assert_int_eq(crypto_sign_keypair(OUTSIDER_PK, OUTSIDER_SEC), 0);
}

/* Runs both handshake sides in memory; returns the first error or NET_OK. */
static int hs_pair(net_hs *i, net_hs *r, uint8_t m1[NET_HS_MSG_MAX], uint8_t m3[NET_HS_MSG_MAX]) {
    uint8_t buf[NET_HS_MSG_MAX];
    size_t len;
    int rc;
    if ((rc = net_hs_write(i, buf, sizeof buf, &len)) != NET_OK) return rc;
    if (m1) memcpy(m1, buf, len);
    if ((rc = net_hs_read(r, buf, len)) != NET_OK) return rc;
    if ((rc = net_hs_write(r, buf, sizeof buf, &len)) != NET_OK) return rc;
    if ((rc = net_hs_read(i, buf, len)) != NET_OK) return rc;
    if ((rc = net_hs_write(i, buf, sizeof buf, &len)) != NET_OK) return rc;
    if (m3) memcpy(m3, buf, len);
    return net_hs_read(r, buf, len);
}

/* ------------------------------------------------------------------ pure handshake tests */
START_TEST(hs_between_validators_authenticates_both_and_keys_match) {
    net_hs i, r;
    ck_assert_int_eq(net_hs_init(&i, NET_HS_INITIATOR, &G, VSEC[1], G.validators[0].pubkey, false), NET_OK);
    ck_assert_int_eq(net_hs_init(&r, NET_HS_RESPONDER, &G, VSEC[0], NULL, false), NET_OK);
    ck_assert_int_eq(hs_pair(&i, &r, NULL, NULL), NET_OK);
    ck_assert(net_hs_done(&i) && net_hs_done(&r));
    ck_assert_int_eq(i.peer_index, 0);
    ck_assert_int_eq(r.peer_index, 1);
    ck_assert_mem_eq(r.peer_pk, G.validators[1].pubkey, 32);
    net_session si, sr;
    ck_assert_int_eq(net_hs_split(&i, &si), NET_OK);
    ck_assert_int_eq(net_hs_split(&r, &sr), NET_OK);
    ck_assert_mem_eq(si.tx_key, sr.rx_key, 32);
    ck_assert_mem_eq(si.rx_key, sr.tx_key, 32);
    ck_assert(memcmp(si.tx_key, si.rx_key, 32) != 0);
    uint8_t frame[4 + 5 + 16], pt[5];
    ck_assert_int_eq(net_session_seal(&si, "hello", 5, frame), NET_OK);
    ck_assert_uint_eq(tem_get_u32be(frame), 5 + 16);
    ck_assert_int_eq(net_session_open(&sr, frame + 4, 21, pt), NET_OK);
    ck_assert_mem_eq(pt, "hello", 5);
    ck_assert_int_eq(net_session_seal(&sr, "world", 5, frame), NET_OK);
    ck_assert_int_eq(net_session_open(&si, frame + 4, 21, pt), NET_OK);
    ck_assert_mem_eq(pt, "world", 5);
    net_hs_wipe(&i);
    net_hs_wipe(&r);
}
END_TEST

START_TEST(hs_refusals_name_their_reason) {
    static const struct {
        const char *name;
        int init_key;      /* validator index, -1 = outsider */
        int resp_key;      /* validator index */
        int expected;      /* index the initiator expects, -1 = any */
        bool observers;    /* responder accepts observers */
        bool other_chain;  /* responder runs another genesis */
        int want;
        int want_peer_index;
    } rows[] = {
        {"validator pair", 2, 0, 0, false, false, NET_OK, 2},
        {"unknown key, observers off", -1, 0, 0, false, false, NET_EUNKNOWN, 0},
        {"unknown key, observers on", -1, 0, 0, true, false, NET_OK, -1},
        {"reached another validator than dialled", 1, 2, 0, false, false, NET_EAUTH, 0},
        {"self connection", 0, 0, -1, false, false, NET_ESELF, 0},
        {"different genesis", 1, 0, 0, false, true, NET_EAUTH, 0},
    };
    ledger_genesis other = G;
    other.hash[0] ^= 1;
    for (size_t k = 0; k < sizeof rows / sizeof rows[0]; k++) {
        net_hs i, r;
        const uint8_t *isec = rows[k].init_key < 0 ? OUTSIDER_SEC : VSEC[rows[k].init_key];
        const uint8_t *exp = rows[k].expected < 0 ? NULL : G.validators[rows[k].expected].pubkey;
        ck_assert_int_eq(net_hs_init(&i, NET_HS_INITIATOR, &G, isec, exp, false), NET_OK);
        ck_assert_int_eq(net_hs_init(&r, NET_HS_RESPONDER, rows[k].other_chain ? &other : &G,
                                     VSEC[rows[k].resp_key], NULL, rows[k].observers), NET_OK);
        int rc = hs_pair(&i, &r, NULL, NULL);
        ck_assert_msg(rc == rows[k].want, "row '%s': got %s want %s", rows[k].name, net_errname(rc),
                      net_errname(rows[k].want));
        if (rc == NET_OK) ck_assert_msg(r.peer_index == rows[k].want_peer_index, "row '%s'", rows[k].name);
        else ck_assert_msg(!net_hs_done(&r), "row '%s' must leave the responder unfinished", rows[k].name);
    }
}
END_TEST

START_TEST(hs_replayed_m1_and_m3_fail_against_a_fresh_responder) {
    net_hs i, r, r2;
    uint8_t m1[NET_HS_MSG_MAX], m3[NET_HS_MSG_MAX], m2[NET_HS_MSG_MAX];
    ck_assert_int_eq(net_hs_init(&i, NET_HS_INITIATOR, &G, VSEC[1], G.validators[0].pubkey, false), NET_OK);
    ck_assert_int_eq(net_hs_init(&r, NET_HS_RESPONDER, &G, VSEC[0], NULL, false), NET_OK);
    ck_assert_int_eq(hs_pair(&i, &r, m1, m3), NET_OK);
    /* An eavesdropper replays the recorded messages: the fresh responder ephemeral enters the
     * transcript, so the old M3 neither decrypts nor verifies. */
    ck_assert_int_eq(net_hs_init(&r2, NET_HS_RESPONDER, &G, VSEC[0], NULL, false), NET_OK);
    size_t len;
    ck_assert_int_eq(net_hs_read(&r2, m1, NET_HS_M1_BYTES), NET_OK);
    ck_assert_int_eq(net_hs_write(&r2, m2, sizeof m2, &len), NET_OK);
    ck_assert_int_eq(net_hs_read(&r2, m3, NET_HS_M3_BYTES), NET_EAUTH);
    ck_assert(!net_hs_done(&r2));
    ck_assert_int_eq(r2.step, -1);
}
END_TEST

START_TEST(hs_tampered_or_malformed_messages_fail) {
    /* Flip one byte of M2 at several offsets (ephemeral, ciphertext, tag): every one fails. */
    static const size_t offsets[] = {0, 31, 32, 63, 100, 143};
    for (size_t k = 0; k < sizeof offsets / sizeof offsets[0]; k++) {
        net_hs i, r;
        uint8_t buf[NET_HS_MSG_MAX];
        size_t len;
        ck_assert_int_eq(net_hs_init(&i, NET_HS_INITIATOR, &G, VSEC[1], G.validators[0].pubkey, false), NET_OK);
        ck_assert_int_eq(net_hs_init(&r, NET_HS_RESPONDER, &G, VSEC[0], NULL, false), NET_OK);
        ck_assert_int_eq(net_hs_write(&i, buf, sizeof buf, &len), NET_OK);
        ck_assert_int_eq(net_hs_read(&r, buf, len), NET_OK);
        ck_assert_int_eq(net_hs_write(&r, buf, sizeof buf, &len), NET_OK);
        ck_assert_uint_eq(len, NET_HS_M2_BYTES);
        buf[offsets[k]] ^= 0x40;
        int rc = net_hs_read(&i, buf, len);
        ck_assert_msg(rc == NET_EAUTH, "offset %zu: %s", offsets[k], net_errname(rc));
    }
    static const struct {
        const char *name;
        uint8_t m1[40];
        size_t len;
        int want;
    } rows[] = {
        {"short M1", {'T', 'E', 'M', '1', 1}, 5, NET_EFRAME},
        {"bad magic", {'H', 'T', 'T', 'P', 1}, NET_HS_M1_BYTES, NET_EVERSION},
        {"future version", {'T', 'E', 'M', '1', 9}, NET_HS_M1_BYTES, NET_EVERSION},
        {"all-zero (low order) ephemeral", {'T', 'E', 'M', '1', 1}, NET_HS_M1_BYTES, NET_EAUTH},
    };
    for (size_t k = 0; k < sizeof rows / sizeof rows[0]; k++) {
        net_hs r;
        ck_assert_int_eq(net_hs_init(&r, NET_HS_RESPONDER, &G, VSEC[0], NULL, false), NET_OK);
        int rc = net_hs_read(&r, rows[k].m1, rows[k].len);
        ck_assert_msg(rc == rows[k].want, "row '%s': %s", rows[k].name, net_errname(rc));
    }
    /* Out of turn: a responder never writes first. */
    net_hs r;
    uint8_t buf[NET_HS_MSG_MAX];
    size_t len;
    ck_assert_int_eq(net_hs_init(&r, NET_HS_RESPONDER, &G, VSEC[0], NULL, false), NET_OK);
    ck_assert_int_eq(net_hs_write(&r, buf, sizeof buf, &len), NET_ESTATE);
}
END_TEST

START_TEST(session_refuses_replayed_reordered_and_tampered_frames) {
    net_hs i, r;
    ck_assert_int_eq(net_hs_init(&i, NET_HS_INITIATOR, &G, VSEC[1], G.validators[0].pubkey, false), NET_OK);
    ck_assert_int_eq(net_hs_init(&r, NET_HS_RESPONDER, &G, VSEC[0], NULL, false), NET_OK);
    ck_assert_int_eq(hs_pair(&i, &r, NULL, NULL), NET_OK);
    net_session si, sr;
    ck_assert_int_eq(net_hs_split(&i, &si), NET_OK);
    ck_assert_int_eq(net_hs_split(&r, &sr), NET_OK);
    uint8_t f[3][4 + 8 + 16], pt[8];
    for (int k = 0; k < 3; k++) ck_assert_int_eq(net_session_seal(&si, "frame-00", 8, f[k]), NET_OK);
    /* reordered: frame 1 before frame 0 */
    ck_assert_int_eq(net_session_open(&sr, f[1] + 4, 24, pt), NET_EDECRYPT);
    ck_assert_uint_eq(sr.rx_ctr, 0);
    ck_assert_int_eq(net_session_open(&sr, f[0] + 4, 24, pt), NET_OK);
    ck_assert_uint_eq(sr.rx_ctr, 1);
    /* replayed */
    ck_assert_int_eq(net_session_open(&sr, f[0] + 4, 24, pt), NET_EDECRYPT);
    /* tampered */
    f[1][10] ^= 1;
    ck_assert_int_eq(net_session_open(&sr, f[1] + 4, 24, pt), NET_EDECRYPT);
    /* shorter than a tag */
    ck_assert_int_eq(net_session_open(&sr, f[2] + 4, 15, pt), NET_EFRAME);
    /* a frame sealed for the other direction does not open here */
    uint8_t back[4 + 8 + 16];
    ck_assert_int_eq(net_session_seal(&sr, "frame-00", 8, back), NET_OK);
    net_session copy = sr;
    ck_assert_int_eq(net_session_open(&copy, back + 4, 24, pt), NET_EDECRYPT);
    ck_assert_uint_eq(sr.rx_ctr, 1);
}
END_TEST

START_TEST(addr_split_accepts_host_port_forms_and_refuses_the_rest) {
    static const struct {
        const char *in;
        int want;
        const char *host;
        uint16_t port;
    } rows[] = {
        {"127.0.0.1:7000", NET_OK, "127.0.0.1", 7000},
        {"node-1.tem:26656", NET_OK, "node-1.tem", 26656},
        {"[::1]:80", NET_OK, "::1", 80},
        {"127.0.0.1:0", NET_OK, "127.0.0.1", 0},
        {"127.0.0.1", NET_EADDR, "", 0},
        {":80", NET_EADDR, "", 0},
        {"h:", NET_EADDR, "", 0},
        {"h:65536", NET_EADDR, "", 0},
        {"h:12a", NET_EADDR, "", 0},
        {"::1:80", NET_EADDR, "", 0},
        {"[::1]80", NET_EADDR, "", 0},
    };
    for (size_t k = 0; k < sizeof rows / sizeof rows[0]; k++) {
        char host[64];
        uint16_t port = 1;
        int rc = net_addr_split(rows[k].in, host, sizeof host, &port);
        ck_assert_msg(rc == rows[k].want, "'%s': %s", rows[k].in, net_errname(rc));
        if (rc == NET_OK) {
            ck_assert_str_eq(host, rows[k].host);
            ck_assert_uint_eq(port, rows[k].port);
        }
    }
    ck_assert_str_eq(net_errname(NET_EDECRYPT), "EDECRYPT");
    ck_assert_str_eq(net_errname(-999), "EUNKNOWNCODE");
}
END_TEST

/* ------------------------------------------------------------------ loop harness */
typedef struct {
    net *n;
    int ups, downs, frames;
    int last_down_reason;
    net_peer_info last_up, last_from;
    uint8_t last_frame[256];
    size_t last_frame_len;
    char last_warn[512];
    int echo; /* reply to every frame with "echo:" + frame */
} node;

static void cb_up(void *ctx, const net_peer_info *p) {
    node *nd = ctx;
    nd->ups++;
    nd->last_up = *p;
}
static void cb_down(void *ctx, const net_peer_info *p, int reason) {
    node *nd = ctx;
    (void)p;
    nd->downs++;
    nd->last_down_reason = reason;
}
static void cb_frame(void *ctx, const net_peer_info *p, const uint8_t *d, size_t len) {
    node *nd = ctx;
    nd->frames++;
    nd->last_from = *p;
    nd->last_frame_len = len;
    memcpy(nd->last_frame, d, len < sizeof nd->last_frame ? len : sizeof nd->last_frame);
    if (nd->echo) {
        uint8_t out[300];
        memcpy(out, "echo:", 5);
        size_t k = len < 256 ? len : 256;
        memcpy(out + 5, d, k);
        ck_assert_int_eq(net_send(nd->n, p->id, out, k + 5), NET_OK);
    }
}
static void cb_log(void *ctx, int level, const char *msg) {
    node *nd = ctx;
    if (level >= NET_LOG_WARN) snprintf(nd->last_warn, sizeof nd->last_warn, "%s", msg);
    if (getenv("NET_TEST_VERBOSE")) fprintf(stderr, "[%p] %s: %s\n", ctx, net_log_level_name(level), msg);
}

static net_config base_cfg(int key, const char *listen) {
    net_config c;
    memset(&c, 0, sizeof c);
    c.genesis = &G;
    memcpy(c.sec, key < 0 ? OUTSIDER_SEC : VSEC[key], 64);
    c.listen = listen;
    c.handshake_timeout_ms = 1000;
    c.backoff_min_ms = 20;
    c.backoff_max_ms = 200;
    c.tick_ms = 5;
    return c;
}

static void node_start(uv_loop_t *loop, node *nd, const net_config *cfg) {
    memset(nd, 0, sizeof *nd);
    net_callbacks cb = {cb_up, cb_down, cb_frame, cb_log, nd};
    ck_assert_int_eq(net_new(loop, cfg, &cb, &nd->n), NET_OK);
    ck_assert_int_eq(net_start(nd->n), NET_OK);
}

static bool never(void *arg) {
    (void)arg;
    return false;
}

/* Closes the nodes, runs the loop until nothing is left and checks that it really is empty. */
static void shutdown_all(uv_loop_t *loop, node **nodes, int k) {
    for (int i = 0; i < k; i++)
        if (nodes[i]->n) net_close(nodes[i]->n);
    for (int spins = 0; spins < 3000 && uv_loop_alive(loop); spins++) {
        uv_run(loop, UV_RUN_NOWAIT);
        if (uv_loop_alive(loop)) usleep(1000);
    }
    for (int i = 0; i < k; i++) {
        if (!nodes[i]->n) continue;
        ck_assert(net_is_closed(nodes[i]->n));
        net_free(nodes[i]->n);
        nodes[i]->n = NULL;
    }
    ck_assert_int_eq(uv_loop_alive(loop), 0);
    ck_assert_int_eq(uv_loop_close(loop), 0);
}

static void set_addr(int v, uint16_t port) {
    snprintf(G.validators[v].address, sizeof G.validators[v].address, "127.0.0.1:%u", port);
}

/* ------------------------------------------------------------------ node-to-node tests */
typedef struct {
    node *a, *b;
    int want_a, want_b;
} pair_cond;
static bool ups_reached(void *arg) {
    pair_cond *pc = arg;
    return pc->a->ups >= pc->want_a && pc->b->ups >= pc->want_b;
}
static bool b_frames(void *arg) {
    pair_cond *pc = arg;
    return pc->b->frames >= pc->want_b;
}
static bool a_frames(void *arg) {
    pair_cond *pc = arg;
    return pc->a->frames >= pc->want_a;
}

START_TEST(two_validators_handshake_and_exchange_frames) {
    uv_loop_t loop;
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    node n0, n1;
    net_config c0 = base_cfg(0, "127.0.0.1:0");
    node_start(&loop, &n0, &c0);
    set_addr(0, net_listen_port(n0.n));
    net_config c1 = base_cfg(1, "127.0.0.1:0");
    node_start(&loop, &n1, &c1);
    n0.echo = 1;
    pair_cond pc = {&n0, &n1, 1, 1};
    ck_assert(run_until(&loop, ups_reached, &pc, 3000));
    ck_assert_uint_eq(n0.last_up.id, 1);
    ck_assert(n0.last_up.is_validator);
    ck_assert(!n0.last_up.outbound);
    ck_assert_uint_eq(n1.last_up.id, 0);
    ck_assert(n1.last_up.outbound);
    ck_assert_mem_eq(n1.last_up.pubkey, G.validators[0].pubkey, 32);
    ck_assert(net_peer_connected(n1.n, 0));
    ck_assert_uint_eq(net_validators_connected(n0.n), 1);
    ck_assert_int_eq(net_self_index(n1.n), 1);

    ck_assert_int_eq(net_send(n1.n, 0, "ping", 4), NET_OK);
    pc.want_b = 1;
    ck_assert(run_until(&loop, b_frames, &pc, 3000));
    ck_assert_uint_eq(n1.last_frame_len, 9);
    ck_assert_mem_eq(n1.last_frame, "echo:ping", 9);
    ck_assert_uint_eq(n0.last_from.id, 1);
    /* a broadcast reaches the one connected validator; empty frames are legal */
    ck_assert_int_eq(net_broadcast(n0.n, "", 0, NET_TO_VALIDATORS), 1);
    pc.want_b = 2;
    ck_assert(run_until(&loop, b_frames, &pc, 3000));
    ck_assert_uint_eq(n1.last_frame_len, 0);
    /* refusals that need no peer */
    ck_assert_int_eq(net_send(n1.n, 2, "x", 1), NET_ENOTCONN);
    ck_assert_int_eq(net_send(n1.n, 999, "x", 1), NET_ENOTCONN);
    static uint8_t big[NET_FRAME_BYTES_MAX_DEFAULT + 1];
    ck_assert_int_eq(net_send(n1.n, 0, big, sizeof big), NET_ETOOBIG);
    net_stats st;
    net_stats_get(n0.n, &st);
    ck_assert_uint_eq(st.handshakes_ok, 1);
    ck_assert_uint_eq(st.frames_in, 1);
    node *all[] = {&n0, &n1};
    shutdown_all(&loop, all, 2);
    ck_assert_int_eq(n0.last_down_reason, NET_ECLOSING);
    ck_assert_int_eq(n1.downs, 1);
    G.validators[0].address[0] = '\0';
}
END_TEST

START_TEST(large_frames_up_to_the_limit_arrive_intact) {
    uv_loop_t loop;
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    node n0, n1;
    net_config c0 = base_cfg(0, "127.0.0.1:0");
    c0.frame_bytes_max = 1 << 20;
    node_start(&loop, &n0, &c0);
    set_addr(0, net_listen_port(n0.n));
    net_config c1 = base_cfg(1, NULL);
    c1.frame_bytes_max = 1 << 20;
    node_start(&loop, &n1, &c1);
    pair_cond pc = {&n0, &n1, 1, 1};
    ck_assert(run_until(&loop, ups_reached, &pc, 3000));
    uint8_t *big = malloc(1 << 20);
    ck_assert_ptr_nonnull(big);
    for (size_t k = 0; k < (1 << 20); k++) big[k] = (uint8_t)(k * 7);
    for (int k = 0; k < 3; k++) ck_assert_int_eq(net_send(n1.n, 0, big, 1 << 20), NET_OK);
    ck_assert_int_eq(net_send(n1.n, 0, big, (1 << 20) + 1), NET_ETOOBIG);
    pc.want_a = 3;
    ck_assert(run_until(&loop, a_frames, &pc, 5000));
    ck_assert_uint_eq(n0.last_frame_len, 1 << 20);
    ck_assert_mem_eq(n0.last_frame, big, sizeof n0.last_frame);
    free(big);
    node *all[] = {&n0, &n1};
    shutdown_all(&loop, all, 2);
    G.validators[0].address[0] = '\0';
}
END_TEST

typedef struct {
    node *srv;
    net_stats st;
} auth_cond;
static bool auth_closed(void *arg) {
    auth_cond *ac = arg;
    net_stats_get(ac->srv->n, &ac->st);
    return ac->st.closed_auth >= 1;
}

START_TEST(unknown_key_is_refused_and_observer_needs_permission) {
    uv_loop_t loop;
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    node v0, obs;
    net_config c0 = base_cfg(0, "127.0.0.1:0");
    node_start(&loop, &v0, &c0);
    set_addr(0, net_listen_port(v0.n));
    net_config co = base_cfg(-1, NULL);
    node_start(&loop, &obs, &co);
    ck_assert_int_eq(net_self_index(obs.n), -1);
    auth_cond ac = {&v0, {0}};
    ck_assert(run_until(&loop, auth_closed, &ac, 3000));
    ck_assert_int_eq(ac.st.last_close_reason, NET_EUNKNOWN);
    ck_assert_int_eq(v0.ups, 0);
    ck_assert_int_eq(obs.ups, 0); /* refused before the responder's admission frame */
    net_stats ost;
    net_stats_get(obs.n, &ost);
    ck_assert_uint_ge(ost.handshakes_failed, 1);
    ck_assert_uint_eq(ost.handshakes_ok, 0);
    ck_assert_ptr_nonnull(strstr(v0.last_warn, "EUNKNOWN"));
    node *all[] = {&v0, &obs};
    shutdown_all(&loop, all, 2);
    G.validators[0].address[0] = '\0';
}
END_TEST

START_TEST(observer_is_accepted_when_allowed_and_is_not_a_validator) {
    uv_loop_t loop;
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    node v0, obs;
    net_config c0 = base_cfg(0, "127.0.0.1:0");
    c0.accept_observers = true;
    c0.observers_max = 2;
    node_start(&loop, &v0, &c0);
    set_addr(0, net_listen_port(v0.n));
    set_addr(1, 1); /* validator 1 is down (port 1 refuses); the mask keeps the observer off it */
    net_config co = base_cfg(-1, NULL);
    co.observer_dial_mask = 1u << 0;
    node_start(&loop, &obs, &co);
    pair_cond pc = {&v0, &obs, 1, 1};
    ck_assert(run_until(&loop, ups_reached, &pc, 3000));
    net_stats ost;
    net_stats_get(obs.n, &ost);
    ck_assert_uint_eq(ost.dial_failures, 0);
    ck_assert_uint_eq(ost.dials, 1);
    G.validators[1].address[0] = '\0';
    ck_assert(!v0.last_up.is_validator);
    ck_assert_uint_eq(v0.last_up.id, NET_OBSERVER_ID_BASE);
    ck_assert_mem_eq(v0.last_up.pubkey, OUTSIDER_PK, 32);
    ck_assert_uint_eq(net_observers_connected(v0.n), 1);
    ck_assert_uint_eq(net_validators_connected(v0.n), 0);
    /* blocks go to observers only when asked for */
    ck_assert_int_eq(net_broadcast(v0.n, "vote", 4, NET_TO_VALIDATORS), 0);
    ck_assert_int_eq(net_broadcast(v0.n, "block", 5, NET_TO_OBSERVERS), 1);
    pc.want_b = 1;
    ck_assert(run_until(&loop, b_frames, &pc, 3000));
    ck_assert_mem_eq(obs.last_frame, "block", 5);
    ck_assert(obs.last_from.is_validator);
    /* what an observer sends arrives marked as not from a validator */
    ck_assert_int_eq(net_send(obs.n, 0, "sync?", 5), NET_OK);
    pc.want_a = 1;
    ck_assert(run_until(&loop, a_frames, &pc, 3000));
    ck_assert(!v0.last_from.is_validator);
    ck_assert_uint_eq(v0.last_from.id, NET_OBSERVER_ID_BASE);
    node *all[] = {&v0, &obs};
    shutdown_all(&loop, all, 2);
    G.validators[0].address[0] = '\0';
}
END_TEST

typedef struct {
    node *a, *b;
} restart_cond;
static bool b_down(void *arg) {
    restart_cond *rc = arg;
    return rc->b->downs >= 1;
}
static bool b_up_twice(void *arg) {
    restart_cond *rc = arg;
    return rc->b->ups >= 2 && rc->a->ups >= 1;
}
static bool closed_one(void *arg) { return net_is_closed(arg); }

START_TEST(dialler_reconnects_after_the_peer_restarts) {
    uv_loop_t loop;
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    node n0, n1;
    net_config c0 = base_cfg(0, "127.0.0.1:0");
    node_start(&loop, &n0, &c0);
    uint16_t port = net_listen_port(n0.n);
    set_addr(0, port);
    net_config c1 = base_cfg(1, NULL);
    node_start(&loop, &n1, &c1);
    pair_cond pc = {&n0, &n1, 1, 1};
    ck_assert(run_until(&loop, ups_reached, &pc, 3000));
    /* stop validator 0 entirely; validator 1 notices and keeps redialling a closed port */
    net_close(n0.n);
    ck_assert(run_until(&loop, closed_one, n0.n, 3000));
    net_free(n0.n);
    restart_cond rc = {&n0, &n1};
    ck_assert(run_until(&loop, b_down, &rc, 3000));
    ck_assert_int_eq(n1.last_down_reason, NET_EEOF);
    ck_assert(!run_until(&loop, never, NULL, 150)); /* a few failed dials happen meanwhile */
    net_stats st;
    net_stats_get(n1.n, &st);
    ck_assert_uint_ge(st.dial_failures, 1);
    /* validator 0 comes back on the same port */
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", port);
    net_config c0b = base_cfg(0, addr);
    node_start(&loop, &n0, &c0b);
    ck_assert(run_until(&loop, b_up_twice, &rc, 3000));
    ck_assert(net_peer_connected(n1.n, 0));
    ck_assert_int_eq(net_send(n1.n, 0, "again", 5), NET_OK);
    pc.want_a = 1;
    ck_assert(run_until(&loop, a_frames, &pc, 3000));
    ck_assert_mem_eq(n0.last_frame, "again", 5);
    node *all[] = {&n0, &n1};
    shutdown_all(&loop, all, 2);
    G.validators[0].address[0] = '\0';
}
END_TEST

typedef struct {
    node *srv;
    int total;
} rate_cond;
static bool rate_settled(void *arg) {
    rate_cond *rc = arg;
    net_stats st;
    net_stats_get(rc->srv->n, &st);
    return (int)(st.frames_in + st.frames_dropped_rate) >= rc->total || st.closed_rate > 0;
}

START_TEST(rate_limit_drops_or_closes_a_flooding_peer) {
    for (int policy = NET_LIMIT_DROP; policy <= NET_LIMIT_CLOSE; policy++) {
        uv_loop_t loop;
        ck_assert_int_eq(uv_loop_init(&loop), 0);
        node n0, n1;
        net_config c0 = base_cfg(0, "127.0.0.1:0");
        c0.rate_msgs_per_s = 10;
        c0.rate_burst_ms = 1000;
        c0.rate_policy = policy;
        node_start(&loop, &n0, &c0);
        set_addr(0, net_listen_port(n0.n));
        net_config c1 = base_cfg(1, NULL);
        node_start(&loop, &n1, &c1);
        pair_cond pc = {&n0, &n1, 1, 1};
        ck_assert(run_until(&loop, ups_reached, &pc, 3000));
        uv_update_time(&loop);
        uint64_t t0 = uv_now(&loop);
        for (int k = 0; k < 50; k++) ck_assert_int_eq(net_send(n1.n, 0, "flood", 5), NET_OK);
        rate_cond rc = {&n0, 50};
        ck_assert(run_until(&loop, rate_settled, &rc, 3000));
        uint64_t elapsed_ms = uv_now(&loop) - t0;
        net_stats st;
        net_stats_get(n0.n, &st);
        /* the bucket holds 10 messages and refills one per 100 ms while the flood lasts (a few
         * ms, unless the machine is loaded) */
        ck_assert_uint_ge(st.frames_in, 10);
        ck_assert_uint_le(st.frames_in, 11 + elapsed_ms / 100);
        ck_assert_uint_lt(st.frames_in, 50);
        ck_assert_int_eq(n0.frames, (int)st.frames_in);
        if (policy == NET_LIMIT_DROP) {
            ck_assert_uint_eq(st.frames_in + st.frames_dropped_rate, 50);
            ck_assert(net_peer_connected(n0.n, 1));
            ck_assert_ptr_nonnull(strstr(n0.last_warn, "rate limit"));
        } else {
            ck_assert_uint_eq(st.closed_rate, 1);
            ck_assert_int_eq(n0.last_down_reason, NET_ERATE);
            ck_assert_ptr_nonnull(strstr(n0.last_warn, "ERATE"));
        }
        node *all[] = {&n0, &n1};
        shutdown_all(&loop, all, 2);
        G.validators[0].address[0] = '\0';
    }
}
END_TEST

/* ------------------------------------------------------------------ raw-socket tests */
static int raw_connect(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct timeval tv = {3, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(0x7f000001);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}
static bool send_all(int fd, const void *p, size_t n) {
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t k = send(fd, b, n, MSG_NOSIGNAL);
        if (k <= 0) return false;
        b += k;
        n -= (size_t)k;
    }
    return true;
}
static bool recv_exact(int fd, void *p, size_t n) {
    uint8_t *b = p;
    while (n > 0) {
        ssize_t k = recv(fd, b, n, 0);
        if (k <= 0) return false;
        b += k;
        n -= (size_t)k;
    }
    return true;
}
/* True when the server closes the connection within the receive timeout. */
static bool closed_by_server(int fd) {
    uint8_t b[256];
    for (;;) {
        ssize_t k = recv(fd, b, sizeof b, 0);
        if (k == 0) return true;
        if (k < 0) return errno == ECONNRESET;
    }
}
static bool send_frame(int fd, const void *p, size_t n) {
    uint8_t h[4];
    tem_put_u32be(h, (uint32_t)n);
    return send_all(fd, h, 4) && send_all(fd, p, n);
}
static bool recv_frame(int fd, uint8_t *p, size_t cap, size_t *n) {
    uint8_t h[4];
    if (!recv_exact(fd, h, 4)) return false;
    uint32_t len = tem_get_u32be(h);
    if (len > cap) return false;
    *n = len;
    return recv_exact(fd, p, len);
}
/* Handshake as validator 1 towards validator 0 over a blocking socket. */
static bool raw_handshake(int fd, net_session *s, uint8_t m1[NET_HS_MSG_MAX], uint8_t m3[NET_HS_MSG_MAX]) {
    net_hs hs;
    uint8_t buf[NET_HS_MSG_MAX];
    size_t len;
    if (net_hs_init(&hs, NET_HS_INITIATOR, &G, VSEC[1], G.validators[0].pubkey, false) != NET_OK) return false;
    if (net_hs_write(&hs, buf, sizeof buf, &len) != NET_OK || !send_frame(fd, buf, len)) return false;
    if (m1) memcpy(m1, buf, len);
    if (!recv_frame(fd, buf, sizeof buf, &len) || net_hs_read(&hs, buf, len) != NET_OK) return false;
    if (net_hs_write(&hs, buf, sizeof buf, &len) != NET_OK || !send_frame(fd, buf, len)) return false;
    if (m3) memcpy(m3, buf, len);
    bool ok = net_hs_split(&hs, s) == NET_OK;
    net_hs_wipe(&hs);
    /* the responder admits us with one sealed empty frame */
    ok = ok && recv_frame(fd, buf, sizeof buf, &len) && len == NET_AEAD_TAG_BYTES &&
         net_session_open(s, buf, len, buf) == NET_OK;
    return ok;
}

enum {
    RAW_REPLAY_HANDSHAKE,
    RAW_REPLAY_FRAME,
    RAW_TAMPER_FRAME,
    RAW_REORDER_FRAME,
    RAW_OVERSIZE_AFTER_HS,
    RAW_OVERSIZE_IN_HS,
    RAW_GARBAGE_HTTP,
    RAW_ZERO_LENGTH,
    RAW_SHORT_FRAME,
    RAW_SILENT,
};

typedef struct {
    int scenario;
    uint16_t port;
    uint32_t frame_max;
    atomic_int done;
    bool step_ok;   /* the legitimate part of the scenario worked */
    bool closed;    /* the server closed the connection afterwards */
} raw_ctx;

static void *raw_client(void *arg) {
    raw_ctx *rc = arg;
    net_session s;
    uint8_t m1[NET_HS_MSG_MAX], m3[NET_HS_MSG_MAX];
    int fd = raw_connect(rc->port);
    if (fd < 0) goto out;
    switch (rc->scenario) {
    case RAW_REPLAY_HANDSHAKE: {
        rc->step_ok = raw_handshake(fd, &s, m1, m3);
        close(fd);
        if ((fd = raw_connect(rc->port)) < 0) goto out;
        uint8_t m2[NET_HS_MSG_MAX];
        size_t len;
        rc->step_ok = rc->step_ok && send_frame(fd, m1, NET_HS_M1_BYTES) &&
                      recv_frame(fd, m2, sizeof m2, &len) && len == NET_HS_M2_BYTES &&
                      send_frame(fd, m3, NET_HS_M3_BYTES);
        rc->closed = closed_by_server(fd);
        break;
    }
    case RAW_REPLAY_FRAME:
    case RAW_TAMPER_FRAME:
    case RAW_REORDER_FRAME: {
        uint8_t f[3][4 + 5 + 16];
        rc->step_ok = raw_handshake(fd, &s, NULL, NULL);
        for (int k = 0; k < 3; k++) rc->step_ok = rc->step_ok && net_session_seal(&s, "hello", 5, f[k]) == NET_OK;
        rc->step_ok = rc->step_ok && send_all(fd, f[0], sizeof f[0]);
        if (rc->scenario == RAW_REPLAY_FRAME) {
            send_all(fd, f[0], sizeof f[0]);
        } else if (rc->scenario == RAW_TAMPER_FRAME) {
            f[1][6] ^= 0x80;
            send_all(fd, f[1], sizeof f[1]);
        } else {
            send_all(fd, f[2], sizeof f[2]);
        }
        rc->closed = closed_by_server(fd);
        break;
    }
    case RAW_OVERSIZE_AFTER_HS: {
        rc->step_ok = raw_handshake(fd, &s, NULL, NULL);
        uint8_t h[4];
        tem_put_u32be(h, rc->frame_max + NET_AEAD_TAG_BYTES + 1);
        send_all(fd, h, 4);
        rc->closed = closed_by_server(fd);
        break;
    }
    case RAW_OVERSIZE_IN_HS: {
        uint8_t h[4];
        tem_put_u32be(h, NET_HS_MSG_MAX + 1);
        rc->step_ok = send_all(fd, h, 4);
        rc->closed = closed_by_server(fd);
        break;
    }
    case RAW_GARBAGE_HTTP: {
        const char *g = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        rc->step_ok = send_all(fd, g, strlen(g));
        rc->closed = closed_by_server(fd);
        break;
    }
    case RAW_ZERO_LENGTH: {
        uint8_t h[4] = {0, 0, 0, 0};
        rc->step_ok = send_all(fd, h, 4);
        rc->closed = closed_by_server(fd);
        break;
    }
    case RAW_SHORT_FRAME: {
        rc->step_ok = raw_handshake(fd, &s, NULL, NULL);
        uint8_t f[4 + 8];
        tem_put_u32be(f, 8);
        memset(f + 4, 0xab, 8);
        send_all(fd, f, sizeof f);
        rc->closed = closed_by_server(fd);
        break;
    }
    case RAW_SILENT:
        rc->step_ok = true;
        rc->closed = closed_by_server(fd);
        break;
    }
    close(fd);
out:
    atomic_store(&rc->done, 1);
    return NULL;
}

static bool raw_done(void *arg) { return atomic_load(&((raw_ctx *)arg)->done) != 0; }

START_TEST(bad_bytes_from_a_socket_close_that_connection_with_a_reason) {
    static const struct {
        const char *name;
        int scenario;
        int want_reason;
        int want_frames; /* frames delivered before the bad one */
    } rows[] = {
        {"replayed handshake", RAW_REPLAY_HANDSHAKE, NET_EAUTH, 0},
        {"replayed frame", RAW_REPLAY_FRAME, NET_EDECRYPT, 1},
        {"tampered frame", RAW_TAMPER_FRAME, NET_EDECRYPT, 1},
        {"reordered frame", RAW_REORDER_FRAME, NET_EDECRYPT, 1},
        {"oversize frame after handshake", RAW_OVERSIZE_AFTER_HS, NET_ETOOBIG, 0},
        {"oversize handshake frame", RAW_OVERSIZE_IN_HS, NET_ETOOBIG, 0},
        {"HTTP request instead of a handshake", RAW_GARBAGE_HTTP, NET_ETOOBIG, 0},
        {"zero-length frame", RAW_ZERO_LENGTH, NET_EFRAME, 0},
        {"frame shorter than a tag", RAW_SHORT_FRAME, NET_EFRAME, 0},
        {"silent client", RAW_SILENT, NET_ETIMEOUT, 0},
    };
    for (size_t k = 0; k < sizeof rows / sizeof rows[0]; k++) {
        uv_loop_t loop;
        ck_assert_int_eq(uv_loop_init(&loop), 0);
        node srv;
        net_config c0 = base_cfg(0, "127.0.0.1:0");
        c0.frame_bytes_max = 4096;
        c0.handshake_timeout_ms = 300;
        node_start(&loop, &srv, &c0);
        raw_ctx rc = {.scenario = rows[k].scenario, .port = net_listen_port(srv.n), .frame_max = 4096};
        atomic_init(&rc.done, 0);
        bool finished = run_with_client(&loop, raw_client, raw_done, &rc, 6000);
        ck_assert_msg(finished, "row '%s' timed out", rows[k].name);
        ck_assert_msg(rc.step_ok, "row '%s': legitimate steps failed", rows[k].name);
        ck_assert_msg(rc.closed, "row '%s': server did not close", rows[k].name);
        net_stats st;
        net_stats_get(srv.n, &st);
        ck_assert_msg(st.last_close_reason == rows[k].want_reason, "row '%s': closed with %s, want %s",
                      rows[k].name, net_errname(st.last_close_reason), net_errname(rows[k].want_reason));
        ck_assert_msg(srv.frames == rows[k].want_frames, "row '%s': %d frames", rows[k].name, srv.frames);
        ck_assert_msg(strstr(srv.last_warn, net_errname(rows[k].want_reason)) != NULL,
                      "row '%s': log '%s' lacks the reason", rows[k].name, srv.last_warn);
        node *all[] = {&srv};
        shutdown_all(&loop, all, 1);
    }
}
END_TEST

/* Sends one byte per segment so the reader sees split headers and split frames. */
static bool send_bytewise(int fd, const uint8_t *p, size_t n) {
    for (size_t k = 0; k < n; k++) {
        if (!send_all(fd, p + k, 1)) return false;
        usleep(50);
    }
    return true;
}

typedef struct {
    uint16_t port;
    atomic_int done;
    bool ok, still_open;
} bytewise_ctx;

static void *bytewise_client(void *arg) {
    bytewise_ctx *bc = arg;
    int fd = raw_connect(bc->port);
    if (fd >= 0) {
        net_hs hs;
        net_session s;
        uint8_t buf[NET_HS_MSG_MAX + 4], in[NET_HS_MSG_MAX];
        size_t len;
        bool ok = net_hs_init(&hs, NET_HS_INITIATOR, &G, VSEC[1], G.validators[0].pubkey, false) == NET_OK &&
                  net_hs_write(&hs, buf + 4, NET_HS_MSG_MAX, &len) == NET_OK;
        tem_put_u32be(buf, (uint32_t)len);
        ok = ok && send_bytewise(fd, buf, len + 4) && recv_frame(fd, in, sizeof in, &len) &&
             net_hs_read(&hs, in, len) == NET_OK && net_hs_write(&hs, buf + 4, NET_HS_MSG_MAX, &len) == NET_OK;
        tem_put_u32be(buf, (uint32_t)len);
        ok = ok && send_bytewise(fd, buf, len + 4) && net_hs_split(&hs, &s) == NET_OK &&
             recv_frame(fd, in, sizeof in, &len) && net_session_open(&s, in, len, in) == NET_OK;
        uint8_t f[2][4 + 9 + 16];
        ok = ok && net_session_seal(&s, "bytewise1", 9, f[0]) == NET_OK &&
             net_session_seal(&s, "bytewise2", 9, f[1]) == NET_OK && send_bytewise(fd, f[0], sizeof f[0]) &&
             send_bytewise(fd, f[1], sizeof f[1]);
        bc->ok = ok;
        usleep(100 * 1000);
        uint8_t b;
        bc->still_open = recv(fd, &b, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN;
        net_hs_wipe(&hs);
        close(fd);
    }
    atomic_store(&bc->done, 1);
    return NULL;
}
static bool bytewise_done(void *arg) { return atomic_load(&((bytewise_ctx *)arg)->done) != 0; }

START_TEST(frames_fed_byte_by_byte_are_reassembled) {
    uv_loop_t loop;
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    node srv;
    net_config c0 = base_cfg(0, "127.0.0.1:0");
    node_start(&loop, &srv, &c0);
    bytewise_ctx bc = {.port = net_listen_port(srv.n)};
    atomic_init(&bc.done, 0);
    bool finished = run_with_client(&loop, bytewise_client, bytewise_done, &bc, 8000);
    ck_assert(finished);
    ck_assert(bc.ok);
    ck_assert(bc.still_open);
    ck_assert_int_eq(srv.ups, 1);
    ck_assert_int_eq(srv.frames, 2);
    ck_assert_uint_eq(srv.last_frame_len, 9);
    ck_assert_mem_eq(srv.last_frame, "bytewise2", 9);
    node *all[] = {&srv};
    shutdown_all(&loop, all, 1);
}
END_TEST

typedef struct {
    uint16_t port;
    atomic_int done;
    bool first_ok, second_ok, first_closed, second_sent;
} replace_ctx;

static void *replace_client(void *arg) {
    replace_ctx *rc = arg;
    net_session s1, s2;
    int fd1 = raw_connect(rc->port), fd2 = -1;
    if (fd1 < 0) goto out;
    rc->first_ok = raw_handshake(fd1, &s1, NULL, NULL);
    fd2 = raw_connect(rc->port);
    if (fd2 < 0) goto out;
    rc->second_ok = raw_handshake(fd2, &s2, NULL, NULL);
    rc->first_closed = closed_by_server(fd1);
    uint8_t f[4 + 3 + 16];
    rc->second_sent = net_session_seal(&s2, "new", 3, f) == NET_OK && send_all(fd2, f, sizeof f);
    usleep(100 * 1000); /* let the server read it before we hang up */
out:
    if (fd1 >= 0) close(fd1);
    if (fd2 >= 0) close(fd2);
    atomic_store(&rc->done, 1);
    return NULL;
}
static bool replace_done(void *arg) { return atomic_load(&((replace_ctx *)arg)->done) != 0; }

START_TEST(newer_session_from_the_same_validator_replaces_the_old_one) {
    uv_loop_t loop;
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    node srv;
    net_config c0 = base_cfg(0, "127.0.0.1:0");
    node_start(&loop, &srv, &c0);
    replace_ctx rc = {.port = net_listen_port(srv.n)};
    atomic_init(&rc.done, 0);
    bool finished = run_with_client(&loop, replace_client, replace_done, &rc, 6000);
    ck_assert(finished);
    ck_assert(rc.first_ok && rc.second_ok && rc.first_closed && rc.second_sent);
    ck_assert_int_eq(srv.ups, 2);
    ck_assert_int_ge(srv.downs, 1);
    ck_assert_int_eq(srv.frames, 1);
    ck_assert_mem_eq(srv.last_frame, "new", 3);
    ck_assert_uint_eq(srv.last_from.id, 1);
    net_stats st;
    net_stats_get(srv.n, &st);
    ck_assert_uint_eq(st.handshakes_ok, 2);
    node *all[] = {&srv};
    shutdown_all(&loop, all, 1);
}
END_TEST

static bool limit_hit(void *arg) {
    node *v = arg;
    net_stats st;
    net_stats_get(v->n, &st);
    return st.last_close_reason == NET_ELIMIT && v->ups >= 1;
}

START_TEST(observer_slots_are_bounded) {
    uv_loop_t loop;
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    node v0, o1, o2;
    net_config c0 = base_cfg(0, "127.0.0.1:0");
    c0.accept_observers = true;
    c0.observers_max = 1;
    node_start(&loop, &v0, &c0);
    set_addr(0, net_listen_port(v0.n));
    net_config co = base_cfg(-1, NULL);
    node_start(&loop, &o1, &co);
    pair_cond pc = {&v0, &o1, 1, 1};
    ck_assert(run_until(&loop, ups_reached, &pc, 3000));
    uint8_t pk2[32];
    ck_assert_int_eq(crypto_sign_keypair(pk2, co.sec), 0);
    node_start(&loop, &o2, &co);
    ck_assert(run_until(&loop, limit_hit, &v0, 3000));
    ck_assert_int_eq(v0.ups, 1);
    ck_assert_int_eq(o2.ups, 0);
    ck_assert_uint_eq(net_observers_connected(v0.n), 1);
    ck_assert(net_peer_connected(o1.n, 0));
    node *all[] = {&v0, &o1, &o2};
    shutdown_all(&loop, all, 3);
    G.validators[0].address[0] = '\0';
}
END_TEST

static node mesh[NV];
static bool mesh_complete(void *arg) {
    (void)arg;
    for (int i = 0; i < NV; i++)
        if (net_validators_connected(mesh[i].n) != NV - 1) return false;
    return true;
}

START_TEST(four_validators_form_a_full_mesh_with_one_connection_per_pair) {
    uv_loop_t loop;
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    for (int i = 0; i < NV; i++) {
        net_config c = base_cfg(i, "127.0.0.1:0");
        node_start(&loop, &mesh[i], &c);
        set_addr(i, net_listen_port(mesh[i].n));
    }
    ck_assert(run_until(&loop, mesh_complete, NULL, 5000));
    uint64_t dials = 0, ok = 0;
    for (int i = 0; i < NV; i++) {
        net_stats st;
        net_stats_get(mesh[i].n, &st);
        dials += st.dials;
        ok += st.handshakes_ok;
        ck_assert_int_eq(mesh[i].ups, NV - 1);
    }
    ck_assert_uint_eq(dials, NV * (NV - 1) / 2);
    ck_assert_uint_eq(ok, NV * (NV - 1));
    /* every validator's broadcast reaches the three others exactly once */
    for (int i = 0; i < NV; i++) ck_assert_int_eq(net_broadcast(mesh[i].n, &i, sizeof i, NET_TO_VALIDATORS), NV - 1);
    pair_cond pc = {&mesh[0], &mesh[1], NV - 1, NV - 1};
    ck_assert(run_until(&loop, a_frames, &pc, 3000));
    for (int i = 0; i < NV; i++) ck_assert(run_until(&loop, b_frames, &(pair_cond){&mesh[i], &mesh[i], 0, NV - 1}, 3000));
    for (int i = 0; i < NV; i++) ck_assert_int_eq(mesh[i].frames, NV - 1);
    node *all[NV];
    for (int i = 0; i < NV; i++) all[i] = &mesh[i];
    shutdown_all(&loop, all, NV);
    for (int i = 0; i < NV; i++) G.validators[i].address[0] = '\0';
}
END_TEST

START_TEST(out_of_memory_refuses_a_send_and_keeps_the_session) {
    uv_loop_t loop;
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    node n0, n1;
    net_config c0 = base_cfg(0, "127.0.0.1:0");
    node_start(&loop, &n0, &c0);
    set_addr(0, net_listen_port(n0.n));
    net_config c1 = base_cfg(1, NULL);
    node_start(&loop, &n1, &c1);
    pair_cond pc = {&n0, &n1, 1, 1};
    ck_assert(run_until(&loop, ups_reached, &pc, 3000));
    tem_alloc_fail_after(0);
    int rc1 = net_send(n1.n, 0, "lost", 4);
    int rc2 = net_broadcast(n1.n, "lost", 4, NET_TO_VALIDATORS);
    tem_alloc_fail_after(-1);
    ck_assert_int_eq(rc1, NET_ENOMEM);
    ck_assert_int_eq(rc2, 0);
    ck_assert(net_peer_connected(n1.n, 0));
    ck_assert_int_eq(net_send(n1.n, 0, "kept", 4), NET_OK);
    pc.want_a = 1;
    ck_assert(run_until(&loop, a_frames, &pc, 3000));
    ck_assert_int_eq(n0.frames, 1);
    ck_assert_mem_eq(n0.last_frame, "kept", 4);
    node *all[] = {&n0, &n1};
    shutdown_all(&loop, all, 2);
    G.validators[0].address[0] = '\0';
}
END_TEST

START_TEST(config_errors_are_refused) {
    uv_loop_t loop;
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    net *n = NULL;
    net_config c = base_cfg(0, NULL);
    c.rate_policy = 7;
    ck_assert_int_eq(net_new(&loop, &c, NULL, &n), NET_EINVAL);
    c = base_cfg(0, NULL);
    c.sec[40] ^= 1; /* public half no longer matches the seed */
    ck_assert_int_eq(net_new(&loop, &c, NULL, &n), NET_EINVAL);
    ledger_genesis empty;
    memset(&empty, 0, sizeof empty);
    c = base_cfg(0, NULL);
    c.genesis = &empty;
    ck_assert_int_eq(net_new(&loop, &c, NULL, &n), NET_EINVAL);
    c = base_cfg(0, "localhost-no-port");
    c.log_level = NET_LOG_ERROR; /* no callbacks here: keep the test output quiet */
    ck_assert_int_eq(net_new(&loop, &c, NULL, &n), NET_OK);
    ck_assert_int_eq(net_start(n), NET_EADDR);
    ck_assert_int_eq(net_start(n), NET_ESTATE);
    net_close(n);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert(net_is_closed(n));
    net_free(n);
    /* out of memory at every allocation of net_new: a clean error, never a crash */
    for (long k = 0;; k++) {
        c = base_cfg(0, NULL);
        tem_alloc_fail_after(k);
        int rc = net_new(&loop, &c, NULL, &n);
        tem_alloc_fail_after(-1);
        if (rc == NET_OK) {
            net_free(n);
            ck_assert_int_ge(k, 1);
            break;
        }
        ck_assert_int_eq(rc, NET_ENOMEM);
        ck_assert_int_lt(k, 10);
    }
    ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

/* Log lines name libuv errors by their symbol as well as their message. */
START_TEST(uv_errors_are_named_in_log_text) {
    ck_assert_str_eq(net_uv_error(UV_ECONNRESET), "connection reset by peer (ECONNRESET)");
    ck_assert_str_eq(net_uv_error(UV_EPIPE), "broken pipe (EPIPE)");
    /* eight rotating buffers: two in one printf stay distinct */
    const char *a = net_uv_error(UV_EADDRINUSE), *b = net_uv_error(UV_ETIMEDOUT);
    ck_assert_ptr_ne(a, b);
    ck_assert_ptr_nonnull(strstr(a, "(EADDRINUSE)"));
    ck_assert_ptr_nonnull(strstr(b, "(ETIMEDOUT)"));
}
END_TEST

static Suite *net_suite(void) {
    Suite *s = suite_create("net");
    TCase *pure = tcase_create("handshake");
    tcase_add_checked_fixture(pure, genesis_setup, NULL);
    tcase_add_test(pure, hs_between_validators_authenticates_both_and_keys_match);
    tcase_add_test(pure, hs_refusals_name_their_reason);
    tcase_add_test(pure, hs_replayed_m1_and_m3_fail_against_a_fresh_responder);
    tcase_add_test(pure, hs_tampered_or_malformed_messages_fail);
    tcase_add_test(pure, session_refuses_replayed_reordered_and_tampered_frames);
    tcase_add_test(pure, addr_split_accepts_host_port_forms_and_refuses_the_rest);
    suite_add_tcase(s, pure);
    TCase *tr = tcase_create("transport");
    tcase_add_checked_fixture(tr, genesis_setup, NULL);
    tcase_set_timeout(tr, 30);
    tcase_add_test(tr, two_validators_handshake_and_exchange_frames);
    tcase_add_test(tr, large_frames_up_to_the_limit_arrive_intact);
    tcase_add_test(tr, unknown_key_is_refused_and_observer_needs_permission);
    tcase_add_test(tr, observer_is_accepted_when_allowed_and_is_not_a_validator);
    tcase_add_test(tr, dialler_reconnects_after_the_peer_restarts);
    tcase_add_test(tr, rate_limit_drops_or_closes_a_flooding_peer);
    tcase_add_test(tr, bad_bytes_from_a_socket_close_that_connection_with_a_reason);
    tcase_add_test(tr, frames_fed_byte_by_byte_are_reassembled);
    tcase_add_test(tr, newer_session_from_the_same_validator_replaces_the_old_one);
    tcase_add_test(tr, observer_slots_are_bounded);
    tcase_add_test(tr, four_validators_form_a_full_mesh_with_one_connection_per_pair);
    tcase_add_test(tr, out_of_memory_refuses_a_send_and_keeps_the_session);
    tcase_add_test(tr, config_errors_are_refused);
    tcase_add_test(tr, uv_errors_are_named_in_log_text);
    suite_add_tcase(s, tr);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(net_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
