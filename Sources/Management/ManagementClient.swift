import Config
import NIOCore
import NIOHTTP1
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// A client of the management API on its Unix socket: one HTTP/1.1 request per connection.
///
/// Written on SwiftNIO's HTTP/1.1 codec rather than a general HTTP client library: a call on a
/// local socket needs no pool, TLS or redirects (nor BoringSSL in the binary), and a connection
/// that fails must fail at once with its errno (a pooled client retries until its deadline).
public struct ManagementClient: Sendable {
    public let socketPath: String

    public init(socketPath: String) { self.socketPath = socketPath }

    /// An answer of the API.
    public struct Answer: Sendable {
        public var status: Int
        public var body: [UInt8]

        /// The body as JSON, if it is JSON.
        public var json: JSONValue? {
            guard let text = String(validating: body, as: UTF8.self) else { return nil }
            return JSONParser.parse(text).value
        }
    }

    /// Why no answer came.
    public enum Failure: Error, Sendable, CustomStringConvertible {
        /// There is no socket at the path (the daemon is not running, or the path is wrong).
        case noSocket(String)
        /// The socket file does not let this user connect (not in its group).
        case permissionDenied(String)
        /// Nothing listens on the socket (a daemon that is gone left it).
        case refused(String)
        /// The connection failed otherwise, or broke before a whole answer came.
        case connection(String)

        public var description: String {
            switch self {
            case .noSocket(let path): "no control socket at \(path): is the daemon running, and is --socket (or BULKHEAD_SOCKET) right?"
            case .permissionDenied(let path): "permission denied on the control socket \(path): this user may not connect (the socket is for root and its group)"
            case .refused(let path): "connection refused on the control socket \(path): the daemon that made it does not run"
            case .connection(let detail): detail
            }
        }
    }

    /// The largest answer read.
    public static let maximumAnswerBytes = 64 << 20

    /// Sends one request and returns the answer.
    ///
    /// - Parameters:
    ///   - method: `GET`, `POST` or `PUT`.
    ///   - target: the path and query, e.g. `/v1/counters?tenant=blue`.
    ///   - body: the body (JSON), if any.
    /// - Throws: `Failure` when the connection fails or the answer does not come whole.
    public func call(_ method: String, _ target: String, body: [UInt8]? = nil) async throws(Failure) -> Answer {
        do {
            return try await exchange(method, target, body: body)
        } catch let failure as Failure {
            throw failure
        } catch let error as IOError {
            switch error.errnoCode {
            case ENOENT, ENOTDIR: throw .noSocket(socketPath)
            case EACCES, EPERM: throw .permissionDenied(socketPath)
            case ECONNREFUSED: throw .refused(socketPath)
            default: throw .connection("the call to the control socket \(socketPath) failed: \(error)")
            }
        } catch {
            throw .connection("the call to the control socket \(socketPath) failed: \(error)")
        }
    }

    private func exchange(_ method: String, _ target: String, body: [UInt8]?) async throws -> Answer {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(unixDomainSocketPath: socketPath) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
                }
            }
        return try await channel.executeThenClose { inbound, outbound in
            var head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: method), uri: target)
            head.headers.add(name: "Host", value: "localhost")
            head.headers.add(name: "Connection", value: "close")
            head.headers.add(name: "Content-Length", value: String(body?.count ?? 0))
            if body != nil { head.headers.add(name: "Content-Type", value: "application/json") }
            // The whole request in one flush: the daemon answers (and, with "Connection: close",
            // closes) as soon as the request is complete, which for a request without a body is
            // after its head; a separate write of the end could then meet a closed channel.
            var parts: [HTTPClientRequestPart] = [.head(head)]
            if let body, !body.isEmpty { parts.append(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
            parts.append(.end(nil))
            try await outbound.write(contentsOf: parts)

            var status: Int?
            var bytes: [UInt8] = []
            for try await part in inbound {
                switch part {
                case .head(let response):
                    status = Int(response.status.code)
                case .body(let buffer):
                    guard bytes.count + buffer.readableBytes <= ManagementClient.maximumAnswerBytes else {
                        throw Failure.connection("the answer is larger than \(ManagementClient.maximumAnswerBytes) bytes")
                    }
                    bytes += buffer.readableBytesView
                case .end:
                    guard let status else { throw Failure.connection("the answer ended before its status line") }
                    return Answer(status: status, body: bytes)
                }
            }
            throw Failure.connection("the daemon closed the connection before a whole answer came")
        }
    }
}
