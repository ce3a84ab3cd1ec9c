import Config
import Foundation
import HostOS
import Logging
import Switch
import URing
import Virtio

/// The switch's packet loop: one thread, one io_uring, every TAP queue of every port.
///
/// Each port owns a pool of frame buffers, each with a read outstanding on one of the port's
/// queues. A completed read is run through the `ForwardingPlane`; the same buffer is then
/// written to every egress port the verdict names (no copy in userspace), and its read is
/// re-armed once the last of those writes completes. Everything a batch of completions asks for
/// goes to the kernel in one `io_uring_enter`. Writes carry exactly the length that was read,
/// so a buffer never passes on bytes of an earlier, longer frame.
public final class Dataplane: @unchecked Sendable {
    // @unchecked Sendable: after `start()` every member below is touched only by the engine
    // thread, except `wakeup`, whose `signal()` is a single write(2) on an eventfd, and
    // `finished`, a semaphore.

    public struct Options: Sendable {
        /// Frame buffers per port (each holds a 64 KB GSO frame plus its virtio-net header).
        public var buffersPerPort: Int
        /// Where the per-port counters are written, about once a second; nil for nowhere.
        public var statusPath: String?

        public init(buffersPerPort: Int = 32, statusPath: String? = nil) {
            self.buffersPerPort = buffersPerPort
            self.statusPath = statusPath
        }
    }

    /// 12-byte virtio-net header + the largest GSO frame the kernel builds (65535 + 14).
    static let bufferSize = 65_600

    private enum Operation: UInt64 {
        case read = 1, write = 2, wake = 3, tick = 4
    }

    private var plane: ForwardingPlane
    private let ring: Ring
    private let logger: Logger
    private let options: Options
    private let wakeup: EventFD
    private let finished = DispatchSemaphore(value: 0)

    /// Fixed-file slot of each port's queues: `queueSlots[port]` lists that port's slots.
    private let queueSlots: [[Int32]]
    private let buffers: UnsafeMutableRawPointer
    private let bufferCount: Int
    /// For each buffer: owning port, the fixed-file slot its reads use, and writes in flight.
    private let bufferPort: UnsafeMutableBufferPointer<Int32>
    private let bufferSlot: UnsafeMutableBufferPointer<Int32>
    private let pendingWrites: UnsafeMutableBufferPointer<Int32>
    private var wakeBuffer: UInt64 = 0
    private var portFailed: [Bool]

    /// Sets up the ring and buffers for `ports` (indexed like `plane.ports`; each with the raw
    /// fds of its queues, which stay owned by the caller and must outlive `run`).
    public init(plane: ForwardingPlane, queues: [[Int32]], options: Options, logger: Logger) throws(SystemError) {
        precondition(queues.count == plane.ports.count, "one queue list per port")
        self.plane = plane
        self.options = options
        self.logger = logger
        self.wakeup = try EventFD()

        var slots: [[Int32]] = []
        var files: [Int32] = []
        for portQueues in queues {
            precondition(!portQueues.isEmpty, "every port has at least one queue")
            slots.append(portQueues.indices.map { Int32(files.count + $0) })
            files += portQueues
        }
        queueSlots = slots
        portFailed = Array(repeating: false, count: queues.count)

        bufferCount = queues.count * options.buffersPerPort
        let entries = UInt32(max(64, min(32_768, (bufferCount * 2).nextPowerOfTwo)))
        ring = try Ring(entries: entries)
        if !files.isEmpty { try ring.registerFiles(files) }

        // Anonymous mappings start zeroed: no buffer ever holds bytes from before this process.
        let total = max(1, bufferCount) * Dataplane.bufferSize
        guard let memory = mmap(nil, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              memory != MAP_FAILED else {
            throw SystemError("mmap(\(total) bytes of frame buffers)", errno: errno)
        }
        buffers = memory
        bufferPort = .allocate(capacity: max(1, bufferCount))
        bufferSlot = .allocate(capacity: max(1, bufferCount))
        pendingWrites = .allocate(capacity: max(1, bufferCount))
        for buffer in 0..<bufferCount {
            let port = buffer / options.buffersPerPort
            bufferPort[buffer] = Int32(port)
            let portSlots = slots[port]
            bufferSlot[buffer] = portSlots[buffer % portSlots.count]
            pendingWrites[buffer] = 0
        }
    }

    deinit {
        munmap(buffers, max(1, bufferCount) * Dataplane.bufferSize)
        bufferPort.deallocate()
        bufferSlot.deallocate()
        pendingWrites.deallocate()
    }

    /// Runs the loop on a thread of its own until `stop()`.
    public func start() {
        let thread = Thread { [self] in
            do {
                try self.run()
            } catch {
                self.logger.critical("switch loop stopped", metadata: ["error": "\(error)"])
            }
            self.finished.signal()
        }
        thread.name = "bulkhead-switch"
        thread.start()
    }

    /// Asks the loop to stop and waits until it has.
    public func stop() {
        wakeup.signal()
        finished.wait()
    }

    private static func userData(_ op: Operation, buffer: Int, port: Int = 0) -> UInt64 {
        op.rawValue << 56 | UInt64(port) << 32 | UInt64(buffer)
    }

    @inline(__always)
    private func buffer(_ index: Int) -> UnsafeMutableRawPointer {
        buffers + index * Dataplane.bufferSize
    }

    @inline(__always)
    private func armRead(_ index: Int) throws(SystemError) {
        try ring.prepareRead(fd: bufferSlot[index], fixed: true, buffer: buffer(index),
                             length: UInt32(Dataplane.bufferSize), userData: Dataplane.userData(.read, buffer: index))
    }

    private func armWakeup() throws(SystemError) {
        try withUnsafeMutableBytes(of: &wakeBuffer) { (raw) throws(SystemError) in
            try ring.prepareRead(fd: wakeup.rawValue, fixed: false, buffer: raw.baseAddress!, length: 8,
                                 userData: Dataplane.userData(.wake, buffer: 0))
        }
    }

    private func run() throws(SystemError) {
        for index in 0..<bufferCount { try armRead(index) }
        try armWakeup()
        try ring.prepareTimeout(nanoseconds: 1_000_000_000, userData: Dataplane.userData(.tick, buffer: 0))

        let completions = UnsafeMutableBufferPointer<Completion>.allocate(capacity: 512)
        defer { completions.deallocate() }
        logger.debug("switch loop running", metadata: ["buffers": "\(bufferCount)"])

        while true {
            try ring.submitAndWait(1)
            let count = ring.reap(into: completions)
            let now = monotonicNanoseconds()
            for i in 0..<count {
                let completion = completions[i]
                let buffer = Int(completion.user_data & 0xFFFF_FFFF)
                switch Operation(rawValue: completion.user_data >> 56) {
                case .read:
                    try readCompleted(buffer: buffer, result: completion.res, now: now)
                case .write:
                    let port = Int(completion.user_data >> 32 & 0xFFFF)
                    try writeCompleted(buffer: buffer, port: port, result: completion.res)
                case .wake:
                    logger.debug("switch loop stopping")
                    try writeStatus()
                    return
                case .tick:
                    plane.expire(now: now)
                    try writeStatus()
                    try ring.prepareTimeout(nanoseconds: 1_000_000_000, userData: Dataplane.userData(.tick, buffer: 0))
                case nil:
                    logger.error("unexpected io_uring completion", metadata: ["user_data": "\(completion.user_data)"])
                }
            }
        }
    }

    @inline(__always)
    private func readCompleted(buffer index: Int, result: Int32, now: UInt64) throws(SystemError) {
        let port = Int(bufferPort[index])
        guard result >= 0 else {
            if result == -EAGAIN || result == -EINTR { return try armRead(index) }
            // The queue is gone (device deleted, namespace destroyed): stop reading it, once.
            if !portFailed[port] {
                portFailed[port] = true
                logger.error("reading from port failed; port stops receiving", metadata: [
                    "port.index": "\(port)", "port.interface": "\(plane.ports[port].interfaceName)",
                    "error": "\(SystemError("read", errno: -result))",
                ])
            }
            return
        }
        let length = Int(result)
        let base = buffer(index)
        guard length >= VirtioNetHeader.size,
              let header = VirtioNetHeader(parsing: UnsafeRawBufferPointer(start: base, count: VirtioNetHeader.size)) else {
            plane.recordDrop(.malformedVnetHeader, port: port)
            return try armRead(index)
        }
        let frame = UnsafeRawBufferPointer(start: base + VirtioNetHeader.size, count: length - VirtioNetHeader.size)
        switch plane.process(frame: frame, header: header, ingress: port, now: now) {
        case .drop:
            try armRead(index)
        case .forward(let targets):
            if targets.isEmpty { return try armRead(index) }
            var failure: SystemError?
            targets.forEach { target in
                guard failure == nil else { return }
                do throws(SystemError) {
                    try ring.prepareWrite(fd: queueSlots[target][0], fixed: true, buffer: base, length: UInt32(length),
                                          userData: Dataplane.userData(.write, buffer: index, port: target))
                    pendingWrites[index] += 1
                } catch {
                    failure = error
                }
            }
            if let failure { throw failure }
        }
    }

    @inline(__always)
    private func writeCompleted(buffer index: Int, port: Int, result: Int32) throws(SystemError) {
        if result >= 0 {
            plane.recordTransmitted(port: port, bytes: Int(result) - VirtioNetHeader.size)
        } else {
            plane.recordDrop(.txError, port: port)
        }
        pendingWrites[index] -= 1
        if pendingWrites[index] == 0 { try armRead(index) }
    }

    private func writeStatus() throws(SystemError) {
        guard let path = options.statusPath else { return }
        let status = DaemonStatus(pid: getpid(), updatedAt: Date(), switchStatistics: plane.statistics())
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        guard let data = try? encoder.encode(status) else { return }
        try StateFiles.writeAtomically(path, contents: String(decoding: data, as: UTF8.self))
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

extension Int {
    var nextPowerOfTwo: Int {
        var value = 1
        while value < self { value <<= 1 }
        return value
    }
}
