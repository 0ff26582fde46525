/* tx.c: decoding, checking, verifying and building signed transactions (docs/ledger.md,
 * "Transactions"). A node hashes and verifies the exact body bytes it received: nothing here
 * re-serialises a body before hashing it. */
#include "ledger/ledger.h"

static void *pb_alloc(void *data, size_t size) {
    (void)data;
    return tem_malloc(size);
}
static void pb_free(void *data, void *p) {
    (void)data;
    tem_free(p);
}
ProtobufCAllocator ledger_pb_allocator = {.alloc = pb_alloc, .free = pb_free, .allocator_data = NULL};

const char *ledger_tx_kind_name(int k) {
    switch (k) {
    case TEM__V1__TX_BODY__KIND_ORDER: return "order";
    case TEM__V1__TX_BODY__KIND_CANCEL: return "cancel";
    case TEM__V1__TX_BODY__KIND_READING: return "reading";
    case TEM__V1__TX_BODY__KIND_TRANSFER: return "transfer";
    case TEM__V1__TX_BODY__KIND_REGISTER: return "register";
    case TEM__V1__TX_BODY__KIND_INSTALL_FEEDER: return "install_feeder";
    case TEM__V1__TX_BODY__KIND_SET_TARIFF: return "set_tariff";
    case TEM__V1__TX_BODY__KIND_DEPOSIT: return "deposit";
    default: return NULL;
    }
}

bool ledger_tx_kind_is_admin(int k) { return k >= 20; }

void ledger_tx_limits_from_genesis(const ledger_genesis *g, ledger_tx_limits *out) {
    out->chain_id = g->chain_id;
    out->max_tx_bytes = g->max_tx_bytes;
    out->max_admin_tx_bytes = g->max_admin_tx_bytes;
}

void ledger_tx_free(ledger_tx *tx) {
    if (tx->body) tem__v1__tx_body__free_unpacked(tx->body, &ledger_pb_allocator);
    if (tx->stx) tem__v1__signed_tx__free_unpacked(tx->stx, &ledger_pb_allocator);
    tx->body = NULL;
    tx->stx = NULL;
}

/* Field checks that need no state: lengths of keys and ids, enums, non-empty lists. Amounts and
 * market rules are the contracts' business (they answer with a reason code in a receipt). */
static int check_kind_fields(const Tem__V1__TxBody *b) {
    switch (b->kind_case) {
    case TEM__V1__TX_BODY__KIND_ORDER:
        if (!b->order) return LEDGER_EFIELD;
        if (b->order->side != TEM__V1__SIDE__BUY && b->order->side != TEM__V1__SIDE__SELL) return LEDGER_EFIELD;
        if (b->order->tif != TEM__V1__TIME_IN_FORCE__GTC && b->order->tif != TEM__V1__TIME_IN_FORCE__IOC) return LEDGER_EFIELD;
        return LEDGER_OK;
    case TEM__V1__TX_BODY__KIND_CANCEL:
        if (!b->cancel || b->cancel->order_txid.len != LEDGER_HASH_BYTES) return LEDGER_EFIELD;
        return LEDGER_OK;
    case TEM__V1__TX_BODY__KIND_READING:
        return b->reading ? LEDGER_OK : LEDGER_EFIELD;
    case TEM__V1__TX_BODY__KIND_TRANSFER:
        if (!b->transfer || b->transfer->to.len != LEDGER_SECP_PUB_BYTES) return LEDGER_EFIELD;
        return LEDGER_OK;
    case TEM__V1__TX_BODY__KIND_REGISTER:
        if (!b->register_ || b->register_->pubkey.len != LEDGER_SECP_PUB_BYTES) return LEDGER_EFIELD;
        if (b->register_->role < TEM__V1__ROLE__PROSUMER || b->register_->role > TEM__V1__ROLE__METER_DATA) return LEDGER_EFIELD;
        return LEDGER_OK;
    case TEM__V1__TX_BODY__KIND_INSTALL_FEEDER:
        if (!b->install_feeder || b->install_feeder->n_buses == 0) return LEDGER_EFIELD;
        return LEDGER_OK;
    case TEM__V1__TX_BODY__KIND_SET_TARIFF:
        if (!b->set_tariff || b->set_tariff->n_periods == 0 || b->set_tariff->n_periods > LEDGER_TARIFF_PERIODS_MAX) return LEDGER_EFIELD;
        return LEDGER_OK;
    case TEM__V1__TX_BODY__KIND_DEPOSIT:
        if (!b->deposit || b->deposit->to.len != LEDGER_SECP_PUB_BYTES) return LEDGER_EFIELD;
        return LEDGER_OK;
    default:
        return LEDGER_EKIND;
    }
}

int ledger_tx_decode(const uint8_t *buf, size_t len, const ledger_tx_limits *lim, ledger_tx *out) {
    memset(out, 0, sizeof *out);
    uint32_t outer_max = lim->max_admin_tx_bytes > lim->max_tx_bytes ? lim->max_admin_tx_bytes : lim->max_tx_bytes;
    /* Bound the parse before protobuf-c allocates for it: the outer message is the body plus a
     * 64-byte signature and a few bytes of tags. */
    if (len > (size_t)outer_max + 128) return LEDGER_ETOOBIG;
    if (len == 0) return LEDGER_EEMPTY;
    out->stx = tem__v1__signed_tx__unpack(&ledger_pb_allocator, len, buf);
    if (!out->stx) return LEDGER_EDECODE;
    int rc;
    if (out->stx->body.len == 0) { rc = LEDGER_EEMPTY; goto fail; }
    if (out->stx->body.len > outer_max) { rc = LEDGER_ETOOBIG; goto fail; }
    if (out->stx->sig.len != LEDGER_SECP_SIG_BYTES) { rc = LEDGER_ESIGLEN; goto fail; }
    out->body = tem__v1__tx_body__unpack(&ledger_pb_allocator, out->stx->body.len, out->stx->body.data);
    if (!out->body) { rc = LEDGER_EDECODE; goto fail; }
    if (ledger_tx_kind_name(out->body->kind_case) == NULL) { rc = LEDGER_EKIND; goto fail; }
    if (!ledger_tx_kind_is_admin(out->body->kind_case) && out->stx->body.len > lim->max_tx_bytes) {
        rc = LEDGER_ETOOBIG;
        goto fail;
    }
    if (out->body->signer.len != LEDGER_SECP_PUB_BYTES ||
        (out->body->signer.data[0] != 0x02 && out->body->signer.data[0] != 0x03)) {
        rc = LEDGER_EPUBKEY;
        goto fail;
    }
    if (lim->chain_id && strcmp(out->body->chain_id, lim->chain_id) != 0) { rc = LEDGER_ECHAIN; goto fail; }
    if ((rc = check_kind_fields(out->body)) != LEDGER_OK) goto fail;
    ledger_sha256(out->txid, out->stx->body.data, out->stx->body.len);
    return LEDGER_OK;
fail:
    ledger_tx_free(out);
    return rc;
}

int ledger_tx_verify(const ledger_tx *tx) {
    TEM_ASSERT(tx->stx && tx->body);
    TEM_ASSERT(tx->stx->sig.len == LEDGER_SECP_SIG_BYTES);
    return ledger_secp_verify(tx->body->signer.data, tx->txid, tx->stx->sig.data);
}

int ledger_tx_build(Tem__V1__TxBody *body, const uint8_t sec[LEDGER_SECP_SEC_BYTES], uint8_t **out,
                    size_t *out_len, uint8_t txid[LEDGER_HASH_BYTES]) {
    uint8_t pub[LEDGER_SECP_PUB_BYTES], sig[LEDGER_SECP_SIG_BYTES], id[LEDGER_HASH_BYTES];
    int rc = ledger_secp_pubkey(sec, pub);
    if (rc != LEDGER_OK) return rc;
    body->signer.data = pub;
    body->signer.len = sizeof pub;
    size_t blen = tem__v1__tx_body__get_packed_size(body);
    uint8_t *bbuf = tem_malloc(blen);
    if (!bbuf) return LEDGER_ENOMEM;
    TEM_ASSERT(tem__v1__tx_body__pack(body, bbuf) == blen);
    ledger_sha256(id, bbuf, blen);
    if ((rc = ledger_secp_sign(sec, id, sig)) != LEDGER_OK) {
        tem_free(bbuf);
        return rc;
    }
    Tem__V1__SignedTx stx = TEM__V1__SIGNED_TX__INIT;
    stx.body.data = bbuf;
    stx.body.len = blen;
    stx.sig.data = sig;
    stx.sig.len = sizeof sig;
    size_t slen = tem__v1__signed_tx__get_packed_size(&stx);
    uint8_t *sbuf = tem_malloc(slen);
    if (!sbuf) {
        tem_free(bbuf);
        return LEDGER_ENOMEM;
    }
    TEM_ASSERT(tem__v1__signed_tx__pack(&stx, sbuf) == slen);
    tem_free(bbuf);
    body->signer.data = NULL;
    body->signer.len = 0;
    *out = sbuf;
    *out_len = slen;
    if (txid) memcpy(txid, id, sizeof id);
    return LEDGER_OK;
}
