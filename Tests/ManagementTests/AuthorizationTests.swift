import Config
import ManagementModel
import XCTest

/// The role x operation matrix through the pure decision, for every role, every route, the
/// caller's own tenant, another tenant, a tenant that does not exist, and unknown uids.
final class AuthorizationTests: XCTestCase {
    /// Every request of the API about tenant `t` (and the host's).
    static func requests(tenant t: String) -> [APIRequest] {
        var list: [APIRequest] = [.health, .status, .tenants, .tenant(t), .counters(tenant: nil), .counters(tenant: t),
                                  .configuration, .apply(document: "{}", dryRun: false),
                                  .apply(document: "{}", dryRun: true), .audit(after: 0, limit: 10)]
        for kind in ObjectKind.allCases {
            list.append(.objects(tenant: t, kind: kind))
            list.append(.object(tenant: t, kind: kind, id: "x"))
        }
        for action in PartitionAction.allCases { list.append(.partition(action, tenant: t, id: "guest")) }
        return list
    }

    enum Expected: Equatable { case allowed(Scope), forbidden, invisible }

    /// The matrix written out from the roles' definitions, independently of `Authorization.grants`.
    static func expected(_ role: Role, own: String?, _ request: APIRequest) -> Expected {
        let isRead: Bool
        switch request {
        case .health, .status, .tenants, .tenant, .objects, .object, .counters: isRead = true
        default: isRead = false
        }
        let isLifecycle: Bool = if case .partition = request { true } else { false }
        let isConfigurationRead = request == .configuration
        let isApply: Bool = if case .apply = request { true } else { false }
        let isAudit: Bool = if case .audit = request { true } else { false }

        switch role {
        case .hostAdmin:
            return .allowed(.host)
        case .operator:
            return isRead || isLifecycle ? .allowed(.host) : .forbidden
        case .auditor:
            return isRead || isConfigurationRead || isAudit ? .allowed(.host) : .forbidden
        case .tenantAdmin, .tenantViewer:
            let granted = isRead || (isLifecycle && role == .tenantAdmin)
            guard granted else { return .forbidden }
            _ = isApply
            if let tenant = request.tenant, tenant != own { return .invisible }
            return .allowed(.tenant(own ?? ""))
        }
    }

    func testEveryRoleAgainstEveryOperation() throws {
        let configuration = try fixtureConfiguration()
        let callers: [(UInt32, Role, String?)] = [
            (FixtureUID.hostAdmin, .hostAdmin, nil), (FixtureUID.operator, .operator, nil),
            (FixtureUID.blueAdmin, .tenantAdmin, "blue"), (FixtureUID.blueViewer, .tenantViewer, "blue"),
            (FixtureUID.auditor, .auditor, nil),
        ]
        var checked = 0
        for (uid, role, own) in callers {
            for tenant in ["blue", "red", "green"] {
                for request in Self.requests(tenant: tenant) {
                    let decision = Authorization.decide(uid: uid, request: request, configuration: configuration)
                    let expected = Self.expected(role, own: own, request)
                    let context = "\(role.rawValue) \(request.action) \(request.target)"
                    switch (expected, decision) {
                    case (.allowed(let scope), .allowed(let principal, let got)):
                        XCTAssertEqual(got, scope, context)
                        XCTAssertEqual(principal.uid, uid, context)
                    case (.forbidden, .denied(let principal, let error)):
                        XCTAssertEqual(error.status, 403, context)
                        XCTAssertEqual(principal?.uid, uid, context)
                        XCTAssertTrue(error.reason.contains(role.rawValue), "names the role: \(context): \(error.reason)")
                        XCTAssertTrue(error.reason.contains(request.action), "names the operation: \(context): \(error.reason)")
                    case (.invisible, .denied(_, let error)):
                        // Exactly the answer for a tenant that does not exist.
                        XCTAssertEqual(error, APIError.noTenant(tenant), context)
                        XCTAssertEqual(error.status, 404, context)
                    default:
                        XCTFail("\(context): expected \(expected), got \(decision)")
                    }
                    checked += 1
                }
            }
        }
        XCTAssertEqual(checked, 5 * 3 * Self.requests(tenant: "blue").count)
    }

    func testUnknownUidIsRefusedEverythingWithOnlyItsUid() throws {
        let configuration = try fixtureConfiguration()
        for uid in [FixtureUID.unknown, 1, 65534, UInt32.max] {
            for request in Self.requests(tenant: "blue") {
                let decision = Authorization.decide(uid: uid, request: request, configuration: configuration)
                guard case .denied(nil, let error) = decision else {
                    XCTFail("uid \(uid) \(request.action): \(decision)"); continue
                }
                XCTAssertEqual(error.status, 403)
                XCTAssertEqual(error.reason, "caller uid \(uid) is not a principal of this host")
            }
        }
    }

    func testAnotherTenantIsAnsweredLikeATenantThatDoesNotExist() throws {
        let configuration = try fixtureConfiguration()
        for uid in [FixtureUID.blueAdmin, FixtureUID.blueViewer] {
            for (red, green) in zip(Self.requests(tenant: "red"), Self.requests(tenant: "green")) {
                let a = Authorization.decide(uid: uid, request: red, configuration: configuration)
                let b = Authorization.decide(uid: uid, request: green, configuration: configuration)
                guard case .denied(_, let redError) = a, case .denied(_, let greenError) = b else {
                    // Reads of the host as a whole (health, status, ...) are allowed for both alike.
                    XCTAssertEqual("\(a)", "\(b)", red.action)
                    continue
                }
                XCTAssertEqual(redError.status, greenError.status, red.action)
                XCTAssertEqual(redError.reason.replacingOccurrences(of: "red", with: "green"), greenError.reason, red.action)
            }
        }
    }

    func testTenantAdminOfRedSeesOnlyRed() throws {
        let configuration = try fixtureConfiguration()
        let decision = Authorization.decide(uid: FixtureUID.redAdmin, request: .partition(.stop, tenant: "red", id: "red-guest"),
                                            configuration: configuration)
        guard case .allowed(_, .tenant("red")) = decision else { return XCTFail("\(decision)") }
        let blue = Authorization.decide(uid: FixtureUID.redAdmin, request: .partition(.stop, tenant: "blue", id: "guest"),
                                        configuration: configuration)
        XCTAssertEqual(blue, .denied(configuration.principals[5], .noTenant("blue")))
    }

    func testTenantRoleWithoutTenantSeesNothing() {
        let configuration = HostConfiguration(host: HostSettings(stateDirectory: "/x"),
                                              principals: [Principal(name: "odd", uid: 5, role: .tenantAdmin)])
        let decision = Authorization.decide(uid: 5, request: .tenants, configuration: configuration)
        guard case .denied(_, let error) = decision else { return XCTFail("\(decision)") }
        XCTAssertEqual(error.status, 403)
    }
}
