import Foundation
import XCTest

/// The demo topology end to end: real TAP devices, namespaces and the kernel's network stack as
/// tenant endpoints, with the daemon forwarding between them.
final class DemoTopologyTests: XCTestCase {
    private let blueMACs = ["02:00:00:00:01:01", "02:00:00:00:01:02"]
    private let redMACs = ["02:00:00:00:02:01", "02:00:00:00:02:02"]

    private func ns(_ tenant: String, _ port: String) -> String { TestTopology.namespace(tenant, port) }
    private func ifname(_ tenant: String, _ port: String) -> String { TestTopology.interface(tenant, port) }

    /// Captures, on both ports of `tenant`, every frame that arrives from a MAC outside it.
    private func captureForeignFrames(into tenant: String, ownMACs: [String]) throws -> [Capture] {
        let filter = ownMACs.map { "not ether src \($0)" }.joined(separator: " and ")
        return try ["a", "b"].map { try Capture(namespace: ns(tenant, $0), interface: ifname(tenant, $0), filter: filter) }
    }

    /// A one-off iperf3 server (-1) in `namespace`, in the foreground of its own process: it
    /// exits after one test; ready to accept when this returns.
    private func iperfServer(in namespace: String, address: String) throws -> Process {
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        server.arguments = ["ip", "netns", "exec", namespace, "iperf3", "-s", "-1", "-B", address]
        server.standardOutput = FileHandle.nullDevice
        server.standardError = FileHandle.nullDevice
        try server.run()
        Thread.sleep(forTimeInterval: 0.5)
        return server
    }

    func testPingAndTCPStayWithinEachTenant() throws {
        try Host.requireNetworkPrivileges()
        let daemon = try RunningDaemon(configuration: TestTopology.demo())
        let intoRed = try captureForeignFrames(into: "red", ownMACs: redMACs)
        let intoBlue = try captureForeignFrames(into: "blue", ownMACs: blueMACs)

        for tenant in ["blue", "red"] {
            let ping = try Host.inNamespace(ns(tenant, "a"), ["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.0.0.2"])
            XCTAssertEqual(ping.status, 0, "\(tenant)-a cannot ping 10.0.0.2:\n\(ping.output)\(ping.error)\n\(daemon.output)")
            let ping6 = try Host.inNamespace(ns(tenant, "b"), ["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "fd00::1"])
            XCTAssertEqual(ping6.status, 0, "\(tenant)-b cannot ping fd00::1:\n\(ping6.output)\(ping6.error)")
        }

        // A TCP transfer in blue, with the kernel's TSO/GSO frames crossing the switch.
        if Host.which("iperf3") != nil {
            let server = try iperfServer(in: ns("blue", "b"), address: "10.0.0.2")
            defer { if server.isRunning { server.terminate() } }
            let client = try Host.inNamespace(ns("blue", "a"), ["iperf3", "-c", "10.0.0.2", "-t", "2", "-J"], timeout: 30)
            XCTAssertEqual(client.status, 0, "iperf3 failed: \(client.output)\(client.error)")
            let report = try JSONSerialization.jsonObject(with: Data(client.output.utf8)) as? [String: Any]
            let received = ((report?["end"] as? [String: Any])?["sum_received"] as? [String: Any])?["bytes"] as? NSNumber
            XCTAssertGreaterThan(received?.intValue ?? 0, 10_000_000, "TCP transfer moved too little: \(client.output)")
        } else {
            throw XCTSkip("needs iperf3 for the TCP transfer (deploy/install-deps.sh installs it)")
        }

        let foreignInRed = try intoRed.map { try $0.stop() }
        let foreignInBlue = try intoBlue.map { try $0.stop() }
        XCTAssertEqual(foreignInRed, [0, 0], "frames from blue reached red")
        XCTAssertEqual(foreignInBlue, [0, 0], "frames from red reached blue")

        let blueA = try daemon.portStatus(tenant: "blue", port: "a")
        let tx = (blueA["tx"] as? [String: Any])?["frames"] as? NSNumber
        XCTAssertGreaterThan(tx?.intValue ?? 0, 0, "status file counts no frames delivered to blue/a")
        XCTAssertEqual(daemon.stop(), 0, daemon.output)
    }

    /// CPU time (ms) of each switch worker thread of `pid`, by thread name (`bulkhead-sw0`, ...).
    private func workerCPUMilliseconds(pid: Int32) -> [String: Int] {
        var result: [String: Int] = [:]
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        for task in tasks {
            guard let comm = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/comm", encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines), comm.hasPrefix("bulkhead-sw"),
                  let stat = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            // After "pid (comm) ": state is field 3; utime and stime are fields 14 and 15.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { continue }
            result[comm] = Int((user + system) / ticks * 1000)
        }
        return result
    }

    /// With two workers, each TAP port has two queues and each worker one of them: many parallel
    /// TCP flows (the kernel spreads them over the queues by flow hash) keep both workers busy,
    /// every flow completes, and nothing crosses into the other tenant.
    func testTwoWorkersBothCarryTrafficAndIsolationHolds() throws {
        try Host.requireNetworkPrivileges()
        guard Host.which("iperf3") != nil else {
            throw XCTSkip("needs iperf3 for the parallel TCP flows (deploy/install-deps.sh installs it)")
        }
        var config = try TestTopology.demo()
        var host = config["host"] as? [String: Any] ?? [:]
        host["switch"] = ["workers": 2]
        config["host"] = host
        let daemon = try RunningDaemon(configuration: config)
        XCTAssertTrue(daemon.output.contains("switch.workers=2"), daemon.output)
        for tenant in ["blue", "red"] {
            for port in ["a", "b"] {
                let link = try Host.inNamespace(ns(tenant, port), ["ls", "/sys/class/net/\(ifname(tenant, port))/queues"])
                XCTAssertTrue(link.output.contains("rx-1") && link.output.contains("tx-1"),
                              "\(tenant)-\(port) has no second queue: \(link.output)")
            }
        }
        let intoRed = try captureForeignFrames(into: "red", ownMACs: redMACs)
        try daemon.waitForForwarding()
        // The packet workers are threads of the switch process, the daemon's child.
        let switchPID = try XCTUnwrap(SwitchHost.switches(of: daemon, tenant: "blue").first, daemon.output)
        let before = workerCPUMilliseconds(pid: switchPID)
        XCTAssertEqual(Set(before.keys), ["bulkhead-sw0", "bulkhead-sw1"])

        let server = try iperfServer(in: ns("blue", "b"), address: "10.0.0.2")
        defer { if server.isRunning { server.terminate() } }
        // 16 flows: the chance that the flow hash puts all of them on one queue is 2^-15.
        let client = try Host.inNamespace(ns("blue", "a"), ["iperf3", "-c", "10.0.0.2", "-t", "3", "-P", "16", "-J"],
                                          timeout: 60)
        XCTAssertEqual(client.status, 0, "iperf3 failed: \(client.output)\(client.error)")
        let report = try JSONSerialization.jsonObject(with: Data(client.output.utf8)) as? [String: Any]
        let received = ((report?["end"] as? [String: Any])?["sum_received"] as? [String: Any])?["bytes"] as? NSNumber
        XCTAssertGreaterThan(received?.intValue ?? 0, 10_000_000, "TCP transfer moved too little: \(client.output)")

        let after = workerCPUMilliseconds(pid: switchPID)
        for worker in ["bulkhead-sw0", "bulkhead-sw1"] {
            let busy = (after[worker] ?? 0) - (before[worker] ?? 0)
            XCTAssertGreaterThan(busy, 100, "\(worker) did almost nothing (\(busy) ms of CPU): its queues carried no traffic")
        }
        XCTAssertEqual(try intoRed.map { try $0.stop() }, [0, 0], "frames from blue reached red")
        let blueB = try daemon.portStatus(tenant: "blue", port: "b")
        let rx = (blueB["rx"] as? [String: Any])?["frames"] as? NSNumber
        XCTAssertGreaterThan(rx?.intValue ?? 0, 1000, "status counts the ACKs of blue/b")
        XCTAssertEqual(daemon.stop(), 0, daemon.output)
    }

    func testShutdownRemovesLinksAndNamespaces() throws {
        try Host.requireNetworkPrivileges()
        let daemon = try RunningDaemon(configuration: TestTopology.demo())
        for tenant in ["blue", "red"] {
            for port in ["a", "b"] {
                XCTAssertTrue(Host.namespaceExists(ns(tenant, port)))
                XCTAssertTrue(Host.linkExists(ifname(tenant, port), namespace: ns(tenant, port)))
            }
        }
        XCTAssertEqual(daemon.stop(signal: SIGINT), 0, daemon.output)
        for tenant in ["blue", "red"] {
            for port in ["a", "b"] {
                XCTAssertFalse(Host.namespaceExists(ns(tenant, port)), "namespace \(ns(tenant, port)) leaked")
                XCTAssertFalse(Host.linkExists(ifname(tenant, port)), "link \(ifname(tenant, port)) leaked")
            }
        }
    }

    func testSecondDaemonOnSameStateDirectoryFails() throws {
        try Host.requireNetworkPrivileges()
        let config = try TestTopology.demo()
        let first = try RunningDaemon(configuration: config)
        let second = try RunningDaemon(configuration: config, waitForReady: false, ownsStateDirectory: false)
        let status = second.exitStatus()
        XCTAssertEqual(status, 1, second.output)
        XCTAssertTrue(second.output.contains("already runs on this state directory"), second.output)
        // The first keeps working.
        let ping = try Host.inNamespace(ns("blue", "a"), ["ping", "-c", "1", "-W", "2", "10.0.0.2"])
        XCTAssertEqual(ping.status, 0, ping.output)
        XCTAssertEqual(first.stop(), 0)
    }

    func testFailedStartRemovesWhatItCreated() throws {
        try Host.requireNetworkPrivileges()
        var config = try TestTopology.demo()
        // The red tenant's second port asks for an interface name that exists already ("lo"):
        // the daemon must fail, and remove the namespaces and devices it created before that.
        var tenants = config["tenants"] as! [[String: Any]]
        var redPorts = tenants[1]["ports"] as! [[String: Any]]
        redPorts[1]["ifname"] = "lo"
        tenants[1]["ports"] = redPorts
        config["tenants"] = tenants
        let daemon = try RunningDaemon(configuration: config, waitForReady: false)
        XCTAssertEqual(daemon.exitStatus(), 1, daemon.output)
        XCTAssertTrue(daemon.output.contains("lo already exists"), daemon.output)
        for (tenant, port) in [("blue", "a"), ("blue", "b"), ("red", "a"), ("red", "b")] {
            XCTAssertFalse(Host.namespaceExists(ns(tenant, port)), "namespace \(ns(tenant, port)) leaked:\n\(daemon.output)")
        }
        XCTAssertFalse(Host.linkExists(ifname("blue", "a")))
    }

    func testRestartAfterKillRemovesLeftovers() throws {
        try Host.requireNetworkPrivileges()
        let config = try TestTopology.demo()
        let crashed = try RunningDaemon(configuration: config, ownsStateDirectory: false)
        crashed.stop(signal: SIGKILL)
        XCTAssertTrue(Host.namespaceExists(ns("blue", "a")), "a killed daemon cannot clean up; the namespace should remain")
        let restarted = try RunningDaemon(configuration: config)
        XCTAssertTrue(restarted.output.contains("left by an earlier run"), restarted.output)
        let ping = try Host.inNamespace(ns("red", "a"), ["ping", "-c", "1", "-W", "2", "10.0.0.2"])
        XCTAssertEqual(ping.status, 0, ping.output + restarted.output)
        XCTAssertEqual(restarted.stop(), 0)
        XCTAssertFalse(Host.namespaceExists(ns("blue", "a")))
    }
}
