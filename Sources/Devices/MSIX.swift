/// An MSI message: a 4-byte write of `data` to `address` (0xFEEx_xxxx on x86: the local APICs).
public struct MSIMessage: Sendable, Equatable, Hashable {
    public var address: UInt64
    public var data: UInt32

    public init(address: UInt64, data: UInt32) {
        self.address = address
        self.data = data
    }
}

/// A function's MSI-X state (PCI Local Bus 3.0, 6.8.2): the capability's control bits, the
/// vector table and the pending bits, as pure state. The function places the table and the PBA in
/// one of its BARs and forwards accesses to them here.
///
/// Table accesses must be naturally aligned dwords or qwords; others read as all ones and write
/// nothing. Reserved bits (the address's low two bits, vector control bits 31:1) stay zero.
public struct MSIXTable: Sendable {
    /// The capability ID.
    public static let capabilityID: UInt8 = 0x11
    /// Message control bits.
    public static let enableBit: UInt16 = 1 << 15
    public static let functionMaskBit: UInt16 = 1 << 14
    /// At most 2048 vectors (an 11-bit table size field).
    public static let maximumVectors = 2048

    private struct Entry: Sendable {
        var addressLow: UInt32 = 0
        var addressHigh: UInt32 = 0
        var data: UInt32 = 0
        /// Vector control bit 0; every vector starts masked.
        var masked = true
    }

    public let vectorCount: Int
    private var entries: [Entry]
    private var pending: [Bool]
    /// MSI-X Enable, from the capability's message control.
    public private(set) var enabled = false
    /// Function Mask, from the capability's message control.
    public private(set) var functionMasked = false

    public init(vectorCount: Int) {
        precondition(vectorCount >= 1 && vectorCount <= MSIXTable.maximumVectors, "MSI-X has 1 to 2048 vectors")
        self.vectorCount = vectorCount
        entries = Array(repeating: Entry(), count: vectorCount)
        pending = Array(repeating: false, count: vectorCount)
    }

    /// Bytes of the vector table (16 per vector).
    public var tableSize: Int { 16 * vectorCount }
    /// Bytes of the pending bit array (whole qwords).
    public var pendingSize: Int { (vectorCount + 63) / 64 * 8 }

    /// The capability body (after ID and next pointer) for `PCIConfigSpace.addCapability`, with
    /// its write mask: only Enable and Function Mask are writable.
    public func capability(bar: Int, tableOffset: UInt32, pendingOffset: UInt32) -> (body: [UInt8], writable: [UInt8]) {
        precondition(bar >= 0 && bar < 6 && tableOffset & 7 == 0 && pendingOffset & 7 == 0, "table and PBA are qword aligned in a BAR")
        let control = UInt16(vectorCount - 1)
        let table = tableOffset | UInt32(bar)
        let pba = pendingOffset | UInt32(bar)
        var body = [UInt8(truncatingIfNeeded: control), UInt8(control >> 8)]
        for value in [table, pba] { body += (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * UInt32($0))) } }
        var writable = [UInt8](repeating: 0, count: body.count)
        writable[1] = UInt8(truncatingIfNeeded: (MSIXTable.enableBit | MSIXTable.functionMaskBit) >> 8)
        return (body, writable)
    }

    /// The capability's message control register as the guest left it.
    public mutating func setControl(_ control: UInt16) {
        enabled = control & MSIXTable.enableBit != 0
        functionMasked = control & MSIXTable.functionMaskBit != 0
    }

    /// Where vector `vector` sends its message now: nil when MSI-X is off, the function or the
    /// vector is masked, or there is no such vector.
    public func message(vector: Int) -> MSIMessage? {
        guard enabled, !functionMasked, vector >= 0, vector < vectorCount, !entries[vector].masked else { return nil }
        let entry = entries[vector]
        return MSIMessage(address: UInt64(entry.addressHigh) << 32 | UInt64(entry.addressLow), data: entry.data)
    }

    /// Whether vector `vector` exists and MSI-X is on (its message may still be masked).
    public func isUsable(vector: Int) -> Bool { enabled && vector >= 0 && vector < vectorCount }

    /// Marks `vector` pending (a message the device could not send while masked).
    public mutating func setPending(_ vector: Int) {
        guard vector >= 0, vector < vectorCount else { return }
        pending[vector] = true
    }

    /// Clears and returns the vectors that are pending and can now be sent.
    public mutating func takeDeliverable() -> [Int] {
        var out: [Int] = []
        for vector in 0..<vectorCount where pending[vector] && message(vector: vector) != nil {
            pending[vector] = false
            out.append(vector)
        }
        return out
    }

    private static func isValid(offset: UInt64, count: Int, limit: Int) -> Bool {
        (count == 4 || count == 8) && offset % UInt64(count) == 0 && offset < UInt64(limit) && UInt64(count) <= UInt64(limit) - offset
    }

    private func tableDword(_ index: Int) -> UInt32 {
        let entry = entries[index / 4]
        switch index % 4 {
        case 0: return entry.addressLow
        case 1: return entry.addressHigh
        case 2: return entry.data
        default: return entry.masked ? 1 : 0
        }
    }

    /// The guest reads the table at `offset` (from the table's start).
    public func readTable(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        guard MSIXTable.isValid(offset: offset, count: data.count, limit: tableSize) else {
            data.fillWithOnes()
            return
        }
        let first = Int(offset / 4)
        var value = UInt64(tableDword(first))
        if data.count == 8 { value |= UInt64(tableDword(first + 1)) << 32 }
        data.storeLittleEndian(value)
    }

    /// The guest writes the table at `offset`. Returns the vector whose entry it wrote, if any.
    @discardableResult
    public mutating func writeTable(offset: UInt64, from data: UnsafeRawBufferPointer) -> Int? {
        guard MSIXTable.isValid(offset: offset, count: data.count, limit: tableSize) else { return nil }
        let value = data.littleEndianValue
        let first = Int(offset / 4)
        for i in 0..<(data.count / 4) {
            let dword = UInt32(truncatingIfNeeded: value >> (32 * UInt64(i)))
            let index = first + i
            switch index % 4 {
            case 0: entries[index / 4].addressLow = dword & ~3
            case 1: entries[index / 4].addressHigh = dword
            case 2: entries[index / 4].data = dword
            default: entries[index / 4].masked = dword & 1 != 0
            }
        }
        return first / 4
    }

    /// The guest reads the pending bits at `offset`; writes to them are ignored.
    public func readPending(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        guard MSIXTable.isValid(offset: offset, count: data.count, limit: pendingSize) else {
            data.fillWithOnes()
            return
        }
        var value: UInt64 = 0
        let firstBit = Int(offset) * 8
        for bit in 0..<(8 * data.count) where firstBit + bit < vectorCount && pending[firstBit + bit] {
            value |= 1 << UInt64(bit)
        }
        data.storeLittleEndian(value)
    }
}
