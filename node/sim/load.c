/* load.c: the open-loop load generator (load.h): seed-derived signers, a local cluster for
 * benches and tests, pre-signed orders offered at a fixed rate over libcurl's multi interface,
 * commits followed on GET /v1/events, one JSON line of results per phase; and `temctl load`. */
#include "node/sim/load.h"

#include "node/ctl/http.h"

#include <curl/curl.h>
#include <errno.h>
#include <sodium.h>
#include <math.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void ctl_load_signer_key(uint64_t seed, uint32_t i, uint8_t sec[32], uint8_t pub[33]) {
    for (uint32_t k = 0;; k++) {
        uint8_t in[8 + 8 + 4 + 4];
        memcpy(in, "tem-load", 8);
        tem_put_u64le(in + 8, seed);
        tem_put_u32le(in + 16, i);
        tem_put_u32le(in + 20, k);
        ledger_sha256(sec, in, sizeof in);
        if (ledger_secp_pubkey(sec, pub) == LEDGER_OK) return;
    }
}

void ctl_load_scale_key(uint32_t i, uint8_t pub[33]) {
    uint8_t in[13] = "tem-scale";
    tem_put_u32le(in + 9, i);
    pub[0] = 0x02;
    ledger_sha256(pub + 1, in, sizeof in);
}

/* ================================================================== local cluster */
void ctl_load_cluster_stop(ctl_load_cluster *c) {
    for (uint32_t i = 0; i < c->n; i++)
        if (c->pid[i] > 0) kill(c->pid[i], SIGTERM);
    for (uint32_t i = 0; i < c->n; i++) {
        if (c->pid[i] <= 0) continue;
        for (int k = 0; k < 50; k++) {
            if (waitpid(c->pid[i], NULL, WNOHANG) == c->pid[i]) {
                c->pid[i] = 0;
                break;
            }
            usleep(100 * 1000);
        }
        if (c->pid[i] > 0) {
            kill(c->pid[i], SIGKILL);
            waitpid(c->pid[i], NULL, 0);
            c->pid[i] = 0;
        }
    }
}

/* The genesis g with `extra` more participants appended to its "participants" array, streamed:
 * a million of them as jansson objects would hold most of a GiB here beside the nodes. */
static int write_genesis_extra(json_t *g, uint32_t extra, const char *path) {
    json_t *parts = json_incref(json_object_get(g, "participants"));
    if (!parts || json_object_del(g, "participants") != 0) {
        json_decref(parts);
        return -1;
    }
    char *head = json_dumps(g, JSON_COMPACT), *list = json_dumps(parts, JSON_COMPACT);
    json_decref(parts);
    FILE *f = fopen(path, "w");
    /* head is {...} (chain id and the rest: never empty), list is [...]: reopen both, append */
    bool ok = head && list && f && strlen(head) > 2 && strlen(list) >= 2;
    if (ok) {
        size_t hl = strlen(head), ll = strlen(list);
        ok = fwrite(head, 1, hl - 1, f) == hl - 1 && fputs(",\"participants\":", f) >= 0 &&
             fwrite(list, 1, ll - 1, f) == ll - 1;
        for (uint32_t i = 0; ok && i < extra; i++) {
            uint8_t pub[33];
            char hex[67];
            ctl_load_scale_key(i, pub);
            tem_hex(hex, pub, 33);
            ok = fprintf(f, "%s{\"pubkey\":\"%s\",\"bus\":1,\"role\":\"prosumer\",\"money_uunit\":1000000}",
                         ll > 2 || i ? "," : "", hex) > 0;
        }
        ok = ok && fputs("]}\n", f) >= 0;
    }
    if (f && fclose(f) != 0) ok = false;
    free(head);
    free(list);
    return ok ? 0 : -1;
}

int ctl_load_cluster_genesis(const ctl_load_cluster_config *cfg, ctl_load_cluster *c) {
    if ((uint64_t)cfg->signers + cfg->extra_participants > LEDGER_PARTICIPANTS_MAX) {
        fprintf(stderr, "load: %u signers and %u more participants: a genesis holds at most %d\n", cfg->signers,
                cfg->extra_participants, LEDGER_PARTICIPANTS_MAX);
        return -1;
    }
    char path[600], h[67];
    json_t *g = json_object(), *vals = json_array(), *parts = json_array();
    uint64_t now_ms = (uint64_t)time(NULL) * 1000;
    json_object_set_new(g, "chain_id", json_string("tem-load"));
    /* Whole minutes: slots start on the minute, as a reader of the logs expects. */
    json_object_set_new(g, "genesis_time_ms", json_integer((json_int_t)(now_ms - now_ms % 60000)));
    for (uint32_t i = 0; i < cfg->n_nodes; i++) {
        ledger_keyfile kf = {.is_validator = 1};
        if (ledger_ed_keygen(kf.ed_sec, kf.ed_pub) != LEDGER_OK) goto fail;
        snprintf(path, sizeof path, "%s/v%u.key", cfg->dir, i);
        if (ledger_keyfile_write(path, &kf) != LEDGER_OK) goto fail;
        tem_hex(h, kf.ed_pub, 32);
        char name[16], addr[32];
        snprintf(name, sizeof name, "v%u", i);
        snprintf(addr, sizeof addr, "127.0.0.1:%d", cfg->base_port + (int)i);
        snprintf(c->http[i], sizeof c->http[i], "127.0.0.1:%d", cfg->base_port + 10 + (int)i);
        json_array_append_new(vals, json_pack("{s:s,s:s,s:s,s:s}", "name", name, "pubkey", h, "address", addr, "http", c->http[i]));
    }
    for (uint32_t i = 0; i < cfg->signers; i++) {
        uint8_t sec[32], pub[33];
        ctl_load_signer_key(cfg->seed, i, sec, pub);
        tem_hex(h, pub, 33);
        json_array_append_new(parts, json_pack("{s:s,s:i,s:s,s:I,s:I}", "pubkey", h, "bus", 1, "role", "prosumer", "money_uunit",
                                               (json_int_t)1000000000000, "tokens_wh", (json_int_t)1000000000));
    }
    json_object_set_new(g, "validators", vals);
    json_object_set_new(g, "admins", json_array());
    json_object_set_new(g, "participants", parts);
    json_object_set_new(g, "tariffs", json_pack("[{s:i,s:i,s:i}]", "start_minute", 0, "retail_uunit_per_kwh", 300000,
                                                "feed_in_uunit_per_kwh", 80000));
    json_object_set_new(g, "market", json_pack("{s:i,s:i,s:i}", "slot_ms", 60000, "gate_closure_ms", 1000, "book_orders_max", 1000000));
    json_object_set_new(g, "limits", json_pack("{s:i}", "max_block_txs", cfg->max_block_txs ? (int)cfg->max_block_txs : 4000));
    snprintf(c->genesis, sizeof c->genesis, "%s/genesis.json", cfg->dir);
    if (cfg->extra_participants == 0) {
        if (json_dump_file(g, c->genesis, JSON_COMPACT) != 0) goto fail;
    } else if (write_genesis_extra(g, cfg->extra_participants, c->genesis) != 0) {
        goto fail;
    }
    json_decref(g);
    return 0;
fail:
    json_decref(g);
    fprintf(stderr, "load: cannot write the cluster's keys or genesis in %s\n", cfg->dir);
    return -1;
}

int ctl_load_cluster_start(const ctl_load_cluster_config *cfg, ctl_load_cluster *c) {
    memset(c, 0, sizeof *c);
    if (cfg->n_nodes < 1 || cfg->n_nodes > CTL_LOAD_NODES_MAX || cfg->n_temd_args > 32) {
        fprintf(stderr, "load: 1..%d nodes, at most 32 extra temd flags\n", CTL_LOAD_NODES_MAX);
        return -1;
    }
    if (ctl_load_cluster_genesis(cfg, c) != 0) return -1;
    for (uint32_t i = 0; i < cfg->n_nodes; i++) {
        char dd[600], key[600], logp[600];
        snprintf(dd, sizeof dd, "%s/n%u", cfg->dir, i);
        snprintf(key, sizeof key, "%s/v%u.key", cfg->dir, i);
        snprintf(logp, sizeof logp, "%s/n%u.log", cfg->dir, i);
        const char *argv[48];
        int a = 0;
        argv[a++] = cfg->temd;
        argv[a++] = "--data-dir";
        argv[a++] = dd;
        argv[a++] = "--genesis";
        argv[a++] = c->genesis;
        argv[a++] = "--key";
        argv[a++] = key;
        for (uint32_t k = 0; k < cfg->n_temd_args; k++) argv[a++] = cfg->temd_args[k];
        argv[a] = NULL;
        pid_t p = fork();
        if (p < 0) {
            ctl_load_cluster_stop(c);
            return -1;
        }
        if (p == 0) {
            /* If the generator dies, its nodes go with it: nothing is left behind. */
            if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || !freopen(logp, "w", stderr)) _exit(126);
            execv(cfg->temd, (char *const *)argv);
            _exit(127);
        }
        c->pid[c->n++] = p;
    }
    /* The pids, for a script that must be able to kill every process its test started. */
    char pidp[600];
    snprintf(pidp, sizeof pidp, "%s/pids", cfg->dir);
    FILE *pf = fopen(pidp, "w");
    for (uint32_t i = 0; pf && i < c->n; i++) fprintf(pf, "%d\n", (int)c->pid[i]);
    if (pf) fclose(pf);
    ctl_http_conn mon;
    if (ctl_http_init(&mon, c->http[0], 2000) != 0) {
        ctl_load_cluster_stop(c);
        return -1;
    }
    ctl_api_status st;
    double end = mono_s() + 60 + 120.0 * cfg->extra_participants / 1e6;
    while (ctl_api_status_get(&mon, &st) != 0 || st.height < 2) {
        bool exited = false;
        for (uint32_t i = 0; i < c->n; i++)
            if (waitpid(c->pid[i], NULL, WNOHANG) == c->pid[i]) {
                c->pid[i] = 0;
                exited = true;
            }
        if (exited || mono_s() > end) {
            fprintf(stderr, "load: the cluster did not commit 2 blocks within 60 s or a temd exited (logs in %s)\n", cfg->dir);
            ctl_http_close(&mon);
            ctl_load_cluster_stop(c);
            return -1;
        }
        usleep(100 * 1000);
    }
    ctl_http_close(&mon);
    return 0;
}

/* ================================================================== the generator */
/* One pre-signed tx. */
typedef struct {
    uint8_t *bytes;
    size_t len;
    uint8_t txid[32];
    uint32_t signer;
    uint32_t phase;        /* phase whose offer was accepted, 0 = not accepted */
    double due;            /* due time of its latest offer */
    double commit;         /* arrival of its commit event, 0 = not seen */
    double ack;            /* arrival of its 202 */
    bool accepted, refused_in_block;
} ld_tx;

typedef struct {
    uint8_t sec[32], pub[33];
    uint32_t node;
    uint64_t nonce0;       /* chain nonce of txs[0] */
    uint32_t cur;          /* index of the next tx to offer */
    uint32_t n, cap;
    uint32_t *txs;         /* indices into ctl_load.tx */
    bool busy, dead;
} ld_signer;

typedef struct {
    uint32_t *ring;        /* idle signers of this node, FIFO */
    uint32_t head, len, cap;
    uint32_t *due_sig;     /* offers due and not yet sent: signer */
    double *due_t;         /*                                 and due time */
    uint32_t ndue, cap_due;
    uint32_t inflight;     /* requests sent and not answered: at most conns_per_node */
    struct ld_req *idle;   /* requests to this node not in flight, for reuse */
    /* A multi handle per node (sharing one epoll set): libcurl 7.88's
     * curl_multi_remove_handle walks every connection of its multi handle after each
     * keep-alive transfer, so one handle over all nodes' connections cost O(all of them) per
     * request. */
    CURLM *m;
    double tmo_at;         /* when libcurl wants CURL_SOCKET_TIMEOUT on m, < 0 = never */
    struct ctl_load *l;
    uint32_t idx;
} ld_node;

/* One request with its easy handle, reused for request after request to one node: an easy
 * handle, its URL, header list and body created and freed per request kept malloc and free
 * high in the generator's profile. */
typedef struct ld_req {
    CURL *e;
    struct ld_req *next_idle, *next_all;
    uint32_t node, n;      /* n txs in this request, at most the phase's batch */
    bool bulk;             /* POST /v1/txs (length-prefixed txs) rather than /v1/tx */
    uint32_t *sig;
    double *due;
    uint8_t *body;         /* bulk only: a single tx is posted from its own bytes */
    size_t body_cap;
    char *resp;
    size_t resp_len, resp_cap;
} ld_req;

struct ctl_load {
    ctl_load_config cfg;
    char nodes[CTL_LOAD_NODES_MAX][160];
    ledger_genesis g;
    ld_signer *s;
    ld_tx *tx;
    size_t ntx, cap_tx;
    uint32_t *tab; /* txid -> tx index + 1, open addressing */
    uint32_t tab_mask;
    ld_node node[CTL_LOAD_NODES_MAX];
    uint32_t phase;
    /* libcurl's event interface (the nodes' multi handles), driven by our epoll set */
    int epfd;
    /* Per descriptor: the events it is registered for in epfd (0 = not in the set), and
     * whether libcurl watches it now. A connection libcurl stops watching between requests
     * stays registered ("parked"), so a keep-alive request costs no epoll_ctl at all. */
    uint32_t *fd_reg;
    bool *fd_live;
    size_t fd_cap;
    ld_req *reqs;          /* every request of the run, for cleanup */
    struct curl_slist *post_hdrs;
    /* the event stream */
    CURL *sse;
    char sse_line[1 << 16];
    size_t sse_len;
    char sse_event[32];
    char last_id[64];
    bool sse_live;
    double run_t0, run_end;
    double last_block_t, gap_max;
    uint64_t blocks, committed_in_window;
    double srv_sum_ms;
    uint64_t srv_n;
    uint64_t ph_accepted, ph_committed; /* this phase's accepted txs, and those seen committed */
    double block_first, block_last;
    double warm_from;
    ctl_load_result *res;
};

static uint32_t tab_home(const ctl_load *l, const uint8_t *txid) { return tem_get_u32le(txid) & l->tab_mask; }

static int tab_grow(ctl_load *l, size_t want) {
    if ((size_t)l->tab_mask + 1 >= 2 * want && l->tab) return 0;
    size_t cap = 1024;
    while (cap < 2 * want) cap <<= 1;
    uint32_t *t = calloc(cap, sizeof *t);
    if (!t) return -1;
    free(l->tab);
    l->tab = t;
    l->tab_mask = (uint32_t)(cap - 1);
    for (size_t i = 0; i < l->ntx; i++) {
        uint32_t p = tab_home(l, l->tx[i].txid);
        while (l->tab[p]) p = (p + 1) & l->tab_mask;
        l->tab[p] = (uint32_t)i + 1;
    }
    return 0;
}

static ld_tx *tab_find(const ctl_load *l, const uint8_t *txid) {
    for (uint32_t p = tab_home(l, txid); l->tab[p]; p = (p + 1) & l->tab_mask)
        if (memcmp(l->tx[l->tab[p] - 1].txid, txid, 32) == 0) return &l->tx[l->tab[p] - 1];
    return NULL;
}

static int64_t now_wall_ms(void) { return ctl_now_ms(); }

/* Signs signer si's txs up to index `upto` (exclusive). Orders alternate sides with prices
 * crossing around 150000 so they match; the slot lies ahead far enough that its gate stays
 * open for minutes. */
static int presign(ctl_load *l, uint32_t si, uint32_t upto) {
    ld_signer *s = &l->s[si];
    if (upto <= s->n) return 0;
    if (upto > s->cap) {
        uint32_t cap = s->cap ? s->cap : 16;
        while (cap < upto) cap *= 2;
        uint32_t *t = realloc(s->txs, cap * sizeof *t);
        if (!t) return -1;
        s->txs = t;
        s->cap = cap;
    }
    int64_t slot_ms = l->g.market.slot_ms > 0 ? l->g.market.slot_ms : 900000;
    int64_t ahead = (240000 + l->g.market.gate_closure_ms) / slot_ms + 2;
    uint64_t slot = (uint64_t)((now_wall_ms() - (int64_t)l->g.genesis_time_ms) / slot_ms + ahead);
    while (s->n < upto) {
        if (l->ntx == l->cap_tx) {
            size_t cap = l->cap_tx ? 2 * l->cap_tx : 65536;
            ld_tx *t = realloc(l->tx, cap * sizeof *t);
            if (!t) return -1;
            l->tx = t;
            l->cap_tx = cap;
        }
        if (tab_grow(l, l->ntx + 1) != 0) return -1;
        uint32_t j = s->n;
        uint64_t nonce = s->nonce0 + j;
        Tem__V1__TxBody b = TEM__V1__TX_BODY__INIT;
        Tem__V1__Order o = TEM__V1__ORDER__INIT;
        o.slot = slot + (si + j) % 8; /* several books, each smaller */
        o.side = (si + j) % 2 ? TEM__V1__SIDE__BUY : TEM__V1__SIDE__SELL;
        o.price = 120000 + (uint64_t)((si * 7919u + j * 104729u) % 60000u);
        o.quantity_wh = 100 + (uint64_t)((si + j * 13u) % 900u);
        b.chain_id = l->g.chain_id;
        b.nonce = nonce;
        b.kind_case = TEM__V1__TX_BODY__KIND_ORDER;
        b.order = &o;
        ld_tx *t = &l->tx[l->ntx];
        memset(t, 0, sizeof *t);
        if (ledger_tx_build(&b, s->sec, &t->bytes, &t->len, t->txid) != LEDGER_OK) return -1;
        t->signer = si;
        uint32_t p = tab_home(l, t->txid);
        while (l->tab[p]) p = (p + 1) & l->tab_mask;
        l->tab[p] = (uint32_t)l->ntx + 1;
        s->txs[s->n++] = (uint32_t)l->ntx++;
    }
    return 0;
}

int ctl_load_new(const ctl_load_config *cfg, ctl_load **out) {
    *out = NULL;
    if (cfg->n_nodes < 1 || cfg->n_nodes > CTL_LOAD_NODES_MAX || cfg->signers < 1 || cfg->signers > CTL_LOAD_SIGNERS_MAX) {
        fprintf(stderr, "load: 1..%d nodes and 1..%u signers\n", CTL_LOAD_NODES_MAX, CTL_LOAD_SIGNERS_MAX);
        return -1;
    }
    ctl_load *l = calloc(1, sizeof *l);
    if (!l) return -1;
    l->cfg = *cfg;
    /* One descriptor per connection: take the hard limit. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (!l->cfg.conns_per_node) l->cfg.conns_per_node = 16;
    if (!l->cfg.timeout_ms) l->cfg.timeout_ms = 10000;
    for (uint32_t i = 0; i < cfg->n_nodes; i++) {
        const char *u = cfg->nodes[i];
        if (!strncmp(u, "http://", 7)) u += 7;
        snprintf(l->nodes[i], sizeof l->nodes[i], "%s", u);
        size_t k = strlen(l->nodes[i]);
        if (k && l->nodes[i][k - 1] == '/') l->nodes[i][k - 1] = 0;
    }
    char err[256];
    if (ledger_genesis_load(cfg->genesis, &l->g, err, sizeof err) != LEDGER_OK) {
        fprintf(stderr, "load: %s: %s\n", cfg->genesis, err);
        free(l);
        return -1;
    }
    l->s = calloc(cfg->signers, sizeof *l->s);
    if (!l->s) goto fail;
    for (uint32_t n = 0; n < cfg->n_nodes; n++) {
        ld_node *nd = &l->node[n];
        nd->cap = cfg->signers / cfg->n_nodes + 1;
        nd->ring = calloc(nd->cap, sizeof *nd->ring);
        if (!nd->ring) goto fail;
    }
    ctl_http_conn c;
    if (ctl_http_init(&c, l->nodes[0], 5000) != 0) goto fail;
    /* Each signer's next nonce, so phases and runs can follow each other on one chain. */
    for (uint32_t i = 0; i < cfg->signers; i++) {
        ld_signer *s = &l->s[i];
        ctl_load_signer_key(cfg->seed, i, s->sec, s->pub);
        s->node = i % cfg->n_nodes;
        ld_node *nd0 = &l->node[s->node];
        nd0->ring[(nd0->head + nd0->len++) % nd0->cap] = i;
        if (cfg->fresh) continue; /* a chain just started: every nonce is 0 */
        char hex[67], path[128];
        tem_hex(hex, s->pub, 33);
        snprintf(path, sizeof path, "/v1/accounts/%s", hex);
        int st;
        json_t *j = ctl_api_get(&c, path, &st);
        if (!j || st != 200) {
            fprintf(stderr, "load: signer %u (%s) is not a participant of the chain at %s (HTTP %d)\n", i, hex, l->nodes[0], st);
            json_decref(j);
            ctl_http_close(&c);
            goto fail;
        }
        s->nonce0 = (uint64_t)json_integer_value(json_object_get(j, "next_nonce"));
        json_decref(j);
    }
    ctl_http_close(&c);
    *out = l;
    return 0;
fail:
    ctl_load_free(l);
    return -1;
}

void ctl_load_free(ctl_load *l) {
    if (!l) return;
    for (size_t i = 0; i < l->ntx; i++) tem_free(l->tx[i].bytes);
    free(l->tx);
    free(l->tab);
    if (l->s)
        for (uint32_t i = 0; i < l->cfg.signers; i++) {
            sodium_memzero(l->s[i].sec, 32);
            free(l->s[i].txs);
        }
    free(l->s);
    for (uint32_t n = 0; n < CTL_LOAD_NODES_MAX; n++) {
        free(l->node[n].ring);
        free(l->node[n].due_sig);
        free(l->node[n].due_t);
    }
    ledger_genesis_free(&l->g);
    free(l);
}

/* ------------------------------------------------------------------ the event stream */
static void sse_data(ctl_load *l, const char *data) {
    double now = mono_s();
    if (!strcmp(l->sse_event, "block")) {
        if (now >= l->run_t0 && now <= l->run_end) {
            if (l->blocks == 0) l->block_first = now;
            l->block_last = now;
            l->blocks++;
        }
        if (now >= l->run_t0 && l->last_block_t > 0) {
            double from = l->last_block_t > l->run_t0 ? l->last_block_t : l->run_t0;
            if (now <= l->run_end && now - from > l->gap_max) l->gap_max = now - from;
        }
        l->last_block_t = now;
        return;
    }
    if (strcmp(l->sse_event, "tx") != 0) return;
    const char *p = strstr(data, "\"txid\":\"");
    uint8_t id[32];
    char hex[65];
    if (!p || strlen(p + 8) < 64) return;
    memcpy(hex, p + 8, 64);
    hex[64] = 0;
    if (tem_unhex(id, 32, hex) != 0) return;
    ld_tx *t = tab_find(l, id);
    if (!t || t->commit > 0) return;
    t->commit = now;
    t->refused_in_block = strstr(data, "\"status\":\"refused\"") != NULL;
    if (t->phase == l->phase) l->ph_committed++;
    if (now >= l->warm_from && now <= l->run_end) l->committed_in_window++;
}

static size_t sse_write(char *ptr, size_t size, size_t nmemb, void *ud) {
    ctl_load *l = ud;
    size_t n = size * nmemb;
    for (size_t i = 0; i < n; i++) {
        char ch = ptr[i];
        if (ch != '\n') {
            if (l->sse_len < sizeof l->sse_line - 1) l->sse_line[l->sse_len++] = ch;
            continue;
        }
        l->sse_line[l->sse_len] = 0;
        const char *line = l->sse_line;
        l->sse_live = true;
        if (!line[0]) l->sse_event[0] = 0;
        else if (!strncmp(line, "event: ", 7)) snprintf(l->sse_event, sizeof l->sse_event, "%s", line + 7);
        else if (!strncmp(line, "id: ", 4)) snprintf(l->last_id, sizeof l->last_id, "%s", line + 4);
        else if (!strncmp(line, "data: ", 6)) sse_data(l, line + 6);
        l->sse_len = 0;
    }
    return n;
}

static struct curl_slist *sse_hdrs;
static int ev_close(void *ud, curl_socket_t fd);

static int sse_open(ctl_load *l) {
    CURLM *m = l->node[0].m;
    char url[256];
    snprintf(url, sizeof url, "http://%s/v1/events?kinds=block,tx", l->nodes[0]);
    CURL *e = curl_easy_init();
    if (!e) return -1;
    curl_slist_free_all(sse_hdrs);
    sse_hdrs = curl_slist_append(NULL, "Accept: text/event-stream");
    if (l->last_id[0]) {
        char h[96];
        snprintf(h, sizeof h, "Last-Event-ID: %s", l->last_id);
        sse_hdrs = curl_slist_append(sse_hdrs, h);
    }
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, sse_hdrs);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sse_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, l);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PRIVATE, NULL);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, ev_close);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, l);
    l->sse_len = 0;
    l->sse_event[0] = 0;
    if (curl_multi_add_handle(m, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        return -1;
    }
    l->sse = e;
    return 0;
}

/* ------------------------------------------------------------------ requests */
static size_t req_write(char *ptr, size_t size, size_t nmemb, void *ud) {
    ld_req *r = ud;
    size_t n = size * nmemb;
    if (r->resp_len + n + 1 > r->resp_cap) {
        size_t cap = r->resp_cap ? r->resp_cap : 4096;
        while (cap < r->resp_len + n + 1) cap *= 2;
        char *p = realloc(r->resp, cap);
        if (!p) return 0;
        r->resp = p;
        r->resp_cap = cap;
    }
    memcpy(r->resp + r->resp_len, ptr, n);
    r->resp_len += n;
    r->resp[r->resp_len] = 0;
    return n;
}

static void req_free(ld_req *r) {
    if (r->e) curl_easy_cleanup(r->e);
    free(r->sig);
    free(r->due);
    free(r->body);
    free(r->resp);
    free(r);
}

/* An idle request to `node`, or a new one with the options that never change set once. */
static ld_req *req_get(ctl_load *l, uint32_t node, uint32_t batch) {
    ld_node *nd = &l->node[node];
    ld_req *r = nd->idle;
    if (r) {
        nd->idle = r->next_idle;
        return r;
    }
    r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->sig = malloc(batch * sizeof *r->sig);
    r->due = malloc(batch * sizeof *r->due);
    r->e = curl_easy_init();
    if (!r->sig || !r->due || !r->e) {
        req_free(r);
        return NULL;
    }
    r->node = node;
    r->bulk = batch > 1;
    char url[256];
    snprintf(url, sizeof url, "http://%s%s", l->nodes[node], r->bulk ? "/v1/txs" : "/v1/tx");
    CURL *e = r->e;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, l->post_hdrs);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, req_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)l->cfg.timeout_ms);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, ev_close);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, l);
    r->next_all = l->reqs;
    l->reqs = r;
    return r;
}

static void req_put(ctl_load *l, ld_req *r) {
    r->next_idle = l->node[r->node].idle;
    l->node[r->node].idle = r;
}

static int send_req(ctl_load *l, uint32_t node, const uint32_t *sig, const double *due, uint32_t n, uint32_t batch,
                    uint32_t *inflight) {
    ld_req *r = req_get(l, node, batch);
    if (!r) return -1;
    const uint8_t *body;
    size_t off = 0;
    if (!r->bulk) {
        /* One tx: its signed bytes are the body, and they outlive the request. */
        TEM_ASSERT(n == 1);
        const ld_signer *s = &l->s[sig[0]];
        ld_tx *t = &l->tx[s->txs[s->cur]];
        body = t->bytes;
        off = t->len;
    } else {
        size_t blen = 0;
        for (uint32_t i = 0; i < n; i++) {
            const ld_signer *s = &l->s[sig[i]];
            blen += l->tx[s->txs[s->cur]].len + 4;
        }
        if (blen > r->body_cap) {
            uint8_t *p = realloc(r->body, blen);
            if (!p) {
                req_put(l, r);
                return -1;
            }
            r->body = p;
            r->body_cap = blen;
        }
        for (uint32_t i = 0; i < n; i++) {
            const ld_signer *s = &l->s[sig[i]];
            const ld_tx *t = &l->tx[s->txs[s->cur]];
            tem_put_u32be(r->body + off, (uint32_t)t->len);
            memcpy(r->body + off + 4, t->bytes, t->len);
            off += t->len + 4;
        }
        body = r->body;
    }
    for (uint32_t i = 0; i < n; i++) {
        const ld_signer *s = &l->s[sig[i]];
        l->tx[s->txs[s->cur]].due = due[i];
        r->sig[i] = sig[i];
        r->due[i] = due[i];
    }
    r->n = n;
    r->resp_len = 0;
    curl_easy_setopt(r->e, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(r->e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)off);
    if (curl_multi_add_handle(l->node[node].m, r->e) != CURLM_OK) {
        req_put(l, r);
        return -1;
    }
    for (uint32_t i = 0; i < n; i++) l->s[sig[i]].busy = true;
    (*inflight)++;
    return 0;
}

static void signer_idle(ctl_load *l, uint32_t si) {
    ld_signer *s = &l->s[si];
    s->busy = false;
    if (s->dead) return;
    ld_node *nd = &l->node[s->node];
    TEM_ASSERT(nd->len < nd->cap);
    nd->ring[(nd->head + nd->len++) % nd->cap] = si;
}

/* What became of one tx of a request: code NULL = accepted. */
static void item_result(ctl_load *l, uint32_t si, double due, int status, const char *code, long retry_after) {
    ld_signer *s = &l->s[si];
    ld_tx *t = &l->tx[s->txs[s->cur]];
    ctl_load_result *res = l->res;
    (void)due;
    if (!code) {
        res->accepted++;
        t->accepted = true;
        t->ack = mono_s();
        t->phase = l->phase;
        l->ph_accepted++;
        if (t->commit > 0) l->ph_committed++; /* its commit event came before the answer */
        s->cur++;
    } else if (!strcmp(code, "EBUSY") || !strcmp(code, "ESIGNERSHARE") || !strcmp(code, "EADDRSHARE")) {
        if (code[1] == 'B') res->refused_busy++;
        else res->refused_share++;
        if (retry_after > 0) res->refused_retry_after++;
        if ((uint64_t)retry_after > res->retry_after_max_s) res->retry_after_max_s = (uint64_t)retry_after;
    } else {
        res->refused_other++;
        /* Already held or committed there: the nonce is taken, move on. Any other refusal
         * leaves the signer's nonce where it was. */
        if (!strcmp(code, "EDUP") || !strcmp(code, "ECOMMITTED")) s->cur++;
        else if (!strcmp(code, "ENONCELOW") || !strcmp(code, "ENONCETAKEN")) s->dead = true;
        if (l->res->refused_other <= 3) fprintf(stderr, "load: refused %s (HTTP %d)\n", code, status);
    }
    signer_idle(l, si);
}

static const char *code_of(json_t *j) {
    const char *c = json_string_value(json_object_get(j, "code"));
    return c ? c : "EUNKNOWN";
}

static void req_done(ctl_load *l, ld_req *r, CURLcode rc) {
    CURL *e = r->e;
    TEM_ASSERT(l->node[r->node].inflight > 0);
    l->node[r->node].inflight--;
    long status = 0;
    curl_off_t ra = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(e, CURLINFO_RETRY_AFTER, &ra);
    curl_off_t total_us = 0, pre_us = 0;
    curl_easy_getinfo(e, CURLINFO_TOTAL_TIME_T, &total_us);
    curl_easy_getinfo(e, CURLINFO_PRETRANSFER_TIME_T, &pre_us);
    double srv_ms = (double)(total_us - pre_us) / 1000.0;
    if (rc == CURLE_OK && srv_ms > l->res->server_max_ms) l->res->server_max_ms = srv_ms;
    if (rc == CURLE_OK) {
        l->srv_sum_ms += srv_ms;
        l->srv_n++;
    }
    if (rc != CURLE_OK || status == 0) {
        l->res->transport_errors += r->n;
        /* The tx may or may not have been taken: its signer's nonce is unknown now. */
        for (uint32_t i = 0; i < r->n; i++) {
            l->s[r->sig[i]].dead = true;
            signer_idle(l, r->sig[i]);
        }
        if (l->res->transport_errors <= 3) fprintf(stderr, "load: %s\n", curl_easy_strerror(rc));
        return;
    }
    /* A single tx's 202 says all there is to know: parse only what can carry codes. */
    json_t *j = (r->bulk || status != 202) && r->resp_len ? json_loads(r->resp, 0, NULL) : NULL;
    bool batch = json_is_array(j);
    for (uint32_t i = 0; i < r->n; i++) {
        const char *code = NULL;
        if (batch) {
            json_t *it = json_array_get(j, i);
            if (!it) code = "EUNKNOWN";
            else if (json_object_get(it, "error")) code = code_of(it);
        } else if (status != 202) {
            code = j ? code_of(j) : "EUNKNOWN";
        }
        item_result(l, r->sig[i], r->due[i], (int)status, code, (long)ra);
    }
    json_decref(j);
}

/* ------------------------------------------------------------------ the event loop */
/* libcurl says which sockets to watch for what; epoll then wakes us for the ready ones only.
 * Polling every socket each wake-up (curl_multi_poll) and walking every handle
 * (curl_multi_perform) cost O(connections) per millisecond: at 1,024 connections that was
 * most of the generator's CPU, taken from the nodes it measures. */
static int ev_socket(CURL *e, curl_socket_t fd, int what, void *ud, void *sockp) {
    ld_node *nd = ud;
    ctl_load *l = nd->l;
    (void)e;
    (void)sockp;
    if (fd < 0) return -1;
    if ((size_t)fd >= l->fd_cap) {
        if (what == CURL_POLL_REMOVE) return 0;
        size_t cap = l->fd_cap ? l->fd_cap : 1024;
        while (cap <= (size_t)fd) cap *= 2;
        uint32_t *reg = realloc(l->fd_reg, cap * sizeof *reg);
        if (!reg) return -1;
        l->fd_reg = reg;
        bool *live = realloc(l->fd_live, cap * sizeof *live);
        if (!live) return -1;
        l->fd_live = live;
        memset(reg + l->fd_cap, 0, (cap - l->fd_cap) * sizeof *reg);
        memset(live + l->fd_cap, 0, (cap - l->fd_cap) * sizeof *live);
        l->fd_cap = cap;
    }
    if (what == CURL_POLL_REMOVE) {
        l->fd_live[fd] = false; /* parked: see ev_wait and ev_close */
        return 0;
    }
    uint32_t want = (what & CURL_POLL_IN ? EPOLLIN : 0u) | (what & CURL_POLL_OUT ? EPOLLOUT : 0u);
    l->fd_live[fd] = true;
    if (l->fd_reg[fd] == want) return 0;
    struct epoll_event ev = {.events = want, .data.u64 = (uint64_t)nd->idx << 32 | (uint32_t)fd};
    int op = !want ? EPOLL_CTL_DEL : l->fd_reg[fd] ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(l->epfd, op, fd, &ev) != 0) {
        /* Our record was stale (cannot happen while every close goes through ev_close):
         * do what the kernel's state needs. */
        if (op == EPOLL_CTL_ADD && errno == EEXIST) op = EPOLL_CTL_MOD;
        else if (op == EPOLL_CTL_MOD && errno == ENOENT) op = EPOLL_CTL_ADD;
        else if (op != EPOLL_CTL_DEL) return -1;
        if (op != EPOLL_CTL_DEL && epoll_ctl(l->epfd, op, fd, &ev) != 0) return -1;
    }
    l->fd_reg[fd] = want;
    return 0;
}

/* libcurl closes a connection: a closed descriptor leaves the epoll set by itself, and its
 * number may come back as a new socket that must be added afresh. */
static int ev_close(void *ud, curl_socket_t fd) {
    ctl_load *l = ud;
    if (fd >= 0 && (size_t)fd < l->fd_cap) {
        l->fd_reg[fd] = 0;
        l->fd_live[fd] = false;
    }
    return close(fd);
}

static int ev_timer(CURLM *m, long ms, void *ud) {
    ld_node *nd = ud;
    (void)m;
    nd->tmo_at = ms < 0 ? -1 : mono_s() + (double)ms / 1000.0;
    return 0;
}

/* Runs libcurl's due timers: new requests (curl_multi_add_handle asks for a zero timeout),
 * request timeouts, connection steps. A few rounds at most: it must never spin. */
static void ev_timeouts(ctl_load *l) {
    int running;
    for (uint32_t n = 0; n < l->cfg.n_nodes; n++) {
        ld_node *nd = &l->node[n];
        for (int i = 0; i < 4 && nd->tmo_at >= 0 && mono_s() >= nd->tmo_at; i++) {
            nd->tmo_at = -1; /* one-shot, like a timerfd: libcurl sets the next one */
            curl_multi_socket_action(nd->m, CURL_SOCKET_TIMEOUT, 0, &running);
        }
    }
}

/* Waits up to wait_ms (less if a libcurl timer comes first) and hands libcurl the ready
 * sockets. */
static void ev_wait(ctl_load *l, int wait_ms) {
    for (uint32_t k = 0; k < l->cfg.n_nodes; k++) {
        if (l->node[k].tmo_at < 0) continue;
        double rem = ceil((l->node[k].tmo_at - mono_s()) * 1000.0);
        if (rem < wait_ms) wait_ms = rem > 0 ? (int)rem : 0;
    }
    struct epoll_event ev[256];
    int n = epoll_wait(l->epfd, ev, 256, wait_ms), running;
    for (int i = 0; i < n; i++) {
        int fd = (int)(uint32_t)ev[i].data.u64;
        uint32_t node = (uint32_t)(ev[i].data.u64 >> 32);
        if ((size_t)fd < l->fd_cap && !l->fd_live[fd]) {
            /* A parked connection stirred (the node closed it, most likely): stop watching
             * it; libcurl finds it dead when it next looks. */
            (void)epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
            l->fd_reg[fd] = 0;
            continue;
        }
        int act = (ev[i].events & EPOLLIN ? CURL_CSELECT_IN : 0) | (ev[i].events & EPOLLOUT ? CURL_CSELECT_OUT : 0);
        /* Error or hang-up alone: 0 lets libcurl look at the socket itself. */
        curl_multi_socket_action(l->node[node].m, fd, act, &running);
    }
    ev_timeouts(l);
}

/* Finished transfers: a request's results, or the event stream to reopen. */
static void ev_done(ctl_load *l, uint32_t *inflight) {
    CURLMsg *msg;
    int left;
    for (uint32_t n = 0; n < l->cfg.n_nodes; n++) {
        while ((msg = curl_multi_info_read(l->node[n].m, &left))) {
            if (msg->msg != CURLMSG_DONE) continue;
            CURL *e = msg->easy_handle;
            CURLcode rc = msg->data.result;
            curl_multi_remove_handle(l->node[n].m, e);
            if (e == l->sse) {
                /* The node dropped the stream (slow reader, restart): resume after the last id. */
                curl_easy_cleanup(e);
                l->sse = NULL;
                if (sse_open(l) != 0) l->sse = NULL;
                continue;
            }
            ld_req *r = NULL;
            curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&r);
            req_done(l, r, rc);
            req_put(l, r);
            (*inflight)--;
        }
    }
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double tv_us(struct timeval tv) { return (double)tv.tv_sec * 1e6 + (double)tv.tv_usec; }

/* What the generator itself cost: every cycle it takes is taken from the nodes it measures. */
static void gen_cpu(ctl_load_result *out, const struct rusage *ru0, double wall_s) {
    struct rusage ru1;
    if (getrusage(RUSAGE_SELF, &ru1) != 0) return;
    double us = tv_us(ru1.ru_utime) - tv_us(ru0->ru_utime) + tv_us(ru1.ru_stime) - tv_us(ru0->ru_stime);
    out->gen_cpu_us_per_offer = out->offered ? us / (double)out->offered : 0;
    out->gen_cpu_pct = wall_s > 0 ? us / (wall_s * 1e6) * 100.0 : 0;
}

/* Polls every node's GET /v1/status until each reports an empty mempool, for settle_s at most.
 * The generator's drain ends when node 0 has committed its txs; a validator that the other three
 * outran under load may still be applying blocks seconds later, its mempool full of txs already
 * committed elsewhere, and its admission rightly refuses to queue more behind them. A phase that
 * measures the settled cluster must start after that, however long the catch-up takes here. */
static void settle(ctl_load *l, double settle_s, ctl_load_result *out) {
    double t0 = mono_s();
    out->settled = settle_s <= 0;
    if (out->settled) return;
    ctl_http_conn c[CTL_LOAD_NODES_MAX];
    uint32_t n = l->cfg.n_nodes, inited = 0;
    for (; inited < n; inited++)
        if (ctl_http_init(&c[inited], l->nodes[inited], 2000) != 0) break;
    while (inited == n && !out->settled) {
        bool all = true;
        for (uint32_t i = 0; i < n && all; i++) {
            int st;
            json_t *j = ctl_api_get(&c[i], "/v1/status", &st);
            json_t *mp = j && st == 200 ? json_object_get(j, "mempool") : NULL;
            all = json_is_integer(mp) && json_integer_value(mp) == 0;
            json_decref(j);
        }
        out->settled = all;
        if (all || mono_s() - t0 >= settle_s) break;
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    for (uint32_t i = 0; i < inited; i++) ctl_http_close(&c[i]);
    out->settle_ms = (mono_s() - t0) * 1000.0;
    if (!out->settled) fprintf(stderr, "load: the nodes did not settle (empty mempools) within %.0f s\n", settle_s);
}

int ctl_load_run(ctl_load *l, const ctl_load_phase *ph, ctl_load_result *out) {
    memset(out, 0, sizeof *out);
    if (ph->rate_per_s <= 0 || ph->duration_s <= 0 || ph->batch > CTL_LOAD_BATCH_MAX || ph->settle_s < 0) {
        fprintf(stderr, "load: rate and duration must be positive, settle not negative, batch at most %u\n",
                CTL_LOAD_BATCH_MAX);
        return -1;
    }
    settle(l, ph->settle_s, out);
    uint32_t batch = ph->batch ? ph->batch : 1;
    l->phase++;
    l->res = out;
    out->offered_per_s = ph->rate_per_s;
    out->duration_s = ph->duration_s;
    /* Pre-sign what this phase can use: an even spread of the offers with a margin. */
    double per = ph->rate_per_s * ph->duration_s / l->cfg.signers;
    uint32_t ahead = (uint32_t)ceil(per * 1.25) + 4;
    for (uint32_t i = 0; i < l->cfg.signers; i++)
        if (!l->s[i].dead && presign(l, i, l->s[i].cur + ahead) != 0) return -1;
    /* The generator holds at most 2 s of offers waiting for a connection. */
    size_t due_cap = (size_t)(ph->rate_per_s * 2) + 64;
    for (uint32_t n = 0; n < l->cfg.n_nodes; n++) {
        ld_node *nd = &l->node[n];
        if (nd->cap_due < due_cap) {
            free(nd->due_sig);
            free(nd->due_t);
            nd->due_sig = malloc(due_cap * sizeof *nd->due_sig);
            nd->due_t = malloc(due_cap * sizeof *nd->due_t);
            if (!nd->due_sig || !nd->due_t) return -1;
            nd->cap_due = (uint32_t)due_cap;
        }
        nd->ndue = 0;
        nd->inflight = 0;
    }
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->post_hdrs = curl_slist_append(NULL, "Content-Type: application/x-protobuf");
    if (l->post_hdrs) l->post_hdrs = curl_slist_append(l->post_hdrs, "Expect:");
    bool ok = l->epfd >= 0 && l->post_hdrs;
    for (uint32_t n = 0; n < l->cfg.n_nodes; n++) {
        ld_node *nd = &l->node[n];
        nd->l = l;
        nd->idx = n;
        nd->tmo_at = -1;
        CURLM *mn = nd->m = curl_multi_init();
        if (!mn) {
            ok = false;
            continue;
        }
        curl_multi_setopt(mn, CURLMOPT_MAX_HOST_CONNECTIONS, (long)l->cfg.conns_per_node);
        curl_multi_setopt(mn, CURLMOPT_MAXCONNECTS, (long)(l->cfg.conns_per_node + 4));
        curl_multi_setopt(mn, CURLMOPT_SOCKETFUNCTION, ev_socket);
        curl_multi_setopt(mn, CURLMOPT_SOCKETDATA, nd);
        curl_multi_setopt(mn, CURLMOPT_TIMERFUNCTION, ev_timer);
        curl_multi_setopt(mn, CURLMOPT_TIMERDATA, nd);
    }
    if (!ok) {
        for (uint32_t n = 0; n < l->cfg.n_nodes; n++) {
            if (l->node[n].m) curl_multi_cleanup(l->node[n].m);
            l->node[n].m = NULL;
        }
        if (l->epfd >= 0) close(l->epfd);
        l->epfd = -1;
        curl_slist_free_all(l->post_hdrs);
        l->post_hdrs = NULL;
        return -1;
    }
    CURLM *m = l->node[0].m; /* the event stream's */
    l->sse_live = false;
    l->last_id[0] = 0;
    l->blocks = 0;
    l->gap_max = 0;
    l->last_block_t = 0;
    l->committed_in_window = 0;
    l->ph_accepted = l->ph_committed = 0;
    l->srv_sum_ms = 0;
    l->srv_n = 0;
    l->run_t0 = l->run_end = 1e300;
    l->warm_from = 1e300;
    int ret = -1;
    if (sse_open(l) != 0) goto out;
    /* The stream must be live before the first offer, or early commits would be missed. */
    for (double until = mono_s() + 10; !l->sse_live;) {
        ev_timeouts(l);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(m, &left)))
            if (msg->msg == CURLMSG_DONE && msg->easy_handle == l->sse) {
                fprintf(stderr, "load: GET /v1/events on %s: %s\n", l->nodes[0], curl_easy_strerror(msg->data.result));
                goto out;
            }
        if (mono_s() > until) {
            fprintf(stderr, "load: no event stream from %s\n", l->nodes[0]);
            goto out;
        }
        ev_wait(l, 10);
    }
    struct rusage ru0;
    getrusage(RUSAGE_SELF, &ru0);
    double t0 = mono_s(), t_end = t0 + ph->duration_s, t_stop = t_end + ph->drain_s;
    l->run_t0 = t0;
    l->run_end = t_end;
    l->warm_from = t0 + ph->warmup_s;
    uint64_t k = 0;
    uint32_t inflight = 0, rr = 0;
    uint32_t *sig = malloc(batch * sizeof *sig);
    double *dues = malloc(batch * sizeof *dues);
    if (!sig || !dues) {
        free(sig);
        free(dues);
        goto out;
    }
    for (;;) {
        ev_done(l, &inflight);
        double now = mono_s();
        /* Every offer whose due time has come, each to the next node in turn. */
        for (;;) {
            double due = t0 + (double)k / ph->rate_per_s;
            if (due > now || due >= t_end) break;
            k++;
            out->offered++;
            uint32_t n = rr++ % l->cfg.n_nodes;
            ld_node *nd = &l->node[n];
            uint32_t si = UINT32_MAX;
            while (nd->len > 0) {
                uint32_t c = nd->ring[nd->head];
                nd->head = (nd->head + 1) % nd->cap;
                nd->len--;
                ld_signer *s = &l->s[c];
                if (s->dead) continue;
                if (s->cur >= s->n && presign(l, c, s->cur + 8) != 0) continue;
                si = c;
                break;
            }
            if (si == UINT32_MAX) {
                out->no_signer++;
                continue;
            }
            if (nd->ndue >= nd->cap_due) {
                signer_idle(l, si);
                out->unsent_backlog++;
                continue;
            }
            l->s[si].busy = true;
            nd->due_sig[nd->ndue] = si;
            nd->due_t[nd->ndue++] = due;
        }
        /* Send what is due, in requests of up to `batch` txs, while the node has a free
         * connection; the rest waits here (its wait counts: latency runs from the due time). */
        for (uint32_t n = 0; n < l->cfg.n_nodes; n++) {
            ld_node *nd = &l->node[n];
            uint32_t off = 0;
            for (; off < nd->ndue && nd->inflight < l->cfg.conns_per_node; off += batch) {
                uint32_t c = nd->ndue - off < batch ? nd->ndue - off : batch;
                memcpy(sig, nd->due_sig + off, c * sizeof *sig);
                memcpy(dues, nd->due_t + off, c * sizeof *dues);
                double lag = (now - dues[0]) * 1000.0;
                if (lag > out->send_lag_max_ms) out->send_lag_max_ms = lag;
                if (send_req(l, n, sig, dues, c, batch, &inflight) != 0) {
                    for (uint32_t i = 0; i < c; i++) signer_idle(l, sig[i]);
                    out->transport_errors += c;
                } else {
                    nd->inflight++;
                }
            }
            if (off >= nd->ndue) {
                nd->ndue = 0;
            } else if (off > 0) {
                memmove(nd->due_sig, nd->due_sig + off, (nd->ndue - off) * sizeof *nd->due_sig);
                memmove(nd->due_t, nd->due_t + off, (nd->ndue - off) * sizeof *nd->due_t);
                nd->ndue -= off;
            }
        }
        /* Start what was just added (libcurl asks for a zero timeout on each). */
        ev_timeouts(l);
        now = mono_s();
        bool queued = false;
        for (uint32_t n = 0; n < l->cfg.n_nodes; n++) queued |= l->node[n].ndue > 0;
        if (now >= t_end && inflight == 0 && !queued && (l->ph_committed >= l->ph_accepted || now >= t_stop)) break;
        double next = t0 + (double)k / ph->rate_per_s;
        /* Never a zero wait: at thousands of offers per second the next one is always under a
         * millisecond away, and spinning on libcurl took half of a 2-core machine
         * from the nodes it measures. Offers due within the same millisecond leave together;
         * their latency still counts from each one's own due time. */
        int wait_ms = now >= t_end ? 20 : (int)ceil((next - now) * 1000.0);
        if (wait_ms < 1) wait_ms = 1;
        if (wait_ms > 20) wait_ms = 20;
        ev_wait(l, wait_ms);
    }
    free(sig);
    free(dues);
    gen_cpu(out, &ru0, mono_s() - t0);
    /* Results of this phase's accepted txs: due -> commit, due -> 202, 202 -> commit. */
    size_t cap = out->accepted ? out->accepted : 1;
    double *lat = malloc(cap * sizeof *lat), *ack = malloc(cap * sizeof *ack), *wait = malloc(cap * sizeof *wait);
    size_t nl = 0, na = 0;
    /* TEM_LOAD_LATE_MS=N: one stderr line per accepted tx that waited longer (diagnosis). */
    double late_ms = getenv("TEM_LOAD_LATE_MS") ? atof(getenv("TEM_LOAD_LATE_MS")) : -1;
    for (size_t i = 0; i < l->ntx && lat && ack && wait; i++) {
        ld_tx *t = &l->tx[i];
        if (t->phase != l->phase) continue;
        if (na < cap) ack[na++] = (t->ack - t->due) * 1000.0;
        if (t->commit == 0) continue;
        if (late_ms >= 0 && (t->commit - t->ack) * 1000.0 > late_ms)
            fprintf(stderr, "late node %u signer %u due %.3f ack %.3f commit %.3f wait_ms %.0f\n", l->s[t->signer].node,
                    t->signer, t->due - l->run_t0, t->ack - l->run_t0, t->commit - l->run_t0, (t->commit - t->ack) * 1000.0);
        out->committed++;
        if (t->refused_in_block) out->committed_refused++;
        if (nl < cap) {
            wait[nl] = (t->commit > t->ack ? t->commit - t->ack : 0) * 1000.0;
            lat[nl++] = (t->commit - t->due) * 1000.0;
        }
    }
    if (lat && ack && wait && nl) {
        qsort(lat, nl, sizeof *lat, cmp_d);
        qsort(wait, nl, sizeof *wait, cmp_d);
        size_t p99 = (nl * 99) / 100 < nl ? (nl * 99) / 100 : nl - 1;
        out->lat_p50_ms = lat[nl / 2];
        out->lat_p99_ms = lat[p99];
        out->lat_max_ms = lat[nl - 1];
        out->wait_p50_ms = wait[nl / 2];
        out->wait_p99_ms = wait[p99];
        out->wait_max_ms = wait[nl - 1];
    }
    if (ack && na) {
        qsort(ack, na, sizeof *ack, cmp_d);
        out->ack_p50_ms = ack[na / 2];
        out->ack_p99_ms = ack[(na * 99) / 100 < na ? (na * 99) / 100 : na - 1];
    }
    free(lat);
    free(ack);
    free(wait);
    double win = ph->duration_s - ph->warmup_s;
    out->committed_per_s = win > 0 ? (double)l->committed_in_window / win : 0;
    out->uncommitted = out->accepted - out->committed;
    out->server_mean_ms = l->srv_n ? l->srv_sum_ms / (double)l->srv_n : 0;
    out->blocks = l->blocks;
    out->block_interval_ms = l->blocks > 1 ? (l->block_last - l->block_first) * 1000.0 / (double)(l->blocks - 1) : 0;
    out->block_gap_max_ms = l->gap_max * 1000.0;
    ret = 0;
out:
    if (l->sse) {
        curl_multi_remove_handle(m, l->sse);
        curl_easy_cleanup(l->sse);
        l->sse = NULL;
    }
    /* Requests still in flight (only on an early exit) are removed first; removing an idle
     * one is a no-op. */
    for (ld_req *r = l->reqs, *nx; r; r = nx) {
        nx = r->next_all;
        curl_multi_remove_handle(l->node[r->node].m, r->e);
        req_free(r);
    }
    l->reqs = NULL;
    for (uint32_t n = 0; n < CTL_LOAD_NODES_MAX; n++) {
        l->node[n].idle = NULL;
        if (l->node[n].m) curl_multi_cleanup(l->node[n].m);
        l->node[n].m = NULL;
    }
    close(l->epfd);
    l->epfd = -1;
    free(l->fd_reg);
    free(l->fd_live);
    l->fd_reg = NULL;
    l->fd_live = NULL;
    l->fd_cap = 0;
    curl_slist_free_all(l->post_hdrs);
    l->post_hdrs = NULL;
    curl_slist_free_all(sse_hdrs);
    sse_hdrs = NULL;
    return ret;
}

void ctl_load_result_print(const ctl_load_result *r, FILE *f) {
    fprintf(f,
            "{\"offered_per_s\":%.1f,\"duration_s\":%.1f,\"settled\":%s,\"settle_ms\":%.1f,\"offered\":%llu,\"accepted\":%llu,\"refused_busy\":%llu,"
            "\"refused_share\":%llu,\"refused_other\":%llu,\"refused_retry_after\":%llu,\"retry_after_max_s\":%llu,"
            "\"transport_errors\":%llu,\"no_signer\":%llu,\"unsent_backlog\":%llu,\"committed\":%llu,\"uncommitted\":%llu,\"committed_refused\":%llu,"
            "\"committed_per_s\":%.1f,\"lat_p50_ms\":%.1f,\"lat_p99_ms\":%.1f,\"lat_max_ms\":%.1f,\"ack_p50_ms\":%.1f,"
            "\"ack_p99_ms\":%.1f,\"wait_p50_ms\":%.1f,\"wait_p99_ms\":%.1f,\"wait_max_ms\":%.1f,\"send_lag_max_ms\":%.1f,"
            "\"server_mean_ms\":%.1f,\"server_max_ms\":%.1f,"
            "\"blocks\":%llu,\"block_interval_ms\":%.1f,\"block_gap_max_ms\":%.1f,"
            "\"gen_cpu_us_per_offer\":%.1f,\"gen_cpu_pct\":%.1f}\n",
            r->offered_per_s, r->duration_s, r->settled ? "true" : "false", r->settle_ms, (unsigned long long)r->offered, (unsigned long long)r->accepted,
            (unsigned long long)r->refused_busy, (unsigned long long)r->refused_share, (unsigned long long)r->refused_other,
            (unsigned long long)r->refused_retry_after, (unsigned long long)r->retry_after_max_s,
            (unsigned long long)r->transport_errors, (unsigned long long)r->no_signer, (unsigned long long)r->unsent_backlog, (unsigned long long)r->committed,
            (unsigned long long)r->uncommitted,
            (unsigned long long)r->committed_refused, r->committed_per_s, r->lat_p50_ms, r->lat_p99_ms, r->lat_max_ms,
            r->ack_p50_ms, r->ack_p99_ms, r->wait_p50_ms, r->wait_p99_ms, r->wait_max_ms, r->send_lag_max_ms,
            r->server_mean_ms, r->server_max_ms, (unsigned long long)r->blocks, r->block_interval_ms, r->block_gap_max_ms,
            r->gen_cpu_us_per_offer, r->gen_cpu_pct);
    fflush(f);
}

/* ================================================================== temctl load */
static void load_usage(void) {
    fprintf(stderr,
            "usage: temctl load --nodes H:P[,H:P..] --genesis FILE [options]   (signers must be in the genesis)\n"
            "       temctl load --cluster DIR [--temd PATH] [--base-port P] [--temd-arg ARG].. [options]\n"
            "Offers pre-signed orders open-loop at a fixed rate and prints one JSON line per phase\n"
            "(docs/performance.md \"Load generator\").\n"
            "  --phase RATE:SECONDS   a phase (repeatable, run in order); default --rate/--duration\n"
            "  --rate R (500)  --duration S (10)  --batch N (1: POST /v1/tx; more: POST /v1/txs)\n"
            "  --drain S (10)  --warmup S (1)  --conns N (16 per node)\n"
            "  --settle S (0)  before each phase after the first, wait up to S s until every node's\n"
            "      mempool is empty (a validator left behind has caught up); the JSON line says\n"
            "      \"settled\" and \"settle_ms\"\n"
            "  --seed N (1)  --signers N (2048)\n"
            "  --cluster DIR: start a local cluster of --cluster-nodes (4) temd in DIR (keys, genesis\n"
            "      with the seed's signers, logs), peers on --base-port P+i, HTTP on P+10+i (default\n"
            "      P = 20000 + pid %% 500 * 20, below the ephemeral range); stopped at the end;\n"
            "      --cluster-participants N adds N participants nobody signs for (scale runs)\n");
}

/* Strict numbers: the whole text, in range; false otherwise. */
static bool num_u32(const char *v, uint32_t lo, uint32_t hi, uint32_t *out) {
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || !*v || *end || *v == '-' || x < lo || x > hi) return false;
    *out = (uint32_t)x;
    return true;
}
static bool num_pos(const char *v, double *out) {
    char *end;
    double x = strtod(v, &end);
    if (!*v || *end || !(x > 0) || x > 1e7) return false;
    *out = x;
    return true;
}

static bool num_nonneg(const char *v, double *out) {
    if (!strcmp(v, "0")) {
        *out = 0;
        return true;
    }
    return num_pos(v, out);
}

int ctl_load_main(int argc, char **argv) {
    const char *nodes_arg = NULL, *genesis = NULL, *cluster_dir = NULL, *temd = "build/temd";
    const char *temd_args[32];
    uint32_t n_temd_args = 0, batch = 1, conns = 16, signers = 2048, cluster_nodes = 4, extra = 0;
    double rate = 500, duration = 10, drain = 10, warmup = 1, settle_s = 0;
    uint64_t seed = 1;
    bool fresh = false;
    int base_port = 20000 + (int)(getpid() % 500) * 20;
    ctl_load_phase phases[16];
    uint32_t nph = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            load_usage();
            return 0;
        }
        if (!v) {
            load_usage();
            return 2;
        }
        i++;
        bool good = true;
        uint32_t u;
        if (!strcmp(a, "--nodes")) nodes_arg = v;
        else if (!strcmp(a, "--genesis")) genesis = v;
        else if (!strcmp(a, "--cluster")) cluster_dir = v;
        else if (!strcmp(a, "--cluster-nodes")) good = num_u32(v, 1, CTL_LOAD_NODES_MAX, &cluster_nodes);
        else if (!strcmp(a, "--cluster-participants")) good = num_u32(v, 0, LEDGER_PARTICIPANTS_MAX, &extra);
        else if (!strcmp(a, "--temd")) temd = v;
        else if (!strcmp(a, "--base-port")) {
            if ((good = num_u32(v, 1024, 32767, &u))) base_port = (int)u;
        } else if (!strcmp(a, "--temd-arg")) {
            if ((good = n_temd_args < 32)) temd_args[n_temd_args++] = v;
        }
        else if (!strcmp(a, "--rate")) good = num_pos(v, &rate);
        else if (!strcmp(a, "--duration")) good = num_pos(v, &duration);
        else if (!strcmp(a, "--batch")) good = num_u32(v, 1, CTL_LOAD_BATCH_MAX, &batch);
        else if (!strcmp(a, "--drain")) good = num_nonneg(v, &drain);
        else if (!strcmp(a, "--warmup")) good = num_nonneg(v, &warmup);
        else if (!strcmp(a, "--settle")) good = num_nonneg(v, &settle_s);
        else if (!strcmp(a, "--conns")) good = num_u32(v, 1, 1024, &conns);
        else if (!strcmp(a, "--seed")) {
            if ((good = num_u32(v, 0, UINT32_MAX, &u))) seed = u;
        }
        else if (!strcmp(a, "--signers")) good = num_u32(v, 1, CTL_LOAD_SIGNERS_MAX, &signers);
        else if (!strcmp(a, "--phase") && nph < 16) {
            char *colon;
            phases[nph].rate_per_s = strtod(v, &colon);
            good = *colon == ':' && num_pos(colon + 1, &phases[nph].duration_s);
            nph++;
        } else {
            fprintf(stderr, "temctl load: unknown option %s\n", a);
            load_usage();
            return 2;
        }
        if (!good) {
            fprintf(stderr, "temctl load: bad value for %s: %s\n", a, v);
            return 2;
        }
    }
    if (nph == 0) phases[nph++] = (ctl_load_phase){.rate_per_s = rate, .duration_s = duration};
    for (uint32_t p = 0; p < nph; p++) {
        phases[p].batch = batch;
        phases[p].drain_s = drain;
        phases[p].settle_s = p > 0 ? settle_s : 0;
        phases[p].warmup_s = warmup < phases[p].duration_s ? warmup : 0;
        if (phases[p].rate_per_s <= 0 || phases[p].duration_s <= 0) {
            load_usage();
            return 2;
        }
    }
    if (!cluster_dir && (!nodes_arg || !genesis)) {
        load_usage();
        return 2;
    }
    if (base_port < 1024 || base_port + 10 + (int)cluster_nodes >= 32768) {
        fprintf(stderr, "temctl load: --base-port must leave every port in 1024..32767\n");
        return 2;
    }
    ctl_load_cluster cl = {0};
    const char *nodes[CTL_LOAD_NODES_MAX];
    uint32_t n_nodes = 0;
    char nodes_buf[CTL_LOAD_NODES_MAX * 160];
    if (cluster_dir) {
        if (mkdir(cluster_dir, 0700) != 0 && errno != EEXIST) {
            fprintf(stderr, "temctl load: cannot create %s: %s\n", cluster_dir, strerror(errno));
            return 1;
        }
        fresh = true;
        ctl_load_cluster_config cc = {.temd = temd, .dir = cluster_dir, .base_port = base_port, .n_nodes = cluster_nodes,
                                      .signers = signers, .seed = seed, .temd_args = temd_args, .n_temd_args = n_temd_args,
                                      .extra_participants = extra};
        if (ctl_load_cluster_start(&cc, &cl) != 0) return 1;
        for (uint32_t i = 0; i < cl.n; i++) nodes[n_nodes++] = cl.http[i];
        genesis = cl.genesis;
    } else {
        snprintf(nodes_buf, sizeof nodes_buf, "%s", nodes_arg);
        for (char *save, *t = strtok_r(nodes_buf, ",", &save); t && n_nodes < CTL_LOAD_NODES_MAX; t = strtok_r(NULL, ",", &save))
            nodes[n_nodes++] = t;
    }
    /* A signal stops the cluster we started rather than leaving it behind. */
    ctl_load *l = NULL;
    ctl_load_config lc = {.nodes = nodes, .n_nodes = n_nodes, .genesis = genesis, .seed = seed, .signers = signers,
                          .conns_per_node = conns, .fresh = fresh};
    int rc = 1;
    if (ctl_load_new(&lc, &l) != 0) goto done;
    rc = 0;
    for (uint32_t p = 0; p < nph; p++) {
        ctl_load_result r;
        if (ctl_load_run(l, &phases[p], &r) != 0) {
            rc = 1;
            break;
        }
        ctl_load_result_print(&r, stdout);
    }
done:
    ctl_load_free(l);
    if (cluster_dir) ctl_load_cluster_stop(&cl);
    return rc;
}
