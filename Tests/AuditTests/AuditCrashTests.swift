import Audit
import Foundation
import Synchronization
import XCTest

/// A writer killed (SIGKILL) at arbitrary points of its appends: every record it acknowledged
/// is in the log, and the log opens (repaired where the kill fell between the log's write and
/// the head's update) and verifies intact. The writer is this test bundle run again, as the
/// child test below; a kill leaves the page cache, so this covers process crashes, and
/// `AuditLogTests.testEveryCrashPointRecoversOrIsReportedCutShort` the states a machine crash
/// can leave on the disk.
final class AuditCrashTests: XCTestCase {
    private static let childDirectoryVariable = "BULKHEAD_AUDIT_CRASH_CHILD"

    /// The child: appends until killed, printing "acked N" once append(N) returned.
    func testChildAppendsUntilKilled() throws {
        guard let directory = ProcessInfo.processInfo.environment[Self.childDirectoryVariable] else {
            throw XCTSkip("runs only as the child of testKilledWriterLosesNoAcknowledgedRecord")
        }
        let log = try AuditLog(path: directory + "/audit.log", headPath: directory + "/audit.log.head")
        FileHandle.standardOutput.write(Data("opened \(log.lastSequence)\n".utf8))
        var number = 0
        while true {
            number += 1
            let sequence = try log.append(sampleEvent(number, thread: Int(getpid())))
            FileHandle.standardOutput.write(Data("acked \(sequence)\n".utf8))
        }
    }

    func testKilledWriterLosesNoAcknowledgedRecord() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        var generator = SystemRandomNumberGenerator()
        var acknowledged: UInt64 = 0
        var repairedHeads = 0
        for round in 1...12 {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = ["AuditTests.AuditCrashTests/testChildAppendsUntilKilled"]
            process.environment = ProcessInfo.processInfo.environment.merging([Self.childDirectoryVariable: directory]) { $1 }
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardError = FileHandle.nullDevice
            let progress = Mutex<(opened: UInt64?, acked: UInt64, ended: Bool)>((nil, 0, false))
            let reader = Thread {
                var pending = ""
                while true {
                    let data = pipe.fileHandleForReading.availableData
                    if data.isEmpty { break }
                    pending += String(decoding: data, as: UTF8.self)
                    while let newline = pending.firstIndex(of: "\n") {
                        let line = pending[..<newline]
                        pending = String(pending[pending.index(after: newline)...])
                        progress.withLock { state in
                            if line.hasPrefix("acked "), let value = UInt64(line.dropFirst(6)) { state.acked = value }
                            if line.hasPrefix("opened "), let value = UInt64(line.dropFirst(7)) { state.opened = value }
                        }
                    }
                }
                progress.withLock { $0.ended = true }
            }
            try process.run()
            reader.start()
            // Kill it after a random number of acknowledged appends of this round.
            let target = acknowledged + UInt64.random(in: 1...40, using: &generator)
            let deadline = Date().addingTimeInterval(60)
            while progress.withLock({ $0.acked < target && !$0.ended }) && Date() < deadline {
                usleep(200)
            }
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            while !progress.withLock({ $0.ended }) && Date() < deadline { usleep(200) }
            let state = progress.withLock { $0 }
            XCTAssertEqual(process.terminationReason, .uncaughtSignal, "round \(round): the child ended by itself")
            XCTAssertGreaterThanOrEqual(state.acked, target, "round \(round): the child acknowledged too few before the deadline")
            if let opened = state.opened {
                // The child's open kept every record the previous child acknowledged.
                XCTAssertGreaterThanOrEqual(opened, acknowledged, "round \(round): acknowledged records lost")
            } else {
                XCTFail("round \(round): the child did not open the log")
            }
            acknowledged = state.acked

            let report = try AuditLog.verify(path: directory + "/audit.log", headPath: directory + "/audit.log.head")
            XCTAssertNil(report.problem, "round \(round): \(report)")
            XCTAssertGreaterThanOrEqual(UInt64(report.lines), acknowledged, "round \(round): \(report)")
            if report.notes.contains(where: { $0.contains("not yet covered by the head") }) { repairedHeads += 1 }
        }
        let log = try AuditLog(path: directory + "/audit.log", headPath: directory + "/audit.log.head")
        XCTAssertGreaterThanOrEqual(log.lastSequence, acknowledged)
        try log.append(sampleEvent(0))
        XCTAssertNil(try AuditLog.verify(path: directory + "/audit.log", headPath: directory + "/audit.log.head").problem)
        print("audit: 12 writers killed, \(log.lastSequence - 1) records kept, \(acknowledged) acknowledged, "
              + "\(repairedHeads) kill(s) between a record's write and its head's update")
    }
}
