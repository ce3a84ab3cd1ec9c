import Config
import FleetModel
import Foundation
import HostOS
import Logging
import ManagementModel
import PartitionProcess
import Switch
import SwitchEngine

/// Who asked for a change: the daemon itself (SIGHUP) or a principal through the management API.
enum Caller: Sendable {
    case daemon(action: String)
    case principal(name: String, uid: UInt32, action: String)

    var name: String {
        switch self {
        case .daemon: "bulkhead"
        case .principal(let name, _, _): name
        }
    }
    var uid: UInt32? {
        switch self {
        case .daemon: nil
        case .principal(_, let uid, _): uid
        }
    }
    var action: String {
        switch self {
        case .daemon(let action), .principal(_, _, let action): action
        }
    }
}

/// The daemon's running host: the applied configuration, the kernel objects of the ports, and
/// the children. Every change goes through here, one at a time: start, apply, partition
/// lifecycle, teardown.
actor HostRuntime {
    nonisolated let supervisor: ChildSupervisor
    nonisolated let board: StatusBoard
    nonisolated let workers: Int
    /// The host's part in a fleet (`host.fleet`); nil when it runs alone.
    nonisolated let fleet: FleetRuntime?
    private(set) var configuration: HostConfiguration
    /// The applied document's text: what the children read (`appliedPath`) and the API shows.
    private(set) var text: String { didSet { textDigest = SelfMeasurement.digest(Array(text.utf8)) } }
    /// SHA-256 of `text`, taken once per change (the API's status shows it on every call).
    private(set) var textDigest: String
    private var network: PortNetwork
    /// Tenant id to port id to the listening socket of each vhost-user port.
    private var listeners: [String: [String: SharedListener]] = [:]
    private var jailUids: JailUidRecord
    private let appliedPath: String
    private let vmm: String
    private let logLevel: String
    private let audit: AuditTrail
    private let logger: Logger
    private var applying = false

    private init(configuration: HostConfiguration, text: String, network: consuming PortNetwork, jailUids: JailUidRecord,
                 vmm: String, logLevel: String, cgroups: CGroupTree?, fleet: FleetRuntime?, audit: AuditTrail, logger: Logger) {
        self.configuration = configuration
        self.fleet = fleet
        self.text = text
        textDigest = SelfMeasurement.digest(Array(text.utf8))
        self.network = network
        self.jailUids = jailUids
        self.vmm = vmm
        self.logLevel = logLevel
        self.audit = audit
        self.logger = logger
        let state = configuration.host.stateDirectory
        appliedPath = state + "/applied.json"
        workers = configuration.host.switchSettings.resolvedWorkers(onlineCores: onlineProcessorCount())
        let statusFile = StatusFile(path: state + "/status.json", logger: logger)
        if let fleet {
            statusFile.fleetStatus = { @Sendable () -> FleetStatus? in fleet.status() }
        }
        board = StatusBoard(file: statusFile)
        supervisor = ChildSupervisor(logger: logger, cgroups: cgroups, events: { audit.childEvent($0) })
    }

    /// Records the jail uids, sets up every tenant's ports and adds every child (they start when
    /// the supervisor runs). On failure, what was set up is removed.
    static func start(configuration: HostConfiguration, text: String, logLevel: String, cgroups: CGroupTree?,
                      audit: AuditTrail, logger: Logger) async throws -> HostRuntime {
        let state = configuration.host.stateDirectory
        // Every tenant's jail uid is recorded before any child starts (each also reads it).
        let (record, added) = try JailUids.allocate(configuration)
        if !added.isEmpty {
            logger.info("jail uids recorded", metadata: [
                "keys": "\(added.joined(separator: ","))", "record": "\(JailUids.path(stateDirectory: state))",
            ])
        }
        let vmm: String
        do { vmm = try ChildProcess.sibling("bulkhead-vmm") } catch {
            throw DaemonError("cannot locate bulkhead-vmm next to bulkhead: \(error)")
        }
        let network = PortNetwork(stateDirectory: state, logger: logger)
        do { try network.recoverFromUncleanExit() } catch {
            throw DaemonError("removing what an earlier run left failed: \(error)")
        }
        // The underlay sockets are bound, and steered, before any switch starts.
        var fleet: FleetRuntime? = nil
        if let settings = configuration.host.fleet {
            let runtime = try FleetRuntime(settings: settings, logger: logger)
            try runtime.steer(configuration)
            fleet = runtime
        }
        let runtime = HostRuntime(configuration: configuration, text: text, network: network, jailUids: record,
                                  vmm: vmm, logLevel: logLevel, cgroups: cgroups, fleet: fleet, audit: audit, logger: logger)
        try await runtime.bringUp()
        fleet?.start(configuration: configuration)
        return runtime
    }

    private func bringUp() throws {
        do {
            try StateFiles.writeAtomically(appliedPath, contents: text, mode: 0o600)
            board.setOrder(configuration.tenants.map(\.id))
            for tenant in configuration.tenants { try startTenant(tenant) }
        } catch {
            network.teardown()
            listeners = [:]
            throw DaemonError("setting up ports failed: \(error)")
        }
    }

    /// Stops nothing (the supervisor has stopped the children); removes every port and socket.
    func teardown() async {
        // The lease is revoked first: the other hosts stop sending here at once.
        await fleet?.stop()
        network.teardown()
        listeners = [:]
    }

    // MARK: Tenants

    private func startTenant(_ tenant: Tenant) throws {
        try network.provision(tenant, workers: workers)
        listeners[tenant.id] = try VhostUserSockets.listen(tenant, stateDirectory: configuration.host.stateDirectory,
                                                           jailUids: jailUids, logger: logger)
        try addSwitch(tenant)
        addBlockServer(tenant)
        for partition in tenant.partitions { addPartition(partition, of: tenant) }
    }

    private func stopTenant(_ id: String) async {
        for state in supervisor.states() where state.tenant == id {
            await supervisor.remove(state.key)
        }
        network.remove(tenant: id)
        listeners[id] = nil
        board.forget(tenant: id)
    }

    /// The tenant's switch, with its TAP queues and vhost-user listeners in the order of its
    /// forwarding plane (the switch builds the same plane from the same document).
    private func addSwitch(_ tenant: Tenant) throws {
        guard !tenant.ports.isEmpty else { return }
        var only = configuration
        only.tenants = [tenant]
        let plane = ForwardingPlane(configuration: only)
        let taps = Dictionary(network.ports.filter { $0.tenant == tenant.id }.map { ($0.port, $0) },
                              uniquingKeysWith: { first, _ in first })
        let sockets = listeners[tenant.id] ?? [:]
        let ports: [(interface: String, handle: SwitchPortHandle)] = plane.ports.compactMap { port in
            if let tap = taps[port.port] { return (port.interfaceName, .tap(tap)) }
            if let listener = sockets[port.port] { return (port.interfaceName, .vhostUser(listener)) }
            return nil
        }
        guard ports.count == plane.ports.count else {
            throw DaemonError("a port of tenant \(tenant.id) has no TAP device or socket; this is a bug")
        }
        let attachment = SwitchAttachment(tenant: tenant.id, configuration: tenant, ports: ports, fleet: fleet, board: board,
                                          logger: tenantLogger(tenant.id))
        supervisor.add(ChildSpec(
            key: ChildSpec.key(.switch, tenant: tenant.id), kind: .switch, tenant: tenant.id,
            name: "switch", metadata: ["tenant.id": "\(tenant.id)"],
            arguments: ["switch", "--config", appliedPath, "--tenant", tenant.id, "--workers", "\(workers)",
                        "--log-level", logLevel],
            attach: { control, pid in attachment.run(control, pid: pid) },
            limits: configuration.switchLimits(of: tenant).cgroup))
    }

    private func addBlockServer(_ tenant: Tenant) {
        guard !tenant.volumes.isEmpty else { return }
        supervisor.add(ChildSpec(
            key: ChildSpec.key(.blockServer, tenant: tenant.id), kind: .blockServer, tenant: tenant.id,
            name: "block server", metadata: ["tenant.id": "\(tenant.id)"],
            arguments: ["block-server", "--config", appliedPath, "--tenant", tenant.id, "--stop-when-stdin-closes"],
            attach: nil, limits: configuration.blockServerLimits(of: tenant).cgroup))
    }

    /// A partition's VMM; before every start its boot files are measured (and the result
    /// audited), and a mismatch keeps it down.
    private func addPartition(_ partition: Partition, of tenant: Tenant) {
        let policy = partition.restart
        let target = "\(tenant.id)/\(partition.id)"
        let audit = self.audit
        supervisor.add(ChildSpec(
            key: ChildSpec.key(.partition, tenant: tenant.id, partition: partition.id), kind: .partition,
            tenant: tenant.id, partition: partition.id,
            name: "partition \(partition.id)", metadata: ["tenant.id": "\(tenant.id)", "partition.id": "\(partition.id)"],
            arguments: ["--config", appliedPath, "--tenant", tenant.id, "--id", partition.id,
                        "--log-level", logLevel, "--stop-when-stdin-closes"],
            executable: vmm,
            attach: nil,
            restartsAfter: { policy.restarts(after: PartitionExit.ending($0)) },
            preflight: {
                let report = LaunchMeasurement.measure(partition)
                audit.launchMeasured(target: target, report: report)
                return report.refusal.map { "measured launch refused: \($0)" }
            },
            limits: configuration.limits(of: partition).cgroup))
    }

    /// Sets up TAP ports whose earlier devices (a changed port's, same name) go only once the
    /// last descriptor of their queues is closed: by the stopped switch's side as it is
    /// released. Tried again for up to 5 s before the apply fails.
    private func provisionAgain(_ tenant: Tenant, only: Set<String>) async throws {
        let deadline = ContinuousClock.now + .seconds(5)
        while true {
            do {
                try network.provision(tenant, only: only, workers: workers)
                return
            } catch {
                guard ContinuousClock.now < deadline else { throw error }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }

    private func tenantLogger(_ id: String) -> Logger {
        var logger = self.logger
        logger[metadataKey: "tenant.id"] = "\(id)"
        return logger
    }

    // MARK: Apply

    /// Validates `text`, compares it with the running configuration and changes only what
    /// differs: a tenant's switch restarts when its segments, ports or ACL change (its TAP ports
    /// that did not change keep their devices and endpoints), its block server when its volumes
    /// change, a partition when it changes or a backend it uses restarts. Other tenants' children
    /// are not touched. An invalid document, or one that changes what needs a daemon restart,
    /// changes nothing. Audited.
    func apply(text newText: String, file: String?, dryRun: Bool, by caller: Caller) async -> ApplyOutcome {
        let outcome = await applying(newText, file: file, dryRun: dryRun)
        audit.applied(outcome, dryRun: dryRun, by: caller)
        if !dryRun {
            applyCounts.attempts += 1
            if case .applied = outcome {} else { applyCounts.failures += 1 }
        }
        return outcome
    }

    /// Applies attempted and failed since the daemon started (dry runs not counted).
    private(set) var applyCounts = (attempts: UInt64(0), failures: UInt64(0))

    func recordReloadUnreadable(path: String, error: String) {
        audit.applied(.failed("cannot read \(path): \(error)"), dryRun: false, by: .daemon(action: "config.reload"))
    }

    private func applying(_ newText: String, file: String?, dryRun: Bool) async -> ApplyOutcome {
        guard !applying else { return .failed("another configuration change is being applied; nothing was changed, try again when it is done") }
        let new: HostConfiguration
        do { new = try HostConfiguration.decode(newText, file: file) } catch {
            return .invalid(error)
        }
        let difference = ConfigurationDifference(from: configuration, to: new)
        guard difference.needsRestart.isEmpty else {
            return .invalid(ConfigurationError(file: file, problems: difference.needsRestart))
        }
        if dryRun { return .applied(changes: difference.summary) }
        applying = true
        defer { applying = false }
        do {
            let (record, added) = try JailUids.allocate(new)
            jailUids = record
            if !added.isEmpty { logger.info("jail uids recorded", metadata: ["keys": "\(added.joined(separator: ","))"]) }
            try StateFiles.writeAtomically(appliedPath, contents: newText, mode: 0o600)
        } catch {
            return .failed("\(error)")
        }
        let old = configuration
        configuration = new
        text = newText
        board.setOrder(new.tenants.map(\.id))
        do { try fleet?.steer(new) } catch {
            return .failed("the underlay sockets could not be set up: \(error)")
        }
        for id in difference.removedTenants {
            logger.notice("tenant removed", metadata: ["tenant.id": "\(id)"])
            await stopTenant(id)
        }
        do {
            for tenant in new.tenants {
                if let change = difference.changedTenants[tenant.id], let before = old.tenants.first(where: { $0.id == tenant.id }) {
                    try await applyChange(tenant, from: before, by: change)
                } else if difference.addedTenants.contains(tenant.id) {
                    logger.notice("tenant added", metadata: ["tenant.id": "\(tenant.id)"])
                    try startTenant(tenant)
                }
            }
        } catch {
            return .failed("\(error); the changes listed before it were applied: \(difference.summary.joined(separator: "; "))")
        }
        await fleet?.update(configuration: new)
        // Limits change in place: the children that kept running are held to the new ones.
        for tenant in new.tenants {
            supervisor.setLimits(ChildSpec.key(.switch, tenant: tenant.id), new.switchLimits(of: tenant).cgroup)
            supervisor.setLimits(ChildSpec.key(.blockServer, tenant: tenant.id), new.blockServerLimits(of: tenant).cgroup)
            for partition in tenant.partitions {
                supervisor.setLimits(ChildSpec.key(.partition, tenant: tenant.id, partition: partition.id), new.limits(of: partition).cgroup)
            }
        }
        return .applied(changes: difference.summary)
    }

    /// Applies one tenant's changes (see `apply`).
    private func applyChange(_ tenant: Tenant, from old: Tenant, by change: TenantDifference) async throws {
        // Partitions whose backend restarts restart with it: their virtio devices lose their
        // vhost-user connection (a backend restart leaves them broken until the VMM restarts).
        var restart = change.partitionsRemoved.union(change.partitionsChanged)
        for partition in old.partitions {
            if change.switchChanged && !partition.nics.isEmpty { restart.insert(partition.id) }
            if change.blockServerChanged && !partition.disks.isEmpty { restart.insert(partition.id) }
        }
        for id in restart.sorted() {
            await supervisor.remove(ChildSpec.key(.partition, tenant: tenant.id, partition: id))
        }
        if change.switchChanged {
            await supervisor.remove(ChildSpec.key(.switch, tenant: tenant.id))
            network.remove(tenant: tenant.id, ports: change.tapPortsDown)
            for id in change.vhostUserPortsDown { listeners[tenant.id]?[id] = nil }
            board.forget(tenant: tenant.id)
            try await provisionAgain(tenant, only: change.tapPortsUp)
            let added = try VhostUserSockets.listen(tenant, only: change.vhostUserPortsUp,
                                                    stateDirectory: configuration.host.stateDirectory,
                                                    jailUids: jailUids, logger: logger)
            listeners[tenant.id, default: [:]].merge(added) { _, new in new }
            try addSwitch(tenant)
        }
        if change.blockServerChanged {
            await supervisor.remove(ChildSpec.key(.blockServer, tenant: tenant.id))
            addBlockServer(tenant)
        }
        for partition in tenant.partitions where restart.contains(partition.id) || change.partitionsAdded.contains(partition.id) {
            addPartition(partition, of: tenant)
        }
    }

    // MARK: Partitions

    enum PartitionAction: String, Sendable { case start, stop, restart }

    /// Starts, stops or restarts a partition; false when there is no such partition.
    func partition(_ action: PartitionAction, tenant: String, id: String) async -> Bool {
        let key = ChildSpec.key(.partition, tenant: tenant, partition: id)
        switch action {
        case .start: return supervisor.start(key)
        case .stop: return await supervisor.stop(key)
        case .restart: return await supervisor.restart(key)
        }
    }
}

extension ResourceLimits {
    /// These limits as the cgroup files take them.
    var cgroup: CGroupLimits {
        CGroupLimits(memoryMaxBytes: memoryMiB.map { UInt64($0) << 20 }, cpuWeight: cpuWeight,
                     cpuQuotaPercent: cpuPercent, pidsMax: pids)
    }
}
