/* hs.c: the pure parts of the peer protocol: error names, the Noise-style handshake state
 * machine (X25519 ephemerals, Ed25519 signatures over the transcript, HKDF-SHA256 keys) and the
 * per-frame ChaCha20-Poly1305 seal/open with counter nonces. No sockets here; net.c drives it.
 * docs/net.md is the specification this file implements. */
#include "net/net.h"

#include <sodium.h>

/* ------------------------------------------------------------------ errors */
const char *net_strerror(int err) {
    switch (err) {
    case NET_OK: return "ok";
#define NET_X(name, val, msg)                                                                      \
    case val: return msg;
        NET_ERRNO_MAP(NET_X)
#undef NET_X
    }
    return "unknown net error";
}

const char *net_errname(int err) {
    switch (err) {
    case NET_OK: return "OK";
#define NET_X(name, val, msg)                                                                      \
    case val: return #name;
        NET_ERRNO_MAP(NET_X)
#undef NET_X
    }
    return "EUNKNOWNCODE";
}

const char *net_log_level_name(int level) {
    switch (level) {
    case NET_LOG_DEBUG: return "debug";
    case NET_LOG_INFO: return "info";
    case NET_LOG_WARN: return "warn";
    default: return "error";
    }
}

/* ------------------------------------------------------------------ addresses */
int net_addr_split(const char *addr, char *host, size_t host_cap, uint16_t *port) {
    if (addr == NULL || host == NULL || host_cap == 0 || port == NULL) return NET_EINVAL;
    const char *colon, *hs = addr, *he;
    if (addr[0] == '[') {
        he = strchr(addr, ']');
        if (he == NULL || he[1] != ':') return NET_EADDR;
        hs = addr + 1;
        colon = he + 1;
    } else {
        colon = strrchr(addr, ':');
        if (colon == NULL) return NET_EADDR;
        he = colon;
        /* A bare IPv6 address without brackets has more than one colon: refuse rather than
         * guess where the port starts. */
        if (memchr(addr, ':', (size_t)(colon - addr)) != NULL) return NET_EADDR;
    }
    size_t hl = (size_t)(he - hs);
    if (hl == 0 || hl >= host_cap) return NET_EADDR;
    const char *p = colon + 1;
    if (*p == '\0' || strlen(p) > 5) return NET_EADDR;
    uint32_t v = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9') return NET_EADDR;
        v = v * 10 + (uint32_t)(*p - '0');
    }
    if (v > 65535) return NET_EADDR;
    memcpy(host, hs, hl);
    host[hl] = '\0';
    *port = (uint16_t)v;
    return NET_OK;
}

/* ------------------------------------------------------------------ key schedule */
static const char HS_DOMAIN[] = "TEM/net/v1";
static const char SIG_RESP[] = "TEM/net/v1/responder";
static const char SIG_INIT[] = "TEM/net/v1/initiator";
static const uint8_t HS_MAGIC[4] = {'T', 'E', 'M', '1'};

/* h = SHA-256(h || a || b): the transcript absorbs each public value as it crosses the wire. */
static void mix_hash(uint8_t h[32], const void *a, size_t alen, const void *b, size_t blen) {
    const void *parts[3] = {h, a, b};
    size_t lens[3] = {32, alen, blen};
    uint8_t out[32];
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    for (int i = 0; i < 3; i++)
        if (lens[i]) crypto_hash_sha256_update(&st, parts[i], lens[i]);
    crypto_hash_sha256_final(&st, out);
    memcpy(h, out, 32);
}

/* HKDF-SHA256 (RFC 5869) with salt = transcript hash, ikm = X25519 output, and a one-block
 * expand per label: every key we need is 32 bytes. */
static void hkdf(uint8_t out[32], const uint8_t salt[32], const uint8_t ikm[32], const char *label) {
    uint8_t prk[32];
    crypto_auth_hmacsha256(prk, ikm, 32, salt);
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, prk, 32);
    crypto_auth_hmacsha256_update(&st, (const uint8_t *)label, strlen(label));
    const uint8_t one = 1;
    crypto_auth_hmacsha256_update(&st, &one, 1);
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(prk, sizeof prk);
    sodium_memzero(&st, sizeof st);
}

static void nonce_of(uint8_t n[crypto_aead_chacha20poly1305_ietf_NPUBBYTES], uint64_t ctr) {
    memset(n, 0, crypto_aead_chacha20poly1305_ietf_NPUBBYTES);
    tem_put_u64le(n + 4, ctr);
}

static int fail(net_hs *hs, int rc) {
    hs->step = -1;
    return rc;
}

/* ------------------------------------------------------------------ handshake */
int net_hs_init(net_hs *hs, int role, const ledger_genesis *g, const uint8_t sec[LEDGER_ED_SEC_BYTES],
                const uint8_t *expected, bool accept_observers) {
    if (hs == NULL || g == NULL || sec == NULL) return NET_EINVAL;
    if (role != NET_HS_INITIATOR && role != NET_HS_RESPONDER) return NET_EINVAL;
    memset(hs, 0, sizeof *hs);
    hs->role = role;
    hs->genesis = g;
    memcpy(hs->my_sec, sec, LEDGER_ED_SEC_BYTES);
    hs->accept_observers = accept_observers;
    if (expected != NULL) {
        hs->has_expected = true;
        memcpy(hs->expected_pk, expected, LEDGER_ED_PUB_BYTES);
    }
    randombytes_buf(hs->e_sk, sizeof hs->e_sk);
    if (crypto_scalarmult_base(hs->e_pk, hs->e_sk) != 0) return fail(hs, NET_ECRYPTO);
    /* h0 binds every later signature to this protocol and this chain. */
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    crypto_hash_sha256_update(&st, (const uint8_t *)HS_DOMAIN, sizeof HS_DOMAIN - 1);
    crypto_hash_sha256_update(&st, g->hash, LEDGER_HASH_BYTES);
    crypto_hash_sha256_final(&st, hs->h);
    hs->peer_index = -1;
    hs->step = 1;
    return NET_OK;
}

bool net_hs_done(const net_hs *hs) { return hs->step == 4; }

void net_hs_allow_observers(net_hs *hs, const uint8_t (*keys)[LEDGER_ED_PUB_BYTES], uint32_t n) {
    hs->allowed = keys;
    hs->n_allowed = keys ? n : 0;
}

static bool my_turn(const net_hs *hs) {
    if (hs->step == 1 || hs->step == 3) return hs->role == NET_HS_INITIATOR;
    if (hs->step == 2) return hs->role == NET_HS_RESPONDER;
    return false;
}

static void sign_transcript(const net_hs *hs, const char *label, uint8_t sig[64]) {
    uint8_t msg[64];
    size_t ll = strlen(label);
    TEM_ASSERT(ll + 32 <= sizeof msg);
    memcpy(msg, label, ll);
    memcpy(msg + ll, hs->h, 32);
    crypto_sign_detached(sig, NULL, msg, ll + 32, hs->my_sec);
}

static int verify_transcript(const net_hs *hs, const char *label, const uint8_t pk[32],
                             const uint8_t sig[64]) {
    uint8_t msg[64];
    size_t ll = strlen(label);
    memcpy(msg, label, ll);
    memcpy(msg + ll, hs->h, 32);
    return crypto_sign_verify_detached(sig, msg, ll + 32, pk);
}

int net_hs_write(net_hs *hs, uint8_t *out, size_t cap, size_t *len) {
    if (hs == NULL || out == NULL || len == NULL) return NET_EINVAL;
    if (!my_turn(hs)) return NET_ESTATE;
    uint8_t my_pk[32], key[32], n12[12], pt[96];
    crypto_sign_ed25519_sk_to_pk(my_pk, hs->my_sec);
    if (hs->step == 1) {
        if (cap < NET_HS_M1_BYTES) return NET_EINVAL;
        memcpy(out, HS_MAGIC, 4);
        out[4] = NET_PROTOCOL_VERSION;
        memcpy(out + 5, hs->e_pk, 32);
        mix_hash(hs->h, hs->e_pk, 32, NULL, 0);
        *len = NET_HS_M1_BYTES;
        hs->step = 2;
        return NET_OK;
    }
    if (hs->step == 2) { /* responder: e_R, then its identity under the first handshake key */
        if (cap < NET_HS_M2_BYTES) return NET_EINVAL;
        memcpy(out, hs->e_pk, 32);
        mix_hash(hs->h, hs->e_pk, 32, NULL, 0);
        memcpy(pt, my_pk, 32);
        sign_transcript(hs, SIG_RESP, pt + 32);
        hkdf(key, hs->h, hs->dh, "TEM/net/v1 hs r2i");
        nonce_of(n12, 0);
        unsigned long long clen = 0;
        crypto_aead_chacha20poly1305_ietf_encrypt(out + 32, &clen, pt, 96, hs->h, 32, NULL, n12, key);
        TEM_ASSERT(clen == 96 + NET_AEAD_TAG_BYTES);
        mix_hash(hs->h, pt, 96, NULL, 0);
        sodium_memzero(key, sizeof key);
        *len = NET_HS_M2_BYTES;
        hs->step = 3;
        return NET_OK;
    }
    /* step 3, initiator: its identity and signature over everything so far */
    if (cap < NET_HS_M3_BYTES) return NET_EINVAL;
    memcpy(pt, my_pk, 32);
    sign_transcript(hs, SIG_INIT, pt + 32);
    hkdf(key, hs->h, hs->dh, "TEM/net/v1 hs i2r");
    nonce_of(n12, 0);
    unsigned long long clen = 0;
    crypto_aead_chacha20poly1305_ietf_encrypt(out, &clen, pt, 96, hs->h, 32, NULL, n12, key);
    TEM_ASSERT(clen == NET_HS_M3_BYTES);
    mix_hash(hs->h, pt, 96, NULL, 0);
    sodium_memzero(key, sizeof key);
    *len = NET_HS_M3_BYTES;
    hs->step = 4;
    return NET_OK;
}

/* Decides whether the authenticated key `pk` may hold this session. */
static int admit_key(net_hs *hs, const uint8_t pk[32]) {
    uint8_t my_pk[32];
    crypto_sign_ed25519_sk_to_pk(my_pk, hs->my_sec);
    if (sodium_memcmp(pk, my_pk, 32) == 0) return NET_ESELF;
    int idx = -1;
    for (uint32_t i = 0; i < hs->genesis->n_validators; i++)
        if (memcmp(hs->genesis->validators[i].pubkey, pk, 32) == 0) idx = (int)i;
    if (hs->role == NET_HS_INITIATOR) {
        /* We only dial validators; reaching some other key means a wrong address or a man in
         * the middle, both of which must fail loudly. */
        if (idx < 0) return NET_EUNKNOWN;
        if (hs->has_expected && memcmp(pk, hs->expected_pk, 32) != 0) return NET_EAUTH;
    } else if (idx < 0 && !hs->accept_observers) {
        bool listed = false;
        for (uint32_t i = 0; i < hs->n_allowed && !listed; i++) listed = memcmp(hs->allowed[i], pk, 32) == 0;
        if (!listed) return NET_EUNKNOWN;
    }
    hs->peer_index = idx;
    memcpy(hs->peer_pk, pk, 32);
    return NET_OK;
}

int net_hs_read(net_hs *hs, const uint8_t *msg, size_t len) {
    if (hs == NULL || (msg == NULL && len > 0)) return NET_EINVAL;
    if (hs->step < 1 || hs->step > 3 || my_turn(hs)) return fail(hs, NET_ESTATE);
    uint8_t key[32], n12[12], pt[96];
    if (hs->step == 1) { /* responder reads M1 */
        if (len != NET_HS_M1_BYTES) return fail(hs, NET_EFRAME);
        if (memcmp(msg, HS_MAGIC, 4) != 0 || msg[4] != NET_PROTOCOL_VERSION)
            return fail(hs, NET_EVERSION);
        memcpy(hs->peer_e_pk, msg + 5, 32);
        /* libsodium refuses low-order points (an all-zero shared secret). */
        if (crypto_scalarmult(hs->dh, hs->e_sk, hs->peer_e_pk) != 0) return fail(hs, NET_EAUTH);
        mix_hash(hs->h, hs->peer_e_pk, 32, NULL, 0);
        hs->step = 2;
        return NET_OK;
    }
    if (hs->step == 2) { /* initiator reads M2 */
        if (len != NET_HS_M2_BYTES) return fail(hs, NET_EFRAME);
        memcpy(hs->peer_e_pk, msg, 32);
        if (crypto_scalarmult(hs->dh, hs->e_sk, hs->peer_e_pk) != 0) return fail(hs, NET_EAUTH);
        mix_hash(hs->h, hs->peer_e_pk, 32, NULL, 0);
        hkdf(key, hs->h, hs->dh, "TEM/net/v1 hs r2i");
        nonce_of(n12, 0);
        unsigned long long plen = 0;
        int rc = crypto_aead_chacha20poly1305_ietf_decrypt(pt, &plen, NULL, msg + 32, 96 + 16,
                                                           hs->h, 32, n12, key);
        sodium_memzero(key, sizeof key);
        if (rc != 0 || plen != 96) return fail(hs, NET_EAUTH);
        if (verify_transcript(hs, SIG_RESP, pt, pt + 32) != 0) return fail(hs, NET_EAUTH);
        if ((rc = admit_key(hs, pt)) != NET_OK) return fail(hs, rc);
        mix_hash(hs->h, pt, 96, NULL, 0);
        hs->step = 3;
        return NET_OK;
    }
    /* step 3: responder reads M3 */
    if (len != NET_HS_M3_BYTES) return fail(hs, NET_EFRAME);
    hkdf(key, hs->h, hs->dh, "TEM/net/v1 hs i2r");
    nonce_of(n12, 0);
    unsigned long long plen = 0;
    int rc = crypto_aead_chacha20poly1305_ietf_decrypt(pt, &plen, NULL, msg, len, hs->h, 32, n12, key);
    sodium_memzero(key, sizeof key);
    if (rc != 0 || plen != 96) return fail(hs, NET_EAUTH);
    if (verify_transcript(hs, SIG_INIT, pt, pt + 32) != 0) return fail(hs, NET_EAUTH);
    if ((rc = admit_key(hs, pt)) != NET_OK) return fail(hs, rc);
    mix_hash(hs->h, pt, 96, NULL, 0);
    hs->step = 4;
    return NET_OK;
}

int net_hs_split(const net_hs *hs, net_session *out) {
    if (hs == NULL || out == NULL || hs->step != 4) return NET_ESTATE;
    uint8_t i2r[32], r2i[32];
    hkdf(i2r, hs->h, hs->dh, "TEM/net/v1 data i2r");
    hkdf(r2i, hs->h, hs->dh, "TEM/net/v1 data r2i");
    memset(out, 0, sizeof *out);
    memcpy(out->tx_key, hs->role == NET_HS_INITIATOR ? i2r : r2i, 32);
    memcpy(out->rx_key, hs->role == NET_HS_INITIATOR ? r2i : i2r, 32);
    sodium_memzero(i2r, sizeof i2r);
    sodium_memzero(r2i, sizeof r2i);
    return NET_OK;
}

void net_hs_wipe(net_hs *hs) {
    if (hs == NULL) return;
    sodium_memzero(hs->my_sec, sizeof hs->my_sec);
    sodium_memzero(hs->e_sk, sizeof hs->e_sk);
    sodium_memzero(hs->dh, sizeof hs->dh);
}

/* ------------------------------------------------------------------ frames */
int net_session_seal(net_session *s, const void *pt, size_t len, uint8_t *out) {
    if (s == NULL || out == NULL || (pt == NULL && len > 0)) return NET_EINVAL;
    if (len > UINT32_MAX - NET_AEAD_TAG_BYTES) return NET_ETOOBIG;
    /* A wrapped counter would reuse a nonce: the session must end first. */
    if (s->tx_ctr == UINT64_MAX) return NET_ETOOBIG;
    uint32_t flen = (uint32_t)(len + NET_AEAD_TAG_BYTES);
    tem_put_u32be(out, flen);
    uint8_t n12[12];
    nonce_of(n12, s->tx_ctr);
    unsigned long long clen = 0;
    /* The header is associated data, so a frame cut or re-framed in transit fails too. */
    crypto_aead_chacha20poly1305_ietf_encrypt(out + 4, &clen, pt, len, out, 4, NULL, n12, s->tx_key);
    TEM_ASSERT(clen == flen);
    s->tx_ctr++;
    return NET_OK;
}

int net_session_open(net_session *s, const uint8_t *ct, size_t len, uint8_t *pt) {
    if (s == NULL || ct == NULL || pt == NULL) return NET_EINVAL;
    if (len < NET_AEAD_TAG_BYTES || len > UINT32_MAX) return NET_EFRAME;
    if (s->rx_ctr == UINT64_MAX) return NET_EDECRYPT;
    uint8_t hdr[4], n12[12];
    tem_put_u32be(hdr, (uint32_t)len);
    nonce_of(n12, s->rx_ctr);
    unsigned long long plen = 0;
    if (crypto_aead_chacha20poly1305_ietf_decrypt(pt, &plen, NULL, ct, len, hdr, 4, n12, s->rx_key) != 0)
        return NET_EDECRYPT;
    s->rx_ctr++;
    return NET_OK;
}
