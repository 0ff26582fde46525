/* grid.h: the DSO grid check, the upper layer of the market (docs/grid.md). It holds the feeder
 * model the DSO installs with an InstallFeeder admin tx and answers, in integers only, four
 * questions the market asks per match: how much of this trade can the feeder carry in its slot
 * (grid_check_match, then grid_commit_match once the trade executes), what network-use fee does
 * it pay (grid_network_fee), what loss charge or credit (grid_loss_charge), and, at order time,
 * the most either could be (grid_network_fee_max, grid_loss_charge_max) so the order can escrow it.
 *
 * The check is an AC power flow: for every candidate it solves the slot's whole operating point
 * (the slot's base case, every accepted trade of the slot, the candidate) with a deterministic
 * fixed-point backward/forward sweep and keeps the largest quantity for which every line (both
 * ends, its own loss included) and every bus stays within its limits (docs/grid.md, "The on-chain
 * check"). The base case of slot s is the model's daily profile entry s mod its length, with the
 * model's per-slot overrides on top.
 *
 * State (prefix 'g', owned here; docs/grid.md, "State"):
 *   "gm"                    -> the compiled model (fixed little-endian records, see grid_model.c)
 *   "gs" || u64be(slot)     -> per bus (model record order) the net Wh accepted trades inject
 *                              there in that slot, i64le (grid_model_slot_bytes; absent = none)
 * Installing a new model keeps every "gs" key: each is re-indexed to the new model's records by
 * bus number, so accepted trades of open slots stay counted; a new model that lacks a bus with
 * accepted trades in an open slot is refused (GRID_EUNKNOWNBUS).
 *
 * With no feeder installed every check allows the whole quantity, binds nothing, and every fee
 * and charge is 0. A trade whose seller and buyer share a bus uses no line: allowed, no fee.
 *
 * Errors: `enum grid_err` (0 = GRID_OK, -380..-399, the grid's part of the contracts range);
 * grid_strerror() names them. Out-parameters are written only on GRID_OK unless said otherwise.
 * Nothing here reads a clock, a random source or the disk, and nothing keeps static state. */
#ifndef GRID_H
#define GRID_H

#include "ledger/ledger.h"

/* Largest feeder the chain accepts. An InstallFeeder of this size is about 0.5 MB, inside the
 * genesis' admin tx limit, and a check walks every bus once (docs/grid.md, "Cost"). */
#define GRID_BUSES_MAX 4096
/* Text of a binding constraint: "line 4294967295-4294967295" fits. */
#define GRID_BINDING_TEXT_BYTES 32
/* Fixed-point units of the model (docs/grid.md, "Units"). */
#define GRID_PPM 1000000LL                 /* parts per million */
#define GRID_NPU_PER_PU 1000000000LL       /* voltages: 1e-9 pu */
#define GRID_FPU_PER_PU 1000000000000000LL /* voltage sensitivities: 1e-15 pu per W */

#define GRID_ERRNO_MAP(X)                                                                          \
    X(EMODEL, -380, "invalid feeder model")                                                        \
    X(ECYCLE, -381, "feeder is not radial (a line closes a loop)")                                 \
    X(EISLAND, -382, "feeder bus not connected to the slack bus")                                  \
    X(ESLACK, -383, "feeder needs exactly one slack bus")                                          \
    X(EIMPEDANCE, -384, "line impedance not positive")                                             \
    X(EUNKNOWNBUS, -385, "unknown bus")                                                            \
    X(EDUPBUS, -386, "bus listed twice")                                                           \
    X(ERATING, -387, "line rating not positive")                                                   \
    X(EVBAND, -388, "invalid voltage band")                                                        \
    X(ESENS, -389, "invalid sensitivity")                                                          \
    X(ETOOBIG, -390, "feeder has more than GRID_BUSES_MAX buses")                                  \
    X(EOVERFLOW, -391, "arithmetic overflow")                                                      \
    X(ENOMEM, -392, "out of memory")                                                               \
    X(EINVAL, -393, "invalid argument")                                                            \
    X(ECORRUPT, -394, "stored grid model or slot state is corrupt")                                \
    X(EHASH, -395, "source hash is not 32 bytes")                                                  \
    X(ENOCONVERGE, -396, "power flow did not converge")                                            \
    X(EPARSE, -397, "malformed feeder file")                                                       \
    X(EIO, -398, "cannot read feeder file")

enum grid_err {
    GRID_OK = 0,
#define GRID_X(name, val, msg) GRID_##name = val,
    GRID_ERRNO_MAP(GRID_X)
#undef GRID_X
};

/* Static message for a grid code; other codes go to ledger_strerror. */
const char *grid_strerror(int err);
/* Symbolic name ("EUNKNOWNBUS"), or NULL for a code that is not the grid's. */
const char *grid_errname(int err);

/* ------------------------------------------------------------------ results */
enum { GRID_BIND_NONE = 0, GRID_BIND_LINE = 1, GRID_BIND_BUS = 2 };

/* The constraint that limits a trade. */
typedef struct {
    int kind;          /* GRID_BIND_NONE, GRID_BIND_LINE or GRID_BIND_BUS */
    uint32_t from, to; /* GRID_BIND_LINE: the line as written in lines.csv (file orientation) */
    uint32_t bus;      /* GRID_BIND_BUS: the bus whose voltage limit binds */
    int upper;         /* 1: the line's forward rating / the bus' vmax; 0: reverse / vmin */
    char text[GRID_BINDING_TEXT_BYTES]; /* "line F-T", "bus B", or "" for GRID_BIND_NONE */
} grid_binding;

typedef struct {
    uint64_t max_wh;       /* the largest quantity the check found feasible: qty_wh when all of it
                              fits, else allowed_wh (UINT64_MAX: no limit, e.g. no feeder or
                              seller and buyer on one bus) */
    uint64_t allowed_wh;   /* min(qty_wh, max_wh): what may execute */
    uint64_t curtailed_wh; /* qty_wh - allowed_wh */
    grid_binding binding;  /* when curtailed: the constraint the quantity above allowed_wh
                              violates; GRID_BIND_NONE (text "" or "power flow" when the slot has
                              no AC solution) otherwise */
} grid_match_result;

/* ------------------------------------------------------------------ the on-chain calls */

/* Handles an InstallFeeder admin tx (the market's dispatcher has checked the admin key).
 * Validates the whole model (topology: one slack, radial, connected, known and unique buses;
 * positive impedances and ratings, voltage bands, nominal voltage, profiles and overrides,
 * source hash), compiles it with the tx's margin_ppm and replaces "gm". Every open slot's "gs"
 * key is re-indexed to the new model by bus number (accepted trades are never dropped); a model
 * without a bus that has accepted trades in an open slot is refused. A bad model is a refusal:
 * rc->code = the grid code (< 0) and rc->reason names the line or bus ("line 3-4: zero
 * impedance"), allocated from b->arena; the state is unchanged. Returns LEDGER_OK (applied or
 * refused) or LEDGER_ENOMEM (the block must abort). */
TEM_WUR int grid_exec_install(ledger_state *st, const ledger_block_ctx *b, const ledger_tx *tx,
                              Tem__V1__Receipt *rc);

/* True when a feeder is installed. */
bool grid_installed(ledger_state *st);
/* GRID_OK when `bus` is in the installed feeder (or none is installed), else GRID_EUNKNOWNBUS.
 * The market calls it when an order arrives. */
TEM_WUR int grid_bus_check(ledger_state *st, uint32_t bus);

/* How much of a trade of qty_wh from seller_bus to buyer_bus in `slot` (slot_ms long) the feeder
 * carries, given the slot's base case and every trade committed to that slot. A trade of qty_wh
 * is an average power of qty_wh * 3600000 / slot_ms W at unity power factor. No state change.
 * GRID_OK, GRID_EUNKNOWNBUS, GRID_EINVAL (slot_ms <= 0 or above a day), GRID_ECORRUPT,
 * GRID_ENOMEM. */
TEM_WUR int grid_check_match(ledger_state *st, uint64_t slot, uint32_t seller_bus,
                             uint32_t buyer_bus, uint64_t qty_wh, int64_t slot_ms,
                             grid_match_result *out);

/* Records an executed trade in its slot ("gs" key). Call it with the quantity that executed
 * (at most the allowed_wh of the check just made). GRID_OK, GRID_EUNKNOWNBUS, GRID_EINVAL,
 * GRID_ECORRUPT, GRID_EOVERFLOW, GRID_ENOMEM (state unchanged on every error). */
TEM_WUR int grid_commit_match(ledger_state *st, uint64_t slot, uint32_t seller_bus,
                              uint32_t buyer_bus, uint64_t qty_wh, int64_t slot_ms);

/* Deletes the slot state of every slot < before_slot (call after settlement). GRID_OK,
 * GRID_ENOMEM. */
TEM_WUR int grid_slot_prune(ledger_state *st, uint64_t before_slot);

/* Network-use fee of a trade: ceil(qty_wh * R_path * rate / 1e9) micro-units, where R_path is
 * the series resistance (micro-ohm) of the lines between the two buses and the rate is the
 * genesis' network_fee_uunit_per_kwh_per_ohm. Rounded up so that splitting a trade never pays
 * less. The whole fee goes to the DSO; how the two sides share it is the market's rule.
 * GRID_OK, GRID_EUNKNOWNBUS, GRID_EINVAL (negative rate), GRID_EOVERFLOW. */
TEM_WUR int grid_network_fee(ledger_state *st, uint32_t seller_bus, uint32_t buyer_bus,
                             uint64_t qty_wh, int64_t rate_uunit_per_kwh_per_ohm,
                             int64_t *fee_uunit);
/* Largest grid_network_fee an order of qty_wh at `bus` can owe: the fee to the electrically
 * farthest bus. For escrow at order time. Same codes. */
TEM_WUR int grid_network_fee_max(ledger_state *st, uint32_t bus, uint64_t qty_wh,
                                 int64_t rate_uunit_per_kwh_per_ohm, int64_t *fee_uunit);

/* Loss charge of a trade (docs/grid.md, "Losses"): the signed marginal loss factor LF (ppm) of
 * the trade at the slot's operating point before it (base case and accepted trades): the feeder's
 * loss changes by LF * P for P W moved from seller to buyer. Negative when the trade lowers the
 * losses. total_uunit = ceil(qty_wh * LF * price / 1e9), negative = a credit; the seller's share
 * is floor(total / 2), the buyer's the rest. LF is clamped to +-(bound of the path), the bound
 * grid_loss_charge_max escrows. GRID_OK, GRID_EUNKNOWNBUS, GRID_EINVAL (negative price, bad
 * slot_ms), GRID_EOVERFLOW, GRID_ECORRUPT, GRID_ENOMEM. */
typedef struct {
    int64_t loss_factor_ppm;  /* LF of the trade, signed */
    int64_t loss_mwh;         /* ceil(qty_wh * LF / 1000): energy lost (negative: saved), mWh */
    int64_t total_uunit;      /* seller_uunit + buyer_uunit; negative = credit */
    int64_t seller_uunit;
    int64_t buyer_uunit;
} grid_loss;
TEM_WUR int grid_loss_charge(ledger_state *st, uint64_t slot, int64_t slot_ms, uint32_t seller_bus,
                             uint32_t buyer_bus, uint64_t qty_wh, int64_t loss_price_uunit_per_kwh,
                             grid_loss *out);
/* Largest total_uunit an order of qty_wh at `bus` can owe (the compile-time bound on any path's
 * |LF| from that bus); it bounds either side's share. Same codes. */
TEM_WUR int grid_loss_charge_max(ledger_state *st, uint32_t bus, uint64_t qty_wh,
                                 int64_t loss_price_uunit_per_kwh, int64_t *total_uunit);

/* ------------------------------------------------------------------ the model without a ledger
 * The calls above are thin wrappers around these, which work on the compiled model blob and one
 * slot's state blob directly. `temctl feeder limit` uses them, so the offline answer comes from
 * the very code the chain runs. */

/* Validates an InstallFeeder and compiles it. margin_ppm overrides msg->margin_ppm unless it is
 * UINT32_MAX. On success *blob (tem_malloc'd, caller frees) holds the compiled model. On a bad
 * model returns the grid code and, if why is not NULL, writes a reason naming the line or bus.
 * GRID_EMODEL and the topology/value codes of GRID_ERRNO_MAP, GRID_ENOMEM, GRID_EOVERFLOW. */
TEM_WUR int grid_model_compile(const Tem__V1__InstallFeeder *msg, uint32_t margin_ppm,
                               uint8_t **blob, size_t *blob_len, char *why, size_t whylen);

/* Topology alone (shared with the offline importer): from n bus ids (one of them the slack at
 * index `slack`) and m lines (from[i], to[i]) builds a BFS order from the slack.
 * order[k] = bus index of the k-th visited bus (order[0] = slack), parent[b] = parent bus index
 * (slack: itself), parent_line[b] = line index to the parent (slack: UINT32_MAX). Arrays are
 * the caller's, n entries each. Errors: GRID_ETOOBIG, GRID_EDUPBUS, GRID_EUNKNOWNBUS (a line
 * names a bus not in the list), GRID_ECYCLE (a loop or parallel line, or a self-loop),
 * GRID_EISLAND (a bus the slack does not reach), GRID_ENOMEM. *bad names the offending item:
 * a line index for EUNKNOWNBUS/ECYCLE, a bus index for EDUPBUS/EISLAND. */
TEM_WUR int grid_topology_build(uint32_t n, const uint32_t *bus_ids, uint32_t slack, uint32_t m,
                                const uint32_t *from, const uint32_t *to, uint32_t *order,
                                uint32_t *parent, uint32_t *parent_line, uint32_t *bad);

/* Number of buses of a compiled model, 0 if the blob is not one. */
uint32_t grid_model_buses(const uint8_t *blob, size_t blob_len);
/* Size of that model's slot blobs: per bus (in the model's BFS record order) the net Wh accepted
 * trades inject there, i64le (bytes 8k; sellers +, buyers -). */
#define GRID_SLOT_BYTES_PER_BUS 8
size_t grid_model_slot_bytes(const uint8_t *blob, size_t blob_len);
/* Bus number of record k (UINT32_MAX if none), and the record of a bus number (GRID_OK,
 * GRID_EUNKNOWNBUS, GRID_ECORRUPT): to carry slot blobs from one model to the next. */
uint32_t grid_model_bus_id(const uint8_t *blob, size_t blob_len, uint32_t k);
TEM_WUR int grid_model_bus_record(const uint8_t *blob, size_t blob_len, uint32_t bus, uint32_t *k);
/* grid_check_match on a compiled model and a slot blob (NULL = empty slot); `slot` selects the
 * base case. Same codes. */
TEM_WUR int grid_model_check(const uint8_t *blob, size_t blob_len, const uint8_t *slot_blob,
                             uint64_t slot, uint32_t seller_bus, uint32_t buyer_bus, uint64_t qty_wh,
                             int64_t slot_ms, grid_match_result *out);
/* The signed marginal loss factor (ppm) of a trade seller -> buyer at the operating point of
 * `slot` with the slot blob's trades, clamped to the path's bound. Same codes. */
TEM_WUR int grid_model_loss_factor(const uint8_t *blob, size_t blob_len, const uint8_t *slot_blob,
                                   uint64_t slot, int64_t slot_ms, uint32_t seller_bus, uint32_t buyer_bus,
                                   int64_t *lf_ppm);
/* grid_commit_match on a slot blob the caller owns (grid_model_slot_bytes, zeroed for a new slot).
 * Leaves it unchanged on error. */
TEM_WUR int grid_model_commit(const uint8_t *blob, size_t blob_len, uint8_t *slot_blob,
                              uint32_t seller_bus, uint32_t buyer_bus, uint64_t qty_wh,
                              int64_t slot_ms);
/* The fixed-point AC power flow of `slot` with the slot blob's trades (NULL = none): |V| of every
 * record, 1e-9 pu (v_npu holds grid_model_buses entries; grid_model_bus_id names them). For
 * tests and tools. GRID_OK, GRID_ENOCONVERGE (no solution), GRID_EINVAL, GRID_ECORRUPT,
 * GRID_ENOMEM. */
TEM_WUR int grid_model_voltages(const uint8_t *blob, size_t blob_len, const uint8_t *slot_blob, uint64_t slot,
                                int64_t slot_ms, int64_t *v_npu);
/* The slot's operating point as the check sees it (docs/grid.md, "The DSO's view"): the fixed-point
 * AC power flow of `slot`'s base case with the slot blob's accepted trades (NULL = none), the very
 * solve and the very limits grid_model_check uses, read out per bus and per line. The arrays are
 * the caller's: buses[grid_model_buses] in record order (record 0 is the slack), lines[that - 1],
 * line i being the line from record i + 1 to its parent. Limits are the model's own, after the
 * margin and the guard; loadings are |S| at the line's worse end (its own loss inside) against the
 * check's rating, as the check compares them, so a line the check named binding after a
 * curtailment sits just below 1,000,000 ppm. The slack's band is 0..0 (it is held at 1 pu).
 * GRID_OK; GRID_ENOCONVERGE (the slot has no AC solution: buses[] holds the base case, the trades
 * and the bands, v_npu 0, lines[] is not written); GRID_EINVAL, GRID_ECORRUPT, GRID_ENOMEM
 * (nothing written). */
typedef struct {
    uint32_t bus;
    int64_t base_p_w, base_q_var; /* the slot's base case: net load, W and var (+ draws) */
    int64_t traded_wh;            /* net Wh accepted trades inject here (sellers +, buyers -) */
    int64_t v_npu;                /* |V| with the trades, 1e-9 pu */
    int64_t vmin_npu, vmax_npu;   /* the check's band: after the margin and the guard */
} grid_bus_state;
typedef struct {
    uint32_t from, to;  /* as written in lines.csv */
    uint32_t bus;       /* the end farther from the slack */
    int64_t s_va;       /* |S| at the worse end, VA */
    int64_t limit_va;   /* the check's rating: rate (1 - margin) (1 - 1e-6), VA */
    int64_t loading_ppm; /* s_va / limit_va as the check compares them, ppm (above 1e6: beyond) */
} grid_line_state;
TEM_WUR int grid_model_state(const uint8_t *blob, size_t blob_len, const uint8_t *slot_blob, uint64_t slot,
                             int64_t slot_ms, grid_bus_state *buses, grid_line_state *lines);
/* Path resistance (micro-ohm) and the bound on the path's |loss factor| (ppm) between two buses
 * of a compiled model. */
TEM_WUR int grid_model_path(const uint8_t *blob, size_t blob_len, uint32_t a_bus, uint32_t b_bus,
                            int64_t *r_uohm, int64_t *loss_bound_ppm);

#endif
