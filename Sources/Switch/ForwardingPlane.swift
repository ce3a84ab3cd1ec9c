import Config
import FleetModel
import Metering
import Synchronization
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

/// A port's ingress policers: rate limit (bits and packets) and storm control, as indexes into
/// `SwitchState.policers` (-1: none). Shared by every worker that serves one of the port's
/// queues, so the port's limits hold across all of them (see `SharedTokenBucket`).
struct PortPolicers: Sendable {
    var bits: Int32 = -1
    var packets: Int32 = -1
    var broadcast: Int32 = -1
    var multicast: Int32 = -1

    var isUnlimited: Bool { bits < 0 && packets < 0 && broadcast < 0 && multicast < 0 }

    /// Appends the port's buckets (rate, burst) to `buckets` and returns their indexes.
    static func compile(_ port: Port, into buckets: inout [(rate: UInt64, burst: UInt64)]) -> PortPolicers {
        func add(_ rate: UInt64, _ burst: UInt64) -> Int32 {
            buckets.append((rate, burst))
            return Int32(buckets.count - 1)
        }
        var policers = PortPolicers()
        if let limit = port.rateLimit {
            if let rate = limit.bitsPerSecond, let burst = limit.effectiveBurstBits { policers.bits = add(rate, burst) }
            if let rate = limit.packetsPerSecond, let burst = limit.effectiveBurstPackets { policers.packets = add(rate, burst) }
        }
        if let storm = port.stormControl {
            // A one-second burst: storm control bounds sustained floods, not short bursts.
            if let rate = storm.broadcastPacketsPerSecond { policers.broadcast = add(rate, rate) }
            if let rate = storm.multicastPacketsPerSecond { policers.multicast = add(rate, rate) }
        }
        return policers
    }
}

/// What the pipeline reads of an ingress port and its segment, in one record per port: one
/// bounds check and one or two cache lines per frame, instead of an array access per field.
struct PortPlan: Sendable {
    /// The ports of its segment.
    var members: PortMask
    var policers: PortPolicers
    var segment: Int32
    var tenant: Int32
    /// The segment's MTU, clamped to `Wire.maxGSOFrameLength`.
    var mtu: Int32
    /// Any of `policers` set.
    var limited: Bool
    /// The tenant's ACL has rules of that direction.
    var hasIngressACL: Bool
    var hasEgressACL: Bool
    /// The segment has a VNI: frames may also go to (and come from) the uplink.
    var uplink: Bool
}

/// What every packet worker shares: the configuration compiled at init (immutable), the MAC
/// tables (`SegmentTable`, lock-free lookups) and the policers (`SharedTokenBucket`, lock-free
/// takes), and the list of the workers' counters that `statistics()` sums.
final class SwitchState: Sendable {
    let ports: [PortDescriptor]
    let portSegment: [Int]
    let segmentNames: [(tenant: String, segment: String)]
    let security: PortSecurity
    let acl: AccessControl
    let table: SegmentTable
    let policers: SharedTokenBuckets
    /// Per port: what the pipeline reads of it and its segment.
    let plans: [PortPlan]
    /// Every worker's counters; appended to when a worker is made, read when statistics are.
    /// Never touched per frame.
    let workerCounters = Mutex<[WorkerCounters]>([])
    /// Per segment: its ports, its MTU (clamped as in `PortPlan`).
    let segmentMembers: [PortMask]
    let segmentMTU: [Int]
    /// The uplink's pseudo port index (`ports.count`) and whether any segment has a VNI.
    let uplinkPort: Int
    let hasUplink: Bool
    let uplinkBasis: UplinkBasis
    let uplinkTables: UplinkTables

    init(configuration: HostConfiguration) {
        var segmentIndex: [String: Int] = [:]  // "tenant\0segment"
        var segmentNames: [(tenant: String, segment: String)] = []
        var segmentSettings: [Segment] = []
        var segmentTenant: [Int] = []
        for (tenantIndex, tenant) in configuration.tenants.enumerated() {
            for segment in tenant.segments where segmentIndex["\(tenant.id)\0\(segment.id)"] == nil {
                segmentIndex["\(tenant.id)\0\(segment.id)"] = segmentNames.count
                segmentNames.append((tenant.id, segment.id))
                segmentSettings.append(segment)
                segmentTenant.append(tenantIndex)
            }
        }
        var ports: [PortDescriptor] = []
        var portSegment: [Int] = [], portTenant: [Int] = [], portConfigs: [Port] = []
        var portIndex: [String: Int] = [:]  // "tenant\0port"
        for (tenantIndex, tenant) in configuration.tenants.enumerated() {
            for port in tenant.ports {
                let key = "\(tenant.id)\0\(port.segment)"
                // Validation rejects a port on a missing segment; give it a segment of its own
                // rather than trapping or joining it to another one.
                let segment = segmentIndex[key] ?? {
                    segmentIndex[key] = segmentNames.count
                    segmentNames.append((tenant.id, port.segment))
                    segmentSettings.append(Segment(id: port.segment))
                    segmentTenant.append(tenantIndex)
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
        // Only the first tenant's segments reach the uplink: a switch process serves one tenant.
        let segmentVNI = segmentSettings.indices.map { segmentTenant[$0] == 0 ? segmentSettings[$0].vni : nil }
        let hasUplink = segmentVNI.contains { $0 != nil }
        precondition(!hasUplink || ports.count < PortMask.capacity, "with an uplink the switch supports at most 255 ports")

        var members = Array(repeating: PortMask(), count: segmentNames.count)
        var statics: [[(mac: MACAddress, port: Int)]] = Array(repeating: [], count: segmentNames.count)
        for (index, segment) in portSegment.enumerated() {
            members[segment].insert(index)
            statics[segment].append((ports[index].mac, index))
        }
        self.ports = ports
        self.portSegment = portSegment
        self.segmentNames = segmentNames
        self.security = PortSecurity(ports: portConfigs)
        self.acl = AccessControl(tenants: configuration.tenants) { tenant, port in
            portIndex["\(configuration.tenants[tenant].id)\0\(port)"]
        }
        self.table = SegmentTable(segments: zip(segmentSettings, statics).map { ($0.macTable, $1) },
                                  portCount: ports.count)
        var buckets: [(rate: UInt64, burst: UInt64)] = []
        let portPolicers = portConfigs.map { PortPolicers.compile($0, into: &buckets) }
        self.policers = SharedTokenBuckets(buckets)
        // Clamped so that no configuration value can overflow the length check.
        let segmentMTU = segmentSettings.map { min(max(0, $0.mtu), Wire.maxGSOFrameLength) }
        let acl = self.acl
        self.plans = portPolicers.indices.map { port in
            let segment = portSegment[port], tenant = portTenant[port]
            return PortPlan(members: members[segment], policers: portPolicers[port], segment: Int32(segment),
                            tenant: Int32(tenant), mtu: Int32(segmentMTU[segment]),
                            limited: !portPolicers[port].isUnlimited,
                            hasIngressACL: acl.hasIngressRules[tenant], hasEgressACL: acl.hasEgressRules[tenant],
                            uplink: segmentVNI[segment] != nil)
        }
        self.segmentMembers = members
        self.segmentMTU = segmentMTU
        self.uplinkPort = ports.count
        self.hasUplink = hasUplink
        let basis = UplinkBasis(segmentNames: segmentNames, segmentVNI: segmentVNI, segmentTenant: segmentTenant,
                                uplinkTenant: 0, ports: ports, portSegment: portSegment, table: self.table)
        self.uplinkBasis = basis
        self.uplinkTables = UplinkTables(UplinkTable(state: basis))
    }
}

/// One packet worker's handle on the switch: the forwarding pipeline over the state all workers
/// share, counting into this worker's own counters.
///
/// Per frame, `process` runs: virtio-net header and length checks; Ethernet type; the offload
/// header against the parsed headers (`OffloadCheck`); port security (source MAC, source IP,
/// ARP, ND, DHCP server, router guard); MAC learning; the tenant's ingress
/// ACL; rate limit and storm control; the segment's forwarding table; the egress ACL of each
/// target port. The compiled configuration lives in flat arrays of plain structs built at `init`:
/// a frame causes no allocation, no reference counting and no string work, and takes no lock.
///
/// Threads: `init(configuration:)` makes the first worker's handle, `makeWorker()` another one
/// sharing the same MAC tables and policers. Use each handle from one thread at a time (its
/// counters have a single writer). `statistics()`, `expire`, `lookup` and `learnedEntries` may be
/// called from any thread while workers forward.
public struct ForwardingPlane: Sendable {
    let state: SwitchState
    let counters: WorkerCounters
    let uplink: UplinkWorkerState

    /// The ports, indexed in configuration order: tenants in order, their ports (TAP and
    /// vhost-user) in order.
    public var ports: [PortDescriptor] { state.ports }

    static let reasonCount = DropReason.allCases.count

    /// Builds the switch for a validated configuration and returns its first worker's handle.
    /// Traps if it has more than 256 ports.
    public init(configuration: HostConfiguration) {
        self.init(state: SwitchState(configuration: configuration))
    }

    private init(state: SwitchState) {
        self.state = state
        // One more port's counters: the uplink's.
        counters = WorkerCounters(portCount: state.ports.count + 1)
        let generation = state.uplinkTables.generation.load(ordering: .acquiring)
        uplink = UplinkWorkerState(table: state.uplinkTables.current.withLock { $0 }, generation: generation)
        state.workerCounters.withLock { $0.append(counters) }
    }

    /// A handle for another worker: same switch, counters of its own (summed by `statistics()`).
    public func makeWorker() -> ForwardingPlane { ForwardingPlane(state: state) }

    /// Runs the ingress pipeline on one frame received from `ingress`. `frame` excludes the
    /// virtio-net header.
    ///
    /// Counts the frame in `ingress`'s rx counters and any drop on `ingress`, except egress ACL
    /// drops, which count on the egress port. A `.forward` mask is never empty, never contains
    /// `ingress` or a port of another segment, and has passed the egress ACLs. When the egress
    /// ACLs remove every target the verdict is `.drop(.aclEgress)` (already counted per egress
    /// port). `ingress` must be a port index (the engine's invariant; traps otherwise).
    public func process(frame: UnsafeRawBufferPointer, header: VirtioNetHeader, ingress: Int,
                        now: UInt64) -> Verdict {
        precondition(ingress >= 0 && ingress < state.ports.count, "ingress is not a port index")
        counters.add(WorkerCounters.index(port: ingress, .rxFrames))
        counters.add(WorkerCounters.index(port: ingress, .rxBytes), UInt64(frame.count))
        let verdict = decide(frame: frame, header: header, ingress: ingress, now: now)
        switch verdict {
        case .drop(let reason) where reason != .aclEgress:
            counters.add(WorkerCounters.index(port: ingress, drop: reason))
        case .answer:
            counters.add(WorkerCounters.index(port: ingress, drop: .neighborAnswered))
        default:
            break
        }
        return verdict
    }

    // MARK: The uplink

    /// The uplink's pseudo port: the index after the last port. A `.forward` mask holding it
    /// sends the frame to the hosts `forEachUplinkDestination` names.
    public var uplinkPort: Int { state.uplinkPort }

    /// Whether a segment of the (first) tenant has a VNI: the switch then has an uplink.
    public var hasUplink: Bool { state.hasUplink }

    /// The bytes of the last `.answer(length:)` verdict (valid until this handle's next frame).
    public var answer: UnsafeRawBufferPointer { UnsafeRawBufferPointer(uplink.answer) }

    /// Replaces the fleet map the uplink forwards by: compiled here (allocates; call it off the
    /// packet threads, from any thread, through any handle), then swapped in; every handle
    /// (worker) takes it at its next `refreshFleet()`. Frames see the old or the new view, never
    /// a mix. Touches no handle's own state, so it may run while that handle's worker forwards.
    /// Returns the records of `view` left out (none when the daemon built it with `FleetView.build`).
    @discardableResult
    public func updateFleet(_ view: FleetView) -> [String] {
        let table = UplinkTable(view: view, state: state.uplinkBasis)
        state.uplinkTables.replace(with: table)
        return table.problems
    }

    /// Takes the current fleet map if it changed since this handle last looked: one atomic load
    /// when it did not. Workers call it once per batch of frames; like `process`, only from the
    /// handle's own thread.
    @inline(__always)
    public func refreshFleet() {
        let generation = state.uplinkTables.generation.load(ordering: .acquiring)
        if generation != uplink.generation {
            uplink.table = state.uplinkTables.current.withLock { $0 }
            uplink.generation = generation
        }
    }

    /// Calls `body` with the VNI and the underlay address of every host the last `.forward`
    /// naming `uplinkPort` goes to (one host for a known remote MAC, else every member host of
    /// the frame's segment).
    @inline(__always)
    public func forEachUplinkDestination(_ body: (UInt32, UnderlayAddress) -> Void) {
        let table = uplink.table
        let segment = Int(uplink.segment)
        guard segment >= 0 && segment < table.vni.count else { return }
        let vni = table.vni[segment]
        if uplink.host >= 0 {
            if Int(uplink.host) < table.hosts.count { body(vni, table.hosts[Int(uplink.host)]) }
            return
        }
        for host in table.segmentHosts[segment] { body(vni, table.hosts[Int(host)]) }
    }

    /// Runs the checks on one VXLAN datagram (`datagram`: the 8-byte VXLAN header, then the inner
    /// Ethernet frame) from underlay address `source`: its VNI must be a segment of the tenant,
    /// `source` a member host of that segment, the inner frame well formed with a source MAC the
    /// fleet map places on that host and source addresses of that port; then it goes to local
    /// ports only (split horizon), through their egress ACLs. Counts on the uplink.
    public func processUplink(datagram: UnsafeRawBufferPointer, source: UnderlayAddress, now: UInt64) -> Verdict {
        let uplinkPort = state.uplinkPort
        counters.add(WorkerCounters.index(port: uplinkPort, .rxFrames))
        counters.add(WorkerCounters.index(port: uplinkPort, .rxBytes), UInt64(max(0, datagram.count - VXLAN.headerLength)))
        let verdict = decideUplink(datagram: datagram, source: source, now: now)
        if case .drop(let reason) = verdict, reason != .aclEgress {
            counters.add(WorkerCounters.index(port: uplinkPort, drop: reason))
        }
        return verdict
    }

    func decideUplink(datagram: UnsafeRawBufferPointer, source: UnderlayAddress, now: UInt64) -> Verdict {
        let table = uplink.table
        guard let vni = VXLAN.vni(of: datagram), datagram.count >= VXLAN.headerLength else { return .drop(.vxlanMalformed) }
        guard let segment32 = table.segmentOfVNI[vni] else { return .drop(.vxlanUnknownVNI) }
        guard let host = table.member[UplinkTable.HostKey(segment: segment32, address: source)] else {
            return .drop(.vxlanUnknownHost)
        }
        let segment = Int(segment32)
        let frame = FrameBytes(UnsafeRawBufferPointer(rebasing: datagram[VXLAN.headerLength...]))
        guard frame.count >= Wire.ethernetHeaderLength else { return .drop(.malformedRunt) }
        guard frame.count <= Wire.ethernetHeaderLength + state.segmentMTU[segment] else { return .drop(.malformedGiant) }
        var parsed = ParsedFrame()
        if let reason = FrameParser.parse(frame, isGSO: false, into: &parsed) { return .drop(reason) }
        let sourceMAC = MACAddress(rawValue: parsed.source)
        if sourceMAC.isMulticast || sourceMAC.isZero { return .drop(.sourceMACInvalid) }
        guard let remote = table.remoteMAC[UplinkTable.MACKey(segment: segment32, mac: parsed.source)],
              table.remoteHost[Int(remote)] == host else { return .drop(.vxlanSpoofedMAC) }
        if let reason = table.remoteSecurity.check(frame, &parsed, port: Int(remote)) {
            switch reason {
            case .sourceMACSpoofed: return .drop(.vxlanSpoofedMAC)
            case .sourceIPSpoofed, .arpSpoofed, .ndSpoofed: return .drop(.vxlanSpoofedIP)
            default: return .drop(reason)
            }
        }

        var targets: PortMask
        if MACAddress(rawValue: parsed.destination).isMulticast {
            targets = state.segmentMembers[segment]
        } else if let port = state.table.lookup(segment: segment, mac: parsed.destination, now: now) {
            targets = PortMask()
            targets.insert(port)
        } else {
            targets = state.segmentMembers[segment]
        }
        if targets.isEmpty { return .drop(.noDestination) }

        let tenant = state.uplinkBasis.uplinkTenant
        if parsed.isACLFiltered && state.acl.hasEgressRules[tenant] {
            return applyEgressACL(targets, tenant: tenant, packet: parsed.aclPacket)
        }
        return .forward(targets)
    }

    /// The egress ACL of each port of `targets`: a port that refuses `packet` is left out and
    /// counts the drop; `.drop(.aclEgress)` when none is left.
    @inline(__always)
    func applyEgressACL(_ targets: PortMask, tenant: Int, packet: ACLPacket) -> Verdict {
        var targets = targets
        var remaining = targets
        while let port = remaining.first {
            remaining.remove(port)
            if !state.acl.allows(tenant: tenant, port: port, egress: true, packet: packet) {
                targets.remove(port)
                counters.add(WorkerCounters.index(port: port, drop: .aclEgress))
            }
        }
        return targets.isEmpty ? .drop(.aclEgress) : .forward(targets)
    }

    // Inlined into `process`, its one caller: the verdict is then written once, into the caller's
    // result. Returned from a call it was copied with 16-byte loads of the callee's 8-byte
    // stores, which stall on store forwarding.
    @inline(__always)
    func decide(frame bytes: UnsafeRawBufferPointer, header: VirtioNetHeader, ingress: Int,
                now: UInt64) -> Verdict {
        let state = self.state
        let frame = FrameBytes(bytes)
        guard header.isConsistent(frameLength: frame.count) else { return .drop(.malformedVnetHeader) }
        guard frame.count >= Wire.ethernetHeaderLength else { return .drop(.malformedRunt) }
        let plan = state.plans[ingress]
        let segment = Int(plan.segment), mtu = Int(plan.mtu)
        let maxLength = header.isGSO ? Wire.maxGSOFrameLength : Wire.ethernetHeaderLength + mtu
        guard frame.count <= maxLength else { return .drop(.malformedGiant) }

        var parsed = ParsedFrame()
        if let reason = FrameParser.parse(frame, isGSO: header.isGSO, into: &parsed) { return .drop(reason) }
        if let reason = OffloadCheck.check(header, &parsed, frameLength: frame.count, mtu: mtu) {
            return .drop(reason)
        }
        if let reason = state.security.check(frame, &parsed, port: ingress) { return .drop(reason) }

        switch state.table.learn(segment: segment, mac: parsed.source, port: ingress, now: now) {
        case .learned, .moved: counters.add(WorkerCounters.index(port: ingress, .learned))
        case .refused: counters.add(WorkerCounters.index(port: ingress, .refused))
        case .refreshed, .busy: break
        }

        // ACLs see IP packets; ARP and neighbor discovery keep the segment working whatever they say.
        let tenant = Int(plan.tenant)
        let filtered = parsed.isACLFiltered
        let packet = parsed.aclPacket
        if filtered && plan.hasIngressACL
            && !state.acl.allows(tenant: tenant, port: ingress, egress: false, packet: packet) {
            return .drop(.aclIngress)
        }

        if plan.limited,
           let reason = police(frame: frame, parsed: &parsed, header: header, limiter: plan.policers, now: now) {
            return .drop(reason)
        }

        if plan.uplink {
            return decideSpanning(frame: frame, parsed: &parsed, plan: plan, ingress: ingress, filtered: filtered,
                                  packet: packet, now: now)
        }

        var targets: PortMask
        if MACAddress(rawValue: parsed.destination).isMulticast {
            targets = plan.members
        } else if let port = state.table.lookup(segment: segment, mac: parsed.destination, now: now) {
            if port == ingress { return .drop(.noDestination) }
            targets = PortMask()
            targets.insert(port)
        } else {
            targets = plan.members  // unknown unicast floods
        }
        targets.remove(ingress)
        if targets.isEmpty { return .drop(.noDestination) }

        if filtered && plan.hasEgressACL {
            return applyEgressACL(targets, tenant: tenant, packet: packet)
        }
        return .forward(targets)
    }

    /// The last steps for a frame of a segment with a VNI: proxy ARP/ND, then local ports and
    /// the segment's remote hosts. Out of line: the single-host path never comes here.
    @inline(never)
    func decideSpanning(frame: FrameBytes, parsed: inout ParsedFrame, plan: PortPlan, ingress: Int, filtered: Bool,
                        packet: ACLPacket, now: UInt64) -> Verdict {
        let table = uplink.table
        let segment = Int(plan.segment)
        let isSolicitation = parsed.layer == .ipv6 && parsed.proto == Wire.protoICMPv6 && parsed.hasTransportHeader
            && parsed.icmpType == 135
        if parsed.layer == .arp || isSolicitation {
            let key = Int32(segment)
            let asker = parsed.source
            if let length = NeighborResponder.answer(frame.bytes, into: uplink.answer, owner: { address in
                // Never answer a port for its own address (its duplicate address detection).
                guard let mac = table.owners[UplinkTable.OwnerKey(segment: key, address: address)],
                      mac.rawValue != asker else { return nil }
                return mac
            }), length > 0, length <= uplink.answer.count {
                return .answer(length: length)
            }
        }

        var targets: PortMask
        var host: Int32 = -1
        if MACAddress(rawValue: parsed.destination).isMulticast {
            targets = plan.members
            targets.insert(state.uplinkPort)
        } else if let port = state.table.lookup(segment: segment, mac: parsed.destination, now: now) {
            if port == ingress { return .drop(.noDestination) }
            targets = PortMask()
            targets.insert(port)
        } else if let remote = table.remoteMAC[UplinkTable.MACKey(segment: Int32(segment), mac: parsed.destination)] {
            targets = PortMask()
            targets.insert(state.uplinkPort)
            host = table.remoteHost[Int(remote)]
        } else {
            targets = plan.members  // unknown unicast floods, here and to the member hosts
            targets.insert(state.uplinkPort)
        }
        targets.remove(ingress)
        if targets.contains(state.uplinkPort) {
            if host < 0 && table.segmentHosts[segment].isEmpty { targets.remove(state.uplinkPort) }
            uplink.segment = Int32(segment)
            uplink.host = host
        }
        if targets.isEmpty { return .drop(.noDestination) }

        // Remote ports' egress ACLs are their hosts' to apply.
        if filtered && plan.hasEgressACL {
            let tenant = Int(plan.tenant)
            var remaining = targets
            remaining.remove(state.uplinkPort)
            while let port = remaining.first {
                remaining.remove(port)
                if !state.acl.allows(tenant: tenant, port: port, egress: true, packet: packet) {
                    targets.remove(port)
                    counters.add(WorkerCounters.index(port: port, drop: .aclEgress))
                }
            }
            if targets.isEmpty { return .drop(.aclEgress) }
        }
        return .forward(targets)
    }

    /// Storm control, then the rate limit. A frame dropped by one takes no tokens from the other.
    func police(frame: FrameBytes, parsed: inout ParsedFrame, header: VirtioNetHeader, limiter: PortPolicers,
                now: UInt64) -> DropReason? {
        let policers = state.policers
        let destination = MACAddress(rawValue: parsed.destination)
        if destination.isBroadcast {
            if limiter.broadcast >= 0, !policers.consume(Int(limiter.broadcast), 1, now: now) { return .stormBroadcast }
        } else if destination.isMulticast {
            if limiter.multicast >= 0, !policers.consume(Int(limiter.multicast), 1, now: now) { return .stormMulticast }
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
        if limiter.bits >= 0, !policers.consume(Int(limiter.bits), bits, now: now) { return .rateLimit }
        if limiter.packets >= 0, !policers.consume(Int(limiter.packets), packets, now: now) {
            if limiter.bits >= 0 { policers.giveBack(Int(limiter.bits), bits) }
            return .rateLimit
        }
        return nil
    }

    /// Counts a frame the engine wrote to `port`.
    public func recordTransmitted(port: Int, bytes: Int, frames: Int = 1) {
        guard port >= 0 && port <= state.ports.count else { return }
        counters.add(WorkerCounters.index(port: port, .txFrames), UInt64(max(0, frames)))
        counters.add(WorkerCounters.index(port: port, .txBytes), UInt64(max(0, bytes)))
    }

    /// Counts a drop the engine decided on (for example `.txError`).
    public func recordDrop(_ reason: DropReason, port: Int) {
        guard port >= 0 && port <= state.ports.count else { return }
        counters.add(WorkerCounters.index(port: port, drop: reason))
    }

    /// Ages out MAC entries and frees their slots; call it about once a second, from any thread.
    public func expire(now: UInt64) {
        state.table.expire(now: now)
    }

    /// The port `mac` is known on in `port`'s segment (static or learned), if any.
    public func lookup(mac: MACAddress, segmentOf port: Int, now: UInt64) -> Int? {
        state.table.lookup(segment: state.portSegment[port], mac: mac.rawValue, now: now)
    }

    /// Learned entries `port` holds now.
    public func learnedEntries(port: Int) -> Int { state.table.learnedEntries(port: port) }

    /// Slots in the MAC table of `port`'s segment: the bound on its memory.
    public func macTableCapacity(segmentOf port: Int) -> Int { state.table.capacity(segment: state.portSegment[port]) }

    /// The counters of every worker of this switch, summed. Any thread, any time: a snapshot
    /// taken while workers forward may count a frame's rx and not yet its tx.
    public func statistics() -> SwitchStatistics {
        let workers = state.workerCounters.withLock { $0 }
        let reasons = DropReason.allCases
        func statistics(index: Int, tenant: String, port: String, segment: String, interface: String) -> PortStatistics {
            func sum(_ index: Int) -> UInt64 { workers.reduce(0) { $0 &+ $1.load(index) } }
            func field(_ field: WorkerCounters.Field) -> UInt64 { sum(WorkerCounters.index(port: index, field)) }
            var drops: [String: UInt64] = [:]
            for reason in reasons { drops[reason.name] = sum(WorkerCounters.index(port: index, drop: reason)) }
            return PortStatistics(index: index, tenant: tenant, port: port, segment: segment, interface: interface,
                                  rx: TrafficCounters(frames: field(.rxFrames), bytes: field(.rxBytes)),
                                  tx: TrafficCounters(frames: field(.txFrames), bytes: field(.txBytes)),
                                  drops: drops,
                                  macLearning: MACLearningStatistics(learned: field(.learned), refused: field(.refused)))
        }
        let portStatistics = state.ports.map { port in
            statistics(index: port.index, tenant: port.tenant, port: port.port, segment: port.segment,
                       interface: port.interfaceName)
        }
        let uplink = state.hasUplink
            ? statistics(index: state.uplinkPort, tenant: state.uplinkBasis.segmentNames.first?.tenant ?? "",
                         port: "uplink", segment: "", interface: "vxlan")
            : nil
        let segmentStatistics = state.segmentNames.indices.map {
            SegmentStatistics(tenant: state.segmentNames[$0].tenant, segment: state.segmentNames[$0].segment,
                              macEntries: state.table.entryCount(segment: $0))
        }
        return SwitchStatistics(ports: portStatistics, segments: segmentStatistics, uplink: uplink)
    }
}

extension ParsedFrame {
    /// Whether the tenant's ACLs judge this frame: IP packets, but not neighbor discovery (ARP
    /// and ND keep the segment working whatever the ACL says).
    @inline(__always)
    var isACLFiltered: Bool {
        let isND = layer == .ipv6 && proto == Wire.protoICMPv6 && hasTransportHeader && icmpType >= 133 && icmpType <= 137
        return isIP && !isND
    }

    /// The fields the ACL matches on.
    @inline(__always)
    var aclPacket: ACLPacket {
        ACLPacket(family: layer == .ipv4 ? 4 : 6, proto: proto, sourceHigh: sourceHigh, sourceLow: sourceLow,
                  destinationHigh: destinationHigh, destinationLow: destinationLow, hasPorts: hasPorts,
                  isNonFirstFragment: isNonFirstFragment, sourcePort: sourcePort, destinationPort: destinationPort)
    }
}
