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

    /// RFC 1858's offset-8 overlap is no less an overlap for UDP, ICMP or any other protocol: no
    /// legitimate stack starts a second fragment 8 bytes in.
    func testFragmentAtOffsetEightDroppedForEveryProtocol() {
        var plane = Fixture.plane()
        for proto: UInt8 in [6, 17, 1, 47] {
            XCTAssertEqual(plane.send(packet([1, 2, 3, 4, 5, 6, 7, 8], proto: proto, fragmentOffset: 1), from: 0),
                           .drop(.fragmentInvalid), "protocol \(proto)")
            XCTAssertEqual(plane.send(packet([1, 2, 3, 4, 5, 6, 7, 8], proto: proto, fragmentOffset: 2), from: 0), mask(1),
                           "protocol \(proto)")
        }
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
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(next: 6, extensions: [.fragment(offset: 8, more: false)],
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

    /// No later fragment may start in the first 64 bytes of the fragmentable part, whatever its
    /// fragment header claims comes next: receivers ignore that claim (RFC 8200 4.5).
    func testNonFirstFragmentInTheFirstFragmentsHeaderRegion() {
        var plane = Fixture.plane()
        for next: UInt8 in [6, 17, 58, 60, 59, 50] {
            for units in 1...7 {
                XCTAssertEqual(plane.send(Fixture.ipv6Frame(next: next, extensions: [.fragment(offset: units, more: true)],
                                                            payload: Array(repeating: 0, count: 16)), from: 0),
                               .drop(.fragmentInvalid), "next \(next), offset \(units * 8)")
            }
            XCTAssertEqual(plane.send(Fixture.ipv6Frame(next: next, extensions: [.fragment(offset: 8, more: false)],
                                                        payload: Array(repeating: 0, count: 16)), from: 0),
                           mask(1), "next \(next), offset 64")
        }
        // Behind a hop-by-hop header (unfragmentable part) the offset still counts from the fragmentable part.
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(next: 6, extensions: [.hopByHop(), .fragment(offset: 7, more: false)],
                                                    payload: Array(repeating: 0, count: 16)), from: 0),
                       .drop(.fragmentInvalid))
    }

    /// The first fragment is TCP to port 80 behind a destination options header; the second,
    /// at offset 8, lands on the TCP header and rewrites the ports while its fragment header says
    /// "destination options", never TCP.
    func testOverlapThroughAnExtensionHeader() {
        var plane = Fixture.plane()
        let first = Fixture.ipv6Frame(next: 6, extensions: [.fragment(offset: 0, more: true), .destinationOptions()],
                                      payload: FrameBuilder.tcp(sourcePort: 1, destinationPort: 80) + [0, 0, 0, 0])
        let rewrite = Fixture.ipv6Frame(next: 60, extensions: [.fragment(offset: 1, more: false)],
                                        payload: FrameBuilder.tcp(sourcePort: 1, destinationPort: 23))
        XCTAssertEqual(plane.send(first, from: 0), mask(1))
        XCTAssertEqual(plane.send(rewrite, from: 0), .drop(.fragmentInvalid))
    }

    /// The IPv6 twin of RFC 1858's overlap with the rewriting fragment claiming UDP.
    func testOverlapWithALyingFragmentHeader() {
        var plane = Fixture.plane()
        let tcp23 = FrameBuilder.tcp(sourcePort: 1, destinationPort: 23)
        let first = Fixture.ipv6Frame(next: 6, extensions: [.fragment(offset: 0, more: true)],
                                      payload: FrameBuilder.tcp(sourcePort: 1, destinationPort: 80) + [0, 0, 0, 0])
        let rewrite = Fixture.ipv6Frame(next: 17, extensions: [.fragment(offset: 1, more: false)], payload: Array(tcp23[8...]))
        XCTAssertEqual(plane.send(first, from: 0), mask(1))
        XCTAssertEqual(plane.send(rewrite, from: 0), .drop(.fragmentInvalid))
    }

    /// A first fragment keeps its fragmentable-part extension headers and the upper-layer header's
    /// first 16 bytes within the 64 bytes no later fragment may overlap.
    func testFirstFragmentHeaderRegion() {
        var plane = Fixture.plane()
        let tcp = FrameBuilder.tcp(sourcePort: 1, destinationPort: 80, dataOffset: 15)
        func first(_ options: [FrameBuilder.IPv6Extension], more: Bool = true) -> [UInt8] {
            Fixture.ipv6Frame(next: 6, extensions: [.fragment(offset: 0, more: more)] + options, payload: tcp)
        }
        XCTAssertEqual(plane.send(first([.destinationOptions(length: 48)]), from: 0), mask(1))
        XCTAssertEqual(plane.send(first([.destinationOptions(length: 40), .destinationOptions()]), from: 0), mask(1))
        XCTAssertEqual(plane.send(first([.destinationOptions(length: 56)]), from: 0), .drop(.fragmentInvalid))
        XCTAssertEqual(plane.send(first([.destinationOptions(length: 48), .destinationOptions()]), from: 0),
                       .drop(.fragmentInvalid))
        // Unfragmentable headers before the fragment header do not count; an atomic fragment and an
        // unfragmented packet are whole packets.
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(next: 6, extensions: [.hopByHop(length: 64), .routing(length: 64),
                                                                          .fragment(offset: 0, more: true)], payload: tcp),
                                  from: 0), mask(1))
        XCTAssertEqual(plane.send(first([.destinationOptions(length: 56)], more: false), from: 0), mask(1))
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(next: 6, extensions: [.destinationOptions(length: 200)], payload: tcp),
                                  from: 0), mask(1))
    }
}
