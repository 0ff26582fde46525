/* crypto.c: SHA-256, the binary Merkle tree and its proofs, secp256k1 (meters) and Ed25519
 * (validators) signatures, and key files. libsodium, libcrypto (SHA-256) and libsecp256k1 do
 * the cryptography; this file only fixes the encodings and turns their failures into ledger
 * error codes. */
#include "ledger/ledger.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#define OPENSSL_SUPPRESS_DEPRECATED /* SHA256_*: see ledger_sha256_parts */
#include <openssl/sha.h>
#include <pthread.h>
#include <secp256k1.h>
#include <sodium.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static_assert(LEDGER_HASH_BYTES == crypto_hash_sha256_BYTES, "sha256 size");
static_assert(LEDGER_ED_PUB_BYTES == crypto_sign_PUBLICKEYBYTES, "ed25519 pk size");
static_assert(LEDGER_ED_SEC_BYTES == crypto_sign_SECRETKEYBYTES, "ed25519 sk size");
static_assert(LEDGER_ED_SIG_BYTES == crypto_sign_BYTES, "ed25519 sig size");

/* libsodium must be initialised once before use; sodium_init is idempotent and thread-safe,
 * and it only fails when the system has no entropy source, which we cannot run without. */
static void crypto_init(void) {
    static int done;
    if (__atomic_load_n(&done, __ATOMIC_ACQUIRE)) return;
    TEM_ASSERT(sodium_init() >= 0);
    __atomic_store_n(&done, 1, __ATOMIC_RELEASE);
}

/* SHA-256 goes through OpenSSL's libcrypto (linked already, for H2O's TLS): it uses the CPU's
 * SHA extensions, libsodium's is portable C. For the 65-byte tree nodes that are most of a
 * validator's hashing that is 0.10 us a call against 0.37 (docs/performance.md, "SHA-256").
 * The SHA256_* functions, deprecated in OpenSSL 3 in favour of EVP, are used on purpose: EVP
 * allocates at every digest (one malloc per hash, some 20 per tx per node) and costs 0.13 us
 * even with a reused context; Debian 12's OpenSSL 3.0 has both. */
void ledger_sha256_parts(uint8_t out[LEDGER_HASH_BYTES], size_t n, const void *const *parts,
                         const size_t *lens) {
    SHA256_CTX c;
    TEM_ASSERT(SHA256_Init(&c) == 1);
    for (size_t i = 0; i < n; i++) TEM_ASSERT(SHA256_Update(&c, parts[i], lens[i]) == 1);
    TEM_ASSERT(SHA256_Final(out, &c) == 1);
}

void ledger_sha256(uint8_t out[LEDGER_HASH_BYTES], const void *data, size_t len) {
    const void *parts[1] = {data};
    ledger_sha256_parts(out, 1, parts, &len);
}

/* Tests: the libsodium digest, the reference the libcrypto path is checked against. */
void ledger__sha256_sodium(uint8_t out[LEDGER_HASH_BYTES], const void *data, size_t len) {
    crypto_init();
    TEM_ASSERT(crypto_hash_sha256(out, data, len) == 0);
}

/* ------------------------------------------------------------------ Merkle tree */
static void merkle_leaf(uint8_t out[32], const uint8_t leaf[32]) {
    uint8_t buf[33];
    buf[0] = 0x00;
    memcpy(buf + 1, leaf, 32);
    ledger_sha256(out, buf, sizeof buf);
}
static void merkle_node(uint8_t out[32], const uint8_t l[32], const uint8_t r[32]) {
    uint8_t buf[65];
    buf[0] = 0x01;
    memcpy(buf + 1, l, 32);
    memcpy(buf + 33, r, 32);
    ledger_sha256(out, buf, sizeof buf);
}

int ledger_merkle_root(uint8_t out[LEDGER_HASH_BYTES], const uint8_t (*leaves)[32], size_t n) {
    if (n == 0) {
        static const char empty[] = "TEM/merkle/empty";
        ledger_sha256(out, empty, sizeof empty - 1);
        return LEDGER_OK;
    }
    uint8_t(*lvl)[32] = tem_malloc(n * 32);
    if (!lvl) return LEDGER_ENOMEM;
    for (size_t i = 0; i < n; i++) merkle_leaf(lvl[i], leaves[i]);
    size_t m = n;
    while (m > 1) {
        size_t k = 0;
        for (size_t i = 0; i + 1 < m; i += 2) merkle_node(lvl[k++], lvl[i], lvl[i + 1]);
        /* An odd last node is carried up as it is: duplicating it (Bitcoin's rule) would let
         * two different leaf lists share a root. */
        if (m % 2) memmove(lvl[k++], lvl[m - 1], 32);
        m = k;
    }
    memcpy(out, lvl[0], 32);
    tem_free(lvl);
    return LEDGER_OK;
}

int ledger_merkle_prove(const uint8_t (*leaves)[32], size_t n, size_t index, ledger_merkle_proof *p) {
    if (index >= n) return LEDGER_EINVAL;
    uint8_t(*lvl)[32] = tem_malloc(n * 32);
    if (!lvl) return LEDGER_ENOMEM;
    memset(p, 0, sizeof *p);
    p->index = index;
    p->count = n;
    for (size_t i = 0; i < n; i++) merkle_leaf(lvl[i], leaves[i]);
    size_t m = n, idx = index;
    while (m > 1) {
        size_t sib = idx ^ 1;
        if (sib < m) {
            TEM_ASSERT(p->depth < LEDGER_PROOF_DEPTH_MAX);
            memcpy(p->sibling[p->depth], lvl[sib], 32);
            p->is_right[p->depth] = (uint8_t)(sib > idx);
            p->depth++;
        }
        size_t k = 0;
        for (size_t i = 0; i + 1 < m; i += 2) merkle_node(lvl[k++], lvl[i], lvl[i + 1]);
        if (m % 2) memmove(lvl[k++], lvl[m - 1], 32);
        m = k;
        idx /= 2;
    }
    tem_free(lvl);
    return LEDGER_OK;
}

int ledger_merkle_verify(const uint8_t root[LEDGER_HASH_BYTES], const uint8_t leaf[32],
                         const ledger_merkle_proof *p) {
    if (p->count == 0 || p->index >= p->count || p->depth > LEDGER_PROOF_DEPTH_MAX) return -1;
    uint8_t h[32];
    merkle_leaf(h, leaf);
    /* Replay the tree shape from (index, count) so a proof cannot claim a sibling where the
     * real tree carried the node up, or skip one where it had a sibling. */
    uint64_t m = p->count, idx = p->index;
    uint32_t d = 0;
    while (m > 1) {
        uint64_t sib = idx ^ 1;
        if (sib < m) {
            if (d >= p->depth) return -1;
            if (p->is_right[d] != (sib > idx)) return -1;
            if (p->is_right[d]) merkle_node(h, h, p->sibling[d]);
            else merkle_node(h, p->sibling[d], h);
            d++;
        }
        m = (m + 1) / 2;
        idx /= 2;
    }
    if (d != p->depth) return -1;
    return sodium_memcmp(h, root, 32) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ secp256k1 */
/* One verify/sign context, created on first use and never modified after: libsecp256k1
 * documents a context as safe to share across threads for everything but randomize/destroy. */
static secp256k1_context *secp_ctx(void) {
    static secp256k1_context *ctx;
    secp256k1_context *c = __atomic_load_n(&ctx, __ATOMIC_ACQUIRE);
    if (c) return c;
    c = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
    TEM_ASSERT(c != NULL);
    secp256k1_context *expected = NULL;
    if (!__atomic_compare_exchange_n(&ctx, &expected, c, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        secp256k1_context_destroy(c);
        return expected;
    }
    return c;
}

int ledger_secp_pubkey(const uint8_t sec[LEDGER_SECP_SEC_BYTES], uint8_t pub[LEDGER_SECP_PUB_BYTES]) {
    secp256k1_context *ctx = secp_ctx();
    secp256k1_pubkey pk;
    if (!secp256k1_ec_seckey_verify(ctx, sec)) return LEDGER_EINVAL;
    if (!secp256k1_ec_pubkey_create(ctx, &pk, sec)) return LEDGER_EINVAL;
    size_t len = LEDGER_SECP_PUB_BYTES;
    if (!secp256k1_ec_pubkey_serialize(ctx, pub, &len, &pk, SECP256K1_EC_COMPRESSED)) return LEDGER_EINVAL;
    TEM_ASSERT(len == LEDGER_SECP_PUB_BYTES);
    return LEDGER_OK;
}

int ledger_secp_keygen(uint8_t sec[LEDGER_SECP_SEC_BYTES], uint8_t pub[LEDGER_SECP_PUB_BYTES]) {
    crypto_init();
    for (int tries = 0; tries < 64; tries++) {
        randombytes_buf(sec, LEDGER_SECP_SEC_BYTES);
        if (ledger_secp_pubkey(sec, pub) == LEDGER_OK) return LEDGER_OK;
    }
    return LEDGER_EINVAL;
}

bool ledger_secp_pubkey_valid(const uint8_t pub[LEDGER_SECP_PUB_BYTES]) {
    secp256k1_pubkey pk;
    if (pub[0] != 0x02 && pub[0] != 0x03) return false;
    return secp256k1_ec_pubkey_parse(secp_ctx(), &pk, pub, LEDGER_SECP_PUB_BYTES) == 1;
}

int ledger_secp_sign(const uint8_t sec[LEDGER_SECP_SEC_BYTES], const uint8_t digest[32],
                     uint8_t sig[LEDGER_SECP_SIG_BYTES]) {
    secp256k1_context *ctx = secp_ctx();
    secp256k1_ecdsa_signature s;
    /* NULL nonce function = RFC 6979: deterministic, so the same body always gets the same
     * signature and no randomness is needed at signing time. */
    if (!secp256k1_ecdsa_sign(ctx, &s, digest, sec, NULL, NULL)) return LEDGER_EINVAL;
    if (!secp256k1_ecdsa_signature_serialize_compact(ctx, sig, &s)) return LEDGER_EINVAL;
    return LEDGER_OK;
}

/* Parsed keys of recent signers. Parsing a compressed key takes a square root, 4.6 us, about a
 * seventh of what a verification costs inside a validator, and the same meters and aggregators
 * sign again and again (docs/performance.md, "Parsed signer keys"). Direct-mapped on bytes of
 * the key's x; a slot holds the whole 33-byte key beside its parse, and a hit needs all 33 bytes
 * equal, so a lookup returns the parse of exactly the key asked for or nothing. A key that
 * does not parse is never stored. A colliding key only evicts: its owner pays one parse more.
 * Locks in stripes, since the verify workers of the thread pool share it. 65,536 slots (6.5 MB)
 * hold every signer of a busy chain; at a million meters a slot is mostly a miss, which costs a
 * lock and a compare. */
#define PK_CACHE_SLOTS 65536u
#define PK_CACHE_STRIPES 64u
typedef struct {
    uint8_t key[LEDGER_SECP_PUB_BYTES];
    bool used;
    secp256k1_pubkey pk;
} pk_slot;
static pk_slot *pk_cache; /* NULL when its allocation failed: every key is parsed */
static pthread_mutex_t pk_mu[PK_CACHE_STRIPES];
static pthread_once_t pk_once = PTHREAD_ONCE_INIT;
static uint64_t pk_hits, pk_misses;

static void pk_init(void) {
    for (unsigned i = 0; i < PK_CACHE_STRIPES; i++) TEM_ASSERT(pthread_mutex_init(&pk_mu[i], NULL) == 0);
    /* Process-wide and never freed; not tem_calloc, whose test hook would disable it for good. */
    pk_cache = calloc(PK_CACHE_SLOTS, sizeof *pk_cache);
}

static bool pk_parse(secp256k1_context *ctx, const uint8_t pub[LEDGER_SECP_PUB_BYTES], secp256k1_pubkey *out) {
    TEM_ASSERT(pthread_once(&pk_once, pk_init) == 0);
    if (pk_cache == NULL) return secp256k1_ec_pubkey_parse(ctx, out, pub, LEDGER_SECP_PUB_BYTES) == 1;
    uint32_t i = (uint32_t)(tem_get_u64le(pub + 1) % PK_CACHE_SLOTS);
    pk_slot *e = &pk_cache[i];
    pthread_mutex_t *mu = &pk_mu[i % PK_CACHE_STRIPES];
    TEM_ASSERT(pthread_mutex_lock(mu) == 0);
    bool hit = e->used && memcmp(e->key, pub, LEDGER_SECP_PUB_BYTES) == 0;
    if (hit) *out = e->pk;
    TEM_ASSERT(pthread_mutex_unlock(mu) == 0);
    if (hit) {
        __atomic_add_fetch(&pk_hits, 1, __ATOMIC_RELAXED);
        return true;
    }
    __atomic_add_fetch(&pk_misses, 1, __ATOMIC_RELAXED);
    if (!secp256k1_ec_pubkey_parse(ctx, out, pub, LEDGER_SECP_PUB_BYTES)) return false;
    TEM_ASSERT(pthread_mutex_lock(mu) == 0);
    memcpy(e->key, pub, LEDGER_SECP_PUB_BYTES);
    e->pk = *out;
    e->used = true;
    TEM_ASSERT(pthread_mutex_unlock(mu) == 0);
    return true;
}

void ledger_secp_key_cache_stats(uint64_t *hits, uint64_t *misses) {
    *hits = __atomic_load_n(&pk_hits, __ATOMIC_RELAXED);
    *misses = __atomic_load_n(&pk_misses, __ATOMIC_RELAXED);
}

int ledger_secp_verify(const uint8_t pub[LEDGER_SECP_PUB_BYTES], const uint8_t digest[32],
                       const uint8_t sig[LEDGER_SECP_SIG_BYTES]) {
    secp256k1_context *ctx = secp_ctx();
    secp256k1_pubkey pk;
    secp256k1_ecdsa_signature s;
    if (pub[0] != 0x02 && pub[0] != 0x03) return LEDGER_EPUBKEY;
    if (!pk_parse(ctx, pub, &pk)) return LEDGER_EPUBKEY;
    if (!secp256k1_ecdsa_signature_parse_compact(ctx, &s, sig)) return LEDGER_ESIGMALFORMED;
    /* normalize returns 1 when s was in the upper half: a malleated copy of a valid signature.
     * Refusing it (rather than normalising) keeps one txid-to-signature mapping. */
    if (secp256k1_ecdsa_signature_normalize(ctx, NULL, &s)) return LEDGER_ESIGHIGHS;
    if (!secp256k1_ecdsa_verify(ctx, &s, digest, &pk)) return LEDGER_ESIG;
    return LEDGER_OK;
}

/* ------------------------------------------------------------------ Ed25519 */
int ledger_ed_keygen(uint8_t sec[LEDGER_ED_SEC_BYTES], uint8_t pub[LEDGER_ED_PUB_BYTES]) {
    crypto_init();
    if (crypto_sign_keypair(pub, sec) != 0) return LEDGER_EINVAL;
    return LEDGER_OK;
}

void ledger_ed_sign(const uint8_t sec[LEDGER_ED_SEC_BYTES], const void *msg, size_t len,
                    uint8_t sig[LEDGER_ED_SIG_BYTES]) {
    crypto_init();
    TEM_ASSERT(crypto_sign_detached(sig, NULL, msg, len, sec) == 0);
}

int ledger_ed_verify(const uint8_t pub[LEDGER_ED_PUB_BYTES], const void *msg, size_t len,
                     const uint8_t sig[LEDGER_ED_SIG_BYTES]) {
    crypto_init();
    return crypto_sign_verify_detached(sig, msg, len, pub) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ key files */
int ledger_keyfile_write(const char *path, const ledger_keyfile *k) {
    char sec_hex[2 * LEDGER_ED_SEC_BYTES + 1], pub_hex[2 * LEDGER_ED_PUB_BYTES + 3];
    if (k->is_validator) {
        tem_hex(sec_hex, k->ed_sec, LEDGER_ED_SEC_BYTES);
        tem_hex(pub_hex, k->ed_pub, LEDGER_ED_PUB_BYTES);
    } else {
        tem_hex(sec_hex, k->secp_sec, LEDGER_SECP_SEC_BYTES);
        tem_hex(pub_hex, k->secp_pub, LEDGER_SECP_PUB_BYTES);
    }
    /* O_EXCL: never overwrite an existing key by accident; 0600 from creation, not chmod
     * afterwards, so the secret is never readable by others even briefly. */
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0) return LEDGER_EIO;
    char line[512];
    int n = snprintf(line, sizeof line, "{\"type\":\"%s\",\"secret\":\"%s\",\"public\":\"%s\"}\n",
                     k->is_validator ? "validator" : "meter", sec_hex, pub_hex);
    sodium_memzero(sec_hex, sizeof sec_hex);
    bool ok = n > 0 && (size_t)n < sizeof line && write(fd, line, (size_t)n) == n && fsync(fd) == 0;
    sodium_memzero(line, sizeof line);
    if (close(fd) != 0) ok = false;
    return ok ? LEDGER_OK : LEDGER_EIO;
}

int ledger_keyfile_read(const char *path, ledger_keyfile *k) {
    json_error_t jerr;
    json_t *j = json_load_file(path, 0, &jerr);
    if (!j) return LEDGER_EKEYFILE;
    int rc = LEDGER_EKEYFILE;
    const char *type = json_string_value(json_object_get(j, "type"));
    const char *sec = json_string_value(json_object_get(j, "secret"));
    memset(k, 0, sizeof *k);
    if (!type || !sec) goto fail;
    if (strcmp(type, "validator") == 0) {
        k->is_validator = 1;
        if (tem_unhex(k->ed_sec, LEDGER_ED_SEC_BYTES, sec) != 0) goto fail;
        /* libsodium's secret key is seed || public key: derive, don't trust the file's copy. */
        TEM_ASSERT(crypto_sign_ed25519_sk_to_pk(k->ed_pub, k->ed_sec) == 0);
    } else if (strcmp(type, "meter") == 0) {
        if (tem_unhex(k->secp_sec, LEDGER_SECP_SEC_BYTES, sec) != 0) goto fail;
        if (ledger_secp_pubkey(k->secp_sec, k->secp_pub) != LEDGER_OK) goto fail;
    } else {
        goto fail;
    }
    rc = LEDGER_OK;
fail:
    json_decref(j);
    if (rc != LEDGER_OK) sodium_memzero(k, sizeof *k);
    return rc;
}
