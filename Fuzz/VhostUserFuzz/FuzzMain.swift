// libFuzzer target for the vhost-user message codec (Sources/VhostUser/Message.swift and
// VhostUserError.swift, compiled alone as module VhostUser: no sockets, no logging).
//
// Input: byte 0 low nibble = the number of file descriptors that "arrived" (0...9), bit 4 =
// decode as a reply to the header's own request instead of as a request; the rest is the
// message (header and payload). Besides "does not crash or read out of bounds" (ASan), it checks
// that whatever decodes re-encodes to a message that decodes to the same value, that validated
// memory tables hold what the validation promised, and that address translation stays inside
// the region it picked.
import VhostUser

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    let descriptors = Int(input[0] & 0x0f) % 10
    let bytes = Array(input[1...])
    var direction = VhostUserMessage.Direction.request
    if input[0] & 0x10 != 0, bytes.count >= 4 {
        let raw = UInt32(bytes[0]) | UInt32(bytes[1]) << 8 | UInt32(bytes[2]) << 16 | UInt32(bytes[3]) << 24
        guard let request = VhostUserRequest(rawValue: raw) else { return 0 }
        direction = .reply(to: request)
    }

    let message: VhostUserMessage
    do {
        message = try VhostUserMessage.decode(bytes, descriptorCount: descriptors, direction: direction)
    } catch {
        precondition(!error.description.isEmpty, "an error that says nothing")
        return 0
    }

    // The channel reads no more than the header's limits allow: they must admit whatever decodes.
    guard let header = try? VhostUserHeader(decoding: bytes),
          let limits = try? VhostUserMessage.limits(of: header, direction: direction) else {
        preconditionFailure("the header's limits refuse a message that decodes")
    }
    precondition(bytes.count - VhostUserHeader.size <= limits.payloadSize, "the limits cut off a message that decodes")
    precondition(descriptors <= limits.descriptors, "the limits refuse descriptors a message that decodes carries")

    let encoded = message.encode()
    precondition(encoded.count == bytes.count, "re-encoding changed the length")
    guard let again = try? VhostUserMessage.decode(encoded, descriptorCount: descriptors, direction: direction) else {
        preconditionFailure("a decoded message does not decode after re-encoding")
    }
    precondition(again == message, "round trip changed the message")

    switch message.payload {
    case .memoryTable(let table):
        precondition((1...VhostMemoryTable.maximumRegions).contains(table.regions.count), "region count not validated")
        precondition(descriptors == table.regions.count, "descriptor count not validated")
        for region in table.regions {
            precondition(region.size > 0, "empty region accepted")
            precondition(!region.guestAddress.addingReportingOverflow(region.size).overflow, "guest range overflows")
            precondition(!region.userAddress.addingReportingOverflow(region.size).overflow, "user range overflows")
            precondition(!region.mmapOffset.addingReportingOverflow(region.size).overflow, "file range overflows")
            // Translation of the region's first and last byte lands inside some region's guest range.
            for user in [region.userAddress, region.userAddress + region.size - 1, region.userAddress &+ region.size] {
                if let guest = table.guestAddress(ofUserAddress: user) {
                    precondition(table.regions.contains { guest >= $0.guestAddress && guest - $0.guestAddress < $0.size },
                                 "translation left every region")
                }
            }
        }
    case .config(let window):
        precondition(Int(window.offset) + window.bytes.count <= VhostConfigSpace.maximumSize, "config window outside 256 bytes")
    case .vringFile(let file):
        precondition(file.index <= 0xff, "vring index beyond 8 bits")
        precondition(descriptors == (file.noDescriptor ? 0 : 1), "descriptor count not validated")
    default:
        break
    }
    return 0
}
