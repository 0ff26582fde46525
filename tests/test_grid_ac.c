/* test_grid_ac.c: the on-chain grid check (contracts/grid_model.c, integers, the chain's code)
 * against the independent floating-point AC power flow of node/pf (the reference), on feeders the
 * check was never tuned on: random radial feeders of 30-600 buses with scattered bus numbers, both
 * line orientations and shuffled files; long rural feeders with high R/X and heavy PV export;
 * case69, case141 and case533mt_hi. At margin 0, for random and for greedy worst-first trade
 * sequences, the AC flow with every accepted trade of the slot (and the slot's base case) must
 * keep every line within 0.1 % of its rating and every bus within 0.0005 pu of its band, and a
 * single trade must get at least 97 % of the AC maximum found by bisection on the reference.
 * Also: per-slot base cases (profiles), signed loss factors against the reference's marginal
 * losses, splitting never pays less, and identical answers on every build.
 *
 * GRID_AC_HASH is the determinism test's expected hash (printed by the test).
 *
 * Seeds: GRID_AC_SEEDS random feeders of each generated family (fewer under the sanitizers, which
 * rerun every unit test); TEM_GRID_AC_SEEDS overrides. */
#include <check.h>
#include <complex.h>
#include <inttypes.h>
#include <math.h>

#include "node/pf/feeder.h"

#if defined(__SANITIZE_ADDRESS__)
#define GRID_AC_SEEDS 2
#else
#define GRID_AC_SEEDS 10
#endif
#define SLOT_MS 900000 /* 15 min: 1 Wh = 4 W */
#define I_ _Complex_I
#define GRID_AC_HASH 0x3ce492b15ad9241cull
#define LINE_TOL_PCT 0.1
#define V_TOL_PU 0.0005
#define ACCEPT_MIN 0.97

static char feeders_dir[1024];
static int seeds(void) {
    const char *e = getenv("TEM_GRID_AC_SEEDS");
    return e && atoi(e) > 0 ? atoi(e) : GRID_AC_SEEDS;
}

static uint64_t rs;
static uint64_t rng(void) {
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return rs;
}
static double urand(double a, double b) { return a + (b - a) * (double)(rng() >> 11) / 9007199254740992.0; }

/* ------------------------------------------------------------------ the rig */

typedef struct {
    ctl_feeder f;
    ctl_feeder_install in;
    uint8_t *blob, *slot;
    size_t len, slot_bytes;
    ctl_feeder_flow fl;
    double *inj;     /* kW per bus index: accepted trades */
    double *vb0;     /* AC reference before the current trade, per bus / line, for "no worse" */
    double *lb0;
    uint64_t slot_no; /* the slot the sequences trade in (per-slot test) */
    char name[64];
} rig;

typedef struct {
    double line_pct; /* worst loading above 100 %, in % of the rating */
    double v_pu;     /* worst voltage outside the band, pu */
    uint32_t line, bus;
} violation;

static void rig_compile(rig *r) {
    char err[256];
    ck_assert_msg(ctl_feeder_install_build(&r->f, 0, &r->in, err, sizeof err) == GRID_OK, "%s: %s", r->name, err);
}

static void rig_finish(rig *r) {
    char err[256];
    tem_free(r->blob);
    r->blob = NULL;
    ck_assert_msg(grid_model_compile(&r->in.msg, UINT32_MAX, &r->blob, &r->len, err, sizeof err) == GRID_OK,
                  "%s: %s", r->name, err);
    r->slot_bytes = grid_model_slot_bytes(r->blob, r->len);
    tem_free(r->slot);
    r->slot = tem_calloc(1, r->slot_bytes);
    if (!r->fl.work) ck_assert_int_eq(ctl_feeder_flow_init(&r->fl, &r->f), GRID_OK);
    if (!r->inj) {
        r->inj = calloc(r->f.n_buses, sizeof *r->inj);
        r->vb0 = calloc(r->f.n_buses, sizeof *r->vb0);
        r->lb0 = calloc(r->f.n_lines + 1, sizeof *r->lb0);
    }
}

static void rig_close(rig *r) {
    free(r->inj);
    free(r->vb0);
    free(r->lb0);
    tem_free(r->slot);
    tem_free(r->blob);
    ctl_feeder_flow_free(&r->fl);
    ctl_feeder_install_free(&r->in);
    ctl_feeder_free(&r->f);
}

static void rig_reset(rig *r) {
    memset(r->slot, 0, r->slot_bytes);
    memset(r->inj, 0, sizeof(double) * r->f.n_buses);
}

static bool flow(rig *r) {
    char err[256];
    return ctl_feeder_flow_run(&r->f, r->inj, 1e-10, false, &r->fl, err, sizeof err) == GRID_OK;
}

static violation ac_violation(rig *r) {
    ck_assert_msg(flow(r), "%s: reference power flow failed", r->name);
    violation v = {-INFINITY, -INFINITY, 0, 0};
    for (uint32_t l = 0; l < r->f.n_lines; l++) {
        double over = r->fl.loading_pct[l] - 100.0;
        if (over > v.line_pct) v.line_pct = over, v.line = l;
    }
    for (uint32_t b = 0; b < r->f.n_buses; b++) {
        if (r->f.buses[b].slack) continue;
        double over = fmax(r->f.buses[b].vmin_pu - r->fl.vm_pu[b], r->fl.vm_pu[b] - r->f.buses[b].vmax_pu);
        if (over > v.v_pu) v.v_pu = over, v.bus = b;
    }
    return v;
}

static double wh_to_kw(uint64_t wh) { return (double)wh * 3600000.0 / SLOT_MS / 1000.0; }
static uint32_t id_of(rig *r, uint32_t idx) { return r->f.buses[idx].id; }

/* The reference's answer for the trade a -> b on top of r->inj: every line and bus within its
 * limit, or no worse than before the trade (the chain's rule for a base case already out). */
static void ref_before(rig *r) {
    ck_assert(flow(r));
    for (uint32_t l = 0; l < r->f.n_lines; l++) r->lb0[l] = r->fl.loading_pct[l];
    for (uint32_t b = 0; b < r->f.n_buses; b++) r->vb0[b] = r->fl.vm_pu[b];
}
static bool ref_ok(rig *r, uint32_t a, uint32_t b, uint64_t q) {
    double kw = wh_to_kw(q);
    r->inj[a] += kw;
    r->inj[b] -= kw;
    bool ok = flow(r);
    r->inj[a] -= kw;
    r->inj[b] += kw;
    if (!ok) return false;
    for (uint32_t l = 0; l < r->f.n_lines; l++)
        if (r->fl.loading_pct[l] > fmax(100.0, r->lb0[l]) + 1e-9) return false;
    for (uint32_t k = 0; k < r->f.n_buses; k++) {
        if (r->f.buses[k].slack) continue;
        double v = r->fl.vm_pu[k];
        if (v < fmin(r->f.buses[k].vmin_pu, r->vb0[k]) - 1e-12 || v > fmax(r->f.buses[k].vmax_pu, r->vb0[k]) + 1e-12)
            return false;
    }
    return true;
}
/* Largest feasible Wh up to cap, by bisection to 1 Wh on the reference. */
static uint64_t ref_max(rig *r, uint32_t a, uint32_t b, uint64_t cap) {
    ref_before(r);
    if (ref_ok(r, a, b, cap)) return cap;
    uint64_t lo = 0, hi = cap;
    while (hi - lo > 1) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (ref_ok(r, a, b, mid))
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* The chain's check and commit of a trade (bus indexes); returns what was accepted. */
static uint64_t chain_trade(rig *r, uint64_t slot, uint32_t a, uint32_t b, uint64_t qty) {
    grid_match_result m;
    ck_assert_int_eq(grid_model_check(r->blob, r->len, r->slot, slot, id_of(r, a), id_of(r, b), qty, SLOT_MS, &m),
                     GRID_OK);
    ck_assert_uint_eq(m.allowed_wh + m.curtailed_wh, qty);
    if (m.allowed_wh) {
        ck_assert_int_eq(grid_model_commit(r->blob, r->len, r->slot, id_of(r, a), id_of(r, b), m.allowed_wh, SLOT_MS),
                         GRID_OK);
        r->inj[a] += wh_to_kw(m.allowed_wh);
        r->inj[b] -= wh_to_kw(m.allowed_wh);
    }
    return m.allowed_wh;
}

/* ------------------------------------------------------------------ feeders */

enum { FAM_RANDOM, FAM_RURAL };

/* Writes the generated feeder's CSV pair and parses it. Loads are scaled down until the base
 * case sits inside its band, ratings follow the base flows (1.1x to 2.5x, at least 30 kVA). */
static void gen_feeder(rig *r, int fam, uint64_t seed) {
    memset(r, 0, sizeof *r);
    rs = seed * 0x9e3779b97f4a7c15ull + 7;
    uint32_t n = fam == FAM_RANDOM ? 30 + (uint32_t)(rng() % 571) : 80 + (uint32_t)(rng() % 221);
    snprintf(r->name, sizeof r->name, "%s seed %" PRIu64 " (%u buses)", fam == FAM_RANDOM ? "random" : "rural",
             seed, n);
    uint32_t *id = malloc(sizeof *id * n), *par = malloc(sizeof *par * n), *perm = malloc(sizeof *perm * n);
    double *pd = malloc(sizeof *pd * n), *qd = malloc(sizeof *qd * n), *rr = malloc(sizeof *rr * n),
           *xx = malloc(sizeof *xx * n), *rate = malloc(sizeof *rate * n);
    bool *flip = malloc(sizeof *flip * n);
    /* Scattered, unique bus numbers, in no particular order. */
    uint32_t stride = 3 + (uint32_t)(rng() % 40), base = 1 + (uint32_t)(rng() % 5000);
    for (uint32_t i = 0; i < n; i++) id[i] = base + i * stride + (uint32_t)(rng() % stride);
    for (uint32_t i = n - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(rng() % (i + 1)), t = id[i];
        id[i] = id[j];
        id[j] = t;
    }
    double kv = fam == FAM_RANDOM ? 12.66 : 11.0;
    double vmin = fam == FAM_RANDOM ? (rng() % 2 ? 0.90 : 0.93) : 0.94, vmax = fam == FAM_RANDOM ? 1.05 : 1.06;
    for (uint32_t i = 0; i < n; i++) {
        par[i] = i == 0 ? 0 : (fam == FAM_RURAL ? (rng() % 10 ? i - 1 : (uint32_t)(rng() % i))
                                                : (rng() % 10 < 7 ? i - 1 : (uint32_t)(rng() % i)));
        if (fam == FAM_RANDOM) {
            rr[i] = urand(0.05, 0.5);
            xx[i] = rr[i] * urand(0.5, 1.5);
            pd[i] = rng() % 5 ? urand(0, 120) : -urand(0, 80);
            qd[i] = fabs(pd[i]) * urand(0.2, 0.6);
        } else {
            rr[i] = urand(0.3, 1.2);
            xx[i] = rr[i] * urand(0.2, 0.4);
            pd[i] = rng() % 2 ? urand(2, 20) : -urand(20, 80); /* heavy PV export */
            qd[i] = fabs(pd[i]) * urand(0.0, 0.3);
        }
        flip[i] = rng() % 2;
        perm[i] = i;
        rate[i] = 1e6;
    }
    for (uint32_t i = n - 1; i > 1; i--) {
        uint32_t j = 1 + (uint32_t)(rng() % i), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    size_t cap = 128 * (size_t)n + 256;
    char *bt = malloc(cap), *lt = malloc(cap);
    for (int pass = 0; pass < 40; pass++) {
        size_t bl = (size_t)snprintf(bt, cap, "bus,type,pd_kw,qd_kvar,vmin_pu,vmax_pu,base_kv\n");
        for (uint32_t k = 0; k < n; k++) {
            uint32_t i = (k * 7919u) % n; /* buses in a scrambled order too */
            bl += (size_t)snprintf(bt + bl, cap - bl, "%u,%s,%.4f,%.4f,%.2f,%.2f,%.2f\n", id[i], i == 0 ? "slack" : "pq",
                                   i == 0 ? 0.0 : pd[i], i == 0 ? 0.0 : qd[i], vmin, vmax, kv);
        }
        size_t ll = (size_t)snprintf(lt, cap, "from,to,r_ohm,x_ohm,rate_kva\n");
        for (uint32_t k = 1; k < n; k++) {
            uint32_t i = perm[k];
            uint32_t a = flip[i] ? id[i] : id[par[i]], b = flip[i] ? id[par[i]] : id[i];
            ll += (size_t)snprintf(lt + ll, cap - ll, "%u,%u,%.5f,%.5f,%.3f\n", a, b, rr[i], xx[i], rate[i]);
        }
        ctl_feeder_free(&r->f);
        char err[256];
        ck_assert_msg(ctl_feeder_parse(&r->f, bt, bl, lt, ll, err, sizeof err) == GRID_OK, "%s", err);
        ctl_feeder_flow fl;
        ck_assert_int_eq(ctl_feeder_flow_init(&fl, &r->f), GRID_OK);
        bool ok = ctl_feeder_flow_run(&r->f, NULL, 1e-10, false, &fl, err, sizeof err) == GRID_OK;
        double lo = INFINITY, hi = -INFINITY;
        for (uint32_t b = 0; ok && b < n; b++) lo = fmin(lo, fl.vm_pu[b]), hi = fmax(hi, fl.vm_pu[b]);
        bool in_band = ok && lo > vmin + 0.005 && hi < vmax - 0.005;
        if (in_band && rate[1] > 1e5) {
            /* Ratings from the base flows, then one more pass to write them. */
            for (uint32_t l = 0; l < r->f.n_lines; l++) {
                uint32_t i = perm[l + 1];
                double s = fmax(hypot(fl.p_par_kw[l], fl.q_par_kvar[l]), hypot(fl.p_child_kw[l], fl.q_child_kvar[l]));
                rate[i] = fmax(30.0, s * urand(1.1, 2.5));
            }
            ctl_feeder_flow_free(&fl);
            continue;
        }
        ctl_feeder_flow_free(&fl);
        if (in_band) break;
        for (uint32_t i = 0; i < n; i++) pd[i] *= 0.7, qd[i] *= 0.7;
        ck_assert_msg(pass < 39, "%s: no base case inside the band", r->name);
    }
    free(bt);
    free(lt);
    free(id);
    free(par);
    free(perm);
    free(pd);
    free(qd);
    free(rr);
    free(xx);
    free(rate);
    free(flip);
    rig_compile(r);
    rig_finish(r);
}

static void load_feeder(rig *r, const char *name) {
    memset(r, 0, sizeof *r);
    char dir[2048], err[256];
    snprintf(dir, sizeof dir, "%s/%s", feeders_dir, name);
    snprintf(r->name, sizeof r->name, "%s", name);
    ck_assert_msg(ctl_feeder_load(&r->f, dir, err, sizeof err) == GRID_OK, "%s", err);
    rig_compile(r);
    rig_finish(r);
}

/* ------------------------------------------------------------------ Newton-Raphson cross-check
 * A polar Newton-Raphson power flow (dense Jacobian, MATPOWER's dSbus/dV), independent of the
 * sweep, for feeders up to NR_BUSES_MAX buses: the reference's voltages must agree with it. */
#define NR_BUSES_MAX 160
static double nr_worst = 0;

static double nr_check(rig *r) {
    const ctl_feeder *f = &r->f;
    const int n = (int)f->n_buses;
    if (n > NR_BUSES_MAX) return 0;
    double complex *Y = calloc((size_t)n * n, sizeof *Y), *V = malloc(sizeof *V * n), *S = malloc(sizeof *S * n),
                   *Ib = malloc(sizeof *Ib * n), *dVa = malloc(sizeof *dVa * n * n), *dVm = malloc(sizeof *dVm * n * n);
    int *pq = malloc(sizeof *pq * n), m = 0;
    for (uint32_t l = 0; l < f->n_lines; l++) {
        const ctl_feeder_line *ln = &f->lines[l];
        double zb = f->buses[ln->f].base_kv * f->buses[ln->f].base_kv;
        double complex y = 1.0 / ((ln->r_ohm + I_ * ln->x_ohm) / zb);
        Y[ln->f * n + ln->f] += y;
        Y[ln->t * n + ln->t] += y;
        Y[ln->f * n + ln->t] -= y;
        Y[ln->t * n + ln->f] -= y;
    }
    for (int b = 0; b < n; b++) {
        V[b] = 1.0;
        S[b] = -((f->buses[b].pd_kw - r->inj[b]) + I_ * f->buses[b].qd_kvar) / 1000.0; /* injections, pu */
        if (!f->buses[b].slack) pq[m++] = b;
    }
    const int k = 2 * m;
    double *J = malloc(sizeof *J * k * k), *F = malloc(sizeof *F * k);
    bool ok = false;
    for (int it = 0; it < 30 && !ok; it++) {
        for (int i = 0; i < n; i++) {
            Ib[i] = 0;
            for (int j = 0; j < n; j++) Ib[i] += Y[i * n + j] * V[j];
        }
        double worst = 0;
        for (int a = 0; a < m; a++) {
            double complex mis = V[pq[a]] * conj(Ib[pq[a]]) - S[pq[a]];
            F[a] = creal(mis);
            F[m + a] = cimag(mis);
            worst = fmax(worst, cabs(mis));
        }
        if (worst < 1e-9) { /* pu power; admittances reach 1e5 pu, so rounding sits near 1e-11 */
            ok = true;
            break;
        }
        /* dS/dVa = j diag(V) conj(diag(I) - Y diag(V)); dS/dVm = diag(V) conj(Y diag(V/|V|)) +
         * conj(diag(I)) diag(V/|V|) */
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                double complex yv = Y[i * n + j] * V[j], vn = V[j] / cabs(V[j]);
                dVa[i * n + j] = I_ * V[i] * conj((i == j ? Ib[i] : 0) - yv);
                dVm[i * n + j] = V[i] * conj(Y[i * n + j] * vn) + (i == j ? conj(Ib[i]) * vn : 0);
            }
        for (int a = 0; a < m; a++)
            for (int b = 0; b < m; b++) {
                double complex da = dVa[pq[a] * n + pq[b]], dm = dVm[pq[a] * n + pq[b]];
                J[a * k + b] = creal(da);
                J[a * k + m + b] = creal(dm);
                J[(m + a) * k + b] = cimag(da);
                J[(m + a) * k + m + b] = cimag(dm);
            }
        /* Gaussian elimination with partial pivoting: J dx = -F */
        for (int c = 0; c < k; c++) {
            int p = c;
            for (int i = c + 1; i < k; i++)
                if (fabs(J[i * k + c]) > fabs(J[p * k + c])) p = i;
            if (p != c) {
                for (int j = 0; j < k; j++) {
                    double t = J[c * k + j];
                    J[c * k + j] = J[p * k + j];
                    J[p * k + j] = t;
                }
                double t = F[c];
                F[c] = F[p];
                F[p] = t;
            }
            for (int i = c + 1; i < k; i++) {
                double q = J[i * k + c] / J[c * k + c];
                if (q == 0) continue;
                for (int j = c; j < k; j++) J[i * k + j] -= q * J[c * k + j];
                F[i] -= q * F[c];
            }
        }
        for (int c = k - 1; c >= 0; c--) {
            double acc = F[c];
            for (int j = c + 1; j < k; j++) acc -= J[c * k + j] * F[j];
            F[c] = acc / J[c * k + c];
        }
        double step = 0;
        for (int a = 0; a < m; a++) {
            double va = carg(V[pq[a]]) - F[a], vm = cabs(V[pq[a]]) - F[m + a];
            V[pq[a]] = vm * cexp(I_ * va);
            step = fmax(step, fmax(fabs(F[a]), fabs(F[m + a])));
        }
        /* converged to rounding: case141's 1e-5 ohm line (y ~ 1e7 pu) leaves steps near 2e-11 */
        if (step < 1e-10) ok = true;
    }
    ck_assert_msg(ok, "%s: Newton-Raphson did not converge", r->name);
    double d = 0;
    for (int b = 0; b < n; b++) d = fmax(d, fabs(cabs(V[b]) - r->fl.vm_pu[b]));
    free(Y);
    free(V);
    free(S);
    free(Ib);
    free(dVa);
    free(dVm);
    free(pq);
    free(J);
    free(F);
    if (d > nr_worst) nr_worst = d;
    ck_assert_msg(d < 1e-8, "%s: sweep and Newton-Raphson differ by %g pu", r->name, d);
    return d;
}

/* ------------------------------------------------------------------ the properties */

typedef struct {
    double worst_line, worst_v, worst_accept;
    long trades, curtailed, singles;
    char line_at[160], v_at[160], accept_at[160];
} tally;

static void tally_init(tally *t) {
    memset(t, 0, sizeof *t);
    t->worst_line = t->worst_v = -INFINITY;
    t->worst_accept = INFINITY;
}

/* The chain's own fixed-point flow against the reference, bus by bus (docs/grid.md, "Error
 * budget"): within 1e-5 pu (measured 2.3e-6 over 40 seeds). The generated files carry loads to
 * 0.1 W, which the message rounds to the W: that is nearly all of it, summed over rural paths of
 * up to 2 pu resistance (with whole-watt loads the worst is 8e-8 pu). */
static double fp_worst = 0;
static void fixed_point_check(rig *r) {
    uint32_t n = grid_model_buses(r->blob, r->len);
    int64_t *v = malloc(sizeof *v * n);
    ck_assert_int_eq(grid_model_voltages(r->blob, r->len, r->slot, r->slot_no, SLOT_MS, v), GRID_OK);
    for (uint32_t k = 0; k < n; k++) {
        int64_t b = ctl_feeder_bus_index(&r->f, grid_model_bus_id(r->blob, r->len, k));
        double d = fabs((double)v[k] / 1e9 - r->fl.vm_pu[b]);
        if (d > fp_worst) fp_worst = d;
        ck_assert_msg(d < 1e-5, "%s: bus %u fixed point %.9f, reference %.9f", r->name, r->f.buses[b].id,
                      (double)v[k] / 1e9, r->fl.vm_pu[b]);
    }
    free(v);
}

static void tally_state(tally *t, rig *r, const char *what) {
    violation v = ac_violation(r);
    fixed_point_check(r); /* the chain's integer flow against the reference */
    nr_check(r);          /* the reference itself, against Newton-Raphson (small feeders) */
    if (v.line_pct > t->worst_line) {
        t->worst_line = v.line_pct;
        snprintf(t->line_at, sizeof t->line_at, "%s, %s, line %u-%u", r->name, what, r->f.lines[v.line].from,
                 r->f.lines[v.line].to);
    }
    if (v.v_pu > t->worst_v) {
        t->worst_v = v.v_pu;
        snprintf(t->v_at, sizeof t->v_at, "%s, %s, bus %u", r->name, what, r->f.buses[v.bus].id);
    }
}

/* A random quantity: from small to several times what any line carries. */
static uint64_t rand_qty(rig *r) {
    double tot = 0;
    for (uint32_t b = 0; b < r->f.n_buses; b++) tot += fabs(r->f.buses[b].pd_kw);
    double kw = tot * urand(0.01, 0.6);
    return 1 + (uint64_t)(kw * 1000.0 * SLOT_MS / 3600000.0);
}

static void random_pair(rig *r, uint32_t *a, uint32_t *b) {
    do {
        *a = (uint32_t)(rng() % r->f.n_buses);
        *b = (uint32_t)(rng() % r->f.n_buses);
    } while (*a == *b);
}

/* Random sequences of up to 8 trades in one slot, then greedy worst-first ones: each step tries
 * several candidate trades (what the chain accepts of each) and commits the one that leaves the
 * AC flow closest to (or beyond) a limit. Also single trades against the reference's maximum. */
static void exercise(rig *r, tally *t, int seqs, int greedy, int singles) {
    char what[64];
    for (int s = 0; s < seqs; s++) {
        rig_reset(r);
        int len = 1 + (int)(rng() % 8);
        for (int k = 0; k < len; k++) {
            uint32_t a, b;
            random_pair(r, &a, &b);
            uint64_t q = rand_qty(r), got = chain_trade(r, 0, a, b, q);
            t->trades++;
            t->curtailed += got < q;
        }
        snprintf(what, sizeof what, "random sequence %d", s);
        tally_state(t, r, what);
    }
    for (int s = 0; s < greedy; s++) {
        rig_reset(r);
        for (int step = 0; step < 6; step++) {
            double best = -INFINITY;
            uint32_t ba = 0, bb = 0;
            uint64_t bq = 0;
            for (int c = 0; c < 6; c++) {
                uint32_t a, b;
                random_pair(r, &a, &b);
                uint64_t q = rand_qty(r) * 4;
                grid_match_result m;
                ck_assert_int_eq(grid_model_check(r->blob, r->len, r->slot, 0, id_of(r, a), id_of(r, b), q, SLOT_MS, &m),
                                 GRID_OK);
                r->inj[a] += wh_to_kw(m.allowed_wh);
                r->inj[b] -= wh_to_kw(m.allowed_wh);
                violation v = ac_violation(r);
                r->inj[a] -= wh_to_kw(m.allowed_wh);
                r->inj[b] += wh_to_kw(m.allowed_wh);
                /* closeness to the nearest limit: a line's % and 200 x a voltage's pu, both
                 * maximised (0 = on a limit) */
                double score = fmax(v.line_pct, 200.0 * v.v_pu);
                if (score > best) best = score, ba = a, bb = b, bq = q;
            }
            uint64_t got = chain_trade(r, 0, ba, bb, bq);
            t->trades++;
            t->curtailed += got < bq;
        }
        snprintf(what, sizeof what, "greedy sequence %d", s);
        tally_state(t, r, what);
    }
    /* Single trades on the slot's base case. (On a slot whose earlier trades left some limit
     * exactly at its bound, the AC maximum of a trade that barely moves it hangs on the last
     * 1e-7 pu: no meaningful ratio. Sequences above cover loaded slots for safety.) */
    for (int s = 0; s < singles; s++) {
        rig_reset(r);
        uint32_t a, b;
        random_pair(r, &a, &b);
        uint64_t q = rand_qty(r) * 3;
        grid_match_result m;
        ck_assert_int_eq(grid_model_check(r->blob, r->len, r->slot, 0, id_of(r, a), id_of(r, b), q, SLOT_MS, &m),
                         GRID_OK);
        uint64_t ref = ref_max(r, a, b, q);
        if (getenv("TEM_GRID_AC_VERBOSE"))
            fprintf(stderr, "single %s %u -> %u qty %" PRIu64 ": chain %" PRIu64 " (%s) ref %" PRIu64 "\n", r->name,
                    id_of(r, a), id_of(r, b), q, m.allowed_wh, m.binding.text, ref);
        if (ref < 40) continue; /* a few Wh: the 1 Wh grain and the guards dominate */
        double acc = (double)m.allowed_wh / (double)ref;
        t->singles++;
        if (acc < t->worst_accept) {
            t->worst_accept = acc;
            snprintf(t->accept_at, sizeof t->accept_at, "%s, %u -> %u: %" PRIu64 " of %" PRIu64 " Wh", r->name,
                     id_of(r, a), id_of(r, b), m.allowed_wh, ref);
        }
    }
}

static void tally_assert(tally *t, const char *family) {
    fprintf(stderr,
            "grid_ac %s: %ld trades (%ld curtailed), %ld single trades; worst line %+.4f %% of rating (%s); worst "
            "voltage %+.6f pu (%s); worst single-trade acceptance %.4f (%s)\n",
            family, t->trades, t->curtailed, t->singles, t->worst_line, t->line_at, t->worst_v, t->v_at,
            t->worst_accept, t->accept_at);
    ck_assert_msg(t->worst_line <= LINE_TOL_PCT, "%s: line over by %.4f %% of its rating", t->line_at, t->worst_line);
    ck_assert_msg(t->worst_v <= V_TOL_PU, "%s: voltage out by %.6f pu", t->v_at, t->worst_v);
    ck_assert_msg(t->singles == 0 || t->worst_accept >= ACCEPT_MIN, "%s: accepted %.4f of the AC maximum",
                  t->accept_at, t->worst_accept);
    ck_assert_int_gt(t->curtailed, t->trades / 10); /* the limits are exercised */
    fprintf(stderr, "grid_ac %s: fixed point vs reference, worst %.2e pu; sweep vs Newton-Raphson, worst %.2e pu\n",
            family, fp_worst, nr_worst);
}

START_TEST(grid_ac_random_radial_feeders_are_safe_and_accept_97_percent) {
    tally t;
    tally_init(&t);
    for (int s = 0; s < seeds(); s++) {
        rig r;
        gen_feeder(&r, FAM_RANDOM, 1000 + (uint64_t)s);
        exercise(&r, &t, 12, 2, 8);
        rig_close(&r);
    }
    tally_assert(&t, "random radial");
}
END_TEST

START_TEST(grid_ac_rural_pv_feeders_are_safe_and_accept_97_percent) {
    tally t;
    tally_init(&t);
    for (int s = 0; s < seeds(); s++) {
        rig r;
        gen_feeder(&r, FAM_RURAL, 2000 + (uint64_t)s);
        exercise(&r, &t, 12, 2, 8);
        rig_close(&r);
    }
    tally_assert(&t, "rural PV");
}
END_TEST

static const char *const CASES[] = {"case69", "case141", "case533mt_hi"};

START_TEST(grid_ac_public_feeders_are_safe_and_accept_97_percent) {
    tally t;
    tally_init(&t);
    rig r;
    load_feeder(&r, CASES[_i]);
    rs = 77 + (uint64_t)_i;
    int k = seeds();
    exercise(&r, &t, 4 * k, k / 2 + 1, 3 * k);
    rig_close(&r);
    tally_assert(&t, CASES[_i]);
}
END_TEST

/* ------------------------------------------------------------------ base case per slot */

/* A daily profile: slot 0 night (loads 60 %, no PV), slot 1 midday (loads 50 %, PV at 80 %:
 * reverse flow), slot 2 evening peak (loads 120 %). Each slot's check must be safe against the
 * reference run with that slot's base case, and the same trade gets different answers. */
START_TEST(grid_ac_each_slot_uses_its_own_base_case) {
    rig r;
    gen_feeder(&r, FAM_RURAL, 4242);
    const uint32_t n = r.f.n_buses;
    double *pd0 = malloc(sizeof *pd0 * n), *qd0 = malloc(sizeof *qd0 * n), *gen = calloc(n, sizeof *gen);
    for (uint32_t b = 0; b < n; b++) {
        pd0[b] = r.f.buses[b].pd_kw;
        qd0[b] = r.f.buses[b].qd_kvar;
        /* Exporting buses become a load of a third of their export plus PV of the export, so the
         * profile can scale the two apart. */
        if (pd0[b] < 0) {
            gen[b] = -pd0[b] * 4.0 / 3.0;
            pd0[b] = -pd0[b] / 3.0;
        }
        r.in.bus_store[b].base_p_w = llround(pd0[b] * 1000.0);
        r.in.bus_store[b].gen_w = (uint64_t)llround(gen[b] * 1000.0);
    }
    static uint32_t load_ppm[3] = {600000, 500000, 1200000}, gen_ppm[3] = {0, 800000, 0};
    r.in.msg.n_load_profile_ppm = 3;
    r.in.msg.load_profile_ppm = load_ppm;
    r.in.msg.n_gen_profile_ppm = 3;
    r.in.msg.gen_profile_ppm = gen_ppm;
    rig_finish(&r);
    tally t;
    tally_init(&t);
    uint64_t first[3] = {0};
    uint32_t fa = 0, fb = 0;
    for (int s = 0; s < 3; s++) {
        /* The reference's base case for slot s (per-unit rounding as the chain: W). */
        for (uint32_t b = 0; b < n; b++) {
            r.f.buses[b].pd_kw = (double)llround(pd0[b] * 1000.0) * load_ppm[s] / 1e9 -
                                 (double)llround(gen[b] * 1000.0) * gen_ppm[s] / 1e9;
            r.f.buses[b].qd_kvar = qd0[b] * load_ppm[s] / 1e6;
        }
        r.slot_no = (uint64_t)s;
        for (int seq = 0; seq < 6; seq++) {
            rig_reset(&r);
            for (int k = 0; k < 6; k++) {
                uint32_t a, b;
                random_pair(&r, &a, &b);
                if (seq == 0 && k == 0) {
                    if (s == 0) fa = a, fb = b;
                    a = fa, b = fb;
                }
                uint64_t q = rand_qty(&r) * 3, got = chain_trade(&r, (uint64_t)s, a, b, q);
                if (seq == 0 && k == 0) first[s] = got;
                t.trades++;
                t.curtailed += got < q;
            }
            char what[32];
            snprintf(what, sizeof what, "slot %d", s);
            tally_state(&t, &r, what);
        }
    }
    tally_assert(&t, "per-slot base case");
    ck_assert_msg(first[0] != first[1] || first[1] != first[2], "the slots gave one answer: %" PRIu64, first[0]);
    /* Slot 4 is slot 1 again (profile index = slot mod 3). */
    grid_match_result m1, m4;
    ck_assert_int_eq(grid_model_check(r.blob, r.len, NULL, 1, id_of(&r, fa), id_of(&r, fb), 100000, SLOT_MS, &m1), 0);
    ck_assert_int_eq(grid_model_check(r.blob, r.len, NULL, 4, id_of(&r, fa), id_of(&r, fb), 100000, SLOT_MS, &m4), 0);
    ck_assert_uint_eq(m1.allowed_wh, m4.allowed_wh);
    free(pd0);
    free(qd0);
    free(gen);
    rig_close(&r);
}
END_TEST

/* ------------------------------------------------------------------ losses */

/* The chain's signed marginal loss factor against the reference's: the change of the AC flow's
 * total loss per kW moved, by a central difference of +-1 kW. */
START_TEST(grid_ac_loss_factors_are_signed_and_match_the_reference) {
    rig r;
    load_feeder(&r, "case33bw");
    rs = 4711;
    int agree = 0, checked = 0, credit = 0, charge = 0;
    double worst = 0;
    for (int i = 0; i < 200; i++) {
        if (i % 20 == 0) {
            rig_reset(&r);
            for (int k = 0; k < 3 && i; k++) {
                uint32_t a, b;
                random_pair(&r, &a, &b);
                chain_trade(&r, 0, a, b, rand_qty(&r));
            }
        }
        uint32_t a, b;
        random_pair(&r, &a, &b);
        int64_t lf;
        ck_assert_int_eq(grid_model_loss_factor(r.blob, r.len, r.slot, 0, SLOT_MS, id_of(&r, a), id_of(&r, b), &lf), 0);
        double l[2];
        for (int s = 0; s < 2; s++) {
            double d = s ? -1.0 : 1.0;
            r.inj[a] += d;
            r.inj[b] -= d;
            ck_assert(flow(&r));
            l[s] = r.fl.loss_kw;
            r.inj[a] -= d;
            r.inj[b] += d;
        }
        double ref = (l[0] - l[1]) / 2.0 * 1e6; /* ppm */
        if (fabs(ref) < 2000) continue;         /* near zero the sign is noise */
        checked++;
        agree += (lf < 0) == (ref < 0);
        credit += lf < 0;
        charge += lf > 0;
        double err = fabs((double)lf - ref) / fabs(ref);
        if (err > worst) worst = err;
    }
    fprintf(stderr, "grid_ac losses: %d factors, %d credits, %d charges, worst relative error %.4f\n", checked, credit,
            charge, worst);
    ck_assert_int_eq(agree, checked);
    ck_assert_int_gt(credit, 10);
    ck_assert_int_gt(charge, 10);
    ck_assert_msg(worst < 0.01, "loss factor off by %.4f", worst);
    rig_close(&r);
}
END_TEST

static int64_t charge(int64_t q, int64_t lf, int64_t price) {
    __int128 p = (__int128)q * lf * price;
    __int128 c = p / 1000000000 + (p % 1000000000 > 0);
    return (int64_t)c;
}

/* A loss-lowering trade is credited, a loss-raising one charged; splitting a trade into pieces
 * that execute one after the other (each priced at the slot's point before it) never pays less
 * than the whole, and neither does routing it through a participant on its path. */
START_TEST(grid_ac_splitting_or_routing_a_trade_never_pays_less) {
    rig r;
    load_feeder(&r, "case33bw");
    rs = 99;
    const int64_t price = 300000;
    int64_t lf_out, lf_in;
    /* 18 is at the end of the main lateral: selling from it to 2 lowers the losses. */
    ck_assert_int_eq(grid_model_loss_factor(r.blob, r.len, NULL, 0, SLOT_MS, 18, 2, &lf_out), 0);
    ck_assert_int_eq(grid_model_loss_factor(r.blob, r.len, NULL, 0, SLOT_MS, 2, 18, &lf_in), 0);
    ck_assert_int_lt(lf_out, 0);
    ck_assert_int_gt(lf_in, 0);
    ck_assert_int_lt(charge(10000, lf_out, price), charge(10000, lf_in, price));
    uint8_t *snap = tem_malloc(r.slot_bytes);
    int worse_split = 0, worse_route = 0, tried = 0;
    for (int it = 0; it < 300; it++) {
        rig_reset(&r);
        uint32_t a, b;
        random_pair(&r, &a, &b);
        int64_t q = 1000 + (int64_t)(rng() % 20000);
        memcpy(snap, r.slot, r.slot_bytes);
        int64_t lf;
        ck_assert_int_eq(grid_model_loss_factor(r.blob, r.len, r.slot, 0, SLOT_MS, id_of(&r, a), id_of(&r, b), &lf), 0);
        int64_t whole = charge(q, lf, price), parts = 0, lf0 = lf;
        int64_t left = q;
        while (left > 0) {
            int64_t piece = 1 + (int64_t)(rng() % (uint64_t)left);
            ck_assert_int_eq(grid_model_loss_factor(r.blob, r.len, r.slot, 0, SLOT_MS, id_of(&r, a), id_of(&r, b), &lf), 0);
            parts += charge(piece, lf, price);
            ck_assert_int_eq(grid_model_commit(r.blob, r.len, r.slot, id_of(&r, a), id_of(&r, b), (uint64_t)piece, SLOT_MS), 0);
            left -= piece;
        }
        worse_split += parts < whole;
        /* Routing through c, a bus on the path: a -> c, then c -> b. */
        memcpy(r.slot, snap, r.slot_bytes);
        uint32_t c = r.f.parent[a] != a && r.f.parent[a] != b ? r.f.parent[a] : UINT32_MAX;
        if (c == UINT32_MAX) continue;
        /* c is on the path when it is a's parent and b is not below a. */
        uint32_t x = b;
        bool below = false;
        while (x != r.f.slack && !below) below = (x = r.f.parent[x]) == a;
        if (below) continue;
        tried++;
        int64_t l1, l2;
        ck_assert_int_eq(grid_model_loss_factor(r.blob, r.len, r.slot, 0, SLOT_MS, id_of(&r, a), id_of(&r, c), &l1), 0);
        ck_assert_int_eq(grid_model_commit(r.blob, r.len, r.slot, id_of(&r, a), id_of(&r, c), (uint64_t)q, SLOT_MS), 0);
        ck_assert_int_eq(grid_model_loss_factor(r.blob, r.len, r.slot, 0, SLOT_MS, id_of(&r, c), id_of(&r, b), &l2), 0);
        if (charge(q, l1, price) + charge(q, l2, price) < whole && getenv("TEM_GRID_AC_VERBOSE"))
            fprintf(stderr, "route %u-%u-%u q %" PRId64 ": %" PRId64 " + %" PRId64 " vs %" PRId64 " ppm\n", id_of(&r, a),
                    id_of(&r, c), id_of(&r, b), q, l1, l2, lf0);
        worse_route += charge(q, l1, price) + charge(q, l2, price) < whole;
    }
    fprintf(stderr, "grid_ac split/route: 300 splits (%d paid less), %d routings (%d paid less)\n", worse_split, tried,
            worse_route);
    ck_assert_int_eq(worse_split, 0);
    ck_assert_int_eq(worse_route, 0);
    ck_assert_int_gt(tried, 20);
    tem_free(snap);
    rig_close(&r);
}
END_TEST

/* ------------------------------------------------------------------ determinism */

/* A fixed scenario's answers, hashed: the same on every build (-O2, ASan/UBSan) and machine. */
START_TEST(grid_ac_answers_are_identical_on_every_build) {
    rig r;
    gen_feeder(&r, FAM_RANDOM, 31337);
    rs = 5;
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < 40; i++) {
        uint32_t a, b;
        random_pair(&r, &a, &b);
        uint64_t got = chain_trade(&r, 0, a, b, rand_qty(&r));
        int64_t lf;
        ck_assert_int_eq(grid_model_loss_factor(r.blob, r.len, r.slot, 0, SLOT_MS, id_of(&r, a), id_of(&r, b), &lf), 0);
        h = (h ^ got) * 1099511628211ull;
        h = (h ^ (uint64_t)lf) * 1099511628211ull;
    }
    fprintf(stderr, "grid_ac determinism hash %016" PRIx64 "\n", h);
    ck_assert_uint_eq(h, GRID_AC_HASH);
    rig_close(&r);
}
END_TEST

static Suite *ac_suite(void) {
    Suite *s = suite_create("grid_ac");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, grid_ac_random_radial_feeders_are_safe_and_accept_97_percent);
    tcase_add_test(tc, grid_ac_rural_pv_feeders_are_safe_and_accept_97_percent);
    tcase_add_loop_test(tc, grid_ac_public_feeders_are_safe_and_accept_97_percent, 0, 3);
    tcase_add_test(tc, grid_ac_each_slot_uses_its_own_base_case);
    tcase_add_test(tc, grid_ac_loss_factors_are_signed_and_match_the_reference);
    tcase_add_test(tc, grid_ac_splitting_or_routing_a_trade_never_pays_less);
    tcase_add_test(tc, grid_ac_answers_are_identical_on_every_build);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    const char *env = getenv("TEM_FEEDERS");
    snprintf(feeders_dir, sizeof feeders_dir, "%s", env && *env ? env : "../shared/data/feeders");
    SRunner *sr = srunner_create(ac_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
