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

    /// How the kernel runs the ring (IORING_SETUP_* flags).
    public struct Setup: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }

        /// Start disabled: files and restrictions can be registered from any thread, and `enable()`
        /// (on the thread that will use the ring) starts it.
        public static let disabled = Setup(rawValue: BH_SETUP_R_DISABLED)
        /// Keep submitting a batch after one entry fails.
        public static let submitAll = Setup(rawValue: BH_SETUP_SUBMIT_ALL)
        /// Only one thread submits (the one that enables the ring) and completion work runs
        /// when it waits, not through interrupts: the fastest mode for a one-thread event loop.
        public static let singleIssuer = Setup(rawValue: BH_SETUP_SINGLE_ISSUER | BH_SETUP_DEFER_TASKRUN)
    }

    /// Creates a ring with `entries` submission slots (a power of two; the completion queue
    /// gets twice as many). The corresponding C function is `io_uring_queue_init`.
    public init(entries: UInt32, setup: Setup = []) throws(SystemError) {
        var err: Int32 = 0
        guard let ring = bh_ring_create(entries, setup.rawValue, &err) else {
            throw SystemError("io_uring_setup(\(entries) entries)", negated: err)
        }
        self.ring = ring
    }

    deinit { bh_ring_destroy(ring) }

    /// A submission-queue size for `count` operations in flight: the next power of two, kept
    /// within `minimum...maximum` (both powers of two).
    public static func entries(atLeast count: Int, minimum: Int, maximum: Int) -> UInt32 {
        var value = minimum
        while value < count && value < maximum { value <<= 1 }
        return UInt32(value)
    }

    /// Enables a ring created with `.disabled`; with `.singleIssuer`, the calling thread becomes
    /// the only one that may submit. The corresponding C function is `io_uring_enable_rings`.
    public func enable() throws(SystemError) {
        let r = bh_ring_enable(ring)
        if r < 0 { throw SystemError("io_uring_register(ENABLE_RINGS)", negated: r) }
    }

    /// Registers fds as fixed files: later operations name them by index with `fixed: true`,
    /// which saves the kernel a file-table lookup and reference per operation.
    public func registerFiles(_ fds: [Int32]) throws(SystemError) {
        let r = fds.withUnsafeBufferPointer { bh_ring_register_files(ring, $0.baseAddress, UInt32($0.count)) }
        if r < 0 { throw SystemError("io_uring_register(FILES, \(fds.count))", negated: r) }
    }

    /// Replaces registered file `slot` with `fd` (-1 leaves the slot empty). A restricted ring
    /// allows it only when `restrict` listed `.filesUpdate`.
    /// The corresponding C function is `io_uring_register_files_update`.
    public func updateFile(slot: UInt32, fd: Int32) throws(SystemError) {
        let r = bh_ring_update_file(ring, slot, fd)
        if r < 0 { throw SystemError("io_uring_register(FILES_UPDATE, slot \(slot))", negated: r) }
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

    /// Queues a multishot poll for `events` (e.g. POLLIN): a completion per wake-up, whose
    /// `flags` contain `Ring.moreFlag` while the poll stays armed.
    public func preparePollMultishot(fd: Int32, fixed: Bool, events: UInt32, userData: UInt64) throws(SystemError) {
        while bh_ring_prep_poll_multishot(ring, fd, fixed ? 1 : 0, events, userData) == -EBUSY_ { try submit() }
    }

    /// Queues a one-shot poll for `events`: one completion when the file is ready.
    public func preparePoll(fd: Int32, fixed: Bool, events: UInt32, userData: UInt64) throws(SystemError) {
        while bh_ring_prep_poll(ring, fd, fixed ? 1 : 0, events, userData) == -EBUSY_ { try submit() }
    }

    /// Completion flag: the operation stays armed and will complete again.
    public static var moreFlag: UInt32 { BH_CQE_F_MORE }

    /// Queues a vectored read into `count` iovecs at `iovecs` (which must stay valid until the
    /// operation is submitted) from file offset `offset`.
    @inline(__always)
    public func prepareReadv(fd: Int32, fixed: Bool, iovecs: UnsafeRawPointer, count: UInt32, offset: Int64,
                             userData: UInt64) throws(SystemError) {
        while bh_ring_prep_readv(ring, fd, fixed ? 1 : 0, iovecs, count, offset, userData) == -EBUSY_ { try submit() }
    }

    /// Queues a vectored write from `count` iovecs at `iovecs` to file offset `offset`.
    @inline(__always)
    public func prepareWritev(fd: Int32, fixed: Bool, iovecs: UnsafeRawPointer, count: UInt32, offset: Int64,
                              userData: UInt64) throws(SystemError) {
        while bh_ring_prep_writev(ring, fd, fixed ? 1 : 0, iovecs, count, offset, userData) == -EBUSY_ { try submit() }
    }

    /// Queues sendmsg with the msghdr at `message` (which, with its iovecs, name and control
    /// data, must stay valid until the operation completes) and MSG_* `flags`.
    @inline(__always)
    public func prepareSendmsg(fd: Int32, fixed: Bool, message: UnsafeRawPointer, flags: UInt32 = 0,
                               userData: UInt64) throws(SystemError) {
        while bh_ring_prep_sendmsg(ring, fd, fixed ? 1 : 0, message, flags, userData) == -EBUSY_ { try submit() }
    }

    /// Queues recvmsg into the msghdr at `message` (valid until the operation completes; the
    /// kernel writes the source address and its length into it).
    @inline(__always)
    public func prepareRecvmsg(fd: Int32, fixed: Bool, message: UnsafeMutableRawPointer, flags: UInt32 = 0,
                               userData: UInt64) throws(SystemError) {
        while bh_ring_prep_recvmsg(ring, fd, fixed ? 1 : 0, message, flags, userData) == -EBUSY_ { try submit() }
    }

    /// Queues fsync (or fdatasync with `dataOnly`).
    public func prepareFsync(fd: Int32, fixed: Bool, dataOnly: Bool, userData: UInt64) throws(SystemError) {
        while bh_ring_prep_fsync(ring, fd, fixed ? 1 : 0, dataOnly ? 1 : 0, userData) == -EBUSY_ { try submit() }
    }

    /// Queues fallocate with `mode` (see `FileSpace`).
    public func prepareFallocate(fd: Int32, fixed: Bool, mode: Int32, offset: UInt64, length: UInt64,
                                 userData: UInt64) throws(SystemError) {
        while bh_ring_prep_fallocate(ring, fd, fixed ? 1 : 0, mode, offset, length, userData) == -EBUSY_ { try submit() }
    }

    /// io_uring operations, for `restrict(to:requireFixedFiles:)`.
    public enum Opcode: Sendable {
        case readv, writev, fsync, fallocate, pollAdd, read, write, timeout, nop, asyncCancel, sendmsg, recvmsg

        var rawValue: UInt8 {
            switch self {
            case .readv: BH_OP_READV
            case .writev: BH_OP_WRITEV
            case .fsync: BH_OP_FSYNC
            case .fallocate: BH_OP_FALLOCATE
            case .pollAdd: BH_OP_POLL_ADD
            case .read: BH_OP_READ
            case .write: BH_OP_WRITE
            case .timeout: BH_OP_TIMEOUT
            case .nop: BH_OP_NOP
            case .asyncCancel: BH_OP_ASYNC_CANCEL
            case .sendmsg: BH_OP_SENDMSG
            case .recvmsg: BH_OP_RECVMSG
            }
        }
    }

    /// io_uring_register operations a restricted ring may still use.
    public enum RegisterOperation: Sendable {
        /// IORING_REGISTER_FILES_UPDATE: `updateFile(slot:fd:)`.
        case filesUpdate

        var rawValue: UInt8 {
            switch self {
            case .filesUpdate: BH_REGISTER_FILES_UPDATE
            }
        }
    }

    /// Limits a ring created `.disabled` to `opcodes` (IORING_REGISTER_RESTRICTIONS); with
    /// `requireFixedFiles`, every operation must name a registered file, so the ring can touch no
    /// file but those registered before (or put in a slot by an allowed `.filesUpdate`). Every
    /// register operation not in `registerOperations` is refused afterwards. Register files
    /// first, then restrict, then `enable()`.
    public func restrict(to opcodes: [Opcode], registerOperations: [RegisterOperation] = [],
                         requireFixedFiles: Bool) throws(SystemError) {
        let ops = opcodes.map(\.rawValue)
        let registerOps = registerOperations.map(\.rawValue)
        let r = ops.withUnsafeBufferPointer { o in
            registerOps.withUnsafeBufferPointer { g in
                bh_ring_restrict(ring, o.baseAddress, UInt32(o.count), g.baseAddress, UInt32(g.count), requireFixedFiles ? 1 : 0)
            }
        }
        if r < 0 { throw SystemError("io_uring_register(RESTRICTIONS)", negated: r) }
    }

    /// Queues a no-op: its completion arrives with `userData` (used for wake-ups in tests).
    public func prepareNop(userData: UInt64) throws(SystemError) {
        while bh_ring_prep_nop(ring, userData) == -EBUSY_ { try submit() }
    }

    /// Queues a cancellation of the operation submitted with user data `target`; its own
    /// completion carries `userData` (0, -ENOENT when nothing matched, or -EALREADY).
    public func prepareCancel(target: UInt64, userData: UInt64) throws(SystemError) {
        while bh_ring_prep_cancel(ring, target, userData) == -EBUSY_ { try submit() }
    }

    /// Queues a timer that completes after `nanoseconds` (with -ETIME), and submits it at once:
    /// the kernel reads its duration at submission from storage the ring's timers share, so any
    /// number of timers may be in flight.
    public func prepareTimeout(nanoseconds: UInt64, userData: UInt64) throws(SystemError) {
        while bh_ring_prep_timeout(ring, nanoseconds, userData) == -EBUSY_ { try submit() }
        try submit()
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
