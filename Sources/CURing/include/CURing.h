#ifndef BULKHEAD_CURING_H
#define BULKHEAD_CURING_H
// A narrow C surface over liburing: Swift sees an opaque ring and plain functions.
#include <stdint.h>
#include <stddef.h>

typedef struct bh_ring bh_ring;

/// One completion, copied out of the completion queue.
typedef struct bh_completion {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
} bh_completion;

/// Creates a ring with `entries` submission slots. Returns NULL and sets *err to -errno on failure.
bh_ring *bh_ring_create(unsigned entries, unsigned flags, int *err);
void bh_ring_destroy(bh_ring *ring);

/// Setup flags (IORING_SETUP_*), for bh_ring_create.
extern const unsigned BH_SETUP_R_DISABLED;
extern const unsigned BH_SETUP_SUBMIT_ALL;
extern const unsigned BH_SETUP_COOP_TASKRUN;
extern const unsigned BH_SETUP_SINGLE_ISSUER;
extern const unsigned BH_SETUP_DEFER_TASKRUN;

/// Enables a ring created with BH_SETUP_R_DISABLED; with BH_SETUP_SINGLE_ISSUER the calling
/// thread becomes the only one that may submit. Returns 0 or -errno.
int bh_ring_enable(bh_ring *ring);

/// Registers `count` fds as fixed files; later SQEs name them by index. Returns 0 or -errno.
int bh_ring_register_files(bh_ring *ring, const int *fds, unsigned count);

/// Replaces registered file `slot` with `fd` (-1 empties it): IORING_REGISTER_FILES_UPDATE.
/// Returns 0 or -errno.
int bh_ring_update_file(bh_ring *ring, unsigned slot, int fd);

/// Number of free submission slots.
unsigned bh_ring_sq_space(bh_ring *ring);

/// Queues a read/write of `len` bytes at `buf`. `fixed_file` nonzero means `fd` is a registered
/// file index. `offset` is the file offset, or -1 for the current position (streams).
/// Returns 0, or -EBUSY when the submission queue is full.
int bh_ring_prep_read(bh_ring *ring, int fd, int fixed_file, void *buf, unsigned len, int64_t offset, uint64_t user_data);
int bh_ring_prep_write(bh_ring *ring, int fd, int fixed_file, const void *buf, unsigned len, int64_t offset, uint64_t user_data);
int bh_ring_prep_readv(bh_ring *ring, int fd, int fixed_file, const void *iov, unsigned iovcnt, int64_t offset, uint64_t user_data);
int bh_ring_prep_writev(bh_ring *ring, int fd, int fixed_file, const void *iov, unsigned iovcnt, int64_t offset, uint64_t user_data);
int bh_ring_prep_fsync(bh_ring *ring, int fd, int fixed_file, int datasync, uint64_t user_data);
int bh_ring_prep_nop(bh_ring *ring, uint64_t user_data);
/// Queues a multishot poll for `mask` (POLLIN...): one completion per wake-up, with
/// BH_CQE_F_MORE set while the poll stays armed.
int bh_ring_prep_poll_multishot(bh_ring *ring, int fd, int fixed_file, unsigned mask, uint64_t user_data);
/// Queues a one-shot poll for `mask`: one completion, when the file is ready (or cancelled).
int bh_ring_prep_poll(bh_ring *ring, int fd, int fixed_file, unsigned mask, uint64_t user_data);

/// Queues sendmsg/recvmsg with `msg` (a struct msghdr that must stay valid until the operation
/// completes) and MSG_* `flags`.
int bh_ring_prep_sendmsg(bh_ring *ring, int fd, int fixed_file, const void *msg, unsigned flags, uint64_t user_data);
int bh_ring_prep_recvmsg(bh_ring *ring, int fd, int fixed_file, void *msg, unsigned flags, uint64_t user_data);

/// Completion flag: the operation will post more completions.
extern const uint32_t BH_CQE_F_MORE;

/// Queues a timer that completes (with -ETIME) after `nanoseconds`.
int bh_ring_prep_timeout(bh_ring *ring, uint64_t nanoseconds, uint64_t user_data);

/// Queues IORING_OP_ASYNC_CANCEL of the operation whose user data is `target`.
int bh_ring_prep_cancel(bh_ring *ring, uint64_t target, uint64_t user_data);

/// Queues fallocate(fd, mode, offset, length) (punch hole / zero range).
int bh_ring_prep_fallocate(bh_ring *ring, int fd, int fixed_file, int mode, uint64_t offset, uint64_t length, uint64_t user_data);

/// io_uring opcodes the block backend uses, for bh_ring_restrict.
extern const uint8_t BH_OP_READV, BH_OP_WRITEV, BH_OP_FSYNC, BH_OP_FALLOCATE, BH_OP_POLL_ADD,
    BH_OP_READ, BH_OP_WRITE, BH_OP_TIMEOUT, BH_OP_NOP, BH_OP_ASYNC_CANCEL, BH_OP_SENDMSG, BH_OP_RECVMSG;
/// io_uring_register opcodes a restricted ring may keep using, for bh_ring_restrict.
extern const uint8_t BH_REGISTER_FILES_UPDATE;

/// Restricts a ring created with BH_SETUP_R_DISABLED (IORING_REGISTER_RESTRICTIONS): only the
/// `count` opcodes in `ops` may be submitted, every SQE must use a registered (fixed) file when
/// `require_fixed_file` is nonzero, and the only register operations allowed afterwards are the
/// `register_count` in `register_ops`. Returns 0 or -errno.
int bh_ring_restrict(bh_ring *ring, const uint8_t *ops, unsigned count, const uint8_t *register_ops,
                     unsigned register_count, int require_fixed_file);

/// Submits queued SQEs. Returns the number submitted or -errno.
int bh_ring_submit(bh_ring *ring);
/// Submits queued SQEs and waits until at least `wait_nr` completions are available.
int bh_ring_submit_and_wait(bh_ring *ring, unsigned wait_nr);

/// Copies up to `max` available completions into `out` and marks them seen. Returns how many.
unsigned bh_ring_reap(bh_ring *ring, bh_completion *out, unsigned max);

#endif
