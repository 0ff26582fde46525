/* main.c: the tem-sim command line.
 *   tem-sim --seed N              replay one seed and print its trace
 *   tem-sim --seeds A..B          run a range; prints "N passed, M failed" and the failing seeds
 *   tem-sim --planted-bug NAME    run with one safety rule removed (combine with the above)
 *   tem-sim --list-planted-bugs   names them, one a line
 *   --stop-at-first-failure       end a range at its first failing seed
 * Exit status 1 when any seed fails. */
#include "tests/sim/sim.h"

#include <inttypes.h>

static int usage(void) {
    fprintf(stderr, "usage: tem-sim --seed N | --seeds A..B [--planted-bug NAME] [--quiet]\n"
                    "               [--stop-at-first-failure]\n"
                    "       tem-sim --list-planted-bugs\n");
    return 2;
}

static bool parse_u64(const char *s, uint64_t *out) {
    char *end;
    if (!*s) return false;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end) return false;
    *out = v;
    return true;
}

int main(int argc, char **argv) {
    sim_options opt = {0};
    bool have_seed = false, have_range = false, quiet = false, stop_first = false;
    uint64_t seed = 0, a = 0, b = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--list-planted-bugs") == 0) {
            for (int k = 1; k < PBFT_BUG_COUNT; k++) printf("%s\n", pbft_planted_bug_name(k));
            return 0;
        } else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            if (!parse_u64(argv[++i], &seed)) return usage();
            have_seed = true;
        } else if (strcmp(argv[i], "--seeds") == 0 && i + 1 < argc) {
            char buf[64];
            snprintf(buf, sizeof buf, "%s", argv[++i]);
            char *dots = strstr(buf, "..");
            if (!dots) return usage();
            *dots = 0;
            if (!parse_u64(buf, &a) || !parse_u64(dots + 2, &b) || b < a) return usage();
            have_range = true;
        } else if (strcmp(argv[i], "--planted-bug") == 0 && i + 1 < argc) {
            int bug = pbft_planted_bug_by_name(argv[++i]);
            if (bug < 0) {
                fprintf(stderr, "tem-sim: unknown planted bug '%s' (see --list-planted-bugs)\n",
                        argv[i]);
                return 2;
            }
            opt.bug = (pbft_planted_bug)bug;
        } else if (strcmp(argv[i], "--stop-at-first-failure") == 0) {
            stop_first = true;
        } else if (strcmp(argv[i], "--quiet") == 0) {
            quiet = true;
        } else {
            return usage();
        }
    }
    if (have_seed == have_range) return usage();
    if (have_seed) {
        opt.trace = true;
        sim_result r;
        int rc = sim_run(seed, &opt, &r);
        printf("seed %" PRIu64 ": %s after %" PRIu64 " events, %" PRIu64 " ms simulated, height %" PRIu64
               "%s%s\n",
               seed, rc ? "FAILED" : "passed", r.events, r.end_ms, r.max_height,
               rc ? ": " : "", rc ? r.reason : "");
        return rc ? 1 : 0;
    }
    uint64_t passed = 0, failed = 0;
    uint32_t fault_union = 0;
    for (uint64_t s = a;; s++) {
        sim_result r;
        int rc = sim_run(s, &opt, &r);
        fault_union |= r.faults;
        if (rc) {
            failed++;
            printf("seed %" PRIu64 " failed: %s\n", s, r.reason);
            fflush(stdout);
            if (stop_first) break;
        } else {
            passed++;
        }
        if (s == b) break;
    }
    if (!quiet) {
        /* On stderr: stdout carries only the failing seeds and the summary line. */
        fprintf(stderr, "fault kinds exercised:");
        for (int k = 0; k < SIM_F_COUNT; k++)
            if (fault_union & (1u << k)) fprintf(stderr, " %s", sim_fault_name(k));
        fprintf(stderr, "\n");
    }
    printf("%" PRIu64 " passed, %" PRIu64 " failed\n", passed, failed);
    return failed ? 1 : 0;
}
