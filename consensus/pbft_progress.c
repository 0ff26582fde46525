/* pbft_progress.c: a read-only summary of what a replica waits for at its next height: the
 * proposal, and whose PREPARE and COMMIT votes (or VIEW-CHANGE requests) have arrived. temd's
 * /v1/status uses it to name the validators a stalled chain is missing. */
#include "consensus/pbft.h"

static_assert(PBFT_REPLICAS_MAX <= 64, "progress masks are 64-bit");

void pbft_replica_progress(const pbft_replica *r, pbft_progress *out) {
    memset(out, 0, sizeof *out);
    out->height = r->delivered + 1;
    out->view = r->view;
    out->in_view_change = r->in_view_change;
    for (uint32_t i = 0; i < r->cfg.n; i++)
        if (r->vc_view[i] > r->view) out->view_change_mask |= 1ull << i;
    if (r->window == 0 || !r->slots) return;
    const pbft__slot *s = &r->slots[out->height % r->window];
    if (s->height != out->height || !s->has_pp || s->pp_view != r->view) return;
    out->has_proposal = true;
    for (uint32_t i = 0; i < r->cfg.n; i++) {
        const pbft__vote *p = &s->prepares[i], *c = &s->commits[i];
        if (p->set && p->view == r->view && memcmp(p->hash, s->pp_hash, 32) == 0) out->prepare_mask |= 1ull << i;
        if (c->set && c->view == r->view && memcmp(c->hash, s->pp_hash, 32) == 0) out->commit_mask |= 1ull << i;
    }
}
