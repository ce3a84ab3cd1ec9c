import Glibc
import Logging
import Observability
import Config
import ServiceLifecycle
import Switch
import Synchronization
import XCTest

final class MetricsServerTests: XCTestCase {
    /// A server on `address` serving a snapshot whose audit count rises on each scrape, so a
    /// test can tell that every answer came from a fresh snapshot.
    private func withServer(_ address: MetricsListenAddress, access: MetricsServer.UnixSocketAccess = .init(),
                            _ body: (MetricsServer, MetricsListenAddress) async throws -> Void) async throws {
        let scrapes = Atomic<UInt64>(0)
        let server = MetricsServer(address: address, socketAccess: access, logger: Logger(label: "test")) {
            let count = scrapes.add(1, ordering: .relaxed).newValue
            return MetricsSnapshot(
                partitions: [PartitionMetrics(tenant: "blue", id: "guest", state: "running", starts: 1, restarts: 0)],
                auditRecordsWritten: count)
        }
        // Run as the daemon does: a service in a ServiceGroup, stopped by a graceful shutdown.
        let group = ServiceGroup(services: [server], logger: Logger(label: "test"))
        let task = Task { try await group.run() }
        do {
            let bound = try await server.waitUntilListening()
            try await body(server, bound)
        } catch {
            await group.triggerGracefulShutdown()
            _ = await task.result
            throw error
        }
        await group.triggerGracefulShutdown()
        try await task.value
        XCTAssertNil(server.boundAddress, "still listening after the shutdown")
    }

    func testServesMetricsOverLoopbackTCP() async throws {
        try await withServer(MetricsListenAddress.parse("127.0.0.1:0", allowEphemeralPort: true)) { _, bound in
            guard case .tcp(_, let port) = bound else { return XCTFail("bound to \(bound)") }
            XCTAssertNotEqual(port, 0)
            let first = try HTTPGet.fetch(bound, path: "/metrics")
            XCTAssertEqual(first.status, 200)
            XCTAssertEqual(first.headers["content-type"], MetricsExposition.contentType)
            let exposition = try Exposition(first.body)
            XCTAssertEqual(exposition.value("bulkhead_audit_records_total", [:]), 1)
            XCTAssertEqual(exposition.value("bulkhead_partition_starts_total", ["tenant": "blue", "partition": "guest"]), 1)
            let second = try Exposition(HTTPGet.fetch(bound, path: "/metrics").body)
            XCTAssertEqual(second.value("bulkhead_audit_records_total", [:]), 2)

            XCTAssertEqual(try HTTPGet.fetch(bound, path: "/").status, 404)
            XCTAssertEqual(try HTTPGet.fetch(bound, path: "/metrics/x").status, 404)
            XCTAssertEqual(try HTTPGet.fetch(bound, path: "/metrics", method: "POST").status, 405)
        }
    }

    func testServesMetricsOverIPv6Loopback() async throws {
        let probe = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
        if probe < 0 { throw XCTSkip("no IPv6 sockets on this host") }
        close(probe)
        try await withServer(MetricsListenAddress.parse("[::1]:0", allowEphemeralPort: true)) { _, bound in
            do {
                let response = try HTTPGet.fetch(bound, path: "/metrics")
                XCTAssertEqual(response.status, 200)
            } catch let error as HTTPGet.Failure where error.errno == EADDRNOTAVAIL {
                throw XCTSkip("::1 is not configured here: \(error)")
            }
        }
    }

    func testServesMetricsOverAUnixSocketWithTheAskedMode() async throws {
        let directory = "/tmp/bulkhead-metrics-test-\(getpid())"
        mkdir(directory, 0o700)
        defer { rmdir(directory) }
        let path = directory + "/metrics.sock"
        try await withServer(.unix(path: path), access: .init(group: nil, mode: 0o640)) { _, bound in
            XCTAssertEqual(bound, .unix(path: path))
            var info = stat()
            XCTAssertEqual(lstat(path, &info), 0)
            XCTAssertEqual(info.st_mode & S_IFMT, S_IFSOCK)
            XCTAssertEqual(info.st_mode & 0o777, 0o640)
            let response = try HTTPGet.fetch(bound, path: "/metrics")
            XCTAssertEqual(response.status, 200)
            XCTAssertEqual(try Exposition(response.body).value("bulkhead_audit_records_total", [:]), 1)
        }
        var info = stat()
        XCTAssertNotEqual(lstat(path, &info), 0, "the socket was left behind")
    }

    func testABusyAddressFailsTheRun() async throws {
        try await withServer(MetricsListenAddress.parse("127.0.0.1:0", allowEphemeralPort: true)) { _, bound in
            let second = MetricsServer(address: bound, logger: Logger(label: "test")) { MetricsSnapshot() }
            do {
                try await second.run()
                XCTFail("a second server bound \(bound)")
            } catch {
                XCTAssertTrue("\(error)".lowercased().contains("address already in use"), "\(error)")
            }
        }
    }
}

/// A one-request HTTP/1.1 client on plain sockets: independent of the server's library, with a
/// receive timeout so that a server that never answers fails the test instead of hanging it.
enum HTTPGet {
    struct Response {
        var status: Int
        var headers: [String: String]
        var body: String
    }

    struct Failure: Error, CustomStringConvertible {
        var call: String
        var errno: Int32
        var description: String { "\(call): \(String(cString: strerror(errno)))" }
    }

    static func fetch(_ address: MetricsListenAddress, path: String, method: String = "GET") throws -> Response {
        let fd: Int32
        switch address {
        case .tcp(let host, let port):
            if host.contains(":") {
                fd = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
                guard fd >= 0 else { throw Failure(call: "socket", errno: errno) }
                var sa = sockaddr_in6()
                sa.sin6_family = sa_family_t(AF_INET6)
                sa.sin6_port = UInt16(port).bigEndian
                inet_pton(AF_INET6, host, &sa.sin6_addr)
                try connectOrThrow(fd, &sa)
            } else {
                fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                guard fd >= 0 else { throw Failure(call: "socket", errno: errno) }
                var sa = sockaddr_in()
                sa.sin_family = sa_family_t(AF_INET)
                sa.sin_port = UInt16(port).bigEndian
                inet_pton(AF_INET, host, &sa.sin_addr)
                try connectOrThrow(fd, &sa)
            }
        case .unix(let socketPath):
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw Failure(call: "socket", errno: errno) }
            var sa = sockaddr_un()
            sa.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &sa.sun_path) { raw in
                for (i, byte) in socketPath.utf8.prefix(raw.count - 1).enumerated() { raw[i] = byte }
            }
            try connectOrThrow(fd, &sa)
        }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let request = Array("\(method) \(path) HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".utf8)
        guard send(fd, request, request.count, Int32(MSG_NOSIGNAL)) == request.count else { throw Failure(call: "send", errno: errno) }
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &chunk, chunk.count, 0)
            if n < 0 { throw Failure(call: "recv", errno: errno) }
            if n == 0 { break }
            received.append(contentsOf: chunk[0..<n])
        }
        return try parse(String(decoding: received, as: UTF8.self))
    }

    private static func connectOrThrow<Address>(_ fd: Int32, _ address: inout Address) throws {
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<Address>.size)) }
        }
        if result < 0 {
            let error = errno
            close(fd)
            throw Failure(call: "connect", errno: error)
        }
    }

    private static func parse(_ text: String) throws -> Response {
        guard let split = text.range(of: "\r\n\r\n") else { throw Exposition.ParseError("no end of headers in \(text)") }
        let lines = text[..<split.lowerBound].components(separatedBy: "\r\n")
        let statusParts = lines.first?.split(separator: " ") ?? []
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else { throw Exposition.ParseError("bad status line in \(text)") }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        var body = String(text[split.upperBound...])
        if let length = headers["content-length"].flatMap(Int.init) {
            XCTAssertEqual(body.utf8.count, length, "the body is not Content-Length long")
            body = String(decoding: body.utf8.prefix(length), as: UTF8.self)
        }
        return Response(status: status, headers: headers, body: body)
    }
}
