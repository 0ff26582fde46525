/* test_node_votes.c: Check suite for node/votes.c, the vote store in its own LMDB environment:
 * put/get round trips and overwrites, a record surviving close/reopen and a SIGKILL right after
 * the put returned, the one-time move of a record out of an older data dir's ledger meta table
 * (and what adopt reports when votes/ is lost afterwards), and the reason the store exists: a
 * vote is made durable while another thread holds a block's write transaction open on the
 * ledger's environment (ordered by semaphores, never by time; if the put waited for the ledger's
 * writer lock, the test would hang until Check's timeout fails it). */
#include "consensus/pbft.h"
#include "node/votes.h"
#include "tests/ledger_fixture.h"
#include "tests/store_fixture.h"

#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void expect_record(node_votes *v, const void *want, size_t want_len) {
    uint8_t *rec = NULL;
    size_t len = 0;
    ck_assert_int_eq(node_votes_get(v, &rec, &len), LEDGER_OK);
    ck_assert_uint_eq(len, want_len);
    ck_assert(memcmp(rec, want, want_len) == 0);
    tem_free(rec);
}

static void expect_meta(ledger_store *s, const void *want, size_t want_len) {
    uint8_t *rec = NULL;
    size_t len = 0;
    ck_assert_int_eq(ledger_store_meta_get(s, PBFT_VOTES_KEY, &rec, &len), LEDGER_OK);
    ck_assert_uint_eq(len, want_len);
    ck_assert(memcmp(rec, want, want_len) == 0);
    tem_free(rec);
}

/* ------------------------------------------------------------------ round trips */
START_TEST(votes_get_answers_the_last_put_and_notfound_before_any) {
    char *dir = fx_tmpdir("votes");
    node_votes *v = NULL;
    ck_assert_int_eq(node_votes_open(dir, &v), LEDGER_OK);
    ck_assert_ptr_nonnull(v);
    uint8_t *rec = (uint8_t *)"untouched";
    size_t len = 77;
    ck_assert_int_eq(node_votes_get(v, &rec, &len), LEDGER_ENOTFOUND);
    ck_assert_str_eq((char *)rec, "untouched"); /* outputs unchanged on error */
    ck_assert_uint_eq(len, 77);
    /* Rows: each put replaces the record, whatever its size (an empty record is the initial
     * replica's, a large one carries prepared blocks). */
    static uint8_t big[3 << 20];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (uint8_t)(i * 131 + 7);
    struct {
        const char *name;
        const uint8_t *rec;
        size_t len;
    } rows[] = {
        {"short", (const uint8_t *)"\x08\x01\x10\x00", 4},
        {"empty", (const uint8_t *)"", 0},
        {"3 MiB", big, sizeof big},
        {"short again", (const uint8_t *)"\x08\x02", 2},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        ck_assert_msg(node_votes_put(v, rows[i].rec, rows[i].len) == LEDGER_OK, "row %s", rows[i].name);
        expect_record(v, rows[i].rec, rows[i].len);
    }
    node_votes_close(v);
    node_votes_close(NULL);
    fx_rmrf(dir);
    free(dir);
}
END_TEST

START_TEST(votes_open_refuses_a_path_it_cannot_create) {
    node_votes *v = (node_votes *)&v; /* a sentinel that must survive the failure */
    node_votes *keep = v;
    ck_assert_int_eq(node_votes_open("/nonexistent-tem-dir/sub", &v), LEDGER_EIO);
    ck_assert_ptr_eq(v, keep);
    char longp[5000];
    memset(longp, 'a', sizeof longp - 1);
    longp[sizeof longp - 1] = 0;
    ck_assert_int_eq(node_votes_open(longp, &v), LEDGER_EINVAL);
    ck_assert_ptr_eq(v, keep);
}
END_TEST

/* ------------------------------------------------------------------ durability */
START_TEST(votes_survive_close_and_reopen) {
    char *dir = fx_tmpdir("votes");
    node_votes *v;
    ck_assert_int_eq(node_votes_open(dir, &v), LEDGER_OK);
    ck_assert_int_eq(node_votes_put(v, (const uint8_t *)"first", 5), LEDGER_OK);
    ck_assert_int_eq(node_votes_put(v, (const uint8_t *)"second", 6), LEDGER_OK);
    node_votes_close(v);
    char sub[128];
    struct stat st;
    ck_assert_int_lt(snprintf(sub, sizeof sub, "%s/%s/data.mdb", dir, NODE_VOTES_DIR), (int)sizeof sub);
    ck_assert_int_eq(stat(sub, &st), 0); /* the record lives in <data_dir>/votes, not data.mdb */
    ck_assert_int_eq(node_votes_open(dir, &v), LEDGER_OK);
    expect_record(v, "second", 6);
    node_votes_close(v);
    fx_rmrf(dir);
    free(dir);
}
END_TEST

START_TEST(votes_put_is_durable_when_it_returns_even_if_the_process_is_killed) {
    char *dir = fx_tmpdir("votes");
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        node_votes *v;
        if (node_votes_open(dir, &v) != LEDGER_OK) _exit(2);
        if (node_votes_put(v, (const uint8_t *)"voted at 7", 10) != LEDGER_OK) _exit(3);
        /* No close, no exit handlers: the put's return is all that made it durable. */
        raise(SIGKILL);
        _exit(4);
    }
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFSIGNALED(status));
    ck_assert_int_eq(WTERMSIG(status), SIGKILL);
    node_votes *v;
    ck_assert_int_eq(node_votes_open(dir, &v), LEDGER_OK);
    expect_record(v, "voted at 7", 10);
    node_votes_close(v);
    fx_rmrf(dir);
    free(dir);
}
END_TEST

/* ------------------------------------------------------------------ the move out of data.mdb */
START_TEST(votes_adopt_moves_an_older_data_dirs_record_once_and_marks_it_moved) {
    ledger_genesis g;
    fx_genesis(&g, 4);
    char *dir = fx_tmpdir("votes");
    ledger_store *s;
    ck_assert_int_eq(ledger_store_open(dir, &g, NULL, NULL, &s), LEDGER_OK);
    /* What a temd from before the vote store left behind. */
    ck_assert_int_eq(ledger_store_meta_put(s, PBFT_VOTES_KEY, "old-record", 10), LEDGER_OK);
    node_votes *v;
    node_votes_origin o = (node_votes_origin)99;
    ck_assert_int_eq(node_votes_open(dir, &v), LEDGER_OK);
    ck_assert_int_eq(node_votes_adopt(v, s, &o), LEDGER_OK);
    ck_assert_int_eq(o, NODE_VOTES_MIGRATED);
    expect_record(v, "old-record", 10);
    expect_meta(s, NODE_VOTES_MOVED_MARK, NODE_VOTES_MOVED_MARK_BYTES);
    /* From now on the vote store is the only source: new votes go there, a second start finds
     * them there and leaves both stores as they are. */
    ck_assert_int_eq(node_votes_put(v, (const uint8_t *)"new-record", 10), LEDGER_OK);
    node_votes_close(v);
    ledger_store_close(s);
    ck_assert_int_eq(ledger_store_open(dir, &g, NULL, NULL, &s), LEDGER_OK);
    ck_assert_int_eq(node_votes_open(dir, &v), LEDGER_OK);
    ck_assert_int_eq(node_votes_adopt(v, s, &o), LEDGER_OK);
    ck_assert_int_eq(o, NODE_VOTES_HELD);
    expect_record(v, "new-record", 10);
    expect_meta(s, NODE_VOTES_MOVED_MARK, NODE_VOTES_MOVED_MARK_BYTES);
    node_votes_close(v);
    /* votes/ lost (data.mdb restored alone): adopt says so instead of reporting "no votes". */
    char sub[128];
    ck_assert_int_lt(snprintf(sub, sizeof sub, "%s/%s", dir, NODE_VOTES_DIR), (int)sizeof sub);
    fx_rmrf(sub);
    ck_assert_int_eq(node_votes_open(dir, &v), LEDGER_OK);
    ck_assert_int_eq(node_votes_adopt(v, s, &o), LEDGER_OK);
    ck_assert_int_eq(o, NODE_VOTES_LOST);
    uint8_t *rec;
    size_t rl;
    ck_assert_int_eq(node_votes_get(v, &rec, &rl), LEDGER_ENOTFOUND);
    node_votes_close(v);
    ledger_store_close(s);
    fx_rmrf(dir);
    free(dir);
    ledger_genesis_free(&g);
}
END_TEST

START_TEST(votes_adopt_takes_the_ledgers_record_again_after_a_crash_between_the_two_writes) {
    ledger_genesis g;
    fx_genesis(&g, 4);
    char *dir = fx_tmpdir("votes");
    ledger_store *s;
    ck_assert_int_eq(ledger_store_open(dir, &g, NULL, NULL, &s), LEDGER_OK);
    node_votes *v;
    ck_assert_int_eq(node_votes_open(dir, &v), LEDGER_OK);
    /* The copy landed, the mark did not (or an older temd ran on the dir since): the ledger's
     * record is the newer one. */
    ck_assert_int_eq(node_votes_put(v, (const uint8_t *)"older", 5), LEDGER_OK);
    ck_assert_int_eq(ledger_store_meta_put(s, PBFT_VOTES_KEY, "newer!", 6), LEDGER_OK);
    node_votes_origin o;
    ck_assert_int_eq(node_votes_adopt(v, s, &o), LEDGER_OK);
    ck_assert_int_eq(o, NODE_VOTES_MIGRATED);
    expect_record(v, "newer!", 6);
    expect_meta(s, NODE_VOTES_MOVED_MARK, NODE_VOTES_MOVED_MARK_BYTES);
    node_votes_close(v);
    ledger_store_close(s);
    fx_rmrf(dir);
    free(dir);
    ledger_genesis_free(&g);
}
END_TEST

START_TEST(votes_adopt_on_a_new_data_dir_finds_none_and_marks_data_mdb) {
    ledger_genesis g;
    fx_genesis(&g, 4);
    char *dir = fx_tmpdir("votes");
    ledger_store *s;
    ck_assert_int_eq(ledger_store_open(dir, &g, NULL, NULL, &s), LEDGER_OK);
    node_votes *v;
    ck_assert_int_eq(node_votes_open(dir, &v), LEDGER_OK);
    node_votes_origin o;
    ck_assert_int_eq(node_votes_adopt(v, s, &o), LEDGER_OK);
    ck_assert_int_eq(o, NODE_VOTES_NONE);
    uint8_t *rec;
    size_t rl;
    ck_assert_int_eq(node_votes_get(v, &rec, &rl), LEDGER_ENOTFOUND);
    /* The mark makes a later loss of votes/ visible. */
    expect_meta(s, NODE_VOTES_MOVED_MARK, NODE_VOTES_MOVED_MARK_BYTES);
    /* Restart before any vote: the vote store exists and is empty, a validator that has not
     * voted yet: NONE, not LOST. */
    node_votes_close(v);
    ck_assert_int_eq(node_votes_open(dir, &v), LEDGER_OK);
    ck_assert_int_eq(node_votes_adopt(v, s, &o), LEDGER_OK);
    ck_assert_int_eq(o, NODE_VOTES_NONE);
    ck_assert_int_eq(node_votes_put(v, (const uint8_t *)"v", 1), LEDGER_OK);
    ck_assert_int_eq(node_votes_adopt(v, s, &o), LEDGER_OK);
    ck_assert_int_eq(o, NODE_VOTES_HELD);
    expect_record(v, "v", 1);
    node_votes_close(v);
    /* votes/ gone beside a marked data.mdb: LOST, and still LOST after a restart (the new
     * vote store is empty, which alone would read as "not voted yet") ... */
    char sub[128];
    ck_assert_int_lt(snprintf(sub, sizeof sub, "%s/%s", dir, NODE_VOTES_DIR), (int)sizeof sub);
    fx_rmrf(sub);
    for (int start = 0; start < 2; start++) {
        ck_assert_int_eq(node_votes_open(dir, &v), LEDGER_OK);
        ck_assert_int_eq(node_votes_adopt(v, s, &o), LEDGER_OK);
        ck_assert_msg(o == NODE_VOTES_LOST, "start %d: origin %d", start, o);
        node_votes_close(v);
    }
    /* ... until the node may vote again; a restart after that, before any vote, is NONE. */
    ck_assert_int_eq(node_votes_open(dir, &v), LEDGER_OK);
    ck_assert_int_eq(node_votes_adopt(v, s, &o), LEDGER_OK);
    ck_assert_int_eq(o, NODE_VOTES_LOST);
    ck_assert_int_eq(node_votes_end_wait(v), LEDGER_OK);
    ck_assert_int_eq(node_votes_end_wait(v), LEDGER_OK); /* no-op the second time */
    node_votes_close(v);
    ck_assert_int_eq(node_votes_open(dir, &v), LEDGER_OK);
    ck_assert_int_eq(node_votes_adopt(v, s, &o), LEDGER_OK);
    ck_assert_int_eq(o, NODE_VOTES_NONE);
    ck_assert_int_eq(node_votes_end_wait(v), LEDGER_OK);
    node_votes_close(v);
    ledger_store_close(s);
    fx_rmrf(dir);
    free(dir);
    ledger_genesis_free(&g);
}
END_TEST

START_TEST(votes_moved_mark_is_no_vote_record_an_older_temd_could_restore) {
    /* pbft_replica_restore unpacks the record first; a message that does not unpack is
     * PBFT_ERECORD, and temd then refuses to start consensus. */
    Tem__V1__PbftVoteRecord *r = tem__v1__pbft_vote_record__unpack(&ledger_pb_allocator, NODE_VOTES_MOVED_MARK_BYTES,
                                                                  (const uint8_t *)NODE_VOTES_MOVED_MARK);
    ck_assert_ptr_null(r);
}
END_TEST

/* ------------------------------------------------------------------ no wait for a block */
static sem_t IN_TXN, GO;
static void hold_before_commit(int point) {
    /* 4: every page of the block is written, the commit (and its fsync) is next; the ledger's
     * writer lock is held. */
    if (point != 4) return;
    TEM_ASSERT(sem_post(&IN_TXN) == 0);
    while (sem_wait(&GO) != 0) TEM_ASSERT(errno == EINTR);
}

typedef struct {
    ledger_store *s;
    uint64_t time_ms;
    int rc;
    _Atomic int done;
} apply_arg;

static void *apply_thread(void *p) {
    apply_arg *a = p;
    a->rc = fx_apply_transfers(a->s, 20, 5, a->time_ms, NULL, 0);
    a->done = 1;
    return NULL;
}

START_TEST(votes_put_completes_while_a_block_write_txn_holds_the_ledger_env) {
    ledger_genesis g;
    fx_genesis(&g, 4);
    char *dir = fx_tmpdir("votes");
    ledger_store *s;
    ck_assert_int_eq(ledger_store_open(dir, &g, NULL, NULL, &s), LEDGER_OK);
    node_votes *v;
    ck_assert_int_eq(node_votes_open(dir, &v), LEDGER_OK);
    ck_assert_int_eq(sem_init(&IN_TXN, 0, 0), 0);
    ck_assert_int_eq(sem_init(&GO, 0, 0), 0);
    ledger_store_set_hook(s, hold_before_commit);
    apply_arg a = {.s = s, .time_ms = g.genesis_time_ms + 1000, .rc = 1};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, apply_thread, &a), 0);
    while (sem_wait(&IN_TXN) != 0) ck_assert_int_eq(errno, EINTR);
    /* The block's write transaction is open and stays open until GO is posted. */
    for (int i = 0; i < 3; i++) {
        uint8_t rec[16];
        memset(rec, 'a' + i, sizeof rec);
        ck_assert_int_eq(node_votes_put(v, rec, sizeof rec), LEDGER_OK);
        expect_record(v, rec, sizeof rec);
    }
    ck_assert_int_eq(a.done, 0);
    ck_assert_uint_eq(ledger_store_durable_height(s), 0); /* LMDB does not hold block 1 yet */
    ck_assert_int_eq(sem_post(&GO), 0);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_int_eq(a.done, 1);
    ck_assert_int_eq(a.rc, LEDGER_OK);
    ck_assert_uint_eq(ledger_store_durable_height(s), 1);
    ledger_store_set_hook(s, NULL);
    /* Both stores hold what each committed. */
    uint8_t last[16];
    memset(last, 'c', sizeof last);
    expect_record(v, last, sizeof last);
    node_votes_close(v);
    ledger_store_close(s);
    ck_assert_int_eq(sem_destroy(&IN_TXN), 0);
    ck_assert_int_eq(sem_destroy(&GO), 0);
    fx_rmrf(dir);
    free(dir);
    ledger_genesis_free(&g);
}
END_TEST

static Suite *votes_suite(void) {
    Suite *s = suite_create("node_votes");
    TCase *t = tcase_create("core");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, votes_get_answers_the_last_put_and_notfound_before_any);
    tcase_add_test(t, votes_open_refuses_a_path_it_cannot_create);
    tcase_add_test(t, votes_survive_close_and_reopen);
    tcase_add_test(t, votes_put_is_durable_when_it_returns_even_if_the_process_is_killed);
    tcase_add_test(t, votes_adopt_moves_an_older_data_dirs_record_once_and_marks_it_moved);
    tcase_add_test(t, votes_adopt_takes_the_ledgers_record_again_after_a_crash_between_the_two_writes);
    tcase_add_test(t, votes_adopt_on_a_new_data_dir_finds_none_and_marks_data_mdb);
    tcase_add_test(t, votes_moved_mark_is_no_vote_record_an_older_temd_could_restore);
    tcase_add_test(t, votes_put_completes_while_a_block_write_txn_holds_the_ledger_env);
    suite_add_tcase(s, t);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(votes_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
