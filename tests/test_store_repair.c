/* test_store_repair.c: ledger_store_check_block and ledger_store_repair_block (the start-up
 * tail check and the refetch of damaged blocks, node/tailcheck.c). Two stores apply the same
 * certified chain; bytes of one store's data.mdb are flipped on disk (every copy LMDB keeps of
 * the record, as a bad sector would), and the check must flag exactly the damaged heights (the
 * reference is the set this test damaged), refuse every wrong or badly certified copy, and
 * accept the other store's copy, after which every block reads back byte for byte. */
#include "tests/ledger_fixture.h"
#include "tests/store_fixture.h"

#include <check.h>
#include <unistd.h>

#define NB 12 /* blocks in the chain */

typedef struct {
    uint8_t *blk[NB + 1], *cert[NB + 1];
    size_t bl[NB + 1], cl[NB + 1];
} chain;

/* A commit certificate for (height, hash) signed by the validators in mask (view 0). */
static uint8_t *make_cert(const ledger_genesis *g, uint64_t height, const uint8_t bh[32], uint32_t mask, size_t *len) {
    Tem__V1__CommitCertificate c = TEM__V1__COMMIT_CERTIFICATE__INIT;
    Tem__V1__CommitSig cs[4], *csp[4];
    uint8_t sigs[4][64], d[32];
    ledger_commit_digest(g->hash, 0, height, bh, d);
    size_t n = 0;
    for (uint32_t i = 0; i < 4; i++) {
        if (!(mask >> i & 1)) continue;
        uint8_t vs[64], vp[32];
        fx_vkey(i, vs, vp);
        ledger_ed_sign(vs, d, 32, sigs[n]);
        tem__v1__commit_sig__init(&cs[n]);
        cs[n].validator = i;
        cs[n].sig = (ProtobufCBinaryData){64, sigs[n]};
        csp[n] = &cs[n];
        n++;
    }
    c.height = height;
    c.block_hash = (ProtobufCBinaryData){32, (uint8_t *)bh};
    c.sigs = csp;
    c.n_sigs = n;
    *len = tem__v1__commit_certificate__get_packed_size(&c);
    uint8_t *b = tem_malloc(*len);
    tem__v1__commit_certificate__pack(&c, b);
    return b;
}

/* Builds NB certified blocks of transfers on a and applies each to a and b. */
static void build_chain(const ledger_genesis *g, ledger_store *a, ledger_store *b, chain *ch) {
    uint64_t nonce[3] = {0, 0, 0};
    for (uint64_t h = 1; h <= NB; h++) {
        uint8_t *txs[4];
        size_t lens[4];
        uint32_t n = (uint32_t)(h % 4) + 1;
        for (uint32_t i = 0; i < n; i++) {
            uint32_t f = (uint32_t)((h + i) % 3);
            txs[i] = fx_transfer(g->chain_id, 2 + f, 2 + (f + 1) % 3, nonce[f]++, 1 + i, &lens[i]);
        }
        uint8_t pp[64], ppub[32], bh[32];
        fx_vkey(0, pp, ppub);
        ck_assert_int_eq(ledger_block_build(a, (const uint8_t *const *)txs, lens, n, g->genesis_time_ms + 1000 * h, ppub,
                                            &ch->blk[h], &ch->bl[h]),
                         LEDGER_OK);
        ck_assert_int_eq(ledger_block_hash_bytes(ch->blk[h], ch->bl[h], bh), LEDGER_OK);
        ch->cert[h] = make_cert(g, h, bh, 0x7, &ch->cl[h]);
        ck_assert_int_eq(ledger_store_apply(a, ch->blk[h], ch->bl[h], ch->cert[h], ch->cl[h], &FX_EXEC, 0, NULL), LEDGER_OK);
        ck_assert_int_eq(ledger_store_apply(b, ch->blk[h], ch->bl[h], ch->cert[h], ch->cl[h], &FX_EXEC, 0, NULL), LEDGER_OK);
        for (uint32_t i = 0; i < n; i++) tem_free(txs[i]);
    }
}

static void chain_free(chain *ch) {
    for (int h = 1; h <= NB; h++) {
        tem_free(ch->blk[h]);
        tem_free(ch->cert[h]);
    }
}

/* Flips byte `at` of every copy of rec in dir/data.mdb; returns the copies found. */
static int flip_on_disk(const char *dir, const uint8_t *rec, size_t len, size_t at) {
    char path[512];
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    FILE *f = fopen(path, "r+b");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    uint8_t *d = tem_malloc((size_t)sz);
    fseek(f, 0, SEEK_SET);
    ck_assert_int_eq(fread(d, 1, (size_t)sz, f), (size_t)sz);
    int n = 0;
    for (uint8_t *p = d; (p = memmem(p, (size_t)(d + sz - p), rec, len)) != NULL; p += len) {
        p[at] ^= 0x10;
        n++;
    }
    fseek(f, 0, SEEK_SET);
    ck_assert_int_eq(fwrite(d, 1, (size_t)sz, f), (size_t)sz);
    fclose(f);
    tem_free(d);
    return n;
}

/* Offset of the first tx's body inside the serialised block. */
static size_t body_offset(const uint8_t *blk, size_t len) {
    Tem__V1__Block *b = tem__v1__block__unpack(NULL, len, blk);
    ck_assert(b && b->n_txs > 0);
    const uint8_t *p = memmem(blk, len, b->txs[0]->body.data, b->txs[0]->body.len);
    ck_assert_ptr_nonnull(p);
    tem__v1__block__free_unpacked(b, NULL);
    return (size_t)(p - blk);
}

static void assert_reads_back(ledger_store *s, const chain *ch) {
    for (uint64_t h = 1; h <= NB; h++) {
        uint8_t hash[32], *b;
        size_t bl;
        char why[128];
        ck_assert_int_eq(ledger_store_check_block(s, h, hash, why, sizeof why), LEDGER_OK);
        ck_assert_int_eq(ledger_store_block(s, h, &b, &bl), LEDGER_OK);
        ck_assert(bl == ch->bl[h] && memcmp(b, ch->blk[h], bl) == 0);
        tem_free(b);
    }
}

START_TEST(damaged_block_is_flagged_refused_copies_rejected_and_peer_copy_restores_it) {
    ledger_genesis g;
    fx_genesis(&g, 4);
    char *da = fx_tmpdir("repair"), *db = fx_tmpdir("repair");
    ledger_store *a, *b;
    ck_assert_int_eq(ledger_store_open(da, &g, NULL, NULL, &a), LEDGER_OK);
    ck_assert_int_eq(ledger_store_open(db, &g, NULL, NULL, &b), LEDGER_OK);
    chain ch = {0};
    build_chain(&g, a, b, &ch);
    assert_reads_back(a, &ch);
    uint8_t hash[32], want[32];
    char why[128];
    ck_assert_int_eq(ledger_store_check_block(a, 0, hash, why, sizeof why), LEDGER_ENOTFOUND);
    ck_assert_int_eq(ledger_store_check_block(a, NB + 1, hash, why, sizeof why), LEDGER_ENOTFOUND);

    /* a byte of block 5's first tx body, on disk */
    const uint64_t H = 5;
    ck_assert_int_eq(ledger_block_hash_bytes(ch.blk[H], ch.bl[H], want), LEDGER_OK);
    ledger_store_close(a);
    ck_assert_int_ge(flip_on_disk(da, ch.blk[H], ch.bl[H], body_offset(ch.blk[H], ch.bl[H]) + 3), 1);
    ck_assert_int_eq(ledger_store_open(da, &g, NULL, NULL, &a), LEDGER_OK);
    for (uint64_t h = 1; h <= NB; h++) {
        int rc = ledger_store_check_block(a, h, hash, why, sizeof why);
        ck_assert_msg(rc == (h == H ? LEDGER_ECORRUPT : LEDGER_OK), "height %llu: %s", (unsigned long long)h, ledger_errname(rc));
    }
    ck_assert_int_eq(ledger_store_check_block(a, H, hash, why, sizeof why), LEDGER_ECORRUPT);
    ck_assert_mem_eq(hash, want, 32); /* the recorded hash names the block to fetch */
    ck_assert_str_eq(why, "txs do not match the header's tx_root");
    uint8_t *rb;
    size_t rl;
    ck_assert_int_eq(ledger_store_block(a, H, &rb, &rl), LEDGER_ECORRUPT);

    /* copies that must not be taken; nothing changes */
    size_t c2l, cxl;
    uint8_t *c2 = make_cert(&g, H, want, 0x3, &c2l);     /* 2 of 4 signers: below the quorum */
    uint8_t *cx = make_cert(&g, H + 1, want, 0xf, &cxl); /* another height */
    ck_assert_int_eq(ledger_store_repair_block(a, H, ch.blk[H + 1], ch.bl[H + 1], ch.cert[H + 1], ch.cl[H + 1], why, sizeof why),
                     LEDGER_EBLOCK);
    ck_assert_int_eq(ledger_store_repair_block(a, H, ch.blk[H], ch.bl[H], c2, c2l, why, sizeof why), LEDGER_ECERT);
    ck_assert_int_eq(ledger_store_repair_block(a, H, ch.blk[H], ch.bl[H], cx, cxl, why, sizeof why), LEDGER_ECERT);
    ck_assert_int_eq(ledger_store_repair_block(a, H, ch.blk[H], ch.bl[H], (const uint8_t *)"\xff", 1, why, sizeof why),
                     LEDGER_ECERT);
    ck_assert_int_eq(ledger_store_repair_block(a, H, ch.blk[H], ch.bl[H] - 1, ch.cert[H], ch.cl[H], why, sizeof why),
                     LEDGER_EBLOCK);
    ck_assert_int_eq(ledger_store_repair_block(a, NB + 1, ch.blk[H], ch.bl[H], ch.cert[H], ch.cl[H], why, sizeof why),
                     LEDGER_EHEIGHT);
    ck_assert_int_eq(ledger_store_check_block(a, H, hash, why, sizeof why), LEDGER_ECORRUPT);

    /* the peer's copy (store b's, with a certificate of other signers) repairs it */
    uint8_t *pb, *pc;
    size_t pbl, pcl;
    ck_assert_int_eq(ledger_store_block(b, H, &pb, &pbl), LEDGER_OK);
    pc = make_cert(&g, H, want, 0xe, &pcl);
    ck_assert_int_eq(ledger_store_repair_block(a, H, pb, pbl, pc, pcl, why, sizeof why), LEDGER_OK);
    assert_reads_back(a, &ch);
    /* the stored certificate still verified: it was kept */
    uint8_t *sc;
    size_t scl;
    ck_assert_int_eq(ledger_store_cert(a, H, &sc, &scl), LEDGER_OK);
    ck_assert(scl == ch.cl[H] && memcmp(sc, ch.cert[H], scl) == 0);
    tem_free(sc);
    tem_free(pb);
    tem_free(pc);
    tem_free(c2);
    tem_free(cx);

    /* a damaged certificate (a signature byte) is flagged and replaced by a verified one */
    const uint64_t HC = 8;
    uint8_t wc[32];
    ck_assert_int_eq(ledger_block_hash_bytes(ch.blk[HC], ch.bl[HC], wc), LEDGER_OK);
    ledger_store_close(a);
    ck_assert_int_ge(flip_on_disk(da, ch.cert[HC], ch.cl[HC], ch.cl[HC] - 5), 1);
    ck_assert_int_eq(ledger_store_open(da, &g, NULL, NULL, &a), LEDGER_OK);
    ck_assert_int_eq(ledger_store_check_block(a, HC, hash, why, sizeof why), LEDGER_ECORRUPT);
    ck_assert_str_eq(why, "commit certificate does not verify for it");
    pc = make_cert(&g, HC, wc, 0xb, &pcl);
    ck_assert_int_eq(ledger_store_repair_block(a, HC, ch.blk[HC], ch.bl[HC], pc, pcl, why, sizeof why), LEDGER_OK);
    ck_assert_int_eq(ledger_store_cert(a, HC, &sc, &scl), LEDGER_OK);
    ck_assert(scl == pcl && memcmp(sc, pc, scl) == 0);
    tem_free(sc);
    tem_free(pc);
    assert_reads_back(a, &ch);

    /* a flipped byte in a tx signature: outside the header hash and the tx root, so only the
     * digest of the block's bytes taken at apply shows it, on check and on read */
    const uint64_t HS = 10;
    ledger_store_close(a);
    ck_assert_int_ge(flip_on_disk(da, ch.blk[HS], ch.bl[HS], ch.bl[HS] - 10), 1);
    ck_assert_int_eq(ledger_store_open(da, &g, NULL, NULL, &a), LEDGER_OK);
    ck_assert_int_eq(ledger_store_check_block(a, HS, hash, why, sizeof why), LEDGER_ECORRUPT);
    ck_assert_str_eq(why, "block bytes differ from the digest recorded when it was applied");
    ck_assert_int_eq(ledger_store_block(a, HS, &rb, &rl), LEDGER_ECORRUPT);
    /* a peer copy with the signature damaged the same way is refused (it is verified in full) */
    uint8_t *bad = tem_malloc(ch.bl[HS]);
    memcpy(bad, ch.blk[HS], ch.bl[HS]);
    bad[ch.bl[HS] - 10] ^= 0x10;
    ck_assert_int_eq(ledger_store_repair_block(a, HS, bad, ch.bl[HS], ch.cert[HS], ch.cl[HS], why, sizeof why), LEDGER_EBLOCK);
    ck_assert_str_eq(why, "fetched block: a tx signature does not verify");
    tem_free(bad);
    ck_assert_int_eq(ledger_store_repair_block(a, HS, ch.blk[HS], ch.bl[HS], ch.cert[HS], ch.cl[HS], why, sizeof why), LEDGER_OK);
    assert_reads_back(a, &ch);

    ledger_store_close(a);
    ledger_store_close(b);
    chain_free(&ch);
    fx_rmrf(da);
    fx_rmrf(db);
    free(da);
    free(db);
    ledger_genesis_free(&g);
}
END_TEST

/* Random damage over many seeds: flipped bytes anywhere in randomly chosen blocks. The check
 * must flag exactly the heights damaged (the reference), and the peer's copies restore all. */
START_TEST(random_damage_is_found_exactly_and_repaired) {
    ledger_genesis g;
    fx_genesis(&g, 4);
    char *da = fx_tmpdir("repair"), *db = fx_tmpdir("repair");
    ledger_store *a, *b;
    ck_assert_int_eq(ledger_store_open(da, &g, NULL, NULL, &a), LEDGER_OK);
    ck_assert_int_eq(ledger_store_open(db, &g, NULL, NULL, &b), LEDGER_OK);
    chain ch = {0};
    build_chain(&g, a, b, &ch);
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    for (int seed = 0; seed < 40; seed++) {
        bool damaged[NB + 1] = {0};
        int k = 1 + seed % 3;
        ledger_store_close(a);
        for (int i = 0; i < k; i++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            uint64_t h = 1 + (rng >> 33) % NB;
            size_t at = (size_t)((rng >> 13) % ch.bl[h]);
            if (damaged[h]) continue; /* a second flip would need the damaged bytes to find */
            if (flip_on_disk(da, ch.blk[h], ch.bl[h], at) > 0) damaged[h] = true;
        }
        ck_assert_int_eq(ledger_store_open(da, &g, NULL, NULL, &a), LEDGER_OK);
        for (uint64_t h = 1; h <= NB; h++) {
            uint8_t hash[32];
            char why[128];
            int rc = ledger_store_check_block(a, h, hash, why, sizeof why);
            ck_assert_msg(rc == (damaged[h] ? LEDGER_ECORRUPT : LEDGER_OK), "seed %d height %llu: %s", seed,
                          (unsigned long long)h, ledger_errname(rc));
            if (!damaged[h]) continue;
            uint8_t *pb, *pc;
            size_t pbl, pcl;
            ck_assert_int_eq(ledger_store_block(b, h, &pb, &pbl), LEDGER_OK);
            ck_assert_int_eq(ledger_store_cert(b, h, &pc, &pcl), LEDGER_OK);
            ck_assert_int_eq(ledger_store_repair_block(a, h, pb, pbl, pc, pcl, why, sizeof why), LEDGER_OK);
            tem_free(pb);
            tem_free(pc);
        }
        assert_reads_back(a, &ch);
    }
    ledger_store_close(a);
    ledger_store_close(b);
    chain_free(&ch);
    fx_rmrf(da);
    fx_rmrf(db);
    free(da);
    free(db);
    ledger_genesis_free(&g);
}
END_TEST

int main(void) {
    Suite *s = suite_create("store_repair");
    TCase *t = tcase_create("core");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, damaged_block_is_flagged_refused_copies_rejected_and_peer_copy_restores_it);
    tcase_add_test(t, random_damage_is_found_exactly_and_repaired);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
