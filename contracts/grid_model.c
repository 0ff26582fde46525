/* grid_model.c: the grid check on a compiled feeder model, without the ledger: the radial
 * topology builder (shared with the offline importer), the compiler from an InstallFeeder
 * message to the compiled model blob, the per-match limit by a fixed-point AC power flow of the
 * slot's whole operating point, the commit of an executed trade into a slot blob, signed marginal
 * loss factors, and path resistances. Integers only (docs/grid.md, "The on-chain check").
 *
 * The compiled model is a byte blob stored as one state value, read in place on every match:
 *   header  GRID__HDR bytes: "TGM2", u32 n, u32 margin_ppm, u32 dense_n, source hash (32),
 *           u32 n_prof (daily profile entries), u32 n_over (override entries), pad
 *   n bus records of GRID__REC bytes, in BFS order from the slack (a parent precedes its
 *     children; record 0 is the slack), fields at the offsets named R_* below
 *   n (u32 bus id, u32 record) pairs sorted by bus id, for lookups
 *   dense_n u32 records indexed by bus id (UINT32_MAX = no such bus), when bus numbers are
 *     nearly contiguous (dense_n may be 0)
 *   n_prof (u32 load_ppm, u32 gen_ppm) profile entries
 *   n_over 32-byte overrides sorted by (slot, record): u64 slot, u32 record, u32 0, i64 P, i64 Q
 * Each non-slack record also describes the line to its parent. Powers, currents, impedances and
 * voltages are fixed point: 2^32 units per per-unit value on a 1 MVA base (FP_ONE). */
#include "contracts/grid.h"

#include <inttypes.h>
#include <endian.h>
#include <stdarg.h>

#define GRID__MAGIC "TGM2"
/* A dense bus-number table is added when the largest bus number is below this. */
#define GRID__DENSE_MAX(n) (4u * (n) + 64u)
#define GRID__HDR 64
#define GRID__REC 128
#define GRID__OVER 32

/* Record fields (byte offsets). u32: */
#define R_ID 0
#define R_PARENT 4   /* record index of the parent (slack: 0) */
#define R_DEPTH 8
#define R_LFROM 12   /* line to the parent as written in lines.csv */
#define R_LTO 16
/* i64: */
#define R_ZR 24      /* series impedance of the parent line, fixed-point pu */
#define R_ZX 32
#define R_P0 40      /* base net load (fixed-point pu): the profile scales P0 and Q0 ... */
#define R_Q0 48
#define R_GEN 56     /* ... and GEN, the installed generation, subtracted from P */
#define R_VLO2 64    /* |V|^2 band after margin and guard, fixed-point pu^2 */
#define R_VHI2 72
#define R_RATE 80    /* |S| limit of the parent line after margin and guard, fixed-point pu */
#define R_RROOT 88   /* series resistance slack -> bus, micro-ohm */
#define R_RMAX 96    /* largest path resistance to any bus, micro-ohm */
#define R_LB 104     /* bound on |marginal loss factor| of an injection here, ppm */
#define R_LBMAX 112  /* R_LB + the largest R_LB of any bus: bounds any path's factor, ppm */

/* Milliseconds per hour: a trade of q Wh in a slot of slot_ms is q * MS_PER_H / slot_ms W. */
#define MS_PER_H 3600000LL
/* Fixed point: 2^32 per pu (1 MVA base); about 2.3e-10 pu, 0.23 mW, per unit in the last place. */
#define FP_SHIFT 32
#define FP_ONE ((int64_t)1 << FP_SHIFT)
/* Bounds that keep every product inside 128 bits and every sum inside 64 (docs/grid.md). */
#define GRID__W_MAX 100000000000LL       /* 1e11 W: a bus' base load, generation or override */
#define GRID__RATE_MAX 10000000000000LL  /* 1e13 VA */
#define GRID__R_MAX 1000000000000LL      /* 1 Mohm per line, micro-ohm */
#define GRID__Z_FP_MAX ((int64_t)1 << 48) /* 65536 pu */
#define GRID__KV_MV_MAX 1000000000ULL     /* 1000 kV */
#define GRID__SLOT_MS_MAX (24LL * MS_PER_H) /* one day */
#define GRID__QTY_MAX 1000000000000LL    /* 1e12 Wh: one match, and a slot's sum at a bus */
#define GRID__PROF_MAX 1440u              /* profile entries: one a minute */
#define GRID__PROF_PPM_MAX 10000000u      /* 10x */
#define GRID__OVER_MAX 65536u             /* override entries in one model */
/* The sweep (docs/grid.md, "Fixed-point AC power flow"). */
#define GRID__LOAD_MAX ((int64_t)1 << 44)  /* |P|, |Q| of one bus: 4096 pu, or the point fails */
#define GRID__V_MAX ((int64_t)4 << FP_SHIFT) /* |Re V|, |Im V| above 4 pu: diverged */
#define GRID__VMIN2 (FP_ONE / 4)            /* |V| below 0.5 pu: collapsed */
#define GRID__TOL 256                       /* convergence: largest change of Re/Im V, units
                                               (6e-8 pu) */
#define GRID__IT_MAX 40                     /* sweeps per solve */
#define GRID__SOLVES_MAX 24                 /* solves per check */
#define GRID__GAP_SHIFT 10                  /* the search stops within 1/1024 (or 1 Wh) */
/* Guards against the sweep's own error (docs/grid.md, "Error budget"): every line limit is
 * tightened by 1 ppm of its rating and every voltage limit by 1e-7 pu. */
#define GRID__RATE_GUARD_PPM 1
#define GRID__V_GUARD_NPU 100

_Static_assert(R_LBMAX + 8 <= GRID__REC, "record layout");

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

/* ================================================================== compile */

/* v * 2^32 / 1e6: W (or VA, var) to fixed-point pu on the 1 MVA base, truncated towards 0. */
static int64_t w_to_fp(int64_t w) { return (int64_t)((i128)w * FP_ONE / 1000000); }

/* Voltage limit in npu -> |V|^2 in fixed point, rounded towards the inside of the band. */
static int64_t npu_sq_fp(int64_t npu, bool up) {
    i128 v = ((i128)npu << FP_SHIFT);
    i128 num = v * v, den = (i128)1000000000 * 1000000000 << FP_SHIFT;
    i128 q = num / den;
    if (up && q * den != num) q++;
    return (int64_t)q;
}

typedef struct {
    uint64_t slot;
    uint32_t rec;
    int64_t p, q;
} grid__over;

static int over_cmp(const void *a, const void *b) {
    const grid__over *x = a, *y = b;
    if (x->slot != y->slot) return x->slot < y->slot ? -1 : 1;
    return (x->rec > y->rec) - (x->rec < y->rec);
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
    const uint64_t kv = msg->base_kv_mv;
    if (kv == 0 || kv > GRID__KV_MV_MAX) {
        why_set(why, whylen, "base_kv_mv %" PRIu64 " must be 1..%llu", kv, (unsigned long long)GRID__KV_MV_MAX);
        return GRID_EMODEL;
    }
    size_t nlp = msg->n_load_profile_ppm, ngp = msg->n_gen_profile_ppm;
    size_t np = nlp > ngp ? nlp : ngp;
    if (np > GRID__PROF_MAX || (nlp && nlp != np) || (ngp && ngp != np)) {
        why_set(why, whylen, "profiles of %zu and %zu entries (equal, or one empty; at most %u)", nlp, ngp,
                GRID__PROF_MAX);
        return GRID_EMODEL;
    }
    for (size_t i = 0; i < np; i++) {
        if ((nlp && msg->load_profile_ppm[i] > GRID__PROF_PPM_MAX) ||
            (ngp && msg->gen_profile_ppm[i] > GRID__PROF_PPM_MAX)) {
            why_set(why, whylen, "profile entry %zu above %u ppm", i, GRID__PROF_PPM_MAX);
            return GRID_EMODEL;
        }
    }
    size_t no = 0;
    for (size_t i = 0; i < msg->n_overrides; i++) {
        if (!msg->overrides[i]) return GRID_EMODEL;
        no += msg->overrides[i]->n_buses;
        if (no > GRID__OVER_MAX) {
            why_set(why, whylen, "more than %u per-slot overrides", GRID__OVER_MAX);
            return GRID_ETOOBIG;
        }
        for (size_t j = 0; j < msg->overrides[i]->n_buses; j++)
            if (!msg->overrides[i]->buses[j]) return GRID_EMODEL;
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
    int64_t *wr = tem_calloc(n, sizeof *wr),
            *fr = tem_calloc(n, sizeof *fr), *fl = tem_calloc(n, sizeof *fl);
    grid__over *ov = tem_malloc(sizeof *ov * (no ? no : 1));
    uint8_t *out = NULL;
    uint32_t max_id = 0;
    for (uint32_t i = 0; i < n; i++)
        if (msg->buses[i]->bus > max_id) max_id = msg->buses[i]->bus;
    uint32_t dense_n = max_id < GRID__DENSE_MAX(n) ? max_id + 1 : 0;
    size_t len = GRID__HDR + (size_t)n * GRID__REC + (size_t)n * 8 + (size_t)dense_n * 4 + np * 8 +
                 no * GRID__OVER;
    grid__pair *pairs = tem_malloc(sizeof *pairs * n);
    if (!ids || !from || !to || !order || !parent || !pline || !pos || !rpar || !wr ||
        !fr || !fl || !pairs || !ov)
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
    wr32(out, 48, (uint32_t)np);
    wr32(out, 52, (uint32_t)no);
    const int64_t mg = margin_ppm;
    /* Impedance base: Z_base = kV^2 / 1 MVA, so z_pu = z_ohm * 1e6 / kv_mv^2 * 1e6 ... in micro-ohm
     * and millivolt: z_fp = z_uohm * 1e6 * 2^32 / kv_mv^2, rounded to nearest. */
    const i128 zden = (i128)kv * (i128)kv;
    int64_t vlo2_min = INT64_MAX;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t bi = order[k];
        const Tem__V1__FeederBus *b = msg->buses[bi];
        uint8_t *r = out + GRID__HDR + (size_t)k * GRID__REC;
        uint32_t pk = pos[parent[bi]];
        rpar[k] = pk;
        wr32(r, R_ID, b->bus);
        wr32(r, R_PARENT, pk);
        wr32(r, R_DEPTH, k == 0 ? 0 : rd32(out + GRID__HDR + (size_t)pk * GRID__REC, R_DEPTH) + 1);
        /* The offline tool states the tree it used; a disagreement means its base case was
         * computed for another topology. */
        if (k > 0 && (b->parent != ids[parent[bi]] || b->parent_line != pline[bi])) {
            why_set(why, whylen, "bus %u: parent %u (line %u) given, the tree has %u (line %u)",
                    b->bus, b->parent, b->parent_line, ids[parent[bi]], pline[bi]);
            rc = GRID_EMODEL;
            goto fail;
        }
        if (k > 0 && (b->vmin_ppm >= b->vmax_ppm || b->vmax_ppm > 2 * GRID_PPM || b->vmin_ppm < GRID_PPM / 2)) {
            why_set(why, whylen, "bus %u: voltage band %u..%u ppm is empty or out of range (0.5..2 pu)",
                    b->bus, b->vmin_ppm, b->vmax_ppm);
            rc = GRID_EVBAND;
            goto fail;
        }
        if (b->base_p_w > GRID__W_MAX || b->base_p_w < -GRID__W_MAX || b->base_q_var > GRID__W_MAX ||
            b->base_q_var < -GRID__W_MAX || b->gen_w > (uint64_t)GRID__W_MAX) {
            why_set(why, whylen, "bus %u: base load or generation out of range", b->bus);
            rc = GRID_EMODEL;
            goto fail;
        }
        wr64(r, R_P0, w_to_fp(b->base_p_w));
        wr64(r, R_Q0, w_to_fp(b->base_q_var));
        wr64(r, R_GEN, w_to_fp((int64_t)b->gen_w));
        if (k == 0) {
            wr32(r, R_LFROM, b->bus);
            wr32(r, R_LTO, b->bus);
            continue;
        }
        /* The margin keeps that share of each limit's distance from nominal (1 pu) unused; the
         * guard then absorbs the fixed-point sweep's own error. */
        int64_t vmin = (int64_t)b->vmin_ppm * 1000, vmax = (int64_t)b->vmax_ppm * 1000;
        if (vmin < GRID_NPU_PER_PU) vmin += (GRID_NPU_PER_PU - vmin) / GRID_PPM * mg +
                                            (GRID_NPU_PER_PU - vmin) % GRID_PPM * mg / GRID_PPM;
        if (vmax > GRID_NPU_PER_PU) vmax -= (vmax - GRID_NPU_PER_PU) / GRID_PPM * mg +
                                            (vmax - GRID_NPU_PER_PU) % GRID_PPM * mg / GRID_PPM;
        vmin += GRID__V_GUARD_NPU;
        vmax -= GRID__V_GUARD_NPU;
        if (vmin >= vmax) {
            why_set(why, whylen, "bus %u: voltage band is empty after the margin", b->bus);
            rc = GRID_EVBAND;
            goto fail;
        }
        int64_t vlo2 = npu_sq_fp(vmin, true);
        wr64(r, R_VLO2, vlo2);
        wr64(r, R_VHI2, npu_sq_fp(vmax, false));
        if (vlo2 < vlo2_min) vlo2_min = vlo2;
        const Tem__V1__FeederLine *ln = msg->lines[pline[bi]];
        wr32(r, R_LFROM, ln->from);
        wr32(r, R_LTO, ln->to);
        if (ln->r_uohm + ln->x_uohm == 0 || ln->r_uohm > (uint64_t)GRID__R_MAX ||
            ln->x_uohm > (uint64_t)GRID__R_MAX) {
            why_set(why, whylen, "line %u-%u: %s impedance", ln->from, ln->to,
                    ln->r_uohm + ln->x_uohm == 0 ? "zero" : "out-of-range");
            rc = GRID_EIMPEDANCE;
            goto fail;
        }
        i128 zr = (((i128)ln->r_uohm * 1000000 << FP_SHIFT) + zden / 2) / zden;
        i128 zx = (((i128)ln->x_uohm * 1000000 << FP_SHIFT) + zden / 2) / zden;
        if (zr > GRID__Z_FP_MAX || zx > GRID__Z_FP_MAX) {
            why_set(why, whylen, "line %u-%u: impedance above 65536 pu at %" PRIu64 " mV", ln->from, ln->to, kv);
            rc = GRID_EIMPEDANCE;
            goto fail;
        }
        wr64(r, R_ZR, (int64_t)zr);
        wr64(r, R_ZX, (int64_t)zx);
        if (ln->rate_va == 0 || ln->rate_va > (uint64_t)GRID__RATE_MAX) {
            why_set(why, whylen, "line %u-%u: rating %" PRIu64 " VA not positive or out of range",
                    ln->from, ln->to, ln->rate_va);
            rc = GRID_ERATING;
            goto fail;
        }
        /* |S| at either end <= rate (1 - margin) (1 - guard), in fixed point, rounded down. */
        i128 reff = (i128)ln->rate_va * (GRID_PPM - mg) * (GRID_PPM - GRID__RATE_GUARD_PPM);
        wr64(r, R_RATE, (int64_t)((reff << FP_SHIFT) / ((i128)GRID_PPM * GRID_PPM * GRID_PPM)));
        wr[k] = (int64_t)ln->r_uohm;
    }
    /* Bound on a bus' marginal loss factor within the limits: |dLoss/dP_i| = |2 Re(sum r_l J_l /
     * V_i)| <= 2 sum r_l |S_l| / |V|^2 over the lines above i, with |S_l| <= rate_l and |V|^2 >=
     * the lowest vlo^2 (docs/grid.md, "Losses"). In ppm, capped at 100 %. */
    if (vlo2_min == INT64_MAX) vlo2_min = FP_ONE;
    for (uint32_t k = 1; k < n; k++) {
        const uint8_t *r = out + GRID__HDR + (size_t)k * GRID__REC;
        i128 t = (i128)rd64(r, R_ZR) * rd64(r, R_RATE) / vlo2_min; /* fixed point */
        t = t * 2 * GRID_PPM >> FP_SHIFT;
        int64_t lb = fl[rpar[k]] + (t > GRID_PPM ? GRID_PPM : (int64_t)t);
        fl[k] = lb > GRID_PPM ? GRID_PPM : lb;
    }
    int64_t lbmax = 0;
    for (uint32_t k = 0; k < n; k++)
        if (fl[k] > lbmax) lbmax = fl[k];
    /* Path sums from the slack, and the farthest bus in resistance (fee escrow). */
    for (uint32_t k = 1; k < n; k++) {
        fr[k] = fr[rpar[k]] + wr[k]; /* <= 4096 * 1e12: no overflow */
        uint8_t *r = out + GRID__HDR + (size_t)k * GRID__REC;
        wr64(r, R_RROOT, fr[k]);
    }
    for (uint32_t k = 0; k < n; k++) {
        uint8_t *r = out + GRID__HDR + (size_t)k * GRID__REC;
        wr64(r, R_LB, fl[k]);
        wr64(r, R_LBMAX, fl[k] + lbmax);
    }
    rc = farthest(n, rpar, wr, fr);
    if (rc != GRID_OK) goto fail;
    for (uint32_t k = 0; k < n; k++) {
        uint8_t *r = out + GRID__HDR + (size_t)k * GRID__REC;
        wr64(r, R_RMAX, fr[k]);
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
    uint8_t *prof = dense + (size_t)dense_n * 4;
    for (size_t i = 0; i < np; i++) {
        wr32(prof, 8 * i, nlp ? msg->load_profile_ppm[i] : (uint32_t)GRID_PPM);
        wr32(prof, 8 * i + 4, ngp ? msg->gen_profile_ppm[i] : 0);
    }
    /* Overrides: resolved to records, sorted, each (slot, bus) at most once. */
    size_t oi = 0;
    for (size_t i = 0; i < msg->n_overrides; i++) {
        const Tem__V1__FeederSlotCase *sc = msg->overrides[i];
        for (size_t j = 0; j < sc->n_buses; j++) {
            const Tem__V1__FeederBusCase *bc = sc->buses[j];
            uint32_t rk = pair_find(pairs, n, bc->bus);
            if (rk == UINT32_MAX) {
                why_set(why, whylen, "override for slot %" PRIu64 ": unknown bus %u", sc->slot, bc->bus);
                rc = GRID_EUNKNOWNBUS;
                goto fail;
            }
            if (bc->p_w > GRID__W_MAX || bc->p_w < -GRID__W_MAX || bc->q_var > GRID__W_MAX ||
                bc->q_var < -GRID__W_MAX) {
                why_set(why, whylen, "override for slot %" PRIu64 ", bus %u: load out of range", sc->slot, bc->bus);
                rc = GRID_EMODEL;
                goto fail;
            }
            ov[oi++] = (grid__over){sc->slot, rk, w_to_fp(bc->p_w), w_to_fp(bc->q_var)};
        }
    }
    qsort(ov, no, sizeof *ov, over_cmp);
    uint8_t *po = prof + np * 8;
    for (size_t i = 0; i < no; i++) {
        if (i > 0 && ov[i].slot == ov[i - 1].slot && ov[i].rec == ov[i - 1].rec) {
            why_set(why, whylen, "override for slot %" PRIu64 ": bus %u listed twice", ov[i].slot,
                    rd32(out + GRID__HDR + (size_t)ov[i].rec * GRID__REC, R_ID));
            rc = GRID_EMODEL;
            goto fail;
        }
        tem_put_u64le(po + GRID__OVER * i, ov[i].slot);
        wr32(po, GRID__OVER * i + 8, ov[i].rec);
        wr64(po, GRID__OVER * i + 16, ov[i].p);
        wr64(po, GRID__OVER * i + 24, ov[i].q);
    }
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
    tem_free(fr);
    tem_free(fl);
    tem_free(pairs);
    tem_free(ov);
    return rc;
}

/* ================================================================== reading a model */

typedef struct {
    const uint8_t *recs, *ix, *dense, *prof, *over;
    uint32_t n, dense_n, n_prof, n_over;
} grid__view;

static int view_init(grid__view *v, const uint8_t *blob, size_t len) {
    if (!blob || len < GRID__HDR || memcmp(blob, GRID__MAGIC, 4) != 0) return GRID_ECORRUPT;
    uint32_t n = rd32(blob, 4), dn = rd32(blob, 12), np = rd32(blob, 48), no = rd32(blob, 52);
    if (n == 0 || n > GRID_BUSES_MAX || dn > GRID__DENSE_MAX(n) || np > GRID__PROF_MAX || no > GRID__OVER_MAX ||
        len != GRID__HDR + (size_t)n * (GRID__REC + 8) + (size_t)dn * 4 + (size_t)np * 8 + (size_t)no * GRID__OVER)
        return GRID_ECORRUPT;
    v->n = n;
    v->recs = blob + GRID__HDR;
    v->ix = blob + GRID__HDR + (size_t)n * GRID__REC;
    v->dense_n = dn;
    v->dense = dn ? v->ix + (size_t)n * 8 : NULL;
    v->prof = v->ix + (size_t)n * 8 + (size_t)dn * 4;
    v->n_prof = np;
    v->over = v->prof + (size_t)np * 8;
    v->n_over = no;
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

/* view_init, then the records of the two buses a trade runs between. */
static int view_init_pair(grid__view *v, const uint8_t *blob, size_t len, uint32_t a_bus, uint32_t b_bus,
                          uint32_t *a, uint32_t *b) {
    int rc = view_init(v, blob, len);
    if (rc == GRID_OK) rc = view_find(v, a_bus, a);
    if (rc == GRID_OK) rc = view_find(v, b_bus, b);
    return rc;
}

uint32_t grid_model_buses(const uint8_t *blob, size_t blob_len) {
    grid__view v;
    return view_init(&v, blob, blob_len) == GRID_OK ? v.n : 0;
}

size_t grid_model_slot_bytes(const uint8_t *blob, size_t blob_len) {
    return (size_t)grid_model_buses(blob, blob_len) * GRID_SLOT_BYTES_PER_BUS;
}

uint32_t grid_model_bus_id(const uint8_t *blob, size_t blob_len, uint32_t k) {
    grid__view v;
    if (view_init(&v, blob, blob_len) != GRID_OK || k >= v.n) return UINT32_MAX;
    return rd32(rec(&v, k), R_ID);
}

int grid_model_bus_record(const uint8_t *blob, size_t blob_len, uint32_t bus, uint32_t *k) {
    grid__view v;
    int rc = view_init(&v, blob, blob_len);
    return rc == GRID_OK ? view_find(&v, bus, k) : rc;
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
                    int64_t *r_uohm, int64_t *loss_bound_ppm) {
    grid__view v;
    uint32_t a, b;
    int rc = view_init_pair(&v, blob, blob_len, a_bus, b_bus, &a, &b);
    if (rc != GRID_OK) return rc;
    uint32_t c = lca(&v, a, b);
    *r_uohm = rd64(rec(&v, a), R_RROOT) + rd64(rec(&v, b), R_RROOT) - 2 * rd64(rec(&v, c), R_RROOT);
    *loss_bound_ppm = a == b ? 0 : rd64(rec(&v, a), R_LB) + rd64(rec(&v, b), R_LB);
    TEM_ASSERT(*r_uohm >= 0 && *loss_bound_ppm >= 0);
    return GRID_OK;
}

/* Longest path resistance from a bus, and the bound on any path's loss factor: fee escrow. */
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
    *loss_factor_ppm = rd64(rec(&v, k), R_LBMAX);
    return GRID_OK;
}

/* ================================================================== the fixed-point AC power flow */

/* One solution: per record the voltage (fixed-point pu, Re and Im) and the current of its parent
 * line, towards the record (fixed-point pu; the slack's entry is the feeder head's sum). */
typedef struct {
    int64_t *vr, *vi, *jr, *ji;
} grid__sol;

/* Scratch of one check: the tree and impedances in flat arrays, the slot's net loads, the
 * effective limits of this check and three solutions. One allocation. */
typedef struct {
    uint32_t n;
    i128 *lim2;      /* per line: |S|^2 limit, 2^64 per pu^2 */
    uint32_t *par;
    int64_t *zr, *zx, *sp, *sq, *m2, *vlo2, *vhi2, *inv;
    grid__sol s[2];
    void *mem;
} grid__ws;

static void ws_free(grid__ws *w) { tem_free(w->mem); }

static int ws_init(const grid__view *v, grid__ws *w) {
    const size_t n = v->n;
    w->n = v->n;
    w->mem = tem_malloc(n * (16 + 4 + 8 * 8 + 8 * 4 * 2));
    if (!w->mem) return GRID_ENOMEM;
    uint8_t *p = w->mem;
    w->lim2 = (i128 *)(void *)p;
    p += 16 * n;
    int64_t **arrs[] = {&w->zr, &w->zx, &w->sp, &w->sq, &w->m2, &w->vlo2, &w->vhi2, &w->inv,
                        &w->s[0].vr, &w->s[0].vi, &w->s[0].jr, &w->s[0].ji,
                        &w->s[1].vr, &w->s[1].vi, &w->s[1].jr, &w->s[1].ji};
    for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) {
        *arrs[i] = (int64_t *)(void *)p;
        p += 8 * n;
    }
    w->par = (uint32_t *)(void *)p;
    for (uint32_t k = 0; k < v->n; k++) {
        const uint8_t *r = rec(v, k);
        w->par[k] = rd32(r, R_PARENT);
        w->zr[k] = rd64(r, R_ZR);
        w->zx[k] = rd64(r, R_ZX);
    }
    return GRID_OK;
}

/* Wh in a slot of slot_ms -> fixed-point pu: q * 3.6e6 / slot_ms W, truncated towards 0. */
static i128 wh_to_fp(int64_t q, int64_t slot_ms) { return (i128)q * 36 * FP_ONE / ((i128)slot_ms * 10); }
/* Fixed-point pu -> Wh, truncated. */
static i128 fp_to_wh(i128 p, int64_t slot_ms) { return p * slot_ms * 10 / ((i128)36 << FP_SHIFT); }

static int64_t sat62(i128 x) {
    const i128 m = (i128)1 << 62;
    return (int64_t)(x > m ? m : x < -m ? -m : x);
}

/* The net load of every bus in `slot`: the daily profile (or the base loads), the slot's
 * overrides, less what accepted trades inject (slot blob, NULL = none). */
static void slot_loads(const grid__view *v, grid__ws *w, uint64_t slot, const uint8_t *sb, int64_t slot_ms) {
    int64_t lp = GRID_PPM, gp = 0;
    const bool prof = v->n_prof > 0;
    if (prof) {
        const uint8_t *e = v->prof + 8 * (size_t)(slot % v->n_prof);
        lp = ld32(e);
        gp = ld32(e + 4);
    }
    for (uint32_t k = 0; k < v->n; k++) {
        const uint8_t *r = rec(v, k);
        int64_t p0 = rd64(r, R_P0), q0 = rd64(r, R_Q0);
        if (prof) {
            w->sp[k] = (int64_t)((i128)p0 * lp / GRID_PPM - (i128)rd64(r, R_GEN) * gp / GRID_PPM);
            w->sq[k] = (int64_t)((i128)q0 * lp / GRID_PPM);
        } else {
            w->sp[k] = p0;
            w->sq[k] = q0;
        }
    }
    /* Overrides are sorted by (slot, record): the first of this slot by bisection. */
    uint32_t lo = 0, hi = v->n_over;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if ((uint64_t)ld64(v->over + (size_t)GRID__OVER * mid) < slot)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (; lo < v->n_over; lo++) {
        const uint8_t *o = v->over + (size_t)GRID__OVER * lo;
        if ((uint64_t)ld64(o) != slot) break;
        uint32_t k = ld32(o + 8);
        if (k >= v->n) continue; /* compile wrote it; a corrupt blob cannot index out */
        w->sp[k] = ld64(o + 16);
        w->sq[k] = ld64(o + 24);
    }
    if (sb) {
        for (uint32_t k = 0; k < v->n; k++) {
            int64_t q = ld64(sb + 8 * (size_t)k);
            if (q) w->sp[k] = sat62((i128)w->sp[k] - wh_to_fp(q, slot_ms));
        }
    }
}

/* Backward/forward sweep (docs/grid.md, "Fixed-point AC power flow"), starting from the voltages
 * in x (warm start). Per sweep: every bus' load current conj(S/V) = conj(S) V / |V|^2 with one
 * division (the reciprocal of |V|^2), summed up the tree; then V_child = V_parent - Z J down the
 * tree. Every product is taken in 128 bits and shifted right by 32 (floor). Converged when no
 * Re or Im V moved by more than GRID__TOL units in a sweep that moved them at most half as much as
 * the sweep before; GRID_ENOCONVERGE after GRID__IT_MAX sweeps,
 * when a bus load exceeds GRID__LOAD_MAX, a voltage leaves +-4 pu or |V| falls below 0.5 pu. */
static int solve(const grid__ws *w, const grid__sol *x) {
    const uint32_t n = w->n;
    const uint32_t *par = w->par;
    int64_t *vr = x->vr, *vi = x->vi, *jr = x->jr, *ji = x->ji;
    for (uint32_t k = 1; k < n; k++)
        if (w->sp[k] > GRID__LOAD_MAX || w->sp[k] < -GRID__LOAD_MAX || w->sq[k] > GRID__LOAD_MAX ||
            w->sq[k] < -GRID__LOAD_MAX)
            return GRID_ENOCONVERGE;
    vr[0] = FP_ONE;
    vi[0] = 0;
    int64_t prev = INT64_MAX;
    for (int it = 0; it < GRID__IT_MAX; it++) {
        memset(jr, 0, sizeof *jr * n);
        memset(ji, 0, sizeof *ji * n);
        for (uint32_t k = n; k-- > 1;) {
            const int64_t a = vr[k], b = vi[k];
            const int64_t m2 = (int64_t)(((i128)a * a + (i128)b * b) >> FP_SHIFT);
            if (m2 < GRID__VMIN2) return GRID_ENOCONVERGE;
            const int64_t p = w->sp[k], q = w->sq[k];
            if (p | q) {
                /* 1 / |V|^2: a 64-bit division, (2^64 - 1) / m2, in the first sweep; after it one
                 * Newton step from the last sweep's value, inv (2 - m2 inv), whose error is the
                 * square of the relative change of |V|^2 since (docs/grid.md), unless |V|^2 moved
                 * by half or more. m2 >= 2^30 keeps inv <= 2^34. */
                int64_t inv = w->inv[k], e = 0;
                if (it > 0) e = ((int64_t)2 << FP_SHIFT) - (int64_t)(((i128)m2 * inv) >> FP_SHIFT);
                if (e > FP_ONE / 2 && e < FP_ONE + FP_ONE / 2)
                    inv = (int64_t)(((i128)inv * e) >> FP_SHIFT);
                else /* first sweep, or |V|^2 moved by more than half: divide */
                    inv = (int64_t)(UINT64_MAX / (uint64_t)m2);
                w->inv[k] = inv;
                const int64_t nr = (int64_t)(((i128)p * a + (i128)q * b) >> FP_SHIFT);
                const int64_t ni = (int64_t)(((i128)p * b - (i128)q * a) >> FP_SHIFT);
                jr[k] += (int64_t)(((i128)nr * inv) >> FP_SHIFT);
                ji[k] += (int64_t)(((i128)ni * inv) >> FP_SHIFT);
            }
            jr[par[k]] += jr[k];
            ji[par[k]] += ji[k];
        }
        int64_t delta = 0;
        for (uint32_t k = 1; k < n; k++) {
            const uint32_t p = par[k];
            const i128 dr = ((i128)w->zr[k] * jr[k] - (i128)w->zx[k] * ji[k]) >> FP_SHIFT;
            const i128 di = ((i128)w->zr[k] * ji[k] + (i128)w->zx[k] * jr[k]) >> FP_SHIFT;
            const i128 nr = (i128)vr[p] - dr, ni = (i128)vi[p] - di;
            if (nr > GRID__V_MAX || nr < -GRID__V_MAX || ni > GRID__V_MAX || ni < -GRID__V_MAX)
                return GRID_ENOCONVERGE;
            int64_t d1 = (int64_t)nr - vr[k], d2 = (int64_t)ni - vi[k];
            if (d1 < 0) d1 = -d1;
            if (d2 < 0) d2 = -d2;
            if (d1 > delta) delta = d1;
            if (d2 > delta) delta = d2;
            vr[k] = (int64_t)nr;
            vi[k] = (int64_t)ni;
        }
        /* Converged: the last sweep moved nothing by more than GRID__TOL and contracted at
         * least 2:1, so what is left is below GRID__TOL too (docs/grid.md, "Error budget"). */
        if (delta <= GRID__TOL && 2 * delta <= prev) return GRID_OK;
        prev = delta;
    }
    return GRID_ENOCONVERGE;
}

/* The flat start every solve begins from: 1 pu at angle 0 on all n buses. */
static void sol_flat_start(grid__sol *x, uint32_t n) {
    for (uint32_t k = 0; k < n; k++) {
        x->vr[k] = FP_ONE;
        x->vi[k] = 0;
    }
}

static inline int64_t sol_m2(const grid__sol *x, uint32_t k) {
    return (int64_t)(((i128)x->vr[k] * x->vr[k] + (i128)x->vi[k] * x->vi[k]) >> FP_SHIFT);
}
/* |S|^2 of record k's parent line at its worse end, 2^64 per pu^2: |J|^2 max(|V_k|^2, |V_p|^2). */
static inline i128 sol_s2(const grid__ws *w, const grid__sol *x, uint32_t k) {
    i128 j2 = ((i128)x->jr[k] * x->jr[k] + (i128)x->ji[k] * x->ji[k]) >> FP_SHIFT;
    int64_t a = sol_m2(x, k), b = sol_m2(x, w->par[k]);
    return j2 * (a > b ? a : b);
}

/* Effective limits of this check from the slot's operating point before the trade: a limit the
 * slot already exceeds (a base case beyond its band) becomes "no worse than now". */
static void limits_from(const grid__view *v, grid__ws *w, const grid__sol *x) {
    for (uint32_t k = 1; k < w->n; k++) {
        const uint8_t *r = rec(v, k);
        int64_t m2 = sol_m2(x, k), lo = rd64(r, R_VLO2), hi = rd64(r, R_VHI2);
        w->vlo2[k] = m2 < lo ? m2 : lo;
        w->vhi2[k] = m2 > hi ? m2 : hi;
        i128 rate = rd64(r, R_RATE), l2 = rate * rate, s2 = sol_s2(w, x, k);
        w->lim2[k] = s2 > l2 ? s2 : l2;
    }
}

/* The model's own limits: a point within them is within the effective ones of any check. */
static void limits_nominal(const grid__view *v, grid__ws *w) {
    for (uint32_t k = 1; k < w->n; k++) {
        const uint8_t *r = rec(v, k);
        w->vlo2[k] = rd64(r, R_VLO2);
        w->vhi2[k] = rd64(r, R_VHI2);
        i128 rate = rd64(r, R_RATE);
        w->lim2[k] = rate * rate;
    }
}

/* A violated constraint: its kind, record, side, how far out (relative, 2^-20 units) and, for
 * the search, a measure that grows towards the violation and its limit in the same units. */
typedef struct {
    int kind, upper;
    uint32_t k;
    i128 sev;
    i128 meas, lim;
} grid__viol;

/* floor(sqrt(v)) to about 31 significant bits, for the search's interpolation only: v is shifted
 * below 2^62, its 64-bit root taken by Newton's method, and shifted back. */
static i128 sqrt_approx(i128 v) {
    if (v <= 0) return 0;
    int sh = 0;
    while ((v >> (2 * sh)) >= ((i128)1 << 62)) sh++;
    uint64_t y = (uint64_t)(v >> (2 * sh)), x = y, z = (x + 1) / 2;
    if (y > 3) {
        x = (uint64_t)1 << ((64 - __builtin_clzll(y)) / 2 + 1);
        z = (x + y / x) / 2;
    }
    while (z < x) {
        x = z;
        z = (x + y / x) / 2;
    }
    return (i128)x << sh;
}

static i128 viol_measure(const grid__ws *w, const grid__sol *x, const grid__viol *c) {
    if (c->kind == GRID_BIND_LINE) return sqrt_approx(sol_s2(w, x, c->k));
    int64_t m2 = sol_m2(x, c->k);
    return c->upper ? m2 : -m2;
}

/* True when every bus and every line of x is within the effective limits; else *worst is the
 * most violated constraint (first in record order on ties: bus before its parent line). */
static bool feasible(const grid__ws *w, const grid__sol *x, grid__viol *worst) {
    bool ok = true;
    worst->sev = -1;
    for (uint32_t k = 1; k < w->n; k++) {
        int64_t m2 = sol_m2(x, k);
        i128 sev = -1;
        int kind = 0, upper = 0;
        if (m2 > w->vhi2[k]) {
            sev = ((i128)(m2 - w->vhi2[k]) << 20) / w->vhi2[k];
            kind = GRID_BIND_BUS;
            upper = 1;
        } else if (m2 < w->vlo2[k]) {
            sev = ((i128)(w->vlo2[k] - m2) << 20) / w->vlo2[k];
            kind = GRID_BIND_BUS;
        }
        if (kind && sev > worst->sev) *worst = (grid__viol){kind, upper, k, sev, 0, 0};
        ok = ok && !kind;
        i128 s2 = sol_s2(w, x, k);
        if (s2 > w->lim2[k]) {
            sev = (s2 - w->lim2[k]) / ((w->lim2[k] >> 20) + 1);
            if (sev > worst->sev) *worst = (grid__viol){GRID_BIND_LINE, 0, k, sev, 0, 0};
            ok = false;
        }
    }
    if (!ok) {
        worst->meas = viol_measure(w, x, worst);
        if (worst->kind == GRID_BIND_LINE)
            worst->lim = sqrt_approx(w->lim2[worst->k]);
        else
            worst->lim = worst->upper ? w->vhi2[worst->k] : -w->vlo2[worst->k];
    }
    return ok;
}

/* Solves the slot with a trade of q Wh from record a to record b on top, warm-started from
 * `from` into `to`. Returns 1 feasible, 0 infeasible (*worst set, *conv = 1) or not converged
 * (*conv = 0). */
static int try_trade(grid__ws *w, uint32_t a, uint32_t b, uint64_t q, int64_t slot_ms, const grid__sol *from,
                     const grid__sol *to, grid__viol *worst, int *conv) {
    const int64_t sa = w->sp[a], sb = w->sp[b];
    const i128 p = wh_to_fp((int64_t)q, slot_ms);
    w->sp[a] = sat62((i128)sa - p);
    w->sp[b] = sat62((i128)sb + p);
    if (from != to) {
        memcpy(to->vr, from->vr, sizeof *to->vr * w->n);
        memcpy(to->vi, from->vi, sizeof *to->vi * w->n);
    }
    int rc = solve(w, to);
    w->sp[a] = sa;
    w->sp[b] = sb;
    *conv = rc == GRID_OK;
    if (rc != GRID_OK) return 0;
    return feasible(w, to, worst) ? 1 : 0;
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

static void binding_set(const grid__view *v, const grid__viol *c, grid_binding *bd) {
    memset(bd, 0, sizeof *bd);
    const uint8_t *r = rec(v, c->k);
    bd->kind = c->kind;
    bd->upper = c->upper;
    char *t = bd->text;
    if (c->kind == GRID_BIND_LINE) {
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
}

/* The search for the largest feasible quantity (docs/grid.md, "The limit"): the slot's operating
 * point first (its limits become the effective ones), then the whole quantity; if that fails,
 * interpolation on the worst violated constraint between the largest feasible and the smallest
 * infeasible quantity found, each candidate verified by a full solve, every feasible one followed
 * by a probe 1/1024 above it, until the two are within 1/1024 (or 1 Wh) of each other. */
static int check_core(const grid__view *v, grid__ws *w, uint32_t a, uint32_t b, uint64_t qty_wh,
                      int64_t slot_ms, grid_match_result *out) {
    memset(out, 0, sizeof *out);
    if (a == b) {
        out->max_wh = UINT64_MAX;
        out->allowed_wh = qty_wh;
        return GRID_OK;
    }
    if (qty_wh == 0) return GRID_OK;
    grid__sol *lo = &w->s[0], *cur = &w->s[1];
    sol_flat_start(cur, w->n);
    /* The whole quantity first, against the model's own limits: most trades end here, with one
     * solve and no solve of the slot without them. */
    limits_nominal(v, w);
    uint64_t hi = qty_wh < (uint64_t)GRID__QTY_MAX ? qty_wh : (uint64_t)GRID__QTY_MAX;
    grid__viol worst, bind = {0};
    int conv, have = 0, solves = 1;
    int f = try_trade(w, a, b, hi, slot_ms, cur, cur, &worst, &conv);
    if (f) {
        out->max_wh = qty_wh;
        out->allowed_wh = qty_wh;
        return GRID_OK;
    }
    /* The slot's operating point without the trade, warm-started from the trade's: its limits
     * become the effective ones (a limit the slot already exceeds becomes "no worse"). */
    for (uint32_t k = 0; k < w->n; k++) {
        lo->vr[k] = conv ? cur->vr[k] : FP_ONE; /* a diverged start is no start */
        lo->vi[k] = conv ? cur->vi[k] : 0;
    }
    if (solve(w, lo) != GRID_OK) {
        /* The slot's own operating point has no solution: nothing more may flow. */
        out->max_wh = 0;
        out->curtailed_wh = qty_wh;
        memcpy(out->binding.text, "power flow", 11);
        return GRID_OK;
    }
    solves++;
    limits_from(v, w, lo);
    /* No quantity above 2 (limit + |S| now) of a path line can pass it: its flow would change by
     * more than limit + |S| (docs/grid.md, "The limit"). |S| <= 2 (|Re J| + |Im J|) here. */
    i128 cap = (i128)1 << 100;
    uint32_t c = lca(v, a, b);
    for (int side = 0; side < 2; side++) {
        for (uint32_t k = side ? b : a; k != c; k = w->par[k]) {
            int64_t jr = lo->jr[k] < 0 ? -lo->jr[k] : lo->jr[k], ji = lo->ji[k] < 0 ? -lo->ji[k] : lo->ji[k];
            i128 s0 = 2 * ((i128)jr + ji), rate = rd64(rec(v, k), R_RATE);
            i128 lim = rate > s0 ? rate : s0, cl = 2 * (lim + s0);
            if (cl < cap) cap = cl;
        }
    }
    i128 qcap = fp_to_wh(cap, slot_ms) + 1;
    if (conv && (i128)hi <= qcap) {
        f = feasible(w, cur, &worst);
    } else {
        if ((i128)hi > qcap) hi = (uint64_t)qcap;
        f = try_trade(w, a, b, hi, slot_ms, lo, cur, &worst, &conv);
        solves++;
    }
    uint64_t lo_q = 0;
    if (f) {
        lo_q = hi;
    } else {
        if (conv) {
            bind = worst;
            have = 1;
        }
        while (hi - lo_q > (lo_q >> GRID__GAP_SHIFT > 1 ? lo_q >> GRID__GAP_SHIFT : 1) && solves < GRID__SOLVES_MAX) {
            uint64_t gap = hi - lo_q, step = gap >> 5 ? gap >> 5 : 1, x = lo_q + gap / 2;
            if (have) {
                i128 mlo = viol_measure(w, lo, &bind);
                if (bind.meas > mlo && bind.lim >= mlo)
                    x = lo_q + (uint64_t)((i128)gap * (bind.lim - mlo) / (bind.meas - mlo));
            }
            if (x < lo_q + step) x = lo_q + step;
            if (x > hi - step) x = hi - step;
            f = try_trade(w, a, b, x, slot_ms, lo, cur, &worst, &conv);
            solves++;
            if (!f) {
                hi = x;
                have = conv;
                if (conv) bind = worst;
                continue;
            }
            grid__sol *t = lo;
            lo = cur;
            cur = t;
            lo_q = x;
            uint64_t x2 = lo_q + (lo_q >> GRID__GAP_SHIFT ? lo_q >> GRID__GAP_SHIFT : 1);
            if (x2 >= hi || solves >= GRID__SOLVES_MAX) continue;
            f = try_trade(w, a, b, x2, slot_ms, lo, cur, &worst, &conv);
            solves++;
            if (f) {
                t = lo;
                lo = cur;
                cur = t;
                lo_q = x2;
            } else {
                hi = x2;
                have = conv;
                if (conv) bind = worst;
            }
        }
    }
    out->max_wh = lo_q;
    out->allowed_wh = lo_q < qty_wh ? lo_q : qty_wh;
    out->curtailed_wh = qty_wh - out->allowed_wh;
    if (out->curtailed_wh) {
        if (have || bind.kind)
            binding_set(v, &bind, &out->binding);
        else
            memcpy(out->binding.text, "power flow", 11);
    }
    return GRID_OK;
}

/* Total series loss of a solution, fixed-point pu: sum of r |J|^2 over the lines. */
static i128 sol_loss(const grid__ws *w, const grid__sol *x) {
    i128 l = 0;
    for (uint32_t k = 1; k < w->n; k++)
        l += (((i128)x->jr[k] * x->jr[k] + (i128)x->ji[k] * x->ji[k]) >> FP_SHIFT) * w->zr[k];
    return l >> FP_SHIFT;
}

/* The loss-factor step: 2^22 units, about 1 kW. */
#define GRID__LF_STEP ((int64_t)1 << 22)
static int args_ok(int64_t slot_ms) {
    return slot_ms > 0 && slot_ms <= GRID__SLOT_MS_MAX ? GRID_OK : GRID_EINVAL;
}

int grid_model_check(const uint8_t *blob, size_t blob_len, const uint8_t *slot_blob, uint64_t slot,
                     uint32_t seller_bus, uint32_t buyer_bus, uint64_t qty_wh, int64_t slot_ms,
                     grid_match_result *out) {
    TEM_ASSERT(out);
    grid__view v;
    uint32_t a, b;
    int rc = args_ok(slot_ms);
    if (rc == GRID_OK) rc = view_init_pair(&v, blob, blob_len, seller_bus, buyer_bus, &a, &b);
    if (rc != GRID_OK) return rc;
    if (a == b || qty_wh == 0) {
        grid__ws none = {0};
        return check_core(&v, &none, a, b, qty_wh, slot_ms, out);
    }
    grid__ws w;
    if ((rc = ws_init(&v, &w)) != GRID_OK) return rc;
    slot_loads(&v, &w, slot, slot_blob, slot_ms);
    rc = check_core(&v, &w, a, b, qty_wh, slot_ms, out);
    ws_free(&w);
    return rc;
}

int grid_model_loss_factor(const uint8_t *blob, size_t blob_len, const uint8_t *slot_blob, uint64_t slot,
                           int64_t slot_ms, uint32_t seller_bus, uint32_t buyer_bus, int64_t *lf_ppm) {
    TEM_ASSERT(lf_ppm);
    grid__view v;
    uint32_t a, b;
    int rc = args_ok(slot_ms);
    if (rc == GRID_OK) rc = view_init_pair(&v, blob, blob_len, seller_bus, buyer_bus, &a, &b);
    if (rc != GRID_OK) return rc;
    if (a == b) {
        *lf_ppm = 0;
        return GRID_OK;
    }
    const int64_t bound = rd64(rec(&v, a), R_LB) + rd64(rec(&v, b), R_LB);
    grid__ws w;
    if ((rc = ws_init(&v, &w)) != GRID_OK) return rc;
    slot_loads(&v, &w, slot, slot_blob, slot_ms);
    grid__sol *x = &w.s[0];
    sol_flat_start(x, w.n);
    int64_t lf = bound; /* no solution: the DSO-favoured bound */
    /* Central difference of the AC flow's total loss: the trade's power +-1 kW on top of the
     * slot's operating point, each solve warm-started from that point. */
    if (solve(&w, x) == GRID_OK) {
        grid__sol *y = &w.s[1];
        i128 l[2];
        bool ok = true;
        for (int s = 0; s < 2 && ok; s++) {
            const int64_t sa = w.sp[a], sb = w.sp[b], d = s ? -GRID__LF_STEP : GRID__LF_STEP;
            w.sp[a] = sat62((i128)sa - d);
            w.sp[b] = sat62((i128)sb + d);
            memcpy(y->vr, x->vr, sizeof *y->vr * w.n);
            memcpy(y->vi, x->vi, sizeof *y->vi * w.n);
            ok = solve(&w, y) == GRID_OK;
            w.sp[a] = sa;
            w.sp[b] = sb;
            l[s] = ok ? sol_loss(&w, y) : 0;
        }
        if (ok) {
            i128 f = (l[0] - l[1]) * GRID_PPM / (2 * GRID__LF_STEP);
            lf = f > bound ? bound : f < -bound ? -bound : (int64_t)f;
        }
    }
    ws_free(&w);
    *lf_ppm = lf;
    return GRID_OK;
}

int grid_model_commit(const uint8_t *blob, size_t blob_len, uint8_t *slot_blob, uint32_t seller_bus,
                      uint32_t buyer_bus, uint64_t qty_wh, int64_t slot_ms) {
    TEM_ASSERT(slot_blob);
    grid__view v;
    uint32_t a, b;
    int rc = args_ok(slot_ms);
    if (rc == GRID_OK) rc = view_init_pair(&v, blob, blob_len, seller_bus, buyer_bus, &a, &b);
    if (rc != GRID_OK) return rc;
    if (qty_wh > (uint64_t)GRID__QTY_MAX) return GRID_EOVERFLOW;
    if (a == b || qty_wh == 0) return GRID_OK;
    const int64_t q = (int64_t)qty_wh;
    int64_t sa = ld64(slot_blob + 8 * (size_t)a), sb = ld64(slot_blob + 8 * (size_t)b);
    if (!tem_add_i64(&sa, q) || !tem_sub_i64(&sb, q) || sa > GRID__QTY_MAX || sb < -GRID__QTY_MAX)
        return GRID_EOVERFLOW;
    st64(slot_blob + 8 * (size_t)a, sa);
    st64(slot_blob + 8 * (size_t)b, sb);
    return GRID_OK;
}

/* |V|^2 (fixed point) -> |V| in npu: grid_model_voltages and grid_model_state round alike. */
static int64_t m2_to_npu(int64_t m2) {
    i128 m = sqrt_approx((i128)m2 * FP_ONE);
    return (int64_t)(m * GRID_NPU_PER_PU / FP_ONE);
}

int grid_model_voltages(const uint8_t *blob, size_t blob_len, const uint8_t *slot_blob, uint64_t slot,
                        int64_t slot_ms, int64_t *v_npu) {
    TEM_ASSERT(v_npu);
    grid__view v;
    int rc = args_ok(slot_ms);
    if (rc == GRID_OK) rc = view_init(&v, blob, blob_len);
    if (rc != GRID_OK) return rc;
    grid__ws w;
    if ((rc = ws_init(&v, &w)) != GRID_OK) return rc;
    slot_loads(&v, &w, slot, slot_blob, slot_ms);
    grid__sol *x = &w.s[0];
    sol_flat_start(x, w.n);
    rc = solve(&w, x);
    for (uint32_t k = 0; rc == GRID_OK && k < w.n; k++) v_npu[k] = m2_to_npu(sol_m2(x, k));
    ws_free(&w);
    return rc;
}

/* fixed-point pu (2^32 per pu on the 1 MVA base) -> W, VA or var, rounded to nearest. */
static int64_t fp_to_w(i128 x) {
    i128 m = x * GRID_PPM;
    return (int64_t)(m >= 0 ? (m + (FP_ONE / 2)) >> FP_SHIFT : -((-m + (FP_ONE / 2)) >> FP_SHIFT));
}

int grid_model_state(const uint8_t *blob, size_t blob_len, const uint8_t *slot_blob, uint64_t slot,
                     int64_t slot_ms, grid_bus_state *buses, grid_line_state *lines) {
    TEM_ASSERT(buses && lines);
    grid__view v;
    int rc = args_ok(slot_ms);
    if (rc == GRID_OK) rc = view_init(&v, blob, blob_len);
    if (rc != GRID_OK) return rc;
    grid__ws w;
    if ((rc = ws_init(&v, &w)) != GRID_OK) return rc;
    /* The base case alone first (no slot blob), for the injections it reports; then the solve
     * with the trades, which is the check's operating point before its next candidate. */
    slot_loads(&v, &w, slot, NULL, slot_ms);
    int64_t *bp = w.m2, *bq = w.inv; /* scratch until the solve: read out before it */
    grid__sol *x = &w.s[0];
    for (uint32_t k = 0; k < w.n; k++) {
        x->jr[k] = w.sp[k];
        x->ji[k] = w.sq[k];
    }
    slot_loads(&v, &w, slot, slot_blob, slot_ms);
    for (uint32_t k = 0; k < w.n; k++) {
        bp[k] = x->jr[k];
        bq[k] = x->ji[k];
        x->vr[k] = FP_ONE;
        x->vi[k] = 0;
    }
    for (uint32_t k = 0; k < w.n; k++) {
        const uint8_t *r = rec(&v, k);
        grid_bus_state *b = &buses[k];
        memset(b, 0, sizeof *b);
        b->bus = rd32(r, R_ID);
        b->base_p_w = fp_to_w(bp[k]);
        b->base_q_var = fp_to_w(bq[k]);
        b->traded_wh = slot_blob ? ld64(slot_blob + 8 * (size_t)k) : 0;
        if (k > 0) {
            b->vmin_npu = m2_to_npu(rd64(r, R_VLO2));
            b->vmax_npu = m2_to_npu(rd64(r, R_VHI2));
        }
    }
    rc = solve(&w, x);
    for (uint32_t k = 0; rc == GRID_OK && k < w.n; k++) {
        buses[k].v_npu = m2_to_npu(sol_m2(x, k));
        if (k == 0) continue;
        const uint8_t *r = rec(&v, k);
        grid_line_state *l = &lines[k - 1];
        const int64_t rate = rd64(r, R_RATE);
        const i128 s = sqrt_approx(sol_s2(&w, x, k)); /* |S|, fixed point */
        l->from = rd32(r, R_LFROM);
        l->to = rd32(r, R_LTO);
        l->bus = rd32(r, R_ID);
        l->s_va = fp_to_w(s);
        l->limit_va = fp_to_w(rate);
        l->loading_ppm = rate > 0 ? (int64_t)(s * GRID_PPM / rate) : INT64_MAX;
    }
    ws_free(&w);
    return rc;
}
