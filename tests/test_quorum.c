/* test_quorum.c: the quorum size for every validator count. pBFT's safety needs any two quorums
 * to share at least f+1 validators (so at least one honest one), its liveness needs the n-f
 * honest validators to reach a quorum alone. 2f+1 has both only when n = 3f+1: with n = 5 two
 * quorums of 3 met in one validator. */
#include "ledger/ledger.h"

#include <check.h>

START_TEST(quorum_two_quorums_share_an_honest_validator_for_every_n) {
    for (uint32_t n = 1; n <= LEDGER_VALIDATORS_MAX; n++) {
        uint32_t f = (n - 1) / 3, q = ledger_quorum_of(n);
        ck_assert_msg(2 * q >= n + f + 1, "n=%u q=%u: two quorums may share only faulty validators", n, q);
        ck_assert_msg(q <= n - f, "n=%u q=%u: the honest validators cannot reach a quorum", n, q);
        /* the smallest such q: one less would break the intersection */
        ck_assert_msg(2 * (q - 1) < n + f + 1, "n=%u q=%u is not the smallest safe quorum", n, q);
        if (n % 3 == 1) ck_assert_uint_eq(q, 2 * f + 1);
    }
    ck_assert_uint_eq(ledger_quorum_of(4), 3);
    ck_assert_uint_eq(ledger_quorum_of(5), 4);
    ck_assert_uint_eq(ledger_quorum_of(6), 4);
    ck_assert_uint_eq(ledger_quorum_of(7), 5);
}
END_TEST

int main(void) {
    Suite *s = suite_create("quorum");
    TCase *t = tcase_create("quorum");
    tcase_add_test(t, quorum_two_quorums_share_an_honest_validator_for_every_n);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
