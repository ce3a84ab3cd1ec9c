#define _GNU_SOURCE
#include "CLinux.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <grp.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <linux/magic.h>
#include <sys/syscall.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <linux/openat2.h>
#include <linux/close_range.h>
#include <linux/falloc.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/io_uring.h>
#include <linux/seccomp.h>
#include <linux/kvm.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
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

int bh_eventfd(int nonblocking, int semaphore) {
    return eventfd(0, EFD_CLOEXEC | (nonblocking ? EFD_NONBLOCK : 0) | (semaphore ? EFD_SEMAPHORE : 0));
}

int bh_is_shmem(int fd) {
    struct statfs info;
    if (fstatfs(fd, &info) < 0) return -errno;
    return info.f_type == TMPFS_MAGIC ? 1 : 0;
}

int bh_ignore_file_size_signal(void) { return signal(SIGXFSZ, SIG_IGN) == SIG_ERR ? -errno : 0; }

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

int bh_thread_count(void) {
    DIR *dir = opendir("/proc/self/task");
    if (!dir) return -errno;
    int count = 0;
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        if (entry->d_name[0] != '.') count++;
    }
    closedir(dir);
    return count;
}

int bh_first_directory_fd(int *found) {
    DIR *dir = opendir("/proc/self/fd");
    if (!dir) return -errno;
    int own = dirfd(dir), first = -1;
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        if (entry->d_name[0] == '.') continue;
        int fd = atoi(entry->d_name);
        struct stat info;
        if (fd == own || fstat(fd, &info) < 0) continue;
        if (S_ISDIR(info.st_mode) && (first < 0 || fd < first)) first = fd;
    }
    closedir(dir);
    *found = first;
    return 0;
}

int bh_jail_isolate(const char *mount_point, const char **step) {
#define STEP(name, call) do { *step = name; if ((call) < 0) return -errno; } while (0)
    STEP("unshare(CLONE_NEWNS|CLONE_NEWNET|CLONE_NEWIPC|CLONE_NEWUTS)",
         unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS));
    // Nothing mounted or unmounted below reaches the host's namespace, nor the other way round.
    STEP("mount(/, MS_REC|MS_PRIVATE)", mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL));
    // The new root: empty and read-only from the start, nothing on it can be a device, a setuid
    // program or executable. It hides `mount_point` in this namespace only (the mount is private).
    STEP("mount(tmpfs, ro|nosuid|nodev|noexec)",
         mount("bulkhead-jail", mount_point, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
               "mode=0555,size=4k,nr_inodes=2"));
    STEP("chdir(new root)", chdir(mount_point));
    // pivot_root rather than chroot: the old root is mounted on top of the new one, and the
    // detach below removes it (and every mount under it) from this namespace, so not even a
    // chroot escape finds the host's files. pivot_root(".", ".") needs no directory for the old
    // root, so the new one can stay read-only (pivot_root(2), NOTES).
    STEP("pivot_root(., .)", syscall(SYS_pivot_root, ".", "."));
    STEP("umount2(old root, MNT_DETACH)", umount2(".", MNT_DETACH));
    STEP("chdir(/)", chdir("/"));
    *step = "";
    return 0;
#undef STEP
}

// MARK: seccomp-BPF

// One entry of an allowlist: system call `nr` gets `action` when the check on its argument holds.
// Rules for one system call are adjacent and tried in order; when none holds, the process is
// killed. Arguments are compared on their low 32 bits, which are all the kernel reads of each
// argument checked here (int pid, int option, prot, clone flags, unsigned opcode).
enum check { ANY, ARG_EQUALS, ARG_HAS_NONE_OF, ARG_HAS_ALL_OF };
struct syscall_rule {
    long nr;
    enum check check;
    unsigned arg;
    uint32_t value;
    uint32_t action;
};

#if defined(__x86_64__)
#define BH_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define BH_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#error "seccomp allowlist: unsupported architecture"
#endif
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "seccomp allowlist: the argument offsets assume little endian"
#endif

#define ARG_LOW(i) ((uint32_t)offsetof(struct seccomp_data, args[(i)]))
#define STMT(code, k) ((struct sock_filter)BPF_STMT((code), (k)))
#define JUMP(code, k, jt, jf) ((struct sock_filter)BPF_JUMP((code), (k), (jt), (jf)))
#define MAX_FILTER 1024

static unsigned rule_length(const struct syscall_rule *rule) {
    switch (rule->check) {
    case ANY: return 1;                                      // ret
    case ARG_EQUALS: case ARG_HAS_NONE_OF: return 3;         // ld arg; jeq/jset; ret
    case ARG_HAS_ALL_OF: return 4;                           // ld arg; and; jeq; ret
    }
    return 0;
}

// Compiles `rules` into `out`: architecture check, x32 check, then per system call a compare
// and its rules; everything else reaches the default action. Returns the length or -errno.
static int compile_allowlist(const struct syscall_rule *rules, size_t count, struct sock_filter *out, size_t capacity) {
    size_t n = 0;
#define EMIT(instruction) do { if (n == capacity) return -E2BIG; out[n++] = (instruction); } while (0)
    EMIT(STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)));
    EMIT(JUMP(BPF_JMP | BPF_JEQ | BPF_K, BH_AUDIT_ARCH, 1, 0));
    EMIT(STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
    EMIT(STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)));
#if defined(__x86_64__)
    // x32 system calls share the architecture value and set bit 30 of the number.
    EMIT(JUMP(BPF_JMP | BPF_JGE | BPF_K, __X32_SYSCALL_BIT, 0, 1));
    EMIT(STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
#endif
    for (size_t i = 0; i < count;) {
        size_t end = i;
        unsigned body = 0;
        while (end < count && rules[end].nr == rules[i].nr) body += rule_length(&rules[end++]);
        for (size_t later = end; later < count; later++) {
            if (rules[later].nr == rules[i].nr) return -EINVAL;  // rules of one call must be adjacent
        }
        int conditional = rules[end - 1].check != ANY;
        body += conditional;                                    // ret kill after the last failed check
        if (body > 255) return -E2BIG;
        EMIT(JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)rules[i].nr, 0, (uint8_t)body));
        for (size_t r = i; r < end; r++) {
            const struct syscall_rule *rule = &rules[r];
            if (rule->arg > 5) return -EINVAL;
            switch (rule->check) {
            case ANY:
                break;
            case ARG_EQUALS:
                EMIT(STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LOW(rule->arg)));
                EMIT(JUMP(BPF_JMP | BPF_JEQ | BPF_K, rule->value, 0, 1));
                break;
            case ARG_HAS_NONE_OF:
                EMIT(STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LOW(rule->arg)));
                EMIT(JUMP(BPF_JMP | BPF_JSET | BPF_K, rule->value, 1, 0));
                break;
            case ARG_HAS_ALL_OF:
                EMIT(STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LOW(rule->arg)));
                EMIT(STMT(BPF_ALU | BPF_AND | BPF_K, rule->value));
                EMIT(JUMP(BPF_JMP | BPF_JEQ | BPF_K, rule->value, 0, 1));
                break;
            }
            EMIT(STMT(BPF_RET | BPF_K, rule->action));
        }
        if (conditional) EMIT(STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
        i = end;
    }
    EMIT(STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
    return (int)n;
#undef EMIT
}

#define ALLOW(name) { __NR_##name, ANY, 0, 0, SECCOMP_RET_ALLOW }
#define ALLOW_IF(name, check, arg, value) { __NR_##name, check, arg, (uint32_t)(value), SECCOMP_RET_ALLOW }
#define FAIL(name, err) { __NR_##name, ANY, 0, 0, SECCOMP_RET_ERRNO | (err) }

// Appends `count` rules to `rules` (holding `*used` of `capacity`); false when they do not fit.
static int append_rules(struct syscall_rule *rules, size_t *used, size_t capacity,
                        const struct syscall_rule *list, size_t count) {
    if (count > capacity - *used) return 0;
    memcpy(rules + *used, list, count * sizeof *list);
    *used += count;
    return 1;
}

// What every jailed bulkhead process does besides its own work: threads of its own (no fork),
// memory that is never executable, time, stopping on a signal to itself, and paths answered as
// the empty root would. The profiles below put their hot calls first (the filter compares in
// order) and then these; no call may appear in both parts (its rules must be adjacent).
static size_t common_rules(struct syscall_rule *rules, size_t capacity, int self_pid) {
    const struct syscall_rule list[] = {
        ALLOW(close),
        ALLOW_IF(newfstatat, ARG_HAS_ALL_OF, 3, AT_EMPTY_PATH),  // fstat(fd)
        FAIL(newfstatat, ENOENT),                                // a path: the root is empty
        ALLOW_IF(fcntl, ARG_EQUALS, 1, F_GETFL),
        ALLOW_IF(fcntl, ARG_EQUALS, 1, F_SETFL),
        ALLOW_IF(fcntl, ARG_EQUALS, 1, F_GET_SEALS),
        ALLOW_IF(fcntl, ARG_EQUALS, 1, F_DUPFD_CLOEXEC),  // a queue's own copy of a frontend's kick eventfd
        // Memory: heap, thread stacks, guest memory (shared memfd mappings); never executable.
        ALLOW_IF(mmap, ARG_HAS_NONE_OF, 2, PROT_EXEC),
        ALLOW_IF(mprotect, ARG_HAS_NONE_OF, 2, PROT_EXEC),
        ALLOW(munmap),
        ALLOW(madvise),
        ALLOW(brk),
        // Threads of this process only (no fork): clone3 keeps its flags in memory the filter
        // cannot read, so glibc is told it is missing and falls back to clone.
        ALLOW_IF(clone, ARG_HAS_ALL_OF, 0, CLONE_THREAD),
        FAIL(clone3, ENOSYS),
        ALLOW(set_robust_list),
        ALLOW(rseq),
        ALLOW(rt_sigprocmask),
        ALLOW(rt_sigaction),  // glibc installs its set*id signal handler with the first thread
        ALLOW_IF(prctl, ARG_EQUALS, 0, PR_SET_NAME),
        ALLOW_IF(prctl, ARG_EQUALS, 0, PR_GET_NAME),
        ALLOW(gettid),
        ALLOW(getpid),
        // glibc's malloc reads its own CPU mask to size its arenas once a ninth thread allocates.
        ALLOW_IF(sched_getaffinity, ARG_EQUALS, 0, 0),
        ALLOW(exit),
        // Time: Thread.sleep; the vDSO answers clock reads unless the clock source has none.
        ALLOW(clock_nanosleep),
        ALLOW(clock_gettime),
        // Stopping: sigwait on the main thread; signals to this process only.
        ALLOW(rt_sigtimedwait),
        ALLOW(rt_sigreturn),
        ALLOW_IF(kill, ARG_EQUALS, 0, self_pid),
        ALLOW_IF(tgkill, ARG_EQUALS, 0, self_pid),
        ALLOW(exit_group),
        // Paths, answered as the empty root would: glibc may look for files (its malloc reads
        // /proc/sys/vm/overcommit_memory when a thread's heap shrinks) and a listener removes
        // its socket file when it stops; neither should kill the process.
        FAIL(openat, ENOENT),
#ifdef __NR_unlink
        FAIL(unlink, ENOENT),
#endif
        FAIL(unlinkat, ENOENT),
    };
    size_t used = 0;
    return append_rules(rules, &used, capacity, list, sizeof list / sizeof list[0]) ? used : 0;
}

// What `bulkhead block-server` does once its volumes are open, its sockets bound and its
// privileges dropped: serve vhost-user connections, run queue workers, log, stop. Measured with
// strace -f over the block tests and the block benchmark load (see SECURITY.md).
//
// io_uring operations do not pass through seccomp. Each queue worker's ring is restricted with
// IORING_REGISTER_RESTRICTIONS to the few I/O operations it submits, on its registered files
// only, and every ring exists before the filter is installed: io_uring_setup is not allowed.
static size_t block_server_rules(struct syscall_rule *rules, size_t capacity, int self_pid) {
    const struct syscall_rule list[] = {
        // Queue workers: submit and wait, interrupts (eventfd writes), wake-ups between threads.
        ALLOW(io_uring_enter),
        ALLOW(write),
        ALLOW(futex),
        // vhost-user connections: accept, messages with fds (SCM_RIGHTS), the guest memory
        // table (fstat for the size, F_GET_SEALS for the seals), call fds made non-blocking.
        ALLOW(recvmsg),
        // The deadline of a half-sent message (UnixStream.waitReadable): glibc's poll() is
        // poll on x86-64 and ppoll where the architecture has no poll.
#ifdef __NR_poll
        ALLOW(poll),
#endif
        ALLOW(ppoll),
        ALLOW(sendmsg),
        ALLOW(accept4),
        ALLOW(shutdown),
        ALLOW(read),  // standard input (--stop-when-stdin-closes)
        ALLOW(fstatfs),  // guest memory must be a shmem memfd (not hugetlbfs)
        // Every ring was made, restricted and enabled before the jail: no io_uring_setup (a new
        // ring would carry no restrictions). A queue's ring only swaps the frontend's kick
        // eventfd in its file table, the one register operation its restrictions leave.
        ALLOW_IF(io_uring_register, ARG_EQUALS, 1, IORING_REGISTER_FILES_UPDATE),
    };
    size_t used = 0;
    if (!append_rules(rules, &used, capacity, list, sizeof list / sizeof list[0])) return 0;
    size_t common = common_rules(rules + used, capacity - used, self_pid);
    return common == 0 ? 0 : used + common;
}

// What `bulkhead switch` does once its TAP queues are received, its rings made and its
// privileges dropped: packet workers submit and reap on their rings; the control thread reads
// the daemon's socket (end of file: stop) and sends counters over it; vhost-user-net ports
// accept connections and map guest memory. No io_uring_setup: every ring and its registered
// files exist before the jail. A worker enables its own ring (a single-issuer ring belongs to
// the thread that enables it), the one register operation left.
static size_t switch_rules(struct syscall_rule *rules, size_t capacity, int self_pid) {
    const struct syscall_rule list[] = {
        ALLOW(io_uring_enter),
        ALLOW(write),   // eventfds (wake-ups, guest interrupts) and the log
        ALLOW(read),    // eventfds (guest kicks)
        ALLOW(futex),
        ALLOW(recvmsg), // the daemon's control socket; vhost-user messages with fds
        ALLOW(sendmsg),
#ifdef __NR_poll
        ALLOW(poll),
#endif
        ALLOW(ppoll),
        ALLOW(accept4),
        ALLOW(shutdown),
        ALLOW(fstatfs),  // guest memory must be a shmem memfd (not hugetlbfs)
        ALLOW(sched_yield),
        ALLOW_IF(io_uring_register, ARG_EQUALS, 1, IORING_REGISTER_ENABLE_RINGS),
    };
    size_t used = 0;
    if (!append_rules(rules, &used, capacity, list, sizeof list / sizeof list[0])) return 0;
    size_t common = common_rules(rules + used, capacity - used, self_pid);
    return common == 0 ? 0 : used + common;
}

// The KVM requests a jailed partition makes: vCPU threads run the guest; a guest that moves a
// BAR or an MSI-X vector makes the VMM re-register doorbells (ioeventfd) and interrupts (irqfd,
// MSI routes); register reads explain a failed guest. Nothing that adds memory or vCPUs, sets
// CPUID or registers, or creates devices: all of that is done before the jail.
#define KVM_RUNTIME_IOCTLS \
        ALLOW_IF(ioctl, ARG_EQUALS, 1, KVM_RUN), \
        ALLOW_IF(ioctl, ARG_EQUALS, 1, KVM_IOEVENTFD), \
        ALLOW_IF(ioctl, ARG_EQUALS, 1, KVM_IRQFD), \
        ALLOW_IF(ioctl, ARG_EQUALS, 1, KVM_SET_GSI_ROUTING), \
        ALLOW_IF(ioctl, ARG_EQUALS, 1, KVM_SIGNAL_MSI), \
        ALLOW_IF(ioctl, ARG_EQUALS, 1, KVM_GET_REGS), \
        ALLOW_IF(ioctl, ARG_EQUALS, 1, KVM_GET_SREGS)

// What `bulkhead partition` does once /dev/kvm, its VM, its images and its backends' sockets
// are open and its privileges dropped: vCPU threads run the guest and emulate its devices;
// vhost-user messages go to the block server and the switch (started queues, resets); the
// serial console goes to its log; the main thread waits for a signal or the daemon's end of
// file. No new sockets, files, mappings with PROT_EXEC, or io_uring.
static size_t partition_rules(struct syscall_rule *rules, size_t capacity, int self_pid) {
    const struct syscall_rule list[] = {
        KVM_RUNTIME_IOCTLS,
        ALLOW(write),    // the serial log, eventfds
        ALLOW(read),     // standard input (the lifeline), eventfds
        ALLOW(futex),
        ALLOW(recvmsg),  // vhost-user replies
        ALLOW(sendmsg),  // vhost-user requests with their eventfds and the guest memory fd
#ifdef __NR_poll
        ALLOW(poll),
#endif
        ALLOW(ppoll),
        ALLOW(shutdown),
        ALLOW(sched_yield),
        // Each vCPU thread stacks its own filter: a further filter only ever takes calls away.
        ALLOW_IF(seccomp, ARG_EQUALS, 0, SECCOMP_SET_MODE_FILTER),
        // A device whose backend went away reconnects when the guest resets it; in the jail no
        // socket path is reachable, so that attempt fails (the device stays broken until the
        // supervisor restarts the partition) instead of killing the process.
        FAIL(socket, EACCES),
    };
    size_t used = 0;
    if (!append_rules(rules, &used, capacity, list, sizeof list / sizeof list[0])) return 0;
    size_t common = common_rules(rules + used, capacity - used, self_pid);
    return common == 0 ? 0 : used + common;
}

// Stacked on the partition's filter by each vCPU thread, the code a guest talks to: no new
// threads (clone), no thread renaming, no signals but to itself, no descriptor tricks (fcntl),
// no path lookups at all. What remains is running the guest and what its device accesses need.
static size_t vcpu_rules(struct syscall_rule *rules, size_t capacity, int self_pid) {
    const struct syscall_rule list[] = {
        KVM_RUNTIME_IOCTLS,
        ALLOW(write),
        ALLOW(read),
        ALLOW(futex),
        ALLOW(recvmsg),
        ALLOW(sendmsg),
#ifdef __NR_poll
        ALLOW(poll),
#endif
        ALLOW(ppoll),
        ALLOW(close),    // a reset device's eventfds
        ALLOW_IF(mmap, ARG_HAS_NONE_OF, 2, PROT_EXEC),  // the allocator
        ALLOW_IF(mprotect, ARG_HAS_NONE_OF, 2, PROT_EXEC),
        ALLOW(munmap),
        ALLOW(madvise),
        ALLOW(brk),
        ALLOW(rt_sigprocmask),
        ALLOW(rt_sigreturn),
        ALLOW(gettid),
        ALLOW(getpid),
        ALLOW_IF(sched_getaffinity, ARG_EQUALS, 0, 0),  // glibc's malloc, as in common_rules
        ALLOW(clock_gettime),
        ALLOW(clock_nanosleep),
        ALLOW(sched_yield),
        ALLOW_IF(tgkill, ARG_EQUALS, 0, self_pid),
        ALLOW(exit),
        ALLOW(exit_group),
        FAIL(openat, ENOENT),  // glibc's malloc may read /proc/sys/vm/overcommit_memory
        FAIL(socket, EACCES),  // a device's reconnect (see partition_rules)
    };
    size_t used = 0;
    return append_rules(rules, &used, capacity, list, sizeof list / sizeof list[0]) ? used : 0;
}

int bh_seccomp_install(bh_seccomp_profile profile, int self_pid, const char **step) {
    struct syscall_rule rules[128];
    size_t count = 0;
    *step = "seccomp profile";
    switch (profile) {
    case BH_SECCOMP_BLOCK_SERVER: count = block_server_rules(rules, 128, self_pid); break;
    case BH_SECCOMP_SWITCH: count = switch_rules(rules, 128, self_pid); break;
    case BH_SECCOMP_PARTITION: count = partition_rules(rules, 128, self_pid); break;
    case BH_SECCOMP_VCPU_THREAD: count = vcpu_rules(rules, 128, self_pid); break;
    }
    if (count == 0) return -EINVAL;
    struct sock_filter filter[MAX_FILTER];
    *step = "seccomp filter compilation";
    int length = compile_allowlist(rules, count, filter, MAX_FILTER);
    if (length < 0) return length;
    struct sock_fprog program = { .len = (unsigned short)length, .filter = filter };
    // TSYNC: every thread gets the filter, or none does and the call fails. A vCPU thread's
    // filter is its own: it stacks on the process's for that thread only.
    int thread_only = profile == BH_SECCOMP_VCPU_THREAD;
    *step = thread_only ? "seccomp(SECCOMP_SET_MODE_FILTER)" : "seccomp(SECCOMP_SET_MODE_FILTER, TSYNC)";
    long r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, thread_only ? 0 : SECCOMP_FILTER_FLAG_TSYNC, &program);
    if (r < 0) return -errno;
    if (r > 0) return -EBUSY;  // thread r could not be synchronized
    *step = "";
    return 0;
}

int bh_accept_cloexec(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC); }

int bh_memfd_create(const char *name, int hugetlb) {
    return memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING | (hugetlb ? MFD_HUGETLB : 0));
}

int bh_memfd_seal_size(int fd) {
    return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0 ? -errno : 0;
}

int bh_is_sealed_against_shrinking(int fd) {
    int seals = fcntl(fd, F_GET_SEALS);
    return seals >= 0 && (seals & F_SEAL_SHRINK) ? 1 : 0;
}

extern char **environ;

int bh_spawn(const char *path, char *const argv[], int stdin_fd, int *pid) {
    posix_spawn_file_actions_t actions;
    int r = posix_spawn_file_actions_init(&actions);
    if (r != 0) return -r;
    // dup2 onto 0 clears close-on-exec there; then everything from 3 up goes, including
    // descriptors some library left without close-on-exec.
    if ((r = posix_spawn_file_actions_adddup2(&actions, stdin_fd, 0)) == 0) {
        r = posix_spawn_file_actions_addclosefrom_np(&actions, 3);
    }
    if (r == 0) {
        pid_t child = 0;
        r = posix_spawn(&child, path, &actions, NULL, argv, environ);
        if (r == 0) *pid = child;
    }
    posix_spawn_file_actions_destroy(&actions);
    return -r;
}

int bh_wait_child(int pid, int *exited, int *code) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) return -errno;
    }
    if (WIFEXITED(status)) { *exited = 1; *code = WEXITSTATUS(status); }
    else { *exited = 0; *code = WIFSIGNALED(status) ? WTERMSIG(status) : 0; }
    return 0;
}


// clone3's argument block, version 2 (Linux 5.7: the `cgroup` field); glibc 2.36 has no clone3
// wrapper nor the struct, and <linux/sched.h> clashes with <sched.h>.
struct bh_clone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
             set_tid, set_tid_size, cgroup;
};
_Static_assert(sizeof(struct bh_clone_args) == 88, "CLONE_ARGS_SIZE_VER2");
#define BH_CLONE_INTO_CGROUP 0x200000000ULL
const int bh_O_PATH = O_PATH;

// The kernel's own sigaction layout: glibc's sigaction refuses its internal signals.
struct bh_kernel_sigaction { void *handler; unsigned long flags; void *restorer; uint64_t mask; };

// The child of bh_spawn_in_cgroup, in a copy of the parent's memory with every signal blocked:
// redo what glibc's posix_spawn child does, then execve. Only async-signal-safe calls (the
// parent is multithreaded). On failure the errno goes up the report pipe; exit status 127 is
// posix_spawn's too.
static void bh_spawn_child(const char *path, char *const argv[], int stdin_fd, int report,
                           const sigset_t *mask) {
    int err;
    // The report pipe must outlive the dup2 onto 0 below (it is 0 when the parent had no stdin).
    if (report < 3) {
        int moved = fcntl(report, F_DUPFD_CLOEXEC, 3);
        if (moved < 0) goto fail;
        report = moved;
    }
    // Handlers belong to the parent: caught signals go back to SIG_DFL, ignored ones stay
    // ignored, and glibc's two internal signals (SIGCANCEL, SIGSETXID) are ignored, as its
    // posix_spawn leaves them.
    for (int sig = 1; sig < _NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        if (sig == 32 || sig == 33) {
            struct bh_kernel_sigaction ignore = { SIG_IGN, 0, NULL, 0 };
            syscall(SYS_rt_sigaction, sig, &ignore, NULL, sizeof ignore.mask);
            continue;
        }
        struct sigaction sa;
        if (sigaction(sig, NULL, &sa) != 0) continue;
        if (sa.sa_handler == SIG_IGN || sa.sa_handler == SIG_DFL) continue;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_DFL;
        sigaction(sig, &sa, NULL);
    }
    // posix_spawn's file actions: dup2(stdin_fd, 0) (clearing close-on-exec when stdin_fd is
    // 0 already, as glibc does), then closefrom(3): here by marking 3 and up close-on-exec, so
    // the report pipe stays open until execve succeeds and closes it with the rest.
    if (stdin_fd == 0) {
        int flags = fcntl(0, F_GETFD);
        if (flags < 0 || fcntl(0, F_SETFD, flags & ~FD_CLOEXEC) < 0) goto fail;
    } else if (dup2(stdin_fd, 0) < 0) {
        goto fail;
    }
    if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) < 0) goto fail;
    sigprocmask(SIG_SETMASK, mask, NULL);
    execve(path, argv, environ);
fail:
    err = errno;
    while (write(report, &err, sizeof err) < 0 && errno == EINTR) {}
    _exit(127);
}

int bh_spawn_in_cgroup(const char *path, char *const argv[], int stdin_fd, int cgroup_fd, int *pid) {
    if (cgroup_fd < 0) return -EBADF;
    int report[2];
    if (pipe2(report, O_CLOEXEC) < 0) return -errno;
    // No handler may run in the child before it has reset them (posix_spawn blocks them too).
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    struct bh_clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = BH_CLONE_INTO_CGROUP;
    args.exit_signal = SIGCHLD;
    args.cgroup = (uint64_t)cgroup_fd;
    long child = syscall(SYS_clone3, &args, sizeof args);
    if (child == 0) bh_spawn_child(path, argv, stdin_fd, report[1], &old);
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(report[1]);
    if (child < 0) {
        close(report[0]);
        return -clone_errno;
    }
    // End of file: execve succeeded (it closed the pipe); an int: the child's errno.
    int child_errno = 0;
    ssize_t n;
    do { n = read(report[0], &child_errno, sizeof child_errno); } while (n < 0 && errno == EINTR);
    close(report[0]);
    if (n == (ssize_t)sizeof child_errno) {
        // Reap it, as posix_spawn does with a child that failed before execve.
        while (waitpid((pid_t)child, NULL, 0) < 0 && errno == EINTR) {}
        return -(child_errno ? child_errno : ECHILD);
    }
    *pid = (int)child;
    return 0;
}

int bh_steer_vxlan(int fd, const uint32_t *vnis, const uint32_t *members, size_t count) {
    if (count > 2000) return -E2BIG;
    size_t length = 3 + 2 * count;
    struct sock_filter *filter = calloc(length, sizeof(struct sock_filter));
    if (!filter) return -ENOMEM;
    size_t n = 0;
    /* A reuseport program sees the UDP payload: the kernel pulls the UDP header first. A load
       past the end of a short datagram ends the program with 0 (member 0). */
    filter[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 4);
    filter[n++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, 8);
    for (size_t i = 0; i < count; i++) {
        filter[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, vnis[i], 0, 1);
        filter[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, members[i]);
    }
    filter[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, 0);
    struct sock_fprog program = { .len = (unsigned short)n, .filter = filter };
    int result = setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &program, sizeof program);
    int error = errno;
    free(filter);
    return result == 0 ? 0 : -error;
}
