/* arena.c: the per-block (or per-request) bump allocator: many small allocations, one reset. */
#include "ledger/ledger.h"

struct ledger_arena_chunk {
    ledger_arena_chunk *next;
    size_t used, cap;
    _Alignas(16) uint8_t data[];
};

#define ARENA_CHUNK_BYTES (64u * 1024)

void *ledger_arena_alloc(ledger_arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    ledger_arena_chunk *c = a->head;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > ARENA_CHUNK_BYTES ? n : ARENA_CHUNK_BYTES;
        c = tem_malloc(sizeof *c + cap);
        if (!c) return NULL;
        c->next = a->head;
        c->used = 0;
        c->cap = cap;
        a->head = c;
    }
    void *p = c->data + c->used;
    c->used += n;
    memset(p, 0, n);
    return p;
}

char *ledger_arena_strdup(ledger_arena *a, const char *s) {
    size_t n = strlen(s) + 1;
    char *p = ledger_arena_alloc(a, n);
    if (p) memcpy(p, s, n);
    return p;
}

void ledger_arena_reset(ledger_arena *a) {
    ledger_arena_chunk *c = a->head;
    while (c) {
        ledger_arena_chunk *n = c->next;
        tem_free(c);
        c = n;
    }
    a->head = NULL;
}
