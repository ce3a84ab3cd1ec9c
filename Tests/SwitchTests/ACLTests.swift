import Config
import Switch
import Virtio
import XCTest

final class ACLTests: XCTestCase {
    func range(_ lower: UInt16, _ upper: UInt16? = nil) -> PortRange { PortRange(lower: lower, upper: upper ?? lower)! }

    func testFirstMatchWinsAndDefaultAllows() {
        let rules = [
            ACLRule(action: .allow, protocol: .tcp, destinationPort: range(22), port: nil),
            ACLRule(action: .deny, protocol: .tcp, destinationPort: range(1, 1024)),
        ]
        var plane = Fixture.plane(Fixture.configuration(blueACL: rules))
        XCTAssertEqual(plane.send(Fixture.tcp4(destinationPort: 22), from: 0), mask(1))
        XCTAssertEqual(plane.send(Fixture.tcp4(destinationPort: 80), from: 0), .drop(.aclIngress))
        XCTAssertEqual(plane.send(Fixture.tcp4(destinationPort: 8080), from: 0), mask(1))
        XCTAssertEqual(plane.send(Fixture.udp4(destinationPort: 80), from: 0), mask(1))
        XCTAssertEqual(plane.drops(.aclIngress, port: 0), 1)
    }

    func testPrefixesAndProtocols() {
        let rules = [
            ACLRule(action: .deny, protocol: .udp, source: Fixture.prefix("10.0.0.0/31"), destination: Fixture.prefix("10.0.0.2/32")),
            ACLRule(action: .deny, protocol: .icmpv6),
            ACLRule(action: .deny, source: Fixture.prefix("fd00::/16")),
        ]
        var plane = Fixture.plane(Fixture.configuration(blueACL: rules))
        XCTAssertEqual(plane.send(Fixture.udp4(), from: 0), .drop(.aclIngress))
        XCTAssertEqual(plane.send(Fixture.udp4(to: Fixture.macC, Fixture.ipA, Fixture.ipC), from: 0), mask(2))
        XCTAssertEqual(plane.send(Fixture.tcp4(destinationPort: 1), from: 0), mask(1))
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(next: 58, payload: FrameBuilder.icmp(type: 128)), from: 0), .drop(.aclIngress))
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(next: 17, payload: FrameBuilder.udp(sourcePort: 1, destinationPort: 2)),
                                  from: 0), .drop(.aclIngress))
        // ARP and neighbor discovery are not subject to the ACL.
        XCTAssertEqual(plane.send(Fixture.arpFrame(), from: 0), mask(1, 2))
        let na = Fixture.ipv6Frame(next: 58, payload: FrameBuilder.neighborAdvertisement(target: Fixture.ip6A))
        XCTAssertEqual(plane.send(na, from: 0), mask(1))
    }

    func testDirectionsAndPortScoping() {
        let rules = [
            // Nothing may reach c on port 80; b may not send to port 443; nobody sends to 25.
            ACLRule(action: .deny, direction: .egress, protocol: .tcp, destinationPort: range(80), port: "c"),
            ACLRule(action: .deny, direction: .ingress, protocol: .tcp, destinationPort: range(443), port: "b"),
            ACLRule(action: .deny, direction: .both, protocol: .tcp, destinationPort: range(25)),
            ACLRule(action: .deny, direction: .egress, protocol: .udp, destinationPort: range(9)),
        ]
        var plane = Fixture.plane(Fixture.configuration(blueACL: rules))
        XCTAssertEqual(plane.send(Fixture.tcp4(to: Fixture.macC, Fixture.ipA, Fixture.ipC, destinationPort: 80), from: 0),
                       .drop(.aclEgress))
        XCTAssertEqual(plane.drops(.aclEgress, port: 2), 1)
        XCTAssertEqual(plane.drops(.aclEgress, port: 0), 0)
        XCTAssertEqual(plane.send(Fixture.tcp4(destinationPort: 80), from: 0), mask(1))
        // A flood loses only the egress-denied port.
        XCTAssertEqual(plane.send(Fixture.tcp4(to: .broadcast, Fixture.ipA, IPv4Address("10.0.0.255")!, destinationPort: 80),
                                  from: 0), mask(1))
        XCTAssertEqual(plane.drops(.aclEgress, port: 2), 2)
        // Ingress rule scoped to b.
        XCTAssertEqual(plane.send(Fixture.tcp4(destinationPort: 443), from: 0), mask(1))
        XCTAssertEqual(plane.send(Fixture.tcp4(from: Fixture.macB, to: Fixture.macA, Fixture.ipB, Fixture.ipA,
                                               destinationPort: 443), from: 1), .drop(.aclIngress))
        XCTAssertEqual(plane.send(Fixture.tcp4(destinationPort: 25), from: 0), .drop(.aclIngress))
        // Egress-only rule: not evaluated at ingress (counted on the egress port).
        XCTAssertEqual(plane.send(Fixture.udp4(destinationPort: 9), from: 0), .drop(.aclEgress))
        XCTAssertEqual(plane.drops(.aclIngress, port: 0), 1)
        XCTAssertEqual(plane.drops(.aclEgress, port: 1), 1)
    }

    func testRuleForUnknownPortNeverMatches() {
        var plane = Fixture.plane(Fixture.configuration(blueACL: [ACLRule(action: .deny, port: "nope")]))
        XCTAssertEqual(plane.send(Fixture.udp4(), from: 0), mask(1))
    }

    /// A first fragment to an allowed port followed by a non-first fragment: the deny-by-port rule
    /// must catch what the first fragment's ports cannot show.
    func testFragmentEvasionPair() {
        let rules = [ACLRule(action: .deny, protocol: .tcp, destinationPort: range(22)),
                     ACLRule(action: .allow, protocol: .tcp, destinationPort: range(80))]
        var plane = Fixture.plane(Fixture.configuration(blueACL: rules))
        let first = Fixture.ipv4Frame(FrameBuilder.ipv4(source: Fixture.ipA, destination: Fixture.ipB, protocol: 6,
                                                        payload: FrameBuilder.tcp(sourcePort: 1, destinationPort: 80)
                                                            + Array(repeating: 0, count: 4),
                                                        moreFragments: true))
        let later = Fixture.ipv4Frame(FrameBuilder.ipv4(source: Fixture.ipA, destination: Fixture.ipB, protocol: 6,
                                                        payload: Array(repeating: 0, count: 16), fragmentOffset: 3))
        XCTAssertEqual(plane.send(first, from: 0), mask(1))
        XCTAssertEqual(plane.send(later, from: 0), .drop(.aclIngress))
        // The same for IPv6.
        var v6 = Fixture.plane(Fixture.configuration(blueACL: rules))
        let first6 = Fixture.ipv6Frame(next: 6, extensions: [.fragment(offset: 0, more: true)],
                                       payload: FrameBuilder.tcp(sourcePort: 1, destinationPort: 80))
        let later6 = Fixture.ipv6Frame(next: 6, extensions: [.fragment(offset: 8, more: false)], payload: Array(repeating: 0, count: 16))
        XCTAssertEqual(v6.send(first6, from: 0), mask(1))
        XCTAssertEqual(v6.send(later6, from: 0), .drop(.aclIngress))
        // An allow-by-port rule never matches a non-first fragment.
        var allowOnly = Fixture.plane(Fixture.configuration(blueACL: [
            ACLRule(action: .allow, protocol: .tcp, destinationPort: range(80)),
            ACLRule(action: .deny, protocol: .tcp),
        ]))
        XCTAssertEqual(allowOnly.send(first, from: 0), mask(1))
        XCTAssertEqual(allowOnly.send(later, from: 0), .drop(.aclIngress))
    }

    /// An IPv6 receiver reassembles on addresses and identification alone and ignores a later
    /// fragment's next header (RFC 8200 4.5): a deny-by-port rule takes every non-first IPv6
    /// fragment whatever it claims. IPv4 reassembles on the protocol too, so there it still counts.
    func testNonFirstIPv6FragmentMatchesDenyByPortWhateverItsNextHeader() {
        let rules = [ACLRule(action: .deny, protocol: .tcp, destinationPort: range(23)),
                     ACLRule(action: .allow, protocol: .udp, destinationPort: range(53))]
        var plane = Fixture.plane(Fixture.configuration(blueACL: rules))
        for next: UInt8 in [6, 17, 58, 60, 59] {
            let later = Fixture.ipv6Frame(next: next, extensions: [.fragment(offset: 8, more: false)],
                                          payload: Array(repeating: 0, count: 16))
            XCTAssertEqual(plane.send(later, from: 0), .drop(.aclIngress), "next \(next)")
        }
        // The addresses must still match.
        var scoped = Fixture.plane(Fixture.configuration(blueACL: [
            ACLRule(action: .deny, protocol: .tcp, destination: Fixture.prefix("fd00::99/128"), destinationPort: range(23)),
        ]))
        XCTAssertEqual(scoped.send(Fixture.ipv6Frame(next: 17, extensions: [.fragment(offset: 8, more: false)],
                                                     payload: Array(repeating: 0, count: 16)), from: 0), mask(1))
        // IPv4: a UDP fragment cannot join a TCP datagram.
        for (proto, verdict) in [(UInt8(6), Verdict.drop(.aclIngress)), (17, mask(1)), (1, mask(1))] {
            let later = Fixture.ipv4Frame(FrameBuilder.ipv4(source: Fixture.ipA, destination: Fixture.ipB, protocol: proto,
                                                            payload: Array(repeating: 0, count: 16), fragmentOffset: 8))
            XCTAssertEqual(plane.send(later, from: 0), verdict, "protocol \(proto)")
        }
    }
}
