/* test_pbft_progress.c: pbft_replica_progress, the status summary temd shows when a chain
 * stalls: what a fresh replica waits for, and that a primary's own proposal and vote count. */
#include "consensus/pbft.h"

#include <check.h>
#include <sodium.h>

static int hash_bytes(void *ctx, const uint8_t *b, size_t len, uint8_t out[32]) {
    (void)ctx;
    ledger_sha256(out, b, len);
    return 0;
}

static void setup(pbft_config *c, uint32_t self) {
    memset(c, 0, sizeof *c);
    c->n = 4;
    c->self = self;
    for (uint32_t i = 0; i < 4; i++) {
        uint8_t seed[32] = {(uint8_t)(i + 1)}, sec[64];
        TEM_ASSERT(crypto_sign_seed_keypair(c->pubkeys[i], sec, seed) == 0);
        if (i == self) memcpy(c->secret, sec, 64);
    }
    memset(c->genesis_hash, 7, 32);
    c->checkpoint_interval = 4;
    c->view_timeout_ms = 1000;
    c->view_timeout_doublings_max = 4;
    c->hash = hash_bytes;
    c->start_height = 0;
    memset(c->start_hash, 7, 32);
}

START_TEST(progress_of_a_fresh_replica_waits_for_height_one_without_votes) {
    pbft_config c;
    setup(&c, 1);
    pbft_replica r;
    ck_assert_int_eq(pbft_replica_init(&r, &c), PBFT_OK);
    pbft_progress p;
    pbft_replica_progress(&r, &p);
    ck_assert_uint_eq(p.height, 1);
    ck_assert_uint_eq(p.view, 0);
    ck_assert(!p.in_view_change);
    ck_assert(!p.has_proposal);
    ck_assert_uint_eq(p.prepare_mask, 0);
    ck_assert_uint_eq(p.commit_mask, 0);
    ck_assert_uint_eq(p.view_change_mask, 0);
    pbft_replica_free(&r);
}
END_TEST

START_TEST(progress_counts_the_primarys_own_proposal) {
    pbft_config c;
    setup(&c, 0); /* validator 0 is the primary of view 0 */
    pbft_replica r;
    ck_assert_int_eq(pbft_replica_init(&r, &c), PBFT_OK);
    pbft_actions *a = calloc(1, sizeof *a);
    pbft_actions_init(a);
    ck_assert_int_eq(pbft_replica_start(&r, a), PBFT_OK);
    pbft_actions_clear(a);
    uint8_t blk[] = "block one";
    pbft_event ev = {.kind = PBFT_EV_PROPOSAL, .height = 1, .data = blk, .len = sizeof blk};
    ck_assert_int_eq(pbft_replica_step(&r, &ev, a), PBFT_OK);
    pbft_actions_clear(a);
    pbft_progress p;
    pbft_replica_progress(&r, &p);
    ck_assert_uint_eq(p.height, 1);
    ck_assert(p.has_proposal);
    /* the primary's PRE-PREPARE stands for its prepare: bit 0, and nobody else's yet */
    ck_assert_uint_eq(p.prepare_mask & ~1ull, 0);
    ck_assert_uint_eq(p.commit_mask, 0);
    pbft_replica_free(&r);
    free(a);
}
END_TEST

int main(void) {
    Suite *s = suite_create("pbft_progress");
    TCase *t = tcase_create("progress");
    tcase_add_test(t, progress_of_a_fresh_replica_waits_for_height_one_without_votes);
    tcase_add_test(t, progress_counts_the_primarys_own_proposal);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
