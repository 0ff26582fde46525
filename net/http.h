/* http.h: the client-facing HTTP/1.1 server of a node, built on H2O (Debian's libh2o, libuv
 * flavour) running on the node's own uv_loop_t. Routes are (method, path prefix) pairs whose
 * handler answers at once or later through a request handle; bodies over the configured limit
 * get 413, unparsable requests 400 (both from H2O), unknown paths a JSON 404. Optional TLS.
 *
 * Every function runs on the loop thread. Errors are net's NET_E* codes (net/net.h). */
#ifndef NET_HTTP_H
#define NET_HTTP_H

#include "net/net.h"

#define NET_HTTP_ROUTES_MAX 64
#define NET_HTTP_PREFIX_MAX 128
#define NET_HTTP_BODY_BYTES_MAX_DEFAULT (1u << 20)
#define NET_HTTP_CONNS_PER_ADDR_DEFAULT 32
#define NET_HTTP_REQUEST_TIMEOUT_MS_DEFAULT 10000

typedef struct net_http net_http;
/* One request waiting for its answer. Owned by the handler from the moment it is passed in
 * until exactly one net_http_reply* call, which always frees it (also when it returns
 * NET_EGONE because the client or the server went away). */
typedef struct net_http_req net_http_req;

/* What a handler sees. All strings are NUL-terminated and, like `body`, valid only during the
 * handler call: copy what an asynchronous answer needs. */
typedef struct {
    const char *method;       /* "GET", "POST", ... */
    const char *path;         /* as sent, without the query: "/v1/tx/ab12" */
    const char *query;        /* after '?', "" if none: "slot=12" */
    const char *content_type; /* "" if none */
    const char *remote;       /* client IP address ("127.0.0.1"), for per-client limits and logs */
    const uint8_t *body;      /* never NULL; body_len may be 0 */
    size_t body_len;
} net_http_request;

typedef void (*net_http_handler_fn)(void *ctx, net_http_req *req, const net_http_request *r);

typedef struct {
    const char *listen;      /* "host:port", numeric host; port 0 picks a free port */
    size_t body_bytes_max;   /* larger bodies get 413; 0 -> NET_HTTP_BODY_BYTES_MAX_DEFAULT */
    /* Open client connections; 0 -> 1024. A connection past it is answered 503 ELIMIT (with
     * Retry-After) and closed. The last quarter of the table only admits addresses holding
     * fewer than conns_per_addr_max / 8 (at least 1) connections: 503 ELIMIT otherwise. */
    uint32_t conns_max;
    /* Connections one client address may hold; 0 -> NET_HTTP_CONNS_PER_ADDR_DEFAULT. Past it:
     * 429 ECONNS with Retry-After, then close. */
    uint32_t conns_per_addr_max;
    /* A request (headers and body) must arrive complete within this of the connection opening
     * or of the previous answer, else the connection is cut; requests waiting for a handler's
     * answer are exempt. Defeats slow and stalled senders. 0 -> 10000. */
    uint64_t request_timeout_ms;
    uint64_t idle_timeout_ms; /* H2O's keep-alive idle / request read timeout; 0 -> 10000 */
    /* Per-client-address token bucket on requests: rate_reqs_per_s refill, rate_burst_ms worth
     * of capacity (0 -> 1000). Over it: 429 {"code":"ERATE"} with Retry-After. 0 = unlimited. The table keeps
     * the clients_max (0 -> 4096) most recently seen addresses. */
    uint64_t rate_reqs_per_s;
    uint64_t rate_burst_ms;
    uint32_t clients_max;
    /* TLS for clients: both paths (PEM) or neither. */
    const char *tls_cert_path;
    const char *tls_key_path;
    net_log_fn log; /* NULL: lines go to stderr */
    void *log_ctx;
    int log_level;
} net_http_config;

/* Allocates a server on `loop`. NET_OK, NET_EINVAL, NET_ETLS (unreadable or mismatched cert or
 * key; the log says which), NET_ENOMEM. */
TEM_WUR int net_http_new(uv_loop_t *loop, const net_http_config *cfg, net_http **out);
/* Adds a route before net_http_start. `method` NULL matches every method. `prefix` matches a
 * path equal to it or continuing with '/' (or any continuation if it ends in '/'); the longest
 * matching prefix wins. A path that matches only routes of other methods gets 405.
 * NET_OK, NET_EINVAL, NET_EFULL (NET_HTTP_ROUTES_MAX), NET_ESTATE (already started). */
TEM_WUR int net_http_route(net_http *h, const char *method, const char *prefix,
                           net_http_handler_fn fn, void *ctx);
/* Binds and listens. NET_OK, NET_EADDR, NET_EUV (logged), NET_ESTATE. */
TEM_WUR int net_http_start(net_http *h);
uint16_t net_http_port(const net_http *h);
/* Requests answered, requests refused by the rate limit, and requests still waiting for an
 * asynchronous answer. */
uint64_t net_http_requests_served(const net_http *h);
uint64_t net_http_requests_limited(const net_http *h);
uint32_t net_http_pending(const net_http *h);
/* Connections refused at accept (table full, per-address cap) and cut for missing the request
 * deadline, since start. */
uint64_t net_http_conns_refused(const net_http *h);
uint64_t net_http_conns_timed_out(const net_http *h);

/* Answers and frees `req`. `body` is copied. NET_OK, NET_EGONE (nothing sent: the client
 * disconnected or the server closed; req is freed anyway), NET_EINVAL (req NULL or status
 * outside 100..599; req is NOT freed). */
TEM_WUR int net_http_reply(net_http_req *req, int status, const char *content_type,
                           const void *body, size_t len);
/* Adds a response header (e.g. Content-Security-Policy) to the answer the next
 * net_http_reply gives; name and value are copied. NET_OK, NET_EGONE (client gone; req still
 * needs its reply), NET_EINVAL (NULL argument or a started stream). */
TEM_WUR int net_http_reply_header(net_http_req *req, const char *name, const char *value);
/* Answers with {"error":message,"code":code}, application/json. Same returns. */
TEM_WUR int net_http_reply_error(net_http_req *req, int status, const char *code,
                                 const char *message);
/* Copies the value of request header `name` (lower case) into out, NUL-terminated. NET_OK,
 * NET_EINVAL when absent, too long for cap, or the client is gone. */
TEM_WUR int net_http_req_header(const net_http_req *req, const char *name, char *out, size_t cap);
/* False once the answer can no longer reach the client. */
bool net_http_req_alive(const net_http_req *req);

/* ------------------------------------------------------------------ streamed answers
 * A handler may answer with a stream (Server-Sent Events) instead of one body: status and
 * headers go out at once, then chunks as the owner writes them, until the owner ends it or the
 * client leaves. Writes never block: bytes wait in a queue owned by the stream, and the owner
 * bounds it (net_http_stream_queued). Everything runs on the loop thread. */
enum {
    NET_HTTP_STREAM_DRAINED = 1, /* every queued byte has been handed to the socket */
    NET_HTTP_STREAM_GONE = 2,    /* the client left or the server is closing: call end */
};
/* Called from inside the server's write path: it may write to or end the stream. */
typedef void (*net_http_stream_fn)(void *ctx, net_http_req *req, int what);

/* Turns req into a stream: sends `status` with content_type (plus Cache-Control: no-store)
 * and starts chunked transfer. From then on req belongs to the stream until
 * net_http_stream_end. NET_OK, NET_EGONE (the client already left; req is freed),
 * NET_EINVAL (req NULL or status outside 200..299; req is NOT freed), NET_ENOMEM (req freed,
 * the client gets nothing). */
TEM_WUR int net_http_stream_start(net_http_req *req, int status, const char *content_type,
                                  net_http_stream_fn fn, void *ctx);
/* Queues a copy of data. NET_OK, NET_EGONE (client gone: end the stream), NET_ENOMEM,
 * NET_EINVAL (not a started stream). */
TEM_WUR int net_http_stream_write(net_http_req *req, const void *data, size_t len);
/* Bytes written but not yet handed to the socket. */
size_t net_http_stream_queued(const net_http_req *req);
/* Forgets queued bytes not yet handed to the socket (the chunk being sent still goes). */
void net_http_stream_discard(net_http_req *req);
/* Sends what is queued (when the client is still there), ends the response and frees req.
 * Call exactly once per started stream, also after NET_HTTP_STREAM_GONE. */
void net_http_stream_end(net_http_req *req);
/* Streams open now. */
uint32_t net_http_streams(const net_http *h);

/* Writes {"error":message,"code":code} (JSON-escaped, NUL-terminated) into out. Returns its
 * length, or NET_EINVAL when it does not fit in cap. */
TEM_WUR int net_json_error(char *out, size_t cap, const char *message, const char *code);

/* Starts closing: the listener, idle connections, and pending requests (answered 503
 * ECLOSING; their handles stay valid until the handler's reply returns NET_EGONE). The loop
 * must run until net_http_is_closed(); free only after uv_run has returned. Idempotent. */
void net_http_close(net_http *h);
bool net_http_is_closed(const net_http *h);
void net_http_free(net_http *h);

#endif
