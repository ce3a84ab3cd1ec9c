import Foundation
import XCTest

/// DPDK's `dpdk-testpmd` on the demo's blue vhost-user port `vm`, served by the jailed switch:
/// its virtio_user vdev (a vhost-user frontend nobody here wrote) sends UDP to blue-a with
/// txonly, and receives blue-a's datagrams with rxonly; nothing of it reaches red, whose
/// endpoints use the same addresses. (VhostNetTests.TestpmdTests drives the device alone.)
final class SwitchTestpmdTests: XCTestCase {
    private let vmMAC = "02:00:00:00:01:03", vmIP = "10.0.0.3"
    private let blueAMAC = "02:00:00:00:01:01", blueAIP = "10.0.0.1"

    func testTestpmdOnAVhostUserPortExchangesFramesWithItsTenantOnly() throws {
        try Host.requireNetworkPrivileges()
        guard let testpmd = Host.which("dpdk-testpmd") else { throw XCTSkip("needs dpdk-testpmd (Debian package dpdk-dev)") }
        guard let cc = Host.which("cc") else { throw XCTSkip("needs cc for the memfd sealing shim (Tests/Tools/memfd-seal-preload.c)") }
        let work = NSTemporaryDirectory() + "bulkhead-testpmd-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        // testpmd's --no-huge memory is a memfd it cannot seal; the switch maps only sealed ones.
        let shim = work + "/memfd-seal-preload.so"
        let source = TestTopology.repository.appendingPathComponent("Tests/Tools/memfd-seal-preload.c").path
        XCTAssertEqual(try Host.run([cc, "-shared", "-fPIC", "-O2", "-o", shim, source, "-ldl"]).status, 0)

        let daemon = try RunningDaemon(configuration: try TestTopology.demo())
        try daemon.waitForForwarding()
        let socket = daemon.stateDirectory + "/tenants/blue/net/vm.sock"
        let blueA = TestTopology.namespace("blue", "a"), blueAInterface = TestTopology.interface("blue", "a")
        let intoRed = try ["a", "b"].map {
            try Capture(namespace: TestTopology.namespace("red", $0), interface: TestTopology.interface("red", $0),
                        filter: "ether src \(vmMAC)")
        }
        func counters() throws -> (rx: Int, noPorts: Int) {
            let rx = try Host.run(["ip", "netns", "exec", blueA, "cat", "/sys/class/net/\(blueAInterface)/statistics/rx_packets"])
            let snmp = try Host.run(["ip", "netns", "exec", blueA, "cat", "/proc/net/snmp"]).output
            let udp = snmp.split(separator: "\n").filter { $0.hasPrefix("Udp:") }.map { $0.split(separator: " ") }
            let column = udp.first?.firstIndex(of: "NoPorts") ?? 0
            let noPorts = udp.count > 1 && column > 0 && column < udp[1].count ? Int(udp[1][column]) ?? 0 : 0
            return (Int(rx.output.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0, noPorts)
        }

        // txonly: 64-byte UDP frames from the port's MAC and address to blue-a.
        let before = try counters()
        let tx = try TestpmdRun(testpmd: testpmd, shim: shim, socket: socket, mac: vmMAC, directory: work, arguments: [
            "--forward-mode=txonly", "--txpkts=64", "--eth-peer=0,\(blueAMAC)", "--tx-ip=\(vmIP),\(blueAIP)",
        ], seconds: 2)
        Thread.sleep(forTimeInterval: 0.3)
        let after = try counters()
        let vm = try daemon.portStatus(tenant: "blue", port: "vm")
        let report = "\(tx.tail)\n--- vm: \(vm)\n--- daemon:\n\(daemon.output.suffix(3000))"
        print("testpmd txonly through the switch: sent \(tx.txPackets), blue-a rx_packets +\(after.rx - before.rx), UDP NoPorts +\(after.noPorts - before.noPorts)")
        XCTAssertGreaterThan(tx.txPackets, 1_000, report)
        // The switch may drop some on a loaded machine (its counters say why); most arrive, whole.
        XCTAssertGreaterThan(after.rx - before.rx, tx.txPackets / 4, report)
        XCTAssertLessThanOrEqual(after.rx - before.rx, tx.txPackets + 100, report)
        XCTAssertGreaterThan(after.noPorts - before.noPorts, (after.rx - before.rx) / 2, "blue-a's UDP took them: \(report)")

        // rxonly: datagrams from blue-a to the port's address reach testpmd.
        XCTAssertEqual(try Host.run(["ip", "netns", "exec", blueA, "ip", "neigh", "replace", vmIP, "lladdr", vmMAC,
                                     "dev", blueAInterface, "nud", "permanent"]).status, 0)
        let sent = 5_000, vmIP = self.vmIP
        let rx = try TestpmdRun(testpmd: testpmd, shim: shim, socket: socket, mac: vmMAC, directory: work,
                                arguments: ["--forward-mode=rxonly"], seconds: 4) {
            let script = """
                import socket, time
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                for i in range(\(sent)):
                    s.sendto(b"x" * 18, ("\(vmIP)", 9))
                    if i % 16 == 15: time.sleep(0.001)
                """
            XCTAssertEqual(try Host.run(["ip", "netns", "exec", blueA, "python3", "-c", script]).status, 0)
        }
        print("testpmd rxonly through the switch: \(sent) sent from blue-a, testpmd received \(rx.rxPackets)")
        let vmAfter = try daemon.portStatus(tenant: "blue", port: "vm")
        XCTAssertGreaterThanOrEqual(rx.rxPackets, sent / 4, "\(rx.tail)\n--- vm: \(vmAfter)")
        XCTAssertLessThanOrEqual(rx.rxPackets, sent + 100, rx.tail)

        XCTAssertEqual(try intoRed.map { try $0.stop() }, [0, 0], "frames of blue's testpmd reached red")
        XCTAssertEqual(daemon.stop(), 0, daemon.output)
    }
}

/// One dpdk-testpmd run with a `net_virtio_user` port on a vhost-user-net socket: started, given
/// `seconds` of forwarding (with `during` called once it forwards), stopped with SIGINT.
struct TestpmdRun {
    let output: String
    let txPackets: Int
    let rxPackets: Int

    var tail: String {
        let lines = output.split(separator: "\n", omittingEmptySubsequences: false)
        return (lines.prefix(30) + ["[...]"] + lines.suffix(20)).joined(separator: "\n")
    }

    init(testpmd: String, shim: String, socket: String, mac: String, directory: String, arguments: [String],
         seconds: Double, during: (() throws -> Void)? = nil) throws {
        let prefix = "bhst\(UInt32.random(in: 0..<UInt32.max))"
        let log = directory + "/\(prefix).log"
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: testpmd)
        process.arguments = ["--no-huge", "-m", "512", "--no-pci", "--file-prefix=\(prefix)",
                             "--vdev", "net_virtio_user0,path=\(socket),queues=1,queue_size=256,mac=\(mac)",
                             "--", "--total-num-mbufs=16384", "--stats-period=1", "--nb-cores=1"] + arguments
        process.environment = ProcessInfo.processInfo.environment.merging(["LD_PRELOAD": shim]) { $1 }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        defer {
            if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
            try? FileManager.default.removeItem(atPath: "/var/run/dpdk/\(prefix)")
        }
        func text() -> String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        let deadline = Date().addingTimeInterval(20)
        while process.isRunning, Date() < deadline, !text().contains("Port statistics") { Thread.sleep(forTimeInterval: 0.1) }
        guard process.isRunning, text().contains("Port statistics") else {
            let output = text()
            if output.contains("Cannot init EAL") || output.contains("Creation of mbuf pool") {
                throw XCTSkip("dpdk-testpmd cannot start here:\n\(output.suffix(2000))")
            }
            throw DaemonFailure(message: "testpmd did not start forwarding on \(socket):\n\(output.suffix(4000))")
        }
        let started = Date()
        var failure: Error?
        do { try during?() } catch { failure = error }
        let left = seconds - Date().timeIntervalSince(started)
        if left > 0 { Thread.sleep(forTimeInterval: left) }
        kill(process.processIdentifier, SIGINT)
        let exitDeadline = Date().addingTimeInterval(15)
        while process.isRunning, Date() < exitDeadline { Thread.sleep(forTimeInterval: 0.05) }
        if let failure { throw failure }
        let output = text()
        self.output = output
        txPackets = TestpmdRun.statistic(output, "TX-packets:")
        rxPackets = TestpmdRun.statistic(output, "RX-packets:")
    }

    /// A value of the "Forward statistics for port 0" block testpmd prints when it stops.
    static func statistic(_ output: String, _ key: String) -> Int {
        guard let block = output.range(of: "Forward statistics for port 0", options: .backwards),
              let at = output[block.upperBound...].range(of: key) else { return 0 }
        return Int(output[at.upperBound...].drop { $0 == " " }.prefix { $0.isNumber }) ?? 0
    }
}
