import Synchronization

/// Descriptor flag bits (virtio 1.2, 2.7.5).
public enum DescriptorFlags {
    /// The buffer continues in the descriptor named by `next`.
    public static let next: UInt16 = 1
    /// The buffer is device-writable (otherwise device-readable).
    public static let write: UInt16 = 2
    /// The buffer holds a table of indirect descriptors.
    public static let indirect: UInt16 = 4
}

/// One guest buffer of a descriptor chain, already checked to lie wholly inside guest memory.
public struct ChainSegment: Sendable, Equatable {
    /// Guest-physical address of the first byte.
    public let address: UInt64
    /// Length in bytes (never 0: zero-length descriptors are skipped).
    public let length: UInt32
    /// Whether the device may write to it (VIRTQ_DESC_F_WRITE).
    public let writable: Bool

    @inlinable
    public init(address: UInt64, length: UInt32, writable: Bool) {
        self.address = address
        self.length = length
        self.writable = writable
    }
}

/// The buffers of one available descriptor chain, in chain order: every device-readable segment
/// comes before every device-writable one. Its storage is reused across `SplitQueue.walk` calls,
/// so after the first few requests walking a chain allocates nothing.
public struct DescriptorChain: Sendable {
    /// The head descriptor index: what `SplitQueue.pushUsed(head:length:)` takes back.
    public var head: UInt16
    /// All segments, readable ones first.
    @inlinable public var segments: [ChainSegment] { _segments }
    /// Total bytes of the readable segments.
    @inlinable public var readableLength: UInt64 { _readableLength }
    /// Total bytes of the writable segments.
    @inlinable public var writableLength: UInt64 { _writableLength }
    @usableFromInline var _segments: [ChainSegment]
    @usableFromInline var readableCount: Int
    @usableFromInline var _readableLength: UInt64
    @usableFromInline var _writableLength: UInt64

    /// An empty chain with room for `capacity` segments before it first grows.
    public init(capacity: Int = 16) {
        head = 0
        _segments = []
        _segments.reserveCapacity(capacity)
        readableCount = 0
        _readableLength = 0
        _writableLength = 0
    }

    /// The device-readable segments (driver to device), in order.
    @inlinable public var readable: ArraySlice<ChainSegment> { _segments[..<readableCount] }
    /// The device-writable segments (device to driver), in order.
    @inlinable public var writable: ArraySlice<ChainSegment> { _segments[readableCount...] }

    /// Empties the chain, keeping its storage.
    @inlinable
    public mutating func removeAll() {
        _segments.removeAll(keepingCapacity: true)
        readableCount = 0
        _readableLength = 0
        _writableLength = 0
    }

    /// Appends a segment. Callers keep readable segments before writable ones (the walker does).
    /// Lengths cannot overflow: a chain holds at most 2 * 32768 segments of at most 2^32 - 1 bytes.
    @inlinable
    mutating func append(_ segment: ChainSegment) {
        _segments.append(segment)
        if segment.writable {
            _writableLength &+= UInt64(segment.length)
        } else {
            readableCount &+= 1
            _readableLength &+= UInt64(segment.length)
        }
    }
}

/// Why a descriptor chain was refused. The chain is broken; the device should return its head
/// with a used length of 0 (or treat the queue as broken).
public enum ChainError: Error, Equatable, CustomStringConvertible {
    /// A descriptor index (head or `next`) is not below the queue size or the indirect table length.
    case indexOutOfRange(UInt16)
    /// More descriptors than the queue size (or the indirect table length) were followed; this is
    /// also where a loop in the `next` links ends.
    case tooLong(limit: Int)
    /// A buffer does not lie wholly inside one guest memory region.
    case bufferOutsideMemory(address: UInt64, length: UInt32)
    /// An indirect table contains a descriptor with VIRTQ_DESC_F_INDIRECT.
    case indirectNested
    /// An indirect table's length is zero, not a multiple of 16, longer than 32768 descriptors,
    /// or the table is not inside guest memory.
    case indirectTableInvalid(address: UInt64, length: UInt32)
    /// VIRTQ_DESC_F_INDIRECT is used but VIRTIO_F_INDIRECT_DESC was not negotiated.
    case indirectNotNegotiated
    /// A device-readable descriptor follows a device-writable one (virtio 1.2, 2.7.4.2).
    case readableAfterWritable

    public var description: String {
        switch self {
        case .indexOutOfRange(let i): "descriptor index \(i) is out of range"
        case .tooLong(let limit): "descriptor chain is longer than \(limit) descriptors (or loops)"
        case .bufferOutsideMemory(let a, let l):
            "buffer at 0x\(String(a, radix: 16)) of \(l) bytes is not inside guest memory"
        case .indirectNested: "indirect descriptor inside an indirect table"
        case .indirectTableInvalid(let a, let l):
            "indirect table at 0x\(String(a, radix: 16)) of \(l) bytes is empty, not a multiple of 16 bytes, too long, or not inside guest memory"
        case .indirectNotNegotiated: "indirect descriptor used but VIRTIO_F_INDIRECT_DESC was not negotiated"
        case .readableAfterWritable: "device-readable descriptor after a device-writable one"
        }
    }
}

/// Why the available ring could not be read: the driver broke the queue, which needs a reset.
public enum QueueError: Error, Equatable, CustomStringConvertible {
    /// avail.idx moved ahead of the device's position by more than the queue size.
    case availableIndexJumped(from: UInt16, to: UInt16, size: UInt16)
    /// An available ring entry names a head descriptor index not below the queue size.
    case headOutOfRange(UInt16, size: UInt16)
    /// A ring could not be read (cannot happen once `SplitQueue.init` has validated the layout).
    case ringOutsideMemory

    public var description: String {
        switch self {
        case .availableIndexJumped(let from, let to, let size):
            "available index jumped from \(from) to \(to), more than the queue size \(size)"
        case .headOutOfRange(let head, let size): "available head \(head) is not below the queue size \(size)"
        case .ringOutsideMemory: "virtqueue ring is not inside guest memory"
        }
    }
}

/// The device side of a split virtqueue (virtio 1.2, section 2.7) in guest memory.
///
/// The guest may rewrite the rings at any time: every guest-controlled field is read once into a
/// local and the copy is what gets validated and used. Nothing the guest writes can trap.
public struct SplitQueue: Sendable {
    /// A ring of the queue, for `SetupError`.
    public enum Ring: Sendable, Equatable {
        case descriptorTable, availableRing, usedRing
    }

    public enum SetupError: Error, Equatable, CustomStringConvertible {
        /// The size is 0, not a power of two, or above 32768.
        case invalidSize(UInt16)
        /// A ring's address is not aligned as the specification requires (16, 2, 4).
        case misaligned(Ring, address: UInt64)
        /// A ring does not lie wholly inside one guest memory region.
        case outsideMemory(Ring, address: UInt64, length: UInt64)
        /// The used ring (the device writes it) shares memory with the descriptor table or the
        /// available ring, however the guest addresses alias.
        case overlapping(Ring)

        public var description: String {
            switch self {
            case .overlapping(let r):
                "the used ring shares memory with the \(r): the device's writes would change what the driver published"
            case .invalidSize(let s): "queue size \(s) is not a power of two between 1 and 32768"
            case .misaligned(let r, let a): "\(r) at 0x\(String(a, radix: 16)) is misaligned"
            case .outsideMemory(let r, let a, let l):
                "\(r) at 0x\(String(a, radix: 16)) of \(l) bytes is not inside guest memory"
            }
        }
    }

    /// Available ring flag: the driver does not want interrupts (without EVENT_IDX).
    public static let availableNoInterrupt: UInt16 = 1
    /// Used ring flag: the device does not want kicks (without EVENT_IDX).
    public static let usedNoNotify: UInt16 = 1
    /// Largest queue size a split virtqueue may have.
    public static let maxSize: UInt16 = 32768

    /// Number of descriptors (a power of two).
    public let size: UInt16
    public let descriptorTable: UInt64
    public let availableRing: UInt64
    public let usedRing: UInt64
    public let memory: GuestMemory
    /// VIRTIO_F_EVENT_IDX was negotiated.
    public let eventIndex: Bool
    /// VIRTIO_F_INDIRECT_DESC was negotiated.
    public let indirectDescriptors: Bool

    /// The available ring position of the next chain to take (vhost-user GET_VRING_BASE).
    @inlinable public var nextAvailable: UInt16 { _nextAvailable }
    /// The used ring position of the next entry `pushUsed` writes.
    @inlinable public var nextUsed: UInt16 { _nextUsed }
    @usableFromInline var _nextAvailable: UInt16
    @usableFromInline var _nextUsed: UInt16
    /// used.idx as last published.
    @usableFromInline var publishedUsed: UInt16
    /// avail.idx as last read: chains up to it can be taken without re-reading it.
    @usableFromInline var availableShadow: UInt16

    /// Checks the layout and starts serving the queue at the given positions.
    /// Throws when the size is invalid or a ring is misaligned or not inside guest memory.
    public init(size: UInt16, descriptorTable: UInt64, availableRing: UInt64, usedRing: UInt64,
                memory: GuestMemory, eventIndex: Bool, indirectDescriptors: Bool = false,
                nextAvailable: UInt16 = 0, nextUsed: UInt16 = 0) throws(SetupError) {
        guard size != 0, size <= SplitQueue.maxSize, size & (size &- 1) == 0 else { throw .invalidSize(size) }
        let n = UInt64(size)
        let layout: [(Ring, UInt64, UInt64, UInt64)] = [
            (.descriptorTable, descriptorTable, 16 * n, 16),
            (.availableRing, availableRing, 6 + 2 * n, 2),
            (.usedRing, usedRing, 6 + 8 * n, 4),
        ]
        var hostRanges: [Range<UInt>] = []
        for (ring, address, length, alignment) in layout {
            guard address % alignment == 0 else { throw .misaligned(ring, address: address) }
            guard let pointer = memory.pointer(at: address, length: length) else {
                throw .outsideMemory(ring, address: address, length: length)
            }
            let start = UInt(bitPattern: pointer)
            hostRanges.append(start ..< start + UInt(length))
        }
        // Compared where the bytes live, not by guest address: two regions may map the same
        // memory. A used ring over the available index makes the device's own flag and
        // avail_event writes look like chains the driver published (a device would poll forever).
        for (index, ring) in [Ring.descriptorTable, .availableRing].enumerated() where hostRanges[2].overlaps(hostRanges[index]) {
            throw .overlapping(ring)
        }
        self.size = size
        self.descriptorTable = descriptorTable
        self.availableRing = availableRing
        self.usedRing = usedRing
        self.memory = memory
        self.eventIndex = eventIndex
        self.indirectDescriptors = indirectDescriptors
        self._nextAvailable = nextAvailable
        self._nextUsed = nextUsed
        self.publishedUsed = nextUsed
        self.availableShadow = nextAvailable
    }

    // MARK: Available ring

    /// The head of the next available chain, or nil when the driver has published none.
    /// Throws when the driver broke the queue: the available index moved ahead by more than
    /// `size` (nothing is consumed), or a head index >= size (that entry is consumed, so a caller
    /// that chooses to carry on does not see it again).
    @inlinable
    public mutating func popAvailable() throws(QueueError) -> UInt16? {
        if nextAvailable == availableShadow {
            guard let index = memory.load(UInt16.self, at: availableRing &+ 2) else { throw .ringOutsideMemory }
            if index == nextAvailable { return nil }
            guard index &- nextAvailable <= size else {
                throw .availableIndexJumped(from: nextAvailable, to: index, size: size)
            }
            availableShadow = index
            // The ring entries and descriptors were written before avail.idx: read them after it.
            atomicMemoryFence(ordering: .acquiring)
        }
        let slot = availableRing &+ 4 &+ 2 &* UInt64(nextAvailable & (size &- 1))
        guard let head = memory.load(UInt16.self, at: slot) else { throw .ringOutsideMemory }
        _nextAvailable &+= 1
        guard head < size else { throw .headOutOfRange(head, size: size) }
        return head
    }

    /// Gives back the last `count` chains taken with `popAvailable` and not pushed as used: the
    /// next pops return them again. For a receive queue whose buffers turned out too small for
    /// the frame at hand: they wait for a frame that fits (or for more buffers).
    @inlinable
    public mutating func rewindAvailable(by count: UInt16) {
        _nextAvailable &-= count
    }

    /// The number of chains the driver has published that are not taken yet (reads avail.idx).
    public var pendingAvailable: UInt16 {
        guard let index = memory.load(UInt16.self, at: availableRing &+ 2) else { return 0 }
        return index &- nextAvailable
    }

    // MARK: Descriptor chains

    /// Walks the chain starting at `head` into `chain` (cleared first), following NEXT links and
    /// (when negotiated) one level of indirect table.
    ///
    /// Validates every index (< size, or < the indirect table length), the number of descriptors
    /// (at most the queue size, or the indirect table length: loops end there), indirect tables
    /// (non-zero multiple of 16 bytes, at most 32768 entries, inside memory, not nested), every
    /// non-empty buffer (wholly inside one region) and that readable buffers precede writable
    /// ones. Zero-length descriptors are skipped. A descriptor with INDIRECT ends the chain: the
    /// driver must not set NEXT with it (2.7.5.3.1), so its `next` is ignored.
    /// `maxDescriptors` caps the descriptors walked in all (the INDIRECT one and zero-length
    /// ones included), so the work one chain can cost is the device's to bound: an indirect
    /// table may otherwise hold 32768 entries.
    /// On a throw, `chain` holds the segments accepted so far and must not be used.
    @inlinable
    public func walk(head: UInt16, into chain: inout DescriptorChain, maxDescriptors: Int = .max) throws(ChainError) {
        chain.removeAll()
        chain.head = head
        var table = descriptorTable
        var tableLength = Int(size)
        var index = head
        var walked = 0
        var total = 0
        var inIndirect = false
        var seenWritable = false
        while true {
            guard Int(index) < tableLength else { throw .indexOutOfRange(index) }
            walked &+= 1
            guard walked <= tableLength else { throw .tooLong(limit: tableLength) }
            total &+= 1
            guard total <= maxDescriptors else { throw .tooLong(limit: maxDescriptors) }
            // The table lies inside memory (checked at setup / when entering it): translate once,
            // then copy each field exactly once.
            guard let d = memory.pointer(at: table &+ 16 &* UInt64(index), length: 16) else {
                throw .indexOutOfRange(index)
            }
            let address = UInt64(littleEndian: d.loadUnaligned(as: UInt64.self))
            let length = UInt32(littleEndian: d.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            let flags = UInt16(littleEndian: d.loadUnaligned(fromByteOffset: 12, as: UInt16.self))
            let next = UInt16(littleEndian: d.loadUnaligned(fromByteOffset: 14, as: UInt16.self))

            if flags & DescriptorFlags.indirect != 0 {
                guard indirectDescriptors else { throw .indirectNotNegotiated }
                guard !inIndirect else { throw .indirectNested }
                guard length != 0, length % 16 == 0, length / 16 <= UInt32(SplitQueue.maxSize),
                      memory.pointer(at: address, length: UInt64(length)) != nil
                else { throw .indirectTableInvalid(address: address, length: length) }
                table = address
                tableLength = Int(length / 16)
                index = 0
                walked = 0
                inIndirect = true
                continue
            }

            if length != 0 {
                guard memory.pointer(at: address, length: UInt64(length)) != nil else {
                    throw .bufferOutsideMemory(address: address, length: length)
                }
                let writable = flags & DescriptorFlags.write != 0
                if writable {
                    seenWritable = true
                } else if seenWritable {
                    throw .readableAfterWritable
                }
                chain.append(ChainSegment(address: address, length: length, writable: writable))
            }
            guard flags & DescriptorFlags.next != 0 else { return }
            index = next
        }
    }

    // MARK: Used ring

    /// Appends (head, written length) to the used ring; `publishUsed()` makes it visible.
    @inlinable
    public mutating func pushUsed(head: UInt16, length: UInt32) {
        let slot = usedRing &+ 4 &+ 8 &* UInt64(nextUsed & (size &- 1))
        // The ring was validated at setup, so these stores cannot fail.
        memory.store(UInt32(head), at: slot)
        memory.store(length, at: slot &+ 4)
        _nextUsed &+= 1
    }

    /// Publishes the pushed used entries (release fence, then used.idx) and says whether the
    /// driver must be notified: with EVENT_IDX when used_event lies in the published range
    /// (vring_need_event), without it unless avail.flags has VIRTQ_AVAIL_F_NO_INTERRUPT.
    /// Returns false when nothing was pushed since the last call. Call once per batch.
    @inlinable
    public mutating func publishUsed() -> Bool {
        let old = publishedUsed
        let new = nextUsed
        guard old != new else { return false }
        // The entries (and the buffers the device wrote) must be visible before used.idx.
        atomicMemoryFence(ordering: .releasing)
        memory.store(new, at: usedRing &+ 2)
        publishedUsed = new
        // Order the used.idx store before reading the driver's suppression fields (store-load).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if eventIndex {
            let usedEvent = memory.load(UInt16.self, at: availableRing &+ 4 &+ 2 &* UInt64(size)) ?? 0
            return SplitQueue.needsEvent(event: usedEvent, new: new, old: old)
        }
        let flags = memory.load(UInt16.self, at: availableRing) ?? 0
        return flags & SplitQueue.availableNoInterrupt == 0
    }

    /// vring_need_event: whether moving an index from `old` to `new` crossed `event`
    /// (i.e. event is in [old, new) modulo 2^16).
    @inlinable
    public static func needsEvent(event: UInt16, new: UInt16, old: UInt16) -> Bool {
        new &- event &- 1 < new &- old
    }

    // MARK: Notification suppression

    /// Asks the driver to kick for new chains. With EVENT_IDX, writes avail_event (= nextAvailable)
    /// so the driver kicks when it publishes beyond it; without, clears VIRTQ_USED_F_NO_NOTIFY.
    /// Call before going idle, then re-check `popAvailable()`: a chain published before the driver
    /// saw this would otherwise never be kicked.
    @inlinable
    public mutating func enableNotifications() {
        if eventIndex {
            memory.store(nextAvailable, at: usedRing &+ 4 &+ 8 &* UInt64(size))
        } else {
            memory.store(UInt16(0), at: usedRing)
        }
        // The store must be visible before avail.idx is read again (store-load).
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        // Force the next popAvailable to re-read avail.idx.
        availableShadow = nextAvailable
    }

    /// Asks the driver not to kick while the device is busy polling. Without EVENT_IDX this sets
    /// VIRTQ_USED_F_NO_NOTIFY; with it there is nothing to write (avail_event is left behind, so
    /// the driver kicks at most once more).
    @inlinable
    public mutating func disableNotifications() {
        if !eventIndex {
            memory.store(SplitQueue.usedNoNotify, at: usedRing)
        }
    }
}
