/// virtio-net feature bits (virtio 1.2, 5.1.3), as masks.
public enum NetFeatures {
    /// VIRTIO_NET_F_CSUM (0): the device takes frames with a partial checksum (NEEDS_CSUM).
    public static let csum: UInt64 = 1 << 0
    /// VIRTIO_NET_F_GUEST_CSUM (1): the driver takes frames with a partial checksum.
    public static let guestCsum: UInt64 = 1 << 1
    /// VIRTIO_NET_F_MTU (3): `mtu` in the config space is valid.
    public static let mtu: UInt64 = 1 << 3
    /// VIRTIO_NET_F_MAC (5): `mac` in the config space is valid.
    public static let mac: UInt64 = 1 << 5
    /// VIRTIO_NET_F_GUEST_TSO4 (7), GUEST_TSO6 (8): the driver takes TCP GSO frames.
    public static let guestTSO4: UInt64 = 1 << 7
    public static let guestTSO6: UInt64 = 1 << 8
    /// VIRTIO_NET_F_GUEST_ECN (9): the driver takes TSO frames with the ECN bit.
    public static let guestECN: UInt64 = 1 << 9
    /// VIRTIO_NET_F_HOST_TSO4 (11), HOST_TSO6 (12): the device takes TCP GSO frames.
    public static let hostTSO4: UInt64 = 1 << 11
    public static let hostTSO6: UInt64 = 1 << 12
    /// VIRTIO_NET_F_HOST_ECN (13): the device takes TSO frames with the ECN bit.
    public static let hostECN: UInt64 = 1 << 13
    /// VIRTIO_NET_F_MRG_RXBUF (15): a received frame may span several receive buffers.
    public static let mergeableRxBuffers: UInt64 = 1 << 15
    /// VIRTIO_NET_F_STATUS (16): `status` in the config space is valid.
    public static let status: UInt64 = 1 << 16
    /// VIRTIO_NET_F_CTRL_VQ (17): a control queue (served by the frontend over vhost-user).
    public static let controlQueue: UInt64 = 1 << 17
    /// VIRTIO_NET_F_MQ (22): several receive/transmit queue pairs.
    public static let multiQueue: UInt64 = 1 << 22
}

/// The virtio-net configuration space (virtio 1.2, 5.1.4), as far as a device here fills it.
public struct NetConfig: Sendable, Equatable {
    /// VIRTIO_NET_S_LINK_UP.
    public static let linkUp: UInt16 = 1

    public var mac: [UInt8]
    public var status: UInt16
    public var maxQueuePairs: UInt16
    public var mtu: UInt16

    public init(mac: [UInt8], status: UInt16 = NetConfig.linkUp, maxQueuePairs: UInt16 = 1, mtu: UInt16 = 1500) {
        self.mac = Array((mac + [UInt8](repeating: 0, count: 6)).prefix(6))
        self.status = status
        self.maxQueuePairs = maxQueuePairs
        self.mtu = mtu
    }

    /// mac[6], status, max_virtqueue_pairs, mtu (little-endian), speed (-1: unknown), duplex
    /// (0xff: unknown): 17 bytes, padded to 24.
    public var bytes: [UInt8] {
        var out = mac
        for value in [status, maxQueuePairs, mtu] { out += [UInt8(truncatingIfNeeded: value), UInt8(value >> 8)] }
        out += [0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
        out += [UInt8](repeating: 0, count: 24 - out.count)
        return out
    }

    /// Reads the fields back from config-space bytes (for frontends); nil when too short.
    public init?(bytes: [UInt8]) {
        guard bytes.count >= 12 else { return nil }
        func u16(_ at: Int) -> UInt16 { UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8 }
        self.init(mac: Array(bytes[0..<6]), status: u16(6), maxQueuePairs: u16(8), mtu: u16(10))
    }
}
