/* bench_net.c: throughput of the peer transport on loopback (256-byte frames, validator 1 ->
 * validator 0, one loop thread for both) beside the machine's own limit measured in the same
 * run: sealing plus opening a 256-byte frame on one core, which is the crypto work every frame
 * costs the single loop thread. Also full in-memory handshakes per second beside Ed25519
 * verifications per second / 2 (each handshake verifies two signatures). */
#include <sodium.h>
#include <time.h>

#include "net/net.h"

#define FRAME_BYTES 256
#define FRAMES_TOTAL 200000

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void line(const char *name, double v, const char *unit, double lim, const char *lunit) {
    printf("bench %s %.0f %s limit %.0f %s ratio %.3f\n", name, v, unit, lim, lunit, lim > 0 ? v / lim : 0.0);
}

static ledger_genesis G;
static uint8_t SEC[2][64];

typedef struct {
    int ups;
    uint64_t frames;
} counter;

static void on_up(void *ctx, const net_peer_info *p) {
    (void)p;
    ((counter *)ctx)->ups++;
}
static void on_frame(void *ctx, const net_peer_info *p, const uint8_t *d, size_t len) {
    (void)p;
    (void)d;
    (void)len;
    ((counter *)ctx)->frames++;
}
static void quiet(void *ctx, int level, const char *msg) {
    (void)ctx;
    if (level >= NET_LOG_WARN) fprintf(stderr, "bench_net: %s\n", msg);
}

static double aead_limit(void) {
    net_hs i, r;
    uint8_t buf[NET_HS_MSG_MAX];
    size_t len;
    net_session si, sr;
    if (net_hs_init(&i, NET_HS_INITIATOR, &G, SEC[1], NULL, false) != NET_OK ||
        net_hs_init(&r, NET_HS_RESPONDER, &G, SEC[0], NULL, false) != NET_OK ||
        net_hs_write(&i, buf, sizeof buf, &len) != NET_OK || net_hs_read(&r, buf, len) != NET_OK ||
        net_hs_write(&r, buf, sizeof buf, &len) != NET_OK || net_hs_read(&i, buf, len) != NET_OK ||
        net_hs_write(&i, buf, sizeof buf, &len) != NET_OK || net_hs_read(&r, buf, len) != NET_OK ||
        net_hs_split(&i, &si) != NET_OK || net_hs_split(&r, &sr) != NET_OK)
        return 0;
    uint8_t pt[FRAME_BYTES] = {1}, frame[4 + FRAME_BYTES + 16];
    long n = 0;
    double t0 = now_s(), t;
    do {
        for (int k = 0; k < 1000; k++, n++) {
            if (net_session_seal(&si, pt, sizeof pt, frame) != NET_OK) return 0;
            if (net_session_open(&sr, frame + 4, FRAME_BYTES + 16, frame + 4) != NET_OK) return 0;
        }
        t = now_s() - t0;
    } while (t < 0.5);
    return (double)n / t;
}

static double handshakes_per_s(void) {
    long n = 0;
    double t0 = now_s(), t;
    do {
        net_hs i, r;
        uint8_t buf[NET_HS_MSG_MAX];
        size_t len;
        if (net_hs_init(&i, NET_HS_INITIATOR, &G, SEC[1], NULL, false) != NET_OK ||
            net_hs_init(&r, NET_HS_RESPONDER, &G, SEC[0], NULL, false) != NET_OK ||
            net_hs_write(&i, buf, sizeof buf, &len) != NET_OK || net_hs_read(&r, buf, len) != NET_OK ||
            net_hs_write(&r, buf, sizeof buf, &len) != NET_OK || net_hs_read(&i, buf, len) != NET_OK ||
            net_hs_write(&i, buf, sizeof buf, &len) != NET_OK || net_hs_read(&r, buf, len) != NET_OK)
            return 0;
        n++;
        t = now_s() - t0;
    } while (t < 0.5);
    return (double)n / t;
}

static double ed25519_verifies_per_s(void) {
    uint8_t msg[64] = {0}, sig[64];
    crypto_sign_detached(sig, NULL, msg, sizeof msg, SEC[0]);
    long n = 0;
    double t0 = now_s(), t;
    do {
        for (int k = 0; k < 100; k++, n++)
            if (crypto_sign_verify_detached(sig, msg, sizeof msg, G.validators[0].pubkey) != 0) return 0;
        t = now_s() - t0;
    } while (t < 0.5);
    return (double)n / t;
}

static double transport_frames_per_s(void) {
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) return 0;
    counter c0 = {0}, c1 = {0};
    net *n0 = NULL, *n1 = NULL;
    net_config cfg = {.genesis = &G, .listen = "127.0.0.1:0", .tick_ms = 5};
    memcpy(cfg.sec, SEC[0], 64);
    net_callbacks cb0 = {on_up, NULL, on_frame, quiet, &c0}, cb1 = {on_up, NULL, on_frame, quiet, &c1};
    double rate = 0;
    if (net_new(&loop, &cfg, &cb0, &n0) != NET_OK || net_start(n0) != NET_OK) goto out;
    snprintf(G.validators[0].address, sizeof G.validators[0].address, "127.0.0.1:%u", net_listen_port(n0));
    cfg.listen = NULL;
    cfg.send_queue_bytes_max = 4u << 20;
    memcpy(cfg.sec, SEC[1], 64);
    if (net_new(&loop, &cfg, &cb1, &n1) != NET_OK || net_start(n1) != NET_OK) goto out;
    double deadline = now_s() + 5;
    while (c1.ups == 0 && now_s() < deadline) uv_run(&loop, UV_RUN_ONCE);
    if (c1.ups == 0) goto out;
    uint8_t pt[FRAME_BYTES];
    memset(pt, 7, sizeof pt);
    uint64_t sent = 0;
    double t0 = now_s();
    deadline = t0 + 30;
    while (c0.frames < FRAMES_TOTAL && now_s() < deadline) {
        /* Fill the send queue up to its bound, then let the loop move bytes. */
        while (sent < FRAMES_TOTAL && net_send(n1, 0, pt, sizeof pt) == NET_OK) sent++;
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    if (c0.frames >= FRAMES_TOTAL) rate = (double)c0.frames / (now_s() - t0);
out:
    if (n0) net_close(n0);
    if (n1) net_close(n1);
    uv_run(&loop, UV_RUN_DEFAULT);
    net_free(n0);
    net_free(n1);
    if (uv_loop_close(&loop) != 0) fprintf(stderr, "bench_net: loop not empty\n");
    return rate;
}

int main(void) {
    if (sodium_init() < 0) return 1;
    memset(&G, 0, sizeof G);
    snprintf(G.chain_id, sizeof G.chain_id, "bench");
    randombytes_buf(G.hash, sizeof G.hash);
    G.n_validators = 2;
    for (int i = 0; i < 2; i++) crypto_sign_keypair(G.validators[i].pubkey, SEC[i]);
    double lim = aead_limit();
    double fps = transport_frames_per_s();
    line("net_frames_256B_loopback", fps, "frames/s", lim, "seal+open/s");
    double hs = handshakes_per_s();
    double ver = ed25519_verifies_per_s();
    line("net_handshakes_in_memory", hs, "hs/s", ver / 2, "ed25519_verify/s/2");
    return fps > 0 && hs > 0 ? 0 : 1;
}
