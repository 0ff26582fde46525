/* node_fixture.h: a real temd validator (validator 0 of a 4-validator genesis whose keys are
 * tests/ledger_fixture.h's) for the fuzz targets that drive the node itself: the same steps as
 * node_run (store with the market contracts, mempool log, peer transport, consensus, optionally
 * the HTTP API on 127.0.0.1 with a free port), on a scratch data dir (fuzz_tmp.h), without signals
 * and without starting the peer listener (messages come in through node_on_frame). Created once
 * per process; the node itself is never torn down (libFuzzer has no exit hook), its dir is. */
#ifndef FUZZ_NODE_FIXTURE_H
#define FUZZ_NODE_FIXTURE_H

#include "node/node_internal.h"
#include "tests/fuzz/fuzz_tmp.h"
#include "tests/ledger_fixture.h"

#include <unistd.h>

/* sync_first: a validator started on an empty data dir, following without voting until f+1
 * validators have named a tip it has passed (node_run's rule); otherwise consensus starts. */
static node *fxn_open(bool with_http, bool sync_first) {
    node *n = tem_calloc(1, sizeof *n);
    TEM_ASSERT(n != NULL);
    node_config_defaults(&n->cfg);
    n->cfg.log_level = NODE_LOG_ERROR + 1; /* quiet: fuzzing logs every refusal */
    snprintf(n->cfg.data_dir, sizeof n->cfg.data_dir, "%s", fuzz_tmpdir("tem-fuzz-node"));
    if (with_http) snprintf(n->cfg.http, sizeof n->cfg.http, "127.0.0.1:0");
    n->cfg.http_rate_reqs_per_s = 0; /* one client sends every input: no 429s in the way */
    n->cfg.mempool_txs_max = 4096;
    n->cfg.http_request_timeout_ms = 2000; /* a stalled request costs the fuzzer 2 s, not 10 */
    n->self = 0;
    TEM_ASSERT(uv_loop_init(&n->loop) == 0);
    uv_timer_t *timers[] = {&n->t_view, &n->t_fetch, &n->t_propose, &n->t_tick};
    for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++) {
        TEM_ASSERT(uv_timer_init(&n->loop, timers[i]) == 0);
        timers[i]->data = n;
    }
    /* On disk too: GET /v1/genesis serves the file's bytes. */
    snprintf(n->cfg.genesis, sizeof n->cfg.genesis, "%s/genesis.json", n->cfg.data_dir);
    char *gj = fx_genesis_json(4, NULL);
    FILE *gf = fopen(n->cfg.genesis, "wb");
    TEM_ASSERT(gf && fwrite(gj, 1, strlen(gj), gf) == strlen(gj) && fclose(gf) == 0);
    tem_free(gj);
    char err[256];
    TEM_ASSERT(ledger_genesis_load(n->cfg.genesis, &n->g, err, sizeof err) == LEDGER_OK);
    fx_vkey(0, n->key.ed_sec, n->key.ed_pub);
    n->key.is_validator = 1;
    n->cfg.block_interval_ms = n->g.view_timeout_ms / 4 ? n->g.view_timeout_ms / 4 : 1;
    TEM_ASSERT(contracts_market_new(&n->mkt) == LEDGER_OK);
    contracts_executor(n->mkt, &n->ex);
    TEM_ASSERT(ledger_store_open(n->cfg.data_dir, &n->g, contracts_genesis_init, NULL, &n->store) == LEDGER_OK);
    TEM_ASSERT(node_votes_open(n->cfg.data_dir, &n->votes) == LEDGER_OK);

    static char logpath[NODE_PATH_MAX + 32];
    snprintf(logpath, sizeof logpath, "%s/mempool.log", n->cfg.data_dir);
    node_mempool_config mc = {.log_path = logpath, .txs_max = n->cfg.mempool_txs_max,
                              .nonce_window = n->cfg.mempool_nonce_window,
                              .per_signer_max = n->cfg.mempool_nonce_window, .genesis = &n->g};
    mc.precheck = node_mempool_precheck_signer;
    mc.precheck_ctx = n->store;
    TEM_ASSERT(node_mempool_new(&n->loop, &mc, n->store, &n->mp) == 0);
    TEM_ASSERT(node_mempool_recover(n->mp, NULL) == 0);

    net_config nc;
    memset(&nc, 0, sizeof nc);
    nc.genesis = &n->g;
    memcpy(nc.sec, n->key.ed_sec, sizeof nc.sec);
    nc.log_level = NET_LOG_ERROR + 1;
    net_callbacks cb = {.frame = node_on_frame, .ctx = n};
    TEM_ASSERT(net_new(&n->loop, &nc, &cb, &n->net) == NET_OK);
    if (with_http) TEM_ASSERT(node_api_start(n) == NODE_OK);
    n->started_wall_ms = node_now_ms();
    if (sync_first) n->sync_first = true;
    else TEM_ASSERT(node_replica_start(n) == NODE_OK);
    n->exit_code = 0;
    return n;
}

#endif
