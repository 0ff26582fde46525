/* fuzz_block.c: libFuzzer target for certificates and block headers from peers: decoding,
 * hashing and certificate checks refuse anything malformed with an error code. */
#include "ledger/ledger.h"

static ledger_genesis G;
static int ready;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!ready) {
        static const char gj[] = "{\"chain_id\":\"f\",\"validators\":[{\"pubkey\":\"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\"},"
                                 "{\"pubkey\":\"3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c\"}],"
                                 "\"tariffs\":[{\"start_minute\":0,\"retail_uunit_per_kwh\":2,\"feed_in_uunit_per_kwh\":1}]}";
        TEM_ASSERT(ledger_genesis_parse(gj, sizeof gj - 1, &G, NULL, 0) == LEDGER_OK);
        ready = 1;
    }
    uint8_t h[32] = {0};
    int rc = ledger_cert_verify(&G, data, size, 1, h);
    TEM_ASSERT(rc == LEDGER_ECERT || rc == LEDGER_EDECODE);
    Tem__V1__Block *b = tem__v1__block__unpack(&ledger_pb_allocator, size, data);
    uint8_t hv[32];
    int rv = ledger_block_hash_bytes(data, size, hv);
    if (b) {
        /* the block view's wire-level header read agrees with protobuf-c's */
        if (b->header && ledger_block_hash(b->header, h) == LEDGER_OK && rv == LEDGER_OK) TEM_ASSERT(memcmp(h, hv, 32) == 0);
        tem__v1__block__free_unpacked(b, &ledger_pb_allocator);
    }
    ledger_block_view v;
    if (ledger_block_view_build(&G, data, size, NULL, NULL, &v) == LEDGER_OK) {
        TEM_ASSERT(v.n <= size);
        ledger_block_view_free(&v);
    }
    return 0;
}
