/* metrics.c: GET /metrics in the Prometheus text format 0.0.4. The series are read from the
 * node's counters on the loop thread when scraped, so a scrape costs nothing between scrapes.
 * Names follow Prometheus conventions (promtool check metrics is clean, tests/t_metrics.sh). */
#include "node/metrics.h"
#include "node/node_internal.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

/* process_* from /proc/self, as the Prometheus client libraries export them. */
static void process_metrics(FILE *f) {
    long tck = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    char buf[1024];
    FILE *st = fopen("/proc/self/stat", "r");
    if (st) {
        size_t n = fread(buf, 1, sizeof buf - 1, st);
        fclose(st);
        buf[n] = 0;
        /* Fields after the ")" that ends the command name: state is field 3. */
        char *p = strrchr(buf, ')');
        unsigned long utime = 0, stime = 0, vsize = 0;
        unsigned long long start = 0;
        long rss = 0;
        if (p && tck > 0 &&
            sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d %*d %*d %llu %lu %ld",
                   &utime, &stime, &start, &vsize, &rss) == 5) {
            fprintf(f, "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
                       "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %.2f\n",
                    (double)(utime + stime) / (double)tck);
            fprintf(f, "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
                       "# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes %lu\n", vsize);
            fprintf(f, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                       "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %ld\n",
                    rss * (page > 0 ? page : 4096));
            /* start is in ticks since boot: add the boot time from /proc/stat. */
            FILE *ps = fopen("/proc/stat", "r");
            unsigned long long btime = 0;
            char line[256];
            while (ps && fgets(line, sizeof line, ps))
                if (sscanf(line, "btime %llu", &btime) == 1) break;
            if (ps) fclose(ps);
            if (btime)
                fprintf(f, "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
                           "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %.2f\n",
                        (double)btime + (double)start / (double)tck);
        }
    }
    unsigned fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.') fds++;
        closedir(d);
        fprintf(f, "# HELP process_open_fds Number of open file descriptors.\n# TYPE process_open_fds gauge\n"
                   "process_open_fds %u\n", fds ? fds - 1 : 0); /* minus the one opendir holds */
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        fprintf(f, "# HELP process_max_fds Maximum number of open file descriptors.\n# TYPE process_max_fds gauge\n"
                   "process_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
}

#define GAUGE(name, help, fmt, v) \
    fprintf(f, "# HELP " name " " help "\n# TYPE " name " gauge\n" name " " fmt "\n", v)
#define COUNTER(name, help, v) \
    fprintf(f, "# HELP " name " " help "\n# TYPE " name " counter\n" name " %llu\n", (unsigned long long)(v))

int node_metrics_write(node *n, FILE *f) {
    fprintf(f, "# HELP tem_build_info The temd version and the chain it runs; the value is always 1.\n"
               "# TYPE tem_build_info gauge\ntem_build_info{version=\"%s\",chain_id=\"%s\",role=\"%s\"} 1\n",
            NODE_VERSION, n->g.chain_id, n->self >= 0 ? "validator" : "observer");
    process_metrics(f);
    GAUGE("tem_height", "Height of the last committed block.", "%llu", (unsigned long long)ledger_store_durable_height(n->store));
    GAUGE("tem_view", "Current pBFT view.", "%llu", (unsigned long long)(n->rep_ok ? pbft_replica_view(&n->rep) : 0));
    GAUGE("tem_last_commit_timestamp_seconds", "Wall time of the last block this node applied (0 before the first).",
          "%.3f", (double)n->last_commit_wall_ms / 1000.0);
    COUNTER("tem_view_changes_total", "View changes seen by this node.", n->view_changes);
    GAUGE("tem_mempool_txs", "Transactions waiting in the mempool.", "%u", n->mp ? node_mempool_size(n->mp) : 0);
    GAUGE("tem_mempool_txs_max", "Mempool capacity in transactions.", "%u", n->cfg.mempool_txs_max);
    COUNTER("tem_txs_committed_total", "Committed transactions that applied.", n->txs_committed);
    COUNTER("tem_txs_refused_total", "Committed transactions refused by the contracts.", n->txs_refused);
    COUNTER("tem_http_txs_accepted_total", "Transactions answered 202 at submission.", n->http_txs_accepted);
    COUNTER("tem_http_txs_rejected_total", "Transactions refused at submission.", n->http_txs_rejected);
    COUNTER("tem_blocks_applied_total", "Blocks applied since start.", n->blocks_applied);
    COUNTER("tem_store_write_txns_total", "LMDB write transactions the store committed, each synced to disk (one a block, one a tree checkpoint, the node's own records).",
            ledger_store_write_txns(n->store));
    COUNTER("tem_events_maker_block_reads_total", "Stored blocks read to name the maker of a fill in /v1/events (fills of a block just applied are named from its trade records).",
            n->events_maker_reads);
    uint64_t pk_hits, pk_misses;
    ledger_secp_key_cache_stats(&pk_hits, &pk_misses);
    COUNTER("tem_secp_key_cache_hits_total", "Signature checks that found the signer's parsed key cached (no square root).", pk_hits);
    COUNTER("tem_secp_key_cache_misses_total", "Signature checks that parsed the signer's compressed key.", pk_misses);
    /* Admission (docs/operate.md "Admission") and re-gossip. */
    COUNTER("tem_admission_refused_busy_total", "Client txs answered 503 EBUSY (estimated wait over the bound).",
            n->adm.refused_busy);
    COUNTER("tem_admission_refused_share_total", "Client txs answered 429 ESIGNERSHARE or EADDRSHARE.",
            n->adm.refused_signer + n->adm.refused_addr);
    GAUGE("tem_admission_capacity_txs_per_second", "Estimated rate at which blocks take txs off the mempool.", "%.1f",
          (double)n->adm.cap_mtps / 1000.0);
    GAUGE("tem_admission_wait_correction", "Factor the estimated wait is multiplied by, learnt from the waits of this node's own client txs (1 = none).",
          "%.3f", (double)n->adm.corr_pm / 1000.0);
    GAUGE("tem_admission_depth_max", "Mempool depth the admission bound admits at the estimated rate.", "%u",
          node_admission_depth_max(&n->adm));
    COUNTER("tem_regossip_txs_total", "Txs re-sent to the primary because they waited here over regossip_age_ms.",
            n->regossip_txs_sent);
    if (n->http) {
        COUNTER("tem_http_requests_limited_total", "Requests answered 429 ERATE (per-address rate limit).",
                net_http_requests_limited(n->http));
        COUNTER("tem_http_conns_refused_total", "Connections answered 429/503 at accept (table or per-address cap).",
                net_http_conns_refused(n->http));
        COUNTER("tem_http_conns_timed_out_total", "Connections cut for not sending a whole request in time.",
                net_http_conns_timed_out(n->http));
    }
    node_faults_metrics(n, f);
    GAUGE("tem_disk_full", "1 while the node paused for a full disk (not voting, refusing txs).", "%d", n->disk_full ? 1 : 0);
    GAUGE("tem_validators", "Validators in the genesis.", "%u", n->g.n_validators);
    GAUGE("tem_peers_connected", "Validators with an authenticated session.", "%u", n->net ? net_validators_connected(n->net) : 0);
    GAUGE("tem_observers_connected", "Observers with an authenticated session.", "%u", n->net ? net_observers_connected(n->net) : 0);
    fprintf(f, "# HELP tem_peer_up Whether this node has an authenticated session with validator peer.\n"
               "# TYPE tem_peer_up gauge\n");
    for (uint32_t i = 0; i < n->g.n_validators; i++) {
        if ((int)i == n->self) continue;
        fprintf(f, "tem_peer_up{peer=\"%u\",name=\"%s\"} %d\n", i, n->g.validators[i].name,
                n->net && net_peer_connected(n->net, i) ? 1 : 0);
    }
    if (n->net) {
        net_stats ns;
        net_stats_get(n->net, &ns);
        COUNTER("tem_net_received_bytes_total", "Peer payload bytes received.", ns.bytes_in);
        COUNTER("tem_net_sent_bytes_total", "Peer payload bytes sent.", ns.bytes_out);
        COUNTER("tem_net_frames_dropped_total", "Peer frames dropped by the per-peer rate limit.", ns.frames_dropped_rate);
        COUNTER("tem_net_handshakes_failed_total", "Peer handshakes that failed.", ns.handshakes_failed);
    }
    /* The market and the grid, from the applied blocks' receipts (node/archive.h). */
    const node_market_counts *mc = &n->archive.mc;
    COUNTER("tem_market_orders_total", "Order txs in applied blocks (applied or refused).", n->orders_committed);
    COUNTER("tem_market_trades_total", "Continuous-auction trades with energy (fills over 0 Wh).", mc->trades);
    COUNTER("tem_market_traded_wh_total", "Energy traded between peers, Wh.", mc->traded_wh);
    COUNTER("tem_market_traded_value_uunits_total", "Money paid for traded energy, micro-units.", mc->value_uunit);
    COUNTER("tem_market_fees_uunits_total", "Network and loss fees charged on fills, micro-units.", mc->fees_uunit);
    GAUGE("tem_market_clearing_price_uunits_per_kwh", "Volume-weighted trade price of the last block with trades.",
          "%llu", (unsigned long long)mc->last_price);
    COUNTER("tem_grid_curtailed_matches_total", "Matches the DSO's grid check curtailed.", mc->curtailed_matches);
    COUNTER("tem_grid_curtailed_wh_total", "Energy the DSO's grid check removed from matches, Wh.", mc->curtailed_wh);
    fprintf(f, "# HELP tem_grid_binding_total Curtailed matches per binding constraint (line F-T or bus B).\n"
               "# TYPE tem_grid_binding_total counter\n");
    for (uint32_t b = 0; b < mc->nbindings; b++) {
        /* Constraint names are "line F-T" or "bus B" from the chain: no quotes or backslashes. */
        fprintf(f, "tem_grid_binding_total{constraint=\"%s\"} %llu\n", mc->bindings[b].name,
                (unsigned long long)mc->bindings[b].count);
    }
    if (mc->bindings_other)
        fprintf(f, "tem_grid_binding_total{constraint=\"other\"} %llu\n", (unsigned long long)mc->bindings_other);
    /* Latency buckets are kept in ms (5 ms << b); exposed in seconds. */
    fprintf(f, "# HELP tem_commit_latency_seconds Time from a tx's 202 on this node to its block's commit.\n"
               "# TYPE tem_commit_latency_seconds histogram\n");
    uint64_t cum = 0;
    for (uint32_t b = 0; b < NODE_LATENCY_BUCKETS; b++) {
        cum += n->lat_bucket[b];
        fprintf(f, "tem_commit_latency_seconds_bucket{le=\"%g\"} %llu\n", (double)(5ull << b) / 1000.0, (unsigned long long)cum);
    }
    cum += n->lat_bucket[NODE_LATENCY_BUCKETS];
    fprintf(f, "tem_commit_latency_seconds_bucket{le=\"+Inf\"} %llu\ntem_commit_latency_seconds_sum %.3f\n"
               "tem_commit_latency_seconds_count %llu\n",
            (unsigned long long)cum, (double)n->lat_sum_ms / 1000.0, (unsigned long long)n->lat_count);
    return ferror(f) ? -1 : 0;
}

void node_metrics_http(void *ctx, net_http_req *req, const net_http_request *r) {
    (void)r;
    node *n = ctx;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    int rc = f ? node_metrics_write(n, f) : -1;
    if (f && fclose(f) != 0) rc = -1;
    if (rc != 0) {
        free(buf);
        node_reply_err(req, 500, "ENOMEM", "cannot build the metrics page");
        return;
    }
    /* A client that left before its answer is not an error for the node. */
    if (net_http_reply(req, 200, "text/plain; version=0.0.4; charset=utf-8", buf, len) != NET_OK) len = 0;
    free(buf);
}
