import Config
import FleetModel
import Synchronization

/// What an `UplinkTable` is compiled against: the switch's segments and local ports.
struct UplinkBasis: Sendable {
    let segmentNames: [(tenant: String, segment: String)]
    let segmentVNI: [UInt32?]
    let segmentTenant: [Int]
    /// The tenant the uplink serves: the configuration's first (a switch process serves one).
    let uplinkTenant: Int
    let ports: [PortDescriptor]
    let portSegment: [Int]
    let table: SegmentTable
}

/// An underlay (outer) IP address: IPv4 in the low 32 bits of `low` with `high` zero, or IPv6.
/// The engine turns it into a sockaddr (port 4789) and parses received sources into it.
public struct UnderlayAddress: Hashable, Sendable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64
    public var isIPv6: Bool

    public init(ipv4: UInt32) { high = 0; low = UInt64(ipv4); isIPv6 = false }

    /// An IPv4-mapped IPv6 address (::ffff:a.b.c.d, what a dual-stack socket reports for an IPv4
    /// peer) becomes the IPv4 address, so that both spellings name one host.
    public init(ipv6High high: UInt64, low: UInt64) {
        let mapped = high == 0 && low >> 32 == 0xFFFF
        self.high = high
        self.low = mapped ? low & 0xFFFF_FFFF : low
        self.isIPv6 = !mapped
    }

    public init(_ address: IPAddress) {
        switch address {
        case .v4(let a): self = UnderlayAddress(ipv4: a.rawValue)
        case .v6(let a): self = UnderlayAddress(ipv6High: a.high, low: a.low)
        }
    }

    public var ipv4: UInt32 { UInt32(truncatingIfNeeded: low) }

    public var description: String {
        isIPv6 ? IPAddress.v6(IPv6Address(high: high, low: low)).description
            : IPAddress.v4(IPv4Address(rawValue: ipv4)).description
    }
}

/// One tenant's `FleetView` compiled for the per-frame path: immutable, built off the packet
/// threads (`ForwardingPlane.updateFleet`) and swapped in whole.
///
/// Segment indexes are the switch's (`SwitchState.segmentNames`); remote ports are numbered
/// 0..<count and checked by a `PortSecurity` of their own (their MAC, their IPs and the IPv6
/// link-local address of their MAC, no DHCP server, no router), as a local port would be.
final class UplinkTable: Sendable {
    struct HostKey: Hashable { var segment: Int32; var address: UnderlayAddress }
    struct MACKey: Hashable { var segment: Int32; var mac: UInt64 }
    struct OwnerKey: Hashable { var segment: Int32; var address: IPAddress }

    /// VNI -> segment index, for the segments of the uplink's tenant that have one.
    let segmentOfVNI: [UInt32: Int32]
    /// Per segment index: its VNI (meaningful where `hasVNI`).
    let vni: [UInt32]
    let hasVNI: [Bool]
    /// Distinct remote hosts (by underlay address).
    let hosts: [UnderlayAddress]
    /// Per segment index: the hosts that have ports in it (indexes into `hosts`).
    let segmentHosts: [[Int32]]
    /// (segment, underlay) -> host index: the member check on received datagrams.
    let member: [HostKey: Int32]
    /// (segment, MAC) -> remote port.
    let remoteMAC: [MACKey: Int32]
    /// Per remote port: its host.
    let remoteHost: [Int32]
    let remoteSecurity: PortSecurity
    /// (segment, IP) -> MAC of every address a remote or local port owns: proxy ARP/ND answers.
    let owners: [OwnerKey: MACAddress]
    /// Records of the view the table could not use (unparsable underlay, MAC or address; a
    /// segment this switch does not have).
    let problems: [String]

    /// The table with no remote host: every VNI segment of the tenant is known, no host is a member.
    convenience init(state: UplinkBasis) {
        self.init(view: FleetView(), state: state)
    }

    init(view: FleetView, state: UplinkBasis) {
        var segmentOfVNI: [UInt32: Int32] = [:]
        var vni = Array(repeating: UInt32(0), count: state.segmentNames.count)
        var hasVNI = Array(repeating: false, count: state.segmentNames.count)
        var problems: [String] = []
        // The configuration is authoritative for which segment has which VNI.
        for (index, vniValue) in state.segmentVNI.enumerated() {
            guard let vniValue, state.segmentTenant[index] == state.uplinkTenant else { continue }
            segmentOfVNI[vniValue] = Int32(index)
            vni[index] = vniValue
            hasVNI[index] = true
        }
        var hosts: [UnderlayAddress] = []
        var hostIndex: [UnderlayAddress: Int32] = [:]
        var segmentHosts = Array(repeating: [Int32](), count: state.segmentNames.count)
        var member: [HostKey: Int32] = [:]
        var remoteMAC: [MACKey: Int32] = [:]
        var remoteHost: [Int32] = []
        var remotePorts: [Port] = []
        var owners: [OwnerKey: MACAddress] = [:]

        for segment in view.segments {
            guard let index = segmentOfVNI[segment.vni],
                  state.segmentNames[Int(index)].segment == segment.id else {
                problems.append("segment \(segment.id) (VNI \(segment.vni)) is not one of this switch's segments with that VNI")
                continue
            }
            for host in segment.hosts {
                guard let ip = IPAddress(host.underlay) else {
                    problems.append("host \(host.id): underlay '\(host.underlay)' is not an IP address"); continue
                }
                let address = UnderlayAddress(ip)
                let h: Int32
                if let known = hostIndex[address] { h = known } else {
                    h = Int32(hosts.count); hosts.append(address); hostIndex[address] = h
                }
                if member[HostKey(segment: index, address: address)] == nil {
                    member[HostKey(segment: index, address: address)] = h
                    segmentHosts[Int(index)].append(h)
                }
                for port in host.ports {
                    guard let mac = MACAddress(port.mac), !mac.isMulticast, !mac.isZero else {
                        problems.append("port \(host.id)/\(port.id): '\(port.mac)' is not a unicast MAC"); continue
                    }
                    let prefixes = port.ips.compactMap { IPAddress($0) }.compactMap { address -> IPPrefix? in
                        switch address {
                        case .v4: IPPrefix(address: address, length: 32)
                        case .v6: IPPrefix(address: address, length: 128)
                        }
                    }
                    guard prefixes.count == port.ips.count else {
                        problems.append("port \(host.id)/\(port.id): an address of \(port.ips) is not an IP address"); continue
                    }
                    let key = MACKey(segment: index, mac: mac.rawValue)
                    guard remoteMAC[key] == nil, state.table.lookup(segment: Int(index), mac: mac.rawValue, now: 0) == nil
                    else {
                        problems.append("port \(host.id)/\(port.id): MAC \(mac) is claimed twice in segment \(segment.id)"); continue
                    }
                    remoteMAC[key] = Int32(remotePorts.count)
                    remoteHost.append(h)
                    remotePorts.append(Port(id: port.id, segment: segment.id, mac: mac, ips: prefixes))
                    for prefix in prefixes { owners[OwnerKey(segment: index, address: prefix.address)] = mac }
                }
            }
        }
        // Local ports answer for their own addresses too: a request for one is not flooded to
        // the fleet (the port answers it as well, which the asker takes as a duplicate).
        for (port, descriptor) in state.ports.enumerated() where hasVNI[state.portSegment[port]] {
            for prefix in descriptor.configuration.ips {
                owners[OwnerKey(segment: Int32(state.portSegment[port]), address: prefix.address)] = descriptor.mac
            }
        }
        self.segmentOfVNI = segmentOfVNI
        self.vni = vni
        self.hasVNI = hasVNI
        self.hosts = hosts
        self.segmentHosts = segmentHosts
        self.member = member
        self.remoteMAC = remoteMAC
        self.remoteHost = remoteHost
        self.remoteSecurity = PortSecurity(ports: remotePorts)
        self.owners = owners
        self.problems = problems
    }
}

/// The current `UplinkTable` of a switch, shared by every worker: replaced under a lock by
/// `ForwardingPlane.updateFleet`, with a generation that workers read (one relaxed atomic load)
/// once per batch to see whether they must take the new reference.
final class UplinkTables: Sendable {
    let current: Mutex<UplinkTable>
    let generation = Atomic<UInt64>(0)

    init(_ table: UplinkTable) { current = Mutex(table) }

    func replace(with table: UplinkTable) {
        current.withLock { $0 = table }
        generation.add(1, ordering: .releasing)
    }
}

/// One worker's view of the uplink: the table it uses until its next `refreshFleet()`, the
/// destinations of the last frame it forwarded to the uplink, and its answer buffer. Used by
/// its worker's thread only.
final class UplinkWorkerState: @unchecked Sendable {
    // @unchecked Sendable: single-threaded by contract (one worker's handle).
    var table: UplinkTable
    var generation: UInt64
    /// The last `.forward` naming the uplink: its segment and host (-1: every member host).
    var segment: Int32 = 0
    var host: Int32 = -1
    /// Room for one ARP reply or neighbor advertisement.
    let answer: UnsafeMutableRawBufferPointer

    init(table: UplinkTable, generation: UInt64) {
        self.table = table
        self.generation = generation
        answer = .allocate(byteCount: 256, alignment: 16)
        answer.initializeMemory(as: UInt8.self, repeating: 0)
    }

    deinit { answer.deallocate() }
}
