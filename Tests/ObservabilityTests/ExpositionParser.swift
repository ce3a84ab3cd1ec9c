import XCTest

/// The Prometheus text format (0.0.4) read back: samples with their labels unescaped, and the
/// TYPE of each family. Strict: a line it cannot read fails the test, so a formatting bug in the
/// exposition cannot pass as "no such sample".
struct Exposition {
    struct Sample: Equatable {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    var samples: [Sample] = []
    var types: [String: String] = [:]
    var helps: [String: String] = [:]

    init(_ text: String, file: StaticString = #filePath, line: UInt = #line) throws {
        for raw in text.split(separator: "\n", omittingEmptySubsequences: true) {
            let textLine = String(raw)
            if textLine.hasPrefix("# TYPE ") {
                let parts = textLine.dropFirst("# TYPE ".count).split(separator: " ")
                guard parts.count == 2 else { throw ParseError("bad TYPE line: \(textLine)") }
                guard types.updateValue(String(parts[1]), forKey: String(parts[0])) == nil else {
                    throw ParseError("second TYPE line for \(parts[0])")
                }
            } else if textLine.hasPrefix("# HELP ") {
                let rest = textLine.dropFirst("# HELP ".count)
                guard let space = rest.firstIndex(of: " ") else { throw ParseError("bad HELP line: \(textLine)") }
                helps[String(rest[..<space])] = String(rest[rest.index(after: space)...])
            } else if textLine.hasPrefix("#") {
                continue
            } else {
                samples.append(try Exposition.sample(textLine))
            }
        }
    }

    /// `name{a="x",b="y"} value`, with `\\`, `\"` and `\n` unescaped in label values.
    static func sample(_ line: String) throws -> Sample {
        var chars = Array(line)
        var i = 0
        var name = ""
        while i < chars.count, chars[i] != "{", chars[i] != " " { name.append(chars[i]); i += 1 }
        var labels: [String: String] = [:]
        if i < chars.count, chars[i] == "{" {
            i += 1
            while i < chars.count, chars[i] != "}" {
                var key = ""
                while i < chars.count, chars[i] != "=" { key.append(chars[i]); i += 1 }
                guard i + 1 < chars.count, chars[i + 1] == "\"" else { throw ParseError("bad label in \(line)") }
                i += 2
                var value = ""
                while i < chars.count, chars[i] != "\"" {
                    if chars[i] == "\\" {
                        guard i + 1 < chars.count else { throw ParseError("dangling escape in \(line)") }
                        switch chars[i + 1] {
                        case "\\": value.append("\\")
                        case "\"": value.append("\"")
                        case "n": value.append("\n")
                        default: throw ParseError("unknown escape in \(line)")
                        }
                        i += 2
                    } else {
                        value.append(chars[i]); i += 1
                    }
                }
                guard i < chars.count else { throw ParseError("unterminated label value in \(line)") }
                i += 1
                guard labels.updateValue(value, forKey: key) == nil else { throw ParseError("label \(key) twice in \(line)") }
                if i < chars.count, chars[i] == "," { i += 1 }
            }
            guard i < chars.count else { throw ParseError("unterminated labels in \(line)") }
            i += 1
        }
        guard i < chars.count, chars[i] == " " else { throw ParseError("no value in \(line)") }
        chars.removeFirst(i + 1)
        guard let value = Double(String(chars)) else { throw ParseError("bad value in \(line)") }
        return Sample(name: name, labels: labels, value: value)
    }

    /// The samples of `name` whose labels include `labels`.
    func samples(_ name: String, _ labels: [String: String] = [:]) -> [Sample] {
        samples.filter { s in s.name == name && labels.allSatisfy { s.labels[$0.key] == $0.value } }
    }

    /// The value of the one sample of `name` with exactly `labels`.
    func value(_ name: String, _ labels: [String: String]) -> Double? {
        let matches = samples.filter { $0.name == name && $0.labels == labels }
        return matches.count == 1 ? matches[0].value : nil
    }

    struct ParseError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }
}
