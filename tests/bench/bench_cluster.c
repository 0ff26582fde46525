/* bench_cluster.c: a 4-validator temd cluster on 127.0.0.1 fed pre-signed orders over
 * keep-alive HTTP (POST /v1/txs batches, one client thread per node). Prints committed txs/s
 * beside the machine's secp256k1 verifications/s x cores / 4 (every validator verifies every
 * tx once), and submit-to-commit latency p50/p99 beside the mean block interval of the run.
 * Every process it starts is killed by pid before it exits. */
#include "node/sim/testnet.h"
#include "tests/bench/bench_util.h"

#include <pthread.h>
#include <secp256k1.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define NODES 4
#define SIGNERS 256
#define PER_SIGNER 32
#define NTX (SIGNERS * PER_SIGNER)
#define BATCH 64

static char dir[] = "/tmp/tem-bench-cluster-XXXXXX";
static pid_t pids[NODES];
static int base_port;

typedef struct {
    uint8_t *tx[NTX];
    size_t len[NTX];
    uint8_t txid[NTX][32];
    double sent[NTX], committed[NTX];
} workload;
static workload W;

static void kill_all(void) {
    for (int i = 0; i < NODES; i++)
        if (pids[i] > 0) kill(pids[i], SIGTERM);
    for (int i = 0; i < NODES; i++) {
        if (pids[i] <= 0) continue;
        for (int k = 0; k < 50; k++) {
            if (waitpid(pids[i], NULL, WNOHANG) == pids[i]) {
                pids[i] = 0;
                break;
            }
            usleep(100 * 1000);
        }
        if (pids[i] > 0) {
            kill(pids[i], SIGKILL);
            waitpid(pids[i], NULL, 0);
        }
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "bench_cluster: cannot remove %s\n", dir);
}

static void die(const char *why) {
    fprintf(stderr, "bench_cluster: %s\n", why);
    kill_all();
    exit(1);
}

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

static void write_keys_and_genesis(uint8_t (*msec)[32], const char *temd) {
    (void)temd;
    char path[256], *js = malloc(1 << 20);
    size_t k = 0, cap = 1 << 20;
    uint64_t now_ms = (uint64_t)time(NULL) * 1000;
    k += (size_t)snprintf(js + k, cap - k, "{\"chain_id\":\"tem-bench\",\"genesis_time_ms\":%llu,\"validators\":[",
                          (unsigned long long)(now_ms - now_ms % 60000));
    for (int i = 0; i < NODES; i++) {
        ledger_keyfile kf = {.is_validator = 1};
        if (ledger_ed_keygen(kf.ed_sec, kf.ed_pub) != LEDGER_OK) die("keygen");
        snprintf(path, sizeof path, "%s/v%d.key", dir, i);
        if (ledger_keyfile_write(path, &kf) != LEDGER_OK) die("key file");
        char h[65];
        tem_hex(h, kf.ed_pub, 32);
        k += (size_t)snprintf(js + k, cap - k, "%s{\"name\":\"v%d\",\"pubkey\":\"%s\",\"address\":\"127.0.0.1:%d\",\"http\":\"127.0.0.1:%d\"}",
                              i ? "," : "", i, h, base_port + i, base_port + 10 + i);
    }
    k += (size_t)snprintf(js + k, cap - k, "],\"admins\":[],\"participants\":[");
    for (int i = 0; i < SIGNERS + 2; i++) {
        uint8_t pub[33];
        if (ledger_secp_keygen(msec[i], pub) != LEDGER_OK) die("meter keygen");
        char h[67];
        tem_hex(h, pub, 33);
        const char *role = i == SIGNERS ? "utility" : i == SIGNERS + 1 ? "dso" : "prosumer";
        k += (size_t)snprintf(js + k, cap - k, "%s{\"pubkey\":\"%s\",\"bus\":1,\"role\":\"%s\",\"money_uunit\":%s,\"tokens_wh\":%s}",
                              i ? "," : "", h, role, i < SIGNERS ? "1000000000000" : "0", i < SIGNERS ? "100000000" : "0");
    }
    k += (size_t)snprintf(js + k, cap - k,
                          "],\"tariffs\":[{\"start_minute\":0,\"retail_uunit_per_kwh\":300000,\"feed_in_uunit_per_kwh\":80000}],"
                          "\"market\":{\"slot_ms\":60000,\"gate_closure_ms\":1000},\"limits\":{\"max_block_txs\":4000}}\n");
    snprintf(path, sizeof path, "%s/genesis.json", dir);
    FILE *f = fopen(path, "w");
    if (!f || fwrite(js, 1, k, f) != k || fclose(f) != 0) die("genesis");
    free(js);
}

static void start_nodes(const char *temd) {
    for (int i = 0; i < NODES; i++) {
        char dd[256], key[256], gen[256], logp[256];
        snprintf(dd, sizeof dd, "%s/n%d", dir, i);
        snprintf(key, sizeof key, "%s/v%d.key", dir, i);
        snprintf(gen, sizeof gen, "%s/genesis.json", dir);
        snprintf(logp, sizeof logp, "%s/n%d.log", dir, i);
        pid_t p = fork();
        if (p < 0) die("fork");
        if (p == 0) {
            FILE *lf = freopen(logp, "w", stderr);
            (void)lf;
            execl(temd, temd, "--data-dir", dd, "--genesis", gen, "--key", key, "--log-level", "warn",
                  "--mempool-nonce-window", "64", (char *)NULL);
            _exit(127);
        }
        pids[i] = p;
    }
}

typedef struct {
    int node;
    int ok, refused;
} client;

static void *client_main(void *arg) {
    client *c = arg;
    ctl_http_conn conn;
    char url[64];
    snprintf(url, sizeof url, "127.0.0.1:%d", base_port + 10 + c->node);
    if (ctl_http_init(&conn, url, 30000) != 0) return NULL;
    /* This client feeds the signers s with s % NODES == node, in nonce order. */
    int idx[NTX], n = 0;
    for (int j = 0; j < PER_SIGNER; j++)
        for (int s = c->node; s < SIGNERS; s += NODES) idx[n++] = s * PER_SIGNER + j;
    uint8_t *buf = malloc(BATCH * 512);
    for (int off = 0; off < n; off += BATCH) {
        int m = n - off < BATCH ? n - off : BATCH;
        size_t bl = 0;
        for (int i = 0; i < m; i++) {
            int t = idx[off + i];
            tem_put_u32be(buf + bl, (uint32_t)W.len[t]);
            memcpy(buf + bl + 4, W.tx[t], W.len[t]);
            bl += 4 + W.len[t];
        }
        double t0 = bench_now();
        for (int i = 0; i < m; i++) W.sent[idx[off + i]] = t0;
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
    ctl_http_close(&conn);
    return NULL;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(void) {
    const char *build = getenv("BUILD") ? getenv("BUILD") : "build";
    char temd[256];
    snprintf(temd, sizeof temd, "%s/temd", build);
    if (access(temd, X_OK) != 0) {
        fprintf(stderr, "bench_cluster: %s not built\n", temd);
        return 1;
    }
    double limit = secp_verifies_per_s() * (double)sysconf(_SC_NPROCESSORS_ONLN) / NODES;
    if (!mkdtemp(dir)) die("mkdtemp");
    base_port = 30000 + (int)(getpid() % 500) * 20;
    static uint8_t msec[SIGNERS + 2][32];
    write_keys_and_genesis(msec, temd);
    start_nodes(temd);
    ctl_http_conn mon;
    char url[64];
    snprintf(url, sizeof url, "127.0.0.1:%d", base_port + 10);
    if (ctl_http_init(&mon, url, 5000) != 0) die("monitor");
    ctl_api_status st;
    int tries = 0;
    while (ctl_api_status_get(&mon, &st) != 0 || st.height < 2) {
        if (++tries > 300) die("cluster did not start");
        usleep(100 * 1000);
    }
    /* Orders for a slot two ahead, buys and sells crossing around 150000. */
    ledger_genesis g;
    char gp[256], err[256];
    snprintf(gp, sizeof gp, "%s/genesis.json", dir);
    if (ledger_genesis_load(gp, &g, err, sizeof err) != LEDGER_OK) die(err);
    uint64_t slot = ((uint64_t)time(NULL) * 1000 - g.genesis_time_ms) / 60000 + 2;
    for (int s = 0; s < SIGNERS; s++) {
        for (int j = 0; j < PER_SIGNER; j++) {
            int t = s * PER_SIGNER + j;
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
            if (ledger_tx_build(&b, msec[s], &W.tx[t], &W.len[t], W.txid[t]) != LEDGER_OK) die("sign");
        }
    }
    uint64_t h0 = st.height;
    double t_start = bench_now();
    pthread_t th[NODES];
    client cl[NODES];
    for (int i = 0; i < NODES; i++) {
        cl[i] = (client){.node = i};
        if (pthread_create(&th[i], NULL, client_main, &cl[i]) != 0) die("thread");
    }
    /* Watch node 0's blocks; a tx is committed when the block holding it is seen. */
    uint64_t seen = h0, done = 0, blocks = 0;
    double t_last = t_start, first_block_t = 0, last_block_t = 0;
    while (done < NTX && bench_now() - t_start < 180) {
        if (ctl_api_status_get(&mon, &st) != 0) die("status");
        double now = bench_now();
        for (uint64_t h = seen + 1; h <= st.height; h++) {
            char path[64];
            snprintf(path, sizeof path, "/v1/blocks/%llu", (unsigned long long)h);
            int code;
            json_t *j = ctl_api_get(&mon, path, &code);
            json_t *ids = json_object_get(j, "txids");
            size_t i;
            json_t *v;
            json_array_foreach(ids, i, v) {
                uint8_t id[32];
                if (tem_unhex(id, 32, json_string_value(v)) != 0) continue;
                /* linear lookup keyed by the first bytes: NTX is small */
                for (int t = 0; t < NTX; t++)
                    if (W.committed[t] == 0 && memcmp(W.txid[t], id, 32) == 0) {
                        W.committed[t] = now;
                        done++;
                        t_last = now;
                        break;
                    }
            }
            json_decref(j);
            blocks++;
            if (!first_block_t) first_block_t = now;
            last_block_t = now;
        }
        seen = st.height;
        usleep(5 * 1000);
    }
    for (int i = 0; i < NODES; i++) pthread_join(th[i], NULL);
    int accepted = 0, refused = 0;
    for (int i = 0; i < NODES; i++) accepted += cl[i].ok, refused += cl[i].refused;
    double *lat = malloc(NTX * sizeof *lat);
    size_t nl = 0;
    for (int t = 0; t < NTX; t++)
        if (W.committed[t] > 0) lat[nl++] = (W.committed[t] - W.sent[t]) * 1000.0;
    qsort(lat, nl, sizeof *lat, cmp_d);
    double rate = done / (t_last - t_start);
    double interval_ms = blocks > 1 ? (last_block_t - first_block_t) * 1000.0 / (double)(blocks - 1) : 0;
    printf("# %d txs submitted (%d accepted, %d refused), %llu committed in %llu blocks\n", NTX, accepted, refused,
           (unsigned long long)done, (unsigned long long)blocks);
    bench_line("cluster4_committed_txs", rate, "txs/s", limit, "secp256k1_verifies/s_x_cores/4");
    if (nl) {
        bench_line("cluster4_latency_p50", lat[nl / 2], "ms", interval_ms, "ms_mean_block_interval");
        bench_line("cluster4_latency_p99", lat[(nl * 99) / 100], "ms", interval_ms, "ms_mean_block_interval");
    }
    free(lat);
    ctl_http_close(&mon);
    ledger_genesis_free(&g);
    kill_all();
    for (int t = 0; t < NTX; t++) tem_free(W.tx[t]);
    return done == NTX ? 0 : 1;
}
