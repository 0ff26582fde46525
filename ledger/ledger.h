/* ledger.h: hashing, keys and signatures, transactions, blocks, the genesis, the key-value state
 * with its Merkle root, and the LMDB store. Everything other modules need from the ledger.
 *
 * Errors are `enum ledger_err` values (0 = LEDGER_OK, -1xx otherwise); ledger_strerror() names
 * them. Unless a comment says otherwise, out-parameters are written only on LEDGER_OK. */
#ifndef LEDGER_H
#define LEDGER_H

#include "ledger/tem.h"
#include "proto/tem.pb-c.h"

#define LEDGER_HASH_BYTES 32
#define LEDGER_SECP_PUB_BYTES 33 /* compressed secp256k1 public key */
#define LEDGER_SECP_SEC_BYTES 32
#define LEDGER_SECP_SIG_BYTES 64 /* compact r || s */
#define LEDGER_ED_PUB_BYTES 32
#define LEDGER_ED_SEC_BYTES 64 /* libsodium's seed || public key */
#define LEDGER_ED_SIG_BYTES 64
#define LEDGER_CHAIN_ID_MAX 63
#define LEDGER_VALIDATORS_MAX 64
#define LEDGER_ADMINS_MAX 16
#define LEDGER_TARIFF_PERIODS_MAX 48
#define LEDGER_PARTICIPANTS_MAX 1000000 /* a DSO region: docs/performance.md, "State root and scale" */
#define LEDGER_GENESIS_BYTES_MAX (256u << 20) /* 1M participants at ~150 bytes of JSON each */
#define LEDGER_BLOCK_TXS_MAX 100000

/* ------------------------------------------------------------------ errors */
#define LEDGER_ERRNO_MAP(X)                                                                        \
    X(ENOMEM, -101, "out of memory")                                                               \
    X(EIO, -102, "storage I/O error")                                                              \
    X(ENOTFOUND, -103, "not found")                                                                \
    X(EDECODE, -104, "malformed or truncated protobuf")                                            \
    X(EEMPTY, -105, "empty tx body")                                                               \
    X(ETOOBIG, -106, "tx larger than the genesis limit")                                           \
    X(EKIND, -107, "unknown or missing tx kind")                                                   \
    X(EFIELD, -108, "missing or invalid field")                                                    \
    X(ESIGLEN, -109, "signature is not 64 bytes")                                                  \
    X(ESIGHIGHS, -110, "high-S signature (not normalised)")                                        \
    X(ESIG, -111, "signature does not verify")                                                     \
    X(EPUBKEY, -112, "signer is not a valid compressed secp256k1 key")                             \
    X(ECHAIN, -113, "wrong chain id")                                                              \
    X(EGENESIS, -114, "invalid genesis")                                                           \
    X(EHEIGHT, -115, "block height is not the next height")                                        \
    X(EPREV, -116, "previous block hash does not match")                                           \
    X(EROOT, -117, "root in header does not match")                                                \
    X(ECERT, -118, "invalid commit certificate")                                                   \
    X(EFULL, -119, "store map is full")                                                            \
    X(ESIGMALFORMED, -120, "malformed signature (r or s out of range)")                            \
    X(EINVAL, -121, "invalid argument")                                                            \
    X(ENONCE, -122, "nonce is not the signer's next nonce")                                        \
    X(EEXISTS, -123, "already exists")                                                             \
    X(ETIME, -124, "block time not after its parent's")                                            \
    X(EBLOCK, -125, "malformed block")                                                             \
    X(ECORRUPT, -126, "stored data is corrupt")                                                    \
    X(EKEYFILE, -127, "unreadable or malformed key file")                                          \
    X(EDISKFULL, -128, "disk full")

enum ledger_err {
    LEDGER_OK = 0,
#define LEDGER_X(name, val, msg) LEDGER_##name = val,
    LEDGER_ERRNO_MAP(LEDGER_X)
#undef LEDGER_X
};

/* Static string naming `err` (any module's code is accepted; unknown codes give "unknown"). */
const char *ledger_strerror(int err);
/* Short symbolic name, e.g. "ESIGHIGHS", for JSON error codes. */
const char *ledger_errname(int err);

/* ------------------------------------------------------------------ hashing */
/* One-shot SHA-256. */
void ledger_sha256(uint8_t out[LEDGER_HASH_BYTES], const void *data, size_t len);
/* SHA-256 over the concatenation of `n` (pointer, length) parts. */
void ledger_sha256_parts(uint8_t out[LEDGER_HASH_BYTES], size_t n, const void *const *parts,
                         const size_t *lens);

/* Binary Merkle root over `n` 32-byte leaves (docs/ledger.md, "Merkle trees"):
 *   empty tree  -> SHA-256("TEM/merkle/empty")
 *   leaf node   -> SHA-256(0x00 || leaf)
 *   inner node  -> SHA-256(0x01 || left || right)
 * An odd node at the end of a level is carried up unchanged (not duplicated), so no two leaf lists
 * share a root. Returns LEDGER_ENOMEM only. */
TEM_WUR int ledger_merkle_root(uint8_t out[LEDGER_HASH_BYTES], const uint8_t (*leaves)[32], size_t n);

/* Inclusion proof for leaf `index` of `n`: siblings from the leaf level up. `path[i]` is the
 * sibling at level i; `is_right[i]` says the sibling is on the right. Levels where the node was
 * carried up have no sibling and are skipped. */
#define LEDGER_PROOF_DEPTH_MAX 64
typedef struct {
    uint64_t index, count;
    uint32_t depth;
    uint8_t sibling[LEDGER_PROOF_DEPTH_MAX][LEDGER_HASH_BYTES];
    uint8_t is_right[LEDGER_PROOF_DEPTH_MAX];
} ledger_merkle_proof;
TEM_WUR int ledger_merkle_prove(const uint8_t (*leaves)[32], size_t n, size_t index,
                                ledger_merkle_proof *out);
/* 0 when `leaf` at the proof's index gives `root`; -1 otherwise. */
TEM_WUR int ledger_merkle_verify(const uint8_t root[LEDGER_HASH_BYTES], const uint8_t leaf[32],
                                 const ledger_merkle_proof *p);

/* ------------------------------------------------------------------ keys and signatures */
/* secp256k1 (meters, clients). The secret key must be a valid scalar. */
TEM_WUR int ledger_secp_keygen(uint8_t sec[LEDGER_SECP_SEC_BYTES], uint8_t pub[LEDGER_SECP_PUB_BYTES]);
TEM_WUR int ledger_secp_pubkey(const uint8_t sec[LEDGER_SECP_SEC_BYTES], uint8_t pub[LEDGER_SECP_PUB_BYTES]);
/* True when pub is a valid compressed point on the curve. */
bool ledger_secp_pubkey_valid(const uint8_t pub[LEDGER_SECP_PUB_BYTES]);
/* Signs the 32-byte digest with RFC 6979 nonces; the output is compact and low-S. */
TEM_WUR int ledger_secp_sign(const uint8_t sec[LEDGER_SECP_SEC_BYTES], const uint8_t digest[32],
                             uint8_t sig[LEDGER_SECP_SIG_BYTES]);
/* LEDGER_OK, LEDGER_EPUBKEY (not a valid compressed key), LEDGER_ESIGMALFORMED (r or s >= n),
 * LEDGER_ESIGHIGHS (s > n/2), LEDGER_ESIG (does not verify, including r or s = 0). */
TEM_WUR int ledger_secp_verify(const uint8_t pub[LEDGER_SECP_PUB_BYTES], const uint8_t digest[32],
                               const uint8_t sig[LEDGER_SECP_SIG_BYTES]);
/* Verifications that found the signer's parsed key in the process-wide cache, and those that
 * parsed it (ledger/crypto.c: pk_parse). For tests and metrics. */
void ledger_secp_key_cache_stats(uint64_t *hits, uint64_t *misses);

/* Ed25519 (validators), libsodium. sec is libsodium's 64-byte seed||pk form. */
TEM_WUR int ledger_ed_keygen(uint8_t sec[LEDGER_ED_SEC_BYTES], uint8_t pub[LEDGER_ED_PUB_BYTES]);
void ledger_ed_sign(const uint8_t sec[LEDGER_ED_SEC_BYTES], const void *msg, size_t len,
                    uint8_t sig[LEDGER_ED_SIG_BYTES]);
/* 0 when valid, -1 otherwise. */
TEM_WUR int ledger_ed_verify(const uint8_t pub[LEDGER_ED_PUB_BYTES], const void *msg, size_t len,
                             const uint8_t sig[LEDGER_ED_SIG_BYTES]);

/* Key files: one line of JSON {"type":"meter"|"validator","secret":"hex","public":"hex"}, written
 * with mode 0600. ledger_keyfile_read fills the fields the type has; returns LEDGER_EKEYFILE. */
typedef struct {
    int is_validator;
    uint8_t secp_sec[LEDGER_SECP_SEC_BYTES], secp_pub[LEDGER_SECP_PUB_BYTES];
    uint8_t ed_sec[LEDGER_ED_SEC_BYTES], ed_pub[LEDGER_ED_PUB_BYTES];
} ledger_keyfile;
TEM_WUR int ledger_keyfile_write(const char *path, const ledger_keyfile *k);
TEM_WUR int ledger_keyfile_read(const char *path, ledger_keyfile *k);

/* ------------------------------------------------------------------ the genesis */
typedef struct {
    char name[64];
    uint8_t pubkey[LEDGER_ED_PUB_BYTES];
    char address[128]; /* host:port of its peer listener */
    char http[128];    /* host:port of its HTTP API, may be empty */
} ledger_validator;

typedef struct {
    uint8_t pubkey[LEDGER_SECP_PUB_BYTES];
    uint32_t bus;
    int32_t role; /* Tem__V1__Role */
    int64_t money_uunit;
    int64_t tokens_wh;
    /* role METER only (docs/market.md, "Meters"): the participant it measures and its import
     * and export capacity, W. */
    uint8_t owner[LEDGER_SECP_PUB_BYTES];
    int64_t import_capacity_w, export_capacity_w;
    uint64_t from_slot;  /* first slot the meter answers for (default 0) */
    uint64_t until_slot; /* first slot it no longer answers for (0: none) */
} ledger_participant;

typedef struct {
    uint32_t start_minute;
    int64_t retail_uunit_per_kwh;
    int64_t feed_in_uunit_per_kwh;
} ledger_tariff;

enum { LEDGER_MECH_CDA = 0, LEDGER_MECH_CALL = 1 };

/* Market parameters, all integers (docs/market.md). */
typedef struct {
    int64_t slot_ms;                 /* length of a delivery slot, default 900000 */
    int64_t gate_closure_ms;         /* orders close this long before the slot starts */
    int64_t settlement_deadline_ms;  /* readings accepted until slot end + this */
    int32_t mechanism;               /* LEDGER_MECH_CDA or LEDGER_MECH_CALL */
    int64_t seller_collateral_ppm;   /* seller token collateral, ppm of the order quantity */
    int64_t network_fee_uunit_per_kwh_per_ohm; /* network-use fee rate */
    int64_t loss_price_uunit_per_kwh;          /* price of a kWh of losses (0 = retail) */
    int64_t book_orders_max;         /* resting orders per slot book */
} ledger_market_params;

typedef struct {
    char chain_id[LEDGER_CHAIN_ID_MAX + 1];
    uint8_t hash[LEDGER_HASH_BYTES]; /* SHA-256 of the genesis file's bytes */
    uint64_t genesis_time_ms;
    uint32_t n_validators;
    ledger_validator validators[LEDGER_VALIDATORS_MAX];
    uint32_t n_admins;
    uint8_t admins[LEDGER_ADMINS_MAX][LEDGER_SECP_PUB_BYTES];
    uint32_t n_participants;
    ledger_participant *participants; /* owned, tem_malloc'd */
    uint32_t n_tariffs;
    ledger_tariff tariffs[LEDGER_TARIFF_PERIODS_MAX];
    ledger_market_params market;
    uint32_t max_tx_bytes;       /* market kinds' body limit, default 4096 */
    uint32_t max_admin_tx_bytes; /* admin kinds' body limit, default 4 MiB */
    uint32_t max_block_txs;      /* default 2000 */
    uint32_t checkpoint_interval;/* pBFT checkpoint period K, default 16 */
    uint64_t view_timeout_ms;    /* first view-change timeout, default 2000 */
} ledger_genesis;

/* Parses genesis JSON (docs/ledger.md, "Genesis") from memory; `hash` = SHA-256(json bytes).
 * On error returns LEDGER_EGENESIS (or ENOMEM) and writes a reason into err (may be NULL).
 * Free with ledger_genesis_free. */
TEM_WUR int ledger_genesis_parse(const char *json, size_t len, ledger_genesis *g, char *err,
                                 size_t errlen);
TEM_WUR int ledger_genesis_load(const char *path, ledger_genesis *g, char *err, size_t errlen);
void ledger_genesis_free(ledger_genesis *g);
/* f = (n-1)/3 and the quorum floor((n+f)/2)+1: 2f+1 when n = 3f+1; for other n the smallest
 * size at which two quorums always share f+1 validators (consensus/pbft.c uses the same). */
uint32_t ledger_genesis_f(const ledger_genesis *g);
uint32_t ledger_genesis_quorum(const ledger_genesis *g);
uint32_t ledger_quorum_of(uint32_t n_validators);
/* Index of a validator key, or -1. */
int ledger_genesis_validator_index(const ledger_genesis *g, const uint8_t pub[LEDGER_ED_PUB_BYTES]);
bool ledger_genesis_is_admin(const ledger_genesis *g, const uint8_t pub[LEDGER_SECP_PUB_BYTES]);

/* ------------------------------------------------------------------ transactions */
typedef struct {
    Tem__V1__SignedTx *stx; /* owned */
    Tem__V1__TxBody *body;  /* owned */
    uint8_t txid[LEDGER_HASH_BYTES];
} ledger_tx;

typedef struct {
    const char *chain_id;        /* required chain id, or NULL to accept any */
    uint32_t max_tx_bytes;       /* market kinds */
    uint32_t max_admin_tx_bytes; /* admin kinds */
} ledger_tx_limits;

/* Limits a genesis implies. */
void ledger_tx_limits_from_genesis(const ledger_genesis *g, ledger_tx_limits *out);

/* Decodes a serialised SignedTx and checks everything but the signature: LEDGER_EDECODE,
 * LEDGER_EEMPTY, LEDGER_ETOOBIG, LEDGER_EKIND, LEDGER_EFIELD, LEDGER_ESIGLEN, LEDGER_EPUBKEY (signer
 * not 33 bytes), LEDGER_ECHAIN, LEDGER_ENOMEM. The tx keeps its own copy of the bytes; free it with
 * ledger_tx_free (also safe on a zeroed, never-decoded tx). */
TEM_WUR int ledger_tx_decode(const uint8_t *buf, size_t len, const ledger_tx_limits *lim, ledger_tx *out);
/* Verifies the signature over SHA-256(body): see ledger_secp_verify for the codes. */
TEM_WUR int ledger_tx_verify(const ledger_tx *tx);
void ledger_tx_free(ledger_tx *tx);
/* Serialises `body` (signer is filled in from `sec`), signs it and returns a serialised SignedTx
 * in *out (tem_malloc'd, caller frees) and its txid if `txid` is not NULL. */
TEM_WUR int ledger_tx_build(Tem__V1__TxBody *body, const uint8_t sec[LEDGER_SECP_SEC_BYTES],
                            uint8_t **out, size_t *out_len, uint8_t txid[LEDGER_HASH_BYTES]);
/* Name of a kind ("order", "cancel", ...), or NULL for an unknown one. */
const char *ledger_tx_kind_name(int kind_case);
bool ledger_tx_kind_is_admin(int kind_case);

/* The protobuf-c allocator that routes through tem_malloc (so OOM tests reach protobuf-c). */
extern ProtobufCAllocator ledger_pb_allocator;

/* ------------------------------------------------------------------ per-block arena */
typedef struct ledger_arena_chunk ledger_arena_chunk;
typedef struct {
    ledger_arena_chunk *head;
} ledger_arena;
/* Zeroed, 16-byte aligned memory that lives until ledger_arena_reset; NULL on OOM. */
void *ledger_arena_alloc(ledger_arena *a, size_t n);
char *ledger_arena_strdup(ledger_arena *a, const char *s);
void ledger_arena_reset(ledger_arena *a);

/* ------------------------------------------------------------------ state
 * The whole state is an ordered key-value map held in memory and mirrored in the LMDB table
 * "state". Its root is the root of a sparse Merkle tree over SHA-256(key) with shortcut leaves
 * (docs/ledger.md, "State tree"); a store keeps that tree in LMDB and updates it per block in
 * O(changed keys x log N). Key prefixes are owned by modules (docs/ledger.md, "State"). */
typedef struct ledger_state ledger_state;

TEM_WUR int ledger_state_new(ledger_state **out);
void ledger_state_free(ledger_state *st);
/* *val points into the state: read-only, valid until the next write to the state. Returns
 * LEDGER_OK or LEDGER_ENOTFOUND. */
TEM_WUR int ledger_state_get(ledger_state *st, const void *key, size_t klen, const uint8_t **val,
                             size_t *vlen);
/* Copies key and value in. LEDGER_OK, LEDGER_ENOMEM (state unchanged). */
TEM_WUR int ledger_state_put(ledger_state *st, const void *key, size_t klen, const void *val,
                             size_t vlen);
/* LEDGER_OK (also when absent), LEDGER_ENOMEM. */
TEM_WUR int ledger_state_del(ledger_state *st, const void *key, size_t klen);
/* Calls fn for every entry whose key starts with prefix, in key order; fn returns non-zero to
 * stop (that value is returned). fn must not write to the state. */
typedef int (*ledger_state_iter_fn)(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val,
                                    size_t vlen);
TEM_WUR int ledger_state_iter(ledger_state *st, const void *prefix, size_t plen,
                              ledger_state_iter_fn fn, void *ctx);
size_t ledger_state_count(ledger_state *st);
/* Root of the current state. A store's state at a block boundary answers from the store's
 * tree in O(1); otherwise the root is recomputed from every entry (O(N log N)).
 * LEDGER_OK or LEDGER_ENOMEM. */
TEM_WUR int ledger_state_root(ledger_state *st, uint8_t out[LEDGER_HASH_BYTES]);

/* A proof that a key has a value, or has none, under a state root (docs/ledger.md, "State tree
 * proofs"). sibling[i] is the hash of the subtree beside the key's path at depth i (32 zero bytes
 * for an empty one); the path ends at depth `depth` in the key's leaf (PRESENT), in an empty
 * subtree (ABSENT_EMPTY) or in another key's leaf (ABSENT_LEAF: leaf_kh/leaf_vh are that key's
 * hashes). For PRESENT, leaf_kh/leaf_vh are SHA-256 of the key and of its value. */
#define LEDGER_STATE_PROOF_DEPTH_MAX 256
#define LEDGER_STATE_PROOF_BYTES_MAX (4 + LEDGER_STATE_PROOF_DEPTH_MAX / 8 + 32 * LEDGER_STATE_PROOF_DEPTH_MAX + 64)
enum { LEDGER_PROOF_PRESENT = 0, LEDGER_PROOF_ABSENT_EMPTY = 1, LEDGER_PROOF_ABSENT_LEAF = 2 };
typedef struct {
    uint8_t kind;
    uint16_t depth;
    uint8_t sibling[LEDGER_STATE_PROOF_DEPTH_MAX][LEDGER_HASH_BYTES];
    uint8_t leaf_kh[LEDGER_HASH_BYTES], leaf_vh[LEDGER_HASH_BYTES];
} ledger_state_proof;
/* Proof for key (present or absent) under the current root, recomputed from every entry (O(N);
 * ledger_store_prove answers from the store's tree in O(log N)). LEDGER_OK, LEDGER_ENOMEM. */
TEM_WUR int ledger_state_prove(ledger_state *st, const void *key, size_t klen, ledger_state_proof *out);
/* 0 when the proof shows (key, val) under root, -1 otherwise (including absence proofs). */
TEM_WUR int ledger_state_proof_verify(const uint8_t root[LEDGER_HASH_BYTES], const void *key,
                                      size_t klen, const void *val, size_t vlen,
                                      const ledger_state_proof *p);
/* 0 when the proof shows that key has no value under root, -1 otherwise. */
TEM_WUR int ledger_state_proof_verify_absent(const uint8_t root[LEDGER_HASH_BYTES], const void *key,
                                             size_t klen, const ledger_state_proof *p);
/* The wire form (docs/ledger.md): u8 version 1 || u8 kind || u16le depth || bitmap of non-empty
 * siblings (ceil(depth/8) bytes, MSB first) || those siblings || leaf_kh || leaf_vh (not for
 * ABSENT_EMPTY). encode: LEDGER_OK, LEDGER_EINVAL, LEDGER_EFULL (cap too small; at most
 * LEDGER_STATE_PROOF_BYTES_MAX is needed). decode: LEDGER_OK, LEDGER_EDECODE (any malformed or
 * non-canonical input). */
TEM_WUR int ledger_state_proof_encode(const ledger_state_proof *p, uint8_t *out, size_t cap, size_t *len);
TEM_WUR int ledger_state_proof_decode(const uint8_t *buf, size_t len, ledger_state_proof *p);

/* Savepoints: writes after a savepoint can be undone. Contracts take one per tx so a refused tx
 * leaves nothing behind. Savepoints nest; rollback/release take the value savepoint returned. */
TEM_WUR int ledger_state_savepoint(ledger_state *st, size_t *mark);
void ledger_state_rollback(ledger_state *st, size_t mark);
void ledger_state_release(ledger_state *st, size_t mark);

/* Copies every entry into a new state (tests, offline tools). */
TEM_WUR int ledger_state_clone(ledger_state *st, ledger_state **out);

/* Nonce table owned by the ledger: key 'n' || signer(33) -> u64le next nonce. */
uint64_t ledger_state_nonce(ledger_state *st, const uint8_t signer[LEDGER_SECP_PUB_BYTES]);

/* ------------------------------------------------------------------ blocks */
typedef struct {
    uint64_t height;
    uint64_t time_ms;
    const ledger_genesis *genesis;
    ledger_arena *arena; /* receipts' nested allocations come from here */
} ledger_block_ctx;

/* The contracts' side of block execution (contracts/ supplies one, tests supply simple ones). */
typedef struct {
    void *ctx;
    /* Before the block's txs: work due by the block time (gate closure, settlement). */
    int (*begin_block)(void *ctx, ledger_state *st, const ledger_block_ctx *b);
    /* One tx whose signature, chain id and nonce are already checked (the nonce is already
     * consumed). A refusal is a receipt with a non-zero code, not an error; a returned error
     * (ENOMEM, EIO) aborts the whole block. Nested receipt memory comes from b->arena. */
    int (*exec_tx)(void *ctx, ledger_state *st, const ledger_block_ctx *b, const ledger_tx *tx,
                   Tem__V1__Receipt *rc);
    /* After the last tx. May be NULL, like begin_block. */
    int (*end_block)(void *ctx, ledger_state *st, const ledger_block_ctx *b);
} ledger_executor;

/* Block hash over the fixed encoding of docs/ledger.md ("Blocks"). LEDGER_EBLOCK if a hash
 * field has the wrong length. */
TEM_WUR int ledger_block_hash(const Tem__V1__BlockHeader *h, uint8_t out[LEDGER_HASH_BYTES]);
/* The digest validators sign in COMMIT votes and certificates. */
void ledger_commit_digest(const uint8_t genesis_hash[32], uint64_t view, uint64_t height,
                          const uint8_t block_hash[32], uint8_t out[LEDGER_HASH_BYTES]);
/* Checks a certificate: height and block hash as given, >= 2f+1 distinct known validators,
 * each signature valid. LEDGER_OK, LEDGER_ECERT, LEDGER_EDECODE. */
TEM_WUR int ledger_cert_verify(const ledger_genesis *g, const uint8_t *cert, size_t len,
                               uint64_t height, const uint8_t block_hash[32]);

/* ------------------------------------------------------------------ the store */
typedef struct ledger_store ledger_store;

/* Opens (creating if needed) the store in directory `dir` for genesis g (borrowed; must
 * outlive the store). A new store is initialised from the genesis via `init` (may be NULL),
 * which writes the initial state. An existing store must have the same genesis hash
 * (LEDGER_EGENESIS otherwise). The state is loaded into memory. LEDGER_EIO, LEDGER_ENOMEM. */
TEM_WUR int ledger_store_open(const char *dir, const ledger_genesis *g,
                              int (*init)(void *ctx, ledger_state *st, const ledger_genesis *g),
                              void *init_ctx, ledger_store **out);
void ledger_store_close(ledger_store *s);
/* Validator `index` of `count` writes its tree checkpoints (docs/ledger.md, "Tree checkpoints")
 * at heights of its own phase, (index + 1/2) / count of the way between two heights that are
 * multiples of the checkpoint interval: a
 * checkpoint's commit is the slowest a block has, and validators that take it at different
 * heights leave a quorum that is not taking it. Local to the store: the roots are the same.
 * Call before the first apply; without it the phase is that of the last checkpoint. */
void ledger_store_stagger_checkpoints(ledger_store *s, uint32_t index, uint32_t count);
/* Scratch stores only (temctl replay's re-execution, benches): commits stop waiting for the
 * disk (LMDB's MDB_NOSYNC), so a crash may lose or damage the store. LEDGER_OK or LEDGER_EIO. */
TEM_WUR int ledger_store_scratch(ledger_store *s);
uint64_t ledger_store_height(const ledger_store *s);
/* Blocks 1..base are not held: 0 for a store built from the genesis, h for one installed from a
 * state-sync snapshot of height h (docs/ledger.md, "State sync"), whose history starts at h+1. */
uint64_t ledger_store_base_height(const ledger_store *s);
/* Hash of the last block (the genesis hash at height 0). */
void ledger_store_last_hash(const ledger_store *s, uint8_t out[LEDGER_HASH_BYTES]);
uint64_t ledger_store_last_time(const ledger_store *s);
/* Root of the current state and of the last block's receipts (what the next header carries). */
void ledger_store_roots(const ledger_store *s, uint8_t state_root[32], uint8_t receipts_root[32]);
/* The in-memory state at the last applied block. Read-only for callers outside block apply. */
ledger_state *ledger_store_state(ledger_store *s);
const ledger_genesis *ledger_store_genesis(const ledger_store *s);

/* Builds the serialised Block for the next height from serialised SignedTxs (each decoded,
 * nothing else checked). *out is tem_malloc'd. */
TEM_WUR int ledger_block_build(ledger_store *s, const uint8_t *const *txs, const size_t *tx_lens,
                               size_t n, uint64_t time_ms, const uint8_t proposer[32],
                               uint8_t **out, size_t *out_len);
/* The same from txs already decoded (borrowed for the call): nothing is decoded or hashed again.
 * The bytes equal ledger_block_build's for the same txs. LEDGER_EINVAL (n > max_block_txs),
 * LEDGER_ENOMEM. */
TEM_WUR int ledger_block_build_txs(ledger_store *s, const ledger_tx *const *txs, size_t n, uint64_t time_ms,
                                   const uint8_t proposer[32], uint8_t **out, size_t *out_len);

enum {
    LEDGER_APPLY_NO_CERT = 1,    /* offline execution (temctl exec, tests): no certificate */
    LEDGER_APPLY_SIGS_OK = 2,    /* the caller already verified every tx signature */
};

typedef struct {
    uint64_t height;
    uint8_t block_hash[32];
    uint8_t state_root[32];
    uint8_t receipts_root[32];
    uint32_t n_txs, n_refused;
} ledger_apply_info;

/* ------------------------------------------------------------------ block view
 * A block decoded once (docs/ledger.md, "Block view"): built when a proposal or a fetched block
 * arrives, then passed to validation, apply and the node's bookkeeping, so no step unpacks or
 * hashes a tx again. The block and its SignedTxs are split at the wire level; each tx is either
 * recognised by a ledger_tx_source (a tx the caller holds decoded, e.g. in its mempool) or
 * decoded once with ledger_tx_decode. */
typedef struct {
    const uint8_t *bytes;  /* the SignedTx as it sits in the block: points into view->block */
    size_t len;
    const ledger_tx *tx;   /* decoded: &own, or the source's (borrowed); NULL if not decoded */
    ledger_tx own;
    bool verified;         /* signature known good (as the source said); the caller may set it */
} ledger_view_tx;

/* Where a view finds txs its caller already holds decoded. lookup returns a decoded tx whose
 * serialised SignedTx is exactly (stx, len), or NULL, and sets *verified when its signature is
 * known good. The tx must stay valid, and unchanged, until release(ctx, tx) is called for it:
 * ledger_block_view_free does that once for every tx lookup returned (release may be NULL when
 * the txs outlive every view). Worker threads may read a borrowed tx (ledger_block_view_verify,
 * ledger_store_apply_view); lookup and release run on the thread that builds and frees. */
typedef struct {
    const ledger_tx *(*lookup)(void *ctx, const uint8_t *stx, size_t len, bool *verified);
    void (*release)(void *ctx, const ledger_tx *tx);
    void *ctx;
} ledger_tx_source;

typedef struct {
    const uint8_t *block;  /* the serialised Block */
    size_t block_len;
    uint8_t *block_owned;  /* tem_free'd with the view, or NULL when the bytes are borrowed */
    Tem__V1__BlockHeader *header;      /* owned; NULL when the block has none */
    int hash_rc;                       /* LEDGER_OK when block_hash is set, else EBLOCK */
    uint8_t block_hash[LEDGER_HASH_BYTES];
    size_t n;                          /* txs in the block */
    ledger_view_tx *txs;               /* owned, n entries */
    uint8_t (*txids)[LEDGER_HASH_BYTES]; /* owned, n entries (valid when tx_rc is LEDGER_OK) */
    int tx_rc;       /* LEDGER_OK, the first tx's decode code, or EBLOCK (more than max txs) */
    bool tx_root_ok; /* the header's tx_root matches the txids */
    ledger_tx_source src; /* where borrowed txs go back to (zeroed: none) */
} ledger_block_view;

/* Builds the view of `block` (borrowed; must outlive the view unless `owned` is that buffer,
 * which the view then frees). src (copied) may be NULL. Header, tx decode and tx root problems are
 * recorded in the view (hash_rc, tx_rc, tx_root_ok) and reported by the checks below in their
 * usual order. Returns LEDGER_EDECODE (the block or its header does not parse), LEDGER_ENOMEM;
 * on error nothing is kept and `owned` stays the caller's. */
TEM_WUR int ledger_block_view_build(const ledger_genesis *g, const uint8_t *block, size_t block_len,
                                    uint8_t *owned, const ledger_tx_source *src, ledger_block_view *out);
/* Frees what the view owns and gives its borrowed txs back to their source. Safe on a zeroed
 * view. */
void ledger_block_view_free(ledger_block_view *v);
/* Verifies the signatures of the view's txs not yet marked verified on `threads` threads (the
 * caller's and threads-1 more; at most LEDGER_VIEW_VERIFY_THREADS, and no more than one per 8
 * signatures left to check: none is started when every tx is marked) and marks those that pass.
 * A tx that fails stays unmarked, so ledger_store_apply_view verifies it again and reports it
 * in its usual order (after the header and certificate checks). Nothing is done for a view whose
 * txs did not decode. A thread that cannot be started is replaced by the caller's. */
#define LEDGER_VIEW_VERIFY_THREADS 8
void ledger_block_view_verify(ledger_block_view *v, unsigned threads);
/* Verifying ahead: helper threads check the signatures of views queued with
 * ledger_verifier_submit while the caller applies earlier blocks; ledger_verifier_wait(v) joins
 * in on v's remaining txs and returns once every one of them is checked (marked as
 * ledger_block_view_verify marks them). A submitted view must not be touched or freed until its
 * wait returns; views are waited for in the order submitted. At most LEDGER_VERIFIER_QUEUE views
 * are queued (submit returns LEDGER_EFULL beyond). new: LEDGER_OK or LEDGER_ENOMEM; with 0
 * threads, wait does all the work. */
#define LEDGER_VERIFIER_QUEUE 16
typedef struct ledger_verifier ledger_verifier;
TEM_WUR int ledger_verifier_new(unsigned threads, ledger_verifier **out);
void ledger_verifier_free(ledger_verifier *vf);
TEM_WUR int ledger_verifier_submit(ledger_verifier *vf, ledger_block_view *v);
void ledger_verifier_wait(ledger_verifier *vf, ledger_block_view *v);
/* The block hash from a serialised Block, decoding only its header. LEDGER_EDECODE, EBLOCK. */
TEM_WUR int ledger_block_hash_bytes(const uint8_t *block, size_t len, uint8_t out[LEDGER_HASH_BYTES]);
/* The 64-byte signature inside a serialised SignedTx, without decoding it: *sig points into
 * buf. LEDGER_EDECODE, LEDGER_ESIGLEN. */
TEM_WUR int ledger_tx_wire_sig(const uint8_t *buf, size_t len, const uint8_t **sig);

/* Checks the view's block and the certificate, executes it with ex and writes block,
 * certificate, tx index, receipts, state changes and roots in ONE LMDB write transaction. On any
 * error nothing is written and the in-memory state is rolled back. Signatures are verified
 * except for txs marked verified (or all, with LEDGER_APPLY_SIGS_OK). LEDGER_EHEIGHT, EPREV,
 * EROOT, ETIME, EBLOCK, ECERT, ENONCE, the tx decode/verify codes, EIO, EFULL, ENOMEM. */
TEM_WUR int ledger_store_apply_view(ledger_store *s, const ledger_block_view *v, const uint8_t *cert,
                                    size_t cert_len, const ledger_executor *ex, unsigned flags,
                                    ledger_apply_info *info);
/* Pipelining (docs/performance.md, "Pipelining"): the same as ledger_store_apply_view, but the
 * block's LMDB commit (page writes and fdatasync) is left running on the store's writer thread
 * when this returns. The in-memory state and the tip (ledger_store_height, _last_hash, _roots)
 * already name the block, so the caller can build and check the next height meanwhile; LMDB
 * readers still see the previous block until the commit ends (ledger_store_durable_height).
 * Returns the execution's result (then nothing is pending). Without a writer thread it is
 * ledger_store_apply_view. Waits first for a commit still pending (ledger_store_commit_wait)
 * and returns its error, if any, instead of applying. */
TEM_WUR int ledger_store_apply_view_pipelined(ledger_store *s, const ledger_block_view *v, const uint8_t *cert,
                                              size_t cert_len, const ledger_executor *ex, unsigned flags,
                                              ledger_apply_info *info);
/* Starts the writer thread for ledger_store_apply_view_pipelined; `notify` (may be NULL) is
 * called on that thread each time a commit ends, e.g. to wake the caller's loop (uv_async_send),
 * which then calls ledger_store_commit_wait. Stopped by ledger_store_close (which waits for the
 * commit). LEDGER_EINVAL if already started, LEDGER_ENOMEM. */
TEM_WUR int ledger_store_writer_start(ledger_store *s, void (*notify)(void *ctx), void *ctx);
/* No notify call after this returns (before the caller closes what notify wakes). s may be NULL. */
void ledger_store_writer_notify_off(ledger_store *s);
/* Whether an executed block's commit has not been waited for yet. */
bool ledger_store_commit_pending(const ledger_store *s);
/* Waits for the pending commit and ends it: LEDGER_OK when it is durable (or none was pending);
 * on failure (EIO, EDISKFULL, EFULL ...) the state and the tip are back at the block before it,
 * as LMDB holds them, and the error is returned once. Call from the thread that applies blocks;
 * every apply and ledger_store_close call it first. */
TEM_WUR int ledger_store_commit_wait(ledger_store *s);
/* The height whose block LMDB holds: ledger_store_height, or one less while a pipelined commit
 * is pending. Readers of blocks, receipts, the state table and the state tree use this one. */
uint64_t ledger_store_durable_height(const ledger_store *s);
/* Write transactions the store's LMDB environment has committed in its life (LMDB's last txn
 * id): one per block, one per tree checkpoint, one per ledger_store_meta_put. For an operator's
 * counter of the disk's synced commits; 0 if LMDB cannot say. */
uint64_t ledger_store_write_txns(const ledger_store *s);
/* The hash, state root and time of that block (the same as the tip's when nothing is pending). */
void ledger_store_durable_tip(const ledger_store *s, uint8_t hash[LEDGER_HASH_BYTES], uint8_t state_root[32],
                              uint64_t *time_ms);
/* ledger_store_apply_view on a view built here without a lookup. */
TEM_WUR int ledger_store_apply(ledger_store *s, const uint8_t *block, size_t block_len,
                               const uint8_t *cert, size_t cert_len, const ledger_executor *ex,
                               unsigned flags, ledger_apply_info *info);

/* Checks a proposed block for the next height without executing it: header links, roots, time
 * (after the parent's and at most `max_time_ms`), proposer, tx root, every tx's encoding and
 * chain id, and that each signer's nonces run on from its state nonce without gaps. Signatures
 * are NOT verified (the caller verifies the view's unverified txs off the loop thread). The
 * codes of ledger_store_apply. */
TEM_WUR int ledger_block_view_precheck(ledger_store *s, const ledger_block_view *v, uint64_t max_time_ms);

/* Copies of stored records (tem_malloc'd, caller frees). LEDGER_ENOTFOUND, LEDGER_EIO.
 * ledger_store_block also checks the bytes against the block's recorded hash (certificate,
 * successor or tip) and tx_root: LEDGER_ECORRUPT (logged) instead of a damaged block. */
TEM_WUR int ledger_store_block(ledger_store *s, uint64_t height, uint8_t **out, size_t *len);
TEM_WUR int ledger_store_cert(ledger_store *s, uint64_t height, uint8_t **out, size_t *len);
TEM_WUR int ledger_store_receipt(ledger_store *s, const uint8_t txid[32], uint64_t *height,
                                 uint32_t *pos, uint8_t **out, size_t *len);
/* The receipts of the n txs of block `height`, in tx order, read in one transaction (one lookup
 * per tx through the tx index would open a transaction and search two B-trees each): tx i's
 * Receipt is (*buf)[offs[i] .. offs[i+1]), empty when it has none. offs (n+1 entries) is the
 * caller's; *buf is tem_malloc'd (NULL when all are empty) and the caller frees it.
 * LEDGER_OK, LEDGER_ENOMEM, LEDGER_EIO; nothing is allocated on an error. */
TEM_WUR int ledger_store_block_receipts(ledger_store *s, uint64_t height, size_t n, size_t *offs, uint8_t **buf);
TEM_WUR int ledger_store_block_roots(ledger_store *s, uint64_t height, uint8_t state_root[32],
                                     uint8_t receipts_root[32]);
/* The start-up tail check of one stored block (1..height): the hash recorded for it in the
 * roots table, the block's header hash, its prev_hash link to the block below, its tx_root, every
 * tx's signature (not covered by the tx root) and its commit certificate (verified against the genesis validators for that hash). hash gets the
 * recorded hash (zeros if unreadable). LEDGER_OK; LEDGER_ECORRUPT with the reason in why;
 * LEDGER_ENOTFOUND (height out of range), LEDGER_EIO, LEDGER_ENOMEM. */
TEM_WUR int ledger_store_check_block(ledger_store *s, uint64_t height, uint8_t hash[32], char *why, size_t why_len);
/* Rewrites a damaged stored block with a copy fetched from a peer, in one write transaction,
 * only if that copy passes every check of ledger_store_check_block against this node's recorded
 * hash and cert verifies for it; the certificate is rewritten too when the stored one does not
 * verify. The bytes are borrowed. LEDGER_OK; LEDGER_EBLOCK or LEDGER_ECERT (nothing written,
 * reason in why); LEDGER_EHEIGHT, LEDGER_ECORRUPT (no recorded hash), EIO, EDISKFULL, EFULL. */
TEM_WUR int ledger_store_repair_block(ledger_store *s, uint64_t height, const uint8_t *blk, size_t blk_len,
                                      const uint8_t *cert, size_t cert_len, char *why, size_t why_len);
/* Proof of key (present or absent) against the current state root (ledger_store_roots), read
 * from the store's tree in O(log N). LEDGER_OK, LEDGER_EIO, LEDGER_ECORRUPT. */
TEM_WUR int ledger_store_prove(ledger_store *s, const void *key, size_t klen, ledger_state_proof *out);
/* Small named records (consensus votes, node metadata) in the same environment; a put is its
 * own write transaction, fsync'd before it returns. */
TEM_WUR int ledger_store_meta_put(ledger_store *s, const char *name, const void *val, size_t len);
TEM_WUR int ledger_store_meta_get(ledger_store *s, const char *name, uint8_t **out, size_t *len);

/* Test hook: called at named points inside ledger_store_apply (1 = after the block record,
 * 2 = after receipts, 3 = after state, 4 = just before commit, 5 = after commit). */
void ledger_store_set_hook(ledger_store *s, void (*hook)(int point));

#endif
