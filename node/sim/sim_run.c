/* sim_run.c: the simulator's real-time driver and the `temctl sim` verb. The driver follows the
 * chain's slot clock (genesis time + slot * slot_ms): it submits each prosumer's order for a
 * slot two slots before that slot's gate closure and its meter reading just after the slot
 * ends, tracks nonces, spreads prosumers over the nodes, and snapshots each slot's trades so
 * battery strategies can react to the last clearing price. */
#include "node/sim/testnet.h"

#include <unistd.h>

#include <glob.h>
#include <sodium.h>

/* ------------------------------------------------------------------ placement */
int ctl_sim_place(const ctl_feeder *f, uint32_t n, uint32_t *bus, double *bus_load_w,
                  uint32_t *per_bus) {
    uint32_t nb = 0;
    for (uint32_t i = 0; i < f->n_buses; i++) nb += !f->buses[i].slack;
    if (nb == 0) return -1;
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t want = i % nb, seen = 0;
        for (uint32_t b = 0; b < f->n_buses; b++) {
            if (f->buses[b].slack) continue;
            if (seen++ == want) {
                k = b;
                break;
            }
        }
        bus[i] = f->buses[k].id;
        bus_load_w[i] = f->buses[k].pd_kw * 1000.0;
    }
    for (uint32_t i = 0; i < n; i++) {
        per_bus[i] = 0;
        for (uint32_t j = 0; j < n; j++) per_bus[i] += bus[j] == bus[i];
    }
    return 0;
}

uint32_t ctl_sim_start_minute(uint32_t slots, uint32_t slot_minutes) {
    if (slot_minutes == 0) slot_minutes = 15;
    uint64_t span = (uint64_t)slots * slot_minutes;
    if (span >= CTL_SIM_DAY_MINUTES) return 0;
    int64_t start = 750 - (int64_t)span / 2;
    if (start < 0) start = 0;
    if (start + (int64_t)span > CTL_SIM_DAY_MINUTES) start = CTL_SIM_DAY_MINUTES - (int64_t)span;
    return (uint32_t)(start / slot_minutes * slot_minutes);
}

/* ------------------------------------------------------------------ schedule */
void ctl_simrun_tariff(const ledger_genesis *g, uint64_t slot, int64_t *retail, int64_t *feed_in) {
    int64_t start = (int64_t)g->genesis_time_ms + (int64_t)slot * g->market.slot_ms;
    uint32_t minute = (uint32_t)((start / 60000) % 1440);
    uint32_t pick = 0;
    for (uint32_t i = 0; i < g->n_tariffs; i++)
        if (g->tariffs[i].start_minute <= minute) pick = i;
    *retail = g->n_tariffs ? g->tariffs[pick].retail_uunit_per_kwh : 0;
    *feed_in = g->n_tariffs ? g->tariffs[pick].feed_in_uunit_per_kwh : 0;
}

static int64_t slot_start_ms(const ledger_genesis *g, uint64_t slot) {
    return (int64_t)g->genesis_time_ms + (int64_t)slot * g->market.slot_ms;
}

/* Orders go in two slot lengths before gate closure: time for a view change or two before the
 * gate shuts, even on an accelerated clock. */
int64_t ctl_simrun_order_ms(const ctl_simrun *r, uint32_t k) {
    const ledger_market_params *m = &r->g->market;
    return slot_start_ms(r->g, r->first_slot + k) - m->gate_closure_ms - 2 * m->slot_ms;
}

/* Readings go in a tenth of a slot (at least 100 ms) after the slot ends, so the block that
 * carries them is timed after the end, as the market requires. */
int64_t ctl_simrun_reading_ms(const ctl_simrun *r, uint32_t k) {
    int64_t s = r->g->market.slot_ms, d = s / 10 > 100 ? s / 10 : 100;
    return slot_start_ms(r->g, r->first_slot + k + 1) + d;
}

uint64_t ctl_simrun_first_slot(const ledger_genesis *g, int64_t not_before_ms) {
    const ledger_market_params *m = &g->market;
    int64_t lead = m->gate_closure_ms + 2 * m->slot_ms;
    int64_t rel = not_before_ms + lead - (int64_t)g->genesis_time_ms;
    if (rel <= 0) return 0;
    return (uint64_t)((rel + m->slot_ms - 1) / m->slot_ms);
}

/* ------------------------------------------------------------------ lifetime */
int ctl_simrun_init(ctl_simrun *r, const ledger_genesis *g, const ctl_sim_config *cfg, uint32_t n,
                    uint32_t slots) {
    memset(r, 0, sizeof *r);
    r->g = g;
    r->cfg = *cfg;
    r->n = n;
    r->slots = slots;
    r->p = tem_calloc(n ? n : 1, sizeof *r->p);
    r->sec = tem_calloc(n ? n : 1, sizeof *r->sec);
    r->pub = tem_calloc(n ? n : 1, sizeof *r->pub);
    r->nonce = tem_calloc(n ? n : 1, sizeof *r->nonce);
    r->msec = tem_calloc(n ? n : 1, sizeof *r->msec);
    r->mpub = tem_calloc(n ? n : 1, sizeof *r->mpub);
    r->mnonce = tem_calloc(n ? n : 1, sizeof *r->mnonce);
    r->has_meter = tem_calloc(n ? n : 1, sizeof *r->has_meter);
    r->rec = tem_calloc((size_t)n * slots + 1, sizeof *r->rec);
    r->last_price = tem_calloc(slots + 1, sizeof *r->last_price);
    r->snap = tem_calloc(slots + 1, sizeof *r->snap);
    r->n_snap = tem_calloc(slots + 1, sizeof *r->n_snap);
    r->have_snap = tem_calloc(slots + 1, sizeof *r->have_snap);
    r->snap_from_receipts = tem_calloc(slots + 1, sizeof *r->snap_from_receipts);
    if (!r->msec || !r->mpub || !r->mnonce || !r->has_meter || !r->snap_from_receipts || !r->p || !r->sec || !r->pub || !r->nonce || !r->rec || !r->last_price || !r->snap ||
        !r->n_snap || !r->have_snap) {
        ctl_simrun_free(r);
        return -1;
    }
    return 0;
}

void ctl_simrun_free(ctl_simrun *r) {
    if (r->sec) sodium_memzero(r->sec, sizeof(*r->sec) * (r->n ? r->n : 1));
    if (r->msec) sodium_memzero(r->msec, sizeof(*r->msec) * (r->n ? r->n : 1));
    tem_free(r->msec);
    tem_free(r->mpub);
    tem_free(r->mnonce);
    tem_free(r->has_meter);
    for (uint32_t k = 0; r->snap && k < r->slots; k++) tem_free(r->snap[k]);
    tem_free(r->p);
    tem_free(r->sec);
    tem_free(r->pub);
    tem_free(r->nonce);
    tem_free(r->rec);
    tem_free(r->txs);
    tem_free(r->last_price);
    tem_free(r->snap);
    tem_free(r->n_snap);
    tem_free(r->have_snap);
    tem_free(r->snap_from_receipts);
    memset(r, 0, sizeof *r);
}

/* ------------------------------------------------------------------ submission */
static int log_tx(ctl_simrun *r, const uint8_t txid[32], uint32_t i, uint32_t k, uint8_t kind,
                  int http) {
    if (r->n_txs == r->cap_txs) {
        size_t cap = r->cap_txs ? r->cap_txs * 2 : 256;
        ctl_simrun_tx *nt = tem_realloc(r->txs, cap * sizeof *nt);
        if (!nt) return -1;
        r->txs = nt;
        r->cap_txs = cap;
    }
    ctl_simrun_tx *t = &r->txs[r->n_txs++];
    memset(t, 0, sizeof *t);
    memcpy(t->txid, txid, 32);
    t->prosumer = i;
    t->run_slot = k;
    t->kind = kind;
    t->http_status = http;
    return 0;
}

/* Signs body with prosumer i's key (its meter's key for a reading: the market refuses readings
 * signed by a trading key) at its next nonce and posts it to its node, falling over to the next
 * node on a transport error. A nonce complaint resyncs from the node once (a tx of ours refused
 * at the door leaves a gap the node does not know about). */
static int submit(ctl_simrun *r, uint32_t i, uint32_t k, uint8_t kind, Tem__V1__TxBody *body) {
    int http = -1;
    uint8_t txid[32] = {0};
    bool resynced = false;
    bool meter = kind == 'r' && r->has_meter[i];
    uint64_t *nonce = meter ? &r->mnonce[i] : &r->nonce[i];
    const uint8_t *sec = meter ? r->msec[i] : r->sec[i], *pub = meter ? r->mpub[i] : r->pub[i];
    for (int attempt = 0; attempt < 6; attempt++) {
        body->chain_id = (char *)r->g->chain_id;
        body->nonce = *nonce;
        uint8_t *tx = NULL;
        size_t len = 0;
        if (ledger_tx_build(body, sec, &tx, &len, txid) != LEDGER_OK) return -1;
        char err[128];
        ctl_http_conn *c = &r->nodes[(i + (uint32_t)attempt) % r->n_nodes];
        http = ctl_api_submit(c, tx, len, err, sizeof err);
        tem_free(tx);
        if (http == 202) {
            (*nonce)++;
            break;
        }
        if (http == -1) continue;
        if (http == 503) {
            ctl_sleep_until(ctl_now_ms() + 100, r->stop);
            continue;
        }
        if (!resynced && strstr(err, "NONCE")) {
            ctl_api_account a;
            if (ctl_api_account_get(c, pub, &a) == 0) *nonce = a.next_nonce;
            resynced = true;
            continue;
        }
        if (!r->quiet) fprintf(stderr, "sim: prosumer %u slot %u %s refused: HTTP %d %s\n", i, k,
                               kind == 'o' ? "order" : "reading", http, err);
        break;
    }
    return log_tx(r, txid, i, k, kind, http);
}

static int64_t tariff_slot(const ctl_simrun *r, uint32_t k, ctl_sim_market *m) {
    ctl_simrun_tariff(r->g, r->first_slot + k, &m->retail_uunit_per_kwh, &m->feed_in_uunit_per_kwh);
    m->last_price_uunit_per_kwh = 0;
    for (uint32_t j = k; j-- > 0;)
        if (r->have_snap[j] && r->last_price[j] > 0) {
            m->last_price_uunit_per_kwh = r->last_price[j];
            break;
        }
    return 0;
}

static int do_orders(ctl_simrun *r, uint32_t k) {
    ctl_sim_market m;
    tariff_slot(r, k, &m);
    for (uint32_t i = 0; i < r->n; i++) {
        ctl_sim_slot *s = &r->rec[(size_t)k * r->n + i];
        if (ctl_sim_step(&r->cfg, &r->p[i], k, &m, s) != 0) return -1;
        if (!s->side) continue;
        Tem__V1__TxBody body = TEM__V1__TX_BODY__INIT;
        Tem__V1__Order o = TEM__V1__ORDER__INIT;
        o.slot = r->first_slot + k;
        o.side = s->side;
        o.price = s->price_uunit_per_kwh;
        o.quantity_wh = s->qty_wh;
        body.kind_case = TEM__V1__TX_BODY__KIND_ORDER;
        body.order = &o;
        if (submit(r, i, k, 'o', &body) != 0) return -1;
    }
    return 0;
}

/* A node that does not serve /v1/trades still shows every CDA trade once, in the receipt of the
 * order that took liquidity: all of a slot's orders are ours, so their receipts hold them all. */
static int receipt_trades(ctl_simrun *r, uint32_t k, ctl_api_trade **out, size_t *n) {
    ctl_api_trade *all = NULL;
    size_t na = 0;
    for (size_t x = 0; x < r->n_txs; x++) {
        const ctl_simrun_tx *tx = &r->txs[x];
        if (tx->kind != 'o' || tx->run_slot != k || tx->http_status != 202) continue;
        ctl_api_trade *f = NULL;
        size_t nf = 0;
        if (ctl_api_fills_get(&r->nodes[tx->prosumer % r->n_nodes], tx->txid, &f, &nf) != 0) {
            tem_free(all);
            return -1;
        }
        if (nf) {
            ctl_api_trade *na_ = tem_realloc(all, (na + nf) * sizeof *all);
            if (!na_) {
                tem_free(f);
                tem_free(all);
                return -1;
            }
            all = na_;
            memcpy(all + na, f, nf * sizeof *f);
            na += nf;
        }
        tem_free(f);
    }
    *out = all;
    *n = na;
    return 0;
}

static int do_readings(ctl_simrun *r, uint32_t k) {
    for (uint32_t i = 0; i < r->n; i++) {
        const ctl_sim_slot *s = &r->rec[(size_t)k * r->n + i];
        Tem__V1__TxBody body = TEM__V1__TX_BODY__INIT;
        Tem__V1__MeterReading mr = TEM__V1__METER_READING__INIT;
        mr.slot = r->first_slot + k;
        mr.import_wh = s->import_wh;
        /* A consumer meter cannot export by the market's rules, and has no PV to export from. */
        mr.export_wh = r->p[i].cls == CTL_SIM_CONSUMER ? 0 : s->export_wh;
        body.kind_case = TEM__V1__TX_BODY__KIND_READING;
        body.reading = &mr;
        if (submit(r, i, k, 'r', &body) != 0) return -1;
    }
    /* The slot's book closed two slots ago: its trades are final now. */
    ctl_api_trade *t = NULL;
    size_t nt = 0;
    /* In a CDA market the receipts are the richer record: each fill also says what the grid
     * check curtailed, which constraint bound and the fees. /v1/trades lists the trades
     * themselves, and is what a call auction's clearing leaves. */
    if (r->g->market.mechanism == LEDGER_MECH_CDA && receipt_trades(r, k, &t, &nt) == 0) {
        r->have_snap[k] = true;
        r->snap_from_receipts[k] = true;
    } else if (ctl_api_trades_get(&r->nodes[0], r->first_slot + k, &t, &nt) == 0) {
        r->have_snap[k] = true;
    }
    r->snap[k] = t;
    r->n_snap[k] = nt;
    double v = 0, q = 0;
    for (size_t j = 0; j < nt; j++) {
        v += (double)t[j].price * (double)t[j].quantity_wh;
        q += (double)t[j].quantity_wh;
    }
    r->last_price[k] = q > 0 ? (int64_t)(v / q) : 0;
    return 0;
}

int ctl_simrun_run(ctl_simrun *r) {
    uint32_t next_o = 0, next_r = 0;
    while (next_r < r->slots) {
        if (r->stop && *r->stop) return -1;
        int64_t to = next_o < r->slots ? ctl_simrun_order_ms(r, next_o) : INT64_MAX;
        int64_t tr = ctl_simrun_reading_ms(r, next_r);
        bool order = to <= tr && next_o < r->slots;
        ctl_sleep_until(order ? to : tr, r->stop);
        if (r->stop && *r->stop) return -1;
        if (order) {
            if (do_orders(r, next_o) != 0) return -1;
            next_o++;
            /* One progress line, rewritten in place on a terminal; in a log, a line per tenth. */
            bool tty = isatty(2), tenth = next_o % (r->slots >= 10 ? r->slots / 10 : 1) == 0;
            if (!r->quiet && (tty || tenth || next_o == r->slots))
                fprintf(stderr, "%ssim: slot %llu: orders in for %u of %u slots, readings for %u%s", tty ? "\r" : "",
                        (unsigned long long)(r->first_slot + next_o - 1), next_o, r->slots, next_r,
                        tty && next_o < r->slots ? "   " : "\n");
        } else {
            if (do_readings(r, next_r) != 0) return -1;
            next_r++;
            r->slots_read = next_r;
        }
    }
    return 0;
}

int ctl_simrun_collect(ctl_simrun *r, int timeout_ms) {
    int64_t deadline = ctl_now_ms() + timeout_ms;
    for (;;) {
        size_t pending = 0;
        for (size_t t = 0; t < r->n_txs; t++) {
            ctl_simrun_tx *x = &r->txs[t];
            if (x->http_status != 202) continue;
            if (x->result.status == CTL_TX_COMMITTED || x->result.status == CTL_TX_REFUSED) continue;
            ctl_http_conn *c = &r->nodes[x->prosumer % r->n_nodes];
            if (ctl_api_tx_get(c, x->txid, &x->result) != 0) (void)ctl_api_tx_get(&r->nodes[0], x->txid, &x->result);
            pending += x->result.status != CTL_TX_COMMITTED && x->result.status != CTL_TX_REFUSED;
        }
        if (pending == 0 || ctl_now_ms() >= deadline || (r->stop && *r->stop)) return 0;
        ctl_sleep_until(ctl_now_ms() + 300, r->stop);
    }
}

/* ------------------------------------------------------------------ temctl sim */
static volatile sig_atomic_t sim_stop;
static void on_signal(int sig) {
    (void)sig;
    sim_stop = 1;
}

static const char SIM_USAGE[] =
    "usage: temctl sim plan --feeder DIR [--prosumers N] [--slots N] [--seed S]\n"
    "                       [--slot-ms MS] [--start-minute M] [--retail P --feed-in P]\n"
    "  Prints the simulated day offline, one JSON line per prosumer and slot (no node).\n"
    "       temctl sim run --genesis FILE --keys DIR --feeder DIR --node URL [--node URL...]\n"
    "                      [--slots N] [--first-slot S] [--seed S] [--start-minute M]\n"
    "                      [--install-tx FILE]\n"
    "  Runs the prosumers whose key files are DIR/p*.key (registered in the genesis) against\n"
    "  the nodes in real time: orders before each gate closure, readings after each slot.\n"
    "  --install-tx first submits a signed tx (the DSO's feeder install from `temctl testnet\n"
    "  gen`) and waits up to 120 s for the nodes to come up and commit it.\n"
    "  docs/sim.md describes the model and the strategies.\n";

static bool opt_u64(const ctl_opts *o, const char *name, uint64_t *v) {
    const char *s = ctl_opt(o, name);
    if (!s) return true;
    if (!ctl_parse_u64(s, v)) {
        fprintf(stderr, "sim: --%s needs a number\n", name);
        return false;
    }
    return true;
}

static int sim_plan(const ctl_opts *o) {
    uint64_t n = 32, slots = 96, seed = 1, slot_ms = 900000, retail = 300000, feed_in = 80000;
    uint64_t start = UINT64_MAX;
    const char *dir = ctl_opt(o, "feeder");
    if (!dir || !opt_u64(o, "prosumers", &n) || !opt_u64(o, "slots", &slots) || !opt_u64(o, "seed", &seed) ||
        !opt_u64(o, "slot-ms", &slot_ms) || !opt_u64(o, "retail", &retail) || !opt_u64(o, "feed-in", &feed_in) ||
        !opt_u64(o, "start-minute", &start) || n == 0 || n > CTL_SIM_PROSUMERS_MAX || slots == 0 ||
        slots > 100000 || slot_ms == 0 || feed_in > retail) {
        fputs(SIM_USAGE, stderr);
        return CTL_USAGE;
    }
    ctl_feeder f = {0};
    char err[CTL_FEEDER_ERR_BYTES];
    if (ctl_feeder_load(&f, dir, err, sizeof err) != 0) {
        fprintf(stderr, "sim: %s\n", err);
        return CTL_INVALID;
    }
    ctl_sim_config c;
    ctl_sim_config_default(&c);
    c.seed = seed;
    c.slot_ms = (int64_t)slot_ms;
    c.start_minute = start == UINT64_MAX ? ctl_sim_start_minute((uint32_t)slots, c.slot_minutes) : (uint32_t)(start % 1440);
    uint32_t *bus = tem_calloc(n, sizeof *bus), *per = tem_calloc(n, sizeof *per);
    double *load = tem_calloc(n, sizeof *load);
    ctl_sim_prosumer *p = tem_calloc(n, sizeof *p);
    int status = CTL_INVALID;
    if (!bus || !per || !load || !p || ctl_sim_place(&f, (uint32_t)n, bus, load, per) != 0) goto out;
    for (uint32_t i = 0; i < n; i++) ctl_sim_prosumer_init(&p[i], &c, i, bus[i], load[i], per[i]);
    ctl_sim_market m = {.retail_uunit_per_kwh = (int64_t)retail, .feed_in_uunit_per_kwh = (int64_t)feed_in};
    for (uint32_t k = 0; k < slots; k++)
        for (uint32_t i = 0; i < n; i++) {
            ctl_sim_slot s;
            if (ctl_sim_step(&c, &p[i], k, &m, &s) != 0) goto out;
            printf("{\"slot\":%u,\"minute\":%u,\"prosumer\":%u,\"bus\":%u,\"class\":\"%s\",\"strategy\":\"%s\","
                   "\"pv_w\":%.1f,\"load_w\":%.1f,\"charge_w\":%.1f,\"discharge_w\":%.1f,\"soc_wh\":%.1f,"
                   "\"import_wh\":%llu,\"export_wh\":%llu,\"side\":\"%s\",\"qty_wh\":%llu,\"price\":%llu}\n",
                   k, s.minute, i, p[i].bus, ctl_sim_class_name(p[i].cls), ctl_sim_strategy_name(p[i].strategy),
                   s.pv_w, s.load_w, s.charge_w, s.discharge_w, s.soc_after_wh,
                   (unsigned long long)s.import_wh, (unsigned long long)s.export_wh,
                   s.side == TEM__V1__SIDE__BUY ? "buy" : s.side == TEM__V1__SIDE__SELL ? "sell" : "none",
                   (unsigned long long)s.qty_wh, (unsigned long long)s.price_uunit_per_kwh);
        }
    status = CTL_OK;
out:
    tem_free(bus);
    tem_free(per);
    tem_free(load);
    tem_free(p);
    ctl_feeder_free(&f);
    return status;
}

/* Posts a pre-signed tx (retrying while the nodes start) and waits for its receipt. */
static int install_tx(ctl_http_conn *c, const char *path, const ledger_genesis *g) {
    uint8_t *tx;
    size_t len;
    if (ctl_read_file(path, 8u << 20, &tx, &len) != 0) return -1;
    ledger_tx d = {0};
    ledger_tx_limits lim;
    ledger_tx_limits_from_genesis(g, &lim);
    if (ledger_tx_decode(tx, len, &lim, &d) != LEDGER_OK) {
        fprintf(stderr, "sim: %s is not a tx of this chain\n", path);
        tem_free(tx);
        return -1;
    }
    uint8_t txid[32];
    memcpy(txid, d.txid, 32);
    ledger_tx_free(&d);
    int64_t until = ctl_now_ms() + 120000;
    int st = -1;
    char err[128] = "";
    while (ctl_now_ms() < until && !sim_stop) {
        st = ctl_api_submit(c, tx, len, err, sizeof err);
        /* Already known (a restarted simulator) is as good as accepted. */
        if (st == 202 || st == 409 || (st >= 400 && strstr(err, "NONCE"))) break;
        ctl_sleep_until(ctl_now_ms() + 1000, &sim_stop);
    }
    tem_free(tx);
    while (ctl_now_ms() < until && !sim_stop) {
        ctl_api_tx r;
        if (ctl_api_tx_get(c, txid, &r) == 0 && (r.status == CTL_TX_COMMITTED || r.status == CTL_TX_REFUSED)) {
            fprintf(stderr, "sim: %s %s at height %llu%s%s\n", path, r.status == CTL_TX_COMMITTED ? "committed" : "refused",
                    (unsigned long long)r.height, r.reason[0] ? ": " : "", r.reason);
            return 0;
        }
        ctl_sleep_until(ctl_now_ms() + 500, &sim_stop);
    }
    fprintf(stderr, "sim: %s not committed (last answer HTTP %d %s)\n", path, st, err);
    return -1;
}

static int sim_run(const ctl_opts *o) {
    uint64_t slots = 8, seed = 1, first = UINT64_MAX, start = UINT64_MAX;
    const char *gpath = ctl_opt(o, "genesis"), *keys = ctl_opt(o, "keys"), *fdir = ctl_opt(o, "feeder");
    if (!gpath || !keys || !fdir || !ctl_opt(o, "node") || !opt_u64(o, "slots", &slots) ||
        !opt_u64(o, "seed", &seed) || !opt_u64(o, "first-slot", &first) || !opt_u64(o, "start-minute", &start) ||
        slots == 0 || slots > 100000) {
        fputs(SIM_USAGE, stderr);
        return CTL_USAGE;
    }
    ledger_genesis g;
    char err[256];
    if (ledger_genesis_load(gpath, &g, err, sizeof err) != LEDGER_OK) {
        fprintf(stderr, "sim: genesis: %s\n", err);
        return CTL_INVALID;
    }
    ctl_feeder f = {0};
    ctl_http_conn nodes[16];
    uint32_t nn = 0;
    glob_t gl = {0};
    ctl_simrun r = {0};
    int status = CTL_INVALID;
    char pat[4096];
    if (ctl_feeder_load(&f, fdir, err, sizeof err) != 0) {
        fprintf(stderr, "sim: %s\n", err);
        goto out;
    }
    int it = 0;
    const char *u;
    while ((u = ctl_opt_next(o, "node", &it)) && nn < 16) {
        if (ctl_http_init(&nodes[nn], u, 5000) != 0) {
            fprintf(stderr, "sim: %s\n", nodes[nn].err);
            goto out;
        }
        nn++;
    }
    snprintf(pat, sizeof pat, "%s/p*.key", keys);
    if (glob(pat, 0, NULL, &gl) != 0 || gl.gl_pathc == 0 || gl.gl_pathc > CTL_SIM_PROSUMERS_MAX) {
        fprintf(stderr, "sim: no prosumer key files %s\n", pat);
        goto out;
    }
    ctl_sim_config c;
    ctl_sim_config_default(&c);
    c.seed = seed;
    c.slot_ms = g.market.slot_ms;
    c.start_minute = start == UINT64_MAX ? ctl_sim_start_minute((uint32_t)slots, c.slot_minutes) : (uint32_t)(start % 1440);
    if (ctl_simrun_init(&r, &g, &c, (uint32_t)gl.gl_pathc, (uint32_t)slots) != 0) goto out;
    for (uint32_t i = 0; i < r.n; i++) {
        ledger_keyfile k;
        if (ledger_keyfile_read(gl.gl_pathv[i], &k) != LEDGER_OK || k.is_validator) {
            fprintf(stderr, "sim: %s is not a meter key file\n", gl.gl_pathv[i]);
            goto out;
        }
        memcpy(r.sec[i], k.secp_sec, 32);
        memcpy(r.pub[i], k.secp_pub, 33);
        sodium_memzero(&k, sizeof k);
        /* Its meter's key: DIR/pNNN.key -> DIR/mNNN.key (registered as its meter). */
        char mpath[4200];
        snprintf(mpath, sizeof mpath, "%s", gl.gl_pathv[i]);
        char *base = strrchr(mpath, '/');
        base = base ? base + 1 : mpath;
        if (base[0] == 'p') {
            base[0] = 'm';
            if (ledger_keyfile_read(mpath, &k) == LEDGER_OK && !k.is_validator) {
                memcpy(r.msec[i], k.secp_sec, 32);
                memcpy(r.mpub[i], k.secp_pub, 33);
                r.has_meter[i] = true;
            } else if (!r.quiet) {
                fprintf(stderr, "sim: no meter key %s: readings will be refused\n", mpath);
            }
            sodium_memzero(&k, sizeof k);
        }
    }
    /* Bus from the genesis; the bus' load from the feeder, shared among its prosumers. */
    uint32_t *bus = tem_calloc(r.n, sizeof *bus);
    if (!bus) goto out;
    for (uint32_t i = 0; i < r.n; i++) {
        bool found = false;
        for (uint32_t j = 0; j < g.n_participants && !found; j++)
            if (memcmp(g.participants[j].pubkey, r.pub[i], 33) == 0) {
                bus[i] = g.participants[j].bus;
                found = true;
            }
        if (!found) {
            fprintf(stderr, "sim: %s is not a genesis participant\n", gl.gl_pathv[i]);
            tem_free(bus);
            goto out;
        }
    }
    for (uint32_t i = 0; i < r.n; i++) {
        uint32_t per = 0;
        for (uint32_t j = 0; j < r.n; j++) per += bus[j] == bus[i];
        int64_t bi = ctl_feeder_bus_index(&f, bus[i]);
        double load = bi >= 0 ? f.buses[bi].pd_kw * 1000.0 : 0;
        ctl_sim_prosumer_init(&r.p[i], &c, i, bus[i], load, per);
    }
    tem_free(bus);
    r.nodes = nodes;
    r.n_nodes = nn;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    if (ctl_opt(o, "install-tx") && install_tx(&nodes[0], ctl_opt(o, "install-tx"), &g) != 0) goto out;
    for (uint32_t i = 0; i < r.n; i++) {
        ctl_api_account a;
        if (ctl_api_account_get(&nodes[i % nn], r.pub[i], &a) == 0) r.nonce[i] = a.next_nonce;
    }
    r.first_slot = first != UINT64_MAX ? first : ctl_simrun_first_slot(&g, ctl_now_ms() + 500);
    r.stop = &sim_stop;
    fprintf(stderr, "sim: %u prosumers, slots %llu..%llu\n", r.n, (unsigned long long)r.first_slot,
            (unsigned long long)(r.first_slot + slots - 1));
    if (ctl_simrun_run(&r) != 0) goto out;
    ctl_simrun_collect(&r, 30000);
    size_t acc = 0, com = 0, ref = 0;
    for (size_t t = 0; t < r.n_txs; t++) {
        acc += r.txs[t].http_status == 202;
        com += r.txs[t].result.status == CTL_TX_COMMITTED;
        ref += r.txs[t].result.status == CTL_TX_REFUSED;
    }
    printf("{\"submitted\":%zu,\"accepted\":%zu,\"committed\":%zu,\"refused\":%zu}\n", r.n_txs, acc, com, ref);
    status = CTL_OK;
out:
    for (uint32_t i = 0; i < nn; i++) ctl_http_close(&nodes[i]);
    ctl_simrun_free(&r);
    globfree(&gl);
    ctl_feeder_free(&f);
    ledger_genesis_free(&g);
    return status;
}

int ctl_sim_main(int argc, char **argv) {
    ctl_opts o;
    if (argc < 2 || ctl_opts_parse(&o, argc, argv, 2, NULL) != 0) {
        fputs(SIM_USAGE, stderr);
        return CTL_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || o.help) {
        fputs(SIM_USAGE, stdout);
        return CTL_OK;
    }
    if (strcmp(argv[1], "plan") == 0) return sim_plan(&o);
    if (strcmp(argv[1], "run") == 0) return sim_run(&o);
    fputs(SIM_USAGE, stderr);
    return CTL_USAGE;
}
