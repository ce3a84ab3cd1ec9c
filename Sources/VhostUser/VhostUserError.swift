// The codec's and the backend's protocol errors. Pure Swift (no HostOS, no Logging) so the
// fuzzer compiles it together with Message.swift.

/// A vhost-user message or request that breaks the protocol: what was wrong, in which request,
/// and what was expected instead.
public enum VhostUserError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Fewer than the 12 header bytes.
    case truncatedHeader(got: Int)
    /// The header's request number names no request this side knows.
    case unknownRequest(UInt32)
    /// A known request this implementation does not handle (or whose feature was not negotiated).
    case unsupportedRequest(VhostUserRequest)
    /// Flags with the wrong version, or reply/need-reply bits in the wrong direction, or unknown bits.
    case badFlags(VhostUserRequest, flags: UInt32)
    /// The header's payload size exceeds the protocol's limit; rejected before reading.
    case payloadTooLarge(UInt32, limit: Int)
    /// The header's size field and the bytes that came with it differ.
    case lengthMismatch(VhostUserRequest, header: Int, got: Int)
    /// The payload size is not what the request needs.
    case payloadSize(VhostUserRequest, expected: String, got: Int)
    /// The number of file descriptors is not what the request needs.
    case descriptorCount(VhostUserRequest, expected: Int, got: Int)
    /// More file descriptors arrived with one message (counted over all of its pieces) than its
    /// request carries, or, while the header is incomplete (request nil), than any message
    /// carries; `received` is a lower bound when the kernel had to drop the excess (MSG_CTRUNC).
    case excessDescriptors(VhostUserRequest?, allowed: Int, received: Int)
    /// A memory table with no regions or more than 8.
    case regionCount(VhostUserRequest, Int)
    /// Region `index` has size 0.
    case emptyRegion(VhostUserRequest, index: Int)
    /// Region `index`'s `field` + size overflows 64 bits.
    case regionOverflow(VhostUserRequest, index: Int, field: String)
    /// A config access outside the 256-byte config space.
    case configRange(VhostUserRequest, offset: UInt32, size: UInt32)
    /// Bits set that the request leaves reserved.
    case reservedBits(VhostUserRequest, value: UInt64)
    /// A reply to a different request than the one sent.
    case unexpectedReply(expected: VhostUserRequest, got: UInt32)

    // Checked by the backend against its state and its device.
    /// A queue index not below the device's queue count.
    case queueIndex(VhostUserRequest, index: UInt32, queueCount: Int)
    /// A queue size that is zero, not a power of two, or above the device's maximum.
    case queueSize(index: UInt32, size: UInt32, maximum: UInt16)
    /// A ring base above 0xffff.
    case queueBase(index: UInt32, base: UInt32)
    /// Feature bits the frontend set that were not offered.
    case featuresNotOffered(VhostUserRequest, requested: UInt64, offered: UInt64)
    /// A ring address that no memory-table region maps (or no table yet).
    case unmappedAddress(VhostUserRequest, what: String, address: UInt64)
    /// A kick or call descriptor that is not an eventfd (a pipe, a socket, a regular file).
    case notAnEventFD(VhostUserRequest, index: UInt32)
    /// The memory table could not be mapped or is inconsistent.
    case memoryTable(String)
    /// The device refused to start a queue.
    case device(String)

    private static func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

    public var description: String {
        switch self {
        case .truncatedHeader(let got):
            "truncated header: \(got) of 12 bytes"
        case .unknownRequest(let r):
            "unknown request \(r)"
        case .unsupportedRequest(let r):
            "\(r) is not supported"
        case .badFlags(let r, let flags):
            "\(r): bad flags 0x\(String(flags, radix: 16)) (expected version 1, only REPLY/NEED_REPLY as the direction allows)"
        case .payloadTooLarge(let size, let limit):
            "payload size \(size) exceeds the limit of \(limit) bytes"
        case .lengthMismatch(let r, let header, let got):
            "\(r): header says \(header) payload bytes, got \(got)"
        case .payloadSize(let r, let expected, let got):
            "\(r): payload size \(got), expected \(expected)"
        case .descriptorCount(let r, let expected, let got):
            "\(r): \(got) file descriptors, expected \(expected)"
        case .excessDescriptors(let r?, let allowed, let received):
            "\(r): at least \(received) file descriptors in one message, the request carries at most \(allowed)"
        case .excessDescriptors(nil, let allowed, let received):
            "message header: at least \(received) file descriptors before the request was known, no message carries more than \(allowed)"
        case .regionCount(let r, let n):
            "\(r): \(n) memory regions, expected 1...8"
        case .emptyRegion(let r, let index):
            "\(r): region \(index) has size 0"
        case .regionOverflow(let r, let index, let field):
            "\(r): region \(index): \(field) + memory_size overflows 64 bits"
        case .configRange(let r, let offset, let size):
            "\(r): config offset \(offset) + size \(size) exceeds the 256-byte config space"
        case .reservedBits(let r, let value):
            "\(r): reserved bits set in \(VhostUserError.hex(value))"
        case .unexpectedReply(let expected, let got):
            "reply to request \(got), expected a reply to \(expected)"
        case .queueIndex(let r, let index, let count):
            "\(r): queue index \(index), the device has \(count) queues"
        case .queueSize(let index, let size, let maximum):
            "SET_VRING_NUM: queue \(index) size \(size) is not a power of two in 1...\(maximum)"
        case .queueBase(let index, let base):
            "SET_VRING_BASE: queue \(index) base \(base) exceeds 0xffff"
        case .featuresNotOffered(let r, let requested, let offered):
            "\(r): features \(VhostUserError.hex(requested)) include bits not offered (\(VhostUserError.hex(requested & ~offered))); offered \(VhostUserError.hex(offered))"
        case .unmappedAddress(let r, let what, let address):
            "\(r): \(what) address \(VhostUserError.hex(address)) is not in any memory-table region"
        case .notAnEventFD(let r, let index):
            "\(r): queue \(index): the descriptor is not an eventfd"
        case .memoryTable(let reason):
            "SET_MEM_TABLE: \(reason)"
        case .device(let reason):
            "device: \(reason)"
        }
    }
}
