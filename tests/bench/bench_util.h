/* bench_util.h: timing and the one output format every benchmark line uses:
 *   bench NAME VALUE UNIT limit VALUE UNIT ratio R
 * where `limit` is the machine's own ceiling for the same work, measured in the same run. */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#include <stdio.h>
#include <time.h>

static inline double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline void bench_line(const char *name, double value, const char *unit, double limit,
                              const char *limit_unit) {
    printf("bench %s %.0f %s limit %.0f %s ratio %.3f\n", name, value, unit, limit, limit_unit,
           limit > 0 ? value / limit : 0.0);
    fflush(stdout);
}

#endif
