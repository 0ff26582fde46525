/* ctl_proof.c: `temctl account KEY --prove --genesis FILE [--proof FILE] [--save FILE]`: checks
 * an account proof (GET /v1/accounts/{key}/proof, docs/ledger.md "Account proofs over HTTP")
 * against nothing but a genesis file: fetched from a node, or offline from a saved answer.
 *
 * Steps, in order; the first that fails is named and temctl exits 1:
 *   certificate  2f+1 distinct genesis validators signed the commit digest of this chain's
 *                genesis hash, the certificate's view, height and block hash
 *   header       the header hashes to the certified block hash, at the certified height, of
 *                this chain (chain id, genesis hash)
 *   root         the document's state root and height are the header's (height - 1)
 *   path         the Merkle path leads from the record (or, for an absent key, from its
 *                exclusion) to that root
 *   record       the proof is for KEY, and the record is an account record whose decoded
 *                fields are what its bytes say
 * Every check works on the hex fields; the decoded fields beside them are a reading aid and must
 * agree with the hex (a document whose decoded parts lie is refused at that part's step).
 * Without --prove the verb is the plain node query of ctl_node.c. */
#include "node/ctl/http.h"
#include "node/proof.h"

#include <stdarg.h>

#define PROOF_DOC_BYTES_MAX (1u << 20)
#define PROOF_WAIT_MS 20000 /* the node answers after the next block: up to its own 10 s wait */

static const char USAGE[] =
    "usage: temctl account KEY --prove --genesis FILE [--proof FILE | --node URL] [--save FILE] [--json]\n"
    "Checks that account KEY's record (or its absence) is in the state committed by 2f+1 of the\n"
    "genesis validators: certificate, header, root, path, record, in this order. --proof checks a\n"
    "saved answer of GET /v1/accounts/KEY/proof offline; otherwise the proof is fetched from\n"
    "--node (default $TEMCTL_NODE, else " CTL_NODE_DEFAULT ") and --save keeps a copy.\n"
    "Exit status: 0 verified, 1 refused (the failed step is named) or node unreachable, 2 usage.\n";

typedef struct {
    const char *step;
    char why[320];
} fail_info;

static int fail(fail_info *f, const char *step, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(fail_info *f, const char *step, const char *fmt, ...) {
    f->step = step;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->why, sizeof f->why, fmt, ap);
    va_end(ap);
    return -1;
}

/* Fixed-size hex field obj.name; false when missing or of another length. */
static bool hex_field(const json_t *obj, const char *name, uint8_t *out, size_t n) {
    const char *s = json_string_value(json_object_get(obj, name));
    return s && tem_unhex(out, n, s) == 0;
}
/* Hex of any length (may be empty): *out tem_malloc'd. */
static bool hex_alloc(const json_t *obj, const char *name, uint8_t **out, size_t *len) {
    const char *s = json_string_value(json_object_get(obj, name));
    if (!s) return false;
    if (!*s) {
        *out = tem_malloc(1);
        *len = 0;
        return *out != NULL;
    }
    return tem_unhex_alloc(s, out, len) == 0;
}

/* Copies into out (cap bytes) the first key of `want` whose value differs in `got` (or that
 * `got` lacks or adds) and returns true; false when they agree. The copy outlives `want`. */
static bool first_diff(const json_t *want, const json_t *got, char *out, size_t cap) {
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)want, k, v) {
        if (!json_equal(v, json_object_get(got, k))) {
            snprintf(out, cap, "%s", k);
            return true;
        }
    }
    json_object_foreach((json_t *)got, k, v) {
        if (!json_object_get(want, k)) {
            snprintf(out, cap, "%s", k);
            return true;
        }
    }
    return false;
}

/* Whether the decoded part `got` says what `want` (decoded here from the hex) says; a NULL
 * want (out of memory) counts as a disagreement. */
static bool disagrees(json_t *want, const json_t *got, char *field, size_t cap) {
    snprintf(field, cap, "?");
    bool d = !want || first_diff(want, got, field, cap);
    json_decref(want);
    return d;
}

static void hex8(char out[17], const uint8_t *b) { tem_hex(out, b, 8); }

typedef struct {
    Tem__V1__CommitCertificate *cc;
    Tem__V1__BlockHeader *h;
    uint8_t *cert, *hdr, *proof, *rec;
    size_t cert_len, hdr_len, proof_len, rec_len;
    ledger_state_proof *p;
} parts;

static void parts_free(parts *x) {
    if (x->cc) tem__v1__commit_certificate__free_unpacked(x->cc, &ledger_pb_allocator);
    if (x->h) tem__v1__block_header__free_unpacked(x->h, &ledger_pb_allocator);
    tem_free(x->cert);
    tem_free(x->hdr);
    tem_free(x->proof);
    tem_free(x->rec);
    tem_free(x->p);
}

static int step_certificate(const json_t *doc, const ledger_genesis *g, parts *x, fail_info *f, json_t *out) {
    const char *S = "certificate";
    const json_t *cj = json_object_get(doc, "cert");
    if (!json_is_object(cj) || !hex_alloc(cj, "hex", &x->cert, &x->cert_len))
        return fail(f, S, "no cert.hex in the document");
    x->cc = tem__v1__commit_certificate__unpack(&ledger_pb_allocator, x->cert_len, x->cert);
    if (!x->cc) return fail(f, S, "cert.hex does not decode as a CommitCertificate");
    char d[64];
    if (disagrees(node_proof_cert_json(x->cc, x->cert, x->cert_len), cj, d, sizeof d))
        return fail(f, S, "the decoded certificate disagrees with cert.hex (field %s)", d);
    if (x->cc->block_hash.len != LEDGER_HASH_BYTES) return fail(f, S, "the certified block hash is not 32 bytes");
    uint32_t n = g->n_validators, quorum = ledger_quorum_of(n), distinct = 0;
    uint8_t digest[LEDGER_HASH_BYTES];
    ledger_commit_digest(g->hash, x->cc->view, x->cc->height, x->cc->block_hash.data, digest);
    uint64_t seen = 0;
    TEM_ASSERT(n <= 64);
    for (size_t i = 0; i < x->cc->n_sigs; i++) {
        const Tem__V1__CommitSig *s = x->cc->sigs[i];
        if (s->validator >= n) return fail(f, S, "signature %zu names validator %u; the genesis has %u", i, s->validator, n);
        if (seen >> s->validator & 1) return fail(f, S, "validator %u signed twice", s->validator);
        seen |= 1ull << s->validator;
        if (s->sig.len != LEDGER_ED_SIG_BYTES ||
            ledger_ed_verify(g->validators[s->validator].pubkey, digest, sizeof digest, s->sig.data) != 0)
            return fail(f, S, "the signature of validator %u (%s) does not verify over this chain's commit digest",
                        s->validator, g->validators[s->validator].name);
        distinct++;
    }
    if (distinct < quorum)
        return fail(f, S, "%u distinct validators signed; %u of the %u genesis validators are needed", distinct, quorum, n);
    /* The ledger's own check must agree with the one spelled out above. */
    if (ledger_cert_verify(g, x->cert, x->cert_len, x->cc->height, x->cc->block_hash.data) != LEDGER_OK)
        return fail(f, S, "ledger_cert_verify refuses the certificate");
    char hh[17];
    hex8(hh, x->cc->block_hash.data);
    json_t *s = json_pack("{s:s, s:s, s:I, s:I, s:i, s:i, s:i}", "step", S, "block_hash", hh, "height",
                          (json_int_t)x->cc->height, "view", (json_int_t)x->cc->view, "signed", distinct, "quorum", quorum,
                          "validators", n);
    json_array_append_new(out, s);
    return 0;
}

static int step_header(const json_t *doc, const ledger_genesis *g, parts *x, fail_info *f, json_t *out) {
    const char *S = "header";
    const json_t *hj = json_object_get(doc, "header");
    if (!json_is_object(hj) || !hex_alloc(hj, "hex", &x->hdr, &x->hdr_len)) return fail(f, S, "no header.hex in the document");
    x->h = tem__v1__block_header__unpack(&ledger_pb_allocator, x->hdr_len, x->hdr);
    if (!x->h) return fail(f, S, "header.hex does not decode as a BlockHeader");
    uint8_t hash[LEDGER_HASH_BYTES];
    if (ledger_block_hash(x->h, hash) != LEDGER_OK) return fail(f, S, "a hash field of the header is not 32 bytes");
    char d[64];
    if (disagrees(node_proof_header_json(x->h, hash), hj, d, sizeof d))
        return fail(f, S, "the decoded header disagrees with header.hex (field %s)", d);
    if (memcmp(hash, x->cc->block_hash.data, 32) != 0) {
        char a[17], b[17];
        hex8(a, hash);
        hex8(b, x->cc->block_hash.data);
        return fail(f, S, "the header hashes to %s..., the certificate commits block %s...", a, b);
    }
    if (x->h->height != x->cc->height)
        return fail(f, S, "header height %llu, certificate height %llu", (unsigned long long)x->h->height,
                    (unsigned long long)x->cc->height);
    if (strcmp(x->h->chain_id ? x->h->chain_id : "", g->chain_id) != 0)
        return fail(f, S, "the header is of chain %s, the genesis of %s", x->h->chain_id, g->chain_id);
    if (x->h->genesis_hash.len != 32 || memcmp(x->h->genesis_hash.data, g->hash, 32) != 0)
        return fail(f, S, "the header names another genesis");
    if (x->h->state_root.len != 32) return fail(f, S, "the header has no state root");
    json_array_append_new(out, json_pack("{s:s, s:I, s:s}", "step", S, "height", (json_int_t)x->h->height,
                                         "chain_id", g->chain_id));
    return 0;
}

static int step_root(const json_t *doc, parts *x, fail_info *f, json_t *out) {
    const char *S = "root";
    uint8_t root[32];
    if (!hex_field(doc, "state_root", root, 32)) return fail(f, S, "no 32-byte state_root in the document");
    if (memcmp(root, x->h->state_root.data, 32) != 0) {
        char a[17], b[17];
        hex8(a, root);
        hex8(b, x->h->state_root.data);
        return fail(f, S, "the document's state root %s... is not the header's %s...", a, b);
    }
    const json_t *hv = json_object_get(doc, "height");
    if (!json_is_integer(hv) || (uint64_t)json_integer_value(hv) + 1 != x->h->height)
        return fail(f, S, "the document's height is not the header's height - 1 (roots lag by one block)");
    char a[17];
    hex8(a, root);
    json_array_append_new(out, json_pack("{s:s, s:s, s:I}", "step", S, "state_root", a, "after_block",
                                         json_integer_value(hv)));
    return 0;
}

static int step_path(const json_t *doc, parts *x, const uint8_t kpub[33], fail_info *f, json_t *out) {
    const char *S = "path";
    uint8_t key[NODE_PROOF_ACCT_KEY_BYTES], skey[NODE_PROOF_ACCT_KEY_BYTES];
    node_proof_acct_key(key, kpub);
    if (!hex_field(doc, "state_key", skey, sizeof skey) || memcmp(skey, key, sizeof key) != 0)
        return fail(f, S, "state_key is not 'a' || key");
    const json_t *pj = json_object_get(doc, "proof");
    if (!json_is_object(pj) || !hex_alloc(pj, "hex", &x->proof, &x->proof_len)) return fail(f, S, "no proof.hex in the document");
    if (!(x->p = tem_malloc(sizeof *x->p))) return fail(f, S, "out of memory");
    if (ledger_state_proof_decode(x->proof, x->proof_len, x->p) != LEDGER_OK)
        return fail(f, S, "proof.hex is not a state proof in the wire form of docs/ledger.md");
    char d[64];
    if (disagrees(node_proof_path_json(x->p), pj, d, sizeof d))
        return fail(f, S, "the decoded proof disagrees with proof.hex (field %s)", d);
    const json_t *pr = json_object_get(doc, "present");
    if (!json_is_boolean(pr)) return fail(f, S, "no present flag in the document");
    bool present = json_is_true(pr);
    const json_t *rj = json_object_get(doc, "record");
    if (present) {
        if (!json_is_object(rj) || !hex_alloc(rj, "hex", &x->rec, &x->rec_len)) return fail(f, S, "present, but no record.hex");
        if (ledger_state_proof_verify(x->h->state_root.data, key, sizeof key, x->rec, x->rec_len, x->p) != 0)
            return fail(f, S, "the path does not lead from this record to the header's state root");
    } else {
        if (!json_is_null(rj)) return fail(f, S, "absent, but a record is given");
        if (ledger_state_proof_verify_absent(x->h->state_root.data, key, sizeof key, x->p) != 0)
            return fail(f, S, "the path does not show the key absent under the header's state root");
    }
    json_array_append_new(out, json_pack("{s:s, s:s, s:i}", "step", S, "kind", node_proof_kind_name(x->p->kind),
                                         "depth", x->p->depth));
    return 0;
}

static int step_record(const json_t *doc, parts *x, const uint8_t kpub[33], const uint8_t want_pub[33],
                       fail_info *f, json_t *out) {
    const char *S = "record";
    if (memcmp(kpub, want_pub, 33) != 0) {
        char a[67];
        tem_hex(a, kpub, 33);
        return fail(f, S, "the proof is for account %s, not the one asked for", a);
    }
    const json_t *rj = json_object_get(doc, "record");
    if (x->rec) {
        json_t *want = node_proof_record_json(x->rec, x->rec_len);
        if (!want) return fail(f, S, "the record is not a %d-byte account record", NODE_PROOF_ACCT_RECORD_BYTES);
        char d[64];
        if (disagrees(want, rj, d, sizeof d))
            return fail(f, S, "the decoded record disagrees with record.hex (field %s)", d);
    }
    json_array_append_new(out, json_pack("{s:s}", "step", S));
    return 0;
}

/* 0 when doc proves KEY's record (or absence) under the genesis; -1 with f filled otherwise.
 * steps gets one object per step that held. */
static int verify(const json_t *doc, const ledger_genesis *g, const uint8_t want_pub[33], fail_info *f, json_t *steps) {
    parts x;
    memset(&x, 0, sizeof x);
    uint8_t kpub[33];
    int rc = -1;
    if (!json_is_object(doc)) {
        fail(f, "certificate", "the document is not a JSON object");
        goto out;
    }
    if (step_certificate(doc, g, &x, f, steps) || step_header(doc, g, &x, f, steps) || step_root(doc, &x, f, steps))
        goto out;
    if (!hex_field(doc, "key", kpub, 33)) {
        fail(f, "path", "no 33-byte key in the document");
        goto out;
    }
    if (step_path(doc, &x, kpub, f, steps) || step_record(doc, &x, kpub, want_pub, f, steps)) goto out;
    rc = 0;
out:
    parts_free(&x);
    return rc;
}

static void print_human(const json_t *steps, const json_t *doc, const fail_info *f, bool ok) {
    size_t i;
    json_t *s;
    json_array_foreach(steps, i, s) {
        const char *name = json_string_value(json_object_get(s, "step"));
        printf("%-12s ok  ", name);
        if (!strcmp(name, "certificate"))
            printf("%lld of %lld validators signed (quorum %lld), block %lld (%s...), view %lld\n",
                   json_integer_value(json_object_get(s, "signed")), json_integer_value(json_object_get(s, "validators")),
                   json_integer_value(json_object_get(s, "quorum")), json_integer_value(json_object_get(s, "height")),
                   json_string_value(json_object_get(s, "block_hash")), json_integer_value(json_object_get(s, "view")));
        else if (!strcmp(name, "header"))
            printf("hashes to the certified block, chain %s\n", json_string_value(json_object_get(s, "chain_id")));
        else if (!strcmp(name, "root"))
            printf("state root %s... after block %lld\n", json_string_value(json_object_get(s, "state_root")),
                   json_integer_value(json_object_get(s, "after_block")));
        else if (!strcmp(name, "path"))
            printf("%s, depth %lld\n", json_string_value(json_object_get(s, "kind")),
                   json_integer_value(json_object_get(s, "depth")));
        else printf("%s\n", json_is_true(json_object_get(doc, "present")) ? "the key asked for; its bytes say what the decoded record says"
                                                                          : "the key asked for; it has no record");
    }
    if (!ok) {
        printf("%-12s FAILED  %s\n", f->step, f->why);
        return;
    }
    const json_t *rec = json_object_get(doc, "record");
    printf("account %s after block %lld: ", json_string_value(json_object_get(doc, "key")),
           json_integer_value(json_object_get(doc, "height")));
    if (!json_is_object(rec)) {
        printf("absent (no such account)\n");
        return;
    }
    printf("bus %lld, %s, money_uunit %lld, escrow_uunit %lld, tokens_wh %lld, debt_uunit %lld\n",
           json_integer_value(json_object_get(rec, "bus")), json_string_value(json_object_get(rec, "role")),
           json_integer_value(json_object_get(rec, "money_uunit")), json_integer_value(json_object_get(rec, "escrow_uunit")),
           json_integer_value(json_object_get(rec, "tokens_wh")), json_integer_value(json_object_get(rec, "debt_uunit")));
}

static int prove_main(int argc, char **argv) {
    ctl_opts o;
    if (ctl_opts_parse(&o, argc, argv, 1, "prove json") != 0) {
        fputs(USAGE, stderr);
        return CTL_USAGE;
    }
    if (o.help) {
        fputs(USAGE, stdout);
        return CTL_OK;
    }
    const char *gpath = ctl_opt(&o, "genesis"), *ppath = ctl_opt(&o, "proof"), *save = ctl_opt(&o, "save");
    uint8_t pub[33];
    if (o.npos != 1 || !gpath || tem_unhex(pub, sizeof pub, o.pos[0]) != 0 || (ppath && (ctl_opt(&o, "node") || save))) {
        fputs(USAGE, stderr);
        return CTL_USAGE;
    }
    ledger_genesis g;
    char err[256];
    if (ledger_genesis_load(gpath, &g, err, sizeof err) != LEDGER_OK) {
        fprintf(stderr, "temctl account: genesis %s: %s\n", gpath, err);
        return CTL_INVALID;
    }
    uint8_t *buf = NULL;
    size_t len = 0;
    int st = CTL_INVALID;
    json_t *doc = NULL, *steps = json_array();
    if (ppath) {
        if (ctl_read_file(ppath, PROOF_DOC_BYTES_MAX, &buf, &len) != 0) goto out;
    } else {
        const char *node = ctl_opt(&o, "node");
        if (!node) node = getenv("TEMCTL_NODE");
        if (!node || !node[0]) node = CTL_NODE_DEFAULT;
        ctl_http_conn c;
        if (ctl_http_init(&c, node, PROOF_WAIT_MS) != 0) {
            fprintf(stderr, "temctl: bad --node address %s: %s\n", node, c.err);
            st = CTL_USAGE;
            goto out;
        }
        char path[128];
        snprintf(path, sizeof path, "/v1/accounts/%s/proof", o.pos[0]);
        ctl_http_resp r;
        int hrc = ctl_http_request(&c, "GET", path, NULL, NULL, 0, &r);
        if (hrc != 0) fprintf(stderr, "temctl account: %s\n", c.err);
        ctl_http_close(&c);
        if (hrc != 0) goto out;
        if (r.status != 200) {
            fprintf(stderr, "temctl account: %s: HTTP %d: %.*s\n", path, r.status, (int)r.len, r.body);
            ctl_http_resp_free(&r);
            goto out;
        }
        buf = (uint8_t *)r.body;
        len = r.len;
        if (save && ctl_write_file(save, buf, len) != 0) goto out;
    }
    json_error_t je;
    doc = json_loadb((const char *)buf, len, 0, &je);
    if (!doc) {
        fprintf(stderr, "temctl account: the proof is not JSON: %s (line %d)\n", je.text, je.line);
        goto out;
    }
    fail_info f = {"", ""};
    bool ok = verify(doc, &g, pub, &f, steps) == 0;
    if (ctl_flag(&o, "json")) {
        json_t *j = json_pack("{s:b, s:O?, s:O?, s:O?, s:O}", "verified", ok, "key", json_object_get(doc, "key"), "height",
                              json_object_get(doc, "height"), "present", json_object_get(doc, "present"), "steps", steps);
        if (j && ok) json_object_set(j, "record", json_object_get(doc, "record"));
        if (j && !ok) {
            json_object_set_new(j, "failed_step", json_string(f.step));
            json_object_set_new(j, "reason", json_string(f.why));
        }
        if (j) ctl_print_json(j);
    } else {
        print_human(steps, doc, &f, ok);
    }
    fflush(stdout); /* the steps first, then the verdict, also when both go to one pipe */
    if (!ok) fprintf(stderr, "temctl account: proof refused at step %s: %s\n", f.step, f.why);
    st = ok ? CTL_OK : CTL_INVALID;
out:
    json_decref(doc);
    json_decref(steps);
    tem_free(buf);
    ledger_genesis_free(&g);
    return st;
}

int ctl_account_main(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--prove")) return prove_main(argc, argv);
    return ctl_node_main(argc, argv);
}
