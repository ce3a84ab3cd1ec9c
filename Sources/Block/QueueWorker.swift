import CLinux
import Dispatch
import Foundation
import HostOS
import Logging
import URing
import VhostUser
import Virtio
#if canImport(Glibc)
import Glibc
#endif

/// Serves one virtio-blk queue: a thread with its own io_uring, restricted to the operations a
/// block device needs on the volume's (registered) files.
///
/// Each kick drains the available ring. The I/O of the requests found goes to the kernel in
/// groups of `submitGroup` as they are parsed, not in one submission at the end: the block layer
/// plugs a submission of more than two requests and hands the disk nothing until the whole batch
/// is queued (measured on a virtio disk: one 32-request submission took 80 µs, all of it disk
/// idle time, 0.79 of fio's IOPS; groups of 4: 0.93 to 1.0). Each completion writes the status
/// byte and the used ring; after each batch of completions reaped the used index is published
/// once and the driver is notified once (through the call eventfd), if its EVENT_IDX /
/// NO_INTERRUPT setting asks for it.
final class QueueWorker: @unchecked Sendable {
    // @unchecked Sendable: after `start()` all state is touched by the worker thread only, except
    // `stopSignal` (an eventfd write) and `finished` (a semaphore).

    private struct Slot {
        var head: UInt16 = 0
        var statusAddress: UInt64 = 0
        var usedLength: UInt32 = 0
        var operations: Int = 0
        var status: BlockStatus = .ok
        var expected: Int64 = 0
    }

    private enum Tag: UInt64 { case io = 1, kick = 2, stop = 3, timer = 4 }

    /// Requests whose I/O is prepared before it is submitted: small enough that the disk starts
    /// on the first ones while the rest are parsed, and no block-layer plug holds a whole batch.
    static let submitGroup = 4

    /// Registered file slots.
    private enum File: Int32 { case data = 0, buffered = 1, kick = 2, stop = 3 }

    private let device: BlockDevice
    private let index: Int
    private var queue: SplitQueue
    private let memory: GuestMemory
    private let callFD: Int32?
    private let ring: Ring
    private let stopSignal: EventFD
    private let finished = DispatchSemaphore(value: 0)
    private let direct: Bool
    private let logger: Logger

    private var chain = DescriptorChain(capacity: 128)
    private var request = BlockRequest(capacity: Int(BlockDevice.segMax))
    private var slots: [Slot]
    private var freeSlots: [Int]
    /// iovec storage: `segMax` entries per slot.
    private let iovecs: UnsafeMutablePointer<iovec>
    private var kickBuffer: UInt64 = 0
    private var stopBuffer: UInt64 = 0
    private var inFlight = 0
    private var stopping = false
    private var broken = false
    private var timerArmed = false
    /// I/O operations prepared since the last submission.
    private var unsubmitted = 0

    init(device: BlockDevice, setup: VhostQueueSetup, memory: GuestMemory) throws {
        self.device = device
        index = setup.index
        self.memory = memory
        callFD = setup.callFD
        logger = device.logger
        let eventIndex = setup.features & VirtioFeatures.eventIndex != 0
        let indirect = setup.features & VirtioFeatures.indirectDescriptors != 0
        queue = try SplitQueue(size: setup.size, descriptorTable: setup.descriptorTable,
                               availableRing: setup.availableRing, usedRing: setup.usedRing, memory: memory,
                               eventIndex: eventIndex, indirectDescriptors: indirect, nextAvailable: setup.nextAvailable,
                               // A resumed queue continues after what it already returned.
                               nextUsed: memory.load(UInt16.self, at: setup.usedRing &+ 2) ?? 0)
        stopSignal = try EventFD()
        let size = Int(setup.size)
        slots = Array(repeating: Slot(), count: size)
        freeSlots = Array((0..<size).reversed())
        iovecs = .allocate(capacity: size * Int(BlockDevice.segMax))

        let volume = device.volume
        direct = volume.directFD != nil
        // Not `.singleIssuer` (DEFER_TASKRUN): deferred completions wait for the next wait in
        // io_uring_enter, which the group submissions above do not do (measured: 0.88 of fio's
        // read IOPS with it, 0.93 to 0.97 without).
        ring = try Ring(entries: Ring.entries(atLeast: size * 2, minimum: 64, maximum: 32_768), setup: [.disabled])
        // The ring may touch only these four files, and only with these operations.
        try ring.registerFiles([volume.directFD ?? volume.bufferedFD, volume.bufferedFD, setup.kickFD, stopSignal.rawValue])
        try ring.restrict(to: [.readv, .writev, .fsync, .fallocate, .read, .timeout], requireFixedFiles: true)
    }

    deinit { iovecs.deallocate() }

    func start() {
        let thread = Thread { [self] in
            setCurrentThreadName("blk-\(device.volume.volume.id.prefix(6))-q\(index)")
            do {
                try run()
            } catch {
                logger.error("virtio-blk queue worker failed", metadata: [
                    "volume.id": "\(device.volume.volume.id)", "queue.index": "\(index)", "error": "\(error)",
                ])
            }
            finished.signal()
        }
        thread.start()
    }

    /// Stops the worker after the requests in flight complete; returns the next available index.
    func stop() -> UInt16 {
        stopSignal.signal()
        finished.wait()
        return queue.nextAvailable
    }

    private static func userData(_ tag: Tag, _ value: Int = 0) -> UInt64 { tag.rawValue << 56 | UInt64(value) }

    private func armKick() throws(SystemError) {
        try withUnsafeMutableBytes(of: &kickBuffer) { (raw) throws(SystemError) in
            try ring.prepareRead(fd: File.kick.rawValue, fixed: true, buffer: raw.baseAddress!, length: 8,
                                 userData: QueueWorker.userData(.kick))
        }
    }

    private func run() throws {
        try ring.enable()
        try armKick()
        try withUnsafeMutableBytes(of: &stopBuffer) { (raw) throws(SystemError) in
            try ring.prepareRead(fd: File.stop.rawValue, fixed: true, buffer: raw.baseAddress!, length: 8,
                                 userData: QueueWorker.userData(.stop))
        }
        // Requests may already be waiting (a reconnect resumes a running queue).
        try drainAvailable()

        let completions = UnsafeMutableBufferPointer<Completion>.allocate(capacity: 256)
        defer { completions.deallocate() }
        while !(stopping && inFlight == 0) {
            try submitAndWait()
            var count = ring.reap(into: completions)
            while count > 0 {
                var completedAny = false
                for i in 0..<count {
                    let c = completions[i]
                    switch Tag(rawValue: c.user_data >> 56) {
                    case .io:
                        if complete(slot: Int(c.user_data & 0xFFFF_FFFF), result: c.res) { completedAny = true }
                    case .kick:
                        if c.res >= 0 || c.res == -EAGAIN || c.res == -EINTR { try armKick() }
                        try drainAvailable()
                    case .stop:
                        stopping = true
                    case .timer:
                        timerArmed = false
                        try drainAvailable()
                    case nil:
                        break
                    }
                }
                // Publish what this batch completed, and start what it made room for, before
                // looking for more completions.
                if completedAny { notifyIfNeeded() }
                try submitPrepared()
                count = ring.reap(into: completions)
            }
        }
        notifyIfNeeded()
    }

    private func submitAndWait() throws(SystemError) {
        unsubmitted = 0
        try ring.submitAndWait(1)
    }

    private func submitPrepared() throws(SystemError) {
        guard unsubmitted > 0 else { return }
        unsubmitted = 0
        try ring.submit()
    }

    /// Counts one prepared I/O operation and submits every `submitGroup`.
    private func prepared() throws(SystemError) {
        unsubmitted += 1
        if unsubmitted >= QueueWorker.submitGroup { try submitPrepared() }
    }

    private func notifyIfNeeded() {
        guard queue.publishUsed(), let callFD else { return }
        // Non-blocking (the backend set it): EAGAIN means the frontend saturated the counter,
        // so an interrupt is pending already.
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { write(callFD, $0.baseAddress, 8) }
    }

    /// Takes every available request the queue has room for and submits its I/O.
    private func drainAvailable() throws {
        guard !broken, !stopping else { return }
        var answered = false
        while true {
            queue.disableNotifications()
            while !freeSlots.isEmpty {
                if let throttle = device.throttle, !throttle.admits(now: monotonicNanoseconds()) {
                    // Over budget: leave the rest in the available ring and look again shortly.
                    try armTimer(nanoseconds: 1_000_000)
                    if answered { notifyIfNeeded() }
                    return
                }
                let head: UInt16?
                do {
                    head = try queue.popAvailable()
                } catch {
                    broken = true
                    logger.error("virtio-blk queue stopped: the driver broke it", metadata: [
                        "volume.id": "\(device.volume.volume.id)", "queue.index": "\(index)", "error": "\(error)",
                    ])
                    return
                }
                guard let head else { break }
                if try handle(head: head) { answered = true }
            }
            if freeSlots.isEmpty { break }  // completions will call us again
            // EVENT_IDX: ask for a kick, then look once more to close the race with the driver.
            queue.enableNotifications()
            if queue.pendingAvailable > 0 { continue }
            break
        }
        if answered { notifyIfNeeded() }
    }

    private func armTimer(nanoseconds: UInt64) throws {
        guard !timerArmed else { return }
        timerArmed = true
        try ring.prepareTimeout(nanoseconds: nanoseconds, userData: QueueWorker.userData(.timer))
    }

    /// Starts one request. Returns true when it was answered at once (no I/O).
    private func handle(head: UInt16) throws -> Bool {
        do {
            try queue.walk(head: head, into: &chain)
        } catch {
            logger.warning("virtio-blk: malformed descriptor chain", metadata: [
                "volume.id": "\(device.volume.volume.id)", "queue.index": "\(index)", "error": "\(error)",
            ])
            queue.pushUsed(head: head, length: 0)
            return true
        }
        do {
            try BlockRequestParser.parse(chain, memory: memory, into: &request, maxRanges: Int(BlockDevice.maxRanges))
        } catch {
            logger.warning("virtio-blk: malformed request", metadata: [
                "volume.id": "\(device.volume.volume.id)", "queue.index": "\(index)", "error": "\(error)",
            ])
            // With a status byte to write, the driver gets an answer; without one, an empty used entry.
            if let status = error.status { return answer(head: head, status: status, written: 0) }
            queue.pushUsed(head: head, length: 0)
            return true
        }
        let verdict = validate(request, limits: device.limits)
        guard verdict == .ok else { return answer(head: head, status: verdict, written: 0) }

        switch request.type {
        case .getID:
            let written = copyOut(device.serial)
            return answer(head: head, status: .ok, written: written)
        case .unsupported:
            return answer(head: head, status: .unsupported, written: 0)
        case .read, .write, .flush, .discard, .writeZeroes:
            break
        }

        let slotIndex = freeSlots.removeLast()
        slots[slotIndex] = Slot(head: head, statusAddress: request.statusAddress, usedLength: 1, operations: 0, status: .ok)
        let tag = QueueWorker.userData(.io, slotIndex)
        switch request.type {
        case .read, .write:
            let iov = iovecs + slotIndex * Int(BlockDevice.segMax)
            var count = 0
            var aligned = direct
            for segment in request.data {
                guard let pointer = memory.pointer(at: segment.address, length: UInt64(segment.length)) else {
                    freeSlots.append(slotIndex)
                    return answer(head: head, status: .ioError, written: 0)
                }
                iov[count] = iovec(iov_base: pointer, iov_len: Int(segment.length))
                if Int(bitPattern: pointer) % 512 != 0 || segment.length % 512 != 0 { aligned = false }
                count += 1
            }
            device.throttle?.charge(bytes: request.dataLength)
            // O_DIRECT needs 512-byte aligned buffers; other requests take the buffered fd.
            let file = aligned ? File.data : File.buffered
            let offset = Int64(request.sector * 512)
            slots[slotIndex].expected = Int64(request.dataLength)
            slots[slotIndex].operations = 1
            if request.type == .read {
                slots[slotIndex].usedLength = UInt32(request.dataLength) + 1
                try ring.prepareReadv(fd: file.rawValue, fixed: true, iovecs: iov, count: UInt32(count), offset: offset, userData: tag)
            } else {
                try ring.prepareWritev(fd: file.rawValue, fixed: true, iovecs: iov, count: UInt32(count), offset: offset, userData: tag)
            }
        case .flush:
            device.throttle?.charge(bytes: 0)
            slots[slotIndex].operations = 1
            slots[slotIndex].expected = 0
            try ring.prepareFsync(fd: File.data.rawValue, fixed: true, dataOnly: true, userData: tag)
        case .discard, .writeZeroes:
            device.throttle?.charge(bytes: 0)
            slots[slotIndex].expected = 0
            for range in request.ranges {
                let unmap = request.type == .discard || range.flags & 1 != 0
                try ring.prepareFallocate(fd: File.data.rawValue, fixed: true,
                                          mode: unmap ? bh_FALLOC_PUNCH_HOLE : bh_FALLOC_ZERO_RANGE,
                                          offset: range.sector * 512, length: UInt64(range.sectorCount) * 512, userData: tag)
                slots[slotIndex].operations += 1
            }
            if slots[slotIndex].operations == 0 {
                freeSlots.append(slotIndex)
                return answer(head: head, status: .ok, written: 0)
            }
        case .getID, .unsupported:
            break
        }
        inFlight += 1
        try prepared()
        return false
    }

    /// Writes the status byte and a used entry for a request answered without I/O.
    private func answer(head: UInt16, status: BlockStatus, written: UInt32) -> Bool {
        memory.store(status.rawValue, at: request.statusAddress)
        queue.pushUsed(head: head, length: written + 1)
        return true
    }

    /// Copies `bytes` into the request's writable data segments; returns how many were written.
    private func copyOut(_ bytes: [UInt8]) -> UInt32 {
        var written = 0
        for segment in request.data where written < bytes.count {
            let n = min(Int(segment.length), bytes.count - written)
            guard let pointer = memory.pointer(at: segment.address, length: UInt64(n)) else { break }
            bytes[written..<(written + n)].withUnsafeBytes { pointer.copyMemory(from: $0.baseAddress!, byteCount: n) }
            written += n
        }
        return UInt32(written)
    }

    /// Accounts one completed operation of a slot; returns true when the request finished.
    private func complete(slot index: Int, result: Int32) -> Bool {
        if result < 0 || (slots[index].expected > 0 && Int64(result) != slots[index].expected) {
            slots[index].status = .ioError
        }
        slots[index].operations -= 1
        guard slots[index].operations == 0 else { return false }
        let slot = slots[index]
        memory.store(slot.status.rawValue, at: slot.statusAddress)
        queue.pushUsed(head: slot.head, length: slot.status == .ok ? slot.usedLength : 1)
        freeSlots.append(index)
        inFlight -= 1
        if !stopping && !broken { try? drainAvailable() }
        return true
    }
}
