/* store_fixture.h: what the Check suites that keep stores on disk share (test_ledger.c,
 * test_state_tree.c, test_store_repair.c, test_ledger_view_verify.c): a fresh folder, its
 * removal, and a store hook that kills the process at one commit point. */
#ifndef STORE_FIXTURE_H
#define STORE_FIXTURE_H

#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "ledger/ledger.h"

/* A new empty folder /tmp/tem-NAME-XXXXXX; the caller frees the returned path. */
static inline char *fx_tmpdir(const char *name) {
    char *d;
    ck_assert_int_gt(asprintf(&d, "/tmp/tem-%s-XXXXXX", name), 0);
    ck_assert_ptr_nonnull(mkdtemp(d));
    return d;
}

static inline void fx_rmrf(const char *d) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
    ck_assert_int_eq(system(cmd), 0);
}

/* For ledger_store_set_hook in a forked child: dies by SIGKILL at hook point fx_kill_at. */
__attribute__((unused)) static int fx_kill_at;
static inline void fx_kill_hook(int point) {
    if (point == fx_kill_at) raise(SIGKILL);
}

#endif
