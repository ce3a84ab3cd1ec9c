/// The virtio-net header that precedes every frame on a TAP device opened with IFF_VNET_HDR
/// (12 bytes after TUNSETVNETHDRSZ, the virtio 1.x layout) and on a virtio-net queue.
///
/// All multi-byte fields are little-endian. Virtio 1.2, section 5.1.6 "Device Operation".
public struct VirtioNetHeader: Equatable, Sendable {
    public static let size = 12

    /// `flags` bit: the checksum at `csumStart + csumOffset` still has to be completed.
    public static let flagNeedsCsum: UInt8 = 1
    /// `flags` bit: the checksum was validated.
    public static let flagDataValid: UInt8 = 2

    public enum GSOType: UInt8, Sendable {
        case none = 0
        case tcpv4 = 1
        case udp = 3
        case tcpv6 = 4
        case udpL4 = 5
    }
    /// `gsoType` bit that marks TCP segments carrying ECN (CWR).
    public static let gsoECN: UInt8 = 0x80

    public var flags: UInt8
    public var gsoType: UInt8
    public var headerLength: UInt16
    public var gsoSize: UInt16
    public var csumStart: UInt16
    public var csumOffset: UInt16
    public var numBuffers: UInt16

    public init(flags: UInt8 = 0, gsoType: UInt8 = 0, headerLength: UInt16 = 0, gsoSize: UInt16 = 0,
                csumStart: UInt16 = 0, csumOffset: UInt16 = 0, numBuffers: UInt16 = 0) {
        self.flags = flags; self.gsoType = gsoType; self.headerLength = headerLength; self.gsoSize = gsoSize
        self.csumStart = csumStart; self.csumOffset = csumOffset; self.numBuffers = numBuffers
    }

    /// Reads a header from the first 12 bytes of `bytes`; nil when fewer are available.
    @inlinable
    public init?(parsing bytes: UnsafeRawBufferPointer) {
        guard bytes.count >= VirtioNetHeader.size else { return nil }
        func u16(_ at: Int) -> UInt16 { UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8 }
        self.init(flags: bytes[0], gsoType: bytes[1], headerLength: u16(2), gsoSize: u16(4),
                  csumStart: u16(6), csumOffset: u16(8), numBuffers: u16(10))
    }

    /// Writes the header into the first 12 bytes of `bytes` (which must hold at least 12).
    @inlinable
    public func write(to bytes: UnsafeMutableRawBufferPointer) {
        precondition(bytes.count >= VirtioNetHeader.size)
        func put(_ v: UInt16, _ at: Int) { bytes[at] = UInt8(truncatingIfNeeded: v); bytes[at + 1] = UInt8(v >> 8) }
        bytes[0] = flags; bytes[1] = gsoType
        put(headerLength, 2); put(gsoSize, 4); put(csumStart, 6); put(csumOffset, 8); put(numBuffers, 10)
    }

    /// The GSO type without the ECN bit, or nil for a value the specification does not define.
    @inlinable public var gso: GSOType? { GSOType(rawValue: gsoType & ~VirtioNetHeader.gsoECN) }

    @inlinable public var isGSO: Bool { gsoType & ~VirtioNetHeader.gsoECN != 0 }

    /// Whether the header is consistent with a frame of `frameLength` bytes: a defined GSO type
    /// with a non-zero segment size, and checksum offsets that lie inside the frame.
    @inlinable
    public func isConsistent(frameLength: Int) -> Bool {
        guard let gso else { return false }
        if gso != .none, gsoSize == 0 { return false }
        if flags & VirtioNetHeader.flagNeedsCsum != 0 {
            // The 16-bit checksum field must lie inside the frame.
            guard Int(csumStart) + Int(csumOffset) + 2 <= frameLength else { return false }
        } else if gso != .none {
            // GSO without a partial checksum is not something a well-formed stack produces.
            return false
        }
        return true
    }
}
