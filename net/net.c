/* net.c: the peer transport on libuv: the listener, outbound dials with capped exponential
 * backoff, the frame reader, the handshake driver, sealed sends and broadcasts, per-peer token
 * buckets, observer slots, and a shutdown that closes every handle it opened. The protocol
 * itself (handshake, AEAD) lives in hs.c. */
#include "net/net.h"

#include <stdarg.h>
#include <sodium.h>

#define RXBUF_BYTES 65536
/* First allocation for a partial frame; it doubles as bytes arrive, up to the frame's length. */
#define FRAME_CHUNK_BYTES 65536

enum { C_CONNECTING = 1, C_HANDSHAKE, C_OPEN, C_CLOSING };

typedef struct net__conn net__conn;
typedef struct net__peer net__peer;

struct net__peer {
    net *n;
    uint32_t id;
    bool is_validator, in_use, dial;
    uint8_t pk[LEDGER_ED_PUB_BYTES];
    net__conn *conn;    /* the authenticated session, or NULL */
    net__conn *dialing; /* our outbound attempt in progress, or NULL */
    bool resolving;     /* a uv_getaddrinfo for this peer is in flight */
    uv_getaddrinfo_t gai;
    uint64_t next_dial_ms, backoff_ms;
    uint32_t failures;
};

struct net__conn {
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    net *n;
    net__conn *prev, *next;
    int state;
    bool outbound;
    bool awaiting_ack; /* initiator: M3 sent, waiting for the responder's sealed empty frame */
    bool split_done;
    net__peer *target; /* outbound: the validator we dialled */
    net__peer *peer;   /* bound once authenticated */
    uint64_t deadline_ms;
    net_hs hs;
    net_session sess;
    char remote[64];
    char ip[48];  /* remote IP alone, for the per-address handshake cap */
    bool quiet;   /* close logged at debug level (refused floods) */
    bool paused;  /* reading stopped for back-pressure */
    uint64_t last_progress_ms; /* last write completion, or when the queue became non-empty */
    /* frame reader */
    uint8_t hdr[4];
    size_t hdr_got;
    uint8_t *frame;
    uint32_t frame_len, frame_got, frame_cap;
    uint64_t frame_started_ms;
    /* token buckets, in milli-tokens so integer refills stay exact at low rates */
    uint64_t tok_bytes_m, tok_msgs_m, refill_ms;
    uint64_t dropped_since_log;
    uint8_t rxbuf[RXBUF_BYTES];
};

#define NET_HS_RATE_ADDRS 64 /* addresses with a handshake rate of their own at once */

struct net {
    uv_loop_t *loop;
    net_config cfg;
    net_callbacks cb;
    uv_tcp_t listener;
    uv_timer_t tick;
    bool listening, tick_on, started, closing;
    uint32_t handles_open, resolving;
    uint16_t port;
    char listen_addr[128];
    int self_index;
    uint8_t self_pk[LEDGER_ED_PUB_BYTES];
    net__peer validators[LEDGER_VALIDATORS_MAX];
    net__peer *observers;
    net__conn *conns; /* every connection, any state */
    uint32_t n_conns;
    uint8_t (*obs_keys)[LEDGER_ED_PUB_BYTES]; /* listed observer keys (owned copy) */
    char val_ip[LEDGER_VALIDATORS_MAX][48];  /* numeric hosts of the genesis validators, "" if named */
    uint32_t n_obs_keys;
    net_stats stats;
    /* Token buckets (milli-tokens) on new inbound handshakes: per address in a small table whose
     * least recently used entry is reused (an evicted address returns with a full bucket, so
     * the bucket in all is what bounds many addresses), and in all. */
    struct {
        char ip[48];
        uint64_t last_ms, tokens_m;
    } hs_rate[NET_HS_RATE_ADDRS];
    uint64_t hs_last_ms, hs_tokens_m;
    uint64_t hs_logged_ms; /* when a rate refusal was last logged */
};

typedef struct {
    uv_write_t req;
    size_t len;
    uint8_t data[];
} net__wreq;

/* ------------------------------------------------------------------ logging */
__attribute__((format(printf, 3, 4))) static void nlog(net *n, int level, const char *fmt, ...) {
    if (level < n->cfg.log_level) return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n->cb.log != NULL)
        n->cb.log(n->cb.ctx, level, buf);
    else
        fprintf(stderr, "net %s: %s\n", net_log_level_name(level), buf);
}

static void peer_info(const net__conn *c, net_peer_info *out) {
    memset(out, 0, sizeof *out);
    out->id = c->peer ? c->peer->id : NET_PEER_ID_NONE;
    out->is_validator = c->peer ? c->peer->is_validator : false;
    out->outbound = c->outbound;
    if (c->peer) memcpy(out->pubkey, c->peer->pk, LEDGER_ED_PUB_BYTES);
    snprintf(out->remote, sizeof out->remote, "%s", c->remote);
}

static const char *peer_name(const net__conn *c, char *buf, size_t cap) {
    const net__peer *p = c->peer ? c->peer : c->target;
    if (p == NULL)
        snprintf(buf, cap, "%s", c->remote);
    else if (p->is_validator)
        snprintf(buf, cap, "validator %u (%s)", p->id, c->remote);
    else
        snprintf(buf, cap, "observer %u (%s)", p->id - NET_OBSERVER_ID_BASE, c->remote);
    return buf;
}

/* ------------------------------------------------------------------ handles and closing */
static void on_handle_closed(uv_handle_t *h) {
    net *n = h->data;
    TEM_ASSERT(n->handles_open > 0);
    n->handles_open--;
}

static void on_conn_closed(uv_handle_t *h) {
    net__conn *c = h->data;
    net *n = c->n;
    TEM_ASSERT(n->handles_open > 0);
    n->handles_open--;
    if (c->prev) c->prev->next = c->next;
    else n->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    TEM_ASSERT(n->n_conns > 0);
    n->n_conns--;
    tem_free(c->frame);
    net_hs_wipe(&c->hs);
    sodium_memzero(&c->sess, sizeof c->sess);
    tem_free(c);
}

static void schedule_redial(net *n, net__peer *p) {
    if (n->closing || !p->dial) return;
    uint64_t now = uv_now(n->loop);
    if (p->backoff_ms == 0) p->backoff_ms = n->cfg.backoff_min_ms;
    p->next_dial_ms = now + p->backoff_ms;
    nlog(n, NET_LOG_DEBUG, "redial validator %u in %llu ms", p->id, (unsigned long long)p->backoff_ms);
    /* Capped doubling: a restarted peer is found within backoff_max_ms, and a dead one costs
     * one SYN per cap period. */
    p->backoff_ms = p->backoff_ms * 2 > n->cfg.backoff_max_ms ? n->cfg.backoff_max_ms : p->backoff_ms * 2;
}

static void count_close(net *n, int reason) {
    n->stats.last_close_reason = reason;
    switch (reason) {
    case NET_ERATE: n->stats.closed_rate++; break;
    case NET_EDECRYPT: n->stats.closed_decrypt++; break;
    case NET_EFRAME: case NET_EVERSION: n->stats.closed_frame++; break;
    case NET_ETOOBIG: n->stats.closed_toobig++; break;
    case NET_EAUTH: case NET_EUNKNOWN: case NET_EOBSERVER: case NET_ESELF: n->stats.closed_auth++; break;
    default: break;
    }
}

/* Closes one connection for `reason`, logging why. Safe to call more than once. */
static void conn_close(net__conn *c, int reason) {
    if (c->state == C_CLOSING) return;
    net *n = c->n;
    int was = c->state;
    c->state = C_CLOSING;
    char name[128];
    peer_name(c, name, sizeof name);
    /* An inbound connection that never finished its handshake (a stranger, a scanner): one
     * line in a hundred, as for refusals at accept. */
    if (!c->outbound && was == C_HANDSHAKE && !c->quiet && reason != NET_ECLOSING)
        c->quiet = n->stats.handshakes_failed % 100 != 0;
    int level = c->quiet ? NET_LOG_DEBUG
                : (reason == NET_ECLOSING || reason == NET_EEOF || reason == NET_EREPLACED) ? NET_LOG_INFO
                                                                                            : NET_LOG_WARN;
    nlog(n, level, "close %s: %s (%s)", name, net_strerror(reason), net_errname(reason));
    count_close(n, reason);
    if (was == C_HANDSHAKE || was == C_CONNECTING) {
        if (reason != NET_ECLOSING && reason != NET_EREPLACED) n->stats.handshakes_failed++;
    }
    if (c->outbound && c->target && c->target->dialing == c) {
        c->target->dialing = NULL;
        if (was != C_OPEN) {
            c->target->failures++;
            n->stats.dial_failures++;
        }
        schedule_redial(n, c->target);
    }
    if (c->peer && c->peer->conn == c) {
        net__peer *p = c->peer;
        p->conn = NULL;
        if (!p->is_validator) p->in_use = false;
        if (c->outbound && c->target == p && was == C_OPEN) schedule_redial(n, p);
        if (n->cb.peer_down) {
            net_peer_info info;
            peer_info(c, &info);
            n->cb.peer_down(n->cb.ctx, &info, reason);
        }
    }
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static net__conn *conn_new(net *n, bool outbound) {
    net__conn *c = tem_calloc(1, sizeof *c);
    if (c == NULL) return NULL;
    c->n = n;
    c->outbound = outbound;
    int rc = uv_tcp_init(n->loop, &c->tcp);
    if (rc != 0) {
        nlog(n, NET_LOG_ERROR, "uv_tcp_init: %s", net_uv_error(rc));
        tem_free(c);
        return NULL;
    }
    c->tcp.data = c;
    n->handles_open++;
    c->next = n->conns;
    if (n->conns) n->conns->prev = c;
    n->conns = c;
    n->n_conns++;
    c->deadline_ms = uv_now(n->loop) + n->cfg.handshake_timeout_ms;
    snprintf(c->remote, sizeof c->remote, "?");
    return c;
}

static void fill_remote(net__conn *c) {
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0) return;
    char ip[48] = "?";
    int port = 0;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        uv_ip4_name(a, ip, sizeof ip);
        port = ntohs(a->sin_port);
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        uv_ip6_name(a, ip, sizeof ip);
        port = ntohs(a->sin6_port);
    }
    snprintf(c->remote, sizeof c->remote, "%s:%d", ip, port);
    snprintf(c->ip, sizeof c->ip, "%s", ip);
}

/* Send-queue cap of a connection: observers get a smaller one than validators. */
static uint64_t queue_max(const net__conn *c) {
    const net *n = c->n;
    if (c->peer != NULL && !c->peer->is_validator) return n->cfg.observer_send_queue_bytes_max;
    return n->cfg.send_queue_bytes_max;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* Stops reading from a peer whose send queue is over half its cap: whatever it asks for
 * could not be sent anyway, and its requests are what fills the queue. */
static void maybe_pause(net__conn *c) {
    if (c->state != C_OPEN || c->paused || c->tcp.write_queue_size <= queue_max(c) / 2) return;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->paused = true;
    c->n->stats.paused_reads++;
    char name[128];
    nlog(c->n, NET_LOG_DEBUG, "back-pressure: not reading %s (%zu bytes queued to it)", peer_name(c, name, sizeof name),
         c->tcp.write_queue_size);
}

static void maybe_resume(net__conn *c) {
    if (c->state != C_OPEN || !c->paused || c->tcp.write_queue_size > queue_max(c) / 4) return;
    c->paused = false;
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc != 0) {
        nlog(c->n, NET_LOG_WARN, "uv_read_start: %s", net_uv_error(rc));
        conn_close(c, NET_EUV);
    }
}

/* ------------------------------------------------------------------ writing */
static void on_write(uv_write_t *req, int status) {
    net__wreq *w = (net__wreq *)req;
    net__conn *c = req->data;
    if (status < 0 && status != UV_ECANCELED && c->state != C_CLOSING) {
        nlog(c->n, NET_LOG_WARN, "write to %s: %s", c->remote, net_uv_error(status));
        conn_close(c, NET_EUV);
    }
    tem_free(w);
    if (status == 0 && c->state != C_CLOSING) {
        c->last_progress_ms = uv_now(c->n->loop);
        maybe_resume(c);
    }
}

/* Queues `w` (its data is the complete wire frame). Takes ownership of w. */
static int conn_write(net__conn *c, net__wreq *w) {
    uv_buf_t buf = uv_buf_init((char *)w->data, (unsigned)w->len);
    w->req.data = c;
    if (c->tcp.write_queue_size == 0) c->last_progress_ms = uv_now(c->n->loop);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, on_write);
    if (rc != 0) {
        tem_free(w);
        nlog(c->n, NET_LOG_WARN, "uv_write to %s: %s", c->remote, net_uv_error(rc));
        conn_close(c, NET_EUV);
        return NET_EUV;
    }
    c->n->stats.frames_out++;
    c->n->stats.bytes_out += w->len;
    return NET_OK;
}

static int send_hs(net__conn *c) {
    net__wreq *w = tem_malloc(sizeof *w + NET_FRAME_HEADER_BYTES + NET_HS_MSG_MAX);
    if (w == NULL) {
        conn_close(c, NET_ENOMEM);
        return NET_ENOMEM;
    }
    size_t len = 0;
    int rc = net_hs_write(&c->hs, w->data + 4, NET_HS_MSG_MAX, &len);
    if (rc != NET_OK) {
        tem_free(w);
        conn_close(c, rc);
        return rc;
    }
    tem_put_u32be(w->data, (uint32_t)len);
    w->len = len + 4;
    return conn_write(c, w);
}

static int conn_send(net__conn *c, const void *data, size_t len) {
    if (c->state != C_OPEN) return NET_ENOTCONN;
    if (c->tcp.write_queue_size + len > queue_max(c)) return NET_EFULL;
    net__wreq *w = tem_malloc(sizeof *w + NET_FRAME_HEADER_BYTES + len + NET_AEAD_TAG_BYTES);
    if (w == NULL) return NET_ENOMEM;
    int rc = net_session_seal(&c->sess, data, len, w->data);
    if (rc != NET_OK) {
        tem_free(w);
        conn_close(c, rc);
        return rc;
    }
    w->len = NET_FRAME_HEADER_BYTES + len + NET_AEAD_TAG_BYTES;
    return conn_write(c, w);
}

/* ------------------------------------------------------------------ sessions */
static net__peer *observer_slot(net *n, const uint8_t pk[32]) {
    net__peer *free_slot = NULL;
    for (uint32_t i = 0; i < n->cfg.observers_max; i++) {
        net__peer *p = &n->observers[i];
        if (p->in_use && memcmp(p->pk, pk, 32) == 0) return p;
        if (!p->in_use && free_slot == NULL) free_slot = p;
    }
    return free_slot;
}

static void conn_established(net__conn *c) {
    net *n = c->n;
    net__peer *p;
    if (c->hs.peer_index >= 0) {
        p = &n->validators[c->hs.peer_index];
    } else {
        p = observer_slot(n, c->hs.peer_pk);
        if (p == NULL) {
            conn_close(c, NET_ELIMIT);
            return;
        }
        p->in_use = true;
        memcpy(p->pk, c->hs.peer_pk, 32);
    }
    if (!c->split_done && net_hs_split(&c->hs, &c->sess) != NET_OK) {
        conn_close(c, NET_ECRYPTO);
        return;
    }
    c->split_done = true;
    n->stats.handshakes_ok++;
    if (p->conn != NULL && p->conn != c) {
        /* The newer connection wins: the peer restarted or its old TCP half-died, and it can
         * only have proved its key on this one just now. */
        net__conn *old = p->conn;
        conn_close(old, NET_EREPLACED);
        if (!p->is_validator) {
            p->in_use = true;
            memcpy(p->pk, c->hs.peer_pk, 32);
        }
    }
    c->state = C_OPEN;
    c->peer = p;
    p->conn = c;
    if (c->outbound && c->target == p) {
        p->dialing = NULL;
        p->backoff_ms = 0;
        p->failures = 0;
    }
    c->refill_ms = uv_now(n->loop);
    uint64_t burst = n->cfg.rate_burst_ms;
    c->tok_bytes_m = n->cfg.rate_bytes_per_s * burst;
    c->tok_msgs_m = n->cfg.rate_msgs_per_s * burst;
    net_hs_wipe(&c->hs);
    /* The responder's first sealed frame is empty: it tells the initiator that its key was
     * admitted, so a refused dialler sees a failed handshake (and keeps backing off) instead of
     * a session that dies at once. */
    if (c->hs.role == NET_HS_RESPONDER && conn_send(c, NULL, 0) != NET_OK) {
        if (c->state != C_CLOSING) conn_close(c, NET_ENOMEM);
        return;
    }
    char name[128];
    nlog(n, NET_LOG_INFO, "session up with %s (%s)", peer_name(c, name, sizeof name),
         c->outbound ? "outbound" : "inbound");
    if (n->cb.peer_up) {
        net_peer_info info;
        peer_info(c, &info);
        n->cb.peer_up(n->cb.ctx, &info);
    }
}

static void handle_hs_frame(net__conn *c, const uint8_t *msg, size_t len) {
    int rc = net_hs_read(&c->hs, msg, len);
    if (rc != NET_OK) {
        conn_close(c, rc);
        return;
    }
    if (c->hs.role == NET_HS_RESPONDER && c->hs.step == 2) {
        if (send_hs(c) != NET_OK) return;
    } else if (c->hs.role == NET_HS_INITIATOR && c->hs.step == 3) {
        if (send_hs(c) != NET_OK) return;
    }
    if (!net_hs_done(&c->hs)) return;
    if (c->hs.role == NET_HS_RESPONDER) {
        conn_established(c);
        return;
    }
    if (net_hs_split(&c->hs, &c->sess) != NET_OK) {
        conn_close(c, NET_ECRYPTO);
        return;
    }
    c->split_done = true;
    c->awaiting_ack = true;
}

static void handle_ack_frame(net__conn *c, uint8_t *ct, size_t len) {
    if (len != NET_AEAD_TAG_BYTES) {
        conn_close(c, NET_EFRAME);
        return;
    }
    int rc = net_session_open(&c->sess, ct, len, ct);
    if (rc != NET_OK) {
        conn_close(c, NET_EAUTH);
        return;
    }
    c->awaiting_ack = false;
    conn_established(c);
}

/* Refills both buckets and takes one frame of `bytes`; false when either is short. */
static bool rate_take(net__conn *c, uint64_t bytes) {
    net *n = c->n;
    uint64_t now = uv_now(n->loop);
    uint64_t el = now - c->refill_ms;
    c->refill_ms = now;
    uint64_t burst = n->cfg.rate_burst_ms;
    bool ok = true;
    if (n->cfg.rate_bytes_per_s) {
        uint64_t cap = n->cfg.rate_bytes_per_s * burst;
        c->tok_bytes_m += n->cfg.rate_bytes_per_s * el;
        if (c->tok_bytes_m > cap) c->tok_bytes_m = cap;
        if (c->tok_bytes_m < bytes * 1000) ok = false;
    }
    if (n->cfg.rate_msgs_per_s) {
        uint64_t cap = n->cfg.rate_msgs_per_s * burst;
        c->tok_msgs_m += n->cfg.rate_msgs_per_s * el;
        if (c->tok_msgs_m > cap) c->tok_msgs_m = cap;
        if (c->tok_msgs_m < 1000) ok = false;
    }
    if (ok) {
        if (n->cfg.rate_bytes_per_s) c->tok_bytes_m -= bytes * 1000;
        if (n->cfg.rate_msgs_per_s) c->tok_msgs_m -= 1000;
    }
    return ok;
}

static void handle_data_frame(net__conn *c, uint8_t *ct, size_t len) {
    net *n = c->n;
    /* Open first even when the frame will be dropped: the receive counter must follow the
     * sender's or every later frame would fail. */
    int rc = net_session_open(&c->sess, ct, len, ct);
    if (rc != NET_OK) {
        conn_close(c, rc);
        return;
    }
    if (!rate_take(c, len + NET_FRAME_HEADER_BYTES)) {
        if (n->cfg.rate_policy == NET_LIMIT_CLOSE) {
            conn_close(c, NET_ERATE);
            return;
        }
        n->stats.frames_dropped_rate++;
        if (c->dropped_since_log++ == 0) {
            char name[128];
            nlog(n, NET_LOG_WARN, "rate limit: dropping frames from %s", peer_name(c, name, sizeof name));
        }
        return;
    }
    if (c->dropped_since_log > 1) {
        char name[128];
        nlog(n, NET_LOG_WARN, "rate limit: dropped %llu frames from %s",
             (unsigned long long)c->dropped_since_log, peer_name(c, name, sizeof name));
    }
    c->dropped_since_log = 0;
    n->stats.frames_in++;
    if (n->cb.frame) {
        net_peer_info info;
        peer_info(c, &info);
        n->cb.frame(n->cb.ctx, &info, ct, len - NET_AEAD_TAG_BYTES);
    }
}

/* ------------------------------------------------------------------ reading */
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;
    net__conn *c = h->data;
    *buf = uv_buf_init((char *)c->rxbuf, sizeof c->rxbuf);
}

/* Checks a frame length against the connection's phase before anything is allocated. */
static int check_len(const net__conn *c, uint32_t len) {
    if (c->state == C_HANDSHAKE) {
        if (len == 0) return NET_EFRAME;
        if (len > NET_HS_MSG_MAX) return NET_ETOOBIG;
        return NET_OK;
    }
    if (len < NET_AEAD_TAG_BYTES) return NET_EFRAME;
    if (len > (uint64_t)c->n->cfg.frame_bytes_max + NET_AEAD_TAG_BYTES) return NET_ETOOBIG;
    return NET_OK;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    net__conn *c = s->data;
    net *n = c->n;
    (void)buf;
    if (nread == 0) return;
    if (nread < 0) {
        if (nread != UV_EOF)
            nlog(n, c->outbound || c->state != C_HANDSHAKE ? NET_LOG_INFO : NET_LOG_DEBUG, "read from %s: %s", c->remote,
                 net_uv_error((int)nread));
        conn_close(c, nread == UV_EOF ? NET_EEOF : NET_EUV);
        return;
    }
    n->stats.bytes_in += (uint64_t)nread;
    const uint8_t *p = c->rxbuf;
    size_t left = (size_t)nread;
    while (left > 0 && (c->state == C_HANDSHAKE || c->state == C_OPEN)) {
        if (c->hdr_got == 0 && left >= 4) {
            /* Fast path: a whole frame sits in the read buffer; open it there, no copy. */
            uint32_t len = tem_get_u32be(p);
            int rc = check_len(c, len);
            if (rc != NET_OK) {
                nlog(n, NET_LOG_WARN, "frame of %u bytes from %s refused", len, c->remote);
                conn_close(c, rc);
                return;
            }
            if (left - 4 >= len) {
                uint8_t *f = c->rxbuf + (p - c->rxbuf) + 4;
                p += 4 + (size_t)len;
                left -= 4 + (size_t)len;
                if (c->state == C_HANDSHAKE && c->awaiting_ack)
                    handle_ack_frame(c, f, len);
                else if (c->state == C_HANDSHAKE)
                    handle_hs_frame(c, f, len);
                else
                    handle_data_frame(c, f, len);
                maybe_pause(c);
                continue;
            }
        }
        if (c->hdr_got < 4) {
            size_t k = 4 - c->hdr_got < left ? 4 - c->hdr_got : left;
            memcpy(c->hdr + c->hdr_got, p, k);
            c->hdr_got += k;
            p += k;
            left -= k;
            if (c->hdr_got < 4) break;
            uint32_t len = tem_get_u32be(c->hdr);
            int rc = check_len(c, len);
            if (rc != NET_OK) {
                nlog(n, NET_LOG_WARN, "frame of %u bytes from %s refused", len, c->remote);
                conn_close(c, rc);
                return;
            }
            /* Only a first chunk: a peer that announces 16 MiB and sends 1 KiB pins 64 KiB,
             * and the frame deadline frees even that. */
            c->frame_cap = len < FRAME_CHUNK_BYTES ? len : FRAME_CHUNK_BYTES;
            c->frame = tem_malloc(c->frame_cap);
            if (c->frame == NULL) {
                conn_close(c, NET_ENOMEM);
                return;
            }
            c->frame_len = len;
            c->frame_got = 0;
            c->frame_started_ms = uv_now(n->loop);
        }
        size_t need = c->frame_len - c->frame_got;
        size_t k = need < left ? need : left;
        if (c->frame_got + k > c->frame_cap) {
            uint64_t cap = (uint64_t)c->frame_cap * 2;
            if (cap < c->frame_got + k) cap = c->frame_got + k;
            if (cap > c->frame_len) cap = c->frame_len;
            uint8_t *grown = tem_realloc(c->frame, (size_t)cap);
            if (grown == NULL) {
                conn_close(c, NET_ENOMEM);
                return;
            }
            c->frame = grown;
            c->frame_cap = (uint32_t)cap;
        }
        memcpy(c->frame + c->frame_got, p, k);
        c->frame_got += (uint32_t)k;
        p += k;
        left -= k;
        if (c->frame_got < c->frame_len) break;
        uint8_t *f = c->frame;
        uint32_t flen = c->frame_len;
        c->frame = NULL;
        c->hdr_got = 0;
        if (c->state == C_HANDSHAKE && c->awaiting_ack)
            handle_ack_frame(c, f, flen);
        else if (c->state == C_HANDSHAKE)
            handle_hs_frame(c, f, flen);
        else
            handle_data_frame(c, f, flen);
        tem_free(f);
        maybe_pause(c);
    }
}

static bool validator_host(const net *n, const char *ip) {
    for (uint32_t i = 0; i < n->cfg.genesis->n_validators; i++)
        if (n->val_ip[i][0] && strcmp(n->val_ip[i], ip) == 0) return true;
    return false;
}

/* Whether a new inbound connection from `ip` gets a handshake slot. An address that is a
 * genesis validator's (numeric) host only has its per-address cap: strangers filling the
 * shared table cannot keep a restarted validator out. */
static bool handshake_slot_free(net *n, const net__conn *self, const char *ip) {
    uint32_t all = 0, same = 0;
    for (const net__conn *c = n->conns; c; c = c->next) {
        if (c == self || c->outbound || c->state != C_HANDSHAKE) continue;
        all++;
        same += strcmp(c->ip, ip) == 0;
    }
    if (same >= n->cfg.handshakes_per_addr_max) return false;
    return validator_host(n, ip) || all < n->cfg.handshakes_max;
}

static bool bucket_take(uint64_t *tokens_m, uint64_t *last_ms, uint64_t now, uint32_t per_s) {
    uint64_t cap = (uint64_t)per_s * 1000;
    if (*last_ms == 0 || now < *last_ms) *tokens_m = cap;
    else *tokens_m += (now - *last_ms) * per_s;
    if (*tokens_m > cap) *tokens_m = cap;
    *last_ms = now;
    if (*tokens_m < 1000) return false;
    *tokens_m -= 1000;
    return true;
}

/* Whether a new inbound handshake from `ip` fits the rates (net_config.handshakes_per_s). */
static bool handshake_rate_ok(net *n, const char *ip) {
    if (validator_host(n, ip)) return true;
    uint64_t now = uv_now(n->loop);
    size_t k = 0;
    for (size_t i = 0; i < NET_HS_RATE_ADDRS; i++) {
        if (strcmp(n->hs_rate[i].ip, ip) == 0) {
            k = i;
            goto found;
        }
        if (n->hs_rate[i].last_ms < n->hs_rate[k].last_ms) k = i;
    }
    snprintf(n->hs_rate[k].ip, sizeof n->hs_rate[k].ip, "%s", ip);
    n->hs_rate[k].last_ms = 0;
found:
    if (!bucket_take(&n->hs_rate[k].tokens_m, &n->hs_rate[k].last_ms, now, n->cfg.handshakes_per_addr_per_s)) return false;
    return bucket_take(&n->hs_tokens_m, &n->hs_last_ms, now, n->cfg.handshakes_per_s);
}

/* ------------------------------------------------------------------ accepting */
static void free_handle(uv_handle_t *h) { tem_free(h); }

static void on_connection(uv_stream_t *server, int status) {
    net *n = server->data;
    if (status < 0) {
        nlog(n, NET_LOG_WARN, "accept: %s", net_uv_error(status));
        return;
    }
    net__conn *c = conn_new(n, false);
    if (c == NULL) {
        /* Still take the connection off the backlog so the loop does not spin on it. */
        uv_tcp_t *tmp = tem_malloc(sizeof *tmp);
        if (tmp && uv_tcp_init(n->loop, tmp) == 0) {
            if (uv_accept(server, (uv_stream_t *)tmp) != 0) { /* nothing to refuse */ }
            uv_close((uv_handle_t *)tmp, free_handle);
        } else {
            tem_free(tmp);
        }
        return;
    }
    int rc = uv_accept(server, (uv_stream_t *)&c->tcp);
    if (rc != 0) {
        nlog(n, NET_LOG_WARN, "uv_accept: %s", net_uv_error(rc));
        conn_close(c, NET_EUV);
        return;
    }
    fill_remote(c);
    if (!handshake_slot_free(n, c, c->ip) || n->n_conns > n->cfg.conns_max) {
        c->state = C_HANDSHAKE;
        /* One line per 100 refusals: a flood must not also flood the log. */
        c->quiet = n->stats.refused_handshake_slots++ % 100 != 0;
        if (!c->quiet)
            nlog(n, NET_LOG_WARN, "no handshake slot for %s (%llu refused so far; limits %u, %u per address)", c->remote,
                 (unsigned long long)n->stats.refused_handshake_slots, n->cfg.handshakes_max, n->cfg.handshakes_per_addr_max);
        conn_close(c, NET_ELIMIT);
        return;
    }
    if (!handshake_rate_ok(n, c->ip)) {
        c->state = C_HANDSHAKE;
        /* One line in 10 s at most: a churn refused 12,000 times a second is still 120 lines a
         * second at one in a hundred. */
        uint64_t now = uv_now(n->loop);
        n->stats.refused_handshake_rate++;
        c->quiet = n->hs_logged_ms && now - n->hs_logged_ms < 10000;
        if (!c->quiet) n->hs_logged_ms = now;
        if (!c->quiet)
            nlog(n, NET_LOG_WARN, "handshakes from %s come too fast (%llu refused so far; limits %u/s, %u/s per address)",
                 c->remote, (unsigned long long)n->stats.refused_handshake_rate, n->cfg.handshakes_per_s,
                 n->cfg.handshakes_per_addr_per_s);
        conn_close(c, NET_ELIMIT);
        return;
    }
    c->state = C_HANDSHAKE;
    if ((rc = uv_tcp_nodelay(&c->tcp, 1)) != 0) nlog(n, NET_LOG_DEBUG, "nodelay: %s", net_uv_error(rc));
    /* A peer that vanished without a FIN (power loss, cut link) is noticed by the kernel's
     * probes within about a minute, which starts the redial. */
    if ((rc = uv_tcp_keepalive(&c->tcp, 1, 30)) != 0) nlog(n, NET_LOG_DEBUG, "keepalive: %s", net_uv_error(rc));
    rc = net_hs_init(&c->hs, NET_HS_RESPONDER, n->cfg.genesis, n->cfg.sec, NULL, n->cfg.accept_observers);
    if (rc != NET_OK) {
        conn_close(c, rc);
        return;
    }
    net_hs_allow_observers(&c->hs, (const uint8_t(*)[LEDGER_ED_PUB_BYTES])n->obs_keys, n->n_obs_keys);
    if ((rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read)) != 0) {
        nlog(n, NET_LOG_WARN, "uv_read_start: %s", net_uv_error(rc));
        conn_close(c, NET_EUV);
    }
}

/* ------------------------------------------------------------------ dialing */
static void on_connect(uv_connect_t *req, int status) {
    net__conn *c = req->data;
    net *n = c->n;
    if (c->state == C_CLOSING) return; /* UV_ECANCELED from our own close */
    if (status < 0) {
        nlog(n, NET_LOG_DEBUG, "connect to validator %u: %s", c->target->id, net_uv_error(status));
        conn_close(c, NET_EUV);
        return;
    }
    fill_remote(c);
    c->state = C_HANDSHAKE;
    int rc;
    if ((rc = uv_tcp_nodelay(&c->tcp, 1)) != 0) nlog(n, NET_LOG_DEBUG, "nodelay: %s", net_uv_error(rc));
    /* A peer that vanished without a FIN (power loss, cut link) is noticed by the kernel's
     * probes within about a minute, which starts the redial. */
    if ((rc = uv_tcp_keepalive(&c->tcp, 1, 30)) != 0) nlog(n, NET_LOG_DEBUG, "keepalive: %s", net_uv_error(rc));
    rc = net_hs_init(&c->hs, NET_HS_INITIATOR, n->cfg.genesis, n->cfg.sec, c->target->pk, false);
    if (rc != NET_OK) {
        conn_close(c, rc);
        return;
    }
    if ((rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read)) != 0) {
        nlog(n, NET_LOG_WARN, "uv_read_start: %s", net_uv_error(rc));
        conn_close(c, NET_EUV);
        return;
    }
    (void)send_hs(c);
}

static void dial_addr(net *n, net__peer *p, const struct sockaddr *sa) {
    net__conn *c = conn_new(n, true);
    if (c == NULL) {
        schedule_redial(n, p);
        return;
    }
    c->state = C_CONNECTING;
    c->target = p;
    p->dialing = c;
    n->stats.dials++;
    c->connect_req.data = c;
    int rc = uv_tcp_connect(&c->connect_req, &c->tcp, sa, on_connect);
    if (rc != 0) {
        nlog(n, NET_LOG_DEBUG, "uv_tcp_connect validator %u: %s", p->id, net_uv_error(rc));
        conn_close(c, NET_EUV);
    }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
    net__peer *p = req->data;
    net *n = p->n;
    p->resolving = false;
    TEM_ASSERT(n->resolving > 0);
    n->resolving--;
    if (n->closing) {
        uv_freeaddrinfo(res);
        return;
    }
    if (status < 0 || res == NULL) {
        nlog(n, NET_LOG_WARN, "resolve %s: %s", n->cfg.genesis->validators[p->id].address,
             net_uv_error(status));
        p->failures++;
        n->stats.dial_failures++;
        schedule_redial(n, p);
        uv_freeaddrinfo(res);
        return;
    }
    dial_addr(n, p, res->ai_addr);
    uv_freeaddrinfo(res);
}

static void dial(net *n, net__peer *p) {
    const char *addr = n->cfg.genesis->validators[p->id].address;
    char host[128];
    uint16_t port;
    p->next_dial_ms = UINT64_MAX;
    if (net_addr_split(addr, host, sizeof host, &port) != NET_OK) {
        nlog(n, NET_LOG_ERROR, "validator %u has a malformed address '%s'", p->id, addr);
        return; /* never retried: the genesis will not change */
    }
    struct sockaddr_storage ss;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) == 0) {
        dial_addr(n, p, (struct sockaddr *)&ss);
        return;
    }
    char portstr[8];
    snprintf(portstr, sizeof portstr, "%u", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    p->gai.data = p;
    int rc = uv_getaddrinfo(n->loop, &p->gai, on_resolved, host, portstr, &hints);
    if (rc != 0) {
        nlog(n, NET_LOG_WARN, "uv_getaddrinfo %s: %s", addr, net_uv_error(rc));
        schedule_redial(n, p);
        return;
    }
    p->resolving = true;
    n->resolving++;
}

static void on_tick(uv_timer_t *t) {
    net *n = t->data;
    uint64_t now = uv_now(n->loop);
    for (net__conn *c = n->conns, *next; c; c = next) {
        next = c->next;
        if ((c->state == C_CONNECTING || c->state == C_HANDSHAKE) && now >= c->deadline_ms) {
            conn_close(c, NET_ETIMEOUT);
            continue;
        }
        if (c->state == C_OPEN && c->tcp.write_queue_size > 0 && now - c->last_progress_ms >= n->cfg.send_stall_timeout_ms) {
            char name[128];
            nlog(n, NET_LOG_WARN, "%s has read nothing for %llu ms (%zu bytes queued): closing", peer_name(c, name, sizeof name),
                 (unsigned long long)(now - c->last_progress_ms), c->tcp.write_queue_size);
            n->stats.closed_stalled++;
            conn_close(c, NET_ETIMEOUT);
            continue;
        }
        if (c->frame != NULL && c->state != C_CLOSING && now - c->frame_started_ms >= n->cfg.frame_timeout_ms) {
            char name[128];
            nlog(n, NET_LOG_WARN, "%s left a frame unfinished (%u of %u bytes) for %llu ms", peer_name(c, name, sizeof name),
                 c->frame_got, c->frame_len, (unsigned long long)(now - c->frame_started_ms));
            conn_close(c, NET_ETIMEOUT);
        }
    }
    for (uint32_t i = 0; i < n->cfg.genesis->n_validators; i++) {
        net__peer *p = &n->validators[i];
        if (p->dial && p->conn == NULL && p->dialing == NULL && !p->resolving && now >= p->next_dial_ms)
            dial(n, p);
    }
}

/* ------------------------------------------------------------------ public API */
int net_new(uv_loop_t *loop, const net_config *cfg, const net_callbacks *cb, net **out) {
    if (loop == NULL || cfg == NULL || out == NULL || cfg->genesis == NULL) return NET_EINVAL;
    const ledger_genesis *g = cfg->genesis;
    if (g->n_validators == 0 || g->n_validators > LEDGER_VALIDATORS_MAX) return NET_EINVAL;
    if (cfg->observers_max > NET_OBSERVERS_MAX) return NET_EINVAL;
    if (cfg->n_observer_keys > NET_OBSERVER_KEYS_MAX || (cfg->n_observer_keys > 0 && cfg->observer_keys == NULL))
        return NET_EINVAL;
    if (cfg->frame_bytes_max > NET_FRAME_BYTES_MAX_LIMIT) return NET_EINVAL;
    if (cfg->rate_policy != NET_LIMIT_DROP && cfg->rate_policy != NET_LIMIT_CLOSE) return NET_EINVAL;
    /* Token buckets hold rate * burst_ms milli-tokens in a u64. */
    if (cfg->rate_bytes_per_s > (1ull << 40) || cfg->rate_msgs_per_s > (1ull << 40) ||
        cfg->rate_burst_ms > 3600000)
        return NET_EINVAL;
    if (sodium_init() < 0) return NET_ECRYPTO;
    uint8_t pk[32];
    crypto_sign_ed25519_sk_to_pk(pk, cfg->sec);
    uint8_t seed[32], pk2[32], sk2[64];
    /* The second half of a libsodium secret key is its public key; a mismatch means a corrupt
     * key file, which must not get as far as signing handshakes. */
    crypto_sign_ed25519_sk_to_seed(seed, cfg->sec);
    if (crypto_sign_seed_keypair(pk2, sk2, seed) != 0 || memcmp(pk, pk2, 32) != 0) {
        sodium_memzero(seed, sizeof seed);
        sodium_memzero(sk2, sizeof sk2);
        return NET_EINVAL;
    }
    sodium_memzero(seed, sizeof seed);
    sodium_memzero(sk2, sizeof sk2);

    net *n = tem_calloc(1, sizeof *n);
    if (n == NULL) return NET_ENOMEM;
    n->loop = loop;
    n->cfg = *cfg;
    if (cb) n->cb = *cb;
    net_config *c = &n->cfg;
    if (cfg->listen != NULL) {
        if (strlen(cfg->listen) >= sizeof n->listen_addr) {
            tem_free(n);
            return NET_EADDR;
        }
        snprintf(n->listen_addr, sizeof n->listen_addr, "%s", cfg->listen);
    }
    c->listen = NULL; /* borrowed by the caller: only listen_addr is kept */
    if (c->observers_max == 0) c->observers_max = 16;
    if (c->conns_max == 0) c->conns_max = 256;
    if (c->frame_bytes_max == 0) c->frame_bytes_max = NET_FRAME_BYTES_MAX_DEFAULT;
    if (c->send_queue_bytes_max == 0) c->send_queue_bytes_max = 64u << 20;
    if (c->rate_burst_ms == 0) c->rate_burst_ms = 1000;
    if (c->handshake_timeout_ms == 0) c->handshake_timeout_ms = 5000;
    if (c->backoff_min_ms == 0) c->backoff_min_ms = 100;
    if (c->backoff_max_ms == 0) c->backoff_max_ms = 10000;
    if (c->backoff_max_ms < c->backoff_min_ms) c->backoff_max_ms = c->backoff_min_ms;
    if (c->tick_ms == 0) c->tick_ms = 25;
    if (c->handshakes_max == 0) c->handshakes_max = 32;
    if (c->handshakes_per_addr_max == 0) c->handshakes_per_addr_max = 4;
    if (c->handshakes_per_s == 0) c->handshakes_per_s = 100;
    if (c->handshakes_per_addr_per_s == 0) c->handshakes_per_addr_per_s = 10;
    if (c->observer_send_queue_bytes_max == 0) c->observer_send_queue_bytes_max = 16u << 20;
    if (c->send_stall_timeout_ms == 0) c->send_stall_timeout_ms = 20000;
    if (c->frame_timeout_ms == 0) c->frame_timeout_ms = 30000;
    n->observers = tem_calloc(c->observers_max, sizeof *n->observers);
    if (cfg->n_observer_keys > 0) n->obs_keys = tem_calloc(cfg->n_observer_keys, sizeof *n->obs_keys);
    if (n->observers == NULL || (cfg->n_observer_keys > 0 && n->obs_keys == NULL)) {
        tem_free(n->observers);
        tem_free(n->obs_keys);
        sodium_memzero(n, sizeof *n);
        tem_free(n);
        return NET_ENOMEM;
    }
    if (cfg->n_observer_keys > 0) memcpy(n->obs_keys, cfg->observer_keys, cfg->n_observer_keys * sizeof *n->obs_keys);
    n->n_obs_keys = cfg->n_observer_keys;
    c->observer_keys = NULL; /* borrowed by the caller: only the copy is kept */
    memcpy(n->self_pk, pk, 32);
    n->self_index = -1;
    for (uint32_t i = 0; i < g->n_validators; i++)
        if (memcmp(g->validators[i].pubkey, pk, 32) == 0) n->self_index = (int)i;
    for (uint32_t i = 0; i < g->n_validators; i++) {
        net__peer *p = &n->validators[i];
        p->n = n;
        p->id = i;
        p->is_validator = true;
        p->in_use = true;
        memcpy(p->pk, g->validators[i].pubkey, 32);
        /* One TCP connection per pair: the higher index dials the lower one; observers dial
         * every validator that has an address. */
        bool has_addr = g->validators[i].address[0] != '\0';
        bool wanted = n->self_index >= 0 ? (int)i < n->self_index
                                         : (c->observer_dial_mask == 0 || (c->observer_dial_mask >> i) & 1);
        p->dial = has_addr && (int)i != n->self_index && wanted;
        p->next_dial_ms = 0;
        char host[128];
        uint16_t port;
        struct sockaddr_storage ss;
        if (has_addr && net_addr_split(g->validators[i].address, host, sizeof host, &port) == NET_OK &&
            (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) == 0 || uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) == 0) &&
            strlen(host) < sizeof n->val_ip[i])
            memcpy(n->val_ip[i], host, strlen(host) + 1); /* fits: checked just above */
    }
    for (uint32_t i = 0; i < c->observers_max; i++) {
        n->observers[i].n = n;
        n->observers[i].id = NET_OBSERVER_ID_BASE + i;
    }
    *out = n;
    return NET_OK;
}

static int start_listener(net *n, const char *addr) {
    char host[128];
    uint16_t port;
    if (net_addr_split(addr, host, sizeof host, &port) != NET_OK) return NET_EADDR;
    struct sockaddr_storage ss;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0)
        return NET_EADDR;
    int rc = uv_tcp_init(n->loop, &n->listener);
    if (rc != 0) {
        nlog(n, NET_LOG_ERROR, "uv_tcp_init: %s", net_uv_error(rc));
        return NET_EUV;
    }
    n->listener.data = n;
    n->handles_open++;
    n->listening = true;
    if ((rc = uv_tcp_bind(&n->listener, (struct sockaddr *)&ss, 0)) != 0 ||
        (rc = uv_listen((uv_stream_t *)&n->listener, 128, on_connection)) != 0) {
        nlog(n, NET_LOG_ERROR, "listen on %s: %s", addr, net_uv_error(rc));
        return NET_EUV;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    if ((rc = uv_tcp_getsockname(&n->listener, (struct sockaddr *)&bound, &blen)) != 0) {
        nlog(n, NET_LOG_ERROR, "getsockname: %s", net_uv_error(rc));
        return NET_EUV;
    }
    n->port = ntohs(bound.ss_family == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port
                                               : ((struct sockaddr_in6 *)&bound)->sin6_port);
    nlog(n, NET_LOG_INFO, "listening on %s (port %u) as %s %d", addr, n->port,
         n->self_index >= 0 ? "validator" : "observer", n->self_index);
    return NET_OK;
}

int net_start(net *n) {
    if (n == NULL) return NET_EINVAL;
    if (n->started || n->closing) return NET_ESTATE;
    n->started = true;
    int rc;
    if (n->listen_addr[0] != '\0' && (rc = start_listener(n, n->listen_addr)) != NET_OK) return rc;
    if ((rc = uv_timer_init(n->loop, &n->tick)) != 0) {
        nlog(n, NET_LOG_ERROR, "uv_timer_init: %s", net_uv_error(rc));
        return NET_EUV;
    }
    n->tick.data = n;
    n->handles_open++;
    n->tick_on = true;
    if ((rc = uv_timer_start(&n->tick, on_tick, 0, n->cfg.tick_ms)) != 0) {
        nlog(n, NET_LOG_ERROR, "uv_timer_start: %s", net_uv_error(rc));
        return NET_EUV;
    }
    return NET_OK;
}

uint16_t net_listen_port(const net *n) { return n ? n->port : 0; }
int net_self_index(const net *n) { return n->self_index; }

static net__peer *peer_by_id(const net *n, uint32_t id) {
    if (id < n->cfg.genesis->n_validators) return (net__peer *)&n->validators[id];
    if (id >= NET_OBSERVER_ID_BASE && id - NET_OBSERVER_ID_BASE < n->cfg.observers_max) {
        net__peer *p = &n->observers[id - NET_OBSERVER_ID_BASE];
        return p->in_use ? p : NULL;
    }
    return NULL;
}

int net_send(net *n, uint32_t peer_id, const void *data, size_t len) {
    if (n == NULL || (data == NULL && len > 0)) return NET_EINVAL;
    if (n->closing) return NET_ECLOSING;
    if (len > n->cfg.frame_bytes_max) return NET_ETOOBIG;
    net__peer *p = peer_by_id(n, peer_id);
    if (p == NULL || p->conn == NULL) return NET_ENOTCONN;
    return conn_send(p->conn, data, len);
}

int net_broadcast(net *n, const void *data, size_t len, unsigned to) {
    if (n == NULL || (data == NULL && len > 0)) return NET_EINVAL;
    if (n->closing) return NET_ECLOSING;
    if (len > n->cfg.frame_bytes_max) return NET_ETOOBIG;
    int sent = 0;
    if (to & NET_TO_VALIDATORS) {
        for (uint32_t i = 0; i < n->cfg.genesis->n_validators; i++) {
            net__peer *p = &n->validators[i];
            if (p->conn == NULL) continue;
            int rc = conn_send(p->conn, data, len);
            if (rc == NET_OK) sent++;
            else nlog(n, NET_LOG_WARN, "broadcast to validator %u: %s", i, net_strerror(rc));
        }
    }
    if (to & NET_TO_OBSERVERS) {
        for (uint32_t i = 0; i < n->cfg.observers_max; i++) {
            net__peer *p = &n->observers[i];
            if (!p->in_use || p->conn == NULL) continue;
            int rc = conn_send(p->conn, data, len);
            if (rc == NET_OK) sent++;
            else nlog(n, NET_LOG_WARN, "broadcast to observer %u: %s", i, net_strerror(rc));
        }
    }
    return sent;
}

bool net_peer_connected(const net *n, uint32_t peer_id) {
    const net__peer *p = peer_by_id(n, peer_id);
    return p != NULL && p->conn != NULL && p->conn->state == C_OPEN;
}

int net_peer_info_get(const net *n, uint32_t peer_id, net_peer_info *out) {
    const net__peer *p = peer_by_id(n, peer_id);
    if (p == NULL || p->conn == NULL || out == NULL) return NET_ENOTCONN;
    peer_info(p->conn, out);
    return NET_OK;
}

uint32_t net_validators_connected(const net *n) {
    uint32_t k = 0;
    for (uint32_t i = 0; i < n->cfg.genesis->n_validators; i++) k += n->validators[i].conn != NULL;
    return k;
}

uint32_t net_observers_connected(const net *n) {
    uint32_t k = 0;
    for (uint32_t i = 0; i < n->cfg.observers_max; i++) k += n->observers[i].conn != NULL;
    return k;
}

void net_stats_get(const net *n, net_stats *out) { *out = n->stats; }

void net_close(net *n) {
    if (n == NULL || n->closing) return;
    n->closing = true;
    nlog(n, NET_LOG_INFO, "closing");
    if (n->tick_on) {
        uv_timer_stop(&n->tick);
        uv_close((uv_handle_t *)&n->tick, on_handle_closed);
        n->tick_on = false;
    }
    if (n->listening) {
        uv_close((uv_handle_t *)&n->listener, on_handle_closed);
        n->listening = false;
    }
    for (net__conn *c = n->conns; c; c = c->next) conn_close(c, NET_ECLOSING);
    for (uint32_t i = 0; i < n->cfg.genesis->n_validators; i++)
        if (n->validators[i].resolving) uv_cancel((uv_req_t *)&n->validators[i].gai);
}

bool net_is_closed(const net *n) {
    return n->handles_open == 0 && n->resolving == 0 && n->conns == NULL;
}

void net_free(net *n) {
    if (n == NULL) return;
    TEM_ASSERT(n->handles_open == 0);
    TEM_ASSERT(n->conns == NULL);
    TEM_ASSERT(n->resolving == 0);
    tem_free(n->observers);
    tem_free(n->obs_keys);
    sodium_memzero(n, sizeof *n);
    tem_free(n);
}

const char *net_uv_error(int rc) {
    static char bufs[8][96];
    static unsigned next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof bufs[0], "%s (%s)", uv_strerror(rc), uv_err_name(rc));
    return b;
}
