/* fuzz_mempool_log.c: libFuzzer target for mempool-log recovery (node_mempool_recover) over
 * damaged log files.
 *
 * Input byte 0 picks the mode:
 *   even: structured. A valid log of 1..12 records of known signed txs (byte 1: count; then one
 *         byte per record: which tx, repeats allowed), then the file is cut (2 bytes: bytes to
 *         drop from the end) and mutated (3 bytes each: u16le offset, xor). The oracle knows
 *         which records are still byte-for-byte intact: every tx with an intact copy must come
 *         back PENDING (an acknowledged, intact record is never lost), no tx without one may
 *         (a damaged record is never taken for a good one), and a damaged header refuses the
 *         whole log with ECORRUPT.
 *   odd:  raw. The rest of the input follows a valid header (byte 1 bit 0 clear) or is the whole
 *         file: recovery must not crash and must return a documented code.
 * In both modes a successful recovery rewrites the log, and recovering that rewrite again must
 * bring back the same txs with nothing damaged or torn. */
#include "node/mempool.h"
#include "tests/fuzz/fuzz_tmp.h"
#include "tests/ledger_fixture.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define NTX 24
#define RECS_MAX 12

static ledger_genesis G;
static ledger_store *S;
static uv_loop_t LOOP;
static char LOG[256];
static uint8_t *TX[NTX];
static size_t TXLEN[NTX];
static uint8_t TXID[NTX][32];

static uint32_t u16le(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }

static uint32_t rec_check(const uint8_t *rec, size_t body_len) {
    uint8_t h[32];
    ledger_sha256(h, rec, body_len);
    return tem_get_u32le(h);
}

static void setup(void) {
    const char *dir = fuzz_tmpdir("tem-fuzz-mplog");
    char store[192];
    snprintf(store, sizeof store, "%s/store", dir);
    snprintf(LOG, sizeof LOG, "%s/mempool.log", dir);
    TEM_ASSERT(mkdir(store, 0700) == 0);
    /* Small tx limits: recovery's read buffer is sized by them, and a 4 MiB buffer per run
     * (the default admin limit) would cost more than the recovery itself. */
    char *gj = fx_genesis_json(4, "\"limits\":{\"max_tx_bytes\":1024,\"max_admin_tx_bytes\":2048}");
    TEM_ASSERT(ledger_genesis_parse(gj, strlen(gj), &G, NULL, 0) == LEDGER_OK);
    tem_free(gj);
    TEM_ASSERT(ledger_store_open(store, &G, NULL, NULL, &S) == LEDGER_OK);
    TEM_ASSERT(uv_loop_init(&LOOP) == 0);
    /* Distinct (signer, nonce) pairs, so recovery has no reason to drop an intact one. */
    for (uint32_t i = 0; i < NTX; i++) {
        TX[i] = fx_transfer(G.chain_id, 2 + i % 8, 1, i / 8, 1 + i, &TXLEN[i]);
        ledger_tx t;
        ledger_tx_limits lim;
        ledger_tx_limits_from_genesis(&G, &lim);
        TEM_ASSERT(ledger_tx_decode(TX[i], TXLEN[i], &lim, &t) == LEDGER_OK);
        memcpy(TXID[i], t.txid, 32);
        ledger_tx_free(&t);
    }
}

static void write_file(const uint8_t *b, size_t n) {
    int fd = open(LOG, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    TEM_ASSERT(fd >= 0);
    TEM_ASSERT(write(fd, b, n) == (ssize_t)n);
    TEM_ASSERT(close(fd) == 0);
}

static node_mempool *mp_new(void) {
    node_mempool_config c = {0};
    c.log_path = LOG;
    c.txs_max = 64;
    c.nonce_window = 16;
    c.per_signer_max = 16;
    c.genesis = &G;
    node_mempool *m = NULL;
    TEM_ASSERT(node_mempool_new(&LOOP, &c, S, &m) == NODE_MEMPOOL_OK);
    return m;
}

static void mp_free(node_mempool *m) {
    node_mempool_close(m);
    for (int i = 0; i < 1000 && !node_mempool_is_closed(m); i++) uv_run(&LOOP, UV_RUN_NOWAIT);
    TEM_ASSERT(node_mempool_is_closed(m));
    node_mempool_free(m);
}

/* Recovers the rewritten log once more: the same txs, nothing damaged or torn. */
static void check_rewrite(const bool *pending, uint32_t recovered) {
    node_mempool *m = mp_new();
    uint32_t again = 0;
    TEM_ASSERT(node_mempool_recover(m, &again) == NODE_MEMPOOL_OK);
    node_mempool_stats st;
    node_mempool_get_stats(m, &st);
    TEM_ASSERT(again == recovered);
    TEM_ASSERT(st.recover_damaged == 0 && st.recover_torn_bytes == 0 && st.recover_dropped == 0);
    for (uint32_t i = 0; i < NTX; i++)
        TEM_ASSERT((node_mempool_status(m, TXID[i]) == NODE_MEMPOOL_STATUS_PENDING) == pending[i]);
    mp_free(m);
}

static void fuzz_structured(const uint8_t *d, size_t n) {
    if (n < 2) return;
    uint32_t nrec = 1 + d[1] % RECS_MAX;
    if (n < 2 + (size_t)nrec + 2) return;
    const uint8_t *pick = d + 2;
    uint32_t cut = u16le(d + 2 + nrec);
    const uint8_t *mut = d + 4 + nrec;
    size_t nmut = (n - 4 - nrec) / 3;

    size_t cap = NODE_MEMPOOL_LOG_HEADER_BYTES;
    for (uint32_t r = 0; r < nrec; r++) cap += NODE_MEMPOOL_REC_OVERHEAD_BYTES + TXLEN[pick[r] % NTX];
    uint8_t *orig = tem_malloc(cap), *file = tem_malloc(cap);
    size_t *at = tem_malloc(nrec * sizeof *at);
    TEM_ASSERT(orig && file && at);
    memcpy(orig, NODE_MEMPOOL_LOG_MAGIC, 8);
    memcpy(orig + 8, G.hash, 32);
    size_t len = NODE_MEMPOOL_LOG_HEADER_BYTES;
    for (uint32_t r = 0; r < nrec; r++) {
        uint32_t t = pick[r] % NTX;
        at[r] = len;
        tem_put_u32le(orig + len, (uint32_t)TXLEN[t] + 1);
        orig[len + 4] = NODE_MEMPOOL_REC_TX;
        memcpy(orig + len + 5, TX[t], TXLEN[t]);
        tem_put_u32le(orig + len + 5 + TXLEN[t], rec_check(orig + len, 5 + TXLEN[t]));
        len += NODE_MEMPOOL_REC_OVERHEAD_BYTES + TXLEN[t];
    }
    TEM_ASSERT(len == cap);
    memcpy(file, orig, len);
    size_t flen = len - cut % (len + 1);
    for (size_t k = 0; k < nmut && flen > 0; k++) file[u16le(mut + 3 * k) % flen] ^= mut[3 * k + 2];
    write_file(file, flen);

    bool header_ok = flen >= NODE_MEMPOOL_LOG_HEADER_BYTES && memcmp(file, orig, NODE_MEMPOOL_LOG_HEADER_BYTES) == 0;
    bool want[NTX] = {0};
    uint32_t nwant = 0;
    for (uint32_t r = 0; r < nrec && header_ok; r++) {
        uint32_t t = pick[r] % NTX;
        size_t end = at[r] + NODE_MEMPOOL_REC_OVERHEAD_BYTES + TXLEN[t];
        if (end <= flen && memcmp(file + at[r], orig + at[r], end - at[r]) == 0 && !want[t]) {
            want[t] = true;
            nwant++;
        }
    }

    node_mempool *m = mp_new();
    uint32_t recovered = 0;
    int rc = node_mempool_recover(m, &recovered);
    if (!header_ok) {
        /* a header cut short or changed: the file is not this chain's log (or not a log) */
        TEM_ASSERT(rc == NODE_MEMPOOL_ECORRUPT);
        mp_free(m);
        struct stat sb;
        TEM_ASSERT(stat(LOG, &sb) == 0 && (size_t)sb.st_size == flen); /* left as it was */
    } else {
        TEM_ASSERT(rc == NODE_MEMPOOL_OK);
        TEM_ASSERT(recovered == nwant);
        for (uint32_t i = 0; i < NTX; i++)
            TEM_ASSERT((node_mempool_status(m, TXID[i]) == NODE_MEMPOOL_STATUS_PENDING) == want[i]);
        mp_free(m);
        check_rewrite(want, nwant);
    }
    tem_free(orig);
    tem_free(file);
    tem_free(at);
}

static void fuzz_raw(const uint8_t *d, size_t n) {
    if (n < 2) return;
    bool with_header = (d[1] & 1) == 0;
    size_t flen = (with_header ? NODE_MEMPOOL_LOG_HEADER_BYTES : 0) + n - 2;
    uint8_t *file = tem_malloc(flen ? flen : 1);
    TEM_ASSERT(file);
    size_t k = 0;
    if (with_header) {
        memcpy(file, NODE_MEMPOOL_LOG_MAGIC, 8);
        memcpy(file + 8, G.hash, 32);
        k = NODE_MEMPOOL_LOG_HEADER_BYTES;
    }
    memcpy(file + k, d + 2, n - 2);
    write_file(file, flen);
    tem_free(file);

    node_mempool *m = mp_new();
    uint32_t recovered = 0;
    int rc = node_mempool_recover(m, &recovered);
    TEM_ASSERT(rc == NODE_MEMPOOL_OK || rc == NODE_MEMPOOL_ECORRUPT || rc == NODE_MEMPOOL_EFULL);
    if (with_header) TEM_ASSERT(rc != NODE_MEMPOOL_ECORRUPT);
    bool pending[NTX];
    uint32_t known = 0;
    for (uint32_t i = 0; i < NTX; i++) known += pending[i] = node_mempool_status(m, TXID[i]) == NODE_MEMPOOL_STATUS_PENDING;
    node_mempool_stats st;
    node_mempool_get_stats(m, &st);
    mp_free(m);
    if (rc != NODE_MEMPOOL_OK) return;
    TEM_ASSERT(known <= recovered && st.recovered == recovered);
    /* The only valid signed txs the fuzzer can hold are the fixture's (it cannot sign). */
    TEM_ASSERT(known == recovered);
    check_rewrite(pending, recovered);
}

/* FUZZ_MEMPOOL_RAW_SEEDS=DIR: writes raw-mode seeds holding valid records (the fuzzer cannot
 * make one: each carries a SHA-256 check), as tests/fuzz/corpus/fuzz_mempool_log/raw-* were. */
static void write_raw_seeds(const char *dir) {
    static const uint8_t picks[][4] = {{0, 1, 2, 3}, {5, 5, 6, 7}, {8, 9, 17, 16}};
    for (size_t k = 0; k < sizeof picks / sizeof picks[0]; k++) {
        uint8_t buf[2 + 4 * 1100];
        size_t n = 0;
        buf[n++] = 1; /* raw */
        buf[n++] = 0; /* after a valid header */
        for (int j = 0; j < 4; j++) {
            uint32_t t = picks[k][j];
            tem_put_u32le(buf + n, (uint32_t)TXLEN[t] + 1);
            buf[n + 4] = NODE_MEMPOOL_REC_TX;
            memcpy(buf + n + 5, TX[t], TXLEN[t]);
            tem_put_u32le(buf + n + 5 + TXLEN[t], rec_check(buf + n, 5 + TXLEN[t]));
            n += NODE_MEMPOOL_REC_OVERHEAD_BYTES + TXLEN[t];
        }
        char path[512];
        snprintf(path, sizeof path, "%s/raw-records-%zu", dir, k);
        FILE *f = fopen(path, "wb");
        TEM_ASSERT(f && fwrite(buf, 1, n, f) == n && fclose(f) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    if (!ready) {
        setup();
        if (getenv("FUZZ_MEMPOOL_RAW_SEEDS")) write_raw_seeds(getenv("FUZZ_MEMPOOL_RAW_SEEDS"));
        ready = 1;
    }
    if (size < 1) return 0;
    if (data[0] & 1) fuzz_raw(data, size);
    else fuzz_structured(data, size);
    return 0;
}
