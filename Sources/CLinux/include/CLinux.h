#ifndef BULKHEAD_CLINUX_H
#define BULKHEAD_CLINUX_H
// Linux constants and helpers Swift cannot import (function-like macros, variadic ioctl).
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

// TUN/TAP ioctl requests and flags (linux/if_tun.h).
extern const unsigned long bh_TUNSETIFF;
extern const unsigned long bh_TUNSETOFFLOAD;
extern const unsigned long bh_TUNSETVNETHDRSZ;
extern const unsigned long bh_TUNGETIFF;
extern const int bh_IFF_TAP;
extern const int bh_IFF_NO_PI;
extern const int bh_IFF_VNET_HDR;
extern const int bh_IFF_MULTI_QUEUE;
extern const unsigned int bh_TUN_F_CSUM;
extern const unsigned int bh_TUN_F_TSO4;
extern const unsigned int bh_TUN_F_TSO6;
extern const unsigned int bh_TUN_F_TSO_ECN;

/// Opens /dev/net/tun and attaches it to TAP device `name` with `flags`
/// (IFF_TAP | IFF_NO_PI | ...). Returns the fd, or -errno. The kernel's chosen
/// name is written to `actual_name` (IFNAMSIZ bytes).
int bh_tap_open(const char *name, int flags, char *actual_name);

/// ioctl with an integer argument. Returns 0 or -errno.
int bh_ioctl_int(int fd, unsigned long request, unsigned long arg);
/// ioctl with a pointer argument. Returns 0 or -errno.
int bh_ioctl_ptr(int fd, unsigned long request, void *arg);

/// Creates the named network namespace at /run/netns/<name> the way `ip netns add` does
/// (a fresh namespace bind-mounted on that path). Returns 0, -EEXIST, or -errno.
int bh_netns_create(const char *name);
/// Unmounts and removes /run/netns/<name>. Returns 0 or -errno.
int bh_netns_delete(const char *name);
/// Opens /run/netns/<name> read-only. Returns the fd or -errno.
int bh_netns_open(const char *name);
/// Enters the network namespace `nsfd` on the calling thread. Returns 0 or -errno.
int bh_setns_net(int nsfd);

/// Takes an exclusive, non-blocking flock on `fd`. Returns 0, -EWOULDBLOCK, or -errno.
int bh_flock_exclusive(int fd);

/// eventfd(0, EFD_CLOEXEC); returns the fd or -1 with errno set.
int bh_eventfd(int nonblocking, int semaphore);
/// 1 when `fd`'s file lives in shmem (TMPFS_MAGIC: tmpfs, memfds without MFD_HUGETLB), 0 when
/// not, -errno when fstatfs fails.
int bh_is_shmem(int fd);
/// Ignores SIGXFSZ, so a write past RLIMIT_FSIZE fails with EFBIG. Returns 0 or -errno.
int bh_ignore_file_size_signal(void);

/// Opens `path` relative to the directory `dirfd` with openat2(2) and RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV: no `..` escape, no symlink
/// (of any component), no mount crossing. Returns the fd or -errno.
int bh_openat_beneath(int dirfd, const char *path, int flags, unsigned mode);

/// fallocate(2) modes used by the block backend.
extern const int bh_FALLOC_PUNCH_HOLE;   // FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
extern const int bh_FALLOC_ZERO_RANGE;   // FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
/// fallocate(2). Returns 0 or -errno.
int bh_fallocate(int fd, int mode, uint64_t offset, uint64_t length);
/// O_DIRECT, which Swift's Glibc module does not export.
extern const int bh_O_DIRECT;

/// Drops the process's privileges for good (every thread): no supplementary groups, uid/gid
/// set to `uid`/`gid` (which clears every capability), no new privileges, not dumpable.
/// Returns 0 or -errno (the step that failed is in *step).
int bh_jail(unsigned uid, unsigned gid, const char **step);

/// The calling process's thread count (from /proc/self/task), or -errno.
int bh_thread_count(void);
/// Finds the lowest open fd that refers to a directory (O_PATH fds included): stores it in
/// *fd, or -1 when there is none. Returns 0, or -errno when /proc/self/fd cannot be read.
int bh_first_directory_fd(int *fd);

/// Moves the calling process (single-threaded: namespaces and the root are per thread until a
/// thread is created) into new mount, network, IPC and UTS namespaces whose root is an empty,
/// read-only tmpfs, mounted on `mount_point` in the new mount namespace only and pivoted to.
/// The old mount tree is detached: no path leads back to the host's files. Needs
/// CAP_SYS_ADMIN. Returns 0 or -errno (the step that failed is in *step).
int bh_jail_isolate(const char *mount_point, const char **step);

/// The system-call profiles `bh_seccomp_install` knows.
typedef enum {
    /// `bulkhead block-server` once its volumes are open and its sockets bound.
    BH_SECCOMP_BLOCK_SERVER = 1,
    /// `bulkhead switch`: packet workers on io_uring, its control socket, vhost-user-net ports.
    BH_SECCOMP_SWITCH = 2,
    /// `bulkhead partition` once /dev/kvm, its images and its backends' sockets are open.
    BH_SECCOMP_PARTITION = 3,
    /// Stacked by each of a partition's vCPU threads on BH_SECCOMP_PARTITION, for that thread only.
    BH_SECCOMP_VCPU_THREAD = 4,
} bh_seccomp_profile;

/// Installs the seccomp-BPF allowlist `profile` on every thread of the process (TSYNC; the calling
/// thread only for BH_SECCOMP_VCPU_THREAD):
/// system calls outside it kill the process. `self_pid` is the process's pid, the only target
/// `kill` and `tgkill` may name. Needs no_new_privs (bh_jail sets it). Returns 0 or -errno (the
/// step that failed is in *step).
int bh_seccomp_install(bh_seccomp_profile profile, int self_pid, const char **step);

/// accept4(fd, NULL, NULL, SOCK_CLOEXEC): returns the new fd or -1 with errno set.
int bh_accept_cloexec(int fd);
/// memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING): returns the fd or -1 with errno set.
int bh_memfd_create(const char *name, int hugetlb);
/// Seals a memfd against shrinking and growing (F_SEAL_SHRINK | F_SEAL_GROW). Returns 0 or -errno.
int bh_memfd_seal_size(int fd);
/// Whether `fd` is sealed against shrinking: 1 yes, 0 no (or not a sealable file).
int bh_is_sealed_against_shrinking(int fd);

/// Starts `path` with `argv` (NULL-terminated) and the caller's environment, with `stdin_fd` as
/// its standard input, its standard output and error inherited, and every other descriptor
/// closed in the child (whatever its close-on-exec flag says): a child gets nothing of the
/// daemon's but what it is handed. Stores the pid. Returns 0 or -errno.
int bh_spawn(const char *path, char *const argv[], int stdin_fd, int *pid);

/// bh_spawn's twin that starts the child inside the cgroup v2 group `cgroup_fd` (an O_PATH or
/// O_RDONLY descriptor of the group's directory) with clone3(CLONE_INTO_CGROUP): the child is
/// charged to the group from its first instruction, so nothing it allocates escapes the
/// group's limits. Same descriptors, signal mask, signal dispositions and error reporting as
/// bh_spawn (posix_spawn without attributes), but with fork's copy-on-write memory instead of a
/// shared-memory vfork. Stores the pid. Returns 0 or -errno (of clone3, or of the child's setup
/// or execve).
int bh_spawn_in_cgroup(const char *path, char *const argv[], int stdin_fd, int cgroup_fd, int *pid);
/// O_PATH (a _GNU_SOURCE flag Swift's Glibc module leaves out): a descriptor that names a file
/// without opening it for I/O, enough for openat and CLONE_INTO_CGROUP.
extern const int bh_O_PATH;

/// waitpid(pid, &status, 0), retried on EINTR. Returns 0 and sets *exited (1 normal exit, 0 a
/// signal) and *code (exit status or signal number), or -errno.
int bh_wait_child(int pid, int *exited, int *code);

/// Names the calling thread (at most 15 bytes), as top and ps show it. Returns 0 or -errno.
int bh_set_thread_name(const char *name);

/// Returns CLOCK_MONOTONIC in nanoseconds.
uint64_t bh_monotonic_ns(void);

/// Installs, on the SO_REUSEPORT group of UDP socket `fd`, a classic BPF program that sends a
/// datagram whose VXLAN VNI (bits 8..31 of the payload's second 32-bit word) is `vnis[i]` to the
/// group's member `members[i]`, and every other datagram (other VNIs, or shorter than 8 bytes)
/// to member 0. At most 2000 entries. Returns 0 or -errno.
int bh_steer_vxlan(int fd, const uint32_t *vnis, const uint32_t *members, size_t count);


#endif
