import CLinux
import Glibc

/// A UDP socket bound to a host's underlay address and the VXLAN port, member of the address's
/// SO_REUSEPORT group: the daemon binds one per tenant (all as root, in its own network
/// namespace) and hands each to that tenant's jailed switch, and a classic BPF program on the
/// group (`steer(_:)`) gives every datagram to the socket of the tenant that owns its VNI. A
/// tenant's switch therefore never receives another tenant's underlay traffic.
///
/// The daemon keeps its descriptor for the life of the daemon (a restarted switch gets the same
/// socket again), so a socket's index in the group, which the steering program names, never
/// changes: the kernel appends a member at its end and only moves members when one closes.
public final class UnderlaySocket: Sendable {
    public let rawValue: Int32

    /// A non-blocking, close-on-exec UDP socket with SO_REUSEPORT, bound to `address` (an IPv4
    /// or IPv6 literal) and `port`. The corresponding C functions are `socket`, `setsockopt`
    /// and `bind`.
    public init(address: String, port: UInt16, receiveBufferBytes: Int = 4 << 20) throws(SystemError) {
        var v4 = sockaddr_in()
        var v6 = sockaddr_in6()
        let isV6: Bool
        if inet_pton(AF_INET, address, &v4.sin_addr) == 1 {
            isV6 = false
            v4.sin_family = sa_family_t(AF_INET)
            v4.sin_port = port.bigEndian
        } else if inet_pton(AF_INET6, address, &v6.sin6_addr) == 1 {
            isV6 = true
            v6.sin6_family = sa_family_t(AF_INET6)
            v6.sin6_port = port.bigEndian
        } else {
            throw SystemError("underlay address \(address) is not an IPv4 or IPv6 address", errno: EINVAL)
        }
        let kind = Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue)
        let fd = try syscall("socket(UDP for \(address))") { socket(isV6 ? AF_INET6 : AF_INET, kind, 0) }
        do {
            var one: Int32 = 1
            try syscall("setsockopt(SO_REUSEPORT)") {
                setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size))
            }
            if isV6 {
                try syscall("setsockopt(IPV6_V6ONLY)") {
                    setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size))
                }
            }
            var bytes = Int32(clamping: receiveBufferBytes)
            // Past rmem_max needs CAP_NET_ADMIN (the daemon has it); a smaller buffer only costs drops.
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, socklen_t(MemoryLayout<Int32>.size))
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, socklen_t(MemoryLayout<Int32>.size))
            try syscall("bind(\(address):\(port))") { () -> Int32 in
                if isV6 {
                    return withUnsafePointer(to: &v6) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
                    }
                }
                return withUnsafePointer(to: &v4) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                }
            }
        } catch {
            _ = Glibc.close(fd)
            throw error
        }
        rawValue = fd
    }

    deinit { _ = Glibc.close(rawValue) }

    /// Installs the group's steering program: a datagram whose VXLAN header carries a VNI of
    /// `destinations` goes to the member at that index (members are numbered in the order they
    /// were bound); any other datagram (another VNI, or shorter than a VXLAN header) goes to
    /// member 0. Replaces the previous program atomically. The corresponding C function is
    /// `setsockopt(SO_ATTACH_REUSEPORT_CBPF)`.
    public func steer(_ destinations: [UInt32: Int]) throws(SystemError) {
        let sorted = destinations.sorted { $0.key < $1.key }
        let vnis = sorted.map(\.key), members = sorted.map { UInt32($0.value) }
        let fd = rawValue
        try syscall("setsockopt(SO_ATTACH_REUSEPORT_CBPF, \(vnis.count) VNIs)") { () -> Int32 in
            let result = bh_steer_vxlan(fd, vnis, members, vnis.count)
            if result < 0 { errno = -result; return -1 }
            return 0
        }
    }

    /// Reads and discards every datagram waiting on the socket; returns how many there were.
    /// For the group's member 0, which takes what no tenant owns.
    /// The corresponding C function is `recv`.
    public func drain() -> Int {
        var count = 0
        var byte: UInt8 = 0
        while recv(rawValue, &byte, 1, Int32(MSG_DONTWAIT) | Int32(MSG_TRUNC)) >= 0 { count += 1 }
        return count
    }

    /// Waits up to `milliseconds` for a datagram. The corresponding C function is `poll`.
    public func waitReadable(milliseconds: Int32) -> Bool {
        var entry = pollfd(fd: rawValue, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, milliseconds) > 0
    }
}
