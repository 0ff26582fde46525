/* cluster_ports.h: a block of free ports for a local cluster started by a bench
 * (node/sim/load.h: peers on base + i, HTTP on base + 10 + i). */
#ifndef BENCH_CLUSTER_PORTS_H
#define BENCH_CLUSTER_PORTS_H

#include <netinet/in.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <unistd.h>

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
