import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A process started by a test (the daemon, a block server), its stdout and stderr collected.
class LoggedProcess: @unchecked Sendable {
    // @unchecked Sendable: `log` is only touched under `lock`.
    let process = Process()
    private let lock = NSLock()
    private var log = ""

    init(executable: String, arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        pipe.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let chunk = handle.availableData
            guard let self, !chunk.isEmpty else { return }
            self.lock.withLock { self.log += String(decoding: chunk, as: UTF8.self) }
        }
        try process.run()
    }

    var output: String { lock.withLock { log } }
    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }

    /// Waits until the log contains `text`; throws if the process exits first or time runs out.
    func waitFor(_ text: String, timeout: TimeInterval) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if output.contains(text) { return }
            if !process.isRunning {
                Thread.sleep(forTimeInterval: 0.2)
                if output.contains(text) { return }
                throw DaemonFailure(message: "\(process.arguments?.first ?? "process") exited with \(process.terminationStatus) before '\(text)':\n\(output)")
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
        throw DaemonFailure(message: "timed out waiting for '\(text)':\n\(output)")
    }

    /// Whether the process exited within `timeout`.
    func waitForExit(timeout: TimeInterval) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        return !process.isRunning
    }

    /// Waits up to `timeout` for the process to exit by itself; its exit status, or nil when it
    /// is still running or was ended by a signal.
    func exitStatus(timeout: TimeInterval = 30) -> Int32? {
        guard waitForExit(timeout: timeout) else { return nil }
        Thread.sleep(forTimeInterval: 0.1)  // let the log reader drain
        return process.terminationReason == .exit ? process.terminationStatus : nil
    }

    /// Sends `signal`, then SIGKILL if the process is still there after 30 s. Returns the exit
    /// status when it exited by itself, nil when a signal ended it (or it was gone already).
    @discardableResult
    func stop(signal: Int32 = SIGTERM) -> Int32? {
        guard process.isRunning else { return nil }
        Glibc.kill(pid, signal)
        if let status = exitStatus() { return status }
        if process.isRunning {
            Glibc.kill(pid, SIGKILL)
            process.waitUntilExit()
        }
        return nil
    }

    deinit {
        if process.isRunning {
            Glibc.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}
