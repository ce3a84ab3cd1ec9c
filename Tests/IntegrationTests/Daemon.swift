import Foundation
import XCTest

/// A `bulkhead run` process started by a test, with its log collected.
final class RunningDaemon: LoggedProcess, @unchecked Sendable {
    let configPath: String
    let stateDirectory: String
    /// Tenants with ports: each has a switch of its own.
    let switchCount: Int
    private let ownsStateDirectory: Bool

    /// The `bulkhead` executable built next to the test bundle.
    static var binary: String {
        if let path = ProcessInfo.processInfo.environment["BULKHEAD_BINARY"] { return path }
        // swift test runs the test executable from the build directory that also holds the product.
        var candidates: [URL] = []
        if let executable = Bundle.main.executableURL { candidates.append(executable.deletingLastPathComponent()) }
        candidates.append(Bundle.main.bundleURL)
        candidates.append(Bundle.main.bundleURL.deletingLastPathComponent())
        for directory in candidates {
            let path = directory.appendingPathComponent("bulkhead").path
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return TestTopology.repository.appendingPathComponent(".build/debug/bulkhead").path
    }

    /// Writes `configuration` to a file and starts the daemon on it. Waits until it logs that it
    /// is ready, or fails the test with its log if it exits first.
    /// With `ownsStateDirectory`, the state directory is removed when this object goes away.
    init(configuration: [String: Any], waitForReady: Bool = true, ownsStateDirectory: Bool = true) throws {
        self.ownsStateDirectory = ownsStateDirectory
        let host = configuration["host"] as? [String: Any]
        stateDirectory = host?["stateDirectory"] as? String ?? ""
        switchCount = (configuration["tenants"] as? [[String: Any]] ?? []).filter { !($0["ports"] as? [Any] ?? []).isEmpty }.count
        configPath = NSTemporaryDirectory() + "bulkhead-test-\(UUID().uuidString).json"
        let data = try JSONSerialization.data(withJSONObject: configuration, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: configPath))
        try super.init(executable: RunningDaemon.binary, arguments: ["run", "--config", configPath])
        if waitForReady {
            try waitFor("bulkhead ready", timeout: 30)
        }
    }

    /// Waits until every tenant's switch (one per tenant with ports) has said it forwards.
    func waitForForwarding(timeout: TimeInterval = 30) throws {
        try waitFor("switch forwarding", timeout: timeout)
        let deadline = Date().addingTimeInterval(timeout)
        while output.occurrences(of: "switch forwarding") < switchCount {
            guard Date() < deadline, isRunning else {
                throw DaemonFailure(message: "\(switchCount) switches did not all say they forward:\n\(output)")
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
    }

    /// The daemon's status file, decoded.
    func status() throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: stateDirectory + "/status.json"))
        return try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
    }

    /// Waits for a fresh status file (rewritten every second) and returns one port's entry.
    func portStatus(tenant: String, port: String, fresh: Bool = true) throws -> [String: Any] {
        if fresh { Thread.sleep(forTimeInterval: 1.2) }
        let ports = (try status()["switch"] as? [String: Any])?["ports"] as? [[String: Any]] ?? []
        guard let entry = ports.first(where: { $0["tenant"] as? String == tenant && $0["port"] as? String == port }) else {
            throw DaemonFailure(message: "no status for \(tenant)/\(port)")
        }
        return entry
    }

    /// One drop counter of one port.
    func drops(tenant: String, port: String, reason: String) throws -> Int {
        let drops = try portStatus(tenant: tenant, port: port)["drops"] as? [String: Any]
        return (drops?[reason] as? NSNumber)?.intValue ?? -1
    }

    deinit {
        // SIGTERM, not the SIGKILL of LoggedProcess: the daemon removes its namespaces and links.
        if process.isRunning {
            kill(process.processIdentifier, SIGTERM)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: configPath)
        if ownsStateDirectory && !stateDirectory.isEmpty && !process.isRunning {
            try? FileManager.default.removeItem(atPath: stateDirectory)
        }
    }
}

struct DaemonFailure: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

/// The demo topology of configs/demo.json, renamed so that tests do not collide with a running
/// demo: namespaces and interfaces get a per-process prefix (`t1234-blue-a`), and state lives in a temporary directory.
/// Without the demo's partitions: tests that run partitions configure their own.
enum TestTopology {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    static func demo(stateDirectory: String = NSTemporaryDirectory() + "bulkhead-state-\(UUID().uuidString)") throws -> [String: Any] {
        let data = try Data(contentsOf: repository.appendingPathComponent("configs/demo.json"))
        guard var config = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw DaemonFailure(message: "configs/demo.json is not an object")
        }
        config["host"] = ["stateDirectory": stateDirectory]
        var tenants = config["tenants"] as? [[String: Any]] ?? []
        for t in tenants.indices {
            let tenant = tenants[t]["id"] as? String ?? "x"
            var ports = tenants[t]["ports"] as? [[String: Any]] ?? []
            for p in ports.indices {
                let port = ports[p]["id"] as? String ?? "x"
                // A vhost-user port has no TAP device to name or move.
                if ports[p]["kind"] as? String == "vhost-user" { continue }
                ports[p]["netns"] = namespace(tenant, port)
                ports[p]["ifname"] = interface(tenant, port)
            }
            tenants[t]["ports"] = ports
            // The demo's partitions boot an image built by deploy/demo.sh; a test adds its own.
            tenants[t]["partitions"] = nil
        }
        config["tenants"] = tenants
        return config
    }

    /// Unique per test process, so that two test runs on one machine don't share namespaces.
    static let prefix = "t\(getpid() % 10_000)"
    static func namespace(_ tenant: String, _ port: String) -> String { "\(prefix)-\(tenant)-\(port)" }
    static func interface(_ tenant: String, _ port: String) -> String { "\(prefix)-\(tenant)-\(port)" }
}
