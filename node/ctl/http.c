/* testnet_http.c: the blocking HTTP/1.1 keep-alive client of temctl sim/testnet (why not H2O's
 * client: node/sim/testnet.h) and the tolerant readers of the node's JSON API. Every JSON field the
 * tools read from a node is named in this file only. */
#include "node/ctl/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int64_t ctl_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void ctl_sleep_until(int64_t until_ms, volatile sig_atomic_t *stop) {
    for (;;) {
        if (stop && *stop) return;
        int64_t left = until_ms - ctl_now_ms();
        if (left <= 0) return;
        if (left > 50) left = 50;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)left * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* ------------------------------------------------------------------ connection */
int ctl_http_init(ctl_http_conn *c, const char *url, int timeout_ms) {
    memset(c, 0, sizeof *c);
    c->fd = -1;
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : 5000;
    if (strncmp(url, "http://", 7) == 0) url += 7;
    const char *colon = strrchr(url, ':');
    if (!colon || colon == url || (size_t)(colon - url) >= sizeof c->host) {
        snprintf(c->err, sizeof c->err, "not host:port: %s", url);
        return -1;
    }
    memcpy(c->host, url, (size_t)(colon - url));
    c->host[colon - url] = 0;
    char *end;
    errno = 0;
    unsigned long p = strtoul(colon + 1, &end, 10);
    if (errno || p == 0 || p > 65535 || (*end && strcmp(end, "/") != 0)) {
        snprintf(c->err, sizeof c->err, "bad port in %s", url);
        return -1;
    }
    c->port = (uint16_t)p;
    return 0;
}

void ctl_http_close(ctl_http_conn *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

void ctl_http_resp_free(ctl_http_resp *r) {
    tem_free(r->body);
    r->body = NULL;
    r->len = 0;
}

static int fail(ctl_http_conn *c, const char *what) {
    snprintf(c->err, sizeof c->err, "%s:%u: %s", c->host, c->port, what);
    ctl_http_close(c);
    return -1;
}

static int wait_fd(ctl_http_conn *c, short ev) {
    struct pollfd p = {.fd = c->fd, .events = ev};
    int r;
    do r = poll(&p, 1, c->timeout_ms);
    while (r < 0 && errno == EINTR);
    return r > 0 ? 0 : -1;
}

static int conn_open(ctl_http_conn *c) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    char port[8];
    snprintf(port, sizeof port, "%u", c->port);
    if (getaddrinfo(c->host, port, &hints, &ai) != 0 || !ai) return fail(c, "cannot resolve host");
    c->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (c->fd < 0) {
        freeaddrinfo(ai);
        return fail(c, "socket failed");
    }
    int r = connect(c->fd, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    if (r != 0 && errno != EINPROGRESS) return fail(c, "connection refused");
    if (r != 0) {
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (wait_fd(c, POLLOUT) != 0) return fail(c, "connect timed out");
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0)
            return fail(c, "connection refused");
    }
    int one = 1;
    (void)setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return 0;
}

static int send_all(ctl_http_conn *c, const void *buf, size_t len) {
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t w = send(c->fd, p, len, MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(c, POLLOUT) != 0) return -1;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Buffered reader over the socket for one response. */
typedef struct {
    ctl_http_conn *c;
    uint8_t buf[8192];
    size_t pos, len;
} reader;

static int rd_fill(reader *r) {
    for (;;) {
        ssize_t n = recv(r->c->fd, r->buf, sizeof r->buf, 0);
        if (n > 0) {
            r->pos = 0;
            r->len = (size_t)n;
            return 0;
        }
        if (n == 0) return -1;
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
        if (wait_fd(r->c, POLLIN) != 0) return -1;
    }
}

/* A line without its CRLF into out (NUL-terminated). -1 on EOF or a line over max. */
static int rd_line(reader *r, char *out, size_t max) {
    size_t n = 0;
    for (;;) {
        if (r->pos == r->len && rd_fill(r) != 0) return -1;
        char ch = (char)r->buf[r->pos++];
        if (ch == '\n') break;
        if (n + 1 >= max) return -1;
        out[n++] = ch;
    }
    if (n > 0 && out[n - 1] == '\r') n--;
    out[n] = 0;
    return 0;
}

static int rd_bytes(reader *r, char *out, size_t n) {
    while (n > 0) {
        if (r->pos == r->len && rd_fill(r) != 0) return -1;
        size_t k = r->len - r->pos < n ? r->len - r->pos : n;
        memcpy(out, r->buf + r->pos, k);
        r->pos += k;
        out += k;
        n -= k;
    }
    return 0;
}

static int body_grow(ctl_http_resp *o, size_t add) {
    if (add > CTL_HTTP_BODY_BYTES_MAX || o->len + add > CTL_HTTP_BODY_BYTES_MAX) return -1;
    char *nb = tem_realloc(o->body, o->len + add + 1);
    if (!nb) return -1;
    o->body = nb;
    return 0;
}

static int read_response(ctl_http_conn *c, const char *method, ctl_http_resp *o, bool *keep) {
    reader r = {.c = c};
    char line[CTL_HTTP_HEADER_BYTES_MAX];
    if (rd_line(&r, line, sizeof line) != 0) return -2; /* nothing came back: maybe a stale conn */
    int major, minor, status;
    if (sscanf(line, "HTTP/%d.%d %d", &major, &minor, &status) != 3 || status < 100 || status > 999)
        return -1;
    *keep = !(major == 1 && minor == 0);
    long long clen = -1;
    bool chunked = false;
    size_t hbytes = 0;
    for (;;) {
        if (rd_line(&r, line, sizeof line) != 0) return -1;
        hbytes += strlen(line) + 2;
        if (hbytes > CTL_HTTP_HEADER_BYTES_MAX) return -1;
        if (!line[0]) break;
        char *colon = strchr(line, ':');
        if (!colon) return -1;
        *colon = 0;
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t') v++;
        if (strcasecmp(line, "content-length") == 0) {
            char *end;
            errno = 0;
            clen = strtoll(v, &end, 10);
            if (errno || clen < 0 || *end) return -1;
        } else if (strcasecmp(line, "transfer-encoding") == 0 && strcasestr(v, "chunked")) {
            chunked = true;
        } else if (strcasecmp(line, "connection") == 0) {
            if (strcasestr(v, "close")) *keep = false;
            else if (strcasestr(v, "keep-alive")) *keep = true;
        }
    }
    o->status = status;
    o->body = tem_malloc(1);
    o->len = 0;
    if (!o->body) return -1;
    bool no_body = strcmp(method, "HEAD") == 0 || status == 204 || status == 304 || status < 200;
    if (no_body) {
    } else if (chunked) {
        for (;;) {
            if (rd_line(&r, line, sizeof line) != 0) return -1;
            char *end;
            errno = 0;
            unsigned long long n = strtoull(line, &end, 16);
            if (errno || end == line) return -1;
            if (n == 0) {
                do if (rd_line(&r, line, sizeof line) != 0) return -1;
                while (line[0]); /* trailers */
                break;
            }
            if (body_grow(o, (size_t)n) != 0 || rd_bytes(&r, o->body + o->len, (size_t)n) != 0) return -1;
            o->len += (size_t)n;
            if (rd_line(&r, line, sizeof line) != 0 || line[0]) return -1;
        }
    } else if (clen >= 0) {
        if (body_grow(o, (size_t)clen) != 0 || rd_bytes(&r, o->body, (size_t)clen) != 0) return -1;
        o->len = (size_t)clen;
    } else {
        /* No length: the body runs to the end of the connection. */
        *keep = false;
        for (;;) {
            if (r.pos == r.len && rd_fill(&r) != 0) break;
            size_t k = r.len - r.pos;
            if (body_grow(o, k) != 0) return -1;
            memcpy(o->body + o->len, r.buf + r.pos, k);
            o->len += k;
            r.pos = r.len;
        }
    }
    o->body[o->len] = 0;
    return 0;
}

int ctl_http_request(ctl_http_conn *c, const char *method, const char *path, const char *ctype,
                     const void *body, size_t len, ctl_http_resp *out) {
    memset(out, 0, sizeof *out);
    char head[1024];
    int hl = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: %s:%u\r\nUser-Agent: temctl\r\nAccept: */*\r\n"
                      "%s%s%sContent-Length: %zu\r\n\r\n",
                      method, path, c->host, c->port, ctype ? "Content-Type: " : "", ctype ? ctype : "",
                      ctype ? "\r\n" : "", len);
    if (hl < 0 || (size_t)hl >= sizeof head) return fail(c, "request line too long");
    for (int attempt = 0; attempt < 2; attempt++) {
        bool reused = c->fd >= 0;
        if (!reused && conn_open(c) != 0) return -1;
        if (send_all(c, head, (size_t)hl) != 0 || (len && send_all(c, body, len) != 0)) {
            ctl_http_close(c);
            if (reused) continue; /* the server closed an idle keep-alive connection */
            return fail(c, "send failed");
        }
        bool keep = true;
        int r = read_response(c, method, out, &keep);
        if (r == 0) {
            if (!keep) ctl_http_close(c);
            return 0;
        }
        ctl_http_resp_free(out);
        out->status = 0;
        ctl_http_close(c);
        if (r == -2 && reused) continue;
        return fail(c, r == -2 ? "no response (timeout or closed)" : "malformed or oversize response");
    }
    return fail(c, "connection lost");
}

/* ------------------------------------------------------------------ JSON readers */
json_t *ctl_api_get(ctl_http_conn *c, const char *path, int *status) {
    ctl_http_resp r;
    *status = 0;
    if (ctl_http_request(c, "GET", path, NULL, NULL, 0, &r) != 0) return NULL;
    *status = r.status;
    json_error_t je;
    json_t *j = json_loadb(r.body, r.len, 0, &je);
    ctl_http_resp_free(&r);
    return j;
}

static const json_t *first_of(const json_t *obj, const char *const *names) {
    if (!json_is_object(obj)) return NULL;
    for (; *names; names++) {
        const json_t *v = json_object_get(obj, *names);
        if (v && !json_is_null(v)) return v;
    }
    return NULL;
}

int64_t ctl_json_i64(const json_t *obj, const char *const *names, int64_t dflt) {
    const json_t *v = first_of(obj, names);
    if (json_is_integer(v)) return (int64_t)json_integer_value(v);
    if (json_is_real(v)) return (int64_t)json_real_value(v);
    if (json_is_true(v)) return 1;
    if (json_is_false(v)) return 0;
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end;
        errno = 0;
        long long x = strtoll(s, &end, 10);
        if (!errno && *s && !*end) return x;
    }
    return dflt;
}

const char *ctl_json_str(const json_t *obj, const char *const *names) {
    const json_t *v = first_of(obj, names);
    return json_is_string(v) ? json_string_value(v) : "";
}

json_t *ctl_json_arr(const json_t *obj, const char *const *names) {
    const json_t *v = first_of(obj, names);
    return json_is_array(v) ? (json_t *)v : NULL;
}

#define NAMES(...) ((const char *const[]){__VA_ARGS__, NULL})

int ctl_api_submit(ctl_http_conn *c, const uint8_t *tx, size_t len, char *err, size_t errlen) {
    ctl_http_resp r;
    if (err && errlen) err[0] = 0;
    if (ctl_http_request(c, "POST", "/v1/tx", "application/x-protobuf", tx, len, &r) != 0) {
        if (err) snprintf(err, errlen, "%s", c->err);
        return -1;
    }
    int st = r.status;
    if (st != 202 && st != 200 && err) {
        json_t *j = json_loadb(r.body, r.len, 0, NULL);
        const char *code = ctl_json_str(j, NAMES("code", "error"));
        snprintf(err, errlen, "%s", *code ? code : "http error");
        json_decref(j);
    }
    ctl_http_resp_free(&r);
    return st == 200 ? 202 : st;
}

static void copy_str(char *dst, size_t n, const char *s) { snprintf(dst, n, "%s", s ? s : ""); }

int ctl_api_status_get(ctl_http_conn *c, ctl_api_status *out) {
    int st;
    json_t *j = ctl_api_get(c, "/v1/status", &st);
    memset(out, 0, sizeof *out);
    if (!j || st != 200) {
        json_decref(j);
        return -1;
    }
    out->height = (uint64_t)ctl_json_i64(j, NAMES("height", "last_height"), 0);
    copy_str(out->state_root, sizeof out->state_root, ctl_json_str(j, NAMES("state_root", "app_hash")));
    copy_str(out->last_block_hash, sizeof out->last_block_hash,
             ctl_json_str(j, NAMES("last_block_hash", "block_hash", "last_hash")));
    copy_str(out->chain_id, sizeof out->chain_id, ctl_json_str(j, NAMES("chain_id")));
    json_decref(j);
    return 0;
}

static void read_fills(const json_t *rc, ctl_api_tx *out) {
    json_t *fills = ctl_json_arr(rc, NAMES("fills"));
    size_t i;
    json_t *f;
    json_array_foreach(fills, i, f) {
        out->fills++;
        out->filled_wh += (uint64_t)ctl_json_i64(f, NAMES("quantity_wh", "qty_wh"), 0);
        out->curtailed_wh += (uint64_t)ctl_json_i64(f, NAMES("curtailed_wh"), 0);
    }
}

int ctl_api_tx_get(ctl_http_conn *c, const uint8_t txid[32], ctl_api_tx *out) {
    char path[96], hex[65];
    tem_hex(hex, txid, 32);
    snprintf(path, sizeof path, "/v1/tx/%s", hex);
    int st;
    json_t *j = ctl_api_get(c, path, &st);
    memset(out, 0, sizeof *out);
    if (st == 0) return -1;
    const char *s = ctl_json_str(j, NAMES("status"));
    out->status = strcmp(s, "pending") == 0     ? CTL_TX_PENDING
                  : strcmp(s, "committed") == 0 ? CTL_TX_COMMITTED
                  : strcmp(s, "refused") == 0   ? CTL_TX_REFUSED
                                                : CTL_TX_UNKNOWN;
    out->height = (uint64_t)ctl_json_i64(j, NAMES("height"), 0);
    const json_t *rc = first_of(j, NAMES("receipt"));
    if (rc) {
        out->code = ctl_json_i64(rc, NAMES("code"), 0);
        copy_str(out->reason, sizeof out->reason, ctl_json_str(rc, NAMES("reason")));
        out->minted_wh = ctl_json_i64(rc, NAMES("minted_wh"), 0);
        read_fills(rc, out);
        /* A node that reports every stored receipt as "committed" still says why it refused. */
        if (out->status == CTL_TX_COMMITTED && out->code != 0) out->status = CTL_TX_REFUSED;
    }
    json_decref(j);
    return 0;
}

int ctl_api_trades_get(ctl_http_conn *c, uint64_t slot, ctl_api_trade **out, size_t *n) {
    char path[64];
    snprintf(path, sizeof path, "/v1/trades?slot=%llu", (unsigned long long)slot);
    int st;
    json_t *j = ctl_api_get(c, path, &st);
    *out = NULL;
    *n = 0;
    json_t *arr = json_is_array(j) ? j : ctl_json_arr(j, NAMES("trades"));
    if (st != 200 || !arr) {
        json_decref(j);
        return -1;
    }
    size_t cnt = json_array_size(arr), i;
    ctl_api_trade *t = tem_calloc(cnt ? cnt : 1, sizeof *t);
    if (!t) {
        json_decref(j);
        return -1;
    }
    json_t *e;
    json_array_foreach(arr, i, e) {
        t[i].quantity_wh = (uint64_t)ctl_json_i64(e, NAMES("quantity_wh", "qty_wh"), 0);
        t[i].price = (uint64_t)ctl_json_i64(e, NAMES("price", "price_uunit_per_kwh"), 0);
        t[i].curtailed_wh = (uint64_t)ctl_json_i64(e, NAMES("curtailed_wh"), 0);
        /* /v1/trades splits fees by side (the buyer's holds the network fee and its half of the
         * loss charge, the seller's the other half); the report only uses their sum. */
        t[i].network_fee = (uint64_t)ctl_json_i64(e, NAMES("network_fee", "buyer_fee_uunit"), 0);
        t[i].loss_fee = (uint64_t)ctl_json_i64(e, NAMES("loss_fee", "seller_fee_uunit"), 0);
        t[i].height = (uint64_t)ctl_json_i64(e, NAMES("height"), 0);
        copy_str(t[i].binding, sizeof t[i].binding, ctl_json_str(e, NAMES("binding")));
        if (tem_unhex(t[i].buyer, 33, ctl_json_str(e, NAMES("buyer"))) != 0) memset(t[i].buyer, 0, 33);
        if (tem_unhex(t[i].seller, 33, ctl_json_str(e, NAMES("seller"))) != 0) memset(t[i].seller, 0, 33);
    }
    *out = t;
    *n = cnt;
    json_decref(j);
    return 0;
}

int ctl_api_account_get(ctl_http_conn *c, const uint8_t pub[33], ctl_api_account *out) {
    char path[96], hex[67];
    tem_hex(hex, pub, 33);
    snprintf(path, sizeof path, "/v1/accounts/%s", hex);
    int st;
    json_t *j = ctl_api_get(c, path, &st);
    memset(out, 0, sizeof *out);
    if (!j || st != 200) {
        json_decref(j);
        return -1;
    }
    out->money_uunit = ctl_json_i64(j, NAMES("money_uunit", "money"), 0);
    out->escrow_uunit = ctl_json_i64(j, NAMES("escrow_uunit", "money_escrow_uunit"), 0);
    out->tokens_wh = ctl_json_i64(j, NAMES("tokens_wh", "tokens"), 0);
    out->escrow_tokens_wh = ctl_json_i64(j, NAMES("escrow_tokens_wh", "tokens_escrow_wh"), 0);
    out->debt_uunit = ctl_json_i64(j, NAMES("debt_uunit", "debt"), 0);
    out->next_nonce = (uint64_t)ctl_json_i64(j, NAMES("next_nonce", "nonce"), 0);
    json_decref(j);
    return 0;
}

int ctl_api_block_get(ctl_http_conn *c, uint64_t height, uint64_t *time_ms, uint32_t *n_txs,
                      char hash_hex[65]) {
    char path[64];
    snprintf(path, sizeof path, "/v1/blocks/%llu", (unsigned long long)height);
    int st;
    json_t *j = ctl_api_get(c, path, &st);
    if (!j || st != 200) {
        json_decref(j);
        return -1;
    }
    const json_t *h = first_of(j, NAMES("header"));
    if (!h) h = j;
    *time_ms = (uint64_t)ctl_json_i64(h, NAMES("time_ms", "time"), (json_int_t)ctl_json_i64(j, NAMES("time_ms"), 0));
    json_t *txs = ctl_json_arr(j, NAMES("txids", "txs", "transactions"));
    *n_txs = txs ? (uint32_t)json_array_size(txs) : (uint32_t)ctl_json_i64(j, NAMES("n_txs", "tx_count"), 0);
    if (hash_hex) {
        const char *hh = ctl_json_str(j, NAMES("hash", "block_hash"));
        copy_str(hash_hex, 65, hh);
    }
    json_decref(j);
    return 0;
}

int ctl_api_fills_get(ctl_http_conn *c, const uint8_t txid[32], ctl_api_trade **out, size_t *n) {
    char path[96], hex[65];
    tem_hex(hex, txid, 32);
    snprintf(path, sizeof path, "/v1/tx/%s", hex);
    int st;
    json_t *j = ctl_api_get(c, path, &st);
    *out = NULL;
    *n = 0;
    if (!j || st != 200) {
        json_decref(j);
        return -1;
    }
    json_t *fills = ctl_json_arr(first_of(j, NAMES("receipt")), NAMES("fills"));
    size_t cnt = json_array_size(fills), i;
    ctl_api_trade *t = tem_calloc(cnt ? cnt : 1, sizeof *t);
    if (!t) {
        json_decref(j);
        return -1;
    }
    uint64_t height = (uint64_t)ctl_json_i64(j, NAMES("height"), 0);
    json_t *e;
    json_array_foreach(fills, i, e) {
        t[i].quantity_wh = (uint64_t)ctl_json_i64(e, NAMES("quantity_wh", "qty_wh"), 0);
        t[i].price = (uint64_t)ctl_json_i64(e, NAMES("price", "price_uunit_per_kwh"), 0);
        t[i].curtailed_wh = (uint64_t)ctl_json_i64(e, NAMES("curtailed_wh"), 0);
        t[i].network_fee = (uint64_t)ctl_json_i64(e, NAMES("network_fee"), 0);
        t[i].loss_fee = (uint64_t)ctl_json_i64(e, NAMES("loss_fee"), 0);
        t[i].height = height;
        copy_str(t[i].binding, sizeof t[i].binding, ctl_json_str(e, NAMES("binding")));
    }
    *out = t;
    *n = cnt;
    json_decref(j);
    return 0;
}
