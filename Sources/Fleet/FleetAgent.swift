import Config
import FleetModel
import Foundation
import Logging
import NIOCore
import NIOSSL
import Synchronization

/// Why a `FleetAgent` could not be created.
public enum FleetError: Error, CustomStringConvertible, Sendable {
    /// A TLS file (CA, certificate or key) could not be read or parsed.
    case tlsFile(path: String, reason: String)
    /// A client certificate without its key, or a key without its certificate.
    case incompleteTLS(String)
    /// An endpoint that is not `http://HOST:PORT` or `https://HOST:PORT`.
    case invalidEndpoint(String)

    public var description: String {
        switch self {
        case .tlsFile(let path, let reason): "etcd TLS file \(path): \(reason)"
        case .incompleteTLS(let reason): "etcd TLS: \(reason)"
        case .invalidEndpoint(let endpoint): "etcd endpoint '\(endpoint)' is not http(s)://HOST:PORT"
        }
    }
}

/// This host's member of the fleet: registers the host and its ports in etcd under a lease it
/// keeps alive, watches the fleet map (the hosts, and the segments this host has ports in) and
/// hands each tenant's `FleetView` to the daemon. When etcd is unreachable it keeps the last
/// views, says "disconnected", retries with backoff and catches up when etcd is back.
public final class FleetAgent: Sendable {
    private let settings: FleetSettings
    private let logger: Logger
    private let tls: TLSConfiguration?
    private let state: Mutex<State>
    /// Wakes the registration loop early: the configuration changed.
    private let registrationWakeup = Wakeup()

    private struct State {
        var status: FleetStatus
        var configuration: HostConfiguration?
        var client: EtcdClient?
        var tasks: [Task<Void, Never>] = []
        var mapInbox: AsyncStream<MapInput>.Continuation?
        var lease: Int64?
        var started = false
    }

    /// What the map loop acts on, one at a time.
    private enum MapInput: Sendable {
        case configurationChanged
        /// The registration loop lost etcd: a watch may hang on a dead connection, open it again.
        case connectionLost
        case snapshot(session: Int, prefixes: [String], pairs: [EtcdKeyValue], revision: Int64)
        case watch(session: Int, EtcdClient.WatchEvent)
        case failed(session: Int, any Error)
        case retry(session: Int)
    }

    /// Reads the TLS files (errors name the file) and checks the endpoints; contacts nobody.
    public init(settings: FleetSettings, logger: Logger) throws {
        self.settings = settings
        var logger = logger
        logger[metadataKey: "fleet.host"] = "\(settings.hostId)"
        self.logger = logger
        for endpoint in settings.etcd.endpoints {
            guard let url = URL(string: endpoint), let scheme = url.scheme, ["http", "https"].contains(scheme),
                  url.host != nil else {
                throw FleetError.invalidEndpoint(endpoint)
            }
        }
        if settings.etcd.endpoints.isEmpty { throw FleetError.invalidEndpoint("") }
        tls = try settings.etcd.tls.map(Self.tlsConfiguration)
        state = Mutex(State(status: FleetStatus(hostId: settings.hostId, state: "connecting", since: Self.now())))
    }

    deinit {
        // Normally stop() shut the client down; an agent dropped without it must not leak it.
        let client = state.withLock { state -> EtcdClient? in
            defer { state.client = nil }
            return state.client
        }
        if let client { Task { await client.shutdown() } }
    }

    /// AsyncHTTPClient's TLS configuration for `files`: errors name the file.
    static func tlsConfiguration(_ files: EtcdTLS) throws -> TLSConfiguration {
        var configuration = TLSConfiguration.makeClientConfiguration()
        func read<T>(_ path: String, _ load: (String) throws -> T) throws -> T {
            do { return try load(path) } catch { throw FleetError.tlsFile(path: path, reason: "\(error)") }
        }
        configuration.trustRoots = .certificates(try read(files.caFile) { try NIOSSLCertificate.fromPEMFile($0) })
        switch (files.certFile, files.keyFile) {
        case (let cert?, let key?):
            configuration.certificateChain = try read(cert) { try NIOSSLCertificate.fromPEMFile($0) }.map { .certificate($0) }
            configuration.privateKey = .privateKey(try read(key) { try NIOSSLPrivateKey(file: $0, format: .pem) })
        case (nil, nil):
            break
        case (.some, nil):
            throw FleetError.incompleteTLS("a client certificate needs its key (keyFile)")
        case (nil, .some):
            throw FleetError.incompleteTLS("a client key needs its certificate (certFile)")
        }
        return configuration
    }

    private static func now() -> String { Date().ISO8601Format() }

    private var requestTimeout: TimeAmount {
        // Within a renewal interval (TTL/3), so a hung request cannot outlast the lease.
        .milliseconds(Int64(min(max(settings.leaseSeconds * 1000 / 3, 1000), 5000)))
    }

    /// Registers this host and `configuration`'s ports under a lease it keeps alive, watches the
    /// segments it has ports in, and calls `onViews` (serially, from its own task) with the views
    /// of every tenant that has a segment with a vni, whenever any of them changes; once at start
    /// with empty views (FleetView.empty) before etcd has answered. A second call does nothing.
    public func start(configuration: HostConfiguration, onViews: @escaping @Sendable ([String: FleetView]) -> Void) {
        let client = EtcdClient(endpoints: settings.etcd.endpoints, tls: tls, requestTimeout: requestTimeout, logger: logger)
        let (inbox, continuation) = AsyncStream.makeStream(of: MapInput.self)
        let begun = state.withLock { state -> Bool in
            guard !state.started else { return false }
            state.started = true
            state.configuration = configuration
            state.client = client
            state.mapInbox = continuation
            state.status.endpoint = client.endpoint
            state.tasks = [
                Task { await self.runMap(client: client, inbox: inbox, continuation: continuation, onViews: onViews) },
                Task { await self.runRegistration(client: client) },
            ]
            return true
        }
        if !begun {
            continuation.finish()
            Task { await client.shutdown() }
        }
    }

    /// The applied configuration changed: publish new/changed ports, delete removed ones, watch new segments.
    public func update(configuration: HostConfiguration) async {
        let inbox = state.withLock { state -> AsyncStream<MapInput>.Continuation? in
            state.configuration = configuration
            return state.mapInbox
        }
        inbox?.yield(.configurationChanged)
        registrationWakeup.signal()
    }

    /// The agent's state now: connection, lease, revision, remote hosts, problems.
    public func status() -> FleetStatus {
        state.withLock { $0.status }
    }

    /// Revokes the lease (other hosts drop this host's ports at once) and stops. The revocation is
    /// best effort (one second per endpoint): unrevoked, the lease expires in its TTL. `onViews`
    /// is not called once this returns.
    public func stop() async {
        await finish(revoke: true)
    }

    /// Stops without revoking the lease, as if the process died: for tests of lease expiry.
    func abandon() async {
        await finish(revoke: false)
    }

    private func finish(revoke: Bool) async {
        let (tasks, client, inbox) = state.withLock { state in
            defer { state.tasks = []; state.client = nil; state.mapInbox = nil }
            return (state.tasks, state.client, state.mapInbox)
        }
        inbox?.finish()
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
        guard let client else { return }
        let lease = state.withLock { state in
            defer { state.lease = nil; state.status.lease = nil }
            return state.lease
        }
        if revoke, let lease {
            do {
                try await client.revoke(lease: lease, timeout: .seconds(1))
                logger.info("fleet lease revoked")
            } catch {
                logger.warning("fleet lease not revoked; it expires in its TTL",
                               metadata: ["error": "\(error)", "fleet.leaseSeconds": "\(settings.leaseSeconds)"])
            }
        }
        await client.shutdown()
    }

    // MARK: Connection state

    /// A request failed: the first failure of an outage says so (warning), the rest are debug.
    /// True when this failure began the outage.
    @discardableResult
    private func connectionFailed(_ error: any Error) -> Bool {
        let began = state.withLock { state -> Bool in
            state.status.lastError = "\(error)"
            guard state.status.state != "disconnected" else { return false }
            state.status.state = "disconnected"
            state.status.since = Self.now()
            return true
        }
        if began {
            logger.warning("fleet: etcd unreachable; keeping the last fleet map and retrying", metadata: ["error": "\(error)"])
        } else {
            logger.debug("fleet: etcd still unreachable", metadata: ["error": "\(error)"])
        }
        return began
    }

    private func caughtUp(endpoint: String, revision: Int64) {
        let changed = state.withLock { state -> Bool in
            state.status.endpoint = endpoint
            guard state.status.state != "connected" else { return false }
            state.status.state = "connected"
            state.status.since = Self.now()
            return true
        }
        if changed {
            logger.info("fleet map caught up", metadata: ["etcd.endpoint": "\(endpoint)", "etcd.revision": "\(revision)"])
        }
    }

    // MARK: The map

    private func runMap(client: EtcdClient, inbox: AsyncStream<MapInput>, continuation: AsyncStream<MapInput>.Continuation,
                        onViews: @Sendable ([String: FleetView]) -> Void) async {
        let prefix = settings.etcd.prefix
        let hostId = settings.hostId
        var map = FleetMap(prefix: prefix)
        var delivered: [String: FleetView]?
        var revision: Int64 = 0
        // The prefixes `map` holds a consistent copy of (nil: it must be read again).
        var synced: [String]?
        var session = 0
        var sessionPrefixes: [String] = []
        var sessionTask: Task<Void, Never>?
        var retryTask: Task<Void, Never>?
        var created = 0
        var backoff = Backoff()

        func publish() {
            guard let configuration = state.withLock({ $0.configuration }) else { return }
            let (views, problems) = map.views(configuration: configuration, localHost: hostId)
            let remote = map.remoteHosts(localHost: hostId)
            state.withLock { state in
                state.status.revision = revision
                state.status.remoteHosts = remote
                state.status.problems = Array(problems.prefix(FleetStatus.problemLimit))
            }
            if views != delivered {
                delivered = views
                onViews(views)
            }
        }

        func startSession() {
            sessionTask?.cancel()
            retryTask?.cancel()
            retryTask = nil
            session += 1
            created = 0
            let configuration = state.withLock { $0.configuration }
            let prefixes = configuration.map { FleetMap.watchedPrefixes(prefix: prefix, configuration: $0) }
                ?? [FleetKeys.hosts(prefix: prefix)]
            sessionPrefixes = prefixes
            let needsRange = synced != prefixes
            let start = revision + 1
            let id = session
            sessionTask = Task {
                do {
                    var from = start
                    if needsRange {
                        // One revision for every prefix: a consistent copy.
                        var pairs: [EtcdKeyValue] = []
                        var at: Int64?
                        for watched in prefixes {
                            let answer = try await client.range(prefix: watched, revision: at)
                            if at == nil { at = answer.revision }
                            pairs += answer.kvs
                        }
                        let snapshot = at ?? 0
                        continuation.yield(.snapshot(session: id, prefixes: prefixes, pairs: pairs, revision: snapshot))
                        from = snapshot + 1
                    }
                    try await client.watch(prefixes: prefixes, startRevision: from) { event in
                        continuation.yield(.watch(session: id, event))
                    }
                } catch {
                    if !Task.isCancelled { continuation.yield(.failed(session: id, error)) }
                }
            }
        }

        publish()
        startSession()
        for await input in inbox {
            switch input {
            case .configurationChanged:
                publish()
                let configuration = state.withLock { $0.configuration }
                let prefixes = configuration.map { FleetMap.watchedPrefixes(prefix: prefix, configuration: $0) } ?? []
                // A new segment to watch: read the map again (a failed session retries on its own).
                if prefixes != sessionPrefixes && retryTask == nil { startSession() }
            case .connectionLost:
                if retryTask == nil { startSession() }
            case .snapshot(let id, let prefixes, let pairs, let at) where id == session:
                map.replace(with: pairs)
                revision = at
                synced = prefixes
                publish()
            case .watch(let id, .created(let at)) where id == session:
                created += 1
                if created == sessionPrefixes.count {
                    backoff.reset()
                    caughtUp(endpoint: client.endpoint, revision: max(revision, at))
                }
            case .watch(let id, .changes(let changes)) where id == session:
                for change in changes {
                    switch change {
                    case .put(let pair):
                        map.put(key: pair.key, value: pair.value)
                        revision = max(revision, pair.modRevision)
                    case .delete(let key, let at):
                        map.delete(key: key)
                        revision = max(revision, at)
                    }
                }
                publish()
            case .failed(let id, let error) where id == session:
                if let etcdError = error as? EtcdError, case .compacted(let compactRevision) = etcdError {
                    logger.info("fleet watch revision compacted; reading the map again",
                                metadata: ["etcd.revision": "\(revision)", "etcd.compactRevision": "\(compactRevision)"])
                    synced = nil
                    startSession()
                    break
                }
                connectionFailed(error)
                let delay = backoff.next()
                retryTask = Task {
                    try? await Task.sleep(for: delay)
                    if !Task.isCancelled { continuation.yield(.retry(session: id)) }
                }
            case .retry(let id) where id == session:
                startSession()
            default:
                break  // an answer of a session given up since
            }
        }
        sessionTask?.cancel()
        retryTask?.cancel()
        await sessionTask?.value
    }

    // MARK: Registration

    /// The keys and values this host publishes for `configuration`.
    private func records(of configuration: HostConfiguration) -> [String: String] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let prefix = settings.etcd.prefix
        func json<T: Encodable>(_ value: T) -> String {
            // Encoding these plain records cannot fail; an empty value would show up as malformed.
            (try? encoder.encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? ""
        }
        var records = [FleetKeys.host(prefix: prefix, hostId: settings.hostId):
            json(FleetHostRecord(hostId: settings.hostId, underlay: settings.underlayAddress.description))]
        for port in FleetPortRecord.records(of: configuration, hostId: settings.hostId) {
            records[FleetKeys.port(prefix: prefix, tenant: port.tenant, segment: port.segment, host: port.host,
                                   port: port.port)] = json(port)
        }
        return records
    }

    private func runRegistration(client: EtcdClient) async {
        let interval = Duration.milliseconds(max(settings.leaseSeconds * 1000 / 3, 100))
        let clock = ContinuousClock()
        var lease: Int64?
        // What etcd holds under `lease`: key -> value.
        var published: [String: String] = [:]
        var renewed = clock.now
        var backoff = Backoff()
        while !Task.isCancelled {
            do {
                if let held = lease {
                    if clock.now - renewed >= interval {
                        _ = try await client.keepAlive(lease: held)
                        renewed = clock.now
                    }
                } else {
                    let granted = try await client.grantLease(ttl: settings.leaseSeconds)
                    renewed = clock.now
                    lease = granted
                    published = [:]
                    state.withLock { state in
                        state.lease = granted
                        state.status.lease = String(granted, radix: 16)
                    }
                    logger.info("fleet lease granted", metadata: ["fleet.lease": "\(String(granted, radix: 16))",
                                                                  "fleet.leaseSeconds": "\(settings.leaseSeconds)"])
                }
                guard let held = lease, let configuration = state.withLock({ $0.configuration }) else { break }
                let desired = records(of: configuration)
                for key in desired.keys.sorted() where published[key] != desired[key] {
                    guard let value = desired[key] else { continue }
                    try await client.put(key: key, value: value, lease: held)
                    published[key] = value
                }
                for key in published.keys.sorted() where desired[key] == nil {
                    try await client.delete(key: key)
                    published[key] = nil
                }
                backoff.reset()
                await registrationWakeup.wait(timeout: interval - (clock.now - renewed))
            } catch EtcdError.leaseNotFound {
                logger.warning("fleet lease lost (expired or unknown to etcd); registering again")
                lease = nil
                state.withLock { state in
                    state.lease = nil
                    state.status.lease = nil
                }
            } catch {
                if Task.isCancelled { break }
                if connectionFailed(error) {
                    // The watch may sit on a connection that died silently: have it reopened.
                    _ = state.withLock { $0.mapInbox }?.yield(.connectionLost)
                }
                await registrationWakeup.wait(timeout: backoff.next())
            }
        }
    }
}
