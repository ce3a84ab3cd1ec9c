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
        let run = try Host.run([tool, "\(pid)", "\(number)"] + arguments.map { "\($0)" })
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
}
