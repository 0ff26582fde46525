/* fuzz_market.c: libFuzzer target for the market executor. The input is read as a stream of
 * 12-byte operations (orders with any side, tif, price and quantity, cancels, readings, deposits,
 * transfers, registrations (meters too), and blocks that move time through gate closures and settlements) on
 * a fixed genesis; after every operation money and tokens must be conserved and a refused tx
 * must have changed nothing. Any crash, leak, TEM_ASSERT or broken invariant is a finding. */
#include "contracts/contracts.h"
#include "contracts/market_internal.h"

#define FZ_T0 1699920000000ull
#define FZ_SLOT 900000
enum { FZ_KEYS = 6, FZ_ALL = FZ_KEYS + 3 }; /* + two meters and the meter-data key */

typedef struct {
    int64_t money, tokens;
} fz_sums;

static int fz_sum(void *ctx, const contracts_account *a) {
    fz_sums *s = ctx;
    s->money += a->money_uunit + a->money_escrow_uunit;
    s->tokens += a->tokens_wh + a->tokens_escrow_wh;
    return 0;
}

static void fz_check(ledger_state *st) {
    fz_sums s = {0};
    contracts_supply sup;
    TEM_ASSERT(contracts_account_iter(st, fz_sum, &s) == 0);
    TEM_ASSERT(contracts_supply_get(st, &sup) == 0);
    TEM_ASSERT(s.money == sup.money_uunit);
    TEM_ASSERT(s.tokens == sup.tokens_wh);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static ledger_participant parts[FZ_ALL];
    uint8_t keys[FZ_ALL + 1][LEDGER_SECP_PUB_BYTES];
    for (int i = 0; i <= FZ_ALL; i++) {
        memset(keys[i], 0, sizeof keys[i]);
        keys[i][0] = 0x02;
        keys[i][1] = (uint8_t)(i + 1);
    }
    ledger_genesis g;
    memset(&g, 0, sizeof g);
    strcpy(g.chain_id, "tem-fuzz");
    g.genesis_time_ms = FZ_T0;
    g.n_admins = 1;
    memcpy(g.admins[0], keys[0], LEDGER_SECP_PUB_BYTES);
    const int roles[FZ_KEYS] = {3, 4, 1, 1, 2, 5};
    for (int i = 0; i < FZ_KEYS; i++) {
        memcpy(parts[i].pubkey, keys[i], LEDGER_SECP_PUB_BYTES);
        parts[i].role = roles[i];
        parts[i].bus = (uint32_t)i;
        parts[i].money_uunit = 1000000000;
        parts[i].tokens_wh = 100000;
    }
    /* Meters of the prosumer (key 2) and the consumer (key 4), and the meter-data key. */
    for (int i = FZ_KEYS; i < FZ_ALL; i++) {
        memset(&parts[i], 0, sizeof parts[i]);
        memcpy(parts[i].pubkey, keys[i], LEDGER_SECP_PUB_BYTES);
        parts[i].role = i < FZ_ALL - 1 ? TEM__V1__ROLE__METER : TEM__V1__ROLE__METER_DATA;
        memcpy(parts[i].owner, keys[i == FZ_KEYS ? 2 : 4], LEDGER_SECP_PUB_BYTES);
        parts[i].import_capacity_w = 100000;
        parts[i].export_capacity_w = 100000;
        parts[i].from_slot = 2;
    }
    g.n_participants = FZ_ALL;
    g.participants = parts;
    g.n_tariffs = 2;
    g.tariffs[0] = (ledger_tariff){0, 300000, 50000};
    g.tariffs[1] = (ledger_tariff){600, 400000, 60000};
    g.market = (ledger_market_params){.slot_ms = FZ_SLOT, .gate_closure_ms = 300000,
                                      .settlement_deadline_ms = 600000,
                                      .mechanism = size > 0 && (data[0] & 1) ? LEDGER_MECH_CALL : LEDGER_MECH_CDA,
                                      .seller_collateral_ppm = 50000, .book_orders_max = 200};
    ledger_state *st;
    contracts_market *m;
    TEM_ASSERT(ledger_state_new(&st) == 0);
    TEM_ASSERT(contracts_genesis_init(NULL, st, &g) == 0);
    TEM_ASSERT(contracts_market_new(&m) == 0);
    ledger_executor ex;
    contracts_executor(m, &ex);
    ledger_arena arena = {0};
    uint64_t now = FZ_T0 + 2 * FZ_SLOT, height = 1, n = 0;
    ledger_block_ctx b = {.height = height, .time_ms = now, .genesis = &g, .arena = &arena};
    TEM_ASSERT(ex.begin_block(m, st, &b) == 0);
    uint8_t txids[64][32];
    for (size_t off = 1; off + 12 <= size; off += 12) {
        const uint8_t *p = data + off;
        int who = p[1] % (FZ_ALL + 1);
        uint64_t slot = (now - FZ_T0) / FZ_SLOT + (uint64_t)(int8_t)p[2];
        uint64_t a = tem_get_u32le(p + 4), q = tem_get_u32le(p + 8);
        Tem__V1__TxBody body = TEM__V1__TX_BODY__INIT;
        Tem__V1__Order o = TEM__V1__ORDER__INIT;
        Tem__V1__CancelOrder c = TEM__V1__CANCEL_ORDER__INIT;
        Tem__V1__MeterReading r = TEM__V1__METER_READING__INIT;
        Tem__V1__Deposit d = TEM__V1__DEPOSIT__INIT;
        Tem__V1__Transfer t = TEM__V1__TRANSFER__INIT;
        Tem__V1__RegisterParticipant reg = TEM__V1__REGISTER_PARTICIPANT__INIT;
        switch (p[0] % 8) {
        case 0:
            TEM_ASSERT(ex.end_block(m, st, &b) == 0);
            ledger_arena_reset(&arena);
            now += a % (4 * FZ_SLOT);
            b = (ledger_block_ctx){.height = ++height, .time_ms = now, .genesis = &g, .arena = &arena};
            TEM_ASSERT(ex.begin_block(m, st, &b) == 0);
            fz_check(st);
            continue;
        case 1: case 2: case 3:
            o.slot = p[2] == 0xff ? UINT64_MAX : slot;
            o.side = p[3] % 3;
            o.price = 40000 + a % 400000;
            o.quantity_wh = (p[3] & 0x80) ? q * 1000ull : q % 5000;
            o.tif = (p[3] >> 2) % 3;
            body.kind_case = TEM__V1__TX_BODY__KIND_ORDER;
            body.order = &o;
            break;
        case 4:
            c.order_txid = (ProtobufCBinaryData){32, txids[a % 64]};
            body.kind_case = TEM__V1__TX_BODY__KIND_CANCEL;
            body.cancel = &c;
            break;
        case 5:
            r.slot = slot;
            r.import_wh = a % 100000;
            r.export_wh = (p[3] & 1) ? q : q % 100000;
            if (p[3] & 2) r.meter = (ProtobufCBinaryData){LEDGER_SECP_PUB_BYTES, keys[p[2] % (FZ_ALL + 1)]};
            body.kind_case = TEM__V1__TX_BODY__KIND_READING;
            body.reading = &r;
            break;
        case 6:
            if (p[3] & 1) {
                d.to = (ProtobufCBinaryData){LEDGER_SECP_PUB_BYTES, keys[p[2] % (FZ_ALL + 1)]};
                d.amount = (p[3] & 2) ? UINT64_MAX - a : a;
                body.kind_case = TEM__V1__TX_BODY__KIND_DEPOSIT;
                body.deposit = &d;
            } else {
                t.to = (ProtobufCBinaryData){LEDGER_SECP_PUB_BYTES, keys[p[2] % (FZ_ALL + 1)]};
                t.amount = a;
                body.kind_case = TEM__V1__TX_BODY__KIND_TRANSFER;
                body.transfer = &t;
            }
            break;
        default:
            reg.pubkey = (ProtobufCBinaryData){LEDGER_SECP_PUB_BYTES, keys[p[2] % (FZ_ALL + 1)]};
            reg.bus = p[3];
            reg.role = p[3] % 9;
            if (p[3] & 0x80) reg.owner = (ProtobufCBinaryData){LEDGER_SECP_PUB_BYTES, keys[(p[3] >> 4) % (FZ_ALL + 1)]};
            reg.import_capacity_w = a;
            reg.export_capacity_w = q;
            body.kind_case = TEM__V1__TX_BODY__KIND_REGISTER;
            body.register_ = &reg;
            break;
        }
        body.signer = (ProtobufCBinaryData){LEDGER_SECP_PUB_BYTES, keys[who]};
        ledger_tx tx = {.body = &body};
        uint8_t seed[8];
        tem_put_u64le(seed, n);
        ledger_sha256(tx.txid, seed, sizeof seed);
        memcpy(txids[n++ % 64], tx.txid, 32);
        uint8_t before[32], after[32];
        TEM_ASSERT(ledger_state_root(st, before) == 0);
        Tem__V1__Receipt rc = TEM__V1__RECEIPT__INIT;
        TEM_ASSERT(ex.exec_tx(m, st, &b, &tx, &rc) == 0);
        if (rc.code != 0) {
            TEM_ASSERT(ledger_state_root(st, after) == 0);
            TEM_ASSERT(memcmp(before, after, 32) == 0);
        }
        fz_check(st);
    }
    TEM_ASSERT(ex.end_block(m, st, &b) == 0);
    ledger_arena_reset(&arena);
    contracts_market_free(m);
    ledger_state_free(st);
    return 0;
}
