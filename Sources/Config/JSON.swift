/// A small, strict JSON parser (RFC 8259) that keeps where each value starts.
///
/// Foundation's `JSONSerialization` is not used because on Linux it cannot tell `true` from `1`,
/// loses positions, and silently keeps one of two duplicate keys.

/// A position in the source text; both 1-based. Columns count Unicode scalars.
public struct SourcePosition: Equatable, Sendable {
    public var line: Int
    public var column: Int

    public init(line: Int, column: Int) { self.line = line; self.column = column }
}

/// One member of a JSON object, in source order.
public struct JSONMember: Sendable {
    public var key: String
    public var keyPosition: SourcePosition
    public var value: JSONValue

    public init(key: String, keyPosition: SourcePosition, value: JSONValue) {
        self.key = key; self.keyPosition = keyPosition; self.value = value
    }
}

/// A parsed JSON value and the position of its first character.
public struct JSONValue: Sendable {
    public enum Kind: Sendable {
        case null
        case bool(Bool)
        /// The number's text exactly as written, so that integers stay exact.
        case number(String)
        case string(String)
        case array([JSONValue])
        case object([JSONMember])
    }

    public var kind: Kind
    public var position: SourcePosition

    public init(kind: Kind, position: SourcePosition) { self.kind = kind; self.position = position }

    /// A short name of the value's type for messages ("a string", "an array").
    public var typeDescription: String {
        switch kind {
        case .null: "null"
        case .bool: "a boolean"
        case .number: "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }
}

/// Result of parsing: the value, unless the text is not JSON, and every problem found.
/// Duplicate keys are problems that do not stop parsing (the first occurrence is kept).
public struct JSONParseResult: Sendable {
    public var value: JSONValue?
    public var problems: [ConfigurationProblem]
}

/// Recursive-descent parser over UTF-8 bytes with a nesting limit, so that hostile input can
/// neither overflow the stack nor trap.
public struct JSONParser {
    public static let defaultMaximumDepth = 64

    private let bytes: [UInt8]
    private var index = 0
    private var line = 1
    private var column = 1
    private let maximumDepth: Int
    private var problems: [ConfigurationProblem] = []

    private struct SyntaxError: Error {
        var path: String
        var position: SourcePosition
        var message: String
    }

    init(_ text: String, maximumDepth: Int = JSONParser.defaultMaximumDepth) {
        self.bytes = Array(text.utf8)
        self.maximumDepth = maximumDepth
    }

    /// Parses `text` as one JSON document.
    public static func parse(_ text: String, maximumDepth: Int = JSONParser.defaultMaximumDepth) -> JSONParseResult {
        var parser = JSONParser(text, maximumDepth: maximumDepth)
        return parser.parseDocument()
    }

    mutating func parseDocument() -> JSONParseResult {
        // A UTF-8 byte order mark is tolerated.
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { index = 3 }
        do throws(SyntaxError) {
            skipWhitespace()
            let value = try parseValue(path: "$", depth: 1)
            skipWhitespace()
            if let byte = peek() {
                throw SyntaxError(path: "$", position: position,
                                  message: "unexpected \(describe(byte)) after the end of the document")
            }
            return JSONParseResult(value: value, problems: problems)
        } catch {
            let problem = ConfigurationProblem(path: error.path, line: error.position.line,
                                               column: error.position.column, message: error.message)
            return JSONParseResult(value: nil, problems: problems + [problem])
        }
    }

    // MARK: Values

    private mutating func parseValue(path: String, depth: Int) throws(SyntaxError) -> JSONValue {
        let start = position
        guard let byte = peek() else {
            throw SyntaxError(path: path, position: start, message: "expected a JSON value, found the end of the text")
        }
        switch byte {
        case UInt8(ascii: "{"):
            try checkDepth(depth, path: path)
            return JSONValue(kind: .object(try parseObject(path: path, depth: depth)), position: start)
        case UInt8(ascii: "["):
            try checkDepth(depth, path: path)
            return JSONValue(kind: .array(try parseArray(path: path, depth: depth)), position: start)
        case UInt8(ascii: "\""):
            return JSONValue(kind: .string(try parseString(path: path)), position: start)
        case UInt8(ascii: "t"):
            try expectLiteral("true", path: path)
            return JSONValue(kind: .bool(true), position: start)
        case UInt8(ascii: "f"):
            try expectLiteral("false", path: path)
            return JSONValue(kind: .bool(false), position: start)
        case UInt8(ascii: "n"):
            try expectLiteral("null", path: path)
            return JSONValue(kind: .null, position: start)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return JSONValue(kind: .number(try parseNumber(path: path)), position: start)
        default:
            throw SyntaxError(path: path, position: start, message: "expected a JSON value, found \(describe(byte))")
        }
    }

    private func checkDepth(_ depth: Int, path: String) throws(SyntaxError) {
        guard depth <= maximumDepth else {
            throw SyntaxError(path: path, position: position,
                              message: "arrays and objects are nested more than \(maximumDepth) levels deep")
        }
    }

    private mutating func parseObject(path: String, depth: Int) throws(SyntaxError) -> [JSONMember] {
        advance()  // {
        var members: [JSONMember] = []
        var seen: [String: SourcePosition] = [:]
        skipWhitespace()
        if peek() == UInt8(ascii: "}") { advance(); return members }
        while true {
            skipWhitespace()
            let keyPosition = position
            guard peek() == UInt8(ascii: "\"") else {
                throw SyntaxError(path: path, position: keyPosition,
                                  message: "expected a key in double quotes, found \(describeNext())")
            }
            let key = try parseString(path: path)
            skipWhitespace()
            try expect(UInt8(ascii: ":"), what: "':' after the key", path: path)
            skipWhitespace()
            let memberPath = JSONPath.member(path, key)
            let value = try parseValue(path: memberPath, depth: depth + 1)
            if let first = seen[key] {
                problems.append(ConfigurationProblem(
                    path: memberPath, line: keyPosition.line, column: keyPosition.column,
                    message: "duplicate key \"\(key)\" (first at line \(first.line), column \(first.column)); remove one"))
            } else {
                seen[key] = keyPosition
                members.append(JSONMember(key: key, keyPosition: keyPosition, value: value))
            }
            skipWhitespace()
            if peek() == UInt8(ascii: ",") { advance(); continue }
            try expect(UInt8(ascii: "}"), what: "',' or '}' in the object", path: path)
            return members
        }
    }

    private mutating func parseArray(path: String, depth: Int) throws(SyntaxError) -> [JSONValue] {
        advance()  // [
        var elements: [JSONValue] = []
        skipWhitespace()
        if peek() == UInt8(ascii: "]") { advance(); return elements }
        while true {
            skipWhitespace()
            elements.append(try parseValue(path: JSONPath.element(path, elements.count), depth: depth + 1))
            skipWhitespace()
            if peek() == UInt8(ascii: ",") { advance(); continue }
            try expect(UInt8(ascii: "]"), what: "',' or ']' in the array", path: path)
            return elements
        }
    }

    // MARK: Scalars

    private mutating func parseString(path: String) throws(SyntaxError) -> String {
        let start = position
        advance()  // opening quote
        var scalars = String.UnicodeScalarView()
        var run: [UInt8] = []  // raw UTF-8 between escapes; the input is valid UTF-8
        func flush() {
            scalars.append(contentsOf: String(decoding: run, as: UTF8.self).unicodeScalars)
            run.removeAll(keepingCapacity: true)
        }
        while true {
            guard let byte = peek() else {
                throw SyntaxError(path: path, position: start, message: "string is not terminated")
            }
            switch byte {
            case UInt8(ascii: "\""):
                advance()
                flush()
                return String(scalars)
            case UInt8(ascii: "\\"):
                flush()
                scalars.append(try parseEscape(path: path))
            case 0..<0x20:
                throw SyntaxError(path: path, position: position,
                                  message: "control character \(describe(byte)) in a string; write it as an escape such as \\n")
            default:
                run.append(byte)
                advance()
            }
        }
    }

    private mutating func parseEscape(path: String) throws(SyntaxError) -> Unicode.Scalar {
        let start = position
        advance()  // backslash
        guard let byte = peek() else {
            throw SyntaxError(path: path, position: start, message: "string is not terminated")
        }
        advance()
        switch byte {
        case UInt8(ascii: "\""): return "\""
        case UInt8(ascii: "\\"): return "\\"
        case UInt8(ascii: "/"): return "/"
        case UInt8(ascii: "b"): return "\u{08}"
        case UInt8(ascii: "f"): return "\u{0C}"
        case UInt8(ascii: "n"): return "\n"
        case UInt8(ascii: "r"): return "\r"
        case UInt8(ascii: "t"): return "\t"
        case UInt8(ascii: "u"): return try parseUnicodeEscape(start: start, path: path)
        default:
            throw SyntaxError(path: path, position: start,
                              message: "invalid escape \\\(describeRaw(byte)); valid escapes are \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX")
        }
    }

    private mutating func parseUnicodeEscape(start: SourcePosition, path: String) throws(SyntaxError) -> Unicode.Scalar {
        let first = try parseHex4(start: start, path: path)
        if (0xD800...0xDBFF).contains(first) {
            // A high surrogate must be followed by an escaped low surrogate.
            guard peek() == UInt8(ascii: "\\"), peek(offset: 1) == UInt8(ascii: "u") else {
                throw SyntaxError(path: path, position: start, message: "\\u escape is an unpaired surrogate")
            }
            advance(); advance()
            let second = try parseHex4(start: start, path: path)
            guard (0xDC00...0xDFFF).contains(second) else {
                throw SyntaxError(path: path, position: start, message: "\\u escape is an unpaired surrogate")
            }
            let value = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            guard let scalar = Unicode.Scalar(value) else {
                throw SyntaxError(path: path, position: start, message: "\\u escape is not a Unicode scalar")
            }
            return scalar
        }
        guard let scalar = Unicode.Scalar(first) else {
            throw SyntaxError(path: path, position: start, message: "\\u escape is an unpaired surrogate")
        }
        return scalar
    }

    private mutating func parseHex4(start: SourcePosition, path: String) throws(SyntaxError) -> UInt32 {
        var value: UInt32 = 0
        for _ in 0..<4 {
            guard let byte = peek(), let digit = hexValue(byte) else {
                throw SyntaxError(path: path, position: start, message: "\\u must be followed by four hex digits")
            }
            value = value << 4 | UInt32(digit)
            advance()
        }
        return value
    }

    /// Checks the RFC 8259 number grammar and returns the text unchanged.
    private mutating func parseNumber(path: String) throws(SyntaxError) -> String {
        let start = position
        let startIndex = index
        let invalid = SyntaxError(path: path, position: start,
                                  message: "invalid number; numbers look like 12, -3, 0.5 or 1e6 (no leading zeros or '+')")
        if peek() == UInt8(ascii: "-") { advance() }
        guard let first = peek(), isDigit(first) else { throw invalid }
        advance()
        if first != UInt8(ascii: "0") { skipDigits() } else if let next = peek(), isDigit(next) { throw invalid }
        if peek() == UInt8(ascii: ".") {
            advance()
            guard let next = peek(), isDigit(next) else { throw invalid }
            skipDigits()
        }
        if peek() == UInt8(ascii: "e") || peek() == UInt8(ascii: "E") {
            advance()
            if peek() == UInt8(ascii: "+") || peek() == UInt8(ascii: "-") { advance() }
            guard let next = peek(), isDigit(next) else { throw invalid }
            skipDigits()
        }
        return String(decoding: bytes[startIndex..<index], as: UTF8.self)
    }

    private mutating func expectLiteral(_ literal: String, path: String) throws(SyntaxError) {
        let start = position
        for expected in literal.utf8 {
            guard peek() == expected else {
                throw SyntaxError(path: path, position: start,
                                  message: "expected a JSON value; literals are true, false and null")
            }
            advance()
        }
    }

    // MARK: Bytes and positions

    private var position: SourcePosition { SourcePosition(line: line, column: column) }

    private func peek(offset: Int = 0) -> UInt8? {
        let i = index + offset
        return i < bytes.count ? bytes[i] : nil
    }

    private mutating func advance() {
        guard index < bytes.count else { return }
        let byte = bytes[index]
        index += 1
        if byte == UInt8(ascii: "\n") {
            line += 1
            column = 1
        } else if byte & 0xC0 != 0x80 {
            // Continuation bytes do not start a new scalar.
            column += 1
        }
    }

    private mutating func skipWhitespace() {
        while let byte = peek(), byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D { advance() }
    }

    private mutating func skipDigits() {
        while let byte = peek(), isDigit(byte) { advance() }
    }

    private mutating func expect(_ byte: UInt8, what: String, path: String) throws(SyntaxError) {
        guard peek() == byte else {
            throw SyntaxError(path: path, position: position, message: "expected \(what), found \(describeNext())")
        }
        advance()
    }

    private func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

    private func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    private func describeNext() -> String {
        guard let byte = peek() else { return "the end of the text" }
        return describe(byte)
    }

    private func describe(_ byte: UInt8) -> String {
        if byte >= 0x21 && byte < 0x7F { return "'\(Character(Unicode.Scalar(byte)))'" }
        return "byte 0x" + (byte < 16 ? "0" : "") + String(byte, radix: 16, uppercase: true)
    }

    private func describeRaw(_ byte: UInt8) -> String {
        byte >= 0x21 && byte < 0x7F ? String(Character(Unicode.Scalar(byte))) : describe(byte)
    }
}

/// Builds the JSON paths used in problems: `$.tenants[0].ports[1].mac`.
enum JSONPath {
    static func member(_ parent: String, _ key: String) -> String {
        if isIdentifier(key) { return parent + "." + key }
        return parent + "[" + quoted(key) + "]"
    }

    static func element(_ parent: String, _ index: Int) -> String { parent + "[\(index)]" }

    /// The path one level up, or nil for `$`.
    static func parent(of path: String) -> String? {
        guard path != "$" else { return nil }
        // Walk back over the last `.key` or `[...]` component.
        if path.hasSuffix("]"), let open = path.lastIndex(of: "[") { return String(path[..<open]) }
        if let dot = path.lastIndex(of: ".") { return String(path[..<dot]) }
        return nil
    }

    private static func isIdentifier(_ key: String) -> Bool {
        guard let first = key.unicodeScalars.first, first.properties.isAlphabetic || first == "_" else { return false }
        return key.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "_") }
    }

    static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}
