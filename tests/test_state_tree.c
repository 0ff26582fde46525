/* test_state_tree.c: Check suite for the state tree (ledger/smt.c, docs/ledger.md "State
 * tree"): roots and proofs against a naive recomputation written here from the documented
 * definition, over many seeds; proofs that must fail when tampered; deletes and re-inserts; the
 * LMDB tree kept by the store block by block; a SIGKILL inside a block's apply; and the worked
 * example of docs/ledger.md byte for byte. */
#include "ledger/ledger_internal.h"
#include "tests/ledger_fixture.h"
#include "tests/store_fixture.h"

#include <check.h>
#include <lmdb.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------------------------------------------ the naive reference */
typedef struct {
    uint8_t kh[32], vh[32];
} item;

static int bit_of(const uint8_t h[32], unsigned d) { return (h[d / 8] >> (7 - d % 8)) & 1; }

/* The documented definition, literally: no key -> 32 zero bytes; one key -> its leaf
 * SHA-256(0x00 || kh || vh); more -> SHA-256(0x01 || left || right) split on bit d. */
static void naive_root(const item *it, size_t n, unsigned d, uint8_t out[32]) {
    if (n == 0) {
        memset(out, 0, 32);
        return;
    }
    uint8_t buf[65];
    if (n == 1) {
        buf[0] = 0;
        memcpy(buf + 1, it[0].kh, 32);
        memcpy(buf + 33, it[0].vh, 32);
        ledger_sha256(out, buf, 65);
        return;
    }
    item *l = malloc(n * sizeof *l), *r = malloc(n * sizeof *r);
    size_t nl = 0, nr = 0;
    for (size_t i = 0; i < n; i++) {
        if (bit_of(it[i].kh, d)) r[nr++] = it[i];
        else l[nl++] = it[i];
    }
    buf[0] = 1;
    naive_root(l, nl, d + 1, buf + 1);
    naive_root(r, nr, d + 1, buf + 33);
    ledger_sha256(out, buf, 65);
    free(l);
    free(r);
}

typedef struct {
    item *it;
    size_t n, cap;
} items;

static int collect(void *ctx, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl) {
    items *c = ctx;
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 256;
        c->it = realloc(c->it, c->cap * sizeof *c->it);
    }
    ledger_sha256(c->it[c->n].kh, k, kl);
    ledger_sha256(c->it[c->n].vh, vl ? (const void *)v : "", vl);
    c->n++;
    return 0;
}

static void naive_state_root(ledger_state *st, uint8_t out[32]) {
    items c = {0};
    ck_assert_int_eq(ledger_state_iter(st, NULL, 0, collect, &c), LEDGER_OK);
    ck_assert_uint_eq(c.n, ledger_state_count(st));
    naive_root(c.it, c.n, 0, out);
    free(c.it);
}

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* ------------------------------------------------------------------ proofs */
static void check_proof_and_tampering(const uint8_t root[32], const void *key, size_t klen, const void *val,
                                      size_t vlen, const ledger_state_proof *p, uint64_t *rng) {
    bool present = val != NULL;
    if (present) {
        ck_assert_int_eq(p->kind, LEDGER_PROOF_PRESENT);
        ck_assert_int_eq(ledger_state_proof_verify(root, key, klen, val, vlen, p), 0);
        ck_assert_int_eq(ledger_state_proof_verify_absent(root, key, klen, p), -1);
    } else {
        ck_assert_int_ne(p->kind, LEDGER_PROOF_PRESENT);
        ck_assert_int_eq(ledger_state_proof_verify_absent(root, key, klen, p), 0);
        ck_assert_int_eq(ledger_state_proof_verify(root, key, klen, "", 0, p), -1);
    }
#define VERIFY(q) (present ? ledger_state_proof_verify(root, key, klen, val, vlen, (q)) \
                           : ledger_state_proof_verify_absent(root, key, klen, (q)))
    /* the wire form round-trips, and every truncation or extension is refused */
    static uint8_t enc[LEDGER_STATE_PROOF_BYTES_MAX + 1];
    size_t len;
    ck_assert_int_eq(ledger_state_proof_encode(p, enc, sizeof enc, &len), LEDGER_OK);
    static ledger_state_proof q;
    ck_assert_int_eq(ledger_state_proof_decode(enc, len, &q), LEDGER_OK);
    ck_assert_int_eq(VERIFY(&q), 0);
    for (size_t cut = 0; cut < len; cut += 1 + len / 9)
        ck_assert_int_eq(ledger_state_proof_decode(enc, cut, &q), LEDGER_EDECODE);
    enc[len] = 0;
    ck_assert_int_eq(ledger_state_proof_decode(enc, len + 1, &q), LEDGER_EDECODE);
    /* one flipped bit anywhere in the encoding never verifies the same claim */
    for (int t = 0; t < 8; t++) {
        size_t at = rng_next(rng) % len;
        uint8_t bitv = (uint8_t)(1u << (rng_next(rng) % 8));
        enc[at] ^= bitv;
        if (ledger_state_proof_decode(enc, len, &q) == LEDGER_OK)
            ck_assert_msg(VERIFY(&q) == -1, "flip at %zu of %zu verifies", at, len);
        enc[at] ^= bitv;
    }
    /* structural tampering: a sibling, the depth, the kind, the terminal leaf */
    q = *p;
    if (q.depth > 0) {
        unsigned i = (unsigned)(rng_next(rng) % q.depth);
        q.sibling[i][rng_next(rng) % 32] ^= 1;
        ck_assert_int_eq(VERIFY(&q), -1);
        q = *p;
        q.depth--;
        ck_assert_int_eq(VERIFY(&q), -1);
        q = *p;
    }
    q.depth++;
    ck_assert_int_eq(VERIFY(&q), -1);
    q = *p;
    q.kind = (uint8_t)((q.kind + 1) % 3);
    ck_assert_int_eq(VERIFY(&q), -1);
    q = *p;
    if (q.kind != LEDGER_PROOF_ABSENT_EMPTY) {
        q.leaf_vh[rng_next(rng) % 32] ^= 1;
        ck_assert_int_eq(VERIFY(&q), -1);
    }
#undef VERIFY
}

/* Closes a test's store and removes its folder (the name fx_tmpdir allocated). */
static void store_drop(ledger_store *s, char *dir) {
    ledger_store_close(s);
    fx_rmrf(dir);
    free(dir);
}

/* ------------------------------------------------------------------ in-memory states */
START_TEST(random_states_match_the_naive_root_and_insertion_order_does_not_matter) {
    for (uint64_t seed = 1; seed <= 60; seed++) {
        uint64_t rng = seed * 0x9E3779B97F4A7C15ull;
        ledger_state *a, *b;
        ck_assert_int_eq(ledger_state_new(&a), LEDGER_OK);
        size_t pool = 1 + rng_next(&rng) % 300;
        int steps = (int)(rng_next(&rng) % 800);
        for (int i = 0; i < steps; i++) {
            char k[24], v[24];
            int kl = snprintf(k, sizeof k, "k%zu", (size_t)(rng_next(&rng) % pool));
            if (rng_next(&rng) % 4 == 0) ck_assert_int_eq(ledger_state_del(a, k, (size_t)kl), LEDGER_OK);
            else {
                int vl = snprintf(v, sizeof v, "v%llu", (unsigned long long)(rng_next(&rng) % 1000));
                ck_assert_int_eq(ledger_state_put(a, k, (size_t)kl, v, (size_t)vl), LEDGER_OK);
            }
            if (i % 97 == 0) {
                uint8_t r1[32], r2[32];
                ck_assert_int_eq(ledger_state_root(a, r1), LEDGER_OK);
                naive_state_root(a, r2);
                ck_assert_msg(memcmp(r1, r2, 32) == 0, "seed %llu step %d", (unsigned long long)seed, i);
            }
        }
        uint8_t ra[32], rn[32], rb[32];
        ck_assert_int_eq(ledger_state_root(a, ra), LEDGER_OK);
        naive_state_root(a, rn);
        ck_assert_msg(memcmp(ra, rn, 32) == 0, "seed %llu", (unsigned long long)seed);
        /* the same entries inserted in another (shuffled) order give the same root */
        items c = {0};
        ck_assert_int_eq(ledger_state_new(&b), LEDGER_OK);
        typedef struct { char k[24], v[24]; } kv;
        kv *all = calloc(pool + 1, sizeof *all);
        size_t nall = 0;
        for (size_t i = 0; i < pool; i++) {
            char k[24];
            int kl = snprintf(k, sizeof k, "k%zu", i);
            const uint8_t *v;
            size_t vl;
            if (ledger_state_get(a, k, (size_t)kl, &v, &vl) != LEDGER_OK) continue;
            memcpy(all[nall].k, k, (size_t)kl + 1);
            memcpy(all[nall].v, v, vl);
            all[nall].v[vl] = 0;
            nall++;
        }
        for (size_t i = nall; i > 1; i--) {
            size_t j = rng_next(&rng) % i;
            kv t = all[i - 1];
            all[i - 1] = all[j];
            all[j] = t;
        }
        for (size_t i = 0; i < nall; i++)
            ck_assert_int_eq(ledger_state_put(b, all[i].k, strlen(all[i].k), all[i].v, strlen(all[i].v)), LEDGER_OK);
        ck_assert_int_eq(ledger_state_root(b, rb), LEDGER_OK);
        ck_assert(memcmp(ra, rb, 32) == 0);
        /* proofs: every present key, and some absent ones */
        for (size_t i = 0; i < nall && i < 40; i++) {
            ledger_state_proof p;
            ck_assert_int_eq(ledger_state_prove(a, all[i].k, strlen(all[i].k), &p), LEDGER_OK);
            check_proof_and_tampering(ra, all[i].k, strlen(all[i].k), all[i].v, strlen(all[i].v), &p, &rng);
        }
        for (int i = 0; i < 20; i++) {
            char k[24];
            int kl = snprintf(k, sizeof k, "absent%d", i);
            ledger_state_proof p;
            ck_assert_int_eq(ledger_state_prove(a, k, (size_t)kl, &p), LEDGER_OK);
            check_proof_and_tampering(ra, k, (size_t)kl, NULL, 0, &p, &rng);
        }
        free(c.it);
        free(all);
        ledger_state_free(a);
        ledger_state_free(b);
    }
}
END_TEST

START_TEST(deletes_and_reinserts_return_to_the_old_root) {
    ledger_state *st;
    ck_assert_int_eq(ledger_state_new(&st), LEDGER_OK);
    uint8_t empty[32], zero[32] = {0}, r0[32], r[32];
    ck_assert_int_eq(ledger_state_root(st, empty), LEDGER_OK);
    ck_assert(memcmp(empty, zero, 32) == 0);
    for (int i = 0; i < 200; i++) {
        char k[16];
        int kl = snprintf(k, sizeof k, "key%d", i);
        ck_assert_int_eq(ledger_state_put(st, k, (size_t)kl, k, (size_t)kl), LEDGER_OK);
    }
    ck_assert_int_eq(ledger_state_root(st, r0), LEDGER_OK);
    /* a new key added and deleted again */
    ck_assert_int_eq(ledger_state_put(st, "extra", 5, "x", 1), LEDGER_OK);
    ck_assert_int_eq(ledger_state_root(st, r), LEDGER_OK);
    ck_assert(memcmp(r, r0, 32) != 0);
    ck_assert_int_eq(ledger_state_del(st, "extra", 5), LEDGER_OK);
    ck_assert_int_eq(ledger_state_root(st, r), LEDGER_OK);
    ck_assert(memcmp(r, r0, 32) == 0);
    /* existing keys deleted and put back with their values */
    for (int i = 0; i < 200; i += 3) {
        char k[16];
        int kl = snprintf(k, sizeof k, "key%d", i);
        ck_assert_int_eq(ledger_state_del(st, k, (size_t)kl), LEDGER_OK);
    }
    ck_assert_int_eq(ledger_state_root(st, r), LEDGER_OK);
    ck_assert(memcmp(r, r0, 32) != 0);
    for (int i = 0; i < 200; i += 3) {
        char k[16];
        int kl = snprintf(k, sizeof k, "key%d", i);
        ck_assert_int_eq(ledger_state_put(st, k, (size_t)kl, k, (size_t)kl), LEDGER_OK);
    }
    ck_assert_int_eq(ledger_state_root(st, r), LEDGER_OK);
    ck_assert(memcmp(r, r0, 32) == 0);
    /* all deleted: the empty root again */
    for (int i = 0; i < 200; i++) {
        char k[16];
        int kl = snprintf(k, sizeof k, "key%d", i);
        ck_assert_int_eq(ledger_state_del(st, k, (size_t)kl), LEDGER_OK);
    }
    ck_assert_int_eq(ledger_state_root(st, r), LEDGER_OK);
    ck_assert(memcmp(r, zero, 32) == 0);
    ledger_state_proof p;
    ck_assert_int_eq(ledger_state_prove(st, "key1", 4, &p), LEDGER_OK);
    ck_assert_int_eq(p.kind, LEDGER_PROOF_ABSENT_EMPTY);
    ck_assert_int_eq(p.depth, 0);
    ck_assert_int_eq(ledger_state_proof_verify_absent(r, "key1", 4, &p), 0);
    ledger_state_free(st);
}
END_TEST

/* ------------------------------------------------------------------ the store's LMDB tree */
/* Genesis: `genesis_n` entries 'y' || u32be(i). */
static uint32_t genesis_n;
static int seed_init(void *ctx, ledger_state *st, const ledger_genesis *g) {
    (void)ctx;
    (void)g;
    for (uint32_t i = 0; i < genesis_n; i++) {
        uint8_t k[5] = {'y'}, v[8];
        tem_put_u32be(k + 1, i);
        tem_put_u64le(v, i * 31u);
        int rc = ledger_state_put(st, k, 5, v, 8);
        if (rc) return rc;
    }
    return LEDGER_OK;
}

/* Executor: each tx makes 6 writes derived from its txid over a pool of 'x' keys and the
 * genesis keys: puts, deletes (a quarter) and re-puts, so blocks create, change and remove. */
static uint32_t pool_n = 300;
static int tree_exec_tx(void *ctx, ledger_state *st, const ledger_block_ctx *b, const ledger_tx *tx, Tem__V1__Receipt *rc) {
    (void)ctx;
    (void)b;
    (void)rc;
    for (uint8_t i = 0; i < 6; i++) {
        uint8_t h[32], in[33];
        memcpy(in, tx->txid, 32);
        in[32] = i;
        ledger_sha256(h, in, sizeof in);
        uint8_t k[5];
        uint32_t x = tem_get_u32le(h);
        if (h[4] & 1) {
            k[0] = 'x';
            tem_put_u32be(k + 1, x % pool_n);
        } else {
            k[0] = 'y';
            tem_put_u32be(k + 1, genesis_n ? x % genesis_n : 0);
        }
        int r = h[5] % 4 == 0 ? ledger_state_del(st, k, 5) : ledger_state_put(st, k, 5, h + 6, 1 + h[6] % 20);
        if (r) return r;
    }
    return LEDGER_OK;
}
static const ledger_executor TREE_EXEC = {.exec_tx = tree_exec_tx};

/* Builds and applies the next block of n txs from senders 2..2+senders-1. */
static int apply_block(ledger_store *s, uint32_t n, uint32_t senders, uint32_t salt, ledger_apply_info *info) {
    const ledger_genesis *g = ledger_store_genesis(s);
    uint8_t **txs = calloc(n ? n : 1, sizeof *txs);
    size_t *lens = calloc(n ? n : 1, sizeof *lens);
    uint64_t nonces[64];
    ck_assert_uint_le(senders, 64);
    for (uint32_t i = 0; i < senders; i++) {
        uint8_t sec[32], pub[33];
        fx_key(2 + i, sec, pub);
        nonces[i] = ledger_state_nonce(ledger_store_state(s), pub);
    }
    for (uint32_t i = 0; i < n; i++) txs[i] = fx_transfer(g->chain_id, 2 + i % senders, 2 + salt % 7, nonces[i % senders]++, 1 + salt, &lens[i]);
    uint8_t prop[64], ppub[32], *blk;
    size_t blen;
    fx_vkey(0, prop, ppub);
    uint64_t t = ledger_store_last_time(s) + 1000;
    int rc = ledger_block_build(s, (const uint8_t *const *)txs, lens, n, t, ppub, &blk, &blen);
    if (rc == LEDGER_OK) {
        rc = ledger_store_apply(s, blk, blen, NULL, 0, &TREE_EXEC, LEDGER_APPLY_NO_CERT | LEDGER_APPLY_SIGS_OK, info);
        tem_free(blk);
    }
    for (uint32_t i = 0; i < n; i++) tem_free(txs[i]);
    free(txs);
    free(lens);
    return rc;
}

/* The store's root equals the naive root of its state, and its O(log N) proofs are the same
 * proofs (byte for byte) as the full recomputation gives. */
static void check_store(ledger_store *s, uint64_t *rng) {
    uint8_t sr[32], rr[32], naive[32], mem[32];
    ledger_store_roots(s, sr, rr);
    ledger_state *st = ledger_store_state(s), *cl;
    naive_state_root(st, naive);
    ck_assert(memcmp(sr, naive, 32) == 0);
    ck_assert_int_eq(ledger_state_clone(st, &cl), LEDGER_OK);
    ck_assert_int_eq(ledger_state_root(cl, mem), LEDGER_OK);
    ck_assert(memcmp(mem, sr, 32) == 0);
    for (int i = 0; i < 12; i++) {
        uint8_t k[5] = {i % 2 ? 'x' : 'y'};
        tem_put_u32be(k + 1, (uint32_t)(rng_next(rng) % (pool_n + 5)));
        static ledger_state_proof pd, pm;
        ck_assert_int_eq(ledger_store_prove(s, k, 5, &pd), LEDGER_OK);
        ck_assert_int_eq(ledger_state_prove(cl, k, 5, &pm), LEDGER_OK);
        static uint8_t ed[LEDGER_STATE_PROOF_BYTES_MAX], em[LEDGER_STATE_PROOF_BYTES_MAX];
        size_t ld, lm;
        ck_assert_int_eq(ledger_state_proof_encode(&pd, ed, sizeof ed, &ld), LEDGER_OK);
        ck_assert_int_eq(ledger_state_proof_encode(&pm, em, sizeof em, &lm), LEDGER_OK);
        ck_assert_uint_eq(ld, lm);
        ck_assert(memcmp(ed, em, ld) == 0);
        const uint8_t *v;
        size_t vl;
        if (ledger_state_get(st, k, 5, &v, &vl) == LEDGER_OK) check_proof_and_tampering(sr, k, 5, v, vl, &pd, rng);
        else check_proof_and_tampering(sr, k, 5, NULL, 0, &pd, rng);
    }
    ledger_state_free(cl);
}

START_TEST(store_tree_follows_random_blocks_and_matches_the_naive_root) {
    ledger_genesis g;
    fx_genesis(&g, 4);
    for (uint64_t seed = 1; seed <= 6; seed++) {
        uint64_t rng = seed * 7919;
        genesis_n = (uint32_t)(rng_next(&rng) % 2000);
        pool_n = 1 + (uint32_t)(rng_next(&rng) % 400);
        char *dir = fx_tmpdir("tree");
        ledger_store *s;
        ck_assert_int_eq(ledger_store_open(dir, &g, seed_init, NULL, &s), LEDGER_OK);
        check_store(s, &rng);
        ledger_apply_info info;
        for (uint32_t h = 1; h <= 12; h++) {
            uint32_t n = (uint32_t)(rng_next(&rng) % 60);
            ck_assert_int_eq(apply_block(s, n, 8, (uint32_t)(seed * 100 + h), &info), LEDGER_OK);
            check_store(s, &rng);
        }
        /* a restart reads the same tree back */
        uint8_t sr[32], rr[32], sr2[32];
        ledger_store_roots(s, sr, rr);
        ledger_store_close(s);
        ck_assert_int_eq(ledger_store_open(dir, &g, seed_init, NULL, &s), LEDGER_OK);
        ledger_store_roots(s, sr2, rr);
        ck_assert(memcmp(sr, sr2, 32) == 0);
        check_store(s, &rng);
        store_drop(s, dir);
    }
    ledger_genesis_free(&g);
}
END_TEST

/* Two stores fed the same blocks have the same roots at every height (what every validator
 * relies on), and a block that deletes what the previous one created returns the tree to the
 * earlier root. */
static int undo_mode; /* 1: create 'z' keys, 2: delete them */
static int undo_exec_tx(void *ctx, ledger_state *st, const ledger_block_ctx *b, const ledger_tx *tx, Tem__V1__Receipt *rc) {
    (void)ctx;
    (void)b;
    (void)rc;
    (void)tx;
    for (uint32_t i = 0; i < 50; i++) {
        uint8_t k[5] = {'z'};
        tem_put_u32be(k + 1, i);
        int r = undo_mode == 1 ? ledger_state_put(st, k, 5, "val", 3) : ledger_state_del(st, k, 5);
        if (r) return r;
    }
    return LEDGER_OK;
}

START_TEST(store_delete_of_a_blocks_creations_returns_the_tree_to_the_earlier_root) {
    ledger_genesis g;
    fx_genesis(&g, 4);
    genesis_n = 1000;
    char *dir = fx_tmpdir("tree");
    ledger_store *s;
    ck_assert_int_eq(ledger_store_open(dir, &g, seed_init, NULL, &s), LEDGER_OK);
    const ledger_executor ex = {.exec_tx = undo_exec_tx};
    uint8_t prop[64], ppub[32];
    fx_vkey(0, prop, ppub);
    uint8_t roots[3][32], rr[32];
    ledger_store_roots(s, roots[0], rr);
    for (int step = 1; step <= 2; step++) {
        undo_mode = step;
        /* one empty-bodied block: the executor's writes come from begin_block-like exec of no tx,
         * so use one transfer tx to trigger exec_tx once */
        size_t tl;
        uint8_t sec[32], pub[33];
        fx_key(2, sec, pub);
        uint8_t *t = fx_transfer(g.chain_id, 2, 3, ledger_state_nonce(ledger_store_state(s), pub), 1, &tl), *blk;
        size_t bl;
        ck_assert_int_eq(ledger_block_build(s, (const uint8_t *const *)&t, &tl, 1, ledger_store_last_time(s) + 1000, ppub, &blk, &bl), LEDGER_OK);
        ck_assert_int_eq(ledger_store_apply(s, blk, bl, NULL, 0, &ex, LEDGER_APPLY_NO_CERT, NULL), LEDGER_OK);
        tem_free(blk);
        tem_free(t);
        ledger_store_roots(s, roots[step], rr);
    }
    ck_assert(memcmp(roots[0], roots[1], 32) != 0);
    /* The nonce entry of key 2 remains, so compare against a state with only that change:
     * the naive root of the current state, and a 'z' key proves absent. */
    uint8_t naive[32];
    naive_state_root(ledger_store_state(s), naive);
    ck_assert(memcmp(naive, roots[2], 32) == 0);
    ledger_state_proof p;
    uint8_t k[5] = {'z', 0, 0, 0, 7};
    ck_assert_int_eq(ledger_store_prove(s, k, 5, &p), LEDGER_OK);
    ck_assert_int_eq(ledger_state_proof_verify_absent(roots[2], k, 5, &p), 0);
    /* deleting the nonce too gives back the genesis root exactly */
    ledger_state *cl;
    ck_assert_int_eq(ledger_state_clone(ledger_store_state(s), &cl), LEDGER_OK);
    uint8_t nk[34], sec[32];
    nk[0] = 'n';
    fx_key(2, sec, nk + 1);
    ck_assert_int_eq(ledger_state_del(cl, nk, 34), LEDGER_OK);
    uint8_t back[32];
    ck_assert_int_eq(ledger_state_root(cl, back), LEDGER_OK);
    ck_assert(memcmp(back, roots[0], 32) == 0);
    ledger_state_free(cl);
    store_drop(s, dir);
    ledger_genesis_free(&g);
}
END_TEST


/* Roots after blocks 1..n (apply_block with n_tx txs from 6 senders, salt = height) of a store
 * that never fails or restarts: what the stores under test must reach. out has n + 1 rows. */
static void reference_roots(const ledger_genesis *g, uint32_t n, uint32_t n_tx, uint8_t (*out)[32]) {
    char *dir = fx_tmpdir("tree");
    ledger_store *ref;
    ledger_apply_info info;
    uint8_t rr[32];
    ck_assert_int_eq(ledger_store_open(dir, g, seed_init, NULL, &ref), LEDGER_OK);
    for (uint32_t h = 1; h <= n; h++) {
        ck_assert_int_eq(apply_block(ref, n_tx, 6, h, &info), LEDGER_OK);
        ledger_store_roots(ref, out[h], rr);
    }
    store_drop(ref, dir);
}

/* The 4-validator genesis with genesis_entries seeded entries and a pool of pool senders, and
 * the reference roots of its blocks 1..n (n_tx txs each) in out. */
static void reference_chain(ledger_genesis *g, uint32_t genesis_entries, uint32_t pool, uint32_t n, uint32_t n_tx,
                            uint8_t (*out)[32]) {
    fx_genesis(g, 4);
    genesis_n = genesis_entries;
    pool_n = pool;
    reference_roots(g, n, n_tx, out);
}

START_TEST(sigkill_inside_apply_leaves_tree_and_state_at_one_block_boundary) {
    ledger_genesis g;
    /* Reference: a store that is never killed, for the roots at heights 3 and 4. */
    uint8_t want[5][32], rr[32];
    ledger_apply_info info;
    reference_chain(&g, 1500, 200, 4, 30, want);
    const uint8_t *r3 = want[3], *r4 = want[4];
    /* Tree checkpoints every 2 blocks (block 4 is one), every 3 (block 4 is logged after the
     * checkpoint at 3) and the default (every block so far logged). */
    static const uint64_t EVERY[3] = {2, 3, 0};
    for (int run = 0; run < 15; run++) {
        int point = 1 + run % 5;
        uint64_t every = EVERY[run / 5];
        char *dir = fx_tmpdir("tree");
        ledger_store *s;
        ck_assert_int_eq(ledger_store_open(dir, &g, seed_init, NULL, &s), LEDGER_OK);
        ledger__store_tree_tune(s, every, 0);
        for (uint32_t h = 1; h <= 3; h++) ck_assert_int_eq(apply_block(s, 30, 6, h, &info), LEDGER_OK);
        ledger_store_close(s);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            ledger_store *cs;
            if (ledger_store_open(dir, &g, seed_init, NULL, &cs) != LEDGER_OK) _exit(3);
            ledger__store_tree_tune(cs, every, 0);
            fx_kill_at = point;
            ledger_store_set_hook(cs, fx_kill_hook);
            ledger_apply_info ci;
            (void)apply_block(cs, 30, 6, 4, &ci);
            _exit(4);
        }
        int wst;
        ck_assert_int_eq(waitpid(pid, &wst, 0), pid);
        ck_assert_msg(WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL, "point %d: child not killed", point);
        ck_assert_int_eq(ledger_store_open(dir, &g, seed_init, NULL, &s), LEDGER_OK);
        ledger__store_tree_tune(s, every, 0);
        uint8_t sr[32], naive[32];
        ledger_store_roots(s, sr, rr);
        naive_state_root(ledger_store_state(s), naive);
        /* the tree, the state table and the height agree, at block 3 or (after the commit) 4 */
        ck_assert_msg(memcmp(sr, naive, 32) == 0, "point %d, every %d: tree and state table differ", point, (int)every);
        if (point < 5) {
            ck_assert_uint_eq(ledger_store_height(s), 3);
            ck_assert(memcmp(sr, r3, 32) == 0);
            ck_assert_int_eq(apply_block(s, 30, 6, 4, &info), LEDGER_OK);
        }
        ck_assert_uint_eq(ledger_store_height(s), 4);
        ledger_store_roots(s, sr, rr);
        ck_assert_msg(memcmp(sr, r4, 32) == 0, "point %d, every %d: root after block 4 differs from the reference", point, (int)every);
        store_drop(s, dir);
    }
    ledger_genesis_free(&g);
}
END_TEST

/* ------------------------------------------------------------------ tree checkpoints */
/* The tree table holds the checkpoint the store says, exactly: its root (read from LMDB alone,
 * no cache) is the state root recorded for that height. */
static void check_checkpoint(ledger_store *s) {
    ledger__store_handles h;
    ledger__store_handles_get(s, &h);
    ck_assert_int_eq(ledger_store_commit_wait(s), LEDGER_OK);
    MDB_txn *txn;
    ck_assert_int_eq(mdb_txn_begin(h.env, NULL, MDB_RDONLY, &txn), 0);
    uint8_t got[32], want[32], rr[32];
    ck_assert_int_eq(ledger__smt_root_db(txn, h.tree, got), LEDGER_OK);
    mdb_txn_abort(txn);
    uint64_t c = ledger__store_tree_height(s);
    ck_assert_uint_le(c, ledger_store_height(s));
    ck_assert_int_eq(ledger_store_block_roots(s, c, want, rr), LEDGER_OK);
    ck_assert_msg(memcmp(got, want, 32) == 0, "tree table is not the checkpoint at %llu", (unsigned long long)c);
}

/* Random checkpoint intervals and cache bounds (down to a checkpoint every block, and to a
 * bound that forces one mid-interval), restarts at random heights with other settings: after
 * every block the root is the naive root, the proofs (cache, then LMDB) are the full
 * recomputation's byte for byte, and the table is the checkpoint it claims. */
START_TEST(tree_checkpoints_and_their_log_give_the_naive_root_at_every_block_and_restart) {
    ledger_genesis g;
    fx_genesis(&g, 4);
    int checkpoints = 0, by_bound = 0, restarts = 0;
    for (uint64_t seed = 1; seed <= 8; seed++) {
        uint64_t rng = seed * 104729;
        genesis_n = (uint32_t)(rng_next(&rng) % 1500);
        pool_n = 1 + (uint32_t)(rng_next(&rng) % 300);
        char *dir = fx_tmpdir("tree");
        ledger_store *s;
        ck_assert_int_eq(ledger_store_open(dir, &g, seed_init, NULL, &s), LEDGER_OK);
        uint64_t every = 1 + rng_next(&rng) % 6;
        size_t dmax = rng_next(&rng) % 2 ? 0 : 20 + rng_next(&rng) % 200;
        ledger__store_tree_tune(s, every, dmax);
        ledger_apply_info info;
        for (uint32_t h = 1; h <= 30; h++) {
            uint64_t before = ledger__store_tree_height(s);
            uint32_t n = (uint32_t)(rng_next(&rng) % 40);
            ck_assert_int_eq(apply_block(s, n, 8, (uint32_t)(seed * 1000 + h), &info), LEDGER_OK);
            uint64_t after = ledger__store_tree_height(s);
            if (after != before) {
                ck_assert_uint_eq(after, h);
                ck_assert_uint_eq(ledger__store_tree_dirty(s), 0);
                checkpoints++;
                if (h - before < every) by_bound++;
            } else {
                ck_assert_uint_lt(h - before, every);
            }
            /* proofs (anyone can ask for them, between blocks) read through the cache and
             * never add to it */
            size_t cached = ledger__store_tree_cached(s);
            check_store(s, &rng);
            ck_assert_uint_eq(ledger__store_tree_cached(s), cached);
            check_checkpoint(s);
            if (rng_next(&rng) % 6 == 0) {
                ledger_store_close(s);
                ck_assert_int_eq(ledger_store_open(dir, &g, seed_init, NULL, &s), LEDGER_OK);
                ck_assert_uint_eq(ledger_store_height(s), h);
                every = 1 + rng_next(&rng) % 6;
                ledger__store_tree_tune(s, every, dmax);
                check_store(s, &rng);
                restarts++;
            }
        }
        store_drop(s, dir);
    }
    ck_assert_int_gt(checkpoints, 20);
    ck_assert_int_gt(by_bound, 0);
    ck_assert_int_gt(restarts, 5);
    ledger_genesis_free(&g);
}
END_TEST


/* Validator v of 4's store, a checkpoint every 8 blocks at its own phase (set again at each
 * open, as temd does). */
static ledger_store *open_staggered(const char *dir, const ledger_genesis *g, uint32_t v) {
    ledger_store *s;
    ck_assert_int_eq(ledger_store_open(dir, g, seed_init, NULL, &s), LEDGER_OK);
    ledger__store_tree_tune(s, 8, 0);
    ledger_store_stagger_checkpoints(s, v, 4);
    return s;
}

/* Validators that stagger their checkpoints (ledger_store_stagger_checkpoints) take them at
 * heights of their own phase, never two at one height, and agree on every root; a restart
 * keeps the phase the caller sets again. */
START_TEST(staggered_checkpoints_fall_on_each_validators_phase_and_roots_agree) {
    ledger_genesis g;
    fx_genesis(&g, 4);
    genesis_n = 300;
    pool_n = 120;
    uint64_t rng = 7;
    char *dir[4];
    ledger_store *s[4];
    for (uint32_t v = 0; v < 4; v++) {
        dir[v] = fx_tmpdir("tree");
        s[v] = open_staggered(dir[v], &g, v);
    }
    ledger_apply_info info;
    for (uint32_t h = 1; h <= 21; h++) {
        uint8_t sr0[32], sr[32], rr[32];
        int taking = 0;
        for (uint32_t v = 0; v < 4; v++) {
            ck_assert_int_eq(apply_block(s[v], 20, 6, 500 + h, &info), LEDGER_OK);
            uint64_t want = h;
            while (want > 0 && (want + 2 * v + 1) % 8 != 0) want--; /* phase (2v + 1) * 8 / 8 */
            ck_assert_msg(ledger__store_tree_height(s[v]) == want, "validator %u at %u: checkpoint %llu, want %llu", v, h,
                          (unsigned long long)ledger__store_tree_height(s[v]), (unsigned long long)want);
            taking += want == h;
            ledger_store_roots(s[v], v ? sr : sr0, rr);
            if (v) ck_assert_msg(memcmp(sr, sr0, 32) == 0, "validator %u disagrees at %u", v, h);
            check_checkpoint(s[v]);
            if (h == 11) {
                ledger_store_close(s[v]);
                s[v] = open_staggered(dir[v], &g, v);
                check_store(s[v], &rng);
            }
        }
        ck_assert_int_le(taking, 1);
    }
    for (uint32_t v = 0; v < 4; v++) {
        store_drop(s[v], dir[v]);
    }
    ledger_genesis_free(&g);
}
END_TEST

/* The cache's memory is bounded: after a checkpoint the clean records above the bound are
 * dropped before the next block, and what blocks change is forced out by the dirty bound; the
 * roots stay the reference's either way. */
START_TEST(tree_cache_stays_within_its_bounds) {
    ledger_genesis g;
    uint8_t want[13][32], rr[32];
    reference_chain(&g, 1200, 200, 12, 25, want);
    char *dir = fx_tmpdir("tree");
    ledger_store *s;
    ledger_apply_info info;
    ck_assert_int_eq(ledger_store_open(dir, &g, seed_init, NULL, &s), LEDGER_OK);
    ledger__store_tree_tune(s, 1000, 150);
    ledger__store_tree_clean_max(s, 40);
    size_t prev_dirty = 1, prev_cached = 0;
    int dropped = 0;
    for (uint32_t h = 1; h <= 12; h++) {
        ck_assert_int_eq(apply_block(s, 25, 6, h, &info), LEDGER_OK);
        uint8_t sr[32];
        ledger_store_roots(s, sr, rr);
        ck_assert(memcmp(sr, want[h], 32) == 0);
        size_t dirty = ledger__store_tree_dirty(s), cached = ledger__store_tree_cached(s);
        ledger__smt_stats st;
        ledger__store_tree_stats(s, &st);
        ck_assert_uint_lt(dirty, 150);
        /* after a checkpoint (nothing dirty) over the bound, the block started from an empty
         * cache: it holds exactly what this block read */
        if (prev_dirty == 0 && prev_cached > 40) {
            ck_assert_uint_eq(cached, st.reads);
            dropped++;
        }
        prev_dirty = dirty;
        prev_cached = cached;
    }
    ck_assert_int_gt(dropped, 2);
    uint64_t rng = 3;
    check_store(s, &rng);
    store_drop(s, dir);
    ledger_genesis_free(&g);
}
END_TEST

/* A block that fails after its tree update (point 3) or whose commit fails (point 4), on a
 * logged block and on a checkpoint block: nothing changes (height, root, proofs), and the same
 * block applied again gives the root of a store that never failed. */
START_TEST(a_block_failing_after_its_tree_update_leaves_tree_and_proofs_at_the_block_before) {
    ledger_genesis g;
    ledger_apply_info info;
    uint8_t want[9][32], rr[32];
    reference_chain(&g, 800, 150, 8, 25, want);
    uint64_t rng = 99;
    for (int point = 3; point <= 4; point++) {
        char *dir = fx_tmpdir("tree");
        ledger_store *s;
        ck_assert_int_eq(ledger_store_open(dir, &g, seed_init, NULL, &s), LEDGER_OK);
        ledger__store_tree_tune(s, 3, 0); /* checkpoints at 3 and 6: 5 is logged, 6 is one */
        for (uint32_t h = 1; h <= 8; h++) {
            if (h == 5 || h == 6) {
                uint8_t sr[32];
                ledger__store_fail_at(s, point);
                ck_assert_int_eq(apply_block(s, 25, 6, h, &info), LEDGER_EIO);
                ck_assert_uint_eq(ledger_store_height(s), h - 1);
                ledger_store_roots(s, sr, rr);
                ck_assert(memcmp(sr, want[h - 1], 32) == 0);
                check_store(s, &rng);
                check_checkpoint(s);
                ck_assert_uint_eq(ledger__store_tree_height(s), 3);
            }
            ck_assert_int_eq(apply_block(s, 25, 6, h, &info), LEDGER_OK);
            uint8_t sr[32];
            ledger_store_roots(s, sr, rr);
            ck_assert_msg(memcmp(sr, want[h], 32) == 0, "point %d: root of block %u differs", point, h);
            check_store(s, &rng);
            check_checkpoint(s);
        }
        ck_assert_uint_eq(ledger__store_tree_height(s), 6);
        ledger_store_close(s);
        ck_assert_int_eq(ledger_store_open(dir, &g, seed_init, NULL, &s), LEDGER_OK);
        ck_assert_uint_eq(ledger_store_height(s), 8);
        check_store(s, &rng);
        store_drop(s, dir);
    }
    ledger_genesis_free(&g);
}
END_TEST

/* Damage to what an open rebuilds the tree from is refused (LEDGER_ECORRUPT), never run on:
 * a changed byte in a block's logged ops, a missing log record, a log of the wrong length, a
 * checkpoint height above the tip, a changed root node in the checkpoint's table. */
static void tamper_meta_or_log(const char *dir, int what) {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    ck_assert_int_eq(mdb_env_create(&env), 0);
    ck_assert_int_eq(mdb_env_set_maxdbs(env, 32), 0);
    ck_assert_int_eq(mdb_env_set_mapsize(env, (size_t)64 << 30), 0);
    ck_assert_int_eq(mdb_env_open(env, dir, MDB_NOTLS, 0600), 0);
    ck_assert_int_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    uint8_t key[8];
    tem_put_u64be(key, 5);
    MDB_val k = {8, key}, v;
    if (what == 4) {
        ck_assert_int_eq(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
        uint8_t h8[8];
        tem_put_u64le(h8, 99);
        k = (MDB_val){11, "tree_height"};
        v = (MDB_val){8, h8};
        ck_assert_int_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    } else if (what == 5) {
        /* the root record of the checkpoint */
        ck_assert_int_eq(mdb_dbi_open(txn, "tree", 0, &dbi), 0);
        uint8_t rk[1] = {0};
        k = (MDB_val){1, rk};
        ck_assert_int_eq(mdb_get(txn, dbi, &k, &v), 0);
        uint8_t *copy = malloc(v.mv_size);
        memcpy(copy, v.mv_data, v.mv_size);
        copy[10] ^= 1; /* in slot 0: the checkpoint's root node itself */
        v.mv_data = copy;
        ck_assert_int_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
        free(copy);
    } else {
        ck_assert_int_eq(mdb_dbi_open(txn, "treelog", 0, &dbi), 0);
        ck_assert_int_eq(mdb_get(txn, dbi, &k, &v), 0);
        ck_assert_uint_gt(v.mv_size, 65);
        if (what == 2) {
            ck_assert_int_eq(mdb_del(txn, dbi, &k, NULL), 0);
        } else {
            uint8_t *copy = malloc(v.mv_size);
            memcpy(copy, v.mv_data, v.mv_size);
            if (what == 1) copy[65 + 40] ^= 0x10; /* a byte of the second op's vh */
            v.mv_data = copy;
            if (what == 3) v.mv_size--;
            ck_assert_int_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
            free(copy);
        }
    }
    ck_assert_int_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

START_TEST(damaged_tree_log_or_checkpoint_is_refused_on_open) {
    ledger_genesis g;
    fx_genesis(&g, 4);
    genesis_n = 600;
    pool_n = 100;
    for (int what = 0; what <= 5; what++) {
        char *dir = fx_tmpdir("tree");
        ledger_store *s;
        ledger_apply_info info;
        ck_assert_int_eq(ledger_store_open(dir, &g, seed_init, NULL, &s), LEDGER_OK);
        ledger__store_tree_tune(s, 4, 0); /* checkpoint at 4, blocks 5 and 6 logged */
        for (uint32_t h = 1; h <= 6; h++) ck_assert_int_eq(apply_block(s, 20, 6, h, &info), LEDGER_OK);
        ck_assert_uint_eq(ledger__store_tree_height(s), 4);
        ledger_store_close(s);
        if (what) tamper_meta_or_log(dir, what);
        int rc = ledger_store_open(dir, &g, seed_init, NULL, &s);
        /* what 0: the control, untouched, opens at block 6 */
        if (what == 0) {
            ck_assert_int_eq(rc, LEDGER_OK);
            ck_assert_uint_eq(ledger_store_height(s), 6);
            ledger_store_close(s);
        } else {
            ck_assert_msg(rc == LEDGER_ECORRUPT, "damage %d: open gave %d", what, rc);
        }
        fx_rmrf(dir);
        free(dir);
    }
    ledger_genesis_free(&g);
}
END_TEST

/* ------------------------------------------------------------------ the LMDB layout itself */
/* Crafted paths (not SHA-256 outputs): clusters of keys sharing 0..200 leading bits, so nodes
 * fall in every group of the stored layout (4 levels a record, docs/ledger.md "Storage") and
 * subtrees collapse and split across record boundaries. The table is fed random batches of
 * inserts, rewrites and deletes (the first one large enough for the bulk build), committed one
 * by one; after each, the root equals the naive one and stored proofs verify. */
static void crafted_path(uint8_t kh[32], uint64_t *rng) {
    static const uint8_t bases[3][32] = {{0x00}, {0x5a, 0x5a, 0x5a, 0x5a}, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff}};
    memcpy(kh, bases[rng_next(rng) % 3], 32);
    unsigned shared = (unsigned)(rng_next(rng) % 201); /* keys may agree on up to ~200 bits */
    for (unsigned i = shared; i < 256; i++)
        if (rng_next(rng) & 1) kh[i / 8] ^= (uint8_t)(0x80 >> (i % 8));
}

static int item_cmp(const void *a, const void *b) { return memcmp(a, b, 32); }

START_TEST(stored_tree_with_crafted_deep_paths_matches_the_naive_root) {
    for (uint64_t seed = 1; seed <= 8; seed++) {
        uint64_t rng = seed * 0x2545F4914F6CDD1Dull;
        char *dir = fx_tmpdir("tree");
        MDB_env *env;
        MDB_dbi dbi;
        MDB_txn *txn;
        ck_assert_int_eq(mdb_env_create(&env), 0);
        ck_assert_int_eq(mdb_env_set_mapsize(env, (size_t)1 << 30), 0);
        ck_assert_int_eq(mdb_env_set_maxdbs(env, 2), 0);
        ck_assert_int_eq(mdb_env_open(env, dir, MDB_NOSYNC, 0600), 0);
        size_t pool_n = 1500;
        item *pool = malloc(pool_n * sizeof *pool);
        bool *live = calloc(pool_n, sizeof *live);
        for (size_t i = 0; i < pool_n; i++) {
            crafted_path(pool[i].kh, &rng);
            memset(pool[i].vh, 0, 32);
        }
        qsort(pool, pool_n, sizeof *pool, item_cmp);
        size_t w = 1; /* drop repeated paths */
        for (size_t i = 1; i < pool_n; i++)
            if (memcmp(pool[i].kh, pool[w - 1].kh, 32) != 0) pool[w++] = pool[i];
        pool_n = w;
        ledger__smt_op *ops = malloc(pool_n * sizeof *ops);
        item *cur = malloc(pool_n * sizeof *cur);
        for (int batch = 0; batch < 25; batch++) {
            size_t n = 0;
            /* batch 0 inserts 1,100 keys at once (the bulk build); later ones 1..60 changes */
            size_t want = batch == 0 ? 1100 : 1 + rng_next(&rng) % 60;
            bool *pick = calloc(pool_n, sizeof *pick);
            for (size_t t = 0; t < want; t++) pick[batch == 0 ? t * pool_n / want : rng_next(&rng) % pool_n] = true;
            for (size_t i = 0; i < pool_n; i++) {
                if (!pick[i]) continue;
                memcpy(ops[n].kh, pool[i].kh, 32);
                bool del = batch > 0 && live[i] && rng_next(&rng) % 3 == 0;
                ops[n].del = del;
                memset(ops[n].vh, 0, 32);
                if (!del) {
                    pool[i].vh[0] = (uint8_t)batch;
                    pool[i].vh[1] = (uint8_t)rng_next(&rng);
                    memcpy(ops[n].vh, pool[i].vh, 32);
                }
                live[i] = !del;
                n++;
            }
            free(pick);
            uint8_t root[32], want_root[32];
            ck_assert_int_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
            ck_assert_int_eq(mdb_dbi_open(txn, "tree", MDB_CREATE, &dbi), 0);
            ck_assert_int_eq(ledger__smt_update(txn, dbi, ops, n, root, NULL), LEDGER_OK);
            ck_assert_int_eq(mdb_txn_commit(txn), 0);
            size_t nc = 0;
            for (size_t i = 0; i < pool_n; i++)
                if (live[i]) cur[nc++] = pool[i];
            naive_root(cur, nc, 0, want_root);
            ck_assert_msg(memcmp(root, want_root, 32) == 0, "seed %llu batch %d", (unsigned long long)seed, batch);
            /* the stored root, and proofs read from the table, for present and absent paths */
            ck_assert_int_eq(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
            uint8_t again[32];
            ck_assert_int_eq(ledger__smt_root_db(txn, dbi, again), LEDGER_OK);
            ck_assert(memcmp(again, want_root, 32) == 0);
            for (int t = 0; t < 12; t++) {
                size_t i = rng_next(&rng) % pool_n;
                ledger_state_proof p;
                ck_assert_int_eq(ledger__smt_prove_db(txn, dbi, pool[i].kh, &p), LEDGER_OK);
                ck_assert_int_eq(ledger__smt_verify(want_root, pool[i].kh, live[i] ? pool[i].vh : NULL, &p), 0);
                ledger_state_proof pm;
                ledger__smt_leafrec *lr = malloc((nc ? nc : 1) * sizeof *lr);
                for (size_t j = 0; j < nc; j++) {
                    memcpy(lr[j].kh, cur[j].kh, 32);
                    memcpy(lr[j].vh, cur[j].vh, 32);
                }
                ledger__smt_prove_mem(lr, nc, pool[i].kh, &pm);
                free(lr);
                ck_assert_int_eq(p.kind, pm.kind);
                ck_assert_int_eq(p.depth, pm.depth);
                ck_assert(memcmp(p.sibling, pm.sibling, sizeof p.sibling) == 0);
            }
            mdb_txn_abort(txn);
        }
        free(ops);
        free(cur);
        free(pool);
        free(live);
        mdb_env_close(env);
        fx_rmrf(dir);
        free(dir);
    }
}
END_TEST

/* ------------------------------------------------------------------ the worked example */
/* docs/ledger.md, "Worked example": four entries, the root, and two proofs in wire form. */
static const char *const EX_KEYS[] = {"alice", "bob", "carol", "dave"};
static const char *const EX_VALS[] = {"100", "250", "75", "0"};
#define EX_PROVE_KEY "bob"
#define EX_PROVE_VAL "250"
#define EX_ABSENT_KEY "erin"
#define EX_ROOT "9eba054f1d7878d88a3715f054052626fc62adfdf5ec5bfb3bffb47d6bc6a559"
#define EX_PROOF_PRESENT                                                                           \
    "01000100" "80" "62b0bcd536511227965bc06e4e5540105cb2f152216e79876f5e2d4e6e4ff200"                \
    "81b637d8fcd2c6da6359e6963113a1170de795e4b725b84d1e0b4cfd9ec58ce9"                                 \
    "1e472b39b105d349bcd069c4a711b44a2fffb8e274714bb07ecfff69a9a7f67b"
#define EX_PROOF_ABSENT                                                                            \
    "01020300" "e0" "86a9d88f51490ff8bcff472ccd45652defed660ce4c69ee10b6f1bf8b055f15b"                \
    "e88595db6e2373140c77336108e543dd79e1c6420dff08568b120417c8af88b5"                                 \
    "26de7a4db8f1face1b17fbe08dcb445024002570a4d8de4d9d90638c36614fec"                                 \
    "61ea0803f8853523b777d414ace3130cd4d3f92de2cd7ff8695c337d79c2eeee"                                 \
    "5feceb66ffc86f38d952786c6d696c79c2dbc239dd4e91b46729d73a27fb57e9"

START_TEST(worked_example_of_docs_ledger_md_is_reproduced) {
    ledger_state *st;
    ck_assert_int_eq(ledger_state_new(&st), LEDGER_OK);
    for (size_t i = 0; i < sizeof EX_KEYS / sizeof EX_KEYS[0]; i++)
        ck_assert_int_eq(ledger_state_put(st, EX_KEYS[i], strlen(EX_KEYS[i]), EX_VALS[i], strlen(EX_VALS[i])), LEDGER_OK);
    uint8_t root[32], want[32];
    char hex[65];
    ck_assert_int_eq(ledger_state_root(st, root), LEDGER_OK);
    tem_hex(hex, root, 32);
    ck_assert_str_eq(hex, EX_ROOT);
    ck_assert_int_eq(tem_unhex(want, 32, EX_ROOT), 0);
    ledger_state_proof p;
    static uint8_t enc[LEDGER_STATE_PROOF_BYTES_MAX];
    static char ehex[2 * LEDGER_STATE_PROOF_BYTES_MAX + 1];
    size_t len;
    ck_assert_int_eq(ledger_state_prove(st, EX_PROVE_KEY, strlen(EX_PROVE_KEY), &p), LEDGER_OK);
    ck_assert_int_eq(ledger_state_proof_encode(&p, enc, sizeof enc, &len), LEDGER_OK);
    tem_hex(ehex, enc, len);
    ck_assert_str_eq(ehex, EX_PROOF_PRESENT);
    ck_assert_int_eq(ledger_state_proof_verify(want, EX_PROVE_KEY, strlen(EX_PROVE_KEY), EX_PROVE_VAL, strlen(EX_PROVE_VAL), &p), 0);
    ck_assert_int_eq(ledger_state_prove(st, EX_ABSENT_KEY, strlen(EX_ABSENT_KEY), &p), LEDGER_OK);
    ck_assert_int_eq(ledger_state_proof_encode(&p, enc, sizeof enc, &len), LEDGER_OK);
    tem_hex(ehex, enc, len);
    ck_assert_str_eq(ehex, EX_PROOF_ABSENT);
    ck_assert_int_eq(ledger_state_proof_verify_absent(want, EX_ABSENT_KEY, strlen(EX_ABSENT_KEY), &p), 0);
    ledger_state_free(st);
}
END_TEST

Suite *tree_suite(void) {
    Suite *s = suite_create("state_tree");
    TCase *t = tcase_create("core");
    tcase_set_timeout(t, 300);
    tcase_add_test(t, random_states_match_the_naive_root_and_insertion_order_does_not_matter);
    tcase_add_test(t, deletes_and_reinserts_return_to_the_old_root);
    tcase_add_test(t, store_tree_follows_random_blocks_and_matches_the_naive_root);
    tcase_add_test(t, store_delete_of_a_blocks_creations_returns_the_tree_to_the_earlier_root);
    tcase_add_test(t, sigkill_inside_apply_leaves_tree_and_state_at_one_block_boundary);
    tcase_add_test(t, tree_checkpoints_and_their_log_give_the_naive_root_at_every_block_and_restart);
    tcase_add_test(t, staggered_checkpoints_fall_on_each_validators_phase_and_roots_agree);
    tcase_add_test(t, tree_cache_stays_within_its_bounds);
    tcase_add_test(t, a_block_failing_after_its_tree_update_leaves_tree_and_proofs_at_the_block_before);
    tcase_add_test(t, damaged_tree_log_or_checkpoint_is_refused_on_open);
    tcase_add_test(t, stored_tree_with_crafted_deep_paths_matches_the_naive_root);
    tcase_add_test(t, worked_example_of_docs_ledger_md_is_reproduced);
    suite_add_tcase(s, t);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(tree_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
