import Config
import Metering
import Virtio

/// One switch port as the engine sees it.
public struct PortDescriptor: Sendable {
    public let index: Int
    public let tenant: String
    public let port: String
    public let segment: String
    public let interfaceName: String
    public let mac: MACAddress
    public let configuration: Port
}

struct PortCounters: Sendable {
    var rxFrames: UInt64 = 0
    var rxBytes: UInt64 = 0
    var txFrames: UInt64 = 0
    var txBytes: UInt64 = 0
    var learned: UInt64 = 0
    var refused: UInt64 = 0
}

/// A port's ingress policers: rate limit (bits and packets) and storm control.
struct PortLimiter: Sendable {
    var bits: TokenBucket?
    var packets: TokenBucket?
    var broadcast: TokenBucket?
    var multicast: TokenBucket?

    init(_ port: Port) {
        if let limit = port.rateLimit {
            if let rate = limit.bitsPerSecond, let burst = limit.effectiveBurstBits {
                bits = TokenBucket(rate: rate, burst: burst)
            }
            if let rate = limit.packetsPerSecond, let burst = limit.effectiveBurstPackets {
                packets = TokenBucket(rate: rate, burst: burst)
            }
        }
        if let storm = port.stormControl {
            // A one-second burst: storm control bounds sustained floods, not short bursts.
            if let rate = storm.broadcastPacketsPerSecond { broadcast = TokenBucket(rate: rate, burst: rate) }
            if let rate = storm.multicastPacketsPerSecond { multicast = TokenBucket(rate: rate, burst: rate) }
        }
    }

    var isUnlimited: Bool { bits == nil && packets == nil && broadcast == nil && multicast == nil }
}

/// The switch's forwarding state and pipeline. Single-threaded: owned by the engine thread.
///
/// Per frame, `process` runs: virtio-net header and length checks; Ethernet type; the offload
/// header against the parsed headers (`OffloadCheck`); port security
/// (source MAC, source IP, ARP, ND, DHCP server, router guard); MAC learning; the tenant's ingress
/// ACL; rate limit and storm control; the segment's forwarding table; the egress ACL of each
/// target port. All state lives in flat arrays of plain structs built at `init`: a frame causes
/// no allocation, no reference counting and no string work.
public struct ForwardingPlane: Sendable {
    /// The ports, indexed in configuration order: tenants in order, their TAP ports in order.
    public let ports: [PortDescriptor]

    let portSegment: [Int]
    let portTenant: [Int]
    let segmentMTU: [Int]
    let segmentMembers: [PortMask]
    let segmentNames: [(tenant: String, segment: String)]
    let security: PortSecurity
    let acl: AccessControl
    var table: SegmentTable
    var counters: [PortCounters]
    /// Drops per port and reason: `port * DropReason.allCases.count + reason.rawValue`.
    var drops: [UInt64]
    var limiters: [PortLimiter]
    let limited: [Bool]

    static let reasonCount = DropReason.allCases.count

    /// Builds the switch for a validated configuration. Traps if it has more than 256 ports.
    public init(configuration: HostConfiguration) {
        var segmentIndex: [String: Int] = [:]  // "tenant\0segment"
        var segmentNames: [(tenant: String, segment: String)] = []
        var segmentSettings: [Segment] = []
        for tenant in configuration.tenants {
            for segment in tenant.segments where segmentIndex["\(tenant.id)\0\(segment.id)"] == nil {
                segmentIndex["\(tenant.id)\0\(segment.id)"] = segmentNames.count
                segmentNames.append((tenant.id, segment.id))
                segmentSettings.append(segment)
            }
        }
        var ports: [PortDescriptor] = []
        var portSegment: [Int] = [], portTenant: [Int] = [], portConfigs: [Port] = []
        var portIndex: [String: Int] = [:]  // "tenant\0port"
        for (tenantIndex, tenant) in configuration.tenants.enumerated() {
            for port in tenant.ports where port.kind == .tap {
                let key = "\(tenant.id)\0\(port.segment)"
                // Validation rejects a port on a missing segment; give it a segment of its own
                // rather than trapping or joining it to another one.
                let segment = segmentIndex[key] ?? {
                    segmentIndex[key] = segmentNames.count
                    segmentNames.append((tenant.id, port.segment))
                    segmentSettings.append(Segment(id: port.segment))
                    return segmentNames.count - 1
                }()
                portIndex["\(tenant.id)\0\(port.id)"] = ports.count
                ports.append(PortDescriptor(index: ports.count, tenant: tenant.id, port: port.id, segment: port.segment,
                                            interfaceName: port.interfaceName(tenant: tenant.id), mac: port.mac,
                                            configuration: port))
                portSegment.append(segment)
                portTenant.append(tenantIndex)
                portConfigs.append(port)
            }
        }
        precondition(ports.count <= PortMask.capacity, "the switch supports at most 256 ports")

        var members = Array(repeating: PortMask(), count: segmentNames.count)
        var statics: [[(mac: MACAddress, port: Int)]] = Array(repeating: [], count: segmentNames.count)
        for (index, segment) in portSegment.enumerated() {
            members[segment].insert(index)
            statics[segment].append((ports[index].mac, index))
        }
        self.ports = ports
        self.portSegment = portSegment
        self.portTenant = portTenant
        // Clamped so that no configuration value can overflow the length check.
        self.segmentMTU = segmentSettings.map { min(max(0, $0.mtu), Wire.maxGSOFrameLength) }
        self.segmentMembers = members
        self.segmentNames = segmentNames
        self.security = PortSecurity(ports: portConfigs)
        self.acl = AccessControl(tenants: configuration.tenants) { tenant, port in
            portIndex["\(configuration.tenants[tenant].id)\0\(port)"]
        }
        self.table = SegmentTable(segments: zip(segmentSettings, statics).map { ($0.macTable, $1) },
                                  portCount: ports.count)
        self.counters = Array(repeating: PortCounters(), count: ports.count)
        self.drops = Array(repeating: 0, count: ports.count * ForwardingPlane.reasonCount)
        self.limiters = portConfigs.map(PortLimiter.init)
        self.limited = limiters.map { !$0.isUnlimited }
    }

    /// Runs the ingress pipeline on one frame received from `ingress`. `frame` excludes the
    /// virtio-net header.
    ///
    /// Counts the frame in `ingress`'s rx counters and any drop on `ingress`, except egress ACL
    /// drops, which count on the egress port. A `.forward` mask is never empty, never contains
    /// `ingress` or a port of another segment, and has passed the egress ACLs. When the egress
    /// ACLs remove every target the verdict is `.drop(.aclEgress)` (already counted per egress
    /// port). `ingress` must be a port index (the engine's invariant; traps otherwise).
    public mutating func process(frame: UnsafeRawBufferPointer, header: VirtioNetHeader, ingress: Int,
                                 now: UInt64) -> Verdict {
        precondition(ingress >= 0 && ingress < counters.count, "ingress is not a port index")
        counters[ingress].rxFrames &+= 1
        counters[ingress].rxBytes &+= UInt64(frame.count)
        let verdict = decide(frame: frame, header: header, ingress: ingress, now: now)
        if case .drop(let reason) = verdict, reason != .aclEgress {
            drops[ingress &* ForwardingPlane.reasonCount &+ reason.rawValue] &+= 1
        }
        return verdict
    }

    mutating func decide(frame bytes: UnsafeRawBufferPointer, header: VirtioNetHeader, ingress: Int,
                         now: UInt64) -> Verdict {
        let frame = FrameBytes(bytes)
        guard header.isConsistent(frameLength: frame.count) else { return .drop(.malformedVnetHeader) }
        guard frame.count >= Wire.ethernetHeaderLength else { return .drop(.malformedRunt) }
        let segment = portSegment[ingress]
        let maxLength = header.isGSO ? Wire.maxGSOFrameLength : Wire.ethernetHeaderLength + segmentMTU[segment]
        guard frame.count <= maxLength else { return .drop(.malformedGiant) }

        var parsed = ParsedFrame()
        if let reason = FrameParser.parse(frame, isGSO: header.isGSO, into: &parsed) { return .drop(reason) }
        if let reason = OffloadCheck.check(header, parsed, frameLength: frame.count, mtu: segmentMTU[segment]) {
            return .drop(reason)
        }
        if let reason = security.check(frame, parsed, port: ingress) { return .drop(reason) }

        switch table.learn(segment: segment, mac: parsed.source, port: ingress, now: now) {
        case .learned, .moved: counters[ingress].learned &+= 1
        case .refused: counters[ingress].refused &+= 1
        case .refreshed: break
        }

        // ACLs see IP packets; ARP and neighbor discovery keep the segment working whatever they say.
        let tenant = portTenant[ingress]
        let isND = parsed.layer == .ipv6 && parsed.proto == Wire.protoICMPv6 && parsed.hasTransportHeader
            && parsed.icmpType >= 133 && parsed.icmpType <= 137
        let filtered = parsed.isIP && !isND
        let packet = ACLPacket(family: parsed.layer == .ipv4 ? 4 : 6, proto: parsed.proto,
                               sourceHigh: parsed.sourceHigh, sourceLow: parsed.sourceLow,
                               destinationHigh: parsed.destinationHigh, destinationLow: parsed.destinationLow,
                               hasPorts: parsed.hasPorts, isNonFirstFragment: parsed.isNonFirstFragment,
                               sourcePort: parsed.sourcePort, destinationPort: parsed.destinationPort)
        if filtered && acl.hasIngressRules[tenant]
            && !acl.allows(tenant: tenant, port: ingress, egress: false, packet: packet) {
            return .drop(.aclIngress)
        }

        if limited[ingress], let reason = police(frame: frame, parsed: parsed, header: header, port: ingress, now: now) {
            return .drop(reason)
        }

        var targets: PortMask
        if MACAddress(rawValue: parsed.destination).isMulticast {
            targets = segmentMembers[segment]
        } else if let port = table.lookup(segment: segment, mac: parsed.destination, now: now) {
            if port == ingress { return .drop(.noDestination) }
            targets = PortMask()
            targets.insert(port)
        } else {
            targets = segmentMembers[segment]  // unknown unicast floods
        }
        targets.remove(ingress)
        if targets.isEmpty { return .drop(.noDestination) }

        if filtered && acl.hasEgressRules[tenant] {
            var remaining = targets
            while let port = remaining.first {
                remaining.remove(port)
                if !acl.allows(tenant: tenant, port: port, egress: true, packet: packet) {
                    targets.remove(port)
                    drops[port &* ForwardingPlane.reasonCount &+ DropReason.aclEgress.rawValue] &+= 1
                }
            }
            if targets.isEmpty { return .drop(.aclEgress) }
        }
        return .forward(targets)
    }

    /// Storm control, then the rate limit. A frame dropped by one takes no tokens from the other.
    mutating func police(frame: FrameBytes, parsed: ParsedFrame, header: VirtioNetHeader, port: Int,
                         now: UInt64) -> DropReason? {
        let destination = MACAddress(rawValue: parsed.destination)
        if destination.isBroadcast {
            if limiters[port].broadcast != nil, !limiters[port].broadcast!.consume(1, now: now) {
                return .stormBroadcast
            }
        } else if destination.isMulticast {
            if limiters[port].multicast != nil, !limiters[port].multicast!.consume(1, now: now) {
                return .stormMulticast
            }
        }
        // A GSO super-frame becomes ceil(payload / gsoSize) packets on the wire, each with a copy
        // of the headers.
        var packets: UInt64 = 1
        var wireBytes = UInt64(frame.count)
        if header.isGSO && header.gsoSize > 0 && parsed.hasTransportHeader {
            let headers = parsed.transportOffset + parsed.transportHeaderLength
            let payload = frame.count - headers
            if payload > 0 {
                let size = Int(header.gsoSize)
                packets = UInt64((payload + size - 1) / size)
                wireBytes += (packets - 1) * UInt64(headers)
            }
        }
        let bits = wireBytes * 8
        if limiters[port].bits != nil {
            limiters[port].bits!.refill(now: now)
            guard limiters[port].bits!.canTake(bits) else { return .rateLimit }
        }
        if limiters[port].packets != nil {
            limiters[port].packets!.refill(now: now)
            guard limiters[port].packets!.canTake(packets) else { return .rateLimit }
        }
        if limiters[port].bits != nil { limiters[port].bits!.take(bits) }
        if limiters[port].packets != nil { limiters[port].packets!.take(packets) }
        return nil
    }

    /// Counts a frame the engine wrote to `port`.
    public mutating func recordTransmitted(port: Int, bytes: Int) {
        guard port >= 0 && port < counters.count else { return }
        counters[port].txFrames &+= 1
        counters[port].txBytes &+= UInt64(max(0, bytes))
    }

    /// Counts a drop the engine decided on (for example `.txError`).
    public mutating func recordDrop(_ reason: DropReason, port: Int) {
        guard port >= 0 && port < counters.count else { return }
        drops[port * ForwardingPlane.reasonCount + reason.rawValue] &+= 1
    }

    /// Ages out MAC entries and frees their slots; call it about once a second.
    public mutating func expire(now: UInt64) {
        table.expire(now: now)
    }

    /// The port `mac` is known on in `port`'s segment (static or learned), if any.
    public mutating func lookup(mac: MACAddress, segmentOf port: Int, now: UInt64) -> Int? {
        table.lookup(segment: portSegment[port], mac: mac.rawValue, now: now)
    }

    /// Learned entries `port` holds now.
    public func learnedEntries(port: Int) -> Int { table.learnedEntries(port: port) }

    /// Slots in the MAC table of `port`'s segment: the bound on its memory.
    public func macTableCapacity(segmentOf port: Int) -> Int { table.capacity(segment: portSegment[port]) }

    /// Snapshot for the status file.
    public func statistics() -> SwitchStatistics {
        let portStatistics = ports.map { port -> PortStatistics in
            let counter = counters[port.index]
            var drops: [String: UInt64] = [:]
            for reason in DropReason.allCases {
                drops[reason.name] = self.drops[port.index * ForwardingPlane.reasonCount + reason.rawValue]
            }
            return PortStatistics(index: port.index, tenant: port.tenant, port: port.port, segment: port.segment,
                                  interface: port.interfaceName,
                                  rx: TrafficCounters(frames: counter.rxFrames, bytes: counter.rxBytes),
                                  tx: TrafficCounters(frames: counter.txFrames, bytes: counter.txBytes),
                                  drops: drops,
                                  macLearning: MACLearningStatistics(learned: counter.learned, refused: counter.refused))
        }
        let segmentStatistics = segmentNames.indices.map {
            SegmentStatistics(tenant: segmentNames[$0].tenant, segment: segmentNames[$0].segment,
                              macEntries: table.entryCount(segment: $0))
        }
        return SwitchStatistics(ports: portStatistics, segments: segmentStatistics)
    }
}
