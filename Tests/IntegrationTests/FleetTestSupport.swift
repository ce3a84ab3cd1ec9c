import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// A fleet on one machine: an underlay bridge `bhul0` in the namespace `bh-ul` (which also runs
/// etcd, at 10.99.0.254), and hosts `h1`, `h2`, ... as namespaces `bh-h1`, ... each with a veth
/// `ul0` on the bridge (10.99.0.N/24, MTU 1600: a 1500-byte segment plus VXLAN's 50 bytes fits),
/// each running its own `bulkhead run` with its own state directory and port namespaces.
enum Fleet {
    static let underlayNamespace = "bh-ul"
    static let bridge = "bhul0"
    static let etcdAddress = "10.99.0.254"
    static let etcdEndpoint = "http://10.99.0.254:2379"
    static let underlayMTU = 1600
    static let prefix = "/bulkhead"

    static func namespace(ofHost host: String) -> String { "bh-\(host)" }

    /// Skips, saying what is missing, unless the machine can run a fleet: root, TAP, namespaces,
    /// etcd (Debian etcd-server and etcd-client; `.ci/run` installs them) and nsenter.
    static func requirePrerequisites() throws {
        try Host.requireNetworkPrivileges()
        for tool in ["etcd", "etcdctl"] where Host.which(tool) == nil {
            throw XCTSkip("needs \(tool) on PATH (Debian: apt-get install etcd-server etcd-client; deploy/install-deps.sh)")
        }
        for tool in ["nsenter", "bridge"] where Host.which(tool) == nil {
            throw XCTSkip("needs \(tool) on PATH (util-linux, iproute2)")
        }
    }

    /// Runs a command that must succeed; throws with its output otherwise.
    @discardableResult
    static func must(_ arguments: [String], timeout: TimeInterval = 30) throws -> String {
        let result = try Host.run(arguments, timeout: timeout)
        guard result.status == 0 else {
            throw DaemonFailure(message: "\(arguments.joined(separator: " ")) failed (\(result.status)): \(result.output)\(result.error)")
        }
        return result.output
    }

    /// Waits until `condition` holds, polling every 0.1 s; throws naming `what` after `timeout`.
    static func waitFor(_ what: String, timeout: TimeInterval, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if try condition() { return }
            guard Date() < deadline else { throw DaemonFailure(message: "timed out after \(timeout) s waiting for \(what)") }
            Thread.sleep(forTimeInterval: 0.1)
        }
    }

    /// Whether one ping from `namespace` to `address` is answered within a second.
    static func pings(from namespace: String, _ address: String) -> Bool {
        (try? Host.inNamespace(namespace, ["ping", "-c", "1", "-W", "1", address], timeout: 5))?.status == 0
    }

    /// The MAC of `interface` in `namespace`.
    static func mac(of interface: String, in namespace: String) throws -> String {
        try must(["ip", "netns", "exec", namespace, "cat", "/sys/class/net/\(interface)/address"])
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Removes a namespace if it exists (its veths go with it).
    static func removeNamespace(_ name: String) {
        if Host.namespaceExists(name) { _ = try? Host.run(["ip", "netns", "del", name]) }
    }
}

/// The underlay: a bridge in `bh-ul` with one veth per member namespace.
final class FleetUnderlay {
    private(set) var members: [String] = []

    /// Creates `bh-ul` with the bridge (removing what an earlier, aborted run left).
    init() throws {
        Fleet.removeNamespace(Fleet.underlayNamespace)
        let ns = Fleet.underlayNamespace
        try Fleet.must(["ip", "netns", "add", ns])
        try Fleet.must(["ip", "-n", ns, "link", "set", "lo", "up"])
        try Fleet.must(["ip", "-n", ns, "link", "add", Fleet.bridge, "mtu", "\(Fleet.underlayMTU)", "type", "bridge"])
        try Fleet.must(["ip", "-n", ns, "addr", "add", "\(Fleet.etcdAddress)/24", "dev", Fleet.bridge])
        try Fleet.must(["ip", "-n", ns, "link", "set", Fleet.bridge, "up"])
    }

    /// Adds namespace `namespace` (created here, removed first if it exists) with a veth `ul0` on the
    /// bridge at `address`/24.
    func addMember(_ namespace: String, address: String, mtu: Int = Fleet.underlayMTU) throws {
        Fleet.removeNamespace(namespace)
        try Fleet.must(["ip", "netns", "add", namespace])
        members.append(namespace)
        let peer = "p-\(namespace)"
        try Fleet.must(["ip", "link", "add", "ul0", "netns", namespace, "mtu", "\(mtu)", "type", "veth",
                        "peer", "name", peer, "netns", Fleet.underlayNamespace, "mtu", "\(mtu)"])
        try Fleet.must(["ip", "-n", Fleet.underlayNamespace, "link", "set", peer, "master", Fleet.bridge, "up"])
        try Fleet.must(["ip", "-n", namespace, "addr", "add", "\(address)/24", "dev", "ul0"])
        try Fleet.must(["ip", "-n", namespace, "link", "set", "ul0", "up"])
        try Fleet.must(["ip", "-n", namespace, "link", "set", "lo", "up"])
    }

    func removeMember(_ namespace: String) {
        Fleet.removeNamespace(namespace)
        members.removeAll { $0 == namespace }
    }

    func tearDown() {
        for member in members { Fleet.removeNamespace(member) }
        members = []
        Fleet.removeNamespace(Fleet.underlayNamespace)
    }
}

/// One etcd member in the underlay namespace, its data in `dataDirectory` (kept across restarts).
final class FleetEtcd: LoggedProcess, @unchecked Sendable {
    let dataDirectory: String

    init(dataDirectory: String) throws {
        self.dataDirectory = dataDirectory
        let client = Fleet.etcdEndpoint, peer = "http://127.0.0.1:2380"
        try super.init(executable: "/usr/bin/env", arguments: [
            "ip", "netns", "exec", Fleet.underlayNamespace, "etcd", "--name", "fleet-test",
            "--data-dir", dataDirectory,
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", "fleet-test=\(peer)", "--log-level", "warn",
        ])
        try Fleet.waitFor("etcd to answer at \(client)", timeout: 30) {
            guard isRunning else { throw DaemonFailure(message: "etcd exited:\n\(output)") }
            return (try? FleetEtcd.ctl(["endpoint", "health"], timeout: 5))?.status == 0
        }
    }

    /// Runs etcdctl (API v3) against the test's etcd, from the underlay namespace.
    @discardableResult
    static func ctl(_ arguments: [String], timeout: TimeInterval = 10) throws -> Host.Result {
        try Host.run(["env", "ETCDCTL_API=3", "ip", "netns", "exec", Fleet.underlayNamespace,
                      "etcdctl", "--endpoints", Fleet.etcdEndpoint, "--dial-timeout", "2s"] + arguments, timeout: timeout)
    }

    /// SIGKILL, and waits for it to be gone.
    func kill9() {
        guard isRunning else { return }
        Glibc.kill(pid, SIGKILL)
        process.waitUntilExit()
    }
}

/// A tenant port of the fleet tests: a TAP port whose namespace and interface are named after its
/// host, tenant and id (`h1-blue-a`).
struct FleetPort {
    var host: String
    var tenant: String
    var id: String
    var mac: String
    var ip: String
    var ip6: String? = nil

    var namespace: String { "\(host)-\(tenant)-\(id)" }
    var interface: String { namespace }
    /// The address without its prefix length.
    var address: String { String(ip.split(separator: "/").first ?? "") }

    var json: [String: Any] {
        ["id": id, "kind": "tap", "segment": "lan", "mac": mac, "ips": [ip] + (ip6.map { [$0] } ?? []), "netns": namespace, "ifname": interface]
    }
}

/// A `bulkhead run` inside a host's namespace: `nsenter --net` (not `ip netns exec`, whose private
/// mount namespace would hide the port namespaces the daemon bind-mounts under /run/netns).
final class FleetDaemon: LoggedProcess, @unchecked Sendable {
    let host: String
    let index: Int
    let stateDirectory: String
    let configPath: String
    private(set) var configuration: [String: Any]
    private var hangUps = 0

    static let vnis = ["blue": 5001, "red": 6001]

    /// Host `host` (`h<index>`, underlay 10.99.0.<index>) with `ports`; its state under
    /// /tmp/bh-fleet-<host> (removed first).
    init(host: String, index: Int, ports: [FleetPort], leaseSeconds: Int = 3) throws {
        self.host = host
        self.index = index
        stateDirectory = "/tmp/bh-fleet-\(host)"
        try? FileManager.default.removeItem(atPath: stateDirectory)
        configPath = NSTemporaryDirectory() + "bh-fleet-\(host)-\(UUID().uuidString).json"
        configuration = FleetDaemon.configuration(host: host, index: index, stateDirectory: stateDirectory,
                                                  ports: ports, leaseSeconds: leaseSeconds)
        try FleetDaemon.write(configuration, to: configPath)
        try super.init(executable: "/usr/bin/env", arguments: [
            "nsenter", "--net=/run/netns/\(Fleet.namespace(ofHost: host))", RunningDaemon.binary,
            "run", "--config", configPath,
        ])
        try waitFor("bulkhead ready", timeout: 60)
    }

    static func configuration(host: String, index: Int, stateDirectory: String, ports: [FleetPort], leaseSeconds: Int) -> [String: Any] {
        let tenants = ["blue", "red"].compactMap { tenant -> [String: Any]? in
            let own = ports.filter { $0.tenant == tenant }
            guard !own.isEmpty else { return nil }
            return ["id": tenant, "segments": [["id": "lan", "vni": vnis[tenant] ?? 0, "mtu": 1500]],
                    "ports": own.map(\.json)]
        }
        return [
            "host": [
                "stateDirectory": stateDirectory,
                "controlSocket": stateDirectory + "/control.sock",
                "auditLog": stateDirectory + "/audit.log",
                "fleet": [
                    "hostId": host,
                    "underlayAddress": "10.99.0.\(index)",
                    "underlayMTU": Fleet.underlayMTU,
                    "etcd": ["endpoints": [Fleet.etcdEndpoint]],
                    "leaseSeconds": leaseSeconds,
                ] as [String: Any],
            ] as [String: Any],
            "principals": [["name": "root", "uid": 0, "role": "host-admin"]],
            "tenants": tenants,
        ]
    }

    static func write(_ configuration: [String: Any], to path: String) throws {
        let data = try JSONSerialization.data(withJSONObject: configuration, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: path))
    }

    /// Tenants with ports: each has a switch.
    var switchCount: Int { (configuration["tenants"] as? [Any])?.count ?? 0 }

    /// Waits until every tenant's switch says it forwards.
    func waitForForwarding(timeout: TimeInterval = 60) throws {
        try Fleet.waitFor("\(host)'s \(switchCount) switches to forward", timeout: timeout) {
            guard isRunning else { throw DaemonFailure(message: "\(host)'s daemon exited:\n\(output)") }
            return output.occurrences(of: "switch forwarding") >= switchCount
        }
    }

    /// Writes `ports` as the host's new configuration and sends SIGHUP; waits for it to be applied.
    func apply(ports: [FleetPort], leaseSeconds: Int = 3) throws {
        configuration = FleetDaemon.configuration(host: host, index: index, stateDirectory: stateDirectory,
                                                  ports: ports, leaseSeconds: leaseSeconds)
        try FleetDaemon.write(configuration, to: configPath)
        hangUps += 1
        Glibc.kill(pid, SIGHUP)
        let count = hangUps
        try Fleet.waitFor("\(host) to apply its new configuration (SIGHUP #\(count))", timeout: 60) {
            guard isRunning else { throw DaemonFailure(message: "\(host)'s daemon exited:\n\(output)") }
            if output.occurrences(of: "SIGHUP: the configuration is invalid") > 0 {
                throw DaemonFailure(message: "\(host) refused its new configuration:\n\(output)")
            }
            return output.occurrences(of: "SIGHUP: configuration applied") >= count
        }
    }

    /// `<state>/status.json`, decoded (rewritten every second).
    func status() throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: stateDirectory + "/status.json"))
        return try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
    }

    /// The `fleet` object of the status file (a `FleetStatus`), or nil while there is none.
    func fleetStatus() -> [String: Any]? {
        (try? status())?["fleet"] as? [String: Any]
    }

    /// The other hosts in this host's map, or nil when the status file has no fleet section.
    func remoteHosts() -> [String]? {
        fleetStatus()?["remoteHosts"] as? [String]
    }

    /// The fleet connection's state ("connecting", "connected", "disconnected"), or nil.
    func fleetState() -> String? {
        fleetStatus()?["state"] as? String
    }

    /// Waits until this host's map holds exactly `hosts` (other than itself). Where the status
    /// file has no fleet section yet, that is a failure naming what is missing.
    func waitForRemoteHosts(_ hosts: [String], timeout: TimeInterval) throws {
        try Fleet.waitFor("\(host)'s fleet map to hold exactly \(hosts) (now \(remoteHosts().map { "\($0)" } ?? "no fleet status"))",
                          timeout: timeout) {
            remoteHosts() == hosts.sorted()
        }
    }

    /// All drop counters of one port, by reason.
    func drops(tenant: String, port: String) throws -> [String: Int] {
        let ports = (try status()["switch"] as? [String: Any])?["ports"] as? [[String: Any]] ?? []
        guard let entry = ports.first(where: { $0["tenant"] as? String == tenant && $0["port"] as? String == port }) else {
            throw DaemonFailure(message: "\(host): no status for \(tenant)/\(port)")
        }
        return (entry["drops"] as? [String: Any] ?? [:]).compactMapValues { ($0 as? NSNumber)?.intValue }
    }

    /// The uplinks' drop counters summed over tenants, by reason: the entries named "uplink" among
    /// the ports, or a separate `uplink`/`uplinks` section of the switch statistics, whichever the
    /// status file has. Nil when it has none (the test then fails, saying so).
    func uplinkDrops() -> [String: Int]? {
        guard let statistics = (try? status())?["switch"] as? [String: Any] else { return nil }
        var entries: [[String: Any]] = []
        entries += (statistics["ports"] as? [[String: Any]] ?? []).filter { $0["port"] as? String == "uplink" }
        if let one = statistics["uplink"] as? [String: Any] { entries.append(one) }
        entries += statistics["uplink"] as? [[String: Any]] ?? []
        entries += statistics["uplinks"] as? [[String: Any]] ?? []
        entries += (statistics["uplinks"] as? [String: [String: Any]] ?? [:]).values
        guard !entries.isEmpty else { return nil }
        var sum: [String: Int] = [:]
        for entry in entries {
            for (reason, value) in entry["drops"] as? [String: Any] ?? [:] {
                sum[reason, default: 0] += (value as? NSNumber)?.intValue ?? 0
            }
        }
        return sum
    }

    /// SIGKILL: the daemon dies at once; its children end with it (their lifeline closes).
    func kill9() {
        guard isRunning else { return }
        Glibc.kill(pid, SIGKILL)
        process.waitUntilExit()
    }

    deinit {
        // SIGTERM, not LoggedProcess's SIGKILL: the daemon removes its namespaces and links.
        if process.isRunning {
            Glibc.kill(process.processIdentifier, SIGTERM)
            let deadline = Date().addingTimeInterval(30)
            while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
            if process.isRunning { Glibc.kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: configPath)
    }
}

/// Small programs the fleet tests run inside namespaces (/usr/bin/python3).
enum FleetTools {
    /// `server PORT` accepts one TCP connection and prints {"bytes": n, "sha256": hex} of what it
    /// received, once the peer closes; it prints "listening" when ready.
    /// `client ADDRESS PORT BYTES` sends BYTES random bytes and prints the same of what it sent.
    static let transfer = #"""
import hashlib, json, os, socket, sys
mode = sys.argv[1]
if mode == "server":
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[2])))
    s.listen(1)
    s.settimeout(float(sys.argv[3]) if len(sys.argv) > 3 else 120)
    print("listening", flush=True)
    c, _ = s.accept()
    c.settimeout(60)
    h, n = hashlib.sha256(), 0
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        h.update(b)
        n += len(b)
    print(json.dumps({"bytes": n, "sha256": h.hexdigest()}), flush=True)
else:
    address, port, total = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    c = socket.create_connection((address, port), timeout=30)
    c.settimeout(60)
    h, n = hashlib.sha256(), 0
    while n < total:
        b = os.urandom(min(1 << 20, total - n))
        c.sendall(b)
        h.update(b)
        n += len(b)
    c.shutdown(socket.SHUT_WR)
    c.recv(1)
    c.close()
    print(json.dumps({"bytes": n, "sha256": h.hexdigest()}), flush=True)
"""#

    /// Sends VXLAN datagrams with scapy, raw at layer 2 from the underlay: a forged outer source
    /// is possible. Arguments: one JSON object {"iface", "dst_mac", "frames": [{"outer_src",
    /// "outer_dst", "vni", "inner_src_mac", "inner_dst_mac", "inner_src_ip", "inner_dst_ip",
    /// "marker"}]}. Prints how many it sent.
    static let vxlanSender = #"""
import json, sys
from scapy.all import Ether, IP, UDP, Raw, sendp, conf, get_if_hwaddr
from scapy.layers.vxlan import VXLAN
conf.verb = 0
spec = json.loads(sys.argv[1])
# The sending interface's own MAC: a bridge drops frames from a zero source MAC.
own = get_if_hwaddr(spec["iface"])
frames = []
for f in spec["frames"]:
    marker = bytes.fromhex(f["marker"])
    inner = (Ether(src=f["inner_src_mac"], dst=f["inner_dst_mac"])
             / IP(src=f["inner_src_ip"], dst=f["inner_dst_ip"]) / UDP(sport=40000, dport=9) / Raw(marker * 4))
    outer = (Ether(src=own, dst=spec["dst_mac"]) / IP(src=f["outer_src"], dst=f["outer_dst"])
             / UDP(sport=49152, dport=4789) / VXLAN(vni=f["vni"], flags=0x08) / inner)
    frames.append(outer)
sendp(frames, iface=spec["iface"], count=spec.get("count", 1))
print(len(frames) * spec.get("count", 1))
"""#
}

/// A background process in a namespace, for listeners and long pings.
final class FleetBackground: LoggedProcess, @unchecked Sendable {
    init(namespace: String, _ arguments: [String]) throws {
        try super.init(executable: "/usr/bin/env", arguments: ["ip", "netns", "exec", namespace] + arguments)
    }
}

/// Counts frames carrying any of `markers` that arrive on one port's namespace side
/// (`Tests/Tools/frames.py sniff`, a raw socket: no scapy needed).
final class FleetSniffer {
    let label: String
    private let process = Process()
    private let output = Pipe()
    private let readyFile = NSTemporaryDirectory() + "bh-fleet-sniff-\(UUID().uuidString)"

    init(namespace: String, interface: String, markers: [String], label: String) throws {
        self.label = label
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["ip", "netns", "exec", namespace, "/usr/bin/python3", AttackTests.script, "sniff",
                             "--iface", interface, "--json", "--seconds", "300", "--ready-file", readyFile]
            + markers.flatMap { ["--marker", $0] }
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        try Fleet.waitFor("the sniffer on \(label) to start", timeout: 10) {
            guard process.isRunning else { throw DaemonFailure(message: "the sniffer on \(label) exited") }
            return FileManager.default.fileExists(atPath: readyFile)
        }
    }

    /// Stops the sniffer (SIGTERM: it prints its counts) and returns its count per marker.
    func stop() throws -> [String: Int] {
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: readyFile)
        let data = output.fileHandleForReading.readDataToEndOfFile()
        guard let json = try JSONSerialization.jsonObject(with: data) as? [String: Any],
              let markers = json["markers"] as? [String: Any] else {
            throw DaemonFailure(message: "the sniffer on \(label) printed \(String(decoding: data, as: UTF8.self))")
        }
        return markers.compactMapValues { ($0 as? NSNumber)?.intValue }
    }

    deinit {
        if process.isRunning { process.terminate(); process.waitUntilExit() }
    }

    static func randomMarker() -> String {
        (0..<8).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    }
}
