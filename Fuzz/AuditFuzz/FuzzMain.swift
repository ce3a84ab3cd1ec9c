// libFuzzer target for the audit log's verifier and record codec.
//
// Input: byte 0 = flags, bytes 1-2 = the head's length (little-endian, clamped), then the log,
// then the head (its last bytes). Flags: bit 0 no head; bit 1 rehash every line that decodes
// (so the fuzzer reaches the chain checks past SHA-256); bit 2 also chain each rehashed line
// onto the line before (so it reaches sequence, reorder and head checks); bit 3 also pass the
// head as the anchor.
//
// Besides "never traps" (and ASan), it checks what a reader of the report relies on: an intact
// report means every line is a record that chains onto the one before, from seq 1; a problem
// names a line the log has (or 0, the head; or one past the end, for a cut).
import Audit

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let input = Array(UnsafeBufferPointer(start: data, count: count))
    guard input.count >= 3 else { return 0 }
    let flags = input[0]
    let headLength = min(Int(input[1]) | Int(input[2]) << 8, input.count - 3)
    var log = Array(input[3..<(input.count - headLength)])
    let head: [UInt8]? = flags & 1 != 0 ? nil : Array(input[(input.count - headLength)...])

    if flags & 2 != 0 { log = rehashed(log, chaining: flags & 4 != 0) }

    let report = AuditVerifier.verify(log: log, head: head, anchor: flags & 8 != 0 ? head : nil)
    let lines = log.split(separator: 0x0A, omittingEmptySubsequences: false).dropLast()
    precondition(report.lines == lines.count, "\(report.lines) lines reported, \(lines.count) in the log")
    precondition(report.chained <= report.lines)
    if let problem = report.problem {
        precondition(problem.line >= 0 && problem.line <= lines.count + 1, "problem at line \(problem.line) of \(lines.count)")
        precondition(!report.isIntact)
        _ = report.description
        return 0
    }
    // Intact: checked here independently of the verifier's own walk.
    precondition(head != nil, "intact without a head")
    var previous = AuditRecordCodec.zeroHash
    for (index, line) in lines.enumerated() {
        guard case .success(let decoded) = AuditRecordCodec.decode(line) else { preconditionFailure("intact, but line \(index + 1) does not decode") }
        precondition(decoded.record.sequence == UInt64(index + 1), "intact, but line \(index + 1) has seq \(decoded.record.sequence)")
        precondition(decoded.record.previousHash == previous, "intact, but line \(index + 1) does not chain")
        precondition(AuditRecordCodec.sha256Hex(line[line.startIndex..<decoded.bodyEnd]) == decoded.record.hash)
        previous = decoded.record.hash
    }
    return 0
}

/// Every line that decodes, written again with a correct hash (and, `chaining`, a prev that
/// chains onto the line before); other lines unchanged.
private func rehashed(_ log: [UInt8], chaining: Bool) -> [UInt8] {
    var out: [UInt8] = []
    var previous = AuditRecordCodec.zeroHash
    var lines = log.split(separator: 0x0A, omittingEmptySubsequences: false)
    let tail = lines.removeLast()
    for line in lines {
        guard case .success(let decoded) = AuditRecordCodec.decode(line) else {
            out.append(contentsOf: line)
            out.append(0x0A)
            continue
        }
        let record = decoded.record
        let body = AuditRecordCodec.body(sequence: record.sequence, time: record.time, event: record.event,
                                         previousHash: chaining ? previous : record.previousHash)
        let (fixed, hash) = AuditRecordCodec.line(body: body)
        out.append(contentsOf: fixed)
        previous = hash
    }
    out.append(contentsOf: tail)
    return out
}
