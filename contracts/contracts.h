/* contracts.h: the built-in market contracts' public entry (docs/market.md): the executor the
 * ledger store runs every block through, the genesis initialisation of the market state, the
 * refusal reason codes, and read access to accounts for tools (temctl exec --dump, the API).
 *
 * Everything here is consensus-critical: integer arithmetic only, no clock, no randomness, no
 * I/O. The state (ledger_state) is the only truth; the executor's context holds a cache of the
 * order books that it rebuilds from the state whenever it cannot vouch for it (a new context, a
 * block that was aborted or re-executed, another state object).
 *
 * Reason codes are consensus data (they go into receipts): append, never renumber. Contracts
 * own -300..-379; the DSO grid check (contracts/grid.h) owns -380..-399 and its codes appear in
 * receipts as they are. */
#ifndef CONTRACTS_H
#define CONTRACTS_H

#include "ledger/ledger.h"

#define CONTRACTS_ERRNO_MAP(X)                                                                     \
    X(ENOTREGISTERED, -300, "signer is not a registered participant")                              \
    X(ENOTADMIN, -301, "admin tx not signed by a genesis admin key")                               \
    X(EROLE, -302, "the signer's role may not do this")                                            \
    X(EQTY, -303, "quantity is zero")                                                              \
    X(EPRICE, -304, "price outside the slot's feed-in..retail band")                               \
    X(ESIDE, -305, "order side must be BUY or SELL")                                               \
    X(ETIF, -306, "unknown time in force")                                                         \
    X(EGATE, -307, "order after gate closure of its slot")                                         \
    X(ESLOT, -308, "slot out of range")                                                            \
    X(EFUNDS, -309, "insufficient money")                                                          \
    X(ECOLLATERAL, -310, "insufficient energy tokens for the seller collateral")                   \
    X(EOVERFLOW, -311, "amount overflows")                                                         \
    X(ENOORDER, -312, "no such resting order")                                                     \
    X(ENOTOWNER, -313, "order belongs to another participant")                                     \
    X(EMETER, -314, "reading from an unregistered meter")                                          \
    X(EDUPREADING, -315, "meter already reported this slot")                                       \
    X(EEARLY, -316, "reading before its slot has ended")                                           \
    X(ELATE, -317, "reading after the settlement deadline")                                        \
    X(EBOOKFULL, -318, "order book of the slot is full")                                           \
    X(ETARIFF, -319, "invalid tariff periods")                                                     \
    X(ETARIFFSLOT, -320, "tariff change must start at a slot whose gate is still open")            \
    X(ENOTARIFF, -321, "no tariff defined for the slot")                                           \
    X(EPUBKEY, -322, "not a 33-byte compressed public key")                                        \
    X(EBADROLE, -323, "unknown role")                                                              \
    X(ENORECIPIENT, -324, "recipient is not a registered participant")                             \
    X(EAMOUNT, -325, "amount is zero")                                                             \
    X(ESELF, -326, "transfer to oneself")                                                          \
    X(EMECH, -327, "IOC orders are not available in a call auction market")                        \
    X(EKIND, -328, "tx kind not handled by the market")                                            \
    X(EEXPORT, -329, "a consumer meter cannot report export")                                    \
    X(ENOTMETER, -330, "readings must be signed by a registered meter or the meter-data key")     \
    X(ECAPACITY, -331, "reading above the meter's capacity times the slot length")                 \
    X(EMETERKEY, -332, "key already registered in another role (meter keys never trade)")

enum contracts_err {
    CONTRACTS_OK = 0,
#define CONTRACTS_X(name, val, msg) CONTRACTS_##name = val,
    CONTRACTS_ERRNO_MAP(CONTRACTS_X)
#undef CONTRACTS_X
};

/* Message for any code: contracts', the grid's, else the ledger's. Never NULL. */
const char *contracts_strerror(int code);
/* Symbolic name ("EPRICE", grid names too), or NULL for a code that is neither. */
const char *contracts_errname(int code);

/* Largest quantity of one order or reading (1 GWh; a reading is also capped by its meter's
 * capacity x slot length) and largest tariff price (1e9 micro-units
 * per kWh). A bigger quantity is refused with CONTRACTS_EOVERFLOW; a bigger price lies outside
 * every tariff band (CONTRACTS_EPRICE). Together they keep every product and every sum of a book
 * in 64 bits. */
#define CONTRACTS_QTY_MAX_WH 1000000000ll
#define CONTRACTS_PRICE_MAX 1000000000ll

/* ------------------------------------------------------------------ the executor */
typedef struct contracts_market contracts_market;

/* A new executor context (tem_malloc'd; free with contracts_market_free). It borrows nothing;
 * the genesis comes with every block (ledger_block_ctx.genesis). LEDGER_ENOMEM. */
TEM_WUR int contracts_market_new(contracts_market **out);
void contracts_market_free(contracts_market *m);
/* Fills *ex with the market's callbacks and m as their context. m must outlive every apply. */
void contracts_executor(contracts_market *m, ledger_executor *ex);

/* The `init` callback of ledger_store_open (ctx unused, may be NULL): writes the genesis
 * participants (accounts with their money and tokens; meters as meter records bound to an owner
 * listed before them), the supply counters, the genesis tariffs and the utility, DSO and
 * meter-data role keys into st. LEDGER_OK, LEDGER_EGENESIS (bad role, duplicate key, negative or
 * overflowing balance, a meter with money or without a prosumer/consumer owner, invalid tariff
 * or market parameter), LEDGER_ENOMEM. */
TEM_WUR int contracts_genesis_init(void *ctx, ledger_state *st, const ledger_genesis *g);

/* Whether the signer of tx may send its kind at all, before any market rule: admin kinds need a
 * genesis admin key (deposits also the utility's; a meter registration also the current DSO's
 * or utility's), readings a registered meter key or the current meter-data key, every other
 * kind a registered participant. The executor applies the same rule; the node's mempool calls
 * it to refuse early. CONTRACTS_OK, CONTRACTS_ENOTADMIN, CONTRACTS_ENOTREGISTERED,
 * CONTRACTS_EMETER (a reading from an unknown key), CONTRACTS_ENOTMETER (a reading signed by a
 * trading key), LEDGER_ECORRUPT. */
TEM_WUR int contracts_signer_check(ledger_state *st, const ledger_genesis *g, const ledger_tx *tx);

/* ------------------------------------------------------------------ reading the state */
typedef struct {
    uint8_t pubkey[LEDGER_SECP_PUB_BYTES];
    uint32_t bus;
    int32_t role;                /* Tem__V1__Role */
    int64_t money_uunit;         /* free money */
    int64_t money_escrow_uunit;  /* held for open orders (buy price and fees, sell collateral) and
                                    unsettled trades */
    int64_t tokens_wh;           /* genesis energy tokens: no market rule moves them any more */
    int64_t tokens_escrow_wh;    /* always 0: collateral is money now (docs/market.md) */
    int64_t debt_uunit;          /* settlement charges it could not pay (docs/market.md) */
} contracts_account;

/* LEDGER_OK, LEDGER_ENOTFOUND, LEDGER_ECORRUPT. */
TEM_WUR int contracts_account_get(ledger_state *st, const uint8_t pub[LEDGER_SECP_PUB_BYTES],
                                  contracts_account *out);
/* Calls fn for every account in key order; a non-zero return stops and is returned. */
TEM_WUR int contracts_account_iter(ledger_state *st,
                                   int (*fn)(void *ctx, const contracts_account *a), void *ctx);

typedef struct {
    int64_t money_uunit; /* genesis money + deposits: equals the sum of every account's money */
    int64_t tokens_wh;   /* genesis tokens + mints - burns: the sum of every account's tokens */
    uint64_t next_order_seq;
    int64_t minted_wh, burnt_wh, deposited_uunit; /* running totals since genesis */
} contracts_supply;
/* LEDGER_OK or LEDGER_ECORRUPT (missing counters). */
TEM_WUR int contracts_supply_get(ledger_state *st, contracts_supply *out);

/* ------------------------------------------------------------------ market views (API, tools)
 * Read-only walks over one slot's records; fn returns non-zero to stop (that value is returned).
 * They return LEDGER_OK, LEDGER_ECORRUPT or fn's value. The records live only while the slot is
 * active: orders until gate closure, trades until settlement, settlement lines afterwards. */
typedef struct {
    uint8_t txid[32];
    uint8_t owner[LEDGER_SECP_PUB_BYTES];
    int32_t side;           /* Tem__V1__Side */
    int32_t tif;            /* Tem__V1__TimeInForce */
    uint32_t bus;           /* owner's bus when the order arrived */
    uint64_t slot, seq;     /* seq: time priority, unique across the chain */
    uint64_t price;         /* limit, micro-units per kWh */
    uint64_t qty_wh, remaining_wh;
    int64_t escrow_uunit;   /* money the order still holds (price part + fee part) */
    int64_t escrow_collateral_uunit;
} contracts_order;
/* Resting orders of `slot` in arrival order (seq); priority order is (price, seq). */
TEM_WUR int contracts_order_iter(ledger_state *st, uint64_t slot,
                                 int (*fn)(void *ctx, const contracts_order *o), void *ctx);

typedef struct {
    uint64_t slot, seq; /* seq: execution order within the slot */
    uint8_t seller[LEDGER_SECP_PUB_BYTES], buyer[LEDGER_SECP_PUB_BYTES];
    uint64_t qty_wh, price;
    int64_t value_uunit, buyer_fee_uunit, seller_fee_uunit, collateral_uunit;
} contracts_trade;
/* Unsettled trades of `slot` in execution order. */
TEM_WUR int contracts_trade_iter(ledger_state *st, uint64_t slot,
                                 int (*fn)(void *ctx, const contracts_trade *t), void *ctx);
/* The unsettled trade `seq` of `slot`: LEDGER_OK, LEDGER_ENOTFOUND (none, or settled),
 * LEDGER_ECORRUPT. */
TEM_WUR int contracts_trade_get(ledger_state *st, uint64_t slot, uint64_t seq, contracts_trade *out);
/* The seq the slot's next trade will get (0 for a slot with no record): a continuous-auction
 * fill with a positive quantity takes the next seq, in the order the receipts list them. */
TEM_WUR int contracts_trade_next_seq(ledger_state *st, uint64_t slot, uint64_t *next);

/* A match of a call-auction clearing that the DSO's grid check curtailed. (A continuous
 * auction's curtailments are in the receipts' fills instead.) Kept after settlement. */
typedef struct {
    uint64_t slot;
    bool executed;       /* part of the match executed: trade_seq names that trade */
    uint64_t trade_seq;
    uint8_t seller[LEDGER_SECP_PUB_BYTES], buyer[LEDGER_SECP_PUB_BYTES];
    uint64_t wanted_wh, allowed_wh, price;
    char binding[41];    /* "line F-T", "bus B" or a grid error name */
} contracts_curtailment;
/* Curtailed matches of `slot`'s clearing, executed ones by trade seq, then blocked ones. */
TEM_WUR int contracts_curtailment_iter(ledger_state *st, uint64_t slot,
                                       int (*fn)(void *ctx, const contracts_curtailment *c),
                                       void *ctx);

typedef struct {
    uint64_t slot;
    uint8_t pubkey[LEDGER_SECP_PUB_BYTES];
    int64_t export_wh, import_wh, sold_wh, bought_wh, delivered_wh, received_wh, shortfall_wh;
    int64_t burnt_wh, lack_wh, surplus_wh;
    int64_t trade_net_uunit, penalty_net_uunit, utility_net_uunit, unpaid_uunit;
    int64_t covered_wh, cover_wh, withheld_wh, fees_uunit, estimated, total_uunit;
} contracts_settlement;
/* Settlement lines of a settled `slot`, by public key (docs/market.md, "Settlement"). */
TEM_WUR int contracts_settlement_iter(ledger_state *st, uint64_t slot,
                                      int (*fn)(void *ctx, const contracts_settlement *l), void *ctx);
/* Every settlement line of every settled slot, by slot then public key. */
TEM_WUR int contracts_settlement_iter_all(ledger_state *st,
                                          int (*fn)(void *ctx, const contracts_settlement *l),
                                          void *ctx);

#endif
