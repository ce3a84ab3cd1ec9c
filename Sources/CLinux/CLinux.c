#define _GNU_SOURCE
#include "CLinux.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <dirent.h>
#include <grp.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <linux/openat2.h>
#include <linux/falloc.h>
#include <time.h>
#include <unistd.h>

const unsigned long bh_TUNSETIFF = TUNSETIFF;
const unsigned long bh_TUNSETOFFLOAD = TUNSETOFFLOAD;
const unsigned long bh_TUNSETVNETHDRSZ = TUNSETVNETHDRSZ;
const unsigned long bh_TUNGETIFF = TUNGETIFF;
const int bh_IFF_TAP = IFF_TAP;
const int bh_IFF_NO_PI = IFF_NO_PI;
const int bh_IFF_VNET_HDR = IFF_VNET_HDR;
const int bh_IFF_MULTI_QUEUE = IFF_MULTI_QUEUE;
const unsigned int bh_TUN_F_CSUM = TUN_F_CSUM;
const unsigned int bh_TUN_F_TSO4 = TUN_F_TSO4;
const unsigned int bh_TUN_F_TSO6 = TUN_F_TSO6;
const unsigned int bh_TUN_F_TSO_ECN = TUN_F_TSO_ECN;

int bh_tap_open(const char *name, int flags, char *actual_name) {
    if (strlen(name) >= IFNAMSIZ) return -ENAMETOOLONG;
    // Non-blocking: an io_uring read on an empty queue completes at once with -EAGAIN instead
    // of parking the request (and, after a second empty wake-up, an io-wq worker thread).
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    ifr.ifr_flags = (short)flags;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    if (actual_name) {
        memcpy(actual_name, ifr.ifr_name, IFNAMSIZ);
        actual_name[IFNAMSIZ - 1] = 0;
    }
    return fd;
}

int bh_ioctl_int(int fd, unsigned long request, unsigned long arg) {
    return ioctl(fd, request, arg) < 0 ? -errno : 0;
}

int bh_ioctl_ptr(int fd, unsigned long request, void *arg) {
    return ioctl(fd, request, arg) < 0 ? -errno : 0;
}

static int netns_path(const char *name, char *out, size_t size) {
    if (!name[0] || strchr(name, '/') || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) return -EINVAL;
    int n = snprintf(out, size, "/run/netns/%s", name);
    return (n < 0 || (size_t)n >= size) ? -ENAMETOOLONG : 0;
}

struct netns_job { const char *path; int result; };

// Runs on a thread of its own: unshare() moves only the calling thread into the new namespace.
static void *netns_create_thread(void *arg) {
    struct netns_job *job = arg;
    if (unshare(CLONE_NEWNET) < 0) { job->result = -errno; return NULL; }
    char self[64];
    snprintf(self, sizeof self, "/proc/self/task/%ld/ns/net", (long)syscall(SYS_gettid));
    if (mount(self, job->path, "none", MS_BIND, NULL) < 0) { job->result = -errno; return NULL; }
    job->result = 0;
    return NULL;
}

int bh_netns_create(const char *name) {
    char path[256];
    int r = netns_path(name, path, sizeof path);
    if (r) return r;
    if (mkdir("/run/netns", 0755) < 0 && errno != EEXIST) return -errno;
    // Like iproute2: make /run/netns a shared mount point so the namespaces are visible in
    // mount namespaces created later.
    if (mount("", "/run/netns", "none", MS_SHARED | MS_REC, NULL) < 0) {
        if (errno == EINVAL) {
            if (mount("/run/netns", "/run/netns", "none", MS_BIND | MS_REC, NULL) == 0)
                (void)mount("", "/run/netns", "none", MS_SHARED | MS_REC, NULL);
        }
    }
    int fd = open(path, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
    if (fd < 0) return -errno;
    close(fd);
    struct netns_job job = { path, -EIO };
    pthread_t thread;
    int err = pthread_create(&thread, NULL, netns_create_thread, &job);
    if (err) { unlink(path); return -err; }
    pthread_join(thread, NULL);
    if (job.result < 0) unlink(path);
    return job.result;
}

int bh_netns_delete(const char *name) {
    char path[256];
    int r = netns_path(name, path, sizeof path);
    if (r) return r;
    if (umount2(path, MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT) return -errno;
    if (unlink(path) < 0 && errno != ENOENT) return -errno;
    return 0;
}

int bh_netns_open(const char *name) {
    char path[256];
    int r = netns_path(name, path, sizeof path);
    if (r) return r;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int bh_setns_net(int nsfd) {
    return setns(nsfd, CLONE_NEWNET) < 0 ? -errno : 0;
}

int bh_flock_exclusive(int fd) {
    return flock(fd, LOCK_EX | LOCK_NB) < 0 ? -errno : 0;
}

uint64_t bh_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int bh_eventfd(void) { return eventfd(0, EFD_CLOEXEC); }

int bh_set_thread_name(const char *name) { return -pthread_setname_np(pthread_self(), name); }

int bh_openat_beneath(int dirfd, const char *path, int flags, unsigned mode) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (uint64_t)(flags | O_CLOEXEC | O_NOFOLLOW);
    if (flags & O_CREAT) how.mode = mode;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;
    long fd;
    do { fd = syscall(SYS_openat2, dirfd, path, &how, sizeof how); } while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : (int)fd;
}

const int bh_FALLOC_PUNCH_HOLE = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
const int bh_FALLOC_ZERO_RANGE = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
const int bh_O_DIRECT = O_DIRECT;

int bh_fallocate(int fd, int mode, uint64_t offset, uint64_t length) {
    int r;
    do { r = fallocate(fd, mode, (off_t)offset, (off_t)length); } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : 0;
}

int bh_jail(unsigned uid, unsigned gid, const char **step) {
#define STEP(name, call) do { *step = name; if ((call) < 0) return -errno; } while (0)
    STEP("setgroups(0)", setgroups(0, NULL));
    // glibc applies set*id to every thread of the process. Leaving uid 0 for a non-zero uid
    // clears the permitted, effective and ambient capabilities.
    STEP("setresgid", setresgid(gid, gid, gid));
    STEP("setresuid", setresuid(uid, uid, uid));
    STEP("prctl(PR_SET_NO_NEW_PRIVS)", prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
    STEP("prctl(PR_SET_DUMPABLE, 0)", prctl(PR_SET_DUMPABLE, 0, 0, 0, 0));
    *step = "";
    return 0;
#undef STEP
}

int bh_accept_cloexec(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC); }

int bh_memfd_create(const char *name) { return memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING); }

int bh_memfd_seal_size(int fd) {
    return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0 ? -errno : 0;
}

int bh_is_sealed_against_shrinking(int fd) {
    int seals = fcntl(fd, F_GET_SEALS);
    return seals >= 0 && (seals & F_SEAL_SHRINK) ? 1 : 0;
}
