import Config
import FleetModel
import Switch

/// The API's answers, computed from a snapshot of the daemon: pure, so that what each role sees
/// is tested without a server. Bodies of configuration objects are the configuration document's
/// own objects, as written.
public enum APIResponder {
    /// The answer to a call that only reads (`health`, `status`, `tenants`, `tenant`, `objects`,
    /// `object`, `counters`, `configuration`), as `caller` allowed in `scope` sees it.
    /// Other requests are answered by the server with the backend; here they are a 500.
    public static func read(_ request: APIRequest, caller: Principal, scope: Scope,
                            snapshot: ManagementSnapshot) -> Result<JSONValue, APIError> {
        switch request {
        case .health:
            var members: [(String, JSONValue)] = [("status", .string("ok")), ("principal", .string(caller.name)),
                                                  ("role", .string(caller.role.rawValue))]
            if case .tenant(let tenant) = scope { members.append(("tenant", .string(tenant))) }
            return .success(.object(members))
        case .status:
            return .success(statusJSON(snapshot.status, scope: scope))
        case .tenants:
            return document(snapshot).map { root in
                .object([("tenants", .array(tenantObjects(root).filter { scope.sees(tenant: $0.id) }.map(\.value)))])
            }
        case .tenant(let tenant):
            return tenantObject(tenant, scope: scope, snapshot: snapshot)
        case .objects(let tenant, let kind):
            return tenantObject(tenant, scope: scope, snapshot: snapshot).map { object in
                .object([(kind.rawValue, .array(object[kind.rawValue]?.arrayElements ?? []))])
            }
        case .object(let tenant, let kind, let id):
            return tenantObject(tenant, scope: scope, snapshot: snapshot).flatMap { object in
                let match = (object[kind.rawValue]?.arrayElements ?? []).first { $0["id"]?.stringValue == id }
                guard let match else { return .failure(.noObject(kind, id, tenant: tenant)) }
                return .success(match)
            }
        case .counters(let tenant):
            if let tenant, !(scope.sees(tenant: tenant) && snapshot.configuration.tenant(tenant) != nil) {
                return .failure(.noTenant(tenant))
            }
            return .success(countersJSON(snapshot.statistics, scope: scope, tenant: tenant))
        case .configuration:
            return document(snapshot)
        case .partition, .apply, .audit:
            return .failure(APIError(status: 500, reason: "\(request.action) is not a read"))
        }
    }

    /// Nil when partition `id` of `tenant` exists and `scope` sees it; else the 404 to answer.
    public static func checkPartition(tenant: String, id: String, scope: Scope,
                                      configuration: HostConfiguration) -> APIError? {
        guard scope.sees(tenant: tenant), let owner = configuration.tenant(tenant) else { return .noTenant(tenant) }
        guard owner.partition(id) != nil else { return .noObject(.partitions, id, tenant: tenant) }
        return nil
    }

    /// The answer to a partition action the daemon carried out.
    public static func partitionDone(_ action: PartitionAction, tenant: String, id: String) -> JSONValue {
        .object([("tenant", .string(tenant)), ("partition", .string(id)), ("action", .string(action.rawValue)),
                 ("done", .bool(true))])
    }

    /// The answer to `PUT /v1/configuration`: the changes, 422 with the document's problems,
    /// or 500 when applying failed.
    public static func applyAnswer(_ outcome: ApplyOutcome, dryRun: Bool) -> Result<JSONValue, APIError> {
        switch outcome {
        case .applied(let changes):
            return .success(.object([("dryRun", .bool(dryRun)), ("applied", .bool(!dryRun)),
                                     ("changes", .array(changes.map(JSONValue.string)))]))
        case .invalid(let error):
            let noun = error.problems.count == 1 ? "problem" : "problems"
            return .failure(APIError(status: 422, reason: "the configuration has \(error.problems.count) \(noun); nothing was changed",
                                     problems: error.problems))
        case .failed(let reason):
            return .failure(APIError(status: 500, reason: "applying the configuration failed: \(reason)"))
        }
    }

    /// The answer to `GET /v1/audit`: each record as the JSON object it is in the log (a line
    /// that is not JSON, in a damaged log, is given as a string).
    public static func auditAnswer(records: [String], after: UInt64) -> JSONValue {
        let values = records.map { line -> JSONValue in
            let parsed = JSONParser.parse(line)
            guard let value = parsed.value, parsed.problems.isEmpty else { return .string(line) }
            return value
        }
        return .object([("after", .number(after)), ("records", .array(values))])
    }

    // MARK: Configuration objects

    private static func document(_ snapshot: ManagementSnapshot) -> Result<JSONValue, APIError> {
        let parsed = JSONParser.parse(snapshot.configurationText)
        guard let root = parsed.value, case .object = root.kind else {
            return .failure(APIError(status: 500, reason: "the applied configuration's document cannot be read back"))
        }
        return .success(root)
    }

    private static func tenantObjects(_ root: JSONValue) -> [(id: String, value: JSONValue)] {
        (root["tenants"]?.arrayElements ?? []).compactMap { value in
            value["id"]?.stringValue.map { (id: $0, value: value) }
        }
    }

    private static func tenantObject(_ tenant: String, scope: Scope, snapshot: ManagementSnapshot) -> Result<JSONValue, APIError> {
        guard scope.sees(tenant: tenant) else { return .failure(.noTenant(tenant)) }
        return document(snapshot).flatMap { root in
            guard let match = tenantObjects(root).first(where: { $0.id == tenant }) else { return .failure(.noTenant(tenant)) }
            return .success(match.value)
        }
    }

    // MARK: Status and counters

    /// The status, with only the children `scope` sees (the switch, which serves every tenant, included).
    public static func statusJSON(_ status: HostStatus, scope: Scope) -> JSONValue {
        let daemon = status.daemon
        let cgroups: JSONValue = switch daemon.cgroups {
        case .enabled(let path): .object([("enabled", .bool(true)), ("path", .string(path))])
        case .disabled(let reason): .object([("enabled", .bool(false)), ("reason", .string(reason))])
        }
        let children = status.children.filter { child in child.tenant.map { scope.sees(tenant: $0) } ?? true }
        var members: [(String, JSONValue)] = [
            ("daemon", .object([("pid", .number(daemon.pid)), ("startedAt", .string(daemon.startedAt)),
                                ("executableSHA256", .string(daemon.executableSHA256)),
                                ("configurationSHA256", .string(daemon.configurationSHA256)), ("cgroups", cgroups)])),
            ("children", .array(children.map(childJSON))),
        ]
        // The fleet map names other hosts: host principals only.
        if scope == .host, let fleet = status.fleet {
            members.append(("fleet", fleetJSON(fleet, unknownVNI: status.underlayUnknownVNI)))
        }
        return .object(members)
    }

    private static func fleetJSON(_ fleet: FleetStatus, unknownVNI: UInt64) -> JSONValue {
        var members: [(String, JSONValue)] = [("hostId", .string(fleet.hostId)), ("state", .string(fleet.state)),
                                              ("since", .string(fleet.since))]
        if let endpoint = fleet.endpoint { members.append(("endpoint", .string(endpoint))) }
        members.append(("revision", .number(fleet.revision)))
        if let lease = fleet.lease { members.append(("lease", .string(lease))) }
        members.append(("remoteHosts", .array(fleet.remoteHosts.map { .string($0) })))
        if let error = fleet.lastError { members.append(("lastError", .string(error))) }
        members.append(("problems", .array(fleet.problems.map { .string($0) })))
        members.append(("underlayUnknownVNIDatagrams", .number(unknownVNI)))
        return .object(members)
    }

    private static func childJSON(_ child: ChildStatus) -> JSONValue {
        var members: [(String, JSONValue)] = [("kind", .string(child.kind.rawValue))]
        if let tenant = child.tenant { members.append(("tenant", .string(tenant))) }
        if let id = child.id { members.append(("id", .string(id))) }
        members.append(("state", .string(child.state.rawValue)))
        if let pid = child.pid { members.append(("pid", .number(pid))) }
        members.append(("restarts", .number(child.restarts)))
        if let lastExit = child.lastExit { members.append(("lastExit", .string(lastExit))) }
        if let since = child.since { members.append(("since", .string(since))) }
        return .object(members)
    }

    /// The switch's counters of the ports and segments `scope` sees (of `tenant` only, if given).
    public static func countersJSON(_ statistics: SwitchStatistics?, scope: Scope, tenant: String?) -> JSONValue {
        func visible(_ owner: String) -> Bool { scope.sees(tenant: owner) && (tenant.map { $0 == owner } ?? true) }
        let ports = (statistics?.ports ?? []).filter { visible($0.tenant) }.map { port -> JSONValue in
            .object([
                ("tenant", .string(port.tenant)), ("port", .string(port.port)), ("segment", .string(port.segment)),
                ("interface", .string(port.interface)),
                ("rx", traffic(port.rx)), ("tx", traffic(port.tx)),
                ("drops", .object(port.drops.sorted { $0.key < $1.key }.map { ($0.key, .number($0.value)) })),
                ("macLearning", .object([("learned", .number(port.macLearning.learned)),
                                         ("refused", .number(port.macLearning.refused))])),
            ])
        }
        let segments = (statistics?.segments ?? []).filter { visible($0.tenant) }.map { segment -> JSONValue in
            .object([("tenant", .string(segment.tenant)), ("segment", .string(segment.segment)),
                     ("macEntries", .number(segment.macEntries))])
        }
        return .object([("available", .bool(statistics != nil)), ("ports", .array(ports)), ("segments", .array(segments))])
    }

    private static func traffic(_ counters: TrafficCounters) -> JSONValue {
        .object([("frames", .number(counters.frames)), ("bytes", .number(counters.bytes))])
    }
}
