/* proof.h: the account proof document of GET /v1/accounts/{key}/proof (docs/ledger.md,
 * "Account proofs over HTTP"): the decoded parts the node writes beside their hex, shared by the
 * node (node/api_proof.c, which serves it) and temctl (node/ctl/ctl_proof.c, which checks that
 * the decoded parts say what the hex says), so both read one definition.
 *
 * Every function returns a new jansson reference, or NULL on OOM or (for the record) bytes that
 * are not an account record. Inputs are borrowed for the call. */
#ifndef NODE_PROOF_H
#define NODE_PROOF_H

#include "ledger/ledger.h"

#include <jansson.h>

/* State key of an account: 'a' || pubkey (docs/market.md, "State layout"). */
#define NODE_PROOF_ACCT_PREFIX 'a'
#define NODE_PROOF_ACCT_KEY_BYTES (1 + LEDGER_SECP_PUB_BYTES)
/* An account record: u32le bus, u8 role, 3 zero bytes, then five i64le (money, money escrow,
 * tokens, tokens escrow, debt). */
#define NODE_PROOF_ACCT_RECORD_BYTES 48

void node_proof_acct_key(uint8_t key[NODE_PROOF_ACCT_KEY_BYTES], const uint8_t pub[LEDGER_SECP_PUB_BYTES]);
/* {"hex","bus","role","money_uunit","escrow_uunit","tokens_wh","escrow_tokens_wh","debt_uunit"};
 * NULL when len is not NODE_PROOF_ACCT_RECORD_BYTES or the 3 padding bytes are not zero. */
json_t *node_proof_record_json(const uint8_t *rec, size_t len);
/* {"hex","kind","depth","siblings":[depth hex, zeros for an empty subtree],"leaf_kh","leaf_vh"}
 * (the leaf hashes only for kinds present and absent_leaf). */
json_t *node_proof_path_json(const ledger_state_proof *p);
/* {"height","hash","hex", and the header's fields as GET /v1/blocks/{h} writes them}. */
json_t *node_proof_header_json(const Tem__V1__BlockHeader *h, const uint8_t hash[LEDGER_HASH_BYTES]);
/* {"hex","view","height","block_hash","sigs":[{"validator","sig"}]}. */
json_t *node_proof_cert_json(const Tem__V1__CommitCertificate *c, const uint8_t *bytes, size_t len);
/* The name of a proof kind: "present", "absent_empty", "absent_leaf" (NULL for others). */
const char *node_proof_kind_name(int kind);

#endif
