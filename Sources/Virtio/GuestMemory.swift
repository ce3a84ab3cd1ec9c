/// One contiguous range of guest-physical memory mapped into this process.
public struct GuestMemoryRegion: @unchecked Sendable, Equatable {
    // @unchecked Sendable: an immutable description of a mapping; see `GuestMemory`.
    /// Guest-physical address of the first byte.
    public let guestAddress: UInt64
    /// Length in bytes (non-zero).
    public let size: UInt64
    /// Where the first byte is mapped in this process.
    public let host: UnsafeMutableRawPointer

    public init(guestAddress: UInt64, size: UInt64, host: UnsafeMutableRawPointer) {
        self.guestAddress = guestAddress
        self.size = size
        self.host = host
    }
}

/// A guest's memory as a device backend sees it: a few mapped regions, and bounds-checked
/// translation from guest-physical ranges to host pointers.
///
/// Nothing here owns the mappings: whoever mapped them (the vhost-user connection) keeps them
/// alive for as long as any `GuestMemory` that refers to them is in use. The guest may change
/// this memory at any time, so callers copy what they read once and validate the copy.
public struct GuestMemory: @unchecked Sendable {
    // @unchecked Sendable: the struct itself is immutable; the memory it points to is shared
    // with the guest by design and only accessed through copies.

    public enum LayoutError: Error, Equatable, CustomStringConvertible {
        case emptyRegion(guestAddress: UInt64)
        case regionWrapsAround(guestAddress: UInt64, size: UInt64)
        case regionsOverlap(UInt64, UInt64)

        public var description: String {
            switch self {
            case .emptyRegion(let a): "guest memory region at 0x\(String(a, radix: 16)) has size 0"
            case .regionWrapsAround(let a, let s):
                "guest memory region at 0x\(String(a, radix: 16)) of size 0x\(String(s, radix: 16)) wraps around the address space"
            case .regionsOverlap(let a, let b):
                "guest memory regions at 0x\(String(a, radix: 16)) and 0x\(String(b, radix: 16)) overlap"
            }
        }
    }

    /// Sorted by guest address, non-overlapping.
    public let regions: [GuestMemoryRegion]

    /// Validates and sorts the regions: non-empty, no wrap-around, no overlaps.
    public init(regions: [GuestMemoryRegion]) throws(LayoutError) {
        let sorted = regions.sorted { $0.guestAddress < $1.guestAddress }
        for region in sorted {
            if region.size == 0 { throw .emptyRegion(guestAddress: region.guestAddress) }
            if region.guestAddress.addingReportingOverflow(region.size - 1).overflow {
                throw .regionWrapsAround(guestAddress: region.guestAddress, size: region.size)
            }
        }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.guestAddress + (a.size - 1) >= b.guestAddress {
            throw .regionsOverlap(a.guestAddress, b.guestAddress)
        }
        self.regions = sorted
    }

    /// An empty memory: every translation fails.
    public init() { regions = [] }

    /// The host pointer for `length` bytes at guest-physical `address`, when the whole range lies
    /// inside one region; nil otherwise (including when `address + length` overflows).
    /// A zero `length` is valid at any address inside a region.
    @inlinable
    public func pointer(at address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        for region in regions {
            guard address >= region.guestAddress else { continue }
            let offset = address &- region.guestAddress
            guard offset < region.size, length <= region.size &- offset else { continue }
            return region.host.advanced(by: Int(offset))
        }
        return nil
    }

    /// Copies a little-endian integer out of guest memory; nil when it is not inside a region.
    @inlinable
    public func load<T: FixedWidthInteger>(_: T.Type, at address: UInt64) -> T? {
        guard let p = pointer(at: address, length: UInt64(MemoryLayout<T>.size)) else { return nil }
        return T(littleEndian: p.loadUnaligned(as: T.self))
    }

    /// Stores a little-endian integer into guest memory; false when it is not inside a region.
    @inlinable @discardableResult
    public func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) -> Bool {
        guard let p = pointer(at: address, length: UInt64(MemoryLayout<T>.size)) else { return false }
        p.storeBytes(of: value.littleEndian, as: T.self)
        return true
    }
}
