// The vhost-user message codec (QEMU docs/interop/vhost-user.rst): pure Swift, no syscalls, so it
// is fuzzed on its own (Fuzz/run.sh vhostuser compiles this file and VhostUserError.swift).
//
// A message is a 12-byte header (request u32, flags u32, size u32, little-endian) and `size`
// payload bytes; file descriptors travel as SCM_RIGHTS with the message's first byte.

/// The requests a frontend sends to a backend (the "front-end message types").
public enum VhostUserRequest: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case getFeatures = 1
    case setFeatures = 2
    case setOwner = 3
    case resetOwner = 4
    case setMemTable = 5
    case setLogBase = 6
    case setLogFD = 7
    case setVringNum = 8
    case setVringAddr = 9
    case setVringBase = 10
    case getVringBase = 11
    case setVringKick = 12
    case setVringCall = 13
    case setVringErr = 14
    case getProtocolFeatures = 15
    case setProtocolFeatures = 16
    case getQueueNum = 17
    case setVringEnable = 18
    case sendRARP = 19
    case netSetMTU = 20
    case setBackendRequestFD = 21
    case iotlbMessage = 22
    case setVringEndian = 23
    case getConfig = 24
    case setConfig = 25
    case createCryptoSession = 26
    case closeCryptoSession = 27
    case postcopyAdvise = 28
    case postcopyListen = 29
    case postcopyEnd = 30
    case getInflightFD = 31
    case setInflightFD = 32
    case gpuSetSocket = 33
    case resetDevice = 34
    case vringKick = 35
    case getMaxMemSlots = 36
    case addMemReg = 37
    case remMemReg = 38
    case setStatus = 39
    case getStatus = 40
    case getSharedObject = 41
    case setDeviceStateFD = 42
    case checkDeviceState = 43

    /// The specification's name, e.g. `SET_MEM_TABLE`.
    public var description: String {
        switch self {
        case .getFeatures: "GET_FEATURES"
        case .setFeatures: "SET_FEATURES"
        case .setOwner: "SET_OWNER"
        case .resetOwner: "RESET_OWNER"
        case .setMemTable: "SET_MEM_TABLE"
        case .setLogBase: "SET_LOG_BASE"
        case .setLogFD: "SET_LOG_FD"
        case .setVringNum: "SET_VRING_NUM"
        case .setVringAddr: "SET_VRING_ADDR"
        case .setVringBase: "SET_VRING_BASE"
        case .getVringBase: "GET_VRING_BASE"
        case .setVringKick: "SET_VRING_KICK"
        case .setVringCall: "SET_VRING_CALL"
        case .setVringErr: "SET_VRING_ERR"
        case .getProtocolFeatures: "GET_PROTOCOL_FEATURES"
        case .setProtocolFeatures: "SET_PROTOCOL_FEATURES"
        case .getQueueNum: "GET_QUEUE_NUM"
        case .setVringEnable: "SET_VRING_ENABLE"
        case .sendRARP: "SEND_RARP"
        case .netSetMTU: "NET_SET_MTU"
        case .setBackendRequestFD: "SET_BACKEND_REQ_FD"
        case .iotlbMessage: "IOTLB_MSG"
        case .setVringEndian: "SET_VRING_ENDIAN"
        case .getConfig: "GET_CONFIG"
        case .setConfig: "SET_CONFIG"
        case .createCryptoSession: "CREATE_CRYPTO_SESSION"
        case .closeCryptoSession: "CLOSE_CRYPTO_SESSION"
        case .postcopyAdvise: "POSTCOPY_ADVISE"
        case .postcopyListen: "POSTCOPY_LISTEN"
        case .postcopyEnd: "POSTCOPY_END"
        case .getInflightFD: "GET_INFLIGHT_FD"
        case .setInflightFD: "SET_INFLIGHT_FD"
        case .gpuSetSocket: "GPU_SET_SOCKET"
        case .resetDevice: "RESET_DEVICE"
        case .vringKick: "VRING_KICK"
        case .getMaxMemSlots: "GET_MAX_MEM_SLOTS"
        case .addMemReg: "ADD_MEM_REG"
        case .remMemReg: "REM_MEM_REG"
        case .setStatus: "SET_STATUS"
        case .getStatus: "GET_STATUS"
        case .getSharedObject: "GET_SHARED_OBJECT"
        case .setDeviceStateFD: "SET_DEVICE_STATE_FD"
        case .checkDeviceState: "CHECK_DEVICE_STATE"
        }
    }

    /// Whether the backend answers this request with a payload of its own (rather than only
    /// with a REPLY_ACK when asked).
    public var hasReply: Bool {
        switch self {
        case .getFeatures, .getProtocolFeatures, .getQueueNum, .getVringBase, .getConfig,
             .getInflightFD, .getMaxMemSlots, .getStatus:
            true
        default:
            false
        }
    }
}

/// The 12-byte message header.
public struct VhostUserHeader: Equatable, Sendable {
    public static let size = 12
    /// The largest payload this implementation accepts; larger size fields are rejected before
    /// any payload byte is read.
    public static let maximumPayloadSize = 4096

    /// Protocol version 1, in flag bits 0-1.
    public static let version: UInt32 = 0x1
    public static let versionMask: UInt32 = 0x3
    /// Set on every backend-to-frontend reply.
    public static let replyFlag: UInt32 = 0x4
    /// The frontend asks for a REPLY_ACK.
    public static let needReplyFlag: UInt32 = 0x8

    public var request: UInt32
    public var flags: UInt32
    public var size: UInt32

    public init(request: UInt32, flags: UInt32, size: UInt32) {
        self.request = request
        self.flags = flags
        self.size = size
    }

    /// Parses the first 12 bytes of `bytes`. Throws `truncatedHeader` for fewer bytes and
    /// `payloadTooLarge` for a size field above `maximumPayloadSize`.
    public init(decoding bytes: [UInt8]) throws(VhostUserError) {
        guard bytes.count >= VhostUserHeader.size else { throw .truncatedHeader(got: bytes.count) }
        var reader = ByteReader(bytes, from: 0)
        request = reader.u32()
        flags = reader.u32()
        size = reader.u32()
        guard size <= VhostUserHeader.maximumPayloadSize else {
            throw .payloadTooLarge(size, limit: VhostUserHeader.maximumPayloadSize)
        }
    }

    public func encode(into bytes: inout [UInt8]) {
        bytes.appendLittleEndian(request)
        bytes.appendLittleEndian(flags)
        bytes.appendLittleEndian(size)
    }
}

/// `struct vhost_vring_state`: a queue index and a number (size, base, enable).
public struct VhostVringState: Equatable, Sendable {
    public var index: UInt32
    public var num: UInt32
    public init(index: UInt32, num: UInt32) { self.index = index; self.num = num }
    static let size = 8
}

/// `struct vhost_vring_addr`: where a split ring's parts are, in the frontend's address space.
public struct VhostVringAddress: Equatable, Sendable {
    public var index: UInt32
    /// Bit 0: VHOST_VRING_F_LOG (log used-ring writes to `log`).
    public var flags: UInt32
    public var descriptorTable: UInt64
    public var usedRing: UInt64
    public var availableRing: UInt64
    public var log: UInt64

    public init(index: UInt32, flags: UInt32 = 0, descriptorTable: UInt64, usedRing: UInt64, availableRing: UInt64, log: UInt64 = 0) {
        self.index = index
        self.flags = flags
        self.descriptorTable = descriptorTable
        self.usedRing = usedRing
        self.availableRing = availableRing
        self.log = log
    }
    static let size = 40
}

/// The u64 of SET_VRING_KICK / CALL / ERR: a queue index in bits 0-7 and bit 8 set when no
/// file descriptor comes with the message (the frontend will poll or not signal instead).
public struct VhostVringFile: Equatable, Sendable {
    public static let noDescriptorFlag: UInt64 = 0x100
    public var index: UInt32
    public var noDescriptor: Bool
    public init(index: UInt32, noDescriptor: Bool = false) { self.index = index; self.noDescriptor = noDescriptor }
    var rawValue: UInt64 { UInt64(index & 0xff) | (noDescriptor ? VhostVringFile.noDescriptorFlag : 0) }
}

/// One region of a memory table: guest-physical range, where the frontend has it mapped, and
/// where it starts in the file descriptor that comes with it.
public struct VhostMemoryRegion: Equatable, Sendable {
    public var guestAddress: UInt64
    public var size: UInt64
    public var userAddress: UInt64
    public var mmapOffset: UInt64

    public init(guestAddress: UInt64, size: UInt64, userAddress: UInt64, mmapOffset: UInt64) {
        self.guestAddress = guestAddress
        self.size = size
        self.userAddress = userAddress
        self.mmapOffset = mmapOffset
    }
    static let size = 32
}

/// SET_MEM_TABLE's payload: 1 to 8 regions, one file descriptor each.
public struct VhostMemoryTable: Equatable, Sendable {
    public static let maximumRegions = 8
    public var regions: [VhostMemoryRegion]
    public init(regions: [VhostMemoryRegion]) { self.regions = regions }

    /// The guest-physical address of frontend address `userAddress`; nil when no region maps it.
    public func guestAddress(ofUserAddress userAddress: UInt64) -> UInt64? {
        for region in regions where userAddress >= region.userAddress && userAddress - region.userAddress < region.size {
            let (guest, overflow) = region.guestAddress.addingReportingOverflow(userAddress - region.userAddress)
            return overflow ? nil : guest
        }
        return nil
    }
}

/// SET_LOG_BASE's payload.
public struct VhostLogArea: Equatable, Sendable {
    public var mmapSize: UInt64
    public var mmapOffset: UInt64
    public init(mmapSize: UInt64, mmapOffset: UInt64) { self.mmapSize = mmapSize; self.mmapOffset = mmapOffset }
    static let size = 16
}

/// GET_CONFIG / SET_CONFIG: a window of the device's config space.
public struct VhostConfigSpace: Equatable, Sendable {
    public static let maximumSize = 256
    static let headerSize = 12
    public var offset: UInt32
    /// VHOST_SET_CONFIG_TYPE_FRONTEND (0) or MIGRATION (1).
    public var flags: UInt32
    /// `size` bytes: the values (SET_CONFIG, GET_CONFIG's reply) or zeros (GET_CONFIG's request).
    public var bytes: [UInt8]
    public init(offset: UInt32, flags: UInt32 = 0, bytes: [UInt8]) { self.offset = offset; self.flags = flags; self.bytes = bytes }
}

/// GET_INFLIGHT_FD / SET_INFLIGHT_FD.
public struct VhostInflightArea: Equatable, Sendable {
    public var mmapSize: UInt64
    public var mmapOffset: UInt64
    public var queueCount: UInt16
    public var queueSize: UInt16
    public init(mmapSize: UInt64, mmapOffset: UInt64, queueCount: UInt16, queueSize: UInt16) {
        self.mmapSize = mmapSize
        self.mmapOffset = mmapOffset
        self.queueCount = queueCount
        self.queueSize = queueSize
    }
    /// The C struct has 4 bytes of tail padding.
    static let size = 24
}

/// A decoded payload.
public enum VhostUserPayload: Equatable, Sendable {
    case empty
    case u64(UInt64)
    case vringState(VhostVringState)
    case vringAddress(VhostVringAddress)
    case vringFile(VhostVringFile)
    case memoryTable(VhostMemoryTable)
    /// ADD_MEM_REG / REM_MEM_REG (8 bytes of padding, then one region).
    case memoryRegion(VhostMemoryRegion)
    case log(VhostLogArea)
    case config(VhostConfigSpace)
    case inflight(VhostInflightArea)

    func encode(into bytes: inout [UInt8]) {
        switch self {
        case .empty: break
        case .u64(let v): bytes.appendLittleEndian(v)
        case .vringState(let s):
            bytes.appendLittleEndian(s.index)
            bytes.appendLittleEndian(s.num)
        case .vringAddress(let a):
            bytes.appendLittleEndian(a.index)
            bytes.appendLittleEndian(a.flags)
            bytes.appendLittleEndian(a.descriptorTable)
            bytes.appendLittleEndian(a.usedRing)
            bytes.appendLittleEndian(a.availableRing)
            bytes.appendLittleEndian(a.log)
        case .vringFile(let f): bytes.appendLittleEndian(f.rawValue)
        case .memoryTable(let t):
            bytes.appendLittleEndian(UInt32(truncatingIfNeeded: t.regions.count))
            bytes.appendLittleEndian(UInt32(0))
            for region in t.regions { region.encode(into: &bytes) }
        case .memoryRegion(let r):
            bytes.appendLittleEndian(UInt64(0))
            r.encode(into: &bytes)
        case .log(let l):
            bytes.appendLittleEndian(l.mmapSize)
            bytes.appendLittleEndian(l.mmapOffset)
        case .config(let c):
            bytes.appendLittleEndian(c.offset)
            bytes.appendLittleEndian(UInt32(truncatingIfNeeded: c.bytes.count))
            bytes.appendLittleEndian(c.flags)
            bytes += c.bytes
        case .inflight(let i):
            bytes.appendLittleEndian(i.mmapSize)
            bytes.appendLittleEndian(i.mmapOffset)
            bytes.appendLittleEndian(i.queueCount)
            bytes.appendLittleEndian(i.queueSize)
            bytes.appendLittleEndian(UInt32(0))
        }
    }
}

extension VhostMemoryRegion {
    func encode(into bytes: inout [UInt8]) {
        bytes.appendLittleEndian(guestAddress)
        bytes.appendLittleEndian(size)
        bytes.appendLittleEndian(userAddress)
        bytes.appendLittleEndian(mmapOffset)
    }
}

/// One vhost-user message, either direction.
public struct VhostUserMessage: Equatable, Sendable {
    /// Which way a message travels: decoding depends on it (a reply's payload is the answer to
    /// the request, or a REPLY_ACK u64).
    public enum Direction: Equatable, Sendable {
        case request
        case reply(to: VhostUserRequest)
    }

    public var request: VhostUserRequest
    public var flags: UInt32
    public var payload: VhostUserPayload

    public init(request: VhostUserRequest, flags: UInt32 = VhostUserHeader.version, payload: VhostUserPayload = .empty) {
        self.request = request
        self.flags = flags
        self.payload = payload
    }

    /// A frontend request, asking for a REPLY_ACK when `needReply`.
    public static func request(_ request: VhostUserRequest, _ payload: VhostUserPayload = .empty, needReply: Bool = false) -> VhostUserMessage {
        VhostUserMessage(request: request, flags: VhostUserHeader.version | (needReply ? VhostUserHeader.needReplyFlag : 0), payload: payload)
    }

    /// A backend reply to `request`.
    public static func reply(to request: VhostUserRequest, _ payload: VhostUserPayload) -> VhostUserMessage {
        VhostUserMessage(request: request, flags: VhostUserHeader.version | VhostUserHeader.replyFlag, payload: payload)
    }

    public var needsReply: Bool { flags & VhostUserHeader.needReplyFlag != 0 }
    public var isReply: Bool { flags & VhostUserHeader.replyFlag != 0 }

    /// Header and payload, with the header's size computed from the payload. No validation:
    /// what is encoded is what is sent.
    public func encode() -> [UInt8] {
        var payloadBytes: [UInt8] = []
        payload.encode(into: &payloadBytes)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(VhostUserHeader.size + payloadBytes.count)
        VhostUserHeader(request: request.rawValue, flags: flags, size: UInt32(truncatingIfNeeded: payloadBytes.count)).encode(into: &bytes)
        return bytes + payloadBytes
    }

    /// Decodes and validates one whole message (header and exactly `size` payload bytes) that
    /// arrived with `descriptorCount` file descriptors: the payload size and the descriptor
    /// count must be exactly what the request needs, memory tables must have 1...8 non-empty
    /// regions whose ends do not overflow, and config windows must lie inside 256 bytes.
    public static func decode(_ bytes: [UInt8], descriptorCount: Int, direction: Direction = .request) throws(VhostUserError) -> VhostUserMessage {
        let header = try VhostUserHeader(decoding: bytes)
        guard let request = VhostUserRequest(rawValue: header.request) else { throw .unknownRequest(header.request) }
        let payloadCount = bytes.count - VhostUserHeader.size
        guard payloadCount == Int(header.size) else {
            throw .lengthMismatch(request, header: Int(header.size), got: payloadCount)
        }
        let layout: Layout
        switch direction {
        case .request:
            guard header.flags & ~(VhostUserHeader.versionMask | VhostUserHeader.needReplyFlag) == 0,
                  header.flags & VhostUserHeader.versionMask == VhostUserHeader.version
            else { throw .badFlags(request, flags: header.flags) }
            guard let l = Layout.ofRequest(request) else { throw .unsupportedRequest(request) }
            layout = l
        case .reply(let sent):
            guard request == sent else { throw .unexpectedReply(expected: sent, got: header.request) }
            guard header.flags == VhostUserHeader.version | VhostUserHeader.replyFlag else {
                throw .badFlags(request, flags: header.flags)
            }
            layout = Layout.ofReply(request)
        }
        var reader = ByteReader(bytes, from: VhostUserHeader.size)
        let payload: VhostUserPayload
        var expectedDescriptors = layout.descriptors
        func size(_ expected: Int) throws(VhostUserError) {
            guard payloadCount == expected else { throw .payloadSize(request, expected: "\(expected)", got: payloadCount) }
        }
        switch layout.shape {
        case .empty:
            try size(0)
            payload = .empty
        case .u64:
            try size(8)
            payload = .u64(reader.u64())
        case .vringState:
            try size(VhostVringState.size)
            payload = .vringState(VhostVringState(index: reader.u32(), num: reader.u32()))
        case .vringAddress:
            try size(VhostVringAddress.size)
            payload = .vringAddress(VhostVringAddress(
                index: reader.u32(), flags: reader.u32(), descriptorTable: reader.u64(),
                usedRing: reader.u64(), availableRing: reader.u64(), log: reader.u64()))
        case .vringFile:
            try size(8)
            let value = reader.u64()
            guard value & ~(0xff | VhostVringFile.noDescriptorFlag) == 0 else { throw .reservedBits(request, value: value) }
            let file = VhostVringFile(index: UInt32(value & 0xff), noDescriptor: value & VhostVringFile.noDescriptorFlag != 0)
            expectedDescriptors = file.noDescriptor ? 0 : 1
            payload = .vringFile(file)
        case .memoryTable:
            guard payloadCount >= 8 else { throw .payloadSize(request, expected: "8 + 32 * nregions", got: payloadCount) }
            let count = Int(reader.u32())
            _ = reader.u32()  // padding
            guard (1...VhostMemoryTable.maximumRegions).contains(count) else { throw .regionCount(request, count) }
            try size(8 + VhostMemoryRegion.size * count)
            var regions: [VhostMemoryRegion] = []
            regions.reserveCapacity(count)
            for index in 0..<count {
                let region = VhostMemoryRegion(guestAddress: reader.u64(), size: reader.u64(), userAddress: reader.u64(), mmapOffset: reader.u64())
                try region.validate(request, index: index)
                regions.append(region)
            }
            expectedDescriptors = count
            payload = .memoryTable(VhostMemoryTable(regions: regions))
        case .memoryRegion:
            try size(8 + VhostMemoryRegion.size)
            _ = reader.u64()  // padding
            let region = VhostMemoryRegion(guestAddress: reader.u64(), size: reader.u64(), userAddress: reader.u64(), mmapOffset: reader.u64())
            try region.validate(request, index: 0)
            payload = .memoryRegion(region)
        case .log:
            try size(VhostLogArea.size)
            payload = .log(VhostLogArea(mmapSize: reader.u64(), mmapOffset: reader.u64()))
        case .config:
            guard payloadCount >= VhostConfigSpace.headerSize else {
                throw .payloadSize(request, expected: "12 + size", got: payloadCount)
            }
            let offset = reader.u32()
            let configSize = reader.u32()
            let flags = reader.u32()
            guard UInt64(offset) + UInt64(configSize) <= UInt64(VhostConfigSpace.maximumSize) else {
                throw .configRange(request, offset: offset, size: configSize)
            }
            try size(VhostConfigSpace.headerSize + Int(configSize))
            payload = .config(VhostConfigSpace(offset: offset, flags: flags, bytes: reader.bytes(Int(configSize))))
        case .inflight:
            try size(VhostInflightArea.size)
            payload = .inflight(VhostInflightArea(mmapSize: reader.u64(), mmapOffset: reader.u64(), queueCount: reader.u16(), queueSize: reader.u16()))
        }
        if layout.atMostOneDescriptor {
            guard descriptorCount <= 1 else { throw .descriptorCount(request, expected: 1, got: descriptorCount) }
        } else {
            guard descriptorCount == expectedDescriptors else {
                throw .descriptorCount(request, expected: expectedDescriptors, got: descriptorCount)
            }
        }
        return VhostUserMessage(request: request, flags: header.flags, payload: payload)
    }
}

/// What one message may carry at most, known from its header alone: a reader accepts no more
/// payload bytes and no more file descriptors than this, whatever the peer sends.
public struct VhostUserMessageLimits: Equatable, Sendable {
    /// The request the header names.
    public var request: VhostUserRequest
    /// The header's payload size, checked against the request's largest payload.
    public var payloadSize: Int
    /// The most descriptors the request carries (over the whole message, not per receive).
    public var descriptors: Int
}

extension VhostUserMessage {
    /// The most file descriptors any message carries (SET_MEM_TABLE's 8 regions): the bound
    /// while a message's header is still incomplete.
    public static let maximumDescriptors = VhostMemoryTable.maximumRegions

    /// What the message that `header` starts may carry, before any payload byte is read:
    /// unknown requests, requests this codec does not handle, replies to another request, and
    /// payload sizes above the request's largest (e.g. 264 bytes for SET_MEM_TABLE) throw.
    /// `decode` still checks the exact size and count once the message is in.
    public static func limits(of header: VhostUserHeader, direction: Direction = .request) throws(VhostUserError) -> VhostUserMessageLimits {
        guard let request = VhostUserRequest(rawValue: header.request) else {
            if case .reply(let sent) = direction { throw .unexpectedReply(expected: sent, got: header.request) }
            throw .unknownRequest(header.request)
        }
        let layout: Layout
        switch direction {
        case .request:
            guard let l = Layout.ofRequest(request) else { throw .unsupportedRequest(request) }
            layout = l
        case .reply(let sent):
            guard request == sent else { throw .unexpectedReply(expected: sent, got: header.request) }
            layout = Layout.ofReply(request)
        }
        let size = Int(header.size)
        guard size <= layout.maximumPayloadSize else {
            throw .payloadSize(request, expected: "at most \(layout.maximumPayloadSize)", got: size)
        }
        return VhostUserMessageLimits(request: request, payloadSize: size, descriptors: layout.descriptorAllowance)
    }
}

extension VhostMemoryRegion {
    func validate(_ request: VhostUserRequest, index: Int) throws(VhostUserError) {
        guard size > 0 else { throw .emptyRegion(request, index: index) }
        if guestAddress.addingReportingOverflow(size).overflow { throw .regionOverflow(request, index: index, field: "guest_phys_addr") }
        if userAddress.addingReportingOverflow(size).overflow { throw .regionOverflow(request, index: index, field: "userspace_addr") }
        if mmapOffset.addingReportingOverflow(size).overflow { throw .regionOverflow(request, index: index, field: "mmap_offset") }
    }
}

/// What a message's payload looks like and how many descriptors come with it.
struct Layout {
    enum Shape { case empty, u64, vringState, vringAddress, vringFile, memoryTable, memoryRegion, log, config, inflight }
    var shape: Shape
    /// Fixed count; `vringFile` and `memoryTable` compute theirs from the payload.
    var descriptors = 0
    /// REM_MEM_REG: the specification lets frontends send one descriptor the backend closes.
    var atMostOneDescriptor = false

    /// The largest payload of this shape (exact for fixed shapes).
    var maximumPayloadSize: Int {
        switch shape {
        case .empty: 0
        case .u64, .vringState, .vringFile: 8
        case .vringAddress: VhostVringAddress.size
        case .memoryTable: 8 + VhostMemoryRegion.size * VhostMemoryTable.maximumRegions
        case .memoryRegion: 8 + VhostMemoryRegion.size
        case .log: VhostLogArea.size
        case .config: VhostConfigSpace.headerSize + VhostConfigSpace.maximumSize
        case .inflight: VhostInflightArea.size
        }
    }

    /// The most descriptors a message of this layout carries, whatever its payload says.
    var descriptorAllowance: Int {
        switch shape {
        case .memoryTable: VhostMemoryTable.maximumRegions
        case .vringFile: 1
        default: atMostOneDescriptor ? 1 : descriptors
        }
    }

    /// nil: a request this codec does not handle.
    static func ofRequest(_ request: VhostUserRequest) -> Layout? {
        switch request {
        case .getFeatures, .setOwner, .resetOwner, .getProtocolFeatures, .getQueueNum, .resetDevice,
             .getMaxMemSlots, .getStatus:
            Layout(shape: .empty)
        case .setFeatures, .setProtocolFeatures, .sendRARP, .netSetMTU, .setStatus:
            Layout(shape: .u64)
        case .setMemTable: Layout(shape: .memoryTable)
        case .setLogBase: Layout(shape: .log, descriptors: 1)
        case .setLogFD, .setBackendRequestFD: Layout(shape: .empty, descriptors: 1)
        case .setVringNum, .setVringBase, .getVringBase, .setVringEnable, .setVringEndian, .vringKick:
            Layout(shape: .vringState)
        case .setVringAddr: Layout(shape: .vringAddress)
        case .setVringKick, .setVringCall, .setVringErr: Layout(shape: .vringFile)
        case .getConfig, .setConfig: Layout(shape: .config)
        case .getInflightFD: Layout(shape: .inflight)
        case .setInflightFD: Layout(shape: .inflight, descriptors: 1)
        case .addMemReg: Layout(shape: .memoryRegion, descriptors: 1)
        case .remMemReg: Layout(shape: .memoryRegion, atMostOneDescriptor: true)
        case .iotlbMessage, .createCryptoSession, .closeCryptoSession, .postcopyAdvise, .postcopyListen,
             .postcopyEnd, .gpuSetSocket, .getSharedObject, .setDeviceStateFD, .checkDeviceState:
            nil
        }
    }

    static func ofReply(_ request: VhostUserRequest) -> Layout {
        switch request {
        case .getVringBase: Layout(shape: .vringState)
        case .getConfig: Layout(shape: .config)
        case .getInflightFD: Layout(shape: .inflight, descriptors: 1)
        default: Layout(shape: .u64)  // the answer, or a REPLY_ACK
        }
    }
}

/// Little-endian reads from a buffer whose length the caller checked; a read past the end
/// yields zeros rather than trapping.
struct ByteReader {
    let bytes: [UInt8]
    var offset: Int

    init(_ bytes: [UInt8], from offset: Int) { self.bytes = bytes; self.offset = offset }

    mutating func integer<T: FixedWidthInteger & UnsignedInteger>(_: T.Type) -> T {
        var value: T = 0
        for i in 0..<MemoryLayout<T>.size {
            let index = offset + i
            if index < bytes.count { value |= T(bytes[index]) << (8 * i) }
        }
        offset += MemoryLayout<T>.size
        return value
    }

    mutating func u16() -> UInt16 { integer(UInt16.self) }
    mutating func u32() -> UInt32 { integer(UInt32.self) }
    mutating func u64() -> UInt64 { integer(UInt64.self) }

    mutating func bytes(_ count: Int) -> [UInt8] {
        let start = min(offset, bytes.count)
        let end = min(offset + count, bytes.count)
        offset += count
        return Array(bytes[start..<end])
    }
}

extension Array where Element == UInt8 {
    mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }
}
