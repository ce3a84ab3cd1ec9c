import Audit
import Foundation
import XCTest

/// The record codec: field order, escaping, the bytes the hash covers, strict decoding.
final class AuditRecordTests: XCTestCase {
    func testFieldsInFixedOrder() throws {
        let event = AuditEvent(principal: "alice", uid: 1001, action: "partition.start", target: "blue/guest",
                               outcome: .denied(reason: "tenant-admin of red"), detail: ["b": "2", "a": "1"])
        let body = AuditRecordCodec.body(sequence: 7, time: "2025-03-01T12:00:00.250Z", event: event,
                                         previousHash: AuditRecordCodec.zeroHash)
        let (line, hash) = AuditRecordCodec.line(body: body)
        let expected = #"{"seq":7,"time":"2025-03-01T12:00:00.250Z","principal":"alice","uid":1001,"#
            + #""action":"partition.start","target":"blue/guest","outcome":"denied","reason":"tenant-admin of red","#
            + #""detail":{"a":"1","b":"2"},"prev":""# + AuditRecordCodec.zeroHash + #"","hash":""# + hash + "\"}\n"
        XCTAssertEqual(String(decoding: line, as: UTF8.self), expected)

        let daemon = AuditEvent(principal: AuditEvent.daemonPrincipal, action: "launch.measured", outcome: .allowed)
        let daemonLine = AuditRecordCodec.line(body: AuditRecordCodec.body(
            sequence: 1, time: "2025-03-01T12:00:00.250Z", event: daemon, previousHash: hash)).line
        XCTAssertTrue(String(decoding: daemonLine, as: UTF8.self).contains(
            #""uid":null,"action":"launch.measured","target":"","outcome":"allowed","reason":null,"detail":{},"prev":""# + hash))
    }

    /// The hash is SHA-256 over the bytes before `,"hash":`, as an independent tool computes it.
    func testHashCoversEveryByteBeforeTheHashField() throws {
        let (line, hash) = AuditRecordCodec.line(body: AuditRecordCodec.body(
            sequence: 1, time: "2025-03-01T12:00:00.250Z", event: sampleEvent(5), previousHash: String(repeating: "ab", count: 32)))
        let text = String(decoding: line, as: UTF8.self)
        let marker = try XCTUnwrap(text.range(of: #","hash":""#))
        let hashed = Array(text[..<marker.lowerBound].utf8)
        XCTAssertEqual(AuditRecordCodec.sha256Hex(hashed[...]), hash)
        // The same digest from coreutils: not our code computing it twice.
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/sha256sum") else {
            throw XCTSkip("/usr/bin/sha256sum is missing: the digest was checked against libcrypto only")
        }
        let file = NSTemporaryDirectory() + "bulkhead-audit-body-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: file) }
        try writeBytes(hashed, to: file)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
        process.arguments = [file]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        process.waitUntilExit()
        let printed = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(printed.split(separator: " ").first.map(String.init), hash)
    }

    /// Quotes, backslashes and control characters are escaped, non-ASCII stays UTF-8, the record
    /// stays on one line and decodes to the same event.
    func testEscapingKeepsTheRecordOnOneLine() throws {
        let awkward = "q\"b\\n\nr\rt\tnul\u{0}us\u{1F}del\u{7F} é 漢 🙂 \u{2028}"
        let event = AuditEvent(principal: awkward, uid: UInt32.max, action: "config.apply", target: awkward,
                               outcome: .failed(reason: awkward), detail: [awkward: awkward, "": ""])
        let (line, _) = AuditRecordCodec.line(body: AuditRecordCodec.body(
            sequence: UInt64.max, time: "1999-12-31T23:59:59.999Z", event: event, previousHash: AuditRecordCodec.zeroHash))
        XCTAssertEqual(line.filter { $0 == 0x0A }.count, 1)
        XCTAssertEqual(line.last, 0x0A)
        XCTAssertFalse(line.dropLast().contains { $0 < 0x20 }, "a raw control character in \(line)")
        let text = String(decoding: line, as: UTF8.self)
        XCTAssertTrue(text.contains(#"q\"b\\n\nr\rt\tnul\u0000us\u001fdel"#))
        XCTAssertTrue(text.contains("é 漢 🙂"))
        // Any JSON parser reads the same strings back.
        let parsed = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any])
        XCTAssertEqual(parsed["principal"] as? String, awkward)
        XCTAssertEqual((parsed["detail"] as? [String: String])?[awkward], awkward)
        let record = try decodeLine(line)
        XCTAssertEqual(record.event, event)
        XCTAssertEqual(record.sequence, UInt64.max)
    }

    func testDecodingIsStrict() throws {
        let good = String(decoding: AuditRecordCodec.line(body: AuditRecordCodec.body(
            sequence: 12, time: "2025-03-01T12:00:00.250Z", event: sampleEvent(1), previousHash: AuditRecordCodec.zeroHash)).line.dropLast(),
            as: UTF8.self)
        XCTAssertNoThrow(try AuditRecordCodec.decode(Array(good.utf8)[...]).get())
        let variants: [(String, String)] = [
            ("a space", good.replacingOccurrences(of: #"{"seq":12"#, with: #"{ "seq":12"#)),
            ("a leading zero", good.replacingOccurrences(of: #""seq":12"#, with: #""seq":012"#)),
            ("fields swapped", good.replacingOccurrences(of: #""principal":"alice","uid":1001"#, with: #""uid":1001,"principal":"alice""#)),
            ("uppercase hex", good.replacingOccurrences(of: #""prev":"000"#, with: #""prev":"A00"#)),
            ("a reason when allowed", good.replacingOccurrences(of: #""outcome":"denied""#, with: #""outcome":"allowed""#)),
            ("an unknown outcome", good.replacingOccurrences(of: #""outcome":"denied""#, with: #""outcome":"maybe""#)),
            ("a bad time", good.replacingOccurrences(of: "2025-03-01T12:00:00.250Z", with: "2025-03-01 12:00:00")),
            ("a duplicate key", good.replacingOccurrences(of: #""detail":{"#, with: #""detail":{"number":"1","#)),
            ("a raw newline", good.replacingOccurrences(of: "alice", with: "ali\nce")),
            ("a lone surrogate", good.replacingOccurrences(of: "alice", with: #"ali\ud800ce"#)),
            ("a uid too large", good.replacingOccurrences(of: #""uid":1001"#, with: #""uid":4294967296"#)),
            ("trailing bytes", good + " "),
            ("cut short", String(good.dropLast())),
        ]
        for (what, line) in variants {
            XCTAssertNotEqual(line, good, "variant '\(what)' did not change the line")
            XCTAssertThrowsError(try AuditRecordCodec.decode(Array(line.utf8)[...]).get(), "\(what) was accepted")
        }
        let invalidUTF8 = Array(good.utf8).map { $0 == UInt8(ascii: "l") ? 0xFF : $0 }
        XCTAssertThrowsError(try AuditRecordCodec.decode(invalidUTF8[...]).get())
    }

    func testTimesAreUTCWithMilliseconds() {
        XCTAssertEqual(AuditTime.rfc3339(millisecondsSinceEpoch: 0), "1970-01-01T00:00:00.000Z")
        XCTAssertEqual(AuditTime.rfc3339(millisecondsSinceEpoch: -1), "1969-12-31T23:59:59.999Z")
        XCTAssertEqual(AuditTime.rfc3339(millisecondsSinceEpoch: 951_782_400_123), "2000-02-29T00:00:00.123Z")
        XCTAssertEqual(AuditTime.rfc3339(millisecondsSinceEpoch: 1_735_689_599_999), "2024-12-31T23:59:59.999Z")
        XCTAssertEqual(AuditTime.rfc3339(millisecondsSinceEpoch: 4_107_542_400_000), "2100-03-01T00:00:00.000Z")
        // Against Foundation's formatter (whole seconds: exact in a Double) over a spread of instants.
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        formatter.timeZone = TimeZone(identifier: "UTC")
        var state: UInt64 = 1
        for _ in 0..<2000 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            let instant = Int64(state >> 24) % 4_000_000_000_000
            let seconds = formatter.string(from: Date(timeIntervalSince1970: Double(instant / 1000)))
            let milliseconds = String(format: ".%03dZ", Int(instant % 1000))
            XCTAssertEqual(AuditTime.rfc3339(millisecondsSinceEpoch: instant), seconds.dropLast() + milliseconds, "at \(instant) ms")
        }
    }
}
