/* pbft.c: the pBFT replica state machine: the log window, the normal case (PRE-PREPARE, PREPARE,
 * COMMIT), checkpoints and garbage collection, view change (VIEW-CHANGE, NEW-VIEW), catch-up from
 * fetched blocks, and the persisted vote record that keeps a restarted replica from equivocating.
 * docs/consensus.md is the prose version of this file. */
#include "consensus/pbft.h"
#include "consensus/pbft_internal.h"

/* ================================================================== small helpers */

static void hash_copy(uint8_t dst[32], const uint8_t src[32]) { memcpy(dst, src, 32); }
static bool hash_eq(const uint8_t a[32], const uint8_t b[32]) { return memcmp(a, b, 32) == 0; }
static bool pb_is_hash(ProtobufCBinaryData b) { return b.len == 32 && b.data != NULL; }

void pbft__sigset_order(const pbft__sigset *s, uint32_t order[PBFT_REPLICAS_MAX]) {
    for (uint32_t i = 0; i < s->n; i++) {
        uint32_t j = i;
        while (j > 0 && s->idx[order[j - 1]] > s->idx[i]) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
}

int pbft__verify(const pbft_replica *r, uint32_t idx, const uint8_t digest[32],
                 const uint8_t sig[64]) {
    TEM_ASSERT(idx < r->cfg.n);
    if (r->cfg.planted_bug == PBFT_BUG_SKIP_SIGNATURE_CHECK) return 0;
    if (r->cfg.verify) return r->cfg.verify(r->cfg.ctx, r->cfg.pubkeys[idx], digest, 32, sig);
    return ledger_ed_verify(r->cfg.pubkeys[idx], digest, 32, sig);
}

static int sigset_add(const pbft_replica *r, pbft__sigset *s, uint32_t idx,
                      ProtobufCBinaryData sig) {
    if (idx >= r->cfg.n || sig.len != 64 || s->n >= PBFT_REPLICAS_MAX) return PBFT_ECERT;
    for (uint32_t i = 0; i < s->n; i++)
        if (s->idx[i] == idx) return PBFT_ECERT;
    s->idx[s->n] = (uint8_t)idx;
    memcpy(s->sig[s->n], sig.data, 64);
    s->n++;
    return PBFT_OK;
}

int pbft__sigset_from_pb(const pbft_replica *r, Tem__V1__CommitSig **sigs, size_t n,
                         pbft__sigset *out) {
    out->n = 0;
    if (n > r->cfg.n) return PBFT_ECERT;
    for (size_t i = 0; i < n; i++) {
        int rc = sigset_add(r, out, sigs[i]->validator, sigs[i]->sig);
        if (rc != PBFT_OK) return rc;
    }
    return PBFT_OK;
}

int pbft__sigset_from_pbft(const pbft_replica *r, Tem__V1__PbftSig **sigs, size_t n,
                           pbft__sigset *out) {
    out->n = 0;
    if (n > r->cfg.n) return PBFT_ECERT;
    for (size_t i = 0; i < n; i++) {
        int rc = sigset_add(r, out, sigs[i]->validator, sigs[i]->sig);
        if (rc != PBFT_OK) return rc;
    }
    return PBFT_OK;
}

int pbft__sigset_verify(const pbft_replica *r, const pbft__sigset *s, const uint8_t digest[32],
                        uint32_t need) {
    if (s->n < need) return PBFT_ECERT;
    for (uint32_t i = 0; i < s->n; i++)
        if (pbft__verify(r, s->idx[i], digest, s->sig[i]) != 0) return PBFT_ECERT;
    return PBFT_OK;
}

/* Quorums. The planted bug lowers the PREPARE quorum everywhere a prepared certificate is formed
 * or checked, as a replica with that mistake would. */
static uint32_t prepare_quorum(const pbft_replica *r) {
    return r->cfg.planted_bug == PBFT_BUG_PREPARE_QUORUM_F1 ? r->f + 1 : r->quorum;
}

static uint64_t view_timeout(const pbft_replica *r) {
    uint32_t k = r->failed_views;
    if (k > r->cfg.view_timeout_doublings_max) k = r->cfg.view_timeout_doublings_max;
    uint64_t t = r->cfg.view_timeout_ms;
    if (!tem_mul_u64(&t, (uint64_t)1 << k)) t = UINT64_MAX;
    return t;
}

/* ================================================================== actions */

void pbft_actions_init(pbft_actions *out) { out->n = 0; }

void pbft_actions_clear(pbft_actions *out) {
    for (uint32_t i = 0; i < out->n; i++) {
        tem_free(out->a[i].msg);
        tem_free(out->a[i].cert);
    }
    out->n = 0;
}

static pbft_action *act_push(pbft_actions *out, pbft_action_kind kind) {
    /* PBFT_ACTIONS_MAX covers a full window of deliveries and the messages each can trigger;
     * running past it is a bug in this file, not something a peer can cause. */
    TEM_ASSERT(out->n < PBFT_ACTIONS_MAX);
    pbft_action *a = &out->a[out->n++];
    memset(a, 0, sizeof *a);
    a->kind = kind;
    return a;
}

static void set_timer(pbft_replica *r, pbft_actions *out, pbft_timer t, uint64_t ms) {
    pbft_action *a = act_push(out, PBFT_ACT_SET_TIMER);
    a->timer = t;
    a->duration_ms = ms;
    a->timer_seq = ++r->timer_seq;
    if (t == PBFT_TIMER_VIEW)
        r->view_timer_seq = a->timer_seq;
    else
        r->fetch_timer_seq = a->timer_seq;
}

static void cancel_timer(pbft_replica *r, pbft_actions *out, pbft_timer t) {
    pbft_action *a = act_push(out, PBFT_ACT_CANCEL_TIMER);
    a->timer = t;
    if (t == PBFT_TIMER_VIEW)
        r->view_timer_seq = 0;
    else
        r->fetch_timer_seq = 0;
}

/* ================================================================== the log window */

static pbft__slot *slot_find(pbft_replica *r, uint64_t h) {
    if (h <= r->low || h > r->low + r->window) return NULL;
    pbft__slot *s = &r->slots[h % r->window];
    return s->height == h ? s : NULL;
}

static void slot_clear(pbft__slot *s) {
    for (int i = 0; i < PBFT__SLOT_BLOCKS; i++) tem_free(s->blocks[i].bytes);
    memset(s, 0, sizeof *s);
}

/* The slot for h, created empty if needed; NULL outside the watermarks. */
static pbft__slot *slot_at(pbft_replica *r, uint64_t h) {
    if (h <= r->low || h > r->low + r->window) return NULL;
    pbft__slot *s = &r->slots[h % r->window];
    if (s->height != h) {
        /* Anything else in this cell is at or below the low watermark (gc keeps that true). */
        TEM_ASSERT(s->height <= r->low);
        slot_clear(s);
        s->height = h;
    }
    return s;
}

static void gc(pbft_replica *r) {
    uint64_t k = r->cfg.checkpoint_interval;
    uint64_t low = r->delivered / k * k;
    if (r->stable > low) low = r->stable;
    if (low <= r->low) return;
    r->low = low;
    for (uint32_t i = 0; i < r->window; i++)
        if (r->slots[i].height != 0 && r->slots[i].height <= low) slot_clear(&r->slots[i]);
}

static pbft__block *block_find(pbft__slot *s, const uint8_t hash[32]) {
    for (int i = 0; i < PBFT__SLOT_BLOCKS; i++)
        if (s->blocks[i].used && hash_eq(s->blocks[i].hash, hash)) return &s->blocks[i];
    return NULL;
}

static bool block_referenced(const pbft__slot *s, const uint8_t hash[32]) {
    return (s->has_pp && hash_eq(s->pp_hash, hash)) || (s->has_pc && hash_eq(s->pc_hash, hash)) ||
           (s->committed && hash_eq(s->c_hash, hash));
}

/* Stores a copy of a block under its (already checked) hash. PBFT_ENOMEM, PBFT_EFULL when every
 * cell holds a block the slot still refers to. */
static int block_add(pbft__slot *s, const uint8_t hash[32], const uint8_t *bytes, size_t len,
                     pbft__block **out) {
    pbft__block *b = block_find(s, hash);
    if (b) {
        if (out) *out = b;
        return PBFT_OK;
    }
    for (int i = 0; i < PBFT__SLOT_BLOCKS && !b; i++)
        if (!s->blocks[i].used) b = &s->blocks[i];
    for (int i = 0; i < PBFT__SLOT_BLOCKS && !b; i++)
        if (!block_referenced(s, s->blocks[i].hash)) b = &s->blocks[i];
    if (!b) return PBFT_EFULL;
    uint8_t *copy = tem_malloc(len ? len : 1);
    if (!copy) return PBFT_ENOMEM;
    memcpy(copy, bytes, len);
    tem_free(b->bytes);
    b->used = true;
    hash_copy(b->hash, hash);
    b->bytes = copy;
    b->len = len;
    b->valid = PBFT__VAL_NONE;
    if (out) *out = b;
    return PBFT_OK;
}

static uint32_t count_votes(const pbft_replica *r, const pbft__vote *v, uint64_t view,
                            const uint8_t hash[32], pbft__sigset *sigs) {
    uint32_t c = 0;
    if (sigs) sigs->n = 0;
    for (uint32_t j = 0; j < r->cfg.n; j++) {
        if (!v[j].set || v[j].view != view || !hash_eq(v[j].hash, hash)) continue;
        if (sigs) {
            sigs->idx[sigs->n] = (uint8_t)j;
            memcpy(sigs->sig[sigs->n], v[j].sig, 64);
            sigs->n++;
        }
        c++;
    }
    return c;
}

/* ================================================================== the vote record */

/* Serialises what must survive a restart: the view, whether a view change is under way, and for
 * the last delivered height and each height above it the own votes and the prepared certificate
 * (with its block, so a VIEW-CHANGE after the restart still carries it).
 *
 * The last delivered height stays in because the node may make a DELIVER durable after the
 * PERSISTs that follow it (temd commits block h on a writer thread while this replica votes on
 * h+1). A crash in between restarts the replica at h-1: without slot h in the record it would have
 * forgotten its votes for h and could sign another block there in a later view, and if every
 * validator crashed in that window block h would be durable nowhere; with it, restore brings slot
 * h back and its VIEW-CHANGE re-proposes the block. A replica restarted at h drops the slot
 * (restore skips heights at or below the start height). Heights below the last delivered one
 * are left out: the node makes at most one delivered block wait for the disk, so block h-1 is
 * durable before any PERSIST that follows DELIVER(h).
 *
 * The slot for the last delivered height is gone once the low watermark reaches it: when h is a
 * multiple of K (gc() frees it on delivery) or a stable checkpoint c is above h. Both are safe.
 * temd commits checkpoint heights synchronously (no pipelining at h % K == 0), so in the first
 * case block h is on disk before the next PERSIST. In the second, 2f+1 validators signed c, and
 * the f+1 honest ones among them hold c (and so h) durably: any NEW-VIEW's 2f+1 VIEW-CHANGEs
 * include one of them, so its commit point is at least c and no view re-opens h, and the node
 * fetches block h with its certificate from them. */
/* The wire form of signature set s, in the set's order: sigs[i] point into s, ptrs[i] at sigs[i].
 * Returns the count for the message's n_ field. */
static size_t sigset_to_pb(pbft__sigset *s, Tem__V1__PbftSig sigs[PBFT_REPLICAS_MAX],
                           Tem__V1__PbftSig *ptrs[PBFT_REPLICAS_MAX]) {
    for (uint32_t i = 0; i < s->n; i++) {
        tem__v1__pbft_sig__init(&sigs[i]);
        sigs[i].validator = s->idx[i];
        sigs[i].sig.data = s->sig[i];
        sigs[i].sig.len = 64;
        ptrs[i] = &sigs[i];
    }
    return s->n;
}

/* The prepared certificate slot s holds for height h, carrying its block b, as the vote record
 * and VIEW-CHANGE both send it; pc points into s, b, sigs and ptrs. */
static void prepared_cert_to_pb(pbft__slot *s, uint64_t h, pbft__block *b, Tem__V1__PbftPreparedCert *pc,
                                Tem__V1__PbftSig sigs[PBFT_REPLICAS_MAX], Tem__V1__PbftSig *ptrs[PBFT_REPLICAS_MAX]) {
    tem__v1__pbft_prepared_cert__init(pc);
    pc->view = s->pc_view;
    pc->height = h;
    pc->block_hash.data = s->pc_hash;
    pc->block_hash.len = 32;
    pc->n_sigs = sigset_to_pb(&s->pc_sigs, sigs, ptrs);
    pc->sigs = ptrs;
    pc->block.data = b->bytes;
    pc->block.len = b->len;
}

static int record_build(pbft_replica *r, uint8_t **out, size_t *out_len) {
    Tem__V1__PbftVoteRecord rec = TEM__V1__PBFT_VOTE_RECORD__INIT;
    Tem__V1__PbftSlotRecord srec[PBFT_LOG_MAX], *sp[PBFT_LOG_MAX];
    Tem__V1__PbftPreparedCert pcs[PBFT_LOG_MAX];
    Tem__V1__PbftSig sigs[PBFT_LOG_MAX][PBFT_REPLICAS_MAX];
    Tem__V1__PbftSig *sigp[PBFT_LOG_MAX][PBFT_REPLICAS_MAX];
    rec.view = r->view;
    rec.view_change = r->in_view_change;
    rec.view_floor = r->view_floor;
    size_t n = 0;
    /* slot_find returns NULL for the delivered height once it is at the low watermark (above).
     * Once the host said the delivered block is durable the record needs it no more: the votes
     * of the next height are not rewritten with a block the disk already holds. */
    uint64_t from = r->delivered > 0 && r->durable < r->delivered ? r->delivered : r->delivered + 1;
    uint8_t *cert = NULL;
    size_t cert_len = 0;
    for (uint64_t h = from; h <= r->low + r->window; h++) {
        pbft__slot *s = slot_find(r, h);
        bool undurable = s && h == r->delivered && s->committed && block_find(s, s->c_hash) &&
                         r->cfg.planted_bug != PBFT_BUG_RECORD_DROPS_COMMIT_CERT;
        if (!s || !(s->my_prepare.set || s->my_commit.set || s->has_pc || undurable)) continue;
        Tem__V1__PbftSlotRecord *e = &srec[n];
        tem__v1__pbft_slot_record__init(e);
        e->height = h;
        if (undurable) {
            /* With the certificate the restarted replica delivers the block again itself. Its
             * prepared certificate alone is not enough: a NEW-VIEW whose commit point is above h
             * (a validator that delivered h+1 says so) re-proposes nothing at h, and if every
             * honest validator lost block h in the same crash only a Byzantine one could serve
             * it. */
            TEM_ASSERT(cert == NULL);
            int rc = pbft_cert_pack(s->c_view, h, s->c_hash, &s->c_sigs, &cert, &cert_len);
            if (rc != PBFT_OK) return rc;
            e->commit_cert.data = cert;
            e->commit_cert.len = cert_len;
            if (!(s->has_pc && hash_eq(s->pc_hash, s->c_hash))) {
                pbft__block *cb = block_find(s, s->c_hash);
                e->block.data = cb->bytes;
                e->block.len = cb->len;
            }
        }
        if (s->my_prepare.set) {
            e->prepared_vote = true;
            e->prepare_view = s->my_prepare.view;
            e->prepare_hash.data = s->my_prepare.hash;
            e->prepare_hash.len = 32;
        }
        if (s->my_commit.set) {
            e->commit_vote = true;
            e->commit_view = s->my_commit.view;
            e->commit_hash.data = s->my_commit.hash;
            e->commit_hash.len = 32;
        }
        pbft__block *b = s->has_pc ? block_find(s, s->pc_hash) : NULL;
        if (b) {
            prepared_cert_to_pb(s, h, b, &pcs[n], sigs[n], sigp[n]);
            e->prepared = &pcs[n];
        }
        sp[n] = e;
        n++;
    }
    rec.n_slots = n;
    rec.slots = sp;
    size_t len = tem__v1__pbft_vote_record__get_packed_size(&rec);
    uint8_t *buf = tem_malloc(len ? len : 1);
    if (!buf) {
        tem_free(cert);
        return PBFT_ENOMEM;
    }
    TEM_ASSERT(tem__v1__pbft_vote_record__pack(&rec, buf) == len);
    tem_free(cert);
    *out = buf;
    *out_len = len;
    return PBFT_OK;
}

/* Appends a PERSIST of the current record. Everything the record says must already be in r. */
static int persist(pbft_replica *r, pbft_actions *out) {
    uint8_t *rec;
    size_t len;
    int rc = record_build(r, &rec, &len);
    if (rc != PBFT_OK) return rc;
    pbft_action *a = act_push(out, PBFT_ACT_PERSIST);
    a->msg = rec;
    a->msg_len = len;
    return PBFT_OK;
}

/* Signs m as this replica and appends a SEND (to < n) or BROADCAST (PBFT_TO_ALL). */
static int emit_msg(pbft_replica *r, pbft_actions *out, uint32_t to, Tem__V1__PbftMessage *m) {
    m->sender = r->cfg.self;
    uint8_t *buf;
    size_t len;
    int rc = pbft_msg_sign_pack(r->cfg.genesis_hash, r->cfg.secret, m, &buf, &len);
    if (rc != PBFT_OK) return rc;
    pbft_action *a = act_push(out, to == PBFT_TO_ALL ? PBFT_ACT_BROADCAST : PBFT_ACT_SEND);
    a->to = to;
    a->msg = buf;
    a->msg_len = len;
    return PBFT_OK;
}

static void sign_digest(const pbft_replica *r, const uint8_t digest[32], uint8_t sig[64]) {
    ledger_ed_sign(r->cfg.secret, digest, 32, sig);
}

/* ================================================================== init, restore, start */

void pbft_replica_free(pbft_replica *r);

int pbft_replica_init(pbft_replica *r, const pbft_config *cfg) {
    memset(r, 0, sizeof *r);
    if (cfg->n < 4 || cfg->n > PBFT_REPLICAS_MAX || cfg->self >= cfg->n || !cfg->hash)
        return PBFT_EINVAL;
    if (cfg->checkpoint_interval == 0 || cfg->checkpoint_interval > PBFT_CHECKPOINT_INTERVAL_MAX)
        return PBFT_EINVAL;
    if (cfg->view_timeout_ms == 0 || cfg->view_timeout_doublings_max > 16) return PBFT_EINVAL;
    if ((int)cfg->planted_bug < 0 || cfg->planted_bug >= PBFT_BUG_COUNT) return PBFT_EINVAL;
    r->cfg = *cfg;
    r->f = (cfg->n - 1) / 3;
    /* 2f+1 when n = 3f+1; larger for other n so that two quorums always share an honest
     * replica (ledger_quorum_of, which certificates are checked with). */
    r->quorum = ledger_quorum_of(cfg->n);
    r->window = 2 * cfg->checkpoint_interval;
    r->delivered = cfg->start_height;
    r->durable = cfg->start_height;
    hash_copy(r->delivered_hash, cfg->start_hash);
    if (cfg->start_height > 0) {
        /* The node's last block must come with its certificate: a VIEW-CHANGE reports it as
         * the proof of what this replica has committed. */
        if (!cfg->start_cert) goto inval;
        Tem__V1__CommitCertificate *c =
            tem__v1__commit_certificate__unpack(&ledger_pb_allocator, cfg->start_cert_len,
                                                cfg->start_cert);
        if (!c) goto inval;
        int rc = PBFT_EINVAL;
        if (c->height == cfg->start_height && pb_is_hash(c->block_hash) &&
            hash_eq(c->block_hash.data, cfg->start_hash) &&
            pbft__sigset_from_pb(r, c->sigs, c->n_sigs, &r->delivered_cert) == PBFT_OK &&
            r->delivered_cert.n >= r->quorum) {
            r->delivered_view = c->view;
            rc = PBFT_OK;
        }
        tem__v1__commit_certificate__free_unpacked(c, &ledger_pb_allocator);
        if (rc != PBFT_OK) goto inval;
    }
    r->low = r->delivered / cfg->checkpoint_interval * cfg->checkpoint_interval;
    r->slots = tem_calloc(r->window, sizeof *r->slots);
    if (!r->slots) {
        pbft_replica_free(r);
        return PBFT_ENOMEM;
    }
    return PBFT_OK;
inval:
    pbft_replica_free(r);
    return PBFT_EINVAL;
}

void pbft_replica_free(pbft_replica *r) {
    if (r->slots) {
        for (uint32_t i = 0; i < r->window; i++) slot_clear(&r->slots[i]);
        tem_free(r->slots);
    }
    for (uint32_t j = 0; j < PBFT_REPLICAS_MAX; j++) tem_free(r->vc_msg[j]);
    tem_free(r->nv_msg);
    /* The struct held the validator's signing key. */
    volatile uint8_t *p = (volatile uint8_t *)r;
    for (size_t i = 0; i < sizeof *r; i++) p[i] = 0;
}

uint64_t pbft_replica_view(const pbft_replica *r) { return r->view; }
void pbft_replica_durable(pbft_replica *r, uint64_t height) {
    if (height > r->durable) r->durable = height;
}
bool pbft_replica_in_view_change(const pbft_replica *r) { return r->in_view_change; }
uint64_t pbft_replica_delivered(const pbft_replica *r) { return r->delivered; }
uint64_t pbft_replica_stable(const pbft_replica *r) { return r->stable; }

static int check_prepared_cert(const pbft_replica *r, const Tem__V1__PbftPreparedCert *pc,
                               pbft__sigset *sigs);

/* The block a slot record's commit certificate is for: its own bytes or its prepared one's.
 * False when it has neither. */
static bool record_commit_block(const Tem__V1__PbftSlotRecord *e, const uint8_t **bytes, size_t *len) {
    if (e->block.len > 0) {
        *bytes = e->block.data;
        *len = e->block.len;
        return true;
    }
    if (!e->prepared || e->prepared->block.len == 0) return false;
    *bytes = e->prepared->block.data;
    *len = e->prepared->block.len;
    return true;
}

/* Checks a record slot's commit certificate against its block: PBFT_OK with the block's hash,
 * the certificate's view and signatures; PBFT_ERECORD otherwise. */
static int record_commit_check(const pbft_replica *r, const Tem__V1__PbftSlotRecord *e, uint8_t hash[32],
                               uint64_t *view, pbft__sigset *sigs) {
    const uint8_t *bytes;
    size_t len;
    if (!record_commit_block(e, &bytes, &len) || len > PBFT_BLOCK_BYTES_MAX) return PBFT_ERECORD;
    if (r->cfg.hash(r->cfg.ctx, bytes, len, hash) != 0) return PBFT_ERECORD;
    if (pbft_cert_check(r, e->commit_cert.data, e->commit_cert.len, e->height, hash, view) != PBFT_OK)
        return PBFT_ERECORD;
    Tem__V1__CommitCertificate *c =
        tem__v1__commit_certificate__unpack(&ledger_pb_allocator, e->commit_cert.len, e->commit_cert.data);
    if (!c) return PBFT_ERECORD;
    int rc = pbft__sigset_from_pb(r, c->sigs, c->n_sigs, sigs) == PBFT_OK ? PBFT_OK : PBFT_ERECORD;
    tem__v1__commit_certificate__free_unpacked(c, &ledger_pb_allocator);
    return rc;
}

int pbft_replica_restore(pbft_replica *r, const uint8_t *record, size_t len) {
    TEM_ASSERT(!r->started);
    Tem__V1__PbftVoteRecord *rec =
        tem__v1__pbft_vote_record__unpack(&ledger_pb_allocator, len, record);
    if (!rec) return PBFT_ERECORD;
    /* Check everything before changing anything, so a bad record restores nothing. Only the
     * last delivered height carries a commit certificate: its check's results are kept for the
     * second pass, so its signatures are verified once. */
    int rc = PBFT_ERECORD;
    const Tem__V1__PbftSlotRecord *ce = NULL;
    uint8_t c_hash[32];
    uint64_t c_view = 0;
    pbft__sigset c_sigs;
    for (size_t i = 0; i < rec->n_slots; i++) {
        const Tem__V1__PbftSlotRecord *e = rec->slots[i];
        if (e->prepared_vote && !pb_is_hash(e->prepare_hash)) goto out;
        if (e->commit_vote && !pb_is_hash(e->commit_hash)) goto out;
        if (e->prepared) {
            pbft__sigset tmp;
            if (e->prepared->height != e->height) goto out;
            if (check_prepared_cert(r, e->prepared, &tmp) != PBFT_OK) goto out;
        }
        if (e->commit_cert.len > 0) {
            if (ce || record_commit_check(r, e, c_hash, &c_view, &c_sigs) != PBFT_OK) goto out;
            ce = e;
        }
    }
    r->view = rec->view;
    r->in_view_change = rec->view_change;
    r->view_floor = rec->view_floor;
    rc = PBFT_OK;
    if (r->cfg.planted_bug == PBFT_BUG_FORGET_VOTES_ON_RESTART) goto out;
    for (size_t i = 0; i < rec->n_slots; i++) {
        const Tem__V1__PbftSlotRecord *e = rec->slots[i];
        if (e->height <= r->delivered) continue;
        pbft__slot *s = slot_at(r, e->height);
        if (!s) continue;
        if (e->prepared_vote) {
            s->my_prepare.set = true;
            s->my_prepare.view = e->prepare_view;
            hash_copy(s->my_prepare.hash, e->prepare_hash.data);
        }
        if (e->commit_vote) {
            s->my_commit.set = true;
            s->my_commit.view = e->commit_view;
            hash_copy(s->my_commit.hash, e->commit_hash.data);
        }
        if (e->prepared) {
            pbft__sigset sigs;
            TEM_ASSERT(check_prepared_cert(r, e->prepared, &sigs) == PBFT_OK);
            rc = block_add(s, e->prepared->block_hash.data, e->prepared->block.data,
                           e->prepared->block.len, NULL);
            if (rc != PBFT_OK) goto out;
            s->has_pc = true;
            s->pc_view = e->prepared->view;
            hash_copy(s->pc_hash, e->prepared->block_hash.data);
            s->pc_sigs = sigs;
        }
        if (e == ce && !s->committed) {
            /* The block was delivered before the crash and did not reach the disk: start()
             * delivers it again (advance). */
            const uint8_t *bytes;
            size_t blen;
            TEM_ASSERT(record_commit_block(e, &bytes, &blen));
            if ((rc = block_add(s, c_hash, bytes, blen, NULL)) != PBFT_OK) goto out;
            s->committed = true;
            s->c_view = c_view;
            hash_copy(s->c_hash, c_hash);
            s->c_sigs = c_sigs;
        }
    }
out:
    tem__v1__pbft_vote_record__free_unpacked(rec, &ledger_pb_allocator);
    return rc;
}

static int send_view_change(pbft_replica *r, pbft_actions *out, bool persist_first);
static int advance(pbft_replica *r, pbft_actions *out);

int pbft_replica_start(pbft_replica *r, pbft_actions *out) {
    TEM_ASSERT(!r->started);
    TEM_ASSERT(r->slots != NULL);
    r->started = true;
    set_timer(r, out, PBFT_TIMER_VIEW, view_timeout(r));
    if (r->in_view_change) {
        int rc = send_view_change(r, out, false);
        if (rc != PBFT_OK) return rc;
    }
    return advance(r, out);
}

/* ================================================================== delivery and checkpoints */

static void check_stable(pbft_replica *r, pbft_actions *out);

/* Delivers the block at delivered+1 (from the log or straight from a fetch). */
static int deliver_block(pbft_replica *r, uint64_t h, uint64_t view, const uint8_t hash[32],
                         const uint8_t *block, size_t len, const pbft__sigset *sigs,
                         pbft_actions *out) {
    TEM_ASSERT(h == r->delivered + 1);
    uint8_t *bytes = tem_malloc(len ? len : 1);
    if (!bytes) return PBFT_ENOMEM;
    memcpy(bytes, block, len);
    uint8_t *cert;
    size_t cert_len;
    int rc = pbft_cert_pack(view, h, hash, sigs, &cert, &cert_len);
    if (rc != PBFT_OK) {
        tem_free(bytes);
        return rc;
    }
    pbft_action *a = act_push(out, PBFT_ACT_DELIVER);
    a->height = h;
    a->view = view;
    hash_copy(a->block_hash, hash);
    a->msg = bytes;
    a->msg_len = len;
    a->cert = cert;
    a->cert_len = cert_len;

    r->delivered = h;
    hash_copy(r->delivered_hash, hash);
    r->delivered_view = view;
    r->delivered_cert = *sigs;
    r->failed_views = 0;
    r->proposal_requested = false;
    if (!r->in_view_change) set_timer(r, out, PBFT_TIMER_VIEW, view_timeout(r));

    if (h % r->cfg.checkpoint_interval == 0) {
        /* Own checkpoint: recorded like a peer's, then announced. */
        uint8_t d[32];
        pbft_checkpoint_digest(r->cfg.genesis_hash, h, r->delivered_hash, d);
        pbft__ckpt *slot = &r->ckpts[r->cfg.self][0];
        for (int i = 1; i < PBFT__CKPT_KEEP; i++)
            if (r->ckpts[r->cfg.self][i].height < slot->height) slot = &r->ckpts[r->cfg.self][i];
        slot->height = h;
        hash_copy(slot->hash, r->delivered_hash);
        sign_digest(r, d, slot->sig);
        Tem__V1__PbftMessage m = TEM__V1__PBFT_MESSAGE__INIT;
        Tem__V1__PbftCheckpoint c = TEM__V1__PBFT_CHECKPOINT__INIT;
        c.height = h;
        c.block_hash.data = r->delivered_hash;
        c.block_hash.len = 32;
        m.kind_case = TEM__V1__PBFT_MESSAGE__KIND_CHECKPOINT;
        m.checkpoint = &c;
        rc = emit_msg(r, out, PBFT_TO_ALL, &m);
        if (rc != PBFT_OK) return rc;
        check_stable(r, out);
    }
    gc(r);
    return PBFT_OK;
}

static int deliver_ready(pbft_replica *r, pbft_actions *out) {
    for (;;) {
        pbft__slot *s = slot_find(r, r->delivered + 1);
        if (!s || !s->committed || !block_find(s, s->c_hash)) return PBFT_OK;
        pbft__block *b = block_find(s, s->c_hash);
        int rc = deliver_block(r, s->height, s->c_view, s->c_hash, b->bytes, b->len, &s->c_sigs,
                               out);
        if (rc != PBFT_OK) return rc;
    }
}

/* A checkpoint is stable once `quorum` validators signed the same (height, hash). */
static void check_stable(pbft_replica *r, pbft_actions *out) {
    (void)out;
    for (uint32_t j = 0; j < r->cfg.n; j++) {
        for (int k = 0; k < PBFT__CKPT_KEEP; k++) {
            const pbft__ckpt *c = &r->ckpts[j][k];
            if (c->height <= r->stable) continue;
            pbft__sigset proof = {0};
            for (uint32_t i = 0; i < r->cfg.n; i++)
                for (int l = 0; l < PBFT__CKPT_KEEP; l++) {
                    const pbft__ckpt *o = &r->ckpts[i][l];
                    if (o->height == c->height && hash_eq(o->hash, c->hash)) {
                        proof.idx[proof.n] = (uint8_t)i;
                        memcpy(proof.sig[proof.n], o->sig, 64);
                        proof.n++;
                        break;
                    }
                }
            if (proof.n >= r->quorum && c->height > r->stable) {
                r->stable = c->height;
                hash_copy(r->stable_hash, c->hash);
                r->stable_proof = proof;
            }
        }
    }
    gc(r);
}

/* ================================================================== catch-up */

enum { BEHIND_NO, BEHIND_MISSING, BEHIND_SLOW };

/* BEHIND_MISSING: others delivered past something this replica lacks. BEHIND_SLOW: they are
 * ahead, but this replica holds the next height's pre-prepare and block in the current view:
 * it is still working on what it has, not missing it. */
static int is_behind(pbft_replica *r) {
    if (r->stable > r->delivered || (!r->in_view_change && r->view_floor > r->delivered))
        return BEHIND_MISSING;
    pbft__slot *s = slot_find(r, r->delivered + 1);
    if (s && s->committed && !block_find(s, s->c_hash)) return BEHIND_MISSING;
    /* f+1 validators have signed checkpoints or votes above the next height: one of them is
     * honest, and an honest validator only signs those after delivering what this one lacks. */
    uint32_t ahead = 0;
    for (uint32_t j = 0; j < r->cfg.n; j++)
        if (j != r->cfg.self && r->seen_height[j] > r->delivered + 1) ahead++;
    if (ahead < r->f + 1) return BEHIND_NO;
    bool holds_next = s && s->has_pp && s->pp_view == r->view && !r->in_view_change && block_find(s, s->pp_hash);
    return holds_next ? BEHIND_SLOW : BEHIND_MISSING;
}

/* A grace before a slow replica fetches what it already holds: under load a validator whose
 * loop is busy runs a height or two behind the others, and fetching then brought it the
 * blocks it was validating, whose txs it verified a second time. If it is still behind when the
 * grace ends, it fetches. */
static uint64_t slow_grace_ms(const pbft_replica *r) { return r->cfg.view_timeout_ms / 4 ? r->cfg.view_timeout_ms / 4 : 1; }

static void maybe_fetch(pbft_replica *r, pbft_actions *out, bool force) {
    int behind = is_behind(r);
    if (behind == BEHIND_NO) {
        if (r->fetch_timer_seq) cancel_timer(r, out, PBFT_TIMER_FETCH);
        r->fetch_from = 0;
        return;
    }
    /* One request at a time: the node streams what its peer has; the fetch timer re-asks. */
    if (!force && r->fetch_from != 0) return;
    if (!force && behind == BEHIND_SLOW) {
        if (!r->fetch_timer_seq) set_timer(r, out, PBFT_TIMER_FETCH, slow_grace_ms(r));
        return;
    }
    pbft_action *a = act_push(out, PBFT_ACT_REQUEST_BLOCKS);
    a->height = r->delivered + 1;
    r->fetch_from = r->delivered + 1;
    set_timer(r, out, PBFT_TIMER_FETCH, r->cfg.view_timeout_ms);
}

/* ================================================================== normal case */

/* Signs this replica's vote for `hash` in the current view into `votes[self]` and `*mine`, then
 * persists it. The vote is on disk before it is on the wire: after a crash the replica must still
 * know it voted, or it could vote for another block at this (view, height). */
static int record_own_vote(pbft_replica *r, const uint8_t digest[32], const uint8_t hash[32],
                           pbft__vote *votes, pbft__vote *mine, pbft_actions *out) {
    pbft__vote *v = &votes[r->cfg.self];
    v->set = true;
    v->view = r->view;
    hash_copy(v->hash, hash);
    sign_digest(r, digest, v->sig);
    *mine = *v;
    return persist(r, out);
}

static int vote_prepare(pbft_replica *r, pbft__slot *s, pbft_actions *out) {
    uint8_t d[32];
    pbft_prepare_digest(r->cfg.genesis_hash, r->view, s->height, s->pp_hash, d);
    int rc = record_own_vote(r, d, s->pp_hash, s->prepares, &s->my_prepare, out);
    if (rc != PBFT_OK) return rc;
    Tem__V1__PbftMessage m = TEM__V1__PBFT_MESSAGE__INIT;
    Tem__V1__PbftPrepare p = TEM__V1__PBFT_PREPARE__INIT;
    p.view = r->view;
    p.height = s->height;
    p.block_hash.data = s->pp_hash;
    p.block_hash.len = 32;
    m.kind_case = TEM__V1__PBFT_MESSAGE__KIND_PREPARE;
    m.prepare = &p;
    return emit_msg(r, out, PBFT_TO_ALL, &m);
}

static void check_commit(pbft_replica *r, pbft__slot *s, uint64_t view, const uint8_t hash[32]);

static int vote_commit(pbft_replica *r, pbft__slot *s, pbft_actions *out) {
    uint8_t d[32];
    ledger_commit_digest(r->cfg.genesis_hash, r->view, s->height, s->pc_hash, d);
    /* The record also carries the prepared certificate the COMMIT rests on, which a later
     * VIEW-CHANGE must report. */
    int rc = record_own_vote(r, d, s->pc_hash, s->commits, &s->my_commit, out);
    if (rc != PBFT_OK) return rc;
    Tem__V1__PbftMessage m = TEM__V1__PBFT_MESSAGE__INIT;
    Tem__V1__PbftCommit c = TEM__V1__PBFT_COMMIT__INIT;
    c.view = r->view;
    c.height = s->height;
    c.block_hash.data = s->pc_hash;
    c.block_hash.len = 32;
    m.kind_case = TEM__V1__PBFT_MESSAGE__KIND_COMMIT;
    m.commit = &c;
    rc = emit_msg(r, out, PBFT_TO_ALL, &m);
    if (rc != PBFT_OK) return rc;
    check_commit(r, s, r->view, s->pc_hash);
    return PBFT_OK;
}

static void check_commit(pbft_replica *r, pbft__slot *s, uint64_t view, const uint8_t hash[32]) {
    if (s->committed) return;
    pbft__sigset sigs;
    if (count_votes(r, s->commits, view, hash, &sigs) < r->quorum) return;
    s->committed = true;
    s->c_view = view;
    hash_copy(s->c_hash, hash);
    s->c_sigs = sigs;
}

static void check_prepared(pbft_replica *r, pbft__slot *s) {
    if (!s->has_pp || s->pp_view != r->view) return;
    if (s->has_pc && s->pc_view == r->view) return;
    pbft__sigset sigs;
    if (count_votes(r, s->prepares, r->view, s->pp_hash, &sigs) < prepare_quorum(r)) return;
    s->has_pc = true;
    s->pc_view = r->view;
    hash_copy(s->pc_hash, s->pp_hash);
    s->pc_sigs = sigs;
}

/* Walks the window and takes every step the current state allows: validation requests, own
 * votes, prepared and committed certificates, delivery, the next proposal, catch-up. */
static int advance(pbft_replica *r, pbft_actions *out) {
    int rc = deliver_ready(r, out);
    if (rc != PBFT_OK) return rc;
    if (!r->in_view_change) {
        for (uint64_t h = r->low + 1; h <= r->low + r->window; h++) {
            pbft__slot *s = slot_find(r, h);
            if (!s || !s->has_pp || s->pp_view != r->view) continue;
            pbft__block *b = block_find(s, s->pp_hash);
            if (!b) continue;
            if (b->valid == PBFT__VAL_NONE) {
                if (h <= r->delivered) {
                    /* A re-proposal of a block this replica already delivered. */
                    if (s->committed && hash_eq(s->c_hash, s->pp_hash)) b->valid = PBFT__VAL_OK;
                } else if (h == r->delivered + 1) {
                    pbft_action *a = act_push(out, PBFT_ACT_REQUEST_VALIDATION);
                    a->height = h;
                    hash_copy(a->block_hash, b->hash);
                    a->msg = tem_malloc(b->len ? b->len : 1);
                    if (!a->msg) {
                        out->n--;
                        return PBFT_ENOMEM;
                    }
                    memcpy(a->msg, b->bytes, b->len);
                    a->msg_len = b->len;
                    b->valid = PBFT__VAL_REQUESTED;
                }
            }
            if (b->valid != PBFT__VAL_OK) continue;
            bool primary = pbft_primary(r->view, r->cfg.n) == r->cfg.self;
            bool voted = s->my_prepare.set && s->my_prepare.view == r->view;
            if (!primary && !voted) {
                rc = vote_prepare(r, s, out);
                if (rc != PBFT_OK) return rc;
            } else if (voted && !hash_eq(s->my_prepare.hash, s->pp_hash)) {
                continue; /* restored vote for another block in this view: stay silent */
            }
            check_prepared(r, s);
            if (s->has_pc && s->pc_view == r->view && hash_eq(s->pc_hash, s->pp_hash) &&
                !(s->my_commit.set && s->my_commit.view == r->view)) {
                rc = vote_commit(r, s, out);
                if (rc != PBFT_OK) return rc;
            }
        }
        rc = deliver_ready(r, out);
        if (rc != PBFT_OK) return rc;
        /* The primary asks for the next block only once it delivered the previous one: the node
         * builds on the state that block leaves. */
        if (pbft_primary(r->view, r->cfg.n) == r->cfg.self && !r->proposal_requested) {
            pbft__slot *s = slot_at(r, r->delivered + 1);
            if (s && !s->committed && !(s->has_pp && s->pp_view == r->view) &&
                !(s->my_prepare.set && s->my_prepare.view == r->view) &&
                r->stable <= r->delivered && r->view_floor <= r->delivered) {
                pbft_action *a = act_push(out, PBFT_ACT_REQUEST_PROPOSAL);
                a->height = r->delivered + 1;
                r->proposal_requested = true;
            }
        }
    }
    maybe_fetch(r, out, false);
    return PBFT_OK;
}

/* ================================================================== view change */

static int check_prepared_cert(const pbft_replica *r, const Tem__V1__PbftPreparedCert *pc,
                               pbft__sigset *sigs) {
    if (!pb_is_hash(pc->block_hash) || pc->block.len > PBFT_BLOCK_BYTES_MAX) return PBFT_ECERT;
    int rc = pbft__sigset_from_pbft(r, pc->sigs, pc->n_sigs, sigs);
    if (rc != PBFT_OK) return rc;
    uint8_t d[32];
    pbft_prepare_digest(r->cfg.genesis_hash, pc->view, pc->height, pc->block_hash.data, d);
    rc = pbft__sigset_verify(r, sigs, d, prepare_quorum(r));
    if (rc != PBFT_OK) return rc;
    uint8_t h[32];
    if (r->cfg.hash(r->cfg.ctx, pc->block.data, pc->block.len, h) != 0) return PBFT_EHASH;
    if (!hash_eq(h, pc->block_hash.data)) return PBFT_EHASH;
    return PBFT_OK;
}

/* The height and hash a VIEW-CHANGE proves committed: its stable checkpoint or its last
 * delivered block, whichever is higher. */
static uint64_t vc_commit_point(const Tem__V1__PbftViewChange *vc, const uint8_t **hash) {
    uint64_t h = vc->stable_height;
    *hash = vc->stable_hash.data;
    if (vc->committed && vc->committed->height > h) {
        h = vc->committed->height;
        *hash = vc->committed->block_hash.data;
    }
    return h;
}

/* Checks every proof a VIEW-CHANGE body carries. */
static int check_view_change(const pbft_replica *r, const Tem__V1__PbftViewChange *vc) {
    if (vc->new_view == 0) return PBFT_EDECODE;
    if (vc->stable_height > 0) {
        if (vc->stable_height % r->cfg.checkpoint_interval != 0 || !pb_is_hash(vc->stable_hash))
            return PBFT_ECERT;
        pbft__sigset s;
        int rc = pbft__sigset_from_pbft(r, vc->stable_proof, vc->n_stable_proof, &s);
        if (rc != PBFT_OK) return rc;
        uint8_t d[32];
        pbft_checkpoint_digest(r->cfg.genesis_hash, vc->stable_height, vc->stable_hash.data, d);
        rc = pbft__sigset_verify(r, &s, d, r->quorum);
        if (rc != PBFT_OK) return rc;
    }
    uint64_t above = 0;
    if (vc->committed) {
        const Tem__V1__CommitCertificate *c = vc->committed;
        if (c->height == 0 || !pb_is_hash(c->block_hash)) return PBFT_ECERT;
        pbft__sigset s;
        int rc = pbft__sigset_from_pb(r, c->sigs, c->n_sigs, &s);
        if (rc != PBFT_OK) return rc;
        uint8_t d[32];
        ledger_commit_digest(r->cfg.genesis_hash, c->view, c->height, c->block_hash.data, d);
        rc = pbft__sigset_verify(r, &s, d, r->quorum);
        if (rc != PBFT_OK) return rc;
        above = c->height;
    }
    if (vc->n_prepared > r->window) return PBFT_ECERT;
    for (size_t i = 0; i < vc->n_prepared; i++) {
        const Tem__V1__PbftPreparedCert *pc = vc->prepared[i];
        if (pc->height <= above || pc->view >= vc->new_view) return PBFT_ECERT;
        above = pc->height;
        pbft__sigset s;
        int rc = check_prepared_cert(r, pc, &s);
        if (rc != PBFT_OK) return rc == PBFT_EHASH ? PBFT_ECERT : rc;
    }
    return PBFT_OK;
}

static int send_view_change(pbft_replica *r, pbft_actions *out, bool persist_first) {
    Tem__V1__PbftViewChange vc = TEM__V1__PBFT_VIEW_CHANGE__INIT;
    Tem__V1__PbftSig ssig[PBFT_REPLICAS_MAX], *ssp[PBFT_REPLICAS_MAX];
    Tem__V1__CommitCertificate cc = TEM__V1__COMMIT_CERTIFICATE__INIT;
    Tem__V1__CommitSig csig[PBFT_REPLICAS_MAX], *csp[PBFT_REPLICAS_MAX];
    Tem__V1__PbftPreparedCert pcs[PBFT_LOG_MAX], *pcp[PBFT_LOG_MAX];
    Tem__V1__PbftSig psig[PBFT_LOG_MAX][PBFT_REPLICAS_MAX], *psp[PBFT_LOG_MAX][PBFT_REPLICAS_MAX];
    vc.new_view = r->view;
    if (r->stable > 0) {
        vc.stable_height = r->stable;
        vc.stable_hash.data = r->stable_hash;
        vc.stable_hash.len = 32;
        vc.n_stable_proof = sigset_to_pb(&r->stable_proof, ssig, ssp);
        vc.stable_proof = ssp;
    }
    if (r->delivered > 0) {
        cc.view = r->delivered_view;
        cc.height = r->delivered;
        cc.block_hash.data = r->delivered_hash;
        cc.block_hash.len = 32;
        uint32_t order[PBFT_REPLICAS_MAX];
        pbft__sigset_order(&r->delivered_cert, order);
        for (uint32_t i = 0; i < r->delivered_cert.n; i++) {
            tem__v1__commit_sig__init(&csig[i]);
            csig[i].validator = r->delivered_cert.idx[order[i]];
            csig[i].sig.data = r->delivered_cert.sig[order[i]];
            csig[i].sig.len = 64;
            csp[i] = &csig[i];
        }
        cc.n_sigs = r->delivered_cert.n;
        cc.sigs = csp;
        vc.committed = &cc;
    }
    size_t np = 0;
    for (uint64_t h = r->delivered + 1; h <= r->low + r->window; h++) {
        pbft__slot *s = slot_find(r, h);
        if (!s || !s->has_pc) continue;
        pbft__block *b = block_find(s, s->pc_hash);
        TEM_ASSERT(b != NULL);
        prepared_cert_to_pb(s, h, b, &pcs[np], psig[np], psp[np]);
        pcp[np] = &pcs[np];
        np++;
    }
    vc.n_prepared = np;
    vc.prepared = pcp;
    size_t blen = tem__v1__pbft_view_change__get_packed_size(&vc);
    uint8_t *body = tem_malloc(blen ? blen : 1);
    if (!body) return PBFT_ENOMEM;
    TEM_ASSERT(tem__v1__pbft_view_change__pack(&vc, body) == blen);
    Tem__V1__PbftMessage m = TEM__V1__PBFT_MESSAGE__INIT;
    m.sender = r->cfg.self;
    m.kind_case = TEM__V1__PBFT_MESSAGE__KIND_VIEW_CHANGE;
    m.view_change.data = body;
    m.view_change.len = blen;
    uint8_t *msg;
    size_t mlen;
    int rc = pbft_msg_sign_pack(r->cfg.genesis_hash, r->cfg.secret, &m, &msg, &mlen);
    tem_free(body);
    if (rc != PBFT_OK) return rc;
    uint8_t *copy = tem_malloc(mlen);
    if (!copy) {
        tem_free(msg);
        return PBFT_ENOMEM;
    }
    memcpy(copy, msg, mlen);
    tem_free(r->vc_msg[r->cfg.self]);
    r->vc_msg[r->cfg.self] = copy;
    r->vc_len[r->cfg.self] = mlen;
    r->vc_view[r->cfg.self] = r->view;
    if (persist_first) {
        /* A VIEW-CHANGE promises to take no part in lower views; that promise must survive. */
        rc = persist(r, out);
        if (rc != PBFT_OK) {
            tem_free(msg);
            return rc;
        }
    }
    pbft_action *a = act_push(out, PBFT_ACT_BROADCAST);
    a->to = PBFT_TO_ALL;
    a->msg = msg;
    a->msg_len = mlen;
    return PBFT_OK;
}

static int try_new_view(pbft_replica *r, pbft_actions *out);

static int start_view_change(pbft_replica *r, uint64_t nv, pbft_actions *out) {
    TEM_ASSERT(nv > r->view);
    r->view = nv;
    r->in_view_change = true;
    r->proposal_requested = false;
    r->view_floor = 0;
    tem_free(r->nv_msg);
    r->nv_msg = NULL;
    r->nv_len = 0;
    if (r->failed_views < 64) r->failed_views++;
    int rc = send_view_change(r, out, true);
    if (rc != PBFT_OK) return rc;
    set_timer(r, out, PBFT_TIMER_VIEW, view_timeout(r));
    return try_new_view(r, out);
}

/* What a NEW-VIEW implies: the commit point and, above it, the consecutive heights whose
 * highest-view prepared certificate must be re-proposed. A gap ends the list: an honest replica
 * prepares height h+1 only after delivering h, so nothing after a gap can have committed. */
typedef struct {
    uint64_t height;
    const uint8_t *hash;
    const uint8_t *block;
    size_t len;
} pbft__repro;

typedef struct {
    uint64_t commit_point;
    uint32_t n;
    pbft__repro e[PBFT_LOG_MAX];
} pbft__plan;

static void plan_new_view(const pbft_replica *r, Tem__V1__PbftViewChange *const *vcs, size_t n,
                          pbft__plan *plan) {
    plan->commit_point = 0;
    plan->n = 0;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *h;
        uint64_t cp = vc_commit_point(vcs[i], &h);
        if (cp > plan->commit_point) plan->commit_point = cp;
    }
    if (r->cfg.planted_bug == PBFT_BUG_NEW_VIEW_IGNORES_PREPARED) return;
    for (uint64_t h = plan->commit_point + 1; h <= plan->commit_point + r->window; h++) {
        const Tem__V1__PbftPreparedCert *best = NULL;
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; k < vcs[i]->n_prepared; k++) {
                const Tem__V1__PbftPreparedCert *pc = vcs[i]->prepared[k];
                if (pc->height == h && (!best || pc->view > best->view)) best = pc;
            }
        if (!best) break;
        pbft__repro *e = &plan->e[plan->n++];
        e->height = h;
        e->hash = best->block_hash.data;
        e->block = best->block.data;
        e->len = best->block.len;
    }
}

/* Installs view nv from a verified plan: re-proposals become the view's pre-prepares. */
static int install_view(pbft_replica *r, uint64_t nv, const pbft__plan *plan,
                        uint8_t sigs[][64], pbft_actions *out) {
    r->view = nv;
    r->in_view_change = false;
    r->proposal_requested = false;
    /* Everything up to the commit point is decided: no proposal in this view may touch it. */
    r->view_floor = plan->commit_point;
    uint32_t primary = pbft_primary(nv, r->cfg.n);
    for (uint32_t i = 0; i < r->window; i++) {
        pbft__slot *s = &r->slots[i];
        if (s->height != 0 && s->has_pp && s->pp_view == nv && s->height <= plan->commit_point)
            s->has_pp = false; /* an early pre-prepare below the floor: void */
    }
    for (uint32_t i = 0; i < plan->n; i++) {
        const pbft__repro *e = &plan->e[i];
        pbft__slot *s = slot_at(r, e->height);
        if (!s) continue;
        int rc = block_add(s, e->hash, e->block, e->len, NULL);
        if (rc != PBFT_OK) return rc;
        s->has_pp = true;
        s->pp_view = nv;
        hash_copy(s->pp_hash, e->hash);
        pbft__vote *v = &s->prepares[primary];
        v->set = true;
        v->view = nv;
        hash_copy(v->hash, e->hash);
        memcpy(v->sig, sigs[i], 64);
        if (primary == r->cfg.self) s->my_prepare = *v;
    }
    set_timer(r, out, PBFT_TIMER_VIEW, view_timeout(r));
    if (plan->commit_point > r->delivered) maybe_fetch(r, out, true);
    return PBFT_OK;
}

static int decode_vc(const uint8_t *msg, size_t len, Tem__V1__PbftMessage **env,
                     Tem__V1__PbftViewChange **body) {
    *env = tem__v1__pbft_message__unpack(&ledger_pb_allocator, len, msg);
    *body = NULL;
    if (!*env) return PBFT_EDECODE;
    if ((*env)->kind_case != TEM__V1__PBFT_MESSAGE__KIND_VIEW_CHANGE || (*env)->sig.len != 64)
        return PBFT_EDECODE;
    *body = tem__v1__pbft_view_change__unpack(&ledger_pb_allocator, (*env)->view_change.len,
                                              (*env)->view_change.data);
    return *body ? PBFT_OK : PBFT_EDECODE;
}

static void free_vc(Tem__V1__PbftMessage *env, Tem__V1__PbftViewChange *body) {
    if (body) tem__v1__pbft_view_change__free_unpacked(body, &ledger_pb_allocator);
    if (env) tem__v1__pbft_message__free_unpacked(env, &ledger_pb_allocator);
}

/* The new primary: once `quorum` VIEW-CHANGEs for its view are in, builds, persists and
 * broadcasts NEW-VIEW and installs the view itself. */
static int try_new_view(pbft_replica *r, pbft_actions *out) {
    if (!r->in_view_change || pbft_primary(r->view, r->cfg.n) != r->cfg.self) return PBFT_OK;
    uint32_t idx[PBFT_REPLICAS_MAX], n = 0;
    for (uint32_t j = 0; j < r->cfg.n && n < r->quorum; j++)
        if (r->vc_msg[j] && r->vc_view[j] == r->view) idx[n++] = j;
    if (n < r->quorum) return PBFT_OK;
    Tem__V1__PbftMessage *envs[PBFT_REPLICAS_MAX] = {0};
    Tem__V1__PbftViewChange *bodies[PBFT_REPLICAS_MAX] = {0};
    int rc = PBFT_OK;
    for (uint32_t i = 0; i < n; i++) {
        /* Stored messages were verified on arrival (or built here): decoding them again can
         * only fail for want of memory. */
        if (decode_vc(r->vc_msg[idx[i]], r->vc_len[idx[i]], &envs[i], &bodies[i]) != PBFT_OK) {
            for (uint32_t k = 0; k <= i; k++) free_vc(envs[k], bodies[k]);
            return PBFT_ENOMEM;
        }
    }
    pbft__plan plan;
    plan_new_view(r, bodies, n, &plan);
    uint8_t sigs[PBFT_LOG_MAX][64];
    Tem__V1__PbftNewView nvb = TEM__V1__PBFT_NEW_VIEW__INIT;
    ProtobufCBinaryData vcb[PBFT_REPLICAS_MAX];
    Tem__V1__PbftReproposal rp[PBFT_LOG_MAX], *rpp[PBFT_LOG_MAX];
    uint8_t *body = NULL, *msg = NULL;
    size_t mlen = 0;
    /* Every re-proposal must fit this replica's window, so the record can hold its votes; a
     * primary too far behind lets the view time out. */
    if (plan.n > 0 && plan.e[plan.n - 1].height > r->low + r->window) goto out;
    for (uint32_t i = 0; i < plan.n; i++) {
        uint8_t d[32];
        pbft_prepare_digest(r->cfg.genesis_hash, r->view, plan.e[i].height, plan.e[i].hash, d);
        sign_digest(r, d, sigs[i]);
        tem__v1__pbft_reproposal__init(&rp[i]);
        rp[i].height = plan.e[i].height;
        rp[i].block_hash.data = (uint8_t *)plan.e[i].hash;
        rp[i].block_hash.len = 32;
        rp[i].sig.data = sigs[i];
        rp[i].sig.len = 64;
        rpp[i] = &rp[i];
    }
    for (uint32_t i = 0; i < n; i++) {
        vcb[i].data = r->vc_msg[idx[i]];
        vcb[i].len = r->vc_len[idx[i]];
    }
    nvb.view = r->view;
    nvb.n_view_changes = n;
    nvb.view_changes = vcb;
    nvb.n_reproposals = plan.n;
    nvb.reproposals = rpp;
    size_t blen = tem__v1__pbft_new_view__get_packed_size(&nvb);
    body = tem_malloc(blen ? blen : 1);
    if (!body) {
        rc = PBFT_ENOMEM;
        goto out;
    }
    TEM_ASSERT(tem__v1__pbft_new_view__pack(&nvb, body) == blen);
    Tem__V1__PbftMessage m = TEM__V1__PBFT_MESSAGE__INIT;
    m.sender = r->cfg.self;
    m.kind_case = TEM__V1__PBFT_MESSAGE__KIND_NEW_VIEW;
    m.new_view.data = body;
    m.new_view.len = blen;
    rc = pbft_msg_sign_pack(r->cfg.genesis_hash, r->cfg.secret, &m, &msg, &mlen);
    if (rc != PBFT_OK) goto out;
    rc = install_view(r, r->view, &plan, sigs, out);
    if (rc != PBFT_OK) goto out;
    /* The re-proposals are this primary's votes in the new view: on disk first. */
    rc = persist(r, out);
    if (rc != PBFT_OK) goto out;
    r->nv_msg = tem_malloc(mlen);
    if (r->nv_msg) {
        memcpy(r->nv_msg, msg, mlen);
        r->nv_len = mlen;
    }
    pbft_action *a = act_push(out, PBFT_ACT_BROADCAST);
    a->to = PBFT_TO_ALL;
    a->msg = msg;
    a->msg_len = mlen;
    msg = NULL;
    rc = advance(r, out);
out:
    tem_free(msg);
    tem_free(body);
    for (uint32_t i = 0; i < n; i++) free_vc(envs[i], bodies[i]);
    return rc;
}

/* ================================================================== message handlers */

static void saw(pbft_replica *r, uint32_t j, uint64_t h) {
    if (h > r->seen_height[j]) r->seen_height[j] = h;
}

/* f+1 validators signed votes in views above this replica's: at least one of them is honest
 * and has moved on, so the others finished a view change this replica missed (it was stopped,
 * restarted or cut off while they changed view, and no timer of its own will fire while it
 * sees progress). Ask for the lowest such view: the primary of that view answers a VIEW-CHANGE
 * for its current view by re-sending its NEW-VIEW, which brings this replica in by the normal
 * checks. Joining a view only on a NEW-VIEW keeps safety as it was; f Byzantine validators
 * alone cannot push an honest replica into a view change. */
static int join_later_view(pbft_replica *r, pbft_actions *out) {
    uint32_t cnt = 0;
    uint64_t lowest = UINT64_MAX;
    for (uint32_t j = 0; j < r->cfg.n; j++) {
        if (j == r->cfg.self || r->seen_view[j] <= r->view) continue;
        cnt++;
        if (r->seen_view[j] < lowest) lowest = r->seen_view[j];
    }
    if (cnt < r->f + 1) return PBFT_OK;
    return start_view_change(r, lowest, out);
}

static void saw_view(pbft_replica *r, uint32_t j, uint64_t v) {
    if (v > r->seen_view[j]) r->seen_view[j] = v;
}

static int verify_env(const pbft_replica *r, const Tem__V1__PbftMessage *m) {
    uint8_t d[32];
    int rc = pbft_msg_digest(r->cfg.genesis_hash, m, d);
    if (rc != PBFT_OK) return rc;
    return pbft__verify(r, m->sender, d, m->sig.data) == 0 ? PBFT_OK : PBFT_ESIG;
}

static int on_pre_prepare(pbft_replica *r, const Tem__V1__PbftMessage *m, pbft_actions *out) {
    const Tem__V1__PbftPrePrepare *p = m->pre_prepare;
    if (!pb_is_hash(p->block_hash) || p->block.len > PBFT_BLOCK_BYTES_MAX) return PBFT_EDECODE;
    if (m->sender != pbft_primary(p->view, r->cfg.n)) return PBFT_EVIEW;
    if (p->view < r->view) return PBFT_EVIEW;
    if (p->height <= r->low || p->height > r->low + r->window) return PBFT_EWATERMARK;
    if (p->height <= r->delivered) return PBFT_ESTALE;
    if (p->view == r->view && p->height <= r->view_floor) return PBFT_ESTALE;
    pbft__slot *s = slot_find(r, p->height);
    if (s && s->has_pp && s->pp_view >= r->view) {
        if (s->pp_view == p->view)
            return hash_eq(s->pp_hash, p->block_hash.data) ? PBFT_EDUP : PBFT_ECONFLICT;
        if (s->pp_view < p->view) return PBFT_ESTALE; /* keep the one nearer the current view */
    }
    if (s && s->my_prepare.set && s->my_prepare.view == p->view &&
        !hash_eq(s->my_prepare.hash, p->block_hash.data))
        return PBFT_ECONFLICT;
    uint8_t h[32];
    if (r->cfg.hash(r->cfg.ctx, p->block.data, p->block.len, h) != 0) return PBFT_EHASH;
    if (!hash_eq(h, p->block_hash.data)) return PBFT_EHASH;
    int rc = verify_env(r, m);
    if (rc != PBFT_OK) return rc;
    s = slot_at(r, p->height);
    TEM_ASSERT(s != NULL);
    rc = block_add(s, h, p->block.data, p->block.len, NULL);
    if (rc != PBFT_OK) return rc;
    saw(r, m->sender, p->height);
    saw_view(r, m->sender, p->view);
    s->has_pp = true;
    s->pp_view = p->view;
    hash_copy(s->pp_hash, h);
    pbft__vote *v = &s->prepares[m->sender];
    if (!v->set || v->view <= p->view) {
        v->set = true;
        v->view = p->view;
        hash_copy(v->hash, h);
        memcpy(v->sig, m->sig.data, 64);
    }
    return advance(r, out);
}

/* PREPARE and COMMIT share their checks; `votes` is the slot's table for the kind. */
static int on_vote(pbft_replica *r, const Tem__V1__PbftMessage *m, uint64_t view, uint64_t height,
                   ProtobufCBinaryData hashb, bool is_commit, pbft_actions *out) {
    if (!pb_is_hash(hashb)) return PBFT_EDECODE;
    if (height <= r->low || height > r->low + r->window) return PBFT_EWATERMARK;
    if (!is_commit && view < r->view) return PBFT_EVIEW;
    if (!is_commit && m->sender == pbft_primary(view, r->cfg.n)) return PBFT_EVIEW;
    pbft__slot *s = slot_find(r, height);
    const pbft__vote *old = s ? (is_commit ? &s->commits[m->sender] : &s->prepares[m->sender]) : NULL;
    if (old && old->set) {
        if (old->view > view) return PBFT_ESTALE;
        if (old->view == view)
            return hash_eq(old->hash, hashb.data) ? PBFT_EDUP : PBFT_ECONFLICT;
    }
    if (is_commit && s && s->committed) return PBFT_ESTALE;
    int rc = verify_env(r, m);
    if (rc != PBFT_OK) return rc;
    s = slot_at(r, height);
    TEM_ASSERT(s != NULL);
    saw(r, m->sender, height);
    pbft__vote *v = is_commit ? &s->commits[m->sender] : &s->prepares[m->sender];
    v->set = true;
    v->view = view;
    hash_copy(v->hash, hashb.data);
    memcpy(v->sig, m->sig.data, 64);
    /* A commit certificate from any view proves the block committed, even one this replica
     * has left behind. */
    if (is_commit) check_commit(r, s, view, hashb.data);
    saw_view(r, m->sender, view);
    if (view > r->view) {
        rc = join_later_view(r, out);
        if (rc != PBFT_OK) return rc;
    }
    return advance(r, out);
}

static int on_checkpoint(pbft_replica *r, const Tem__V1__PbftMessage *m, pbft_actions *out) {
    const Tem__V1__PbftCheckpoint *c = m->checkpoint;
    if (!pb_is_hash(c->block_hash)) return PBFT_EDECODE;
    if (c->height == 0 || c->height % r->cfg.checkpoint_interval != 0) return PBFT_EDECODE;
    if (c->height <= r->stable) return PBFT_ESTALE;
    pbft__ckpt *keep = r->ckpts[m->sender];
    pbft__ckpt *slot = &keep[0];
    for (int i = 0; i < PBFT__CKPT_KEEP; i++) {
        if (keep[i].height == c->height)
            return hash_eq(keep[i].hash, c->block_hash.data) ? PBFT_EDUP : PBFT_ECONFLICT;
        if (keep[i].height < slot->height) slot = &keep[i];
    }
    if (slot->height > c->height) return PBFT_ESTALE;
    int rc = verify_env(r, m);
    if (rc != PBFT_OK) return rc;
    slot->height = c->height;
    hash_copy(slot->hash, c->block_hash.data);
    memcpy(slot->sig, m->sig.data, 64);
    saw(r, m->sender, c->height);
    check_stable(r, out);
    return advance(r, out);
}

/* A verified VIEW-CHANGE may carry the commit certificate of a block this replica holds but
 * never saw 2f+1 COMMITs for: that certificate lets it deliver without fetching. */
static void absorb_commit(pbft_replica *r, const Tem__V1__PbftViewChange *vc) {
    const Tem__V1__CommitCertificate *c = vc->committed;
    if (!c || c->height <= r->delivered) return;
    pbft__slot *s = slot_find(r, c->height);
    if (!s || s->committed || !block_find(s, c->block_hash.data)) return;
    pbft__sigset sigs;
    if (pbft__sigset_from_pb(r, c->sigs, c->n_sigs, &sigs) != PBFT_OK) return;
    s->committed = true;
    s->c_view = c->view;
    hash_copy(s->c_hash, c->block_hash.data);
    s->c_sigs = sigs;
}

static int on_view_change(pbft_replica *r, const Tem__V1__PbftMessage *m, const uint8_t *raw,
                          size_t raw_len, pbft_actions *out) {
    Tem__V1__PbftViewChange *vc = tem__v1__pbft_view_change__unpack(
        &ledger_pb_allocator, m->view_change.len, m->view_change.data);
    if (!vc) return PBFT_EDECODE;
    int rc;
    uint32_t j = m->sender;
    if (vc->new_view < r->view) {
        /* A replica still trying to reach an older view: the current primary re-sends the
         * NEW-VIEW that moved everyone else on (verifying it costs the receiver, not us). */
        if (r->nv_msg && !r->in_view_change) {
            pbft_action *a = act_push(out, PBFT_ACT_SEND);
            a->to = j;
            a->msg = tem_malloc(r->nv_len);
            if (!a->msg) {
                out->n--;
                rc = PBFT_ENOMEM;
                goto out;
            }
            memcpy(a->msg, r->nv_msg, r->nv_len);
            a->msg_len = r->nv_len;
        }
        rc = PBFT_ESTALE;
        goto out;
    }
    if (r->vc_msg[j] && r->vc_view[j] >= vc->new_view) {
        rc = r->vc_view[j] == vc->new_view ? PBFT_EDUP : PBFT_ESTALE;
        if (vc->new_view == r->view && r->nv_msg && !r->in_view_change) {
            /* Same view, but it missed the NEW-VIEW. */
            pbft_action *a = act_push(out, PBFT_ACT_SEND);
            a->to = j;
            a->msg = tem_malloc(r->nv_len);
            if (!a->msg) {
                out->n--;
                rc = PBFT_ENOMEM;
                goto out;
            }
            memcpy(a->msg, r->nv_msg, r->nv_len);
            a->msg_len = r->nv_len;
        }
        goto out;
    }
    rc = verify_env(r, m);
    if (rc != PBFT_OK) goto out;
    rc = check_view_change(r, vc);
    if (rc != PBFT_OK) goto out;
    absorb_commit(r, vc);
    uint8_t *copy = tem_malloc(raw_len);
    if (!copy) {
        rc = PBFT_ENOMEM;
        goto out;
    }
    memcpy(copy, raw, raw_len);
    tem_free(r->vc_msg[j]);
    r->vc_msg[j] = copy;
    r->vc_len[j] = raw_len;
    r->vc_view[j] = vc->new_view;
    if (vc->new_view == r->view && r->nv_msg && !r->in_view_change) {
        pbft_action *a = act_push(out, PBFT_ACT_SEND);
        a->to = j;
        a->msg = tem_malloc(r->nv_len);
        if (a->msg) {
            memcpy(a->msg, r->nv_msg, r->nv_len);
            a->msg_len = r->nv_len;
        } else {
            out->n--;
        }
    }
    /* f+1 replicas want a later view: at least one is honest, so join the lowest such view
     * rather than wait for the own timer (Castro & Liskov, 4.5.2). */
    if (vc->new_view > r->view) {
        uint32_t cnt = 0;
        uint64_t lowest = UINT64_MAX;
        for (uint32_t i = 0; i < r->cfg.n; i++) {
            if (i == r->cfg.self || !r->vc_msg[i] || r->vc_view[i] <= r->view) continue;
            cnt++;
            if (r->vc_view[i] < lowest) lowest = r->vc_view[i];
        }
        if (cnt >= r->f + 1) {
            rc = start_view_change(r, lowest, out);
            if (rc != PBFT_OK) goto out;
        }
    }
    rc = try_new_view(r, out);
    if (rc == PBFT_OK) rc = advance(r, out);
out:
    tem__v1__pbft_view_change__free_unpacked(vc, &ledger_pb_allocator);
    return rc;
}

static int on_new_view(pbft_replica *r, const Tem__V1__PbftMessage *m, pbft_actions *out) {
    Tem__V1__PbftNewView *nv =
        tem__v1__pbft_new_view__unpack(&ledger_pb_allocator, m->new_view.len, m->new_view.data);
    if (!nv) return PBFT_EDECODE;
    Tem__V1__PbftMessage *envs[PBFT_REPLICAS_MAX] = {0};
    Tem__V1__PbftViewChange *bodies[PBFT_REPLICAS_MAX] = {0};
    size_t nb = 0;
    int rc;
    if (m->sender != pbft_primary(nv->view, r->cfg.n) || nv->view == 0) {
        rc = PBFT_EVIEW;
        goto out;
    }
    if (nv->view < r->view || (nv->view == r->view && !r->in_view_change)) {
        rc = nv->view == r->view ? PBFT_EDUP : PBFT_ESTALE;
        goto out;
    }
    if (nv->n_view_changes < r->quorum || nv->n_view_changes > r->cfg.n ||
        nv->n_reproposals > r->window) {
        rc = PBFT_ECERT;
        goto out;
    }
    rc = verify_env(r, m);
    if (rc != PBFT_OK) goto out;
    uint64_t seen = 0;
    for (size_t i = 0; i < nv->n_view_changes; i++) {
        ProtobufCBinaryData b = nv->view_changes[i];
        rc = decode_vc(b.data, b.len, &envs[nb], &bodies[nb]);
        nb++;
        if (rc != PBFT_OK) {
            rc = PBFT_ECERT;
            goto out;
        }
        uint32_t j = envs[nb - 1]->sender;
        if (j >= r->cfg.n || (seen >> j) & 1 || bodies[nb - 1]->new_view != nv->view) {
            rc = PBFT_ECERT;
            goto out;
        }
        seen |= 1ull << j;
        /* A VIEW-CHANGE this replica already verified, byte for byte, need not be re-checked. */
        if (r->vc_msg[j] && r->vc_len[j] == b.len && memcmp(r->vc_msg[j], b.data, b.len) == 0)
            continue;
        if (verify_env(r, envs[nb - 1]) != PBFT_OK ||
            check_view_change(r, bodies[nb - 1]) != PBFT_OK) {
            rc = PBFT_ECERT;
            goto out;
        }
    }
    for (size_t i = 0; i < nb; i++) absorb_commit(r, bodies[i]);
    pbft__plan plan;
    plan_new_view(r, bodies, nb, &plan);
    if (plan.n != nv->n_reproposals) {
        rc = PBFT_ECERT;
        goto out;
    }
    uint8_t sigs[PBFT_LOG_MAX][64];
    for (uint32_t i = 0; i < plan.n; i++) {
        const Tem__V1__PbftReproposal *e = nv->reproposals[i];
        if (e->height != plan.e[i].height || !pb_is_hash(e->block_hash) ||
            !hash_eq(e->block_hash.data, plan.e[i].hash) || e->sig.len != 64) {
            rc = PBFT_ECERT;
            goto out;
        }
        uint8_t d[32];
        pbft_prepare_digest(r->cfg.genesis_hash, nv->view, e->height, e->block_hash.data, d);
        if (pbft__verify(r, m->sender, d, e->sig.data) != 0) {
            rc = PBFT_ECERT;
            goto out;
        }
        memcpy(sigs[i], e->sig.data, 64);
    }
    rc = install_view(r, nv->view, &plan, sigs, out);
    if (rc == PBFT_OK) rc = advance(r, out);
out:
    for (size_t i = 0; i < nb; i++) free_vc(envs[i], bodies[i]);
    tem__v1__pbft_new_view__free_unpacked(nv, &ledger_pb_allocator);
    return rc;
}

static int on_message(pbft_replica *r, const pbft_event *ev, pbft_actions *out) {
    if (!ev->data || ev->len == 0 || ev->len > PBFT_MSG_BYTES_MAX) return PBFT_EDECODE;
    Tem__V1__PbftMessage *m = tem__v1__pbft_message__unpack(&ledger_pb_allocator, ev->len, ev->data);
    if (!m) return PBFT_EDECODE;
    int rc;
    if (m->sender >= r->cfg.n) {
        rc = PBFT_ESENDER;
        goto out;
    }
    if (m->sig.len != 64) {
        rc = PBFT_EDECODE;
        goto out;
    }
    if (m->sender == r->cfg.self) {
        rc = PBFT_EDUP; /* an echo of our own message (or a twin's) */
        goto out;
    }
    switch (m->kind_case) {
    case TEM__V1__PBFT_MESSAGE__KIND_PRE_PREPARE:
        rc = m->pre_prepare ? on_pre_prepare(r, m, out) : PBFT_EDECODE;
        break;
    case TEM__V1__PBFT_MESSAGE__KIND_PREPARE:
        rc = m->prepare ? on_vote(r, m, m->prepare->view, m->prepare->height,
                                  m->prepare->block_hash, false, out)
                        : PBFT_EDECODE;
        break;
    case TEM__V1__PBFT_MESSAGE__KIND_COMMIT:
        rc = m->commit ? on_vote(r, m, m->commit->view, m->commit->height,
                                 m->commit->block_hash, true, out)
                       : PBFT_EDECODE;
        break;
    case TEM__V1__PBFT_MESSAGE__KIND_CHECKPOINT:
        rc = m->checkpoint ? on_checkpoint(r, m, out) : PBFT_EDECODE;
        break;
    case TEM__V1__PBFT_MESSAGE__KIND_VIEW_CHANGE:
        rc = on_view_change(r, m, ev->data, ev->len, out);
        break;
    case TEM__V1__PBFT_MESSAGE__KIND_NEW_VIEW:
        rc = on_new_view(r, m, out);
        break;
    default:
        rc = PBFT_EDECODE;
        break;
    }
out:
    tem__v1__pbft_message__free_unpacked(m, &ledger_pb_allocator);
    return rc;
}

/* ================================================================== node events */

static int on_timer(pbft_replica *r, const pbft_event *ev, pbft_actions *out) {
    if (ev->timer == PBFT_TIMER_VIEW) {
        if (ev->timer_seq != r->view_timer_seq || r->view_timer_seq == 0) return PBFT_ESTALE;
        r->view_timer_seq = 0;
        if (r->in_view_change) {
            uint32_t have = 0;
            for (uint32_t j = 0; j < r->cfg.n; j++)
                if (r->vc_msg[j] && r->vc_view[j] >= r->view) have++;
            if (have < r->quorum && r->vc_msg[r->cfg.self]) {
                /* Fewer than 2f+1 replicas have reached this view yet: moving on alone would let
                 * this replica race ahead of the others for good (Castro & Liskov 4.5.2).
                 * Re-send the VIEW-CHANGE, which may have been lost, and keep waiting. A
                 * replica already asking for a later view has passed through this one. */
                pbft_action *a = act_push(out, PBFT_ACT_BROADCAST);
                a->to = PBFT_TO_ALL;
                a->msg = tem_malloc(r->vc_len[r->cfg.self]);
                if (!a->msg) {
                    out->n--;
                    return PBFT_ENOMEM;
                }
                memcpy(a->msg, r->vc_msg[r->cfg.self], r->vc_len[r->cfg.self]);
                a->msg_len = r->vc_len[r->cfg.self];
                set_timer(r, out, PBFT_TIMER_VIEW, view_timeout(r));
                maybe_fetch(r, out, true);
                return PBFT_OK;
            }
        }
        /* The others deliver in this view and this replica is the slow one (f+1 of them signed
         * heights above its next, or a checkpoint or the view floor is above it): the primary
         * is not at fault. A view change of its own would leave it alone in a view the others
         * do not enter, out of the normal case until their next view change, which costs the
         * cluster its one allowed fault (an overloaded validator falling behind did this,
         * docs/performance.md "Overload runs that collapse"). It fetches instead and looks
         * again after a timeout; if the cluster stops, it stops being behind once it has what
         * the others delivered, and the next timeout starts the view change. */
        if (!r->in_view_change && is_behind(r) != BEHIND_NO) {
            set_timer(r, out, PBFT_TIMER_VIEW, view_timeout(r));
            maybe_fetch(r, out, true);
            return PBFT_OK;
        }
        /* No progress in this view (or no NEW-VIEW for it): try the next primary, waiting
         * longer each time until a block is delivered again. */
        int rc = start_view_change(r, r->view + 1, out);
        if (rc != PBFT_OK) return rc;
        maybe_fetch(r, out, true);
        return PBFT_OK;
    }
    if (ev->timer == PBFT_TIMER_FETCH) {
        if (ev->timer_seq != r->fetch_timer_seq || r->fetch_timer_seq == 0) return PBFT_ESTALE;
        r->fetch_timer_seq = 0;
        maybe_fetch(r, out, true);
        return PBFT_OK;
    }
    return PBFT_EINVAL;
}

static int on_proposal(pbft_replica *r, const pbft_event *ev, pbft_actions *out) {
    if (!ev->data || ev->len > PBFT_BLOCK_BYTES_MAX) return PBFT_EINVAL;
    if (r->in_view_change || pbft_primary(r->view, r->cfg.n) != r->cfg.self ||
        !r->proposal_requested || ev->height != r->delivered + 1)
        return PBFT_ESTALE;
    pbft__slot *s = slot_at(r, ev->height);
    if (!s || (s->has_pp && s->pp_view == r->view) ||
        (s->my_prepare.set && s->my_prepare.view == r->view))
        return PBFT_ESTALE;
    uint8_t h[32];
    if (r->cfg.hash(r->cfg.ctx, ev->data, ev->len, h) != 0) return PBFT_EHASH;
    pbft__block *b;
    int rc = block_add(s, h, ev->data, ev->len, &b);
    if (rc != PBFT_OK) return rc;
    b->valid = PBFT__VAL_OK; /* the node built it on its own state */
    r->proposal_requested = false;
    s->has_pp = true;
    s->pp_view = r->view;
    hash_copy(s->pp_hash, h);
    uint8_t d[32];
    pbft_prepare_digest(r->cfg.genesis_hash, r->view, s->height, h, d);
    rc = record_own_vote(r, d, h, s->prepares, &s->my_prepare, out);
    if (rc != PBFT_OK) return rc;
    Tem__V1__PbftMessage m = TEM__V1__PBFT_MESSAGE__INIT;
    Tem__V1__PbftPrePrepare p = TEM__V1__PBFT_PRE_PREPARE__INIT;
    p.view = r->view;
    p.height = s->height;
    p.block_hash.data = h;
    p.block_hash.len = 32;
    p.block.data = (uint8_t *)ev->data;
    p.block.len = ev->len;
    m.kind_case = TEM__V1__PBFT_MESSAGE__KIND_PRE_PREPARE;
    m.pre_prepare = &p;
    rc = emit_msg(r, out, PBFT_TO_ALL, &m);
    if (rc != PBFT_OK) return rc;
    return advance(r, out);
}

static int on_validated(pbft_replica *r, const pbft_event *ev, pbft_actions *out) {
    pbft__slot *s = slot_find(r, ev->height);
    if (!s) return PBFT_ESTALE;
    pbft__block *b = block_find(s, ev->block_hash);
    if (!b || b->valid != PBFT__VAL_REQUESTED) return PBFT_ESTALE;
    b->valid = ev->ok ? PBFT__VAL_OK : PBFT__VAL_BAD;
    if (!ev->ok && !r->in_view_change && s->has_pp && s->pp_view == r->view &&
        hash_eq(s->pp_hash, b->hash)) {
        /* The primary proposed a block that does not apply: it is faulty, move on at once. */
        return start_view_change(r, r->view + 1, out);
    }
    return advance(r, out);
}

static int on_fetched(pbft_replica *r, const pbft_event *ev, pbft_actions *out) {
    if (!ev->data || ev->len > PBFT_BLOCK_BYTES_MAX || !ev->cert) return PBFT_EINVAL;
    if (ev->height <= r->delivered) return PBFT_ESTALE;
    if (ev->height > r->delivered + 1 && !slot_find(r, ev->height) &&
        (ev->height <= r->low || ev->height > r->low + r->window))
        return PBFT_EWATERMARK;
    uint8_t h[32];
    if (r->cfg.hash(r->cfg.ctx, ev->data, ev->len, h) != 0) return PBFT_EHASH;
    uint64_t view = 0;
    pbft__sigset sigs = {0};
    Tem__V1__CommitCertificate *c =
        tem__v1__commit_certificate__unpack(&ledger_pb_allocator, ev->cert_len, ev->cert);
    if (!c) return PBFT_EDECODE;
    int rc = PBFT_ECERT;
    if (c->height == ev->height && pb_is_hash(c->block_hash) && hash_eq(c->block_hash.data, h) &&
        pbft__sigset_from_pb(r, c->sigs, c->n_sigs, &sigs) == PBFT_OK) {
        view = c->view;
        rc = PBFT_OK;
    }
    tem__v1__commit_certificate__free_unpacked(c, &ledger_pb_allocator);
    if (r->cfg.planted_bug == PBFT_BUG_FETCH_SKIPS_CERT_CHECK) {
        if (rc != PBFT_OK) {
            /* The buggy replica takes the block on the fetch peer's word. */
            view = 0;
            sigs.n = 0;
            rc = PBFT_OK;
        }
    } else {
        if (rc != PBFT_OK) return rc;
        rc = pbft_cert_check(r, ev->cert, ev->cert_len, ev->height, h, NULL);
        if (rc != PBFT_OK) return rc;
    }
    pbft__slot *s = slot_at(r, ev->height);
    if (!s) {
        /* Below the low watermark (a stable checkpoint this replica has not reached yet): the
         * next block is delivered straight from the fetch, later ones wait for their turn. */
        if (ev->height != r->delivered + 1) return PBFT_EWATERMARK;
        rc = deliver_block(r, ev->height, view, h, ev->data, ev->len, &sigs, out);
        if (rc != PBFT_OK) return rc;
        return advance(r, out);
    }
    if (s->committed && !hash_eq(s->c_hash, h)) return PBFT_ECONFLICT;
    rc = block_add(s, h, ev->data, ev->len, NULL);
    if (rc != PBFT_OK) return rc;
    if (!s->committed) {
        s->committed = true;
        s->c_view = view;
        hash_copy(s->c_hash, h);
        s->c_sigs = sigs;
    }
    return advance(r, out);
}

int pbft_replica_step(pbft_replica *r, const pbft_event *ev, pbft_actions *out) {
    TEM_ASSERT(r->started);
    TEM_ASSERT(r->slots != NULL);
    switch (ev->kind) {
    case PBFT_EV_MESSAGE:
        return on_message(r, ev, out);
    case PBFT_EV_TIMER:
        return on_timer(r, ev, out);
    case PBFT_EV_PROPOSAL:
        return on_proposal(r, ev, out);
    case PBFT_EV_VALIDATED:
        return on_validated(r, ev, out);
    case PBFT_EV_BLOCK_FETCHED:
        return on_fetched(r, ev, out);
    default:
        return PBFT_EINVAL;
    }
}
