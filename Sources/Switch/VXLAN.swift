/// VXLAN framing (RFC 7348 section 5): the 8-byte header that follows the outer UDP header and
/// precedes the inner Ethernet frame.
///
///     0                   1                   2                   3
///     |R|R|R|R|I|R|R|R|            Reserved                           |
///     |                VXLAN Network Identifier (VNI) |   Reserved    |
public enum VXLAN {
    /// The IANA-assigned destination port.
    public static let udpPort: UInt16 = 4789
    public static let headerLength = 8
    /// The flags byte with the I bit: the VNI is valid.
    static let flagVNIValid: UInt8 = 0x08
    /// VNIs are 24 bits.
    public static let maximumVNI: UInt32 = 0xFF_FFFF
    /// Outer IPv4 (20), UDP (8) and VXLAN (8) headers plus the inner Ethernet header (14): what a
    /// segment's MTU grows by on the underlay.
    public static let encapsulationOverhead = 50

    /// Writes the RFC 7348 header (flags 0x08: the I bit; reserved zero) for `vni` at `into`.
    /// Only the low 24 bits of `vni` are used. `into` must have 8 writable bytes.
    @inlinable
    public static func writeHeader(vni: UInt32, into: UnsafeMutableRawPointer) {
        // One 64-bit store: flags, three reserved bytes, the VNI, one reserved byte (big-endian).
        let word = UInt64(0x08) << 56 | UInt64(vni & 0xFF_FFFF) << 8
        into.storeBytes(of: word.bigEndian, as: UInt64.self)
    }

    /// The VNI of a datagram's VXLAN header; nil when shorter than 8 bytes or the I flag is clear.
    /// (Reserved bits are ignored on receipt, as RFC 7348 says.)
    @inlinable
    public static func vni(of datagram: UnsafeRawBufferPointer) -> UInt32? {
        guard datagram.count >= 8 else { return nil }
        let word = UInt64(bigEndian: datagram.loadUnaligned(as: UInt64.self))
        guard word >> 56 & 0x08 != 0 else { return nil }
        return UInt32(truncatingIfNeeded: word >> 8) & 0xFF_FFFF
    }
}
