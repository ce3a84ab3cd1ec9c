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
    /// `bulkhead` subcommand and arguments (or the arguments of `executable`).
    let arguments: [String]
    /// The program to run instead of this one (`bulkhead-vmm` for a partition); nil: this executable.
    var executable: String? = nil
    /// Runs on a thread of its own from the child's start until the child's end of the control
    /// socket closes (it exited), with the daemon's end: the switch is handed its ports and sends
    /// counters here. Nil for a child that needs only the lifeline.
    let attach: (@Sendable (borrowing UnixStream, _ pid: Int32) -> Void)?
    /// Whether the child is started again after it ended this way; a child that is not stays
    /// down until the daemon restarts (a partition whose guest powered off).
    var restartsAfter: @Sendable (ChildProcess.Ending) -> Bool = { _ in true }
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
/// sequence again. A child whose `restartsAfter` declines the way it ended stays down.
///
/// At shutdown every child gets SIGTERM, and SIGKILL if it is still running `stopTimeout` later.
struct ChildSupervisor: Service {
    let children: [ChildSpec]
    let logger: Logger
    /// How long a child has to stop after SIGTERM before it is killed.
    var stopTimeout: Duration = .seconds(10)

    /// Send and receive buffers of each control socket: the largest message (a statistics
    /// snapshot) must fit.
    static let controlBufferBytes = 8 << 20

    /// The running processes and whether shutdown has begun, shared with the shutdown handler.
    final class Running: Sendable {
        // A child is in `processes` from its start until it has been reaped: a pid is never
        // signalled after it could have been reused.
        private let state = Mutex<(processes: [Int: ChildProcess], stopping: Bool)>(([:], false))

        var stopping: Bool { state.withLock { $0.stopping } }

        /// Records a started child; stops it at once when shutdown already began.
        func register(_ slot: Int, _ child: ChildProcess) {
            let stopping = state.withLock { s -> Bool in
                s.processes[slot] = child
                return s.stopping
            }
            if stopping { child.signal(SIGTERM) }
        }

        /// The child of `slot` has been reaped.
        func unregister(_ slot: Int) {
            state.withLock { _ = $0.processes.removeValue(forKey: slot) }
        }

        func stopAll() {
            state.withLock { s in
                s.stopping = true
                for child in s.processes.values { child.signal(SIGTERM) }
            }
        }

        /// SIGKILL to every child not yet reaped: those that ignored SIGTERM.
        func killRemaining() -> Int {
            state.withLock { s in
                for child in s.processes.values { child.signal(SIGKILL) }
                return s.processes.count
            }
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
        } onGracefulShutdown: { [logger, stopTimeout] in
            running.stopAll()
            // The forced stop: a thread, since the task group above is what waits for the children.
            Thread {
                setCurrentThreadName("stop-timeout")
                Thread.sleep(forTimeInterval: Double(stopTimeout.components.seconds) + Double(stopTimeout.components.attoseconds) / 1e18)
                let killed = running.killRemaining()
                if killed > 0 { logger.error("\(killed) children did not stop within \(stopTimeout) of SIGTERM; killed them") }
            }.start()
        }
    }

    private func supervise(_ child: ChildSpec, slot: Int, executable: String, running: Running) async {
        var logger = self.logger
        for (key, value) in child.metadata { logger[metadataKey: key] = value }
        var backoff: Duration = .zero
        while !running.stopping {
            let started = ContinuousClock.now
            let (ending, ended) = await runOnce(child, slot: slot, executable: executable, running: running, logger: logger)
            if running.stopping { break }
            if let ending, !child.restartsAfter(ending) {
                logger.notice("\(child.name) exited (\(ended)); its restart policy keeps it down")
                break
            }
            if ContinuousClock.now - started > .seconds(30) { backoff = .zero }
            logger.error("\(child.name) exited (\(ended)); restarting it", metadata: [
                "restart.after.ms": "\(backoff.components.seconds * 1000 + backoff.components.attoseconds / 1_000_000_000_000_000)",
            ])
            if backoff > .zero { try? await Task.sleep(for: backoff) }
            backoff = backoff == .zero ? .milliseconds(100) : min(backoff * 2, .seconds(30))
        }
    }

    /// Starts the child once and waits until it has exited and its control socket is done;
    /// returns how it ended (nil when it never started or could not be waited for) and why, in words.
    private func runOnce(_ child: ChildSpec, slot: Int, executable: String, running: Running, logger: Logger) async -> (ChildProcess.Ending?, String) {
        let daemonEnd: Int32, childEnd: Int32
        do {
            let pair = try UnixStream.pair()
            // A statistics snapshot is one message: the buffers bound the largest.
            try pair.first.setBufferSize(ChildSupervisor.controlBufferBytes)
            try pair.second.setBufferSize(ChildSupervisor.controlBufferBytes)
            (daemonEnd, childEnd) = pair.release()
        } catch {
            return (nil, "could not get a control socket: \(error)")
        }
        let started: ChildProcess
        do {
            started = try ChildProcess.spawn(child.executable ?? executable, arguments: child.arguments, stdin: childEnd)
        } catch {
            _ = close(childEnd)
            _ = close(daemonEnd)
            return (nil, "could not be started: \(error)")
        }
        // Only the child may hold its end: the daemon's end then sees end of file when it exits.
        _ = close(childEnd)
        running.register(slot, started)
        let pid = started.pid
        // Reaped on a thread of its own (waitpid blocks).
        async let ending: ChildProcess.Ending? = withCheckedContinuation { continuation in
            Thread {
                setCurrentThreadName("wait-\(pid)")
                continuation.resume(returning: try? started.wait())
            }.start()
        }
        if let attach = child.attach {
            // The thread owns the daemon's end and closes it when `attach` returns (at the
            // child's end of file, or on a failure, which makes the child stop and restart).
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                Thread {
                    setCurrentThreadName("attach-\(pid)")
                    let control = UnixStream(FileDescriptor(taking: daemonEnd))
                    attach(control, pid)
                    done.resume()
                }.start()
            }
        }
        let ended = await ending
        running.unregister(slot)
        if child.attach == nil { _ = close(daemonEnd) }
        return (ended, ended.map(ChildSupervisor.describe) ?? "could not be waited for")
    }

    static func describe(_ ending: ChildProcess.Ending) -> String {
        switch ending {
        case .exited(let status): "status \(status)"
        case .killed(SIGSYS): "killed by its seccomp policy: SIGSYS, a system call outside its allowlist"
        case .killed(SIGKILL): "killed by SIGKILL: from outside, or the kernel's OOM killer"
        case .killed(let signal): "killed by signal \(signal)"
        }
    }
}

