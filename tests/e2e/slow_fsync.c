/* An LD_PRELOAD shim for the chaos tests (tests/e2e/chaos.rs): every
 * fsync and fdatasync of the process takes SLOW_FSYNC_MS milliseconds
 * (default 100) longer, as on a slow or overloaded disk. Says so once on
 * stderr, so a test can tell it is in effect. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static void slow(void) {
    static int announced;
    const char *ms = getenv("SLOW_FSYNC_MS");
    long n = ms ? atol(ms) : 100;
    if (!__atomic_exchange_n(&announced, 1, __ATOMIC_SEQ_CST)) {
        dprintf(2, "slow-fsync: every fsync takes %ld ms longer\n", n);
    }
    struct timespec t = {n / 1000, (n % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    }
    slow();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    }
    slow();
    return real(fd);
}
