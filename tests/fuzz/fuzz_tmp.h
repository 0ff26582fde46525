/* fuzz_tmp.h: a scratch directory for a fuzz target's files, on /dev/shm when it is writable
 * (the node fsyncs; tmpfs makes that free), else /tmp, removed when the process exits normally
 * (libFuzzer ends a -max_total_time run with exit(), so atexit handlers run; a crash leaves the
 * directory behind for inspection). */
#ifndef FUZZ_TMP_H
#define FUZZ_TMP_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define FUZZ_TMP_DIRS_MAX 4
static char fuzz_tmp_dirs[FUZZ_TMP_DIRS_MAX][128];
static int fuzz_tmp_n;

static int fuzz_tmp_rm1(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    (void)remove(path); /* best effort: keep removing the rest */
    return 0;
}

static void fuzz_tmp_cleanup(void) {
    for (int i = 0; i < fuzz_tmp_n; i++) (void)nftw(fuzz_tmp_dirs[i], fuzz_tmp_rm1, 16, FTW_DEPTH | FTW_PHYS);
}

/* Creates DIR/<name>-XXXXXX and returns its path (static storage). Aborts on failure. */
static const char *fuzz_tmpdir(const char *name) {
    if (fuzz_tmp_n >= FUZZ_TMP_DIRS_MAX) abort();
    char *d = fuzz_tmp_dirs[fuzz_tmp_n];
    snprintf(d, sizeof fuzz_tmp_dirs[0], "%s/%s-XXXXXX", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp", name);
    if (mkdtemp(d) == NULL) abort();
    if (fuzz_tmp_n++ == 0) atexit(fuzz_tmp_cleanup);
    return d;
}

#endif
