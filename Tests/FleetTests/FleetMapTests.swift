import Config
import FleetModel
import Foundation
import XCTest
@testable import Fleet

/// The pure parts: the stream splitter, key ranges, the map's bookkeeping.
final class FleetMapTests: XCTestCase {
    func testObjectStreamSplitsAcrossChunks() throws {
        var stream = JSONObjectStream()
        let text = #"{"result":{"a":"}{"}}"# + "\n" + #"{"result":{"b":[1,{"c":"\"}"}]}}"# + "\n"
        var objects: [String] = []
        for byte in Array(text.utf8) {
            objects += try stream.append([byte]).map { String(decoding: $0, as: UTF8.self) }
        }
        XCTAssertEqual(objects, [#"{"result":{"a":"}{"}}"#, #"{"result":{"b":[1,{"c":"\"}"}]}}"#])
        var whole = JSONObjectStream()
        XCTAssertEqual(try whole.append(Array(text.utf8)).count, 2)
    }

    func testObjectStreamLimit() {
        var stream = JSONObjectStream(limit: 16)
        XCTAssertThrowsError(try stream.append(Array(#"{"a":"0123456789abcdef"#.utf8)))
    }

    func testPrefixEnd() {
        XCTAssertEqual(Base64.prefixEnd("/bulkhead/hosts/"), Base64.encode("/bulkhead/hosts0"))
        XCTAssertEqual(Base64.prefixEnd("abc"), Base64.encode("abd"))
    }

    func testGatewayIntegersAsStringsOrNumbers() throws {
        let text = #"{"header":{"revision":"42"},"kvs":[{"key":"YQ==","mod_revision":7}]}"#
        let answer = try JSONDecoder().decode(RangeResponse.self, from: Data(text.utf8))
        XCTAssertEqual(answer.header?.revision.int64, 42)
        XCTAssertEqual(answer.kvs?.first?.mod_revision.int64, 7)
        XCTAssertNil(answer.kvs?.first?.value, "an empty value is left out")
        let event = try JSONDecoder().decode(WatchResponse.self, from: Data(#"{"events":[{"kv":{"key":"YQ=="}},{"type":"DELETE","kv":{}}]}"#.utf8))
        XCTAssertEqual(event.events?.map(\.type), [nil, .delete])
    }

    func testMapRecordsAndProblems() throws {
        var map = FleetMap(prefix: "/p")
        let encoder = JSONEncoder()
        map.put(key: "/p/hosts/h2", value: try encoder.encode(FleetHostRecord(hostId: "h2", underlay: "192.0.2.2")))
        map.put(key: "/p/hosts/h3", value: try encoder.encode(FleetHostRecord(hostId: "h4", underlay: "192.0.2.3")))
        map.put(key: "/p/ports/blue/lan/h2/b1", value: try encoder.encode(FleetPortRecord(
            tenant: "blue", segment: "lan", vni: 5, host: "h2", port: "b1", mac: "02:00:00:00:00:02", ips: ["10.0.0.2"])))
        map.put(key: "/p/ports/blue/lan/h2/spoof", value: try encoder.encode(FleetPortRecord(
            tenant: "blue", segment: "lan", vni: 5, host: "h3", port: "x", mac: "02:00:00:00:00:03", ips: [])))
        map.put(key: "/p/ports/blue/lan/h2/bad", value: Data("[]".utf8))
        let tenant = Tenant(id: "blue", segments: [Segment(id: "lan", vni: 5)],
                            ports: [Config.Port(id: "a1", segment: "lan", mac: MACAddress(2, 0, 0, 0, 0, 1))])
        let configuration = HostConfiguration(host: HostSettings(stateDirectory: "/s"), tenants: [tenant])
        XCTAssertEqual(FleetMap.watchedPrefixes(prefix: "/p", configuration: configuration), ["/p/hosts/", "/p/ports/blue/lan/"])
        let (views, problems) = map.views(configuration: configuration, localHost: "h1")
        XCTAssertEqual(views["blue"]?.segments.first?.hosts.map(\.id), ["h2"])
        XCTAssertEqual(views["blue"]?.segments.first?.hosts.first?.ports.map(\.id), ["b1"])
        XCTAssertEqual(problems.count, 3, "\(problems)")
        XCTAssertEqual(map.remoteHosts(localHost: "h1"), ["h2"])
        map.delete(key: "/p/ports/blue/lan/h2/bad")
        map.delete(key: "/p/ports/blue/lan/h2/spoof")
        map.delete(key: "/p/hosts/h3")
        XCTAssertEqual(map.views(configuration: configuration, localHost: "h1").problems, [])
    }
}
