/* fuzz_tx.c: libFuzzer target for tx decoding and signature verification: any byte string must
 * decode to a tx or a ledger error code, never crash, leak or read out of bounds. */
#include "ledger/ledger.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ledger_tx_limits lim = {.chain_id = "tem-fuzz", .max_tx_bytes = 4096, .max_admin_tx_bytes = 1 << 20};
    ledger_tx tx;
    int rc = ledger_tx_decode(data, size, &lim, &tx);
    if (rc != LEDGER_OK) {
        TEM_ASSERT(rc < 0 && strcmp(ledger_strerror(rc), "unknown error") != 0);
        return 0;
    }
    rc = ledger_tx_verify(&tx);
    TEM_ASSERT(rc == LEDGER_OK || rc == LEDGER_ESIG || rc == LEDGER_ESIGHIGHS || rc == LEDGER_EPUBKEY ||
               rc == LEDGER_ESIGMALFORMED);
    ledger_tx_free(&tx);
    return 0;
}
