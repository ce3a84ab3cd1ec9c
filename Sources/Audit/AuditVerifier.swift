// The audit log's verifier: pure (bytes in, report out), so the CLI, the tests and the fuzz
// target run the same code.

/// What went wrong with an audit log, as well as the bytes tell.
public enum AuditProblemKind: String, Sendable, Equatable {
    /// A record's content no longer matches its hash, or a record was rewritten with a new hash
    /// (its successor no longer chains onto it).
    case changed
    /// Records are missing from the middle or the start: a sequence gap.
    case removed
    /// A record is present but in the wrong place: it chains onto a record that comes after it.
    case reordered
    /// A record that is not part of the chain: a duplicate sequence number, or one the next
    /// record skips over, or records after the head beyond the one a crash can leave.
    case inserted
    /// A line that is not a record as the log writer writes it.
    case malformed
    /// The log ends before the record the head names, or that record differs from the head.
    case cutShort = "cut short"
    /// No head to compare with: the chain can be checked, but not whether its tail was removed.
    case headMissing = "head missing"
    /// The head file is not a head.
    case headMalformed = "head malformed"
}

/// The first problem found in an audit log.
public struct AuditProblem: Error, Sendable, Equatable, CustomStringConvertible {
    public let kind: AuditProblemKind
    /// The log line (1-based) of the first record concerned; 0 when it is the head file.
    public let line: Int
    /// What was found, naming records by line and sequence number.
    public let message: String

    public var description: String {
        "\(kind.rawValue) at \(line > 0 ? "line \(line)" : "the head"): \(message)"
    }
}

/// The verifier's report.
public struct AuditVerification: Sendable, Equatable, CustomStringConvertible {
    /// Complete lines in the log (a torn partial last line is not counted).
    public let lines: Int
    /// Records that chain correctly from the first, before the first problem (all, when none).
    public let chained: Int
    /// The head compared with, when one was given and readable.
    public let head: AuditHead?
    /// The anchor (a head saved earlier, elsewhere) compared with, when one was given and matched.
    public var anchor: AuditHead? = nil
    /// The first problem; nil when the log is intact.
    public let problem: AuditProblem?
    /// Things checked and found acceptable that a reader should know (a torn last line, a head
    /// one record behind).
    public let notes: [String]

    public var isIntact: Bool { problem == nil }

    func with(problem: AuditProblem) -> AuditVerification {
        AuditVerification(lines: lines, chained: chained, head: head, problem: problem, notes: notes)
    }

    /// One line saying what was checked and what was found, then the notes.
    public var summary: String {
        if let problem {
            return "\(problem); \(chained) record(s) before it chain intact from the start"
        }
        let anchored = anchor.map { ", anchor matches record \($0.sequence)" } ?? ""
        guard let head else { return "\(lines) records, chain intact" + anchored }
        if lines == 0 { return "0 records, empty log, head at record 0" + anchored }
        if head.sequence == UInt64(lines) { return "\(lines) records, chain intact, head matches record \(lines)" + anchored }
        return "\(lines) records, chain intact, head matches record \(head.sequence) (one behind, see the note)" + anchored
    }

    public var description: String {
        ([summary] + notes.map { "note: \($0)" }).joined(separator: "\n")
    }
}

/// Checks an audit log's hash chain against its head and reports the first problem.
///
/// Without a key, a writer who can rewrite the whole log from some record on and the head with
/// it leaves a consistent log: the head must live where that writer cannot reach (or be copied
/// elsewhere) for truncation and rewriting to be caught.
public enum AuditVerifier {
    /// Verifies `log` (the log file's bytes) against `head` (the head file's bytes; nil when
    /// there is none, which is itself reported, as `headMissing`, after the chain is checked).
    /// `anchor` is a head saved earlier out of the log's writers' reach (a copy of the head
    /// file, or the head the management API reported): the log must still hold the record it
    /// names, unchanged, which catches a log cut short or rewritten together with its head.
    public static func verify(log: [UInt8], head: [UInt8]?, anchor: [UInt8]? = nil) -> AuditVerification {
        var report = verifyChain(log: log, head: head)
        guard let anchor, report.problem == nil || report.problem?.kind == .headMissing else { return report }
        let saved: AuditHead
        switch AuditHead.decode(anchor[...]) {
        case .success(let value): saved = value
        case .failure(let error):
            return report.with(problem: AuditProblem(kind: .headMalformed, line: 0, message: "the anchor is not a head: \(error)"))
        }
        if saved.sequence > UInt64(report.lines) {
            return report.with(problem: AuditProblem(kind: .cutShort, line: report.lines + 1, message:
                "the log ends after record \(report.lines) but the anchor names record \(saved.sequence): the log "
                + "(and its head) were cut short since the anchor was saved"))
        }
        let hash = saved.sequence == 0 ? AuditRecordCodec.zeroHash
            : (Chain(log: log, lines: lineRanges(log).lines).validRecord(at: Int(saved.sequence) - 1)?.hash ?? "")
        guard hash == saved.hash else {
            return report.with(problem: AuditProblem(kind: .changed, line: max(Int(saved.sequence), 1), message:
                "record \(saved.sequence) differs from the anchor's: the log (and its head) were rewritten from that "
                + "record or before since the anchor was saved"))
        }
        report.anchor = saved
        return report
    }

    /// The complete lines' ranges, and how many bytes follow the last newline.
    private static func lineRanges(_ log: [UInt8]) -> (lines: [Range<Int>], torn: Int) {
        var lines: [Range<Int>] = []
        var start = 0
        for index in log.indices where log[index] == 0x0A {
            lines.append(start..<index)
            start = index + 1
        }
        return (lines, log.count - start)
    }

    private static func verifyChain(log: [UInt8], head: [UInt8]?) -> AuditVerification {
        let (lines, torn) = lineRanges(log)
        var notes: [String] = []
        if torn > 0 {
            notes.append("line \(lines.count + 1) is a partial record (\(torn) bytes, no newline): a write cut off by a crash, "
                         + "never acknowledged; the log writer cuts it off when it next opens the log")
        }
        let chain = Chain(log: log, lines: lines)

        var expected: UInt64 = 1
        var previous = AuditRecordCodec.zeroHash
        for index in lines.indices {
            switch chain.entry(index) {
            case .failure(let problem):
                return AuditVerification(lines: lines.count, chained: index, head: nil, problem: problem, notes: notes)
            case .success(let record):
                if record.sequence == expected && record.previousHash == previous {
                    // `expected` is at most the line count plus one: no overflow.
                    expected += 1
                    previous = record.hash
                    continue
                }
                let problem = chain.classify(index: index, record: record, expected: expected, previous: previous)
                return AuditVerification(lines: lines.count, chained: index, head: nil, problem: problem, notes: notes)
            }
        }

        let count = lines.count
        guard let head else {
            let problem = AuditProblem(kind: .headMissing, line: 0, message:
                "no head to compare with: the chain of \(count) record(s) is intact, but whether records were "
                + "removed from the end of the log (cut short) cannot be detected without the head")
            return AuditVerification(lines: count, chained: count, head: nil, problem: problem, notes: notes)
        }
        let decoded: AuditHead
        switch AuditHead.decode(head[...]) {
        case .success(let value): decoded = value
        case .failure(let error):
            let problem = AuditProblem(kind: .headMalformed, line: 0, message: "the head is not {\"seq\":N,\"hash\":\"...\"}: \(error)")
            return AuditVerification(lines: count, chained: count, head: nil, problem: problem, notes: notes)
        }
        let problem = chain.compare(head: decoded, lastHash: previous, notes: &notes)
        return AuditVerification(lines: count, chained: count, head: decoded, problem: problem, notes: notes)
    }
}

/// The log split into lines, with the checks that name a problem.
private struct Chain {
    let log: [UInt8]
    let lines: [Range<Int>]

    /// Line `index` (0-based) as a record whose content matches its hash, or the problem with it.
    func entry(_ index: Int) -> Result<AuditRecord, AuditProblem> {
        let bytes = log[lines[index]]
        let number = index + 1
        let decoded: (record: AuditRecord, bodyEnd: Int)
        switch AuditRecordCodec.decode(bytes) {
        case .success(let value): decoded = value
        case .failure(let error):
            return .failure(AuditProblem(kind: .malformed, line: number, message: "not an audit record: \(error)"))
        }
        let record = decoded.record
        let body = log[bytes.startIndex..<decoded.bodyEnd]
        guard AuditRecordCodec.sha256Hex(body) == record.hash else {
            return .failure(AuditProblem(kind: .changed, line: number, message:
                "record seq \(record.sequence) does not match its hash: its content was changed after it was written"))
        }
        // A record whose hash is right but whose bytes the writer would not produce (another key
        // order, escapes it does not use) was made by something else.
        let canonical = AuditRecordCodec.body(sequence: record.sequence, time: record.time, event: record.event,
                                              previousHash: record.previousHash)
        guard canonical.elementsEqual(body) else {
            return .failure(AuditProblem(kind: .malformed, line: number, message:
                "record seq \(record.sequence) matches its hash but is not written as the log writer writes records: forged"))
        }
        return .success(record)
    }

    /// Line `index` as a record, nil when it is not one.
    func validRecord(at index: Int) -> AuditRecord? {
        guard index >= 0 && index < lines.count, case .success(let record) = entry(index) else { return nil }
        return record
    }

    /// Names the problem at line `index`, whose record does not continue the chain: `expected`
    /// is the sequence number it should have, `previous` the hash of the line before (all
    /// lines before it hold records 1..<expected, in order).
    func classify(index: Int, record: AuditRecord, expected: UInt64, previous: String) -> AuditProblem {
        let number = index + 1
        let sequence = record.sequence
        // A record that chains onto one further down was moved up, or the one it follows moved down.
        if sequence > expected {
            for later in (index + 1)..<lines.count {
                guard let other = validRecord(at: later), other.sequence == sequence - 1, other.hash == record.previousHash else { continue }
                return AuditProblem(kind: .reordered, line: number, message:
                    "record seq \(sequence) is at line \(number), before record seq \(sequence - 1) (line \(later + 1)) "
                    + "that it chains onto: records were moved")
            }
        }
        // The next line carries on from the line before: this one was slipped in.
        if let next = validRecord(at: index + 1), next.sequence == expected, next.previousHash == previous {
            // Records 1..<expected are lines 1..<expected, so an earlier seq names its line.
            if sequence >= 1, sequence < expected, case let original = Int(sequence) - 1,
               log[lines[original]].elementsEqual(log[lines[index]]) {
                return AuditProblem(kind: .inserted, line: number, message:
                    "line \(number) is a copy of record seq \(sequence) (line \(original + 1)); line \(number + 1) continues the chain from line \(index)")
            }
            return AuditProblem(kind: .inserted, line: number, message:
                "record seq \(sequence) at line \(number) is not part of the chain: line \(number + 1) (seq \(expected)) "
                + "continues it from \(index > 0 ? "line \(index)" : "the start")")
        }
        if sequence == expected {
            guard index > 0 else {
                return AuditProblem(kind: .changed, line: number, message:
                    "the first record's prev is not 64 zeros: it was rewritten, or records before it were removed")
            }
            return AuditProblem(kind: .changed, line: index, message:
                "record seq \(expected) (line \(number)) does not chain onto record seq \(expected - 1) (line \(index)): "
                + "record seq \(expected - 1) was changed and its hash recomputed, or record seq \(expected) was replaced")
        }
        if sequence > expected {
            if record.previousHash == previous {
                return AuditProblem(kind: .changed, line: number, message:
                    "record at line \(number) chains onto line \(index) but has seq \(sequence), not \(expected): its seq was changed")
            }
            let missing = sequence - 1 == expected ? "record seq \(expected) is" : "records seq \(expected)...\(sequence - 1) are"
            return AuditProblem(kind: .removed, line: number, message:
                "\(missing) missing before line \(number) (seq \(sequence))")
        }
        // A sequence number the chain already has (or 0, which no record has).
        guard sequence >= 1 else {
            return AuditProblem(kind: .inserted, line: number, message: "a record with seq 0 at line \(number): no record has seq 0")
        }
        let original = Int(sequence) - 1
        if log[lines[original]].elementsEqual(log[lines[index]]) {
            return AuditProblem(kind: .inserted, line: number, message:
                "line \(number) is a copy of record seq \(sequence) (line \(original + 1))")
        }
        // Two records with one seq: the chain's is the one the next line continues.
        if let next = validRecord(at: index + 1), next.sequence == sequence + 1, next.previousHash == record.hash {
            return AuditProblem(kind: .inserted, line: original + 1, message:
                "record seq \(sequence) at line \(original + 1) is not part of the chain: line \(number) holds another "
                + "record seq \(sequence), which line \(number + 1) continues")
        }
        return AuditProblem(kind: .inserted, line: number, message:
            "a second record seq \(sequence) at line \(number); the chain's record seq \(sequence) is at line \(original + 1)")
    }

    /// Compares the intact chain (every line a record, in order; `lastHash` the last one's hash)
    /// with the head.
    func compare(head: AuditHead, lastHash: String, notes: inout [String]) -> AuditProblem? {
        let count = UInt64(lines.count)
        if head.sequence == count {
            guard head.hash == lastHash else {
                return AuditProblem(kind: .cutShort, line: max(lines.count, 1), message:
                    "the last record (seq \(count)) differs from the head's: the log was cut short and rewritten "
                    + "from that record or before")
            }
            return nil
        }
        if head.sequence > count {
            let cut = head.sequence - count == 1 ? "record \(head.sequence) was" : "records \(count + 1)...\(head.sequence) were"
            return AuditProblem(kind: .cutShort, line: lines.count + 1, message:
                "the log ends after record \(count) but the head says \(head.sequence): \(cut) cut off")
        }
        // The head names an earlier record: it must be the one the log holds.
        let headIndex = Int(head.sequence) - 1
        let headHash = headIndex < 0 ? AuditRecordCodec.zeroHash : (validRecord(at: headIndex)?.hash ?? "")
        guard headHash == head.hash else {
            return AuditProblem(kind: .cutShort, line: max(Int(head.sequence), 1), message:
                "record \(head.sequence) differs from the head's: the log was cut short and rewritten from that record or before")
        }
        if count - head.sequence == 1 {
            notes.append("record \(count) (line \(count)) is not yet covered by the head (seq \(head.sequence)): a crash between "
                         + "the log's write and the head's update leaves this, and the log writer repairs it when it next "
                         + "opens the log; a single record appended by someone else looks the same")
            return nil
        }
        return AuditProblem(kind: .inserted, line: Int(head.sequence) + 1, message:
            "\(count - head.sequence) records after the head's record \(head.sequence), where a crash leaves at most one: "
            + "records were appended without the log writer")
    }
}
