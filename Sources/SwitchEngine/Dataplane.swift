import Config
import Foundation
import HostOS
import Logging
import Switch
import URing
import Virtio

/// The switch's packet loop: one thread, one io_uring, every TAP queue of every port.
///
/// Each TAP queue has a multishot poll armed and a pool of frame buffers. While a queue is
/// readable, reads into its free buffers are kept in flight (the fds are non-blocking, so a read
/// on an empty queue completes at once with EAGAIN and the queue waits for its next poll
/// wake-up). A completed read is run through the `ForwardingPlane`; the same buffer is then
/// written to every egress port the verdict names (no copy in userspace) and goes back to its
/// pool when the last of those writes completes. Everything a batch of completions asks for goes
/// to the kernel in one `io_uring_enter`. Writes carry exactly the length that was read, so a
/// buffer never passes on bytes of an earlier, longer frame.
public final class Dataplane: @unchecked Sendable {
    // @unchecked Sendable: after `start()` every member below is touched only by the engine
    // thread, except `wakeup`, whose `signal()` is a single write(2) on an eventfd, and
    // `finished`, a semaphore.

    public struct Options: Sendable {
        /// Frame buffers per TAP queue (each holds a 64 KB GSO frame plus its virtio-net header).
        /// Untouched buffers cost address space only; pools are reused last-in first-out.
        public var buffersPerQueue: Int
        /// Reads kept in flight per readable queue.
        public var readsInFlight: Int
        /// Where the per-port counters are written, about once a second; nil for nowhere.
        public var statusPath: String?

        public init(buffersPerQueue: Int = 64, readsInFlight: Int = 16, statusPath: String? = nil) {
            self.buffersPerQueue = buffersPerQueue
            self.readsInFlight = readsInFlight
            self.statusPath = statusPath
        }
    }

    /// 12-byte virtio-net header + the largest GSO frame the kernel builds (65535 + 14).
    static let bufferSize = 65_600

    private enum Operation: UInt64 {
        case read = 1, write = 2, poll = 3, wake = 4, tick = 5
    }

    private var plane: ForwardingPlane
    private let ring: Ring
    private let logger: Logger
    private let options: Options
    private let wakeup: EventFD
    private let finished = DispatchSemaphore(value: 0)

    /// Per queue (index = fixed-file slot): its port, whether it may hold frames, reads in
    /// flight, and its pool of free buffers (a stack: `free[q * buffersPerQueue ..< + freeCount[q]]`).
    private let queueCount: Int
    private let queuePort: UnsafeMutableBufferPointer<Int32>
    private let queueReadable: UnsafeMutableBufferPointer<Bool>
    private let queueReads: UnsafeMutableBufferPointer<Int32>
    private let freeCount: UnsafeMutableBufferPointer<Int32>
    private let free: UnsafeMutableBufferPointer<Int32>
    /// Queues whose reads should be topped up after the current batch, each listed once.
    private var refill: [Int32] = []
    private let refillPending: UnsafeMutableBufferPointer<Bool>
    /// First queue (fixed-file slot) of each port; egress writes go there.
    private let portFirstQueue: [Int32]
    private var portFailed: [Bool]

    private let buffers: UnsafeMutableRawPointer
    private let bufferCount: Int
    /// Writes in flight per buffer.
    private let pendingWrites: UnsafeMutableBufferPointer<Int32>
    private var wakeBuffer: UInt64 = 0
    private var statusFailing = false

    /// Sets up the ring and buffers. `queues[port]` lists the raw fds of that port's TAP queues
    /// (ports indexed like `plane.ports`); the fds stay owned by the caller and must outlive `run`.
    public init(plane: ForwardingPlane, queues: [[Int32]], options: Options, logger: Logger) throws(SystemError) {
        precondition(queues.count == plane.ports.count, "one queue list per port")
        precondition(options.buffersPerQueue > 0 && options.readsInFlight > 0)
        self.plane = plane
        self.options = options
        self.logger = logger
        self.wakeup = try EventFD()

        var files: [Int32] = []
        var ports: [Int32] = []
        var first: [Int32] = []
        for (port, portQueues) in queues.enumerated() {
            precondition(!portQueues.isEmpty, "every port has at least one queue")
            first.append(Int32(files.count))
            files += portQueues
            ports += Array(repeating: Int32(port), count: portQueues.count)
        }
        portFirstQueue = first
        portFailed = Array(repeating: false, count: queues.count)
        queueCount = files.count
        bufferCount = queueCount * options.buffersPerQueue

        let entries = Ring.entries(atLeast: queueCount * options.readsInFlight * 4, minimum: 256, maximum: 16_384)
        // Created disabled and enabled by the engine thread, which then is its only submitter.
        ring = try Ring(entries: entries, setup: [.disabled, .singleIssuer, .submitAll])
        if !files.isEmpty { try ring.registerFiles(files) }

        // Anonymous mappings start zeroed: no buffer ever holds bytes from before this process.
        let total = max(1, bufferCount) * Dataplane.bufferSize
        guard let memory = mmap(nil, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              memory != MAP_FAILED else {
            throw SystemError("mmap(\(total) bytes of frame buffers)", errno: errno)
        }
        buffers = memory

        let queueSlots = max(1, queueCount)
        queuePort = .allocate(capacity: queueSlots)
        queueReadable = .allocate(capacity: queueSlots)
        queueReads = .allocate(capacity: queueSlots)
        freeCount = .allocate(capacity: queueSlots)
        refillPending = .allocate(capacity: queueSlots)
        free = .allocate(capacity: max(1, bufferCount))
        pendingWrites = .allocate(capacity: max(1, bufferCount))
        refill.reserveCapacity(queueSlots)
        for q in 0..<queueCount {
            queuePort[q] = ports[q]
            queueReadable[q] = true  // until a read says otherwise
            queueReads[q] = 0
            refillPending[q] = false
            freeCount[q] = Int32(options.buffersPerQueue)
            // Lowest buffer on top: an idle queue keeps touching the same few buffers.
            for i in 0..<options.buffersPerQueue {
                free[q * options.buffersPerQueue + i] = Int32(q * options.buffersPerQueue + options.buffersPerQueue - 1 - i)
            }
        }
        for b in 0..<bufferCount { pendingWrites[b] = 0 }
    }

    deinit {
        munmap(buffers, max(1, bufferCount) * Dataplane.bufferSize)
        for pointer in [UnsafeMutableRawPointer(queuePort.baseAddress!), UnsafeMutableRawPointer(queueReadable.baseAddress!),
                        UnsafeMutableRawPointer(queueReads.baseAddress!), UnsafeMutableRawPointer(freeCount.baseAddress!),
                        UnsafeMutableRawPointer(refillPending.baseAddress!), UnsafeMutableRawPointer(free.baseAddress!),
                        UnsafeMutableRawPointer(pendingWrites.baseAddress!)] {
            pointer.deallocate()
        }
    }

    /// Runs the loop on a thread of its own until `stop()`.
    public func start() {
        let thread = Thread { [self] in
            setCurrentThreadName("bulkhead-switch")
            do {
                try self.run()
            } catch {
                self.logger.critical("switch loop stopped", metadata: ["error": "\(error)"])
            }
            self.finished.signal()
        }
        thread.start()
    }

    /// Asks the loop to stop and waits until it has.
    public func stop() {
        wakeup.signal()
        finished.wait()
    }

    @inline(__always)
    private static func userData(_ op: Operation, _ index: Int, port: Int = 0) -> UInt64 {
        op.rawValue << 56 | UInt64(port) << 32 | UInt64(index)
    }

    @inline(__always)
    private func buffer(_ index: Int) -> UnsafeMutableRawPointer {
        buffers + index * Dataplane.bufferSize
    }

    @inline(__always)
    private func queue(ofBuffer index: Int) -> Int { index / options.buffersPerQueue }

    @inline(__always)
    private func release(buffer index: Int) {
        let q = queue(ofBuffer: index)
        free[q * options.buffersPerQueue + Int(freeCount[q])] = Int32(index)
        freeCount[q] += 1
        scheduleRefill(q)
    }

    @inline(__always)
    private func scheduleRefill(_ q: Int) {
        if !refillPending[q] {
            refillPending[q] = true
            refill.append(Int32(q))
        }
    }

    /// Tops up the reads of every queue that asked for it and may hold frames.
    private func refillReads() throws(SystemError) {
        for q32 in refill {
            let q = Int(q32)
            refillPending[q] = false
            guard queueReadable[q], !portFailed[Int(queuePort[q])] else { continue }
            while queueReads[q] < options.readsInFlight && freeCount[q] > 0 {
                freeCount[q] -= 1
                let index = Int(free[q * options.buffersPerQueue + Int(freeCount[q])])
                try ring.prepareRead(fd: Int32(q), fixed: true, buffer: buffer(index), length: UInt32(Dataplane.bufferSize),
                                     userData: Dataplane.userData(.read, index))
                queueReads[q] += 1
            }
        }
        refill.removeAll(keepingCapacity: true)
    }

    private func armWakeup() throws(SystemError) {
        try withUnsafeMutableBytes(of: &wakeBuffer) { (raw) throws(SystemError) in
            try ring.prepareRead(fd: wakeup.rawValue, fixed: false, buffer: raw.baseAddress!, length: 8,
                                 userData: Dataplane.userData(.wake, 0))
        }
    }

    private func armPoll(queue q: Int) throws(SystemError) {
        try ring.preparePollMultishot(fd: Int32(q), fixed: true, events: UInt32(POLLIN), userData: Dataplane.userData(.poll, q))
    }

    private func run() throws(SystemError) {
        try ring.enable()
        for q in 0..<queueCount {
            try armPoll(queue: q)
            scheduleRefill(q)
        }
        try refillReads()
        try armWakeup()
        try ring.prepareTimeout(nanoseconds: 1_000_000_000, userData: Dataplane.userData(.tick, 0))

        let completions = UnsafeMutableBufferPointer<Completion>.allocate(capacity: 1024)
        defer { completions.deallocate() }
        logger.debug("switch loop running", metadata: ["queues": "\(queueCount)", "buffers": "\(bufferCount)"])

        while true {
            try ring.submitAndWait(1)
            // Drain everything that is ready before going back to the kernel: one
            // io_uring_enter then carries the whole batch's reads and writes.
            var count = ring.reap(into: completions)
            while count > 0 {
                let now = monotonicNanoseconds()
                for i in 0..<count {
                    let completion = completions[i]
                    let index = Int(completion.user_data & 0xFFFF_FFFF)
                    switch Operation(rawValue: completion.user_data >> 56) {
                    case .read:
                        try readCompleted(buffer: index, result: completion.res, now: now)
                    case .write:
                        writeCompleted(buffer: index, port: Int(completion.user_data >> 32 & 0xFFFF), result: completion.res)
                    case .poll:
                        pollCompleted(queue: index, result: completion.res, flags: completion.flags)
                        if completion.flags & Ring.moreFlag == 0, !portFailed[Int(queuePort[index])] {
                            try armPoll(queue: index)
                        }
                    case .wake:
                        logger.debug("switch loop stopping")
                        writeStatus()
                        return
                    case .tick:
                        plane.expire(now: now)
                        writeStatus()
                        try ring.prepareTimeout(nanoseconds: 1_000_000_000, userData: Dataplane.userData(.tick, 0))
                    case nil:
                        logger.error("unexpected io_uring completion", metadata: ["user_data": "\(completion.user_data)"])
                    }
                }
                try refillReads()
                count = ring.reap(into: completions)
            }
        }
    }

    @inline(__always)
    private func pollCompleted(queue q: Int, result: Int32, flags: UInt32) {
        if result < 0 {
            failPort(Int(queuePort[q]), error: SystemError("poll", errno: -result))
            return
        }
        queueReadable[q] = true
        scheduleRefill(q)
    }

    private func failPort(_ port: Int, error: SystemError) {
        guard !portFailed[port] else { return }
        portFailed[port] = true
        logger.error("port stops receiving: its TAP queue failed", metadata: [
            "port.index": "\(port)", "port.interface": "\(plane.ports[port].interfaceName)", "error": "\(error)",
        ])
    }

    @inline(__always)
    private func readCompleted(buffer index: Int, result: Int32, now: UInt64) throws(SystemError) {
        let q = queue(ofBuffer: index)
        queueReads[q] -= 1
        let port = Int(queuePort[q])
        guard result > 0 else {
            if result == -EAGAIN {
                // The queue is empty: wait for its poll wake-up.
                queueReadable[q] = false
            } else if result < 0 && result != -EINTR {
                failPort(port, error: SystemError("read", errno: -result))
            }
            return release(buffer: index)
        }
        scheduleRefill(q)
        let length = Int(result)
        let base = buffer(index)
        guard length >= VirtioNetHeader.size,
              let header = VirtioNetHeader(parsing: UnsafeRawBufferPointer(start: base, count: VirtioNetHeader.size)) else {
            plane.recordDrop(.malformedVnetHeader, port: port)
            return release(buffer: index)
        }
        let frame = UnsafeRawBufferPointer(start: base + VirtioNetHeader.size, count: length - VirtioNetHeader.size)
        guard case .forward(let targets) = plane.process(frame: frame, header: header, ingress: port, now: now),
              !targets.isEmpty else {
            return release(buffer: index)
        }
        // The header goes out with the frame: only what the switch checked may reach another port.
        OffloadCheck.sanitizeForEgress(header: UnsafeMutableRawBufferPointer(start: base, count: VirtioNetHeader.size))
        var failure: SystemError?
        targets.forEach { target in
            guard failure == nil else { return }
            do throws(SystemError) {
                try ring.prepareWrite(fd: portFirstQueue[target], fixed: true, buffer: base, length: UInt32(length),
                                      userData: Dataplane.userData(.write, index, port: target))
                pendingWrites[index] += 1
            } catch {
                failure = error
            }
        }
        if let failure { throw failure }
    }

    @inline(__always)
    private func writeCompleted(buffer index: Int, port: Int, result: Int32) {
        if result >= VirtioNetHeader.size {
            plane.recordTransmitted(port: port, bytes: Int(result) - VirtioNetHeader.size)
        } else {
            plane.recordDrop(.txError, port: port)
        }
        pendingWrites[index] -= 1
        if pendingWrites[index] == 0 { release(buffer: index) }
    }

    /// Rewrites the status file. A failure is logged (once until it works again) and does not
    /// stop forwarding: counters are for operators, frames are for tenants.
    private func writeStatus() {
        guard let path = options.statusPath else { return }
        let status = DaemonStatus(pid: getpid(), updatedAt: Date(), switchStatistics: plane.statistics())
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        do {
            let data = try encoder.encode(status)
            try StateFiles.writeAtomically(path, contents: String(decoding: data, as: UTF8.self))
            statusFailing = false
        } catch {
            if !statusFailing {
                logger.error("cannot write the status file", metadata: ["path": "\(path)", "error": "\(error)"])
            }
            statusFailing = true
        }
    }
}

/// What `<stateDirectory>/status.json` holds.
public struct DaemonStatus: Codable, Sendable {
    public var pid: Int32
    public var updatedAt: Date
    public var switchStatistics: SwitchStatistics

    enum CodingKeys: String, CodingKey {
        case pid, updatedAt
        case switchStatistics = "switch"
    }
}
