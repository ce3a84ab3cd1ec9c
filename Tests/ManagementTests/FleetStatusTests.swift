import FleetModel
import Management
import ManagementModel
import XCTest

/// The fleet part of the status: shown to host principals, with every field; never to a tenant
/// principal (it names other hosts).
final class FleetStatusTests: XCTestCase {
    private let status = HostStatus(
        daemon: DaemonStatus(pid: 7, startedAt: "2026-12-01T00:00:00Z", executableSHA256: "a", configurationSHA256: "b",
                             cgroups: .enabled(path: "/sys/fs/cgroup/bh")),
        children: [],
        fleet: FleetStatus(hostId: "h1", state: "disconnected", since: "2026-12-01T00:01:00Z", endpoint: "http://10.99.0.254:2379",
                           revision: 42, lease: "694d7a1b", remoteHosts: ["h2", "h3"], lastError: "connection refused",
                           problems: ["port blue/lan/h9/x: its host has no (valid) host record"]),
        underlayUnknownVNI: 5)

    func testHostPrincipalsSeeTheFleet() throws {
        let body = APIResponder.statusJSON(status, scope: .host)
        let fleet = try XCTUnwrap(body["fleet"])
        XCTAssertEqual(fleet["hostId"]?.stringValue, "h1")
        XCTAssertEqual(fleet["state"]?.stringValue, "disconnected")
        XCTAssertEqual(fleet["remoteHosts"]?.arrayElements?.compactMap(\.stringValue), ["h2", "h3"])
        XCTAssertEqual(fleet["revision"]?.serialized(), "42")
        XCTAssertEqual(fleet["underlayUnknownVNIDatagrams"]?.serialized(), "5")
        let text = CtlTables.status(body)
        XCTAssertTrue(text.contains("fleet: host h1, disconnected since 2026-12-01T00:01:00Z (etcd http://10.99.0.254:2379)"), text)
        XCTAssertTrue(text.contains("remote hosts: h2, h3"), text)
        XCTAssertTrue(text.contains("last error: connection refused"), text)
    }

    func testTenantPrincipalsDoNotSeeOtherHosts() {
        XCTAssertNil(APIResponder.statusJSON(status, scope: .tenant("blue"))["fleet"])
        var alone = status
        alone.fleet = nil
        XCTAssertNil(APIResponder.statusJSON(alone, scope: .host)["fleet"])
    }
}
