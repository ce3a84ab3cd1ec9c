import CNetlink
import Config
import HostOS
#if canImport(Glibc)
import Glibc
#endif

/// A failed netlink operation: what was attempted, on which link, and libnl's reason.
public struct NetlinkError: Error, Sendable, CustomStringConvertible {
    public let operation: String
    public let code: Int32
    public var description: String { "\(operation) failed: \(String(cString: bh_nl_error(code)))" }
}

/// A NETLINK_ROUTE socket bound to one network namespace: link and address management
/// through libnl-route-3.
public struct RouteSocket: ~Copyable {
    private let handle: OpaquePointer

    /// Opens a socket in the daemon's own network namespace.
    public init() throws(NetlinkError) { try self.init(namespaceFD: -1) }

    /// Opens a socket inside the namespace `namespace` (an fd from `NetworkNamespace.open`).
    public init(namespace: borrowing FileDescriptor) throws(NetlinkError) {
        try self.init(namespaceFD: namespace.rawValue)
    }

    private init(namespaceFD: Int32) throws(NetlinkError) {
        var err: Int32 = 0
        guard let handle = bh_nl_open(namespaceFD, &err) else {
            throw NetlinkError(operation: "open NETLINK_ROUTE socket", code: err)
        }
        self.handle = handle
    }

    deinit { bh_nl_close(handle) }

    private func check(_ result: Int32, _ operation: @autoclosure () -> String) throws(NetlinkError) {
        if result < 0 { throw NetlinkError(operation: operation(), code: result) }
    }

    /// The interface index of `interface`.
    public func index(of interface: String) throws(NetlinkError) -> Int32 {
        let r = bh_link_index(handle, interface)
        try check(r, "look up link \(interface)")
        return r
    }

    /// Moves `interface` into another network namespace.
    public func move(_ interface: String, to namespace: borrowing FileDescriptor) throws(NetlinkError) {
        try check(bh_link_set_netns(handle, interface, namespace.rawValue), "move link \(interface) to another namespace")
    }

    /// Sets MAC address and MTU (each optional) and the administrative state.
    public func configure(_ interface: String, mac: MACAddress? = nil, mtu: Int? = nil, up: Bool) throws(NetlinkError) {
        let result: Int32
        if let mac {
            result = mac.octets.withUnsafeBufferPointer {
                bh_link_configure(handle, interface, $0.baseAddress, UInt32(mtu ?? 0), up ? 1 : 0)
            }
        } else {
            result = bh_link_configure(handle, interface, nil, UInt32(mtu ?? 0), up ? 1 : 0)
        }
        try check(result, "configure link \(interface)")
    }

    /// Adds `address` (with its prefix length) to `interface`.
    public func addAddress(_ address: IPPrefix, to interface: String) throws(NetlinkError) {
        var bytes: [UInt8]
        let family: Int32
        switch address.address {
        case .v4(let a):
            family = AF_INET
            bytes = (0..<4).map { UInt8(truncatingIfNeeded: a.rawValue >> UInt32(24 - 8 * $0)) }
        case .v6(let a):
            family = AF_INET6
            bytes = (0..<8).map { UInt8(truncatingIfNeeded: a.high >> UInt64(56 - 8 * $0)) }
                + (0..<8).map { UInt8(truncatingIfNeeded: a.low >> UInt64(56 - 8 * $0)) }
        }
        let r = bytes.withUnsafeMutableBufferPointer {
            bh_addr_add(handle, interface, family, $0.baseAddress, Int32(address.length))
        }
        try check(r, "add address \(address) to \(interface)")
    }

    /// Deletes a link.
    public func delete(_ interface: String) throws(NetlinkError) {
        try check(bh_link_delete(handle, interface), "delete link \(interface)")
    }

    /// Creates a veth pair `name` <-> `peer`.
    public func createVeth(_ name: String, peer: String) throws(NetlinkError) {
        try check(bh_veth_create(handle, name, peer), "create veth \(name)/\(peer)")
    }
}
