/* bench_scale.c: a million meters on one chain (issue #15; docs/performance.md, "A million
 * meters"). One genesis of 1,000,000 participants (and one of 1,000 for comparison), written to
 * a file as a real genesis; then, each in its own process so its peak RSS is its own:
 * - first start: what temd does before it opens its sockets: ledger_genesis_load (read, hash,
 *   parse) and ledger_store_open with the market's genesis init (seed the accounts, write the
 *   state table and the state tree, commit, load the state back). Lines
 *   start_1m_participants_s (CPU seconds of that one-threaded process, limit 30 s; its wall time
 *   is on the next `#` line) and start_1m_rss_mib (peak RSS, limit 2048 MiB);
 * - restart on the same data dir (genesis load, open, tree root check);
 * - block time under light load: light blocks (LIGHT_TXS transfers each, market executor,
 *   signatures verified beforehand as the mempool does, fsync'd commit) applied on the 1M store
 *   and on the 1k store; line light_block_apply_ms_1m_participants (median CPU ms of one apply)
 *   with the 1k figure as limit.
 * Wall times on a machine shared with other jobs include their time slices, so the CPU seconds
 * of each process are printed beside them (`#` lines). */
#include "contracts/contracts.h"
#include "ledger/ledger.h"
#include "node/sim/load.h"
#include "tests/bench/bench_util.h"
#include "tests/ledger_fixture.h"

#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

enum { SENDERS = 16, LIGHT_TXS = 8, LIGHT_BLOCKS = 40 };

/* Participants 0..SENDERS-1 are fixture keys 2.. (they sign the light blocks' transfers); the
 * rest have the scale keys (ctl_load_scale_key, as tests/tools/gen_genesis.py makes them). */
static void write_genesis(const char *path, uint32_t n) {
    char *head = fx_genesis_json(4, NULL);
    size_t hl = strlen(head);
    TEM_ASSERT(hl > 2 && strcmp(head + hl - 2, "}\n") == 0);
    FILE *f = fopen(path, "w");
    TEM_ASSERT(f != NULL);
    fwrite(head, 1, hl - 2, f);
    tem_free(head);
    fputs(",\"participants\":[", f);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t pub[33];
        if (i < SENDERS) {
            uint8_t sec[32];
            fx_key(2 + i, sec, pub);
        } else {
            ctl_load_scale_key(i, pub);
        }
        char h[67];
        tem_hex(h, pub, 33);
        fprintf(f, "%s{\"pubkey\":\"%s\",\"bus\":%u,\"role\":\"prosumer\",\"money_uunit\":%s}", i ? "," : "", h,
                1 + i % 500, i < SENDERS ? "1000000000" : "1000000");
    }
    fputs("]}\n", f);
    TEM_ASSERT(fclose(f) == 0);
}

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int dbl_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* What a child reports: wall seconds of the genesis load and of the store open, and the
 * median wall and CPU ms of a light block (0 when no blocks were asked for). */
typedef struct {
    double load_s, open_s, block_ms, block_cpu_ms;
    int rc;
} child_out;

static void child_run(const char *genesis, const char *dir, int blocks, child_out *o) {
    ledger_genesis g;
    char err[256];
    double t0 = bench_now();
    if ((o->rc = ledger_genesis_load(genesis, &g, err, sizeof err)) != LEDGER_OK) {
        fprintf(stderr, "bench_scale: genesis: %s\n", err);
        return;
    }
    double t1 = bench_now();
    ledger_store *s;
    if ((o->rc = ledger_store_open(dir, &g, contracts_genesis_init, NULL, &s)) != LEDGER_OK) return;
    double t2 = bench_now();
    o->load_s = t1 - t0;
    o->open_s = t2 - t1;
    if (blocks > 0) {
        contracts_market *m;
        ledger_executor ex;
        TEM_ASSERT(contracts_market_new(&m) == LEDGER_OK);
        contracts_executor(m, &ex);
        double *ms = calloc((size_t)blocks, sizeof *ms), *cpu = calloc((size_t)blocks, sizeof *cpu);
        uint8_t prop[64], ppub[32];
        fx_vkey(0, prop, ppub);
        for (int b = 0; b < blocks && o->rc == LEDGER_OK; b++) {
            uint8_t *txs[LIGHT_TXS], *blk;
            size_t lens[LIGHT_TXS], blen;
            for (uint32_t i = 0; i < LIGHT_TXS; i++) {
                /* sender and receiver differ in every tx of every block: 2 accounts + 1 nonce */
                uint32_t f = (uint32_t)(b * LIGHT_TXS + i) % SENDERS;
                uint8_t sec[32], pub[33];
                fx_key(2 + f, sec, pub);
                txs[i] = fx_transfer(g.chain_id, 2 + f, 2 + (f + 1) % SENDERS,
                                     ledger_state_nonce(ledger_store_state(s), pub), 1, &lens[i]);
            }
            uint64_t t = ledger_store_last_time(s) + 1000;
            TEM_ASSERT(ledger_block_build(s, (const uint8_t *const *)txs, lens, LIGHT_TXS, t, ppub, &blk, &blen) ==
                       LEDGER_OK);
            ledger_apply_info info;
            double w0 = bench_now(), c0 = cpu_now();
            o->rc = ledger_store_apply(s, blk, blen, NULL, 0, &ex, LEDGER_APPLY_NO_CERT | LEDGER_APPLY_SIGS_OK, &info);
            cpu[b] = 1000 * (cpu_now() - c0);
            ms[b] = 1000 * (bench_now() - w0);
            TEM_ASSERT(o->rc != LEDGER_OK || info.n_refused == 0);
            tem_free(blk);
            for (uint32_t i = 0; i < LIGHT_TXS; i++) tem_free(txs[i]);
        }
        /* the first block rebuilds the market's caches from the state: left out of the median */
        qsort(ms + 1, (size_t)blocks - 1, sizeof *ms, dbl_cmp);
        qsort(cpu + 1, (size_t)blocks - 1, sizeof *cpu, dbl_cmp);
        o->block_ms = ms[1 + (blocks - 1) / 2];
        o->block_cpu_ms = cpu[1 + (blocks - 1) / 2];
        free(ms);
        free(cpu);
        contracts_market_free(m);
    }
    ledger_store_close(s);
    ledger_genesis_free(&g);
}

/* Runs child_run in a child process; *maxrss_mib and *cpu_s are the child's own. */
static child_out run_child(const char *genesis, const char *dir, int blocks, double *wall_s, double *maxrss_mib,
                           double *cpu_s) {
    int fd[2];
    TEM_ASSERT(pipe(fd) == 0);
    fflush(stdout);
    double t0 = bench_now();
    pid_t pid = fork();
    TEM_ASSERT(pid >= 0);
    if (pid == 0) {
        close(fd[0]);
        child_out o = {0};
        child_run(genesis, dir, blocks, &o);
        TEM_ASSERT(write(fd[1], &o, sizeof o) == (ssize_t)sizeof o);
        _exit(0);
    }
    close(fd[1]);
    child_out o = {.rc = -1};
    ssize_t got = read(fd[0], &o, sizeof o);
    close(fd[0]);
    int st;
    struct rusage ru;
    TEM_ASSERT(wait4(pid, &st, 0, &ru) == pid);
    *wall_s = bench_now() - t0;
    TEM_ASSERT(got == (ssize_t)sizeof o && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    if (o.rc != LEDGER_OK) {
        fprintf(stderr, "bench_scale: child failed: %s\n", ledger_strerror(o.rc));
        exit(1);
    }
    *maxrss_mib = (double)ru.ru_maxrss / 1024.0;
    *cpu_s = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
             ru.ru_stime.tv_usec * 1e-6;
    return o;
}

int main(int argc, char **argv) {
    uint32_t n = argc > 1 ? (uint32_t)strtoul(argv[1], NULL, 10) : 1000000;
    TEM_ASSERT(n >= SENDERS && n <= LEDGER_PARTICIPANTS_MAX);
    char base[] = "/tmp/tem-bench-scale-XXXXXX";
    TEM_ASSERT(mkdtemp(base) != NULL);
    char g_big[300], g_small[300], d_big[300], d_small[300];
    snprintf(g_big, sizeof g_big, "%s/genesis-big.json", base);
    snprintf(g_small, sizeof g_small, "%s/genesis-1k.json", base);
    snprintf(d_big, sizeof d_big, "%s/big", base);
    snprintf(d_small, sizeof d_small, "%s/small", base);
    double t0 = bench_now();
    write_genesis(g_big, n);
    write_genesis(g_small, 1000);
    struct stat sb;
    TEM_ASSERT(stat(g_big, &sb) == 0);
    printf("# genesis of %u participants: %.0f MiB of JSON, written in %.1f s\n", n, (double)sb.st_size / (1 << 20),
           bench_now() - t0);

    if (argc > 2 && (strcmp(argv[2], "start") == 0 || strcmp(argv[2], "blocks") == 0)) {
        /* `bench_scale N start|blocks`: one first start (and 1,000 light blocks) in this process,
         * for a profiler */
        child_out o = {0};
        child_run(g_big, d_big, argv[2][0] == 'b' ? 1000 : 0, &o);
        printf("# light block %.2f ms wall %.2f ms CPU\n", o.block_ms, o.block_cpu_ms);
        printf("# first start in-process: genesis load %.1f s, store open %.1f s\n", o.load_s, o.open_s);
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf %s", base);
        TEM_ASSERT(system(cmd) == 0);
        return o.rc == LEDGER_OK ? 0 : 1;
    }
    double wall, rss, cpu;
    child_out first = run_child(g_big, d_big, 0, &wall, &rss, &cpu);
    /* The start is one thread: on an idle machine its wall time is its CPU time plus the
     * commit's fsync. On a shared one the wall clock also counts the other jobs' time slices
     * (3-4x at a load average of 12 on 2 cores), so the line gives the CPU seconds and the wall
     * time follows on the `#` line. */
    printf("bench start_1m_participants_s %.1f s limit 30 s ratio %.3f\n", cpu, 30.0 / cpu);
    printf("bench start_1m_rss_mib %.0f MiB limit 2048 MiB ratio %.3f\n", rss, 2048.0 / rss);
    printf("# first start, %u participants: %.1f s wall (genesis load %.1f s, store open %.1f s), %.1f s CPU, "
           "peak RSS %.0f MiB\n",
           n, wall, first.load_s, first.open_s, cpu, rss);
    fflush(stdout);
    child_out re = run_child(g_big, d_big, LIGHT_BLOCKS, &wall, &rss, &cpu);
    printf("# restart and %d light blocks, %u participants: open %.1f s (genesis load %.1f s, store open %.1f s), "
           "%.1f s CPU in all, peak RSS %.0f MiB\n",
           LIGHT_BLOCKS, n, re.load_s + re.open_s, re.load_s, re.open_s, cpu, rss);
    child_out small = run_child(g_small, d_small, LIGHT_BLOCKS, &wall, &rss, &cpu);
    /* Block time under light load must not grow with the state: the limit is the same blocks'
     * time on a 1,000-participant chain, ratio = limit / value (1 = no growth). CPU time, as for
     * the start line: the fsync'd commit's wall time on a shared machine is mostly other jobs'
     * disk and CPU (the `#` line has it). */
    printf("bench light_block_apply_ms_1m_participants %.2f ms limit %.2f ms_at_1k_participants ratio %.3f\n",
           re.block_cpu_ms, small.block_cpu_ms, small.block_cpu_ms / re.block_cpu_ms);
    printf("# light block (%d transfers, fsync'd commit): %.2f ms wall, %.2f ms CPU at %u participants; %.2f ms "
           "wall, %.2f ms CPU at 1,000\n",
           LIGHT_TXS, re.block_ms, re.block_cpu_ms, n, small.block_ms, small.block_cpu_ms);
    TEM_ASSERT(stat(d_big, &sb) == 0);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "du -sm %s | cut -f1 | sed 's/^/# data dir MiB: /'; rm -rf %s", d_big, base);
    TEM_ASSERT(system(cmd) == 0);
    return 0;
}
