/// One thing wrong with a configuration document, located by JSON path and, when known,
/// by line and column.
public struct ConfigurationProblem: Error, Equatable, Sendable, CustomStringConvertible {
    /// JSON path of the offending value, e.g. `$.tenants[0].ports[1].mac`. A missing key's path
    /// names the key; its position is that of the enclosing object.
    public var path: String
    /// 1-based line in the file, when known.
    public var line: Int?
    /// 1-based column (in Unicode scalars), when known.
    public var column: Int?
    /// What is wrong and, where possible, how to fix it.
    public var message: String

    public init(path: String, line: Int? = nil, column: Int? = nil, message: String) {
        self.path = path; self.line = line; self.column = column; self.message = message
    }

    /// `$.tenants[0].ports[1].mac (line 23, column 18): <message>`.
    public var description: String {
        if let line, let column { return "\(path) (line \(line), column \(column)): \(message)" }
        if let line { return "\(path) (line \(line)): \(message)" }
        return "\(path): \(message)"
    }
}

/// Thrown when a configuration document cannot be used; holds every problem found.
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
    /// The file the document came from, if any.
    public var file: String?
    /// Every problem found, sorted by position in the document (problems without a position last).
    public var problems: [ConfigurationProblem]

    public init(file: String? = nil, problems: [ConfigurationProblem]) {
        self.file = file
        self.problems = ConfigurationError.sorted(problems)
    }

    /// One header line, then one line per problem.
    public var description: String {
        let noun = problems.count == 1 ? "problem" : "problems"
        let header = "\(file.map { "\($0): " } ?? "")configuration has \(problems.count) \(noun)"
        return ([header] + problems.map { "  " + $0.description }).joined(separator: "\n")
    }

    /// Sorts by line and column; the sort is stable so that problems at one position keep the
    /// order in which they were found.
    static func sorted(_ problems: [ConfigurationProblem]) -> [ConfigurationProblem] {
        problems.enumerated().sorted { a, b in
            let ka = (a.element.line ?? .max, a.element.column ?? .max, a.offset)
            let kb = (b.element.line ?? .max, b.element.column ?? .max, b.offset)
            return ka < kb
        }.map(\.element)
    }
}
