import Config
import FleetModel
import Switch
import Virtio
import XCTest

/// The forwarding plane with a VXLAN uplink: blue/lan (VNI 100) has local ports a (0), b (1),
/// c (2) and remote ports r1 on host h2 and r2 on host h3; blue/dmz (3) has no VNI.
final class UplinkTests: XCTestCase {
    static let macR1 = MACAddress(0x02, 0, 0, 0, 0, 0x21)
    static let macR2 = MACAddress(0x02, 0, 0, 0, 0, 0x31)
    static let ipR1 = IPv4Address("10.0.0.21")!
    static let ipR2 = IPv4Address("10.0.0.31")!
    static let h2 = UnderlayAddress(IPAddress("192.0.2.2")!)
    static let h3 = UnderlayAddress(IPAddress("2001:db8::3")!)

    static func configuration() -> HostConfiguration {
        var configuration = Fixture.configuration()
        configuration.tenants.removeAll { $0.id != "blue" }
        configuration.tenants[0].segments[0].vni = 100
        return configuration
    }

    static let view = FleetView(segments: [
        .init(id: "lan", vni: 100, hosts: [
            .init(id: "h2", underlay: "192.0.2.2", ports: [.init(id: "r1", mac: macR1.description, ips: ["10.0.0.21"])]),
            .init(id: "h3", underlay: "2001:db8::3",
                  ports: [.init(id: "r2", mac: macR2.description, ips: ["10.0.0.31", "fd00::31"])]),
        ]),
    ])

    func makePlane() -> ForwardingPlane {
        let plane = ForwardingPlane(configuration: UplinkTests.configuration())
        XCTAssertTrue(plane.hasUplink)
        XCTAssertEqual(plane.updateFleet(UplinkTests.view), [])
        plane.refreshFleet()
        return plane
    }

    func destinations(_ plane: ForwardingPlane) -> [String] {
        var result: [String] = []
        plane.forEachUplinkDestination { vni, address in result.append("\(vni)@\(address)") }
        return result
    }

    func uplinkMask(_ plane: ForwardingPlane, _ ports: Int...) -> Verdict {
        var mask = PortMask()
        for port in ports { mask.insert(port) }
        mask.insert(plane.uplinkPort)
        return .forward(mask)
    }

    /// A VXLAN datagram carrying `frame`.
    func receive(_ plane: ForwardingPlane, _ frame: [UInt8], vni: UInt32 = 100, from source: UnderlayAddress = h2) -> Verdict {
        var datagram = [UInt8](repeating: 0, count: VXLAN.headerLength) + frame
        datagram.withUnsafeMutableBytes { VXLAN.writeHeader(vni: vni, into: $0.baseAddress!) }
        return datagram.withUnsafeBytes { plane.processUplink(datagram: $0, source: source, now: 1_000_000_000) }
    }

    func uplinkDrops(_ plane: ForwardingPlane, _ reason: DropReason) -> UInt64 {
        plane.statistics().uplink?.drops(reason) ?? 0
    }

    func testRemoteUnicastGoesToItsHostOnly() {
        var plane = makePlane()
        XCTAssertEqual(plane.send(Fixture.udp4(to: UplinkTests.macR1, Fixture.ipA, UplinkTests.ipR1), from: 0),
                       uplinkMask(plane))
        XCTAssertEqual(destinations(plane), ["100@192.0.2.2"])
        XCTAssertEqual(plane.send(Fixture.udp4(from: Fixture.macB, to: UplinkTests.macR2, Fixture.ipB, UplinkTests.ipR2), from: 1),
                       uplinkMask(plane))
        XCTAssertEqual(destinations(plane), ["100@2001:db8::3"])
    }

    func testKnownLocalUnicastStaysLocal() {
        var plane = makePlane()
        XCTAssertEqual(plane.send(Fixture.udp4(), from: 0), mask(1))
    }

    func testFloodGoesToLocalMembersAndEveryMemberHost() {
        var plane = makePlane()
        XCTAssertEqual(plane.send(Fixture.udp4(to: .broadcast, Fixture.ipA, IPv4Address("10.0.0.255")!), from: 0),
                       uplinkMask(plane, 1, 2))
        XCTAssertEqual(destinations(plane), ["100@192.0.2.2", "100@2001:db8::3"])
        // Unknown unicast floods the same way.
        XCTAssertEqual(plane.send(Fixture.udp4(from: Fixture.macC, to: MACAddress(0x02, 0, 0, 0, 0, 0x77), Fixture.ipC, Fixture.ipB), from: 2),
                       uplinkMask(plane, 0, 1))
        XCTAssertEqual(destinations(plane).count, 2)
    }

    func testSegmentWithoutVNINeverReachesTheUplink() {
        var plane = makePlane()
        let frame = Fixture.udp4(from: Fixture.macD, to: .broadcast, Fixture.ipD, IPv4Address("10.0.1.255")!)
        XCTAssertEqual(plane.send(frame, from: 3), .drop(.noDestination))
    }

    func testFrameFromAMemberHostReachesLocalPortsOnly() {
        let plane = makePlane()
        let frame = Fixture.udp4(from: UplinkTests.macR1, to: Fixture.macB, UplinkTests.ipR1, Fixture.ipB)
        XCTAssertEqual(receive(plane, frame), mask(1))
        // Broadcast: every local member, never back out of the uplink (split horizon).
        let broadcast = Fixture.udp4(from: UplinkTests.macR1, to: .broadcast, UplinkTests.ipR1, IPv4Address("10.0.0.255")!)
        XCTAssertEqual(receive(plane, broadcast), mask(0, 1, 2))
        // Unicast to a remote MAC from the uplink goes nowhere remote either.
        let toRemote = Fixture.udp4(from: UplinkTests.macR1, to: UplinkTests.macR2, UplinkTests.ipR1, UplinkTests.ipR2)
        XCTAssertEqual(receive(plane, toRemote), mask(0, 1, 2))
        let stats = plane.statistics().uplink
        XCTAssertEqual(stats?.rx.frames, 3)
        XCTAssertEqual(stats?.port, "uplink")
    }

    func testSpoofedDatagramsAreDroppedWithTheirReason() {
        let plane = makePlane()
        let good = Fixture.udp4(from: UplinkTests.macR1, to: Fixture.macB, UplinkTests.ipR1, Fixture.ipB)
        XCTAssertEqual(receive(plane, good, vni: 999), .drop(.vxlanUnknownVNI))
        XCTAssertEqual(receive(plane, good, from: UnderlayAddress(IPAddress("192.0.2.9")!)), .drop(.vxlanUnknownHost))
        // h3 is a member, but r1 lives on h2.
        XCTAssertEqual(receive(plane, good, from: UplinkTests.h3), .drop(.vxlanSpoofedMAC))
        // A local port's MAC from the underlay.
        XCTAssertEqual(receive(plane, Fixture.udp4(from: Fixture.macA, to: Fixture.macB)), .drop(.vxlanSpoofedMAC))
        // r1's MAC with r2's address; an ARP claiming another address.
        XCTAssertEqual(receive(plane, Fixture.udp4(from: UplinkTests.macR1, to: Fixture.macB, UplinkTests.ipR2, Fixture.ipB)),
                       .drop(.vxlanSpoofedIP))
        XCTAssertEqual(receive(plane, Fixture.arpFrame(from: UplinkTests.macR1, senderIP: Fixture.ipA, targetIP: Fixture.ipB)),
                       .drop(.vxlanSpoofedIP))
        // Not VXLAN at all; a runt inner frame.
        let short: [UInt8] = [0x08, 0, 0]
        XCTAssertEqual(short.withUnsafeBytes { plane.processUplink(datagram: $0, source: UplinkTests.h2, now: 1) },
                       .drop(.vxlanMalformed))
        XCTAssertEqual(receive(plane, [1, 2, 3]), .drop(.malformedRunt))
        XCTAssertEqual(uplinkDrops(plane, .vxlanUnknownVNI), 1)
        XCTAssertEqual(uplinkDrops(plane, .vxlanUnknownHost), 1)
        XCTAssertEqual(uplinkDrops(plane, .vxlanSpoofedMAC), 2)
        XCTAssertEqual(uplinkDrops(plane, .vxlanSpoofedIP), 2)
        XCTAssertEqual(uplinkDrops(plane, .vxlanMalformed), 1)
        // The remote port's IPv6 link-local address (EUI-64 of its MAC) is its own.
        let linkLocal = IPv6Address("fe80::ff:fe00:21")!
        let v6 = Fixture.ipv6Frame(from: UplinkTests.macR2, to: Fixture.macB, linkLocal, Fixture.ip6B, next: 17,
                                   payload: FrameBuilder.udp(sourcePort: 1, destinationPort: 2))
        XCTAssertEqual(receive(plane, v6, from: UplinkTests.h3), .drop(.vxlanSpoofedIP))  // r2's MAC, r1's link-local
        let own = Fixture.ipv6Frame(from: UplinkTests.macR2, to: Fixture.macB, IPv6Address("fe80::ff:fe00:31")!,
                                    Fixture.ip6B, next: 17, payload: FrameBuilder.udp(sourcePort: 1, destinationPort: 2))
        XCTAssertEqual(receive(plane, own, from: UplinkTests.h3), mask(1))
    }

    func testFramesFromTheUplinkPassTheReceivingPortsEgressACL() {
        var configuration = UplinkTests.configuration()
        configuration.tenants[0].acl = [
            ACLRule(action: .deny, direction: .egress, protocol: .udp, destinationPort: PortRange(lower: 53, upper: 53), port: "b"),
        ]
        let plane = ForwardingPlane(configuration: configuration)
        plane.updateFleet(UplinkTests.view)
        plane.refreshFleet()
        let frame = Fixture.udp4(from: UplinkTests.macR1, to: Fixture.macB, UplinkTests.ipR1, Fixture.ipB)
        XCTAssertEqual(receive(plane, frame), .drop(.aclEgress))
        XCTAssertEqual(plane.drops(.aclEgress, port: 1), 1)
    }

    func testViewSwap() {
        var plane = makePlane()
        let worker = plane.makeWorker()
        let frame = Fixture.udp4(from: UplinkTests.macR1, to: Fixture.macB, UplinkTests.ipR1, Fixture.ipB)
        XCTAssertEqual(receive(worker, frame), mask(1))
        // h2 leaves the map: its frames are refused, and r1's MAC is unknown (floods, to h3 only).
        var smaller = UplinkTests.view
        smaller.segments[0].hosts.removeFirst()
        plane.updateFleet(smaller)
        // Nothing changes for a handle until its next batch.
        XCTAssertEqual(receive(plane, frame), mask(1))
        plane.refreshFleet()
        XCTAssertEqual(receive(plane, frame), .drop(.vxlanUnknownHost))
        // Another worker keeps the old map until its next batch.
        XCTAssertEqual(receive(worker, frame), mask(1))
        worker.refreshFleet()
        XCTAssertEqual(receive(worker, frame), .drop(.vxlanUnknownHost))
        XCTAssertEqual(plane.send(Fixture.udp4(to: UplinkTests.macR1, Fixture.ipA, UplinkTests.ipR1), from: 0),
                       uplinkMask(plane, 1, 2))
        XCTAssertEqual(destinations(plane), ["100@2001:db8::3"])
        // No host at all: local flood only.
        plane.updateFleet(FleetView.empty(for: UplinkTests.configuration().tenants[0]))
        plane.refreshFleet()
        XCTAssertEqual(plane.send(Fixture.udp4(to: UplinkTests.macR1, Fixture.ipA, UplinkTests.ipR1), from: 0), mask(1, 2))
    }

    func testProxyARPAnswersForRemoteAddresses() throws {
        var plane = makePlane()
        let request = Fixture.arpFrame(from: Fixture.macA, senderIP: Fixture.ipA, targetIP: UplinkTests.ipR1)
        guard case .answer(let length) = plane.send(request, from: 0) else {
            return XCTFail("an ARP request for a remote port's address is answered by the switch")
        }
        let reply = Array(plane.answer.prefix(length))
        XCTAssertGreaterThanOrEqual(reply.count, 42)
        XCTAssertEqual(Array(reply[0..<6]), Fixture.macA.octets)                 // to the asker
        XCTAssertEqual(Array(reply[6..<12]), UplinkTests.macR1.octets)           // from the owner
        XCTAssertEqual(Array(reply[20..<22]), [0, 2])                            // ARP reply
        XCTAssertEqual(Array(reply[22..<28]), UplinkTests.macR1.octets)          // sender MAC
        XCTAssertEqual(Array(reply[28..<32]), FrameBuilder.be32(UplinkTests.ipR1.rawValue))
        XCTAssertEqual(plane.drops(.neighborAnswered, port: 0), 1)
        // An address nobody owns floods as usual (locally and to the member hosts).
        let unknown = Fixture.arpFrame(from: Fixture.macA, senderIP: Fixture.ipA, targetIP: IPv4Address("10.0.0.99")!)
        XCTAssertEqual(plane.send(unknown, from: 0), uplinkMask(plane, 1, 2))
    }

    func testSingleHostPlaneHasNoUplink() {
        let plane = Fixture.plane()
        XCTAssertFalse(plane.hasUplink)
        XCTAssertNil(plane.statistics().uplink)
    }

    func testProxyNDAnswersForRemoteAddresses() throws {
        var plane = makePlane()
        let target = IPv6Address("fd00::31")!
        let solicitation = Fixture.ipv6Frame(to: MACAddress(0x33, 0x33, 0xFF, 0, 0, 0x31), Fixture.ip6A,
                                             IPv6Address("ff02::1:ff00:31")!, next: 58,
                                             payload: FrameBuilder.neighborSolicitation(target: target,
                                                                                        sourceLinkLayer: Fixture.macA))
        guard case .answer(let length) = plane.send(solicitation, from: 0) else {
            return XCTFail("a neighbor solicitation for a remote port's address is answered by the switch")
        }
        let reply = Array(plane.answer.prefix(length))
        XCTAssertGreaterThanOrEqual(reply.count, 14 + 40 + 24)
        XCTAssertEqual(Array(reply[0..<6]), Fixture.macA.octets)
        XCTAssertEqual(Array(reply[6..<12]), UplinkTests.macR2.octets)
        XCTAssertEqual(reply[14 + 40], 136)  // neighbor advertisement
        XCTAssertEqual(plane.drops(.neighborAnswered, port: 0), 1)
    }
}
