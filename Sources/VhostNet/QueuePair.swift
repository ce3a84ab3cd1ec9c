import HostOS
import Synchronization
import VhostUser
import Virtio

/// What one queue pair of a vhost-user-net port counted. Drops have a reason each; none of them
/// stops the queue, except `brokenRings`, which counts rings the driver broke (its available
/// index jumped, a receive chain it posted was malformed): such a ring is served again once
/// the frontend sets it up again.
public struct VhostNetCounters: Sendable, Equatable {
    /// Frames copied out of the transmit ring (guest to switch), and their bytes without header.
    public var transmittedFrames: UInt64 = 0
    public var transmittedBytes: UInt64 = 0
    /// Frames written into the receive ring (switch to guest), and their bytes without header.
    public var deliveredFrames: UInt64 = 0
    public var deliveredBytes: UInt64 = 0

    /// Transmit chains refused: malformed (a loop, an index out of range, a buffer outside guest
    /// memory, more than `VhostNetQueuePair.maxChainDescriptors` descriptors, a bad indirect table).
    public var txMalformedChains: UInt64 = 0
    /// Transmit chains with a device-writable descriptor.
    public var txWritableDescriptors: UInt64 = 0
    /// Transmit frames over `VhostNetQueuePair.maxFrameBytes`.
    public var txOversize: UInt64 = 0
    /// Transmit chains shorter than a virtio-net header and an Ethernet header.
    public var txRunts: UInt64 = 0
    /// Transmit frames asking for an offload (partial checksum, TSO) that was not negotiated.
    public var txOffloadNotNegotiated: UInt64 = 0

    /// Frames for the guest dropped because the receive ring is not running (or broken).
    public var rxNotReady: UInt64 = 0
    /// Frames dropped because the guest had no receive buffers posted.
    public var rxNoBuffers: UInt64 = 0
    /// Frames dropped because the posted buffers were too small (without mergeable buffers,
    /// one chain must hold the frame; with them, at most `maxMergedBuffers` chains).
    public var rxBuffersTooSmall: UInt64 = 0
    /// Frames whose offload the guest did not negotiate (TSO without GUEST_TSO4/6, ECN, UDP GSO),
    /// or whose partial checksum could not be completed.
    public var rxOffloadNotNegotiated: UInt64 = 0
    /// Frames handed over without a whole virtio-net header, or over `maxFrameBytes`.
    public var rxMalformedFrames: UInt64 = 0

    /// Rings the driver broke (see above).
    public var brokenRings: UInt64 = 0
    /// Kicks read, and pauses of the kick descriptor after kicks that brought nothing.
    public var kicks: UInt64 = 0
    public var kickPauses: UInt64 = 0

    public init() {}

    /// Every drop, whatever its reason.
    public var drops: UInt64 {
        txMalformedChains &+ txWritableDescriptors &+ txOversize &+ txRunts &+ txOffloadNotNegotiated
            &+ rxNotReady &+ rxNoBuffers &+ rxBuffersTooSmall &+ rxOffloadNotNegotiated &+ rxMalformedFrames
    }

    /// Field-wise sum (for a port's total over its queue pairs).
    public static func + (a: VhostNetCounters, b: VhostNetCounters) -> VhostNetCounters {
        var s = VhostNetCounters()
        s.transmittedFrames = a.transmittedFrames &+ b.transmittedFrames
        s.transmittedBytes = a.transmittedBytes &+ b.transmittedBytes
        s.deliveredFrames = a.deliveredFrames &+ b.deliveredFrames
        s.deliveredBytes = a.deliveredBytes &+ b.deliveredBytes
        s.txMalformedChains = a.txMalformedChains &+ b.txMalformedChains
        s.txWritableDescriptors = a.txWritableDescriptors &+ b.txWritableDescriptors
        s.txOversize = a.txOversize &+ b.txOversize
        s.txRunts = a.txRunts &+ b.txRunts
        s.txOffloadNotNegotiated = a.txOffloadNotNegotiated &+ b.txOffloadNotNegotiated
        s.rxNotReady = a.rxNotReady &+ b.rxNotReady
        s.rxNoBuffers = a.rxNoBuffers &+ b.rxNoBuffers
        s.rxBuffersTooSmall = a.rxBuffersTooSmall &+ b.rxBuffersTooSmall
        s.rxOffloadNotNegotiated = a.rxOffloadNotNegotiated &+ b.rxOffloadNotNegotiated
        s.rxMalformedFrames = a.rxMalformedFrames &+ b.rxMalformedFrames
        s.brokenRings = a.brokenRings &+ b.brokenRings
        s.kicks = a.kicks &+ b.kicks
        s.kickPauses = a.kickPauses &+ b.kickPauses
        return s
    }
}

/// When a worker should look at a transmit kick descriptor again (`VhostNetQueuePair.kicked`).
public enum KickPoll: Sendable, Equatable {
    /// Poll it again right away.
    case now
    /// Kicks brought nothing for a while: poll it (and call `transmit`) again at this
    /// `monotonicNanoseconds()` time, not before.
    case at(UInt64)
}

/// One receive/transmit queue pair of a vhost-user-net port: what a switch worker thread calls.
///
/// The vhost-user connection thread starts and stops the two rings (`VhostNetDevice`); a worker
/// thread moves frames. Every call takes the pair's lock, uncontended except while a ring starts
/// or stops, so a ring never changes (and its guest memory is never unmapped) under a call. No
/// call blocks, allocates once warm, or makes a syscall except `kicked` (one read), `refresh`
/// (one read) and `flush` (one write per ring that owes the driver an interrupt).
///
/// The worker's loop, per pair:
/// 1. Poll `changeSignal` (stable for the pair's life). When it is readable (and once at the
///    start), call `refresh()`: it returns the transmit kick descriptor to poll from now on
///    (nil: none; the transmit ring is stopped). A descriptor `refresh` returned stays open
///    until the next `refresh`, so a poll prepared on it never names a reused number.
/// 2. When the kick descriptor is readable, call `kicked(now:)`, then `transmit(into:)` with
///    a free buffer until it returns nil, then `flush()`. Poll the kick descriptor again as
///    `kicked` said. A worker that stops calling `transmit` before nil (a budget per round)
///    must come back without waiting for a kick: the driver is not asked to kick meanwhile.
/// 3. For each frame the switch sends to this port: `deliver(_:)`; after the batch, `flush()`.
public final class VhostNetQueuePair: @unchecked Sendable {
    // @unchecked Sendable: `state` is behind a Mutex; `changeSignal` is an eventfd whose
    // descriptor is immutable.

    /// Largest frame (without virtio-net header) either way: a 64 KiB IP packet plus an Ethernet
    /// header with one VLAN tag.
    public static let maxFrameBytes = 65_535 + 18
    /// The buffer `transmit` needs: a 12-byte header and the largest frame.
    public static let frameBufferBytes = VirtioNetHeader.size + maxFrameBytes
    /// The most descriptors one chain may have however it is split (Linux sends at most
    /// MAX_SKB_FRAGS + 2 = 19 per frame, DPDK one per mbuf segment).
    public static let maxChainDescriptors = 64
    /// With mergeable buffers, the most receive chains one frame may take (a 64 KiB frame in
    /// Linux's smallest mergeable buffers, 1536 bytes, takes 43).
    public static let maxMergedBuffers = 64
    /// Kicks in a row that bring no frame before the kick descriptor is paused, and the longest
    /// pause (doubling from 1 ms): a kick descriptor that is always readable costs a poll per
    /// pause, not a core.
    public static let idleKickLimit = 64
    public static let maxKickPause: UInt64 = 64_000_000

    /// The pair's index in its port (queues 2 x index and 2 x index + 1).
    public let index: Int
    private let change: EventFD
    private let state: Mutex<PairState>

    init(index: Int) throws(SystemError) {
        self.index = index
        change = try EventFD(nonBlocking: true)
        state = Mutex(PairState())
    }

    /// Readable when a ring of the pair started, stopped or changed: call `refresh()`.
    public var changeSignal: Int32 { change.rawValue }

    /// Takes the change signal, closes the kick descriptors of rings that have stopped, and
    /// returns the transmit kick descriptor to poll (owned by the pair, valid until the next
    /// `refresh`), or nil while the transmit ring is stopped.
    public func refresh() -> Int32? {
        _ = EventCounter.take(change.rawValue)
        let retired = state.withLock { s -> [Int32] in
            defer { s.retiredKicks.removeAll() }
            return s.retiredKicks
        }
        for fd in retired { _ = FileDescriptor(taking: fd) }
        return state.withLock { $0.kick }
    }

    /// The transmit kick descriptor was readable: takes its counter, and says when to poll it
    /// again (see `KickPoll`).
    public func kicked(now: UInt64) -> KickPoll {
        state.withLock { s in
            guard let kick = s.kick else { return .now }
            _ = EventCounter.take(kick)
            s.counters.kicks &+= 1
            if s.takenSinceKick > 0 {
                s.idleKicks = 0
            } else {
                s.idleKicks = min(s.idleKicks &+ 1, Int.max - 1)
            }
            s.takenSinceKick = 0
            guard s.idleKicks >= VhostNetQueuePair.idleKickLimit else { return .now }
            s.counters.kickPauses &+= 1
            let doublings = UInt64(min(s.idleKicks - VhostNetQueuePair.idleKickLimit, 6))
            return .at(now &+ min(UInt64(1_000_000) << doublings, VhostNetQueuePair.maxKickPause))
        }
    }

    /// Copies the next frame the guest transmitted into `buffer` (at least `frameBufferBytes`):
    /// a 12-byte virtio-net header (the v1 layout, `num_buffers` 0, only the NEEDS_CSUM flag
    /// kept) followed by the frame. Returns the length written, or nil when the ring holds no
    /// more (or is stopped). Chains that cannot be a frame are returned to the driver and
    /// counted, never passed on. The copy is taken before anything in it is looked at: the
    /// guest may rewrite its memory at any time, the switch only ever sees the copy.
    public func transmit(into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        precondition(buffer.count >= VhostNetQueuePair.frameBufferBytes, "transmit needs a buffer of frameBufferBytes")
        return state.withLock { $0.transmit(into: buffer) }
    }

    /// Copies `frame` (a 12-byte virtio-net header, then the frame) into the guest's receive
    /// buffers, with `num_buffers` set to the chains it took (1 without mergeable buffers; the
    /// legacy 10-byte header has no such field). Nothing is written
    /// until the buffers are known to hold all of it, and nothing past a descriptor's length.
    /// Returns false (and counts why) when the frame was dropped; never waits for buffers.
    @discardableResult
    public func deliver(_ frame: UnsafeRawBufferPointer) -> Bool {
        state.withLock { $0.deliver(frame) }
    }

    /// Publishes what the rings used since the last flush and interrupts the driver where it
    /// asked for it (EVENT_IDX's used_event, or the NO_INTERRUPT flag).
    public func flush() {
        state.withLock { $0.flush() }
    }

    /// What the pair counted so far.
    public var counters: VhostNetCounters { state.withLock { $0.counters } }

    /// Whether each ring is running: (receive, transmit).
    public var running: (receive: Bool, transmit: Bool) { state.withLock { ($0.rx != nil, $0.tx != nil) } }

    // MARK: Ring control (the vhost-user connection thread)

    func start(_ setup: VhostQueueSetup, memory: GuestMemory) throws {
        let features = setup.features
        let queue = try SplitQueue(
            size: setup.size, descriptorTable: setup.descriptorTable, availableRing: setup.availableRing,
            usedRing: setup.usedRing, memory: memory, eventIndex: features & VirtioFeatures.eventIndex != 0,
            indirectDescriptors: features & VirtioFeatures.indirectDescriptors != 0, nextAvailable: setup.nextAvailable,
            // A resumed ring continues after what it already returned.
            nextUsed: memory.load(UInt16.self, at: setup.usedRing &+ 2) ?? 0)
        let ring = NetRing(queue: queue, callFD: setup.callFD, features: features)
        if setup.index % 2 == 0 {
            state.withLock { s in
                s.rx = ring
                // Receive buffers are looked for when a frame comes, never on a kick.
                s.rx?.queue.disableNotifications()
            }
        } else {
            // The frontend keeps its kick descriptor and may close it whenever it likes; the pair
            // polls its own copy, made non-blocking (a read must never wait for a counter the
            // frontend can take back).
            let kick = try FileDescriptor.duplicate(setup.kickFD)
            try kick.setNonBlocking()
            let raw = kick.release()
            state.withLock { s in
                if let old = s.kick { s.retiredKicks.append(old) }
                s.kick = raw
                s.tx = ring
                s.idleKicks = 0
            }
        }
        change.signal()
    }

    /// Stops one ring of the pair; returns where it would resume. What the ring returned since
    /// the worker's last `flush` is published first: the stop may come between a worker's
    /// `transmit` or `deliver` and its `flush`, and the driver resumes after every chain taken,
    /// so an entry left unpublished would be a buffer it never gets back.
    func stop(queue index: Int) -> UInt16 {
        let next = state.withLock { s -> UInt16 in
            if index % 2 == 0 {
                defer { s.rx = nil }
                s.rx?.flush()
                return s.rx?.queue.nextAvailable ?? 0
            }
            if let old = s.kick { s.retiredKicks.append(old) }
            s.kick = nil
            defer { s.tx = nil }
            s.tx?.flush()
            return s.tx?.queue.nextAvailable ?? 0
        }
        change.signal()
        return next
    }

    deinit {
        state.withLock { s in
            for fd in s.retiredKicks { _ = FileDescriptor(taking: fd) }
            if let kick = s.kick { _ = FileDescriptor(taking: kick) }
        }
    }
}

/// One running ring and what was negotiated for it.
struct NetRing {
    var queue: SplitQueue
    let callFD: Int32?
    /// The virtio-net header the driver uses: 12 bytes (VERSION_1 or MRG_RXBUF), else 10.
    let headerLength: Int
    let mergeable: Bool
    let features: UInt64
    var broken = false
    /// Used entries pushed since the last publish.
    var unpublished = false
    /// Transmit: notifications are off while a drain is under way.
    var draining = false

    init(queue: SplitQueue, callFD: Int32?, features: UInt64) {
        self.queue = queue
        self.callFD = callFD
        self.features = features
        mergeable = features & NetFeatures.mergeableRxBuffers != 0
        headerLength = features & (VirtioFeatures.version1 | NetFeatures.mergeableRxBuffers) != 0 ? 12 : 10
    }

    /// Publishes pushed used entries and interrupts the driver if it asked for it.
    mutating func flush() {
        guard unpublished else { return }
        unpublished = false
        if queue.publishUsed(), let callFD { EventCounter.signal(callFD) }
    }
}

/// A receive chain taken for the frame being delivered: its head and how many bytes it gets.
struct TakenChain {
    var head: UInt16
    var written: UInt32
}

/// The mutable state of a queue pair, behind its lock.
struct PairState {
    var rx: NetRing?
    var tx: NetRing?
    /// The transmit ring's kick descriptor (owned), and earlier ones not yet closed (`refresh`).
    var kick: Int32?
    var retiredKicks: [Int32] = []
    var counters = VhostNetCounters()
    var idleKicks = 0
    var takenSinceKick: UInt64 = 0
    /// Reused storage: one chain walked at a time, the receive segments of one frame.
    var chain = DescriptorChain(capacity: VhostNetQueuePair.maxChainDescriptors)
    var segments: [ChainSegment] = []
    var taken: [TakenChain] = []

    init() {
        segments.reserveCapacity(VhostNetQueuePair.maxChainDescriptors * 2)
        taken.reserveCapacity(VhostNetQueuePair.maxMergedBuffers)
    }

    /// Runs `body` on the ring in `ring` (moved out and back, so it stays uniquely referenced).
    @inline(__always)
    private static func with<R>(_ ring: inout NetRing?, _ body: (inout NetRing) -> R) -> R? {
        guard var r = ring else { return nil }
        ring = nil
        defer { ring = r }
        return body(&r)
    }

    mutating func flush() {
        PairState.with(&rx) { $0.flush() }
        PairState.with(&tx) { $0.flush() }
    }

    // MARK: Transmit

    mutating func transmit(into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        guard var ring = tx else { return nil }
        tx = nil
        defer { tx = ring }
        guard !ring.broken else { return nil }
        while true {
            if !ring.draining {
                ring.queue.disableNotifications()
                ring.draining = true
            }
            let head: UInt16?
            do {
                head = try ring.queue.popAvailable()
            } catch {
                ring.broken = true
                counters.brokenRings &+= 1
                return nil
            }
            guard let head else {
                // EVENT_IDX: ask for a kick, then look once more to close the race with the driver.
                ring.queue.enableNotifications()
                ring.draining = false
                if ring.queue.pendingAvailable > 0 { continue }
                return nil
            }
            takenSinceKick &+= 1
            let length = copyOut(head: head, ring: ring, into: buffer)
            ring.queue.pushUsed(head: head, length: 0)
            ring.unpublished = true
            if let length { return length }
        }
    }

    /// Copies one transmit chain into `buffer` and normalises its header; nil (counted) when the
    /// chain is not a frame this port takes.
    private mutating func copyOut(head: UInt16, ring: NetRing, into buffer: UnsafeMutableRawBufferPointer) -> Int? {
        do {
            try ring.queue.walk(head: head, into: &chain, maxDescriptors: VhostNetQueuePair.maxChainDescriptors)
        } catch {
            counters.txMalformedChains &+= 1
            return nil
        }
        guard chain.writableLength == 0 else {
            counters.txWritableDescriptors &+= 1
            return nil
        }
        let headerLength = ring.headerLength
        let total = chain.readableLength
        guard total <= UInt64(headerLength + VhostNetQueuePair.maxFrameBytes) else {
            counters.txOversize &+= 1
            return nil
        }
        guard total >= UInt64(headerLength + 14) else {
            counters.txRunts &+= 1
            return nil
        }
        // A 10-byte (legacy) header lands at 2 so that the frame starts at 12 either way.
        var offset = VirtioNetHeader.size - headerLength
        guard let base = buffer.baseAddress else { return nil }
        for segment in chain.readable {
            guard let source = ring.queue.memory.pointer(at: segment.address, length: UInt64(segment.length)) else {
                counters.txMalformedChains &+= 1
                return nil
            }
            (base + offset).copyMemory(from: source, byteCount: Int(segment.length))
            offset += Int(segment.length)
        }
        // From here on only the copy is read.
        let headerBytes = UnsafeRawBufferPointer(start: base + (VirtioNetHeader.size - headerLength), count: headerLength)
        var header = VirtioNetHeader(flags: headerBytes[0], gsoType: headerBytes[1],
                                     headerLength: UInt16(headerBytes[2]) | UInt16(headerBytes[3]) << 8,
                                     gsoSize: UInt16(headerBytes[4]) | UInt16(headerBytes[5]) << 8,
                                     csumStart: UInt16(headerBytes[6]) | UInt16(headerBytes[7]) << 8,
                                     csumOffset: UInt16(headerBytes[8]) | UInt16(headerBytes[9]) << 8)
        header.flags &= VirtioNetHeader.flagNeedsCsum
        header.numBuffers = 0
        if header.flags != 0, ring.features & NetFeatures.csum == 0 {
            counters.txOffloadNotNegotiated &+= 1
            return nil
        }
        if header.isGSO {
            let allowed: Bool
            switch header.gso {
            case .tcpv4: allowed = ring.features & NetFeatures.hostTSO4 != 0
            case .tcpv6: allowed = ring.features & NetFeatures.hostTSO6 != 0
            default: allowed = false
            }
            guard allowed else {
                counters.txOffloadNotNegotiated &+= 1
                return nil
            }
        }
        // The ECN bit marks TCP segments to be cut: never without a GSO type, nor without HOST_ECN.
        if header.gsoType & VirtioNetHeader.gsoECN != 0, !header.isGSO || ring.features & NetFeatures.hostECN == 0 {
            counters.txOffloadNotNegotiated &+= 1
            return nil
        }
        header.write(to: UnsafeMutableRawBufferPointer(start: base, count: VirtioNetHeader.size))
        counters.transmittedFrames &+= 1
        counters.transmittedBytes &+= UInt64(offset - VirtioNetHeader.size)
        return offset
    }

    // MARK: Receive

    mutating func deliver(_ frame: UnsafeRawBufferPointer) -> Bool {
        guard var ring = rx, !ring.broken else {
            counters.rxNotReady &+= 1
            return false
        }
        rx = nil
        defer { rx = ring }
        guard frame.count >= VirtioNetHeader.size + 14, frame.count <= VhostNetQueuePair.frameBufferBytes,
              var header = VirtioNetHeader(parsing: frame) else {
            counters.rxMalformedFrames &+= 1
            return false
        }
        let payload = UnsafeRawBufferPointer(rebasing: frame[VirtioNetHeader.size...])

        // Offloads the guest did not negotiate are not handed to it.
        let features = ring.features
        if header.isGSO {
            let allowed: Bool
            switch header.gso {
            case .tcpv4: allowed = features & NetFeatures.guestTSO4 != 0
            case .tcpv6: allowed = features & NetFeatures.guestTSO6 != 0
            default: allowed = false
            }
            guard allowed, header.flags & VirtioNetHeader.flagNeedsCsum != 0 else {
                counters.rxOffloadNotNegotiated &+= 1
                return false
            }
        }
        // ECN: only on TCP segments to be cut, and only for a guest that negotiated GUEST_ECN.
        if header.gsoType & VirtioNetHeader.gsoECN != 0, !header.isGSO || features & NetFeatures.guestECN == 0 {
            counters.rxOffloadNotNegotiated &+= 1
            return false
        }
        // A partial checksum the guest cannot complete is completed here, from the switch's copy.
        var checksum: (offset: Int, value: UInt16)?
        if header.flags & VirtioNetHeader.flagNeedsCsum != 0, features & NetFeatures.guestCsum == 0 {
            guard !header.isGSO, let completed = PairState.completeChecksum(payload, start: Int(header.csumStart),
                                                                            offset: Int(header.csumOffset)) else {
                counters.rxOffloadNotNegotiated &+= 1
                return false
            }
            checksum = completed
            header.flags = 0
        }
        // "Already valid" is only passed on to a guest that negotiated checksum offload.
        if features & NetFeatures.guestCsum == 0 { header.flags &= ~VirtioNetHeader.flagDataValid }

        let headerLength = ring.headerLength
        let needed = UInt64(headerLength + payload.count)
        let maxChains = ring.mergeable ? VhostNetQueuePair.maxMergedBuffers : 1

        // Take chains until they hold the frame; check every one before writing anything.
        segments.removeAll(keepingCapacity: true)
        taken.removeAll(keepingCapacity: true)
        var capacity: UInt64 = 0
        while capacity < needed {
            guard taken.count < maxChains else {
                ring.queue.rewindAvailable(by: UInt16(taken.count))
                counters.rxBuffersTooSmall &+= 1
                return false
            }
            let head: UInt16?
            do {
                head = try ring.queue.popAvailable()
            } catch {
                ring.broken = true
                counters.brokenRings &+= 1
                counters.rxNotReady &+= 1
                return false
            }
            guard let head else {
                ring.queue.rewindAvailable(by: UInt16(taken.count))
                counters.rxNoBuffers &+= 1
                return false
            }
            do {
                try ring.queue.walk(head: head, into: &chain, maxDescriptors: VhostNetQueuePair.maxChainDescriptors)
            } catch {
                // A receive chain no driver posts: the ring is broken until set up again (a
                // chain handed back empty would be taken for a frame).
                ring.broken = true
                counters.brokenRings &+= 1
                counters.rxNotReady &+= 1
                return false
            }
            guard chain.readableLength == 0 else {
                ring.broken = true
                counters.brokenRings &+= 1
                counters.rxNotReady &+= 1
                return false
            }
            segments.append(contentsOf: chain.writable)
            let room = min(chain.writableLength, needed - capacity)
            taken.append(TakenChain(head: head, written: UInt32(room)))
            capacity &+= chain.writableLength
        }

        // Every check passed: write the header, then the frame, segment by segment. num_buffers
        // is 1 without mergeable buffers (virtio 1.2, 5.1.6.4.1: the device MUST set it so);
        // the legacy 10-byte header has no such field.
        header.numBuffers = ring.mergeable ? UInt16(taken.count) : 1
        var headerStorage: (UInt64, UInt32) = (0, 0)
        let memory = ring.queue.memory
        var cursor = SegmentCursor()
        let complete = withUnsafeMutableBytes(of: &headerStorage) { raw -> Bool in
            header.write(to: raw)
            return cursor.copy(UnsafeRawBufferPointer(rebasing: raw[0..<headerLength]), into: segments, memory: memory)
        }
        var wrote = complete
        if let checksum {
            var value = checksum.value.bigEndian
            wrote = wrote && cursor.copy(UnsafeRawBufferPointer(rebasing: payload[..<checksum.offset]), into: segments, memory: memory)
            wrote = wrote && withUnsafeBytes(of: &value) { cursor.copy($0, into: segments, memory: memory) }
            wrote = wrote && cursor.copy(UnsafeRawBufferPointer(rebasing: payload[(checksum.offset + 2)...]), into: segments, memory: memory)
        } else {
            wrote = wrote && cursor.copy(payload, into: segments, memory: memory)
        }
        for chain in taken {
            ring.queue.pushUsed(head: chain.head, length: wrote ? chain.written : 0)
        }
        ring.unpublished = true
        guard wrote else {
            // Cannot happen: the walk checked every segment against guest memory.
            counters.rxMalformedFrames &+= 1
            return false
        }
        counters.deliveredFrames &+= 1
        counters.deliveredBytes &+= UInt64(payload.count)
        return true
    }

    /// The Internet checksum of `frame[start...]` with the partial sum already at
    /// `start + offset` (what NEEDS_CSUM means), to be stored at `start + offset`; nil when
    /// the field does not lie inside the frame.
    static func completeChecksum(_ frame: UnsafeRawBufferPointer, start: Int, offset: Int) -> (offset: Int, value: UInt16)? {
        let at = start + offset
        guard start >= 0, offset >= 0, at + 2 <= frame.count else { return nil }
        var sum: UInt64 = 0
        var i = start
        while i + 1 < frame.count {
            sum &+= UInt64(frame[i]) << 8 | UInt64(frame[i + 1])
            i += 2
        }
        if i < frame.count { sum &+= UInt64(frame[i]) << 8 }
        while sum >> 16 != 0 { sum = (sum & 0xFFFF) &+ (sum >> 16) }
        var value = ~UInt16(truncatingIfNeeded: sum)
        // UDP sends a computed zero as all ones; TCP is indifferent to the two zeroes.
        if value == 0 { value = 0xFFFF }
        return (at, value)
    }
}

/// Where the next byte goes in a list of receive segments.
struct SegmentCursor {
    var segment = 0
    var offset = 0

    /// Copies `bytes` into the segments from the cursor on; false when they do not fit (or a
    /// segment is not in guest memory any more).
    mutating func copy(_ bytes: UnsafeRawBufferPointer, into segments: [ChainSegment], memory: GuestMemory) -> Bool {
        var done = 0
        while done < bytes.count {
            guard segment < segments.count else { return false }
            let target = segments[segment]
            let room = Int(target.length) - offset
            guard room > 0 else {
                segment += 1
                offset = 0
                continue
            }
            let n = min(room, bytes.count - done)
            guard let pointer = memory.pointer(at: target.address &+ UInt64(offset), length: UInt64(n)),
                  let source = bytes.baseAddress else { return false }
            pointer.copyMemory(from: source + done, byteCount: n)
            done += n
            offset += n
        }
        return true
    }
}
