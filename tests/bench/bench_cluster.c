/* bench_cluster.c: a 4-validator temd cluster on 127.0.0.1 (ports below 32768) driven by the
 * open-loop load generator (node/sim/load.h), one tx per POST /v1/tx (BENCH_BATCH=N for
 * POST /v1/txs of N). Prints, each beside its limit measured in the same run:
 *   - saturation: committed txs/s, found by doubling the offered rate until the chain commits
 *     less than 80% of it, then bisecting three times between the last rate it kept up with
 *     and that one (limit: secp256k1 verifications/s x cores / 4, since every validator
 *     verifies every tx once);
 *   - p50 and p99 from due time to commit at half of saturation (limit: the mean block interval);
 *   - overload: twice saturation offered for 30 s: p99 from 202 to commit of the accepted txs
 *     (limit: admission_wait_ms_max + the mean block interval), p99 from due time to commit,
 *     and the share of the offers reaching a node that it refused (limit: 50%, what a perfect
 *     shedder refuses at 2x); what it committed, beside the saturation found and beside the
 *     verification limit (cluster4_sustained_committed_txs).
 * Each of the three measurements runs on a chain of its own, started fresh: the state a run
 * leaves behind (resting orders, trades) makes every later block dirty more LMDB pages, so
 * measuring overload on the chain the saturation search filled would compare unequal chains.
 * BENCH_DIR puts the data dirs elsewhere (e.g. /dev/shm, to see the nodes without the disk).
 * Every process it starts is killed by pid before it exits. */
#include "node/ctl/http.h"
#include "node/sim/load.h"
#include "tests/bench/bench_util.h"
#define CLUSTER_BENCH_NAME "bench_cluster"
#include "tests/bench/cluster_bench.h"

#include <secp256k1.h>
#include <unistd.h>

#define NODES 4
#define SIGNERS 4096
#define BOUND_MS 2000
/* The overload chain's generator: a signer is busy from its offer's due time until the node
 * answers (queued here for a connection, then 0.3-1.9 s in the node at 2x), and a connection
 * carries one request at a time, so 4,096 signers and 256 connections a node could offer only
 * 1.2-1.9x saturation (the rest counted as unsent). 640 connections stay under the 768 one
 * address may hold of a node's 1,024 (net/http.h: the last quarter is kept for others). */
#define OVERLOAD_SIGNERS 16384
#define OVERLOAD_CONNS 640

static double secp_verifies_per_s(void) {
    secp256k1_context *ctx = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
    uint8_t sec[32] = {1}, digest[32] = {2}, sig[64], pub[33];
    if (ledger_secp_pubkey(sec, pub) != LEDGER_OK || ledger_secp_sign(sec, digest, sig) != LEDGER_OK) die("secp setup");
    secp256k1_pubkey pk;
    secp256k1_ecdsa_signature s;
    if (!secp256k1_ec_pubkey_parse(ctx, &pk, pub, 33) || !secp256k1_ecdsa_signature_parse_compact(ctx, &s, sig)) die("secp parse");
    int n = 3000, ok = 0;
    double t0 = bench_now();
    for (int i = 0; i < n; i++) ok += secp256k1_ecdsa_verify(ctx, &s, digest, &pk);
    double r = n / (bench_now() - t0);
    secp256k1_context_destroy(ctx);
    if (ok != n) die("secp verify");
    return r;
}

static ctl_load_result run(ctl_load *l, double rate, double secs, double drain, uint32_t batch) {
    /* Each probe starts on a settled chain: a validator the last probe left behind catches up
     * first, or its backlog would be measured as this rate's. */
    ctl_load_phase ph = {.rate_per_s = rate, .duration_s = secs, .batch = batch, .drain_s = drain, .warmup_s = 1, .settle_s = 30};
    ctl_load_result r;
    if (ctl_load_run(l, &ph, &r) != 0) die("load phase failed");
    printf("# ");
    ctl_load_result_print(&r, stdout);
    return r;
}

/* A new 4-validator chain in a new data dir, and a generator for its seed signers. */
static void start_chain(const char *temd, uint32_t batch, uint32_t signers, uint32_t conns) {
    const char *root = getenv("BENCH_DIR") ? getenv("BENCH_DIR") : "/tmp";
    snprintf(dir, sizeof dir, "%s/tem-bench-cluster-XXXXXX", root);
    if (!mkdtemp(dir)) die("mkdtemp");
    int base = cluster_ports_base(NODES);
    if (base < 0) die("no free block of ports below 32768");
    static const char *targs[] = {"--log-level", "warn", "--http-rate-reqs-per-s", "0", "--http-conns-per-addr-max", "768",
                                  "--admission-addr-share-pct", "100", "--admission-wait-ms-max", "2000"};
    ctl_load_cluster_config cc = {.temd = temd, .dir = dir, .base_port = base, .n_nodes = NODES, .signers = signers,
                                  .seed = 7, .temd_args = targs, .n_temd_args = sizeof targs / sizeof targs[0]};
    if (ctl_load_cluster_start(&cc, &cl) != 0) die("cluster did not start");
    /* 256 connections a node for the saturation search and half saturation: each POST is
     * answered once its tx is durable (100-300 ms under load). */
    static const char *nodes[NODES];
    for (int i = 0; i < NODES; i++) nodes[i] = cl.http[i];
    ctl_load_config lc = {.nodes = nodes, .n_nodes = NODES, .genesis = cl.genesis, .seed = 7, .signers = signers,
                          .conns_per_node = conns, .fresh = true};
    if (ctl_load_new(&lc, &gen) != 0) die("load generator");
    /* A light warm-up first, so admission has measured the chain before the load (a node
     * that has seen no block with txs admits a small queue only). */
    (void)run(gen, 100, 3, 3, batch);
}

int main(void) {
    const char *build = getenv("BUILD") ? getenv("BUILD") : "build";
    uint32_t batch = getenv("BENCH_BATCH") ? (uint32_t)atoi(getenv("BENCH_BATCH")) : 1;
    char temd[256];
    snprintf(temd, sizeof temd, "%s/temd", build);
    if (access(temd, X_OK) != 0) {
        fprintf(stderr, "bench_cluster: %s not built\n", temd);
        return 1;
    }
    double limit = secp_verifies_per_s() * (double)sysconf(_SC_NPROCESSORS_ONLN) / NODES;
    start_chain(temd, batch, SIGNERS, 256);
    ctl_load *l = gen;
    /* Saturation: double the offered rate until the chain falls behind, then halve the gap
     * between the last rate it kept up with and the first it did not, three times: with
     * doubling alone a chain saturating at 2,400 tx/s reads as what it committed at 2,000
     * offered, or as what it managed in 5 s of 4,000 (anything from 1,000 to 2,400). */
    double sat = 0, kept = 0, lost = 0;
    for (double rate = 250; rate <= 8000; rate *= 2) {
        ctl_load_result r = run(l, rate, 5, 4, batch);
        if (r.committed_per_s > sat) sat = r.committed_per_s;
        if (r.committed_per_s < 0.8 * rate) {
            lost = rate;
            break;
        }
        kept = rate;
    }
    for (int i = 0; i < 3 && kept > 0 && lost > kept; i++) {
        double rate = (kept + lost) / 2;
        ctl_load_result r = run(l, rate, 5, 4, batch);
        if (r.committed_per_s > sat) sat = r.committed_per_s;
        if (r.committed_per_s >= 0.95 * rate) kept = rate;
        else lost = rate;
    }
    if (sat <= 0) die("nothing committed");
    bench_line("cluster4_saturation_committed_txs", sat, "txs/s", limit, "secp256k1_verifies/s_x_cores/4");

    cleanup();
    start_chain(temd, batch, SIGNERS, 256);
    l = gen;
    ctl_load_result h = run(l, sat / 2, 10, 6, batch);
    bench_line("cluster4_half_sat_latency_p50", h.lat_p50_ms, "ms", h.block_interval_ms, "ms_mean_block_interval");
    bench_line("cluster4_half_sat_latency_p99", h.lat_p99_ms, "ms", h.block_interval_ms, "ms_mean_block_interval");

    cleanup();
    start_chain(temd, batch, OVERLOAD_SIGNERS, OVERLOAD_CONNS);
    l = gen;
    ctl_load_result o = run(l, 2 * sat, 30, 8, batch);
    double bound = BOUND_MS + o.block_interval_ms;
    bench_line("cluster4_overload_accepted_wait_p99", o.wait_p99_ms, "ms", bound, "ms_admission_bound+block_interval");
    bench_line("cluster4_overload_accepted_latency_p99", o.lat_p99_ms, "ms", bound, "ms_admission_bound+block_interval");
    /* Of the offers that reached a node (the generator's own backlog is reported apart). */
    uint64_t answered = o.accepted + o.refused_busy + o.refused_share + o.refused_other;
    double refused = answered ? (double)(o.refused_busy + o.refused_share) / (double)answered : 0;
    bench_line("cluster4_overload_refused_share", 100 * refused, "pct_of_offered", 50, "pct_at_2x_saturation");
    /* Whether the generator offered what it meant to: the offers the nodes answered, a second,
     * beside twice the saturation found (below ~0.95 the other overload lines read a lighter
     * load than 2x). */
    bench_line("cluster4_overload_offers_answered", (double)answered / o.duration_s, "offers/s", 2 * sat,
               "offers/s_2x_saturation");
    bench_line("cluster4_overload_committed_txs", o.committed_per_s, "txs/s", sat, "txs/s_saturation");
    /* The same rate against the verification limit: 30 s of more than the chain takes, on a
     * fresh chain, where the search's 5 s probes run on a chain they fill and start each new
     * rate with admission's estimate of the last (docs/performance.md, "The figures"). */
    bench_line("cluster4_sustained_committed_txs", o.committed_per_s, "txs/s", limit, "secp256k1_verifies/s_x_cores/4");
    printf("# overload: %llu offered, %llu accepted, %llu refused busy, %llu refused share, %llu unsent (no idle signer or "
           "2 s backlog full: %llu), "
           "%llu accepted not committed, %llu blocks, longest gap %.0f ms\n",
           (unsigned long long)o.offered, (unsigned long long)o.accepted, (unsigned long long)o.refused_busy,
           (unsigned long long)o.refused_share, (unsigned long long)o.no_signer, (unsigned long long)o.unsent_backlog,
           (unsigned long long)o.uncommitted,
           (unsigned long long)o.blocks, o.block_gap_max_ms);
    /* Re-gossip must not amplify: txs re-sent by all nodes together per committed tx. */
    double regossip = 0, committed = 0;
    for (int i = 0; i < NODES; i++) {
        ctl_http_conn c;
        ctl_http_resp r;
        if (ctl_http_init(&c, cl.http[i], 5000) != 0) continue;
        if (ctl_http_request(&c, "GET", "/metrics", NULL, NULL, 0, &r) == 0) {
            const char *p = strstr(r.body, "\ntem_regossip_txs_total ");
            if (p) regossip += atof(p + strlen("\ntem_regossip_txs_total "));
            p = strstr(r.body, "\ntem_txs_committed_total ");
            if (p && i == 0) committed = atof(p + strlen("\ntem_txs_committed_total "));
            ctl_http_resp_free(&r);
        }
        ctl_http_close(&c);
    }
    printf("# re-gossip: %.0f txs re-sent by all nodes for %.0f committed (%.3f per committed tx)\n", regossip, committed,
           committed > 0 ? regossip / committed : 0);
    cleanup();
    return 0;
}
