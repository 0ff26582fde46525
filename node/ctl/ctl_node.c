/* ctl_node.c: temctl verbs against a running node (--node URL, default $TEMCTL_NODE or
 * CTL_NODE_DEFAULT): submit (sign and POST a tx, optionally wait for its receipt), status,
 * block, tx, account, book and trades. Each prints a readable table, or with --json the node's
 * JSON answer on one line. */
#include "node/ctl/http.h"

#include <sodium.h>
#include <unistd.h>

/* One usage text per verb, so `temctl block` without a height says what block wants. */
static const struct {
    const char *verb, *usage;
} USAGE[] = {
    {"submit", "usage: temctl submit [--node URL] --key KEYFILE [--chain-id ID | --genesis G] [--nonce N] [--wait]\n"
               "                     [--timeout-ms MS] [--json] KIND [KIND OPTIONS]   (kinds: `temctl tx --help`)\n"
               "       temctl submit [--node URL] --file TX.bin [--wait] [--json]\n"
               "Without --nonce, submit asks the node for the signer's next nonce. --wait polls the tx\n"
               "until it is committed or refused (at most --timeout-ms, default 30000) and exits 1 if it\n"
               "was refused.\n"},
    {"status", "usage: temctl status [--node URL] [--json]\n"},
    {"block", "usage: temctl block [--node URL] [--json] HEIGHT\n"},
    {"tx", "usage: temctl tx [--node URL] [--json] TXID   (the receipt; `temctl tx sign|inspect` work offline)\n"},
    {"account", "usage: temctl account [--node URL] [--json] PUBKEY\n"
                "       temctl account PUBKEY --prove --genesis FILE [--proof FILE | --node URL] [--save FILE]\n"
                "                     (checks the account's proof: temctl account --prove --help)\n"},
    {"book", "usage: temctl book [--node URL] [--json] SLOT\n"},
    {"trades", "usage: temctl trades [--node URL] [--json] SLOT\n"},
};
static const char USAGE_TAIL[] =
    "--node defaults to $TEMCTL_NODE, else " CTL_NODE_DEFAULT " (the first testnet validator);\n"
    "http:// and https:// URLs are accepted. Output is a readable table; --json prints the node's\n"
    "JSON answer on one line. Exit status: 0 ok, 1 refused, unknown or node unreachable, 2 usage.\n";

static void usage(FILE *f, const char *verb) {
    for (size_t i = 0; i < sizeof USAGE / sizeof USAGE[0]; i++)
        if (!verb || !strcmp(verb, USAGE[i].verb)) fputs(USAGE[i].usage, f);
    fputs(USAGE_TAIL, f);
}

/* ------------------------------------------------------------------ readable output
 * Scalars print as "key  value" lines with dotted paths for nested objects; an array of objects
 * prints as a table whose columns are its rows' scalar fields, in first-seen order. */
#define TABLE_COLS_MAX 12
#define TABLE_CELL_MAX 24

static void scalar_str(const json_t *v, char *out, size_t n) {
    if (json_is_string(v)) snprintf(out, n, "%s", json_string_value(v));
    else if (json_is_integer(v)) snprintf(out, n, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else if (json_is_real(v)) snprintf(out, n, "%g", json_real_value(v));
    else if (json_is_true(v)) snprintf(out, n, "true");
    else if (json_is_false(v)) snprintf(out, n, "false");
    else if (json_is_null(v)) snprintf(out, n, "-");
    else if (json_is_array(v)) snprintf(out, n, "[%zu]", json_array_size(v));
    else snprintf(out, n, "{...}");
}

static void print_table(const char *name, const json_t *arr) {
    const char *cols[TABLE_COLS_MAX];
    size_t nc = 0, i;
    json_t *row;
    json_array_foreach(arr, i, row) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)row, k, v) {
            if (json_is_object(v) || nc == TABLE_COLS_MAX) continue;
            size_t c = 0;
            while (c < nc && strcmp(cols[c], k)) c++;
            if (c == nc) cols[nc++] = k;
        }
    }
    printf("%s (%zu)\n", name, json_array_size(arr));
    if (!nc) return;
    for (size_t c = 0; c < nc; c++) printf("  %-*.*s", TABLE_CELL_MAX - 4, TABLE_CELL_MAX - 4, cols[c]);
    putchar('\n');
    json_array_foreach(arr, i, row) {
        for (size_t c = 0; c < nc; c++) {
            char cell[80];
            const json_t *v = json_object_get(row, cols[c]);
            if (v) scalar_str(v, cell, sizeof cell);
            else snprintf(cell, sizeof cell, "-");
            /* Long hex keys and hashes are shortened: the --json output has them whole. */
            if (strlen(cell) > TABLE_CELL_MAX - 4) snprintf(cell + TABLE_CELL_MAX - 7, 4, "...");
            printf("  %-*s", TABLE_CELL_MAX - 4, cell);
        }
        putchar('\n');
    }
}

static void print_readable(const json_t *j, const char *prefix) {
    if (!json_is_object(j)) {
        char v[512];
        scalar_str(j, v, sizeof v);
        printf("%s\n", v);
        return;
    }
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)j, k, v) {
        char path[128];
        snprintf(path, sizeof path, "%s%s%s", prefix, prefix[0] ? "." : "", k);
        if (json_is_object(v)) print_readable(v, path);
        else if (json_is_array(v) && json_array_size(v) && json_is_object(json_array_get(v, 0))) print_table(path, v);
        else {
            char val[512];
            if (json_is_array(v)) {
                /* short arrays of scalars on one line */
                size_t i, off = 0;
                json_t *e;
                val[0] = 0;
                json_array_foreach(v, i, e) {
                    char one[96];
                    scalar_str(e, one, sizeof one);
                    int w = snprintf(val + off, sizeof val - off, "%s%s", i ? ", " : "", one);
                    if (w < 0 || (size_t)w >= sizeof val - off) break;
                    off += (size_t)w;
                }
            } else scalar_str(v, val, sizeof val);
            printf("%-28s %s\n", path, val);
        }
    }
}

/* Prints j (consumed) as one JSON line or as the readable form. */
static void emit(json_t *j, bool as_json) {
    if (as_json) ctl_print_json(j);
    else {
        print_readable(j, "");
        json_decref(j);
    }
}

static int get_print(ctl_http_conn *c, const char *path, bool as_json) {
    ctl_http_resp r;
    if (ctl_http_request(c, "GET", path, NULL, NULL, 0, &r) != 0) {
        fprintf(stderr, "temctl: %s\n", c->err);
        return CTL_INVALID;
    }
    json_error_t je;
    json_t *j = json_loadb(r.body, r.len, 0, &je);
    int st = r.status == 200 ? CTL_OK : CTL_INVALID;
    /* The node answers an unknown tx with 200 and status "unknown": not found is exit 1. */
    const char *s = j ? json_string_value(json_object_get(j, "status")) : NULL;
    if (st == CTL_OK && s && !strcmp(s, "unknown")) st = CTL_INVALID;
    if (!j || as_json) {
        fwrite(r.body, 1, r.len, stdout);
        if (r.len == 0 || r.body[r.len - 1] != '\n') putchar('\n');
        json_decref(j);
    } else emit(j, false);
    if (st != CTL_OK) fprintf(stderr, "temctl: %s: HTTP %d%s\n", path, r.status, s && !strcmp(s, "unknown") ? " (unknown)" : "");
    ctl_http_resp_free(&r);
    return st;
}

static int wait_receipt(ctl_http_conn *c, const char *txhex, int timeout_ms, bool as_json) {
    char path[128];
    snprintf(path, sizeof path, "/v1/tx/%s", txhex);
    int64_t until = ctl_now_ms() + timeout_ms;
    while (ctl_now_ms() < until) {
        int status;
        json_t *j = ctl_api_get(c, path, &status);
        const char *s = j ? json_string_value(json_object_get(j, "status")) : NULL;
        if (s && (!strcmp(s, "committed") || !strcmp(s, "refused"))) {
            int st = !strcmp(s, "committed") ? CTL_OK : CTL_INVALID; /* s lives in j */
            emit(j, as_json);
            return st;
        }
        json_decref(j);
        usleep(100 * 1000);
    }
    fprintf(stderr, "temctl: tx %s not committed within %d ms\n", txhex, timeout_ms);
    return CTL_INVALID;
}

static int do_submit(ctl_opts *o, ctl_http_conn *c) {
    uint8_t *buf = NULL, txid[32];
    size_t len;
    int st;
    if (ctl_opt(o, "file")) {
        if (ctl_read_file(ctl_opt(o, "file"), 64u << 20, &buf, &len) != 0) return CTL_INVALID;
        ledger_tx_limits lim = {.chain_id = NULL, .max_tx_bytes = 64u << 20, .max_admin_tx_bytes = 64u << 20};
        ledger_tx tx;
        if (ledger_tx_decode(buf, len, &lim, &tx) != LEDGER_OK) {
            fprintf(stderr, "temctl submit: %s is not a SignedTx\n", ctl_opt(o, "file"));
            tem_free(buf);
            return CTL_INVALID;
        }
        memcpy(txid, tx.txid, 32);
        ledger_tx_free(&tx);
    } else {
        if (o->npos != 1 || !ctl_opt(o, "key")) {
            usage(stderr, "submit");
            return CTL_USAGE;
        }
        char chain[LEDGER_CHAIN_ID_MAX + 1];
        if (!ctl_chain_id_of(o, chain, sizeof chain, false)) return CTL_USAGE;
        if (!chain[0]) {
            ctl_api_status s;
            if (ctl_api_status_get(c, &s) != 0) {
                fprintf(stderr, "temctl submit: cannot reach the node: %s\n", c->err);
                return CTL_INVALID;
            }
            snprintf(chain, sizeof chain, "%s", s.chain_id);
        }
        ledger_keyfile k;
        if (ledger_keyfile_read(ctl_opt(o, "key"), &k) != LEDGER_OK || k.is_validator) {
            fprintf(stderr, "temctl submit: %s is not a meter key file\n", ctl_opt(o, "key"));
            return CTL_INVALID;
        }
        uint64_t nonce;
        if (ctl_opt(o, "nonce")) {
            if (!ctl_parse_u64(ctl_opt(o, "nonce"), &nonce)) {
                sodium_memzero(&k, sizeof k);
                return CTL_USAGE;
            }
        } else {
            ctl_api_account a;
            nonce = ctl_api_account_get(c, k.secp_pub, &a) == 0 ? a.next_nonce : 0;
        }
        st = ctl_tx_build(o, o->pos[0], &k, chain, nonce, &buf, &len, txid);
        sodium_memzero(&k, sizeof k);
        if (st != CTL_OK) return st;
    }
    char err[128];
    int http = ctl_api_submit(c, buf, len, err, sizeof err);
    tem_free(buf);
    char hex[65];
    tem_hex(hex, txid, 32);
    if (http != 202) {
        fprintf(stderr, "temctl submit: refused (%d): %s\n", http, err);
        printf("{\"txid\":\"%s\",\"status\":\"rejected\",\"http\":%d,\"code\":\"%s\"}\n", hex, http, err);
        return CTL_INVALID;
    }
    if (!ctl_flag(o, "wait")) {
        printf("%s\n", hex);
        return CTL_OK;
    }
    uint64_t to = 30000;
    if (ctl_opt(o, "timeout-ms") && !ctl_parse_u64(ctl_opt(o, "timeout-ms"), &to)) return CTL_USAGE;
    return wait_receipt(c, hex, (int)to, ctl_flag(o, "json"));
}

int ctl_node_main(int argc, char **argv) {
    ctl_opts o;
    const char *verb = argv[0];
    if (ctl_opts_parse(&o, argc, argv, 1, "wait json") != 0) {
        usage(stderr, verb);
        return CTL_USAGE;
    }
    if (o.help) {
        usage(stdout, verb);
        return CTL_OK;
    }
    const char *node = ctl_opt(&o, "node");
    if (!node) node = getenv("TEMCTL_NODE");
    if (!node || !node[0]) node = CTL_NODE_DEFAULT;
    ctl_http_conn c;
    if (ctl_http_init(&c, node, 10000) != 0) {
        fprintf(stderr, "temctl: bad --node address %s: %s\n", node, c.err);
        return CTL_USAGE;
    }
    bool as_json = ctl_flag(&o, "json");
    char path[256];
    int st = CTL_USAGE;
    if (!strcmp(verb, "submit")) st = do_submit(&o, &c);
    else if (!strcmp(verb, "status") && o.npos == 0) st = get_print(&c, "/v1/status", as_json);
    else if (o.npos == 1) {
        const char *a = o.pos[0];
        if (!strcmp(verb, "block")) snprintf(path, sizeof path, "/v1/blocks/%s", a);
        else if (!strcmp(verb, "tx")) snprintf(path, sizeof path, "/v1/tx/%s", a);
        else if (!strcmp(verb, "account")) snprintf(path, sizeof path, "/v1/accounts/%s", a);
        else if (!strcmp(verb, "book")) snprintf(path, sizeof path, "/v1/book/%s", a);
        else if (!strcmp(verb, "trades")) snprintf(path, sizeof path, "/v1/trades?slot=%s", a);
        else path[0] = 0;
        if (path[0]) st = get_print(&c, path, as_json);
    }
    if (st == CTL_USAGE) usage(stderr, verb);
    ctl_http_close(&c);
    return st;
}
