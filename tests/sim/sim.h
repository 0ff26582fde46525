/* sim.h: the deterministic pBFT cluster simulator (tests/sim/, binary tem-sim). One seed fixes
 * every choice: cluster size, faults, Byzantine behaviour, delays. */
#ifndef SIM_H
#define SIM_H

#include "consensus/pbft.h"

typedef struct {
    bool trace;                 /* print every event */
    pbft_planted_bug bug;       /* planted into every replica */
    bool quiet;                 /* no per-failure line (the caller prints its own) */
} sim_options;

typedef struct {
    bool failed;
    char reason[256];
    uint32_t n;
    uint64_t events;
    uint64_t max_height;
    uint64_t end_ms;
    uint32_t faults; /* SIM_F_* bits the seed exercised */
} sim_result;

/* Fault kinds, for the summary line. */
enum {
    SIM_F_DELAY = 1u << 0,
    SIM_F_DROP = 1u << 1,
    SIM_F_DUP = 1u << 2,
    SIM_F_REORDER = 1u << 3,
    SIM_F_PARTITION = 1u << 4,
    SIM_F_CRASH = 1u << 5,
    SIM_F_LOST_WRITES = 1u << 6,
    SIM_F_EQUIVOCATE = 1u << 7,
    SIM_F_CONFLICT_VOTES = 1u << 8,
    SIM_F_FORGE = 1u << 9,
    SIM_F_REPLAY = 1u << 10,
    SIM_F_MALFORMED = 1u << 11,
    SIM_F_SILENT = 1u << 12,
    SIM_F_BAD_PROPOSAL = 1u << 13,
    SIM_F_FETCH_LIAR = 1u << 14,
    SIM_F_TWINS = 1u << 15,
    SIM_F_POWER_CUT = 1u << 16,
    SIM_F_COUNT = 17
};
const char *sim_fault_name(int bit);

/* Runs one seed. Returns 0 when agreement, validity and liveness held, 1 otherwise. */
int sim_run(uint64_t seed, const sim_options *opt, sim_result *res);

#endif
