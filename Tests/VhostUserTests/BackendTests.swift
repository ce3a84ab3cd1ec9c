import Foundation
import HostOS
import Virtio
import XCTest
@testable import VhostUser

/// Records what the backend asks of it; returns fixed config bytes.
final class RecordingDevice: VhostUserDevice, @unchecked Sendable {
    // @unchecked Sendable: every mutable field is read and written under `lock`.
    private let lock = NSLock()
    private var _started: [VhostQueueSetup] = []
    private var _markers: [UInt32?] = []
    private var _stopped: [Int] = []
    private var _resets = 0
    private var _memoryChanges = 0
    var nextAvailableOnStop: UInt16 = 42

    let deviceFeatures: UInt64 = 1 << 32 | 1 << 6  // VERSION_1, BLK_SIZE
    let protocolFeatures: UInt64 = VhostUserProtocolFeature.mq.mask | VhostUserProtocolFeature.replyAck.mask
        | VhostUserProtocolFeature.config.mask | 1 << 12  // INFLIGHT_SHMFD: not implemented, must not be offered
    let queueCount = 2
    let maxQueueSize: UInt16 = 256
    static let config: [UInt8] = (0..<64).map { UInt8($0 * 3 & 0xff) }

    func readConfig(offset: Int, size: Int) -> [UInt8] {
        let end = min(offset + size, RecordingDevice.config.count)
        return offset < end ? Array(RecordingDevice.config[offset..<end]) : []
    }

    func startQueue(_ setup: VhostQueueSetup, memory: GuestMemory) throws {
        // Proves the memory is the frontend's: the test wrote a marker at the descriptor table.
        let marker = memory.load(UInt32.self, at: setup.descriptorTable)
        lock.withLock { _started.append(setup); _markers.append(marker) }
    }

    func stopQueue(_ index: Int) -> UInt16 {
        lock.withLock { _stopped.append(index); return nextAvailableOnStop }
    }

    func memoryWillChange() { lock.withLock { _memoryChanges += 1 } }
    func reset() { lock.withLock { _resets += 1 } }

    var started: [VhostQueueSetup] { lock.withLock { _started } }
    var markers: [UInt32?] { lock.withLock { _markers } }
    var stopped: [Int] { lock.withLock { _stopped } }
    var resets: Int { lock.withLock { _resets } }
    var memoryChanges: Int { lock.withLock { _memoryChanges } }
}

final class BackendTests: XCTestCase {
    private var directory = ""
    private var path = ""
    private var device = RecordingDevice()
    private var backend: VhostUserBackend?

    private static let memorySize = 2 << 20
    private static let userBase: UInt64 = 0x7f00_0000_0000
    private static let guestBase: UInt64 = 0x4000_0000

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "vhost-test-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        path = directory + "/blk.sock"
        device = RecordingDevice()
        let backend = VhostUserBackend(path: path, device: device, logger: nil)
        try backend.start()
        self.backend = backend
    }

    override func tearDownWithError() throws {
        backend?.stop()
        backend = nil
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func connect() throws -> VhostUserFrontend {
        try VhostUserFrontend(connectingTo: path, replyTimeoutMilliseconds: 5000)
    }

    /// Guest memory: a 2 MiB memfd, with markers the device reads back.
    private func makeMemory() throws -> FileDescriptor {
        let fd = try FileDescriptor.memfd(name: "guest", size: BackendTests.memorySize)
        let mapping = try MemoryMapping(fd: fd.rawValue, offset: 0, size: UInt64(BackendTests.memorySize), shared: true)
        mapping.base.storeBytes(of: 0xfeed_0001, toByteOffset: 0x1000, as: UInt32.self)
        mapping.base.storeBytes(of: 0xfeed_0002, toByteOffset: 0x80110, as: UInt32.self)
        return fd
    }

    private func handshake(_ frontend: VhostUserFrontend, memory: borrowing FileDescriptor) throws {
        try frontend.setOwner()
        let features = try frontend.getFeatures()
        XCTAssertEqual(features, device.deviceFeatures | VhostUserFeature.protocolFeatures)
        try frontend.setFeatures(features)
        let protocolFeatures = try frontend.getProtocolFeatures()
        XCTAssertEqual(protocolFeatures, VhostUserProtocolFeature.mq.mask | VhostUserProtocolFeature.replyAck.mask | VhostUserProtocolFeature.config.mask)
        try frontend.setProtocolFeatures(protocolFeatures)
        XCTAssertEqual(try frontend.getQueueNum(), 2)
        try frontend.setMemTable(regions: [
            (guestAddress: BackendTests.guestBase, size: 0x80000, userAddress: BackendTests.userBase, fd: memory.rawValue, offset: 0),
            // Not page-aligned in the file: the backend maps from the page below.
            (guestAddress: 0x1_0000_0000, size: 0x1000, userAddress: 0x7e00_0000_0000, fd: memory.rawValue, offset: 0x80100),
        ])
    }

    private func ringAddress(_ index: UInt32, user: UInt64 = BackendTests.userBase + 0x1000) -> VhostVringAddress {
        VhostVringAddress(index: index, descriptorTable: user, usedRing: user + 0x2000, availableRing: user + 0x1000)
    }

    private func waitUntil(_ what: String, timeout: TimeInterval = 5, _ condition: () -> Bool) {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition() && Date() < deadline { Thread.sleep(forTimeInterval: 0.005) }
        XCTAssertTrue(condition(), "timed out waiting for \(what)")
    }

    func testHandshakeConfigAndQueueLifecycle() throws {
        let memory = try makeMemory()
        let kick = try EventFD()
        let call = try EventFD()
        let frontend = try connect()
        try handshake(frontend, memory: memory)

        XCTAssertEqual(try frontend.getConfig(offset: 0, size: 16), Array(RecordingDevice.config[0..<16]))
        XCTAssertEqual(try frontend.getConfig(offset: 60, size: 8), Array(RecordingDevice.config[60..<64]) + [0, 0, 0, 0])

        try frontend.setVringNum(0, size: 256)
        try frontend.setVringAddr(ringAddress(0))
        try frontend.setVringBase(0, base: 5)
        try frontend.setVringCall(0, fd: call.rawValue)
        try frontend.setVringKick(0, fd: kick.rawValue)
        XCTAssertTrue(device.started.isEmpty, "with PROTOCOL_FEATURES, rings start disabled")
        try frontend.setVringEnable(0, true)

        let setup = try XCTUnwrap(device.started.first)
        XCTAssertEqual(setup.index, 0)
        XCTAssertEqual(setup.size, 256)
        XCTAssertEqual(setup.descriptorTable, BackendTests.guestBase + 0x1000)
        XCTAssertEqual(setup.availableRing, BackendTests.guestBase + 0x2000)
        XCTAssertEqual(setup.usedRing, BackendTests.guestBase + 0x3000)
        XCTAssertEqual(setup.nextAvailable, 5)
        XCTAssertEqual(setup.features, device.deviceFeatures)
        XCTAssertNotNil(setup.callFD)
        XCTAssertEqual(device.markers.first, 0xfeed_0001)

        XCTAssertEqual(try frontend.getVringBase(0), 42)
        XCTAssertEqual(device.stopped, [0])

        // Queue 1 in the unaligned region: the marker lies at file offset 0x80110.
        try frontend.setVringNum(1, size: 64)
        try frontend.setVringAddr(VhostVringAddress(index: 1, descriptorTable: 0x7e00_0000_0010, usedRing: 0x7e00_0000_0800, availableRing: 0x7e00_0000_0400))
        try frontend.setVringKick(1, fd: kick.rawValue)
        try frontend.setVringEnable(1, true)
        XCTAssertEqual(device.started.last?.descriptorTable, 0x1_0000_0010)
        XCTAssertEqual(device.started.last?.availableRing, 0x1_0000_0400)
        XCTAssertEqual(device.started.last?.usedRing, 0x1_0000_0800)
        XCTAssertEqual(device.markers.last, 0xfeed_0002)

        // SET_CONFIG: read-only, refused with a failing REPLY_ACK, connection kept.
        XCTAssertThrowsError(try frontend.setConfig(offset: 0, bytes: [1])) {
            XCTAssertEqual($0 as? VhostUserConnectionError, .rejected(.setConfig, code: 1))
        }
        XCTAssertEqual(try frontend.getQueueNum(), 2)
    }

    func testMemoryTableReplacementRestartsRunningQueues() throws {
        let memory = try makeMemory()
        let kick = try EventFD()
        let frontend = try connect()
        try handshake(frontend, memory: memory)
        try frontend.setVringNum(0, size: 128)
        try frontend.setVringAddr(ringAddress(0))
        try frontend.setVringKick(0, fd: kick.rawValue)
        try frontend.setVringEnable(0, true)
        XCTAssertEqual(device.started.count, 1)

        try frontend.setMemTable(regions: [
            (guestAddress: BackendTests.guestBase, size: 0x80000, userAddress: BackendTests.userBase, fd: memory.rawValue, offset: 0),
        ])
        XCTAssertEqual(device.stopped, [0])
        XCTAssertEqual(device.memoryChanges, 2)
        XCTAssertEqual(device.started.count, 2)
        XCTAssertEqual(device.started.last?.nextAvailable, 42, "restarted where the stop left off")
        XCTAssertEqual(device.markers.last, 0xfeed_0001)
    }

    func testWithoutProtocolFeaturesARingStartsWithItsKick() throws {
        let memory = try makeMemory()
        let kick = try EventFD()
        let frontend = try connect()
        try frontend.setOwner()
        try frontend.setFeatures(1 << 32)
        try frontend.setMemTable(regions: [
            (guestAddress: BackendTests.guestBase, size: 0x80000, userAddress: BackendTests.userBase, fd: memory.rawValue, offset: 0),
        ])
        try frontend.setVringNum(0, size: 256)
        try frontend.setVringAddr(ringAddress(0))
        try frontend.setVringKick(0, fd: kick.rawValue)
        XCTAssertEqual(try frontend.getVringBase(0), 42)  // a reply orders us after the kick
        XCTAssertEqual(device.started.count, 1)
        XCTAssertNil(device.started.first?.callFD)
    }

    func testReconnectAfterTheClientDrops() throws {
        let memory = try makeMemory()
        let kick = try EventFD()
        do {
            let frontend = try connect()
            try handshake(frontend, memory: memory)
            try frontend.setVringNum(0, size: 256)
            try frontend.setVringAddr(ringAddress(0))
            try frontend.setVringKick(0, fd: kick.rawValue)
            try frontend.setVringEnable(0, true)
            XCTAssertEqual(device.started.count, 1)
        }
        waitUntil("reset after the client dropped") { device.resets == 1 }
        XCTAssertEqual(device.stopped, [0], "running queues are stopped before the reset")

        let again = try connect()
        try handshake(again, memory: memory)
        XCTAssertEqual(try again.getConfig(offset: 4, size: 4), Array(RecordingDevice.config[4..<8]))
    }

    func testStopEndsTheConnectionAndRemovesTheSocket() throws {
        let memory = try makeMemory()
        let frontend = try connect()
        try handshake(frontend, memory: memory)
        backend?.stop()
        XCTAssertEqual(device.resets, 1)
        XCTAssertThrowsError(try frontend.getQueueNum())
        XCTAssertFalse(FileManager.default.fileExists(atPath: path))
    }

    func testStaleSocketIsReplacedButALiveOneIsNot() throws {
        let second = VhostUserBackend(path: path, device: RecordingDevice())
        XCTAssertThrowsError(try second.start()) { XCTAssertEqual(($0 as? SystemError)?.errno, EADDRINUSE) }
        XCTAssertEqual(try connect().getQueueNum(), 2, "the live backend keeps its socket")

        // A socket file nobody listens on any more (a crashed backend's) is taken over.
        let stalePath = directory + "/stale.sock"
        do {
            let listener = try UnixListener(listeningAt: directory + "/gone.sock")
            XCTAssertEqual(link(listener.path, stalePath), 0)
        }
        let third = VhostUserBackend(path: stalePath, device: RecordingDevice())
        try third.start()
        defer { third.stop() }
        XCTAssertEqual(try VhostUserFrontend(connectingTo: stalePath).getQueueNum(), 2)
    }

    // MARK: - hostile frontends: each is dropped alone, the next one is served

    private func assertDropped(_ what: String, handshakeFirst: Bool = false, file: StaticString = #filePath, line: UInt = #line,
                               _ attack: (VhostUserFrontend, borrowing FileDescriptor) throws -> Void) throws {
        let memory = try makeMemory()
        let resetsBefore = device.resets
        do {
            let frontend = try connect()
            if handshakeFirst {
                try frontend.setOwner()
                try frontend.setFeatures(try frontend.getFeatures())
                try frontend.setMemTable(regions: [
                    (guestAddress: BackendTests.guestBase, size: 0x80000, userAddress: BackendTests.userBase, fd: memory.rawValue, offset: 0),
                ])
            }
            try attack(frontend, memory)
            XCTAssertNoThrow(try frontend.waitForDisconnect(), "\(what): the backend should close the connection", file: file, line: line)
        }
        waitUntil("\(what): device reset") { device.resets == resetsBefore + 1 }
        do {
            let next = try connect()
            XCTAssertEqual(try next.getQueueNum(), 2, "\(what): the next client is served", file: file, line: line)
        }
        waitUntil("\(what): the next client's reset") { device.resets == resetsBefore + 2 }
    }

    private func openDescriptorCount() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0
    }

    func testHostileMessagesDropOnlyThatClient() throws {
        // Settle lazily opened descriptors (the first connection) before counting.
        try assertDropped("unknown request") { f, _ in try f.sendRaw(VhostUserHeaderBytes(request: 1000, size: 0)) }
        let baseline = openDescriptorCount()

        try assertDropped("wrong size") { f, _ in
            try f.sendRaw(VhostUserHeaderBytes(request: VhostUserRequest.setFeatures.rawValue, size: 4) + [0, 0, 0, 0])
        }
        try assertDropped("missing fds") { f, _ in
            let table = VhostMemoryTable(regions: [VhostMemoryRegion(guestAddress: 0, size: 0x1000, userAddress: 0, mmapOffset: 0)])
            try f.sendRaw(VhostUserMessage.request(.setMemTable, .memoryTable(table)).encode())
        }
        try assertDropped("extra fds") { f, memory in
            try f.sendRaw(VhostUserMessage.request(.getFeatures).encode(), fds: [memory.rawValue])
        }
        try assertDropped("more fds than any message carries (MSG_CTRUNC)") { f, memory in
            let regions = Array(repeating: VhostMemoryRegion(guestAddress: 0, size: 0x1000, userAddress: 0, mmapOffset: 0), count: 8)
            try f.sendRaw(VhostUserMessage.request(.setMemTable, .memoryTable(VhostMemoryTable(regions: regions))).encode(),
                          fds: Array(repeating: memory.rawValue, count: 9))
        }
        try assertDropped("out-of-range queue index") { f, _ in
            try f.sendRaw(VhostUserMessage.request(.setVringNum, .vringState(VhostVringState(index: 2, num: 64))).encode())
        }
        try assertDropped("kick for an out-of-range queue") { f, memory in
            try f.sendRaw(VhostUserMessage.request(.setVringKick, .vringFile(VhostVringFile(index: 200))).encode(), fds: [memory.rawValue])
        }
        try assertDropped("a kick descriptor that is not an eventfd (a memfd)") { f, memory in
            try f.sendRaw(VhostUserMessage.request(.setVringKick, .vringFile(VhostVringFile(index: 0))).encode(), fds: [memory.rawValue])
        }
        try assertDropped("a call descriptor that is a pipe") { f, _ in
            var ends: [Int32] = [-1, -1]
            XCTAssertEqual(pipe(&ends), 0)
            defer { close(ends[0]); close(ends[1]) }
            try f.sendRaw(VhostUserMessage.request(.setVringCall, .vringFile(VhostVringFile(index: 1))).encode(), fds: [ends[1]])
        }
        try assertDropped("nregions 0") { f, _ in
            try f.sendRaw(VhostUserHeaderBytes(request: 5, size: 8) + [0, 0, 0, 0, 0, 0, 0, 0])
        }
        try assertDropped("nregions 9") { f, memory in
            try f.sendRaw(VhostUserHeaderBytes(request: 5, size: 8 + 9 * 32) + [9, 0, 0, 0, 0, 0, 0, 0] + [UInt8](repeating: 1, count: 9 * 32),
                          fds: Array(repeating: memory.rawValue, count: 8))
        }
        try assertDropped("region size overflowing") { f, memory in
            let table = VhostMemoryTable(regions: [VhostMemoryRegion(guestAddress: .max - 0xfff, size: 0x2000, userAddress: 0, mmapOffset: 0)])
            try f.sendRaw(VhostUserMessage.request(.setMemTable, .memoryTable(table)).encode(), fds: [memory.rawValue])
        }
        try assertDropped("region beyond the end of its file") { f, memory in
            let table = VhostMemoryTable(regions: [VhostMemoryRegion(guestAddress: 0, size: 0x1000, userAddress: 0, mmapOffset: UInt64(BackendTests.memorySize))])
            try f.sendRaw(VhostUserMessage.request(.setMemTable, .memoryTable(table)).encode(), fds: [memory.rawValue])
        }
        try assertDropped("queue size not a power of two") { f, _ in
            try f.sendRaw(VhostUserMessage.request(.setVringNum, .vringState(VhostVringState(index: 0, num: 100))).encode())
        }
        try assertDropped("ring address outside the memory table", handshakeFirst: true) { f, _ in
            try f.sendRaw(VhostUserMessage.request(.setVringAddr, .vringAddress(self.ringAddress(0, user: 0x1234))).encode())
        }
        try assertDropped("features not offered") { f, _ in
            try f.sendRaw(VhostUserMessage.request(.setFeatures, .u64(1 << 40)).encode())
        }
        try assertDropped("a request whose feature was never offered") { f, _ in
            try f.sendRaw(VhostUserMessage.request(.getMaxMemSlots).encode())
        }
        try assertDropped("truncated header") { f, _ in
            try f.sendRaw([1, 0, 0, 0, 1])
            f.shutdownWrites()
        }
        try assertDropped("a 1 MB size field") { f, _ in
            try f.sendRaw(VhostUserHeaderBytes(request: 5, size: 1 << 20) + [UInt8](repeating: 0, count: 4096))
        }
        waitUntil("descriptors released") { openDescriptorCount() <= baseline }
        XCTAssertLessThanOrEqual(openDescriptorCount(), baseline, "no descriptor of a dropped client leaks")
    }
}

private func VhostUserHeaderBytes(request: UInt32, flags: UInt32 = 1, size: UInt32) -> [UInt8] {
    var bytes: [UInt8] = []
    VhostUserHeader(request: request, flags: flags, size: size).encode(into: &bytes)
    return bytes
}
