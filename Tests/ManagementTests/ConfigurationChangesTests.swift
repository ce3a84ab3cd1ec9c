import Config
import ManagementModel
import XCTest

final class ConfigurationChangesTests: XCTestCase {
    func testChangesAreListedByObject() throws {
        let old = try fixtureConfiguration()
        XCTAssertEqual(ConfigurationChanges.changes(from: old, to: old), [])

        var new = old
        new.tenants[0].ports[1].ips = []
        new.tenants[0].ports.append(Port(id: "c", segment: "lan", mac: MACAddress(2, 0, 0, 0, 1, 9)))
        new.tenants[0].volumes[0].readOnly = true
        new.tenants[0].acl = [ACLRule(action: .deny)]
        new.tenants.remove(at: 1)
        new.tenants.append(Tenant(id: "green"))
        new.principals.removeLast()
        new.host.auditLog = "/var/log/bh-audit"
        XCTAssertEqual(ConfigurationChanges.changes(from: old, to: new), [
            "host settings changed",
            "principal red-admin removed",
            "tenant red removed",
            "tenant blue: port b changed",
            "tenant blue: port c added",
            "tenant blue: volume data changed",
            "tenant blue: acl changed",
            "tenant green added",
        ])
    }
}
