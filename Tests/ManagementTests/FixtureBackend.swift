import Config
import Management
import ManagementModel
import Switch
import Synchronization

/// A backend made from a configuration document, as the daemon would serve it: partitions
/// start and stop in memory, apply validates and computes the difference, the audit log is
/// `MemoryAuditLog`.
final class FixtureBackend: ManagementBackend {
    private struct State {
        var configuration: HostConfiguration
        var text: String
        var partitions: [String: ChildState]
        var actions: [String] = []
        var applied: [String] = []
    }

    private let state: Mutex<State>
    let audit: MemoryAuditLog

    init(document: String = fixtureDocument, audit: MemoryAuditLog) throws {
        let configuration = try HostConfiguration.decode(document)
        var partitions: [String: ChildState] = [:]
        for tenant in configuration.tenants {
            for partition in tenant.partitions { partitions["\(tenant.id)/\(partition.id)"] = .running }
        }
        state = Mutex(State(configuration: configuration, text: document, partitions: partitions))
        self.audit = audit
    }

    /// The partition actions carried out, as `action tenant/id`.
    var actions: [String] { state.withLock { $0.actions } }
    /// The documents applied (not dry runs).
    var applied: [String] { state.withLock { $0.applied } }

    func snapshot() async -> ManagementSnapshot {
        state.withLock { state in
            var children = [ChildStatus(kind: .switch, state: .running, pid: 100, since: "2026-01-01T00:00:00Z")]
            for tenant in state.configuration.tenants {
                children.append(ChildStatus(kind: .blockServer, tenant: tenant.id, state: .running, pid: 200))
                for partition in tenant.partitions {
                    let childState = state.partitions["\(tenant.id)/\(partition.id)"] ?? .stopped
                    children.append(ChildStatus(kind: .partition, tenant: tenant.id, id: partition.id, state: childState,
                                                pid: childState == .running ? 300 : nil, restarts: 1,
                                                lastExit: "exit status 0"))
                }
            }
            let daemon = DaemonStatus(pid: 1, startedAt: "2026-01-01T00:00:00Z",
                                      executableSHA256: String(repeating: "a", count: 64),
                                      configurationSHA256: String(repeating: "b", count: 64),
                                      cgroups: .disabled(reason: "cgroup v2 is not delegated (test)"))
            return ManagementSnapshot(configuration: state.configuration, configurationText: state.text,
                                      status: HostStatus(daemon: daemon, children: children),
                                      statistics: fixtureStatistics(state.configuration))
        }
    }

    func partition(_ action: PartitionAction, tenant: String, id: String) async throws(ManagementFailure) {
        let key = "\(tenant)/\(id)"
        let result: ManagementFailure? = state.withLock { state in
            let current = state.partitions[key] ?? .stopped
            switch (action, current) {
            case (.start, .running): return ManagementFailure(.conflict, "partition \(key) is already running")
            case (.stop, .stopped): return ManagementFailure(.conflict, "partition \(key) is not running")
            case (.start, _), (.restart, _): state.partitions[key] = .running
            case (.stop, _): state.partitions[key] = .stopped
            }
            state.actions.append("\(action.rawValue) \(key)")
            return nil
        }
        if let result { throw result }
    }

    func apply(document: String, dryRun: Bool, principal: String) async -> ApplyOutcome {
        let new: HostConfiguration
        do {
            new = try HostConfiguration.decode(document)
        } catch {
            return .invalid(error)
        }
        return state.withLock { state in
            let changes = ConfigurationChanges.changes(from: state.configuration, to: new)
            if !dryRun {
                state.configuration = new
                state.text = document
                state.applied.append(document)
            }
            return .applied(changes: changes)
        }
    }

    func auditRecords(after: UInt64, limit: Int) async throws(ManagementFailure) -> [String] {
        let lines = audit.lines()
        let start = min(after, UInt64(lines.count))
        return Array(lines[Int(start)...].prefix(limit))
    }
}
