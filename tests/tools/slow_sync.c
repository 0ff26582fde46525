/* slow_sync.c: an LD_PRELOAD library that makes temd's block commits slow, for tests/t_chaos.sh.
 * fdatasync on a file named data.mdb outside a votes/ folder (the store, not the vote record)
 * first sleeps $TEM_SLOW_SYNC_MS milliseconds. LMDB syncs a write transaction's pages with
 * fdatasync before it writes the meta page that makes the commit visible, so a block's commit
 * stays in flight that long while consensus goes on to the next height: a kill then finds a
 * delivered block that is on no disk, the case the vote record's commit certificate covers
 * (docs/consensus.md, "What is persisted"). Not for production: a test tool only. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int (*real_fdatasync)(int);

static int is_store(int fd) {
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return 0;
    path[n] = 0;
    size_t len = (size_t)n;
    return len >= 9 && strcmp(path + len - 9, "/data.mdb") == 0 && strstr(path, "/votes/") == NULL;
}

int fdatasync(int fd) {
    if (!real_fdatasync) real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    const char *ms = getenv("TEM_SLOW_SYNC_MS");
    if (ms && is_store(fd)) {
        long v = strtol(ms, NULL, 10);
        struct timespec ts = {.tv_sec = v / 1000, .tv_nsec = (v % 1000) * 1000000L};
        while (v > 0 && nanosleep(&ts, &ts) != 0) {
        }
    }
    return real_fdatasync ? real_fdatasync(fd) : -1;
}
