/* test_grid.c: the on-chain grid check through ledger state, on a small hand-computed model:
 * install validation (every refusal names its line or bus and leaves the state alone), the
 * per-match limit and its binding constraint, commits and slot state, fees and loss charges
 * (including that splitting a trade never pays less), and an OOM ladder on install.
 *
 * The model: slack 1 - 2 - 3, and 4 hanging off 2 through a line written "4-2", at 12.66 kV with
 * loads of 350, 100 and 50 kW at buses 2, 3 and 4 (base flows 500, 100 and 50 kW). Impedances are
 * small (below 0.002 pu), so the AC limits are within 0.5 % of plain arithmetic (see each test);
 * tests/test_grid_ac.c checks the AC answers against an independent power flow. */
#include <check.h>
#include <inttypes.h>

#include "contracts/grid.h"
#include "grid_fixture.h"

#define SLOT_MS_1H 3600000 /* 1 Wh in a one-hour slot = 1 W */

typedef struct {
    ledger_state *st;
    ledger_arena arena;
} fixture;

static int install(fixture *fx, grid_fx_model *m, Tem__V1__Receipt *rc) {
    Tem__V1__TxBody body = TEM__V1__TX_BODY__INIT;
    body.kind_case = TEM__V1__TX_BODY__KIND_INSTALL_FEEDER;
    body.install_feeder = &m->msg;
    ledger_tx tx = {.body = &body};
    ledger_block_ctx b = {.height = 1, .arena = &fx->arena};
    tem__v1__receipt__init(rc);
    return grid_exec_install(fx->st, &b, &tx, rc);
}

static void fx_open(fixture *fx, bool with_model) {
    memset(fx, 0, sizeof *fx);
    ck_assert_int_eq(ledger_state_new(&fx->st), LEDGER_OK);
    if (with_model) {
        grid_fx_model m;
        grid_fx_model_init(&m);
        Tem__V1__Receipt rc;
        ck_assert_int_eq(install(fx, &m, &rc), LEDGER_OK);
        ck_assert_msg(rc.code == 0, "install refused: %s", rc.reason);
    }
}

static void fx_close(fixture *fx) {
    ledger_state_free(fx->st);
    ledger_arena_reset(&fx->arena);
}

/* ------------------------------------------------------------------ no feeder */

START_TEST(grid_without_a_feeder_allows_everything_and_charges_nothing) {
    fixture fx;
    fx_open(&fx, false);
    ck_assert(!grid_installed(fx.st));
    grid_match_result r;
    ck_assert_int_eq(grid_check_match(fx.st, 7, 3, 4, 123456, 900000, &r), GRID_OK);
    ck_assert_uint_eq(r.allowed_wh, 123456);
    ck_assert_uint_eq(r.curtailed_wh, 0);
    ck_assert_int_eq(r.binding.kind, GRID_BIND_NONE);
    ck_assert_int_eq(grid_commit_match(fx.st, 7, 3, 4, 123456, 900000), GRID_OK);
    ck_assert_uint_eq(ledger_state_count(fx.st), 0);
    int64_t fee = -1;
    ck_assert_int_eq(grid_network_fee(fx.st, 3, 4, 1000, 1000, &fee), GRID_OK);
    ck_assert_int_eq(fee, 0);
    ck_assert_int_eq(grid_network_fee_max(fx.st, 99, 1000, 1000, &fee), GRID_OK);
    ck_assert_int_eq(fee, 0);
    grid_loss l;
    ck_assert_int_eq(grid_loss_charge(fx.st, 7, 900000, 3, 4, 1000, 200000, &l), GRID_OK);
    ck_assert_int_eq(l.total_uunit, 0);
    ck_assert_int_eq(grid_bus_check(fx.st, 99), GRID_OK);
    fx_close(&fx);
}
END_TEST

/* ------------------------------------------------------------------ install validation */

typedef struct {
    const char *name;
    void (*mutate)(grid_fx_model *m);
    int want;
    const char *reason;
} bad_model;

static void m_cycle(grid_fx_model *m) { m->l[2].to = 3; m->l[2].from = 1; }
static void m_island(grid_fx_model *m) { m->l[2].from = 4; m->l[2].to = 5; m->b[3].bus = 5; m->b[2].bus = 3; }
static void m_two_slack(grid_fx_model *m) { m->b[2].slack = true; }
static void m_no_slack(grid_fx_model *m) { m->b[0].slack = false; }
static void m_zero_z(grid_fx_model *m) { m->l[1].r_uohm = 0; m->l[1].x_uohm = 0; }
static void m_unknown(grid_fx_model *m) { m->l[2].from = 9; }
static void m_dup(grid_fx_model *m) { m->b[3].bus = 3; }
static void m_rating(grid_fx_model *m) { m->l[0].rate_va = 0; }
static void m_hash(grid_fx_model *m) { m->msg.source_hash.len = 31; }
static void m_kv(grid_fx_model *m) { m->msg.base_kv_mv = 0; }
static uint32_t prof_a[2] = {1000000, 500000}, prof_b[3] = {0, 1, 2};
static void m_prof(grid_fx_model *m) {
    m->msg.n_load_profile_ppm = 2;
    m->msg.load_profile_ppm = prof_a;
    m->msg.n_gen_profile_ppm = 3;
    m->msg.gen_profile_ppm = prof_b;
}
static Tem__V1__FeederBusCase ov_bus;
static Tem__V1__FeederSlotCase ov_slot;
static Tem__V1__FeederBusCase *ov_bus_p[1] = {&ov_bus};
static Tem__V1__FeederSlotCase *ov_slot_p[1] = {&ov_slot};
static void m_override(grid_fx_model *m) {
    tem__v1__feeder_bus_case__init(&ov_bus);
    tem__v1__feeder_slot_case__init(&ov_slot);
    ov_bus.bus = 8;
    ov_slot.slot = 5;
    ov_slot.n_buses = 1;
    ov_slot.buses = ov_bus_p;
    m->msg.n_overrides = 1;
    m->msg.overrides = ov_slot_p;
}
static void m_band(grid_fx_model *m) { m->b[1].vmin_ppm = 1200000; }
static void m_parent(grid_fx_model *m) { m->b[3].parent = 3; }
static void m_margin(grid_fx_model *m) { m->msg.margin_ppm = 600000; }
static void m_island2(grid_fx_model *m) { m->msg.n_lines = 2; }

static const bad_model BAD[] = {
    {"loop", m_cycle, GRID_ECYCLE, "closes a loop"},
    {"island", m_island, GRID_EUNKNOWNBUS, "line 4-5"},
    {"missing line", m_island2, GRID_EISLAND, "bus 4 is not connected"},
    {"two slack", m_two_slack, GRID_ESLACK, "buses 1 and 3"},
    {"no slack", m_no_slack, GRID_ESLACK, "no slack"},
    {"zero impedance", m_zero_z, GRID_EIMPEDANCE, "line 2-3: zero impedance"},
    {"unknown bus", m_unknown, GRID_EUNKNOWNBUS, "line 9-2: unknown bus"},
    {"bus twice", m_dup, GRID_EDUPBUS, "bus 3 listed twice"},
    {"zero rating", m_rating, GRID_ERATING, "line 1-2"},
    {"short hash", m_hash, GRID_EHASH, "32 bytes"},
    {"no nominal voltage", m_kv, GRID_EMODEL, "base_kv_mv"},
    {"profiles of different lengths", m_prof, GRID_EMODEL, "profiles"},
    {"override of an unknown bus", m_override, GRID_EUNKNOWNBUS, "slot 5: unknown bus 8"},
    {"empty band", m_band, GRID_EVBAND, "bus 2"},
    {"wrong parent", m_parent, GRID_EMODEL, "bus 4"},
    {"margin", m_margin, GRID_EMODEL, "margin"},
};

START_TEST(grid_install_refuses_a_bad_model_naming_it_and_changes_nothing) {
    const bad_model *b = &BAD[_i];
    fixture fx;
    fx_open(&fx, false);
    grid_fx_model m;
    grid_fx_model_init(&m);
    b->mutate(&m);
    Tem__V1__Receipt rc;
    ck_assert_int_eq(install(&fx, &m, &rc), LEDGER_OK);
    ck_assert_msg(rc.code == b->want, "%s: code %d want %d (%s)", b->name, rc.code, b->want, rc.reason);
    ck_assert_msg(rc.reason && strstr(rc.reason, b->reason), "%s: reason '%s' lacks '%s'", b->name, rc.reason,
                  b->reason);
    ck_assert(!grid_installed(fx.st));
    ck_assert_uint_eq(ledger_state_count(fx.st), 0);
    fx_close(&fx);
}
END_TEST

/* ------------------------------------------------------------------ the check */

typedef struct {
    const char *name;
    uint32_t seller, buyer;
    uint32_t vmin4_ppm; /* bus 4's lower limit */
    uint32_t margin_ppm;
    uint64_t want_max_wh;
    const char *want_binding;
} limit_row;

/* Within `tol_ppm` of a hand-computed figure (or, with want 0, anywhere strictly between 0 and
 * 150000). */
static bool near(uint64_t got, uint64_t want) {
    if (want == 0) return got > 0 && got < 150000;
    uint64_t d = got > want ? got - want : want - got;
    return d <= want / 200 + 2;
}

/* Seller 3 -> buyer 4: line 2-3 may carry 100000 - q >= -300000 (q <= 400000); line 4-2 carries
 * 50000 + q <= 200000 (q <= 150000), less its small loss and voltage drop. Bus 4 sits near
 * 0.9996 pu and falls by about 1.9e-9 pu per W: a 0.9995 pu limit binds before line 4-2. With a
 * 10 % margin line 4-2 allows 180000 - 50000. Seller 4 -> buyer 3: line 2-3 carries
 * 100000 + q <= 300000. */
static const limit_row LIMITS[] = {
    {"line 4-2 forward binds", 3, 4, 900000, 0, 150000, "line 4-2"},
    {"reverse over line 2-3", 4, 3, 900000, 0, 200000, "line 2-3"},
    {"bus 4 voltage binds", 3, 4, 999500, 0, 0, "bus 4"},
    {"margin shrinks the line", 3, 4, 900000, 100000, 130000, "line 4-2"},
    {"towards the slack", 3, 1, 900000, 0, 400000, "line 2-3"},
};

START_TEST(grid_check_finds_the_tightest_constraint) {
    const limit_row *t = &LIMITS[_i];
    fixture fx;
    fx_open(&fx, false);
    grid_fx_model m;
    grid_fx_model_init(&m);
    m.b[3].vmin_ppm = t->vmin4_ppm;
    m.msg.margin_ppm = t->margin_ppm;
    Tem__V1__Receipt rc;
    ck_assert_int_eq(install(&fx, &m, &rc), LEDGER_OK);
    ck_assert_int_eq(rc.code, 0);
    grid_match_result r;
    ck_assert_int_eq(grid_check_match(fx.st, 1, t->seller, t->buyer, 1000000, SLOT_MS_1H, &r), GRID_OK);
    ck_assert_msg(near(r.max_wh, t->want_max_wh), "%s: max %" PRIu64 " want %" PRIu64, t->name, r.max_wh,
                  t->want_max_wh);
    ck_assert_uint_eq(r.allowed_wh, r.max_wh);
    ck_assert_uint_eq(r.curtailed_wh, 1000000 - r.allowed_wh);
    ck_assert_str_eq(r.binding.text, t->want_binding);
    fx_close(&fx);
}
END_TEST

START_TEST(grid_commit_uses_up_headroom_and_slots_are_independent) {
    fixture fx;
    fx_open(&fx, true);
    uint8_t root0[32], root1[32];
    grid_match_result r;
    ck_assert_int_eq(ledger_state_root(fx.st, root0), LEDGER_OK);
    ck_assert_int_eq(grid_check_match(fx.st, 1, 3, 4, 100000, SLOT_MS_1H, &r), GRID_OK);
    ck_assert_int_eq(ledger_state_root(fx.st, root1), LEDGER_OK);
    ck_assert_mem_eq(root0, root1, 32); /* a check writes nothing */
    ck_assert_uint_eq(r.allowed_wh, 100000);
    ck_assert_int_eq(grid_commit_match(fx.st, 1, 3, 4, 100000, SLOT_MS_1H), GRID_OK);
    ck_assert_int_eq(grid_check_match(fx.st, 1, 3, 4, 100000, SLOT_MS_1H, &r), GRID_OK);
    ck_assert_msg(near(r.allowed_wh, 50000), "%" PRIu64, r.allowed_wh);
    ck_assert_str_eq(r.binding.text, "line 4-2");
    /* The opposite trade frees the line again. */
    ck_assert_int_eq(grid_check_match(fx.st, 1, 4, 3, 1000000, SLOT_MS_1H, &r), GRID_OK);
    ck_assert_msg(near(r.max_wh, 300000), "%" PRIu64, r.max_wh); /* line 2-3: 0 + q <= 300000 */
    /* Another slot is untouched; a 15-minute slot carries a quarter of the energy. */
    ck_assert_int_eq(grid_check_match(fx.st, 2, 3, 4, 1000000, SLOT_MS_1H / 4, &r), GRID_OK);
    ck_assert_msg(near(r.max_wh, 37500), "%" PRIu64, r.max_wh);
    /* A trade within one bus is never limited. */
    ck_assert_int_eq(grid_check_match(fx.st, 1, 4, 4, 1000000, SLOT_MS_1H, &r), GRID_OK);
    ck_assert_uint_eq(r.allowed_wh, 1000000);
    /* Pruning drops slot 1 only. */
    ck_assert_int_eq(grid_commit_match(fx.st, 3, 3, 4, 10000, SLOT_MS_1H), GRID_OK);
    ck_assert_int_eq(grid_slot_prune(fx.st, 2), GRID_OK);
    ck_assert_int_eq(grid_check_match(fx.st, 1, 3, 4, 1000000, SLOT_MS_1H, &r), GRID_OK);
    ck_assert_msg(near(r.max_wh, 150000), "%" PRIu64, r.max_wh);
    ck_assert_int_eq(grid_check_match(fx.st, 3, 3, 4, 1000000, SLOT_MS_1H, &r), GRID_OK);
    ck_assert_msg(near(r.max_wh, 140000), "%" PRIu64, r.max_wh);
    fx_close(&fx);
}
END_TEST

/* The re-install attack: accepted trades of an open slot must keep their capacity when the DSO
 * installs a new model, or the same capacity could be sold twice. */
START_TEST(grid_reinstall_keeps_the_accepted_trades_of_open_slots) {
    fixture fx;
    fx_open(&fx, true);
    grid_match_result r;
    ck_assert_int_eq(grid_check_match(fx.st, 1, 3, 4, 1000000, SLOT_MS_1H, &r), GRID_OK);
    uint64_t first = r.allowed_wh;
    ck_assert(near(first, 150000));
    ck_assert_int_eq(grid_commit_match(fx.st, 1, 3, 4, first, SLOT_MS_1H), GRID_OK);
    /* The same model again, with its buses listed in another order (other record indexes). */
    grid_fx_model m;
    grid_fx_model_init(&m);
    Tem__V1__FeederBus *t = m.bp[1];
    m.bp[1] = m.bp[3];
    m.bp[3] = t;
    Tem__V1__Receipt rc;
    ck_assert_int_eq(install(&fx, &m, &rc), LEDGER_OK);
    ck_assert_msg(rc.code == 0, "%s", rc.reason);
    ck_assert_int_eq(grid_check_match(fx.st, 1, 3, 4, 1000000, SLOT_MS_1H, &r), GRID_OK);
    ck_assert_uint_le(r.allowed_wh, first / 1024 + 1); /* still sold out */
    ck_assert_int_eq(grid_check_match(fx.st, 1, 4, 3, 1000000, SLOT_MS_1H, &r), GRID_OK);
    ck_assert(near(r.max_wh, 300000 + first - 100000) || r.binding.kind == GRID_BIND_LINE);
    /* A model without bus 4, which has accepted trades in open slot 1, is refused and changes
     * nothing. */
    uint8_t root0[32], root1[32];
    ck_assert_int_eq(ledger_state_root(fx.st, root0), LEDGER_OK);
    grid_fx_model_init(&m);
    m.msg.n_buses = 3;
    m.msg.n_lines = 2;
    ck_assert_int_eq(install(&fx, &m, &rc), LEDGER_OK);
    ck_assert_int_eq(rc.code, GRID_EUNKNOWNBUS);
    ck_assert_msg(strstr(rc.reason, "bus 4 has accepted trades in open slot 1"), "%s", rc.reason);
    ck_assert_int_eq(ledger_state_root(fx.st, root1), LEDGER_OK);
    ck_assert_mem_eq(root0, root1, 32);
    /* Once the slot is settled and pruned, the smaller model installs. */
    ck_assert_int_eq(grid_slot_prune(fx.st, 2), GRID_OK);
    ck_assert_int_eq(install(&fx, &m, &rc), LEDGER_OK);
    ck_assert_msg(rc.code == 0, "%s", rc.reason);
    fx_close(&fx);
}
END_TEST

typedef struct {
    const char *name;
    uint32_t a, b;
    uint64_t qty;
    int64_t slot_ms;
    int want;
} err_row;

static const err_row ERRS[] = {
    {"unknown seller", 9, 4, 10, SLOT_MS_1H, GRID_EUNKNOWNBUS},
    {"unknown buyer", 3, 0, 10, SLOT_MS_1H, GRID_EUNKNOWNBUS},
    {"zero slot", 3, 4, 10, 0, GRID_EINVAL},
    {"negative slot", 3, 4, 10, -5, GRID_EINVAL},
    {"slot longer than a day", 3, 4, 10, 86400001, GRID_EINVAL},
};

START_TEST(grid_bad_arguments_are_errors_that_change_nothing) {
    const err_row *e = &ERRS[_i];
    fixture fx;
    fx_open(&fx, true);
    size_t n0 = ledger_state_count(fx.st);
    grid_match_result r;
    ck_assert_int_eq(grid_check_match(fx.st, 1, e->a, e->b, e->qty, e->slot_ms, &r), e->want);
    ck_assert_int_eq(grid_commit_match(fx.st, 1, e->a, e->b, e->qty, e->slot_ms), e->want);
    ck_assert_uint_eq(ledger_state_count(fx.st), n0);
    ck_assert_int_eq(grid_commit_match(fx.st, 1, 3, 4, 2000000000000ULL, SLOT_MS_1H), GRID_EOVERFLOW);
    ck_assert_uint_eq(ledger_state_count(fx.st), n0);
    ck_assert_int_eq(grid_bus_check(fx.st, 9), GRID_EUNKNOWNBUS);
    ck_assert_int_eq(grid_bus_check(fx.st, 4), GRID_OK);
    fx_close(&fx);
}
END_TEST

/* ------------------------------------------------------------------ fees and losses */

START_TEST(grid_fees_follow_the_path_and_the_neighbour_pays_less) {
    fixture fx;
    fx_open(&fx, true);
    int64_t fee;
    /* 3 -> 4: 0.2 + 0.3 ohm; 1 kWh at 1000 uunit per kWh per ohm = 500 uunit. */
    ck_assert_int_eq(grid_network_fee(fx.st, 3, 4, 1000, 1000, &fee), GRID_OK);
    ck_assert_int_eq(fee, 500);
    ck_assert_int_eq(grid_network_fee(fx.st, 3, 2, 1000, 1000, &fee), GRID_OK);
    ck_assert_int_eq(fee, 200);
    ck_assert_int_eq(grid_network_fee(fx.st, 3, 3, 1000, 1000, &fee), GRID_OK);
    ck_assert_int_eq(fee, 0);
    ck_assert_int_eq(grid_network_fee(fx.st, 3, 4, 1001, 1000, &fee), GRID_OK);
    ck_assert_int_eq(fee, 501); /* 500.5 rounds up, to the DSO */
    ck_assert_int_eq(grid_network_fee_max(fx.st, 3, 1000, 1000, &fee), GRID_OK);
    ck_assert_int_eq(fee, 500); /* farthest from 3 is 4 */
    ck_assert_int_eq(grid_network_fee_max(fx.st, 1, 1000, 1000, &fee), GRID_OK);
    ck_assert_int_eq(fee, 400); /* farthest from 1 is 4: 0.1 + 0.3 */
    ck_assert_int_eq(grid_network_fee(fx.st, 3, 4, 1000, -1, &fee), GRID_EINVAL);
    ck_assert_int_eq(grid_network_fee(fx.st, 3, 4, UINT64_MAX, 1000, &fee), GRID_EOVERFLOW);
    grid_loss l;
    /* Losses are signed: selling from 3 (a 100 kW load behind 0.2 ohm) to 4 (50 kW behind
     * 0.3 ohm) moves power off the lossier line: a credit, and the reverse trade a charge of the
     * same factor. */
    ck_assert_int_eq(grid_loss_charge(fx.st, 1, SLOT_MS_1H, 3, 4, 1000000, 200000, &l), GRID_OK);
    ck_assert_int_lt(l.loss_factor_ppm, 0);
    ck_assert_int_lt(l.total_uunit, 0);
    ck_assert_int_lt(l.loss_mwh, 0);
    ck_assert_int_eq(l.seller_uunit + l.buyer_uunit, l.total_uunit);
    grid_loss rev;
    ck_assert_int_eq(grid_loss_charge(fx.st, 1, SLOT_MS_1H, 4, 3, 1000000, 200000, &rev), GRID_OK);
    ck_assert_int_eq(rev.loss_factor_ppm, -l.loss_factor_ppm);
    ck_assert_int_gt(rev.total_uunit, 0);
    int64_t mx;
    ck_assert_int_eq(grid_loss_charge_max(fx.st, 4, 1000000, 200000, &mx), GRID_OK);
    ck_assert_int_ge(mx, rev.total_uunit);
    ck_assert_int_eq(grid_loss_charge(fx.st, 1, SLOT_MS_1H, 3, 4, 1000, -1, &l), GRID_EINVAL);
    ck_assert_int_eq(grid_loss_charge(fx.st, 1, 0, 3, 4, 1000, 1, &l), GRID_EINVAL);
    fx_close(&fx);
}
END_TEST

START_TEST(grid_splitting_a_trade_never_pays_less) {
    fixture fx;
    fx_open(&fx, true);
    uint64_t s = 88172645463325252ull;
    for (int it = 0; it < 2000; it++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        uint64_t q = 1 + s % 100000;
        int64_t rate = (int64_t)(s >> 40) % 5000, price = (int64_t)(s >> 20) % 400000;
        uint32_t a = 1 + (uint32_t)(s % 4), b = 1 + (uint32_t)((s >> 8) % 4);
        int64_t whole_fee, part_fee = 0, f;
        grid_loss whole, part;
        int64_t part_loss = 0;
        ck_assert_int_eq(grid_network_fee(fx.st, a, b, q, rate, &whole_fee), GRID_OK);
        ck_assert_int_eq(grid_loss_charge(fx.st, 1, SLOT_MS_1H, a, b, q, price, &whole), GRID_OK);
        uint64_t left = q;
        while (left) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            uint64_t piece = 1 + s % left;
            ck_assert_int_eq(grid_network_fee(fx.st, a, b, piece, rate, &f), GRID_OK);
            part_fee += f;
            ck_assert_int_eq(grid_loss_charge(fx.st, 1, SLOT_MS_1H, a, b, piece, price, &part), GRID_OK);
            part_loss += part.total_uunit;
            left -= piece;
        }
        ck_assert_int_ge(part_fee, whole_fee);
        ck_assert_int_ge(part_loss, whole.total_uunit);
    }
    fx_close(&fx);
}
END_TEST

/* ------------------------------------------------------------------ out of memory */

START_TEST(grid_install_under_oom_either_fails_cleanly_or_installs) {
    grid_fx_model m;
    grid_fx_model_init(&m);
    for (long n = 0;; n++) {
        fixture fx;
        fx_open(&fx, false);
        ck_assert_int_eq(grid_commit_match(fx.st, 1, 3, 4, 1, SLOT_MS_1H), GRID_OK); /* no feeder: no-op */
        Tem__V1__Receipt rc;
        tem_alloc_fail_after(n);
        int r = install(&fx, &m, &rc);
        tem_alloc_fail_after(-1);
        if (r == LEDGER_OK) {
            ck_assert_int_eq(rc.code, 0);
            ck_assert(grid_installed(fx.st));
            fx_close(&fx);
            ck_assert_int_gt(n, 0);
            break;
        }
        ck_assert_int_eq(r, LEDGER_ENOMEM);
        ck_assert(!grid_installed(fx.st));
        fx_close(&fx);
        ck_assert_int_lt(n, 1000);
    }
}
END_TEST

static Suite *grid_suite(void) {
    Suite *s = suite_create("grid");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, grid_without_a_feeder_allows_everything_and_charges_nothing);
    tcase_add_loop_test(tc, grid_install_refuses_a_bad_model_naming_it_and_changes_nothing, 0,
                        (int)(sizeof BAD / sizeof BAD[0]));
    tcase_add_loop_test(tc, grid_check_finds_the_tightest_constraint, 0, (int)(sizeof LIMITS / sizeof LIMITS[0]));
    tcase_add_test(tc, grid_commit_uses_up_headroom_and_slots_are_independent);
    tcase_add_test(tc, grid_reinstall_keeps_the_accepted_trades_of_open_slots);
    tcase_add_loop_test(tc, grid_bad_arguments_are_errors_that_change_nothing, 0, (int)(sizeof ERRS / sizeof ERRS[0]));
    tcase_add_test(tc, grid_fees_follow_the_path_and_the_neighbour_pays_less);
    tcase_add_test(tc, grid_splitting_a_trade_never_pays_less);
    tcase_add_test(tc, grid_install_under_oom_either_fails_cleanly_or_installs);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(grid_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
