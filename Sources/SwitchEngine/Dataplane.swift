import Config
import Foundation
import HostOS
import Logging
import Switch
import URing
import VhostNet
import Virtio

/// How one switch port is attached to the dataplane.
public enum PortAttachment: Sendable {
    /// TAP queue fds (owned by the caller; they must outlive `stop()`). Worker `w` reads queues
    /// `w, w + workers, ...` and writes every frame it forwards to queue `w % count`.
    case tap(queues: [Int32])
    /// A vhost-user-net device: worker `w` serves queue pairs `w, w + workers, ...` (transmit:
    /// frames copied out of guest memory into the worker's buffers) and delivers every frame it
    /// forwards to the port into pair `w % pairs` (copied into the guest's receive buffers).
    case vhostUser(VhostNetDevice)
}

/// The switch's packet engine: `workers` threads, each with its own io_uring, serving its share
/// of every port's queues.
///
/// Worker `w` owns queue `w` of every TAP port (and `w + workers`, ... when a port has more
/// queues than there are workers) and writes what it forwards to queue `w` (modulo the port's
/// queue count) of each egress port, so with one queue per worker, as `PortNetwork` sets up,
/// no two workers ever read or write the same queue. Within a worker: each queue has a
/// multishot poll armed and a pool of frame buffers; while a queue is readable, reads into its
/// free buffers are kept in flight (the fds are non-blocking, so a read on an empty queue
/// completes at once with EAGAIN and the queue waits for its next poll wake-up). A completed
/// read is run through the `ForwardingPlane`; the same buffer is then written to every egress
/// port the verdict names (no copy in userspace) and goes back to its pool when the last of
/// those writes completes. Everything a batch of completions asks for goes to the kernel in one
/// `io_uring_enter`. Writes carry exactly the length that was read, so a buffer never passes on
/// bytes of an earlier, longer frame.
///
/// Shared state: the MAC tables and policers are shared lock-free (see `SegmentTable`,
/// `SharedTokenBucket`); counters are per worker, summed by `statistics()`. Worker 0 ages the
/// MAC tables once a second. Every ring is created (disabled, single issuer) in `init`: no
/// ring is set up after it, so a process may forbid io_uring_setup once the dataplane exists.
/// Each worker enables its own ring on its thread.
public final class Dataplane: Sendable {
    public struct Options: Sendable {
        /// Packet worker threads (1...256).
        public var workers: Int
        /// Frame buffers per queue and worker (each holds a 64 KB GSO frame plus its
        /// virtio-net header). Untouched buffers cost address space only; pools are reused
        /// last-in first-out.
        public var buffersPerQueue: Int
        /// Reads kept in flight per readable queue.
        public var readsInFlight: Int

        public init(workers: Int = 1, buffersPerQueue: Int = 64, readsInFlight: Int = 16) {
            self.workers = workers
            self.buffersPerQueue = buffersPerQueue
            self.readsInFlight = readsInFlight
        }
    }

    private let workers: [PacketWorker]
    private let plane: ForwardingPlane
    private let wakeup: EventFD

    /// Sets up every worker's ring and buffers. `ports[i]` attaches `plane.ports[i]`; `plane`
    /// becomes worker 0's handle and the others get handles of their own (`makeWorker()`).
    ///
    /// `uplink`: the tenant's VXLAN socket (UDP, bound to the underlay address, port 4789; owned
    /// by the caller, open until `stop()` returns), when `plane.hasUplink`. Worker 0 alone
    /// receives from it (one socket, one reader: no reordering between workers, and the
    /// underlay's rate is one socket's anyway); every worker sends on it.
    public init(plane: ForwardingPlane, ports: [PortAttachment], uplink: Int32? = nil, options: Options,
                logger: Logger) throws(SystemError) {
        precondition(ports.count == plane.ports.count, "one attachment per port")
        precondition(options.workers >= 1 && options.workers <= 256, "1...256 workers")
        precondition(options.buffersPerQueue > 0 && options.readsInFlight > 0)
        for case .tap(let queues) in ports { precondition(!queues.isEmpty, "every TAP port has at least one queue") }
        for case .vhostUser(let device) in ports { precondition(!device.queuePairs.isEmpty, "every vhost-user port has a queue pair") }
        self.plane = plane
        let wakeup = try EventFD()
        var workers: [PacketWorker] = []
        for index in 0..<options.workers {
            workers.append(try PacketWorker(index: index, of: options.workers, plane: index == 0 ? plane : plane.makeWorker(),
                                            ports: ports, uplink: uplink, wakeup: wakeup.rawValue, options: options,
                                            logger: logger))
        }
        self.workers = workers
        self.wakeup = wakeup
    }

    /// The same with TAP ports only: `queues[port]` lists the raw fds of that port's TAP queues.
    public convenience init(plane: ForwardingPlane, queues: [[Int32]], options: Options, logger: Logger) throws(SystemError) {
        try self.init(plane: plane, ports: queues.map { .tap(queues: $0) }, options: options, logger: logger)
    }

    /// Number of packet workers.
    public var workerCount: Int { workers.count }

    /// Starts every worker on a thread of its own; they run until `stop()`.
    public func start() {
        for worker in workers { worker.start() }
    }

    /// Asks every worker to stop and waits until they have.
    public func stop() {
        wakeup.signal()
        for worker in workers { worker.finished.wait() }
    }

    /// The counters of all workers, summed. Any thread, any time (not a packet worker's: it
    /// allocates); a snapshot taken while frames move may count a frame's rx and not yet its tx.
    public func statistics() -> SwitchStatistics { plane.statistics() }
}

/// One packet worker: a thread, its ring, its share of the queues and its frame buffers. After
/// `start()` every member is touched only by the worker's thread, except `finished`.
private final class PacketWorker: @unchecked Sendable {
    // @unchecked Sendable: see above; the ring is enabled and used by the worker thread only.

    private enum Operation: UInt64 {
        case read = 1, write = 2, poll = 3, wake = 4, tick = 5
        /// A vhost-user queue pair's rings changed (its change signal), its transmit kick fired,
        /// or the pause of an idle kick ended; the generation of the kick is in the port field.
        case change = 6, kick = 7, resume = 8
        /// Completions of cancellations, ignored.
        case cancelled = 9
        /// A sendmsg on the uplink; the index is its send slot.
        case send = 10
    }

    /// 12-byte virtio-net header + the largest GSO frame the kernel builds (65535 + 14).
    static let bufferSize = 65_600
    /// Frames one vhost-user queue pair hands over per turn before the worker looks at its ring
    /// again.
    static let driverBudget = 64

    let index: Int
    let finished = DispatchSemaphore(value: 0)
    private let workerCount: Int
    private let plane: ForwardingPlane
    private let ring: Ring
    private let logger: Logger
    private let options: Options
    private let wakeup: Int32
    typealias Options = Dataplane.Options

    /// This worker's queues (TAP queues it reads and vhost-user queue pairs), indexed by
    /// local queue number: port, fixed-file slot (-1 for a queue pair), whether it may hold frames,
    /// reads in flight, and its pool of free buffers (a stack:
    /// `free[q * buffersPerQueue ..< + freeCount[q]]`).
    private let queueCount: Int
    private let queuePort: UnsafeMutableBufferPointer<Int32>
    private let queueSlot: UnsafeMutableBufferPointer<Int32>
    private let queueReadable: UnsafeMutableBufferPointer<Bool>
    private let queueReads: UnsafeMutableBufferPointer<Int32>
    private let freeCount: UnsafeMutableBufferPointer<Int32>
    private let free: UnsafeMutableBufferPointer<Int32>
    /// TAP queues whose reads should be topped up after the current batch, each listed once.
    private var refill: [Int32] = []
    private let refillPending: UnsafeMutableBufferPointer<Bool>
    /// Per port: the fixed-file slot this worker writes to, or -1 for a vhost-user port.
    private let egressSlot: [Int32]
    /// Per port: for a vhost-user port, the queue pair this worker delivers into, and whether
    /// it delivered since its last flush.
    private let egressPair: [VhostNetQueuePair?]
    private var egressDirty: [Bool]
    /// Per local queue: poll wake-ups so far (wrapping), carried by each read it submits.
    private var pollCount: [UInt16]
    /// Per local queue: the vhost-user queue pair it is (nil for a TAP queue), its transmit kick
    /// fd (-1: none; owned by the pair) and the generation of that fd's poll.
    private let queuePair: [VhostNetQueuePair?]
    private var kickFD: [Int32]
    private var kickGeneration: [UInt16]
    /// Local queues that are vhost-user queue pairs.
    private let driverQueues: [Int]
    private var portFailed: [Bool]
    /// The uplink: its pseudo port, this worker's send side, and (worker 0) its receive queue.
    private let uplinkPort: Int
    private let uplinkSender: UplinkSender?
    private let uplinkReceiver: UplinkReceiver?
    private let uplinkQueue: Int

    private let buffers: UnsafeMutableRawPointer
    private let bufferCount: Int
    /// Writes in flight per buffer.
    private let pendingWrites: UnsafeMutableBufferPointer<Int32>

    init(index: Int, of workerCount: Int, plane: ForwardingPlane, ports: [PortAttachment], uplink: Int32?, wakeup: Int32,
         options: Options, logger: Logger) throws(SystemError) {
        self.index = index
        self.workerCount = workerCount
        self.plane = plane
        self.options = options
        self.logger = logger
        self.wakeup = wakeup

        // Every TAP queue is a fixed file of every ring (writes go to any port); a worker reads
        // only its own.
        var files: [Int32] = []
        var localPort: [Int32] = [], localSlot: [Int32] = []
        var egress: [Int32] = []
        var egressPair: [VhostNetQueuePair?] = []
        var queuePair: [VhostNetQueuePair?] = []
        var driverQueues: [Int] = []
        for (port, attachment) in ports.enumerated() {
            switch attachment {
            case .tap(let queues):
                let first = files.count
                files += queues
                for q in stride(from: index, to: queues.count, by: workerCount) {
                    localPort.append(Int32(port))
                    localSlot.append(Int32(first + q))
                    queuePair.append(nil)
                }
                egress.append(Int32(first + index % queues.count))
                egressPair.append(nil)
            case .vhostUser(let device):
                let pairs = device.queuePairs
                for p in stride(from: index, to: pairs.count, by: workerCount) {
                    driverQueues.append(localPort.count)
                    localPort.append(Int32(port))
                    localSlot.append(-1)
                    queuePair.append(pairs[p])
                }
                egress.append(-1)
                egressPair.append(pairs[index % pairs.count])
            }
        }
        uplinkPort = plane.uplinkPort
        var uplinkQueue = -1
        if let uplink {
            let slot = Int32(files.count)
            files.append(uplink)
            uplinkSender = try UplinkSender(socketSlot: slot, family: UplinkSender.family(of: uplink))
            if index == 0 {
                uplinkQueue = localPort.count
                localPort.append(Int32(ports.count))
                localSlot.append(slot)
                queuePair.append(nil)
                uplinkReceiver = try UplinkReceiver(count: options.buffersPerQueue)
            } else {
                uplinkReceiver = nil
            }
        } else {
            uplinkSender = nil
            uplinkReceiver = nil
        }
        self.uplinkQueue = uplinkQueue
        egressSlot = egress
        self.egressPair = egressPair
        egressDirty = Array(repeating: false, count: ports.count)
        pollCount = Array(repeating: 0, count: localPort.count)
        self.queuePair = queuePair
        kickFD = Array(repeating: -1, count: queuePair.count)
        kickGeneration = Array(repeating: 0, count: queuePair.count)
        self.driverQueues = driverQueues
        portFailed = Array(repeating: false, count: ports.count + 1)
        queueCount = localPort.count
        bufferCount = queueCount * options.buffersPerQueue

        let entries = Ring.entries(atLeast: max(1, queueCount) * options.readsInFlight * 4, minimum: 256, maximum: 16_384)
        // Created disabled and enabled by the worker's thread, which then is its only submitter.
        ring = try Ring(entries: entries, setup: [.disabled, .singleIssuer, .submitAll])
        if !files.isEmpty { try ring.registerFiles(files) }
        // io_uring operations bypass seccomp: the ring may only read, write, poll, time out and
        // cancel (no openat, socket, connect, ...), and no register operation is left once it
        // is enabled. Kick and wake-up eventfds are not registered files, so fixed files are
        // not required; the TAP queues are.
        // With an uplink, also sendmsg and recvmsg (on the uplink socket, a fixed file).
        try ring.restrict(to: [.read, .write, .pollAdd, .timeout, .asyncCancel] + (uplink == nil ? [] : [.sendmsg, .recvmsg]),
                          requireFixedFiles: false)

        // Anonymous mappings start zeroed: no buffer ever holds bytes from before this process.
        let total = max(1, bufferCount) * PacketWorker.bufferSize
        guard let memory = mmap(nil, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              memory != MAP_FAILED else {
            throw SystemError("mmap(\(total) bytes of frame buffers)", errno: errno)
        }
        buffers = memory

        let queueSlots = max(1, queueCount)
        queuePort = .allocate(capacity: queueSlots)
        queueSlot = .allocate(capacity: queueSlots)
        queueReadable = .allocate(capacity: queueSlots)
        queueReads = .allocate(capacity: queueSlots)
        freeCount = .allocate(capacity: queueSlots)
        refillPending = .allocate(capacity: queueSlots)
        free = .allocate(capacity: max(1, bufferCount))
        pendingWrites = .allocate(capacity: max(1, bufferCount))
        refill.reserveCapacity(queueSlots)
        for q in 0..<queueCount {
            queuePort[q] = localPort[q]
            queueSlot[q] = localSlot[q]
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
        munmap(buffers, max(1, bufferCount) * PacketWorker.bufferSize)
        queuePort.deallocate(); queueSlot.deallocate(); queueReadable.deallocate(); queueReads.deallocate()
        freeCount.deallocate(); refillPending.deallocate(); free.deallocate(); pendingWrites.deallocate()
    }

    func start() {
        let thread = Thread { [self] in
            setCurrentThreadName("bulkhead-sw\(index)")
            do {
                try self.run()
            } catch {
                self.logger.critical("switch worker stopped", metadata: ["worker": "\(self.index)", "error": "\(error)"])
            }
            self.finished.signal()
        }
        thread.start()
    }

    @inline(__always)
    private static func userData(_ op: Operation, _ index: Int, port: Int = 0) -> UInt64 {
        op.rawValue << 56 | UInt64(port) << 32 | UInt64(index)
    }

    @inline(__always)
    private func buffer(_ index: Int) -> UnsafeMutableRawPointer {
        buffers + index &* PacketWorker.bufferSize
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
    private func takeBuffer(queue q: Int) -> Int {
        freeCount[q] -= 1
        return Int(free[q * options.buffersPerQueue + Int(freeCount[q])])
    }

    @inline(__always)
    private func scheduleRefill(_ q: Int) {
        if !refillPending[q] && queueSlot[q] >= 0 {
            refillPending[q] = true
            refill.append(Int32(q))
        }
    }

    /// Tops up the reads of every TAP queue that asked for it and may hold frames.
    private func refillReads() throws(SystemError) {
        for q32 in refill {
            let q = Int(q32)
            refillPending[q] = false
            guard queueReadable[q], !portFailed[Int(queuePort[q])] else { continue }
            while queueReads[q] < options.readsInFlight && freeCount[q] > 0 {
                let index = takeBuffer(queue: q)
                if q == uplinkQueue, let receiver = uplinkReceiver {
                    let message = receiver.prepare(entry: index - q * options.buffersPerQueue, buffer: buffer(index),
                                                   capacity: PacketWorker.bufferSize)
                    try ring.prepareRecvmsg(fd: queueSlot[q], fixed: true, message: message,
                                            userData: PacketWorker.userData(.read, index, port: Int(pollCount[q])))
                } else {
                    try ring.prepareRead(fd: queueSlot[q], fixed: true, buffer: buffer(index),
                                         length: UInt32(PacketWorker.bufferSize),
                                         userData: PacketWorker.userData(.read, index, port: Int(pollCount[q])))
                }
                queueReads[q] += 1
            }
        }
        refill.removeAll(keepingCapacity: true)
    }

    /// Takes up to `driverBudget` frames from each kicked vhost-user queue pair, then publishes
    /// what it used. Returns whether one of them may hold more (then the worker must not sleep
    /// in the kernel: the guest is not asked to kick meanwhile).
    private func pullFromDrivers(now: UInt64) throws(SystemError) -> Bool {
        var more = false
        for q in driverQueues where queueReadable[q] {
            let port = Int(queuePort[q])
            guard !portFailed[port], let pair = queuePair[q] else { continue }
            var budget = PacketWorker.driverBudget
            while budget > 0 && freeCount[q] > 0 {
                budget -= 1
                let index = takeBuffer(queue: q)
                guard let length = pair.transmit(into: UnsafeMutableRawBufferPointer(start: buffer(index),
                                                                                     count: PacketWorker.bufferSize)) else {
                    queueReadable[q] = false
                    release(buffer: index)
                    break
                }
                try forward(buffer: index, length: min(length, PacketWorker.bufferSize), port: port, now: now)
            }
            pair.flush()
            // Out of budget, or every buffer is still being written: come back after the ring.
            if queueReadable[q] { more = true }
        }
        return more
    }

    /// Publishes the frames delivered into vhost-user queue pairs since the last flush (one
    /// interrupt per batch, where the guest asked for one).
    private func flushDeliveries() {
        for port in egressDirty.indices where egressDirty[port] {
            egressDirty[port] = false
            egressPair[port]?.flush()
        }
    }

    /// The rings of queue pair `q` changed (or the worker starts): takes its current transmit
    /// kick fd, cancels the poll on the previous one and polls the new one. A ring that just
    /// started may hold frames already: the pair is looked at once without waiting for a kick.
    private func refreshKick(queue q: Int) throws(SystemError) {
        guard let pair = queuePair[q] else { return }
        if kickFD[q] >= 0 {
            try ring.prepareCancel(target: PacketWorker.userData(.kick, q, port: Int(kickGeneration[q])),
                                   userData: PacketWorker.userData(.cancelled, q))
            try ring.prepareCancel(target: PacketWorker.userData(.resume, q, port: Int(kickGeneration[q])),
                                   userData: PacketWorker.userData(.cancelled, q))
        }
        kickGeneration[q] &+= 1
        kickFD[q] = pair.refresh() ?? -1
        if kickFD[q] >= 0 {
            try armKick(queue: q)
            queueReadable[q] = true
        } else {
            queueReadable[q] = false
        }
    }

    private func armKick(queue q: Int) throws(SystemError) {
        try ring.preparePoll(fd: kickFD[q], fixed: false, events: UInt32(POLLIN),
                             userData: PacketWorker.userData(.kick, q, port: Int(kickGeneration[q])))
    }

    /// The transmit kick of queue pair `q` fired: the pair takes the kick and says when to poll
    /// it again (at once, or after a pause when kicks keep bringing nothing).
    private func kickCompleted(queue q: Int, generation: UInt16, result: Int32, now: UInt64) throws(SystemError) {
        guard generation == kickGeneration[q], kickFD[q] >= 0, result >= 0, let pair = queuePair[q] else { return }
        queueReadable[q] = true
        switch pair.kicked(now: now) {
        case .now:
            try armKick(queue: q)
        case .at(let time):
            try ring.prepareTimeout(nanoseconds: time > now ? time - now : 0,
                                    userData: PacketWorker.userData(.resume, q, port: Int(generation)))
        }
    }

    private func arm() throws(SystemError) {
        try ring.preparePollMultishot(fd: wakeup, fixed: false, events: UInt32(POLLIN), userData: PacketWorker.userData(.wake, 0))
        if index == 0 {
            try ring.prepareTimeout(nanoseconds: 1_000_000_000, userData: PacketWorker.userData(.tick, 0))
        }
        for q in 0..<queueCount { try armPoll(queue: q) }
    }

    private func armPoll(queue q: Int) throws(SystemError) {
        if queueSlot[q] >= 0 {
            try ring.preparePollMultishot(fd: queueSlot[q], fixed: true, events: UInt32(POLLIN),
                                          userData: PacketWorker.userData(.poll, q))
            scheduleRefill(q)
        } else if let pair = queuePair[q] {
            try ring.preparePollMultishot(fd: pair.changeSignal, fixed: false, events: UInt32(POLLIN),
                                          userData: PacketWorker.userData(.change, q))
            try refreshKick(queue: q)
        }
    }

    private func run() throws(SystemError) {
        try ring.enable()
        try arm()
        try refillReads()

        let completions = UnsafeMutableBufferPointer<Completion>.allocate(capacity: 1024)
        defer { completions.deallocate() }
        logger.debug("switch worker running", metadata: [
            "worker": "\(index)", "queues": "\(queueCount)", "buffers": "\(bufferCount)",
        ])

        var driversBusy = false
        while true {
            if driversBusy { try ring.submit() } else { try ring.submitAndWait(1) }
            // A new fleet map is taken between batches, never within one.
            plane.refreshFleet()
            // Drain everything that is ready before going back to the kernel: one
            // io_uring_enter then carries the whole batch's reads and writes.
            var now = monotonicNanoseconds()
            var count = ring.reap(into: completions)
            while count > 0 {
                for i in 0..<count {
                    let completion = completions[i]
                    let index = Int(completion.user_data & 0xFFFF_FFFF)
                    switch Operation(rawValue: completion.user_data >> 56) {
                    case .read:
                        try readCompleted(buffer: index, result: completion.res,
                                          pollCount: UInt16(truncatingIfNeeded: completion.user_data >> 32), now: now)
                    case .write:
                        writeCompleted(buffer: index, port: Int(completion.user_data >> 32 & 0xFFFF), result: completion.res)
                    case .poll:
                        pollCompleted(queue: index, result: completion.res)
                        if completion.flags & Ring.moreFlag == 0, !portFailed[Int(queuePort[index])] {
                            try armPoll(queue: index)
                        }
                    case .wake:
                        logger.debug("switch worker stopping", metadata: ["worker": "\(self.index)"])
                        return
                    case .tick:
                        plane.expire(now: now)
                        try ring.prepareTimeout(nanoseconds: 1_000_000_000, userData: PacketWorker.userData(.tick, 0))
                    case .change:
                        try refreshKick(queue: index)
                        if completion.flags & Ring.moreFlag == 0 {
                            try ring.preparePollMultishot(fd: queuePair[index]?.changeSignal ?? -1, fixed: false,
                                                          events: UInt32(POLLIN), userData: PacketWorker.userData(.change, index))
                        }
                    case .kick:
                        try kickCompleted(queue: index, generation: UInt16(truncatingIfNeeded: completion.user_data >> 32),
                                          result: completion.res, now: now)
                    case .resume:
                        // The pause of an idle kick ended (-ETIME); a cancelled one is stale.
                        if UInt16(truncatingIfNeeded: completion.user_data >> 32) == kickGeneration[index], kickFD[index] >= 0,
                           completion.res == -ETIME {
                            queueReadable[index] = true
                            try armKick(queue: index)
                        }
                    case .cancelled:
                        break
                    case .send:
                        sendCompleted(slot: index, result: completion.res)
                    case nil:
                        logger.error("unexpected io_uring completion", metadata: ["user_data": "\(completion.user_data)"])
                    }
                }
                try refillReads()
                flushDeliveries()
                count = ring.reap(into: completions)
                if count > 0 { now = monotonicNanoseconds() }
            }
            driversBusy = driverQueues.isEmpty ? false : try pullFromDrivers(now: now)
            flushDeliveries()
            try refillReads()
        }
    }

    @inline(__always)
    private func pollCompleted(queue q: Int, result: Int32) {
        if result < 0 {
            failPort(Int(queuePort[q]), error: SystemError("poll", errno: -result))
            return
        }
        queueReadable[q] = true
        pollCount[q] &+= 1
        scheduleRefill(q)
    }

    private func failPort(_ port: Int, error: SystemError) {
        guard !portFailed[port] else { return }
        portFailed[port] = true
        logger.error("port stops receiving on this worker: its queue failed", metadata: [
            "worker": "\(index)", "port.index": "\(port)",
            "port.interface": "\(port < plane.ports.count ? plane.ports[port].interfaceName : "uplink")",
            "error": "\(error)",
        ])
    }

    @inline(__always)
    private func readCompleted(buffer index: Int, result: Int32, pollCount: UInt16, now: UInt64) throws(SystemError) {
        let q = queue(ofBuffer: index)
        queueReads[q] -= 1
        let port = Int(queuePort[q])
        guard result > 0 else {
            // ECANCELED: the kernel dropped the read it had moved off this thread (io-wq could
            // not run it, e.g. no worker thread could be made); nothing was read, so the queue is
            // treated as when a read finds it empty, never as a failed port.
            if result == -EAGAIN || result == -ECANCELED {
                // The queue was empty when this read looked: wait for its poll wake-up, unless
                // one came after the read was submitted. A read may complete after a later poll
                // (the kernel can retry it off the submitting thread); trusting its EAGAIN then
                // would leave a frame that arrived in between unread, with no wake-up to come.
                if pollCount == self.pollCount[q] {
                    queueReadable[q] = false
                } else {
                    scheduleRefill(q)
                }
            } else if result < 0 && result != -EINTR {
                failPort(port, error: SystemError("read", errno: -result))
            }
            return release(buffer: index)
        }
        scheduleRefill(q)
        if q == uplinkQueue {
            try forwardFromUplink(buffer: index, length: Int(result), queue: q, now: now)
        } else {
            try forward(buffer: index, length: Int(result), port: port, now: now)
        }
    }

    /// A datagram from the uplink socket (at `UplinkReceiver.datagramOffset` in `buffer`): checked
    /// by the plane, then written to local ports with a virtio-net header of flags 0 in place of
    /// the VXLAN header (the inner checksums were not verified: no DATA_VALID).
    private func forwardFromUplink(buffer index: Int, length: Int, queue q: Int, now: UInt64) throws(SystemError) {
        guard let receiver = uplinkReceiver else { return release(buffer: index) }
        let base = buffer(index)
        let (source, truncated) = receiver.received(entry: index - q * options.buffersPerQueue)
        guard let source, !truncated else {
            plane.recordDrop(truncated ? .malformedGiant : .vxlanUnknownHost, port: uplinkPort)
            return release(buffer: index)
        }
        let datagram = UnsafeRawBufferPointer(start: base + UplinkReceiver.datagramOffset, count: length)
        guard case .forward(let targets) = plane.processUplink(datagram: datagram, source: source, now: now),
              length >= VXLAN.headerLength else {
            return release(buffer: index)
        }
        base.initializeMemory(as: UInt8.self, repeating: 0, count: VirtioNetHeader.size)
        try emit(buffer: index, length: VirtioNetHeader.size + length - VXLAN.headerLength, targets: targets, header: nil)
    }

    /// A sendmsg on the uplink completed.
    private func sendCompleted(slot: Int, result: Int32) {
        guard let sender = uplinkSender else { return }
        let (buffer, bytes, datagrams) = sender.completed(slot: Int32(truncatingIfNeeded: slot))
        if result >= 0 {
            plane.recordTransmitted(port: uplinkPort, bytes: bytes, frames: datagrams)
        } else {
            plane.recordDrop(.txError, port: uplinkPort)
        }
        if let buffer {
            pendingWrites[buffer] -= 1
            if pendingWrites[buffer] == 0 { release(buffer: buffer) }
        }
    }

    /// Sends the frame in `buffer` (virtio-net header `header` as received) to the hosts the
    /// plane's last verdict named. Plain frames go from the buffer (which then waits for the
    /// sends); GSO and NEEDS_CSUM frames are segmented / checksummed into a segmentation buffer.
    private func sendToUplink(buffer index: Int, length: Int, header: VirtioNetHeader?) throws(SystemError) {
        guard let sender = uplinkSender else { return plane.recordDrop(.txError, port: uplinkPort) }
        let base = buffer(index)
        let frame = UnsafeRawBufferPointer(start: base + VirtioNetHeader.size, count: length - VirtioNetHeader.size)
        var failure: SystemError?
        if let header, header.isGSO || header.flags & VirtioNetHeader.flagNeedsCsum != 0 {
            guard let (scratchIndex, memory) = sender.takeScratch() else {
                return plane.recordDrop(.uplinkBusy, port: uplinkPort)
            }
            defer { sender.releaseScratchIfIdle(scratchIndex) }
            guard let layout = Segmentation.layOut(frame: frame, header: header, headroom: VXLAN.headerLength, into: memory),
                  layout.count > 0, let start = memory.baseAddress,
                  (layout.count - 1) * layout.stride + layout.lastLength <= memory.count else {
                return plane.recordDrop(.uplinkSegmentation, port: uplinkPort)
            }
            var headersWritten = false
            plane.forEachUplinkDestination { vni, address in
                guard failure == nil else { return }
                if !headersWritten {
                    for packet in 0..<layout.count { VXLAN.writeHeader(vni: vni, into: start + packet * layout.stride) }
                    headersWritten = true
                }
                do throws(SystemError) {
                    let lost = try sender.sendLaidOut(scratch: scratchIndex, layout: layout, to: address, ring: ring) {
                        PacketWorker.userData(.send, Int($0))
                    }
                    if let lost {
                        for _ in 0..<lost { plane.recordDrop(.uplinkBusy, port: uplinkPort) }
                    } else {
                        plane.recordDrop(.txError, port: uplinkPort)
                    }
                } catch {
                    failure = error
                }
            }
        } else {
            plane.forEachUplinkDestination { vni, address in
                guard failure == nil else { return }
                do throws(SystemError) {
                    switch try sender.sendPlain(frame: frame, buffer: index, vni: vni, to: address, ring: ring,
                                                userData: { PacketWorker.userData(.send, Int($0)) }) {
                    case .queued: pendingWrites[index] += 1
                    case .busy: plane.recordDrop(.uplinkBusy, port: uplinkPort)
                    case .unreachable: plane.recordDrop(.txError, port: uplinkPort)
                    }
                } catch {
                    failure = error
                }
            }
        }
        if let failure { throw failure }
    }

    /// Runs the frame in `buffer` (virtio-net header included) from `port` through the pipeline
    /// and hands it to every egress port; the buffer goes back to its pool after the last write.
    @inline(__always)
    private func forward(buffer index: Int, length: Int, port: Int, now: UInt64) throws(SystemError) {
        let base = buffer(index)
        guard length >= VirtioNetHeader.size,
              let header = VirtioNetHeader(parsing: UnsafeRawBufferPointer(start: base, count: VirtioNetHeader.size)) else {
            plane.recordDrop(.malformedVnetHeader, port: port)
            return release(buffer: index)
        }
        let frame = UnsafeRawBufferPointer(start: base + VirtioNetHeader.size, count: length - VirtioNetHeader.size)
        switch plane.process(frame: frame, header: header, ingress: port, now: now) {
        case .forward(let targets) where !targets.isEmpty:
            // The header goes out with the frame: only what the switch checked may reach another port.
            OffloadCheck.sanitizeForEgress(header: UnsafeMutableRawBufferPointer(start: base, count: VirtioNetHeader.size))
            try emit(buffer: index, length: length, targets: targets, header: header)
        case .answer(let answerLength) where answerLength > 0 && answerLength <= PacketWorker.bufferSize - VirtioNetHeader.size:
            // The request is consumed: its buffer carries the switch's answer back to the port.
            let answer = plane.answer
            base.initializeMemory(as: UInt8.self, repeating: 0, count: VirtioNetHeader.size)
            if let source = answer.baseAddress {
                (base + VirtioNetHeader.size).copyMemory(from: source, byteCount: min(answerLength, answer.count))
            }
            var targets = PortMask()
            targets.insert(port)
            try emit(buffer: index, length: VirtioNetHeader.size + min(answerLength, answer.count), targets: targets, header: nil)
        default:
            release(buffer: index)
        }
    }

    /// Writes the frame in `buffer` (`length` bytes, virtio-net header included) to every port of
    /// `targets`, the uplink included (`header`: the frame's header as received, for the uplink's
    /// segmentation; nil for a frame with none to honour). The buffer goes back to its pool after
    /// the last write.
    @inline(__always)
    private func emit(buffer index: Int, length: Int, targets: PortMask, header: VirtioNetHeader?) throws(SystemError) {
        let base = buffer(index)
        var failure: SystemError?
        targets.forEach { target in
            guard failure == nil else { return }
            if target == uplinkPort {
                do throws(SystemError) { try sendToUplink(buffer: index, length: length, header: header) } catch { failure = error }
                return
            }
            let slot = egressSlot[target]
            if slot < 0 {
                // A vhost-user port: copied into the guest's receive buffers now, published
                // with the batch (flushDeliveries).
                let delivered = egressPair[target]?.deliver(UnsafeRawBufferPointer(start: base, count: length)) ?? false
                if delivered {
                    egressDirty[target] = true
                    plane.recordTransmitted(port: target, bytes: length - VirtioNetHeader.size)
                } else {
                    plane.recordDrop(.txError, port: target)
                }
                return
            }
            do throws(SystemError) {
                try ring.prepareWrite(fd: slot, fixed: true, buffer: base, length: UInt32(length),
                                      userData: PacketWorker.userData(.write, index, port: target))
                pendingWrites[index] += 1
            } catch {
                failure = error
            }
        }
        if pendingWrites[index] == 0 { release(buffer: index) }
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
}
