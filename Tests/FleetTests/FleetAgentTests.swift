import Config
import FleetModel
import Foundation
import Logging
import XCTest
@testable import Fleet

/// The fleet agent against a real etcd (started per test): registration, the map and its views,
/// lease expiry, revocation, an etcd restart, bad records.
final class FleetAgentTests: XCTestCase {
    private var etcd: EtcdProcess?
    private var agents: [FleetAgent] = []

    override func setUp() async throws {
        let etcd = try EtcdProcess()
        self.etcd = etcd
        try await etcd.start()
    }

    override func tearDown() async throws {
        for agent in agents { await agent.stop() }
        agents = []
        etcd?.cleanUp()
        etcd = nil
    }

    private func port(_ id: String, _ last: UInt8, segment: String = "lan") -> Config.Port {
        Config.Port(id: id, segment: segment, mac: MACAddress(0x02, 0, 0, 0, 0, last),
             ips: [IPPrefix("10.0.0.\(last)/24")].compactMap { $0 })
    }

    private func configuration(_ ports: [Config.Port], vni: UInt32 = 100) -> HostConfiguration {
        HostConfiguration(host: HostSettings(stateDirectory: "/var/lib/bh"), tenants: [
            Tenant(id: "blue", segments: [Segment(id: "lan", vni: vni), Segment(id: "local")], ports: ports),
            Tenant(id: "red", segments: [Segment(id: "lan")]),
        ])
    }

    private func agent(_ hostId: String, underlay: String, leaseSeconds: Int = 10, endpoints: [String]? = nil,
                       logs: LogRecorder? = nil) throws -> FleetAgent {
        let etcd = try XCTUnwrap(etcd)
        let settings = FleetSettings(hostId: hostId, underlayAddress: try XCTUnwrap(IPAddress(underlay)),
                                     etcd: EtcdSettings(endpoints: endpoints ?? [etcd.endpoint]), leaseSeconds: leaseSeconds)
        var logger = Logger(label: "fleet-\(hostId)") { label -> any LogHandler in
            if let logs { return logs.handler(label: label) }
            return SwiftLogNoOpLogHandler()
        }
        logger.logLevel = .debug
        let agent = try FleetAgent(settings: settings, logger: logger)
        agents.append(agent)
        return agent
    }

    /// The remote hosts and their port ids in segment `lan` of blue's latest view.
    private func remote(_ recorder: ViewRecorder) -> [String: [String]] {
        guard let segment = recorder.latest?["blue"]?.segments.first(where: { $0.id == "lan" }) else { return [:] }
        return Dictionary(uniqueKeysWithValues: segment.hosts.map { ($0.id, $0.ports.map(\.id)) })
    }

    func testAgentsSeeEachOthersPortsAndUpdates() async throws {
        let a = try agent("h1", underlay: "192.0.2.1", endpoints: ["http://127.0.0.1:1", try XCTUnwrap(etcd).endpoint])
        let b = try agent("h2", underlay: "192.0.2.2")
        let c = try agent("h3", underlay: "192.0.2.3")
        let (viewsA, viewsB, viewsC) = (ViewRecorder(), ViewRecorder(), ViewRecorder())
        a.start(configuration: configuration([port("a1", 1)]), onViews: viewsA.callback)
        b.start(configuration: configuration([port("b1", 2)]), onViews: viewsB.callback)
        c.start(configuration: configuration([port("c1", 3)]), onViews: viewsC.callback)

        // The first views are the empty ones, before etcd answered.
        try await waitUntil("a's first views", timeout: 5) { !viewsA.all.isEmpty }
        let first = try XCTUnwrap(viewsA.all.first)
        XCTAssertEqual(first, ["blue": FleetView.empty(for: configuration([]).tenants[0])])
        XCTAssertNil(first["red"], "a tenant without a segment with a VNI has no view")

        try await waitUntil("each agent sees the two others", timeout: 10) {
            remote(viewsA) == ["h2": ["b1"], "h3": ["c1"]] && remote(viewsB) == ["h1": ["a1"], "h3": ["c1"]]
                && remote(viewsC) == ["h1": ["a1"], "h2": ["b1"]]
        }
        let segment = try XCTUnwrap(viewsA.latest?["blue"]?.segments.first)
        XCTAssertEqual(segment, FleetView.Segment(id: "lan", vni: 100, hosts: [
            .init(id: "h2", underlay: "192.0.2.2", ports: [.init(id: "b1", mac: "02:00:00:00:00:02", ips: ["10.0.0.2"])]),
            .init(id: "h3", underlay: "192.0.2.3", ports: [.init(id: "c1", mac: "02:00:00:00:00:03", ips: ["10.0.0.3"])]),
        ]))
        try await waitUntil("a is connected", timeout: 5) { a.status().state == "connected" }
        let status = a.status()
        XCTAssertEqual(status.remoteHosts, ["h2", "h3"])
        XCTAssertEqual(status.endpoint, try XCTUnwrap(etcd).endpoint, "the dead first endpoint was passed over")
        XCTAssertNotNil(status.lease)
        XCTAssertGreaterThan(status.revision, 0)
        XCTAssertEqual(status.problems, [])

        // A port added by update() appears at the others; a removed one disappears.
        let updated = Date()
        await b.update(configuration: configuration([port("b2", 4)]))
        defer { print("fleet: an update reached another host in \(String(format: "%.3f", Date().timeIntervalSince(updated))) s") }
        try await waitUntil("a sees b's new port and not its old one", timeout: 5) {
            remote(viewsA)["h2"] == ["b2"]
        }

        // stop() revokes the lease: gone at once (the lease is 10 s).
        let stopped = Date()
        await c.stop()
        // The host and port keys go in one revision but through two watches (two answers).
        try await waitUntil("a no longer sees h3", timeout: 2) {
            remote(viewsA)["h3"] == nil && remote(viewsB)["h3"] == nil && a.status().remoteHosts == ["h2"]
        }
        print("fleet: a stopped host left the others' views in \(String(format: "%.3f", Date().timeIntervalSince(stopped))) s")
    }

    func testCrashedAgentExpiresWithItsLease() async throws {
        let a = try agent("h1", underlay: "192.0.2.1", leaseSeconds: 2)
        let b = try agent("h2", underlay: "192.0.2.2", leaseSeconds: 2)
        let viewsA = ViewRecorder()
        a.start(configuration: configuration([port("a1", 1)]), onViews: viewsA.callback)
        b.start(configuration: configuration([port("b1", 2)]), onViews: ViewRecorder().callback)
        try await waitUntil("a sees b", timeout: 10) { remote(viewsA) == ["h2": ["b1"]] }
        // Several renewals pass: the lease is kept alive.
        try await Task.sleep(for: .seconds(3))
        XCTAssertEqual(remote(viewsA), ["h2": ["b1"]], "b's lease was kept alive")

        let crashed = Date()
        await b.abandon()
        try await waitUntil("a drops b once its lease expires", timeout: 3) { remote(viewsA).isEmpty }
        let elapsed = Date().timeIntervalSince(crashed)
        print("fleet: host dropped \(String(format: "%.2f", elapsed)) s after its agent died (lease 2 s)")
        XCTAssertGreaterThan(elapsed, 1, "the host went with its lease, not at once")
        try await waitUntil("a's status lists no remote host", timeout: 1) { a.status().remoteHosts.isEmpty }
    }

    func testLostLeaseIsGrantedAgainAndRecordsPutAgain() async throws {
        let etcd = try XCTUnwrap(etcd)
        let a = try agent("h1", underlay: "192.0.2.1", leaseSeconds: 3)
        let b = try agent("h2", underlay: "192.0.2.2", leaseSeconds: 3)
        let viewsA = ViewRecorder()
        a.start(configuration: configuration([port("a1", 1)]), onViews: viewsA.callback)
        b.start(configuration: configuration([port("b1", 2)]), onViews: ViewRecorder().callback)
        try await waitUntil("a sees b", timeout: 10) { remote(viewsA) == ["h2": ["b1"]] }
        let lost = try XCTUnwrap(b.status().lease.flatMap { Int64($0, radix: 16) })

        // etcd loses b's lease (revoked behind its back): b's keys go, and b registers again.
        let client = EtcdClient(endpoints: [etcd.endpoint], tls: nil, requestTimeout: .seconds(2), logger: Logger(label: "test"))
        try await client.revoke(lease: lost)
        await client.shutdown()
        try await waitUntil("a drops b", timeout: 2) { remote(viewsA).isEmpty }
        let dropped = Date()
        try await waitUntil("b is back at a under a new lease", timeout: 3) { remote(viewsA) == ["h2": ["b1"]] }
        print("fleet: host registered again \(String(format: "%.2f", Date().timeIntervalSince(dropped))) s after its lease was lost (lease 3 s)")
        XCTAssertNotEqual(b.status().lease, String(lost, radix: 16))
        XCTAssertNotNil(b.status().lease)
    }

    func testHungEndpointIsPassedOver() async throws {
        // A listener that never accepts: connections complete in the kernel, requests hang.
        let hung = try HungListener()
        defer { hung.close() }
        let a = try agent("h1", underlay: "192.0.2.1", leaseSeconds: 3, endpoints: [hung.endpoint, try XCTUnwrap(etcd).endpoint])
        let b = try agent("h2", underlay: "192.0.2.2", leaseSeconds: 3)
        let viewsA = ViewRecorder()
        let started = Date()
        a.start(configuration: configuration([port("a1", 1)]), onViews: viewsA.callback)
        b.start(configuration: configuration([port("b1", 2)]), onViews: ViewRecorder().callback)
        try await waitUntil("a sees b through the second endpoint", timeout: 10) {
            remote(viewsA) == ["h2": ["b1"]] && a.status().state == "connected"
        }
        print("fleet: connected past a hung endpoint in \(String(format: "%.2f", Date().timeIntervalSince(started))) s")
        XCTAssertEqual(a.status().endpoint, try XCTUnwrap(etcd).endpoint)
    }

    func testEtcdRestartKeepsViewsAndCatchesUp() async throws {
        let etcd = try XCTUnwrap(etcd)
        let logs = LogRecorder()
        let a = try agent("h1", underlay: "192.0.2.1", leaseSeconds: 3, logs: logs)
        let b = try agent("h2", underlay: "192.0.2.2", leaseSeconds: 3)
        let viewsA = ViewRecorder()
        a.start(configuration: configuration([port("a1", 1)]), onViews: viewsA.callback)
        b.start(configuration: configuration([port("b1", 2)]), onViews: ViewRecorder().callback)
        try await waitUntil("a sees b", timeout: 10) { remote(viewsA) == ["h2": ["b1"]] && a.status().state == "connected" }
        let deliveries = viewsA.all.count

        etcd.kill()
        try await waitUntil("a says disconnected", timeout: 5) { a.status().state == "disconnected" }
        let outage = a.status()
        XCTAssertNotNil(outage.lastError)
        // Several retries fail meanwhile; the views stay.
        try await Task.sleep(for: .seconds(2))
        XCTAssertEqual(viewsA.all.count, deliveries, "no views sent while etcd is gone")
        XCTAssertEqual(remote(viewsA), ["h2": ["b1"]])
        XCTAssertEqual(a.status().since, outage.since, "still the same outage")
        XCTAssertEqual(logs.count(.warning, containing: "etcd unreachable"), 1, "one warning per outage")

        // b changes its ports while etcd is down; it publishes them once etcd is back.
        await b.update(configuration: configuration([port("b1", 2), port("b2", 5)]))
        try await etcd.start()
        try await waitUntil("a is connected again and has b's new port", timeout: 10) {
            a.status().state == "connected" && remote(viewsA) == ["h2": ["b1", "b2"]]
        }
        XCTAssertEqual(logs.count(.warning, containing: "etcd unreachable"), 1)
        XCTAssertEqual(logs.count(.info, containing: "compacted"), 0, "resumed from its revision")
        XCTAssertGreaterThanOrEqual(logs.count(.info, containing: "fleet map caught up"), 2)
        let all = viewsA.all
        let firstFull = try XCTUnwrap(all.firstIndex { !remote(from: $0).isEmpty })
        XCTAssertTrue(all[firstFull...].allSatisfy { !remote(from: $0).isEmpty }, "never an empty view because of the outage")
    }

    func testResumeFromCompactedRevisionReadsTheMapAgain() async throws {
        let etcd = try XCTUnwrap(etcd)
        let logs = LogRecorder()
        let a = try agent("h1", underlay: "192.0.2.1", leaseSeconds: 3, logs: logs)
        let b = try agent("h2", underlay: "192.0.2.2", leaseSeconds: 3)
        let viewsA = ViewRecorder()
        a.start(configuration: configuration([port("a1", 1)]), onViews: viewsA.callback)
        b.start(configuration: configuration([port("b1", 2)]), onViews: ViewRecorder().callback)
        try await waitUntil("a sees b", timeout: 10) { remote(viewsA) == ["h2": ["b1"]] && a.status().state == "connected" }

        // Writes outside what a watches move the store past a's last revision; compact them away.
        let client = EtcdClient(endpoints: [etcd.endpoint], tls: nil, requestTimeout: .seconds(2), logger: Logger(label: "test"))
        let lease = try await client.grantLease(ttl: 60)
        for index in 0..<5 { try await client.put(key: "/elsewhere/\(index)", value: "x", lease: lease) }
        let head = try await client.range(prefix: "/", revision: nil).revision
        try await client.compact(revision: head)
        await client.shutdown()
        XCTAssertLessThan(a.status().revision, head)

        // A watch of an old revision is refused as compacted.
        let probe = EtcdClient(endpoints: [etcd.endpoint], tls: nil, requestTimeout: .seconds(2), logger: Logger(label: "test"))
        do {
            try await probe.watch(prefixes: ["/bulkhead/"], startRevision: 1) { _ in }
            XCTFail("a watch from a compacted revision started")
        } catch EtcdError.compacted(let revision) {
            XCTAssertEqual(revision, head)
        }
        await probe.shutdown()

        // a resumes after a restart from its last revision: compacted, so it reads the map again.
        etcd.kill()
        try await waitUntil("a says disconnected", timeout: 5) { a.status().state == "disconnected" }
        await b.update(configuration: configuration([port("b3", 6)]))
        try await etcd.start()
        try await waitUntil("a caught up with b's change", timeout: 10) {
            a.status().state == "connected" && remote(viewsA) == ["h2": ["b3"]]
        }
        XCTAssertEqual(logs.count(.info, containing: "compacted; reading the map again"), 1)
    }

    func testMalformedAndForeignRecordsAreProblemsNotCrashes() async throws {
        let etcd = try XCTUnwrap(etcd)
        let a = try agent("h1", underlay: "192.0.2.1")
        let viewsA = ViewRecorder()
        a.start(configuration: configuration([port("a1", 1)]), onViews: viewsA.callback)
        try await waitUntil("a is connected", timeout: 10) { a.status().state == "connected" }

        let client = EtcdClient(endpoints: [etcd.endpoint], tls: nil, requestTimeout: .seconds(2), logger: Logger(label: "test"))
        let encoder = JSONEncoder()
        func json<T: Encodable>(_ value: T) throws -> String { String(decoding: try encoder.encode(value), as: UTF8.self) }
        let lease = try await client.grantLease(ttl: 60)
        try await client.put(key: "/bulkhead/hosts/h9", value: try json(FleetHostRecord(hostId: "h9", underlay: "192.0.2.9")), lease: lease)
        try await client.put(key: "/bulkhead/ports/blue/lan/h9/garbage", value: "{not json", lease: lease)
        try await client.put(key: "/bulkhead/ports/blue/lan/h9/other-vni", value: try json(FleetPortRecord(
            tenant: "blue", segment: "lan", vni: 999, host: "h9", port: "other-vni", mac: "02:00:00:00:00:09", ips: ["10.0.0.9"])), lease: lease)
        try await client.put(key: "/bulkhead/ports/blue/lan/h9/good", value: try json(FleetPortRecord(
            tenant: "blue", segment: "lan", vni: 100, host: "h9", port: "good", mac: "02:00:00:00:00:0a", ips: ["10.0.0.10"])), lease: lease)
        try await waitUntil("a takes the good port only", timeout: 5) { remote(viewsA) == ["h9": ["good"]] }
        try await waitUntil("both bad records are problems", timeout: 5) { a.status().problems.count == 2 }
        let problems = a.status().problems.joined(separator: "\n")
        XCTAssertTrue(problems.contains("garbage"), problems)
        XCTAssertTrue(problems.contains("VNI 999"), problems)

        // Deleting the bad keys clears the problems.
        try await client.delete(key: "/bulkhead/ports/blue/lan/h9/garbage")
        try await client.delete(key: "/bulkhead/ports/blue/lan/h9/other-vni")
        try await waitUntil("no problems left", timeout: 5) { a.status().problems.isEmpty }
        try await client.revoke(lease: lease)
        try await waitUntil("h9 gone with its lease", timeout: 5) { remote(viewsA).isEmpty }
        await client.shutdown()
    }

    private func remote(from views: [String: FleetView]) -> [String] {
        views["blue"]?.segments.flatMap { $0.hosts.map(\.id) } ?? []
    }
}
