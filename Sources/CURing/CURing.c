// glibc's <sys/select.h> must come before <liburing.h>: liburing sets feature macros that
// otherwise change fd_set's definition from the one Swift's Glibc module saw.
#include <sys/select.h>
#include <liburing.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "CURing.h"

struct bh_ring { struct io_uring ring; struct __kernel_timespec timeout; };

const unsigned BH_SETUP_R_DISABLED = IORING_SETUP_R_DISABLED;
const unsigned BH_SETUP_SUBMIT_ALL = IORING_SETUP_SUBMIT_ALL;
const unsigned BH_SETUP_COOP_TASKRUN = IORING_SETUP_COOP_TASKRUN;
const unsigned BH_SETUP_SINGLE_ISSUER = IORING_SETUP_SINGLE_ISSUER;
const unsigned BH_SETUP_DEFER_TASKRUN = IORING_SETUP_DEFER_TASKRUN;

// liburing 2.3's shared library lacks io_uring_enable_rings; the syscall is simple enough.
int bh_ring_enable(bh_ring *r) {
    int ret = (int)syscall(__NR_io_uring_register, r->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0);
    return ret < 0 ? -errno : 0;
}

bh_ring *bh_ring_create(unsigned entries, unsigned flags, int *err) {
    bh_ring *r = calloc(1, sizeof *r);
    if (!r) { *err = -ENOMEM; return NULL; }
    int ret = io_uring_queue_init(entries, &r->ring, flags);
    if (ret < 0) { free(r); *err = ret; return NULL; }
    *err = 0;
    return r;
}

void bh_ring_destroy(bh_ring *r) {
    if (!r) return;
    io_uring_queue_exit(&r->ring);
    free(r);
}

int bh_ring_register_files(bh_ring *r, const int *fds, unsigned count) {
    return io_uring_register_files(&r->ring, fds, count);
}

int bh_ring_update_file(bh_ring *r, unsigned slot, int fd) {
    int ret = io_uring_register_files_update(&r->ring, slot, &fd, 1);
    return ret < 0 ? ret : 0;
}

unsigned bh_ring_sq_space(bh_ring *r) { return io_uring_sq_space_left(&r->ring); }

static struct io_uring_sqe *sqe_for(bh_ring *r) { return io_uring_get_sqe(&r->ring); }

// Operations that use no file (timeouts, cancellations) still carry IOSQE_FIXED_FILE: a ring
// restricted with IORING_RESTRICTION_SQE_FLAGS_REQUIRED refuses (-EACCES) any SQE without it,
// and the kernel ignores the flag for operations that take no file.
#define FILELESS_FIXED 1

static void finish(struct io_uring_sqe *sqe, int fixed_file, uint64_t user_data) {
    if (fixed_file) sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, user_data);
}

int bh_ring_prep_read(bh_ring *r, int fd, int fixed, void *buf, unsigned len, int64_t off, uint64_t ud) {
    struct io_uring_sqe *sqe = sqe_for(r);
    if (!sqe) return -EBUSY;
    io_uring_prep_read(sqe, fd, buf, len, (__u64)off);
    finish(sqe, fixed, ud);
    return 0;
}

int bh_ring_prep_write(bh_ring *r, int fd, int fixed, const void *buf, unsigned len, int64_t off, uint64_t ud) {
    struct io_uring_sqe *sqe = sqe_for(r);
    if (!sqe) return -EBUSY;
    io_uring_prep_write(sqe, fd, buf, len, (__u64)off);
    finish(sqe, fixed, ud);
    return 0;
}

int bh_ring_prep_readv(bh_ring *r, int fd, int fixed, const void *iov, unsigned n, int64_t off, uint64_t ud) {
    struct io_uring_sqe *sqe = sqe_for(r);
    if (!sqe) return -EBUSY;
    io_uring_prep_readv(sqe, fd, (const struct iovec *)iov, n, (__u64)off);
    finish(sqe, fixed, ud);
    return 0;
}

int bh_ring_prep_writev(bh_ring *r, int fd, int fixed, const void *iov, unsigned n, int64_t off, uint64_t ud) {
    struct io_uring_sqe *sqe = sqe_for(r);
    if (!sqe) return -EBUSY;
    io_uring_prep_writev(sqe, fd, (const struct iovec *)iov, n, (__u64)off);
    finish(sqe, fixed, ud);
    return 0;
}

int bh_ring_prep_fsync(bh_ring *r, int fd, int fixed, int datasync, uint64_t ud) {
    struct io_uring_sqe *sqe = sqe_for(r);
    if (!sqe) return -EBUSY;
    io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
    finish(sqe, fixed, ud);
    return 0;
}

int bh_ring_prep_sendmsg(bh_ring *r, int fd, int fixed, const void *msg, unsigned flags, uint64_t ud) {
    struct io_uring_sqe *sqe = sqe_for(r);
    if (!sqe) return -EBUSY;
    io_uring_prep_sendmsg(sqe, fd, (const struct msghdr *)msg, flags);
    finish(sqe, fixed, ud);
    return 0;
}

int bh_ring_prep_recvmsg(bh_ring *r, int fd, int fixed, void *msg, unsigned flags, uint64_t ud) {
    struct io_uring_sqe *sqe = sqe_for(r);
    if (!sqe) return -EBUSY;
    io_uring_prep_recvmsg(sqe, fd, (struct msghdr *)msg, flags);
    finish(sqe, fixed, ud);
    return 0;
}

const uint32_t BH_CQE_F_MORE = IORING_CQE_F_MORE;

int bh_ring_prep_poll_multishot(bh_ring *r, int fd, int fixed, unsigned mask, uint64_t ud) {
    struct io_uring_sqe *sqe = sqe_for(r);
    if (!sqe) return -EBUSY;
    io_uring_prep_poll_multishot(sqe, fd, mask);
    finish(sqe, fixed, ud);
    return 0;
}

int bh_ring_prep_poll(bh_ring *r, int fd, int fixed, unsigned mask, uint64_t ud) {
    struct io_uring_sqe *sqe = sqe_for(r);
    if (!sqe) return -EBUSY;
    io_uring_prep_poll_add(sqe, fd, mask);
    finish(sqe, fixed, ud);
    return 0;
}

int bh_ring_prep_nop(bh_ring *r, uint64_t ud) {
    struct io_uring_sqe *sqe = sqe_for(r);
    if (!sqe) return -EBUSY;
    io_uring_prep_nop(sqe);
    finish(sqe, 0, ud);
    return 0;
}

int bh_ring_prep_timeout(bh_ring *r, uint64_t ns, uint64_t ud) {
    struct io_uring_sqe *sqe = sqe_for(r);
    if (!sqe) return -EBUSY;
    // The kernel reads the timespec when the timeout is armed at submission; one per ring,
    // valid until then (Ring.prepareTimeout submits at once, so timers never share it).
    r->timeout.tv_sec = (long long)(ns / 1000000000ull);
    r->timeout.tv_nsec = (long long)(ns % 1000000000ull);
    io_uring_prep_timeout(sqe, &r->timeout, 0, 0);
    finish(sqe, FILELESS_FIXED, ud);
    return 0;
}

int bh_ring_prep_cancel(bh_ring *r, uint64_t target, uint64_t ud) {
    struct io_uring_sqe *sqe = sqe_for(r);
    if (!sqe) return -EBUSY;
    io_uring_prep_cancel64(sqe, target, 0);
    finish(sqe, FILELESS_FIXED, ud);
    return 0;
}

int bh_ring_prep_fallocate(bh_ring *r, int fd, int fixed, int mode, uint64_t off, uint64_t len, uint64_t ud) {
    struct io_uring_sqe *sqe = sqe_for(r);
    if (!sqe) return -EBUSY;
    io_uring_prep_fallocate(sqe, fd, mode, (off_t)off, (off_t)len);
    finish(sqe, fixed, ud);
    return 0;
}

const uint8_t BH_OP_READV = IORING_OP_READV, BH_OP_WRITEV = IORING_OP_WRITEV, BH_OP_FSYNC = IORING_OP_FSYNC,
    BH_OP_FALLOCATE = IORING_OP_FALLOCATE, BH_OP_POLL_ADD = IORING_OP_POLL_ADD, BH_OP_READ = IORING_OP_READ,
    BH_OP_WRITE = IORING_OP_WRITE, BH_OP_TIMEOUT = IORING_OP_TIMEOUT, BH_OP_NOP = IORING_OP_NOP,
    BH_OP_ASYNC_CANCEL = IORING_OP_ASYNC_CANCEL, BH_OP_SENDMSG = IORING_OP_SENDMSG, BH_OP_RECVMSG = IORING_OP_RECVMSG;
const uint8_t BH_REGISTER_FILES_UPDATE = IORING_REGISTER_FILES_UPDATE;

int bh_ring_restrict(bh_ring *r, const uint8_t *ops, unsigned count, const uint8_t *register_ops,
                     unsigned register_count, int require_fixed_file) {
    struct io_uring_restriction res[64];
    unsigned n = 0;
    if (count + register_count > 60) return -EINVAL;
    memset(res, 0, sizeof res);
    for (unsigned i = 0; i < count; i++) {
        res[n].opcode = IORING_RESTRICTION_SQE_OP;
        res[n].sqe_op = ops[i];
        n++;
    }
    res[n].opcode = IORING_RESTRICTION_SQE_FLAGS_ALLOWED;
    res[n].sqe_flags = IOSQE_FIXED_FILE;
    n++;
    if (require_fixed_file) {
        res[n].opcode = IORING_RESTRICTION_SQE_FLAGS_REQUIRED;
        res[n].sqe_flags = IOSQE_FIXED_FILE;
        n++;
    }
    for (unsigned i = 0; i < register_count; i++) {
        res[n].opcode = IORING_RESTRICTION_REGISTER_OP;
        res[n].register_op = register_ops[i];
        n++;
    }
    // Registering restrictions also forbids every register opcode not listed.
    int ret = (int)syscall(__NR_io_uring_register, r->ring.ring_fd, IORING_REGISTER_RESTRICTIONS, res, n);
    return ret < 0 ? -errno : 0;
}

int bh_ring_submit(bh_ring *r) { return io_uring_submit(&r->ring); }

int bh_ring_submit_and_wait(bh_ring *r, unsigned wait_nr) {
    int ret;
    do { ret = io_uring_submit_and_wait(&r->ring, wait_nr); } while (ret == -EINTR);
    return ret;
}

unsigned bh_ring_reap(bh_ring *r, bh_completion *out, unsigned max) {
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&r->ring, head, cqe) {
        if (n == max) break;
        out[n].user_data = cqe->user_data;
        out[n].res = cqe->res;
        out[n].flags = cqe->flags;
        n++;
    }
    io_uring_cq_advance(&r->ring, n);
    return n;
}
