/* bench_per_tx.c: the work each committed tx costs the cluster (docs/performance.md, "Per-tx
 * work"), counted, not timed: 4 validators on 127.0.0.1, each under the LD_PRELOAD counter
 * tests/tools/tem_count.c, are fed NTX pre-signed orders in batches of 64 (one client per node);
 * once every node has committed them all the nodes stop (SIGTERM: the counter writes its file at
 * exit) and the counts are divided by the committed txs. Per-block work (empty blocks while the
 * cluster starts and drains, pBFT messages, certificates) is included, as it is in a real run.
 *
 *   bench per_tx_secp_verifies_cluster V count limit 4.1 count ratio R   (issue #15: <= 4.1)
 *   bench per_tx_unpacks_per_node      SignedTx + TxBody unpacks per node (issue #11: <= 2)
 *   bench per_tx_sha256_tx_per_node    SHA-256 over the tx's own bytes per node (#11: <= 2)
 *   bench per_tx_sha256_all_per_node   every SHA-256 call per node, beside the 1 txid
 *   bench per_tx_unpacks_all_per_node  every protobuf unpack per node (blocks, pBFT, ...)
 *   bench per_tx_mallocs_cluster       malloc + calloc calls, beside issue #15's 275
 * For these lines lower is better and ratio = value / limit (at most 1 meets the target). */
#include "tests/bench/cluster_lib.h"

#define SIGNERS 128
#define PER_SIGNER 16

typedef struct {
    uint64_t secp, ed, unpack_tx, unpack_all, sha_tx, sha_all, mallocs;
} counts;

static void read_counts(int i, counts *c) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "cat %s/count.n%d.* 2>/dev/null", CL.dir, i);
    FILE *f = popen(cmd, "r");
    if (!f) cl_die("popen");
    char kind[32], name[96];
    unsigned long long v;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "%31s %95s %llu", kind, name, &v) != 3) continue;
        if (!strcmp(kind, "verify")) {
            if (!strcmp(name, "secp256k1")) c->secp += v;
            else c->ed += v;
        } else if (!strcmp(kind, "unpack")) {
            c->unpack_all += v;
            if (!strcmp(name, "tem.v1.SignedTx") || !strcmp(name, "tem.v1.TxBody")) c->unpack_tx += v;
        } else if (!strcmp(kind, "sha256")) {
            c->sha_all += v;
            if (!strcmp(name, "txid") || !strcmp(name, "mempool_log") || !strcmp(name, "sigcache_key")) c->sha_tx += v;
        } else if (!strcmp(kind, "alloc") && strcmp(name, "realloc") != 0) {
            c->mallocs += v;
        }
    }
    if (pclose(f) != 0) cl_die("no counter file (was the counter built?)");
}

static void line(const char *name, double v, const char *unit, double lim, const char *lunit) {
    printf("bench %s %.2f %s limit %.2f %s ratio %.3f\n", name, v, unit, lim, lunit, lim > 0 ? v / lim : 0.0);
    fflush(stdout);
}

int main(void) {
    const char *build = getenv("BUILD") ? getenv("BUILD") : "build";
    static char lib[512];
    char rel[300];
    snprintf(rel, sizeof rel, "%s/tools/tem_count.so", build);
    if (getenv("TEM_PERF_OUT")) {
        /* profiling run (docs/performance.md): no counter in the way */
    } else if (!realpath(rel, lib)) {
        printf("bench per_tx: SKIP: %s not built (make %s)\n", rel, rel);
        return 0;
    }
    CL.preload = getenv("TEM_PERF_OUT") ? NULL : lib;
    /* PER_SIGNER=N in the environment: a longer run (profiling) */
    int per_signer = getenv("PER_SIGNER") ? atoi(getenv("PER_SIGNER")) : PER_SIGNER;
    if (per_signer < 1 || per_signer > 64) per_signer = PER_SIGNER;
    cl_init("per-tx", SIGNERS, per_signer, 4000);
    for (int i = 0; i < CL_NODES; i++) cl_start_node(i);
    for (int i = 0; i < CL_NODES; i++) cl_wait_height(i, 2, 60);
    cl_sign_orders();
    cl_perf_start();
    double t0 = bench_now();
    int accepted = cl_load(0, per_signer, 0xf);
    if (accepted != CL.ntx) fprintf(stderr, "bench_per_tx: %d of %d accepted\n", accepted, CL.ntx);
    for (int i = 0; i < CL_NODES; i++) {
        int64_t d = 0;
        for (int t = 0; t < 1800 && (d = cl_txs_done(i)) < accepted; t++) usleep(100 * 1000);
        if (d < accepted) cl_die("the txs did not commit on every node in 180 s");
    }
    double secs = bench_now() - t0;
    int64_t h = cl_height(0);
    cl_perf_stop();
    if (getenv("TEM_PERF_OUT")) {
        printf("# %d txs committed on 4 validators in %.1f s, height %lld; profile in %s\n", accepted, secs, (long long)h,
               getenv("TEM_PERF_OUT"));
        cl_kill_all();
        return 0;
    }
    for (int i = 0; i < CL_NODES; i++) cl_stop_node(i, SIGTERM);
    counts c = {0};
    for (int i = 0; i < CL_NODES; i++) read_counts(i, &c);
    double n = accepted;
    printf("# %d txs committed on 4 validators in %.1f s, height %lld; cluster totals: secp256k1 %llu, Ed25519 %llu, "
           "unpacks %llu, SHA-256 %llu, mallocs %llu\n",
           accepted, secs, (long long)h, (unsigned long long)c.secp, (unsigned long long)c.ed,
           (unsigned long long)c.unpack_all, (unsigned long long)c.sha_all, (unsigned long long)c.mallocs);
    line("per_tx_secp_verifies_cluster", c.secp / n, "count", 4.1, "count");
    line("per_tx_unpacks_per_node", c.unpack_tx / n / 4, "count", 2.0, "count");
    line("per_tx_sha256_tx_per_node", c.sha_tx / n / 4, "count", 2.0, "count");
    line("per_tx_sha256_all_per_node", c.sha_all / n / 4, "count", 1.0, "count_txid");
    line("per_tx_unpacks_all_per_node", c.unpack_all / n / 4, "count", 2.0, "count_tx_decode");
    printf("# Ed25519 verifications (votes, certificates) per tx per node: %.2f\n", c.ed / n / 4);
    line("per_tx_mallocs_cluster", c.mallocs / n, "count", 275.0, "count_issue15_before");
    cl_kill_all();
    return 0;
}
