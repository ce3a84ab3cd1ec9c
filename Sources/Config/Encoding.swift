/// Building and writing JSON values: the management API answers with the configuration file's
/// own objects (parsed by `JSONParser`) and with values it builds, through one serializer.

extension SourcePosition {
    /// The position of a value that was built, not parsed (line and column 0).
    public static let built = SourcePosition(line: 0, column: 0)
}

extension JSONValue {
    public static let null = JSONValue(kind: .null, position: .built)

    public static func bool(_ value: Bool) -> JSONValue { JSONValue(kind: .bool(value), position: .built) }

    public static func string(_ value: String) -> JSONValue { JSONValue(kind: .string(value), position: .built) }

    /// An integer, written exactly.
    public static func number(_ value: some BinaryInteger) -> JSONValue {
        JSONValue(kind: .number(String(value)), position: .built)
    }

    public static func array(_ elements: [JSONValue]) -> JSONValue { JSONValue(kind: .array(elements), position: .built) }

    /// An object with these members, in this order.
    public static func object(_ members: [(String, JSONValue)]) -> JSONValue {
        JSONValue(kind: .object(members.map { JSONMember(key: $0.0, keyPosition: .built, value: $0.1) }), position: .built)
    }

    /// The value of member `key` of an object; nil for a missing key or a value that is no object.
    public subscript(key: String) -> JSONValue? {
        guard case .object(let members) = kind else { return nil }
        return members.first { $0.key == key }?.value
    }

    /// The elements of an array; nil for any other value.
    public var arrayElements: [JSONValue]? {
        if case .array(let elements) = kind { return elements }
        return nil
    }

    /// The text of a string; nil for any other value.
    public var stringValue: String? {
        if case .string(let text) = kind { return text }
        return nil
    }

    /// The value as RFC 8259 JSON text. Strings are escaped (quotes, backslashes and control
    /// characters; the rest stays UTF-8), numbers are written as they were parsed or built.
    /// `pretty` indents nested values by two spaces per level and keeps short arrays of scalars
    /// on one line.
    public func serialized(pretty: Bool = false) -> String {
        var out = ""
        write(to: &out, pretty: pretty, indent: 0)
        return out
    }

    private func write(to out: inout String, pretty: Bool, indent: Int) {
        switch kind {
        case .null: out += "null"
        case .bool(let value): out += value ? "true" : "false"
        case .number(let text): out += text
        case .string(let text): JSONValue.writeString(text, to: &out)
        case .array(let elements):
            if elements.isEmpty { out += "[]"; return }
            if !pretty || isShortScalarArray(elements) {
                out += "["
                for (index, element) in elements.enumerated() {
                    if index > 0 { out += pretty ? ", " : "," }
                    element.write(to: &out, pretty: pretty, indent: indent)
                }
                out += "]"
                return
            }
            out += "[\n"
            for (index, element) in elements.enumerated() {
                out += String(repeating: " ", count: indent + 2)
                element.write(to: &out, pretty: pretty, indent: indent + 2)
                out += index + 1 < elements.count ? ",\n" : "\n"
            }
            out += String(repeating: " ", count: indent) + "]"
        case .object(let members):
            if members.isEmpty { out += "{}"; return }
            out += pretty ? "{\n" : "{"
            for (index, member) in members.enumerated() {
                if pretty { out += String(repeating: " ", count: indent + 2) }
                JSONValue.writeString(member.key, to: &out)
                out += pretty ? ": " : ":"
                member.value.write(to: &out, pretty: pretty, indent: indent + 2)
                if index + 1 < members.count { out += "," }
                if pretty { out += "\n" }
            }
            if pretty { out += String(repeating: " ", count: indent) }
            out += "}"
        }
    }

    private func isShortScalarArray(_ elements: [JSONValue]) -> Bool {
        var length = 0
        for element in elements {
            switch element.kind {
            case .array, .object: return false
            case .string(let text): length += text.utf8.count + 4
            case .number(let text): length += text.utf8.count + 2
            case .null, .bool: length += 7
            }
        }
        return length <= 72
    }

    private static func writeString(_ text: String, to out: inout String) {
        out += "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    let hex = String(scalar.value, radix: 16, uppercase: true)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
    }
}

extension HostConfiguration {
    /// Whether `id` is a valid tenant, segment, port, volume or partition id (1 to 32 of `a-z`,
    /// `0-9` and `-`, starting with a letter or digit): the rule the configuration's validation
    /// applies, for those who take ids from elsewhere (the management API's paths).
    public static func isValidID(_ id: String) -> Bool { Validator.isValidID(id) }
}
