import Config
import Foundation
import ManagementModel
import XCTest

/// Every role tried as a new user would: from its own uid, through the socket's peer
/// credentials, with curl (exact status codes) and with `bulkhead ctl` (exit codes, output).
/// Needs root (to take other uids with setpriv), setpriv and curl.
final class RealUidTests: XCTestCase {
    private var served: ServedFixture!

    private static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    /// A copy of the built `bulkhead` that every uid can run: the checkout (and its build
    /// directory) may be private to root, as a clone in root's home is.
    private static let bulkhead: String = {
        let built = repository.appendingPathComponent(".build/debug/bulkhead").path
        let copy = NSTemporaryDirectory() + "bulkhead-ctl-realuid-\(getpid())"
        try? FileManager.default.removeItem(atPath: copy)
        guard (try? FileManager.default.copyItem(atPath: built, toPath: copy)) != nil,
              (try? FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: copy)) != nil else { return built }
        return copy
    }()

    override func setUp() async throws {
        guard getuid() == 0 else { throw XCTSkip("needs root: the test connects from other uids with setpriv") }
        for tool in ["/usr/bin/setpriv", "/usr/bin/curl"] where !FileManager.default.isExecutableFile(atPath: tool) {
            throw XCTSkip("needs \(tool)")
        }
        served = try await ServedFixture()
    }

    override func tearDown() async throws {
        await served?.stop()
    }

    private struct Run { var status: Int32; var stdout: String; var stderr: String }

    /// Runs `arguments` as `uid` with group `gid` only.
    private func run(as uid: UInt32, gid: UInt32 = ServedFixture.group, _ arguments: [String]) throws -> Run {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        process.arguments = ["--reuid=\(uid)", "--regid=\(gid)", "--clear-groups", "--"] + arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Run(status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
                   stderr: String(decoding: stderr, as: UTF8.self))
    }

    /// One call with curl as `uid`: the status and the body.
    private func curl(as uid: UInt32, _ method: String, _ target: String, body: String? = nil) throws -> (Int, String) {
        var arguments = ["/usr/bin/curl", "-sS", "--unix-socket", served.socketPath, "-X", method,
                         "-o", "-", "-w", "\n%{http_code}", "http://localhost\(target)"]
        if let body {
            let file = served.directory + "/body-\(UUID().uuidString).json"
            try body.write(toFile: file, atomically: true, encoding: .utf8)
            try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: file)
            arguments += ["-H", "Content-Type: application/json", "--data-binary", "@\(file)"]
        }
        let result = try run(as: uid, arguments)
        XCTAssertEqual(result.status, 0, "curl as \(uid): \(result.stderr)")
        guard let newline = result.stdout.lastIndex(of: "\n") else { return (0, result.stdout) }
        return (Int(result.stdout[result.stdout.index(after: newline)...]) ?? 0, String(result.stdout[..<newline]))
    }

    private func reason(_ body: String) -> String? {
        JSONParser.parse(body).value?["error"]?["reason"]?.stringValue
    }

    func testEachRoleFromItsOwnUid() throws {
        let withoutRed = fixtureDocument.replacingOccurrences(of: #""vni": 5001"#, with: #""vni": 5009"#)
        typealias Case = (uid: UInt32, method: String, target: String, body: String?, status: Int)
        let cases: [Case] = [
            // Unknown callers get nothing, health included.
            (FixtureUID.unknown, "GET", "/v1/health", nil, 403),
            (FixtureUID.unknown, "GET", "/v1/tenants", nil, 403),
            (FixtureUID.unknown, "POST", "/v1/tenants/blue/partitions/guest/stop", nil, 403),
            (FixtureUID.unknown, "GET", "/v1/no-such-route", nil, 403),
            // Blue's tenant-admin: its own tenant, nothing of red's.
            (FixtureUID.blueAdmin, "GET", "/v1/health", nil, 200),
            (FixtureUID.blueAdmin, "GET", "/v1/tenants/blue/ports/a", nil, 200),
            (FixtureUID.blueAdmin, "GET", "/v1/tenants/red", nil, 404),
            (FixtureUID.blueAdmin, "GET", "/v1/tenants/red/ports/red-port", nil, 404),
            (FixtureUID.blueAdmin, "GET", "/v1/counters?tenant=red", nil, 404),
            (FixtureUID.blueAdmin, "POST", "/v1/tenants/red/partitions/red-guest/stop", nil, 404),
            (FixtureUID.blueAdmin, "PUT", "/v1/configuration", withoutRed, 403),
            (FixtureUID.blueAdmin, "PUT", "/v1/configuration?dryRun=true", withoutRed, 403),
            (FixtureUID.blueAdmin, "GET", "/v1/configuration", nil, 403),
            (FixtureUID.blueAdmin, "GET", "/v1/audit", nil, 403),
            (FixtureUID.blueAdmin, "POST", "/v1/tenants/blue/partitions/guest/restart", nil, 200),
            // Blue's viewer reads, changes nothing.
            (FixtureUID.blueViewer, "GET", "/v1/tenants/blue/partitions/guest", nil, 200),
            (FixtureUID.blueViewer, "POST", "/v1/tenants/blue/partitions/guest/stop", nil, 403),
            (FixtureUID.blueViewer, "GET", "/v1/tenants/red/volumes", nil, 404),
            // The operator: every partition's lifecycle, no configuration, no audit log.
            (FixtureUID.operator, "GET", "/v1/tenants/red/ports", nil, 200),
            (FixtureUID.operator, "POST", "/v1/tenants/red/partitions/red-guest/stop", nil, 200),
            (FixtureUID.operator, "PUT", "/v1/configuration", withoutRed, 403),
            (FixtureUID.operator, "GET", "/v1/configuration", nil, 403),
            (FixtureUID.operator, "GET", "/v1/audit", nil, 403),
            // The auditor: reads everything, changes nothing.
            (FixtureUID.auditor, "GET", "/v1/configuration", nil, 200),
            (FixtureUID.auditor, "GET", "/v1/audit?limit=5", nil, 200),
            (FixtureUID.auditor, "GET", "/v1/counters", nil, 200),
            (FixtureUID.auditor, "POST", "/v1/tenants/red/partitions/red-guest/start", nil, 403),
            (FixtureUID.auditor, "PUT", "/v1/configuration", withoutRed, 403),
            // Red's tenant-admin cannot touch blue.
            (FixtureUID.redAdmin, "POST", "/v1/tenants/blue/partitions/guest/stop", nil, 404),
            (FixtureUID.redAdmin, "POST", "/v1/tenants/red/partitions/red-guest/start", nil, 200),
            // The host admin applies.
            (FixtureUID.hostAdmin, "PUT", "/v1/configuration?dryRun=true", withoutRed, 200),
        ]
        for test in cases {
            let (status, body) = try curl(as: test.uid, test.method, test.target, body: test.body)
            XCTAssertEqual(status, test.status, "uid \(test.uid) \(test.method) \(test.target): \(body)")
            if test.uid == FixtureUID.unknown {
                XCTAssertEqual(reason(body), "caller uid \(FixtureUID.unknown) is not a principal of this host")
            }
            if [FixtureUID.blueAdmin, FixtureUID.blueViewer].contains(test.uid) {
                for id in ["red-port", "red-vm", "red-disk", "red-guest", "secret-lan"] {
                    XCTAssertFalse(body.contains(id), "uid \(test.uid) \(test.target) leaks \(id): \(body)")
                }
            }
        }
        // Only the allowed changes happened, in order; nothing was applied.
        XCTAssertEqual(served.backend.actions, ["restart blue/guest", "stop red/red-guest", "start red/red-guest"])
        XCTAssertEqual(served.backend.applied, [])
        // Every call was recorded, under the principal the uid maps to.
        let events = served.audit.events
        XCTAssertEqual(events.count, cases.count)
        for (event, test) in zip(events, cases) {
            XCTAssertEqual(event.uid, test.uid)
            XCTAssertEqual(event.outcome == .allowed, test.status == 200, "\(event)")
        }
        XCTAssertEqual(events.first?.principal, "unknown")
        // Red answers blue's admin exactly like a tenant that does not exist.
        let red = try curl(as: FixtureUID.blueAdmin, "GET", "/v1/tenants/red/partitions")
        let green = try curl(as: FixtureUID.blueAdmin, "GET", "/v1/tenants/green/partitions")
        XCTAssertEqual(red.0, green.0)
        XCTAssertEqual(red.1.replacingOccurrences(of: "red", with: "green"), green.1)
        // Lists leave red out.
        let tenants = try curl(as: FixtureUID.blueViewer, "GET", "/v1/tenants")
        XCTAssertEqual(JSONParser.parse(tenants.1).value?["tenants"]?.arrayElements?.compactMap { $0["id"]?.stringValue }, ["blue"])
    }

    func testAUserOutsideTheSocketsGroupCannotConnect() throws {
        let result = try run(as: FixtureUID.blueAdmin, gid: 61_999,
                             ["/usr/bin/curl", "-sS", "--unix-socket", served.socketPath, "http://localhost/v1/health"])
        XCTAssertNotEqual(result.status, 0)
        XCTAssertTrue(result.stderr.lowercased().contains("permission denied") || result.stderr.contains("Couldn't connect"),
                      result.stderr)
        XCTAssertEqual(served.audit.events, [])
    }

    func testBulkheadCtlAsEachRole() throws {
        guard FileManager.default.isExecutableFile(atPath: Self.bulkhead) else {
            throw XCTSkip("needs \(Self.bulkhead): swift build --product bulkhead")
        }
        func ctl(_ uid: UInt32, gid: UInt32 = ServedFixture.group, _ arguments: String...) throws -> Run {
            try run(as: uid, gid: gid, [Self.bulkhead, "ctl", "--socket", served.socketPath] + arguments)
        }
        var result = try ctl(FixtureUID.blueViewer, "health")
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(result.stdout, "ok: you are blue-viewer (tenant-viewer, tenant blue)\n")

        result = try ctl(FixtureUID.blueAdmin, "ports")
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stdout.hasPrefix("TENANT  ID  KIND"), result.stdout)
        XCTAssertFalse(result.stdout.contains("red"), result.stdout)

        result = try ctl(FixtureUID.blueAdmin, "partition", "stop", "red/red-guest")
        XCTAssertEqual(result.status, 1)
        XCTAssertEqual(result.stderr, "error: no tenant \"red\"\n")

        result = try ctl(FixtureUID.operator, "--json", "partition", "stop", "red/red-guest")
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(JSONParser.parse(result.stdout).value?["done"]?.serialized(), "true")

        let file = served.directory + "/bad.json"
        try "{\n  \"host\": {\"stateDirectory\": \"/x\"},\n  \"tenants\": [{\"id\": \"Bad\"}]\n}\n".write(toFile: file, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: file)
        result = try ctl(FixtureUID.hostAdmin, "apply", "--dry-run", file)
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.stderr.hasPrefix("error: the configuration has 1 problem; nothing was changed\n  $.tenants[0].id (line 3, column"),
                      result.stderr)
        result = try ctl(FixtureUID.auditor, "apply", file)
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.stderr.contains("has role auditor, which may not apply configurations"), result.stderr)

        result = try ctl(FixtureUID.unknown, "status")
        XCTAssertEqual(result.status, 1)
        XCTAssertEqual(result.stderr, "error: caller uid \(FixtureUID.unknown) is not a principal of this host\n")

        result = try ctl(FixtureUID.blueAdmin, gid: 61_999, "health")
        XCTAssertEqual(result.status, 2)
        XCTAssertTrue(result.stderr.contains("permission denied on the control socket"), result.stderr)

        result = try run(as: 0, [Self.bulkhead, "ctl", "--socket", served.directory + "/missing.sock", "health"])
        XCTAssertEqual(result.status, 2)
        XCTAssertTrue(result.stderr.contains("no control socket at"), result.stderr)
        XCTAssertEqual(served.backend.actions, ["stop red/red-guest"])
    }
}
