import Testing
@testable import Config

/// The jail uid record: a tenant keeps its uid whatever happens to the configuration around it,
/// and a damaged record is an error, never a silent reallocation.
struct JailUidRecordTests {
    private let range = HostSettings(stateDirectory: "/s").tenantJailUids

    /// Allocates for `tenants`, writes the record out and reads it back, as two runs would.
    private func run(_ record: JailUidRecord, _ tenants: [String]) throws -> JailUidRecord {
        var record = record
        _ = try record.allocate(tenants, in: range)
        return try JailUidRecord(decoding: record.encoded(), range: range)
    }

    @Test func tenantsAddedRemovedAndReorderedKeepTheirUids() throws {
        let first = try run(JailUidRecord(), ["blue", "red"])
        #expect(first.uids == ["blue": 900_000_000, "red": 900_000_001])

        // A tenant added in front of the others: the others keep theirs, it gets the next one.
        let added = try run(first, ["green", "blue", "red"])
        #expect(added.uids == ["blue": 900_000_000, "red": 900_000_001, "green": 900_000_002])

        // Reordered: nothing changes, and nothing needs writing.
        var reordered = added
        #expect(try reordered.allocate(["red", "green", "blue"], in: range).isEmpty)
        #expect(reordered == added)

        // Removed: its uid stays recorded and goes to nobody else; a new tenant gets a new one.
        let removed = try run(added, ["green", "red", "yellow"])
        #expect(removed.uids == ["blue": 900_000_000, "red": 900_000_001, "green": 900_000_002, "yellow": 900_000_003])
        // Back again: its old uid.
        #expect(try run(removed, ["blue"]).uid(ofTenant: "blue") == 900_000_000)
    }

    @Test func aNewTenantGetsTheLowestUidNotRecorded() throws {
        // An entry removed by hand releases its uid: the lowest free one is handed out first.
        let text = #"{"tenants": {"a": 900000000, "c": 900000002, "d": 900000005}}"#
        var record = try JailUidRecord(decoding: text, range: range)
        #expect(try record.allocate(["a", "x", "y", "z", "w"], in: range) == ["x", "y", "z", "w"])
        #expect(record.uids == ["a": 900_000_000, "x": 900_000_001, "c": 900_000_002, "y": 900_000_003,
                                "z": 900_000_004, "d": 900_000_005, "w": 900_000_006])
    }

    @Test func theTextIsStableAndInUidOrder() throws {
        var record = JailUidRecord()
        _ = try record.allocate(["red", "blue"], in: range)
        #expect(record.encoded() == "{\n  \"tenants\": {\n    \"red\": 900000000,\n    \"blue\": 900000001\n  }\n}\n")
        #expect(JailUidRecord().encoded() == "{\n  \"tenants\": {}\n}\n")
        #expect(try JailUidRecord(decoding: JailUidRecord().encoded(), range: range) == JailUidRecord())
    }

    @Test func aFullRangeIsAnError() throws {
        var record = JailUidRecord()
        let small: Range<UInt32> = 900_000_000 ..< 900_000_002
        #expect(try record.allocate(["a", "b"], in: small) == ["a", "b"])
        let error = try #require(throws: JailUidRecordError.self) { try record.allocate(["a", "b", "c"], in: small) }
        #expect(error.description.contains(#"no uid of the jail uid range 900000000...900000001 is left for tenant "c""#))
        #expect(record.uid(ofTenant: "c") == nil)
    }

    @Test func partitionsHaveUidsOfTheirOwnApartFromTheirTenant() throws {
        let key = JailUidRecord.partitionKey(tenant: "blue", partition: "vm1")
        let record = try run(JailUidRecord(), ["blue", key, "red"])
        let partition = try #require(record.uid(ofPartition: "vm1", tenant: "blue"))
        #expect(partition != record.uid(ofTenant: "blue"))
        #expect(record.uid(ofPartition: "vm1", tenant: "red") == nil)
        #expect(record.uid(ofTenant: key) == partition)
    }

    /// Each damaged or hand-edited record: the path and part of the message.
    @Test(arguments: [
        (#"{"tenants": {"blue": 900000000, "red": 900000000}}"#, "$.tenants.red", #"uid 900000000 is also recorded for tenant "blue""#),
        (#"{"tenants": {"blue": 900000000, "blue": 900000001}}"#, "$.tenants.blue", "duplicate"),
        (#"{"tenants": {"blue": 1000}}"#, "$.tenants.blue", "uid 1000 is outside the tenants' jail uid range 900000000...900065534"),
        (#"{"tenants": {"blue": 900065535}}"#, "$.tenants.blue", "the range's last uid is the switch's"),
        (#"{"tenants": {"blue": 900065536}}"#, "$.tenants.blue", "outside the tenants' jail uid range"),
        (#"{"tenants": {"blue": -1}}"#, "$.tenants.blue", "expected a uid (an integer 0...4294967295), found the number -1"),
        (#"{"tenants": {"blue": 4294967296}}"#, "$.tenants.blue", "found the number 4294967296"),
        (#"{"tenants": {"blue": 9.0e8}}"#, "$.tenants.blue", "found the number 9.0e8"),
        (#"{"tenants": {"blue": "900000000"}}"#, "$.tenants.blue", "found a string"),
        (#"{"tenants": {"Blue!": 900000000}}"#, "$.tenants", #""Blue!" is not a valid tenant id"#),
        (#"{"tenants": {"blue/vm/x": 900000000}}"#, "$.tenants", #""blue/vm/x" is not a valid tenant id or tenant/partition pair"#),
        (#"{"tenants": {"/vm": 900000000}}"#, "$.tenants", "is not a valid tenant id"),
        (#"{"tenants": [900000000]}"#, "$.tenants", "expected an object of tenant ids and uids, found an array"),
        (#"{}"#, "$.tenants", "missing"),
        (#"{"tenants": {}, "next": 5}"#, "$.next", "unknown key"),
        (#"[]"#, "$", "expected an object"),
        (#"{"tenants": {"blue": 900000000"#, "$", "the end of the text"),
        (#""#, "$", "the end of the text"),
    ])
    func aDamagedRecordIsAnErrorNamingTheFileAndTheProblem(text: String, path: String, fragment: String) throws {
        let error = try #require(throws: JailUidRecordError.self) {
            try JailUidRecord(decoding: text, range: range, file: "/var/lib/bh/jail-uids.json")
        }
        #expect(error.problems.contains { $0.path.hasPrefix(path) && $0.message.contains(fragment) }, "\(error)")
        #expect(error.description.hasPrefix("/var/lib/bh/jail-uids.json: the jail uid record has"))
    }
}
