import Foundation
import XCTest

/// The switch as a jailed child of the daemon: what it runs as, what it holds, and that a
/// switch killed mid-transfer comes back on the same TAP devices without losing a byte.
final class SwitchProcessTests: XCTestCase {
    private func ns(_ tenant: String, _ port: String) -> String { TestTopology.namespace(tenant, port) }
    private func ifname(_ tenant: String, _ port: String) -> String { TestTopology.interface(tenant, port) }

    /// Starts the demo topology and waits until its switch forwards; returns the daemon and the
    /// switch's pid.
    private func demo() throws -> (RunningDaemon, Int32) {
        try Host.requireNetworkPrivileges()
        try BlockHost.requireRoot()
        let daemon = try RunningDaemon(configuration: TestTopology.demo())
        // One switch per tenant, each jailed before it says it forwards: blue's holds only blue's ports.
        try BlockHost.waitFor("both tenants' switches forwarding", timeout: 30) { daemon.output.occurrences(of: "switch forwarding") >= 2 }
        try BlockHost.waitFor("a switch per tenant", timeout: 10) { SwitchHost.switches(of: daemon).count == 2 }
        let pids = SwitchHost.switches(of: daemon, tenant: "blue")
        XCTAssertEqual(pids.count, 1, "one switch process for blue:\n\(daemon.output)")
        return (daemon, try XCTUnwrap(pids.first))
    }

    func testTheSwitchRunsJailedWithAUidNoTenantHas() throws {
        let (daemon, pid) = try demo()
        // The last uid of the default jail range; tenants get the first ones.
        let uid: UInt32 = 900_065_535
        BlockHost.assertJailed(pid, uid: uid)
        let red = try XCTUnwrap(SwitchHost.switches(of: daemon, tenant: "red").first)
        BlockHost.assertJailed(red, uid: uid)
        for tenant in ["blue", "red"] {
            XCTAssertNotEqual(try BlockHost.jailUid(stateDirectory: daemon.stateDirectory, tenant: tenant), uid,
                              "tenant \(tenant)'s processes run as another uid than the switch")
        }
        // It holds the TAP queues it was handed (one per port and worker) and a ring per worker
        // (one worker per online core by default), and no file of the host.
        let files = BlockHost.openFiles(pid)
        let workers = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        XCTAssertEqual(BlockHost.descriptors(of: pid, linkingTo: "anon_inode:[io_uring]"), workers, "a ring per worker: \(files)")
        XCTAssertEqual(files.filter { $0 == "/dev/net/tun" }.count, 2 * workers, "blue's two TAP ports' queues, not red's: \(files)")
        XCTAssertEqual(files.filter { $0.hasPrefix("socket:") }.count, 2,
                       "the daemon's control socket and the listener of blue's vhost-user port: \(files)")
        let hostFiles = files.filter { $0.hasPrefix("/") && $0 != "/dev/net/tun" && $0 != "/dev/null" && !$0.hasPrefix("/tmp/") }
        XCTAssertEqual(hostFiles, [], "no file of the host is open in the switch")
        XCTAssertFalse(files.contains { $0.hasPrefix("/tmp/") && $0.hasSuffix(".img") }, "no volume file")
        // The packet threads are there, and the process forwards.
        let ping = try Host.inNamespace(ns("blue", "a"), ["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.0.0.2"])
        XCTAssertEqual(ping.status, 0, "\(ping.output)\n\(daemon.output)")
        // The daemon writes the status file from the switch's reports (about once a second).
        try BlockHost.waitFor("the status file to count blue/b's replies", timeout: 5) {
            let entry = try? daemon.portStatus(tenant: "blue", port: "b", fresh: false)
            return (((entry?["rx"] as? [String: Any])?["frames"] as? NSNumber)?.intValue ?? 0) > 0
        }
        XCTAssertEqual(daemon.stop(), 0, daemon.output)
        try BlockHost.waitFor("the switch to stop with its daemon", timeout: 10) { SwitchHost.switches(of: daemon).isEmpty }
        XCTAssertFalse(daemon.output.contains("switch exited ("), "a clean stop is no crash:\n\(daemon.output)")
    }

    /// kill -9 of the switch in the middle of a TCP transfer: the daemon restarts it with the same
    /// TAP fds, the endpoints never lose their links, and every byte arrives (sha256 of both ends).
    func testAKilledSwitchComesBackOnTheSameTapsAndATransferCompletesIntact() throws {
        let (daemon, first) = try demo()
        let index = { (tenant: String, port: String) in
            try Host.inNamespace(self.ns(tenant, port), ["cat", "/sys/class/net/\(self.ifname(tenant, port))/ifindex"]).output
        }
        let indexBefore = try index("blue", "b")

        let bytes = 256 << 20
        let receiver = try TransferEnd.receive(namespace: ns("blue", "b"), address: "10.0.0.2", port: 5201)
        defer { receiver.kill() }
        Thread.sleep(forTimeInterval: 0.5)
        // Paced at about 80 MB/s, so the transfer is still running when the switch dies.
        let sender = try TransferEnd.send(namespace: ns("blue", "a"), address: "10.0.0.2", port: 5201, bytes: bytes, pace: 80 << 20)
        defer { sender.kill() }
        let rxBytes = { try ((daemon.portStatus(tenant: "blue", port: "a")["rx"] as? [String: Any])?["bytes"] as? NSNumber)?.intValue ?? 0 }
        let rxBeforeKill = try rxBytes()  // waits for a fresh status file (about 1.2 s)
        XCTAssertGreaterThan(rxBeforeKill, 0, "the transfer is counted before the kill")
        XCTAssertTrue(sender.isRunning, "the transfer is still running when the switch is killed:\n\(sender.output)")
        let killed = Date()
        kill(first, SIGKILL)
        try daemon.waitFor("switch exited (killed by SIGKILL", timeout: 10)
        try BlockHost.waitFor("blue's restarted switch forwarding", timeout: 30) {
            daemon.output.split(separator: "\n").filter { $0.contains("switch forwarding") && $0.contains("tenant.id=blue") }.count >= 2
        }
        let restartSeconds = Date().timeIntervalSince(killed)
        let second = try XCTUnwrap(SwitchHost.switches(of: daemon, tenant: "blue").first, daemon.output)
        XCTAssertNotEqual(second, first)
        BlockHost.assertJailed(second, uid: 900_065_535)

        XCTAssertTrue(sender.waitForExit(timeout: 60), "the transfer finished:\n\(sender.output)")
        XCTAssertTrue(receiver.waitForExit(timeout: 10), "the receiver finished:\n\(receiver.output)")
        let sent = sender.output.trimmingCharacters(in: .whitespacesAndNewlines)
        let received = receiver.output.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertTrue(sent.hasPrefix("\(bytes) "), "sender: \(sent)")
        XCTAssertEqual(received, sent, "bytes and sha256 received = sent")
        XCTAssertEqual(try index("blue", "b"), indexBefore, "the endpoint's link is the same device (same ifindex)")
        print("switch restart: kill to forwarding again in \(Int(restartSeconds * 1000)) ms (as seen by the test)")

        // Counters go on from where the killed switch's last report left them (what it counted
        // after that report, at most a second's worth, dies with it).
        let rx = try rxBytes()
        XCTAssertGreaterThan(rx, rxBeforeKill, "the status counters never go back across a restart")
        XCTAssertGreaterThan(rx, bytes / 2, "the status counts the transfer across the restart")
        XCTAssertEqual(daemon.stop(), 0, daemon.output)
    }

    func testAKilledDaemonTakesItsSwitchAlong() throws {
        let (daemon, pid) = try demo()
        daemon.stop(signal: SIGKILL)
        let gone = (try? BlockHost.waitFor("the switch to go with its daemon", timeout: 5) { kill(pid, 0) != 0 }) != nil
        if !gone {
            kill(pid, SIGKILL)
            XCTFail("the switch \(pid) outlived its SIGKILLed daemon: the control socket lifeline did not stop it")
        }
        // The next daemon on the same state directory cleans up and forwards.
        let next = try RunningDaemon(configuration: TestTopology.demo(stateDirectory: daemon.stateDirectory))
        try next.waitForForwarding()
        let ping = try Host.inNamespace(ns("red", "a"), ["ping", "-c", "1", "-W", "2", "10.0.0.2"])
        XCTAssertEqual(ping.status, 0, ping.output + next.output)
        XCTAssertEqual(next.stop(), 0)
    }
}

enum SwitchHost {
    /// Pids of the `bulkhead switch` processes of `daemon` (of `tenant`'s, when given): they
    /// read the configuration the daemon applied, `<stateDirectory>/applied.json`.
    static func switches(of daemon: RunningDaemon, tenant: String? = nil) -> [Int32] {
        children(of: daemon, "switch", tenant: tenant)
    }

    /// Pids of `daemon`'s `bulkhead <subcommand>` children (of `tenant`'s, when given).
    static func children(of daemon: RunningDaemon, _ subcommand: String, tenant: String? = nil) -> [Int32] {
        let config = daemon.stateDirectory + "/applied.json"
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { pid in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            let arguments = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            func value(_ option: String) -> String? {
                guard let i = arguments.firstIndex(of: option), i + 1 < arguments.count else { return nil }
                return arguments[i + 1]
            }
            guard arguments.count > 1, arguments[1] == subcommand else { return false }
            return value("--config") == config && (tenant == nil || value("--tenant") == tenant)
        }.sorted()
    }
}

/// One end of a TCP transfer run by python3 in a namespace; prints "<bytes> <sha256>" at the end.
final class TransferEnd: LoggedProcess, @unchecked Sendable {
    static func receive(namespace: String, address: String, port: Int) throws -> TransferEnd {
        try TransferEnd(namespace: namespace, script: """
            import hashlib, socket
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("\(address)", \(port))); s.listen(1)
            c, _ = s.accept(); h = hashlib.sha256(); n = 0
            while True:
                b = c.recv(1 << 20)
                if not b: break
                h.update(b); n += len(b)
            print(n, h.hexdigest(), flush=True)
            """)
    }

    /// Sends `bytes` of seeded pseudo-random data at about `pace` bytes a second.
    static func send(namespace: String, address: String, port: Int, bytes: Int, pace: Int) throws -> TransferEnd {
        try TransferEnd(namespace: namespace, script: """
            import hashlib, random, socket, time
            rng = random.Random(8); h = hashlib.sha256(); n = 0
            s = socket.create_connection(("\(address)", \(port)), timeout=60)
            start = time.monotonic()
            while n < \(bytes):
                chunk = rng.randbytes(min(1 << 20, \(bytes) - n))
                s.sendall(chunk); h.update(chunk); n += len(chunk)
                ahead = n / \(pace) - (time.monotonic() - start)
                if ahead > 0: time.sleep(ahead)
            s.shutdown(socket.SHUT_WR)
            s.recv(1)
            print(n, h.hexdigest(), flush=True)
            """)
    }

    private init(namespace: String, script: String) throws {
        try super.init(executable: "/usr/bin/env", arguments: ["ip", "netns", "exec", namespace, "python3", "-c", script])
    }

    func kill() { if isRunning { Glibc.kill(pid, SIGKILL) } }
}
