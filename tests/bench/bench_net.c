/* bench_net.c: keep-alive HTTP requests per second against bare TCP round trips on the same
 * loopback (a client thread sends one request, waits for the answer, repeats), and throughput of the peer transport on loopback (256-byte frames, validator 1 ->
 * validator 0, one loop thread for both) beside the machine's own limit measured in the same
 * run: sealing plus opening a 256-byte frame on one core, which is the crypto work every frame
 * costs the single loop thread. Also full in-memory handshakes per second beside Ed25519
 * verifications per second / 2 (each handshake verifies two signatures). */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "net/http.h"

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

/* ------------------------------------------------------------------ HTTP keep-alive */
#define RTT_ROUNDS 20000
static const char HTTP_REQ[] = "GET /v1/status HTTP/1.1\r\nHost: b\r\n\r\n";
static atomic_int http_done;
static double http_rate;
static uint16_t http_port;

static int tcp_connect(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(0x7f000001);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void *http_client(void *arg) {
    (void)arg;
    int fd = tcp_connect(http_port);
    char buf[1024];
    long n = 0;
    double t0 = now_s();
    for (; fd >= 0 && n < RTT_ROUNDS; n++) {
        if (send(fd, HTTP_REQ, sizeof HTTP_REQ - 1, MSG_NOSIGNAL) <= 0) break;
        /* our answers are small and end with the body "{}" after content-length: 2 */
        size_t got = 0;
        for (;;) {
            ssize_t k = recv(fd, buf + got, sizeof buf - 1 - got, 0);
            if (k <= 0) goto out;
            got += (size_t)k;
            buf[got] = '\0';
            char *e = strstr(buf, "\r\n\r\n");
            if (e && strlen(e + 4) >= 2) break;
        }
    }
out:
    if (n == RTT_ROUNDS) http_rate = (double)n / (now_s() - t0);
    if (fd >= 0) close(fd);
    atomic_store(&http_done, 1);
    return NULL;
}

static void h_status(void *ctx, net_http_req *req, const net_http_request *r) {
    (void)ctx;
    (void)r;
    if (net_http_reply(req, 200, "application/json", "{}", 2) != NET_OK) fprintf(stderr, "bench_net: reply failed\n");
}

static void on_check(uv_timer_t *t) {
    if (atomic_load(&http_done)) uv_stop(t->loop);
}

static double http_requests_per_s(void) {
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) return 0;
    net_http *h = NULL;
    net_http_config c = {.listen = "127.0.0.1:0", .log_level = NET_LOG_WARN};
    uv_timer_t check;
    if (net_http_new(&loop, &c, &h) != NET_OK || net_http_route(h, "GET", "/v1/status", h_status, NULL) != NET_OK ||
        net_http_start(h) != NET_OK || uv_timer_init(&loop, &check) != 0)
        return 0;
    http_port = net_http_port(h);
    pthread_t th;
    if (pthread_create(&th, NULL, http_client, NULL) != 0) return 0;
    if (uv_timer_start(&check, on_check, 5, 5) == 0) uv_run(&loop, UV_RUN_DEFAULT);
    pthread_join(th, NULL);
    uv_close((uv_handle_t *)&check, NULL);
    net_http_close(h);
    uv_run(&loop, UV_RUN_DEFAULT);
    net_http_free(h);
    if (uv_loop_close(&loop) != 0) fprintf(stderr, "bench_net: loop not empty\n");
    return http_rate;
}

/* The same ping-pong with a bare TCP echo thread: the machine's loopback round-trip limit. */
static void *echo_server(void *arg) {
    int lfd = *(int *)arg, fd = accept(lfd, NULL, NULL);
    char buf[1024];
    for (ssize_t k; fd >= 0 && (k = recv(fd, buf, sizeof buf, 0)) > 0;)
        if (send(fd, buf, (size_t)k, MSG_NOSIGNAL) != k) break;
    if (fd >= 0) close(fd);
    return NULL;
}

static double tcp_round_trips_per_s(void) {
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(0x7f000001);
    socklen_t al = sizeof a;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 1) != 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &al) != 0)
        return 0;
    pthread_t th;
    if (pthread_create(&th, NULL, echo_server, &lfd) != 0) return 0;
    int fd = tcp_connect(ntohs(a.sin_port));
    char buf[1024];
    long n = 0;
    double t0 = now_s();
    for (; fd >= 0 && n < RTT_ROUNDS; n++) {
        if (send(fd, HTTP_REQ, sizeof HTTP_REQ - 1, MSG_NOSIGNAL) <= 0) break;
        size_t got = 0;
        while (got < sizeof HTTP_REQ - 1) {
            ssize_t k = recv(fd, buf, sizeof buf, 0);
            if (k <= 0) break;
            got += (size_t)k;
        }
    }
    double rate = n == RTT_ROUNDS ? (double)n / (now_s() - t0) : 0;
    if (fd >= 0) close(fd);
    pthread_join(th, NULL);
    close(lfd);
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
    double rps = http_requests_per_s();
    double rtt = tcp_round_trips_per_s();
    line("http_keepalive_sequential", rps, "req/s", rtt, "tcp_round_trips/s");
    return fps > 0 && hs > 0 && rps > 0 ? 0 : 1;
}
