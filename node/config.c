/* config.c: temd's configuration: defaults, the INI file (inih) and command-line flags, which
 * override the file. */
#include "node/node.h"
#include "net/http.h"

#include <errno.h>
#include <ini.h>

const char *node_strerror(int err) {
    switch (err) {
    case NODE_OK: return "ok";
#define NODE_X(name, val, msg) case val: return msg;
        NODE_ERRNO_MAP(NODE_X)
#undef NODE_X
    default: return ledger_strerror(err);
    }
}

void node_config_defaults(node_config *c) {
    memset(c, 0, sizeof *c);
    c->accept_observers = false;
    c->log_level = NODE_LOG_INFO;
    c->mempool_txs_max = 100000;
    c->mempool_nonce_window = 64;
    c->tail_check_blocks = 64;
    /* 60, not 20: every block costs each validator ~100 context switches and 8-9 fdatasyncs
     * whatever it holds, and at half saturation on a shared 2-core machine fewer, fuller blocks
     * gave the lower tail (docs/performance.md, "Latency at half saturation"). */
    c->batch_delay_ms = 60;
    c->max_clock_drift_ms = 5000;
    c->peer_rate_bytes_per_s = 64u << 20;
    c->peer_rate_msgs_per_s = 20000;
    c->http_body_bytes_max = 4u << 20;
    c->http_conns_max = 1024;
    c->http_conns_per_addr_max = NET_HTTP_CONNS_PER_ADDR_DEFAULT;
    c->http_rate_reqs_per_s = 200;
    c->http_rate_burst_ms = 5000;
    c->http_request_timeout_ms = NET_HTTP_REQUEST_TIMEOUT_MS_DEFAULT;
    c->peer_handshakes_max = 32;
    c->peer_handshakes_per_addr_max = 4;
    c->peer_handshakes_per_s = 100;
    c->peer_handshakes_per_addr_per_s = 10;
    c->peer_observer_queue_bytes_max = 16u << 20;
    c->peer_send_stall_timeout_ms = 20000;
    c->peer_frame_timeout_ms = 30000;
    c->admission_wait_ms_max = 2000;
    c->admission_signer_share_pct = 2;
    c->admission_headroom_pct = 10;
    c->admission_addr_share_pct = 50;
    c->pipeline_commit = true;
    c->regossip_age_ms = 2000;
    c->events_maker_read_bytes_max = 4u << 20;
    c->regossip_txs_per_s = 1000;
    c->indexer_poll_ms = 100;
    c->indexer_retry_max_ms = 5000;
    c->sync_snapshot_interval = 1000;
    c->sync_chunk_timeout_ms = 5000;
    c->sync_peer_inflight_max = 4;
    c->sync_serve_chunks_per_s = 20;
}

static bool parse_bool(const char *v, bool *out) {
    if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes")) return *out = true, true;
    if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no")) return *out = false, true;
    return false;
}

static bool parse_u64(const char *v, uint64_t *out) {
    if (!v || !*v || *v == '-') return false;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || *end) return false;
    *out = x;
    return true;
}

static int level_of(const char *v) {
    static const char *n[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(v, n[i])) return i;
    return -1;
}

/* One key: 1 = set, 0 = unknown key, -1 = bad value. */
static int set_key(node_config *c, const char *k, const char *v) {
    struct {
        const char *name;
        char *dst;
        size_t cap;
    } strs[] = {{"data_dir", c->data_dir, sizeof c->data_dir}, {"genesis", c->genesis, sizeof c->genesis},
                {"key", c->key, sizeof c->key},                {"listen", c->listen, sizeof c->listen},
                {"http", c->http, sizeof c->http},             {"tls_cert", c->tls_cert, sizeof c->tls_cert},
                {"tls_key", c->tls_key, sizeof c->tls_key}};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        if (strcmp(k, strs[i].name)) continue;
        if (strlen(v) >= strs[i].cap) return -1;
        snprintf(strs[i].dst, strs[i].cap, "%s", v);
        return 1;
    }
    if (!strcmp(k, "observer")) return parse_bool(v, &c->observer) ? 1 : -1;
    if (!strcmp(k, "accept_observers")) return parse_bool(v, &c->accept_observers) ? 1 : -1;
    if (!strcmp(k, "log_format")) {
        if (!strcmp(v, "text")) c->log_format = NODE_LOG_TEXT;
        else if (!strcmp(v, "json")) c->log_format = NODE_LOG_JSON;
        else return -1;
        return 1;
    }
    if (!strcmp(k, "mempool_log_reset")) return parse_bool(v, &c->mempool_log_reset) ? 1 : -1;
    if (!strcmp(k, "observer_key")) {
        uint8_t pk[32];
        if (c->n_observer_keys >= NODE_OBSERVER_KEYS_MAX || strlen(v) != 64 || tem_unhex(pk, 32, v) != 0) return -1;
        memcpy(c->observer_keys[c->n_observer_keys++], pk, 32);
        return 1;
    }
    if (!strcmp(k, "log_level")) {
        int l = level_of(v);
        if (l < 0) return -1;
        c->log_level = l;
        return 1;
    }
    struct {
        const char *name;
        uint64_t *dst;
    } nums[] = {{"block_interval_ms", &c->block_interval_ms}, {"batch_delay_ms", &c->batch_delay_ms},
                {"max_clock_drift_ms", &c->max_clock_drift_ms}, {"peer_rate_bytes_per_s", &c->peer_rate_bytes_per_s},
                {"peer_rate_msgs_per_s", &c->peer_rate_msgs_per_s}, {"http_body_bytes_max", &c->http_body_bytes_max},
                {"http_rate_reqs_per_s", &c->http_rate_reqs_per_s}, {"tail_check_blocks", &c->tail_check_blocks},
                {"admission_wait_ms_max", &c->admission_wait_ms_max}, {"regossip_txs_per_s", &c->regossip_txs_per_s}};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++)
        if (!strcmp(k, nums[i].name)) return parse_u64(v, nums[i].dst) ? 1 : -1;
    /* Limits that must be positive and fit the HTTP server's ranges. */
    struct {
        const char *name;
        uint64_t *dst, max;
    } lims[] = {{"http_conns_max", &c->http_conns_max, 1u << 20},
                {"http_conns_per_addr_max", &c->http_conns_per_addr_max, 1u << 20},
                {"http_rate_burst_ms", &c->http_rate_burst_ms, 3600000},
                {"http_request_timeout_ms", &c->http_request_timeout_ms, 3600000},
                {"peer_handshakes_max", &c->peer_handshakes_max, 4096},
                {"peer_handshakes_per_addr_max", &c->peer_handshakes_per_addr_max, 4096},
                {"peer_handshakes_per_s", &c->peer_handshakes_per_s, 100000},
                {"peer_handshakes_per_addr_per_s", &c->peer_handshakes_per_addr_per_s, 100000},
                {"peer_observer_queue_bytes_max", &c->peer_observer_queue_bytes_max, 1ull << 32},
                {"peer_send_stall_timeout_ms", &c->peer_send_stall_timeout_ms, 3600000},
                {"peer_frame_timeout_ms", &c->peer_frame_timeout_ms, 3600000},
                {"admission_signer_share_pct", &c->admission_signer_share_pct, 100},
                {"admission_addr_share_pct", &c->admission_addr_share_pct, 100},
                {"admission_headroom_pct", &c->admission_headroom_pct, 50},
                {"regossip_age_ms", &c->regossip_age_ms, 3600000},
                {"events_maker_read_bytes_max", &c->events_maker_read_bytes_max, 1ull << 32}};
    for (size_t i = 0; i < sizeof lims / sizeof lims[0]; i++) {
        if (strcmp(k, lims[i].name)) continue;
        uint64_t y;
        if (!parse_u64(v, &y) || y == 0 || y > lims[i].max) return -1;
        *lims[i].dst = y;
        return 1;
    }
    uint64_t x;
    /* [indexer] keys arrive here prefixed "indexer_" (from the section or a --indexer-* flag) */
    if (!strcmp(k, "indexer_postgres_url")) {
        if (strlen(v) >= sizeof c->indexer_postgres_url) return -1;
        snprintf(c->indexer_postgres_url, sizeof c->indexer_postgres_url, "%s", v);
        return 1;
    }
    if (!strcmp(k, "indexer_poll_ms") || !strcmp(k, "indexer_retry_max_ms")) {
        if (!parse_u64(v, &x) || x == 0 || x > 3600000) return -1;
        *(k[8] == 'p' ? &c->indexer_poll_ms : &c->indexer_retry_max_ms) = x;
        return 1;
    }
    /* [sync] keys arrive prefixed "sync_"; --state-sync is sync_enable */
    if (!strcmp(k, "sync_enable") || !strcmp(k, "state_sync")) return parse_bool(v, &c->sync_enable) ? 1 : -1;
    if (!strcmp(k, "pipeline_commit")) return parse_bool(v, &c->pipeline_commit) ? 1 : -1;
    if (!strcmp(k, "sync_test_corrupt_chunks")) return parse_bool(v, &c->sync_test_corrupt_chunks) ? 1 : -1;
    if (!strcmp(k, "sync_trust_hash")) {
        if (strlen(v) != 64 || tem_unhex(c->sync_trust_hash, 32, v) != 0) return -1;
        c->sync_trust_hash_set = true;
        return 1;
    }
    struct {
        const char *name;
        uint64_t *dst, min, max;
    } syn[] = {{"sync_snapshot_interval", &c->sync_snapshot_interval, 0, 1ull << 32},
               {"sync_trust_height", &c->sync_trust_height, 0, UINT64_MAX - 1},
               {"sync_chunk_timeout_ms", &c->sync_chunk_timeout_ms, 1, 3600000},
               {"sync_peer_inflight_max", &c->sync_peer_inflight_max, 1, 64},
               {"sync_chunk_delay_ms", &c->sync_chunk_delay_ms, 0, 3600000},
               {"sync_serve_chunks_per_s", &c->sync_serve_chunks_per_s, 1, 100000}};
    for (size_t i = 0; i < sizeof syn / sizeof syn[0]; i++) {
        if (strcmp(k, syn[i].name)) continue;
        if (!parse_u64(v, &x) || x < syn[i].min || x > syn[i].max) return -1;
        *syn[i].dst = x;
        return 1;
    }
    if (!strcmp(k, "mempool_txs_max")) {
        if (!parse_u64(v, &x) || x == 0 || x > 10000000) return -1;
        c->mempool_txs_max = (uint32_t)x;
        return 1;
    }
    if (!strcmp(k, "mempool_nonce_window")) {
        if (!parse_u64(v, &x) || x == 0 || x > 100000) return -1;
        c->mempool_nonce_window = (uint32_t)x;
        return 1;
    }
    return 0;
}

typedef struct {
    node_config *c;
    char *err;
    size_t errlen;
    bool bad;
} ini_ctx;

static int ini_cb(void *user, const char *section, const char *name, const char *value) {
    ini_ctx *x = user;
    char pname[96];
    if (!strcmp(section, "indexer") || !strcmp(section, "sync")) {
        snprintf(pname, sizeof pname, "%s_%s", section, name);
        name = pname;
    } else if (strcmp(section, "node") != 0) {
        snprintf(x->err, x->errlen, "unknown section [%s]", section);
        x->bad = true;
        return 0;
    }
    int r = set_key(x->c, name, value);
    if (r == 1) return 1;
    /* the database URL may hold a password: never echo it */
    if (r != 0 && !strcmp(name, "indexer_postgres_url")) snprintf(x->err, x->errlen, "bad value for %s", name);
    else snprintf(x->err, x->errlen, r == 0 ? "unknown key %s" : "bad value for %s: %s", name, value);
    x->bad = true;
    return 0;
}

/* A relative path from the file is joined to the file's folder. false when it does not fit. */
static bool rebase(char *field, size_t cap, const char *dir) {
    if (!field[0] || field[0] == '/' || !dir[0]) return true;
    char joined[NODE_PATH_MAX * 2];
    int w = snprintf(joined, sizeof joined, "%s/%s", dir, field);
    if (w < 0 || (size_t)w >= cap) return false;
    memcpy(field, joined, (size_t)w + 1);
    return true;
}

int node_config_load(node_config *c, const char *path, char *err, size_t errlen) {
    ini_ctx x = {c, err, errlen, false};
    /* Fields are rebased only if the file set them: remember what they were. */
    node_config before = *c;
    int rc = ini_parse(path, ini_cb, &x);
    if (rc < 0) {
        snprintf(err, errlen, "cannot open %s", path);
        return NODE_ECONFIG;
    }
    if (rc > 0 || x.bad) {
        char why[256];
        snprintf(why, sizeof why, "%s", x.bad ? err : "syntax error");
        snprintf(err, errlen, "%s line %d: %s", path, rc, why);
        return NODE_ECONFIG;
    }
    char dir[NODE_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    struct {
        const char *name;
        char *v, *was;
        size_t cap;
    } paths[] = {{"data_dir", c->data_dir, before.data_dir, sizeof c->data_dir},
                 {"genesis", c->genesis, before.genesis, sizeof c->genesis},
                 {"key", c->key, before.key, sizeof c->key},
                 {"tls_cert", c->tls_cert, before.tls_cert, sizeof c->tls_cert},
                 {"tls_key", c->tls_key, before.tls_key, sizeof c->tls_key}};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        if (!strcmp(paths[i].v, paths[i].was)) continue;
        if (!rebase(paths[i].v, paths[i].cap, dir)) {
            snprintf(err, errlen, "%s: %s is too long once joined to %s", path, paths[i].name, dir);
            return NODE_ECONFIG;
        }
    }
    snprintf(c->config, sizeof c->config, "%s", path);
    return NODE_OK;
}

int node_config_flags(node_config *c, int argc, char **argv, char *err, size_t errlen) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument %s", a);
            return NODE_ECONFIG;
        }
        char name[64];
        snprintf(name, sizeof name, "%s", a + 2);
        for (char *p = name; *p; p++)
            if (*p == '-') *p = '_';
        if (!strcmp(name, "config")) {
            i++; /* handled by the caller before the flags */
            continue;
        }
        const char *v;
        char *eq = strchr(name, '=');
        if (eq) {
            *eq = 0;
            v = a + 2 + (eq - name) + 1;
        } else if (!strcmp(name, "observer") || !strcmp(name, "accept_observers") || !strcmp(name, "mempool_log_reset") ||
                   !strcmp(name, "state_sync") || !strcmp(name, "sync_enable")) {
            v = "true";
        } else {
            if (i + 1 >= argc) {
                snprintf(err, errlen, "--%s needs a value", a + 2);
                return NODE_ECONFIG;
            }
            v = argv[++i];
        }
        int r = set_key(c, name, v);
        if (r != 1) {
            snprintf(err, errlen, r == 0 ? "unknown option --%s" : "bad value for --%s", a + 2);
            return NODE_ECONFIG;
        }
    }
    return NODE_OK;
}
