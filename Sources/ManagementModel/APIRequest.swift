import Config

/// The objects of a tenant the API lists and shows, named as in the configuration file.
public enum ObjectKind: String, Sendable, Equatable, CaseIterable {
    case segments, ports, volumes, partitions

    /// "port" for `ports`.
    public var singular: String { String(rawValue.dropLast()) }
}

/// What can be done to a partition's process.
public enum PartitionAction: String, Sendable, Equatable, CaseIterable {
    case start, stop, restart
}

/// One call of the management API, decoded and checked: ids follow the configuration's id rules,
/// numbers are in range, a document is valid UTF-8 of bounded size. Produced by `parse`.
public enum APIRequest: Sendable, Equatable {
    /// `GET /v1/health`: the daemon answers.
    case health
    /// `GET /v1/status`: the daemon and every child it runs.
    case status
    /// `GET /v1/tenants`.
    case tenants
    /// `GET /v1/tenants/{tenant}`.
    case tenant(String)
    /// `GET /v1/tenants/{tenant}/{kind}`.
    case objects(tenant: String, kind: ObjectKind)
    /// `GET /v1/tenants/{tenant}/{kind}/{id}`.
    case object(tenant: String, kind: ObjectKind, id: String)
    /// `GET /v1/counters[?tenant=]`: the switch's port and segment counters.
    case counters(tenant: String?)
    /// `POST /v1/tenants/{tenant}/partitions/{id}/{action}`.
    case partition(PartitionAction, tenant: String, id: String)
    /// `GET /v1/configuration`: the applied configuration document.
    case configuration
    /// `PUT /v1/configuration[?dryRun=true]`: validate a whole document and apply what differs.
    case apply(document: String, dryRun: Bool)
    /// `GET /v1/audit[?after=N][&limit=M]`: audit records after sequence number N.
    case audit(after: UInt64, limit: Int)

    /// The largest request body read: a configuration document.
    public static let maximumBodyBytes = 1 << 20
    /// The longest path (without the query) a request may have.
    public static let maximumPathBytes = 1024
    /// The longest query a request may have.
    public static let maximumQueryBytes = 1024
    /// Audit records one call returns by default, and at most.
    public static let defaultAuditLimit = 100
    public static let maximumAuditLimit = 1000

    /// The tenant the call is about, if it is about one.
    public var tenant: String? {
        switch self {
        case .health, .status, .tenants, .configuration, .apply, .audit: nil
        case .tenant(let tenant), .objects(let tenant, _), .object(let tenant, _, _), .partition(_, let tenant, _): tenant
        case .counters(let tenant): tenant
        }
    }

    /// The audit log's name of the call, e.g. `api.partition.stop`.
    public var action: String {
        switch self {
        case .health: "api.health"
        case .status: "api.status"
        case .tenants: "api.tenant.list"
        case .tenant: "api.tenant.show"
        case .objects(_, let kind): "api.\(kind.singular).list"
        case .object(_, let kind, _): "api.\(kind.singular).show"
        case .counters: "api.counters"
        case .partition(let action, _, _): "api.partition.\(action.rawValue)"
        case .configuration: "api.configuration.show"
        case .apply(_, let dryRun): dryRun ? "api.configuration.check" : "api.configuration.apply"
        case .audit: "api.audit.read"
        }
    }

    /// What the call is about, for the audit log: `blue/guest`, `blue`, or "" for the host.
    public var target: String {
        switch self {
        case .health, .status, .tenants, .configuration, .apply, .audit: ""
        case .tenant(let tenant), .objects(let tenant, _): tenant
        case .object(let tenant, _, let id), .partition(_, let tenant, let id): "\(tenant)/\(id)"
        case .counters(let tenant): tenant ?? ""
        }
    }

    /// Whether the call changes something on the host (and so is recorded before it is done).
    public var isMutating: Bool {
        switch self {
        case .partition: true
        case .apply(_, let dryRun): !dryRun
        default: false
        }
    }

    /// What the call does, for a refusal: "stop partitions".
    public var operationDescription: String {
        switch self {
        case .health: "check the daemon's health"
        case .status: "read the status"
        case .tenants, .tenant: "read tenants"
        case .objects(_, let kind), .object(_, let kind, _): "read \(kind.rawValue)"
        case .counters: "read counters"
        case .partition(let action, _, _): "\(action.rawValue) partitions"
        case .configuration: "read the configuration"
        case .apply(_, let dryRun): dryRun ? "check configurations" : "apply configurations"
        case .audit: "read the audit log"
        }
    }
}

// MARK: - Decoding

extension APIRequest {
    /// The routes, for 404 messages and `Allow` headers.
    private enum Route {
        case health, status, tenants, tenant(String), objects(String, ObjectKind), object(String, ObjectKind, String)
        case partitionAction(String, String, PartitionAction), counters, configuration, audit

        var methods: [String] {
            switch self {
            case .partitionAction: ["POST"]
            case .configuration: ["GET", "PUT"]
            default: ["GET"]
            }
        }
    }

    /// Decodes one HTTP request. Pure and total: any bytes give a request or an `APIError`
    /// with a 4xx status and a reason, never a trap.
    ///
    /// - Parameters:
    ///   - method: the request method, e.g. `GET`.
    ///   - path: the request target's path, as sent (not percent-decoded: no id contains `%`).
    ///   - query: the request target's query without `?`, if it has one.
    ///   - body: the request body (the caller reads at most `maximumBodyBytes + 1` bytes).
    /// - Returns: 404 for an unknown path, 405 (with `allow`) for a method the path does not
    ///   take, 400 for a bad id, query or body, 413 for a body over `maximumBodyBytes`, 414 for a
    ///   path or query over their limits.
    public static func parse(method: String, path: String, query: String?, body: [UInt8]) -> Result<APIRequest, APIError> {
        guard path.utf8.count <= maximumPathBytes else {
            return .failure(APIError(status: 414, reason: "the path is longer than \(maximumPathBytes) bytes"))
        }
        guard (query?.utf8.count ?? 0) <= maximumQueryBytes else {
            return .failure(APIError(status: 414, reason: "the query is longer than \(maximumQueryBytes) bytes"))
        }
        guard body.count <= maximumBodyBytes else {
            return .failure(APIError(status: 413, reason: "the body is larger than \(maximumBodyBytes) bytes"))
        }
        let route: Route
        switch matchRoute(path) {
        case .success(let matched): route = matched
        case .failure(let error): return .failure(error)
        }
        guard route.methods.contains(method) else {
            return .failure(APIError(status: 405, reason: "\(shortened(method)) is not allowed on \(shortened(path)); "
                + "allowed: \(route.methods.joined(separator: ", "))", allow: route.methods))
        }
        let parameters: [(String, String)]
        switch queryParameters(query) {
        case .success(let list): parameters = list
        case .failure(let error): return .failure(error)
        }
        let takesBody = method == "PUT"
        if !takesBody && !body.isEmpty {
            return .failure(APIError(status: 400, reason: "\(method) \(shortened(path)) takes no body"))
        }

        switch route {
        case .health: return noParameters(parameters, .health)
        case .status: return noParameters(parameters, .status)
        case .tenants: return noParameters(parameters, .tenants)
        case .tenant(let tenant): return noParameters(parameters, .tenant(tenant))
        case .objects(let tenant, let kind): return noParameters(parameters, .objects(tenant: tenant, kind: kind))
        case .object(let tenant, let kind, let id): return noParameters(parameters, .object(tenant: tenant, kind: kind, id: id))
        case .partitionAction(let tenant, let id, let action):
            return noParameters(parameters, .partition(action, tenant: tenant, id: id))
        case .counters:
            var tenant: String?
            for (name, value) in parameters {
                guard name == "tenant" else { return .failure(unknownParameter(name, allowed: ["tenant"])) }
                guard HostConfiguration.isValidID(value) else { return .failure(invalidID(value, what: "tenant id")) }
                tenant = value
            }
            return .success(.counters(tenant: tenant))
        case .configuration:
            if method == "GET" { return noParameters(parameters, .configuration) }
            var dryRun = false
            for (name, value) in parameters {
                guard name == "dryRun" else { return .failure(unknownParameter(name, allowed: ["dryRun"])) }
                switch value {
                case "true": dryRun = true
                case "false": dryRun = false
                default:
                    return .failure(APIError(status: 400, reason: "dryRun must be true or false, not \(quoted(shortened(value)))"))
                }
            }
            guard !body.isEmpty else {
                return .failure(APIError(status: 400, reason: "the body must be a whole configuration document (JSON)"))
            }
            guard let document = String(validating: body, as: UTF8.self) else {
                return .failure(APIError(status: 400, reason: "the body is not valid UTF-8"))
            }
            return .success(.apply(document: document, dryRun: dryRun))
        case .audit:
            var after: UInt64 = 0
            var limit = defaultAuditLimit
            for (name, value) in parameters {
                switch name {
                case "after":
                    guard let number = decimal(value) else {
                        return .failure(APIError(status: 400, reason: "after must be a whole number of at most 20 digits, not \(quoted(shortened(value)))"))
                    }
                    after = number
                case "limit":
                    guard let number = decimal(value), number >= 1, number <= UInt64(maximumAuditLimit) else {
                        return .failure(APIError(status: 400, reason: "limit must be a whole number from 1 to \(maximumAuditLimit), not \(quoted(shortened(value)))"))
                    }
                    limit = Int(number)
                default:
                    return .failure(unknownParameter(name, allowed: ["after", "limit"]))
                }
            }
            return .success(.audit(after: after, limit: limit))
        }
    }

    private static func matchRoute(_ path: String) -> Result<Route, APIError> {
        let notFound = APIError(status: 404, reason: "no such route: \(quoted(shortened(path))); the API's paths start with /v1/ "
            + "(health, status, tenants, counters, configuration, audit)")
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        // "/v1/x" splits into "", "v1", "x"; an empty part elsewhere is a doubled or trailing slash.
        guard parts.count >= 3, parts[0].isEmpty, parts[1] == "v1", !parts.dropFirst().contains("") else {
            return .failure(notFound)
        }
        let rest = Array(parts.dropFirst(2))
        switch rest.count {
        case 1:
            switch rest[0] {
            case "health": return .success(.health)
            case "status": return .success(.status)
            case "tenants": return .success(.tenants)
            case "counters": return .success(.counters)
            case "configuration": return .success(.configuration)
            case "audit": return .success(.audit)
            default: return .failure(notFound)
            }
        case 2...5:
            guard rest[0] == "tenants" else { return .failure(notFound) }
            let tenant = rest[1]
            var kind: ObjectKind?
            if rest.count >= 3 {
                kind = ObjectKind(rawValue: rest[2])
                guard kind != nil else { return .failure(notFound) }
            }
            var action: PartitionAction?
            if rest.count == 5 {
                action = PartitionAction(rawValue: rest[4])
                guard kind == .partitions, action != nil else { return .failure(notFound) }
            }
            // The shape is known: now the ids must be ids.
            guard HostConfiguration.isValidID(tenant) else { return .failure(invalidID(tenant, what: "tenant id")) }
            guard let kind else { return .success(.tenant(tenant)) }
            guard rest.count >= 4 else { return .success(.objects(tenant, kind)) }
            let id = rest[3]
            guard HostConfiguration.isValidID(id) else { return .failure(invalidID(id, what: "\(kind.singular) id")) }
            guard let action else { return .success(.object(tenant, kind, id)) }
            return .success(.partitionAction(tenant, id, action))
        default:
            return .failure(notFound)
        }
    }

    /// `a=1&b=2` as pairs in order. Names and values are taken as sent: the values the API takes
    /// (ids, numbers, booleans) contain nothing that needs percent-encoding. A name given twice
    /// is refused rather than one of the values picked silently.
    private static func queryParameters(_ query: String?) -> Result<[(String, String)], APIError> {
        guard let query, !query.isEmpty else { return .success([]) }
        var result: [(String, String)] = []
        for pair in query.split(separator: "&", omittingEmptySubsequences: false) {
            guard !pair.isEmpty else {
                return .failure(APIError(status: 400, reason: "the query has an empty parameter (a doubled or trailing '&')"))
            }
            let name: String
            let value: String
            if let equals = pair.firstIndex(of: "=") {
                name = String(pair[..<equals])
                value = String(pair[pair.index(after: equals)...])
            } else {
                name = String(pair)
                value = ""
            }
            if result.contains(where: { $0.0 == name }) {
                return .failure(APIError(status: 400, reason: "the query parameter \(quoted(shortened(name))) is given twice"))
            }
            result.append((name, value))
        }
        return .success(result)
    }

    private static func noParameters(_ parameters: [(String, String)], _ request: APIRequest) -> Result<APIRequest, APIError> {
        guard let (name, _) = parameters.first else { return .success(request) }
        return .failure(unknownParameter(name, allowed: []))
    }

    private static func unknownParameter(_ name: String, allowed: [String]) -> APIError {
        let hint = allowed.isEmpty ? "this route takes no query parameters" : "this route takes " + allowed.joined(separator: ", ")
        return APIError(status: 400, reason: "unknown query parameter \(quoted(shortened(name))); \(hint)")
    }

    private static func invalidID(_ id: String, what: String) -> APIError {
        APIError(status: 400, reason: "\(quoted(shortened(id))) is not a valid \(what); ids are 1 to 32 characters: "
            + "lower-case letters, digits and '-', starting with a letter or digit")
    }

    /// A decimal UInt64 without sign or leading '+': nil for anything else, overflow included.
    private static func decimal(_ text: String) -> UInt64? {
        let digits = Array(text.utf8)
        guard !digits.isEmpty, digits.count <= 20 else { return nil }
        var value: UInt64 = 0
        for digit in digits {
            guard digit >= UInt8(ascii: "0"), digit <= UInt8(ascii: "9") else { return nil }
            let (times10, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times10.addingReportingOverflow(UInt64(digit - UInt8(ascii: "0")))
            guard !overflow1, !overflow2 else { return nil }
            value = sum
        }
        return value
    }
}

/// At most 64 characters of something a client sent, for a message that echoes it.
func shortened(_ text: String) -> String {
    var characters = 0
    var end = text.startIndex
    while end < text.endIndex, characters < 64 {
        end = text.index(after: end)
        characters += 1
    }
    return end == text.endIndex ? String(text) : String(text[..<end]) + "..."
}
