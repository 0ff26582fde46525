/* bench_node_mempool.c: how fast the mempool admits txs durably (decode and checks on the loop,
 * signature verification in the libuv thread pool, group-committed log with fdatasync), beside
 * the machine's limits measured in the same run:
 * - admitted txs/s against bare libsecp256k1 verifies/s on all cores at once (verification is
 *   the ceiling when fdatasync is amortised over many txs);
 * - the same rate against bare append + fdatasync/s on the same disk (the ceiling of one
 *   fdatasync per tx; the ratio is what group commit gains);
 * - and, as comments, fdatasyncs per tx and the time of one block_applied. */
#include "node/mempool.h"
#include "tests/bench/bench_util.h"
#include "tests/ledger_fixture.h"

#include <fcntl.h>
#include <pthread.h>
#include <secp256k1.h>
#include <sys/stat.h>
#include <unistd.h>

#define SIGNERS 1000
#define NONCES 20
#define NTX (SIGNERS * NONCES)
#define PER_TICK 512

typedef struct {
    uint8_t *b;
    size_t len;
    uint8_t txid[32];
} tx_t;

static tx_t TX[NTX];
static uv_loop_t LOOP;
static node_mempool *M;
static int NEXT, DONE_OK, DONE_BAD;
static double T_LAST;

static void presign(void) {
    uint8_t tsec[32], tpub[33];
    fx_key(1, tsec, tpub);
    for (int s = 0; s < SIGNERS; s++) {
        uint8_t sec[32], pub[33];
        fx_key(2 + (uint32_t)s, sec, pub);
        for (int n = 0; n < NONCES; n++) {
            Tem__V1__TxBody b = TEM__V1__TX_BODY__INIT;
            Tem__V1__Transfer t = TEM__V1__TRANSFER__INIT;
            t.to = (ProtobufCBinaryData){33, tpub};
            t.amount = 1;
            b.chain_id = (char *)"tem-test";
            b.nonce = (uint64_t)n;
            b.kind_case = TEM__V1__TX_BODY__KIND_TRANSFER;
            b.transfer = &t;
            /* Arrival interleaves signers, nonces in order per signer. */
            tx_t *x = &TX[n * SIGNERS + s];
            TEM_ASSERT(ledger_tx_build(&b, sec, &x->b, &x->len, x->txid) == LEDGER_OK);
        }
    }
}

/* Bare secp256k1_ecdsa_verify on pre-parsed keys and signatures, one thread per core, all at
 * once: the machine's verification ceiling as it stands during this run (other load included). */
enum { BARE_N = 4000 };
typedef struct {
    secp256k1_context *ctx;
    secp256k1_pubkey pk[BARE_N];
    secp256k1_ecdsa_signature sg[BARE_N];
    uint8_t dg[BARE_N][32];
    int ok;
    pthread_t th;
} bare_t;

static void *bare_run(void *arg) {
    bare_t *b = arg;
    for (int i = 0; i < BARE_N; i++) b->ok += secp256k1_ecdsa_verify(b->ctx, &b->sg[i], b->dg[i], &b->pk[i]);
    return NULL;
}

static double bare_secp_verifies(int cores) {
    bare_t *b = calloc((size_t)cores, sizeof *b);
    TEM_ASSERT(b);
    ledger_tx_limits lim = {.chain_id = NULL, .max_tx_bytes = 4096, .max_admin_tx_bytes = 4096};
    for (int c = 0; c < cores; c++) {
        b[c].ctx = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
        TEM_ASSERT(b[c].ctx);
        for (int i = 0; i < BARE_N; i++) {
            const tx_t *x = &TX[(c * BARE_N + i) % NTX];
            ledger_tx tx;
            TEM_ASSERT(ledger_tx_decode(x->b, x->len, &lim, &tx) == LEDGER_OK);
            TEM_ASSERT(secp256k1_ec_pubkey_parse(b[c].ctx, &b[c].pk[i], tx.body->signer.data, 33));
            TEM_ASSERT(secp256k1_ecdsa_signature_parse_compact(b[c].ctx, &b[c].sg[i], tx.stx->sig.data));
            memcpy(b[c].dg[i], tx.txid, 32);
            ledger_tx_free(&tx);
        }
    }
    double t0 = bench_now();
    for (int c = 0; c < cores; c++) TEM_ASSERT(pthread_create(&b[c].th, NULL, bare_run, &b[c]) == 0);
    for (int c = 0; c < cores; c++) TEM_ASSERT(pthread_join(b[c].th, NULL) == 0);
    double dt = bench_now() - t0;
    for (int c = 0; c < cores; c++) {
        TEM_ASSERT(b[c].ok == BARE_N);
        secp256k1_context_destroy(b[c].ctx);
    }
    free(b);
    return cores * (double)BARE_N / dt;
}

/* Appends of one record-batch-sized chunk, each followed by fdatasync, as fast as the disk goes. */
static double bare_fdatasyncs(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
    TEM_ASSERT(fd >= 0);
    uint8_t buf[16384];
    memset(buf, 7, sizeof buf);
    int n = 0;
    double t0 = bench_now(), dt;
    do {
        TEM_ASSERT(write(fd, buf, sizeof buf) == (ssize_t)sizeof buf);
        TEM_ASSERT(fdatasync(fd) == 0);
        n++;
        dt = bench_now() - t0;
    } while (dt < 1.0 && n < 2000);
    TEM_ASSERT(close(fd) == 0);
    TEM_ASSERT(unlink(path) == 0);
    return n / dt;
}

static void on_done(void *ctx, int rc, const uint8_t txid[32]) {
    (void)ctx;
    (void)txid;
    if (rc == 0) DONE_OK++;
    else DONE_BAD++;
    T_LAST = bench_now();
}

static void on_tick(uv_idle_t *h) {
    for (int k = 0; k < PER_TICK && NEXT < NTX; k++, NEXT++) {
        int rc = node_mempool_submit(M, TX[NEXT].b, TX[NEXT].len, on_done, NULL, NULL);
        if (rc != 0) {
            fprintf(stderr, "bench: submit %d: %s\n", NEXT, node_mempool_strerror(rc));
            exit(1);
        }
    }
    if (NEXT == NTX) TEM_ASSERT(uv_idle_stop(h) == 0);
}

static void on_idle_close(uv_handle_t *h) { (void)h; }

int main(void) {
    presign();
    int cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    double secp = bare_secp_verifies(cores);

    char dir[] = "/tmp/tem-bench-mempool-XXXXXX";
    TEM_ASSERT(mkdtemp(dir) != NULL);
    char stdir[300], log[300], bare[300];
    snprintf(stdir, sizeof stdir, "%s/store", dir);
    snprintf(log, sizeof log, "%s/mempool.log", dir);
    snprintf(bare, sizeof bare, "%s/bare.log", dir);
    TEM_ASSERT(mkdir(stdir, 0700) == 0);
    double syncs_bare = bare_fdatasyncs(bare);

    ledger_genesis g;
    fx_genesis(&g, 4);
    ledger_store *s;
    TEM_ASSERT(ledger_store_open(stdir, &g, NULL, NULL, &s) == LEDGER_OK);
    TEM_ASSERT(uv_loop_init(&LOOP) == 0);
    node_mempool_config c = {.log_path = log, .txs_max = NTX, .nonce_window = 64,
                             .per_signer_max = 64, .genesis = &g};
    TEM_ASSERT(node_mempool_new(&LOOP, &c, s, &M) == 0);
    TEM_ASSERT(node_mempool_recover(M, NULL) == 0);

    uv_idle_t tick;
    TEM_ASSERT(uv_idle_init(&LOOP, &tick) == 0);
    double t0 = bench_now();
    TEM_ASSERT(uv_idle_start(&tick, on_tick) == 0);
    while (DONE_OK + DONE_BAD < NTX) uv_run(&LOOP, UV_RUN_ONCE);
    double dt = T_LAST - t0;
    TEM_ASSERT(DONE_OK == NTX);
    node_mempool_stats st;
    node_mempool_get_stats(M, &st);
    bench_line("mempool_admit_durable", NTX / dt, "txs/s", secp, "secp256k1_verifies/s_all_cores");
    /* Without group commit each tx would need its own fdatasync: the disk's bare rate is that
     * design's ceiling, so a ratio above 1 is the gain of sharing fdatasyncs. */
    bench_line("mempool_admit_durable_vs_fsync_per_tx", NTX / dt, "txs/s", syncs_bare, "bare_append_fdatasyncs/s");
    printf("# %d txs, %lu fdatasyncs (%.0f txs each), %lu verify work items, %d cores\n", NTX,
           (unsigned long)st.log_fsyncs, (double)NTX / (double)st.log_fsyncs,
           (unsigned long)st.verify_jobs, cores);

    /* block_applied with every signer held: a block of 1,000 txs (each signer's nonce 0). */
    uint8_t(*ids)[32] = malloc(SIGNERS * 32);
    TEM_ASSERT(ids);
    for (int i = 0; i < SIGNERS; i++) memcpy(ids[i], TX[i].txid, 32);
    double b0 = bench_now();
    node_mempool_block_applied(M, (const uint8_t(*)[32])ids, SIGNERS);
    double bdt = bench_now() - b0;
    TEM_ASSERT(node_mempool_size(M) == NTX - SIGNERS);
    printf("# block_applied: %d txs dropped, %d held signers re-checked in %.2f ms\n", SIGNERS, SIGNERS, bdt * 1e3);
    free(ids);

    node_mempool_close(M);
    uv_close((uv_handle_t *)&tick, on_idle_close);
    while (!node_mempool_is_closed(M)) uv_run(&LOOP, UV_RUN_ONCE);
    uv_run(&LOOP, UV_RUN_NOWAIT);
    node_mempool_free(M);
    TEM_ASSERT(uv_loop_close(&LOOP) == 0);
    ledger_store_close(s);
    ledger_genesis_free(&g);
    for (int i = 0; i < NTX; i++) tem_free(TX[i].b);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    TEM_ASSERT(system(cmd) == 0);
    return 0;
}
