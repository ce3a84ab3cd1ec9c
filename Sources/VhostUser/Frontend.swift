import HostOS
#if canImport(Glibc)
import Glibc
#endif

/// A vhost-user frontend (client): drives a backend over its socket. Used by the tests and by
/// the partition VMM. Not thread-safe: one caller at a time.
///
/// Once REPLY_ACK is negotiated (`setProtocolFeatures`), every request without a reply of its
/// own asks for an acknowledgement, and a failing one throws `rejected`.
public final class VhostUserFrontend {
    private let stream: UnixStream
    /// The protocol features set with `setProtocolFeatures`.
    public private(set) var protocolFeatures: UInt64 = 0

    /// Connects to the backend at `path`. Every reply is awaited at most `replyTimeoutMilliseconds`.
    public init(connectingTo path: String, replyTimeoutMilliseconds: Int = 10_000) throws(VhostUserConnectionError) {
        do {
            let stream = try UnixStream.connect(to: path)
            try stream.setReceiveTimeout(milliseconds: replyTimeoutMilliseconds)
            self.stream = stream
        } catch {
            throw .system(error)
        }
    }

    private var acknowledges: Bool { protocolFeatures & VhostUserProtocolFeature.replyAck.mask != 0 }

    /// Sends a request that has a reply and returns the reply's payload.
    private func call(_ request: VhostUserRequest, _ payload: VhostUserPayload = .empty) throws(VhostUserConnectionError) -> VhostUserPayload {
        try MessageChannel.write(.request(request, payload), to: stream)
        return try receiveReply(to: request)
    }

    /// Sends a request without a reply of its own; waits for the REPLY_ACK when negotiated.
    private func perform(_ request: VhostUserRequest, _ payload: VhostUserPayload = .empty, fds: [Int32] = []) throws(VhostUserConnectionError) {
        let ack = acknowledges
        try MessageChannel.write(.request(request, payload, needReply: ack), fds: fds, to: stream)
        if ack {
            guard case .u64(let code) = try receiveReply(to: request) else { throw .message(.payloadSize(request, expected: "8", got: -1)) }
            if code != 0 { throw .rejected(request, code: code) }
        }
    }

    private func receiveReply(to request: VhostUserRequest) throws(VhostUserConnectionError) -> VhostUserPayload {
        guard let raw = try MessageChannel.read(from: stream, direction: .reply(to: request)) else { throw .disconnected }
        do {
            return try VhostUserMessage.decode(raw.bytes, descriptorCount: raw.descriptors.count, direction: .reply(to: request)).payload
        } catch {
            throw .message(error)
        }
    }

    private func u64(_ payload: VhostUserPayload, _ request: VhostUserRequest) throws(VhostUserConnectionError) -> UInt64 {
        guard case .u64(let value) = payload else { throw .message(.payloadSize(request, expected: "8", got: -1)) }
        return value
    }

    public func getFeatures() throws(VhostUserConnectionError) -> UInt64 {
        try u64(call(.getFeatures), .getFeatures)
    }

    public func setFeatures(_ features: UInt64) throws(VhostUserConnectionError) {
        try perform(.setFeatures, .u64(features))
    }

    public func getProtocolFeatures() throws(VhostUserConnectionError) -> UInt64 {
        try u64(call(.getProtocolFeatures), .getProtocolFeatures)
    }

    /// Sets the protocol features; from now on requests ask for REPLY_ACK if it is among them.
    public func setProtocolFeatures(_ features: UInt64) throws(VhostUserConnectionError) {
        try perform(.setProtocolFeatures, .u64(features))
        protocolFeatures = features
    }

    public func setOwner() throws(VhostUserConnectionError) {
        try perform(.setOwner)
    }

    public func getQueueNum() throws(VhostUserConnectionError) -> UInt64 {
        try u64(call(.getQueueNum), .getQueueNum)
    }

    /// Sends the memory table; each region's `fd` (borrowed) is mapped by the backend at `offset`.
    public func setMemTable(regions: [(guestAddress: UInt64, size: UInt64, userAddress: UInt64, fd: Int32, offset: UInt64)]) throws(VhostUserConnectionError) {
        let table = VhostMemoryTable(regions: regions.map {
            VhostMemoryRegion(guestAddress: $0.guestAddress, size: $0.size, userAddress: $0.userAddress, mmapOffset: $0.offset)
        })
        try perform(.setMemTable, .memoryTable(table), fds: regions.map(\.fd))
    }

    public func setVringNum(_ index: UInt32, size: UInt32) throws(VhostUserConnectionError) {
        try perform(.setVringNum, .vringState(VhostVringState(index: index, num: size)))
    }

    public func setVringAddr(_ address: VhostVringAddress) throws(VhostUserConnectionError) {
        try perform(.setVringAddr, .vringAddress(address))
    }

    public func setVringBase(_ index: UInt32, base: UInt32) throws(VhostUserConnectionError) {
        try perform(.setVringBase, .vringState(VhostVringState(index: index, num: base)))
    }

    /// Stops the ring and returns where the backend would resume.
    public func getVringBase(_ index: UInt32) throws(VhostUserConnectionError) -> UInt16 {
        guard case .vringState(let state) = try call(.getVringBase, .vringState(VhostVringState(index: index, num: 0))),
              state.index == index, let base = UInt16(exactly: state.num)
        else { throw .message(.payloadSize(.getVringBase, expected: "a vring state for queue \(index)", got: -1)) }
        return base
    }

    /// `fd` (borrowed) nil sends the "no descriptor" flag.
    public func setVringKick(_ index: UInt32, fd: Int32?) throws(VhostUserConnectionError) {
        try perform(.setVringKick, .vringFile(VhostVringFile(index: index, noDescriptor: fd == nil)), fds: fd.map { [$0] } ?? [])
    }

    public func setVringCall(_ index: UInt32, fd: Int32?) throws(VhostUserConnectionError) {
        try perform(.setVringCall, .vringFile(VhostVringFile(index: index, noDescriptor: fd == nil)), fds: fd.map { [$0] } ?? [])
    }

    public func setVringErr(_ index: UInt32, fd: Int32?) throws(VhostUserConnectionError) {
        try perform(.setVringErr, .vringFile(VhostVringFile(index: index, noDescriptor: fd == nil)), fds: fd.map { [$0] } ?? [])
    }

    public func setVringEnable(_ index: UInt32, _ enabled: Bool) throws(VhostUserConnectionError) {
        try perform(.setVringEnable, .vringState(VhostVringState(index: index, num: enabled ? 1 : 0)))
    }

    public func getConfig(offset: UInt32, size: Int) throws(VhostUserConnectionError) -> [UInt8] {
        let window = VhostConfigSpace(offset: offset, bytes: [UInt8](repeating: 0, count: size))
        guard case .config(let reply) = try call(.getConfig, .config(window)) else {
            throw .message(.payloadSize(.getConfig, expected: "a config window", got: -1))
        }
        return reply.bytes
    }

    public func setConfig(offset: UInt32, bytes: [UInt8]) throws(VhostUserConnectionError) {
        try perform(.setConfig, .config(VhostConfigSpace(offset: offset, bytes: bytes)))
    }

    /// Sends `bytes` exactly as given, with `fds` (borrowed): for tests of hostile frontends.
    public func sendRaw(_ bytes: [UInt8], fds: [Int32] = []) throws(VhostUserConnectionError) {
        do { try stream.send(bytes, fds: fds) } catch { throw .system(error) }
    }

    /// Sends end-of-stream to the backend (a half-close): for tests of truncated messages.
    public func shutdownWrites() {
        stream.shutdownWrites()
    }

    /// Waits for the backend to close the connection; throws when a message arrives instead.
    public func waitForDisconnect() throws(VhostUserConnectionError) {
        let message: RawMessage?
        do {
            message = try MessageChannel.read(from: stream)
        } catch .system(let error) where error.errno == ECONNRESET {
            return
        }
        if let message {
            let request = message.bytes.count >= 4 ? UInt32(message.bytes[0]) | UInt32(message.bytes[1]) << 8 : 0
            throw .message(.unexpectedReply(expected: .getFeatures, got: request))
        }
    }
}
