import Foundation
import XCTest

/// What the integration tests need from the machine, and small helpers to run commands on it.
enum Host {
    /// Skips the test, saying what is missing, unless this process can create TAP devices and
    /// network namespaces.
    static func requireNetworkPrivileges() throws {
        guard getuid() == 0 else {
            throw XCTSkip("needs root: the test creates TAP devices and network namespaces (run as root, as CI does)")
        }
        guard FileManager.default.fileExists(atPath: "/dev/net/tun") else {
            throw XCTSkip("needs /dev/net/tun (TAP devices)")
        }
        for tool in ["ip", "ping", "tcpdump"] where which(tool) == nil {
            throw XCTSkip("needs \(tool) on PATH (deploy/install-deps.sh installs it)")
        }
    }

    static func which(_ tool: String) -> String? {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin").split(separator: ":") {
            let path = "\(dir)/\(tool)"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }

    struct Result {
        var status: Int32
        var output: String
        var error: String
    }

    /// Runs a command to completion (killing it after `timeout` seconds) and returns its output.
    @discardableResult
    static func run(_ arguments: [String], timeout: TimeInterval = 60) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        // Files rather than pipes: a chatty command can't block on a full pipe, and no reader
        // threads are needed.
        let base = NSTemporaryDirectory() + "bulkhead-run-\(UUID().uuidString)"
        _ = FileManager.default.createFile(atPath: base + ".out", contents: nil)
        _ = FileManager.default.createFile(atPath: base + ".err", contents: nil)
        defer {
            try? FileManager.default.removeItem(atPath: base + ".out")
            try? FileManager.default.removeItem(atPath: base + ".err")
        }
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: base + ".out"))
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: base + ".err"))
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        let output = (try? String(contentsOfFile: base + ".out", encoding: .utf8)) ?? ""
        let error = (try? String(contentsOfFile: base + ".err", encoding: .utf8)) ?? ""
        return Result(status: process.terminationStatus, output: output, error: error)
    }

    /// Runs a command inside a network namespace.
    @discardableResult
    static func inNamespace(_ namespace: String, _ arguments: [String], timeout: TimeInterval = 60) throws -> Result {
        try run(["ip", "netns", "exec", namespace] + arguments, timeout: timeout)
    }

    static func namespaceExists(_ name: String) -> Bool {
        FileManager.default.fileExists(atPath: "/run/netns/\(name)")
    }

    static func linkExists(_ name: String, namespace: String? = nil) -> Bool {
        let args = (namespace.map { ["ip", "-n", $0] } ?? ["ip"]) + ["link", "show", name]
        return (try? run(args).status) == 0
    }
}

/// A packet capture running in a namespace, counting frames that match a tcpdump filter.
final class Capture {
    private let process = Process()
    private let file: String

    /// Starts `tcpdump -Q in` on `interface` in `namespace` with `filter`.
    init(namespace: String, interface: String, filter: String) throws {
        file = NSTemporaryDirectory() + "bulkhead-capture-\(UUID().uuidString).pcap"
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["ip", "netns", "exec", namespace, "tcpdump", "-i", interface, "-Q", "in", "-n",
                             "-U", "-w", file, filter]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        // tcpdump needs a moment to attach its filter.
        Thread.sleep(forTimeInterval: 0.8)
    }

    /// Stops the capture and returns how many frames it saw.
    func stop() throws -> Int {
        process.terminate()
        process.waitUntilExit()
        defer { try? FileManager.default.removeItem(atPath: file) }
        let result = try Host.run(["tcpdump", "-n", "-r", file])
        return result.output.split(separator: "\n").count
    }
}
