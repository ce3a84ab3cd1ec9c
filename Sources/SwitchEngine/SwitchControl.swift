import FleetModel
import Foundation
import HostOS
import Switch

/// What the daemon and its `bulkhead switch` child say to each other over their SOCK_SEQPACKET
/// socket pair (the child's stdin), one JSON message per packet.
///
/// The daemon keeps what needs privilege (netlink, TAP devices, namespaces) and hands the switch
/// only descriptors: each `.port` message carries that port's TAP queue fds (SCM_RIGHTS), then
/// `.start` says every port was sent. The switch answers `.ready` once it is jailed and
/// forwarding, then `.statistics` about once a second from its control thread (packet threads
/// never encode or write anything). End of file on either side means the other is gone: the
/// switch stops; the daemon restarts it with the same descriptors.
public enum SwitchControlMessage: Codable, Sendable, Equatable {
    /// Daemon → switch: the queues of port `index` (in `ForwardingPlane.ports` order) are attached.
    case port(index: Int, interface: String)
    /// Daemon → switch: the tenant's VXLAN socket is attached (one fd: UDP, bound to the
    /// underlay address, port 4789). Sent after the `.port` messages and before `.start`, only
    /// when the host has a fleet and the tenant a segment with a VNI.
    case uplink
    /// Daemon → switch: the tenant's current view of the fleet. The first one follows `.uplink`
    /// (before `.start`); later ones come whenever it changes, and the switch swaps each in
    /// atomically (`ForwardingPlane.updateFleet`).
    case fleet(FleetView)
    /// Daemon → switch: every port has been sent.
    case start
    /// Switch → daemon: jailed and forwarding with `workers` packet threads.
    case ready(workers: Int)
    /// Switch → daemon: the counters, summed over the workers.
    case statistics(SwitchStatistics)

    /// The largest message either side sends: a statistics snapshot of 256 ports with every drop
    /// reason stays well under it. Both sockets' buffers are sized for it.
    public static let maxSize = 4 << 20

    public func encoded() -> [UInt8] {
        // Encoding these plain values cannot fail.
        (try? Array(JSONEncoder().encode(self))) ?? []
    }

    public static func decode(_ bytes: UnsafeRawBufferPointer) throws -> SwitchControlMessage {
        try JSONDecoder().decode(SwitchControlMessage.self, from: Data(bytes))
    }
}

/// Why the control exchange with the switch failed; names the step.
public struct SwitchControlError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

extension UnixStream {
    /// Sends one control message, with `fds` attached.
    public func send(_ message: SwitchControlMessage, fds: [Int32] = []) throws(SystemError) {
        try send(message.encoded(), fds: fds)
    }
}
