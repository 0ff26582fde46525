/* sim.h: the prosumer simulator (docs/sim.md). Each simulated prosumer has a load profile, an
 * optional PV array and an optional battery, all drawn deterministically from one seed; per
 * delivery slot it decides an order from its forecast (by its bidding strategy) and, once the
 * slot is over, reports the meter reading of what physically happened: import and export at
 * its connection point, never net of trades.
 *
 * Time has two scales. Physics runs on a simulated day of `slot_minutes` slots (15 min by
 * default): PV, load and battery state of charge follow it. The chain's slot may be shorter
 * (`make testnet` accelerates the clock): quantities sent to the chain are the slot's average
 * power times the chain's slot length, so the DSO's grid check, which converts Wh back to W
 * with the genesis slot_ms, sees the true powers. An accelerated day compresses time, not
 * power.
 *
 * Floating point is fine here (node/, offline): nothing in this file decides consensus state.
 * Randomness is SHA-256 of (seed, prosumer, slot, stream), so every figure is a pure function
 * of the seed and independent of call order. */
#ifndef CTL_SIM_H
#define CTL_SIM_H

#include "ledger/ledger.h"

#define CTL_SIM_PROSUMERS_MAX 4096
#define CTL_SIM_DAY_MINUTES 1440
/* Battery round-trip losses are taken on charging: stored = charged * this. */
#define CTL_SIM_BATTERY_EFFICIENCY 0.9

enum ctl_sim_class { CTL_SIM_CONSUMER = 0, CTL_SIM_PV = 1, CTL_SIM_PV_BATTERY = 2, CTL_SIM_CLASSES = 3 };
enum ctl_sim_strategy {
    CTL_SIM_TRUTHFUL = 0, /* limit price = its own valuation */
    CTL_SIM_ZIC = 1,      /* zero intelligence, constrained: uniform between valuation and band edge */
    CTL_SIM_BATTERY = 2,  /* truthful prices, battery dispatched by the last clearing price */
    CTL_SIM_STRATEGIES = 3
};
enum ctl_sim_shape { CTL_SIM_SHAPE_WORKER = 0, CTL_SIM_SHAPE_HOME = 1, CTL_SIM_SHAPE_LATE = 2, CTL_SIM_SHAPES = 3 };

const char *ctl_sim_class_name(int cls);
const char *ctl_sim_strategy_name(int s);

typedef struct {
    uint64_t seed;
    uint32_t slot_minutes;  /* simulated length of one slot; 15 */
    uint32_t start_minute;  /* simulated time of day at the start of slot index 0 of the run */
    int64_t slot_ms;        /* the chain's slot length (genesis market.slot_ms) */
    double latitude_deg;    /* PV site latitude; 45 */
    uint32_t day_of_year;   /* 1..365, sets the solar declination; 172 (June 21) */
    double cloudiness;      /* 0..1: depth of the cloud attenuation; 0.35 */
    double forecast_error;  /* relative spread of the actual around the forecast; 0.05 */
    double power_scale;     /* multiplies every prosumer's load and PV (a stressed feeder); 1 */
} ctl_sim_config;

/* Defaults above; seed 1, slot_ms 900000, start_minute 0. */
void ctl_sim_config_default(ctl_sim_config *c);

typedef struct {
    uint32_t index, bus;
    int cls, strategy, shape;
    double load_peak_w;     /* load at the shape's peak */
    double pv_peak_w;       /* PV output at 1000 W/m^2; 0 without PV */
    double batt_wh, batt_w; /* capacity (simulated Wh) and power limit; 0 without battery */
    double soc_wh;          /* state of charge, simulated Wh; evolves with ctl_sim_step */
    double value_u;         /* where its valuation sits in the tariff band, 0..1 */
} ctl_sim_prosumer;

/* Draws prosumer `index` at `bus` with the bus' peak load `bus_load_w` (shared by `per_bus`
 * prosumers placed on that bus): class by index (every 4th a consumer, every 4th from 3 a PV +
 * battery, the rest PV), strategy by class and index (PV and consumers alternate truthful and
 * ZIC; batteries use CTL_SIM_BATTERY), shape, PV ratio and valuation from the seed. */
void ctl_sim_prosumer_init(ctl_sim_prosumer *p, const ctl_sim_config *c, uint32_t index,
                           uint32_t bus, double bus_load_w, uint32_t per_bus);
/* The import and export capacity (W) its meter is registered with: twice the peak load (PV)
 * plus the battery's power, so no reading of the simulation reaches it; a consumer's meter
 * exports nothing (docs/market.md, "Meters"). */
void ctl_sim_meter_caps(const ctl_sim_prosumer *p, int64_t *import_w, int64_t *export_w);

/* What a prosumer sees of the market when it plans a slot: the slot's tariff band and the last
 * clearing price it observed (0 = none yet). */
typedef struct {
    int64_t retail_uunit_per_kwh, feed_in_uunit_per_kwh;
    int64_t last_price_uunit_per_kwh;
} ctl_sim_market;

/* One slot of one prosumer. Powers are slot averages in W; *_sim_wh are simulated energy over
 * slot_minutes; import_wh/export_wh and qty_wh are chain units (power * chain slot). */
typedef struct {
    uint32_t slot;           /* run-relative slot index */
    uint32_t minute;         /* simulated time of day at the slot's start */
    double pv_w, load_w, charge_w, discharge_w, net_w; /* actual; net = load + charge - pv - discharge */
    double pv_fc_w, load_fc_w;                         /* forecast used for the order */
    double pv_sim_wh, load_sim_wh, charge_sim_wh, discharge_sim_wh, import_sim_wh, export_sim_wh;
    double soc_before_wh, soc_after_wh;
    uint64_t import_wh, export_wh; /* the meter reading sent to the chain */
    int side;                      /* 0 = no order, else TEM__V1__SIDE__BUY / SELL */
    uint64_t qty_wh, price_uunit_per_kwh;
} ctl_sim_slot;

/* Advances prosumer p through run slot `slot` (call with slot 0, 1, 2, ...: the battery state
 * carries over) and fills *out. Prices always lie in [feed_in, retail] of m; qty_wh > 0 whenever
 * side != 0. Returns 0, or -1 when m's band is invalid (feed_in < 0 or feed_in > retail); p is
 * then unchanged. */
TEM_WUR int ctl_sim_step(const ctl_sim_config *c, ctl_sim_prosumer *p, uint32_t slot,
                         const ctl_sim_market *m, ctl_sim_slot *out);

/* Building blocks, exposed for tests and docs/sim.md. */
/* Clear-sky PV output per W of peak at simulated minute of day (0..1). */
double ctl_sim_clear_sky(const ctl_sim_config *c, double minute);
/* Cloud attenuation factor 0..1 (1 = clear) shared by the feeder at run slot `slot`. */
double ctl_sim_cloud(const ctl_sim_config *c, uint32_t slot);
/* Load shape value at minute of day, peak 1. */
double ctl_sim_load_shape(int shape, double minute);
/* Uniform [0,1) from SHA-256(seed, a, b, stream). */
double ctl_sim_u01(uint64_t seed, uint32_t a, uint32_t b, uint32_t stream);
/* Chain Wh of an average power over the chain's slot, rounded to nearest. */
uint64_t ctl_sim_chain_wh(const ctl_sim_config *c, double power_w);

#endif
