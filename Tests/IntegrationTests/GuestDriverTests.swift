import Foundation
import XCTest

/// `bulkhead block-server` driven by a driver nobody here wrote: a Debian kernel under QEMU (pure
/// software emulation) whose own virtio_blk driver does the I/O on a vhost-user-blk disk. The
/// guest runs Tests/Tools/guest-init.sh from an initramfs the test builds with
/// Tests/Tools/guest-initramfs.sh, reports on its serial console, and the test checks the volume
/// file on the host byte for byte.
final class GuestDriverTests: XCTestCase {

    // MARK: - Write, read back, find it in the volume file

    /// One virtqueue: two writers on two CPUs share queue 0.
    func testLinuxDriverWritesWhatTheVolumeFileHoldsWithOneQueue() throws {
        try writeAndVerify(queues: 1)
    }

    /// Two virtqueues: a writer on each CPU, so blk-mq submits on both queues.
    func testLinuxDriverWritesWhatTheVolumeFileHoldsWithTwoQueues() throws {
        try writeAndVerify(queues: 2)
    }

    /// The guest writes `jobs` regions of `regionKiB` in parallel (job j on CPU j; the first
    /// region at offset 0, the last ending at the disk's last byte) with O_DIRECT and fsync, reads
    /// them back with O_DIRECT and compares; the test then finds exactly those bytes in the volume
    /// file, and zeroes everywhere else.
    private func writeAndVerify(queues: Int) throws {
        let setup = try GuestSetup.require()
        let jobs = 2, regionKiB = 4096
        let volumeBytes = 64 << 20
        let state = try BlockState(tenants: ["t1": [("disk", UInt64(volumeBytes))]])
        let server = try BlockServerProcess(state: state, tenant: "t1", queues: queues)
        try server.waitFor("block server ready", timeout: 30)
        let initramfs = try setup.buildInitramfs(in: state.directory)

        let seed = GuestPattern.seed()
        let guest = try LinuxGuest(setup: setup, initramfs: initramfs, server: server, socket: state.socket("t1", "disk"), queues: queues,
                                   cpus: jobs, command: "bh.mode=verify bh.seed=\(seed) bh.kib=\(regionKiB) bh.jobs=\(jobs)",
                                   directory: state.directory)
        defer { guest.vm.kill() }

        let disk = try guest.waitFor("the guest to find its disk (BH-DISK)", timeout: 60) { $0.marker("BH-DISK") }
        let booted = guest.elapsed
        let result = try guest.waitFor("the guest's verdict (BH-RESULT)", timeout: 90) { $0.marker("BH-RESULT") }
        let finished = guest.elapsed
        print("guest-driver: \(queues) queue(s): disk after \(String(format: "%.1f", booted)) s, verdict after \(String(format: "%.1f", finished)) s: \(result)")
        XCTAssertEqual(result, "ok", "the guest wrote, read back and compared its regions:\n\(guest.report)")
        XCTAssertTrue(disk.contains("bytes=\(volumeBytes) "), "the guest sees the volume's capacity: \(disk)")
        XCTAssertTrue(disk.contains("queues=\(queues) "), "virtio_blk set up \(queues) queue(s): \(disk)")
        XCTAssertTrue(disk.contains("cache=write-back"), "the driver saw VIRTIO_BLK_F_FLUSH (so fsync sends FLUSH): \(disk)")
        if result == "ok" {
            let flushes = guest.lines.marker("BH-STAT").flatMap { $0.value(of: "flushes") } ?? 0
            XCTAssertGreaterThan(flushes, 0, "the guest's fsyncs reached the device as FLUSH requests:\n\(guest.report)")
        }
        // guest-init.sh's layout: region j at j * stride, the last one flush with the end.
        let regionBytes = regionKiB * 1024
        let stride = (volumeBytes - regionBytes) / (jobs - 1) / 4096 * 4096
        let offsets = (0..<jobs).map { $0 * stride }
        for job in 0..<jobs {
            XCTAssertTrue(guest.lines.contains { $0.marker("BH-JOB")?.hasPrefix("\(job) ok offset=\(offsets[job]) ") == true },
                          "job \(job) reported ok at offset \(offsets[job]):\n\(guest.report)")
        }

        // Completions arrived on every queue the guest has, and only there (one MSI-X vector per
        // virtqueue, counted in the guest's /proc/interrupts).
        let interrupts = guest.queueInterrupts
        for queue in 0..<queues {
            XCTAssertGreaterThan(interrupts[queue] ?? 0, 0, "the guest took completions on queue \(queue): \(interrupts)\n\(guest.report)")
        }
        XCTAssertEqual(interrupts.keys.sorted(), Array(0..<queues), "interrupt vectors per queue: \(interrupts)")
        let started = server.output.split(separator: "\n").filter { $0.contains("virtio-blk queue started") }
        for queue in 0..<queues {
            XCTAssertTrue(started.contains { $0.contains("queue.index=\(queue) ") }, "the server started queue \(queue):\n\(server.output)")
        }
        XCTAssertFalse(started.contains { $0.contains("queue.index=\(queues) ") }, "no queue beyond \(queues):\n\(server.output)")

        if guest.vm.waitForExit(timeout: 30) {
            XCTAssertEqual(guest.vm.process.terminationStatus, 0, "QEMU exited cleanly: \(guest.vm.errors)")
        } else {
            XCTFail("the guest did not power off:\n\(guest.report)")
            guest.vm.kill()
        }

        // The host's view: the volume file holds each region where the guest put it, and nothing
        // else was written.
        let volume = try Data(contentsOf: URL(fileURLWithPath: state.volumeFile("t1", "disk")))
        XCTAssertEqual(volume.count, volumeBytes, "the volume file keeps its size")
        for (job, offset) in offsets.enumerated() {
            let expected = GuestPattern.bytes(seed: seed, tag: "region\(job)", blocks: regionKiB / 4)
            if let problem = GuestPattern.mismatch(in: volume, at: offset, expected: expected) {
                XCTFail("region \(job) (written through queue \(job % queues)) is not in the volume file: \(problem)\n\(guest.report)")
            }
        }
        let gaps = zip(offsets.map { $0 + regionBytes }, offsets.dropFirst() + [volumeBytes])
        for (from, to) in gaps {
            if let stray = GuestPattern.firstNonZero(in: volume, from: from, to: to) {
                XCTFail("the volume file has data at offset \(stray), where the guest wrote nothing")
            }
        }

        try server.waitFor("vhost-user frontend disconnected", timeout: 10)
        XCTAssertEqual(GuestSetup.problems(in: server.output), [], "the server logged no warning or error")
        XCTAssertTrue(server.isRunning, "the server outlives its guest")
        XCTAssertEqual(server.stop(), 0, "SIGTERM stops the server:\n\(server.output)")
    }

    // MARK: - A guest killed mid-write

    /// The guest writes numbered chunks, each with O_DIRECT and fsync (a virtio FLUSH), and says
    /// so after each; QEMU is SIGKILLed in the middle of the stream. Every chunk the guest
    /// reported is in the volume file, even after the server was SIGKILLed as well.
    func testAGuestKilledMidWriteLosesNothingItFlushed() throws {
        let setup = try GuestSetup.require()
        let chunkKiB = 256
        let volumeBytes = 64 << 20
        let state = try BlockState(tenants: ["t1": [("disk", UInt64(volumeBytes))]])
        let server = try BlockServerProcess(state: state, tenant: "t1", queues: 1)
        try server.waitFor("block server ready", timeout: 30)
        let initramfs = try setup.buildInitramfs(in: state.directory)

        let seed = GuestPattern.seed()
        let guest = try LinuxGuest(setup: setup, initramfs: initramfs, server: server, socket: state.socket("t1", "disk"), queues: 1,
                                   cpus: 1, command: "bh.mode=chunks bh.seed=\(seed) bh.kib=\(chunkKiB)",
                                   directory: state.directory)
        defer { guest.vm.kill() }

        // Kill at a point that varies between runs (a chunk takes about 0.3 s here).
        let killAfter = Int.random(in: 3...12)
        _ = try guest.waitFor("chunk \(killAfter) flushed (BH-FLUSHED)", timeout: 90) { lines in
            Self.flushReports(lines).first { $0.chunk >= killAfter }
        }
        guest.vm.kill()
        XCTAssertEqual(guest.vm.process.terminationReason, .uncaughtSignal, "QEMU died of the SIGKILL")

        // What the guest had flushed when it died: complete console lines only.
        let lines = guest.lines
        XCTAssertFalse(lines.contains { $0.contains("BH-RESULT") }, "the guest was still writing when it died:\n\(guest.report)")
        let reports = Self.flushReports(lines)
        let last = try XCTUnwrap(reports.last?.chunk, "the guest reported flushed chunks:\n\(guest.report)")
        XCTAssertEqual(reports.map(\.chunk), Array(1...last), "chunks are reported in order, none skipped:\n\(guest.report)")
        // "Flushed" means a FLUSH request the server completed, one at least per chunk.
        for report in reports where report.flushes < report.chunk {
            XCTFail("after chunk \(report.chunk) the device had completed only \(report.flushes) FLUSH requests:\n\(guest.report)")
        }
        print("guest-driver: killed QEMU after \(String(format: "%.1f", guest.elapsed)) s, chunk \(last) the last flushed (threshold \(killAfter))")

        // Nothing waits on the dead guest: the server drops it and stays up. Then the server is
        // killed too: a completed FLUSH means the data is in the host's kernel, not in the server.
        try server.waitFor("vhost-user frontend disconnected", timeout: 10)
        XCTAssertTrue(server.isRunning, "the server outlives its guest:\n\(server.output)")
        XCTAssertEqual(GuestSetup.problems(in: server.output), [], "the server logged no warning or error")
        server.stop(signal: SIGKILL)

        let volume = try Data(contentsOf: URL(fileURLWithPath: state.volumeFile("t1", "disk")))
        let chunkBytes = chunkKiB * 1024
        var lost: [String] = []
        for chunk in 1...last {
            let expected = GuestPattern.bytes(seed: seed, tag: "chunk\(chunk)", blocks: chunkKiB / 4)
            if let problem = GuestPattern.mismatch(in: volume, at: chunk * chunkBytes, expected: expected) {
                lost.append("chunk \(chunk): \(problem)")
            }
        }
        XCTAssertEqual(lost, [], "\(lost.count) of the \(last) chunks the guest had flushed are not in the volume file:\n\(guest.report)")
        // Only the chunk in flight at the kill may have left something behind it.
        if let stray = GuestPattern.firstNonZero(in: volume, from: (last + 2) * chunkBytes, to: volumeBytes) {
            XCTFail("the volume file has data at offset \(stray), past the chunk in flight (\(last + 1))")
        }
        if let stray = GuestPattern.firstNonZero(in: volume, from: 0, to: chunkBytes) {
            XCTFail("the volume file has data at offset \(stray), before chunk 1")
        }
    }

    /// The guest's "BH-FLUSHED n flushes=F" lines.
    private static func flushReports(_ lines: [String]) -> [(chunk: Int, flushes: Int)] {
        lines.compactMap { line in
            guard let report = line.marker("BH-FLUSHED"), let chunk = report.split(separator: " ").first.flatMap({ Int($0) }),
                  let flushes = report.value(of: "flushes") else { return nil }
            return (chunk, flushes)
        }
    }
}

// MARK: - Helpers

/// What a guest-driver test needs from the host: root, QEMU, a Debian cloud kernel with its
/// modules, busybox-static.
struct GuestSetup {
    let qemu: String
    let kernelVersion: String
    let kernelImage: String

    /// Skips the test, saying what is missing, unless everything is installed.
    static func require() throws -> GuestSetup {
        try BlockHost.requireRoot()
        guard let qemu = Host.which("qemu-system-x86_64") else {
            throw XCTSkip("needs qemu-system-x86_64 on PATH (deploy/install-deps.sh installs qemu-system-x86)")
        }
        let boot = (try? FileManager.default.contentsOfDirectory(atPath: "/boot")) ?? []
        let versions = boot.filter { $0.hasPrefix("vmlinuz-") && $0.hasSuffix("-cloud-amd64") }
            .map { String($0.dropFirst("vmlinuz-".count)) }
            .filter { FileManager.default.fileExists(atPath: "/lib/modules/\($0)/modules.dep") }
            .sorted { $0.compare($1, options: .numeric) == .orderedAscending }
        guard let version = versions.last else {
            throw XCTSkip("needs a Debian cloud kernel: no /boot/vmlinuz-*-cloud-amd64 with its modules in /lib/modules/<version> (deploy/install-deps.sh installs linux-image-cloud-amd64)")
        }
        guard FileManager.default.isExecutableFile(atPath: "/bin/busybox"),
              (try? Host.run(["dpkg-query", "-W", "-f=${Status}", "busybox-static"]).output)?.contains("install ok installed") == true else {
            throw XCTSkip("needs a static busybox for the guest's initramfs: busybox-static is not installed (deploy/install-deps.sh installs it)")
        }
        return GuestSetup(qemu: qemu, kernelVersion: version, kernelImage: "/boot/vmlinuz-\(version)")
    }

    /// Builds the guest's initramfs into `directory` with Tests/Tools/guest-initramfs.sh (well
    /// under a second) and returns its path.
    func buildInitramfs(in directory: String) throws -> String {
        let script = TestTopology.repository.appendingPathComponent("Tests/Tools/guest-initramfs.sh").path
        let path = directory + "/guest-\(kernelVersion).cpio.gz"
        let built = try Host.run(["bash", script, kernelVersion, path], timeout: 60)
        guard built.status == 0, FileManager.default.fileExists(atPath: path) else {
            throw DaemonFailure(message: "\(script) \(kernelVersion) failed with status \(built.status):\n\(built.output)\(built.error)")
        }
        return path
    }

    /// Log lines at warning level or above (the level is the second field of a line).
    static func problems(in log: String) -> [String] {
        log.split(separator: "\n").map(String.init).filter { line in
            let fields = line.split(separator: " ", maxSplits: 2)
            return fields.count > 1 && ["warning", "error", "critical"].contains(String(fields[1]))
        }
    }
}

/// A Linux guest under QEMU in TCG, its disk a vhost-user-blk device on `socket`, its serial
/// console in a file.
final class LinuxGuest {
    let vm: QEMUProcess
    let consolePath: String
    private let server: BlockServerProcess
    private let started = Date()

    /// Boots the guest on `server`'s volume socket `socket`; `command` goes on the kernel command
    /// line for guest-init.sh.
    init(setup: GuestSetup, initramfs: String, server: BlockServerProcess, socket: String, queues: Int, cpus: Int,
         command: String, directory: String) throws {
        self.server = server
        consolePath = directory + "/console.txt"
        vm = try QEMUProcess(setup.qemu, arguments: [
            "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "\(cpus)", "-m", "256M",
            // vhost-user needs guest memory the server can map: a shared memfd.
            "-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa", "node,memdev=mem",
            "-chardev", "socket,id=c0,path=\(socket)",
            "-device", "vhost-user-blk-pci,chardev=c0,num-queues=\(queues)",
            "-kernel", setup.kernelImage, "-initrd", initramfs,
            // panic=-1 with -no-reboot: a guest that panics (or whose /init dies) ends QEMU at once.
            "-append", "console=ttyS0 panic=-1 rdinit=/init \(command)",
            "-display", "none", "-nodefaults", "-no-reboot", "-serial", "file:\(consolePath)",
        ], directory: directory)
    }

    /// Seconds since QEMU started.
    var elapsed: TimeInterval { Date().timeIntervalSince(started) }

    /// Complete console lines, without the serial line's "\r"; a last line with no newline yet is
    /// left out.
    var lines: [String] {
        // Bytes, not Characters: "\r\n" is a single Character in Swift.
        let bytes = [UInt8](FileManager.default.contents(atPath: consolePath) ?? Data())
        var lines = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        lines.removeLast()
        return lines.map { String(decoding: $0.filter { $0 != UInt8(ascii: "\r") }, as: UTF8.self) }
    }

    /// Interrupts per virtqueue from the guest's BH-IRQ lines (its /proc/interrupts rows for
    /// `virtioN-req.Q`), summed over CPUs.
    var queueInterrupts: [Int: Int] {
        var counts: [Int: Int] = [:]
        for line in lines {
            guard let row = line.marker("BH-IRQ") else { continue }
            let fields = row.split(separator: " ")
            guard let name = fields.last, let dot = name.lastIndex(of: "."), let queue = Int(name[name.index(after: dot)...]) else { continue }
            counts[queue, default: 0] += fields.dropFirst().prefix { Int($0) != nil }.reduce(0) { $0 + (Int($1) ?? 0) }
        }
        return counts
    }

    /// The console's last lines, QEMU's stderr and the server's last log lines, for failure
    /// messages.
    var report: String {
        "--- guest console (last 40 lines) ---\n" + lines.suffix(40).joined(separator: "\n")
            + "\n--- QEMU stderr ---\n" + vm.errors
            + "--- block server log (last 20 lines) ---\n" + server.output.split(separator: "\n").suffix(20).joined(separator: "\n")
    }

    /// Waits until `find` returns a value for the console lines; throws when QEMU exits first or
    /// time runs out, with the console's tail.
    func waitFor<T>(_ what: String, timeout: TimeInterval, _ find: ([String]) -> T?) throws -> T {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let running = vm.isRunning
            if let found = find(lines) { return found }
            if !running {
                throw DaemonFailure(message: "QEMU exited (status \(vm.process.terminationStatus)) before \(what):\n\(report)")
            }
            if Date() > deadline {
                throw DaemonFailure(message: "timed out after \(Int(timeout)) s waiting for \(what):\n\(report)")
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
    }
}

/// The guest's data pattern (guest-init.sh's `pattern`): 4 KiB block b of region TAG is 64
/// lines of 64 bytes, line l being "bulkhead SEED TAG block b line l" padded with spaces to 63
/// bytes and a newline. Every line names its place, so a misplaced or stale block shows.
enum GuestPattern {
    /// A run-specific seed: nothing left over from another run can match.
    static func seed() -> String { String(UInt64.random(in: 1...UInt64.max), radix: 16) }

    static func bytes(seed: String, tag: String, blocks: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(blocks * 4096)
        for block in 0..<blocks {
            for line in 0..<64 {
                let text = Array("bulkhead \(seed) \(tag) block \(block) line \(line)".utf8)
                precondition(text.count <= 63, "pattern line longer than 63 bytes: shorten the seed or tag")
                bytes += text
                bytes += repeatElement(UInt8(ascii: " "), count: 63 - text.count)
                bytes.append(UInt8(ascii: "\n"))
            }
        }
        return bytes
    }

    /// Where `volume` differs from `expected` at `offset`, described, or nil when it holds it.
    static func mismatch(in volume: Data, at offset: Int, expected: [UInt8]) -> String? {
        guard offset >= 0, offset + expected.count <= volume.count else { return "the volume file ends at \(volume.count)" }
        if equal(volume, at: offset, expected[...]) { return nil }
        let blocks = expected.count / 4096
        let bad = (0..<blocks).filter { !equal(volume, at: offset + $0 * 4096, expected[$0 * 4096 ..< ($0 + 1) * 4096]) }
        let first = bad.first ?? 0
        let start = volume.startIndex + offset + first * 4096
        let what = equal(volume, at: offset + first * 4096, zeroes[..<4096])
            ? "zeroes" : "'" + String(decoding: volume[start ..< start + 63], as: UTF8.self).trimmingCharacters(in: .whitespaces) + "'"
        return "\(bad.count) of \(blocks) 4 KiB blocks differ; the first, block \(first) at volume offset \(offset + first * 4096), holds \(what)"
    }

    /// The offset of the first non-zero byte of `volume` in `from..<to`, or nil.
    static func firstNonZero(in volume: Data, from: Int, to: Int) -> Int? {
        var offset = from
        let end = min(to, volume.count)
        while offset < end {
            let length = min(zeroes.count, end - offset)
            if !equal(volume, at: offset, zeroes[..<length]) {
                let start = volume.startIndex + offset
                return volume[start ..< start + length].firstIndex { $0 != 0 }.map { $0 - volume.startIndex }
            }
            offset += length
        }
        return nil
    }

    private static let zeroes = [UInt8](repeating: 0, count: 1 << 20)

    /// memcmp: a byte loop over tens of MiB is slow in a debug build.
    private static func equal(_ volume: Data, at offset: Int, _ expected: ArraySlice<UInt8>) -> Bool {
        guard offset >= 0, offset + expected.count <= volume.count else { return false }
        return volume.withUnsafeBytes { found in
            expected.withUnsafeBytes { wanted in
                memcmp(found.baseAddress! + offset, wanted.baseAddress!, wanted.count) == 0
            }
        }
    }
}

extension String {
    /// The text after `name ` when this console line carries that marker (a kernel message may
    /// have landed in front of it), or nil.
    func marker(_ name: String) -> String? {
        guard let range = range(of: name + " ") else { return nil }
        return String(self[range.upperBound...]).trimmingCharacters(in: .whitespaces)
    }

    /// The number after `name=` in a marker's text, or nil.
    func value(of name: String) -> Int? {
        split(separator: " ").lazy.compactMap { field -> Int? in
            field.hasPrefix(name + "=") ? Int(field.dropFirst(name.count + 1)) : nil
        }.first
    }
}

extension [String] {
    /// The first console line's text after marker `name`, or nil.
    func marker(_ name: String) -> String? { lazy.compactMap { $0.marker(name) }.first }
}
