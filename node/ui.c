/* ui.c: GET /ui, the live page (docs/operate.md "Live page"). The page is node/ui/index.html,
 * linked into the binary at build time (Makefile, UI_OBJ), so the node serves exactly the file
 * in the tree and needs no files at run time. It is static: every number on it comes from the
 * JSON API and /v1/events, fetched by the browser from this same node.
 *
 * The Content-Security-Policy allows only this origin and, for the page's one inline <script>
 * and one inline <style>, their SHA-256 hashes (computed here once from the embedded bytes),
 * so an injected script or style would not run even if a value from the API were ever
 * rendered as markup. */
#include "node/node_internal.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

extern const char _binary_node_ui_index_html_start[];
extern const char _binary_node_ui_index_html_end[];

#define UI_CSP_MAX 512

/* "'sha256-<base64>'" of the text between the first `open` tag and the next `close`; "" when
 * the page has no such element. */
static void inline_hash(const char *page, size_t len, const char *open, const char *close,
                        char *out, size_t cap) {
    out[0] = '\0';
    const char *a = memmem(page, len, open, strlen(open));
    if (a == NULL) return;
    a += strlen(open);
    const char *b = memmem(a, len - (size_t)(a - page), close, strlen(close));
    if (b == NULL) return;
    uint8_t h[32];
    ledger_sha256(h, a, (size_t)(b - a));
    char b64[sodium_base64_ENCODED_LEN(32, sodium_base64_VARIANT_ORIGINAL)];
    sodium_bin2base64(b64, sizeof b64, h, sizeof h, sodium_base64_VARIANT_ORIGINAL);
    snprintf(out, cap, "'sha256-%s'", b64);
}

void node_ui_http(void *ctx, net_http_req *req, const net_http_request *r) {
    (void)ctx;
    /* Only /ui and /ui/: the route is a prefix, and anything deeper is not a page. */
    if (strcmp(r->path, "/ui") != 0 && strcmp(r->path, "/ui/") != 0) {
        node_reply_err(req, 404, "ENOTFOUND", "no such page: the live page is /ui");
        return;
    }
    const char *page = _binary_node_ui_index_html_start;
    size_t len = (size_t)(_binary_node_ui_index_html_end - _binary_node_ui_index_html_start);
    /* The page never changes while the node runs: the policy is built once (loop thread only). */
    static char csp[UI_CSP_MAX];
    if (csp[0] == '\0') {
        char js[80], css[80];
        inline_hash(page, len, "<script>", "</script>", js, sizeof js);
        inline_hash(page, len, "<style>", "</style>", css, sizeof css);
        snprintf(csp, sizeof csp,
                 "default-src 'self'; script-src %s; style-src %s; img-src 'self' data:; "
                 "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
                 js[0] ? js : "'none'", css[0] ? css : "'none'");
    }
    if (net_http_reply_header(req, "content-security-policy", csp) != NET_OK ||
        net_http_reply_header(req, "x-content-type-options", "nosniff") != NET_OK ||
        net_http_reply_header(req, "cache-control", "no-store") != NET_OK) {
        /* The client left: the reply below only frees the request. */
    }
    if (net_http_reply(req, 200, "text/html; charset=utf-8", page, len) != NET_OK) { /* client gone */ }
}
