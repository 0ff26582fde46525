/* bench_sync.c: the time for a new node to join a chain of 1,000,000 accounts by state sync
 * (docs/ledger.md "State sync"; docs/performance.md). In one process, no network: a source
 * store is seeded with 1M accounts ('a' || 33-byte key -> 56-byte record, as bench_ledger's
 * state-root figures) and two certified blocks; its snapshot of height 1 is built (the serving
 * side's work, done ahead of any join, timed apart). The join is then timed from the offer to
 * the first block applied on the new store: the offer's checks (certificate, manifest), every
 * chunk read from the source, encoded as a StateChunk and decoded again (the wire), verified
 * and stored durably in the staging env, the install (state table, tree built in one pass, root
 * check, state reloaded) and block 2 applied. Chunks are fetched one after the other here;
 * temd asks several peers at once, so on a network this is the time with the transfer free.
 *
 * limit: the SHA-256 work a verifying joiner cannot skip (each key and value hashed once, one
 * leaf and one inner node per entry), timed alone in the same run; ratio = limit / value.
 * Catch-up: 50 more certified blocks applied by the synced store, beside the same blocks applied
 * by the source (its own ceiling for the same work). */
#include "ledger/ledger_internal.h"
#include "ledger/snapshot.h"
#include "tests/bench/bench_util.h"
#include "tests/ledger_fixture.h"

#include <stdlib.h>
#include <sys/stat.h>

/* BENCH_SYNC_ACCOUNTS overrides the size (profiling); the bench line is named for 1M. */
static uint32_t ACCOUNTS = 1000000u;

static int seed_accounts(void *ctx, ledger_state *st, const ledger_genesis *g) {
    (void)ctx;
    (void)g;
    for (uint32_t i = 0; i < 4; i++) {
        uint8_t sec[32], pub[33];
        fx_key(2 + i, sec, pub);
        int rc = fx_set_balance(st, pub, 1000000);
        if (rc) return rc;
    }
    for (uint32_t i = 0; i < ACCOUNTS; i++) {
        uint8_t k[34], v[56] = {0};
        k[0] = 'a';
        k[1] = 2;
        ledger_sha256(k + 2, &i, sizeof i);
        tem_put_u32le(v + 4, i);
        int rc = ledger_state_put(st, k, sizeof k, v, sizeof v);
        if (rc) return rc;
    }
    return LEDGER_OK;
}

/* The next block of 4 transfers, certified by validators 0..2. */
static void next_block(ledger_store *s, uint8_t **blk, size_t *bl, uint8_t **cert, size_t *cl) {
    const ledger_genesis *g = ledger_store_genesis(s);
    uint8_t *txs[4];
    size_t lens[4];
    for (uint32_t i = 0; i < 4; i++) {
        uint8_t sec[32], pub[33];
        fx_key(2 + i, sec, pub);
        txs[i] = fx_transfer(g->chain_id, 2 + i, 2 + (i + 1) % 4, ledger_state_nonce(ledger_store_state(s), pub), 5, &lens[i]);
    }
    uint8_t ps[64], pp[32], bh[32], d[32], sigs[3][64];
    fx_vkey(0, ps, pp);
    TEM_ASSERT(ledger_block_build(s, (const uint8_t *const *)txs, lens, 4, ledger_store_last_time(s) + 1000, pp, blk, bl) == LEDGER_OK);
    for (int i = 0; i < 4; i++) tem_free(txs[i]);
    TEM_ASSERT(ledger_block_hash_bytes(*blk, *bl, bh) == LEDGER_OK);
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

int main(void) {
    const char *env = getenv("BENCH_SYNC_ACCOUNTS");
    if (env && atoi(env) > 0) ACCOUNTS = (uint32_t)atoi(env);
    char dir[] = "/tmp/tem-bench-sync-XXXXXX";
    TEM_ASSERT(mkdtemp(dir) != NULL);
    char src_dir[128], dst_dir[128], stage_dir[128];
    snprintf(src_dir, sizeof src_dir, "%s/src", dir);
    snprintf(dst_dir, sizeof dst_dir, "%s/dst", dir);
    snprintf(stage_dir, sizeof stage_dir, "%s/dst/statesync", dir);
    ledger_genesis g;
    fx_genesis(&g, 4);

    double t0 = bench_now();
    ledger_store *src;
    TEM_ASSERT(ledger_store_open(src_dir, &g, seed_accounts, NULL, &src) == LEDGER_OK);
    double t_seed = bench_now() - t0;
    uint8_t *b1, *c1, *b2, *c2;
    size_t b1l, c1l, b2l, c2l;
    next_block(src, &b1, &b1l, &c1, &c1l);
    TEM_ASSERT(ledger_store_apply(src, b1, b1l, c1, c1l, &FX_EXEC, 0, NULL) == LEDGER_OK);
    ledger_snapshot *sn;
    TEM_ASSERT(ledger_snapshot_open(src, &sn) == LEDGER_OK);
    next_block(src, &b2, &b2l, &c2, &c2l);
    TEM_ASSERT(ledger_store_apply(src, b2, b2l, c2, c2l, &FX_EXEC, 0, NULL) == LEDGER_OK);
    t0 = bench_now();
    TEM_ASSERT(ledger_snapshot_build(sn) == LEDGER_OK);
    double t_serve = bench_now() - t0;
    unsigned depth = ledger_snapshot_depth(sn);
    uint32_t w = 1u << depth;

    ledger_store *dst;
    TEM_ASSERT(ledger_store_open(dst_dir, &g, NULL, NULL, &dst) == LEDGER_OK);
    ledger_snap_stage *st;
    TEM_ASSERT(ledger_snap_stage_open(stage_dir, &st) == LEDGER_OK);

    /* ---- the join */
    double j0 = bench_now();
    ledger_snap_anchor an;
    TEM_ASSERT(ledger_snap_anchor_check(&g, 1, b1, b1l, b2, b2l, c2, c2l, &an) == LEDGER_OK);
    uint8_t root[32];
    TEM_ASSERT(ledger_snap_manifest_root(depth, ledger_snapshot_hashes(sn), ledger_snapshot_counts(sn), root) == LEDGER_OK);
    TEM_ASSERT(memcmp(root, an.state_root, 32) == 0);
    TEM_ASSERT(ledger_snap_stage_begin(st, (const uint8_t *)"bench", 5) == LEDGER_OK);
    size_t entries = 0, wire = 0;
    double t_fetch = 0, t_verify = 0, t_store = 0;
    for (uint32_t c = 0; c < w; c++) {
        double a = bench_now();
        ledger_snap_entry *e;
        size_t k;
        TEM_ASSERT(ledger_snapshot_chunk(sn, c, &e, &k) == LEDGER_OK);
        ProtobufCBinaryData *keys = tem_malloc((k ? k : 1) * sizeof *keys), *vals = tem_malloc((k ? k : 1) * sizeof *vals);
        for (size_t i = 0; i < k; i++) {
            keys[i] = (ProtobufCBinaryData){e[i].klen, (uint8_t *)e[i].key};
            vals[i] = (ProtobufCBinaryData){e[i].vlen, (uint8_t *)e[i].val};
        }
        Tem__V1__StateChunk sc = TEM__V1__STATE_CHUNK__INIT;
        sc.height = 1;
        sc.index = c;
        sc.n_keys = sc.n_values = k;
        sc.keys = keys;
        sc.values = vals;
        size_t len = tem__v1__state_chunk__get_packed_size(&sc);
        uint8_t *buf = tem_malloc(len ? len : 1);
        tem__v1__state_chunk__pack(&sc, buf);
        tem_free(keys);
        tem_free(vals);
        tem_free(e);
        wire += len;
        Tem__V1__StateChunk *rc = tem__v1__state_chunk__unpack(&ledger_pb_allocator, len, buf);
        TEM_ASSERT(rc && rc->n_keys == k);
        ledger_snap_entry *r = tem_malloc((k ? k : 1) * sizeof *r);
        for (size_t i = 0; i < k; i++)
            r[i] = (ledger_snap_entry){rc->keys[i].data, rc->keys[i].len, rc->values[i].data, rc->values[i].len};
        double b = bench_now();
        TEM_ASSERT(ledger_snap_chunk_verify(depth, c, ledger_snapshot_hashes(sn)[c], ledger_snapshot_counts(sn)[c], r, k) == LEDGER_OK);
        double cc = bench_now();
        if (k) TEM_ASSERT(ledger_snap_stage_put(st, c, r, k) == LEDGER_OK);
        double d = bench_now();
        t_fetch += b - a;
        t_verify += cc - b;
        t_store += d - cc;
        entries += k;
        tem_free(r);
        tem__v1__state_chunk__free_unpacked(rc, &ledger_pb_allocator);
        tem_free(buf);
    }
    double i0 = bench_now();
    TEM_ASSERT(ledger_snap_stage_install(st, dst, &an) == LEDGER_OK);
    double t_install = bench_now() - i0;
    TEM_ASSERT(ledger_store_apply(dst, b2, b2l, c2, c2l, &FX_EXEC, 0, NULL) == LEDGER_OK);
    double t_join = bench_now() - j0;
    uint8_t s1[32], s2[32], rr[32];
    ledger_store_roots(src, s1, rr);
    ledger_store_roots(dst, s2, rr);
    TEM_ASSERT(memcmp(s1, s2, 32) == 0 && ledger_store_height(dst) == 2);

    /* ---- catch-up after the join: the next blocks, applied by the synced store and (the
     * limit) by the source, which has the whole history */
    enum { CATCH_UP = 50 };
    uint8_t *cb[CATCH_UP], *cc[CATCH_UP];
    size_t cbl[CATCH_UP], ccl[CATCH_UP];
    double t_src = 0, t_dst = 0;
    for (int i = 0; i < CATCH_UP; i++) {
        next_block(src, &cb[i], &cbl[i], &cc[i], &ccl[i]);
        double a = bench_now();
        TEM_ASSERT(ledger_store_apply(src, cb[i], cbl[i], cc[i], ccl[i], &FX_EXEC, 0, NULL) == LEDGER_OK);
        t_src += bench_now() - a;
    }
    for (int i = 0; i < CATCH_UP; i++) {
        double a = bench_now();
        TEM_ASSERT(ledger_store_apply(dst, cb[i], cbl[i], cc[i], ccl[i], &FX_EXEC, 0, NULL) == LEDGER_OK);
        t_dst += bench_now() - a;
        tem_free(cb[i]);
        tem_free(cc[i]);
    }
    ledger_store_roots(src, s1, rr);
    ledger_store_roots(dst, s2, rr);
    TEM_ASSERT(memcmp(s1, s2, 32) == 0);

    /* ---- the limit: the hashing a verifying joiner must do, alone */
    double t_floor = 0;
    uint8_t acc[32] = {0}, buf[65] = {0};
    for (uint32_t c = 0; c < w; c++) {
        ledger_snap_entry *e;
        size_t k;
        TEM_ASSERT(ledger_snapshot_chunk(sn, c, &e, &k) == LEDGER_OK);
        double h0 = bench_now();
        for (size_t i = 0; i < k; i++) {
            ledger_sha256(buf + 1, e[i].key, e[i].klen);
            ledger_sha256(buf + 33, e[i].val, e[i].vlen);
            ledger_sha256(acc, buf, 65); /* the leaf */
            buf[0] ^= acc[0];
            ledger_sha256(acc, buf, 65); /* an inner node */
        }
        t_floor += bench_now() - h0;
        tem_free(e);
    }
    if (ACCOUNTS != 1000000u) printf("# BENCH_SYNC_ACCOUNTS=%u: not the 1M figure\n", ACCOUNTS);
    printf("bench state_sync_join_1m_accounts %.2f s limit %.2f s_of_sha256 ratio %.3f\n", t_join, t_floor, t_floor / t_join);
    printf("bench state_sync_catch_up_ms_per_block_1m_accounts %.2f ms limit %.2f ms_on_the_source ratio %.3f\n",
           1000 * t_dst / CATCH_UP, 1000 * t_src / CATCH_UP, t_src / t_dst);
    printf("# catch-up: %d certified blocks of 4 transfers applied by the synced store after the join; limit: the "
           "same blocks applied by the source store, which replayed from the genesis\n", CATCH_UP);
    printf("# %zu entries in %u chunks (depth %u), %.1f MiB on the wire; join: read+encode+decode %.2f s, verify %.2f s, "
           "stage (fsync per chunk) %.2f s, install %.2f s; serving side's snapshot build %.2f s (ahead of time); "
           "seeding the source %.1f s; one thread, no network (docs/performance.md)%s\n",
           entries, w, depth, (double)wire / (1 << 20), t_fetch, t_verify, t_store, t_install, t_serve, t_seed, acc[0] == 0x5a ? " " : "");
    fflush(stdout);
    ledger_snap_stage_close(st);
    ledger_snapshot_close(sn);
    ledger_store_close(dst);
    ledger_store_close(src);
    ledger_genesis_free(&g);
    tem_free(b1);
    tem_free(b2);
    tem_free(c1);
    tem_free(c2);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    TEM_ASSERT(system(cmd) == 0);
    return 0;
}
