/* feeder.h: the offline side of the DSO grid check (`temctl feeder`, docs/grid.md): reading a
 * feeder folder (buses.csv, lines.csv), validating it, the AC power flow of a radial feeder
 * (backward/forward sweep), the sensitivities the chain needs, quantised into an InstallFeeder
 * message. The `temctl feeder` verbs are node/ctl/ctl_feeder.c. Floating point is fine here: nothing in this file
 * decides consensus state; the chain only sees the integers of the InstallFeeder.
 *
 * Errors are grid codes (contracts/grid.h: GRID_EPARSE, GRID_EIO, the topology and value codes,
 * GRID_ENOCONVERGE, GRID_ENOMEM) with a message naming the file line, the line F-T or the bus
 * in the caller's err buffer. Structures are initialised in place and freed by their _free
 * (safe on a zeroed struct). */
#ifndef PF_FEEDER_H
#define PF_FEEDER_H

#include "contracts/grid.h"

#define CTL_FEEDER_ERR_BYTES 256
/* Power-flow convergence: largest voltage change of one sweep, pu. */
#define CTL_FEEDER_TOL_PU 1e-10
#define CTL_FEEDER_ITER_MAX 500
/* Default safety margin of `install` and `limit`, ppm (docs/grid.md, "Accuracy"). */
#define CTL_FEEDER_MARGIN_PPM_DEFAULT 20000u

typedef struct {
    uint32_t id;
    bool slack;
    double pd_kw, qd_kvar, vmin_pu, vmax_pu, base_kv;
} ctl_feeder_bus;

typedef struct {
    uint32_t from, to; /* bus ids as written */
    uint32_t f, t;     /* bus indexes */
    double r_ohm, x_ohm, rate_kva;
} ctl_feeder_line;

typedef struct {
    uint32_t n_buses, n_lines, slack; /* slack: bus index */
    ctl_feeder_bus *buses;            /* file order */
    ctl_feeder_line *lines;           /* file order */
    /* The tree from the slack (bus indexes): BFS order, parent (slack: itself) and the line to
     * the parent (slack: UINT32_MAX). child_is_to[l]: line l's `to` is the end farther from
     * the slack. */
    uint32_t *order, *parent, *parent_line;
    uint8_t *child_is_to;
    uint8_t source_hash[LEDGER_HASH_BYTES]; /* SHA-256(buses.csv bytes || lines.csv bytes) */
} ctl_feeder;

/* Parses and validates the two CSV texts (they need not be NUL-terminated). */
TEM_WUR int ctl_feeder_parse(ctl_feeder *f, const char *buses_csv, size_t buses_len,
                             const char *lines_csv, size_t lines_len, char *err, size_t errlen);
/* Reads DIR/buses.csv and DIR/lines.csv and parses them. GRID_EIO if a file cannot be read. */
TEM_WUR int ctl_feeder_load(ctl_feeder *f, const char *dir, char *err, size_t errlen);
void ctl_feeder_free(ctl_feeder *f);
/* Bus index of a bus id, or -1. */
int64_t ctl_feeder_bus_index(const ctl_feeder *f, uint32_t id);

/* One power-flow solution. Per bus index: vm_pu, va_deg. Per line index, in the file's
 * orientation (MATPOWER): p_from_kw/q_from_kvar flow into the line at `from`, p_to_kw/q_to_kvar
 * into the line at `to`; i_a the current; loading_pct = 100 max(|S_from|, |S_to|) / rate.
 * Also per line, towards the slack's orientation: p_par_kw/q_par_kvar leaving the parent end
 * away from the slack, p_child_kw/q_child_kvar arriving at the far end. */
typedef struct {
    uint32_t n_buses, n_lines;
    double *vm_pu, *va_deg;
    double *p_from_kw, *q_from_kvar, *p_to_kw, *q_to_kvar, *i_a, *loading_pct;
    double *p_par_kw, *q_par_kvar, *p_child_kw, *q_child_kvar;
    double loss_kw, loss_kvar, vmin_pu;
    uint32_t vmin_bus; /* bus id */
    int iterations;
    void *work; /* solver state (complex voltages and currents); warm starts reuse it */
} ctl_feeder_flow;

TEM_WUR int ctl_feeder_flow_init(ctl_feeder_flow *fl, const ctl_feeder *f);
void ctl_feeder_flow_free(ctl_feeder_flow *fl);
/* Solves the feeder with net injections inject_kw[bus index] (NULL = none; positive =
 * generation at unity power factor) to tol_pu. warm = start from fl's last solution instead of
 * a flat start. GRID_ENOCONVERGE when the sweep does not settle within CTL_FEEDER_ITER_MAX
 * iterations or a voltage collapses; fl's results are then not valid. */
TEM_WUR int ctl_feeder_flow_run(const ctl_feeder *f, const double *inject_kw, double tol_pu,
                                bool warm, ctl_feeder_flow *fl, char *err, size_t errlen);

/* The InstallFeeder of a feeder: the model, the quantised sensitivities of its base-case
 * power flow, the margin and the source hash. msg and everything it points to are owned by
 * the struct. */
typedef struct {
    Tem__V1__InstallFeeder msg;
    Tem__V1__FeederBus *bus_store, **bus_ptrs;
    Tem__V1__FeederLine *line_store, **line_ptrs;
    uint8_t hash[LEDGER_HASH_BYTES];
    /* set by ctl_feeder_install_set_base */
    uint32_t *prof_load, *prof_gen;
    Tem__V1__FeederSlotCase *slot_store, **slot_ptrs;
    Tem__V1__FeederBusCase *case_store, **case_ptrs;
} ctl_feeder_install;

TEM_WUR int ctl_feeder_install_build(const ctl_feeder *f, uint32_t margin_ppm,
                                     ctl_feeder_install *out, char *err, size_t errlen);
void ctl_feeder_install_free(ctl_feeder_install *in);

/* The base case per slot (docs/grid.md, "Base case per slot"), read from one CSV file whose rows
 * start with a keyword ('#' starts a comment):
 *   profile,ENTRY,LOAD_PCT,GEN_PCT   daily profile entry ENTRY (0, 1, ... in order): slot s uses
 *                                    entry s mod count; loads scaled by LOAD_PCT, installed
 *                                    generation by GEN_PCT
 *   gen,BUS,KW                       installed generation (PV peak) at BUS
 *   slot,SLOT,BUS,P_KW,Q_KVAR        BUS's net load in absolute slot SLOT, replacing the profile
 * Owned arrays; ctl_feeder_base_free frees them (safe on a zeroed struct). */
typedef struct {
    uint64_t slot;
    uint32_t bus; /* bus index */
    double p_kw, q_kvar;
} ctl_feeder_override;
typedef struct {
    uint32_t n_prof, n_over;
    uint32_t *load_ppm, *gen_ppm;
    double *gen_kw; /* per bus index */
    ctl_feeder_override *over;
} ctl_feeder_base;

TEM_WUR int ctl_feeder_base_load(const ctl_feeder *f, const char *path, ctl_feeder_base *bc, char *err,
                                 size_t errlen);
void ctl_feeder_base_free(ctl_feeder_base *bc);
/* Net loads of `slot` per bus index (kW, kvar), by the chain's rule. */
void ctl_feeder_base_slot(const ctl_feeder *f, const ctl_feeder_base *bc, uint64_t slot, double *pd_kw,
                          double *qd_kvar);
/* Puts the base case into an InstallFeeder built by ctl_feeder_install_build. GRID_OK or
 * GRID_ENOMEM. */
TEM_WUR int ctl_feeder_install_set_base(ctl_feeder_install *in, const ctl_feeder *f, const ctl_feeder_base *bc);

#endif
