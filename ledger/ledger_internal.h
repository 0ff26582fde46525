/* ledger_internal.h: what the ledger sources share and nothing outside ledger/ may call. */
#ifndef LEDGER_INTERNAL_H
#define LEDGER_INTERNAL_H
#include "ledger/ledger.h"

/* Appends an entry read from LMDB during load; keys must arrive in strictly increasing order.
 * The entry is not dirty. LEDGER_OK, LEDGER_ENOMEM, LEDGER_ECORRUPT (order). */
int ledger__state_load(ledger_state *st, const void *key, size_t klen, const void *val, size_t vlen);
/* Calls fn for every key written since the last clear_dirty (val NULL = deleted). fn's error
 * stops the walk and is returned. Marks are kept until ledger__state_clear_dirty. */
typedef int (*ledger__flush_fn)(void *ctx, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen);
int ledger__state_flush(ledger_state *st, ledger__flush_fn fn, void *ctx);
/* Forgets the dirty marks and frees tombstones, once the writes are durable. No savepoint may
 * be open. */
void ledger__state_clear_dirty(ledger_state *st);
size_t ledger__state_journal_depth(const ledger_state *st);

#endif
