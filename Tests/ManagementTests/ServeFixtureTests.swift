import Foundation
import Logging
import Management
import XCTest

/// Serves the fixture's API on a socket for clients outside the test process (the schemathesis
/// run of Tests/Tools/api-fuzz.sh, or `bulkhead ctl` by hand):
///
///     BULKHEAD_API_SERVE=/tmp/api.sock BULKHEAD_API_SERVE_SECONDS=600 \
///       .build/debug/BulkheadPackageTests.xctest ManagementTests.ServeFixtureTests
///
/// It serves until the seconds pass or the file `<socket>.stop` appears. Skipped without the variable.
final class ServeFixtureTests: XCTestCase {
    func testServeFixtureForExternalClients() async throws {
        guard let socket = ProcessInfo.processInfo.environment["BULKHEAD_API_SERVE"], !socket.isEmpty else {
            throw XCTSkip("set BULKHEAD_API_SERVE=SOCKET to serve the fixture's API for an external client")
        }
        let seconds = ProcessInfo.processInfo.environment["BULKHEAD_API_SERVE_SECONDS"].flatMap(Int.init) ?? 300
        let audit = MemoryAuditLog()
        let backend = try FixtureBackend(audit: audit)
        var logger = Logger(label: "management-serve")
        logger.logLevel = .notice
        let server = ManagementServer(socketPath: socket, socketGroup: ServedFixture.group, backend: backend,
                                      record: { try audit.record($0) }, logger: logger)
        let task = Task { try await server.run() }
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline, !FileManager.default.fileExists(atPath: socket + ".stop") {
            try await Task.sleep(for: .milliseconds(200))
        }
        task.cancel()
        _ = try? await task.value
        try? FileManager.default.removeItem(atPath: socket + ".stop")
        print("served \(audit.events.count) calls; \(audit.events.filter { $0.outcome != .allowed }.count) not allowed")
    }
}
