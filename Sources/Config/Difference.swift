/// What changes between the configuration a daemon runs and a new one, in the units the daemon
/// restarts: a tenant's switch, a tenant's block server, a partition, a TAP port. Apply (the
/// management API, SIGHUP) changes exactly these and leaves everything else running.
public struct ConfigurationDifference: Sendable, Equatable {
    /// Changes the daemon cannot make while it runs (the state directory, the jail uids, the
    /// switch's workers, its own sockets and log): an apply with any of them changes nothing.
    public var needsRestart: [ConfigurationProblem] = []
    public var addedTenants: [String] = []
    public var removedTenants: [String] = []
    /// Tenants in both whose objects differ, by id.
    public var changedTenants: [String: TenantDifference] = [:]
    public var principalsChanged = false
    /// `host.limits` differ: every child's cgroup limits are rewritten (no restart).
    public var hostLimitsChanged = false

    public var isEmpty: Bool {
        needsRestart.isEmpty && addedTenants.isEmpty && removedTenants.isEmpty && changedTenants.isEmpty
            && !principalsChanged && !hostLimitsChanged
    }

    public init(from old: HostConfiguration, to new: HostConfiguration) {
        let fixed: [(String, Bool)] = [
            ("stateDirectory", old.host.stateDirectory != new.host.stateDirectory),
            ("jailUidBase", old.host.jailUidBase != new.host.jailUidBase),
            ("switch", old.host.switchSettings != new.host.switchSettings),
            ("controlSocket", old.host.controlSocketPath != new.host.controlSocketPath),
            ("controlSocketGroup", old.host.controlSocketGroup != new.host.controlSocketGroup),
            ("auditLog", old.host.auditLogPath != new.host.auditLogPath),
            ("metrics", old.host.metrics != new.host.metrics),
            ("fleet", old.host.fleet != new.host.fleet),
        ]
        for (key, changed) in fixed where changed {
            needsRestart.append(ConfigurationProblem(path: "$.host.\(key)", message:
                "host.\(key) cannot change while the daemon runs; restart the daemon with the new configuration"))
        }
        principalsChanged = old.principals != new.principals
        hostLimitsChanged = old.host.limits != new.host.limits
        let before = Dictionary(old.tenants.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        let after = Dictionary(new.tenants.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        addedTenants = new.tenants.map(\.id).filter { before[$0] == nil }
        removedTenants = old.tenants.map(\.id).filter { after[$0] == nil }
        for tenant in new.tenants {
            guard let previous = before[tenant.id], previous != tenant else { continue }
            changedTenants[tenant.id] = TenantDifference(from: previous, to: tenant)
        }
    }

    /// One line per change, for the audit log and the API's answer.
    public var summary: [String] {
        var lines = needsRestart.map { "refused: \($0.message)" }
        lines += addedTenants.map { "tenant \($0) added" }
        lines += removedTenants.map { "tenant \($0) removed" }
        for id in changedTenants.keys.sorted() {
            lines += changedTenants[id]!.summary.map { "tenant \(id): \($0)" }
        }
        if principalsChanged { lines.append("principals changed") }
        if hostLimitsChanged { lines.append("host limits changed") }
        return lines
    }
}

/// What changes inside one tenant.
public struct TenantDifference: Sendable, Equatable {
    /// Segments, ports or ACL differ: the tenant's switch restarts (with the new ports).
    public var switchChanged = false
    /// TAP ports to take down: removed, or changed (they are set up again).
    public var tapPortsDown: Set<String> = []
    /// TAP ports to set up: added, or changed.
    public var tapPortsUp: Set<String> = []
    /// vhost-user ports whose sockets go (removed or changed) and come (added or changed).
    public var vhostUserPortsDown: Set<String> = []
    public var vhostUserPortsUp: Set<String> = []
    /// Volumes differ: the tenant's block server restarts.
    public var blockServerChanged = false
    public var partitionsAdded: Set<String> = []
    public var partitionsRemoved: Set<String> = []
    public var partitionsChanged: Set<String> = []
    /// The tenant's `limits` differ: its switch's and block server's cgroups are rewritten.
    public var limitsChanged = false

    public init(from old: Tenant, to new: Tenant) {
        switchChanged = old.segments != new.segments || old.ports != new.ports || old.acl != new.acl
        let oldPorts = Dictionary(old.ports.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        let newPorts = Dictionary(new.ports.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        // A port's kernel side depends on its segment's MTU too.
        let oldMTU = Dictionary(old.segments.map { ($0.id, $0.mtu) }, uniquingKeysWith: { first, _ in first })
        let newMTU = Dictionary(new.segments.map { ($0.id, $0.mtu) }, uniquingKeysWith: { first, _ in first })
        for (id, port) in oldPorts {
            let next = newPorts[id]
            let same = next == port && oldMTU[port.segment] == newMTU[port.segment]
            if !same {
                if port.kind == .tap { tapPortsDown.insert(id) } else { vhostUserPortsDown.insert(id) }
            }
        }
        for (id, port) in newPorts {
            let previous = oldPorts[id]
            let same = previous == port && oldMTU[port.segment] == newMTU[port.segment]
            if !same {
                if port.kind == .tap { tapPortsUp.insert(id) } else { vhostUserPortsUp.insert(id) }
            }
        }
        blockServerChanged = old.volumes != new.volumes
        let oldPartitions = Dictionary(old.partitions.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        let newPartitions = Dictionary(new.partitions.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        partitionsAdded = Set(newPartitions.keys.filter { oldPartitions[$0] == nil })
        partitionsRemoved = Set(oldPartitions.keys.filter { newPartitions[$0] == nil })
        partitionsChanged = Set(newPartitions.compactMap { id, partition in
            oldPartitions[id].flatMap { $0 != partition ? id : nil }
        })
        limitsChanged = old.limits != new.limits
    }

    public var summary: [String] {
        var lines: [String] = []
        func list(_ ids: Set<String>) -> String { ids.sorted().joined(separator: ", ") }
        if switchChanged { lines.append("switch restarts") }
        if !tapPortsDown.isEmpty { lines.append("TAP ports down: \(list(tapPortsDown))") }
        if !tapPortsUp.isEmpty { lines.append("TAP ports up: \(list(tapPortsUp))") }
        if !vhostUserPortsDown.isEmpty { lines.append("vhost-user ports down: \(list(vhostUserPortsDown))") }
        if !vhostUserPortsUp.isEmpty { lines.append("vhost-user ports up: \(list(vhostUserPortsUp))") }
        if blockServerChanged { lines.append("block server restarts") }
        if !partitionsAdded.isEmpty { lines.append("partitions added: \(list(partitionsAdded))") }
        if !partitionsRemoved.isEmpty { lines.append("partitions removed: \(list(partitionsRemoved))") }
        if !partitionsChanged.isEmpty { lines.append("partitions changed: \(list(partitionsChanged))") }
        if limitsChanged { lines.append("limits changed") }
        return lines
    }
}
