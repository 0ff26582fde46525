/* host.c: the pBFT host (host.h): the event FIFO, the action loop that performs a replica's
 * actions in order over host_io, and the validation queue that hands proposals to the program
 * one at a time once their parent is delivered. temd and the simulator both run this file;
 * docs/consensus.md ("The host") is its prose. */
#include "consensus/host.h"

static void report(host *h, int err, const char *what, uint64_t height) {
    if (h->io.report) h->io.report(h->io.ctx, err, what, height);
}

static void halt(host *h, int err, const char *what, uint64_t height) {
    TEM_ASSERT(err < 0);
    if (h->halted) return;
    h->halted = true;
    h->halt_err = err;
    report(h, err, what, height);
}

static bool bug(const host *h, pbft_planted_bug b) { return h->r->cfg.planted_bug == b; }

/* ================================================================== validation queue */

/* Takes the block out of the REQUEST_VALIDATION action (no copy, so no allocation can fail). */
static void validation_queue(host *h, pbft_action *a) {
    if (h->val_n >= HOST_VALIDATIONS_MAX) {
        /* The replica marked the block as asked and will not ask again: it stays unvalidated,
         * so this replica does not prepare it and the view times out. Loud, never silent. */
        h->validations_refused++;
        report(h, PBFT_EFULL, "validation", a->height);
        return;
    }
    host__validation *v = &h->val[h->val_n++];
    v->height = a->height;
    memcpy(v->hash, a->block_hash, 32);
    v->block = a->msg;
    v->len = a->msg_len;
    a->msg = NULL;
    a->msg_len = 0;
}

static void validation_remove(host *h, uint32_t i) {
    TEM_ASSERT(i < h->val_n);
    /* Shift, not swap: requests keep their arrival order. */
    memmove(&h->val[i], &h->val[i + 1], (h->val_n - i - 1) * sizeof h->val[0]);
    h->val_n--;
}

/* Hands the oldest request for delivered+1 to the program when none is in flight; drops
 * requests for heights already delivered (their answer could change nothing). */
static void validation_offer(host *h) {
    if (h->validating || h->answered || h->halted) return;
    uint64_t next = pbft_replica_delivered(h->r) + 1;
    uint32_t i = 0;
    while (i < h->val_n) {
        if (h->val[i].height < next) {
            tem_free(h->val[i].block);
            validation_remove(h, i);
            continue;
        }
        if (h->val[i].height == next) break;
        i++;
    }
    if (i >= h->val_n) return;
    host__validation v = h->val[i];
    /* In flight before the call: the program may answer from inside it. */
    h->validating = true;
    h->validating_height = v.height;
    memcpy(h->validating_hash, v.hash, 32);
    int rc = h->io.validate(h->io.ctx, v.height, v.hash, v.block, v.len);
    if (rc != PBFT_OK) {
        /* Kept at its place: offered again after the next event. */
        h->validating = false;
        report(h, rc, "validation", v.height);
        return;
    }
    /* run() is not re-entered from a callback, so the queue is as it was before the call. */
    tem_free(v.block);
    validation_remove(h, i);
}

/* ================================================================== the action loop */

/* Performs the current list from h->next on. false when it stopped before the end: a PERSIST
 * is in flight (the rest waits for host_persist_done) or the host halted. */
static bool perform(host *h) {
    pbft_actions *l = h->acts;
    while (h->next < l->n) {
        if (h->halted) return false;
        /* The rule this file exists for: nothing after a PERSIST (above all no vote) leaves
         * before the record is durable. A crash in between would otherwise let a restarted
         * replica sign a different block for the same (view, height). The planted bug lets the
         * rest of the list run on while the write is in flight. */
        if (h->persists_pending && !bug(h, PBFT_BUG_SEND_BEFORE_PERSIST)) return false;
        pbft_action *a = &l->a[h->next++];
        switch (a->kind) {
        case PBFT_ACT_SEND:
            h->io.send(h->io.ctx, a->to, a->msg, a->msg_len);
            break;
        case PBFT_ACT_BROADCAST:
            h->io.send(h->io.ctx, PBFT_TO_ALL, a->msg, a->msg_len);
            break;
        case PBFT_ACT_PERSIST: {
            int rc = h->io.persist(h->io.ctx, a->msg, a->msg_len);
            if (rc == HOST_PERSIST_PENDING) {
                h->persists_pending++;
            } else if (rc != PBFT_OK) {
                halt(h, rc < 0 ? rc : PBFT_EINVAL, "persist", 0);
                return false;
            }
            break;
        }
        case PBFT_ACT_SET_TIMER:
            h->io.set_timer(h->io.ctx, a->timer, a->duration_ms, a->timer_seq);
            break;
        case PBFT_ACT_CANCEL_TIMER:
            h->io.cancel_timer(h->io.ctx, a->timer);
            break;
        case PBFT_ACT_DELIVER: {
            int rc = h->io.deliver(h->io.ctx, a);
            if (rc != PBFT_OK) {
                halt(h, rc < 0 ? rc : PBFT_EINVAL, "deliver", a->height);
                return false;
            }
            break;
        }
        case PBFT_ACT_REQUEST_PROPOSAL:
            h->io.request_proposal(h->io.ctx, a->height);
            break;
        case PBFT_ACT_REQUEST_VALIDATION:
            validation_queue(h, a);
            break;
        case PBFT_ACT_REQUEST_BLOCKS:
            h->io.request_blocks(h->io.ctx, a->height);
            break;
        }
    }
    return !h->halted;
}

static void step(host *h, const pbft_event *ev) {
    TEM_ASSERT(h->next == h->acts->n);
    pbft_actions_clear(h->acts);
    h->next = 0;
    /* Actions appended before an error are performed all the same: a step that fails half way
     * (out of memory) may already have persisted and signed, and what it signed must leave
     * only after what it persisted. */
    int rc = pbft_replica_step(h->r, ev, h->acts);
    if (h->io.stepped) h->io.stepped(h->io.ctx, ev, rc);
}

static bool idle(const host *h) {
    return !h->running && h->q_n == 0 && !h->answered && h->next == h->acts->n &&
           (h->persists_pending == 0 || bug(h, PBFT_BUG_SEND_BEFORE_PERSIST));
}

/* Runs until nothing is left to do or something must be waited for. Callbacks may post events
 * or answer a validation: those calls queue and return, and this loop picks them up. */
static void run(host *h) {
    if (h->running) return;
    h->running = true;
    while (!h->halted) {
        if (!perform(h)) break;
        validation_offer(h);
        if (h->answered) {
            h->answered = false;
            pbft_event ev = {.kind = PBFT_EV_VALIDATED, .height = h->validating_height,
                             .ok = h->answer_ok};
            memcpy(ev.block_hash, h->validating_hash, 32);
            step(h, &ev);
            continue;
        }
        if (h->q_n == 0) break;
        host__event q = h->q[h->q_head];
        h->q_head = (h->q_head + 1) % HOST_EVENTS_MAX;
        h->q_n--;
        step(h, &q.ev);
        tem_free(q.data);
        tem_free(q.cert);
    }
    h->running = false;
}

/* ================================================================== API */

int host_init(host *h, pbft_replica *r, const host_io *io) {
    memset(h, 0, sizeof *h);
    if (!r || !io || !io->send || !io->persist || !io->set_timer || !io->cancel_timer ||
        !io->deliver || !io->request_proposal || !io->validate || !io->request_blocks)
        return PBFT_EINVAL;
    h->acts = tem_calloc(1, sizeof *h->acts);
    if (!h->acts) return PBFT_ENOMEM;
    pbft_actions_init(h->acts);
    h->r = r;
    h->io = *io;
    return PBFT_OK;
}

int host_start(host *h) {
    if (h->halted) return PBFT_EHALTED;
    TEM_ASSERT(idle(h));
    pbft_actions_clear(h->acts);
    h->next = 0;
    int rc = pbft_replica_start(h->r, h->acts);
    run(h);
    if (h->halted) return PBFT_EHALTED;
    return rc;
}

static void event_free(host__event *q) {
    tem_free(q->data);
    tem_free(q->cert);
}

int host_post(host *h, const pbft_event *ev) {
    if (h->halted) return PBFT_EHALTED;
    if (ev->kind == PBFT_EV_VALIDATED) return PBFT_EINVAL;
    if (idle(h)) {
        /* The common case in temd: nothing waits, so no copy. */
        h->running = true;
        step(h, ev);
        h->running = false;
        run(h);
        return PBFT_OK;
    }
    if (h->q_n >= HOST_EVENTS_MAX) {
        h->events_refused++;
        return PBFT_EFULL;
    }
    host__event q;
    memset(&q, 0, sizeof q);
    q.ev = *ev;
    if (ev->data && ev->len) {
        if (!(q.data = tem_malloc(ev->len))) return PBFT_ENOMEM;
        memcpy(q.data, ev->data, ev->len);
        q.ev.data = q.data;
    }
    if (ev->cert && ev->cert_len) {
        if (!(q.cert = tem_malloc(ev->cert_len))) {
            event_free(&q);
            return PBFT_ENOMEM;
        }
        memcpy(q.cert, ev->cert, ev->cert_len);
        q.ev.cert = q.cert;
    }
    h->q[(h->q_head + h->q_n) % HOST_EVENTS_MAX] = q;
    h->q_n++;
    run(h);
    return PBFT_OK;
}

int host_validated(host *h, uint64_t height, const uint8_t hash[32], bool ok) {
    if (h->halted) return PBFT_EHALTED;
    if (!h->validating || height != h->validating_height ||
        memcmp(hash, h->validating_hash, 32) != 0)
        return PBFT_ESTALE;
    h->validating = false;
    h->answered = true;
    h->answer_ok = ok;
    run(h);
    return PBFT_OK;
}

int host_persist_done(host *h, int rc) {
    if (h->halted) return PBFT_EHALTED;
    if (h->persists_pending == 0) return PBFT_ESTATE;
    h->persists_pending--;
    if (rc != PBFT_OK) {
        halt(h, rc < 0 ? rc : PBFT_EINVAL, "persist", 0);
        return PBFT_EHALTED;
    }
    run(h);
    return PBFT_OK;
}

uint32_t host_queued(const host *h) { return h->q_n; }

uint32_t host_validations_waiting(const host *h) { return h->val_n; }

bool host_halted(const host *h, int *err) {
    if (err) *err = h->halt_err;
    return h->halted;
}

void host_free(host *h) {
    for (uint32_t i = 0; i < h->q_n; i++) event_free(&h->q[(h->q_head + i) % HOST_EVENTS_MAX]);
    for (uint32_t i = 0; i < h->val_n; i++) tem_free(h->val[i].block);
    if (h->acts) {
        pbft_actions_clear(h->acts);
        tem_free(h->acts);
    }
    memset(h, 0, sizeof *h);
}
