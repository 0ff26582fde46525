/* tem_count.c: an LD_PRELOAD counter for the per-tx work of a running temd (docs/performance.md,
 * "Per-tx work: unpacks, hashes, copies"). It wraps three public library entry points with
 * dlsym(RTLD_NEXT) and writes what it counted to $TEM_COUNT_OUT.<pid> when the process exits:
 *
 *   protobuf_c_message_unpack   one line per message type ("unpack tem.v1.SignedTx 123"). The
 *                               library calls itself through its PLT for nested messages, so a
 *                               Block's SignedTxs are counted too.
 *   crypto_hash_sha256_init/update/final, SHA256_Init/Update/Final
 *                               every SHA-256 ends in a final call (libsodium's one-shot runs
 *                               through its three calls; ledger_sha256 uses libcrypto's). The first 64 input bytes classify it by
 *                               its domain prefix: Merkle leaf/node, state leaf, block, commit,
 *                               pBFT, handshake, mempool log record, tx body (txid), receipt,
 *                               signature-cache key, other.
 *   memcpy / memmove            a histogram of lengths (1..65535); the analysis counts as "tx
 *                               copies" the calls whose length equals the length of a SignedTx
 *                               or a TxBody this process unpacked.
 *   secp256k1_ecdsa_verify      meter signature verifications ("verify secp256k1 N"); every tx
 *                               signature check of temd ends here (ledger_secp_verify).
 *   crypto_sign_verify_detached Ed25519 verifications (pBFT votes, certificates, handshakes).
 *   malloc/calloc/realloc       allocations ("alloc malloc N"), through glibc's __libc_* entry
 *                               points so no dlsym runs inside an allocation; realloc(NULL, n)
 *                               counts as a malloc.
 *
 * Not for production: a test tool only. Thread-safe through atomics; the sha256 state of each
 * thread is tracked in a small thread-local table keyed by the state's address. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <protobuf-c/protobuf-c.h>
#include <sodium.h>

#define LEN_MAX 65536
#define TYPES_MAX 64
#define PREFIX 64

static _Atomic uint64_t copy_hist[LEN_MAX];
static _Atomic uint64_t signed_len_seen[LEN_MAX], body_len_seen[LEN_MAX];

static struct {
    const char *name;
    _Atomic uint64_t n;
} types[TYPES_MAX];
static _Atomic int ntypes;

enum {
    H_MERKLE_LEAF, H_MERKLE_NODE, H_MERKLE_EMPTY, H_STATE_LEAF, H_BLOCK, H_COMMIT, H_PBFT, H_NET,
    H_MEMPOOL_LOG, H_TXID, H_RECEIPT, H_SIGCACHE, H_OTHER, H_COUNT
};
static const char *const HNAMES[H_COUNT] = {"merkle_leaf", "merkle_node", "merkle_empty", "state_leaf",
                                             "block_hash", "commit_digest", "pbft", "net", "mempool_log",
                                             "txid", "receipt", "sigcache_key", "other"};
static _Atomic uint64_t hashes[H_COUNT];
static _Atomic uint64_t secp_verifies, ed_verifies, n_malloc, n_calloc, n_realloc;

typedef struct {
    const void *st;
    size_t len, have;
    uint8_t prefix[PREFIX];
} track;
static __thread track tr[8];
static __thread int in_oneshot;

static void *(*real_memcpy)(void *, const void *, size_t);
static void *(*real_memmove)(void *, const void *, size_t);
static ProtobufCMessage *(*real_unpack)(const ProtobufCMessageDescriptor *, ProtobufCAllocator *, size_t,
                                        const uint8_t *);
static int (*real_init)(crypto_hash_sha256_state *);
static int (*real_update)(crypto_hash_sha256_state *, const unsigned char *, unsigned long long);
static int (*real_final)(crypto_hash_sha256_state *, unsigned char *);

/* Byte loops the compiler must not turn back into memcpy calls. */
__attribute__((optimize("no-tree-loop-distribute-patterns"))) static void slow_copy(volatile uint8_t *d,
                                                                                   const volatile uint8_t *s,
                                                                                   size_t n) {
    if (d < s)
        for (size_t i = 0; i < n; i++) d[i] = s[i];
    else
        for (size_t i = n; i-- > 0;) d[i] = s[i];
}

void *memcpy(void *d, const void *s, size_t n) {
    if (n < LEN_MAX) atomic_fetch_add_explicit(&copy_hist[n], 1, memory_order_relaxed);
    if (!real_memcpy) {
        slow_copy(d, s, n);
        return d;
    }
    return real_memcpy(d, s, n);
}

void *memmove(void *d, const void *s, size_t n) {
    if (n < LEN_MAX) atomic_fetch_add_explicit(&copy_hist[n], 1, memory_order_relaxed);
    if (!real_memmove) {
        slow_copy(d, s, n);
        return d;
    }
    return real_memmove(d, s, n);
}

static void count_type(const char *name) {
    int k = atomic_load(&ntypes);
    for (int i = 0; i < k; i++)
        if (types[i].name == name || strcmp(types[i].name, name) == 0) {
            atomic_fetch_add(&types[i].n, 1);
            return;
        }
    /* New type: the loop thread and the thread pool rarely race here; a lost race only splits a
     * type over two lines, which the analysis sums by name. */
    int i = atomic_fetch_add(&ntypes, 1);
    if (i >= TYPES_MAX) return;
    types[i].name = name;
    atomic_fetch_add(&types[i].n, 1);
}

ProtobufCMessage *protobuf_c_message_unpack(const ProtobufCMessageDescriptor *d, ProtobufCAllocator *a,
                                            size_t len, const uint8_t *data) {
    if (!real_unpack) real_unpack = dlsym(RTLD_NEXT, "protobuf_c_message_unpack");
    count_type(d->name);
    if (len < LEN_MAX) {
        if (strcmp(d->name, "tem.v1.SignedTx") == 0) atomic_store(&signed_len_seen[len], 1);
        else if (strcmp(d->name, "tem.v1.TxBody") == 0) atomic_store(&body_len_seen[len], 1);
    }
    return real_unpack(d, a, len, data);
}

static track *find(const void *st, int create) {
    for (int i = 0; i < 8; i++)
        if (tr[i].st == st) return &tr[i];
    if (!create) return NULL;
    for (int i = 0; i < 8; i++)
        if (!tr[i].st) {
            tr[i].st = st;
            return &tr[i];
        }
    tr[0].st = st;
    return &tr[0];
}

int crypto_hash_sha256_init(crypto_hash_sha256_state *st) {
    if (!real_init) real_init = dlsym(RTLD_NEXT, "crypto_hash_sha256_init");
    if (in_oneshot) return real_init(st);
    track *t = find(st, 1);
    t->len = t->have = 0;
    return real_init(st);
}

int crypto_hash_sha256_update(crypto_hash_sha256_state *st, const unsigned char *in, unsigned long long n) {
    if (!real_update) real_update = dlsym(RTLD_NEXT, "crypto_hash_sha256_update");
    track *t = in_oneshot ? NULL : find(st, 0);
    if (t) {
        size_t take = n < PREFIX - t->have ? (size_t)n : PREFIX - t->have;
        slow_copy(t->prefix + t->have, in, take);
        t->have += take;
        t->len += (size_t)n;
    }
    return real_update(st, in, n);
}

static int starts(const track *t, const char *s) {
    size_t l = strlen(s);
    return t->have >= l && memcmp(t->prefix, s, l) == 0;
}

static int classify(const track *t) {
    const uint8_t *p = t->prefix;
    if (t->len == 33 && p[0] == 0x00) return H_MERKLE_LEAF;
    if (t->len == 65 && p[0] == 0x01) return H_MERKLE_NODE;
    if (starts(t, "TEM/merkle/empty")) return H_MERKLE_EMPTY;
    if (starts(t, "TEM/block/")) return H_BLOCK;
    if (starts(t, "TEM/commit/")) return H_COMMIT;
    if (starts(t, "TEM/pbft/")) return H_PBFT;
    if (starts(t, "TEM/net/")) return H_NET;
    if (t->have >= 1 && p[0] == 0x02) return H_STATE_LEAF;
    /* mempool log record check: u32le(len) || type 1 || payload */
    if (t->have >= 5 && (uint32_t)(p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24) == t->len - 4 && p[4] == 1)
        return H_MEMPOOL_LOG;
    /* TxBody: chain_id (field 1) then signer (field 2, 33 bytes) */
    if (t->have >= 2 && p[0] == 0x0a && (size_t)p[1] + 4 <= t->have && p[2 + p[1]] == 0x12 && p[3 + p[1]] == 0x21)
        return H_TXID;
    /* Receipt: txid (field 1, 32 bytes) first */
    if (t->have >= 2 && p[0] == 0x0a && p[1] == 0x20) return H_RECEIPT;
    if (t->len == 96) return H_SIGCACHE;
    return H_OTHER;
}

int crypto_hash_sha256_final(crypto_hash_sha256_state *st, unsigned char *out) {
    if (!real_final) real_final = dlsym(RTLD_NEXT, "crypto_hash_sha256_final");
    if (in_oneshot) return real_final(st, out);
    track *t = find(st, 0);
    if (t) {
        atomic_fetch_add(&hashes[classify(t)], 1);
        t->st = NULL;
    } else {
        atomic_fetch_add(&hashes[H_OTHER], 1);
    }
    return real_final(st, out);
}

/* libsodium's one-shot may or may not reach the three calls above through its PLT: count it
 * here and let the inner calls pass uncounted. */
int crypto_hash_sha256(unsigned char *out, const unsigned char *in, unsigned long long n) {
    static int (*real)(unsigned char *, const unsigned char *, unsigned long long);
    if (!real) real = dlsym(RTLD_NEXT, "crypto_hash_sha256");
    track t = {.st = NULL, .len = (size_t)n, .have = n < PREFIX ? (size_t)n : PREFIX};
    slow_copy(t.prefix, in, t.have);
    atomic_fetch_add(&hashes[classify(&t)], 1);
    in_oneshot = 1;
    int rc = real(out, in, n);
    in_oneshot = 0;
    return rc;
}

/* libcrypto's SHA256_* (what ledger_sha256 uses): the same tracking, keyed by the context. */
typedef struct SHA256state_st SHA256_CTX;
int SHA256_Init(SHA256_CTX *c) {
    static int (*real)(SHA256_CTX *);
    if (!real) real = dlsym(RTLD_NEXT, "SHA256_Init");
    track *t = find(c, 1);
    t->len = t->have = 0;
    return real(c);
}

int SHA256_Update(SHA256_CTX *c, const void *in, size_t n) {
    static int (*real)(SHA256_CTX *, const void *, size_t);
    if (!real) real = dlsym(RTLD_NEXT, "SHA256_Update");
    track *t = find(c, 0);
    if (t) {
        size_t take = n < PREFIX - t->have ? n : PREFIX - t->have;
        slow_copy(t->prefix + t->have, in, take);
        t->have += take;
        t->len += n;
    }
    return real(c, in, n);
}

int SHA256_Final(unsigned char *out, SHA256_CTX *c) {
    static int (*real)(unsigned char *, SHA256_CTX *);
    if (!real) real = dlsym(RTLD_NEXT, "SHA256_Final");
    track *t = find(c, 0);
    if (t) {
        atomic_fetch_add(&hashes[classify(t)], 1);
        t->st = NULL;
    } else {
        atomic_fetch_add(&hashes[H_OTHER], 1);
    }
    return real(out, c);
}

/* ------------------------------------------------------------------ signatures */
typedef struct secp256k1_context_struct secp256k1_context;
int secp256k1_ecdsa_verify(const secp256k1_context *ctx, const void *sig, const unsigned char *msg32,
                           const void *pubkey) {
    static int (*real)(const secp256k1_context *, const void *, const unsigned char *, const void *);
    if (!real) real = dlsym(RTLD_NEXT, "secp256k1_ecdsa_verify");
    atomic_fetch_add_explicit(&secp_verifies, 1, memory_order_relaxed);
    return real(ctx, sig, msg32, pubkey);
}

int crypto_sign_verify_detached(const unsigned char *sig, const unsigned char *m, unsigned long long mlen,
                                const unsigned char *pk) {
    static int (*real)(const unsigned char *, const unsigned char *, unsigned long long, const unsigned char *);
    if (!real) real = dlsym(RTLD_NEXT, "crypto_sign_verify_detached");
    atomic_fetch_add_explicit(&ed_verifies, 1, memory_order_relaxed);
    return real(sig, m, mlen, pk);
}

/* ------------------------------------------------------------------ allocations */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);

void *malloc(size_t n) {
    atomic_fetch_add_explicit(&n_malloc, 1, memory_order_relaxed);
    return __libc_malloc(n);
}
void *calloc(size_t k, size_t n) {
    atomic_fetch_add_explicit(&n_calloc, 1, memory_order_relaxed);
    return __libc_calloc(k, n);
}
void *realloc(void *p, size_t n) {
    atomic_fetch_add_explicit(p ? &n_realloc : &n_malloc, 1, memory_order_relaxed);
    return __libc_realloc(p, n);
}

__attribute__((constructor)) static void tc_init(void) {
    real_memcpy = dlsym(RTLD_NEXT, "memcpy");
    real_memmove = dlsym(RTLD_NEXT, "memmove");
}

__attribute__((destructor)) static void tc_dump(void) {
    const char *base = getenv("TEM_COUNT_OUT");
    if (!base) return;
    char path[512];
    snprintf(path, sizeof path, "%s.%d", base, (int)getpid());
    FILE *f = fopen(path, "w");
    if (!f) return;
    int k = atomic_load(&ntypes);
    for (int i = 0; i < k && i < TYPES_MAX; i++) fprintf(f, "unpack %s %llu\n", types[i].name, (unsigned long long)types[i].n);
    for (int i = 0; i < H_COUNT; i++) fprintf(f, "sha256 %s %llu\n", HNAMES[i], (unsigned long long)hashes[i]);
    fprintf(f, "verify secp256k1 %llu\n", (unsigned long long)secp_verifies);
    fprintf(f, "verify ed25519 %llu\n", (unsigned long long)ed_verifies);
    fprintf(f, "alloc malloc %llu\nalloc calloc %llu\nalloc realloc %llu\n", (unsigned long long)n_malloc,
            (unsigned long long)n_calloc, (unsigned long long)n_realloc);
    for (size_t l = 1; l < LEN_MAX; l++) {
        if (copy_hist[l]) fprintf(f, "copy %zu %llu\n", l, (unsigned long long)copy_hist[l]);
        if (signed_len_seen[l]) fprintf(f, "signed_len %zu\n", l);
        if (body_len_seen[l]) fprintf(f, "body_len %zu\n", l);
    }
    fclose(f);
}
