/* indexer.c: the PostgreSQL indexer (docs/indexer.md).
 *
 * One worker thread. For the next height h = (indexed height in PostgreSQL) + 1 it reads block h
 * from the node's LMDB store, applies it to a private replay store (the same contracts code, no
 * signature or certificate checks: the node already committed it) and derives the rows:
 * the block, its txs with their receipts (read from the node's store and checked byte for byte
 * against the replay's), fills, trades, curtailments, settlements and every changed balance. The
 * replay is needed because gate closures and settlements run at block start and leave no receipt;
 * the state the node keeps is only the latest one.
 *
 * Exactly once: each block's rows and the new indexed height commit in ONE SQL transaction, which
 * first locks the height row and checks it is h - 1. A crash of temd or of the database at any
 * point leaves the height at a block boundary; the worker resumes from it (replaying blocks
 * 1..height into a fresh replay store first). A commit whose outcome is unknown (the connection
 * died) is settled by reading the height again. */
#include "node/indexer.h"

#include "contracts/contracts.h"
#include "node/node.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define IX_PARAMS_MAX 32
/* Settled slots are found by a time range; one wider than this is searched among all settlement
 * lines instead of slot by slot. */
#define IX_SLOT_WALK_MAX 100000
/* statements in flight in one pipeline round trip */
#define IX_PIPELINE_MAX 256
#define IX_TRADE_SLOTS_MAX 4096

struct node_indexer {
    pthread_t th;
    bool started;
    _Atomic bool stop;
    _Atomic uint64_t pg_height;
    char *url;
    char dir[NODE_PATH_MAX + 64];
    uint64_t poll_ms, retry_max_ms, backoff_ms;
    int log_level, log_format;
    ledger_store *src; /* the node's store: read only */
    const ledger_genesis *g;
    ledger_store *replay;
    contracts_market *mkt;
    ledger_executor ex;
    PGconn *pg;
    /* every account after the replay's last block, in key order (valid when acc_valid) */
    contracts_account *acc;
    size_t nacc, acc_cap;
    bool acc_valid;
    uint64_t settle_from; /* every slot below it that settled has its lines written (settle_valid) */
    bool settle_valid;
    contracts_account *gacc; /* genesis accounts, for height 0 rows */
    size_t ngacc;
    /* rows of the block waiting to be written */
    ledger_arena arena;
    struct ix_stmt *st;
    size_t nst, st_cap;
    uint64_t batch_height;
    bool batch_ready, oom;
    int curt_idx;
    bool warned_ahead;
    uint64_t run_first, run_blocks, run_rows, run_start_ms; /* blocks written since last caught up */
    bool tip_checked; /* the database's last block was compared with the node's since connecting */
};

typedef struct ix_stmt {
    const char *sql;
    int n;
    const char **vals;
} ix_stmt;

/* ------------------------------------------------------------------ logging */
__attribute__((format(printf, 3, 4))) static void ix_log(node_indexer *ix, int level, const char *fmt, ...) {
    if (level < ix->log_level) return;
    static const char *names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    char ts[32], msg[768];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (ix->log_format == NODE_LOG_JSON) {
        /* the node's JSON lines, without height and view (this thread has neither) */
        char t[64], m[800];
        snprintf(t, sizeof t, "%s.%03dZ", ts, (int)(now.tv_nsec / 1000000) % 1000);
        snprintf(m, sizeof m, "indexer: %s", msg);
        json_t *j = json_pack("{s:s, s:s, s:s}", "ts", t, "level", names[level & 3], "msg", m);
        char *line = j ? json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
        if (line) fprintf(stderr, "%s\n", line);
        free(line);
        json_decref(j);
        return;
    }
    fprintf(stderr, "%s.%03ldZ %-5s indexer: %s\n", ts, now.tv_nsec / 1000000, names[level & 3], msg);
}

/* Sleeps up to ms, waking early when asked to stop. */
static void ix_sleep(node_indexer *ix, uint64_t ms) {
    while (ms > 0 && !ix->stop) {
        uint64_t step = ms < 20 ? ms : 20;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)step * 1000000L};
        nanosleep(&ts, NULL);
        ms -= step;
    }
}

static uint64_t ix_mono_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

static void ix_backoff(node_indexer *ix) {
    ix_sleep(ix, ix->backoff_ms);
    ix->backoff_ms = ix->backoff_ms * 2 > ix->retry_max_ms ? ix->retry_max_ms : ix->backoff_ms * 2;
}

/* ------------------------------------------------------------------ the SQL schema */
static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS tem_indexer ("
    " id smallint PRIMARY KEY CHECK (id = 1), chain_id text NOT NULL, genesis_hash bytea NOT NULL,"
    " genesis_time_ms bigint NOT NULL, slot_ms bigint NOT NULL, height bigint NOT NULL,"
    " indexed_at timestamptz NOT NULL DEFAULT now());"
    "CREATE TABLE IF NOT EXISTS blocks ("
    " height bigint PRIMARY KEY, hash bytea NOT NULL UNIQUE, prev_hash bytea NOT NULL,"
    " time_ms bigint NOT NULL, time timestamptz NOT NULL, proposer bytea NOT NULL,"
    " tx_root bytea NOT NULL, state_root bytea NOT NULL, receipts_root bytea NOT NULL,"
    " n_txs integer NOT NULL, n_refused integer NOT NULL);"
    "CREATE TABLE IF NOT EXISTS txs ("
    " txid bytea PRIMARY KEY, height bigint NOT NULL REFERENCES blocks(height), pos integer NOT NULL,"
    " signer bytea NOT NULL, nonce numeric(20,0) NOT NULL, kind text NOT NULL,"
    " code integer NOT NULL, reason text NOT NULL,"
    " slot numeric(20,0), side text, price numeric(20,0), quantity_wh numeric(20,0), tif text,"
    " order_txid bytea, to_key bytea, amount numeric(20,0), import_wh numeric(20,0),"
    " export_wh numeric(20,0), bus bigint, role text,"
    " escrow_held numeric(20,0) NOT NULL, escrow_released numeric(20,0) NOT NULL,"
    " tokens_escrowed numeric(20,0) NOT NULL, tokens_released numeric(20,0) NOT NULL,"
    " minted_wh bigint NOT NULL, fee numeric(20,0) NOT NULL, remaining_wh numeric(20,0) NOT NULL,"
    " tx bytea NOT NULL, receipt bytea NOT NULL, UNIQUE (height, pos));"
    "CREATE TABLE IF NOT EXISTS fills ("
    " txid bytea NOT NULL REFERENCES txs(txid), idx integer NOT NULL, height bigint NOT NULL,"
    " slot numeric(20,0) NOT NULL, counter_txid bytea NOT NULL, quantity_wh numeric(20,0) NOT NULL,"
    " price numeric(20,0) NOT NULL, network_fee numeric(20,0) NOT NULL, loss_fee numeric(20,0) NOT NULL,"
    " curtailed_wh numeric(20,0) NOT NULL, binding text NOT NULL, PRIMARY KEY (txid, idx));"
    "CREATE TABLE IF NOT EXISTS trades ("
    " slot bigint NOT NULL, seq bigint NOT NULL, height bigint NOT NULL REFERENCES blocks(height),"
    " mechanism text NOT NULL, seller bytea NOT NULL, buyer bytea NOT NULL, quantity_wh bigint NOT NULL,"
    " price bigint NOT NULL, value_uunit bigint NOT NULL, buyer_fee_uunit bigint NOT NULL,"
    " seller_fee_uunit bigint NOT NULL, collateral_uunit bigint NOT NULL, taker_txid bytea, maker_txid bytea,"
    " PRIMARY KEY (slot, seq));"
    "CREATE TABLE IF NOT EXISTS curtailments ("
    " height bigint NOT NULL REFERENCES blocks(height), idx integer NOT NULL, slot numeric(20,0) NOT NULL,"
    " mechanism text NOT NULL, txid bytea, fill_idx integer, counter_txid bytea, trade_seq bigint,"
    " seller bytea, buyer bytea, wanted_wh numeric(20,0) NOT NULL, allowed_wh numeric(20,0) NOT NULL,"
    " curtailed_wh numeric(20,0) NOT NULL, price numeric(20,0) NOT NULL, binding text NOT NULL,"
    " PRIMARY KEY (height, idx));"
    "CREATE TABLE IF NOT EXISTS settlements ("
    " slot bigint NOT NULL, account bytea NOT NULL, height bigint NOT NULL REFERENCES blocks(height),"
    " slot_start timestamptz NOT NULL, export_wh bigint NOT NULL, import_wh bigint NOT NULL,"
    " sold_wh bigint NOT NULL, bought_wh bigint NOT NULL, delivered_wh bigint NOT NULL,"
    " received_wh bigint NOT NULL, shortfall_wh bigint NOT NULL, burnt_wh bigint NOT NULL,"
    " lack_wh bigint NOT NULL, surplus_wh bigint NOT NULL, trade_net_uunit bigint NOT NULL,"
    " penalty_net_uunit bigint NOT NULL, utility_net_uunit bigint NOT NULL, unpaid_uunit bigint NOT NULL,"
    " covered_wh bigint NOT NULL, cover_wh bigint NOT NULL, withheld_wh bigint NOT NULL,"
    " fees_uunit bigint NOT NULL, estimated bigint NOT NULL, total_uunit bigint NOT NULL,"
    " PRIMARY KEY (slot, account));"
    "CREATE TABLE IF NOT EXISTS balance_changes ("
    " height bigint NOT NULL, account bytea NOT NULL, bus bigint NOT NULL, role text NOT NULL,"
    " money_uunit bigint NOT NULL, money_escrow_uunit bigint NOT NULL, tokens_wh bigint NOT NULL,"
    " tokens_escrow_wh bigint NOT NULL, debt_uunit bigint NOT NULL, d_money_uunit bigint NOT NULL,"
    " d_money_escrow_uunit bigint NOT NULL, d_tokens_wh bigint NOT NULL, d_tokens_escrow_wh bigint NOT NULL,"
    " d_debt_uunit bigint NOT NULL, PRIMARY KEY (height, account));"
    "CREATE INDEX IF NOT EXISTS txs_signer ON txs (signer, height);"
    "CREATE INDEX IF NOT EXISTS trades_seller ON trades (seller);"
    "CREATE INDEX IF NOT EXISTS trades_buyer ON trades (buyer);"
    "CREATE INDEX IF NOT EXISTS settlements_account ON settlements (account, slot);"
    "CREATE INDEX IF NOT EXISTS curtailments_binding ON curtailments (binding, slot);"
    "CREATE INDEX IF NOT EXISTS balance_changes_account ON balance_changes (account, height);";

#define MS_TS(p) "(timestamptz 'epoch' + " p "::bigint * interval '1 millisecond')"
static const char SQL_BLOCK[] =
    "INSERT INTO blocks (height,hash,prev_hash,time_ms,time,proposer,tx_root,state_root,receipts_root,n_txs,"
    "n_refused) VALUES ($1,$2,$3,$4," MS_TS("$4") ",$5,$6,$7,$8,$9,$10)";
static const char SQL_TX[] =
    "INSERT INTO txs (txid,height,pos,signer,nonce,kind,code,reason,slot,side,price,quantity_wh,tif,order_txid,"
    "to_key,amount,import_wh,export_wh,bus,role,escrow_held,escrow_released,tokens_escrowed,tokens_released,"
    "minted_wh,fee,remaining_wh,tx,receipt) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,"
    "$18,$19,$20,$21,$22,$23,$24,$25,$26,$27,$28,$29)";
static const char SQL_FILL[] =
    "INSERT INTO fills (txid,idx,height,slot,counter_txid,quantity_wh,price,network_fee,loss_fee,curtailed_wh,"
    "binding) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)";
static const char SQL_TRADE[] =
    "INSERT INTO trades (slot,seq,height,mechanism,seller,buyer,quantity_wh,price,value_uunit,buyer_fee_uunit,"
    "seller_fee_uunit,collateral_uunit,taker_txid,maker_txid) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)";
static const char SQL_CURT[] =
    "INSERT INTO curtailments (height,idx,slot,mechanism,txid,fill_idx,counter_txid,trade_seq,seller,buyer,"
    "wanted_wh,allowed_wh,curtailed_wh,price,binding) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15)";
static const char SQL_SETTLE[] =
    "INSERT INTO settlements (slot,account,height,slot_start,export_wh,import_wh,sold_wh,bought_wh,delivered_wh,"
    "received_wh,shortfall_wh,burnt_wh,lack_wh,surplus_wh,trade_net_uunit,penalty_net_uunit,utility_net_uunit,"
    "unpaid_uunit,covered_wh,cover_wh,withheld_wh,fees_uunit,estimated,total_uunit) VALUES ($1,$2,$3,"
    MS_TS("$4") ",$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23,$24)";
static const char SQL_BAL[] =
    "INSERT INTO balance_changes (height,account,bus,role,money_uunit,money_escrow_uunit,tokens_wh,"
    "tokens_escrow_wh,debt_uunit,d_money_uunit,d_money_escrow_uunit,d_tokens_wh,d_tokens_escrow_wh,d_debt_uunit)"
    " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)";

/* ------------------------------------------------------------------ the batch of rows */
static void batch_clear(node_indexer *ix) {
    ledger_arena_reset(&ix->arena);
    ix->nst = 0;
    ix->batch_ready = false;
    ix->oom = false;
    ix->curt_idx = 0;
}

/* Parameter strings live in the batch arena; NULL is SQL NULL, so an allocation failure sets
 * ix->oom and the whole block is rebuilt later. */
static const char *p_str(node_indexer *ix, const char *s) {
    char *p = ledger_arena_strdup(&ix->arena, s);
    if (!p) ix->oom = true;
    return p;
}
static const char *p_u64(node_indexer *ix, uint64_t v) {
    char b[24];
    snprintf(b, sizeof b, "%llu", (unsigned long long)v);
    return p_str(ix, b);
}
static const char *p_i64(node_indexer *ix, int64_t v) {
    char b[24];
    snprintf(b, sizeof b, "%lld", (long long)v);
    return p_str(ix, b);
}
/* bytea in PostgreSQL's text form: \x followed by hex. */
static const char *p_hex(node_indexer *ix, const uint8_t *d, size_t n) {
    char *p = ledger_arena_alloc(&ix->arena, 2 * n + 3);
    if (!p) {
        ix->oom = true;
        return NULL;
    }
    p[0] = '\\';
    p[1] = 'x';
    tem_hex(p + 2, d, n);
    return p;
}

static void batch_add(node_indexer *ix, const char *sql, int n, const char *const *vals) {
    TEM_ASSERT(n > 0 && n <= IX_PARAMS_MAX);
    if (ix->oom) return;
    if (ix->nst == ix->st_cap) {
        size_t cap = ix->st_cap ? ix->st_cap * 2 : 256;
        ix_stmt *s = tem_realloc(ix->st, cap * sizeof *s);
        if (!s) {
            ix->oom = true;
            return;
        }
        ix->st = s;
        ix->st_cap = cap;
    }
    const char **v = ledger_arena_alloc(&ix->arena, (size_t)n * sizeof *v);
    if (!v) {
        ix->oom = true;
        return;
    }
    memcpy(v, vals, (size_t)n * sizeof *v);
    ix->st[ix->nst++] = (ix_stmt){sql, n, v};
}
#define ADD(ix, sql, ...)                                                                                              \
    do {                                                                                                               \
        const char *v_[] = {__VA_ARGS__};                                                                              \
        batch_add(ix, sql, (int)(sizeof v_ / sizeof v_[0]), v_);                                                       \
    } while (0)

/* ------------------------------------------------------------------ names */
static const char *role_name(int32_t r) {
    switch (r) {
    case TEM__V1__ROLE__PROSUMER: return "prosumer";
    case TEM__V1__ROLE__CONSUMER: return "consumer";
    case TEM__V1__ROLE__UTILITY: return "utility";
    case TEM__V1__ROLE__DSO: return "dso";
    case TEM__V1__ROLE__AGGREGATOR: return "aggregator";
    case TEM__V1__ROLE__METER: return "meter";
    case TEM__V1__ROLE__METER_DATA: return "meter_data";
    default: return "unspecified";
    }
}
static const char *side_name(int32_t s) {
    return s == TEM__V1__SIDE__BUY ? "buy" : s == TEM__V1__SIDE__SELL ? "sell" : "unspecified";
}

/* ------------------------------------------------------------------ the replay store */
static void rm_dir_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[NODE_PATH_MAX + 320];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
}

static int acc_collect(void *ctx, const contracts_account *a) {
    node_indexer *ix = ctx;
    if (ix->nacc == ix->acc_cap) {
        size_t cap = ix->acc_cap ? ix->acc_cap * 2 : 64;
        contracts_account *n = tem_realloc(ix->acc, cap * sizeof *n);
        if (!n) return LEDGER_ENOMEM;
        ix->acc = n;
        ix->acc_cap = cap;
    }
    ix->acc[ix->nacc++] = *a;
    return 0;
}
static int acc_snapshot(node_indexer *ix) {
    ix->nacc = 0;
    ix->acc_valid = false;
    int rc = contracts_account_iter(ledger_store_state(ix->replay), acc_collect, ix);
    if (rc != LEDGER_OK) return rc;
    ix->acc_valid = true;
    return LEDGER_OK;
}

static void replay_close(node_indexer *ix) {
    if (ix->replay) ledger_store_close(ix->replay);
    ix->replay = NULL;
    contracts_market_free(ix->mkt);
    ix->mkt = NULL;
    ix->acc_valid = false;
    ix->settle_valid = false;
}

/* A fresh replay store at height 0 (whatever the directory held is deleted: it is rebuilt from
 * the node's blocks, which are the truth). */
static int replay_open(node_indexer *ix) {
    replay_close(ix);
    rm_dir_files(ix->dir);
    if (mkdir(ix->dir, 0700) != 0 && errno != EEXIST) {
        ix_log(ix, NODE_LOG_ERROR, "cannot create %s: %s", ix->dir, strerror(errno));
        return -1;
    }
    if (contracts_market_new(&ix->mkt) != LEDGER_OK) return -1;
    contracts_executor(ix->mkt, &ix->ex);
    int rc = ledger_store_open(ix->dir, ix->g, contracts_genesis_init, NULL, &ix->replay);
    if (rc != LEDGER_OK) {
        ix_log(ix, NODE_LOG_ERROR, "cannot open the replay store %s: %s", ix->dir, ledger_strerror(rc));
        replay_close(ix);
        return -1;
    }
    if (!ix->gacc) {
        if (acc_snapshot(ix) != LEDGER_OK) return replay_close(ix), -1;
        ix->gacc = tem_malloc((ix->nacc ? ix->nacc : 1) * sizeof *ix->gacc);
        if (!ix->gacc) return replay_close(ix), -1;
        if (ix->nacc) memcpy(ix->gacc, ix->acc, ix->nacc * sizeof *ix->gacc);
        ix->ngacc = ix->nacc;
    }
    return 0;
}

static int replay_apply(node_indexer *ix, const uint8_t *blk, size_t len) {
    ledger_apply_info info;
    int rc = ledger_store_apply(ix->replay, blk, len, NULL, 0, &ix->ex, LEDGER_APPLY_NO_CERT | LEDGER_APPLY_SIGS_OK,
                                &info);
    if (rc != LEDGER_OK)
        ix_log(ix, NODE_LOG_ERROR, "replay of committed block %llu failed: %s",
               (unsigned long long)ledger_store_height(ix->replay) + 1, ledger_strerror(rc));
    return rc;
}

/* ------------------------------------------------------------------ slot arithmetic */
bool node_indexer_slot_range(int64_t genesis_ms, int64_t slot_ms, int64_t off, int64_t lo, int64_t hi,
                             uint64_t *first, uint64_t *last) {
    /* In 128 bits, so no input overflows; lo = INT64_MIN stands for minus infinity. */
    __int128 S = slot_ms, base = (__int128)genesis_ms + off, L = lo == INT64_MIN ? -((__int128)1 << 100) : lo;
    if (S <= 0 || (__int128)hi <= L) return false;
    /* smallest s with base + s*S > L: floor((L - base) / S) + 1 */
    __int128 x = L - base, f = (x >= 0 ? x / S : -((-x + S - 1) / S)) + 1;
    /* largest s with base + s*S <= hi: floor((hi - base) / S) */
    __int128 y = (__int128)hi - base, l = y >= 0 ? y / S : -((-y + S - 1) / S);
    if (f < 0) f = 0;
    if (l < f || l > (__int128)INT64_MAX) return false;
    *first = (uint64_t)f;
    *last = (uint64_t)l;
    return true;
}

/* ------------------------------------------------------------------ deriving one block's rows */
typedef struct {
    uint64_t slot;
    uint64_t next_seq; /* trades with seq >= this are new in the block */
    bool is_call;
} ix_tslot;

typedef struct {
    uint64_t slot;
    const uint8_t *taker, *maker; /* txids */
    uint64_t qty, price;
} ix_fillref;

typedef struct {
    node_indexer *ix;
    uint64_t height;
    ix_tslot *ts;
    const ix_fillref *fills;
    size_t nfills;
    size_t *fill_pos; /* per block: next fill to pair with a trade of ts->slot */
    bool seen_max;
    uint64_t max_seq;
} trade_ctx;

static int trade_max(void *ctx, const contracts_trade *t) {
    trade_ctx *c = ctx;
    if (!c->seen_max || t->seq >= c->max_seq) c->max_seq = t->seq;
    c->seen_max = true;
    return 0;
}

static int trade_emit(void *ctx, const contracts_trade *t) {
    trade_ctx *c = ctx;
    node_indexer *ix = c->ix;
    if (t->seq < c->ts->next_seq) return 0;
    /* A continuous-auction trade is one fill with a positive quantity, in the order the block's
     * receipts list them; pair them so each trade names its taker and maker order. */
    const uint8_t *taker = NULL, *maker = NULL;
    if (!c->ts->is_call) {
        size_t i = *c->fill_pos;
        while (i < c->nfills && c->fills[i].slot != t->slot) i++;
        if (i < c->nfills && c->fills[i].qty == t->qty_wh && c->fills[i].price == t->price) {
            taker = c->fills[i].taker;
            maker = c->fills[i].maker;
            *c->fill_pos = i + 1;
        }
    }
    ADD(ix, SQL_TRADE, p_u64(ix, t->slot), p_u64(ix, t->seq), p_u64(ix, c->height),
        c->ts->is_call ? "call" : "cda", p_hex(ix, t->seller, 33), p_hex(ix, t->buyer, 33), p_u64(ix, t->qty_wh),
        p_u64(ix, t->price), p_i64(ix, t->value_uunit), p_i64(ix, t->buyer_fee_uunit), p_i64(ix, t->seller_fee_uunit),
        p_i64(ix, t->collateral_uunit), taker ? p_hex(ix, taker, 32) : NULL, maker ? p_hex(ix, maker, 32) : NULL);
    return 0;
}

typedef struct {
    node_indexer *ix;
    uint64_t height;
    uint64_t first, last; /* slot range, for the settlement walk over every line */
    bool found;           /* a settlement line was seen; max_slot is the highest slot */
    uint64_t max_slot;
} row_ctx;

static int settle_max(void *ctx, const contracts_settlement *l) {
    row_ctx *c = ctx;
    if (!c->found || l->slot > c->max_slot) c->max_slot = l->slot;
    c->found = true;
    return 0;
}

static int curt_emit(void *ctx, const contracts_curtailment *k) {
    row_ctx *c = ctx;
    node_indexer *ix = c->ix;
    uint64_t curtailed = k->wanted_wh > k->allowed_wh ? k->wanted_wh - k->allowed_wh : 0;
    ADD(ix, SQL_CURT, p_u64(ix, c->height), p_i64(ix, ix->curt_idx++), p_u64(ix, k->slot), "call", NULL, NULL, NULL,
        k->executed ? p_u64(ix, k->trade_seq) : NULL, p_hex(ix, k->seller, 33), p_hex(ix, k->buyer, 33),
        p_u64(ix, k->wanted_wh), p_u64(ix, k->allowed_wh), p_u64(ix, curtailed), p_u64(ix, k->price),
        p_str(ix, k->binding));
    return 0;
}

static int settle_emit(void *ctx, const contracts_settlement *l) {
    row_ctx *c = ctx;
    node_indexer *ix = c->ix;
    (void)settle_max(ctx, l);
    int64_t start = (int64_t)ix->g->genesis_time_ms + (int64_t)l->slot * ix->g->market.slot_ms;
    ADD(ix, SQL_SETTLE, p_u64(ix, l->slot), p_hex(ix, l->pubkey, 33), p_u64(ix, c->height), p_i64(ix, start),
        p_i64(ix, l->export_wh), p_i64(ix, l->import_wh), p_i64(ix, l->sold_wh), p_i64(ix, l->bought_wh),
        p_i64(ix, l->delivered_wh), p_i64(ix, l->received_wh), p_i64(ix, l->shortfall_wh), p_i64(ix, l->burnt_wh),
        p_i64(ix, l->lack_wh), p_i64(ix, l->surplus_wh), p_i64(ix, l->trade_net_uunit),
        p_i64(ix, l->penalty_net_uunit), p_i64(ix, l->utility_net_uunit), p_i64(ix, l->unpaid_uunit),
        p_i64(ix, l->covered_wh), p_i64(ix, l->cover_wh), p_i64(ix, l->withheld_wh), p_i64(ix, l->fees_uunit),
        p_i64(ix, l->estimated), p_i64(ix, l->total_uunit));
    return 0;
}

static int settle_emit_in_range(void *ctx, const contracts_settlement *l) {
    row_ctx *c = ctx;
    return l->slot >= c->first && l->slot <= c->last ? settle_emit(ctx, l) : 0;
}

static void bal_row(node_indexer *ix, uint64_t height, const contracts_account *a, const contracts_account *old) {
    contracts_account z;
    if (!old) {
        memset(&z, 0, sizeof z);
        old = &z;
    }
    /* Balances are bounded by the supply (docs/market.md, section 9), so differences fit. */
    ADD(ix, SQL_BAL, p_u64(ix, height), p_hex(ix, a->pubkey, 33), p_u64(ix, a->bus), role_name(a->role),
        p_i64(ix, a->money_uunit), p_i64(ix, a->money_escrow_uunit), p_i64(ix, a->tokens_wh),
        p_i64(ix, a->tokens_escrow_wh), p_i64(ix, a->debt_uunit), p_i64(ix, a->money_uunit - old->money_uunit),
        p_i64(ix, a->money_escrow_uunit - old->money_escrow_uunit), p_i64(ix, a->tokens_wh - old->tokens_wh),
        p_i64(ix, a->tokens_escrow_wh - old->tokens_escrow_wh), p_i64(ix, a->debt_uunit - old->debt_uunit));
}

static bool acc_same(const contracts_account *a, const contracts_account *b) {
    return a->bus == b->bus && a->role == b->role && a->money_uunit == b->money_uunit &&
           a->money_escrow_uunit == b->money_escrow_uunit && a->tokens_wh == b->tokens_wh &&
           a->tokens_escrow_wh == b->tokens_escrow_wh && a->debt_uunit == b->debt_uunit;
}

/* Rows for every account that differs from the snapshot, then the snapshot becomes the new
 * state. Accounts are never deleted, only added (registrations). */
static int balance_rows(node_indexer *ix, uint64_t height) {
    contracts_account *old = ix->acc;
    size_t nold = ix->nacc;
    ix->acc = NULL;
    ix->nacc = ix->acc_cap = 0;
    int rc = acc_snapshot(ix);
    if (rc != LEDGER_OK) {
        tem_free(old);
        return rc;
    }
    size_t i = 0;
    for (size_t j = 0; j < ix->nacc; j++) {
        const contracts_account *a = &ix->acc[j];
        while (i < nold && memcmp(old[i].pubkey, a->pubkey, 33) < 0) i++;
        const contracts_account *o = i < nold && memcmp(old[i].pubkey, a->pubkey, 33) == 0 ? &old[i] : NULL;
        if (!o || !acc_same(a, o)) bal_row(ix, height, a, o);
    }
    tem_free(old);
    return LEDGER_OK;
}

/* Signer of a committed tx (the maker of a fill), from the node's store. */
static int tx_signer(node_indexer *ix, const uint8_t txid[32], uint8_t out[33]) {
    uint64_t h;
    uint32_t pos;
    uint8_t *rb, *bb;
    size_t rl, bl;
    int rc = ledger_store_receipt(ix->src, txid, &h, &pos, &rb, &rl);
    if (rc != LEDGER_OK) return rc;
    tem_free(rb);
    if ((rc = ledger_store_block(ix->src, h, &bb, &bl)) != LEDGER_OK) return rc;
    Tem__V1__Block *b = tem__v1__block__unpack(&ledger_pb_allocator, bl, bb);
    tem_free(bb);
    rc = LEDGER_ECORRUPT;
    if (b && pos < b->n_txs) {
        Tem__V1__TxBody *body =
            tem__v1__tx_body__unpack(&ledger_pb_allocator, b->txs[pos]->body.len, b->txs[pos]->body.data);
        if (body && body->signer.len == 33) {
            memcpy(out, body->signer.data, 33);
            rc = LEDGER_OK;
        }
        if (body) tem__v1__tx_body__free_unpacked(body, &ledger_pb_allocator);
    }
    if (b) tem__v1__block__free_unpacked(b, &ledger_pb_allocator);
    return rc;
}

static void add_tslot(ix_tslot *ts, size_t *n, uint64_t slot, bool is_call) {
    for (size_t i = 0; i < *n; i++)
        if (ts[i].slot == slot) return;
    if (*n < IX_TRADE_SLOTS_MAX) ts[(*n)++] = (ix_tslot){.slot = slot, .is_call = is_call};
}

/* Applies block `h` (bytes blk) to the replay store and fills the batch with its rows.
 * LEDGER_OK, or an error after which the replay store must be rebuilt. */
static int build_block(node_indexer *ix, uint64_t h, const uint8_t *blk, size_t len) {
    batch_clear(ix);
    int rc = LEDGER_OK;
    Tem__V1__Block *b = tem__v1__block__unpack(&ledger_pb_allocator, len, blk);
    ix_tslot *ts = NULL;
    ix_fillref *fr = NULL;
    size_t nts = 0, nfr = 0, frcap = 0;
    Tem__V1__TxBody **bodies = NULL;
    uint8_t(*ids)[32] = NULL;
    if (!b || !b->header || b->header->height != h) {
        rc = LEDGER_ECORRUPT;
        goto out;
    }
    TEM_ASSERT(ledger_store_height(ix->replay) + 1 == h);
    if (!ix->acc_valid && (rc = acc_snapshot(ix)) != LEDGER_OK) goto out;
    const ledger_genesis *g = ix->g;
    int64_t prev = (int64_t)ledger_store_last_time(ix->replay), now = (int64_t)b->header->time_ms;
    bool call = g->market.mechanism == LEDGER_MECH_CALL;
    size_t n = b->n_txs;
    ts = tem_calloc(IX_TRADE_SLOTS_MAX, sizeof *ts);
    bodies = tem_calloc(n ? n : 1, sizeof *bodies);
    ids = tem_calloc(n ? n : 1, 32);
    if (!ts || !bodies || !ids) {
        rc = LEDGER_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const Tem__V1__SignedTx *stx = b->txs[i];
        ledger_sha256(ids[i], stx->body.data, stx->body.len);
        bodies[i] = tem__v1__tx_body__unpack(&ledger_pb_allocator, stx->body.len, stx->body.data);
        if (!bodies[i]) {
            rc = LEDGER_ECORRUPT;
            goto out;
        }
        if (bodies[i]->kind_case == TEM__V1__TX_BODY__KIND_ORDER && !call)
            add_tslot(ts, &nts, bodies[i]->order->slot, false);
    }
    /* Call auctions clear at gate closure: the first block with time >= gate(s). */
    uint64_t gf, gl;
    /* Block 1 has no parent: everything due up to its time is due in it. */
    int64_t lo = h == 1 ? INT64_MIN : prev;
    bool gates = node_indexer_slot_range((int64_t)g->genesis_time_ms, g->market.slot_ms, -g->market.gate_closure_ms,
                                         lo, now, &gf, &gl);
    if (call && gates)
        for (uint64_t s = gf; s <= gl && nts < IX_TRADE_SLOTS_MAX; s++) add_tslot(ts, &nts, s, true);
    ledger_state *st = ledger_store_state(ix->replay);
    for (size_t i = 0; i < nts; i++) {
        trade_ctx c = {.ix = ix};
        if ((rc = contracts_trade_iter(st, ts[i].slot, trade_max, &c)) != LEDGER_OK) goto out;
        ts[i].next_seq = c.seen_max ? c.max_seq + 1 : 0;
    }

    if (!ix->settle_valid) { /* the first slot without lines yet, from the state before the block */
        row_ctx mc = {.ix = ix};
        if ((rc = contracts_settlement_iter_all(st, settle_max, &mc)) != LEDGER_OK) goto out;
        ix->settle_from = mc.found ? mc.max_slot + 1 : 0;
        ix->settle_valid = true;
    }
    if ((rc = replay_apply(ix, blk, len)) != LEDGER_OK) goto out;
    st = ledger_store_state(ix->replay);

    /* the block */
    uint8_t bh[32], sr[32], rr[32];
    if ((rc = ledger_block_hash(b->header, bh)) != LEDGER_OK) goto out;
    if ((rc = ledger_store_block_roots(ix->replay, h, sr, rr)) != LEDGER_OK) goto out;
    uint32_t refused = 0;
    const Tem__V1__BlockHeader *hd = b->header;
    size_t first_stmt = ix->nst;
    ADD(ix, SQL_BLOCK, p_u64(ix, h), p_hex(ix, bh, 32), p_hex(ix, hd->prev_hash.data, hd->prev_hash.len),
        p_u64(ix, hd->time_ms), p_hex(ix, hd->proposer.data, hd->proposer.len),
        p_hex(ix, hd->tx_root.data, hd->tx_root.len), p_hex(ix, sr, 32), p_hex(ix, rr, 32), p_u64(ix, n), "0");

    /* txs, receipts, fills, continuous-auction curtailments */
    for (size_t i = 0; i < n; i++) {
        uint8_t *ra = NULL, *rb = NULL;
        size_t la = 0, lb = 0;
        uint64_t ha = 0, hb = 0;
        uint32_t pa = 0, pb = 0;
        rc = ledger_store_receipt(ix->src, ids[i], &ha, &pa, &ra, &la);
        if (rc == LEDGER_OK) rc = ledger_store_receipt(ix->replay, ids[i], &hb, &pb, &rb, &lb);
        if (rc == LEDGER_OK && (ha != h || hb != h || pa != i || pb != i || la != lb || memcmp(ra, rb, la) != 0)) {
            char hex[65];
            tem_hex(hex, ids[i], 32);
            ix_log(ix, NODE_LOG_ERROR, "block %llu tx %s: the node's receipt differs from the replay's",
                   (unsigned long long)h, hex);
            rc = LEDGER_ECORRUPT;
        }
        tem_free(rb);
        if (rc != LEDGER_OK) {
            tem_free(ra);
            goto out;
        }
        Tem__V1__Receipt *r = tem__v1__receipt__unpack(&ledger_pb_allocator, la, ra);
        if (!r) {
            tem_free(ra);
            rc = LEDGER_ECORRUPT;
            goto out;
        }
        if (r->code != 0) refused++;
        const Tem__V1__TxBody *bd = bodies[i];
        const char *slot = NULL, *side = NULL, *price = NULL, *qty = NULL, *tif = NULL, *otx = NULL, *to = NULL,
                   *amount = NULL, *imp = NULL, *exp = NULL, *bus = NULL, *role = NULL;
        uint64_t oslot = 0;
        int32_t oside = 0;
        switch (bd->kind_case) {
        case TEM__V1__TX_BODY__KIND_ORDER:
            oslot = bd->order->slot;
            oside = bd->order->side;
            slot = p_u64(ix, bd->order->slot);
            side = side_name(bd->order->side);
            price = p_u64(ix, bd->order->price);
            qty = p_u64(ix, bd->order->quantity_wh);
            tif = bd->order->tif == TEM__V1__TIME_IN_FORCE__IOC ? "ioc" : bd->order->tif == 0 ? "gtc" : "unknown";
            break;
        case TEM__V1__TX_BODY__KIND_CANCEL:
            otx = p_hex(ix, bd->cancel->order_txid.data, bd->cancel->order_txid.len);
            break;
        case TEM__V1__TX_BODY__KIND_READING:
            slot = p_u64(ix, bd->reading->slot);
            imp = p_u64(ix, bd->reading->import_wh);
            exp = p_u64(ix, bd->reading->export_wh);
            break;
        case TEM__V1__TX_BODY__KIND_TRANSFER:
            to = p_hex(ix, bd->transfer->to.data, bd->transfer->to.len);
            amount = p_u64(ix, bd->transfer->amount);
            break;
        case TEM__V1__TX_BODY__KIND_DEPOSIT:
            to = p_hex(ix, bd->deposit->to.data, bd->deposit->to.len);
            amount = p_u64(ix, bd->deposit->amount);
            break;
        case TEM__V1__TX_BODY__KIND_REGISTER:
            to = p_hex(ix, bd->register_->pubkey.data, bd->register_->pubkey.len);
            bus = p_u64(ix, bd->register_->bus);
            role = role_name(bd->register_->role);
            break;
        case TEM__V1__TX_BODY__KIND_SET_TARIFF: slot = p_u64(ix, bd->set_tariff->from_slot); break;
        default: break;
        }
        const char *kind = ledger_tx_kind_name(bd->kind_case);
        /* the SignedTx as clients send it: body and sig are kept verbatim by protobuf-c */
        const char *txhex = NULL;
        size_t sl = tem__v1__signed_tx__get_packed_size(b->txs[i]);
        uint8_t *sb = tem_malloc(sl ? sl : 1);
        if (!sb) ix->oom = true;
        else {
            tem__v1__signed_tx__pack(b->txs[i], sb);
            txhex = p_hex(ix, sb, sl);
            tem_free(sb);
        }
        ADD(ix, SQL_TX, p_hex(ix, ids[i], 32), p_u64(ix, h), p_u64(ix, i), p_hex(ix, bd->signer.data, bd->signer.len),
            p_u64(ix, bd->nonce), kind ? kind : "unknown", p_i64(ix, r->code), p_str(ix, r->reason ? r->reason : ""),
            slot, side, price, qty, tif, otx, to, amount, imp, exp, bus, role, p_u64(ix, r->escrow_held),
            p_u64(ix, r->escrow_released), p_u64(ix, r->tokens_escrowed), p_u64(ix, r->tokens_released),
            p_i64(ix, r->minted_wh), p_u64(ix, r->fee), p_u64(ix, r->remaining_wh), txhex, p_hex(ix, ra, la));
        for (size_t f = 0; f < r->n_fills; f++) {
            const Tem__V1__Fill *fl = r->fills[f];
            const char *binding = fl->binding ? fl->binding : "";
            ADD(ix, SQL_FILL, p_hex(ix, ids[i], 32), p_u64(ix, f), p_u64(ix, h), p_u64(ix, oslot),
                p_hex(ix, fl->counter_txid.data, fl->counter_txid.len), p_u64(ix, fl->quantity_wh), p_u64(ix, fl->price),
                p_u64(ix, fl->network_fee), p_u64(ix, fl->loss_fee), p_u64(ix, fl->curtailed_wh), p_str(ix, binding));
            if (fl->quantity_wh > 0 && fl->counter_txid.len == 32) {
                if (nfr == frcap) {
                    size_t cap = frcap ? frcap * 2 : 64;
                    ix_fillref *nf = tem_realloc(fr, cap * sizeof *nf);
                    if (!nf) {
                        ix->oom = true;
                        continue;
                    }
                    fr = nf;
                    frcap = cap;
                }
                /* the counter_txid bytes live in r, freed below: keep a copy in the arena */
                uint8_t *mk = ledger_arena_alloc(&ix->arena, 32);
                if (!mk) {
                    ix->oom = true;
                    continue;
                }
                memcpy(mk, fl->counter_txid.data, 32);
                fr[nfr++] = (ix_fillref){oslot, ids[i], mk, fl->quantity_wh, fl->price};
            }
            if (fl->curtailed_wh > 0 && fl->counter_txid.len == 32) {
                uint8_t other[33];
                bool known = tx_signer(ix, fl->counter_txid.data, other) == LEDGER_OK;
                const uint8_t *seller = oside == TEM__V1__SIDE__SELL ? bd->signer.data : known ? other : NULL;
                const uint8_t *buyer = oside == TEM__V1__SIDE__BUY ? bd->signer.data : known ? other : NULL;
                ADD(ix, SQL_CURT, p_u64(ix, h), p_i64(ix, ix->curt_idx++), p_u64(ix, oslot), "cda",
                    p_hex(ix, ids[i], 32), p_u64(ix, f), p_hex(ix, fl->counter_txid.data, 32), NULL,
                    seller ? p_hex(ix, seller, 33) : NULL, buyer ? p_hex(ix, buyer, 33) : NULL,
                    p_u64(ix, fl->quantity_wh + fl->curtailed_wh), p_u64(ix, fl->quantity_wh), p_u64(ix, fl->curtailed_wh),
                    p_u64(ix, fl->price), p_str(ix, binding));
            }
        }
        tem__v1__receipt__free_unpacked(r, &ledger_pb_allocator);
        tem_free(ra);
    }
    if (!ix->oom) ix->st[first_stmt].vals[9] = p_u64(ix, refused);

    /* trades that appeared in the block (continuous fills, or a call clearing at gate closure) */
    size_t *fill_pos = tem_calloc(1, sizeof *fill_pos);
    if (!fill_pos) {
        rc = LEDGER_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < nts && rc == LEDGER_OK; i++) {
        *fill_pos = 0;
        trade_ctx c = {.ix = ix, .height = h, .ts = &ts[i], .fills = fr, .nfills = nfr, .fill_pos = fill_pos};
        rc = contracts_trade_iter(st, ts[i].slot, trade_emit, &c);
    }
    tem_free(fill_pos);
    if (rc != LEDGER_OK) goto out;

    row_ctx rcx = {.ix = ix, .height = h};
    /* call-auction curtailments of the slots this block closed */
    if (call && gates)
        for (uint64_t s = gf; s <= gl && rc == LEDGER_OK; s++) rc = contracts_curtailment_iter(st, s, curt_emit, &rcx);
    if (rc != LEDGER_OK) goto out;
    /* settlements: slots settle strictly in slot order, past their deadline, at most a bounded
     * number per block (docs/market.md, section 8), and their lines stay. So every line of a slot
     * at or after settle_from that exists now appeared in this block. */
    uint64_t sf, sl;
    int64_t soff;
    if (!__builtin_add_overflow(g->market.slot_ms, g->market.settlement_deadline_ms, &soff) &&
        node_indexer_slot_range((int64_t)g->genesis_time_ms, g->market.slot_ms, soff, INT64_MIN, now - 1, &sf, &sl) &&
        ix->settle_from <= sl) {
        sf = ix->settle_from;
        rcx.first = sf;
        rcx.last = sl;
        rcx.found = false;
        /* Slot by slot normally; over every settlement line when the range is wide (a chain
         * without meters settles only slots that traded, so the range can grow). */
        if (sl - sf < IX_SLOT_WALK_MAX)
            for (uint64_t s = sf; s <= sl && rc == LEDGER_OK; s++) rc = contracts_settlement_iter(st, s, settle_emit, &rcx);
        else
            rc = contracts_settlement_iter_all(st, settle_emit_in_range, &rcx);
        if (rc != LEDGER_OK) goto out;
        if (rcx.found) ix->settle_from = rcx.max_slot + 1;
    }
    if ((rc = balance_rows(ix, h)) != LEDGER_OK) goto out;
    if (ix->oom) {
        rc = LEDGER_ENOMEM;
        goto out;
    }
    ix->batch_height = h;
    ix->batch_ready = true;
out:
    if (bodies)
        for (size_t i = 0; i < (b ? b->n_txs : 0); i++)
            if (bodies[i]) tem__v1__tx_body__free_unpacked(bodies[i], &ledger_pb_allocator);
    tem_free(bodies);
    tem_free(ids);
    tem_free(ts);
    tem_free(fr);
    if (b) tem__v1__block__free_unpacked(b, &ledger_pb_allocator);
    if (rc != LEDGER_OK) batch_clear(ix);
    return rc;
}

/* ------------------------------------------------------------------ PostgreSQL */
static void pg_drop(node_indexer *ix) {
    if (ix->pg) PQfinish(ix->pg);
    ix->pg = NULL;
    ix->tip_checked = false;
}

static void pg_quiet(void *arg, const char *msg) {
    (void)arg;
    (void)msg; /* NOTICEs such as "relation already exists, skipping" */
}

/* Runs sql; true when its status is `want`. On failure logs and, if the connection is gone,
 * drops it. */
static bool pg_run(node_indexer *ix, const char *sql, int n, const char *const *vals, ExecStatusType want,
                   PGresult **keep) {
    PGresult *r = n ? PQexecParams(ix->pg, sql, n, NULL, vals, NULL, NULL, 0) : PQexec(ix->pg, sql);
    bool ok = r && PQresultStatus(r) == want;
    if (!ok) {
        char what[80];
        snprintf(what, sizeof what, "%.*s", 60, sql);
        ix_log(ix, NODE_LOG_WARN, "postgres: %s: %s", what,
               r ? PQresultErrorMessage(r) : PQerrorMessage(ix->pg));
    }
    if (ok && keep) *keep = r;
    else PQclear(r);
    return ok;
}

static void pg_fail(node_indexer *ix) {
    if (ix->pg && PQstatus(ix->pg) == CONNECTION_OK && PQtransactionStatus(ix->pg) != PQTRANS_IDLE) {
        PGresult *r = PQexec(ix->pg, "ROLLBACK");
        PQclear(r);
    }
    if (ix->pg && PQstatus(ix->pg) != CONNECTION_OK) pg_drop(ix);
}

/* Connects, creates the schema if needed and checks the database indexes this chain. 0 or -1. */
static int pg_connect(node_indexer *ix) {
    const char *keys[] = {"connect_timeout", "application_name", "dbname", NULL};
    const char *vals[] = {"10", "temd-indexer", ix->url, NULL};
    ix->pg = PQconnectdbParams(keys, vals, 1);
    if (!ix->pg || PQstatus(ix->pg) != CONNECTION_OK) {
        /* the message names host and port, never the password */
        ix_log(ix, NODE_LOG_WARN, "cannot connect to postgres: %s", ix->pg ? PQerrorMessage(ix->pg) : "out of memory");
        pg_drop(ix);
        return -1;
    }
    PQsetNoticeProcessor(ix->pg, pg_quiet, NULL);
    char gh[65];
    tem_hex(gh, ix->g->hash, 32);
    PGresult *r = NULL;
    /* One schema transaction; the advisory lock keeps two indexers from racing to create it. */
    if (!pg_run(ix, "BEGIN", 0, NULL, PGRES_COMMAND_OK, NULL) ||
        !pg_run(ix, "SELECT pg_advisory_xact_lock(7372657)", 0, NULL, PGRES_TUPLES_OK, NULL) ||
        !pg_run(ix, SCHEMA, 0, NULL, PGRES_COMMAND_OK, NULL) ||
        !pg_run(ix, "SELECT encode(genesis_hash,'hex'), height FROM tem_indexer WHERE id = 1", 0, NULL,
                PGRES_TUPLES_OK, &r))
        goto fail;
    if (PQntuples(r) == 0) {
        PQclear(r);
        r = NULL;
        char gt[24], sm[24];
        snprintf(gt, sizeof gt, "%llu", (unsigned long long)ix->g->genesis_time_ms);
        snprintf(sm, sizeof sm, "%lld", (long long)ix->g->market.slot_ms);
        const char *v[] = {ix->g->chain_id, gh, gt, sm};
        if (!pg_run(ix,
                    "INSERT INTO tem_indexer (id,chain_id,genesis_hash,genesis_time_ms,slot_ms,height) "
                    "VALUES (1,$1,decode($2,'hex'),$3,$4,0)",
                    4, v, PGRES_COMMAND_OK, NULL))
            goto fail;
        /* Height 0: the genesis balances, so a balance at any height is the latest row at or
         * below it. */
        batch_clear(ix);
        for (size_t i = 0; i < ix->ngacc; i++) bal_row(ix, 0, &ix->gacc[i], NULL);
        for (size_t i = 0; !ix->oom && i < ix->nst; i++)
            if (!pg_run(ix, ix->st[i].sql, ix->st[i].n, ix->st[i].vals, PGRES_COMMAND_OK, NULL)) goto fail;
        bool oom = ix->oom;
        batch_clear(ix);
        if (oom) goto fail;
        ix_log(ix, NODE_LOG_INFO, "created the index of chain %s", ix->g->chain_id);
    } else {
        bool same = strcmp(PQgetvalue(r, 0, 0), gh) == 0;
        PQclear(r);
        r = NULL;
        if (!same) {
            ix_log(ix, NODE_LOG_ERROR, "the database indexes another chain (genesis hash differs); not writing");
            goto fail;
        }
    }
    if (!pg_run(ix, "COMMIT", 0, NULL, PGRES_COMMAND_OK, NULL)) goto fail;
    ix_log(ix, NODE_LOG_INFO, "connected to postgres");
    return 0;
fail:
    PQclear(r);
    pg_drop(ix);
    return -1;
}

static int pg_height(node_indexer *ix, uint64_t *out) {
    PGresult *r = NULL;
    if (!pg_run(ix, "SELECT height FROM tem_indexer WHERE id = 1", 0, NULL, PGRES_TUPLES_OK, &r)) return pg_fail(ix), -1;
    int rc = -1;
    if (PQntuples(r) == 1) {
        *out = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
        rc = 0;
    }
    PQclear(r);
    return rc;
}

/* Results of `sent` pipelined statements and the sync after them. false when one failed (the
 * first failure is logged; the rest of the pipeline is then aborted by the server). */
static bool pg_pipeline_results(node_indexer *ix, size_t sent) {
    bool ok = true;
    for (size_t k = 0; k < sent; k++) {
        PGresult *r = PQgetResult(ix->pg);
        if (!r) return false; /* the connection broke */
        ExecStatusType st = PQresultStatus(r);
        if (st != PGRES_COMMAND_OK) {
            if (ok && st != PGRES_PIPELINE_ABORTED)
                ix_log(ix, NODE_LOG_WARN, "postgres: pipelined insert: %s", PQresultErrorMessage(r));
            ok = false;
        }
        PQclear(r);
        if ((r = PQgetResult(ix->pg)) != NULL) { /* each statement's results end with NULL */
            PQclear(r);
            return false;
        }
    }
    PGresult *r = PQgetResult(ix->pg);
    if (!r || PQresultStatus(r) != PGRES_PIPELINE_SYNC) ok = false;
    PQclear(r);
    return ok;
}

/* The batch's INSERTs inside the open transaction. In pipeline mode (libpq 14+), in groups of
 * IX_PIPELINE_MAX statements: one round trip per group instead of one per row, and the results
 * the server holds for us stay small, so neither side can block the other on a full socket.
 * A Sync inside an explicit transaction does not commit it. */
static bool pg_send_rows(node_indexer *ix) {
    if (PQenterPipelineMode(ix->pg) != 1) {
        for (size_t i = 0; i < ix->nst; i++)
            if (!pg_run(ix, ix->st[i].sql, ix->st[i].n, ix->st[i].vals, PGRES_COMMAND_OK, NULL)) return false;
        return true;
    }
    bool ok = true;
    for (size_t i = 0; ok && i < ix->nst;) {
        size_t end = ix->nst - i > IX_PIPELINE_MAX ? i + IX_PIPELINE_MAX : ix->nst, sent = 0;
        for (size_t k = i; k < end; k++, sent++)
            if (!PQsendQueryParams(ix->pg, ix->st[k].sql, ix->st[k].n, NULL, ix->st[k].vals, NULL, NULL, 0)) {
                ix_log(ix, NODE_LOG_WARN, "postgres: cannot send: %s", PQerrorMessage(ix->pg));
                ok = false;
                break;
            }
        if (PQpipelineSync(ix->pg) != 1) ok = false;
        if (!pg_pipeline_results(ix, sent)) ok = false;
        i = end;
    }
    if (PQexitPipelineMode(ix->pg) != 1) {
        /* results still pending: the connection is unusable for the synchronous calls that follow */
        pg_drop(ix);
        return false;
    }
    return ok;
}

/* Writes the batch in one transaction. 0 written, 1 the height moved (someone else wrote it, or
 * the database went back): nothing written, -1 database error. */
static int pg_write(node_indexer *ix) {
    TEM_ASSERT(ix->batch_ready);
    uint64_t h = ix->batch_height;
    PGresult *r = NULL;
    if (!pg_run(ix, "BEGIN", 0, NULL, PGRES_COMMAND_OK, NULL) ||
        !pg_run(ix, "SELECT height FROM tem_indexer WHERE id = 1 FOR UPDATE", 0, NULL, PGRES_TUPLES_OK, &r))
        return pg_fail(ix), -1;
    uint64_t l = PQntuples(r) == 1 ? strtoull(PQgetvalue(r, 0, 0), NULL, 10) : UINT64_MAX;
    PQclear(r);
    if (l + 1 != h) {
        pg_fail(ix); /* rolls back */
        return 1;
    }
    if (!pg_send_rows(ix)) return pg_fail(ix), -1;
    char hs[24];
    snprintf(hs, sizeof hs, "%llu", (unsigned long long)h);
    const char *v[] = {hs};
    if (!pg_run(ix, "UPDATE tem_indexer SET height = $1, indexed_at = now() WHERE id = 1", 1, v, PGRES_COMMAND_OK,
                NULL) ||
        !pg_run(ix, "COMMIT", 0, NULL, PGRES_COMMAND_OK, NULL))
        return pg_fail(ix), -1;
    return 0;
}

/* The block the database holds at height l must be the node's block l: a database filled from
 * another chain with the same genesis (a fork, a mixed-up restore) is never continued.
 * 1 same, -1 different (logged), 0 cannot tell yet. */
static int pg_check_tip(node_indexer *ix, uint64_t l) {
    uint8_t *blk;
    size_t len;
    int grc = ledger_store_block(ix->src, l, &blk, &len);
    if (grc != LEDGER_OK) {
        if (!ix->warned_ahead)
            ix_log(ix, NODE_LOG_WARN, "the database indexed height %llu, this node has no block %llu yet (%s); waiting",
                   (unsigned long long)l, (unsigned long long)l, ledger_strerror(grc));
        ix->warned_ahead = true;
        return 0;
    }
    Tem__V1__Block *b = tem__v1__block__unpack(&ledger_pb_allocator, len, blk);
    tem_free(blk);
    uint8_t bh[32];
    int hrc = b && b->header ? ledger_block_hash(b->header, bh) : LEDGER_EDECODE;
    if (b) tem__v1__block__free_unpacked(b, &ledger_pb_allocator);
    if (hrc != LEDGER_OK) return 0;
    char hs[24], hex[65];
    snprintf(hs, sizeof hs, "%llu", (unsigned long long)l);
    tem_hex(hex, bh, 32);
    const char *v[] = {hs};
    PGresult *r = NULL;
    if (!pg_run(ix, "SELECT encode(hash, 'hex') FROM blocks WHERE height = $1", 1, v, PGRES_TUPLES_OK, &r)) {
        pg_fail(ix);
        return 0;
    }
    int rc = PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), hex) == 0 ? 1 : -1;
    PQclear(r);
    if (rc < 0)
        ix_log(ix, NODE_LOG_ERROR, "the database's block %llu is not this node's block %llu (%.16s...); not writing",
               (unsigned long long)l, (unsigned long long)l, hex);
    return rc;
}

/* ------------------------------------------------------------------ the worker */
static void *worker(void *arg) {
    node_indexer *ix = arg;
    ix->backoff_ms = ix->poll_ms;
    bool caught_up_logged = false;
    while (!ix->stop) {
        if (!ix->replay && replay_open(ix) != 0) {
            ix_backoff(ix);
            continue;
        }
        if (!ix->pg && pg_connect(ix) != 0) {
            ix_backoff(ix);
            continue;
        }
        uint64_t l;
        if (pg_height(ix, &l) != 0) {
            ix_backoff(ix);
            continue;
        }
        ix->pg_height = l;
        if (!ix->tip_checked && l > 0) {
            int t = pg_check_tip(ix, l);
            if (t == 0) {
                ix_backoff(ix); /* the node has no block l yet, or the database is unreachable */
                continue;
            }
            if (t < 0) {
                pg_drop(ix);
                ix_backoff(ix);
                continue;
            }
        }
        ix->tip_checked = true;
        if (ix->batch_ready) {
            if (l >= ix->batch_height) { /* the commit went through before the connection died */
                batch_clear(ix);
                continue;
            }
            if (l + 1 == ix->batch_height) {
                int rc = pg_write(ix);
                if (rc == 0) {
                    ix->pg_height = ix->batch_height;
                    if (ix->run_blocks++ == 0) {
                        ix->run_first = ix->batch_height;
                        ix->run_start_ms = ix_mono_ms();
                    }
                    ix->run_rows += ix->nst;
                    ix_log(ix, NODE_LOG_DEBUG, "indexed block %llu (%zu rows)", (unsigned long long)ix->batch_height,
                           ix->nst);
                    batch_clear(ix);
                    ix->backoff_ms = ix->poll_ms;
                } else if (rc < 0) {
                    ix_backoff(ix);
                }
                continue; /* rc == 1: the height is read again and decides */
            }
            batch_clear(ix); /* the database went back (restored): rebuild from its height */
        }
        uint64_t sh = ledger_store_height(ix->replay);
        if (sh > l) {
            ix_log(ix, NODE_LOG_INFO, "database at height %llu, replay at %llu: rebuilding the replay",
                   (unsigned long long)l, (unsigned long long)sh);
            replay_close(ix);
            continue;
        }
        if (sh < l) {
            if (sh == 0)
                ix_log(ix, NODE_LOG_INFO, "replaying blocks 1..%llu indexed before", (unsigned long long)l);
            /* Rebuild the replay up to what the database already holds, without writing. */
            while (!ix->stop && sh < l) {
                uint8_t *blk;
                size_t len;
                int rc = ledger_store_block(ix->src, sh + 1, &blk, &len);
                if (rc != LEDGER_OK) break;
                rc = replay_apply(ix, blk, len);
                tem_free(blk);
                if (rc != LEDGER_OK) break;
                ix->acc_valid = false;
                ix->settle_valid = false;
                sh++;
            }
            if (sh < l && !ix->stop) {
                if (!ix->warned_ahead)
                    ix_log(ix, NODE_LOG_WARN, "database indexed height %llu but this node has only %llu; waiting",
                           (unsigned long long)l, (unsigned long long)sh);
                ix->warned_ahead = true;
                ix_backoff(ix); /* the replay stays where it is and goes on from there */
            }
            continue;
        }
        ix->warned_ahead = false;
        uint8_t *blk;
        size_t len;
        int rc = ledger_store_block(ix->src, l + 1, &blk, &len);
        if (rc == LEDGER_ENOTFOUND) {
            if (ix->run_blocks > 1) { /* a backlog was written: say how fast */
                uint64_t ms = ix_mono_ms() - ix->run_start_ms;
                ix_log(ix, NODE_LOG_INFO, "caught up: blocks %llu..%llu, %llu rows in %llu ms (%llu rows/s)",
                       (unsigned long long)ix->run_first, (unsigned long long)l, (unsigned long long)ix->run_rows,
                       (unsigned long long)ms, (unsigned long long)(ix->run_rows * 1000 / (ms ? ms : 1)));
            }
            ix->run_blocks = ix->run_rows = 0;
            if (!caught_up_logged) ix_log(ix, NODE_LOG_DEBUG, "caught up at height %llu", (unsigned long long)l);
            caught_up_logged = true;
            ix_sleep(ix, ix->poll_ms);
            continue;
        }
        caught_up_logged = false;
        if (rc != LEDGER_OK) {
            ix_log(ix, NODE_LOG_WARN, "cannot read block %llu: %s", (unsigned long long)l + 1, ledger_strerror(rc));
            ix_backoff(ix);
            continue;
        }
        rc = build_block(ix, l + 1, blk, len);
        tem_free(blk);
        if (rc != LEDGER_OK) {
            ix_log(ix, NODE_LOG_ERROR, "cannot derive the rows of block %llu: %s; rebuilding the replay",
                   (unsigned long long)l + 1, ledger_strerror(rc));
            replay_close(ix);
            ix_backoff(ix);
        }
    }
    pg_drop(ix);
    replay_close(ix);
    return NULL;
}

int node_indexer_start(const node_indexer_config *cfg, ledger_store *store, const ledger_genesis *g,
                       node_indexer **out) {
    TEM_ASSERT(cfg->postgres_url && cfg->postgres_url[0]);
    TEM_ASSERT(store && g);
    node_indexer *ix = tem_calloc(1, sizeof *ix);
    if (!ix) return -1;
    ix->url = tem_malloc(strlen(cfg->postgres_url) + 1);
    if (!ix->url) {
        tem_free(ix);
        return -1;
    }
    strcpy(ix->url, cfg->postgres_url);
    snprintf(ix->dir, sizeof ix->dir, "%s", cfg->replay_dir);
    ix->poll_ms = cfg->poll_ms ? cfg->poll_ms : 1;
    ix->retry_max_ms = cfg->retry_max_ms > ix->poll_ms ? cfg->retry_max_ms : ix->poll_ms;
    ix->log_level = cfg->log_level;
    ix->log_format = cfg->log_format;
    ix->src = store;
    ix->g = g;
    if (pthread_create(&ix->th, NULL, worker, ix) != 0) {
        tem_free(ix->url);
        tem_free(ix);
        return -1;
    }
    ix->started = true;
    *out = ix;
    return 0;
}

int node_indexer_start_for(const node_config *c, ledger_store *store, const ledger_genesis *g, node_indexer **out) {
    char dir[NODE_PATH_MAX + 32];
    snprintf(dir, sizeof dir, "%s/indexer-replay", c->data_dir);
    node_indexer_config ic = {.postgres_url = c->indexer_postgres_url, .replay_dir = dir, .poll_ms = c->indexer_poll_ms,
                              .retry_max_ms = c->indexer_retry_max_ms, .log_level = c->log_level,
                              .log_format = c->log_format};
    if (node_indexer_start(&ic, store, g, out) == 0) return 0;
    fprintf(stderr, "temd: cannot start the indexer thread\n");
    return -1;
}

void node_indexer_stop(node_indexer *ix) {
    if (!ix) return;
    ix->stop = true;
    if (ix->started) pthread_join(ix->th, NULL);
    batch_clear(ix);
    tem_free(ix->st);
    tem_free(ix->acc);
    tem_free(ix->gacc);
    /* the URL may carry a password */
    sodium_memzero(ix->url, strlen(ix->url));
    tem_free(ix->url);
    tem_free(ix);
}

uint64_t node_indexer_height(const node_indexer *ix) { return ix ? ix->pg_height : 0; }
