/* net.h: the peer transport between validators (and observers): libuv TCP, length-prefixed
 * frames, a mutually authenticated handshake with the genesis Ed25519 keys, an AEAD on every
 * frame after it, reconnect with capped exponential backoff and per-peer rate limits.
 * docs/net.md describes the wire format and the handshake byte by byte.
 *
 * Frames are opaque bytes here; the node puts its protobuf messages inside. Everything runs on
 * one uv_loop_t owned by the caller; no function may be called from another thread.
 *
 * Errors are `enum net_err` values (0 = NET_OK, -4xx otherwise); net_strerror() names them.
 * Unless a comment says otherwise, out-parameters are written only on NET_OK. */
#ifndef NET_H
#define NET_H

#include <uv.h>

#include "ledger/ledger.h"

/* ------------------------------------------------------------------ errors */
#define NET_ERRNO_MAP(X)                                                                           \
    X(ENOMEM, -401, "out of memory")                                                               \
    X(EINVAL, -402, "invalid argument or configuration")                                           \
    X(EADDR, -403, "malformed host:port address")                                                  \
    X(EUV, -404, "libuv call failed (the log names the libuv error)")                              \
    X(ETOOBIG, -405, "frame larger than the configured maximum")                                   \
    X(EFRAME, -406, "malformed frame")                                                             \
    X(EVERSION, -407, "wrong protocol magic or version")                                           \
    X(EAUTH, -408, "handshake authentication failed")                                              \
    X(EUNKNOWN, -409, "peer key is not a genesis validator")                                       \
    X(EOBSERVER, -410, "observers are not accepted by this node")                                  \
    X(EDECRYPT, -411, "frame failed authentication (tampered, replayed or reordered)")             \
    X(ERATE, -412, "peer exceeded its rate limit")                                                 \
    X(ENOTCONN, -413, "peer is not connected")                                                     \
    X(EFULL, -414, "send queue is full")                                                           \
    X(ETIMEOUT, -415, "timed out")                                                                 \
    X(EEOF, -416, "connection closed by the remote end")                                           \
    X(ECRYPTO, -417, "crypto library failure")                                                     \
    X(ECLOSING, -418, "shutting down")                                                             \
    X(EREPLACED, -419, "replaced by a newer connection from the same peer")                        \
    X(ESELF, -420, "connected to our own key")                                                     \
    X(EGONE, -421, "HTTP request is gone (client left or server closed)")                          \
    X(ETLS, -422, "TLS setup failed")                                                              \
    X(ELIMIT, -423, "too many connections")                                                        \
    X(ESTATE, -424, "call not valid in the current state")

enum net_err {
    NET_OK = 0,
#define NET_X(name, val, msg) NET_##name = val,
    NET_ERRNO_MAP(NET_X)
#undef NET_X
};

/* Static string describing `err` (net codes; anything else gives "unknown net error"). */
const char *net_strerror(int err);
/* Short symbolic name, e.g. "EDECRYPT", for logs and JSON error codes. */
const char *net_errname(int err);

/* ------------------------------------------------------------------ logging */
enum { NET_LOG_DEBUG = 0, NET_LOG_INFO = 1, NET_LOG_WARN = 2, NET_LOG_ERROR = 3 };
/* One line per event, without a trailing newline; `msg` is valid during the call only. */
typedef void (*net_log_fn)(void *ctx, int level, const char *msg);
/* Name of a level ("debug", "info", "warn", "error"). */
const char *net_log_level_name(int level);

/* ------------------------------------------------------------------ framing
 * Every frame on the wire is u32 big-endian length || payload. During the handshake the payload
 * is a handshake message (at most NET_HS_MSG_MAX bytes); after it, the payload is an AEAD
 * ciphertext: plaintext || 16-byte tag. */
#define NET_FRAME_HEADER_BYTES 4
#define NET_AEAD_TAG_BYTES 16
#define NET_HS_MSG_MAX 256
#define NET_FRAME_BYTES_MAX_DEFAULT (16u << 20)
#define NET_FRAME_BYTES_MAX_LIMIT (256u << 20) /* largest configurable frame_bytes_max */

/* ------------------------------------------------------------------ handshake (pure)
 * The handshake as a state machine without sockets, so tests (and docs/net.md) can drive it
 * byte by byte. Initiator: write M1, read M2, write M3. Responder: read M1, write M2, read M3.
 * Only the ephemeral key comes from the OS random source. */
#define NET_HS_M1_BYTES 37  /* "TEM1" magic(4) | version(1) | e_I(32) */
#define NET_HS_M2_BYTES 144 /* e_R(32) | AEAD(pk_R(32) | sig_R(64)) */
#define NET_HS_M3_BYTES 112 /* AEAD(pk_I(32) | sig_I(64)) */
#define NET_PROTOCOL_VERSION 1

enum { NET_HS_INITIATOR = 1, NET_HS_RESPONDER = 2 };

/* Directional session keys and frame counters (the AEAD nonces). */
typedef struct {
    uint8_t tx_key[32], rx_key[32];
    uint64_t tx_ctr, rx_ctr;
} net_session;

typedef struct {
    int role;
    int step; /* next message expected or due: 1, 2, 3; 4 = done; -1 = failed */
    const ledger_genesis *genesis;
    uint8_t my_sec[LEDGER_ED_SEC_BYTES];
    bool accept_observers;
    /* Responder: observer keys admitted even when accept_observers is false (borrowed; set
     * with net_hs_allow_observers). */
    const uint8_t (*allowed)[LEDGER_ED_PUB_BYTES];
    uint32_t n_allowed;
    bool has_expected;
    uint8_t expected_pk[LEDGER_ED_PUB_BYTES];
    uint8_t e_sk[32], e_pk[32], peer_e_pk[32];
    uint8_t dh[32];
    uint8_t h[32]; /* running transcript hash */
    /* Results, valid once step == 4. */
    uint8_t peer_pk[LEDGER_ED_PUB_BYTES];
    int peer_index; /* validator index, or -1 for an observer */
} net_hs;

/* Starts a handshake. `sec` is our libsodium Ed25519 secret key (copied; wiped by
 * net_hs_wipe). An initiator names the key it expects to reach in `expected` (NULL accepts
 * any genesis validator); a responder passes NULL. `accept_observers` lets a responder accept a
 * key that is not in the genesis. NET_OK, NET_EINVAL, NET_ECRYPTO. */
TEM_WUR int net_hs_init(net_hs *hs, int role, const ledger_genesis *g,
                        const uint8_t sec[LEDGER_ED_SEC_BYTES], const uint8_t *expected,
                        bool accept_observers);
/* Responder: admits these observer keys too (borrowed: must outlive the handshake). A key
 * that is neither a genesis validator nor listed is refused with NET_EUNKNOWN unless
 * accept_observers was given to net_hs_init. */
void net_hs_allow_observers(net_hs *hs, const uint8_t (*keys)[LEDGER_ED_PUB_BYTES], uint32_t n);
/* Writes our next message into out (cap >= its size). NET_OK, NET_ESTATE (not our turn),
 * NET_EINVAL (cap too small), NET_ECRYPTO. */
TEM_WUR int net_hs_write(net_hs *hs, uint8_t *out, size_t cap, size_t *len);
/* Reads the peer's next message. NET_OK, NET_ESTATE, NET_EFRAME (wrong length), NET_EVERSION,
 * NET_EAUTH (decryption or signature failed, weak ephemeral, wrong peer), NET_EUNKNOWN,
 * NET_EOBSERVER, NET_ESELF. Any error leaves the handshake failed (step -1). */
TEM_WUR int net_hs_read(net_hs *hs, const uint8_t *msg, size_t len);
/* True once both sides are authenticated (after our M3 write or the peer's M3 read). On the
 * wire the responder then sends one sealed empty frame (counter 0) to admit the initiator; the
 * initiator's session starts only when that frame opens (docs/net.md). */
bool net_hs_done(const net_hs *hs);
/* Derives the session keys of a finished handshake. NET_OK, NET_ESTATE. */
TEM_WUR int net_hs_split(const net_hs *hs, net_session *out);
/* Wipes every secret in hs. */
void net_hs_wipe(net_hs *hs);

/* Seals a frame: writes the 4-byte header and plaintext||tag into out (NET_FRAME_HEADER_BYTES
 * + len + NET_AEAD_TAG_BYTES bytes) and advances tx_ctr. NET_OK, NET_ETOOBIG (counter or
 * length exhausted). */
TEM_WUR int net_session_seal(net_session *s, const void *pt, size_t len, uint8_t *out);
/* Opens the payload of one frame (`ct`, `len` bytes, header already stripped) into pt
 * (len - 16 bytes; pt may equal ct) and advances rx_ctr. NET_OK, NET_EFRAME (shorter than a
 * tag), NET_EDECRYPT (tampered, replayed, reordered or from another session; rx_ctr unchanged). */
TEM_WUR int net_session_open(net_session *s, const uint8_t *ct, size_t len, uint8_t *pt);

/* ------------------------------------------------------------------ address helpers */
/* Splits "host:port" or "[v6]:port" into host (NUL-terminated) and port. NET_OK, NET_EADDR. */
TEM_WUR int net_addr_split(const char *addr, char *host, size_t host_cap, uint16_t *port);

/* ------------------------------------------------------------------ the transport */
/* Peer ids: a validator's index in the genesis (0 .. n_validators-1), or NET_OBSERVER_ID_BASE +
 * slot for an observer connected to us. */
#define NET_OBSERVER_ID_BASE 1000u
#define NET_OBSERVERS_MAX 256
#define NET_OBSERVER_KEYS_MAX 256
#define NET_PEER_ID_NONE UINT32_MAX

enum { NET_LIMIT_DROP = 0, NET_LIMIT_CLOSE = 1 };
/* Flags of net_broadcast. */
enum { NET_TO_VALIDATORS = 1, NET_TO_OBSERVERS = 2 };

typedef struct {
    uint32_t id;       /* see "Peer ids" */
    bool is_validator; /* false: a non-voting observer */
    bool outbound;     /* we dialled it */
    uint8_t pubkey[LEDGER_ED_PUB_BYTES];
    char remote[64];   /* ip:port of the other end */
} net_peer_info;

/* Callbacks run on the loop thread. `p` and `data` are valid during the call only. A callback
 * may call net_send, net_broadcast and net_close. Any of them may be NULL. */
typedef struct {
    void (*peer_up)(void *ctx, const net_peer_info *p);
    /* `reason` is the NET_E* code that closed the session (NET_EEOF, NET_EDECRYPT, ...). */
    void (*peer_down)(void *ctx, const net_peer_info *p, int reason);
    void (*frame)(void *ctx, const net_peer_info *p, const uint8_t *data, size_t len);
    net_log_fn log; /* NULL: lines go to stderr */
    void *ctx;
} net_callbacks;

typedef struct {
    const ledger_genesis *genesis; /* borrowed; must outlive the net */
    uint8_t sec[LEDGER_ED_SEC_BYTES]; /* our Ed25519 key (copied, wiped by net_free) */
    /* Our listener, "host:port" (numeric host; port 0 picks a free port), or NULL for none. */
    const char *listen;
    /* Observers: keys that are not genesis validators are refused (EUNKNOWN) unless listed in
     * observer_keys (copied) or accept_observers is set (any key; for open read-only nodes). */
    bool accept_observers;
    const uint8_t (*observer_keys)[LEDGER_ED_PUB_BYTES];
    uint32_t n_observer_keys; /* <= NET_OBSERVER_KEYS_MAX */
    /* Observers only: bit i set = dial validator i; 0 = every validator with an address. */
    uint64_t observer_dial_mask;
    uint32_t observers_max; /* observer slots, <= NET_OBSERVERS_MAX; 0 -> 16 */
    uint32_t conns_max; /* connections at once, handshaking ones included; 0 -> 256 */
    /* Inbound connections that have not finished the handshake: at most handshakes_max
     * (0 -> 32) in all and handshakes_per_addr_max (0 -> 4) from one IP address; more are
     * closed at once (ELIMIT). Authenticated sessions never count against these, so a flood
     * of half-open connections cannot keep a validator from its peers. */
    uint32_t handshakes_max;
    uint32_t handshakes_per_addr_max;
    /* New inbound handshakes a second from addresses that are no genesis validator's host:
     * handshakes_per_addr_per_s (0 -> 10) from one IP, handshakes_per_s (0 -> 100) in all,
     * each with a burst of one second's worth; more are closed at accept (ELIMIT) before any
     * key work. Why: each accepted handshake costs three curve operations on the loop thread,
     * and a stranger that connected, sent one fixed message and reset 12,000 times a second
     * took a core (found by an audit). */
    uint32_t handshakes_per_s;
    uint32_t handshakes_per_addr_per_s;
    uint32_t frame_bytes_max; /* largest plaintext payload; 0 -> NET_FRAME_BYTES_MAX_DEFAULT */
    uint64_t send_queue_bytes_max; /* per validator, bytes waiting in libuv; 0 -> 64 MiB */
    uint64_t observer_send_queue_bytes_max; /* per observer; 0 -> 16 MiB */
    /* Back-pressure: while a peer's send queue holds more than half its cap we stop reading
     * from it (so it cannot make us produce more); reading resumes below a quarter. A queue
     * that makes no progress for send_stall_timeout_ms (0 -> 20000) closes the connection
     * (ETIMEOUT): a peer that never reads is disconnected. */
    uint64_t send_stall_timeout_ms;
    /* A frame whose first bytes arrived must be complete within frame_timeout_ms (0 -> 30000),
     * else ETIMEOUT. Its buffer grows with the bytes received, never to the announced length
     * at once. */
    uint64_t frame_timeout_ms;
    /* Inbound limits per peer: token buckets refilled at these rates holding `rate_burst_ms`
     * worth of tokens. 0 = unlimited. Excess frames are dropped or close the connection. */
    uint64_t rate_bytes_per_s;
    uint64_t rate_msgs_per_s;
    uint64_t rate_burst_ms; /* 0 -> 1000 */
    int rate_policy;        /* NET_LIMIT_DROP or NET_LIMIT_CLOSE */
    uint64_t handshake_timeout_ms; /* connect + handshake; 0 -> 5000 */
    uint64_t backoff_min_ms;       /* first redial delay; 0 -> 100 */
    uint64_t backoff_max_ms;       /* cap; 0 -> 10000 */
    uint64_t tick_ms;              /* housekeeping period; 0 -> 25 */
    int log_level;                 /* lowest level logged; default NET_LOG_DEBUG (0) */
} net_config;

typedef struct {
    uint64_t handshakes_ok, handshakes_failed;
    uint64_t frames_in, frames_out, bytes_in, bytes_out;
    uint64_t frames_dropped_rate; /* dropped by NET_LIMIT_DROP */
    uint64_t closed_rate, closed_decrypt, closed_frame, closed_toobig, closed_auth;
    uint64_t dials, dial_failures;
    uint64_t refused_handshake_slots; /* inbound connections closed for lack of a handshake slot */
    uint64_t refused_handshake_rate;  /* ... for coming faster than handshakes_per_(addr_)per_s */
    uint64_t closed_stalled;          /* sessions closed because their send queue made no progress */
    uint64_t paused_reads;            /* times reading from a peer stopped for back-pressure */
    int last_close_reason; /* NET_E* of the most recent connection close, 0 if none */
} net_stats;

typedef struct net net;

/* Allocates a transport on `loop` (which must outlive it). Nothing touches the network until
 * net_start. Our key decides our role: a genesis validator dials every validator with a lower
 * index and is dialled by the higher ones (one TCP connection per pair); any other key is an
 * observer, which dials every validator with an address (or those in observer_dial_mask).
 * `cb` is copied (NULL = no callbacks); `cfg->listen` is copied. NET_OK, NET_EINVAL (bad config,
 * genesis without validators, sec not a valid key), NET_EADDR (listen longer than 127 bytes),
 * NET_ECRYPTO (sodium_init failed), NET_ENOMEM. */
TEM_WUR int net_new(uv_loop_t *loop, const net_config *cfg, const net_callbacks *cb, net **out);
/* Opens the listener (if any) and starts dialling. NET_OK, NET_EADDR, NET_EUV (bind/listen
 * failed; logged), NET_ESTATE (already started or closing). After any call of net_start, even
 * a failed one, release with net_close, a loop run, then net_free. */
TEM_WUR int net_start(net *n);
/* Port the listener is bound to (useful with port 0), or 0 if none. */
uint16_t net_listen_port(const net *n);
/* Our validator index, or -1 when we are an observer. */
int net_self_index(const net *n);

/* Queues one frame to a connected peer; `data` is copied. NET_OK, NET_ENOTCONN, NET_ETOOBIG
 * (len > frame_bytes_max), NET_EFULL (the peer's send queue is over send_queue_bytes_max),
 * NET_ENOMEM, NET_ECLOSING, NET_EUV (the connection is closed; peer_down follows). */
TEM_WUR int net_send(net *n, uint32_t peer_id, const void *data, size_t len);
/* Sends to every connected peer selected by `to` (NET_TO_VALIDATORS | NET_TO_OBSERVERS).
 * Returns the number of peers the frame was queued to (>= 0), or NET_ETOOBIG, NET_ECLOSING.
 * Per-peer failures (EFULL, ENOMEM) are logged and skip that peer. */
int net_broadcast(net *n, const void *data, size_t len, unsigned to);
/* True if the peer has an authenticated session. */
bool net_peer_connected(const net *n, uint32_t peer_id);
/* Fills *out for a connected peer. NET_OK, NET_ENOTCONN. */
TEM_WUR int net_peer_info_get(const net *n, uint32_t peer_id, net_peer_info *out);
/* Number of authenticated sessions with validators / with observers. */
uint32_t net_validators_connected(const net *n);
uint32_t net_observers_connected(const net *n);
void net_stats_get(const net *n, net_stats *out);
/* "message (NAME)" of a libuv error code, e.g. "connection reset by peer (ECONNRESET)", for log
 * lines: the name is what operators search for. Points into one of 8 rotating static buffers
 * (loop thread only; valid until 8 later calls). */
const char *net_uv_error(int rc);

/* Starts closing every handle the transport owns (listener, connections, timer); peer_down
 * runs for open sessions with NET_ECLOSING. Idempotent. The loop must then run until
 * net_is_closed() (uv_run(loop, UV_RUN_DEFAULT) returning is enough) before net_free. */
void net_close(net *n);
bool net_is_closed(const net *n);
/* Frees a closed transport (or one never started). Wipes the key. NULL is ignored. */
void net_free(net *n);

#endif
