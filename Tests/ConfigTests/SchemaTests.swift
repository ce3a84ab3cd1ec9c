import Foundation
import Testing
@testable import Config

/// The JSON Schema and the decoder's key table must describe the same document.
@Suite struct SchemaTests {
    private func members(_ value: JSONValue?) -> [String: JSONValue] {
        guard let value, case .object(let list) = value.kind else { return [:] }
        return Dictionary(list.map { ($0.key, $0.value) }, uniquingKeysWith: { first, _ in first })
    }

    private func strings(_ value: JSONValue?) -> [String] {
        guard let value, case .array(let elements) = value.kind else { return [] }
        return elements.compactMap { if case .string(let s) = $0.kind { s } else { nil } }
    }

    @Test func schemaMatchesTheDecoderTable() throws {
        let text = try String(contentsOfFile: repositoryFile("configs/bulkhead.schema.json"), encoding: .utf8)
        let parsed = JSONParser.parse(text)
        #expect(parsed.problems.isEmpty)
        let value = try #require(parsed.value)
        let root = members(value)
        guard case .string("https://json-schema.org/draft/2020-12/schema")? = root["$schema"]?.kind else {
            Issue.record("the schema is not draft 2020-12")
            return
        }
        let definitions = members(root["$defs"])
        #expect(Set(definitions.keys) == Set(ConfigurationSchema.objects.keys))
        for (name, keys) in ConfigurationSchema.objects {
            let definition = members(definitions[name])
            #expect(!definition.isEmpty, "no $defs entry for \(name)")
            #expect(Set(members(definition["properties"]).keys) == keys.allowed, "properties of \(name)")
            #expect(Set(strings(definition["required"])) == keys.required, "required of \(name)")
            guard case .bool(false)? = definition["additionalProperties"]?.kind else {
                Issue.record("\(name) does not set additionalProperties: false")
                continue
            }
        }
        guard case .string("#/$defs/HostConfiguration")? = root["$ref"]?.kind else {
            Issue.record("the root does not refer to HostConfiguration")
            return
        }
    }

    @Test func tableIsConsistent() {
        for (name, keys) in ConfigurationSchema.objects {
            #expect(keys.required.isSubset(of: keys.allowed), "\(name)")
        }
    }
}
