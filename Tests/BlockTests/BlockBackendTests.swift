import Block
import BlockClient
import Config
import Foundation
import HostOS
import Logging
import VhostUser
import Virtio
import XCTest

/// The block backend end to end: a real vhost-user socket, guest memory in a memfd, split
/// virtqueues driven by `BlockClient`, io_uring on a real volume file.
final class BlockBackendTests: XCTestCase {
    private var state = ""
    private var backends: [VhostUserBackend] = []

    override func setUp() {
        state = NSTemporaryDirectory() + "bulkhead-block-\(UUID().uuidString)"
    }

    override func tearDown() {
        for backend in backends { backend.stop() }
        backends.removeAll()
        try? FileManager.default.removeItem(atPath: state)
    }

    /// Serves `volume` of tenant `blue` on a socket; returns the socket path.
    private func serve(_ volume: Volume, queues: Int = 2) throws -> String {
        let store = try VolumeStore(stateDirectory: state, tenant: "blue")
        let file = try store.open(volume)
        let device = try BlockDevice(volume: file, queues: queues, logger: Logger(label: "test"))
        try StateFiles.makeDirectories(state + "/tenants/blue/vhost")
        let path = VolumeStore.socketPath(stateDirectory: state, tenant: "blue", volume: volume.id)
        let backend = VhostUserBackend(path: path, device: device, logger: Logger(label: "test"))
        try backend.start()
        backends.append(backend)
        return path
    }

    private func pattern(_ seed: Int, _ length: Int) -> [UInt8] {
        (0..<length).map { UInt8(truncatingIfNeeded: ($0 &* 31) ^ (seed &* 7919) ^ ($0 >> 9)) }
    }

    func testNewVolumeReadsZeroesAndWritesReadBack() throws {
        let socket = try serve(Volume(id: "data", sizeBytes: 16 << 20))
        let client = try BlockClient(socket: socket)
        XCTAssertEqual(client.capacitySectors, (16 << 20) / 512)
        let fresh = try client.read(sector: 100, length: 8192)
        XCTAssertEqual(fresh.status, 0)
        XCTAssertEqual(fresh.data, [UInt8](repeating: 0, count: 8192), "a new volume reads as zeroes")

        for (i, size) in [512, 4096, 65536, 512 * 7].enumerated() {
            let sector = UInt64(i * 300)
            let data = pattern(i, size)
            XCTAssertEqual(try client.write(sector: sector, data: data), 0)
            let back = try client.read(sector: sector, length: size)
            XCTAssertEqual(back.status, 0)
            XCTAssertEqual(back.data, data, "\(size) bytes at sector \(sector)")
        }
        XCTAssertEqual(try client.flush(), 0)
    }

    func testManyRequestsInFlightAcrossQueues() throws {
        let socket = try serve(Volume(id: "data", sizeBytes: 32 << 20), queues: 2)
        let client = try BlockClient(socket: socket, queueCount: 2, queueSize: 128)
        // 32 writes in flight on each queue, then read everything back.
        for queue in 0..<2 {
            var heads: [UInt16: Int] = [:]
            for slot in 0..<32 {
                let sector = UInt64(queue * 4096 + slot * 8)
                let header = client.writeHeader(queue: queue, slot: slot, type: BlockClient.typeWrite, sector: sector)
                let area = try client.data(queue: queue, offset: slot * 4096, length: 4096)
                pattern(queue * 100 + slot, 4096).withUnsafeBytes { area.pointer.copyMemory(from: $0.baseAddress!, byteCount: 4096) }
                let head = try client.add(queue: queue, [
                    .init(address: header, length: 16, writable: false),
                    .init(address: area.address, length: 4096, writable: false),
                    .init(address: header + 16, length: 1, writable: true),
                ])
                heads[head] = slot
            }
            client.kick(queue: queue)
            var done = 0
            while done < 32 {
                let used = try client.waitUsed(queue: queue)
                let slot = try XCTUnwrap(heads[used.head])
                XCTAssertEqual(client.status(queue: queue, slot: slot), 0)
                done += 1
            }
        }
        for queue in 0..<2 {
            for slot in 0..<32 {
                let back = try client.read(sector: UInt64(queue * 4096 + slot * 8), length: 4096, queue: queue)
                XCTAssertEqual(back.data, pattern(queue * 100 + slot, 4096))
            }
        }
    }

    func testDiscardAndWriteZeroesReadBackZeroes() throws {
        let socket = try serve(Volume(id: "data", sizeBytes: 16 << 20))
        let client = try BlockClient(socket: socket)
        let ones = [UInt8](repeating: 0xAB, count: 65536)
        for sector in [0, 1024, 2048] as [UInt64] { XCTAssertEqual(try client.write(sector: sector, data: ones), 0) }
        XCTAssertEqual(try client.release(type: BlockClient.typeDiscard, ranges: [(0, 128)]), 0)
        XCTAssertEqual(try client.release(type: BlockClient.typeWriteZeroes, ranges: [(1024, 128)], unmap: true), 0)
        XCTAssertEqual(try client.release(type: BlockClient.typeWriteZeroes, ranges: [(2048, 64)], unmap: false), 0)
        let zero = [UInt8](repeating: 0, count: 65536)
        XCTAssertEqual(try client.read(sector: 0, length: 65536).data, zero)
        XCTAssertEqual(try client.read(sector: 1024, length: 65536).data, zero)
        XCTAssertEqual(try client.read(sector: 2048, length: 32768).data, [UInt8](repeating: 0, count: 32768))
        XCTAssertEqual(try client.read(sector: 2112, length: 32768).data, [UInt8](repeating: 0xAB, count: 32768),
                       "write-zeroes stops at its range")
    }

    func testGetIDReturnsTheSerial() throws {
        let socket = try serve(Volume(id: "data", sizeBytes: 1 << 20, serial: "BLUE-DATA-0001"))
        let client = try BlockClient(socket: socket)
        let id = try client.getID()
        XCTAssertEqual(id.status, 0)
        XCTAssertEqual(id.id, "BLUE-DATA-0001")
    }

    func testReadOnlyVolumeRefusesWrites() throws {
        // Create the file first (read-only volumes are not created), then serve it read-only.
        _ = try serve(Volume(id: "ro", sizeBytes: 1 << 20))
        backends.forEach { $0.stop() }
        backends.removeAll()
        let socket = try serve(Volume(id: "ro", sizeBytes: 1 << 20, readOnly: true))
        let client = try BlockClient(socket: socket)
        XCTAssertNotEqual(client.features & BlockFeatures.readOnly, 0, "VIRTIO_BLK_F_RO is offered")
        XCTAssertEqual(try client.write(sector: 0, data: [UInt8](repeating: 1, count: 512)), BlockStatus.ioError.rawValue)
        XCTAssertEqual(try client.release(type: BlockClient.typeDiscard, ranges: [(0, 8)]), BlockStatus.ioError.rawValue)
        XCTAssertEqual(try client.read(sector: 0, length: 512).status, 0)
        XCTAssertEqual(try client.flush(), 0)
    }

    func testOutOfRangeAndMalformedRequestsGetErrorsAndTheQueueGoesOn() throws {
        let socket = try serve(Volume(id: "data", sizeBytes: 1 << 20))
        let client = try BlockClient(socket: socket)
        let last = client.capacitySectors
        // Past the end, straddling the end, and sector arithmetic that overflows.
        XCTAssertEqual(try client.read(sector: last, length: 512).status, BlockStatus.ioError.rawValue)
        XCTAssertEqual(try client.read(sector: last - 1, length: 1024).status, BlockStatus.ioError.rawValue)
        XCTAssertEqual(try client.read(sector: UInt64.max / 256, length: 512).status, BlockStatus.ioError.rawValue)
        XCTAssertEqual(try client.write(sector: UInt64.max, data: [UInt8](repeating: 0, count: 512)), BlockStatus.ioError.rawValue)
        // Not a multiple of the sector size.
        XCTAssertEqual(try client.read(sector: 0, length: 100).status, BlockStatus.ioError.rawValue)
        // Unknown request type.
        XCTAssertEqual(try client.request(type: 77, sector: 0, dataLength: 0, deviceWrites: false).status,
                       BlockStatus.unsupported.rawValue)
        // A data buffer outside guest memory: the chain is refused (used length 0), nothing read.
        let header = client.writeHeader(queue: 0, slot: 0, type: BlockClient.typeRead, sector: 0)
        let head = try client.add(queue: 0, [
            .init(address: header, length: 16, writable: false),
            .init(address: 0x10, length: 4096, writable: true),
            .init(address: header + 16, length: 1, writable: true),
        ])
        client.kick(queue: 0)
        let used = try client.waitUsed(queue: 0)
        XCTAssertEqual(used.head, head)
        XCTAssertEqual(used.length, 0)
        // A status byte that the device may not write (wrong direction): refused as well.
        let header2 = client.writeHeader(queue: 0, slot: 0, type: BlockClient.typeFlush, sector: 0)
        _ = try client.add(queue: 0, [.init(address: header2, length: 17, writable: false)])
        client.kick(queue: 0)
        XCTAssertEqual(try client.waitUsed(queue: 0).length, 0)
        // The queue still serves well-formed requests.
        XCTAssertEqual(try client.write(sector: 8, data: pattern(1, 4096)), 0)
        XCTAssertEqual(try client.read(sector: 8, length: 4096).data, pattern(1, 4096))
    }

    /// A frontend that drives its call eventfd's counter to the maximum cannot block the queue
    /// worker's interrupt write: requests keep completing.
    func testSaturatedCallCounterDoesNotStallTheQueue() throws {
        let socket = try serve(Volume(id: "data", sizeBytes: 1 << 20), queues: 1)
        let client = try BlockClient(socket: socket, queueCount: 1)
        var nearMaximum: UInt64 = 0xffff_ffff_ffff_fffe
        XCTAssertEqual(write(client.callFD(queue: 0), &nearMaximum, 8), 8)
        for round in 0..<3 {
            let header = client.writeHeader(queue: 0, slot: 0, type: BlockClient.typeFlush, sector: 0)
            _ = try client.add(queue: 0, [
                .init(address: header, length: 16, writable: false),
                .init(address: header + 16, length: 1, writable: true),
            ])
            client.kick(queue: 0)
            // Not through the call eventfd (reading it would reset the counter): poll the used ring.
            var used: [(head: UInt16, length: UInt32)] = []
            let deadline = Date().addingTimeInterval(5)
            while used.isEmpty, Date() < deadline {
                used = client.drainUsed(queue: 0)
                if used.isEmpty { usleep(1000) }
            }
            XCTAssertEqual(used.count, 1, "flush \(round) completed with the call counter saturated")
            XCTAssertEqual(client.status(queue: 0, slot: 0), BlockStatus.ok.rawValue)
        }
    }

    func testReconnectAfterTheClientDrops() throws {
        let socket = try serve(Volume(id: "data", sizeBytes: 4 << 20))
        do {
            let first = try BlockClient(socket: socket)
            XCTAssertEqual(try first.write(sector: 0, data: pattern(9, 4096)), 0)
        }
        // The first client is gone (its socket closed); a second one sees its data.
        var second: BlockClient?
        for _ in 0..<50 where second == nil {
            second = try? BlockClient(socket: socket)
            if second == nil { Thread.sleep(forTimeInterval: 0.05) }
        }
        let client = try XCTUnwrap(second, "the backend accepts a new client")
        XCTAssertEqual(try client.read(sector: 0, length: 4096).data, pattern(9, 4096))
    }

    func testQoSDelaysButDoesNotFail() throws {
        let socket = try serve(Volume(id: "data", sizeBytes: 4 << 20, qos: VolumeQoS(iops: 200, burstIOs: 10)))
        let client = try BlockClient(socket: socket)
        let start = Date()
        for i in 0..<60 { XCTAssertEqual(try client.read(sector: UInt64(i * 8), length: 4096).status, 0) }
        let elapsed = Date().timeIntervalSince(start)
        // 60 requests at 200/s with a burst of 10 take at least (60 - 10) / 200 = 0.25 s.
        XCTAssertGreaterThan(elapsed, 0.2, "QoS let \(60) requests through in \(elapsed) s")
    }

    func testVolumePathsCannotLeaveTheTenantDirectory() throws {
        let blue = try VolumeStore(stateDirectory: state, tenant: "blue")
        let red = try VolumeStore(stateDirectory: state, tenant: "red")
        _ = try red.open(Volume(id: "secret", sizeBytes: 1 << 20))
        // A symlink planted in blue's directory that points at red's volume is not followed.
        try FileManager.default.createSymbolicLink(atPath: blue.directory + "/stolen.img",
                                                   withDestinationPath: red.directory + "/secret.img")
        XCTAssertThrowsError(try blue.open(Volume(id: "stolen", sizeBytes: 1 << 20))) { error in
            XCTAssertTrue("\(error)".contains("openat2"), "\(error)")
        }
        // Nor is a relative escape: `..` never resolves beneath the tenant directory.
        let fd = bh_test_open_escape(blue)
        XCTAssertLessThan(fd, 0, "../../red/volumes/secret.img must not open from blue's directory")
    }

    func testPurgeReleasesBlocksAndRemovesTheFile() throws {
        let store = try VolumeStore(stateDirectory: state, tenant: "blue")
        let file = try store.open(Volume(id: "old", sizeBytes: 8 << 20))
        let data = [UInt8](repeating: 0x5A, count: 4 << 20)
        XCTAssertEqual(data.withUnsafeBytes { pwrite(file.bufferedFD, $0.baseAddress, $0.count, 0) }, 4 << 20)
        fsync(file.bufferedFD)
        var info = stat()
        fstat(file.bufferedFD, &info)
        XCTAssertGreaterThan(info.st_blocks, 0)
        try store.purge(volume: "old")
        fstat(file.bufferedFD, &info)
        XCTAssertEqual(info.st_blocks, 0, "purge releases every block before the file goes")
        XCTAssertFalse(store.volumeFiles().contains("old"))
    }
}

/// Tries to open another tenant's file through `..` from `store`'s directory.
private func bh_test_open_escape(_ store: borrowing VolumeStore) -> Int32 {
    do {
        let fd = try store.openForTesting("../../red/volumes/secret.img")
        return fd
    } catch {
        return -1
    }
}
