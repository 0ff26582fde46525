/* grid_fixture.h: the small hand-computed feeder model that tests/test_grid.c checks the grid
 * contract against and the market tests install (market_harness.h): slack 1 - 2 - 3, and 4 off 2
 * via a line written "4-2" rated 200 kVA with 50 kW base flow; R(2-3) = 0.2 ohm, R(4-2) = 0.3 ohm,
 * loss factors 2 % and 3 %. */
#ifndef GRID_FIXTURE_H
#define GRID_FIXTURE_H

#include <stdbool.h>
#include <string.h>

#include "contracts/grid.h"

typedef struct {
    Tem__V1__InstallFeeder msg;
    Tem__V1__FeederBus b[4], *bp[4];
    Tem__V1__FeederLine l[3], *lp[3];
    uint8_t hash[32];
} grid_fx_model;

static inline void grid_fx_model_init(grid_fx_model *m) {
    memset(m, 0, sizeof *m);
    tem__v1__install_feeder__init(&m->msg);
    /* bus, slack, v_npu, dv_fpu_per_w, parent, parent_line */
    const struct { uint32_t bus; bool slack; uint64_t v, dv; uint32_t parent, pline; } B[4] = {
        {1, true, 1000000000, 0, 1, 0},
        {2, false, 990000000, 1000000, 1, 0},
        {3, false, 980000000, 3000000, 2, 1},
        {4, false, 985000000, 2000000, 2, 2},
    };
    for (int i = 0; i < 4; i++) {
        tem__v1__feeder_bus__init(&m->b[i]);
        m->b[i].bus = B[i].bus;
        m->b[i].slack = B[i].slack;
        m->b[i].base_v_npu = B[i].v;
        m->b[i].base_v_ppm = (uint32_t)(B[i].v / 1000);
        m->b[i].vmin_ppm = B[i].slack ? 1000000 : 900000;
        m->b[i].vmax_ppm = B[i].slack ? 1000000 : 1100000;
        m->b[i].dv_fpu_per_w = B[i].dv;
        m->b[i].parent = B[i].parent;
        m->b[i].parent_line = B[i].pline;
        m->bp[i] = &m->b[i];
    }
    /* from, to, r_uohm, rate_va, base_p_w (away from the slack), loss_factor_ppm */
    const struct { uint32_t from, to; uint64_t r, rate; int64_t p; uint32_t lf; } L[3] = {
        {1, 2, 100000, 1000000, 500000, 10000},
        {2, 3, 200000, 300000, 100000, 20000},
        {4, 2, 300000, 200000, 50000, 30000},
    };
    for (int i = 0; i < 3; i++) {
        tem__v1__feeder_line__init(&m->l[i]);
        m->l[i].from = L[i].from;
        m->l[i].to = L[i].to;
        m->l[i].r_uohm = L[i].r;
        m->l[i].x_uohm = L[i].r / 2;
        m->l[i].rate_va = L[i].rate;
        m->l[i].base_p_w = L[i].p;
        m->l[i].base_flow_va = L[i].p;
        m->l[i].flow_sens_ppm = 1000000;
        m->l[i].loss_factor_ppm = L[i].lf;
        m->lp[i] = &m->l[i];
    }
    /* The grid check solves an AC power flow: loads that give the lines those base flows, at
     * 12.66 kV. */
    m->b[1].base_p_w = 350000;
    m->b[2].base_p_w = 100000;
    m->b[3].base_p_w = 50000;
    m->msg.base_kv_mv = 12660000;
    memset(m->hash, 0xab, sizeof m->hash);
    m->msg.source_hash = (ProtobufCBinaryData){32, m->hash};
    m->msg.n_buses = 4;
    m->msg.buses = m->bp;
    m->msg.n_lines = 3;
    m->msg.lines = m->lp;
}

#endif
