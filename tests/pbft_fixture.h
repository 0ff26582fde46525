/* pbft_fixture.h: what the consensus Check suites share (test_pbft.c, test_host.c): deterministic
 * Ed25519 validator keys and the block hash a pbft_config takes. */
#ifndef PBFT_FIXTURE_H
#define PBFT_FIXTURE_H

#include <check.h>
#include <sodium.h>
#include <string.h>

#include "consensus/pbft.h"

/* Keys 0..n-1; key i comes from a seed of 32 bytes `first + i`, so each suite's `first` gives it
 * keys of its own. */
static inline void pbft_fx_keys(uint32_t n, uint8_t first, uint8_t (*pub)[32], uint8_t (*sec)[64]) {
    ck_assert_int_ge(sodium_init(), 0);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t seed[32];
        memset(seed, first + i, 32);
        ck_assert_int_eq(crypto_sign_seed_keypair(pub[i], sec[i], seed), 0);
    }
}

/* pbft_config.hash: SHA-256 of the block bytes; an empty block does not hash (-1). */
static inline int pbft_fx_hash(void *ctx, const uint8_t *b, size_t len, uint8_t out[32]) {
    (void)ctx;
    if (len == 0) return -1;
    ledger_sha256(out, b, len);
    return 0;
}

#endif
