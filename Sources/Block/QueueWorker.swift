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

/// A failure a test asks for (`BlockDevice.failAfterSubmitting`).
struct InjectedFailure: Error, CustomStringConvertible {
    var description: String { "failure injected by a test, with I/O in flight" }
}

/// The io_uring one queue of a volume is served with, and the memory the kernel writes into for
/// it. Made with the device, before the block server jails itself: the jail forbids
/// `io_uring_setup` (a ring made later would carry no restrictions), so every ring the process
/// will ever use exists, restricted, before the first frontend connects.
///
/// The ring may touch only its four registered files (the volume's direct and buffered fds, the
/// current frontend's kick eventfd, the worker's stop eventfd) with the operations a block queue
/// needs; the kick slot is the only one that changes, through IORING_REGISTER_FILES_UPDATE, the
/// only register operation left. The kick and stop read buffers and the iovecs live here, not in
/// a worker, so nothing the kernel still holds ever points into freed memory.
final class QueueRing: @unchecked Sendable {
    // @unchecked Sendable: used by one thread at a time: the vhost-user connection thread while
    // no worker runs (`attach`, `detach`), otherwise that worker's thread (`BlockDevice` stops a
    // worker before it starts the next on the same ring).

    /// Registered file slots.
    enum File: Int32 { case data = 0, buffered = 1, kick = 2, stop = 3 }

    let ring: Ring
    let stopSignal: EventFD
    let kickBuffer: UnsafeMutablePointer<UInt64>
    let stopBuffer: UnsafeMutablePointer<UInt64>
    /// `segMax` iovecs per slot of the largest queue.
    let iovecs: UnsafeMutablePointer<iovec>
    let completions: UnsafeMutableBufferPointer<Completion>

    init(volume: VolumeFile, maxQueueSize: UInt16, segmentsPerRequest: Int) throws(SystemError) {
        stopSignal = try EventFD(nonBlocking: true)
        // Not `.singleIssuer` (DEFER_TASKRUN): deferred completions wait for the next wait in
        // io_uring_enter, which the group submissions of the worker do not do (measured: 0.88 of
        // fio's read IOPS with it, 0.93 to 0.97 without).
        ring = try Ring(entries: Ring.entries(atLeast: Int(maxQueueSize) * 2, minimum: 64, maximum: 32_768), setup: [.disabled])
        try ring.registerFiles([volume.directFD ?? volume.bufferedFD, volume.bufferedFD, -1, stopSignal.rawValue])
        try ring.restrict(to: [.readv, .writev, .fsync, .fallocate, .read, .timeout, .asyncCancel],
                          registerOperations: [.filesUpdate], requireFixedFiles: true)
        try ring.enable()
        kickBuffer = .allocate(capacity: 1)
        stopBuffer = .allocate(capacity: 1)
        iovecs = .allocate(capacity: Int(maxQueueSize) * segmentsPerRequest)
        completions = .allocate(capacity: 256)
    }

    deinit {
        kickBuffer.deallocate()
        stopBuffer.deallocate()
        iovecs.deallocate()
        completions.deallocate()
    }

    /// Puts a frontend's kick eventfd in the kick slot and clears a stop signal left over.
    func attach(kick: Int32) throws(SystemError) {
        try ring.updateFile(slot: UInt32(File.kick.rawValue), fd: kick)
        var stale: UInt64 = 0
        _ = read(stopSignal.rawValue, &stale, 8)  // non-blocking: EAGAIN when there is none
    }

    /// Empties the kick slot, so the ring keeps no reference to a frontend that left.
    func detach() {
        try? ring.updateFile(slot: UInt32(File.kick.rawValue), fd: -1)
    }
}

/// Serves one virtio-blk queue: a thread on the queue's `QueueRing`, restricted to the
/// operations a block device needs on the volume's (registered) files.
///
/// Each kick drains the available ring. The I/O of the requests found goes to the kernel in
/// groups of `submitGroup` as they are parsed, not in one submission at the end: the block layer
/// plugs a submission of more than two requests and hands the disk nothing until the whole batch
/// is queued (measured on a virtio disk: one 32-request submission took 80 µs, all of it disk
/// idle time, 0.79 of fio's IOPS; groups of 4: 0.93 to 1.0). Each completion writes the status
/// byte and the used ring; after each batch of completions reaped the used index is published
/// once and the driver is notified once (through the call eventfd), if its EVENT_IDX /
/// NO_INTERRUPT setting asks for it.
///
/// What the driver controls is bounded: request sizes (`BlockLimits`), the QoS of the volume
/// (every request taken is charged, malformed ones too), kicks (a kick descriptor that is always
/// readable gets read less and less often, see `kicked()`), and warnings (`GuestWarnings`).
/// A worker never leaves I/O in flight behind: `stop()`, and a worker that fails, wait for every
/// operation the kernel still has before the guest's memory can be unmapped.
final class QueueWorker: @unchecked Sendable {
    // @unchecked Sendable: after `start()` all state is touched by the worker thread only, except
    // through `rings.stopSignal` (an eventfd write) and `finished` (a semaphore).

    private struct Slot {
        var head: UInt16 = 0
        var statusAddress: UInt64 = 0
        var usedLength: UInt32 = 0
        var operations: Int = 0
        var status: BlockStatus = .ok
        var expected: Int64 = 0
    }

    private enum Tag: UInt64 { case io = 1, kick = 2, stop = 3, timer = 4, cancel = 5 }

    /// Requests whose I/O is prepared before it is submitted: small enough that the disk starts
    /// on the first ones while the rest are parsed, and no block-layer plug holds a whole batch.
    static let submitGroup = 4
    /// Kicks in a row that bring no request before the worker stops reading kicks for a while.
    /// A driver's own spurious kicks (a race with EVENT_IDX) come one at a time.
    static let idleKickLimit = 64
    /// The longest pause between reads of a kick descriptor that never brings a request; the
    /// pause doubles from 1 ms to this. The queue is still looked at when the pause ends and
    /// whenever a completion frees a slot, so a driver that was caught by it loses at most this.
    static let maxKickPause: UInt64 = 64_000_000

    private let device: BlockDevice
    private let index: Int
    private var queue: SplitQueue
    private let memory: GuestMemory
    private let callFD: Int32?
    private let rings: QueueRing
    private let finished = DispatchSemaphore(value: 0)
    private let direct: Bool
    private let logger: Logger

    private var chain = DescriptorChain(capacity: 128)
    private var request = BlockRequest(capacity: Int(BlockDevice.segMax))
    private var slots: [Slot]
    private var freeSlots: [Int]
    private var inFlight = 0
    private var stopping = false
    private var broken = false
    /// Which of the worker's own operations the kernel still holds.
    private var kickArmed = false
    private var stopArmed = false
    private var timerArmed = false
    /// Kicks in a row that brought no request, and when reading kicks resumes after a pause.
    private var idleKicks = 0
    private var kickPausedUntil: UInt64?
    /// Chains taken from the available ring, ever.
    private var taken: UInt64 = 0
    /// I/O operations prepared since the last submission.
    private var unsubmitted = 0

    private var ring: Ring { _read { yield rings.ring } }

    init(device: BlockDevice, setup: VhostQueueSetup, memory: GuestMemory, rings: QueueRing) throws {
        self.device = device
        index = setup.index
        self.memory = memory
        self.rings = rings
        callFD = setup.callFD
        logger = device.logger
        let eventIndex = setup.features & VirtioFeatures.eventIndex != 0
        let indirect = setup.features & VirtioFeatures.indirectDescriptors != 0
        guard setup.size <= device.maxQueueSize else { throw SplitQueue.SetupError.invalidSize(setup.size) }
        queue = try SplitQueue(size: setup.size, descriptorTable: setup.descriptorTable,
                               availableRing: setup.availableRing, usedRing: setup.usedRing, memory: memory,
                               eventIndex: eventIndex, indirectDescriptors: indirect, nextAvailable: setup.nextAvailable,
                               // A resumed queue continues after what it already returned.
                               nextUsed: memory.load(UInt16.self, at: setup.usedRing &+ 2) ?? 0)
        let size = Int(setup.size)
        slots = Array(repeating: Slot(), count: size)
        freeSlots = Array((0..<size).reversed())
        direct = device.volume.directFD != nil
        try rings.attach(kick: setup.kickFD)
    }

    func start() {
        let thread = Thread { [self] in
            setCurrentThreadName("blk-\(device.volume.volume.id.prefix(6))-q\(index)")
            run()
            finished.signal()
        }
        thread.start()
    }

    /// Stops the worker after the requests in flight complete; returns the next available index.
    func stop() -> UInt16 {
        rings.stopSignal.signal()
        finished.wait()
        rings.detach()
        return queue.nextAvailable
    }

    private var metadata: Logger.Metadata {
        ["volume.id": "\(device.volume.volume.id)", "queue.index": "\(index)"]
    }

    private static func userData(_ tag: Tag, _ value: Int = 0) -> UInt64 { tag.rawValue << 56 | UInt64(value) }

    private func run() {
        do {
            try serve()
        } catch {
            var fields = metadata
            fields["error"] = "\(error)"
            logger.error("virtio-blk queue worker failed; it finishes the I/O in flight and serves nothing more until the queue is set up again", metadata: fields)
        }
        do {
            try windDown()
        } catch {
            // The kernel may still be writing into guest memory that the connection would unmap
            // once this worker is gone: ending the process is the only safe way out.
            var fields = metadata
            fields["error"] = "\(error)"
            fields["io.inFlight"] = "\(inFlight)"
            logger.critical("virtio-blk queue worker cannot drain its ring; exiting rather than unmap guest memory with I/O in flight", metadata: fields)
            _exit(70)
        }
        device.warnings.flush(metadata: metadata)
    }

    private func armKick() throws(SystemError) {
        guard !kickArmed else { return }
        try ring.prepareRead(fd: QueueRing.File.kick.rawValue, fixed: true, buffer: rings.kickBuffer, length: 8,
                             userData: QueueWorker.userData(.kick))
        kickArmed = true
    }

    private func armStop() throws(SystemError) {
        try ring.prepareRead(fd: QueueRing.File.stop.rawValue, fixed: true, buffer: rings.stopBuffer, length: 8,
                             userData: QueueWorker.userData(.stop))
        stopArmed = true
    }

    private func serve() throws {
        try armStop()
        try armKick()
        // Requests may already be waiting (a reconnect resumes a running queue).
        try drainAvailable()

        let completions = rings.completions
        while !stopping {
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
                        kickArmed = false
                        try kicked(result: c.res)
                    case .stop:
                        stopArmed = false
                        stopping = true
                    case .timer:
                        timerArmed = false
                        try timerFired()
                    case .cancel, nil:
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
    }

    /// After a stop (or a failure): takes no new request, cancels the kick read and the timer,
    /// and returns only when the kernel holds nothing of this worker's: every I/O completed and
    /// answered, and (after a failure) the stop signal received, so the ring is clean for the
    /// next worker and no operation can touch guest memory after it is unmapped.
    private func windDown() throws(SystemError) {
        stopping = true
        if kickArmed { try ring.prepareCancel(target: QueueWorker.userData(.kick), userData: QueueWorker.userData(.cancel)) }
        if timerArmed { try ring.prepareCancel(target: QueueWorker.userData(.timer), userData: QueueWorker.userData(.cancel)) }
        let completions = rings.completions
        while inFlight > 0 || kickArmed || timerArmed || stopArmed {
            try submitAndWait()
            let count = ring.reap(into: completions)
            for i in 0..<count {
                let c = completions[i]
                switch Tag(rawValue: c.user_data >> 56) {
                case .io: _ = complete(slot: Int(c.user_data & 0xFFFF_FFFF), result: c.res)
                case .kick: kickArmed = false
                case .stop: stopArmed = false
                case .timer: timerArmed = false
                case .cancel:
                    // ENOENT: it completed already (its completion is on the way); EALREADY: it
                    // is being interrupted. Anything else means it may never complete.
                    if c.res < 0 && c.res != -ENOENT && c.res != -EALREADY {
                        throw SystemError("io_uring cancel of the kick read or timer", negated: c.res)
                    }
                case nil: break
                }
            }
            // Answer as completions come: after a failure the stop may be a long way off.
            notifyIfNeeded()
        }
    }

    /// A kick arrived. A kick descriptor that is always readable (an eventfd in semaphore mode
    /// with a huge counter) would keep this thread reading it in a loop: after `idleKickLimit`
    /// kicks in a row that brought no request, the next read waits 1 ms, then 2, 4, ... up to
    /// `maxKickPause`. Any request taken ends the pause.
    private func kicked(result: Int32) throws {
        let before = taken
        try drainAvailable()
        if taken != before {
            idleKicks = 0
        } else {
            idleKicks = min(idleKicks + 1, Int.max - 1)
        }
        // A failed read (not an eventfd after all, or closed) is not re-armed: completions and
        // the timer still look at the queue.
        guard result >= 0 || result == -EAGAIN || result == -EINTR else { return }
        guard idleKicks >= QueueWorker.idleKickLimit else {
            try armKick()
            return
        }
        let doublings = min(idleKicks - QueueWorker.idleKickLimit, 6)
        let pause = min(UInt64(1_000_000) << UInt64(doublings), QueueWorker.maxKickPause)
        kickPausedUntil = monotonicNanoseconds() &+ pause
        try armTimer(nanoseconds: pause)
    }

    private func timerFired() throws {
        if let until = kickPausedUntil {
            let now = monotonicNanoseconds()
            if now >= until {
                kickPausedUntil = nil
                try armKick()
            } else {
                try armTimer(nanoseconds: until - now)
            }
        }
        try drainAvailable()
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
                if let throttle = device.throttle {
                    let now = monotonicNanoseconds()
                    if !throttle.admits(now: now) {
                        // Over budget: leave the rest in the available ring and look again when
                        // the budget allows one more request.
                        try armTimer(nanoseconds: min(max(throttle.nanosecondsUntilAdmitted(now: now), 100_000), 1_000_000_000))
                        if answered { notifyIfNeeded() }
                        return
                    }
                }
                let head: UInt16?
                do {
                    head = try queue.popAvailable()
                } catch {
                    broken = true
                    warn("virtio-blk queue stopped: the driver broke it", error)
                    // What this drain answered before the queue broke still reaches the driver.
                    if answered { notifyIfNeeded() }
                    return
                }
                guard let head else { break }
                taken &+= 1
                if idleKicks > 0 {
                    // Requests again: kicks are worth reading at once.
                    idleKicks = 0
                    if kickPausedUntil != nil {
                        kickPausedUntil = nil
                        try armKick()
                    }
                }
                if try handle(head: head) { answered = true }
            }
            if inFlight > 0, device.failAfterSubmitting.load(ordering: .relaxed),
               device.failAfterSubmitting.compareExchange(expected: true, desired: false, ordering: .relaxed).exchanged {
                try submitPrepared()
                throw InjectedFailure()
            }
            if freeSlots.isEmpty { break }  // completions will call us again
            // EVENT_IDX: ask for a kick, then look once more to close the race with the driver.
            queue.enableNotifications()
            if queue.pendingAvailable > 0 { continue }
            break
        }
        if answered { notifyIfNeeded() }
    }

    /// Arms the worker's one timer, unless it is armed already (it then fires earlier or later,
    /// and whatever it finds is looked at again).
    private func armTimer(nanoseconds: UInt64) throws(SystemError) {
        guard !timerArmed else { return }
        timerArmed = true
        try ring.prepareTimeout(nanoseconds: nanoseconds, userData: QueueWorker.userData(.timer))
    }

    private func warn(_ message: String, _ error: some Error) {
        var fields = metadata
        fields["error"] = "\(error)"
        device.warnings.warn("\(message)", metadata: fields)
    }

    /// Starts one request. Returns true when it was answered at once (no I/O).
    private func handle(head: UInt16) throws -> Bool {
        do {
            try queue.walk(head: head, into: &chain, maxDescriptors: BlockDevice.maxChainDescriptors)
        } catch {
            device.throttle?.charge(bytes: 0)
            warn("virtio-blk: malformed descriptor chain", error)
            queue.pushUsed(head: head, length: 0)
            return true
        }
        do {
            try BlockRequestParser.parse(chain, memory: memory, into: &request, maxRanges: Int(BlockDevice.maxRanges))
        } catch {
            device.throttle?.charge(bytes: 0)
            warn("virtio-blk: malformed request", error)
            // With a status byte to write, the driver gets an answer; without one, an empty used entry.
            if let status = error.status { return answer(head: head, status: status, written: 0) }
            queue.pushUsed(head: head, length: 0)
            return true
        }
        // Every request taken costs its I/O count (and its bytes, when it moves data), refused
        // ones too: the QoS of a volume bounds what its driver can make this thread do.
        let verdict = validate(request, limits: device.limits)
        guard verdict == .ok else {
            device.throttle?.charge(bytes: 0)
            return answer(head: head, status: verdict, written: 0)
        }

        switch request.type {
        case .getID:
            device.throttle?.charge(bytes: 0)
            let written = copyOut(device.serial)
            return answer(head: head, status: .ok, written: written)
        case .unsupported:
            device.throttle?.charge(bytes: 0)
            return answer(head: head, status: .unsupported, written: 0)
        case .read, .write, .flush, .discard, .writeZeroes:
            break
        }

        let slotIndex = freeSlots.removeLast()
        slots[slotIndex] = Slot(head: head, statusAddress: request.statusAddress, usedLength: 1, operations: 0, status: .ok)
        let tag = QueueWorker.userData(.io, slotIndex)
        switch request.type {
        case .read, .write:
            let iov = rings.iovecs + slotIndex * Int(BlockDevice.segMax)
            var count = 0
            var aligned = direct
            // `validate` bounded the segments (segMax, sizeMax) and the total (maxTransferBytes).
            for segment in request.data {
                guard let pointer = memory.pointer(at: segment.address, length: UInt64(segment.length)) else {
                    freeSlots.append(slotIndex)
                    device.throttle?.charge(bytes: 0)
                    return answer(head: head, status: .ioError, written: 0)
                }
                iov[count] = iovec(iov_base: pointer, iov_len: Int(segment.length))
                if Int(bitPattern: pointer) % 512 != 0 || segment.length % 512 != 0 { aligned = false }
                count += 1
            }
            device.throttle?.charge(bytes: request.dataLength)
            // O_DIRECT needs 512-byte aligned buffers; other requests take the buffered fd.
            let file = aligned ? QueueRing.File.data : QueueRing.File.buffered
            let offset = Int64(request.sector &* 512)
            slots[slotIndex].expected = Int64(request.dataLength)
            slots[slotIndex].operations = 1
            if request.type == .read {
                slots[slotIndex].usedLength = UInt32(clamping: request.dataLength &+ 1)
                try ring.prepareReadv(fd: file.rawValue, fixed: true, iovecs: iov, count: UInt32(count), offset: offset, userData: tag)
            } else {
                try ring.prepareWritev(fd: file.rawValue, fixed: true, iovecs: iov, count: UInt32(count), offset: offset, userData: tag)
            }
        case .flush:
            device.throttle?.charge(bytes: 0)
            slots[slotIndex].operations = 1
            slots[slotIndex].expected = 0
            try ring.prepareFsync(fd: QueueRing.File.data.rawValue, fixed: true, dataOnly: true, userData: tag)
        case .discard, .writeZeroes:
            device.throttle?.charge(bytes: 0)
            slots[slotIndex].expected = 0
            for range in request.ranges {
                let unmap = request.type == .discard || range.flags & 1 != 0
                // Both modes keep the file's size (FALLOC_FL_KEEP_SIZE), and `validate` kept
                // every range inside the volume: no request can grow the file.
                try ring.prepareFallocate(fd: QueueRing.File.data.rawValue, fixed: true,
                                          mode: unmap ? bh_FALLOC_PUNCH_HOLE : bh_FALLOC_ZERO_RANGE,
                                          offset: range.sector &* 512, length: UInt64(range.sectorCount) &* 512, userData: tag)
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
        queue.pushUsed(head: head, length: written &+ 1)
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
        guard index < slots.count, slots[index].operations > 0 else { return false }
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
