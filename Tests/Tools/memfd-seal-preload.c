// LD_PRELOAD shim for frontends whose guest memory is a memfd that cannot be sealed, such as
// DPDK's `--no-huge` memory (memfd_create("nohuge", 0), then ftruncate): Bulkhead's vhost-user
// backends map only memfds sealed against shrinking (a frontend that shrinks the file under the
// backend's mapping would turn a guest access into SIGBUS in a process that serves every tenant).
//
// memfd_create gets MFD_ALLOW_SEALING added; the first ftruncate of such a memfd to a non-zero
// size is followed by F_SEAL_SHRINK. Nothing else changes: the frontend's memory is what it was,
// only it can no longer shrink it.
//
//   cc -shared -fPIC -O2 -o memfd-seal-preload.so memfd-seal-preload.c -ldl
//   LD_PRELOAD=./memfd-seal-preload.so dpdk-testpmd --no-huge ...
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

// Memfds created through this shim (descriptor numbers below 1024), not yet sealed.
static atomic_uchar sealable[1024];

int memfd_create(const char *name, unsigned int flags) {
    static int (*real)(const char *, unsigned int);
    if (!real) real = (int (*)(const char *, unsigned int))dlsym(RTLD_NEXT, "memfd_create");
    if (!real) return -1;
    int fd = real(name, flags | MFD_ALLOW_SEALING);
    if (fd >= 0 && fd < 1024) atomic_store(&sealable[fd], 1);
    return fd;
}

static void seal_after_sizing(int fd, off_t length) {
    if (fd < 0 || fd >= 1024 || length <= 0) return;
    if (atomic_exchange(&sealable[fd], 0)) fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK);
}

int ftruncate(int fd, off_t length) {
    static int (*real)(int, off_t);
    if (!real) real = (int (*)(int, off_t))dlsym(RTLD_NEXT, "ftruncate");
    if (!real) return -1;
    int rc = real(fd, length);
    if (rc == 0) seal_after_sizing(fd, length);
    return rc;
}

int ftruncate64(int fd, off_t length) {
    static int (*real)(int, off_t);
    if (!real) real = (int (*)(int, off_t))dlsym(RTLD_NEXT, "ftruncate64");
    if (!real) return -1;
    int rc = real(fd, length);
    if (rc == 0) seal_after_sizing(fd, length);
    return rc;
}

int close(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "close");
    if (!real) return -1;
    if (fd >= 0 && fd < 1024) atomic_store(&sealable[fd], 0);
    return real(fd);
}
