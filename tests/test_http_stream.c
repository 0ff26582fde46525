/* test_http_stream.c: Check suite for the streamed answers of net/http.c (the transport of
 * GET /v1/events): headers and chunked framing, writes paced by the DRAINED callback, the
 * queue count and discard, a client that leaves (GONE), a server that closes with streams open
 * (GONE, final chunk, nothing leaks), request headers, and refused arguments. Server and client
 * share the test thread: the loop is spun without blocking and the client socket is read with
 * MSG_DONTWAIT, so every wait is a bounded number of spins. */
#include <check.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net/http.h"

typedef struct {
    uv_loop_t loop;
    net_http *h;
    net_http_req *req; /* the open stream, NULL once ended */
    int drained, gone;
    int mode;          /* what the handler does: 0 stream, 1 refuse a bad status then reply */
    char last_id[64];
    int header_rc;
    int pending_writes; /* chunks still to write, one per DRAINED */
} srv;

static void on_stream(void *ctx, net_http_req *req, int what) {
    srv *s = ctx;
    ck_assert_ptr_eq(req, s->req);
    if (what == NET_HTTP_STREAM_GONE) {
        s->gone++;
        net_http_stream_end(req);
        s->req = NULL;
        return;
    }
    ck_assert_int_eq(what, NET_HTTP_STREAM_DRAINED);
    s->drained++;
    if (s->pending_writes > 0) {
        char line[32];
        int n = snprintf(line, sizeof line, "data: %d\n\n", s->pending_writes--);
        ck_assert_int_eq(net_http_stream_write(req, line, (size_t)n), NET_OK);
    }
}

static void h_stream(void *ctx, net_http_req *req, const net_http_request *r) {
    srv *s = ctx;
    (void)r;
    s->header_rc = net_http_req_header(req, "last-event-id", s->last_id, sizeof s->last_id);
    if (s->mode == 1) {
        ck_assert_int_eq(net_http_stream_start(req, 404, "text/event-stream", on_stream, s), NET_EINVAL);
        ck_assert_int_eq(net_http_stream_write(req, "x", 1), NET_EINVAL); /* not a stream */
        ck_assert_int_eq(net_http_reply(req, 200, "text/plain", "plain", 5), NET_OK);
        return;
    }
    ck_assert_int_eq(net_http_stream_start(req, 200, "text/event-stream", on_stream, s), NET_OK);
    s->req = req;
    ck_assert_int_eq(net_http_stream_write(req, "retry: 1\n\n", 10), NET_OK);
}

static void srv_start(srv *s, int mode) {
    memset(s, 0, sizeof *s);
    s->mode = mode;
    ck_assert_int_eq(uv_loop_init(&s->loop), 0);
    net_http_config c = {.listen = "127.0.0.1:0", .idle_timeout_ms = 3000, .log_level = NET_LOG_ERROR};
    ck_assert_int_eq(net_http_new(&s->loop, &c, &s->h), NET_OK);
    ck_assert_int_eq(net_http_route(s->h, "GET", "/events", h_stream, s), NET_OK);
    ck_assert_int_eq(net_http_start(s->h), NET_OK);
}

static void spin(srv *s, int n) {
    for (int i = 0; i < n; i++) {
        uv_run(&s->loop, UV_RUN_NOWAIT);
        usleep(500);
    }
}

static void srv_stop(srv *s) {
    net_http_close(s->h);
    for (int i = 0; i < 10000 && uv_loop_alive(&s->loop); i++) spin(s, 1);
    ck_assert(net_http_is_closed(s->h));
    ck_assert_uint_eq(net_http_streams(s->h), 0);
    net_http_free(s->h); /* asserts no stream is left */
    ck_assert_int_eq(uv_loop_close(&s->loop), 0);
}

static int client(srv *s, const char *extra_headers) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(net_http_port(s->h))};
    a.sin_addr.s_addr = htonl(0x7f000001);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    char req[256];
    int n = snprintf(req, sizeof req, "GET /events HTTP/1.1\r\nHost: x\r\n%s\r\n", extra_headers);
    ck_assert_int_eq(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
    return fd;
}

/* Spins the loop and reads what arrived, until `want` is in buf or the spins run out. */
static bool read_until(srv *s, int fd, char *buf, size_t cap, size_t *len, const char *want) {
    for (int i = 0; i < 4000; i++) {
        spin(s, 1);
        ssize_t k = recv(fd, buf + *len, cap - 1 - *len, MSG_DONTWAIT);
        if (k > 0) {
            *len += (size_t)k;
            buf[*len] = '\0';
        }
        if (strstr(buf, want)) return true;
        if (k == 0) return false;
    }
    return false;
}

START_TEST(http_stream_sends_headers_then_chunks_paced_by_drained) {
    srv s;
    srv_start(&s, 0);
    s.pending_writes = 3;
    int fd = client(&s, "Last-Event-ID: 12:3\r\n");
    char buf[8192] = "";
    size_t len = 0;
    ck_assert(read_until(&s, fd, buf, sizeof buf, &len, "data: 1\n\n"));
    ck_assert_ptr_nonnull(strstr(buf, "HTTP/1.1 200"));
    ck_assert_ptr_nonnull(strcasestr(buf, "content-type: text/event-stream"));
    ck_assert_ptr_nonnull(strcasestr(buf, "cache-control: no-store"));
    ck_assert_ptr_nonnull(strcasestr(buf, "transfer-encoding: chunked"));
    /* every write went out after the previous one drained, in order */
    char *p3 = strstr(buf, "data: 3"), *p2 = strstr(buf, "data: 2"), *p1 = strstr(buf, "data: 1");
    ck_assert(strstr(buf, "retry: 1") < p3 && p3 < p2 && p2 < p1);
    ck_assert_int_ge(s.drained, 3);
    ck_assert_int_eq(s.header_rc, NET_OK);
    ck_assert_str_eq(s.last_id, "12:3");
    ck_assert_uint_eq(net_http_streams(s.h), 1);
    ck_assert_uint_eq(net_http_pending(s.h), 0); /* a stream is not a pending answer */
    /* The owner ends it: the final chunk arrives and the connection stays usable. */
    ck_assert_int_eq(net_http_stream_write(s.req, "data: end\n\n", 11), NET_OK);
    net_http_stream_end(s.req);
    s.req = NULL;
    ck_assert(read_until(&s, fd, buf, sizeof buf, &len, "\r\n0\r\n\r\n"));
    ck_assert_ptr_nonnull(strstr(buf, "data: end"));
    ck_assert_uint_eq(net_http_streams(s.h), 0);
    ck_assert_int_eq(s.gone, 0);
    close(fd);
    srv_stop(&s);
}
END_TEST

START_TEST(http_stream_queue_counts_unsent_bytes_and_discard_drops_them) {
    srv s;
    srv_start(&s, 0);
    int fd = client(&s, "");
    char buf[4096] = "";
    size_t len = 0;
    ck_assert(read_until(&s, fd, buf, sizeof buf, &len, "retry: 1"));
    ck_assert_int_eq(s.header_rc, NET_EINVAL); /* no Last-Event-ID */
    /* The client stops reading; 8 MiB cannot all reach the socket. */
    static char big[1 << 16];
    memset(big, 'x', sizeof big);
    for (int i = 0; i < 128; i++) ck_assert_int_eq(net_http_stream_write(s.req, big, sizeof big), NET_OK);
    spin(&s, 50);
    size_t q = net_http_stream_queued(s.req);
    ck_assert_uint_gt(q, 1u << 20);
    ck_assert_uint_le(q, 128u << 16);
    net_http_stream_discard(s.req);
    ck_assert_uint_le(net_http_stream_queued(s.req), 64u << 10); /* only the chunk in flight */
    /* The client leaves: the owner hears GONE once a write fails, and ends the stream. */
    close(fd);
    for (int i = 0; i < 4000 && s.gone == 0; i++) {
        if (s.req && net_http_stream_write(s.req, big, 16) != NET_OK) { /* gone: GONE follows */ }
        spin(&s, 1);
    }
    ck_assert_int_eq(s.gone, 1);
    ck_assert_ptr_null(s.req);
    ck_assert_uint_eq(net_http_streams(s.h), 0);
    srv_stop(&s);
}
END_TEST

START_TEST(http_stream_server_close_tells_owner_and_sends_final_chunk) {
    srv s;
    srv_start(&s, 0);
    int fd = client(&s, "");
    char buf[4096] = "";
    size_t len = 0;
    ck_assert(read_until(&s, fd, buf, sizeof buf, &len, "retry: 1"));
    ck_assert_int_eq(net_http_stream_write(s.req, "data: last\n\n", 12), NET_OK);
    net_http_close(s.h);
    ck_assert_int_eq(s.gone, 1); /* told at once; the owner ended it */
    ck_assert(read_until(&s, fd, buf, sizeof buf, &len, "\r\n0\r\n\r\n"));
    ck_assert_ptr_nonnull(strstr(buf, "data: last"));
    close(fd);
    srv_stop(&s);
}
END_TEST

START_TEST(http_stream_refuses_a_non_2xx_status_and_the_request_stays_answerable) {
    srv s;
    srv_start(&s, 1);
    int fd = client(&s, "");
    char buf[4096] = "";
    size_t len = 0;
    ck_assert(read_until(&s, fd, buf, sizeof buf, &len, "plain"));
    ck_assert_ptr_nonnull(strstr(buf, "HTTP/1.1 200"));
    ck_assert_uint_eq(net_http_streams(s.h), 0);
    ck_assert_int_eq(net_http_stream_start(NULL, 200, "x", on_stream, &s), NET_EINVAL);
    ck_assert_int_eq(net_http_stream_write(NULL, "x", 1), NET_EINVAL);
    ck_assert_uint_eq(net_http_stream_queued(NULL), 0);
    net_http_stream_end(NULL);
    close(fd);
    srv_stop(&s);
}
END_TEST

int main(void) {
    Suite *su = suite_create("http_stream");
    TCase *tc = tcase_create("stream");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, http_stream_sends_headers_then_chunks_paced_by_drained);
    tcase_add_test(tc, http_stream_queue_counts_unsent_bytes_and_discard_drops_them);
    tcase_add_test(tc, http_stream_server_close_tells_owner_and_sends_final_chunk);
    tcase_add_test(tc, http_stream_refuses_a_non_2xx_status_and_the_request_stays_answerable);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
