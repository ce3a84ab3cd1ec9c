import Foundation
import HostOS
import XCTest

/// `StateFiles.update`: a locked read-change-replace of a small state file (the jail uid record).
final class StateFileTests: XCTestCase {
    private var directory = ""

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "bulkhead-state-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func mode(_ path: String) -> mode_t {
        var status = stat()
        XCTAssertEqual(stat(path, &status), 0, "\(path) exists")
        return status.st_mode & 0o7777
    }

    func testAnUpdateSeesThePreviousTextAndReplacesItWithMode0600() throws {
        let path = directory + "/record.json"
        var seen: [String?] = []
        try StateFiles.update(path) { current in seen.append(current); return "one" }
        try StateFiles.update(path) { current in seen.append(current); return "two" }
        XCTAssertEqual(seen, [nil, "one"])
        XCTAssertEqual(try StateFiles.read(path), "two")
        XCTAssertEqual(mode(path), 0o600)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path + ".tmp"), "no temporary file is left")

        // A stale temporary file of another mode (a crash mid-write) does not lend it its mode.
        XCTAssertTrue(FileManager.default.createFile(atPath: path + ".tmp", contents: Data("torn".utf8), attributes: [.posixPermissions: 0o644]))
        try StateFiles.update(path) { _ in "three" }
        XCTAssertEqual(mode(path), 0o600)
        XCTAssertEqual(try StateFiles.read(path), "three")
    }

    func testNilOrTheSameTextLeavesTheFileAlone() throws {
        let path = directory + "/record.json"
        try StateFiles.update(path) { _ in "same" }
        var before = stat(), after = stat()
        XCTAssertEqual(stat(path, &before), 0)
        try StateFiles.update(path) { _ in nil }
        try StateFiles.update(path) { $0 }
        XCTAssertEqual(stat(path, &after), 0)
        XCTAssertEqual(before.st_ino, after.st_ino, "not replaced")
    }

    func testAFailingChangeWritesNothing() throws {
        struct Refused: Error {}
        let path = directory + "/record.json"
        try StateFiles.update(path) { _ in "kept" }
        XCTAssertThrowsError(try StateFiles.update(path) { _ in throw Refused() }) { XCTAssertTrue($0 is Refused) }
        XCTAssertEqual(try StateFiles.read(path), "kept")
    }

    /// Concurrent updaters (here threads, each with its own lock descriptor, as two processes
    /// would have) take turns: no increment is lost.
    func testConcurrentUpdatesTakeTurns() throws {
        let path = directory + "/counter"
        let failures = NSLock()
        nonisolated(unsafe) var errors: [String] = []
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            for _ in 0..<25 {
                do {
                    try StateFiles.update(path) { current in String((current.flatMap { Int($0) } ?? 0) + 1) }
                } catch {
                    failures.withLock { errors.append("\(error)") }
                }
            }
        }
        XCTAssertEqual(errors, [])
        XCTAssertEqual(try StateFiles.read(path), "200")
    }
}
