// libFuzzer target for the vhost-user-net device: a real `VhostNetDevice` with one queue pair,
// its receive and transmit rings started in-process (no vhost-user socket) over guest memory the
// harness writes like a hostile driver would, and driven like a switch worker drives it:
// `transmit(into:)` until nil, `deliver(_:)` with frames and headers from the input, `flush()`,
// `kicked(now:)`, and ring stops and restarts.
//
// Guest memory: region A (256 KiB at 0x100000) holds both rings' descriptor tables and
// available rings and the data area; region B (8 KiB at 0x800000, a gap away) holds the two used
// rings. The input's descriptors reach any byte of A (the rings included: a receive buffer over
// the descriptor table is the guest's business), the gap and the edges of memory, but never B,
// so the used rings hold only what the device wrote there: that is how the harness sees which
// chains each call returned (it fills the used ring's ids with 0xFFFFFFFF before the call).
// Both regions are heap allocations, so ASan reports an access one byte past either.
//
// Input: a header, then steps until the input ends (see `Session.step`).
//   bytes 0-1: features, bit 0 VERSION_1, 1 MRG_RXBUF, 2 EVENT_IDX, 3 INDIRECT_DESC, 4 CSUM,
//              5 GUEST_CSUM, 6 HOST_TSO4, 7 HOST_TSO6, 8 GUEST_TSO4, 9 GUEST_TSO6, 10 HOST_ECN,
//              11 GUEST_ECN, 12 no receive call eventfd, 13 no transmit call eventfd, 14 the
//              kick eventfd in semaphore mode
//   byte 2:    queue sizes: 2^(low nibble) receive, 2^(high nibble) transmit (0-8; 9-15: an
//              invalid size, the ring is refused)
//   bytes 3-6: start index of the receive and transmit ring (avail.idx, used.idx, next available)
//
// Besides "never traps, never touches memory it must not" (ASan), it checks, and traps when they
// break, after every call:
// - transmit: the length fits the buffer, is at least a header and an Ethernet header, and the
//   12 bytes before the frame are the guest's header with flags reduced to NEEDS_CSUM and
//   num_buffers 0; the frame is exactly the guest's chain after its header; every chain it
//   returned to the driver with length 0, and every one it dropped is one the device must drop
//   (the harness walks the chains itself, from a copy of guest memory taken before the call);
//   an offload that was not negotiated never passes; chains are taken in the order the driver
//   made them available, and nil means none is left; it writes no guest memory but its used ring.
// - deliver: nothing is written or returned unless the frame is delivered; then the device wrote
//   only inside the device-writable buffers of the chains it returned (and its used ring), each
//   used length is at most its chain's writable capacity, the lengths add up to header and frame,
//   every chain but the last is filled; where the buffers do not overlap, the guest reads the
//   frame back intact, with num_buffers as the spec says (the chains used; 1 without MRG_RXBUF),
//   DATA_VALID and NEEDS_CSUM only with GUEST_CSUM, a completed checksum that verifies. Where it
//   delivered, or dropped for want of buffers (none, or too small), the harness's own reading of
//   the available ring (from where the device stood, with its copy of avail.idx) agrees: the
//   same chains, or the same shortage.
// - flush: used.idx becomes exactly what the device returned, and the driver is interrupted
//   exactly when EVENT_IDX's used_event (or the NO_INTERRUPT flag) asks for it.
// - kicked: `.at` only after `idleKickLimit` kicks in a row with nothing transmitted, pausing
//   1 ms doubling to `maxKickPause`.
// - stop: every chain the ring took was returned and published, and the ring resumes after the
//   last of them (unless the driver broke it).
// libFuzzer's -timeout catches a hang.
import HostOS
import VhostNet
import VhostUser
import Virtio
#if canImport(Glibc)
import Glibc
#endif

// MARK: - Layout

private let regionA: UInt64 = 0x10_0000
private let sizeA: UInt64 = 256 << 10
private let regionB: UInt64 = 0x80_0000
private let sizeB: UInt64 = 0x2000
/// Receive ring (queue 0) and transmit ring (queue 1).
private let descriptorTables: [UInt64] = [regionA, regionA + 0x2000]
private let availableRings: [UInt64] = [regionA + 0x1000, regionA + 0x3000]
private let usedRings: [UInt64] = [regionB, regionB + 0x1000]
private let dataOffset: UInt64 = 0x4000
private let noEntry = UInt32.max

// MARK: - The fixed world

/// Guest memory, its copy from before the current call, and the transmit buffer: made once.
private final class World: @unchecked Sendable {
    let a = UnsafeMutableRawPointer.allocate(byteCount: Int(sizeA), alignment: 4096)
    let b = UnsafeMutableRawPointer.allocate(byteCount: Int(sizeB), alignment: 4096)
    let beforeA = UnsafeMutableRawPointer.allocate(byteCount: Int(sizeA), alignment: 4096)
    let beforeB = UnsafeMutableRawPointer.allocate(byteCount: Int(sizeB), alignment: 4096)
    /// Exactly `frameBufferBytes`: ASan reports a byte written past it.
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: VhostNetQueuePair.frameBufferBytes, alignment: 64)
    let memory: GuestMemory

    init() {
        do {
            memory = try GuestMemory(regions: [
                GuestMemoryRegion(guestAddress: regionA, size: sizeA, host: a),
                GuestMemoryRegion(guestAddress: regionB, size: sizeB, host: b),
            ])
        } catch {
            fatalError("vhostnet fuzz: guest memory layout: \(error)")
        }
    }

    /// Copies guest memory as it is before a call (libc's memcpy: fast at -Onone).
    func snapshot() {
        memcpy(beforeA, a, Int(sizeA))
        memcpy(beforeB, b, Int(sizeB))
    }

    /// The copy's bytes at guest range [address, address + length), wholly inside one region
    /// (length > 0); nil otherwise. Written apart from `GuestMemory`, which is under test.
    func before(_ address: UInt64, _ length: UInt64) -> UnsafeRawPointer? {
        if address >= regionA, address - regionA < sizeA, length <= sizeA - (address - regionA) {
            return UnsafeRawPointer(beforeA + Int(address - regionA))
        }
        if address >= regionB, address - regionB < sizeB, length <= sizeB - (address - regionB) {
            return UnsafeRawPointer(beforeB + Int(address - regionB))
        }
        return nil
    }

    /// The live bytes at a guest range (same rules as `before`).
    func live(_ address: UInt64, _ length: UInt64) -> UnsafeMutableRawPointer? {
        guard let copy = before(address, length) else { return nil }
        return address >= regionB ? b + (copy - UnsafeRawPointer(beforeB)) : a + (copy - UnsafeRawPointer(beforeA))
    }

    /// Traps when a byte of guest memory differs from the copy outside `allowed` (guest ranges).
    func checkUnchanged(except allowed: [Span], what: String) {
        for (base, size, now, then) in [(regionA, sizeA, UnsafeRawPointer(a), UnsafeRawPointer(beforeA)),
                                        (regionB, sizeB, UnsafeRawPointer(b), UnsafeRawPointer(beforeB))] {
            var ranges = allowed.compactMap { span -> (Int, Int)? in
                let start = max(span.start, base), end = min(span.end, base + size)
                return start < end ? (Int(start - base), Int(end - base)) : nil
            }
            ranges.sort { $0.0 < $1.0 }
            var from = 0
            for (start, end) in ranges + [(Int(size), Int(size))] {
                if start > from, memcmp(now + from, then + from, start - from) != 0 {
                    var at = from
                    while now.load(fromByteOffset: at, as: UInt8.self) == then.load(fromByteOffset: at, as: UInt8.self) { at += 1 }
                    preconditionFailure("\(what) wrote guest memory at 0x\(String(base + UInt64(at), radix: 16)) that no "
                                        + "writable descriptor of a chain it returned allows (0x"
                                        + "\(String(then.load(fromByteOffset: at, as: UInt8.self), radix: 16)) -> 0x"
                                        + "\(String(now.load(fromByteOffset: at, as: UInt8.self), radix: 16)))")
                }
                from = max(from, end)
            }
        }
    }
}

private let world = World()

/// VHOSTNET_FUZZ_VERBOSE=1: a line per step (for checking what a seed or crash does).
private let verbose = getenv("VHOSTNET_FUZZ_VERBOSE") != nil

/// A line on standard error, unbuffered: the lines before a trap are the useful ones.
private func say(_ line: String) {
    let text = line + "\n"
    _ = text.withCString { write(2, $0, strlen($0)) }
}

/// Counts for the summary printed at exit.
nonisolated(unsafe) private var totals = (inputs: 0, transmitted: 0, txDropped: 0, delivered: 0, rxDropped: 0, interrupts: 0, pauses: 0,
                                          overcommitted: 0)

// MARK: - Input decoding

/// The input as a stream of choices; reads past the end give zeroes.
private struct Input {
    let bytes: UnsafeBufferPointer<UInt8>
    var position = 0
    var isEmpty: Bool { position >= bytes.count }

    mutating func u8() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }
    mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
    mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }
}

// MARK: - The harness's own view of a chain

/// A guest address range [start, end).
private struct Span {
    let start: UInt64
    let end: UInt64
    func overlaps(_ other: Span) -> Bool { start < other.end && other.start < end }
}

/// A chain as the device must see it, walked from the copy of guest memory taken before the call.
private struct Walk {
    var readable: [Span] = []
    var writable: [Span] = []
    var readableLength: UInt64 = 0
    var writableLength: UInt64 = 0
}

/// Walks the chain at `head` by the rules the device states: indices below the table's length,
/// at most the table's length of descriptors per table (so loops end), at most
/// `maxChainDescriptors` in all (the INDIRECT one and empty ones counted), one level of indirect
/// table of 16-byte entries (only when negotiated), every non-empty buffer inside one region,
/// no readable buffer after a writable one. Nil: the device must refuse the chain.
private func walk(head: UInt16, size: UInt16, table descriptorTable: UInt64, indirect: Bool) -> Walk? {
    var out = Walk()
    var table = descriptorTable
    var tableLength = Int(size)
    var index = Int(head)
    var walked = 0
    var total = 0
    var inIndirect = false
    while true {
        guard index < tableLength else { return nil }
        walked += 1
        total += 1
        guard walked <= tableLength, total <= VhostNetQueuePair.maxChainDescriptors else { return nil }
        guard let d = world.before(table + 16 * UInt64(index), 16) else { return nil }
        let address = UInt64(littleEndian: d.loadUnaligned(as: UInt64.self))
        let length = UInt32(littleEndian: d.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        let flags = UInt16(littleEndian: d.loadUnaligned(fromByteOffset: 12, as: UInt16.self))
        let next = UInt16(littleEndian: d.loadUnaligned(fromByteOffset: 14, as: UInt16.self))
        if flags & DescriptorFlags.indirect != 0 {
            guard indirect, !inIndirect, length != 0, length % 16 == 0, length / 16 <= 32768,
                  world.before(address, UInt64(length)) != nil else { return nil }
            table = address
            tableLength = Int(length / 16)
            index = 0
            walked = 0
            inIndirect = true
            continue
        }
        if length != 0 {
            guard world.before(address, UInt64(length)) != nil else { return nil }
            let span = Span(start: address, end: address + UInt64(length))
            if flags & DescriptorFlags.write != 0 {
                out.writable.append(span)
                out.writableLength += UInt64(length)
            } else {
                guard out.writable.isEmpty else { return nil }
                out.readable.append(span)
                out.readableLength += UInt64(length)
            }
        }
        guard flags & DescriptorFlags.next != 0 else { return out }
        index = Int(next)
    }
}

/// The bytes of `spans` in order, from the copy (`before`) or from live memory.
private func gather(_ spans: [Span], before: Bool) -> [UInt8] {
    var bytes: [UInt8] = []
    for span in spans {
        let length = span.end - span.start
        let raw: UnsafeRawPointer? = before ? world.before(span.start, length) : world.live(span.start, length).map { UnsafeRawPointer($0) }
        guard let raw else { preconditionFailure("a walked span is outside guest memory") }
        bytes.append(contentsOf: UnsafeRawBufferPointer(start: raw, count: Int(length)))
    }
    return bytes
}

private func u16(_ bytes: [UInt8], _ at: Int) -> UInt16 { UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8 }

/// The Internet checksum sum of `bytes[from...]`, folded (0xFFFF when it verifies).
private func foldedSum(_ bytes: [UInt8], from: Int) -> UInt16 {
    var sum: UInt64 = 0
    var i = from
    while i + 1 < bytes.count {
        sum += UInt64(bytes[i]) << 8 | UInt64(bytes[i + 1])
        i += 2
    }
    if i < bytes.count { sum += UInt64(bytes[i]) << 8 }
    while sum >> 16 != 0 { sum = (sum & 0xFFFF) + (sum >> 16) }
    return UInt16(sum)
}

// MARK: - One input

/// What the harness knows of one ring.
private struct RingModel {
    let queue: Int
    let size: UInt16
    let validSize: Bool
    var running = false
    /// The harness's next available-ring position, and avail.idx as it published it.
    var appendIndex: UInt16
    var availableIndex: UInt16
    /// The device's next used position as counted from the used entries it wrote; used.idx as it
    /// last published it; entries written since.
    var nextUsed: UInt16
    var published: UInt16
    var unpublished = 0
    /// The device's next available position and its copy of avail.idx (it re-reads avail.idx
    /// only once it has taken every chain up to the copy), followed call by call while the ring
    /// is not broken.
    var nextAvailable: UInt16
    var availableShadow: UInt16
    /// Where the current run of the ring started.
    var cycleAvailable: UInt16
    var cycleUsed: UInt16
    /// The driver broke the ring in this run (the device counted it): chains taken may be lost.
    var broken = false
    var manualUsedEvent = false

    var descriptorTable: UInt64 { descriptorTables[queue] }
    var availableRing: UInt64 { availableRings[queue] }
    var usedRing: UInt64 { usedRings[queue] }
    var usedSpan: Span { Span(start: usedRing, end: usedRing + 6 + 8 * UInt64(size)) }
}

private struct Session {
    let device: VhostNetDevice
    let pair: VhostNetQueuePair
    let features: UInt64
    let kickFD: Int32
    let callFDs: [Int32?]
    var rings: [RingModel]
    /// The device's idle-kick state as its doc comment describes it.
    var idleKicks = 0
    var takenSinceKick = 0
    var steps = 0

    var headerLength: Int { features & (VirtioFeatures.version1 | NetFeatures.mergeableRxBuffers) != 0 ? 12 : 10 }
    var mergeable: Bool { features & NetFeatures.mergeableRxBuffers != 0 }
    var indirect: Bool { features & VirtioFeatures.indirectDescriptors != 0 }
    var eventIndex: Bool { features & VirtioFeatures.eventIndex != 0 }
    func has(_ feature: UInt64) -> Bool { features & feature != 0 }

    init(input: inout Input, kickFD: Int32, callFDs: [Int32]) {
        do {
            device = try VhostNetDevice(mac: [0x02, 0, 0, 0, 0, 1])
        } catch {
            fatalError("vhostnet fuzz: device: \(error)")
        }
        pair = device.queuePairs[0]
        let bits = input.u16()
        let map: [UInt64] = [VirtioFeatures.version1, NetFeatures.mergeableRxBuffers, VirtioFeatures.eventIndex,
                             VirtioFeatures.indirectDescriptors, NetFeatures.csum, NetFeatures.guestCsum, NetFeatures.hostTSO4,
                             NetFeatures.hostTSO6, NetFeatures.guestTSO4, NetFeatures.guestTSO6, NetFeatures.hostECN,
                             NetFeatures.guestECN]
        var features: UInt64 = 0
        for (bit, feature) in map.enumerated() where bits & (1 << bit) != 0 { features |= feature }
        self.features = features
        self.kickFD = kickFD
        self.callFDs = [bits & 0x1000 == 0 ? callFDs[0] : nil, bits & 0x2000 == 0 ? callFDs[1] : nil]
        let sizes = input.u8()
        var rings: [RingModel] = []
        for queue in 0..<2 {
            let exponent = queue == 0 ? sizes & 0x0F : sizes >> 4
            let size: UInt16 = exponent <= 8 ? 1 << UInt16(exponent) : [0, 3, 6, 100, 255, 257, 0xFFFF][Int(exponent - 9)]
            let start = input.u16()
            rings.append(RingModel(queue: queue, size: size, validSize: exponent <= 8, appendIndex: start, availableIndex: start,
                                   nextUsed: start, published: start, nextAvailable: start, availableShadow: start,
                                   cycleAvailable: start, cycleUsed: start))
        }
        self.rings = rings
        for ring in rings {
            store(ring.availableIndex, at: ring.availableRing + 2)
            store(ring.nextUsed, at: ring.usedRing + 2)
        }
    }

    func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) {
        guard let pointer = world.live(address, UInt64(MemoryLayout<T>.size)) else { preconditionFailure("harness store outside memory") }
        pointer.storeBytes(of: value.littleEndian, as: T.self)
    }

    func load<T: FixedWidthInteger>(_: T.Type, at address: UInt64) -> T {
        guard let pointer = world.live(address, UInt64(MemoryLayout<T>.size)) else { preconditionFailure("harness load outside memory") }
        return T(littleEndian: pointer.loadUnaligned(as: T.self))
    }

    // MARK: Ring control

    mutating func start(_ q: Int, nextAvailable: UInt16) {
        let ring = rings[q]
        let setup = VhostQueueSetup(index: q, size: ring.size, descriptorTable: ring.descriptorTable,
                                    availableRing: ring.availableRing, usedRing: ring.usedRing, nextAvailable: nextAvailable,
                                    kickFD: kickFD, callFD: callFDs[q], features: features)
        do {
            try device.startQueue(setup, memory: world.memory)
            precondition(ring.validSize, "the device started a ring of size \(ring.size)")
            rings[q].running = true
        } catch {
            precondition(!ring.validSize, "the device refused a valid ring: \(error)")
            rings[q].running = false
        }
        let used = load(UInt16.self, at: ring.usedRing + 2)
        rings[q].cycleAvailable = nextAvailable
        rings[q].nextAvailable = nextAvailable
        rings[q].availableShadow = nextAvailable
        rings[q].cycleUsed = used
        rings[q].nextUsed = used
        rings[q].published = used
        rings[q].unpublished = 0
        rings[q].broken = false
        if q == 1 { idleKicks = 0 }
        _ = pair.refresh()
    }

    /// Stops ring `q` and checks it (`checkStopped`); returns where it would resume.
    mutating func stop(_ q: Int) -> UInt16? {
        guard rings[q].running else { return nil }
        let next = device.stopQueue(q)
        settle()
        checkStopped(q, next: next)
        return next
    }

    /// Resets the device (both rings stop) and checks each ring that was running.
    mutating func reset() {
        let running = rings.map(\.running)
        device.reset()
        settle()
        for q in 0..<2 where running[q] { checkStopped(q, next: nil) }
    }

    /// What a worker does after a ring stopped: `refresh` (which closes retired kick
    /// descriptors); and interrupts a stop sent are taken.
    func settle() {
        _ = pair.refresh()
        for fd in callFDs { if let fd { _ = EventCounter.take(fd) } }
    }

    /// Every chain the stopped ring took was returned and published, unless the driver broke it.
    mutating func checkStopped(_ q: Int, next: UInt16?) {
        let ring = rings[q]
        rings[q].running = false
        guard !ring.broken else { return }
        let used = load(UInt16.self, at: ring.usedRing + 2)
        precondition(used == ring.nextUsed, "queue \(q) stopped with used.idx \(used), but the device returned chains up to "
                     + "\(ring.nextUsed): \(ring.nextUsed &- used) used entries were never published")
        if let next {
            let taken = next &- ring.cycleAvailable
            let returned = ring.nextUsed &- ring.cycleUsed
            precondition(taken == returned, "queue \(q) stopped having taken \(taken) chains and returned \(returned)")
            precondition(next == ring.nextAvailable, "queue \(q) stopped at \(next), the chains it took end at \(ring.nextAvailable)")
        }
    }

    // MARK: Calls

    /// Runs one device call on ring `q` with the used ring's ids set to `noEntry` and guest
    /// memory copied first; returns the used entries the call wrote.
    mutating func observe(_ q: Int, _ body: () -> Void) -> [(head: UInt16, length: UInt32)] {
        let ring = rings[q]
        if ring.validSize {
            for slot in 0..<UInt64(ring.size) { store(noEntry, at: ring.usedRing + 4 + 8 * slot) }
        }
        world.snapshot()
        let brokenBefore = pair.counters.brokenRings
        body()
        if pair.counters.brokenRings != brokenBefore { rings[q].broken = true }
        guard ring.running else { return [] }
        var entries: [(head: UInt16, length: UInt32)] = []
        var position = ring.nextUsed
        while entries.count < Int(ring.size) {
            let slot = ring.usedRing + 4 + 8 * UInt64(position & (ring.size - 1))
            let head = load(UInt32.self, at: slot)
            if head == noEntry { break }
            precondition(head < UInt32(ring.size), "queue \(q): used entry names head \(head), queue size \(ring.size)")
            entries.append((UInt16(head), load(UInt32.self, at: slot + 4)))
            position &+= 1
        }
        rings[q].nextUsed = position
        rings[q].unpublished += entries.count
        return entries
    }

    /// The head the driver put at available-ring position `position`, from the copy.
    func availableHead(_ ring: RingModel, at position: UInt16) -> UInt16 {
        let slot = ring.availableRing + 4 + 2 * UInt64(position & (ring.size - 1))
        guard let raw = world.before(slot, 2) else { preconditionFailure("available ring outside memory") }
        return UInt16(littleEndian: raw.loadUnaligned(as: UInt16.self))
    }

    /// What taking receive chains for `needed` bytes must come to, from the copy.
    enum ReceiveOutcome: Equatable {
        case chains([UInt16], next: UInt16, shadow: UInt16)
        case noBuffers(shadow: UInt16)
        case tooSmall(shadow: UInt16)
        case broken
    }

    func receiveOutcome(needed: Int) -> ReceiveOutcome {
        let ring = rings[0]
        var next = ring.nextAvailable, shadow = ring.availableShadow
        var heads: [UInt16] = []
        var capacity: UInt64 = 0
        while capacity < UInt64(needed) {
            guard heads.count < (mergeable ? VhostNetQueuePair.maxMergedBuffers : 1) else { return .tooSmall(shadow: shadow) }
            if next == shadow {
                guard let raw = world.before(ring.availableRing + 2, 2) else { preconditionFailure("available ring outside memory") }
                let published = UInt16(littleEndian: raw.loadUnaligned(as: UInt16.self))
                if published == next { return .noBuffers(shadow: shadow) }
                guard published &- next <= ring.size else { return .broken }
                shadow = published
            }
            let head = availableHead(ring, at: next)
            next &+= 1
            guard head < ring.size,
                  let walked = walk(head: head, size: ring.size, table: ring.descriptorTable, indirect: indirect),
                  walked.readable.isEmpty else { return .broken }
            heads.append(head)
            capacity += walked.writableLength
        }
        return .chains(heads, next: next, shadow: shadow)
    }

    /// Whether the device must drop this transmit chain, from the copy: its walk, where its
    /// buffers are, its length, and the offloads its header asks for.
    func transmitRefused(_ walk: Walk?) -> String? {
        guard let walk else { return "malformed" }
        guard walk.writable.isEmpty else { return "writable" }
        guard walk.readableLength <= UInt64(headerLength + VhostNetQueuePair.maxFrameBytes) else { return "oversize" }
        guard walk.readableLength >= UInt64(headerLength + 14) else { return "runt" }
        let header = gather(walk.readable, before: true).prefix(headerLength)
        let flags = header[header.startIndex], gsoType = header[header.startIndex + 1]
        if flags & VirtioNetHeader.flagNeedsCsum != 0 && !has(NetFeatures.csum) { return "csum" }
        let gso = gsoType & ~VirtioNetHeader.gsoECN
        if gso != 0 {
            guard gso == 1 && has(NetFeatures.hostTSO4) || gso == 4 && has(NetFeatures.hostTSO6) else { return "gso" }
        }
        if gsoType & VirtioNetHeader.gsoECN != 0 && (gso == 0 || !has(NetFeatures.hostECN)) { return "ecn" }
        return nil
    }

    /// `transmit` until nil, checking each call.
    mutating func transmitAll() {
        let ring = rings[1]
        // Guest memory does not change meanwhile: at most one call per chain made available, and nil.
        for _ in 0..<(Int(max(ring.size, 1)) + 2) {
            var length: Int?
            let pair = pair
            let entries = observe(1) { length = pair.transmit(into: world.buffer) }
            takenSinceKick += entries.count
            world.checkUnchanged(except: [rings[1].usedSpan], what: "transmit")
            if ring.running && !rings[1].broken {
                // The chains are taken in the order the driver made them available, and nil
                // means none is left (the device read avail.idx again before saying so).
                for (i, entry) in entries.enumerated() {
                    let head = availableHead(ring, at: rings[1].nextAvailable &+ UInt16(i))
                    precondition(entry.head == head, "transmit returned chain \(entry.head), the driver made \(head) available there")
                }
                rings[1].nextAvailable &+= UInt16(entries.count)
                let published = load(UInt16.self, at: ring.availableRing + 2)
                precondition(length != nil || published == rings[1].nextAvailable,
                             "transmit returned nil with \(published &- rings[1].nextAvailable) chains available")
            }
            for (i, entry) in entries.enumerated() {
                precondition(entry.length == 0, "transmit returned chain \(entry.head) with used length \(entry.length)")
                let walked = walk(head: entry.head, size: ring.size, table: ring.descriptorTable, indirect: indirect)
                let refused = transmitRefused(walked)
                if i == entries.count - 1, let length {
                    precondition(refused == nil, "transmit passed on chain \(entry.head), which it must drop (\(refused ?? ""))")
                    checkTransmitted(length: length, walked: walked ?? Walk())
                } else {
                    precondition(refused != nil, "transmit dropped chain \(entry.head), a well-formed frame")
                    if verbose { say("vhostnet fuzz: transmit dropped chain \(entry.head): \(refused ?? "")") }
                    totals.txDropped += 1
                }
            }
            guard let length else { return }
            precondition(!entries.isEmpty, "transmit returned \(length) bytes but no chain")
            totals.transmitted += 1
        }
        preconditionFailure("transmit did not return nil once the ring was drained")
    }

    func checkTransmitted(length: Int, walked: Walk) {
        let buffer = world.buffer
        precondition(length <= buffer.count, "transmit returned \(length) bytes, its buffer holds \(buffer.count)")
        precondition(length >= VirtioNetHeader.size + 14, "transmit returned \(length) bytes: less than the headers")
        let stream = gather(walked.readable, before: true)
        precondition(length == VirtioNetHeader.size + stream.count - headerLength,
                     "transmit returned \(length) bytes from a chain of \(stream.count) with a \(headerLength)-byte header")
        let flags = buffer[0]
        precondition(flags & ~VirtioNetHeader.flagNeedsCsum == 0, "transmit passed on header flags 0x\(String(flags, radix: 16))")
        precondition(flags == stream[0] & VirtioNetHeader.flagNeedsCsum, "transmit changed NEEDS_CSUM")
        for i in 1..<10 { precondition(buffer[i] == stream[i], "transmit changed header byte \(i)") }
        precondition(buffer[10] == 0 && buffer[11] == 0, "transmit passed on num_buffers \(UInt16(buffer[10]) | UInt16(buffer[11]) << 8)")
        let frame = UnsafeRawBufferPointer(rebasing: buffer[VirtioNetHeader.size..<length])
        stream.withUnsafeBytes { guest in
            precondition(memcmp(frame.baseAddress!, guest.baseAddress! + headerLength, frame.count) == 0,
                         "the transmitted frame differs from the guest's chain")
        }
    }

    /// `deliver(frame)`, checking what it wrote and returned.
    mutating func deliver(_ frame: UnsafeRawBufferPointer) {
        let ring = rings[0]
        var delivered = false
        let pair = pair
        let before = pair.counters
        let entries = observe(0) { delivered = pair.deliver(frame) }
        let after = pair.counters
        let needed = headerLength + frame.count - VirtioNetHeader.size
        // Where the device took chains (it delivered, or found too few or too small buffers),
        // it took those the driver made available, from where it stood.
        if ring.running && !ring.broken && frame.count >= VirtioNetHeader.size {
            let outcome = receiveOutcome(needed: needed)
            if delivered, case .chains(let heads, _, _) = outcome, heads.count > Int(ring.size) {
                // The driver made more chains available than its ring has slots (it reused slots
                // of chains the device had taken and not yet returned), and one frame took them
                // all: the used entries wrap over each other. The guest harms only itself; the
                // harness can no longer tell which chains came back, so it checks the memory the
                // device wrote against all of them and follows this ring no further.
                rings[0].broken = true
                var writable: [Span] = []
                for head in heads {
                    writable += walk(head: head, size: ring.size, table: ring.descriptorTable, indirect: indirect)?.writable ?? []
                }
                world.checkUnchanged(except: writable + [ring.usedSpan], what: "deliver")
                totals.overcommitted += 1
                return
            }
            if delivered {
                guard case .chains(let heads, _, _) = outcome, heads == entries.map(\.head) else {
                    preconditionFailure("deliver took chains \(entries.map(\.head)), the driver's ring says \(outcome)")
                }
            } else if after.rxNoBuffers != before.rxNoBuffers {
                precondition({ if case .noBuffers = outcome { true } else { false } }(), "deliver found no buffers, the driver's ring says \(outcome)")
            } else if after.rxBuffersTooSmall != before.rxBuffersTooSmall {
                precondition({ if case .tooSmall = outcome { true } else { false } }(), "deliver found the buffers too small, the driver's ring says \(outcome)")
            } else if after.brokenRings != before.brokenRings {
                precondition(outcome == .broken, "deliver broke the ring, the driver's ring says \(outcome)")
            }
            if delivered || after.rxNoBuffers != before.rxNoBuffers || after.rxBuffersTooSmall != before.rxBuffersTooSmall {
                switch outcome {
                case .chains(_, let next, let shadow): rings[0].nextAvailable = next; rings[0].availableShadow = shadow
                case .noBuffers(let shadow), .tooSmall(let shadow): rings[0].availableShadow = shadow
                case .broken: break
                }
            }
        }
        guard delivered else {
            precondition(entries.isEmpty, "deliver dropped the frame but returned \(entries.count) chains")
            world.checkUnchanged(except: [ring.usedSpan], what: "deliver (dropped)")
            totals.rxDropped += 1
            return
        }
        totals.delivered += 1
        precondition(!entries.isEmpty, "deliver delivered into no chain")
        precondition(entries.count <= (mergeable ? VhostNetQueuePair.maxMergedBuffers : 1),
                     "deliver used \(entries.count) chains (MRG_RXBUF: \(mergeable))")
        var writable: [Span] = []
        var total = 0
        for (i, entry) in entries.enumerated() {
            guard let walked = walk(head: entry.head, size: ring.size, table: ring.descriptorTable, indirect: indirect),
                  walked.readable.isEmpty else {
                preconditionFailure("deliver wrote into chain \(entry.head), which is malformed or has a readable buffer")
            }
            precondition(UInt64(entry.length) <= walked.writableLength,
                         "used length \(entry.length) of chain \(entry.head) exceeds its writable capacity \(walked.writableLength)")
            if i < entries.count - 1 {
                precondition(UInt64(entry.length) == walked.writableLength, "chain \(entry.head) was not filled before the next")
            }
            total += Int(entry.length)
            writable += walked.writable
        }
        precondition(total == needed, "used lengths add up to \(total), the header and frame are \(needed) bytes")
        world.checkUnchanged(except: writable + [ring.usedSpan], what: "deliver")

        // Read the frame back as the guest would, where no two buffers overlap.
        let sorted = writable.sorted { $0.start < $1.start }
        for i in sorted.indices.dropFirst() where sorted[i - 1].overlaps(sorted[i]) { return }
        let received = gather(writable, before: false)
        let input = [UInt8](frame)
        let header = Array(received.prefix(headerLength))
        let payload = Array(received[headerLength..<needed])
        let sent = Array(input[VirtioNetHeader.size...])
        let completed = input[0] & VirtioNetHeader.flagNeedsCsum != 0 && !has(NetFeatures.guestCsum)
        var flags = input[0]
        if completed { flags = 0 } else if !has(NetFeatures.guestCsum) { flags &= ~VirtioNetHeader.flagDataValid }
        precondition(header[0] == flags, "deliver wrote header flags 0x\(String(header[0], radix: 16)), expected 0x\(String(flags, radix: 16))")
        for i in 1..<10 { precondition(header[i] == input[i], "deliver changed header byte \(i)") }
        if headerLength == 12 {
            let expected = mergeable ? UInt16(entries.count) : 1
            precondition(u16(header, 10) == expected, "deliver wrote num_buffers \(u16(header, 10)), expected \(expected)")
        }
        let gso = header[1] & ~VirtioNetHeader.gsoECN
        if gso != 0 {
            precondition(gso == 1 && has(NetFeatures.guestTSO4) || gso == 4 && has(NetFeatures.guestTSO6),
                         "deliver passed on GSO type \(header[1]) the guest did not negotiate")
            precondition(header[0] & VirtioNetHeader.flagNeedsCsum != 0, "deliver passed on GSO without NEEDS_CSUM")
        }
        if header[1] & VirtioNetHeader.gsoECN != 0 {
            precondition(gso != 0 && has(NetFeatures.guestECN), "deliver passed on ECN the guest did not negotiate")
        }
        if !has(NetFeatures.guestCsum) {
            precondition(header[0] & (VirtioNetHeader.flagNeedsCsum | VirtioNetHeader.flagDataValid) == 0,
                         "deliver passed on checksum flags to a guest without GUEST_CSUM")
        }
        if completed {
            let start = Int(u16(input, 6)), at = start + Int(u16(input, 8))
            for i in payload.indices where i != at && i != at + 1 {
                precondition(payload[i] == sent[i], "the delivered frame differs at byte \(i)")
            }
            // NEEDS_CSUM: the field holds the pseudo-header sum, the device stores the complement
            // of the sum from csum_start to the end (a zero sent as all ones)...
            let sum = ~foldedSum(sent, from: start)
            let expected = sum == 0 ? 0xFFFF : sum
            precondition(UInt16(payload[at]) << 8 | UInt16(payload[at + 1]) == expected,
                         "the device completed the checksum as 0x\(String(UInt16(payload[at]) << 8 | UInt16(payload[at + 1]), radix: 16)), expected 0x\(String(expected, radix: 16))")
            // ...so that, with the pseudo header added back, the packet verifies.
            if (at - start) % 2 == 0 {
                let pseudo = UInt32(sent[at]) << 8 | UInt32(sent[at + 1])
                var total = UInt32(foldedSum(payload, from: start)) + pseudo
                total = (total & 0xFFFF) + (total >> 16)
                precondition(total == 0xFFFF, "the checksum the device completed does not verify")
            }
        } else {
            precondition(payload == sent, "the delivered frame differs from the one handed to deliver")
        }
    }

    /// `flush()`: used.idx is what the device returned, and the driver is interrupted exactly
    /// when it asked to be.
    mutating func flush() {
        var expectInterrupt = [false, false]
        for q in 0..<2 where rings[q].running && rings[q].unpublished > 0 {
            let ring = rings[q]
            if eventIndex {
                let usedEvent = load(UInt16.self, at: ring.availableRing + 4 + 2 * UInt64(ring.size))
                // vring_need_event: used_event lies in [old, new).
                expectInterrupt[q] = usedEvent &- ring.published < ring.nextUsed &- ring.published
            } else {
                expectInterrupt[q] = load(UInt16.self, at: ring.availableRing) & SplitQueue.availableNoInterrupt == 0
            }
        }
        pair.flush()
        for q in 0..<2 {
            let ring = rings[q]
            let used = load(UInt16.self, at: ring.usedRing + 2)
            let interrupted = callFDs[q].map { (EventCounter.take($0) ?? 0) > 0 } ?? false
            guard ring.running, ring.unpublished > 0 else {
                precondition(used == ring.published, "flush moved used.idx of queue \(q) with nothing to publish")
                precondition(!interrupted, "flush interrupted the driver of queue \(q) with nothing published")
                continue
            }
            precondition(used == ring.nextUsed, "flush published used.idx \(used) for queue \(q), entries were written up to \(ring.nextUsed)")
            precondition(interrupted == (expectInterrupt[q] && callFDs[q] != nil),
                         "flush \(interrupted ? "interrupted" : "did not interrupt") the driver of queue \(q) against its request")
            if interrupted { totals.interrupts += 1 }
            rings[q].published = used
            rings[q].unpublished = 0
        }
    }

    mutating func kick(value: UInt64, now: UInt64) {
        if value > 0 {
            var v = value
            _ = write(kickFD, &v, 8)
        }
        let poll = pair.kicked(now: now)
        guard rings[1].running else {
            precondition(poll == .now, "kicked with the transmit ring stopped said \(poll)")
            return
        }
        idleKicks = takenSinceKick > 0 ? 0 : idleKicks + 1
        takenSinceKick = 0
        let limit = VhostNetQueuePair.idleKickLimit
        guard idleKicks >= limit else {
            precondition(poll == .now, "kicked paused after \(idleKicks) idle kicks")
            return
        }
        let pause = min(UInt64(1_000_000) << UInt64(min(idleKicks - limit, 6)), VhostNetQueuePair.maxKickPause)
        precondition(poll == .at(now &+ pause), "kicked after \(idleKicks) idle kicks said \(poll), expected a pause of \(pause) ns")
        totals.pauses += 1
    }

    // MARK: Guest memory

    func dataAddress(slot: UInt16) -> UInt64 {
        regionA + dataOffset + (UInt64(slot) * 16) % (sizeA - dataOffset)
    }

    /// A descriptor's address: mostly in the data area, sometimes anywhere in A or at an edge.
    func bufferAddress(kind: UInt8, _ input: inout Input) -> UInt64 {
        switch kind {
        case 0...4:
            return dataAddress(slot: input.u16())
        case 5:
            // Any alignment, anywhere in A: over the rings too.
            return regionA + (UInt64(input.u16()) | UInt64(input.u8()) << 16) % sizeA
        case 6:
            let wild: [UInt64] = [0, regionA - 16, regionA - 1, regionA + sizeA - 64, regionA + sizeA - 1, regionA + sizeA,
                                  regionB - 64, 1 << 63, UInt64.max - 15, UInt64.max]
            return wild[Int(input.u8()) % wild.count]
        default:
            return dataAddress(slot: input.u16()) + UInt64(input.u8())
        }
    }

    func bufferLength(_ input: inout Input) -> UInt32 {
        let code = input.u16()
        switch code {
        case 0xFFFF: return UInt32.max
        case 0xFFFE: return 0x8000_0000
        default: return code & 0x8000 != 0 ? UInt32(code & 0x7FFF) * 64 : UInt32(code)
        }
    }

    func writeDescriptor(at address: UInt64, _ input: inout Input) {
        let control = input.u8()
        var flags = UInt16(control & 0x07)
        if control & 0x08 != 0 { flags |= 0xFFF8 }  // undefined flag bits
        let bufferAddress = bufferAddress(kind: (control >> 4) & 0x07, &input)
        let length = bufferLength(&input)
        let next = UInt16(input.u8())
        store(bufferAddress, at: address)
        store(length, at: address + 8)
        store(flags, at: address + 12)
        store(next, at: address + 14)
    }

    /// A frame for `deliver` (header from the input, then an Ethernet frame).
    func makeFrame(_ input: inout Input) -> UnsafeMutableRawBufferPointer {
        var header = [UInt8](repeating: 0, count: VirtioNetHeader.size)
        header[0] = input.u8()
        let gsoCode = input.u8()
        header[1] = gsoCode >= 0xF0 ? input.u8() : [0, 1, 4, 3, 5, 0x81, 0x84, 0x80][Int(gsoCode % 8)]
        for i in 2..<12 { header[i] = input.u8() }
        let code = input.u16()
        let length: Int = switch code {
        case 0xFFFF: VhostNetQueuePair.maxFrameBytes + 1
        case 0xFFFE: VhostNetQueuePair.maxFrameBytes
        case 0x8000...: Int(code & 0x7FFF) * 2
        default: Int(code % 1600)
        }
        let seed = input.u8()
        let frame = UnsafeMutableRawBufferPointer.allocate(byteCount: VirtioNetHeader.size + length, alignment: 1)
        header.withUnsafeBytes { frame.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: VirtioNetHeader.size) }
        let body = frame.baseAddress! + VirtioNetHeader.size
        memset(body, Int32(seed), length)
        // Position marks every 64 bytes, so a misplaced copy shows.
        var mark = 0
        while mark + 4 <= length {
            body.storeBytes(of: UInt32(truncatingIfNeeded: mark) ^ UInt32(seed), toByteOffset: mark, as: UInt32.self)
            mark += 64
        }
        let prefix = min(Int(input.u8() % 64), length)
        for i in 0..<prefix { body.storeBytes(of: input.u8(), toByteOffset: i, as: UInt8.self) }
        return frame
    }

    // MARK: Steps

    mutating func step(_ input: inout Input) {
        steps += 1
        let op = input.u8() % 12
        if verbose { say("vhostnet fuzz: step \(steps): op \(op) at input byte \(input.position - 1); rings \(rings.map { "running \($0.running) avail \($0.availableIndex) device at \($0.nextAvailable)/\($0.availableShadow) used \($0.nextUsed)/\($0.published)" })") }
        switch op {
        case 0:  // descriptor i of a ring's table
            let ring = rings[Int(input.u8() & 1)]
            let index = UInt64(input.u8()) & UInt64(max(ring.size, 1) &- 1) & 0xFF
            writeDescriptor(at: ring.descriptorTable + 16 * index, &input)
        case 1:  // an indirect table of 1-16 descriptors in the data area
            let address = dataAddress(slot: input.u16())
            let count = UInt64(input.u8() % 16) + 1
            for i in 0..<count where address + 16 * i + 16 <= regionA + sizeA { writeDescriptor(at: address + 16 * i, &input) }
        case 2:  // append heads to a ring's available ring (not yet published)
            let q = Int(input.u8() & 1)
            let ring = rings[q]
            guard ring.validSize else { return }
            for _ in 0..<(Int(input.u8() % 8) + 1) {
                let code = input.u8()
                let head: UInt16 = code < 0xF8 ? UInt16(code) & (ring.size - 1) : (code == 0xFF ? 0xFFFF : ring.size &+ UInt16(code & 3))
                store(head, at: ring.availableRing + 4 + 2 * UInt64(rings[q].appendIndex & (ring.size - 1)))
                rings[q].appendIndex &+= 1
            }
        case 3:  // publish avail.idx: what was appended, or a jump by up to 1023
            let q = Int(input.u8() & 1)
            let mode = input.u8()
            if mode < 0xC0 {
                rings[q].availableIndex = rings[q].appendIndex
            } else {
                rings[q].availableIndex &+= input.u16() % 1024
                rings[q].appendIndex = rings[q].availableIndex
            }
            let ring = rings[q]
            if !ring.manualUsedEvent && eventIndex && ring.validSize {
                // A driver asks for an interrupt at the next used entry.
                store(load(UInt16.self, at: ring.usedRing + 2), at: ring.availableRing + 4 + 2 * UInt64(ring.size))
            }
            store(ring.availableIndex, at: ring.availableRing + 2)
        case 4:  // poke bytes anywhere in region A (the rings included)
            let offset = (UInt64(input.u16()) | UInt64(input.u8()) << 16) % sizeA
            let count = UInt64(input.u8() % 16) + 1
            for i in 0..<count where offset + i < sizeA { store(input.u8(), at: regionA + offset + i) }
        case 5:  // fill data with a byte
            let address = dataAddress(slot: input.u16())
            let value = input.u8()
            let end = min(address + UInt64(input.u16()), regionA + sizeA)
            if end > address, let pointer = world.live(address, end - address) { memset(pointer, Int32(value), Int(end - address)) }
        case 6:  // avail.flags and used_event by hand from now on
            let q = Int(input.u8() & 1)
            let flags = UInt16(input.u8())
            let usedEvent = input.u16()
            rings[q].manualUsedEvent = true
            store(flags, at: rings[q].availableRing)
            if rings[q].validSize { store(usedEvent, at: rings[q].availableRing + 4 + 2 * UInt64(rings[q].size)) }
        case 7:
            transmitAll()
        case 8:  // deliver 1-4 copies of a frame
            let count = Int(input.u8() % 4) + 1
            let frame = makeFrame(&input)
            defer { frame.deallocate() }
            for _ in 0..<count { deliver(UnsafeRawBufferPointer(frame)) }
        case 9:
            flush()
        case 10:  // kick (write the counter, or not), then `kicked` at some time
            let code = input.u8()
            let value: UInt64 = code == 0xFF ? 0xFFFF_FFFF_FFFF_FFFE : UInt64(code % 4)
            let time = input.u8()
            let now: UInt64 = time == 0xFF ? UInt64.max - UInt64(input.u8()) : UInt64(time) * 1_000_000 + UInt64(steps)
            kick(value: value, now: now)
        default:  // stop a ring and resume it: where it stopped, or elsewhere
            let q = Int(input.u8() & 1)
            let mode = input.u8()
            guard let next = stop(q) else { return }
            start(q, nextAvailable: mode & 1 == 0 ? next : next &+ UInt16(input.u8()))
        }
    }
}

// MARK: - Entry point

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    guard count >= 7 else { return 0 }
    var input = Input(bytes: UnsafeBufferPointer(start: data, count: count))
    totals.inputs += 1
    memset(world.a, 0, Int(sizeA))
    memset(world.b, 0, Int(sizeB))

    let semaphore = input.bytes[1] & 0x40 != 0
    do {
        let kick = try EventFD(nonBlocking: true, semaphore: semaphore).release()
        let calls = [try EventFD(nonBlocking: true).release(), try EventFD(nonBlocking: true).release()]
        defer {
            close(kick)
            for fd in calls { close(fd) }
        }
        var session = Session(input: &input, kickFD: kick, callFDs: calls)
        session.start(0, nextAvailable: session.rings[0].availableIndex)
        session.start(1, nextAvailable: session.rings[1].availableIndex)
        while !input.isEmpty && session.steps < 512 { session.step(&input) }
        // End with the stop checks: by stopQueue, or (the last byte odd) by reset.
        if count > 7 && input.bytes[count - 1] & 1 != 0 {
            session.reset()
        } else {
            _ = session.stop(0)
            _ = session.stop(1)
        }
    } catch {
        fatalError("vhostnet fuzz: eventfd: \(error)")
    }
    return 0
}

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    _ = world
    atexit {
        print("vhostnet fuzz: \(totals.inputs) inputs, \(totals.transmitted) frames transmitted, \(totals.txDropped) transmit chains dropped, "
              + "\(totals.delivered) frames delivered, \(totals.rxDropped) dropped, \(totals.interrupts) interrupts, \(totals.pauses) kick pauses, "
              + "\(totals.overcommitted) frames into more chains than the ring has slots")
    }
    return 0
}
