import Virtio

/// Checks a tenant's virtio-net offload header against the headers the parser found in its frame,
/// and cleans the header before it goes out to another port.
///
/// The header is the tenant's word, not the frame's: it travels with the frame to the egress port,
/// whose kernel (or guest driver) acts on it. A receiver that forwards the frame onwards completes
/// a partial checksum at `csum_start + csum_offset` and segments a GSO super-frame with its own
/// parse of the headers, so a header that points elsewhere than the parsed transport header lets a
/// tenant rewrite bytes the switch has already decided on (a checksum written over the ports after
/// the ACL allowed them; segments cut from a UDP datagram as if it were TCP). A receiver that
/// trusts `hdr_len` copies that many bytes as the headers of every segment. Linux checks some of
/// this in `virtio_net_hdr_to_skb`; a guest driver need not, and other receivers differ, so the
/// switch requires the header to describe exactly the frame it parsed.
///
/// What is required (each failure is its own `DropReason`):
/// - GSO type (`offload-gso-mismatch`): TCPV4 only on IPv4 + TCP, TCPV6 only on IPv6 + TCP,
///   UDP_L4 (USO) only on UDP; never on a fragment. UDP (UFO) is always dropped: no port offers it
///   (TAP ports are opened without TUN_F_UFO and Linux stopped producing it in 4.14; it would have
///   the receiver fragment the datagram). The ECN bit only with TCPV4 or TCPV6 (Linux refuses it
///   elsewhere too).
/// - Partial checksum (`offload-csum-mismatch`): with NEEDS_CSUM, `csum_start` is the parsed
///   transport header's offset and `csum_offset` is the checksum field's (TCP 16, UDP 6), in a
///   packet that is not a fragment (a fragment's checksum covers bytes it does not hold; Linux
///   completes the checksum before it fragments). ICMP, ICMPv6 and every other protocol are
///   refused: their checksums are computed in software by every stack we know (Linux's ICMP and
///   ping sockets never leave them partial), so such a header has no legitimate sender.
/// - Segment size (`offload-gso-size`): one segment (IP and transport headers plus `gso_size`)
///   must fit the segment's MTU; TCP's `gso_size` is at least 88 bytes (Linux's TCP_MIN_MSS, the
///   smallest MSS a Linux socket may ask for; below it a 64 KiB frame would become over 700
///   segments at the receiver); a UDP_L4 frame is at most 128 segments (Linux's UDP_MAX_SEGMENTS,
///   which `virtio_net_hdr_to_skb` enforces too). A GSO frame whose payload fits one segment is
///   allowed: Linux treats it as a plain frame, and by the MTU rule above it is no larger than one.
/// - Header length (`offload-hdr-len`): `hdr_len` never exceeds the frame (a receiving Linux TAP
///   refuses such a write, which would count against the receiving port), and in a GSO frame it
///   covers at least the Ethernet, IP and transport headers with their options. Linux sends its
///   linear head length there, which holds those headers for everything its stack builds (it
///   pulls them in before a GSO frame reaches the TAP: a packet socket asking for less gets a head
///   of the full headers); a frame with less would have receivers that trust the field copy a
///   truncated header into every segment. A Linux tenant can put less there when it routes
///   GRO-merged packets from a NIC whose driver left the headers in page fragments out of its
///   port: such frames are dropped, and counted, rather than trusted.
///
/// Checked before this (by `VirtioNetHeader.isConsistent`, counted as `malformed-vnet-header`): a
/// GSO type the specification does not define, a GSO frame with no segment size or without
/// NEEDS_CSUM, and checksum offsets past the frame.
public enum OffloadCheck {
    /// The smallest TCP `gso_size` accepted: Linux's TCP_MIN_MSS.
    static let minimumTCPSegmentSize = 88
    /// The most segments one UDP_L4 frame may become: Linux's UDP_MAX_SEGMENTS.
    static let maximumUDPSegments = 128
    /// Where the checksum field lies in a TCP and in a UDP header.
    static let tcpChecksumOffset: UInt16 = 16
    static let udpChecksumOffset: UInt16 = 6

    /// The drop reason for a header that does not describe `parsed`, a frame of `frameLength`
    /// bytes on a segment whose MTU is `mtu`; nil when it does.
    @inline(__always)
    static func check(_ header: VirtioNetHeader, _ parsed: inout ParsedFrame, frameLength: Int, mtu: Int) -> DropReason? {
        // The common case: a plain frame with no offload asked for.
        if header.gsoType == 0 && header.flags & VirtioNetHeader.flagNeedsCsum == 0 && header.headerLength == 0 {
            return nil
        }
        if let reason = checkGSOType(header, &parsed) { return reason }
        if header.flags & VirtioNetHeader.flagNeedsCsum != 0, let reason = checkChecksum(header, &parsed) {
            return reason
        }
        if header.isGSO, let reason = checkSegmentSize(header, &parsed, frameLength: frameLength, mtu: mtu) {
            return reason
        }
        return checkHeaderLength(header, &parsed, frameLength: frameLength)
    }

    static func checkGSOType(_ header: VirtioNetHeader, _ parsed: inout ParsedFrame) -> DropReason? {
        let ecn = header.gsoType & VirtioNetHeader.gsoECN != 0
        switch header.gso {
        case VirtioNetHeader.GSOType.none?:
            return ecn ? .offloadGSOMismatch : nil
        case .tcpv4?:
            guard parsed.layer == .ipv4, parsed.proto == Wire.protoTCP else { return .offloadGSOMismatch }
        case .tcpv6?:
            guard parsed.layer == .ipv6, parsed.proto == Wire.protoTCP else { return .offloadGSOMismatch }
        case .udpL4?:
            guard parsed.isIP, parsed.proto == Wire.protoUDP, !ecn else { return .offloadGSOMismatch }
        case .udp?, nil:
            return .offloadGSOMismatch
        }
        // Segments are cut from a whole transport packet, never from a fragment of one.
        guard parsed.hasTransportHeader, !parsed.isFragment else { return .offloadGSOMismatch }
        return nil
    }

    static func checkChecksum(_ header: VirtioNetHeader, _ parsed: inout ParsedFrame) -> DropReason? {
        guard parsed.isIP, parsed.hasTransportHeader, !parsed.isFragment,
              Int(header.csumStart) == parsed.transportOffset
        else { return .offloadChecksumMismatch }
        switch parsed.proto {
        case Wire.protoTCP: return header.csumOffset == tcpChecksumOffset ? nil : .offloadChecksumMismatch
        case Wire.protoUDP: return header.csumOffset == udpChecksumOffset ? nil : .offloadChecksumMismatch
        default: return .offloadChecksumMismatch
        }
    }

    /// Called for GSO frames that passed `checkGSOType`: a parsed TCP or UDP header is present.
    static func checkSegmentSize(_ header: VirtioNetHeader, _ parsed: inout ParsedFrame, frameLength: Int,
                                 mtu: Int) -> DropReason? {
        let size = Int(header.gsoSize)
        let headers = parsed.transportOffset + parsed.transportHeaderLength  // Ethernet included
        // Every operand is at most 65550 (the frame's length bounds the offsets, the MTU is clamped).
        guard headers - Wire.ethernetHeaderLength + size <= mtu else { return .offloadGSOSize }
        if parsed.proto == Wire.protoTCP {
            guard size >= minimumTCPSegmentSize else { return .offloadGSOSize }
        } else {
            let payload = max(0, frameLength - headers)
            guard payload <= size * maximumUDPSegments else { return .offloadGSOSize }
        }
        return nil
    }

    static func checkHeaderLength(_ header: VirtioNetHeader, _ parsed: inout ParsedFrame, frameLength: Int) -> DropReason? {
        let length = Int(header.headerLength)
        guard length <= frameLength else { return .offloadHeaderLength }
        if header.isGSO && length < parsed.transportOffset + parsed.transportHeaderLength {
            return .offloadHeaderLength
        }
        return nil
    }

    /// Makes a forwarded frame's virtio-net header (the first 12 bytes of `header`) carry nothing
    /// but what the switch checked: the flags keep NEEDS_CSUM alone, so a tenant's "checksum
    /// already valid" claim (DATA_VALID, which a receiving guest driver takes as verified) and
    /// RSC_INFO or undefined bits never reach another port, and `num_buffers` (set by whoever
    /// fills receive buffers, meaningless on transmit) is zeroed. Call it on the buffer before
    /// writing it to any egress port. Traps if `header` holds fewer than 12 bytes.
    @inlinable
    public static func sanitizeForEgress(header: UnsafeMutableRawBufferPointer) {
        precondition(header.count >= VirtioNetHeader.size)
        header[0] &= VirtioNetHeader.flagNeedsCsum
        header[10] = 0
        header[11] = 0
    }
}
