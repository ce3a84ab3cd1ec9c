/// A device model on one of the guest's buses: port I/O or memory-mapped I/O. Models are pure
/// state machines (no syscalls), so they can be fuzzed and tested in memory; the VMM's KVM glue
/// (the `Partition` module) routes each exit to the model that claims the address.
///
/// Every value here comes from the guest: an access of a size the model does not implement, at an
/// offset it does not decode, is ignored (a read returns all ones), never a trap.
public protocol BusDevice: AnyObject {
    /// The guest reads `data.count` bytes (1, 2, 4 or 8) at `offset` from the start of the range
    /// the device was attached at; the model fills `data`.
    func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer)
    /// The guest writes `data` at `offset` from the start of the device's range.
    func write(offset: UInt64, from data: UnsafeRawBufferPointer)
}

/// Where an access goes: the 16-bit port space or guest-physical memory.
public enum AddressSpace: Sendable, Equatable {
    case port
    case memory
}

extension UnsafeMutableRawBufferPointer {
    /// Fills the buffer with all ones: what a read of nothing returns on a PC bus.
    public func fillWithOnes() {
        for i in indices { self[i] = 0xFF }
    }
}

extension UnsafeRawBufferPointer {
    /// The little-endian value of up to 8 bytes; an empty buffer reads as zero.
    public var littleEndianValue: UInt64 {
        var value: UInt64 = 0
        for (i, byte) in prefix(8).enumerated() { value |= UInt64(byte) << (8 * UInt64(i)) }
        return value
    }
}

extension UnsafeMutableRawBufferPointer {
    /// Stores the low `count` bytes of `value`, little-endian.
    public func storeLittleEndian(_ value: UInt64) {
        for i in indices.prefix(8) { self[i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }
}
