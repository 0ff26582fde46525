/* report.c: the testnet report drawn from its dataset (testnet-data.json, docs/sim.md): the
 * plain-text summary `temctl testnet run` prints and testnet-report.html, one page with the same
 * figures, three inline SVG charts (price per slot against the tariffs, traded energy per slot
 * beside metered demand, the feeder with its line loadings) and a table per slot. No script and no network: the page
 * opens from disk anywhere. Money is shown in units (1 unit = 1e6 micro-units), prices in units
 * per kWh. */
#include "node/sim/testnet.h"

#include <math.h>

static int64_t I(const json_t *o, const char *k) {
    const json_t *v = json_object_get(o, k);
    if (json_is_integer(v)) return (int64_t)json_integer_value(v);
    if (json_is_real(v)) return (int64_t)json_real_value(v);
    return 0;
}
static double D(const json_t *o, const char *k) {
    const json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : 0.0;
}
static const char *S(const json_t *o, const char *k) {
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}
static bool B(const json_t *o, const char *k) { return json_is_true(json_object_get(o, k)); }
/* The slot's most loaded line in its base case ("-" for a dataset without one). */
static const char *base_line(const json_t *s) { return *S(s, "base_max_line") ? S(s, "base_max_line") : "-"; }

static double units(int64_t uunit) { return (double)uunit / 1e6; }
static double per_kwh(int64_t uunit_per_kwh) { return (double)uunit_per_kwh / 1e6; }

static void hhmm(char out[8], int64_t minute) {
    snprintf(out, 8, "%02d:%02d", (int)((minute / 60) % 24), (int)(minute % 60));
}

/* Refusals and bindings as "name (n), name (n)" in descending count. */
static void counts_line(const json_t *obj, char *out, size_t n) {
    out[0] = 0;
    size_t used = 0, cnt = json_object_size(obj);
    const char *done[64];
    size_t nd = 0;
    while (nd < cnt && nd < 64) {
        const char *best = NULL, *k;
        int64_t bv = -1;
        json_t *v;
        json_object_foreach((json_t *)obj, k, v) {
            bool seen = false;
            for (size_t i = 0; i < nd; i++) seen |= !strcmp(done[i], k);
            if (!seen && json_integer_value(v) > bv) best = k, bv = json_integer_value(v);
        }
        if (!best) break;
        done[nd++] = best;
        int w = snprintf(out + used, n - used, "%s%s (%lld)", used ? ", " : "", best, (long long)bv);
        if (w < 0 || (size_t)w >= n - used) break;
        used += (size_t)w;
    }
    if (!used) snprintf(out, n, "none");
}

/* A saving is what the market saved against the feed-in-tariff baseline, in units (+ = better
 * off). A percentage only means something when both bills are payments: once the market turns a
 * payment into an income (or the baseline is already one), "173.9 %" misleads, so it says so. */
static void saving_str(int64_t bill, int64_t base, char *out, size_t n) {
    double u = units(base - bill);
    if (base > 0 && bill >= 0) snprintf(out, n, "%+.3f (%.1f%%)", u, 100.0 * (double)(base - bill) / (double)base);
    else snprintf(out, n, "%+.3f (n/a: %s)", u, base <= 0 ? "baseline is an income" : "bill became an income");
}

/* ------------------------------------------------------------------ text */
int ctl_report_text(const json_t *d, FILE *f) {
    if (!json_is_object(d)) {
        fprintf(stderr, "report: dataset is not a JSON object\n");
        return -1;
    }
    const json_t *tot = json_object_get(d, "totals"), *o = json_object_get(d, "orders"),
                 *rd = json_object_get(d, "readings"), *ag = json_object_get(d, "agreement"),
                 *cons = json_object_get(d, "conservation");
    char a[8], b[8], line[1024];
    int64_t start = I(d, "start_minute"), nslots = I(d, "slots"), sm = I(d, "slot_minutes");
    hhmm(a, start);
    hhmm(b, start + nslots * sm);
    if (nslots > 0 && (start + nslots * sm) % 1440 == 0) snprintf(b, sizeof b, "24:00"); /* a whole day ends at midnight */
    fprintf(f, "TEM testnet: chain %s, %lld validators + %lld observer, %s market, %lld prosumers on %s\n",
            S(d, "chain_id"), (long long)I(d, "validators"), (long long)I(d, "observers"), S(d, "mechanism"),
            (long long)I(d, "prosumers"), S(d, "feeder"));
    fprintf(f, "slots %lld..%lld: %lld x %.1f s of chain time = %lld x %lld simulated minutes (%s-%s), seed %lld\n",
            (long long)I(d, "first_slot"), (long long)(I(d, "first_slot") + nslots - 1), (long long)nslots,
            I(d, "slot_ms") / 1000.0, (long long)nslots, (long long)sm, a, b, (long long)I(d, "seed"));
    const json_t *nodes = json_object_get(ag, "nodes"), *n0 = json_array_get(nodes, 0);
    if (B(d, "interrupted"))
        fprintf(f, "INTERRUPTED          (Ctrl-C): the figures cover the %lld slots whose readings were in\n",
                (long long)nslots);
    fprintf(f, "blocks committed     %lld, with %lld txs; nodes %s at height %lld, state root %.16s...\n",
            (long long)I(d, "blocks"), (long long)I(d, "txs"),
            B(ag, "agree") ? "agree" : "DISAGREE", (long long)I(n0, "height"), S(n0, "state_root"));
    fprintf(f, "orders               %lld submitted, %lld accepted, %lld committed, %lld refused\n",
            (long long)I(o, "submitted"), (long long)I(o, "accepted"), (long long)I(o, "committed"),
            (long long)I(o, "refused"));
    fprintf(f, "meter readings       %lld submitted, %lld accepted, %lld committed, %lld refused\n",
            (long long)I(rd, "submitted"), (long long)I(rd, "accepted"), (long long)I(rd, "committed"),
            (long long)I(rd, "refused"));
    counts_line(json_object_get(d, "refusals"), line, sizeof line);
    fprintf(f, "refusal reasons      %s\n", line);
    fprintf(f, "trades               %lld, %lld Wh, worth %.3f units, average %.4f units/kWh, fees %.3f units\n",
            (long long)I(tot, "trades"), (long long)I(tot, "energy_wh"), units(I(tot, "value_uunit")),
            per_kwh(I(tot, "avg_price")), units(I(tot, "fees_uunit")));
    counts_line(json_object_get(d, "bindings"), line, sizeof line);
    fprintf(f, "grid check           %lld trades curtailed, %lld Wh removed; binding: %s\n",
            (long long)I(tot, "curtailed_trades"), (long long)I(tot, "curtailed_wh"), line);
    fprintf(f, "met locally          %.1f%% of metered import (%lld of %lld Wh) came from peer trades\n",
            100.0 * D(tot, "local_share"), (long long)I(tot, "energy_wh"), (long long)I(tot, "import_wh"));
    fprintf(f, "\n slot  time   orders trades  energy_wh  avg_price  feed_in   retail  curtailed_wh   base_kw"
               "  base: most loaded line\n");
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(d, "per_slot"), i, s) {
        hhmm(a, I(s, "minute"));
        char avg[16];
        if (I(s, "energy_wh")) snprintf(avg, sizeof avg, "%.4f", per_kwh(I(s, "avg_price")));
        else snprintf(avg, sizeof avg, "-");
        fprintf(f, "%5lld  %s %6lld %6lld %10lld %10s %8.4f %8.4f %13lld %9.1f  %s %.1f%%\n", (long long)I(s, "slot"), a,
                (long long)I(s, "orders"), (long long)I(s, "trades"), (long long)I(s, "energy_wh"), avg,
                per_kwh(I(s, "feed_in")), per_kwh(I(s, "retail")), (long long)I(s, "curtailed_wh"),
                D(s, "base_net_kw"), base_line(s), D(s, "base_max_loading_pct"));
    }
    fprintf(f, "\nbills (units, + = paid)   prosumers      market   feed-in baseline   saving, units (+ = better off)\n");
    const char *k;
    json_t *c;
    json_object_foreach(json_object_get(d, "classes"), k, c) {
        int64_t bill = I(c, "bill_uunit"), base = I(c, "baseline_uunit");
        char sv[96];
        saving_str(bill, base, sv, sizeof sv);
        fprintf(f, "%-24s %10lld %11.3f %18.3f   %s\n", k, (long long)I(c, "n"), units(bill), units(base), sv);
    }
    fprintf(f, "\nconservation         money %.6f -> %.6f units (%s); tokens minted %lld Wh = exports read %lld Wh, "
               "%lld Wh still held (%s)\n",
            units(I(cons, "money_genesis_uunit")), units(I(cons, "money_end_uunit")),
            B(cons, "money_conserved") ? "conserved" : "NOT CONSERVED", (long long)I(cons, "tokens_minted_wh"),
            (long long)I(cons, "readings_export_wh"), (long long)I(cons, "tokens_held_wh"),
            B(cons, "tokens_conserved") ? "ok" : "MISMATCH");
    return ferror(f) ? -1 : 0;
}

/* ------------------------------------------------------------------ HTML */
static void esc(FILE *f, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* Chart frame: the plot area, then the x-axis title, then a legend row under it, so no legend
 * ever covers data. */
enum { W = 760, H = 330, ML = 70, MR = 20, MT = 16, MB = 70 };

/* Slots sit PX inside the plot area, so the first and last bars stay clear of the axes. */
enum { PX = 20 };
static double sx(double i, double n) {
    return ML + PX + (n <= 1 ? (W - ML - MR - 2 * PX) / 2.0 : i * (W - ML - MR - 2 * PX) / (n - 1));
}
static double sy(double v, double vmax) { return MT + (H - MT - MB) * (1 - (vmax > 0 ? v / vmax : 0)); }

/* A round tick step (1, 2 or 5 x 10^k) giving about `want` ticks up to vmax. */
static double nice_step(double vmax, int want) {
    if (vmax <= 0) return 1;
    double raw = vmax / want, p = pow(10, floor(log10(raw))), m = raw / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}
/* vmax rounded up to a whole number of ticks (shown in axis units: value * scale). */
static double nice_max(double vmax, double scale) {
    double st = nice_step(vmax * scale, 5);
    return ceil(vmax * scale / st) * st / scale;
}

static void axes(FILE *f, double vmax, const char *ylabel, const json_t *slots, double scale) {
    fprintf(f, "<line x1='%d' y1='%d' x2='%d' y2='%d' stroke='#333'/>", ML, H - MB, W - MR, H - MB);
    fprintf(f, "<line x1='%d' y1='%d' x2='%d' y2='%d' stroke='#333'/>", ML, MT, ML, H - MB);
    double st = nice_step(vmax * scale, 5) / scale;
    for (double v = 0; v <= vmax * (1 + 1e-9); v += st) {
        fprintf(f, "<line x1='%d' y1='%.1f' x2='%d' y2='%.1f' stroke='#ddd'/>", ML, sy(v, vmax), W - MR, sy(v, vmax));
        fprintf(f, "<text x='%d' y='%.1f' font-size='11' text-anchor='end'>%g</text>", ML - 4, sy(v, vmax) + 4,
                round(v * scale / (st * scale) * 1e6) / 1e6 * st * scale);
    }
    fprintf(f, "<text x='14' y='%d' font-size='11' transform='rotate(-90 14 %d)' text-anchor='middle'>", (H - MB + MT) / 2,
            (H - MB + MT) / 2);
    esc(f, ylabel);
    fputs("</text>", f);
    /* x ticks on whole hours (every 1, 2, 3, 4, 6 or 12 h, about 8 labels) */
    size_t n = json_array_size(slots);
    int64_t span = n ? I(json_array_get(slots, n - 1), "minute") - I(json_array_get(slots, 0), "minute") : 0;
    if (span < 0) span += 1440;
    static const int hours[] = {1, 2, 3, 4, 6, 12, 24};
    int every = 60;
    for (size_t h = 0; h < sizeof hours / sizeof hours[0]; h++) {
        every = hours[h] * 60;
        if (span / every <= 8) break;
    }
    for (size_t i = 0; i < n; i++) {
        int64_t m = I(json_array_get(slots, i), "minute");
        if (span < 120 ? (i % (n > 8 ? (n + 7) / 8 : 1)) != 0 : m % every != 0) continue;
        char a[8];
        hhmm(a, m);
        double x = sx((double)i, (double)n);
        fprintf(f, "<line x1='%.1f' y1='%d' x2='%.1f' y2='%d' stroke='#333'/>", x, H - MB, x, H - MB + 4);
        fprintf(f, "<text x='%.1f' y='%d' font-size='11' text-anchor='middle'>%s</text>", x, H - MB + 16, a);
    }
    fprintf(f, "<text x='%d' y='%d' font-size='11' text-anchor='middle'>simulated time of day (slot start)</text>",
            (W + ML) / 2, H - MB + 32);
}

/* One legend row under the x-axis title: swatch and text per entry. */
typedef struct {
    const char *colour, *text;
    bool dashed, outline;
} legend_item;
static void legend(FILE *f, const legend_item *it, int n) {
    int x = ML;
    for (int k = 0; k < n; k++) {
        if (it[k].outline)
            fprintf(f, "<rect x='%d' y='%d' width='14' height='10' fill='none' stroke='%s'/>", x, H - 20, it[k].colour);
        else
            fprintf(f, "<line x1='%d' y1='%d' x2='%d' y2='%d' stroke='%s' stroke-width='%d'%s/>", x, H - 15, x + 14, H - 15,
                    it[k].colour, it[k].dashed ? 2 : 6, it[k].dashed ? " stroke-dasharray='4 3'" : "");
        fprintf(f, "<text x='%d' y='%d' font-size='12'>", x + 18, H - 11);
        esc(f, it[k].text);
        fputs("</text>", f);
        x += 30 + 7 * (int)strlen(it[k].text);
    }
}

static void price_chart(FILE *f, const json_t *slots) {
    size_t n = json_array_size(slots), i;
    double vmax = 1;
    json_t *s;
    json_array_foreach(slots, i, s) {
        vmax = fmax(vmax, (double)I(s, "retail"));
        if (I(s, "energy_wh") > 0) vmax = fmax(vmax, (double)I(s, "avg_price"));
    }
    vmax = nice_max(vmax * 1.05, 1e-6);
    fprintf(f, "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' role='img' "
               "aria-label='average clearing price per slot against the tariffs'>", W, H);
    axes(f, vmax, "price, units/kWh", slots, 1e-6);
    const char *keys[2] = {"retail", "feed_in"}, *col[2] = {"#c0392b", "#2471a3"};
    for (int k = 0; k < 2; k++) {
        fprintf(f, "<polyline fill='none' stroke='%s' stroke-dasharray='6 4' stroke-width='2' points='", col[k]);
        json_array_foreach(slots, i, s) fprintf(f, "%.1f,%.1f ", sx((double)i, (double)n), sy((double)I(s, keys[k]), vmax));
        fputs("'/>", f);
    }
    fputs("<polyline fill='none' stroke='#111' stroke-width='2' points='", f);
    json_array_foreach(slots, i, s) if (I(s, "energy_wh") > 0)
        fprintf(f, "%.1f,%.1f ", sx((double)i, (double)n), sy((double)I(s, "avg_price"), vmax));
    fputs("'/>", f);
    json_array_foreach(slots, i, s) if (I(s, "energy_wh") > 0)
        fprintf(f, "<circle cx='%.1f' cy='%.1f' r='3' fill='#111'><title>slot %lld: %.4f units/kWh</title></circle>",
                sx((double)i, (double)n), sy((double)I(s, "avg_price"), vmax), (long long)I(s, "slot"),
                per_kwh(I(s, "avg_price")));
    legend(f, (const legend_item[]){{"#c0392b", "retail tariff", true, false}, {"#2471a3", "feed-in tariff", true, false},
                                    {"#111", "average clearing price", false, false}}, 3);
    fputs("</svg>\n", f);
}

static void energy_chart(FILE *f, const json_t *slots) {
    size_t n = json_array_size(slots), i;
    double vmax = 1;
    json_t *s;
    json_array_foreach(slots, i, s) {
        vmax = fmax(vmax, (double)I(s, "import_wh"));
        vmax = fmax(vmax, (double)(I(s, "energy_wh") + I(s, "curtailed_wh")));
    }
    vmax = nice_max(vmax * 1.05, 1);
    fprintf(f, "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' role='img' "
               "aria-label='traded energy per slot'>", W, H);
    axes(f, vmax, "energy per slot, Wh", slots, 1);
    double bw = n > 1 ? (W - ML - MR - 2 * PX) / (double)(n - 1) * 0.7 : 20;
    if (bw > 2 * PX - 4) bw = 2 * PX - 4;
    json_array_foreach(slots, i, s) {
        double x = sx((double)i, (double)n) - bw / 2;
        double imp = (double)I(s, "import_wh"), tr = (double)I(s, "energy_wh"), cu = (double)I(s, "curtailed_wh");
        fprintf(f, "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='none' stroke='#888'/>", x, sy(imp, vmax), bw,
                sy(0, vmax) - sy(imp, vmax));
        fprintf(f, "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='#27ae60'><title>slot %lld: %lld Wh traded</title></rect>",
                x, sy(tr, vmax), bw, sy(0, vmax) - sy(tr, vmax), (long long)I(s, "slot"), (long long)I(s, "energy_wh"));
        if (cu > 0)
            fprintf(f, "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='#e67e22'><title>%lld Wh curtailed</title></rect>",
                    x, sy(tr + cu, vmax), bw, sy(tr, vmax) - sy(tr + cu, vmax), (long long)I(s, "curtailed_wh"));
    }
    legend(f, (const legend_item[]){{"#27ae60", "traded between peers", false, false},
                                    {"#e67e22", "curtailed by the grid check", false, false},
                                    {"#888", "metered import", false, true}}, 3);
    fputs("</svg>\n", f);
}

static const char *load_colour(double pct) {
    return pct >= 90 ? "#c0392b" : pct >= 70 ? "#e67e22" : pct >= 40 ? "#f1c40f" : "#27ae60";
}

/* The feeder, scaled to fit 820 x at most 640 px whatever its size (case533 drew a 2,300 px
 * column before). Line width and colour give the loading; numbers are written on the most loaded
 * lines and on the binding ones, the lowest voltage is marked; with many buses only those buses
 * are labelled, the rest keep their tooltips. */
#define FEEDER_LABELS_MAX 6
static void feeder_chart(FILE *f, const json_t *fm) {
    const json_t *buses = json_object_get(fm, "buses"), *lines = json_object_get(fm, "lines");
    size_t nb = json_array_size(buses), nl = json_array_size(lines), i;
    if (nb == 0) {
        fputs("<p>No feeder drawing in this dataset.</p>\n", f);
        return;
    }
    double xmax = 1, ymax = 1, vmin = 10;
    int64_t vmin_bus = -1;
    json_t *b;
    json_array_foreach(buses, i, b) {
        xmax = fmax(xmax, D(b, "x"));
        ymax = fmax(ymax, D(b, "y"));
        if (!B(b, "slack") && json_object_get(b, "v_pu") && D(b, "v_pu") < vmin) vmin = D(b, "v_pu"), vmin_bus = I(b, "bus");
    }
    const int fw = 820, top = 30, legend_h = 50;
    double fy = fmin(50, 560.0 / ymax);
    const int fh = top + (int)(ymax * fy) + 30 + legend_h;
    bool dense = nb > 60;
#define FX(v) (40 + (v) * (fw - 80) / xmax)
#define FY(v) (top + (v) * fy)
    fprintf(f, "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' role='img' "
               "aria-label='the feeder with line loadings'>", fw, fh);
    /* the most loaded lines get their number written */
    double top_pct[FEEDER_LABELS_MAX] = {0};
    json_t *l;
    json_array_foreach(lines, i, l) {
        double pct = json_object_get(l, "loading_pct") ? D(l, "loading_pct") : D(l, "base_loading_pct");
        for (int k = 0; k < FEEDER_LABELS_MAX; k++)
            if (pct > top_pct[k]) {
                memmove(top_pct + k + 1, top_pct + k, (FEEDER_LABELS_MAX - 1 - (size_t)k) * sizeof(double));
                top_pct[k] = pct;
                break;
            }
    }
    double label_floor = top_pct[FEEDER_LABELS_MAX - 1] > 0 ? top_pct[FEEDER_LABELS_MAX - 1] : 1e-9;
    int labelled = 0; /* ties at the floor must not number half the feeder */
    /* bus lookup by id: a sorted index would be faster, but feeders stay under a few thousand */
    for (size_t li = 0; li < nl; li++) {
        l = json_array_get(lines, li);
        const json_t *pa = NULL, *pb = NULL;
        size_t j;
        json_array_foreach(buses, j, b) {
            if (I(b, "bus") == I(l, "from")) pa = b;
            if (I(b, "bus") == I(l, "to")) pb = b;
        }
        if (!pa || !pb) continue;
        double pct = json_object_get(l, "loading_pct") ? D(l, "loading_pct") : D(l, "base_loading_pct");
        double x1 = FX(D(pa, "x")), y1 = FY(D(pa, "y")), x2 = FX(D(pb, "x")), y2 = FY(D(pb, "y"));
        bool bind = I(l, "binding_trades") > 0;
        if (bind)
            fprintf(f, "<polyline points='%.1f,%.1f %.1f,%.1f %.1f,%.1f' fill='none' stroke='#000' stroke-width='10' opacity='0.35'/>",
                    x1, y1, x1, y2, x2, y2);
        fprintf(f, "<polyline points='%.1f,%.1f %.1f,%.1f %.1f,%.1f' fill='none' stroke='%s' stroke-width='%.1f'>"
                   "<title>line %lld-%lld: %.1f%% of %.0f kVA (base case %.1f%%)%s</title></polyline>",
                x1, y1, x1, y2, x2, y2, load_colour(pct), (dense ? 1 : 2) + fmin(pct, 150) / 25, (long long)I(l, "from"),
                (long long)I(l, "to"), pct, D(l, "rate_kva"), D(l, "base_loading_pct"), bind ? ", bound trades" : "");
        if ((pct >= label_floor && labelled++ < FEEDER_LABELS_MAX) || bind)
            fprintf(f, "<text x='%.1f' y='%.1f' font-size='10' fill='#000'>%.0f%%%s</text>", (x1 + x2) / 2, y2 - 3, pct,
                    bind ? " binding" : "");
    }
    json_array_foreach(buses, i, b) {
        double inj = D(b, "inject_kw");
        const char *fill = B(b, "slack") ? "#000" : inj > 0.05 ? "#f39c12" : inj < -0.05 ? "#2980b9" : "#fff";
        bool lowest = I(b, "bus") == vmin_bus;
        fprintf(f, "<circle cx='%.1f' cy='%.1f' r='%d' fill='%s' stroke='%s'><title>bus %lld: %+.1f kW from "
                   "prosumers, %.4f pu</title></circle>",
                FX(D(b, "x")), FY(D(b, "y")), B(b, "slack") ? 6 : dense ? 2 : 4, fill, lowest ? "#c0392b" : "#333",
                (long long)I(b, "bus"), inj, D(b, "v_pu"));
        if (!dense || B(b, "slack") || lowest)
            fprintf(f, "<text x='%.1f' y='%.1f' font-size='10' text-anchor='middle'>%lld</text>", FX(D(b, "x")),
                    FY(D(b, "y")) - 7, (long long)I(b, "bus"));
        if (lowest)
            fprintf(f, "<text x='%.1f' y='%.1f' font-size='10' fill='#c0392b'>lowest %.4f pu</text>", FX(D(b, "x")) + 6,
                    FY(D(b, "y")) + 12, vmin);
    }
    int ly = fh - legend_h + 20;
    static const struct {
        const char *c, *t;
    } leg[] = {{"#27ae60", "&lt; 40%"}, {"#f1c40f", "40-70%"}, {"#e67e22", "70-90%"}, {"#c0392b", "&gt;= 90%"}};
    for (int k = 0; k < 4; k++)
        fprintf(f, "<rect x='%d' y='%d' width='14' height='8' fill='%s'/><text x='%d' y='%d' font-size='11'>%s</text>",
                40 + k * 80, ly - 8, leg[k].c, 58 + k * 80, ly, leg[k].t);
    fprintf(f, "<text x='%d' y='%d' font-size='11'>line loading (%% of rating; the %d most loaded and binding lines "
               "numbered)</text>", 360, ly, FEEDER_LABELS_MAX);
    fprintf(f, "<text x='40' y='%d' font-size='11'>bus: orange exports, blue imports, red ring: lowest voltage; grey "
               "halo: a line that bound trades%s</text>", ly + 18, dense ? "; hover a bus or line for its figures" : "");
    fputs("</svg>\n", f);
#undef FX
#undef FY
}

/* Per slot: orders, trades, energy, price against the tariffs, curtailment and what bound it. */
static void slot_table(FILE *f, const json_t *slots) {
    fputs("<h2>Slot by slot</h2>\n<table><tr><th>slot</th><th>time</th><th>orders</th><th>trades</th>"
          "<th>traded, Wh</th><th>avg price</th><th>feed-in</th><th>retail</th><th>curtailed, Wh</th>"
          "<th>fees, units</th><th>metered import, Wh</th><th>base case: feeder net load, kW</th>"
          "<th>base case: most loaded line</th><th>base case: vmin-vmax, pu</th></tr>\n", f);
    size_t i;
    json_t *s;
    json_array_foreach(slots, i, s) {
        char a[8], avg[16];
        hhmm(a, I(s, "minute"));
        if (I(s, "energy_wh")) snprintf(avg, sizeof avg, "%.4f", per_kwh(I(s, "avg_price")));
        else snprintf(avg, sizeof avg, "-");
        fprintf(f, "<tr id='slot-%lld'><td>%lld</td><td>%s</td><td>%lld</td><td>%lld</td><td>%lld</td><td>%s</td>"
                   "<td>%.4f</td><td>%.4f</td><td>%lld</td><td>%.4f</td><td>%lld</td><td>%.1f</td><td>",
                (long long)I(s, "slot"), (long long)I(s, "slot"), a, (long long)I(s, "orders"), (long long)I(s, "trades"),
                (long long)I(s, "energy_wh"), avg, per_kwh(I(s, "feed_in")), per_kwh(I(s, "retail")),
                (long long)I(s, "curtailed_wh"), units(I(s, "fees_uunit")), (long long)I(s, "import_wh"),
                D(s, "base_net_kw"));
        esc(f, base_line(s));
        fprintf(f, " %.1f %%</td><td>%.4f-%.4f</td></tr>\n", D(s, "base_max_loading_pct"), D(s, "base_vmin_pu"),
                D(s, "base_vmax_pu"));
    }
    fputs("</table>\n", f);
}

int ctl_report_html(const json_t *d, const char *path) {
    if (!json_is_object(d)) {
        fprintf(stderr, "report: dataset is not a JSON object\n");
        return -1;
    }
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "report: cannot create %s\n", path);
        return -1;
    }
    fputs("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>TEM testnet report</title>\n"
          "<style>body{font-family:sans-serif;max-width:900px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 8px;"
          "text-align:right}th{background:#f3f3f3}pre{background:#f8f8f8;padding:1em;font-size:12px;"
          "overflow-x:auto}</style></head><body>\n<h1>TEM testnet: a local energy market</h1>\n", f);
    fputs("<p>Prosumers on a distribution feeder traded energy for each delivery slot on a 4-validator pBFT "
          "chain. The DSO's grid check curtailed what the feeder could not carry; what was not traded "
          "between peers was settled with the utility at the retail and feed-in tariffs.</p>\n<h2>Summary</h2>\n<pre>", f);
    /* The summary text goes in verbatim: one set of figures, two renderings. */
    char *buf = NULL;
    size_t blen = 0;
    FILE *mem = open_memstream(&buf, &blen);
    if (!mem || ctl_report_text(d, mem) != 0) {
        if (mem) fclose(mem);
        free(buf);
        fclose(f);
        return -1;
    }
    fclose(mem);
    esc(f, buf);
    free(buf);
    fputs("</pre>\n", f);
    const json_t *slots = json_object_get(d, "per_slot");
    fputs("<h2>Average clearing price per slot</h2>\n", f);
    price_chart(f, slots);
    fputs("<h2>Traded energy per slot</h2>\n", f);
    energy_chart(f, slots);
    const json_t *fm = json_object_get(d, "feeder_map");
    char a[8];
    int64_t rs = I(fm, "run_slot");
    hhmm(a, I(json_array_get(slots, (size_t)rs), "minute"));
    fprintf(f, "<h2>The feeder at %s (the slot with the largest export)</h2>\n<p>Line loadings: that slot's "
               "published base case (the DSO's expected loads and PV), then with the prosumers' metered net "
               "injections on top.</p>\n", a);
    feeder_chart(f, fm);
    slot_table(f, slots);
    fputs("<h2>Bills by prosumer class</h2>\n<table><tr><th>class</th><th>prosumers</th><th>market bill, units"
          "</th><th>feed-in-tariff baseline, units</th><th>saving, units (+ = better off)</th></tr>\n", f);
    const char *k;
    json_t *c;
    json_object_foreach(json_object_get(d, "classes"), k, c) {
        int64_t bill = I(c, "bill_uunit"), base = I(c, "baseline_uunit");
        char sv[96];
        saving_str(bill, base, sv, sizeof sv);
        fputs("<tr><td>", f);
        esc(f, k);
        fprintf(f, "</td><td>%lld</td><td>%.3f</td><td>%.3f</td><td>%s</td></tr>\n", (long long)I(c, "n"),
                units(bill), units(base), sv);
    }
    fputs("</table>\n<p>The baseline is what each prosumer would have paid with no market: every metered "
          "import at the retail tariff, every export sold at the feed-in tariff.</p>\n</body></html>\n", f);
    bool ok = !ferror(f);
    ok = fclose(f) == 0 && ok;
    if (!ok) fprintf(stderr, "report: cannot write %s\n", path);
    return ok ? 0 : -1;
}
