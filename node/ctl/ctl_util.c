/* ctl_util.c: option parsing, file I/O and JSON helpers shared by the temctl verbs. */
#include "node/ctl/ctl.h"

#include <errno.h>

int ctl_opts_parse(ctl_opts *o, int argc, char **argv, int first, const char *bool_flags) {
    memset(o, 0, sizeof *o);
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            o->help = true;
            continue;
        }
        if (strncmp(a, "--", 2) == 0 && a[2]) {
            if (o->n >= CTL_OPTS_MAX) {
                fprintf(stderr, "too many options\n");
                return -1;
            }
            const char *name = a + 2;
            const char *eq = strchr(name, '=');
            /* Boolean flags take no value; everything else takes the next argument. */
            char nb[64];
            snprintf(nb, sizeof nb, "%.*s", eq ? (int)(eq - name) : (int)strlen(name), name);
            bool is_bool = false;
            if (bool_flags) {
                const char *p = bool_flags;
                size_t l = strlen(nb);
                while ((p = strstr(p, nb)) != NULL) {
                    if ((p == bool_flags || p[-1] == ' ') && (p[l] == 0 || p[l] == ' ')) {
                        is_bool = true;
                        break;
                    }
                    p += l;
                }
            }
            if (eq) {
                snprintf(o->namebuf[o->n], sizeof o->namebuf[o->n], "%s", nb);
                o->name[o->n] = o->namebuf[o->n];
                o->val[o->n] = eq + 1;
            } else if (is_bool) {
                o->name[o->n] = name;
                o->val[o->n] = "1";
            } else {
                if (i + 1 >= argc) {
                    fprintf(stderr, "option --%s needs a value\n", name);
                    return -1;
                }
                o->name[o->n] = name;
                o->val[o->n] = argv[++i];
            }
            o->n++;
        } else {
            if (o->npos >= CTL_OPTS_MAX) {
                fprintf(stderr, "too many arguments\n");
                return -1;
            }
            o->pos[o->npos++] = a;
        }
    }
    return 0;
}

const char *ctl_opt(const ctl_opts *o, const char *name) {
    const char *v = NULL;
    for (int i = 0; i < o->n; i++)
        if (strcmp(o->name[i], name) == 0) v = o->val[i];
    return v;
}

const char *ctl_opt_next(const ctl_opts *o, const char *name, int *it) {
    for (; *it < o->n; (*it)++)
        if (strcmp(o->name[*it], name) == 0) return o->val[(*it)++];
    return NULL;
}

bool ctl_flag(const ctl_opts *o, const char *name) { return ctl_opt(o, name) != NULL; }

bool ctl_parse_u64(const char *s, uint64_t *out) {
    if (!s || !*s || *s == '-' || *s == '+') return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return false;
    *out = v;
    return true;
}

int ctl_read_file(const char *path, size_t max, uint8_t **out, size_t *len) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 4096, n = 0;
    uint8_t *b = tem_malloc(cap + 1);
    int rc = -1;
    if (!b) goto out;
    for (;;) {
        if (n == cap) {
            if (cap >= max) {
                fprintf(stderr, "%s is larger than %zu bytes\n", path, max);
                goto out;
            }
            cap = cap * 2 > max ? max : cap * 2;
            uint8_t *nb = tem_realloc(b, cap + 1);
            if (!nb) goto out;
            b = nb;
        }
        size_t r = fread(b + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    if (ferror(f)) {
        fprintf(stderr, "cannot read %s\n", path);
        goto out;
    }
    b[n] = 0;
    *out = b;
    *len = n;
    b = NULL;
    rc = 0;
out:
    tem_free(b);
    if (f != stdin) fclose(f);
    return rc;
}

int ctl_write_file(const char *path, const void *data, size_t len) {
    FILE *f = strcmp(path, "-") == 0 ? stdout : fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "cannot create %s: %s\n", path, strerror(errno));
        return -1;
    }
    bool ok = fwrite(data, 1, len, f) == len;
    if (f == stdout) ok = fflush(f) == 0 && ok;
    else ok = fclose(f) == 0 && ok;
    if (!ok) fprintf(stderr, "cannot write %s\n", path);
    return ok ? 0 : -1;
}

json_t *ctl_json_hex(const uint8_t *b, size_t n) {
    char *h = tem_malloc(2 * n + 1);
    if (!h) return NULL;
    tem_hex(h, b, n);
    json_t *j = json_string(h);
    tem_free(h);
    return j;
}

void ctl_print_json(json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (s) {
        puts(s);
        free(s);
    }
    json_decref(j);
}

static const char *side_name(int s) { return s == 1 ? "buy" : s == 2 ? "sell" : "unspecified"; }
static const char *role_name(int r) {
    static const char *n[] = {"unspecified", "prosumer", "consumer", "utility",
                              "dso",         "aggregator", "meter",  "meter_data"};
    return r >= 0 && r <= 7 ? n[r] : "unknown";
}

json_t *ctl_tx_json(const ledger_tx *tx) {
    const Tem__V1__TxBody *b = tx->body;
    json_t *j = json_object(), *k = json_object();
    if (!j || !k) {
        json_decref(j);
        json_decref(k);
        return NULL;
    }
    json_object_set_new(j, "txid", ctl_json_hex(tx->txid, 32));
    json_object_set_new(j, "chain_id", json_string(b->chain_id));
    json_object_set_new(j, "signer", ctl_json_hex(b->signer.data, b->signer.len));
    json_object_set_new(j, "nonce", json_integer((json_int_t)b->nonce));
    json_object_set_new(j, "kind", json_string(ledger_tx_kind_name(b->kind_case)));
    switch (b->kind_case) {
    case TEM__V1__TX_BODY__KIND_ORDER:
        json_object_set_new(k, "slot", json_integer((json_int_t)b->order->slot));
        json_object_set_new(k, "side", json_string(side_name(b->order->side)));
        json_object_set_new(k, "price", json_integer((json_int_t)b->order->price));
        json_object_set_new(k, "quantity_wh", json_integer((json_int_t)b->order->quantity_wh));
        json_object_set_new(k, "tif", json_string(b->order->tif == 1 ? "ioc" : "gtc"));
        break;
    case TEM__V1__TX_BODY__KIND_CANCEL:
        json_object_set_new(k, "order_txid", ctl_json_hex(b->cancel->order_txid.data, b->cancel->order_txid.len));
        break;
    case TEM__V1__TX_BODY__KIND_READING:
        json_object_set_new(k, "slot", json_integer((json_int_t)b->reading->slot));
        json_object_set_new(k, "import_wh", json_integer((json_int_t)b->reading->import_wh));
        json_object_set_new(k, "export_wh", json_integer((json_int_t)b->reading->export_wh));
        if (b->reading->meter.len)
            json_object_set_new(k, "meter", ctl_json_hex(b->reading->meter.data, b->reading->meter.len));
        break;
    case TEM__V1__TX_BODY__KIND_TRANSFER:
        json_object_set_new(k, "to", ctl_json_hex(b->transfer->to.data, b->transfer->to.len));
        json_object_set_new(k, "amount", json_integer((json_int_t)b->transfer->amount));
        break;
    case TEM__V1__TX_BODY__KIND_REGISTER:
        json_object_set_new(k, "pubkey", ctl_json_hex(b->register_->pubkey.data, b->register_->pubkey.len));
        json_object_set_new(k, "bus", json_integer(b->register_->bus));
        json_object_set_new(k, "role", json_string(role_name(b->register_->role)));
        if (b->register_->role == TEM__V1__ROLE__METER) {
            if (b->register_->owner.len)
                json_object_set_new(k, "owner", ctl_json_hex(b->register_->owner.data, b->register_->owner.len));
            json_object_set_new(k, "import_capacity_w", json_integer((json_int_t)b->register_->import_capacity_w));
            json_object_set_new(k, "export_capacity_w", json_integer((json_int_t)b->register_->export_capacity_w));
        }
        break;
    case TEM__V1__TX_BODY__KIND_DEPOSIT:
        json_object_set_new(k, "to", ctl_json_hex(b->deposit->to.data, b->deposit->to.len));
        json_object_set_new(k, "amount", json_integer((json_int_t)b->deposit->amount));
        break;
    case TEM__V1__TX_BODY__KIND_SET_TARIFF: {
        json_object_set_new(k, "from_slot", json_integer((json_int_t)b->set_tariff->from_slot));
        json_t *ps = json_array();
        for (size_t i = 0; i < b->set_tariff->n_periods; i++) {
            Tem__V1__TariffPeriod *p = b->set_tariff->periods[i];
            json_t *pj = json_object();
            json_object_set_new(pj, "start_minute", json_integer(p->start_minute));
            json_object_set_new(pj, "retail_uunit_per_kwh", json_integer((json_int_t)p->retail_uunit_per_kwh));
            json_object_set_new(pj, "feed_in_uunit_per_kwh", json_integer((json_int_t)p->feed_in_uunit_per_kwh));
            json_array_append_new(ps, pj);
        }
        json_object_set_new(k, "periods", ps);
        break;
    }
    case TEM__V1__TX_BODY__KIND_INSTALL_FEEDER:
        json_object_set_new(k, "source_hash", ctl_json_hex(b->install_feeder->source_hash.data, b->install_feeder->source_hash.len));
        json_object_set_new(k, "buses", json_integer((json_int_t)b->install_feeder->n_buses));
        json_object_set_new(k, "lines", json_integer((json_int_t)b->install_feeder->n_lines));
        break;
    default:
        break;
    }
    json_object_set_new(j, ledger_tx_kind_name(b->kind_case) ? ledger_tx_kind_name(b->kind_case) : "unknown", k);
    return j;
}
