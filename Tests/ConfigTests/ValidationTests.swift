import Testing
@testable import Config

/// One document that breaks one rule, the path it must be reported at and part of the message.
struct RuleCase: Sendable, CustomTestStringConvertible {
    var name: String
    var text: String
    var path: String
    var fragment: String
    var testDescription: String { name }

    init(_ name: String, _ text: String, _ path: String, _ fragment: String) {
        self.name = name; self.text = text; self.path = path; self.fragment = fragment
    }
}

/// A document with one tenant "blue" (segment "lan") whose members are `extra`.
private func blue(_ extra: String, segments: String = #"[{"id": "lan"}]"#) -> String {
    document(tenants: "[" + tenant("blue", segments: segments, extra) + "]")
}

/// A document with tenants "blue" and "red", each with segment "lan" plus `redSegment`.
private func blueAndRed(blue: String, red: String) -> String {
    document(tenants: "[" + tenant("blue", segments: #"[{"id": "lan"}]"#, blue) + ", "
        + tenant("red", segments: #"[{"id": "dmz"}]"#, red) + "]")
}

private func ports(_ list: String...) -> String { "\"ports\": [" + list.joined(separator: ", ") + "]" }
private func principal(_ members: String) -> String { document(tenants: "[" + tenant() + "]", principals: "[{" + members + "}]") }
private func host(_ members: String) -> String { document(host: "{" + members + "}") }
private func acl(_ rule: String) -> String { blue(ports(port()) + #", "acl": ["# + rule + "]") }
private func ip(_ address: String) -> String { blue(ports(port(extra: #""ips": ["\#(address)"]"#))) }
private func partitions(_ list: [String]) -> String { "\"partitions\": [" + list.joined(separator: ", ") + "]" }
private func partitions(_ list: String...) -> String { partitions(list) }
/// Tenant "blue" with volumes "data" and "logs", vhost-user ports "vm" and "vm2", TAP port "a",
/// and the given partitions.
private func equipped(_ partitionList: String...) -> String {
    blue(ports(port(), port("vm", mac: "02:00:00:00:01:03", #""kind": "vhost-user""#),
               port("vm2", mac: "02:00:00:00:01:04", #""kind": "vhost-user""#))
        + #", "volumes": [{"id": "data", "sizeBytes": 512}, {"id": "logs", "sizeBytes": 512}], "#
        + partitions(partitionList))
}
/// A partition booting a flat image, with the given extra members.
private func flat(_ id: String = "vm1", _ extra: String = "") -> String {
    #"{"id": "\#(id)", "vcpus": 1, "memoryMiB": 64, "image": {"path": "/srv/bhtest.bin", "sha256": "\#(zeroDigest)"}\#(extra.isEmpty ? "" : ", " + extra)}"#
}
/// Tenant "blue" with volumes "v0"..., vhost-user ports "p0"... (at most 90) and one partition
/// attaching all of them as disks and NICs.
private func manyDevices(disks: Int = 0, nics: Int = 0) -> String {
    let volumes = (0..<disks).map { #"{"id": "v\#($0)", "sizeBytes": 512}"# }.joined(separator: ", ")
    let vhostPorts = (0..<nics).map { port("p\($0)", mac: "02:00:00:00:02:\(10 + $0)", #""kind": "vhost-user""#) }
    let list = { (prefix: String, count: Int) in (0..<count).map { "\"\(prefix)\($0)\"" }.joined(separator: ", ") }
    return blue("\"ports\": [" + vhostPorts.joined(separator: ", ") + "], \"volumes\": [" + volumes + "], "
        + partitions(flat("vm1", "\"disks\": [\(list("v", disks))], \"nics\": [\(list("p", nics))]")))
}

let ruleCases: [RuleCase] = [
    // Shape
    RuleCase("unknown key", blue(#""colour": "x""#), "$.tenants[0].colour", "allowed keys: acl, id, limits, partitions, ports, segments, volumes"),
    RuleCase("unknown key near a real one", blue(ports(port(extra: #""allowedMacs": []"#))), "$.tenants[0].ports[0].allowedMacs", "did you mean \"allowedMACs\""),
    RuleCase("unknown top-level key", #"{"host": {"stateDirectory": "/x"}, "extra": 1}"#, "$.extra", "unknown key \"extra\""),
    RuleCase("wrong type", document(tenants: #"[{"id": 5}]"#), "$.tenants[0].id", "expected a string, found a number"),
    RuleCase("not an object", document(tenants: #"[[]]"#), "$.tenants[0]", "expected an object (Tenant), found an array"),
    RuleCase("not an array", document(tenants: #"{}"#), "$.tenants", "expected an array, found an object"),
    RuleCase("null is not absent", blue(ports(port(extra: #""netns": null"#))), "$.tenants[0].ports[0].netns", "expected a string, found null"),
    RuleCase("missing key", blue(#""ports": [{"id": "a", "segment": "lan"}]"#), "$.tenants[0].ports[0].mac", "missing required key \"mac\""),
    RuleCase("missing host", #"{}"#, "$.host", "missing required key \"host\""),
    RuleCase("bad MAC text", blue(ports(port(mac: "02:00:00:00:01"))), "$.tenants[0].ports[0].mac", "is not a MAC address"),
    RuleCase("bad IP text", ip("10.0.0.1/33"), "$.tenants[0].ports[0].ips[0]", "is not an IP address or prefix"),
    RuleCase("bad kind", blue(ports(port(extra: #""kind": "veth""#))), "$.tenants[0].ports[0].kind", #"valid values: "tap""#),
    RuleCase("bool is not a number", blue(ports(port(extra: #""queues": true"#))), "$.tenants[0].ports[0].queues", "expected an integer, found a boolean"),
    RuleCase("number is not a bool", blue(ports(port(extra: #""router": 1"#))), "$.tenants[0].ports[0].router", "expected true or false"),
    // Duplicates
    RuleCase("duplicate tenant", document(tenants: "[" + tenant() + ", " + tenant() + "]"), "$.tenants[1].id", "duplicate tenant id \"blue\" (also $.tenants[0])"),
    RuleCase("duplicate segment", blue("", segments: #"[{"id": "lan"}, {"id": "lan"}]"#), "$.tenants[0].segments[1].id", "duplicate segment id \"lan\" in tenant \"blue\""),
    RuleCase("duplicate port", blue(ports(port(), port("a", mac: "02:00:00:00:01:02", #""ifname": "x""#))), "$.tenants[0].ports[1].id", "duplicate port id \"a\""),
    RuleCase("duplicate volume", blue(#""volumes": [{"id": "v", "sizeBytes": 512}, {"id": "v", "sizeBytes": 512}]"#), "$.tenants[0].volumes[1].id", "duplicate volume id \"v\""),
    RuleCase("duplicate partition", blue(#""partitions": [\#(partition()), \#(partition())]"#), "$.tenants[0].partitions[1].id", "duplicate partition id \"vm1\""),
    RuleCase("duplicate principal name", document(principals: #"[{"name": "ops", "uid": 0, "role": "auditor"}, {"name": "ops", "uid": 1, "role": "auditor"}]"#), "$.principals[1].name", "duplicate principal name \"ops\""),
    RuleCase("duplicate uid", document(principals: #"[{"name": "ops", "uid": 7, "role": "auditor"}, {"name": "ops2", "uid": 7, "role": "auditor"}]"#), "$.principals[1].uid", "uid 7 is already used by principal 'ops'"),
    // References
    RuleCase("unknown segment", blue(ports(port(segment: "web"))), "$.tenants[0].ports[0].segment", #"no segment "web" in tenant "blue"; its segments: "lan""#),
    RuleCase("other tenant's segment", blueAndRed(blue: ports(port(segment: "dmz")), red: ""), "$.tenants[0].ports[0].segment", #"segment "dmz" belongs to tenant "red", not "blue"; a port cannot use another tenant's segment"#),
    RuleCase("ACL on unknown port", acl(#"{"action": "deny", "port": "zz"}"#), "$.tenants[0].acl[0].port", #"no port "zz" in tenant "blue"; its ports: "a""#),
    RuleCase("ACL on other tenant's port", blueAndRed(blue: #""acl": [{"action": "deny", "port": "r1"}]"#, red: ports(port("r1", segment: "dmz"))), "$.tenants[0].acl[0].port", #"port "r1" belongs to tenant "red""#),
    RuleCase("disk on other tenant's volume", blueAndRed(blue: partitions(partition("vm1", #""disks": ["data"]"#)), red: #""volumes": [{"id": "data", "sizeBytes": 512}]"#), "$.tenants[0].partitions[0].disks[0]", #"volume "data" belongs to tenant "red", not "blue"; a partition cannot use another tenant's volume"#),
    RuleCase("disk on unknown volume", blue(partitions(partition("vm1", #""disks": ["data"]"#))), "$.tenants[0].partitions[0].disks[0]", #"no volume "data" in tenant "blue"; there are no volumes"#),
    RuleCase("disk on a volume the tenant lacks", equipped(flat("vm1", #""disks": ["date"]"#)), "$.tenants[0].partitions[0].disks[0]", #"no volume "date" in tenant "blue"; its volumes: "data", "logs""#),
    RuleCase("NIC on other tenant's port", blueAndRed(blue: partitions(flat("vm1", #""nics": ["vm"]"#)), red: ports(port("vm", segment: "dmz", #""kind": "vhost-user""#))), "$.tenants[0].partitions[0].nics[0]", #"port "vm" belongs to tenant "red", not "blue"; a partition NIC cannot use another tenant's port"#),
    RuleCase("NIC on unknown port", equipped(flat("vm1", #""nics": ["zz"]"#)), "$.tenants[0].partitions[0].nics[0]", #"no port "zz" in tenant "blue"; its ports: "a", "vm", "vm2""#),
    // Uniqueness in a segment
    RuleCase("MAC twice", blue(ports(port(), port("b", mac: "02:00:00:00:01:01"))), "$.tenants[0].ports[1].mac", #""02:00:00:00:01:01" is already used by port 'a' in segment 'lan' of tenant 'blue'"#),
    RuleCase("IP twice", blue(ports(port(extra: #""ips": ["10.0.0.1/24"]"#), port("b", mac: "02:00:00:00:01:02", #""ips": ["10.0.0.1/16"]"#))), "$.tenants[0].ports[1].ips[0]", #""10.0.0.1" is already used by port 'a'"#),
    RuleCase("multicast MAC", blue(ports(port(mac: "01:00:5e:00:00:01"))), "$.tenants[0].ports[0].mac", "is a multicast address"),
    RuleCase("broadcast MAC", blue(ports(port(mac: "ff:ff:ff:ff:ff:ff"))), "$.tenants[0].ports[0].mac", "is the broadcast address"),
    RuleCase("zero MAC", blue(ports(port(mac: "00:00:00:00:00:00"))), "$.tenants[0].ports[0].mac", "is all zeros"),
    RuleCase("multicast allowed MAC", blue(ports(port(extra: #""allowedMACs": ["33:33:00:00:00:01"]"#))), "$.tenants[0].ports[0].allowedMACs[0]", "multicast"),
    // VNIs
    RuleCase("VNI twice in a tenant", blue("", segments: #"[{"id": "a", "vni": 9}, {"id": "b", "vni": 9}]"#), "$.tenants[0].segments[1].vni", "VNI 9 is already used by segment 'a' of tenant 'blue'"),
    RuleCase("VNI across tenants", document(tenants: "[" + tenant("blue", segments: #"[{"id": "lan", "vni": 9}]"#) + ", " + tenant("red", segments: #"[{"id": "lan", "vni": 9}]"#) + "]"), "$.tenants[1].segments[0].vni", "already used by segment 'lan' of tenant 'blue'"),
    RuleCase("VNI zero", blue("", segments: #"[{"id": "lan", "vni": 0}]"#), "$.tenants[0].segments[0].vni", "outside 1...16777215"),
    RuleCase("VNI too big", blue("", segments: #"[{"id": "lan", "vni": 16777216}]"#), "$.tenants[0].segments[0].vni", "outside 1...16777215"),
    // Host paths
    RuleCase("relative state directory", host(#""stateDirectory": "var/lib/bh""#), "$.host.stateDirectory", "not an absolute path"),
    RuleCase("state directory with ..", host(#""stateDirectory": "/var/lib/../bh""#), "$.host.stateDirectory", "must not contain '.' or '..'"),
    RuleCase("state directory with .", host(#""stateDirectory": "/var/./bh""#), "$.host.stateDirectory", "must not contain '.' or '..'"),
    RuleCase("socket at the root", host(#""stateDirectory": "/var/lib/bh", "controlSocket": "/run/..""#), "$.host.controlSocket", "names the root directory"),
    RuleCase("socket escaping with ..", host(#""stateDirectory": "/var/lib/bh", "controlSocket": "run/../../bh.sock""#), "$.host.controlSocket", #"resolves to "/var/lib/bh.sock""#),
    RuleCase("relative log escaping with ..", host(#""stateDirectory": "/var/lib/bh", "auditLog": "../bh2/audit.log""#), "$.host.auditLog", "outside the state directory"),
    RuleCase("metrics on a public address", host(#""stateDirectory": "/var/lib/bh", "metrics": "0.0.0.0:9464""#), "$.host.metrics", "only loopback is allowed"),
    RuleCase("metrics without a port", host(#""stateDirectory": "/var/lib/bh", "metrics": "127.0.0.1""#), "$.host.metrics", "expected HOST:PORT"),
    RuleCase("cpu weight out of range", host(#""stateDirectory": "/var/lib/bh", "limits": {"switch": {"cpuWeight": 0}}"#), "$.host.limits.switch.cpuWeight", "cpuWeight 0 is outside 1...10000"),
    RuleCase("unknown limit", host(#""stateDirectory": "/var/lib/bh", "limits": {"blockServer": {"memory": 5}}"#), "$.host.limits.blockServer.memory", "allowed keys: cpuPercent, cpuWeight, memoryMiB, pids"),
    RuleCase("the directory itself", host(#""stateDirectory": "/var/lib/bh", "auditLog": ".""#), "$.host.auditLog", "outside the state directory"),
    RuleCase("empty audit log", host(#""stateDirectory": "/var/lib/bh", "auditLog": """#), "$.host.auditLog", "must not be empty"),
    // Switch
    RuleCase("no workers", host(#""stateDirectory": "/var/lib/bh", "switch": {"workers": 0}"#), "$.host.switch.workers", "workers 0 is outside 1...256"),
    RuleCase("more workers than TAP queues", host(#""stateDirectory": "/var/lib/bh", "switch": {"workers": 257}"#), "$.host.switch.workers", "workers 257 is outside 1...256"),
    // Jail uids
    RuleCase("jail uids among accounts", host(#""stateDirectory": "/var/lib/bh", "jailUidBase": 65534"#), "$.host.jailUidBase", "is below 65536"),
    RuleCase("jail uids past the top", host(#""stateDirectory": "/var/lib/bh", "jailUidBase": 4294901759"#), "$.host.jailUidBase", "4294901759 + 65536 (the jail uid range) passes 4294967294 ((uid_t)-2); use a base of at most 4294901758"),
    RuleCase("principal with a jail uid", document(tenants: "[" + tenant("blue") + ", " + tenant("red") + "]", principals: #"[{"name": "ops", "uid": 900000001, "role": "auditor"}]"#), "$.principals[0].uid", "uid 900000001 lies in the jail uid range 900000000...900065535"),
    // Not only the uids tenants have now: any uid a tenant may be given later.
    RuleCase("principal with a jail uid no tenant has yet", principal(#""name": "ops", "uid": 900065535, "role": "auditor""#), "$.principals[0].uid", "uid 900065535 lies in the jail uid range"),
    // Volumes
    RuleCase("zero size", blue(#""volumes": [{"id": "v", "sizeBytes": 0}]"#), "$.tenants[0].volumes[0].sizeBytes", "must be greater than 0"),
    RuleCase("size not a multiple of 512", blue(#""volumes": [{"id": "v", "sizeBytes": 1000}]"#), "$.tenants[0].volumes[0].sizeBytes", "1000 is not a multiple of 512"),
    RuleCase("long serial", blue(#""volumes": [{"id": "v", "sizeBytes": 512, "serial": "123456789012345678901"}]"#), "$.tenants[0].volumes[0].serial", "21 bytes"),
    RuleCase("zero QoS", blue(#""volumes": [{"id": "v", "sizeBytes": 512, "qos": {"iops": 0}}]"#), "$.tenants[0].volumes[0].qos.iops", "must be greater than 0"),
    // Roles
    RuleCase("unknown role", principal(#""name": "x", "uid": 1, "role": "root""#), "$.principals[0].role", #""root" is not a valid role; valid values: "host-admin", "operator", "tenant-admin", "tenant-viewer", "auditor""#),
    RuleCase("tenant-admin without tenant", principal(#""name": "x", "uid": 1, "role": "tenant-admin""#), "$.principals[0].tenant", #"role "tenant-admin" requires "tenant""#),
    RuleCase("tenant-viewer of unknown tenant", principal(#""name": "x", "uid": 1, "role": "tenant-viewer", "tenant": "green""#), "$.principals[0].tenant", #"no tenant "green"; tenants: "blue""#),
    RuleCase("host-admin with tenant", principal(#""name": "x", "uid": 1, "role": "host-admin", "tenant": "blue""#), "$.principals[0].tenant", "applies to the whole host"),
    RuleCase("auditor with tenant", principal(#""name": "x", "uid": 1, "role": "auditor", "tenant": "blue""#), "$.principals[0].tenant", #"role "auditor" applies to the whole host"#),
    // Ids and names
    RuleCase("upper-case id", document(tenants: "[" + tenant("Blue") + "]"), "$.tenants[0].id", #""Blue" is not a valid tenant id"#),
    RuleCase("id starting with -", blue(ports(port("-a", #""ifname": "x""#))), "$.tenants[0].ports[0].id", "is not a valid port id"),
    RuleCase("id too long", blue("", segments: #"[{"id": "\#(String(repeating: "s", count: 33))"}]"#), "$.tenants[0].segments[0].id", "is not a valid segment id"),
    RuleCase("principal name", principal(#""name": "Ops", "uid": 1, "role": "auditor""#), "$.principals[0].name", "is not a valid principal name"),
    RuleCase("default ifname too long", blue(ports(port("frontend"))), "$.tenants[0].ports[0].ifname", #"the default interface name "bh-blue-frontend" is 16 bytes; Linux allows at most 15: set "ifname""#),
    RuleCase("ifname too long", blue(ports(port(extra: #""ifname": "0123456789abcdef""#))), "$.tenants[0].ports[0].ifname", "16 bytes"),
    RuleCase("ifname with slash", blue(ports(port(extra: #""ifname": "a/b""#))), "$.tenants[0].ports[0].ifname", "must not contain '/'"),
    RuleCase("ifname with colon", blue(ports(port(extra: #""ifname": "eth0:1""#))), "$.tenants[0].ports[0].ifname", "must not contain '/', ':'"),
    RuleCase("ifname with space", blue(ports(port(extra: #""ifname": "a b""#))), "$.tenants[0].ports[0].ifname", "whitespace"),
    RuleCase("ifname used twice", document(tenants: "[" + tenant("blue", ports(port(extra: #""ifname": "tap0""#))) + ", " + tenant("red", ports(port(extra: #""ifname": "tap0""#))) + "]"), "$.tenants[1].ports[0].ifname", #"interface name "tap0" is already used by port 'a' of tenant 'blue'"#),
    RuleCase("default ifname collides", blue(ports(port(), port("b", mac: "02:00:00:00:01:02", #""ifname": "bh-blue-a""#))), "$.tenants[0].ports[1].ifname", "already used by port 'a'"),
    RuleCase("bad netns", blue(ports(port(extra: #""netns": "Blue""#))), "$.tenants[0].ports[0].netns", "is not a valid namespace name"),
    RuleCase("long netns", blue(ports(port(extra: #""netns": "\#(String(repeating: "n", count: 65))""#))), "$.tenants[0].ports[0].netns", "1 to 64 characters"),
    RuleCase("netns ..", blue(ports(port(extra: #""netns": "..""#))), "$.tenants[0].ports[0].netns", "not a valid namespace name"),
    // Port addresses
    RuleCase("multicast IPv4", ip("224.0.0.1/24"), "$.tenants[0].ports[0].ips[0]", "multicast"),
    RuleCase("unspecified IPv4", ip("0.0.0.0/8"), "$.tenants[0].ports[0].ips[0]", "unspecified"),
    RuleCase("loopback IPv4", ip("127.0.0.2/8"), "$.tenants[0].ports[0].ips[0]", "loopback"),
    RuleCase("broadcast IPv4", ip("255.255.255.255"), "$.tenants[0].ports[0].ips[0]", "broadcast address 255.255.255.255"),
    RuleCase("network address", ip("10.0.0.0/24"), "$.tenants[0].ports[0].ips[0]", "network address of 10.0.0.0/24"),
    RuleCase("subnet broadcast", ip("10.0.0.255/24"), "$.tenants[0].ports[0].ips[0]", "broadcast address of 10.0.0.0/24"),
    RuleCase("multicast IPv6", ip("ff02::1"), "$.tenants[0].ports[0].ips[0]", "multicast"),
    RuleCase("unspecified IPv6", ip("::/64"), "$.tenants[0].ports[0].ips[0]", "unspecified"),
    RuleCase("loopback IPv6", ip("::1"), "$.tenants[0].ports[0].ips[0]", "loopback"),
    // Port limits
    RuleCase("zero rate", blue(ports(port(extra: #""rateLimit": {"bitsPerSecond": 0}"#))), "$.tenants[0].ports[0].rateLimit.bitsPerSecond", "must be greater than 0"),
    RuleCase("zero burst packets", blue(ports(port(extra: #""rateLimit": {"packetsPerSecond": 5, "burstPackets": 0}"#))), "$.tenants[0].ports[0].rateLimit.burstPackets", "greater than 0"),
    RuleCase("zero storm control", blue(ports(port(extra: #""stormControl": {"multicastPacketsPerSecond": 0}"#))), "$.tenants[0].ports[0].stormControl.multicastPacketsPerSecond", "greater than 0"),
    RuleCase("zero queues", blue(ports(port(extra: #""queues": 0"#))), "$.tenants[0].ports[0].queues", "queues 0 is outside 1...16"),
    RuleCase("17 queues", blue(ports(port(extra: #""queues": 17"#))), "$.tenants[0].ports[0].queues", "outside 1...16"),
    RuleCase("vhost-user port with a namespace", blue(ports(port(extra: #""kind": "vhost-user", "netns": "ns1""#))), "$.tenants[0].ports[0].netns", "has no TAP device to move into a namespace"),
    RuleCase("vhost-user port with an interface name", blue(ports(port(extra: #""kind": "vhost-user", "ifname": "eth0""#))), "$.tenants[0].ports[0].ifname", "has no host interface to name"),
    RuleCase("vhost-user port with 17 queue pairs", blue(ports(port(extra: #""kind": "vhost-user", "queues": 17"#))), "$.tenants[0].ports[0].queues", "queues (virtio-net queue pairs) 17 is outside 1...16"),
    // Segments
    RuleCase("small MTU", blue("", segments: #"[{"id": "lan", "mtu": 575}]"#), "$.tenants[0].segments[0].mtu", "MTU 575 is outside 576...9000"),
    RuleCase("large MTU", blue("", segments: #"[{"id": "lan", "mtu": 9001}]"#), "$.tenants[0].segments[0].mtu", "outside 576...9000"),
    RuleCase("zero maxEntries", blue("", segments: #"[{"id": "lan", "macTable": {"maxEntries": 0, "maxEntriesPerPort": 1}}]"#), "$.tenants[0].segments[0].macTable.maxEntries", "outside 1...65536"),
    RuleCase("large maxEntries", blue("", segments: #"[{"id": "lan", "macTable": {"maxEntries": 65537}}]"#), "$.tenants[0].segments[0].macTable.maxEntries", "outside 1...65536"),
    RuleCase("per-port above total", blue("", segments: #"[{"id": "lan", "macTable": {"maxEntries": 10, "maxEntriesPerPort": 11}}]"#), "$.tenants[0].segments[0].macTable.maxEntriesPerPort", "outside 1...10"),
    RuleCase("short aging", blue("", segments: #"[{"id": "lan", "macTable": {"agingSeconds": 9}}]"#), "$.tenants[0].segments[0].macTable.agingSeconds", "outside 10...86400"),
    RuleCase("long aging", blue("", segments: #"[{"id": "lan", "macTable": {"agingSeconds": 86401}}]"#), "$.tenants[0].segments[0].macTable.agingSeconds", "outside 10...86400"),
    // ACL
    RuleCase("mixed families", acl(#"{"action": "deny", "source": "10.0.0.0/8", "destination": "fd00::/64"}"#), "$.tenants[0].acl[0].destination", "different IP families"),
    RuleCase("ports without tcp/udp", acl(#"{"action": "deny", "destinationPort": 23}"#), "$.tenants[0].acl[0].destinationPort", #"port ranges need "protocol": "tcp" or "udp"; this rule's protocol is "any""#),
    RuleCase("ports with icmp", acl(#"{"action": "deny", "protocol": "icmp", "sourcePort": "1-2"}"#), "$.tenants[0].acl[0].sourcePort", "\"icmp\""),
    RuleCase("reversed range", acl(#"{"action": "deny", "protocol": "tcp", "destinationPort": "1000-999"}"#), "$.tenants[0].acl[0].destinationPort", "the lower bound 1000 is greater than the upper bound 999"),
    RuleCase("bad range text", acl(#"{"action": "deny", "protocol": "tcp", "destinationPort": "1000-"}"#), "$.tenants[0].acl[0].destinationPort", "is not a port range"),
    RuleCase("port out of range", acl(#"{"action": "deny", "protocol": "tcp", "destinationPort": 65536}"#), "$.tenants[0].acl[0].destinationPort", "out of range"),
    RuleCase("protocol number too big", acl(#"{"action": "deny", "protocol": 256}"#), "$.tenants[0].acl[0].protocol", "out of range"),
    RuleCase("unknown protocol", acl(#"{"action": "deny", "protocol": "sctp"}"#), "$.tenants[0].acl[0].protocol", "is not a protocol"),
    RuleCase("unknown action", acl(#"{"action": "drop"}"#), "$.tenants[0].acl[0].action", #"valid values: "allow", "deny""#),
    RuleCase("unknown direction", acl(#"{"action": "deny", "direction": "in"}"#), "$.tenants[0].acl[0].direction", #""ingress", "egress", "both""#),
    // Partitions
    RuleCase("zero vcpus", blue(#""partitions": [{"id": "vm1", "vcpus": 0, "memoryMiB": 128, "kernel": {"path": "/k", "sha256": "\#(zeroDigest)"}}]"#), "$.tenants[0].partitions[0].vcpus", "vcpus 0 is outside 1...64"),
    RuleCase("65 vcpus", blue(#""partitions": [{"id": "vm1", "vcpus": 65, "memoryMiB": 128, "kernel": {"path": "/k", "sha256": "\#(zeroDigest)"}}]"#), "$.tenants[0].partitions[0].vcpus", "outside 1...64"),
    RuleCase("little memory", blue(#""partitions": [{"id": "vm1", "vcpus": 1, "memoryMiB": 15, "kernel": {"path": "/k", "sha256": "\#(zeroDigest)"}}]"#), "$.tenants[0].partitions[0].memoryMiB", "outside 16...1048576"),
    RuleCase("much memory", blue(#""partitions": [{"id": "vm1", "vcpus": 1, "memoryMiB": 1048577, "kernel": {"path": "/k", "sha256": "\#(zeroDigest)"}}]"#), "$.tenants[0].partitions[0].memoryMiB", "outside 16...1048576"),
    RuleCase("short digest", blue(#""partitions": [{"id": "vm1", "vcpus": 1, "memoryMiB": 128, "kernel": {"path": "/k", "sha256": "abc"}}]"#), "$.tenants[0].partitions[0].kernel.sha256", "exactly 64 hex digits"),
    RuleCase("non-hex digest", blue(#""partitions": [{"id": "vm1", "vcpus": 1, "memoryMiB": 128, "kernel": {"path": "/k", "sha256": "\#(String(repeating: "g", count: 64))"}}]"#), "$.tenants[0].partitions[0].kernel.sha256", "not a SHA-256 digest"),
    RuleCase("relative kernel", blue(#""partitions": [{"id": "vm1", "vcpus": 1, "memoryMiB": 128, "kernel": {"path": "vmlinux", "sha256": "\#(zeroDigest)"}}]"#), "$.tenants[0].partitions[0].kernel.path", "not an absolute path"),
    RuleCase("relative initrd", blue(#"\#("\"partitions\": [" + partition("vm1", #""initrd": {"path": "initrd.img", "sha256": "\#(zeroDigest)"}"#) + "]")"#), "$.tenants[0].partitions[0].initrd.path", "not an absolute path"),
    RuleCase("image and kernel", blue(partitions(flat("vm1", #""kernel": {"path": "/srv/vmlinuz", "sha256": "\#(zeroDigest)"}"#))), "$.tenants[0].partitions[0].image", #"a partition boots either an "image" (a flat image) or a "kernel" (a Linux bzImage), not both"#),
    RuleCase("neither image nor kernel", blue(#""partitions": [{"id": "vm1", "vcpus": 1, "memoryMiB": 64}]"#), "$.tenants[0].partitions[0]", #"a partition needs "image" (a flat image for a freestanding guest) or "kernel""#),
    RuleCase("initrd without kernel", blue(partitions(flat("vm1", #""initrd": {"path": "/srv/initrd.img", "sha256": "\#(zeroDigest)"}"#))), "$.tenants[0].partitions[0].initrd", #""initrd" goes with a Linux "kernel"; a flat "image" has no initial ramdisk"#),
    RuleCase("relative image", blue(#""partitions": [{"id": "vm1", "vcpus": 1, "memoryMiB": 64, "image": {"path": "bhtest.bin", "sha256": "\#(zeroDigest)"}}]"#), "$.tenants[0].partitions[0].image.path", #""bhtest.bin" is not an absolute path"#),
    RuleCase("image digest too long", blue(#""partitions": [{"id": "vm1", "vcpus": 1, "memoryMiB": 64, "image": {"path": "/b", "sha256": "\#(zeroDigest)0"}}]"#), "$.tenants[0].partitions[0].image.sha256", "exactly 64 hex digits"),
    RuleCase("image without digest", blue(#""partitions": [{"id": "vm1", "vcpus": 1, "memoryMiB": 64, "image": {"path": "/b"}}]"#), "$.tenants[0].partitions[0].image.sha256", #"missing required key "sha256" in MeasuredFile"#),
    RuleCase("long command line", blue(partitions(flat("vm1", #""cmdline": "\#(String(repeating: "x", count: 4096))""#))), "$.tenants[0].partitions[0].cmdline", "the command line is 4096 bytes; at most 4095"),
    // Bytes, not characters: 2048 two-byte characters.
    RuleCase("long command line in UTF-8", blue(partitions(flat("vm1", #""cmdline": "\#(String(repeating: "é", count: 2048))""#))), "$.tenants[0].partitions[0].cmdline", "4096 bytes"),
    RuleCase("NUL in the command line", blue(partitions(flat("vm1", #""cmdline": "console=ttyS0\u0000init=/x""#))), "$.tenants[0].partitions[0].cmdline", "contains a NUL character"),
    RuleCase("unknown restart policy", blue(partitions(flat("vm1", #""restart": "on-failure""#))), "$.tenants[0].partitions[0].restart", #""on-failure" is not a valid restart policy; valid values: "never", "on-reboot", "always""#),
    RuleCase("restart policy not a string", blue(partitions(flat("vm1", #""restart": true"#))), "$.tenants[0].partitions[0].restart", "expected a string, found a boolean"),
    RuleCase("disk in the old shape", equipped(flat("vm1", #""disks": [{"volume": "data"}]"#)), "$.tenants[0].partitions[0].disks[0]", "expected a string, found an object"),
    RuleCase("NIC in the old shape", equipped(flat("vm1", #""nics": [{"segment": "lan", "mac": "02:00:00:00:01:10"}]"#)), "$.tenants[0].partitions[0].nics[0]", "expected a string, found an object"),
    RuleCase("volume twice in a partition", equipped(flat("vm1", #""disks": ["data", "logs", "data"]"#)), "$.tenants[0].partitions[0].disks[2]", "volume \"data\" is attached twice to partition 'vm1' (also $.tenants[0].partitions[0].disks[0])"),
    RuleCase("volume in two partitions", equipped(flat("vm1", #""disks": ["data"]"#), flat("vm2", #""disks": ["logs", "data"]"#)), "$.tenants[0].partitions[1].disks[1]", "volume \"data\" is already attached to partition 'vm1' ($.tenants[0].partitions[0].disks[0]); a volume is attached to one partition: its vhost-user-blk socket serves one frontend"),
    RuleCase("17 disks", manyDevices(disks: 17), "$.tenants[0].partitions[0].disks", "17 disks; a partition has at most 16"),
    RuleCase("TAP port as a NIC", equipped(flat("vm1", #""nics": ["a"]"#)), "$.tenants[0].partitions[0].nics[0]", #"port "a" is of kind "tap"; a partition's NIC must be a port of kind "vhost-user""#),
    RuleCase("port twice in a partition", equipped(flat("vm1", #""nics": ["vm", "vm"]"#)), "$.tenants[0].partitions[0].nics[1]", #"port "vm" is already this partition's NIC ($.tenants[0].partitions[0].nics[0])"#),
    RuleCase("port in two partitions", equipped(flat("vm1", #""nics": ["vm"]"#), flat("vm2", #""nics": ["vm2", "vm"]"#)), "$.tenants[0].partitions[1].nics[1]", #"port "vm" is already the NIC of partition 'vm1' ($.tenants[0].partitions[0].nics[0]); a vhost-user port is the NIC of one partition"#),
    RuleCase("9 NICs", manyDevices(nics: 9), "$.tenants[0].partitions[0].nics", "9 NICs; a partition has at most 8"),
]

@Suite struct ValidationTests {
    @Test(arguments: ruleCases)
    func rule(_ rule: RuleCase) {
        let found = problems(rule.text)
        #expect(found.map(\.path) == [rule.path], "\(found)")
        #expect(found.first?.message.contains(rule.fragment) == true, "\(found.first?.message ?? "no problem")")
        #expect(found.first?.line != nil)
    }

    @Test func pointToPointAndHostPrefixesAreAllowed() {
        for address in ["10.0.0.0/31", "10.0.0.1/31", "10.0.0.255/32", "10.0.0.255/23", "fd00::/64"] {
            #expect(problems(ip(address)).isEmpty, "\(address)")
        }
    }

    @Test func relativePathsInsideTheStateDirectoryAreAllowed() {
        let text = host(#""stateDirectory": "/var/lib/bh/", "controlSocket": "./run/../control.sock", "auditLog": "/var/lib/bh/a/audit.log""#)
        #expect(problems(text).isEmpty)
    }

    @Test func atMost256TapPorts() {
        func portList(_ count: Int) -> String {
            (0..<count).map { i in
                port("p\(i)", mac: String(format: "02:00:00:00:%02x:%02x", i >> 8, i & 0xFF))
            }.joined(separator: ", ")
        }
        #expect(problems(blue("\"ports\": [" + portList(256) + "]")).isEmpty)
        let found = problems(blue("\"ports\": [" + portList(257) + "]"))
        #expect(found.map(\.path) == ["$.tenants[0].ports[256]"])
        #expect(found.first?.message.contains("more than 256 ports (of kinds \"tap\" and \"vhost-user\" together") == true)
    }

    @Test func brokenElementsDoNotCauseFollowUpProblems() {
        // Port "a" fails to decode; the ACL rule naming it must not be reported as well.
        let text = blue(ports(port(mac: "bad")) + #", "acl": [{"action": "deny", "port": "a"}]"#)
        #expect(problems(text).map(\.path) == ["$.tenants[0].ports[0].mac"])
    }

    @Test func vhostUserPortsTakeTheTapPortSettings() {
        let text = blue(ports(port(extra: #""kind": "vhost-user", "ips": ["10.0.0.5/24"], "allowedMACs": ["02:00:00:00:01:09"], "queues": 4, "rateLimit": {"packetsPerSecond": 1000}, "stormControl": {"broadcastPacketsPerSecond": 10}"#),
                              port("b", mac: "02:00:00:00:01:02")) + #", "acl": [{"action": "deny", "port": "a"}]"#)
        #expect(problems(text).isEmpty, "\(problems(text))")
    }

    @Test func vhostUserPortsDoNotCountAsTapPortsNorClaimInterfaceNames() {
        // The default interface name of a vhost-user port would be too long and is never used.
        let text = blue(ports(port("a-very-long-port-name", #""kind": "vhost-user""#)))
        #expect(problems(text).isEmpty, "\(problems(text))")
    }

    @Test func partitionsUseTheirTenantsVolumesAndPorts() {
        // Both tenants name their volume, port and partition alike: each partition uses its own.
        let red = ports(port("vm", segment: "dmz", #""kind": "vhost-user""#)) + #", "volumes": [{"id": "data", "sizeBytes": 512}], "#
            + partitions(flat("vm1", #""disks": ["data"], "nics": ["vm"], "restart": "always""#))
        let blue = ports(port("vm", #""kind": "vhost-user""#)) + #", "volumes": [{"id": "data", "sizeBytes": 512}], "#
            + partitions(partition("vm1", #""initrd": {"path": "/srv/initrd.img", "sha256": "\#(zeroDigest)"}, "cmdline": "console=ttyS0", "disks": ["data"], "nics": ["vm"]"#),
                         flat("vm2", #""restart": "never""#))
        let text = blueAndRed(blue: blue, red: red)
        #expect(problems(text).isEmpty, "\(problems(text))")
    }

    @Test func sixteenDisksAndEightNICs() {
        let text = manyDevices(disks: 16, nics: 8)
        #expect(problems(text).isEmpty, "\(problems(text))")
    }

    @Test func aCommandLineOf4095Bytes() {
        let text = blue(partitions(flat("vm1", #""cmdline": "\#(String(repeating: "x", count: 4095))""#)))
        #expect(problems(text).isEmpty, "\(problems(text))")
    }

    @Test func aBrokenPortIsNotReportedAgainAsANIC() {
        // Port "vm" fails to decode (its kind is unknown): the NIC naming it is not reported.
        let text = blue(ports(port("vm", #""kind": "vhost""#)) + ", " + partitions(flat("vm1", #""nics": ["vm"]"#)))
        #expect(problems(text).map(\.path) == ["$.tenants[0].ports[0].kind"])
    }

    @Test func pathNormalization() {
        #expect(Validator.normalize("/a/./b/../c//d") == "/a/c/d")
        #expect(Validator.normalize("/../../x") == "/x")
        #expect(Validator.normalize("/") == "/")
    }
}
