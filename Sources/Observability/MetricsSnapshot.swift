import Switch

/// What the daemon knows at the moment of a scrape. Every counter is a total since the daemon
/// started (the daemon carries a restarted child's earlier counts, as `SwitchCounters` does), so
/// each is exposed as a Prometheus counter.
///
/// A part the daemon does not have is nil (or empty) and then appears in no metric: the
/// exposition never shows made-up zeros, e.g. no port counters before the switch's first report.
public struct MetricsSnapshot: Sendable, Equatable {
    /// The switch's latest counters (ports and segments); nil until the switch has reported.
    public var switchStatistics: SwitchStatistics?
    /// Every configured partition.
    public var partitions: [PartitionMetrics]
    /// Every child process the supervisor runs (switch, block servers, partitions).
    public var children: [ChildMetrics]
    /// The block servers' counters per volume; nil when the daemon has none.
    public var volumes: [VolumeMetrics]?
    /// Records appended to the audit log since start; nil without an audit log.
    public var auditRecordsWritten: UInt64?
    /// Configuration applies (API or SIGHUP); nil when the daemon does not count them.
    public var configurationApplies: ApplyMetrics?
    /// The host's link to the fleet map; nil when the host runs alone.
    public var fleet: FleetMetrics?

    public init(switchStatistics: SwitchStatistics? = nil, partitions: [PartitionMetrics] = [],
                children: [ChildMetrics] = [], volumes: [VolumeMetrics]? = nil,
                auditRecordsWritten: UInt64? = nil, configurationApplies: ApplyMetrics? = nil, fleet: FleetMetrics? = nil) {
        self.fleet = fleet
        self.switchStatistics = switchStatistics; self.partitions = partitions; self.children = children
        self.volumes = volumes; self.auditRecordsWritten = auditRecordsWritten
        self.configurationApplies = configurationApplies
    }
}

/// The host's link to the fleet map (etcd) and its underlay.
public struct FleetMetrics: Sendable, Equatable {
    /// Whether etcd answers now.
    public var connected: Bool
    /// Other hosts in the map now.
    public var remoteHosts: Int
    /// Datagrams on the VXLAN port with a VNI no tenant of this host has, dropped.
    public var unknownVNIDatagrams: UInt64

    public init(connected: Bool, remoteHosts: Int, unknownVNIDatagrams: UInt64) {
        self.connected = connected; self.remoteHosts = remoteHosts; self.unknownVNIDatagrams = unknownVNIDatagrams
    }
}

/// One partition as the supervisor sees it.
public struct PartitionMetrics: Sendable, Equatable {
    public var tenant: String
    public var id: String
    /// The partition's state as the API reports it, e.g. `running`, `stopped`, `refused`.
    public var state: String
    /// Starts since the daemon started, the first one included.
    public var starts: UInt64
    /// Starts after the partition's process ended (its restart policy's doing).
    public var restarts: UInt64

    public init(tenant: String, id: String, state: String, starts: UInt64, restarts: UInt64) {
        self.tenant = tenant; self.id = id; self.state = state; self.starts = starts; self.restarts = restarts
    }
}

/// One supervised child process.
public struct ChildMetrics: Sendable, Equatable {
    /// What the child is: `switch`, `block-server`, `partition`.
    public var kind: String
    /// Its tenant; nil for a host-wide child (the switch).
    public var tenant: String?
    /// The partition it runs, for a partition's VMM.
    public var partition: String?
    /// Times the supervisor started it again after it ended.
    public var restarts: UInt64
    /// Whether its process is running now.
    public var up: Bool

    public init(kind: String, tenant: String? = nil, partition: String? = nil, restarts: UInt64, up: Bool) {
        self.kind = kind; self.tenant = tenant; self.partition = partition; self.restarts = restarts; self.up = up
    }
}

/// One volume's I/O as its block server counts it.
public struct VolumeMetrics: Sendable, Equatable {
    public var tenant: String
    public var volume: String
    /// Completed read requests and the bytes they returned.
    public var reads: UInt64
    public var readBytes: UInt64
    /// Completed write requests and the bytes they wrote.
    public var writes: UInt64
    public var writtenBytes: UInt64
    /// Completed flushes.
    public var flushes: UInt64
    /// Requests answered with an error status (I/O error, out of range, unsupported).
    public var errors: UInt64
    /// Requests held back by the volume's QoS limit (not an error: they were served later).
    public var throttled: UInt64

    public init(tenant: String, volume: String, reads: UInt64 = 0, readBytes: UInt64 = 0, writes: UInt64 = 0,
                writtenBytes: UInt64 = 0, flushes: UInt64 = 0, errors: UInt64 = 0, throttled: UInt64 = 0) {
        self.tenant = tenant; self.volume = volume; self.reads = reads; self.readBytes = readBytes
        self.writes = writes; self.writtenBytes = writtenBytes; self.flushes = flushes
        self.errors = errors; self.throttled = throttled
    }
}

/// Configuration applies (`bulkhead ctl apply`, SIGHUP).
public struct ApplyMetrics: Sendable, Equatable {
    /// Applies attempted, refused and failed ones included.
    public var attempts: UInt64
    /// Applies that changed nothing because they were invalid, unauthorised or failed.
    public var failures: UInt64

    public init(attempts: UInt64, failures: UInt64) {
        self.attempts = attempts; self.failures = failures
    }
}
