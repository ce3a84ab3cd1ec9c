import Virtio

/// Where `Segmentation.layOut` put the packets of one frame: `count` packets, packet `i` at
/// `i * stride` in the output, every one `length` bytes long but the last, which is `lastLength`.
/// `length == stride`, so the packets are back to back: one buffer of
/// `(count - 1) * stride + lastLength` bytes that a UDP_SEGMENT send with a segment size of
/// `stride` cuts into exactly these packets.
public struct SegmentLayout: Sendable, Equatable {
    /// Number of packets written; each starts at `index * stride` in the output.
    public var count: Int
    public var stride: Int
    /// Bytes of every packet but the last (headroom included), and of the last one.
    public var length: Int
    public var lastLength: Int

    public init(count: Int, stride: Int, length: Int, lastLength: Int) {
        self.count = count
        self.stride = stride
        self.length = length
        self.lastLength = lastLength
    }

    /// Bytes from the first packet's start to the last one's end.
    public var totalLength: Int { (count - 1) * stride + lastLength }

    /// How many packets one UDP_SEGMENT send may carry (at least 1). Linux refuses a send whose
    /// datagram exceeds 65507 bytes over IPv4 (65535 less the IP and UDP headers), and one of more
    /// than UDP_MAX_SEGMENTS packets (64, raised to 128 in recent kernels): a 64 KiB TSO
    /// frame with a 1448-byte MSS is 46 packets of 1510 bytes with the VXLAN header, 69 KiB, so
    /// it takes two sends.
    public func packetsPerSend(maximumBytes: Int = 65_507, maximumSegments: Int = 64) -> Int {
        guard stride > 0 else { return 1 }
        return max(1, min(count, maximumSegments, maximumBytes / stride))
    }
}

/// Turns a frame with a virtio-net offload header into the frames a wire carries: what a NIC does
/// with TSO and checksum offload, done in software for a port (the VXLAN uplink) that sends plain
/// packets. Pure and bounds-checked: the frame and its header are a tenant's.
public enum Segmentation {
    /// TCP header flags a segmenter touches.
    static let tcpFIN: UInt8 = 0x01
    static let tcpPSH: UInt8 = 0x08
    static let tcpCWR: UInt8 = 0x80

    /// Lays out the wire frames that `frame` (Ethernet frame, no virtio-net header) with its
    /// virtio-net `header` stands for, each preceded by `headroom` zero bytes (room for the VXLAN
    /// header), back to back at a fixed stride in `output`:
    /// - GSO TCPv4/TCPv6 (TSO, ECN bit handled): cut into `gso_size` payload segments; per segment
    ///   fix IPv4 total length, id (+1 per segment), header checksum; IPv6 payload length; TCP
    ///   sequence; FIN/PSH only on the last, CWR only on the first; full TCP checksum.
    /// - NEEDS_CSUM without GSO: the checksum at csum_start/csum_offset completed (one packet).
    /// - Neither: copied as is (one packet).
    /// Returns nil for anything it cannot do safely (malformed, UDP GSO/USO, too big for
    /// `output`); the caller counts a drop. `output` must not overlap `frame`.
    /// The equal-size layout lets the caller send all packets in one sendmsg with UDP_SEGMENT.
    ///
    /// The header must describe the frame as `OffloadCheck` requires (a GSO type that matches the
    /// parsed IP version and TCP, a partial checksum at the parsed TCP or UDP checksum field);
    /// `hdr_len` is not used: the headers copied into each segment are the parsed ones. A GSO
    /// frame whose payload fits one segment becomes one packet. A frame shorter than an Ethernet
    /// header, or longer than the largest GSO frame (65550 bytes), is refused. Trailing Ethernet
    /// padding is not carried into segments. The TCP checksum of a segment is computed in full
    /// from the segment's own pseudo-header, never adjusted from the tenant's partial sum.
    public static func layOut(frame: UnsafeRawBufferPointer, header: VirtioNetHeader, headroom: Int,
                              into output: UnsafeMutableRawBufferPointer) -> SegmentLayout? {
        guard headroom >= 0, headroom <= Wire.maxGSOFrameLength,
              frame.count >= Wire.ethernetHeaderLength, frame.count <= Wire.maxGSOFrameLength,
              let frameStart = frame.baseAddress, let outputStart = output.baseAddress,
              header.isConsistent(frameLength: frame.count)
        else { return nil }
        // Disjoint memory, or the copies below would read what they just wrote.
        let frameAddress = UInt(bitPattern: frameStart), outputAddress = UInt(bitPattern: outputStart)
        guard frameAddress &+ UInt(frame.count) <= outputAddress || outputAddress &+ UInt(output.count) <= frameAddress
        else { return nil }

        let needsChecksum = header.flags & VirtioNetHeader.flagNeedsCsum != 0
        switch header.gso {
        case .none?:
            return needsChecksum ? completeChecksum(frame, header, headroom: headroom, into: output)
                                 : copy(frame, headroom: headroom, into: output)
        case .tcpv4?, .tcpv6?:
            return segmentTCP(frame, header, headroom: headroom, into: output)
        case .udp?, .udpL4?, nil:
            return nil
        }
    }

    /// One packet: the frame as it is.
    static func copy(_ frame: UnsafeRawBufferPointer, headroom: Int, into output: UnsafeMutableRawBufferPointer)
        -> SegmentLayout? {
        let length = headroom + frame.count
        guard length <= output.count, let target = output.baseAddress else { return nil }
        target.initializeMemory(as: UInt8.self, repeating: 0, count: headroom)
        if let source = frame.baseAddress { (target + headroom).copyMemory(from: source, byteCount: frame.count) }
        return SegmentLayout(count: 1, stride: length, length: length, lastLength: length)
    }

    /// One packet: the frame with its partial checksum completed, as a NIC does for NEEDS_CSUM.
    static func completeChecksum(_ frame: UnsafeRawBufferPointer, _ header: VirtioNetHeader, headroom: Int,
                                 into output: UnsafeMutableRawBufferPointer) -> SegmentLayout? {
        // Only the TCP or UDP checksum of a whole IP packet: the field the switch checked.
        var parsed = ParsedFrame()
        guard FrameParser.parse(FrameBytes(frame), isGSO: false, into: &parsed) == nil,
              OffloadCheck.checkGSOType(header, &parsed) == nil,
              OffloadCheck.checkChecksum(header, &parsed) == nil,
              let layout = copy(frame, headroom: headroom, into: output)
        else { return nil }
        let start = headroom + Int(header.csumStart)
        let field = start + Int(header.csumOffset)
        let end = headroom + parsed.packetEnd
        // checkChecksum placed csum_start at the transport header, which holds the field.
        guard field + 2 <= end else { return nil }
        // The field holds the pseudo-header sum (that is what NEEDS_CSUM means); it is summed along.
        var value = checksum(UnsafeRawBufferPointer(rebasing: output[start..<end]))
        // A computed zero goes out as all ones: UDP's "no checksum" is zero, and TCP takes either.
        if value == 0 { value = 0xFFFF }
        storeBE16(value, output, field)
        return layout
    }

    /// TSO in software: `count` segments of `gso_size` payload bytes (the last one shorter), each
    /// with a copy of the frame's Ethernet, IP (with options or extension headers) and TCP headers
    /// (with options), fixed up for its place in the stream.
    static func segmentTCP(_ frame: UnsafeRawBufferPointer, _ header: VirtioNetHeader, headroom: Int,
                           into output: UnsafeMutableRawBufferPointer) -> SegmentLayout? {
        let bytes = FrameBytes(frame)
        var parsed = ParsedFrame()
        guard FrameParser.parse(bytes, isGSO: true, into: &parsed) == nil,
              OffloadCheck.checkGSOType(header, &parsed) == nil,
              parsed.proto == Wire.protoTCP, parsed.transportHeaderLength >= 20
        else { return nil }
        let ip = Wire.ethernetHeaderLength
        let tcp = parsed.transportOffset
        let headers = tcp + parsed.transportHeaderLength
        let payloadLength = parsed.packetEnd - headers
        let isIPv4 = parsed.layer == .ipv4
        guard payloadLength >= 0, let flags = bytes.u8(tcp + 13), let sequence = bytes.u32(tcp + 4),
              isIPv4 || !hasRoutingHeader(bytes, end: tcp),
              let source = frame.baseAddress, let target = output.baseAddress
        else { return nil }

        let segmentSize = Int(header.gsoSize)  // non-zero: isConsistent checked it
        let count = max(1, (payloadLength + segmentSize - 1) / segmentSize)
        let stride = headroom + headers + min(segmentSize, payloadLength)
        let lastPayload = payloadLength - (count - 1) * segmentSize
        let lastLength = headroom + headers + lastPayload
        // count * stride is at most 65536 * 196622: no overflow on 64 bits.
        guard (count - 1) * stride + lastLength <= output.count else { return nil }

        let identification = isIPv4 ? (bytes.u16(ip + 4) ?? 0) : 0
        let ipHeaderLength = isIPv4 ? tcp - ip : 40
        for index in 0..<count {
            let packet = index * stride
            let chunk = index == count - 1 ? lastPayload : segmentSize
            let segment = target + packet
            segment.initializeMemory(as: UInt8.self, repeating: 0, count: headroom)
            (segment + headroom).copyMemory(from: source, byteCount: headers)
            (segment + headroom + headers).copyMemory(from: source + headers + index * segmentSize, byteCount: chunk)

            let frameStart = packet + headroom
            let ipStart = frameStart + ip
            let tcpStart = frameStart + tcp
            let tcpLength = parsed.transportHeaderLength + chunk
            if isIPv4 {
                storeBE16(UInt16(truncatingIfNeeded: tcp - ip + tcpLength), output, ipStart + 2)
                storeBE16(identification &+ UInt16(truncatingIfNeeded: index), output, ipStart + 4)
                storeBE16(0, output, ipStart + 10)
                let ipChecksum = checksum(UnsafeRawBufferPointer(rebasing: output[ipStart..<(ipStart + ipHeaderLength)]))
                storeBE16(ipChecksum, output, ipStart + 10)
            } else {
                // Payload length: extension headers, TCP header and data.
                storeBE16(UInt16(truncatingIfNeeded: tcp - ip - 40 + tcpLength), output, ipStart + 4)
            }
            storeBE32(sequence &+ UInt32(truncatingIfNeeded: index &* segmentSize), output, tcpStart + 4)
            var segmentFlags = flags
            if index != count - 1 { segmentFlags &= ~(tcpFIN | tcpPSH) }
            if index != 0 { segmentFlags &= ~tcpCWR }
            output[tcpStart + 13] = segmentFlags
            storeBE16(0, output, tcpStart + 16)
            let pseudo = pseudoHeaderSum(output, ipStart: ipStart, isIPv4: isIPv4, upperLength: tcpLength)
            let tcpChecksum = checksum(UnsafeRawBufferPointer(rebasing: output[tcpStart..<(tcpStart + tcpLength)]),
                                       initial: pseudo)
            storeBE16(tcpChecksum, output, tcpStart + 16)
        }
        return SegmentLayout(count: count, stride: stride, length: stride, lastLength: lastLength)
    }

    /// Whether the IPv6 extension headers before `end` hold a routing header: the TCP pseudo-header
    /// would then take its final destination, not the IPv6 header's. No stack sends TSO that way,
    /// so such a frame is refused rather than given wrong checksums. The parser validated the chain.
    static func hasRoutingHeader(_ bytes: FrameBytes, end: Int) -> Bool {
        let ip = Wire.ethernetHeaderLength
        guard var next = bytes.u8(ip + 6) else { return true }
        var offset = ip + 40
        while offset < end {
            if next == Wire.ipv6Routing { return true }
            guard let following = bytes.u8(offset), let units = bytes.u8(offset + 1) else { return true }
            // A fragment header's second byte is reserved, not a length.
            offset += next == Wire.ipv6Fragment ? 8 : (Int(units) + 1) * 8
            next = following
        }
        return false
    }

    /// The partial sum (not complemented) of the TCP/UDP pseudo-header of the IP packet at
    /// `ipStart` in `packet`, whose upper-layer packet is `upperLength` bytes.
    static func pseudoHeaderSum(_ packet: UnsafeMutableRawBufferPointer, ipStart: Int, isIPv4: Bool,
                                upperLength: Int) -> UInt32 {
        let addresses = isIPv4 ? UnsafeRawBufferPointer(rebasing: packet[(ipStart + 12)..<(ipStart + 20)])
                               : UnsafeRawBufferPointer(rebasing: packet[(ipStart + 8)..<(ipStart + 40)])
        return sum(addresses, initial: UInt32(Wire.protoTCP) + UInt32(truncatingIfNeeded: upperLength))
    }

    /// The Internet checksum (RFC 1071) of `bytes` folded with `initial` (a partial sum).
    ///
    /// The result is the value to store in the packet's checksum field as a big-endian number:
    /// the complement of the 16-bit one's complement sum of `bytes` (big-endian 16-bit words, an
    /// odd last byte padded with zero) and `initial`. Over a packet whose checksum is correct it
    /// is zero.
    public static func checksum(_ bytes: UnsafeRawBufferPointer, initial: UInt32 = 0) -> UInt16 {
        ~UInt16(truncatingIfNeeded: sum(bytes, initial: initial))
    }

    /// The one's complement sum of `bytes` and `initial`, folded to 16 bits (a big-endian value).
    public static func sum(_ bytes: UnsafeRawBufferPointer, initial: UInt32 = 0) -> UInt32 {
        // Sums native-order 64-bit words with end-around carry: the one's complement sum does not
        // depend on byte order (RFC 1071 2.B), so the folded result is only swapped at the end.
        var total: UInt64 = 0
        var offset = 0
        let count = bytes.count
        while offset + 8 <= count {
            let (value, carry) = total.addingReportingOverflow(bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
            total = value &+ (carry ? 1 : 0)
            offset += 8
        }
        var tail: UInt64 = 0
        while offset + 2 <= count {
            tail &+= UInt64(bytes.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
            offset += 2
        }
        // An odd last byte is the high (first) byte of a word padded with zero.
        if offset < count { tail &+= UInt64(UInt16(bigEndian: UInt16(bytes[offset]) << 8)) }
        let (value, carry) = total.addingReportingOverflow(tail)
        total = value &+ (carry ? 1 : 0)
        let native = fold(total)
        return UInt32(fold(UInt64(UInt16(bigEndian: native)) &+ UInt64(initial)))
    }

    /// Folds a one's complement sum to 16 bits.
    @inline(__always)
    static func fold(_ value: UInt64) -> UInt16 {
        var v = (value & 0xFFFF_FFFF) &+ (value >> 32)
        v = (v & 0xFFFF) &+ (v >> 16)
        v = (v & 0xFFFF) &+ (v >> 16)
        v = (v & 0xFFFF) &+ (v >> 16)
        return UInt16(truncatingIfNeeded: v)
    }

    @inline(__always)
    static func storeBE16(_ value: UInt16, _ buffer: UnsafeMutableRawBufferPointer, _ offset: Int) {
        buffer.storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt16.self)
    }

    @inline(__always)
    static func storeBE32(_ value: UInt32, _ buffer: UnsafeMutableRawBufferPointer, _ offset: Int) {
        buffer.storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt32.self)
    }
}
