import Config
import FleetModel
import Foundation
import Glibc
import Logging
import Synchronization
import XCTest
@testable import Fleet

/// An etcd member started for a test: 127.0.0.1 on free ports, a temporary data directory.
final class EtcdProcess {
    static let binary = "/usr/bin/etcd"
    let dataDirectory: String
    let clientPort: UInt16
    let peerPort: UInt16
    private var process: Process?
    /// With TLS: the CA, etcd's server certificate and key, and a client certificate and key.
    let tls: (files: EtcdTLS, serverCert: String, serverKey: String)?

    var endpoint: String { "\(tls == nil ? "http" : "https")://127.0.0.1:\(clientPort)" }

    init(tls: Bool = false) throws {
        guard FileManager.default.isExecutableFile(atPath: Self.binary) else {
            throw XCTSkip("\(Self.binary) is missing (Debian package etcd-server)")
        }
        let dataDirectory = NSTemporaryDirectory() + "fleet-etcd-\(UUID().uuidString)"
        self.dataDirectory = dataDirectory
        clientPort = try Self.freePort()
        peerPort = try Self.freePort()
        if tls {
            try FileManager.default.createDirectory(atPath: dataDirectory + "-pki", withIntermediateDirectories: true)
            self.tls = try Self.makeCertificates(in: dataDirectory + "-pki")
        } else {
            self.tls = nil
        }
    }

    /// A CA, a server certificate for 127.0.0.1 and a client certificate, with openssl.
    private static func makeCertificates(in directory: String) throws -> (files: EtcdTLS, serverCert: String, serverKey: String) {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl") else { throw XCTSkip("/usr/bin/openssl is missing") }
        let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
        let script = """
            set -e; cd \(directory)
            openssl req -x509 \(key) -keyout ca.key -out ca.pem -days 2 -subj /CN=fleet-test-ca
            openssl req \(key) -keyout server.key -out server.csr -subj /CN=127.0.0.1
            printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth,clientAuth\\n' > server.ext
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext
            openssl req \(key) -keyout client.key -out client.csr -subj /CN=fleet-agent
            printf 'extendedKeyUsage=clientAuth\\n' > client.ext
            openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", script]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw TestFailure("openssl failed: \(process.terminationStatus)") }
        return (EtcdTLS(caFile: "\(directory)/ca.pem", certFile: "\(directory)/client.pem", keyFile: "\(directory)/client.key"),
                "\(directory)/server.pem", "\(directory)/server.key")
    }

    /// Starts etcd (on the same data directory as before, after `kill`) and waits until it answers.
    func start(timeout: TimeInterval = 20) async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        let peer = "http://127.0.0.1:\(peerPort)"
        process.arguments = ["--name", "default", "--data-dir", dataDirectory,
                             "--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
                             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                             "--initial-cluster", "default=\(peer)", "--log-level", "error"]
        if let tls {
            process.arguments? += ["--cert-file", tls.serverCert, "--key-file", tls.serverKey,
                                   "--trusted-ca-file", tls.files.caFile, "--client-cert-auth"]
        }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        self.process = process
        let client = EtcdClient(endpoints: [endpoint], tls: try tls.map { try FleetAgent.tlsConfiguration($0.files) },
                                requestTimeout: .seconds(1), logger: Logger(label: "test"))
        defer { Task { await client.shutdown() } }
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if (try? await client.range(prefix: "/", revision: nil)) != nil { return }
            guard process.isRunning else { throw TestFailure("etcd exited with status \(process.terminationStatus)") }
            guard Date() < deadline else { throw TestFailure("etcd did not answer within \(timeout) s") }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    func kill() {
        guard let process, process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        self.process = nil
    }

    func cleanUp() {
        kill()
        try? FileManager.default.removeItem(atPath: dataDirectory)
        try? FileManager.default.removeItem(atPath: dataDirectory + "-pki")
    }

    private static func freePort() throws -> UInt16 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: errno \(errno)") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress -> Int32 in
                guard bind(fd, socketAddress, length) == 0 else { return -1 }
                return getsockname(fd, socketAddress, &length)
            }
        }
        guard bound == 0 else { throw TestFailure("bind: errno \(errno)") }
        return UInt16(bigEndian: address.sin_port)
    }
}

/// A TCP listener on 127.0.0.1 that never accepts: an etcd member that hangs.
final class HungListener {
    private let fd: Int32
    let port: UInt16
    var endpoint: String { "http://127.0.0.1:\(port)" }

    init() throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: errno \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let fd = self.fd
        let result = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress -> Int32 in
                guard bind(fd, socketAddress, length) == 0, listen(fd, 64) == 0 else { return -1 }
                return getsockname(fd, socketAddress, &length)
            }
        }
        guard result == 0 else { Glibc.close(fd); throw TestFailure("bind/listen: errno \(errno)") }
        port = UInt16(bigEndian: address.sin_port)
    }

    func close() { Glibc.close(fd) }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The views an agent handed over, latest last.
final class ViewRecorder: Sendable {
    private let state = Mutex<[[String: FleetView]]>([])

    var callback: @Sendable ([String: FleetView]) -> Void {
        { views in self.state.withLock { $0.append(views) } }
    }

    var latest: [String: FleetView]? { state.withLock { $0.last } }
    var all: [[String: FleetView]] { state.withLock { $0 } }
}

/// Every message logged (level and text), for checks on what was logged and how often.
final class LogRecorder: Sendable {
    let entries = Mutex<[(Logger.Level, String)]>([])

    func handler(label: String) -> any LogHandler { RecordingHandler(recorder: self) }

    func count(_ level: Logger.Level, containing text: String) -> Int {
        entries.withLock { $0.filter { $0.0 == level && $0.1.contains(text) }.count }
    }

    struct RecordingHandler: LogHandler {
        let recorder: LogRecorder
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .debug
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            recorder.entries.withLock { $0.append((event.level, event.message.description)) }
        }
    }
}

/// Waits until `condition` holds, failing the test after `timeout` seconds.
func waitUntil(_ what: String, timeout: TimeInterval, file: StaticString = #filePath, line: UInt = #line,
               _ condition: () async -> Bool) async throws {
    let deadline = Date().addingTimeInterval(timeout)
    while !(await condition()) {
        guard Date() < deadline else {
            XCTFail("timed out after \(timeout) s waiting for: \(what)", file: file, line: line)
            throw TestFailure("timeout: \(what)")
        }
        try await Task.sleep(for: .milliseconds(20))
    }
}
