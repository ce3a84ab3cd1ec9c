import Foundation
import Testing
@testable import Config

@Suite struct DecodingTests {
    @Test func demoDecodesToTheExpectedModel() throws {
        let configuration = try HostConfiguration.load(contentsOf: repositoryFile("configs/demo.json"))
        func mac(_ text: String) -> MACAddress { MACAddress(text) ?? .zero }
        func prefixes(_ texts: [String]) -> [IPPrefix] { texts.compactMap(IPPrefix.init) }
        let telnet = ACLRule(action: .deny, protocol: .tcp, destinationPort: PortRange(lower: 23, upper: 23))
        let guest = Partition(
            id: "guest", vcpus: 1, memoryMiB: 64,
            boot: .image(MeasuredFile(path: "/var/lib/bulkhead/images/bhtest.bin",
                                      sha256: "9dcc006fb4ffa6ec6e3ea1474a258f851660d0b461c68e3702ad55da9b270124")),
            cmdline: "blk net ping=10.0.0.1", disks: ["data"], nics: ["vm"])
        func tenant(_ id: String, vni: UInt32, macs: (String, String, String), rateLimit: RateLimit?, qos: VolumeQoS?) -> Tenant {
            Tenant(id: id, segments: [Segment(id: "lan", vni: vni)], ports: [
                Port(id: "a", kind: .tap, segment: "lan", mac: mac(macs.0),
                     ips: prefixes(["10.0.0.1/24", "fd00::1/64"]), netns: "\(id)-a", rateLimit: rateLimit),
                Port(id: "b", kind: .tap, segment: "lan", mac: mac(macs.1),
                     ips: prefixes(["10.0.0.2/24", "fd00::2/64"]), netns: "\(id)-b"),
                Port(id: "vm", kind: .vhostUser, segment: "lan", mac: mac(macs.2),
                     ips: prefixes(["10.0.0.3/24", "fd00::3/64"])),
            ], volumes: [Volume(id: "data", sizeBytes: 1 << 30, qos: qos)], partitions: [guest], acl: [telnet])
        }
        let limits = HostLimits(
            services: ServiceLimits(switch: ResourceLimits(memoryMiB: 512, cpuWeight: 200, pids: 256),
                                    blockServer: ResourceLimits(memoryMiB: 256, cpuWeight: 100, pids: 256)),
            partitions: ResourceLimits(cpuPercent: 100, pids: 64))
        let expected = HostConfiguration(
            host: HostSettings(stateDirectory: "/var/lib/bulkhead/demo", controlSocketGroup: 64990,
                               auditLog: "/var/lib/bulkhead/demo/audit.log", metrics: "127.0.0.1:9464", limits: limits),
            principals: [Principal(name: "ops", uid: 0, role: .hostAdmin),
                         Principal(name: "operator", uid: 64991, role: .operator),
                         Principal(name: "blue-admin", uid: 64992, role: .tenantAdmin, tenant: "blue"),
                         Principal(name: "red-admin", uid: 64993, role: .tenantAdmin, tenant: "red"),
                         Principal(name: "blue-viewer", uid: 64994, role: .tenantViewer, tenant: "blue"),
                         Principal(name: "auditor", uid: 64995, role: .auditor)],
            tenants: [
                tenant("blue", vni: 5001, macs: ("02:00:00:00:01:01", "02:00:00:00:01:02", "02:00:00:00:01:03"),
                       rateLimit: RateLimit(bitsPerSecond: 20_000_000_000), qos: nil),
                tenant("red", vni: 5002, macs: ("02:00:00:00:02:01", "02:00:00:00:02:02", "02:00:00:00:02:03"), rateLimit: nil,
                       qos: VolumeQoS(iops: 20_000, bytesPerSecond: 200 << 20)),
            ])
        #expect(expected.tenants.flatMap(\.ports).allSatisfy { !$0.mac.isZero && $0.ips.count == 2 })
        #expect(configuration == expected)
        #expect(configuration.tenants.first?.ports.first?.interfaceName(tenant: "blue") == "bh-blue-a")
    }

    @Test func defaultsOfOptionalFields() throws {
        let text = document(tenants: "[" + tenant("blue", "\"ports\": [\(port())]") + "]")
        let configuration = try HostConfiguration.decode(text)
        let port = try #require(configuration.tenants.first?.ports.first)
        #expect(port == Port(id: "a", segment: "lan", mac: try #require(MACAddress("02:00:00:00:01:01"))))
        #expect(configuration.tenants.first?.segments.first == Segment(id: "lan"))
        #expect(configuration.principals.isEmpty)
        #expect(configuration.host.jailUidBase == HostSettings.defaultJailUidBase)
        #expect(configuration.host.jailUids == 900_000_000 ..< 900_065_536)
    }

    @Test func switchWorkers() throws {
        let blue = "[" + tenant("blue") + "]"
        let unset = try HostConfiguration.decode(document(tenants: blue))
        #expect(unset.host.switchSettings == SwitchSettings())
        #expect(unset.host.switchSettings.resolvedWorkers(onlineCores: 64) == 64, "one worker per online core")
        #expect(unset.host.switchSettings.resolvedWorkers(onlineCores: 0) == 1)
        #expect(unset.host.switchSettings.resolvedWorkers(onlineCores: 1000) == 256)
        let set = try HostConfiguration.decode(document(
            tenants: blue, host: #"{"stateDirectory": "/var/lib/bh", "switch": {"workers": 3}}"#))
        #expect(set.host.switchSettings.workers == 3)
        #expect(set.host.switchSettings.resolvedWorkers(onlineCores: 64) == 3)
        let wrongType = problems(document(tenants: blue, host: #"{"stateDirectory": "/var/lib/bh", "switch": {"workers": "2"}}"#))
        #expect(wrongType.map(\.path) == ["$.host.switch.workers"])
        #expect(wrongType.first?.message.contains("expected an integer, found a string") == true)
        let unknown = problems(document(tenants: blue, host: #"{"stateDirectory": "/var/lib/bh", "switch": {"threads": 2}}"#))
        #expect(unknown.map(\.path) == ["$.host.switch.threads"])
    }

    @Test func theJailUidRangeIsTheBasePlus65536() throws {
        // The highest base validation lets through: the range ends just below (uid_t)-2.
        let configuration = try HostConfiguration.decode(document(
            tenants: "[" + tenant("blue") + "]", host: #"{"stateDirectory": "/var/lib/bh", "jailUidBase": 4294901758}"#))
        #expect(configuration.host.jailUids == 4_294_901_758 ..< 4_294_967_294)
        // Beyond what validation lets through: cut short, never wrapped or trapping.
        var edited = configuration
        edited.host.jailUidBase = .max
        #expect(edited.host.jailUids.isEmpty)
        edited.host.jailUidBase = 4_294_967_000
        #expect(edited.host.jailUids == 4_294_967_000 ..< 4_294_967_294)
    }

    @Test func allKeysDecode() throws {
        let text = document(tenants: "[" + tenant("blue", segments: #"[{"id": "lan", "vni": 7, "mtu": 9000, "macTable": {"maxEntries": 10, "maxEntriesPerPort": 5, "agingSeconds": 60}}]"#, #"""
            "ports": [{"id": "a", "kind": "tap", "segment": "lan", "mac": "02:00:00:00:01:01", "ips": ["10.0.0.5/24"],
                       "allowedMACs": ["02:00:00:00:01:02"], "netns": "ns.a_1", "ifname": "tap0", "queues": 4,
                       "allowDHCPClient": true, "dhcpServer": true, "router": true,
                       "rateLimit": {"bitsPerSecond": 1, "burstBits": 2, "packetsPerSecond": 3, "burstPackets": 4},
                       "stormControl": {"broadcastPacketsPerSecond": 5, "multicastPacketsPerSecond": 6}},
                      {"id": "vm", "kind": "vhost-user", "segment": "lan", "mac": "02:00:00:00:01:10", "ips": ["10.0.0.6/24"]}],
            "volumes": [{"id": "data", "sizeBytes": 1024, "readOnly": true, "serial": "SER1",
                         "qos": {"iops": 1, "burstIOs": 2, "bytesPerSecond": 3, "burstBytes": 4}}],
            "partitions": [{"id": "vm1", "vcpus": 2, "memoryMiB": 256,
                            "kernel": {"path": "/k", "sha256": "\#(String(repeating: "A", count: 64))"},
                            "initrd": {"path": "/i", "sha256": "\#(zeroDigest)"}, "cmdline": "console=ttyS0",
                            "disks": ["data"], "nics": ["vm"], "restart": "always"}],
            "acl": [{"action": "allow", "direction": "ingress", "protocol": 6, "source": "10.0.0.0/8",
                     "destination": "10.1.0.0/16", "sourcePort": "1000-2000", "destinationPort": 22, "port": "a"}]
            """#) + "]", principals: #"[{"name": "blue-admin", "uid": 1001, "role": "tenant-admin", "tenant": "blue"}]"#,
            host: #"{"stateDirectory": "/var/lib/bh/", "controlSocket": "run/control.sock", "auditLog": "/var/lib/bh/audit/log"}"#)
        let configuration = try HostConfiguration.decode(text)
        let blue = try #require(configuration.tenants.first)
        #expect(blue.segments.first?.macTable == MACTableSettings(maxEntries: 10, maxEntriesPerPort: 5, agingSeconds: 60))
        #expect(blue.ports.first?.rateLimit == RateLimit(bitsPerSecond: 1, burstBits: 2, packetsPerSecond: 3, burstPackets: 4))
        #expect(blue.ports.first?.queues == 4)
        #expect(blue.ports.first?.router == true)
        #expect(blue.volumes.first?.qos == VolumeQoS(iops: 1, burstIOs: 2, bytesPerSecond: 3, burstBytes: 4))
        #expect(blue.partitions.first == Partition(
            id: "vm1", vcpus: 2, memoryMiB: 256,
            boot: .linux(kernel: MeasuredFile(path: "/k", sha256: String(repeating: "a", count: 64)),
                         initrd: MeasuredFile(path: "/i", sha256: zeroDigest)),
            cmdline: "console=ttyS0", disks: ["data"], nics: ["vm"], restart: .always))
        #expect(blue.acl.first == ACLRule(action: .allow, direction: .ingress, protocol: .number(6),
                                          source: IPPrefix("10.0.0.0/8"), destination: IPPrefix("10.1.0.0/16"),
                                          sourcePort: PortRange(lower: 1000, upper: 2000),
                                          destinationPort: PortRange(lower: 22, upper: 22), port: "a"))
        #expect(configuration.principals.first?.tenant == "blue")
    }

    @Test func flatImagePartitionDefaults() throws {
        let text = document(tenants: "[" + tenant("blue", #""partitions": [{"id": "vm1", "vcpus": 1, "memoryMiB": 64, "image": {"path": "/srv/bhtest.bin", "sha256": "\#(zeroDigest)"}}]"#) + "]")
        let configuration = try HostConfiguration.decode(text)
        let image = MeasuredFile(path: "/srv/bhtest.bin", sha256: zeroDigest)
        #expect(configuration.tenants.first?.partitions == [
            Partition(id: "vm1", vcpus: 1, memoryMiB: 64, boot: .image(image), cmdline: "", disks: [], nics: [],
                      restart: .onReboot),
        ])
        let partition = try #require(configuration.partition(tenant: "blue", id: "vm1"))
        #expect(partition.measuredFiles == [image])
        #expect(partition.memoryBytes == 64 << 20)
    }

    @Test func linuxPartitionWithoutInitrd() throws {
        let text = document(tenants: "[" + tenant("blue", "\"partitions\": [" + partition("vm1", #""restart": "never""#) + "]") + "]")
        let partition = try #require(try HostConfiguration.decode(text).partition(tenant: "blue", id: "vm1"))
        let kernel = MeasuredFile(path: "/srv/vmlinux", sha256: zeroDigest)
        #expect(partition.boot == .linux(kernel: kernel, initrd: nil))
        #expect(partition.measuredFiles == [kernel])
        #expect(partition.restart == .never)
    }

    @Test func lookupsFindAPartitionsVolumesAndPorts() throws {
        let blue = tenant("blue", #"""
            "ports": [{"id": "a", "segment": "lan", "mac": "02:00:00:00:01:01"},
                      {"id": "n1", "kind": "vhost-user", "segment": "lan", "mac": "02:00:00:00:01:02"},
                      {"id": "n2", "kind": "vhost-user", "segment": "lan", "mac": "02:00:00:00:01:03"}],
            "volumes": [{"id": "root", "sizeBytes": 512}, {"id": "data", "sizeBytes": 1024}, {"id": "spare", "sizeBytes": 512}],
            "partitions": [\#(partition("vm1", #""disks": ["data", "root"], "nics": ["n2", "n1"]"#)), \#(partition("vm2"))]
            """#)
        let configuration = try HostConfiguration.decode(document(tenants: "[" + blue + ", " + tenant("red") + "]"))
        #expect(configuration.tenant("red")?.id == "red")
        #expect(configuration.tenant("green") == nil)
        #expect(configuration.partition(tenant: "red", id: "vm1") == nil)
        #expect(configuration.partition(tenant: "green", id: "vm1") == nil)
        let tenant = try #require(configuration.tenant("blue"))
        let vm1 = try #require(configuration.partition(tenant: "blue", id: "vm1"))
        #expect(tenant.partition("vm2")?.id == "vm2")
        #expect(tenant.partition("vm3") == nil)
        // In the partition's order, which is its devices' PCI slot order.
        #expect(tenant.volumes(of: vm1).map(\.id) == ["data", "root"])
        #expect(tenant.volumes(of: vm1).map(\.sizeBytes) == [1024, 512])
        #expect(tenant.ports(of: vm1).map(\.id) == ["n2", "n1"])
        #expect(tenant.ports(of: vm1).map(\.mac) == [MACAddress("02:00:00:00:01:03"), MACAddress("02:00:00:00:01:02")])
        #expect(tenant.partition(attachingVolume: "root")?.id == "vm1")
        #expect(tenant.partition(attachingVolume: "spare") == nil)
        #expect(tenant.partition(usingPort: "n1")?.id == "vm1")
        #expect(tenant.partition(usingPort: "a") == nil)
        #expect(tenant.port("a")?.kind == .tap)
        #expect(tenant.volume("spare")?.sizeBytes == 512)
        #expect(tenant.segment("lan")?.mtu == 1500)
        let state = configuration.host.stateDirectory
        #expect(tenant.volumes(of: vm1).map { $0.vhostUserSocketPath(stateDirectory: state, tenant: "blue") }
            == ["/var/lib/bh/tenants/blue/vhost/data.sock", "/var/lib/bh/tenants/blue/vhost/root.sock"])
        #expect(tenant.ports(of: vm1).map { $0.vhostUserSocketPath(stateDirectory: state, tenant: "blue") }
            == ["/var/lib/bh/tenants/blue/net/n2.sock", "/var/lib/bh/tenants/blue/net/n1.sock"])
    }

    @Test func restartPolicies() {
        let table: [(RestartPolicy, [RestartPolicy.Ending: Bool])] = [
            (.never, [.poweredOff: false, .rebooted: false, .failed: false]),
            (.onReboot, [.poweredOff: false, .rebooted: true, .failed: true]),
            (.always, [.poweredOff: true, .rebooted: true, .failed: true]),
        ]
        for (policy, expected) in table {
            for ending in RestartPolicy.Ending.allCases {
                #expect(policy.restarts(after: ending) == expected[ending], "\(policy) after \(ending)")
            }
        }
        #expect(RestartPolicy.allCases.map(\.rawValue) == ["never", "on-reboot", "always"])
    }

    @Test func vhostUserPortDecodes() throws {
        let text = document(tenants: "[" + tenant("blue", #""ports": [{"id": "vm", "kind": "vhost-user", "segment": "lan", "mac": "02:00:00:00:01:05", "ips": ["10.0.0.9/24"], "queues": 2}]"#) + "]")
        let configuration = try HostConfiguration.decode(text)
        let port = try #require(configuration.tenants.first?.ports.first)
        #expect(port.kind == .vhostUser)
        #expect(port.queues == 2)
        #expect(port.netns == nil && port.ifname == nil)
        #expect(port.vhostUserSocketPath(stateDirectory: configuration.host.stateDirectory, tenant: "blue")
            == "/var/lib/bh/tenants/blue/net/vm.sock")
    }

    @Test func tenantsMayShareSubnetsAndMACs() throws {
        let tenants = "[" + tenant("blue", "\"ports\": [\(port(extra: #""ips": ["10.0.0.1/24"]"#))]") + ", "
            + tenant("red", "\"ports\": [\(port(extra: #""ips": ["10.0.0.1/24"]"#))]") + "]"
        #expect(problems(document(tenants: tenants)).isEmpty)
    }

    @Test func severalProblemsAreAllReportedInOrder() throws {
        let text = """
        {
          "host": {"stateDirectory": "relative"},
          "principals": [{"name": "ops", "uid": -1, "role": "root"}],
          "tenants": [
            {"id": "blue", "segments": [{"id": "lan", "vni": 0}],
             "ports": [{"id": "a", "segment": "lan", "mac": "01:00:00:00:00:01"},
                       {"id": "b", "segment": "wan", "mac": "02:00:00:00:00:01", "queues": 0}]}
          ]
        }
        """
        let found = problems(text)
        #expect(found.map(\.path) == [
            "$.host.stateDirectory", "$.principals[0].uid", "$.principals[0].role", "$.tenants[0].segments[0].vni",
            "$.tenants[0].ports[0].mac", "$.tenants[0].ports[1].segment", "$.tenants[0].ports[1].queues",
        ])
        #expect(found.allSatisfy { $0.line != nil && $0.column != nil })
        #expect(found.first?.description == #"$.host.stateDirectory (line 2, column 30): "relative" is not an absolute path; start it with '/'"#)
    }

    @Test func errorDescriptionNamesTheFile() throws {
        let path = repositoryFile("configs/examples/shape.json")
        do {
            _ = try HostConfiguration.load(contentsOf: path)
            Issue.record("expected an error")
        } catch {
            #expect(error.file == path)
            #expect(error.description.hasPrefix("\(path): configuration has 7 problems\n"))
        }
    }

    @Test func missingFile() {
        do {
            _ = try HostConfiguration.load(contentsOf: "/nonexistent/bulkhead.json")
            Issue.record("expected an error")
        } catch {
            #expect(error.problems.map(\.path) == ["$"])
            #expect(error.problems.first?.message.contains("cannot read") == true)
        }
    }

    @Test func integersAreExact() {
        let cases: [(String, String)] = [
            (#"1e3"#, "expected an integer, found 1e3"), (#"1.0"#, "expected an integer, found 1.0"),
            (#"-1"#, "out of range"), (#"4294967296"#, "out of range"), (#"true"#, "expected an integer, found a boolean"),
            (#""5""#, "expected an integer, found a string"),
        ]
        for (value, fragment) in cases {
            let found = problems(document(principals: #"[{"name": "ops", "uid": \#(value), "role": "auditor"}]"#))
            #expect(found.map(\.path) == ["$.principals[0].uid"], "\(value)")
            #expect(found.first?.message.contains(fragment) == true, "\(value): \(found)")
        }
        let big = problems(document(tenants: "[" + tenant("blue", #""volumes": [{"id": "v", "sizeBytes": 18446744073709551616}]"#) + "]"))
        #expect(big.map(\.path) == ["$.tenants[0].volumes[0].sizeBytes"])
    }

    /// The broken examples under configs/examples each report exactly these paths.
    @Test(arguments: [
        ("cross-tenant.json", [
            "$.tenants[1].segments[0].vni", "$.tenants[1].ports[0].segment",
            "$.tenants[1].partitions[0].disks[0]", "$.tenants[1].partitions[0].nics[0]", "$.tenants[1].acl[0].port",
        ]),
        ("duplicates.json", [
            "$.principals[1].name", "$.principals[1].uid", "$.tenants[0].segments[1].id",
            "$.tenants[0].ports[1].mac", "$.tenants[0].ports[1].ips[0]", "$.tenants[0].partitions[1].disks[0]",
            "$.tenants[0].partitions[1].nics[0]", "$.tenants[1].id",
        ]),
        ("host-and-principals.json", [
            "$.host.controlSocket", "$.host.auditLog", "$.principals[0].tenant", "$.principals[1].tenant",
            "$.principals[2].tenant", "$.principals[3].role",
        ]),
        ("partitions.json", [
            "$.tenants[0].partitions[0].image", "$.tenants[0].partitions[1]", "$.tenants[0].partitions[2].initrd",
            "$.tenants[0].partitions[3].image.path", "$.tenants[0].partitions[3].disks[1]",
            "$.tenants[0].partitions[3].nics[0]", "$.tenants[0].partitions[4].restart",
        ]),
        ("shape.json", [
            "$.host.logLevel", "$.tenants[0].segments[0].mtu", "$.tenants[0].ports[0].router",
            "$.tenants[0].ports[1].mac", "$.tenants[0].ports[2].mac", "$.tenants[0].ports[2].allowedMacs",
            "$.tenants[0].volumes[0].sizeBytes",
        ]),
    ])
    func brokenExamples(file: String, paths: [String]) throws {
        let path = repositoryFile("configs/examples/" + file)
        do {
            _ = try HostConfiguration.load(contentsOf: path)
            Issue.record("\(file) decoded")
        } catch {
            #expect(error.problems.map(\.path) == paths, "\(error)")
            #expect(error.problems.allSatisfy { $0.line != nil })
        }
    }
}
