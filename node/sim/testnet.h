/* testnet.h: what `temctl sim` and `temctl testnet` share: the real-time driver that runs
 * simulated prosumers against a chain, and the report (summary text, testnet-report.html with
 * inline SVG). They reach the node through node/ctl/http.h.
 *
 * Functions return 0 on success and -1 on failure with a message on stderr, as each says. */
#ifndef SIM_TESTNET_H
#define SIM_TESTNET_H

#include "node/ctl/ctl.h"
#include "node/ctl/http.h"
#include "node/pf/feeder.h"
#include "node/sim/sim.h"

#include <signal.h>

/* ------------------------------------------------------------------ the real-time driver */
/* One tx the driver submitted, and what became of it. */
typedef struct {
    uint8_t txid[32];
    uint32_t prosumer, run_slot;
    uint8_t kind;          /* 'o' order, 'r' reading */
    int http_status;       /* 202 accepted; other = refused at the door; -1 transport */
    ctl_api_tx result;     /* filled by ctl_simrun_collect */
} ctl_simrun_tx;

typedef struct {
    const ledger_genesis *g;        /* borrowed */
    ctl_sim_config cfg;
    uint32_t n;                     /* prosumers */
    ctl_sim_prosumer *p;            /* n, owned */
    uint8_t (*sec)[32];             /* n secret keys, owned, wiped on free */
    uint8_t (*pub)[33];
    uint64_t *nonce;                /* next nonce per prosumer */
    uint8_t (*msec)[32];            /* n meter secret keys (readings), owned, wiped on free */
    uint8_t (*mpub)[33];
    uint64_t *mnonce;               /* next nonce per meter */
    bool *has_meter;                /* false: readings go out under the trading key (refused) */
    uint64_t first_slot;            /* chain slot of run slot 0 */
    uint32_t slots;
    uint32_t slots_read;            /* slots whose readings are in: what an interrupted run covers */
    ctl_http_conn *nodes;           /* borrowed: where prosumer i submits (i % n_nodes) */
    uint32_t n_nodes;
    ctl_sim_slot *rec;              /* n * slots, rec[slot * n + i] */
    ctl_simrun_tx *txs;
    size_t n_txs, cap_txs;
    int64_t *last_price;            /* per run slot: VWAP seen in its trades snapshot, 0 = none */
    ctl_api_trade **snap;           /* per run slot: /v1/trades taken after its gate closure, or */
    size_t *n_snap;                 /* (a node without /v1/trades, CDA only) the fills in the */
    bool *have_snap;                /* receipts of the slot's orders */
    bool *snap_from_receipts;
    volatile sig_atomic_t *stop;
    bool quiet;
} ctl_simrun;

/* Allocates the arrays for n prosumers and `slots` slots. 0 or -1 (OOM). */
int ctl_simrun_init(ctl_simrun *r, const ledger_genesis *g, const ctl_sim_config *cfg, uint32_t n,
                    uint32_t slots);
void ctl_simrun_free(ctl_simrun *r);
/* The tariff band of a chain slot from the genesis' time-of-use periods (the chain's rule: the
 * period of the slot's start minute, UTC). */
void ctl_simrun_tariff(const ledger_genesis *g, uint64_t slot, int64_t *retail, int64_t *feed_in);
/* Wall time of the order and reading events of run slot k. */
int64_t ctl_simrun_order_ms(const ctl_simrun *r, uint32_t k);
int64_t ctl_simrun_reading_ms(const ctl_simrun *r, uint32_t k);
/* Earliest chain slot whose order time is at least `not_before_ms`. */
uint64_t ctl_simrun_first_slot(const ledger_genesis *g, int64_t not_before_ms);
/* Runs every slot in real time: orders, readings, trade snapshots. 0, or -1 when stopped. */
int ctl_simrun_run(ctl_simrun *r);
/* Polls every submitted tx until none is pending (or timeout_ms passes). 0. */
int ctl_simrun_collect(ctl_simrun *r, int timeout_ms);

/* Places n prosumers on the feeder's non-slack buses in file order, round robin: bus id,
 * the bus' peak load (W) and how many prosumers share it. Arrays of n. 0, or -1 when the
 * feeder has no bus to place on. */
int ctl_sim_place(const ctl_feeder *f, uint32_t n, uint32_t *bus, double *bus_load_w,
                  uint32_t *per_bus);
/* Simulated start minute that centres a run of `slots` on 12:30 (0 for a whole day). */
uint32_t ctl_sim_start_minute(uint32_t slots, uint32_t slot_minutes);

/* ------------------------------------------------------------------ report */
/* Renders the dataset the runner wrote (testnet-data.json, described in docs/sim.md) as the
 * plain-text summary on `out` and, if html_path is not NULL, as an HTML page with inline SVG
 * charts (no script, no network). 0 or -1 (message on stderr). */
int ctl_report_text(const json_t *data, FILE *out);
int ctl_report_html(const json_t *data, const char *html_path);

int ctl_sim_main(int argc, char **argv);
int ctl_testnet_main(int argc, char **argv);

#endif
