/* bench_grid.c: the grid check's cost per match. The continuous double auction's matching core
 * (cda_book) runs the same order flow twice in one process: once with a fill callback that lets
 * everything execute (the limit: unchecked matches/s) and once with the grid check and commit
 * against ledger state (grid_check_match + grid_commit_match) in the callback. Feeders: case33bw,
 * case533mt_hi and a generated 1,000-bus radial feeder. Also: bare grid_check_match calls/s on
 * case33bw. Each check solves the slot's AC power flow (docs/grid.md, "Cost").
 * The models come from the offline power flow (node/pf), so they are the ones temctl emits. */
#include "tests/bench/bench_util.h"

#include "contracts/cda_book.h"
#include "contracts/grid.h"
#include "node/pf/feeder.h"

#include <inttypes.h>
#include <math.h>

#define SLOT_MS 900000
#define ORDERS 200000
#define RESTING_PER_ROUND 4
#define MATCHES_PER_SLOT 100 /* matches a slot takes before the bench moves on */

/* CPU time of this process: the machine is shared, so wall-clock rates understate the check's
 * own cost; every feeder line is printed in both (the _cpu line divides by CPU seconds). */
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng_s = 0x2545f4914f6cdd1dull;
static uint64_t rng(void) {
    rng_s ^= rng_s << 13;
    rng_s ^= rng_s >> 7;
    rng_s ^= rng_s << 17;
    return rng_s;
}

typedef struct {
    ledger_state *st;
    const uint32_t *bus_of; /* order id -> bus */
    uint32_t incoming_bus;
    int incoming_side;
    uint64_t slot, matches, curtailed_wh;
    bool checked;
} bench_ctx;

static int64_t fill_cb(void *vctx, const cda_order *resting, uint64_t want_wh) {
    bench_ctx *c = vctx;
    c->matches++;
    if (!c->checked) return (int64_t)want_wh;
    uint32_t rb = c->bus_of[resting->id];
    uint32_t seller = c->incoming_side == CDA_SELL ? c->incoming_bus : rb;
    uint32_t buyer = c->incoming_side == CDA_SELL ? rb : c->incoming_bus;
    grid_match_result m;
    if (grid_check_match(c->st, c->slot, seller, buyer, want_wh, SLOT_MS, &m) != GRID_OK) return -1;
    if (m.allowed_wh && grid_commit_match(c->st, c->slot, seller, buyer, m.allowed_wh, SLOT_MS) != GRID_OK)
        return -1;
    c->curtailed_wh += m.curtailed_wh;
    if (c->matches % MATCHES_PER_SLOT == 0) c->slot++; /* a fresh slot, as the day moves on */
    return (int64_t)m.allowed_wh;
}

/* The order flow: rounds of resting sells and buys at random buses, then one incoming order of
 * the other side that crosses them. Returns matches per second. */
static double run_flow(ledger_state *st, const uint32_t *buses, uint32_t nb, bool checked, uint64_t orders,
                       uint64_t *matches_out, uint64_t *curtailed_out, double *cpu_rate) {
    static uint32_t bus_of[ORDERS + 1];
    cda_book book;
    cda_book_init(&book);
    bench_ctx c = {.st = st, .bus_of = bus_of, .checked = checked, .slot = 1};
    rng_s = 0x2545f4914f6cdd1dull; /* the same flow in both runs */
    uint64_t id = 1;
    double t0 = bench_now(), c0 = cpu_now();
    while (id + RESTING_PER_ROUND + 1 <= orders) {
        int side = (int)(rng() & 1);
        for (int k = 0; k < RESTING_PER_ROUND; k++, id++) {
            bus_of[id] = buses[rng() % nb];
            uint64_t price = 100000 + rng() % 1000;
            TEM_ASSERT(cda_book_add(&book, id, side, price, 1000 + rng() % 4000) == CDA_BOOK_OK);
        }
        c.incoming_bus = buses[rng() % nb];
        c.incoming_side = side == CDA_BUY ? CDA_SELL : CDA_BUY;
        bus_of[id] = c.incoming_bus;
        uint64_t qty = 4000 + rng() % 12000, left = 0;
        uint64_t price = c.incoming_side == CDA_BUY ? 200000 : 1;
        TEM_ASSERT(cda_book_submit(&book, id, c.incoming_side, price, qty, true, fill_cb, &c, &left) ==
                   CDA_BOOK_OK);
        id++;
    }
    double dt = bench_now() - t0;
    *cpu_rate = (double)c.matches / (cpu_now() - c0);
    cda_book_free(&book);
    *matches_out = c.matches;
    *curtailed_out = c.curtailed_wh;
    return (double)c.matches / dt;
}

static void install(ledger_state *st, ctl_feeder_install *in) {
    Tem__V1__TxBody body = TEM__V1__TX_BODY__INIT;
    body.kind_case = TEM__V1__TX_BODY__KIND_INSTALL_FEEDER;
    body.install_feeder = &in->msg;
    ledger_tx tx = {.body = &body};
    ledger_arena arena = {0};
    ledger_block_ctx b = {.height = 1, .arena = &arena};
    Tem__V1__Receipt rc = TEM__V1__RECEIPT__INIT;
    TEM_ASSERT(grid_exec_install(st, &b, &tx, &rc) == LEDGER_OK);
    if (rc.code != 0) {
        fprintf(stderr, "bench_grid: install refused: %s\n", rc.reason);
        exit(1);
    }
    ledger_arena_reset(&arena);
}

static void bench_feeder(const char *name, ctl_feeder *f, uint64_t orders) {
    char err[256];
    ctl_feeder_install in;
    if (ctl_feeder_install_build(f, 20000, &in, err, sizeof err) != GRID_OK) {
        fprintf(stderr, "bench_grid: %s: %s\n", name, err);
        exit(1);
    }
    uint32_t *buses = malloc(sizeof *buses * f->n_buses);
    for (uint32_t i = 0; i < f->n_buses; i++) buses[i] = f->buses[i].id;
    ledger_state *st;
    TEM_ASSERT(ledger_state_new(&st) == LEDGER_OK);
    install(st, &in);
    uint64_t mu, mc, cu, cc;
    double ucpu, ccpu;
    double unchecked = run_flow(st, buses, f->n_buses, false, orders, &mu, &cu, &ucpu);
    double checked = run_flow(st, buses, f->n_buses, true, orders, &mc, &cc, &ccpu);
    char line[128];
    snprintf(line, sizeof line, "grid_checked_matches_%s", name);
    bench_line(line, checked, "matches/s", unchecked, "unchecked_matches/s");
    snprintf(line, sizeof line, "grid_checked_matches_%s_cpu", name);
    bench_line(line, ccpu, "matches/cpu_s", ucpu, "unchecked_matches/cpu_s");
    fprintf(stderr, "  %s: %" PRIu64 " checked matches (%" PRIu64 " Wh curtailed), %" PRIu64 " unchecked\n", name,
            mc, cc, mu);
    ledger_state_free(st);
    free(buses);
    ctl_feeder_install_free(&in);
}

/* Bare check calls on one slot with a few committed trades, against an empty callback loop. */
static void bench_check_only(ctl_feeder *f) {
    char err[256];
    ctl_feeder_install in;
    TEM_ASSERT(ctl_feeder_install_build(f, 20000, &in, err, sizeof err) == GRID_OK);
    ledger_state *st;
    TEM_ASSERT(ledger_state_new(&st) == LEDGER_OK);
    install(st, &in);
    const uint32_t n = f->n_buses;
    for (int i = 0; i < 20; i++)
        TEM_ASSERT(grid_commit_match(st, 5, f->buses[rng() % n].id, f->buses[rng() % n].id, 500, SLOT_MS) == GRID_OK);
    enum { N = 2000000 };
    uint32_t *pairs = malloc(sizeof *pairs * 2 * 4096);
    for (int i = 0; i < 2 * 4096; i++) pairs[i] = f->buses[rng() % n].id;
    uint64_t sum = 0;
    double t0 = bench_now(), c0 = cpu_now();
    for (int i = 0; i < N; i++) {
        grid_match_result m;
        int k = i & 4095;
        TEM_ASSERT(grid_check_match(st, 5, pairs[2 * k], pairs[2 * k + 1], 2000, SLOT_MS, &m) == GRID_OK);
        sum += m.allowed_wh;
    }
    double checks = N / (bench_now() - t0), checks_cpu = N / (cpu_now() - c0);
    /* The limit: the same loop reading the two buses and summing, no check. */
    volatile uint64_t sink = 0;
    t0 = bench_now();
    for (int i = 0; i < N; i++) {
        int k = i & 4095;
        sink += pairs[2 * k] ^ pairs[2 * k + 1];
    }
    double bare = N / (bench_now() - t0);
    (void)sink;
    bench_line("grid_check_calls_case33bw", checks, "checks/s", bare, "bare_loop/s");
    bench_line("grid_check_calls_case33bw_cpu", checks_cpu, "checks/cpu_s", bare, "bare_loop/s");
    fprintf(stderr, "  (allowed sum %" PRIu64 ")\n", sum);
    free(pairs);
    ledger_state_free(st);
    ctl_feeder_install_free(&in);
}

/* A 1,000-bus radial feeder at 12.66 kV: each bus hangs off one of the 20 buses before it, so
 * laterals are long; ratings follow the case files' rule (R10 series, at least twice the base
 * flow, never below 100 kVA). */
static void generate(ctl_feeder *out, uint32_t n) {
    char *b = malloc(64 * (size_t)n + 64), *l = malloc(64 * (size_t)n + 64);
    size_t bl = (size_t)sprintf(b, "bus,type,pd_kw,qd_kvar,vmin_pu,vmax_pu,base_kv\n1,slack,0,0,1,1,12.66\n");
    size_t ll = (size_t)sprintf(l, "from,to,r_ohm,x_ohm,rate_kva\n");
    rng_s = 42;
    for (uint32_t i = 2; i <= n; i++) {
        double p = (double)(rng() % 8000) / 1000.0;
        bl += (size_t)sprintf(b + bl, "%u,pq,%.3f,%.3f,0.9,1.1,12.66\n", i, p, p * 0.6);
        uint32_t lo = i > 21 ? i - 20 : 1;
        uint32_t par = lo + (uint32_t)(rng() % (i - lo));
        double r = 0.01 + (double)(rng() % 1000) / 20000.0;
        ll += (size_t)sprintf(l + ll, "%u,%u,%.5f,%.5f,100000\n", par, i, r, r * 0.6);
    }
    char err[256];
    ctl_feeder f;
    if (ctl_feeder_parse(&f, b, bl, l, ll, err, sizeof err) != GRID_OK) {
        fprintf(stderr, "bench_grid: generated feeder: %s\n", err);
        exit(1);
    }
    ctl_feeder_flow fl;
    TEM_ASSERT(ctl_feeder_flow_init(&fl, &f) == GRID_OK);
    if (ctl_feeder_flow_run(&f, NULL, CTL_FEEDER_TOL_PU, false, &fl, err, sizeof err) != GRID_OK) {
        fprintf(stderr, "bench_grid: generated feeder: %s\n", err);
        exit(1);
    }
    static const double r10[] = {100, 125, 160, 200, 250, 315, 400, 500, 630, 800};
    for (uint32_t k = 0; k < f.n_lines; k++) {
        double s = fmax(hypot(fl.p_par_kw[k], fl.q_par_kvar[k]), hypot(fl.p_child_kw[k], fl.q_child_kvar[k]));
        double rate = 100, dec = 1;
        for (;;) {
            int found = 0;
            for (int j = 0; j < 10 && !found; j++)
                if (r10[j] * dec >= 2 * s) {
                    rate = r10[j] * dec;
                    found = 1;
                }
            if (found) break;
            dec *= 10;
        }
        f.lines[k].rate_kva = rate;
    }
    fprintf(stderr, "  generated %u buses: loss %.1f kW, vmin %.4f pu at bus %u\n", n, fl.loss_kw, fl.vmin_pu,
            fl.vmin_bus);
    ctl_feeder_flow_free(&fl);
    free(b);
    free(l);
    *out = f;
}

int main(void) {
    const char *env = getenv("TEM_FEEDERS");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/case33bw", env && *env ? env : "../shared/data/feeders");
    ctl_feeder f33, f533, f1k;
    char err[256];
    if (ctl_feeder_load(&f33, dir, err, sizeof err) != GRID_OK) {
        fprintf(stderr, "bench_grid: %s\n", err);
        return 1;
    }
    snprintf(dir, sizeof dir, "%s/case533mt_hi", env && *env ? env : "../shared/data/feeders");
    if (ctl_feeder_load(&f533, dir, err, sizeof err) != GRID_OK) {
        fprintf(stderr, "bench_grid: %s\n", err);
        return 1;
    }
    bench_check_only(&f33);
    bench_feeder("case33bw", &f33, ORDERS);
    bench_feeder("case533mt_hi", &f533, ORDERS / 8);
    generate(&f1k, 1000);
    bench_feeder("gen1000", &f1k, ORDERS / 16);
    ctl_feeder_free(&f33);
    ctl_feeder_free(&f533);
    ctl_feeder_free(&f1k);
    return 0;
}
