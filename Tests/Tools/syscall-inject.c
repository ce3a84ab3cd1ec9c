// Makes a running process execute one system call of the test's choosing, as code that took
// over the process would: the attack tests use it to probe a jailed child from inside (a
// forbidden call must kill it by its seccomp policy; an allocation without bound must be held
// by its cgroup).
//
//   syscall-inject PID NR [ARG0 ... ARG5]
//
// The thread PID is stopped with ptrace while it waits in a system call (the daemon's children
// spend their idle time in one), so the two bytes before its instruction pointer are a
// `syscall` instruction: the registers are set to NR and the arguments, the instruction pointer
// is moved back onto it, and the thread is let go. Prints what it did; x86-64 only.
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>

int main(int argc, char **argv) {
    if (argc < 3 || argc > 9) {
        fprintf(stderr, "usage: %s PID NR [ARG0 ... ARG5]\n", argv[0]);
        return 2;
    }
    pid_t pid = (pid_t)strtol(argv[1], NULL, 10);
    long number = strtol(argv[2], NULL, 0);
    unsigned long long args[6] = {0};
    for (int i = 3; i < argc; i++) args[i - 3] = strtoull(argv[i], NULL, 0);

    if (ptrace(PTRACE_SEIZE, pid, 0, 0) != 0) { perror("PTRACE_SEIZE"); return 1; }
    if (ptrace(PTRACE_INTERRUPT, pid, 0, 0) != 0) { perror("PTRACE_INTERRUPT"); return 1; }
    int status = 0;
    if (waitpid(pid, &status, __WALL) != pid) { perror("waitpid"); return 1; }
    struct user_regs_struct regs;
    if (ptrace(PTRACE_GETREGS, pid, 0, &regs) != 0) { perror("PTRACE_GETREGS"); return 1; }
    errno = 0;
    long word = ptrace(PTRACE_PEEKTEXT, pid, (void *)(regs.rip - 2), 0);
    if (errno != 0) { perror("PTRACE_PEEKTEXT"); return 1; }
    if ((word & 0xffff) != 0x050f) {
        fprintf(stderr, "thread %d is not stopped after a syscall instruction (rip %llx)\n", pid, regs.rip);
        ptrace(PTRACE_DETACH, pid, 0, 0);
        return 1;
    }
    regs.rip -= 2;
    regs.rax = (unsigned long long)number;
    regs.orig_rax = (unsigned long long)-1;  // no restart of the interrupted call
    regs.rdi = args[0]; regs.rsi = args[1]; regs.rdx = args[2];
    regs.r10 = args[3]; regs.r8 = args[4]; regs.r9 = args[5];
    if (ptrace(PTRACE_SETREGS, pid, 0, &regs) != 0) { perror("PTRACE_SETREGS"); return 1; }
    if (ptrace(PTRACE_DETACH, pid, 0, 0) != 0) { perror("PTRACE_DETACH"); return 1; }
    printf("thread %d made to call system call %ld\n", pid, number);
    return 0;
}
