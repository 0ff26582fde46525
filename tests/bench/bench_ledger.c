/* bench_ledger.c: the foundation's benchmarks.
 * - tx decode + verify per second on one core, against bare libsecp256k1 verifies per second;
 * - block apply to LMDB with fsync (1,000 transfers a block), against bare LMDB puts per second
 *   in one write transaction of the same size; only ledger_store_apply is timed (the blocks are
 *   built and signed before the clock starts);
 * - the state tree: ms to update the root for the same block of changed keys in states of
 *   1,000, 100,000 and 1,000,000 accounts, against the time the SHA-256 hashes it needs take
 *   alone (docs/performance.md, "State root and scale"). */
#include "ledger/ledger_internal.h"
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

/* CPU time of this thread: the tree benches compare two CPU-bound figures measured in the same
 * run, and on a machine shared with other jobs the wall clock would charge them the others'
 * time slices. */
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Rate of the 65-byte SHA-256 calls a tree node costs. */
static double sha256_65_per_s(void) {
    uint8_t buf[65] = {1}, out[32];
    double t0 = cpu_now();
    for (int i = 0; i < 400000; i++) {
        buf[1] = (uint8_t)i;
        buf[2] = (uint8_t)(i >> 8);
        ledger_sha256(out, buf, sizeof buf);
    }
    return 400000 / (cpu_now() - t0);
}

static int op_cmp(const void *a, const void *b) { return memcmp(a, b, 32); }

/* Account key i: 'a' || 33 bytes derived from i (like a meter's compressed key). */
static void account_op(uint32_t i, uint32_t version, ledger__smt_op *op) {
    uint8_t k[34], v[56] = {0};
    k[0] = 'a';
    k[1] = 2;
    ledger_sha256(k + 2, &i, sizeof i);
    tem_put_u32le(v, version);
    tem_put_u32le(v + 4, i);
    ledger_sha256(op->kh, k, sizeof k);
    ledger_sha256(op->vh, v, sizeof v);
    op->del = false;
}

static double median_of(double *v, int n) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return v[n / 2];
}

/* CPU ms of one update of ops[0..changed) in a write txn that is then aborted (so every round
 * sees the same tree); *work: its counters. */
static double one_update_ms(MDB_env *env, MDB_dbi dbi, const ledger__smt_op *ops, uint32_t changed,
                            ledger__smt_stats *work) {
    ledger__smt_stats st = {0};
    MDB_txn *txn;
    uint8_t root[32];
    TEM_ASSERT(mdb_txn_begin(env, NULL, 0, &txn) == 0);
    double t1 = cpu_now();
    TEM_ASSERT(ledger__smt_update(txn, dbi, ops, changed, root, &st) == LEDGER_OK);
    double ms = 1000 * (cpu_now() - t1);
    mdb_txn_abort(txn);
    *work = st;
    return ms;
}

typedef struct {
    MDB_env *env;
    MDB_dbi dbi;
    double heavy_ms, light_ms, build_s;
    ledger__smt_stats heavy, light;
} tree_fig;

/* The tree of n accounts in a fresh LMDB env, built in one bulk pass as at a genesis. */
static void tree_build(const char *dir, uint32_t n, tree_fig *f) {
    MDB_txn *txn;
    mkdir(dir, 0700);
    TEM_ASSERT(mdb_env_create(&f->env) == 0);
    TEM_ASSERT(mdb_env_set_mapsize(f->env, (size_t)16 << 30) == 0);
    TEM_ASSERT(mdb_env_set_maxdbs(f->env, 2) == 0);
    TEM_ASSERT(mdb_env_open(f->env, dir, MDB_NOSYNC, 0600) == 0);
    ledger__smt_op *ops = malloc((size_t)n * sizeof *ops);
    for (uint32_t i = 0; i < n; i++) account_op(i, 0, &ops[i]);
    qsort(ops, n, sizeof *ops, op_cmp);
    uint8_t root[32];
    double t0 = cpu_now();
    TEM_ASSERT(mdb_txn_begin(f->env, NULL, 0, &txn) == 0);
    TEM_ASSERT(mdb_dbi_open(txn, "tree", MDB_CREATE, &f->dbi) == 0);
    TEM_ASSERT(ledger__smt_update(txn, f->dbi, ops, n, root, NULL) == LEDGER_OK);
    TEM_ASSERT(mdb_txn_commit(txn) == 0);
    f->build_s = cpu_now() - t0;
    free(ops);
}

/* The same block (accounts 0..changed-1 rewritten) on every tree, `rounds` times, the trees
 * taking turns within each round: on a shared machine the trees then see the same load, and a
 * ratio between them is not one tree's quiet minute against another's busy one. Medians. */
static void same_block_on_each(tree_fig *f, size_t nf, uint32_t changed, int rounds, bool heavy) {
    ledger__smt_op *ops = malloc(changed * sizeof *ops);
    for (uint32_t i = 0; i < changed; i++) account_op(i, 1, &ops[i]);
    qsort(ops, changed, sizeof *ops, op_cmp);
    double *ms = malloc(nf * (size_t)rounds * sizeof *ms);
    for (int r = 0; r < rounds; r++)
        for (size_t i = 0; i < nf; i++)
            ms[i * (size_t)rounds + (size_t)r] =
                one_update_ms(f[i].env, f[i].dbi, ops, changed, heavy ? &f[i].heavy : &f[i].light);
    for (size_t i = 0; i < nf; i++) {
        double m = median_of(ms + i * (size_t)rounds, rounds);
        if (heavy) f[i].heavy_ms = m;
        else f[i].light_ms = m;
    }
    free(ms);
    free(ops);
}

enum { HEAVY = 1000, LIGHT = 16 };

/* Light blocks as a node pays for their tree (ledger/store.c:tree_block): each block's update goes
 * through one cache that lives across blocks, the block logs its ops (65 bytes a key), every 32nd
 * block is a checkpoint that writes what changed since the last one, each block commits its own
 * write txn, and clean records are dropped past 65,536 as the store does. Every block changes
 * `LIGHT` accounts drawn from 0..999, so the 1k and the 1M tree see the same blocks; they take
 * turns block by block (the checkpoint, as the store takes it, in a transaction of its own after
 * its block's). Returns, per tree, the median over `rounds` of the mean CPU ms per block
 * of `blocks` blocks, after one round of warm-up: in out_update_ms the root's computation (the
 * changed values' hashes, their sort, the update through the cache), in out_ms that and the
 * tree's storage (the ops' log, the checkpoints' writes, every commit). */
enum { NODE_CHECKPOINT = 32, NODE_CLEAN_MAX = 65536 };
static void node_path_blocks(tree_fig **f, size_t nf, unsigned light, int blocks, int rounds, double *out_ms,
                             double *out_update_ms, double *out_reads) {
    ledger__smt_cache *k[4];
    MDB_dbi tlog[4];
    TEM_ASSERT(nf <= 4);
    for (size_t i = 0; i < nf; i++) {
        MDB_txn *txn;
        TEM_ASSERT((k[i] = ledger__smt_cache_new()) != NULL);
        TEM_ASSERT(mdb_txn_begin(f[i]->env, NULL, 0, &txn) == 0);
        TEM_ASSERT(mdb_dbi_open(txn, "tlog", MDB_CREATE, &tlog[i]) == 0);
        TEM_ASSERT(mdb_txn_commit(txn) == 0);
    }
    ledger__smt_op *ops = malloc(light * sizeof *ops);
    uint32_t *acct = malloc(light * sizeof *acct);
    double *ms = calloc(nf * (size_t)(rounds + 1), sizeof *ms), *ums = calloc(nf * (size_t)(rounds + 1), sizeof *ums),
           *reads = calloc(nf, sizeof *reads);
    uint64_t rng = 0x9e3779b97f4a7c15ull, h = 0;
    for (int r = 0; r <= rounds; r++)
        for (int b = 0; b < blocks; b++) {
            h++;
            for (unsigned j = 0; j < light; j++) {
                uint32_t a;
                bool dup;
                do { /* distinct accounts below 1,000 (xorshift64) */
                    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
                    a = (uint32_t)(rng % 1000);
                    dup = false;
                    for (unsigned q = 0; q < j; q++) dup |= acct[q] == a;
                } while (dup);
                acct[j] = a;
            }
            for (size_t i = 0; i < nf; i++) {
                ledger__smt_stats st = {0};
                MDB_txn *txn;
                uint8_t root[32], key[8];
                /* The key hashes are cached with the entries (ledger/state.c:entry_hashes); the
                 * value hashes and the sort are the block's, as in ledger__state_tree_ops. */
                for (unsigned j = 0; j < light; j++) account_op(acct[j], (uint32_t)h + 1, &ops[j]);
                double t0 = cpu_now();
                for (unsigned j = 0; j < light; j++) {
                    uint8_t v[56] = {0};
                    tem_put_u32le(v, (uint32_t)h + 1);
                    tem_put_u32le(v + 4, acct[j]);
                    ledger_sha256(ops[j].vh, v, sizeof v);
                }
                qsort(ops, light, sizeof *ops, op_cmp);
                if (ledger__smt_cache_dirty(k[i]) == 0 && ledger__smt_cache_records(k[i]) > NODE_CLEAN_MAX)
                    ledger__smt_cache_clear(k[i]);
                TEM_ASSERT(mdb_txn_begin(f[i]->env, NULL, 0, &txn) == 0);
                TEM_ASSERT(ledger__smt_update_cached(k[i], txn, f[i]->dbi, ops, light, root, &st) == LEDGER_OK);
                ums[i * (size_t)(rounds + 1) + (size_t)r] += 1000 * (cpu_now() - t0) / blocks;
                tem_put_u64be(key, h);
                MDB_val mk = {8, key}, mv = {light * 65, NULL};
                TEM_ASSERT(mdb_put(txn, tlog[i], &mk, &mv, MDB_RESERVE) == 0);
                uint8_t *w = mv.mv_data;
                for (unsigned j = 0; j < light; j++, w += 65) {
                    w[0] = 0;
                    memcpy(w + 1, ops[j].kh, 32);
                    memcpy(w + 33, ops[j].vh, 32);
                }
                TEM_ASSERT(mdb_txn_commit(txn) == 0);
                /* the checkpoint in a transaction of its own, after the block's (store.c:tree_checkpoint) */
                if (h % NODE_CHECKPOINT == 0) {
                    TEM_ASSERT(mdb_txn_begin(f[i]->env, NULL, 0, &txn) == 0);
                    TEM_ASSERT(ledger__smt_cache_flush(k[i], txn, f[i]->dbi) == LEDGER_OK);
                    TEM_ASSERT(mdb_drop(txn, tlog[i], 0) == 0);
                    TEM_ASSERT(mdb_txn_commit(txn) == 0);
                }
                ms[i * (size_t)(rounds + 1) + (size_t)r] += 1000 * (cpu_now() - t0) / blocks;
                if (r > 0) reads[i] += (double)st.reads / ((double)blocks * rounds);
            }
        }
    for (size_t i = 0; i < nf; i++) {
        out_ms[i] = median_of(ms + i * (size_t)(rounds + 1) + 1, rounds);
        out_update_ms[i] = median_of(ums + i * (size_t)(rounds + 1) + 1, rounds);
        out_reads[i] = reads[i];
        ledger__smt_cache_free(k[i]);
    }
    free(ms);
    free(ums);
    free(reads);
    free(acct);
    free(ops);
}



static void bench_state_tree(const char *base) {
    static const struct {
        const char *name;
        uint32_t n;
    } sizes[] = {{"state_root_ms_per_block_1k_accounts", 1000},
                 {"state_root_ms_per_block_100k_accounts", 100000},
                 {"state_root_ms_per_block_1m_accounts", 1000000}};
    tree_fig f[3];
    for (size_t i = 0; i < 3; i++) {
        char dir[300];
        snprintf(dir, sizeof dir, "%s/tree%zu", base, i);
        tree_build(dir, sizes[i].n, &f[i]);
    }
    same_block_on_each(f, 3, HEAVY, 7, true);
    same_block_on_each(f, 3, LIGHT, 101, false);
    for (size_t i = 0; i < 3; i++) {
        double rate = sha256_65_per_s();
        /* limit: the same number of 65-byte SHA-256 calls and nothing else (no LMDB); the
         * ratio is limit / value, the share of the time that is hashing */
        double limit_ms = 1000.0 * (double)f[i].heavy.hashes / rate;
        printf("bench %s %.2f ms limit %.2f ms_of_sha256 ratio %.3f\n", sizes[i].name, f[i].heavy_ms, limit_ms,
               limit_ms / f[i].heavy_ms);
        printf("# %u accounts: block of %d changed keys %llu SHA-256 calls (%.1f per key), %llu records read; %d "
               "changed keys %.3f ms, %llu calls, %llu records read; bulk build %.2f s cpu\n",
               sizes[i].n, HEAVY, (unsigned long long)f[i].heavy.hashes, (double)f[i].heavy.hashes / HEAVY,
               (unsigned long long)f[i].heavy.reads, LIGHT, f[i].light_ms, (unsigned long long)f[i].light.hashes,
               (unsigned long long)f[i].light.reads, f[i].build_s);
    }
    /* A light block's keys have (nearly) disjoint paths of ~log2(N) nodes, so its cost grows
     * with log N: 2x from 1k to 1M in hashes. A block that rewrites all of a 1k state instead
     * hashes the whole small tree once (2.5 calls a key) against ~12 a key at 1M. */
    double light = f[2].light_ms / f[0].light_ms, heavy = f[2].heavy_ms / f[0].heavy_ms;
    printf("bench state_root_1m_over_1k_light_block %.2f x limit 2.00 x ratio %.3f\n", light, 2.0 / light);
    printf("# heavy block (%d keys) 1m/1k: %.2f x in time, %.2f x in SHA-256 calls; light block (%d keys): "
           "%.2f x in calls\n",
           HEAVY, heavy, (double)f[2].heavy.hashes / (double)f[0].heavy.hashes, LIGHT,
           (double)f[2].light.hashes / (double)f[0].light.hashes);
    /* Last: it changes the trees. */
    tree_fig *pair[2] = {&f[0], &f[2]};
    double nms[2], ums[2], nreads[2];
    node_path_blocks(pair, 2, LIGHT, 4 * NODE_CHECKPOINT, 9, nms, ums, nreads);
    printf("bench state_root_update_1m_over_1k_node_path %.2f x limit 2.00 x ratio %.3f\n", ums[1] / ums[0],
           2.0 * ums[0] / ums[1]);
    printf("bench state_root_stored_1m_over_1k_node_path %.2f x limit 2.00 x ratio %.3f\n", nms[1] / nms[0],
           2.0 * nms[0] / nms[1]);
    printf("# node path, light blocks of %d accounts, checkpoint every %d blocks, CPU ms per block: root update "
           "%.4f at 1k, %.4f at 1M (%.1f and %.1f records read); with the tree log, checkpoints and commits "
           "%.4f at 1k, %.4f at 1M\n",
           LIGHT, NODE_CHECKPOINT, ums[0], ums[1], nreads[0], nreads[1], nms[0], nms[1]);
    fflush(stdout);
    for (size_t i = 0; i < 3; i++) mdb_env_close(f[i].env);
}

/* Builds (and signs) the next block of n transfers, untimed. */
static void next_block(ledger_store *s, uint32_t n, uint32_t senders, uint64_t time_ms, uint8_t **blk, size_t *blen) {
    const ledger_genesis *g = ledger_store_genesis(s);
    uint8_t **txs = calloc(n, sizeof *txs);
    size_t *lens = calloc(n, sizeof *lens);
    uint64_t *nonces = calloc(senders, sizeof *nonces);
    for (uint32_t i = 0; i < senders; i++) {
        uint8_t sec[32], pub[33];
        fx_key(2 + i, sec, pub);
        nonces[i] = ledger_state_nonce(ledger_store_state(s), pub);
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t f = i % senders;
        txs[i] = fx_transfer(g->chain_id, 2 + f, 2 + (f + 1) % senders, nonces[f]++, 1 + i % 7, &lens[i]);
    }
    uint8_t prop[64], ppub[32];
    fx_vkey(0, prop, ppub);
    TEM_ASSERT(ledger_block_build(s, (const uint8_t *const *)txs, lens, n, time_ms, ppub, blk, blen) == LEDGER_OK);
    for (uint32_t i = 0; i < n; i++) tem_free(txs[i]);
    free(txs);
    free(lens);
    free(nonces);
}

int main(int argc, char **argv) {
    /* `bench_ledger tree`: the state-tree lines alone (for work on the tree). */
    if (argc > 1 && strcmp(argv[1], "tree") == 0) {
        char tdir[] = "/tmp/tem-bench-XXXXXX";
        TEM_ASSERT(mkdtemp(tdir) != NULL);
        bench_state_tree(tdir);
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf %s", tdir);
        TEM_ASSERT(system(cmd) == 0);
        return 0;
    }
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
    /* Each block is built and signed before the clock starts; only the apply is timed (the old
     * version subtracted a separately measured signing time, which could exceed the total and
     * printed a negative rate). */
    for (int b = 0; b < 2 * blocks; b++) {
        uint8_t *blk;
        size_t blen;
        next_block(s, 1000, 500, g.genesis_time_ms + 1000 * (uint64_t)(b + 1), &blk, &blen);
        unsigned flags = LEDGER_APPLY_NO_CERT | (b < blocks ? 0 : LEDGER_APPLY_SIGS_OK);
        double t0 = bench_now();
        TEM_ASSERT(ledger_store_apply(s, blk, blen, NULL, 0, &FX_EXEC, flags, &info) == LEDGER_OK);
        double dt = bench_now() - t0;
        if (b < blocks) t_sig += dt;
        else t_nosig += dt;
        tem_free(blk);
    }
    TEM_ASSERT(t_sig > 0 && t_nosig > 0);
    double rate_sig = 1000.0 * blocks / t_sig;
    double rate_nosig = 1000.0 * blocks / t_nosig;
    bench_line("block_apply_lmdb_fsync_verify", rate_sig, "txs/s", puts, "lmdb_puts/s");
    bench_line("block_apply_lmdb_fsync_preverified", rate_nosig, "txs/s", puts, "lmdb_puts/s");
    ledger_store_close(s);
    ledger_genesis_free(&g);
    bench_state_tree(dir);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    TEM_ASSERT(system(cmd) == 0);
    return 0;
}
