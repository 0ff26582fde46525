/* cluster_bench.h: what a bench that starts local clusters (node/sim/load.h) shares: a block of
 * free ports (peers on base + i, HTTP on base + 10 + i), and the one cluster and generator it
 * runs at a time, stopped and removed by cleanup() (KEEP=1 leaves the data dirs and logs) and
 * by die(). Define CLUSTER_BENCH_NAME (the program's name, for messages) before including. */
#ifndef BENCH_CLUSTER_BENCH_H
#define BENCH_CLUSTER_BENCH_H

#include "node/sim/load.h"

#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static char dir[256];
static ctl_load_cluster cl;
static ctl_load *gen;

static void cleanup(void) {
    if (gen) ctl_load_free(gen);
    gen = NULL;
    ctl_load_cluster_stop(&cl);
    memset(&cl, 0, sizeof cl);
    if (!dir[0]) return;
    /* KEEP=1 leaves each chain's data dirs and logs (diagnosis). */
    if (getenv("KEEP")) {
        fprintf(stderr, CLUSTER_BENCH_NAME ": kept %s\n", dir);
    } else {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        if (system(cmd) != 0) fprintf(stderr, CLUSTER_BENCH_NAME ": cannot remove %s\n", dir);
    }
    dir[0] = 0;
}

static void die(const char *why) {
    fprintf(stderr, CLUSTER_BENCH_NAME ": %s\n", why);
    cleanup();
    exit(1);
}

/* True when every port the cluster of n nodes needs can be bound now. */
static inline bool cluster_ports_free(int base, int n) {
    for (int i = 0; i < 2 * n; i++) {
        int port = base + (i < n ? i : 10 + i - n);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) return false;
        int one = 1;
        (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        bool ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
        close(fd);
        if (!ok) return false;
    }
    return true;
}

/* A base below the kernel's ephemeral range (32768-60999), where a client socket can hold a
 * port, whose whole block is free; -1 if none was found in 50 tries. */
static inline int cluster_ports_base(int n) {
    int base = 20000 + (int)(getpid() % 400) * 20;
    for (int tries = 0; !cluster_ports_free(base, n); tries++) {
        if (tries > 50) return -1;
        base = 20000 + (base - 20000 + 20) % 8000;
    }
    return base;
}

#endif
