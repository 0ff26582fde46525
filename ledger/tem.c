/* tem.c: the shared runtime pieces of tem.h: the always-on assertion, the hookable allocator
 * used by OOM tests, and hex codecs. */
#include "ledger/tem.h"

#include <ctype.h>
#include <stdatomic.h>

void tem_assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "TEM_ASSERT failed: %s at %s:%d\n", expr, file, line);
    fflush(stderr);
    abort();
}

/* Counters are atomic because the libuv thread pool allocates too; the failure hook is a
 * test-only facility and is off (-1) in every production path. */
static _Atomic long alloc_count;
static _Atomic long alloc_fail_at = -1;

static bool alloc_should_fail(void) {
    long n = atomic_fetch_add(&alloc_count, 1);
    long at = atomic_load(&alloc_fail_at);
    return at >= 0 && n >= at;
}

void *tem_malloc(size_t n) {
    if (alloc_should_fail()) return NULL;
    return malloc(n ? n : 1);
}
void *tem_calloc(size_t count, size_t size) {
    if (alloc_should_fail()) return NULL;
    return calloc(count ? count : 1, size ? size : 1);
}
void *tem_realloc(void *p, size_t n) {
    if (alloc_should_fail()) return NULL;
    return realloc(p, n ? n : 1);
}
void tem_free(void *p) { free(p); }

long tem_alloc_fail_after(long fail_after) {
    long made = atomic_exchange(&alloc_count, 0);
    atomic_store(&alloc_fail_at, fail_after);
    return made;
}

void tem_hex(char *out, const uint8_t *in, size_t n) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = 0;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

int tem_unhex(uint8_t *out, size_t n, const char *hex) {
    if (!hex) return -1;
    if (hex[0] == '0' && (hex[1] == 'x' || hex[1] == 'X')) hex += 2;
    if (strlen(hex) != 2 * n) return -1;
    for (size_t i = 0; i < n; i++) {
        int hi = hexval((unsigned char)hex[2 * i]), lo = hexval((unsigned char)hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

int tem_unhex_alloc(const char *hex, uint8_t **out, size_t *out_len) {
    if (!hex) return -1;
    if (hex[0] == '0' && (hex[1] == 'x' || hex[1] == 'X')) hex += 2;
    size_t l = strlen(hex);
    if (l % 2) return -1;
    uint8_t *b = tem_malloc(l / 2);
    if (!b) return -1;
    if (tem_unhex(b, l / 2, hex) != 0) {
        tem_free(b);
        return -1;
    }
    *out = b;
    *out_len = l / 2;
    return 0;
}
