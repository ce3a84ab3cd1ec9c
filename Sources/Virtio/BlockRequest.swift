/// virtio-blk request type (virtio 1.2, 5.2.6).
public enum BlockRequestType: Equatable, Sendable {
    /// VIRTIO_BLK_T_IN (0): read from the device into writable buffers.
    case read
    /// VIRTIO_BLK_T_OUT (1): write readable buffers to the device.
    case write
    /// VIRTIO_BLK_T_FLUSH (4).
    case flush
    /// VIRTIO_BLK_T_GET_ID (8): a 20-byte device id string.
    case getID
    /// VIRTIO_BLK_T_DISCARD (11).
    case discard
    /// VIRTIO_BLK_T_WRITE_ZEROES (13).
    case writeZeroes
    /// Any other type: answered with VIRTIO_BLK_S_UNSUPP.
    case unsupported(UInt32)

    @inlinable
    public init(rawValue: UInt32) {
        switch rawValue {
        case 0: self = .read
        case 1: self = .write
        case 4: self = .flush
        case 8: self = .getID
        case 11: self = .discard
        case 13: self = .writeZeroes
        default: self = .unsupported(rawValue)
        }
    }

    @inlinable
    public var rawValue: UInt32 {
        switch self {
        case .read: 0
        case .write: 1
        case .flush: 4
        case .getID: 8
        case .discard: 11
        case .writeZeroes: 13
        case .unsupported(let value): value
        }
    }
}

/// The status byte the device writes last (virtio 1.2, 5.2.6).
public enum BlockStatus: UInt8, Sendable {
    case ok = 0
    case ioError = 1
    case unsupported = 2
}

/// One range of a discard or write-zeroes request (struct virtio_blk_discard_write_zeroes).
public struct DiscardRange: Sendable, Equatable {
    /// Bit of `flags`: write-zeroes may deallocate (VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP).
    public static let unmap: UInt32 = 1

    public var sector: UInt64
    public var sectorCount: UInt32
    public var flags: UInt32

    @inlinable
    public init(sector: UInt64, sectorCount: UInt32, flags: UInt32 = 0) {
        self.sector = sector
        self.sectorCount = sectorCount
        self.flags = flags
    }
}

/// A parsed virtio-blk request. Its arrays are reused across `BlockRequestParser.parse` calls.
public struct BlockRequest: Sendable {
    /// A data buffer in guest memory, inside one region (checked by the chain walk).
    public struct Segment: Sendable, Equatable {
        public var address: UInt64
        public var length: UInt32

        @inlinable
        public init(address: UInt64, length: UInt32) {
            self.address = address
            self.length = length
        }
    }

    public var type: BlockRequestType
    /// The first 512-byte sector (read/write; unused by other types).
    public var sector: UInt64
    /// For read and getID: the writable data segments (without the status byte); for write: the
    /// readable data after the 16-byte header; empty for the other types.
    public var data: [Segment]
    /// For discard and write-zeroes: the parsed ranges.
    public var ranges: [DiscardRange]
    /// Guest address of the status byte: the last byte of the last writable buffer.
    public var statusAddress: UInt64
    /// Total bytes of `data`.
    public var dataLength: UInt64

    public init(capacity: Int = 16) {
        type = .flush
        sector = 0
        data = []
        data.reserveCapacity(capacity)
        ranges = []
        statusAddress = 0
        dataLength = 0
    }

    @inlinable
    mutating func reset() {
        type = .flush
        sector = 0
        data.removeAll(keepingCapacity: true)
        ranges.removeAll(keepingCapacity: true)
        statusAddress = 0
        dataLength = 0
    }
}

/// Why a chain is not a well-formed virtio-blk request.
public enum BlockRequestError: Error, Equatable, CustomStringConvertible {
    /// Fewer than 16 device-readable bytes: no request header.
    case missingHeader
    /// No device-writable byte: nowhere to put the status (the chain gets used length 0).
    case missingStatus
    /// The discard/write-zeroes payload is not a whole number of 16-byte ranges.
    case rangesMisaligned(length: UInt64)
    /// More discard/write-zeroes ranges than the parser accepts.
    case tooManyRanges(count: UInt64, limit: Int)

    /// The status to write for this error, or nil when there is no status byte.
    public var status: BlockStatus? {
        switch self {
        case .missingStatus: nil
        case .missingHeader, .rangesMisaligned: .ioError
        case .tooManyRanges: .unsupported
        }
    }

    public var description: String {
        switch self {
        case .missingHeader: "request has fewer than 16 device-readable bytes (no header)"
        case .missingStatus: "request has no device-writable byte for the status"
        case .rangesMisaligned(let l): "discard/write-zeroes payload of \(l) bytes is not a multiple of 16"
        case .tooManyRanges(let c, let limit): "request has \(c) discard/write-zeroes ranges, more than \(limit)"
        }
    }
}

/// Reads bytes in order across a run of segments: virtio does not let the device rely on how the
/// driver split the header and ranges across descriptors.
@usableFromInline
struct SegmentReader {
    @usableFromInline let memory: GuestMemory
    @usableFromInline var index: Int
    @usableFromInline var offset: UInt32

    @inlinable
    init(memory: GuestMemory, start: Int) {
        self.memory = memory
        index = start
        offset = 0
    }

    /// Reads `count` (<= 8) bytes as a little-endian integer; nil when the segments run out.
    @inlinable
    mutating func read(_ count: Int, from segments: ArraySlice<ChainSegment>) -> UInt64? {
        var value: UInt64 = 0
        var got = 0
        while got < count {
            guard index < segments.endIndex else { return nil }
            let segment = segments[index]
            let available = Int(segment.length &- offset)
            let take = min(available, count &- got)
            // The walk checked the whole segment lies in one region.
            guard let p = memory.pointer(at: segment.address &+ UInt64(offset), length: UInt64(take)) else {
                return nil
            }
            if take == 8 {
                value = UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
            } else {
                for i in 0..<take {
                    value |= UInt64(p.load(fromByteOffset: i, as: UInt8.self)) << (8 &* UInt64(got &+ i))
                }
            }
            got &+= take
            offset &+= UInt32(take)
            if offset == segment.length {
                index &+= 1
                offset = 0
            }
        }
        return value
    }
}

public enum BlockRequestParser {
    /// Parses the virtio-blk request in `chain` into `request` (its storage reused).
    ///
    /// The 16-byte header (type, reserved, sector) is read as a byte stream from the readable
    /// segments; the remaining readable bytes are the data (write) or the range array
    /// (discard/write-zeroes). The status byte is the last writable byte; the writable bytes
    /// before it are the data of read and getID.
    /// `request.statusAddress` is set before any error other than `missingStatus` is thrown, so the
    /// caller can write `error.status` there.
    @inlinable
    public static func parse(_ chain: DescriptorChain, memory: GuestMemory, into request: inout BlockRequest,
                             maxRanges: Int = 256) throws(BlockRequestError) {
        request.reset()
        let readable = chain.readable
        let writable = chain.writable
        guard let last = writable.last else { throw .missingStatus }
        // Walked segments are non-empty and inside memory, so this cannot underflow or overflow.
        request.statusAddress = last.address &+ UInt64(last.length &- 1)

        var reader = SegmentReader(memory: memory, start: readable.startIndex)
        guard chain.readableLength >= 16,
              let typeAndReserved = reader.read(8, from: readable),
              let sector = reader.read(8, from: readable)
        else { throw .missingHeader }
        request.type = BlockRequestType(rawValue: UInt32(truncatingIfNeeded: typeAndReserved))
        request.sector = sector
        let payloadLength = chain.readableLength &- 16

        switch request.type {
        case .read, .getID:
            let lastIndex = writable.endIndex &- 1
            for index in writable.indices {
                let segment = writable[index]
                let length = index == lastIndex ? segment.length &- 1 : segment.length
                if length == 0 { continue }
                request.data.append(BlockRequest.Segment(address: segment.address, length: length))
                // Descriptors may alias one buffer: the total is the guest's to inflate. Summed
                // with a check, although 32768 segments of 4 GiB cannot reach 2^64.
                let (total, overflow) = request.dataLength.addingReportingOverflow(UInt64(length))
                request.dataLength = overflow ? .max : total
            }
        case .write:
            var index = reader.index
            var offset = reader.offset
            while index < readable.endIndex {
                let segment = readable[index]
                let length = segment.length &- offset
                request.data.append(BlockRequest.Segment(address: segment.address &+ UInt64(offset), length: length))
                let (total, overflow) = request.dataLength.addingReportingOverflow(UInt64(length))
                request.dataLength = overflow ? .max : total
                index &+= 1
                offset = 0
            }
        case .discard, .writeZeroes:
            guard payloadLength % 16 == 0 else { throw .rangesMisaligned(length: payloadLength) }
            let count = payloadLength / 16
            guard count <= UInt64(maxRanges) else { throw .tooManyRanges(count: count, limit: maxRanges) }
            for _ in 0..<Int(count) {
                guard let sector = reader.read(8, from: readable),
                      let countAndFlags = reader.read(8, from: readable)
                else { throw .rangesMisaligned(length: payloadLength) }
                request.ranges.append(DiscardRange(sector: sector,
                                                   sectorCount: UInt32(truncatingIfNeeded: countAndFlags),
                                                   flags: UInt32(truncatingIfNeeded: countAndFlags >> 32)))
            }
        case .flush, .unsupported:
            break
        }
    }
}

/// What the device advertises about a volume, for `validate(_:limits:)`.
public struct BlockLimits: Sendable, Equatable {
    /// Volume size in 512-byte sectors.
    public var capacitySectors: UInt64
    /// Largest sector count of one discard range; 0: discard is not offered.
    public var maxDiscardSectors: UInt32
    /// Most ranges in one discard request.
    public var maxDiscardSegments: UInt32
    /// Largest sector count of one write-zeroes range; 0: write-zeroes is not offered.
    public var maxWriteZeroesSectors: UInt32
    /// Most ranges in one write-zeroes request.
    public var maxWriteZeroesSegments: UInt32
    /// VIRTIO_BLK_F_RO: writes, discards and write-zeroes fail with IOERR.
    public var readOnly: Bool
    /// Most data segments in one read or write request (`seg_max`); 0: no limit.
    public var segMax: UInt32
    /// Largest data segment of a read, write or getID request (`size_max`); 0: no limit.
    public var sizeMax: UInt32
    /// Largest total data of one read or write request: the device's own limit, whatever the
    /// descriptors add up to; 0: no limit.
    public var maxTransferBytes: UInt64

    public init(capacitySectors: UInt64, maxDiscardSectors: UInt32 = 0, maxDiscardSegments: UInt32 = 1,
                maxWriteZeroesSectors: UInt32 = 0, maxWriteZeroesSegments: UInt32 = 1,
                readOnly: Bool = false, segMax: UInt32 = 0, sizeMax: UInt32 = 0, maxTransferBytes: UInt64 = 0) {
        self.capacitySectors = capacitySectors
        self.maxDiscardSectors = maxDiscardSectors
        self.maxDiscardSegments = maxDiscardSegments
        self.maxWriteZeroesSectors = maxWriteZeroesSectors
        self.maxWriteZeroesSegments = maxWriteZeroesSegments
        self.readOnly = readOnly
        self.segMax = segMax
        self.sizeMax = sizeMax
        self.maxTransferBytes = maxTransferBytes
    }
}

/// Bytes per virtio-blk sector, whatever the volume's block size.
public let blockSectorSize: UInt64 = 512

/// Checks a parsed request against the volume and returns the status to complete it with when it
/// must not be executed, or `.ok` when it may be.
///
/// Read/write: data a multiple of 512 bytes, at most `segMax` segments of at most `sizeMax` bytes
/// each and `maxTransferBytes` in all, sector + length inside the volume (overflow-checked). Discard/write-zeroes: offered (max sectors non-zero, else UNSUPP),
/// at least one and at most the advertised number of ranges (else UNSUPP), no unknown flag and no
/// unmap flag on discard (UNSUPP, 5.2.6.2), each range within the per-range maximum and the
/// volume (IOERR). getID: a buffer of at least one byte. Read-only volumes: write, discard and
/// write-zeroes fail with IOERR; flush is allowed. Unknown types: UNSUPP.
@inlinable
public func validate(_ request: BlockRequest, limits: BlockLimits) -> BlockStatus {
    func inside(_ sector: UInt64, _ sectors: UInt64) -> Bool {
        let (end, overflow) = sector.addingReportingOverflow(sectors)
        return !overflow && end <= limits.capacitySectors
    }
    switch request.type {
    case .unsupported:
        return .unsupported
    case .flush:
        return .ok
    case .getID:
        return request.dataLength >= 1 ? .ok : .ioError
    case .read, .write:
        if request.type == .write, limits.readOnly { return .ioError }
        guard request.dataLength % blockSectorSize == 0 else { return .ioError }
        if limits.segMax != 0, request.data.count > Int(limits.segMax) { return .ioError }
        if limits.maxTransferBytes != 0, request.dataLength > limits.maxTransferBytes { return .ioError }
        if limits.sizeMax != 0 {
            for segment in request.data where segment.length > limits.sizeMax { return .ioError }
        }
        return inside(request.sector, request.dataLength / blockSectorSize) ? .ok : .ioError
    case .discard, .writeZeroes:
        let isDiscard = request.type == .discard
        let maxSectors = isDiscard ? limits.maxDiscardSectors : limits.maxWriteZeroesSectors
        let maxSegments = isDiscard ? limits.maxDiscardSegments : limits.maxWriteZeroesSegments
        guard maxSectors != 0 else { return .unsupported }
        if limits.readOnly { return .ioError }
        guard !request.ranges.isEmpty, request.ranges.count <= Int(maxSegments) else { return .unsupported }
        let allowedFlags: UInt32 = isDiscard ? 0 : DiscardRange.unmap
        for range in request.ranges {
            guard range.flags & ~allowedFlags == 0 else { return .unsupported }
            guard range.sectorCount <= maxSectors, inside(range.sector, UInt64(range.sectorCount)) else {
                return .ioError
            }
        }
        return .ok
    }
}
