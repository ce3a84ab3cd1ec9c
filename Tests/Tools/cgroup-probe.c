// The child of Tests/HostOSTests/CGroupTests.swift: one behaviour per mode, talking to the test
// over its stdin (a socket pair, so fd 0 is read and written).
//
//   hog       touches memory 1 MiB at a time; exits 3 after CGROUP_PROBE_HOG_MIB (default 512)
//             MiB, which a working memory.max never lets it reach
//   echo      answers each line it reads with the same line, until end of file
//   forkloop  forks children that wait for its stdin to close until fork fails, then writes
//             "<children> <errno>" and waits for end of file itself
//   cgroup    writes its /proc/self/cgroup "0::" line
//   state     writes its open descriptors and its signal mask and dispositions (the SigBlk,
//             SigIgn and SigCgt lines of /proc/self/status)
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void say(const char *text) {
    size_t length = strlen(text);
    while (length > 0) {
        ssize_t n = write(0, text, length);
        if (n < 0) { if (errno == EINTR) continue; exit(4); }
        text += n;
        length -= (size_t)n;
    }
}

static void wait_for_eof(void) {
    char byte;
    while (read(0, &byte, 1) != 0) {}
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    const char *mode = argv[1];
    char line[4096];
    if (strcmp(mode, "hog") == 0) {
        const char *limit = getenv("CGROUP_PROBE_HOG_MIB");
        long mib = limit ? atol(limit) : 512;
        for (long i = 0; i < mib; i++) {
            char *chunk = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (chunk == MAP_FAILED) return 5;
            memset(chunk, 0x5a, 1 << 20);
        }
        return 3;
    }
    if (strcmp(mode, "echo") == 0) {
        for (;;) {
            ssize_t n = read(0, line, sizeof line);
            if (n == 0) return 0;
            if (n < 0) { if (errno == EINTR) continue; return 4; }
            if (write(0, line, (size_t)n) != n) return 4;
        }
    }
    if (strcmp(mode, "forkloop") == 0) {
        int children = 0;
        for (;;) {
            pid_t pid = fork();
            if (pid == 0) { wait_for_eof(); _exit(0); }
            if (pid < 0) break;
            children++;
        }
        int failure = errno;
        snprintf(line, sizeof line, "%d %d\n", children, failure);
        say(line);
        wait_for_eof();
        return 0;
    }
    if (strcmp(mode, "cgroup") == 0) {
        FILE *f = fopen("/proc/self/cgroup", "r");
        if (!f) return 5;
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "0::", 3) == 0) say(line);
        }
        fclose(f);
        return 0;
    }
    if (strcmp(mode, "state") == 0) {
        DIR *dir = opendir("/proc/self/fd");
        if (!dir) return 5;
        say("fds:");
        struct dirent *entry;
        while ((entry = readdir(dir))) {
            if (entry->d_name[0] == '.' || atoi(entry->d_name) == dirfd(dir)) continue;
            say(" ");
            say(entry->d_name);
        }
        closedir(dir);
        say("\n");
        FILE *f = fopen("/proc/self/status", "r");
        if (!f) return 5;
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "SigBlk:", 7) == 0 || strncmp(line, "SigIgn:", 7) == 0 || strncmp(line, "SigCgt:", 7) == 0) say(line);
        }
        fclose(f);
        return 0;
    }
    return 2;
}
