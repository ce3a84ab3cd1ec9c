import Foundation
import XCTest

/// A jailed child probed from inside, as code that took it over would act: the test makes one of
/// the daemon's children execute a system call of its choosing (`Tests/Tools/syscall-inject.c`,
/// ptrace). A call outside the child's allowlist kills it (SIGSYS), the audit log says so with
/// the reason, the supervisor restarts it, and the other tenant's children are not touched.
final class JailProbeTests: XCTestCase {
    private func ns(_ tenant: String, _ port: String) -> String { TestTopology.namespace(tenant, port) }

    /// Builds the injector once per test process.
    static let injector: Result<String, Error> = Result {
        guard let cc = Host.which("cc") else { throw XCTSkip("needs cc to build Tests/Tools/syscall-inject.c") }
        let output = NSTemporaryDirectory() + "bulkhead-syscall-inject-\(getpid())"
        let build = try Host.run([cc, "-O2", "-o", output,
                                  TestTopology.repository.appendingPathComponent("Tests/Tools/syscall-inject.c").path])
        guard build.status == 0 else { throw DaemonFailure(message: "cc failed: \(build.output)\(build.error)") }
        return output
    }

    /// Makes thread `pid` call system call `number` with `arguments`.
    static func inject(_ pid: Int32, _ number: Int, _ arguments: [UInt64] = []) throws {
        let tool = try injector.get()
        var run = try Host.run([tool, "\(pid)", "\(number)"] + arguments.map { "\($0)" })
        // The thread may have been caught between two system calls (it sends its counters once a
        // second): it is let go untouched, and caught again.
        for _ in 0..<20 where run.status != 0 && run.error.contains("not stopped after a syscall") {
            Thread.sleep(forTimeInterval: 0.05)
            run = try Host.run([tool, "\(pid)", "\(number)"] + arguments.map { "\($0)" })
        }
        guard run.status == 0 else {
            if run.error.contains("PTRACE_SEIZE") { throw XCTSkip("needs ptrace (CAP_SYS_PTRACE) to probe a jailed child: \(run.error)") }
            throw DaemonFailure(message: "syscall-inject failed: \(run.output)\(run.error)")
        }
    }

    /// The audit log's records, decoded.
    static func auditRecords(_ daemon: RunningDaemon) throws -> [[String: Any]] {
        let text = try String(contentsOfFile: daemon.stateDirectory + "/audit.log", encoding: .utf8)
        return text.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    func testAForbiddenSystemCallKillsTheChildAndTheAuditLogSaysSo() throws {
        try Host.requireNetworkPrivileges()
        try BlockHost.requireRoot()
        let daemon = try RunningDaemon(configuration: try TestTopology.demo())
        try daemon.waitForForwarding()
        let blue = try XCTUnwrap(SwitchHost.switches(of: daemon, tenant: "blue").first)
        let red = SwitchHost.switches(of: daemon, tenant: "red")
        var redBlockServer: [Int32] = []
        try BlockHost.waitFor("red's block server", timeout: 30) {
            redBlockServer = SwitchHost.children(of: daemon, "block-server", tenant: "red")
            return redBlockServer.count == 1
        }

        // socket(AF_INET, SOCK_STREAM, 0): a switch that was taken over reaching for the network.
        try JailProbeTests.inject(blue, 41, [2, 1, 0])
        try daemon.waitFor("switch exited (killed by its seccomp policy: SIGSYS", timeout: 10)
        try BlockHost.waitFor("the audit record of the kill", timeout: 10) {
            ((try? JailProbeTests.auditRecords(daemon)) ?? []).contains {
                $0["action"] as? String == "switch.exit" && $0["target"] as? String == "blue" && $0["outcome"] as? String == "failed"
                    && ($0["reason"] as? String ?? "").contains("seccomp")
            }
        }
        // Restarted on the same TAP devices; red's children never noticed.
        try BlockHost.waitFor("blue's switch back", timeout: 30) {
            let now = SwitchHost.switches(of: daemon, tenant: "blue")
            return now.count == 1 && now != [blue]
        }
        var ping = Host.Result(status: -1, output: "", error: "")
        try BlockHost.waitFor("blue forwarding again", timeout: 15) {
            ping = (try? Host.inNamespace(ns("blue", "a"), ["ping", "-c", "1", "-W", "1", "10.0.0.2"])) ?? ping
            return ping.status == 0
        }
        XCTAssertEqual(SwitchHost.switches(of: daemon, tenant: "red"), red, "red's switch is the same process")
        XCTAssertEqual(SwitchHost.children(of: daemon, "block-server", tenant: "red"), redBlockServer)
        let verify = try Host.run([RunningDaemon.binary, "audit", "verify", daemon.stateDirectory + "/audit.log"])
        XCTAssertEqual(verify.status, 0, "the audit log's chain is intact: \(verify.output)\(verify.error)")
        XCTAssertEqual(daemon.stop(), 0, daemon.output)
    }

    /// A block server made to allocate 1 GiB at once (mmap with MAP_POPULATE) is held to its
    /// cgroup's 64 MiB: the OOM killer ends it, the audit log says so, it is restarted, and the
    /// other tenant's block server never notices.
    func testAChildThatAllocatesWithoutBoundIsHeldToItsLimit() throws {
        try Host.requireNetworkPrivileges()
        try BlockHost.requireRoot()
        var configuration = try TestTopology.demo()
        var host = configuration["host"] as? [String: Any] ?? [:]
        host["limits"] = ["blockServer": ["memoryMiB": 64]]
        configuration["host"] = host
        let daemon = try RunningDaemon(configuration: configuration)
        if let line = daemon.output.split(separator: "\n").first(where: { $0.contains("children run WITHOUT resource limits") }) {
            throw XCTSkip("cgroup v2 is not delegated to the daemon on this host, so no limit can hold a child: \(line)")
        }
        try daemon.waitFor("children run in cgroups of their own", timeout: 5)
        var blue: Int32 = 0, red: Int32 = 0
        try BlockHost.waitFor("a block server per tenant", timeout: 30) {
            let b = SwitchHost.children(of: daemon, "block-server", tenant: "blue")
            let r = SwitchHost.children(of: daemon, "block-server", tenant: "red")
            (blue, red) = (b.first ?? 0, r.first ?? 0)
            return b.count == 1 && r.count == 1 && daemon.output.occurrences(of: "block server ready") >= 2
        }
        // mmap(NULL, 1 GiB, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_POPULATE, -1, 0)
        try JailProbeTests.inject(blue, 9, [0, 1 << 30, 3, 0x8022, UInt64(bitPattern: -1), 0])
        try daemon.waitFor("killed by the OOM killer", timeout: 20)
        try BlockHost.waitFor("the audit record of the OOM kill", timeout: 10) {
            ((try? JailProbeTests.auditRecords(daemon)) ?? []).contains {
                $0["action"] as? String == "block-server.exit" && $0["target"] as? String == "blue"
                    && ($0["reason"] as? String ?? "").contains("OOM killer")
            }
        }
        try BlockHost.waitFor("blue's block server back", timeout: 30) {
            let now = SwitchHost.children(of: daemon, "block-server", tenant: "blue")
            return now.count == 1 && now != [blue]
        }
        XCTAssertEqual(SwitchHost.children(of: daemon, "block-server", tenant: "red"), [red], "red's block server never noticed")
        XCTAssertEqual(daemon.stop(), 0, daemon.output)
    }
}
