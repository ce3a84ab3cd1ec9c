/// Where a host stands with the fleet map: whether etcd answers, since when, and what the map
/// holds. `bulkhead ctl status` and `status.json` show it.
public struct FleetStatus: Codable, Sendable, Equatable {
    public var hostId: String
    /// "connecting" (no answer yet), "connected", or "disconnected" (forwarding with the last map).
    public var state: String
    /// RFC 3339 UTC time of the last change of `state`.
    public var since: String
    /// The etcd endpoint in use.
    public var endpoint: String?
    /// The last store revision seen.
    public var revision: Int64
    /// This host's lease (hex) while it holds one.
    public var lease: String?
    /// The other hosts now in the map, sorted.
    public var remoteHosts: [String]
    public var lastError: String?
    /// Records left out of the views (see `FleetView.build`, malformed values), at most `problemLimit`.
    public var problems: [String]

    public static let problemLimit = 50

    public init(hostId: String, state: String, since: String, endpoint: String? = nil, revision: Int64 = 0,
                lease: String? = nil, remoteHosts: [String] = [], lastError: String? = nil, problems: [String] = []) {
        self.hostId = hostId; self.state = state; self.since = since; self.endpoint = endpoint; self.revision = revision
        self.lease = lease; self.remoteHosts = remoteHosts; self.lastError = lastError; self.problems = problems
    }
}
