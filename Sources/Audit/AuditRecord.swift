// The audit record and its codec: pure (bytes in, bytes out), shared by the log writer, the
// verifier and the fuzz target. No HostOS here, so the fuzz recipe compiles it alone.
import CDigest

/// What an audited action came to.
public enum AuditOutcome: Sendable, Equatable, Hashable {
    case allowed
    case denied(reason: String)
    case failed(reason: String)

    /// The record's `outcome` field: "allowed", "denied" or "failed".
    public var name: String {
        switch self {
        case .allowed: "allowed"
        case .denied: "denied"
        case .failed: "failed"
        }
    }

    /// The record's `reason` field: why it was denied or failed; nil when allowed.
    public var reason: String? {
        switch self {
        case .allowed: nil
        case .denied(let reason), .failed(let reason): reason
        }
    }
}

/// One event to audit: who did what to which object, and how it ended.
public struct AuditEvent: Sendable, Equatable {
    /// The principal of the daemon's own events (start, measured launch, a child's exit).
    public static let daemonPrincipal = "bulkhead"
    /// The principal of a caller whose uid the configuration does not name.
    public static let unknownPrincipal = "unknown"

    /// The caller's principal name, `daemonPrincipal` or `unknownPrincipal`.
    public var principal: String
    /// The caller's uid (from SO_PEERCRED); nil for the daemon's own events.
    public var uid: UInt32?
    /// What was done, dotted: "partition.start", "config.apply", "api.status", "child.exit".
    public var action: String
    /// The object acted on, e.g. "blue/guest"; "" when none.
    public var target: String
    public var outcome: AuditOutcome
    /// Further facts as strings (digests, exit statuses, changed objects); written sorted by key.
    public var detail: [String: String]

    public init(principal: String, uid: UInt32? = nil, action: String, target: String = "",
                outcome: AuditOutcome, detail: [String: String] = [:]) {
        self.principal = principal
        self.uid = uid
        self.action = action
        self.target = target
        self.outcome = outcome
        self.detail = detail
    }
}

/// A record as the log holds it: an event, when it happened and its place in the hash chain.
public struct AuditRecord: Sendable, Equatable {
    /// 1 for the log's first record, then one more for each.
    public var sequence: UInt64
    /// UTC, RFC 3339 with milliseconds: "2025-01-31T23:59:59.123Z".
    public var time: String
    public var event: AuditEvent
    /// Hex SHA-256 of the previous record (`AuditRecordCodec.zeroHash` for the first).
    public var previousHash: String
    /// Hex SHA-256 of this record's bytes before `,"hash":`.
    public var hash: String
}

/// A line that is not an audit record as the log writer writes it.
public struct AuditLineError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What is wrong, and at which byte of the line (0-based).
    public let reason: String
    public var description: String { reason }
}

/// The audit log's line format: one JSON object per line, fields in a fixed order, the hash last.
///
///     {"seq":1,"time":"...","principal":"...","uid":0,"action":"...","target":"...",
///      "outcome":"allowed","reason":null,"detail":{},"prev":"000...","hash":"..."}
///
/// `hash` is the SHA-256 of every byte before `,"hash":`, so it covers `prev` and the chain
/// covers every record before.
public enum AuditRecordCodec {
    /// The `prev` of the first record.
    public static let zeroHash = String(repeating: "0", count: 64)
    /// The longest line the writer writes or the verifier accepts (without its newline): a
    /// longer one is refused (writer) or malformed (verifier), so no reader buffers without bound.
    public static let maximumLineLength = 64 * 1024

    /// The record's bytes before `,"hash":`, which its hash covers.
    public static func body(sequence: UInt64, time: String, event: AuditEvent, previousHash: String) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        append(#"{"seq":"#, to: &out)
        append(String(sequence), to: &out)
        append(#","time":"#, to: &out)
        appendString(time, to: &out)
        append(#","principal":"#, to: &out)
        appendString(event.principal, to: &out)
        append(#","uid":"#, to: &out)
        append(event.uid.map { String($0) } ?? "null", to: &out)
        append(#","action":"#, to: &out)
        appendString(event.action, to: &out)
        append(#","target":"#, to: &out)
        appendString(event.target, to: &out)
        append(#","outcome":"#, to: &out)
        appendString(event.outcome.name, to: &out)
        append(#","reason":"#, to: &out)
        if let reason = event.outcome.reason { appendString(reason, to: &out) } else { append("null", to: &out) }
        append(#","detail":{"#, to: &out)
        // Sorted by their UTF-8 bytes: the same detail always makes the same bytes.
        for (index, key) in event.detail.keys.sorted(by: { $0.utf8.lexicographicallyPrecedes($1.utf8) }).enumerated() {
            if index > 0 { out.append(UInt8(ascii: ",")) }
            appendString(key, to: &out)
            out.append(UInt8(ascii: ":"))
            appendString(event.detail[key] ?? "", to: &out)
        }
        append(#"},"prev":"#, to: &out)
        appendString(previousHash, to: &out)
        return out
    }

    /// The whole line for `body`, newline included, and its hash.
    public static func line(body: [UInt8]) -> (line: [UInt8], hash: String) {
        let hash = sha256Hex(body[...])
        var line = body
        line.reserveCapacity(body.count + 76)
        append(#","hash":""#, to: &line)
        append(hash, to: &line)
        append("\"}\n", to: &line)
        return (line, hash)
    }

    /// Lowercase hex SHA-256 of `bytes`.
    public static func sha256Hex(_ bytes: ArraySlice<UInt8>) -> String {
        var digest = [UInt8](repeating: 0, count: 32)
        let status = bytes.withUnsafeBytes { input in
            digest.withUnsafeMutableBufferPointer { bh_sha256(input.baseAddress, input.count, $0.baseAddress) }
        }
        // libcrypto's SHA-256 fails only when it cannot allocate: nothing to go on with.
        precondition(status == 0, "SHA-256 from libcrypto failed")
        return hex(digest)
    }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes one line (without its newline). Returns the record and where its hashed body ends.
    /// Strict: the writer's field order, no whitespace, lowercase hex, valid UTF-8, no raw control
    /// characters, a reason exactly when denied or failed, no duplicate detail keys.
    public static func decode(_ line: ArraySlice<UInt8>) -> Result<(record: AuditRecord, bodyEnd: Int), AuditLineError> {
        guard line.count <= maximumLineLength else {
            return .failure(AuditLineError(reason: "the line is \(line.count) bytes long, more than the \(maximumLineLength) a record may have"))
        }
        var scanner = LineScanner(bytes: line)
        do throws(AuditLineError) {
            try scanner.expect(#"{"seq":"#)
            let sequence = try scanner.unsigned(maximum: UInt64.max, field: "seq")
            try scanner.expect(#","time":"#)
            let time = try scanner.string(field: "time")
            guard isTimestamp(time) else { throw scanner.error("\"time\" is not a UTC RFC 3339 time with milliseconds") }
            try scanner.expect(#","principal":"#)
            let principal = try scanner.string(field: "principal")
            try scanner.expect(#","uid":"#)
            let uid: UInt32? = try scanner.literal("null") ? nil
                : UInt32(try scanner.unsigned(maximum: UInt64(UInt32.max), field: "uid"))
            try scanner.expect(#","action":"#)
            let action = try scanner.string(field: "action")
            try scanner.expect(#","target":"#)
            let target = try scanner.string(field: "target")
            try scanner.expect(#","outcome":"#)
            let outcomeName = try scanner.string(field: "outcome")
            try scanner.expect(#","reason":"#)
            let reason: String? = try scanner.literal("null") ? nil : try scanner.string(field: "reason")
            let outcome: AuditOutcome
            switch (outcomeName, reason) {
            case ("allowed", nil): outcome = .allowed
            case ("denied", let reason?): outcome = .denied(reason: reason)
            case ("failed", let reason?): outcome = .failed(reason: reason)
            case ("allowed", _?): throw scanner.error("an allowed record has a reason")
            case ("denied", nil), ("failed", nil): throw scanner.error("a \(outcomeName) record has no reason")
            default: throw scanner.error("unknown outcome \"\(outcomeName)\"")
            }
            try scanner.expect(#","detail":{"#)
            var detail: [String: String] = [:]
            if !(try scanner.literal("}")) {
                while true {
                    let key = try scanner.string(field: "detail key")
                    try scanner.expect(":")
                    let value = try scanner.string(field: "detail value")
                    guard detail.updateValue(value, forKey: key) == nil else {
                        throw scanner.error("detail key \"\(key)\" appears twice")
                    }
                    if try scanner.literal("}") { break }
                    try scanner.expect(",")
                }
            }
            try scanner.expect(#","prev":"#)
            let previousHash = try scanner.hexDigest(field: "prev")
            let bodyEnd = scanner.index
            try scanner.expect(#","hash":"#)
            let hash = try scanner.hexDigest(field: "hash")
            try scanner.expect("}")
            guard scanner.index == line.endIndex else { throw scanner.error("bytes after the record's end") }
            let event = AuditEvent(principal: principal, uid: uid, action: action, target: target,
                                   outcome: outcome, detail: detail)
            return .success((AuditRecord(sequence: sequence, time: time, event: event,
                                         previousHash: previousHash, hash: hash), bodyEnd))
        } catch {
            return .failure(error)
        }
    }

    /// "YYYY-MM-DDTHH:MM:SS.mmmZ", digits where digits go.
    static func isTimestamp(_ text: String) -> Bool {
        let pattern = Array("dddd-dd-ddTdd:dd:dd.dddZ".utf8)
        let bytes = Array(text.utf8)
        guard bytes.count == pattern.count else { return false }
        for (byte, expected) in zip(bytes, pattern) {
            if expected == UInt8(ascii: "d") {
                guard byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") else { return false }
            } else if byte != expected {
                return false
            }
        }
        return true
    }

    static func append(_ text: String, to out: inout [UInt8]) {
        out.append(contentsOf: text.utf8)
    }

    /// A JSON string: quotes, backslashes and control characters escaped (so a record never
    /// spans lines), everything else, non-ASCII included, kept as its UTF-8 bytes.
    static func appendString(_ text: String, to out: inout [UInt8]) {
        let digits = Array("0123456789abcdef".utf8)
        out.append(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case 0x0A: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case 0x0D: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case 0x09: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0x08: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "b")])
            case 0x0C: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "f")])
            case 0..<0x20:
                out.append(contentsOf: Array(#"\u00"#.utf8))
                out.append(digits[Int(byte >> 4)])
                out.append(digits[Int(byte & 0xF)])
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

/// The chain's head, kept in its own file beside the log: the last record's sequence and hash,
/// so a log cut short (its last records removed) no longer matches it.
public struct AuditHead: Sendable, Equatable {
    public var sequence: UInt64
    public var hash: String

    /// The head of an empty log.
    public static let empty = AuditHead(sequence: 0, hash: AuditRecordCodec.zeroHash)

    public init(sequence: UInt64, hash: String) {
        self.sequence = sequence
        self.hash = hash
    }

    /// `{"seq":N,"hash":"..."}` and a newline.
    public var encoded: String { #"{"seq":\#(sequence),"hash":"\#(hash)"}"# + "\n" }

    /// Decodes a head file: exactly what `encoded` writes, the final newline optional.
    public static func decode(_ bytes: ArraySlice<UInt8>) -> Result<AuditHead, AuditLineError> {
        var content = bytes
        if content.last == 0x0A { content = content.dropLast() }
        guard content.count <= 256 else { return .failure(AuditLineError(reason: "the head is \(bytes.count) bytes long: not a head")) }
        var scanner = LineScanner(bytes: content)
        do throws(AuditLineError) {
            try scanner.expect(#"{"seq":"#)
            let sequence = try scanner.unsigned(maximum: UInt64.max, field: "seq")
            try scanner.expect(#","hash":"#)
            let hash = try scanner.hexDigest(field: "hash")
            try scanner.expect("}")
            guard scanner.index == content.endIndex else { throw scanner.error("bytes after the head's end") }
            return .success(AuditHead(sequence: sequence, hash: hash))
        } catch {
            return .failure(error)
        }
    }
}

/// Reads one line's fields in order; every failure says what was expected and at which byte.
struct LineScanner {
    let bytes: ArraySlice<UInt8>
    private(set) var index: Int

    init(bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        self.index = bytes.startIndex
    }

    func error(_ reason: String) -> AuditLineError {
        AuditLineError(reason: "\(reason) (byte \(index - bytes.startIndex))")
    }

    /// Consumes `text` if the line continues with it.
    mutating func literal(_ text: StaticString) throws(AuditLineError) -> Bool {
        let count = text.utf8CodeUnitCount
        guard bytes.endIndex - index >= count else { return false }
        let matches = text.withUTF8Buffer { expected in
            var i = 0
            while i < count {
                if bytes[index + i] != expected[i] { return false }
                i += 1
            }
            return true
        }
        if matches { index += count }
        return matches
    }

    mutating func expect(_ text: StaticString) throws(AuditLineError) {
        guard try literal(text) else { throw error("expected \(text)") }
    }

    /// A JSON unsigned integer without leading zeros, at most `maximum`.
    mutating func unsigned(maximum: UInt64, field: String) throws(AuditLineError) -> UInt64 {
        let start = index
        var value: UInt64 = 0
        while index < bytes.endIndex, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") {
            let (times10, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times10.addingReportingOverflow(UInt64(bytes[index] - UInt8(ascii: "0")))
            guard !overflow1, !overflow2, sum <= maximum else { throw error("\"\(field)\" is out of range") }
            value = sum
            index += 1
        }
        guard index > start else { throw error("expected a number for \"\(field)\"") }
        guard index - start == 1 || bytes[start] != UInt8(ascii: "0") else { throw error("\"\(field)\" has a leading zero") }
        return value
    }

    /// 64 lowercase hex digits in quotes.
    mutating func hexDigest(field: String) throws(AuditLineError) -> String {
        guard bytes.endIndex - index >= 66, bytes[index] == UInt8(ascii: "\""), bytes[index + 65] == UInt8(ascii: "\"") else {
            throw error("expected 64 hex digits in quotes for \"\(field)\"")
        }
        let digits = bytes[(index + 1)..<(index + 65)]
        for byte in digits where !((byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "f"))) {
            throw error("\"\(field)\" is not 64 lowercase hex digits")
        }
        index += 66
        return String(decoding: digits, as: UTF8.self)
    }

    /// A JSON string: escapes decoded, surrogate pairs joined, raw control characters and
    /// invalid UTF-8 refused.
    mutating func string(field: String) throws(AuditLineError) -> String {
        guard index < bytes.endIndex, bytes[index] == UInt8(ascii: "\"") else { throw error("expected a string for \"\(field)\"") }
        index += 1
        var out: [UInt8] = []
        while true {
            guard index < bytes.endIndex else { throw error("unterminated string in \"\(field)\"") }
            let byte = bytes[index]
            index += 1
            switch byte {
            case UInt8(ascii: "\""):
                guard let text = String(validating: out, as: UTF8.self) else { throw error("\"\(field)\" is not valid UTF-8") }
                return text
            case 0..<0x20:
                throw error("a raw control character in \"\(field)\"")
            case UInt8(ascii: "\\"):
                guard index < bytes.endIndex else { throw error("unterminated escape in \"\(field)\"") }
                let escape = bytes[index]
                index += 1
                switch escape {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(escape)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "u"):
                    var scalar = UInt32(try hex4(field: field))
                    if scalar >= 0xD800 && scalar < 0xDC00 {
                        guard try literal(#"\u"#) else { throw error("a lone surrogate in \"\(field)\"") }
                        let low = UInt32(try hex4(field: field))
                        guard low >= 0xDC00 && low < 0xE000 else { throw error("a lone surrogate in \"\(field)\"") }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    }
                    guard let unicode = Unicode.Scalar(scalar) else { throw error("a lone surrogate in \"\(field)\"") }
                    UTF8.encode(unicode) { out.append($0) }
                default:
                    throw error("unknown escape in \"\(field)\"")
                }
            default:
                out.append(byte)
            }
        }
    }

    private mutating func hex4(field: String) throws(AuditLineError) -> UInt16 {
        guard bytes.endIndex - index >= 4 else { throw error("a short \\u escape in \"\(field)\"") }
        var value: UInt16 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw error("a bad \\u escape in \"\(field)\"")
            }
            value = value << 4 | UInt16(digit)
            index += 1
        }
        return value
    }
}

/// UTC time stamps for records, computed without the C library (pure, testable).
public enum AuditTime {
    /// RFC 3339 in UTC with milliseconds, e.g. "2025-01-31T23:59:59.123Z", for
    /// `milliseconds` since the Unix epoch (clamped to years 0000-9999).
    public static func rfc3339(millisecondsSinceEpoch milliseconds: Int64) -> String {
        // 0000-01-01 and 9999-12-31T23:59:59.999 as milliseconds since the epoch.
        let clamped = min(max(milliseconds, -62_167_219_200_000), 253_402_300_799_999)
        let days = clamped >= 0 ? clamped / 86_400_000 : (clamped - 86_399_999) / 86_400_000
        let inDay = clamped - days * 86_400_000
        // Days to civil date (proleptic Gregorian), after Howard Hinnant's days_from_civil inverse.
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthIndex = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * monthIndex + 2) / 5 + 1
        let month = monthIndex < 10 ? monthIndex + 3 : monthIndex - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        func pad(_ value: Int64, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T\(pad(inDay / 3_600_000, 2)):"
            + "\(pad(inDay / 60_000 % 60, 2)):\(pad(inDay / 1000 % 60, 2)).\(pad(inDay % 1000, 3))Z"
    }
}
