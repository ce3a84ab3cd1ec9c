import Config
import Switch
import Virtio
import XCTest

/// The virtio-net offload header a tenant sends must describe the frame the switch parsed
/// (`OffloadCheck`): each case is dropped with its own reason, and what a Linux or virtio driver
/// sends passes.
final class OffloadCheckTests: XCTestCase {
    static let needsCsum = VirtioNetHeader.flagNeedsCsum
    static let tcpv4 = VirtioNetHeader.GSOType.tcpv4.rawValue
    static let tcpv6 = VirtioNetHeader.GSOType.tcpv6.rawValue
    static let udpL4 = VirtioNetHeader.GSOType.udpL4.rawValue
    static let ufo = VirtioNetHeader.GSOType.udp.rawValue
    static let ecn = VirtioNetHeader.gsoECN

    // MARK: Frames (blue/a to blue/b; segment MTU 1500 unless said)

    static func tcp4(payload: Int, dataOffset: UInt8 = 5, moreFragments: Bool = false) -> [UInt8] {
        Fixture.ipv4Frame(FrameBuilder.ipv4(source: Fixture.ipA, destination: Fixture.ipB, protocol: 6,
                                            payload: FrameBuilder.tcp(sourcePort: 40_000, destinationPort: 80,
                                                                      dataOffset: dataOffset,
                                                                      payload: Array(repeating: 0xAB, count: payload)),
                                            moreFragments: moreFragments))
    }

    static func udp4(payload: Int, moreFragments: Bool = false) -> [UInt8] {
        Fixture.ipv4Frame(FrameBuilder.ipv4(source: Fixture.ipA, destination: Fixture.ipB, protocol: 17,
                                            payload: FrameBuilder.udp(sourcePort: 40_000, destinationPort: 443,
                                                                      payload: Array(repeating: 0xAB, count: payload)),
                                            moreFragments: moreFragments))
    }

    static func tcp6(payload: Int, extensions: [FrameBuilder.IPv6Extension] = []) -> [UInt8] {
        Fixture.ipv6Frame(next: 6, extensions: extensions,
                          payload: FrameBuilder.tcp(sourcePort: 40_000, destinationPort: 80,
                                                    payload: Array(repeating: 0xAB, count: payload)))
    }

    static func udp6(payload: Int) -> [UInt8] {
        Fixture.ipv6Frame(next: 17, payload: FrameBuilder.udp(sourcePort: 40_000, destinationPort: 443,
                                                               payload: Array(repeating: 0xAB, count: payload)))
    }

    /// NEEDS_CSUM at `start`/`offset`, with GSO `type` (none by default).
    static func header(_ type: UInt8 = 0, size: UInt16 = 0, hdrLen: UInt16 = 0, start: UInt16, offset: UInt16,
                       flags: UInt8 = needsCsum) -> VirtioNetHeader {
        VirtioNetHeader(flags: flags, gsoType: type, headerLength: hdrLen, gsoSize: size, csumStart: start, csumOffset: offset)
    }

    static let tso4 = header(tcpv4, size: 1448, hdrLen: 54, start: 34, offset: 16)
    static let tso6 = header(tcpv6, size: 1428, hdrLen: 74, start: 54, offset: 16)
    static let uso4 = header(udpL4, size: 1400, hdrLen: 42, start: 34, offset: 6)

    // MARK: Accepted

    func testWhatLinuxAndVirtioDriversSendIsForwarded() {
        var plane = Fixture.plane()
        typealias T = OffloadCheckTests
        let cases: [(String, [UInt8], VirtioNetHeader)] = [
            ("plain frame", T.udp4(payload: 10), VirtioNetHeader()),
            ("TCP/IPv4 partial checksum", T.tcp4(payload: 100), T.header(start: 34, offset: 16)),
            ("UDP/IPv4 partial checksum", T.udp4(payload: 100), T.header(start: 34, offset: 6)),
            ("UDP/IPv6 partial checksum", T.udp6(payload: 100), T.header(start: 54, offset: 6)),
            ("TSO4", T.tcp4(payload: 20_000), T.tso4),
            ("TSO4 with ECN", T.tcp4(payload: 20_000),
             T.header(T.tcpv4 | T.ecn, size: 1448, hdrLen: 54, start: 34, offset: 16)),
            ("TSO6", T.tcp6(payload: 20_000), T.tso6),
            ("TSO6 behind a destination options header", T.tcp6(payload: 20_000, extensions: [.destinationOptions()]),
             T.header(T.tcpv6, size: 1420, hdrLen: 82, start: 62, offset: 16)),
            ("USO4", T.udp4(payload: 20_000), T.uso4),
            ("USO6", T.udp6(payload: 20_000), T.header(T.udpL4, size: 1400, hdrLen: 62, start: 54, offset: 6)),
            // Linux puts its linear head length in hdr_len: the whole frame for a small linear skb.
            ("TSO4, hdr_len the whole frame", T.tcp4(payload: 3000),
             T.header(T.tcpv4, size: 1000, hdrLen: 3054, start: 34, offset: 16)),
            ("TSO4 with TCP options", T.tcp4(payload: 20_000, dataOffset: 8),
             T.header(T.tcpv4, size: 1448, hdrLen: 66, start: 34, offset: 16)),
            // Not really GSO (Linux treats it as a plain frame), and no larger than one segment.
            ("TSO4 payload under gso_size", T.tcp4(payload: 500), T.tso4),
            ("TSO4 at the smallest gso_size", T.tcp4(payload: 2000),
             T.header(T.tcpv4, size: 88, hdrLen: 54, start: 34, offset: 16)),
            ("TSO4 at the largest gso_size", T.tcp4(payload: 20_000),
             T.header(T.tcpv4, size: 1460, hdrLen: 54, start: 34, offset: 16)),
            ("USO4 of 128 segments", T.udp4(payload: 128 * 100),
             T.header(T.udpL4, size: 100, hdrLen: 42, start: 34, offset: 6)),
            // hdr_len is a hint without GSO; only past the frame is it refused.
            ("plain TCP with a short hdr_len", T.tcp4(payload: 100), T.header(hdrLen: 10, start: 34, offset: 16)),
            // Not forwarded as such: the engine clears it (sanitizeForEgress).
            ("DATA_VALID", T.udp4(payload: 10), VirtioNetHeader(flags: VirtioNetHeader.flagDataValid)),
        ]
        for (name, frame, header) in cases {
            XCTAssertEqual(plane.send(frame, from: 0, header: header), mask(1), name)
        }
        let drops = plane.statistics().ports[0].drops.values.reduce(0, +)
        XCTAssertEqual(drops, 0)
    }

    func testJumboSegmentAllowsLargerSegments() {
        var plane = Fixture.plane(Fixture.configuration(mtu: 9000))
        let jumbo = Self.header(Self.tcpv4, size: 8960, hdrLen: 54, start: 34, offset: 16)
        XCTAssertEqual(plane.send(Self.tcp4(payload: 60_000), from: 0, header: jumbo), mask(1))
        let tooLarge = Self.header(Self.tcpv4, size: 8961, hdrLen: 54, start: 34, offset: 16)
        XCTAssertEqual(plane.send(Self.tcp4(payload: 60_000), from: 0, header: tooLarge), .drop(.offloadGSOSize))
    }

    // MARK: Dropped

    func testGSOTypeMustMatchTheParsedProtocol() {
        var plane = Fixture.plane()
        typealias T = OffloadCheckTests
        let gre = Fixture.ipv4Frame(FrameBuilder.ipv4(source: Fixture.ipA, destination: Fixture.ipB, protocol: 47,
                                                      payload: Array(repeating: 0, count: 3000)))
        let cases: [(String, [UInt8], VirtioNetHeader)] = [
            ("TCPV4 on IPv6", T.tcp6(payload: 3000), T.header(T.tcpv4, size: 1000, hdrLen: 74, start: 54, offset: 16)),
            ("TCPV6 on IPv4", T.tcp4(payload: 3000), T.header(T.tcpv6, size: 1000, hdrLen: 54, start: 34, offset: 16)),
            ("TCPV4 on UDP", T.udp4(payload: 3000), T.header(T.tcpv4, size: 1000, hdrLen: 42, start: 34, offset: 16)),
            ("UDP_L4 on TCP", T.tcp4(payload: 3000), T.header(T.udpL4, size: 1000, hdrLen: 54, start: 34, offset: 6)),
            ("UFO", T.udp4(payload: 3000), T.header(T.ufo, size: 1000, hdrLen: 42, start: 34, offset: 6)),
            ("ECN without GSO", T.tcp4(payload: 100), T.header(T.ecn, start: 34, offset: 16)),
            ("ECN with UDP_L4", T.udp4(payload: 3000), T.header(T.udpL4 | T.ecn, size: 1000, hdrLen: 42, start: 34, offset: 6)),
            ("TCPV4 on a first fragment", T.tcp4(payload: 3000, moreFragments: true), T.tso4),
            ("TCPV4 on another protocol", gre, T.header(T.tcpv4, size: 1000, hdrLen: 34, start: 34, offset: 16)),
            ("TCPV4 on ARP", Fixture.arpFrame(), T.header(T.tcpv4, size: 1000, start: 14, offset: 16)),
        ]
        for (name, frame, header) in cases {
            XCTAssertEqual(plane.send(frame, from: 0, header: header), .drop(.offloadGSOMismatch), name)
        }
        XCTAssertEqual(plane.drops(.offloadGSOMismatch, port: 0), UInt64(cases.count))
    }

    func testPartialChecksumMustPointAtTheTransportChecksum() {
        var plane = Fixture.plane()
        typealias T = OffloadCheckTests
        let icmp = Fixture.ipv4Frame(FrameBuilder.ipv4(source: Fixture.ipA, destination: Fixture.ipB, protocol: 1,
                                                       payload: FrameBuilder.icmp(type: 8)))
        let icmp6 = Fixture.ipv6Frame(next: 58, payload: FrameBuilder.icmp(type: 128))
        let gre = Fixture.ipv4Frame(FrameBuilder.ipv4(source: Fixture.ipA, destination: Fixture.ipB, protocol: 47,
                                                      payload: Array(repeating: 0, count: 40)))
        let cases: [(String, [UInt8], VirtioNetHeader)] = [
            // Over the TCP ports: a receiver that forwards completes the checksum there, after the ACL.
            ("TCP, offset at the ports", T.tcp4(payload: 100), T.header(start: 34, offset: 2)),
            ("TCP, UDP's offset", T.tcp4(payload: 100), T.header(start: 34, offset: 6)),
            ("UDP, TCP's offset", T.udp4(payload: 100), T.header(start: 34, offset: 16)),
            ("UDP, start one byte late", T.udp4(payload: 100), T.header(start: 35, offset: 6)),
            ("start in the IP header", T.udp4(payload: 100), T.header(start: 24, offset: 16)),
            ("start in the payload", T.udp4(payload: 100), T.header(start: 42, offset: 2)),
            ("IPv6 start at the IPv4 offset", T.udp6(payload: 100), T.header(start: 34, offset: 6)),
            ("ICMP", icmp, T.header(start: 34, offset: 2)),
            ("ICMPv6", icmp6, T.header(start: 54, offset: 2)),
            ("another protocol", gre, T.header(start: 34, offset: 2)),
            ("ARP", Fixture.arpFrame(), T.header(start: 14, offset: 6)),
            ("a first fragment", T.udp4(payload: 100, moreFragments: true), T.header(start: 34, offset: 6)),
            ("TSO4, offset at the ports", T.tcp4(payload: 3000),
             T.header(T.tcpv4, size: 1000, hdrLen: 54, start: 34, offset: 2)),
            ("USO4, start in the IP header", T.udp4(payload: 3000),
             T.header(T.udpL4, size: 1000, hdrLen: 42, start: 20, offset: 20)),
        ]
        for (name, frame, header) in cases {
            XCTAssertEqual(plane.send(frame, from: 0, header: header), .drop(.offloadChecksumMismatch), name)
        }
        XCTAssertEqual(plane.drops(.offloadChecksumMismatch, port: 0), UInt64(cases.count))
    }

    func testSegmentSizeMustBeSaneAndFitTheMTU() {
        var plane = Fixture.plane()
        typealias T = OffloadCheckTests
        let cases: [(String, [UInt8], VirtioNetHeader)] = [
            ("TCP gso_size 1", T.tcp4(payload: 3000), T.header(T.tcpv4, size: 1, hdrLen: 54, start: 34, offset: 16)),
            ("TCP gso_size 87", T.tcp4(payload: 3000), T.header(T.tcpv4, size: 87, hdrLen: 54, start: 34, offset: 16)),
            ("TCP segment of 1501 bytes", T.tcp4(payload: 3000),
             T.header(T.tcpv4, size: 1461, hdrLen: 54, start: 34, offset: 16)),
            ("TCP with options, segment of 1501", T.tcp4(payload: 3000, dataOffset: 8),
             T.header(T.tcpv4, size: 1449, hdrLen: 66, start: 34, offset: 16)),
            ("TCPv6 segment of 1501", T.tcp6(payload: 3000), T.header(T.tcpv6, size: 1441, hdrLen: 74, start: 54, offset: 16)),
            ("TCP gso_size 65535", T.tcp4(payload: 3000), T.header(T.tcpv4, size: 65_535, hdrLen: 54, start: 34, offset: 16)),
            ("UDP segment of 1501", T.udp4(payload: 3000), T.header(T.udpL4, size: 1473, hdrLen: 42, start: 34, offset: 6)),
            ("UDP of 129 segments", T.udp4(payload: 128 * 100 + 1),
             T.header(T.udpL4, size: 100, hdrLen: 42, start: 34, offset: 6)),
            ("UDP gso_size 1", T.udp4(payload: 3000), T.header(T.udpL4, size: 1, hdrLen: 42, start: 34, offset: 6)),
        ]
        for (name, frame, header) in cases {
            XCTAssertEqual(plane.send(frame, from: 0, header: header), .drop(.offloadGSOSize), name)
        }
        XCTAssertEqual(plane.drops(.offloadGSOSize, port: 0), UInt64(cases.count))
    }

    func testHeaderLengthMustNotLie() {
        var plane = Fixture.plane()
        typealias T = OffloadCheckTests
        let small = T.tcp4(payload: 100)
        let cases: [(String, [UInt8], VirtioNetHeader)] = [
            ("plain frame, hdr_len past the end", small, T.header(hdrLen: UInt16(small.count + 1), start: 34, offset: 16)),
            ("no offload at all, hdr_len past the end", small, VirtioNetHeader(headerLength: 65_535)),
            ("TSO4, hdr_len past the end", T.tcp4(payload: 3000),
             T.header(T.tcpv4, size: 1000, hdrLen: 3055, start: 34, offset: 16)),
            ("TSO4, hdr_len short of the TCP header", T.tcp4(payload: 3000),
             T.header(T.tcpv4, size: 1000, hdrLen: 53, start: 34, offset: 16)),
            ("TSO4, hdr_len short of the TCP options", T.tcp4(payload: 3000, dataOffset: 8),
             T.header(T.tcpv4, size: 1000, hdrLen: 54, start: 34, offset: 16)),
            ("TSO6, hdr_len at the IPv4 length", T.tcp6(payload: 3000),
             T.header(T.tcpv6, size: 1000, hdrLen: 54, start: 54, offset: 16)),
            ("USO4, hdr_len zero", T.udp4(payload: 3000), T.header(T.udpL4, size: 1000, hdrLen: 0, start: 34, offset: 6)),
        ]
        for (name, frame, header) in cases {
            XCTAssertEqual(plane.send(frame, from: 0, header: header), .drop(.offloadHeaderLength), name)
        }
        XCTAssertEqual(plane.drops(.offloadHeaderLength, port: 0), UInt64(cases.count))
    }

    /// The checks come after the frame's own: a header is judged against headers that parsed.
    func testMalformedFrameKeepsItsOwnReason() {
        var plane = Fixture.plane()
        var frame = Self.tcp4(payload: 3000)
        frame[34 + 12] = 0x30  // TCP data offset 3
        XCTAssertEqual(plane.send(frame, from: 0, header: Self.tso4), .drop(.malformedHeader))
        XCTAssertEqual(plane.drops(.offloadGSOMismatch, port: 0) + plane.drops(.offloadHeaderLength, port: 0), 0)
    }

    // MARK: Egress header

    func testSanitizeForEgressKeepsOnlyWhatWasChecked() {
        var bytes: [UInt8] = [0xFF, Self.tcpv4 | Self.ecn, 54, 0, 0xA8, 0x05, 34, 0, 16, 0, 0xCD, 0xAB, 0x99]
        bytes.withUnsafeMutableBytes { OffloadCheck.sanitizeForEgress(header: $0) }
        // NEEDS_CSUM stays; DATA_VALID, RSC_INFO and undefined bits go; num_buffers is zeroed;
        // the rest of the header and the frame are untouched.
        XCTAssertEqual(bytes, [VirtioNetHeader.flagNeedsCsum, Self.tcpv4 | Self.ecn, 54, 0, 0xA8, 0x05, 34, 0, 16, 0, 0, 0, 0x99])

        var dataValid = [VirtioNetHeader.flagDataValid] + Array(repeating: UInt8(0), count: 11)
        dataValid.withUnsafeMutableBytes { OffloadCheck.sanitizeForEgress(header: $0) }
        XCTAssertEqual(dataValid, Array(repeating: 0, count: 12))
        let header = dataValid.withUnsafeBytes { VirtioNetHeader(parsing: $0) }
        XCTAssertEqual(header?.flags, 0)
    }
}
