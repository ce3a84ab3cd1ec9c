import Audit
import Config
import Foundation
import HostOS
import ManagementModel
import Logging
import PartitionProcess
import URing

/// The daemon's audit log: what the daemon itself records (its start and stop, every child's
/// start and end, every measured launch, every configuration change), each record written and
/// flushed to disk before the action it records is answered or goes on.
final class AuditTrail: Sendable {
    private let logger: Logger
    /// The log itself (the management API reads it too).
    let log: AuditLog

    init(logger: Logger, log: AuditLog) {
        self.logger = logger
        self.log = log
    }

    /// Records `event`: appended, flushed to disk and chained before this returns; a failure to
    /// record is thrown (the caller does not go on with an action that could not be audited).
    func record(_ event: AuditEvent) throws {
        _ = try log.append(daemonUid(event))
    }

    /// The daemon's own records carry its uid.
    private func daemonUid(_ event: AuditEvent) -> AuditEvent {
        var event = event
        if event.principal == AuditEvent.daemonPrincipal && event.uid == nil { event.uid = getuid() }
        return event
    }

    /// Records an event that happened whatever the log says (a child died): a failure to record
    /// is logged, as loudly as it gets.
    func note(_ event: AuditEvent) {
        do { try record(event) } catch {
            logger.critical("could not write the audit log", metadata: ["action": "\(event.action)", "error": "\(error)"])
        }
    }

    func daemonStarted(executableDigest: String, configurationDigest: String, configPath: String) throws {
        try record(AuditEvent(principal: "bulkhead", uid: getuid(), action: "daemon.start", target: configPath, outcome: .allowed,
                              detail: ["executable.sha256": executableDigest, "configuration.sha256": configurationDigest,
                                       "pid": "\(getpid())"]))
    }

    func daemonStopped() throws {
        try record(AuditEvent(principal: "bulkhead", uid: getuid(), action: "daemon.stop", target: "", outcome: .allowed))
    }

    func launchMeasured(target: String, report: LaunchMeasurement.Report) {
        var detail: [String: String] = [:]
        for (path, digest) in report.digests { detail[path] = digest }
        note(AuditEvent(principal: "bulkhead", action: "launch.measured", target: target,
                        outcome: report.refusal.map { .failed(reason: $0) } ?? .allowed, detail: detail))
    }

    func childEvent(_ event: ChildEvent) {
        switch event {
        case .started(let spec, let pid):
            note(AuditEvent(principal: "bulkhead", action: "\(spec.kind.rawValue).start", target: target(spec),
                            outcome: .allowed, detail: ["pid": "\(pid)"]))
        case .exited(let spec, let pid, let ending, let description, let requested, let restarting):
            // A child asked to stop, and a guest that powered off or rebooted, ended as it should;
            // any other end (a crash, a seccomp kill, the OOM killer) is a failure.
            let expected = requested || (spec.kind == .partition && ending.map { PartitionExit.ending($0) != .failed } == true)
            note(AuditEvent(principal: "bulkhead", action: "\(spec.kind.rawValue).exit", target: target(spec),
                            outcome: expected ? .allowed : .failed(reason: description),
                            detail: ["pid": "\(pid)", "ending": description, "requested": "\(requested)",
                                     "restarting": "\(restarting)"]))
        case .refused(let spec, let reason):
            note(AuditEvent(principal: "bulkhead", action: "\(spec.kind.rawValue).start", target: target(spec),
                            outcome: .failed(reason: reason)))
        case .failedToStart(let spec, let reason):
            note(AuditEvent(principal: "bulkhead", action: "\(spec.kind.rawValue).start", target: target(spec),
                            outcome: .failed(reason: reason)))
        }
    }

    func applied(_ outcome: ApplyOutcome, dryRun: Bool, by caller: Caller) {
        let action = caller.action + (dryRun ? ".dry-run" : "")
        let entry: AuditEvent
        switch outcome {
        case .applied(let changes):
            entry = AuditEvent(principal: caller.name, uid: caller.uid, action: action, target: "configuration", outcome: .allowed,
                               detail: ["changes": changes.isEmpty ? "none" : changes.joined(separator: "; ")])
        case .invalid(let error):
            entry = AuditEvent(principal: caller.name, uid: caller.uid, action: action, target: "configuration",
                               outcome: .failed(reason: "invalid: " + error.problems.map(\.description).joined(separator: "; ")))
        case .failed(let reason):
            entry = AuditEvent(principal: caller.name, uid: caller.uid, action: action, target: "configuration",
                               outcome: .failed(reason: reason))
        }
        note(entry)
    }

    private func target(_ spec: ChildSpec) -> String {
        spec.partition.map { "\(spec.tenant)/\($0)" } ?? spec.tenant
    }
}

/// SHA-256 of what the daemon runs, for the audit log's start record.
enum SelfMeasurement {
    static func digest(_ bytes: [UInt8]) -> String {
        (try? ImageDigest.sha256Hex(bytes)) ?? "unavailable"
    }

    /// The digest of /proc/self/exe: the binary actually running, whatever its path now holds.
    static func executableDigest() -> String {
        guard let data = FileManager.default.contents(atPath: "/proc/self/exe") else { return "unreadable" }
        return digest([UInt8](data))
    }
}

/// What the host must offer, checked at start and named when missing.
enum HostPreconditions {
    struct Report {
        var missing: [String] = []
    }

    static func check(_ configuration: HostConfiguration) -> Report {
        var report = Report()
        let needsKVM = configuration.tenants.contains { !$0.partitions.isEmpty }
        let needsTUN = configuration.tenants.contains { $0.ports.contains { $0.kind == .tap } }
        let needsNamespaces = configuration.tenants.contains { $0.ports.contains { $0.netns != nil } }
        if needsKVM && access("/dev/kvm", R_OK | W_OK) != 0 {
            report.missing.append("KVM: /dev/kvm cannot be opened read-write (\(String(cString: strerror(errno)))); "
                + "partitions need the kvm module (kvm_intel or kvm_amd) and access to the device")
        }
        if needsTUN && access("/dev/net/tun", R_OK | W_OK) != 0 {
            report.missing.append("TUN: /dev/net/tun cannot be opened read-write (\(String(cString: strerror(errno)))); "
                + "TAP ports need the tun module")
        }
        if needsNamespaces && access("/proc/self/ns/net", F_OK) != 0 {
            report.missing.append("network namespaces: /proc/self/ns/net is missing; ports with netns need CONFIG_NET_NS")
        }
        let needsURing = configuration.tenants.contains { !$0.ports.isEmpty || !$0.volumes.isEmpty }
        if needsURing { do { _ = try Ring(entries: 2) } catch {
            report.missing.append("io_uring: a ring cannot be set up (\(error)); the switch and the block servers do "
                + "their I/O with it (see /proc/sys/kernel/io_uring_disabled)")
        } }
        return report
    }
}
