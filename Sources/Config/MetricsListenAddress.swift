// Pure Swift with no imports: configuration validation can call it (or take this file) without
// linking the HTTP server.

/// Where the metrics endpoint listens: loopback TCP or a Unix socket, never a routable address.
///
/// The counters name every tenant, port and volume on the host: they are for the host's own
/// scraper (a local Prometheus or an agent that forwards), so the endpoint refuses any address
/// another machine could reach.
public enum MetricsListenAddress: Sendable, Equatable, CustomStringConvertible {
    /// A loopback IPv4 address (127.0.0.0/8) or IPv6 `::1`, in its textual form (`127.0.0.1`, `::1`).
    case tcp(host: String, port: Int)
    /// An absolute path of a Unix socket.
    case unix(path: String)

    /// The longest Unix socket path: `sun_path` holds 108 bytes with the terminating NUL.
    public static let maximumUnixPathBytes = 107

    /// The form `parse` reads: `127.0.0.1:9464`, `[::1]:9464`, `unix:/run/bulkhead/metrics.sock`.
    public var description: String {
        switch self {
        case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unix(let path): "unix:\(path)"
        }
    }

    /// Reads a listen address: `IPV4:PORT` with an address in 127.0.0.0/8, `[::1]:PORT`, or
    /// `unix:/absolute/path`.
    ///
    /// - Parameter allowEphemeralPort: accept port 0 (the kernel picks one): for tests; a
    ///   configured endpoint must have a port a scraper can be told.
    /// - Throws: `MetricsListenAddressError` with the reason, e.g. an address that is not loopback,
    ///   a host name (it may resolve elsewhere), a port out of range, a relative socket path.
    public static func parse(_ text: String, allowEphemeralPort: Bool = false) throws(MetricsListenAddressError) -> MetricsListenAddress {
        func refuse(_ reason: String) -> MetricsListenAddressError { MetricsListenAddressError(address: text, reason: reason) }
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst("unix:".count))
            guard path.hasPrefix("/") else { throw refuse("a Unix socket path must be absolute, e.g. unix:/run/bulkhead/metrics.sock") }
            guard path.utf8.count <= maximumUnixPathBytes else {
                throw refuse("a Unix socket path is at most \(maximumUnixPathBytes) bytes; this one has \(path.utf8.count)")
            }
            guard !path.utf8.contains(0), !path.hasSuffix("/") else { throw refuse("not a file path") }
            guard !path.split(separator: "/", omittingEmptySubsequences: false).contains(where: { $0 == ".." }) else {
                throw refuse("a Unix socket path may not contain '..'")
            }
            return .unix(path: path)
        }

        // Host and port: the port follows the last colon; an IPv6 host is bracketed.
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw refuse("an IPv6 address needs a closing ']'") }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw refuse("expected ':PORT' after the IPv6 address, e.g. [::1]:9464") }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                throw refuse("expected HOST:PORT (127.0.0.1:9464 or [::1]:9464) or unix:/path")
            }
            host = text[..<colon]
            guard !host.contains(":") else { throw refuse("an IPv6 address must be bracketed, e.g. [::1]:9464") }
            portText = text[text.index(after: colon)...]
        }
        guard !portText.isEmpty, portText.count <= 5, portText.allSatisfy({ $0.isASCII && $0.isNumber }),
              let port = Int(portText) else {
            throw refuse("the port must be a number from 1 to 65535")
        }
        guard port <= 65535, port > 0 || allowEphemeralPort else { throw refuse("the port must be from 1 to 65535") }

        if text.hasPrefix("[") {
            guard let groups = parseIPv6(host) else { throw refuse("'\(host)' is not an IPv6 address") }
            guard groups == [0, 0, 0, 0, 0, 0, 0, 1] else {
                throw refuse("only loopback is allowed: the IPv6 address must be ::1, not \(host)")
            }
            return .tcp(host: "::1", port: port)
        }
        if let octets = parseIPv4(host) {
            guard octets[0] == 127 else {
                let why = octets == [0, 0, 0, 0] ? " (0.0.0.0 listens on every interface)" : ""
                throw refuse("only loopback is allowed: the IPv4 address must be in 127.0.0.0/8, not \(host)\(why)")
            }
            return .tcp(host: octets.map(String.init).joined(separator: "."), port: port)
        }
        throw refuse("'\(host)' is not an IP address; give 127.0.0.1 or [::1] (a host name may resolve to a non-loopback address)")
    }

    /// Dotted-quad IPv4 with decimal octets (no leading zeros, which some parsers read as octal).
    static func parseIPv4(_ text: Substring) -> [UInt8]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var octets: [UInt8] = []
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy({ $0.isASCII && $0.isNumber }),
                  part == "0" || !part.hasPrefix("0"), let value = UInt8(part) else { return nil }
            octets.append(value)
        }
        return octets
    }

    /// Textual IPv6 (RFC 4291 2.2 forms 1 and 2; no embedded IPv4, no zone) as eight groups.
    static func parseIPv6(_ text: Substring) -> [UInt16]? {
        func groups(_ part: Substring) -> [UInt16]? {
            if part.isEmpty { return [] }
            var result: [UInt16] = []
            for group in part.split(separator: ":", omittingEmptySubsequences: false) {
                guard !group.isEmpty, group.count <= 4, let value = UInt16(group, radix: 16) else { return nil }
                result.append(value)
            }
            return result
        }
        let halves = text.components(separatedBy: "::")
        switch halves.count {
        case 1:
            guard let all = groups(text), all.count == 8 else { return nil }
            return all
        case 2:
            guard let head = groups(halves[0]), let tail = groups(halves[1]), head.count + tail.count <= 7 else { return nil }
            return head + Array(repeating: 0, count: 8 - head.count - tail.count) + tail
        default:
            return nil
        }
    }
}

/// A metrics listen address that was refused, and why.
public struct MetricsListenAddressError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The text as given.
    public var address: String
    /// What is wrong and how to fix it.
    public var reason: String

    public init(address: String, reason: String) {
        self.address = address; self.reason = reason
    }

    public var description: String { "metrics listen address '\(address)': \(reason)" }
}

private extension Substring {
    /// Splits on a multi-character separator (Foundation's `components(separatedBy:)` without Foundation).
    func components(separatedBy separator: String) -> [Substring] {
        var parts: [Substring] = []
        var start = startIndex
        var index = startIndex
        while index < endIndex {
            if self[index...].hasPrefix(separator) {
                parts.append(self[start..<index])
                index = self.index(index, offsetBy: separator.count)
                start = index
            } else {
                index = self.index(after: index)
            }
        }
        parts.append(self[start..<endIndex])
        return parts
    }
}
