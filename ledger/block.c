/* block.c: block hashing, the commit digest validators sign, and certificate verification
 * (docs/ledger.md, "Blocks" and "Certificates"). Hashes are over fixed binary encodings of the
 * fields, never over protobuf bytes, so any correct encoder gives the same hash. */
#include "ledger/ledger.h"

static_assert(LEDGER_VALIDATORS_MAX <= 64, "certificate check keeps a 64-bit seen-mask");
static const char BLOCK_TAG[] = "TEM/block/v1";
static const char COMMIT_TAG[] = "TEM/commit/v1";

int ledger_block_hash(const Tem__V1__BlockHeader *h, uint8_t out[LEDGER_HASH_BYTES]) {
    if (h->prev_hash.len != 32 || h->proposer.len != 32 || h->tx_root.len != 32 ||
        h->state_root.len != 32 || h->receipts_root.len != 32 || h->genesis_hash.len != 32)
        return LEDGER_EBLOCK;
    size_t cl = strlen(h->chain_id);
    if (cl > LEDGER_CHAIN_ID_MAX) return LEDGER_EBLOCK;
    uint8_t cl4[4], height[8], time[8];
    tem_put_u32le(cl4, (uint32_t)cl);
    tem_put_u64le(height, h->height);
    tem_put_u64le(time, h->time_ms);
    const void *parts[] = {BLOCK_TAG, cl4, h->chain_id, height, h->prev_hash.data, time,
                           h->proposer.data, h->tx_root.data, h->state_root.data,
                           h->receipts_root.data, h->genesis_hash.data};
    size_t lens[] = {sizeof BLOCK_TAG - 1, 4, cl, 8, 32, 8, 32, 32, 32, 32, 32};
    ledger_sha256_parts(out, sizeof lens / sizeof lens[0], parts, lens);
    return LEDGER_OK;
}

void ledger_commit_digest(const uint8_t genesis_hash[32], uint64_t view, uint64_t height,
                          const uint8_t block_hash[32], uint8_t out[LEDGER_HASH_BYTES]) {
    uint8_t v[8], h[8];
    tem_put_u64le(v, view);
    tem_put_u64le(h, height);
    const void *parts[] = {COMMIT_TAG, genesis_hash, v, h, block_hash};
    size_t lens[] = {sizeof COMMIT_TAG - 1, 32, 8, 8, 32};
    ledger_sha256_parts(out, 5, parts, lens);
}

int ledger_cert_verify(const ledger_genesis *g, const uint8_t *cert, size_t len, uint64_t height,
                       const uint8_t block_hash[32]) {
    Tem__V1__CommitCertificate *c = tem__v1__commit_certificate__unpack(&ledger_pb_allocator, len, cert);
    if (!c) return LEDGER_EDECODE;
    int rc = LEDGER_ECERT;
    if (c->height != height || c->block_hash.len != 32 || memcmp(c->block_hash.data, block_hash, 32) != 0) goto out;
    if (c->n_sigs > LEDGER_VALIDATORS_MAX) goto out;
    uint8_t digest[32];
    ledger_commit_digest(g->hash, c->view, c->height, block_hash, digest);
    uint64_t seen = 0;
    uint32_t good = 0;
    for (size_t i = 0; i < c->n_sigs; i++) {
        Tem__V1__CommitSig *s = c->sigs[i];
        /* Each validator counts once: a certificate padded with copies of one signature must
         * not reach the quorum. */
        if (s->validator >= g->n_validators || (seen >> s->validator) & 1) goto out;
        if (s->sig.len != LEDGER_ED_SIG_BYTES) goto out;
        if (ledger_ed_verify(g->validators[s->validator].pubkey, digest, 32, s->sig.data) != 0) goto out;
        seen |= 1ull << s->validator;
        good++;
    }
    if (good >= ledger_genesis_quorum(g)) rc = LEDGER_OK;
out:
    tem__v1__commit_certificate__free_unpacked(c, &ledger_pb_allocator);
    return rc;
}
