import Config

/// Answers address resolution from the fleet map, so a port's ARP request or IPv6 neighbour
/// solicitation for an address on another host is not flooded to every host of the segment.
public enum NeighborResponder {
    static let arpLength = 28
    static let arpReplyFrameLength = Wire.ethernetHeaderLength + arpLength
    static let icmpv6NeighborSolicitation: UInt8 = 135
    static let icmpv6NeighborAdvertisement: UInt8 = 136
    /// Type, code, checksum, reserved or flags, target address: the fixed part of an NS and an NA.
    static let neighborMessageLength = 24
    /// An NA with one target link-layer address option (8 bytes).
    static let advertisementLength = neighborMessageLength + 8
    static let advertisementFrameLength = Wire.ethernetHeaderLength + 40 + advertisementLength
    /// NA flags: solicited and override (RFC 4861 4.4). Router stays clear: the map does not say.
    static let flagsSolicitedOverride: UInt8 = 0x60
    static let optionTargetLinkLayerAddress: UInt8 = 2
    static let allNodes = IPv6Address(high: 0xFF02_0000_0000_0000, low: 1)

    /// If `frame` (Ethernet, no virtio header) is an ARP request (who-has) or an IPv6 neighbor
    /// solicitation for an address `owner` maps to a MAC, writes the answer (ARP reply from that
    /// MAC/IP to the asker; or a solicited neighbor advertisement with the target link-layer
    /// address option, correct ICMPv6 checksum, hop limit 255, to the asker's source address,
    /// or all-nodes if the source was ::) into `reply` and returns its length. Else nil.
    /// Gratuitous ARP, ARP replies, DAD probes answer nil.
    ///
    /// Nil as well for: a frame too short or inconsistent for its kind, an asker with a multicast
    /// or zero MAC, an owner MAC that is multicast or zero, a solicitation that fails RFC 4861
    /// 7.1.1's checks (hop limit 255, code 0, at least 24 bytes, no zero-length option, a unicast
    /// target), one sent to neither the target nor its solicited-node group, and a `reply` too
    /// small for the answer (42 bytes for ARP, 86 for an NA). Since the NS's source is only ever
    /// `::` for DAD (RFC 4861 7.2.2), and a DAD probe is usually a port checking its own address,
    /// which an answer would make it give up, no advertisement goes to all-nodes.
    /// The asker's ICMPv6 checksum is not verified: the switch verifies no tenant checksum, and a
    /// wrong one only gets a tenant a correct answer to its own question.
    public static func answer(_ frame: UnsafeRawBufferPointer, into reply: UnsafeMutableRawBufferPointer,
                              owner: (IPAddress) -> MACAddress?) -> Int? {
        let bytes = FrameBytes(frame)
        switch bytes.u16(12) {
        case Wire.etherTypeARP?: return answerARP(bytes, into: reply, owner: owner)
        case Wire.etherTypeIPv6?: return answerSolicitation(bytes, into: reply, owner: owner)
        default: return nil
        }
    }

    static func answerARP(_ bytes: FrameBytes, into reply: UnsafeMutableRawBufferPointer,
                          owner: (IPAddress) -> MACAddress?) -> Int? {
        var parsed = ParsedFrame()
        let arp = Wire.ethernetHeaderLength
        // parseARP checks Ethernet/IPv4 sizes and reads the sender.
        guard FrameParser.parseARP(bytes, into: &parsed) == nil, bytes.u16(arp + 6) == 1,
              let targetIP = bytes.u32(arp + 24)
        else { return nil }
        let asker = MACAddress(rawValue: parsed.arpSenderMAC)
        let askerIP = parsed.arpSenderIP
        // An ARP probe (sender 0.0.0.0, RFC 5227) and a gratuitous request (sender == target) ask
        // nobody: a reply would tell a port that its own address is taken.
        guard askerIP != 0, askerIP != targetIP, !asker.isMulticast, !asker.isZero,
              reply.count >= arpReplyFrameLength,
              let answer = owner(.v4(IPv4Address(rawValue: targetIP))), !answer.isMulticast, !answer.isZero,
              answer != asker
        else { return nil }
        var writer = ReplyWriter(reply)
        writer.mac(asker)
        writer.mac(answer)
        writer.u16(Wire.etherTypeARP)
        writer.u16(1)  // Ethernet
        writer.u16(Wire.etherTypeIPv4)
        writer.u8(6)
        writer.u8(4)
        writer.u16(2)  // reply
        writer.mac(answer)
        writer.u32(targetIP)
        writer.mac(asker)
        writer.u32(askerIP)
        return writer.offset
    }

    static func answerSolicitation(_ bytes: FrameBytes, into reply: UnsafeMutableRawBufferPointer,
                                   owner: (IPAddress) -> MACAddress?) -> Int? {
        var parsed = ParsedFrame()
        let ip = Wire.ethernetHeaderLength
        guard FrameParser.parse(bytes, isGSO: false, into: &parsed) == nil, parsed.layer == .ipv6,
              parsed.proto == Wire.protoICMPv6, parsed.hasTransportHeader, !parsed.isFragment,
              parsed.icmpType == icmpv6NeighborSolicitation, parsed.icmpCode == 0,
              bytes.u8(ip + 7) == 255
        else { return nil }
        let icmp = parsed.transportOffset
        let end = parsed.packetEnd
        guard end - icmp >= neighborMessageLength,
              let targetHigh = bytes.u64(icmp + 8), let targetLow = bytes.u64(icmp + 16)
        else { return nil }
        // Options: each at least 8 bytes, none past the packet.
        var option = icmp + neighborMessageLength
        while option < end {
            guard let units = bytes.u8(option + 1), units > 0 else { return nil }
            option += Int(units) * 8
        }
        guard option == end else { return nil }

        let target = IPv6Address(high: targetHigh, low: targetLow)
        let source = IPv6Address(high: parsed.sourceHigh, low: parsed.sourceLow)
        let destination = IPv6Address(high: parsed.destinationHigh, low: parsed.destinationLow)
        let asker = MACAddress(rawValue: parsed.source)
        // The unspecified source is DAD's; a multicast source is invalid (RFC 4861 7.1.1).
        guard !target.isMulticast, !target.isUnspecified, !source.isUnspecified, !source.isMulticast,
              source != target,
              destination == target || destination == solicitedNodeGroup(of: target),
              !asker.isMulticast, !asker.isZero,
              reply.count >= advertisementFrameLength,
              let answer = owner(.v6(target)), !answer.isMulticast, !answer.isZero, answer != asker
        else { return nil }

        var writer = ReplyWriter(reply)
        writer.mac(asker)
        writer.mac(answer)
        writer.u16(Wire.etherTypeIPv6)
        writer.u32(0x6000_0000)
        writer.u16(UInt16(advertisementLength))
        writer.u8(Wire.protoICMPv6)
        writer.u8(255)
        writer.ipv6(target)
        writer.ipv6(source)
        let message = writer.offset
        writer.u8(icmpv6NeighborAdvertisement)
        writer.u8(0)
        writer.u16(0)  // checksum, below
        writer.u8(flagsSolicitedOverride)
        writer.u8(0)
        writer.u16(0)
        writer.ipv6(target)
        writer.u8(optionTargetLinkLayerAddress)
        writer.u8(1)
        writer.mac(answer)
        let length = writer.offset

        // Pseudo-header: source, destination, upper-layer length, next header (RFC 8200 8.1).
        let addresses = UnsafeRawBufferPointer(rebasing: reply[(ip + 8)..<(ip + 40)])
        let pseudo = Segmentation.sum(addresses, initial: UInt32(advertisementLength) + UInt32(Wire.protoICMPv6))
        let value = Segmentation.checksum(UnsafeRawBufferPointer(rebasing: reply[message..<length]), initial: pseudo)
        Segmentation.storeBE16(value, reply, message + 2)
        return length
    }

    /// ff02::1:ffXX:XXXX, the group a solicitation for `address` goes to (RFC 4291 2.7.1).
    static func solicitedNodeGroup(of address: IPv6Address) -> IPv6Address {
        IPv6Address(high: 0xFF02_0000_0000_0000, low: 0x0000_0001_FF00_0000 | address.low & 0xFF_FFFF)
    }
}

/// Writes big-endian fields one after another into a buffer the caller sized beforehand.
struct ReplyWriter {
    let buffer: UnsafeMutableRawBufferPointer
    var offset = 0

    init(_ buffer: UnsafeMutableRawBufferPointer) { self.buffer = buffer }

    mutating func u8(_ value: UInt8) {
        buffer[offset] = value
        offset += 1
    }

    mutating func u16(_ value: UInt16) {
        buffer.storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt16.self)
        offset += 2
    }

    mutating func u32(_ value: UInt32) {
        buffer.storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt32.self)
        offset += 4
    }

    mutating func u64(_ value: UInt64) {
        buffer.storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt64.self)
        offset += 8
    }

    mutating func mac(_ address: MACAddress) {
        u16(UInt16(truncatingIfNeeded: address.rawValue >> 32))
        u32(UInt32(truncatingIfNeeded: address.rawValue))
    }

    mutating func ipv6(_ address: IPv6Address) {
        u64(address.high)
        u64(address.low)
    }
}
