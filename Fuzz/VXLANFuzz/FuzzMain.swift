// libFuzzer target for the VXLAN uplink's frame helpers: `Segmentation.layOut`,
// `NeighborResponder.answer` and `VXLAN.vni(of:)`.
//
// Input: byte 0 sizes the output buffers (bit 7 set: little more than the frame, which makes
// "too big for the output" common; clear: four times the frame plus 4 KiB; bits 0-6: the reply
// buffer's size), bytes 1...12 are the virtio-net header,
// byte 13 is the headroom (0...31), the rest is the Ethernet frame. The output buffers are
// allocated at their exact size, so ASan reports any write past them; besides that it checks:
// - layOut: a layout is non-empty, fits the output, has `length == stride` and a last packet no
//   longer; every packet starts with zeroed headroom; nothing past the layout is written; a plain
//   frame comes out as it went in; a completed checksum verifies; TSO segments carry the original
//   headers with consistent IP lengths, a valid IPv4 header checksum, consecutive sequence
//   numbers, a valid TCP checksum, and their payloads put back together are the original payload.
// - answer: a reply fits its buffer and is a 42-byte ARP reply to the asker or an 86-byte
//   neighbour advertisement with hop limit 255 and a valid ICMPv6 checksum.
// - vni(of:): nil exactly when fewer than 8 bytes or the I flag is clear; a 24-bit value that
//   writeHeader writes back.
// Checksums are recomputed here with a separate byte-by-byte implementation.
import Config
import Switch
import Virtio

private let sentinel: UInt8 = 0xA5

/// 16-bit big-endian words one at a time (RFC 1071), independent of `Segmentation.sum`.
private func referenceSum(_ bytes: UnsafeRawBufferPointer, initial: UInt32 = 0) -> UInt32 {
    var total = UInt64(initial)
    var index = 0
    while index < bytes.count {
        let low = index + 1 < bytes.count ? UInt64(bytes[index + 1]) : 0
        total += UInt64(bytes[index]) << 8 | low
        index += 2
    }
    while total > 0xFFFF { total = (total & 0xFFFF) + (total >> 16) }
    return UInt32(total)
}

private func be16(_ bytes: UnsafeRawBufferPointer, _ at: Int) -> Int { Int(bytes[at]) << 8 | Int(bytes[at + 1]) }
private func be32(_ bytes: UnsafeRawBufferPointer, _ at: Int) -> UInt32 {
    UInt32(bytes[at]) << 24 | UInt32(bytes[at + 1]) << 16 | UInt32(bytes[at + 2]) << 8 | UInt32(bytes[at + 3])
}

/// The pseudo-header sum of the IP packet at offset 14 of `frame`.
private func pseudoSum(_ frame: UnsafeRawBufferPointer, v6: Bool, proto: UInt8, length: Int) -> UInt32 {
    let addresses = v6 ? UnsafeRawBufferPointer(rebasing: frame[22..<54]) : UnsafeRawBufferPointer(rebasing: frame[26..<34])
    return referenceSum(addresses, initial: UInt32(proto) + UInt32(length))
}

/// This harness's own parse of a frame `layOut` accepted for TSO: where TCP starts, where the
/// headers end, where the IP packet ends. Nil where it disagrees that the frame is well formed.
private func tcpLayout(_ frame: UnsafeRawBufferPointer) -> (v6: Bool, tcp: Int, headers: Int, end: Int)? {
    guard frame.count >= 54 else { return nil }
    let v6 = be16(frame, 12) == 0x86DD
    var tcp: Int
    let end: Int
    if v6 {
        end = 54 + be16(frame, 18)
        var next = frame[20]
        tcp = 54
        while next != 6 {
            guard tcp + 8 <= end else { return nil }
            let following = frame[tcp]
            tcp += next == 44 ? 8 : (Int(frame[tcp + 1]) + 1) * 8
            next = following
        }
    } else {
        end = 14 + be16(frame, 16)
        tcp = 14 + Int(frame[14] & 0x0F) * 4
    }
    guard tcp + 20 <= end, end <= frame.count else { return nil }
    let headers = tcp + Int(frame[tcp + 12] >> 4) * 4
    guard headers <= end else { return nil }
    return (v6, tcp, headers, end)
}

private func checkLayout(_ layout: SegmentLayout, frame: UnsafeRawBufferPointer, header: VirtioNetHeader,
                         headroom: Int, output: UnsafeRawBufferPointer) {
    precondition(layout.count >= 1, "empty layout")
    precondition(layout.length == layout.stride, "length differs from stride")
    precondition(layout.lastLength <= layout.length && layout.lastLength >= headroom + 14, "last length")
    let total = (layout.count - 1) * layout.stride + layout.lastLength
    precondition(total <= output.count, "layout past the output")
    for index in total..<output.count { precondition(output[index] == sentinel, "byte \(index) past the layout written") }
    for packet in 0..<layout.count {
        for index in 0..<headroom { precondition(output[packet * layout.stride + index] == 0, "headroom not zero") }
    }

    let needsChecksum = header.flags & VirtioNetHeader.flagNeedsCsum != 0
    if !header.isGSO {
        precondition(layout.count == 1 && layout.lastLength == headroom + frame.count, "one packet, the frame's size")
        let wire = UnsafeRawBufferPointer(rebasing: output[headroom..<(headroom + frame.count)])
        let field = Int(header.csumStart) + Int(header.csumOffset)
        for index in 0..<frame.count where !(needsChecksum && (index == field || index == field + 1)) {
            precondition(wire[index] == frame[index], "copied frame differs at \(index)")
        }
        if needsChecksum {
            // The partial sum the tenant left in the field, plus the region with the completed
            // checksum, sums to all ones.
            let v6 = be16(frame, 12) == 0x86DD
            let end = v6 ? 54 + be16(frame, 18) : 14 + be16(frame, 16)
            let partial = UInt32(be16(frame, field))
            let region = UnsafeRawBufferPointer(rebasing: wire[Int(header.csumStart)..<end])
            precondition(~UInt16(referenceSum(region, initial: partial)) == 0, "completed checksum does not verify")
        }
        return
    }

    guard let (v6, tcp, headers, end) = tcpLayout(frame) else { preconditionFailure("layOut segmented a frame the harness cannot parse") }
    let mss = Int(header.gsoSize)
    let payload = end - headers
    precondition(layout.count == max(1, (payload + mss - 1) / mss), "segment count")
    let sequence = be32(frame, tcp + 4)
    var reassembled = 0
    for index in 0..<layout.count {
        let last = index == layout.count - 1
        let start = index * layout.stride + headroom
        let length = (last ? layout.lastLength : layout.length) - headroom
        let wire = UnsafeRawBufferPointer(rebasing: output[start..<(start + length)])
        let chunk = length - headers
        precondition(chunk >= 0 && chunk <= mss && (last || chunk == mss), "segment payload size")
        // Ethernet header and addresses as in the frame; IP lengths describe the segment.
        for at in 0..<14 { precondition(wire[at] == frame[at], "Ethernet header changed") }
        if v6 {
            for at in 22..<tcp { precondition(wire[at] == frame[at], "IPv6 addresses or extension headers changed") }
            precondition(be16(wire, 18) == length - 54, "IPv6 payload length")
        } else {
            for at in 26..<tcp { precondition(wire[at] == frame[at], "IPv4 addresses or options changed") }
            precondition(be16(wire, 16) == length - 14, "IPv4 total length")
            precondition(referenceSum(UnsafeRawBufferPointer(rebasing: wire[14..<tcp])) == 0xFFFF, "IPv4 header checksum")
        }
        precondition(be32(wire, tcp + 4) == sequence &+ UInt32(truncatingIfNeeded: index * mss), "sequence number")
        let tcpLength = length - tcp
        let pseudo = pseudoSum(wire, v6: v6, proto: 6, length: tcpLength)
        precondition(~UInt16(referenceSum(UnsafeRawBufferPointer(rebasing: wire[tcp...]), initial: pseudo)) == 0, "TCP checksum")
        for at in 0..<chunk {
            precondition(wire[headers + at] == frame[headers + reassembled + at], "reassembled payload differs")
        }
        reassembled += chunk
    }
    precondition(reassembled == payload, "reassembled payload length")
}

private func fuzzLayOut(_ frame: UnsafeRawBufferPointer, header: VirtioNetHeader, headroom: Int, small: Bool) {
    // Large enough for most segmentations of a frame, yet small enough to fill and check quickly.
    let capacity = small ? headroom + frame.count + (frame.count & 0xFF) : 4 * (headroom + frame.count) + 4096
    let output = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 16)
    defer { output.deallocate() }
    output.initializeMemory(as: UInt8.self, repeating: sentinel)
    guard let layout = Segmentation.layOut(frame: frame, header: header, headroom: headroom, into: output) else {
        // A refusal writes nothing past the output (ASan) and leaves no contract to check.
        return
    }
    checkLayout(layout, frame: frame, header: header, headroom: headroom, output: UnsafeRawBufferPointer(output))
}

private func fuzzAnswer(_ frame: UnsafeRawBufferPointer, capacity: Int) {
    let reply = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 16)
    defer { reply.deallocate() }
    reply.initializeMemory(as: UInt8.self, repeating: sentinel)
    // Addresses ending in an odd byte belong to a port whose MAC ends in that byte.
    let answer = NeighborResponder.answer(frame, into: reply) { address in
        let last: UInt8
        switch address {
        case .v4(let a): last = UInt8(truncatingIfNeeded: a.rawValue)
        case .v6(let a): last = UInt8(truncatingIfNeeded: a.low)
        }
        return last & 1 == 1 ? MACAddress(0x02, 0, 0, 0, 0x77, last) : nil
    }
    guard let length = answer else { return }
    precondition(length <= capacity, "answer longer than its buffer")
    for index in length..<capacity { precondition(reply[index] == sentinel, "answer wrote past its length") }
    let bytes = UnsafeRawBufferPointer(reply)
    precondition(bytes[6] == 0x02 && bytes[10] == 0x77 && bytes[11] & 1 == 1, "answer not from an owner's MAC")
    switch length {
    case 42:
        precondition(be16(frame, 12) == 0x0806 && be16(frame, 20) == 1, "ARP reply to something but an ARP request")
        precondition(be16(bytes, 12) == 0x0806 && be16(bytes, 20) == 2, "ARP reply's type or operation")
        for at in 0..<6 { precondition(bytes[at] == frame[22 + at] && bytes[32 + at] == frame[22 + at], "ARP reply not to the asker") }
        for at in 0..<4 { precondition(bytes[28 + at] == frame[38 + at], "ARP reply for another address") }
    case 86:
        precondition(be16(frame, 12) == 0x86DD && frame[21] == 255, "advertisement for something but a solicitation")
        precondition(be16(bytes, 12) == 0x86DD && bytes[20] == 58 && bytes[21] == 255 && bytes[54] == 136, "advertisement's headers")
        let pseudo = pseudoSum(bytes, v6: true, proto: 58, length: 32)
        precondition(~UInt16(referenceSum(UnsafeRawBufferPointer(rebasing: bytes[54..<86]), initial: pseudo)) == 0, "ICMPv6 checksum")
        for at in 0..<6 { precondition(bytes[at] == frame[6 + at], "advertisement not to the asker") }
    default:
        preconditionFailure("answer of \(length) bytes")
    }
}

private func fuzzVNI(_ datagram: UnsafeRawBufferPointer) {
    let vni = VXLAN.vni(of: datagram)
    let expectNil = datagram.count < 8 || datagram[0] & 0x08 == 0
    precondition((vni == nil) == expectNil, "vni(of:) accepted or refused the wrong header")
    guard let vni else { return }
    precondition(vni <= 0xFF_FFFF, "VNI wider than 24 bits")
    var header: UInt64 = 0
    withUnsafeMutableBytes(of: &header) { raw in
        VXLAN.writeHeader(vni: vni, into: raw.baseAddress!)
        precondition(VXLAN.vni(of: UnsafeRawBufferPointer(raw)) == vni, "writeHeader does not round-trip")
        precondition(raw[0] == 0x08 && raw[1] == 0 && raw[2] == 0 && raw[3] == 0 && raw[7] == 0, "reserved bits set")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    fuzzVNI(input)
    guard size >= 14,
          let header = VirtioNetHeader(parsing: UnsafeRawBufferPointer(rebasing: input[1..<13]))
    else { return 0 }
    let headroom = Int(input[13] & 0x1F)
    let frame = UnsafeRawBufferPointer(rebasing: input[14...])
    fuzzLayOut(frame, header: header, headroom: headroom, small: input[0] & 0x80 != 0)
    // Reply buffers from 0 to 127 bytes: around both answers' sizes.
    fuzzAnswer(frame, capacity: Int(input[0] & 0x7F))
    return 0
}
