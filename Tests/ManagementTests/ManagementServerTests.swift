import Config
import Foundation
import HostOS
import Logging
import Management
import ManagementModel
import XCTest

/// A management server on a real Unix socket in a temporary directory, with a `FixtureBackend`.
final class ServedFixture: Sendable {
    let directory: String
    let socketPath: String
    let backend: FixtureBackend
    let audit: MemoryAuditLog
    private let task: Task<Void, any Error>

    /// The group the socket is given in tests: the group the test's other uids connect with.
    static let group: UInt32 = 61_000

    init(document: String = fixtureDocument, group: UInt32? = ServedFixture.group) async throws {
        directory = NSTemporaryDirectory() + "bh-api-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        socketPath = directory + "/control.sock"
        audit = MemoryAuditLog()
        backend = try FixtureBackend(document: document, audit: audit)
        let (running, continuation) = AsyncStream<Void>.makeStream()
        var logger = Logger(label: "management-test")
        logger.logLevel = .critical
        let server = ManagementServer(socketPath: socketPath, socketGroup: group, backend: backend,
                                      record: { [audit] in try audit.record($0) }, logger: logger,
                                      onRunning: { continuation.yield() })
        task = Task { try await server.run() }
        // Wait until it listens, or fail after a deadline.
        let listening = await withTaskGroup(of: Bool.self) { group in
            group.addTask { for await _ in running { return true }; return false }
            group.addTask { try? await Task.sleep(for: .seconds(30)); return false }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        guard listening else {
            task.cancel()
            throw XCTSkip("the management server did not start listening within 30 s") as Error
        }
    }

    func stop() async {
        task.cancel()
        _ = try? await task.value
        try? FileManager.default.removeItem(atPath: directory)
    }

    var client: ManagementClient { ManagementClient(socketPath: socketPath) }
}

final class ManagementServerTests: XCTestCase {
    private var served: ServedFixture!

    override func setUp() async throws {
        served = try await ServedFixture()
    }

    override func tearDown() async throws {
        await served?.stop()
    }

    private func call(_ method: String, _ target: String, body: String? = nil) async throws -> (Int, JSONValue?) {
        let answer = try await served.client.call(method, target, body: body.map { Array($0.utf8) })
        return (answer.status, answer.json)
    }

    func testRootIsHostAdminThroughTheClient() async throws {
        let (status, body) = try await call("GET", "/v1/health")
        XCTAssertEqual(status, 200)
        XCTAssertEqual(body?["principal"]?.stringValue, "root")
        XCTAssertEqual(served.audit.events, [APIAuditEvent(principal: "root", uid: 0, action: "api.health", target: "", outcome: .allowed)])

        let (portStatus, port) = try await call("GET", "/v1/tenants/red/ports/red-port")
        XCTAssertEqual(portStatus, 200)
        XCTAssertEqual(port?["mac"]?.stringValue, "02:00:00:00:02:01")
    }

    func testSocketFileHasTheGroupAndMode() throws {
        let attributes = try FileManager.default.attributesOfItem(atPath: served.socketPath)
        XCTAssertEqual((attributes[.posixPermissions] as? NSNumber)?.intValue, 0o660)
        XCTAssertEqual((attributes[.groupOwnerAccountID] as? NSNumber)?.uint32Value, ServedFixture.group)
    }

    func testPartitionLifecycleAndConflicts() async throws {
        var (status, body) = try await call("POST", "/v1/tenants/blue/partitions/guest/stop")
        XCTAssertEqual(status, 200)
        XCTAssertEqual(body?["action"]?.stringValue, "stop")
        (status, body) = try await call("POST", "/v1/tenants/blue/partitions/guest/stop")
        XCTAssertEqual(status, 409)
        XCTAssertEqual(body?["error"]?["reason"]?.stringValue, "partition blue/guest is not running")
        (status, _) = try await call("POST", "/v1/tenants/blue/partitions/nope/start")
        XCTAssertEqual(status, 404)
        XCTAssertEqual(served.backend.actions, ["stop blue/guest"])
        // The intent is recorded before the action, the failure after it.
        XCTAssertEqual(served.audit.events.map(\.outcome), [
            .allowed, .allowed, .failed("partition blue/guest is not running"), .failed("no partition \"nope\" in tenant \"blue\""),
        ])
    }

    func testNoActionWhenTheAuditLogCannotBeWritten() async throws {
        served.audit.setFailing(true)
        for (method, target) in [("POST", "/v1/tenants/blue/partitions/guest/stop"), ("GET", "/v1/status"), ("GET", "/v1/nothing")] {
            let (status, body) = try await call(method, target)
            XCTAssertEqual(status, 503, target)
            XCTAssertTrue(body?["error"]?["reason"]?.stringValue?.contains("audit log cannot be written") ?? false, target)
        }
        let (status, _) = try await call("PUT", "/v1/configuration", body: fixtureDocument.replacingOccurrences(of: "5001", with: "5003"))
        XCTAssertEqual(status, 503)
        XCTAssertEqual(served.backend.actions, [])
        XCTAssertEqual(served.backend.applied, [])
        served.audit.setFailing(false)
        let health = try await call("GET", "/v1/health")
        XCTAssertEqual(health.0, 200)
    }

    func testApplyDryRunInvalidAndApplied() async throws {
        let changed = fixtureDocument.replacingOccurrences(of: #""vni": 5001"#, with: #""vni": 5003"#)
        var (status, body) = try await call("PUT", "/v1/configuration?dryRun=true", body: changed)
        XCTAssertEqual(status, 200)
        XCTAssertEqual(body?["changes"]?.serialized(), #"["tenant blue: segment lan changed"]"#)
        XCTAssertEqual(served.backend.applied, [])

        (status, body) = try await call("PUT", "/v1/configuration", body: "{\n  \"host\": {},\n  \"tenants\": 3\n}")
        XCTAssertEqual(status, 422)
        let problems = body?["error"]?["problems"]?.arrayElements ?? []
        XCTAssertFalse(problems.isEmpty)
        XCTAssertTrue(problems.contains { $0["path"]?.stringValue == "$.tenants" && $0["line"]?.serialized() == "3" }, "\(problems)")
        (status, body) = try await call("PUT", "/v1/configuration", body: "{not json")
        XCTAssertEqual(status, 422)
        XCTAssertEqual(body?["error"]?["problems"]?.arrayElements?.first?["line"]?.serialized(), "1")
        XCTAssertEqual(served.backend.applied, [])

        (status, body) = try await call("PUT", "/v1/configuration", body: changed)
        XCTAssertEqual(status, 200)
        XCTAssertEqual(body?["applied"]?.serialized(), "true")
        XCTAssertEqual(served.backend.applied, [changed])
        let (_, segment) = try await call("GET", "/v1/tenants/blue/segments/lan")
        XCTAssertEqual(segment?["vni"]?.serialized(), "5003")
    }

    func testAuditReadReturnsRecordsAfterN() async throws {
        _ = try await call("GET", "/v1/health")
        _ = try await call("GET", "/v1/status")
        let (status, body) = try await call("GET", "/v1/audit?after=1&limit=5")
        XCTAssertEqual(status, 200)
        let records = body?["records"]?.arrayElements ?? []
        XCTAssertEqual(records.map { $0["action"]?.stringValue }, ["api.status"])
    }

    /// Requests no client library would send, written byte by byte on the socket: each gets a
    /// 4xx with a JSON reason (or Hummingbird's own 400 for what HTTP itself forbids), never a 5xx.
    func testHostileRequestsOnTheWire() throws {
        let cases: [(String, ClosedRange<Int>)] = [
            // Not normalized: "configuration" is no kind of tenant object.
            ("GET /v1/tenants/../configuration HTTP/1.1\r\nHost: x\r\n\r\n", 404...404),
            ("GET /v1/tenants/blue/../../configuration HTTP/1.1\r\nHost: x\r\n\r\n", 404...404),
            ("GET /v1/tenants/blue/ports/.. HTTP/1.1\r\nHost: x\r\n\r\n", 400...400),
            ("GET /v1/tenants/%2e%2e/ports HTTP/1.1\r\nHost: x\r\n\r\n", 400...400),
            ("GET /v1/tenants/%00 HTTP/1.1\r\nHost: x\r\n\r\n", 400...400),
            ("GET /v1/tenants/\u{00E9}t\u{00E9} HTTP/1.1\r\nHost: x\r\n\r\n", 400...400),
            ("GET /v1/" + String(repeating: "a/", count: 3000) + " HTTP/1.1\r\nHost: x\r\n\r\n", 414...414),
            ("PUT /v1/configuration HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n", 413...413),
            ("PATCH /v1/health HTTP/1.1\r\nHost: x\r\n\r\n", 405...405),
            // A method HTTP's parser does not know: its 400.
            ("BREW /v1/health HTTP/1.1\r\nHost: x\r\n\r\n", 400...405),
            ("GET /v1/health?tenant=blue HTTP/1.1\r\nHost: x\r\n\r\n", 400...400),
            ("GET \u{0}/ HTTP/1.1\r\n\r\n", 400...499),
            ("GARBAGE\r\n\r\n", 400...499),
        ]
        for (request, expected) in cases {
            let answer = try rawExchange(Array(request.replacingOccurrences(of: "Host: x\r\n", with: "Host: x\r\nConnection: close\r\n").utf8))
            let status = answer.split(separator: " ", maxSplits: 2).dropFirst().first.flatMap { Int($0) } ?? 0
            XCTAssertTrue(expected.contains(status), "\(request.prefix(60)): \(answer.prefix(200))")
        }
        // Not UTF-8.
        let notText = Array("PUT /v1/configuration HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\n".utf8) + [0xFF, 0xFE, 0x7B]
        XCTAssertTrue(try rawExchange(notText).hasPrefix("HTTP/1.1 400"))
        // Still serving.
        XCTAssertTrue(try rawExchange(Array("GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8)).hasPrefix("HTTP/1.1 200"))
    }

    func testAFullMiBBodyIsReadAndOneMoreIsRefused() throws {
        let padding = String(repeating: " ", count: (1 << 20) - 2)
        let fits = "PUT /v1/configuration?dryRun=true HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: \(1 << 20)\r\n\r\n{" + padding + "}"
        XCTAssertTrue(try rawExchange(Array(fits.utf8)).hasPrefix("HTTP/1.1 422"), "a document of exactly 1 MiB is decoded")
        let over = "PUT /v1/configuration HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
            + "100001\r\n" + String(repeating: " ", count: (1 << 20) + 1) + "\r\n0\r\n\r\n"
        XCTAssertTrue(try rawExchange(Array(over.utf8)).hasPrefix("HTTP/1.1 413"))
    }

    /// Writes `request` on a new connection and reads until the server closes it or one answer came.
    private func rawExchange(_ request: [UInt8]) throws -> String {
        let stream = try UnixStream.connect(to: served.socketPath)
        try stream.setReceiveTimeout(milliseconds: 10_000)
        do { try stream.send(request) } catch { /* the server may answer and close before all is sent */ }
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = try buffer.withUnsafeMutableBytes { try stream.receive(into: $0, maxFDs: 0).byteCount }
            if count == 0 { break }
            received += buffer[0..<count]
        }
        return String(decoding: received, as: UTF8.self)
    }
}
