// Probes a bulkhead seccomp profile from inside: installs the profile exactly as the jailed
// process does (CLinux.c is compiled in), then makes one system call named on the command line
// and prints its result. A call outside the allowlist never returns: the kernel kills the
// process with SIGSYS, which the test sees as the exit reason.
//
//   seccomp-probe switch|block-server|partition|vcpu CALL
//
// `vcpu` installs the partition profile and then stacks the vCPU thread's on it, as a vCPU thread does.
#define _GNU_SOURCE
#include "CLinux.h"
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/kvm.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static long probe(const char *call) {
    if (!strcmp(call, "getpid")) return syscall(SYS_getpid);
    if (!strcmp(call, "openat")) return syscall(SYS_openat, AT_FDCWD, "/etc/passwd", O_RDONLY);
    if (!strcmp(call, "socket")) return syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
    if (!strcmp(call, "socket-unix")) return syscall(SYS_socket, AF_UNIX, SOCK_STREAM, 0);
    if (!strcmp(call, "connect")) return syscall(SYS_connect, 0, NULL, 0);
    if (!strcmp(call, "io_uring_setup")) {
        struct io_uring_params params;
        memset(&params, 0, sizeof params);
        return syscall(SYS_io_uring_setup, 8, &params);
    }
    if (!strcmp(call, "io_uring_register-files")) return syscall(SYS_io_uring_register, 0, IORING_REGISTER_FILES, NULL, 0);
    if (!strcmp(call, "fork")) return syscall(SYS_clone, SIGCHLD, 0, NULL, NULL, 0);
    if (!strcmp(call, "execve")) return syscall(SYS_execve, "/bin/true", NULL, NULL);
    if (!strcmp(call, "ptrace")) return syscall(SYS_ptrace, PTRACE_TRACEME, 0, NULL, NULL);
    if (!strcmp(call, "unshare")) return syscall(SYS_unshare, CLONE_NEWNET);
    if (!strcmp(call, "mount")) return syscall(SYS_mount, "none", "/", "tmpfs", 0, NULL);
    if (!strcmp(call, "setuid")) return syscall(SYS_setuid, 0);
    if (!strcmp(call, "kill-1")) return syscall(SYS_kill, 1, 0);
    if (!strcmp(call, "mmap-exec")) return syscall(SYS_mmap, NULL, 4096, 7, 0x22, -1, 0);
    if (!strcmp(call, "bpf")) return syscall(SYS_bpf, 0, NULL, 0);
    if (!strcmp(call, "open_by_handle_at")) return syscall(SYS_open_by_handle_at, 0, NULL, 0);
    if (!strcmp(call, "memfd_create")) return syscall(SYS_memfd_create, "x", 0);
    if (!strcmp(call, "ioctl")) return syscall(SYS_ioctl, 0, 0x5401, NULL);
    // KVM requests on a descriptor that is no VM: an allowed one fails with EBADF, a forbidden one kills.
    if (!strcmp(call, "kvm-run")) return syscall(SYS_ioctl, -1, KVM_RUN, 0);
    if (!strcmp(call, "kvm-irqfd")) return syscall(SYS_ioctl, -1, KVM_IRQFD, NULL);
    if (!strcmp(call, "kvm-create-vm")) return syscall(SYS_ioctl, -1, KVM_CREATE_VM, 0);
    if (!strcmp(call, "kvm-create-vcpu")) return syscall(SYS_ioctl, -1, KVM_CREATE_VCPU, 0);
    if (!strcmp(call, "kvm-set-memory")) return syscall(SYS_ioctl, -1, KVM_SET_USER_MEMORY_REGION, NULL);
    if (!strcmp(call, "kvm-set-regs")) return syscall(SYS_ioctl, -1, KVM_SET_REGS, NULL);
    if (!strcmp(call, "kvm-set-cpuid")) return syscall(SYS_ioctl, -1, KVM_SET_CPUID2, NULL);
    if (!strcmp(call, "prctl-name")) return syscall(SYS_prctl, PR_SET_NAME, "probe", 0, 0, 0);
    // glibc's malloc asks for its own CPU mask (pid 0); another process's is not its business.
    if (!strcmp(call, "sched_getaffinity-self")) { cpu_set_t set; return syscall(SYS_sched_getaffinity, 0, sizeof set, &set); }
    if (!strcmp(call, "sched_getaffinity-1")) { cpu_set_t set; return syscall(SYS_sched_getaffinity, 1, sizeof set, &set); }
    if (!strcmp(call, "fcntl-dup")) return syscall(SYS_fcntl, 0, F_DUPFD_CLOEXEC, 10);
    fprintf(stderr, "unknown call %s\n", call);
    return -2;
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    bh_seccomp_profile profile;
    if (!strcmp(argv[1], "switch")) profile = BH_SECCOMP_SWITCH;
    else if (!strcmp(argv[1], "block-server")) profile = BH_SECCOMP_BLOCK_SERVER;
    else if (!strcmp(argv[1], "partition") || !strcmp(argv[1], "vcpu")) profile = BH_SECCOMP_PARTITION;
    else return 2;
    // What the real processes did before their jail: the allocator is set up (glibc seeds it
    // with getrandom on first use) and the output unbuffered.
    free(malloc(64));
    setvbuf(stdout, NULL, _IONBF, 0);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return 3;
    const char *step = "";
    int r = bh_seccomp_install(profile, getpid(), &step);
    if (r < 0) { fprintf(stderr, "%s: %s\n", step, strerror(-r)); return 4; }
    if (!strcmp(argv[1], "vcpu")) {
        r = bh_seccomp_install(BH_SECCOMP_VCPU_THREAD, getpid(), &step);
        if (r < 0) { fprintf(stderr, "%s: %s\n", step, strerror(-r)); return 4; }
    }
    errno = 0;
    long result = probe(argv[2]);
    printf("%ld %d\n", result, result < 0 ? errno : 0);
    fflush(stdout);
    return 0;
}
