/* view.c: the block view (ledger.h, "Block view"; docs/ledger.md, "Block view"): a block decoded
 * once when it arrives, then handed to validation, apply and the node's bookkeeping. The block
 * and each SignedTx are split at the protobuf wire level, so a tx the caller already holds
 * decoded (the node's mempool) is recognised by its bytes and neither unpacked nor hashed again;
 * every other tx is decoded once with ledger_tx_decode. */
#include "ledger/ledger.h"

#include <pthread.h>

/* ------------------------------------------------------------------ wire format */
static int wire_varint(const uint8_t **p, const uint8_t *end, uint64_t *out) {
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (*p >= end) return -1;
        uint8_t b = *(*p)++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* One field at *p: its number, wire type and, for a length-delimited field, its payload. Skips
 * varint and fixed fields. -1 for anything protobuf-c would refuse to parse (truncation, field
 * number 0, groups, unknown wire types). */
static int wire_field(const uint8_t **p, const uint8_t *end, uint32_t *num, const uint8_t **val, size_t *len) {
    uint64_t tag, x;
    if (wire_varint(p, end, &tag) != 0) return -1;
    uint32_t wt = (uint32_t)(tag & 7);
    if ((tag >> 3) == 0 || (tag >> 3) > 0x1fffffff) return -1;
    *num = (uint32_t)(tag >> 3);
    *val = NULL;
    *len = 0;
    switch (wt) {
    case 0: return wire_varint(p, end, &x);
    case 1: if ((size_t)(end - *p) < 8) return -1; *p += 8; return 0;
    case 5: if ((size_t)(end - *p) < 4) return -1; *p += 4; return 0;
    case 2:
        if (wire_varint(p, end, &x) != 0 || x > (uint64_t)(end - *p)) return -1;
        *val = *p;
        *len = (size_t)x;
        *p += x;
        return 2;
    default: return -1;
    }
}

int ledger_tx_wire_sig(const uint8_t *buf, size_t len, const uint8_t **sig) {
    /* An empty tx (protobuf-c hands it over as NULL, 0) has no signature; NULL + 0 is UB. */
    if (buf == NULL || len == 0) return LEDGER_ESIGLEN;
    const uint8_t *p = buf, *end = buf + len, *s = NULL;
    while (p < end) {
        uint32_t num;
        const uint8_t *v;
        size_t l;
        int wt = wire_field(&p, end, &num, &v, &l);
        if (wt < 0) return LEDGER_EDECODE;
        /* protobuf: the last occurrence of a scalar field wins */
        if (num == 2) s = wt == 2 && l == LEDGER_SECP_SIG_BYTES ? v : NULL;
    }
    if (!s) return LEDGER_ESIGLEN;
    *sig = s;
    return LEDGER_OK;
}

/* Splits a Block into its header bytes and its tx slices. txs may be NULL to count only. A
 * second header is refused: protobuf would merge the two, and nothing honest writes one. */
static int split_block(const uint8_t *blk, size_t len, const uint8_t **hdr, size_t *hdr_len, ledger_view_tx *txs,
                       size_t *n) {
    /* An empty block arrives as (NULL, 0) from protobuf-c: NULL + 0 is UB, so no arithmetic. */
    const uint8_t *p = blk, *end = len ? blk + len : blk;
    size_t k = 0;
    *hdr = NULL;
    *hdr_len = 0;
    bool have_hdr = false;
    while (p < end) {
        uint32_t num;
        const uint8_t *v;
        size_t l;
        int wt = wire_field(&p, end, &num, &v, &l);
        if (wt < 0) return LEDGER_EDECODE;
        if (num == 1) {
            if (wt != 2 || have_hdr) return LEDGER_EDECODE;
            have_hdr = true;
            *hdr = v;
            *hdr_len = l;
        } else if (num == 2) {
            if (wt != 2) return LEDGER_EDECODE;
            if (txs) {
                txs[k].bytes = v;
                txs[k].len = l;
            }
            k++;
        }
    }
    *n = k;
    return LEDGER_OK;
}

static int header_decode(const uint8_t *blk, size_t len, Tem__V1__BlockHeader **out, size_t *n) {
    const uint8_t *hb;
    size_t hl;
    int rc = split_block(blk, len, &hb, &hl, NULL, n);
    if (rc != LEDGER_OK) return rc;
    *out = NULL;
    if (!hb) return LEDGER_OK;
    *out = tem__v1__block_header__unpack(&ledger_pb_allocator, hl, hb);
    return *out ? LEDGER_OK : LEDGER_EDECODE;
}

int ledger_block_hash_bytes(const uint8_t *blk, size_t len, uint8_t out[LEDGER_HASH_BYTES]) {
    Tem__V1__BlockHeader *h;
    size_t n;
    int rc = header_decode(blk, len, &h, &n);
    if (rc != LEDGER_OK) return rc;
    rc = h ? ledger_block_hash(h, out) : LEDGER_EBLOCK;
    if (h) tem__v1__block_header__free_unpacked(h, &ledger_pb_allocator);
    return rc;
}

/* ------------------------------------------------------------------ the view */
void ledger_block_view_free(ledger_block_view *v) {
    if (!v) return;
    if (v->txs)
        for (size_t i = 0; i < v->n; i++) {
            const ledger_tx *t = v->txs[i].tx;
            if (t && t != &v->txs[i].own && v->src.release) v->src.release(v->src.ctx, t);
            ledger_tx_free(&v->txs[i].own);
        }
    tem_free(v->txs);
    tem_free(v->txids);
    if (v->header) tem__v1__block_header__free_unpacked(v->header, &ledger_pb_allocator);
    tem_free(v->block_owned);
    memset(v, 0, sizeof *v);
}

int ledger_block_view_build(const ledger_genesis *g, const uint8_t *blk, size_t len, uint8_t *owned,
                            const ledger_tx_source *src, ledger_block_view *v) {
    memset(v, 0, sizeof *v);
    if (src) v->src = *src;
    v->block = blk;
    v->block_len = len;
    v->block_owned = owned;
    v->tx_rc = LEDGER_OK;
    size_t n;
    int rc = header_decode(blk, len, &v->header, &n);
    if (rc != LEDGER_OK) goto fail;
    v->hash_rc = v->header ? ledger_block_hash(v->header, v->block_hash) : LEDGER_EBLOCK;
    v->n = n;
    v->txs = tem_calloc(n ? n : 1, sizeof *v->txs);
    v->txids = tem_malloc((n ? n : 1) * LEDGER_HASH_BYTES);
    if (!v->txs || !v->txids) { rc = LEDGER_ENOMEM; goto fail; }
    const uint8_t *hb;
    size_t hl;
    TEM_ASSERT(split_block(blk, len, &hb, &hl, v->txs, &n) == LEDGER_OK);
    TEM_ASSERT(n == v->n);
    /* Too many txs: nothing is decoded; the checks report EBLOCK in their usual order. */
    if (n > g->max_block_txs) {
        v->tx_rc = LEDGER_EBLOCK;
        return LEDGER_OK;
    }
    ledger_tx_limits lim;
    ledger_tx_limits_from_genesis(g, &lim);
    for (size_t i = 0; i < n; i++) {
        ledger_view_tx *t = &v->txs[i];
        bool verified = false;
        const ledger_tx *known = src && src->lookup ? src->lookup(src->ctx, t->bytes, t->len, &verified) : NULL;
        if (known) {
            t->tx = known;
            t->verified = verified;
        } else {
            int trc = ledger_tx_decode(t->bytes, t->len, &lim, &t->own);
            if (trc == LEDGER_ENOMEM) { rc = trc; goto fail; }
            if (trc != LEDGER_OK) {
                v->tx_rc = trc;
                return LEDGER_OK;
            }
            t->tx = &t->own;
        }
        memcpy(v->txids[i], t->tx->txid, LEDGER_HASH_BYTES);
    }
    uint8_t root[LEDGER_HASH_BYTES];
    if ((rc = ledger_merkle_root(root, (const uint8_t(*)[32])v->txids, n)) != LEDGER_OK) goto fail;
    v->tx_root_ok = v->header && v->header->tx_root.len == LEDGER_HASH_BYTES &&
                    memcmp(root, v->header->tx_root.data, LEDGER_HASH_BYTES) == 0;
    return LEDGER_OK;
fail:
    v->block_owned = NULL; /* on failure the caller keeps its buffer */
    ledger_block_view_free(v);
    return rc;
}

/* ------------------------------------------------------------------ parallel verification */
typedef struct {
    ledger_block_view *v;
    size_t lo, hi;
} verify_part;

/* Both the one-block and the ahead-of-time verifier check a tx through here: a tx verified once,
 * by gossip or an earlier pass, is not verified again. */
static void tx_verify_once(ledger_view_tx *t) {
    if (!t->verified && ledger_tx_verify(t->tx) == LEDGER_OK) t->verified = true;
}

/* A helper thread is started for at least this many signatures to check (~35 us each); fewer
 * are checked on the calling thread. */
enum { VERIFY_PER_THREAD_MIN = 8 };

/* Each part writes only its own txs' flags, so the parts share nothing. */
static void *verify_range(void *arg) {
    verify_part *p = arg;
    for (size_t i = p->lo; i < p->hi; i++) tx_verify_once(&p->v->txs[i]);
    return NULL;
}

void ledger_block_view_verify(ledger_block_view *v, unsigned threads) {
    if (v->tx_rc != LEDGER_OK || v->n == 0) return;
    /* Most blocks a validator applies arrive with every signature already checked (gossip,
     * validation): a thread started only to skip them cost more than the check it shares. */
    size_t todo = 0;
    for (size_t i = 0; i < v->n; i++) todo += !v->txs[i].verified;
    if (todo == 0) return;
    if (threads < 1) threads = 1;
    if (threads > LEDGER_VIEW_VERIFY_THREADS) threads = LEDGER_VIEW_VERIFY_THREADS;
    if (threads > todo / VERIFY_PER_THREAD_MIN) threads = (unsigned)(todo / VERIFY_PER_THREAD_MIN);
    if (threads < 1) threads = 1;
    verify_part parts[LEDGER_VIEW_VERIFY_THREADS];
    pthread_t th[LEDGER_VIEW_VERIFY_THREADS];
    bool started[LEDGER_VIEW_VERIFY_THREADS] = {false};
    for (unsigned k = 0; k < threads; k++)
        parts[k] = (verify_part){v, v->n * k / threads, v->n * (k + 1) / threads};
    for (unsigned k = 1; k < threads; k++) started[k] = pthread_create(&th[k], NULL, verify_range, &parts[k]) == 0;
    (void)verify_range(&parts[0]);
    for (unsigned k = 1; k < threads; k++) {
        if (started[k]) pthread_join(th[k], NULL);
        else (void)verify_range(&parts[k]);
    }
}

/* ------------------------------------------------------------------ verifying ahead */
typedef struct {
    ledger_block_view *v;
    size_t next, done; /* txs claimed, txs finished; under the mutex */
} vf_job;

struct ledger_verifier {
    pthread_mutex_t mu;
    pthread_cond_t work, finished;
    vf_job q[LEDGER_VERIFIER_QUEUE];
    unsigned head, len; /* ring of submitted views, oldest first */
    bool stop;
    unsigned nthreads;
    pthread_t th[LEDGER_VIEW_VERIFY_THREADS];
};

/* Claims and checks txs of job j one at a time, the mutex held only between txs. Each tx is
 * claimed once, so only one thread writes its flag; done counts it afterwards, under the mutex,
 * which orders that write before the waiter reads the flag. Called and returns with mu held. */
static void vf_run(ledger_verifier *vf, vf_job *j) {
    ledger_block_view *v = j->v;
    while (j->next < v->n) {
        size_t i = j->next++;
        pthread_mutex_unlock(&vf->mu);
        tx_verify_once(&v->txs[i]);
        pthread_mutex_lock(&vf->mu);
        if (++j->done == v->n) pthread_cond_broadcast(&vf->finished);
    }
}

static void *vf_main(void *arg) {
    ledger_verifier *vf = arg;
    pthread_mutex_lock(&vf->mu);
    while (!vf->stop) {
        vf_job *j = NULL;
        for (unsigned k = 0; k < vf->len && !j; k++) {
            vf_job *c = &vf->q[(vf->head + k) % LEDGER_VERIFIER_QUEUE];
            if (c->next < c->v->n) j = c;
        }
        if (!j) {
            pthread_cond_wait(&vf->work, &vf->mu);
            continue;
        }
        /* j stays in the ring until its waiter sees done == n, which needs this thread's txs */
        vf_run(vf, j);
    }
    pthread_mutex_unlock(&vf->mu);
    return NULL;
}

int ledger_verifier_new(unsigned threads, ledger_verifier **out) {
    ledger_verifier *vf = tem_calloc(1, sizeof *vf);
    if (!vf) return LEDGER_ENOMEM;
    if (threads > LEDGER_VIEW_VERIFY_THREADS) threads = LEDGER_VIEW_VERIFY_THREADS;
    if (pthread_mutex_init(&vf->mu, NULL) != 0) goto fail0;
    if (pthread_cond_init(&vf->work, NULL) != 0) goto fail1;
    if (pthread_cond_init(&vf->finished, NULL) != 0) goto fail2;
    for (unsigned k = 0; k < threads; k++) {
        if (pthread_create(&vf->th[vf->nthreads], NULL, vf_main, vf) != 0) break; /* fewer helpers */
        vf->nthreads++;
    }
    *out = vf;
    return LEDGER_OK;
fail2:
    pthread_cond_destroy(&vf->work);
fail1:
    pthread_mutex_destroy(&vf->mu);
fail0:
    tem_free(vf);
    return LEDGER_ENOMEM;
}

void ledger_verifier_free(ledger_verifier *vf) {
    if (!vf) return;
    pthread_mutex_lock(&vf->mu);
    vf->stop = true;
    pthread_cond_broadcast(&vf->work);
    pthread_mutex_unlock(&vf->mu);
    for (unsigned k = 0; k < vf->nthreads; k++) pthread_join(vf->th[k], NULL);
    pthread_cond_destroy(&vf->finished);
    pthread_cond_destroy(&vf->work);
    pthread_mutex_destroy(&vf->mu);
    tem_free(vf);
}

int ledger_verifier_submit(ledger_verifier *vf, ledger_block_view *v) {
    pthread_mutex_lock(&vf->mu);
    if (vf->len == LEDGER_VERIFIER_QUEUE) {
        pthread_mutex_unlock(&vf->mu);
        return LEDGER_EFULL;
    }
    /* a view whose txs did not decode has nothing to check: apply reports it */
    size_t n = v->tx_rc == LEDGER_OK ? v->n : 0;
    vf->q[(vf->head + vf->len++) % LEDGER_VERIFIER_QUEUE] = (vf_job){v, v->n - n, v->n - n};
    pthread_cond_signal(&vf->work);
    pthread_mutex_unlock(&vf->mu);
    return LEDGER_OK;
}

void ledger_verifier_wait(ledger_verifier *vf, ledger_block_view *v) {
    pthread_mutex_lock(&vf->mu);
    vf_job *j = NULL;
    for (unsigned k = 0; k < vf->len && !j; k++)
        if (vf->q[(vf->head + k) % LEDGER_VERIFIER_QUEUE].v == v) j = &vf->q[(vf->head + k) % LEDGER_VERIFIER_QUEUE];
    if (!j) { /* never submitted: nothing to wait for */
        pthread_mutex_unlock(&vf->mu);
        return;
    }
    TEM_ASSERT(j == &vf->q[vf->head]); /* waited for in the order submitted */
    vf_run(vf, j);
    while (j->done < v->n) pthread_cond_wait(&vf->finished, &vf->mu);
    vf->head = (vf->head + 1) % LEDGER_VERIFIER_QUEUE;
    vf->len--;
    pthread_mutex_unlock(&vf->mu);
}
