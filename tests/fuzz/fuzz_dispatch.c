/* fuzz_dispatch.c: libFuzzer target for how temd handles a decoded peer message: the node's
 * frame callback (node_on_frame: consensus messages into the pBFT host, tx gossip into the
 * mempool, block requests and replies) on a real validator (tests/fuzz/node_fixture.h).
 *
 * Input byte 0: bits 0-1 pick the sender (validators 1-3, or an observer); bit 2 asks the
 * harness to sign: when the rest decodes as a NodeMessage carrying a PbftMessage, that message
 * is given sender 1 and signed with validator 1's key, so the fuzzer gets past the signature
 * checks as one faulty validator (f = 1 of 4); bit 3 sends it to a second node, a validator
 * started on an empty data dir that follows by block sync (sync_first) before it votes. The
 * rest is the frame's plaintext.
 * Oracle: without a quorum's signatures nothing commits (both stores stay at height 0: the
 * fuzzer cannot forge a certificate) and neither node stops; no crash, leak or UB under ASan
 * and UBSan. The nodes keep their state between inputs, as running nodes do; their timers and
 * thread-pool work run between inputs. */
#include "tests/fuzz/node_fixture.h"

static node *N, *F; /* the voting validator; the follower on an empty data dir */

/* Re-signs the PbftMessage inside m as validator 1; returns the new frame or NULL. */
static uint8_t *resign(const uint8_t *data, size_t size, size_t *out_len) {
    Tem__V1__NodeMessage *m = tem__v1__node_message__unpack(&ledger_pb_allocator, size, data);
    if (!m) return NULL;
    uint8_t *out = NULL;
    if (m->kind_case == TEM__V1__NODE_MESSAGE__KIND_PBFT) {
        Tem__V1__PbftMessage *p = tem__v1__pbft_message__unpack(&ledger_pb_allocator, m->pbft.len, m->pbft.data);
        if (p) {
            uint8_t sec[64], pub[32], *signed_msg;
            size_t sl;
            fx_vkey(1, sec, pub);
            p->sender = 1;
            /* sign_pack points sig at its own stack and clears it: keep the decoded one to free */
            ProtobufCBinaryData old_sig = p->sig;
            int rc = pbft_msg_sign_pack(N->g.hash, sec, p, &signed_msg, &sl);
            p->sig = old_sig;
            if (rc == PBFT_OK) {
                Tem__V1__NodeMessage o;
                tem__v1__node_message__init(&o);
                o.kind_case = TEM__V1__NODE_MESSAGE__KIND_PBFT;
                o.pbft = (ProtobufCBinaryData){sl, signed_msg};
                *out_len = tem__v1__node_message__get_packed_size(&o);
                out = tem_malloc(*out_len ? *out_len : 1);
                TEM_ASSERT(out);
                tem__v1__node_message__pack(&o, out);
                tem_free(signed_msg);
            }
            tem__v1__pbft_message__free_unpacked(p, &ledger_pb_allocator);
        }
    }
    tem__v1__node_message__free_unpacked(m, &ledger_pb_allocator);
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!N) {
        N = fxn_open(false, false);
        F = fxn_open(false, true);
    }
    if (size < 1) return 0;
    node *n = data[0] & 8 ? F : N;
    net_peer_info p;
    memset(&p, 0, sizeof p);
    uint32_t who = data[0] & 3;
    p.is_validator = who < 3;
    p.id = who < 3 ? 1 + who : NET_OBSERVER_ID_BASE + data[0] % 7;
    if (p.is_validator) {
        uint8_t sec[64];
        fx_vkey(p.id, sec, p.pubkey);
    }
    snprintf(p.remote, sizeof p.remote, "127.0.0.1:%u", 7000 + p.id);
    const uint8_t *msg = data + 1;
    size_t len = size - 1;
    uint8_t *signed_frame = NULL;
    if (data[0] & 4) {
        size_t sl = 0;
        signed_frame = resign(msg, len, &sl);
        if (signed_frame) {
            msg = signed_frame;
            len = sl;
        }
    }
    node_on_frame(n, &p, msg, len);
    tem_free(signed_frame);
    for (int i = 0; i < 3; i++) uv_run(&n->loop, UV_RUN_NOWAIT);
    TEM_ASSERT(!n->stopping);
    TEM_ASSERT(ledger_store_height(n->store) == 0);
    return 0;
}
