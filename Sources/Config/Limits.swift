/// Resource limits of one jailed child process (a cgroup v2 group of its own): what a
/// compromised or runaway process of one tenant can take from the host and from other tenants.
/// A limit left out is not set.
public struct ResourceLimits: Sendable, Equatable {
    /// memory.max, in MiB (swap is closed when it is set).
    public var memoryMiB: Int?
    /// cpu.weight: the share of contended CPU time, 1...10000 (the kernel's default is 100).
    public var cpuWeight: Int?
    /// cpu.max as a percentage of one CPU: 50 is half a CPU, 200 two CPUs.
    public var cpuPercent: Int?
    /// pids.max: processes and threads.
    public var pids: Int?

    public static let memoryMiBRange = 16...4_194_304
    public static let cpuWeightRange = 1...10_000
    public static let cpuPercentRange = 1...100_000
    public static let pidsRange = 8...4_194_304

    public init(memoryMiB: Int? = nil, cpuWeight: Int? = nil, cpuPercent: Int? = nil, pids: Int? = nil) {
        self.memoryMiB = memoryMiB; self.cpuWeight = cpuWeight; self.cpuPercent = cpuPercent; self.pids = pids
    }

    /// These limits, each one left out taken from `defaults`.
    public func over(_ defaults: ResourceLimits?) -> ResourceLimits {
        guard let defaults else { return self }
        return ResourceLimits(memoryMiB: memoryMiB ?? defaults.memoryMiB, cpuWeight: cpuWeight ?? defaults.cpuWeight,
                              cpuPercent: cpuPercent ?? defaults.cpuPercent, pids: pids ?? defaults.pids)
    }
}

/// The limits of a tenant's switch and block server (`limits` of a tenant, and the host-wide
/// defaults in `host.limits`).
public struct ServiceLimits: Sendable, Equatable {
    public var `switch`: ResourceLimits?
    public var blockServer: ResourceLimits?

    public init(switch: ResourceLimits? = nil, blockServer: ResourceLimits? = nil) {
        self.switch = `switch`; self.blockServer = blockServer
    }
}

/// `host.limits`: the defaults of every tenant's switch and block server, and of partitions.
public struct HostLimits: Sendable, Equatable {
    public var services: ServiceLimits
    /// Defaults of every partition's limits; a partition's memory limit, unless set, is its
    /// guest RAM plus `partitionOverheadMiB` (the VMM's own memory, measured at about 11 MiB).
    public var partitions: ResourceLimits?
    public var partitionOverheadMiB: Int

    public static let defaultPartitionOverheadMiB = 64

    public init(services: ServiceLimits = .init(), partitions: ResourceLimits? = nil,
                partitionOverheadMiB: Int = HostLimits.defaultPartitionOverheadMiB) {
        self.services = services; self.partitions = partitions; self.partitionOverheadMiB = partitionOverheadMiB
    }
}

extension HostConfiguration {
    /// The limits of `tenant`'s switch: the tenant's, each one left out taken from the host's.
    public func switchLimits(of tenant: Tenant) -> ResourceLimits {
        (tenant.limits?.switch ?? ResourceLimits()).over(host.limits.services.switch)
    }

    /// The limits of `tenant`'s block server.
    public func blockServerLimits(of tenant: Tenant) -> ResourceLimits {
        (tenant.limits?.blockServer ?? ResourceLimits()).over(host.limits.services.blockServer)
    }

    /// The limits of a partition's VMM process: its own, then the host's partition defaults, and
    /// memory at least the guest's RAM plus the VMM's overhead.
    public func limits(of partition: Partition) -> ResourceLimits {
        var limits = (partition.limits ?? ResourceLimits()).over(host.limits.partitions)
        if limits.memoryMiB == nil { limits.memoryMiB = partition.memoryMiB + host.limits.partitionOverheadMiB }
        return limits
    }
}

extension HostSettings {
    /// The management socket's path: `controlSocket` resolved against the state directory.
    public var controlSocketPath: String { resolved(controlSocket, default: "control.sock") }
    /// The audit log's path: `auditLog` resolved against the state directory.
    public var auditLogPath: String { resolved(auditLog, default: "audit.log") }

    private func resolved(_ value: String?, default name: String) -> String {
        let value = value ?? name
        if value.hasPrefix("/") { return value }
        return Validator.normalize(stateDirectory + "/" + value)
    }
}
