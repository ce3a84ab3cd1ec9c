import Foundation
import XCTest

/// The jailed processes' system-call allowlists, probed from inside: `Tests/Tools/seccomp-probe.c`
/// is built with the real filter code (`Sources/CLinux/CLinux.c`), installs a profile the way the
/// switch and the block server do, and makes one call. A call outside the list must kill it
/// (SIGSYS); a path lookup must fail as the empty root would; the calls a server lives on work.
final class SeccompProfileTests: XCTestCase {
    private static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    /// Builds the probe once per test run.
    private static let probe: Result<String, Error> = Result {
        let output = NSTemporaryDirectory() + "bulkhead-seccomp-probe-\(getpid())"
        let cc = Process()
        cc.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        cc.arguments = ["cc", "-O1", "-o", output,
                        repository.appendingPathComponent("Tests/Tools/seccomp-probe.c").path,
                        repository.appendingPathComponent("Sources/CLinux/CLinux.c").path,
                        "-I", repository.appendingPathComponent("Sources/CLinux/include").path]
        try cc.run()
        cc.waitUntilExit()
        guard cc.terminationStatus == 0 else { throw XCTSkip("needs a C compiler (cc) to build the seccomp probe") }
        return output
    }

    /// Runs the probe; returns the signal that killed it, or nil and what the call returned.
    private func run(_ profile: String, _ call: String) throws -> (signal: Int32?, output: String) {
        let binary = try SeccompProfileTests.probe.get()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = [profile, call]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        if process.terminationReason == .uncaughtSignal { return (process.terminationStatus, output) }
        XCTAssertEqual(process.terminationStatus, 0, "\(profile) \(call): the probe itself failed: \(output)")
        return (nil, output.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Calls a compromised server would use to escape, reach the network or the host, gain
    /// privileges or build new unrestricted rings.
    private let forbidden = ["socket", "socket-unix", "connect", "io_uring_setup", "io_uring_register-files", "fork",
                             "execve", "ptrace", "unshare", "mount", "setuid", "kill-1", "mmap-exec", "bpf",
                             "memfd_create", "ioctl", "sched_getaffinity-1"]

    func testTheSwitchProfileKillsOnEveryEscapeCall() throws {
        for call in forbidden {
            XCTAssertEqual(try run("switch", call).signal, SIGSYS, "switch: \(call) must kill the process")
        }
    }

    func testTheBlockServerProfileKillsOnEveryEscapeCall() throws {
        for call in forbidden {
            XCTAssertEqual(try run("block-server", call).signal, SIGSYS, "block server: \(call) must kill the process")
        }
    }

    /// The partition (the VMM, which the guest talks to) may keep running its VM and re-wire
    /// doorbells and interrupts, nothing more of KVM: no new VMs, vCPUs, memory or registers.
    func testThePartitionProfileKillsOnEveryEscapeCallAndEveryKVMSetupRequest() throws {
        let kvmSetup = ["kvm-create-vm", "kvm-create-vcpu", "kvm-set-memory", "kvm-set-regs", "kvm-set-cpuid"]
        for profile in ["partition", "vcpu"] {
            // A broken device's reconnect asks for a socket: refused, the process lives on.
            for call in ["socket", "socket-unix"] {
                XCTAssertEqual(try run(profile, call).output, "-1 \(EACCES)", "\(profile): \(call) fails")
            }
            for call in forbidden.filter({ !$0.hasPrefix("socket") }) + kvmSetup {
                XCTAssertEqual(try run(profile, call).signal, SIGSYS, "\(profile): \(call) must kill the process")
            }
            for call in ["kvm-run", "kvm-irqfd"] {
                let result = try run(profile, call)
                XCTAssertNil(result.signal, "\(profile): \(call) is allowed")
                XCTAssertEqual(result.output, "-1 \(EBADF)", "\(profile): \(call) on no VM")
            }
        }
        // A vCPU thread, the code that emulates devices for the guest, is tighter still.
        XCTAssertNil(try run("partition", "prctl-name").signal)
        XCTAssertNil(try run("partition", "fcntl-dup").signal)
        XCTAssertEqual(try run("vcpu", "prctl-name").signal, SIGSYS, "vcpu: prctl must kill the process")
        XCTAssertEqual(try run("vcpu", "fcntl-dup").signal, SIGSYS, "vcpu: fcntl must kill the process")
    }

    func testAllowedCallsWorkAndPathsAnswerAsTheEmptyRoot() throws {
        for profile in ["switch", "block-server", "partition", "vcpu"] {
            let pid = try run(profile, "getpid")
            XCTAssertNil(pid.signal, "\(profile): getpid is allowed")
            XCTAssertTrue(pid.output.hasSuffix(" 0"), "\(profile): getpid returned \(pid.output)")
            // glibc's malloc reads its own CPU mask once a ninth thread allocates (a block server
            // with many volumes): that must not kill the process.
            let affinity = try run(profile, "sched_getaffinity-self")
            XCTAssertNil(affinity.signal, "\(profile): sched_getaffinity(0) is allowed")
            // openat answers ENOENT (2) instead of killing: glibc looks for files now and then.
            XCTAssertEqual(try run(profile, "openat").output, "-1 \(ENOENT)", "\(profile): openat of /etc/passwd")
        }
    }
}
