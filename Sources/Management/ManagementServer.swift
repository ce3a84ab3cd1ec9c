import Config
import HostOS
import Hummingbird
import HummingbirdCore
import Logging
import ManagementModel
import NIOCore
import ServiceLifecycle
import Switch
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What the management API needs of the daemon. The daemon implements it; tests use one made
/// from a configuration file.
public protocol ManagementBackend: Sendable {
    /// The applied configuration (and its document), the status of the daemon and its children,
    /// and the switch's counters, as of now.
    func snapshot() async -> ManagementSnapshot

    /// Starts, stops or restarts partition `id` of `tenant` (which exists in the snapshot's
    /// configuration); returns when done.
    func partition(_ action: PartitionAction, tenant: String, id: String) async throws(ManagementFailure)

    /// Validates `document` as a whole configuration and, unless `dryRun`, applies what differs
    /// from the applied one. `principal` is who asked, for the daemon's own records.
    func apply(document: String, dryRun: Bool, principal: String) async -> ApplyOutcome

    /// At most `limit` audit records (raw JSON lines) after record number `after`.
    func auditRecords(after: UInt64, limit: Int) async throws(ManagementFailure) -> [String]
}

/// Writes one record of a management call to the audit log, durably, before the call is answered
/// (and, for a change, before it is made). Throws when the record cannot be written: then nothing
/// is done and the caller gets 503.
public typealias ManagementAuditRecorder = @Sendable (APIAuditEvent) throws -> Void

/// The management API on the control socket: HTTP/1.1 with JSON bodies, served by Hummingbird.
///
/// Each caller is identified by the socket's peer credentials (the uid that connected) and
/// authorized by `Authorization.decide`; every call, allowed or refused, is recorded with
/// `record` before it is answered.
public struct ManagementServer: Service {
    public let socketPath: String
    private let application: Application<ManagementResponder>
    private let ownership: SocketOwnership

    /// Who may open the socket file (the API authorizes each caller by uid regardless).
    final class SocketOwnership: Sendable {
        let group: UInt32?
        /// Set when the socket file could not be given its group and mode: the server stops.
        let failure = Mutex<SystemError?>(nil)
        /// Set once the socket listens: from then on the file is this server's.
        let listened = Mutex(false)
        init(group: UInt32?) { self.group = group }
    }

    /// - Parameters:
    ///   - socketPath: where to listen; a stale socket file there is replaced.
    ///   - socketGroup: the group that may connect (mode 0660, owner unchanged); nil for mode
    ///     0600 (only the daemon's user).
    ///   - onRunning: called once the socket listens with its group and mode set.
    public init(socketPath: String, socketGroup: UInt32?, backend: some ManagementBackend,
                record: @escaping ManagementAuditRecorder, logger: Logger,
                onRunning: @escaping @Sendable () async -> Void = {}) {
        self.socketPath = socketPath
        let ownership = SocketOwnership(group: socketGroup)
        self.ownership = ownership
        let responder = ManagementResponder(backend: backend, record: record, logger: logger)
        // A request line and headers of a management call are small; an idle connection goes.
        let http = HTTP1Channel.Configuration(
            idleTimeout: .seconds(60),
            httpDecoderConfiguration: .init(maxHeaderFieldSize: 16 << 10, maxHeaderListSize: 32 << 10, maxHeaderFieldCount: 64))
        var configuration = ApplicationConfiguration(address: .unixDomainSocket(path: socketPath), serverName: "bulkhead")
        configuration.availableConnectionsDelegate = MaximumAvailableConnections(64)
        self.application = Application(
            responder: responder, server: .http1(configuration: http), configuration: configuration,
            onServerRunning: { channel in
                ownership.listened.withLock { $0 = true }
                do throws(SystemError) {
                    // lchown with uid (uid_t)-1 keeps the owner; a gid of -1 keeps the group.
                    try StateFiles.setOwner(socketPath, uid: UInt32.max, gid: ownership.group ?? UInt32.max,
                                            mode: ownership.group == nil ? 0o600 : 0o660)
                } catch {
                    logger.critical("the control socket's group and mode cannot be set: \(error)",
                                    metadata: ["socket.path": "\(socketPath)"])
                    ownership.failure.withLock { $0 = error }
                    try? await channel.close()
                    return
                }
                logger.info("management API listening", metadata: ["socket.path": "\(socketPath)"])
                await onRunning()
            },
            logger: logger)
    }

    /// Serves until cancelled or shut down gracefully.
    ///
    /// - Throws: when the socket cannot be bound or given its group and mode.
    public func run() async throws {
        defer {
            // The socket file goes with the server (NIO leaves it); only one that this server bound.
            if ownership.listened.withLock({ $0 }) { try? StateFiles.remove(socketPath) }
        }
        try await application.run()
        if let failure = ownership.failure.withLock({ $0 }) { throw failure }
    }
}

/// The request context: Hummingbird's, plus the connection's channel, which gives the caller's
/// peer credentials.
public struct ControlRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }

    /// Bodies are read by the responder, bounded by `APIRequest.maximumBodyBytes`.
    public var maxUploadSize: Int { APIRequest.maximumBodyBytes }
}

/// `struct ucred`, as `getsockopt(SO_PEERCRED)` fills it in.
struct PeerCredentials: Sendable {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
}

/// The one responder: reads the caller's uid and the body, decodes, authorizes, records, carries
/// the call out with the backend and encodes the answer.
struct ManagementResponder: HTTPResponder {
    typealias Context = ControlRequestContext

    let backend: any ManagementBackend
    let record: ManagementAuditRecorder
    let logger: Logger

    func respond(to request: Request, context: Context) async throws -> Response {
        // The uid comes from the kernel, never from the request.
        guard let uid = await peerUID(context.channel) else {
            logger.error("the caller's peer credentials cannot be read; refused")
            return encode(APIError(status: 403, reason: "the caller's credentials cannot be read"), close: true)
        }
        let snapshot = await backend.snapshot()
        let caller = Authorization.principal(uid: uid, in: snapshot.configuration)

        var body: [UInt8] = []
        var bodyComplete = true
        if let caller {
            switch await readBody(request) {
            case .success(let bytes): body = bytes
            case .failure(let error):
                let event = APIAuditEvent(principal: caller.name, uid: uid, action: "api.invalid",
                                          target: shortenedTarget(request.uri.path), outcome: .denied(error.reason))
                return finish(event, answer: .failure(error), close: true)
            }
        } else {
            // An unknown caller's body is not read: it gets nothing, and the connection closes.
            bodyComplete = false
        }

        let parsed = APIRequest.parse(method: request.method.rawValue, path: request.uri.path,
                                      query: request.uri.query, body: body)
        let apiRequest: APIRequest
        switch parsed {
        case .failure(let error):
            let outcome = caller == nil ? APIError.unknownCaller(uid: uid) : error
            let event = APIAuditEvent(principal: caller?.name ?? "unknown", uid: uid, action: "api.invalid",
                                      target: shortenedTarget(request.uri.path), outcome: .denied(outcome.reason))
            return finish(event, answer: .failure(outcome), close: !bodyComplete)
        case .success(let decoded):
            apiRequest = decoded
        }

        func event(_ outcome: APIAuditEvent.Outcome) -> APIAuditEvent {
            APIAuditEvent(principal: caller?.name ?? "unknown", uid: uid, action: apiRequest.action,
                          target: apiRequest.target, outcome: outcome)
        }

        switch Authorization.decide(caller: caller, uid: uid, request: apiRequest) {
        case .denied(_, let error):
            return finish(event(.denied(error.reason)), answer: .failure(error), close: !bodyComplete)
        case .allowed(let principal, let scope):
            return await carryOut(apiRequest, principal: principal, scope: scope, snapshot: snapshot, event: event)
        }
    }

    private func carryOut(_ request: APIRequest, principal: Principal, scope: Scope, snapshot: ManagementSnapshot,
                          event: (APIAuditEvent.Outcome) -> APIAuditEvent) async -> Response {
        switch request {
        case .partition(let action, let tenant, let id):
            if let error = APIResponder.checkPartition(tenant: tenant, id: id, scope: scope,
                                                       configuration: snapshot.configuration) {
                return finish(event(.failed(error.reason)), answer: .failure(error))
            }
            // The intent is on record before anything is done: a crash midway leaves no
            // acknowledged action unrecorded.
            if let refusal = write(event(.allowed)) { return encode(refusal) }
            do throws(ManagementFailure) {
                try await backend.partition(action, tenant: tenant, id: id)
            } catch {
                return finish(event(.failed(error.reason)), answer: .failure(error.apiError))
            }
            return encode(.success(APIResponder.partitionDone(action, tenant: tenant, id: id)))

        case .apply(let document, let dryRun):
            if !dryRun, let refusal = write(event(.allowed)) { return encode(refusal) }
            let outcome = await backend.apply(document: document, dryRun: dryRun, principal: principal.name)
            let answer = APIResponder.applyAnswer(outcome, dryRun: dryRun)
            switch answer {
            case .success where dryRun: return finish(event(.allowed), answer: answer)
            case .success: return encode(answer)
            case .failure(let error): return finish(event(.failed(error.reason)), answer: answer)
            }

        case .audit(let after, let limit):
            let answer: Result<JSONValue, APIError>
            do throws(ManagementFailure) {
                let records = try await backend.auditRecords(after: after, limit: limit)
                answer = .success(APIResponder.auditAnswer(records: records, after: after))
            } catch {
                answer = .failure(error.apiError)
            }
            return finish(event(answer.outcome), answer: answer)

        default:
            let answer = APIResponder.read(request, caller: principal, scope: scope, snapshot: snapshot)
            return finish(event(answer.outcome), answer: answer)
        }
    }

    /// Records `event`, then answers; if the record cannot be written, answers 503 instead.
    private func finish(_ event: APIAuditEvent, answer: Result<JSONValue, APIError>, close: Bool = false) -> Response {
        if let refusal = write(event) { return encode(refusal, close: close) }
        return encode(answer, close: close)
    }

    /// Nil when the record is written; else the 503 to answer.
    private func write(_ event: APIAuditEvent) -> Result<JSONValue, APIError>? {
        do {
            try record(event)
            logger.debug("management call", metadata: ["principal": "\(event.principal)", "uid": "\(event.uid)",
                                                       "action": "\(event.action)", "target": "\(event.target)"])
            return nil
        } catch {
            logger.error("audit record failed; the call is refused",
                         metadata: ["action": "\(event.action)", "error": "\(error)"])
            return .failure(.auditUnavailable("\(error)"))
        }
    }

    private func encode(_ error: APIError, close: Bool = false) -> Response { encode(.failure(error), close: close) }

    private func encode(_ answer: Result<JSONValue, APIError>, close: Bool = false) -> Response {
        let status: Int
        let body: JSONValue
        var headers: HTTPFields = [.contentType: "application/json"]
        switch answer {
        case .success(let value):
            status = 200; body = value
        case .failure(let error):
            status = error.status; body = error.body
            if !error.allow.isEmpty { headers[.allow] = error.allow.joined(separator: ", ") }
        }
        if close { headers[.connection] = "close" }
        return Response(status: HTTPResponse.Status(code: status), headers: headers,
                        body: ResponseBody(byteBuffer: ByteBuffer(string: body.serialized(pretty: true) + "\n")))
    }

    /// The body, at most `APIRequest.maximumBodyBytes`; a larger one (announced or sent) is 413.
    private func readBody(_ request: Request) async -> Result<[UInt8], APIError> {
        let limit = APIRequest.maximumBodyBytes
        let tooLarge = APIError(status: 413, reason: "the body is larger than \(limit) bytes")
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > limit {
            return .failure(tooLarge)
        }
        var bytes: [UInt8] = []
        do {
            for try await buffer in request.body {
                guard bytes.count + buffer.readableBytes <= limit else { return .failure(tooLarge) }
                bytes += buffer.readableBytesView
            }
        } catch {
            return .failure(APIError(status: 400, reason: "the body could not be read: \(error)"))
        }
        return .success(bytes)
    }

    private func peerUID(_ channel: any Channel) async -> UInt32? {
        guard let provider = channel as? any SocketOptionProvider else { return nil }
        let future: EventLoopFuture<PeerCredentials> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
        return try? await future.get().uid
    }

    private func shortenedTarget(_ path: String) -> String {
        path.utf8.count <= 128 ? path : String(decoding: path.utf8.prefix(128), as: UTF8.self) + "..."
    }
}

extension Result where Success == JSONValue, Failure == APIError {
    /// How the audit log calls this answer.
    var outcome: APIAuditEvent.Outcome {
        switch self {
        case .success: .allowed
        case .failure(let error): .failed(error.reason)
        }
    }
}
