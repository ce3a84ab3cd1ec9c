import Config
import Switch
import XCTest

final class NeighborResponderTests: XCTestCase {
    static let asker = MACAddress(0x02, 0, 0, 0, 0, 0x0A)
    static let remote = MACAddress(0x02, 0, 0, 0, 0x99, 0x0B)
    static let askerIP = IPv4Address("10.0.0.1")!
    static let remoteIP = IPv4Address("10.0.0.2")!
    static let asker6 = IPv6Address("fd00::1")!
    static let remote6 = IPv6Address("fd00::2:3")!

    /// The fleet map of the tests: one remote port with an IPv4 and an IPv6 address.
    static func owner(_ address: IPAddress) -> MACAddress? {
        switch address {
        case .v4(remoteIP), .v6(remote6): remote
        default: nil
        }
    }

    static func answer(_ frame: [UInt8], capacity: Int = 128) -> [UInt8]? {
        var reply = [UInt8](repeating: 0xA5, count: capacity)
        let length = frame.withUnsafeBytes { frameBytes in
            reply.withUnsafeMutableBytes { NeighborResponder.answer(frameBytes, into: $0, owner: owner) }
        }
        guard let length else { return nil }
        XCTAssertTrue(reply[length...].allSatisfy { $0 == 0xA5 }, "bytes written past the answer")
        return Array(reply[..<length])
    }

    static func arpRequest(operation: UInt16 = 1, senderIP: IPv4Address = askerIP, targetIP: IPv4Address = remoteIP) -> [UInt8] {
        FrameBuilder.ethernet(destination: .broadcast, source: asker, type: 0x0806,
                              payload: FrameBuilder.arp(operation: operation, senderMAC: asker, senderIP: senderIP, targetIP: targetIP))
    }

    func testARPRequestGetsAReplyFromTheOwner() throws {
        let reply = try XCTUnwrap(Self.answer(Self.arpRequest()))
        XCTAssertEqual(reply.count, 42)
        XCTAssertEqual(Array(reply[0..<6]), Self.asker.octets, "Ethernet destination: the asker")
        XCTAssertEqual(Array(reply[6..<12]), Self.remote.octets, "Ethernet source: the owner")
        XCTAssertEqual(Array(reply[12..<14]), [0x08, 0x06], "EtherType ARP")
        XCTAssertEqual(Array(reply[14..<16]), [0, 1], "hardware type Ethernet")
        XCTAssertEqual(Array(reply[16..<18]), [0x08, 0x00], "protocol type IPv4")
        XCTAssertEqual(reply[18], 6)
        XCTAssertEqual(reply[19], 4)
        XCTAssertEqual(Array(reply[20..<22]), [0, 2], "operation: reply")
        XCTAssertEqual(Array(reply[22..<28]), Self.remote.octets, "sender MAC")
        XCTAssertEqual(Array(reply[28..<32]), [10, 0, 0, 2], "sender IP")
        XCTAssertEqual(Array(reply[32..<38]), Self.asker.octets, "target MAC")
        XCTAssertEqual(Array(reply[38..<42]), [10, 0, 0, 1], "target IP")
    }

    func testARPThatIsNoQuestionGetsNoAnswer() {
        XCTAssertNil(Self.answer(Self.arpRequest(operation: 2)), "an ARP reply")
        XCTAssertNil(Self.answer(Self.arpRequest(senderIP: Self.remoteIP)), "a gratuitous ARP")
        XCTAssertNil(Self.answer(Self.arpRequest(senderIP: .any)), "an ARP probe")
        XCTAssertNil(Self.answer(Self.arpRequest(targetIP: IPv4Address("10.0.0.77")!)), "an address the map does not know")
        XCTAssertNil(Self.answer(Self.arpRequest(), capacity: 41), "a reply buffer too small")
        XCTAssertNil(Self.answer(Array(Self.arpRequest()[0..<41])), "a truncated request")
        var ipv6Sized = Self.arpRequest()
        ipv6Sized[19] = 16
        XCTAssertNil(Self.answer(ipv6Sized), "protocol length 16")
        XCTAssertNil(Self.answer([]), "an empty frame")
    }

    static func solicitation(source: IPv6Address = asker6, destination: IPv6Address? = nil, target: IPv6Address = remote6,
                             hopLimit: UInt8 = 255, options: [UInt8]? = nil) -> [UInt8] {
        let group = IPv6Address(high: 0xFF02_0000_0000_0000, low: 0x1_FF00_0000 | target.low & 0xFF_FFFF)
        let icmp = FrameBuilder.neighborSolicitation(target: target, sourceLinkLayer: options == nil ? asker : nil,
                                                     options: options ?? [])
        var packet = FrameBuilder.ipv6(source: source, destination: destination ?? group, next: 58, payload: icmp)
        packet[7] = hopLimit
        let pseudo = ReferenceChecksum.pseudo(packet, ip: 0, proto: 58, length: icmp.count)
        let checksum = ~UInt16(ReferenceChecksum.sum(packet[40...], initial: pseudo))
        packet[42] = UInt8(checksum >> 8)
        packet[43] = UInt8(truncatingIfNeeded: checksum)
        return FrameBuilder.ethernet(destination: MACAddress(0x33, 0x33, 0xFF, 0x02, 0x00, 0x03), source: asker,
                                     type: 0x86DD, payload: packet)
    }

    func testSolicitationGetsAnAdvertisementWithTheTargetLinkLayerAddress() throws {
        let reply = try XCTUnwrap(Self.answer(Self.solicitation()))
        XCTAssertEqual(reply.count, 14 + 40 + 32)
        XCTAssertEqual(Array(reply[0..<6]), Self.asker.octets, "Ethernet destination: the asker")
        XCTAssertEqual(Array(reply[6..<12]), Self.remote.octets, "Ethernet source: the owner")
        XCTAssertEqual(Array(reply[12..<14]), [0x86, 0xDD])
        XCTAssertEqual(Array(reply[14..<18]), [0x60, 0, 0, 0], "version 6, no traffic class or flow label")
        XCTAssertEqual(Array(reply[18..<20]), [0, 32], "payload length")
        XCTAssertEqual(reply[20], 58, "next header ICMPv6")
        XCTAssertEqual(reply[21], 255, "hop limit")
        XCTAssertEqual(Array(reply[22..<38]), FrameBuilder.ipv6(Self.remote6), "source: the target address")
        XCTAssertEqual(Array(reply[38..<54]), FrameBuilder.ipv6(Self.asker6), "destination: the asker")
        XCTAssertEqual(reply[54], 136, "neighbor advertisement")
        XCTAssertEqual(reply[55], 0, "code")
        XCTAssertEqual(reply[58], 0x60, "solicited and override, not router")
        XCTAssertEqual(Array(reply[59..<62]), [0, 0, 0])
        XCTAssertEqual(Array(reply[62..<78]), FrameBuilder.ipv6(Self.remote6), "target")
        XCTAssertEqual(Array(reply[78..<80]), [2, 1], "target link-layer address option, 8 bytes")
        XCTAssertEqual(Array(reply[80..<86]), Self.remote.octets, "the owner's MAC")
        let pseudo = ReferenceChecksum.pseudo(reply, ip: 14, proto: 58, length: 32)
        XCTAssertNotEqual(Array(reply[56..<58]), [0, 0])
        XCTAssertEqual(ReferenceChecksum.verify(reply[54...], initial: pseudo), 0, "ICMPv6 checksum")
    }

    func testUnicastSolicitationWithoutOptionsIsAnswered() throws {
        let reply = try XCTUnwrap(Self.answer(Self.solicitation(destination: Self.remote6, options: [])))
        XCTAssertEqual(reply.count, 86)
        XCTAssertEqual(ReferenceChecksum.verify(reply[54...], initial: ReferenceChecksum.pseudo(reply, ip: 14, proto: 58, length: 32)), 0)
    }

    func testSolicitationsThatMustNotBeAnswered() {
        XCTAssertNil(Self.answer(Self.solicitation(source: .unspecified, options: [])), "a DAD probe")
        XCTAssertNil(Self.answer(Self.solicitation(hopLimit: 64)), "hop limit below 255: not from the link")
        XCTAssertNil(Self.answer(Self.solicitation(target: IPv6Address("fd00::77")!)), "an address the map does not know")
        XCTAssertNil(Self.answer(Self.solicitation(destination: IPv6Address("ff02::1")!)), "sent to all-nodes, not the target's group")
        XCTAssertNil(Self.answer(Self.solicitation(options: [1, 0, 0, 0, 0, 0, 0, 0])), "a zero-length option")
        XCTAssertNil(Self.answer(Self.solicitation(options: [1, 2, 0, 0, 0, 0, 0, 0])), "an option past the packet")
        XCTAssertNil(Self.answer(Self.solicitation(target: IPv6Address("ff02::1")!)), "a multicast target")
        XCTAssertNil(Self.answer(Self.solicitation(), capacity: 85), "a reply buffer too small")
        var advertisement = Self.solicitation()
        advertisement[54] = 136
        XCTAssertNil(Self.answer(advertisement), "an advertisement")
        var code = Self.solicitation()
        code[55] = 1
        XCTAssertNil(Self.answer(code), "ICMPv6 code 1")
        let truncated = Self.solicitation(options: [])
        XCTAssertNil(Self.answer(Array(truncated[0..<(truncated.count - 1)])), "a truncated frame")
    }
}
