/* pbft_internal.h: helpers shared by the files of consensus/ only. */
#ifndef PBFT_INTERNAL_H
#define PBFT_INTERNAL_H

#include "consensus/pbft.h"

/* Indices into s ordered by validator index (insertion sort: at most PBFT_REPLICAS_MAX). */
void pbft__sigset_order(const pbft__sigset *s, uint32_t order[PBFT_REPLICAS_MAX]);
/* Copies signatures from a certificate or proof; PBFT_ECERT on an unknown or repeated validator
 * or a signature that is not 64 bytes. */
TEM_WUR int pbft__sigset_from_pb(const pbft_replica *r, Tem__V1__CommitSig **sigs, size_t n,
                                 pbft__sigset *out);
TEM_WUR int pbft__sigset_from_pbft(const pbft_replica *r, Tem__V1__PbftSig **sigs, size_t n,
                                   pbft__sigset *out);
/* PBFT_OK when s has >= need signatures, all valid over digest; PBFT_ECERT otherwise. */
TEM_WUR int pbft__sigset_verify(const pbft_replica *r, const pbft__sigset *s,
                                const uint8_t digest[32], uint32_t need);
/* One signature check by validator idx (honours cfg.verify and the planted bug). */
TEM_WUR int pbft__verify(const pbft_replica *r, uint32_t idx, const uint8_t digest[32],
                         const uint8_t sig[64]);

#endif
