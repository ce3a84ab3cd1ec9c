/// The kind of a memory BAR. I/O BARs are not modelled: no device here needs port I/O.
public enum PCIBarKind: Sendable, Equatable {
    /// A 32-bit memory BAR (one register).
    case memory32
    /// A 64-bit memory BAR: registers `index` (low half, with the type bits) and `index + 1`.
    case memory64
}

/// A BAR a function implements: its size (a power of two, at least 16 bytes, below 4 GiB) and
/// kind. The guest chooses its address; `PCIConfigSpace.barAddress` reads it back.
public struct PCIBar: Sendable, Equatable {
    public let size: UInt64
    public let kind: PCIBarKind
    public let prefetchable: Bool

    public init(size: UInt64, kind: PCIBarKind, prefetchable: Bool = false) {
        self.size = size
        self.kind = kind
        self.prefetchable = prefetchable
    }
}

/// A PCI function's 256-byte configuration space (a type 0 header and a capability list), with a
/// write mask per bit: the guest changes only the bits a real function implements as writable,
/// so read-only fields (IDs, class, header type, capability pointers and bodies, BAR type bits
/// and size bits) stay as they are under any write. BAR size probing falls out of the masks:
/// writing all ones to a BAR and reading it back gives `~(size - 1)` plus the type bits.
///
/// Accesses must be naturally aligned (1, 2 or 4 bytes); others read as all ones and write nothing.
public struct PCIConfigSpace: Sendable {
    public static let size = 256

    // Standard header offsets (PCI Local Bus 3.0, 6.1).
    public static let vendorIDOffset = 0x00
    public static let deviceIDOffset = 0x02
    public static let commandOffset = 0x04
    public static let statusOffset = 0x06
    public static let revisionOffset = 0x08
    public static let classCodeOffset = 0x09
    public static let headerTypeOffset = 0x0E
    public static let barOffset = 0x10
    public static let subsystemVendorIDOffset = 0x2C
    public static let subsystemIDOffset = 0x2E
    public static let capabilitiesPointerOffset = 0x34
    public static let interruptLineOffset = 0x3C
    public static let interruptPinOffset = 0x3D

    /// Command register bits.
    public static let commandMemorySpace: UInt16 = 1 << 1
    public static let commandBusMaster: UInt16 = 1 << 2
    /// The command bits a guest may set: memory space, bus master, parity error response, SERR#
    /// and INTx disable. I/O space stays 0: there are no I/O BARs.
    static let commandWritable: UInt16 = 1 << 1 | 1 << 2 | 1 << 6 | 1 << 8 | 1 << 10
    /// Status register: the function has a capability list.
    public static let statusCapabilities: UInt16 = 1 << 4

    /// First byte after the standard header: where capabilities go.
    static let firstCapability = 0x40

    private var bytes: [UInt8]
    /// 1 bits: the guest may change this bit.
    private var writable: [UInt8]
    /// The BARs by register index; the upper register of a 64-bit BAR holds nil.
    public private(set) var bars: [PCIBar?] = Array(repeating: nil, count: 6)
    /// Offset of the last capability added (its next pointer links the one after it).
    private var lastCapability: Int?
    private var nextFree = PCIConfigSpace.firstCapability

    /// A type 0 header with the given identity; `classCode` is class << 16 | subclass << 8 | prog-if.
    /// Command, cache line size, latency timer and interrupt line are writable; the rest is fixed.
    public init(vendorID: UInt16, deviceID: UInt16, revision: UInt8, classCode: UInt32,
                subsystemVendorID: UInt16 = 0, subsystemID: UInt16 = 0, interruptPin: UInt8 = 0) {
        bytes = Array(repeating: 0, count: PCIConfigSpace.size)
        writable = Array(repeating: 0, count: PCIConfigSpace.size)
        setRaw(PCIConfigSpace.vendorIDOffset, size: 2, vendorID)
        setRaw(PCIConfigSpace.deviceIDOffset, size: 2, deviceID)
        setRaw(PCIConfigSpace.revisionOffset, size: 1, revision)
        setRaw(PCIConfigSpace.classCodeOffset, size: 3, classCode & 0xFF_FFFF)
        setRaw(PCIConfigSpace.subsystemVendorIDOffset, size: 2, subsystemVendorID)
        setRaw(PCIConfigSpace.subsystemIDOffset, size: 2, subsystemID)
        setRaw(PCIConfigSpace.interruptPinOffset, size: 1, interruptPin)
        setMask(PCIConfigSpace.commandOffset, size: 2, UInt32(PCIConfigSpace.commandWritable))
        setMask(0x0C, size: 2, 0xFFFF)  // cache line size, latency timer
        setMask(PCIConfigSpace.interruptLineOffset, size: 1, 0xFF)
    }

    // MARK: Set-up (by the VMM: programming errors trap here, guest values never reach it)

    /// Implements BAR `index` (0-5; a 64-bit BAR also takes `index + 1`).
    public mutating func addBAR(_ index: Int, _ bar: PCIBar) {
        precondition(bar.size >= 16 && bar.size < 1 << 32 && bar.size & (bar.size - 1) == 0, "BAR size must be a power of two in [16, 4 GiB)")
        precondition(index >= 0 && index + (bar.kind == .memory64 ? 1 : 0) < 6 && bars[index] == nil, "BAR \(index) is taken or out of range")
        let offset = PCIConfigSpace.barOffset + 4 * index
        var typeBits: UInt32 = bar.prefetchable ? 0x8 : 0
        if bar.kind == .memory64 {
            typeBits |= 0x4
            precondition(bars[index + 1] == nil, "BAR \(index + 1) is taken")
            setMask(offset + 4, size: 4, 0xFFFF_FFFF)
        }
        bars[index] = bar
        setRaw(offset, size: 4, typeBits)
        setMask(offset, size: 4, ~UInt32(truncatingIfNeeded: bar.size - 1) & ~0xF)
    }

    /// Appends a capability: `id`, then `body` (the bytes after the ID and next pointer), with
    /// `writableMask` (same length as `body`, or empty: all read-only). Returns its offset.
    @discardableResult
    public mutating func addCapability(id: UInt8, body: [UInt8], writableMask: [UInt8] = []) -> Int {
        precondition(writableMask.isEmpty || writableMask.count == body.count, "one mask byte per body byte")
        let offset = nextFree
        let length = (2 + body.count + 3) & ~3
        precondition(offset + length <= PCIConfigSpace.size, "capabilities overflow the configuration space")
        setRaw(offset, size: 1, UInt32(id))
        for (i, byte) in body.enumerated() { bytes[offset + 2 + i] = byte }
        for (i, mask) in writableMask.enumerated() { writable[offset + 2 + i] = mask }
        if let last = lastCapability {
            bytes[last + 1] = UInt8(offset)
        } else {
            setRaw(PCIConfigSpace.capabilitiesPointerOffset, size: 1, UInt32(offset))
            setRaw(PCIConfigSpace.statusOffset, size: 2, UInt32(PCIConfigSpace.statusCapabilities))
        }
        lastCapability = offset
        nextFree = offset + length
        return offset
    }

    // MARK: Guest accesses

    /// Whether an access of `size` bytes at `offset` is one a function decodes.
    @inlinable
    public static func isValidAccess(offset: Int, size: Int) -> Bool {
        (size == 1 || size == 2 || size == 4) && offset >= 0 && offset <= PCIConfigSpace.size - size && offset % size == 0
    }

    /// The guest reads `size` bytes at `offset`: nil for an access no function decodes.
    public func read(offset: Int, size: Int) -> UInt32? {
        guard PCIConfigSpace.isValidAccess(offset: offset, size: size) else { return nil }
        return raw(offset, size: size)
    }

    /// The guest writes the low `size` bytes of `value` at `offset`: only writable bits change.
    public mutating func write(offset: Int, size: Int, value: UInt32) {
        guard PCIConfigSpace.isValidAccess(offset: offset, size: size) else { return }
        for i in 0..<size {
            let byte = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))
            let mask = writable[offset + i]
            bytes[offset + i] = bytes[offset + i] & ~mask | byte & mask
        }
    }

    // MARK: The function's view

    /// The little-endian value of `size` (1-4) bytes at `offset`, without access checks.
    public func raw(_ offset: Int, size: Int) -> UInt32 {
        var value: UInt32 = 0
        for i in 0..<size where offset + i >= 0 && offset + i < bytes.count {
            value |= UInt32(bytes[offset + i]) << (8 * UInt32(i))
        }
        return value
    }

    /// Stores `size` bytes of `value` at `offset` whatever the mask: the function's own updates.
    public mutating func setRaw(_ offset: Int, size: Int, _ value: UInt32) {
        for i in 0..<size where offset + i >= 0 && offset + i < bytes.count {
            bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))
        }
    }

    private mutating func setRaw<T: FixedWidthInteger>(_ offset: Int, size: Int, _ value: T) {
        setRaw(offset, size: size, UInt32(truncatingIfNeeded: value))
    }

    private mutating func setMask(_ offset: Int, size: Int, _ mask: UInt32) {
        for i in 0..<size { writable[offset + i] = UInt8(truncatingIfNeeded: mask >> (8 * UInt32(i))) }
    }

    public var command: UInt16 { UInt16(truncatingIfNeeded: raw(PCIConfigSpace.commandOffset, size: 2)) }

    /// Whether the guest enabled memory decoding (command bit 1).
    public var memorySpaceEnabled: Bool { command & PCIConfigSpace.commandMemorySpace != 0 }

    /// The guest-physical address BAR `index` holds now (whatever the command register says), or
    /// nil when the function does not implement that BAR.
    public func barAddress(_ index: Int) -> UInt64? {
        guard index >= 0, index < bars.count, let bar = bars[index] else { return nil }
        let offset = PCIConfigSpace.barOffset + 4 * index
        let low = UInt64(raw(offset, size: 4) & ~0xF)
        guard bar.kind == .memory64 else { return low }
        return low | UInt64(raw(offset + 4, size: 4)) << 32
    }
}
