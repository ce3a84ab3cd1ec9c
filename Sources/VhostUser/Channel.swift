import HostOS

/// Why a vhost-user conversation ended or a request failed.
public enum VhostUserConnectionError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A socket call failed.
    case system(SystemError)
    /// The peer sent a message that breaks the protocol.
    case message(VhostUserError)
    /// The peer closed the connection (between messages).
    case disconnected
    /// The backend answered a REPLY_ACK with a failure code.
    case rejected(VhostUserRequest, code: UInt64)

    public var description: String {
        switch self {
        case .system(let error): error.description
        case .message(let error): error.description
        case .disconnected: "the peer closed the connection"
        case .rejected(let request, let code): "\(request) was rejected by the backend (REPLY_ACK \(code))"
        }
    }
}

/// One received message, not yet decoded, and the descriptors that came with it.
struct RawMessage: ~Copyable {
    var bytes: [UInt8]
    var descriptors: ReceivedDescriptors
}

/// Reads and writes whole vhost-user messages on a stream socket.
enum MessageChannel {
    /// The most descriptors any message carries (SET_MEM_TABLE's 8 regions); more arriving at
    /// once is truncated control data and ends the conversation.
    static let maximumDescriptors = VhostMemoryTable.maximumRegions

    /// Reads one message: the header (its size field checked before anything else is read), then
    /// exactly `size` payload bytes. Returns nil when the peer closed the connection cleanly
    /// between messages.
    static func read(from stream: borrowing UnixStream) throws(VhostUserConnectionError) -> RawMessage? {
        var descriptors = ReceivedDescriptors()
        var header = [UInt8](repeating: 0, count: VhostUserHeader.size)
        let got = try fill(&header, from: 0, stream: stream, descriptors: &descriptors)
        if got == 0 { return nil }
        if got < VhostUserHeader.size { throw .message(.truncatedHeader(got: got)) }
        let parsed: VhostUserHeader
        do { parsed = try VhostUserHeader(decoding: header) } catch { throw .message(error) }
        var bytes = header + [UInt8](repeating: 0, count: Int(parsed.size))
        let payload = try fill(&bytes, from: VhostUserHeader.size, stream: stream, descriptors: &descriptors)
        if payload < Int(parsed.size) {
            let request = VhostUserRequest(rawValue: parsed.request)
            if let request { throw .message(.lengthMismatch(request, header: Int(parsed.size), got: payload)) }
            throw .message(.unknownRequest(parsed.request))
        }
        return RawMessage(bytes: bytes, descriptors: descriptors)
    }

    /// Receives into `bytes[start...]` until it is full or the stream ends; returns how many
    /// bytes arrived.
    private static func fill(_ bytes: inout [UInt8], from start: Int, stream: borrowing UnixStream,
                             descriptors: inout ReceivedDescriptors) throws(VhostUserConnectionError) -> Int {
        var filled = start
        while filled < bytes.count {
            let remaining = bytes.count - filled
            let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: remaining, alignment: 8)
            defer { chunk.deallocate() }
            let received: ReceivedMessage
            do { received = try stream.receive(into: chunk, maxFDs: maximumDescriptors) } catch { throw .system(error) }
            let n = received.byteCount
            descriptors.append(contentsOf: received.takeDescriptors())
            if n == 0 { break }
            for i in 0..<n { bytes[filled + i] = chunk[i] }
            filled += n
        }
        return filled - start
    }

    static func write(_ message: VhostUserMessage, fds: [Int32] = [], to stream: borrowing UnixStream) throws(VhostUserConnectionError) {
        do { try stream.send(message.encode(), fds: fds) } catch { throw .system(error) }
    }
}
