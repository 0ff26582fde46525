/* bench_ledger.c: the foundation's benchmarks.
 * - tx decode + verify per second on one core, against bare libsecp256k1 verifies per second;
 * - block apply to LMDB with fsync (1,000 transfers a block), against bare LMDB puts per second
 *   in one write transaction of the same size. */
#include "tests/bench/bench_util.h"
#include "tests/ledger_fixture.h"

#include <lmdb.h>
#include <secp256k1.h>
#include <sys/stat.h>

#define NTX 4000

static double bare_secp_verifies(uint8_t **txs, size_t *lens) {
    /* Pre-parse everything so only secp256k1_ecdsa_verify is timed. */
    secp256k1_context *ctx = secp256k1_context_create(SECP256K1_CONTEXT_NONE);
    secp256k1_pubkey *pk = malloc(NTX * sizeof *pk);
    secp256k1_ecdsa_signature *sg = malloc(NTX * sizeof *sg);
    uint8_t(*dg)[32] = malloc(NTX * 32);
    ledger_tx_limits lim = {.chain_id = NULL, .max_tx_bytes = 4096, .max_admin_tx_bytes = 4096};
    for (int i = 0; i < NTX; i++) {
        ledger_tx tx;
        TEM_ASSERT(ledger_tx_decode(txs[i], lens[i], &lim, &tx) == LEDGER_OK);
        TEM_ASSERT(secp256k1_ec_pubkey_parse(ctx, &pk[i], tx.body->signer.data, 33));
        TEM_ASSERT(secp256k1_ecdsa_signature_parse_compact(ctx, &sg[i], tx.stx->sig.data));
        memcpy(dg[i], tx.txid, 32);
        ledger_tx_free(&tx);
    }
    double t0 = bench_now();
    int ok = 0;
    for (int i = 0; i < NTX; i++) ok += secp256k1_ecdsa_verify(ctx, &sg[i], dg[i], &pk[i]);
    double dt = bench_now() - t0;
    TEM_ASSERT(ok == NTX);
    free(pk);
    free(sg);
    free(dg);
    secp256k1_context_destroy(ctx);
    return NTX / dt;
}

static double tx_decode_verify(uint8_t **txs, size_t *lens) {
    ledger_tx_limits lim = {.chain_id = "tem-test", .max_tx_bytes = 4096, .max_admin_tx_bytes = 4096};
    double t0 = bench_now();
    for (int i = 0; i < NTX; i++) {
        ledger_tx tx;
        TEM_ASSERT(ledger_tx_decode(txs[i], lens[i], &lim, &tx) == LEDGER_OK);
        TEM_ASSERT(ledger_tx_verify(&tx) == LEDGER_OK);
        ledger_tx_free(&tx);
    }
    return NTX / (bench_now() - t0);
}

static double bare_lmdb_puts(const char *dir, int n) {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    mkdir(dir, 0700);
    TEM_ASSERT(mdb_env_create(&env) == 0);
    TEM_ASSERT(mdb_env_set_mapsize(env, (size_t)1 << 30) == 0);
    TEM_ASSERT(mdb_env_open(env, dir, 0, 0600) == 0);
    double best = 0;
    for (int round = 0; round < 5; round++) {
        double t0 = bench_now();
        TEM_ASSERT(mdb_txn_begin(env, NULL, 0, &txn) == 0);
        TEM_ASSERT(mdb_dbi_open(txn, NULL, 0, &dbi) == 0);
        for (int i = 0; i < n; i++) {
            uint8_t k[32], v[120] = {0};
            int x = round * n + i;
            ledger_sha256(k, &x, sizeof x);
            MDB_val mk = {32, k}, mv = {sizeof v, v};
            TEM_ASSERT(mdb_put(txn, dbi, &mk, &mv, 0) == 0);
        }
        TEM_ASSERT(mdb_txn_commit(txn) == 0);
        double r = n / (bench_now() - t0);
        if (r > best) best = r;
    }
    mdb_env_close(env);
    return best;
}

/* The state root after a block's writes: 100,000 entries, 2,000 of them rewritten, against the
 * machine's rate of the 65-byte SHA-256 inner-node hashes the root is made of. */
static void bench_state_root(void) {
    ledger_state *st;
    TEM_ASSERT(ledger_state_new(&st) == LEDGER_OK);
    const int n = 100000, dirty = 2000, rounds = 5;
    for (int i = 0; i < n; i++) {
        uint8_t k[34], v[48] = {0};
        k[0] = 'a';
        ledger_sha256(k + 1, &i, sizeof i);
        TEM_ASSERT(ledger_state_put(st, k, 34, v, sizeof v) == LEDGER_OK);
    }
    uint8_t root[32];
    TEM_ASSERT(ledger_state_root(st, root) == LEDGER_OK);
    double t = 0;
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < dirty; i++) {
            int x = (i * 7919 + r * 104729) % n;
            uint8_t k[34], v[48] = {(uint8_t)(r + 1)};
            k[0] = 'a';
            ledger_sha256(k + 1, &x, sizeof x);
            TEM_ASSERT(ledger_state_put(st, k, 34, v, sizeof v) == LEDGER_OK);
        }
        double t0 = bench_now();
        TEM_ASSERT(ledger_state_root(st, root) == LEDGER_OK);
        t += bench_now() - t0;
    }
    double roots_per_s = rounds / t;
    uint8_t buf[65] = {1}, out[32];
    double t0 = bench_now();
    for (int i = 0; i < 200000; i++) {
        buf[1] = (uint8_t)i;
        ledger_sha256(out, buf, sizeof buf);
    }
    double hashes_per_s = 200000 / (bench_now() - t0);
    /* limit: roots/s if computing one took exactly the n-1 inner hashes and nothing else */
    bench_line("state_root_100k_entries_2k_dirty", roots_per_s, "roots/s", hashes_per_s / (n - 1), "roots/s_at_sha256_rate");
    printf("# state root of 100000 entries: %.1f ms\n", 1000.0 / roots_per_s);
    ledger_state_free(st);
}

int main(void) {
    uint8_t **txs = malloc(NTX * sizeof *txs);
    size_t *lens = malloc(NTX * sizeof *lens);
    for (int i = 0; i < NTX; i++) txs[i] = fx_transfer("tem-test", 2 + i % 50, 3 + i % 50, (uint64_t)i, 5, &lens[i]);
    double bare = bare_secp_verifies(txs, lens);
    double dv = tx_decode_verify(txs, lens);
    bench_line("tx_decode_verify", dv, "txs/s", bare, "secp256k1_verifies/s");
    for (int i = 0; i < NTX; i++) free(txs[i]);
    free(txs);
    free(lens);

    char dir[] = "/tmp/tem-bench-XXXXXX";
    TEM_ASSERT(mkdtemp(dir) != NULL);
    char lmdir[300], stdir[300];
    snprintf(lmdir, sizeof lmdir, "%s/bare", dir);
    snprintf(stdir, sizeof stdir, "%s/store", dir);
    /* A block of 1,000 transfers writes about 4,000 records (block, 1,000 index entries, 1,000
     * receipts, ~2,000 state entries): the limit is that many bare puts in one transaction. */
    double puts = bare_lmdb_puts(lmdir, 4000);
    ledger_genesis g;
    fx_genesis(&g, 4);
    ledger_store *s;
    TEM_ASSERT(ledger_store_open(stdir, &g, NULL, NULL, &s) == LEDGER_OK);
    const int blocks = 10;
    double t_sig = 0, t_nosig = 0;
    ledger_apply_info info;
    for (int b = 0; b < blocks; b++) {
        double t0 = bench_now();
        TEM_ASSERT(fx_apply_transfers(s, 1000, 500, g.genesis_time_ms + 1000 * (b + 1), &info, 0) == LEDGER_OK);
        t_sig += bench_now() - t0;
    }
    for (int b = 0; b < blocks; b++) {
        /* fx_apply_transfers signs the txs too; time only the store part by pre-building. */
        double t0 = bench_now();
        TEM_ASSERT(fx_apply_transfers(s, 1000, 500, g.genesis_time_ms + 1000 * (blocks + b + 1), &info, LEDGER_APPLY_SIGS_OK) == LEDGER_OK);
        t_nosig += bench_now() - t0;
    }
    /* Signing 1,000 txs is part of both loops; measure it alone and subtract it. */
    double t_sign0 = bench_now();
    for (int i = 0; i < 1000 * blocks; i++) {
        size_t l;
        free(fx_transfer("tem-test", 2 + i % 500, 3 + i % 500, (uint64_t)i, 1, &l));
    }
    double t_sign = bench_now() - t_sign0;
    double rate_sig = 1000.0 * blocks / (t_sig - t_sign);
    double rate_nosig = 1000.0 * blocks / (t_nosig - t_sign);
    bench_line("block_apply_lmdb_fsync_verify", rate_sig, "txs/s", puts, "lmdb_puts/s");
    bench_line("block_apply_lmdb_fsync_preverified", rate_nosig, "txs/s", puts, "lmdb_puts/s");
    ledger_store_close(s);
    ledger_genesis_free(&g);
    bench_state_root();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    TEM_ASSERT(system(cmd) == 0);
    return 0;
}
