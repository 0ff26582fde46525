/* test_store_pipeline.c: a block's commit on the store's writer thread while the caller goes
 * on (ledger_store_apply_view_pipelined, docs/performance.md "Pipelining"): the same roots and
 * state as one apply after the other, the tip ahead of what LMDB holds only until the commit is
 * waited for, the next block built before the commit ran, and a kill at any point of it leaving
 * the store at a block boundary. */
#include <check.h>
#include <stdatomic.h>
#include <semaphore.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ledger/ledger.h"
#include "ledger/ledger_internal.h"
#include "tests/ledger_fixture.h"
#include "tests/store_fixture.h"

static uint8_t *build_block(ledger_store *s, uint32_t n, uint32_t senders, uint64_t time_ms, size_t *blen) {
    uint8_t *b = fx_build_transfers(s, n, senders, time_ms, blen);
    ck_assert_ptr_nonnull(b);
    return b;
}

static int apply_pipelined(ledger_store *s, const uint8_t *blk, size_t blen, ledger_apply_info *info) {
    ledger_block_view v;
    int rc = ledger_block_view_build(ledger_store_genesis(s), blk, blen, NULL, NULL, &v);
    if (rc != LEDGER_OK) return rc;
    rc = ledger_store_apply_view_pipelined(s, &v, NULL, 0, &FX_EXEC, LEDGER_APPLY_NO_CERT, info);
    /* the view may go as soon as the execution returned: the commit holds LMDB's own copies */
    ledger_block_view_free(&v);
    return rc;
}

static void assert_same_tip(ledger_store *a, ledger_store *b) {
    uint8_t sa[32], ra[32], sb[32], rb[32], ha[32], hb[32];
    ledger_store_roots(a, sa, ra);
    ledger_store_roots(b, sb, rb);
    ledger_store_last_hash(a, ha);
    ledger_store_last_hash(b, hb);
    ck_assert_uint_eq(ledger_store_height(a), ledger_store_height(b));
    ck_assert(memcmp(sa, sb, 32) == 0);
    ck_assert(memcmp(ra, rb, 32) == 0);
    ck_assert(memcmp(ha, hb, 32) == 0);
}

/* In a forked child: the store in dir with its writer thread (tree checkpoints every `every`
 * blocks, 0 = the default), blocks 1..upto applied pipelined and each commit waited for. */
static ledger_store *child_store(const char *dir, const ledger_genesis *g, uint64_t every, const uint8_t *const *blk,
                                 const size_t *bl, int upto) {
    ledger_store *cs;
    ledger_apply_info ci;
    if (ledger_store_open(dir, g, NULL, NULL, &cs) != LEDGER_OK) _exit(3);
    if (every) ledger__store_tree_tune(cs, every, 0);
    if (ledger_store_writer_start(cs, NULL, NULL) != LEDGER_OK) _exit(3);
    for (int h = 1; h <= upto; h++)
        if (apply_pipelined(cs, blk[h - 1], bl[h - 1], &ci) != LEDGER_OK || ledger_store_commit_wait(cs) != LEDGER_OK)
            _exit(5);
    return cs;
}

/* In a forked child: applies blk pipelined with the store's hook set to die by SIGKILL at
 * `point`; the caller goes on as temd's loop does, the writer thread dies at the hook. */
static void die_in_pipelined_apply(ledger_store *cs, int point, const uint8_t *blk, size_t bl) {
    ledger_apply_info ci;
    fx_kill_at = point;
    ledger_store_set_hook(cs, fx_kill_hook);
    if (apply_pipelined(cs, blk, bl, &ci) != LEDGER_OK) _exit(5);
    int rc = ledger_store_commit_wait(cs);
    (void)rc;
    pause();
    _exit(4);
}

/* The parent's side: the child must have died by SIGKILL. */
static void wait_killed(pid_t pid, int point) {
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "point %d: child not killed (%d)", point, st);
}

/* Closes both stores and removes their folders (paths from fx_tmpdir, freed here). */
static void close_pair(ledger_store *a, ledger_store *b, char *da, char *db) {
    ledger_store_close(a);
    ledger_store_close(b);
    fx_rmrf(da);
    fx_rmrf(db);
    free(da);
    free(db);
}

START_TEST(pipelined_blocks_give_the_roots_of_sequential_ones) {
    ledger_genesis g;
    fx_genesis(&g, 4);
    for (uint32_t seed = 1; seed <= 12; seed++) {
        srand(seed);
        char *da = fx_tmpdir("pipe-a"), *db = fx_tmpdir("pipe-b");
        ledger_store *a, *b;
        ck_assert_int_eq(ledger_store_open(da, &g, NULL, NULL, &a), LEDGER_OK);
        ck_assert_int_eq(ledger_store_open(db, &g, NULL, NULL, &b), LEDGER_OK);
        ck_assert_int_eq(ledger_store_writer_start(b, NULL, NULL), LEDGER_OK);
        ck_assert_int_eq(ledger_store_writer_start(b, NULL, NULL), LEDGER_EINVAL);
        uint32_t blocks = 6 + (uint32_t)(rand() % 8);
        for (uint32_t h = 1; h <= blocks; h++) {
            uint32_t n = (uint32_t)(rand() % 48), senders = 1 + (uint32_t)(rand() % 12);
            size_t bl;
            uint8_t *blk = build_block(a, n, senders, g.genesis_time_ms + 1000 * h, &bl);
            ledger_apply_info ia, ib;
            ck_assert_int_eq(ledger_store_apply(a, blk, bl, NULL, 0, &FX_EXEC, LEDGER_APPLY_NO_CERT, &ia), LEDGER_OK);
            ck_assert_int_eq(apply_pipelined(b, blk, bl, &ib), LEDGER_OK);
            ck_assert_uint_eq(ib.n_txs, n);
            ck_assert(memcmp(ia.state_root, ib.state_root, 32) == 0);
            ck_assert(memcmp(ia.block_hash, ib.block_hash, 32) == 0);
            /* the tip moved at once; what LMDB holds moves when the commit is waited for */
            assert_same_tip(a, b);
            ck_assert(ledger_store_commit_pending(b));
            ck_assert_uint_eq(ledger_store_durable_height(b), h - 1);
            uint8_t dh[32], dsr[32], ph[32], psr[32], prr[32];
            uint64_t dt;
            ledger_store_durable_tip(b, dh, dsr, &dt);
            ck_assert(memcmp(dh, ia.block_hash, 32) != 0);
            /* Half the time the next apply waits for it, half the time the caller does. */
            if (rand() % 2) {
                ck_assert_int_eq(ledger_store_commit_wait(b), LEDGER_OK);
                ck_assert(!ledger_store_commit_pending(b));
                ck_assert_uint_eq(ledger_store_durable_height(b), h);
                ledger_store_durable_tip(b, dh, dsr, &dt);
                ledger_store_last_hash(b, ph);
                ledger_store_roots(b, psr, prr);
                ck_assert(memcmp(dh, ph, 32) == 0);
                ck_assert(memcmp(dsr, psr, 32) == 0);
                uint8_t *rb;
                size_t rl;
                ck_assert_int_eq(ledger_store_block(b, h, &rb, &rl), LEDGER_OK);
                ck_assert_uint_eq(rl, bl);
                ck_assert(memcmp(rb, blk, bl) == 0);
                tem_free(rb);
            }
            tem_free(blk);
        }
        /* closing waits for the last commit: the reopened store is where the other one is */
        ledger_store_close(b);
        ck_assert_int_eq(ledger_store_open(db, &g, NULL, NULL, &b), LEDGER_OK);
        assert_same_tip(a, b);
        ck_assert_uint_eq(ledger_store_durable_height(b), blocks);
        close_pair(a, b, da, db);
    }
    ledger_genesis_free(&g);
}
END_TEST

/* Holds the writer thread just before its commit until the test lets it go. */
static sem_t at_commit, go_commit;
static void hold_hook(int point) {
    if (point != 4) return;
    if (sem_post(&at_commit) != 0) abort();
    while (sem_wait(&go_commit) != 0) {
    }
}

START_TEST(the_next_block_is_built_and_checked_before_the_commit_runs) {
    ledger_genesis g;
    fx_genesis(&g, 4);
    char *da = fx_tmpdir("pipe-a"), *db = fx_tmpdir("pipe-b");
    ledger_store *a, *b;
    ck_assert_int_eq(ledger_store_open(da, &g, NULL, NULL, &a), LEDGER_OK);
    ck_assert_int_eq(ledger_store_open(db, &g, NULL, NULL, &b), LEDGER_OK);
    ck_assert_int_eq(ledger_store_writer_start(b, NULL, NULL), LEDGER_OK);
    ck_assert_int_eq(sem_init(&at_commit, 0, 0), 0);
    ck_assert_int_eq(sem_init(&go_commit, 0, 0), 0);
    ledger_store_set_hook(b, hold_hook);
    size_t bl;
    uint8_t *blk = build_block(a, 30, 5, g.genesis_time_ms + 1000, &bl);
    ledger_apply_info info;
    ck_assert_int_eq(ledger_store_apply(a, blk, bl, NULL, 0, &FX_EXEC, LEDGER_APPLY_NO_CERT, &info), LEDGER_OK);
    ck_assert_int_eq(apply_pipelined(b, blk, bl, &info), LEDGER_OK);
    /* The writer thread is now parked before mdb_txn_commit: nothing of block 1 is in LMDB. */
    while (sem_wait(&at_commit) != 0) {
    }
    uint8_t *rb;
    size_t rl;
    ck_assert_int_eq(ledger_store_block(b, 1, &rb, &rl), LEDGER_ENOTFOUND);
    ck_assert_uint_eq(ledger_store_durable_height(b), 0);
    ck_assert_uint_eq(ledger_store_height(b), 1);
    /* ... yet the next block is built from b's tip and passes the checks against its state,
     * byte for byte the block a store that committed block 1 builds. */
    size_t bl2, bl2a;
    uint8_t *next = build_block(b, 20, 5, g.genesis_time_ms + 2000, &bl2);
    uint8_t *next_a = build_block(a, 20, 5, g.genesis_time_ms + 2000, &bl2a);
    ck_assert_uint_eq(bl2, bl2a);
    ck_assert(memcmp(next, next_a, bl2) == 0);
    ledger_block_view v;
    ck_assert_int_eq(ledger_block_view_build(&g, next, bl2, NULL, NULL, &v), LEDGER_OK);
    ck_assert_int_eq(ledger_block_view_precheck(b, &v, g.genesis_time_ms + 3000), LEDGER_OK);
    ledger_block_view_free(&v);
    ck_assert_int_eq(sem_post(&go_commit), 0);
    ck_assert_int_eq(ledger_store_commit_wait(b), LEDGER_OK);
    ck_assert_uint_eq(ledger_store_durable_height(b), 1);
    ck_assert_int_eq(ledger_store_block(b, 1, &rb, &rl), LEDGER_OK);
    tem_free(rb);
    /* the second block through the same path (the hook parks it too) */
    ck_assert_int_eq(ledger_store_apply(a, next_a, bl2a, NULL, 0, &FX_EXEC, LEDGER_APPLY_NO_CERT, &info), LEDGER_OK);
    ck_assert_int_eq(apply_pipelined(b, next, bl2, &info), LEDGER_OK);
    while (sem_wait(&at_commit) != 0) {
    }
    ck_assert_int_eq(sem_post(&go_commit), 0);
    ck_assert_int_eq(ledger_store_commit_wait(b), LEDGER_OK);
    assert_same_tip(a, b);
    ledger_store_set_hook(b, NULL);
    tem_free(blk);
    tem_free(next);
    tem_free(next_a);
    sem_destroy(&at_commit);
    sem_destroy(&go_commit);
    close_pair(a, b, da, db);
    ledger_genesis_free(&g);
}
END_TEST

/* A kill while the writer thread is before (4) or after (5) its commit, with the caller gone on
 * to the next block: the reopened store is at block 2 or 3, never between. */
START_TEST(a_kill_around_a_pipelined_commit_leaves_a_block_boundary) {
    ledger_genesis g;
    fx_genesis(&g, 4);
    for (int point = 4; point <= 5; point++) {
        char *dir = fx_tmpdir("pipe"), *dref = fx_tmpdir("pipe-ref");
        ledger_store *ref;
        ck_assert_int_eq(ledger_store_open(dref, &g, NULL, NULL, &ref), LEDGER_OK);
        size_t bl[3];
        uint8_t *blk[3];
        uint8_t roots[4][32], rr[32];
        ledger_store_roots(ref, roots[0], rr);
        ledger_apply_info info;
        for (int h = 1; h <= 3; h++) {
            blk[h - 1] = build_block(ref, 25, 4, g.genesis_time_ms + 1000 * (uint64_t)h, &bl[h - 1]);
            ck_assert_int_eq(ledger_store_apply(ref, blk[h - 1], bl[h - 1], NULL, 0, &FX_EXEC, LEDGER_APPLY_NO_CERT, &info),
                             LEDGER_OK);
            ledger_store_roots(ref, roots[h], rr);
        }
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            /* block 2's commit must not meet the hook */
            ledger_store *cs = child_store(dir, &g, 0, (const uint8_t *const *)blk, bl, 2);
            die_in_pipelined_apply(cs, point, blk[2], bl[2]);
        }
        wait_killed(pid, point);
        ledger_store *s;
        ck_assert_int_eq(ledger_store_open(dir, &g, NULL, NULL, &s), LEDGER_OK);
        uint64_t want = point == 4 ? 2 : 3;
        ck_assert_uint_eq(ledger_store_height(s), want);
        uint8_t sr[32];
        ledger_store_roots(s, sr, rr);
        ck_assert(memcmp(sr, roots[want], 32) == 0);
        if (point == 4) {
            /* and block 3 applies again after the restart */
            ck_assert_int_eq(apply_pipelined(s, blk[2], bl[2], &info), LEDGER_OK);
            ck_assert_int_eq(ledger_store_commit_wait(s), LEDGER_OK);
            ledger_store_roots(s, sr, rr);
            ck_assert(memcmp(sr, roots[3], 32) == 0);
        }
        for (int i = 0; i < 3; i++) tem_free(blk[i]);
        ledger_store_close(s);
        ledger_store_close(ref);
        fx_rmrf(dir);
        fx_rmrf(dref);
        free(dir);
        free(dref);
    }
    ledger_genesis_free(&g);
}
END_TEST

/* Tree checkpoints (docs/ledger.md, "Tree checkpoints") follow the commit of the block that
 * makes one due, in a transaction of their own: on the writer thread the caller learns of the
 * block's commit while the checkpoint is still being written (its hook at point 6 sleeps here:
 * the commit is reported long before it ends), and whatever reads the tree cache waits for it;
 * a kill inside it (before its commit: point 6, after: point 7) leaves the block committed and
 * the tree rebuilt from the checkpoint before and the log; a checkpoint that fails leaves the
 * block committed and is taken at the next block. Roots at every height are a sequential
 * reference store's. */
static _Atomic int CKPT_DONE;
static void slow_checkpoint_hook(int point) {
    if (point == 6) usleep(1500 * 1000);
    if (point == 7) atomic_store(&CKPT_DONE, 1);
}

START_TEST(a_tree_checkpoint_follows_its_blocks_commit_and_loses_nothing_if_killed_or_failed) {
    ledger_genesis g;
    fx_genesis(&g, 4);
    char *dref = fx_tmpdir("pipe-ref");
    ledger_store *ref;
    ck_assert_int_eq(ledger_store_open(dref, &g, NULL, NULL, &ref), LEDGER_OK);
    enum { NB = 6 };
    size_t bl[NB];
    uint8_t *blk[NB], roots[NB + 1][32], rr[32], sr[32];
    ledger_store_roots(ref, roots[0], rr);
    ledger_apply_info info;
    for (int h = 1; h <= NB; h++) {
        /* block 3 is empty: a checkpoint there writes only what earlier blocks left dirty */
        blk[h - 1] = build_block(ref, h == 3 ? 0 : 20, 5, g.genesis_time_ms + 1000 * (uint64_t)h, &bl[h - 1]);
        ck_assert_int_eq(ledger_store_apply(ref, blk[h - 1], bl[h - 1], NULL, 0, &FX_EXEC, LEDGER_APPLY_NO_CERT, &info),
                         LEDGER_OK);
        ledger_store_roots(ref, roots[h], rr);
    }

    /* 1. the writer thread: block 2's commit is reported while its checkpoint sleeps */
    char *dir = fx_tmpdir("pipe");
    ledger_store *s;
    ck_assert_int_eq(ledger_store_open(dir, &g, NULL, NULL, &s), LEDGER_OK);
    ledger__store_tree_tune(s, 2, 0); /* checkpoints at 2, 4, 6 */
    ck_assert_int_eq(ledger_store_writer_start(s, NULL, NULL), LEDGER_OK);
    ck_assert_int_eq(apply_pipelined(s, blk[0], bl[0], &info), LEDGER_OK);
    ck_assert_int_eq(ledger_store_commit_wait(s), LEDGER_OK);
    atomic_store(&CKPT_DONE, 0);
    ledger_store_set_hook(s, slow_checkpoint_hook);
    ck_assert_int_eq(apply_pipelined(s, blk[1], bl[1], &info), LEDGER_OK);
    ck_assert_int_eq(ledger_store_commit_wait(s), LEDGER_OK);
    ck_assert_uint_eq(ledger_store_durable_height(s), 2);
    ck_assert_int_eq(atomic_load(&CKPT_DONE), 0); /* the commit did not wait for the checkpoint */
    ck_assert_uint_eq(ledger__store_tree_height(s), 2); /* this waits for it */
    ck_assert_int_eq(atomic_load(&CKPT_DONE), 1);
    ledger_store_set_hook(s, NULL);
    for (int h = 3; h <= NB; h++) {
        ck_assert_int_eq(apply_pipelined(s, blk[h - 1], bl[h - 1], &info), LEDGER_OK);
        ck_assert_int_eq(ledger_store_commit_wait(s), LEDGER_OK);
        ledger_store_roots(s, sr, rr);
        ck_assert(memcmp(sr, roots[h], 32) == 0);
    }
    ck_assert_uint_eq(ledger__store_tree_height(s), 6);
    ledger_store_close(s);
    fx_rmrf(dir);
    free(dir);

    /* 2. killed inside the checkpoint of block 4 */
    for (int point = 6; point <= 7; point++) {
        dir = fx_tmpdir("pipe");
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            ledger_store *cs = child_store(dir, &g, 2, (const uint8_t *const *)blk, bl, 3);
            if (ledger__store_tree_height(cs) != 2) _exit(6);
            die_in_pipelined_apply(cs, point, blk[3], bl[3]);
        }
        wait_killed(pid, point);
        ck_assert_int_eq(ledger_store_open(dir, &g, NULL, NULL, &s), LEDGER_OK);
        ck_assert_uint_eq(ledger_store_height(s), 4);
        ledger_store_roots(s, sr, rr);
        ck_assert(memcmp(sr, roots[4], 32) == 0);
        ck_assert_uint_eq(ledger__store_tree_height(s), point == 6 ? 2 : 4);
        for (int h = 5; h <= NB; h++) {
            ck_assert_int_eq(ledger_store_apply(s, blk[h - 1], bl[h - 1], NULL, 0, &FX_EXEC, LEDGER_APPLY_NO_CERT, &info),
                             LEDGER_OK);
            ledger_store_roots(s, sr, rr);
            ck_assert_msg(memcmp(sr, roots[h], 32) == 0, "point %d: root of block %d", point, h);
        }
        ledger_store_close(s);
        fx_rmrf(dir);
        free(dir);
    }

    /* 3. block 2's checkpoint fails: block 2 stands, block 3 takes the checkpoint */
    dir = fx_tmpdir("pipe");
    ck_assert_int_eq(ledger_store_open(dir, &g, NULL, NULL, &s), LEDGER_OK);
    ledger__store_tree_tune(s, 2, 0);
    for (int h = 1; h <= 3; h++) {
        if (h == 2) ledger__store_fail_at(s, 6);
        ck_assert_int_eq(ledger_store_apply(s, blk[h - 1], bl[h - 1], NULL, 0, &FX_EXEC, LEDGER_APPLY_NO_CERT, &info),
                         LEDGER_OK);
        ledger_store_roots(s, sr, rr);
        ck_assert(memcmp(sr, roots[h], 32) == 0);
        ck_assert_uint_eq(ledger__store_tree_height(s), h == 3 ? 3 : 0);
    }
    ledger_store_close(s);
    ck_assert_int_eq(ledger_store_open(dir, &g, NULL, NULL, &s), LEDGER_OK);
    ck_assert_uint_eq(ledger_store_height(s), 3);
    ck_assert_uint_eq(ledger__store_tree_height(s), 3);
    ck_assert_int_eq(ledger_store_apply(s, blk[3], bl[3], NULL, 0, &FX_EXEC, LEDGER_APPLY_NO_CERT, &info), LEDGER_OK);
    ledger_store_roots(s, sr, rr);
    ck_assert(memcmp(sr, roots[4], 32) == 0);
    ledger_store_close(s);
    fx_rmrf(dir);
    free(dir);

    for (int i = 0; i < NB; i++) tem_free(blk[i]);
    ledger_store_close(ref);
    fx_rmrf(dref);
    free(dref);
    ledger_genesis_free(&g);
}
END_TEST

int main(void) {
    Suite *s = suite_create("store_pipeline");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, pipelined_blocks_give_the_roots_of_sequential_ones);
    tcase_add_test(tc, the_next_block_is_built_and_checked_before_the_commit_runs);
    tcase_add_test(tc, a_kill_around_a_pipelined_commit_leaves_a_block_boundary);
    tcase_add_test(tc, a_tree_checkpoint_follows_its_blocks_commit_and_loses_nothing_if_killed_or_failed);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
