import Audit
import Config
import Foundation
import Management
import ManagementModel
import Observability
import Switch

/// What the management API and the metrics endpoint read and change: the daemon's runtime.
struct DaemonBackend: ManagementBackend {
    let runtime: HostRuntime
    let audit: AuditTrail
    let started: Date
    let executableDigest: String
    /// Whether the children run in cgroups of their own, or why not.
    let cgroups: CgroupStatus

    func snapshot() async -> ManagementSnapshot {
        let (configuration, text, digest) = await (runtime.configuration, runtime.text, runtime.textDigest)
        let daemon = ManagementModel.DaemonStatus(
            pid: getpid(), startedAt: DaemonBackend.rfc3339(started), executableSHA256: executableDigest,
            configurationSHA256: digest, cgroups: cgroups)
        let children = runtime.supervisor.states().map(DaemonBackend.status)
        let statistics = runtime.board.statistics()
        return ManagementSnapshot(configuration: configuration, configurationText: text,
                                  status: HostStatus(daemon: daemon, children: children, fleet: runtime.fleet?.status(),
                                                     underlayUnknownVNI: runtime.fleet?.unknownVNIDatagrams ?? 0),
                                  statistics: statistics.ports.isEmpty && statistics.segments.isEmpty ? nil : statistics)
    }

    func partition(_ action: PartitionAction, tenant: String, id: String) async throws(ManagementFailure) {
        let done = await runtime.partition(HostRuntime.PartitionAction(rawValue: action.rawValue) ?? .restart, tenant: tenant, id: id)
        guard done else {
            throw ManagementFailure(.unavailable, "partition \(tenant)/\(id) is not running under this daemon (yet); try again")
        }
    }

    func apply(document: String, dryRun: Bool, principal: String) async -> ApplyOutcome {
        let uid = await runtime.configuration.principals.first { $0.name == principal }?.uid
        let caller: Caller = uid.map { .principal(name: principal, uid: $0, action: "api.configuration.apply") }
            ?? .daemon(action: "api.configuration.apply")
        return await runtime.apply(text: document, file: nil, dryRun: dryRun, by: caller)
    }

    func auditRecords(after: UInt64, limit: Int) async throws(ManagementFailure) -> [String] {
        do { return try audit.log.records(after: after, limit: min(max(limit, 0), 1000)) } catch {
            throw ManagementFailure(.failed, "the audit log cannot be read: \(error)")
        }
    }

    /// The metrics endpoint's view: the switches' counters, every child and partition.
    func metrics() async -> MetricsSnapshot {
        let states = runtime.supervisor.states()
        let statistics = runtime.board.statistics()
        let applies = await runtime.applyCounts
        return MetricsSnapshot(
            switchStatistics: statistics.ports.isEmpty ? nil : statistics,
            partitions: states.compactMap { state in
                state.partition.map {
                    PartitionMetrics(tenant: state.tenant, id: $0, state: state.phase.rawValue,
                                     starts: UInt64(state.starts),
                                     restarts: UInt64(state.restarts))
                }
            },
            children: states.map { ChildMetrics(kind: $0.kind.rawValue, tenant: $0.tenant, partition: $0.partition,
                                                restarts: UInt64($0.restarts), up: $0.phase == .running) },
            auditRecordsWritten: audit.log.lastSequence,
            configurationApplies: ApplyMetrics(attempts: applies.attempts, failures: applies.failures),
            fleet: runtime.fleet.map { fleet in
                let status = fleet.status()
                return FleetMetrics(connected: status.state == "connected", remoteHosts: status.remoteHosts.count,
                                    unknownVNIDatagrams: fleet.unknownVNIDatagrams)
            })
    }

    /// Writes a management call's record; throws when it cannot (the call is then refused).
    func record(_ event: APIAuditEvent) throws {
        let outcome: AuditOutcome
        switch event.outcome {
        case .allowed: outcome = .allowed
        case .denied(let reason): outcome = .denied(reason: reason)
        case .failed(let reason): outcome = .failed(reason: reason)
        }
        try audit.record(AuditEvent(principal: event.principal, uid: event.uid, action: event.action, target: event.target,
                                    outcome: outcome))
    }

    static func status(_ state: ChildSnapshot) -> ChildStatus {
        ChildStatus(kind: state.kind, tenant: state.tenant, id: state.partition, state: state.phase, pid: state.pid,
                    restarts: state.restarts, lastExit: state.lastExit, since: rfc3339(state.since))
    }

    static func rfc3339(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: date)
    }
}
