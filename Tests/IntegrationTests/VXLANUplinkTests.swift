import Config
import FleetModel
import Foundation
import HostOS
import Logging
import Switch
import SwitchEngine
import XCTest

/// The switch's VXLAN uplink against a Linux `vxlan` device: an in-process `Dataplane` with a TAP
/// port in namespace bhvx-a and its uplink socket bound to 10.99.77.1:4789 in namespace bhvx-u;
/// namespace bhvx-b holds the underlay peer (10.99.77.2) and a Linux VTEP `vx0` (VNI 4242,
/// remote 10.99.77.1) with the endpoint 10.77.0.2 on it, configured by hand.
final class VXLANUplinkTests: XCTestCase {
    static let nsA = "bhvx-a", nsU = "bhvx-u", nsB = "bhvx-b"
    static let vni: UInt32 = 4242
    static let tapMAC = MACAddress(0x02, 0, 0, 0x77, 0, 0x01)
    static let peerMAC = MACAddress(0x02, 0, 0, 0x77, 0, 0x02)

    override func setUpWithError() throws {
        try Host.requireNetworkPrivileges()
        for tool in ["python3", "ethtool"] where Host.which(tool) == nil {
            throw XCTSkip("needs \(tool) on PATH")
        }
        cleanUp()
    }

    override func tearDown() { cleanUp() }

    func cleanUp() {
        for ns in [VXLANUplinkTests.nsA, VXLANUplinkTests.nsU, VXLANUplinkTests.nsB] where Host.namespaceExists(ns) {
            _ = try? Host.run(["ip", "netns", "del", ns])
        }
    }

    @discardableResult
    func must(_ arguments: [String], in namespace: String? = nil, timeout: TimeInterval = 60) throws -> String {
        let result = try namespace.map { try Host.inNamespace($0, arguments, timeout: timeout) }
            ?? Host.run(arguments, timeout: timeout)
        guard result.status == 0 else {
            throw XCTSkip("set-up command failed (\(arguments.joined(separator: " "))): \(result.error)")
        }
        return result.output
    }

    /// The underlay and the Linux VTEP, by hand.
    func buildUnderlay() throws {
        let (u, b) = (VXLANUplinkTests.nsU, VXLANUplinkTests.nsB)
        try must(["ip", "netns", "add", u])
        try must(["ip", "netns", "add", b])
        try must(["ip", "link", "add", "bhvx-ul0", "netns", u, "type", "veth", "peer", "name", "bhvx-ul1", "netns", b])
        try must(["ip", "addr", "add", "10.99.77.1/24", "dev", "bhvx-ul0"], in: u)
        try must(["ip", "link", "set", "bhvx-ul0", "up"], in: u)
        try must(["ip", "link", "set", "lo", "up"], in: u)
        try must(["ip", "addr", "add", "10.99.77.2/24", "dev", "bhvx-ul1"], in: b)
        // A second address: the source of the spoofed datagram from a non-member host.
        try must(["ip", "addr", "add", "10.99.77.3/24", "dev", "bhvx-ul1"], in: b)
        try must(["ip", "link", "set", "bhvx-ul1", "up"], in: b)
        try must(["ip", "link", "set", "lo", "up"], in: b)
        try must(["ip", "link", "add", "vx0", "type", "vxlan", "id", "\(VXLANUplinkTests.vni)", "local", "10.99.77.2",
                  "remote", "10.99.77.1", "dstport", "4789", "nolearning"], in: b)
        try must(["ip", "link", "set", "vx0", "address", VXLANUplinkTests.peerMAC.description], in: b)
        try must(["ip", "addr", "add", "10.77.0.2/24", "dev", "vx0"], in: b)
        // Inner checksums complete in software: a VTEP on a veth would otherwise leave them
        // partial (the receiver trusts the skb's state, which a UDP socket's payload loses).
        try must(["ethtool", "-K", "vx0", "tx", "off"], in: b)
        try must(["ip", "link", "set", "vx0", "up"], in: b)
    }

    /// A UDP socket bound to 10.99.77.1:4789 inside namespace bhvx-u (a thread enters it, makes
    /// the socket, and ends).
    func uplinkSocket() throws -> Int32 {
        let result = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
        defer { result.deallocate() }
        result.pointee = -1
        let done = DispatchSemaphore(value: 0)
        let address = UInt(bitPattern: result)
        let thread = Thread {
            defer { done.signal() }
            let out = UnsafeMutablePointer<Int32>(bitPattern: address)!
            let ns = open("/run/netns/\(VXLANUplinkTests.nsU)", O_RDONLY | O_CLOEXEC)
            // setns(2) is not in Swift's Glibc module (it needs _GNU_SOURCE); CLONE_NEWNET is 0x40000000.
            typealias SetNS = @convention(c) (Int32, Int32) -> Int32
            guard ns >= 0, let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "setns"),
                  unsafeBitCast(symbol, to: SetNS.self)(ns, 0x4000_0000) == 0 else { return }
            close(ns)
            // Non-blocking, as the daemon's underlay sockets are (HostOS.UnderlaySocket).
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard fd >= 0 else { return }
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = UInt16(4789).bigEndian
            sin.sin_addr.s_addr = (UInt32(10) << 24 | 99 << 16 | 77 << 8 | 1).bigEndian
            let r = withUnsafePointer(to: &sin) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            var size: Int32 = 4 << 20
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(4))
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(4))
            if r == 0 { out.pointee = fd } else { close(fd) }
        }
        thread.start()
        done.wait()
        guard result.pointee >= 0 else { throw XCTSkip("could not bind the uplink socket in \(VXLANUplinkTests.nsU)") }
        return result.pointee
    }

    func configuration() -> HostConfiguration {
        let port = Config.Port(id: "a", segment: "lan", mac: VXLANUplinkTests.tapMAC, ips: [IPPrefix("10.77.0.1/24")!],
                               netns: VXLANUplinkTests.nsA, ifname: "bhvx-tap")
        let tenant = Tenant(id: "blue", segments: [Segment(id: "lan", vni: VXLANUplinkTests.vni, mtu: 1450)], ports: [port])
        return HostConfiguration(host: HostSettings(stateDirectory: NSTemporaryDirectory() + "bhvx-state"), tenants: [tenant])
    }

    static let view = FleetView(segments: [
        .init(id: "lan", vni: vni, hosts: [
            .init(id: "hb", underlay: "10.99.77.2", ports: [.init(id: "peer", mac: peerMAC.description, ips: ["10.77.0.2"])]),
        ]),
    ])

    func waitFor(_ what: String, timeout: TimeInterval = 10, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try condition() { return }
            Thread.sleep(forTimeInterval: 0.1)
        }
        XCTFail("timed out waiting for \(what)")
    }

    func testPingTCPAndSpoofingAgainstALinuxVTEP() throws {
        try buildUnderlay()
        let configuration = configuration()
        try? FileManager.default.createDirectory(atPath: configuration.host.stateDirectory, withIntermediateDirectories: true)
        let logger = Logger(label: "test.vxlan")
        var network = PortNetwork(stateDirectory: configuration.host.stateDirectory, logger: logger)
        try network.provision(configuration)
        defer { network.teardown() }
        let socket = try uplinkSocket()
        defer { close(socket) }
        let plane = ForwardingPlane(configuration: configuration)
        XCTAssertEqual(plane.updateFleet(VXLANUplinkTests.view), [])
        let dataplane = try Dataplane(plane: plane, ports: [.tap(queues: network.ports[0].queueFDs)], uplink: socket,
                                      options: .init(workers: 1), logger: logger)
        dataplane.start()
        defer { dataplane.stop() }

        let (a, b) = (VXLANUplinkTests.nsA, VXLANUplinkTests.nsB)
        // Ping both ways (the first ARP goes out by head-end replication to 10.99.77.2).
        let ping1 = try Host.inNamespace(a, ["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.77.0.2"], timeout: 20)
        XCTAssertEqual(ping1.status, 0, "ping A -> Linux VTEP: \(ping1.output)")
        let ping2 = try Host.inNamespace(b, ["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.77.0.1"], timeout: 20)
        XCTAssertEqual(ping2.status, 0, "ping Linux VTEP -> A: \(ping2.output)")

        // 64 MiB over TCP each way, content checked (TSO from the TAP is segmented in software).
        for (server, client, address) in [(b, a, "10.77.0.2"), (a, b, "10.77.0.1")] {
            try transfer(server: server, client: client, address: address, megabytes: 64)
        }

        // Spoofed datagrams: a member host with a MAC it does not own, and a non-member host
        // with the peer's MAC. Neither reaches the endpoint in A (a UDP listener on port 9999
        // writes down each payload it gets); a well-formed one sent after them does.
        let received = NSTemporaryDirectory() + "bhvx-received"
        try? FileManager.default.removeItem(atPath: received)
        let listener = Process()
        listener.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        listener.arguments = ["ip", "netns", "exec", a, "python3", "-c", """
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('10.77.0.1', 9999))
        open('\(received)', 'a').write('ready\\n')
        while True:
            d, _ = s.recvfrom(2048)
            with open('\(received)', 'a') as f: f.write(d.decode() + '\\n')
        """]
        try listener.run()
        defer { listener.terminate(); listener.waitUntilExit() }
        func lines() -> [String] {
            ((try? String(contentsOfFile: received, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        }
        try waitFor("the listener in A") { lines().contains("ready") }
        let before = dataplane.statistics().uplink
        try sendSpoofed(from: "10.99.77.2", innerSource: MACAddress(0x02, 0, 0, 0x77, 0, 0x66), payload: "spoofed-mac")
        try sendSpoofed(from: "10.99.77.3", innerSource: VXLANUplinkTests.peerMAC, payload: "stranger-host")
        try waitFor("the spoofed datagrams counted") {
            let now = dataplane.statistics().uplink
            return (now?.drops(.vxlanSpoofedMAC) ?? 0) > (before?.drops(.vxlanSpoofedMAC) ?? 0)
                && (now?.drops(.vxlanUnknownHost) ?? 0) > (before?.drops(.vxlanUnknownHost) ?? 0)
        }
        try sendSpoofed(from: "10.99.77.2", innerSource: VXLANUplinkTests.peerMAC, payload: "good")
        try waitFor("the well-formed datagram in A") { lines().contains("good") }
        XCTAssertEqual(lines(), ["ready", "good"], "only the well-formed datagram reaches the endpoint")
        let stats = try XCTUnwrap(dataplane.statistics().uplink)
        XCTAssertGreaterThan(stats.rx.frames, 0)
        XCTAssertGreaterThan(stats.tx.frames, 0)
        print("uplink statistics: rx \(stats.rx) tx \(stats.tx) drops \(stats.drops.filter { $0.value > 0 })")
    }

    /// Sends `megabytes` of random bytes from `client` to a server on `address` in `server` and
    /// compares SHA-256 digests.
    func transfer(server: String, client: String, address: String, megabytes: Int) throws {
        let file = NSTemporaryDirectory() + "bhvx-payload"
        try must(["dd", "if=/dev/urandom", "of=\(file)", "bs=1M", "count=\(megabytes)", "status=none"])
        defer { try? FileManager.default.removeItem(atPath: file) }
        let expected = try must(["sha256sum", file]).split(separator: " ").first.map(String.init) ?? ""
        let output = NSTemporaryDirectory() + "bhvx-server.out"
        try? FileManager.default.removeItem(atPath: output)
        let serverScript = """
        import socket, hashlib
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(('\(address)', 5001)); s.listen(1); s.settimeout(60)
        c, _ = s.accept(); c.settimeout(60); h = hashlib.sha256(); n = 0
        while True:
            d = c.recv(1 << 20)
            if not d: break
            h.update(d); n += len(d)
        open('\(output)', 'w').write('%d %s' % (n, h.hexdigest()))
        """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["ip", "netns", "exec", server, "python3", "-c", serverScript]
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        let clientScript = """
        import socket, time
        for i in range(50):
            try:
                s = socket.create_connection(('\(address)', 5001), timeout=60); break
            except OSError:
                time.sleep(0.1)
        s.sendall(open('\(file)', 'rb').read()); s.close()
        """
        let start = Date()
        let sent = try Host.inNamespace(client, ["python3", "-c", clientScript], timeout: 120)
        XCTAssertEqual(sent.status, 0, "client in \(client): \(sent.error)")
        try waitFor("the server's digest", timeout: 60) { FileManager.default.fileExists(atPath: output) && !process.isRunning }
        let elapsed = Date().timeIntervalSince(start)
        let result = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        XCTAssertEqual(result, "\(megabytes << 20) \(expected)", "\(client) -> \(server): bytes and SHA-256")
        print("TCP \(client) -> \(server): \(megabytes) MiB in \(String(format: "%.2f", elapsed)) s"
              + " (\(String(format: "%.0f", Double(megabytes * 8) / elapsed)) Mbit/s)")
    }

    /// A VXLAN datagram (VNI of the segment) from `source` in namespace B to our uplink, carrying
    /// a UDP packet to the TAP endpoint's port 9999 from `innerSource` / 10.77.0.2.
    func sendSpoofed(from source: String, innerSource: MACAddress, payload: String) throws {
        let script = """
        import socket, struct
        def csum(b):
            if len(b) % 2: b += b'\\0'
            s = sum(struct.unpack('!%dH' % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
            return ~s & 0xffff
        payload = b'\(payload)'
        udp = struct.pack('!HHHH', 4444, 9999, 8 + len(payload), 0) + payload
        ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                         socket.inet_aton('10.77.0.2'), socket.inet_aton('10.77.0.1'))
        ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
        eth = bytes.fromhex('\(VXLANUplinkTests.tapMAC.octets.map { String(format: "%02x", $0) }.joined())')
        eth += bytes.fromhex('\(innerSource.octets.map { String(format: "%02x", $0) }.joined())') + b'\\x08\\x00'
        vxlan = struct.pack('!II', 0x08000000, \(VXLANUplinkTests.vni) << 8)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('\(source)', 0))
        s.sendto(vxlan + eth + ip + udp, ('10.99.77.1', 4789))
        """
        try must(["python3", "-c", script], in: VXLANUplinkTests.nsB)
    }

    /// The jailed `bulkhead switch` process with an uplink: it takes `.uplink` and the first
    /// `.fleet` before `.start`, forwards to the Linux VTEP, then applies later `.fleet`
    /// messages while it runs (a view without the peer host cuts it off, the full view brings
    /// it back) and reports the uplink in its statistics.
    func testTheJailedSwitchProcessTakesTheUplinkAndFleetUpdates() throws {
        try buildUnderlay()
        let configuration = configuration()
        let state = configuration.host.stateDirectory
        try? FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        let configPath = state + "/applied.json"
        try Data("""
        {"host": {"stateDirectory": "\(state)"},
         "tenants": [{"id": "blue", "segments": [{"id": "lan", "vni": \(VXLANUplinkTests.vni), "mtu": 1450}],
                      "ports": [{"id": "a", "kind": "tap", "segment": "lan", "mac": "\(VXLANUplinkTests.tapMAC)",
                                 "ips": ["10.77.0.1/24"], "netns": "\(VXLANUplinkTests.nsA)", "ifname": "bhvx-tap"}]}]}
        """.utf8).write(to: URL(fileURLWithPath: configPath))
        let logger = Logger(label: "test.vxlan")
        var network = PortNetwork(stateDirectory: state, logger: logger)
        try network.provision(configuration)
        defer { network.teardown() }
        let socket = try uplinkSocket()
        defer { close(socket) }

        let pair = try UnixStream.pair()
        let (daemonEnd, switchEnd) = pair.release()
        let control = UnixStream(FileDescriptor(taking: daemonEnd))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: RunningDaemon.binary)
        process.arguments = ["switch", "--config", configPath, "--tenant", "blue", "--log-level", "debug"]
        process.standardInput = FileHandle(fileDescriptor: switchEnd, closeOnDealloc: true)
        let log = state + "/switch.log"
        FileManager.default.createFile(atPath: log, contents: nil)
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        try process.run()
        defer {
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
            print("switch log:\n" + ((try? String(contentsOfFile: log, encoding: .utf8)) ?? ""))
        }
        try control.send(.port(index: 0, interface: "bhvx-tap"), fds: network.ports[0].queueFDs)
        try control.send(.uplink, fds: [socket])
        try control.send(.fleet(VXLANUplinkTests.view))
        try control.send(.start)

        // .ready, then statistics once a second.
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: SwitchControlMessage.maxSize, alignment: 8)
        defer { buffer.deallocate() }
        func nextStatistics() throws -> SwitchStatistics? {
            let deadline = monotonicNanoseconds() + 5_000_000_000
            while try control.waitReadable(until: deadline) {
                let message = try control.receive(into: buffer, maxFDs: 0)
                guard message.byteCount > 0 else { return nil }
                if case .statistics(let statistics) = try SwitchControlMessage.decode(UnsafeRawBufferPointer(rebasing: buffer[..<message.byteCount])) {
                    return statistics
                }
            }
            return nil
        }
        XCTAssertNotNil(try nextStatistics()?.uplink, "the switch reports its uplink")

        let (a, b) = (VXLANUplinkTests.nsA, VXLANUplinkTests.nsB)
        let ping = try Host.inNamespace(a, ["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.77.0.2"], timeout: 20)
        XCTAssertEqual(ping.status, 0, "ping through the jailed switch: \(ping.output)")

        // The peer host leaves the map: nothing reaches it any more.
        try control.send(.fleet(FleetView.empty(for: configuration.tenants[0])))
        try must(["ip", "neigh", "flush", "all"], in: a)
        try must(["ip", "neigh", "flush", "all"], in: b)
        try waitFor("the switch to apply the smaller view") {
            (try Host.inNamespace(a, ["ping", "-c", "1", "-W", "1", "10.77.0.2"], timeout: 10)).status != 0
        }
        // It comes back.
        try control.send(.fleet(VXLANUplinkTests.view))
        try waitFor("the switch to apply the full view again") {
            (try Host.inNamespace(a, ["ping", "-c", "1", "-W", "1", "10.77.0.2"], timeout: 10)).status == 0
        }
        XCTAssertTrue(process.isRunning, "the switch survives fleet updates in its jail")
        var uplink: PortStatistics?
        for _ in 0..<3 { uplink = try nextStatistics()?.uplink }
        XCTAssertGreaterThan(uplink?.tx.frames ?? 0, 0)
        XCTAssertGreaterThan(uplink?.rx.frames ?? 0, 0)
    }
}
