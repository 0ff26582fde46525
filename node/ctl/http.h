/* http.h: temctl's view of a node: a blocking HTTP/1.1 client on libcurl (one easy handle per
 * connection, so keep-alive reuses one socket) and tolerant readers of the node's JSON API
 * (node/ctl/http.c), used by the node verbs, replay, the prosumer simulator and the testnet runner.
 *
 * Functions return 0 on success and -1 on failure with a message in the object's `err` or on
 * stderr, as each says. */
#ifndef CTL_HTTP_H
#define CTL_HTTP_H

#include "node/ctl/ctl.h"

#include <signal.h>

/* ------------------------------------------------------------------ HTTP client */
#define CTL_HTTP_HEADER_BYTES_MAX (16u << 10)
#define CTL_HTTP_BODY_BYTES_MAX (64u << 20)

typedef struct {
    int fd;              /* socket of the kept-alive connection, -1 when none (informational) */
    char host[128];
    uint16_t port;
    bool tls;            /* https:// */
    int timeout_ms;      /* per request: connect, send and the whole response */
    char err[320];       /* last failure */
    void *curl;          /* CURL easy handle, created on the first request; NULL before */
} ctl_http_conn;

typedef struct {
    int status;          /* HTTP status code */
    char *body;          /* tem_malloc'd, NUL-terminated (not counted in len) */
    size_t len;
} ctl_http_resp;

/* Parses "host:port", "http://host:port[/]" or "https://host:port[/]". No connection is made
 * yet. 0 or -1. For https the server certificate is verified against the system's CAs, or the
 * file named by the environment variable TEMCTL_CA_FILE (a test or private CA). */
int ctl_http_init(ctl_http_conn *c, const char *url, int timeout_ms);
void ctl_http_close(ctl_http_conn *c);
/* ctl_http_close drops the connection and the handle; the conn can be used again. */
/* One request on the keep-alive connection (libcurl reconnects if the server closed it).
 * body may be NULL when len is 0; ctype may be NULL. On 0 *out holds the response (free with
 * ctl_http_resp_free); on -1 (connect, timeout, malformed or oversize response) c->err says
 * why and the connection is closed. */
int ctl_http_request(ctl_http_conn *c, const char *method, const char *path, const char *ctype,
                     const void *body, size_t len, ctl_http_resp *out);
void ctl_http_resp_free(ctl_http_resp *r);

/* ------------------------------------------------------------------ the node API, tolerantly
 * Field names may differ slightly between node versions: every reader below accepts the
 * documented name and its known aliases, numbers as JSON integers, reals or decimal strings. */

/* GET path and parse the body as JSON. Returns a new reference or NULL (transport error, or
 * a body that is not JSON); *status gets the HTTP status (0 on transport errors). */
json_t *ctl_api_get(ctl_http_conn *c, const char *path, int *status);
/* First of the NULL-terminated names present in obj, as int64 (dflt when absent or junk). */
int64_t ctl_json_i64(const json_t *obj, const char *const *names, int64_t dflt);
/* First string of the names, or "" (never NULL). */
const char *ctl_json_str(const json_t *obj, const char *const *names);
/* First array of the names, or NULL. */
json_t *ctl_json_arr(const json_t *obj, const char *const *names);

/* POST /v1/tx with the binary SignedTx. Returns the HTTP status (202 on acceptance) or -1 on a
 * transport error. err gets the node's "code" (e.g. "ENONCE") or the transport reason. */
int ctl_api_submit(ctl_http_conn *c, const uint8_t *tx, size_t len, char *err, size_t errlen);

typedef struct {
    uint64_t height;
    char state_root[65], last_block_hash[65], chain_id[64];
} ctl_api_status;
/* GET /v1/status. 0 or -1. */
int ctl_api_status_get(ctl_http_conn *c, ctl_api_status *out);

enum { CTL_TX_UNKNOWN = 0, CTL_TX_PENDING = 1, CTL_TX_COMMITTED = 2, CTL_TX_REFUSED = 3 };
typedef struct {
    int status;           /* CTL_TX_* */
    uint64_t height;
    int64_t code;         /* receipt code, 0 = applied */
    char reason[96];
    uint64_t filled_wh, curtailed_wh, fills;
    int64_t minted_wh;
} ctl_api_tx;
/* GET /v1/tx/{txid}. 0 (also for "unknown") or -1 on a transport error. */
int ctl_api_tx_get(ctl_http_conn *c, const uint8_t txid[32], ctl_api_tx *out);

/* One trade as /v1/trades lists it. */
typedef struct {
    uint64_t quantity_wh, price, curtailed_wh, network_fee, loss_fee, height;
    char binding[40];
    uint8_t buyer[33], seller[33];
} ctl_api_trade;
/* GET /v1/trades?slot=N: *out tem_malloc'd (free with tem_free), *n entries. -1 on transport
 * error or a status other than 200. */
int ctl_api_trades_get(ctl_http_conn *c, uint64_t slot, ctl_api_trade **out, size_t *n);

/* The fills in the receipt of order txid, as trades (buyer and seller left zero; the fee
 * fields are this side's share). In a continuous double auction every trade appears once, in
 * the receipt of the order that took liquidity. 0, or -1 on transport error or not 200. */
int ctl_api_fills_get(ctl_http_conn *c, const uint8_t txid[32], ctl_api_trade **out, size_t *n);

typedef struct {
    int64_t money_uunit, escrow_uunit, tokens_wh, escrow_tokens_wh, debt_uunit;
    uint64_t next_nonce;
} ctl_api_account;
/* GET /v1/accounts/{hex}. 0, or -1 (transport error or not 200). */
int ctl_api_account_get(ctl_http_conn *c, const uint8_t pub[33], ctl_api_account *out);

/* GET /v1/blocks/{h}: the block's time and number of txs. 0 or -1. */
int ctl_api_block_get(ctl_http_conn *c, uint64_t height, uint64_t *time_ms, uint32_t *n_txs,
                      char hash_hex[65]);

/* ------------------------------------------------------------------ wall clock */
int64_t ctl_now_ms(void);
/* Sleeps until `until_ms` or until *stop becomes non-zero (checked every 50 ms). */
void ctl_sleep_until(int64_t until_ms, volatile sig_atomic_t *stop);

#endif
