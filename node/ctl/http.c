/* http.c: temctl's HTTP client of a node, on libcurl, and the tolerant readers of the node's
 * JSON API. Every JSON field the tools read from a node is named in this file only. */
#include "node/ctl/http.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdlib.h>
#include <time.h>

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
    else if (strncmp(url, "https://", 8) == 0) {
        url += 8;
        c->tls = true;
    }
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
    if (c->curl) curl_easy_cleanup(c->curl);
    c->curl = NULL;
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

/* libcurl's global init is not thread-safe before 7.84; temctl is single-threaded and calls it
 * once, on the first request. */
static bool curl_ready(void) {
    static int state; /* 0 not yet, 1 ok, -1 failed */
    if (!state) state = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 1 : -1;
    return state == 1;
}

typedef struct {
    ctl_http_resp *o;
    bool oversize, oom;
} body_sink;

static size_t on_body(char *data, size_t size, size_t nmemb, void *ctx) {
    body_sink *b = ctx;
    size_t n = size * nmemb;
    if (n > CTL_HTTP_BODY_BYTES_MAX || b->o->len + n > CTL_HTTP_BODY_BYTES_MAX) {
        b->oversize = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    char *nb = tem_realloc(b->o->body, b->o->len + n + 1);
    if (!nb) {
        b->oom = true;
        return 0;
    }
    b->o->body = nb;
    memcpy(nb + b->o->len, data, n);
    b->o->len += n;
    nb[b->o->len] = 0;
    return n;
}

static const char *curl_reason(CURLcode rc) {
    switch (rc) {
    case CURLE_COULDNT_CONNECT: return "connection refused";
    case CURLE_COULDNT_RESOLVE_HOST: return "cannot resolve host";
    case CURLE_OPERATION_TIMEDOUT: return "no response (timeout)";
    case CURLE_GOT_NOTHING: return "no response (closed)";
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE: return "malformed or truncated response";
    default: return NULL;
    }
}

int ctl_http_request(ctl_http_conn *c, const char *method, const char *path, const char *ctype,
                     const void *body, size_t len, ctl_http_resp *out) {
    memset(out, 0, sizeof *out);
    if (!curl_ready()) return fail(c, "libcurl initialisation failed");
    if (!c->curl && !(c->curl = curl_easy_init())) return fail(c, "out of memory");
    CURL *h = c->curl;
    char url[512], hdr[160];
    int ul = snprintf(url, sizeof url, "%s://%s:%u%s", c->tls ? "https" : "http", c->host, c->port, path);
    if (ul < 0 || (size_t)ul >= sizeof url) return fail(c, "request line too long");
    if (!(out->body = tem_malloc(1))) return fail(c, "out of memory");
    out->body[0] = 0;
    body_sink sink = {.o = out};
    struct curl_slist *hs = NULL, *t;
    snprintf(hdr, sizeof hdr, "Content-Type: %s", ctype ? ctype : "");
    /* An empty "Expect:" stops libcurl from waiting for 100-continue on larger bodies. */
    if (!(t = curl_slist_append(hs, "Expect:")) || !(hs = t, t = curl_slist_append(hs, ctype ? hdr : "Content-Type:"))) {
        curl_slist_free_all(hs);
        ctl_http_resp_free(out);
        return fail(c, "out of memory");
    }
    hs = t;
    curl_easy_reset(h);
    bool post = strcmp(method, "POST") == 0 || len > 0;
    CURLcode rc = CURLE_OK;
#define SETOPT(opt, val) \
    if (rc == CURLE_OK) rc = curl_easy_setopt(h, opt, val)
    SETOPT(CURLOPT_URL, url);
    SETOPT(CURLOPT_USERAGENT, "temctl");
    SETOPT(CURLOPT_HTTPHEADER, hs);
    SETOPT(CURLOPT_WRITEFUNCTION, on_body);
    SETOPT(CURLOPT_WRITEDATA, &sink);
    SETOPT(CURLOPT_CONNECTTIMEOUT_MS, (long)c->timeout_ms);
    SETOPT(CURLOPT_TIMEOUT_MS, (long)c->timeout_ms);
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_TCP_NODELAY, 1L);
    SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
    if (getenv("TEMCTL_CA_FILE")) SETOPT(CURLOPT_CAINFO, getenv("TEMCTL_CA_FILE"));
    if (post) {
        SETOPT(CURLOPT_POST, 1L);
        SETOPT(CURLOPT_POSTFIELDS, len ? body : "");
        SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        if (strcmp(method, "POST") != 0) SETOPT(CURLOPT_CUSTOMREQUEST, method);
    } else if (strcmp(method, "HEAD") == 0) {
        SETOPT(CURLOPT_NOBODY, 1L);
    } else if (strcmp(method, "GET") != 0) {
        SETOPT(CURLOPT_CUSTOMREQUEST, method);
    }
#undef SETOPT
    if (rc == CURLE_OK) rc = curl_easy_perform(h);
    curl_slist_free_all(hs);
    if (rc != CURLE_OK) {
        ctl_http_resp_free(out);
        out->status = 0;
        const char *why = sink.oversize ? "malformed or oversize response (body over the limit)"
                          : sink.oom    ? "out of memory"
                                        : curl_reason(rc);
        char msg[160];
        snprintf(msg, sizeof msg, "%s (%s)", why ? why : curl_easy_strerror(rc), curl_easy_strerror(rc));
        return fail(c, msg);
    }
    long status = 0;
    curl_socket_t sock = CURL_SOCKET_BAD;
    (void)curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    out->status = (int)status;
    /* libcurl keeps the connection in the handle's cache unless the server closed it. */
    if (curl_easy_getinfo(h, CURLINFO_ACTIVESOCKET, &sock) != CURLE_OK) sock = CURL_SOCKET_BAD;
    c->fd = sock == CURL_SOCKET_BAD ? -1 : (int)sock;
    return 0;
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
