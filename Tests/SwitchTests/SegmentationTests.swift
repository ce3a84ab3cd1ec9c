import Config
import Foundation
import Switch
import Virtio
import XCTest

/// Independent of `Segmentation.checksum`: 16-bit big-endian words, one at a time (RFC 1071).
enum ReferenceChecksum {
    static func sum(_ bytes: ArraySlice<UInt8>, initial: UInt32 = 0) -> UInt32 {
        var total = UInt64(initial)
        var index = bytes.startIndex
        while index < bytes.endIndex {
            let high = UInt64(bytes[index])
            let low = index + 1 < bytes.endIndex ? UInt64(bytes[index + 1]) : 0
            total += high << 8 | low
            index += 2
        }
        while total > 0xFFFF { total = (total & 0xFFFF) + (total >> 16) }
        return UInt32(total)
    }

    /// Zero when `bytes` (with `initial`) carry a correct checksum.
    static func verify(_ bytes: ArraySlice<UInt8>, initial: UInt32 = 0) -> UInt16 {
        ~UInt16(sum(bytes, initial: initial))
    }

    /// The TCP/UDP/ICMPv6 pseudo-header sum of the IP packet starting at `ip` in `frame`.
    static func pseudo(_ frame: [UInt8], ip: Int, proto: UInt8, length: Int) -> UInt32 {
        let v4 = frame[ip] >> 4 == 4
        let addresses = v4 ? frame[(ip + 12)..<(ip + 20)] : frame[(ip + 8)..<(ip + 40)]
        return sum(addresses, initial: UInt32(proto) + UInt32(length))
    }
}

final class SegmentationTests: XCTestCase {
    static let source = MACAddress(0x02, 0, 0, 0, 0, 0x0A)
    static let destination = MACAddress(0x02, 0, 0, 0, 0, 0x0B)
    static let headroom = 8
    static let ackPSHFIN: UInt8 = 0x10 | 0x08 | 0x01

    static func payload(_ count: Int) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 8) } }

    static func tcpHeader(sequence: UInt32, flags: UInt8, options: [UInt8] = []) -> [UInt8] {
        precondition(options.count % 4 == 0)
        let dataOffset = UInt8(5 + options.count / 4)
        return FrameBuilder.be16(40_000) + FrameBuilder.be16(5201) + FrameBuilder.be32(sequence) + FrameBuilder.be32(0x0BAD_F00D)
            + [dataOffset << 4, flags] + FrameBuilder.be16(501) + [0xDE, 0xAD] + [0, 0] + options
    }

    static func tcp4Frame(payload: [UInt8], sequence: UInt32 = 0xFFFF_F000, flags: UInt8 = ackPSHFIN,
                          ipOptions: [UInt8] = [], tcpOptions: [UInt8] = []) -> [UInt8] {
        let packet = FrameBuilder.ipv4(source: IPv4Address("10.0.0.1")!, destination: IPv4Address("10.0.0.2")!, protocol: 6,
                                       payload: tcpHeader(sequence: sequence, flags: flags, options: tcpOptions) + payload,
                                       options: ipOptions)
        return FrameBuilder.ethernet(destination: destination, source: source, type: 0x0800, payload: packet)
    }

    static func tcp6Frame(payload: [UInt8], sequence: UInt32 = 7, flags: UInt8 = ackPSHFIN,
                          extensions: [FrameBuilder.IPv6Extension] = [], tcpOptions: [UInt8] = []) -> [UInt8] {
        let packet = FrameBuilder.ipv6(source: IPv6Address("fd00::1")!, destination: IPv6Address("fd00::2")!, next: 6,
                                       extensions: extensions,
                                       payload: tcpHeader(sequence: sequence, flags: flags, options: tcpOptions) + payload)
        return FrameBuilder.ethernet(destination: destination, source: source, type: 0x86DD, payload: packet)
    }

    /// Runs `layOut` over a sentinel-filled buffer; returns the layout and the buffer.
    static func layOut(_ frame: [UInt8], _ header: VirtioNetHeader, headroom: Int = headroom,
                       capacity: Int = 200_000) -> (SegmentLayout?, [UInt8]) {
        var output = [UInt8](repeating: 0xA5, count: capacity)
        let layout = frame.withUnsafeBytes { frameBytes in
            output.withUnsafeMutableBytes { Segmentation.layOut(frame: frameBytes, header: header, headroom: headroom, into: $0) }
        }
        return (layout, output)
    }

    struct Expectation {
        var v6: Bool
        var ipHeaderLength: Int      // IPv4 header with options, or IPv6 header plus extension headers
        var tcpHeaderLength: Int
        var sequence: UInt32
        var flags: UInt8
        var identification: UInt16 = 0x1234
    }

    /// Checks every segment field by field and returns the concatenated payload.
    func verifySegments(_ layout: SegmentLayout, _ output: [UInt8], original frame: [UInt8], mss: Int,
                        _ expected: Expectation, file: StaticString = #filePath, line: UInt = #line) -> [UInt8] {
        let headroom = Self.headroom
        let headers = 14 + expected.ipHeaderLength + expected.tcpHeaderLength
        var payload: [UInt8] = []
        XCTAssertEqual(layout.length, layout.stride, file: file, line: line)
        for index in 0..<layout.count {
            let start = index * layout.stride
            let length = index == layout.count - 1 ? layout.lastLength : layout.length
            let packet = Array(output[start..<(start + length)])
            let last = index == layout.count - 1
            XCTAssertEqual(Array(packet[0..<headroom]), [UInt8](repeating: 0, count: headroom), "headroom", file: file, line: line)
            let wire = Array(packet[headroom...])
            XCTAssertEqual(Array(wire[0..<14]), Array(frame[0..<14]), "Ethernet header", file: file, line: line)
            let ip = 14, tcp = 14 + expected.ipHeaderLength
            let chunk = wire.count - headers
            XCTAssertTrue(last ? (1...mss).contains(chunk) : chunk == mss, "segment \(index) carries \(chunk)", file: file, line: line)
            let tcpLength = expected.tcpHeaderLength + chunk
            if expected.v6 {
                XCTAssertEqual(Int(wire[ip + 4]) << 8 | Int(wire[ip + 5]), expected.ipHeaderLength - 40 + tcpLength,
                               "IPv6 payload length", file: file, line: line)
                // Everything else in the IPv6 header and extension headers is copied as is.
                XCTAssertEqual(Array(wire[ip..<(ip + 4)]) + Array(wire[(ip + 6)..<tcp]),
                               Array(frame[ip..<(ip + 4)]) + Array(frame[(ip + 6)..<tcp]), file: file, line: line)
            } else {
                XCTAssertEqual(Int(wire[ip + 2]) << 8 | Int(wire[ip + 3]), expected.ipHeaderLength + tcpLength,
                               "IPv4 total length", file: file, line: line)
                XCTAssertEqual(UInt16(wire[ip + 4]) << 8 | UInt16(wire[ip + 5]), expected.identification &+ UInt16(index),
                               "IPv4 id", file: file, line: line)
                XCTAssertEqual(ReferenceChecksum.verify(wire[ip..<tcp]), 0, "IPv4 header checksum", file: file, line: line)
                XCTAssertEqual(Array(wire[(ip + 6)..<(ip + 10)]) + Array(wire[(ip + 12)..<tcp]),
                               Array(frame[(ip + 6)..<(ip + 10)]) + Array(frame[(ip + 12)..<tcp]), "IPv4 other fields",
                               file: file, line: line)
            }
            let sequence = UInt32(wire[tcp + 4]) << 24 | UInt32(wire[tcp + 5]) << 16 | UInt32(wire[tcp + 6]) << 8 | UInt32(wire[tcp + 7])
            XCTAssertEqual(sequence, expected.sequence &+ UInt32(index * mss), "sequence of \(index)", file: file, line: line)
            var flags = expected.flags
            if !last { flags &= ~(0x01 | 0x08) }
            if index != 0 { flags &= ~0x80 }
            XCTAssertEqual(wire[tcp + 13], flags, "flags of \(index)", file: file, line: line)
            // Ports, ack, data offset, window, urgent pointer and options unchanged.
            XCTAssertEqual(Array(wire[tcp..<(tcp + 4)]) + Array(wire[(tcp + 8)..<(tcp + 13)]) + Array(wire[(tcp + 14)..<(tcp + 16)])
                           + Array(wire[(tcp + 18)..<(tcp + expected.tcpHeaderLength)]),
                           Array(frame[tcp..<(tcp + 4)]) + Array(frame[(tcp + 8)..<(tcp + 13)]) + Array(frame[(tcp + 14)..<(tcp + 16)])
                           + Array(frame[(tcp + 18)..<(tcp + expected.tcpHeaderLength)]), file: file, line: line)
            let pseudo = ReferenceChecksum.pseudo(wire, ip: ip, proto: 6, length: tcpLength)
            XCTAssertEqual(ReferenceChecksum.verify(wire[tcp...], initial: pseudo), 0, "TCP checksum of \(index)", file: file, line: line)
            payload += wire[headers...]
        }
        // Nothing written past the last packet.
        let end = (layout.count - 1) * layout.stride + layout.lastLength
        XCTAssertTrue(output[end...].allSatisfy { $0 == 0xA5 }, "bytes past the layout", file: file, line: line)
        return payload
    }

    func testTCPv4SegmentsTenThousandBytes() throws {
        let data = Self.payload(10_000)
        let frame = Self.tcp4Frame(payload: data, flags: Self.ackPSHFIN | 0x80)
        let header = VirtioNetHeader(flags: VirtioNetHeader.flagNeedsCsum,
                                     gsoType: VirtioNetHeader.GSOType.tcpv4.rawValue | VirtioNetHeader.gsoECN,
                                     headerLength: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16)
        let (result, output) = Self.layOut(frame, header)
        let layout = try XCTUnwrap(result)
        XCTAssertEqual(layout, SegmentLayout(count: 7, stride: 8 + 54 + 1448, length: 8 + 54 + 1448,
                                             lastLength: 8 + 54 + 10_000 - 6 * 1448))
        XCTAssertEqual(layout.totalLength, 6 * 1510 + 8 + 54 + 1312)
        XCTAssertEqual(layout.packetsPerSend(), 7)
        XCTAssertEqual(SegmentLayout(count: 46, stride: 1510, length: 1510, lastLength: 400).packetsPerSend(), 43)
        XCTAssertEqual(SegmentLayout(count: 700, stride: 150, length: 150, lastLength: 100).packetsPerSend(), 64)
        XCTAssertEqual(SegmentLayout(count: 2, stride: 70_000, length: 70_000, lastLength: 10).packetsPerSend(), 1)
        let payload = verifySegments(layout, output, original: frame, mss: 1448,
                                     Expectation(v6: false, ipHeaderLength: 20, tcpHeaderLength: 20,
                                                 sequence: 0xFFFF_F000, flags: Self.ackPSHFIN | 0x80))
        XCTAssertEqual(payload, data)
    }

    func testTCPv4WithIPAndTCPOptions() throws {
        let data = Self.payload(5000)
        let ipOptions: [UInt8] = [0x94, 0x04, 0, 0]  // router alert
        let tcpOptions: [UInt8] = [1, 1, 8, 10] + FrameBuilder.be32(1) + FrameBuilder.be32(2)  // NOP NOP timestamps
        let frame = Self.tcp4Frame(payload: data, sequence: 1000, flags: 0x18, ipOptions: ipOptions, tcpOptions: tcpOptions)
        let header = VirtioNetHeader(flags: 1, gsoType: 1, headerLength: 14 + 24 + 32, gsoSize: 1000, csumStart: 38, csumOffset: 16)
        let (result, output) = Self.layOut(frame, header)
        let layout = try XCTUnwrap(result)
        XCTAssertEqual(layout.count, 5)
        XCTAssertEqual(layout.lastLength, layout.length)
        let payload = verifySegments(layout, output, original: frame, mss: 1000,
                                     Expectation(v6: false, ipHeaderLength: 24, tcpHeaderLength: 32, sequence: 1000, flags: 0x18))
        XCTAssertEqual(payload, data)
    }

    func testTCPv6SegmentsTenThousandBytes() throws {
        let data = Self.payload(10_000)
        let tcpOptions: [UInt8] = [1, 1, 8, 10] + FrameBuilder.be32(5) + FrameBuilder.be32(6)
        let frame = Self.tcp6Frame(payload: data, sequence: 0x7FFF_FFFF, flags: Self.ackPSHFIN | 0x80, tcpOptions: tcpOptions)
        let header = VirtioNetHeader(flags: 1, gsoType: 4 | 0x80, headerLength: 86, gsoSize: 1428, csumStart: 54, csumOffset: 16)
        let (result, output) = Self.layOut(frame, header)
        let layout = try XCTUnwrap(result)
        XCTAssertEqual(layout, SegmentLayout(count: 8, stride: 8 + 86 + 1428, length: 8 + 86 + 1428,
                                             lastLength: 8 + 86 + 10_000 - 7 * 1428))
        let payload = verifySegments(layout, output, original: frame, mss: 1428,
                                     Expectation(v6: true, ipHeaderLength: 40, tcpHeaderLength: 32,
                                                 sequence: 0x7FFF_FFFF, flags: Self.ackPSHFIN | 0x80))
        XCTAssertEqual(payload, data)
    }

    func testTCPv6WithDestinationOptions() throws {
        let data = Self.payload(3000)
        let frame = Self.tcp6Frame(payload: data, extensions: [.destinationOptions(length: 16)])
        let header = VirtioNetHeader(flags: 1, gsoType: 4, headerLength: 90, gsoSize: 1400, csumStart: 70, csumOffset: 16)
        let (result, output) = Self.layOut(frame, header)
        let layout = try XCTUnwrap(result)
        XCTAssertEqual(layout.count, 3)
        let payload = verifySegments(layout, output, original: frame, mss: 1400,
                                     Expectation(v6: true, ipHeaderLength: 56, tcpHeaderLength: 20, sequence: 7, flags: Self.ackPSHFIN))
        XCTAssertEqual(payload, data)
    }

    func testGSOFrameThatFitsOneSegmentBecomesOnePacket() throws {
        let data = Self.payload(700)
        // The TCP checksum field holds garbage: the segmenter computes it in full.
        let frame = Self.tcp4Frame(payload: data, sequence: 5, flags: 0x18)
        let header = VirtioNetHeader(flags: 1, gsoType: 1, headerLength: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16)
        let (result, output) = Self.layOut(frame, header)
        let layout = try XCTUnwrap(result)
        XCTAssertEqual(layout, SegmentLayout(count: 1, stride: 8 + 54 + 700, length: 8 + 54 + 700, lastLength: 8 + 54 + 700))
        let payload = verifySegments(layout, output, original: frame, mss: 1448,
                                     Expectation(v6: false, ipHeaderLength: 20, tcpHeaderLength: 20, sequence: 5, flags: 0x18))
        XCTAssertEqual(payload, data)
    }

    func testExactMultipleOfTheSegmentSizeAndEthernetPaddingDropped() throws {
        let data = Self.payload(2 * 1448)
        let frame = Self.tcp4Frame(payload: data) + [0xFF, 0xFF, 0xFF, 0xFF]  // trailing bytes past the IP packet
        let header = VirtioNetHeader(flags: 1, gsoType: 1, headerLength: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16)
        let (result, output) = Self.layOut(frame, header)
        let layout = try XCTUnwrap(result)
        XCTAssertEqual(layout.count, 2)
        XCTAssertEqual(layout.lastLength, layout.length)
        let payload = verifySegments(layout, output, original: frame, mss: 1448,
                                     Expectation(v6: false, ipHeaderLength: 20, tcpHeaderLength: 20,
                                                 sequence: 0xFFFF_F000, flags: Self.ackPSHFIN))
        XCTAssertEqual(payload, data)
    }

    /// A UDP datagram with NEEDS_CSUM: the field holds the pseudo-header sum as Linux leaves it.
    func testNeedsChecksumUDPIsCompleted() throws {
        for v6 in [false, true] {
            let data = Self.payload(333)
            let udp = FrameBuilder.udp(sourcePort: 40_000, destinationPort: 53, payload: data)
            let packet = v6
                ? FrameBuilder.ipv6(source: IPv6Address("fd00::1")!, destination: IPv6Address("fd00::2")!, next: 17, payload: udp)
                : FrameBuilder.ipv4(source: IPv4Address("10.0.0.1")!, destination: IPv4Address("10.0.0.2")!, protocol: 17, payload: udp)
            var frame = FrameBuilder.ethernet(destination: Self.destination, source: Self.source,
                                              type: v6 ? 0x86DD : 0x0800, payload: packet)
            let transport = v6 ? 54 : 34
            let partial = ReferenceChecksum.pseudo(frame, ip: 14, proto: 17, length: udp.count)
            frame[transport + 6] = UInt8(partial >> 8)
            frame[transport + 7] = UInt8(truncatingIfNeeded: partial)
            let header = VirtioNetHeader(flags: 1, csumStart: UInt16(transport), csumOffset: 6)
            let (result, output) = Self.layOut(frame, header)
            let layout = try XCTUnwrap(result)
            let length = Self.headroom + frame.count
            XCTAssertEqual(layout, SegmentLayout(count: 1, stride: length, length: length, lastLength: length))
            XCTAssertEqual(Array(output[0..<Self.headroom]), [UInt8](repeating: 0, count: Self.headroom))
            let wire = Array(output[Self.headroom..<length])
            let checksum = UInt16(wire[transport + 6]) << 8 | UInt16(wire[transport + 7])
            XCTAssertNotEqual(checksum, 0)
            XCTAssertEqual(ReferenceChecksum.verify(wire[transport...], initial: partial), 0, "UDP checksum (v6: \(v6))")
            // Only the checksum changed.
            XCTAssertEqual(Array(wire[..<(transport + 6)]) + Array(wire[(transport + 8)...]),
                           Array(frame[..<(transport + 6)]) + Array(frame[(transport + 8)...]))
            XCTAssertEqual(output[length], 0xA5)
        }
    }

    func testPlainFrameIsCopiedAsIs() throws {
        let frame = FrameBuilder.ethernet(destination: .broadcast, source: Self.source, type: 0x0806,
                                          payload: FrameBuilder.arp(senderMAC: Self.source, senderIP: IPv4Address("10.0.0.1")!,
                                                                    targetIP: IPv4Address("10.0.0.2")!))
        for headroom in [0, 8, 16] {
            let (result, output) = Self.layOut(frame, VirtioNetHeader(), headroom: headroom)
            let layout = try XCTUnwrap(result)
            XCTAssertEqual(layout, SegmentLayout(count: 1, stride: headroom + 42, length: headroom + 42, lastLength: headroom + 42))
            XCTAssertEqual(Array(output[0..<headroom]), [UInt8](repeating: 0, count: headroom))
            XCTAssertEqual(Array(output[headroom..<(headroom + 42)]), frame)
            XCTAssertEqual(output[headroom + 42], 0xA5)
        }
    }

    func testRefusesWhatItCannotDoSafely() {
        let tcp4 = Self.tcp4Frame(payload: Self.payload(4000))
        let tcp6 = Self.tcp6Frame(payload: Self.payload(4000))
        let tso4 = VirtioNetHeader(flags: 1, gsoType: 1, headerLength: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16)
        let udp = Fixture.udp4(payload: Self.payload(3000))
        var cases: [(String, [UInt8], VirtioNetHeader, Int)] = [
            ("UFO", udp, VirtioNetHeader(flags: 1, gsoType: 3, headerLength: 42, gsoSize: 1400, csumStart: 34, csumOffset: 6), 200_000),
            ("USO", udp, VirtioNetHeader(flags: 1, gsoType: 5, headerLength: 42, gsoSize: 1400, csumStart: 34, csumOffset: 6), 200_000),
            ("undefined GSO type", tcp4, VirtioNetHeader(flags: 1, gsoType: 2, headerLength: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16), 200_000),
            ("TCPV4 on IPv6", tcp6, VirtioNetHeader(flags: 1, gsoType: 1, headerLength: 74, gsoSize: 1448, csumStart: 54, csumOffset: 16), 200_000),
            ("TCPV6 on IPv4", tcp4, VirtioNetHeader(flags: 1, gsoType: 4, headerLength: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16), 200_000),
            ("TCPV4 on UDP", udp, VirtioNetHeader(flags: 1, gsoType: 1, headerLength: 42, gsoSize: 1400, csumStart: 34, csumOffset: 6), 200_000),
            ("GSO without NEEDS_CSUM", tcp4, VirtioNetHeader(gsoType: 1, headerLength: 54, gsoSize: 1448), 200_000),
            ("GSO without a size", tcp4, VirtioNetHeader(flags: 1, gsoType: 1, headerLength: 54, csumStart: 34, csumOffset: 16), 200_000),
            ("checksum at the ports", udp, VirtioNetHeader(flags: 1, csumStart: 34, csumOffset: 0), 200_000),
            ("checksum start in the IP header", udp, VirtioNetHeader(flags: 1, csumStart: 20, csumOffset: 6), 200_000),
            ("checksum past the frame", udp, VirtioNetHeader(flags: 1, csumStart: 34, csumOffset: 6000), 200_000),
            ("output too small for the segments", tcp4, tso4, 2 * (8 + 54 + 1448) + 8 + 54 + 4000 - 2 * 1448 - 1),
            ("output too small for a copy", udp, VirtioNetHeader(), udp.count + Self.headroom - 1),
            ("shorter than an Ethernet header", Array(udp[0..<13]), VirtioNetHeader(), 200_000),
            ("truncated TCP header", Array(tcp4[0..<50]), tso4, 200_000),
            ("IPv4 length past the frame", Array(tcp4[0..<1000]), tso4, 200_000),
            ("routing header", Self.tcp6Frame(payload: Self.payload(4000), extensions: [.routing()]),
             VirtioNetHeader(flags: 1, gsoType: 4, headerLength: 82, gsoSize: 1400, csumStart: 62, csumOffset: 16), 200_000),
        ]
        var fragment = tcp4
        fragment[14 + 6] = 0x20  // more fragments
        cases.append(("fragment", fragment, tso4, 200_000))
        for (name, frame, header, capacity) in cases {
            let (layout, output) = Self.layOut(frame, header, capacity: capacity)
            XCTAssertNil(layout, name)
            _ = output
        }
        // The output exactly big enough is fine.
        XCTAssertNotNil(Self.layOut(tcp4, tso4, capacity: 2 * (8 + 54 + 1448) + 8 + 54 + 4000 - 2 * 1448).0)
    }

    func testRefusesOverlappingOutput() {
        var buffer = Self.tcp4Frame(payload: Self.payload(100)) + [UInt8](repeating: 0, count: 1000)
        let length = buffer.count - 1000
        buffer.withUnsafeMutableBytes { raw in
            let frame = UnsafeRawBufferPointer(rebasing: raw[0..<length])
            XCTAssertNil(Segmentation.layOut(frame: frame, header: VirtioNetHeader(), headroom: 8,
                                             into: UnsafeMutableRawBufferPointer(rebasing: raw[10...])))
            XCTAssertNotNil(Segmentation.layOut(frame: frame, header: VirtioNetHeader(), headroom: 8,
                                                into: UnsafeMutableRawBufferPointer(rebasing: raw[length...])))
        }
    }

    func testChecksumMatchesRFC1071AndTheReference() {
        // RFC 1071 section 3's example: the sum of 00 01 f2 03 f4 f5 f6 f7 is ddf2.
        let example: [UInt8] = [0x00, 0x01, 0xF2, 0x03, 0xF4, 0xF5, 0xF6, 0xF7]
        XCTAssertEqual(example.withUnsafeBytes { Segmentation.sum($0) }, 0xDDF2)
        XCTAssertEqual(example.withUnsafeBytes { Segmentation.checksum($0) }, 0x220D)
        var generator = SystemRandomNumberGenerator()
        for length in Array(0...40) + [1499, 1500, 9001, 65_535] {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let initial = UInt32.random(in: 0...UInt32.max, using: &generator)
            let expected = ~UInt16(ReferenceChecksum.sum(bytes[...], initial: initial))
            XCTAssertEqual(bytes.withUnsafeBytes { Segmentation.checksum($0, initial: initial) }, expected, "length \(length)")
            XCTAssertEqual(bytes.withUnsafeBytes { Segmentation.checksum($0) }, ~UInt16(ReferenceChecksum.sum(bytes[...])))
        }
        // All ones sums to 0xFFFF, whose complement is zero; so does a buffer holding its own checksum.
        let ones = [UInt8](repeating: 0xFF, count: 64)
        XCTAssertEqual(ones.withUnsafeBytes { Segmentation.checksum($0) }, 0)
    }

    /// Cross-checks segments with scapy, an independent packet library, when it is installed.
    func testScapyAgreesWithTheSegments() throws {
        let script = """
        import sys
        try:
            from scapy.all import Ether, IP, IPv6, TCP
        except ImportError:
            sys.exit(77)
        for line in sys.stdin:
            packet = Ether(bytes.fromhex(line.strip()))
            copy = Ether(bytes(packet))
            layer = IP if IP in copy else IPv6
            if layer is IP:
                del copy[IP].chksum
                del copy[IP].len
            else:
                del copy[IPv6].plen
            del copy[TCP].chksum
            rebuilt = Ether(bytes(copy))
            if bytes(rebuilt) != bytes(packet):
                print("mismatch:", packet.summary(), bytes(rebuilt).hex(), bytes(packet).hex())
                sys.exit(1)
            print("ok", packet.summary(), hex(packet[TCP].seq), packet[TCP].flags, len(packet[TCP].payload))
        """
        var lines = ""
        for v6 in [false, true] {
            let frame = v6 ? Self.tcp6Frame(payload: Self.payload(4000), flags: Self.ackPSHFIN | 0x80)
                           : Self.tcp4Frame(payload: Self.payload(4000), flags: Self.ackPSHFIN | 0x80)
            let header = VirtioNetHeader(flags: 1, gsoType: v6 ? 0x84 : 0x81, headerLength: v6 ? 74 : 54, gsoSize: 1448,
                                         csumStart: v6 ? 54 : 34, csumOffset: 16)
            let (result, output) = Self.layOut(frame, header)
            let layout = try XCTUnwrap(result)
            for index in 0..<layout.count {
                let start = index * layout.stride + Self.headroom
                let end = index * layout.stride + (index == layout.count - 1 ? layout.lastLength : layout.length)
                lines += output[start..<end].map { String(format: "%02x", $0) }.joined() + "\n"
            }
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script]
        let input = Pipe(), outputPipe = Pipe()
        process.standardInput = input
        process.standardOutput = outputPipe
        do { try process.run() } catch { throw XCTSkip("python3 is not available: \(error)") }
        input.fileHandleForWriting.write(Data(lines.utf8))
        try input.fileHandleForWriting.close()
        let text = String(decoding: outputPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        if process.terminationStatus == 77 { throw XCTSkip("scapy is not installed (pip install scapy)") }
        XCTAssertEqual(process.terminationStatus, 0, text)
        XCTAssertEqual(text.split(separator: "\n").filter { $0.hasPrefix("ok ") }.count, 6, text)
    }
}
