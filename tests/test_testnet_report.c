/* test_testnet_report.c: Check suite for the testnet report (node/sim/report.c) on synthetic
 * datasets: the summary shows the dataset's totals, bindings in descending count, savings per
 * class and the conservation verdicts; the HTML page carries three inline SVG charts, no script,
 * escaped text, and survives datasets with missing parts; junk is refused. */
#include <check.h>
#include <unistd.h>

#include "node/sim/testnet.h"

static const char DATA[] =
    "{\"chain_id\":\"tem-testnet\",\"mechanism\":\"cda\",\"validators\":4,\"observers\":1,\"prosumers\":3,"
    "\"feeder\":\"case33bw\",\"slot_ms\":2000,\"slot_minutes\":15,\"start_minute\":690,\"first_slot\":40,"
    "\"slots\":2,\"seed\":7,\"blocks\":61,\"txs\":123,"
    "\"orders\":{\"submitted\":6,\"accepted\":6,\"committed\":5,\"refused\":1},"
    "\"readings\":{\"submitted\":6,\"accepted\":6,\"committed\":6,\"refused\":0},"
    "\"refusals\":{\"order after gate closure of its slot\":1},"
    "\"per_slot\":[{\"slot\":40,\"minute\":690,\"orders\":3,\"trades\":2,\"energy_wh\":150,\"value_uunit\":30000,"
    "\"avg_price\":200000,\"curtailed_wh\":20,\"curtailed_trades\":1,\"fees_uunit\":10,\"retail\":300000,"
    "\"feed_in\":80000,\"import_wh\":200,\"export_wh\":300},"
    "{\"slot\":41,\"minute\":705,\"orders\":3,\"trades\":0,\"energy_wh\":0,\"value_uunit\":0,\"avg_price\":0,"
    "\"curtailed_wh\":0,\"curtailed_trades\":0,\"fees_uunit\":0,\"retail\":300000,\"feed_in\":80000,"
    "\"import_wh\":100,\"export_wh\":0}],"
    "\"totals\":{\"trades\":2,\"energy_wh\":150,\"value_uunit\":30000,\"avg_price\":200000,\"curtailed_wh\":20,"
    "\"curtailed_trades\":1,\"fees_uunit\":10,\"import_wh\":300,\"export_wh\":300,\"local_share\":0.5},"
    "\"bindings\":{\"line 17-18\":1,\"bus <18>\":3},"
    "\"classes\":{\"consumer\":{\"n\":1,\"bill_uunit\":80000,\"baseline_uunit\":100000},"
    "\"pv\":{\"n\":2,\"bill_uunit\":-30000,\"baseline_uunit\":-20000}},"
    "\"conservation\":{\"money_genesis_uunit\":5000000,\"money_end_uunit\":5000000,\"money_conserved\":true,"
    "\"tokens_minted_wh\":300,\"readings_export_wh\":300,\"tokens_held_wh\":12,\"tokens_conserved\":true},"
    "\"agreement\":{\"agree\":true,\"nodes\":[{\"node\":0,\"height\":61,\"state_root\":\"abcdef0123456789abcdef\"}]},"
    "\"feeder_map\":{\"run_slot\":0,\"buses\":[{\"bus\":1,\"x\":0,\"y\":0,\"slack\":true},"
    "{\"bus\":2,\"x\":1,\"y\":0,\"inject_kw\":5.5},{\"bus\":3,\"x\":2,\"y\":1,\"inject_kw\":-2}],"
    "\"lines\":[{\"from\":1,\"to\":2,\"rate_kva\":100,\"base_loading_pct\":45,\"loading_pct\":95,\"binding_trades\":1},"
    "{\"from\":2,\"to\":3,\"rate_kva\":100,\"base_loading_pct\":40,\"loading_pct\":30,\"binding_trades\":0}]}}";

static char *text_of(const json_t *d, int *rc) {
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(m);
    *rc = ctl_report_text(d, m);
    fclose(m);
    return buf;
}

static char *slurp(const char *path) {
    uint8_t *b;
    size_t n;
    ck_assert_int_eq(ctl_read_file(path, 1 << 22, &b, &n), 0);
    return (char *)b;
}

/* The HTML report of d, written to a temporary file and read back (tem_free it). */
static char *html_of(const json_t *d) {
    char path[] = "/tmp/tem-report-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_int_eq(ctl_report_html(d, path), 0);
    char *h = slurp(path);
    unlink(path);
    return h;
}

START_TEST(report_text_shows_the_dataset_totals_and_verdicts) {
    json_t *d = json_loads(DATA, 0, NULL);
    ck_assert_ptr_nonnull(d);
    int rc;
    char *t = text_of(d, &rc);
    ck_assert_int_eq(rc, 0);
    static const char *const want[] = {
        "chain tem-testnet, 4 validators + 1 observer, cda market, 3 prosumers on case33bw",
        "slots 40..41: 2 x 2.0 s of chain time = 2 x 15 simulated minutes (11:30-12:00), seed 7",
        "blocks committed     61, with 123 txs; nodes agree at height 61",
        "orders               6 submitted, 6 accepted, 5 committed, 1 refused",
        "refusal reasons      order after gate closure of its slot (1)",
        "trades               2, 150 Wh, worth 0.030 units, average 0.2000 units/kWh, fees 0.000 units",
        /* Descending count: the bus first. */
        "grid check           1 trades curtailed, 20 Wh removed; binding: bus <18> (3), line 17-18 (1)",
        "met locally          50.0% of metered import (150 of 300 Wh)",
        "   40  11:30      3      2        150     0.2000   0.0800   0.3000            20",
        "   41  11:45      3      0          0          -   0.0800   0.3000             0",
        "consumer                          1       0.080              0.100   +0.020 (20.0%)",
        /* Both incomes: a percentage of a negative baseline would mislead. */
        "pv                                2      -0.030             -0.020   +0.010 (n/a: baseline is an income)",
        "money 5.000000 -> 5.000000 units (conserved); tokens minted 300 Wh = exports read 300 Wh, 12 Wh still held (ok)",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        ck_assert_msg(strstr(t, want[i]), "missing line %zu: %s\n--- got:\n%s", i, want[i], t);
    free(t);
    /* Verdicts follow the dataset. */
    json_object_set_new(json_object_get(d, "conservation"), "money_conserved", json_false());
    json_object_set_new(json_object_get(d, "agreement"), "agree", json_false());
    t = text_of(d, &rc);
    ck_assert_ptr_nonnull(strstr(t, "NOT CONSERVED"));
    ck_assert_ptr_nonnull(strstr(t, "nodes DISAGREE"));
    free(t);
    json_decref(d);
}
END_TEST

START_TEST(report_html_has_three_svg_charts_no_script_and_escaped_text) {
    json_t *d = json_loads(DATA, 0, NULL);
    char *h = html_of(d);
    size_t svgs = 0;
    for (const char *p = h; (p = strstr(p, "<svg")); p++) svgs++;
    ck_assert_uint_eq(svgs, 3);
    ck_assert_ptr_null(strstr(h, "<script"));
    /* No network: the only URLs are the three SVG namespace names. */
    size_t urls = 0;
    for (const char *p = h; (p = strstr(p, "http")); p++) urls++;
    ck_assert_uint_eq(urls, 3);
    ck_assert_ptr_null(strstr(h, "bus <18>"));
    ck_assert_ptr_nonnull(strstr(h, "bus &lt;18&gt; (3)"));
    /* The loaded line is drawn red with its binding halo; the light one green. */
    ck_assert_ptr_nonnull(strstr(h, "stroke='#c0392b' stroke-width='5.8'><title>line 1-2: 95.0% of 100 kVA (base case 45.0%), bound trades"));
    ck_assert_ptr_nonnull(strstr(h, "stroke='#27ae60' stroke-width='3.2'><title>line 2-3: 30.0%"));
    /* The binding line carries its number on the drawing, not only in a tooltip. */
    ck_assert_ptr_nonnull(strstr(h, ">95% binding</text>"));
    ck_assert_ptr_nonnull(strstr(h, "<td>consumer</td><td>1</td><td>0.080</td><td>0.100</td><td>+0.020 (20.0%)</td>"));
    /* Round ticks: retail 0.30 units/kWh puts the axis at 0, 0.1, ... 0.4. */
    for (int k = 0; k <= 4; k++) {
        char tick[48];
        snprintf(tick, sizeof tick, "text-anchor='end'>%g</text>", k / 10.0);
        ck_assert_msg(strstr(h, tick), "no tick %g", k / 10.0);
    }
    ck_assert_ptr_null(strstr(h, "text-anchor='end'>0.0825"));
    /* A view per slot. */
    ck_assert_ptr_nonnull(strstr(h, "<tr id='slot-40'><td>40</td><td>11:30</td><td>3</td><td>2</td><td>150</td>"));
    tem_free(h);
    json_decref(d);
}
END_TEST

START_TEST(report_survives_a_dataset_with_parts_missing_and_refuses_junk) {
    json_t *d = json_loads("{\"slots\":0}", 0, NULL);
    char path[] = "/tmp/tem-report-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    int rc;
    char *t = text_of(d, &rc);
    ck_assert_int_eq(rc, 0);
    ck_assert_ptr_nonnull(strstr(t, "binding: none"));
    free(t);
    ck_assert_int_eq(ctl_report_html(d, path), 0);
    char *h = slurp(path);
    ck_assert_ptr_nonnull(strstr(h, "No feeder drawing in this dataset."));
    tem_free(h);
    json_decref(d);
    json_t *arr = json_array();
    FILE *null = fopen("/dev/null", "w");
    ck_assert_int_eq(ctl_report_text(arr, null), -1);
    ck_assert_int_eq(ctl_report_html(arr, path), -1);
    ck_assert_int_eq(ctl_report_html(json_object_get(arr, "x"), path), -1);
    /* An unwritable path is an error, not a crash. */
    json_t *o = json_object();
    ck_assert_int_eq(ctl_report_html(o, "/nonexistent-dir/report.html"), -1);
    json_decref(o);
    fclose(null);
    json_decref(arr);
    unlink(path);
}
END_TEST

/* Legends sit under the plot area (y beyond the x axis at H - MB = 260), never on the data. */
START_TEST(report_legends_sit_below_the_plot_area) {
    json_t *d = json_loads(DATA, 0, NULL);
    char *h = html_of(d);
    static const char *const names[] = {">retail tariff<", ">traded between peers<", ">metered import<"};
    for (size_t i = 0; i < 3; i++) {
        const char *p = strstr(h, names[i]);
        ck_assert_msg(p != NULL, "no legend %s", names[i]);
        const char *y = p;
        while (y > h && strncmp(y, " y='", 4) != 0) y--;
        ck_assert_int_gt(atoi(y + 4), 300);
    }
    tem_free(h);
    json_decref(d);
}
END_TEST

/* A saving that turns a payment into an income has no meaningful percentage. */
START_TEST(report_saving_when_the_bill_changes_sign) {
    json_t *d = json_loads("{\"slots\":0,\"classes\":{\"pv\":{\"n\":1,\"bill_uunit\":-739000,\"baseline_uunit\":1000000}}}", 0, NULL);
    ck_assert_ptr_nonnull(d);
    int rc;
    char *t = text_of(d, &rc);
    ck_assert_int_eq(rc, 0);
    ck_assert_msg(strstr(t, "+1.739 (n/a: bill became an income)"), "%s", t);
    ck_assert_ptr_null(strstr(t, "173.9%"));
    free(t);
    json_decref(d);
}
END_TEST

/* 533 buses on a deep feeder: the drawing stays within 820 x 700 px. */
START_TEST(report_feeder_drawing_fits_a_large_feeder) {
    json_t *d = json_object(), *fm = json_object(), *buses = json_array(), *lines = json_array();
    for (int i = 1; i <= 533; i++) {
        json_t *b = json_pack("{s:i, s:f, s:f, s:f}", "bus", i, "x", (double)(i % 40), "y", (double)(i / 2), "v_pu",
                              1.0 - i * 1e-4);
        if (i == 1) json_object_set_new(b, "slack", json_true());
        json_array_append_new(buses, b);
        if (i > 1)
            json_array_append_new(lines, json_pack("{s:i, s:i, s:f, s:f}", "from", i - 1, "to", i, "rate_kva", 100.0,
                                                   "base_loading_pct", (double)(i % 97)));
    }
    json_object_set_new(fm, "buses", buses);
    json_object_set_new(fm, "lines", lines);
    json_object_set_new(d, "feeder_map", fm);
    char *h = html_of(d);
    const char *svg = strstr(h, "aria-label='the feeder with line loadings'");
    ck_assert_ptr_nonnull(svg);
    while (svg > h && strncmp(svg, "height='", 8) != 0) svg--;
    ck_assert_int_le(atoi(svg + 8), 700);
    ck_assert_ptr_nonnull(strstr(h, "lowest 0.9467 pu"));
    /* Labels only for the slack and the lowest bus, and numbers on the 6 most loaded lines. */
    size_t numbered = 0;
    for (const char *p = h; (p = strstr(p, "%</text>")); p++) numbered++;
    ck_assert_uint_ge(numbered, 6);
    ck_assert_uint_le(numbered, 12);
    tem_free(h);
    json_decref(d);
}
END_TEST

int main(void) {
    Suite *s = suite_create("testnet_report");
    TCase *t = tcase_create("report");
    tcase_add_test(t, report_text_shows_the_dataset_totals_and_verdicts);
    tcase_add_test(t, report_html_has_three_svg_charts_no_script_and_escaped_text);
    tcase_add_test(t, report_survives_a_dataset_with_parts_missing_and_refuses_junk);
    tcase_add_test(t, report_legends_sit_below_the_plot_area);
    tcase_add_test(t, report_saving_when_the_bill_changes_sign);
    tcase_add_test(t, report_feeder_drawing_fits_a_large_feeder);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
