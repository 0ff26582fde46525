/* bench_scale_cluster.c: issue #15's "block time under light load does not grow with the
 * state", measured end to end. The same light load (LIGHT_RATE offers/s, one tx per POST, for
 * LIGHT_S s after a warm-up) on two fresh 4-validator clusters on 127.0.0.1: one whose genesis
 * lists the generator's SIGNERS signers only, one with enough more participants to make
 * 1,000,000 (keys nobody holds: node/sim/load.h, extra_participants). Each figure of the large
 * chain is printed beside the small chain's, measured in the same run (ratio = large / small,
 * so 1.0 is no growth):
 *   - the mean block interval;
 *   - p50 and p99 from due time to commit (what a meter waits).
 * `#` lines give each cluster's start (genesis written, 4 temd started, 2 blocks committed) in
 * wall seconds. About 2 minutes, ~1.2 GiB in BENCH_DIR (default /tmp) and ~5 GiB of memory
 * while the large cluster runs. Every process it starts is stopped by pid before it exits. */
#include "node/sim/load.h"
#include "tests/bench/bench_util.h"
#define CLUSTER_BENCH_NAME "bench_scale_cluster"
#include "tests/bench/cluster_bench.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define NODES 4
#define SIGNERS 256
#define LIGHT_RATE 200
#define LIGHT_S 20

static ctl_load_result run(double rate, double secs) {
    ctl_load_phase ph = {.rate_per_s = rate, .duration_s = secs, .batch = 1, .drain_s = 5, .warmup_s = 1};
    ctl_load_result r;
    if (ctl_load_run(gen, &ph, &r) != 0) die("load phase failed");
    if (r.uncommitted || r.accepted != r.offered) die("a light-load offer was refused or not committed");
    printf("# ");
    ctl_load_result_print(&r, stdout);
    return r;
}

/* Starts a chain of SIGNERS + extra participants, runs the light load on it, stops it. */
static ctl_load_result measure(const char *temd, uint32_t extra, double *start_s) {
    const char *root = getenv("BENCH_DIR") ? getenv("BENCH_DIR") : "/tmp";
    snprintf(dir, sizeof dir, "%s/tem-bench-scale-XXXXXX", root);
    if (!mkdtemp(dir)) die("mkdtemp");
    int base = cluster_ports_base(NODES);
    if (base < 0) die("no free block of ports below 32768");
    static const char *targs[] = {"--log-level", "warn"};
    ctl_load_cluster_config cc = {.temd = temd, .dir = dir, .base_port = base, .n_nodes = NODES, .signers = SIGNERS,
                                  .seed = 11, .temd_args = targs, .n_temd_args = 2, .extra_participants = extra};
    double t0 = bench_now();
    if (ctl_load_cluster_start(&cc, &cl) != 0) die("cluster did not start");
    *start_s = bench_now() - t0;
    static const char *nodes[NODES];
    for (int i = 0; i < NODES; i++) nodes[i] = cl.http[i];
    ctl_load_config lc = {.nodes = nodes, .n_nodes = NODES, .genesis = cl.genesis, .seed = 11, .signers = SIGNERS,
                          .conns_per_node = 16, .fresh = true};
    if (ctl_load_new(&lc, &gen) != 0) die("load generator");
    (void)run(100, 3);
    ctl_load_result r = run(LIGHT_RATE, LIGHT_S);
    cleanup();
    return r;
}

int main(void) {
    const char *build = getenv("BUILD") ? getenv("BUILD") : "build";
    char temd[256];
    snprintf(temd, sizeof temd, "%s/temd", build);
    if (access(temd, X_OK) != 0) {
        fprintf(stderr, "bench_scale_cluster: %s not built\n", temd);
        return 1;
    }
    double s_small, s_large;
    ctl_load_result small = measure(temd, 0, &s_small);
    ctl_load_result large = measure(temd, LEDGER_PARTICIPANTS_MAX - SIGNERS, &s_large);
    printf("# cluster start (genesis, 4 temd, 2 blocks): %.1f s wall at %d participants, %.1f s at %d\n", s_small,
           SIGNERS, s_large, LEDGER_PARTICIPANTS_MAX);
    static const struct {
        const char *name;
        size_t off;
    } lines[] = {{"cluster4_light_block_interval_1m_participants", offsetof(ctl_load_result, block_interval_ms)},
                 {"cluster4_light_latency_p50_1m_participants", offsetof(ctl_load_result, lat_p50_ms)},
                 {"cluster4_light_latency_p99_1m_participants", offsetof(ctl_load_result, lat_p99_ms)}};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        double v = *(const double *)((const char *)&large + lines[i].off);
        double lim = *(const double *)((const char *)&small + lines[i].off);
        printf("bench %s %.1f ms limit %.1f ms_at_%d_participants ratio %.3f\n", lines[i].name, v, lim, SIGNERS,
               lim > 0 ? v / lim : 0.0);
    }
    fflush(stdout);
    return 0;
}
