/* http.c: the node's HTTP/1.1 server on H2O's libuv binding: accepting connections on the
 * caller's loop, routing (method, prefix) to handlers, request handles that survive the client
 * leaving, JSON errors, optional TLS, and a shutdown that closes every connection before the
 * H2O context is disposed. */
#include "net/net.h"
#include "net/http.h"

#include <h2o.h>
#include <jansson.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/socket.h>

typedef struct net__hsock net__hsock;
struct net__hsock {
    uv_tcp_t tcp; /* first: H2O hands the close callback this handle */
    net_http *h;
    net__hsock *prev, *next;
    h2o_socket_t *sock;   /* H2O's socket over tcp, to find this record from a request */
    uint8_t addr[16];     /* client address (IPv4 in the first 4 bytes), for per-address caps */
    uint64_t deadline_ms; /* a complete request must have arrived by then (unless inflight) */
    uint32_t inflight;    /* requests handed to a handler and not yet answered */
    bool cut;             /* shut down for missing its deadline */
};

/* A connection refused before H2O saw it: it gets one short answer (429 or 503), a FIN, and
 * its input is read and dropped until the client closes or REFUSED_LINGER_MS passes, so the
 * answer is not destroyed by a RST. At most REFUSED_MAX at once; past that, closed at once. */
typedef struct net__rsock net__rsock;
struct net__rsock {
    uv_tcp_t tcp;
    net_http *h;
    net__rsock *prev, *next;
    uint64_t deadline_ms;
    bool closing;
};
#define REFUSED_MAX 64
#define REFUSED_LINGER_MS 1000
#define SWEEP_MS 100

typedef struct {
    char method[16]; /* "" = any */
    char prefix[NET_HTTP_PREFIX_MAX];
    size_t prefix_len;
    net_http_handler_fn fn;
    void *ctx;
} net__route;

typedef struct net__stream net__stream;
struct net_http_req {
    net_http *h;           /* NULL once detached by net_http_close */
    net__hsock *s;         /* its connection; NULL once that closed or the server detached it */
    h2o_req_t *req;        /* NULL once H2O disposed the request */
    net_http_req **guard;  /* slot in the request's pool pointing back here */
    net_http_req *prev, *next;
    net__stream *stream;   /* set once the answer is a stream (net_http_stream_start) */
};

/* One client address in the rate table (milli-tokens, like net.c's buckets). */
typedef struct {
    char ip[64];
    uint64_t tokens_m, last_ms;
} net__client;
#define CLIENT_PROBE 8

typedef struct {
    h2o_handler_t super;
    net_http *h;
} net__handler;

struct net_http {
    uv_loop_t *loop;
    net_http_config cfg;
    char listen_addr[128];
    h2o_globalconf_t conf;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    SSL_CTX *ssl;
    uv_tcp_t listener;
    uv_timer_t drain, sweep;
    bool conf_inited, ctx_inited, listening, started, closing, drain_on, sweep_on;
    uint32_t handles_open, n_socks, routes_n, n_refused;
    uint16_t port;
    uint64_t close_started_ms, served, limited, refused_conns, timed_out;
    net__client *clients;
    net__hsock *socks;
    net__rsock *refused;
    net_http_req *pending;
    uint32_t n_pending;
    net__stream *streams; /* streamed answers still open (net_http_stream_*) */
    uint32_t n_streams;
    net__route routes[NET_HTTP_ROUTES_MAX];
};

__attribute__((format(printf, 3, 4))) static void hlog(net_http *h, int level, const char *fmt, ...) {
    if (level < h->cfg.log_level) return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (h->cfg.log)
        h->cfg.log(h->cfg.log_ctx, level, buf);
    else
        fprintf(stderr, "http %s: %s\n", net_log_level_name(level), buf);
}

/* ------------------------------------------------------------------ JSON errors */
int net_json_error(char *out, size_t cap, const char *message, const char *code) {
    if (out == NULL || cap == 0) return NET_EINVAL;
    json_t *o = json_pack("{s:s,s:s}", "error", message ? message : "", "code", code ? code : "");
    if (o == NULL) return NET_EINVAL;
    size_t n = json_dumpb(o, out, cap - 1, JSON_COMPACT);
    json_decref(o);
    if (n == 0 || n > cap - 1) return NET_EINVAL;
    out[n] = '\0';
    return (int)n;
}

/* ------------------------------------------------------------------ replies */
static const char *reason_of(int status) {
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Request Entity Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
    }
}

static void send_raw(h2o_req_t *req, int status, const char *ctype, const void *body, size_t len) {
    static h2o_generator_t generator = {NULL, NULL};
    req->res.status = status;
    req->res.reason = reason_of(status);
    req->res.content_length = len;
    if (ctype && *ctype)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, ctype, strlen(ctype));
    h2o_iovec_t buf = h2o_strdup(&req->pool, len ? body : "", len);
    h2o_start_response(req, &generator);
    if (h2o_memis(req->input.method.base, req->input.method.len, H2O_STRLIT("HEAD")))
        h2o_send(req, NULL, 0, H2O_SEND_STATE_FINAL);
    else
        h2o_send(req, &buf, 1, H2O_SEND_STATE_FINAL);
}

/* Seconds a client refused by the rate limit should wait: one token refills within a second at
 * any rate >= 1/s, and Retry-After has whole seconds. */
static uint64_t retry_after_s(const net_http *h) {
    (void)h;
    return 1;
}

static void send_error_raw(h2o_req_t *req, int status, const char *code, const char *message) {
    char buf[512];
    int n = net_json_error(buf, sizeof buf, message, code);
    if (n < 0) n = snprintf(buf, sizeof buf, "{\"error\":\"error\",\"code\":\"%s\"}", "EINTERNAL");
    send_raw(req, status, "application/json", buf, (size_t)n);
}

/* The connection a request came on (NULL if H2O's socket is not one of ours). */
static net__hsock *sock_of(net_http *h, h2o_req_t *req) {
    h2o_socket_t *sock = req->conn->callbacks->get_socket ? req->conn->callbacks->get_socket(req->conn) : NULL;
    if (sock == NULL) return NULL;
    for (net__hsock *s = h->socks; s; s = s->next)
        if (s->sock == sock) return s;
    return NULL;
}

/* A request on s was answered: the next one has a fresh deadline. */
static void sock_answered(net_http *h, net__hsock *s) {
    if (s == NULL) return;
    s->deadline_ms = uv_now(h->loop) + h->cfg.request_timeout_ms;
}

static void pending_unlink(net_http_req *r) {
    net_http *h = r->h;
    if (h == NULL) return;
    if (r->prev) r->prev->next = r->next;
    else h->pending = r->next;
    if (r->next) r->next->prev = r->prev;
    r->prev = r->next = NULL;
    TEM_ASSERT(h->n_pending > 0);
    h->n_pending--;
    r->h = NULL;
}

bool net_http_req_alive(const net_http_req *r) { return r != NULL && r->req != NULL; }

int net_http_req_header(const net_http_req *r, const char *name, char *out, size_t cap) {
    if (r == NULL || r->req == NULL || name == NULL || out == NULL || cap == 0) return NET_EINVAL;
    out[0] = '\0';
    ssize_t i = h2o_find_header_by_str(&r->req->headers, name, strlen(name), -1);
    if (i < 0) return NET_EINVAL;
    const h2o_iovec_t *v = &r->req->headers.entries[i].value;
    if (v->len >= cap) return NET_EINVAL;
    memcpy(out, v->base, v->len);
    out[v->len] = '\0';
    return NET_OK;
}

int net_http_reply(net_http_req *r, int status, const char *content_type, const void *body, size_t len) {
    if (r == NULL || status < 100 || status > 599 || (body == NULL && len > 0)) return NET_EINVAL;
    int rc = NET_EGONE;
    if (r->req != NULL) {
        /* Clear the pool's back-pointer first: the request is disposed after the response is
         * written, and its dispose hook must not touch this handle, which is freed below. */
        *r->guard = NULL;
        if (r->h) r->h->served++;
        send_raw(r->req, status, content_type, body, len);
        rc = NET_OK;
    }
    if (r->h && r->s) {
        TEM_ASSERT(r->s->inflight > 0);
        r->s->inflight--;
        sock_answered(r->h, r->s);
    }
    r->s = NULL;
    pending_unlink(r);
    tem_free(r);
    return rc;
}

int net_http_reply_header(net_http_req *r, const char *name, const char *value) {
    if (r == NULL || name == NULL || value == NULL || r->stream != NULL) return NET_EINVAL;
    if (r->req == NULL) return NET_EGONE;
    h2o_req_t *req = r->req;
    /* Copied into the request's pool: the answer is written after the caller's strings are gone. */
    h2o_iovec_t n = h2o_strdup(&req->pool, name, strlen(name));
    h2o_iovec_t v = h2o_strdup(&req->pool, value, strlen(value));
    h2o_add_header_by_str(&req->pool, &req->res.headers, n.base, n.len, 1, NULL, v.base, v.len);
    return NET_OK;
}

int net_http_reply_error(net_http_req *r, int status, const char *code, const char *message) {
    char buf[1024];
    int n = net_json_error(buf, sizeof buf, message, code);
    if (n < 0) n = net_json_error(buf, sizeof buf, "error message too long", code);
    if (n < 0) return NET_EINVAL;
    return net_http_reply(r, status, "application/json", buf, (size_t)n);
}

static void on_guard_dispose(void *p) {
    net_http_req *r = *(net_http_req **)p;
    if (r == NULL) return;
    /* The client went away (or H2O tore the connection down) before the answer. */
    r->req = NULL;
    r->guard = NULL;
}

/* ------------------------------------------------------------------ routing */
static bool prefix_matches(const net__route *rt, const char *path, size_t plen) {
    if (plen < rt->prefix_len || memcmp(path, rt->prefix, rt->prefix_len) != 0) return false;
    if (plen == rt->prefix_len) return true;
    return rt->prefix[rt->prefix_len - 1] == '/' || path[rt->prefix_len] == '/';
}

/* Takes one request token for `ip`. The table is open-addressed with a short probe; when the
 * probe window is full the least recently seen address there is forgotten, so a spray of
 * addresses costs bounded memory (and at worst a fresh bucket for an evicted client). */
static bool client_take(net_http *h, const char *ip) {
    uint64_t now = uv_now(h->loop);
    uint32_t hash = 2166136261u;
    for (const char *p = ip; *p; p++) hash = (hash ^ (uint8_t)*p) * 16777619u;
    net__client *hit = NULL, *victim = NULL;
    for (uint32_t k = 0; k < CLIENT_PROBE; k++) {
        net__client *c = &h->clients[(hash + k) % h->cfg.clients_max];
        if (c->ip[0] && strcmp(c->ip, ip) == 0) {
            hit = c;
            break;
        }
        if (victim == NULL || !c->ip[0] || (victim->ip[0] && c->last_ms < victim->last_ms)) victim = c;
    }
    uint64_t cap = h->cfg.rate_reqs_per_s * h->cfg.rate_burst_ms;
    if (hit == NULL) {
        hit = victim;
        snprintf(hit->ip, sizeof hit->ip, "%s", ip);
        hit->tokens_m = cap;
        hit->last_ms = now;
    }
    hit->tokens_m += h->cfg.rate_reqs_per_s * (now - hit->last_ms);
    if (hit->tokens_m > cap) hit->tokens_m = cap;
    hit->last_ms = now;
    if (hit->tokens_m < 1000) return false;
    hit->tokens_m -= 1000;
    return true;
}

static void remote_of(h2o_req_t *req, char *out, size_t cap) {
    struct sockaddr_storage ss;
    snprintf(out, cap, "?");
    socklen_t sl = req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss);
    if (sl > 0 && ss.ss_family == AF_INET)
        uv_ip4_name((struct sockaddr_in *)&ss, out, cap);
    else if (sl > 0 && ss.ss_family == AF_INET6)
        uv_ip6_name((struct sockaddr_in6 *)&ss, out, cap);
}

static int on_req(h2o_handler_t *self, h2o_req_t *req) {
    net_http *h = ((net__handler *)self)->h;
    if (h->closing) {
        send_error_raw(req, 503, "ECLOSING", "server is shutting down");
        return 0;
    }
    char remote[64];
    remote_of(req, remote, sizeof remote);
    net__hsock *sk = sock_of(h, req);
    if (h->clients != NULL && !client_take(h, remote)) {
        h->limited++;
        if (h->limited % 1000 == 1) hlog(h, NET_LOG_WARN, "rate limit: refusing requests from %s (ERATE)", remote);
        char ra[24];
        int ral = snprintf(ra, sizeof ra, "%llu", (unsigned long long)retry_after_s(h));
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, h2o_strdup(&req->pool, ra, (size_t)ral).base, (size_t)ral);
        send_error_raw(req, 429, "ERATE", "too many requests from this address");
        sock_answered(h, sk);
        return 0;
    }
    size_t plen = req->path.len;
    if (req->query_at != SIZE_MAX && req->query_at < plen) plen = req->query_at;
    const net__route *best = NULL;
    bool other_method = false;
    for (uint32_t i = 0; i < h->routes_n; i++) {
        const net__route *rt = &h->routes[i];
        if (!prefix_matches(rt, req->path.base, plen)) continue;
        if (rt->method[0] && !h2o_memis(req->method.base, req->method.len, rt->method, strlen(rt->method))) {
            other_method = true;
            continue;
        }
        if (best == NULL || rt->prefix_len > best->prefix_len) best = rt;
    }
    if (best == NULL) {
        h->served++;
        if (other_method)
            send_error_raw(req, 405, "EMETHOD", "method not allowed on this path");
        else
            send_error_raw(req, 404, "ENOTFOUND", "no such endpoint");
        sock_answered(h, sk);
        return 0;
    }
    net_http_req *r = tem_calloc(1, sizeof *r);
    if (r == NULL) {
        send_error_raw(req, 503, "ENOMEM", "out of memory");
        sock_answered(h, sk);
        return 0;
    }
    r->h = h;
    r->s = sk;
    if (sk) sk->inflight++;
    r->req = req;
    r->guard = h2o_mem_alloc_shared(&req->pool, sizeof *r->guard, on_guard_dispose);
    *r->guard = r;
    r->next = h->pending;
    if (h->pending) h->pending->prev = r;
    h->pending = r;
    h->n_pending++;

    net_http_request view;
    view.method = h2o_strdup(&req->pool, req->method.base, req->method.len).base;
    view.path = h2o_strdup(&req->pool, req->path.base, plen).base;
    view.query = plen < req->path.len ? h2o_strdup(&req->pool, req->path.base + plen + 1,
                                                   req->path.len - plen - 1).base
                                      : "";
    ssize_t ct = h2o_find_header(&req->headers, H2O_TOKEN_CONTENT_TYPE, -1);
    view.content_type = ct >= 0 ? h2o_strdup(&req->pool, req->headers.entries[ct].value.base,
                                             req->headers.entries[ct].value.len).base
                                : "";
    view.remote = remote;
    view.body = req->entity.base ? (const uint8_t *)req->entity.base : (const uint8_t *)"";
    view.body_len = req->entity.base ? req->entity.len : 0;
    best->fn(best->ctx, r, &view);
    return 0;
}

/* ------------------------------------------------------------------ connections */
static void on_sock_closed(uv_handle_t *handle) {
    net__hsock *s = (net__hsock *)handle;
    net_http *h = s->h;
    for (net_http_req *r = h->pending; r; r = r->next)
        if (r->s == s) r->s = NULL;
    if (s->prev) s->prev->next = s->next;
    else h->socks = s->next;
    if (s->next) s->next->prev = s->prev;
    TEM_ASSERT(h->n_socks > 0);
    h->n_socks--;
    TEM_ASSERT(h->handles_open > 0);
    h->handles_open--;
    tem_free(s);
}

static void on_plain_closed(uv_handle_t *handle) {
    net__hsock *s = (net__hsock *)handle;
    TEM_ASSERT(s->h->handles_open > 0);
    s->h->handles_open--;
    tem_free(s);
}

static void on_refused_closed(uv_handle_t *handle) {
    net__rsock *r = (net__rsock *)handle;
    net_http *h = r->h;
    if (r->prev) r->prev->next = r->next;
    else h->refused = r->next;
    if (r->next) r->next->prev = r->prev;
    TEM_ASSERT(h->n_refused > 0);
    h->n_refused--;
    TEM_ASSERT(h->handles_open > 0);
    h->handles_open--;
    tem_free(r);
}

static void refused_close(net__rsock *r) {
    if (r->closing) return;
    r->closing = true;
    uv_close((uv_handle_t *)&r->tcp, on_refused_closed);
}

static void on_refused_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
    (void)handle;
    (void)suggested;
    static char sink[4096]; /* input of refused clients is dropped unread */
    *buf = uv_buf_init(sink, sizeof sink);
}

static void on_refused_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
    (void)buf;
    if (nread < 0) refused_close((net__rsock *)st);
}

/* Answers a connection H2O never sees with one plain HTTP/1.1 response and a FIN. */
static void refuse(net_http *h, net__rsock *r, int status, const char *code, const char *message) {
    char body[256], msg[640];
    int bl = net_json_error(body, sizeof body, message, code);
    if (bl < 0) bl = 0;
    int ml = snprintf(msg, sizeof msg,
                      "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                      "Retry-After: 1\r\nConnection: close\r\n\r\n%.*s",
                      status, reason_of(status), bl, bl, body);
    uv_buf_t b = uv_buf_init(msg, (unsigned)ml);
    h->refused_conns++;
    /* A fresh socket's send buffer takes a few hundred bytes at once; if not, the client
     * sees the close alone, which is all a client that does not read deserves. */
    (void)uv_try_write((uv_stream_t *)&r->tcp, &b, 1);
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&r->tcp, &fd) == 0) (void)shutdown(fd, SHUT_WR);
    r->deadline_ms = uv_now(h->loop) + REFUSED_LINGER_MS;
    if (h->n_refused > REFUSED_MAX || uv_read_start((uv_stream_t *)&r->tcp, on_refused_alloc, on_refused_read) != 0)
        refused_close(r);
}

static void addr_of(uv_tcp_t *tcp, uint8_t out[16], char *text, size_t cap) {
    struct sockaddr_storage ss;
    int len = sizeof ss;
    memset(out, 0, 16);
    snprintf(text, cap, "?");
    if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &len) != 0) return;
    if (ss.ss_family == AF_INET) {
        memcpy(out, &((struct sockaddr_in *)&ss)->sin_addr, 4);
        uv_ip4_name((struct sockaddr_in *)&ss, text, cap);
    } else if (ss.ss_family == AF_INET6) {
        memcpy(out, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
        uv_ip6_name((struct sockaddr_in6 *)&ss, text, cap);
    }
}

/* Why a new connection from `addr` may not enter the table: NULL if it may. The last quarter
 * of the table is kept for addresses holding fewer than an eighth of their cap, so one address,
 * or a few, at their cap cannot lock everybody else out. */
static const char *admit_conn(net_http *h, const uint8_t addr[16], int *status, const char **code) {
    uint32_t same = 0;
    for (net__hsock *s = h->socks; s; s = s->next) same += memcmp(s->addr, addr, 16) == 0;
    uint32_t light = h->cfg.conns_per_addr_max / 8 ? h->cfg.conns_per_addr_max / 8 : 1;
    if (h->n_socks >= h->cfg.conns_max) {
        *status = 503, *code = "ELIMIT";
        return "the server's connection table is full; retry later";
    }
    if (same >= h->cfg.conns_per_addr_max) {
        *status = 429, *code = "ECONNS";
        return "too many connections from this address";
    }
    if (h->n_socks >= h->cfg.conns_max - h->cfg.conns_max / 4 && same >= light) {
        *status = 503, *code = "ELIMIT";
        return "the server is busy; clients with few connections are served first";
    }
    return NULL;
}

static void on_accept(uv_stream_t *listener, int status) {
    net_http *h = listener->data;
    if (status != 0) {
        hlog(h, NET_LOG_WARN, "accept: %s", net_uv_error(status));
        return;
    }
    /* Sized for either record: a refused connection is moved into an net__rsock view. */
    net__hsock *s = tem_calloc(1, sizeof *s > sizeof(net__rsock) ? sizeof *s : sizeof(net__rsock));
    if (s == NULL) {
        hlog(h, NET_LOG_ERROR, "accept: out of memory");
        return;
    }
    s->h = h;
    int rc = uv_tcp_init(h->loop, &s->tcp);
    if (rc != 0) {
        hlog(h, NET_LOG_ERROR, "uv_tcp_init: %s", net_uv_error(rc));
        tem_free(s);
        return;
    }
    h->handles_open++;
    if ((rc = uv_accept(listener, (uv_stream_t *)&s->tcp)) != 0) {
        hlog(h, NET_LOG_WARN, "uv_accept: %s", net_uv_error(rc));
        uv_close((uv_handle_t *)&s->tcp, on_plain_closed);
        return;
    }
    char text[64];
    addr_of(&s->tcp, s->addr, text, sizeof text);
    int st = 0;
    const char *code = NULL;
    const char *why = h->closing ? "server is shutting down" : admit_conn(h, s->addr, &st, &code);
    if (h->closing) st = 503, code = "ECLOSING";
    if (why != NULL) {
        if (h->refused_conns % 1000 == 0)
            hlog(h, NET_LOG_WARN, "refusing a client from %s: %s (%s; %u connections open)", text, why, code, h->n_socks);
        net__rsock *r = (net__rsock *)s; /* same first member: the uv_tcp_t */
        r->h = h;
        r->prev = NULL;
        r->next = h->refused;
        if (h->refused) h->refused->prev = r;
        h->refused = r;
        h->n_refused++;
        r->closing = false;
        refuse(h, r, st, code, why);
        return;
    }
    s->next = h->socks;
    if (h->socks) h->socks->prev = s;
    h->socks = s;
    h->n_socks++;
    s->deadline_ms = uv_now(h->loop) + h->cfg.request_timeout_ms;
    h2o_socket_t *sock = h2o_uv_socket_create((uv_stream_t *)&s->tcp, on_sock_closed);
    s->sock = sock;
    h2o_accept(&h->accept_ctx, sock);
}

/* Every SWEEP_MS: cuts connections whose request did not arrive complete in time (slow or
 * stalled headers and bodies) and closes refused connections that outstayed their answer. */
static void on_sweep(uv_timer_t *t) {
    net_http *h = t->data;
    uint64_t now = uv_now(h->loop);
    for (net__hsock *s = h->socks; s; s = s->next) {
        if (s->cut || s->inflight > 0 || now < s->deadline_ms) continue;
        uv_os_fd_t fd;
        /* H2O owns the socket: ending both directions makes it see an error and close the
         * connection itself, through on_sock_closed. */
        if (uv_fileno((uv_handle_t *)&s->tcp, &fd) == 0) (void)shutdown(fd, SHUT_RDWR);
        s->cut = true;
        h->timed_out++;
        if (h->timed_out % 1000 == 1) hlog(h, NET_LOG_WARN, "cutting connections whose request did not arrive within %llu ms (%llu so far)",
                                            (unsigned long long)h->cfg.request_timeout_ms, (unsigned long long)h->timed_out);
    }
    for (net__rsock *r = h->refused, *next; r; r = next) {
        next = r->next;
        if (now >= r->deadline_ms) refused_close(r);
    }
}

/* ------------------------------------------------------------------ lifecycle */
static const char *ssl_reason(void) {
    const char *r = ERR_reason_error_string(ERR_get_error());
    ERR_clear_error();
    return r ? r : "unreadable file";
}

static int tls_setup(net_http *h) {
    h->ssl = SSL_CTX_new(TLS_server_method());
    if (h->ssl == NULL) return NET_ETLS;
    SSL_CTX_set_options(h->ssl, SSL_OP_NO_COMPRESSION);
    if (SSL_CTX_set_min_proto_version(h->ssl, TLS1_2_VERSION) != 1) return NET_ETLS;
    if (SSL_CTX_use_certificate_chain_file(h->ssl, h->cfg.tls_cert_path) != 1) {
        hlog(h, NET_LOG_ERROR, "TLS certificate %s: %s", h->cfg.tls_cert_path, ssl_reason());
        return NET_ETLS;
    }
    if (SSL_CTX_use_PrivateKey_file(h->ssl, h->cfg.tls_key_path, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(h->ssl) != 1) {
        hlog(h, NET_LOG_ERROR, "TLS key %s: %s", h->cfg.tls_key_path, ssl_reason());
        return NET_ETLS;
    }
    return NET_OK;
}

int net_http_new(uv_loop_t *loop, const net_http_config *cfg, net_http **out) {
    if (loop == NULL || cfg == NULL || out == NULL || cfg->listen == NULL) return NET_EINVAL;
    if (strlen(cfg->listen) >= 128) return NET_EADDR;
    if ((cfg->tls_cert_path == NULL) != (cfg->tls_key_path == NULL)) return NET_EINVAL;
    net_http *h = tem_calloc(1, sizeof *h);
    if (h == NULL) return NET_ENOMEM;
    h->loop = loop;
    h->cfg = *cfg;
    snprintf(h->listen_addr, sizeof h->listen_addr, "%s", cfg->listen);
    h->cfg.listen = h->listen_addr;
    if (h->cfg.body_bytes_max == 0) h->cfg.body_bytes_max = NET_HTTP_BODY_BYTES_MAX_DEFAULT;
    if (h->cfg.conns_max == 0) h->cfg.conns_max = 1024;
    if (h->cfg.idle_timeout_ms == 0) h->cfg.idle_timeout_ms = 10000;
    if (h->cfg.rate_burst_ms == 0) h->cfg.rate_burst_ms = 1000;
    if (h->cfg.clients_max == 0) h->cfg.clients_max = 4096;
    if (h->cfg.conns_per_addr_max == 0) h->cfg.conns_per_addr_max = NET_HTTP_CONNS_PER_ADDR_DEFAULT;
    if (h->cfg.request_timeout_ms == 0) h->cfg.request_timeout_ms = NET_HTTP_REQUEST_TIMEOUT_MS_DEFAULT;
    if (h->cfg.rate_reqs_per_s > (1ull << 32) || h->cfg.rate_burst_ms > 3600000 || h->cfg.clients_max > (1u << 24)) {
        tem_free(h);
        return NET_EINVAL;
    }
    if (h->cfg.rate_reqs_per_s) {
        h->clients = tem_calloc(h->cfg.clients_max, sizeof *h->clients);
        if (h->clients == NULL) {
            tem_free(h);
            return NET_ENOMEM;
        }
    }
    if (cfg->tls_cert_path) {
        int rc = tls_setup(h);
        if (rc != NET_OK) {
            if (h->ssl) SSL_CTX_free(h->ssl);
            tem_free(h->clients);
            tem_free(h);
            return rc;
        }
    }
    h2o_config_init(&h->conf);
    h->conf_inited = true;
    h->conf.max_request_entity_size = h->cfg.body_bytes_max;
    h->conf.http1.req_timeout = h->cfg.idle_timeout_ms;
    h->conf.server_name = h2o_iovec_init(H2O_STRLIT("tem"));
    h->conf.http1.upgrade_to_http2 = 0; /* HTTP/1.1 only: one protocol to reason about */
    h2o_hostconf_t *host = h2o_config_register_host(&h->conf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *pc = h2o_config_register_path(host, "/", 0);
    net__handler *hd = (net__handler *)h2o_create_handler(pc, sizeof *hd);
    hd->super.on_req = on_req;
    hd->h = h;
    *out = h;
    return NET_OK;
}

int net_http_route(net_http *h, const char *method, const char *prefix, net_http_handler_fn fn, void *ctx) {
    if (h == NULL || prefix == NULL || fn == NULL || prefix[0] != '/') return NET_EINVAL;
    if (h->started) return NET_ESTATE;
    if (h->routes_n >= NET_HTTP_ROUTES_MAX) return NET_EFULL;
    size_t pl = strlen(prefix);
    if (pl >= NET_HTTP_PREFIX_MAX || (method && strlen(method) >= sizeof h->routes[0].method)) return NET_EINVAL;
    net__route *rt = &h->routes[h->routes_n++];
    snprintf(rt->method, sizeof rt->method, "%s", method ? method : "");
    memcpy(rt->prefix, prefix, pl + 1);
    rt->prefix_len = pl;
    rt->fn = fn;
    rt->ctx = ctx;
    return NET_OK;
}

static void on_handle_closed(uv_handle_t *handle) {
    net_http *h = handle->data;
    TEM_ASSERT(h->handles_open > 0);
    h->handles_open--;
}

int net_http_start(net_http *h) {
    if (h == NULL) return NET_EINVAL;
    if (h->started || h->closing) return NET_ESTATE;
    h->started = true;
    /* A client that leaves while its answer (a stream above all) is written must cost an EPIPE
     * that H2O handles, not a SIGPIPE that kills the node. */
    (void)signal(SIGPIPE, SIG_IGN);
    char host[128];
    uint16_t port;
    if (net_addr_split(h->listen_addr, host, sizeof host, &port) != NET_OK) return NET_EADDR;
    struct sockaddr_storage ss;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0)
        return NET_EADDR;
    h2o_context_init(&h->ctx, h->loop, &h->conf);
    h->ctx_inited = true;
    h->accept_ctx.ctx = &h->ctx;
    h->accept_ctx.hosts = h->conf.hosts;
    h->accept_ctx.ssl_ctx = h->ssl;
    int rc = uv_tcp_init(h->loop, &h->listener);
    if (rc != 0) {
        hlog(h, NET_LOG_ERROR, "uv_tcp_init: %s", net_uv_error(rc));
        return NET_EUV;
    }
    h->listener.data = h;
    h->handles_open++;
    h->listening = true;
    /* A backlog as deep as the connection table: when meters reconnect all at once (after an
     * outage, or a load generator opening its connections) while the loop is busy, a shallower
     * queue drops their SYNs and each waits out TCP's 1, 3, 7 s retries. The kernel caps it at
     * net.core.somaxconn. */
    int backlog = h->cfg.conns_max > INT_MAX ? INT_MAX : (int)h->cfg.conns_max;
    if ((rc = uv_tcp_bind(&h->listener, (struct sockaddr *)&ss, 0)) != 0 ||
        (rc = uv_listen((uv_stream_t *)&h->listener, backlog, on_accept)) != 0) {
        hlog(h, NET_LOG_ERROR, "listen on %s: %s", h->listen_addr, net_uv_error(rc));
        return NET_EUV;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    if ((rc = uv_tcp_getsockname(&h->listener, (struct sockaddr *)&bound, &blen)) != 0) {
        hlog(h, NET_LOG_ERROR, "getsockname: %s", net_uv_error(rc));
        return NET_EUV;
    }
    h->port = ntohs(bound.ss_family == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port
                                               : ((struct sockaddr_in6 *)&bound)->sin6_port);
    if ((rc = uv_timer_init(h->loop, &h->sweep)) != 0) {
        hlog(h, NET_LOG_ERROR, "sweep timer: %s", net_uv_error(rc));
        return NET_EUV;
    }
    h->sweep.data = h;
    h->handles_open++;
    h->sweep_on = true;
    if ((rc = uv_timer_start(&h->sweep, on_sweep, SWEEP_MS, SWEEP_MS)) != 0) {
        hlog(h, NET_LOG_ERROR, "sweep timer: %s", net_uv_error(rc));
        return NET_EUV;
    }
    hlog(h, NET_LOG_INFO, "HTTP%s listening on %s (port %u)", h->ssl ? "S" : "", h->listen_addr, h->port);
    return NET_OK;
}

uint16_t net_http_port(const net_http *h) { return h ? h->port : 0; }
uint64_t net_http_requests_served(const net_http *h) { return h->served; }
uint64_t net_http_requests_limited(const net_http *h) { return h->limited; }
uint64_t net_http_conns_refused(const net_http *h) { return h->refused_conns; }
uint64_t net_http_conns_timed_out(const net_http *h) { return h->timed_out; }
uint32_t net_http_pending(const net_http *h) { return h->n_pending; }

/* Makes H2O see end-of-input on every client socket: an idle keep-alive connection closes at
 * once, a busy one after its response (shutdown_requested turns keep-alive off). After the
 * grace period, writes are cut too. */
static void shut_socks(net_http *h, int how) {
    for (net__hsock *s = h->socks; s; s = s->next) {
        uv_os_fd_t fd;
        if (uv_fileno((uv_handle_t *)&s->tcp, &fd) == 0) (void)shutdown(fd, how);
    }
}

static void on_drain(uv_timer_t *t) {
    net_http *h = t->data;
    uint64_t waited = uv_now(h->loop) - h->close_started_ms;
    if (h->socks != NULL) {
        if (waited >= 2000) shut_socks(h, SHUT_RDWR);
        return;
    }
    if (h->listening) return;
    if (h->ctx_inited) {
        h2o_context_dispose(&h->ctx);
        h->ctx_inited = false;
    }
    uv_timer_stop(&h->drain);
    uv_close((uv_handle_t *)&h->drain, on_handle_closed);
    h->drain_on = false;
}

static void on_listener_closed(uv_handle_t *handle) {
    net_http *h = handle->data;
    h->listening = false;
    on_handle_closed(handle);
}

static void streams_close_all(net_http *h);

void net_http_close(net_http *h) {
    if (h == NULL || h->closing) return;
    h->closing = true;
    h->close_started_ms = uv_now(h->loop);
    if (h->listening) uv_close((uv_handle_t *)&h->listener, on_listener_closed);
    if (h->sweep_on) {
        uv_timer_stop(&h->sweep);
        uv_close((uv_handle_t *)&h->sweep, on_handle_closed);
        h->sweep_on = false;
    }
    for (net__rsock *r = h->refused; r; r = r->next) refused_close(r);
    if (!h->ctx_inited) return;
    /* Only the flag, not h2o_context_request_shutdown: that also arms HTTP/2's graceful GOAWAY
     * timer, which we never need (HTTP/1.1 only) and which would outlive the context. The flag
     * makes H2O answer "connection: close" from now on. */
    h->ctx.shutdown_requested = 1;
    /* Answer what is still waiting and detach the handles: the node still owns them and its
     * late reply gets NET_EGONE instead of touching this server. */
    while (h->pending) {
        net_http_req *r = h->pending;
        if (r->req) {
            *r->guard = NULL;
            send_error_raw(r->req, 503, "ECLOSING", "server is shutting down");
            r->req = NULL;
            r->guard = NULL;
        }
        r->s = NULL;
        pending_unlink(r);
    }
    streams_close_all(h);
    shut_socks(h, SHUT_RD);
    int rc = uv_timer_init(h->loop, &h->drain);
    if (rc == 0) {
        h->drain.data = h;
        h->handles_open++;
        h->drain_on = true;
        rc = uv_timer_start(&h->drain, on_drain, 1, 5);
    }
    if (rc != 0) hlog(h, NET_LOG_ERROR, "drain timer: %s", net_uv_error(rc));
}

bool net_http_is_closed(const net_http *h) {
    return h->handles_open == 0 && !h->ctx_inited && h->socks == NULL && h->refused == NULL;
}

void net_http_free(net_http *h) {
    if (h == NULL) return;
    TEM_ASSERT(!h->ctx_inited);
    TEM_ASSERT(h->handles_open == 0);
    TEM_ASSERT(h->n_streams == 0);
    if (h->conf_inited) h2o_config_dispose(&h->conf);
    if (h->ssl) SSL_CTX_free(h->ssl);
    tem_free(h->clients);
    tem_free(h);
}

/* ------------------------------------------------------------------ streamed answers
 * H2O's generator protocol: after h2o_send(IN_PROGRESS) the buffers must stay untouched until
 * H2O calls proceed; only then may the next h2o_send run. So a stream has two buffers: `q`
 * collects what the owner writes, `out` is what H2O is sending. Neither lives in the request's
 * pool, which would grow for as long as the stream is open. The owner bounds `q`; `out` holds
 * at most one chunk. */
struct net__stream {
    h2o_generator_t gen; /* first: H2O hands proceed and stop this pointer */
    net_http *h;
    net_http_req *r;
    net_http_stream_fn fn; /* NULL once the owner ended the stream */
    void *ctx;
    char *q, *out;
    size_t qlen, qcap, outcap, outlen;
    bool told_gone; /* the owner has had NET_HTTP_STREAM_GONE */
    bool sending; /* an IN_PROGRESS send is outstanding: wait for proceed or stop */
    bool ended;   /* the owner called net_http_stream_end */
    net__stream *prev, *next;
};

static void stream_free(net__stream *s) {
    net_http *h = s->h;
    if (s->prev) s->prev->next = s->next;
    else h->streams = s->next;
    if (s->next) s->next->prev = s->prev;
    TEM_ASSERT(h->n_streams > 0);
    h->n_streams--;
    tem_free(s->q);
    tem_free(s->out);
    tem_free(s->r);
    tem_free(s);
}

/* Detaches the request from the stream; later writes get NET_EGONE. */
static void stream_detach(net__stream *s) {
    if (s->r->guard) *s->r->guard = NULL;
    s->r->guard = NULL;
    s->r->req = NULL;
}

/* Sends what is queued with the final chunk. The bytes are copied into the request's pool,
 * which H2O keeps until the response is written. */
static void stream_final(net__stream *s) {
    h2o_req_t *req = s->r->req;
    TEM_ASSERT(req != NULL);
    TEM_ASSERT(!s->sending);
    stream_detach(s);
    h2o_iovec_t b = h2o_strdup(&req->pool, s->qlen ? s->q : "", s->qlen);
    size_t n = s->qlen ? 1 : 0;
    s->qlen = 0;
    h2o_send(req, &b, n, H2O_SEND_STATE_FINAL);
}

/* Hands at most STREAM_CHUNK_BYTES to H2O at a time, so what is in flight stays small and a
 * discard (net_http_stream_discard) can still drop most of a slow client's backlog. */
#define STREAM_CHUNK_BYTES (64u << 10)

static void stream_flush(net__stream *s) {
    if (s->sending || s->qlen == 0 || s->r->req == NULL) return;
    if (s->out == NULL) {
        s->out = tem_malloc(STREAM_CHUNK_BYTES);
        if (s->out == NULL) return; /* retried at the next write or proceed */
        s->outcap = STREAM_CHUNK_BYTES;
    }
    size_t n = s->qlen < STREAM_CHUNK_BYTES ? s->qlen : STREAM_CHUNK_BYTES;
    memcpy(s->out, s->q, n);
    memmove(s->q, s->q + n, s->qlen - n);
    s->qlen -= n;
    s->outlen = n;
    h2o_iovec_t b = h2o_iovec_init(s->out, n);
    s->sending = true;
    h2o_send(s->r->req, &b, 1, H2O_SEND_STATE_IN_PROGRESS);
}

static void stream_proceed(h2o_generator_t *g, h2o_req_t *req) {
    (void)req;
    net__stream *s = (net__stream *)g;
    s->sending = false;
    if (s->ended || s->h->closing) {
        if (s->r->req) stream_final(s);
        if (s->ended) stream_free(s);
        return;
    }
    if (s->qlen) {
        stream_flush(s);
        return;
    }
    /* May write (flushing at once) or end, which may free s: nothing touches s after. */
    s->fn(s->ctx, s->r, NET_HTTP_STREAM_DRAINED);
}

static void stream_stop(h2o_generator_t *g, h2o_req_t *req) {
    (void)req;
    net__stream *s = (net__stream *)g;
    /* H2O is disposing the request (client gone or connection torn down). */
    stream_detach(s);
    s->sending = false;
    if (s->ended) {
        stream_free(s);
        return;
    }
    if (s->told_gone) return;
    s->told_gone = true;
    s->fn(s->ctx, s->r, NET_HTTP_STREAM_GONE);
}

int net_http_stream_start(net_http_req *r, int status, const char *content_type, net_http_stream_fn fn, void *ctx) {
    if (r == NULL || fn == NULL || r->stream != NULL || status < 200 || status > 299) return NET_EINVAL;
    net_http *h = r->h;
    if (r->req == NULL || h == NULL) {
        pending_unlink(r);
        tem_free(r);
        return NET_EGONE;
    }
    net__stream *s = tem_calloc(1, sizeof *s);
    if (s == NULL) {
        if (net_http_reply_error(r, 503, "ENOMEM", "out of memory") != NET_OK) return NET_ENOMEM;
        return NET_ENOMEM;
    }
    h->served++;
    pending_unlink(r); /* a stream is not a pending answer: close handles it separately */
    s->h = h;
    s->r = r;
    s->fn = fn;
    s->ctx = ctx;
    s->gen.proceed = stream_proceed;
    s->gen.stop = stream_stop;
    r->stream = s;
    s->next = h->streams;
    if (h->streams) h->streams->prev = s;
    h->streams = s;
    h->n_streams++;
    h2o_req_t *req = r->req;
    req->res.status = status;
    req->res.reason = reason_of(status);
    if (content_type && *content_type)
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, content_type, strlen(content_type));
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CACHE_CONTROL, NULL, H2O_STRLIT("no-store"));
    h2o_start_response(req, &s->gen);
    return NET_OK;
}

int net_http_stream_write(net_http_req *r, const void *data, size_t len) {
    if (r == NULL || r->stream == NULL || r->stream->ended || (data == NULL && len > 0)) return NET_EINVAL;
    net__stream *s = r->stream;
    if (r->req == NULL) return NET_EGONE;
    if (len == 0) return NET_OK;
    if (s->qlen + len > s->qcap) {
        size_t cap = s->qcap ? s->qcap : 4096;
        while (cap < s->qlen + len) cap *= 2;
        char *nq = tem_realloc(s->q, cap);
        if (nq == NULL) return NET_ENOMEM;
        s->q = nq;
        s->qcap = cap;
    }
    memcpy(s->q + s->qlen, data, len);
    s->qlen += len;
    stream_flush(s);
    return NET_OK;
}

size_t net_http_stream_queued(const net_http_req *r) {
    if (r == NULL || r->stream == NULL) return 0;
    const net__stream *s = r->stream;
    /* `out` is being sent: count it as still queued until H2O is done with it. */
    return s->qlen + (s->sending ? s->outlen : 0);
}

void net_http_stream_discard(net_http_req *r) {
    if (r != NULL && r->stream != NULL) r->stream->qlen = 0;
}

void net_http_stream_end(net_http_req *r) {
    if (r == NULL || r->stream == NULL || r->stream->ended) return;
    net__stream *s = r->stream;
    s->ended = true;
    s->fn = NULL;
    if (s->sending) return; /* proceed or stop finishes and frees it */
    if (r->req) stream_final(s);
    stream_free(s);
}

uint32_t net_http_streams(const net_http *h) { return h ? h->n_streams : 0; }

/* Server closing: end every stream the way a finished response ends, and tell each owner
 * (which then calls net_http_stream_end). */
static void streams_close_all(net_http *h) {
    net__stream *s = h->streams;
    while (s) {
        net__stream *next = s->next;
        if (!s->ended) {
            if (s->r->req && !s->sending) stream_final(s);
            /* A stream with a send in flight is finished in proceed (h->closing) or stop. */
            s->told_gone = true;
            s->fn(s->ctx, s->r, NET_HTTP_STREAM_GONE);
        }
        s = next;
    }
}
