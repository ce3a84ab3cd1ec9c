import Audit
import Foundation
import XCTest

/// `bulkhead audit verify` and `bulkhead audit show`, run as a user would: the built binary.
final class AuditCommandTests: XCTestCase {
    private var directory = ""
    private var logPath: String { directory + "/audit.log" }

    /// The `bulkhead` executable built next to the test bundle (this target does not depend on
    /// it: `swift build` builds it, `swift build --build-tests` too).
    private static var executable: String? {
        let bundleDirectory = Bundle.main.bundleURL.deletingLastPathComponent()
        let candidates = [bundleDirectory.appendingPathComponent("bulkhead").path,
                          URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                              .deletingLastPathComponent().appendingPathComponent(".build/debug/bulkhead").path]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    override func setUpWithError() throws {
        directory = try makeTemporaryDirectory()
        let log = try AuditLog(path: logPath, headPath: logPath + ".head")
        for number in 1...6 { try log.append(sampleEvent(number)) }
        try log.append(AuditEvent(principal: "mallory", uid: 666, action: "partition.stop",
                                  target: "red/\u{1B}[2Jguest", outcome: .denied(reason: "tenant-admin of blue")))
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func bulkhead(_ arguments: [String]) throws -> (status: Int32, output: String) {
        guard let executable = Self.executable else {
            throw XCTSkip("the bulkhead executable is not built (run `swift build` first)")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, output)
    }

    func testVerifyExitStatusSaysIntactTamperedOrUnreadable() throws {
        let intact = try bulkhead(["audit", "verify", logPath])
        XCTAssertEqual(intact.status, 0, intact.output)
        XCTAssertTrue(intact.output.contains("7 records, chain intact, head matches record 7"), intact.output)

        var lines = splitLines(try readBytes(logPath))
        lines.swapAt(1, 2)
        try writeBytes(lines.flatMap { $0 }, to: logPath)
        let swapped = try bulkhead(["audit", "verify", logPath])
        XCTAssertEqual(swapped.status, 1, swapped.output)
        XCTAssertTrue(swapped.output.contains("reordered at line 2"), swapped.output)

        lines.swapAt(1, 2)
        try writeBytes(lines.prefix(5).flatMap { $0 }, to: logPath)
        let cut = try bulkhead(["audit", "verify", logPath])
        XCTAssertEqual(cut.status, 1, cut.output)
        XCTAssertTrue(cut.output.contains("cut short at line 6"), cut.output)
        // Without the head, the cut goes unnoticed, and the command says so.
        let chainOnly = try bulkhead(["audit", "verify", logPath, "--no-head"])
        XCTAssertEqual(chainOnly.status, 0, chainOnly.output)
        XCTAssertTrue(chainOnly.output.contains("5 records, chain intact (no head: a log cut short is not detected)"), chainOnly.output)
        let missingHead = try bulkhead(["audit", "verify", logPath, "--head", directory + "/elsewhere.head"])
        XCTAssertEqual(missingHead.status, 1, missingHead.output)
        XCTAssertTrue(missingHead.output.contains("head missing"), missingHead.output)

        // An anchor saved before the cut catches it even with the head rewritten to match.
        let anchorPath = directory + "/saved.head"
        try writeBytes(Array(AuditHead(sequence: 6, hash: try decodeLine(lines[5]).hash).encoded.utf8), to: anchorPath)
        try writeBytes(Array(AuditHead(sequence: 5, hash: try decodeLine(lines[4]).hash).encoded.utf8), to: logPath + ".head")
        let rewrittenHead = try bulkhead(["audit", "verify", logPath])
        XCTAssertEqual(rewrittenHead.status, 0, rewrittenHead.output)
        let anchored = try bulkhead(["audit", "verify", logPath, "--anchor", anchorPath])
        XCTAssertEqual(anchored.status, 1, anchored.output)
        XCTAssertTrue(anchored.output.contains("cut short at line 6"), anchored.output)

        let unreadable = try bulkhead(["audit", "verify", directory + "/no-such.log"])
        XCTAssertEqual(unreadable.status, 2, unreadable.output)
        XCTAssertTrue(unreadable.output.contains("unreadable"), unreadable.output)
    }

    func testShowPrintsATable() throws {
        let shown = try bulkhead(["audit", "show", logPath, "--after", "4", "--limit", "2"])
        XCTAssertEqual(shown.status, 0, shown.output)
        let rows = shown.output.split(separator: "\n").map(String.init)
        XCTAssertEqual(rows.count, 3, shown.output)
        XCTAssertTrue(rows[0].hasPrefix("SEQ"), shown.output)
        XCTAssertTrue(rows[0].contains("TIME") && rows[0].contains("PRINCIPAL") && rows[0].contains("REASON"), shown.output)
        XCTAssertTrue(rows[1].hasPrefix("5 "), shown.output)
        XCTAssertTrue(rows[1].contains("alice") && rows[1].contains("config.apply") && rows[1].contains("failed")
                      && rows[1].contains("partition exited with status 5"), shown.output)
        XCTAssertTrue(rows[2].hasPrefix("6 "), shown.output)

        // A caller's terminal escape is shown, not sent to the terminal.
        let last = try bulkhead(["audit", "show", logPath, "--after", "6"])
        XCTAssertFalse(last.output.contains("\u{1B}"), last.output)
        XCTAssertTrue(last.output.contains(#"red/\u{1b}[2Jguest"#), last.output)
        XCTAssertTrue(last.output.contains("tenant-admin of blue"), last.output)
    }
}
