/* market_internal.h: what acct.c, market.c and settle.c share: the state key layout (one byte of
 * prefix per record kind, docs/market.md "State layout"), the fixed little-endian record codecs, and the
 * executor context. Not for use outside contracts/. */
#ifndef MARKET_INTERNAL_H
#define MARKET_INTERNAL_H

#include "contracts/cda_book.h"
#include "contracts/contracts.h"

/* Key prefixes owned by the market ('n' is the ledger's nonces, 'g' the grid check's). */
enum {
    MK_ACCT = 'a',   /* 'a' pub33                         -> account (48 bytes) */
    MK_ORDER = 'o',  /* 'o' slot(be8) seq(be8)            -> resting order (120 bytes) */
    MK_OINDEX = 'i', /* 'i' txid32                        -> slot(be8) seq(be8) */
    MK_TRADE = 't',  /* 't' slot(be8) tseq(be8)           -> unsettled trade (120 bytes) */
    MK_READ = 'r',   /* 'r' slot(be8) pub33               -> reading (16 bytes) */
    MK_SLOT = 's',   /* 's' slot(be8)                     -> active slot (16 bytes) */
    MK_SETTLED = 'x',/* 'x' slot(be8) pub33               -> settlement line (112 bytes) */
    MK_CURT = 'q',   /* 'q' slot(be8) id(be8)             -> call-auction curtailment (130 bytes):
                        id = the trade's tseq when part of the match executed, else
                        2^63 + n for the clearing's n-th fully blocked match */
    MK_METER = 'm',  /* 'm' meter pub33                   -> meter binding (72 bytes) */
    MK_PARAM = 'p',  /* 'p' 'c' -> counters; 'p' 't' from_slot(be8) -> tariffs;
                        'p' 'u' -> utility pub33; 'p' 'd' -> DSO pub33;
                        'p' 'm' -> meter-data pub33; 'p' 'l' -> next slot to settle (le8) */
};

#define PUB LEDGER_SECP_PUB_BYTES

/* Counter-orders the grid check may block for one incoming order (CDA) or one buyer (call
 * auction) before the walk moves on: bounds the work a tx or a clearing can cause when the
 * feeder blocks many crossing pairs (docs/market.md). */
#define MK_GRID_SKIPS_MAX 64

/* ------------------------------------------------------------------ records */
typedef struct {
    uint32_t bus;
    int32_t role;
    int64_t money, money_escrow, tokens, tokens_escrow, debt;
} mk_acct;
#define MK_ACCT_BYTES 48

typedef struct {
    uint8_t txid[32];
    uint8_t owner[PUB];
    uint8_t side; /* Tem__V1__Side: 1 BUY, 2 SELL */
    uint8_t tif;  /* Tem__V1__TimeInForce */
    uint32_t bus; /* owner's bus when the order arrived */
    uint64_t price, qty_wh, remaining_wh;
    int64_t escrow_price; /* buyer: money held for the price part = ceil(remaining * price / 1000) */
    int64_t escrow_fee;   /* buyer: money held for fees of the remaining part */
    int64_t escrow_coll;  /* seller: money held as collateral (docs/market.md, section 4) */
    uint64_t slot, seq;   /* from the key */
} mk_order;
#define MK_ORDER_BYTES 120

typedef struct {
    uint8_t seller[PUB], buyer[PUB];
    uint64_t qty_wh, price;
    int64_t value;      /* floor(qty * price / 1000): what the buyer pays the seller */
    int64_t buyer_fee;  /* network fee + buyer's loss share (+ seller share above value) */
    int64_t seller_fee; /* seller's loss share, taken from value */
    int64_t collateral; /* seller money held for this trade until settlement */
} mk_trade;
#define MK_TRADE_BYTES 120
/* 'q' value: seller33 buyer33 wanted_wh(le8) allowed_wh(le8) price(le8) binding(40, NUL-padded) */
#define MK_CURT_BYTES 130
#define MK_CURT_BINDING_BYTES 40

typedef struct {
    uint64_t next_tseq;
    uint32_t flags; /* MK_SLOT_CLOSED, MK_SLOT_BOUND */
} mk_slot;
#define MK_SLOT_BYTES 16
#define MK_SLOT_CLOSED 1u
/* The grid check curtailed a match of this slot: capacity was scarce, so undelivered trade
 * energy pays the withholding charge at settlement (docs/market.md, "Capacity hoarding"). */
#define MK_SLOT_BOUND 2u

/* A meter device ('m'): registered by an admin, the DSO or the utility, bound for life to one
 * participant (docs/market.md, "Meters"). Active for slots from_slot <= s < until_slot. */
typedef struct {
    uint8_t owner[PUB];
    uint32_t bus;
    int64_t import_cap_w, export_cap_w;
    uint64_t from_slot, until_slot;
} mk_meter;
#define MK_METER_BYTES 72
/* Catch-up settlement of slots that only have meters (no orders or trades): at most this many
 * slots per block, so a block after a long pause does bounded work. */
#define MK_SETTLE_SLOTS_PER_BLOCK 256

typedef struct {
    int64_t money, tokens, minted, burnt, deposited;
    uint64_t next_seq;
} mk_counters;
#define MK_COUNTERS_BYTES 48

typedef struct {
    uint32_t start_minute;
    int64_t retail, feed_in;
} mk_period;
typedef struct {
    uint32_t n;
    mk_period p[LEDGER_TARIFF_PERIODS_MAX];
} mk_tariff;

/* One line of a slot's settlement ('x'), all Wh or micro-units (docs/market.md, section 8). */
typedef struct {
    int64_t export_wh, import_wh, sold_wh, bought_wh, delivered_wh, received_wh, shortfall_wh;
    int64_t burnt_wh;          /* import met by trades: received + covered */
    int64_t lack_wh, surplus_wh;
    int64_t trade_net_uunit;   /* + from buyers for delivered and covered Wh, - to sellers */
    int64_t penalty_net_uunit; /* - cover at retail and withholding charge (seller); + charge (DSO) */
    int64_t utility_net_uunit; /* + feed-in for surplus, - retail for lack */
    int64_t unpaid_uunit;      /* what it could not pay (added to its debt) */
    int64_t covered_wh;        /* buyer: undelivered Wh it imported, bought by the seller at retail */
    int64_t cover_wh;          /* seller: its shortfall Wh its buyers imported (it paid retail) */
    int64_t withheld_wh;       /* seller: undelivered Wh in a slot whose capacity bound */
    int64_t fees_uunit;        /* network and loss fees paid for the slot's trades */
    int64_t estimated;         /* meters of this participant settled without a reading */
    int64_t total_uunit;       /* the money the slot moved to (+) or from (-) it, fees excluded */
} mk_settle_line;
#define MK_SETTLE_FIELDS 20
#define MK_SETTLE_BYTES (8 * MK_SETTLE_FIELDS)

/* ------------------------------------------------------------------ the executor context */
typedef struct {
    uint64_t slot;
    cda_book book;
} mk_book;

struct contracts_market {
    /* The book cache is valid for state `st` after block `height_done` completed and while
     * `in_block` matches the block being executed (see market.c, "Cache"). */
    ledger_state *st;
    bool valid, in_block;
    uint64_t height_done, height_began;
    mk_book *books;
    uint32_t n_books, cap_books;
};

/* ------------------------------------------------------------------ acct.c */
void mk_acct_key(uint8_t key[1 + PUB], const uint8_t pub[PUB]);
/* LEDGER_OK, LEDGER_ENOTFOUND, LEDGER_ECORRUPT. */
TEM_WUR int mk_acct_get(ledger_state *st, const uint8_t pub[PUB], mk_acct *a);
TEM_WUR int mk_acct_put(ledger_state *st, const uint8_t pub[PUB], const mk_acct *a);
TEM_WUR int mk_counters_get(ledger_state *st, mk_counters *c);
TEM_WUR int mk_counters_put(ledger_state *st, const mk_counters *c);
/* The utility's / DSO's account key, if one is set. */
bool mk_utility(ledger_state *st, uint8_t pub[PUB]);
bool mk_dso(ledger_state *st, uint8_t pub[PUB]);
bool mk_meter_data(ledger_state *st, uint8_t pub[PUB]);
TEM_WUR int mk_role_put(ledger_state *st, char which, const uint8_t pub[PUB]);

/* Meters. LEDGER_OK, LEDGER_ENOTFOUND, LEDGER_ECORRUPT. */
TEM_WUR int mk_meter_get(ledger_state *st, const uint8_t pub[PUB], mk_meter *m);
TEM_WUR int mk_meter_put(ledger_state *st, const uint8_t pub[PUB], const mk_meter *m);
void mk_meter_decode(const uint8_t v[MK_METER_BYTES], mk_meter *m);
/* Most Wh a meter of cap_w can measure in one slot: floor(cap_w * slot_ms / 3600000), at most
 * CONTRACTS_QTY_MAX_WH. */
int64_t mk_cap_wh(int64_t cap_w, int64_t slot_ms);
/* Next slot to settle ('p' 'l'; 0 when absent). */
TEM_WUR int mk_settle_next_get(ledger_state *st, uint64_t *slot);
TEM_WUR int mk_settle_next_put(ledger_state *st, uint64_t slot);
bool mk_pubkey_ok(const uint8_t *p, size_t len);

/* Tariffs: the set in force for `slot` and the period of its start minute. LEDGER_OK,
 * LEDGER_ENOTFOUND (no tariff), LEDGER_ECORRUPT, LEDGER_EINVAL (slot time overflows). */
TEM_WUR int mk_tariff_for_slot(ledger_state *st, const ledger_genesis *g, uint64_t slot,
                               mk_period *out);
/* Adds a set from `from_slot` on, replacing sets from there on and dropping sets that cover no
 * slot >= keep_from_slot. LEDGER_OK, CONTRACTS_ETARIFF (more than MK_TARIFF_SETS_MAX live
 * sets), LEDGER_ENOMEM, LEDGER_ECORRUPT. */
#define MK_TARIFF_SETS_MAX 64
TEM_WUR int mk_tariff_put(ledger_state *st, uint64_t from_slot, uint64_t keep_from_slot,
                          const mk_tariff *t);
/* 0 when sorted, starting at minute 0, below 1440, feed-in <= retail <= CONTRACTS_PRICE_MAX. */
int mk_tariff_check(const mk_tariff *t);

/* Slot timing, overflow-checked: false when the slot's times do not fit. */
bool mk_slot_times(const ledger_genesis *g, uint64_t slot, int64_t *start_ms, int64_t *gate_ms,
                   int64_t *end_ms, int64_t *deadline_ms);

/* Tx handlers (acct.c): each returns LEDGER_OK with rc->code set (0 or a refusal), or a fatal
 * LEDGER_* error. They run inside the tx's savepoint. */
TEM_WUR int mk_exec_register(ledger_state *st, const ledger_block_ctx *b, const ledger_tx *tx,
                             Tem__V1__Receipt *rc);
TEM_WUR int mk_exec_deposit(ledger_state *st, const ledger_block_ctx *b, const ledger_tx *tx,
                            Tem__V1__Receipt *rc);
TEM_WUR int mk_exec_transfer(ledger_state *st, const ledger_block_ctx *b, const ledger_tx *tx,
                             Tem__V1__Receipt *rc);
TEM_WUR int mk_exec_reading(ledger_state *st, const ledger_block_ctx *b, const ledger_tx *tx,
                            Tem__V1__Receipt *rc);
TEM_WUR int mk_exec_set_tariff(ledger_state *st, const ledger_block_ctx *b, const ledger_tx *tx,
                               Tem__V1__Receipt *rc);

/* ------------------------------------------------------------------ market.c */
TEM_WUR int mk_slot_get(ledger_state *st, uint64_t slot, mk_slot *s, bool *found);
TEM_WUR int mk_slot_put(ledger_state *st, uint64_t slot, const mk_slot *s);
/* Marks a refusal in the receipt. Always LEDGER_OK (ENOMEM if the reason cannot be copied). */
TEM_WUR int mk_refuse(Tem__V1__Receipt *rc, const ledger_block_ctx *b, int code);

/* ------------------------------------------------------------------ settle.c */
/* Settles `slot` (docs/market.md, "Settlement") and deletes its trades, readings and slot
 * record. LEDGER_OK or a fatal error. */
TEM_WUR int settle_slot(ledger_state *st, const ledger_block_ctx *b, uint64_t slot);
TEM_WUR int settle_line_get(ledger_state *st, uint64_t slot, const uint8_t pub[PUB],
                            mk_settle_line *out);

/* ------------------------------------------------------------------ codecs */
static inline void mk_put_i64(uint8_t *p, int64_t v) { tem_put_u64le(p, (uint64_t)v); }
static inline int64_t mk_get_i64(const uint8_t *p) { return (int64_t)tem_get_u64le(p); }

void mk_order_encode(const mk_order *o, uint8_t out[MK_ORDER_BYTES]);
void mk_order_decode(const uint8_t in[MK_ORDER_BYTES], mk_order *o);
void mk_trade_encode(const mk_trade *t, uint8_t out[MK_TRADE_BYTES]);
void mk_trade_decode(const uint8_t in[MK_TRADE_BYTES], mk_trade *t);

#endif
