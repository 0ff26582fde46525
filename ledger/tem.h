/* tem.h: what every TEM module shares: assertions that stay on in every build, overflow-checked
 * integer helpers for consensus arithmetic, the hookable allocator, hex and little-endian codecs.
 * Nothing here touches a clock, a random source or the disk. */
#ifndef TEM_H
#define TEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEM_WUR __attribute__((warn_unused_result))

/* On in every build, release included: a broken invariant in consensus code must stop the node
 * before it signs or stores anything built on it. Bad input from outside never reaches these. */
#define TEM_ASSERT(cond)                                                                           \
    do {                                                                                           \
        if (__builtin_expect(!(cond), 0)) tem_assert_fail(#cond, __FILE__, __LINE__);              \
    } while (0)

__attribute__((noreturn)) void tem_assert_fail(const char *expr, const char *file, int line);

/* ------------------------------------------------------------ checked arithmetic
 * Each helper leaves *acc unchanged and returns false on overflow, so a caller can refuse the
 * tx with a reason and the state stays as it was. */
static inline TEM_WUR bool tem_add_i64(int64_t *acc, int64_t x) {
    int64_t r;
    if (__builtin_add_overflow(*acc, x, &r)) return false;
    *acc = r;
    return true;
}
static inline TEM_WUR bool tem_sub_i64(int64_t *acc, int64_t x) {
    int64_t r;
    if (__builtin_sub_overflow(*acc, x, &r)) return false;
    *acc = r;
    return true;
}
static inline TEM_WUR bool tem_mul_i64(int64_t *acc, int64_t x) {
    int64_t r;
    if (__builtin_mul_overflow(*acc, x, &r)) return false;
    *acc = r;
    return true;
}
static inline TEM_WUR bool tem_add_u64(uint64_t *acc, uint64_t x) {
    uint64_t r;
    if (__builtin_add_overflow(*acc, x, &r)) return false;
    *acc = r;
    return true;
}
static inline TEM_WUR bool tem_sub_u64(uint64_t *acc, uint64_t x) {
    if (x > *acc) return false;
    *acc -= x;
    return true;
}
static inline TEM_WUR bool tem_mul_u64(uint64_t *acc, uint64_t x) {
    uint64_t r;
    if (__builtin_mul_overflow(*acc, x, &r)) return false;
    *acc = r;
    return true;
}
/* *out = floor(a * b / d) computed in 128 bits; false when d == 0 or the result exceeds
 * int64. Rounds toward negative infinity: the caller names who receives the remainder. */
static inline TEM_WUR bool tem_mul_div_floor(int64_t a, int64_t b, int64_t d, int64_t *out) {
    if (d == 0) return false;
    __int128 p = (__int128)a * (__int128)b;
    __int128 q = p / d;
    if ((p % d != 0) && ((p < 0) != (d < 0))) q -= 1;
    if (q > INT64_MAX || q < INT64_MIN) return false;
    *out = (int64_t)q;
    return true;
}
/* *out = ceil(a * b / d), same rules as tem_mul_div_floor. */
static inline TEM_WUR bool tem_mul_div_ceil(int64_t a, int64_t b, int64_t d, int64_t *out) {
    if (d == 0) return false;
    __int128 p = (__int128)a * (__int128)b;
    __int128 q = p / d;
    if ((p % d != 0) && ((p < 0) == (d < 0))) q += 1;
    if (q > INT64_MAX || q < INT64_MIN) return false;
    *out = (int64_t)q;
    return true;
}

/* ------------------------------------------------------------ allocation
 * Every module allocates through these so tests can fail the N-th call (OOM ladders).
 * tem_malloc(0) returns a unique non-NULL pointer or NULL like malloc. */
void *tem_malloc(size_t n);
void *tem_calloc(size_t count, size_t size);
void *tem_realloc(void *p, size_t n);
void tem_free(void *p);
/* Test hook: the `fail_after`-th allocation from now on (0 = the next one) and every one after
 * it fail; -1 turns failures off. Returns the number of allocations made since the last call. */
long tem_alloc_fail_after(long fail_after);

/* ------------------------------------------------------------ byte codecs */
static inline void tem_put_u32le(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline void tem_put_u64le(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint32_t tem_get_u32le(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static inline uint64_t tem_get_u64le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
/* Big-endian keys sort numerically under LMDB's bytewise comparison. */
static inline void tem_put_u64be(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (56 - 8 * i));
}
static inline uint64_t tem_get_u64be(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}
static inline void tem_put_u32be(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (24 - 8 * i));
}
static inline uint32_t tem_get_u32be(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v = (v << 8) | p[i];
    return v;
}

/* Lower-case hex of `n` bytes into `out` (2n+1 bytes, NUL-terminated). */
void tem_hex(char *out, const uint8_t *in, size_t n);
/* Parses exactly `n` bytes of hex (2n characters, either case, optional "0x"); 0 or -1. */
TEM_WUR int tem_unhex(uint8_t *out, size_t n, const char *hex);
/* Parses hex of any even length into a new tem_malloc'd buffer; -1 on bad hex or OOM. */
TEM_WUR int tem_unhex_alloc(const char *hex, uint8_t **out, size_t *out_len);

#endif
