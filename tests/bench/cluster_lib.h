/* cluster_lib.h: a 4-validator temd cluster on 127.0.0.1 for the benches that need real nodes
 * (bench_per_tx: per-tx work under the LD_PRELOAD counter; bench_replay: replay and catch-up).
 * Header-only (static functions), one cluster per process. Every node is started here by fork
 * and exec, tracked by pid, and killed (TERM, then KILL after 5 s) by cl_kill_all, which also
 * removes the cluster's directory. The load is pre-signed order txs posted in batches of 64 over
 * keep-alive HTTP, one client thread per node (closed loop: the next batch leaves when the node
 * answered the last). */
#ifndef CLUSTER_LIB_H
#define CLUSTER_LIB_H

#include "node/sim/testnet.h"
#include "tests/bench/bench_util.h"

#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Every helper is static and may go unused by one bench. */
#define CL_FN __attribute__((unused)) static
#define CL_NODES 4
#define CL_BATCH 64

typedef struct {
    char dir[64];
    pid_t pids[CL_NODES];
    int base_port;
    char temd[256];
    const char *preload;   /* LD_PRELOAD for the nodes, or NULL */
    int nsigners, per_signer;
    uint8_t (*msec)[32];   /* nsigners + 2 meter keys */
    uint8_t **tx;
    size_t *len;
    uint8_t (*txid)[32];
    int ntx;
} cl_cluster;

static cl_cluster CL;
static pid_t cl_perf_pid;

/* With TEM_PERF_OUT=FILE set, `perf record --call-graph dwarf` samples the running nodes until cl_perf_stop
 * (docs/performance.md, "Where a tx's microseconds go"). */
CL_FN void cl_perf_start(void) {
    const char *out = getenv("TEM_PERF_OUT");
    if (!out) return;
    char pids[128] = "";
    size_t k = 0;
    for (int i = 0; i < CL_NODES; i++)
        if (CL.pids[i] > 0) k += (size_t)snprintf(pids + k, sizeof pids - k, "%s%d", k ? "," : "", (int)CL.pids[i]);
    pid_t p = fork();
    if (p == 0) {
        execlp("perf", "perf", "record", "-q", "--call-graph", "dwarf,8192", "-F", "499", "-o", out, "-p", pids, (char *)NULL);
        _exit(127);
    }
    cl_perf_pid = p > 0 ? p : 0;
    usleep(300 * 1000); /* perf attaches */
}

CL_FN void cl_perf_stop(void) {
    if (cl_perf_pid <= 0) return;
    kill(cl_perf_pid, SIGINT);
    waitpid(cl_perf_pid, NULL, 0);
    cl_perf_pid = 0;
}

CL_FN void cl_stop_node(int i, int sig) {
    if (CL.pids[i] <= 0) return;
    kill(CL.pids[i], sig);
    for (int k = 0; k < 50; k++) {
        if (waitpid(CL.pids[i], NULL, WNOHANG) == CL.pids[i]) {
            CL.pids[i] = 0;
            return;
        }
        usleep(100 * 1000);
    }
    kill(CL.pids[i], SIGKILL);
    waitpid(CL.pids[i], NULL, 0);
    CL.pids[i] = 0;
}

CL_FN void cl_kill_all(void) {
    if (cl_perf_pid > 0) {
        kill(cl_perf_pid, SIGINT);
        waitpid(cl_perf_pid, NULL, 0);
        cl_perf_pid = 0;
    }
    for (int i = 0; i < CL_NODES; i++)
        if (CL.pids[i] > 0) kill(CL.pids[i], SIGTERM);
    for (int i = 0; i < CL_NODES; i++) cl_stop_node(i, SIGTERM);
    if (!CL.dir[0] || getenv("KEEP")) return;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", CL.dir);
    if (system(cmd) != 0) fprintf(stderr, "cluster: cannot remove %s\n", CL.dir);
}

CL_FN void cl_die(const char *why) {
    fprintf(stderr, "cluster: %s\n", why);
    cl_kill_all();
    exit(1);
}

CL_FN double cl_secp_verifies_per_s(void) {
    uint8_t sec[32] = {1}, digest[32] = {2}, sig[64], pub[33];
    if (ledger_secp_pubkey(sec, pub) != LEDGER_OK || ledger_secp_sign(sec, digest, sig) != LEDGER_OK) cl_die("secp setup");
    int n = 3000, ok = 0;
    double t0 = bench_now();
    for (int i = 0; i < n; i++) ok += ledger_secp_verify(pub, digest, sig) == LEDGER_OK;
    double r = n / (bench_now() - t0);
    if (ok != n) cl_die("secp verify");
    return r;
}

/* Keys, genesis and the data dirs' parent; signers x per_signer txs to come. */
CL_FN void cl_init(const char *name, int nsigners, int per_signer, int max_block_txs) {
    const char *build = getenv("BUILD") ? getenv("BUILD") : "build";
    snprintf(CL.temd, sizeof CL.temd, "%s/temd", build);
    if (access(CL.temd, X_OK) != 0) cl_die("temd not built");
    snprintf(CL.dir, sizeof CL.dir, "/tmp/tem-%s-XXXXXX", name);
    if (!mkdtemp(CL.dir)) cl_die("mkdtemp");
    CL.base_port = 20000 + (int)(getpid() % 600) * 20;
    CL.nsigners = nsigners;
    CL.per_signer = per_signer;
    CL.ntx = nsigners * per_signer;
    CL.msec = calloc((size_t)nsigners + 2, 32);
    CL.tx = calloc((size_t)CL.ntx, sizeof *CL.tx);
    CL.len = calloc((size_t)CL.ntx, sizeof *CL.len);
    CL.txid = calloc((size_t)CL.ntx, 32);
    size_t cap = 1 << 20, k = 0;
    char path[256], *js = malloc(cap);
    if (!CL.msec || !CL.tx || !CL.len || !CL.txid || !js) cl_die("out of memory");
    uint64_t now_ms = (uint64_t)time(NULL) * 1000;
    k += (size_t)snprintf(js + k, cap - k, "{\"chain_id\":\"tem-bench\",\"genesis_time_ms\":%llu,\"validators\":[",
                          (unsigned long long)(now_ms - now_ms % 60000));
    for (int i = 0; i < CL_NODES; i++) {
        ledger_keyfile kf = {.is_validator = 1};
        if (ledger_ed_keygen(kf.ed_sec, kf.ed_pub) != LEDGER_OK) cl_die("keygen");
        snprintf(path, sizeof path, "%s/v%d.key", CL.dir, i);
        if (ledger_keyfile_write(path, &kf) != LEDGER_OK) cl_die("key file");
        char h[65];
        tem_hex(h, kf.ed_pub, 32);
        k += (size_t)snprintf(js + k, cap - k, "%s{\"name\":\"v%d\",\"pubkey\":\"%s\",\"address\":\"127.0.0.1:%d\",\"http\":\"127.0.0.1:%d\"}",
                              i ? "," : "", i, h, CL.base_port + i, CL.base_port + 10 + i);
    }
    k += (size_t)snprintf(js + k, cap - k, "],\"admins\":[],\"participants\":[");
    for (int i = 0; i < nsigners + 2; i++) {
        uint8_t pub[33];
        if (ledger_secp_keygen(CL.msec[i], pub) != LEDGER_OK) cl_die("meter keygen");
        char h[67];
        tem_hex(h, pub, 33);
        const char *role = i == nsigners ? "utility" : i == nsigners + 1 ? "dso" : "prosumer";
        k += (size_t)snprintf(js + k, cap - k, "%s{\"pubkey\":\"%s\",\"bus\":1,\"role\":\"%s\",\"money_uunit\":%s,\"tokens_wh\":%s}",
                              i ? "," : "", h, role, i < nsigners ? "1000000000000" : "0", i < nsigners ? "100000000" : "0");
        if (cap - k < 512) cl_die("genesis too large");
    }
    k += (size_t)snprintf(js + k, cap - k,
                          "],\"tariffs\":[{\"start_minute\":0,\"retail_uunit_per_kwh\":300000,\"feed_in_uunit_per_kwh\":80000}],"
                          "\"market\":{\"slot_ms\":60000,\"gate_closure_ms\":1000},\"limits\":{\"max_block_txs\":%d}}\n",
                          max_block_txs);
    snprintf(path, sizeof path, "%s/genesis.json", CL.dir);
    FILE *f = fopen(path, "w");
    if (!f || fwrite(js, 1, k, f) != k || fclose(f) != 0) cl_die("genesis");
    free(js);
}

CL_FN void cl_start_node(int i) {
    char dd[256], key[256], gen[256], logp[256], out[256];
    snprintf(dd, sizeof dd, "%s/n%d", CL.dir, i);
    snprintf(key, sizeof key, "%s/v%d.key", CL.dir, i);
    snprintf(gen, sizeof gen, "%s/genesis.json", CL.dir);
    snprintf(logp, sizeof logp, "%s/n%d.log", CL.dir, i);
    snprintf(out, sizeof out, "%s/count.n%d", CL.dir, i);
    pid_t p = fork();
    if (p < 0) cl_die("fork");
    if (p == 0) {
        FILE *lf = freopen(logp, "a", stderr);
        (void)lf;
        if (CL.preload) {
            setenv("LD_PRELOAD", CL.preload, 1);
            setenv("TEM_COUNT_OUT", out, 1);
        }
        execl(CL.temd, CL.temd, "--data-dir", dd, "--genesis", gen, "--key", key, "--log-level", "warn",
              "--mempool-nonce-window", "64",
              /* These benches count the work a committed tx costs and time replay and catch-up
               * over a fixed set of txs: a refusal would leave a nonce gap that never commits.
               * Admission has its own bench (bench_cluster's overload lines). */
              "--admission-wait-ms-max", "0", (char *)NULL);
        _exit(127);
    }
    CL.pids[i] = p;
}

CL_FN void cl_url(int i, char *url, size_t n) { snprintf(url, n, "127.0.0.1:%d", CL.base_port + 10 + i); }

/* Node i's height, or -1 when it does not answer. */
CL_FN int64_t cl_height(int i) {
    ctl_http_conn c;
    char url[64];
    cl_url(i, url, sizeof url);
    if (ctl_http_init(&c, url, 2000) != 0) return -1;
    ctl_api_status st;
    int64_t h = ctl_api_status_get(&c, &st) == 0 ? (int64_t)st.height : -1;
    ctl_http_close(&c);
    return h;
}

CL_FN void cl_wait_height(int i, int64_t h, int seconds) {
    for (int t = 0; t < seconds * 10; t++) {
        if (cl_height(i) >= h) return;
        usleep(100 * 1000);
    }
    cl_die("a node did not reach the height in time");
}

/* Order txs for a slot two ahead, buys and sells crossing around 150000 (as bench_cluster). */
CL_FN void cl_sign_orders(void) {
    ledger_genesis g;
    char gp[256], err[256];
    snprintf(gp, sizeof gp, "%s/genesis.json", CL.dir);
    if (ledger_genesis_load(gp, &g, err, sizeof err) != LEDGER_OK) cl_die(err);
    uint64_t slot = ((uint64_t)time(NULL) * 1000 - g.genesis_time_ms) / 60000 + 2;
    for (int s = 0; s < CL.nsigners; s++)
        for (int j = 0; j < CL.per_signer; j++) {
            int t = s * CL.per_signer + j;
            Tem__V1__TxBody b = TEM__V1__TX_BODY__INIT;
            Tem__V1__Order o = TEM__V1__ORDER__INIT;
            o.slot = slot;
            o.side = (s + j) % 2 ? TEM__V1__SIDE__BUY : TEM__V1__SIDE__SELL;
            o.price = 120000 + (uint64_t)((s * 7919 + j * 104729) % 60000);
            o.quantity_wh = 100 + (uint64_t)((s + j * 13) % 900);
            b.chain_id = g.chain_id;
            b.nonce = (uint64_t)j;
            b.kind_case = TEM__V1__TX_BODY__KIND_ORDER;
            b.order = &o;
            if (ledger_tx_build(&b, CL.msec[s], &CL.tx[t], &CL.len[t], CL.txid[t]) != LEDGER_OK) cl_die("sign");
        }
    ledger_genesis_free(&g);
}

typedef struct {
    int node, nodes; /* this client feeds signers s with s % nodes == node */
    int j_lo, j_hi;  /* nonces j_lo..j_hi-1 of each */
    int ok, refused;
} cl_client;

CL_FN void *cl_client_main(void *arg) {
    cl_client *c = arg;
    ctl_http_conn conn;
    char url[64];
    cl_url(c->node, url, sizeof url);
    if (ctl_http_init(&conn, url, 30000) != 0) return NULL;
    int *idx = malloc((size_t)CL.ntx * sizeof *idx), n = 0;
    uint8_t *buf = malloc(CL_BATCH * 512);
    if (!idx || !buf) cl_die("out of memory");
    for (int j = c->j_lo; j < c->j_hi; j++)
        for (int s = c->node; s < CL.nsigners; s += c->nodes) idx[n++] = s * CL.per_signer + j;
    for (int off = 0; off < n; off += CL_BATCH) {
        int m = n - off < CL_BATCH ? n - off : CL_BATCH;
        size_t bl = 0;
        for (int i = 0; i < m; i++) {
            int t = idx[off + i];
            tem_put_u32be(buf + bl, (uint32_t)CL.len[t]);
            memcpy(buf + bl + 4, CL.tx[t], CL.len[t]);
            bl += 4 + CL.len[t];
        }
        ctl_http_resp r;
        if (ctl_http_request(&conn, "POST", "/v1/txs", "application/x-protobuf", buf, bl, &r) != 0) {
            c->refused += m;
            continue;
        }
        json_t *j = json_loadb(r.body, r.len, 0, NULL);
        for (int i = 0; i < m; i++) {
            json_t *e = json_array_get(j, (size_t)i);
            if (e && !json_object_get(e, "error")) c->ok++;
            else c->refused++;
        }
        json_decref(j);
        ctl_http_resp_free(&r);
    }
    free(buf);
    free(idx);
    ctl_http_close(&conn);
    return NULL;
}

/* Posts nonces j_lo..j_hi-1 of every signer, each signer to one of the running nodes in
 * `mask`; returns the number the nodes accepted. */
CL_FN int cl_load(int j_lo, int j_hi, unsigned mask) {
    int ids[CL_NODES], k = 0;
    for (int i = 0; i < CL_NODES; i++)
        if (mask >> i & 1) ids[k++] = i;
    pthread_t th[CL_NODES];
    cl_client cl[CL_NODES];
    for (int i = 0; i < k; i++) {
        cl[i] = (cl_client){.node = ids[i], .nodes = k, .j_lo = j_lo, .j_hi = j_hi};
        if (pthread_create(&th[i], NULL, cl_client_main, &cl[i]) != 0) cl_die("thread");
    }
    int ok = 0;
    for (int i = 0; i < k; i++) {
        pthread_join(th[i], NULL);
        ok += cl[i].ok;
    }
    return ok;
}

/* Node i's tem_txs_committed_total + tem_txs_refused_total since it started, or -1. */
CL_FN int64_t cl_txs_done(int i) {
    ctl_http_conn c;
    char url[64];
    cl_url(i, url, sizeof url);
    if (ctl_http_init(&c, url, 2000) != 0) return -1;
    ctl_http_resp r;
    int64_t v = -1;
    if (ctl_http_request(&c, "GET", "/metrics", NULL, NULL, 0, &r) == 0) {
        const char *names[] = {"\ntem_txs_committed_total ", "\ntem_txs_refused_total "};
        v = 0;
        for (int k = 0; k < 2; k++) {
            const char *p = strstr(r.body, names[k]);
            if (p) v += strtoll(p + strlen(names[k]), NULL, 10);
        }
        ctl_http_resp_free(&r);
    }
    ctl_http_close(&c);
    return v;
}

#endif
