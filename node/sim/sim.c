/* sim.c: the prosumer model of the simulator (docs/sim.md): clear-sky PV with cloud noise,
 * residential load shapes, battery dispatch, and the bidding strategies that turn a forecast
 * into a limit order. Pure functions of the seed; no I/O and no clock. */
#include "node/sim/sim.h"

#include <math.h>

const char *ctl_sim_class_name(int cls) {
    static const char *const n[] = {"consumer", "pv", "pv+battery"};
    return cls >= 0 && cls < CTL_SIM_CLASSES ? n[cls] : "unknown";
}

const char *ctl_sim_strategy_name(int s) {
    static const char *const n[] = {"truthful", "zic", "battery"};
    return s >= 0 && s < CTL_SIM_STRATEGIES ? n[s] : "unknown";
}

void ctl_sim_config_default(ctl_sim_config *c) {
    *c = (ctl_sim_config){.seed = 1, .slot_minutes = 15, .start_minute = 0, .slot_ms = 900000,
                          .latitude_deg = 45.0, .day_of_year = 172, .cloudiness = 0.35,
                          .forecast_error = 0.05, .power_scale = 1.0};
}

double ctl_sim_u01(uint64_t seed, uint32_t a, uint32_t b, uint32_t stream) {
    uint8_t in[20], h[LEDGER_HASH_BYTES];
    tem_put_u64le(in, seed);
    tem_put_u32le(in + 8, a);
    tem_put_u32le(in + 12, b);
    tem_put_u32le(in + 16, stream);
    ledger_sha256(h, in, sizeof in);
    /* 53 bits fill a double's mantissa exactly, so the result is uniform on [0, 1). */
    return (double)(tem_get_u64le(h) >> 11) / 9007199254740992.0;
}

static double clamp(double x, double lo, double hi) { return x < lo ? lo : x > hi ? hi : x; }

/* Haurwitz's clear-sky model (1945): GHI = 1098 cos(z) exp(-0.059 / cos(z)) W/m^2, with the
 * solar zenith z from latitude, Cooper's declination for the day of year, and the hour angle
 * of local solar time. A PV array delivers GHI/1000 of its peak with a performance ratio of
 * 0.85 (inverter, temperature and wiring losses); orientation is ignored. */
double ctl_sim_clear_sky(const ctl_sim_config *c, double minute) {
    const double rad = M_PI / 180.0;
    double decl = 23.45 * sin(rad * 360.0 * (284.0 + c->day_of_year) / 365.0);
    double hour_angle = (fmod(minute, CTL_SIM_DAY_MINUTES) / 60.0 - 12.0) * 15.0;
    double lat = c->latitude_deg;
    double cosz = sin(rad * lat) * sin(rad * decl) + cos(rad * lat) * cos(rad * decl) * cos(rad * hour_angle);
    if (cosz <= 0.01) return 0.0;
    double ghi = 1098.0 * cosz * exp(-0.059 / cosz);
    return clamp(0.85 * ghi / 1000.0, 0.0, 1.0);
}

/* Clouds are regional, so every prosumer sees the same factor: two slow waves with seeded
 * phases (passing weather and cumulus of about an hour) plus a per-slot jitter. */
double ctl_sim_cloud(const ctl_sim_config *c, uint32_t slot) {
    double t = c->start_minute + (double)slot * c->slot_minutes;
    double ph1 = 2 * M_PI * ctl_sim_u01(c->seed, 0xC10D, 0, 1);
    double ph2 = 2 * M_PI * ctl_sim_u01(c->seed, 0xC10D, 0, 2);
    double j = ctl_sim_u01(c->seed, 0xC10D, slot, 3) - 0.5;
    double cover = 0.5 + 0.3 * sin(2 * M_PI * t / 210.0 + ph1) + 0.2 * sin(2 * M_PI * t / 55.0 + ph2) + 0.3 * j;
    return 1.0 - clamp(c->cloudiness, 0, 1) * clamp(cover, 0.0, 1.0);
}

/* Hourly residential shapes, peak 1 (stylised after domestic load profiles such as Elexon's
 * profile class 1): WORKER away in the day with morning and evening peaks, HOME occupied all
 * day, LATE a household whose peak is late in the evening. Linear between the hours. */
static const double SHAPES[CTL_SIM_SHAPES][24] = {
    {0.30, 0.25, 0.22, 0.22, 0.22, 0.25, 0.45, 0.70, 0.65, 0.40, 0.35, 0.35,
     0.38, 0.35, 0.33, 0.35, 0.45, 0.70, 0.95, 1.00, 0.90, 0.75, 0.55, 0.40},
    {0.35, 0.30, 0.28, 0.28, 0.28, 0.30, 0.40, 0.55, 0.60, 0.60, 0.62, 0.65,
     0.70, 0.65, 0.60, 0.60, 0.65, 0.80, 0.95, 1.00, 0.92, 0.80, 0.60, 0.45},
    {0.55, 0.45, 0.35, 0.30, 0.28, 0.28, 0.30, 0.40, 0.45, 0.40, 0.38, 0.38,
     0.40, 0.38, 0.38, 0.40, 0.45, 0.55, 0.70, 0.80, 0.90, 1.00, 0.95, 0.75},
};

double ctl_sim_load_shape(int shape, double minute) {
    if (shape < 0 || shape >= CTL_SIM_SHAPES) shape = 0;
    double h = fmod(minute, CTL_SIM_DAY_MINUTES) / 60.0;
    if (h < 0) h += 24.0;
    int i = (int)h;
    double f = h - i;
    return SHAPES[shape][i % 24] * (1 - f) + SHAPES[shape][(i + 1) % 24] * f;
}

uint64_t ctl_sim_chain_wh(const ctl_sim_config *c, double power_w) {
    if (!(power_w > 0)) return 0;
    return (uint64_t)llround(power_w * (double)c->slot_ms / 3600000.0);
}

void ctl_sim_meter_caps(const ctl_sim_prosumer *p, int64_t *import_w, int64_t *export_w) {
    *import_w = (int64_t)ceil(2.0 * p->load_peak_w + p->batt_w) + 1000;
    *export_w = p->cls == CTL_SIM_CONSUMER ? 0 : (int64_t)ceil(2.0 * p->pv_peak_w + p->batt_w) + 1000;
}

void ctl_sim_prosumer_init(ctl_sim_prosumer *p, const ctl_sim_config *c, uint32_t index,
                           uint32_t bus, double bus_load_w, uint32_t per_bus) {
    memset(p, 0, sizeof *p);
    p->index = index;
    p->bus = bus;
    switch (index % 4) {
    case 0: p->cls = CTL_SIM_CONSUMER; break;
    case 3: p->cls = CTL_SIM_PV_BATTERY; break;
    default: p->cls = CTL_SIM_PV; break;
    }
    if (p->cls == CTL_SIM_PV_BATTERY) p->strategy = CTL_SIM_BATTERY;
    else if (p->cls == CTL_SIM_PV) p->strategy = index % 4 == 1 ? CTL_SIM_TRUTHFUL : CTL_SIM_ZIC;
    else p->strategy = (index / 4) % 2 ? CTL_SIM_ZIC : CTL_SIM_TRUTHFUL;
    p->shape = (int)(ctl_sim_u01(c->seed, index, 0, 1) * CTL_SIM_SHAPES) % CTL_SIM_SHAPES;
    /* A prosumer stands for the homes behind its bus: it carries its share of the bus' load. */
    p->load_peak_w = (bus_load_w > 0 ? bus_load_w : 20000.0) / (per_bus ? per_bus : 1);
    /* power_scale grows load and PV together, as more homes or bigger installations behind
     * the same buses would: the way to load a feeder until the DSO's check curtails trades. */
    if (c->power_scale > 0) p->load_peak_w *= c->power_scale;
    if (p->cls != CTL_SIM_CONSUMER)
        p->pv_peak_w = p->load_peak_w * (0.8 + 1.2 * ctl_sim_u01(c->seed, index, 0, 2));
    if (p->cls == CTL_SIM_PV_BATTERY) {
        p->batt_w = 0.5 * p->pv_peak_w;
        p->batt_wh = 2.0 * p->batt_w; /* a two-hour battery */
        p->soc_wh = 0.5 * p->batt_wh;
    }
    p->value_u = ctl_sim_u01(c->seed, index, 0, 3);
}

/* Price as the integer floor of lo + f * (hi - lo), kept inside [lo, hi]. */
static uint64_t price_in(int64_t lo, int64_t hi, double f) {
    double p = (double)lo + clamp(f, 0, 1) * (double)(hi - lo);
    int64_t v = (int64_t)floor(p);
    return (uint64_t)(v < lo ? lo : v > hi ? hi : v);
}

int ctl_sim_step(const ctl_sim_config *c, ctl_sim_prosumer *p, uint32_t slot,
                 const ctl_sim_market *m, ctl_sim_slot *out) {
    if (m->feed_in_uunit_per_kwh < 0 || m->feed_in_uunit_per_kwh > m->retail_uunit_per_kwh) return -1;
    memset(out, 0, sizeof *out);
    const double dt_h = c->slot_minutes / 60.0;
    const double spread = c->forecast_error * sqrt(3.0); /* uniform with this relative sd */
    double minute = c->start_minute + (double)slot * c->slot_minutes;
    double mid = minute + c->slot_minutes / 2.0;
    out->slot = slot;
    out->minute = (uint32_t)fmod(minute, CTL_SIM_DAY_MINUTES);

    out->load_fc_w = p->load_peak_w * ctl_sim_load_shape(p->shape, mid);
    out->pv_fc_w = p->pv_peak_w * ctl_sim_clear_sky(c, mid) * ctl_sim_cloud(c, slot);
    out->load_w = out->load_fc_w * (1 + spread * (2 * ctl_sim_u01(c->seed, p->index, slot, 4) - 1));
    out->pv_w = out->pv_fc_w * (1 + spread * (2 * ctl_sim_u01(c->seed, p->index, slot, 5) - 1));
    if (out->load_w < 0) out->load_w = 0;
    if (out->pv_w < 0) out->pv_w = 0;

    /* Battery dispatch is planned on the forecast and then held through the slot; the grid
     * takes the forecast error. A high last price means energy is worth selling now: keep the
     * surplus for the market and, with a charge above half, discharge into it. */
    double charge = 0, discharge = 0;
    if (p->batt_wh > 0) {
        int64_t band = m->retail_uunit_per_kwh - m->feed_in_uunit_per_kwh;
        double pref = m->last_price_uunit_per_kwh > 0 ? (double)m->last_price_uunit_per_kwh
                                                      : m->feed_in_uunit_per_kwh + band / 2.0;
        bool high = pref >= m->feed_in_uunit_per_kwh + 0.6 * band;
        double room_w = (p->batt_wh - p->soc_wh) / (CTL_SIM_BATTERY_EFFICIENCY * dt_h);
        double avail_w = (p->soc_wh - 0.1 * p->batt_wh) / dt_h;
        if (room_w < 0) room_w = 0;
        if (avail_w < 0) avail_w = 0;
        double net_fc = out->load_fc_w - out->pv_fc_w;
        if (net_fc < 0 && !high) charge = fmin(-net_fc, fmin(p->batt_w, room_w));
        if (net_fc > 0) discharge = fmin(net_fc, fmin(p->batt_w, avail_w));
        if (high && net_fc <= 0 && p->soc_wh >= 0.5 * p->batt_wh) discharge = fmin(p->batt_w, avail_w);
    }
    out->charge_w = charge;
    out->discharge_w = discharge;
    out->soc_before_wh = p->soc_wh;
    p->soc_wh += (charge * CTL_SIM_BATTERY_EFFICIENCY - discharge) * dt_h;
    out->soc_after_wh = p->soc_wh;

    out->net_w = out->load_w + charge - out->pv_w - discharge;
    out->pv_sim_wh = out->pv_w * dt_h;
    out->load_sim_wh = out->load_w * dt_h;
    out->charge_sim_wh = charge * dt_h;
    out->discharge_sim_wh = discharge * dt_h;
    out->import_sim_wh = out->net_w > 0 ? out->net_w * dt_h : 0;
    out->export_sim_wh = out->net_w < 0 ? -out->net_w * dt_h : 0;
    out->import_wh = ctl_sim_chain_wh(c, out->net_w);
    out->export_wh = ctl_sim_chain_wh(c, -out->net_w);

    double nf = out->load_fc_w + charge - out->pv_fc_w - discharge;
    uint64_t q = ctl_sim_chain_wh(c, nf > 0 ? nf : -nf);
    if (q == 0) return 0;
    int64_t fi = m->feed_in_uunit_per_kwh, rt = m->retail_uunit_per_kwh;
    double j = ctl_sim_u01(c->seed, p->index, slot, 7) - 0.5;
    double u = clamp(p->value_u + 0.1 * j, 0, 1);
    double z = ctl_sim_u01(c->seed, p->index, slot, 8);
    out->qty_wh = q;
    /* Valuations: a buyer values a kWh in the upper half of the band (its alternative is the
     * retail tariff), a seller in the lower half (its alternative is the feed-in tariff). A ZIC
     * trader draws uniformly between its valuation and the band edge on its side, so it never
     * trades at a loss (Gode and Sunder, 1993). */
    if (nf > 0) {
        out->side = TEM__V1__SIDE__BUY;
        double v = 0.5 + 0.5 * u;
        out->price_uunit_per_kwh = price_in(fi, rt, p->strategy == CTL_SIM_ZIC ? z * v : v);
    } else {
        out->side = TEM__V1__SIDE__SELL;
        double v = 0.5 * u;
        out->price_uunit_per_kwh = price_in(fi, rt, p->strategy == CTL_SIM_ZIC ? v + z * (1 - v) : v);
    }
    return 0;
}
