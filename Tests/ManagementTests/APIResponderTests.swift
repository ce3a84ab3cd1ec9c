import Config
import ManagementModel
import Switch
import XCTest

final class APIResponderTests: XCTestCase {
    private var snapshot: ManagementSnapshot!
    private var configuration: HostConfiguration!

    override func setUp() async throws {
        let backend = try FixtureBackend(audit: MemoryAuditLog())
        snapshot = await backend.snapshot()
        configuration = snapshot.configuration
    }

    private func principal(_ uid: UInt32) -> Principal { Authorization.principal(uid: uid, in: configuration)! }

    private func read(_ request: APIRequest, as uid: UInt32) -> Result<JSONValue, APIError> {
        switch Authorization.decide(uid: uid, request: request, configuration: configuration) {
        case .allowed(let principal, let scope):
            return APIResponder.read(request, caller: principal, scope: scope, snapshot: snapshot)
        case .denied(_, let error):
            return .failure(error)
        }
    }

    /// The configuration document's own object at `path` (tenants[i].ports[j]...), serialized.
    private func documentObject(_ walk: (JSONValue) -> JSONValue?) -> String? {
        JSONParser.parse(fixtureDocument).value.flatMap(walk)?.serialized()
    }

    func testBodiesAreTheConfigurationsOwnObjects() throws {
        let port = try read(.object(tenant: "blue", kind: .ports, id: "a"), as: FixtureUID.hostAdmin).get()
        XCTAssertEqual(port.serialized(), documentObject { $0["tenants"]?.arrayElements?[0]["ports"]?.arrayElements?[0] })
        let partition = try read(.object(tenant: "red", kind: .partitions, id: "red-guest"), as: FixtureUID.operator).get()
        XCTAssertEqual(partition.serialized(),
                       documentObject { $0["tenants"]?.arrayElements?[1]["partitions"]?.arrayElements?[0] })
        let volumes = try read(.objects(tenant: "blue", kind: .volumes), as: FixtureUID.blueViewer).get()
        XCTAssertEqual(volumes["volumes"]?.serialized(), documentObject { $0["tenants"]?.arrayElements?[0]["volumes"] })
        let tenant = try read(.tenant("blue"), as: FixtureUID.blueAdmin).get()
        XCTAssertEqual(tenant.serialized(), documentObject { $0["tenants"]?.arrayElements?[0] })
        let whole = try read(.configuration, as: FixtureUID.auditor).get()
        XCTAssertEqual(whole.serialized(), documentObject { $0 })
        // What comes back is a configuration again.
        XCTAssertEqual(try HostConfiguration.decode(whole.serialized(pretty: true)), configuration)
    }

    func testMissingObjectsAre404() {
        XCTAssertEqual(read(.object(tenant: "blue", kind: .ports, id: "zz"), as: FixtureUID.hostAdmin).failure,
                       .noObject(.ports, "zz", tenant: "blue"))
        XCTAssertEqual(read(.tenant("green"), as: FixtureUID.hostAdmin).failure, .noTenant("green"))
        XCTAssertEqual(read(.objects(tenant: "green", kind: .ports), as: FixtureUID.operator).failure, .noTenant("green"))
        XCTAssertEqual(read(.counters(tenant: "green"), as: FixtureUID.hostAdmin).failure, .noTenant("green"))
    }

    /// Blue's principals: red's objects answer as objects that do not exist, lists leave red out,
    /// and no answer holds one of red's ids.
    func testBluesPrincipalsNeverSeeRed() throws {
        let redIDs = ["red-port", "red-vm", "red-disk", "red-guest", "secret-lan", "10.9.0"]
        for uid in [FixtureUID.blueAdmin, FixtureUID.blueViewer] {
            var answers: [String] = []
            for request in AuthorizationTests.requests(tenant: "red") + AuthorizationTests.requests(tenant: "blue")
                + [.object(tenant: "red", kind: .ports, id: "red-port"), .object(tenant: "red", kind: .partitions, id: "red-guest")] {
                switch read(request, as: uid) {
                case .success(let body): answers.append(body.serialized())
                case .failure(let error):
                    answers.append(error.body.serialized())
                    if request.tenant == "red", error.status == 404 {
                        XCTAssertEqual(error, .noTenant("red"), request.action)
                    }
                }
            }
            let all = answers.joined(separator: "\n")
            for id in redIDs { XCTAssertFalse(all.contains(id), "uid \(uid) sees \(id)") }
            let tenants = try read(.tenants, as: uid).get()
            XCTAssertEqual(tenants["tenants"]?.arrayElements?.compactMap { $0["id"]?.stringValue }, ["blue"])
            let status = try read(.status, as: uid).get()
            let children = status["children"]?.arrayElements ?? []
            XCTAssertEqual(children.compactMap { $0["tenant"]?.stringValue }.filter { $0 != "blue" }, [])
            XCTAssertTrue(children.contains { $0["kind"]?.stringValue == "switch" }, "the shared switch is shown")
            let counters = try read(.counters(tenant: nil), as: uid).get()
            XCTAssertEqual(counters["ports"]?.arrayElements?.count, 3)
            XCTAssertEqual(counters["segments"]?.arrayElements?.count, 1)
        }
    }

    func testHostRolesSeeEveryTenant() throws {
        for uid in [FixtureUID.hostAdmin, FixtureUID.operator, FixtureUID.auditor] {
            let tenants = try read(.tenants, as: uid).get()
            XCTAssertEqual(tenants["tenants"]?.arrayElements?.compactMap { $0["id"]?.stringValue }, ["blue", "red"])
            let counters = try read(.counters(tenant: nil), as: uid).get()
            XCTAssertEqual(counters["ports"]?.arrayElements?.count, 5)
            let red = try read(.counters(tenant: "red"), as: uid).get()
            XCTAssertEqual(red["ports"]?.arrayElements?.count, 2)
            XCTAssertEqual(red["ports"]?.arrayElements?[0]["drops"]?["port-security"]?.serialized(), "2")
            let status = try read(.status, as: uid).get()
            XCTAssertEqual(status["children"]?.arrayElements?.count, 5)
            XCTAssertEqual(status["daemon"]?["cgroups"]?["enabled"]?.serialized(), "false")
        }
    }

    func testHealthNamesTheCaller() throws {
        let health = try read(.health, as: FixtureUID.blueViewer).get()
        XCTAssertEqual(health.serialized(), #"{"status":"ok","principal":"blue-viewer","role":"tenant-viewer","tenant":"blue"}"#)
    }

    func testCountersWithoutASwitch() {
        let body = APIResponder.countersJSON(nil, scope: .host, tenant: nil)
        XCTAssertEqual(body.serialized(), #"{"available":false,"ports":[],"segments":[]}"#)
    }

    func testApplyAnswers() throws {
        let invalid = ConfigurationError(problems: [ConfigurationProblem(path: "$.tenants[0].id", line: 3, column: 5, message: "bad")])
        guard case .failure(let error) = APIResponder.applyAnswer(.invalid(invalid), dryRun: false) else { return XCTFail() }
        XCTAssertEqual(error.status, 422)
        XCTAssertEqual(error.body.serialized(),
                       #"{"error":{"reason":"the configuration has 1 problem; nothing was changed","problems":[{"path":"$.tenants[0].id","line":3,"column":5,"message":"bad"}]}}"#)
        let applied = try APIResponder.applyAnswer(.applied(changes: ["tenant red removed"]), dryRun: true).get()
        XCTAssertEqual(applied.serialized(), #"{"dryRun":true,"applied":false,"changes":["tenant red removed"]}"#)
    }

    func testAuditAnswerKeepsRecordsAsObjects() {
        let body = APIResponder.auditAnswer(records: [#"{"seq":1,"x":"y"}"#, "torn {"], after: 7)
        XCTAssertEqual(body.serialized(), #"{"after":7,"records":[{"seq":1,"x":"y"},"torn {"]}"#)
    }
}

extension Result {
    var failure: Failure? {
        if case .failure(let error) = self { return error }
        return nil
    }
}
