/* ctl_replay.c: `temctl replay`, the auditor's check of a whole chain from its genesis: every
 * block's links and header roots, every tx's encoding, signature and nonce, every commit
 * certificate against the genesis validators, and re-execution through the same contract code
 * the nodes run, which must reproduce each stored state root. Prints the first bad height and
 * why (exit 1), or the verified height and state root. */
#include "contracts/contracts.h"
#include "node/ctl/http.h"

#include <unistd.h>

static const char REPLAY_USAGE[] =
    "usage: temctl replay DATA_DIR --genesis G.json\n"
    "       temctl replay --from URL --genesis G.json\n"
    "Verifies the chain held in a node's data dir (read-only) or served by a node's API:\n"
    "hash links, tx signatures and nonces, every commit certificate against the genesis\n"
    "validators, and re-execution reproducing each state root. Prints one JSON line:\n"
    "{\"ok\":true,\"height\":H,\"state_root\":\"..\"} or {\"ok\":false,\"height\":H,\"error\":\"..\"}.\n"
    "Exit status: 0 verified, 1 a bad block (or unreadable source), 2 usage.\n";

typedef struct {
    /* data dir source */
    ledger_store *src;
    /* API source */
    ctl_http_conn *http;
} source;

/* Next block h with its certificate; 1 = found, 0 = past the tip, -1 = error (msg set). */
static int fetch(source *s, uint64_t h, uint8_t **blk, size_t *bl, uint8_t **cert, size_t *cl, char *msg, size_t ml) {
    if (s->src) {
        int rc = ledger_store_block(s->src, h, blk, bl);
        if (rc == LEDGER_ENOTFOUND) return 0;
        if (rc != LEDGER_OK) return snprintf(msg, ml, "cannot read block: %s", ledger_strerror(rc)), -1;
        rc = ledger_store_cert(s->src, h, cert, cl);
        if (rc != LEDGER_OK) {
            tem_free(*blk);
            return snprintf(msg, ml, "no commit certificate stored"), -1;
        }
        return 1;
    }
    char path[64];
    snprintf(path, sizeof path, "/v1/blocks/%llu", (unsigned long long)h);
    int status;
    json_t *j = ctl_api_get(s->http, path, &status);
    if (status == 404) {
        json_decref(j);
        return 0;
    }
    const char *bh = j ? json_string_value(json_object_get(j, "block_hex")) : NULL;
    const char *ch = j ? json_string_value(json_object_get(j, "cert_hex")) : NULL;
    if (!bh || !ch || tem_unhex_alloc(bh, blk, bl) != 0) {
        json_decref(j);
        return snprintf(msg, ml, "node answered %d without block_hex/cert_hex", status), -1;
    }
    if (tem_unhex_alloc(ch, cert, cl) != 0) {
        tem_free(*blk);
        json_decref(j);
        return snprintf(msg, ml, "bad cert_hex"), -1;
    }
    json_decref(j);
    return 1;
}

static int finish(bool ok, uint64_t h, const char *err, const uint8_t root[32]) {
    json_t *j = json_object();
    json_object_set_new(j, "ok", json_boolean(ok));
    json_object_set_new(j, "height", json_integer((json_int_t)h));
    if (ok) json_object_set_new(j, "state_root", ctl_json_hex(root, 32));
    else json_object_set_new(j, "error", json_string(err));
    ctl_print_json(j);
    if (!ok) fprintf(stderr, "replay: height %llu: %s\n", (unsigned long long)h, err);
    return ok ? CTL_OK : CTL_INVALID;
}

int ctl_replay_main(int argc, char **argv) {
    ctl_opts o;
    if (ctl_opts_parse(&o, argc, argv, 1, NULL) != 0) return CTL_USAGE;
    const char *gpath = ctl_opt(&o, "genesis"), *from = ctl_opt(&o, "from");
    if (o.help || !gpath || (o.npos == 1) == (from != NULL) || o.npos > 1) {
        fputs(REPLAY_USAGE, o.help ? stdout : stderr);
        return o.help ? CTL_OK : CTL_USAGE;
    }
    ledger_genesis g;
    char err[256];
    if (ledger_genesis_load(gpath, &g, err, sizeof err) != LEDGER_OK) {
        fprintf(stderr, "replay: genesis: %s\n", err);
        return CTL_INVALID;
    }
    int status = CTL_INVALID;
    source s = {0};
    ctl_http_conn http;
    bool http_ok = false;
    contracts_market *mkt = NULL;
    ledger_store *dst = NULL;
    char tmp[] = "/tmp/tem-replay-XXXXXX";
    bool tmp_ok = mkdtemp(tmp) != NULL;
    uint64_t h = 0;
    uint8_t root[32] = {0};
    if (!tmp_ok) {
        fprintf(stderr, "replay: cannot create a temporary directory\n");
        goto out;
    }
    if (from) {
        if (ctl_http_init(&http, from, 10000) != 0) {
            fprintf(stderr, "replay: bad --from address\n");
            status = CTL_USAGE;
            goto out;
        }
        http_ok = true;
        s.http = &http;
    } else {
        int rc = ledger_store_open(o.pos[0], &g, NULL, NULL, &s.src);
        if (rc != LEDGER_OK) {
            status = finish(false, 0, rc == LEDGER_EGENESIS ? "data dir belongs to another genesis" : ledger_strerror(rc), NULL);
            goto out;
        }
    }
    if (contracts_market_new(&mkt) != LEDGER_OK) goto out;
    ledger_executor ex;
    contracts_executor(mkt, &ex);
    int rc = ledger_store_open(tmp, &g, contracts_genesis_init, NULL, &dst);
    if (rc != LEDGER_OK) {
        status = finish(false, 0, ledger_strerror(rc), NULL);
        goto out;
    }
    for (h = 1;; h++) {
        uint8_t *blk, *cert;
        size_t bl, cl;
        char msg[256];
        int f = fetch(&s, h, &blk, &bl, &cert, &cl, msg, sizeof msg);
        if (f == 0) break;
        if (f < 0) {
            status = finish(false, h, msg, NULL);
            goto out;
        }
        /* apply checks the links, the header's roots against our re-executed state, every tx
         * signature and nonce, and the certificate against the genesis validators */
        ledger_apply_info info;
        rc = ledger_store_apply(dst, blk, bl, cert, cl, &ex, 0, &info);
        tem_free(blk);
        tem_free(cert);
        if (rc != LEDGER_OK) {
            snprintf(msg, sizeof msg, "%s (%s)", ledger_strerror(rc), ledger_errname(rc));
            status = finish(false, h, msg, NULL);
            goto out;
        }
        if (s.src) {
            uint8_t sr[32], rr[32];
            if (ledger_store_block_roots(s.src, h, sr, rr) != LEDGER_OK || memcmp(sr, info.state_root, 32) != 0 ||
                memcmp(rr, info.receipts_root, 32) != 0) {
                status = finish(false, h, "re-execution does not reproduce the stored state or receipts root", NULL);
                goto out;
            }
        }
        memcpy(root, info.state_root, 32);
    }
    h = ledger_store_height(dst);
    if (s.src) {
        uint8_t sr[32], rr[32], mine[32], mr[32];
        ledger_store_roots(s.src, sr, rr);
        ledger_store_roots(dst, mine, mr);
        if (memcmp(sr, mine, 32) != 0) {
            status = finish(false, h, "final state root differs from the data dir's", NULL);
            goto out;
        }
    }
    ledger_store_roots(dst, root, (uint8_t[32]){0});
    status = finish(true, h, NULL, root);
out:
    ledger_store_close(dst);
    ledger_store_close(s.src);
    contracts_market_free(mkt);
    if (http_ok) ctl_http_close(&http);
    if (tmp_ok) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
        if (system(cmd) != 0) fprintf(stderr, "replay: could not remove %s\n", tmp);
    }
    ledger_genesis_free(&g);
    return status;
}
