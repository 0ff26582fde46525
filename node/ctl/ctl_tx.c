/* ctl_tx.c: `temctl tx sign` (build and sign any tx kind from flags) and `temctl tx inspect`
 * (decode, check and print a SignedTx as JSON). */
#include "node/ctl/ctl.h"

#include <sodium.h>

static const char TX_USAGE[] =
    "usage: temctl tx sign --key KEYFILE (--chain-id ID | --genesis G.json) --nonce N --out FILE KIND [KIND OPTIONS]\n"
    "       temctl tx inspect FILE|- [--chain-id ID | --genesis G.json]\n"
    "kinds and options:\n"
    "  order     --slot S --side buy|sell --price UUNIT_PER_KWH --qty WH [--tif gtc|ioc]\n"
    "  cancel    --order TXID\n"
    "  reading   --slot S --import WH --export WH [--meter METERKEY]   (signed by the meter, or by\n"
    "            the meter-data key naming --meter)\n"
    "  transfer  --to PUBKEY --amount UUNIT\n"
    "  register  --pubkey PUBKEY --bus BUS --role prosumer|consumer|utility|dso|aggregator|meter_data\n"
    "            (admin); --role meter --owner PUBKEY --import-w W --export-w W (admin, DSO or\n"
    "            utility; without --owner: retires the meter)\n"
    "  deposit   --to PUBKEY --amount UUNIT                                                 (admin)\n"
    "  set-tariff --from-slot S --period START_MINUTE:RETAIL:FEED_IN [--period ...]          (admin)\n"
    "  (install-feeder txs come from `temctl feeder install`)\n"
    "inspect prints {txid, signer, nonce, kind, <kind>: {...}, sig_valid} and exits 1 when the\n"
    "encoding, the signature or (if given) the chain id is invalid, with the reason.\n";

static int role_of(const char *s) {
    static const char *n[] = {"prosumer", "consumer", "utility", "dso", "aggregator", "meter", "meter_data"};
    for (int i = 0; i < 7; i++)
        if (s && strcmp(s, n[i]) == 0) return i + 1;
    return -1;
}

static bool need_u64(const ctl_opts *o, const char *name, uint64_t *v) {
    if (!ctl_parse_u64(ctl_opt(o, name), v)) {
        fprintf(stderr, "tx sign: --%s must be an unsigned integer\n", name);
        return false;
    }
    return true;
}

static bool need_hex(const ctl_opts *o, const char *name, uint8_t *out, size_t n) {
    if (tem_unhex(out, n, ctl_opt(o, name)) != 0) {
        fprintf(stderr, "tx sign: --%s must be %zu bytes of hex\n", name, n);
        return false;
    }
    return true;
}

/* Chain id from --chain-id or --genesis into buf; false with a message if neither works. */
bool ctl_chain_id_of(const ctl_opts *o, char *buf, size_t n, bool required) {
    if (ctl_opt(o, "chain-id")) {
        snprintf(buf, n, "%s", ctl_opt(o, "chain-id"));
        return true;
    }
    if (ctl_opt(o, "genesis")) {
        ledger_genesis g;
        char err[256];
        if (ledger_genesis_load(ctl_opt(o, "genesis"), &g, err, sizeof err) != LEDGER_OK) {
            fprintf(stderr, "genesis: %s\n", err);
            return false;
        }
        snprintf(buf, n, "%s", g.chain_id);
        ledger_genesis_free(&g);
        return true;
    }
    buf[0] = 0;
    if (required) fprintf(stderr, "tx sign: --chain-id or --genesis is required\n");
    return !required;
}

int ctl_tx_build(ctl_opts *o, const char *kind, const ledger_keyfile *kp, const char *chain, uint64_t nonce,
                 uint8_t **buf_out, size_t *len_out, uint8_t txid_out[32]) {
    ledger_keyfile k = *kp;
    Tem__V1__TxBody body = TEM__V1__TX_BODY__INIT;
    Tem__V1__Order order = TEM__V1__ORDER__INIT;
    Tem__V1__CancelOrder cancel = TEM__V1__CANCEL_ORDER__INIT;
    Tem__V1__MeterReading reading = TEM__V1__METER_READING__INIT;
    Tem__V1__Transfer transfer = TEM__V1__TRANSFER__INIT;
    Tem__V1__RegisterParticipant reg = TEM__V1__REGISTER_PARTICIPANT__INIT;
    Tem__V1__Deposit dep = TEM__V1__DEPOSIT__INIT;
    Tem__V1__SetTariff st = TEM__V1__SET_TARIFF__INIT;
    Tem__V1__TariffPeriod periods[LEDGER_TARIFF_PERIODS_MAX], *pp[LEDGER_TARIFF_PERIODS_MAX];
    uint8_t txid_buf[32], pub_buf[33], owner_buf[33];
    body.chain_id = (char *)chain;
    body.nonce = nonce;
    int status = CTL_USAGE;
    if (strcmp(kind, "order") == 0) {
        const char *side = ctl_opt(o, "side"), *tif = ctl_opt(o, "tif");
        if (!need_u64(o, "slot", &order.slot) || !need_u64(o, "price", &order.price) || !need_u64(o, "qty", &order.quantity_wh)) goto out;
        if (side && strcmp(side, "buy") == 0) order.side = TEM__V1__SIDE__BUY;
        else if (side && strcmp(side, "sell") == 0) order.side = TEM__V1__SIDE__SELL;
        else { fprintf(stderr, "tx sign: --side must be buy or sell\n"); goto out; }
        if (!tif || strcmp(tif, "gtc") == 0) order.tif = TEM__V1__TIME_IN_FORCE__GTC;
        else if (strcmp(tif, "ioc") == 0) order.tif = TEM__V1__TIME_IN_FORCE__IOC;
        else { fprintf(stderr, "tx sign: --tif must be gtc or ioc\n"); goto out; }
        body.kind_case = TEM__V1__TX_BODY__KIND_ORDER;
        body.order = &order;
    } else if (strcmp(kind, "cancel") == 0) {
        if (!need_hex(o, "order", txid_buf, 32)) goto out;
        cancel.order_txid = (ProtobufCBinaryData){32, txid_buf};
        body.kind_case = TEM__V1__TX_BODY__KIND_CANCEL;
        body.cancel = &cancel;
    } else if (strcmp(kind, "reading") == 0) {
        if (!need_u64(o, "slot", &reading.slot) || !need_u64(o, "import", &reading.import_wh) || !need_u64(o, "export", &reading.export_wh)) goto out;
        /* --meter: the meter-data key signs for that meter (bulk or correction). */
        if (ctl_opt(o, "meter")) {
            if (!need_hex(o, "meter", pub_buf, 33)) goto out;
            reading.meter = (ProtobufCBinaryData){33, pub_buf};
        }
        body.kind_case = TEM__V1__TX_BODY__KIND_READING;
        body.reading = &reading;
    } else if (strcmp(kind, "transfer") == 0) {
        if (!need_hex(o, "to", pub_buf, 33) || !need_u64(o, "amount", &transfer.amount)) goto out;
        transfer.to = (ProtobufCBinaryData){33, pub_buf};
        body.kind_case = TEM__V1__TX_BODY__KIND_TRANSFER;
        body.transfer = &transfer;
    } else if (strcmp(kind, "register") == 0) {
        uint64_t bus;
        if (!need_hex(o, "pubkey", pub_buf, 33) || !need_u64(o, "bus", &bus) || bus > UINT32_MAX) goto out;
        reg.role = role_of(ctl_opt(o, "role"));
        if ((int)reg.role < 0) { fprintf(stderr, "tx sign: --role must be prosumer, consumer, utility, dso, aggregator, meter or meter_data\n"); goto out; }
        if (reg.role == TEM__V1__ROLE__METER) {
            /* --owner KEY (omit it to retire the meter), --import-w W, --export-w W */
            if (ctl_opt(o, "owner")) {
                if (!need_hex(o, "owner", owner_buf, 33)) goto out;
                reg.owner = (ProtobufCBinaryData){33, owner_buf};
            }
            if ((ctl_opt(o, "import-w") && !need_u64(o, "import-w", &reg.import_capacity_w)) ||
                (ctl_opt(o, "export-w") && !need_u64(o, "export-w", &reg.export_capacity_w)))
                goto out;
        }
        reg.pubkey = (ProtobufCBinaryData){33, pub_buf};
        reg.bus = (uint32_t)bus;
        body.kind_case = TEM__V1__TX_BODY__KIND_REGISTER;
        body.register_ = &reg;
    } else if (strcmp(kind, "deposit") == 0) {
        if (!need_hex(o, "to", pub_buf, 33) || !need_u64(o, "amount", &dep.amount)) goto out;
        dep.to = (ProtobufCBinaryData){33, pub_buf};
        body.kind_case = TEM__V1__TX_BODY__KIND_DEPOSIT;
        body.deposit = &dep;
    } else if (strcmp(kind, "set-tariff") == 0) {
        if (!need_u64(o, "from-slot", &st.from_slot)) goto out;
        int it = 0;
        const char *v;
        while ((v = ctl_opt_next(o, "period", &it))) {
            if (st.n_periods >= LEDGER_TARIFF_PERIODS_MAX) goto out;
            Tem__V1__TariffPeriod *p = &periods[st.n_periods];
            tem__v1__tariff_period__init(p);
            unsigned sm;
            unsigned long long r, f;
            char tail;
            if (sscanf(v, "%u:%llu:%llu%c", &sm, &r, &f, &tail) != 3) { fprintf(stderr, "tx sign: --period START:RETAIL:FEED_IN\n"); goto out; }
            p->start_minute = sm;
            p->retail_uunit_per_kwh = r;
            p->feed_in_uunit_per_kwh = f;
            pp[st.n_periods++] = p;
        }
        st.periods = pp;
        body.kind_case = TEM__V1__TX_BODY__KIND_SET_TARIFF;
        body.set_tariff = &st;
    } else {
        fprintf(stderr, "tx sign: unknown kind %s\n", kind);
        goto out;
    }
    int rc = ledger_tx_build(&body, k.secp_sec, buf_out, len_out, txid_out);
    if (rc != LEDGER_OK) {
        fprintf(stderr, "tx sign: %s\n", ledger_strerror(rc));
        status = CTL_INVALID;
        goto out;
    }
    status = CTL_OK;
out:
    sodium_memzero(&k, sizeof k);
    return status;
}

static int tx_sign(ctl_opts *o) {
    if (o->npos != 2) {
        fputs(TX_USAGE, stderr);
        return CTL_USAGE;
    }
    const char *kind = o->pos[1], *keyf = ctl_opt(o, "key"), *out = ctl_opt(o, "out");
    char chain[LEDGER_CHAIN_ID_MAX + 1];
    uint64_t nonce;
    if (!keyf || !out) {
        fputs(TX_USAGE, stderr);
        return CTL_USAGE;
    }
    if (!ctl_chain_id_of(o, chain, sizeof chain, true)) return CTL_USAGE;
    if (!need_u64(o, "nonce", &nonce)) return CTL_USAGE;
    ledger_keyfile k;
    if (ledger_keyfile_read(keyf, &k) != LEDGER_OK || k.is_validator) {
        fprintf(stderr, "tx sign: %s is not a meter (secp256k1) key file\n", keyf);
        return CTL_INVALID;
    }
    uint8_t *buf, txid[32];
    size_t len;
    int status = ctl_tx_build(o, kind, &k, chain, nonce, &buf, &len, txid);
    sodium_memzero(&k, sizeof k);
    if (status != CTL_OK) return status;
    status = ctl_write_file(out, buf, len) == 0 ? CTL_OK : CTL_INVALID;
    tem_free(buf);
    if (status == CTL_OK && strcmp(out, "-") != 0) {
        char h[65];
        tem_hex(h, txid, 32);
        printf("%s\n", h);
    }
    return status;
}

static int tx_inspect(ctl_opts *o) {
    if (o->npos != 2) {
        fputs(TX_USAGE, stderr);
        return CTL_USAGE;
    }
    char chain[LEDGER_CHAIN_ID_MAX + 1];
    if (!ctl_chain_id_of(o, chain, sizeof chain, false)) return CTL_USAGE;
    uint8_t *buf;
    size_t len;
    if (ctl_read_file(o->pos[1], 64u << 20, &buf, &len) != 0) return CTL_INVALID;
    /* Inspect is for looking at txs, so it accepts any size a genesis could allow; the chain
     * id is checked only when one was given. */
    ledger_tx_limits lim = {.chain_id = NULL, .max_tx_bytes = 64u << 20, .max_admin_tx_bytes = 64u << 20};
    ledger_tx tx;
    int rc = ledger_tx_decode(buf, len, &lim, &tx);
    tem_free(buf);
    if (rc != LEDGER_OK) {
        json_t *j = json_object();
        json_object_set_new(j, "error", json_string(ledger_strerror(rc)));
        json_object_set_new(j, "code", json_string(ledger_errname(rc)));
        ctl_print_json(j);
        fprintf(stderr, "tx inspect: %s\n", ledger_strerror(rc));
        return CTL_INVALID;
    }
    json_t *j = ctl_tx_json(&tx);
    int vrc = ledger_tx_verify(&tx);
    json_object_set_new(j, "sig_valid", json_boolean(vrc == LEDGER_OK));
    int status = CTL_OK;
    if (vrc != LEDGER_OK) {
        json_object_set_new(j, "error", json_string(ledger_strerror(vrc)));
        json_object_set_new(j, "code", json_string(ledger_errname(vrc)));
        status = CTL_INVALID;
    } else if (chain[0] && strcmp(chain, tx.body->chain_id) != 0) {
        json_object_set_new(j, "error", json_string(ledger_strerror(LEDGER_ECHAIN)));
        json_object_set_new(j, "code", json_string(ledger_errname(LEDGER_ECHAIN)));
        status = CTL_INVALID;
    }
    if (status != CTL_OK) fprintf(stderr, "tx inspect: %s\n", json_string_value(json_object_get(j, "error")));
    ctl_print_json(j);
    ledger_tx_free(&tx);
    return status;
}

int ctl_tx_main(int argc, char **argv) {
    ctl_opts o;
    if (ctl_opts_parse(&o, argc, argv, 1, "json") != 0) return CTL_USAGE;
    if (o.help) {
        fputs(TX_USAGE, stdout);
        return CTL_OK;
    }
    if (o.npos >= 1 && strcmp(o.pos[0], "sign") == 0) return tx_sign(&o);
    /* `temctl tx TXID --node URL` asks a node for the tx's status and receipt. */
    if (o.npos == 1 && strlen(o.pos[0]) == 64) return ctl_node_main(argc, argv);
    if (o.npos >= 1 && strcmp(o.pos[0], "inspect") == 0) return tx_inspect(&o);
    fputs(TX_USAGE, stderr);
    return CTL_USAGE;
}
