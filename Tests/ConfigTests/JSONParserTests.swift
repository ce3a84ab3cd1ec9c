import Testing
@testable import Config

@Suite struct JSONParserTests {
    private func failure(_ text: String) -> ConfigurationProblem? {
        let result = JSONParser.parse(text)
        #expect(result.value == nil)
        return result.problems.last
    }

    @Test func parsesScalarsExactly() throws {
        let result = JSONParser.parse(#"{"a": true, "b": 1, "c": 18446744073709551615, "d": "\u00e9\ud83d\ude00\n", "e": null, "f": -0.5e3}"#)
        let value = try #require(result.value)
        guard case .object(let members) = value.kind else { Issue.record("not an object"); return }
        #expect(members.map(\.key) == ["a", "b", "c", "d", "e", "f"])
        guard case .bool(true) = members[0].value.kind else { Issue.record("a is not true"); return }
        guard case .number("1") = members[1].value.kind else { Issue.record("b is not 1"); return }
        guard case .number("18446744073709551615") = members[2].value.kind else { Issue.record("c"); return }
        guard case .string("é😀\n") = members[3].value.kind else { Issue.record("d"); return }
        guard case .null = members[4].value.kind else { Issue.record("e"); return }
        guard case .number("-0.5e3") = members[5].value.kind else { Issue.record("f"); return }
    }

    @Test func keepsPositions() throws {
        let text = "{\n  \"a\": [1,\n    \"é\", true]\n}"
        let value = try #require(JSONParser.parse(text).value)
        guard case .object(let members) = value.kind, case .array(let elements) = members[0].value.kind else {
            Issue.record("shape"); return
        }
        #expect(members[0].keyPosition == SourcePosition(line: 2, column: 3))
        #expect(elements[1].position == SourcePosition(line: 3, column: 5))
        #expect(elements[2].position == SourcePosition(line: 3, column: 10))
    }

    @Test func truncatedDocument() throws {
        let problem = try #require(failure("{\n  \"host\": {\"stateDirectory\": \"/x\""))
        #expect(problem.line == 2)
        #expect(problem.column != nil)
        #expect(problem.message.contains("expected ',' or '}'"))
    }

    @Test func unterminatedString() throws {
        let problem = try #require(failure(#"{"a": "abc"#))
        #expect(problem.path == "$.a")
        #expect(problem.line == 1 && problem.column == 7)
        #expect(problem.message.contains("not terminated"))
    }

    @Test func trailingGarbage() throws {
        let problem = try #require(failure("{}\n x"))
        #expect(problem.line == 2 && problem.column == 2)
        #expect(problem.message.contains("after the end of the document"))
    }

    @Test(arguments: [#""\x""#, #""\u12""#, #""\ud800""#, #""\udc00""#, #""\ud800\u0041""#])
    func badEscapes(_ text: String) throws {
        let problem = try #require(failure(text))
        #expect(problem.line == 1 && problem.column == 2)
    }

    @Test(arguments: ["01", "+1", ".5", "1.", "1e", "-", "NaN", "tru", "nul", "'a'", "", "[1,]", "{\"a\" 1}", "{,}", "\"a\tb\""])
    func invalidSyntax(_ text: String) throws {
        let problem = try #require(failure(text))
        #expect(problem.line == 1)
        #expect(problem.column != nil)
    }

    @Test func deepNestingIsReportedNotCrashed() throws {
        let text = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        let problem = try #require(failure(text))
        #expect(problem.message.contains("nested more than 64 levels"))
        #expect(problem.line == 1 && problem.column == 65)
        let objects = String(repeating: #"{"a":"#, count: 10_000)
        #expect(failure(objects)?.message.contains("nested more than 64") == true)
    }

    @Test func sixtyFourLevelsAreAllowed() {
        let text = String(repeating: "[", count: 64) + String(repeating: "]", count: 64)
        #expect(JSONParser.parse(text).value != nil)
    }

    @Test func duplicateKeysAreProblems() throws {
        let result = JSONParser.parse("{\"a\": 1,\n \"b\": {\"x\": 1, \"x\": 2}, \"a\": 3}")
        #expect(result.value != nil)
        #expect(result.problems.map(\.path) == ["$.b.x", "$.a"])
        #expect(result.problems.first?.line == 2)
        #expect(result.problems.first?.column == 16)
        #expect(result.problems.first?.message.contains("first at line 2, column 8") == true)
    }

    @Test func malformedDocumentThrowsConfigurationError() {
        #expect(problems("{\"host\": ").map(\.path) == ["$.host"])
    }
}
