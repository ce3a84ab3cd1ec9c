/// A set of port indexes (0..<256) in four words: fixed size, no allocation, cheap to copy.
public struct PortMask: Equatable, Hashable, Sendable {
    public static let capacity = 256

    @usableFromInline var w0: UInt64 = 0
    @usableFromInline var w1: UInt64 = 0
    @usableFromInline var w2: UInt64 = 0
    @usableFromInline var w3: UInt64 = 0

    @inlinable public init() {}

    /// Adds `port`; indexes outside 0..<256 are ignored (they cannot name a port).
    @inlinable public mutating func insert(_ port: Int) {
        guard port >= 0, port < PortMask.capacity else { return }
        let bit: UInt64 = 1 << UInt64(port & 63)
        switch port >> 6 {
        case 0: w0 |= bit
        case 1: w1 |= bit
        case 2: w2 |= bit
        default: w3 |= bit
        }
    }

    @inlinable public mutating func remove(_ port: Int) {
        guard port >= 0, port < PortMask.capacity else { return }
        let bit: UInt64 = ~(1 << UInt64(port & 63))
        switch port >> 6 {
        case 0: w0 &= bit
        case 1: w1 &= bit
        case 2: w2 &= bit
        default: w3 &= bit
        }
    }

    @inlinable public func contains(_ port: Int) -> Bool {
        guard port >= 0, port < PortMask.capacity else { return false }
        return word(port >> 6) >> UInt64(port & 63) & 1 != 0
    }

    @inlinable public var isEmpty: Bool { w0 | w1 | w2 | w3 == 0 }

    @inlinable public var count: Int {
        w0.nonzeroBitCount + w1.nonzeroBitCount + w2.nonzeroBitCount + w3.nonzeroBitCount
    }

    /// The lowest port in the mask, or nil when it is empty.
    @inlinable public var first: Int? {
        if w0 != 0 { return w0.trailingZeroBitCount }
        if w1 != 0 { return 64 + w1.trailingZeroBitCount }
        if w2 != 0 { return 128 + w2.trailingZeroBitCount }
        if w3 != 0 { return 192 + w3.trailingZeroBitCount }
        return nil
    }

    /// Calls `body` with each port in ascending order, without allocating.
    @inlinable public func forEach(_ body: (Int) -> Void) {
        for index in 0..<4 {
            var bits = word(index)
            while bits != 0 {
                body(index << 6 + bits.trailingZeroBitCount)
                bits &= bits &- 1
            }
        }
    }

    @inlinable public func subtracting(_ other: PortMask) -> PortMask {
        var result = PortMask()
        result.w0 = w0 & ~other.w0; result.w1 = w1 & ~other.w1
        result.w2 = w2 & ~other.w2; result.w3 = w3 & ~other.w3
        return result
    }

    @inlinable func word(_ index: Int) -> UInt64 {
        switch index {
        case 0: w0
        case 1: w1
        case 2: w2
        default: w3
        }
    }
}

/// Why the switch dropped a frame. `name` is the key in the status file.
public enum DropReason: Int, CaseIterable, Sendable {
    /// Shorter than an Ethernet header.
    case malformedRunt
    /// Longer than 14 + segment MTU without GSO, or longer than 65550 bytes with GSO.
    case malformedGiant
    /// A truncated or inconsistent L3/L4 header (IHL, lengths, ARP sizes, ND options, ...).
    case malformedHeader
    /// The virtio-net header is inconsistent with the frame.
    case malformedVnetHeader
    /// A GSO type that does not match the parsed packet (`OffloadCheck`).
    case offloadGSOMismatch
    /// NEEDS_CSUM pointing anywhere but the parsed TCP or UDP checksum field (`OffloadCheck`).
    case offloadChecksumMismatch
    /// A GSO segment size too small, too large for the MTU, or too many UDP segments (`OffloadCheck`).
    case offloadGSOSize
    /// A virtio-net `hdr_len` past the frame or, with GSO, short of its headers (`OffloadCheck`).
    case offloadHeaderLength
    /// An 802.1Q / 802.1ad / QinQ tag.
    case vlanTagged
    /// Anything but IPv4, ARP and IPv6.
    case ethertypeNotAllowed
    /// A multicast, broadcast or zero source MAC.
    case sourceMACInvalid
    case sourceMACSpoofed
    case sourceIPSpoofed
    case arpSpoofed
    case ndSpoofed
    /// A DHCP or DHCPv6 server message from a port that is not a DHCP server.
    case dhcpServer
    /// An IPv6 router advertisement or redirect, or an ICMPv4 redirect, from a port that is not a router.
    case routerAdvertisement
    /// A fragment that could hide or rewrite its transport header (RFC 1858, RFC 7112, RFC 6980).
    case fragmentInvalid
    case aclIngress
    case aclEgress
    case rateLimit
    case stormBroadcast
    case stormMulticast
    /// A unicast whose destination was learned on the ingress port, or a segment with no other port.
    case noDestination
    /// Reported by the engine when a write failed.
    case txError
    /// Uplink: a datagram without a valid VXLAN header (shorter than 8 bytes, I flag clear).
    case vxlanMalformed
    /// Uplink: a VNI that is none of this tenant's segments.
    case vxlanUnknownVNI
    /// Uplink: an outer source address that is not a current member host of the VNI's segment.
    case vxlanUnknownHost
    /// Uplink: an inner source MAC that the fleet map does not place on the sending host.
    case vxlanSpoofedMAC
    /// Uplink: an inner source IP (or ARP sender, ND address) that is not the sending port's.
    case vxlanSpoofedIP
    /// Uplink: no free send slot (or segmentation buffer) in the engine; the frame is lost.
    case uplinkBusy
    /// Uplink: a GSO or NEEDS_CSUM frame the software segmentation could not lay out.
    case uplinkSegmentation
    /// Not a loss: an ARP request or neighbor solicitation the switch answered itself (proxy
    /// ARP/ND for an address the fleet map or a local port owns), counted on the asking port.
    case neighborAnswered

    /// The name used in the status file.
    public var name: String {
        switch self {
        case .malformedRunt: "malformed-runt"
        case .malformedGiant: "malformed-giant"
        case .malformedHeader: "malformed-header"
        case .malformedVnetHeader: "malformed-vnet-header"
        case .offloadGSOMismatch: "offload-gso-mismatch"
        case .offloadChecksumMismatch: "offload-csum-mismatch"
        case .offloadGSOSize: "offload-gso-size"
        case .offloadHeaderLength: "offload-hdr-len"
        case .vlanTagged: "vlan-tagged"
        case .ethertypeNotAllowed: "ethertype-not-allowed"
        case .sourceMACInvalid: "source-mac-invalid"
        case .sourceMACSpoofed: "source-mac-spoofed"
        case .sourceIPSpoofed: "source-ip-spoofed"
        case .arpSpoofed: "arp-spoofed"
        case .ndSpoofed: "nd-spoofed"
        case .dhcpServer: "dhcp-server"
        case .routerAdvertisement: "router-advertisement"
        case .fragmentInvalid: "fragment-invalid"
        case .aclIngress: "acl-ingress"
        case .aclEgress: "acl-egress"
        case .rateLimit: "rate-limit"
        case .stormBroadcast: "storm-broadcast"
        case .stormMulticast: "storm-multicast"
        case .noDestination: "no-destination"
        case .txError: "tx-error"
        case .vxlanMalformed: "vxlan-malformed"
        case .vxlanUnknownVNI: "vxlan-unknown-vni"
        case .vxlanUnknownHost: "vxlan-unknown-host"
        case .vxlanSpoofedMAC: "vxlan-spoofed-mac"
        case .vxlanSpoofedIP: "vxlan-spoofed-ip"
        case .uplinkBusy: "uplink-busy"
        case .uplinkSegmentation: "uplink-segmentation"
        case .neighborAnswered: "neighbor-answered"
        }
    }
}

/// What to do with one frame.
public enum Verdict: Equatable, Sendable {
    case drop(DropReason)
    /// Send the frame to every port in the mask. The mask is never empty. It may hold the
    /// uplink's pseudo port (`ForwardingPlane.uplinkPort`): then the frame also goes to the hosts
    /// `ForwardingPlane.forEachUplinkDestination` names.
    case forward(PortMask)
    /// The switch answered the frame itself (proxy ARP/ND): send the `length` bytes of
    /// `ForwardingPlane.answer` (an Ethernet frame) back to the ingress port, nothing else.
    case answer(length: Int)
}
