/* ctl_exec.c: `temctl exec`, the offline state-transition tool (as `evm t8n` is for Ethereum's
 * state): runs SignedTx files through the very store and contracts a node uses, in a temporary
 * LMDB store, and prints one JSON line per tx and the resulting height and state root
 * (docs/market.md, "temctl exec"). */
#include "contracts/contracts.h"
#include "node/ctl/ctl.h"

#include <ftw.h>
#include <unistd.h>

#define EXEC_TXS_MAX 10000000u

static const char exec_usage[] =
    "usage: temctl exec --genesis G.json [--block-size N] [--time-ms T] [--step-ms S]\n"
    "                   [--final-time-ms F] [--dump] TXFILE...\n"
    "  TXFILE: one serialised SignedTx, or a stream of SignedTxs each preceded by its length\n"
    "          as a 4-byte big-endian integer (a stream starts with a 0x00 byte); - = stdin.\n"
    "  Txs go into blocks of N (default: the genesis max_block_txs) in file order. Block k\n"
    "  (k = 0, 1, ...) has time T + k*S (defaults: genesis time + 1 ms, S = 1 ms); with\n"
    "  --final-time-ms one empty block at F follows, to run gate closures and settlements.\n"
    "  Prints one JSON line per tx, then {\"height\":..,\"state_root\":..} (with --dump, every\n"
    "  account, every settlement line and the supply too). A tx the ledger itself rejects\n"
    "  (encoding, chain, signature, nonce) is reported with status \"invalid\" and left out of\n"
    "  its block.\n"
    "  Exit: 0 every tx was valid (applied or refused by the market), 1 invalid input, 2 usage.\n";

typedef struct {
    uint8_t **buf;
    size_t *len;
    size_t n, cap;
} tx_list;

static int list_push(tx_list *l, const uint8_t *p, size_t n) {
    if (l->n >= EXEC_TXS_MAX) {
        fprintf(stderr, "exec: more than %u txs\n", EXEC_TXS_MAX);
        return -1;
    }
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        uint8_t **nb = tem_realloc(l->buf, cap * sizeof *nb);
        if (!nb) return -1;
        l->buf = nb;
        size_t *nl = tem_realloc(l->len, cap * sizeof *nl);
        if (!nl) return -1;
        l->len = nl;
        l->cap = cap;
    }
    uint8_t *c = tem_malloc(n ? n : 1);
    if (!c) return -1;
    memcpy(c, p, n);
    l->buf[l->n] = c;
    l->len[l->n++] = n;
    return 0;
}

static int read_txfile(const char *path, tx_list *l) {
    uint8_t *data;
    size_t len;
    if (ctl_read_file(path, (size_t)1 << 31, &data, &len)) return -1;
    int rc = 0;
    if (len > 0 && data[0] == 0x00) {
        size_t off = 0;
        while (off < len) {
            if (len - off < 4) {
                fprintf(stderr, "exec: %s: truncated length prefix at byte %zu\n", path, off);
                rc = -1;
                break;
            }
            size_t n = tem_get_u32be(data + off);
            off += 4;
            if (n > len - off) {
                fprintf(stderr, "exec: %s: tx of %zu bytes runs past the end at byte %zu\n", path, n, off);
                rc = -1;
                break;
            }
            if ((rc = list_push(l, data + off, n))) break;
            off += n;
        }
    } else {
        rc = list_push(l, data, len);
    }
    tem_free(data);
    return rc;
}

/* Txs per signer already placed in the block being built, so nonces can be checked in O(1). */
typedef struct {
    uint8_t key[LEDGER_SECP_PUB_BYTES];
    uint32_t count;
    bool used;
} pending_nonce;

static pending_nonce *pending_slot(pending_nonce *t, size_t cap, const uint8_t *key) {
    size_t i = (size_t)tem_get_u64le(key + 1) & (cap - 1);
    while (t[i].used && memcmp(t[i].key, key, LEDGER_SECP_PUB_BYTES) != 0) i = (i + 1) & (cap - 1);
    return &t[i];
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static json_t *receipt_json(const Tem__V1__Receipt *r) {
    json_t *j = json_object(), *fills = json_array();
    if (!j || !fills) {
        json_decref(j);
        json_decref(fills);
        return NULL;
    }
    for (size_t i = 0; i < r->n_fills; i++) {
        const Tem__V1__Fill *f = r->fills[i];
        json_t *fj = json_object();
        if (!fj) continue;
        json_object_set_new(fj, "counter_txid", ctl_json_hex(f->counter_txid.data, f->counter_txid.len));
        json_object_set_new(fj, "quantity_wh", json_integer((json_int_t)f->quantity_wh));
        json_object_set_new(fj, "price", json_integer((json_int_t)f->price));
        json_object_set_new(fj, "network_fee", json_integer((json_int_t)f->network_fee));
        json_object_set_new(fj, "loss_fee", json_integer((json_int_t)f->loss_fee));
        json_object_set_new(fj, "curtailed_wh", json_integer((json_int_t)f->curtailed_wh));
        json_object_set_new(fj, "binding", json_string(f->binding ? f->binding : ""));
        json_array_append_new(fills, fj);
    }
    json_object_set_new(j, "fills", fills);
    json_object_set_new(j, "escrow_held", json_integer((json_int_t)r->escrow_held));
    json_object_set_new(j, "escrow_released", json_integer((json_int_t)r->escrow_released));
    json_object_set_new(j, "tokens_escrowed", json_integer((json_int_t)r->tokens_escrowed));
    json_object_set_new(j, "tokens_released", json_integer((json_int_t)r->tokens_released));
    json_object_set_new(j, "minted_wh", json_integer((json_int_t)r->minted_wh));
    json_object_set_new(j, "fee", json_integer((json_int_t)r->fee));
    json_object_set_new(j, "remaining_wh", json_integer((json_int_t)r->remaining_wh));
    return j;
}

static const char *role_name(int32_t r) {
    static const char *const names[] = {"unspecified", "prosumer", "consumer", "utility", "dso",
                                        "aggregator",  "meter",    "meter_data"};
    return r >= 0 && r <= 7 ? names[r] : "unknown";
}

static int dump_line(void *ctx, const contracts_settlement *l) {
    json_t *arr = ctx, *j = json_object();
    if (!j) return -1;
    json_object_set_new(j, "slot", json_integer((json_int_t)l->slot));
    json_object_set_new(j, "pubkey", ctl_json_hex(l->pubkey, LEDGER_SECP_PUB_BYTES));
    const struct {
        const char *name;
        int64_t v;
    } f[] = {{"export_wh", l->export_wh}, {"import_wh", l->import_wh}, {"sold_wh", l->sold_wh},
             {"bought_wh", l->bought_wh}, {"delivered_wh", l->delivered_wh},
             {"received_wh", l->received_wh}, {"shortfall_wh", l->shortfall_wh},
             {"burnt_wh", l->burnt_wh}, {"lack_wh", l->lack_wh}, {"surplus_wh", l->surplus_wh},
             {"trade_net_uunit", l->trade_net_uunit}, {"penalty_net_uunit", l->penalty_net_uunit},
             {"utility_net_uunit", l->utility_net_uunit}, {"unpaid_uunit", l->unpaid_uunit},
             {"covered_wh", l->covered_wh}, {"cover_wh", l->cover_wh},
             {"withheld_wh", l->withheld_wh}, {"fees_uunit", l->fees_uunit},
             {"estimated", l->estimated}, {"total_uunit", l->total_uunit}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) json_object_set_new(j, f[i].name, json_integer(f[i].v));
    return json_array_append_new(arr, j) ? -1 : 0;
}

static int dump_one(void *ctx, const contracts_account *a) {
    json_t *arr = ctx, *j = json_object();
    if (!j) return -1;
    json_object_set_new(j, "pubkey", ctl_json_hex(a->pubkey, LEDGER_SECP_PUB_BYTES));
    json_object_set_new(j, "bus", json_integer(a->bus));
    json_object_set_new(j, "role", json_string(role_name(a->role)));
    json_object_set_new(j, "money_uunit", json_integer(a->money_uunit));
    json_object_set_new(j, "money_escrow_uunit", json_integer(a->money_escrow_uunit));
    json_object_set_new(j, "tokens_wh", json_integer(a->tokens_wh));
    json_object_set_new(j, "tokens_escrow_wh", json_integer(a->tokens_escrow_wh));
    json_object_set_new(j, "debt_uunit", json_integer(a->debt_uunit));
    return json_array_append_new(arr, j) ? -1 : 0;
}

/* One block of the txs [from, to) that passed the ledger's own checks. */
static int apply_block(ledger_store *s, const ledger_executor *ex, tx_list *l, const size_t *idx,
                       size_t n, uint64_t time_ms, const uint8_t proposer[32]) {
    const uint8_t **bufs = tem_malloc((n ? n : 1) * sizeof *bufs);
    size_t *lens = tem_malloc((n ? n : 1) * sizeof *lens);
    uint8_t *blk = NULL;
    size_t blen = 0;
    int rc = LEDGER_ENOMEM;
    if (bufs && lens) {
        for (size_t i = 0; i < n; i++) {
            bufs[i] = l->buf[idx[i]];
            lens[i] = l->len[idx[i]];
        }
        rc = ledger_block_build(s, (const uint8_t *const *)bufs, lens, n, time_ms, proposer, &blk, &blen);
        if (rc == LEDGER_OK) {
            ledger_apply_info info;
            /* Every tx in the block passed ledger_tx_verify just before (see ctl_exec_main). */
            rc = ledger_store_apply(s, blk, blen, NULL, 0, ex, LEDGER_APPLY_NO_CERT | LEDGER_APPLY_SIGS_OK, &info);
        }
    }
    if (rc) fprintf(stderr, "exec: block at %llu failed: %s\n", (unsigned long long)time_ms, ledger_strerror(rc));
    tem_free(blk);
    tem_free(bufs);
    tem_free(lens);
    return rc;
}

static json_t *invalid_json(const uint8_t *txid, int code, const char *file_hint) {
    json_t *j = json_object();
    if (!j) return NULL;
    if (txid) json_object_set_new(j, "txid", ctl_json_hex(txid, 32));
    else json_object_set_new(j, "txid", json_null());
    json_object_set_new(j, "status", json_string("invalid"));
    json_object_set_new(j, "code", json_integer(code));
    json_object_set_new(j, "reason", json_string(ledger_strerror(code)));
    if (file_hint) json_object_set_new(j, "input", json_string(file_hint));
    return j;
}

static void print_receipt(ledger_store *s, const ledger_tx *tx) {
    uint64_t height;
    uint32_t pos;
    uint8_t *buf;
    size_t len;
    Tem__V1__Receipt *r = NULL;
    if (ledger_store_receipt(s, tx->txid, &height, &pos, &buf, &len) == LEDGER_OK) {
        r = tem__v1__receipt__unpack(&ledger_pb_allocator, len, buf);
        tem_free(buf);
    }
    json_t *j = json_object(), *rj = r ? receipt_json(r) : NULL;
    if (!j || !rj) {
        fprintf(stderr, "exec: no receipt for a committed tx\n");
        json_decref(j);
        json_decref(rj);
        if (r) tem__v1__receipt__free_unpacked(r, &ledger_pb_allocator);
        return;
    }
    /* Readers see txid, kind and the outcome first, then the receipt's details. */
    json_object_set_new(j, "txid", ctl_json_hex(tx->txid, 32));
    json_object_set_new(j, "kind", json_string(ledger_tx_kind_name(tx->body->kind_case)));
    json_object_set_new(j, "status", json_string(r->code == 0 ? "applied" : "refused"));
    json_object_set_new(j, "code", json_integer(r->code));
    json_object_set_new(j, "reason", json_string(r->code ? contracts_strerror(r->code) : ""));
    const char *name = r->code ? contracts_errname(r->code) : NULL;
    if (name) json_object_set_new(j, "reason_code", json_string(name));
    json_object_set_new(j, "height", json_integer((json_int_t)height));
    json_object_update(j, rj);
    json_decref(rj);
    tem__v1__receipt__free_unpacked(r, &ledger_pb_allocator);
    ctl_print_json(j);
}

int ctl_exec_main(int argc, char **argv) {
    ctl_opts o;
    if (ctl_opts_parse(&o, argc, argv, 1, "dump")) return CTL_USAGE;
    if (o.help) {
        fputs(exec_usage, stdout);
        return CTL_OK;
    }
    const char *gpath = ctl_opt(&o, "genesis");
    if (!gpath || o.npos == 0) {
        fputs(exec_usage, stderr);
        return CTL_USAGE;
    }
    ledger_genesis g;
    char err[256];
    if (ledger_genesis_load(gpath, &g, err, sizeof err) != LEDGER_OK) {
        fprintf(stderr, "exec: %s: %s\n", gpath, err);
        return CTL_INVALID;
    }
    uint64_t block_size = g.max_block_txs, time_ms = g.genesis_time_ms + 1, step_ms = 1, final_ms = 0;
    const char *v;
    if (((v = ctl_opt(&o, "block-size")) && (!ctl_parse_u64(v, &block_size) || block_size == 0 ||
                                              block_size > g.max_block_txs)) ||
        ((v = ctl_opt(&o, "time-ms")) && (!ctl_parse_u64(v, &time_ms) || time_ms <= g.genesis_time_ms)) ||
        ((v = ctl_opt(&o, "step-ms")) && (!ctl_parse_u64(v, &step_ms) || step_ms == 0)) ||
        ((v = ctl_opt(&o, "final-time-ms")) && !ctl_parse_u64(v, &final_ms))) {
        fprintf(stderr, "exec: bad --block-size (1..%u), --time-ms (> genesis time), --step-ms (> 0) "
                        "or --final-time-ms\n", g.max_block_txs);
        ledger_genesis_free(&g);
        return CTL_USAGE;
    }
    if (g.n_validators == 0) {
        fprintf(stderr, "exec: the genesis has no validator to propose blocks\n");
        ledger_genesis_free(&g);
        return CTL_INVALID;
    }
    int status = CTL_OK;
    tx_list l = {0};
    for (int i = 0; i < o.npos; i++) {
        if (read_txfile(o.pos[i], &l)) {
            status = CTL_INVALID;
            goto out_list;
        }
    }

    char dir[] = "/tmp/temctl-exec-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("exec: mkdtemp");
        status = CTL_INVALID;
        goto out_list;
    }
    ledger_store *s = NULL;
    contracts_market *m = NULL;
    ledger_executor ex;
    int rc = ledger_store_open(dir, &g, contracts_genesis_init, NULL, &s);
    if (rc == LEDGER_OK) rc = contracts_market_new(&m);
    if (rc != LEDGER_OK) {
        fprintf(stderr, "exec: cannot open a store for this genesis: %s\n", ledger_strerror(rc));
        status = CTL_INVALID;
        goto out_store;
    }
    contracts_executor(m, &ex);
    ledger_tx_limits lim;
    ledger_tx_limits_from_genesis(&g, &lim);
    size_t *idx = tem_malloc((size_t)block_size * sizeof *idx);
    ledger_tx *txs = tem_calloc((size_t)block_size, sizeof *txs);
    json_t **bad = tem_calloc((size_t)block_size, sizeof *bad);
    size_t pcap = 16;
    while (pcap < 2 * block_size) pcap *= 2;
    pending_nonce *pend = tem_calloc(pcap, sizeof *pend);
    if (!idx || !txs || !bad || !pend) {
        fprintf(stderr, "exec: out of memory\n");
        status = CTL_INVALID;
        goto out_block;
    }
    for (size_t start = 0; start < l.n; start += block_size) {
        size_t end = start + block_size < l.n ? start + block_size : l.n, n = 0;
        memset(pend, 0, pcap * sizeof *pend);
        /* The ledger's own checks first, as a mempool would: a tx the store would reject takes
         * no part in the block (otherwise the whole block would fail). */
        for (size_t i = start; i < end; i++) {
            ledger_tx *t = &txs[n];
            memset(t, 0, sizeof *t);
            rc = ledger_tx_decode(l.buf[i], l.len[i], &lim, t);
            if (rc == LEDGER_OK) rc = ledger_tx_verify(t);
            pending_nonce *pn = NULL;
            if (rc == LEDGER_OK) {
                pn = pending_slot(pend, pcap, t->body->signer.data);
                uint64_t want = ledger_state_nonce(ledger_store_state(s), t->body->signer.data);
                if (pn->used) want += pn->count;
                if (t->body->nonce != want) rc = LEDGER_ENONCE;
            }
            if (rc != LEDGER_OK) {
                bad[i - start] = invalid_json(t->body ? t->txid : NULL, rc, NULL);
                ledger_tx_free(t);
                status = CTL_INVALID;
                continue;
            }
            if (!pn->used) {
                memcpy(pn->key, t->body->signer.data, LEDGER_SECP_PUB_BYTES);
                pn->used = true;
            }
            pn->count++;
            idx[n++] = i;
        }
        uint64_t bt = time_ms;
        if ((rc = apply_block(s, &ex, &l, idx, n, bt, g.validators[0].pubkey)) != LEDGER_OK) {
            status = CTL_INVALID;
            for (size_t k = 0; k < n; k++) ledger_tx_free(&txs[k]);
            goto out_block;
        }
        /* Lines in input order, the rejected ones where they stood. */
        for (size_t i = start, k = 0; i < end; i++) {
            if (k < n && idx[k] == i) {
                print_receipt(s, &txs[k]);
                ledger_tx_free(&txs[k++]);
            } else if (bad[i - start]) {
                ctl_print_json(bad[i - start]);
                bad[i - start] = NULL;
            }
        }
        if (!tem_add_u64(&time_ms, step_ms)) {
            fprintf(stderr, "exec: block time overflows\n");
            status = CTL_INVALID;
            goto out_block;
        }
    }
    if (final_ms) {
        if (final_ms <= ledger_store_last_time(s) ||
            apply_block(s, &ex, &l, idx, 0, final_ms, g.validators[0].pubkey) != LEDGER_OK) {
            fprintf(stderr, "exec: --final-time-ms must be after the last block\n");
            status = CTL_USAGE;
            goto out_block;
        }
    }
    {
        uint8_t sroot[32], rroot[32];
        ledger_store_roots(s, sroot, rroot);
        json_t *j = json_object();
        if (!j) {
            status = CTL_INVALID;
            goto out_block;
        }
        json_object_set_new(j, "height", json_integer((json_int_t)ledger_store_height(s)));
        json_object_set_new(j, "state_root", ctl_json_hex(sroot, 32));
        if (ctl_flag(&o, "dump")) {
            json_t *arr = json_array(), *lines = json_array();
            contracts_supply sup;
            if (arr && lines && contracts_account_iter(ledger_store_state(s), dump_one, arr) == 0 &&
                contracts_settlement_iter_all(ledger_store_state(s), dump_line, lines) == 0 &&
                contracts_supply_get(ledger_store_state(s), &sup) == LEDGER_OK) {
                json_object_set_new(j, "accounts", arr);
                json_object_set_new(j, "settlements", lines);
                json_t *sj = json_object();
                if (sj) {
                    json_object_set_new(sj, "money_uunit", json_integer(sup.money_uunit));
                    json_object_set_new(sj, "tokens_wh", json_integer(sup.tokens_wh));
                    json_object_set_new(sj, "deposited_uunit", json_integer(sup.deposited_uunit));
                    json_object_set_new(sj, "minted_wh", json_integer(sup.minted_wh));
                    json_object_set_new(sj, "burnt_wh", json_integer(sup.burnt_wh));
                    json_object_set_new(j, "supply", sj);
                }
            } else {
                json_decref(arr);
                json_decref(lines);
                status = CTL_INVALID;
            }
        }
        ctl_print_json(j);
    }
out_block:
    if (bad)
        for (size_t i = 0; i < block_size; i++) json_decref(bad[i]);
    tem_free(bad);
    tem_free(pend);
    tem_free(idx);
    tem_free(txs);
out_store:
    contracts_market_free(m);
    ledger_store_close(s);
    if (nftw(dir, rm_one, 8, FTW_DEPTH | FTW_PHYS) != 0) perror("exec: removing the temporary store");
out_list:
    for (size_t i = 0; i < l.n; i++) tem_free(l.buf[i]);
    tem_free(l.buf);
    tem_free(l.len);
    ledger_genesis_free(&g);
    return status;
}
