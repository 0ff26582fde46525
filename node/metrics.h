/* metrics.h: temd's Prometheus exposition (GET /metrics), named by Prometheus convention: base
 * units in the name (`_seconds`, `_bytes`), counters end `_total`, one `tem_build_info`, the
 * standard `process_*` series, one series per validator peer. docs/operate.md lists them. */
#ifndef NODE_METRICS_H
#define NODE_METRICS_H

#include "net/http.h"

struct node;

/* The /metrics handler (ctx = the node). Answers 200 text/plain; version=0.0.4, or 500 when the
 * page cannot be built (out of memory). */
void node_metrics_http(void *ctx, net_http_req *req, const net_http_request *r);

/* Writes the whole exposition to f. Returns 0, or -1 when a write failed. */
int node_metrics_write(struct node *n, FILE *f);

#endif
