/* grid_model.c: the grid check on a compiled feeder model, without the ledger: the radial
 * topology builder (shared with the offline importer), the compiler from an InstallFeeder
 * message to the compiled model blob, the per-match limit, the commit of an executed trade into
 * a slot blob, and path resistance / loss factors. Integers only (docs/grid.md).
 *
 * The compiled model is a byte blob stored as one state value, read in place on every match:
 *   header  GRID__HDR bytes: "TGM1", u32 n, u32 margin_ppm, u32 dense_n, source hash (32), pad
 *   n bus records of GRID__REC bytes, in BFS order from the slack (a parent precedes its
 *     children; record 0 is the slack), fields at the offsets named R_* below
 *   n (u32 bus id, u32 record) pairs sorted by bus id, for lookups
 *   if header u32 at 12 (dense_n) > 0: dense_n u32 records indexed by bus id (UINT32_MAX =
 *     no such bus), for the common case of nearly contiguous bus numbers
 * Each non-slack record also describes the line to its parent. */
#include "contracts/grid.h"

#include <inttypes.h>
#include <endian.h>
#include <stdarg.h>

#define GRID__MAGIC "TGM1"
/* A dense bus-number table is added when the largest bus number is below this. */
#define GRID__DENSE_MAX(n) (4u * (n) + 64u)
#define GRID__HDR 64
#define GRID__REC 128

/* Record fields (byte offsets). u32: */
#define R_ID 0
#define R_PARENT 4   /* record index of the parent (slack: 0) */
#define R_DEPTH 8
#define R_LFROM 12   /* line to the parent as written in lines.csv */
#define R_LTO 16
/* i64: */
#define R_V0 24      /* base voltage, npu */
#define R_VLO 32     /* band after the margin, npu */
#define R_VHI 40
#define R_A 48       /* voltage sensitivity of the parent line, fpu per W of subtree injection */
#define R_KP 56      /* flow sensitivity of the parent line, ppm */
#define R_F0 64      /* base active flow of the parent line at the parent end, W, + = downstream */
#define R_FHI 72     /* band of that flow after the margin, W */
#define R_FLO 80
#define R_RROOT 88   /* series resistance slack -> bus, micro-ohm */
#define R_LFROOT 96  /* loss factor slack -> bus, ppm */
#define R_RMAX 104   /* largest path resistance to any bus, micro-ohm */
#define R_LFMAX 112  /* largest path loss factor to any bus, ppm */
#define R_CL 120     /* sum of (flow sensitivity - 1) over the lines slack -> bus, ppm: the
                        marginal losses between the slack and a W injected here */

_Static_assert(R_CL + 8 == GRID__REC, "record layout");

/* Milliseconds per hour: a trade of q Wh in a slot of slot_ms is q * MS_PER_H / slot_ms W. */
#define MS_PER_H 3600000LL
/* Bounds that keep every product of the check inside 128 bits (docs/grid.md, "Units"). */
#define GRID__W_MAX 10000000000000LL     /* 1e13 W: flows, ratings, loads */
#define GRID__V_NPU_MAX 10000000000LL    /* 10 pu */
#define GRID__DV_MAX 1000000000000LL     /* 0.001 pu per W */
#define GRID__R_MAX 1000000000000LL      /* 1 Mohm per line, micro-ohm */
#define GRID__SLOT_MS_MAX (24LL * MS_PER_H) /* one day */
#define GRID__QTY_MAX 1000000000000LL    /* 1e12 Wh: one match, and a slot's sum at a bus */
#define GRID__CL_MAX 400000LL             /* cumulative loss factor, ppm (40 %) */

typedef __int128 i128;

/* Little-endian loads and stores through memcpy: one instruction each on the machines we run
 * on, and the same bytes everywhere. */
static inline uint32_t ld32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return le32toh(v);
}
static inline int64_t ld64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return (int64_t)le64toh(v);
}
static inline void st64(uint8_t *p, int64_t v) {
    uint64_t x = htole64((uint64_t)v);
    memcpy(p, &x, 8);
}
static inline uint32_t rd32(const uint8_t *r, size_t off) { return ld32(r + off); }
static inline int64_t rd64(const uint8_t *r, size_t off) { return ld64(r + off); }
static inline void wr32(uint8_t *r, size_t off, uint32_t v) { tem_put_u32le(r + off, v); }
static inline void wr64(uint8_t *r, size_t off, int64_t v) { st64(r + off, v); }

/* ================================================================== topology */

typedef struct {
    uint32_t id, idx;
} grid__pair;

static int pair_cmp(const void *a, const void *b) {
    const grid__pair *x = a, *y = b;
    return (x->id > y->id) - (x->id < y->id);
}

/* Index of bus id in the sorted pairs, or UINT32_MAX. */
static uint32_t pair_find(const grid__pair *p, uint32_t n, uint32_t id) {
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (p[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (lo < n && p[lo].id == id) ? p[lo].idx : UINT32_MAX;
}

int grid_topology_build(uint32_t n, const uint32_t *bus_ids, uint32_t slack, uint32_t m,
                        const uint32_t *from, const uint32_t *to, uint32_t *order,
                        uint32_t *parent, uint32_t *parent_line, uint32_t *bad) {
    TEM_ASSERT(bus_ids && order && parent && parent_line && bad);
    if (n == 0 || n > GRID_BUSES_MAX || m > GRID_BUSES_MAX) return GRID_ETOOBIG;
    if (slack >= n) return GRID_EINVAL;
    int rc = GRID_ENOMEM;
    grid__pair *pairs = tem_malloc(sizeof *pairs * n);
    uint32_t *ends = tem_malloc(sizeof *ends * 2 * (m ? m : 1));
    uint32_t *deg = tem_calloc((size_t)n + 1, sizeof *deg);
    uint32_t *adj = tem_malloc(sizeof *adj * 2 * (m ? m : 1));
    uint8_t *seen = tem_calloc(n, 1);
    if (!pairs || !ends || !deg || !adj || !seen) goto out;
    for (uint32_t i = 0; i < n; i++) pairs[i] = (grid__pair){bus_ids[i], i};
    qsort(pairs, n, sizeof *pairs, pair_cmp);
    for (uint32_t i = 1; i < n; i++) {
        if (pairs[i].id == pairs[i - 1].id) {
            *bad = pairs[i].idx > pairs[i - 1].idx ? pairs[i].idx : pairs[i - 1].idx;
            rc = GRID_EDUPBUS;
            goto out;
        }
    }
    for (uint32_t l = 0; l < m; l++) {
        uint32_t a = pair_find(pairs, n, from[l]), b = pair_find(pairs, n, to[l]);
        if (a == UINT32_MAX || b == UINT32_MAX) {
            *bad = l;
            rc = GRID_EUNKNOWNBUS;
            goto out;
        }
        if (a == b) {
            *bad = l;
            rc = GRID_ECYCLE;
            goto out;
        }
        ends[2 * l] = a;
        ends[2 * l + 1] = b;
        deg[a + 1]++;
        deg[b + 1]++;
    }
    /* Adjacency in CSR form, each bus' lines in line order, so the BFS order (and every record
     * index derived from it) is a pure function of the message. */
    for (uint32_t i = 0; i < n; i++) deg[i + 1] += deg[i];
    {
        uint32_t *fill = tem_malloc(sizeof *fill * n);
        if (!fill) goto out;
        memcpy(fill, deg, sizeof *fill * n);
        for (uint32_t l = 0; l < m; l++) {
            adj[fill[ends[2 * l]]++] = l;
            adj[fill[ends[2 * l + 1]]++] = l;
        }
        tem_free(fill);
    }
    uint32_t head = 0, tail = 0;
    order[tail++] = slack;
    seen[slack] = 1;
    parent[slack] = slack;
    parent_line[slack] = UINT32_MAX;
    while (head < tail) {
        uint32_t u = order[head++];
        for (uint32_t k = deg[u]; k < deg[u + 1]; k++) {
            uint32_t l = adj[k];
            if (l == parent_line[u]) continue;
            uint32_t v = ends[2 * l] == u ? ends[2 * l + 1] : ends[2 * l];
            if (seen[v]) {
                /* Reached twice: this line closes a loop (or runs parallel to another). */
                *bad = l;
                rc = GRID_ECYCLE;
                goto out;
            }
            seen[v] = 1;
            parent[v] = u;
            parent_line[v] = l;
            order[tail++] = v;
        }
    }
    if (tail != n) {
        for (uint32_t i = 0; i < n; i++) {
            if (!seen[i]) {
                *bad = i;
                break;
            }
        }
        rc = GRID_EISLAND;
        goto out;
    }
    TEM_ASSERT(m == n - 1); /* connected and loop-free: a tree */
    rc = GRID_OK;
out:
    tem_free(pairs);
    tem_free(ends);
    tem_free(deg);
    tem_free(adj);
    tem_free(seen);
    return rc;
}

/* ================================================================== compile */

static void why_set(char *why, size_t whylen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void why_set(char *why, size_t whylen, const char *fmt, ...) {
    if (!why || whylen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
}

/* floor(sqrt(v)) for v < 2^126, by Newton's method from above. */
static uint64_t isqrt_u128(unsigned __int128 v) {
    if (v < 2) return (uint64_t)v;
    unsigned __int128 x = v, y = (x + 1) / 2;
    if (x > ((unsigned __int128)1 << 64)) {
        /* start near 2^(bits/2) so the iteration takes a few dozen steps, not a hundred */
        int bits = 0;
        for (unsigned __int128 t = v; t; t >>= 1) bits++;
        x = (unsigned __int128)1 << ((bits + 1) / 2 + 1);
        y = (x + v / x) / 2;
    }
    while (y < x) {
        x = y;
        y = (x + v / x) / 2;
    }
    return (uint64_t)x;
}

/* Longest weighted path from every bus to any other (tree DP: down, then up through the parent
 * with the best and second-best child). w[k] is the weight of record k's parent line (w[0] = 0);
 * par[k] its parent record; out[k] the result. Records are in BFS order. */
static int farthest(uint32_t n, const uint32_t *par, const int64_t *w, int64_t *out) {
    int64_t *down = tem_calloc(n, sizeof *down), *best1 = tem_calloc(n, sizeof *best1),
            *best2 = tem_calloc(n, sizeof *best2), *up = tem_calloc(n, sizeof *up);
    uint32_t *arg1 = tem_malloc(sizeof *arg1 * n);
    int rc = GRID_ENOMEM;
    if (!down || !best1 || !best2 || !up || !arg1) goto out;
    for (uint32_t k = 0; k < n; k++) arg1[k] = UINT32_MAX;
    for (uint32_t k = n; k-- > 1;) {
        down[k] = best1[k];
        int64_t v = w[k] + down[k]; /* bounded: n * GRID__R_MAX-sized weights, < 2^63 */
        uint32_t p = par[k];
        if (v > best1[p] || arg1[p] == UINT32_MAX) {
            best2[p] = best1[p];
            best1[p] = v;
            arg1[p] = k;
        } else if (v > best2[p]) {
            best2[p] = v;
        }
    }
    down[0] = best1[0];
    up[0] = 0;
    for (uint32_t k = 1; k < n; k++) {
        uint32_t p = par[k];
        int64_t sib = arg1[p] == k ? best2[p] : best1[p];
        int64_t via = up[p] > sib ? up[p] : sib;
        up[k] = w[k] + via;
    }
    for (uint32_t k = 0; k < n; k++) out[k] = down[k] > up[k] ? down[k] : up[k];
    rc = GRID_OK;
out:
    tem_free(down);
    tem_free(best1);
    tem_free(best2);
    tem_free(up);
    tem_free(arg1);
    return rc;
}

int grid_model_compile(const Tem__V1__InstallFeeder *msg, uint32_t margin_ppm, uint8_t **blob,
                       size_t *blob_len, char *why, size_t whylen) {
    TEM_ASSERT(msg && blob && blob_len);
    if (why && whylen) why[0] = 0;
    if (msg->source_hash.len != LEDGER_HASH_BYTES) {
        why_set(why, whylen, "source_hash must be 32 bytes, not %zu", msg->source_hash.len);
        return GRID_EHASH;
    }
    size_t nb = msg->n_buses, nl = msg->n_lines;
    if (nb == 0 || nb > GRID_BUSES_MAX || nl > GRID_BUSES_MAX) {
        why_set(why, whylen, "%zu buses and %zu lines (1 to %u buses)", nb, nl, GRID_BUSES_MAX);
        return nb == 0 ? GRID_EMODEL : GRID_ETOOBIG;
    }
    uint32_t n = (uint32_t)nb, m = (uint32_t)nl;
    if (margin_ppm == UINT32_MAX) margin_ppm = msg->margin_ppm;
    if (margin_ppm > GRID_PPM / 2) {
        why_set(why, whylen, "margin %u ppm is above 50%%", margin_ppm);
        return GRID_EMODEL;
    }
    uint32_t slack = UINT32_MAX;
    for (uint32_t i = 0; i < n; i++) {
        const Tem__V1__FeederBus *b = msg->buses[i];
        if (!b) return GRID_EMODEL;
        if (b->slack) {
            if (slack != UINT32_MAX) {
                why_set(why, whylen, "buses %u and %u are both slack", msg->buses[slack]->bus, b->bus);
                return GRID_ESLACK;
            }
            slack = i;
        }
    }
    if (slack == UINT32_MAX) {
        why_set(why, whylen, "no slack bus");
        return GRID_ESLACK;
    }
    for (uint32_t l = 0; l < m; l++) {
        if (!msg->lines[l]) return GRID_EMODEL;
    }

    int rc = GRID_ENOMEM;
    uint32_t *ids = tem_malloc(sizeof *ids * n), *from = tem_malloc(sizeof *from * (m ? m : 1)),
             *to = tem_malloc(sizeof *to * (m ? m : 1)), *order = tem_malloc(sizeof *order * n),
             *parent = tem_malloc(sizeof *parent * n), *pline = tem_malloc(sizeof *pline * n),
             *pos = tem_malloc(sizeof *pos * n), *rpar = tem_malloc(sizeof *rpar * n);
    int64_t *wr = tem_calloc(n, sizeof *wr), *wl = tem_calloc(n, sizeof *wl),
            *fr = tem_calloc(n, sizeof *fr), *fl = tem_calloc(n, sizeof *fl);
    uint8_t *out = NULL;
    uint32_t max_id = 0;
    for (uint32_t i = 0; i < n; i++)
        if (msg->buses[i]->bus > max_id) max_id = msg->buses[i]->bus;
    uint32_t dense_n = max_id < GRID__DENSE_MAX(n) ? max_id + 1 : 0;
    size_t len = GRID__HDR + (size_t)n * GRID__REC + (size_t)n * 8 + (size_t)dense_n * 4;
    grid__pair *pairs = tem_malloc(sizeof *pairs * n);
    if (!ids || !from || !to || !order || !parent || !pline || !pos || !rpar || !wr || !wl ||
        !fr || !fl || !pairs)
        goto fail;
    for (uint32_t i = 0; i < n; i++) ids[i] = msg->buses[i]->bus;
    for (uint32_t l = 0; l < m; l++) {
        from[l] = msg->lines[l]->from;
        to[l] = msg->lines[l]->to;
    }
    uint32_t bad = 0;
    rc = grid_topology_build(n, ids, slack, m, from, to, order, parent, pline, &bad);
    switch (rc) {
    case GRID_OK: break;
    case GRID_EDUPBUS: why_set(why, whylen, "bus %u listed twice", ids[bad]); goto fail;
    case GRID_EUNKNOWNBUS:
        why_set(why, whylen, "line %u-%u: unknown bus", from[bad], to[bad]);
        goto fail;
    case GRID_ECYCLE:
        why_set(why, whylen, "line %u-%u closes a loop", from[bad], to[bad]);
        goto fail;
    case GRID_EISLAND:
        why_set(why, whylen, "bus %u is not connected to the slack bus %u", ids[bad], ids[slack]);
        goto fail;
    default: goto fail;
    }
    for (uint32_t k = 0; k < n; k++) pos[order[k]] = k;

    out = tem_calloc(1, len);
    if (!out) {
        rc = GRID_ENOMEM;
        goto fail;
    }
    memcpy(out, GRID__MAGIC, 4);
    wr32(out, 4, n);
    wr32(out, 8, margin_ppm);
    memcpy(out + 16, msg->source_hash.data, LEDGER_HASH_BYTES);
    const int64_t mg = margin_ppm;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t bi = order[k];
        const Tem__V1__FeederBus *b = msg->buses[bi];
        uint8_t *r = out + GRID__HDR + (size_t)k * GRID__REC;
        uint32_t pk = pos[parent[bi]];
        rpar[k] = pk;
        wr32(r, R_ID, b->bus);
        wr32(r, R_PARENT, pk);
        wr32(r, R_DEPTH, k == 0 ? 0 : rd32(out + GRID__HDR + (size_t)pk * GRID__REC, R_DEPTH) + 1);
        /* The offline tool states the tree it used; a disagreement means the sensitivities were
         * computed for another topology. */
        if (k > 0 && (b->parent != ids[parent[bi]] || b->parent_line != pline[bi])) {
            why_set(why, whylen, "bus %u: parent %u (line %u) given, the tree has %u (line %u)",
                    b->bus, b->parent, b->parent_line, ids[parent[bi]], pline[bi]);
            rc = GRID_EMODEL;
            goto fail;
        }
        if (b->base_v_npu == 0 || b->base_v_npu > (uint64_t)GRID__V_NPU_MAX) {
            why_set(why, whylen, "bus %u: base voltage %" PRIu64 " npu out of range", b->bus, b->base_v_npu);
            rc = GRID_EVBAND;
            goto fail;
        }
        if (k > 0 && (b->vmin_ppm >= b->vmax_ppm || b->vmax_ppm > 10 * GRID_PPM)) {
            why_set(why, whylen, "bus %u: voltage band %u..%u ppm is empty or out of range", b->bus,
                    b->vmin_ppm, b->vmax_ppm);
            rc = GRID_EVBAND;
            goto fail;
        }
        if (b->dv_fpu_per_w > (uint64_t)GRID__DV_MAX) {
            why_set(why, whylen, "bus %u: voltage sensitivity out of range", b->bus);
            rc = GRID_ESENS;
            goto fail;
        }
        if (b->base_p_w > GRID__W_MAX || b->base_p_w < -GRID__W_MAX || b->base_q_var > GRID__W_MAX ||
            b->base_q_var < -GRID__W_MAX) {
            why_set(why, whylen, "bus %u: base load out of range", b->bus);
            rc = GRID_EMODEL;
            goto fail;
        }
        /* The margin keeps that share of each limit's distance from nominal (1 pu) unused. */
        int64_t vmin = (int64_t)b->vmin_ppm * 1000, vmax = (int64_t)b->vmax_ppm * 1000;
        if (vmin < GRID_NPU_PER_PU) vmin += (GRID_NPU_PER_PU - vmin) / GRID_PPM * mg +
                                            (GRID_NPU_PER_PU - vmin) % GRID_PPM * mg / GRID_PPM;
        if (vmax > GRID_NPU_PER_PU) vmax -= (vmax - GRID_NPU_PER_PU) / GRID_PPM * mg +
                                            (vmax - GRID_NPU_PER_PU) % GRID_PPM * mg / GRID_PPM;
        wr64(r, R_V0, (int64_t)b->base_v_npu);
        wr64(r, R_VLO, vmin);
        wr64(r, R_VHI, vmax);
        if (k == 0) {
            wr32(r, R_LFROM, b->bus);
            wr32(r, R_LTO, b->bus);
            continue;
        }
        const Tem__V1__FeederLine *ln = msg->lines[pline[bi]];
        const Tem__V1__FeederBus *pb = msg->buses[parent[bi]];
        wr32(r, R_LFROM, ln->from);
        wr32(r, R_LTO, ln->to);
        if (ln->r_uohm + ln->x_uohm == 0 || ln->r_uohm > (uint64_t)GRID__R_MAX ||
            ln->x_uohm > (uint64_t)GRID__R_MAX) {
            why_set(why, whylen, "line %u-%u: %s impedance", ln->from, ln->to,
                    ln->r_uohm + ln->x_uohm == 0 ? "zero" : "out-of-range");
            rc = GRID_EIMPEDANCE;
            goto fail;
        }
        if (ln->rate_va == 0 || ln->rate_va > (uint64_t)GRID__W_MAX) {
            why_set(why, whylen, "line %u-%u: rating %" PRIu64 " VA not positive or out of range",
                    ln->from, ln->to, ln->rate_va);
            rc = GRID_ERATING;
            goto fail;
        }
        if (ln->base_p_w > GRID__W_MAX || ln->base_p_w < -GRID__W_MAX ||
            ln->base_q_var > (uint64_t)GRID__W_MAX || ln->loss_at_rate_w > ln->rate_va) {
            why_set(why, whylen, "line %u-%u: base flow or loss out of range", ln->from, ln->to);
            rc = GRID_EMODEL;
            goto fail;
        }
        if (ln->flow_sens_ppm < GRID_PPM / 2 || ln->flow_sens_ppm > 2 * GRID_PPM ||
            ln->loss_factor_ppm > GRID_PPM) {
            why_set(why, whylen, "line %u-%u: flow sensitivity %u ppm or loss factor %u ppm out of range",
                    ln->from, ln->to, ln->flow_sens_ppm, ln->loss_factor_ppm);
            rc = GRID_ESENS;
            goto fail;
        }
        /* Injection deeper in a radial feeder lifts the voltage at least as much as at the bus
         * above it; anything else is not a radial power flow's sensitivity. */
        if (b->dv_fpu_per_w < pb->dv_fpu_per_w) {
            why_set(why, whylen, "bus %u: voltage sensitivity below its parent bus %u's", b->bus, pb->bus);
            rc = GRID_ESENS;
            goto fail;
        }
        wr64(r, R_A, (int64_t)(b->dv_fpu_per_w - pb->dv_fpu_per_w));
        wr64(r, R_KP, ln->flow_sens_ppm);
        wr64(r, R_F0, ln->base_p_w);
        /* Thermal band of the active flow at the parent end: |S| <= rate * (1 - margin) with the
         * base reactive flow gives the forward limit; flowing back, the far end sends and carries
         * the line's loss on top, so the parent end may carry that much less. */
        int64_t rate = (int64_t)ln->rate_va;
        int64_t reff = rate / GRID_PPM * (GRID_PPM - mg) + rate % GRID_PPM * (GRID_PPM - mg) / GRID_PPM;
        int64_t q = (int64_t)ln->base_q_var;
        int64_t pmax = reff > q ? (int64_t)isqrt_u128((unsigned __int128)((i128)reff * reff - (i128)q * q)) : 0;
        int64_t loss = (int64_t)ln->loss_at_rate_w;
        wr64(r, R_FHI, pmax);
        wr64(r, R_FLO, pmax > loss ? -(pmax - loss) : 0);
        wr[k] = (int64_t)ln->r_uohm;
        wl[k] = ln->loss_factor_ppm;
    }
    /* Path sums from the slack, and the farthest bus in each measure (fee escrow). */
    for (uint32_t k = 1; k < n; k++) {
        fr[k] = fr[rpar[k]] + wr[k]; /* <= 4096 * 1e12: no overflow */
        fl[k] = fl[rpar[k]] + wl[k];
        uint8_t *r = out + GRID__HDR + (size_t)k * GRID__REC;
        wr64(r, R_RROOT, fr[k]);
        wr64(r, R_LFROOT, fl[k]);
        int64_t cl = rd64(out + GRID__HDR + (size_t)rpar[k] * GRID__REC, R_CL) + rd64(r, R_KP) - GRID_PPM;
        if (cl > GRID__CL_MAX || cl < -GRID__CL_MAX) {
            why_set(why, whylen, "bus %u: flow sensitivities above it add up beyond %lld ppm", rd32(r, R_ID),
                    (long long)GRID__CL_MAX);
            rc = GRID_ESENS;
            goto fail;
        }
        wr64(r, R_CL, cl);
    }
    rc = farthest(n, rpar, wr, fr);
    if (rc == GRID_OK) rc = farthest(n, rpar, wl, fl);
    if (rc != GRID_OK) goto fail;
    for (uint32_t k = 0; k < n; k++) {
        uint8_t *r = out + GRID__HDR + (size_t)k * GRID__REC;
        wr64(r, R_RMAX, fr[k]);
        wr64(r, R_LFMAX, fl[k]);
        pairs[k] = (grid__pair){rd32(r, R_ID), k};
    }
    qsort(pairs, n, sizeof *pairs, pair_cmp);
    uint8_t *ix = out + GRID__HDR + (size_t)n * GRID__REC;
    for (uint32_t k = 0; k < n; k++) {
        wr32(ix, 8 * (size_t)k, pairs[k].id);
        wr32(ix, 8 * (size_t)k + 4, pairs[k].idx);
    }
    wr32(out, 12, dense_n);
    uint8_t *dense = ix + (size_t)n * 8;
    for (uint32_t i = 0; i < dense_n; i++) wr32(dense, 4 * (size_t)i, UINT32_MAX);
    for (uint32_t k = 0; dense_n && k < n; k++) wr32(dense, 4 * (size_t)pairs[k].id, pairs[k].idx);
    *blob = out;
    *blob_len = len;
    out = NULL;
    rc = GRID_OK;
fail:
    tem_free(out);
    tem_free(ids);
    tem_free(from);
    tem_free(to);
    tem_free(order);
    tem_free(parent);
    tem_free(pline);
    tem_free(pos);
    tem_free(rpar);
    tem_free(wr);
    tem_free(wl);
    tem_free(fr);
    tem_free(fl);
    tem_free(pairs);
    return rc;
}

/* ================================================================== reading a model */

typedef struct {
    const uint8_t *recs, *ix, *dense;
    uint32_t n, dense_n;
} grid__view;

static int view_init(grid__view *v, const uint8_t *blob, size_t len) {
    if (!blob || len < GRID__HDR || memcmp(blob, GRID__MAGIC, 4) != 0) return GRID_ECORRUPT;
    uint32_t n = rd32(blob, 4), dn = rd32(blob, 12);
    if (n == 0 || n > GRID_BUSES_MAX || dn > GRID__DENSE_MAX(n) ||
        len != GRID__HDR + (size_t)n * (GRID__REC + 8) + (size_t)dn * 4)
        return GRID_ECORRUPT;
    v->n = n;
    v->recs = blob + GRID__HDR;
    v->ix = blob + GRID__HDR + (size_t)n * GRID__REC;
    v->dense_n = dn;
    v->dense = dn ? v->ix + (size_t)n * 8 : NULL;
    return GRID_OK;
}

static inline const uint8_t *rec(const grid__view *v, uint32_t k) { return v->recs + (size_t)k * GRID__REC; }

static int view_find(const grid__view *v, uint32_t bus, uint32_t *k) {
    if (v->dense) {
        /* Bus numbers of real feeder files are nearly contiguous: one load instead of a search. */
        if (bus >= v->dense_n) return GRID_EUNKNOWNBUS;
        *k = ld32(v->dense + 4 * (size_t)bus);
        if (*k == UINT32_MAX) return GRID_EUNKNOWNBUS;
        return *k < v->n ? GRID_OK : GRID_ECORRUPT;
    }
    uint32_t lo = 0, hi = v->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (rd32(v->ix, 8 * (size_t)mid) < bus)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo >= v->n || rd32(v->ix, 8 * (size_t)lo) != bus) return GRID_EUNKNOWNBUS;
    *k = rd32(v->ix, 8 * (size_t)lo + 4);
    if (*k >= v->n) return GRID_ECORRUPT;
    return GRID_OK;
}

uint32_t grid_model_buses(const uint8_t *blob, size_t blob_len) {
    grid__view v;
    return view_init(&v, blob, blob_len) == GRID_OK ? v.n : 0;
}

size_t grid_model_slot_bytes(const uint8_t *blob, size_t blob_len) {
    return (size_t)grid_model_buses(blob, blob_len) * GRID_SLOT_BYTES_PER_BUS;
}

/* Lowest common ancestor of records a and b. */
static uint32_t lca(const grid__view *v, uint32_t a, uint32_t b) {
    uint32_t da = rd32(rec(v, a), R_DEPTH), db = rd32(rec(v, b), R_DEPTH);
    while (da > db) {
        a = rd32(rec(v, a), R_PARENT);
        da--;
    }
    while (db > da) {
        b = rd32(rec(v, b), R_PARENT);
        db--;
    }
    while (a != b) {
        a = rd32(rec(v, a), R_PARENT);
        b = rd32(rec(v, b), R_PARENT);
    }
    return a;
}

int grid_model_path(const uint8_t *blob, size_t blob_len, uint32_t a_bus, uint32_t b_bus,
                    int64_t *r_uohm, int64_t *loss_factor_ppm) {
    grid__view v;
    uint32_t a, b;
    int rc = view_init(&v, blob, blob_len);
    if (rc == GRID_OK) rc = view_find(&v, a_bus, &a);
    if (rc == GRID_OK) rc = view_find(&v, b_bus, &b);
    if (rc != GRID_OK) return rc;
    uint32_t c = lca(&v, a, b);
    *r_uohm = rd64(rec(&v, a), R_RROOT) + rd64(rec(&v, b), R_RROOT) - 2 * rd64(rec(&v, c), R_RROOT);
    *loss_factor_ppm = rd64(rec(&v, a), R_LFROOT) + rd64(rec(&v, b), R_LFROOT) - 2 * rd64(rec(&v, c), R_LFROOT);
    TEM_ASSERT(*r_uohm >= 0 && *loss_factor_ppm >= 0);
    return GRID_OK;
}

/* Longest path measures from a bus: for the fee escrow. */
int grid__model_farthest(const uint8_t *blob, size_t blob_len, uint32_t bus, int64_t *r_uohm,
                         int64_t *loss_factor_ppm);
int grid__model_farthest(const uint8_t *blob, size_t blob_len, uint32_t bus, int64_t *r_uohm,
                         int64_t *loss_factor_ppm) {
    grid__view v;
    uint32_t k;
    int rc = view_init(&v, blob, blob_len);
    if (rc == GRID_OK) rc = view_find(&v, bus, &k);
    if (rc != GRID_OK) return rc;
    *r_uohm = rd64(rec(&v, k), R_RMAX);
    *loss_factor_ppm = rd64(rec(&v, k), R_LFMAX);
    return GRID_OK;
}

/* ================================================================== the check */

/* Tightest bound so far, as an integer number of Wh: q <= floor(num / den). A constraint
 * replaces it only when strictly tighter, so ties keep the first constraint in the scan order of
 * docs/grid.md. The test num < q * den is exact (den > 0) and costs a multiplication; the
 * division runs only when the bound moves. The compile-time bounds keep den < 2^62 and
 * q * den < 2^102. */
typedef struct {
    int64_t q;
    int kind, upper;
    uint32_t k;
} grid__best;

static inline void best_offer(grid__best *b, i128 num, int64_t den, int kind, int upper, uint32_t k) {
    TEM_ASSERT(den > 0);
    if (b->kind != GRID_BIND_NONE && num >= (i128)b->q * den) return;
    int64_t q = num < 0 ? 0 : num / den >= GRID__QTY_MAX ? GRID__QTY_MAX : (int64_t)(num / den);
    if (b->kind != GRID_BIND_NONE && q >= b->q) return;
    b->q = q;
    b->kind = kind;
    b->upper = upper;
    b->k = k;
}

/* Scratch of one check or commit: per bus the side of the path it hangs off and this trade's
 * voltage rise per Wh. Small feeders keep it on the stack; large ones borrow the allocator. */
#define GRID__STACK_BUSES 256
typedef struct {
    int8_t *side;
    int64_t *d;
} grid__scratch;

/* Slot blob fields of record k. */
static inline int64_t slot_s(const uint8_t *slot, uint32_t k) { return ld64(slot + 8 * (size_t)k); }
static inline int64_t slot_w(const uint8_t *slot, uint32_t n, uint32_t k) { return ld64(slot + 8 * ((size_t)n + k)); }
static inline i128 slot_u(const uint8_t *slot, uint32_t n, uint32_t k) {
    const uint8_t *p = slot + 16 * (size_t)n + 16 * (size_t)k;
    return (i128)(((unsigned __int128)(uint64_t)ld64(p + 8) << 64) | (uint64_t)ld64(p));
}
static inline void slot_u_put(uint8_t *slot, uint32_t n, uint32_t k, i128 u) {
    uint8_t *p = slot + 16 * (size_t)n + 16 * (size_t)k;
    st64(p, (int64_t)(uint64_t)(unsigned __int128)u);
    st64(p + 8, (int64_t)(u >> 64));
}

/* Marks the path: +1 on the seller's side of the meeting bus (injection grows in their
 * subtrees), -1 on the buyer's; the meeting bus and everything else stay 0. Then the rise per
 * Wh of this trade at every bus, top-down: a bus hanging off the path moves with the path bus
 * it hangs from (d, fpu per W of trade power). Returns the meeting bus. */
static uint32_t trade_shape(const grid__view *v, uint32_t a, uint32_t b, const grid__scratch *m, bool want_d) {
    const uint32_t n = v->n;
    int8_t *side = m->side;
    memset(side, 0, n);
    uint32_t x = a, y = b;
    uint32_t dx = rd32(rec(v, x), R_DEPTH), dy = rd32(rec(v, y), R_DEPTH);
    while (dx > dy) { side[x] = 1; x = rd32(rec(v, x), R_PARENT); dx--; }
    while (dy > dx) { side[y] = -1; y = rd32(rec(v, y), R_PARENT); dy--; }
    while (x != y) {
        side[x] = 1;
        side[y] = -1;
        x = rd32(rec(v, x), R_PARENT);
        y = rd32(rec(v, y), R_PARENT);
    }
    if (!want_d) return x;
    int64_t *d = m->d;
    d[0] = 0;
    for (uint32_t k = 1; k < n; k++) {
        const uint8_t *r = rec(v, k);
        int64_t av = side[k] ? rd64(r, R_A) : 0;
        d[k] = d[rd32(r, R_PARENT)] + (side[k] < 0 ? -av : av);
    }
    return x;
}

/* Decimal of v at p; returns the end. */
static char *put_u32(char *p, uint32_t v) {
    char t[10];
    int n = 0;
    do {
        t[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) *p++ = t[--n];
    return p;
}

static int check_core(const grid__view *v, const uint8_t *slot, uint32_t a, uint32_t b,
                      uint64_t qty_wh, int64_t slot_ms, const grid__scratch *m,
                      grid_match_result *out) {
    memset(out, 0, sizeof *out);
    if (a == b) {
        out->max_wh = UINT64_MAX;
        out->allowed_wh = qty_wh;
        return GRID_OK;
    }
    const uint32_t n = v->n;
    trade_shape(v, a, b, m, false);
    const int8_t *side = m->side;
    int64_t *d = m->d;
    /* Everything is scaled by slot_ms * 1e6 so the Wh <-> W conversion (x 3.6e6 / slot_ms) and
     * the ppm / fpu->npu divisions never round: units of W*ppm*slot_ms and fpu*slot_ms. */
    const int64_t sc = slot_ms * GRID_PPM; /* <= 8.64e13 */
    grid__best best = {0};
    /* Lines on the path, seller side first (walking up from the seller), then the buyer's. */
    for (int pass = 0; pass < 2; pass++) {
        uint32_t k = pass == 0 ? a : b;
        int8_t want = pass == 0 ? 1 : -1;
        const int64_t cl_end = rd64(rec(v, k), R_CL);
        while (side[k] == want) {
            const uint8_t *r = rec(v, k);
            int64_t s = slot ? slot_s(slot, k) : 0;
            int64_t w = slot ? slot_w(slot, n, k) : 0;
            int64_t cl_par = rd64(rec(v, rd32(r, R_PARENT)), R_CL);
            /* A W injected at bus i below this line moves its parent-end flow by
             * 1 + cl(i) - cl(parent) W: the line's own marginal loss and those between it and i. */
            i128 moved = (i128)s * (GRID_PPM - cl_par) + w;
            i128 f = (i128)rd64(r, R_F0) * sc - moved * MS_PER_H;   /* flow now, scaled */
            int64_t den = (GRID_PPM + cl_end - cl_par) * MS_PER_H;  /* per Wh, scaled */
            if (want == 1)
                best_offer(&best, f - (i128)rd64(r, R_FLO) * sc, den, GRID_BIND_LINE, 0, k);
            else
                best_offer(&best, (i128)rd64(r, R_FHI) * sc - f, den, GRID_BIND_LINE, 1, k);
            k = rd32(r, R_PARENT);
        }
    }
    /* Voltages of every bus the trade moves, in BFS order. The slot keeps each bus' accumulated
     * rise U (fpu * Wh of trade energy), so no bus needs its ancestors' state. */
    d[0] = 0;
    for (uint32_t k = 1; k < n; k++) {
        const uint8_t *r = rec(v, k);
        int64_t av = side[k] ? rd64(r, R_A) : 0;
        int64_t dk = d[rd32(r, R_PARENT)] + (side[k] < 0 ? -av : av);
        d[k] = dk;
        if (dk == 0) continue;
        i128 vnow = (i128)rd64(r, R_V0) * sc + (slot ? slot_u(slot, n, k) * MS_PER_H : 0); /* fpu * slot_ms */
        if (dk > 0)
            best_offer(&best, (i128)rd64(r, R_VHI) * sc - vnow, dk * MS_PER_H, GRID_BIND_BUS, 1, k);
        else
            best_offer(&best, vnow - (i128)rd64(r, R_VLO) * sc, -dk * MS_PER_H, GRID_BIND_BUS, 0, k);
    }
    TEM_ASSERT(best.kind != GRID_BIND_NONE); /* a path has at least one line */
    out->max_wh = (uint64_t)best.q;
    out->allowed_wh = qty_wh < out->max_wh ? qty_wh : out->max_wh;
    out->curtailed_wh = qty_wh - out->allowed_wh;
    const uint8_t *r = rec(v, best.k);
    grid_binding *bd = &out->binding;
    bd->kind = best.kind;
    bd->upper = best.upper;
    char *t = bd->text;
    if (best.kind == GRID_BIND_LINE) {
        bd->from = rd32(r, R_LFROM);
        bd->to = rd32(r, R_LTO);
        memcpy(t, "line ", 5);
        t = put_u32(t + 5, bd->from);
        *t++ = '-';
        t = put_u32(t, bd->to);
    } else {
        bd->bus = rd32(r, R_ID);
        memcpy(t, "bus ", 4);
        t = put_u32(t + 4, bd->bus);
    }
    *t = 0;
    return GRID_OK;
}

static int args_ok(int64_t slot_ms) {
    return slot_ms > 0 && slot_ms <= GRID__SLOT_MS_MAX ? GRID_OK : GRID_EINVAL;
}

/* Resolves the two buses and runs fn with scratch sized for the model. */
typedef int (*grid__core_fn)(const grid__view *v, uint32_t a, uint32_t b, const grid__scratch *m, void *ctx);

static int with_scratch(const uint8_t *blob, size_t blob_len, uint32_t seller_bus, uint32_t buyer_bus,
                        int64_t slot_ms, grid__core_fn fn, void *ctx) {
    grid__view v;
    uint32_t a, b;
    int rc = args_ok(slot_ms);
    if (rc == GRID_OK) rc = view_init(&v, blob, blob_len);
    if (rc == GRID_OK) rc = view_find(&v, seller_bus, &a);
    if (rc == GRID_OK) rc = view_find(&v, buyer_bus, &b);
    if (rc != GRID_OK) return rc;
    if (v.n <= GRID__STACK_BUSES) {
        int8_t side[GRID__STACK_BUSES];
        int64_t d[GRID__STACK_BUSES];
        grid__scratch m = {side, d};
        return fn(&v, a, b, &m, ctx);
    }
    grid__scratch m = {tem_malloc(v.n), tem_malloc(sizeof(int64_t) * v.n)};
    rc = (m.side && m.d) ? fn(&v, a, b, &m, ctx) : GRID_ENOMEM;
    tem_free(m.side);
    tem_free(m.d);
    return rc;
}

typedef struct {
    const uint8_t *slot;
    uint8_t *wslot;
    uint64_t qty_wh;
    int64_t slot_ms;
    grid_match_result *out;
} grid__call;

static int check_fn(const grid__view *v, uint32_t a, uint32_t b, const grid__scratch *m, void *ctx) {
    grid__call *c = ctx;
    return check_core(v, c->slot, a, b, c->qty_wh, c->slot_ms, m, c->out);
}

int grid_model_check(const uint8_t *blob, size_t blob_len, const uint8_t *slot_blob,
                     uint32_t seller_bus, uint32_t buyer_bus, uint64_t qty_wh, int64_t slot_ms,
                     grid_match_result *out) {
    TEM_ASSERT(out);
    grid__call c = {.slot = slot_blob, .qty_wh = qty_wh, .slot_ms = slot_ms, .out = out};
    return with_scratch(blob, blob_len, seller_bus, buyer_bus, slot_ms, check_fn, &c);
}

static int commit_fn(const grid__view *v, uint32_t a, uint32_t b, const grid__scratch *m, void *ctx) {
    grid__call *cl = ctx;
    uint8_t *slot = cl->wslot;
    if (cl->qty_wh > (uint64_t)GRID__QTY_MAX) return GRID_EOVERFLOW;
    if (a == b || cl->qty_wh == 0) return GRID_OK;
    const int64_t q = (int64_t)cl->qty_wh;
    const uint32_t n = v->n;
    uint32_t c = trade_shape(v, a, b, m, true);
    /* Per bus: S, the net Wh injected below it, and W, the same weighted by each injection's
     * cumulative loss factor (ppm). Check every sum first so an overflow leaves the blob as it
     * was; |S| <= 1e12 and |cl| <= 4e5 keep |W| < 2^63, and U = sum of a * S over the lines
     * above a bus stays below 1e24. */
    for (int pass = 0; pass < 2; pass++) {
        int64_t dq = pass == 0 ? q : -q;
        int64_t dw = dq * rd64(rec(v, pass == 0 ? a : b), R_CL);
        for (uint32_t k = pass == 0 ? a : b; k != c; k = rd32(rec(v, k), R_PARENT)) {
            int64_t s = slot_s(slot, k), w = slot_w(slot, n, k);
            if (!tem_add_i64(&s, dq) || !tem_add_i64(&w, dw)) return GRID_EOVERFLOW;
            if (s > GRID__QTY_MAX || s < -GRID__QTY_MAX) return GRID_EOVERFLOW;
        }
    }
    for (int pass = 0; pass < 2; pass++) {
        int64_t dq = pass == 0 ? q : -q;
        int64_t dw = dq * rd64(rec(v, pass == 0 ? a : b), R_CL);
        for (uint32_t k = pass == 0 ? a : b; k != c; k = rd32(rec(v, k), R_PARENT)) {
            st64(slot + 8 * (size_t)k, slot_s(slot, k) + dq);
            st64(slot + 8 * ((size_t)n + k), slot_w(slot, n, k) + dw);
        }
    }
    for (uint32_t k = 1; k < n; k++)
        if (m->d[k]) slot_u_put(slot, n, k, slot_u(slot, n, k) + (i128)m->d[k] * q);
    return GRID_OK;
}

int grid_model_commit(const uint8_t *blob, size_t blob_len, uint8_t *slot_blob, uint32_t seller_bus,
                      uint32_t buyer_bus, uint64_t qty_wh, int64_t slot_ms) {
    TEM_ASSERT(slot_blob);
    grid__call c = {.wslot = slot_blob, .qty_wh = qty_wh, .slot_ms = slot_ms};
    return with_scratch(blob, blob_len, seller_bus, buyer_bus, slot_ms, commit_fn, &c);
}
