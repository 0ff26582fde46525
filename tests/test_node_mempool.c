/* test_node_mempool.c: Check suite for node/mempool.c: admission checks and their codes,
 * selection order, signature failures reported through done, bounds, block_applied, the
 * group-committed log (fsync counts), recovery after a simulated crash and after SIGKILL of a
 * child node, torn last records, log compaction, write failures, and close. Each test runs a
 * real libuv loop and LMDB store in a temp dir; every loop run is bounded by a timer. */
#include "node/mempool.h"
#include "tests/ledger_fixture.h"

#include <check.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHAIN "tem-test"
#define REC_MAX 8192

/* ------------------------------------------------------------------ fixture */
static char DIR_[64], STORE_DIR[96], LOG[96];
static ledger_genesis G;
static ledger_store *S;
static uv_loop_t LOOP;
static node_mempool *M;

typedef struct {
    int n;
    int rc[REC_MAX];
    uint8_t txid[REC_MAX][32];
} recorder;
static recorder R;

static void on_done(void *ctx, int rc, const uint8_t txid[32]) {
    recorder *r = ctx;
    ck_assert_int_lt(r->n, REC_MAX);
    r->rc[r->n] = rc;
    memcpy(r->txid[r->n], txid, 32);
    r->n++;
}

static void setup(void) {
    snprintf(DIR_, sizeof DIR_, "/tmp/tem-mempool-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(DIR_));
    snprintf(STORE_DIR, sizeof STORE_DIR, "%s/store", DIR_);
    snprintf(LOG, sizeof LOG, "%s/mempool.log", DIR_);
    ck_assert_int_eq(mkdir(STORE_DIR, 0700), 0);
    fx_genesis(&G, 4);
    ck_assert_int_eq(ledger_store_open(STORE_DIR, &G, NULL, NULL, &S), LEDGER_OK);
    ck_assert_int_eq(uv_loop_init(&LOOP), 0);
    memset(&R, 0, sizeof R);
    M = NULL;
}

static void on_timeout(uv_timer_t *t) { *(bool *)t->data = true; }

/* Runs the loop until pred() holds, at most 10 s. */
static bool run_until(bool (*pred)(void)) {
    uv_timer_t t;
    bool timed_out = false;
    ck_assert_int_eq(uv_timer_init(&LOOP, &t), 0);
    t.data = &timed_out;
    ck_assert_int_eq(uv_timer_start(&t, on_timeout, 10000, 0), 0);
    while (!pred() && !timed_out) uv_run(&LOOP, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&LOOP, UV_RUN_NOWAIT);
    return pred();
}

static int WANT_DONE;
static bool enough_done(void) { return R.n >= WANT_DONE; }
static void wait_done(int n) {
    WANT_DONE = n;
    ck_assert_msg(run_until(enough_done), "only %d of %d done callbacks", R.n, n);
}
static bool mempool_closed(void) { return node_mempool_is_closed(M); }

static void mp_shutdown(void) {
    if (!M) return;
    node_mempool_close(M);
    ck_assert(run_until(mempool_closed));
    node_mempool_free(M);
    M = NULL;
}

static void teardown(void) {
    mp_shutdown();
    uv_run(&LOOP, UV_RUN_NOWAIT);
    ck_assert_int_eq(uv_loop_close(&LOOP), 0); /* every handle closed */
    ledger_store_close(S);
    ledger_genesis_free(&G);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", DIR_);
    ck_assert_int_eq(system(cmd), 0);
}

static node_mempool_config cfg_default(void) {
    node_mempool_config c = {0};
    c.log_path = LOG;
    c.txs_max = 1000;
    c.nonce_window = 16;
    c.per_signer_max = 16;
    c.genesis = &G;
    return c;
}

static uint32_t mp_open(const node_mempool_config *c) {
    uint32_t rec = UINT32_MAX;
    ck_assert_int_eq(node_mempool_new(&LOOP, c, S, &M), NODE_MEMPOOL_OK);
    ck_assert_int_eq(node_mempool_recover(M, &rec), NODE_MEMPOOL_OK);
    return rec;
}

static node_mempool_stats stats(void) {
    node_mempool_stats s;
    node_mempool_get_stats(M, &s);
    return s;
}

/* ------------------------------------------------------------------ txs */
typedef struct {
    uint8_t *b;
    size_t len;
    uint8_t txid[32];
} tx_t;

/* A transfer from key `from` to key 1 (amount makes otherwise equal txs differ). */
static tx_t mk(uint32_t from, uint64_t nonce, uint64_t amount) {
    uint8_t sec[32], pub[33], tsec[32], tpub[33];
    fx_key(from, sec, pub);
    fx_key(1, tsec, tpub);
    Tem__V1__TxBody b = TEM__V1__TX_BODY__INIT;
    Tem__V1__Transfer t = TEM__V1__TRANSFER__INIT;
    t.to = (ProtobufCBinaryData){33, tpub};
    t.amount = amount;
    b.chain_id = (char *)CHAIN;
    b.nonce = nonce;
    b.kind_case = TEM__V1__TX_BODY__KIND_TRANSFER;
    b.transfer = &t;
    tx_t x;
    ck_assert_int_eq(ledger_tx_build(&b, sec, &x.b, &x.len, x.txid), LEDGER_OK);
    return x;
}

static void pub_of(uint32_t key, uint8_t pub[33]) {
    uint8_t sec[32];
    fx_key(key, sec, pub);
}

static int submit(const tx_t *x) { return node_mempool_submit(M, x->b, x->len, on_done, &R, NULL); }

static int submit_ok_and_wait(const tx_t *x) {
    int before = R.n;
    int rc = submit(x);
    if (rc != NODE_MEMPOOL_OK) return rc;
    wait_done(before + 1);
    return R.rc[before];
}

/* Applies a block holding txs (no certificate, the fixture's transfer executor). */
static void apply_block(const tx_t *txs, size_t n) {
    const uint8_t *b[64];
    size_t l[64];
    ck_assert_uint_le(n, 64);
    for (size_t i = 0; i < n; i++) b[i] = txs[i].b, l[i] = txs[i].len;
    uint8_t vsec[64], vpub[32], *blk;
    size_t blen;
    fx_vkey(0, vsec, vpub);
    ck_assert_int_eq(ledger_block_build(S, b, l, n, ledger_store_last_time(S) + 1000, vpub, &blk, &blen), LEDGER_OK);
    ledger_apply_info info;
    ck_assert_int_eq(ledger_store_apply(S, blk, blen, NULL, 0, &FX_EXEC, LEDGER_APPLY_NO_CERT, &info), LEDGER_OK);
    ck_assert_uint_eq(info.n_txs, n);
    tem_free(blk);
}

static void block_applied(const tx_t *txs, size_t n) {
    uint8_t ids[64][32];
    for (size_t i = 0; i < n; i++) memcpy(ids[i], txs[i].txid, 32);
    node_mempool_block_applied(M, (const uint8_t(*)[32])ids, n);
}

/* sig_from's signature in front of body_from's body: the bytes a forger can make of two public
 * txs (its txid is body_from's; its signature does not verify). */
static tx_t forge(const tx_t *sig_from, const tx_t *body_from) {
    ledger_tx_limits lim;
    ledger_tx_limits_from_genesis(&G, &lim);
    ledger_tx a, b;
    ck_assert_int_eq(ledger_tx_decode(sig_from->b, sig_from->len, &lim, &a), LEDGER_OK);
    ck_assert_int_eq(ledger_tx_decode(body_from->b, body_from->len, &lim, &b), LEDGER_OK);
    Tem__V1__SignedTx st = TEM__V1__SIGNED_TX__INIT;
    st.body = b.stx->body;
    st.sig = a.stx->sig;
    tx_t f;
    f.len = tem__v1__signed_tx__get_packed_size(&st);
    f.b = tem_malloc(f.len);
    ck_assert_ptr_nonnull(f.b);
    ck_assert_uint_eq(tem__v1__signed_tx__pack(&st, f.b), f.len);
    memcpy(f.txid, body_from->txid, 32);
    ledger_tx_free(&a);
    ledger_tx_free(&b);
    return f;
}

static void free_txs(tx_t *x, size_t n) {
    for (size_t i = 0; i < n; i++) tem_free(x[i].b);
}

static long file_size(const char *p) {
    struct stat sb;
    ck_assert_int_eq(stat(p, &sb), 0);
    return (long)sb.st_size;
}

/* ------------------------------------------------------------------ admission */
/* What the log looked like when done(0) fired. */
static uint64_t AT_DONE_FSYNCS, AT_DONE_WRITES;
static long AT_DONE_SIZE;
static void on_done_look_at_log(void *ctx, int rc, const uint8_t txid[32]) {
    node_mempool_stats s;
    node_mempool_get_stats(M, &s);
    AT_DONE_FSYNCS = s.log_fsyncs;
    AT_DONE_WRITES = s.log_writes;
    struct stat sb;
    AT_DONE_SIZE = stat(LOG, &sb) == 0 ? (long)sb.st_size : -1;
    on_done(ctx, rc, txid);
}

START_TEST(mempool_tx_is_in_flight_until_durable_then_pending_and_selectable) {
    node_mempool_config c = cfg_default();
    ck_assert_uint_eq(mp_open(&c), 0);
    tx_t x = mk(2, 0, 5);
    uint8_t txid[32];
    ck_assert_int_eq(node_mempool_submit(M, x.b, x.len, on_done_look_at_log, &R, txid), NODE_MEMPOOL_OK);
    ck_assert(memcmp(txid, x.txid, 32) == 0);
    ck_assert_int_eq(node_mempool_status(M, x.txid), NODE_MEMPOOL_STATUS_INFLIGHT);
    ck_assert_uint_eq(node_mempool_size(M), 1);
    ck_assert_uint_eq(node_mempool_verified(M), 0);
    ck_assert_int_eq(R.n, 0); /* never before the fsync */
    wait_done(1);
    ck_assert_int_eq(R.rc[0], 0);
    ck_assert_uint_eq(node_mempool_verified(M), 1);
    ck_assert(memcmp(R.txid[0], x.txid, 32) == 0);
    /* done came after the write and the fdatasync that cover the record. */
    ck_assert_uint_eq(AT_DONE_WRITES, 1);
    ck_assert_uint_eq(AT_DONE_FSYNCS, 1);
    ck_assert_int_eq(AT_DONE_SIZE, (long)(NODE_MEMPOOL_LOG_HEADER_BYTES + NODE_MEMPOOL_REC_OVERHEAD_BYTES + x.len));
    ck_assert_int_eq(node_mempool_status(M, x.txid), NODE_MEMPOOL_STATUS_PENDING);
    node_mempool_stats s = stats();
    ck_assert_uint_eq(s.durable, 1);
    ck_assert_uint_ge(s.log_fsyncs, 1);
    ck_assert_uint_eq(s.log_bytes, NODE_MEMPOOL_LOG_HEADER_BYTES + NODE_MEMPOOL_REC_OVERHEAD_BYTES + x.len);
    ck_assert_int_eq(file_size(LOG), (long)s.log_bytes);
    const uint8_t *sel[4];
    size_t lens[4];
    uint32_t n = 9;
    ck_assert_int_eq(node_mempool_select(M, ledger_store_state(S), 4, sel, lens, &n), NODE_MEMPOOL_OK);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(lens[0], x.len);
    ck_assert(memcmp(sel[0], x.b, x.len) == 0);
    free_txs(&x, 1);
}
END_TEST

/* What a block view and gossip borrow: a held tx is found by its bytes (in flight too, not with
 * another tx's signature bytes, not once a block committed it), select_txs hands out the same
 * txs as select, and a durable tx sent again is EDUP with its txid. */
START_TEST(mempool_lends_durable_txs_decoded_by_bytes_and_txid_until_a_block_commits_them) {
    node_mempool_config c = cfg_default();
    ck_assert_uint_eq(mp_open(&c), 0);
    tx_t x[3] = {mk(2, 0, 5), mk(2, 1, 6), mk(3, 0, 7)};
    ck_assert_int_eq(submit(&x[0]), NODE_MEMPOOL_OK);
    const ledger_tx *fl = node_mempool_find_bytes(M, x[0].b, x[0].len); /* in flight: held */
    ck_assert_ptr_nonnull(fl);
    ck_assert(memcmp(fl->txid, x[0].txid, 32) == 0);
    ck_assert_ptr_null(node_mempool_get(M, x[0].txid, NULL, NULL)); /* not durable yet */
    wait_done(1);
    ck_assert_int_eq(submit_ok_and_wait(&x[1]), 0);
    ck_assert_int_eq(submit_ok_and_wait(&x[2]), 0);
    for (int i = 0; i < 3; i++) {
        const ledger_tx *t = node_mempool_find_bytes(M, x[i].b, x[i].len);
        ck_assert_ptr_nonnull(t);
        ck_assert(memcmp(t->txid, x[i].txid, 32) == 0);
        const uint8_t *b;
        size_t l;
        ck_assert_ptr_eq(node_mempool_get(M, x[i].txid, &b, &l), t);
        ck_assert_uint_eq(l, x[i].len);
        ck_assert(memcmp(b, x[i].b, l) == 0);
        ck_assert_int_eq(ledger_tx_verify(t), LEDGER_OK);
    }
    /* x[0]'s signature in front of x[1]'s body: the same signature bytes, other bytes -> not lent */
    tx_t forged = forge(&x[0], &x[1]);
    ck_assert_ptr_null(node_mempool_find_bytes(M, forged.b, forged.len));
    /* submitted, it is decoded (its txid is x[1]'s) and refused as a duplicate */
    uint8_t fid[32];
    ck_assert_int_eq(node_mempool_submit(M, forged.b, forged.len, on_done, &R, fid), NODE_MEMPOOL_EDUP);
    ck_assert(memcmp(fid, x[1].txid, 32) == 0);
    free_txs(&forged, 1);
    uint8_t id[32];
    ck_assert_int_eq(node_mempool_submit(M, x[2].b, x[2].len, on_done, &R, id), NODE_MEMPOOL_EDUP);
    ck_assert(memcmp(id, x[2].txid, 32) == 0);
    ck_assert_ptr_null(node_mempool_find_bytes(M, (const uint8_t *)"\x12\x01", 2));
    /* select_txs: the same txs in the same order as select */
    const uint8_t *sel[8];
    size_t lens[8];
    const ledger_tx *dec[8];
    uint32_t n1 = 0, n2 = 0;
    ck_assert_int_eq(node_mempool_select(M, ledger_store_state(S), 8, sel, lens, &n1), NODE_MEMPOOL_OK);
    ck_assert_int_eq(node_mempool_select_txs(M, ledger_store_state(S), 8, dec, &n2), NODE_MEMPOOL_OK);
    ck_assert_uint_eq(n1, 3);
    ck_assert_uint_eq(n2, 3);
    for (uint32_t i = 0; i < n1; i++) ck_assert_ptr_eq(node_mempool_find_bytes(M, sel[i], lens[i]), dec[i]);
    /* committed: no longer lent */
    apply_block(&x[0], 1);
    block_applied(&x[0], 1);
    ck_assert_ptr_null(node_mempool_find_bytes(M, x[0].b, x[0].len));
    ck_assert_ptr_null(node_mempool_get(M, x[0].txid, NULL, NULL));
    ck_assert_ptr_nonnull(node_mempool_find_bytes(M, x[1].b, x[1].len));
    free_txs(x, 3);
}
END_TEST

/* A block view borrows a tx the pool still verifies (unverified), and the tx outlives the pool's
 * hold on it until the view gives it back: a failed signature, a commit, each with the tx
 * lent, park its slot (read here after the pool let go: ASan reports a use after free), and a
 * parked slot counts as full until the last unlend. A tx a block committed while in flight is
 * not lent at all. */
START_TEST(mempool_lends_txs_in_flight_and_keeps_them_until_given_back) {
    node_mempool_config c = cfg_default();
    c.txs_max = 3;
    c.per_signer_max = 3;
    ck_assert_uint_eq(mp_open(&c), 0);
    tx_t good = mk(2, 0, 5), bad = mk(3, 0, 6), more = mk(4, 0, 7), last = mk(5, 0, 8), gone = mk(6, 0, 9);
    bad.b[bad.len - 64 + 5] ^= 0x01; /* r changed: decodes, does not verify */
    ck_assert_int_eq(submit(&good), NODE_MEMPOOL_OK);
    ck_assert_int_eq(submit(&bad), NODE_MEMPOOL_OK);
    bool ver = true;
    const ledger_tx *tg = node_mempool_lend(M, good.b, good.len, &ver);
    ck_assert_ptr_nonnull(tg);
    ck_assert(!ver);
    ck_assert_int_eq(node_mempool_sig_state(M, good.txid, tg->stx->sig.data), NODE_MEMPOOL_SIG_QUEUED);
    ver = true;
    const ledger_tx *tb = node_mempool_lend(M, bad.b, bad.len, &ver);
    ck_assert_ptr_nonnull(tb);
    ck_assert(!ver);
    ck_assert_uint_eq(stats().lent, 2);
    wait_done(2);
    ck_assert_int_eq(R.rc[0] == 0 ? R.rc[1] : R.rc[0], LEDGER_ESIG);
    /* bad is out of the pool but still lent: parked, intact, and taking its slot */
    ck_assert_uint_eq(stats().parked, 1);
    ck_assert_int_eq(node_mempool_status(M, bad.txid), NODE_MEMPOOL_STATUS_UNKNOWN);
    ck_assert_ptr_null(node_mempool_find_bytes(M, bad.b, bad.len));
    ck_assert(memcmp(tb->txid, bad.txid, 32) == 0);
    ck_assert_uint_eq(tb->body->nonce, 0);
    ck_assert_int_eq(ledger_tx_verify(tb), LEDGER_ESIG);
    ck_assert_uint_eq(node_mempool_size(M), 1);
    ck_assert_int_eq(submit(&more), NODE_MEMPOOL_OK);
    ck_assert_int_eq(submit(&last), NODE_MEMPOOL_EFULL); /* 2 held + 1 parked of 3 */
    node_mempool_unlend(M, tb);
    ck_assert_uint_eq(stats().parked, 0);
    ck_assert_int_eq(submit(&last), NODE_MEMPOOL_OK);
    wait_done(4);
    /* durable now: lent verified; committed while lent twice, it stays until both give it back */
    ver = false;
    ck_assert_ptr_eq(node_mempool_lend(M, good.b, good.len, &ver), tg);
    ck_assert(ver);
    apply_block(&good, 1);
    block_applied(&good, 1);
    ck_assert_uint_eq(stats().parked, 1);
    ck_assert_ptr_null(node_mempool_lend(M, good.b, good.len, &ver));
    ck_assert_int_eq(ledger_tx_verify(tg), LEDGER_OK);
    node_mempool_unlend(M, tg);
    ck_assert_uint_eq(stats().parked, 1);
    ck_assert(memcmp(tg->txid, good.txid, 32) == 0);
    node_mempool_unlend(M, tg);
    ck_assert_uint_eq(stats().parked, 0);
    /* a tx a block commits while it is still being verified is not lent */
    apply_block(&more, 1);
    block_applied(&more, 1);
    ck_assert_uint_eq(node_mempool_size(M), 1);
    ck_assert_int_eq(submit(&gone), NODE_MEMPOOL_OK);
    apply_block(&gone, 1);
    block_applied(&gone, 1);
    ck_assert_int_eq(node_mempool_status(M, gone.txid), NODE_MEMPOOL_STATUS_INFLIGHT);
    ck_assert_ptr_null(node_mempool_lend(M, gone.b, gone.len, &ver));
    ck_assert_ptr_nonnull(node_mempool_find_bytes(M, gone.b, gone.len)); /* held: EDUP if sent again */
    wait_done(5);
    ck_assert_int_eq(R.rc[4], 0);
    ck_assert_uint_eq(stats().lent, 3);
    /* A forger gossips x's signature over y's body before x arrives: the forgery holds the
     * signature's index, so x is never lent (a view decodes it) and nothing lends the forgery in
     * x's place; the forgery is lent as itself, unverified, and fails its check. */
    tx_t x = mk(7, 0, 11), y = mk(8, 0, 12), forged = forge(&x, &y);
    ck_assert_int_eq(submit(&forged), NODE_MEMPOOL_OK);
    ck_assert_int_eq(submit(&x), NODE_MEMPOOL_OK);
    ck_assert_ptr_null(node_mempool_lend(M, x.b, x.len, &ver));
    const ledger_tx *tf = node_mempool_lend(M, forged.b, forged.len, &ver);
    ck_assert_ptr_nonnull(tf);
    ck_assert(!ver);
    ck_assert(memcmp(tf->txid, y.txid, 32) == 0);
    node_mempool_unlend(M, tf);
    wait_done(7);
    ck_assert_int_eq(node_mempool_status(M, x.txid), NODE_MEMPOOL_STATUS_PENDING);
    ck_assert_int_eq(node_mempool_status(M, y.txid), NODE_MEMPOOL_STATUS_UNKNOWN); /* the forgery failed */
    ck_assert_ptr_null(node_mempool_lend(M, x.b, x.len, &ver)); /* still not indexed: decoded, as before */
    tx_t all[8] = {good, bad, more, last, gone, x, y, forged};
    free_txs(all, 8);
}
END_TEST

START_TEST(mempool_select_follows_arrival_and_nonce_order_across_signers) {
    node_mempool_config c = cfg_default();
    mp_open(&c);
    /* Arrival: A1, B0, A0, B1, A3 (A = key 2, B = key 3). A1 waits for A0, then follows it at
     * once because it arrived earlier; A3 is behind a gap. */
    tx_t x[5] = {mk(2, 1, 1), mk(3, 0, 1), mk(2, 0, 1), mk(3, 1, 1), mk(2, 3, 1)};
    for (int i = 0; i < 5; i++) ck_assert_int_eq(submit(&x[i]), NODE_MEMPOOL_OK);
    wait_done(5);
    for (int i = 0; i < 5; i++) ck_assert_int_eq(R.rc[i], 0);
    static const struct {
        uint32_t max, n;
        int want[5];
    } rows[] = {{10, 4, {1, 2, 0, 3}}, {2, 2, {1, 2}}, {3, 3, {1, 2, 0}}, {0, 0, {0}}};
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        const uint8_t *sel[10];
        size_t lens[10];
        uint32_t n;
        ck_assert_int_eq(node_mempool_select(M, ledger_store_state(S), rows[r].max, sel, lens, &n), 0);
        ck_assert_msg(n == rows[r].n, "row %zu: %u txs", r, n);
        for (uint32_t i = 0; i < n; i++)
            ck_assert_msg(lens[i] == x[rows[r].want[i]].len && memcmp(sel[i], x[rows[r].want[i]].b, lens[i]) == 0,
                          "row %zu position %u", r, i);
    }
    /* The selected txs form a valid block. */
    tx_t blk[4] = {x[1], x[2], x[0], x[3]};
    apply_block(blk, 4);
    block_applied(blk, 4);
    ck_assert_uint_eq(node_mempool_size(M), 1);
    ck_assert_int_eq(node_mempool_status(M, x[4].txid), NODE_MEMPOOL_STATUS_PENDING);
    ck_assert_uint_eq(stats().committed_dropped, 4);
    free_txs(x, 5);
}
END_TEST

static int PRECHECK_CALLS;
static int precheck_refuse_key4(void *ctx, const ledger_tx *tx) {
    (void)ctx;
    PRECHECK_CALLS++;
    uint8_t pub[33];
    pub_of(4, pub);
    return memcmp(tx->body->signer.data, pub, 33) == 0 ? -599 : 0;
}

START_TEST(mempool_bad_txs_are_refused_synchronously_and_never_reach_done) {
    node_mempool_config c = cfg_default();
    c.precheck = precheck_refuse_key4;
    G.max_admin_tx_bytes = 4096; /* so `big` is over this pool's outer limit */
    mp_open(&c);
    tx_t good = mk(2, 0, 1), refused = mk(4, 0, 1);
    uint8_t garbage[40];
    memset(garbage, 0xff, sizeof garbage);
    /* Another chain's tx. */
    uint8_t sec[32], pub[33], tpub[33], tsec[32];
    fx_key(2, sec, pub);
    fx_key(1, tsec, tpub);
    Tem__V1__TxBody b = TEM__V1__TX_BODY__INIT;
    Tem__V1__Transfer t = TEM__V1__TRANSFER__INIT;
    t.to = (ProtobufCBinaryData){33, tpub};
    b.chain_id = (char *)"other-chain";
    b.kind_case = TEM__V1__TX_BODY__KIND_TRANSFER;
    b.transfer = &t;
    uint8_t *other;
    size_t olen;
    ck_assert_int_eq(ledger_tx_build(&b, sec, &other, &olen, NULL), LEDGER_OK);
    static uint8_t big[8192];
    const struct {
        const char *name;
        const uint8_t *b;
        size_t len;
        int want;
    } rows[] = {
        {"empty", good.b, 0, LEDGER_EEMPTY},
        {"garbage", garbage, sizeof garbage, LEDGER_EDECODE},
        {"truncated", good.b, good.len - 10, LEDGER_EDECODE},
        {"oversize", big, sizeof big, LEDGER_ETOOBIG},
        {"other chain", other, olen, LEDGER_ECHAIN},
        {"precheck", refused.b, refused.len, -599},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        uint8_t txid[32] = {0};
        int rc = node_mempool_submit(M, rows[i].b, rows[i].len, on_done, &R, txid);
        ck_assert_msg(rc == rows[i].want, "%s: got %d (%s)", rows[i].name, rc, node_mempool_errname(rc));
    }
    ck_assert_int_eq(PRECHECK_CALLS, 1);
    uv_run(&LOOP, UV_RUN_NOWAIT);
    ck_assert_int_eq(R.n, 0);
    ck_assert_uint_eq(node_mempool_size(M), 0);
    ck_assert_uint_eq(stats().refused, sizeof rows / sizeof rows[0]);
    ck_assert_str_eq(node_mempool_errname(NODE_MEMPOOL_EFULL), "EFULL");
    ck_assert_str_eq(node_mempool_errname(LEDGER_ESIG), "ESIG");
    ck_assert_str_eq(node_mempool_strerror(NODE_MEMPOOL_EFULL), "mempool is full");
    tem_free(other);
    free_txs(&good, 1);
    free_txs(&refused, 1);
}
END_TEST

START_TEST(mempool_refuses_duplicates_in_flight_pending_and_committed) {
    node_mempool_config c = cfg_default();
    mp_open(&c);
    tx_t x = mk(2, 0, 1);
    ck_assert_int_eq(submit(&x), NODE_MEMPOOL_OK);
    ck_assert_int_eq(submit(&x), NODE_MEMPOOL_EDUP); /* in flight */
    wait_done(1);
    ck_assert_int_eq(submit(&x), NODE_MEMPOOL_EDUP); /* pending */
    apply_block(&x, 1);
    block_applied(&x, 1);
    ck_assert_int_eq(node_mempool_status(M, x.txid), NODE_MEMPOOL_STATUS_UNKNOWN);
    ck_assert_int_eq(submit(&x), NODE_MEMPOOL_ECOMMITTED);
    ck_assert_int_eq(R.n, 1);
    free_txs(&x, 1);
}
END_TEST

START_TEST(mempool_refuses_a_replayed_nonce_and_a_taken_one) {
    node_mempool_config c = cfg_default();
    mp_open(&c);
    tx_t a0 = mk(2, 0, 1), a0b = mk(2, 0, 2), a1 = mk(2, 1, 1), a1b = mk(2, 1, 2);
    apply_block(&a0, 1); /* nonce 0 used elsewhere */
    ck_assert_int_eq(submit(&a0b), NODE_MEMPOOL_ENONCELOW);
    ck_assert_int_eq(submit(&a1), NODE_MEMPOOL_OK);
    ck_assert_int_eq(submit(&a1b), NODE_MEMPOOL_ENONCETAKEN);
    wait_done(1);
    ck_assert_int_eq(submit(&a1b), NODE_MEMPOOL_ENONCETAKEN);
    ck_assert_uint_eq(node_mempool_size(M), 1);
    free_txs(&a0, 1);
    free_txs(&a0b, 1);
    free_txs(&a1, 1);
    free_txs(&a1b, 1);
}
END_TEST

START_TEST(mempool_accepts_only_nonces_inside_the_window) {
    node_mempool_config c = cfg_default();
    c.nonce_window = 4;
    mp_open(&c);
    tx_t used = mk(3, 0, 1);
    apply_block(&used, 1); /* key 3's state nonce is 1 */
    static const struct {
        uint32_t key;
        uint64_t nonce;
        int want;
    } rows[] = {
        {2, 3, NODE_MEMPOOL_OK},        {2, 4, NODE_MEMPOOL_ENONCEFAR}, {2, 0, NODE_MEMPOOL_OK},
        {2, 1000, NODE_MEMPOOL_ENONCEFAR}, {3, 0, NODE_MEMPOOL_ENONCELOW}, {3, 4, NODE_MEMPOOL_OK},
        {3, 5, NODE_MEMPOOL_ENONCEFAR}, {2, UINT64_MAX, NODE_MEMPOOL_ENONCEFAR},
    };
    int ok = 0;
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        tx_t x = mk(rows[i].key, rows[i].nonce, 7);
        int rc = submit(&x);
        ck_assert_msg(rc == rows[i].want, "row %zu: %s", i, node_mempool_errname(rc));
        ok += rc == 0;
        free_txs(&x, 1);
    }
    wait_done(ok);
    ck_assert_uint_eq(node_mempool_size(M), (uint32_t)ok);
    free_txs(&used, 1);
}
END_TEST

START_TEST(mempool_full_pool_refuses_with_efull_and_keeps_what_it_accepted) {
    node_mempool_config c = cfg_default();
    c.txs_max = 4;
    c.per_signer_max = 4;
    mp_open(&c);
    tx_t x[5];
    for (int i = 0; i < 5; i++) x[i] = mk(2 + (uint32_t)i, 0, 1);
    for (int i = 0; i < 4; i++) ck_assert_int_eq(submit(&x[i]), NODE_MEMPOOL_OK);
    ck_assert_int_eq(submit(&x[4]), NODE_MEMPOOL_EFULL); /* full counts in-flight txs */
    wait_done(4);
    ck_assert_int_eq(submit(&x[4]), NODE_MEMPOOL_EFULL);
    for (int i = 0; i < 4; i++) ck_assert_int_eq(node_mempool_status(M, x[i].txid), NODE_MEMPOOL_STATUS_PENDING);
    apply_block(&x[0], 1);
    block_applied(&x[0], 1);
    ck_assert_int_eq(submit_ok_and_wait(&x[4]), 0); /* room again */
    free_txs(x, 5);
}
END_TEST

START_TEST(mempool_byte_bound_refuses_with_efull) {
    node_mempool_config c = cfg_default();
    tx_t x = mk(2, 0, 1), y = mk(3, 0, 1);
    c.bytes_max = x.len + y.len - 1;
    mp_open(&c);
    ck_assert_int_eq(submit(&x), NODE_MEMPOOL_OK);
    ck_assert_int_eq(submit(&y), NODE_MEMPOOL_EFULL);
    wait_done(1);
    free_txs(&x, 1);
    free_txs(&y, 1);
}
END_TEST

START_TEST(mempool_per_signer_limit_refuses_with_esignerfull) {
    node_mempool_config c = cfg_default();
    c.per_signer_max = 3;
    mp_open(&c);
    tx_t x[5];
    for (int i = 0; i < 4; i++) x[i] = mk(2, (uint64_t)i, 1);
    x[4] = mk(3, 0, 1);
    for (int i = 0; i < 3; i++) ck_assert_int_eq(submit(&x[i]), NODE_MEMPOOL_OK);
    ck_assert_int_eq(submit(&x[3]), NODE_MEMPOOL_ESIGNERFULL);
    ck_assert_int_eq(submit(&x[4]), NODE_MEMPOOL_OK); /* other signers unaffected */
    wait_done(4);
    free_txs(x, 5);
}
END_TEST

/* ------------------------------------------------------------------ signatures */
/* Replaces s by n - s (big-endian), the high-S twin of a valid signature. */
static void make_high_s(uint8_t *s) {
    static const uint8_t n[32] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                  0xff, 0xff, 0xff, 0xff, 0xfe, 0xba, 0xae, 0xdc, 0xe6, 0xaf, 0x48,
                                  0xa0, 0x3b, 0xbf, 0xd2, 0x5e, 0x8c, 0xd0, 0x36, 0x41, 0x41};
    int borrow = 0;
    for (int i = 31; i >= 0; i--) {
        int d = n[i] - s[i] - borrow;
        borrow = d < 0;
        s[i] = (uint8_t)(d + (borrow ? 256 : 0));
    }
}

START_TEST(mempool_bad_signatures_are_reported_through_done_and_dropped) {
    node_mempool_config c = cfg_default();
    mp_open(&c);
    /* The signature is the SignedTx's last field: its 64 bytes end the encoding. */
    tx_t flip_r = mk(2, 0, 1), high_s = mk(3, 0, 1), good = mk(4, 0, 1), offcurve;
    flip_r.b[flip_r.len - 64 + 5] ^= 0x01;
    make_high_s(high_s.b + high_s.len - 32);
    /* A signer with the 02 prefix whose x is not on the curve passes decode, fails verify. */
    uint8_t bad_signer[33], tpub[33], sig[64], *body;
    memset(bad_signer, 0xff, sizeof bad_signer);
    bad_signer[0] = 0x02;
    pub_of(1, tpub);
    memset(sig, 1, sizeof sig);
    Tem__V1__TxBody b = TEM__V1__TX_BODY__INIT;
    Tem__V1__Transfer t = TEM__V1__TRANSFER__INIT;
    t.to = (ProtobufCBinaryData){33, tpub};
    b.chain_id = (char *)CHAIN;
    b.signer = (ProtobufCBinaryData){33, bad_signer};
    b.kind_case = TEM__V1__TX_BODY__KIND_TRANSFER;
    b.transfer = &t;
    size_t blen = tem__v1__tx_body__get_packed_size(&b);
    body = tem_malloc(blen);
    ck_assert_uint_eq(tem__v1__tx_body__pack(&b, body), blen);
    Tem__V1__SignedTx stx = TEM__V1__SIGNED_TX__INIT;
    stx.body = (ProtobufCBinaryData){blen, body};
    stx.sig = (ProtobufCBinaryData){64, sig};
    offcurve.len = tem__v1__signed_tx__get_packed_size(&stx);
    offcurve.b = tem_malloc(offcurve.len);
    ck_assert_uint_eq(tem__v1__signed_tx__pack(&stx, offcurve.b), offcurve.len);
    ledger_sha256(offcurve.txid, body, blen);
    tem_free(body);

    const struct {
        tx_t *x;
        int want;
    } rows[] = {{&flip_r, LEDGER_ESIG}, {&high_s, LEDGER_ESIGHIGHS}, {&offcurve, LEDGER_EPUBKEY}, {&good, 0}};
    const size_t nrows = sizeof rows / sizeof rows[0];
    for (size_t i = 0; i < nrows; i++) {
        uint8_t txid[32];
        ck_assert_int_eq(node_mempool_submit(M, rows[i].x->b, rows[i].x->len, on_done, &R, txid), 0);
        ck_assert(memcmp(txid, rows[i].x->txid, 32) == 0);
    }
    wait_done((int)nrows);
    for (size_t i = 0; i < nrows; i++) {
        int k = -1;
        for (int j = 0; j < R.n; j++)
            if (memcmp(R.txid[j], rows[i].x->txid, 32) == 0) k = j;
        ck_assert_msg(k >= 0, "row %zu: no done", i);
        ck_assert_msg(R.rc[k] == rows[i].want, "row %zu: rc %s", i, node_mempool_errname(R.rc[k]));
        ck_assert_int_eq(node_mempool_status(M, rows[i].x->txid),
                         rows[i].want ? NODE_MEMPOOL_STATUS_UNKNOWN : NODE_MEMPOOL_STATUS_PENDING);
    }
    ck_assert_uint_eq(node_mempool_size(M), 1);
    node_mempool_stats s = stats();
    ck_assert_uint_eq(s.verify_failed, 3);
    ck_assert_uint_eq(s.log_bytes, NODE_MEMPOOL_LOG_HEADER_BYTES + NODE_MEMPOOL_REC_OVERHEAD_BYTES + good.len);
    /* A refused tx may be sent again (and is refused again): it left no trace. */
    ck_assert_int_eq(submit_ok_and_wait(&flip_r), LEDGER_ESIG);
    tx_t *all[] = {&flip_r, &high_s, &good, &offcurve};
    for (int i = 0; i < 4; i++) tem_free(all[i]->b);
}
END_TEST

/* The node's verified set (node_mempool_config.sig_known): a pair it names is not verified
 * again, which the test sees because a tampered signature it names is accepted; one it does not
 * name is verified and refused. node_mempool_sig_state follows an entry QUEUED (until the loop
 * hands it to a work item) -> VERIFYING -> VERIFIED
 * and names nothing for another signature or an unknown txid. */
static const uint8_t *KNOWN_SIG;
static int KNOWN_CALLS;
static bool known_one(void *ctx, const uint8_t txid[32], const uint8_t sig[64]) {
    (void)ctx;
    (void)txid;
    KNOWN_CALLS++;
    return KNOWN_SIG && memcmp(sig, KNOWN_SIG, 64) == 0;
}

/* A verified tx whose log record is still being written is selectable (a block needs a valid
 * tx, not this node's copy on disk), while its submitter still waits for the 202. Stepping
 * the loop one iteration at a time catches that state: the record's write is queued from the
 * verification's completion, so it completes in a later iteration. */
static bool verified_not_durable(const tx_t *x) {
    return node_mempool_sig_state(M, x->txid, x->b + x->len - 64) == NODE_MEMPOOL_SIG_VERIFIED && R.n == 0;
}

START_TEST(mempool_selects_verified_txs_before_their_record_is_durable) {
    node_mempool_config c = cfg_default();
    mp_open(&c);
    tx_t a = mk(2, 0, 1);
    ck_assert_int_eq(submit(&a), 0);
    const uint8_t *sel[4];
    size_t lens[4];
    uint32_t n = 9;
    /* Not verified yet: not selectable. */
    ck_assert_int_eq(node_mempool_select(M, ledger_store_state(S), 4, sel, lens, &n), NODE_MEMPOOL_OK);
    ck_assert_uint_eq(n, 0);
    bool seen = false;
    for (int i = 0; i < 100000 && R.n == 0 && !seen; i++) {
        uv_run(&LOOP, UV_RUN_ONCE);
        seen = verified_not_durable(&a);
    }
    ck_assert_msg(seen, "never saw the tx verified and not yet durable");
    ck_assert_int_eq(node_mempool_select(M, ledger_store_state(S), 4, sel, lens, &n), NODE_MEMPOOL_OK);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(lens[0], a.len);
    ck_assert_mem_eq(sel[0], a.b, a.len);
    ck_assert_int_eq(R.n, 0); /* the 202 still waits for the fdatasync */
    wait_done(1);
    ck_assert_int_eq(R.rc[0], 0);
    tem_free(a.b);
}
END_TEST

/* node_mempool_verify_first: the named txs still queued jump the verify queue (in their queue
 * order), the rest keep theirs; an unknown txid is ignored and one already verified is not
 * moved. One work item of one tx at a time, so the done order is the verification order. */
START_TEST(mempool_verify_first_moves_queued_txs_to_the_front) {
    node_mempool_config c = cfg_default();
    c.verify_jobs_max = 1;
    c.verify_batch_max = 1;
    mp_open(&c);
    tx_t a = mk(2, 0, 1), b = mk(3, 0, 1), d = mk(4, 0, 1);
    ck_assert_int_eq(submit(&a), 0);
    ck_assert_int_eq(submit(&b), 0);
    ck_assert_int_eq(submit(&d), 0);
    /* Dispatch waits for the loop's idle phase: all three are still queued. */
    ck_assert_int_eq(node_mempool_sig_state(M, b.txid, b.b + b.len - 64), NODE_MEMPOOL_SIG_QUEUED);
    uint8_t ids[3][32];
    memcpy(ids[0], d.txid, 32);
    memset(ids[1], 0x5a, 32); /* no such tx */
    memcpy(ids[2], b.txid, 32);
    ck_assert_uint_eq(node_mempool_verify_first(M, (const uint8_t(*)[32])ids, 3), 2);
    /* Asked again (a waiting validation polls): they already lead, the order holds. */
    ck_assert_uint_eq(node_mempool_verify_first(M, (const uint8_t(*)[32])ids, 3), 2);
    wait_done(3);
    ck_assert_mem_eq(R.txid[0], b.txid, 32);
    ck_assert_mem_eq(R.txid[1], d.txid, 32);
    ck_assert_mem_eq(R.txid[2], a.txid, 32);
    for (int i = 0; i < 3; i++) ck_assert_int_eq(R.rc[i], 0);
    ck_assert_int_eq(node_mempool_sig_state(M, b.txid, b.b + b.len - 64), NODE_MEMPOOL_SIG_VERIFIED);
    ck_assert_uint_eq(node_mempool_verify_first(M, (const uint8_t(*)[32])ids, 3), 0);
    tx_t *all[] = {&a, &b, &d};
    for (int i = 0; i < 3; i++) tem_free(all[i]->b);
}
END_TEST

START_TEST(mempool_skips_verifying_pairs_the_node_already_verified) {
    node_mempool_config c = cfg_default();
    c.sig_known = known_one;
    mp_open(&c);
    tx_t named = mk(2, 0, 1), other = mk(3, 0, 1);
    named.b[named.len - 64 + 5] ^= 0x01; /* both signatures are now wrong */
    other.b[other.len - 64 + 5] ^= 0x01;
    KNOWN_SIG = named.b + named.len - 64;
    KNOWN_CALLS = 0;
    ck_assert_int_eq(submit(&named), 0);
    ck_assert_int_eq(node_mempool_sig_state(M, named.txid, named.b + named.len - 64), NODE_MEMPOOL_SIG_QUEUED);
    uint8_t zero[64] = {0}, nope[32] = {1};
    ck_assert_int_eq(node_mempool_sig_state(M, named.txid, zero), NODE_MEMPOOL_SIG_UNKNOWN);
    ck_assert_int_eq(node_mempool_sig_state(M, nope, named.b + named.len - 64), NODE_MEMPOOL_SIG_UNKNOWN);
    /* Either may finish first: each result is found by its txid. */
    ck_assert_int_eq(submit(&other), 0);
    wait_done(2);
    int k = memcmp(R.txid[0], named.txid, 32) == 0 ? 0 : 1;
    ck_assert_mem_eq(R.txid[1 - k], other.txid, 32);
    ck_assert_int_eq(R.rc[k], 0);
    ck_assert_int_eq(R.rc[1 - k], LEDGER_ESIG);
    ck_assert_int_eq(KNOWN_CALLS, 2);
    ck_assert_int_eq(node_mempool_sig_state(M, named.txid, named.b + named.len - 64), NODE_MEMPOOL_SIG_VERIFIED);
    ck_assert_int_eq(node_mempool_sig_state(M, other.txid, other.b + other.len - 64), NODE_MEMPOOL_SIG_UNKNOWN);
    ck_assert_uint_eq(stats().verify_failed, 1);
    KNOWN_SIG = NULL;
    tem_free(named.b);
    tem_free(other.b);
}
END_TEST

/* A tx still queued for its check when a block commits its txid (a block fetched while
 * catching up, verified there) is answered committed without a second verification: its
 * signature here is wrong, so a verification would have refused it. */
START_TEST(mempool_does_not_verify_a_queued_tx_a_block_committed) {
    node_mempool_config c = cfg_default();
    mp_open(&c);
    tx_t a = mk(2, 0, 1);
    a.b[a.len - 64 + 5] ^= 0x01;
    ck_assert_int_eq(submit(&a), 0);
    ck_assert_int_eq(node_mempool_sig_state(M, a.txid, a.b + a.len - 64), NODE_MEMPOOL_SIG_QUEUED);
    node_mempool_block_applied(M, (const uint8_t(*)[32])a.txid, 1);
    wait_done(1);
    ck_assert_mem_eq(R.txid[0], a.txid, 32);
    ck_assert_int_eq(R.rc[0], 0);
    ck_assert_uint_eq(stats().verify_failed, 0);
    ck_assert_uint_eq(stats().log_bytes, NODE_MEMPOOL_LOG_HEADER_BYTES);
    tem_free(a.b);
}
END_TEST

/* A validation waiting for the pool's checks looks again on this callback instead of polling:
 * it must come after every work item, once that item's txs all have their answers. */
static tx_t VTX[5];
static int VCALLS, VSETTLED[8], VBUSY[8];
static void on_verified(void *ctx) {
    (void)ctx;
    int settled = 0, busy = 0;
    for (int i = 0; i < 5; i++) {
        int st = node_mempool_sig_state(M, VTX[i].txid, VTX[i].b + VTX[i].len - 64);
        busy += st == NODE_MEMPOOL_SIG_VERIFYING;
        settled += st != NODE_MEMPOOL_SIG_QUEUED && st != NODE_MEMPOOL_SIG_VERIFYING;
    }
    if (VCALLS < 8) {
        VSETTLED[VCALLS] = settled;
        VBUSY[VCALLS] = busy;
    }
    VCALLS++;
}

START_TEST(mempool_calls_verified_after_each_work_item_with_its_txs_answered) {
    node_mempool_config c = cfg_default();
    c.verify_jobs_max = 1;
    c.verify_batch_max = 2;
    c.verified = on_verified;
    mp_open(&c);
    VCALLS = 0;
    for (int i = 0; i < 5; i++) VTX[i] = mk(2 + (uint32_t)i, 0, 1);
    VTX[2].b[VTX[2].len - 64 + 5] ^= 0x01; /* refused: its answer is the refusal */
    for (int i = 0; i < 5; i++) ck_assert_int_eq(submit(&VTX[i]), 0);
    ck_assert_int_eq(VCALLS, 0); /* nothing dispatched before the loop runs */
    wait_done(5);
    /* 5 txs, 2 per work item, one item at a time: 3 items, answers 2, 4, 5 */
    ck_assert_int_eq(VCALLS, 3);
    ck_assert_int_eq(VSETTLED[0], 2);
    ck_assert_int_eq(VSETTLED[1], 4);
    ck_assert_int_eq(VSETTLED[2], 5);
    for (int k = 0; k < 3; k++) ck_assert_int_eq(VBUSY[k], 0);
    ck_assert_uint_eq(stats().verify_failed, 1);
    ck_assert_int_eq(node_mempool_sig_state(M, VTX[4].txid, VTX[4].b + VTX[4].len - 64), NODE_MEMPOOL_SIG_VERIFIED);
    for (int i = 0; i < 5; i++) tem_free(VTX[i].b);
}
END_TEST

/* config.announce: called once per tx submitted with admit.announce, when its signature
 * verified, before its record is durable (nothing answered yet), with the bytes readable through
 * node_mempool_get_verified while node_mempool_get (durable only) still says no; never for a tx
 * submitted without the flag or refused for its signature. */
static int ACALLS, ADONE_AT_CALL[8], AGET_AT_CALL[8], AVER_AT_CALL[8];
static uint8_t ATXID[8][32];
static void on_announce(void *ctx, const uint8_t txid[32]) {
    (void)ctx;
    if (ACALLS < 8) {
        const uint8_t *b = NULL;
        size_t l = 0;
        memcpy(ATXID[ACALLS], txid, 32);
        ADONE_AT_CALL[ACALLS] = 0; /* was this tx answered already? */
        for (int i = 0; i < R.n; i++) ADONE_AT_CALL[ACALLS] |= memcmp(R.txid[i], txid, 32) == 0;
        AGET_AT_CALL[ACALLS] = node_mempool_get(M, txid, NULL, NULL) != NULL;
        AVER_AT_CALL[ACALLS] = node_mempool_get_verified(M, txid, &b, &l) && l > 0 && b != NULL;
    }
    ACALLS++;
}

START_TEST(mempool_announces_a_clients_tx_once_verified_before_it_is_durable) {
    node_mempool_config c = cfg_default();
    c.announce = on_announce;
    mp_open(&c);
    ACALLS = 0;
    tx_t a = mk(2, 0, 1), b = mk(3, 0, 1), bad = mk(4, 0, 1), quiet = mk(5, 0, 1);
    bad.b[bad.len - 64 + 5] ^= 0x01;
    node_mempool_admit ann = {.announce = true}, plain = {0};
    ck_assert_int_eq(node_mempool_submit_admit(M, a.b, a.len, &ann, on_done, &R, NULL), 0);
    ck_assert_int_eq(node_mempool_submit_admit(M, b.b, b.len, &ann, on_done, &R, NULL), 0);
    ck_assert_int_eq(node_mempool_submit_admit(M, bad.b, bad.len, &ann, on_done, &R, NULL), 0);
    ck_assert_int_eq(node_mempool_submit_admit(M, quiet.b, quiet.len, &plain, on_done, &R, NULL), 0);
    ck_assert_int_eq(ACALLS, 0); /* nothing verified before the loop runs */
    const uint8_t *vb;
    size_t vl;
    ck_assert(!node_mempool_get_verified(M, a.txid, &vb, &vl)); /* queued, not verified */
    wait_done(4);
    ck_assert_int_eq(ACALLS, 2);
    for (int k = 0; k < 2; k++) {
        ck_assert(memcmp(ATXID[k], a.txid, 32) == 0 || memcmp(ATXID[k], b.txid, 32) == 0);
        ck_assert_int_eq(AGET_AT_CALL[k], 0);
        ck_assert_int_eq(AVER_AT_CALL[k], 1);
    }
    ck_assert(memcmp(ATXID[0], ATXID[1], 32) != 0);
    /* each was announced before its own answer (the 202 waits for the fdatasync) */
    ck_assert_int_eq(ADONE_AT_CALL[0], 0);
    ck_assert_int_eq(ADONE_AT_CALL[1], 0);
    ck_assert(node_mempool_get_verified(M, a.txid, &vb, &vl));
    ck_assert_uint_eq(vl, a.len);
    ck_assert_mem_eq(vb, a.b, a.len);
    ck_assert(!node_mempool_get_verified(M, bad.txid, &vb, &vl));
    free_txs(&a, 1);
    free_txs(&b, 1);
    free_txs(&bad, 1);
    free_txs(&quiet, 1);
}
END_TEST

/* ------------------------------------------------------------------ blocks */
START_TEST(mempool_block_applied_drops_committed_and_superseded_txs) {
    node_mempool_config c = cfg_default();
    mp_open(&c);
    /* Held here: A0, A1, B0. Elsewhere A0' (same nonce, another body) is committed with B0. */
    tx_t a0 = mk(2, 0, 1), a1 = mk(2, 1, 1), b0 = mk(3, 0, 1), a0x = mk(2, 0, 99);
    tx_t held[3] = {a0, a1, b0};
    for (int i = 0; i < 3; i++) ck_assert_int_eq(submit(&held[i]), 0);
    wait_done(3);
    tx_t blk[2] = {a0x, b0};
    apply_block(blk, 2);
    block_applied(blk, 2);
    ck_assert_int_eq(node_mempool_status(M, a0.txid), NODE_MEMPOOL_STATUS_SUPERSEDED);
    ck_assert_int_eq(node_mempool_status(M, b0.txid), NODE_MEMPOOL_STATUS_UNKNOWN);
    ck_assert_int_eq(node_mempool_status(M, a1.txid), NODE_MEMPOOL_STATUS_PENDING);
    ck_assert_uint_eq(node_mempool_size(M), 1);
    node_mempool_stats s = stats();
    ck_assert_uint_eq(s.superseded, 1);
    ck_assert_uint_eq(s.committed_dropped, 1);
    ck_assert_uint_eq(s.log_live_bytes, NODE_MEMPOOL_REC_OVERHEAD_BYTES + a1.len);
    ck_assert_int_eq(submit(&a0), NODE_MEMPOOL_ENONCELOW);
    /* A1 is next for the new state. */
    const uint8_t *sel[4];
    size_t lens[4];
    uint32_t n;
    ck_assert_int_eq(node_mempool_select(M, ledger_store_state(S), 4, sel, lens, &n), 0);
    ck_assert_uint_eq(n, 1);
    ck_assert(memcmp(sel[0], a1.b, a1.len) == 0);
    free_txs(held, 3);
    free_txs(&a0x, 1);
}
END_TEST

START_TEST(mempool_txs_committed_or_superseded_while_in_flight_settle_when_work_returns) {
    node_mempool_config c = cfg_default();
    mp_open(&c);
    tx_t a0 = mk(2, 0, 1), a0x = mk(2, 0, 2), b0 = mk(3, 0, 1);
    ck_assert_int_eq(submit(&a0), 0);
    ck_assert_int_eq(submit(&b0), 0);
    /* Before the loop runs: B0 is committed, A0's nonce is used by A0'. */
    tx_t blk[2] = {a0x, b0};
    apply_block(blk, 2);
    block_applied(blk, 2);
    ck_assert_int_eq(node_mempool_status(M, a0.txid), NODE_MEMPOOL_STATUS_INFLIGHT);
    wait_done(2);
    for (int i = 0; i < 2; i++) {
        bool is_a = memcmp(R.txid[i], a0.txid, 32) == 0;
        ck_assert_int_eq(R.rc[i], is_a ? NODE_MEMPOOL_ESUPERSEDED : 0);
    }
    ck_assert_int_eq(node_mempool_status(M, a0.txid), NODE_MEMPOOL_STATUS_SUPERSEDED);
    ck_assert_int_eq(node_mempool_status(M, b0.txid), NODE_MEMPOOL_STATUS_UNKNOWN);
    ck_assert_uint_eq(node_mempool_size(M), 0);
    free_txs(&a0, 1);
    free_txs(&a0x, 1);
    free_txs(&b0, 1);
}
END_TEST

START_TEST(mempool_large_pool_finds_superseded_txs_round_robin_within_two_blocks) {
    enum { N = 4200, K = 4150 }; /* above the 4096 signers checked per block */
    node_mempool_config c = cfg_default();
    c.txs_max = N + 10;
    mp_open(&c);
    static tx_t x[N];
    for (int i = 0; i < N; i++) x[i] = mk(2 + (uint32_t)i, 0, 1);
    for (int i = 0; i < N; i++) ck_assert_int_eq(submit(&x[i]), 0);
    wait_done(N);
    /* Signer of x[K] uses nonce 0 through a tx this node never saw. Signers are checked in
     * arrival order from the first, so the first block's 4096 miss it. */
    tx_t other = mk(2 + K, 0, 42);
    apply_block(&other, 1);
    block_applied(&other, 1);
    uint64_t after_one = stats().superseded;
    ck_assert_uint_eq(after_one, 0);
    ck_assert_int_eq(node_mempool_status(M, x[K].txid), NODE_MEMPOOL_STATUS_PENDING);
    const uint8_t **sel = malloc(N * sizeof *sel);
    size_t *lens = malloc(N * sizeof *lens);
    uint32_t n;
    ck_assert_int_eq(node_mempool_select(M, ledger_store_state(S), N, sel, lens, &n), 0);
    ck_assert_uint_eq(n, N - 1); /* never selected, found or not */
    for (uint32_t i = 0; i < n; i++) ck_assert(lens[i] != x[K].len || memcmp(sel[i], x[K].b, lens[i]) != 0);
    node_mempool_block_applied(M, NULL, 0);
    ck_assert_uint_eq(stats().superseded, 1);
    ck_assert_int_eq(node_mempool_status(M, x[K].txid), NODE_MEMPOOL_STATUS_SUPERSEDED);
    ck_assert_uint_eq(node_mempool_size(M), N - 1);
    free(sel);
    free(lens);
    free_txs(x, N);
    free_txs(&other, 1);
}
END_TEST

START_TEST(mempool_indexes_stay_exact_after_many_removals) {
    /* Removal shifts later members of a probe run back (no tombstones): after removing every
     * third tx in a crowded pool, each remaining one is still found and no removed one is. */
    enum { N = 3000 };
    node_mempool_config c = cfg_default();
    c.txs_max = N;
    mp_open(&c);
    static tx_t x[N];
    for (int i = 0; i < N; i++) x[i] = mk(2 + (uint32_t)(i / 3), (uint64_t)(i % 3), 1);
    for (int i = 0; i < N; i++) ck_assert_int_eq(submit(&x[i]), 0);
    wait_done(N);
    static uint8_t ids[N / 3][32];
    for (int i = 0; i < N / 3; i++) memcpy(ids[i], x[3 * i + 1].txid, 32);
    node_mempool_block_applied(M, (const uint8_t(*)[32])ids, N / 3);
    ck_assert_uint_eq(node_mempool_size(M), N - N / 3);
    for (int i = 0; i < N; i++)
        ck_assert_msg(node_mempool_status(M, x[i].txid) == (i % 3 == 1 ? NODE_MEMPOOL_STATUS_UNKNOWN : NODE_MEMPOOL_STATUS_PENDING),
                      "tx %d", i);
    /* Signers stay indexed too: each still refuses its taken nonce 0 and takes nonce 1 again. */
    tx_t again = mk(2 + 500, 1, 9), taken = mk(2 + 500, 0, 9);
    ck_assert_int_eq(submit(&taken), NODE_MEMPOOL_ENONCETAKEN);
    ck_assert_int_eq(submit_ok_and_wait(&again), 0);
    free_txs(x, N);
    free_txs(&again, 1);
    free_txs(&taken, 1);
}
END_TEST

/* ------------------------------------------------------------------ the log */
START_TEST(mempool_group_commit_serves_many_txs_with_few_fsyncs) {
    node_mempool_config c = cfg_default();
    mp_open(&c);
    enum { N = 400 };
    static tx_t x[N];
    for (int i = 0; i < N; i++) x[i] = mk(2 + (uint32_t)(i / 10), (uint64_t)(i % 10), 1);
    uint64_t fs0 = stats().log_fsyncs;
    for (int i = 0; i < N; i++) ck_assert_int_eq(submit(&x[i]), 0);
    wait_done(N);
    for (int i = 0; i < N; i++) ck_assert_int_eq(R.rc[i], 0);
    node_mempool_stats s = stats();
    uint64_t fsyncs = s.log_fsyncs - fs0;
    /* 400 txs of one loop iteration go into two work items, so a handful of fsyncs at most. */
    ck_assert_uint_ge(fsyncs, 1);
    ck_assert_msg(fsyncs * 20 <= N, "%lu fsyncs for %d txs", (unsigned long)fsyncs, N);
    ck_assert_uint_ge(s.verify_jobs, 2);
    ck_assert_uint_eq(s.durable, N);
    free_txs(x, N);
}
END_TEST

START_TEST(mempool_every_acknowledged_tx_survives_a_restart_without_compaction) {
    node_mempool_config c = cfg_default();
    mp_open(&c);
    enum { N = 60 };
    tx_t x[N];
    for (int i = 0; i < N; i++) x[i] = mk(2 + (uint32_t)(i % 6), (uint64_t)(i / 6), 1);
    for (int i = 0; i < N; i++) ck_assert_int_eq(submit(&x[i]), 0);
    wait_done(N);
    long size = file_size(LOG);
    mp_shutdown(); /* closes the log as it is: the "crash" */
    ck_assert_int_eq(file_size(LOG), size);
    memset(&R, 0, sizeof R);
    ck_assert_uint_eq(mp_open(&c), N);
    for (int i = 0; i < N; i++) ck_assert_int_eq(node_mempool_status(M, x[i].txid), NODE_MEMPOOL_STATUS_PENDING);
    /* Recovered txs were verified again on the way in: all count as verified. */
    ck_assert_uint_eq(node_mempool_verified(M), N);
    ck_assert_int_eq(submit(&x[0]), NODE_MEMPOOL_EDUP);
    const uint8_t *sel[N];
    size_t lens[N];
    uint32_t n;
    ck_assert_int_eq(node_mempool_select(M, ledger_store_state(S), N, sel, lens, &n), 0);
    ck_assert_uint_eq(n, N);
    ck_assert_int_eq(R.n, 0);
    free_txs(x, N);
}
END_TEST

/* The child plays a node: submits txs from a timer and reports each acknowledged txid on a pipe
 * the moment done(0) fires; the parent SIGKILLs it mid-stream. */
enum { KILL_TXS = 400, KILL_AFTER = 120 };
static int CHILD_PIPE, CHILD_NEXT;
static tx_t *CHILD_TXS;
static void child_done(void *ctx, int rc, const uint8_t txid[32]) {
    (void)ctx;
    if (rc == 0 && write(CHILD_PIPE, txid, 32) != 32) _exit(3);
}
static void child_tick(uv_timer_t *t) {
    for (int k = 0; k < 20 && CHILD_NEXT < KILL_TXS; k++, CHILD_NEXT++)
        if (node_mempool_submit(M, CHILD_TXS[CHILD_NEXT].b, CHILD_TXS[CHILD_NEXT].len, child_done, NULL, NULL) != 0)
            _exit(4);
    if (CHILD_NEXT == KILL_TXS) uv_timer_stop(t);
}
static void child_node(int fd) {
    ledger_store *s;
    uv_loop_t loop;
    if (ledger_store_open(STORE_DIR, &G, NULL, NULL, &s) != LEDGER_OK || uv_loop_init(&loop) != 0) _exit(2);
    S = s;
    node_mempool_config c = cfg_default();
    if (node_mempool_new(&loop, &c, s, &M) != 0 || node_mempool_recover(M, NULL) != 0) _exit(2);
    CHILD_PIPE = fd;
    uv_timer_t t;
    if (uv_timer_init(&loop, &t) != 0 || uv_timer_start(&t, child_tick, 0, 1) != 0) _exit(2);
    uv_run(&loop, UV_RUN_DEFAULT);
    pause(); /* wait for the SIGKILL */
    _exit(0);
}

START_TEST(mempool_acknowledged_txs_survive_sigkill_of_the_node) {
    static tx_t x[KILL_TXS];
    for (int i = 0; i < KILL_TXS; i++) x[i] = mk(2 + (uint32_t)(i % 40), (uint64_t)(i / 40), 1);
    CHILD_TXS = x;
    ledger_store_close(S); /* the child opens its own environment */
    S = NULL;
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(p[0]);
        child_node(p[1]);
    }
    close(p[1]);
    static uint8_t acked[KILL_TXS][32];
    int n = 0;
    size_t got = 0;
    while (n < KILL_AFTER) {
        struct pollfd pf = {.fd = p[0], .events = POLLIN};
        int pr = poll(&pf, 1, 10000);
        if (pr <= 0) break;
        ssize_t r = read(p[0], (uint8_t *)acked + got, sizeof acked - got);
        if (r <= 0) break;
        got += (size_t)r;
        n = (int)(got / 32);
    }
    ck_assert_int_eq(kill(pid, SIGKILL), 0);
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert(WIFSIGNALED(st));
    /* Acks that reached the pipe before the kill count too. */
    for (;;) {
        ssize_t r = read(p[0], (uint8_t *)acked + got, sizeof acked - got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(p[0]);
    n = (int)(got / 32);
    ck_assert_int_ge(n, KILL_AFTER);
    ck_assert_int_eq(ledger_store_open(STORE_DIR, &G, NULL, NULL, &S), LEDGER_OK);
    node_mempool_config c = cfg_default();
    uint32_t rec = mp_open(&c);
    ck_assert_uint_ge(rec, (uint32_t)n);
    for (int i = 0; i < n; i++) ck_assert_msg(node_mempool_status(M, acked[i]) == NODE_MEMPOOL_STATUS_PENDING, "ack %d lost", i);
    free_txs(x, KILL_TXS);
}
END_TEST

/* Writes a log of N durable txs and returns their sizes' sum; the pool is shut down after. */
static void write_log_of(tx_t *x, int n) {
    node_mempool_config c = cfg_default();
    mp_open(&c);
    for (int i = 0; i < n; i++) ck_assert_int_eq(submit(&x[i]), 0);
    wait_done(n);
    mp_shutdown();
    memset(&R, 0, sizeof R);
}

START_TEST(mempool_recovery_ignores_a_torn_last_record) {
    enum { N = 5 };
    tx_t x[N];
    for (int i = 0; i < N; i++) x[i] = mk(2, (uint64_t)i, 1);
    static const struct {
        const char *name;
        int cut;         /* bytes cut from the end */
        const char *add; /* bytes appended (hex) */
        int flip;        /* flip this byte counted from the end (0 = none) */
        uint32_t want;
    } rows[] = {
        {"last byte missing", 1, NULL, 0, N - 1},
        {"only the length left", 0, NULL, 0, N}, /* (set below: a lone length prefix) */
        {"half a record", 60, NULL, 0, N - 1},
        {"garbage after the end", 0, "0102", 0, N},
        {"length beyond the limit", 0, "ffffff7f01", 0, N},
        {"check of the last record flipped", 0, NULL, 1, N - 1},
        {"payload of the last record flipped", 0, NULL, 20, N - 1},
    };
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        write_log_of(x, N);
        long size = file_size(LOG);
        if (rows[r].cut) ck_assert_int_eq(truncate(LOG, size - rows[r].cut), 0);
        int fd = open(LOG, O_RDWR);
        ck_assert_int_ge(fd, 0);
        if (r == 1) {
            uint8_t len4[4];
            tem_put_u32le(len4, 200);
            ck_assert_int_eq(pwrite(fd, len4, 4, size), 4);
        }
        if (rows[r].add) {
            uint8_t buf[16];
            size_t l = strlen(rows[r].add) / 2;
            ck_assert_int_eq(tem_unhex(buf, l, rows[r].add), 0);
            ck_assert_int_eq(pwrite(fd, buf, l, size), (ssize_t)l);
        }
        if (rows[r].flip) {
            uint8_t b;
            ck_assert_int_eq(pread(fd, &b, 1, size - rows[r].flip), 1);
            b ^= 0x40;
            ck_assert_int_eq(pwrite(fd, &b, 1, size - rows[r].flip), 1);
        }
        close(fd);
        node_mempool_config c = cfg_default();
        uint32_t rec = mp_open(&c);
        ck_assert_msg(rec == rows[r].want, "%s: recovered %u", rows[r].name, rec);
        ck_assert_msg(stats().recover_torn_bytes > 0, "%s: no torn bytes counted", rows[r].name);
        /* The rewrite dropped the torn tail: the file is exactly the header and live records. */
        ck_assert_int_eq(file_size(LOG), (long)(NODE_MEMPOOL_LOG_HEADER_BYTES + stats().log_live_bytes));
        /* ... and appending works after it. */
        /* (Records are in fsync order, so the torn one is whichever tx is missing.) */
        for (int i = 0; i < N; i++)
            if (node_mempool_status(M, x[i].txid) == NODE_MEMPOOL_STATUS_UNKNOWN)
                ck_assert_int_eq(submit_ok_and_wait(&x[i]), 0);
        mp_shutdown();
        memset(&R, 0, sizeof R);
        uint32_t again = mp_open(&c);
        ck_assert_msg(again == N, "%s: %u after the second restart", rows[r].name, again);
        mp_shutdown();
        ck_assert_int_eq(unlink(LOG), 0);
    }
    free_txs(x, N);
}
END_TEST

START_TEST(mempool_recovery_drops_committed_and_stale_records) {
    tx_t a0 = mk(2, 0, 1), a1 = mk(2, 1, 1), b0 = mk(3, 0, 1), b0x = mk(3, 0, 5);
    tx_t held[3] = {a0, a1, b0};
    write_log_of(held, 3);
    /* While the node was down: A0 and B0' were committed. */
    tx_t blk[2] = {a0, b0x};
    apply_block(blk, 2);
    node_mempool_config c = cfg_default();
    ck_assert_uint_eq(mp_open(&c), 1);
    ck_assert_int_eq(node_mempool_status(M, a1.txid), NODE_MEMPOOL_STATUS_PENDING);
    ck_assert_int_eq(node_mempool_status(M, a0.txid), NODE_MEMPOOL_STATUS_UNKNOWN);
    ck_assert_int_eq(node_mempool_status(M, b0.txid), NODE_MEMPOOL_STATUS_SUPERSEDED);
    ck_assert_uint_eq(stats().recover_dropped, 2);
    ck_assert_int_eq(file_size(LOG), (long)(NODE_MEMPOOL_LOG_HEADER_BYTES + NODE_MEMPOOL_REC_OVERHEAD_BYTES + a1.len));
    free_txs(held, 3);
    free_txs(&b0x, 1);
}
END_TEST

START_TEST(mempool_recovery_refuses_another_chains_log_and_leaves_it) {
    tx_t x = mk(2, 0, 1);
    write_log_of(&x, 1);
    long size = file_size(LOG);
    int fd = open(LOG, O_RDWR);
    uint8_t b;
    ck_assert_int_eq(pread(fd, &b, 1, 8), 1); /* first byte of the genesis hash */
    b ^= 1;
    ck_assert_int_eq(pwrite(fd, &b, 1, 8), 1);
    close(fd);
    node_mempool_config c = cfg_default();
    ck_assert_int_eq(node_mempool_new(&LOOP, &c, S, &M), 0);
    ck_assert_int_eq(node_mempool_recover(M, NULL), NODE_MEMPOOL_ECORRUPT);
    ck_assert_int_eq(file_size(LOG), size);
    /* Without a log nothing can be made durable, so nothing is accepted. */
    tx_t y = mk(3, 0, 1);
    ck_assert_int_eq(submit(&y), NODE_MEMPOOL_EIO);
    ck_assert_uint_eq(node_mempool_size(M), 0);
    free_txs(&y, 1);
    mp_shutdown();
    ck_assert_int_eq(R.n, 0);
    ck_assert_int_eq(truncate(LOG, 10), 0); /* a header cut short */
    ck_assert_int_eq(node_mempool_new(&LOOP, &c, S, &M), 0);
    ck_assert_int_eq(node_mempool_recover(M, NULL), NODE_MEMPOOL_ECORRUPT);
    free_txs(&x, 1);
}
END_TEST

START_TEST(mempool_recovery_refuses_more_live_txs_than_the_pool_holds) {
    tx_t x[3] = {mk(2, 0, 1), mk(3, 0, 1), mk(4, 0, 1)};
    write_log_of(x, 3);
    node_mempool_config c = cfg_default();
    c.txs_max = 2;
    c.per_signer_max = 2;
    ck_assert_int_eq(node_mempool_new(&LOOP, &c, S, &M), 0);
    ck_assert_int_eq(node_mempool_recover(M, NULL), NODE_MEMPOOL_EFULL);
    free_txs(x, 3);
}
END_TEST

static bool compacted_twice(void) { return stats().compactions >= 2; }

START_TEST(mempool_log_is_rewritten_when_mostly_dead) {
    node_mempool_config c = cfg_default();
    c.compact_min_bytes = 1;
    mp_open(&c);
    enum { N = 20 };
    tx_t x[N];
    for (int i = 0; i < N; i++) x[i] = mk(2 + (uint32_t)i, 0, 1);
    for (int i = 0; i < N; i++) ck_assert_int_eq(submit(&x[i]), 0);
    wait_done(N);
    ck_assert_uint_eq(stats().compactions, 1); /* recovery's */
    apply_block(x, N - 2);
    block_applied(x, N - 2);
    ck_assert(run_until(compacted_twice));
    node_mempool_stats s = stats();
    ck_assert_uint_eq(s.log_bytes, NODE_MEMPOOL_LOG_HEADER_BYTES + s.log_live_bytes);
    ck_assert_int_eq(file_size(LOG), (long)s.log_bytes);
    /* Appends continue on the new file, and a restart finds exactly the live txs. */
    tx_t y = mk(2, 1, 1);
    ck_assert_int_eq(submit_ok_and_wait(&y), 0);
    mp_shutdown();
    ck_assert_uint_eq(mp_open(&c), 3);
    ck_assert_int_eq(node_mempool_status(M, y.txid), NODE_MEMPOOL_STATUS_PENDING);
    ck_assert_int_eq(node_mempool_status(M, x[N - 1].txid), NODE_MEMPOOL_STATUS_PENDING);
    free_txs(x, N);
    free_txs(&y, 1);
}
END_TEST

START_TEST(mempool_log_write_failure_refuses_with_eio_then_rewrites_the_log) {
    node_mempool_config c = cfg_default();
    mp_open(&c);
    tx_t x[4] = {mk(2, 0, 1), mk(3, 0, 1), mk(4, 0, 1), mk(5, 0, 1)};
    ck_assert_int_eq(submit_ok_and_wait(&x[0]), 0);
    /* The process may not grow files past the current log: the next append fails (EFBIG). */
    ck_assert(signal(SIGXFSZ, SIG_IGN) != SIG_ERR);
    struct rlimit rl = {.rlim_cur = (rlim_t)file_size(LOG), .rlim_max = RLIM_INFINITY};
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
    ck_assert_int_eq(submit_ok_and_wait(&x[1]), NODE_MEMPOOL_EIO);
    ck_assert_int_eq(node_mempool_status(M, x[1].txid), NODE_MEMPOOL_STATUS_UNKNOWN);
    /* The rewrite to the same size succeeded, so the pool takes txs again. */
    rl.rlim_cur = RLIM_INFINITY;
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
    node_mempool_block_applied(M, NULL, 0);
    ck_assert(run_until(compacted_twice));
    ck_assert_int_eq(submit_ok_and_wait(&x[2]), 0);
    mp_shutdown();
    ck_assert_uint_eq(mp_open(&c), 2);
    ck_assert_int_eq(node_mempool_status(M, x[0].txid), NODE_MEMPOOL_STATUS_PENDING);
    ck_assert_int_eq(node_mempool_status(M, x[2].txid), NODE_MEMPOOL_STATUS_PENDING);
    free_txs(x, 4);
}
END_TEST

/* ------------------------------------------------------------------ lifecycle */
START_TEST(mempool_close_settles_every_submission_exactly_once) {
    node_mempool_config c = cfg_default();
    mp_open(&c);
    enum { N = 300 };
    static tx_t x[N];
    for (int i = 0; i < N; i++) x[i] = mk(2 + (uint32_t)(i / 10), (uint64_t)(i % 10), 1);
    for (int i = 0; i < 10; i++) ck_assert_int_eq(submit(&x[i]), 0);
    wait_done(10); /* some durable ones first */
    for (int i = 10; i < N; i++) ck_assert_int_eq(submit(&x[i]), 0);
    uv_run(&LOOP, UV_RUN_NOWAIT); /* work items start */
    node_mempool_close(M);
    ck_assert_int_eq(submit(&x[0]), NODE_MEMPOOL_ECLOSING);
    ck_assert(run_until(mempool_closed));
    ck_assert_int_eq(R.n, N);
    for (int i = 0; i < N; i++) {
        ck_assert_msg(R.rc[i] == 0 || R.rc[i] == NODE_MEMPOOL_ECLOSING, "rc %d", R.rc[i]);
        for (int j = 0; j < i; j++) ck_assert(memcmp(R.txid[i], R.txid[j], 32) != 0);
    }
    node_mempool_free(M);
    M = NULL;
    free_txs(x, N);
}
END_TEST

START_TEST(mempool_new_refuses_out_of_range_configs) {
    static const struct {
        const char *name;
        uint32_t txs_max, window, per_signer, jobs, batch;
        bool no_path;
    } rows[] = {
        {"no txs", 0, 16, 1, 0, 0, false},
        {"too many txs", NODE_MEMPOOL_TXS_MAX + 1, 16, 1, 0, 0, false},
        {"no window", 10, 0, 1, 0, 0, false},
        {"window too wide", 10, NODE_MEMPOOL_NONCE_WINDOW_MAX + 1, 1, 0, 0, false},
        {"no per-signer room", 10, 16, 0, 0, 0, false},
        {"per-signer above txs", 10, 16, 11, 0, 0, false},
        {"too many jobs", 10, 16, 1, NODE_MEMPOOL_VERIFY_JOBS_MAX + 1, 0, false},
        {"batch too big", 10, 16, 1, 0, NODE_MEMPOOL_VERIFY_BATCH_MAX + 1, false},
        {"no log path", 10, 16, 1, 0, 0, true},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        node_mempool_config c = cfg_default();
        c.txs_max = rows[i].txs_max;
        c.nonce_window = rows[i].window;
        c.per_signer_max = rows[i].per_signer;
        c.verify_jobs_max = rows[i].jobs;
        c.verify_batch_max = rows[i].batch;
        if (rows[i].no_path) c.log_path = NULL;
        node_mempool *m = NULL;
        ck_assert_msg(node_mempool_new(&LOOP, &c, S, &m) == NODE_MEMPOOL_EINVAL, "%s", rows[i].name);
        ck_assert_ptr_null(m);
    }
}
END_TEST

START_TEST(mempool_submit_survives_every_allocation_failure_and_changes_nothing) {
    node_mempool_config c = cfg_default();
    mp_open(&c);
    tx_t x = mk(2, 0, 1);
    int rc = -1;
    long k;
    for (k = 0; k < 100; k++) {
        tem_alloc_fail_after(k);
        rc = submit(&x);
        tem_alloc_fail_after(-1);
        if (rc == 0) break;
        /* protobuf-c answers an allocation failure like a malformed message (EDECODE). */
        ck_assert_msg(rc == LEDGER_ENOMEM || rc == LEDGER_EDECODE || rc == NODE_MEMPOOL_ENOMEM, "k=%ld rc=%d", k, rc);
        ck_assert_uint_eq(node_mempool_size(M), 0);
        ck_assert_int_eq(node_mempool_status(M, x.txid), NODE_MEMPOOL_STATUS_UNKNOWN);
    }
    ck_assert_int_eq(rc, 0);
    ck_assert_int_gt(k, 0);
    wait_done(1);
    ck_assert_int_eq(R.rc[0], 0);
    free_txs(&x, 1);
}
END_TEST

static Suite *mempool_suite(void) {
    Suite *s = suite_create("node_mempool");
    TCase *t = tcase_create("core");
    tcase_set_timeout(t, 120);
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, mempool_tx_is_in_flight_until_durable_then_pending_and_selectable);
    tcase_add_test(t, mempool_lends_durable_txs_decoded_by_bytes_and_txid_until_a_block_commits_them);
    tcase_add_test(t, mempool_lends_txs_in_flight_and_keeps_them_until_given_back);
    tcase_add_test(t, mempool_select_follows_arrival_and_nonce_order_across_signers);
    tcase_add_test(t, mempool_bad_txs_are_refused_synchronously_and_never_reach_done);
    tcase_add_test(t, mempool_refuses_duplicates_in_flight_pending_and_committed);
    tcase_add_test(t, mempool_refuses_a_replayed_nonce_and_a_taken_one);
    tcase_add_test(t, mempool_accepts_only_nonces_inside_the_window);
    tcase_add_test(t, mempool_full_pool_refuses_with_efull_and_keeps_what_it_accepted);
    tcase_add_test(t, mempool_byte_bound_refuses_with_efull);
    tcase_add_test(t, mempool_per_signer_limit_refuses_with_esignerfull);
    tcase_add_test(t, mempool_bad_signatures_are_reported_through_done_and_dropped);
    tcase_add_test(t, mempool_skips_verifying_pairs_the_node_already_verified);
    tcase_add_test(t, mempool_does_not_verify_a_queued_tx_a_block_committed);
    tcase_add_test(t, mempool_calls_verified_after_each_work_item_with_its_txs_answered);
    tcase_add_test(t, mempool_verify_first_moves_queued_txs_to_the_front);
    tcase_add_test(t, mempool_selects_verified_txs_before_their_record_is_durable);
    tcase_add_test(t, mempool_announces_a_clients_tx_once_verified_before_it_is_durable);
    tcase_add_test(t, mempool_block_applied_drops_committed_and_superseded_txs);
    tcase_add_test(t, mempool_txs_committed_or_superseded_while_in_flight_settle_when_work_returns);
    tcase_add_test(t, mempool_large_pool_finds_superseded_txs_round_robin_within_two_blocks);
    tcase_add_test(t, mempool_indexes_stay_exact_after_many_removals);
    tcase_add_test(t, mempool_group_commit_serves_many_txs_with_few_fsyncs);
    tcase_add_test(t, mempool_every_acknowledged_tx_survives_a_restart_without_compaction);
    tcase_add_test(t, mempool_acknowledged_txs_survive_sigkill_of_the_node);
    tcase_add_test(t, mempool_recovery_ignores_a_torn_last_record);
    tcase_add_test(t, mempool_recovery_drops_committed_and_stale_records);
    tcase_add_test(t, mempool_recovery_refuses_another_chains_log_and_leaves_it);
    tcase_add_test(t, mempool_recovery_refuses_more_live_txs_than_the_pool_holds);
    tcase_add_test(t, mempool_log_is_rewritten_when_mostly_dead);
    tcase_add_test(t, mempool_log_write_failure_refuses_with_eio_then_rewrites_the_log);
    tcase_add_test(t, mempool_close_settles_every_submission_exactly_once);
    tcase_add_test(t, mempool_new_refuses_out_of_range_configs);
    tcase_add_test(t, mempool_submit_survives_every_allocation_failure_and_changes_nothing);
    suite_add_tcase(s, t);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(mempool_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
