import HostOS
#if canImport(Glibc)
import Glibc
#endif

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
    /// A message stopped arriving part-way: `received` of `expected` bytes (of the header when
    /// `request` is nil) within `milliseconds` of its first byte.
    case stalled(VhostUserRequest?, received: Int, expected: Int, milliseconds: Int)

    public var description: String {
        switch self {
        case .system(let error): error.description
        case .message(let error): error.description
        case .disconnected: "the peer closed the connection"
        case .rejected(let request, let code): "\(request) was rejected by the backend (REPLY_ACK \(code))"
        case .stalled(let request?, let received, let expected, let milliseconds):
            "\(request): the message stalled after \(received) of \(expected) bytes (limit \(milliseconds) ms from its first byte)"
        case .stalled(nil, let received, let expected, let milliseconds):
            "a message header stalled after \(received) of \(expected) bytes (limit \(milliseconds) ms from its first byte)"
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
    /// Reads one message: the header (its request and size checked against the request's limits
    /// before anything else is read), then exactly `size` payload bytes. Returns nil when the
    /// peer closed the connection cleanly between messages.
    ///
    /// Descriptors are counted over the whole message, however many receives it takes: until
    /// the header is in, no more than any message carries (8); after it, no more than its
    /// request carries. Each receive accepts only what is still allowed, so a peer can never
    /// make this side hold more; excess ends the conversation (`excessDescriptors`).
    ///
    /// Waiting for a message's first byte has no time limit; with `stallTimeoutMilliseconds`,
    /// the rest of the message must arrive within that many milliseconds of its first byte
    /// (`stalled` otherwise).
    static func read(from stream: borrowing UnixStream, direction: VhostUserMessage.Direction = .request,
                     stallTimeoutMilliseconds: Int? = nil) throws(VhostUserConnectionError) -> RawMessage? {
        var descriptors = ReceivedDescriptors()
        var progress = Progress(allowance: VhostUserMessage.maximumDescriptors, timeoutMilliseconds: stallTimeoutMilliseconds)
        var header = [UInt8](repeating: 0, count: VhostUserHeader.size)
        let got = try fill(&header, from: 0, stream: stream, descriptors: &descriptors, progress: &progress)
        if got == 0 { return nil }
        if got < VhostUserHeader.size { throw .message(.truncatedHeader(got: got)) }
        let limits: VhostUserMessageLimits
        do { limits = try VhostUserMessage.limits(of: VhostUserHeader(decoding: header), direction: direction) } catch {
            throw .message(error)
        }
        guard descriptors.count <= limits.descriptors else {
            throw .message(.excessDescriptors(limits.request, allowed: limits.descriptors, received: descriptors.count))
        }
        progress.request = limits.request
        progress.allowance = limits.descriptors
        var bytes = header + [UInt8](repeating: 0, count: limits.payloadSize)
        let payload = try fill(&bytes, from: VhostUserHeader.size, stream: stream, descriptors: &descriptors, progress: &progress)
        if payload < limits.payloadSize {
            throw .message(.lengthMismatch(limits.request, header: limits.payloadSize, got: payload))
        }
        return RawMessage(bytes: bytes, descriptors: descriptors)
    }

    /// What is known about the message being read, and its deadline once it has begun.
    private struct Progress {
        /// nil until the header is in.
        var request: VhostUserRequest?
        /// The most descriptors the whole message may carry.
        var allowance: Int
        let timeoutMilliseconds: Int?
        /// CLOCK_MONOTONIC nanoseconds by which the message must be complete; set by its first byte.
        var deadline: UInt64?

        init(allowance: Int, timeoutMilliseconds: Int?) {
            self.allowance = allowance
            self.timeoutMilliseconds = timeoutMilliseconds
        }

        mutating func started() {
            guard deadline == nil, let timeoutMilliseconds else { return }
            let (budget, overflow) = UInt64(clamping: timeoutMilliseconds).multipliedReportingOverflow(by: 1_000_000)
            let (end, late) = monotonicNanoseconds().addingReportingOverflow(overflow ? .max : budget)
            deadline = late ? .max : end
        }
    }

    /// Receives into `bytes[start...]` until it is full or the stream ends; returns how many
    /// bytes arrived.
    private static func fill(_ bytes: inout [UInt8], from start: Int, stream: borrowing UnixStream,
                             descriptors: inout ReceivedDescriptors, progress: inout Progress) throws(VhostUserConnectionError) -> Int {
        var filled = start
        while filled < bytes.count {
            if let deadline = progress.deadline {
                let ready: Bool
                do { ready = try stream.waitReadable(until: deadline) } catch { throw .system(error) }
                if !ready {
                    throw .stalled(progress.request, received: filled, expected: bytes.count,
                                   milliseconds: progress.timeoutMilliseconds ?? 0)
                }
            }
            let remaining = bytes.count - filled
            let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: remaining, alignment: 8)
            defer { chunk.deallocate() }
            let maxFDs = max(0, min(progress.allowance, VhostUserMessage.maximumDescriptors) - descriptors.count)
            let received: ReceivedMessage
            do { received = try stream.receive(into: chunk, maxFDs: maxFDs) } catch {
                // MSG_CTRUNC: more descriptors came than were still allowed; the kernel dropped
                // the excess and `receive` closed the rest.
                if error.errno == EMSGSIZE {
                    throw .message(.excessDescriptors(progress.request, allowed: progress.allowance,
                                                      received: descriptors.count + maxFDs + 1))
                }
                throw .system(error)
            }
            let n = received.byteCount
            descriptors.append(contentsOf: received.takeDescriptors())
            if n == 0 { break }
            for i in 0..<n { bytes[filled + i] = chunk[i] }
            filled += n
            progress.started()
        }
        return filled - start
    }

    static func write(_ message: VhostUserMessage, fds: [Int32] = [], to stream: borrowing UnixStream) throws(VhostUserConnectionError) {
        do { try stream.send(message.encode(), fds: fds) } catch { throw .system(error) }
    }
}
