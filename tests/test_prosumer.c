/* test_prosumer.c: Check suite for the prosumer simulator (node/sim/sim.c, node/sim/sim_run.c) and the
 * blocking HTTP client of temctl sim/testnet (node/ctl/http.c): energy balance in every
 * slot, determinism from the seed, prices inside the tariff band for every strategy, battery
 * dispatch by price, placement on the feeder, the slot schedule, and the client against a
 * scripted server in a child process (content-length, chunked, keep-alive, close, garbage). */
#include <check.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "node/sim/testnet.h"

static ctl_sim_config cfg(uint64_t seed) {
    ctl_sim_config c;
    ctl_sim_config_default(&c);
    c.seed = seed;
    return c;
}

static const ctl_sim_market BAND = {.retail_uunit_per_kwh = 300000, .feed_in_uunit_per_kwh = 80000};

/* ------------------------------------------------------------------ physics */
START_TEST(sim_step_balances_energy_in_every_slot_of_a_day) {
    ctl_sim_config c = cfg(7);
    for (uint32_t i = 0; i < 16; i++) {
        ctl_sim_prosumer p;
        ctl_sim_prosumer_init(&p, &c, i, 2 + i, 60000.0 + 5000.0 * i, 1);
        for (uint32_t k = 0; k < 96; k++) {
            ctl_sim_slot s;
            ck_assert_int_eq(ctl_sim_step(&c, &p, k, &BAND, &s), 0);
            double in = s.pv_sim_wh + s.import_sim_wh + s.discharge_sim_wh;
            double out = s.load_sim_wh + s.export_sim_wh + s.charge_sim_wh;
            ck_assert_msg(fabs(in - out) < 1e-6, "prosumer %u slot %u: in %f out %f", i, k, in, out);
            /* A meter sees one direction per slot, and the chain reading is that energy over the
             * chain's slot length. */
            ck_assert(s.import_sim_wh == 0 || s.export_sim_wh == 0);
            ck_assert_uint_eq(s.import_wh, ctl_sim_chain_wh(&c, s.net_w));
            ck_assert_uint_eq(s.export_wh, ctl_sim_chain_wh(&c, -s.net_w));
            double dsoc = (s.charge_w * CTL_SIM_BATTERY_EFFICIENCY - s.discharge_w) * c.slot_minutes / 60.0;
            ck_assert(fabs(s.soc_after_wh - s.soc_before_wh - dsoc) < 1e-6);
            ck_assert(s.soc_after_wh >= -1e-9 && s.soc_after_wh <= p.batt_wh + 1e-9);
            ck_assert(s.charge_w == 0 || s.discharge_w == 0);
            if (p.cls == CTL_SIM_CONSUMER) ck_assert(s.pv_w == 0 && s.export_wh == 0);
        }
    }
}
END_TEST

/* The meter capacities the testnet registers: no reading of a simulated day reaches them, for
 * a 15-minute and a 2-second chain slot and a stressed feeder (the market refuses a reading
 * above capacity x slot length, docs/market.md section 7). */
START_TEST(sim_readings_stay_inside_the_meter_capacity) {
    const int64_t slots_ms[2] = {900000, 2000};
    for (int z = 0; z < 2; z++)
        for (int ps = 1; ps <= 3; ps += 2) {
            ctl_sim_config c = cfg(11 + (uint64_t)ps);
            c.slot_ms = slots_ms[z];
            c.power_scale = ps;
            for (uint32_t i = 0; i < 24; i++) {
                ctl_sim_prosumer p;
                ctl_sim_prosumer_init(&p, &c, i, 2 + i, 30000.0 + 7000.0 * i, 1 + i % 3);
                int64_t iw, ew;
                ctl_sim_meter_caps(&p, &iw, &ew);
                ck_assert_int_gt(iw, 0);
                if (p.cls == CTL_SIM_CONSUMER) ck_assert_int_eq(ew, 0);
                /* The chain's rule: floor(capacity_W * slot_ms / 3600000). */
                uint64_t icap = (uint64_t)(iw * c.slot_ms / 3600000), ecap = (uint64_t)(ew * c.slot_ms / 3600000);
                for (uint32_t k = 0; k < 96; k++) {
                    ctl_sim_slot s;
                    ck_assert_int_eq(ctl_sim_step(&c, &p, k, &BAND, &s), 0);
                    ck_assert_msg(s.import_wh <= icap && s.export_wh <= ecap,
                                  "prosumer %u slot %u: %lu/%lu Wh over caps %lu/%lu", i, k,
                                  (unsigned long)s.import_wh, (unsigned long)s.export_wh,
                                  (unsigned long)icap, (unsigned long)ecap);
                }
            }
        }
}
END_TEST

START_TEST(sim_chain_energy_scales_with_the_chain_slot_not_the_simulated_slot) {
    ctl_sim_config c = cfg(1);
    c.slot_ms = 900000; /* 15 min: 40 kW for a quarter hour is 10 kWh */
    ck_assert_uint_eq(ctl_sim_chain_wh(&c, 40000.0), 10000);
    c.slot_ms = 2000; /* 2 s: the same power carries 22.2 Wh */
    ck_assert_uint_eq(ctl_sim_chain_wh(&c, 40000.0), 22);
    ck_assert_uint_eq(ctl_sim_chain_wh(&c, -5.0), 0);
    ck_assert_uint_eq(ctl_sim_chain_wh(&c, NAN), 0);
}
END_TEST

START_TEST(sim_clear_sky_is_dark_at_night_and_peaks_at_solar_noon) {
    ctl_sim_config c = cfg(1);
    ck_assert(ctl_sim_clear_sky(&c, 0) == 0);
    ck_assert(ctl_sim_clear_sky(&c, 3 * 60) == 0);
    ck_assert(ctl_sim_clear_sky(&c, 23 * 60) == 0);
    double noon = ctl_sim_clear_sky(&c, 12 * 60);
    ck_assert(noon > 0.6 && noon <= 1.0);
    for (int m = 0; m < 1440; m += 15) ck_assert(ctl_sim_clear_sky(&c, m) <= noon + 1e-12);
    /* Symmetric about solar noon. */
    ck_assert(fabs(ctl_sim_clear_sky(&c, 9 * 60) - ctl_sim_clear_sky(&c, 15 * 60)) < 1e-9);
    /* Winter at 45 degrees north gives less than summer. */
    ctl_sim_config w = c;
    w.day_of_year = 355;
    ck_assert(ctl_sim_clear_sky(&w, 12 * 60) < noon);
    for (uint32_t k = 0; k < 96; k++) {
        double f = ctl_sim_cloud(&c, k);
        ck_assert(f >= 1 - c.cloudiness - 1e-12 && f <= 1.0);
    }
    c.cloudiness = 0;
    ck_assert(ctl_sim_cloud(&c, 5) == 1.0);
}
END_TEST

START_TEST(sim_load_shapes_peak_at_one_in_the_evening) {
    for (int sh = 0; sh < CTL_SIM_SHAPES; sh++) {
        double mx = 0;
        int at = 0;
        for (int m = 0; m < 1440; m += 15) {
            double v = ctl_sim_load_shape(sh, m);
            ck_assert(v > 0 && v <= 1.0);
            if (v > mx) mx = v, at = m;
        }
        ck_assert(fabs(mx - 1.0) < 1e-12);
        ck_assert_int_ge(at, 17 * 60);
    }
    /* Wraps at midnight without a jump. */
    ck_assert(fabs(ctl_sim_load_shape(0, 1439.999) - ctl_sim_load_shape(0, 0)) < 1e-3);
}
END_TEST

/* ------------------------------------------------------------------ determinism */
static void run_day(uint64_t seed, ctl_sim_slot *out, uint32_t n, uint32_t slots) {
    ctl_sim_config c = cfg(seed);
    for (uint32_t i = 0; i < n; i++) {
        ctl_sim_prosumer p;
        ctl_sim_prosumer_init(&p, &c, i, 2 + i, 90000.0, 1);
        for (uint32_t k = 0; k < slots; k++) ck_assert_int_eq(ctl_sim_step(&c, &p, k, &BAND, &out[k * n + i]), 0);
    }
}

START_TEST(sim_same_seed_gives_the_same_day_and_another_seed_another) {
    enum { N = 8, S = 96 };
    static ctl_sim_slot a[N * S], b[N * S], d[N * S];
    run_day(42, a, N, S);
    run_day(42, b, N, S);
    run_day(43, d, N, S);
    ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
    size_t differ = 0;
    for (size_t i = 0; i < N * S; i++)
        differ += a[i].import_wh != d[i].import_wh || a[i].export_wh != d[i].export_wh ||
                  a[i].price_uunit_per_kwh != d[i].price_uunit_per_kwh;
    ck_assert_uint_gt(differ, N * S / 2);
    /* Draws are independent of call order: prosumer 5 alone sees what it saw in the crowd. */
    ctl_sim_config c = cfg(42);
    ctl_sim_prosumer p;
    ctl_sim_prosumer_init(&p, &c, 5, 7, 90000.0, 1);
    for (uint32_t k = 0; k < S; k++) {
        ctl_sim_slot s;
        ck_assert_int_eq(ctl_sim_step(&c, &p, k, &BAND, &s), 0);
        ck_assert_uint_eq(s.import_wh, a[k * N + 5].import_wh);
        ck_assert_uint_eq(s.price_uunit_per_kwh, a[k * N + 5].price_uunit_per_kwh);
    }
    ck_assert(ctl_sim_u01(1, 2, 3, 4) == ctl_sim_u01(1, 2, 3, 4));
    ck_assert(ctl_sim_u01(1, 2, 3, 4) != ctl_sim_u01(1, 2, 3, 5));
}
END_TEST

/* ------------------------------------------------------------------ strategies */
START_TEST(sim_prices_stay_inside_the_tariff_band_for_every_strategy_and_band) {
    static const struct {
        const char *name;
        int64_t retail, feed_in;
    } rows[] = {
        {"typical band", 300000, 80000},
        {"narrow band", 100001, 100000},
        {"no band", 150000, 150000},
        {"zero feed-in", 250000, 0},
        {"largest prices", 1000000000, 999000000},
    };
    ctl_sim_config c = cfg(9);
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        ctl_sim_market m = {.retail_uunit_per_kwh = rows[r].retail, .feed_in_uunit_per_kwh = rows[r].feed_in};
        int seen[CTL_SIM_STRATEGIES][3] = {{0}};
        for (uint32_t i = 0; i < 24; i++) {
            ctl_sim_prosumer p;
            ctl_sim_prosumer_init(&p, &c, i, 2 + i, 80000.0, 1);
            for (uint32_t k = 0; k < 96; k++) {
                m.last_price_uunit_per_kwh = k % 3 ? 0 : rows[r].retail;
                ctl_sim_slot s;
                ck_assert_int_eq(ctl_sim_step(&c, &p, k, &m, &s), 0);
                if (!s.side) continue;
                seen[p.strategy][s.side]++;
                ck_assert_msg((int64_t)s.price_uunit_per_kwh >= rows[r].feed_in &&
                                  (int64_t)s.price_uunit_per_kwh <= rows[r].retail,
                              "%s: prosumer %u slot %u price %llu", rows[r].name, i, k,
                              (unsigned long long)s.price_uunit_per_kwh);
                ck_assert_uint_gt(s.qty_wh, 0);
                if (p.cls == CTL_SIM_CONSUMER) ck_assert_int_eq(s.side, TEM__V1__SIDE__BUY);
            }
        }
        /* The table exercised every strategy on both sides. */
        for (int st = 0; st < CTL_SIM_STRATEGIES; st++)
            ck_assert_msg(seen[st][TEM__V1__SIDE__BUY] + seen[st][TEM__V1__SIDE__SELL] > 0, "%s: strategy %d unused",
                          rows[r].name, st);
        ck_assert_int_gt(seen[CTL_SIM_TRUTHFUL][TEM__V1__SIDE__SELL], 0);
        ck_assert_int_gt(seen[CTL_SIM_ZIC][TEM__V1__SIDE__SELL], 0);
        ck_assert_int_gt(seen[CTL_SIM_ZIC][TEM__V1__SIDE__BUY], 0);
    }
}
END_TEST

START_TEST(sim_zic_trader_never_bids_past_its_own_valuation) {
    ctl_sim_config c = cfg(3);
    for (uint32_t i = 0; i < 32; i++) {
        ctl_sim_prosumer z, t;
        ctl_sim_prosumer_init(&z, &c, i, 3, 70000.0, 1);
        if (z.strategy != CTL_SIM_ZIC) continue;
        t = z;
        t.strategy = CTL_SIM_TRUTHFUL;
        for (uint32_t k = 0; k < 96; k++) {
            ctl_sim_slot sz, st;
            ck_assert_int_eq(ctl_sim_step(&c, &z, k, &BAND, &sz), 0);
            ck_assert_int_eq(ctl_sim_step(&c, &t, k, &BAND, &st), 0);
            ck_assert_int_eq(sz.side, st.side);
            ck_assert_uint_eq(sz.qty_wh, st.qty_wh);
            if (sz.side == TEM__V1__SIDE__BUY) ck_assert_uint_le(sz.price_uunit_per_kwh, st.price_uunit_per_kwh);
            if (sz.side == TEM__V1__SIDE__SELL) ck_assert_uint_ge(sz.price_uunit_per_kwh, st.price_uunit_per_kwh);
        }
    }
}
END_TEST

/* Buyers value above the middle of the band and sellers below it, so truthful orders cross. */
START_TEST(sim_truthful_buyers_and_sellers_sit_on_their_halves_of_the_band) {
    ctl_sim_config c = cfg(5);
    int64_t mid = (BAND.retail_uunit_per_kwh + BAND.feed_in_uunit_per_kwh) / 2;
    for (uint32_t i = 0; i < 32; i++) {
        ctl_sim_prosumer p;
        ctl_sim_prosumer_init(&p, &c, i, 3, 70000.0, 1);
        if (p.strategy == CTL_SIM_ZIC) continue;
        for (uint32_t k = 0; k < 96; k++) {
            ctl_sim_slot s;
            ck_assert_int_eq(ctl_sim_step(&c, &p, k, &BAND, &s), 0);
            if (s.side == TEM__V1__SIDE__BUY) ck_assert_int_ge((int64_t)s.price_uunit_per_kwh, mid);
            if (s.side == TEM__V1__SIDE__SELL) ck_assert_int_le((int64_t)s.price_uunit_per_kwh, mid);
        }
    }
}
END_TEST

START_TEST(sim_battery_keeps_surplus_for_a_high_price_and_stores_it_for_a_low_one) {
    ctl_sim_config c = cfg(11);
    c.cloudiness = 0;
    c.start_minute = 12 * 60;
    ctl_sim_prosumer p;
    ctl_sim_prosumer_init(&p, &c, 3, 5, 60000.0, 1); /* index 3: PV + battery */
    ck_assert_int_eq(p.cls, CTL_SIM_PV_BATTERY);
    ck_assert_int_eq(p.strategy, CTL_SIM_BATTERY);
    p.pv_peak_w = 3 * p.load_peak_w; /* surely a surplus at noon */
    ctl_sim_prosumer hi = p, lo = p;
    ctl_sim_market mh = BAND, ml = BAND;
    mh.last_price_uunit_per_kwh = 290000;
    ml.last_price_uunit_per_kwh = 90000;
    ctl_sim_slot sh, sl;
    ck_assert_int_eq(ctl_sim_step(&c, &hi, 0, &mh, &sh), 0);
    ck_assert_int_eq(ctl_sim_step(&c, &lo, 0, &ml, &sl), 0);
    ck_assert(sl.pv_fc_w > sl.load_fc_w); /* a surplus at noon on a clear day */
    ck_assert(sl.charge_w > 0 && sl.discharge_w == 0);
    ck_assert(sh.charge_w == 0 && sh.discharge_w > 0); /* half full: sells into the high price */
    ck_assert_int_eq(sh.side, TEM__V1__SIDE__SELL);
    ck_assert_uint_gt(sh.qty_wh, sl.qty_wh);
    ck_assert(hi.soc_wh < p.soc_wh && lo.soc_wh > p.soc_wh);
}
END_TEST

START_TEST(sim_step_refuses_an_inverted_band_and_changes_nothing) {
    ctl_sim_config c = cfg(2);
    ctl_sim_prosumer p;
    ctl_sim_prosumer_init(&p, &c, 3, 5, 60000.0, 1);
    ctl_sim_prosumer before = p;
    ctl_sim_slot s;
    ctl_sim_market bad = {.retail_uunit_per_kwh = 100, .feed_in_uunit_per_kwh = 200};
    ck_assert_int_eq(ctl_sim_step(&c, &p, 0, &bad, &s), -1);
    bad = (ctl_sim_market){.retail_uunit_per_kwh = 100, .feed_in_uunit_per_kwh = -1};
    ck_assert_int_eq(ctl_sim_step(&c, &p, 0, &bad, &s), -1);
    ck_assert_int_eq(memcmp(&p, &before, sizeof p), 0);
}
END_TEST

START_TEST(sim_classes_follow_the_index_and_the_bus_load_is_shared) {
    ctl_sim_config c = cfg(1);
    static const int want_cls[8] = {CTL_SIM_CONSUMER, CTL_SIM_PV, CTL_SIM_PV, CTL_SIM_PV_BATTERY,
                                    CTL_SIM_CONSUMER, CTL_SIM_PV, CTL_SIM_PV, CTL_SIM_PV_BATTERY};
    for (uint32_t i = 0; i < 8; i++) {
        ctl_sim_prosumer p;
        ctl_sim_prosumer_init(&p, &c, i, 4, 120000.0, 3);
        ck_assert_int_eq(p.cls, want_cls[i]);
        ck_assert(fabs(p.load_peak_w - 40000.0) < 1e-9);
        ck_assert_int_eq(p.pv_peak_w > 0, p.cls != CTL_SIM_CONSUMER);
        ck_assert_int_eq(p.batt_wh > 0, p.cls == CTL_SIM_PV_BATTERY);
    }
    ck_assert_str_eq(ctl_sim_class_name(CTL_SIM_PV_BATTERY), "pv+battery");
    ck_assert_str_eq(ctl_sim_strategy_name(CTL_SIM_ZIC), "zic");
    ck_assert_str_eq(ctl_sim_class_name(99), "unknown");
}
END_TEST

/* ------------------------------------------------------------------ placement and schedule */
START_TEST(sim_place_puts_prosumers_round_robin_on_non_slack_buses) {
    static const char buses[] = "bus,type,pd_kw,qd_kvar,vmin_pu,vmax_pu,base_kv\n"
                                "1,slack,0,0,1,1,12.66\n2,pq,100,60,0.9,1.1,12.66\n3,pq,90,40,0.9,1.1,12.66\n";
    static const char lines[] = "from,to,r_ohm,x_ohm,rate_kva\n1,2,0.1,0.05,1000\n2,3,0.2,0.1,800\n";
    ctl_feeder f = {0};
    char err[CTL_FEEDER_ERR_BYTES];
    ck_assert_int_eq(ctl_feeder_parse(&f, buses, strlen(buses), lines, strlen(lines), err, sizeof err), 0);
    uint32_t bus[5], per[5];
    double load[5];
    ck_assert_int_eq(ctl_sim_place(&f, 5, bus, load, per), 0);
    static const uint32_t want_bus[5] = {2, 3, 2, 3, 2}, want_per[5] = {3, 2, 3, 2, 3};
    for (int i = 0; i < 5; i++) {
        ck_assert_uint_eq(bus[i], want_bus[i]);
        ck_assert_uint_eq(per[i], want_per[i]);
    }
    ck_assert(load[0] == 100000.0 && load[1] == 90000.0);
    ctl_feeder_free(&f);
}
END_TEST

START_TEST(sim_start_minute_centres_short_runs_on_midday) {
    ck_assert_uint_eq(ctl_sim_start_minute(96, 15), 0);
    ck_assert_uint_eq(ctl_sim_start_minute(200, 15), 0);
    ck_assert_uint_eq(ctl_sim_start_minute(8, 15), 690); /* 11:30 .. 13:30 */
    ck_assert_uint_eq(ctl_sim_start_minute(1, 15), 735);
    ck_assert_uint_eq(ctl_sim_start_minute(90, 15), 75); /* 01:15 .. 23:45 */
}
END_TEST

START_TEST(simrun_schedule_orders_before_the_gate_and_readings_after_the_slot) {
    ledger_genesis g = {0};
    g.genesis_time_ms = 1000000;
    g.market.slot_ms = 2000;
    g.market.gate_closure_ms = 2000;
    g.n_tariffs = 2;
    g.tariffs[0] = (ledger_tariff){0, 300000, 80000};
    g.tariffs[1] = (ledger_tariff){17 * 60, 400000, 50000};
    ctl_simrun r = {.g = &g, .first_slot = 10};
    /* Slot 10 starts at 1,020,000; the gate shuts 2 s before; orders 2 slots before that. */
    ck_assert_int_eq(ctl_simrun_order_ms(&r, 0), 1020000 - 2000 - 4000);
    ck_assert_int_eq(ctl_simrun_reading_ms(&r, 0), 1022000 + 200);
    ck_assert_int_eq(ctl_simrun_order_ms(&r, 1) - ctl_simrun_order_ms(&r, 0), 2000);
    ck_assert_uint_eq(ctl_simrun_first_slot(&g, 1014000), 10);
    ck_assert_uint_eq(ctl_simrun_first_slot(&g, 1014001), 11);
    ck_assert_uint_eq(ctl_simrun_first_slot(&g, 0), 0);
    int64_t rt, fi;
    ctl_simrun_tariff(&g, 0, &rt, &fi);
    ck_assert(rt == 300000 && fi == 80000);
    g.genesis_time_ms = 17ull * 3600000; /* 17:00 UTC: the second period */
    ctl_simrun_tariff(&g, 0, &rt, &fi);
    ck_assert(rt == 400000 && fi == 50000);
}
END_TEST

/* ------------------------------------------------------------------ HTTP client */
START_TEST(http_init_parses_host_and_port_and_refuses_junk) {
    static const struct {
        const char *url;
        int rc;
        const char *host;
        unsigned port;
    } rows[] = {
        {"127.0.0.1:8080", 0, "127.0.0.1", 8080}, {"http://localhost:26700/", 0, "localhost", 26700},
        {"[::1]:80", 0, "[::1]", 80},            {"127.0.0.1", -1, "", 0},
        {":80", -1, "", 0},                      {"h:0", -1, "", 0},
        {"h:65536", -1, "", 0},                  {"h:80x", -1, "", 0},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        ctl_http_conn c;
        ck_assert_msg(ctl_http_init(&c, rows[i].url, 1000) == rows[i].rc, "row %zu %s", i, rows[i].url);
        if (rows[i].rc == 0) {
            ck_assert_str_eq(c.host, rows[i].host);
            ck_assert_uint_eq(c.port, rows[i].port);
            ck_assert_int_eq(c.fd, -1);
        }
    }
}
END_TEST

/* A scripted server in a child: answers each request on one connection with the next canned
 * response, then closes when the script says so. */
static const char *const SCRIPT[] = {
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n"
    "{\"height\":\"12\",\"view\":3.0}\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    "5\r\n{\"sta\r\n1a\r\ntus\":\"committed\",\"x\":[1]}\r\n0\r\n\r\n",
    "HTTP/1.1 202 Accepted\r\nContent-Length: 12\r\nConnection: close\r\n\r\n{\"txid\":\"a\"}",
    /* second connection */
    "HTTP/1.1 400 Bad Request\r\nContent-Length: 31\r\n\r\n{\"error\":\"bad\",\"code\":\"ENONCE\"}",
    "garbage without a status line\r\n\r\n",
};

static void serve(int ls) {
    size_t next = 0;
    while (next < sizeof SCRIPT / sizeof SCRIPT[0]) {
        int fd = accept(ls, NULL, NULL);
        if (fd < 0) _exit(1);
        for (;;) {
            char buf[4096];
            size_t n = 0;
            buf[0] = 0;
            /* Read one request: headers, then Content-Length bytes. */
            while (!strstr(buf, "\r\n\r\n")) {
                ssize_t r = recv(fd, buf + n, sizeof buf - 1 - n, 0);
                if (r <= 0) break;
                n += (size_t)r;
                buf[n] = 0;
            }
            if (!strstr(buf, "\r\n\r\n")) break;
            const char *cl = strcasestr(buf, "Content-Length: ");
            size_t want = cl ? strtoul(cl + 16, NULL, 10) : 0;
            size_t have = n - (size_t)(strstr(buf, "\r\n\r\n") + 4 - buf);
            while (have < want) {
                ssize_t r = recv(fd, buf, sizeof buf, 0);
                if (r <= 0) break;
                have += (size_t)r;
            }
            const char *resp = SCRIPT[next++];
            if (send(fd, resp, strlen(resp), MSG_NOSIGNAL) < 0) break;
            if (strstr(resp, "Connection: close") || next == sizeof SCRIPT / sizeof SCRIPT[0]) break;
        }
        close(fd);
    }
    _exit(0);
}

START_TEST(http_client_reads_length_chunked_and_close_and_rejects_garbage) {
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(ls, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    ck_assert_int_eq(bind(ls, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(listen(ls, 4), 0);
    ck_assert_int_eq(getsockname(ls, (struct sockaddr *)&a, &al), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) serve(ls);
    close(ls);
    char url[64];
    snprintf(url, sizeof url, "127.0.0.1:%u", ntohs(a.sin_port));
    ctl_http_conn c;
    ck_assert_int_eq(ctl_http_init(&c, url, 3000), 0);

    int st;
    json_t *j = ctl_api_get(&c, "/v1/status", &st);
    ck_assert_int_eq(st, 200);
    ck_assert_ptr_nonnull(j);
    /* Numbers as strings and reals are read; an absent name gives the default. */
    ck_assert_int_eq(ctl_json_i64(j, (const char *const[]){"last_height", "height", NULL}, -1), 12);
    ck_assert_int_eq(ctl_json_i64(j, (const char *const[]){"view", NULL}, -1), 3);
    ck_assert_int_eq(ctl_json_i64(j, (const char *const[]){"absent", NULL}, -1), -1);
    json_decref(j);
    int fd_before = c.fd;
    ck_assert_int_ge(fd_before, 0); /* kept alive */

    j = ctl_api_get(&c, "/v1/tx/ab", &st);
    ck_assert_int_eq(st, 200);
    ck_assert_str_eq(ctl_json_str(j, (const char *const[]){"status", NULL}), "committed");
    ck_assert_int_eq(c.fd, fd_before); /* same connection */
    json_decref(j);

    char err[64];
    uint8_t tx[3] = {1, 2, 3};
    ck_assert_int_eq(ctl_api_submit(&c, tx, sizeof tx, err, sizeof err), 202);
    ck_assert_int_eq(c.fd, -1); /* the server said close */

    ck_assert_msg(ctl_api_submit(&c, tx, sizeof tx, err, sizeof err) == 400, "%s", err);
    ck_assert_str_eq(err, "ENONCE");

    ctl_http_resp r;
    ck_assert_int_eq(ctl_http_request(&c, "GET", "/x", NULL, NULL, 0, &r), -1);
    ck_assert_ptr_nonnull(strstr(c.err, "malformed"));
    ck_assert_int_eq(c.fd, -1);

    int ws;
    ck_assert_int_eq(waitpid(pid, &ws, 0), pid);
    ck_assert(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    /* Nobody listens any more: a clean transport error. */
    ck_assert_int_eq(ctl_http_request(&c, "GET", "/x", NULL, NULL, 0, &r), -1);
    ck_assert_int_eq(ctl_api_status_get(&c, &(ctl_api_status){0}), -1);
}
END_TEST


START_TEST(sim_power_scale_multiplies_load_and_pv_and_nothing_else) {
    ctl_sim_config c;
    ctl_sim_config_default(&c);
    ck_assert(c.power_scale == 1.0);
    for (uint32_t i = 0; i < 8; i++) {
        ctl_sim_prosumer a, b;
        ctl_sim_prosumer_init(&a, &c, i, 2 + i, 60000.0, 1);
        ctl_sim_config c4 = c;
        c4.power_scale = 4.0;
        ctl_sim_prosumer_init(&b, &c4, i, 2 + i, 60000.0, 1);
        ck_assert_msg(b.load_peak_w == 4.0 * a.load_peak_w, "prosumer %u load", i);
        ck_assert_msg(b.pv_peak_w == 4.0 * a.pv_peak_w, "prosumer %u pv", i);
        ck_assert_int_eq(b.cls, a.cls);
        ck_assert_int_eq(b.strategy, a.strategy);
        ck_assert(b.value_u == a.value_u);
    }
}
END_TEST

static Suite *prosumer_suite(void) {
    Suite *s = suite_create("prosumer");
    TCase *t = tcase_create("sim");
    tcase_add_test(t, sim_step_balances_energy_in_every_slot_of_a_day);
    tcase_add_test(t, sim_chain_energy_scales_with_the_chain_slot_not_the_simulated_slot);
    tcase_add_test(t, sim_readings_stay_inside_the_meter_capacity);
    tcase_add_test(t, sim_clear_sky_is_dark_at_night_and_peaks_at_solar_noon);
    tcase_add_test(t, sim_load_shapes_peak_at_one_in_the_evening);
    tcase_add_test(t, sim_same_seed_gives_the_same_day_and_another_seed_another);
    tcase_add_test(t, sim_prices_stay_inside_the_tariff_band_for_every_strategy_and_band);
    tcase_add_test(t, sim_zic_trader_never_bids_past_its_own_valuation);
    tcase_add_test(t, sim_truthful_buyers_and_sellers_sit_on_their_halves_of_the_band);
    tcase_add_test(t, sim_battery_keeps_surplus_for_a_high_price_and_stores_it_for_a_low_one);
    tcase_add_test(t, sim_step_refuses_an_inverted_band_and_changes_nothing);
    tcase_add_test(t, sim_classes_follow_the_index_and_the_bus_load_is_shared);
    tcase_add_test(t, sim_power_scale_multiplies_load_and_pv_and_nothing_else);
    tcase_add_test(t, sim_place_puts_prosumers_round_robin_on_non_slack_buses);
    tcase_add_test(t, sim_start_minute_centres_short_runs_on_midday);
    tcase_add_test(t, simrun_schedule_orders_before_the_gate_and_readings_after_the_slot);
    suite_add_tcase(s, t);
    TCase *h = tcase_create("http");
    tcase_set_timeout(h, 30);
    tcase_add_test(h, http_init_parses_host_and_port_and_refuses_junk);
    tcase_add_test(h, http_client_reads_length_chunked_and_close_and_rejects_garbage);
    suite_add_tcase(s, h);
    return s;
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    SRunner *sr = srunner_create(prosumer_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
