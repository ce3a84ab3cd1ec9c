import Foundation
import XCTest

/// `configs/bulkhead.schema.json` checked by an independent validator (python3-jsonschema, draft
/// 2020-12): what editors and CI see must accept the documents the daemon accepts and refuse the
/// partition shapes the decoder refuses.
final class JSONSchemaValidatorTests: XCTestCase {
    private static let script = """
        import json, sys
        try:
            import jsonschema
        except ImportError:
            sys.exit(77)
        schema = json.load(open(sys.argv[1]))
        jsonschema.Draft202012Validator.check_schema(schema)
        validator = jsonschema.Draft202012Validator(schema)
        for name in sys.argv[2:]:
            for error in validator.iter_errors(json.load(open(name))):
                path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
                print(f"{name}\\t{path}")
        """

    /// The JSON paths the schema finds wrong in each file.
    private func schemaErrors(_ files: [String]) throws -> [String: Set<String>] {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/python3") else {
            throw XCTSkip("needs /usr/bin/python3 with jsonschema (Debian: apt-get install python3-jsonschema)")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", Self.script, repositoryFile("configs/bulkhead.schema.json")] + files
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let diagnostics = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        if process.terminationStatus == 77 {
            throw XCTSkip("needs jsonschema for /usr/bin/python3 (Debian: apt-get install python3-jsonschema)")
        }
        XCTAssertEqual(process.terminationStatus, 0, "the validator failed (is the schema itself valid?): \(diagnostics)")
        var found: [String: Set<String>] = [:]
        for file in files { found[file] = [] }
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: "\t", maxSplits: 1).map(String.init)
            guard fields.count == 2 else { XCTFail("unexpected output: \(line)"); continue }
            found[fields[0], default: []].insert(fields[1])
        }
        return found
    }

    func testTheDemoAndEveryPartitionShapeAreValid() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bh-schema-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let digest = String(repeating: "ab", count: 32)
        let partitions = directory.appendingPathComponent("partitions.json").path
        let text = document(tenants: "[" + tenant("blue", #"""
            "ports": [{"id": "vm", "kind": "vhost-user", "segment": "lan", "mac": "02:00:00:00:01:03"}],
            "volumes": [{"id": "data", "sizeBytes": 1048576}],
            "partitions": [
              {"id": "flat", "vcpus": 1, "memoryMiB": 64, "image": {"path": "/srv/bhtest.bin", "sha256": "\#(digest)"},
               "cmdline": "disk net", "disks": ["data"], "nics": ["vm"], "restart": "never"},
              {"id": "linux", "vcpus": 2, "memoryMiB": 256, "kernel": {"path": "/boot/vmlinuz", "sha256": "\#(digest)"},
               "initrd": {"path": "/boot/initrd.img", "sha256": "\#(digest)"}, "cmdline": "console=ttyS0",
               "restart": "always"},
              {"id": "bare", "vcpus": 1, "memoryMiB": 16, "kernel": {"path": "/boot/vmlinuz", "sha256": "\#(digest)"}}
            ]
            """#) + "]")
        try text.write(toFile: partitions, atomically: true, encoding: .utf8)
        // The daemon accepts it too: the two agree on this document.
        XCTAssertEqual(problems(text).map(\.path), [])
        let demo = repositoryFile("configs/demo.json")
        let found = try schemaErrors([demo, partitions])
        XCTAssertEqual(found[demo], [])
        XCTAssertEqual(found[partitions], [])
    }

    func testTheSchemaRefusesTheBrokenPartitionShapes() throws {
        let file = repositoryFile("configs/examples/partitions.json")
        let found = try schemaErrors([file])
        XCTAssertEqual(found[file], [
            "$.tenants[0].partitions[0]",  // image and kernel: oneOf
            "$.tenants[0].partitions[1]",  // neither: oneOf
            "$.tenants[0].partitions[2]",  // initrd without kernel: dependentRequired
            "$.tenants[0].partitions[3].image.path",
            "$.tenants[0].partitions[3].disks",  // a volume twice: uniqueItems
            "$.tenants[0].partitions[4].restart",
        ])
    }
}
