// libFuzzer target for the switch's ingress pipeline and the virtio-net header parser.
//
// Input: byte 0 picks the ingress port, bytes 1...12 are the virtio-net header, the rest is the
// Ethernet frame. Besides "does not crash or read out of bounds" (ASan), it checks the verdict's
// invariants: a forward mask is non-empty, never holds the ingress port, and stays in its segment;
// a forwarded frame's offload header is one `OffloadCheck` allows (a defined GSO type with a sane
// size, a checksum field inside the frame, `hdr_len` inside the frame), and the header the engine
// writes out after `sanitizeForEgress` claims nothing but NEEDS_CSUM.
import Config
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
        segments: [Segment(id: "lan", mtu: 1500, macTable: small), Segment(id: "dmz", mtu: 9000)],
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
    return ForwardingPlane(configuration: HostConfiguration(host: HostSettings(stateDirectory: "/var/lib/bulkhead"),
                                                            tenants: [blue, red]))
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

    let verdict = plane!.process(frame: frame, header: header, ingress: ingress, now: clock)
    if case .forward(let mask) = verdict {
        checkForwardedHeader(header, frameLength: frame.count)
        precondition(!mask.isEmpty, "empty forward mask")
        precondition(!mask.contains(ingress), "frame sent back to its ingress port")
        let source = plane!.ports[ingress]
        mask.forEach { port in
            precondition(port < portCount, "mask names a port that does not exist")
            let target = plane!.ports[port]
            precondition(target.tenant == source.tenant && target.segment == source.segment, "frame left its segment")
        }
    }
    plane!.recordTransmitted(port: ingress, bytes: frame.count)
    return 0
}
