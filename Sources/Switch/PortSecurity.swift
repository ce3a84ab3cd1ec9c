import Config

/// The compiled anti-spoofing policy of one port.
struct PortPolicy: Sendable {
    var mac: UInt64
    /// This port's allowed MACs in `PortSecurity.allowedMACs` (sorted).
    var allowedMACs: Range<Int>
    var ipv4: Range<Int>
    var ipv6: Range<Int>
    var allowDHCPClient: Bool
    var dhcpServer: Bool
    var router: Bool
}

/// Port security for every port: source MAC, source IP, ARP, ND, DHCP server and router guards.
/// The addresses of all ports live in three flat arrays, so a check reads no strings and no
/// nested arrays.
struct PortSecurity: Sendable {
    var policies: [PortPolicy] = []
    var allowedMACs: [UInt64] = []
    var ipv4: [UInt32] = []
    /// IPv6 addresses as (high, low) pairs: element 2i is the high half.
    var ipv6: [UInt64] = []

    init(ports: [Port]) {
        for port in ports {
            let macs = Set(port.allowedMACs.map(\.rawValue)).subtracting([port.mac.rawValue]).sorted()
            let macStart = allowedMACs.count
            allowedMACs += macs
            let v4Start = ipv4.count, v6Start = ipv6.count / 2
            for prefix in port.ips {
                switch prefix.address {
                case .v4(let address): ipv4.append(address.rawValue)
                case .v6(let address): ipv6.append(address.high); ipv6.append(address.low)
                }
            }
            policies.append(PortPolicy(mac: port.mac.rawValue, allowedMACs: macStart..<allowedMACs.count,
                                       ipv4: v4Start..<ipv4.count, ipv6: v6Start..<(ipv6.count / 2),
                                       allowDHCPClient: port.allowDHCPClient, dhcpServer: port.dhcpServer,
                                       router: port.router))
        }
    }

    /// Whether `port` may send from `mac`: its own MAC or one of its allowed MACs.
    @inline(__always)
    func allowsMAC(_ mac: UInt64, port: Int) -> Bool {
        let policy = policies[port]
        return mac == policy.mac || allowsOtherMAC(mac, policy: policy)
    }

    /// Whether `mac` is one of `policy`'s allowed MACs.
    func allowsOtherMAC(_ mac: UInt64, policy: PortPolicy) -> Bool {
        // Binary search: a port may list many MACs (a nested hypervisor, a container host).
        var low = policy.allowedMACs.lowerBound, high = policy.allowedMACs.upperBound
        while low < high {
            let middle = low + (high - low) / 2
            let value = allowedMACs[middle]
            if value == mac { return true }
            if value < mac { low = middle + 1 } else { high = middle }
        }
        return false
    }

    @inline(__always)
    func ownsIPv4(_ address: UInt32, port: Int) -> Bool {
        let range = policies[port].ipv4
        for index in range.lowerBound..<range.upperBound where ipv4[index] == address { return true }
        return false
    }

    /// One of the port's IPv6 addresses, or the modified-EUI-64 link-local address of a MAC it may use.
    func ownsIPv6(high: UInt64, low: UInt64, port: Int) -> Bool {
        let range = policies[port].ipv6
        for index in range.lowerBound..<range.upperBound
        where ipv6[2 * index] == high && ipv6[2 * index + 1] == low { return true }
        // fe80::XXXX:XXff:feXX:XXXX with the universal/local bit flipped back gives the MAC.
        guard high == 0xFE80_0000_0000_0000, (low >> 24) & 0xFFFF == 0xFFFE else { return false }
        let mac = ((low >> 40) ^ 0x02_0000) << 24 | (low & 0xFF_FFFF)
        return allowsMAC(mac, port: port)
    }

    /// Runs every check of `port`'s policy on a parsed, well-formed frame. Inlined, with the IPv4
    /// checks, into the pipeline: the common case is a few compares.
    @inline(__always)
    func check(_ frame: FrameBytes, _ parsed: inout ParsedFrame, port: Int) -> DropReason? {
        let source = MACAddress(rawValue: parsed.source)
        if source.isMulticast || source.isZero { return .sourceMACInvalid }
        guard allowsMAC(parsed.source, port: port) else { return .sourceMACSpoofed }
        switch parsed.layer {
        case .arp: return checkARP(&parsed, port: port)
        case .ipv4: return checkIPv4(&parsed, port: port)
        case .ipv6: return checkIPv6(frame, &parsed, port: port)
        }
    }

    func checkARP(_ parsed: inout ParsedFrame, port: Int) -> DropReason? {
        // The Ethernet source was checked: the sender must be the same MAC.
        guard parsed.arpSenderMAC == parsed.source else { return .arpSpoofed }
        // 0.0.0.0 is an ARP probe (RFC 5227).
        guard parsed.arpSenderIP == 0 || ownsIPv4(parsed.arpSenderIP, port: port) else { return .arpSpoofed }
        return nil
    }

    @inline(__always)
    func checkIPv4(_ parsed: inout ParsedFrame, port: Int) -> DropReason? {
        let policy = policies[port]
        let source = UInt32(truncatingIfNeeded: parsed.sourceLow)
        let isDHCPClient = parsed.proto == Wire.protoUDP && parsed.hasPorts && !parsed.isFragment
            && parsed.sourcePort == 68 && parsed.destinationPort == 67
        if !ownsIPv4(source, port: port) {
            guard source == 0, isDHCPClient, policy.allowDHCPClient else { return .sourceIPSpoofed }
        }
        if isDHCPServerMessage(&parsed, serverPort: 67, clientPort: 68) && !policy.dhcpServer { return .dhcpServer }
        if parsed.hasTransportHeader && parsed.proto == Wire.protoICMP && parsed.icmpType == 5 && !policy.router {
            return .routerAdvertisement
        }
        return nil
    }

    func checkIPv6(_ frame: FrameBytes, _ parsed: inout ParsedFrame, port: Int) -> DropReason? {
        let policy = policies[port]
        let isICMPv6 = parsed.proto == Wire.protoICMPv6 && parsed.hasTransportHeader
        let type = parsed.icmpType
        let unspecifiedSource = parsed.sourceHigh == 0 && parsed.sourceLow == 0
        if unspecifiedSource {
            // :: is only for DAD (NS), router solicitations and MLD reports (RFC 4861, 3810).
            guard isICMPv6, type == 133 || type == 135 || (130...132).contains(type) || type == 143 else {
                return .sourceIPSpoofed
            }
        } else if !ownsIPv6(high: parsed.sourceHigh, low: parsed.sourceLow, port: port) {
            return .sourceIPSpoofed
        }
        if isDHCPServerMessage(&parsed, serverPort: 547, clientPort: 546) && !policy.dhcpServer { return .dhcpServer }
        guard isICMPv6, (133...137).contains(type) else { return nil }
        // RFC 6980: neighbor discovery never uses fragments.
        if parsed.isFragment { return .fragmentInvalid }
        let message = parsed.transportOffset
        let end = parsed.packetEnd
        switch type {
        case 134, 137:
            if !policy.router { return .routerAdvertisement }
            return nil
        case 133:
            return checkNDOptions(frame, from: message + 8, end: end, linkLayerOption: 1, port: port)
        case 135, 136:
            guard message + 24 <= end, let targetHigh = frame.u64(message + 8), let targetLow = frame.u64(message + 16)
            else { return .malformedHeader }
            // A DAD probe and an advertisement may only claim the port's own addresses.
            if (type == 136 || unspecifiedSource) && !ownsIPv6(high: targetHigh, low: targetLow, port: port) {
                return .ndSpoofed
            }
            return checkNDOptions(frame, from: message + 24, end: end, linkLayerOption: type == 135 ? 1 : 2, port: port)
        default:
            return nil
        }
    }

    /// A message only a DHCP server or relay sends: UDP from the server port, or to the client port.
    /// Clients accept a reply by its destination port alone (NetworkManager's n-dhcp4 never checks
    /// the source port; a DHCPv6 client's socket on 546 takes any), while their own messages go
    /// from the client port to the server port.
    func isDHCPServerMessage(_ parsed: inout ParsedFrame, serverPort: UInt16, clientPort: UInt16) -> Bool {
        parsed.hasPorts && parsed.proto == Wire.protoUDP
            && (parsed.sourcePort == serverPort || parsed.destinationPort == clientPort)
    }

    /// Walks ND options in [start, end); a source (1) or target (2) link-layer address option of
    /// kind `linkLayerOption` must carry a MAC the port may use.
    func checkNDOptions(_ frame: FrameBytes, from start: Int, end: Int, linkLayerOption: UInt8, port: Int) -> DropReason? {
        var offset = start
        // Each option is at least 8 bytes long, so the walk ends.
        while offset < end {
            guard let type = frame.u8(offset), let units = frame.u8(offset + 1), units > 0,
                  offset + Int(units) * 8 <= end
            else { return .malformedHeader }
            if type == linkLayerOption {
                guard let mac = frame.mac(offset + 2) else { return .malformedHeader }
                if !allowsMAC(mac, port: port) { return .ndSpoofed }
            }
            offset += Int(units) * 8
        }
        return nil
    }
}
