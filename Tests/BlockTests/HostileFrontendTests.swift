@testable import Block
import BlockClient
import Config
import Foundation
import HostOS
import Logging
import Synchronization
import VhostUser
import Virtio
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Frontends that speak vhost-user correctly and then attack through what they control: their
/// virtqueue contents, their kick and call descriptors, their memory and their timing. Each test
/// checks that the server keeps serving (this queue where that is meaningful, the next client and
/// other volumes always) and that the attack costs the host nothing it should not.
final class HostileFrontendTests: XCTestCase {
    private var state = ""
    private var backends: [VhostUserBackend] = []
    private var devices: [BlockDevice] = []
    private let log = CapturedLog()

    override func setUp() {
        state = NSTemporaryDirectory() + "bulkhead-hostile-\(UUID().uuidString)"
    }

    override func tearDown() {
        for backend in backends { backend.stop() }
        backends.removeAll()
        devices.removeAll()
        try? FileManager.default.removeItem(atPath: state)
    }

    /// Serves `volume` of tenant `blue`; returns the socket path.
    private func serve(_ volume: Volume, queues: Int = 1) throws -> String {
        let store = try VolumeStore(stateDirectory: state, tenant: "blue")
        let file = try store.open(volume)
        let logger = log.logger
        let device = try BlockDevice(volume: file, queues: queues, logger: logger)
        try StateFiles.makeDirectories(state + "/tenants/blue/vhost")
        let path = VolumeStore.socketPath(stateDirectory: state, tenant: "blue", volume: volume.id)
        let backend = VhostUserBackend(path: path, device: device, logger: logger)
        try backend.start()
        backends.append(backend)
        devices.append(device)
        return path
    }

    private func pattern(_ seed: Int, _ length: Int) -> [UInt8] {
        (0..<length).map { UInt8(truncatingIfNeeded: ($0 &* 31) ^ (seed &* 7919) ^ ($0 >> 9)) }
    }

    /// Adds a request of `type` with data `segments` (guest address, length) to queue 0, device-
    /// writable for reads and GET_ID, and waits for its status.
    private func request(_ client: BlockClient, type: UInt32 = BlockClient.typeRead, sector: UInt64,
                         segments: [(UInt64, UInt32)]) throws -> UInt8 {
        let header = client.writeHeader(queue: 0, slot: 0, type: type, sector: sector)
        let deviceWrites = type == BlockClient.typeRead || type == BlockClient.typeGetID
        var buffers = [VirtqueueDriver.Buffer(address: header, length: 16, writable: false)]
        buffers += segments.map { VirtqueueDriver.Buffer(address: $0.0, length: $0.1, writable: deviceWrites) }
        buffers.append(.init(address: header + 16, length: 1, writable: true))
        _ = try client.add(queue: 0, buffers)
        client.kick(queue: 0)
        _ = try client.waitUsed(queue: 0)
        return client.status(queue: 0, slot: 0)
    }

    // MARK: - 1. Request sizes

    /// Descriptors may alias one buffer: 126 segments of 48 MiB each add up to 6 GiB, which once
    /// trapped the server converting the length to 32 bits. Each size limit (size_max per
    /// segment, seg_max segments, our own total) fails the request with IOERR, and the queue
    /// goes on.
    func testRequestsOverTheSizeLimitsFailAndTheQueueGoesOn() throws {
        // Sparse: 8 GiB of address space, no blocks.
        let socket = try serve(Volume(id: "big", sizeBytes: 8 << 30))
        let client = try BlockClient(socket: socket, queueSize: 256, memoryBytes: 64 << 20)
        let area = try client.data(queue: 0, offset: 0, length: 48 << 20)
        XCTAssertEqual(client.sizeMax, 256 << 10, "the device advertises size_max")

        // 6 GiB through 126 aliased 48 MiB segments.
        let aliased = Array(repeating: (area.address, UInt32(48 << 20)), count: 126)
        XCTAssertEqual(try request(client, sector: 0, segments: aliased), 1, "a 6 GiB read fails with IOERR")
        XCTAssertEqual(try request(client, type: BlockClient.typeWrite, sector: 0, segments: aliased), 1, "so does a 6 GiB write")
        XCTAssertEqual(try request(client, type: BlockClient.typeGetID, sector: 0, segments: aliased), 0,
                       "GET_ID into 6 GiB of buffers writes its 20 bytes")
        XCTAssertEqual(try request(client, sector: 0, segments: [(area.address, UInt32((48 << 20) - 1))]), 1,
                       "a length that is not whole sectors")
        // One segment over size_max.
        XCTAssertEqual(try request(client, sector: 0, segments: [(area.address, UInt32(1 << 20))]), 1, "a segment over size_max")
        // More segments than seg_max, each small.
        let many = (0..<127).map { (area.address + UInt64($0) * 4096, UInt32(4096)) }
        XCTAssertEqual(try request(client, sector: 0, segments: many), 1, "127 segments, over seg_max")
        // An indirect table of 32768 descriptors (the most a table may have), all aliasing one
        // 4 KiB buffer: 128 MiB in all.
        let table = try client.data(queue: 0, offset: 48 << 20, length: 32768 * 16)
        let header = client.writeHeader(queue: 0, slot: 1, type: BlockClient.typeRead, sector: 0)
        func entry(_ i: Int, _ address: UInt64, _ length: UInt32, _ flags: UInt16) {
            let d = table.address + UInt64(16 * i)
            client.memory.store(address, at: d)
            client.memory.store(length, at: d + 8)
            client.memory.store(flags, at: d + 12)
            client.memory.store(UInt16(i + 1), at: d + 14)
        }
        entry(0, header, 16, 1)
        for i in 1..<32767 { entry(i, area.address, 4096, 1 | 2) }
        entry(32767, header + 16, 1, 2)
        _ = try client.add(queue: 0, [.init(address: table.address, length: 32768 * 16, writable: false, indirect: true)])
        client.kick(queue: 0)
        _ = try client.waitUsed(queue: 0)
        // The walk stops at 256 descriptors, so the chain is refused before its status byte is
        // found: a used entry of length 0, the status byte untouched.
        XCTAssertNotEqual(client.status(queue: 0, slot: 1), 0, "an indirect table at its limit, 128 MiB aliased, is refused")
        XCTAssertTrue(log.contains("descriptor chain is longer than 256 descriptors"), log.text)

        // The queue still serves a well-formed request: the data written reads back.
        let data = pattern(1, 4096)
        XCTAssertEqual(try client.write(sector: 8, data: data), 0)
        XCTAssertEqual(try client.read(sector: 8, length: 4096).data, data, "the queue goes on after the refusals")
        // A 4 MiB read, split at size_max as a driver splits it, is served.
        XCTAssertEqual(try client.read(sector: 0, length: 4 << 20).status, 0)
    }

    // MARK: - 2. QoS for large requests

    /// Four 4 MiB reads against 4 MiB/s with a 1 MiB burst: each request is charged in full, the
    /// bucket runs into debt and later requests wait for it, so the four take about 3 s. (When a
    /// request needed only one byte of balance to start, they took milliseconds.)
    func testByteRateHoldsForRequestsLargerThanTheBurst() throws {
        let elapsed = try secondsFor(reads: 4, ofVolumeWith: VolumeQoS(bytesPerSecond: 4 << 20, burstBytes: 1 << 20))
        // 16 MiB, 1 MiB of it from the burst: the fourth request starts after 2.75 s of refill.
        XCTAssertGreaterThan(elapsed, 2.6, "16 MiB at 4 MiB/s with a 1 MiB burst took \(elapsed) s")
        XCTAssertLessThan(elapsed, 8, "the requests were served, not starved (\(elapsed) s)")
    }

    /// An IOPS-only limit bounds bandwidth too: a request counts one I/O per started size_max
    /// (256 KiB), so 4 MiB reads cost 16 I/Os each. Three of them at 16 IOPS with a burst of one
    /// take about 2 s (counted as one I/O each, they took under 0.2 s).
    func testIOPSOnlyLimitBoundsBandwidthThroughSizeMax() throws {
        let elapsed = try secondsFor(reads: 3, ofVolumeWith: VolumeQoS(iops: 16, burstIOs: 1))
        XCTAssertGreaterThan(elapsed, 1.8, "3 x 16 I/Os at 16 IOPS took \(elapsed) s")
    }

    /// Seconds that `reads` 4 MiB reads, one after another, take on a new volume with `qos`.
    private func secondsFor(reads: Int, ofVolumeWith qos: VolumeQoS) throws -> TimeInterval {
        let socket = try serve(Volume(id: "limited", sizeBytes: 64 << 20, qos: qos))
        let client = try BlockClient(socket: socket, memoryBytes: 16 << 20)
        let start = Date()
        for i in 0..<reads {
            XCTAssertEqual(try client.read(sector: UInt64(i) * 8192, length: 4 << 20).status, 0)
        }
        return Date().timeIntervalSince(start)
    }

    // MARK: - 3. Kicks that cost the attacker nothing

    /// A kick descriptor that is always readable (an eventfd in semaphore mode with a counter of
    /// 2^64 - 2: each read takes one) must not keep a worker spinning. Over 3 idle seconds this
    /// process (the server's threads are in it) uses well under a core; I/O still works.
    func testAlwaysReadableKickCostsNoCPUAndIOStillWorks() throws {
        let socket = try serve(Volume(id: "data", sizeBytes: 16 << 20))
        let client = try BlockClient(socket: socket)
        let storm = try EventFD(nonBlocking: true, semaphore: true)
        var huge: UInt64 = .max - 1
        XCTAssertEqual(write(storm.rawValue, &huge, 8), 8)
        try client.frontend.setVringKick(0, fd: storm.rawValue)

        let before = processCPUSeconds()
        Thread.sleep(forTimeInterval: 3)
        let used = processCPUSeconds() - before
        XCTAssertLessThan(used, 0.5, "an always-readable kick fd cost \(used) s of CPU in 3 s")

        // The client kicks its own (now unused) eventfd: the worker still finds the request when
        // it next reads the storming kick descriptor.
        let data = pattern(3, 4096)
        XCTAssertEqual(try client.write(sector: 0, data: data), 0)
        XCTAssertEqual(try client.read(sector: 0, length: 4096).data, data)
    }

    /// A frontend that restarts its queue in a loop (300 SET_VRING_KICKs, each stopping a worker
    /// thread and starting another) is slowed to the backend's rate of queue starts (200 a second
    /// after a burst of 100) instead of turning each 12-byte message into a thread's set-up.
    func testQueueRestartsInALoopArePaced() throws {
        let socket = try serve(Volume(id: "data", sizeBytes: 16 << 20))
        let client = try BlockClient(socket: socket)
        let kick = try XCTUnwrap(client.kickDescriptor(queue: 0))
        let start = Date()
        for _ in 0..<300 { try client.frontend.setVringKick(0, fd: kick) }
        let elapsed = Date().timeIntervalSince(start)
        let floor = Double(300 - Int(VhostUserBackend.queueStartBurst) - 2) / Double(VhostUserBackend.queueStartsPerSecond)
        XCTAssertGreaterThan(elapsed, floor * 0.9, "300 queue restarts took \(elapsed) s")
        let data = pattern(7, 4096)
        XCTAssertEqual(try client.write(sector: 0, data: data), 0)
        XCTAssertEqual(try client.read(sector: 0, length: 4096).data, data, "the queue serves after the restarts")
    }

    /// A driver that moves avail.idx by more than the queue size breaks its queue (it needs a
    /// reset); kicks that follow cost nothing, and the device's other queue keeps serving.
    func testAvailableIndexJumpStopsOnlyThatQueue() throws {
        let socket = try serve(Volume(id: "data", sizeBytes: 16 << 20), queues: 2)
        let client = try BlockClient(socket: socket, queueCount: 2)
        let layout = VirtqueueDriver.layout(size: client.queueSize, at: BlockClient.guestBase)
        client.memory.store(UInt16(5000), at: layout.available + 2)
        for _ in 0..<20_000 {
            var one: UInt64 = 1
            _ = write(try kickFD(of: client, queue: 0), &one, 8)
        }
        let data = pattern(4, 4096)
        XCTAssertEqual(try client.write(sector: 16, data: data, queue: 1), 0)
        XCTAssertEqual(try client.read(sector: 16, length: 4096, queue: 1).data, data, "queue 1 is unaffected")
        XCTAssertTrue(log.contains("available index jumped"), "the broken queue is reported:\n\(log.text)")
    }

    /// A request answered at once (GET_ID) followed by a head out of range in the same kick:
    /// the queue breaks, and the answer already given still reaches the driver.
    func testAnswersBeforeABrokenHeadArePublished() throws {
        let socket = try serve(Volume(id: "data", sizeBytes: 16 << 20, serial: "vol-serial"))
        let client = try BlockClient(socket: socket)
        let header = client.writeHeader(queue: 0, slot: 0, type: BlockClient.typeGetID, sector: 0)
        let area = try client.data(queue: 0, offset: 0, length: 20)
        _ = try client.add(queue: 0, [.init(address: header, length: 16, writable: false),
                                      .init(address: area.address, length: 20, writable: true),
                                      .init(address: header + 16, length: 1, writable: true)])
        let layout = VirtqueueDriver.layout(size: client.queueSize, at: BlockClient.guestBase)
        client.memory.store(UInt16.max, at: layout.available + 4 + 2)  // avail[1]: no such head
        client.memory.store(UInt16(2), at: layout.available + 2)
        var one: UInt64 = 1
        _ = write(try kickFD(of: client, queue: 0), &one, 8)
        let used = try client.waitUsed(queue: 0, timeoutMilliseconds: 3000)
        XCTAssertEqual(used.length, 21, "the serial's 20 bytes and the status")
        XCTAssertEqual(client.status(queue: 0, slot: 0), 0)
    }

    // MARK: - 5. Memory the server can trust

    /// A memory-table change while 64 reads are in flight: the server stops the queue, waits for
    /// the I/O (which writes into the old mapping), then swaps the table. Every read completes
    /// with the right data.
    func testMemoryTableChangeWithIOInFlight() throws {
        let socket = try serve(Volume(id: "data", sizeBytes: 16 << 20))
        let client = try BlockClient(socket: socket, queueSize: 256)
        let reads = try ReadsInFlight(client, count: 64, pattern: pattern)
        try client.resendMemoryTable()
        try reads.expectAll()
    }

    /// A queue worker that fails with requests in flight finishes them before it stops: each
    /// gets its data, status and used entry (the guest's memory stays mapped until then), and the
    /// next frontend is served.
    func testAWorkerThatFailsAnswersWhatItHadInFlight() throws {
        let socket = try serve(Volume(id: "data", sizeBytes: 16 << 20))
        do {
            let client = try BlockClient(socket: socket, queueSize: 256)
            let device = try XCTUnwrap(devices.first)
            try ReadsInFlight(client, count: 32, pattern: pattern) {
                device.failAfterSubmitting.store(true, ordering: .relaxed)
            }.expectAll()
            XCTAssertTrue(log.contains("virtio-blk queue worker failed"), log.text)
        }
        let next = try BlockClient(socket: socket)
        XCTAssertEqual(try next.read(sector: 8, length: 4096).data, pattern(1, 4096), "the next frontend is served")
    }

    /// A hugetlb memfd can lose pages to a hole punch even when sealed against shrinking, so the
    /// server maps only shmem: such a table ends the connection, saying why.
    func testHugetlbGuestMemoryIsRefused() throws {
        let socket = try serve(Volume(id: "data", sizeBytes: 16 << 20))
        let memory: FileDescriptor
        do {
            memory = try FileDescriptor.memfd(name: "hostile-hugetlb", size: 2 << 20, hugetlb: true)
        } catch {
            throw XCTSkip("needs hugetlbfs memfds: \(error)")
        }
        let fd = memory.rawValue
        let frontend = try VhostUserFrontend(connectingTo: socket)
        try frontend.setOwner()
        try frontend.setFeatures(try frontend.getFeatures() & (VirtioFeatures.version1 | VhostUserFeature.protocolFeatures))
        try frontend.setProtocolFeatures(VhostUserProtocolFeature.replyAck.mask)
        XCTAssertThrowsError(try frontend.setMemTable(regions: [(0x4000_0000, 2 << 20, 0x7000_0000, fd, 0)]))
        try waitFor("the refusal is logged") { self.log.contains("not in shmem") }
        // The next frontend is served.
        let client = try BlockClient(socket: socket)
        XCTAssertEqual(try client.read(sector: 0, length: 4096).status, 0)
    }

    // MARK: - 7. Guest-triggered logging

    /// 2048 malformed requests as fast as the queue takes them: at most the burst plus the rate
    /// of warnings reach the log, the rest are counted and the count is logged.
    func testGuestTriggeredWarningsAreRateLimited() throws {
        let socket = try serve(Volume(id: "data", sizeBytes: 16 << 20))
        let client = try BlockClient(socket: socket, queueSize: 256)
        let start = Date()
        for round in 0..<16 {
            for slot in 0..<128 {
                // An 8-byte header: too short to be a request.
                let header = client.writeHeader(queue: 0, slot: slot, type: BlockClient.typeRead, sector: UInt64(round))
                _ = try client.add(queue: 0, [.init(address: header, length: 8, writable: false),
                                              .init(address: header + 16, length: 1, writable: true)])
            }
            client.kick(queue: 0)
            for _ in 0..<128 { _ = try client.waitUsed(queue: 0) }
        }
        let elapsed = Date().timeIntervalSince(start)
        let warnings = log.count(of: "virtio-blk: malformed request")
        let allowed = 20 + Int(10 * elapsed) + 1
        XCTAssertLessThanOrEqual(warnings, allowed, "\(warnings) warnings logged for 2048 malformed requests in \(elapsed) s")
        XCTAssertGreaterThan(warnings, 0, "malformed requests are still reported")
        let device = try XCTUnwrap(devices.first)
        XCTAssertEqual(Int(device.suppressedWarnings) + warnings, 2048, "every warning is logged or counted")
        // The count of what was suppressed reaches the log when the queue stops.
        backends.first?.stop()
        XCTAssertTrue(log.contains("log.suppressed"), "the suppressed count is logged:\n\(log.text.suffix(2000))")
    }

    // MARK: - 8. Hostile contents and timing

    /// Aliased and overlapping buffers: a write whose data overlaps its own header, a read whose
    /// buffers overlap each other and one that overwrites the queue's own rings with volume data.
    /// The server survives whatever the guest did to itself, and the next client is served.
    func testOverlappingBuffersAndARingOverwrittenByARead() throws {
        let socket = try serve(Volume(id: "data", sizeBytes: 16 << 20))
        do {
            let client = try BlockClient(socket: socket, queueSize: 64)
            let area = try client.data(queue: 0, offset: 0, length: 64 << 10)
            // Two read buffers over the same 4 KiB.
            XCTAssertEqual(try request(client, sector: 0, segments: [(area.address, 4096), (area.address, 4096)]), 0)
            // A write whose data starts at its own header: header and status inside the data.
            let header = client.writeHeader(queue: 0, slot: 0, type: BlockClient.typeWrite, sector: 64)
            _ = try client.add(queue: 0, [.init(address: header, length: 16, writable: false),
                                          .init(address: header, length: 512, writable: false),
                                          .init(address: header + 16, length: 1, writable: true)])
            client.kick(queue: 0)
            _ = try client.waitUsed(queue: 0)
            // Fill the volume's first 8 KiB with 0xFF and read it over the descriptor table and
            // the available ring: the device scribbles over the rings it is serving.
            XCTAssertEqual(try client.write(sector: 200, data: [UInt8](repeating: 0xFF, count: 8192)), 0)
            let layout = VirtqueueDriver.layout(size: client.queueSize, at: BlockClient.guestBase)
            let h = client.writeHeader(queue: 0, slot: 1, type: BlockClient.typeRead, sector: 200)
            _ = try client.add(queue: 0, [.init(address: h, length: 16, writable: false),
                                          .init(address: layout.descriptors, length: 8192, writable: true),
                                          .init(address: h + 16, length: 1, writable: true)])
            client.kick(queue: 0)
            // The used ring may or may not be usable now; give the server a moment either way.
            _ = try? client.waitUsed(queue: 0, timeoutMilliseconds: 500)
        }
        let next = try BlockClient(socket: socket)
        let data = pattern(9, 4096)
        XCTAssertEqual(try next.write(sector: 1000, data: data), 0)
        XCTAssertEqual(try next.read(sector: 1000, length: 4096).data, data, "the next frontend is served")
    }

    /// A frontend that never reads completions: it republishes the same chain over and over
    /// (200 rounds of a full ring) without looking at the used ring or its call eventfd, then
    /// disconnects. The server drains what it started and serves the next frontend.
    func testFrontendThatNeverReadsCompletions() throws {
        let socket = try serve(Volume(id: "data", sizeBytes: 16 << 20))
        do {
            let client = try BlockClient(socket: socket, queueSize: 128)
            let area = try client.data(queue: 0, offset: 0, length: 4096)
            let header = client.writeHeader(queue: 0, slot: 0, type: BlockClient.typeRead, sector: 0)
            let head = try client.add(queue: 0, [.init(address: header, length: 16, writable: false),
                                                 .init(address: area.address, length: 4096, writable: true),
                                                 .init(address: header + 16, length: 1, writable: true)])
            let layout = VirtqueueDriver.layout(size: client.queueSize, at: BlockClient.guestBase)
            var index: UInt16 = 0
            for _ in 0..<200 {
                for _ in 0..<128 {
                    client.memory.store(head, at: layout.available + 4 + 2 * UInt64(index % 128))
                    index &+= 1
                }
                client.memory.store(index, at: layout.available + 2)
                var one: UInt64 = 1
                _ = write(try kickFD(of: client, queue: 0), &one, 8)
            }
        }
        let next = try BlockClient(socket: socket)
        XCTAssertEqual(try next.read(sector: 0, length: 4096).status, 0, "the next frontend is served")
    }

    // MARK: - Helpers

    /// The kick eventfd `BlockClient` gave the server for `queue`, found by what `kick` writes to.
    private func kickFD(of client: BlockClient, queue: Int) throws -> Int32 {
        try XCTUnwrap(client.kickDescriptor(queue: queue))
    }

    private func waitFor(_ what: String, timeout: TimeInterval = 10, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition() {
            if Date() > deadline { XCTFail("timed out waiting: \(what)"); return }
            Thread.sleep(forTimeInterval: 0.01)
        }
    }

    private func processCPUSeconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
    }
}

/// `count` 4 KiB blocks written with `pattern`, then read back all at once: the reads are
/// added and kicked together, and `expectAll` checks each one's status and data.
struct ReadsInFlight {
    let client: BlockClient
    let pattern: (Int, Int) -> [UInt8]
    private var slotOf: [UInt16: Int] = [:]

    /// `beforeReads` runs once the blocks are written, before the reads go out.
    init(_ client: BlockClient, count: Int, pattern: @escaping (Int, Int) -> [UInt8], beforeReads: () throws -> Void = {}) throws {
        self.client = client
        self.pattern = pattern
        for block in 0..<count { XCTAssertEqual(try client.write(sector: UInt64(block * 8), data: pattern(block, 4096)), 0) }
        try beforeReads()
        for slot in 0..<count {
            let header = client.writeHeader(queue: 0, slot: slot, type: BlockClient.typeRead, sector: UInt64(slot * 8))
            let area = try client.data(queue: 0, offset: slot * 4096, length: 4096)
            let head = try client.add(queue: 0, [
                .init(address: header, length: 16, writable: false),
                .init(address: area.address, length: 4096, writable: true),
                .init(address: header + 16, length: 1, writable: true),
            ])
            slotOf[head] = slot
        }
        client.kick(queue: 0)
    }

    func expectAll() throws {
        for _ in 0..<slotOf.count {
            let used = try client.waitUsed(queue: 0, timeoutMilliseconds: 5000)
            let slot = try XCTUnwrap(slotOf[used.head])
            XCTAssertEqual(client.status(queue: 0, slot: slot), 0)
            let area = try client.data(queue: 0, offset: slot * 4096, length: 4096)
            XCTAssertEqual(Array(UnsafeRawBufferPointer(start: area.pointer, count: 4096)), pattern(slot, 4096), "block \(slot)")
        }
    }
}

/// A log handler that keeps every line, for tests that check what the server logged.
final class CapturedLog: Sendable {
    private let lines = Mutex<[String]>([])

    var logger: Logger {
        var logger = Logger(label: "test", factory: { _ in Handler(log: self) })
        logger.logLevel = .info
        return logger
    }

    var text: String { lines.withLock { $0.joined(separator: "\n") } }
    func contains(_ needle: String) -> Bool { lines.withLock { $0.contains { $0.contains(needle) } } }
    func count(of needle: String) -> Int { lines.withLock { $0.filter { $0.contains(needle) }.count } }
    fileprivate func append(_ line: String) { lines.withLock { $0.append(line) } }

    struct Handler: LogHandler {
        let log: CapturedLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .info

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String,
                 file: String, function: String, line: UInt) {
            let fields = self.metadata.merging(metadata ?? [:]) { $1 }
                .sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            log.append("\(level) \(message) \(fields)")
        }
    }
}
