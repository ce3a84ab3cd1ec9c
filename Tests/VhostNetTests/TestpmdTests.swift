import Foundation
import HostOS
import Logging
import Synchronization
import VhostNet
import VhostUser
import Virtio
import XCTest

/// A second driver nobody here wrote: DPDK's `dpdk-testpmd` (Debian's dpdk-dev, 22.11) whose
/// `net_virtio_user` port is a vhost-user-net frontend of a `VhostNetDevice`. As in
/// GuestNetTests, a `TestWorker` loops the device to a TAP device in a namespace of its own and a
/// reader thread delivers what the TAP side sends. testpmd runs without hugepages (`--no-huge`,
/// its memory a memfd it shares with the device) and busy-polls one core.
///
/// - txonly: testpmd's UDP frames reach the TAP and the namespace's UDP stack, whole and counted.
/// - rxonly: datagrams the namespace sends out of the TAP reach testpmd, including 8000-byte
///   frames that span several mergeable receive buffers.
final class TestpmdTests: XCTestCase {
    static let testpmdMAC = "02:00:00:00:02:01"
    static let tapAddress = "10.78.0.1"
    static let testpmdAddress = "10.78.0.2"

    func testTestpmdTxonlyFramesReachTheTap() throws {
        let loop = try TapLoop(testCase: self)
        defer { loop.stop() }
        let before = try loop.tapCounters()
        let run = try Testpmd.run(socket: loop.port.socket, arguments: [
            "--forward-mode=txonly", "--txpkts=64", "--eth-peer=0,\(loop.tapMAC)", "--tx-offloads=0xc",
            "--tx-ip=\(TestpmdTests.testpmdAddress),\(TestpmdTests.tapAddress)",
        ], seconds: 2)
        loop.quiesce()
        let after = try loop.tapCounters()
        let counters = loop.port.device.counters
        let report = "\(run.tail)\n--- device: \(counters)\n--- worker: \(loop.written) written, "
            + "\(loop.malformed) unlike txonly's frames"
        print("testpmd txonly: sent \(run.txPackets), device took \(counters.transmittedFrames), "
            + "TAP rx_packets +\(after.rxPackets - before.rxPackets), UDP NoPorts +\(after.udpNoPorts - before.udpNoPorts)")

        XCTAssertTrue(run.negotiated(loop), "testpmd started its port:\n\(report)")
        XCTAssertGreaterThan(run.txPackets, 1_000, report)
        // Frames still in the ring when testpmd stopped are not taken (at most a ring's worth).
        XCTAssertLessThanOrEqual(counters.transmittedFrames, run.txPackets, report)
        XCTAssertLessThanOrEqual(run.txPackets - counters.transmittedFrames, 256, report)
        XCTAssertEqual(counters.drops, counters.rxNotReady + counters.rxNoBuffers, "no transmit drops: \(report)")
        XCTAssertEqual(loop.malformed, 0, report)
        XCTAssertEqual(UInt64(loop.written), counters.transmittedFrames, report)
        XCTAssertEqual(after.rxPackets - before.rxPackets, counters.transmittedFrames, "the TAP counted every frame written: \(report)")
        // The namespace's kernel parsed them as UDP to a port nobody listens on (some may be
        // dropped on its backlog first, none more than were written).
        XCTAssertGreaterThan(after.udpNoPorts - before.udpNoPorts, 0, report)
        XCTAssertLessThanOrEqual(after.udpNoPorts - before.udpNoPorts, counters.transmittedFrames, report)
        // What testpmd's virtio_user negotiated (it offers no EVENT_IDX on split rings): VERSION_1,
        // indirect descriptors, mergeable buffers, and checksum offload (asked for by
        // --tx-offloads=0xc, though txonly's frames carry full checksums).
        let features = loop.negotiatedFeatures
        XCTAssertNotEqual(features & VirtioFeatures.version1, 0, "VERSION_1: \(String(features, radix: 16))")
        XCTAssertNotEqual(features & NetFeatures.csum, 0, "CSUM: \(String(features, radix: 16))")
        XCTAssertNotEqual(features & NetFeatures.mergeableRxBuffers, 0, "MRG_RXBUF: \(String(features, radix: 16))")
    }

    /// Two queue pairs (MQ): testpmd's virtio_user enables both (its control queue is its own)
    /// and txonly sends on both transmit queues; a worker per pair.
    func testTestpmdTxonlyOverTwoQueuePairs() throws {
        let loop = try TapLoop(testCase: self, pairs: 2)
        defer { loop.stop() }
        let run = try Testpmd.run(socket: loop.port.socket, arguments: [
            "--forward-mode=txonly", "--txpkts=64", "--eth-peer=0,\(loop.tapMAC)", "--rxq=2", "--txq=2",
            "--tx-ip=\(TestpmdTests.testpmdAddress),\(TestpmdTests.tapAddress)",
        ], queues: 2, seconds: 2)
        loop.quiesce()
        let perPair = loop.port.device.queuePairs.map(\.counters)
        let total = loop.port.device.counters
        let report = "\(run.tail)\n--- pairs: \(perPair.map(\.transmittedFrames))\n--- device: \(total)"
        print("testpmd txonly, 2 pairs: sent \(run.txPackets), pairs took \(perPair.map(\.transmittedFrames))")
        XCTAssertTrue(run.negotiated(loop), "testpmd started its port:\n\(report)")
        XCTAssertNotEqual(loop.negotiatedFeatures & NetFeatures.multiQueue, 0, "MQ: \(String(loop.negotiatedFeatures, radix: 16))")
        XCTAssertGreaterThan(perPair[0].transmittedFrames, 1_000, report)
        XCTAssertGreaterThan(perPair[1].transmittedFrames, 1_000, "the second pair carried frames too: \(report)")
        XCTAssertLessThanOrEqual(run.txPackets - total.transmittedFrames, 512, report)
        XCTAssertEqual(UInt64(loop.written), total.transmittedFrames, report)
        XCTAssertEqual(loop.malformed, 0, report)
    }

    func testDatagramsFromTheTapReachTestpmdRxonly() throws {
        let loop = try TapLoop(testCase: self)
        defer { loop.stop() }
        let sent = 20_000
        let run = try Testpmd.run(socket: loop.port.socket, arguments: ["--forward-mode=rxonly"], seconds: 6) {
            // The generator starts once the port is up: no datagram meets an unready ring.
            try loop.sendDatagrams(count: sent, payloadBytes: 18)
        }
        loop.quiesce()
        let counters = loop.port.device.counters
        let report = "\(run.tail)\n--- device: \(counters)"
        print("testpmd rxonly: \(sent) datagrams sent, device delivered \(counters.deliveredFrames) "
            + "(\(counters.rxNoBuffers) without buffers), testpmd received \(run.rxPackets)")
        XCTAssertTrue(run.negotiated(loop), "testpmd started its port:\n\(report)")
        XCTAssertEqual(run.rxPackets, counters.deliveredFrames, "testpmd counted what the device delivered:\n\(report)")
        // testpmd polls all the time, but shares two cores with the generator and this loop: on
        // a loaded machine frames meet a ring without buffers while it waits for a CPU.
        XCTAssertGreaterThanOrEqual(counters.deliveredFrames, UInt64(sent) / 4, report)
        XCTAssertEqual(counters.rxBuffersTooSmall + counters.rxOffloadNotNegotiated + counters.rxMalformedFrames, 0, report)
    }

    /// 8000-byte frames into 2048-byte mbufs (1932 bytes of buffer each): each takes five
    /// mergeable receive buffers, and testpmd (scatter on) chains them; its byte count says they
    /// arrived whole. testpmd asks for UDP and TCP receive checksum offload (--rx-offloads=0x200c, with scatter),
    /// so GUEST_CSUM is negotiated and the partial checksums of the TAP side pass as they are.
    func testJumboFramesSpanMergeableBuffersIntoTestpmd() throws {
        let loop = try TapLoop(testCase: self, mtu: 9000)
        defer { loop.stop() }
        let sent = 2_000, payload = 8000 - 14 - 20 - 8
        let run = try Testpmd.run(socket: loop.port.socket, arguments: [
            "--forward-mode=rxonly", "--max-pkt-len=9018", "--enable-scatter", "--mbuf-size=2176", "--rxd=1024", "--txd=1024",
            "--rx-offloads=0x200c",
        ], queueSize: 1024, seconds: 5) {
            try loop.sendDatagrams(count: sent, payloadBytes: payload, perMillisecond: 4)
        }
        loop.quiesce()
        let counters = loop.port.device.counters
        let report = "\(run.tail)\n--- device: \(counters)"
        print("testpmd rxonly 8000-byte frames: device delivered \(counters.deliveredFrames) (\(counters.deliveredBytes) bytes), "
            + "testpmd received \(run.rxPackets) (\(run.rxBytes) bytes)")
        XCTAssertTrue(run.negotiated(loop), "testpmd started its port:\n\(report)")
        // Frames that meet a ring without buffers are dropped (rxNoBuffers): on a loaded two-core
        // machine testpmd's polling core can lose its CPU for a while. Most must arrive.
        XCTAssertGreaterThanOrEqual(counters.deliveredFrames, UInt64(sent) / 4, report)
        XCTAssertEqual(counters.deliveredBytes, counters.deliveredFrames * 8000, report)
        XCTAssertEqual(run.rxPackets, counters.deliveredFrames, report)
        XCTAssertEqual(run.rxBytes, counters.deliveredBytes, "testpmd got every byte of every frame:\n\(report)")
        XCTAssertEqual(counters.rxBuffersTooSmall + counters.rxMalformedFrames, 0, report)
        // Checksum offload on receive: the TAP side's partial checksums went to testpmd as they were.
        XCTAssertNotEqual(loop.negotiatedFeatures & NetFeatures.guestCsum, 0, "GUEST_CSUM: \(String(loop.negotiatedFeatures, radix: 16))")
        XCTAssertEqual(counters.rxOffloadNotNegotiated, 0, report)
    }
}

/// A served `VhostNetDevice` looped to a TAP device in a namespace of its own (`10.78.0.1/24`):
/// frames the frontend transmits are written to the TAP by a `TestWorker`, frames the kernel
/// sends out of the TAP are delivered to the frontend by a reader thread.
final class TapLoop {
    let port: ServedPort
    let namespace: String
    let interface: String
    let tapMAC: String
    private let flags = LoopFlags()
    private let tap: TapQueue
    private let workers: [TestWorker]
    private let readerDone = DispatchSemaphore(value: 0)
    private let features: LockedFeatures

    init(testCase: XCTestCase, mtu: Int = 1500, pairs: Int = 1) throws {
        guard getuid() == 0 else { throw XCTSkip("needs root (TAP device, network namespace)") }
        guard Testpmd.path != nil else { throw XCTSkip("needs dpdk-testpmd (Debian package dpdk-dev)") }
        let tag = String(UInt32.random(in: 0..<UInt32.max), radix: 16)
        namespace = "bhtp-\(tag)"
        let features = LockedFeatures()
        self.features = features
        var logger = Logger(label: "vhost-net-testpmd") { _ in FeatureCapture(features: features) }
        logger.logLevel = .info
        port = try ServedPort(mac: [0x02, 0, 0, 0, 0x02, 0x01], mtu: mtu, pairs: pairs, logger: logger)
        tap = try TapQueue(interfaceName: "bhtp\(tag.prefix(8))")
        interface = tap.interfaceName
        try TapLoop.run(["ip", "netns", "add", namespace])
        let namespace = self.namespace
        do {
            try TapLoop.configure(namespace: namespace, interface: interface, mtu: mtu)
        } catch {
            _ = try? TapLoop.run(["ip", "netns", "delete", namespace])
            throw error
        }
        tapMAC = try TapLoop.output(["ip", "netns", "exec", namespace, "cat", "/sys/class/net/\(interface)/address"])
            .trimmingCharacters(in: .whitespacesAndNewlines)

        let tapFD = tap.rawValue
        let flags = self.flags
        // One worker per pair, all writing into the one TAP queue (each write is one frame).
        workers = port.device.queuePairs.map { pair in
            TestWorker(pair: pair) { frame in
                // txonly's frames: header, 64 bytes, IPv4, UDP. Other tests send nothing this way.
                if frame.count != VirtioNetHeader.size + 64 || frame[24] != 0x08 || frame[25] != 0x00 || frame[35] != 17 {
                    flags.malformed.add(1, ordering: .relaxed)
                }
                if write(tapFD, frame.baseAddress, frame.count) == frame.count { flags.written.add(1, ordering: .relaxed) }
                return []
            }
        }
        let pair = port.pair, readerDone = self.readerDone
        Thread {
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: 65_600, alignment: 64)
            defer { buffer.deallocate(); readerDone.signal() }
            var readable: [Bool] = []
            while !flags.stopReader.load(ordering: .relaxed) {
                guard EventCounter.waitReadable([tapFD], readable: &readable, timeoutMilliseconds: 20) > 0 else { continue }
                var delivered = false
                while true {
                    let n = read(tapFD, buffer, 65_600)
                    guard n > 0 else { break }
                    pair.deliver(UnsafeRawBufferPointer(start: buffer, count: n))
                    delivered = true
                }
                if delivered { pair.flush() }
            }
        }.start()
    }

    /// Frames the worker wrote into the TAP.
    var written: Int { flags.written.load(ordering: .relaxed) }
    /// Frames the worker took that are not testpmd txonly's 64-byte IPv4/UDP frames.
    var malformed: Int { flags.malformed.load(ordering: .relaxed) }

    /// The features the frontend negotiated for the last ring it started.
    var negotiatedFeatures: UInt64 { features.value }

    /// Lets the worker and the reader finish what is in flight.
    func quiesce() { Thread.sleep(forTimeInterval: 0.3) }

    func stop() {
        flags.stopReader.store(true, ordering: .relaxed)
        readerDone.wait()
        for worker in workers { worker.stop() }
        port.stop()
        _ = try? TapLoop.run(["ip", "netns", "delete", namespace])
    }

    /// The TAP's rx_packets (frames written into it) and the namespace's UDP NoPorts.
    func tapCounters() throws -> (rxPackets: UInt64, udpNoPorts: UInt64) {
        let rx = try TapLoop.output(["ip", "netns", "exec", namespace, "cat", "/sys/class/net/\(interface)/statistics/rx_packets"])
        let snmp = try TapLoop.output(["ip", "netns", "exec", namespace, "cat", "/proc/net/snmp"])
        let udp = snmp.split(separator: "\n").filter { $0.hasPrefix("Udp:") }.map { $0.split(separator: " ") }
        guard let rxPackets = UInt64(rx.trimmingCharacters(in: .whitespacesAndNewlines)), udp.count >= 2,
              let column = udp[0].firstIndex(of: "NoPorts"), column < udp[1].count,
              let noPorts = UInt64(udp[1][column]) else {
            throw TestpmdFailure("cannot read the TAP's counters: \(rx) / \(snmp)")
        }
        return (rxPackets, noPorts)
    }

    /// `count` UDP datagrams of `payloadBytes` from the namespace to testpmd's address (one
    /// frame each: the TAP's MTU holds them), `perMillisecond` at most: testpmd shares two cores
    /// with the generator and the loop here, and its ring's buffers must cover its pauses (256
    /// one-buffer frames at 16 per ms: 16 ms).
    func sendDatagrams(count: Int, payloadBytes: Int, perMillisecond: Int = 16) throws {
        let script = """
        import socket, sys, time
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        payload = bytes(i & 0xFF for i in range(\(payloadBytes)))
        sent = 0
        for i in range(\(count)):
            while True:
                try:
                    s.sendto(payload, ("\(TestpmdTests.testpmdAddress)", 9)); sent += 1; break
                except BlockingIOError:
                    time.sleep(0.001)
            if i % \(perMillisecond) == \(perMillisecond - 1): time.sleep(0.001)
        print(sent)
        """
        let out = try TapLoop.output(["ip", "netns", "exec", namespace, "python3", "-c", script])
        guard Int(out.trimmingCharacters(in: .whitespacesAndNewlines)) == count else {
            throw TestpmdFailure("the generator sent \(out) of \(count) datagrams")
        }
    }

    /// Moves the TAP into the namespace and gives it its address, MTU and testpmd's neighbour entry.
    static func configure(namespace: String, interface: String, mtu: Int) throws {
        try run(["ip", "link", "set", "dev", interface, "netns", namespace])
        for command in [["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"], ["ip", "link", "set", "lo", "up"],
                        ["ip", "link", "set", "dev", interface, "mtu", "\(mtu)"],
                        ["ip", "addr", "add", "\(TestpmdTests.tapAddress)/24", "dev", interface],
                        ["ip", "link", "set", "dev", interface, "up"],
                        ["ip", "neigh", "replace", TestpmdTests.testpmdAddress, "lladdr", TestpmdTests.testpmdMAC,
                         "dev", interface, "nud", "permanent"]] {
            try run(["ip", "netns", "exec", namespace] + command)
        }
    }

    static func run(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw TestpmdFailure("\(arguments.joined(separator: " ")) failed") }
    }

    static func output(_ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw TestpmdFailure("\(arguments.joined(separator: " ")) failed") }
        return String(decoding: data, as: UTF8.self)
    }
}

/// One testpmd run against a vhost-user-net socket and what it printed.
struct Testpmd {
    let output: String
    /// Forward statistics of port 0 at the end of the run.
    let txPackets: UInt64
    let rxPackets: UInt64
    /// RX-bytes of the last periodic port statistics.
    let rxBytes: UInt64

    static var path: String? {
        ["/usr/bin/dpdk-testpmd", "/usr/local/bin/dpdk-testpmd"].first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// The start (EAL, the port's negotiation) and the end (the statistics) of the output.
    var tail: String {
        let lines = output.split(separator: "\n", omittingEmptySubsequences: false)
        return (lines.prefix(40) + ["[...]"] + lines.suffix(30)).joined(separator: "\n")
    }

    /// Whether testpmd's port came up against the device (it forwarded) and a ring was started.
    func negotiated(_ loop: TapLoop) -> Bool {
        output.contains("Forward statistics for port 0") && loop.negotiatedFeatures != 0
    }

    /// Runs testpmd with one `net_virtio_user` port on `socket` for `seconds`, calling `during`
    /// once its port forwards, then stops it with SIGINT. Skips when testpmd cannot start at all
    /// (EAL or memory); a port that fails against the device is a failure, not a skip.
    static func run(socket: String, arguments: [String], queues: Int = 1, queueSize: Int = 256, seconds: Double, during: (() throws -> Void)? = nil) throws -> Testpmd {
        guard let path else { throw XCTSkip("needs dpdk-testpmd (Debian package dpdk-dev)") }
        let prefix = "bhtp\(UInt32.random(in: 0..<UInt32.max))"
        let log = NSTemporaryDirectory() + "\(prefix).log"
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: log) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = ["--no-huge", "-m", "512", "--no-pci", "--file-prefix=\(prefix)", "--log-level=pmd.net.virtio.*:info",
                             "--vdev", "net_virtio_user0,path=\(socket),queues=\(queues),queue_size=\(queueSize),mac=\(TestpmdTests.testpmdMAC)",
                             "--", "--total-num-mbufs=16384", "--stats-period=1", "--nb-cores=1"] + arguments
        // testpmd's --no-huge memory is a memfd it cannot seal; the device's backend maps only
        // memfds sealed against shrinking. The shim makes the memfd sealable and seals it.
        let shim = try sealShim(directory: NSTemporaryDirectory() + prefix)
        defer { try? FileManager.default.removeItem(atPath: NSTemporaryDirectory() + prefix) }
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
        // Up to 20 s for the port to start forwarding ("Press enter to exit" follows start).
        let deadline = Date().addingTimeInterval(20)
        while process.isRunning, Date() < deadline, !text().contains("Port statistics") { Thread.sleep(forTimeInterval: 0.1) }
        guard process.isRunning, text().contains("Port statistics") else {
            let output = text()
            if output.contains("Cannot init EAL") || output.contains("Creation of mbuf pool") {
                throw XCTSkip("dpdk-testpmd cannot start here:\n\(output.suffix(2000))")
            }
            throw TestpmdFailure("testpmd did not start forwarding:\n\(output.suffix(4000))")
        }
        var duringError: Error?
        let started = Date()
        do { try during?() } catch { duringError = error }
        let left = seconds - Date().timeIntervalSince(started)
        if left > 0 { Thread.sleep(forTimeInterval: left) }
        kill(process.processIdentifier, SIGINT)
        let exitDeadline = Date().addingTimeInterval(15)
        while process.isRunning, Date() < exitDeadline { Thread.sleep(forTimeInterval: 0.05) }
        let output = text()
        if let duringError { throw duringError }
        guard !process.isRunning else { throw TestpmdFailure("testpmd did not exit on SIGINT:\n\(output.suffix(4000))") }
        return Testpmd(output: output,
                       txPackets: forwardStatistic(output, "TX-packets:"),
                       rxPackets: forwardStatistic(output, "RX-packets:"),
                       rxBytes: lastValue(output, "RX-bytes:"))
    }

    /// Builds Tests/Tools/memfd-seal-preload.c into `directory`; skips without a C compiler.
    private static func sealShim(directory: String) throws -> String {
        let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Tools/memfd-seal-preload.c").path
        guard let cc = ["/usr/bin/cc", "/usr/bin/gcc", "/usr/bin/clang"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw XCTSkip("needs a C compiler for the memfd sealing shim (Tests/Tools/memfd-seal-preload.c)")
        }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let library = directory + "/memfd-seal-preload.so"
        try TapLoop.run([cc, "-shared", "-fPIC", "-O2", "-o", library, source, "-ldl"])
        return library
    }

    /// A value from the "Forward statistics for port 0" block at the end.
    private static func forwardStatistic(_ output: String, _ key: String) -> UInt64 {
        guard let block = output.range(of: "Forward statistics for port 0", options: .backwards) else { return 0 }
        return firstValue(String(output[block.upperBound...]), key)
    }

    private static func firstValue(_ text: String, _ key: String) -> UInt64 {
        guard let at = text.range(of: key) else { return 0 }
        let rest = text[at.upperBound...].drop { $0 == " " }
        return UInt64(rest.prefix { $0.isNumber }) ?? 0
    }

    private static func lastValue(_ text: String, _ key: String) -> UInt64 {
        guard let at = text.range(of: key, options: .backwards) else { return 0 }
        let rest = text[at.upperBound...].drop { $0 == " " }
        return UInt64(rest.prefix { $0.isNumber }) ?? 0
    }
}

/// What the loop's threads share.
final class LoopFlags: Sendable {
    let written = Atomic<Int>(0)
    let malformed = Atomic<Int>(0)
    let stopReader = Atomic<Bool>(false)
}

struct TestpmdFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The features of the last ring the device started, from its "virtio-net queue started" log.
final class LockedFeatures: Sendable {
    private let bits = Atomic<UInt64>(0)
    var value: UInt64 { bits.load(ordering: .relaxed) }
    func set(_ value: UInt64) { bits.store(value, ordering: .relaxed) }
}

struct FeatureCapture: LogHandler {
    let features: LockedFeatures
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String,
             file: String, function: String, line: UInt) {
        // The backend's refusals and drops go to the test's output.
        if level >= .info { print("vhost-net [\(level)] \(message) \(metadata ?? [:])") }
        guard let text = metadata?["queue.features"]?.description, text.hasPrefix("0x"),
              let value = UInt64(text.dropFirst(2), radix: 16) else { return }
        features.set(value)
    }
}
