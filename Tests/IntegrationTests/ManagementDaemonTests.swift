import Foundation
import XCTest

/// The management API of a running daemon, called with `bulkhead ctl` from separate uids as new
/// users of each role would: what each may see and do, that another tenant's objects are
/// invisible to a tenant's principals, and that every call lands in the audit log.
final class ManagementDaemonTests: XCTestCase {
    /// The socket's group (host.controlSocketGroup) and the demo's principals.
    static let group: UInt32 = 64990
    static let operatorUID: UInt32 = 64991, blueAdmin: UInt32 = 64992, redAdmin: UInt32 = 64993
    static let blueViewer: UInt32 = 64994, auditor: UInt32 = 64995, stranger: UInt32 = 64999

    struct Call { var status: Int32; var stdout: String; var stderr: String }

    /// A copy of `bulkhead` every uid can run (the build directory may be private to root).
    static let ctlBinary: Result<String, Error> = Result {
        let copy = NSTemporaryDirectory() + "bulkhead-ctl-\(getpid())"
        try? FileManager.default.removeItem(atPath: copy)
        try FileManager.default.copyItem(atPath: RunningDaemon.binary, toPath: copy)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: copy)
        return copy
    }

    /// `bulkhead ctl --socket S ARGS` as `uid` with group `gid` only.
    static func ctl(_ daemon: RunningDaemon, as uid: UInt32, gid: UInt32 = group, _ arguments: [String]) throws -> Call {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        process.arguments = ["--reuid=\(uid)", "--regid=\(gid)", "--clear-groups", "--", try ctlBinary.get(), "ctl",
                             "--socket", daemon.stateDirectory + "/control.sock"] + arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Call(status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
                    stderr: String(decoding: stderr, as: UTF8.self))
    }

    static func json(_ call: Call) -> Any? { try? JSONSerialization.jsonObject(with: Data(call.stdout.utf8)) }

    static func requirements() throws {
        try Host.requireNetworkPrivileges()
        try BlockHost.requireRoot()
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv") else {
            throw XCTSkip("needs setpriv (util-linux) to call the API from other uids")
        }
    }

    /// The demo topology with the management socket's group set.
    static func configuration() throws -> [String: Any] {
        var configuration = try TestTopology.demo()
        var host = configuration["host"] as? [String: Any] ?? [:]
        host["controlSocketGroup"] = group
        configuration["host"] = host
        return configuration
    }

    func testEachRoleFromItsOwnUid() throws {
        try Self.requirements()
        let daemon = try RunningDaemon(configuration: try Self.configuration())
        try daemon.waitForForwarding()
        func ctl(_ uid: UInt32, gid: UInt32 = Self.group, _ arguments: String...) throws -> Call {
            try Self.ctl(daemon, as: uid, gid: gid, arguments)
        }

        // Not in the socket's group: cannot even connect. In the group but no principal: nothing.
        var call = try ctl(Self.blueAdmin, gid: 4242, "health")
        XCTAssertEqual(call.status, 2, "no access to the socket file: \(call.stderr)")
        call = try ctl(Self.stranger, "health")
        XCTAssertEqual(call.status, 1)
        XCTAssertTrue(call.stderr.contains("caller uid \(Self.stranger) is not a principal of this host"), call.stderr)
        call = try ctl(Self.stranger, "--json", "tenants")
        XCTAssertFalse(call.stdout.contains("blue") || call.stderr.contains("blue"), "an unknown caller learns nothing")

        // A tenant's admin sees its own tenant's objects only; the other tenant does not exist for it.
        call = try ctl(Self.blueAdmin, "--json", "tenants")
        XCTAssertEqual(call.status, 0, call.stderr)
        XCTAssertTrue(call.stdout.contains("\"blue\"") && !call.stdout.contains("\"red\""), call.stdout)
        call = try ctl(Self.blueAdmin, "--json", "ports", "--tenant", "red")
        XCTAssertEqual(call.status, 1)
        let missing = try ctl(Self.blueAdmin, "--json", "ports", "--tenant", "green")
        XCTAssertEqual(call.stderr.replacingOccurrences(of: "red", with: "X"),
                       missing.stderr.replacingOccurrences(of: "green", with: "X"),
                       "red is answered exactly like a tenant that does not exist")
        call = try ctl(Self.blueAdmin, "--json", "status")
        XCTAssertEqual(call.status, 0, call.stderr)
        let children = (Self.json(call) as? [String: Any])?["children"] as? [[String: Any]] ?? []
        XCTAssertFalse(children.isEmpty, call.stdout)
        XCTAssertEqual(Set(children.compactMap { $0["tenant"] as? String }), ["blue"], "only blue's children: \(call.stdout)")
        call = try ctl(Self.blueAdmin, "--json", "counters")
        XCTAssertEqual(call.status, 0, call.stderr)
        XCTAssertFalse(call.stdout.contains("\"red\""), "no counter of red's ports: \(call.stdout)")
        call = try ctl(Self.blueViewer, "--json", "counters", "--tenant", "red")
        XCTAssertEqual(call.status, 1)

        // No configuration change but the host admin's, and a refused one changes nothing.
        let document = FileManager.default.temporaryDirectory.appendingPathComponent("bulkhead-apply-\(getpid()).json").path
        var changed = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: daemon.configPath))) as? [String: Any] ?? [:]
        var tenants = changed["tenants"] as? [[String: Any]] ?? []
        tenants[1]["volumes"] = (tenants[1]["volumes"] as? [[String: Any]] ?? []) + [["id": "extra", "sizeBytes": 16 << 20]]
        changed["tenants"] = tenants
        try JSONSerialization.data(withJSONObject: changed).write(to: URL(fileURLWithPath: document))
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: document)
        defer { try? FileManager.default.removeItem(atPath: document) }
        let redServer = SwitchHost.children(of: daemon, "block-server", tenant: "red")
        let blueServer = SwitchHost.children(of: daemon, "block-server", tenant: "blue")
        for uid in [Self.operatorUID, Self.blueAdmin, Self.redAdmin, Self.auditor] {
            call = try ctl(uid, "apply", document)
            XCTAssertEqual(call.status, 1, "uid \(uid) may not apply: \(call.stdout)")
            XCTAssertTrue(call.stderr.contains("may not"), call.stderr)
        }
        XCTAssertEqual(SwitchHost.children(of: daemon, "block-server", tenant: "red"), redServer, "a refused apply changes nothing")
        call = try ctl(0, gid: 0, "apply", document)
        XCTAssertEqual(call.status, 0, call.stderr)
        XCTAssertTrue(call.stdout.contains("tenant red: block server restarts"), call.stdout)
        try BlockHost.waitFor("red's block server restarted", timeout: 30) {
            let now = SwitchHost.children(of: daemon, "block-server", tenant: "red")
            return now.count == 1 && now != redServer
        }
        XCTAssertEqual(SwitchHost.children(of: daemon, "block-server", tenant: "blue"), blueServer, "blue's did not change")

        // The operator reads everything but the audit log; the auditor reads the audit log.
        call = try ctl(Self.operatorUID, "--json", "counters")
        XCTAssertEqual(call.status, 0, call.stderr)
        XCTAssertTrue(call.stdout.contains("\"red\"") && call.stdout.contains("\"blue\""), call.stdout)
        call = try ctl(Self.operatorUID, "audit")
        XCTAssertEqual(call.status, 1)
        call = try ctl(Self.auditor, "--json", "audit", "--limit", "1000")
        XCTAssertEqual(call.status, 0, call.stderr)

        // Every call above is in the chained log, allowed or denied, with the caller's uid.
        let records = try JailProbeTests.auditRecords(daemon)
        XCTAssertTrue(records.contains { $0["uid"] as? Int == Int(Self.stranger) && $0["principal"] as? String == "unknown"
            && $0["outcome"] as? String == "denied" }, "the unknown caller is recorded")
        XCTAssertTrue(records.contains { $0["principal"] as? String == "blue-admin" && $0["action"] as? String == "api.configuration.apply"
            && $0["outcome"] as? String == "denied" }, "the refused apply is recorded")
        XCTAssertTrue(records.contains { $0["principal"] as? String == "ops" && ($0["action"] as? String ?? "").hasPrefix("api.configuration.apply")
            && $0["outcome"] as? String == "allowed" }, "the applied one too")
        let verify = try Host.run([RunningDaemon.binary, "audit", "verify", daemon.stateDirectory + "/audit.log"])
        XCTAssertEqual(verify.status, 0, verify.output + verify.error)
        XCTAssertEqual(daemon.stop(), 0, daemon.output)
    }

    /// A tenant's admin stops and starts its own partition; the other tenant's admin cannot see
    /// it, let alone stop it; the operator may restart it.
    func testPartitionLifecycleByRole() throws {
        try Self.requirements()
        let image = try PartitionGuestImage.require()
        // The guests run a 60 s benchmark: they are running when the calls come.
        let bed = try PartitionTestbed(image: image, guests: [
            PartitionTestbed.Guest(tenant: "blue", cmdline: "blk bench=randread seconds=60", nics: []),
            PartitionTestbed.Guest(tenant: "red", cmdline: "blk bench=randread seconds=60", nics: []),
        ], hostSettings: ["controlSocketGroup": Self.group])
        let daemon = bed.daemon
        let first = try bed.process("partition", tenant: "blue", id: "p")
        let red = try bed.process("partition", tenant: "red", id: "p")

        var call = try Self.ctl(daemon, as: Self.redAdmin, ["partition", "stop", "blue/p"])
        XCTAssertEqual(call.status, 1)
        XCTAssertTrue(call.stderr.contains("no tenant \"blue\""), "blue is invisible to red's admin: \(call.stderr)")
        call = try Self.ctl(daemon, as: Self.blueViewer, ["partition", "stop", "blue/p"])
        XCTAssertEqual(call.status, 1, "a viewer may not stop: \(call.stdout)")
        XCTAssertEqual(bed.processes("partition", tenant: "blue", id: "p"), [first], "still running")

        call = try Self.ctl(daemon, as: Self.blueAdmin, ["partition", "stop", "blue/p"])
        XCTAssertEqual(call.status, 0, call.stderr)
        XCTAssertEqual(bed.processes("partition", tenant: "blue", id: "p"), [], "stopped when the call returned")
        call = try Self.ctl(daemon, as: Self.blueAdmin, ["--json", "status"])
        let children = (Self.json(call) as? [String: Any])?["children"] as? [[String: Any]] ?? []
        XCTAssertEqual(children.first { $0["kind"] as? String == "partition" }?["state"] as? String, "stopped", call.stdout)
        call = try Self.ctl(daemon, as: Self.blueAdmin, ["partition", "start", "blue/p"])
        XCTAssertEqual(call.status, 0, call.stderr)
        let second = try bed.process("partition", tenant: "blue", id: "p")
        XCTAssertNotEqual(second, first)
        call = try Self.ctl(daemon, as: Self.operatorUID, ["partition", "restart", "blue/p"])
        XCTAssertEqual(call.status, 0, call.stderr)
        let third = try bed.process("partition", tenant: "blue", id: "p")
        XCTAssertNotEqual(third, second)
        XCTAssertEqual(bed.processes("partition", tenant: "red", id: "p"), [red], "red's partition was never touched")

        let records = try JailProbeTests.auditRecords(daemon)
        let actions = records.filter { $0["target"] as? String == "blue/p" }.map {
            "\($0["principal"] as? String ?? "") \($0["action"] as? String ?? "") \($0["outcome"] as? String ?? "")"
        }
        for expected in ["red-admin api.partition.stop denied", "blue-viewer api.partition.stop denied",
                         "blue-admin api.partition.stop allowed", "bulkhead partition.exit allowed",
                         "blue-admin api.partition.start allowed", "bulkhead launch.measured allowed",
                         "operator api.partition.restart allowed"] {
            XCTAssertTrue(actions.contains(expected), "audit log has '\(expected)': \(actions)")
        }
    }
}
