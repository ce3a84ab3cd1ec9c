import Audit
import Foundation
import XCTest

/// Tampering of each kind is detected by the verifier and named, at the right line.
final class AuditVerifierTests: XCTestCase {
    private var log: [UInt8] = []
    private var head: [UInt8] = []
    private var lines: [[UInt8]] = []

    override func setUpWithError() throws {
        (log, head) = try writtenLog(count: 10)
        lines = splitLines(log)
        XCTAssertEqual(lines.count, 10)
    }

    private func verify(_ lines: [[UInt8]], head: [UInt8]? = nil, tail: [UInt8] = []) -> AuditVerification {
        AuditVerifier.verify(log: lines.flatMap { $0 } + tail, head: head ?? self.head)
    }

    private func assertProblem(_ report: AuditVerification, _ kind: AuditProblemKind, line: Int, mentions: [String] = [],
                               file: StaticString = #filePath, lineNumber: UInt = #line) {
        guard let problem = report.problem else {
            return XCTFail("not detected: \(report)", file: file, line: lineNumber)
        }
        XCTAssertEqual(problem.kind, kind, "\(report)", file: file, line: lineNumber)
        XCTAssertEqual(problem.line, line, "\(report)", file: file, line: lineNumber)
        for text in mentions {
            XCTAssertTrue(problem.message.contains(text), "'\(problem.message)' does not mention '\(text)'", file: file, line: lineNumber)
        }
        XCTAssertFalse(report.isIntact, file: file, line: lineNumber)
    }

    func testIntactLogSaysWhatWasChecked() {
        let report = AuditVerifier.verify(log: log, head: head)
        XCTAssertNil(report.problem, "\(report)")
        XCTAssertEqual(report.summary, "10 records, chain intact, head matches record 10")
        XCTAssertEqual(report.chained, 10)
        XCTAssertEqual(AuditVerifier.verify(log: [], head: Array(AuditHead.empty.encoded.utf8)).summary,
                       "0 records, empty log, head at record 0")
    }

    func testChangedFieldIsNamed() throws {
        var changed = lines
        let text = String(decoding: changed[3], as: UTF8.self)
        let record = try decodeLine(changed[3])
        changed[3] = Array(text.replacingOccurrences(of: record.event.principal, with: "alicf").utf8)
        XCTAssertNotEqual(changed[3], lines[3])
        assertProblem(verify(changed), .changed, line: 4, mentions: ["seq 4", "does not match its hash"])
    }

    /// Every single byte changed anywhere in a record is caught, at that record's line.
    func testEveryByteFlipIsDetectedAtItsLine() {
        for (index, line) in lines.enumerated() {
            for position in 0..<(line.count - 1) {
                var flipped = lines
                var byte = line[position] ^ 0x01
                if byte == 0x0A { byte = line[position] ^ 0x02 }
                flipped[index][position] = byte
                let report = verify(flipped)
                XCTAssertEqual(report.problem?.line, index + 1, "byte \(position) of line \(index + 1): \(report)")
                XCTAssertTrue([.changed, .malformed].contains(report.problem?.kind), "byte \(position) of line \(index + 1): \(report)")
            }
        }
    }

    /// A record changed and its hash recomputed: its successor no longer chains onto it.
    func testChangedRecordWithRecomputedHashIsNamed() throws {
        var changed = lines
        let original = try decodeLine(lines[3])
        var event = original.event
        event.outcome = .allowed
        changed[3] = AuditRecordCodec.line(body: AuditRecordCodec.body(
            sequence: original.sequence, time: original.time, event: event, previousHash: original.previousHash)).line
        assertProblem(verify(changed), .changed, line: 4, mentions: ["record seq 4 was changed"])
    }

    func testRemovedRecordIsNamed() {
        var removed = lines
        removed.remove(at: 3)
        assertProblem(verify(removed), .removed, line: 4, mentions: ["record seq 4 is missing"])
        var several = lines
        several.removeSubrange(2..<5)
        assertProblem(verify(several), .removed, line: 3, mentions: ["records seq 3...5 are missing"])
        assertProblem(verify(Array(lines.dropFirst())), .removed, line: 1, mentions: ["record seq 1 is missing"])
    }

    func testReorderedRecordsAreNamed() {
        var swapped = lines
        swapped.swapAt(3, 4)
        assertProblem(verify(swapped), .reordered, line: 4, mentions: ["record seq 5", "record seq 4 (line 5)"])
        var moved = lines
        moved.append(moved.remove(at: 2))
        assertProblem(verify(moved), .reordered, line: 3, mentions: ["record seq 4", "record seq 3 (line 10)"])
        var first = lines
        first.swapAt(0, 1)
        assertProblem(verify(first), .reordered, line: 1)
    }

    /// A forged record with a correct hash of its own, chained onto the record before it.
    func testInsertedForgedRecordIsNamed() throws {
        let fourth = try decodeLine(lines[3])
        var inserted = lines
        inserted.insert(forgedLine(sequence: 5, previousHash: fourth.hash).line, at: 4)
        assertProblem(verify(inserted), .inserted, line: 5, mentions: ["record seq 5 at line 5 is not part of the chain"])

        // One whose prev fits nothing.
        var stray = lines
        stray.insert(forgedLine(sequence: 5, previousHash: String(repeating: "1", count: 64)).line, at: 4)
        assertProblem(verify(stray), .inserted, line: 5)

        // One with a sequence number far ahead.
        var ahead = lines
        ahead.insert(forgedLine(sequence: 99, previousHash: fourth.hash).line, at: 4)
        assertProblem(verify(ahead), .inserted, line: 5)

        // A copy of a genuine record.
        var copied = lines
        copied.insert(lines[3], at: 4)
        assertProblem(verify(copied), .inserted, line: 5, mentions: ["a copy of record seq 4"])
    }

    /// Records appended after the head beyond the one a crash can leave.
    func testRecordsAppendedBehindTheHeadAreNamed() throws {
        let last = try decodeLine(lines[9])
        let eleven = forgedLine(sequence: 11, previousHash: last.hash)
        let twelve = forgedLine(sequence: 12, previousHash: eleven.hash)
        assertProblem(verify(lines + [eleven.line, twelve.line]), .inserted, line: 11, mentions: ["2 records after the head's record 10"])
        // One record ahead is what a crash between the log's write and the head's update leaves.
        let oneAhead = verify(lines + [eleven.line])
        XCTAssertNil(oneAhead.problem, "\(oneAhead)")
        XCTAssertTrue(oneAhead.notes.contains { $0.contains("record 11 (line 11) is not yet covered by the head") }, "\(oneAhead)")
    }

    func testTruncatedTailIsCutShort() {
        assertProblem(verify(Array(lines.prefix(7))), .cutShort, line: 8, mentions: ["records 8...10 were cut off"])
        assertProblem(verify(Array(lines.prefix(9))), .cutShort, line: 10, mentions: ["record 10 was cut off"])
        assertProblem(verify([]), .cutShort, line: 1)
        // Cut in the middle of the last record: the torn line is noted, the log is cut short.
        let torn = verify(Array(lines.prefix(9)), tail: Array(lines[9].prefix(40)))
        assertProblem(torn, .cutShort, line: 10)
        XCTAssertTrue(torn.notes.contains { $0.contains("line 10 is a partial record") }, "\(torn)")
    }

    /// Cut short and rewritten from there with a valid chain: the head no longer matches.
    func testRewrittenTailIsCutShort() throws {
        var rewritten = Array(lines.prefix(7))
        var previous = try decodeLine(lines[6]).hash
        for sequence in 8...10 {
            let forged = forgedLine(sequence: UInt64(sequence), previousHash: previous)
            rewritten.append(forged.line)
            previous = forged.hash
        }
        assertProblem(verify(rewritten), .cutShort, line: 10, mentions: ["differs from the head"])
    }

    /// The limit of an unkeyed chain: whoever cuts the log and rewrites the head to match is not
    /// detected. The head must be kept (or copied) where the log's attacker cannot write.
    func testTruncationWithAHeadRewrittenToMatchIsUndetectable() throws {
        let seventh = try decodeLine(lines[6])
        let report = verify(Array(lines.prefix(7)), head: Array(AuditHead(sequence: 7, hash: seventh.hash).encoded.utf8))
        XCTAssertTrue(report.isIntact, "\(report)")
        XCTAssertEqual(report.summary, "7 records, chain intact, head matches record 7")
    }

    /// An anchor (a head saved earlier, elsewhere) catches what the head beside the log cannot.
    func testAnAnchorCatchesALogRewrittenWithItsHead() throws {
        let fifth = try decodeLine(lines[4])
        let anchor = Array(AuditHead(sequence: 5, hash: fifth.hash).encoded.utf8)
        let grown = AuditVerifier.verify(log: log, head: head, anchor: anchor)
        XCTAssertNil(grown.problem, "\(grown)")
        XCTAssertEqual(grown.summary, "10 records, chain intact, head matches record 10, anchor matches record 5")

        // Cut short to 3 records, the head rewritten to match.
        let third = try decodeLine(lines[2])
        let cutHead = Array(AuditHead(sequence: 3, hash: third.hash).encoded.utf8)
        let cut = AuditVerifier.verify(log: lines.prefix(3).flatMap { $0 }, head: cutHead, anchor: anchor)
        assertProblem(cut, .cutShort, line: 4, mentions: ["anchor names record 5"])

        // Rewritten from record 4 on, a new chain and head.
        var rewritten = Array(lines.prefix(3))
        var previous = third.hash
        for sequence in 4...10 {
            let forged = forgedLine(sequence: UInt64(sequence), previousHash: previous)
            rewritten.append(forged.line)
            previous = forged.hash
        }
        let newHead = Array(AuditHead(sequence: 10, hash: previous).encoded.utf8)
        XCTAssertNil(AuditVerifier.verify(log: rewritten.flatMap { $0 }, head: newHead).problem, "consistent without the anchor")
        let report = AuditVerifier.verify(log: rewritten.flatMap { $0 }, head: newHead, anchor: anchor)
        assertProblem(report, .changed, line: 5, mentions: ["record 5 differs from the anchor's"])
        assertProblem(AuditVerifier.verify(log: log, head: head, anchor: Array("nonsense".utf8)), .headMalformed, line: 0)
    }

    func testMissingHeadSaysTruncationCannotBeDetected() {
        let report = AuditVerifier.verify(log: log, head: nil)
        assertProblem(report, .headMissing, line: 0, mentions: ["10 record(s) is intact", "cut short", "cannot be detected"])
        assertProblem(AuditVerifier.verify(log: log, head: Array("{\"seq\":10}".utf8)), .headMalformed, line: 0)
    }

    func testMalformedLinesAreNamed() throws {
        var garbage = lines
        garbage[5] = Array("not json at all\n".utf8)
        assertProblem(verify(garbage), .malformed, line: 6, mentions: ["not an audit record"])
        var empty = lines
        empty.insert([0x0A], at: 2)
        assertProblem(verify(empty), .malformed, line: 3)
        // A record with a correct hash that the writer would not write (detail keys unsorted).
        let record = try decodeLine(lines[0])
        let text = String(decoding: AuditRecordCodec.body(sequence: record.sequence, time: record.time, event: record.event,
                                                          previousHash: record.previousHash), as: UTF8.self)
        let unsorted = text.replacingOccurrences(of: #""number":"1","thread":"0""#, with: #""thread":"0","number":"1""#)
        XCTAssertNotEqual(unsorted, text)
        var forged = lines
        forged[0] = AuditRecordCodec.line(body: Array(unsorted.utf8)).line
        assertProblem(verify(forged), .malformed, line: 1, mentions: ["not written as the log writer writes records"])
    }
}
