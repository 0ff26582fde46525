/* ctl_node.c: temctl verbs against a running node (--node URL, default 127.0.0.1:8080):
 * submit (sign and POST a tx, optionally wait for its receipt), status, block, tx, account,
 * book and trades. Each prints the node's JSON answer on one line. */
#include "node/ctl/http.h"

#include <sodium.h>
#include <unistd.h>

static const char NODE_USAGE[] =
    "usage: temctl submit --node URL --key KEYFILE (--chain-id ID | --genesis G) [--nonce N] [--wait]\n"
    "                     KIND [KIND OPTIONS]      (kinds as in `temctl tx --help`)\n"
    "       temctl submit --node URL --file TX.bin [--wait]\n"
    "       temctl status  --node URL\n"
    "       temctl block   --node URL HEIGHT\n"
    "       temctl tx      --node URL TXID          (the receipt; `temctl tx sign|inspect` work offline)\n"
    "       temctl account --node URL PUBKEY\n"
    "       temctl book    --node URL SLOT\n"
    "       temctl trades  --node URL SLOT\n"
    "Without --nonce, submit asks the node for the signer's next nonce. --wait polls the tx\n"
    "until it is committed or refused (at most --timeout-ms, default 30000) and exits 1 if it\n"
    "was refused. Exit status: 0 ok, 1 refused or not found or node unreachable, 2 usage.\n";

static int get_print(ctl_http_conn *c, const char *path) {
    ctl_http_resp r;
    if (ctl_http_request(c, "GET", path, NULL, NULL, 0, &r) != 0) {
        fprintf(stderr, "temctl: %s\n", c->err);
        return CTL_INVALID;
    }
    fwrite(r.body, 1, r.len, stdout);
    if (r.len == 0 || r.body[r.len - 1] != '\n') putchar('\n');
    int st = r.status == 200 ? CTL_OK : CTL_INVALID;
    ctl_http_resp_free(&r);
    return st;
}

static int wait_receipt(ctl_http_conn *c, const char *txhex, int timeout_ms) {
    char path[128];
    snprintf(path, sizeof path, "/v1/tx/%s", txhex);
    int64_t until = ctl_now_ms() + timeout_ms;
    while (ctl_now_ms() < until) {
        int status;
        json_t *j = ctl_api_get(c, path, &status);
        const char *s = j ? json_string_value(json_object_get(j, "status")) : NULL;
        if (s && (!strcmp(s, "committed") || !strcmp(s, "refused"))) {
            int st = !strcmp(s, "committed") ? CTL_OK : CTL_INVALID; /* s lives in j */
            ctl_print_json(j);
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
            fputs(NODE_USAGE, stderr);
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
    return wait_receipt(c, hex, (int)to);
}

int ctl_node_main(int argc, char **argv) {
    ctl_opts o;
    if (ctl_opts_parse(&o, argc, argv, 1, "wait") != 0) return CTL_USAGE;
    if (o.help) {
        fputs(NODE_USAGE, stdout);
        return CTL_OK;
    }
    const char *verb = argv[0];
    ctl_http_conn c;
    if (ctl_http_init(&c, ctl_opt(&o, "node") ? ctl_opt(&o, "node") : "127.0.0.1:8080", 10000) != 0) {
        fprintf(stderr, "temctl: bad --node address\n");
        return CTL_USAGE;
    }
    char path[256];
    int st = CTL_USAGE;
    if (!strcmp(verb, "submit")) st = do_submit(&o, &c);
    else if (!strcmp(verb, "status") && o.npos == 0) st = get_print(&c, "/v1/status");
    else if (o.npos == 1) {
        const char *a = o.pos[0];
        if (!strcmp(verb, "block")) snprintf(path, sizeof path, "/v1/blocks/%s", a);
        else if (!strcmp(verb, "tx")) snprintf(path, sizeof path, "/v1/tx/%s", a);
        else if (!strcmp(verb, "account")) snprintf(path, sizeof path, "/v1/accounts/%s", a);
        else if (!strcmp(verb, "book")) snprintf(path, sizeof path, "/v1/book/%s", a);
        else if (!strcmp(verb, "trades")) snprintf(path, sizeof path, "/v1/trades?slot=%s", a);
        else path[0] = 0;
        if (path[0]) st = get_print(&c, path);
    }
    if (st == CTL_USAGE) fputs(NODE_USAGE, stderr);
    ctl_http_close(&c);
    return st;
}
