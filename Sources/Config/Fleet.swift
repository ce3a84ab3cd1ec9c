/// `host.fleet`: this host's place in a fleet whose tenant segments span hosts over VXLAN, with
/// etcd holding the fleet's map. Without it the host runs alone.
public struct FleetSettings: Sendable, Equatable {
    /// This host's name in the fleet map: unique in the fleet, `[a-z0-9][a-z0-9.-]*`, at most 63.
    public var hostId: String
    /// The address of this host's VXLAN uplink (UDP 4789): IPv4 or IPv6, configured on the host.
    public var underlayAddress: IPAddress
    /// The underlay's MTU: each segment's MTU plus the encapsulation (50 bytes over IPv4, 70 over
    /// IPv6) must fit in it.
    public var underlayMTU: Int
    /// The etcd cluster that holds the fleet map.
    public var etcd: EtcdSettings
    /// The TTL of this host's lease: when the daemon stops renewing it (it died, or lost its
    /// host), the other hosts drop its ports within this time.
    public var leaseSeconds: Int

    public static let defaultLeaseSeconds = 10
    public static let leaseSecondsRange = 2...3600
    /// Outer Ethernet (14), IPv4 (20), UDP (8) and VXLAN (8) headers around an inner frame of
    /// MTU bytes plus its own Ethernet header (14), less the outer Ethernet header which the
    /// underlay MTU does not count: 50 bytes over IPv4, 70 over IPv6.
    public var encapsulationOverhead: Int {
        if case .v6 = underlayAddress { return 70 }
        return 50
    }

    public init(hostId: String, underlayAddress: IPAddress, underlayMTU: Int = 1500, etcd: EtcdSettings,
                leaseSeconds: Int = FleetSettings.defaultLeaseSeconds) {
        self.hostId = hostId
        self.underlayAddress = underlayAddress
        self.underlayMTU = underlayMTU
        self.etcd = etcd
        self.leaseSeconds = leaseSeconds
    }
}

/// `host.fleet.etcd`: where the fleet map lives and how to reach it.
public struct EtcdSettings: Sendable, Equatable {
    /// `http://HOST:PORT` or `https://HOST:PORT` of the cluster's members (its gRPC gateway).
    public var endpoints: [String]
    /// Every key of the fleet map starts with this (default `/bulkhead`).
    public var prefix: String
    /// Client TLS: required for `https` endpoints.
    public var tls: EtcdTLS?

    public static let defaultPrefix = "/bulkhead"

    public init(endpoints: [String], prefix: String = EtcdSettings.defaultPrefix, tls: EtcdTLS? = nil) {
        self.endpoints = endpoints
        self.prefix = prefix
        self.tls = tls
    }
}

/// PEM files for TLS to etcd: the CA that signed the cluster's certificates, and this host's
/// client certificate and key (etcd's `--client-cert-auth`).
public struct EtcdTLS: Sendable, Equatable {
    public var caFile: String
    public var certFile: String?
    public var keyFile: String?

    public init(caFile: String, certFile: String? = nil, keyFile: String? = nil) {
        self.caFile = caFile
        self.certFile = certFile
        self.keyFile = keyFile
    }
}
