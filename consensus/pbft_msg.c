/* pbft_msg.c: the consensus module's error names, planted-bug names, the domain-separated digests
 * every pBFT signature covers, signing and packing of PbftMessages, commit certificates, and the
 * configuration a genesis implies. */
#include "consensus/pbft.h"
#include "consensus/pbft_internal.h"

const char *pbft_strerror(int err) {
    switch (err) {
    case PBFT_OK:
        return "ok";
#define PBFT_X(name, val, msg)                                                                     \
    case PBFT_##name:                                                                              \
        return msg;
        PBFT_ERRNO_MAP(PBFT_X)
#undef PBFT_X
    default:
        return "unknown pbft error";
    }
}

static const char *const pbft__bug_names[] = {
#define PBFT_BUGX(id, name) name,
    PBFT_PLANTED_BUGS(PBFT_BUGX)
#undef PBFT_BUGX
};

const char *pbft_planted_bug_name(int bug) {
    if (bug < 0 || bug >= PBFT_BUG_COUNT) return NULL;
    return pbft__bug_names[bug];
}

int pbft_planted_bug_by_name(const char *name) {
    for (int i = 0; i < PBFT_BUG_COUNT; i++)
        if (strcmp(name, pbft__bug_names[i]) == 0) return i;
    return -1;
}

uint32_t pbft_primary(uint64_t view, uint32_t n) {
    TEM_ASSERT(n > 0);
    return (uint32_t)(view % n);
}

int pbft_config_from_genesis(pbft_config *cfg, const ledger_genesis *g) {
    if (g->n_validators < 4 || g->n_validators > PBFT_REPLICAS_MAX) return PBFT_EINVAL;
    if (g->checkpoint_interval == 0 || g->checkpoint_interval > PBFT_CHECKPOINT_INTERVAL_MAX)
        return PBFT_EINVAL;
    if (g->view_timeout_ms == 0) return PBFT_EINVAL;
    cfg->n = g->n_validators;
    for (uint32_t i = 0; i < g->n_validators; i++)
        memcpy(cfg->pubkeys[i], g->validators[i].pubkey, 32);
    memcpy(cfg->genesis_hash, g->hash, 32);
    cfg->checkpoint_interval = g->checkpoint_interval;
    cfg->view_timeout_ms = g->view_timeout_ms;
    return PBFT_OK;
}

/* ------------------------------------------------------------------ digests */
static const char PREPARE_TAG[] = "TEM/pbft/prepare/v1";
static const char CHECKPOINT_TAG[] = "TEM/pbft/checkpoint/v1";
static const char VIEW_CHANGE_TAG[] = "TEM/pbft/view-change/v1";
static const char NEW_VIEW_TAG[] = "TEM/pbft/new-view/v1";

void pbft_prepare_digest(const uint8_t genesis[32], uint64_t view, uint64_t height,
                         const uint8_t hash[32], uint8_t out[32]) {
    uint8_t v[8], h[8];
    tem_put_u64le(v, view);
    tem_put_u64le(h, height);
    const void *parts[] = {PREPARE_TAG, genesis, v, h, hash};
    size_t lens[] = {sizeof PREPARE_TAG - 1, 32, 8, 8, 32};
    ledger_sha256_parts(out, 5, parts, lens);
}

void pbft_checkpoint_digest(const uint8_t genesis[32], uint64_t height, const uint8_t hash[32],
                            uint8_t out[32]) {
    uint8_t h[8];
    tem_put_u64le(h, height);
    const void *parts[] = {CHECKPOINT_TAG, genesis, h, hash};
    size_t lens[] = {sizeof CHECKPOINT_TAG - 1, 32, 8, 32};
    ledger_sha256_parts(out, 4, parts, lens);
}

void pbft_body_digest(const uint8_t genesis[32], int kind_case, uint32_t sender,
                      const uint8_t *body, size_t len, uint8_t out[32]) {
    TEM_ASSERT(kind_case == TEM__V1__PBFT_MESSAGE__KIND_VIEW_CHANGE ||
               kind_case == TEM__V1__PBFT_MESSAGE__KIND_NEW_VIEW);
    const char *tag = kind_case == TEM__V1__PBFT_MESSAGE__KIND_VIEW_CHANGE ? VIEW_CHANGE_TAG
                                                                           : NEW_VIEW_TAG;
    uint8_t body_hash[32], s[4];
    ledger_sha256(body_hash, body, len);
    tem_put_u32le(s, sender);
    const void *parts[] = {tag, genesis, s, body_hash};
    size_t lens[] = {strlen(tag), 32, 4, 32};
    ledger_sha256_parts(out, 4, parts, lens);
}

static bool is_hash(ProtobufCBinaryData b) { return b.len == 32 && b.data != NULL; }

int pbft_msg_digest(const uint8_t genesis[32], const Tem__V1__PbftMessage *m, uint8_t out[32]) {
    switch (m->kind_case) {
    case TEM__V1__PBFT_MESSAGE__KIND_PRE_PREPARE: {
        const Tem__V1__PbftPrePrepare *p = m->pre_prepare;
        if (!p || !is_hash(p->block_hash)) return PBFT_EDECODE;
        pbft_prepare_digest(genesis, p->view, p->height, p->block_hash.data, out);
        return PBFT_OK;
    }
    case TEM__V1__PBFT_MESSAGE__KIND_PREPARE: {
        const Tem__V1__PbftPrepare *p = m->prepare;
        if (!p || !is_hash(p->block_hash)) return PBFT_EDECODE;
        pbft_prepare_digest(genesis, p->view, p->height, p->block_hash.data, out);
        return PBFT_OK;
    }
    case TEM__V1__PBFT_MESSAGE__KIND_COMMIT: {
        const Tem__V1__PbftCommit *c = m->commit;
        if (!c || !is_hash(c->block_hash)) return PBFT_EDECODE;
        ledger_commit_digest(genesis, c->view, c->height, c->block_hash.data, out);
        return PBFT_OK;
    }
    case TEM__V1__PBFT_MESSAGE__KIND_CHECKPOINT: {
        const Tem__V1__PbftCheckpoint *c = m->checkpoint;
        if (!c || !is_hash(c->block_hash)) return PBFT_EDECODE;
        pbft_checkpoint_digest(genesis, c->height, c->block_hash.data, out);
        return PBFT_OK;
    }
    case TEM__V1__PBFT_MESSAGE__KIND_VIEW_CHANGE:
        pbft_body_digest(genesis, m->kind_case, m->sender, m->view_change.data,
                         m->view_change.len, out);
        return PBFT_OK;
    case TEM__V1__PBFT_MESSAGE__KIND_NEW_VIEW:
        pbft_body_digest(genesis, m->kind_case, m->sender, m->new_view.data, m->new_view.len,
                         out);
        return PBFT_OK;
    default:
        return PBFT_EDECODE;
    }
}

int pbft_msg_sign_pack(const uint8_t genesis[32], const uint8_t sec[64], Tem__V1__PbftMessage *m,
                       uint8_t **out, size_t *out_len) {
    uint8_t digest[32], sig[64];
    int rc = pbft_msg_digest(genesis, m, digest);
    if (rc != PBFT_OK) return rc;
    ledger_ed_sign(sec, digest, 32, sig);
    m->sig.data = sig;
    m->sig.len = 64;
    size_t len = tem__v1__pbft_message__get_packed_size(m);
    uint8_t *buf = tem_malloc(len ? len : 1);
    if (!buf) {
        m->sig.data = NULL;
        m->sig.len = 0;
        return PBFT_ENOMEM;
    }
    size_t w = tem__v1__pbft_message__pack(m, buf);
    TEM_ASSERT(w == len);
    /* The signature lived on this stack frame: the caller's struct must not keep pointing at it. */
    m->sig.data = NULL;
    m->sig.len = 0;
    *out = buf;
    *out_len = len;
    return PBFT_OK;
}

/* ------------------------------------------------------------------ certificates */
int pbft_cert_pack(uint64_t view, uint64_t height, const uint8_t hash[32], const pbft__sigset *s,
                   uint8_t **out, size_t *out_len) {
    TEM_ASSERT(s->n <= PBFT_REPLICAS_MAX);
    Tem__V1__CommitCertificate c = TEM__V1__COMMIT_CERTIFICATE__INIT;
    Tem__V1__CommitSig sigs[PBFT_REPLICAS_MAX];
    Tem__V1__CommitSig *ptrs[PBFT_REPLICAS_MAX];
    /* Sorted by validator index, as the certificate format requires. */
    uint32_t order[PBFT_REPLICAS_MAX];
    pbft__sigset_order(s, order);
    for (uint32_t i = 0; i < s->n; i++) {
        tem__v1__commit_sig__init(&sigs[i]);
        sigs[i].validator = s->idx[order[i]];
        sigs[i].sig.data = (uint8_t *)s->sig[order[i]];
        sigs[i].sig.len = 64;
        ptrs[i] = &sigs[i];
    }
    c.view = view;
    c.height = height;
    c.block_hash.data = (uint8_t *)hash;
    c.block_hash.len = 32;
    c.n_sigs = s->n;
    c.sigs = ptrs;
    size_t len = tem__v1__commit_certificate__get_packed_size(&c);
    uint8_t *buf = tem_malloc(len ? len : 1);
    if (!buf) return PBFT_ENOMEM;
    size_t w = tem__v1__commit_certificate__pack(&c, buf);
    TEM_ASSERT(w == len);
    *out = buf;
    *out_len = len;
    return PBFT_OK;
}

int pbft_cert_check(const pbft_replica *r, const uint8_t *cert, size_t len, uint64_t height,
                    const uint8_t hash[32], uint64_t *view_out) {
    Tem__V1__CommitCertificate *c =
        tem__v1__commit_certificate__unpack(&ledger_pb_allocator, len, cert);
    if (!c) return PBFT_EDECODE;
    int rc = PBFT_ECERT;
    if (c->height != height || !is_hash(c->block_hash) ||
        memcmp(c->block_hash.data, hash, 32) != 0)
        goto out;
    pbft__sigset s;
    rc = pbft__sigset_from_pb(r, c->sigs, c->n_sigs, &s);
    if (rc != PBFT_OK) goto out;
    uint8_t digest[32];
    ledger_commit_digest(r->cfg.genesis_hash, c->view, height, hash, digest);
    rc = pbft__sigset_verify(r, &s, digest, r->quorum);
    if (rc == PBFT_OK && view_out) *view_out = c->view;
out:
    tem__v1__commit_certificate__free_unpacked(c, &ledger_pb_allocator);
    return rc;
}
