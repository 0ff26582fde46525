/* test_feeder.c: the offline feeder tools: CSV import and validation, the AC power flow against
 * the reference figures of all four feeders, and the `temctl feeder` verbs (flow, limit,
 * install) through ctl_feeder_main. Feeder data: $TEM_FEEDERS or ../shared/data/feeders. */
#include <check.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <unistd.h>

#include "node/ctl/ctl.h"
#include "node/pf/feeder.h"

static char feeders_dir[1024];

static const char *feeder_path(const char *name) {
    static char p[2048];
    snprintf(p, sizeof p, "%s/%s", feeders_dir, name);
    return p;
}

/* ------------------------------------------------------------------ reference figures */

typedef struct {
    const char *name;
    double loss_kw, loss_kvar, vmin_pu;
    uint32_t vmin_bus;
    double max_loading_pct, head_i_a;
} ref_row;

/* The READMEs' reference results (converged to 1e-9 pu by two independent solvers). */
static const ref_row REFS[] = {
    {"case33bw", 202.677, 135.141, 0.913090, 18, 49.95, 210.36},
    {"case69", 224.992, 102.158, 0.909188, 65, 49.03, 223.60},
    {"case141", 632.696, 467.650, 0.927862, 87, 49.79, 686.93},
    {"case533mt_hi", 525.371, 271.725, 0.958748, 295, 84.73, 1187.60},
};

START_TEST(feeder_flow_matches_every_readme_reference) {
    const ref_row *r = &REFS[_i];
    ctl_feeder f;
    ctl_feeder_flow fl;
    char err[256];
    ck_assert_msg(ctl_feeder_load(&f, feeder_path(r->name), err, sizeof err) == GRID_OK, "%s: %s", r->name, err);
    ck_assert_int_eq(ctl_feeder_flow_init(&fl, &f), GRID_OK);
    ck_assert_int_eq(ctl_feeder_flow_run(&f, NULL, CTL_FEEDER_TOL_PU, false, &fl, err, sizeof err), GRID_OK);
    ck_assert_msg(fabs(fl.loss_kw - r->loss_kw) < 0.001, "%s loss %.4f", r->name, fl.loss_kw);
    ck_assert_msg(fabs(fl.loss_kvar - r->loss_kvar) < 0.001, "%s loss_kvar %.4f", r->name, fl.loss_kvar);
    ck_assert_msg(fabs(fl.vmin_pu - r->vmin_pu) < 1e-6, "%s vmin %.7f", r->name, fl.vmin_pu);
    ck_assert_uint_eq(fl.vmin_bus, r->vmin_bus);
    double maxl = 0;
    for (uint32_t l = 0; l < f.n_lines; l++) maxl = fmax(maxl, fl.loading_pct[l]);
    ck_assert_msg(fabs(maxl - r->max_loading_pct) < 0.005, "%s max loading %.3f", r->name, maxl);
    /* The head line (slack to its first bus) is the first line in every file. */
    ck_assert_msg(fabs(fl.i_a[0] - r->head_i_a) < 0.005, "%s head current %.3f", r->name, fl.i_a[0]);
    ctl_feeder_flow_free(&fl);
    ctl_feeder_free(&f);
}
END_TEST

START_TEST(feeder_flow_case33bw_meets_the_issue_figures) {
    ctl_feeder f;
    ctl_feeder_flow fl;
    char err[256];
    ck_assert_int_eq(ctl_feeder_load(&f, feeder_path("case33bw"), err, sizeof err), GRID_OK);
    ck_assert_int_eq(ctl_feeder_flow_init(&fl, &f), GRID_OK);
    ck_assert_int_eq(ctl_feeder_flow_run(&f, NULL, 1e-8, false, &fl, err, sizeof err), GRID_OK);
    ck_assert(fabs(fl.loss_kw - 202.7) <= 0.5);
    ck_assert(fabs(fl.vmin_pu - 0.9131) <= 0.0005);
    ck_assert_uint_eq(fl.vmin_bus, 18);
    ck_assert_uint_eq(f.n_buses, 33);
    ck_assert_uint_eq(f.n_lines, 32);
    ctl_feeder_flow_free(&fl);
    ctl_feeder_free(&f);
}
END_TEST

START_TEST(feeder_case533_reverse_lines_and_exports_are_handled) {
    ctl_feeder f;
    ctl_feeder_flow fl;
    char err[256];
    ck_assert_int_eq(ctl_feeder_load(&f, feeder_path("case533mt_hi"), err, sizeof err), GRID_OK);
    ck_assert_int_eq(ctl_feeder_flow_init(&fl, &f), GRID_OK);
    ck_assert_int_eq(ctl_feeder_flow_run(&f, NULL, CTL_FEEDER_TOL_PU, false, &fl, err, sizeof err), GRID_OK);
    uint32_t reversed = 0, exporting = 0, negative_from = 0;
    for (uint32_t l = 0; l < f.n_lines; l++) {
        if (!f.child_is_to[l]) reversed++;
        if (fl.p_par_kw[l] < 0) exporting++;
        if (f.lines[l].from == 5 && f.lines[l].to == 2) ck_assert(fl.p_from_kw[l] < 0);
        if (!f.child_is_to[l] && fl.p_from_kw[l] < 0) negative_from++;
    }
    ck_assert_uint_eq(reversed, 197); /* README: 197 lines listed with from farther from the slack */
    ck_assert_uint_eq(exporting, 20); /* README: power flows towards the substation on 20 lines */
    ck_assert_uint_gt(negative_from, 150);
    uint32_t neg = 0;
    double vmax = 0;
    for (uint32_t b = 0; b < f.n_buses; b++) {
        if (f.buses[b].pd_kw < 0) neg++;
        vmax = fmax(vmax, fl.vm_pu[b]);
    }
    ck_assert_uint_eq(neg, 19);
    ck_assert(fabs(vmax - 1.00092) < 5e-6); /* the highest voltage is above the slack's */
    ctl_feeder_flow_free(&fl);
    ctl_feeder_free(&f);
}
END_TEST

/* ------------------------------------------------------------------ bad feeders */

#define BUS_HDR "bus,type,pd_kw,qd_kvar,vmin_pu,vmax_pu,base_kv\n"
#define LINE_HDR "from,to,r_ohm,x_ohm,rate_kva\n"
#define B1 "1,slack,0,0,1,1,12.66\n"
#define B2 "2,pq,100,60,0.9,1.1,12.66\n"
#define B3 "3,pq,90,40,0.9,1.1,12.66\n"
#define B4 "4,pq,120,80,0.9,1.1,12.66\n"

typedef struct {
    const char *name, *buses, *lines;
    int want;
    const char *msg; /* must appear in the error */
} bad_row;

static const bad_row BAD[] = {
    {"cycle", BUS_HDR B1 B2 B3, LINE_HDR "1,2,0.1,0.05,1000\n2,3,0.1,0.05,1000\n3,1,0.1,0.05,1000\n", GRID_ECYCLE,
     "closes a loop"},
    {"parallel line", BUS_HDR B1 B2, LINE_HDR "1,2,0.1,0.05,1000\n2,1,0.2,0.05,1000\n", GRID_ECYCLE, "line 2-1"},
    {"island", BUS_HDR B1 B2 B3 B4, LINE_HDR "1,2,0.1,0.05,1000\n3,4,0.1,0.05,1000\n", GRID_EISLAND, "bus 3"},
    {"two slack buses", BUS_HDR B1 "2,slack,0,0,1,1,12.66\n" B3, LINE_HDR "1,2,0.1,0.05,1000\n2,3,0.1,0.05,1000\n",
     GRID_ESLACK, "buses 1 and 2"},
    {"no slack bus", BUS_HDR B2 B3, LINE_HDR "2,3,0.1,0.05,1000\n", GRID_ESLACK, "no slack"},
    {"zero impedance", BUS_HDR B1 B2 B3, LINE_HDR "1,2,0.1,0.05,1000\n2,3,0,0,1000\n", GRID_EIMPEDANCE, "line 2-3"},
    {"negative resistance", BUS_HDR B1 B2, LINE_HDR "1,2,-0.1,0.05,1000\n", GRID_EIMPEDANCE, "line 1-2"},
    {"unknown bus", BUS_HDR B1 B2, LINE_HDR "1,2,0.1,0.05,1000\n2,9,0.1,0.05,1000\n", GRID_EUNKNOWNBUS,
     "unknown bus 9"},
    {"bus twice", BUS_HDR B1 B2 B2, LINE_HDR "1,2,0.1,0.05,1000\n", GRID_EDUPBUS, "bus 2 listed twice"},
    {"zero rating", BUS_HDR B1 B2, LINE_HDR "1,2,0.1,0.05,0\n", GRID_ERATING, "line 1-2"},
    {"empty band", BUS_HDR B1 "2,pq,1,1,1.1,0.9,12.66\n", LINE_HDR "1,2,0.1,0.05,100\n", GRID_EVBAND, "bus 2"},
    {"bad header", "bus,type,pd,qd,vmin,vmax,kv\n" B1, LINE_HDR, GRID_EPARSE, "header"},
    {"bad number", BUS_HDR B1 "2,pq,abc,1,0.9,1.1,12.66\n", LINE_HDR "1,2,0.1,0.05,100\n", GRID_EPARSE,
     "line 3: bus 2: pd_kw"},
    {"bad type", BUS_HDR B1 "2,pv,1,1,0.9,1.1,12.66\n", LINE_HDR "1,2,0.1,0.05,100\n", GRID_EPARSE, "type 'pv'"},
    {"missing field", BUS_HDR B1 B2, LINE_HDR "1,2,0.1,0.05\n", GRID_EPARSE, "lines.csv line 2"},
    {"self loop", BUS_HDR B1 B2, LINE_HDR "1,2,0.1,0.05,100\n2,2,0.1,0.05,100\n", GRID_ECYCLE, "line 2-2"},
    {"base kv differs", BUS_HDR B1 "2,pq,1,1,0.9,1.1,0.4\n", LINE_HDR "1,2,0.1,0.05,100\n", GRID_EMODEL,
     "line 1-2: base_kv"},
};

START_TEST(feeder_bad_feeder_gives_an_error_naming_the_line_or_bus) {
    const bad_row *r = &BAD[_i];
    ctl_feeder f;
    char err[256] = "";
    int rc = ctl_feeder_parse(&f, r->buses, strlen(r->buses), r->lines, strlen(r->lines), err, sizeof err);
    ck_assert_msg(rc == r->want, "%s: rc %d (%s) want %d", r->name, rc, err, r->want);
    ck_assert_msg(strstr(err, r->msg) != NULL, "%s: error '%s' does not name '%s'", r->name, err, r->msg);
    ck_assert_ptr_null(f.buses); /* nothing left allocated */
}
END_TEST

START_TEST(feeder_nonconverging_case_is_an_error_not_a_result) {
    /* 60 MW through a 12.66 kV line of 1 ohm: no voltage solution exists. */
    const char *b = BUS_HDR B1 "2,pq,60000,20000,0.9,1.1,12.66\n";
    const char *l = LINE_HDR "1,2,1,0.5,100000\n";
    ctl_feeder f;
    ctl_feeder_flow fl;
    char err[256];
    ck_assert_int_eq(ctl_feeder_parse(&f, b, strlen(b), l, strlen(l), err, sizeof err), GRID_OK);
    ck_assert_int_eq(ctl_feeder_flow_init(&fl, &f), GRID_OK);
    ck_assert_int_eq(ctl_feeder_flow_run(&f, NULL, CTL_FEEDER_TOL_PU, false, &fl, err, sizeof err), GRID_ENOCONVERGE);
    ck_assert_ptr_nonnull(strstr(err, "did not converge"));
    ctl_feeder_install in;
    ck_assert_int_eq(ctl_feeder_install_build(&f, 0, &in, err, sizeof err), GRID_ENOCONVERGE);
    ctl_feeder_flow_free(&fl);
    ctl_feeder_free(&f);
}
END_TEST

START_TEST(feeder_flow_shuffled_and_renumbered_feeder_gives_the_same_answer) {
    /* The same three-bus feeder with lines reversed, listed out of order and sparse bus ids. */
    const char *b1 = BUS_HDR B1 B2 B3, *l1 = LINE_HDR "1,2,0.5,0.25,1000\n2,3,0.4,0.2,1000\n";
    const char *b2 = BUS_HDR "300,pq,90,40,0.9,1.1,12.66\n7,slack,0,0,1,1,12.66\n20,pq,100,60,0.9,1.1,12.66\n";
    const char *l2 = LINE_HDR "300,20,0.4,0.2,1000\n20,7,0.5,0.25,1000\n";
    ctl_feeder f1, f2;
    ctl_feeder_flow x, y;
    char err[256];
    ck_assert_int_eq(ctl_feeder_parse(&f1, b1, strlen(b1), l1, strlen(l1), err, sizeof err), GRID_OK);
    ck_assert_int_eq(ctl_feeder_parse(&f2, b2, strlen(b2), l2, strlen(l2), err, sizeof err), GRID_OK);
    ck_assert_int_eq(ctl_feeder_flow_init(&x, &f1), GRID_OK);
    ck_assert_int_eq(ctl_feeder_flow_init(&y, &f2), GRID_OK);
    ck_assert_int_eq(ctl_feeder_flow_run(&f1, NULL, 1e-12, false, &x, err, sizeof err), GRID_OK);
    ck_assert_int_eq(ctl_feeder_flow_run(&f2, NULL, 1e-12, false, &y, err, sizeof err), GRID_OK);
    ck_assert(fabs(x.loss_kw - y.loss_kw) < 1e-9);
    ck_assert_uint_eq(y.vmin_bus, 300);
    ck_assert(fabs(x.vm_pu[2] - y.vm_pu[0]) < 1e-12);
    /* line 2-3 in f1 is 300-20 in f2, written from the far end: same magnitude, opposite sign */
    ck_assert(fabs(x.p_from_kw[1] - y.p_to_kw[0]) < 1e-9); /* both at the end nearer the slack */
    ck_assert(fabs(x.p_from_kw[1] - 90.0) < 1.0);
    ck_assert(y.p_from_kw[0] < 0);
    ctl_feeder_flow_free(&x);
    ctl_feeder_flow_free(&y);
    ctl_feeder_free(&f1);
    ctl_feeder_free(&f2);
}
END_TEST

START_TEST(feeder_generation_at_the_far_end_cuts_losses_and_lifts_voltage) {
    ctl_feeder f;
    ctl_feeder_flow fl;
    char err[256];
    ck_assert_int_eq(ctl_feeder_load(&f, feeder_path("case33bw"), err, sizeof err), GRID_OK);
    ck_assert_int_eq(ctl_feeder_flow_init(&fl, &f), GRID_OK);
    double *inj = calloc(f.n_buses, sizeof *inj);
    inj[ctl_feeder_bus_index(&f, 18)] = 300;
    ck_assert_int_eq(ctl_feeder_flow_run(&f, inj, CTL_FEEDER_TOL_PU, false, &fl, err, sizeof err), GRID_OK);
    ck_assert(fl.loss_kw < 202.0);
    ck_assert(fl.vm_pu[ctl_feeder_bus_index(&f, 18)] > 0.9131);
    free(inj);
    ctl_feeder_flow_free(&fl);
    ctl_feeder_free(&f);
}
END_TEST

/* ------------------------------------------------------------------ the install message */

START_TEST(feeder_install_message_compiles_on_every_feeder) {
    const ref_row *r = &REFS[_i];
    ctl_feeder f;
    ctl_feeder_install in;
    char err[256];
    ck_assert_int_eq(ctl_feeder_load(&f, feeder_path(r->name), err, sizeof err), GRID_OK);
    ck_assert_msg(ctl_feeder_install_build(&f, 20000, &in, err, sizeof err) == GRID_OK, "%s", err);
    ck_assert_uint_eq(in.msg.n_buses, f.n_buses);
    ck_assert_uint_eq(in.msg.source_hash.len, 32);
    uint8_t *blob;
    size_t len;
    ck_assert_msg(grid_model_compile(&in.msg, UINT32_MAX, &blob, &len, err, sizeof err) == GRID_OK, "%s", err);
    ck_assert_uint_eq(grid_model_buses(blob, len), f.n_buses);
    /* The chain solves the AC power flow itself: the message carries the network, the base
     * loads and the nominal voltage, which must match the files. */
    ck_assert_uint_eq(in.msg.base_kv_mv, (uint64_t)llround(f.buses[f.slack].base_kv * 1e6));
    for (uint32_t b = 0; b < in.msg.n_buses; b++)
        ck_assert_int_eq(in.msg.buses[b]->base_p_w, llround(f.buses[b].pd_kw * 1000.0));
    for (uint32_t l = 0; l < in.msg.n_lines; l++) {
        ck_assert_uint_eq(in.msg.lines[l]->r_uohm, (uint64_t)llround(f.lines[l].r_ohm * 1e6));
        ck_assert_uint_eq(in.msg.lines[l]->rate_va, (uint64_t)llround(f.lines[l].rate_kva * 1000.0));
    }
    /* The source hash is SHA-256(buses.csv || lines.csv). */
    char pb[2100], pl[2100];
    snprintf(pb, sizeof pb, "%s/buses.csv", feeder_path(r->name));
    snprintf(pl, sizeof pl, "%s/lines.csv", feeder_path(r->name));
    FILE *a = fopen(pb, "rb"), *b = fopen(pl, "rb");
    ck_assert(a && b);
    static char buf[1 << 17];
    size_t na = fread(buf, 1, sizeof buf, a);
    size_t nb = fread(buf + na, 1, sizeof buf - na, b);
    fclose(a);
    fclose(b);
    uint8_t h[32];
    ledger_sha256(h, buf, na + nb);
    ck_assert_mem_eq(h, in.msg.source_hash.data, 32);
    tem_free(blob);
    ctl_feeder_install_free(&in);
    ctl_feeder_free(&f);
}
END_TEST

/* ------------------------------------------------------------------ temctl feeder */

/* Runs ctl_feeder_main with stdout captured into buf. */
static int run_ctl(char *buf, size_t cap, int argc, char **argv) {
    fflush(stdout);
    char path[] = "/tmp/test_feeder_outXXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    int saved = dup(STDOUT_FILENO);
    dup2(fd, STDOUT_FILENO);
    int rc = ctl_feeder_main(argc, argv);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    lseek(fd, 0, SEEK_SET);
    ssize_t n = read(fd, buf, cap - 1);
    buf[n > 0 ? n : 0] = 0;
    close(fd);
    unlink(path);
    return rc;
}

static char out_buf[1 << 20];

START_TEST(ctl_feeder_flow_json_has_exactly_the_issue_keys) {
    char *argv[] = {"feeder", "flow", (char *)feeder_path("case33bw"), "--json", NULL};
    ck_assert_int_eq(run_ctl(out_buf, sizeof out_buf, 4, argv), 0);
    json_error_t je;
    json_t *j = json_loads(out_buf, 0, &je);
    ck_assert_ptr_nonnull(j);
    ck_assert_uint_eq(json_object_size(j), 6);
    ck_assert(fabs(json_real_value(json_object_get(j, "loss_kw")) - 202.677) < 0.001);
    ck_assert(json_is_real(json_object_get(j, "loss_kvar")));
    ck_assert(fabs(json_real_value(json_object_get(j, "vmin_pu")) - 0.91309) < 1e-5);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "vmin_bus")), 18);
    json_t *buses = json_object_get(j, "buses"), *lines = json_object_get(j, "lines");
    ck_assert_uint_eq(json_array_size(buses), 33);
    ck_assert_uint_eq(json_array_size(lines), 32);
    json_t *b0 = json_array_get(buses, 0), *l0 = json_array_get(lines, 0);
    ck_assert_uint_eq(json_object_size(b0), 3);
    ck_assert_ptr_nonnull(json_object_get(b0, "bus"));
    ck_assert_ptr_nonnull(json_object_get(b0, "vm_pu"));
    ck_assert_ptr_nonnull(json_object_get(b0, "va_deg"));
    ck_assert_uint_eq(json_object_size(l0), 6);
    const char *lk[] = {"from", "to", "p_kw", "q_kvar", "i_a", "loading_pct"};
    for (int i = 0; i < 6; i++) ck_assert_ptr_nonnull(json_object_get(l0, lk[i]));
    ck_assert(fabs(json_real_value(json_object_get(l0, "p_kw")) - 3917.677) < 0.001);
    ck_assert(fabs(json_real_value(json_object_get(l0, "i_a")) - 210.36) < 0.005);
    json_decref(j);
}
END_TEST

START_TEST(ctl_feeder_flow_inject_changes_the_solution) {
    char *argv[] = {"feeder", "flow", (char *)feeder_path("case33bw"), "--inject", "18:200,33:100", "--json", NULL};
    ck_assert_int_eq(run_ctl(out_buf, sizeof out_buf, 6, argv), 0);
    json_t *j = json_loads(out_buf, 0, NULL);
    ck_assert_ptr_nonnull(j);
    double loss = json_real_value(json_object_get(j, "loss_kw"));
    ck_assert(loss < 202.0 && loss > 100.0);
    json_decref(j);
}
END_TEST

typedef struct {
    const char *name;
    const char *args[10];
    int want;
} cli_row;

static const cli_row CLI[] = {
    {"no verb", {NULL}, 2},
    {"unknown verb", {"fly", NULL}, 2},
    {"flow without dir", {"flow", NULL}, 2},
    {"flow help", {"flow", "--help", NULL}, 0},
    {"limit help", {"limit", "--help", NULL}, 0},
    {"install help", {"install", "--help", NULL}, 0},
    {"flow unknown option", {"flow", "@33", "--bogus", NULL}, 2},
    {"flow missing dir", {"flow", "/nonexistent/feeder", NULL}, 1},
    {"flow unknown inject bus", {"flow", "@33", "--inject", "99:10", NULL}, 1},
    {"flow bad inject", {"flow", "@33", "--inject", "18=10", NULL}, 1},
    {"limit without --to", {"limit", "@33", "--from", "2", NULL}, 2},
    {"limit bad margin", {"limit", "@33", "--from", "2", "--to", "3", "--margin", "90", NULL}, 2},
    {"limit unknown bus", {"limit", "@33", "--from", "2", "--to", "99", NULL}, 1},
    {"install without key", {"install", "@33", "--chain-id", "x", "--nonce", "0", "--out", "/tmp/x", NULL}, 2},
};

START_TEST(ctl_feeder_exit_codes_follow_the_convention) {
    const cli_row *r = &CLI[_i];
    char *argv[12] = {"feeder"};
    int argc = 1;
    for (int i = 0; r->args[i]; i++)
        argv[argc++] = strcmp(r->args[i], "@33") == 0 ? (char *)feeder_path("case33bw") : (char *)r->args[i];
    argv[argc] = NULL;
    int rc = run_ctl(out_buf, sizeof out_buf, argc, argv);
    ck_assert_msg(rc == r->want, "%s: exit %d want %d", r->name, rc, r->want);
}
END_TEST

START_TEST(ctl_feeder_limit_reports_the_binding_line_of_an_end_bus) {
    /* README: a trade that involves bus 18 is usually limited by line 17-18 (200 kVA). */
    char *argv[] = {"feeder", "limit", (char *)feeder_path("case33bw"), "--from", "18", "--to", "2",
                    "--margin", "0", "--json", NULL};
    ck_assert_int_eq(run_ctl(out_buf, sizeof out_buf, 10, argv), 0);
    json_t *j = json_loads(out_buf, 0, NULL);
    ck_assert_ptr_nonnull(j);
    ck_assert_uint_eq(json_object_size(j), 2);
    double kw = json_real_value(json_object_get(j, "max_kw"));
    json_t *b = json_object_get(j, "binding");
    ck_assert_str_eq(json_string_value(json_object_get(b, "kind")), "line");
    ck_assert_int_eq(json_integer_value(json_object_get(b, "from")), 17);
    ck_assert_int_eq(json_integer_value(json_object_get(b, "to")), 18);
    /* A seller at 18 first cancels bus 18's own 90 kW load on the line, then reverses it up to
     * about 200 kVA (less its reactive flow): between 250 and 300 kW. */
    ck_assert_msg(kw > 250 && kw < 300, "max_kw %.3f", kw);
    json_decref(j);

    /* With an accepted trade already using the line, less is left. */
    char path[] = "/tmp/test_feeder_accXXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    const char *acc = "seller,buyer,kw\n18,3,100\n";
    ck_assert_int_eq(write(fd, acc, strlen(acc)), (ssize_t)strlen(acc));
    close(fd);
    char *argv2[] = {"feeder", "limit", (char *)feeder_path("case33bw"), "--from", "18", "--to", "2",
                     "--margin", "0", "--accepted", path, "--json", NULL};
    ck_assert_int_eq(run_ctl(out_buf, sizeof out_buf, 12, argv2), 0);
    unlink(path);
    j = json_loads(out_buf, 0, NULL);
    ck_assert_ptr_nonnull(j);
    double kw2 = json_real_value(json_object_get(j, "max_kw"));
    ck_assert_msg(fabs(kw - kw2 - 100.0) < 3.0, "%.3f then %.3f", kw, kw2);
    json_decref(j);
}
END_TEST

START_TEST(ctl_feeder_install_writes_a_signed_tx_the_chain_accepts) {
    char key[] = "/tmp/test_feeder_keyXXXXXX", out[] = "/tmp/test_feeder_txXXXXXX";
    int fd = mkstemp(key);
    close(fd);
    unlink(key); /* the key file is created with mode 0600 by the writer */
    fd = mkstemp(out);
    close(fd);
    ledger_keyfile kf = {0};
    ck_assert_int_eq(ledger_secp_keygen(kf.secp_sec, kf.secp_pub), LEDGER_OK);
    ck_assert_int_eq(ledger_keyfile_write(key, &kf), LEDGER_OK);
    char *argv[] = {"feeder", "install", (char *)feeder_path("case33bw"), "--key", key, "--chain-id", "tem-test",
                    "--nonce", "7", "--out", out, "--json", NULL};
    ck_assert_int_eq(run_ctl(out_buf, sizeof out_buf, 12, argv), 0);
    json_t *j = json_loads(out_buf, 0, NULL);
    ck_assert_ptr_nonnull(j);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "buses")), 33);
    FILE *fp = fopen(out, "rb");
    ck_assert_ptr_nonnull(fp);
    static uint8_t tx[1 << 20];
    size_t n = fread(tx, 1, sizeof tx, fp);
    fclose(fp);
    ledger_tx_limits lim = {.chain_id = "tem-test", .max_tx_bytes = 4096, .max_admin_tx_bytes = 4u << 20};
    ledger_tx t = {0};
    ck_assert_int_eq(ledger_tx_decode(tx, n, &lim, &t), LEDGER_OK);
    ck_assert_int_eq(ledger_tx_verify(&t), LEDGER_OK);
    ck_assert_int_eq(t.body->nonce, 7);
    ck_assert_mem_eq(t.body->signer.data, kf.secp_pub, 33);
    ck_assert_int_eq(t.body->kind_case, TEM__V1__TX_BODY__KIND_INSTALL_FEEDER);
    ck_assert_uint_eq(t.body->install_feeder->n_buses, 33);
    ck_assert_uint_eq(t.body->install_feeder->margin_ppm, CTL_FEEDER_MARGIN_PPM_DEFAULT);
    char hx[65];
    tem_hex(hx, t.body->install_feeder->source_hash.data, 32);
    ck_assert_str_eq(hx, json_string_value(json_object_get(j, "source_hash")));
    tem_hex(hx, t.txid, 32);
    ck_assert_str_eq(hx, json_string_value(json_object_get(j, "txid")));

    /* The chain executes it: the model is installed and checks start to bind. */
    ledger_state *st;
    ck_assert_int_eq(ledger_state_new(&st), LEDGER_OK);
    ledger_arena arena = {0};
    ledger_block_ctx b = {.height = 1, .arena = &arena};
    Tem__V1__Receipt rc = TEM__V1__RECEIPT__INIT;
    ck_assert_int_eq(grid_exec_install(st, &b, &t, &rc), LEDGER_OK);
    ck_assert_int_eq(rc.code, 0);
    ck_assert(grid_installed(st));
    grid_match_result r;
    ck_assert_int_eq(grid_check_match(st, 1, 18, 2, 1000000, 900000, &r), GRID_OK);
    ck_assert_uint_lt(r.allowed_wh, 1000000);
    ck_assert_str_eq(r.binding.text, "line 17-18");
    ledger_state_free(st);
    ledger_arena_reset(&arena);
    ledger_tx_free(&t);
    json_decref(j);
    unlink(key);
    unlink(out);
}
END_TEST

/* The per-slot base case file: profile, generation and overrides reach the InstallFeeder, the
 * chain answers per slot, and a bad row is an error naming the file line. */
START_TEST(feeder_base_case_file_gives_each_slot_its_own_answer) {
    ctl_feeder f;
    char err[256];
    ck_assert_int_eq(ctl_feeder_load(&f, feeder_path("case33bw"), err, sizeof err), GRID_OK);
    char path[] = "/tmp/tem_base_case_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    const char *txt = "# night, midday, evening\nprofile,0,60,0\nprofile,1,50,100\nprofile,2,120,0\n"
                      "gen,18,300\nslot,7,18,-50,0\n";
    ck_assert_int_eq(write(fd, txt, strlen(txt)), (int)strlen(txt));
    close(fd);
    ctl_feeder_base bc;
    ck_assert_msg(ctl_feeder_base_load(&f, path, &bc, err, sizeof err) == GRID_OK, "%s", err);
    ck_assert_uint_eq(bc.n_prof, 3);
    ck_assert_uint_eq(bc.load_ppm[2], 1200000);
    ck_assert_uint_eq(bc.gen_ppm[1], 1000000);
    ck_assert_uint_eq(bc.n_over, 1);
    double pd[64], qd[64];
    ctl_feeder_base_slot(&f, &bc, 4, pd, qd); /* slot 4 = entry 1: half the loads, all the PV */
    int64_t b18 = ctl_feeder_bus_index(&f, 18);
    ck_assert(fabs(pd[b18] - (f.buses[b18].pd_kw * 0.5 - 300)) < 1e-9);
    ctl_feeder_base_slot(&f, &bc, 7, pd, qd);
    ck_assert(fabs(pd[b18] + 50) < 1e-9);
    ctl_feeder_install in;
    ck_assert_int_eq(ctl_feeder_install_build(&f, 0, &in, err, sizeof err), GRID_OK);
    ck_assert_int_eq(ctl_feeder_install_set_base(&in, &f, &bc), GRID_OK);
    ck_assert_uint_eq(in.msg.n_load_profile_ppm, 3);
    ck_assert_uint_eq(in.msg.n_overrides, 1);
    ck_assert_uint_eq(in.msg.overrides[0]->slot, 7);
    ck_assert_int_eq(in.msg.overrides[0]->buses[0]->p_w, -50000);
    uint8_t *blob;
    size_t len;
    ck_assert_msg(grid_model_compile(&in.msg, UINT32_MAX, &blob, &len, err, sizeof err) == GRID_OK, "%s", err);
    /* 2 -> 18 in the evening peak (bus 18 below its band already: refused) and at night. */
    grid_match_result night, evening, midday;
    ck_assert_int_eq(grid_model_check(blob, len, NULL, 0, 2, 18, 1000000, 3600000, &night), GRID_OK);
    ck_assert_int_eq(grid_model_check(blob, len, NULL, 2, 2, 18, 1000000, 3600000, &evening), GRID_OK);
    ck_assert_int_eq(grid_model_check(blob, len, NULL, 1, 2, 18, 1000000, 3600000, &midday), GRID_OK);
    ck_assert_uint_gt(night.allowed_wh, 50000);
    ck_assert_uint_eq(evening.allowed_wh, 0);
    ck_assert_int_eq(evening.binding.kind, GRID_BIND_BUS); /* a bus already below its band */
    ck_assert_uint_gt(midday.allowed_wh, night.allowed_wh); /* PV at 18 feeds the buyer locally */
    tem_free(blob);
    ctl_feeder_install_free(&in);
    ctl_feeder_base_free(&bc);
    /* A bad row names its line. */
    fd = open(path, O_WRONLY | O_TRUNC);
    const char *bad = "profile,0,60,0\nprofile,2,50,100\n";
    ck_assert_int_eq(write(fd, bad, strlen(bad)), (int)strlen(bad));
    close(fd);
    ck_assert_int_eq(ctl_feeder_base_load(&f, path, &bc, err, sizeof err), GRID_EPARSE);
    ck_assert_msg(strstr(err, "line 2"), "%s", err);
    fd = open(path, O_WRONLY | O_TRUNC);
    const char *unk = "gen,99,10\n";
    ck_assert_int_eq(write(fd, unk, strlen(unk)), (int)strlen(unk));
    close(fd);
    ck_assert_int_eq(ctl_feeder_base_load(&f, path, &bc, err, sizeof err), GRID_EUNKNOWNBUS);
    unlink(path);
    ctl_feeder_free(&f);
}
END_TEST

static Suite *feeder_suite(void) {
    Suite *s = suite_create("feeder");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    int nrefs = (int)(sizeof REFS / sizeof REFS[0]);
    tcase_add_loop_test(tc, feeder_flow_matches_every_readme_reference, 0, nrefs);
    tcase_add_test(tc, feeder_flow_case33bw_meets_the_issue_figures);
    tcase_add_test(tc, feeder_case533_reverse_lines_and_exports_are_handled);
    tcase_add_loop_test(tc, feeder_bad_feeder_gives_an_error_naming_the_line_or_bus, 0,
                        (int)(sizeof BAD / sizeof BAD[0]));
    tcase_add_test(tc, feeder_nonconverging_case_is_an_error_not_a_result);
    tcase_add_test(tc, feeder_flow_shuffled_and_renumbered_feeder_gives_the_same_answer);
    tcase_add_test(tc, feeder_generation_at_the_far_end_cuts_losses_and_lifts_voltage);
    tcase_add_loop_test(tc, feeder_install_message_compiles_on_every_feeder, 0, nrefs);
    tcase_add_test(tc, ctl_feeder_flow_json_has_exactly_the_issue_keys);
    tcase_add_test(tc, ctl_feeder_flow_inject_changes_the_solution);
    tcase_add_loop_test(tc, ctl_feeder_exit_codes_follow_the_convention, 0, (int)(sizeof CLI / sizeof CLI[0]));
    tcase_add_test(tc, ctl_feeder_limit_reports_the_binding_line_of_an_end_bus);
    tcase_add_test(tc, ctl_feeder_install_writes_a_signed_tx_the_chain_accepts);
    tcase_add_test(tc, feeder_base_case_file_gives_each_slot_its_own_answer);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    const char *env = getenv("TEM_FEEDERS");
    snprintf(feeders_dir, sizeof feeders_dir, "%s", env && *env ? env : "../shared/data/feeders");
    SRunner *sr = srunner_create(feeder_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
