/* events.c: the event hub of GET /v1/events: subscriber table (bounded in total and per client
 * address), filters, Server-Sent Events framing, replay of committed blocks paced by each
 * subscriber's own reading, live delivery, and the drop of a subscriber that reads too slowly.
 * Where the events come from (the store) is node/api_events.c's business. */
#include "node/events.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    int code;
    const char *name, *msg;
} errs[] = {
#define NODE_EVENTS_E(name, val, msg) {val, #name, msg},
    NODE_EVENTS_ERRNO_MAP(NODE_EVENTS_E)
#undef NODE_EVENTS_E
};

const char *node_events_strerror(int err) {
    if (err == 0) return "ok";
    for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++)
        if (errs[i].code == err) return errs[i].msg;
    return "unknown error";
}
const char *node_events_errname(int err) {
    for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++)
        if (errs[i].code == err) return errs[i].name;
    return NULL;
}

static const char *const kind_names[] = {"block", "tx", "trade", "curtailment", "settlement"};

const char *node_events_kind_name(uint32_t kind) {
    for (uint32_t i = 0; i < 5; i++)
        if (kind == 1u << i) return kind_names[i];
    return NULL;
}

/* ------------------------------------------------------------------ batches */
void node_events_batch_init(node_events_batch *b, uint64_t height) {
    memset(b, 0, sizeof *b);
    b->height = height;
}

int node_events_batch_add(node_events_batch *b, uint32_t kind, bool has_slot, uint64_t slot,
                          const uint8_t (*accounts)[33], uint32_t n_accounts, const char *json) {
    TEM_ASSERT(node_events_kind_name(kind) != NULL);
    TEM_ASSERT(n_accounts <= NODE_EVENTS_ACCOUNTS_MAX);
    if (b->n == b->cap) {
        uint32_t cap = b->cap ? b->cap * 2 : 16;
        node_event *nv = tem_realloc(b->ev, (size_t)cap * sizeof *nv);
        if (nv == NULL) return NODE_EVENTS_ENOMEM;
        b->ev = nv;
        b->cap = cap;
    }
    size_t len = strlen(json);
    char *copy = tem_malloc(len + 1);
    if (copy == NULL) return NODE_EVENTS_ENOMEM;
    memcpy(copy, json, len + 1);
    node_event *e = &b->ev[b->n];
    memset(e, 0, sizeof *e);
    e->index = b->n;
    e->kind = kind;
    e->has_slot = has_slot;
    e->slot = slot;
    e->n_accounts = n_accounts;
    for (uint32_t i = 0; i < n_accounts; i++) memcpy(e->accounts[i], accounts[i], 33);
    e->json = copy;
    e->json_len = len;
    b->n++;
    return NODE_EVENTS_OK;
}

void node_events_batch_free(node_events_batch *b) {
    for (uint32_t i = 0; i < b->n; i++) tem_free(b->ev[i].json);
    tem_free(b->ev);
    memset(b, 0, sizeof *b);
}

/* ------------------------------------------------------------------ filters */
static bool parse_u64(const char *s, size_t len, uint64_t *out) {
    if (len == 0 || len > 20) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, (uint64_t)(s[i] - '0'), &v)) return false;
    }
    *out = v;
    return true;
}

/* "H:I" -> height, index. */
static bool parse_id(const char *s, uint64_t *h, uint32_t *idx) {
    const char *c = strchr(s, ':');
    uint64_t i;
    if (c == NULL || !parse_u64(s, (size_t)(c - s), h) || !parse_u64(c + 1, strlen(c + 1), &i) || i > UINT32_MAX)
        return false;
    *idx = (uint32_t)i;
    return true;
}

int node_events_filter_parse(node_events_filter *f, const char *query, const char *last_event_id, char *err,
                             size_t errlen) {
    memset(f, 0, sizeof *f);
    const char *p = query ? query : "";
    while (*p) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        if (eq == NULL) {
            snprintf(err, errlen, "query parameters are name=value");
            return NODE_EVENTS_EINVAL;
        }
        size_t nl = (size_t)(eq - p), vl = len - nl - 1;
        const char *v = eq + 1;
        if (nl == 5 && memcmp(p, "kinds", 5) == 0) {
            const char *k = v, *end = v + vl;
            while (k < end) {
                const char *comma = memchr(k, ',', (size_t)(end - k));
                size_t kl = comma ? (size_t)(comma - k) : (size_t)(end - k);
                uint32_t bit = 0;
                for (uint32_t i = 0; i < 5; i++)
                    if (strlen(kind_names[i]) == kl && memcmp(k, kind_names[i], kl) == 0) bit = 1u << i;
                if (bit == 0) {
                    snprintf(err, errlen, "kinds: each of block, tx, trade, curtailment, settlement");
                    return NODE_EVENTS_EINVAL;
                }
                f->kinds |= bit;
                k += kl + (comma ? 1 : 0);
            }
        } else if (nl == 7 && memcmp(p, "account", 7) == 0) {
            char hex[67];
            if (vl != 66) {
                snprintf(err, errlen, "account: 33 bytes of hex");
                return NODE_EVENTS_EINVAL;
            }
            memcpy(hex, v, 66);
            hex[66] = '\0';
            if (tem_unhex(f->account, 33, hex) != 0) {
                snprintf(err, errlen, "account: 33 bytes of hex");
                return NODE_EVENTS_EINVAL;
            }
            f->has_account = true;
        } else if (nl == 4 && memcmp(p, "slot", 4) == 0) {
            if (!parse_u64(v, vl, &f->slot)) {
                snprintf(err, errlen, "slot: a number");
                return NODE_EVENTS_EINVAL;
            }
            f->has_slot = true;
        } else if (nl == 11 && memcmp(p, "from_height", 11) == 0) {
            if (!parse_u64(v, vl, &f->from_height) || f->from_height == 0) {
                snprintf(err, errlen, "from_height: a height >= 1");
                return NODE_EVENTS_EINVAL;
            }
        } else {
            snprintf(err, errlen, "unknown parameter (kinds, account, slot, from_height)");
            return NODE_EVENTS_EINVAL;
        }
        p += len + (amp ? 1 : 0);
    }
    if (last_event_id && *last_event_id) {
        uint64_t h;
        uint32_t i;
        if (!parse_id(last_event_id, &h, &i) || h == 0) {
            snprintf(err, errlen, "Last-Event-ID: HEIGHT:INDEX as the stream sent it");
            return NODE_EVENTS_EINVAL;
        }
        f->from_height = h;
        f->resume = true;
        f->after_index = i;
    }
    return NODE_EVENTS_OK;
}

bool node_events_filter_match(const node_events_filter *f, const node_event *e) {
    if (f->kinds && !(f->kinds & e->kind)) return false;
    if (f->has_slot && (!e->has_slot || e->slot != f->slot)) return false;
    if (f->has_account) {
        bool hit = false;
        for (uint32_t i = 0; i < e->n_accounts && !hit; i++) hit = memcmp(e->accounts[i], f->account, 33) == 0;
        if (!hit) return false;
    }
    return true;
}

/* ------------------------------------------------------------------ the hub */
typedef struct {
    bool used;
    bool live;            /* caught up: gets events as blocks commit */
    void *sink;
    char addr[NODE_EVENTS_ADDR_MAX];
    node_events_filter f;
    uint64_t next_height; /* replay cursor; for a live subscriber: first height it wants */
    uint64_t last_h;      /* id of the last event written, for the drop notice */
    uint32_t last_i;
    bool wrote_any;
} sub;

struct node_events {
    node_events_config cfg;
    node_events_sink_ops ops;
    node_events_load_fn load;
    void *load_ctx;
    uint64_t tip;
    uint32_t n;
    uint64_t dropped;
    sub *subs; /* cfg.subs_max slots, allocated once */
    /* Reused scratch for one subscriber's share of one block. */
    char *buf;
    size_t len, cap;
};

/* Replay works in steps of this many blocks, then waits until the subscriber drained. */
#define REPLAY_STEP_BLOCKS 16

int node_events_new(const node_events_config *cfg, const node_events_sink_ops *ops, node_events_load_fn load,
                    void *load_ctx, uint64_t tip, node_events **out) {
    TEM_ASSERT(ops != NULL && ops->write && ops->queued && ops->end && ops->discard);
    TEM_ASSERT(load != NULL);
    node_events *h = tem_calloc(1, sizeof *h);
    if (h == NULL) return NODE_EVENTS_ENOMEM;
    if (cfg) h->cfg = *cfg;
    if (!h->cfg.subs_max) h->cfg.subs_max = NODE_EVENTS_SUBS_MAX_DEFAULT;
    if (!h->cfg.subs_per_addr_max) h->cfg.subs_per_addr_max = NODE_EVENTS_SUBS_PER_ADDR_DEFAULT;
    if (!h->cfg.buffer_bytes_max) h->cfg.buffer_bytes_max = NODE_EVENTS_BUFFER_BYTES_DEFAULT;
    if (!h->cfg.replay_blocks_max) h->cfg.replay_blocks_max = NODE_EVENTS_REPLAY_BLOCKS_DEFAULT;
    h->subs = tem_calloc(h->cfg.subs_max, sizeof *h->subs);
    if (h->subs == NULL) {
        tem_free(h);
        return NODE_EVENTS_ENOMEM;
    }
    h->ops = *ops;
    h->load = load;
    h->load_ctx = load_ctx;
    h->tip = tip;
    *out = h;
    return NODE_EVENTS_OK;
}

static bool buf_add(node_events *h, const char *s, size_t n) {
    if (h->len + n > h->cap) {
        size_t cap = h->cap ? h->cap : 4096;
        while (cap < h->len + n) cap *= 2;
        char *nb = tem_realloc(h->buf, cap);
        if (nb == NULL) return false;
        h->buf = nb;
        h->cap = cap;
    }
    memcpy(h->buf + h->len, s, n);
    h->len += n;
    return true;
}

static bool buf_addf(node_events *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool buf_addf(node_events *h, const char *fmt, ...) {
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    TEM_ASSERT(n >= 0 && (size_t)n < sizeof line);
    return buf_add(h, line, (size_t)n);
}

static sub *find(node_events *h, void *sink) {
    for (uint32_t i = 0; i < h->cfg.subs_max; i++)
        if (h->subs[i].used && h->subs[i].sink == sink) return &h->subs[i];
    return NULL;
}

static void release(node_events *h, sub *s) {
    TEM_ASSERT(s->used);
    TEM_ASSERT(h->n > 0);
    void *sink = s->sink;
    memset(s, 0, sizeof *s);
    h->n--;
    h->ops.end(sink);
}

/* Formats the events of `b` that s wants (skipping index <= skip_upto when skip) into h->buf.
 * Returns false on OOM. */
static bool format_block(node_events *h, sub *s, const node_events_batch *b, bool skip, uint32_t skip_upto) {
    for (uint32_t i = 0; i < b->n; i++) {
        const node_event *e = &b->ev[i];
        if (skip && e->index <= skip_upto) continue;
        if (!node_events_filter_match(&s->f, e)) continue;
        if (!buf_addf(h, "id: %llu:%u\nevent: %s\ndata: ", (unsigned long long)b->height, e->index,
                      node_events_kind_name(e->kind)) ||
            !buf_add(h, e->json, e->json_len) || !buf_add(h, "\n\n", 2))
            return false;
        s->last_h = b->height;
        s->last_i = e->index;
        s->wrote_any = true;
    }
    return true;
}

/* Writes h->buf to s. False when the client is gone (s is released). */
static bool flush_to(node_events *h, sub *s) {
    int rc = h->len ? h->ops.write(s->sink, h->buf, h->len) : 0;
    h->len = 0;
    if (rc != 0) {
        release(h, s);
        return false;
    }
    return true;
}

/* Replays up to REPLAY_STEP_BLOCKS blocks while the subscriber's queue is below half its
 * buffer, then waits for node_events_drained. Every step ends with a comment line so there is
 * always something whose sending completes, which is what calls node_events_drained again. */
static void pump(node_events *h, sub *s) {
    TEM_ASSERT(s->used);
    TEM_ASSERT(!s->live);
    uint32_t steps = 0;
    while (s->next_height <= h->tip) {
        if (steps == REPLAY_STEP_BLOCKS || h->ops.queued(s->sink) >= h->cfg.buffer_bytes_max / 2) {
            h->len = 0;
            if (!buf_addf(h, ": replay at %llu\n\n", (unsigned long long)s->next_height)) goto oom;
            (void)flush_to(h, s);
            return;
        }
        node_events_batch b;
        node_events_batch_init(&b, s->next_height);
        if (h->load(h->load_ctx, s->next_height, &b) != 0) {
            node_events_batch_free(&b);
            /* The stream ends with the reason; the client may retry from the same id. */
            h->len = 0;
            if (buf_addf(h, "event: error\ndata: {\"code\":\"EREPLAY\",\"error\":\"cannot read block %llu\"}\n\n",
                         (unsigned long long)s->next_height))
                (void)h->ops.write(s->sink, h->buf, h->len);
            h->len = 0;
            release(h, s);
            return;
        }
        h->len = 0;
        bool skip = s->f.resume && s->next_height == s->f.from_height;
        bool ok = format_block(h, s, &b, skip, s->f.after_index);
        node_events_batch_free(&b);
        if (!ok) goto oom;
        if (!flush_to(h, s)) return;
        s->next_height++;
        steps++;
    }
    s->live = true;
    return;
oom:
    h->len = 0;
    release(h, s);
}

static uint32_t count_addr(const node_events *h, const char *addr) {
    uint32_t c = 0;
    for (uint32_t i = 0; i < h->cfg.subs_max; i++)
        if (h->subs[i].used && strcmp(h->subs[i].addr, addr) == 0) c++;
    return c;
}

int node_events_check(const node_events *h, const char *addr, const node_events_filter *f) {
    if (h == NULL || f == NULL) return NODE_EVENTS_EINVAL;
    if (addr == NULL) addr = "";
    if (h->n >= h->cfg.subs_max) return NODE_EVENTS_EFULL;
    if (count_addr(h, addr) >= h->cfg.subs_per_addr_max) return NODE_EVENTS_ELIMIT;
    /* A replay costs a read of every block in it: only the last replay_blocks_max blocks. */
    if (f->from_height && f->from_height <= h->tip && h->tip - f->from_height >= h->cfg.replay_blocks_max)
        return NODE_EVENTS_EREPLAY;
    return NODE_EVENTS_OK;
}

int node_events_subscribe(node_events *h, const char *addr, const node_events_filter *f, void *sink) {
    if (sink == NULL) return NODE_EVENTS_EINVAL;
    int rc = node_events_check(h, addr, f);
    if (rc != NODE_EVENTS_OK) return rc;
    if (addr == NULL) addr = "";
    sub *s = NULL;
    for (uint32_t i = 0; i < h->cfg.subs_max && s == NULL; i++)
        if (!h->subs[i].used) s = &h->subs[i];
    TEM_ASSERT(s != NULL);
    h->len = 0;
    /* The preamble goes out at once so the client sees its headers and the tip it starts at. */
    if (!buf_addf(h, "retry: 2000\n: tem events, tip %llu\n\n", (unsigned long long)h->tip)) return NODE_EVENTS_ENOMEM;
    memset(s, 0, sizeof *s);
    s->used = true;
    s->sink = sink;
    snprintf(s->addr, sizeof s->addr, "%s", addr);
    s->f = *f;
    h->n++;
    if (!flush_to(h, s)) return NODE_EVENTS_OK; /* released: the client is already gone */
    if (f->from_height == 0) {
        s->live = true;
        s->next_height = h->tip + 1;
    } else if (f->from_height > h->tip) {
        s->live = true;
        s->next_height = f->from_height;
    } else {
        s->next_height = f->from_height;
        pump(h, s);
    }
    return NODE_EVENTS_OK;
}

static void drop(node_events *h, sub *s, size_t queued) {
    h->dropped++;
    /* The backlog is thrown away so a client that stopped reading does not keep it alive; the
     * client resumes from the last id it really received. */
    h->ops.discard(s->sink);
    h->len = 0;
    char last[48] = "";
    if (s->wrote_any) snprintf(last, sizeof last, "%llu:%u", (unsigned long long)s->last_h, s->last_i);
    if (buf_addf(h,
                 "event: dropped\ndata: {\"code\":\"ESLOW\",\"error\":\"subscriber too slow: %zu bytes "
                 "unread, limit %zu\",\"last_written_id\":\"%s\"}\n\n",
                 queued, h->cfg.buffer_bytes_max, last))
        (void)h->ops.write(s->sink, h->buf, h->len);
    h->len = 0;
    release(h, s);
}

void node_events_publish(node_events *h, const node_events_batch *b) {
    if (h == NULL) return;
    if (b->height > h->tip) h->tip = b->height;
    for (uint32_t i = 0; i < h->cfg.subs_max; i++) {
        sub *s = &h->subs[i];
        if (!s->used || !s->live) continue;
        size_t q = h->ops.queued(s->sink);
        if (q > h->cfg.buffer_bytes_max) {
            drop(h, s, q);
            continue;
        }
        h->len = 0;
        if (b->height < s->next_height) {
            /* Waiting for a later height (a resume point ahead of this node): the comment still
             * goes out, or a client that asked for a far height and left held its place for
             * ever (256 such connections, opened and closed, refused every subscriber 429
             * EFULL: found by an audit). */
            if (buf_addf(h, ": height %llu\n\n", (unsigned long long)b->height)) (void)flush_to(h, s);
            else release(h, s);
            continue;
        }
        bool skip = s->f.resume && b->height == s->f.from_height;
        if (!format_block(h, s, b, skip, s->f.after_index)) {
            h->len = 0;
            release(h, s);
            continue;
        }
        /* Nothing for this subscriber: a comment still tells it the chain moved and makes a
         * vanished client show up as a failed write. */
        if (h->len == 0 && !buf_addf(h, ": height %llu\n\n", (unsigned long long)b->height)) {
            release(h, s);
            continue;
        }
        if (!flush_to(h, s)) continue;
        s->next_height = b->height + 1;
    }
}

void node_events_drained(node_events *h, void *sink) {
    if (h == NULL) return;
    sub *s = find(h, sink);
    if (s && !s->live) pump(h, s);
}

void node_events_gone(node_events *h, void *sink) {
    if (h == NULL) return;
    sub *s = find(h, sink);
    if (s) release(h, s);
}

uint32_t node_events_count(const node_events *h) { return h ? h->n : 0; }
uint64_t node_events_dropped_total(const node_events *h) { return h ? h->dropped : 0; }

void node_events_free(node_events *h) {
    if (h == NULL) return;
    for (uint32_t i = 0; i < h->cfg.subs_max; i++)
        if (h->subs[i].used) release(h, &h->subs[i]);
    tem_free(h->subs);
    tem_free(h->buf);
    tem_free(h);
}
