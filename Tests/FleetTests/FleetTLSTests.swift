import Config
import FleetModel
import Foundation
import Logging
import XCTest
@testable import Fleet

/// The agent over https with a client certificate (etcd's --client-cert-auth), and its TLS errors.
final class FleetTLSTests: XCTestCase {
    func testAgentsOverTLSWithClientCertificates() async throws {
        let etcd = try EtcdProcess(tls: true)
        defer { etcd.cleanUp() }
        try await etcd.start()
        let files = try XCTUnwrap(etcd.tls?.files)
        func configuration(_ port: String, _ last: UInt8) -> HostConfiguration {
            HostConfiguration(host: HostSettings(stateDirectory: "/s"), tenants: [
                Tenant(id: "blue", segments: [Segment(id: "lan", vni: 7)],
                       ports: [Config.Port(id: port, segment: "lan", mac: MACAddress(2, 0, 0, 0, 1, last))]),
            ])
        }
        func agent(_ id: String) throws -> FleetAgent {
            try FleetAgent(settings: FleetSettings(hostId: id, underlayAddress: try XCTUnwrap(IPAddress("192.0.2.\(id.last ?? "0")")),
                                                   etcd: EtcdSettings(endpoints: [etcd.endpoint], tls: files)),
                           logger: Logger(label: "fleet", factory: { _ in SwiftLogNoOpLogHandler() }))
        }
        let a = try agent("h1"), b = try agent("h2")
        let views = ViewRecorder()
        a.start(configuration: configuration("a", 1), onViews: views.callback)
        b.start(configuration: configuration("b", 2), onViews: ViewRecorder().callback)
        try await waitUntil("a sees b over TLS", timeout: 10) {
            views.latest?["blue"]?.segments.first?.hosts.map(\.id) == ["h2"]
        }
        XCTAssertEqual(a.status().state, "connected")
        await b.stop()
        await a.stop()

        // Without a client certificate etcd refuses the connection: the agent says so.
        let anonymous = try FleetAgent(settings: FleetSettings(hostId: "h3", underlayAddress: try XCTUnwrap(IPAddress("192.0.2.3")),
                                                               etcd: EtcdSettings(endpoints: [etcd.endpoint], tls: EtcdTLS(caFile: files.caFile))),
                                       logger: Logger(label: "fleet", factory: { _ in SwiftLogNoOpLogHandler() }))
        anonymous.start(configuration: configuration("c", 3), onViews: { _ in })
        try await waitUntil("an agent without a client certificate is refused", timeout: 10) {
            anonymous.status().state == "disconnected"
        }
        await anonymous.stop()
    }

    func testTLSFileErrorsNameTheFile() throws {
        let settings = FleetSettings(hostId: "h1", underlayAddress: try XCTUnwrap(IPAddress("192.0.2.1")),
                                     etcd: EtcdSettings(endpoints: ["https://127.0.0.1:2379"],
                                                        tls: EtcdTLS(caFile: "/nonexistent/ca.pem")))
        XCTAssertThrowsError(try FleetAgent(settings: settings, logger: Logger(label: "fleet", factory: { _ in SwiftLogNoOpLogHandler() }))) { error in
            XCTAssertTrue("\(error)".contains("/nonexistent/ca.pem"), "\(error)")
        }
        var incomplete = settings
        incomplete.etcd.tls = EtcdTLS(caFile: "/etc/ssl/certs/ca-certificates.crt", certFile: "/x.pem")
        XCTAssertThrowsError(try FleetAgent(settings: incomplete, logger: Logger(label: "fleet", factory: { _ in SwiftLogNoOpLogHandler() })))
        var bad = settings
        bad.etcd = EtcdSettings(endpoints: ["tcp://127.0.0.1:2379"])
        XCTAssertThrowsError(try FleetAgent(settings: bad, logger: Logger(label: "fleet", factory: { _ in SwiftLogNoOpLogHandler() }))) { error in
            XCTAssertTrue("\(error)".contains("tcp://127.0.0.1:2379"), "\(error)")
        }
    }
}
