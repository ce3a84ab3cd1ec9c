import Config
import FleetModel
import Switch

/// The daemon and the processes it runs, as `GET /v1/status` reports them. The daemon fills it in.
public struct HostStatus: Sendable, Equatable {
    public var daemon: DaemonStatus
    public var children: [ChildStatus]
    /// The host's place in the fleet map; nil when the host runs alone.
    public var fleet: FleetStatus?
    /// Datagrams that reached the underlay port with a VNI no tenant of this host has (dropped).
    public var underlayUnknownVNI: UInt64

    public init(daemon: DaemonStatus, children: [ChildStatus], fleet: FleetStatus? = nil, underlayUnknownVNI: UInt64 = 0) {
        self.daemon = daemon; self.children = children; self.fleet = fleet; self.underlayUnknownVNI = underlayUnknownVNI
    }
}

public struct DaemonStatus: Sendable, Equatable {
    public var pid: Int32
    /// When the daemon started, RFC 3339 (`2025-01-31T12:00:00Z`).
    public var startedAt: String
    /// Lower-case hex SHA-256 of the daemon's executable, as measured at start.
    public var executableSHA256: String
    /// Lower-case hex SHA-256 of the applied configuration document.
    public var configurationSHA256: String
    public var cgroups: CgroupStatus

    public init(pid: Int32, startedAt: String, executableSHA256: String, configurationSHA256: String, cgroups: CgroupStatus) {
        self.pid = pid; self.startedAt = startedAt; self.executableSHA256 = executableSHA256
        self.configurationSHA256 = configurationSHA256; self.cgroups = cgroups
    }
}

/// Whether the children run in cgroups of their own.
public enum CgroupStatus: Sendable, Equatable {
    /// Each child has its cgroup under this directory.
    case enabled(path: String)
    /// Not used, and why (cgroup v2 not mounted, not delegated, ...).
    case disabled(reason: String)
}

public enum ChildKind: String, Sendable, Equatable, CaseIterable {
    case `switch`
    case blockServer = "block-server"
    case partition
}

public enum ChildState: String, Sendable, Equatable, CaseIterable {
    case running, starting, stopped, restarting, down
}

/// One process the daemon runs.
public struct ChildStatus: Sendable, Equatable {
    public var kind: ChildKind
    /// The tenant it serves; nil for the switch, which serves every tenant.
    public var tenant: String?
    /// The partition's id, for a partition.
    public var id: String?
    public var state: ChildState
    public var pid: Int32?
    /// Times it was started again after it ended.
    public var restarts: Int
    /// How it last ended ("exit status 1", "killed by SIGSYS (seccomp)"), if it did.
    public var lastExit: String?
    /// Since when it is in `state`, RFC 3339.
    public var since: String?

    public init(kind: ChildKind, tenant: String? = nil, id: String? = nil, state: ChildState, pid: Int32? = nil,
                restarts: Int = 0, lastExit: String? = nil, since: String? = nil) {
        self.kind = kind; self.tenant = tenant; self.id = id; self.state = state; self.pid = pid
        self.restarts = restarts; self.lastExit = lastExit; self.since = since
    }
}

/// What the API reads answers from, taken from the daemon once per call.
public struct ManagementSnapshot: Sendable {
    /// The applied configuration.
    public var configuration: HostConfiguration
    /// The applied configuration's document, as it was read or applied: the API answers with
    /// its objects exactly as written.
    public var configurationText: String
    public var status: HostStatus
    /// The switch's counters; nil when the switch does not run.
    public var statistics: SwitchStatistics?

    public init(configuration: HostConfiguration, configurationText: String, status: HostStatus,
                statistics: SwitchStatistics?) {
        self.configuration = configuration; self.configurationText = configurationText
        self.status = status; self.statistics = statistics
    }
}

/// How `PUT /v1/configuration` went.
public enum ApplyOutcome: Sendable {
    /// The document is not a valid configuration (or cannot be applied on this host): nothing changed.
    case invalid(ConfigurationError)
    /// The document is valid and was applied (or, for a dry run, would be) with these changes,
    /// one line each ("tenant blue: port c added"); empty when it equals the applied one.
    case applied(changes: [String])
    /// The document is valid but applying it failed, and why.
    case failed(String)
}

/// A management call that the daemon could not carry out.
public struct ManagementFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// The call contradicts the current state (starting a running partition): 409.
        case conflict
        /// A part of the host the call needs is not available: 503.
        case unavailable
        /// It was tried and failed: 500.
        case failed
    }

    public var kind: Kind
    public var reason: String

    public init(_ kind: Kind, _ reason: String) { self.kind = kind; self.reason = reason }

    public var description: String { reason }

    /// The error answered for it.
    public var apiError: APIError {
        switch kind {
        case .conflict: APIError(status: 409, reason: reason)
        case .unavailable: APIError(status: 503, reason: reason)
        case .failed: APIError(status: 500, reason: reason)
        }
    }
}
