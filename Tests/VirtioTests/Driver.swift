import Virtio

/// A test-only virtio driver: guest memory is one allocated buffer mapped at a non-zero guest
/// address; the driver lays out a split queue in it, publishes chains, and reads the used ring.
final class TestDriver {
    static let base: UInt64 = 0x4000_0000
    static let memorySize = 1 << 20

    let host: UnsafeMutableRawPointer
    let memory: GuestMemory
    let size: UInt16
    let descriptorTable = TestDriver.base + 0x1000
    let availableRing = TestDriver.base + 0x20000
    let usedRing = TestDriver.base + 0x30000
    /// Next free descriptor index (wraps).
    var nextDescriptor: UInt16 = 0
    /// The driver's avail.idx.
    var availableIndex: UInt16
    /// Bump allocator for buffers and indirect tables.
    var dataCursor = TestDriver.base + 0x40000

    init(size: UInt16 = 16, startIndex: UInt16 = 0) {
        host = UnsafeMutableRawPointer.allocate(byteCount: TestDriver.memorySize, alignment: 4096)
        host.initializeMemory(as: UInt8.self, repeating: 0, count: TestDriver.memorySize)
        memory = try! GuestMemory(regions: [GuestMemoryRegion(guestAddress: TestDriver.base,
                                                              size: UInt64(TestDriver.memorySize), host: host)])
        self.size = size
        availableIndex = startIndex
        store(startIndex, at: availableRing + 2)
        store(startIndex, at: usedRing + 2)
    }

    deinit { host.deallocate() }

    func queue(eventIndex: Bool = false, indirect: Bool = false) throws -> SplitQueue {
        try SplitQueue(size: size, descriptorTable: descriptorTable, availableRing: availableRing,
                       usedRing: usedRing, memory: memory, eventIndex: eventIndex,
                       indirectDescriptors: indirect, nextAvailable: availableIndex, nextUsed: availableIndex)
    }

    // MARK: Raw memory

    func pointer(_ address: UInt64) -> UnsafeMutableRawPointer {
        precondition(address >= TestDriver.base && address < TestDriver.base + UInt64(TestDriver.memorySize))
        return host + Int(address - TestDriver.base)
    }

    func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) {
        pointer(address).storeBytes(of: value.littleEndian, as: T.self)
    }

    func load<T: FixedWidthInteger>(_: T.Type, at address: UInt64) -> T {
        T(littleEndian: pointer(address).loadUnaligned(as: T.self))
    }

    func write(_ bytes: [UInt8], at address: UInt64) {
        for (i, b) in bytes.enumerated() { pointer(address + UInt64(i)).storeBytes(of: b, as: UInt8.self) }
    }

    func read(_ count: Int, at address: UInt64) -> [UInt8] {
        (0..<count).map { pointer(address + UInt64($0)).load(as: UInt8.self) }
    }

    /// Reserves `length` bytes (16-aligned) in the data area, optionally filled.
    func allocate(_ length: Int, fill: [UInt8] = []) -> UInt64 {
        let address = dataCursor
        dataCursor += UInt64((length + 15) & ~15)
        precondition(dataCursor <= TestDriver.base + UInt64(TestDriver.memorySize))
        write(fill, at: address)
        return address
    }

    // MARK: Descriptors and rings

    struct Buffer {
        var address: UInt64
        var length: UInt32
        var writable: Bool = false
        init(_ address: UInt64, _ length: UInt32, writable: Bool = false) {
            self.address = address; self.length = length; self.writable = writable
        }
    }

    func setDescriptor(_ index: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0,
                       table: UInt64? = nil) {
        let at = (table ?? descriptorTable) + 16 * UInt64(index)
        store(address, at: at)
        store(length, at: at + 8)
        store(flags, at: at + 12)
        store(next, at: at + 14)
    }

    /// Writes `buffers` as a linked chain of direct descriptors; returns the head (not published).
    func makeChain(_ buffers: [Buffer]) -> UInt16 {
        let head = nextDescriptor
        for (i, buffer) in buffers.enumerated() {
            let index = nextDescriptor
            nextDescriptor = (nextDescriptor + 1) % size
            let last = i == buffers.count - 1
            setDescriptor(index, address: buffer.address, length: buffer.length,
                          flags: (last ? 0 : DescriptorFlags.next) | (buffer.writable ? DescriptorFlags.write : 0),
                          next: nextDescriptor)
        }
        return head
    }

    /// Writes `buffers` into an indirect table and one descriptor pointing at it; returns the head.
    func makeIndirectChain(_ buffers: [Buffer]) -> UInt16 {
        let table = allocate(16 * buffers.count)
        for (i, buffer) in buffers.enumerated() {
            let last = i == buffers.count - 1
            setDescriptor(UInt16(i), address: buffer.address, length: buffer.length,
                          flags: (last ? 0 : DescriptorFlags.next) | (buffer.writable ? DescriptorFlags.write : 0),
                          next: UInt16(i + 1), table: table)
        }
        let head = nextDescriptor
        nextDescriptor = (nextDescriptor + 1) % size
        setDescriptor(head, address: table, length: UInt32(16 * buffers.count), flags: DescriptorFlags.indirect)
        return head
    }

    /// Puts `head` in the available ring and publishes it (avail.idx += 1).
    func publish(_ head: UInt16) {
        store(head, at: availableRing + 4 + 2 * UInt64(availableIndex % size))
        availableIndex &+= 1
        store(availableIndex, at: availableRing + 2)
    }

    @discardableResult
    func add(_ buffers: [Buffer]) -> UInt16 {
        let head = makeChain(buffers)
        publish(head)
        return head
    }

    var availableFlags: UInt16 {
        get { load(UInt16.self, at: availableRing) }
        set { store(newValue, at: availableRing) }
    }
    var usedEvent: UInt16 {
        get { load(UInt16.self, at: availableRing + 4 + 2 * UInt64(size)) }
        set { store(newValue, at: availableRing + 4 + 2 * UInt64(size)) }
    }
    var usedFlags: UInt16 { load(UInt16.self, at: usedRing) }
    var usedIndex: UInt16 { load(UInt16.self, at: usedRing + 2) }
    var availableEvent: UInt16 { load(UInt16.self, at: usedRing + 4 + 8 * UInt64(size)) }

    func usedEntry(_ position: UInt16) -> (id: UInt32, length: UInt32) {
        let at = usedRing + 4 + 8 * UInt64(position % size)
        return (load(UInt32.self, at: at), load(UInt32.self, at: at + 4))
    }

    // MARK: virtio-blk

    static func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        (0..<MemoryLayout<T>.size).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
    }

    static func blockHeader(type: UInt32, sector: UInt64, reserved: UInt32 = 0) -> [UInt8] {
        le(type) + le(reserved) + le(sector)
    }

    static func range(_ sector: UInt64, _ count: UInt32, flags: UInt32 = 0) -> [UInt8] {
        le(sector) + le(count) + le(flags)
    }
}
