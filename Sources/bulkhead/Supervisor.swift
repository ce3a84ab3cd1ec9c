import Foundation
import HostOS
import Logging
import ServiceLifecycle
import Synchronization

/// One child process the daemon keeps running: a tenant's block server, the switch, later a
/// partition.
struct ChildSpec: Sendable {
    /// What the logs call it ("switch", "block server").
    let name: String
    /// Logged with every line about it (`tenant.id`, ...).
    let metadata: Logger.Metadata
    /// `bulkhead` subcommand and arguments.
    let arguments: [String]
    /// Runs on a thread of its own from the child's start until the child's end of the control
    /// socket closes (it exited), with the daemon's end: the switch is handed its ports and sends
    /// counters here. Nil for a child that needs only the lifeline.
    let attach: (@Sendable (borrowing UnixStream, _ pid: Int32) -> Void)?
}

/// Runs every child of the daemon, restarts one that dies, and stops them all at shutdown.
///
/// Each child's stdin is its end of a SOCK_SEQPACKET socket pair whose other end only this
/// process holds (close-on-exec): when the daemon dies, however it dies, the child reads end of
/// file and stops, so no child outlives it. The same socket carries the child's control messages.
///
/// A child that dies is logged with the reason (exit status, or the signal: SIGSYS is its
/// seccomp policy, SIGKILL an outside kill or the OOM killer) and restarted at once, then after
/// 0.1 s, 0.2 s, ... up to 30 s while it keeps dying; a child that ran for 30 s starts the
/// sequence again.
struct ChildSupervisor: Service {
    let children: [ChildSpec]
    let logger: Logger

    /// Send and receive buffers of each control socket: the largest message (a statistics
    /// snapshot) must fit.
    static let controlBufferBytes = 8 << 20

    /// The running processes and whether shutdown has begun, shared with the shutdown handler.
    final class Running: Sendable {
        private let state = Mutex<(processes: [Int: Process], stopping: Bool)>(([:], false))

        var stopping: Bool { state.withLock { $0.stopping } }

        /// Records a started child; returns false (and stops it) when shutdown already began.
        func register(_ slot: Int, _ process: Process) -> Bool {
            let stopping = state.withLock { s -> Bool in
                s.processes[slot] = process
                return s.stopping
            }
            if stopping, process.isRunning { process.terminate() }
            return !stopping
        }

        func stopAll() {
            let processes = state.withLock { s -> [Process] in
                s.stopping = true
                return Array(s.processes.values)
            }
            for process in processes where process.isRunning { process.terminate() }
        }
    }

    func run() async throws {
        if children.isEmpty {
            try? await gracefulShutdown()
            return
        }
        let running = Running()
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                for (slot, child) in children.enumerated() {
                    group.addTask { await supervise(child, slot: slot, executable: executable, running: running) }
                }
            }
        } onGracefulShutdown: {
            running.stopAll()
        }
    }

    private func supervise(_ child: ChildSpec, slot: Int, executable: String, running: Running) async {
        var logger = self.logger
        for (key, value) in child.metadata { logger[metadataKey: key] = value }
        var backoff: Duration = .zero
        while !running.stopping {
            let started = ContinuousClock.now
            let ended = await runOnce(child, slot: slot, executable: executable, running: running, logger: logger)
            if running.stopping { break }
            if ContinuousClock.now - started > .seconds(30) { backoff = .zero }
            logger.error("\(child.name) exited (\(ended)); restarting it", metadata: [
                "restart.after.ms": "\(backoff.components.seconds * 1000 + backoff.components.attoseconds / 1_000_000_000_000_000)",
            ])
            if backoff > .zero { try? await Task.sleep(for: backoff) }
            backoff = backoff == .zero ? .milliseconds(100) : min(backoff * 2, .seconds(30))
        }
    }

    /// Starts the child once and waits until it has exited and its control socket is done;
    /// returns why it ended, in words.
    private func runOnce(_ child: ChildSpec, slot: Int, executable: String, running: Running, logger: Logger) async -> String {
        let daemonEnd: Int32, childEnd: Int32
        do {
            let pair = try UnixStream.pair()
            // A statistics snapshot is one message: the buffers bound the largest.
            try pair.first.setBufferSize(ChildSupervisor.controlBufferBytes)
            try pair.second.setBufferSize(ChildSupervisor.controlBufferBytes)
            (daemonEnd, childEnd) = pair.release()
        } catch {
            return "could not get a control socket: \(error)"
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = child.arguments
        // Process dup2s the child's end onto its fd 0 (clearing close-on-exec there only).
        process.standardInput = FileHandle(fileDescriptor: childEnd, closeOnDealloc: false)
        let exit = ExitWaiter()
        process.terminationHandler = { exit.finish(($0.terminationReason, $0.terminationStatus)) }
        do {
            try process.run()
        } catch {
            _ = close(childEnd)
            _ = close(daemonEnd)
            return "could not be started: \(error)"
        }
        // Only the child may hold its end: the daemon's end then sees end of file when it exits.
        _ = close(childEnd)
        _ = running.register(slot, process)
        let pid = process.processIdentifier
        if let attach = child.attach {
            // The thread owns the daemon's end and closes it when `attach` returns (at the
            // child's end of file, or on a failure, which makes the child stop and restart).
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                let thread = Thread {
                    setCurrentThreadName("attach-\(pid)")
                    let control = UnixStream(FileDescriptor(taking: daemonEnd))
                    attach(control, pid)
                    done.resume()
                }
                thread.start()
            }
            let status = await exit.wait()
            return ChildSupervisor.describe(status.reason, status.code)
        }
        let status = await exit.wait()
        _ = close(daemonEnd)
        return ChildSupervisor.describe(status.reason, status.code)
    }

    static func describe(_ reason: Process.TerminationReason, _ code: Int32) -> String {
        switch reason {
        case .exit: return "status \(code)"
        case .uncaughtSignal:
            switch code {
            case SIGSYS: return "killed by its seccomp policy: SIGSYS, a system call outside its allowlist"
            case SIGKILL: return "killed by SIGKILL: from outside, or the kernel's OOM killer"
            default: return "killed by signal \(code)"
            }
        @unknown default: return "reason \(code)"
        }
    }
}

/// A child's termination, awaited once.
final class ExitWaiter: Sendable {
    typealias Status = (reason: Process.TerminationReason, code: Int32)
    private let state = Mutex<(status: Status?, waiter: CheckedContinuation<Status, Never>?)>((nil, nil))

    func finish(_ status: Status) {
        let waiter = state.withLock { s -> CheckedContinuation<Status, Never>? in
            s.status = status
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume(returning: status)
    }

    func wait() async -> Status {
        await withCheckedContinuation { continuation in
            let status = state.withLock { s -> Status? in
                if s.status == nil { s.waiter = continuation }
                return s.status
            }
            if let status { continuation.resume(returning: status) }
        }
    }
}
