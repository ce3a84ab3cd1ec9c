import AsyncHTTPClient
import Config
import Foundation
import Logging
import NIOCore
import NIOSSL
import Synchronization

/// Why a request to etcd failed.
public enum EtcdError: Error, CustomStringConvertible, Sendable {
    /// No endpoint answered; the last failure.
    case unreachable(String)
    /// etcd answered with an error (an HTTP status other than 200): its gRPC code and message.
    case server(status: Int, code: Int?, message: String)
    /// The answer was not what the gateway writes.
    case malformedResponse(String)
    /// The watch's start revision is compacted: the map must be read again (range).
    case compacted(Int64)
    /// etcd cancelled a watch.
    case watchCanceled(String)
    /// A watch's stream ended (etcd or the connection closed it).
    case streamEnded
    /// The lease is not known (expired, revoked, or etcd lost it).
    case leaseNotFound

    public var description: String {
        switch self {
        case .unreachable(let reason): "etcd unreachable: \(reason)"
        case .server(let status, let code, let message): "etcd answered \(status) (code \(code.map(String.init) ?? "-")): \(message)"
        case .malformedResponse(let reason): "malformed answer from etcd: \(reason)"
        case .compacted(let revision): "watch start revision is compacted (compact revision \(revision))"
        case .watchCanceled(let reason): "etcd cancelled the watch: \(reason)"
        case .streamEnded: "the watch stream ended"
        case .leaseNotFound: "the lease is not known to etcd"
        }
    }
}

/// A key-value pair of the store, the key as text.
struct EtcdKeyValue: Sendable {
    var key: String
    var value: Data
    var modRevision: Int64
}

/// A client of etcd's v3 JSON gateway over AsyncHTTPClient. Endpoints are tried in order, starting
/// with the one that answered last; a transport failure or an "unavailable" answer moves on.
final class EtcdClient: Sendable {
    let endpoints: [String]
    private let http: HTTPClient
    private let logger: Logger
    /// Unary requests (and reading their answers) must complete within this.
    private let requestTimeout: TimeAmount
    /// Index in `endpoints` of the endpoint that answered last.
    private let current = Mutex(0)
    /// Largest unary answer taken.
    private static let answerLimit = 32 << 20

    init(endpoints: [String], tls: TLSConfiguration?, requestTimeout: TimeAmount, logger: Logger) {
        self.endpoints = endpoints.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
        self.requestTimeout = requestTimeout
        self.logger = logger
        // Connecting is bounded by the request timeout too, and a stream (a watch) has no read timeout.
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls,
                                                     timeout: .init(connect: min(requestTimeout, .seconds(2)), read: nil))
        // The gateway over HTTP/1.1: a watch is one long response on its own connection.
        configuration.httpVersion = .http1Only
        configuration.connectionPool = .init(idleTimeout: .seconds(30))
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    /// The endpoint that answered last (or the first, before any did).
    var endpoint: String { endpoints[current.withLock { $0 }] }

    func shutdown() async {
        try? await http.shutdown()
    }

    // MARK: Requests

    func range(prefix: String, revision: Int64?) async throws -> (kvs: [EtcdKeyValue], revision: Int64) {
        let answer: RangeResponse = try await call("/v3/kv/range", RangeRequest(
            key: Base64.encode(prefix), range_end: Base64.prefixEnd(prefix), revision: revision.map(GatewayInt64.init)))
        let kvs = try (answer.kvs ?? []).map(Self.keyValue)
        return (kvs, answer.header?.revision.int64 ?? 0)
    }

    func put(key: String, value: String, lease: Int64) async throws {
        do {
            let _: ResponseHeaderOnly = try await call("/v3/kv/put", PutRequest(
                key: Base64.encode(key), value: Base64.encode(value), lease: GatewayInt64(lease)))
        } catch EtcdError.server(_, _, let message) where message.contains("lease not found") {
            throw EtcdError.leaseNotFound
        }
    }

    func delete(key: String) async throws {
        let _: ResponseHeaderOnly = try await call("/v3/kv/deleterange", DeleteRangeRequest(key: Base64.encode(key)))
    }

    /// Grants a lease of `ttl` seconds: its id.
    func grantLease(ttl: Int) async throws -> Int64 {
        let answer: LeaseGrantResponse = try await call("/v3/lease/grant", LeaseGrantRequest(TTL: GatewayInt64(Int64(ttl))))
        if let error = answer.error, !error.isEmpty { throw EtcdError.server(status: 200, code: nil, message: error) }
        guard let id = answer.ID?.value, id != 0 else { throw EtcdError.malformedResponse("lease grant without an ID") }
        return id
    }

    /// Renews `lease` once: its TTL now; `leaseNotFound` when etcd no longer has it.
    func keepAlive(lease: Int64) async throws -> Int64 {
        // A bidirectional stream on the gateway: one request in, one result out, then the end.
        let body = try await send("/v3/lease/keepalive", body: JSONEncoder().encode(LeaseIDRequest(ID: GatewayInt64(lease))),
                                  timeout: requestTimeout)
        var stream = JSONObjectStream()
        for object in try stream.append(body) {
            let decoded = try Self.decode(StreamedResult<LeaseKeepAliveResponse>.self, object)
            if let result = decoded.result {
                let ttl = result.TTL.int64
                if ttl <= 0 { throw EtcdError.leaseNotFound }
                return ttl
            }
            let error = try Self.decode(GatewayError.self, object)
            throw EtcdError.server(status: 200, code: error.code, message: error.message ?? "keep-alive failed")
        }
        throw EtcdError.malformedResponse("keep-alive answer without a result")
    }

    /// Revokes `lease`: etcd deletes its keys at once. `timeout` per endpoint tried (default: the request timeout).
    func revoke(lease: Int64, timeout: TimeAmount? = nil) async throws {
        do {
            let _: ResponseHeaderOnly = try await call("/v3/lease/revoke", LeaseIDRequest(ID: GatewayInt64(lease)), timeout: timeout)
        } catch EtcdError.server(_, _, let message) where message.contains("lease not found") {
            throw EtcdError.leaseNotFound
        }
    }

    /// Compacts the store's history up to `revision` (tests: a watch resuming before it must read again).
    func compact(revision: Int64) async throws {
        let _: ResponseHeaderOnly = try await call("/v3/kv/compaction", CompactionRequest(revision: GatewayInt64(revision)))
    }

    /// One event of a watch stream.
    enum WatchEvent: Sendable {
        /// etcd created one of the watches; its header's revision.
        case created(revision: Int64)
        case changes([Change])
    }

    enum Change: Sendable {
        case put(EtcdKeyValue)
        case delete(key: String, revision: Int64)
    }

    /// Watches every key under each of `prefixes` from `startRevision` on one stream, calling
    /// `handle` for each answer. Returns never: throws when the stream fails or ends, when etcd
    /// cancels a watch (`compacted` when the revision is gone), or when the task is cancelled.
    func watch(prefixes: [String], startRevision: Int64,
               handle: (WatchEvent) async throws -> Void) async throws {
        let encoder = JSONEncoder()
        var body = Data()
        for prefix in prefixes {
            body.append(try encoder.encode(WatchCreateRequest(create_request: .init(
                key: Base64.encode(prefix), range_end: Base64.prefixEnd(prefix),
                start_revision: GatewayInt64(startRevision)))))
            body.append(UInt8(ascii: "\n"))
        }
        let response = try await open("/v3/watch", body: body)
        var stream = JSONObjectStream()
        for try await chunk in response.body {
            for object in try stream.append(chunk.readableBytesView) {
                let decoded = try Self.decode(StreamedResult<WatchResponse>.self, object)
                guard let result = decoded.result else {
                    let error = try Self.decode(GatewayError.self, object)
                    throw EtcdError.server(status: 200, code: error.code, message: error.message ?? "watch failed")
                }
                let compacted = result.compact_revision.int64
                if compacted > 0 { throw EtcdError.compacted(compacted) }
                if result.canceled == true { throw EtcdError.watchCanceled(result.cancel_reason ?? "no reason given") }
                if result.created == true {
                    try await handle(.created(revision: result.header?.revision.int64 ?? 0))
                }
                if let events = result.events, !events.isEmpty {
                    var changes: [Change] = []
                    for event in events {
                        guard let kv = event.kv else { throw EtcdError.malformedResponse("watch event without kv") }
                        let pair = try Self.keyValue(kv)
                        switch event.type ?? .put {
                        case .put: changes.append(.put(pair))
                        case .delete: changes.append(.delete(key: pair.key, revision: pair.modRevision))
                        case .unknown: throw EtcdError.malformedResponse("watch event of unknown type")
                        }
                    }
                    try await handle(.changes(changes))
                }
            }
        }
        try Task.checkCancellation()
        throw EtcdError.streamEnded
    }

    // MARK: Transport

    private struct ResponseHeaderOnly: Decodable {
        var header: ResponseHeader?
    }

    private func call<Request: Encodable, Answer: Decodable>(_ path: String, _ request: Request,
                                                             timeout: TimeAmount? = nil) async throws -> Answer {
        let body = try await send(path, body: JSONEncoder().encode(request), timeout: timeout ?? requestTimeout)
        return try Self.decode(Answer.self, body)
    }

    /// A unary request: the answer's body when etcd answers 200.
    private func send(_ path: String, body: Data, timeout: TimeAmount) async throws -> [UInt8] {
        try await withEndpoints(path, body: body, timeout: timeout) { response in
            var buffer = try await response.body.collect(upTo: Self.answerLimit)
            return buffer.readBytes(length: buffer.readableBytes) ?? []
        }
    }

    /// A streaming request: the response once its head is in, its body still to read.
    private func open(_ path: String, body: Data) async throws -> HTTPClientResponse {
        try await withEndpoints(path, body: body, timeout: nil) { $0 }
    }

    /// Sends the request to each endpoint in turn, from the one that answered last, until one
    /// answers; an answer other than 200 is an error from etcd (tried elsewhere only when it
    /// says etcd is unavailable there). Each attempt has `timeout` (nil: none, for streams): a
    /// member that hangs costs one timeout, then the next is tried.
    private func withEndpoints<Answer>(_ path: String, body: Data, timeout: TimeAmount?,
                                       _ read: (HTTPClientResponse) async throws -> Answer) async throws -> Answer {
        let first = current.withLock { $0 }
        var lastFailure = "no endpoint"
        for attempt in 0..<endpoints.count {
            try Task.checkCancellation()
            let index = (first + attempt) % endpoints.count
            var request = HTTPClientRequest(url: endpoints[index] + path)
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body))
            let response: HTTPClientResponse
            do {
                response = try await http.execute(request, deadline: timeout.map { .now() + $0 } ?? .distantFuture,
                                                  logger: logger)
            } catch {
                try Task.checkCancellation()
                lastFailure = "\(endpoints[index]): \(error)"
                logger.debug("etcd endpoint failed", metadata: ["etcd.endpoint": "\(endpoints[index])", "error": "\(error)"])
                continue
            }
            if response.status == .ok {
                if index != first { current.withLock { $0 = index } }
                do {
                    return try await read(response)
                } catch let error as EtcdError {
                    throw error
                } catch {
                    try Task.checkCancellation()
                    throw EtcdError.unreachable("\(endpoints[index]): \(error)")
                }
            }
            var errorBody = (try? await response.body.collect(upTo: 1 << 20)) ?? ByteBuffer()
            let bytes = errorBody.readBytes(length: errorBody.readableBytes) ?? []
            let error = try? JSONDecoder().decode(GatewayError.self, from: Data(bytes))
            let message = error?.message ?? String(decoding: bytes.prefix(200), as: UTF8.self)
            // gRPC 14: unavailable (no leader, stopping): another member may serve.
            if error?.code == 14 || response.status.code == 503 {
                lastFailure = "\(endpoints[index]): \(message)"
                continue
            }
            throw EtcdError.server(status: Int(response.status.code), code: error?.code, message: message)
        }
        throw EtcdError.unreachable(lastFailure)
    }

    private static func decode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8]) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(bytes))
        } catch {
            throw EtcdError.malformedResponse("\(T.self): \(error)")
        }
    }

    private static func keyValue(_ kv: GatewayKeyValue) throws -> EtcdKeyValue {
        guard let key = Base64.decode(kv.key), let value = Base64.decode(kv.value) else {
            throw EtcdError.malformedResponse("key or value is not base64")
        }
        return EtcdKeyValue(key: String(decoding: key, as: UTF8.self), value: value, modRevision: kv.mod_revision.int64)
    }
}
