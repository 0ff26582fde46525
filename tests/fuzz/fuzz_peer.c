/* fuzz_peer.c: libFuzzer target for the peer port: the real transport (net/net.c, net/hs.c)
 * listening on 127.0.0.1 as validator 0 of a 4-validator genesis, driven through its libuv
 * loop; the fuzzer is the remote end of one TCP connection per input.
 *
 * Input byte 0 % 5 picks who the remote end is:
 *   0: a stranger: the rest is written raw from the first byte (handshake messages, frame
 *      headers, anything). The same bytes are also fed to the handshake state machine directly
 *      (as M1 to a responder, as M2 to an initiator). Nothing may authenticate.
 *   1: validator 1..3 (byte 0 / 5 % 3 picks), 2: a listed observer, 3: an unlisted key. The
 *      harness runs the real initiator handshake with that key; byte 1 (if non-zero) flips bits of M1 or M3 (byte 2
 *      picks which byte). Then the rest is chunks: u8 kind | u8 len_hi | u8 len_lo | bytes;
 *      an even kind is sealed as a frame in the session, an odd kind is written raw.
 *   4: the other direction: a second transport (validator 1 of another genesis) dials the
 *      fuzzer, which answers raw bytes or a real responder handshake, tampered or not, then
 *      chunks (fuzz_dialled below).
 * Oracle: a session comes up only for an untampered handshake by a validator or a listed
 * observer; the frame callback sees exactly the sealed frames sent before the first raw byte
 * or the first frame over frame_bytes_max, in order; the transport closes the connection by
 * itself once the input ends (nothing hangs) and reports peer_down once per session. */
#include "net/net.h"
#include "tests/ledger_fixture.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FRAME_MAX 2048
#define FRAMES_MAX 4096
#define OBS_KEY_ID 100
#define STRANGER_KEY_ID 101

static ledger_genesis G;
static uv_loop_t LOOP;
static net *N;
static uint16_t PORT;
static uint8_t OBS_PUB[1][32];
/* the dialling side: N2 is validator 1 of G2, whose validator 0 is our listener LFD */
static ledger_genesis G2;
static net *N2;
static int LFD = -1;

/* what the transport reported for the current input */
static uint32_t UPS, DOWNS, FRAMES;
static int DOWN_REASON;
static uint8_t *GOT[FRAMES_MAX];
static size_t GOT_LEN[FRAMES_MAX];

static void on_up(void *ctx, const net_peer_info *p) {
    (void)ctx;
    (void)p;
    UPS++;
}
static void on_down(void *ctx, const net_peer_info *p, int reason) {
    (void)ctx;
    (void)p;
    DOWNS++;
    DOWN_REASON = reason;
}
static void on_frame(void *ctx, const net_peer_info *p, const uint8_t *d, size_t len) {
    (void)ctx;
    (void)p;
    TEM_ASSERT(FRAMES < FRAMES_MAX);
    GOT[FRAMES] = tem_malloc(len ? len : 1);
    TEM_ASSERT(GOT[FRAMES]);
    memcpy(GOT[FRAMES], d, len);
    GOT_LEN[FRAMES++] = len;
}
static void on_log(void *ctx, int level, const char *msg) {
    (void)ctx;
    (void)level;
    (void)msg;
}

static void setup(void) {
    fx_genesis(&G, 4);
    TEM_ASSERT(uv_loop_init(&LOOP) == 0);
    uint8_t sec[64];
    fx_vkey(OBS_KEY_ID, sec, OBS_PUB[0]);
    net_config c;
    memset(&c, 0, sizeof c);
    c.genesis = &G;
    fx_vkey(0, c.sec, sec); /* sec is scratch here: the public half */
    c.listen = "127.0.0.1:0";
    c.observer_keys = (const uint8_t(*)[32])OBS_PUB;
    c.n_observer_keys = 1;
    c.frame_bytes_max = FRAME_MAX;
    /* A loaded machine must not turn a slow harness into a refused handshake: the oracle
     * expects every untampered one to succeed. */
    c.handshake_timeout_ms = 60000;
    c.log_level = NET_LOG_DEBUG;
    net_callbacks cb = {.peer_up = on_up, .peer_down = on_down, .frame = on_frame, .log = on_log};
    TEM_ASSERT(net_new(&LOOP, &c, &cb, &N) == NET_OK);
    TEM_ASSERT(net_start(N) == NET_OK);
    PORT = net_listen_port(N);
    TEM_ASSERT(PORT != 0);

    LFD = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    TEM_ASSERT(LFD >= 0 && bind(LFD, (struct sockaddr *)&a, sizeof a) == 0 && listen(LFD, 16) == 0);
    TEM_ASSERT(getsockname(LFD, (struct sockaddr *)&a, &al) == 0);
    char *gj = fx_genesis_json(4, NULL), want[32], addr[32];
    snprintf(want, sizeof want, "\"127.0.0.1:7000\"");
    snprintf(addr, sizeof addr, "\"127.0.0.1:%u\"", ntohs(a.sin_port));
    char *at = strstr(gj, want);
    TEM_ASSERT(at && strlen(addr) <= strlen(want) + 1);
    size_t gl = strlen(gj) + 8;
    char *g2 = tem_malloc(gl);
    TEM_ASSERT(g2);
    snprintf(g2, gl, "%.*s%s%s", (int)(at - gj), gj, addr, at + strlen(want));
    TEM_ASSERT(ledger_genesis_parse(g2, strlen(g2), &G2, NULL, 0) == LEDGER_OK);
    tem_free(gj);
    tem_free(g2);
    net_config c2;
    memset(&c2, 0, sizeof c2);
    c2.genesis = &G2;
    fx_vkey(1, c2.sec, sec);
    c2.frame_bytes_max = FRAME_MAX;
    c2.handshake_timeout_ms = 60000;
    c2.backoff_min_ms = 1; /* redial at once: the next input waits for it */
    c2.backoff_max_ms = 2;
    c2.tick_ms = 1;
    TEM_ASSERT(net_new(&LOOP, &c2, &cb, &N2) == NET_OK);
    TEM_ASSERT(net_start(N2) == NET_OK);
}

/* ------------------------------------------------------------------ the remote end */
typedef struct {
    int fd;
    bool eof, broken; /* the transport closed its end; our writes fail */
    uint8_t *rx;
    size_t rx_len, rx_cap;
} remote;

static uint64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* One turn of the loop, then whatever the transport sent us. */
static void pump(remote *r) {
    uv_run(&LOOP, UV_RUN_NOWAIT);
    while (!r->eof) {
        if (r->rx_cap - r->rx_len < 4096) {
            r->rx_cap = r->rx_cap ? r->rx_cap * 2 : 8192;
            r->rx = tem_realloc(r->rx, r->rx_cap);
            TEM_ASSERT(r->rx);
        }
        ssize_t k = read(r->fd, r->rx + r->rx_len, r->rx_cap - r->rx_len);
        if (k > 0) {
            r->rx_len += (size_t)k;
            continue;
        }
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (k < 0 && errno == EINTR) continue;
        r->eof = true; /* 0 (FIN) or ECONNRESET */
    }
}

static void send_all(remote *r, const uint8_t *p, size_t n) {
    uint64_t deadline = mono_ms() + 10000;
    while (n > 0 && !r->broken) {
        ssize_t k = send(r->fd, p, n, MSG_NOSIGNAL);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
            continue;
        }
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            pump(r);
            TEM_ASSERT(mono_ms() < deadline); /* the transport stopped reading: a hang */
            continue;
        }
        r->broken = true; /* EPIPE / ECONNRESET: the transport closed us, as it may */
    }
}

static void send_frame(remote *r, const uint8_t *p, size_t n) {
    uint8_t f[4 + NET_HS_MSG_MAX];
    TEM_ASSERT(n <= NET_HS_MSG_MAX);
    tem_put_u32be(f, (uint32_t)n);
    memcpy(f + 4, p, n);
    send_all(r, f, 4 + n);
}

/* Waits for one whole frame from the transport: true with it in (*msg, *len) (valid until the
 * next pump), false if the connection ended first. */
static bool recv_frame(remote *r, size_t *off, const uint8_t **msg, size_t *len) {
    uint64_t deadline = mono_ms() + 10000;
    for (;;) {
        size_t have = r->rx_len - *off;
        if (have >= 4) {
            uint32_t fl = tem_get_u32be(r->rx + *off);
            if (have >= 4 + (size_t)fl) {
                *msg = r->rx + *off + 4;
                *len = fl;
                *off += 4 + (size_t)fl;
                return true;
            }
        }
        if (r->eof) return false;
        pump(r);
        TEM_ASSERT(mono_ms() < deadline);
    }
}

static void remote_open(remote *r) {
    memset(r, 0, sizeof *r);
    r->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    TEM_ASSERT(r->fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(PORT)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    TEM_ASSERT(connect(r->fd, (struct sockaddr *)&a, sizeof a) == 0);
    TEM_ASSERT(fcntl(r->fd, F_SETFL, O_NONBLOCK) == 0);
    int one = 1; /* no Nagle wait for the ACK of a previous small write */
    TEM_ASSERT(setsockopt(r->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0);
}

/* Ends our side and waits until the transport has closed its end: it must, on its own. */
static void remote_finish(remote *r) {
    shutdown(r->fd, SHUT_WR);
    uint64_t deadline = mono_ms() + 10000;
    while (!r->eof) {
        pump(r);
        TEM_ASSERT(mono_ms() < deadline);
    }
    close(r->fd);
    for (int i = 0; i < 4; i++) uv_run(&LOOP, UV_RUN_NOWAIT); /* the close callbacks */
    tem_free(r->rx);
}

/* ------------------------------------------------------------------ the handshake alone */
static void hs_direct(const uint8_t *d, size_t n) {
    uint8_t vsec[64], vpub[32];
    fx_vkey(0, vsec, vpub);
    net_hs hs;
    /* as M1 (then M3) to a responder */
    TEM_ASSERT(net_hs_init(&hs, NET_HS_RESPONDER, &G, vsec, NULL, false) == NET_OK);
    int rc = net_hs_read(&hs, d, n);
    if (rc == NET_OK) {
        uint8_t m2[NET_HS_MSG_MAX];
        size_t l2;
        TEM_ASSERT(net_hs_write(&hs, m2, sizeof m2, &l2) == NET_OK && l2 == NET_HS_M2_BYTES);
        TEM_ASSERT(net_hs_read(&hs, d, n) != NET_OK); /* the same bytes as M3: nobody signed them */
    }
    TEM_ASSERT(!net_hs_done(&hs));
    net_hs_wipe(&hs);
    /* as M2 to an initiator that sent its M1 */
    uint8_t isec[64], ipub[32], m1[NET_HS_MSG_MAX];
    size_t l1;
    fx_vkey(1, isec, ipub);
    TEM_ASSERT(net_hs_init(&hs, NET_HS_INITIATOR, &G, isec, vpub, false) == NET_OK);
    TEM_ASSERT(net_hs_write(&hs, m1, sizeof m1, &l1) == NET_OK);
    TEM_ASSERT(net_hs_read(&hs, d, n) != NET_OK);
    TEM_ASSERT(!net_hs_done(&hs) && hs.step == -1);
    net_hs_wipe(&hs);
}

/* ------------------------------------------------------------------ after the handshake */
/* Sends data[pos..size) as chunks u8 kind | u16be len | bytes: an even kind sealed in sess, an
 * odd one raw. Notes in want[] the frames the transport must deliver: the sealed ones before the
 * first raw byte or the first frame over FRAME_MAX. Returns how many. */
static uint32_t send_chunks(remote *r, net_session *sess, const uint8_t *data, size_t pos, size_t size,
                            const uint8_t **want, size_t *want_len) {
    uint32_t n = 0;
    bool spoiled = false;
    uint8_t *wire = tem_malloc(NET_FRAME_HEADER_BYTES + 65536 + NET_AEAD_TAG_BYTES);
    TEM_ASSERT(wire);
    while (pos < size) {
        uint8_t kind = data[pos];
        size_t len = pos + 2 < size ? ((size_t)data[pos + 1] << 8 | data[pos + 2]) : 0;
        pos = pos + 3 < size ? pos + 3 : size;
        if (len > size - pos) len = size - pos;
        const uint8_t *p = data + pos;
        pos += len;
        if (kind & 1) {
            send_all(r, p, len);
            if (len) spoiled = true;
            continue;
        }
        TEM_ASSERT(net_session_seal(sess, p, len, wire) == NET_OK);
        send_all(r, wire, NET_FRAME_HEADER_BYTES + len + NET_AEAD_TAG_BYTES);
        if (len > FRAME_MAX) spoiled = true;
        if (!spoiled && n < FRAMES_MAX) {
            want[n] = p;
            want_len[n++] = len;
        }
    }
    tem_free(wire);
    return n;
}

/* Checks what the transport reported against what it should have. */
static void check_outcome(bool up, uint32_t want_frames, const uint8_t **want, const size_t *want_len) {
    TEM_ASSERT(UPS == (up ? 1u : 0u));
    TEM_ASSERT(DOWNS == UPS);
    if (up) TEM_ASSERT(DOWN_REASON != NET_OK);
    TEM_ASSERT(FRAMES == (up ? want_frames : 0));
    for (uint32_t i = 0; i < FRAMES; i++) {
        TEM_ASSERT(GOT_LEN[i] == want_len[i] && memcmp(GOT[i], want[i], want_len[i]) == 0);
        tem_free(GOT[i]);
    }
}

/* ------------------------------------------------------------------ the transport dials us */
/* N2 (validator 1 of G2) dials validator 0 of G2, whose address is our listener LFD: the fuzzer
 * is the responder. Byte 1 odd: the rest is written raw as soon as the connection is there.
 * Byte 1 even: a real responder handshake as validator 0, byte 2 (if non-zero) flips bits of
 * M2 or of the admission frame (byte 3 picks which byte), then chunks as above. */
static void fuzz_dialled(const uint8_t *data, size_t size) {
    remote r;
    memset(&r, 0, sizeof r);
    uint64_t deadline = mono_ms() + 10000;
    while ((r.fd = accept4(LFD, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) < 0) {
        TEM_ASSERT(errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
        uv_run(&LOOP, UV_RUN_NOWAIT);
        TEM_ASSERT(mono_ms() < deadline); /* the transport stopped redialling */
    }
    int one = 1;
    TEM_ASSERT(setsockopt(r.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0);
    uint8_t mode = size > 1 ? data[1] : 0;
    if (mode & 1) {
        send_all(&r, data + 2 < data + size ? data + 2 : data + size, size > 2 ? size - 2 : 0);
        remote_finish(&r);
        check_outcome(false, 0, NULL, NULL);
        return;
    }
    uint8_t tamper = size > 2 ? data[2] : 0, where = size > 3 ? data[3] : 0;
    size_t pos = size < 4 ? size : 4;
    uint8_t vsec[64], vpub[32], msg[NET_HS_MSG_MAX];
    fx_vkey(0, vsec, vpub);
    net_hs hs;
    TEM_ASSERT(net_hs_init(&hs, NET_HS_RESPONDER, &G2, vsec, NULL, false) == NET_OK);
    size_t off = 0, ml, inl;
    const uint8_t *in;
    net_session sess;
    memset(&sess, 0, sizeof sess);
    bool sent_ack = false;
    if (recv_frame(&r, &off, &in, &inl)) { /* M1; none if the transport gave up on this dial */
        TEM_ASSERT(net_hs_read(&hs, in, inl) == NET_OK); /* an honest initiator */
        TEM_ASSERT(net_hs_write(&hs, msg, sizeof msg, &ml) == NET_OK);
        if (tamper && (where & 1) == 0) msg[(where >> 1) % ml] ^= tamper;
        send_frame(&r, msg, ml);
        if (recv_frame(&r, &off, &in, &inl)) {
            TEM_ASSERT(!tamper || (where & 1) == 1); /* a tampered M2 must be refused */
            TEM_ASSERT(net_hs_read(&hs, in, inl) == NET_OK);
            TEM_ASSERT(net_hs_split(&hs, &sess) == NET_OK);
            uint8_t ack[NET_FRAME_HEADER_BYTES + NET_AEAD_TAG_BYTES];
            TEM_ASSERT(net_session_seal(&sess, NULL, 0, ack) == NET_OK);
            if (tamper) ack[(where >> 1) % sizeof ack] ^= tamper;
            send_all(&r, ack, sizeof ack);
            sent_ack = true;
        }
    }
    net_hs_wipe(&hs);
    const uint8_t *want[FRAMES_MAX];
    size_t want_len[FRAMES_MAX];
    uint32_t nw = sent_ack ? send_chunks(&r, &sess, data, pos, size, want, want_len) : 0;
    remote_finish(&r);
    sodium_memzero(&sess, sizeof sess);
    check_outcome(sent_ack && tamper == 0, nw, want, want_len);
}

/* ------------------------------------------------------------------ one input */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    if (!ready) {
        setup();
        ready = 1;
    }
    if (size < 1) return 0;
    UPS = DOWNS = FRAMES = 0;
    DOWN_REASON = 0;
    int who = data[0] % 5;
    if (who == 4) {
        fuzz_dialled(data, size);
        return 0;
    }
    remote r;
    remote_open(&r);
    if (who == 0) {
        hs_direct(data + 1, size - 1);
        send_all(&r, data + 1, size - 1);
        remote_finish(&r);
        check_outcome(false, 0, NULL, NULL);
        return 0;
    }

    uint32_t key_id = who == 1 ? 1 + data[0] / 5 % 3 : who == 2 ? OBS_KEY_ID : STRANGER_KEY_ID;
    uint8_t tamper = size > 1 ? data[1] : 0, where = size > 2 ? data[2] : 0;
    size_t pos = size < 3 ? size : 3;
    bool admitted = who != 3 && tamper == 0;

    uint8_t sec[64], pub[32], vsec[64], vpub[32], msg[NET_HS_MSG_MAX];
    fx_vkey(key_id, sec, pub);
    fx_vkey(0, vsec, vpub);
    net_hs hs;
    TEM_ASSERT(net_hs_init(&hs, NET_HS_INITIATOR, &G, sec, vpub, false) == NET_OK);
    size_t ml, off = 0;
    TEM_ASSERT(net_hs_write(&hs, msg, sizeof msg, &ml) == NET_OK);
    if (tamper && (where & 1) == 0) msg[(where >> 1) % ml] ^= tamper;
    send_frame(&r, msg, ml);
    const uint8_t *in;
    size_t inl;
    bool up = false;
    net_session sess;
    memset(&sess, 0, sizeof sess);
    if (recv_frame(&r, &off, &in, &inl) && net_hs_read(&hs, in, inl) == NET_OK) {
        TEM_ASSERT(net_hs_write(&hs, msg, sizeof msg, &ml) == NET_OK);
        if (tamper && (where & 1) == 1) msg[(where >> 1) % ml] ^= tamper;
        send_frame(&r, msg, ml);
        TEM_ASSERT(net_hs_split(&hs, &sess) == NET_OK);
        uint8_t ack[NET_AEAD_TAG_BYTES];
        if (recv_frame(&r, &off, &in, &inl)) {
            /* the responder's admission: one sealed empty frame */
            TEM_ASSERT(inl == NET_AEAD_TAG_BYTES);
            memcpy(ack, in, inl);
            TEM_ASSERT(net_session_open(&sess, ack, inl, ack) == NET_OK);
            up = true;
        }
    } else {
        /* only a tampered M1 can make our own handshake fail: the transport is a validator */
        TEM_ASSERT(tamper && (where & 1) == 0);
    }
    net_hs_wipe(&hs);
    TEM_ASSERT(up == admitted);

    const uint8_t *want[FRAMES_MAX];
    size_t want_len[FRAMES_MAX];
    uint32_t nw = up ? send_chunks(&r, &sess, data, pos, size, want, want_len) : 0;
    remote_finish(&r);
    sodium_memzero(&sess, sizeof sess);
    check_outcome(up, nw, want, want_len);
    return 0;
}
