/* ctl_feeder.c: the `temctl feeder` verbs. `flow` runs the AC power flow of a feeder folder
 * (optionally with extra injections), `limit` answers the chain's question "how much can a seller
 * at A sell to a buyer at B" offline with the chain's own integer code (grid_model_check), and
 * `install` emits the signed InstallFeeder admin tx. JSON output is built with jansson. */
#include "node/ctl/ctl.h"
#include "node/pf/feeder.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <sodium.h>

#define CTL_FEEDER_INJECT_MAX GRID_BUSES_MAX
/* `limit` works in a one-hour slot, where a trade of q Wh is exactly q W on average. */
#define CTL_FEEDER_LIMIT_SLOT_MS 3600000

enum { EXIT_OK_ = 0, EXIT_INPUT = 1, EXIT_USAGE = 2 };

static const char USAGE_FLOW[] =
    "usage: temctl feeder flow DIR [--inject BUS:KW[,BUS:KW...]] [--base-case FILE --slot S] [--json]\n"
    "  AC power flow (backward/forward sweep, converged to 1e-10 pu) of DIR/buses.csv and\n"
    "  DIR/lines.csv plus net injections in kW (positive = generation, unity power factor).\n"
    "  --base-case: the per-slot base case (docs/grid.md); --slot picks the slot (default 0).\n"
    "  --json prints loss_kw, loss_kvar, vmin_pu, vmin_bus, buses[] and lines[] (flows at each\n"
    "  line's from terminal, positive from -> to; loading_pct = 100 max|S| / rate_kva).\n";
static const char USAGE_LIMIT[] =
    "usage: temctl feeder limit DIR --from A --to B [--accepted FILE] [--margin PCT]\n"
    "                           [--base-case FILE --slot S] [--json]\n"
    "  Largest power a seller at bus A can deliver to a buyer at bus B, by the chain's own\n"
    "  integer check (an AC power flow of the slot) on the model `install` would emit, given\n"
    "  the trades already accepted in the slot (FILE: lines SELLER,BUYER,KW; a header line is\n"
    "  allowed). --margin: operator's reserve in percent (default 2). --base-case/--slot: the\n"
    "  slot's base case (docs/grid.md). Prints {\"max_kw\":..,\"binding\":{..}}.\n";
static const char USAGE_INSTALL[] =
    "usage: temctl feeder install DIR --key KEYFILE --chain-id ID --nonce N --out FILE\n"
    "                             [--margin PCT] [--base-case FILE] [--json]\n"
    "  Builds the InstallFeeder admin tx (model, base loads, per-slot base case, SHA-256 of\n"
    "  buses.csv || lines.csv), signs it with the admin key and writes the binary SignedTx.\n"
    "  --base-case FILE: rows profile,ENTRY,LOAD_PCT,GEN_PCT / gen,BUS,KW /\n"
    "  slot,SLOT,BUS,P_KW,Q_KVAR (docs/grid.md, \"Base case per slot\").\n";
static const char USAGE_ALL[] =
    "usage: temctl feeder flow|limit|install ... (each with --help)\n";

static int usage(const char *text, int code) {
    fputs(text, code == EXIT_OK_ ? stdout : stderr);
    return code;
}

static int input_error(const char *verb, const char *msg) {
    fprintf(stderr, "temctl feeder %s: %s\n", verb, msg);
    return EXIT_INPUT;
}

static bool has_help(int argc, char **argv) {
    for (int i = 2; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return true;
    return false;
}

static bool parse_u32(const char *s, uint32_t *out) {
    if (!s || !*s || *s == '-' || *s == '+') return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno || v > UINT32_MAX) return false;
    *out = (uint32_t)v;
    return true;
}

static bool parse_num(const char *s, double *out) {
    if (!s || !*s) return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end || errno || !isfinite(v)) return false;
    *out = v;
    return true;
}

/* Margin in percent -> ppm. */
static bool parse_margin(const char *s, uint32_t *ppm) {
    double pct;
    if (!parse_num(s, &pct) || pct < 0 || pct > 50) return false;
    *ppm = (uint32_t)llround(pct * 1e4);
    return true;
}

static int json_print(json_t *j) {
    if (!j) return input_error("json", "out of memory");
    char *s = json_dumps(j, JSON_REAL_PRECISION(12));
    json_decref(j);
    if (!s) return input_error("json", "out of memory");
    puts(s);
    free(s);
    return EXIT_OK_;
}

/* ================================================================== flow */

static int parse_injections(const ctl_feeder *f, const char *spec, double *inj, char *err, size_t errlen) {
    char buf[8192];
    if (strlen(spec) >= sizeof buf) {
        snprintf(err, errlen, "--inject list too long");
        return -1;
    }
    strcpy(buf, spec);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(tok, ':');
        uint32_t bus;
        double kw;
        if (!colon) {
            snprintf(err, errlen, "--inject '%s': want BUS:KW", tok);
            return -1;
        }
        *colon = 0;
        if (!parse_u32(tok, &bus) || !parse_num(colon + 1, &kw)) {
            snprintf(err, errlen, "--inject '%s:%s': want BUS:KW", tok, colon + 1);
            return -1;
        }
        int64_t b = ctl_feeder_bus_index(f, bus);
        if (b < 0) {
            snprintf(err, errlen, "--inject: unknown bus %u", bus);
            return -1;
        }
        inj[b] += kw;
    }
    return 0;
}

static json_t *flow_json(const ctl_feeder *f, const ctl_feeder_flow *fl) {
    json_t *root = json_object(), *buses = json_array(), *lines = json_array();
    if (!root || !buses || !lines) {
        json_decref(root);
        json_decref(buses);
        json_decref(lines);
        return NULL;
    }
    json_object_set_new(root, "loss_kw", json_real(fl->loss_kw));
    json_object_set_new(root, "loss_kvar", json_real(fl->loss_kvar));
    json_object_set_new(root, "vmin_pu", json_real(fl->vmin_pu));
    json_object_set_new(root, "vmin_bus", json_integer(fl->vmin_bus));
    for (uint32_t b = 0; b < f->n_buses; b++) {
        json_array_append_new(buses, json_pack("{s:I,s:f,s:f}", "bus", (json_int_t)f->buses[b].id, "vm_pu",
                                               fl->vm_pu[b], "va_deg", fl->va_deg[b]));
    }
    for (uint32_t l = 0; l < f->n_lines; l++) {
        json_array_append_new(lines, json_pack("{s:I,s:I,s:f,s:f,s:f,s:f}", "from", (json_int_t)f->lines[l].from,
                                               "to", (json_int_t)f->lines[l].to, "p_kw", fl->p_from_kw[l],
                                               "q_kvar", fl->q_from_kvar[l], "i_a", fl->i_a[l],
                                               "loading_pct", fl->loading_pct[l]));
    }
    json_object_set_new(root, "buses", buses);
    json_object_set_new(root, "lines", lines);
    return root;
}

static bool parse_slot(const char *s, uint64_t *out) {
    if (!s || !*s || *s == '-' || *s == '+') return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno) return false;
    *out = v;
    return true;
}

/* Reads --base-case FILE into bc (nothing when path is NULL). */
static int load_base(const ctl_feeder *f, const char *path, ctl_feeder_base *bc, char *err, size_t errlen) {
    memset(bc, 0, sizeof *bc);
    return path ? ctl_feeder_base_load(f, path, bc, err, errlen) : GRID_OK;
}

static int verb_flow(int argc, char **argv) {
    const char *dir = NULL, *inject = NULL, *base = NULL;
    uint64_t slot = 0;
    bool json = false;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = true;
        else if (strcmp(argv[i], "--inject") == 0 && i + 1 < argc)
            inject = argv[++i];
        else if (strcmp(argv[i], "--base-case") == 0 && i + 1 < argc)
            base = argv[++i];
        else if (strcmp(argv[i], "--slot") == 0 && i + 1 < argc) {
            if (!parse_slot(argv[++i], &slot)) return usage(USAGE_FLOW, EXIT_USAGE);
        }
        else if (argv[i][0] != '-' && !dir)
            dir = argv[i];
        else
            return usage(USAGE_FLOW, EXIT_USAGE);
    }
    if (!dir) return usage(USAGE_FLOW, EXIT_USAGE);
    ctl_feeder f;
    char err[CTL_FEEDER_ERR_BYTES];
    if (ctl_feeder_load(&f, dir, err, sizeof err) != GRID_OK) return input_error("flow", err);
    int code = EXIT_INPUT;
    ctl_feeder_flow fl = {0};
    ctl_feeder_base bc;
    double *inj = tem_calloc(f.n_buses, sizeof *inj), *pd = tem_calloc(f.n_buses, sizeof *pd),
           *qd = tem_calloc(f.n_buses, sizeof *qd);
    if (load_base(&f, base, &bc, err, sizeof err) != GRID_OK) {
        input_error("flow", err);
        goto out;
    }
    if (!inj || !pd || !qd || ctl_feeder_flow_init(&fl, &f) != GRID_OK) {
        input_error("flow", "out of memory");
        goto out;
    }
    if (base) {
        /* The slot's base case replaces the files' loads. */
        ctl_feeder_base_slot(&f, &bc, slot, pd, qd);
        for (uint32_t b = 0; b < f.n_buses; b++) {
            f.buses[b].pd_kw = pd[b];
            f.buses[b].qd_kvar = qd[b];
        }
    }
    if (inject && parse_injections(&f, inject, inj, err, sizeof err)) {
        input_error("flow", err);
        goto out;
    }
    if (ctl_feeder_flow_run(&f, inj, CTL_FEEDER_TOL_PU, false, &fl, err, sizeof err) != GRID_OK) {
        input_error("flow", err);
        goto out;
    }
    if (json) {
        code = json_print(flow_json(&f, &fl));
    } else {
        printf("loss %.3f kW %.3f kvar, vmin %.6f pu at bus %u, %d iterations\n", fl.loss_kw, fl.loss_kvar,
               fl.vmin_pu, fl.vmin_bus, fl.iterations);
        for (uint32_t l = 0; l < f.n_lines; l++)
            printf("line %u-%u p %.3f kW q %.3f kvar i %.2f A loading %.2f %%\n", f.lines[l].from, f.lines[l].to,
                   fl.p_from_kw[l], fl.q_from_kvar[l], fl.i_a[l], fl.loading_pct[l]);
        code = EXIT_OK_;
    }
out:
    tem_free(inj);
    tem_free(pd);
    tem_free(qd);
    ctl_feeder_base_free(&bc);
    ctl_feeder_flow_free(&fl);
    ctl_feeder_free(&f);
    return code;
}

/* ================================================================== limit */

/* Commits each accepted trade of FILE (SELLER,BUYER,KW) into the one-hour slot blob. */
static int load_accepted(const char *path, const uint8_t *blob, size_t len, uint8_t *slot, char *err,
                         size_t errlen) {
    FILE *fp = fopen(path, "r");
    if (!fp) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    char line[512];
    unsigned lineno = 0;
    int rc = 0;
    while (rc == 0 && fgets(line, sizeof line, fp)) {
        lineno++;
        char *s = line;
        while (*s == ' ' || *s == '\t') s++;
        size_t n = strlen(s);
        while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ')) s[--n] = 0;
        if (n == 0 || *s == '#') continue;
        if (lineno == 1 && (*s < '0' || *s > '9')) continue; /* header */
        char *f1 = strtok(s, ","), *f2 = strtok(NULL, ","), *f3 = strtok(NULL, ",");
        uint32_t a, b;
        double kw;
        if (!parse_u32(f1, &a) || !parse_u32(f2, &b) || !parse_num(f3, &kw) || kw < 0 || strtok(NULL, ",")) {
            snprintf(err, errlen, "%s line %u: want SELLER,BUYER,KW with KW >= 0", path, lineno);
            rc = -1;
            break;
        }
        int g = grid_model_commit(blob, len, slot, a, b, (uint64_t)llround(kw * 1000.0), CTL_FEEDER_LIMIT_SLOT_MS);
        if (g != GRID_OK) {
            snprintf(err, errlen, "%s line %u: %s (%u -> %u)", path, lineno, grid_strerror(g), a, b);
            rc = -1;
        }
    }
    if (rc == 0 && ferror(fp)) {
        snprintf(err, errlen, "cannot read %s", path);
        rc = -1;
    }
    fclose(fp);
    return rc;
}

static json_t *binding_json(const grid_binding *b) {
    switch (b->kind) {
    case GRID_BIND_LINE:
        return json_pack("{s:s,s:I,s:I}", "kind", "line", "from", (json_int_t)b->from, "to", (json_int_t)b->to);
    case GRID_BIND_BUS: return json_pack("{s:s,s:I}", "kind", "bus", "bus", (json_int_t)b->bus);
    default: return json_pack("{s:s}", "kind", "none");
    }
}

static int verb_limit(int argc, char **argv) {
    const char *dir = NULL, *accepted = NULL, *base = NULL;
    uint32_t a = 0, b = 0, margin = CTL_FEEDER_MARGIN_PPM_DEFAULT;
    uint64_t slot_no = 0;
    bool have_a = false, have_b = false, json = false;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = true;
        else if (strcmp(argv[i], "--base-case") == 0 && i + 1 < argc)
            base = argv[++i];
        else if (strcmp(argv[i], "--slot") == 0 && i + 1 < argc) {
            if (!parse_slot(argv[++i], &slot_no)) return usage(USAGE_LIMIT, EXIT_USAGE);
        }
        else if (strcmp(argv[i], "--from") == 0 && i + 1 < argc)
            have_a = parse_u32(argv[++i], &a);
        else if (strcmp(argv[i], "--to") == 0 && i + 1 < argc)
            have_b = parse_u32(argv[++i], &b);
        else if (strcmp(argv[i], "--accepted") == 0 && i + 1 < argc)
            accepted = argv[++i];
        else if (strcmp(argv[i], "--margin") == 0 && i + 1 < argc) {
            if (!parse_margin(argv[++i], &margin)) return usage(USAGE_LIMIT, EXIT_USAGE);
        } else if (argv[i][0] != '-' && !dir)
            dir = argv[i];
        else
            return usage(USAGE_LIMIT, EXIT_USAGE);
    }
    if (!dir || !have_a || !have_b) return usage(USAGE_LIMIT, EXIT_USAGE);
    ctl_feeder f;
    ctl_feeder_install in = {0};
    char err[CTL_FEEDER_ERR_BYTES];
    if (ctl_feeder_load(&f, dir, err, sizeof err) != GRID_OK) return input_error("limit", err);
    int code = EXIT_INPUT;
    uint8_t *blob = NULL, *slot = NULL;
    size_t len = 0;
    ctl_feeder_base bc;
    if (load_base(&f, base, &bc, err, sizeof err) != GRID_OK) {
        input_error("limit", err);
        goto out;
    }
    if (ctl_feeder_install_build(&f, margin, &in, err, sizeof err) != GRID_OK) {
        input_error("limit", err);
        goto out;
    }
    if (base && ctl_feeder_install_set_base(&in, &f, &bc) != GRID_OK) {
        input_error("limit", "out of memory");
        goto out;
    }
    int g = grid_model_compile(&in.msg, UINT32_MAX, &blob, &len, err, sizeof err);
    if (g != GRID_OK) {
        input_error("limit", err[0] ? err : grid_strerror(g));
        goto out;
    }
    slot = tem_calloc(1, grid_model_slot_bytes(blob, len));
    if (!slot) {
        input_error("limit", "out of memory");
        goto out;
    }
    if (accepted && load_accepted(accepted, blob, len, slot, err, sizeof err)) {
        input_error("limit", err);
        goto out;
    }
    grid_match_result r;
    g = grid_model_check(blob, len, slot, slot_no, a, b, UINT64_MAX, CTL_FEEDER_LIMIT_SLOT_MS, &r);
    if (g != GRID_OK) {
        snprintf(err, sizeof err, "%s (%u -> %u)", grid_strerror(g), a, b);
        input_error("limit", err);
        goto out;
    }
    if (json) {
        json_t *j = json_object();
        if (j) {
            json_object_set_new(j, "max_kw", r.max_wh == UINT64_MAX ? json_null() : json_real((double)r.max_wh / 1000.0));
            json_object_set_new(j, "binding", binding_json(&r.binding));
        }
        code = json_print(j);
    } else {
        if (r.max_wh == UINT64_MAX)
            printf("no limit (same bus)\n");
        else
            printf("max %.3f kW, bound by %s (%s)\n", (double)r.max_wh / 1000.0, r.binding.text,
                   r.binding.kind == GRID_BIND_LINE ? (r.binding.upper ? "forward rating" : "reverse rating")
                                                     : (r.binding.upper ? "vmax" : "vmin"));
        code = EXIT_OK_;
    }
out:
    tem_free(slot);
    tem_free(blob);
    ctl_feeder_base_free(&bc);
    ctl_feeder_install_free(&in);
    ctl_feeder_free(&f);
    return code;
}

/* ================================================================== install */

static int verb_install(int argc, char **argv) {
    const char *dir = NULL, *key = NULL, *chain = NULL, *outp = NULL, *base = NULL;
    uint32_t margin = CTL_FEEDER_MARGIN_PPM_DEFAULT;
    uint64_t nonce = 0;
    bool have_nonce = false, json = false;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = true;
        else if (strcmp(argv[i], "--key") == 0 && i + 1 < argc)
            key = argv[++i];
        else if (strcmp(argv[i], "--chain-id") == 0 && i + 1 < argc)
            chain = argv[++i];
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            outp = argv[++i];
        else if (strcmp(argv[i], "--base-case") == 0 && i + 1 < argc)
            base = argv[++i];
        else if (strcmp(argv[i], "--nonce") == 0 && i + 1 < argc) {
            char *end;
            const char *s = argv[++i];
            errno = 0;
            nonce = strtoull(s, &end, 10);
            have_nonce = *s && *s != '-' && !*end && !errno;
            if (!have_nonce) return usage(USAGE_INSTALL, EXIT_USAGE);
        } else if (strcmp(argv[i], "--margin") == 0 && i + 1 < argc) {
            if (!parse_margin(argv[++i], &margin)) return usage(USAGE_INSTALL, EXIT_USAGE);
        } else if (argv[i][0] != '-' && !dir)
            dir = argv[i];
        else
            return usage(USAGE_INSTALL, EXIT_USAGE);
    }
    if (!dir || !key || !chain || !outp || !have_nonce || strlen(chain) > LEDGER_CHAIN_ID_MAX)
        return usage(USAGE_INSTALL, EXIT_USAGE);
    ledger_keyfile kf;
    if (ledger_keyfile_read(key, &kf) != LEDGER_OK || kf.is_validator) {
        fprintf(stderr, "temctl feeder install: %s is not a readable secp256k1 (admin) key file\n", key);
        return EXIT_INPUT;
    }
    ctl_feeder f;
    ctl_feeder_install in = {0};
    ctl_feeder_base bc = {0};
    char err[CTL_FEEDER_ERR_BYTES];
    int code = EXIT_INPUT;
    uint8_t *blob = NULL, *tx = NULL;
    size_t len = 0, txlen = 0;
    if (ctl_feeder_load(&f, dir, err, sizeof err) != GRID_OK) {
        sodium_memzero(&kf, sizeof kf);
        return input_error("install", err);
    }
    if (load_base(&f, base, &bc, err, sizeof err) != GRID_OK) {
        input_error("install", err);
        goto out;
    }
    if (ctl_feeder_install_build(&f, margin, &in, err, sizeof err) != GRID_OK) {
        input_error("install", err);
        goto out;
    }
    if (base && ctl_feeder_install_set_base(&in, &f, &bc) != GRID_OK) {
        input_error("install", "out of memory");
        goto out;
    }
    /* Run the chain's own validation first: a model the chain would refuse is never signed. */
    int g = grid_model_compile(&in.msg, UINT32_MAX, &blob, &len, err, sizeof err);
    if (g != GRID_OK) {
        input_error("install", err[0] ? err : grid_strerror(g));
        goto out;
    }
    Tem__V1__TxBody body = TEM__V1__TX_BODY__INIT;
    body.chain_id = (char *)chain;
    body.nonce = nonce;
    body.kind_case = TEM__V1__TX_BODY__KIND_INSTALL_FEEDER;
    body.install_feeder = &in.msg;
    uint8_t txid[LEDGER_HASH_BYTES];
    if (ledger_tx_build(&body, kf.secp_sec, &tx, &txlen, txid) != LEDGER_OK) {
        input_error("install", "cannot sign the tx");
        goto out;
    }
    FILE *fp = fopen(outp, "wb");
    if (!fp || fwrite(tx, 1, txlen, fp) != txlen || fclose(fp) != 0) {
        snprintf(err, sizeof err, "cannot write %s: %s", outp, strerror(errno));
        input_error("install", err);
        goto out;
    }
    char txhex[2 * LEDGER_HASH_BYTES + 1], hhex[2 * LEDGER_HASH_BYTES + 1];
    tem_hex(txhex, txid, sizeof txid);
    tem_hex(hhex, f.source_hash, sizeof f.source_hash);
    if (json)
        code = json_print(json_pack("{s:s,s:s,s:I,s:I,s:I,s:I}", "txid", txhex, "source_hash", hhex, "bytes",
                                    (json_int_t)txlen, "buses", (json_int_t)f.n_buses, "lines",
                                    (json_int_t)f.n_lines, "margin_ppm", (json_int_t)margin));
    else {
        printf("wrote %s: install_feeder tx %s, %zu bytes, %u buses, source %s\n", outp, txhex, txlen, f.n_buses,
               hhex);
        code = EXIT_OK_;
    }
out:
    sodium_memzero(&kf, sizeof kf);
    ctl_feeder_base_free(&bc);
    tem_free(tx);
    tem_free(blob);
    ctl_feeder_install_free(&in);
    ctl_feeder_free(&f);
    return code;
}

int ctl_feeder_main(int argc, char **argv) {
    if (argc < 2) return usage(USAGE_ALL, EXIT_USAGE);
    const char *verb = argv[1];
    struct {
        const char *name, *help;
        int (*fn)(int, char **);
    } verbs[] = {{"flow", USAGE_FLOW, verb_flow}, {"limit", USAGE_LIMIT, verb_limit},
                 {"install", USAGE_INSTALL, verb_install}};
    if (strcmp(verb, "help") == 0 || strcmp(verb, "--help") == 0 || strcmp(verb, "-h") == 0)
        return usage(USAGE_ALL, EXIT_OK_);
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++) {
        if (strcmp(verb, verbs[i].name) != 0) continue;
        if (has_help(argc, argv)) return usage(verbs[i].help, EXIT_OK_);
        return verbs[i].fn(argc, argv);
    }
    fprintf(stderr, "temctl feeder: unknown verb '%s'\n", verb);
    return usage(USAGE_ALL, EXIT_USAGE);
}
