/* test_market_oom.c: OOM ladders through the market executor. The N-th allocation fails, for
 * N = 0, 1, 2, ... until the operation succeeds: an order sweeping three levels of the book, and
 * a block start that closes a gate and settles a slot. Every failure must come back as
 * LEDGER_ENOMEM (never an abort), leave the state as it was once the ledger's savepoint is rolled
 * back, and the retry without failures must reach exactly the root of a run that never failed
 * (which also proves the book cache is rebuilt after an aborted block). */
#include "market_harness.h"

#define SLOT 4
#define NOW (T0 + 2 * SLOT_MS + 1000)

static void prepare(mh *h) {
    mh_init_meters(h, LEDGER_MECH_CDA, SLOT);
    mh_block(h, NOW);
    MH_CHECK(mh_order(h, P1, SLOT, SELL, 100000, 300, GTC) == 0, "prepare");
    MH_CHECK(mh_order(h, P2, SLOT, SELL, 101000, 300, GTC) == 0, "prepare");
    MH_CHECK(mh_order(h, P3, SLOT, SELL, 102000, 300, GTC) == 0, "prepare");
    MH_CHECK(mh_order(h, C2, SLOT, BUY, 90000, 300, GTC) == 0, "prepare");
}

static void sweep_body(Tem__V1__TxBody *body, Tem__V1__Order *o) {
    tem__v1__tx_body__init(body);
    tem__v1__order__init(o);
    o->slot = SLOT;
    o->side = BUY;
    o->price = 102000;
    o->quantity_wh = 800;
    body->kind_case = TEM__V1__TX_BODY__KIND_ORDER;
    body->order = o;
}

/* The tx as mh_exec runs it, but returning exec_tx's own result. */
static int exec_raw(mh *h, int who, Tem__V1__TxBody *body, uint64_t txn) {
    body->signer = (ProtobufCBinaryData){PUB, h->keys[who]};
    ledger_tx tx = {.body = body};
    uint8_t seed[16];
    tem_put_u64le(seed, txn);
    tem_put_u64le(seed + 8, 0x54454d);
    ledger_sha256(tx.txid, seed, sizeof seed);
    tem__v1__receipt__init(&h->rc);
    return h->ex.exec_tx(h->ex.ctx, h->st, &h->b, &tx, &h->rc);
}

START_TEST(market_oom_ladder_on_a_sweeping_order) {
    static mh h;
    Tem__V1__TxBody body;
    Tem__V1__Order o;
    uint8_t ref[32], r0[32], r1[32];
    prepare(&h);
    uint64_t txn = h.txn + 1;
    sweep_body(&body, &o);
    ck_assert_int_eq(exec_raw(&h, C1, &body, txn), 0);
    ck_assert_uint_eq(h.rc.n_fills, 3);
    mh_root(&h, ref);
    mh_free(&h);
    int failures = 0;
    for (long k = 0; k < 10000; k++) {
        prepare(&h);
        mh_root(&h, r0);
        sweep_body(&body, &o);
        tem_alloc_fail_after(k);
        int rc = exec_raw(&h, C1, &body, txn);
        tem_alloc_fail_after(-1);
        if (rc == 0) {
            mh_root(&h, r1);
            ck_assert_mem_eq(r1, ref, 32);
            mh_free(&h);
            break;
        }
        failures++;
        ck_assert_msg(rc == LEDGER_ENOMEM, "k=%ld: %d", k, rc);
        mh_root(&h, r1);
        ck_assert_msg(memcmp(r0, r1, 32) == 0, "k=%ld: failed tx left changes", k);
        /* The ledger aborts the block; the same block again, without failures. */
        mh_end(&h);
        h.height--;
        mh_block(&h, NOW + 1);
        sweep_body(&body, &o);
        ck_assert_int_eq(exec_raw(&h, C1, &body, txn), 0);
        mh_root(&h, r1);
        /* Block time differs from the reference run, which no rule here depends on. */
        ck_assert_msg(memcmp(r1, ref, 32) == 0, "k=%ld: retry reached another state", k);
        mh_check_invariants(&h, true);
        mh_free(&h);
    }
    ck_assert_int_gt(failures, 10);
}
END_TEST

static void prepare_settle(mh *h) {
    prepare(h);
    MH_CHECK(mh_order(h, C1, SLOT, BUY, 102000, 800, GTC) == 0, "prepare");
    mh_block(h, mh_slot_start(SLOT) + SLOT_MS);
    MH_CHECK(mh_reading(h, P1, SLOT, 0, 200) == 0, "prepare");
    MH_CHECK(mh_reading(h, P2, SLOT, 50, 500) == 0, "prepare");
    MH_CHECK(mh_reading(h, C1, SLOT, 900, 0) == 0, "prepare");
    mh_end(h);
}

START_TEST(market_oom_ladder_on_gate_closure_and_settlement) {
    static mh h;
    uint8_t ref[32], r0[32], r1[32];
    prepare_settle(&h);
    mh_block(&h, mh_deadline(SLOT) + 1);
    mh_end(&h);
    mh_root(&h, ref);
    mh_free(&h);
    int failures = 0;
    for (long k = 0; k < 10000; k++) {
        prepare_settle(&h);
        mh_root(&h, r0);
        /* As ledger_store_apply does: the block runs under a savepoint. */
        size_t sp;
        ck_assert_int_eq(ledger_state_savepoint(h.st, &sp), 0);
        ledger_arena_reset(&h.arena);
        h.b = (ledger_block_ctx){.height = ++h.height, .time_ms = mh_deadline(SLOT) + 1,
                                 .genesis = &h.g, .arena = &h.arena};
        tem_alloc_fail_after(k);
        int rc = h.ex.begin_block(h.ex.ctx, h.st, &h.b);
        tem_alloc_fail_after(-1);
        if (rc == 0) {
            ck_assert_int_eq(h.ex.end_block(h.ex.ctx, h.st, &h.b), 0);
            ledger_state_release(h.st, sp);
            mh_root(&h, r1);
            ck_assert_mem_eq(r1, ref, 32);
            mh_free(&h);
            break;
        }
        failures++;
        ck_assert_msg(rc == LEDGER_ENOMEM, "k=%ld: %d", k, rc);
        ledger_state_rollback(h.st, sp); /* closes the savepoint */
        mh_root(&h, r1);
        ck_assert_msg(memcmp(r0, r1, 32) == 0, "k=%ld: rollback did not restore the state", k);
        h.height--;
        mh_block(&h, mh_deadline(SLOT) + 1);
        mh_end(&h);
        mh_root(&h, r1);
        ck_assert_msg(memcmp(r1, ref, 32) == 0, "k=%ld: retry reached another state", k);
        mh_check_invariants(&h, true);
        mh_free(&h);
    }
    ck_assert_int_gt(failures, 10);
}
END_TEST

int main(void) {
    Suite *s = suite_create("market_oom");
    TCase *t = tcase_create("ladder");
    tcase_set_timeout(t, 300);
    tcase_add_test(t, market_oom_ladder_on_a_sweeping_order);
    tcase_add_test(t, market_oom_ladder_on_gate_closure_and_settlement);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
