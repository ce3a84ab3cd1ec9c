import Foundation
import XCTest

/// The test guest (Tests/Guest, built here with the system gcc) under QEMU in software emulation:
/// the same image Bulkhead's VMM enters as a flat image boots here through its multiboot header.
/// Run on QEMU's own virtio-pci devices it tells a bug of the guest from a bug of the VMM; run on
/// Bulkhead's block server and switch over vhost-user it checks those backends against the
/// guest's drivers, with QEMU as the frontend.
final class TestGuestQEMUTests: XCTestCase {

    // MARK: - QEMU's own devices

    /// virtio-blk-pci on a raw file and virtio-net-pci on a TAP whose peer is a namespace with the
    /// kernel's stack, both modern-only, MSI-X enabled by the guest: every check passes, and the
    /// file holds the guest's pattern where the guest says it wrote it.
    func testTheGuestPassesOnQEMUsOwnVirtioDevices() throws {
        let tools = try TestGuestTools.require(network: true)
        let directory = try TestGuestTools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let peer = try TapPeer(address: "10.0.0.1/24")
        let disk = directory + "/disk.img"
        let diskBytes = 64 << 20
        XCTAssertTrue(FileManager.default.createFile(atPath: disk, contents: nil))
        try FileHandle(forWritingTo: URL(fileURLWithPath: disk)).truncate(atOffset: UInt64(diskBytes))

        let seed = UInt64.random(in: 1...UInt64(UInt32.max))
        let run = try GuestRun(tools: tools, directory: directory, namespace: peer.namespace, devices: [
            // discard=unmap: QEMU ignores DISCARD by default; the guest requires zeroes afterwards.
            "-drive", "file=\(disk),format=raw,if=none,id=d0,discard=unmap",
            "-device", "virtio-blk-pci,drive=d0,disable-legacy=on",
            "-netdev", "tap,id=n0,ifname=\(peer.tap),script=no,downscript=no",
            "-device", "virtio-net-pci,netdev=n0,disable-legacy=on,mac=52:54:00:b4:00:03",
        ], commandLine: "blk net msix=1 discard=zero seed=\(seed) ping=10.0.0.1 isolated=10.0.0.99 timeout_ms=500")
        run.assertPassed()
        for check in TestGuestTools.blockChecks + [
            "net 00:02.0 mac=52:54:00:b4:00:03 mac_source=device ip=10.0.0.3 ",
            "net arp 10.0.0.1 is-at \(peer.mac) ",
            "net ping 10.0.0.1 ok replies=4/4 ",
            "net isolated 10.0.0.99 ok no-reply ",
        ] {
            XCTAssertNotNil(run.line(check), "the guest printed '\(check)':\n\(run.report)")
        }
        XCTAssertTrue(run.line("blk 00:01.0 ")?.contains(" msix=1") == true, "the guest enabled MSI-X on the disk:\n\(run.report)")
        XCTAssertTrue(run.line("blk 00:01.0 ")?.contains(" event_idx=1") == true, "EVENT_IDX negotiated:\n\(run.report)")
        print("test-guest: QEMU's own devices: PASS after \(run.passedAfter.map { String(format: "%.2f", $0) } ?? "-") s; "
              + (run.line("blk doorbells=") ?? "") + "; " + (run.line("net doorbells=") ?? ""))

        // The host's view of the disk: the guest's pattern at its blocks, zeroes between them.
        let layout = TestGuestPattern.Layout(capacitySectors: UInt64(diskBytes / 512))
        try TestGuestPattern.assertWritten(file: disk, seed: seed, layout: layout, report: run.report)
    }

    /// The hostile modes against QEMU's own devices: the guest survives them, says so, and the
    /// devices still work after a reset.
    func testHostileGuestModesThenANormalRunOnQEMUsOwnDevices() throws {
        let tools = try TestGuestTools.require(network: true)
        let directory = try TestGuestTools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let peer = try TapPeer(address: "10.0.0.1/24")
        let disk = directory + "/disk.img"
        XCTAssertTrue(FileManager.default.createFile(atPath: disk, contents: nil))
        try FileHandle(forWritingTo: URL(fileURLWithPath: disk)).truncate(atOffset: 64 << 20)

        let run = try GuestRun(tools: tools, directory: directory, namespace: peer.namespace, devices: [
            "-drive", "file=\(disk),format=raw,if=none,id=d0",
            "-device", "virtio-blk-pci,drive=d0,disable-legacy=on",
            "-netdev", "tap,id=n0,ifname=\(peer.tap),script=no,downscript=no",
            "-device", "virtio-net-pci,netdev=n0,disable-legacy=on",
        // A fixed seed: the garbage is then the same every run. With some seeds QEMU (7.2) takes
        // a garbage queue_enable as a device error ("wrong value for queue_enable") and the ring
        // phase never reaches its queues, so the run depended on the TSC (seed=1 does that;
        // 2 and 3 pass). Our own VMM's hostile-guest test keeps drawing its garbage at random.
        ], commandLine: "hostile=pci,virtio,ring storm=500 seed=3 blk net ping=10.0.0.1")
        // Even with that seed, the storms' timing sometimes has QEMU 7.2 take a garbage
        // queue_enable and then abort (SIGABRT) in the ring phase (seen once in CI). That is a
        // crash of QEMU's device on hostile input, not of anything of ours: said, not failed.
        if run.vm.process.terminationReason == .uncaughtSignal, run.vm.process.terminationStatus == SIGABRT,
           run.vm.errors.contains("wrong value for queue_enable") {
            throw XCTSkip("QEMU (7.2) aborted on the hostile guest's garbage queue_enable (a QEMU defect); "
                          + "the hostile run against Bulkhead's own VMM covers our side:\n\(run.report)")
        }
        run.assertPassed()
        for check in ["survived pci", "survived virtio", "survived ring", "hostile virtio 00:01.0 ", "hostile virtio 00:02.0 ",
                      "hostile ring 00:01.0 queues=1 chains=9 ", "hostile ring 00:02.0 queues=2 chains=18 ", "blk readback ok", "net ping 10.0.0.1 ok replies=4/4 "] {
            XCTAssertNotNil(run.line(check), "the guest printed '\(check)':\n\(run.report)")
        }
        // QEMU reported the garbage it was given (and carried on).
        XCTAssertTrue(run.vm.errors.contains("Looped descriptor") || run.vm.errors.contains("Desc next"),
                      "QEMU saw the malformed chains: \(run.vm.errors)")
    }

    /// 60-byte UDP frames (64 on the wire) to the namespace peer: every frame the guest counts
    /// reaches the peer's interface, with far fewer doorbells than frames.
    func testUDPBenchmarkFramesReachThePeer() throws {
        let tools = try TestGuestTools.require(network: true)
        let directory = try TestGuestTools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let peer = try TapPeer(address: "10.0.0.1/24")
        let before = try peer.receivedPackets()
        let frames = 20000
        let run = try GuestRun(tools: tools, directory: directory, namespace: peer.namespace, devices: [
            "-netdev", "tap,id=n0,ifname=\(peer.tap),script=no,downscript=no",
            "-device", "virtio-net-pci,netdev=n0,disable-legacy=on",
        ], commandLine: "bench=udp udp=10.0.0.1:9 count=\(frames)")
        run.assertPassed()
        let bench = try XCTUnwrap(run.line("bench udp "), run.report)
        XCTAssertEqual(bench.value(of: "frames"), frames, bench)
        XCTAssertEqual(bench.value(of: "bytes"), 60, bench)
        let doorbells = try XCTUnwrap(bench.value(of: "doorbells"), bench)
        XCTAssertLessThan(doorbells, frames / 10, "one doorbell per batch, and EVENT_IDX suppresses most: \(bench)")
        let received = try peer.receivedPackets() - before
        XCTAssertGreaterThanOrEqual(received, frames, "the peer's interface received the frames (\(received))")
        print("test-guest: \(bench)")
    }

    // MARK: - Bulkhead's block server over vhost-user

    /// vhost-user-blk-pci on `bulkhead block-server`: every block check passes, the volume file
    /// holds the pattern, the 4 KiB random-read benchmark runs, and the server logs no problem.
    func testTheGuestPassesOnTheBlockServerOverVhostUser() throws {
        let tools = try TestGuestTools.require(network: false)
        try BlockHost.requireRoot()
        let volumeBytes = 64 << 20
        let state = try BlockState(tenants: ["t1": [("disk", UInt64(volumeBytes))]])
        let server = try BlockServerProcess(state: state, tenant: "t1", queues: 1)
        try server.waitFor("block server ready", timeout: 30)
        let devices = TestGuestTools.sharedMemory + [
            "-chardev", "socket,id=c0,path=\(state.socket("t1", "disk"))",
            "-device", "vhost-user-blk-pci,chardev=c0,num-queues=1,disable-legacy=on",
        ]

        let seed = UInt64.random(in: 1...UInt64(UInt32.max))
        let run = try GuestRun(tools: tools, directory: state.directory, devices: devices, commandLine: "blk discard=zero seed=\(seed)")
        run.assertPassed(extra: server.output)
        for check in TestGuestTools.blockChecks {
            XCTAssertNotNil(run.line(check), "the guest printed '\(check)':\n\(run.report)\n\(server.output)")
        }
        print("test-guest: block server: PASS after \(run.passedAfter.map { String(format: "%.2f", $0) } ?? "-") s; " + (run.line("blk doorbells=") ?? ""))
        try TestGuestPattern.assertWritten(file: state.volumeFile("t1", "disk"), seed: seed,
                                           layout: TestGuestPattern.Layout(capacitySectors: UInt64(volumeBytes / 512)), report: run.report)

        let bench = try GuestRun(tools: tools, directory: state.directory, devices: devices, commandLine: "bench=randread qd=32 count=4000")
        bench.assertPassed(extra: server.output)
        let line = try XCTUnwrap(bench.line("bench randread "), bench.report)
        XCTAssertEqual(line.value(of: "requests"), 4000, line)
        XCTAssertEqual(line.value(of: "errors"), 0, line)
        XCTAssertEqual(line.value(of: "qd"), 32, line)
        print("test-guest: block server: \(line)")

        try server.waitFor("vhost-user frontend disconnected", timeout: 10)
        XCTAssertEqual(GuestSetup.problems(in: server.output), [], "the server logged no warning or error")
        XCTAssertTrue(server.isRunning, "the server outlives its guests")
        XCTAssertEqual(server.stop(), 0, "SIGTERM stops the server:\n\(server.output)")
    }

    /// Garbage chains and PCI garbage against the block server: it refuses each chain (a warning,
    /// the queue stopped), stays up, and serves the same guest's normal run right after.
    func testHostileRingsDoNotStopTheBlockServer() throws {
        let tools = try TestGuestTools.require(network: false)
        try BlockHost.requireRoot()
        let state = try BlockState(tenants: ["t1": [("disk", UInt64(64 << 20))]])
        let server = try BlockServerProcess(state: state, tenant: "t1", queues: 1)
        try server.waitFor("block server ready", timeout: 30)
        // hostile=virtio is left out here: QEMU 7.2's vhost-user-blk aborts on it
        // (vhost_dev_set_config: Assertion `hdev->vhost_ops' failed), a QEMU bug, not ours.
        let run = try GuestRun(tools: tools, directory: state.directory, devices: TestGuestTools.sharedMemory + [
            "-chardev", "socket,id=c0,path=\(state.socket("t1", "disk"))",
            "-device", "vhost-user-blk-pci,chardev=c0,num-queues=1,disable-legacy=on",
        ], commandLine: "hostile=pci,ring blk")
        run.assertPassed(extra: server.output)
        XCTAssertNotNil(run.line("survived pci"), run.report)
        XCTAssertNotNil(run.line("survived ring"), run.report)
        XCTAssertNotNil(run.line("blk readback ok"), run.report)
        for refusal in ["is not inside guest memory", "(or loops)", "descriptor index 65535 is out of range", "indirect descriptor inside an indirect table",
                        "available index jumped"] {
            XCTAssertTrue(server.output.contains(refusal), "the server refused a chain ('\(refusal)'):\n\(server.output)")
        }
        XCTAssertTrue(server.isRunning, "the server survives its hostile guest:\n\(server.output)")
        XCTAssertEqual(server.stop(), 0, "SIGTERM stops the server:\n\(server.output)")
    }

    // MARK: - The demo: blue's vhost-user port and volume

    /// The guest as a partition of blue would be: its NIC on blue's `vm` port of the switch, its
    /// disk on blue's volume. It resolves and pings blue-a (10.0.0.1, blue-a's MAC answers), an
    /// address only red has stays silent, red sees nothing of it, and the disk checks pass.
    func testTheGuestOnTheDemoSwitchReachesItsTenantOnly() throws {
        let tools = try TestGuestTools.require(network: true)
        try Host.requireNetworkPrivileges()
        try BlockHost.requireRoot()
        let daemon = try RunningDaemon(configuration: try TestTopology.demo())
        try daemon.waitForForwarding()
        let redA = TestTopology.namespace("red", "a")
        // An address only red has: if the guest hears from it, the tenants touch.
        try Host.run(["ip", "-n", redA, "addr", "add", "10.0.0.77/24", "dev", TestTopology.interface("red", "a")])
        let intoRed = try ["a", "b"].map {
            try Capture(namespace: TestTopology.namespace("red", $0), interface: TestTopology.interface("red", $0),
                        filter: "ether src 02:00:00:00:01:03")
        }
        let volumeSocket = daemon.stateDirectory + "/tenants/blue/vhost/data.sock"
        try BlockHost.waitFor("blue's volume socket", timeout: 30) { FileManager.default.fileExists(atPath: volumeSocket) }
        let directory = try TestGuestTools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }

        let run = try GuestRun(tools: tools, directory: directory, devices: TestGuestTools.sharedMemory + [
            "-chardev", "socket,id=c0,path=\(volumeSocket)",
            "-device", "vhost-user-blk-pci,chardev=c0,num-queues=1,disable-legacy=on",
            "-chardev", "socket,id=c1,path=\(daemon.stateDirectory)/tenants/blue/net/vm.sock",
            "-netdev", "vhost-user,id=n0,chardev=c1",
            // vectors=0: Debian 12's QEMU 7.2 dereferences NULL in vhost_net_start when a
            // vhost-user-net device uses MSI-X under TCG (see SwitchGuestTests).
            "-device", "virtio-net-pci,netdev=n0,mac=02:00:00:00:01:03,vectors=0,disable-legacy=on",
        ], commandLine: "blk net discard=zero ip=10.0.0.3 ping=10.0.0.1 isolated=10.0.0.77 timeout_ms=1000")
        run.assertPassed(extra: daemon.output)
        for check in TestGuestTools.blockChecks + [
            "net 00:02.0 mac=02:00:00:00:01:03 ",
            "net arp 10.0.0.1 is-at 02:00:00:00:01:01 ",
            "net ping 10.0.0.1 ok replies=4/4 ",
            "net isolated 10.0.0.77 ok no-reply ",
        ] {
            XCTAssertNotNil(run.line(check), "the guest printed '\(check)':\n\(run.report)")
        }
        XCTAssertEqual(try intoRed.map { try $0.stop() }, [0, 0], "frames of blue's guest reached red")
        print("test-guest: demo switch: PASS after \(run.passedAfter.map { String(format: "%.2f", $0) } ?? "-") s; "
              + (run.line("net ping ") ?? "") + "; " + (run.line("net doorbells=") ?? ""))
        XCTAssertEqual(daemon.stop(), 0, daemon.output)
    }

    /// Garbage chains on both queues of blue's `vm` port: the switch survives them, serves the
    /// same guest's normal run after its reset, and keeps forwarding between blue's endpoints.
    func testHostileRingsOnASwitchPortLeaveTheSwitchForwarding() throws {
        let tools = try TestGuestTools.require(network: true)
        try Host.requireNetworkPrivileges()
        let daemon = try RunningDaemon(configuration: try TestTopology.demo())
        try daemon.waitForForwarding()
        let directory = try TestGuestTools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }

        let run = try GuestRun(tools: tools, directory: directory, devices: TestGuestTools.sharedMemory + [
            "-chardev", "socket,id=c1,path=\(daemon.stateDirectory)/tenants/blue/net/vm.sock",
            "-netdev", "vhost-user,id=n0,chardev=c1",
            "-device", "virtio-net-pci,netdev=n0,mac=02:00:00:00:01:03,vectors=0,disable-legacy=on",
        ], commandLine: "hostile=ring,pci net ping=10.0.0.1")
        run.assertPassed(extra: daemon.output)
        XCTAssertNotNil(run.line("hostile ring 00:01.0 queues=2 chains=18 "), run.report)
        XCTAssertNotNil(run.line("survived ring"), run.report)
        XCTAssertNotNil(run.line("net ping 10.0.0.1 ok replies=4/4 "), "the port works again after the reset:\n\(run.report)")
        XCTAssertTrue(daemon.isRunning, "the daemon survives:\n\(daemon.output)")
        let ping = try Host.inNamespace(TestTopology.namespace("blue", "a"), ["ping", "-c", "2", "-W", "2", "10.0.0.2"])
        XCTAssertEqual(ping.status, 0, "blue-a still reaches blue-b through the switch: \(ping.output)\n\(daemon.output)")
        XCTAssertEqual(daemon.stop(), 0, daemon.output)
    }
}

// MARK: - Helpers

/// What the test-guest tests need: root, QEMU, gcc and binutils; the guest image, built once.
struct TestGuestTools {
    let qemu: String
    let image: String

    /// QEMU guest memory that a vhost-user backend can map.
    static let sharedMemory = ["-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa", "node,memdev=mem"]

    /// The block check lines every passing blk run prints (prefixes after "bhtest: ").
    static let blockChecks = [
        "blk write ok requests=16 bytes=131072 segments=2 ", "blk flush ok", "blk readback ok requests=16",
        "blk zeroes ok requests=15", "blk discard ok zeroes ", "blk write-zeroes ok ", "blk beyond-end ok status=IOERR",
    ]

    /// Skips the test, saying what is missing; builds the guest (once per process).
    static func require(network: Bool) throws -> TestGuestTools {
        guard getuid() == 0 else {
            throw XCTSkip("needs root: the test guest's checks use TAP devices, namespaces and the block server (run as root, as CI does)")
        }
        guard let qemu = Host.which("qemu-system-x86_64") else {
            throw XCTSkip("needs qemu-system-x86_64 on PATH (deploy/install-deps.sh installs qemu-system-x86)")
        }
        for tool in ["gcc", "objcopy"] where Host.which(tool) == nil {
            throw XCTSkip("needs \(tool) on PATH to build the test guest (gcc and binutils)")
        }
        if network {
            guard FileManager.default.fileExists(atPath: "/dev/net/tun") else { throw XCTSkip("needs /dev/net/tun (TAP devices)") }
            guard Host.which("ip") != nil else { throw XCTSkip("needs ip (iproute2)") }
        }
        return TestGuestTools(qemu: qemu, image: try built.get())
    }

    /// The test guest, built once per test process (the QEMU, partition and demo-digest tests share it).
    static let built: Result<String, DaemonFailure> = {
        let directory = NSTemporaryDirectory() + "bulkhead-test-guest-\(getpid())"
        let script = TestTopology.repository.appendingPathComponent("Tests/Guest/build.sh").path
        guard let result = try? Host.run(["sh", script, directory], timeout: 120) else {
            return .failure(DaemonFailure(message: "could not run \(script)"))
        }
        let image = directory + "/bhtest.bin"
        guard result.status == 0, FileManager.default.fileExists(atPath: image) else {
            return .failure(DaemonFailure(message: "\(script) failed with status \(result.status):\n\(result.output)\(result.error)"))
        }
        return .success(image)
    }()

    static func temporaryDirectory() throws -> String {
        let directory = NSTemporaryDirectory() + "bulkhead-test-guest-run-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return directory
    }
}

/// One boot of the test guest under QEMU (q35, TCG), its console in a file; waits for its verdict
/// and for QEMU to exit (the guest powers off).
final class GuestRun {
    let vm: QEMUProcess
    let lines: [String]
    /// Seconds from QEMU's start to the guest's verdict line.
    let passedAfter: TimeInterval?
    private let consolePath: String

    init(tools: TestGuestTools, directory: String, namespace: String? = nil, devices: [String], commandLine: String,
         timeout: TimeInterval = 180) throws {
        consolePath = directory + "/console-\(UUID().uuidString).txt"
        let arguments = [
            "-machine", "q35,accel=tcg", "-cpu", "max", "-m", "256M", "-smp", "1",
            "-kernel", tools.image, "-append", commandLine,
            "-display", "none", "-nodefaults", "-no-reboot", "-serial", "file:\(consolePath)",
        ] + devices
        // `ip netns exec` execs QEMU, so the process the test holds is QEMU itself.
        if let namespace {
            vm = try QEMUProcess(Host.which("ip") ?? "/usr/sbin/ip", arguments: ["netns", "exec", namespace, tools.qemu] + arguments,
                                 directory: directory)
        } else {
            vm = try QEMUProcess(tools.qemu, arguments: arguments, directory: directory)
        }
        let started = Date()
        let deadline = started.addingTimeInterval(timeout)
        var verdictAt: Date?
        while Date() < deadline {
            let running = vm.isRunning
            if verdictAt == nil, Self.read(consolePath).contains(where: { $0.hasPrefix("bhtest: PASS") || $0.hasPrefix("bhtest: FAIL") }) {
                verdictAt = Date()
            }
            if !running { break }
            // After the verdict the guest powers off at once: give QEMU a few seconds to exit.
            if let verdictAt, Date().timeIntervalSince(verdictAt) > 10 { break }
            Thread.sleep(forTimeInterval: 0.02)
        }
        vm.kill()
        lines = Self.read(consolePath)
        passedAfter = verdictAt.map { $0.timeIntervalSince(started) }
    }

    /// Console lines without the serial line's "\r".
    private static func read(_ path: String) -> [String] {
        let bytes = [UInt8](FileManager.default.contents(atPath: path) ?? Data())
        return bytes.split(separator: UInt8(ascii: "\n")).map { String(decoding: $0.filter { $0 != UInt8(ascii: "\r") }, as: UTF8.self) }
    }

    /// The first line "bhtest: <prefix>...", without "bhtest: ".
    func line(_ prefix: String) -> String? {
        lines.first { $0.hasPrefix("bhtest: " + prefix) }.map { String($0.dropFirst("bhtest: ".count)) }
    }

    var report: String {
        "--- guest console ---\n" + lines.suffix(60).joined(separator: "\n") + "\n--- QEMU stderr ---\n" + vm.errors
    }

    /// The run started with "bhtest: start", ended with "bhtest: PASS" and powered the machine off
    /// (QEMU exits 0 on the guest's ACPI power-off).
    func assertPassed(extra: String = "", file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(lines.first, "bhtest: start", "the guest's first line:\n\(report)", file: file, line: line)
        XCTAssertEqual(lines.last, "bhtest: PASS", "the guest's verdict:\n\(report)\n\(extra.split(separator: "\n").suffix(30).joined(separator: "\n"))",
                       file: file, line: line)
        XCTAssertEqual(vm.process.terminationReason, .exit, "QEMU exited by itself (the guest powered off):\n\(report)", file: file, line: line)
        XCTAssertEqual(vm.process.terminationStatus, 0, "QEMU's exit status:\n\(report)", file: file, line: line)
    }
}

/// A network namespace holding a persistent TAP with an address: the kernel's stack answers ARP
/// and ping on it. QEMU runs inside the namespace and opens the TAP by name.
final class TapPeer {
    let namespace: String
    let tap: String
    let mac: String

    init(address: String) throws {
        let id = "\(getpid() % 100_000)x\(Int.random(in: 0..<1000))"
        namespace = "bhg\(id)"
        tap = "bhg\(id)"
        for command in [
            ["ip", "netns", "add", namespace],
            ["ip", "tuntap", "add", "dev", tap, "mode", "tap"],
            ["ip", "link", "set", tap, "netns", namespace],
            ["ip", "-n", namespace, "addr", "add", address, "dev", tap],
            ["ip", "-n", namespace, "link", "set", tap, "up"],
            ["ip", "-n", namespace, "link", "set", "lo", "up"],
        ] {
            let result = try Host.run(command)
            guard result.status == 0 else { throw DaemonFailure(message: "\(command.joined(separator: " ")): \(result.error)") }
        }
        let show = try Host.run(["ip", "-n", namespace, "-br", "link", "show", tap]).output.split(separator: " ").filter { !$0.isEmpty }
        guard show.count >= 3 else { throw DaemonFailure(message: "no MAC for \(tap)") }
        mac = String(show[2])
    }

    /// Packets the namespace's side of the TAP has received.
    func receivedPackets() throws -> Int {
        let out = try Host.inNamespace(namespace, ["cat", "/sys/class/net/\(tap)/statistics/rx_packets"]).output
        return Int(out.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
    }

    deinit {
        // The TAP goes with its namespace.
        _ = try? Host.run(["ip", "netns", "del", namespace])
        _ = try? Host.run(["ip", "link", "del", tap])
    }
}

/// The guest's block pattern (Tests/Guest/blk.c): sector s holds 64 little-endian words, word w
/// being xorshift64* of seed ^ s * 0x9E3779B97F4A7C15 ^ w * 0xC2B2AE3D27D4EB4F; 16 blocks of 16
/// sectors spread from the first to the last whole 8 KiB, the 15 blocks halfway between never
/// written.
enum TestGuestPattern {
    struct Layout {
        let pattern: [UInt64]
        let holes: [UInt64]
        init(capacitySectors: UInt64) {
            let units = capacitySectors / 16
            let pattern = (0..<UInt64(16)).map { (units - 1) * $0 / 15 * 16 }
            self.pattern = pattern
            holes = (0..<15).map { (pattern[$0] / 16 + pattern[$0 + 1] / 16) / 2 * 16 }
        }
    }

    static func sector(seed: UInt64, _ sector: UInt64) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(512)
        for word in 0..<UInt64(64) {
            var x = seed ^ (sector &* 0x9E37_79B9_7F4A_7C15) ^ (word &* 0xC2B2_AE3D_27D4_EB4F)
            if x == 0 { x = 0x9E37_79B9_7F4A_7C15 }
            x ^= x >> 12
            x ^= x << 25
            x ^= x >> 27
            withUnsafeBytes(of: (x &* 0x2545_F491_4F6C_DD1D).littleEndian) { bytes += $0 }
        }
        return bytes
    }

    /// Reads 8 KiB blocks of `file` and checks the guest's pattern and holes.
    static func assertWritten(file: String, seed: UInt64, layout: Layout, report: String,
                              sourceFile: StaticString = #filePath, line: UInt = #line) throws {
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: file))
        defer { try? handle.close() }
        func block(_ sector: UInt64) throws -> [UInt8] {
            try handle.seek(toOffset: sector * 512)
            return [UInt8](try handle.read(upToCount: 8192) ?? Data())
        }
        var missing: [UInt64] = [], stray: [UInt64] = []
        for start in layout.pattern where try block(start) != (start ..< start + 16).flatMap({ sector(seed: seed, $0) }) {
            missing.append(start)
        }
        for start in layout.holes where try block(start) != [UInt8](repeating: 0, count: 8192) {
            stray.append(start)
        }
        XCTAssertEqual(missing, [], "the file holds the guest's pattern at every block it wrote (sectors \(layout.pattern))\n\(report)",
                       file: sourceFile, line: line)
        XCTAssertEqual(stray, [], "the blocks between them were never written\n\(report)", file: sourceFile, line: line)
    }
}
