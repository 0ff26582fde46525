/* ctl_keys.c: `temctl keygen` and `temctl genesis`: key files and the genesis document. */
#include "node/ctl/ctl.h"

#include <sodium.h>
#include <time.h>

int ctl_keygen_main(int argc, char **argv) {
    ctl_opts o;
    if (ctl_opts_parse(&o, argc, argv, 1, NULL) != 0) return CTL_USAGE;
    const char *type = ctl_opt(&o, "type"), *out = ctl_opt(&o, "out");
    if (o.help || !type || !out || o.npos) {
        fprintf(o.help ? stdout : stderr,
                "usage: temctl keygen --type meter|validator --out FILE\n"
                "  Writes a new key file (mode 0600, never overwrites) and prints the public key.\n"
                "  meter: secp256k1 (33-byte compressed public key), for participants and admins.\n"
                "  validator: Ed25519 (32-byte public key), for validators and observers.\n");
        return o.help ? CTL_OK : CTL_USAGE;
    }
    ledger_keyfile k = {0};
    int rc;
    if (strcmp(type, "validator") == 0) {
        k.is_validator = 1;
        rc = ledger_ed_keygen(k.ed_sec, k.ed_pub);
    } else if (strcmp(type, "meter") == 0) {
        rc = ledger_secp_keygen(k.secp_sec, k.secp_pub);
    } else {
        fprintf(stderr, "--type must be meter or validator\n");
        return CTL_USAGE;
    }
    if (rc == LEDGER_OK) rc = ledger_keyfile_write(out, &k);
    if (rc != LEDGER_OK) {
        fprintf(stderr, "keygen: cannot write %s (exists already, or no permission)\n", out);
        sodium_memzero(&k, sizeof k);
        return CTL_INVALID;
    }
    char hex[2 * 33 + 1];
    if (k.is_validator) tem_hex(hex, k.ed_pub, 32);
    else tem_hex(hex, k.secp_pub, 33);
    sodium_memzero(&k, sizeof k);
    printf("%s\n", hex);
    return CTL_OK;
}

/* ------------------------------------------------------------------ genesis
 * The spec is a genesis document in which any "pubkey" may be replaced by "key_file" (a key
 * file whose public key is taken) and any admins entry may be a key file path. Flags build the
 * same document. The output is checked with the node's own parser before it is written. */
static int resolve_key(json_t *obj, const char *field) {
    const char *kf = json_string_value(json_object_get(obj, "key_file"));
    if (!kf) return 0;
    ledger_keyfile k;
    if (ledger_keyfile_read(kf, &k) != LEDGER_OK) {
        fprintf(stderr, "genesis: cannot read key file %s\n", kf);
        return -1;
    }
    json_t *h = k.is_validator ? ctl_json_hex(k.ed_pub, 32) : ctl_json_hex(k.secp_pub, 33);
    sodium_memzero(&k, sizeof k);
    json_object_set_new(obj, field, h);
    json_object_del(obj, "key_file");
    return 0;
}

static int resolve_spec(json_t *spec) {
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(spec, "validators"), i, v) if (resolve_key(v, "pubkey")) return -1;
    json_array_foreach(json_object_get(spec, "participants"), i, v) {
        if (resolve_key(v, "pubkey")) return -1;
        /* A meter's owner may be named by its key file too ("owner_key_file"). */
        const char *of = json_string_value(json_object_get(v, "owner_key_file"));
        if (of) {
            json_t *tmp = json_pack("{s:s}", "key_file", of);
            if (!tmp || resolve_key(tmp, "owner")) {
                json_decref(tmp);
                return -1;
            }
            json_object_set(v, "owner", json_object_get(tmp, "owner"));
            json_object_del(v, "owner_key_file");
            json_decref(tmp);
        }
    }
    json_t *admins = json_object_get(spec, "admins");
    json_array_foreach(admins, i, v) {
        const char *s = json_string_value(v);
        if (s && strlen(s) != 66) {
            ledger_keyfile k;
            if (ledger_keyfile_read(s, &k) != LEDGER_OK || k.is_validator) {
                fprintf(stderr, "genesis: admins[%zu]: %s is neither a hex key nor a meter key file\n", i, s);
                return -1;
            }
            json_array_set_new(admins, i, ctl_json_hex(k.secp_pub, 33));
            sodium_memzero(&k, sizeof k);
        }
    }
    return 0;
}

/* "a:b:c" split into at most n fields in place. Returns the count. */
static int split(char *s, char **f, int n) {
    int k = 0;
    while (k < n) {
        f[k++] = s;
        char *c = strchr(s, ':');
        if (!c) break;
        /* Addresses contain a colon themselves: the caller asks for exactly as many fields as
         * it wants, the last one keeps the rest. */
        if (k == n) break;
        *c = 0;
        s = c + 1;
    }
    return k;
}

static json_t *spec_from_flags(const ctl_opts *o) {
    json_t *g = json_object();
    const char *cid = ctl_opt(o, "chain-id");
    json_object_set_new(g, "chain_id", json_string(cid ? cid : "tem-local"));
    /* Without --time-ms the chain starts now, at the start of the current slot, so slot
     * numbers and gate closures line up with wall-clock slot boundaries (not 1970). */
    uint64_t t = 0, slot_ms = 900000;
    if (ctl_opt(o, "slot-ms") && (!ctl_parse_u64(ctl_opt(o, "slot-ms"), &slot_ms) || slot_ms == 0)) goto bad;
    if (ctl_opt(o, "time-ms")) {
        if (!ctl_parse_u64(ctl_opt(o, "time-ms"), &t)) goto bad;
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        t = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
        t -= t % slot_ms;
    }
    json_object_set_new(g, "genesis_time_ms", json_integer((json_int_t)t));
    json_t *vals = json_array(), *admins = json_array(), *parts = json_array(), *tariffs = json_array();
    json_object_set_new(g, "validators", vals);
    json_object_set_new(g, "admins", admins);
    json_object_set_new(g, "participants", parts);
    json_object_set_new(g, "tariffs", tariffs);
    int it = 0;
    const char *v;
    while ((v = ctl_opt_next(o, "validator", &it))) {
        /* NAME:KEY:HOST:PORT[@HTTPHOST:PORT], KEY = hex or key file */
        char buf[512], *f[3];
        snprintf(buf, sizeof buf, "%s", v);
        char *http = strchr(buf, '@');
        if (http) *http++ = 0;
        if (split(buf, f, 3) != 3) goto bad;
        json_t *e = json_object();
        json_object_set_new(e, "name", json_string(f[0]));
        json_object_set_new(e, strlen(f[1]) == 64 ? "pubkey" : "key_file", json_string(f[1]));
        json_object_set_new(e, "address", json_string(f[2]));
        if (http) json_object_set_new(e, "http", json_string(http));
        json_array_append_new(vals, e);
    }
    it = 0;
    while ((v = ctl_opt_next(o, "admin", &it))) json_array_append_new(admins, json_string(v));
    it = 0;
    while ((v = ctl_opt_next(o, "participant", &it))) {
        /* KEY:BUS:ROLE[:MONEY] */
        char buf[512], *f[4];
        snprintf(buf, sizeof buf, "%s", v);
        int n = split(buf, f, 4);
        uint64_t bus, money = 0;
        if (n < 3 || !ctl_parse_u64(f[1], &bus) || (n == 4 && !ctl_parse_u64(f[3], &money))) goto bad;
        json_t *e = json_object();
        json_object_set_new(e, strlen(f[0]) == 66 ? "pubkey" : "key_file", json_string(f[0]));
        json_object_set_new(e, "bus", json_integer((json_int_t)bus));
        json_object_set_new(e, "role", json_string(f[2]));
        json_object_set_new(e, "money_uunit", json_integer((json_int_t)money));
        json_array_append_new(parts, e);
    }
    it = 0;
    while ((v = ctl_opt_next(o, "meter", &it))) {
        /* KEY:OWNER:BUS:IMPORT_W:EXPORT_W[:FROM_SLOT] (KEY and OWNER hex or key files) */
        char buf[1024], *f[6];
        snprintf(buf, sizeof buf, "%s", v);
        uint64_t bus, iw, ew, from = 0;
        int n = split(buf, f, 6);
        if (n < 5 || !ctl_parse_u64(f[2], &bus) || !ctl_parse_u64(f[3], &iw) || !ctl_parse_u64(f[4], &ew) ||
            (n == 6 && !ctl_parse_u64(f[5], &from)))
            goto bad;
        json_t *e = json_object();
        json_object_set_new(e, strlen(f[0]) == 66 ? "pubkey" : "key_file", json_string(f[0]));
        json_object_set_new(e, "bus", json_integer((json_int_t)bus));
        json_object_set_new(e, "role", json_string("meter"));
        json_object_set_new(e, strlen(f[1]) == 66 ? "owner" : "owner_key_file", json_string(f[1]));
        json_object_set_new(e, "import_capacity_w", json_integer((json_int_t)iw));
        json_object_set_new(e, "export_capacity_w", json_integer((json_int_t)ew));
        if (from) json_object_set_new(e, "from_slot", json_integer((json_int_t)from));
        json_array_append_new(parts, e);
    }
    it = 0;
    while ((v = ctl_opt_next(o, "tariff", &it))) {
        char buf[128], *f[3];
        snprintf(buf, sizeof buf, "%s", v);
        uint64_t sm, r, fi;
        if (split(buf, f, 3) != 3 || !ctl_parse_u64(f[0], &sm) || !ctl_parse_u64(f[1], &r) || !ctl_parse_u64(f[2], &fi)) goto bad;
        json_t *e = json_object();
        json_object_set_new(e, "start_minute", json_integer((json_int_t)sm));
        json_object_set_new(e, "retail_uunit_per_kwh", json_integer((json_int_t)r));
        json_object_set_new(e, "feed_in_uunit_per_kwh", json_integer((json_int_t)fi));
        json_array_append_new(tariffs, e);
    }
    json_t *m = json_object();
    static const char *const mk[][2] = {{"slot-ms", "slot_ms"}, {"gate-closure-ms", "gate_closure_ms"},
                                        {"settlement-deadline-ms", "settlement_deadline_ms"},
                                        {"seller-collateral-ppm", "seller_collateral_ppm"},
                                        {"network-fee", "network_fee_uunit_per_kwh_per_ohm"}};
    for (size_t i = 0; i < sizeof mk / sizeof mk[0]; i++) {
        uint64_t x;
        const char *s = ctl_opt(o, mk[i][0]);
        if (!s) continue;
        if (!ctl_parse_u64(s, &x)) goto bad;
        json_object_set_new(m, mk[i][1], json_integer((json_int_t)x));
    }
    if (ctl_opt(o, "mechanism")) json_object_set_new(m, "mechanism", json_string(ctl_opt(o, "mechanism")));
    json_object_set_new(g, "market", m);
    return g;
bad:
    json_decref(g);
    return NULL;
}

int ctl_genesis_main(int argc, char **argv) {
    ctl_opts o;
    if (ctl_opts_parse(&o, argc, argv, 1, "offline") != 0) return CTL_USAGE;
    const char *out = ctl_opt(&o, "out");
    if (o.help || o.npos) {
        fprintf(o.help ? stdout : stderr,
                "usage: temctl genesis --spec SPEC.json [--out FILE]\n"
                "       temctl genesis --chain-id ID --validator NAME:KEY:HOST:PORT[@HTTPHOST:PORT]...\n"
                "                      --admin KEY... --participant KEY:BUS:ROLE[:MONEY]...\n"
                "                      [--meter KEY:OWNER:BUS:IMPORT_W:EXPORT_W[:FROM_SLOT]...]\n"
                "                      --tariff START_MINUTE:RETAIL:FEED_IN... [--time-ms T (default: now, at a slot start)]\n"
                "                      [--slot-ms MS] [--gate-closure-ms MS] [--settlement-deadline-ms MS]\n"
                "                      [--mechanism cda|call] [--seller-collateral-ppm P] [--network-fee R]\n"
                "                      [--offline] [--out FILE]\n"
                "  KEY is a public key in hex or a key file. Writes the genesis JSON (default stdout)\n"
                "  after checking it with the node's parser, and prints its hash on stderr.\n"
                "  temd's pBFT needs at least 4 validators; --offline allows fewer for a genesis\n"
                "  that only offline tools use (temctl exec, tests).\n");
        return o.help ? CTL_OK : CTL_USAGE;
    }
    json_t *spec;
    if (ctl_opt(&o, "spec")) {
        json_error_t je;
        spec = json_load_file(ctl_opt(&o, "spec"), JSON_REJECT_DUPLICATES, &je);
        if (!spec) {
            fprintf(stderr, "genesis: %s:%d: %s\n", ctl_opt(&o, "spec"), je.line, je.text);
            return CTL_INVALID;
        }
    } else {
        spec = spec_from_flags(&o);
        if (!spec) {
            fprintf(stderr, "genesis: malformed flag value (see --help)\n");
            return CTL_USAGE;
        }
    }
    int status = CTL_INVALID;
    char *text = NULL;
    if (resolve_spec(spec) != 0) goto out;
    text = json_dumps(spec, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!text) goto out;
    size_t len = strlen(text);
    char *t2 = tem_malloc(len + 2);
    if (!t2) goto out;
    memcpy(t2, text, len);
    t2[len] = '\n';
    t2[len + 1] = 0;
    ledger_genesis g;
    char err[256];
    if (ledger_genesis_parse(t2, len + 1, &g, err, sizeof err) != LEDGER_OK) {
        fprintf(stderr, "genesis: %s\n", err);
        tem_free(t2);
        goto out;
    }
    /* temd's pBFT needs n >= 4 (n = 3f+1 tolerates f faulty validators); a smaller chain would
     * only fail later, at temd's start. Say so here, where the choice is made. */
    if (g.n_validators < 4 && !ctl_flag(&o, "offline")) {
        fprintf(stderr, "genesis: %u validator%s: pBFT needs at least 4 (n = 3f+1 tolerates f faulty ones; 4 tolerate 1).\n"
                        "  For a development chain run 4 validators on one machine: `make testnet`.\n",
                g.n_validators, g.n_validators == 1 ? "" : "s");
        ledger_genesis_free(&g);
        tem_free(t2);
        goto out;
    }
    char hh[65];
    tem_hex(hh, g.hash, 32);
    ledger_genesis_free(&g);
    if (ctl_write_file(out ? out : "-", t2, len + 1) != 0) {
        tem_free(t2);
        goto out;
    }
    tem_free(t2);
    fprintf(stderr, "genesis hash %s\n", hh);
    status = CTL_OK;
out:
    free(text);
    json_decref(spec);
    return status;
}
