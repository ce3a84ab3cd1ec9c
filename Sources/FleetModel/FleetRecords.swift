import Config

/// What a host publishes about itself in the fleet store (etcd), under its lease:
/// `<prefix>/hosts/<hostId>`. The value is this record as JSON.
public struct FleetHostRecord: Codable, Sendable, Equatable {
    /// `host.fleet.hostId` of the host.
    public var hostId: String
    /// Its underlay address (IPv4 or IPv6 literal): where its VXLAN uplink listens (UDP 4789).
    public var underlay: String

    public init(hostId: String, underlay: String) {
        self.hostId = hostId
        self.underlay = underlay
    }
}

/// One tenant port as the fleet store holds it: `<prefix>/ports/<tenant>/<segment>/<hostId>/<port>`,
/// under its host's lease. Everything another host needs to reach the port and to check frames
/// that claim to come from it.
public struct FleetPortRecord: Codable, Sendable, Equatable {
    public var tenant: String
    public var segment: String
    /// The segment's VNI on the publishing host; a record whose VNI differs from ours is ignored.
    public var vni: UInt32
    public var host: String
    public var port: String
    /// `aa:bb:cc:dd:ee:ff`.
    public var mac: String
    /// The port's addresses, without prefix length (`10.0.0.1`, `fd00::1`).
    public var ips: [String]

    public init(tenant: String, segment: String, vni: UInt32, host: String, port: String, mac: String, ips: [String]) {
        self.tenant = tenant; self.segment = segment; self.vni = vni; self.host = host; self.port = port
        self.mac = mac; self.ips = ips
    }
}

/// The fleet store's key layout. Every key lives under `prefix` (`host.fleet.etcd.prefix`).
public enum FleetKeys {
    public static func hosts(prefix: String) -> String { "\(prefix)/hosts/" }
    public static func host(prefix: String, hostId: String) -> String { "\(prefix)/hosts/\(hostId)" }
    public static func ports(prefix: String) -> String { "\(prefix)/ports/" }
    /// Every port of one tenant's segment, on every host.
    public static func segment(prefix: String, tenant: String, segment: String) -> String {
        "\(prefix)/ports/\(tenant)/\(segment)/"
    }
    public static func port(prefix: String, tenant: String, segment: String, host: String, port: String) -> String {
        "\(prefix)/ports/\(tenant)/\(segment)/\(host)/\(port)"
    }
}

extension FleetPortRecord {
    /// The records this host publishes: one per port of a segment that has a VNI.
    public static func records(of configuration: HostConfiguration, hostId: String) -> [FleetPortRecord] {
        var records: [FleetPortRecord] = []
        for tenant in configuration.tenants {
            for port in tenant.ports {
                guard let vni = tenant.segments.first(where: { $0.id == port.segment })?.vni else { continue }
                records.append(FleetPortRecord(tenant: tenant.id, segment: port.segment, vni: vni, host: hostId,
                                               port: port.id, mac: port.mac.description,
                                               ips: port.ips.map { $0.address.description }))
            }
        }
        return records
    }
}
