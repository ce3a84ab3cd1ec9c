import Foundation
import XCTest

/// A Linux guest under QEMU (software emulation) whose own virtio_net driver sits on a
/// vhost-user-net port of the demo's blue tenant, served by the jailed switch process: it pings
/// and moves TCP (checksum and TSO offloads on) with blue's TAP endpoints, and nothing of it
/// reaches red, whose endpoints use the same addresses.
final class SwitchGuestTests: XCTestCase {
    private func ns(_ tenant: String, _ port: String) -> String { TestTopology.namespace(tenant, port) }
    private func ifname(_ tenant: String, _ port: String) -> String { TestTopology.interface(tenant, port) }

    func testALinuxGuestOnAVhostUserPortTalksToItsTenantOnly() throws {
        try Host.requireNetworkPrivileges()
        let guest = try GuestImage.require()

        // The demo gives each tenant a vhost-user port `vm` (10.0.0.3).
        let daemon = try RunningDaemon(configuration: try TestTopology.demo())
        try daemon.waitForForwarding()
        let socket = daemon.stateDirectory + "/tenants/blue/net/vm.sock"
        let owner = try BlockHost.owner(socket)
        XCTAssertEqual(owner.uid, 0, "the socket is root's")
        XCTAssertEqual(owner.mode, 0o660, "root and the tenant's group may connect, nobody else")
        let group = (try FileManager.default.attributesOfItem(atPath: socket)[.groupOwnerAccountID] as? NSNumber)?.uint32Value
        XCTAssertEqual(group, try BlockHost.jailUid(stateDirectory: daemon.stateDirectory, tenant: "blue"), "the tenant's group")

        // blue-a serves HTTP on 10.0.0.1; red-a has the same address and must see nothing.
        let server = try HTTPBlobServer(namespace: ns("blue", "a"), address: "10.0.0.1")
        defer { server.stop() }
        let intoRed = try ["a", "b"].map {
            try Capture(namespace: ns("red", $0), interface: ifname("red", $0), filter: "ether src 02:00:00:00:01:03")
        }

        let run = try guest.boot(socket: socket, mac: "02:00:00:00:01:03", commandLine: "bh.ip=10.0.0.3/24 bh.peer=10.0.0.1")
        XCTAssertEqual(run.marker("BH-RESULT"), "ok", run.report + daemon.output)
        XCTAssertEqual(run.marker("BH-PING"), "ok", run.report)
        // Checksum, TSO and mergeable-buffer features negotiated by the guest's own driver.
        let features = Array(run.marker("BH-FEATURES") ?? "")
        for bit in [0, 1, 7, 8, 11, 12, 15, 32] {
            XCTAssertTrue(features.count > bit && features[bit] == "1", "feature bit \(bit) negotiated: \(String(features))")
        }
        let host = server.stop()
        XCTAssertEqual(run.marker("BH-DOWN"), host.blob, "the guest received blue-a's blob intact:\n\(run.report)")
        let up = (run.marker("BH-UP") ?? "").split(separator: " ").map(String.init)
        XCTAssertTrue(up.count == 2 && up[0] == up[1], "blue-a received the guest's upload intact: \(up)\n\(run.report)")
        XCTAssertGreaterThan(host.uploaded, 4_000_000)

        XCTAssertEqual(try intoRed.map { try $0.stop() }, [0, 0], "frames of blue's guest reached red")
        let vm = try daemon.portStatus(tenant: "blue", port: "vm")
        let rx = vm["rx"] as? [String: Any], tx = vm["tx"] as? [String: Any]
        XCTAssertGreaterThan((rx?["bytes"] as? NSNumber)?.intValue ?? 0, 4_000_000, "the switch counted the guest's upload: \(vm)")
        XCTAssertGreaterThan((tx?["bytes"] as? NSNumber)?.intValue ?? 0, 4 << 20, "the switch counted the download: \(vm)")
        XCTAssertEqual(daemon.stop(), 0, daemon.output)
    }
}

/// Tests/Tools/blob-server.py in a namespace: GET /blob sends 4 MiB of pattern, POST /upload
/// answers the MD5 of what it received.
final class HTTPBlobServer {
    private let process = Process()
    private let output = Pipe()
    private var result: (blob: String?, uploaded: Int)?

    init(namespace: String, address: String) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        let script = TestTopology.repository.appendingPathComponent("Tests/Tools/blob-server.py").path
        process.arguments = ["ip", "netns", "exec", namespace, "python3", script, address]
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        Thread.sleep(forTimeInterval: 1)
    }

    /// Stops the server; returns the blob's MD5 and the bytes of the last upload.
    @discardableResult
    func stop() -> (blob: String?, uploaded: Int) {
        if let result { return result }
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        let lines = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).split(separator: "\n")
        let blob = lines.first { $0.hasPrefix("blob ") }.map { String($0.dropFirst(5)) }
        let uploaded = lines.last { $0.hasPrefix("upload ") }.flatMap { Int($0.split(separator: " ")[1]) } ?? 0
        result = (blob, uploaded)
        return (blob, uploaded)
    }
}

/// The Debian cloud kernel and a busybox initramfs running Tests/Tools/guest-net-init.sh, booted
/// by QEMU in software emulation with its NIC on a vhost-user socket.
struct GuestImage {
    let qemu: String
    let kernel: String
    let initramfs: String

    /// Builds the initramfs, or skips the test saying what is missing.
    static func require() throws -> GuestImage {
        guard let qemu = Host.which("qemu-system-x86_64") else { throw XCTSkip("needs qemu-system-x86_64 (qemu-system-x86)") }
        let boot = (try? FileManager.default.contentsOfDirectory(atPath: "/boot")) ?? []
        guard let version = boot.filter({ $0.hasPrefix("vmlinuz-") && $0.hasSuffix("-cloud-amd64") })
            .map({ String($0.dropFirst("vmlinuz-".count)) }).sorted().last,
              FileManager.default.fileExists(atPath: "/lib/modules/\(version)/modules.dep") else {
            throw XCTSkip("needs a Debian cloud kernel with its modules (linux-image-cloud-amd64)")
        }
        guard FileManager.default.isExecutableFile(atPath: "/bin/busybox") else { throw XCTSkip("needs busybox-static") }
        guard Host.which("python3") != nil else { throw XCTSkip("needs python3 for the endpoint's HTTP server") }
        let initramfs = NSTemporaryDirectory() + "bulkhead-guest-net-\(getpid()).cpio.gz"
        if !FileManager.default.fileExists(atPath: initramfs) {
            let tools = TestTopology.repository.appendingPathComponent("Tests/Tools")
            let build = Process()
            build.executableURL = URL(fileURLWithPath: "/bin/bash")
            build.arguments = [tools.appendingPathComponent("guest-initramfs.sh").path, version, initramfs]
            build.environment = ProcessInfo.processInfo.environment.merging([
                "GUEST_MODULES": "virtio_pci virtio_net",
                "GUEST_INIT": tools.appendingPathComponent("guest-net-init.sh").path,
            ]) { $1 }
            try build.run()
            build.waitUntilExit()
            guard build.terminationStatus == 0 else { throw DaemonFailure(message: "guest-initramfs.sh failed") }
        }
        return GuestImage(qemu: qemu, kernel: "/boot/vmlinuz-\(version)", initramfs: initramfs)
    }

    struct Run {
        let lines: [String]
        let report: String
        func marker(_ name: String) -> String? {
            lines.last { $0.hasPrefix(name + " ") }.map { String($0.dropFirst(name.count + 1)) }
        }
    }

    /// Boots the guest with its NIC on `socket` and waits (at most 240 s) for its result line.
    func boot(socket: String, mac: String, commandLine: String) throws -> Run {
        let console = NSTemporaryDirectory() + "bulkhead-guest-console-\(UUID().uuidString).txt"
        let errors = console + ".qemu"
        defer { try? FileManager.default.removeItem(atPath: console); try? FileManager.default.removeItem(atPath: errors) }
        _ = FileManager.default.createFile(atPath: errors, contents: nil)
        let vm = Process()
        vm.executableURL = URL(fileURLWithPath: qemu)
        vm.arguments = [
            "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "1", "-m", "256M",
            "-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa", "node,memdev=mem",
            "-chardev", "socket,id=c0,path=\(socket)",
            "-netdev", "vhost-user,id=n0,chardev=c0",
            // vectors=0 (INTx): Debian 12's QEMU 7.2 dereferences NULL in vhost_net_start when a
            // vhost-user-net device uses MSI-X under TCG.
            "-device", "virtio-net-pci,netdev=n0,mac=\(mac),vectors=0",
            "-kernel", kernel, "-initrd", initramfs,
            "-append", "console=ttyS0 panic=-1 rdinit=/init \(commandLine)",
            "-display", "none", "-nodefaults", "-no-reboot", "-serial", "file:\(console)",
        ]
        vm.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errors))
        vm.standardOutput = vm.standardError
        try vm.run()
        defer { if vm.isRunning { kill(vm.processIdentifier, SIGKILL); vm.waitUntilExit() } }
        func lines() -> [String] {
            [UInt8](FileManager.default.contents(atPath: console) ?? Data()).split(separator: UInt8(ascii: "\n"))
                .map { String(decoding: $0.filter { $0 != UInt8(ascii: "\r") }, as: UTF8.self) }
        }
        let deadline = Date().addingTimeInterval(240)
        while vm.isRunning, Date() < deadline, !lines().contains(where: { $0.hasPrefix("BH-RESULT") }) {
            Thread.sleep(forTimeInterval: 0.2)
        }
        let output = lines()
        let report = output.suffix(40).joined(separator: "\n") + "\n--- QEMU: "
            + ((try? String(contentsOfFile: errors, encoding: .utf8)) ?? "")
        return Run(lines: output, report: report)
    }
}
