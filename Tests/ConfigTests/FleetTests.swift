import FleetModel
import Testing
@testable import Config

private func fleetHost(_ fleet: String) -> String {
    #"{"stateDirectory": "/var/lib/bh", "fleet": {\#(fleet)}}"#
}
private let etcd = #""etcd": {"endpoints": ["http://10.99.0.254:2379"]}"#
private func withFleet(_ fleet: String, segments: String = #"[{"id": "lan", "vni": 5001}]"#) -> String {
    document(tenants: "[" + tenant(segments: segments, #""ports": [\#(port(extra: #""ips": ["10.0.0.1/24"]"#))]"#) + "]",
             host: fleetHost(fleet))
}

@Suite struct FleetSettingsTests {
    @Test func aFleetSectionDecodes() throws {
        let text = withFleet(#""hostId": "h1", "underlayAddress": "10.99.0.1", "underlayMTU": 1600, "leaseSeconds": 3, \#(etcd)"#)
        let configuration = try HostConfiguration.decode(text)
        let fleet = try #require(configuration.host.fleet)
        #expect(fleet.hostId == "h1")
        #expect(fleet.underlayAddress == IPAddress("10.99.0.1"))
        #expect(fleet.underlayMTU == 1600 && fleet.leaseSeconds == 3)
        #expect(fleet.etcd.endpoints == ["http://10.99.0.254:2379"] && fleet.etcd.prefix == "/bulkhead")
    }

    @Test(arguments: [
        RuleCase("segment MTU too big for the underlay",
                 withFleet(#""hostId": "h1", "underlayAddress": "10.99.0.1", \#(etcd)"#), "$.tenants[0].segments[0].mtu",
                 "does not fit the underlay MTU 1500"),
        RuleCase("IPv6 underlay needs 70 bytes",
                 withFleet(#""hostId": "h1", "underlayAddress": "fd99::1", "underlayMTU": 1560, \#(etcd)"#),
                 "$.tenants[0].segments[0].mtu", "(70 bytes)"),
        RuleCase("host id with a slash",
                 withFleet(#""hostId": "h/1", "underlayAddress": "10.99.0.1", "underlayMTU": 1600, \#(etcd)"#),
                 "$.host.fleet.hostId", "is not a host id"),
        RuleCase("underlay not an address",
                 withFleet(#""hostId": "h1", "underlayAddress": "host-1", "underlayMTU": 1600, \#(etcd)"#),
                 "$.host.fleet.underlayAddress", "is not an IPv4 or IPv6 address"),
        RuleCase("loopback underlay",
                 withFleet(#""hostId": "h1", "underlayAddress": "127.0.0.1", "underlayMTU": 1600, \#(etcd)"#),
                 "$.host.fleet.underlayAddress", "cannot be an underlay address"),
        RuleCase("endpoint without scheme",
                 withFleet(#""hostId": "h1", "underlayAddress": "10.99.0.1", "underlayMTU": 1600, "etcd": {"endpoints": ["10.0.0.5:2379"]}"#),
                 "$.host.fleet.etcd.endpoints[0]", "must start with http:// or https://"),
        RuleCase("https without TLS files",
                 withFleet(#""hostId": "h1", "underlayAddress": "10.99.0.1", "underlayMTU": 1600, "etcd": {"endpoints": ["https://e:2379"]}"#),
                 "$.host.fleet.etcd.tls", "https endpoints need tls.caFile"),
        RuleCase("lease too short",
                 withFleet(#""hostId": "h1", "underlayAddress": "10.99.0.1", "underlayMTU": 1600, "leaseSeconds": 1, \#(etcd)"#),
                 "$.host.fleet.leaseSeconds", "lease TTL"),
        RuleCase("missing etcd",
                 withFleet(#""hostId": "h1", "underlayAddress": "10.99.0.1""#), "$.host.fleet.etcd", "missing required key"),
        RuleCase("prefix with a trailing slash",
                 withFleet(#""hostId": "h1", "underlayAddress": "10.99.0.1", "underlayMTU": 1600, "etcd": {"endpoints": ["http://e:2379"], "prefix": "/bh/"}"#),
                 "$.host.fleet.etcd.prefix", "must start with '/'"),
    ])
    func aBrokenFleetSectionIsReported(_ rule: RuleCase) {
        let found = problems(rule.text)
        #expect(found.contains { $0.path == rule.path && $0.message.contains(rule.fragment) },
                "expected \(rule.path): …\(rule.fragment)…; got \(found.map { "\($0.path): \($0.message)" })")
    }

    @Test func aSegmentWithoutVNIIsNotHeldToTheUnderlayMTU() {
        #expect(problems(withFleet(#""hostId": "h1", "underlayAddress": "10.99.0.1", \#(etcd)"#, segments: #"[{"id": "lan"}]"#)).isEmpty)
    }

    @Test func changingTheFleetSectionNeedsARestart() throws {
        let a = try HostConfiguration.decode(withFleet(#""hostId": "h1", "underlayAddress": "10.99.0.1", "underlayMTU": 1600, \#(etcd)"#))
        let b = try HostConfiguration.decode(withFleet(#""hostId": "h2", "underlayAddress": "10.99.0.1", "underlayMTU": 1600, \#(etcd)"#))
        #expect(ConfigurationDifference(from: a, to: b).needsRestart.contains { $0.path == "$.host.fleet" })
    }
}

@Suite struct FleetViewTests {
    let tenant = Tenant(id: "blue", segments: [Segment(id: "lan", vni: 5001), Segment(id: "local")],
                        ports: [Port(id: "a", segment: "lan", mac: MACAddress("02:00:00:00:01:01")!)])
    let hosts = [FleetHostRecord(hostId: "h1", underlay: "10.99.0.1"), FleetHostRecord(hostId: "h2", underlay: "10.99.0.2"),
                 FleetHostRecord(hostId: "h3", underlay: "10.99.0.3")]

    func record(_ host: String, _ port: String, mac: String, vni: UInt32 = 5001, tenant: String = "blue",
                ips: [String] = ["10.0.0.2"]) -> FleetPortRecord {
        FleetPortRecord(tenant: tenant, segment: "lan", vni: vni, host: host, port: port, mac: mac, ips: ips)
    }

    @Test func theViewHoldsOtherHostsPortsOfTheTenantsVNISegments() {
        let (view, problems) = FleetView.build(tenant: tenant, localHost: "h1", hosts: hosts, ports: [
            record("h1", "a", mac: "02:00:00:00:01:01", ips: ["10.0.0.1"]),  // this host's own: not in the view
            record("h2", "b", mac: "02:00:00:00:01:02"),
            record("h3", "c", mac: "02:00:00:00:01:03", ips: ["10.0.0.3", "fd00::3"]),
            record("h2", "x", mac: "02:00:00:00:09:09", tenant: "red"),  // another tenant's
        ])
        #expect(problems.isEmpty)
        #expect(view.segments.map(\.id) == ["lan"])  // "local" has no VNI
        let lan = view.segments[0]
        #expect(lan.vni == 5001)
        #expect(lan.hosts.map(\.id) == ["h2", "h3"])
        #expect(lan.hosts.map(\.underlay) == ["10.99.0.2", "10.99.0.3"])
        #expect(lan.hosts[1].ports == [FleetView.RemotePort(id: "c", mac: "02:00:00:00:01:03", ips: ["10.0.0.3", "fd00::3"])])
    }

    @Test func recordsThatCannotBeTrustedAreLeftOutWithAReason() {
        let (view, problems) = FleetView.build(tenant: tenant, localHost: "h1", hosts: hosts + [FleetHostRecord(hostId: "h9", underlay: "nowhere")], ports: [
            record("h2", "wrongvni", mac: "02:00:00:00:01:02", vni: 6001),
            record("h4", "nohost", mac: "02:00:00:00:01:04"),
            record("h9", "badunderlay", mac: "02:00:00:00:01:09"),
            record("h2", "multicast", mac: "03:00:00:00:01:05"),
            record("h2", "badip", mac: "02:00:00:00:01:06", ips: ["10.0.0.300"]),
            record("h2", "dup1", mac: "02:00:00:00:01:07"),
            record("h3", "dup2", mac: "02:00:00:00:01:07"),
            record("h3", "local", mac: "02:00:00:00:01:01"),  // claims this host's port's MAC
        ])
        #expect(view.segments.first?.hosts.isEmpty == true, "\(view)")
        for fragment in ["VNI 6001 differs", "h4/nohost: its host has no (valid) host record", "h9/badunderlay",
                         "not a unicast MAC", "is not an IP address", "dup1: MAC", "dup2: MAC", "local: MAC",
                         "underlay address 'nowhere'"] {
            #expect(problems.contains { $0.contains(fragment) }, "no problem mentions \(fragment): \(problems)")
        }
    }

    @Test func anEmptyViewListsTheVNISegments() {
        #expect(FleetView.empty(for: tenant) == FleetView(segments: [.init(id: "lan", vni: 5001, hosts: [])]))
    }
}
