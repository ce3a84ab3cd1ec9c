import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// Runs one `bulkhead block-server` child per tenant that has volumes, restarts one that dies
/// (with a back-off that resets once it has run for a while), and stops them all at shutdown.
struct BlockServerSupervisor: Service {
    let tenants: [String]
    let configPath: String
    let logger: Logger

    /// The children and whether shutdown has begun, shared with the graceful-shutdown handler.
    final class Children: Sendable {
        private let state = Mutex<(processes: [String: Process], stopping: Bool)>(([:], false))

        var stopping: Bool { state.withLock { $0.stopping } }

        /// Records a started child; returns false (and stops it) when shutdown already began.
        func register(_ tenant: String, _ process: Process) -> Bool {
            let stopping = state.withLock { s -> Bool in
                s.processes[tenant] = process
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
        if tenants.isEmpty {
            try? await gracefulShutdown()
            return
        }
        let children = Children()
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                for tenant in tenants {
                    group.addTask { await supervise(tenant: tenant, executable: executable, children: children) }
                }
            }
        } onGracefulShutdown: {
            children.stopAll()
        }
    }

    private func supervise(tenant: String, executable: String, children: Children) async {
        var backoff: Double = 1
        while !children.stopping {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = ["block-server", "--config", configPath, "--tenant", tenant, "--stop-when-stdin-closes"]
            // The child's stdin is a pipe whose write end only this process holds (close-on-exec):
            // when this process dies, however it dies, the child reads end of file and stops.
            let lifeline = Pipe()
            _ = fcntl(lifeline.fileHandleForWriting.fileDescriptor, F_SETFD, FD_CLOEXEC)
            process.standardInput = lifeline
            let started = Date()
            let status: Int32 = await withCheckedContinuation { continuation in
                process.terminationHandler = { continuation.resume(returning: $0.terminationStatus) }
                do {
                    try process.run()
                } catch {
                    process.terminationHandler = nil
                    logger.error("cannot start block server", metadata: ["tenant.id": "\(tenant)", "error": "\(error)"])
                    continuation.resume(returning: -1)
                    return
                }
                _ = children.register(tenant, process)
            }
            try? lifeline.fileHandleForWriting.close()
            if children.stopping { break }
            logger.error("block server exited; restarting it", metadata: [
                "tenant.id": "\(tenant)", "status": "\(status)", "restart.after.seconds": "\(backoff)",
            ])
            if Date().timeIntervalSince(started) > 30 { backoff = 1 }
            try? await Task.sleep(for: .seconds(backoff))
            backoff = min(backoff * 2, 30)
        }
    }
}
