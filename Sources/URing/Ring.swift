import CURing
import HostOS

/// One completion copied out of the ring's completion queue.
public typealias Completion = bh_completion

/// An io_uring instance: a submission queue the caller fills with `prepare...` calls and
/// submits in batches, and a completion queue it drains with `reap`.
///
/// Single-threaded: one owner thread prepares, submits and reaps.
public struct Ring: ~Copyable {
    private let ring: OpaquePointer

    /// Creates a ring with `entries` submission slots (a power of two; the completion queue
    /// gets twice as many). The corresponding C function is `io_uring_queue_init`.
    public init(entries: UInt32) throws(SystemError) {
        var err: Int32 = 0
        guard let ring = bh_ring_create(entries, 0, &err) else {
            throw SystemError("io_uring_setup(\(entries) entries)", negated: err)
        }
        self.ring = ring
    }

    deinit { bh_ring_destroy(ring) }

    /// Registers fds as fixed files: later operations name them by index with `fixed: true`,
    /// which saves the kernel a file-table lookup and reference per operation.
    public func registerFiles(_ fds: [Int32]) throws(SystemError) {
        let r = fds.withUnsafeBufferPointer { bh_ring_register_files(ring, $0.baseAddress, UInt32($0.count)) }
        if r < 0 { throw SystemError("io_uring_register(FILES, \(fds.count))", negated: r) }
    }

    /// Free submission slots.
    public var freeSlots: UInt32 { bh_ring_sq_space(ring) }

    /// Queues a read into `buffer`. `offset` -1 reads at the current position (streams, TAP).
    /// Submits what is queued first when the submission queue is full.
    @inline(__always)
    public func prepareRead(fd: Int32, fixed: Bool, buffer: UnsafeMutableRawPointer, length: UInt32,
                            offset: Int64 = -1, userData: UInt64) throws(SystemError) {
        while bh_ring_prep_read(ring, fd, fixed ? 1 : 0, buffer, length, offset, userData) == -EBUSY_ {
            try submit()
        }
    }

    /// Queues a write of `length` bytes from `buffer`.
    @inline(__always)
    public func prepareWrite(fd: Int32, fixed: Bool, buffer: UnsafeRawPointer, length: UInt32,
                             offset: Int64 = -1, userData: UInt64) throws(SystemError) {
        while bh_ring_prep_write(ring, fd, fixed ? 1 : 0, buffer, length, offset, userData) == -EBUSY_ {
            try submit()
        }
    }

    /// Queues a no-op: its completion arrives with `userData` (used for wake-ups in tests).
    public func prepareNop(userData: UInt64) throws(SystemError) {
        while bh_ring_prep_nop(ring, userData) == -EBUSY_ { try submit() }
    }

    /// Queues a timer that completes after `nanoseconds`; one timer in flight per ring.
    public func prepareTimeout(nanoseconds: UInt64, userData: UInt64) throws(SystemError) {
        while bh_ring_prep_timeout(ring, nanoseconds, userData) == -EBUSY_ { try submit() }
    }

    /// Submits queued operations. The corresponding C function is `io_uring_submit`.
    @discardableResult
    public func submit() throws(SystemError) -> Int {
        let r = bh_ring_submit(ring)
        if r < 0 { throw SystemError("io_uring_enter(submit)", negated: r) }
        return Int(r)
    }

    /// Submits queued operations and waits for at least `count` completions.
    @discardableResult
    public func submitAndWait(_ count: UInt32 = 1) throws(SystemError) -> Int {
        let r = bh_ring_submit_and_wait(ring, count)
        if r < 0 { throw SystemError("io_uring_enter(submit and wait)", negated: r) }
        return Int(r)
    }

    /// Moves up to `into.count` completions into `into`; returns how many.
    @inline(__always)
    public func reap(into buffer: UnsafeMutableBufferPointer<Completion>) -> Int {
        Int(bh_ring_reap(ring, buffer.baseAddress, UInt32(buffer.count)))
    }
}

private let EBUSY_: Int32 = 16
