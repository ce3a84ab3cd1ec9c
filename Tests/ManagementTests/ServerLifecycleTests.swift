import Foundation
import Logging
import Management
import ManagementModel
import ServiceLifecycle
import XCTest

final class ServerLifecycleTests: XCTestCase {
    /// In the daemon's ServiceGroup, a graceful shutdown stops the server, and its socket file goes.
    func testGracefulShutdownInAServiceGroupRemovesTheSocket() async throws {
        let directory = NSTemporaryDirectory() + "bh-api-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socket = directory + "/control.sock"
        let audit = MemoryAuditLog()
        var logger = Logger(label: "lifecycle-test")
        logger.logLevel = .critical
        let (running, continuation) = AsyncStream<Void>.makeStream()
        let server = ManagementServer(socketPath: socket, socketGroup: nil, backend: try FixtureBackend(audit: audit),
                                      record: { try audit.record($0) }, logger: logger, onRunning: { continuation.yield() })
        let group = ServiceGroup(configuration: .init(services: [server], logger: logger))
        let task = Task { try await group.run() }
        var iterator = running.makeAsyncIterator()
        _ = await iterator.next()

        let attributes = try FileManager.default.attributesOfItem(atPath: socket)
        XCTAssertEqual((attributes[.posixPermissions] as? NSNumber)?.intValue, 0o600, "no group: only the owner")
        let answer = try await ManagementClient(socketPath: socket).call("GET", "/v1/health")
        XCTAssertEqual(answer.status, 200)

        await group.triggerGracefulShutdown()
        try await task.value
        XCTAssertFalse(FileManager.default.fileExists(atPath: socket))
    }

    /// Many calls one after another on new connections, for the record: calls per second.
    func testSequentialCallRate() async throws {
        let served = try await ServedFixture()
        defer { Task { await served.stop() } }
        let client = served.client
        let calls = 500
        var latencies: [Duration] = []
        let clock = ContinuousClock()
        for _ in 0..<calls {
            let start = clock.now
            let answer = try await client.call("GET", "/v1/tenants/blue/ports")
            latencies.append(clock.now - start)
            XCTAssertEqual(answer.status, 200)
        }
        latencies.sort()
        let total = latencies.reduce(Duration.zero, +)
        let rate = Double(calls) / (Double(total.components.seconds) + Double(total.components.attoseconds) * 1e-18)
        print("management API: \(calls) sequential GET /v1/tenants/blue/ports, \(Int(rate)) calls/s, "
              + "p50 \(latencies[calls / 2]), p99 \(latencies[calls * 99 / 100])")
        XCTAssertEqual(served.audit.events.count, calls)
    }
}
