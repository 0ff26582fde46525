/* feeder.c: the offline feeder model of `temctl feeder`: CSV import and validation, the AC
 * power flow of a radial feeder (backward/forward sweep in per unit on a 1 MVA base), and the
 * sensitivities and quantisation that turn one base-case solution into an InstallFeeder message
 * (docs/grid.md). Floating point lives here and only here; the chain sees integers.
 *
 * Nothing here assumes that `from` is the end nearer the substation, that bus numbers are
 * contiguous or that loads are positive: the tree is built from the slack (grid_topology_build,
 * the chain's own code), flows are computed in the tree's orientation and reported in the
 * file's. */
#include "node/pf/feeder.h"

#include <complex.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>

#define SBASE_KVA 1000.0 /* per-unit base: 1 MVA three-phase */

static int fail(char *err, size_t errlen, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int code, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* ================================================================== CSV */

typedef struct {
    const char *p, *end;
    uint32_t lineno;
} csv_reader;

#define CSV_FIELDS_MAX 8
#define CSV_LINE_MAX 512

/* Next non-empty line split into fields (copied into buf). 1 = a line, 0 = end, -1 = too long
 * or too many fields. */
static int csv_next(csv_reader *r, char buf[CSV_LINE_MAX], char *fields[CSV_FIELDS_MAX], int *nf) {
    while (r->p < r->end) {
        const char *s = r->p;
        const char *e = memchr(s, '\n', (size_t)(r->end - s));
        if (!e) e = r->end;
        r->p = e < r->end ? e + 1 : e;
        r->lineno++;
        size_t len = (size_t)(e - s);
        while (len && (s[len - 1] == '\r' || s[len - 1] == ' ' || s[len - 1] == '\t')) len--;
        while (len && (*s == ' ' || *s == '\t')) s++, len--;
        if (len == 0) continue;
        if (len >= CSV_LINE_MAX) return -1;
        memcpy(buf, s, len);
        buf[len] = 0;
        *nf = 0;
        char *q = buf;
        for (;;) {
            if (*nf == CSV_FIELDS_MAX) return -1;
            char *c = strchr(q, ',');
            if (c) *c = 0;
            /* trim each field */
            while (*q == ' ' || *q == '\t') q++;
            size_t fl = strlen(q);
            while (fl && (q[fl - 1] == ' ' || q[fl - 1] == '\t')) q[--fl] = 0;
            fields[(*nf)++] = q;
            if (!c) break;
            q = c + 1;
        }
        return 1;
    }
    return 0;
}

static bool parse_double(const char *s, double *out) {
    if (!*s) return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end || errno || !isfinite(v)) return false;
    *out = v;
    return true;
}

static bool parse_id(const char *s, uint32_t *out) {
    if (!*s || *s == '-' || *s == '+') return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno || v > UINT32_MAX) return false;
    *out = (uint32_t)v;
    return true;
}

static const char *const BUS_HDR[] = {"bus", "type", "pd_kw", "qd_kvar", "vmin_pu", "vmax_pu", "base_kv"};
static const char *const LINE_HDR[] = {"from", "to", "r_ohm", "x_ohm", "rate_kva"};

static int check_header(csv_reader *r, const char *file, const char *const *want, int nwant,
                        char *err, size_t errlen) {
    char buf[CSV_LINE_MAX], *fld[CSV_FIELDS_MAX];
    int nf = 0;
    int got = csv_next(r, buf, fld, &nf);
    if (got == 0) return fail(err, errlen, GRID_EPARSE, "%s: empty file", file);
    bool ok = got == 1 && nf == nwant;
    for (int i = 0; ok && i < nwant; i++) ok = strcmp(fld[i], want[i]) == 0;
    if (!ok) {
        char w[128] = "";
        for (int i = 0; i < nwant; i++) {
            strcat(w, want[i]);
            if (i + 1 < nwant) strcat(w, ",");
        }
        return fail(err, errlen, GRID_EPARSE, "%s line %u: header must be %s", file, r->lineno, w);
    }
    return GRID_OK;
}

void ctl_feeder_free(ctl_feeder *f) {
    if (!f) return;
    tem_free(f->buses);
    tem_free(f->lines);
    tem_free(f->order);
    tem_free(f->parent);
    tem_free(f->parent_line);
    tem_free(f->child_is_to);
    memset(f, 0, sizeof *f);
}

int64_t ctl_feeder_bus_index(const ctl_feeder *f, uint32_t id) {
    /* Feeders are small and this runs offline: a linear scan keeps the struct simple. */
    for (uint32_t i = 0; i < f->n_buses; i++)
        if (f->buses[i].id == id) return i;
    return -1;
}

static int grow(void **p, uint32_t *cap, uint32_t need, size_t elem) {
    if (need <= *cap) return 0;
    uint32_t nc = *cap ? *cap * 2 : 64;
    while (nc < need) nc *= 2;
    void *q = tem_realloc(*p, (size_t)nc * elem);
    if (!q) return -1;
    *p = q;
    *cap = nc;
    return 0;
}

static int parse_buses(ctl_feeder *f, const char *txt, size_t len, char *err, size_t errlen) {
    csv_reader r = {txt, txt + len, 0};
    int rc = check_header(&r, "buses.csv", BUS_HDR, 7, err, errlen);
    if (rc) return rc;
    char buf[CSV_LINE_MAX], *fld[CSV_FIELDS_MAX];
    int nf, got;
    uint32_t cap = 0;
    while ((got = csv_next(&r, buf, fld, &nf)) != 0) {
        if (got < 0 || nf != 7)
            return fail(err, errlen, GRID_EPARSE, "buses.csv line %u: want 7 fields", r.lineno);
        if (f->n_buses >= GRID_BUSES_MAX)
            return fail(err, errlen, GRID_ETOOBIG, "buses.csv: more than %u buses", GRID_BUSES_MAX);
        if (grow((void **)&f->buses, &cap, f->n_buses + 1, sizeof *f->buses))
            return fail(err, errlen, GRID_ENOMEM, "out of memory");
        ctl_feeder_bus *b = &f->buses[f->n_buses];
        memset(b, 0, sizeof *b);
        if (!parse_id(fld[0], &b->id))
            return fail(err, errlen, GRID_EPARSE, "buses.csv line %u: bus '%s' is not a bus number", r.lineno, fld[0]);
        if (strcmp(fld[1], "slack") == 0)
            b->slack = true;
        else if (strcmp(fld[1], "pq") != 0)
            return fail(err, errlen, GRID_EPARSE, "buses.csv line %u: bus %u: type '%s' (want slack or pq)",
                        r.lineno, b->id, fld[1]);
        const char *names[] = {"pd_kw", "qd_kvar", "vmin_pu", "vmax_pu", "base_kv"};
        double *dst[] = {&b->pd_kw, &b->qd_kvar, &b->vmin_pu, &b->vmax_pu, &b->base_kv};
        for (int i = 0; i < 5; i++) {
            if (!parse_double(fld[2 + i], dst[i]))
                return fail(err, errlen, GRID_EPARSE, "buses.csv line %u: bus %u: %s '%s' is not a number",
                            r.lineno, b->id, names[i], fld[2 + i]);
        }
        if (!(b->base_kv > 0))
            return fail(err, errlen, GRID_EVBAND, "bus %u: base_kv must be positive", b->id);
        if (!(b->vmin_pu > 0 && b->vmin_pu <= b->vmax_pu && b->vmax_pu < 10))
            return fail(err, errlen, GRID_EVBAND, "bus %u: voltage band %g..%g pu is invalid", b->id,
                        b->vmin_pu, b->vmax_pu);
        if (!b->slack && !(b->vmin_pu < b->vmax_pu))
            return fail(err, errlen, GRID_EVBAND, "bus %u: voltage band %g..%g pu is empty", b->id,
                        b->vmin_pu, b->vmax_pu);
        f->n_buses++;
    }
    if (f->n_buses == 0) return fail(err, errlen, GRID_EPARSE, "buses.csv: no buses");
    return GRID_OK;
}

static int parse_lines(ctl_feeder *f, const char *txt, size_t len, char *err, size_t errlen) {
    csv_reader r = {txt, txt + len, 0};
    int rc = check_header(&r, "lines.csv", LINE_HDR, 5, err, errlen);
    if (rc) return rc;
    char buf[CSV_LINE_MAX], *fld[CSV_FIELDS_MAX];
    int nf, got;
    uint32_t cap = 0;
    while ((got = csv_next(&r, buf, fld, &nf)) != 0) {
        if (got < 0 || nf != 5)
            return fail(err, errlen, GRID_EPARSE, "lines.csv line %u: want 5 fields", r.lineno);
        if (f->n_lines >= GRID_BUSES_MAX)
            return fail(err, errlen, GRID_ETOOBIG, "lines.csv: more than %u lines", GRID_BUSES_MAX);
        if (grow((void **)&f->lines, &cap, f->n_lines + 1, sizeof *f->lines))
            return fail(err, errlen, GRID_ENOMEM, "out of memory");
        ctl_feeder_line *l = &f->lines[f->n_lines];
        memset(l, 0, sizeof *l);
        if (!parse_id(fld[0], &l->from) || !parse_id(fld[1], &l->to))
            return fail(err, errlen, GRID_EPARSE, "lines.csv line %u: from/to '%s','%s' are not bus numbers",
                        r.lineno, fld[0], fld[1]);
        const char *names[] = {"r_ohm", "x_ohm", "rate_kva"};
        double *dst[] = {&l->r_ohm, &l->x_ohm, &l->rate_kva};
        for (int i = 0; i < 3; i++) {
            if (!parse_double(fld[2 + i], dst[i]))
                return fail(err, errlen, GRID_EPARSE, "lines.csv line %u: line %u-%u: %s '%s' is not a number",
                            r.lineno, l->from, l->to, names[i], fld[2 + i]);
        }
        /* The chain stores micro-ohms: an impedance that rounds to zero there is zero here too. */
        if (l->r_ohm < 0 || l->x_ohm < 0 || llround(l->r_ohm * 1e6) + llround(l->x_ohm * 1e6) == 0)
            return fail(err, errlen, GRID_EIMPEDANCE, "line %u-%u: impedance %g+j%g ohm is not positive",
                        l->from, l->to, l->r_ohm, l->x_ohm);
        if (!(l->rate_kva > 0))
            return fail(err, errlen, GRID_ERATING, "line %u-%u: rate_kva %g is not positive", l->from,
                        l->to, l->rate_kva);
        f->n_lines++;
    }
    return GRID_OK;
}

int ctl_feeder_parse(ctl_feeder *f, const char *buses_csv, size_t buses_len, const char *lines_csv,
                     size_t lines_len, char *err, size_t errlen) {
    TEM_ASSERT(f && buses_csv && lines_csv);
    memset(f, 0, sizeof *f);
    if (err && errlen) err[0] = 0;
    int rc = parse_buses(f, buses_csv, buses_len, err, errlen);
    if (rc == GRID_OK) rc = parse_lines(f, lines_csv, lines_len, err, errlen);
    if (rc != GRID_OK) goto out;
    uint32_t n = f->n_buses, m = f->n_lines;
    f->slack = UINT32_MAX;
    for (uint32_t i = 0; i < n; i++) {
        if (!f->buses[i].slack) continue;
        if (f->slack != UINT32_MAX) {
            rc = fail(err, errlen, GRID_ESLACK, "buses %u and %u are both slack buses", f->buses[f->slack].id,
                      f->buses[i].id);
            goto out;
        }
        f->slack = i;
    }
    if (f->slack == UINT32_MAX) {
        rc = fail(err, errlen, GRID_ESLACK, "no slack bus");
        goto out;
    }
    uint32_t *ids = tem_malloc(sizeof *ids * n), *from = tem_malloc(sizeof *from * (m ? m : 1)),
             *to = tem_malloc(sizeof *to * (m ? m : 1));
    f->order = tem_malloc(sizeof *f->order * n);
    f->parent = tem_malloc(sizeof *f->parent * n);
    f->parent_line = tem_malloc(sizeof *f->parent_line * n);
    f->child_is_to = tem_calloc(m ? m : 1, 1);
    if (!ids || !from || !to || !f->order || !f->parent || !f->parent_line || !f->child_is_to) {
        tem_free(ids);
        tem_free(from);
        tem_free(to);
        rc = fail(err, errlen, GRID_ENOMEM, "out of memory");
        goto out;
    }
    for (uint32_t i = 0; i < n; i++) ids[i] = f->buses[i].id;
    for (uint32_t l = 0; l < m; l++) {
        from[l] = f->lines[l].from;
        to[l] = f->lines[l].to;
    }
    uint32_t bad = 0;
    rc = grid_topology_build(n, ids, f->slack, m, from, to, f->order, f->parent, f->parent_line, &bad);
    tem_free(ids);
    tem_free(from);
    tem_free(to);
    switch (rc) {
    case GRID_OK: break;
    case GRID_EDUPBUS: rc = fail(err, errlen, rc, "bus %u listed twice", f->buses[bad].id); goto out;
    case GRID_EUNKNOWNBUS: {
        const ctl_feeder_line *l = &f->lines[bad];
        uint32_t u = ctl_feeder_bus_index(f, l->from) < 0 ? l->from : l->to;
        rc = fail(err, errlen, rc, "line %u-%u: unknown bus %u", l->from, l->to, u);
        goto out;
    }
    case GRID_ECYCLE:
        rc = fail(err, errlen, rc, "line %u-%u closes a loop: the feeder is not radial", f->lines[bad].from,
                  f->lines[bad].to);
        goto out;
    case GRID_EISLAND:
        rc = fail(err, errlen, rc, "bus %u is not connected to the slack bus %u", f->buses[bad].id,
                  f->buses[f->slack].id);
        goto out;
    case GRID_ETOOBIG: rc = fail(err, errlen, rc, "more than %u buses", GRID_BUSES_MAX); goto out;
    default: rc = fail(err, errlen, rc, "%s", grid_strerror(rc)); goto out;
    }
    for (uint32_t l = 0; l < m; l++) {
        ctl_feeder_line *ln = &f->lines[l];
        ln->f = (uint32_t)ctl_feeder_bus_index(f, ln->from);
        ln->t = (uint32_t)ctl_feeder_bus_index(f, ln->to);
        f->child_is_to[l] = f->parent_line[ln->t] == l;
        if (fabs(f->buses[ln->f].base_kv - f->buses[ln->t].base_kv) > 1e-9 * f->buses[ln->f].base_kv) {
            rc = fail(err, errlen, GRID_EMODEL, "line %u-%u: base_kv differs at its ends (%g and %g kV)",
                      ln->from, ln->to, f->buses[ln->f].base_kv, f->buses[ln->t].base_kv);
            goto out;
        }
    }
    ledger_sha256_parts(f->source_hash, 2, (const void *const[]){buses_csv, lines_csv},
                        (const size_t[]){buses_len, lines_len});
    return GRID_OK;
out:
    ctl_feeder_free(f);
    return rc;
}

static int read_file(const char *path, char **out, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return -1;
    size_t cap = 1 << 16, n = 0;
    char *buf = tem_malloc(cap);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n, fp);
        n += got;
        if (n < cap) break;
        if (cap >= (64u << 20)) { /* no feeder file is this large */
            tem_free(buf);
            buf = NULL;
            break;
        }
        char *nb = tem_realloc(buf, cap * 2);
        if (!nb) {
            tem_free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    bool bad = !buf || ferror(fp);
    fclose(fp);
    if (bad) {
        tem_free(buf);
        return -1;
    }
    *out = buf;
    *len = n;
    return 0;
}

int ctl_feeder_load(ctl_feeder *f, const char *dir, char *err, size_t errlen) {
    memset(f, 0, sizeof *f);
    char pb[4096], pl[4096];
    snprintf(pb, sizeof pb, "%s/buses.csv", dir);
    snprintf(pl, sizeof pl, "%s/lines.csv", dir);
    char *b = NULL, *l = NULL;
    size_t bl = 0, ll = 0;
    if (read_file(pb, &b, &bl)) return fail(err, errlen, GRID_EIO, "cannot read %s: %s", pb, strerror(errno));
    if (read_file(pl, &l, &ll)) {
        tem_free(b);
        return fail(err, errlen, GRID_EIO, "cannot read %s: %s", pl, strerror(errno));
    }
    int rc = ctl_feeder_parse(f, b, bl, l, ll, err, errlen);
    tem_free(b);
    tem_free(l);
    return rc;
}

/* ================================================================== power flow */

typedef struct {
    double complex *v, *j, *s, *z; /* per bus index: voltage, current of its parent line, load,
                                      impedance of its parent line (pu) */
    bool have_v;
} flow_work;

void ctl_feeder_flow_free(ctl_feeder_flow *fl) {
    if (!fl) return;
    double **arrs[] = {&fl->vm_pu, &fl->va_deg, &fl->p_from_kw, &fl->q_from_kvar, &fl->p_to_kw,
                       &fl->q_to_kvar, &fl->i_a, &fl->loading_pct, &fl->p_par_kw, &fl->q_par_kvar,
                       &fl->p_child_kw, &fl->q_child_kvar};
    for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) tem_free(*arrs[i]);
    flow_work *w = fl->work;
    if (w) {
        tem_free(w->v);
        tem_free(w->j);
        tem_free(w->s);
        tem_free(w->z);
        tem_free(w);
    }
    memset(fl, 0, sizeof *fl);
}

int ctl_feeder_flow_init(ctl_feeder_flow *fl, const ctl_feeder *f) {
    memset(fl, 0, sizeof *fl);
    uint32_t n = f->n_buses, m = f->n_lines ? f->n_lines : 1;
    fl->n_buses = f->n_buses;
    fl->n_lines = f->n_lines;
    fl->vm_pu = tem_calloc(n, sizeof(double));
    fl->va_deg = tem_calloc(n, sizeof(double));
    double **larrs[] = {&fl->p_from_kw, &fl->q_from_kvar, &fl->p_to_kw, &fl->q_to_kvar, &fl->i_a,
                        &fl->loading_pct, &fl->p_par_kw, &fl->q_par_kvar, &fl->p_child_kw, &fl->q_child_kvar};
    bool ok = fl->vm_pu && fl->va_deg;
    for (size_t i = 0; i < sizeof larrs / sizeof larrs[0]; i++) {
        *larrs[i] = tem_calloc(m, sizeof(double));
        ok = ok && *larrs[i];
    }
    flow_work *w = tem_calloc(1, sizeof *w);
    fl->work = w;
    if (w) {
        w->v = tem_calloc(n, sizeof *w->v);
        w->j = tem_calloc(n, sizeof *w->j);
        w->s = tem_calloc(n, sizeof *w->s);
        w->z = tem_calloc(n, sizeof *w->z);
    }
    if (!ok || !w || !w->v || !w->j || !w->s || !w->z) {
        ctl_feeder_flow_free(fl);
        return GRID_ENOMEM;
    }
    for (uint32_t b = 0; b < n; b++) {
        uint32_t l = f->parent_line[b];
        if (l == UINT32_MAX) continue;
        double zb = f->buses[b].base_kv * f->buses[b].base_kv / (SBASE_KVA / 1000.0); /* ohm */
        w->z[b] = (f->lines[l].r_ohm + I * f->lines[l].x_ohm) / zb;
    }
    return GRID_OK;
}

int ctl_feeder_flow_run(const ctl_feeder *f, const double *inject_kw, double tol_pu, bool warm,
                        ctl_feeder_flow *fl, char *err, size_t errlen) {
    TEM_ASSERT(f && fl && fl->work && fl->n_buses == f->n_buses);
    flow_work *w = fl->work;
    const uint32_t n = f->n_buses;
    const uint32_t *ord = f->order, *par = f->parent;
    for (uint32_t b = 0; b < n; b++) {
        double p = f->buses[b].pd_kw - (inject_kw ? inject_kw[b] : 0.0);
        w->s[b] = (p + I * f->buses[b].qd_kvar) / SBASE_KVA;
        if (!warm || !w->have_v) w->v[b] = 1.0;
    }
    w->v[f->slack] = 1.0; /* the slack holds 1.0 pu at angle 0 */
    w->have_v = false;
    int it;
    double delta = INFINITY;
    for (it = 1; it <= CTL_FEEDER_ITER_MAX; it++) {
        /* Backward: each line carries its far bus' load current plus everything below it. */
        for (uint32_t b = 0; b < n; b++) w->j[b] = conj(w->s[b] / w->v[b]);
        for (uint32_t k = n; k-- > 1;) w->j[par[ord[k]]] += w->j[ord[k]];
        /* Forward: voltages down the tree. */
        delta = 0;
        for (uint32_t k = 1; k < n; k++) {
            uint32_t b = ord[k];
            double complex nv = w->v[par[b]] - w->z[b] * w->j[b];
            double d = cabs(nv - w->v[b]);
            if (!(d <= delta)) delta = d; /* also catches NaN */
            w->v[b] = nv;
        }
        for (uint32_t k = 1; k < n; k++) {
            double vm = cabs(w->v[ord[k]]);
            if (!(vm > 0.2) || !isfinite(vm)) {
                return fail(err, errlen, GRID_ENOCONVERGE,
                            "power flow did not converge: voltage at bus %u collapsed (%g pu) in iteration %d",
                            f->buses[ord[k]].id, vm, it);
            }
        }
        if (delta < tol_pu) break;
    }
    if (!(delta < tol_pu))
        return fail(err, errlen, GRID_ENOCONVERGE,
                    "power flow did not converge in %d iterations (last voltage change %g pu)",
                    CTL_FEEDER_ITER_MAX, delta);
    w->have_v = true;
    fl->iterations = it;
    /* Line currents consistent with the final voltages. */
    for (uint32_t b = 0; b < n; b++) w->j[b] = conj(w->s[b] / w->v[b]);
    for (uint32_t k = n; k-- > 1;) w->j[par[ord[k]]] += w->j[ord[k]];
    fl->vmin_pu = INFINITY;
    for (uint32_t b = 0; b < n; b++) {
        fl->vm_pu[b] = cabs(w->v[b]);
        fl->va_deg[b] = carg(w->v[b]) * 180.0 / M_PI;
        if (fl->vm_pu[b] < fl->vmin_pu) {
            fl->vmin_pu = fl->vm_pu[b];
            fl->vmin_bus = f->buses[b].id;
        }
    }
    fl->loss_kw = fl->loss_kvar = 0;
    for (uint32_t l = 0; l < f->n_lines; l++) {
        const ctl_feeder_line *ln = &f->lines[l];
        uint32_t c = f->child_is_to[l] ? ln->t : ln->f, p = par[c];
        double complex sp = w->v[p] * conj(w->j[c]) * SBASE_KVA; /* leaves the parent end */
        double complex sc = w->v[c] * conj(w->j[c]) * SBASE_KVA; /* arrives at the far end */
        fl->p_par_kw[l] = creal(sp);
        fl->q_par_kvar[l] = cimag(sp);
        fl->p_child_kw[l] = creal(sc);
        fl->q_child_kvar[l] = cimag(sc);
        double complex sf = f->child_is_to[l] ? sp : -sc, st = f->child_is_to[l] ? -sc : sp;
        fl->p_from_kw[l] = creal(sf);
        fl->q_from_kvar[l] = cimag(sf);
        fl->p_to_kw[l] = creal(st);
        fl->q_to_kvar[l] = cimag(st);
        double ibase = SBASE_KVA / (sqrt(3.0) * f->buses[c].base_kv); /* A */
        fl->i_a[l] = cabs(w->j[c]) * ibase;
        double smax = fmax(cabs(sp), cabs(sc));
        fl->loading_pct[l] = 100.0 * smax / ln->rate_kva;
        fl->loss_kw += creal(sp - sc);
        fl->loss_kvar += cimag(sp - sc);
    }
    return GRID_OK;
}

/* ================================================================== the InstallFeeder */

void ctl_feeder_install_free(ctl_feeder_install *in) {
    if (!in) return;
    tem_free(in->prof_load);
    tem_free(in->prof_gen);
    tem_free(in->slot_store);
    tem_free(in->slot_ptrs);
    tem_free(in->case_store);
    tem_free(in->case_ptrs);
    tem_free(in->bus_store);
    tem_free(in->bus_ptrs);
    tem_free(in->line_store);
    tem_free(in->line_ptrs);
    memset(in, 0, sizeof *in);
}

static uint64_t u64_round(double v) { return v <= 0 ? 0 : (uint64_t)llround(v); }

int ctl_feeder_install_build(const ctl_feeder *f, uint32_t margin_ppm, ctl_feeder_install *out,
                             char *err, size_t errlen) {
    TEM_ASSERT(f && out);
    memset(out, 0, sizeof *out);
    const uint32_t n = f->n_buses, m = f->n_lines;
    ctl_feeder_flow base = {0};
    int rc;
    if ((rc = ctl_feeder_flow_init(&base, f)) != GRID_OK) goto fail;
    rc = ctl_feeder_flow_run(f, NULL, 1e-12, false, &base, err, errlen);
    if (rc != GRID_OK) goto fail;
    out->bus_store = tem_calloc(n, sizeof *out->bus_store);
    out->bus_ptrs = tem_calloc(n, sizeof *out->bus_ptrs);
    out->line_store = tem_calloc(m ? m : 1, sizeof *out->line_store);
    out->line_ptrs = tem_calloc(m ? m : 1, sizeof *out->line_ptrs);
    if (!out->bus_store || !out->bus_ptrs || !out->line_store || !out->line_ptrs) {
        rc = GRID_ENOMEM;
        goto fail;
    }
    for (uint32_t b = 0; b < n; b++) {
        const ctl_feeder_bus *fb = &f->buses[b];
        Tem__V1__FeederBus *mb = &out->bus_store[b];
        tem__v1__feeder_bus__init(mb);
        out->bus_ptrs[b] = mb;
        mb->bus = fb->id;
        mb->slack = fb->slack;
        mb->base_p_w = llround(fb->pd_kw * 1000.0);
        mb->base_q_var = llround(fb->qd_kvar * 1000.0);
        mb->vmin_ppm = (uint32_t)llround(fb->vmin_pu * 1e6);
        mb->vmax_ppm = (uint32_t)llround(fb->vmax_pu * 1e6);
        mb->base_v_ppm = (uint32_t)llround(base.vm_pu[b] * 1e6);
        mb->base_v_npu = u64_round(base.vm_pu[b] * 1e9);
        mb->parent = f->buses[f->parent[b]].id;
        mb->parent_line = f->parent_line[b] == UINT32_MAX ? 0 : f->parent_line[b];
    }
    for (uint32_t l = 0; l < m; l++) {
        const ctl_feeder_line *ln = &f->lines[l];
        Tem__V1__FeederLine *ml = &out->line_store[l];
        tem__v1__feeder_line__init(ml);
        out->line_ptrs[l] = ml;
        uint32_t c = f->child_is_to[l] ? ln->t : ln->f, p = f->parent[c];
        ml->from = ln->from;
        ml->to = ln->to;
        ml->r_uohm = u64_round(ln->r_ohm * 1e6);
        ml->x_uohm = u64_round(ln->x_ohm * 1e6);
        ml->rate_va = u64_round(ln->rate_kva * 1000.0);
        double sp = hypot(base.p_par_kw[l], base.q_par_kvar[l]);
        double sc = hypot(base.p_child_kw[l], base.q_child_kvar[l]);
        double smax = fmax(sp, sc);
        ml->base_flow_va = llround((base.p_par_kw[l] < 0 ? -smax : smax) * 1000.0);
        ml->base_p_w = llround(base.p_par_kw[l] * 1000.0);
        ml->base_q_var = (uint64_t)ceil(fmax(fabs(base.q_par_kvar[l]), fabs(base.q_child_kvar[l])) * 1000.0);
        /* Loss at the rating and the lower of the two ends' voltage limits: |S|^2 r / V_LL^2. */
        double vlim = fmin(f->buses[c].vmin_pu, f->buses[p].vmin_pu) * f->buses[c].base_kv * 1000.0;
        double rate_va = ln->rate_kva * 1000.0;
        double lar = ceil(ln->r_ohm * rate_va * rate_va / (vlim * vlim));
        ml->loss_at_rate_w = lar > rate_va ? ml->rate_va : (uint64_t)lar;
    }
    tem__v1__install_feeder__init(&out->msg);
    memcpy(out->hash, f->source_hash, sizeof out->hash);
    out->msg.source_hash.data = out->hash;
    out->msg.source_hash.len = sizeof out->hash;
    out->msg.n_buses = n;
    out->msg.buses = out->bus_ptrs;
    out->msg.n_lines = m;
    out->msg.lines = out->line_ptrs;
    out->msg.margin_ppm = margin_ppm;
    out->msg.base_kv_mv = u64_round(f->buses[f->slack].base_kv * 1e6);
    rc = GRID_OK;
fail:
    if (rc != GRID_OK) ctl_feeder_install_free(out);
    ctl_feeder_flow_free(&base);
    return rc;
}

/* ================================================================== base case per slot */

void ctl_feeder_base_free(ctl_feeder_base *bc) {
    if (!bc) return;
    tem_free(bc->load_ppm);
    tem_free(bc->gen_ppm);
    tem_free(bc->gen_kw);
    tem_free(bc->over);
    memset(bc, 0, sizeof *bc);
}

static int over_cmp(const void *a, const void *b) {
    const ctl_feeder_override *x = a, *y = b;
    if (x->slot != y->slot) return x->slot < y->slot ? -1 : 1;
    return (x->bus > y->bus) - (x->bus < y->bus);
}

int ctl_feeder_base_load(const ctl_feeder *f, const char *path, ctl_feeder_base *bc, char *err, size_t errlen) {
    memset(bc, 0, sizeof *bc);
    char *txt = NULL;
    size_t len = 0;
    if (read_file(path, &txt, &len)) return fail(err, errlen, GRID_EIO, "cannot read %s: %s", path, strerror(errno));
    csv_reader r = {txt, txt + len, 0};
    char buf[CSV_LINE_MAX], *fld[CSV_FIELDS_MAX];
    int nf, got, rc = GRID_OK;
    uint32_t cap_p = 0, cap_o = 0;
    bc->gen_kw = tem_calloc(f->n_buses, sizeof *bc->gen_kw);
    if (!bc->gen_kw) rc = fail(err, errlen, GRID_ENOMEM, "out of memory");
    while (rc == GRID_OK && (got = csv_next(&r, buf, fld, &nf)) != 0) {
        if (got < 0) {
            rc = fail(err, errlen, GRID_EPARSE, "%s line %u: too long", path, r.lineno);
            break;
        }
        if (fld[0][0] == '#') continue;
        double v[4];
        uint32_t u;
        if (strcmp(fld[0], "profile") == 0 && nf == 4 && parse_id(fld[1], &u) && parse_double(fld[2], &v[0]) &&
            parse_double(fld[3], &v[1])) {
            if (u != bc->n_prof || v[0] < 0 || v[1] < 0 || v[0] > 1000 || v[1] > 1000 || bc->n_prof >= 1440) {
                rc = fail(err, errlen, GRID_EPARSE, "%s line %u: profile entries go 0, 1, ... (at most 1440), with "
                          "percentages 0..1000", path, r.lineno);
                break;
            }
            uint32_t *g = NULL;
            if (grow((void **)&bc->load_ppm, &cap_p, bc->n_prof + 1, sizeof *bc->load_ppm) ||
                !(g = tem_realloc(bc->gen_ppm, sizeof *bc->gen_ppm * cap_p))) {
                rc = fail(err, errlen, GRID_ENOMEM, "out of memory");
                break;
            }
            bc->gen_ppm = g;
            bc->load_ppm[bc->n_prof] = (uint32_t)llround(v[0] * 1e4);
            bc->gen_ppm[bc->n_prof] = (uint32_t)llround(v[1] * 1e4);
            bc->n_prof++;
        } else if (strcmp(fld[0], "gen") == 0 && nf == 3 && parse_id(fld[1], &u) && parse_double(fld[2], &v[0]) &&
                   v[0] >= 0) {
            int64_t b = ctl_feeder_bus_index(f, u);
            if (b < 0) {
                rc = fail(err, errlen, GRID_EUNKNOWNBUS, "%s line %u: unknown bus %u", path, r.lineno, u);
                break;
            }
            bc->gen_kw[b] = v[0];
        } else if (strcmp(fld[0], "slot") == 0 && nf == 5 && parse_id(fld[2], &u) && parse_double(fld[3], &v[0]) &&
                   parse_double(fld[4], &v[1])) {
            char *end;
            errno = 0;
            unsigned long long sl = strtoull(fld[1], &end, 10);
            int64_t b = ctl_feeder_bus_index(f, u);
            if (*end || errno || !fld[1][0] || fld[1][0] == '-') {
                rc = fail(err, errlen, GRID_EPARSE, "%s line %u: slot '%s' is not a number", path, r.lineno, fld[1]);
                break;
            }
            if (b < 0) {
                rc = fail(err, errlen, GRID_EUNKNOWNBUS, "%s line %u: unknown bus %u", path, r.lineno, u);
                break;
            }
            if (grow((void **)&bc->over, &cap_o, bc->n_over + 1, sizeof *bc->over)) {
                rc = fail(err, errlen, GRID_ENOMEM, "out of memory");
                break;
            }
            bc->over[bc->n_over++] = (ctl_feeder_override){sl, (uint32_t)b, v[0], v[1]};
        } else {
            rc = fail(err, errlen, GRID_EPARSE,
                      "%s line %u: want profile,ENTRY,LOAD_PCT,GEN_PCT or gen,BUS,KW or slot,SLOT,BUS,P_KW,Q_KVAR",
                      path, r.lineno);
        }
    }
    tem_free(txt);
    if (rc == GRID_OK && bc->n_over) qsort(bc->over, bc->n_over, sizeof *bc->over, over_cmp);
    if (rc != GRID_OK) ctl_feeder_base_free(bc);
    return rc;
}

void ctl_feeder_base_slot(const ctl_feeder *f, const ctl_feeder_base *bc, uint64_t slot, double *pd_kw,
                          double *qd_kvar) {
    double lp = 1, gp = 0;
    if (bc && bc->n_prof) {
        lp = bc->load_ppm[slot % bc->n_prof] / 1e6;
        gp = bc->gen_ppm[slot % bc->n_prof] / 1e6;
    }
    for (uint32_t b = 0; b < f->n_buses; b++) {
        pd_kw[b] = f->buses[b].pd_kw * lp - (bc && bc->n_prof ? bc->gen_kw[b] * gp : 0);
        qd_kvar[b] = f->buses[b].qd_kvar * lp;
    }
    for (uint32_t i = 0; bc && i < bc->n_over; i++) {
        if (bc->over[i].slot != slot) continue;
        pd_kw[bc->over[i].bus] = bc->over[i].p_kw;
        qd_kvar[bc->over[i].bus] = bc->over[i].q_kvar;
    }
}

int ctl_feeder_install_set_base(ctl_feeder_install *in, const ctl_feeder *f, const ctl_feeder_base *bc) {
    for (uint32_t b = 0; b < f->n_buses; b++) in->bus_store[b].gen_w = u64_round(bc->gen_kw[b] * 1000.0);
    if (bc->n_prof) {
        in->prof_load = tem_malloc(sizeof *in->prof_load * bc->n_prof);
        in->prof_gen = tem_malloc(sizeof *in->prof_gen * bc->n_prof);
        if (!in->prof_load || !in->prof_gen) return GRID_ENOMEM;
        memcpy(in->prof_load, bc->load_ppm, sizeof *in->prof_load * bc->n_prof);
        memcpy(in->prof_gen, bc->gen_ppm, sizeof *in->prof_gen * bc->n_prof);
        in->msg.n_load_profile_ppm = in->msg.n_gen_profile_ppm = bc->n_prof;
        in->msg.load_profile_ppm = in->prof_load;
        in->msg.gen_profile_ppm = in->prof_gen;
    }
    if (bc->n_over) {
        /* One FeederSlotCase per slot: the overrides are sorted by slot. */
        uint32_t ns = 0;
        for (uint32_t i = 0; i < bc->n_over; i++) ns += i == 0 || bc->over[i].slot != bc->over[i - 1].slot;
        in->slot_store = tem_calloc(ns, sizeof *in->slot_store);
        in->slot_ptrs = tem_calloc(ns, sizeof *in->slot_ptrs);
        in->case_store = tem_calloc(bc->n_over, sizeof *in->case_store);
        in->case_ptrs = tem_calloc(bc->n_over, sizeof *in->case_ptrs);
        if (!in->slot_store || !in->slot_ptrs || !in->case_store || !in->case_ptrs) return GRID_ENOMEM;
        uint32_t s = UINT32_MAX;
        for (uint32_t i = 0; i < bc->n_over; i++) {
            if (i == 0 || bc->over[i].slot != bc->over[i - 1].slot) {
                s = s == UINT32_MAX ? 0 : s + 1;
                tem__v1__feeder_slot_case__init(&in->slot_store[s]);
                in->slot_store[s].slot = bc->over[i].slot;
                in->slot_store[s].buses = &in->case_ptrs[i];
                in->slot_ptrs[s] = &in->slot_store[s];
            }
            Tem__V1__FeederBusCase *c = &in->case_store[i];
            tem__v1__feeder_bus_case__init(c);
            c->bus = f->buses[bc->over[i].bus].id;
            c->p_w = llround(bc->over[i].p_kw * 1000.0);
            c->q_var = llround(bc->over[i].q_kvar * 1000.0);
            in->case_ptrs[i] = c;
            in->slot_store[s].n_buses++;
        }
        in->msg.n_overrides = ns;
        in->msg.overrides = in->slot_ptrs;
    }
    return GRID_OK;
}
