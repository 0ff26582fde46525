/* api_market.c: the market views of the HTTP API: a slot's order book, its trades, and the
 * installed feeder with the last grid check. */
#include "node/node_internal.h"

static void reply_err(net_http_req *req, int status, const char *code, const char *msg) {
    /* NET_EGONE only means the client left; nothing else to do with the answer. */
    if (net_http_reply_error(req, status, code, msg) != NET_OK) return;
}

static void h_unavailable(void *ctx, net_http_req *req, const net_http_request *r) {
    (void)ctx;
    (void)r;
    reply_err(req, 501, "ENOTIMPL", "this view is not served by this build yet");
}

void node_api_market_routes(node *n, net_http *h) {
    (void)n;
    TEM_ASSERT(net_http_route(h, "GET", "/v1/book/", h_unavailable, n) == NET_OK);
    TEM_ASSERT(net_http_route(h, "GET", "/v1/trades", h_unavailable, n) == NET_OK);
    TEM_ASSERT(net_http_route(h, "GET", "/v1/feeder", h_unavailable, n) == NET_OK);
}
