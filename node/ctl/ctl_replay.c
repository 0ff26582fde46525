/* ctl_replay.c: `temctl replay`, the auditor's check of a whole chain from its genesis: every
 * block's links and header roots, every tx's encoding, signature and nonce, every commit
 * certificate against the genesis validators, and re-execution through the same contract code
 * the nodes run, which must reproduce each stored state root. Prints the first bad height and
 * why (exit 1), or the verified height and state root. */
#include "contracts/contracts.h"
#include "node/ctl/http.h"

#include <sys/stat.h>
#include <unistd.h>

static const char REPLAY_USAGE[] =
    "usage: temctl replay DATA_DIR --genesis G.json\n"
    "       temctl replay --from URL --genesis G.json\n"
    "Verifies the chain held in a node's data dir (read-only) or served by a node's API:\n"
    "hash links, tx signatures and nonces, every commit certificate against the genesis\n"
    "validators, and re-execution reproducing each state root and (from a data dir) every\n"
    "stored receipt byte for byte. Prints one JSON line:\n"
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

/* Every tx of block h (its txids, from the block view): the receipt the data dir stored must be
 * byte for byte the one re-execution wrote into dst, at the same height and position. A node that
 * edited a receipt after the fact (a refusal turned into a fill, a fee changed) is caught here
 * even though the headers' receipts roots still agree. 0, or -1 with msg naming the tx. */
static int compare_receipts(ledger_store *src, ledger_store *dst, uint64_t h, const uint8_t (*txids)[32], size_t n,
                            char *msg, size_t ml) {
    int bad = 0;
    for (size_t i = 0; i < n && !bad; i++) {
        const uint8_t *txid = txids[i];
        uint8_t *ra = NULL, *rb = NULL;
        size_t la = 0, lb = 0;
        uint64_t ha = 0, hb = 0;
        uint32_t pa = 0, pb = 0;
        int a = ledger_store_receipt(src, txid, &ha, &pa, &ra, &la);
        int c = ledger_store_receipt(dst, txid, &hb, &pb, &rb, &lb);
        char hex[65];
        tem_hex(hex, txid, 32);
        if (a != LEDGER_OK) bad = snprintf(msg, ml, "tx %zu (%s): no stored receipt (%s)", i, hex, ledger_strerror(a));
        else if (c != LEDGER_OK) bad = snprintf(msg, ml, "tx %zu (%s): re-execution wrote no receipt", i, hex);
        else if (ha != h || pa != pb || la != lb || memcmp(ra, rb, la) != 0)
            bad = snprintf(msg, ml, "tx %zu (%s): stored receipt differs from re-execution", i, hex);
        tem_free(ra);
        tem_free(rb);
    }
    return bad ? -1 : 0;
}

#define REPLAY_AHEAD 8
typedef struct {
    uint8_t *blk, *cert;
    size_t bl, cl;
    ledger_block_view v; /* valid when rc == LEDGER_OK; submitted to the verifier */
    int rc;
} ahead;

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
    ledger_verifier *vf = NULL;
    ahead win[REPLAY_AHEAD];
    unsigned whead = 0, wn = 0;
    bool fetch_end = false;
    int fetch_rc = 0;
    uint64_t fetch_h = 0;
    char fetch_msg[256] = "";
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
        /* Opening a store creates one where none exists: a mistyped path must be an error,
         * not an empty chain that "verifies". */
        char mdb[1024];
        struct stat st;
        snprintf(mdb, sizeof mdb, "%s/data.mdb", o.pos[0]);
        if (stat(mdb, &st) != 0 || !S_ISREG(st.st_mode)) {
            char m[300];
            snprintf(m, sizeof m, "no ledger in %s (no data.mdb)", o.pos[0]);
            status = finish(false, 0, m, NULL);
            goto out;
        }
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
    /* The re-execution store is thrown away at the end: its commits need not wait for the disk. */
    if (rc == LEDGER_OK) rc = ledger_store_scratch(dst);
    if (rc != LEDGER_OK) {
        status = finish(false, 0, ledger_strerror(rc), NULL);
        goto out;
    }
    /* Blocks are read up to REPLAY_AHEAD ahead and their signatures checked by helper
     * threads while this thread applies the earlier ones: replay is bound by the signatures. */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (ledger_verifier_new(cores > 1 ? (unsigned)cores - 1 : 1, &vf) != LEDGER_OK) goto out;
    for (h = 1;; h++) {
        char msg[256];
        while (!fetch_end && wn < REPLAY_AHEAD) {
            ahead *a = &win[(whead + wn) % REPLAY_AHEAD];
            memset(a, 0, sizeof *a);
            int f = fetch(&s, h + wn, &a->blk, &a->bl, &a->cert, &a->cl, fetch_msg, sizeof fetch_msg);
            if (f <= 0) {
                fetch_end = true;
                fetch_rc = f;
                fetch_h = h + wn;
                break;
            }
            a->rc = ledger_block_view_build(&g, a->blk, a->bl, NULL, NULL, &a->v);
            if (a->rc == LEDGER_OK && ledger_verifier_submit(vf, &a->v) != LEDGER_OK) a->rc = LEDGER_ENOMEM;
            wn++;
        }
        if (wn == 0) {
            if (fetch_rc < 0) {
                status = finish(false, fetch_h, fetch_msg, NULL);
                goto out;
            }
            break;
        }
        ahead *a = &win[whead];
        whead = (whead + 1) % REPLAY_AHEAD;
        wn--;
        /* apply checks the links, the header's roots against our re-executed state, every tx
         * signature (those the helpers did not mark) and nonce, and the certificate against the
         * genesis validators */
        ledger_apply_info info;
        rc = a->rc;
        int cr = 0;
        if (rc == LEDGER_OK) {
            ledger_verifier_wait(vf, &a->v);
            rc = ledger_store_apply_view(dst, &a->v, a->cert, a->cl, &ex, 0, &info);
            if (rc == LEDGER_OK && s.src)
                cr = compare_receipts(s.src, dst, h, (const uint8_t(*)[32])a->v.txids, a->v.n, msg, sizeof msg);
            ledger_block_view_free(&a->v);
        }
        tem_free(a->cert);
        tem_free(a->blk);
        if (rc != LEDGER_OK) {
            snprintf(msg, sizeof msg, "%s (%s)", ledger_strerror(rc), ledger_errname(rc));
            status = finish(false, h, msg, NULL);
            goto out;
        }
        if (cr != 0) {
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
    /* blocks read ahead: their checks may still be running */
    for (; wn > 0; wn--, whead = (whead + 1) % REPLAY_AHEAD) {
        ahead *a = &win[whead];
        if (a->rc == LEDGER_OK) {
            ledger_verifier_wait(vf, &a->v);
            ledger_block_view_free(&a->v);
        }
        tem_free(a->blk);
        tem_free(a->cert);
    }
    ledger_verifier_free(vf);
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
