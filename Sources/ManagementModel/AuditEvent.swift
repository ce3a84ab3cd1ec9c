/// What the management API records of each call, before it answers: the daemon writes it to the
/// audit log (with the time and the hash chain).
public struct APIAuditEvent: Sendable, Equatable {
    public enum Outcome: Sendable, Equatable {
        case allowed
        case denied(String)
        case failed(String)
    }

    /// The principal's name, or "unknown" for a uid that is none.
    public var principal: String
    /// The caller's uid, from the socket's peer credentials.
    public var uid: UInt32
    /// `api.partition.stop`, `api.configuration.apply`, ...; `api.invalid` for a request that
    /// does not decode.
    public var action: String
    /// `blue/guest`, `blue`, or "" for the host.
    public var target: String
    public var outcome: Outcome

    public init(principal: String, uid: UInt32, action: String, target: String, outcome: Outcome) {
        self.principal = principal; self.uid = uid; self.action = action; self.target = target; self.outcome = outcome
    }
}
