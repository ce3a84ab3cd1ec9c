import Synchronization

/// The driver (guest) side of a split virtqueue: what a guest's virtio driver does, for test
/// guests, the block tests and the block benchmark.
///
/// It trusts the memory it lays out (it is the guest), but checks what the device writes back.
public struct VirtqueueDriver: Sendable {
    public struct Buffer: Sendable {
        public var address: UInt64
        public var length: UInt32
        public var writable: Bool
        /// The buffer is a table of `length / 16` indirect descriptors (VIRTQ_DESC_F_INDIRECT).
        public var indirect: Bool
        public init(address: UInt64, length: UInt32, writable: Bool, indirect: Bool = false) {
            self.address = address; self.length = length; self.writable = writable; self.indirect = indirect
        }
    }

    /// Where the three parts of a queue of `size` go when laid out from `base` (page-aligned
    /// parts, as legacy layouts do), and the first byte after them.
    public static func layout(size: UInt16, at base: UInt64) -> (descriptors: UInt64, available: UInt64, used: UInt64, end: UInt64) {
        let n = UInt64(size)
        let descriptors = base
        let available = descriptors + 16 * n
        let used = (available + 6 + 2 * n + 4095) & ~4095
        let end = (used + 6 + 8 * n + 4095) & ~4095
        return (descriptors, available, used, end)
    }

    public let size: UInt16
    let memory: GuestMemory
    let descriptors: UInt64
    let available: UInt64
    let used: UInt64
    let eventIndex: Bool
    private var freeHead: UInt16
    private var freeCount: Int
    private var availableIndex: UInt16 = 0
    private var lastPublished: UInt16 = 0
    private var usedIndex: UInt16 = 0
    /// Descriptor count of each chain in flight, by head.
    private var chainLength: [UInt16]

    /// Sets up an empty queue in `memory` (which must contain the three areas).
    public init(memory: GuestMemory, size: UInt16, descriptors: UInt64, available: UInt64, used: UInt64, eventIndex: Bool) {
        self.memory = memory
        self.size = size
        self.descriptors = descriptors
        self.available = available
        self.used = used
        self.eventIndex = eventIndex
        freeHead = 0
        freeCount = Int(size)
        chainLength = Array(repeating: 0, count: Int(size))
        for i in 0..<size {
            let d = descriptors + 16 * UInt64(i)
            memory.store(UInt64(0), at: d)
            memory.store(UInt32(0), at: d + 8)
            memory.store(UInt16(0), at: d + 12)
            memory.store(i &+ 1, at: d + 14)
        }
        memory.store(UInt16(0), at: available)
        memory.store(UInt16(0), at: available + 2)
        memory.store(UInt16(0), at: used)
        memory.store(UInt16(0), at: used + 2)
        if eventIndex { memory.store(UInt16(0), at: used + 4 + 8 * UInt64(size)) }
    }

    /// Descriptors not in use.
    public var freeDescriptors: Int { freeCount }

    /// Puts a chain of `buffers` in the descriptor table and the available ring (not yet
    /// visible to the device: see `publish`). Returns its head, or nil when descriptors run out.
    public mutating func add(_ buffers: [Buffer]) -> UInt16? {
        guard !buffers.isEmpty, buffers.count <= freeCount else { return nil }
        let head = freeHead
        var index = head
        for (i, buffer) in buffers.enumerated() {
            let d = descriptors + 16 * UInt64(index)
            let next = memory.load(UInt16.self, at: d + 14) ?? 0
            let last = i == buffers.count - 1
            memory.store(buffer.address, at: d)
            memory.store(buffer.length, at: d + 8)
            memory.store(UInt16((last ? 0 : 1) | (buffer.writable ? 2 : 0) | (buffer.indirect ? 4 : 0)), at: d + 12)
            if last {
                freeHead = next
            } else {
                index = next
            }
        }
        freeCount -= buffers.count
        chainLength[Int(head)] = UInt16(buffers.count)
        let slot = available + 4 + 2 * UInt64(availableIndex % size)
        memory.store(head, at: slot)
        availableIndex &+= 1
        return head
    }

    /// Makes added chains visible to the device. Returns whether the device asked to be
    /// notified (EVENT_IDX's avail_event, or the used ring's NO_NOTIFY flag).
    public mutating func publish() -> Bool {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        memory.store(availableIndex, at: available + 2)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        let old = lastPublished
        lastPublished = availableIndex
        if eventIndex {
            let event = memory.load(UInt16.self, at: used + 4 + 8 * UInt64(size)) ?? 0
            return (availableIndex &- event &- 1) < (availableIndex &- old)
        }
        return (memory.load(UInt16.self, at: used) ?? 0) & 1 == 0
    }

    /// The next completed chain, freeing its descriptors; nil when the device has returned none.
    public mutating func popUsed() -> (head: UInt16, length: UInt32)? {
        let deviceIndex = memory.load(UInt16.self, at: used + 2) ?? 0
        guard deviceIndex != usedIndex else { return nil }
        atomicMemoryFence(ordering: .acquiring)
        let element = used + 4 + 8 * UInt64(usedIndex % size)
        let head = UInt16(truncatingIfNeeded: memory.load(UInt32.self, at: element) ?? 0)
        let length = memory.load(UInt32.self, at: element + 4) ?? 0
        usedIndex &+= 1
        if eventIndex {
            // Ask for an interrupt as soon as the next element is used.
            memory.store(usedIndex, at: available + 4 + 2 * UInt64(size))
        }
        guard head < size else { return (head, length) }
        let count = Int(chainLength[Int(head)])
        if count > 0 {
            // Return the chain to the free list: walk to its tail and link it to the old head.
            var tail = head
            for _ in 1..<count { tail = memory.load(UInt16.self, at: descriptors + 16 * UInt64(tail) + 14) ?? 0 }
            memory.store(freeHead, at: descriptors + 16 * UInt64(tail) + 14)
            freeHead = head
            freeCount += count
            chainLength[Int(head)] = 0
        }
        return (head, length)
    }
}
