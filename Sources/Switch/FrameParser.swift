/// Ethernet and IP protocol numbers the pipeline looks at.
enum Wire {
    static let etherTypeIPv4: UInt16 = 0x0800
    static let etherTypeARP: UInt16 = 0x0806
    static let etherTypeIPv6: UInt16 = 0x86DD
    static let etherTypeVLAN: UInt16 = 0x8100
    static let etherTypeQinQ: UInt16 = 0x88A8
    static let etherTypeQinQLegacy: UInt16 = 0x9100

    static let ethernetHeaderLength = 14
    /// The largest GSO super-frame: 14-byte Ethernet header plus a 65536-byte IP packet.
    static let maxGSOFrameLength = 65_550

    static let protoICMP: UInt8 = 1
    static let protoTCP: UInt8 = 6
    static let protoUDP: UInt8 = 17
    static let protoICMPv6: UInt8 = 58

    static let ipv6HopByHop: UInt8 = 0
    static let ipv6Routing: UInt8 = 43
    static let ipv6Fragment: UInt8 = 44
    static let ipv6DestinationOptions: UInt8 = 60
    /// Extension headers walked before giving up on a packet.
    static let maxIPv6ExtensionHeaders = 8

    /// The bytes of an upper-layer header the switch decides on: ports, TCP data offset and flags,
    /// ICMP type and code. RFC 1858 protects these 16 bytes against overlapping fragments.
    static let decisiveTransportBytes = 16
    /// The start of an IPv6 fragmentable part that belongs to the first fragment alone. A first
    /// fragment must carry its extension headers there, plus `decisiveTransportBytes` of the
    /// upper-layer header; a later fragment may not start there, so none can overlap what the
    /// switch checked, whatever its fragment header claims comes next. No stack trips either way:
    /// the second fragment starts at least 1232 bytes in (1280-byte minimum MTU less the IPv6 and
    /// fragment headers, and less any unfragmentable headers, which are small), and a fragmented
    /// datagram's first fragment holds the upper-layer header right after the fragment header,
    /// seldom behind a destination options header, and 64 bytes leave 48 for those.
    static let ipv6FirstFragmentRegion = 64
}

enum NetworkLayer: UInt8 {
    case arp, ipv4, ipv6
}

/// What the parser learned about one frame: plain scalars, so it lives on the stack.
///
/// Noncopyable, and the checks take it `inout` (they never change it): that passes the parser's
/// output by address. Passed by value (or `borrowing`, from a `var`) it was copied after the
/// parse, and the copy's 16-byte loads of what the parser had just written with narrow stores
/// stalled on store forwarding: a fifth of a decision's time.
struct ParsedFrame: ~Copyable {
    var destination: UInt64 = 0
    var source: UInt64 = 0
    var layer: NetworkLayer = .arp

    // IP: an IPv4 address sits in the low 32 bits of `…Low` with `…High` zero.
    var sourceHigh: UInt64 = 0
    var sourceLow: UInt64 = 0
    var destinationHigh: UInt64 = 0
    var destinationLow: UInt64 = 0
    /// The upper-layer protocol. For a non-first IPv6 fragment, the fragment header's next header:
    /// only the sender's word, since receivers ignore it (RFC 8200 4.5).
    var proto: UInt8 = 0
    /// Part of a fragmented datagram (an IPv6 atomic fragment is not).
    var isFragment = false
    /// A fragment with a non-zero offset: its transport header is not in this frame.
    var isNonFirstFragment = false
    /// The transport header is present and was validated (TCP, UDP, ICMP, ICMPv6).
    var hasTransportHeader = false
    var hasPorts = false
    var sourcePort: UInt16 = 0
    var destinationPort: UInt16 = 0
    var icmpType: UInt8 = 0
    var icmpCode: UInt8 = 0
    var transportOffset = 0
    var transportHeaderLength = 0
    /// End of the IP packet (trailing Ethernet padding excluded).
    var packetEnd = 0

    // ARP
    var arpSenderMAC: UInt64 = 0
    var arpSenderIP: UInt32 = 0

    init() {}

    var isIP: Bool { layer != .arp }
}

/// Validates the Ethernet, network and transport headers of a frame, without any port's policy.
enum FrameParser {
    /// Parses `frame` (at least 14 bytes) into `parsed`. Returns the drop reason for a frame the
    /// switch must not forward whatever the port.
    static func parse(_ frame: FrameBytes, isGSO: Bool, into parsed: inout ParsedFrame) -> DropReason? {
        guard let destination = frame.mac(0), let source = frame.mac(6), let etherType = frame.u16(12) else {
            return .malformedRunt
        }
        parsed.destination = destination
        parsed.source = source
        switch etherType {
        case Wire.etherTypeIPv4:
            parsed.layer = .ipv4
            return parseIPv4(frame, isGSO: isGSO, into: &parsed)
        case Wire.etherTypeIPv6:
            parsed.layer = .ipv6
            return parseIPv6(frame, isGSO: isGSO, into: &parsed)
        case Wire.etherTypeARP:
            parsed.layer = .arp
            return parseARP(frame, into: &parsed)
        case Wire.etherTypeVLAN, Wire.etherTypeQinQ, Wire.etherTypeQinQLegacy:
            return .vlanTagged
        default:
            return .ethertypeNotAllowed
        }
    }

    static func parseARP(_ frame: FrameBytes, into parsed: inout ParsedFrame) -> DropReason? {
        let arp = Wire.ethernetHeaderLength
        guard frame.has(arp, 28),
              frame.u16(arp) == 1, frame.u16(arp + 2) == Wire.etherTypeIPv4,
              frame.u8(arp + 4) == 6, frame.u8(arp + 5) == 4,
              let senderMAC = frame.mac(arp + 8), let senderIP = frame.u32(arp + 14)
        else { return .malformedHeader }
        parsed.arpSenderMAC = senderMAC
        parsed.arpSenderIP = senderIP
        return nil
    }

    static func parseIPv4(_ frame: FrameBytes, isGSO: Bool, into parsed: inout ParsedFrame) -> DropReason? {
        let ip = Wire.ethernetHeaderLength
        guard frame.has(ip, 20), let versionIHL = frame.u8(ip), versionIHL >> 4 == 4,
              let totalLength16 = frame.u16(ip + 2), let fragmentField = frame.u16(ip + 6),
              let proto = frame.u8(ip + 9), let source = frame.u32(ip + 12), let destination = frame.u32(ip + 16)
        else { return .malformedHeader }
        let headerLength = Int(versionIHL & 0x0F) * 4
        let totalLength = Int(totalLength16)
        guard headerLength >= 20, totalLength >= headerLength, totalLength <= frame.count - ip else {
            return .malformedHeader
        }
        parsed.sourceLow = UInt64(source)
        parsed.destinationLow = UInt64(destination)
        parsed.proto = proto
        parsed.packetEnd = ip + totalLength
        let offsetUnits = Int(fragmentField & 0x1FFF)
        let moreFragments = fragmentField & 0x2000 != 0
        if offsetUnits > 0 {
            parsed.isFragment = true
            parsed.isNonFirstFragment = true
            // RFC 1858: a fragment at offset 8 can rewrite the TCP flags of the first one. Other
            // headers run past 8 bytes too, and only a stack on a 68-byte MTU with 40 bytes of IP
            // options sends such a fragment (no such link exists), so it goes for every protocol.
            // And no fragment may extend the datagram past 65535 bytes.
            if offsetUnits * 8 < Wire.decisiveTransportBytes { return .fragmentInvalid }
            if offsetUnits * 8 + totalLength - headerLength > 65_535 { return .fragmentInvalid }
            return nil
        }
        parsed.isFragment = moreFragments
        return parseTransport(frame, at: ip + headerLength, end: parsed.packetEnd, isGSO: isGSO, into: &parsed)
    }

    static func parseIPv6(_ frame: FrameBytes, isGSO: Bool, into parsed: inout ParsedFrame) -> DropReason? {
        let ip = Wire.ethernetHeaderLength
        guard frame.has(ip, 40), let version = frame.u8(ip), version >> 4 == 6,
              let payloadLength = frame.u16(ip + 4), var next = frame.u8(ip + 6),
              let sourceHigh = frame.u64(ip + 8), let sourceLow = frame.u64(ip + 16),
              let destinationHigh = frame.u64(ip + 24), let destinationLow = frame.u64(ip + 32),
              Int(payloadLength) <= frame.count - ip - 40
        else { return .malformedHeader }
        parsed.sourceHigh = sourceHigh
        parsed.sourceLow = sourceLow
        parsed.destinationHigh = destinationHigh
        parsed.destinationLow = destinationLow
        let end = ip + 40 + Int(payloadLength)
        parsed.packetEnd = end
        var offset = ip + 40
        var seenFragmentHeader = false
        // Where the fragmentable part of a first fragment begins; nil when not fragmented.
        var fragmentableStart: Int?
        for index in 0...Wire.maxIPv6ExtensionHeaders {
            switch next {
            case Wire.ipv6HopByHop, Wire.ipv6Routing, Wire.ipv6DestinationOptions:
                guard index < Wire.maxIPv6ExtensionHeaders else { return .malformedHeader }
                // Hop-by-hop options may only follow the IPv6 header (RFC 8200 4.1).
                if next == Wire.ipv6HopByHop && index != 0 { return .malformedHeader }
                // RFC 7112: a first fragment holds the whole header chain.
                guard let following = frame.u8(offset), let units = frame.u8(offset + 1),
                      offset + (Int(units) + 1) * 8 <= end
                else { return parsed.isFragment ? .fragmentInvalid : .malformedHeader }
                next = following
                offset += (Int(units) + 1) * 8
            case Wire.ipv6Fragment:
                guard index < Wire.maxIPv6ExtensionHeaders, !seenFragmentHeader, offset + 8 <= end,
                      let following = frame.u8(offset), let field = frame.u16(offset + 2)
                else { return .malformedHeader }
                seenFragmentHeader = true
                offset += 8
                let offsetUnits = Int(field >> 3)
                if offsetUnits > 0 {
                    parsed.isFragment = true
                    parsed.isNonFirstFragment = true
                    parsed.proto = following
                    // Whatever `following` says: receivers reassemble on addresses and
                    // identification alone and take the chain from the first fragment.
                    if offsetUnits * 8 < Wire.ipv6FirstFragmentRegion { return .fragmentInvalid }
                    return nil
                }
                // An atomic fragment (offset 0, M clear) is a whole packet (RFC 6946).
                parsed.isFragment = field & 1 != 0
                if parsed.isFragment { fragmentableStart = offset }
                next = following
            default:
                parsed.proto = next
                if let start = fragmentableStart,
                   offset - start + Wire.decisiveTransportBytes > Wire.ipv6FirstFragmentRegion {
                    return .fragmentInvalid
                }
                return parseTransport(frame, at: offset, end: end, isGSO: isGSO, into: &parsed)
            }
        }
        return .malformedHeader
    }

    /// Validates the transport header at `offset`, which ends the packet at `end`. In a first
    /// fragment a missing header is `fragmentInvalid` (RFC 1858, RFC 7112), else `malformedHeader`.
    static func parseTransport(_ frame: FrameBytes, at offset: Int, end: Int, isGSO: Bool,
                               into parsed: inout ParsedFrame) -> DropReason? {
        let available = end - offset
        let truncated: DropReason = parsed.isFragment ? .fragmentInvalid : .malformedHeader
        parsed.transportOffset = offset
        switch parsed.proto {
        case Wire.protoTCP:
            guard available >= 20, let sourcePort = frame.u16(offset), let destinationPort = frame.u16(offset + 2),
                  let dataOffset = frame.u8(offset + 12)
            else { return truncated }
            let headerLength = Int(dataOffset >> 4) * 4
            guard headerLength >= 20 else { return .malformedHeader }
            guard headerLength <= available else { return truncated }
            parsed.sourcePort = sourcePort
            parsed.destinationPort = destinationPort
            parsed.transportHeaderLength = headerLength
            parsed.hasPorts = true
        case Wire.protoUDP:
            guard available >= 8, let sourcePort = frame.u16(offset), let destinationPort = frame.u16(offset + 2),
                  let length = frame.u16(offset + 4)
            else { return truncated }
            // A fragment's UDP length covers the whole datagram; a GSO super-frame's the first segment.
            guard length >= 8 || isGSO else { return .malformedHeader }
            if !parsed.isFragment && !isGSO && Int(length) > available { return .malformedHeader }
            parsed.sourcePort = sourcePort
            parsed.destinationPort = destinationPort
            parsed.transportHeaderLength = 8
            parsed.hasPorts = true
        case Wire.protoICMP, Wire.protoICMPv6:
            guard available >= 8, let type = frame.u8(offset), let code = frame.u8(offset + 1) else { return truncated }
            parsed.icmpType = type
            parsed.icmpCode = code
            parsed.transportHeaderLength = 8
        default:
            return nil
        }
        parsed.hasTransportHeader = true
        return nil
    }
}
