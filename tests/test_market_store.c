/* test_market_store.c: the market through the real LMDB store, as a node runs it: signed orders,
 * cancels and readings in blocks applied with ledger_store_apply across gate closures and a
 * settlement. A second run closes and reopens the store (a node restart) halfway and, before
 * some blocks, first applies a block that the store refuses after the executor already ran part
 * of it (a wrong nonce at its end). Both runs must reach the same state root after every block:
 * the state is the truth and the executor's book cache follows it. */
#include <check.h>
#include <ftw.h>
#include <unistd.h>

#include "contracts/contracts.h"
#include "ledger_fixture.h"

#define T0 1700000000000ull
#define SLOT_MS 900000ull
#define NBLOCKS 24
#define TXS_MAX 40

typedef struct {
    uint8_t *buf[TXS_MAX];
    size_t len[TXS_MAX];
    size_t n;
    uint64_t time_ms;
} blk;

static blk blocks[NBLOCKS];
static uint64_t nonces[32];
static uint8_t order_txids[512][32];
static int n_orders;

static void add_tx(blk *b, uint32_t key, Tem__V1__TxBody *body, uint8_t *txid_out) {
    uint8_t sec[32], pub[33];
    fx_key(key, sec, pub);
    body->chain_id = "tem-test";
    body->nonce = nonces[key]++;
    ck_assert_uint_lt(b->n, TXS_MAX);
    uint8_t txid[32];
    ck_assert_int_eq(ledger_tx_build(body, sec, &b->buf[b->n], &b->len[b->n], txid), LEDGER_OK);
    if (txid_out) memcpy(txid_out, txid, 32);
    b->n++;
}

static uint64_t xs(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Keys 2..4 prosumers, 5..6 consumers, 7 utility, 8 DSO; the admin is key 1; key 10 + k is
 * the meter of participant k. */
static void make_blocks(void) {
    uint64_t s = 0x5eed;
    memset(nonces, 0, sizeof nonces);
    n_orders = 0;
    for (int k = 0; k < NBLOCKS; k++) {
        blk *b = &blocks[k];
        b->n = 0;
        /* Four blocks a slot: orders for the next slots, readings for the last one. */
        b->time_ms = T0 + 2 * SLOT_MS + (uint64_t)k * SLOT_MS / 4 + 1;
        uint64_t cur = (b->time_ms - T0) / SLOT_MS;
        for (int i = 0; i < 12; i++) {
            uint32_t who = 2 + (uint32_t)(xs(&s) % 5);
            Tem__V1__TxBody body = TEM__V1__TX_BODY__INIT;
            Tem__V1__Order o = TEM__V1__ORDER__INIT;
            Tem__V1__CancelOrder c = TEM__V1__CANCEL_ORDER__INIT;
            if (i % 6 == 5 && n_orders > 0) {
                c.order_txid = (ProtobufCBinaryData){32, order_txids[xs(&s) % (uint64_t)n_orders]};
                body.kind_case = TEM__V1__TX_BODY__KIND_CANCEL;
                body.cancel = &c;
                add_tx(b, who, &body, NULL);
                continue;
            }
            o.slot = cur + 1 + xs(&s) % 2;
            o.side = who >= 5 || (xs(&s) & 1) ? TEM__V1__SIDE__BUY : TEM__V1__SIDE__SELL;
            o.price = 90000 + xs(&s) % 30 * 1000;
            o.quantity_wh = 1 + xs(&s) % 2000;
            o.tif = xs(&s) % 4 == 0 ? TEM__V1__TIME_IN_FORCE__IOC : TEM__V1__TIME_IN_FORCE__GTC;
            body.kind_case = TEM__V1__TX_BODY__KIND_ORDER;
            body.order = &o;
            add_tx(b, who, &body, n_orders < 512 ? order_txids[n_orders] : NULL);
            if (n_orders < 512) n_orders++;
        }
        if (k % 4 == 1 && cur >= 1) {
            for (uint32_t who = 2; who <= 6; who++) {
                Tem__V1__TxBody body = TEM__V1__TX_BODY__INIT;
                Tem__V1__MeterReading r = TEM__V1__METER_READING__INIT;
                r.slot = cur - 1;
                r.import_wh = xs(&s) % 1500;
                r.export_wh = who >= 5 ? 0 : xs(&s) % 2500;
                body.kind_case = TEM__V1__TX_BODY__KIND_READING;
                body.reading = &r;
                add_tx(b, 10 + who, &body, NULL);
            }
        }
    }
}

static void free_blocks(void) {
    for (int k = 0; k < NBLOCKS; k++)
        for (size_t i = 0; i < blocks[k].n; i++) tem_free(blocks[k].buf[i]);
}

static void genesis(ledger_genesis *g) {
    char parts[4096];
    size_t k = (size_t)snprintf(parts, sizeof parts, "\"participants\":[");
    const char *roles[] = {"prosumer", "prosumer", "prosumer", "consumer", "consumer", "utility", "dso"};
    for (uint32_t i = 2; i <= 8; i++) {
        uint8_t sec[32], pub[33];
        char h[67];
        fx_key(i, sec, pub);
        tem_hex(h, pub, 33);
        k += (size_t)snprintf(parts + k, sizeof parts - k,
                              "%s{\"pubkey\":\"%s\",\"bus\":%u,\"role\":\"%s\",\"money_uunit\":%s,"
                              "\"tokens_wh\":50000}",
                              i > 2 ? "," : "", h, i, roles[i - 2], i == 7 ? "1000000000000" : "1000000000");
    }
    for (uint32_t i = 2; i <= 6; i++) {
        uint8_t sec[32], pub[33], opub[33];
        char h[67], oh[67];
        fx_key(10 + i, sec, pub);
        fx_key(i, sec, opub);
        tem_hex(h, pub, 33);
        tem_hex(oh, opub, 33);
        k += (size_t)snprintf(parts + k, sizeof parts - k,
                              ",{\"pubkey\":\"%s\",\"bus\":%u,\"role\":\"meter\",\"owner\":\"%s\","
                              "\"import_capacity_w\":40000,\"export_capacity_w\":40000,\"from_slot\":1}",
                              h, i, oh);
    }
    snprintf(parts + k, sizeof parts - k,
             "],\"market\":{\"slot_ms\":900000,\"gate_closure_ms\":300000,"
             "\"settlement_deadline_ms\":600000,\"mechanism\":\"cda\",\"seller_collateral_ppm\":100000,"
             "\"book_orders_max\":1000}");
    char *j = fx_genesis_json(1, parts);
    char err[256];
    int rc = ledger_genesis_parse(j, strlen(j), g, err, sizeof err);
    ck_assert_msg(rc == LEDGER_OK, "genesis: %s", err);
    tem_free(j);
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

typedef struct {
    ledger_store *s;
    contracts_market *m;
    ledger_executor ex;
    char dir[64];
} node;

static void node_open(node *n, const ledger_genesis *g) {
    ck_assert_int_eq(ledger_store_open(n->dir, g, contracts_genesis_init, NULL, &n->s), LEDGER_OK);
    ck_assert_int_eq(contracts_market_new(&n->m), LEDGER_OK);
    contracts_executor(n->m, &n->ex);
}

static void node_close(node *n) {
    contracts_market_free(n->m);
    ledger_store_close(n->s);
}

static int apply(node *n, const blk *b, bool bad_tail) {
    const uint8_t *bufs[TXS_MAX + 1];
    size_t lens[TXS_MAX + 1], cnt = b->n;
    for (size_t i = 0; i < b->n; i++) {
        bufs[i] = b->buf[i];
        lens[i] = b->len[i];
    }
    uint8_t *extra = NULL;
    if (bad_tail) { /* a transfer with a nonce from the future: the store refuses the block */
        extra = fx_transfer("tem-test", 2, 3, 999, 1, &lens[cnt]);
        bufs[cnt++] = extra;
    }
    uint8_t vsec[64], vpub[32];
    fx_vkey(0, vsec, vpub);
    uint8_t *out;
    size_t len;
    ck_assert_int_eq(ledger_block_build(n->s, bufs, lens, cnt, b->time_ms, vpub, &out, &len), LEDGER_OK);
    ledger_apply_info info;
    int rc = ledger_store_apply(n->s, out, len, NULL, 0, &n->ex, LEDGER_APPLY_NO_CERT, &info);
    tem_free(out);
    tem_free(extra);
    return rc;
}

START_TEST(market_store_restart_and_refused_blocks_reach_the_same_roots) {
    ledger_genesis g;
    genesis(&g);
    make_blocks();
    static uint8_t roots[NBLOCKS][32];
    node a = {.dir = "/tmp/tem-mstore-a-XXXXXX"}, b = {.dir = "/tmp/tem-mstore-b-XXXXXX"};
    ck_assert_ptr_nonnull(mkdtemp(a.dir));
    ck_assert_ptr_nonnull(mkdtemp(b.dir));
    node_open(&a, &g);
    for (int k = 0; k < NBLOCKS; k++) {
        ck_assert_int_eq(apply(&a, &blocks[k], false), LEDGER_OK);
        uint8_t rr[32];
        ledger_store_roots(a.s, roots[k], rr);
    }
    /* The run crossed gate closures and a settlement: trades were settled into lines. */
    contracts_supply sup;
    ck_assert_int_eq(contracts_supply_get(ledger_store_state(a.s), &sup), LEDGER_OK);
    ck_assert_int_gt(sup.minted_wh, 0);
    ck_assert_int_gt(sup.burnt_wh, 0);
    node_close(&a);

    node_open(&b, &g);
    for (int k = 0; k < NBLOCKS; k++) {
        if (k == NBLOCKS / 2) { /* restart */
            node_close(&b);
            node_open(&b, &g);
        }
        if (k % 5 == 3) ck_assert_int_eq(apply(&b, &blocks[k], true), LEDGER_ENONCE);
        ck_assert_int_eq(apply(&b, &blocks[k], false), LEDGER_OK);
        uint8_t sr[32], rr[32];
        ledger_store_roots(b.s, sr, rr);
        ck_assert_msg(memcmp(sr, roots[k], 32) == 0, "block %d: roots differ", k + 1);
    }
    node_close(&b);
    nftw(a.dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
    nftw(b.dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
    free_blocks();
    ledger_genesis_free(&g);
}
END_TEST

int main(void) {
    Suite *s = suite_create("market_store");
    TCase *t = tcase_create("store");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, market_store_restart_and_refused_blocks_reach_the_same_roots);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
