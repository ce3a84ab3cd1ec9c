import Audit
import Foundation
import XCTest

/// A fresh directory under the temporary directory, removed by the caller's `defer`.
func makeTemporaryDirectory() throws -> String {
    let path = NSTemporaryDirectory() + "bulkhead-audit-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func readBytes(_ path: String) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
}

func writeBytes(_ bytes: [UInt8], to path: String) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// An event that names its origin, so a test can tell records apart.
func sampleEvent(_ number: Int, thread: Int = 0) -> AuditEvent {
    let outcome: AuditOutcome = switch number % 3 {
    case 0: .allowed
    case 1: .denied(reason: "role operator may not apply configurations")
    default: .failed(reason: "partition exited with status \(number)")
    }
    return AuditEvent(principal: number % 4 == 0 ? AuditEvent.daemonPrincipal : "alice",
                      uid: number % 4 == 0 ? nil : 1000 + UInt32(number % 7),
                      action: ["partition.start", "config.apply", "api.status", "child.exit"][number % 4],
                      target: number % 5 == 0 ? "" : "blue/guest-\(number)",
                      outcome: outcome,
                      detail: ["thread": String(thread), "number": String(number)])
}

/// The log's complete lines, each with its newline.
func splitLines(_ bytes: [UInt8]) -> [[UInt8]] {
    var lines: [[UInt8]] = []
    var current: [UInt8] = []
    for byte in bytes {
        current.append(byte)
        if byte == 0x0A {
            lines.append(current)
            current = []
        }
    }
    return lines
}

/// A log of `count` records written by `AuditLog`, with its head: (log bytes, head bytes, directory).
func writtenLog(count: Int) throws -> (log: [UInt8], head: [UInt8]) {
    let directory = try makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let log = try AuditLog(path: directory + "/audit.log", headPath: directory + "/audit.log.head")
    for number in 1...count { try log.append(sampleEvent(number)) }
    return (try readBytes(directory + "/audit.log"), try readBytes(directory + "/audit.log.head"))
}

/// A record line with a correct hash of its own, as someone without the writer would forge it.
func forgedLine(sequence: UInt64, previousHash: String, action: String = "partition.stop") -> (line: [UInt8], hash: String) {
    let event = AuditEvent(principal: "mallory", uid: 666, action: action, target: "red/guest", outcome: .allowed)
    let body = AuditRecordCodec.body(sequence: sequence, time: "2025-01-01T00:00:00.000Z", event: event, previousHash: previousHash)
    return AuditRecordCodec.line(body: body)
}

/// The record on a line (with or without its newline).
func decodeLine(_ line: [UInt8]) throws -> AuditRecord {
    let content = line.last == 0x0A ? line.dropLast() : line[...]
    return try AuditRecordCodec.decode(content).get().record
}
