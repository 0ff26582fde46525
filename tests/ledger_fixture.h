/* ledger_fixture.h: helpers the ledger tests and benchmarks share: a genesis built in memory,
 * deterministic meter keys, signed txs, and a minimal executor (money transfers between keys)
 * that exercises the store without the market contracts. */
#ifndef LEDGER_FIXTURE_H
#define LEDGER_FIXTURE_H

#include "ledger/ledger.h"

#include <sodium.h>

/* Deterministic secp256k1 key number i (i >= 1): secret = SHA-256("tem-test-key" || i). */
static inline void fx_key(uint32_t i, uint8_t sec[32], uint8_t pub[33]) {
    uint8_t buf[16] = "tem-test-key";
    tem_put_u32le(buf + 12, i);
    ledger_sha256(sec, buf, sizeof buf);
    TEM_ASSERT(ledger_secp_pubkey(sec, pub) == LEDGER_OK);
}

/* Deterministic Ed25519 validator key i. */
static inline void fx_vkey(uint32_t i, uint8_t sec[64], uint8_t pub[32]) {
    uint8_t buf[16] = "tem-test-val", seed[32];
    tem_put_u32le(buf + 12, i);
    ledger_sha256(seed, buf, sizeof buf);
    memcpy(sec, seed, 32);
    TEM_ASSERT(crypto_sign_seed_keypair(pub, sec, seed) == 0);
}

/* A genesis with n validators and one admin (key 1) as JSON text (caller frees). */
static inline char *fx_genesis_json(uint32_t n_validators, const char *extra) {
    size_t cap = 8192 + 256 * n_validators;
    char *s = tem_malloc(cap);
    TEM_ASSERT(s != NULL);
    size_t k = (size_t)snprintf(s, cap, "{\"chain_id\":\"tem-test\",\"genesis_time_ms\":1700000000000,\"validators\":[");
    for (uint32_t i = 0; i < n_validators; i++) {
        uint8_t sec[64], pub[32];
        char h[65];
        fx_vkey(i, sec, pub);
        tem_hex(h, pub, 32);
        k += (size_t)snprintf(s + k, cap - k, "%s{\"name\":\"v%u\",\"pubkey\":\"%s\",\"address\":\"127.0.0.1:%u\"}",
                              i ? "," : "", i, h, 7000 + i);
    }
    uint8_t asec[32], apub[33];
    char ah[67];
    fx_key(1, asec, apub);
    tem_hex(ah, apub, 33);
    k += (size_t)snprintf(s + k, cap - k,
                          "],\"admins\":[\"%s\"],\"tariffs\":[{\"start_minute\":0,\"retail_uunit_per_kwh\":300000,"
                          "\"feed_in_uunit_per_kwh\":80000}]%s%s}\n",
                          ah, extra ? "," : "", extra ? extra : "");
    TEM_ASSERT(k < cap);
    return s;
}

static inline void fx_genesis(ledger_genesis *g, uint32_t n_validators) {
    char *j = fx_genesis_json(n_validators, NULL);
    char err[256];
    int rc = ledger_genesis_parse(j, strlen(j), g, err, sizeof err);
    if (rc != LEDGER_OK) fprintf(stderr, "fixture genesis: %s\n", err);
    TEM_ASSERT(rc == LEDGER_OK);
    tem_free(j);
}

/* A signed transfer from key `from` to key `to`. */
static inline uint8_t *fx_transfer(const char *chain, uint32_t from, uint32_t to, uint64_t nonce,
                                   uint64_t amount, size_t *len) {
    uint8_t sec[32], pub[33], tsec[32], tpub[33];
    fx_key(from, sec, pub);
    fx_key(to, tsec, tpub);
    Tem__V1__TxBody b = TEM__V1__TX_BODY__INIT;
    Tem__V1__Transfer t = TEM__V1__TRANSFER__INIT;
    t.to = (ProtobufCBinaryData){33, tpub};
    t.amount = amount;
    b.chain_id = (char *)chain;
    b.nonce = nonce;
    b.kind_case = TEM__V1__TX_BODY__KIND_TRANSFER;
    b.transfer = &t;
    uint8_t *out;
    TEM_ASSERT(ledger_tx_build(&b, sec, &out, len, NULL) == LEDGER_OK);
    return out;
}

/* ---- the minimal executor: 'b' || pubkey -> i64le balance. Transfers move money, refusing
 * (code 1) when the sender lacks it; every key starts with 1,000,000. */
static inline int64_t fx_balance(ledger_state *st, const uint8_t pub[33]) {
    uint8_t k[34];
    k[0] = 'b';
    memcpy(k + 1, pub, 33);
    const uint8_t *v;
    size_t vl;
    if (ledger_state_get(st, k, 34, &v, &vl) != LEDGER_OK) return 1000000;
    return (int64_t)tem_get_u64le(v);
}
static inline int fx_set_balance(ledger_state *st, const uint8_t pub[33], int64_t bal) {
    uint8_t k[34], v[8];
    k[0] = 'b';
    memcpy(k + 1, pub, 33);
    tem_put_u64le(v, (uint64_t)bal);
    return ledger_state_put(st, k, 34, v, 8);
}
static inline int fx_exec_tx(void *ctx, ledger_state *st, const ledger_block_ctx *b, const ledger_tx *tx,
                             Tem__V1__Receipt *rc) {
    (void)ctx;
    (void)b;
    if (tx->body->kind_case != TEM__V1__TX_BODY__KIND_TRANSFER) {
        rc->code = 2;
        rc->reason = (char *)"unsupported";
        return LEDGER_OK;
    }
    const uint8_t *from = tx->body->signer.data, *to = tx->body->transfer->to.data;
    int64_t fb = fx_balance(st, from), amt = (int64_t)tx->body->transfer->amount;
    if (amt < 0 || fb < amt) {
        rc->code = 1;
        rc->reason = (char *)"insufficient money";
        return LEDGER_OK;
    }
    int r = fx_set_balance(st, from, fb - amt);
    if (r == LEDGER_OK) r = fx_set_balance(st, to, fx_balance(st, to) + amt);
    return r;
}
static const ledger_executor FX_EXEC = {.ctx = NULL, .exec_tx = fx_exec_tx};

/* A block of n transfers among keys 2..senders+1 (nonces from s's state), built on s's tip by
 * validator 0; *blen its length. tem_malloc'd. */
static inline uint8_t *fx_build_transfers(ledger_store *s, uint32_t n, uint32_t senders, uint64_t time_ms,
                                          size_t *blen) {
    const ledger_genesis *g = ledger_store_genesis(s);
    uint8_t **txs = tem_calloc(n ? n : 1, sizeof *txs);
    size_t *lens = tem_calloc(n ? n : 1, sizeof *lens);
    uint64_t *nonces = tem_calloc(senders, sizeof *nonces);
    TEM_ASSERT(txs && lens && nonces);
    for (uint32_t i = 0; i < senders; i++) {
        uint8_t sec[32], pub[33];
        fx_key(2 + i, sec, pub);
        nonces[i] = ledger_state_nonce(ledger_store_state(s), pub);
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t f = i % senders;
        txs[i] = fx_transfer(g->chain_id, 2 + f, 2 + (f + 1) % senders, nonces[f]++, 1 + i % 7, &lens[i]);
    }
    uint8_t prop[64], ppub[32], *blk = NULL;
    fx_vkey(0, prop, ppub);
    if (ledger_block_build(s, (const uint8_t *const *)txs, lens, n, time_ms, ppub, &blk, blen) != LEDGER_OK) blk = NULL;
    for (uint32_t i = 0; i < n; i++) tem_free(txs[i]);
    tem_free(txs);
    tem_free(lens);
    tem_free(nonces);
    return blk;
}

/* Builds the next block of `n` transfers (key 2+i%senders -> key 2+(i+1)%senders) with nonces
 * taken from the store's state, applies it without a certificate. Returns the apply code. */
static inline int fx_apply_transfers(ledger_store *s, uint32_t n, uint32_t senders, uint64_t time_ms,
                                     ledger_apply_info *info, unsigned flags) {
    size_t blen;
    uint8_t *blk = fx_build_transfers(s, n, senders, time_ms, &blen);
    if (!blk) return n > ledger_store_genesis(s)->max_block_txs ? LEDGER_EINVAL : LEDGER_ENOMEM;
    int rc = ledger_store_apply(s, blk, blen, NULL, 0, &FX_EXEC, LEDGER_APPLY_NO_CERT | flags, info);
    tem_free(blk);
    return rc;
}

#endif
