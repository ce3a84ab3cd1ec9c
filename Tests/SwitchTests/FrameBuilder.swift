import Config

/// Builds test frames byte by byte. Checksums are left zero: the switch does not verify them.
enum FrameBuilder {
    static func be16(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(truncatingIfNeeded: value)] }
    static func be32(_ value: UInt32) -> [UInt8] { be16(UInt16(value >> 16)) + be16(UInt16(truncatingIfNeeded: value)) }
    static func mac(_ value: MACAddress) -> [UInt8] { value.octets }
    static func ipv6(_ address: IPv6Address) -> [UInt8] {
        be32(UInt32(address.high >> 32)) + be32(UInt32(truncatingIfNeeded: address.high))
            + be32(UInt32(address.low >> 32)) + be32(UInt32(truncatingIfNeeded: address.low))
    }

    /// An Ethernet frame; `tags` are (TPID, VLAN id) pairs inserted after the source MAC.
    static func ethernet(destination: MACAddress, source: MACAddress, type: UInt16, payload: [UInt8],
                         tags: [(tpid: UInt16, vid: UInt16)] = []) -> [UInt8] {
        var frame = mac(destination) + mac(source)
        for tag in tags { frame += be16(tag.tpid) + be16(tag.vid) }
        return frame + be16(type) + payload
    }

    static func arp(operation: UInt16 = 1, senderMAC: MACAddress, senderIP: IPv4Address,
                    targetMAC: MACAddress = .zero, targetIP: IPv4Address,
                    hardwareType: UInt16 = 1, protocolType: UInt16 = 0x0800,
                    hardwareLength: UInt8 = 6, protocolLength: UInt8 = 4) -> [UInt8] {
        be16(hardwareType) + be16(protocolType) + [hardwareLength, protocolLength] + be16(operation)
            + mac(senderMAC) + be32(senderIP.rawValue) + mac(targetMAC) + be32(targetIP.rawValue)
    }

    /// An IPv4 packet. `fragmentOffset` is in 8-byte units.
    static func ipv4(source: IPv4Address, destination: IPv4Address, protocol proto: UInt8, payload: [UInt8],
                     options: [UInt8] = [], fragmentOffset: Int = 0, moreFragments: Bool = false,
                     totalLength: Int? = nil, ihl: Int? = nil, version: UInt8 = 4) -> [UInt8] {
        precondition(options.count % 4 == 0)
        let headerLength = 20 + options.count
        let ihlValue = UInt8(ihl ?? headerLength / 4)
        let length = UInt16(totalLength ?? headerLength + payload.count)
        let fragment = UInt16(fragmentOffset) | (moreFragments ? 0x2000 : 0)
        return [version << 4 | ihlValue, 0] + be16(length) + be16(0x1234) + be16(fragment) + [64, proto] + [0, 0]
            + be32(source.rawValue) + be32(destination.rawValue) + options + payload
    }

    enum IPv6Extension {
        case hopByHop(length: Int = 8)
        case routing(length: Int = 8)
        case destinationOptions(length: Int = 8)
        case fragment(offset: Int, more: Bool)
        /// A header of `type` whose length field claims `claimedUnits` but only `actual` bytes follow.
        case raw(type: UInt8, bytes: [UInt8])

        var type: UInt8 {
            switch self {
            case .hopByHop: 0
            case .routing: 43
            case .destinationOptions: 60
            case .fragment: 44
            case .raw(let type, _): type
            }
        }

        func bytes(next: UInt8) -> [UInt8] {
            switch self {
            case .hopByHop(let length), .routing(let length), .destinationOptions(let length):
                // PadN option fills the header.
                return [next, UInt8(length / 8 - 1)] + [1, UInt8(length - 4)] + Array(repeating: 0, count: length - 4)
            case .fragment(let offset, let more):
                return [next, 0] + be16(UInt16(offset << 3) | (more ? 1 : 0)) + be32(0xABCD)
            case .raw(_, let bytes):
                return [next] + bytes
            }
        }
    }

    static func ipv6(source: IPv6Address, destination: IPv6Address, next upper: UInt8,
                     extensions: [IPv6Extension] = [], payload: [UInt8], payloadLength: Int? = nil) -> [UInt8] {
        var chain: [UInt8] = []
        for (index, ext) in extensions.enumerated() {
            let next = index + 1 < extensions.count ? extensions[index + 1].type : upper
            chain += ext.bytes(next: next)
        }
        let first = extensions.first?.type ?? upper
        let length = UInt16(payloadLength ?? chain.count + payload.count)
        return [0x60, 0, 0, 0] + be16(length) + [first, 255] + ipv6(source) + ipv6(destination) + chain + payload
    }

    static func tcp(sourcePort: UInt16, destinationPort: UInt16, dataOffset: UInt8 = 5, payload: [UInt8] = []) -> [UInt8] {
        var header = be16(sourcePort) + be16(destinationPort) + be32(1) + be32(0) + [dataOffset << 4, 0x02]
            + be16(65_535) + [0, 0, 0, 0]
        if dataOffset > 5 { header += Array(repeating: 1, count: Int(dataOffset - 5) * 4) }
        return header + payload
    }

    static func udp(sourcePort: UInt16, destinationPort: UInt16, payload: [UInt8] = [], length: Int? = nil) -> [UInt8] {
        be16(sourcePort) + be16(destinationPort) + be16(UInt16(length ?? 8 + payload.count)) + [0, 0] + payload
    }

    static func icmp(type: UInt8, code: UInt8 = 0, body: [UInt8] = [0, 0, 0, 0]) -> [UInt8] {
        [type, code, 0, 0] + body
    }

    /// ND option: type, length in 8-byte units, MAC.
    static func linkLayerOption(_ type: UInt8, _ address: MACAddress) -> [UInt8] { [type, 1] + mac(address) }

    static func neighborSolicitation(target: IPv6Address, sourceLinkLayer: MACAddress? = nil, options: [UInt8] = []) -> [UInt8] {
        icmp(type: 135, body: [0, 0, 0, 0] + ipv6(target) + (sourceLinkLayer.map { linkLayerOption(1, $0) } ?? []) + options)
    }

    static func neighborAdvertisement(target: IPv6Address, targetLinkLayer: MACAddress? = nil) -> [UInt8] {
        icmp(type: 136, body: [0x60, 0, 0, 0] + ipv6(target) + (targetLinkLayer.map { linkLayerOption(2, $0) } ?? []))
    }

    static func routerAdvertisement() -> [UInt8] { icmp(type: 134, body: [64, 0, 0x07, 0x08] + Array(repeating: 0, count: 8)) }
    static func redirect(target: IPv6Address, destination: IPv6Address) -> [UInt8] {
        icmp(type: 137, body: [0, 0, 0, 0] + ipv6(target) + ipv6(destination))
    }

    /// A BOOTP/DHCP message (op 1 request, 2 reply) with the magic cookie and a message-type option.
    static func dhcp(op: UInt8, messageType: UInt8, client: MACAddress) -> [UInt8] {
        var message: [UInt8] = [op, 1, 6, 0] + be32(0x1234_5678) + Array(repeating: 0, count: 20)
        message += mac(client) + Array(repeating: 0, count: 10 + 64 + 128)
        return message + [99, 130, 83, 99] + [53, 1, messageType, 255]
    }

    /// A DHCPv6 ADVERTISE (message type 2).
    static func dhcpv6Advertise() -> [UInt8] { [2, 0x12, 0x34, 0x56] + [0, 1, 0, 4, 0, 0, 0, 1] }
}
