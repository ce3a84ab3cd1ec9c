import Config
import Switch
import Virtio
import XCTest

final class IPv4SanityTests: XCTestCase {
    let udp = FrameBuilder.udp(sourcePort: 1000, destinationPort: 2000, payload: [1, 2, 3, 4])

    func packet(_ payload: [UInt8]? = nil, proto: UInt8 = 17, options: [UInt8] = [], fragmentOffset: Int = 0,
                more: Bool = false, totalLength: Int? = nil, ihl: Int? = nil, version: UInt8 = 4) -> [UInt8] {
        Fixture.ipv4Frame(FrameBuilder.ipv4(source: Fixture.ipA, destination: Fixture.ipB, protocol: proto,
                                            payload: payload ?? udp, options: options, fragmentOffset: fragmentOffset,
                                            moreFragments: more, totalLength: totalLength, ihl: ihl, version: version))
    }

    func testHeaderFields() {
        var plane = Fixture.plane()
        XCTAssertEqual(plane.send(packet(), from: 0), mask(1))
        XCTAssertEqual(plane.send(packet(options: [1, 1, 1, 0]), from: 0), mask(1))
        XCTAssertEqual(plane.send(packet(version: 5), from: 0), .drop(.malformedHeader))
        XCTAssertEqual(plane.send(packet(ihl: 4), from: 0), .drop(.malformedHeader))
        XCTAssertEqual(plane.send(packet(ihl: 15), from: 0), .drop(.malformedHeader))
        XCTAssertEqual(plane.send(packet(totalLength: 19), from: 0), .drop(.malformedHeader))
        XCTAssertEqual(plane.send(packet(totalLength: 200), from: 0), .drop(.malformedHeader))
        XCTAssertEqual(plane.send(Array(packet().prefix(30)), from: 0), .drop(.malformedHeader))
    }

    func testTrailingEthernetPaddingAllowed() {
        var plane = Fixture.plane()
        var frame = packet(FrameBuilder.udp(sourcePort: 1, destinationPort: 2))
        XCTAssertEqual(frame.count, 42)
        frame += Array(repeating: 0, count: 18)
        XCTAssertEqual(plane.send(frame, from: 0), mask(1))
    }

    func testTransportHeaders() {
        var plane = Fixture.plane()
        XCTAssertEqual(plane.send(packet(FrameBuilder.tcp(sourcePort: 1, destinationPort: 80), proto: 6), from: 0), mask(1))
        XCTAssertEqual(plane.send(packet(FrameBuilder.tcp(sourcePort: 1, destinationPort: 80, dataOffset: 8), proto: 6),
                                  from: 0), mask(1))
        XCTAssertEqual(plane.send(packet(FrameBuilder.tcp(sourcePort: 1, destinationPort: 80, dataOffset: 4), proto: 6),
                                  from: 0), .drop(.malformedHeader))
        var longOffset = FrameBuilder.tcp(sourcePort: 1, destinationPort: 80)
        longOffset[12] = 0xF0
        XCTAssertEqual(plane.send(packet(longOffset, proto: 6), from: 0), .drop(.malformedHeader))
        XCTAssertEqual(plane.send(packet(Array(FrameBuilder.tcp(sourcePort: 1, destinationPort: 80).prefix(19)), proto: 6),
                                  from: 0), .drop(.malformedHeader))
        XCTAssertEqual(plane.send(packet(FrameBuilder.udp(sourcePort: 1, destinationPort: 2, payload: [1], length: 7)),
                                  from: 0), .drop(.malformedHeader))
        XCTAssertEqual(plane.send(packet(FrameBuilder.udp(sourcePort: 1, destinationPort: 2, payload: [1], length: 100)),
                                  from: 0), .drop(.malformedHeader))
        XCTAssertEqual(plane.send(packet([0, 0, 0, 0, 0], proto: 17), from: 0), .drop(.malformedHeader))
        XCTAssertEqual(plane.send(packet([8, 0, 0], proto: 1), from: 0), .drop(.malformedHeader))
        // Other protocols are not parsed.
        XCTAssertEqual(plane.send(packet([1, 2, 3], proto: 47), from: 0), mask(1))
    }

    func testFragments() {
        var plane = Fixture.plane()
        let tcp = FrameBuilder.tcp(sourcePort: 1, destinationPort: 80)
        // A first fragment with the whole TCP header, and later ones, are fine.
        XCTAssertEqual(plane.send(packet(tcp + [1, 2, 3, 4], proto: 6, more: true), from: 0), mask(1))
        XCTAssertEqual(plane.send(packet([1, 2, 3, 4, 5, 6, 7, 8], proto: 6, fragmentOffset: 3), from: 0), mask(1))
        XCTAssertEqual(plane.send(packet([1, 2, 3, 4, 5, 6, 7, 8], proto: 6, fragmentOffset: 2, more: true), from: 0), mask(1))
        // RFC 1858: tiny first fragment, and an offset-8 fragment that overlaps the TCP flags.
        XCTAssertEqual(plane.send(packet(Array(tcp.prefix(8)), proto: 6, more: true), from: 0), .drop(.fragmentInvalid))
        XCTAssertEqual(plane.send(packet([1, 2, 3, 4, 5, 6, 7, 8], proto: 6, fragmentOffset: 1), from: 0),
                       .drop(.fragmentInvalid))
        XCTAssertEqual(plane.send(packet([1, 2, 3, 4], proto: 17, more: true), from: 0), .drop(.fragmentInvalid))
        XCTAssertEqual(plane.send(packet([8, 0, 0, 0], proto: 1, more: true), from: 0), .drop(.fragmentInvalid))
        // Beyond 65535 bytes (ping of death).
        XCTAssertEqual(plane.send(packet(Array(repeating: 0, count: 16), proto: 1, fragmentOffset: 8190), from: 0),
                       .drop(.fragmentInvalid))
        XCTAssertEqual(plane.drops(.fragmentInvalid, port: 0), 5)
    }
}

final class IPv6SanityTests: XCTestCase {
    let udp = FrameBuilder.udp(sourcePort: 1000, destinationPort: 2000, payload: [1, 2, 3, 4])

    func testExtensionHeaderChain() {
        var plane = Fixture.plane()
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(next: 17, extensions: [.hopByHop(), .routing(length: 24),
                                                                          .destinationOptions()], payload: udp), from: 0),
                       mask(1))
        // Hop-by-hop only first.
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(next: 17, extensions: [.routing(), .hopByHop()], payload: udp), from: 0),
                       .drop(.malformedHeader))
        // Too many headers.
        let many = Array(repeating: FrameBuilder.IPv6Extension.destinationOptions(), count: 9)
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(next: 17, extensions: many, payload: udp), from: 0), .drop(.malformedHeader))
        // An extension header that runs past the payload.
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(next: 17, extensions: [.raw(type: 60, bytes: [4, 0, 0])], payload: []),
                                  from: 0), .drop(.malformedHeader))
        // Payload length past the frame; version field.
        var frame = Fixture.ipv6Frame(next: 17, payload: udp)
        frame[18] = 0x10
        XCTAssertEqual(plane.send(frame, from: 0), .drop(.malformedHeader))
        frame = Fixture.ipv6Frame(next: 17, payload: udp)
        frame[14] = 0x40
        XCTAssertEqual(plane.send(frame, from: 0), .drop(.malformedHeader))
        XCTAssertEqual(plane.send(Array(Fixture.ipv6Frame(next: 17, payload: udp).prefix(50)), from: 0), .drop(.malformedHeader))
    }

    func testFragments() {
        var plane = Fixture.plane()
        let tcp = FrameBuilder.tcp(sourcePort: 1, destinationPort: 80)
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(next: 6, extensions: [.fragment(offset: 0, more: true)], payload: tcp),
                                  from: 0), mask(1))
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(next: 6, extensions: [.fragment(offset: 5, more: false)],
                                                    payload: [1, 2, 3, 4, 5, 6, 7, 8]), from: 0), mask(1))
        // Atomic fragment: a whole packet.
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(next: 17, extensions: [.fragment(offset: 0, more: false)], payload: udp),
                                  from: 0), mask(1))
        // RFC 7112: the first fragment lacks the rest of the chain or the transport header.
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(next: 6, extensions: [.fragment(offset: 0, more: true),
                                                                          .raw(type: 60, bytes: [4, 0, 0, 0, 0, 0, 0])],
                                                    payload: []), from: 0), .drop(.fragmentInvalid))
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(next: 6, extensions: [.fragment(offset: 0, more: true)],
                                                    payload: Array(tcp.prefix(12))), from: 0), .drop(.fragmentInvalid))
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(next: 6, extensions: [.fragment(offset: 1, more: true)],
                                                    payload: [1, 2, 3, 4, 5, 6, 7, 8]), from: 0), .drop(.fragmentInvalid))
        // Neighbor discovery never comes in fragments (RFC 6980).
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(next: 58, extensions: [.fragment(offset: 0, more: true)],
                                                    payload: FrameBuilder.neighborAdvertisement(target: Fixture.ip6A)),
                                  from: 0), .drop(.fragmentInvalid))
        // Two fragment headers.
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(next: 17, extensions: [.fragment(offset: 0, more: false),
                                                                           .fragment(offset: 0, more: false)], payload: udp),
                                  from: 0), .drop(.malformedHeader))
    }
}
