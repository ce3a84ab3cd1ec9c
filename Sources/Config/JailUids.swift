/// Which uid (and gid) each tenant's jailed processes run as, as recorded in the state
/// directory's `jail-uids.json`. A tenant keeps its uid for as long as the record has it,
/// whatever happens to the configuration around it (tenants added, removed or reordered); a new
/// tenant gets the lowest uid of the jail range that the record does not hold.
///
/// Pure: no file I/O here (the `bulkhead` executable reads and writes the file under a lock).
/// The text is `{"tenants": {"<tenant id>": <uid>, ...}}`, entries in uid order.
public struct JailUidRecord: Sendable, Equatable {
    /// The record's file name inside the state directory.
    public static let fileName = "jail-uids.json"

    /// Tenant id to uid. Tenants no longer configured keep their entries, so their uids go to
    /// nobody else while the record holds them (remove an entry by hand to release its uid).
    public private(set) var uids: [String: UInt32]

    /// A record of `uids` (empty: no tenant has a uid yet).
    public init(uids: [String: UInt32] = [:]) { self.uids = uids }

    /// The uid recorded for tenant `id`; nil when it has none.
    public func uid(ofTenant id: String) -> UInt32? { uids[id] }

    /// The record's key for a partition: each partition's VMM runs as a uid of its own, apart
    /// from its tenant's block server, so a guest that took over its VMM cannot signal, trace or
    /// read the processes that serve its tenant.
    public static func partitionKey(tenant: String, partition: String) -> String { "\(tenant)/\(partition)" }

    /// The uid recorded for partition `id` of `tenant`; nil when it has none.
    public func uid(ofPartition id: String, tenant: String) -> UInt32? { uids[JailUidRecord.partitionKey(tenant: tenant, partition: id)] }

    /// Whether `key` names a tenant (`tenant`) or a partition (`tenant/partition`).
    static func isValidKey(_ key: String) -> Bool {
        let parts = key.split(separator: "/", omittingEmptySubsequences: false)
        return (1...2).contains(parts.count) && parts.allSatisfy { Validator.isValidID(String($0)) }
    }

    /// Parses a record's text and checks every entry against `range` (the configuration's
    /// `host.tenantJailUids`).
    ///
    /// - Parameter file: the file name to put in the error, if the text came from one.
    /// - Throws: `JailUidRecordError` with every problem found: not JSON (or a tenant listed
    ///   twice), not the record's shape, an id that is no valid tenant id, a uid that is not an
    ///   integer, lies outside `range`, or is recorded for two tenants. Nothing is reallocated
    ///   silently: a damaged record stops whoever reads it.
    public init(decoding text: String, range: Range<UInt32>, file: String? = nil) throws(JailUidRecordError) {
        let parsed = JSONParser.parse(text)
        var problems = parsed.problems
        var uids: [String: UInt32] = [:]
        guard let root = parsed.value else { throw JailUidRecordError(file: file, problems: problems) }
        guard case .object(let members) = root.kind else {
            throw JailUidRecordError(file: file, problems: problems + [
                ConfigurationProblem(path: "$", line: root.position.line, column: root.position.column,
                                     message: "expected an object {\"tenants\": {...}}, found \(root.typeDescription)")])
        }
        var tenants: JSONValue?
        for member in members {
            if member.key == "tenants" {
                tenants = tenants ?? member.value
            } else {
                problems.append(ConfigurationProblem(
                    path: JSONPath.member("$", member.key), line: member.keyPosition.line, column: member.keyPosition.column,
                    message: "unknown key; the record has only \"tenants\""))
            }
        }
        let tenantsPath = JSONPath.member("$", "tenants")
        var owners: [UInt32: String] = [:]
        if let tenants, case .object(let entries) = tenants.kind {
            for entry in entries {
                let path = JSONPath.member(tenantsPath, entry.key)
                func report(_ message: String) {
                    problems.append(ConfigurationProblem(path: path, line: entry.value.position.line,
                                                         column: entry.value.position.column, message: message))
                }
                guard JailUidRecord.isValidKey(entry.key) else {
                    report("\(JSONPath.quoted(entry.key)) is not a valid tenant id or tenant/partition pair")
                    continue
                }
                guard case .number(let text) = entry.value.kind, let uid = UInt32(text) else {
                    let found = if case .number(let text) = entry.value.kind { "the number \(text)" } else { entry.value.typeDescription }
                    report("expected a uid (an integer 0...\(UInt32.max)), found \(found)")
                    continue
                }
                guard range.contains(uid) else {
                    report("uid \(uid) is outside the tenants' jail uid range \(JailUidRecord.describe(range)) of host.jailUidBase "
                        + "(the range's last uid is the switch's); "
                        + "if the base changed, move the entries into the new range by hand or remove the file to give every tenant a new uid")
                    continue
                }
                if let owner = owners[uid] {
                    report("uid \(uid) is also recorded for tenant \(JSONPath.quoted(owner)); two tenants must never share a jail uid")
                    continue
                }
                owners[uid] = entry.key
                if uids[entry.key] == nil { uids[entry.key] = uid }  // a repeated key is a parse problem already
            }
        } else if let tenants {
            problems.append(ConfigurationProblem(path: tenantsPath, line: tenants.position.line, column: tenants.position.column,
                                                 message: "expected an object of tenant ids and uids, found \(tenants.typeDescription)"))
        } else {
            problems.append(ConfigurationProblem(path: tenantsPath, message: "missing; the record is {\"tenants\": {\"<tenant id>\": <uid>, ...}}"))
        }
        guard problems.isEmpty else { throw JailUidRecordError(file: file, problems: problems) }
        self.uids = uids
    }

    /// Gives every tenant of `tenants` that has no uid yet the lowest uid of `range` that the
    /// record does not hold, in the order given. Returns the tenants that got one (empty: the
    /// record is unchanged and need not be written).
    ///
    /// - Throws: `JailUidRecordError` when `range` has no uid left for a tenant.
    public mutating func allocate(_ tenants: [String], in range: Range<UInt32>) throws(JailUidRecordError) -> [String] {
        var taken = Set(uids.values)
        var candidate = range.lowerBound
        var added: [String] = []
        for tenant in tenants where uids[tenant] == nil {
            while candidate < range.upperBound && taken.contains(candidate) { candidate += 1 }
            guard candidate < range.upperBound else {
                throw JailUidRecordError(file: nil, problems: [ConfigurationProblem(
                    path: JSONPath.member("$", "tenants"),
                    message: "no uid of the jail uid range \(JailUidRecord.describe(range)) is left for tenant \(JSONPath.quoted(tenant)): "
                        + "the record holds all \(range.count); remove the entries of tenants that no longer exist")])
            }
            uids[tenant] = candidate
            taken.insert(candidate)
            added.append(tenant)
        }
        return added
    }

    /// The record's text: one tenant per line, in uid order.
    public func encoded() -> String {
        let lines = uids.sorted { ($0.value, $0.key) < ($1.value, $1.key) }
            .map { "    \(JSONPath.quoted($0.key)): \($0.value)" }
        return lines.isEmpty ? "{\n  \"tenants\": {}\n}\n" : "{\n  \"tenants\": {\n" + lines.joined(separator: ",\n") + "\n  }\n}\n"
    }

    static func describe(_ range: Range<UInt32>) -> String {
        range.isEmpty ? "(empty)" : "\(range.lowerBound)...\(range.upperBound - 1)"
    }
}

/// A jail uid record that cannot be used: every problem, with its JSON path.
public struct JailUidRecordError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The file the record came from, if known.
    public var file: String?
    public var problems: [ConfigurationProblem]

    public init(file: String?, problems: [ConfigurationProblem]) {
        self.file = file
        self.problems = ConfigurationError.sorted(problems)
    }

    /// One header line, then one line per problem.
    public var description: String {
        let noun = problems.count == 1 ? "problem" : "problems"
        let header = "\(file.map { "\($0): " } ?? "")the jail uid record has \(problems.count) \(noun) "
            + "(each tenant's jailed processes run as the uid recorded for it; fix the file by hand, or remove it to give every tenant a new uid)"
        return ([header] + problems.map { "  " + $0.description }).joined(separator: "\n")
    }
}
