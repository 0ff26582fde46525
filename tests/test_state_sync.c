/* test_state_sync.c: state snapshots (ledger/snapshot.c; docs/ledger.md, "State sync"). The
 * manifest and chunks of a store's snapshot are checked against an independent full
 * recomputation of the root, over many seeds and sizes; every kind of tampered chunk, manifest
 * and anchor is refused; a staged sync survives a close (a kill) and resumes with the chunks it
 * had; an installed snapshot has the source's root and then applies the same blocks. */
#include "ledger/ledger_internal.h"
#include "ledger/snapshot.h"
#include "tests/ledger_fixture.h"

#include <check.h>
#include <stdlib.h>

enum { SENDERS = 8 };

typedef struct {
    uint32_t n, seed;
} init_arg;

/* Genesis state: balances for the fixture's senders and n pseudo-random entries (keys of 1..40
 * bytes, values of 0..100 bytes), so chunks hold keys of every length and some are empty. */
static uint32_t rnd(uint32_t *s) {
    *s = *s * 1103515245u + 12345u;
    return *s >> 8;
}
static int init_state(void *ctx, ledger_state *st, const ledger_genesis *g) {
    (void)g;
    const init_arg *a = ctx;
    for (uint32_t i = 0; i < SENDERS; i++) {
        uint8_t sec[32], pub[33];
        fx_key(2 + i, sec, pub);
        int rc = fx_set_balance(st, pub, 1000000);
        if (rc) return rc;
    }
    uint32_t s = a->seed;
    for (uint32_t i = 0; i < a->n; i++) {
        uint8_t k[40], v[100];
        size_t kl = 1 + rnd(&s) % 40, vl = rnd(&s) % 101;
        for (size_t j = 0; j < kl; j++) k[j] = (uint8_t)rnd(&s);
        k[0] = 'r'; /* never a fixture balance or nonce key */
        for (size_t j = 0; j < vl; j++) v[j] = (uint8_t)rnd(&s);
        int rc = ledger_state_put(st, k, kl, v, vl);
        if (rc) return rc;
    }
    return LEDGER_OK;
}

static char *tmpdir(void) {
    char *d = tem_malloc(64);
    snprintf(d, 64, "/tmp/tem-sync-test-XXXXXX");
    TEM_ASSERT(mkdtemp(d) != NULL);
    return d;
}
static void rmdir_r(const char *d) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", d);
    TEM_ASSERT(system(cmd) == 0);
}

static ledger_store *open_store(const char *base, const char *name, const ledger_genesis *g, init_arg *a) {
    char p[128];
    snprintf(p, sizeof p, "%s/%s", base, name);
    ledger_store *s;
    ck_assert_int_eq(ledger_store_open(p, g, a ? init_state : NULL, a, &s), LEDGER_OK);
    return s;
}

/* The next block of a few transfers and its certificate from validators 0..2. */
static void next_block(ledger_store *s, uint32_t ntx, uint8_t **blk, size_t *bl, uint8_t **cert, size_t *cl) {
    const ledger_genesis *g = ledger_store_genesis(s);
    uint8_t *txs[16];
    size_t lens[16];
    uint64_t nonce[SENDERS];
    for (uint32_t i = 0; i < SENDERS; i++) {
        uint8_t sec[32], pub[33];
        fx_key(2 + i, sec, pub);
        nonce[i] = ledger_state_nonce(ledger_store_state(s), pub);
    }
    for (uint32_t i = 0; i < ntx; i++)
        txs[i] = fx_transfer(g->chain_id, 2 + i % SENDERS, 2 + (i + 1) % SENDERS, nonce[i % SENDERS]++, 1 + i, &lens[i]);
    uint8_t ps[64], pp[32];
    fx_vkey(0, ps, pp);
    uint64_t t = ledger_store_last_time(s) + 1000;
    ck_assert_int_eq(ledger_block_build(s, (const uint8_t *const *)txs, lens, ntx, t, pp, blk, bl), LEDGER_OK);
    for (uint32_t i = 0; i < ntx; i++) tem_free(txs[i]);
    uint8_t bh[32], d[32], sigs[3][64];
    ck_assert_int_eq(ledger_block_hash_bytes(*blk, *bl, bh), LEDGER_OK);
    ledger_commit_digest(g->hash, 0, ledger_store_height(s) + 1, bh, d);
    Tem__V1__CommitSig cs[3], *csp[3];
    for (int i = 0; i < 3; i++) {
        uint8_t vs[64], vp[32];
        fx_vkey((uint32_t)i, vs, vp);
        ledger_ed_sign(vs, d, 32, sigs[i]);
        tem__v1__commit_sig__init(&cs[i]);
        cs[i].validator = (uint32_t)i;
        cs[i].sig = (ProtobufCBinaryData){64, sigs[i]};
        csp[i] = &cs[i];
    }
    Tem__V1__CommitCertificate c = TEM__V1__COMMIT_CERTIFICATE__INIT;
    c.height = ledger_store_height(s) + 1;
    c.block_hash = (ProtobufCBinaryData){32, bh};
    c.sigs = csp;
    c.n_sigs = 3;
    *cl = tem__v1__commit_certificate__get_packed_size(&c);
    *cert = tem_malloc(*cl);
    tem__v1__commit_certificate__pack(&c, *cert);
}

static void apply_next(ledger_store *s, uint32_t ntx) {
    uint8_t *b, *c;
    size_t bl, cl;
    next_block(s, ntx, &b, &bl, &c, &cl);
    ck_assert_int_eq(ledger_store_apply(s, b, bl, c, cl, &FX_EXEC, 0, NULL), LEDGER_OK);
    tem_free(b);
    tem_free(c);
}

/* The reference: the root recomputed from every entry (smt.c's full recomputation). */
static void ref_root(ledger_store *s, uint8_t out[32]) {
    ledger_state *c;
    ck_assert_int_eq(ledger_state_clone(ledger_store_state(s), &c), LEDGER_OK);
    ck_assert_int_eq(ledger_state_root(c, out), LEDGER_OK);
    ledger_state_free(c);
}

typedef struct {
    ledger_snapshot *sn;
    size_t seen;
    bool bad;
} cmp_ctx;

START_TEST(manifest_and_chunks_match_a_full_recomputation) {
    static const uint32_t sizes[] = {0, 1, 2, 3, 17, 300, 5000};
    ledger_genesis g;
    fx_genesis(&g, 4);
    for (uint32_t seed = 1; seed <= 12; seed++) {
        uint32_t n = sizes[seed % 7];
        char *d = tmpdir();
        init_arg a = {n, seed};
        ledger_store *s = open_store(d, "src", &g, &a);
        for (int b = 0; b < 1 + (int)(seed % 3); b++) apply_next(s, 4);
        ledger_snapshot *sn;
        ck_assert_int_eq(ledger_snapshot_open(s, &sn), LEDGER_OK);
        ck_assert_int_eq(ledger_snapshot_build(sn), LEDGER_OK);
        unsigned depth = ledger_snapshot_depth(sn);
        ck_assert_uint_eq(depth, LEDGER_SNAP_DEPTH_DEFAULT);
        uint8_t root[32], want[32];
        ck_assert_int_eq(ledger_snap_manifest_root(depth, ledger_snapshot_hashes(sn), ledger_snapshot_counts(sn), root),
                         LEDGER_OK);
        ref_root(s, want);
        ck_assert_msg(memcmp(root, want, 32) == 0, "seed %u: manifest root differs from the recomputed root", seed);
        /* every chunk verifies alone, and together they are exactly the state */
        size_t total = 0;
        for (uint32_t c = 0; c < (1u << depth); c++) {
            ledger_snap_entry *e;
            size_t k;
            ck_assert_int_eq(ledger_snapshot_chunk(sn, c, &e, &k), LEDGER_OK);
            ck_assert_int_eq(ledger_snap_chunk_verify(depth, c, ledger_snapshot_hashes(sn)[c], ledger_snapshot_counts(sn)[c], e, k),
                             LEDGER_OK);
            for (size_t i = 0; i < k; i++) {
                const uint8_t *v;
                size_t vl;
                ck_assert_int_eq(ledger_state_get(ledger_store_state(s), e[i].key, e[i].klen, &v, &vl), LEDGER_OK);
                ck_assert(vl == e[i].vlen && memcmp(v, e[i].val, vl) == 0);
                ck_assert_uint_eq(ledger_snap_chunk_of(depth, e[i].key, e[i].klen), c);
            }
            total += k;
            tem_free(e);
        }
        ck_assert_uint_eq(total, ledger_state_count(ledger_store_state(s)));
        ck_assert_int_eq(ledger_snapshot_chunk(sn, 1u << depth, &(ledger_snap_entry *){NULL}, &(size_t){0}), LEDGER_EINVAL);
        ledger_snapshot_close(sn);
        ledger_store_close(s);
        rmdir_r(d);
        tem_free(d);
    }
    ledger_genesis_free(&g);
}
END_TEST

/* A key (grinding a counter) whose chunk is `want`. */
static void key_in_chunk(unsigned depth, uint32_t want, uint8_t key[9]) {
    key[0] = 'r';
    for (uint64_t i = 0;; i++) {
        tem_put_u64le(key + 1, i);
        if (ledger_snap_chunk_of(depth, key, 9) == want) return;
    }
}

START_TEST(tampered_chunks_and_manifests_are_refused) {
    ledger_genesis g;
    fx_genesis(&g, 4);
    char *d = tmpdir();
    init_arg a = {2000, 7};
    ledger_store *s = open_store(d, "src", &g, &a);
    apply_next(s, 3);
    ledger_snapshot *sn;
    ck_assert_int_eq(ledger_snapshot_open(s, &sn), LEDGER_OK);
    ck_assert_int_eq(ledger_snapshot_build(sn), LEDGER_OK);
    unsigned depth = ledger_snapshot_depth(sn);
    const uint8_t(*hs)[32] = ledger_snapshot_hashes(sn);
    const uint64_t *cs = ledger_snapshot_counts(sn);
    uint32_t c = 0;
    while (cs[c] < 3) c++;
    ledger_snap_entry *e;
    size_t k;
    ck_assert_int_eq(ledger_snapshot_chunk(sn, c, &e, &k), LEDGER_OK);
    ledger_snap_entry t[64];
    ck_assert_uint_lt(k, 60);
    uint8_t vbuf[128] = {0};
    /* a changed value */
    memcpy(t, e, k * sizeof *e);
    memcpy(vbuf, t[1].val, t[1].vlen);
    vbuf[0] ^= 1;
    if (t[1].vlen == 0) t[1].vlen = 1;
    t[1].val = vbuf;
    ck_assert_int_eq(ledger_snap_chunk_verify(depth, c, hs[c], cs[c], t, k), LEDGER_EROOT);
    /* a dropped entry, with the count as sent and as the manifest says */
    memcpy(t, e, k * sizeof *e);
    ck_assert_int_eq(ledger_snap_chunk_verify(depth, c, hs[c], cs[c], t + 1, k - 1), LEDGER_EROOT);
    ck_assert_int_eq(ledger_snap_chunk_verify(depth, c, hs[c], k - 1, t + 1, k - 1), LEDGER_EROOT);
    /* an added entry under the right prefix */
    uint8_t extra[9];
    key_in_chunk(depth, c, extra);
    t[k] = (ledger_snap_entry){extra, 9, (const uint8_t *)"x", 1};
    ck_assert_int_eq(ledger_snap_chunk_verify(depth, c, hs[c], cs[c], t, k + 1), LEDGER_EROOT);
    ck_assert_int_eq(ledger_snap_chunk_verify(depth, c, hs[c], k + 1, t, k + 1), LEDGER_EROOT);
    /* an entry of another chunk, a key twice, an empty key */
    key_in_chunk(depth, c ^ 1, extra);
    t[0] = (ledger_snap_entry){extra, 9, (const uint8_t *)"x", 1};
    ck_assert_int_eq(ledger_snap_chunk_verify(depth, c, hs[c], cs[c], t, k), LEDGER_EINVAL);
    memcpy(t, e, k * sizeof *e);
    t[1] = t[0];
    ck_assert_int_eq(ledger_snap_chunk_verify(depth, c, hs[c], cs[c], t, k), LEDGER_EINVAL);
    t[0].klen = 0;
    ck_assert_int_eq(ledger_snap_chunk_verify(depth, c, hs[c], cs[c], t, k), LEDGER_EINVAL);
    /* the right chunk under another chunk's index or hash */
    memcpy(t, e, k * sizeof *e);
    ck_assert_int_eq(ledger_snap_chunk_verify(depth, c ^ 1, hs[c], cs[c], t, k), LEDGER_EINVAL);
    ck_assert_int_eq(ledger_snap_chunk_verify(depth, c, hs[c ^ 1], cs[c], t, k), LEDGER_EROOT);
    ck_assert_int_eq(ledger_snap_chunk_verify(depth, c, hs[c], cs[c], t, k), LEDGER_OK);
    ck_assert_int_eq(ledger_snap_chunk_verify(3, c, hs[c], cs[c], t, k), LEDGER_EINVAL);
    tem_free(e);

    /* manifests: one flipped hash, a count's class changed, count 0 with a hash, bad depth */
    size_t w = (size_t)1 << depth;
    uint8_t(*mh)[32] = tem_malloc(w * 32);
    uint64_t *mc = tem_malloc(w * 8);
    uint8_t root[32], good[32], r2[32];
    memcpy(mh, hs, w * 32);
    memcpy(mc, cs, w * 8);
    ck_assert_int_eq(ledger_snap_manifest_root(depth, (const uint8_t(*)[32])mh, mc, good), LEDGER_OK);
    ledger_store_roots(s, root, r2);
    ck_assert(memcmp(good, root, 32) == 0);
    mh[c][5] ^= 0x40;
    ck_assert_int_eq(ledger_snap_manifest_root(depth, (const uint8_t(*)[32])mh, mc, r2), LEDGER_OK);
    ck_assert(memcmp(r2, good, 32) != 0);
    mh[c][5] ^= 0x40;
    /* The count's class (0, 1, several) decides the shortcut where a side is alone: with the
     * sibling emptied, "one entry" and "several" must give different roots. */
    uint8_t several[32];
    memset(mh[c ^ 1], 0, 32);
    mc[c ^ 1] = 0;
    ck_assert_int_eq(ledger_snap_manifest_root(depth, (const uint8_t(*)[32])mh, mc, several), LEDGER_OK);
    mc[c] = 1;
    ck_assert_int_eq(ledger_snap_manifest_root(depth, (const uint8_t(*)[32])mh, mc, r2), LEDGER_OK);
    ck_assert(memcmp(r2, several, 32) != 0);
    memcpy(mh[c ^ 1], hs[c ^ 1], 32);
    mc[c ^ 1] = cs[c ^ 1];
    mc[c] = 0;
    ck_assert_int_eq(ledger_snap_manifest_root(depth, (const uint8_t(*)[32])mh, mc, r2), LEDGER_EINVAL);
    mc[c] = cs[c];
    ck_assert_int_eq(ledger_snap_manifest_root(LEDGER_SNAP_DEPTH_MAX + 1, (const uint8_t(*)[32])mh, mc, r2), LEDGER_EINVAL);
    tem_free(mh);
    tem_free(mc);
    ledger_snapshot_close(sn);
    ledger_store_close(s);
    rmdir_r(d);
    tem_free(d);
    ledger_genesis_free(&g);
}
END_TEST

/* The shortcut at the top: a manifest of one entry, whose leaf is the root whatever its chunk;
 * and two entries in sibling chunks (the root is their inner node). */
START_TEST(manifest_of_tiny_states_follows_the_shortcut) {
    for (unsigned depth = LEDGER_SNAP_DEPTH_MIN; depth <= 10; depth += 3) {
        size_t w = (size_t)1 << depth;
        uint8_t(*mh)[32] = tem_calloc(w, 32);
        uint64_t *mc = tem_calloc(w, 8);
        uint8_t k1[9], k2[9], root[32], want[32];
        key_in_chunk(depth, 5, k1);
        key_in_chunk(depth, 4, k2);
        ledger_snap_entry e1 = {k1, 9, (const uint8_t *)"a", 1}, e2 = {k2, 9, (const uint8_t *)"b", 1};
        ck_assert_int_eq(ledger_snap_chunk_hash(depth, 5, &e1, 1, mh[5]), LEDGER_OK);
        mc[5] = 1;
        ck_assert_int_eq(ledger_snap_manifest_root(depth, (const uint8_t(*)[32])mh, mc, root), LEDGER_OK);
        ledger_state *st;
        ck_assert_int_eq(ledger_state_new(&st), LEDGER_OK);
        ck_assert_int_eq(ledger_state_put(st, k1, 9, "a", 1), LEDGER_OK);
        ck_assert_int_eq(ledger_state_root(st, want), LEDGER_OK);
        ck_assert(memcmp(root, want, 32) == 0);
        ck_assert_int_eq(ledger_snap_chunk_hash(depth, 4, &e2, 1, mh[4]), LEDGER_OK);
        mc[4] = 1;
        ck_assert_int_eq(ledger_snap_manifest_root(depth, (const uint8_t(*)[32])mh, mc, root), LEDGER_OK);
        ck_assert_int_eq(ledger_state_put(st, k2, 9, "b", 1), LEDGER_OK);
        ck_assert_int_eq(ledger_state_root(st, want), LEDGER_OK);
        ck_assert(memcmp(root, want, 32) == 0);
        ledger_state_free(st);
        tem_free(mh);
        tem_free(mc);
    }
}
END_TEST

START_TEST(anchor_proof_is_checked) {
    ledger_genesis g;
    fx_genesis(&g, 4);
    char *d = tmpdir();
    init_arg a = {10, 3};
    ledger_store *s = open_store(d, "src", &g, &a);
    uint8_t *b1, *c1, *b2, *c2;
    size_t b1l, c1l, b2l, c2l;
    next_block(s, 2, &b1, &b1l, &c1, &c1l);
    ck_assert_int_eq(ledger_store_apply(s, b1, b1l, c1, c1l, &FX_EXEC, 0, NULL), LEDGER_OK);
    uint8_t sr1[32], rr1[32];
    ledger_store_roots(s, sr1, rr1);
    next_block(s, 2, &b2, &b2l, &c2, &c2l);
    ledger_snap_anchor an;
    ck_assert_int_eq(ledger_snap_anchor_check(&g, 1, b1, b1l, b2, b2l, c2, c2l, &an), LEDGER_OK);
    ck_assert_uint_eq(an.height, 1);
    ck_assert(memcmp(an.state_root, sr1, 32) == 0 && memcmp(an.receipts_root, rr1, 32) == 0);
    uint8_t h1[32];
    ledger_store_last_hash(s, h1);
    ck_assert(memcmp(an.block_hash, h1, 32) == 0);
    ck_assert_uint_eq(an.time_ms, ledger_store_last_time(s));
    /* the wrong certificate (block 1's), heights swapped, the wrong height, garbage */
    ck_assert_int_eq(ledger_snap_anchor_check(&g, 1, b1, b1l, b2, b2l, c1, c1l, &an), LEDGER_ECERT);
    ck_assert_int_eq(ledger_snap_anchor_check(&g, 1, b2, b2l, b1, b1l, c2, c2l, &an), LEDGER_EHEIGHT);
    ck_assert_int_eq(ledger_snap_anchor_check(&g, 2, b1, b1l, b2, b2l, c2, c2l, &an), LEDGER_EHEIGHT);
    ck_assert_int_eq(ledger_snap_anchor_check(&g, 0, b1, b1l, b2, b2l, c2, c2l, &an), LEDGER_EHEIGHT);
    ck_assert_int_eq(ledger_snap_anchor_check(&g, 1, (const uint8_t *)"\xff", 1, b2, b2l, c2, c2l, &an), LEDGER_EDECODE);
    /* another block 1 (a different time): its hash is not block 2's parent */
    Tem__V1__Block *bb = tem__v1__block__unpack(&ledger_pb_allocator, b1l, b1);
    bb->header->time_ms++;
    uint8_t *x = tem_malloc(tem__v1__block__get_packed_size(bb));
    size_t xl = tem__v1__block__pack(bb, x);
    ck_assert_int_eq(ledger_snap_anchor_check(&g, 1, x, xl, b2, b2l, c2, c2l, &an), LEDGER_EPREV);
    tem__v1__block__free_unpacked(bb, &ledger_pb_allocator);
    tem_free(x);
    tem_free(b1);
    tem_free(c1);
    tem_free(b2);
    tem_free(c2);
    ledger_store_close(s);
    rmdir_r(d);
    tem_free(d);
    ledger_genesis_free(&g);
}
END_TEST

START_TEST(staged_sync_resumes_installs_and_follows_blocks) {
    ledger_genesis g;
    fx_genesis(&g, 4);
    char *d = tmpdir();
    init_arg a = {3000, 11};
    ledger_store *src = open_store(d, "src", &g, &a);
    apply_next(src, 5);
    apply_next(src, 5);
    uint64_t h = ledger_store_height(src);
    uint8_t *bh_, *bn, *cn;
    size_t bhl, bnl, cnl;
    ck_assert_int_eq(ledger_store_block(src, h, &bh_, &bhl), LEDGER_OK);
    ledger_snapshot *sn;
    ck_assert_int_eq(ledger_snapshot_open(src, &sn), LEDGER_OK);
    /* the source moves on: the snapshot still shows height h (LMDB's read view) */
    uint8_t root_h[32], rr[32];
    ledger_store_roots(src, root_h, rr);
    next_block(src, 6, &bn, &bnl, &cn, &cnl);
    ck_assert_int_eq(ledger_store_apply(src, bn, bnl, cn, cnl, &FX_EXEC, 0, NULL), LEDGER_OK);
    ck_assert_int_eq(ledger_snapshot_build(sn), LEDGER_OK);
    ck_assert_uint_eq(ledger_snapshot_height(sn), h);
    unsigned depth = ledger_snapshot_depth(sn);
    uint32_t w = 1u << depth;
    ledger_snap_anchor an;
    ck_assert_int_eq(ledger_snap_anchor_check(&g, h, bh_, bhl, bn, bnl, cn, cnl, &an), LEDGER_OK);
    ck_assert(memcmp(an.state_root, root_h, 32) == 0);

    /* the joining side: half the chunks, then a "kill" (everything closed) */
    char sdir[128];
    snprintf(sdir, sizeof sdir, "%s/stage", d);
    ledger_snap_stage *st;
    ck_assert_int_eq(ledger_snap_stage_open(sdir, &st), LEDGER_OK);
    uint8_t *tgt;
    size_t tl;
    ck_assert_int_eq(ledger_snap_stage_target(st, &tgt, &tl), LEDGER_ENOTFOUND);
    ck_assert_int_eq(ledger_snap_stage_begin(st, (const uint8_t *)"target-1", 8), LEDGER_OK);
    bool stored[1u << LEDGER_SNAP_DEPTH_MAX] = {false};
    uint32_t nstored = 0;
    for (uint32_t c = 0; c < w; c += 2) {
        ledger_snap_entry *e;
        size_t k;
        ck_assert_int_eq(ledger_snapshot_chunk(sn, c, &e, &k), LEDGER_OK);
        ck_assert_int_eq(ledger_snap_stage_put(st, c, e, k), LEDGER_OK);
        ck_assert_int_eq(ledger_snap_stage_put(st, c, e, k), LEDGER_EEXISTS);
        stored[c] = true;
        nstored++;
        tem_free(e);
    }
    ledger_snap_stage_close(st);
    ledger_store *dst = open_store(d, "dst", &g, &(init_arg){0, 1});
    /* installing the incomplete stage fails on the root and changes nothing */
    ck_assert_int_eq(ledger_snap_stage_open(sdir, &st), LEDGER_OK);
    ck_assert_int_eq(ledger_snap_stage_install(st, dst, &an), LEDGER_EROOT);
    ck_assert_uint_eq(ledger_store_height(dst), 0);
    ledger_snap_stage_close(st);
    ledger_store_close(dst);
    dst = open_store(d, "dst", &g, NULL);
    ck_assert_uint_eq(ledger_store_height(dst), 0);

    ck_assert_int_eq(ledger_snap_stage_open(sdir, &st), LEDGER_OK);
    ck_assert_int_eq(ledger_snap_stage_target(st, &tgt, &tl), LEDGER_OK);
    ck_assert(tl == 8 && memcmp(tgt, "target-1", 8) == 0);
    tem_free(tgt);
    ck_assert_uint_eq(ledger_snap_stage_count(st), nstored);
    uint32_t fetched = 0;
    for (uint32_t c = 0; c < w; c++) {
        ck_assert_int_eq(ledger_snap_stage_has(st, c), stored[c]);
        if (ledger_snap_stage_has(st, c)) continue;
        ledger_snap_entry *e;
        size_t k;
        ck_assert_int_eq(ledger_snapshot_chunk(sn, c, &e, &k), LEDGER_OK);
        ck_assert_int_eq(ledger_snap_stage_put(st, c, e, k), LEDGER_OK);
        fetched++;
        tem_free(e);
    }
    ck_assert_uint_eq(fetched + nstored, w);
    /* a wrong anchor root is refused and writes nothing */
    ledger_snap_anchor bad = an;
    bad.state_root[0] ^= 1;
    ck_assert_int_eq(ledger_snap_stage_install(st, dst, &bad), LEDGER_EROOT);
    ck_assert_uint_eq(ledger_store_height(dst), 0);
    ck_assert_int_eq(ledger_snap_stage_install(st, dst, &an), LEDGER_OK);
    ck_assert_int_eq(ledger_snap_stage_install(st, dst, &an), LEDGER_EHEIGHT);
    ck_assert_int_eq(ledger_snap_stage_clear(st), LEDGER_OK);
    ck_assert_uint_eq(ledger_snap_stage_count(st), 0);
    ledger_snap_stage_close(st);
    ledger_snapshot_close(sn);

    uint8_t sr[32], r2[32];
    ck_assert_uint_eq(ledger_store_height(dst), h);
    ledger_store_roots(dst, sr, r2);
    ck_assert(memcmp(sr, root_h, 32) == 0);
    ck_assert(memcmp(r2, an.receipts_root, 32) == 0);
    uint8_t *meta;
    size_t ml;
    ck_assert_int_eq(ledger_store_meta_get(dst, "sync_height", &meta, &ml), LEDGER_OK);
    ck_assert(ml == 8 && tem_get_u64le(meta) == h);
    tem_free(meta);
    /* the reloaded in-memory state is the snapshot, recomputed from scratch */
    ref_root(dst, sr);
    ck_assert(memcmp(sr, root_h, 32) == 0);
    /* the installed tree is a tree checkpoint at h; with one every 2 blocks, h+1 is logged and
     * h+2 is the next checkpoint, which the restart below rebuilds from */
    ck_assert_uint_eq(ledger__store_tree_height(dst), h);
    ledger__store_tree_tune(dst, 2, 0);
    /* it then applies the same certified block as the source, to the same root, and the next */
    ck_assert_int_eq(ledger_store_apply(dst, bn, bnl, cn, cnl, &FX_EXEC, 0, NULL), LEDGER_OK);
    ck_assert_uint_eq(ledger__store_tree_height(dst), h);
    uint8_t s1[32], s2[32];
    ledger_store_roots(src, s1, r2);
    ledger_store_roots(dst, s2, r2);
    ck_assert(memcmp(s1, s2, 32) == 0);
    tem_free(bn);
    tem_free(cn);
    next_block(src, 7, &bn, &bnl, &cn, &cnl);
    ck_assert_int_eq(ledger_store_apply(src, bn, bnl, cn, cnl, &FX_EXEC, 0, NULL), LEDGER_OK);
    ck_assert_int_eq(ledger_store_apply(dst, bn, bnl, cn, cnl, &FX_EXEC, 0, NULL), LEDGER_OK);
    ledger_store_roots(src, s1, r2);
    ledger_store_roots(dst, s2, r2);
    ck_assert(memcmp(s1, s2, 32) == 0);
    ck_assert_uint_eq(ledger__store_tree_height(dst), h + 2);
    /* and a restart of the synced store finds the same tip */
    ledger_store_close(dst);
    dst = open_store(d, "dst", &g, NULL);
    ck_assert_uint_eq(ledger_store_height(dst), h + 2);
    ck_assert_uint_eq(ledger__store_tree_height(dst), h + 2);
    ledger_store_roots(dst, s2, r2);
    ck_assert(memcmp(s1, s2, 32) == 0);
    tem_free(bn);
    tem_free(cn);
    tem_free(bh_);
    ledger_store_close(dst);
    ledger_store_close(src);
    rmdir_r(d);
    tem_free(d);
    ledger_genesis_free(&g);
}
END_TEST

int main(void) {
    Suite *s = suite_create("state_sync");
    TCase *tc = tcase_create("snapshot");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, manifest_and_chunks_match_a_full_recomputation);
    tcase_add_test(tc, tampered_chunks_and_manifests_are_refused);
    tcase_add_test(tc, manifest_of_tiny_states_follows_the_shortcut);
    tcase_add_test(tc, anchor_proof_is_checked);
    tcase_add_test(tc, staged_sync_resumes_installs_and_follows_blocks);
    suite_add_tcase(s, tc);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
