/// Device-independent feature bits (virtio 1.2, section 6), as masks.
public enum VirtioFeatures {
    /// VIRTIO_F_INDIRECT_DESC (28): descriptors may point to indirect tables.
    public static let indirectDescriptors: UInt64 = 1 << 28
    /// VIRTIO_F_EVENT_IDX (29): used_event / avail_event notification suppression.
    public static let eventIndex: UInt64 = 1 << 29
    /// VIRTIO_F_VERSION_1 (32): virtio 1.x (little-endian, modern layout).
    public static let version1: UInt64 = 1 << 32
    /// VIRTIO_F_ACCESS_PLATFORM (33).
    public static let accessPlatform: UInt64 = 1 << 33
    /// VIRTIO_F_RING_PACKED (34): not implemented here.
    public static let ringPacked: UInt64 = 1 << 34
    /// VIRTIO_F_IN_ORDER (35).
    public static let inOrder: UInt64 = 1 << 35
}

/// virtio-blk feature bits (virtio 1.2, 5.2.3), as masks.
public enum BlockFeatures {
    /// VIRTIO_BLK_F_SIZE_MAX (1): `size_max` is valid.
    public static let sizeMax: UInt64 = 1 << 1
    /// VIRTIO_BLK_F_SEG_MAX (2): `seg_max` is valid.
    public static let segMax: UInt64 = 1 << 2
    /// VIRTIO_BLK_F_GEOMETRY (4).
    public static let geometry: UInt64 = 1 << 4
    /// VIRTIO_BLK_F_RO (5): the device is read-only.
    public static let readOnly: UInt64 = 1 << 5
    /// VIRTIO_BLK_F_BLK_SIZE (6): `blk_size` is valid.
    public static let blockSize: UInt64 = 1 << 6
    /// VIRTIO_BLK_F_FLUSH (9): flush is supported.
    public static let flush: UInt64 = 1 << 9
    /// VIRTIO_BLK_F_TOPOLOGY (10).
    public static let topology: UInt64 = 1 << 10
    /// VIRTIO_BLK_F_CONFIG_WCE (11): `writeback` can be toggled.
    public static let configWCE: UInt64 = 1 << 11
    /// VIRTIO_BLK_F_MQ (12): `num_queues` is valid.
    public static let multiQueue: UInt64 = 1 << 12
    /// VIRTIO_BLK_F_DISCARD (13).
    public static let discard: UInt64 = 1 << 13
    /// VIRTIO_BLK_F_WRITE_ZEROES (14).
    public static let writeZeroes: UInt64 = 1 << 14
}

/// The virtio-blk device configuration space (struct virtio_blk_config, virtio 1.2, 5.2.4).
/// `bytes` serialises it little-endian at the specification's offsets.
public struct BlockConfig: Sendable, Equatable {
    /// Size of the configuration structure in bytes (through the zoned characteristics).
    public static let size = 96

    public var capacity: UInt64 = 0                 // @0, in 512-byte sectors
    public var sizeMax: UInt32 = 0                  // @8
    public var segMax: UInt32 = 0                   // @12
    public var cylinders: UInt16 = 0                // @16
    public var heads: UInt8 = 0                     // @18
    public var sectors: UInt8 = 0                   // @19
    public var blockSize: UInt32 = 512              // @20
    public var physicalBlockExponent: UInt8 = 0     // @24
    public var alignmentOffset: UInt8 = 0           // @25
    public var minIOSize: UInt16 = 0                // @26
    public var optimalIOSize: UInt32 = 0            // @28
    public var writeback: UInt8 = 0                 // @32
    public var numQueues: UInt16 = 1                // @34
    public var maxDiscardSectors: UInt32 = 0        // @36
    public var maxDiscardSegments: UInt32 = 0       // @40
    public var discardSectorAlignment: UInt32 = 0   // @44
    public var maxWriteZeroesSectors: UInt32 = 0    // @48
    public var maxWriteZeroesSegments: UInt32 = 0   // @52
    public var writeZeroesMayUnmap: UInt8 = 0       // @56
    public var maxSecureEraseSectors: UInt32 = 0    // @60
    public var maxSecureEraseSegments: UInt32 = 0   // @64
    public var secureEraseSectorAlignment: UInt32 = 0 // @68
    // @72...95: zoned characteristics, all zero (VIRTIO_BLK_F_ZONED is not offered).

    public init(capacity: UInt64 = 0) { self.capacity = capacity }

    /// The configuration space, `BlockConfig.size` little-endian bytes.
    public var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: BlockConfig.size)
        func put<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
            for i in 0..<MemoryLayout<T>.size { out[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
        }
        put(capacity, 0)
        put(sizeMax, 8)
        put(segMax, 12)
        put(cylinders, 16)
        put(heads, 18)
        put(sectors, 19)
        put(blockSize, 20)
        put(physicalBlockExponent, 24)
        put(alignmentOffset, 25)
        put(minIOSize, 26)
        put(optimalIOSize, 28)
        put(writeback, 32)
        put(numQueues, 34)
        put(maxDiscardSectors, 36)
        put(maxDiscardSegments, 40)
        put(discardSectorAlignment, 44)
        put(maxWriteZeroesSectors, 48)
        put(maxWriteZeroesSegments, 52)
        put(writeZeroesMayUnmap, 56)
        put(maxSecureEraseSectors, 60)
        put(maxSecureEraseSegments, 64)
        put(secureEraseSectorAlignment, 68)
        return out
    }

    /// `length` bytes of the configuration space from `offset` (vhost-user GET_CONFIG), zero-filled
    /// past its end; nil when the range overflows or starts beyond it.
    public func bytes(offset: Int, length: Int) -> [UInt8]? {
        guard offset >= 0, length >= 0, offset <= BlockConfig.size, length <= 4096 else { return nil }
        let all = bytes
        return (0..<length).map { offset + $0 < all.count ? all[offset + $0] : 0 }
    }
}
