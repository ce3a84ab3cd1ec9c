import Config
import HostOS
import PartitionProcess
import Logging
import Foundation
import ServiceLifecycle
import Synchronization
import Switch
import SwitchEngine
import UnixSignals
import Audit
import Management
import ManagementModel
import Observability

/// A startup failure, said so that an operator knows what to fix.
struct DaemonError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// `bulkhead run`: owns the state directory and the kernel objects of the switch's ports (TAP
/// devices, namespaces), runs the jailed children (a switch and a block server per tenant, a
/// VMM per partition) under one supervisor until SIGTERM or SIGINT, applies a changed
/// configuration on SIGHUP, then removes everything it created.
struct Daemon {
    let configuration: HostConfiguration
    /// The configuration's text, as read.
    let configurationText: String
    let configPath: String
    /// Passed on to the children.
    let logLevel: String
    let logger: Logger

    func run() async throws {
        let state = configuration.host.stateDirectory
        do { try StateFiles.makeDirectories(state) } catch {
            throw DaemonError("cannot create state directory \(state): \(error)")
        }
        let lock: StateDirectoryLock
        do { lock = try StateDirectoryLock(path: state + "/bulkhead.lock") } catch {
            throw DaemonError("\(error)")
        }
        let preconditions = HostPreconditions.check(configuration)
        for missing in preconditions.missing {
            logger.critical("host precondition not met: \(missing)")
        }
        guard preconditions.missing.isEmpty else {
            throw DaemonError("\(preconditions.missing.count) host precondition(s) not met: "
                + preconditions.missing.joined(separator: "; "))
        }
        let auditPath = configuration.host.auditLogPath
        let auditLog: AuditLog
        do {
            try FileManager.default.createDirectory(atPath: (auditPath as NSString).deletingLastPathComponent,
                                                    withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            // The whole chain is checked: a daemon does not append to a log someone changed.
            auditLog = try AuditLog(path: auditPath, headPath: AuditLog.defaultHeadPath(forLog: auditPath), verifyingChain: true)
        } catch {
            throw DaemonError("the audit log \(auditPath) cannot be used: \(error). Nothing is started without an intact "
                + "audit log: check it with `bulkhead audit verify \(auditPath)`, and move it aside to start a new one")
        }
        let audit = AuditTrail(logger: logger, log: auditLog)
        // Platform integrity: what runs and what it was told, before anything starts.
        let executableDigest = SelfMeasurement.executableDigest()
        try audit.daemonStarted(executableDigest: executableDigest,
                                configurationDigest: SelfMeasurement.digest(Array(configurationText.utf8)),
                                configPath: configPath)

        // Resource isolation: a cgroup v2 group per child, or a fallback that says why not.
        let cgroups: CGroupTree?
        let cgroupStatus: CgroupStatus
        switch CGroupTree.prepare() {
        case .success(let tree):
            cgroups = tree
            cgroupStatus = .enabled(path: tree.root)
            logger.info("children run in cgroups of their own", metadata: [
                "cgroup.root": "\(tree.root)", "cgroup.controllers": "\(tree.controllers.sorted().map(\.rawValue).joined(separator: ","))",
            ])
            audit.note(AuditEvent(principal: AuditEvent.daemonPrincipal, action: "daemon.cgroups", target: "",
                                  outcome: .allowed, detail: ["root": tree.root]))
        case .failure(let reason):
            cgroups = nil
            cgroupStatus = .disabled(reason: reason.description)
            logger.warning("children run WITHOUT resource limits: \(reason)")
            audit.note(AuditEvent(principal: AuditEvent.daemonPrincipal, action: "daemon.cgroups", target: "",
                                  outcome: .failed(reason: "not limiting children: \(reason)")))
        }
        let runtime: HostRuntime
        do {
            runtime = try await HostRuntime.start(configuration: configuration, text: configurationText,
                                                  logLevel: logLevel, cgroups: cgroups, audit: audit, logger: logger)
        } catch {
            throw DaemonError("\(error)")
        }
        logger.info("bulkhead ready", metadata: [
            "tenants": "\(configuration.tenants.count)", "switch.workers": "\(runtime.workers)",
            "status": "\(state)/status.json",
        ])
        let reload = ReloadOnHangup(configPath: configPath, runtime: runtime, logger: logger)
        let backend = DaemonBackend(runtime: runtime, audit: audit, started: Date(), executableDigest: executableDigest,
                                    cgroups: cgroupStatus)
        var services: [any Service] = [runtime.supervisor, reload]
        do {
            services.append(try managementServer(backend))
            if let metrics = try metricsServer(backend) { services.append(metrics) }
        } catch {
            await runtime.teardown()
            throw DaemonError("\(error)")
        }
        let group = ServiceGroup(
            services: services,
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger)
        do {
            try await group.run()
        } catch {
            logger.error("service group failed", metadata: ["error": "\(error)"])
        }
        await runtime.teardown()
        try? audit.daemonStopped()
        lock.unlock()
        logger.info("bulkhead stopped; every link and namespace it created is removed")
    }
}

extension Daemon {
    /// The management API on `host.controlSocket`: its directory is created, and a state
    /// directory that holds it becomes passable (0711) so that principals other than root reach it.
    func managementServer(_ backend: DaemonBackend) throws -> ManagementServer {
        let path = configuration.host.controlSocketPath
        let directory = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        if directory == configuration.host.stateDirectory {
            try StateFiles.setOwner(directory, uid: 0, gid: 0, mode: 0o711)
        }
        logger.info("management API listening", metadata: ["socket": "\(path)",
                                                           "socket.group": "\(configuration.host.controlSocketGroup ?? 0)"])
        return ManagementServer(socketPath: path, socketGroup: configuration.host.controlSocketGroup, backend: backend,
                                record: { try backend.record($0) }, logger: logger)
    }

    /// The Prometheus endpoint at `host.metrics`, if the configuration names one.
    func metricsServer(_ backend: DaemonBackend) throws -> MetricsServer? {
        guard let text = configuration.host.metrics else { return nil }
        let address = try MetricsListenAddress.parse(text)
        logger.info("metrics endpoint listening", metadata: ["metrics": "\(address)"])
        return MetricsServer(address: address, socketAccess: .init(group: configuration.host.controlSocketGroup, mode: 0o660),
                             logger: logger, snapshot: { await backend.metrics() })
    }
}

/// SIGHUP: the configuration file is read again and applied by the same rules as the
/// management API's apply (validated, compared, only what differs changes; an invalid file
/// changes nothing).
struct ReloadOnHangup: Service {
    let configPath: String
    let runtime: HostRuntime
    let logger: Logger

    func run() async throws {
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        await withGracefulShutdownHandler {
            for await _ in hangups.cancelOnGracefulShutdown() {
                logger.notice("SIGHUP: reading the configuration again", metadata: ["config": "\(configPath)"])
                let text: String
                do { text = try String(contentsOfFile: configPath, encoding: .utf8) } catch {
                    logger.error("SIGHUP: cannot read the configuration; nothing changed", metadata: ["error": "\(error)"])
                    await runtime.recordReloadUnreadable(path: configPath, error: "\(error)")
                    continue
                }
                let outcome = await runtime.apply(text: text, file: configPath, dryRun: false,
                                                  by: .daemon(action: "config.reload"))
                switch outcome {
                case .applied(let changes):
                    logger.notice("SIGHUP: configuration applied", metadata: ["changes": "\(changes.isEmpty ? "none" : changes.joined(separator: "; "))"])
                case .invalid(let error):
                    logger.error("SIGHUP: the configuration is invalid; nothing changed\n\(error)")
                case .failed(let reason):
                    logger.error("SIGHUP: the configuration was not applied: \(reason)")
                }
            }
        } onGracefulShutdown: {}
    }
}

/// The daemon's side of one run of a tenant's switch: hands it the tenant's ports (TAP queues,
/// the same fds each time it is restarted, so the tenant endpoints keep their links; vhost-user
/// listening sockets), then records the counters it reports until it exits.
struct SwitchAttachment {
    let tenant: String
    let configuration: Tenant
    let ports: [(interface: String, handle: SwitchPortHandle)]
    /// With a fleet: the tenant's underlay socket and fleet views go to the switch too.
    let fleet: FleetRuntime?
    let board: StatusBoard
    let logger: Logger

    func run(_ control: borrowing UnixStream, pid: Int32) {
        var link: SwitchLink? = nil
        defer {
            if let link { fleet?.detach(tenant: tenant, link: link) }
            board.switchEnded(tenant: tenant)
        }
        var logger = self.logger
        logger[metadataKey: "switch.pid"] = "\(pid)"
        do {
            for (index, port) in ports.enumerated() {
                try control.send(.port(index: index, interface: port.interface), fds: port.handle.descriptors)
            }
            if let fleet { link = try fleet.attach(tenant: configuration, control: control) }
            try control.send(.start)
        } catch {
            logger.error("could not hand the switch its ports", metadata: ["error": "\(error)"])
            return
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: ChildSupervisor.controlBufferBytes, alignment: 8)
        defer { buffer.deallocate() }
        while true {
            let byteCount: Int
            do { byteCount = try control.receive(into: buffer, maxFDs: 0).byteCount } catch {
                logger.error("the switch's control socket failed", metadata: ["error": "\(error)"])
                return
            }
            if byteCount == 0 { return }  // the switch exited
            let message: SwitchControlMessage
            do { message = try SwitchControlMessage.decode(UnsafeRawBufferPointer(rebasing: buffer[..<byteCount])) } catch {
                logger.error("unreadable message from the switch; stopping it", metadata: ["error": "\(error)"])
                return
            }
            switch message {
            case .ready(let workers):
                logger.info("switch forwarding", metadata: ["switch.workers": "\(workers)"])
            case .statistics(let statistics):
                board.report(tenant: tenant, statistics)
            case .port, .start, .uplink, .fleet:
                logger.error("the switch sent a daemon's message; stopping it", metadata: ["message": "\(message)"])
                return
            }
        }
    }
}

/// What the daemon holds for one switch port and hands to every switch it starts.
enum SwitchPortHandle: Sendable {
    /// The TAP device's queues.
    case tap(TapPort)
    /// The vhost-user-net port's listening socket.
    case vhostUser(SharedListener)

    var descriptors: [Int32] {
        switch self {
        case .tap(let port): port.queueFDs
        case .vhostUser(let listener): [listener.rawValue]
        }
    }
}

/// The listening sockets of the vhost-user-net ports: bound by the daemon (the jailed switch
/// cannot create files) at `<stateDirectory>/tenants/<tenant>/net/<port>.sock`, mode 0660, owned
/// by root and the tenant's jail group, in a directory only root and that group can enter: the
/// daemon and the tenant's own VMM can connect, no other tenant's process can. (The status file
/// is 0600: the state directory becomes passable by anyone.)
enum VhostUserSockets {
    /// Port id to listener, for every vhost-user port of `tenant` (of `only`, when given).
    static func listen(_ tenant: Tenant, only: Set<String>? = nil, stateDirectory state: String, jailUids: JailUidRecord,
                       logger: Logger) throws -> [String: SharedListener] {
        var listeners: [String: SharedListener] = [:]
        let ports = tenant.ports.filter { $0.kind == .vhostUser && (only?.contains($0.id) ?? true) }
        guard !ports.isEmpty else { return listeners }
        guard let group = jailUids.uid(ofTenant: tenant.id) else {
            throw DaemonError("tenant \(tenant.id) has no jail uid recorded")
        }
        // The way in for a VMM running as the tenant's uid: the state directory and `tenants`
        // may be passed through (not listed) by anyone, a tenant's directory only by its group,
        // its `net` read by its group; everything else there stays root's.
        try StateFiles.makeDirectories("\(state)/tenants", mode: 0o700)
        try StateFiles.setOwner(state, uid: 0, gid: 0, mode: 0o711)
        try StateFiles.setOwner("\(state)/tenants", uid: 0, gid: 0, mode: 0o711)
        let directory = "\(state)/tenants/\(tenant.id)/net"
        try StateFiles.makeDirectories(directory, mode: 0o700)
        try StateFiles.setOwner("\(state)/tenants/\(tenant.id)", uid: 0, gid: group, mode: 0o710)
        try StateFiles.setOwner(directory, uid: 0, gid: group, mode: 0o750)
        for port in ports {
            let path = port.vhostUserSocketPath(stateDirectory: state, tenant: tenant.id)
            listeners[port.id] = try SharedListener(listeningAt: path, group: group, mode: 0o660)
            logger.info("vhost-user port ready", metadata: [
                "tenant.id": "\(tenant.id)", "port.id": "\(port.id)", "socket": "\(path)",
            ])
        }
        return listeners
    }
}

/// The switches' counters across their restarts, tenant by tenant, and the status file they
/// are written to: a restarted switch counts from zero, and the daemon adds what the earlier
/// ones had counted, so the status file's counters never go back.
final class StatusBoard: Sendable {
    private struct Tenant {
        var carried: SwitchStatistics?
        var last: SwitchStatistics?
        var total: SwitchStatistics? { last.map { last in carried.map { last.adding($0) } ?? last } ?? carried }
    }
    private let state = Mutex<(order: [String], tenants: [String: Tenant])>(([], [:]))
    private let file: Mutex<StatusFile>

    init(file: StatusFile) { self.file = Mutex(file) }

    /// The tenants in the order the status file lists them (the configuration's).
    func setOrder(_ tenants: [String]) { state.withLock { $0.order = tenants } }

    /// Records a running switch's report and rewrites the status file.
    func report(tenant: String, _ statistics: SwitchStatistics) {
        // The tenant's VXLAN uplink is listed as one more of its ports ("uplink", interface
        // "vxlan"): the API's counters, the metrics and the status file show it with the others.
        var statistics = statistics
        if let uplink = statistics.uplink {
            statistics.ports.append(uplink)
            statistics.uplink = nil
        }
        state.withLock { $0.tenants[tenant, default: Tenant()].last = statistics }
        let snapshot = self.statistics()
        file.withLock { $0.write(snapshot) }
    }

    /// The tenant's running switch has exited: what it counted last is carried into the totals.
    func switchEnded(tenant: String) {
        state.withLock { s in
            guard var t = s.tenants[tenant] else { return }
            if let last = t.last { t.carried = t.carried.map { last.adding($0) } ?? last }
            t.last = nil
            s.tenants[tenant] = t
        }
    }

    /// Forgets a removed tenant's counters (or a tenant whose ports changed: its switch's
    /// ports differ, so its totals start again).
    func forget(tenant: String) {
        state.withLock { _ = $0.tenants.removeValue(forKey: tenant) }
    }

    /// Every tenant's totals since the daemon started, tenants in configuration order.
    func statistics() -> SwitchStatistics {
        state.withLock { s in
            var ports: [PortStatistics] = []
            var segments: [SegmentStatistics] = []
            for id in s.order {
                guard let total = s.tenants[id]?.total else { continue }
                ports += total.ports
                segments += total.segments
            }
            return SwitchStatistics(ports: ports, segments: segments)
        }
    }
}

extension SwitchStatistics {
    /// These counters plus `earlier`'s, port by port (the same configuration, so the same ports
    /// in the same order); gauges (MAC table entries) stay this snapshot's.
    func adding(_ earlier: SwitchStatistics) -> SwitchStatistics {
        var sum = self
        for i in sum.ports.indices where i < earlier.ports.count && earlier.ports[i].interface == sum.ports[i].interface {
            let before = earlier.ports[i]
            sum.ports[i].rx.frames &+= before.rx.frames
            sum.ports[i].rx.bytes &+= before.rx.bytes
            sum.ports[i].tx.frames &+= before.tx.frames
            sum.ports[i].tx.bytes &+= before.tx.bytes
            sum.ports[i].macLearning.learned &+= before.macLearning.learned
            sum.ports[i].macLearning.refused &+= before.macLearning.refused
            sum.ports[i].drops.merge(before.drops) { $0 &+ $1 }
        }
        return sum
    }
}
