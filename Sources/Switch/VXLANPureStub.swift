// TEMPORARY: vxpure's signatures with trivial bodies, until their branch is on main. Delete then.
import Config
import Virtio

public enum VXLAN {
    public static let udpPort: UInt16 = 4789
    public static let headerLength = 8
    public static func writeHeader(vni: UInt32, into: UnsafeMutableRawPointer) {
        into.storeBytes(of: 0x08, toByteOffset: 0, as: UInt8.self)
        into.storeBytes(of: 0, toByteOffset: 1, as: UInt8.self)
        into.storeBytes(of: 0, toByteOffset: 2, as: UInt8.self)
        into.storeBytes(of: 0, toByteOffset: 3, as: UInt8.self)
        into.storeBytes(of: UInt8(truncatingIfNeeded: vni >> 16), toByteOffset: 4, as: UInt8.self)
        into.storeBytes(of: UInt8(truncatingIfNeeded: vni >> 8), toByteOffset: 5, as: UInt8.self)
        into.storeBytes(of: UInt8(truncatingIfNeeded: vni), toByteOffset: 6, as: UInt8.self)
        into.storeBytes(of: 0, toByteOffset: 7, as: UInt8.self)
    }
    public static func vni(of datagram: UnsafeRawBufferPointer) -> UInt32? {
        guard datagram.count >= 8, datagram[0] & 0x08 != 0 else { return nil }
        return UInt32(datagram[4]) << 16 | UInt32(datagram[5]) << 8 | UInt32(datagram[6])
    }
}

public struct SegmentLayout: Sendable, Equatable {
    public var count: Int
    public var stride: Int
    public var length: Int
    public var lastLength: Int
}

public enum Segmentation {
    public static func layOut(frame: UnsafeRawBufferPointer, header: VirtioNetHeader, headroom: Int,
                              into output: UnsafeMutableRawBufferPointer) -> SegmentLayout? {
        guard !header.isGSO, header.flags & 1 == 0, headroom >= 0, headroom + frame.count <= output.count,
              let base = output.baseAddress, let source = frame.baseAddress else { return nil }
        base.initializeMemory(as: UInt8.self, repeating: 0, count: headroom)
        (base + headroom).copyMemory(from: source, byteCount: frame.count)
        return SegmentLayout(count: 1, stride: headroom + frame.count, length: headroom + frame.count,
                             lastLength: headroom + frame.count)
    }
    public static func checksum(_ bytes: UnsafeRawBufferPointer, initial: UInt32 = 0) -> UInt16 { 0 }
}

public enum NeighborResponder {
    public static func answer(_ frame: UnsafeRawBufferPointer, into reply: UnsafeMutableRawBufferPointer,
                              owner: (IPAddress) -> MACAddress?) -> Int? { nil }
}
