import Foundation
@testable import Config

/// The repository root, found from this file's location.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

func repositoryFile(_ relativePath: String) -> String {
    repositoryRoot.appendingPathComponent(relativePath).path
}

/// Every problem `decode` reports for `text`, or [] when it decodes.
func problems(_ text: String) -> [ConfigurationProblem] {
    do {
        _ = try HostConfiguration.decode(text)
        return []
    } catch {
        return error.problems
    }
}

/// A document with a state directory and the given tenants/principals (JSON array texts).
func document(tenants: String = "[]", principals: String = "[]",
              host: String = #"{"stateDirectory": "/var/lib/bh"}"#) -> String {
    #"{"host": \#(host), "principals": \#(principals), "tenants": \#(tenants)}"#
}

/// A tenant with segment `lan` (plus `extra` members, e.g. `"ports": [...]`).
func tenant(_ id: String = "blue", segments: String = #"[{"id": "lan"}]"#, _ extra: String = "") -> String {
    #"{"id": "\#(id)", "segments": \#(segments)\#(extra.isEmpty ? "" : ", " + extra)}"#
}

/// Port "a" with the default MAC and the given extra members.
func port(extra: String) -> String { port("a", extra) }

/// A port on segment `lan` with the given extra members.
func port(_ id: String = "a", mac: String = "02:00:00:00:01:01", segment: String = "lan", _ extra: String = "") -> String {
    #"{"id": "\#(id)", "segment": "\#(segment)", "mac": "\#(mac)"\#(extra.isEmpty ? "" : ", " + extra)}"#
}

let zeroDigest = String(repeating: "0", count: 64)

/// A partition with the given extra members.
func partition(_ id: String = "vm1", _ extra: String = "") -> String {
    #"{"id": "\#(id)", "vcpus": 1, "memoryMiB": 128, "kernel": {"path": "/srv/vmlinux", "sha256": "\#(zeroDigest)"}\#(extra.isEmpty ? "" : ", " + extra)}"#
}
