import Config

/// What one tenant's switch knows of the rest of the fleet: for each of the tenant's segments that
/// has a VNI, the other hosts with ports in it and those ports. The daemon builds it from the fleet
/// store (`FleetView.build`) and sends it to the tenant's switch whenever it changes; the switch
/// forwards to, and accepts from, exactly these hosts and ports.
///
/// Values are kept as text (the way the store holds them) but `build` lets through only records
/// whose every field parses, so a switch may treat an unparsable one as a bug.
public struct FleetView: Codable, Sendable, Equatable {
    public struct Segment: Codable, Sendable, Equatable {
        public var id: String
        public var vni: UInt32
        /// The other member hosts, sorted by id; never this host.
        public var hosts: [RemoteHost]
        public init(id: String, vni: UInt32, hosts: [RemoteHost]) { self.id = id; self.vni = vni; self.hosts = hosts }
    }

    public struct RemoteHost: Codable, Sendable, Equatable {
        public var id: String
        /// IPv4 or IPv6 literal.
        public var underlay: String
        /// Sorted by id.
        public var ports: [RemotePort]
        public init(id: String, underlay: String, ports: [RemotePort]) { self.id = id; self.underlay = underlay; self.ports = ports }
    }

    public struct RemotePort: Codable, Sendable, Equatable {
        public var id: String
        public var mac: String
        public var ips: [String]
        public init(id: String, mac: String, ips: [String]) { self.id = id; self.mac = mac; self.ips = ips }
    }

    /// Sorted by id: every segment of the tenant that has a VNI, even one with no remote host.
    public var segments: [Segment]

    public init(segments: [Segment] = []) { self.segments = segments }

    /// A view with every segment of `tenant` that has a VNI and no remote host: what a switch
    /// starts with before the fleet store has answered.
    public static func empty(for tenant: Tenant) -> FleetView {
        FleetView(segments: tenant.segments.compactMap { segment in
            segment.vni.map { Segment(id: segment.id, vni: $0, hosts: []) }
        }.sorted { $0.id < $1.id })
    }

    /// Builds `tenant`'s view from the store's records. A port record is taken only when it is
    /// of this tenant, of one of its segments with the same VNI as ours, of another host that has
    /// a host record with a parsable underlay address, with a unicast MAC and parsable addresses;
    /// the others are left out, each with a problem saying why. Two ports (of any hosts) claiming
    /// one MAC in a segment are both left out: frames to that MAC could go to either.
    public static func build(tenant: Tenant, localHost: String, hosts: [FleetHostRecord],
                             ports: [FleetPortRecord]) -> (view: FleetView, problems: [String]) {
        var problems: [String] = []
        var underlays: [String: String] = [:]
        for host in hosts {
            if IPAddress(host.underlay) == nil {
                problems.append("host \(host.hostId): underlay address '\(host.underlay)' is not an IP address")
            } else {
                underlays[host.hostId] = host.underlay
            }
        }
        let localMACs: [String: Set<MACAddress>] = Dictionary(grouping: tenant.ports, by: \.segment)
            .mapValues { Set($0.map(\.mac)) }
        var segments: [Segment] = []
        for segment in tenant.segments.sorted(by: { $0.id < $1.id }) {
            guard let vni = segment.vni else { continue }
            var byHost: [String: [RemotePort]] = [:]
            var macCount: [MACAddress: Int] = [:]
            var candidates: [(host: String, port: RemotePort, mac: MACAddress)] = []
            for record in ports where record.tenant == tenant.id && record.segment == segment.id && record.host != localHost {
                let name = "port \(record.tenant)/\(record.segment)/\(record.host)/\(record.port)"
                guard record.vni == vni else {
                    problems.append("\(name): VNI \(record.vni) differs from this host's \(vni)"); continue
                }
                guard underlays[record.host] != nil else {
                    problems.append("\(name): its host has no (valid) host record"); continue
                }
                guard let mac = MACAddress(record.mac), !mac.isMulticast, !mac.isZero else {
                    problems.append("\(name): '\(record.mac)' is not a unicast MAC address"); continue
                }
                guard record.ips.allSatisfy({ IPAddress($0) != nil }) else {
                    problems.append("\(name): an address of \(record.ips) is not an IP address"); continue
                }
                macCount[mac, default: 0] += 1
                candidates.append((record.host, RemotePort(id: record.port, mac: mac.description, ips: record.ips), mac))
            }
            for candidate in candidates {
                if macCount[candidate.mac, default: 0] > 1 || localMACs[segment.id]?.contains(candidate.mac) == true {
                    problems.append("port \(tenant.id)/\(segment.id)/\(candidate.host)/\(candidate.port.id): MAC \(candidate.mac) is claimed twice in the segment; left out")
                    continue
                }
                byHost[candidate.host, default: []].append(candidate.port)
            }
            let remote = byHost.keys.sorted().map { host in
                RemoteHost(id: host, underlay: underlays[host] ?? "", ports: (byHost[host] ?? []).sorted { $0.id < $1.id })
            }
            segments.append(Segment(id: segment.id, vni: vni, hosts: remote))
        }
        return (FleetView(segments: segments), problems)
    }
}
