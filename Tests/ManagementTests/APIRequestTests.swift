import Config
import ManagementModel
import XCTest

final class APIRequestTests: XCTestCase {
    private func parse(_ method: String, _ path: String, query: String? = nil, body: [UInt8] = []) -> Result<APIRequest, APIError> {
        APIRequest.parse(method: method, path: path, query: query, body: body)
    }

    private func status(_ result: Result<APIRequest, APIError>) -> Int {
        switch result {
        case .success: 200
        case .failure(let error): error.status
        }
    }

    func testEveryRouteDecodes() {
        XCTAssertEqual(try parse("GET", "/v1/health").get(), .health)
        XCTAssertEqual(try parse("GET", "/v1/status").get(), .status)
        XCTAssertEqual(try parse("GET", "/v1/tenants").get(), .tenants)
        XCTAssertEqual(try parse("GET", "/v1/tenants/blue").get(), .tenant("blue"))
        for kind in ObjectKind.allCases {
            XCTAssertEqual(try parse("GET", "/v1/tenants/blue/\(kind.rawValue)").get(), .objects(tenant: "blue", kind: kind))
            XCTAssertEqual(try parse("GET", "/v1/tenants/blue/\(kind.rawValue)/a-1").get(), .object(tenant: "blue", kind: kind, id: "a-1"))
        }
        for action in PartitionAction.allCases {
            XCTAssertEqual(try parse("POST", "/v1/tenants/blue/partitions/guest/\(action.rawValue)").get(),
                           .partition(action, tenant: "blue", id: "guest"))
        }
        XCTAssertEqual(try parse("GET", "/v1/counters").get(), .counters(tenant: nil))
        XCTAssertEqual(try parse("GET", "/v1/counters", query: "tenant=blue").get(), .counters(tenant: "blue"))
        XCTAssertEqual(try parse("GET", "/v1/configuration").get(), .configuration)
        XCTAssertEqual(try parse("PUT", "/v1/configuration", body: Array("{}".utf8)).get(), .apply(document: "{}", dryRun: false))
        XCTAssertEqual(try parse("PUT", "/v1/configuration", query: "dryRun=true", body: Array("{}".utf8)).get(),
                       .apply(document: "{}", dryRun: true))
        XCTAssertEqual(try parse("GET", "/v1/audit").get(), .audit(after: 0, limit: 100))
        XCTAssertEqual(try parse("GET", "/v1/audit", query: "after=18446744073709551615&limit=1000").get(),
                       .audit(after: UInt64.max, limit: 1000))
    }

    func testUnknownRoutesAre404() {
        for path in ["/", "", "/v1", "/v1/", "/v2/health", "/v1/health/", "//v1/health", "/v1//health", "/v1/tenants/",
                     "/v1/tenants/blue/acl", "/v1/tenants/blue/ports/a/start", "/v1/tenants/blue/partitions/guest/kill",
                     "/v1/tenants/blue/partitions/guest/start/now", "/V1/health", "/v1/HEALTH", "v1/health",
                     "/v1/health?x", "/v1/tenants/blue/ports/a/b/c/d"] {
            XCTAssertEqual(status(parse("GET", path)), 404, path)
        }
    }

    func testWrongMethodIs405WithAllow() {
        guard case .failure(let error) = parse("DELETE", "/v1/configuration") else { return XCTFail() }
        XCTAssertEqual(error.status, 405)
        XCTAssertEqual(error.allow, ["GET", "PUT"])
        guard case .failure(let get) = parse("GET", "/v1/tenants/blue/partitions/guest/stop") else { return XCTFail() }
        XCTAssertEqual(get.allow, ["POST"])
        for method in ["POST", "PUT", "HEAD", "OPTIONS", "get", "", "G\u{0}T"] {
            XCTAssertEqual(status(parse(method, "/v1/health")), 405, method)
        }
    }

    func testHostileIdsAre400WithAReason() {
        for id in ["..", ".", "%2e%2e", "%2E%2E", "Blue", "-blue", "blue_1", "bl ue", "blüe", "b\u{0}", "\u{202E}x",
                   String(repeating: "a", count: 33), "a%2Fb", "%00"] {
            for path in ["/v1/tenants/\(id)", "/v1/tenants/blue/ports/\(id)", "/v1/tenants/\(id)/partitions/guest/stop"] {
                let method = path.hasSuffix("/stop") ? "POST" : "GET"
                guard case .failure(let error) = parse(method, path) else { XCTFail(path); continue }
                XCTAssertEqual(error.status, 400, path)
                XCTAssertTrue(error.reason.contains("is not a valid"), error.reason)
            }
        }
        XCTAssertEqual(try parse("GET", "/v1/tenants/" + String(repeating: "a", count: 32)).get(),
                       .tenant(String(repeating: "a", count: 32)))
    }

    func testLongPathsQueriesAndBodies() {
        XCTAssertEqual(status(parse("GET", "/v1/tenants/" + String(repeating: "a", count: 5000))), 414)
        XCTAssertEqual(status(parse("GET", "/v1/audit", query: String(repeating: "a", count: 5000))), 414)
        XCTAssertEqual(status(parse("PUT", "/v1/configuration", body: [UInt8](repeating: 0x20, count: (1 << 20) + 1))), 413)
        XCTAssertEqual(status(parse("PUT", "/v1/configuration", body: [UInt8](repeating: 0x20, count: 1 << 20))), 200)
    }

    func testQueriesAreStrict() {
        XCTAssertEqual(status(parse("GET", "/v1/health", query: "verbose=1")), 400)
        XCTAssertEqual(status(parse("GET", "/v1/counters", query: "tenant=Blue")), 400)
        XCTAssertEqual(status(parse("GET", "/v1/counters", query: "tenant=")), 400)
        XCTAssertEqual(status(parse("GET", "/v1/counters", query: "tenant=blue&tenant=red")), 400)
        XCTAssertEqual(status(parse("GET", "/v1/counters", query: "tenant=blue&")), 400)
        XCTAssertEqual(status(parse("GET", "/v1/audit", query: "after=-1")), 400)
        XCTAssertEqual(status(parse("GET", "/v1/audit", query: "after=18446744073709551616")), 400)
        XCTAssertEqual(status(parse("GET", "/v1/audit", query: "after=+1")), 400)
        XCTAssertEqual(status(parse("GET", "/v1/audit", query: "limit=0")), 400)
        XCTAssertEqual(status(parse("GET", "/v1/audit", query: "limit=1001")), 400)
        XCTAssertEqual(status(parse("GET", "/v1/audit", query: "limit=99999999999999999999999")), 400)
        // A typo must never turn a dry run into an apply.
        XCTAssertEqual(status(parse("PUT", "/v1/configuration", query: "dryrun=true", body: [0x7B, 0x7D])), 400)
        XCTAssertEqual(status(parse("PUT", "/v1/configuration", query: "dryRun=yes", body: [0x7B, 0x7D])), 400)
        XCTAssertEqual(status(parse("GET", "/v1/health", query: "")), 200)
    }

    func testBodies() {
        XCTAssertEqual(status(parse("GET", "/v1/status", body: [0x7B, 0x7D])), 400)
        XCTAssertEqual(status(parse("POST", "/v1/tenants/blue/partitions/guest/stop", body: [1])), 400)
        XCTAssertEqual(status(parse("PUT", "/v1/configuration")), 400)
        XCTAssertEqual(status(parse("PUT", "/v1/configuration", body: [0xFF, 0xFE, 0x7B])), 400)
        // Bad JSON is for the configuration's decoder (422 with its problems), after authorization.
        XCTAssertEqual(status(parse("PUT", "/v1/configuration", body: Array("{not json".utf8))), 200)
    }

    func testEchoedTextIsBoundedAndEscaped() {
        guard case .failure(let error) = parse("GET", "/v1/tenants/" + String(repeating: "\"", count: 500)) else { return XCTFail() }
        XCTAssertLessThan(error.reason.utf8.count, 400)
        XCTAssertTrue(error.reason.contains("\\\""), error.reason)
        // The body is JSON that parses back to the same reason.
        let text = error.body.serialized()
        XCTAssertEqual(JSONParser.parse(text).value?["error"]?["reason"]?.stringValue, error.reason)
    }

    func testRandomInputsNeverGive5xx() {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("/v1tenasprioucg.%2eE?&=-_ \u{0}é/".unicodeScalars)
        for _ in 0..<20_000 {
            let length = Int.random(in: 0...40, using: &generator)
            var path = "/v1/"
            for _ in 0..<length { path.unicodeScalars.append(alphabet.randomElement(using: &generator)!) }
            let method = ["GET", "POST", "PUT", "PATCH"].randomElement(using: &generator)!
            let result = parse(method, path, query: Bool.random() ? "tenant=blue" : nil, body: Bool.random() ? [] : [0x7B])
            if case .failure(let error) = result {
                XCTAssert((400..<500).contains(error.status), "\(method) \(path): \(error)")
            }
        }
    }
}
