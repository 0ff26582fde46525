/* archive.h: what the node keeps of applied blocks beyond the consensus state (not consensus
 * data), written by the apply path and read by the HTTP API.
 *
 * Trade archive: trades live in the consensus state only until their slot is settled. So that
 * clients and the testnet report can still list a settled slot, before applying a block the node
 * stores the trade list of every slot whose gate has closed by that block's time (its trades are
 * final) under the store's node records ("trades/<slot>", JSON), once per slot. Any node that
 * applied the blocks holds the same archive; `temctl replay` re-derives trades from the chain.
 *
 * Curtailment notes: after a block, the fills the grid check curtailed, newest last, in a ring of
 * NODE_CURTAIL_KEEP. */
#ifndef NODE_ARCHIVE_H
#define NODE_ARCHIVE_H

#include <jansson.h>

#include "contracts/contracts.h"
#include "ledger/ledger.h"

#define NODE_ARCHIVED_KEEP 64
#define NODE_CURTAIL_KEEP 32

typedef struct {
    uint64_t height;
    uint8_t txid[32];
    uint64_t curtailed_wh;
    char binding[48];
} node_curtail;

/* Market and grid counters for /metrics, from the same receipts (every CDA trade is a fill of
 * the order that took liquidity, so each trade is counted once; call-auction clearings happen at
 * gate closure, outside receipts, and are not counted here). Bindings: one counter per
 * constraint named, up to NODE_BINDINGS_MAX names, the rest in `bindings_other`. */
#define NODE_BINDINGS_MAX 32
typedef struct {
    char name[48];
    uint64_t count;
} node_binding_count;

typedef struct {
    uint64_t trades, traded_wh, value_uunit, fees_uunit, curtailed_matches, curtailed_wh;
    uint64_t last_price;  /* VWAP of the last block with trades, micro-units per kWh */
    uint64_t last_height; /* that block */
    node_binding_count bindings[NODE_BINDINGS_MAX];
    uint32_t nbindings;
    uint64_t bindings_other;
} node_market_counts;

/* Zero-initialised by its owner; lives as long as the node. */
typedef struct {
    node_market_counts mc;
    uint64_t archived[NODE_ARCHIVED_KEEP]; /* slot + 1 of recently archived trade lists */
    uint32_t archived_next;
    node_curtail curtail[NODE_CURTAIL_KEEP];
    uint32_t curtail_next;
    uint64_t ncurtail;
} node_archive;

/* Before a block at time_ms is applied to s: archives the trades of every slot whose gate has
 * closed by then. Returns how many slots could not be written (retried before the next block);
 * *failed_slot (may be NULL) receives the first of them. */
uint32_t node_archive_trades(node_archive *a, ledger_store *s, uint64_t time_ms, uint64_t *failed_slot);
/* After a block at `height` is applied: notes its txs' curtailed fills and counts its trades,
 * fees and bindings (read from their stored receipts). txids is borrowed. */
void node_archive_note_curtailments(node_archive *a, ledger_store *s, uint64_t height, const uint8_t (*txids)[32],
                                    size_t ntx);
/* The i-th most recent curtailment note (0 = newest), or NULL past the last one kept. */
const node_curtail *node_archive_curtailment(const node_archive *a, uint32_t i);
/* A slot's trades and curtailments as the API lists them, from the state (JSON array, caller
 * owns; NULL when a record does not decode). */
json_t *node_archive_trades_json(ledger_state *st, uint64_t slot);

#endif
