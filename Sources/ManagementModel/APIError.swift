import Config

/// An answer other than success: its HTTP status and the body every error of the API has,
/// `{"error": {"reason": "...", "problems": [{"path", "line", "column", "message"}]}}`.
public struct APIError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The HTTP status code (4xx, or 5xx for a failure of the host).
    public var status: Int
    /// What went wrong, in one sentence a user can act on.
    public var reason: String
    /// The configuration's own problems, for a configuration that cannot be applied.
    public var problems: [ConfigurationProblem]
    /// The methods the path allows, for 405 (the `Allow` header).
    public var allow: [String]

    public init(status: Int, reason: String, problems: [ConfigurationProblem] = [], allow: [String] = []) {
        self.status = status; self.reason = reason; self.problems = problems; self.allow = allow
    }

    public var description: String { "\(status): \(reason)" }

    /// The JSON body of this error.
    public var body: JSONValue {
        var error: [(String, JSONValue)] = [("reason", .string(reason))]
        if !problems.isEmpty { error.append(("problems", .array(problems.map(APIError.problemJSON)))) }
        return .object([("error", .object(error))])
    }

    static func problemJSON(_ problem: ConfigurationProblem) -> JSONValue {
        var members: [(String, JSONValue)] = [("path", .string(problem.path))]
        if let line = problem.line { members.append(("line", .number(line))) }
        if let column = problem.column { members.append(("column", .number(column))) }
        members.append(("message", .string(problem.message)))
        return .object(members)
    }

    // MARK: The errors the API gives

    /// A tenant that does not exist, or that the caller may not see: both are answered alike,
    /// so that a tenant's principal learns nothing of other tenants.
    public static func noTenant(_ tenant: String) -> APIError {
        APIError(status: 404, reason: "no tenant \(quoted(tenant))")
    }

    /// An object that does not exist in a tenant the caller sees.
    public static func noObject(_ kind: ObjectKind, _ id: String, tenant: String) -> APIError {
        APIError(status: 404, reason: "no \(kind.singular) \(quoted(id)) in tenant \(quoted(tenant))")
    }

    /// A caller whose uid maps to no principal: the body says only that.
    public static func unknownCaller(uid: UInt32) -> APIError {
        APIError(status: 403, reason: "caller uid \(uid) is not a principal of this host")
    }

    /// A principal whose role does not allow the operation.
    public static func forbidden(_ principal: Principal, _ request: APIRequest) -> APIError {
        APIError(status: 403, reason: "principal \(quoted(principal.name)) has role \(principal.role.rawValue), "
            + "which may not \(request.operationDescription) (\(request.action))")
    }

    /// The audit log cannot be written: nothing is done and nothing is answered but this.
    public static func auditUnavailable(_ detail: String) -> APIError {
        APIError(status: 503, reason: "the audit log cannot be written, so nothing was done: \(detail)")
    }
}

/// `"text"`, with quotes, backslashes and control characters escaped, for messages that echo
/// what a client sent.
func quoted(_ text: String) -> String {
    JSONValue.string(text).serialized()
}
