import Audit
import Foundation
import HostOS
import Synchronization
import XCTest

/// The log writer on real files: the chain across reopens, crash recovery, refusal of a
/// tampered log, concurrent appends.
final class AuditLogTests: XCTestCase {
    private var directory = ""
    private var logPath: String { directory + "/audit.log" }
    private var headPath: String { directory + "/audit.log.head" }

    override func setUpWithError() throws {
        directory = try makeTemporaryDirectory()
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func open() throws -> AuditLog {
        try AuditLog(path: logPath, headPath: headPath)
    }

    private func verifyFiles() throws -> AuditVerification {
        AuditVerifier.verify(log: try readBytes(logPath), head: try readBytes(headPath))
    }

    /// Opening `open()` throws an `AuditError` that `matches`.
    private func assertOpenFails(_ what: String, file: StaticString = #filePath, line: UInt = #line,
                                 _ matches: (AuditError) -> Bool) {
        do throws(AuditError) {
            _ = try AuditLog(path: logPath, headPath: headPath)
            XCTFail("\(what): the log opened", file: file, line: line)
        } catch {
            XCTAssertTrue(matches(error), "\(what): \(error)", file: file, line: line)
        }
    }

    func testAppendAndReopenContinueTheChain() throws {
        do {
            let log = try open()
            XCTAssertEqual(log.lastSequence, 0)
            XCTAssertEqual(try readBytes(headPath), Array(AuditHead.empty.encoded.utf8))
            for number in 1...5 { XCTAssertEqual(try log.append(sampleEvent(number)), UInt64(number)) }
        }
        let reopened = try open()
        XCTAssertEqual(reopened.lastSequence, 5)
        for number in 6...8 { XCTAssertEqual(try reopened.append(sampleEvent(number)), UInt64(number)) }
        let report = try verifyFiles()
        XCTAssertEqual(report.summary, "8 records, chain intact, head matches record 8")
        XCTAssertEqual(String(decoding: try readBytes(headPath), as: UTF8.self), reopened.head.encoded)

        let lines = splitLines(try readBytes(logPath))
        let records = try lines.map(decodeLine)
        XCTAssertEqual(records.map(\.sequence), Array(1...8))
        XCTAssertEqual(records[5].previousHash, records[4].hash, "the reopened log chains onto the record before")
        XCTAssertEqual(records[0].previousHash, AuditRecordCodec.zeroHash)
        XCTAssertEqual(records.map(\.event), (1...8).map { sampleEvent($0) })
        // Time-stamped now, in UTC.
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        for record in records {
            let time = try XCTUnwrap(formatter.date(from: record.time), record.time)
            XCTAssertLessThan(abs(time.timeIntervalSinceNow), 120, record.time)
        }

        var status = stat()
        XCTAssertEqual(stat(logPath, &status), 0)
        XCTAssertEqual(status.st_mode & 0o777, 0o600)
        XCTAssertEqual(stat(headPath, &status), 0)
        XCTAssertEqual(status.st_mode & 0o777, 0o600)
    }

    func testRecordsAfterASequence() throws {
        let log = try open()
        XCTAssertEqual(try log.records(after: 0, limit: 10), [])
        for number in 1...300 { try log.append(sampleEvent(number)) }
        let lines = splitLines(try readBytes(logPath)).map { String(decoding: $0.dropLast(), as: UTF8.self) }
        XCTAssertEqual(try log.records(after: 0, limit: 3), Array(lines[0..<3]))
        XCTAssertEqual(try log.records(after: 255, limit: 4), Array(lines[255..<259]))
        XCTAssertEqual(try log.records(after: 298, limit: 10), Array(lines[298..<300]))
        XCTAssertEqual(try log.records(after: 300, limit: 10), [])
        XCTAssertEqual(try log.records(after: 5, limit: 0), [])
        // Records appended after the first read are found too (the index follows appends).
        for number in 301...600 { try log.append(sampleEvent(number)) }
        let all = splitLines(try readBytes(logPath)).map { String(decoding: $0.dropLast(), as: UTF8.self) }
        XCTAssertEqual(try log.records(after: 511, limit: 3), Array(all[511..<514]))
        XCTAssertEqual(try log.records(after: 0, limit: 1000), all)
        XCTAssertEqual(try log.records(after: 599, limit: 1).map { try decodeLine(Array($0.utf8)).sequence }, [600])
    }

    /// Eight threads appending at once make one chain with every record exactly once.
    func testConcurrentAppendsMakeOneChain() throws {
        let log = try open()
        let threads = 8, perThread = 200
        let sequences = Mutex<[UInt64]>([])
        let failures = Mutex<[String]>([])
        let started = Date()
        DispatchQueue.concurrentPerform(iterations: threads) { thread in
            for number in 0..<perThread {
                do {
                    let sequence = try log.append(sampleEvent(number, thread: thread))
                    sequences.withLock { $0.append(sequence) }
                } catch {
                    failures.withLock { $0.append("\(error)") }
                }
            }
        }
        let elapsed = Date().timeIntervalSince(started)
        print("audit: \(threads * perThread) appends from \(threads) threads in \(String(format: "%.2f", elapsed)) s, "
              + "\(String(format: "%.2f", elapsed * 1000 / Double(threads * perThread))) ms each (write, fdatasync, head rename and fsyncs)")
        XCTAssertEqual(failures.withLock { $0 }, [])
        XCTAssertEqual(sequences.withLock { $0.sorted() }, Array(1...UInt64(threads * perThread)))
        XCTAssertEqual(log.lastSequence, UInt64(threads * perThread))
        let report = try verifyFiles()
        XCTAssertEqual(report.summary, "1600 records, chain intact, head matches record 1600")
        var seen = Set<String>()
        for line in splitLines(try readBytes(logPath)) {
            let detail = try decodeLine(line).event.detail
            seen.insert("\(detail["thread"] ?? "?")/\(detail["number"] ?? "?")")
        }
        XCTAssertEqual(seen.count, threads * perThread)
    }

    /// Async appends from many tasks share the writer thread's flushes (group commit), mixed
    /// with synchronous ones from a thread: one chain, every record once, in sequence order.
    func testAsyncAppendsMakeOneChainWithSharedFlushes() async throws {
        let log = try open()
        let tasks = 16, perTask = 100
        let started = Date()
        let synchronous = Thread {
            for number in 0..<50 { _ = try? log.append(sampleEvent(number, thread: 99)) }
        }
        synchronous.start()
        let sequences = try await withThrowingTaskGroup(of: [UInt64].self) { group in
            for task in 0..<tasks {
                group.addTask {
                    var sequences: [UInt64] = []
                    for number in 0..<perTask { sequences.append(try await log.append(sampleEvent(number, thread: task))) }
                    return sequences
                }
            }
            var all: [UInt64] = []
            for try await some in group {
                XCTAssertEqual(some, some.sorted(), "one task's records are in its order")
                all += some
            }
            return all
        }
        let elapsed = Date().timeIntervalSince(started)
        let deadline = Date().addingTimeInterval(60)
        while log.lastSequence < UInt64(tasks * perTask + 50) && Date() < deadline { try await Task.sleep(nanoseconds: 1_000_000) }
        print("audit: \(tasks * perTask) async appends from \(tasks) tasks in \(String(format: "%.2f", elapsed)) s, "
              + "\(String(format: "%.3f", elapsed * 1000 / Double(tasks * perTask))) ms each (group commit)")
        XCTAssertEqual(Set(sequences).count, tasks * perTask)
        XCTAssertEqual(log.lastSequence, UInt64(tasks * perTask + 50))
        let report = try verifyFiles()
        XCTAssertEqual(report.summary, "1650 records, chain intact, head matches record 1650")
        var seen = Set<String>()
        for line in splitLines(try readBytes(logPath)) {
            let detail = try decodeLine(line).event.detail
            seen.insert("\(detail["thread"] ?? "?")/\(detail["number"] ?? "?")")
        }
        XCTAssertEqual(seen.count, tasks * perTask + 50)
    }

    func testTornLastLineIsCutOffOnOpen() throws {
        do {
            let log = try open()
            for number in 1...3 { try log.append(sampleEvent(number)) }
        }
        let complete = try readBytes(logPath)
        let fourth = AuditRecordCodec.line(body: AuditRecordCodec.body(
            sequence: 4, time: "2025-01-01T00:00:00.000Z", event: sampleEvent(4),
            previousHash: try decodeLine(splitLines(complete)[2]).hash)).line
        // A record written but for its newline counts as torn too: it was never acknowledged.
        for cut in [1, fourth.count / 2, fourth.count - 1] {
            try writeBytes(complete + fourth.prefix(cut), to: logPath)
            let report = try verifyFiles()
            XCTAssertNil(report.problem, "\(report)")
            XCTAssertTrue(report.notes.contains { $0.contains("line 4 is a partial record") }, "\(report)")
            let log = try open()
            XCTAssertEqual(log.lastSequence, 3)
            XCTAssertEqual(try readBytes(logPath), complete, "the torn bytes are cut off")
        }
        let log = try open()
        XCTAssertEqual(try log.append(sampleEvent(4)), 4)
        XCTAssertEqual(try verifyFiles().summary, "4 records, chain intact, head matches record 4")
    }

    /// A crash between the log's fdatasync and the head's update: the head is one behind.
    func testHeadOneBehindIsRepairedOnOpen() throws {
        let oldHead: [UInt8]
        do {
            let log = try open()
            for number in 1...3 { try log.append(sampleEvent(number)) }
            oldHead = try readBytes(headPath)
            try log.append(sampleEvent(4))
        }
        try writeBytes(oldHead, to: headPath)
        let log = try open()
        XCTAssertEqual(log.lastSequence, 4)
        XCTAssertEqual(try decodeHead(), log.head)
        XCTAssertEqual(log.head.sequence, 4)
        try log.append(sampleEvent(5))
        XCTAssertEqual(try verifyFiles().summary, "5 records, chain intact, head matches record 5")
    }

    private func decodeHead() throws -> AuditHead {
        try AuditHead.decode(try readBytes(headPath)[...]).get()
    }

    func testTamperedLogsAreRefusedOnOpen() throws {
        do {
            let log = try open()
            for number in 1...5 { try log.append(sampleEvent(number)) }
        }
        let original = try readBytes(logPath)
        let originalHead = try readBytes(headPath)
        let lines = splitLines(original)

        try writeBytes(lines.prefix(3).flatMap { $0 }, to: logPath)
        assertOpenFails("cut short") { $0 == .cutShort(path: self.logPath, logEnds: 3, headSays: 5) }
        XCTAssertEqual(try readBytes(logPath), lines.prefix(3).flatMap { $0 }, "a refused log is left as it was")

        // Cut in the middle of the last record: not a torn write, the head names that record.
        try writeBytes(lines.prefix(4).flatMap { $0 } + lines[4].prefix(50), to: logPath)
        assertOpenFails("cut mid-record") { $0 == .cutShort(path: self.logPath, logEnds: 4, headSays: 5) }
        XCTAssertEqual(try readBytes(logPath), lines.prefix(4).flatMap { $0 } + lines[4].prefix(50),
                       "the partial record of a refused log is kept as evidence")

        try writeBytes(original, to: logPath)
        var changed = lines
        changed[4] = Array(String(decoding: changed[4], as: UTF8.self).replacingOccurrences(of: "alice", with: "alicf").utf8)
        XCTAssertNotEqual(changed[4], lines[4])
        try writeBytes(changed.flatMap { $0 }, to: logPath)
        assertOpenFails("last record changed") {
            if case .tampered(_, 5, _) = $0 { true } else { false }
        }

        let fifth = try decodeLine(lines[4])
        try writeBytes(original + forgedLine(sequence: 6, previousHash: fifth.hash).line
                       + forgedLine(sequence: 7, previousHash: String(repeating: "2", count: 64)).line, to: logPath)
        assertOpenFails("records appended") {
            if case .tampered(_, 7, _) = $0 { true } else { false }
        }

        try writeBytes(original, to: logPath)
        try FileManager.default.removeItem(atPath: headPath)
        assertOpenFails("head missing") { $0 == .headMissing(path: self.headPath, lastSequence: 5) }
        try writeBytes(Array("garbage".utf8), to: headPath)
        assertOpenFails("head malformed") {
            if case .headMalformed = $0 { true } else { false }
        }

        try writeBytes([], to: logPath)
        try writeBytes(originalHead, to: headPath)
        assertOpenFails("emptied") { $0 == .cutShort(path: self.logPath, logEnds: 0, headSays: 5) }

        try writeBytes(original, to: logPath)
        XCTAssertEqual(try open().lastSequence, 5, "the original opens again")
    }

    /// The tail check on open misses a record removed from the middle; `verifyingChain` does not.
    func testVerifyingTheChainOnOpenFindsTamperingInTheMiddle() throws {
        do {
            let log = try open()
            for number in 1...6 { try log.append(sampleEvent(number)) }
        }
        let original = try readBytes(logPath)
        var lines = splitLines(original)
        lines.remove(at: 4)
        try writeBytes(lines.flatMap { $0 }, to: logPath)
        XCTAssertEqual(try open().lastSequence, 6, "the tail alone looks right")
        do throws(AuditError) {
            _ = try AuditLog(path: logPath, headPath: headPath, verifyingChain: true)
            XCTFail("a log with a record removed opened")
        } catch {
            guard case .verificationFailed(logPath, let problem) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(problem.kind, .removed, "\(problem)")
            XCTAssertEqual(problem.line, 5, "\(problem)")
        }
        try writeBytes(original, to: logPath)
        XCTAssertEqual(try AuditLog(path: logPath, headPath: headPath, verifyingChain: true).lastSequence, 6)
    }

    func testASecondWriterIsLockedOut() throws {
        let first = try open()
        assertOpenFails("second open") { $0 == .locked(path: self.logPath) }
        try first.append(sampleEvent(1))
    }

    func testOversizedRecordIsRefusedAndNothingWritten() throws {
        let log = try open()
        try log.append(sampleEvent(1))
        let big = AuditEvent(principal: "alice", action: "config.apply", outcome: .allowed,
                             detail: ["diff": String(repeating: "x", count: AuditRecordCodec.maximumLineLength)])
        XCTAssertThrowsError(try log.append(big)) { error in
            guard case .recordTooLarge = error as? AuditError else { return XCTFail("\(error)") }
        }
        XCTAssertEqual(try log.append(sampleEvent(2)), 2)
        XCTAssertEqual(try verifyFiles().summary, "2 records, chain intact, head matches record 2")
    }

    /// Every state a crash can leave: for each record k, the head of k with the log anywhere from
    /// the end of record k to the end of record k + 1 (the head is updated only after the log's
    /// fdatasync, and record k + 2 is written only after that). Each opens with every complete
    /// record kept, and every acknowledged record (those whose head was written) among them. A
    /// log that lost an acknowledged record (any shorter prefix under the head of a later state)
    /// is reported cut short, by the verifier and by the writer.
    func testEveryCrashPointRecoversOrIsReportedCutShort() throws {
        var ends: [Int] = [0]
        var heads: [[UInt8]] = []
        do {
            let log = try open()
            heads.append(try readBytes(headPath))
            for number in 1...20 {
                try log.append(sampleEvent(number))
                ends.append(try readBytes(logPath).count)
                heads.append(try readBytes(headPath))
            }
        }
        let final = try readBytes(logPath)
        var opened = 0
        for acknowledged in 0..<20 {
            for length in ends[acknowledged]...ends[acknowledged + 1] {
                // Every byte of the window at the ends, a sample in between (each open writes).
                let inside = length - ends[acknowledged]
                guard inside < 3 || ends[acknowledged + 1] - length < 3 || inside % 17 == 0 else { continue }
                try writeBytes(Array(final.prefix(length)), to: logPath)
                try writeBytes(heads[acknowledged], to: headPath)
                let complete = length == ends[acknowledged + 1] ? acknowledged + 1 : acknowledged
                let log: AuditLog
                do {
                    log = try open()
                } catch {
                    XCTFail("crash at byte \(length) with head \(acknowledged): \(error)")
                    continue
                }
                opened += 1
                XCTAssertEqual(log.lastSequence, UInt64(complete), "crash at byte \(length)")
                XCTAssertEqual(try readBytes(logPath), Array(final.prefix(ends[complete])), "crash at byte \(length)")
                XCTAssertEqual(try decodeHead().sequence, UInt64(complete), "crash at byte \(length)")
                if inside % 5 == 0 {
                    try log.append(sampleEvent(99))
                    let report = try verifyFiles()
                    XCTAssertNil(report.problem, "crash at byte \(length), then an append: \(report)")
                }
            }
        }
        XCTAssertGreaterThan(opened, 100)

        // Acknowledged records lost: every shorter prefix, against the head of record 20 (and,
        // opened for a sample, by the writer too).
        for length in 0..<ends[20] {
            let report = AuditVerifier.verify(log: Array(final.prefix(length)), head: heads[20])
            XCTAssertEqual(report.problem?.kind, .cutShort, "prefix of \(length) bytes: \(report)")
            guard length % 211 == 0 else { continue }
            try writeBytes(Array(final.prefix(length)), to: logPath)
            try writeBytes(heads[20], to: headPath)
            assertOpenFails("prefix of \(length) bytes") {
                if case .cutShort(_, _, 20) = $0 { true } else { false }
            }
        }
    }

    /// `AuditLog.verify(path:headPath:)` reads both files, and a missing head is reported as such.
    func testVerifyReadsTheFiles() throws {
        let log = try open()
        for number in 1...4 { try log.append(sampleEvent(number)) }
        XCTAssertEqual(try AuditLog.verify(path: logPath, headPath: headPath).summary,
                       "4 records, chain intact, head matches record 4")
        XCTAssertEqual(try AuditLog.verify(path: logPath, headPath: directory + "/none").problem?.kind, .headMissing)
        XCTAssertThrowsError(try AuditLog.verify(path: directory + "/none", headPath: headPath))
    }
}
