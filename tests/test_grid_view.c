/* test_grid_view.c: the DSO's view of a slot (contracts/grid_model.c: grid_model_state), the
 * integer operating point the grid check itself solves, against the independent floating-point
 * AC power flow of node/pf on the reference feeders (case33bw, case69, case141, case533mt_hi):
 * with the base case alone and after sequences of random accepted trades, every line's |S| must
 * agree with the reference's max(|S_from|, |S_to|) within VIEW_LINE_TOL of its rating and every
 * bus voltage within VIEW_V_TOL_PU (the tolerances docs/grid.md, "The DSO's view", documents).
 * And the view must agree with the check: after a curtailed trade is committed, the line the
 * check named binding sits at its limit (between VIEW_BIND_MIN_PPM and 1,000,000 ppm), a bus
 * named binding at its band's edge, and no line or bus the base case had within its limits is
 * beyond them. */
#include <check.h>
#include <inttypes.h>
#include <math.h>
#include <unistd.h>

#include "node/pf/feeder.h"

#define SLOT_MS 900000              /* 15 min: 1 Wh = 4 W */
#define VIEW_LINE_TOL 0.0001        /* of the rating: 0.01 % */
#define VIEW_V_TOL_PU 0.000001      /* 1e-6 pu */
#define VIEW_BIND_MIN_PPM 998000    /* a binding line carries at least 99.8 % of its limit */

static char feeders_dir[1024];

static uint64_t rs;
static uint64_t rng(void) {
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return rs;
}

typedef struct {
    ctl_feeder f;
    ctl_feeder_install in;
    uint8_t *blob, *slot;
    size_t len, slot_bytes;
    uint32_t n;
    ctl_feeder_flow fl;
    double *inj;
    grid_bus_state *bs;
    grid_line_state *ls;
} rig;

static void rig_open(rig *r, const char *name) {
    memset(r, 0, sizeof *r);
    char dir[1200], err[256];
    snprintf(dir, sizeof dir, "%s/%s", feeders_dir, name);
    ck_assert_msg(ctl_feeder_load(&r->f, dir, err, sizeof err) == GRID_OK, "%s", err);
    ck_assert_msg(ctl_feeder_install_build(&r->f, 0, &r->in, err, sizeof err) == GRID_OK, "%s", err);
    ck_assert_msg(grid_model_compile(&r->in.msg, UINT32_MAX, &r->blob, &r->len, err, sizeof err) == GRID_OK, "%s",
                  err);
    r->n = grid_model_buses(r->blob, r->len);
    ck_assert_uint_eq(r->n, r->f.n_buses);
    r->slot_bytes = grid_model_slot_bytes(r->blob, r->len);
    r->slot = tem_calloc(1, r->slot_bytes);
    ck_assert_int_eq(ctl_feeder_flow_init(&r->fl, &r->f), GRID_OK);
    r->inj = calloc(r->n, sizeof *r->inj);
    r->bs = calloc(r->n, sizeof *r->bs);
    r->ls = calloc(r->n, sizeof *r->ls);
    ck_assert(r->slot && r->inj && r->bs && r->ls);
}

static void rig_close(rig *r) {
    free(r->inj);
    free(r->bs);
    free(r->ls);
    tem_free(r->slot);
    tem_free(r->blob);
    ctl_feeder_flow_free(&r->fl);
    ctl_feeder_install_free(&r->in);
    ctl_feeder_free(&r->f);
}

static double wh_to_kw(uint64_t wh) { return (double)wh * 3600000.0 / SLOT_MS / 1000.0; }

/* The line index of the file with these ends, either orientation. */
static uint32_t line_of(const rig *r, uint32_t from, uint32_t to) {
    for (uint32_t l = 0; l < r->f.n_lines; l++)
        if (r->f.lines[l].from == from && r->f.lines[l].to == to) return l;
    ck_abort_msg("line %u-%u not in the file", from, to);
    return 0;
}

/* The view against the reference with the trades so far; returns the worst differences. */
static void compare(rig *r, const char *name, double *worst_line, double *worst_v) {
    char err[256];
    ck_assert_int_eq(grid_model_state(r->blob, r->len, r->slot, 0, SLOT_MS, r->bs, r->ls), GRID_OK);
    ck_assert_msg(ctl_feeder_flow_run(&r->f, r->inj, 1e-12, false, &r->fl, err, sizeof err) == GRID_OK, "%s", err);
    for (uint32_t k = 0; k < r->n; k++) {
        int64_t b = ctl_feeder_bus_index(&r->f, r->bs[k].bus);
        ck_assert(b >= 0);
        double dv = fabs((double)r->bs[k].v_npu / 1e9 - r->fl.vm_pu[b]);
        if (dv > *worst_v) *worst_v = dv;
        ck_assert_msg(dv <= VIEW_V_TOL_PU, "%s bus %u: %.9f pu, reference %.9f", name, r->bs[k].bus,
                      (double)r->bs[k].v_npu / 1e9, r->fl.vm_pu[b]);
        if (k == 0) continue;
        /* The base case the view reports is the file's load (no profile): W against kW. */
        ck_assert_msg(llabs(r->bs[k].base_p_w - llround(r->f.buses[b].pd_kw * 1000)) <= 1, "%s bus %u: base %" PRId64,
                      name, r->bs[k].bus, r->bs[k].base_p_w);
        const grid_line_state *ln = &r->ls[k - 1];
        uint32_t l = line_of(r, ln->from, ln->to);
        double sf = hypot(r->fl.p_from_kw[l], r->fl.q_from_kvar[l]), st = hypot(r->fl.p_to_kw[l], r->fl.q_to_kvar[l]);
        double ref_va = fmax(sf, st) * 1000, rate_va = r->f.lines[l].rate_kva * 1000;
        double d = fabs((double)ln->s_va - ref_va) / rate_va;
        if (d > *worst_line) *worst_line = d;
        ck_assert_msg(d <= VIEW_LINE_TOL, "%s line %u-%u: %" PRId64 " VA, reference %.1f VA (rating %.0f)", name,
                      ln->from, ln->to, ln->s_va, ref_va, rate_va);
        /* Margin 0: the check's limit is the rating less its 1 ppm guard. */
        ck_assert(llabs(ln->limit_va - llround(rate_va * (1 - 1e-6))) <= 1);
        double lp = (double)ln->s_va / (double)ln->limit_va * 1e6;
        /* s_va is rounded to 1 VA, loading_ppm is not. */
        ck_assert_msg(fabs(lp - (double)ln->loading_ppm) <= 2 + 1e6 / (double)ln->limit_va, "%s line %u-%u: %" PRId64 " ppm, |S|/limit %.1f (%" PRId64 " / %" PRId64 ")",
                      name, ln->from, ln->to, ln->loading_ppm, lp, ln->s_va, ln->limit_va);
        ck_assert_uint_eq(ln->bus, r->bs[k].bus);
        ck_assert_int_eq(r->bs[k].traded_wh,
                         (int64_t)llround(r->inj[b] * 1000.0 * SLOT_MS / 3600000.0)); /* kW back to Wh */
    }
}

static const char *const cases[] = {"case33bw", "case69", "case141", "case533mt_hi"};

/* The base case and random trades: every line and bus against the reference. */
START_TEST(view_matches_reference) {
    const char *name = cases[_i];
    rig r;
    rig_open(&r, name);
    double wl = 0, wv = 0;
    compare(&r, name, &wl, &wv);
    rs = 0x5eed0000ull + (uint64_t)_i;
    int accepted = 0;
    for (int t = 0; t < 40; t++) {
        uint32_t a = 1 + (uint32_t)(rng() % (r.n - 1)), b = 1 + (uint32_t)(rng() % (r.n - 1));
        uint64_t q = 1 + rng() % 20000;
        uint32_t ida = r.f.buses[a].id, idb = r.f.buses[b].id;
        grid_match_result m;
        ck_assert_int_eq(grid_model_check(r.blob, r.len, r.slot, 0, ida, idb, q, SLOT_MS, &m), GRID_OK);
        if (!m.allowed_wh || a == b) continue;
        ck_assert_int_eq(grid_model_commit(r.blob, r.len, r.slot, ida, idb, m.allowed_wh, SLOT_MS), GRID_OK);
        r.inj[a] += wh_to_kw(m.allowed_wh);
        r.inj[b] -= wh_to_kw(m.allowed_wh);
        accepted++;
        if (t % 8 == 7) compare(&r, name, &wl, &wv);
    }
    compare(&r, name, &wl, &wv);
    ck_assert_int_gt(accepted, 10);
    printf("view %s: worst line |S| %.2e of rating, worst |V| %.2e pu, %d trades\n", name, wl, wv, accepted);
    rig_close(&r);
}
END_TEST

/* A curtailed trade, committed: the constraint the check named is at its limit in the view,
 * and nothing the check guards is beyond it. Several pairs per feeder, until both a line and a
 * bus have bound (a feeder may only ever bind one kind; at least one line must bind). */
START_TEST(binding_is_at_its_limit) {
    const char *name = cases[_i];
    rig r;
    rig_open(&r, name);
    rs = 0xb17d0000ull + (uint64_t)_i;
    int lines = 0, buses = 0;
    int64_t min_ppm = INT64_MAX;
    /* The base case's own state: a limit it already exceeds is "no worse" for the check. */
    ck_assert_int_eq(grid_model_state(r.blob, r.len, NULL, 0, SLOT_MS, r.bs, r.ls), GRID_OK);
    int64_t *base_ppm = calloc(r.n, sizeof *base_ppm);
    bool *base_out = calloc(r.n, sizeof *base_out);
    for (uint32_t k = 1; k < r.n; k++) {
        base_ppm[k] = r.ls[k - 1].loading_ppm;
        base_out[k] = r.bs[k].v_npu < r.bs[k].vmin_npu || r.bs[k].v_npu > r.bs[k].vmax_npu;
    }
    for (int t = 0; t < 60 && (lines < 3 || buses < 1); t++) {
        memset(r.slot, 0, r.slot_bytes);
        uint32_t a = 1 + (uint32_t)(rng() % (r.n - 1)), b = (t % 2) ? r.f.slack : 1 + (uint32_t)(rng() % (r.n - 1));
        if (a == b) continue;
        uint32_t ida = r.f.buses[a].id, idb = r.f.buses[b].id;
        grid_match_result m;
        ck_assert_int_eq(grid_model_check(r.blob, r.len, r.slot, 0, ida, idb, 100000000, SLOT_MS, &m), GRID_OK);
        if (!m.curtailed_wh || !m.allowed_wh || m.binding.kind == GRID_BIND_NONE) continue;
        ck_assert_int_eq(grid_model_commit(r.blob, r.len, r.slot, ida, idb, m.allowed_wh, SLOT_MS), GRID_OK);
        ck_assert_int_eq(grid_model_state(r.blob, r.len, r.slot, 0, SLOT_MS, r.bs, r.ls), GRID_OK);
        for (uint32_t k = 1; k < r.n; k++) {
            const grid_line_state *ln = &r.ls[k - 1];
            ck_assert_msg(ln->loading_ppm <= (base_ppm[k] > 1000000 ? base_ppm[k] : 1000000) + 1,
                          "%s %u->%u: line %u-%u at %" PRId64 " ppm", name, ida, idb, ln->from, ln->to, ln->loading_ppm);
            if (!base_out[k])
                ck_assert_msg(r.bs[k].v_npu >= r.bs[k].vmin_npu - 1 && r.bs[k].v_npu <= r.bs[k].vmax_npu + 1,
                              "%s %u->%u: bus %u at %" PRId64 " npu", name, ida, idb, r.bs[k].bus, r.bs[k].v_npu);
            if (m.binding.kind == GRID_BIND_LINE && ln->from == m.binding.from && ln->to == m.binding.to) {
                ck_assert_msg(ln->loading_ppm >= VIEW_BIND_MIN_PPM, "%s %u->%u: binding %s at %" PRId64 " ppm", name,
                              ida, idb, m.binding.text, ln->loading_ppm);
                lines++;
                if (ln->loading_ppm < min_ppm) min_ppm = ln->loading_ppm;
            }
            if (m.binding.kind == GRID_BIND_BUS && r.bs[k].bus == m.binding.bus && !base_out[k]) {
                int64_t edge = m.binding.upper ? r.bs[k].vmax_npu : r.bs[k].vmin_npu;
                ck_assert_msg(llabs(r.bs[k].v_npu - edge) <= 1000000, "%s: binding %s at %" PRId64 " npu, edge %" PRId64,
                              name, m.binding.text, r.bs[k].v_npu, edge);
                buses++;
            }
        }
    }
    printf("binding %s: %d lines (the least loaded at %" PRId64 " ppm) and %d buses at their limits\n", name, lines,
           min_ppm, buses);
    ck_assert_int_gt(lines, 0);
    free(base_ppm);
    free(base_out);
    rig_close(&r);
}
END_TEST

/* The slot's own base case (docs/grid.md, "Base case per slot"): a daily profile with PV and a
 * per-slot override, on case33bw. For each slot the view's base case is the reference's
 * (ctl_feeder_base_slot) and its flow the reference's with those loads. */
START_TEST(view_follows_the_slot_base_case) {
    rig r;
    rig_open(&r, "case33bw");
    char path[] = "/tmp/tem-grid-view-XXXXXX", err[256];
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    const char *csv = "profile,0,60,0\nprofile,1,50,100\nprofile,2,120,0\ngen,18,300\ngen,25,150\nslot,7,18,-50,0\n";
    ck_assert_int_eq(write(fd, csv, strlen(csv)), (ssize_t)strlen(csv));
    close(fd);
    ctl_feeder_base bc = {0};
    ck_assert_msg(ctl_feeder_base_load(&r.f, path, &bc, err, sizeof err) == GRID_OK, "%s", err);
    unlink(path);
    ck_assert_int_eq(ctl_feeder_install_set_base(&r.in, &r.f, &bc), GRID_OK);
    tem_free(r.blob);
    ck_assert_msg(grid_model_compile(&r.in.msg, UINT32_MAX, &r.blob, &r.len, err, sizeof err) == GRID_OK, "%s", err);
    double *pd0 = calloc(r.n, sizeof *pd0), *qd0 = calloc(r.n, sizeof *qd0), *pd = calloc(r.n, sizeof *pd),
           *qd = calloc(r.n, sizeof *qd);
    for (uint32_t b = 0; b < r.n; b++) pd0[b] = r.f.buses[b].pd_kw, qd0[b] = r.f.buses[b].qd_kvar;
    static const uint64_t slots[] = {0, 1, 2, 7, 100};
    double wl = 0, wv = 0;
    for (size_t i = 0; i < sizeof slots / sizeof slots[0]; i++) {
        ctl_feeder_base_slot(&r.f, &bc, slots[i], pd, qd);
        ck_assert_int_eq(grid_model_state(r.blob, r.len, NULL, slots[i], SLOT_MS, r.bs, r.ls), GRID_OK);
        for (uint32_t k = 1; k < r.n; k++) {
            int64_t b = ctl_feeder_bus_index(&r.f, r.bs[k].bus);
            ck_assert_msg(llabs(r.bs[k].base_p_w - llround(pd[b] * 1000)) <= 2 && llabs(r.bs[k].base_q_var - llround(qd[b] * 1000)) <= 2,
                          "slot %" PRIu64 " bus %u: base %" PRId64 " W %" PRId64 " var, reference %.3f kW %.3f kvar", slots[i],
                          r.bs[k].bus, r.bs[k].base_p_w, r.bs[k].base_q_var, pd[b], qd[b]);
        }
        /* The reference with this slot's loads in place of the file's. */
        for (uint32_t b = 0; b < r.n; b++) r.f.buses[b].pd_kw = pd[b], r.f.buses[b].qd_kvar = qd[b];
        ck_assert_msg(ctl_feeder_flow_run(&r.f, NULL, 1e-12, false, &r.fl, err, sizeof err) == GRID_OK, "%s", err);
        for (uint32_t b = 0; b < r.n; b++) r.f.buses[b].pd_kw = pd0[b], r.f.buses[b].qd_kvar = qd0[b];
        for (uint32_t k = 0; k < r.n; k++) {
            int64_t b = ctl_feeder_bus_index(&r.f, r.bs[k].bus);
            double dv = fabs((double)r.bs[k].v_npu / 1e9 - r.fl.vm_pu[b]);
            wv = fmax(wv, dv);
            ck_assert_msg(dv <= VIEW_V_TOL_PU, "slot %" PRIu64 " bus %u: %.9f pu, reference %.9f", slots[i], r.bs[k].bus,
                          (double)r.bs[k].v_npu / 1e9, r.fl.vm_pu[b]);
            if (k == 0) continue;
            const grid_line_state *ln = &r.ls[k - 1];
            uint32_t l = line_of(&r, ln->from, ln->to);
            double ref = fmax(hypot(r.fl.p_from_kw[l], r.fl.q_from_kvar[l]), hypot(r.fl.p_to_kw[l], r.fl.q_to_kvar[l])) * 1000;
            double d = fabs((double)ln->s_va - ref) / (r.f.lines[l].rate_kva * 1000);
            wl = fmax(wl, d);
            ck_assert_msg(d <= VIEW_LINE_TOL, "slot %" PRIu64 " line %u-%u: %" PRId64 " VA, reference %.1f", slots[i], ln->from,
                          ln->to, ln->s_va, ref);
        }
        if (slots[i] == 1) {
            /* Midday: PV at full output pushes line 17-18 beyond its 200 kVA (docs/grid.md). */
            const grid_line_state *ln = NULL;
            for (uint32_t k = 0; k + 1 < r.n; k++)
                if (r.ls[k].from == 17 && r.ls[k].to == 18) ln = &r.ls[k];
            ck_assert_ptr_nonnull(ln);
            ck_assert_int_gt(ln->loading_ppm, 1000000);
        }
    }
    printf("view per slot case33bw: worst line |S| %.2e of rating, worst |V| %.2e pu\n", wl, wv);
    free(pd0);
    free(qd0);
    free(pd);
    free(qd);
    ctl_feeder_base_free(&bc);
    rig_close(&r);
}
END_TEST

/* Bad input: a blob that is not a model, a bad slot length; nothing written. */
START_TEST(view_refuses_bad_input) {
    rig r;
    rig_open(&r, "case33bw");
    memset(r.bs, 0x5a, sizeof *r.bs * r.n);
    ck_assert_int_eq(grid_model_state(r.blob, r.len - 1, NULL, 0, SLOT_MS, r.bs, r.ls), GRID_ECORRUPT);
    ck_assert_int_eq(grid_model_state(r.blob, r.len, NULL, 0, 0, r.bs, r.ls), GRID_EINVAL);
    ck_assert_uint_eq(r.bs[0].bus, 0x5a5a5a5au);
    /* A slot with no AC solution: 4 GW withdrawn at the far end. */
    ck_assert_int_eq(grid_model_commit(r.blob, r.len, r.slot, 1, 18, 1000000000, SLOT_MS), GRID_OK);
    ck_assert_int_eq(grid_model_state(r.blob, r.len, r.slot, 0, SLOT_MS, r.bs, r.ls), GRID_ENOCONVERGE);
    rig_close(&r);
}
END_TEST

static Suite *view_suite(void) {
    Suite *s = suite_create("grid_view");
    TCase *tc = tcase_create("view");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, view_matches_reference, 0, 4);
    tcase_add_loop_test(tc, binding_is_at_its_limit, 0, 4);
    tcase_add_test(tc, view_follows_the_slot_base_case);
    tcase_add_test(tc, view_refuses_bad_input);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    const char *env = getenv("TEM_FEEDERS");
    snprintf(feeders_dir, sizeof feeders_dir, "%s", env && *env ? env : "../shared/data/feeders");
    SRunner *sr = srunner_create(view_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
