import Foundation
import HostOS
import Logging
import Synchronization
import VhostNet
import VhostUser
import Virtio
import XCTest

/// A driver nobody here wrote: a Debian kernel under QEMU (TCG) whose own virtio_net driver uses
/// a `VhostNetDevice` through `-netdev vhost-user`. A `TestWorker` loops the device to a TAP
/// device in a namespace of its own (10.77.0.1), a reader thread delivers what the TAP side sends:
/// the guest pings, downloads and uploads 4 MiB over HTTP with checksum and TSO offloads on both
/// ways (Tests/Tools/guest-net-init.sh). The full guest-to-TAP path through the switch comes
/// with the integration of vhost-user ports into the dataplane.
final class GuestNetTests: XCTestCase {
    func testLinuxVirtioNetPingsAndMovesTCPThroughTheDevice() throws {
        guard getuid() == 0 else { throw XCTSkip("needs root (TAP device, network namespace)") }
        guard let qemu = which("qemu-system-x86_64") else { throw XCTSkip("needs qemu-system-x86_64 (qemu-system-x86)") }
        let boot = (try? FileManager.default.contentsOfDirectory(atPath: "/boot")) ?? []
        guard let version = boot.filter({ $0.hasPrefix("vmlinuz-") && $0.hasSuffix("-cloud-amd64") })
            .map({ String($0.dropFirst("vmlinuz-".count)) }).sorted().last,
              FileManager.default.fileExists(atPath: "/lib/modules/\(version)/modules.dep") else {
            throw XCTSkip("needs a Debian cloud kernel with its modules (linux-image-cloud-amd64)")
        }
        guard FileManager.default.isExecutableFile(atPath: "/bin/busybox") else { throw XCTSkip("needs busybox-static") }
        guard let python = which("python3") else { throw XCTSkip("needs python3 for the TAP side's HTTP server") }

        let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let tag = String(UInt32.random(in: 0..<UInt32.max), radix: 16)
        let namespace = "bhvn-\(tag)"
        var logger = Logger(label: "vhost-net-guest-test")
        logger.logLevel = .debug
        let port = try ServedPort(mac: [0x02, 0, 0, 0, 0x01, 0x01], pairs: 1, logger: logger)
        defer { port.stop() }
        let directory = port.directory

        // The TAP side: a TAP device in its own namespace, with the kernel's TCP stack behind it.
        let tap = try TapQueue(interfaceName: "bhvn\(tag.prefix(8))")
        let tapFD = tap.rawValue
        XCTAssertEqual(try run(["ip", "netns", "add", namespace]), 0)
        defer { _ = try? run(["ip", "netns", "delete", namespace]) }
        XCTAssertEqual(try run(["ip", "link", "set", "dev", tap.interfaceName, "netns", namespace]), 0)
        for command in [["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", "10.77.0.1/24", "dev", tap.interfaceName],
                        ["ip", "link", "set", "dev", tap.interfaceName, "up"]] {
            XCTAssertEqual(try run(["ip", "netns", "exec", namespace] + command), 0, "\(command)")
        }
        // The HTTP side (Tests/Tools/blob-server.py): GET /blob sends 4 MiB of pattern, POST
        // /upload answers the body's MD5.
        let server = repository.appendingPathComponent("Tests/Tools/blob-server.py").path
        let http = Process()
        http.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        http.arguments = ["netns", "exec", namespace, python, server, "10.77.0.1"]
        let httpOutput = Pipe()
        http.standardOutput = httpOutput
        try http.run()
        defer { http.terminate(); http.waitUntilExit() }

        // The loop: guest frames to the TAP, TAP frames to the guest.
        let worker = TestWorker(pair: port.pair) { frame in
            _ = write(tapFD, frame.baseAddress, frame.count)
            return []
        }
        defer { worker.stop() }
        let stopReader = Atomic<Bool>(false)
        let pair = port.pair
        let reader = Thread {
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: 65_600, alignment: 64)
            defer { buffer.deallocate() }
            var readable: [Bool] = []
            while !stopReader.load(ordering: .relaxed) {
                guard EventCounter.waitReadable([tapFD], readable: &readable, timeoutMilliseconds: 50) > 0 else { continue }
                var delivered = false
                while true {
                    let n = read(tapFD, buffer, 65_600)
                    guard n > 0 else { break }
                    pair.deliver(UnsafeRawBufferPointer(start: buffer, count: n))
                    delivered = true
                }
                if delivered { pair.flush() }
            }
        }
        reader.start()
        defer { stopReader.store(true, ordering: .relaxed); Thread.sleep(forTimeInterval: 0.1) }

        // The guest.
        let initramfs = directory + "/guest.cpio.gz"
        let build = Process()
        build.executableURL = URL(fileURLWithPath: "/bin/bash")
        build.arguments = [repository.appendingPathComponent("Tests/Tools/guest-initramfs.sh").path, version, initramfs]
        build.environment = ProcessInfo.processInfo.environment.merging([
            "GUEST_MODULES": "virtio_pci virtio_net",
            "GUEST_INIT": repository.appendingPathComponent("Tests/Tools/guest-net-init.sh").path,
        ]) { $1 }
        try build.run()
        build.waitUntilExit()
        XCTAssertEqual(build.terminationStatus, 0, "guest-initramfs.sh")
        let console = directory + "/console.txt"
        let vm = Process()
        vm.executableURL = URL(fileURLWithPath: qemu)
        vm.arguments = [
            "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "1", "-m", "256M",
            "-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa", "node,memdev=mem",
            "-chardev", "socket,id=c0,path=\(port.socket)",
            "-netdev", "vhost-user,id=n0,chardev=c0",
            // vectors=0: INTx instead of MSI-X. QEMU 7.2 (Debian 12) dies of a NULL dereference in
            // vhost_net_start -> msix_set_vector_notifiers when a vhost-user-net device uses MSI-X
            // under TCG (backtrace in the report of the vhost-net work).
            "-device", "virtio-net-pci,netdev=n0,mac=02:00:00:00:01:01,vectors=0",
            "-kernel", "/boot/vmlinuz-\(version)", "-initrd", initramfs,
            "-append", "console=ttyS0 panic=-1 rdinit=/init",
            "-display", "none", "-nodefaults", "-no-reboot", "-serial", "file:\(console)",
        ]
        let qemuErrors = directory + "/qemu.err"
        _ = FileManager.default.createFile(atPath: qemuErrors, contents: nil)
        vm.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: qemuErrors))
        vm.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: qemuErrors))
        let started = Date()
        try vm.run()
        defer { if vm.isRunning { kill(vm.processIdentifier, SIGKILL); vm.waitUntilExit() } }
        let deadline = Date().addingTimeInterval(240)
        func lines() -> [String] {
            // Bytes, not Characters: "\r\n" is one Character in Swift.
            [UInt8](FileManager.default.contents(atPath: console) ?? Data()).split(separator: UInt8(ascii: "\n"))
                .map { String(decoding: $0.filter { $0 != UInt8(ascii: "\r") }, as: UTF8.self) }
        }
        while vm.isRunning, Date() < deadline, !lines().contains(where: { $0.hasPrefix("BH-RESULT") }) {
            Thread.sleep(forTimeInterval: 0.2)
        }
        let output = lines()
        let report = output.suffix(40).joined(separator: "\n") + "\n--- QEMU stderr:\n"
            + ((try? String(contentsOfFile: qemuErrors, encoding: .utf8)) ?? "") + "\n--- counters: \(port.device.counters)"
        func marker(_ name: String) -> String? {
            output.last { $0.hasPrefix(name + " ") }.map { String($0.dropFirst(name.count + 1)) }
        }
        print("guest-net: result after \(String(format: "%.1f", Date().timeIntervalSince(started))) s: \(marker("BH-RESULT") ?? "none")")
        XCTAssertEqual(marker("BH-RESULT"), "ok", report)
        XCTAssertEqual(marker("BH-PING"), "ok", report)
        // The driver negotiated checksum and TSO offloads and mergeable buffers (bits 0, 1, 7, 8, 11, 12, 15).
        let features = Array(marker("BH-FEATURES") ?? "")
        for bit in [0, 1, 7, 8, 11, 12, 15, 32] {
            XCTAssertTrue(features.count > bit && features[bit] == "1", "feature bit \(bit) negotiated: \(String(features))")
        }
        // Host output: "blob MD5" then "upload N MD5".
        http.terminate()
        let hostLines = String(decoding: httpOutput.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).split(separator: "\n")
        let blob = hostLines.first { $0.hasPrefix("blob ") }.map { String($0.dropFirst(5)) }
        XCTAssertNotNil(blob)
        XCTAssertEqual(marker("BH-DOWN"), blob, "the guest received the blob intact:\n\(report)")
        let up = (marker("BH-UP") ?? "").split(separator: " ").map(String.init)
        XCTAssertEqual(up.count, 2, report)
        if up.count == 2 { XCTAssertEqual(up[0], up[1], "the host received the guest's upload intact") }
        let uploaded = hostLines.first { $0.hasPrefix("upload ") }.flatMap { Int($0.split(separator: " ")[1]) } ?? 0
        XCTAssertGreaterThan(uploaded, 4_000_000, "\(hostLines)")
        let counters = port.device.counters
        print("guest-net: \(counters)")
        // TSO both ways: the 4 MiB download came in fewer frames than 1448-byte segments, and the
        // guest's frames (its upload and its ACKs) average more than an MTU.
        XCTAssertGreaterThan(counters.deliveredBytes, 4 << 20)
        XCTAssertLessThan(counters.deliveredFrames, UInt64(4 << 20) / 1448, "the TAP side's TSO frames reached the guest whole")
        XCTAssertGreaterThan(counters.transmittedBytes, 4_000_000)
        XCTAssertGreaterThan(counters.transmittedBytes / max(1, counters.transmittedFrames), 1514, "the guest sent TSO frames")
        XCTAssertEqual(counters.txMalformedChains + counters.txOffloadNotNegotiated + counters.rxOffloadNotNegotiated, 0)
    }

    private func which(_ name: String) -> String? {
        let path: [String] = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":").map(String.init)
        for directory in path + ["/usr/sbin", "/sbin"] {
            let path = "\(directory)/\(name)"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }

    @discardableResult
    private func run(_ arguments: [String]) throws -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        try process.run()
        process.waitUntilExit()
        return process.terminationStatus
    }
}
