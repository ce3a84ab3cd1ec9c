import Foundation
import HostOS
import XCTest
@testable import VhostUser

/// Frontends that try to hold the backend's descriptors or its connection hostage: descriptors
/// smuggled into one message piece by piece, and messages that stop half-way. The block server
/// is one process per tenant, so whatever one connection holds, every volume of the tenant pays.
final class MessageBoundsTests: XCTestCase {
    private static let timeout = Duration.milliseconds(300)
    private var directory = ""
    private var backends: [VhostUserBackend] = []

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "vhost-bounds-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        for backend in backends { backend.stop() }
        backends = []
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Starts a backend whose messages must complete within 0.3 s of their first byte.
    private func startBackend(_ name: String, device: RecordingDevice = RecordingDevice()) throws -> String {
        let path = directory + "/\(name).sock"
        let backend = VhostUserBackend(path: path, device: device, messageTimeout: MessageBoundsTests.timeout)
        try backend.start()
        backends.append(backend)
        return path
    }

    private func header(_ request: VhostUserRequest, size: UInt32) -> [UInt8] {
        var bytes: [UInt8] = []
        VhostUserHeader(request: request.rawValue, flags: VhostUserHeader.version, size: size).encode(into: &bytes)
        return bytes
    }

    /// The process's open descriptors (entries of /proc/self/fd), less the steady client's
    /// memory (its backend holds a copy for most of each round, so it comes and goes) and less
    /// those closed before their entry could be read (the listing's own, and other transients).
    private func openDescriptorCount() -> Int {
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return fds.filter { fd in
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)") else { return false }
            return !target.contains(SteadyClient.memoryName)
        }.count
    }

    private func waitUntil(_ what: String, timeout: TimeInterval = 5, file: StaticString = #filePath, line: UInt = #line,
                           _ condition: () -> Bool) {
        let deadline = Date().addingTimeInterval(timeout)
        var satisfied = condition()
        while !satisfied && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.005)
            satisfied = condition()
        }
        XCTAssertTrue(satisfied, "timed out waiting for \(what)", file: file, line: line)
    }

    /// Waits for the backend to close `frontend`'s connection; returns how long that took. A
    /// backend that keeps it open makes the wait fail after the frontend's 3 s reply timeout.
    private func secondsUntilDropped(_ frontend: VhostUserFrontend, _ what: String, since start: Date = Date(),
                                     file: StaticString = #filePath, line: UInt = #line) -> TimeInterval {
        XCTAssertNoThrow(try frontend.waitForDisconnect(), "\(what): the backend should close the connection", file: file, line: line)
        return Date().timeIntervalSince(start)
    }

    /// Sends `bytes` one at a time, each with `fds` (borrowed), until the backend has closed the
    /// connection; returns how many were sent.
    @discardableResult
    private func dribble(_ frontend: VhostUserFrontend, _ bytes: [UInt8], fds: [Int32]) -> Int {
        for (index, byte) in bytes.enumerated() {
            do { try frontend.sendRaw([byte], fds: fds) } catch { return index }
        }
        return bytes.count
    }

    // MARK: - (a) a descriptor flood inside one message, while another backend keeps serving

    func testDescriptorFloodInOneMessageIsCutOffAndTheNeighbourKeepsServing() throws {
        let attacked = try startBackend("attacked")
        let neighbour = try startBackend("neighbour")
        let memory = try FileDescriptor.memfd(name: "flood", size: 4096)
        // Settle lazily opened descriptors (the first connection, the first mapping).
        do { XCTAssertEqual(try VhostUserFrontend(connectingTo: attacked).getQueueNum(), 2) }
        let client = SteadyClient(path: neighbour)
        defer { client.stop() }
        waitUntil("the neighbour's client is served") { client.rounds > 3 }
        let baseline = openDescriptorCount()
        let roundsBefore = client.rounds

        // SET_MEM_TABLE announcing its largest payload (8 regions, 264 bytes), then 256 of those
        // bytes one at a time, each with 8 descriptors: 2048 descriptors for one message if each
        // receive were bounded on its own. Then it stalls.
        do {
            let frontend = try VhostUserFrontend(connectingTo: attacked, replyTimeoutMilliseconds: 3000)
            let start = Date()
            try frontend.sendRaw(header(.setMemTable, size: 264))
            let sent = dribble(frontend, [UInt8](repeating: 0, count: 256), fds: Array(repeating: memory.rawValue, count: 8))
            XCTAssertLessThan(openDescriptorCount(), baseline + 64, "the backend held on to \(sent) pieces' descriptors")
            XCTAssertLessThan(secondsUntilDropped(frontend, "descriptor flood", since: start), 3)
        }
        waitUntil("the flood's descriptors are released") { openDescriptorCount() <= baseline }

        // The same within the allowance (8 pieces of 1 descriptor), then a stall: dropped by the
        // deadline, and those 8 are released too.
        do {
            let frontend = try VhostUserFrontend(connectingTo: attacked, replyTimeoutMilliseconds: 3000)
            let start = Date()
            try frontend.sendRaw(header(.setMemTable, size: 264))
            XCTAssertEqual(dribble(frontend, [UInt8](repeating: 0, count: 8), fds: [memory.rawValue]), 8)
            let seconds = secondsUntilDropped(frontend, "stalled memory table", since: start)
            XCTAssertGreaterThanOrEqual(seconds, 0.25, "dropped by the deadline, not before")
            XCTAssertLessThan(seconds, 3)
        }
        waitUntil("the stalled message's descriptors are released") { openDescriptorCount() <= baseline }

        waitUntil("the neighbour's client is still served") { client.rounds > roundsBefore + 3 }
        client.stop()
        XCTAssertNil(client.failure, "the neighbour's client failed during the attack")
        waitUntil("every descriptor is released") { openDescriptorCount() <= baseline }
        XCTAssertEqual(try VhostUserFrontend(connectingTo: attacked).getQueueNum(), 2, "the attacked backend serves the next frontend")
    }

    // MARK: - (b) a message that stalls half-sent; an idle connection between messages

    func testAStalledMessageIsDroppedButAnIdleConnectionIsNot() throws {
        let path = try startBackend("stall")
        let memory = try FileDescriptor.memfd(name: "stall", size: 4096)
        do { XCTAssertEqual(try VhostUserFrontend(connectingTo: path).getQueueNum(), 2) }
        let baseline = openDescriptorCount()

        // Idle between messages for more than three deadlines: still served.
        do {
            let frontend = try VhostUserFrontend(connectingTo: path, replyTimeoutMilliseconds: 3000)
            Thread.sleep(forTimeInterval: 1)  // the idleness under test, not a wait for a condition
            XCTAssertEqual(try frontend.getQueueNum(), 2)
            Thread.sleep(forTimeInterval: 1)
            XCTAssertEqual(try frontend.getQueueNum(), 2, "an idle frontend keeps its connection")
        }

        let halfMessages: [(String, [UInt8], [Int32])] = [
            ("5 of 12 header bytes", Array(header(.getFeatures, size: 0).prefix(5)), []),
            ("a header without its payload", header(.setFeatures, size: 8), []),
            ("half a payload", header(.setFeatures, size: 8) + [1, 2, 3, 4], []),
            ("a kick header with its descriptor", header(.setVringKick, size: 8), [memory.rawValue]),
        ]
        for (what, bytes, fds) in halfMessages {
            let frontend = try VhostUserFrontend(connectingTo: path, replyTimeoutMilliseconds: 3000)
            let start = Date()
            try frontend.sendRaw(bytes, fds: fds)
            let seconds = secondsUntilDropped(frontend, what, since: start)
            XCTAssertGreaterThanOrEqual(seconds, 0.25, "\(what): dropped by the deadline, not before")
            XCTAssertLessThan(seconds, 3, what)
        }

        // A message that keeps arriving, a byte every 100 ms: the deadline is the message's, not
        // each byte's, so it ends at 0.3 s even though bytes never stop coming.
        do {
            let frontend = try VhostUserFrontend(connectingTo: path, replyTimeoutMilliseconds: 3000)
            let bytes = header(.getConfig, size: 12 + 256) + [UInt8](repeating: 0, count: 12 + 256)
            let start = Date()
            var sent = 0
            while sent < 30 {
                do { try frontend.sendRaw([bytes[sent]]) } catch { break }
                sent += 1
                Thread.sleep(forTimeInterval: 0.1)
            }
            XCTAssertLessThan(sent, 30, "a trickling message was never cut off")
            XCTAssertLessThan(Date().timeIntervalSince(start), 2)
        }
        waitUntil("descriptors released") { openDescriptorCount() <= baseline }
        XCTAssertEqual(try VhostUserFrontend(connectingTo: path).getQueueNum(), 2, "the next frontend is served")
    }

    // MARK: - (c) more descriptors than the request carries

    func testMoreDescriptorsThanTheRequestCarriesAreRefused() throws {
        let path = try startBackend("excess")
        let memory = try FileDescriptor.memfd(name: "excess", size: 4096)
        let kick = try EventFD()
        do { XCTAssertEqual(try VhostUserFrontend(connectingTo: path).getQueueNum(), 2) }
        let baseline = openDescriptorCount()
        let kickMessage = VhostUserMessage.request(.setVringKick, .vringFile(VhostVringFile(index: 0))).encode()
        let (kickFD, memoryFD) = (kick.rawValue, memory.rawValue)

        let attacks: [(String, (VhostUserFrontend) throws -> Void)] = [
            ("a kick with two descriptors at once", { try $0.sendRaw(kickMessage, fds: [kickFD, kickFD]) }),
            ("a kick with a second descriptor on a later byte", { f in
                try f.sendRaw(Array(kickMessage.prefix(13)), fds: [kickFD])
                try f.sendRaw(Array(kickMessage.dropFirst(13)), fds: [kickFD])
            }),
            ("a descriptor with GET_FEATURES's payload-less header", { f in
                let bytes = self.header(.getFeatures, size: 0)
                try f.sendRaw(Array(bytes.prefix(4)))
                try f.sendRaw(Array(bytes.dropFirst(4)), fds: [memoryFD])
            }),
            ("nine descriptors before the header is complete", { f in
                try f.sendRaw([UInt8(VhostUserRequest.setMemTable.rawValue)], fds: Array(repeating: memoryFD, count: 8))
                try f.sendRaw([0], fds: [memoryFD])
            }),
        ]
        for (what, attack) in attacks {
            let frontend = try VhostUserFrontend(connectingTo: path, replyTimeoutMilliseconds: 3000)
            try attack(frontend)
            // Refused on arrival, long before the 0.3 s deadline could be what ended it.
            XCTAssertLessThan(secondsUntilDropped(frontend, what), 0.25, what)
        }
        waitUntil("descriptors released") { openDescriptorCount() <= baseline }
        XCTAssertEqual(try VhostUserFrontend(connectingTo: path).getQueueNum(), 2, "the next frontend is served")
        _ = (kick.rawValue, memory.rawValue)  // both open until here
    }

    /// The channel names the request and the counts; pieces are counted together.
    func testTheChannelCountsDescriptorsOverTheWholeMessage() throws {
        let listener = try UnixListener(listeningAt: directory + "/channel.sock")
        let memory = try FileDescriptor.memfd(name: "channel", size: 4096)
        let fd = memory.rawValue
        let kick = VhostUserMessage.request(.setVringKick, .vringFile(VhostVringFile(index: 0))).encode()
        let region = VhostMemoryRegion(guestAddress: 0, size: 0x1000, userAddress: 0, mmapOffset: 0)
        let table = VhostUserMessage.request(.setMemTable, .memoryTable(VhostMemoryTable(regions: Array(repeating: region, count: 8)))).encode()

        func read(_ send: (borrowing UnixStream) throws -> Void) throws -> Result<Int, VhostUserConnectionError> {
            let client = try UnixStream.connect(to: listener.path)
            let server = try listener.accept()
            try server.setReceiveTimeout(milliseconds: 2000)  // a read that waits for more fails the test, not hangs it
            try send(client)
            do throws(VhostUserConnectionError) {
                guard let message = try MessageChannel.read(from: server) else { return .failure(.disconnected) }
                return .success(message.descriptors.count)
            } catch {
                return .failure(error)
            }
        }
        let baseline = openDescriptorCount()

        XCTAssertEqual(try read { try $0.send(kick, fds: [fd, fd]) },
                       .failure(.message(.excessDescriptors(.setVringKick, allowed: 1, received: 2))))
        XCTAssertEqual(try read { s in
            try s.send(Array(kick.prefix(13)), fds: [fd])
            try s.send(Array(kick.dropFirst(13)), fds: [fd])
        }, .failure(.message(.excessDescriptors(.setVringKick, allowed: 1, received: 2))))
        XCTAssertEqual(try read { try $0.send(VhostUserMessage.request(.getFeatures).encode(), fds: [fd]) },
                       .failure(.message(.excessDescriptors(.getFeatures, allowed: 0, received: 1))))
        XCTAssertEqual(try read { s in
            try s.send([5], fds: Array(repeating: fd, count: 8))
            try s.send([0], fds: [fd])
        }, .failure(.message(.excessDescriptors(nil, allowed: 8, received: 9))))
        // Eight pieces of one descriptor each: exactly SET_MEM_TABLE's allowance.
        XCTAssertEqual(try read { s in
            try s.send(Array(table.prefix(13)), fds: [fd])
            for i in 13..<20 { try s.send([table[i]], fds: [fd]) }
            try s.send(Array(table.dropFirst(20)))
        }, .success(8))
        // Sizes are refused from the header alone, before a payload byte is awaited.
        XCTAssertEqual(try read { try $0.send(self.header(.setMemTable, size: 265)) },
                       .failure(.message(.payloadSize(.setMemTable, expected: "at most 264", got: 265))))
        XCTAssertEqual(try read { try $0.send(self.header(.setMemTable, size: 0xffff_ffff)) },
                       .failure(.message(.payloadTooLarge(0xffff_ffff, limit: VhostUserHeader.maximumPayloadSize))))
        XCTAssertEqual(openDescriptorCount(), baseline, "every refused message's descriptors are closed")
    }
}

/// A well-behaved frontend on its own thread: a memory table (a descriptor) and a round trip,
/// over and over, until stopped. Counts the rounds and keeps the first failure.
private final class SteadyClient: @unchecked Sendable {
    // @unchecked Sendable: every mutable field is read and written under `lock`.
    private let lock = NSLock()
    private var _rounds = 0
    private var _failure: String?
    private var _stopping = false
    private var _done = false

    /// The name of its memory file (memfd:steady in /proc/self/fd).
    static let memoryName = "memfd:steady"

    init(path: String) {
        Thread { [self] in run(path) }.start()
    }

    private func run(_ path: String) {
        do {
            let size = 1 << 20
            let memory = try FileDescriptor.memfd(name: "steady", size: size)
            let frontend = try VhostUserFrontend(connectingTo: path, replyTimeoutMilliseconds: 5000)
            try frontend.setOwner()
            try frontend.setFeatures(try frontend.getFeatures())
            while !lock.withLock({ _stopping }) {
                try frontend.setMemTable(regions: [
                    (guestAddress: 0, size: UInt64(size), userAddress: 0x7f00_0000_0000, fd: memory.rawValue, offset: 0),
                ])
                _ = try frontend.getQueueNum()
                lock.withLock { _rounds += 1 }
            }
        } catch {
            lock.withLock { _failure = "\(error)" }
        }
        lock.withLock { _done = true }
    }

    var rounds: Int { lock.withLock { _rounds } }
    var failure: String? { lock.withLock { _failure } }

    /// Ends the loop and waits until the thread is done (its descriptors closed).
    func stop() {
        lock.withLock { _stopping = true }
        let deadline = Date().addingTimeInterval(10)
        while !lock.withLock({ _done }) && Date() < deadline { Thread.sleep(forTimeInterval: 0.005) }
    }
}
