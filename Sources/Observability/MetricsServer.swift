import Glibc
import Config
import HostOS
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// The Prometheus endpoint: `GET /metrics` answers the exposition of a fresh snapshot; any
/// other path is 404, any other method on `/metrics` 405.
///
/// Runs as a ServiceLifecycle `Service` (the daemon puts it in its `ServiceGroup`, which stops
/// it gracefully) or alone through `run()` until its task is cancelled.
public final class MetricsServer: Service, Sendable {
    /// The path scrapers ask for.
    public static let path = "/metrics"
    /// Connections served at once: a scraper needs one; more are queued by the kernel's backlog.
    public static let maximumConnections = 16
    /// An idle connection (a scraper that went away, or a client that never sends) is closed after this.
    public static let idleTimeout = TimeAmount.seconds(30)

    public let address: MetricsListenAddress
    private let socketAccess: UnixSocketAccess
    private let snapshot: @Sendable () async -> MetricsSnapshot
    private let logger: Logger
    private let state = Mutex<State>(.notStarted)

    private enum State {
        case notStarted
        case listening(MetricsListenAddress)
        /// `run` ended: with the error it threw, if any.
        case ended(String?)
    }

    /// Who may connect to a Unix socket endpoint: the file's group and permission bits, set
    /// right after the socket is bound.
    public struct UnixSocketAccess: Sendable, Equatable {
        /// The socket's group; nil keeps the daemon's.
        public var group: UInt32?
        public var mode: UInt32

        public init(group: UInt32? = nil, mode: UInt32 = 0o660) {
            self.group = group; self.mode = mode
        }
    }

    /// - Parameters:
    ///   - address: where to listen (see `MetricsListenAddress.parse`).
    ///   - socketAccess: owner group and mode of a Unix socket; ignored for TCP.
    ///   - logger: the daemon's logger; the server logs its address and failures.
    ///   - snapshot: called once per scrape, on a concurrency pool thread: it must not block.
    public init(address: MetricsListenAddress, socketAccess: UnixSocketAccess = UnixSocketAccess(),
                logger: Logger, snapshot: @escaping @Sendable () async -> MetricsSnapshot) {
        self.address = address
        self.socketAccess = socketAccess
        self.logger = logger
        self.snapshot = snapshot
    }

    /// Where the server listens once bound (a TCP address given with port 0 has its real port
    /// here); nil before and after.
    public var boundAddress: MetricsListenAddress? {
        state.withLock { if case .listening(let address) = $0 { address } else { nil } }
    }

    /// Serves until the task is cancelled or a graceful shutdown of the enclosing `ServiceGroup`.
    /// A Unix socket is removed when the server stops.
    /// - Throws: the bind's error (address in use, no such directory, permission denied).
    public func run() async throws {
        let bindAddress: BindAddress
        switch address {
        case .tcp(let host, let port): bindAddress = .hostname(host, port: port)
        case .unix(let path): bindAddress = .unixDomainSocket(path: path)
        }
        let snapshot = self.snapshot
        let responder = CallbackResponder<BasicRequestContext> { request, _ in
            guard request.uri.path == MetricsServer.path else { return Response(status: .notFound) }
            guard request.method == .get || request.method == .head else {
                return Response(status: .methodNotAllowed, headers: [.allow: "GET, HEAD"])
            }
            let body = MetricsExposition.render(await snapshot())
            var headers = HTTPFields()
            headers[.contentType] = MetricsExposition.contentType
            if request.method == .head {
                headers[.contentLength] = "\(body.count)"
                return Response(status: .ok, headers: headers)
            }
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body)))
        }
        let application = Application(
            responder: responder,
            server: .http1(configuration: .init(idleTimeout: MetricsServer.idleTimeout)),
            configuration: ApplicationConfiguration(
                address: bindAddress, serverName: nil,
                availableConnectionsDelegate: MaximumAvailableConnections(MetricsServer.maximumConnections)),
            onServerRunning: { [self] channel in self.serverRunning(channel) },
            logger: logger)
        do {
            try await application.run()
        } catch {
            stopped(error)
            throw error
        }
        stopped(nil)
    }

    /// Removes the Unix socket only if this server bound it: a failed bind may have met
    /// someone else's file there.
    private func stopped(_ error: (any Error)?) {
        let wasListening = state.withLock { state in
            defer { state = .ended(error.map { "\($0)" }) }
            if case .listening = state { return true } else { return false }
        }
        if wasListening, case .unix(let path) = address { try? StateFiles.remove(path) }
    }

    /// Records the bound address; restricts a Unix socket before the address is announced.
    private func serverRunning(_ channel: any Channel) {
        var actual = address
        switch address {
        case .tcp(let host, _):
            if let port = channel.localAddress?.port { actual = .tcp(host: host, port: port) }
        case .unix(let path):
            do {
                try StateFiles.setOwner(path, uid: UInt32.max, gid: socketAccess.group ?? UInt32.max,
                                        mode: mode_t(socketAccess.mode))
            } catch {
                // The socket keeps the umask's mode: say so, and close it rather than serve wider than asked.
                logger.error("cannot restrict the metrics socket; closing it", metadata: [
                    "metrics.address": "\(address)", "error": "\(error)",
                ])
                channel.close(promise: nil)
                try? StateFiles.remove(path)
                return
            }
        }
        state.withLock { $0 = .listening(actual) }
        logger.info("metrics endpoint listening", metadata: ["metrics.address": "\(actual)"])
    }

    /// Waits until the server is bound, polling: for tests and for a caller that must announce
    /// the endpoint only once it answers.
    /// - Throws: `MetricsServerError.stopped` with `run`'s error if it ended first (the address
    ///   was in use, say); `MetricsServerError.notListening` after `timeout`.
    public func waitUntilListening(timeout: Duration = .seconds(10)) async throws -> MetricsListenAddress {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        while true {
            switch state.withLock({ $0 }) {
            case .listening(let address): return address
            case .ended(let error): throw MetricsServerError.stopped(address, error ?? "without an error")
            case .notStarted: break
            }
            guard clock.now < deadline else { throw MetricsServerError.notListening(address, after: timeout) }
            try await Task.sleep(for: .milliseconds(5))
        }
    }
}

/// A metrics server failure.
public enum MetricsServerError: Error, CustomStringConvertible, Sendable {
    /// The server was not bound within the time given.
    case notListening(MetricsListenAddress, after: Duration)
    /// The server stopped before it was listening, for the reason given.
    case stopped(MetricsListenAddress, String)

    public var description: String {
        switch self {
        case .notListening(let address, let timeout): "the metrics endpoint \(address) was not listening after \(timeout)"
        case .stopped(let address, let reason): "the metrics endpoint \(address) stopped: \(reason)"
        }
    }
}
