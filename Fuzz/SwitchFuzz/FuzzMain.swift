// libFuzzer target for the switch's ingress pipeline and the virtio-net header parser.
//
// Input: byte 0 picks the ingress port, bytes 1...12 are the virtio-net header, the rest is the
// Ethernet frame. Besides "does not crash or read out of bounds" (ASan), it checks the verdict's
// invariants: a forward mask is non-empty, never holds the ingress port, and stays in its segment;
// a forwarded frame's offload header is one `OffloadCheck` allows (a defined GSO type with a sane
// size, a checksum field inside the frame, `hdr_len` inside the frame), and the header the engine
// writes out after `sanitizeForEgress` claims nothing but NEEDS_CSUM.
//
// blue/lan has a VXLAN uplink (VNI 100, two remote hosts). An input whose byte 0 has bits 0x70
// set is a datagram from the underlay instead (bytes 13...: VXLAN header and inner frame, from
// host 192.0.2.2, 192.0.2.3 or a stranger by byte 0's low bits): its verdict only ever names
// local ports of blue/lan (split horizon). A `.answer` (proxy ARP/ND) fits the answer buffer.
import Config
import FleetModel
import Switch
import Virtio

// libFuzzer calls the entry point from one thread only.
nonisolated(unsafe) private var plane: ForwardingPlane?
nonisolated(unsafe) private var clock: UInt64 = 1_000_000_000
nonisolated(unsafe) private var inputs: UInt64 = 0

private func makePlane() -> ForwardingPlane {
    func mac(_ last: UInt8) -> MACAddress { MACAddress(0x02, 0, 0, 0, 0, last) }
    func ips(_ texts: String...) -> [IPPrefix] { texts.compactMap(IPPrefix.init) }
    let small = MACTableSettings(maxEntries: 8, maxEntriesPerPort: 4, agingSeconds: 1)
    let blue = Tenant(
        id: "blue",
        segments: [Segment(id: "lan", vni: 100, mtu: 1500, macTable: small), Segment(id: "dmz", mtu: 9000)],
        ports: [
            Port(id: "a", segment: "lan", mac: mac(1), ips: ips("10.0.0.1/24", "fd00::1/64"),
                 allowedMACs: [mac(0x11), mac(0x12), mac(0x13), mac(0x14), mac(0x15), mac(0x16)],
                 allowDHCPClient: true, rateLimit: RateLimit(bitsPerSecond: 10_000_000, packetsPerSecond: 1000),
                 stormControl: StormControl(broadcastPacketsPerSecond: 100, multicastPacketsPerSecond: 100)),
            Port(id: "b", segment: "lan", mac: mac(2), ips: ips("10.0.0.2/24", "fd00::2/64"),
                 allowedMACs: [mac(0x21), mac(0x22)], dhcpServer: true, router: true),
            Port(id: "c", segment: "lan", mac: mac(3), ips: ips("10.0.0.3/24")),
            Port(id: "d", segment: "dmz", mac: mac(4), ips: ips("10.0.1.4/24", "fd01::4/64")),
        ],
        acl: [
            ACLRule(action: .deny, protocol: .tcp, destinationPort: PortRange(lower: 22, upper: 22)),
            ACLRule(action: .allow, protocol: .tcp, destinationPort: PortRange(lower: 80, upper: 80)),
            ACLRule(action: .deny, direction: .egress, protocol: .udp, destination: IPPrefix("10.0.0.3/32"), port: "c"),
            ACLRule(action: .deny, direction: .ingress, source: IPPrefix("fd00::/16"),
                    sourcePort: PortRange(lower: 1, upper: 1023)),
            ACLRule(action: .deny, protocol: .icmp, port: "b"),
        ])
    let red = Tenant(
        id: "red", segments: [Segment(id: "lan")],
        ports: [
            Port(id: "x", segment: "lan", mac: mac(1), ips: ips("10.0.0.1/24"), allowedMACs: [mac(0x11)]),
            Port(id: "y", segment: "lan", mac: mac(2), ips: ips("10.0.0.2/24", "fd00::2/64"),
                 rateLimit: RateLimit(packetsPerSecond: 10, burstPackets: 2)),
        ],
        acl: [ACLRule(action: .deny, protocol: .udp, sourcePort: PortRange(lower: 0, upper: 100))])
    let plane = ForwardingPlane(configuration: HostConfiguration(host: HostSettings(stateDirectory: "/var/lib/bulkhead"),
                                                                 tenants: [blue, red]))
    plane.updateFleet(FleetView(segments: [
        .init(id: "lan", vni: 100, hosts: [
            .init(id: "h2", underlay: "192.0.2.2", ports: [.init(id: "r", mac: "02:00:00:00:00:31", ips: ["10.0.0.31", "fd00::31"])]),
            .init(id: "h3", underlay: "192.0.2.3", ports: [.init(id: "s", mac: "02:00:00:00:00:41", ips: ["10.0.0.41"])]),
        ]),
    ]))
    plane.refreshFleet()
    return plane
}

private let underlays = [UnderlayAddress(ipv4: 0xC000_0202), UnderlayAddress(ipv4: 0xC000_0203),
                         UnderlayAddress(ipv4: 0xC000_0209), UnderlayAddress(ipv6High: 0x2001_0DB8_0000_0000, low: 2)]

/// The invariants of a verdict on a datagram from the uplink.
private func fuzzUplink(_ datagram: UnsafeRawBufferPointer, selector: UInt8) {
    let verdict = plane!.processUplink(datagram: datagram, source: underlays[Int(selector & 3)], now: clock)
    switch verdict {
    case .forward(let mask):
        precondition(!mask.isEmpty, "empty forward mask")
        precondition(!mask.contains(plane!.uplinkPort), "a datagram from the uplink went back out of it")
        mask.forEach { port in
            precondition(port < plane!.ports.count, "mask names a port that does not exist")
            precondition(plane!.ports[port].tenant == "blue" && plane!.ports[port].segment == "lan", "datagram left its segment")
        }
        precondition(selector & 3 < 2, "a stranger's datagram was forwarded")
    case .answer:
        preconditionFailure("the uplink's frames are never answered")
    case .drop:
        break
    }
}

private func fuzzHeader(_ bytes: UnsafeRawBufferPointer) {
    guard let header = VirtioNetHeader(parsing: bytes) else {
        precondition(bytes.count < VirtioNetHeader.size)
        return
    }
    _ = header.isConsistent(frameLength: bytes.count - VirtioNetHeader.size)
    _ = header.gso
    // write(to:) and init(parsing:) are inverses.
    var copy = (UInt64(0), UInt32(0))
    withUnsafeMutableBytes(of: &copy) { raw in
        header.write(to: raw)
        precondition(VirtioNetHeader(parsing: UnsafeRawBufferPointer(raw)) == header)
        // The egress header keeps NEEDS_CSUM and every field but num_buffers, and nothing else.
        OffloadCheck.sanitizeForEgress(header: raw)
        guard let clean = VirtioNetHeader(parsing: UnsafeRawBufferPointer(raw)) else { preconditionFailure("12 bytes") }
        precondition(clean.flags == header.flags & VirtioNetHeader.flagNeedsCsum, "sanitised flags")
        precondition(clean.numBuffers == 0, "sanitised num_buffers")
        precondition(clean.gsoType == header.gsoType && clean.headerLength == header.headerLength
                     && clean.gsoSize == header.gsoSize && clean.csumStart == header.csumStart
                     && clean.csumOffset == header.csumOffset, "sanitising changed a checked field")
    }
}

/// What a forwarded frame's header must satisfy (`OffloadCheck` and `isConsistent` together).
private func checkForwardedHeader(_ header: VirtioNetHeader, frameLength: Int) {
    precondition(Int(header.headerLength) <= frameLength, "forwarded hdr_len past the frame")
    if header.flags & VirtioNetHeader.flagNeedsCsum != 0 {
        precondition(header.csumOffset == 16 || header.csumOffset == 6, "forwarded checksum offset not TCP's or UDP's")
        precondition(Int(header.csumStart) + Int(header.csumOffset) + 2 <= frameLength, "forwarded checksum past the frame")
    }
    if header.gsoType & VirtioNetHeader.gsoECN != 0 {
        precondition(header.gso == .tcpv4 || header.gso == .tcpv6, "forwarded ECN without TCP segmentation")
    }
    if header.isGSO {
        precondition(header.gso == .tcpv4 || header.gso == .tcpv6 || header.gso == .udpL4, "forwarded GSO type")
        precondition(header.flags & VirtioNetHeader.flagNeedsCsum != 0, "forwarded GSO without a partial checksum")
        precondition(header.gso == .udpL4 || header.gsoSize >= 88, "forwarded TCP gso_size below 88")
        precondition(header.gso != .udpL4 || header.csumOffset == 6, "forwarded UDP_L4 without the UDP checksum")
        precondition(header.gso == .udpL4 || header.csumOffset == 16, "forwarded TSO without the TCP checksum")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    fuzzHeader(input)
    guard size >= 1 + VirtioNetHeader.size else { return 0 }
    if plane == nil { plane = makePlane() }
    let portCount = plane!.ports.count
    let ingress = Int(input[0]) % portCount
    guard let header = VirtioNetHeader(parsing: UnsafeRawBufferPointer(rebasing: input[1..<(1 + VirtioNetHeader.size)]))
    else { return 0 }
    let frame = UnsafeRawBufferPointer(rebasing: input[(1 + VirtioNetHeader.size)...])

    // Time moves 50 ms per input (so aging and refills happen) and sometimes jumps far ahead.
    inputs &+= 1
    clock &+= input[0] & 0x80 != 0 ? 50_000_000 : 1
    if inputs % 1000 == 0 { clock &+= UInt64.max / 4 }
    if inputs % 64 == 0 { plane!.expire(now: clock) }

    if input[0] & 0x70 == 0x70 {
        fuzzUplink(frame, selector: input[0])
        return 0
    }
    plane!.refreshFleet()
    let verdict = plane!.process(frame: frame, header: header, ingress: ingress, now: clock)
    if case .answer(let length) = verdict {
        precondition(length >= 42 && length <= plane!.answer.count, "answer length")
    }
    if case .forward(let mask) = verdict {
        checkForwardedHeader(header, frameLength: frame.count)
        precondition(!mask.isEmpty, "empty forward mask")
        precondition(!mask.contains(ingress), "frame sent back to its ingress port")
        let source = plane!.ports[ingress]
        if mask.contains(plane!.uplinkPort) {
            precondition(source.tenant == "blue" && source.segment == "lan", "a frame of a segment without VNI went to the uplink")
            var hosts = 0
            plane!.forEachUplinkDestination { vni, _ in
                precondition(vni == 100, "wrong VNI")
                hosts += 1
            }
            precondition(hosts >= 1 && hosts <= 2, "uplink destinations")
        }
        mask.forEach { port in
            guard port != plane!.uplinkPort else { return }
            precondition(port < portCount, "mask names a port that does not exist")
            let target = plane!.ports[port]
            precondition(target.tenant == source.tenant && target.segment == source.segment, "frame left its segment")
        }
    }
    plane!.recordTransmitted(port: ingress, bytes: frame.count)
    return 0
}
