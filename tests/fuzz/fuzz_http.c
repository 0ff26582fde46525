/* fuzz_http.c: libFuzzer target for HTTP request handling, from request bytes to response:
 * a real validator (tests/fuzz/node_fixture.h) serves its HTTP API (net/http.c on H2O, the
 * node's own routes) on 127.0.0.1; each input is written as-is into one new TCP connection
 * (one request, several pipelined ones, or garbage), our side is then shut for writing, and the
 * harness reads until the server closes.
 * Oracle: the server closes the connection by itself once the input has ended (nothing hangs:
 * 10 s at most; the request deadline is 2 s here); whatever it answers starts with a well-formed
 * status line "HTTP/1.x NNN " with NNN in 100..599 and never 500 (the fixture's store is sound,
 * so an internal error is a bug); the node keeps running. An event stream (GET /v1/events) is
 * left by the client as soon as its head arrives, which the server must survive too. */
#include "tests/fuzz/node_fixture.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>

static node *N;
static uint16_t PORT;

static uint64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

typedef struct {
    int fd;
    bool eof, broken;
    uint8_t *rx;
    size_t rx_len, rx_cap;
} client;

static void pump(client *c) {
    uv_run(&N->loop, UV_RUN_NOWAIT);
    while (!c->eof) {
        if (c->rx_cap - c->rx_len < 4096) {
            c->rx_cap = c->rx_cap ? c->rx_cap * 2 : 16384;
            c->rx = tem_realloc(c->rx, c->rx_cap + 1);
            TEM_ASSERT(c->rx);
        }
        ssize_t k = read(c->fd, c->rx + c->rx_len, c->rx_cap - c->rx_len);
        if (k > 0) {
            c->rx_len += (size_t)k;
            continue;
        }
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (k < 0 && errno == EINTR) continue;
        c->eof = true;
    }
}

static bool is_stream(const client *c) {
    if (!c->rx) return false;
    c->rx[c->rx_len] = 0;
    const char *end = memmem(c->rx, c->rx_len, "\r\n\r\n", 4);
    return end && memmem(c->rx, (size_t)((const uint8_t *)end - c->rx), "text/event-stream", 17) != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!N) {
        N = fxn_open(true, false);
        PORT = net_http_port(N->http);
        TEM_ASSERT(PORT != 0);
    }
    client c = {.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
    TEM_ASSERT(c.fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(PORT)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    TEM_ASSERT(connect(c.fd, (struct sockaddr *)&a, sizeof a) == 0);
    TEM_ASSERT(fcntl(c.fd, F_SETFL, O_NONBLOCK) == 0);
    int one = 1;
    TEM_ASSERT(setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0);

    uint64_t deadline = mono_ms() + 10000;
    const uint8_t *p = data;
    size_t left = size;
    while (left > 0 && !c.broken && !c.eof) {
        ssize_t k = send(c.fd, p, left, MSG_NOSIGNAL);
        if (k > 0) {
            p += k;
            left -= (size_t)k;
        } else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            pump(&c);
            TEM_ASSERT(mono_ms() < deadline);
        } else {
            c.broken = true; /* the server closed first (a 4xx and close): allowed */
        }
    }
    shutdown(c.fd, SHUT_WR);
    while (!c.eof && !is_stream(&c)) {
        pump(&c);
        if (mono_ms() >= deadline) {
            fprintf(stderr, "fuzz_http: no close 10 s after the input ended; got %zu bytes\n", c.rx_len);
            TEM_ASSERT(0);
        }
    }
    close(c.fd);
    for (int i = 0; i < 4; i++) uv_run(&N->loop, UV_RUN_NOWAIT);

    if (c.rx_len > 0) {
        const char *r = (const char *)c.rx;
        bool ok = c.rx_len >= 13 && (memcmp(r, "HTTP/1.1 ", 9) == 0 || memcmp(r, "HTTP/1.0 ", 9) == 0) &&
                  r[9] >= '1' && r[9] <= '5' && r[10] >= '0' && r[10] <= '9' && r[11] >= '0' && r[11] <= '9' &&
                  r[12] == ' ';
        if (!ok) fprintf(stderr, "fuzz_http: malformed status line: %.*s\n", (int)(c.rx_len < 64 ? c.rx_len : 64), r);
        TEM_ASSERT(ok);
        TEM_ASSERT(memcmp(r + 9, "500", 3) != 0);
    }
    tem_free(c.rx);
    TEM_ASSERT(!N->stopping);
    return 0;
}
