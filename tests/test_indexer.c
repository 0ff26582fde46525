/* test_indexer.c: the indexer's parts that need no PostgreSQL (tests/t_indexer.sh runs it against
 * a real server): the slot arithmetic that decides which slots a block closes and settles,
 * checked against a brute-force reference over many seeds; the [indexer] configuration; and a
 * worker that cannot reach its database neither blocks its start nor its stop. */
#include "contracts/contracts.h"
#include "node/indexer.h"
#include "tests/ledger_fixture.h"

#include <check.h>
#include <sys/stat.h>
#include <unistd.h>

/* splitmix64: a reproducible stream per seed */
static uint64_t rnd(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

START_TEST(indexer_slot_range_matches_brute_force_over_1000_seeds) {
    enum { SLOTS = 3000 };
    for (uint64_t seed = 0; seed < 1000; seed++) {
        uint64_t s = seed;
        int64_t gen = (int64_t)(rnd(&s) % 2000000000000ull);
        int64_t slot_ms = 1 + (int64_t)(rnd(&s) % 20000);
        int64_t off = (int64_t)(rnd(&s) % 80001) - 40000;
        /* bounds around the first SLOTS slots, sometimes before slot 0, sometimes empty */
        int64_t span = slot_ms * (SLOTS - 10);
        int64_t lo = gen + off - 3 * slot_ms + (int64_t)(rnd(&s) % (uint64_t)span);
        int64_t hi = lo + (int64_t)(rnd(&s) % (uint64_t)(slot_ms * 50)) - slot_ms;
        if (seed % 10 == 0) lo = INT64_MIN;
        if (seed % 10 == 1) hi = lo == INT64_MIN ? gen : lo; /* empty interval */
        if (hi > gen + off + (int64_t)(SLOTS - 1) * slot_ms) hi = gen + off + (int64_t)(SLOTS - 1) * slot_ms;
        bool want = false;
        uint64_t wf = 0, wl = 0;
        for (uint64_t k = 0; k < SLOTS; k++) {
            int64_t t = gen + (int64_t)k * slot_ms + off;
            if ((lo == INT64_MIN || t > lo) && t <= hi) {
                if (!want) wf = k;
                want = true;
                wl = k;
            }
        }
        uint64_t f = 99, l = 99;
        bool got = node_indexer_slot_range(gen, slot_ms, off, lo, hi, &f, &l);
        ck_assert_msg(got == want, "seed %llu: got %d want %d", (unsigned long long)seed, got, want);
        if (want) {
            ck_assert_msg(f == wf && l == wl, "seed %llu: [%llu,%llu] want [%llu,%llu]", (unsigned long long)seed,
                          (unsigned long long)f, (unsigned long long)l, (unsigned long long)wf, (unsigned long long)wl);
        }
    }
}
END_TEST

START_TEST(indexer_slot_range_edges) {
    uint64_t f, l;
    /* slot 0 starts at 1000, slot_ms 100: times 1000, 1100, ... */
    ck_assert(node_indexer_slot_range(1000, 100, 0, 999, 1000, &f, &l) && f == 0 && l == 0);
    ck_assert(!node_indexer_slot_range(1000, 100, 0, 1000, 1099, &f, &l)); /* (1000, 1099]: none */
    ck_assert(node_indexer_slot_range(1000, 100, 0, 1000, 1100, &f, &l) && f == 1 && l == 1);
    ck_assert(node_indexer_slot_range(1000, 100, -50, INT64_MIN, 1000, &f, &l) && f == 0 && l == 0);
    ck_assert(!node_indexer_slot_range(1000, 100, 0, INT64_MIN, 999, &f, &l)); /* before slot 0 */
    ck_assert(!node_indexer_slot_range(1000, 0, 0, 0, 5000, &f, &l));          /* no slot length */
    ck_assert(!node_indexer_slot_range(1000, 100, 0, 5000, 5000, &f, &l));     /* empty interval */
    ck_assert(node_indexer_slot_range(0, 1, 0, INT64_MIN, INT64_MAX, &f, &l) && f == 0 && l == (uint64_t)INT64_MAX);
}
END_TEST

static char *write_ini(const char *text) {
    char *p = strdup("/tmp/tem-ixconf-XXXXXX");
    int fd = mkstemp(p);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return p;
}

START_TEST(indexer_config_section_and_flags) {
    node_config c;
    node_config_defaults(&c);
    ck_assert_str_eq(c.indexer_postgres_url, "");
    ck_assert_uint_eq(c.indexer_poll_ms, 100);
    ck_assert_uint_eq(c.indexer_retry_max_ms, 5000);
    char *p = write_ini("[node]\ndata_dir = /var/lib/tem\n[indexer]\npostgres_url = postgresql://tem@db/tem\n"
                        "poll_ms = 250\nretry_max_ms = 60000\n");
    char err[256];
    ck_assert_int_eq(node_config_load(&c, p, err, sizeof err), NODE_OK);
    ck_assert_str_eq(c.indexer_postgres_url, "postgresql://tem@db/tem");
    ck_assert_uint_eq(c.indexer_poll_ms, 250);
    ck_assert_uint_eq(c.indexer_retry_max_ms, 60000);
    ck_assert_str_eq(c.data_dir, "/var/lib/tem");
    char *argv[] = {"temd", "--indexer-postgres-url", "postgresql:///x?host=/tmp", "--indexer-poll-ms=7", NULL};
    ck_assert_int_eq(node_config_flags(&c, 4, argv, err, sizeof err), NODE_OK);
    ck_assert_str_eq(c.indexer_postgres_url, "postgresql:///x?host=/tmp");
    ck_assert_uint_eq(c.indexer_poll_ms, 7);
    unlink(p);
    free(p);
    static const struct {
        const char *ini, *want;
    } bad[] = {
        {"[indexer]\nfrobnicate = 1\n", "indexer_frobnicate"},
        {"[indexer]\npoll_ms = 0\n", "indexer_poll_ms"},
        {"[indexer]\nretry_max_ms = soon\n", "indexer_retry_max_ms"},
        {"[indexer]\npoll_ms = 3600001\n", "indexer_poll_ms"},
        {"[indexers]\npostgres_url = x\n", "[indexers]"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        node_config_defaults(&c);
        p = write_ini(bad[i].ini);
        err[0] = 0;
        ck_assert_int_eq(node_config_load(&c, p, err, sizeof err), NODE_ECONFIG);
        ck_assert_msg(strstr(err, bad[i].want) != NULL, "%s: %s", bad[i].ini, err);
        ck_assert_uint_eq(c.indexer_poll_ms, 100); /* a refused value changed nothing */
        unlink(p);
        free(p);
    }
}
END_TEST

START_TEST(indexer_without_a_database_starts_and_stops_at_once) {
    ledger_genesis g;
    fx_genesis(&g, 4);
    char dir[] = "/tmp/tem-ixstore-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ledger_store *s;
    ck_assert_int_eq(ledger_store_open(dir, &g, contracts_genesis_init, NULL, &s), LEDGER_OK);
    char rdir[64];
    snprintf(rdir, sizeof rdir, "%s/indexer-replay", dir);
    /* a unix socket that does not exist: every connection attempt fails at once */
    node_indexer_config ic = {.postgres_url = "postgresql:///tem?host=/nonexistent-tem-dir&port=1",
                              .replay_dir = rdir, .poll_ms = 5, .retry_max_ms = 20, .log_level = NODE_LOG_ERROR + 1};
    node_indexer *ix = NULL;
    ck_assert_int_eq(node_indexer_start(&ic, s, &g, &ix), 0);
    ck_assert_ptr_nonnull(ix);
    usleep(200000); /* several failed attempts with backoff */
    ck_assert_uint_eq(node_indexer_height(ix), 0);
    node_indexer_stop(ix); /* joins: a hang here fails the test by its timeout */
    struct stat st;
    ck_assert_int_eq(stat(rdir, &st), 0); /* the worker ran: it created its replay store */
    node_indexer_stop(NULL);
    ledger_store_close(s);
    ledger_genesis_free(&g);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

int main(void) {
    Suite *su = suite_create("indexer");
    TCase *tc = tcase_create("indexer");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, indexer_slot_range_matches_brute_force_over_1000_seeds);
    tcase_add_test(tc, indexer_slot_range_edges);
    tcase_add_test(tc, indexer_config_section_and_flags);
    tcase_add_test(tc, indexer_without_a_database_starts_and_stops_at_once);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
