/* sim.c: the deterministic cluster simulator. Runs n = 4 or 7 pBFT replicas (plus a Twin when the
 * seed asks for one) in one process over a simulated network driven by one seeded generator:
 * delays, drops, duplicates, reordering, partitions that heal, crashes that lose unsynced writes,
 * and Byzantine replicas. Each replica is driven by the same host as temd's (consensus/host.c);
 * this file implements the host's I/O in memory, with a disk whose writes complete a few
 * milliseconds later and are lost by a crash before then (the last delivered block too, unless
 * at a checkpoint height, as temd's pipelined store allows). After every delivery it checks
 * agreement and validity, on every vote an honest replica sends it checks that the replica never
 * signed another block for the same (view, height), and after the faults heal it checks that
 * every honest replica reaches a target height within a bound. */
#include "tests/sim/sim.h"

#include "consensus/host.h"

#include <sodium.h>
#include <stdarg.h>

/* ================================================================== parameters */
#define SIM_INST_MAX 8
#define SIM_TIMEOUT_MS 300
#define SIM_DOUBLINGS_MAX 4
#define SIM_LIVENESS_MS 60000
#define SIM_LIVENESS_BLOCKS 3
#define SIM_EVENTS_MAX 600000
#define SIM_FETCH_BATCH 16
#define SIM_REPLAY_KEEP 32
#define SIM_REG_SIZE 16384
#define SIM_MEMO_SIZE 65536
#define SIM_VOTES_SIZE 65536

/* Byzantine behaviours (bits). */
enum {
    B_SILENT = 1,
    B_EQUIVOCATE = 2,
    B_CONFLICT = 4,
    B_FORGE = 8,
    B_REPLAY = 16,
    B_MALFORMED = 32,
    B_BADPROP = 64,
    B_LIAR = 128,
};

/* ================================================================== seeded generator */
typedef struct {
    uint64_t s;
} rng_t;

static uint64_t rng_next(rng_t *g) {
    /* splitmix64: one 64-bit state, good enough to drive choices, and trivially replayable. */
    uint64_t z = (g->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static uint64_t rng_below(rng_t *g, uint64_t n) { return n ? rng_next(g) % n : 0; }
static bool rng_pct(rng_t *g, uint32_t pct) { return rng_below(g, 1000) < pct; } /* per mille */

/* ================================================================== keys (fixed per index) */
static uint8_t g_pub[PBFT_REPLICAS_MAX][32], g_sec[PBFT_REPLICAS_MAX][64];
static bool g_keys_ready;

static void keys_init(void) {
    if (g_keys_ready) return;
    TEM_ASSERT(sodium_init() >= 0);
    for (int i = 0; i < PBFT_REPLICAS_MAX; i++) {
        uint8_t seed[32];
        char tag[32];
        snprintf(tag, sizeof tag, "tem-sim-validator-%d", i);
        ledger_sha256(seed, tag, strlen(tag));
        TEM_ASSERT(crypto_sign_seed_keypair(g_pub[i], g_sec[i], seed) == 0);
    }
    g_keys_ready = true;
}

static const uint8_t g_genesis[32] = {0x7e, 0x5a, 0x01};

/* ================================================================== events */
enum {
    E_MSG = 1,
    E_TIMER,
    E_PROPOSE,
    E_VALIDATE,
    E_FETCHED,
    E_SYNC,
    E_CRASH,
    E_RESTART,
    E_PARTITION,
    E_HEAL,
    E_POWER_CUT,
};

typedef struct {
    uint64_t t, seq;
    int kind;
    int inst;
    uint32_t inc;
    int from_key;
    int to_key;
    uint64_t a, b;
    uint8_t hash[32];
    uint8_t *data;
    size_t len;
    uint8_t *data2;
    size_t len2;
} sim_ev;

typedef struct {
    uint8_t hash[32];
    uint8_t *block;
    size_t len;
    uint8_t *cert;
    size_t cert_len;
} sim_blk;

struct sim;

typedef struct {
    struct sim *s; /* the host's I/O context is the instance */
    int ii;
    int key;
    uint32_t byz;  /* B_* bits; 0 = honest code, honest key */
    bool twin;     /* one of two instances sharing a key */
    uint64_t vis;  /* keys this instance can exchange messages with */
    bool up;
    uint32_t inc;
    pbft_replica r;
    bool r_live;
    host h;
    bool h_live;
    sim_blk *chain;
    size_t chain_len, chain_cap;
    size_t boot_len; /* chain_len when this incarnation started: all of it was on disk */
    uint8_t *record;
    size_t record_len;
    uint64_t last_sync_t;
    uint8_t *replay[SIM_REPLAY_KEEP];
    size_t replay_len[SIM_REPLAY_KEEP];
    uint32_t replay_n;
    uint64_t nonce;
    uint32_t crashes;
    /* The equivocations this (Byzantine) primary made: the other block per (view, height). */
    struct {
        uint64_t view, height;
        uint8_t alt[32];
    } eq[16];
    uint32_t eq_n;
} sim_inst;

typedef struct {
    uint64_t key;
    uint64_t height;
    bool used, valid;
} sim_reg;

typedef struct {
    uint8_t key[16];
    uint8_t used, ok;
} sim_memo;

/* A vote an honest replica sent: (key, kind, view, height) -> hash. */
typedef struct {
    bool used;
    uint8_t key, kind;
    uint64_t view, height;
    uint8_t hash[32];
} sim_vote;

typedef struct sim {
    const sim_options *opt;
    sim_result *res;
    rng_t rng;
    uint32_t n, f, q, k;
    uint32_t ninst;
    sim_inst inst[SIM_INST_MAX];
    uint64_t now, seq;
    sim_ev *heap;
    size_t heap_n, heap_cap;
    /* network */
    uint32_t drop_pm, dup_pm, delay_max, delay_min;
    uint64_t part_mask; /* keys on side A of the partition; 0 = none */
    bool healed;
    uint64_t heal_t, target;
    uint64_t block_ms;
    /* checks */
    uint8_t (*committed)[32];
    uint64_t committed_cap;
    uint64_t max_committed;
    sim_reg *reg;
    sim_memo *memo;
    sim_vote *votes;
    uint32_t faults;
    uint64_t byz_keys; /* keys under Byzantine control (incl. twins) */
    uint32_t vote_crashes, vote_crash_pm; /* crashes at kill points around a vote's write */
    uint64_t power_cut_height; /* a power cut follows the first honest delivery of it (0 = none) */
    uint64_t refused;                     /* events the host refused (EFULL): pushed back */
} sim_t;

static void fail(sim_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(sim_t *s, const char *fmt, ...) {
    if (s->res->failed) return;
    s->res->failed = true;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->res->reason, sizeof s->res->reason, fmt, ap);
    va_end(ap);
    if (s->opt->trace) printf("t=%llu VIOLATION %s\n", (unsigned long long)s->now, s->res->reason);
}

#define TRACE(s, ...)                                                                              \
    do {                                                                                           \
        if ((s)->opt->trace) {                                                                     \
            printf("t=%llu ", (unsigned long long)(s)->now);                                      \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
        }                                                                                          \
    } while (0)

/* ---------------------------------------------------------------- heap */
static bool ev_less(const sim_ev *a, const sim_ev *b) {
    return a->t < b->t || (a->t == b->t && a->seq < b->seq);
}

static sim_ev *ev_new(sim_t *s, int kind, uint64_t t) {
    if (s->heap_n == s->heap_cap) {
        size_t cap = s->heap_cap ? s->heap_cap * 2 : 1024;
        sim_ev *h = tem_realloc(s->heap, cap * sizeof *h);
        TEM_ASSERT(h != NULL);
        s->heap = h;
        s->heap_cap = cap;
    }
    sim_ev *e = &s->heap[s->heap_n];
    memset(e, 0, sizeof *e);
    e->kind = kind;
    e->t = t;
    e->seq = s->seq++;
    e->inst = -1;
    return e;
}

/* Pushes the event ev_new filled in at the end of the heap. */
static void ev_push(sim_t *s) {
    size_t i = s->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!ev_less(&s->heap[i], &s->heap[p])) break;
        sim_ev tmp = s->heap[i];
        s->heap[i] = s->heap[p];
        s->heap[p] = tmp;
        i = p;
    }
}

static bool ev_pop(sim_t *s, sim_ev *out) {
    if (s->heap_n == 0) return false;
    *out = s->heap[0];
    s->heap[0] = s->heap[--s->heap_n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < s->heap_n && ev_less(&s->heap[l], &s->heap[m])) m = l;
        if (r < s->heap_n && ev_less(&s->heap[r], &s->heap[m])) m = r;
        if (m == i) break;
        sim_ev tmp = s->heap[i];
        s->heap[i] = s->heap[m];
        s->heap[m] = tmp;
        i = m;
    }
    return true;
}

static uint8_t *dup_bytes(const uint8_t *p, size_t n) {
    uint8_t *c = tem_malloc(n ? n : 1);
    TEM_ASSERT(c != NULL);
    if (n) memcpy(c, p, n);
    return c;
}

/* ================================================================== blocks and the registry */
/* A simulated block: "SIMB" | u64 height | parent[32] | u32 proposer key | u32 instance |
 * u64 nonce | u8 valid. Its hash is SHA-256 of the bytes. */
#define SIM_BLOCK_BYTES (4 + 8 + 32 + 4 + 4 + 8 + 1)

static int sim_hash(void *ctx, const uint8_t *b, size_t len, uint8_t out[32]) {
    (void)ctx;
    if (len != SIM_BLOCK_BYTES || memcmp(b, "SIMB", 4) != 0) return -1;
    ledger_sha256(out, b, len);
    return 0;
}

static void block_make(uint8_t out[SIM_BLOCK_BYTES], uint64_t height, const uint8_t parent[32],
                       uint32_t key, uint32_t inst, uint64_t nonce, bool valid) {
    memcpy(out, "SIMB", 4);
    tem_put_u64le(out + 4, height);
    memcpy(out + 12, parent, 32);
    tem_put_u32le(out + 44, key);
    tem_put_u32le(out + 48, inst);
    tem_put_u64le(out + 52, nonce);
    out[60] = valid ? 1 : 0;
}

static sim_reg *reg_slot(sim_t *s, const uint8_t hash[32]) {
    uint64_t k = tem_get_u64le(hash);
    for (uint64_t i = 0; i < SIM_REG_SIZE; i++) {
        sim_reg *e = &s->reg[(k + i) % SIM_REG_SIZE];
        if (!e->used || e->key == k) return e;
    }
    return NULL;
}

static void reg_add(sim_t *s, const uint8_t hash[32], uint64_t height, bool valid) {
    sim_reg *e = reg_slot(s, hash);
    TEM_ASSERT(e != NULL);
    e->used = true;
    e->key = tem_get_u64le(hash);
    e->height = height;
    e->valid = valid;
}

/* ================================================================== memoised verification */
static int sim_verify(void *ctx, const uint8_t pub[32], const uint8_t *msg, size_t len,
                      const uint8_t sig[64]) {
    sim_t *s = ctx;
    uint8_t k[32];
    const void *parts[] = {pub, msg, sig};
    size_t lens[] = {32, len, 64};
    ledger_sha256_parts(k, 3, parts, lens);
    sim_memo *m = &s->memo[tem_get_u64le(k) % SIM_MEMO_SIZE];
    if (m->used && memcmp(m->key, k + 8, 16) == 0) return m->ok ? 0 : -1;
    int rc = ledger_ed_verify(pub, msg, len, sig);
    memcpy(m->key, k + 8, 16);
    m->used = 1;
    m->ok = rc == 0;
    return rc;
}

/* ================================================================== network */
static bool link_ok(sim_t *s, const sim_inst *a, const sim_inst *b) {
    if (!((a->vis >> b->key) & 1) || !((b->vis >> a->key) & 1)) return false;
    if (s->part_mask) {
        bool sa = (s->part_mask >> a->key) & 1, sb = (s->part_mask >> b->key) & 1;
        if (sa != sb) return false;
    }
    return true;
}

static uint64_t net_delay(sim_t *s) {
    return s->delay_min + rng_below(&s->rng, s->delay_max - s->delay_min + 1);
}

/* Sends bytes as instance `from` (claiming key `sender_key`) to every instance of key `to`. */
static void net_send_key(sim_t *s, int from, int to_key, const uint8_t *msg, size_t len) {
    const sim_inst *a = &s->inst[from];
    for (uint32_t i = 0; i < s->ninst; i++) {
        const sim_inst *b = &s->inst[i];
        if ((int)i == from || b->key != to_key) continue;
        if (!link_ok(s, a, b)) continue;
        if (!s->healed && rng_pct(&s->rng, s->drop_pm)) continue;
        int copies = (s->dup_pm && rng_pct(&s->rng, s->dup_pm)) ? 2 : 1;
        for (int c = 0; c < copies; c++) {
            sim_ev *e = ev_new(s, E_MSG, s->now + net_delay(s));
            e->inst = (int)i;
            e->inc = b->inc;
            e->from_key = a->key;
            e->data = dup_bytes(msg, len);
            e->len = len;
            ev_push(s);
        }
    }
}

static void byz_send(sim_t *s, int from, int to_key, const uint8_t *msg, size_t len);

/* A message leaving instance `from` for `to` (PBFT_TO_ALL = every other key). */
static void net_out(sim_t *s, int from, uint32_t to, const uint8_t *msg, size_t len) {
    sim_inst *a = &s->inst[from];
    for (uint32_t k = 0; k < s->n; k++) {
        if ((int)k == a->key) continue;
        if (to != PBFT_TO_ALL && to != k) continue;
        if (a->byz)
            byz_send(s, from, (int)k, msg, len);
        else
            net_send_key(s, from, (int)k, msg, len);
    }
}

/* ================================================================== Byzantine behaviour */
static int sign_pack(sim_t *s, uint32_t key, Tem__V1__PbftMessage *m, uint8_t **out, size_t *len) {
    (void)s;
    m->sender = key;
    return pbft_msg_sign_pack(g_genesis, g_sec[key], m, out, len);
}

static void send_vote(sim_t *s, int from, int to_key, uint32_t as_key, int kind, uint64_t view,
                      uint64_t height, const uint8_t hash[32], bool bad_sig) {
    Tem__V1__PbftMessage m = TEM__V1__PBFT_MESSAGE__INIT;
    Tem__V1__PbftPrepare p = TEM__V1__PBFT_PREPARE__INIT;
    Tem__V1__PbftCommit c = TEM__V1__PBFT_COMMIT__INIT;
    if (kind == TEM__V1__PBFT_MESSAGE__KIND_PREPARE) {
        p.view = view;
        p.height = height;
        p.block_hash.data = (uint8_t *)hash;
        p.block_hash.len = 32;
        m.prepare = &p;
    } else {
        c.view = view;
        c.height = height;
        c.block_hash.data = (uint8_t *)hash;
        c.block_hash.len = 32;
        m.commit = &c;
    }
    m.kind_case = kind;
    uint8_t *buf;
    size_t len;
    /* A forged vote is signed with the forger's own key but names another sender. */
    uint32_t signer = bad_sig ? (uint32_t)s->inst[from].key : as_key;
    if (sign_pack(s, signer, &m, &buf, &len) != PBFT_OK) return;
    if (bad_sig) {
        m.sender = as_key;
        Tem__V1__PbftMessage *d = tem__v1__pbft_message__unpack(&ledger_pb_allocator, len, buf);
        if (d) {
            d->sender = as_key;
            size_t l2 = tem__v1__pbft_message__get_packed_size(d);
            uint8_t *b2 = tem_malloc(l2);
            TEM_ASSERT(b2 != NULL);
            tem__v1__pbft_message__pack(d, b2);
            tem__v1__pbft_message__free_unpacked(d, &ledger_pb_allocator);
            tem_free(buf);
            buf = b2;
            len = l2;
        }
    }
    net_send_key(s, from, to_key, buf, len);
    tem_free(buf);
}

static void send_pp(sim_t *s, int from, int to_key, uint32_t as_key, uint64_t view, uint64_t height,
                    const uint8_t *block, size_t blen, bool bad_sig) {
    uint8_t h[32];
    ledger_sha256(h, block, blen);
    Tem__V1__PbftMessage m = TEM__V1__PBFT_MESSAGE__INIT;
    Tem__V1__PbftPrePrepare p = TEM__V1__PBFT_PRE_PREPARE__INIT;
    p.view = view;
    p.height = height;
    p.block_hash.data = h;
    p.block_hash.len = 32;
    p.block.data = (uint8_t *)block;
    p.block.len = blen;
    m.kind_case = TEM__V1__PBFT_MESSAGE__KIND_PRE_PREPARE;
    m.pre_prepare = &p;
    uint8_t *buf;
    size_t len;
    uint32_t signer = bad_sig ? (uint32_t)s->inst[from].key : as_key;
    if (sign_pack(s, signer, &m, &buf, &len) != PBFT_OK) return;
    if (bad_sig) {
        Tem__V1__PbftMessage *d = tem__v1__pbft_message__unpack(&ledger_pb_allocator, len, buf);
        TEM_ASSERT(d != NULL);
        d->sender = as_key;
        size_t l2 = tem__v1__pbft_message__get_packed_size(d);
        uint8_t *b2 = tem_malloc(l2);
        TEM_ASSERT(b2 != NULL);
        tem__v1__pbft_message__pack(d, b2);
        tem__v1__pbft_message__free_unpacked(d, &ledger_pb_allocator);
        tem_free(buf);
        buf = b2;
        len = l2;
    }
    net_send_key(s, from, to_key, buf, len);
    tem_free(buf);
}

/* The alternative block an equivocating primary shows half the cluster at one height. */
static void alt_block(sim_t *s, int from, const uint8_t *orig, uint8_t out[SIM_BLOCK_BYTES],
                      uint8_t hash[32], bool registered) {
    memcpy(out, orig, SIM_BLOCK_BYTES);
    tem_put_u64le(out + 52, tem_get_u64le(orig + 52) ^ 0xa17a17ull ^ (registered ? 0 : 0xf00d));
    tem_put_u32le(out + 48, (uint32_t)from + 100);
    ledger_sha256(hash, out, SIM_BLOCK_BYTES);
    if (registered) reg_add(s, hash, tem_get_u64le(out + 4), true);
}

/* Splits the cluster for one equivocation: side A is the next view's primary alone, side B
 * everyone else. That primary then builds the next NEW-VIEW holding the minority block's
 * prepared certificate, the sharpest test of how it picks among certificates. */
static uint32_t g_side_n;
static bool side_b(uint64_t view, uint64_t height, int key) {
    (void)height;
    return (uint64_t)key != (view + 1) % g_side_n;
}

static void byz_send(sim_t *s, int from, int to_key, const uint8_t *msg, size_t len) {
    sim_inst *a = &s->inst[from];
    if (a->byz & B_SILENT) return;
    Tem__V1__PbftMessage *m = tem__v1__pbft_message__unpack(&ledger_pb_allocator, len, msg);
    bool sent = false;
    if (m && (a->byz & B_EQUIVOCATE) && m->kind_case == TEM__V1__PBFT_MESSAGE__KIND_PRE_PREPARE &&
        m->pre_prepare->block.len == SIM_BLOCK_BYTES) {
        const Tem__V1__PbftPrePrepare *p = m->pre_prepare;
        if (side_b(p->view, p->height, to_key)) {
            uint8_t alt[SIM_BLOCK_BYTES], h[32];
            alt_block(s, from, p->block.data, alt, h, true);
            bool known = false;
            for (uint32_t i = 0; i < 16 && i < a->eq_n; i++)
                if (a->eq[i].view == p->view && a->eq[i].height == p->height) known = true;
            if (!known) {
                uint32_t i = a->eq_n++ % 16;
                a->eq[i].view = p->view;
                a->eq[i].height = p->height;
                memcpy(a->eq[i].alt, h, 32);
            }
            send_pp(s, from, to_key, (uint32_t)a->key, p->view, p->height, alt, sizeof alt, false);
            sent = true;
        }
        /* Its COMMIT comes at once, before any prepare: the alternative block to the first
         * replica of side B only, the original to side A. */
        bool first = true;
        for (int k = 0; k < to_key; k++)
            if (k != a->key && side_b(p->view, p->height, k)) first = false;
        if (!side_b(p->view, p->height, to_key))
            send_vote(s, from, to_key, (uint32_t)a->key, TEM__V1__PBFT_MESSAGE__KIND_COMMIT, p->view,
                      p->height, p->block_hash.data, false);
        else if (first)
            for (uint32_t i = 0; i < 16 && i < a->eq_n; i++)
                if (a->eq[i].view == p->view && a->eq[i].height == p->height)
                    send_vote(s, from, to_key, (uint32_t)a->key,
                              TEM__V1__PBFT_MESSAGE__KIND_COMMIT, p->view, p->height,
                              a->eq[i].alt, false);
    }
    if (m && (a->byz & (B_EQUIVOCATE | B_CONFLICT)) &&
        (m->kind_case == TEM__V1__PBFT_MESSAGE__KIND_PREPARE ||
         m->kind_case == TEM__V1__PBFT_MESSAGE__KIND_COMMIT)) {
        uint64_t view = m->kind_case == TEM__V1__PBFT_MESSAGE__KIND_PREPARE ? m->prepare->view
                                                                             : m->commit->view;
        uint64_t height = m->kind_case == TEM__V1__PBFT_MESSAGE__KIND_PREPARE ? m->prepare->height
                                                                               : m->commit->height;
        const uint8_t *eq_alt = NULL;
        for (uint32_t i = 0; i < 16 && i < a->eq_n; i++)
            if (a->eq[i].view == view && a->eq[i].height == height) eq_alt = a->eq[i].alt;
        bool commit = m->kind_case == TEM__V1__PBFT_MESSAGE__KIND_COMMIT;
        if (eq_alt && side_b(view, height, to_key)) {
            /* Back the block this side was shown; hand the commit to one replica of the side
             * only, so the block commits there and nowhere else. */
            bool first = true;
            for (int k = 0; k < to_key; k++)
                if (k != a->key && side_b(view, height, k)) first = false;
            if (!commit || first)
                send_vote(s, from, to_key, (uint32_t)a->key, m->kind_case, view, height, eq_alt,
                          false);
            sent = true;
        } else if (side_b(view, height, to_key) && rng_pct(&s->rng, 700)) {
            /* Vote for the other block this side may have seen; when no such block exists
             * the vote names a hash nobody proposed. */
            uint8_t alt[SIM_BLOCK_BYTES], h[32];
            sim_inst *self = a;
            if (self->chain_len + 1 >= height && height >= 1) {
                uint8_t parent[32];
                if (height == 1)
                    memcpy(parent, g_genesis, 32);
                else if (self->chain_len >= height - 1)
                    memcpy(parent, self->chain[height - 2].hash, 32);
                else
                    memset(parent, 0, 32);
                uint8_t base[SIM_BLOCK_BYTES];
                block_make(base, height, parent, (uint32_t)a->key, (uint32_t)from,
                           view * 1000 + height, true);
                alt_block(s, from, base, alt, h, false);
            } else {
                rng_t g = {view ^ height};
                for (int i = 0; i < 32; i++) h[i] = (uint8_t)rng_next(&g);
            }
            send_vote(s, from, to_key, (uint32_t)a->key, m->kind_case, view, height, h, false);
            sent = true;
        } else if ((a->byz & B_CONFLICT) && m->kind_case == TEM__V1__PBFT_MESSAGE__KIND_COMMIT &&
                   rng_pct(&s->rng, 300)) {
            sent = true; /* withholds its commit from this peer */
        }
    }
    if (!sent) net_send_key(s, from, to_key, msg, len);

    if (m && (a->byz & B_FORGE) && rng_pct(&s->rng, 300)) {
        /* A whole forged quorum for a block nobody proposed: pre-prepare in the primary's name
         * and prepares and commits in everyone's, all signed with the forger's own key. */
        uint64_t view = 0, height = 0;
        if (m->kind_case == TEM__V1__PBFT_MESSAGE__KIND_PREPARE) {
            view = m->prepare->view;
            height = m->prepare->height;
        } else if (m->kind_case == TEM__V1__PBFT_MESSAGE__KIND_COMMIT) {
            view = m->commit->view;
            height = m->commit->height;
        } else if (m->kind_case == TEM__V1__PBFT_MESSAGE__KIND_PRE_PREPARE) {
            view = m->pre_prepare->view;
            height = m->pre_prepare->height;
        }
        if (height > 0) {
            uint8_t parent[32], blk[SIM_BLOCK_BYTES], h[32];
            if (height == 1)
                memcpy(parent, g_genesis, 32);
            else if (a->chain_len >= height - 1)
                memcpy(parent, a->chain[height - 2].hash, 32);
            else
                memset(parent, 0xee, 32);
            block_make(blk, height, parent, 999, (uint32_t)from, rng_next(&s->rng), true);
            ledger_sha256(h, blk, sizeof blk);
            uint32_t primary = pbft_primary(view, s->n);
            /* Signed by the forger as the real primary of the view, it is a genuine (if
             * Byzantine) proposal, not a forgery. */
            if (primary == (uint32_t)a->key) reg_add(s, h, height, true);
            send_pp(s, from, to_key, primary, view, height, blk, sizeof blk,
                    primary != (uint32_t)a->key);
            for (uint32_t k = 0; k < s->n; k++) {
                if ((int)k == to_key) continue;
                bool own = k == (uint32_t)a->key;
                if (k != primary)
                    send_vote(s, from, to_key, k, TEM__V1__PBFT_MESSAGE__KIND_PREPARE, view, height,
                              h, !own);
                send_vote(s, from, to_key, k, TEM__V1__PBFT_MESSAGE__KIND_COMMIT, view, height, h,
                          !own);
            }
        }
    }
    if ((a->byz & B_REPLAY) && a->replay_n > 0 && rng_pct(&s->rng, 400)) {
        uint32_t i = (uint32_t)rng_below(&s->rng, a->replay_n < SIM_REPLAY_KEEP ? a->replay_n
                                                                                 : SIM_REPLAY_KEEP);
        net_send_key(s, from, to_key, a->replay[i], a->replay_len[i]);
    }
    if ((a->byz & B_MALFORMED) && rng_pct(&s->rng, 300)) {
        uint8_t *bad = dup_bytes(msg, len);
        size_t blen = len;
        switch (rng_below(&s->rng, 4)) {
        case 0: /* truncated */
            blen = rng_below(&s->rng, len);
            break;
        case 1: /* a flipped bit anywhere */
            bad[rng_below(&s->rng, len)] ^= (uint8_t)(1u << rng_below(&s->rng, 8));
            break;
        case 2: /* random bytes */
            for (size_t i = 0; i < len; i++) bad[i] = (uint8_t)rng_next(&s->rng);
            break;
        default: /* a different sender index, possibly out of range */
            bad[1] = (uint8_t)rng_below(&s->rng, 80);
            break;
        }
        net_send_key(s, from, to_key, bad, blen ? blen : 1);
        tem_free(bad);
    }
    if (m) tem__v1__pbft_message__free_unpacked(m, &ledger_pb_allocator);
}

/* ================================================================== replicas */
static void inst_record_replay(sim_inst *a, const uint8_t *msg, size_t len) {
    uint32_t i = a->replay_n % SIM_REPLAY_KEEP;
    tem_free(a->replay[i]);
    a->replay[i] = dup_bytes(msg, len);
    a->replay_len[i] = len;
    a->replay_n++;
}

static const host_io sim_io;

static void inst_boot(sim_t *s, int ii) {
    sim_inst *a = &s->inst[ii];
    pbft_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.n = s->n;
    cfg.self = (uint32_t)a->key;
    for (uint32_t i = 0; i < s->n; i++) memcpy(cfg.pubkeys[i], g_pub[i], 32);
    memcpy(cfg.secret, g_sec[a->key], 64);
    memcpy(cfg.genesis_hash, g_genesis, 32);
    cfg.checkpoint_interval = s->k;
    cfg.view_timeout_ms = SIM_TIMEOUT_MS;
    cfg.view_timeout_doublings_max = SIM_DOUBLINGS_MAX;
    cfg.hash = sim_hash;
    cfg.verify = sim_verify;
    cfg.ctx = s;
    cfg.planted_bug = s->opt->bug;
    if (a->chain_len > 0) {
        const sim_blk *b = &a->chain[a->chain_len - 1];
        cfg.start_height = a->chain_len;
        memcpy(cfg.start_hash, b->hash, 32);
        cfg.start_cert = b->cert;
        cfg.start_cert_len = b->cert_len;
    } else {
        memcpy(cfg.start_hash, g_genesis, 32);
    }
    int rc = pbft_replica_init(&a->r, &cfg);
    if (rc != PBFT_OK) {
        fail(s, "instance %d: init failed: %s", ii, pbft_strerror(rc));
        return;
    }
    a->r_live = true;
    a->boot_len = a->chain_len;
    if (a->record) {
        rc = pbft_replica_restore(&a->r, a->record, a->record_len);
        if (rc != PBFT_OK) fail(s, "instance %d: restore failed: %s", ii, pbft_strerror(rc));
    }
    a->s = s;
    a->ii = ii;
    host_io io = sim_io;
    io.ctx = a;
    rc = host_init(&a->h, &a->r, &io);
    if (rc != PBFT_OK) {
        fail(s, "instance %d: host init failed: %s", ii, pbft_strerror(rc));
        return;
    }
    a->h_live = true;
    a->up = true;
    rc = host_start(&a->h);
    if (rc != PBFT_OK) fail(s, "instance %d: start failed: %s", ii, pbft_strerror(rc));
}

static void inst_crash(sim_t *s, int ii) {
    sim_inst *a = &s->inst[ii];
    if (!a->up) return;
    TRACE(s, "i%d crash (view %llu, delivered %llu)", ii, (unsigned long long)a->r.view,
          (unsigned long long)a->r.delivered);
    a->up = false;
    a->inc++; /* every pending timer, sync and held message of the old incarnation is lost */
    a->crashes++;
    /* The host goes with the process: its queued events, a write in flight and everything it
     * held back behind that write are lost. */
    host_free(&a->h);
    a->h_live = false;
    pbft_replica_free(&a->r);
    a->r_live = false;
    s->faults |= SIM_F_CRASH;
    /* temd may commit a block to its store after the next vote record (a writer thread; issue
     * 15), except at checkpoint heights: the crash loses the last delivered block unless it is
     * at one. The replica restarts a height lower and must recover that block from its record.
     * Only a block delivered by this incarnation can be lost: what the store held when the
     * process started had been committed, and an apply waits for the previous commit. */
    if (a->chain_len > a->boot_len && a->chain_len % s->k != 0) {
        sim_blk *b = &a->chain[--a->chain_len];
        tem_free(b->block);
        tem_free(b->cert);
        TRACE(s, "i%d lost block %zu, not yet on disk", ii, a->chain_len + 1);
    }
}

/* ================================================================== checks */
static bool cert_ok(sim_t *s, const uint8_t *cert, size_t len, uint64_t height,
                    const uint8_t hash[32]) {
    Tem__V1__CommitCertificate *c =
        tem__v1__commit_certificate__unpack(&ledger_pb_allocator, len, cert);
    if (!c) return false;
    bool ok = c->height == height && c->block_hash.len == 32 &&
              memcmp(c->block_hash.data, hash, 32) == 0 && c->n_sigs >= s->q;
    uint64_t seen = 0;
    uint8_t d[32];
    ledger_commit_digest(g_genesis, c->view, height, hash, d);
    for (size_t i = 0; ok && i < c->n_sigs; i++) {
        uint32_t v = c->sigs[i]->validator;
        if (v >= s->n || (seen >> v) & 1 || c->sigs[i]->sig.len != 64) {
            ok = false;
            break;
        }
        seen |= 1ull << v;
        if (sim_verify(s, g_pub[v], d, 32, c->sigs[i]->sig.data) != 0) ok = false;
    }
    tem__v1__commit_certificate__free_unpacked(c, &ledger_pb_allocator);
    return ok;
}

/* Whether a Byzantine primary showed this block to one side only at height h. */
static bool equivocated(const sim_t *s, uint64_t h, const uint8_t hash[32]) {
    for (uint32_t i = 0; i < s->ninst; i++) {
        const sim_inst *b = &s->inst[i];
        for (uint32_t k = 0; k < 16 && k < b->eq_n; k++)
            if (b->eq[k].height == h && memcmp(b->eq[k].alt, hash, 32) == 0) return true;
    }
    return false;
}

static void on_deliver(sim_t *s, int ii, const pbft_action *act) {
    sim_inst *a = &s->inst[ii];
    uint64_t h = act->height;
    TRACE(s, "i%d DELIVER h=%llu v=%llu %02x%02x%02x%02x", ii, (unsigned long long)h,
          (unsigned long long)act->view, act->block_hash[0], act->block_hash[1],
          act->block_hash[2], act->block_hash[3]);
    if (h != a->chain_len + 1) {
        fail(s, "instance %d delivered height %llu after %zu", ii, (unsigned long long)h,
             a->chain_len);
        return;
    }
    if (a->chain_len == a->chain_cap) {
        size_t cap = a->chain_cap ? a->chain_cap * 2 : 64;
        sim_blk *c = tem_realloc(a->chain, cap * sizeof *c);
        TEM_ASSERT(c != NULL);
        a->chain = c;
        a->chain_cap = cap;
    }
    sim_blk *b = &a->chain[a->chain_len++];
    memcpy(b->hash, act->block_hash, 32);
    b->block = dup_bytes(act->msg, act->msg_len);
    b->len = act->msg_len;
    b->cert = dup_bytes(act->cert, act->cert_len);
    b->cert_len = act->cert_len;
    if (h > s->res->max_height) s->res->max_height = h;

    bool honest = !(s->byz_keys >> a->key & 1);
    if (!honest) return;
    /* Validity: proposed by someone, valid, on the replica's own previous block, certified. */
    uint8_t hh[32];
    if (sim_hash(NULL, b->block, b->len, hh) != 0 || memcmp(hh, b->hash, 32) != 0) {
        fail(s, "validity: instance %d delivered bytes that do not hash to the block at %llu", ii,
             (unsigned long long)h);
        return;
    }
    sim_reg *e = reg_slot(s, b->hash);
    if (!e || !e->used) {
        fail(s, "validity: instance %d delivered a block nobody proposed at height %llu", ii,
             (unsigned long long)h);
        return;
    }
    if (!e->valid || e->height != h || tem_get_u64le(b->block + 4) != h) {
        fail(s, "validity: instance %d delivered an invalid block at height %llu", ii,
             (unsigned long long)h);
        return;
    }
    const uint8_t *parent = h == 1 ? g_genesis : a->chain[h - 2].hash;
    if (memcmp(b->block + 12, parent, 32) != 0) {
        fail(s, "validity: instance %d delivered a block at %llu not built on its parent", ii,
             (unsigned long long)h);
        return;
    }
    if (!cert_ok(s, b->cert, b->cert_len, h, b->hash)) {
        fail(s, "validity: instance %d delivered height %llu with an invalid certificate", ii,
             (unsigned long long)h);
        return;
    }
    /* Agreement. */
    if (h > s->committed_cap) {
        uint64_t cap = s->committed_cap * 2;
        while (cap < h) cap *= 2;
        uint8_t(*c)[32] = tem_realloc(s->committed, cap * 32);
        TEM_ASSERT(c != NULL);
        memset(c + s->committed_cap, 0, (cap - s->committed_cap) * 32);
        s->committed = c;
        s->committed_cap = cap;
    }
    static const uint8_t zero[32];
    if (memcmp(s->committed[h - 1], zero, 32) == 0) {
        memcpy(s->committed[h - 1], b->hash, 32);
        if (h > s->max_committed) s->max_committed = h;
    } else if (memcmp(s->committed[h - 1], b->hash, 32) != 0) {
        fail(s, "agreement: honest replicas committed different blocks at height %llu "
                "(instance %d)", (unsigned long long)h, ii);
    }
    /* Kill point: a power cut right after a delivery, while temd may still be writing the
     * block (every honest replica loses what it delivered in this incarnation). */
    if (!s->healed && h == s->power_cut_height) {
        s->power_cut_height = 0;
        (void)ev_new(s, E_POWER_CUT, s->now + rng_below(&s->rng, 3));
        ev_push(s);
    }
    /* Kill point: the lone replica an equivocating primary let commit its other block crashes
     * at once and stays down past the next view change. That block is then decided but known
     * only from the others' prepared certificates, which the next NEW-VIEW must re-propose. */
    if (!s->healed && !a->twin && equivocated(s, h, b->hash) && rng_pct(&s->rng, 500)) {
        TRACE(s, "i%d crash right after committing an equivocated block", ii);
        sim_ev *c = ev_new(s, E_CRASH, s->now + 1);
        c->inst = ii;
        ev_push(s);
        c = ev_new(s, E_RESTART, s->now + 2 * SIM_TIMEOUT_MS + rng_below(&s->rng, 600));
        c->inst = ii;
        ev_push(s);
    }
}

/* ================================================================== actions */
static void request_blocks(sim_t *s, int ii, uint64_t from) {
    sim_inst *a = &s->inst[ii];
    /* The node asks one peer at random; the answer may never come (down, cut off, or behind),
     * which the replica's fetch timer covers. */
    int peer = (int)rng_below(&s->rng, s->ninst);
    sim_inst *b = &s->inst[peer];
    TRACE(s, "i%d REQUEST_BLOCKS from %llu -> i%d", ii, (unsigned long long)from, peer);
    if (peer == ii || !b->up || !link_ok(s, a, b)) return;
    uint64_t t = s->now + net_delay(s);
    if (b->byz & B_LIAR) {
        s->faults |= SIM_F_FETCH_LIAR;
        /* A forged block with a certificate of garbage signatures. */
        uint8_t blk[SIM_BLOCK_BYTES], h[32], parent[32];
        if (from == 1)
            memcpy(parent, g_genesis, 32);
        else if (a->chain_len >= from - 1)
            memcpy(parent, a->chain[from - 2].hash, 32);
        else
            memset(parent, 0xdd, 32);
        block_make(blk, from, parent, 777, (uint32_t)peer, rng_next(&s->rng), true);
        ledger_sha256(h, blk, sizeof blk);
        pbft__sigset sigs = {0};
        for (uint32_t k = 0; k < s->q; k++) {
            sigs.idx[k] = (uint8_t)k;
            for (int j = 0; j < 64; j++) sigs.sig[k][j] = (uint8_t)rng_next(&s->rng);
        }
        sigs.n = s->q;
        uint8_t *cert;
        size_t cert_len;
        TEM_ASSERT(pbft_cert_pack(0, from, h, &sigs, &cert, &cert_len) == PBFT_OK);
        sim_ev *e = ev_new(s, E_FETCHED, t);
        e->inst = ii;
        e->inc = a->inc;
        e->a = from;
        e->data = dup_bytes(blk, sizeof blk);
        e->len = sizeof blk;
        e->data2 = cert;
        e->len2 = cert_len;
        ev_push(s);
        return;
    }
    for (uint64_t h = from; h <= b->chain_len && h < from + SIM_FETCH_BATCH; h++) {
        const sim_blk *blk = &b->chain[h - 1];
        sim_ev *e = ev_new(s, E_FETCHED, t++);
        e->inst = ii;
        e->inc = a->inc;
        e->a = h;
        e->data = dup_bytes(blk->block, blk->len);
        e->len = blk->len;
        e->data2 = dup_bytes(blk->cert, blk->cert_len);
        e->len2 = blk->cert_len;
        ev_push(s);
    }
}

/* ================================================================== the host's I/O, in memory */
/* Equivocation check: an honest replica never signs two blocks for one (view, height) and vote
 * kind, even across restarts (that is what its persisted record is for). A PRE-PREPARE is its
 * sender's PREPARE. */
static void vote_check(sim_t *s, const sim_inst *a, const uint8_t *msg, size_t len) {
    if (s->byz_keys >> a->key & 1) return;
    Tem__V1__PbftMessage *m = tem__v1__pbft_message__unpack(&ledger_pb_allocator, len, msg);
    if (!m) return;
    uint64_t view = 0, height = 0;
    ProtobufCBinaryData hash = {0, NULL};
    int kind = 0;
    if (m->kind_case == TEM__V1__PBFT_MESSAGE__KIND_PRE_PREPARE) {
        kind = 1, view = m->pre_prepare->view, height = m->pre_prepare->height;
        hash = m->pre_prepare->block_hash;
    } else if (m->kind_case == TEM__V1__PBFT_MESSAGE__KIND_PREPARE) {
        kind = 1, view = m->prepare->view, height = m->prepare->height;
        hash = m->prepare->block_hash;
    } else if (m->kind_case == TEM__V1__PBFT_MESSAGE__KIND_COMMIT) {
        kind = 2, view = m->commit->view, height = m->commit->height;
        hash = m->commit->block_hash;
    }
    if (kind && hash.len == 32) {
        uint8_t k[32];
        uint8_t raw[18];
        raw[0] = (uint8_t)a->key;
        raw[1] = (uint8_t)kind;
        tem_put_u64le(raw + 2, view);
        tem_put_u64le(raw + 10, height);
        ledger_sha256(k, raw, sizeof raw);
        uint64_t base = tem_get_u64le(k);
        for (uint64_t i = 0; i < 64; i++) {
            sim_vote *v = &s->votes[(base + i) % SIM_VOTES_SIZE];
            if (!v->used) {
                v->used = true;
                v->key = (uint8_t)a->key;
                v->kind = (uint8_t)kind;
                v->view = view;
                v->height = height;
                memcpy(v->hash, hash.data, 32);
                break;
            }
            if (v->key == a->key && v->kind == kind && v->view == view && v->height == height) {
                if (memcmp(v->hash, hash.data, 32) != 0)
                    fail(s, "equivocation: honest validator %d signed two blocks as its %s for "
                            "view %llu height %llu (instance %d)", a->key,
                         kind == 1 ? "prepare" : "commit", (unsigned long long)view,
                         (unsigned long long)height, a->ii);
                break;
            }
        }
        /* 64 probes without a slot: the table is saturated and this vote goes unchecked (a
         * weaker check, never a false failure). */
    }
    tem__v1__pbft_message__free_unpacked(m, &ledger_pb_allocator);
}

static void io_send(void *ctx, uint32_t to, const uint8_t *msg, size_t len) {
    sim_inst *a = ctx;
    vote_check(a->s, a, msg, len);
    net_out(a->s, a->ii, to, msg, len);
}

/* The disk: a write completes 0..3 ms later, in issue order, and a crash before then loses it
 * (E_SYNC). The host waits for it before anything after it leaves. */
static int io_persist(void *ctx, const uint8_t *rec, size_t len) {
    sim_inst *a = ctx;
    sim_t *s = a->s;
    uint64_t t = s->now + rng_below(&s->rng, 4);
    if (t < a->last_sync_t) t = a->last_sync_t;
    a->last_sync_t = t;
    sim_ev *e = ev_new(s, E_SYNC, t);
    e->inst = a->ii;
    e->inc = a->inc;
    e->data = dup_bytes(rec, len);
    e->len = len;
    ev_push(s);
    return HOST_PERSIST_PENDING;
}

static void io_set_timer(void *ctx, pbft_timer t, uint64_t ms, uint64_t seq) {
    sim_inst *a = ctx;
    sim_ev *e = ev_new(a->s, E_TIMER, a->s->now + ms);
    e->inst = a->ii;
    e->inc = a->inc;
    e->a = t;
    e->b = seq;
    ev_push(a->s);
}

static void io_cancel_timer(void *ctx, pbft_timer t) {
    (void)ctx;
    (void)t; /* E_TIMER drops a firing whose seq the replica no longer holds */
}

static int io_deliver(void *ctx, const pbft_action *act) {
    sim_inst *a = ctx;
    on_deliver(a->s, a->ii, act);
    return PBFT_OK;
}

static void io_request_proposal(void *ctx, uint64_t height) {
    sim_inst *a = ctx;
    sim_ev *e = ev_new(a->s, E_PROPOSE, a->s->now + a->s->block_ms);
    e->inst = a->ii;
    e->inc = a->inc;
    e->a = height;
    ev_push(a->s);
}

static int io_validate(void *ctx, uint64_t height, const uint8_t hash[32], const uint8_t *block,
                       size_t len) {
    sim_inst *a = ctx;
    sim_t *s = a->s;
    sim_ev *e = ev_new(s, E_VALIDATE, s->now + rng_below(&s->rng, 3));
    e->inst = a->ii;
    e->inc = a->inc;
    e->a = height;
    memcpy(e->hash, hash, 32);
    e->data = dup_bytes(block, len);
    e->len = len;
    ev_push(s);
    return PBFT_OK;
}

static void io_request_blocks(void *ctx, uint64_t from) {
    sim_inst *a = ctx;
    request_blocks(a->s, a->ii, from);
}

static const char *msg_kind(const uint8_t *p, size_t len, char *buf, size_t cap);

static void io_stepped(void *ctx, const pbft_event *ev, int rc) {
    sim_inst *a = ctx;
    sim_t *s = a->s;
    if (!s->opt->trace) return;
    char buf[96];
    const char *what = "?";
    switch (ev->kind) {
    case PBFT_EV_MESSAGE: what = msg_kind(ev->data, ev->len, buf, sizeof buf); break;
    case PBFT_EV_TIMER: what = ev->timer == PBFT_TIMER_VIEW ? "view timer" : "fetch timer"; break;
    case PBFT_EV_PROPOSAL: what = "proposal"; break;
    case PBFT_EV_VALIDATED: what = ev->ok ? "validated ok" : "validated bad"; break;
    case PBFT_EV_BLOCK_FETCHED: what = "fetched block"; break;
    }
    printf("t=%llu i%d <- %s: %s (view %llu%s, delivered %llu, stable %llu)\n",
           (unsigned long long)s->now, a->ii, what, rc ? pbft_strerror(rc) : "ok",
           (unsigned long long)a->r.view, a->r.in_view_change ? " vc" : "",
           (unsigned long long)a->r.delivered, (unsigned long long)a->r.stable);
}

static void io_report(void *ctx, int err, const char *what, uint64_t height) {
    sim_inst *a = ctx;
    TRACE(a->s, "i%d host: %s at height %llu: %s", a->ii, what, (unsigned long long)height,
          pbft_strerror(err));
}

static const host_io sim_io = {
    .send = io_send,
    .persist = io_persist,
    .set_timer = io_set_timer,
    .cancel_timer = io_cancel_timer,
    .deliver = io_deliver,
    .request_proposal = io_request_proposal,
    .validate = io_validate,
    .request_blocks = io_request_blocks,
    .stepped = io_stepped,
    .report = io_report,
};

/* Feeds an event to instance ii's host. A full FIFO is back-pressure: the event waits at the door
 * and is offered again 1 ms later (the sim owns e's bytes, which move to the new event). */
static void post(sim_t *s, sim_ev *e, const pbft_event *ev) {
    sim_inst *a = &s->inst[e->inst];
    int rc = host_post(&a->h, ev);
    if (rc == PBFT_OK) return;
    if (rc == PBFT_EFULL || rc == PBFT_ENOMEM) {
        s->refused++;
        TRACE(s, "i%d host refused an event (%s): retry in 1 ms", e->inst, pbft_strerror(rc));
        sim_ev *r = ev_new(s, e->kind, s->now + 1);
        sim_ev keep = *e;
        keep.t = r->t;
        keep.seq = r->seq;
        *r = keep;
        ev_push(s);
        e->data = NULL;
        e->data2 = NULL;
        return;
    }
    fail(s, "instance %d: host refused an event: %s", e->inst, pbft_strerror(rc));
}

static const char *msg_kind(const uint8_t *p, size_t len, char *buf, size_t cap) {
    Tem__V1__PbftMessage *m = tem__v1__pbft_message__unpack(&ledger_pb_allocator, len, p);
    if (!m) return "garbage";
    switch (m->kind_case) {
    case TEM__V1__PBFT_MESSAGE__KIND_PRE_PREPARE:
        snprintf(buf, cap, "PRE-PREPARE v=%llu h=%llu from %u",
                 (unsigned long long)m->pre_prepare->view,
                 (unsigned long long)m->pre_prepare->height, m->sender);
        break;
    case TEM__V1__PBFT_MESSAGE__KIND_PREPARE:
        snprintf(buf, cap, "PREPARE v=%llu h=%llu from %u", (unsigned long long)m->prepare->view,
                 (unsigned long long)m->prepare->height, m->sender);
        break;
    case TEM__V1__PBFT_MESSAGE__KIND_COMMIT:
        snprintf(buf, cap, "COMMIT v=%llu h=%llu from %u", (unsigned long long)m->commit->view,
                 (unsigned long long)m->commit->height, m->sender);
        break;
    case TEM__V1__PBFT_MESSAGE__KIND_CHECKPOINT:
        snprintf(buf, cap, "CHECKPOINT h=%llu from %u",
                 (unsigned long long)m->checkpoint->height, m->sender);
        break;
    case TEM__V1__PBFT_MESSAGE__KIND_VIEW_CHANGE:
        snprintf(buf, cap, "VIEW-CHANGE from %u", m->sender);
        break;
    case TEM__V1__PBFT_MESSAGE__KIND_NEW_VIEW:
        snprintf(buf, cap, "NEW-VIEW from %u", m->sender);
        break;
    default:
        snprintf(buf, cap, "unknown kind");
    }
    tem__v1__pbft_message__free_unpacked(m, &ledger_pb_allocator);
    return buf;
}

/* ================================================================== one event */
static void handle(sim_t *s, sim_ev *e) {
    sim_inst *a = e->inst >= 0 ? &s->inst[e->inst] : NULL;
    if (a && e->kind != E_RESTART && e->kind != E_CRASH && (!a->up || e->inc != a->inc)) return;
    pbft_event ev;
    memset(&ev, 0, sizeof ev);
    switch (e->kind) {
    case E_MSG:
        if (a->byz & B_REPLAY) inst_record_replay(a, e->data, e->len);
        ev.kind = PBFT_EV_MESSAGE;
        ev.from = (uint32_t)e->from_key;
        ev.data = e->data;
        ev.len = e->len;
        post(s, e, &ev);
        break;
    case E_TIMER:
        ev.kind = PBFT_EV_TIMER;
        ev.timer = (pbft_timer)e->a;
        ev.timer_seq = e->b;
        if (e->b != (e->a == PBFT_TIMER_VIEW ? a->r.view_timer_seq : a->r.fetch_timer_seq))
            return; /* superseded: the node would have re-armed it */
        post(s, e, &ev);
        break;
    case E_PROPOSE: {
        uint64_t h = e->a;
        if (a->chain_len + 1 != h) return;
        uint8_t blk[SIM_BLOCK_BYTES], hash[32];
        const uint8_t *parent = h == 1 ? g_genesis : a->chain[h - 2].hash;
        bool valid = !((a->byz & B_BADPROP) && rng_pct(&s->rng, 500));
        if (!valid) s->faults |= SIM_F_BAD_PROPOSAL;
        block_make(blk, h, parent, (uint32_t)a->key, (uint32_t)e->inst, ++a->nonce, valid);
        ledger_sha256(hash, blk, sizeof blk);
        reg_add(s, hash, h, valid);
        ev.kind = PBFT_EV_PROPOSAL;
        ev.height = h;
        ev.data = blk;
        ev.len = sizeof blk;
        post(s, e, &ev);
        break;
    }
    case E_VALIDATE: {
        uint64_t h = e->a;
        bool ok = false;
        if (e->len == SIM_BLOCK_BYTES && a->chain_len + 1 == h) {
            const uint8_t *parent = h == 1 ? g_genesis : a->chain[h - 2].hash;
            ok = tem_get_u64le(e->data + 4) == h && memcmp(e->data + 12, parent, 32) == 0 &&
                 e->data[60] == 1;
        }
        if (host_validated(&a->h, h, e->hash, ok) != PBFT_OK)
            fail(s, "instance %d: the host was not waiting for validation of height %llu",
                 e->inst, (unsigned long long)h);
        break;
    }
    case E_FETCHED:
        ev.kind = PBFT_EV_BLOCK_FETCHED;
        ev.height = e->a;
        ev.data = e->data;
        ev.len = e->len;
        ev.cert = e->data2;
        ev.cert_len = e->len2;
        post(s, e, &ev);
        break;
    case E_SYNC: {
        bool kill = !s->healed && s->vote_crashes > 0 && !a->byz && !a->twin &&
                    rng_pct(&s->rng, s->vote_crash_pm);
        if (kill && rng_pct(&s->rng, 500)) {
            /* Kill point: the power fails before the write reached the disk. The record is
             * lost, and so is every vote the host held back behind it. */
            s->vote_crashes--;
            TRACE(s, "i%d crash before its vote record reached the disk", e->inst);
            inst_crash(s, e->inst);
            sim_ev *c = ev_new(s, E_RESTART, s->now + 2 + rng_below(&s->rng, 300));
            c->inst = e->inst;
            ev_push(s);
            break;
        }
        /* The write reached the disk: from now on it survives a crash. */
        tem_free(a->record);
        a->record = e->data;
        a->record_len = e->len;
        e->data = NULL;
        if (host_persist_done(&a->h, PBFT_OK) != PBFT_OK)
            fail(s, "instance %d: the host was not waiting for a write", e->inst);
        if (kill) {
            /* Kill point: right after the vote left, before the replica learns what follows. */
            s->vote_crashes--;
            sim_ev *c = ev_new(s, E_CRASH, s->now + 1);
            c->inst = e->inst;
            ev_push(s);
            c = ev_new(s, E_RESTART, s->now + 2 + rng_below(&s->rng, 300));
            c->inst = e->inst;
            ev_push(s);
        }
        break;
    }
    case E_CRASH:
        if (a->inc != e->inc) return;
        inst_crash(s, e->inst);
        break;
    case E_RESTART:
        if (a->up) return;
        TRACE(s, "i%d restart from height %zu", e->inst, a->chain_len);
        inst_boot(s, e->inst);
        break;
    case E_POWER_CUT:
        /* Every honest replica at once (a feeder's substation, a data centre): the case where
         * a block delivered just before may be on no honest validator's disk. */
        TRACE(s, "power cut");
        s->faults |= SIM_F_POWER_CUT;
        for (uint32_t i = 0; i < s->ninst; i++) {
            if (!s->inst[i].up || s->inst[i].byz || s->inst[i].twin) continue;
            inst_crash(s, (int)i);
            sim_ev *c = ev_new(s, E_RESTART, s->now + 10 + rng_below(&s->rng, 400));
            c->inst = (int)i;
            ev_push(s);
        }
        break;
    case E_PARTITION:
        s->part_mask = e->a;
        TRACE(s, "partition %llx", (unsigned long long)e->a);
        break;
    case E_HEAL: {
        s->healed = true;
        s->part_mask = 0;
        s->heal_t = s->now;
        for (uint32_t i = 0; i < s->ninst; i++)
            if (!s->inst[i].up) {
                TRACE(s, "i%u restart at heal from height %zu", i, s->inst[i].chain_len);
                inst_boot(s, (int)i);
            }
        s->target = s->max_committed + SIM_LIVENESS_BLOCKS;
        TRACE(s, "heal: liveness target %llu by t=%llu", (unsigned long long)s->target,
              (unsigned long long)(s->now + SIM_LIVENESS_MS));
        break;
    }
    }
}

/* ================================================================== scenario */
static void schedule_faults(sim_t *s, uint64_t fault_ms) {
    rng_t *g = &s->rng;
    /* Partitions: a few intervals, each splitting the keys in two. */
    if (rng_pct(g, 450)) {
        s->faults |= SIM_F_PARTITION;
        uint64_t t = rng_below(g, fault_ms / 2);
        int parts = 1 + (int)rng_below(g, 3);
        for (int p = 0; p < parts && t < fault_ms; p++) {
            uint64_t mask = 0;
            while (mask == 0 || mask == (1ull << s->n) - 1) mask = rng_next(g) & ((1ull << s->n) - 1);
            sim_ev *e = ev_new(s, E_PARTITION, t);
            e->a = mask;
            ev_push(s);
            t += 100 + rng_below(g, 1200);
            e = ev_new(s, E_PARTITION, t);
            e->a = 0;
            ev_push(s);
            t += rng_below(g, 800);
        }
    }
    /* Crashes of honest instances (any number: safety must not depend on who stays up). */
    if (rng_pct(g, 500)) {
        int crashes = 1 + (int)rng_below(g, 4);
        for (int c = 0; c < crashes; c++) {
            int ii = (int)rng_below(g, s->ninst);
            if (s->inst[ii].byz || s->inst[ii].twin) continue;
            uint64_t t = rng_below(g, fault_ms);
            sim_ev *e = ev_new(s, E_CRASH, t);
            e->inst = ii;
            e->inc = UINT32_MAX; /* matched against the incarnation at firing time below */
            ev_push(s);
            if (rng_pct(g, 700)) {
                e = ev_new(s, E_RESTART, t + 10 + rng_below(g, 600));
                e->inst = ii;
                ev_push(s);
            }
        }
    }
}

static void setup(sim_t *s, uint64_t seed) {
    rng_t *g = &s->rng;
    g->s = seed * 0x2545f4914f6cdd1dull + 0x1234567ull;
    /* Half the seeds run the classic n = 3f+1; the rest also cover n = 5 and 6, where the
     * quorum is not 2f+1 (ledger_quorum_of): two quorums of 2f+1 = 3 out of 5 share only one
     * validator, which may be the faulty one. */
    static const uint32_t ns[] = {5, 6, 7};
    s->n = rng_pct(g, 500) ? 4 : ns[rng_below(g, 3)];
    g_side_n = s->n;
    s->f = (s->n - 1) / 3;
    s->q = ledger_quorum_of(s->n);
    static const uint32_t ks[] = {2, 4, 4, 8};
    s->k = ks[rng_below(g, 4)];
    s->block_ms = 5 + rng_below(g, 40);
    static const uint32_t drops[] = {0, 0, 20, 100, 250};
    static const uint32_t dups[] = {0, 0, 50, 200};
    static const uint32_t delays[] = {1, 5, 20, 60};
    s->drop_pm = drops[rng_below(g, 5)];
    s->dup_pm = dups[rng_below(g, 4)];
    s->delay_min = 1;
    s->delay_max = delays[rng_below(g, 4)];
    s->faults |= SIM_F_DELAY;
    if (s->delay_max > 1) s->faults |= SIM_F_REORDER;
    if (s->drop_pm) s->faults |= SIM_F_DROP;
    if (s->dup_pm) s->faults |= SIM_F_DUP;

    s->ninst = s->n;
    for (uint32_t i = 0; i < s->n; i++) {
        s->inst[i].key = (int)i;
        s->inst[i].vis = (1ull << s->n) - 1;
    }
    /* Byzantine keys: never more than f. */
    uint32_t nbyz = (uint32_t)rng_below(g, s->f + 1);
    for (uint32_t b = 0; b < nbyz; b++) {
        int key;
        do key = (int)rng_below(g, s->n);
        while (s->byz_keys >> key & 1);
        s->byz_keys |= 1ull << key;
        if (rng_pct(g, 250) && s->ninst < SIM_INST_MAX) {
            /* Twins: a second instance with the same key; the other keys are split between
             * the two, each twin seeing only its part. */
            s->faults |= SIM_F_TWINS;
            int t = (int)s->ninst++;
            s->inst[t].key = key;
            s->inst[t].twin = s->inst[key].twin = true;
            uint64_t others = ((1ull << s->n) - 1) & ~(1ull << key), a = 0;
            while (a == 0 || a == others) a = rng_next(g) & others;
            s->inst[key].vis = a | (1ull << key);
            s->inst[t].vis = (others & ~a) | (1ull << key);
            continue;
        }
        uint32_t mask = 0;
        if (b == 0 && !(s->byz_keys & 1) && rng_pct(g, 300)) {
            /* The primary of view 0 splits the cluster from the first block on. */
            s->byz_keys &= ~(1ull << key);
            key = 0;
            s->byz_keys |= 1;
            mask = B_EQUIVOCATE | B_CONFLICT;
        } else if (rng_pct(g, 120)) {
            mask = B_SILENT;
        } else {
            while (mask == 0) mask = (uint32_t)rng_next(g) & (B_EQUIVOCATE | B_CONFLICT | B_FORGE |
                                                             B_REPLAY | B_MALFORMED | B_BADPROP |
                                                             B_LIAR);
        }
        s->inst[key].byz = mask;
        if (mask & B_SILENT) s->faults |= SIM_F_SILENT;
        if (mask & B_EQUIVOCATE) s->faults |= SIM_F_EQUIVOCATE;
        if (mask & B_CONFLICT) s->faults |= SIM_F_CONFLICT_VOTES;
        if (mask & B_FORGE) s->faults |= SIM_F_FORGE;
        if (mask & B_REPLAY) s->faults |= SIM_F_REPLAY;
        if (mask & B_MALFORMED) s->faults |= SIM_F_MALFORMED;
    }
    if (rng_pct(g, 300)) {
        s->vote_crashes = 1 + (uint32_t)rng_below(g, 6);
        s->vote_crash_pm = 20 + (uint32_t)rng_below(g, 200);
    }
    uint64_t fault_ms = 1000 + rng_below(g, 2500);
    schedule_faults(s, fault_ms);
    /* Power cuts draw from a stream of their own, so a seed without one runs exactly as before
     * they were added: at a random time, or right after the first delivery of a height. */
    rng_t pg = {.s = seed * 0x9e3779b97f4a7c15ull + 0x70c0ull};
    if (rng_pct(&pg, 250)) {
        if (rng_pct(&pg, 500)) {
            (void)ev_new(s, E_POWER_CUT, rng_below(&pg, fault_ms));
            ev_push(s);
        } else {
            s->power_cut_height = 1 + rng_below(&pg, 6);
        }
    }
    (void)ev_new(s, E_HEAL, fault_ms);
    ev_push(s);
}

int sim_run(uint64_t seed, const sim_options *opt, sim_result *res) {
    keys_init();
    memset(res, 0, sizeof *res);
    sim_t *s = tem_calloc(1, sizeof *s);
    TEM_ASSERT(s != NULL);
    s->opt = opt;
    s->res = res;
    s->reg = tem_calloc(SIM_REG_SIZE, sizeof *s->reg);
    s->memo = tem_calloc(SIM_MEMO_SIZE, sizeof *s->memo);
    s->committed_cap = 256;
    s->committed = tem_calloc(s->committed_cap, 32);
    TEM_ASSERT(s->reg && s->memo && s->committed);
    s->votes = tem_calloc(SIM_VOTES_SIZE, sizeof *s->votes);
    TEM_ASSERT(s->votes != NULL);
    setup(s, seed);
    res->n = s->n;
    if (opt->trace) {
        printf("seed %llu: n=%u f=%u K=%u instances=%u drop=%u/1000 dup=%u/1000 delay=%u..%ums "
               "block=%llums byz-keys=%llx\n",
               (unsigned long long)seed, s->n, s->f, s->k, s->ninst, s->drop_pm, s->dup_pm,
               s->delay_min, s->delay_max, (unsigned long long)s->block_ms,
               (unsigned long long)s->byz_keys);
        for (uint32_t i = 0; i < s->ninst; i++)
            printf("  i%u key %d byz %#x twin %d vis %llx\n", i, s->inst[i].key, s->inst[i].byz,
                   s->inst[i].twin, (unsigned long long)s->inst[i].vis);
    }
    for (uint32_t i = 0; i < s->ninst && !res->failed; i++) inst_boot(s, (int)i);

    sim_ev e;
    while (!res->failed && ev_pop(s, &e)) {
        s->now = e.t;
        if (++res->events > SIM_EVENTS_MAX) {
            fail(s, "event budget of %d exhausted at t=%llu", SIM_EVENTS_MAX,
                 (unsigned long long)s->now);
            break;
        }
        if (e.kind == E_CRASH) e.inc = s->inst[e.inst].inc;
        handle(s, &e);
        tem_free(e.data);
        tem_free(e.data2);
        if (s->healed) {
            bool all = true;
            for (uint32_t i = 0; i < s->ninst && all; i++) {
                const sim_inst *a = &s->inst[i];
                if (s->byz_keys >> a->key & 1) continue;
                if (a->chain_len < s->target) all = false;
            }
            if (all) break;
            if (s->now > s->heal_t + SIM_LIVENESS_MS) {
                uint64_t lo = UINT64_MAX;
                int who = -1;
                for (uint32_t i = 0; i < s->ninst; i++) {
                    const sim_inst *a = &s->inst[i];
                    if (s->byz_keys >> a->key & 1) continue;
                    if (a->chain_len < lo) {
                        lo = a->chain_len;
                        who = (int)i;
                    }
                }
                fail(s, "liveness: instance %d at height %llu, target %llu not reached %d ms "
                        "after the faults healed", who, (unsigned long long)lo,
                     (unsigned long long)s->target, SIM_LIVENESS_MS);
                break;
            }
        }
    }
    if (s->healed && !res->failed) {
        for (uint32_t i = 0; i < s->ninst; i++)
            if (s->inst[i].crashes && s->drop_pm) s->faults |= SIM_F_LOST_WRITES;
    }
    for (uint32_t i = 0; i < s->ninst; i++)
        if (s->inst[i].crashes) s->faults |= SIM_F_LOST_WRITES;
    res->end_ms = s->now;
    res->faults = s->faults;

    /* Teardown. */
    while (ev_pop(s, &e)) {
        tem_free(e.data);
        tem_free(e.data2);
    }
    for (uint32_t i = 0; i < s->ninst; i++) {
        sim_inst *a = &s->inst[i];
        if (a->h_live) host_free(&a->h);
        if (a->r_live) pbft_replica_free(&a->r);
        for (size_t h = 0; h < a->chain_len; h++) {
            tem_free(a->chain[h].block);
            tem_free(a->chain[h].cert);
        }
        tem_free(a->chain);
        tem_free(a->record);
        for (int j = 0; j < SIM_REPLAY_KEEP; j++) tem_free(a->replay[j]);
    }
    tem_free(s->votes);
    tem_free(s->heap);
    tem_free(s->reg);
    tem_free(s->memo);
    tem_free(s->committed);
    tem_free(s);
    return res->failed ? 1 : 0;
}

const char *sim_fault_name(int bit) {
    static const char *const names[SIM_F_COUNT] = {
        "delay",   "drop",      "duplicate", "reorder",       "partition",    "crash",
        "lost-unsynced-writes", "equivocating-primary",       "conflicting-votes",
        "forged-signatures",    "replayed-messages",          "malformed-messages",
        "silent",  "invalid-proposals",     "lying-block-server", "twins", "power-cut"};
    return bit >= 0 && bit < SIM_F_COUNT ? names[bit] : NULL;
}
