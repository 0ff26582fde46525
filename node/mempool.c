/* mempool.c: the node's mempool (mempool.h): fixed-size tables of txs, signers and superseded
 * txids sized at startup; signature verification batched into libuv thread-pool work items;
 * a group-committed append-only log (one write + one fdatasync per batch, done callbacks only
 * after the fdatasync), its recovery after a crash and its rewrite when mostly dead. */
#include "net/net.h"
#include "node/mempool.h"

#include "contracts/contracts.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#define NIL UINT32_MAX
/* Signers whose nonce block_applied re-reads per block beyond those of the block's txs. */
#define MP__SWEEP_SIGNERS_MAX 4096u

static_assert(sizeof NODE_MEMPOOL_LOG_MAGIC - 1 == 8, "log magic is 8 bytes");
static_assert(NODE_MEMPOOL_LOG_HEADER_BYTES == 8 + LEDGER_HASH_BYTES, "header = magic + genesis hash");

/* ================================================================== errors */
const char *node_mempool_strerror(int err) {
    switch (err) {
#define NODE_MEMPOOL_X(name, val, msg) case val: return msg;
        NODE_MEMPOOL_ERRNO_MAP(NODE_MEMPOOL_X)
#undef NODE_MEMPOOL_X
    default: return ledger_strerror(err);
    }
}

const char *node_mempool_errname(int err) {
    switch (err) {
#define NODE_MEMPOOL_X(name, val, msg) case val: return #name;
        NODE_MEMPOOL_ERRNO_MAP(NODE_MEMPOOL_X)
#undef NODE_MEMPOOL_X
    default: return ledger_errname(err);
    }
}

/* ================================================================== types */
/* An entry moves VERIFY (queued or in a work item) -> WRITE (record buffered or being written)
 * -> PENDING (durable). `gone` marks an entry a block committed or superseded while thread-pool
 * work still referred to it; it is settled when that work returns. An entry removed while a
 * block view still borrows its decoded tx (node_mempool_lend) is PARKED: out of every table and
 * count, its slot, bytes and tx kept until the last borrower gives it back. */
enum { MP__FREE = 0, MP__VERIFY, MP__WRITE, MP__PENDING, MP__PARKED };
enum { MP__GONE_NO = 0, MP__GONE_COMMITTED, MP__GONE_SUPERSEDED };

typedef struct {
    /* Read by the verify worker; never written while state == MP__VERIFY. */
    uint8_t txid[LEDGER_HASH_BYTES];
    uint8_t sig[LEDGER_SECP_SIG_BYTES];
    uint8_t signer[LEDGER_SECP_PUB_BYTES];
    bool sig_known; /* the node verified this (txid, sig) already: cfg.sig_known, at dispatch */
    uint8_t *bytes; /* the SignedTx as submitted, owned */
    size_t len;
    ledger_tx tx;   /* decoded once at submission, owned; never written after: lent out */
    /* Written by the verify worker (only). */
    int32_t vrc;
    uint32_t check; /* the log record's check value */
    /* Loop thread only. */
    uint8_t state, gone;
    bool in_job;    /* MP__VERIFY and handed to a work item (else still queued) */
    bool urgent;    /* node_mempool_verify_first: moves to the queue's front (transient) */
    bool in_by_sig; /* indexed by signature: node_mempool_find_bytes, node_mempool_lend */
    uint32_t lends; /* block views borrowing tx (node_mempool_lend) */
    bool announce;  /* node_mempool_admit.announce: cfg.announce once the signature verified */
    uint64_t nonce, seq;
    uint32_t signer_idx;
    uint32_t fifo_prev, fifo_next; /* every held entry, in arrival order */
    uint32_t s_prev, s_next;       /* the signer's entries, by nonce */
    uint32_t q_next;               /* verify queue, write list or free list */
    uint32_t tag;                  /* admission's client tag, released when the entry goes */
    uint32_t model_ms;             /* node_mempool_admit.model_ms, for cfg.client_committed */
    bool in_order;                 /* nonces sn..nonce-1 were all held at submission */
    uint64_t t_ms;                 /* node_mempool_admit.t_ms, for cfg.client_committed */
    uint64_t arrived_ms, regossip_ms; /* uv_now at submit / last re-gossip (0 = never) */
    uint64_t have_mask;            /* validators known to hold the tx (bit = index) */
    node_mempool_done_fn done;
    void *done_ctx;
} mp__entry;

typedef struct {
    uint8_t key[LEDGER_SECP_PUB_BYTES];
    uint32_t count;      /* entries held */
    uint32_t head;       /* lowest nonce; q_next-style free list link when unused */
    uint32_t active_pos; /* index in node_mempool.active */
    uint64_t sel_epoch, sel_next; /* node_mempool_select's scratch */
} mp__signer;

/* Open addressing with linear probing over indices + 1 (0 = empty), deleted by backward shift
 * so lookups never walk tombstones. At most half full by construction. */
typedef struct {
    uint32_t *slot;
    uint32_t mask;
} mp__tab;

typedef struct {
    uv_work_t req;
    node_mempool *m;
    bool busy;
    uint32_t n;
    uint32_t *idx; /* verify_batch_max entries */
} mp__job;

typedef struct {
    uv_work_t req;
    node_mempool *m;
    uint8_t *buf;
    size_t len;
    int old_fd, new_fd, rc; /* rc: 0, -1 failed before the rename, -2 after it */
} mp__compact_job;

struct node_mempool {
    uv_loop_t *loop;
    node_mempool_config cfg; /* defaults filled in */
    ledger_store *store;
    ledger_tx_limits lim;
    char *log_path, *tmp_path, *dir_path;
    size_t payload_max; /* largest record payload recovery accepts */
    uint8_t hkey[crypto_shorthash_KEYBYTES];

    mp__entry *ents;
    uint32_t ent_free, count;
    uint32_t parked; /* MP__PARKED slots: neither held nor free (admission counts them full) */
    uint32_t unverified; /* entries in MP__VERIFY (queued or in a work item) */
    uint64_t bytes, next_seq;
    uint32_t fifo_head, fifo_tail;
    mp__tab by_txid;
    mp__tab by_sig; /* held entries by signature: node_mempool_find_bytes, node_mempool_lend */

    mp__signer *signers;
    uint32_t signer_free, n_active;
    uint32_t *active;
    uint32_t sweep_cursor; /* block_applied's round robin over `active` */
    mp__tab by_signer;
    uint64_t sel_epoch;

    uint8_t (*sup)[LEDGER_HASH_BYTES]; /* ring of superseded txids */
    uint32_t sup_next, sup_count;
    mp__tab by_sup;

    uint32_t vq_head, vq_tail, vq_len;
    mp__job *jobs;
    uint32_t *job_idx;
    uint32_t jobs_busy;
    uv_idle_t idle;
    bool idle_on, idle_closed;

    int fd;
    bool recovered, broken, writing, compacting, closing;
    bool disk_full; /* the last log failure was ENOSPC/EDQUOT */
    uint8_t *acc, *fly; /* records accumulating / being written */
    size_t acc_len, acc_cap, fly_len, fly_cap, fly_off;
    uint32_t acc_head, acc_tail, fly_head;
    uv_fs_t write_req, sync_req;
    uv_buf_t wbuf;
    mp__compact_job cj;

    node_mempool_stats st;
};

/* ================================================================== hash tables */
typedef const uint8_t *(*mp__key_fn)(const node_mempool *m, uint32_t idx);

static const uint8_t *key_txid(const node_mempool *m, uint32_t i) { return m->ents[i].txid; }
static const uint8_t *key_sig(const node_mempool *m, uint32_t i) { return m->ents[i].sig; }
static const uint8_t *key_signer(const node_mempool *m, uint32_t i) { return m->signers[i].key; }
static const uint8_t *key_sup(const node_mempool *m, uint32_t i) { return m->sup[i]; }

/* Keyed (SipHash) so that txids ground by a client cannot pile into one probe run. */
static uint32_t tab_home(const node_mempool *m, const mp__tab *t, const uint8_t *k, size_t klen) {
    uint8_t h[crypto_shorthash_BYTES];
    crypto_shorthash(h, k, klen, m->hkey);
    return (uint32_t)tem_get_u64le(h) & t->mask;
}

static int tab_init(mp__tab *t, uint32_t n) {
    uint64_t cap = 16;
    while (cap < 2 * (uint64_t)n) cap <<= 1;
    t->slot = tem_calloc(cap, sizeof *t->slot);
    t->mask = (uint32_t)(cap - 1);
    return t->slot ? 0 : -1;
}

/* Index of the entry with key k, or NIL; *pos = its slot or the empty slot ending the run. */
static uint32_t tab_find(const node_mempool *m, const mp__tab *t, const uint8_t *k, size_t klen,
                         mp__key_fn kf, uint32_t *pos) {
    uint32_t p = tab_home(m, t, k, klen);
    for (;;) {
        uint32_t v = t->slot[p];
        if (v == 0) break;
        if (memcmp(kf(m, v - 1), k, klen) == 0) {
            if (pos) *pos = p;
            return v - 1;
        }
        p = (p + 1) & t->mask;
    }
    if (pos) *pos = p;
    return NIL;
}

static void tab_insert(const node_mempool *m, mp__tab *t, const uint8_t *k, size_t klen, mp__key_fn kf,
                       uint32_t idx) {
    uint32_t p;
    TEM_ASSERT(tab_find(m, t, k, klen, kf, &p) == NIL);
    t->slot[p] = idx + 1;
}

static void tab_erase(const node_mempool *m, mp__tab *t, const uint8_t *k, size_t klen, mp__key_fn kf) {
    uint32_t i;
    TEM_ASSERT(tab_find(m, t, k, klen, kf, &i) != NIL);
    /* Backward shift: move later members of the run into the hole when their home slot does not
     * lie cyclically in (hole, their slot]. */
    uint32_t j = i;
    for (;;) {
        j = (j + 1) & t->mask;
        uint32_t v = t->slot[j];
        if (v == 0) break;
        uint32_t h = tab_home(m, t, kf(m, v - 1), klen);
        bool stays = (i <= j) ? (i < h && h <= j) : (i < h || h <= j);
        if (stays) continue;
        t->slot[i] = v;
        i = j;
    }
    t->slot[i] = 0;
}

/* ================================================================== records */
static size_t rec_bytes(size_t payload_len) { return NODE_MEMPOOL_REC_OVERHEAD_BYTES + payload_len; }

static uint32_t rec_check(uint8_t type, const uint8_t *p, size_t n) {
    uint8_t hdr[5], h[LEDGER_HASH_BYTES];
    tem_put_u32le(hdr, (uint32_t)(n + 1));
    hdr[4] = type;
    const void *parts[2] = {hdr, p};
    size_t lens[2] = {sizeof hdr, n};
    ledger_sha256_parts(h, 2, parts, lens);
    return tem_get_u32le(h);
}

/* Writes one record at out (rec_bytes(n) bytes). */
static void rec_put(uint8_t *out, uint8_t type, const uint8_t *p, size_t n, uint32_t check) {
    tem_put_u32le(out, (uint32_t)(n + 1));
    out[4] = type;
    memcpy(out + 5, p, n);
    tem_put_u32le(out + 5 + n, check);
}

/* ================================================================== entries and signers */
static void sup_add(node_mempool *m, const uint8_t txid[LEDGER_HASH_BYTES]) {
    if (tab_find(m, &m->by_sup, txid, LEDGER_HASH_BYTES, key_sup, NULL) != NIL) return;
    uint32_t i = m->sup_next;
    if (m->sup_count == m->cfg.superseded_max) tab_erase(m, &m->by_sup, m->sup[i], LEDGER_HASH_BYTES, key_sup);
    else m->sup_count++;
    memcpy(m->sup[i], txid, LEDGER_HASH_BYTES);
    tab_insert(m, &m->by_sup, txid, LEDGER_HASH_BYTES, key_sup, i);
    m->sup_next = (i + 1) % m->cfg.superseded_max;
}

static uint32_t signer_get(node_mempool *m, const uint8_t key[LEDGER_SECP_PUB_BYTES]) {
    uint32_t si = tab_find(m, &m->by_signer, key, LEDGER_SECP_PUB_BYTES, key_signer, NULL);
    if (si != NIL) return si;
    si = m->signer_free;
    TEM_ASSERT(si != NIL); /* signers <= entries <= txs_max */
    mp__signer *s = &m->signers[si];
    m->signer_free = s->head;
    memset(s, 0, sizeof *s);
    memcpy(s->key, key, LEDGER_SECP_PUB_BYTES);
    s->head = NIL;
    s->active_pos = m->n_active;
    m->active[m->n_active++] = si;
    tab_insert(m, &m->by_signer, key, LEDGER_SECP_PUB_BYTES, key_signer, si);
    return si;
}

static void signer_put(node_mempool *m, uint32_t si) {
    mp__signer *s = &m->signers[si];
    TEM_ASSERT(s->count == 0);
    TEM_ASSERT(s->head == NIL);
    tab_erase(m, &m->by_signer, s->key, LEDGER_SECP_PUB_BYTES, key_signer);
    uint32_t last = m->active[--m->n_active];
    m->active[s->active_pos] = last;
    m->signers[last].active_pos = s->active_pos;
    s->head = m->signer_free;
    m->signer_free = si;
}

/* Takes ownership of bytes and of the decoded *t (zeroed here). The caller has checked every
 * bound. */
/* Every change of an entry's state goes through here, so the count of unverified entries
 * (node_mempool_verified) cannot drift from the states (recovery moves VERIFY -> PENDING). */
static void ent_set_state(node_mempool *m, mp__entry *e, uint8_t state) {
    if (e->state == MP__VERIFY) {
        TEM_ASSERT(m->unverified > 0);
        m->unverified--;
    }
    if (state == MP__VERIFY) m->unverified++;
    e->state = state;
}

static uint32_t ent_add(node_mempool *m, ledger_tx *t, uint8_t *bytes, size_t len, uint8_t state) {
    uint32_t i = m->ent_free;
    TEM_ASSERT(i != NIL);
    mp__entry *e = &m->ents[i];
    m->ent_free = e->q_next;
    memset(e, 0, sizeof *e);
    memcpy(e->txid, t->txid, LEDGER_HASH_BYTES);
    memcpy(e->sig, t->stx->sig.data, LEDGER_SECP_SIG_BYTES);
    memcpy(e->signer, t->body->signer.data, LEDGER_SECP_PUB_BYTES);
    e->bytes = bytes;
    e->len = len;
    e->tx = *t;
    memset(t, 0, sizeof *t);
    ent_set_state(m, e, state);
    e->nonce = e->tx.body->nonce;
    e->seq = m->next_seq++;
    e->q_next = NIL;
    e->arrived_ms = uv_now(m->loop);
    tab_insert(m, &m->by_txid, e->txid, LEDGER_HASH_BYTES, key_txid, i);
    /* Two held txs with the same signature bytes need one ECDSA signature valid for two
     * digests, or a forgery still to be verified: the second is simply not indexed (found by
     * decoding, as before it was indexed at all). */
    if (tab_find(m, &m->by_sig, e->sig, LEDGER_SECP_SIG_BYTES, key_sig, NULL) == NIL) {
        tab_insert(m, &m->by_sig, e->sig, LEDGER_SECP_SIG_BYTES, key_sig, i);
        e->in_by_sig = true;
    }

    e->fifo_next = NIL;
    e->fifo_prev = m->fifo_tail;
    if (m->fifo_tail != NIL) m->ents[m->fifo_tail].fifo_next = i;
    else m->fifo_head = i;
    m->fifo_tail = i;

    uint32_t si = signer_get(m, e->signer);
    mp__signer *s = &m->signers[si];
    e->signer_idx = si;
    uint32_t prev = NIL, cur = s->head;
    while (cur != NIL && m->ents[cur].nonce < e->nonce) {
        prev = cur;
        cur = m->ents[cur].s_next;
    }
    TEM_ASSERT(cur == NIL || m->ents[cur].nonce != e->nonce);
    e->s_prev = prev;
    e->s_next = cur;
    if (prev != NIL) m->ents[prev].s_next = i;
    else s->head = i;
    if (cur != NIL) m->ents[cur].s_prev = i;
    s->count++;

    m->count++;
    m->bytes += len;
    return i;
}

/* Frees what a removed entry kept and returns its slot to the free list. */
static void ent_release_slot(node_mempool *m, uint32_t i) {
    mp__entry *e = &m->ents[i];
    tem_free(e->bytes);
    e->bytes = NULL;
    ledger_tx_free(&e->tx);
    ent_set_state(m, e, MP__FREE);
    e->q_next = m->ent_free;
    m->ent_free = i;
}

static void ent_remove(node_mempool *m, uint32_t i) {
    mp__entry *e = &m->ents[i];
    TEM_ASSERT(e->state != MP__FREE);
    if (e->state == MP__PENDING) {
        TEM_ASSERT(m->st.log_live_bytes >= rec_bytes(e->len));
        m->st.log_live_bytes -= rec_bytes(e->len);
    }
    tab_erase(m, &m->by_txid, e->txid, LEDGER_HASH_BYTES, key_txid);
    if (e->in_by_sig) tab_erase(m, &m->by_sig, e->sig, LEDGER_SECP_SIG_BYTES, key_sig);
    e->in_by_sig = false;
    if (e->fifo_prev != NIL) m->ents[e->fifo_prev].fifo_next = e->fifo_next;
    else m->fifo_head = e->fifo_next;
    if (e->fifo_next != NIL) m->ents[e->fifo_next].fifo_prev = e->fifo_prev;
    else m->fifo_tail = e->fifo_prev;

    mp__signer *s = &m->signers[e->signer_idx];
    if (e->s_prev != NIL) m->ents[e->s_prev].s_next = e->s_next;
    else s->head = e->s_next;
    if (e->s_next != NIL) m->ents[e->s_next].s_prev = e->s_prev;
    TEM_ASSERT(s->count > 0);
    if (--s->count == 0) signer_put(m, e->signer_idx);

    TEM_ASSERT(m->count > 0);
    TEM_ASSERT(m->bytes >= e->len);
    m->count--;
    m->bytes -= e->len;
    if (e->tag && m->cfg.release) m->cfg.release(m->cfg.release_ctx, e->tag);
    e->tag = 0;
    if (e->lends) {
        /* A view reads e->tx, perhaps on a worker thread: nothing of it is touched here. */
        ent_set_state(m, e, MP__PARKED);
        m->parked++;
        return;
    }
    ent_release_slot(m, i);
}

/* Entry i is durable and verified. */
static void ent_pending(node_mempool *m, uint32_t i) { ent_set_state(m, &m->ents[i], MP__PENDING); }

/* Removes entry i and reports rc to its submitter (the last thing done, so the callback sees
 * the pool without the entry). */
static void ent_finish(node_mempool *m, uint32_t i, int rc) {
    mp__entry *e = &m->ents[i];
    uint8_t txid[LEDGER_HASH_BYTES];
    memcpy(txid, e->txid, sizeof txid);
    node_mempool_done_fn done = e->done;
    void *ctx = e->done_ctx;
    if (e->gone == MP__GONE_SUPERSEDED) sup_add(m, txid);
    ent_remove(m, i);
    if (rc == 0) m->st.durable++;
    if (done) done(ctx, rc, txid);
}

static int gone_rc(const mp__entry *e) { return e->gone == MP__GONE_COMMITTED ? 0 : NODE_MEMPOOL_ESUPERSEDED; }

static bool is_committed(node_mempool *m, const uint8_t txid[LEDGER_HASH_BYTES]) {
    uint64_t h;
    uint32_t pos;
    uint8_t *rc;
    size_t rl;
    if (ledger_store_receipt(m->store, txid, &h, &pos, &rc, &rl) != LEDGER_OK) return false;
    tem_free(rc);
    return true;
}

/* ================================================================== log file (any thread) */
static int write_all(int fd, const uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int fsync_dir(const char *dir) {
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return -1;
    int rc = fsync(dfd);
    if (close(dfd) != 0) rc = -1;
    return rc;
}

/* Replaces the log with buf: temp file, fdatasync, rename, directory fsync (so the new name is
 * as durable as the data), then reopens it for appending. Returns 0 with *fd_out set, -1 when
 * it failed before the rename (the old log is intact), -2 when it failed after. */
static int log_rewrite(const char *path, const char *tmp, const char *dir, const uint8_t *buf,
                       size_t len, int *fd_out) {
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    int rc = write_all(fd, buf, len);
    if (rc == 0) rc = fdatasync(fd);
    if (close(fd) != 0) rc = -1;
    if (rc != 0 || rename(tmp, path) != 0) {
        (void)unlink(tmp);
        return -1;
    }
    if (fsync_dir(dir) != 0) return -2;
    fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0) return -2;
    *fd_out = fd;
    return 0;
}

/* Header plus the records of every durable entry, in arrival order. tem_malloc'd; NULL on OOM. */
static uint8_t *log_snapshot(node_mempool *m, size_t *len) {
    size_t n = NODE_MEMPOOL_LOG_HEADER_BYTES;
    for (uint32_t i = m->fifo_head; i != NIL; i = m->ents[i].fifo_next)
        if (m->ents[i].state == MP__PENDING) n += rec_bytes(m->ents[i].len);
    uint8_t *buf = tem_malloc(n), *p = buf;
    if (!buf) return NULL;
    memcpy(p, NODE_MEMPOOL_LOG_MAGIC, 8);
    memcpy(p + 8, m->cfg.genesis->hash, LEDGER_HASH_BYTES);
    p += NODE_MEMPOOL_LOG_HEADER_BYTES;
    for (uint32_t i = m->fifo_head; i != NIL; i = m->ents[i].fifo_next) {
        mp__entry *e = &m->ents[i];
        if (e->state != MP__PENDING) continue;
        rec_put(p, NODE_MEMPOOL_REC_TX, e->bytes, e->len, e->check);
        p += rec_bytes(e->len);
    }
    TEM_ASSERT((size_t)(p - buf) == n);
    *len = n;
    return buf;
}

/* ================================================================== compaction */
static void log_kick(node_mempool *m);

static void compact_work(uv_work_t *req) {
    mp__compact_job *c = req->data;
    node_mempool *m = c->m;
    c->new_fd = -1;
    c->rc = log_rewrite(m->log_path, m->tmp_path, m->dir_path, c->buf, c->len, &c->new_fd);
    /* The loop sends nothing to the old descriptor while a rewrite runs. */
    if (c->rc == 0 && c->old_fd >= 0) (void)close(c->old_fd);
}

static void compact_after(uv_work_t *req, int status) {
    mp__compact_job *c = req->data;
    node_mempool *m = c->m;
    TEM_ASSERT(m->compacting);
    m->compacting = false;
    tem_free(c->buf);
    c->buf = NULL;
    if (status == 0 && c->rc == 0) {
        m->fd = c->new_fd;
        m->st.log_bytes = c->len;
        m->broken = false;
        m->disk_full = false;
        m->st.compactions++;
    } else if (status == 0) {
        fprintf(stderr, "mempool: rewriting %s failed (%s)\n", m->log_path,
                c->rc == -2 ? "after the rename" : "before the rename");
        /* After the rename the open descriptor names an unlinked file: appending there would
         * be lost, so stay broken until a rewrite succeeds. */
        if (c->rc == -2) m->broken = true;
    }
    if (!m->closing) log_kick(m);
}

/* Rewrites the log in the thread pool when it is big and mostly dead, or when it failed
 * (`m->broken`). Only while no write is in flight, so every durable record is in the snapshot
 * or will be appended after it. */
static void maybe_compact(node_mempool *m) {
    if (m->compacting || m->writing || m->closing || !m->recovered) return;
    if (!m->broken) {
        uint64_t lb = m->st.log_bytes, live = m->st.log_live_bytes + NODE_MEMPOOL_LOG_HEADER_BYTES;
        if (lb < m->cfg.compact_min_bytes || lb - live <= live) return;
    }
    size_t len;
    uint8_t *buf = log_snapshot(m, &len);
    if (!buf) return; /* retried at the next block */
    m->cj.m = m;
    m->cj.buf = buf;
    m->cj.len = len;
    m->cj.old_fd = m->fd;
    m->cj.req.data = &m->cj;
    m->compacting = true;
    int rc = uv_queue_work(m->loop, &m->cj.req, compact_work, compact_after);
    TEM_ASSERT(rc == 0); /* fails only for a NULL work callback */
}

/* ================================================================== group commit */
static void on_write(uv_fs_t *req);
static void on_sync(uv_fs_t *req);

/* The write or fdatasync of the batch in flight failed: nothing in it can be called durable
 * (after a failed fdatasync the kernel may have dropped the dirty pages), so its txs are
 * refused with EIO, and the log is rewritten from the durable entries before the next append. */
static void log_failed(node_mempool *m, const char *what, ssize_t uvrc) {
    m->disk_full = uvrc == UV_ENOSPC || uvrc == -EDQUOT;
    fprintf(stderr, "mempool: %s%s %s: %s\n", m->disk_full ? "ERROR: disk full: " : "", what, m->log_path,
            net_uv_error((int)uvrc));
    m->broken = true;
    uint32_t i = m->fly_head;
    m->fly_head = NIL;
    m->fly_len = 0;
    /* Keep `writing` set while callbacks run so none of them starts a rewrite that would
     * miss entries of this list. */
    while (i != NIL) {
        uint32_t next = m->ents[i].q_next;
        mp__entry *e = &m->ents[i];
        ent_finish(m, i, e->gone ? gone_rc(e) : m->disk_full ? NODE_MEMPOOL_EDISKFULL : NODE_MEMPOOL_EIO);
        i = next;
    }
    m->writing = false;
    maybe_compact(m);
}

static void write_more(node_mempool *m) {
    m->wbuf = uv_buf_init((char *)m->fly + m->fly_off, (unsigned)(m->fly_len - m->fly_off));
    int rc = uv_fs_write(m->loop, &m->write_req, m->fd, &m->wbuf, 1, -1, on_write);
    if (rc < 0) log_failed(m, "write", rc);
}

static void on_write(uv_fs_t *req) {
    node_mempool *m = req->data;
    ssize_t res = req->result;
    uv_fs_req_cleanup(req);
    m->st.log_writes++;
    if (res <= 0) {
        log_failed(m, "write", res < 0 ? res : UV_EIO);
        return;
    }
    m->fly_off += (size_t)res;
    m->st.log_bytes += (uint64_t)res;
    if (m->fly_off < m->fly_len) {
        write_more(m);
        return;
    }
    int rc = uv_fs_fdatasync(m->loop, &m->sync_req, m->fd, on_sync);
    if (rc < 0) log_failed(m, "fdatasync", rc);
}

static void on_sync(uv_fs_t *req) {
    node_mempool *m = req->data;
    ssize_t res = req->result;
    uv_fs_req_cleanup(req);
    m->st.log_fsyncs++;
    if (res < 0) {
        log_failed(m, "fdatasync", res);
        return;
    }
    uint32_t i = m->fly_head;
    m->fly_head = NIL;
    m->fly_len = 0;
    /* `writing` stays set while callbacks run (see log_failed). A later entry of this list is
     * still MP__WRITE, so no callback can remove it: block_applied only flags such entries. */
    while (i != NIL) {
        mp__entry *e = &m->ents[i];
        uint32_t next = e->q_next;
        e->q_next = NIL;
        if (e->gone) {
            ent_finish(m, i, gone_rc(e));
        } else {
            ent_pending(m, i);
            m->st.log_live_bytes += rec_bytes(e->len);
            m->st.durable++;
            if (e->done) e->done(e->done_ctx, 0, e->txid);
        }
        i = next;
    }
    m->writing = false;
    maybe_compact(m);
    if (!m->compacting) log_kick(m);
}

/* Starts writing everything accumulated, unless a write, a rewrite or a failure holds it. */
static void log_kick(node_mempool *m) {
    if (m->writing || m->compacting || m->broken || m->fd < 0 || m->acc_len == 0) return;
    uint8_t *b = m->fly;
    size_t cap = m->fly_cap;
    m->fly = m->acc;
    m->fly_cap = m->acc_cap;
    m->fly_len = m->acc_len;
    m->fly_off = 0;
    m->fly_head = m->acc_head;
    m->acc = b;
    m->acc_cap = cap;
    m->acc_len = 0;
    m->acc_head = m->acc_tail = NIL;
    m->writing = true;
    m->write_req.data = m;
    m->sync_req.data = m;
    write_more(m);
}

/* Buffers entry i's record for the next write. NODE_MEMPOOL_OK or NODE_MEMPOOL_ENOMEM. */
static int acc_append(node_mempool *m, uint32_t i) {
    mp__entry *e = &m->ents[i];
    size_t need = rec_bytes(e->len);
    if (m->acc_cap - m->acc_len < need) {
        size_t cap = m->acc_cap ? m->acc_cap : 64 * 1024;
        while (cap - m->acc_len < need) cap *= 2;
        uint8_t *p = tem_realloc(m->acc, cap);
        if (!p) return NODE_MEMPOOL_ENOMEM;
        m->acc = p;
        m->acc_cap = cap;
    }
    rec_put(m->acc + m->acc_len, NODE_MEMPOOL_REC_TX, e->bytes, e->len, e->check);
    m->acc_len += need;
    ent_set_state(m, e, MP__WRITE);
    e->q_next = NIL;
    if (m->acc_tail != NIL) m->ents[m->acc_tail].q_next = i;
    else m->acc_head = i;
    m->acc_tail = i;
    return NODE_MEMPOOL_OK;
}

/* ================================================================== verification */
static void verify_work(uv_work_t *req) {
    mp__job *j = req->data;
    node_mempool *m = j->m;
    for (uint32_t k = 0; k < j->n; k++) {
        mp__entry *e = &m->ents[j->idx[k]];
        e->vrc = e->sig_known ? LEDGER_OK : ledger_secp_verify(e->signer, e->txid, e->sig);
        if (e->vrc == LEDGER_OK) e->check = rec_check(NODE_MEMPOOL_REC_TX, e->bytes, e->len);
    }
}

static void vq_kick(node_mempool *m);

static void verify_after(uv_work_t *req, int status) {
    mp__job *j = req->data;
    node_mempool *m = j->m;
    TEM_ASSERT(j->busy);
    if (status == 0) m->st.verify_jobs++;
    for (uint32_t k = 0; k < j->n; k++) {
        uint32_t i = j->idx[k];
        mp__entry *e = &m->ents[i];
        TEM_ASSERT(e->state == MP__VERIFY);
        e->in_job = false;
        if (status != 0 || m->closing) {
            ent_finish(m, i, NODE_MEMPOOL_ECLOSING);
        } else if (e->vrc != LEDGER_OK) {
            m->st.verify_failed++;
            ent_finish(m, i, e->vrc);
        } else if (e->gone) {
            ent_finish(m, i, gone_rc(e));
        } else if (acc_append(m, i) != NODE_MEMPOOL_OK) {
            ent_finish(m, i, NODE_MEMPOOL_ENOMEM);
        } else if (e->announce && m->cfg.announce) {
            m->cfg.announce(m->cfg.announce_ctx, e->txid);
        }
    }
    j->n = 0;
    j->busy = false;
    m->jobs_busy--;
    if (m->closing) return;
    log_kick(m);
    vq_kick(m);
    if (m->cfg.verified) m->cfg.verified(m->cfg.verified_ctx);
}

/* Hands queued txs to free work items, split evenly so every core gets a share. */
static void vq_dispatch(node_mempool *m) {
    uint32_t jmax = m->cfg.verify_jobs_max;
    for (uint32_t ji = 0; ji < jmax && m->vq_len > 0; ji++) {
        mp__job *j = &m->jobs[ji];
        if (j->busy) continue;
        uint32_t free_jobs = jmax - m->jobs_busy;
        uint32_t chunk = (m->vq_len + free_jobs - 1) / free_jobs;
        if (chunk > m->cfg.verify_batch_max) chunk = m->cfg.verify_batch_max;
        j->n = 0;
        while (j->n < chunk) {
            uint32_t i = m->vq_head;
            m->vq_head = m->ents[i].q_next;
            m->ents[i].q_next = NIL;
            /* A proposal's validation may have verified this pair while it waited here; and a
             * block applied meanwhile (one fetched while catching up verifies its own txs) may
             * have committed or superseded it, which decides its answer whatever its signature. */
            m->ents[i].sig_known = m->ents[i].gone ||
                                   (m->cfg.sig_known && m->cfg.sig_known(m->cfg.sig_known_ctx, m->ents[i].txid, m->ents[i].sig));
            m->ents[i].in_job = true;
            j->idx[j->n++] = i;
            m->vq_len--;
        }
        if (m->vq_head == NIL) m->vq_tail = NIL;
        j->busy = true;
        m->jobs_busy++;
        j->req.data = j;
        int rc = uv_queue_work(m->loop, &j->req, verify_work, verify_after);
        TEM_ASSERT(rc == 0); /* fails only for a NULL work callback */
    }
}

static void on_idle(uv_idle_t *h) {
    node_mempool *m = h->data;
    int rc = uv_idle_stop(h);
    TEM_ASSERT(rc == 0);
    m->idle_on = false;
    vq_dispatch(m);
}

/* Dispatch waits for the idle phase so every submission of this loop iteration shares a work
 * item; the idle handle runs only while a work item is free, so a busy pool never spins. */
static void vq_kick(node_mempool *m) {
    if (m->idle_on || m->closing || m->vq_len == 0 || m->jobs_busy >= m->cfg.verify_jobs_max) return;
    int rc = uv_idle_start(&m->idle, on_idle);
    TEM_ASSERT(rc == 0); /* fails only for a NULL callback */
    m->idle_on = true;
}

uint32_t node_mempool_verify_first(node_mempool *m, const uint8_t (*txids)[LEDGER_HASH_BYTES], size_t n) {
    uint32_t marked = 0;
    for (size_t k = 0; k < n; k++) {
        uint32_t i = tab_find(m, &m->by_txid, txids[k], LEDGER_HASH_BYTES, key_txid, NULL);
        if (i == NIL || m->ents[i].state != MP__VERIFY || m->ents[i].in_job || m->ents[i].urgent) continue;
        m->ents[i].urgent = true;
        marked++;
    }
    if (marked == 0) return 0;
    /* A validation waiting for its txs asks again every millisecond: when the marked entries
     * already lead the queue, nothing moves and the pass over the whole queue is skipped. */
    uint32_t lead = 0;
    for (uint32_t i = m->vq_head; i != NIL && lead < marked && m->ents[i].urgent; i = m->ents[i].q_next) lead++;
    if (lead == marked) {
        for (uint32_t i = m->vq_head, k = 0; k < marked; i = m->ents[i].q_next, k++) m->ents[i].urgent = false;
        vq_kick(m);
        return marked;
    }
    /* One pass splits the queue in two, each in its old order: the marked entries, then the rest. */
    uint32_t uh = NIL, ut = NIL, rh = NIL, rt = NIL;
    for (uint32_t i = m->vq_head, next; i != NIL; i = next) {
        mp__entry *e = &m->ents[i];
        next = e->q_next;
        e->q_next = NIL;
        uint32_t *h = e->urgent ? &uh : &rh, *t = e->urgent ? &ut : &rt;
        e->urgent = false;
        if (*t != NIL) m->ents[*t].q_next = i;
        else *h = i;
        *t = i;
    }
    if (ut != NIL) m->ents[ut].q_next = rh;
    m->vq_head = uh != NIL ? uh : rh;
    m->vq_tail = rt != NIL ? rt : ut;
    vq_kick(m);
    return marked;
}

/* ================================================================== lifecycle */
static char *dup_str(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    char *p = tem_malloc(a + b + 1);
    if (!p) return NULL;
    memcpy(p, s, a);
    memcpy(p + a, suffix, b + 1);
    return p;
}

static void free_tables(node_mempool *m) {
    if (m->ents)
        for (uint32_t i = 0; i < m->cfg.txs_max; i++) {
            tem_free(m->ents[i].bytes);
            ledger_tx_free(&m->ents[i].tx);
        }
    tem_free(m->ents);
    tem_free(m->by_txid.slot);
    tem_free(m->by_sig.slot);
    tem_free(m->signers);
    tem_free(m->active);
    tem_free(m->by_signer.slot);
    tem_free(m->sup);
    tem_free(m->by_sup.slot);
    tem_free(m->jobs);
    tem_free(m->job_idx);
    tem_free(m->acc);
    tem_free(m->fly);
    tem_free(m->log_path);
    tem_free(m->tmp_path);
    tem_free(m->dir_path);
    tem_free(m);
}

int node_mempool_new(uv_loop_t *loop, const node_mempool_config *cfg, ledger_store *store,
                     node_mempool **out) {
    if (!loop || !cfg || !store || !out || !cfg->log_path || !cfg->log_path[0] || !cfg->genesis)
        return NODE_MEMPOOL_EINVAL;
    node_mempool_config c = *cfg;
    if (c.bytes_max == 0) c.bytes_max = NODE_MEMPOOL_BYTES_DEFAULT;
    if (c.verify_jobs_max == 0) c.verify_jobs_max = NODE_MEMPOOL_VERIFY_JOBS_DEFAULT;
    if (c.verify_batch_max == 0) c.verify_batch_max = NODE_MEMPOOL_VERIFY_BATCH_DEFAULT;
    if (c.superseded_max == 0) c.superseded_max = NODE_MEMPOOL_SUPERSEDED_DEFAULT;
    if (c.compact_min_bytes == 0) c.compact_min_bytes = NODE_MEMPOOL_COMPACT_MIN_BYTES_DEFAULT;
    if (c.txs_max == 0 || c.txs_max > NODE_MEMPOOL_TXS_MAX || c.nonce_window == 0 ||
        c.nonce_window > NODE_MEMPOOL_NONCE_WINDOW_MAX || c.per_signer_max == 0 ||
        c.per_signer_max > c.txs_max || c.verify_jobs_max > NODE_MEMPOOL_VERIFY_JOBS_MAX ||
        c.verify_batch_max > NODE_MEMPOOL_VERIFY_BATCH_MAX || c.superseded_max > NODE_MEMPOOL_SUPERSEDED_MAX)
        return NODE_MEMPOOL_EINVAL;
    if (sodium_init() < 0) return NODE_MEMPOOL_EIO;

    node_mempool *m = tem_calloc(1, sizeof *m);
    if (!m) return NODE_MEMPOOL_ENOMEM;
    m->cfg = c;
    m->loop = loop;
    m->store = store;
    m->fd = -1;
    ledger_tx_limits_from_genesis(c.genesis, &m->lim);
    uint32_t outer = m->lim.max_admin_tx_bytes > m->lim.max_tx_bytes ? m->lim.max_admin_tx_bytes : m->lim.max_tx_bytes;
    m->payload_max = (size_t)outer + 128 + 1;
    randombytes_buf(m->hkey, sizeof m->hkey);
    m->fifo_head = m->fifo_tail = NIL;
    m->vq_head = m->vq_tail = NIL;
    m->acc_head = m->acc_tail = m->fly_head = NIL;

    m->log_path = dup_str(c.log_path, "");
    m->tmp_path = dup_str(c.log_path, ".tmp");
    m->dir_path = dup_str(c.log_path, "");
    m->ents = tem_calloc(c.txs_max, sizeof *m->ents);
    m->signers = tem_calloc(c.txs_max, sizeof *m->signers);
    m->active = tem_calloc(c.txs_max, sizeof *m->active);
    m->sup = tem_calloc(c.superseded_max, sizeof *m->sup);
    m->jobs = tem_calloc(c.verify_jobs_max, sizeof *m->jobs);
    m->job_idx = tem_calloc((size_t)c.verify_jobs_max * c.verify_batch_max, sizeof *m->job_idx);
    int t1 = tab_init(&m->by_txid, c.txs_max), t2 = tab_init(&m->by_signer, c.txs_max),
        t3 = tab_init(&m->by_sup, c.superseded_max), t4 = tab_init(&m->by_sig, c.txs_max);
    if (!m->log_path || !m->tmp_path || !m->dir_path || !m->ents || !m->signers || !m->active ||
        !m->sup || !m->jobs || !m->job_idx || t1 || t2 || t3 || t4) {
        free_tables(m);
        return NODE_MEMPOOL_ENOMEM;
    }
    /* The directory to fsync after a rename: the path up to its last '/', "/" or ".". */
    char *slash = strrchr(m->dir_path, '/');
    if (slash == m->dir_path) slash[1] = 0;
    else if (slash) *slash = 0;
    else strcpy(m->dir_path, "."); /* the copy holds at least one character */
    for (uint32_t i = 0; i < c.txs_max; i++) {
        m->ents[i].q_next = i + 1 < c.txs_max ? i + 1 : NIL;
        m->signers[i].head = i + 1 < c.txs_max ? i + 1 : NIL;
    }
    m->ent_free = 0;
    m->signer_free = 0;
    for (uint32_t j = 0; j < c.verify_jobs_max; j++) {
        m->jobs[j].m = m;
        m->jobs[j].idx = m->job_idx + (size_t)j * c.verify_batch_max;
    }
    int rc = uv_idle_init(loop, &m->idle);
    if (rc != 0) {
        fprintf(stderr, "mempool: uv_idle_init: %s\n", net_uv_error(rc));
        free_tables(m);
        return NODE_MEMPOOL_EIO;
    }
    m->idle.data = m;
    *out = m;
    return NODE_MEMPOOL_OK;
}

static void on_idle_close(uv_handle_t *h) {
    node_mempool *m = h->data;
    m->idle_closed = true;
}

void node_mempool_close(node_mempool *m) {
    if (!m || m->closing) return;
    m->closing = true;
    if (m->idle_on) {
        int rc = uv_idle_stop(&m->idle);
        TEM_ASSERT(rc == 0);
        m->idle_on = false;
    }
    uv_close((uv_handle_t *)&m->idle, on_idle_close);
    while (m->vq_head != NIL) {
        uint32_t i = m->vq_head;
        m->vq_head = m->ents[i].q_next;
        m->vq_len--;
        ent_finish(m, i, NODE_MEMPOOL_ECLOSING);
    }
    m->vq_tail = NIL;
    /* A work item not started yet is cancelled (its after-callback sees UV_ECANCELED); one
     * running finishes and its txs get ECLOSING there. */
    for (uint32_t j = 0; j < m->cfg.verify_jobs_max; j++)
        if (m->jobs[j].busy) (void)uv_cancel((uv_req_t *)&m->jobs[j].req);
    if (m->compacting) (void)uv_cancel((uv_req_t *)&m->cj.req);
    uint32_t i = m->acc_head;
    m->acc_head = m->acc_tail = NIL;
    m->acc_len = 0;
    while (i != NIL) {
        uint32_t next = m->ents[i].q_next;
        ent_finish(m, i, NODE_MEMPOOL_ECLOSING);
        i = next;
    }
}

bool node_mempool_is_closed(const node_mempool *m) {
    return m->idle_closed && m->jobs_busy == 0 && !m->writing && !m->compacting;
}

void node_mempool_free(node_mempool *m) {
    if (!m) return;
    /* The idle handle may have been closed by a uv_walk over the loop rather than by
     * node_mempool_close; either way no callback or thread-pool work may refer to m. */
    TEM_ASSERT(m->idle_closed || uv_is_closing((uv_handle_t *)&m->idle));
    TEM_ASSERT(m->jobs_busy == 0);
    TEM_ASSERT(!m->writing && !m->compacting);
    if (m->fd >= 0 && close(m->fd) != 0) fprintf(stderr, "mempool: close %s: %s\n", m->log_path, strerror(errno));
    free_tables(m);
}

/* ================================================================== recovery */
typedef struct {
    int fd;
    uint8_t *buf;
    size_t cap, pos, end;
    uint64_t consumed; /* file offset of buf[pos] */
} mp__reader;

/* Makes n bytes available at r->buf + r->pos. 1 = yes, 0 = end of file first, -1 = I/O error. */
static int reader_need(mp__reader *r, size_t n) {
    TEM_ASSERT(n <= r->cap);
    if (r->end - r->pos >= n) return 1;
    memmove(r->buf, r->buf + r->pos, r->end - r->pos);
    r->end -= r->pos;
    r->pos = 0;
    while (r->end < n) {
        ssize_t got = read(r->fd, r->buf + r->end, r->cap - r->end);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return -1;
        if (got == 0) return 0;
        r->end += (size_t)got;
    }
    return 1;
}

/* One record's SignedTx from the log: kept only if it still could be committed. */
static int recover_one(node_mempool *m, const uint8_t *p, size_t n) {
    ledger_tx t;
    int rc = ledger_tx_decode(p, n, &m->lim, &t);
    if (rc == LEDGER_ENOMEM) return NODE_MEMPOOL_ENOMEM;
    if (rc != LEDGER_OK) goto drop;
    if (tab_find(m, &m->by_txid, t.txid, LEDGER_HASH_BYTES, key_txid, NULL) != NIL) goto drop;
    const uint8_t *signer = t.body->signer.data;
    uint64_t sn = ledger_state_nonce(ledger_store_state(m->store), signer);
    if (t.body->nonce < sn) {
        if (!is_committed(m, t.txid)) sup_add(m, t.txid);
        goto drop;
    }
    uint32_t si = tab_find(m, &m->by_signer, signer, LEDGER_SECP_PUB_BYTES, key_signer, NULL);
    for (uint32_t i = si == NIL ? NIL : m->signers[si].head; i != NIL; i = m->ents[i].s_next)
        if (m->ents[i].nonce == t.body->nonce) goto drop;
    if (ledger_tx_verify(&t) != LEDGER_OK) goto drop;
    if (m->count + m->parked >= m->cfg.txs_max || m->bytes + n > m->cfg.bytes_max) {
        ledger_tx_free(&t);
        return NODE_MEMPOOL_EFULL;
    }
    uint8_t *copy = tem_malloc(n);
    if (!copy) {
        ledger_tx_free(&t);
        return NODE_MEMPOOL_ENOMEM;
    }
    memcpy(copy, p, n);
    uint32_t i = ent_add(m, &t, copy, n, MP__VERIFY);
    ent_pending(m, i);
    m->ents[i].check = rec_check(NODE_MEMPOOL_REC_TX, copy, n);
    m->st.log_live_bytes += rec_bytes(n);
    m->st.recovered++;
    ledger_tx_free(&t);
    return NODE_MEMPOOL_OK;
drop:
    ledger_tx_free(&t);
    m->st.recover_dropped++;
    return NODE_MEMPOOL_OK;
}

/* Whether an intact record starts at r->buf + r->pos: its length is in range and its check
 * matches. 1 = yes, 0 = no, -1 = I/O error. Reads ahead as needed. */
static int record_at(node_mempool *m, mp__reader *r) {
    int got = reader_need(r, 4);
    if (got <= 0) return got;
    uint32_t len = tem_get_u32le(r->buf + r->pos);
    if (len < 2 || len > m->payload_max) return 0;
    if ((got = reader_need(r, (size_t)len + 8)) <= 0) return got;
    const uint8_t *rec = r->buf + r->pos;
    return tem_get_u32le(rec + 4 + len) == rec_check(rec[4], rec + 5, len - 1);
}

/* Reads every intact record. A damaged one (flipped bits, a bad length) is skipped: the reader
 * slides forward byte by byte to the next offset where an intact record starts, logs an ERROR
 * naming the damaged range, and goes on, so one bad sector costs the txs it holds and never
 * the acknowledged txs after it. Damage with no intact record after it is a torn tail (a crash
 * mid-write), counted in recover_torn_bytes. */
static int recover_read(node_mempool *m, int fd) {
    struct stat sb;
    if (fstat(fd, &sb) != 0) return NODE_MEMPOOL_EIO;
    mp__reader r = {.fd = fd, .cap = m->payload_max + NODE_MEMPOOL_REC_OVERHEAD_BYTES + 65536};
    r.buf = tem_malloc(r.cap);
    if (!r.buf) return NODE_MEMPOOL_ENOMEM;
    int rc = NODE_MEMPOOL_OK;
    int got = reader_need(&r, NODE_MEMPOOL_LOG_HEADER_BYTES);
    if (got < 0) {
        rc = NODE_MEMPOOL_EIO;
        goto out;
    }
    if (got == 0 || memcmp(r.buf, NODE_MEMPOOL_LOG_MAGIC, 8) != 0 ||
        memcmp(r.buf + 8, m->cfg.genesis->hash, LEDGER_HASH_BYTES) != 0) {
        rc = NODE_MEMPOOL_ECORRUPT;
        goto out;
    }
    r.pos += NODE_MEMPOOL_LOG_HEADER_BYTES;
    r.consumed = NODE_MEMPOOL_LOG_HEADER_BYTES;
    for (;;) {
        if ((got = record_at(m, &r)) < 0) break;
        if (got == 0) {
            if (r.end - r.pos == 0 && reader_need(&r, 1) == 0) break; /* clean end of the log */
            /* Damaged here: find the next intact record, if any. */
            uint64_t bad_at = r.consumed;
            int found = 0;
            while (r.end - r.pos > 0 || reader_need(&r, 1) > 0) {
                r.pos++;
                r.consumed++;
                if ((found = record_at(m, &r)) != 0) break;
            }
            if (found < 0) {
                got = -1;
                break;
            }
            if (found == 0) { /* nothing intact after it: a torn tail */
                r.consumed = bad_at;
                break;
            }
            m->st.recover_skipped_bytes += r.consumed - bad_at;
            m->st.recover_damaged++;
            fprintf(stderr,
                    "mempool: ERROR: %s: damaged record at offset %llu; skipped %llu bytes (the txs in them are lost) "
                    "and recovered on from the intact record at offset %llu\n",
                    m->log_path, (unsigned long long)bad_at, (unsigned long long)(r.consumed - bad_at),
                    (unsigned long long)r.consumed);
        }
        uint32_t len = tem_get_u32le(r.buf + r.pos);
        const uint8_t *rec = r.buf + r.pos;
        if (rec[4] == NODE_MEMPOOL_REC_TX) {
            if ((rc = recover_one(m, rec + 5, len - 1)) != NODE_MEMPOOL_OK) goto out;
        } else {
            m->st.recover_dropped++; /* a type from a later version: skipped, not fatal */
        }
        r.pos += (size_t)len + 8;
        r.consumed += (uint64_t)len + 8;
    }
    if (got < 0) {
        rc = NODE_MEMPOOL_EIO;
        goto out;
    }
    if ((uint64_t)sb.st_size > r.consumed) m->st.recover_torn_bytes = (uint64_t)sb.st_size - r.consumed;
out:
    tem_free(r.buf);
    return rc;
}

int node_mempool_recover(node_mempool *m, uint32_t *recovered) {
    TEM_ASSERT(!m->recovered);
    TEM_ASSERT(!m->closing);
    int fd = open(m->log_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno != ENOENT) return NODE_MEMPOOL_EIO;
    if (fd >= 0) {
        int rc = recover_read(m, fd);
        if (close(fd) != 0 && rc == NODE_MEMPOOL_OK) rc = NODE_MEMPOOL_EIO;
        if (rc != NODE_MEMPOOL_OK) return rc; /* the entries read so far are freed with the pool */
    }
    size_t len;
    uint8_t *buf = log_snapshot(m, &len);
    if (!buf) return NODE_MEMPOOL_ENOMEM;
    int nfd = -1;
    int rc = log_rewrite(m->log_path, m->tmp_path, m->dir_path, buf, len, &nfd);
    tem_free(buf);
    if (rc != 0) {
        fprintf(stderr, "mempool: cannot rewrite %s: %s\n", m->log_path, strerror(errno));
        return NODE_MEMPOOL_EIO;
    }
    m->fd = nfd;
    m->st.log_bytes = len;
    m->st.compactions++;
    m->recovered = true;
    if (recovered) *recovered = (uint32_t)m->st.recovered;
    return NODE_MEMPOOL_OK;
}

/* ================================================================== submit */
static int submit(node_mempool *m, const uint8_t *tx, size_t len, const node_mempool_admit *adm,
                  node_mempool_done_fn done, void *ctx, uint8_t txid_out[LEDGER_HASH_BYTES]) {
    if (m->closing) return NODE_MEMPOOL_ECLOSING;
    /* A held tx sent again (gossip, regossip, a client retry) is found by its bytes before
     * anything is decoded or hashed: the answer is the one decoding would give. */
    const ledger_tx *held = node_mempool_find_bytes(m, tx, len);
    if (held) {
        if (txid_out) memcpy(txid_out, held->txid, LEDGER_HASH_BYTES);
        return NODE_MEMPOOL_EDUP;
    }
    ledger_tx t;
    int rc = ledger_tx_decode(tx, len, &m->lim, &t);
    if (rc != LEDGER_OK) return rc;
    if (txid_out) memcpy(txid_out, t.txid, LEDGER_HASH_BYTES);
    const uint8_t *signer = t.body->signer.data;
    uint64_t nonce = t.body->nonce;
    if (tab_find(m, &m->by_txid, t.txid, LEDGER_HASH_BYTES, key_txid, NULL) != NIL) {
        rc = NODE_MEMPOOL_EDUP;
        goto out;
    }
    uint64_t sn = ledger_state_nonce(ledger_store_state(m->store), signer);
    /* Only a tx whose nonce is used can be committed, so the store is asked only then. */
    if (nonce < sn) {
        rc = is_committed(m, t.txid) ? NODE_MEMPOOL_ECOMMITTED : NODE_MEMPOOL_ENONCELOW;
        goto out;
    }
    if (nonce - sn >= m->cfg.nonce_window) {
        rc = NODE_MEMPOOL_ENONCEFAR;
        goto out;
    }
    uint32_t si = tab_find(m, &m->by_signer, signer, LEDGER_SECP_PUB_BYTES, key_signer, NULL);
    uint64_t before = 0; /* held txs of this signer with nonces sn..nonce-1 */
    for (uint32_t i = si == NIL ? NIL : m->signers[si].head; i != NIL && m->ents[i].nonce <= nonce;
         i = m->ents[i].s_next) {
        if (m->ents[i].nonce == nonce) {
            rc = NODE_MEMPOOL_ENONCETAKEN;
            goto out;
        }
        if (m->ents[i].nonce >= sn) before++;
    }
    /* No log to make the tx durable in: never recovered (or recovery failed), or a failed
     * write not yet repaired by a rewrite. */
    if (m->broken || !m->recovered) {
        rc = m->disk_full ? NODE_MEMPOOL_EDISKFULL : NODE_MEMPOOL_EIO;
        goto out;
    }
    if (m->cfg.precheck && (rc = m->cfg.precheck(m->cfg.precheck_ctx, &t)) != 0) {
        TEM_ASSERT(rc < 0); /* the precheck's contract: 0 or a negative code */
        goto out;
    }
    if (m->count + m->parked >= m->cfg.txs_max || m->bytes + len > m->cfg.bytes_max) {
        rc = NODE_MEMPOOL_EFULL;
        goto out;
    }
    if (si != NIL && m->signers[si].count >= m->cfg.per_signer_max) {
        rc = NODE_MEMPOOL_ESIGNERFULL;
        goto out;
    }
    if (adm && adm->signer_max && si != NIL && m->signers[si].count >= adm->signer_max) {
        rc = NODE_MEMPOOL_ESIGNERSHARE;
        goto out;
    }
    uint8_t *copy = tem_malloc(len);
    if (!copy) {
        rc = NODE_MEMPOOL_ENOMEM;
        goto out;
    }
    memcpy(copy, tx, len);
    uint32_t i = ent_add(m, &t, copy, len, MP__VERIFY);
    m->ents[i].done = done;
    m->ents[i].done_ctx = ctx;
    m->ents[i].tag = adm ? adm->tag : 0;
    m->ents[i].announce = adm && adm->announce;
    m->ents[i].t_ms = adm ? adm->t_ms : 0;
    m->ents[i].model_ms = adm ? adm->model_ms : 0;
    /* A tx behind a nonce gap waits for its signer, not for the queue: its wait says nothing
     * about the estimate (and a client could send gaps to make admission refuse others). */
    m->ents[i].in_order = before == nonce - sn;
    if (m->vq_tail != NIL) m->ents[m->vq_tail].q_next = i;
    else m->vq_head = i;
    m->vq_tail = i;
    m->vq_len++;
    vq_kick(m);
out:
    ledger_tx_free(&t);
    return rc;
}

int node_mempool_submit(node_mempool *m, const uint8_t *tx, size_t len, node_mempool_done_fn done,
                        void *ctx, uint8_t txid_out[LEDGER_HASH_BYTES]) {
    return node_mempool_submit_admit(m, tx, len, NULL, done, ctx, txid_out);
}

int node_mempool_submit_admit(node_mempool *m, const uint8_t *tx, size_t len, const node_mempool_admit *adm,
                              node_mempool_done_fn done, void *ctx, uint8_t txid_out[LEDGER_HASH_BYTES]) {
    TEM_ASSERT(done != NULL);
    int rc = submit(m, tx, len, adm, done, ctx, txid_out);
    if (rc == NODE_MEMPOOL_OK) m->st.submitted++;
    else m->st.refused++;
    return rc;
}

/* ================================================================== blocks */
/* Verified txs whose log record is still being written are selected too: durability here is
 * the promise behind this node's 202, not a condition for a block, and waiting for the
 * fdatasync of a gossiped copy put one more disk flush on every tx's way to a proposal. The
 * pointers are used only before the caller returns to the loop, so a write that fails meanwhile
 * cannot free what they point at. */
static bool selectable(const mp__entry *e) { return (e->state == MP__PENDING || e->state == MP__WRITE) && !e->gone; }

/* Writes up to max entry indices valid for the next block on st (mempool.h, select). */
static uint32_t select_idx(node_mempool *m, ledger_state *st, uint32_t max, uint32_t *out) {
    uint32_t k = 0;
    uint64_t epoch = ++m->sel_epoch;
    for (uint32_t i = m->fifo_head; i != NIL && k < max; i = m->ents[i].fifo_next) {
        mp__entry *e = &m->ents[i];
        if (!selectable(e)) continue;
        mp__signer *s = &m->signers[e->signer_idx];
        if (s->sel_epoch != epoch) {
            s->sel_epoch = epoch;
            s->sel_next = ledger_state_nonce(st, s->key);
        }
        if (e->nonce != s->sel_next) continue;
        /* Emit e, then its successors that arrived before it (the FIFO walk passed them while
         * their predecessor was missing); later ones are met in order. */
        uint32_t j = i;
        for (;;) {
            out[k++] = j;
            s->sel_next++;
            uint32_t f = m->ents[j].s_next;
            if (k >= max || f == NIL) break;
            const mp__entry *fe = &m->ents[f];
            if (fe->nonce != s->sel_next || !selectable(fe) || fe->seq > e->seq) break;
            j = f;
        }
    }
    return k;
}

int node_mempool_select(node_mempool *m, ledger_state *st, uint32_t max, const uint8_t **txs,
                        size_t *lens, uint32_t *n) {
    uint32_t *idx = tem_malloc((max ? max : 1) * sizeof *idx);
    if (!idx) {
        *n = 0;
        return NODE_MEMPOOL_ENOMEM;
    }
    uint32_t k = select_idx(m, st, max, idx);
    for (uint32_t i = 0; i < k; i++) {
        txs[i] = m->ents[idx[i]].bytes;
        lens[i] = m->ents[idx[i]].len;
    }
    tem_free(idx);
    *n = k;
    return NODE_MEMPOOL_OK;
}

int node_mempool_select_txs(node_mempool *m, ledger_state *st, uint32_t max, const ledger_tx **txs, uint32_t *n) {
    uint32_t *idx = tem_malloc((max ? max : 1) * sizeof *idx);
    if (!idx) {
        *n = 0;
        return NODE_MEMPOOL_ENOMEM;
    }
    uint32_t k = select_idx(m, st, max, idx);
    for (uint32_t i = 0; i < k; i++) txs[i] = &m->ents[idx[i]].tx;
    tem_free(idx);
    *n = k;
    return NODE_MEMPOOL_OK;
}

/* The held entry whose SignedTx is exactly (stx, len), found by its signature; NIL if none. */
static uint32_t find_bytes(const node_mempool *m, const uint8_t *stx, size_t len) {
    const uint8_t *sig;
    if (ledger_tx_wire_sig(stx, len, &sig) != LEDGER_OK) return NIL;
    uint32_t i = tab_find(m, &m->by_sig, sig, LEDGER_SECP_SIG_BYTES, key_sig, NULL);
    if (i == NIL) return NIL;
    const mp__entry *e = &m->ents[i];
    TEM_ASSERT(e->state == MP__VERIFY || e->state == MP__WRITE || e->state == MP__PENDING);
    /* The same signature over other bytes is another tx (or a forgery): decode that one. */
    if (e->len != len || memcmp(e->bytes, stx, len) != 0) return NIL;
    return i;
}

const ledger_tx *node_mempool_find_bytes(const node_mempool *m, const uint8_t *stx, size_t len) {
    uint32_t i = find_bytes(m, stx, len);
    return i == NIL ? NULL : &m->ents[i].tx;
}

const ledger_tx *node_mempool_lend(node_mempool *m, const uint8_t *stx, size_t len, bool *verified) {
    uint32_t i = find_bytes(m, stx, len);
    /* A committed or superseded entry waits only for its work to end: a block carrying it
     * again is refused for its nonce, and decoding it there costs nothing worth saving. */
    if (i == NIL || m->ents[i].gone) return NULL;
    mp__entry *e = &m->ents[i];
    TEM_ASSERT(e->lends < UINT32_MAX);
    e->lends++;
    m->st.lent++;
    *verified = e->state != MP__VERIFY;
    return &e->tx;
}

void node_mempool_unlend(node_mempool *m, const ledger_tx *tx) {
    TEM_ASSERT(tx >= &m->ents[0].tx && tx <= &m->ents[m->cfg.txs_max - 1].tx);
    uint32_t i = (uint32_t)(((const char *)tx - (const char *)&m->ents[0].tx) / (ptrdiff_t)sizeof *m->ents);
    mp__entry *e = &m->ents[i];
    TEM_ASSERT(&e->tx == tx && e->lends > 0);
    if (--e->lends > 0 || e->state != MP__PARKED) return;
    TEM_ASSERT(m->parked > 0);
    m->parked--;
    ent_release_slot(m, i);
}

int node_mempool_sig_state(const node_mempool *m, const uint8_t txid[LEDGER_HASH_BYTES],
                           const uint8_t sig[LEDGER_SECP_SIG_BYTES]) {
    uint32_t i = tab_find(m, &m->by_txid, txid, LEDGER_HASH_BYTES, key_txid, NULL);
    if (i == NIL) return NODE_MEMPOOL_SIG_UNKNOWN;
    const mp__entry *e = &m->ents[i];
    if (e->gone || memcmp(e->sig, sig, LEDGER_SECP_SIG_BYTES) != 0) return NODE_MEMPOOL_SIG_UNKNOWN;
    if (e->state != MP__VERIFY) return NODE_MEMPOOL_SIG_VERIFIED;
    return e->in_job ? NODE_MEMPOOL_SIG_VERIFYING : NODE_MEMPOOL_SIG_QUEUED;
}

const ledger_tx *node_mempool_get(const node_mempool *m, const uint8_t txid[LEDGER_HASH_BYTES],
                                  const uint8_t **bytes, size_t *len) {
    uint32_t i = tab_find(m, &m->by_txid, txid, LEDGER_HASH_BYTES, key_txid, NULL);
    if (i == NIL || m->ents[i].state != MP__PENDING) return NULL;
    if (bytes) *bytes = m->ents[i].bytes;
    if (len) *len = m->ents[i].len;
    return &m->ents[i].tx;
}

bool node_mempool_get_verified(const node_mempool *m, const uint8_t txid[LEDGER_HASH_BYTES], const uint8_t **bytes,
                               size_t *len) {
    uint32_t i = tab_find(m, &m->by_txid, txid, LEDGER_HASH_BYTES, key_txid, NULL);
    if (i == NIL || !selectable(&m->ents[i])) return false;
    *bytes = m->ents[i].bytes;
    *len = m->ents[i].len;
    return true;
}

int node_mempool_precheck_signer(void *store, const ledger_tx *tx) {
    ledger_store *s = store;
    /* The contracts' own rule, so the mempool never admits what the executor would refuse for
     * its signer alone. */
    return contracts_signer_check(ledger_store_state(s), ledger_store_genesis(s), tx);
}

/* Drops signer si's held txs whose nonce its state nonce has passed. Returns true when that
 * removed the signer itself (its slot in `active` then holds another signer). */
static bool signer_sweep(node_mempool *m, ledger_state *st, uint32_t si) {
    uint64_t sn = ledger_state_nonce(st, m->signers[si].key);
    uint32_t i = m->signers[si].head;
    while (i != NIL && m->ents[i].nonce < sn) {
        mp__entry *e = &m->ents[i];
        uint32_t next = e->s_next;
        bool committed = is_committed(m, e->txid);
        if (e->state == MP__PENDING) {
            if (committed) {
                m->st.committed_dropped++;
            } else {
                m->st.superseded++;
                sup_add(m, e->txid);
            }
            bool last = m->signers[si].count == 1;
            ent_remove(m, i);
            if (last) return true;
        } else if (!e->gone) {
            e->gone = committed ? MP__GONE_COMMITTED : MP__GONE_SUPERSEDED;
            if (!committed) m->st.superseded++;
        }
        i = next;
    }
    return false;
}

void node_mempool_block_applied(node_mempool *m, const uint8_t (*txids)[LEDGER_HASH_BYTES], size_t n) {
    if (m->closing) return;
    ledger_state *st = ledger_store_state(m->store);
    bool sweep_all = m->n_active <= MP__SWEEP_SIGNERS_MAX;
    for (size_t b = 0; b < n; b++) {
        uint32_t i = tab_find(m, &m->by_txid, txids[b], LEDGER_HASH_BYTES, key_txid, NULL);
        if (i == NIL) continue;
        uint8_t signer[LEDGER_SECP_PUB_BYTES];
        memcpy(signer, m->ents[i].signer, sizeof signer);
        /* Once: a committed entry still being written stays (gone) until its write ends, and
         * a second report of the same block finds it gone. */
        if (m->ents[i].tag && m->ents[i].in_order && m->ents[i].gone != MP__GONE_COMMITTED && m->cfg.client_committed)
            m->cfg.client_committed(m->cfg.client_committed_ctx, m->ents[i].t_ms, m->ents[i].model_ms);
        if (m->ents[i].state == MP__PENDING) {
            m->st.committed_dropped++;
            ent_remove(m, i);
        } else {
            m->ents[i].gone = MP__GONE_COMMITTED;
        }
        /* The signer's later txs may now be stale too. */
        uint32_t si = tab_find(m, &m->by_signer, signer, LEDGER_SECP_PUB_BYTES, key_signer, NULL);
        if (!sweep_all && si != NIL) (void)signer_sweep(m, st, si);
    }
    /* A signer may also have used a nonce through a tx this node never held. A small pool
     * checks every signer (downward: removing a signer moves the last one into its slot); a
     * large one checks MP__SWEEP_SIGNERS_MAX of them per block, round robin, so a block costs
     * a bounded number of state lookups and a stale tx is found within a few blocks (until
     * then select skips it: its nonce is below the signer's). */
    if (sweep_all) {
        for (uint32_t a = m->n_active; a-- > 0;) (void)signer_sweep(m, st, m->active[a]);
    } else {
        for (uint32_t k = 0; k < MP__SWEEP_SIGNERS_MAX && m->n_active > 0; k++) {
            if (m->sweep_cursor >= m->n_active) m->sweep_cursor = 0;
            if (!signer_sweep(m, st, m->active[m->sweep_cursor])) m->sweep_cursor++;
        }
    }
    maybe_compact(m);
}

int node_mempool_status(const node_mempool *m, const uint8_t txid[LEDGER_HASH_BYTES]) {
    uint32_t i = tab_find(m, &m->by_txid, txid, LEDGER_HASH_BYTES, key_txid, NULL);
    if (i != NIL) return m->ents[i].state == MP__PENDING ? NODE_MEMPOOL_STATUS_PENDING : NODE_MEMPOOL_STATUS_INFLIGHT;
    if (tab_find(m, &m->by_sup, txid, LEDGER_HASH_BYTES, key_sup, NULL) != NIL) return NODE_MEMPOOL_STATUS_SUPERSEDED;
    return NODE_MEMPOOL_STATUS_UNKNOWN;
}

uint32_t node_mempool_size(const node_mempool *m) { return m->count; }

uint32_t node_mempool_verified(const node_mempool *m) {
    TEM_ASSERT(m->unverified <= m->count);
    return m->count - m->unverified;
}

/* ================================================================== re-gossip */
void node_mempool_peer_has(node_mempool *m, const uint8_t txid[LEDGER_HASH_BYTES], uint32_t peer) {
    if (peer >= 64) return;
    uint32_t i = tab_find(m, &m->by_txid, txid, LEDGER_HASH_BYTES, key_txid, NULL);
    if (i != NIL) m->ents[i].have_mask |= 1ull << peer;
}

uint32_t node_mempool_regossip(node_mempool *m, uint64_t now_ms, uint64_t age_ms, uint32_t peer, uint32_t max,
                               uint32_t scan_max, const uint8_t **txs, size_t *lens) {
    TEM_ASSERT(peer < 64);
    uint32_t k = 0, seen = 0;
    /* The FIFO is in arrival order: once a tx is too young, every later one is too. */
    for (uint32_t i = m->fifo_head; i != NIL && k < max && seen < scan_max; i = m->ents[i].fifo_next, seen++) {
        mp__entry *e = &m->ents[i];
        if (now_ms < e->arrived_ms + age_ms) break;
        if (e->state != MP__PENDING || e->gone || (e->have_mask >> peer & 1)) continue;
        if (e->regossip_ms && now_ms < e->regossip_ms + age_ms) continue;
        e->regossip_ms = now_ms;
        txs[k] = e->bytes;
        lens[k++] = e->len;
    }
    TEM_ASSERT(k <= max);
    return k;
}
bool node_mempool_disk_full(const node_mempool *m) { return m->disk_full; }

void node_mempool_get_stats(const node_mempool *m, node_mempool_stats *out) {
    *out = m->st;
    out->parked = m->parked;
}
