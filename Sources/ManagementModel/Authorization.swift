import Config

/// What an allowed caller sees: the whole host, or one tenant (whose principals see no other
/// tenant at all: not in lists, and not by name, where the answer is the one for a tenant that
/// does not exist).
public enum Scope: Sendable, Equatable {
    case host
    case tenant(String)

    /// Whether objects of `tenant` are visible in this scope.
    public func sees(tenant: String) -> Bool {
        switch self {
        case .host: true
        case .tenant(let own): own == tenant
        }
    }
}

/// The outcome of `Authorization.decide`.
public enum Decision: Sendable, Equatable {
    /// The call may go ahead, with what the caller may see.
    case allowed(Principal, Scope)
    /// The call is refused with this answer (403, or 404 for another tenant's objects).
    /// `principal` is nil for a caller whose uid is no principal's.
    case denied(Principal?, APIError)
}

/// Role-based access control of the management API: who may do what, decided from the caller's
/// uid (the socket's peer credentials, nothing the request says) and the configuration's
/// principals. Pure: tested for every role and operation, and fuzzed.
public enum Authorization {
    /// The operations roles are granted, coarser than requests.
    public enum Operation: String, Sendable, Equatable, CaseIterable {
        /// Health, status, tenants and their objects, counters.
        case read
        case partitionLifecycle = "partition-lifecycle"
        case readConfiguration = "read-configuration"
        case applyConfiguration = "apply-configuration"
        case readAudit = "read-audit"

        public init(_ request: APIRequest) {
            switch request {
            case .health, .status, .tenants, .tenant, .objects, .object, .counters: self = .read
            case .partition: self = .partitionLifecycle
            case .configuration: self = .readConfiguration
            // A dry run shows how the new document differs from the applied one: the applied
            // document's contents, so it needs the right to read the configuration, and it is
            // the step before applying: only those who may apply may check.
            case .apply: self = .applyConfiguration
            case .audit: self = .readAudit
            }
        }
    }

    /// Whether `role` is granted `operation` (within its scope, for a tenant's roles).
    public static func grants(_ role: Role, _ operation: Operation) -> Bool {
        switch (role, operation) {
        case (.hostAdmin, _): true
        case (_, .read): true
        case (.operator, .partitionLifecycle), (.tenantAdmin, .partitionLifecycle): true
        case (.auditor, .readConfiguration), (.auditor, .readAudit): true
        default: false
        }
    }

    /// The principal with this uid; validation keeps uids unique.
    public static func principal(uid: UInt32, in configuration: HostConfiguration) -> Principal? {
        configuration.principals.first { $0.uid == uid }
    }

    /// Whether the caller with `uid` may make `request`, and what it sees.
    ///
    /// An unknown uid is refused everything (403, health included). A role not granted the
    /// operation is refused with 403 naming the role and the operation. A tenant's principal
    /// asking about another tenant gets exactly the 404 of a tenant that does not exist.
    public static func decide(uid: UInt32, request: APIRequest, configuration: HostConfiguration) -> Decision {
        decide(caller: principal(uid: uid, in: configuration), uid: uid, request: request)
    }

    /// `decide(uid:request:configuration:)` for a caller already looked up.
    public static func decide(caller: Principal?, uid: UInt32, request: APIRequest) -> Decision {
        guard let caller else { return .denied(nil, .unknownCaller(uid: uid)) }
        guard grants(caller.role, Operation(request)) else { return .denied(caller, .forbidden(caller, request)) }
        let scope: Scope
        switch caller.role {
        case .hostAdmin, .operator, .auditor:
            scope = .host
        case .tenantAdmin, .tenantViewer:
            guard let tenant = caller.tenant else {
                // Validation requires a tenant for these roles; a principal without one sees nothing.
                return .denied(caller, APIError(status: 403, reason: "principal \(quoted(caller.name)) has role "
                    + "\(caller.role.rawValue) but no tenant"))
            }
            scope = .tenant(tenant)
        }
        if let tenant = request.tenant, !scope.sees(tenant: tenant) {
            return .denied(caller, .noTenant(tenant))
        }
        return .allowed(caller, scope)
    }
}
