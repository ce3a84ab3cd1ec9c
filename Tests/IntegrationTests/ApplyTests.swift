import Foundation
import XCTest

/// A changed configuration applied while the daemon runs (SIGHUP): only what changed moves, a
/// tenant whose configuration did not change keeps its processes and its traffic, and an invalid
/// document changes nothing.
final class ApplyTests: XCTestCase {
    private func ns(_ tenant: String, _ port: String) -> String { TestTopology.namespace(tenant, port) }

    private func tapPort(_ tenant: String, _ port: String, mac: String, ip: String) -> [String: Any] {
        ["id": port, "kind": "tap", "segment": "lan", "mac": mac, "ips": [ip],
         "netns": ns(tenant, port), "ifname": TestTopology.interface(tenant, port)]
    }

    private func namespaceExists(_ name: String) -> Bool {
        FileManager.default.fileExists(atPath: "/run/netns/\(name)")
    }

    private func write(_ configuration: [String: Any], to path: String) throws {
        let data = try JSONSerialization.data(withJSONObject: configuration, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: path))
    }

    /// SIGHUP, then waits for the daemon's verdict on it (the `n`th SIGHUP of this daemon).
    private func hangUp(_ daemon: RunningDaemon, expecting text: String, count: Int) throws {
        kill(daemon.pid, SIGHUP)
        try BlockHost.waitFor("SIGHUP #\(count) to be handled (\(text))", timeout: 60) {
            daemon.output.occurrences(of: text) >= count
        }
    }

    func testSIGHUPChangesOnlyWhatDiffersAndAnotherTenantsTrafficGoesOn() throws {
        try Host.requireNetworkPrivileges()
        try BlockHost.requireRoot()
        var configuration = try TestTopology.demo()
        let daemon = try RunningDaemon(configuration: configuration)
        try BlockHost.waitFor("a switch per tenant", timeout: 30) { SwitchHost.switches(of: daemon).count == 2 }
        try daemon.waitForForwarding()
        let redSwitch = SwitchHost.switches(of: daemon, tenant: "red")
        var redBlockServer: Int32 = 0, blueBlockServer: Int32 = 0
        try BlockHost.waitFor("a block server per tenant", timeout: 30) {
            let red = SwitchHost.children(of: daemon, "block-server", tenant: "red")
            let blue = SwitchHost.children(of: daemon, "block-server", tenant: "blue")
            (redBlockServer, blueBlockServer) = (red.first ?? 0, blue.first ?? 0)
            return red.count == 1 && blue.count == 1
        }
        let blueSwitch = SwitchHost.switches(of: daemon, tenant: "blue")

        // Red's traffic runs through the whole change: 120 pings, 50 ms apart.
        let redPing = try LoggedProcess(executable: "/usr/bin/env", arguments: [
            "ip", "netns", "exec", ns("red", "a"), "ping", "-c", "120", "-i", "0.05", "-W", "1", "10.0.0.2"])
        defer { if redPing.isRunning { redPing.process.terminate() } }
        Thread.sleep(forTimeInterval: 0.5)

        // Blue gets a third TAP port, and a new tenant arrives with two.
        var tenants = configuration["tenants"] as? [[String: Any]] ?? []
        let blue = try XCTUnwrap(tenants.firstIndex { $0["id"] as? String == "blue" })
        var bluePorts = tenants[blue]["ports"] as? [[String: Any]] ?? []
        bluePorts.append(tapPort("blue", "c", mac: "02:00:00:00:01:04", ip: "10.0.0.4/24"))
        tenants[blue]["ports"] = bluePorts
        tenants.append(["id": "green", "segments": [["id": "lan"]], "ports": [
            tapPort("green", "a", mac: "02:00:00:00:03:01", ip: "10.0.0.1/24"),
            tapPort("green", "b", mac: "02:00:00:00:03:02", ip: "10.0.0.2/24"),
        ]])
        configuration["tenants"] = tenants
        try write(configuration, to: daemon.configPath)
        try hangUp(daemon, expecting: "SIGHUP: configuration applied", count: 1)

        for (tenant, from, to) in [("blue", "c", "10.0.0.1"), ("green", "a", "10.0.0.2"), ("blue", "a", "10.0.0.4")] {
            try BlockHost.waitFor("\(tenant)-\(from) to reach \(to)", timeout: 15) {
                (try? Host.inNamespace(ns(tenant, from), ["ping", "-c", "1", "-W", "1", to]))?.status == 0
            }
        }
        XCTAssertEqual(SwitchHost.switches(of: daemon, tenant: "red"), redSwitch, "red's switch was not restarted:\n\(daemon.output)")
        XCTAssertEqual(SwitchHost.children(of: daemon, "block-server", tenant: "red"), [redBlockServer], "red's block server neither")
        XCTAssertEqual(SwitchHost.children(of: daemon, "block-server", tenant: "blue"), [blueBlockServer],
                       "blue's volumes did not change: its block server keeps running")
        XCTAssertNotEqual(SwitchHost.switches(of: daemon, tenant: "blue"), blueSwitch, "blue's ports changed: its switch restarted")
        XCTAssertEqual(SwitchHost.switches(of: daemon, tenant: "green").count, 1, "green has a switch")

        XCTAssertTrue(redPing.waitForExit(timeout: 30), redPing.output)
        XCTAssertTrue(redPing.output.contains("120 packets transmitted, 120 received"),
                      "red's traffic went on through another tenant's change: \(redPing.output)")

        // An invalid document changes nothing, and says what is wrong.
        var broken = configuration
        var brokenTenants = tenants
        brokenTenants[blue]["ports"] = bluePorts + [tapPort("blue", "d", mac: "02:00:00:00:01:04", ip: "10.0.0.5/24")]
        broken["tenants"] = brokenTenants
        try write(broken, to: daemon.configPath)
        try hangUp(daemon, expecting: "SIGHUP: the configuration is invalid; nothing changed", count: 1)
        XCTAssertTrue(daemon.output.contains("$.tenants[0].ports"), "the problem is named by its path:\n\(daemon.output)")
        XCTAssertFalse(namespaceExists(ns("blue", "d")), "no port of an invalid document is set up")

        // What needs a restart of the daemon is refused, also changing nothing.
        var moved = configuration
        moved["host"] = ["stateDirectory": daemon.stateDirectory + "-elsewhere"]
        try write(moved, to: daemon.configPath)
        try hangUp(daemon, expecting: "SIGHUP: the configuration is invalid; nothing changed", count: 2)
        XCTAssertTrue(daemon.output.contains("host.stateDirectory cannot change while the daemon runs"), daemon.output)

        // A port that changes (blue's b gets another MAC and address) is set up again under its
        // name; blue's other ports keep their devices.
        let indexOfA = try Host.inNamespace(ns("blue", "a"), ["cat", "/sys/class/net/\(TestTopology.interface("blue", "a"))/ifindex"]).output
        var changedPorts = bluePorts
        changedPorts[1]["mac"] = "02:00:00:00:01:09"
        changedPorts[1]["ips"] = ["10.0.0.9/24"]
        tenants[blue]["ports"] = changedPorts
        configuration["tenants"] = tenants
        try write(configuration, to: daemon.configPath)
        try hangUp(daemon, expecting: "SIGHUP: configuration applied", count: 2)
        try BlockHost.waitFor("blue-a to reach b at its new address", timeout: 15) {
            (try? Host.inNamespace(ns("blue", "a"), ["ping", "-c", "1", "-W", "1", "10.0.0.9"]))?.status == 0
        }
        XCTAssertEqual(try Host.inNamespace(ns("blue", "a"), ["cat", "/sys/class/net/\(TestTopology.interface("blue", "a"))/ifindex"]).output,
                       indexOfA, "blue's unchanged port a kept its device")
        XCTAssertEqual(SwitchHost.switches(of: daemon, tenant: "red"), redSwitch, "red's switch is still the first one")

        // Green leaves: its switch, ports and namespaces go; the others stay.
        configuration["tenants"] = tenants.filter { $0["id"] as? String != "green" }
        try write(configuration, to: daemon.configPath)
        try hangUp(daemon, expecting: "SIGHUP: configuration applied", count: 3)
        try BlockHost.waitFor("green's switch to stop", timeout: 15) { SwitchHost.switches(of: daemon, tenant: "green").isEmpty }
        XCTAssertFalse(namespaceExists(ns("green", "a")), "green's namespaces are removed")
        let ping = try Host.inNamespace(ns("red", "a"), ["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.0.0.2"])
        XCTAssertEqual(ping.status, 0, ping.output)
        XCTAssertEqual(SwitchHost.switches(of: daemon, tenant: "red"), redSwitch, "red's switch still the first one")
        XCTAssertEqual(daemon.stop(), 0, daemon.output)
    }
}
