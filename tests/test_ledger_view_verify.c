/* test_ledger_view_verify.c: ledger_block_view_verify, the parallel signature check of a block
 * view (catch-up and `temctl replay`). Over many seeds, a block whose txs carry random bad
 * signatures is verified on 1..9 threads: exactly the good txs not already known are marked
 * (the reference is ledger_tx_verify of each tx, one at a time), and applying the view still
 * refuses the block with the first bad tx's code, as an apply without the pre-check does. */
#include "tests/ledger_fixture.h"
#include "tests/store_fixture.h"
#include <check.h>
#include <unistd.h>

#define NTX 24

START_TEST(view_verify_marks_exactly_the_good_signatures_on_any_thread_count) {
    ledger_genesis g;
    fx_genesis(&g, 4);
    uint8_t *txs[NTX];
    size_t lens[NTX];
    for (uint32_t i = 0; i < NTX; i++) txs[i] = fx_transfer(g.chain_id, 2 + i, 3 + i, 0, 10 + i, &lens[i]);
    char *dir = fx_tmpdir("viewv");
    ledger_store *s;
    ck_assert_int_eq(ledger_store_open(dir, &g, NULL, NULL, &s), LEDGER_OK);
    uint8_t pp[64], ppub[32];
    fx_vkey(0, pp, ppub);
    uint32_t seed = 12345;
    for (int round = 0; round < 60; round++) {
        /* a random set of signatures damaged (the signature ends each SignedTx) */
        bool bad[NTX];
        for (int i = 0; i < NTX; i++) {
            seed = seed * 1103515245u + 12345u;
            bad[i] = round > 0 && (seed >> 16) % 5 == 0;
            if (bad[i]) txs[i][lens[i] - 1 - (seed >> 8) % 32] ^= 0x01;
        }
        uint8_t *blk;
        size_t bl;
        ck_assert_int_eq(ledger_block_build(s, (const uint8_t *const *)txs, lens, NTX, g.genesis_time_ms + 1000 + (uint64_t)round, ppub, &blk, &bl),
                         LEDGER_OK);
        ledger_block_view v;
        ck_assert_int_eq(ledger_block_view_build(&g, blk, bl, NULL, NULL, &v), LEDGER_OK);
        /* txs the caller already knows good stay marked and are not looked at: one, or every
         * tx but `round % 4` (few left to check, or none: no helper thread is started then) */
        int known = round % NTX;
        bool is_known[NTX] = {false};
        is_known[known] = true;
        if (round % 3 == 2)
            for (int i = 0; i < NTX - round % 4; i++) is_known[i] = true;
        for (int i = 0; i < NTX; i++) v.txs[i].verified = is_known[i];
        unsigned threads = 1 + (unsigned)round % 9;
        ledger_block_view_verify(&v, threads);
        int first_bad = -1, first_rc = LEDGER_OK;
        for (int i = 0; i < NTX; i++) {
            int ref = ledger_tx_verify(v.txs[i].tx);
            ck_assert_int_eq(ref == LEDGER_OK, !bad[i]);
            ck_assert_msg(v.txs[i].verified == (is_known[i] || ref == LEDGER_OK), "round %d tx %d threads %u", round, i, threads);
            if (ref != LEDGER_OK && !is_known[i] && first_bad < 0) first_bad = i, first_rc = ref;
        }
        ledger_apply_info info;
        uint64_t h0 = ledger_store_height(s);
        int rc = ledger_store_apply_view(s, &v, NULL, 0, NULL, LEDGER_APPLY_NO_CERT, &info);
        if (first_bad >= 0) {
            ck_assert_int_eq(rc, first_rc);
            ck_assert_uint_eq(ledger_store_height(s), h0);
        } else {
            ck_assert_int_eq(rc, LEDGER_OK);
            ck_assert_uint_eq(ledger_store_height(s), h0 + 1);
            for (int i = 0; i < NTX; i++) ck_assert(!bad[i] || is_known[i]); /* marked: trusted */
        }
        ledger_block_view_free(&v);
        tem_free(blk);
        /* every signer's next tx: nonce = blocks applied so far */
        for (int i = 0; i < NTX; i++) {
            tem_free(txs[i]);
            txs[i] = fx_transfer(g.chain_id, 2 + (uint32_t)i, 3 + (uint32_t)i, ledger_store_height(s), 10 + (uint32_t)i, &lens[i]);
        }
    }
    for (int i = 0; i < NTX; i++) tem_free(txs[i]);
    ledger_store_close(s);
    ledger_genesis_free(&g);
    fx_rmrf(dir);
    free(dir);
}
END_TEST

/* The verifier (verifying ahead): views submitted in a row and waited for in order end with the
 * same marks as ledger_tx_verify gives one at a time, with 0, 1 or 3 helper threads; a view
 * whose txs did not decode is returned at once; a full queue says LEDGER_EFULL. */
START_TEST(verifier_marks_like_one_at_a_time_in_submission_order) {
    ledger_genesis g;
    fx_genesis(&g, 4);
    char *dir = fx_tmpdir("viewv");
    ledger_store *s;
    ck_assert_int_eq(ledger_store_open(dir, &g, NULL, NULL, &s), LEDGER_OK);
    uint8_t pp[64], ppub[32];
    fx_vkey(0, pp, ppub);
    enum { NV = LEDGER_VERIFIER_QUEUE };
    uint8_t *blks[NV];
    size_t bls[NV];
    bool bad[NV][NTX];
    uint32_t seed = 777;
    for (int b = 0; b < NV; b++) {
        uint8_t *txs[NTX];
        size_t lens[NTX];
        for (int i = 0; i < NTX; i++) {
            txs[i] = fx_transfer(g.chain_id, 2 + (uint32_t)i, 3 + (uint32_t)i, (uint64_t)b, 10, &lens[i]);
            seed = seed * 1103515245u + 12345u;
            bad[b][i] = (seed >> 16) % 7 == 0;
            if (bad[b][i]) txs[i][lens[i] - 5] ^= 0x10;
        }
        ck_assert_int_eq(ledger_block_build(s, (const uint8_t *const *)txs, lens, NTX, g.genesis_time_ms + 1000, ppub, &blks[b], &bls[b]),
                         LEDGER_OK);
        for (int i = 0; i < NTX; i++) tem_free(txs[i]);
    }
    unsigned helpers[] = {0, 1, 3};
    for (size_t hk = 0; hk < 3; hk++) {
        ledger_verifier *vf;
        ck_assert_int_eq(ledger_verifier_new(helpers[hk], &vf), LEDGER_OK);
        ledger_block_view v[NV], extra;
        for (int b = 0; b < NV; b++) {
            ck_assert_int_eq(ledger_block_view_build(&g, blks[b], bls[b], NULL, NULL, &v[b]), LEDGER_OK);
            ck_assert_int_eq(ledger_verifier_submit(vf, &v[b]), LEDGER_OK);
        }
        ck_assert_int_eq(ledger_block_view_build(&g, blks[0], bls[0], NULL, NULL, &extra), LEDGER_OK);
        ck_assert_int_eq(ledger_verifier_submit(vf, &extra), LEDGER_EFULL);
        ledger_block_view_free(&extra);
        for (int b = 0; b < NV; b++) {
            ledger_verifier_wait(vf, &v[b]);
            for (int i = 0; i < NTX; i++) {
                ck_assert_msg(v[b].txs[i].verified == !bad[b][i], "helpers %u block %d tx %d", helpers[hk], b, i);
                ck_assert_int_eq(ledger_tx_verify(v[b].txs[i].tx) == LEDGER_OK, !bad[b][i]);
            }
            ledger_block_view_free(&v[b]);
        }
        /* a view that did not decode: nothing to check, wait returns */
        ledger_block_view nd;
        ck_assert_int_eq(ledger_block_view_build(&g, blks[0], bls[0], NULL, NULL, &nd), LEDGER_OK);
        nd.tx_rc = LEDGER_EDECODE;
        ck_assert_int_eq(ledger_verifier_submit(vf, &nd), LEDGER_OK);
        ledger_verifier_wait(vf, &nd);
        for (size_t i = 0; i < nd.n; i++) ck_assert(!nd.txs[i].verified);
        ledger_block_view_free(&nd);
        ledger_verifier_free(vf);
    }
    for (int b = 0; b < NV; b++) tem_free(blks[b]);
    ledger_store_close(s);
    ledger_genesis_free(&g);
    fx_rmrf(dir);
    free(dir);
}
END_TEST

int main(void) {
    Suite *su = suite_create("ledger_view_verify");
    TCase *t = tcase_create("view_verify");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, view_verify_marks_exactly_the_good_signatures_on_any_thread_count);
    tcase_add_test(t, verifier_marks_like_one_at_a_time_in_submission_order);
    suite_add_tcase(su, t);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
