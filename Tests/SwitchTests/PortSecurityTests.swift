import Config
import Switch
import Virtio
import XCTest

final class HeaderAndEthertypeTests: XCTestCase {
    func testForwardsValidUnicastToItsPortOnly() {
        var plane = Fixture.plane()
        // b's MAC is a static entry: known from the start.
        XCTAssertEqual(plane.send(Fixture.udp4(), from: 0), mask(1))
    }

    func testRunt() {
        var plane = Fixture.plane()
        XCTAssertEqual(plane.send(Array(repeating: 0x02, count: 13), from: 0), .drop(.malformedRunt))
        XCTAssertEqual(plane.send([], from: 0), .drop(.malformedRunt))
        XCTAssertEqual(plane.drops(.malformedRunt, port: 0), 2)
    }

    func testGiantUnlessGSO() {
        var plane = Fixture.plane(Fixture.configuration(mtu: 1500))
        let exact = Fixture.udp4(payload: Array(repeating: 0, count: 1500 - 28))
        XCTAssertEqual(exact.count, 1514)
        XCTAssertEqual(plane.send(exact, from: 0), mask(1))
        let giant = Fixture.udp4(payload: Array(repeating: 0, count: 1501 - 28))
        XCTAssertEqual(plane.send(giant, from: 0), .drop(.malformedGiant))

        let gso = VirtioNetHeader(flags: VirtioNetHeader.flagNeedsCsum, gsoType: VirtioNetHeader.GSOType.udpL4.rawValue,
                                  headerLength: 42, gsoSize: 1400, csumStart: 34, csumOffset: 6)
        let big = Fixture.udp4(payload: Array(repeating: 0, count: 60_000))
        XCTAssertEqual(plane.send(big, from: 0, header: gso), mask(1))
        var tooBig = Fixture.udp4(payload: Array(repeating: 0, count: 65_000))
        tooBig += Array(repeating: 0, count: 65_551 - tooBig.count)
        XCTAssertEqual(plane.send(tooBig, from: 0, header: gso), .drop(.malformedGiant))
    }

    func testInconsistentVnetHeader() {
        var plane = Fixture.plane()
        let frame = Fixture.udp4()
        let badType = VirtioNetHeader(gsoType: 2)
        XCTAssertEqual(plane.send(frame, from: 0, header: badType), .drop(.malformedVnetHeader))
        let csumOutside = VirtioNetHeader(flags: VirtioNetHeader.flagNeedsCsum, csumStart: UInt16(frame.count), csumOffset: 0)
        XCTAssertEqual(plane.send(frame, from: 0, header: csumOutside), .drop(.malformedVnetHeader))
        let gsoWithoutSize = VirtioNetHeader(flags: 1, gsoType: 1, csumStart: 34, csumOffset: 16)
        XCTAssertEqual(plane.send(frame, from: 0, header: gsoWithoutSize), .drop(.malformedVnetHeader))
        XCTAssertEqual(plane.drops(.malformedVnetHeader, port: 0), 3)
    }

    func testVLANTagsDropped() {
        var plane = Fixture.plane()
        let inner = FrameBuilder.ipv4(source: Fixture.ipA, destination: Fixture.ipB, protocol: 17,
                                      payload: FrameBuilder.udp(sourcePort: 1, destinationPort: 2))
        for tpid: UInt16 in [0x8100, 0x88A8, 0x9100] {
            let frame = FrameBuilder.ethernet(destination: Fixture.macB, source: Fixture.macA, type: 0x0800,
                                              payload: inner, tags: [(tpid, 10)])
            XCTAssertEqual(plane.send(frame, from: 0), .drop(.vlanTagged), "TPID \(tpid)")
        }
    }

    func testOnlyIPv4ARPAndIPv6() {
        var plane = Fixture.plane()
        for type: UInt16 in [0x88CC, 0x8863, 0x0842, 0x0000, 0x88E5] {
            let frame = FrameBuilder.ethernet(destination: Fixture.macB, source: Fixture.macA, type: type,
                                              payload: Array(repeating: 0, count: 46))
            XCTAssertEqual(plane.send(frame, from: 0), .drop(.ethertypeNotAllowed), "type \(type)")
        }
    }
}

final class PortSecurityTests: XCTestCase {
    func testSourceMACInvalid() {
        var plane = Fixture.plane()
        for source in [MACAddress.zero, .broadcast, MACAddress(0x01, 0x00, 0x5E, 0, 0, 1)] {
            XCTAssertEqual(plane.send(Fixture.udp4(from: source), from: 0), .drop(.sourceMACInvalid))
        }
    }

    func testSourceMACSpoofedAndAllowedMACs() {
        var plane = Fixture.plane()
        XCTAssertEqual(plane.send(Fixture.udp4(from: Fixture.macC), from: 0), .drop(.sourceMACSpoofed))
        XCTAssertEqual(plane.send(Fixture.udp4(from: MACAddress(0x02, 1, 2, 3, 4, 5)), from: 0), .drop(.sourceMACSpoofed))
        XCTAssertEqual(plane.send(Fixture.udp4(from: Fixture.extraA), from: 0), mask(1))
        XCTAssertEqual(plane.drops(.sourceMACSpoofed, port: 0), 2)
    }

    func testSourceIPv4Spoofed() {
        var plane = Fixture.plane()
        XCTAssertEqual(plane.send(Fixture.udp4(Fixture.ipC, Fixture.ipB), from: 0), .drop(.sourceIPSpoofed))
        XCTAssertEqual(plane.send(Fixture.udp4(IPv4Address("10.0.0.99")!, Fixture.ipB), from: 0), .drop(.sourceIPSpoofed))
        XCTAssertEqual(plane.send(Fixture.udp4(IPv4Address("224.0.0.1")!, Fixture.ipB), from: 0), .drop(.sourceIPSpoofed))
    }

    func testDHCPClientFromUnspecifiedOnlyWhenAllowed() {
        let discover = FrameBuilder.dhcp(op: 1, messageType: 1, client: Fixture.macA)
        let frame = Fixture.udp4(to: .broadcast, .any, IPv4Address("255.255.255.255")!, sourcePort: 68,
                                 destinationPort: 67, payload: discover)
        var denied = Fixture.plane()
        XCTAssertEqual(denied.send(frame, from: 0), .drop(.sourceIPSpoofed))
        var allowed = Fixture.plane(Fixture.configuration(configureA: { $0.allowDHCPClient = true }))
        XCTAssertEqual(allowed.send(frame, from: 0), mask(1, 2))
        // Only the DHCP client exchange may use 0.0.0.0.
        let other = Fixture.udp4(to: .broadcast, .any, IPv4Address("255.255.255.255")!, sourcePort: 68,
                                 destinationPort: 68, payload: discover)
        XCTAssertEqual(allowed.send(other, from: 0), .drop(.sourceIPSpoofed))
    }

    func testDHCPServerMessages() {
        let offer = Fixture.udp4(to: .broadcast, Fixture.ipA, IPv4Address("255.255.255.255")!, sourcePort: 67,
                                 destinationPort: 68, payload: FrameBuilder.dhcp(op: 2, messageType: 2, client: Fixture.macB))
        let advertise = Fixture.ipv6Frame(next: 17, payload: FrameBuilder.udp(sourcePort: 547, destinationPort: 546,
                                                                              payload: FrameBuilder.dhcpv6Advertise()))
        var plane = Fixture.plane()
        XCTAssertEqual(plane.send(offer, from: 0), .drop(.dhcpServer))
        XCTAssertEqual(plane.send(advertise, from: 0), .drop(.dhcpServer))
        var server = Fixture.plane(Fixture.configuration(configureA: { $0.dhcpServer = true }))
        XCTAssertEqual(server.send(offer, from: 0), mask(1, 2))
        XCTAssertEqual(server.send(advertise, from: 0), mask(1))
    }

    /// Clients take a server message by its destination port alone (n-dhcp4 never checks the
    /// source port), so a non-server may not send to the client ports from any port.
    func testDHCPServerMessagesFromAnotherSourcePort() {
        let offer = Fixture.udp4(to: .broadcast, Fixture.ipA, IPv4Address("255.255.255.255")!, sourcePort: 6767,
                                 destinationPort: 68, payload: FrameBuilder.dhcp(op: 2, messageType: 2, client: Fixture.macB))
        let advertise = Fixture.ipv6Frame(next: 17, payload: FrameBuilder.udp(sourcePort: 5470, destinationPort: 546,
                                                                              payload: FrameBuilder.dhcpv6Advertise()))
        var plane = Fixture.plane()
        XCTAssertEqual(plane.send(offer, from: 0), .drop(.dhcpServer))
        XCTAssertEqual(plane.send(advertise, from: 0), .drop(.dhcpServer))
        // Client messages (to 67 and 547 from 68 and 546) pass.
        let request = Fixture.udp4(sourcePort: 68, destinationPort: 67,
                                   payload: FrameBuilder.dhcp(op: 1, messageType: 3, client: Fixture.macA))
        let solicit = Fixture.ipv6Frame(next: 17, payload: FrameBuilder.udp(sourcePort: 546, destinationPort: 547,
                                                                            payload: [1, 0x12, 0x34, 0x56]))
        XCTAssertEqual(plane.send(request, from: 0), mask(1))
        XCTAssertEqual(plane.send(solicit, from: 0), mask(1))
        var server = Fixture.plane(Fixture.configuration(configureA: { $0.dhcpServer = true }))
        XCTAssertEqual(server.send(offer, from: 0), mask(1, 2))
        XCTAssertEqual(server.send(advertise, from: 0), mask(1))
    }

    func testARP() {
        var plane = Fixture.plane()
        XCTAssertEqual(plane.send(Fixture.arpFrame(), from: 0), mask(1, 2))
        // Probe (RFC 5227).
        XCTAssertEqual(plane.send(Fixture.arpFrame(senderIP: .any), from: 0), mask(1, 2))
        XCTAssertEqual(plane.send(Fixture.arpFrame(senderIP: Fixture.ipB), from: 0), .drop(.arpSpoofed))
        XCTAssertEqual(plane.send(Fixture.arpFrame(senderMAC: Fixture.extraA), from: 0), .drop(.arpSpoofed))
        XCTAssertEqual(plane.send(Fixture.arpFrame(senderMAC: Fixture.macB), from: 0), .drop(.arpSpoofed))
        XCTAssertEqual(plane.drops(.arpSpoofed, port: 0), 3)
    }

    func testARPWithWrongSizesIsMalformed() {
        var plane = Fixture.plane()
        let variants: [[UInt8]] = [
            FrameBuilder.arp(senderMAC: Fixture.macA, senderIP: Fixture.ipA, targetIP: Fixture.ipB, hardwareType: 6),
            FrameBuilder.arp(senderMAC: Fixture.macA, senderIP: Fixture.ipA, targetIP: Fixture.ipB, protocolType: 0x86DD),
            FrameBuilder.arp(senderMAC: Fixture.macA, senderIP: Fixture.ipA, targetIP: Fixture.ipB, hardwareLength: 8),
            FrameBuilder.arp(senderMAC: Fixture.macA, senderIP: Fixture.ipA, targetIP: Fixture.ipB, protocolLength: 16),
            Array(FrameBuilder.arp(senderMAC: Fixture.macA, senderIP: Fixture.ipA, targetIP: Fixture.ipB).prefix(27)),
        ]
        for payload in variants {
            let frame = FrameBuilder.ethernet(destination: .broadcast, source: Fixture.macA, type: 0x0806, payload: payload)
            XCTAssertEqual(plane.send(frame, from: 0), .drop(.malformedHeader))
        }
    }

    func testIPv6Sources() {
        var plane = Fixture.plane()
        let echo = FrameBuilder.icmp(type: 128)
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(next: 58, payload: echo), from: 0), mask(1))
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(Fixture.ip6B, Fixture.ip6A, next: 58, payload: echo), from: 0),
                       .drop(.sourceIPSpoofed))
        // Link-local addresses of the port's MAC and of its allowed MACs.
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(Fixture.macA.eui64LinkLocal, Fixture.macB.eui64LinkLocal,
                                                    next: 58, payload: echo), from: 0), mask(1))
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(from: Fixture.extraA, Fixture.extraA.eui64LinkLocal,
                                                    Fixture.macB.eui64LinkLocal, next: 58, payload: echo), from: 0), mask(1))
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(Fixture.macB.eui64LinkLocal, Fixture.ip6B, next: 58, payload: echo),
                                  from: 0), .drop(.sourceIPSpoofed))
        // :: only for DAD, RS and MLD reports.
        XCTAssertEqual(plane.send(Fixture.ipv6Frame(.unspecified, Fixture.ip6B, next: 58, payload: echo), from: 0),
                       .drop(.sourceIPSpoofed))
        for type: UInt8 in [133, 130, 131, 132, 143] {
            let frame = Fixture.ipv6Frame(to: MACAddress(0x33, 0x33, 0, 0, 0, 0x16), .unspecified, Fixture.allNodes,
                                          next: 58, payload: FrameBuilder.icmp(type: type, body: Array(repeating: 0, count: type == 133 ? 4 : 20)))
            XCTAssertEqual(plane.send(frame, from: 0), mask(1, 2), "type \(type)")
        }
        let dad = Fixture.ipv6Frame(to: MACAddress(0x33, 0x33, 0xFF, 0, 0, 1), .unspecified, Fixture.solicited,
                                    next: 58, payload: FrameBuilder.neighborSolicitation(target: Fixture.ip6A))
        XCTAssertEqual(plane.send(dad, from: 0), mask(1, 2))
    }

    func testRouterAdvertisementRedirects() {
        let ra = Fixture.ipv6Frame(to: MACAddress(0x33, 0x33, 0, 0, 0, 1), Fixture.macA.eui64LinkLocal, Fixture.allNodes,
                                   next: 58, payload: FrameBuilder.routerAdvertisement())
        let redirect = Fixture.ipv6Frame(Fixture.macA.eui64LinkLocal, Fixture.ip6B, next: 58,
                                         payload: FrameBuilder.redirect(target: Fixture.ip6A, destination: Fixture.ip6B))
        let icmpRedirect = Fixture.ipv4Frame(FrameBuilder.ipv4(source: Fixture.ipA, destination: Fixture.ipB, protocol: 1,
                                                               payload: FrameBuilder.icmp(type: 5, code: 1)))
        var plane = Fixture.plane()
        XCTAssertEqual(plane.send(ra, from: 0), .drop(.routerAdvertisement))
        XCTAssertEqual(plane.send(redirect, from: 0), .drop(.routerAdvertisement))
        XCTAssertEqual(plane.send(icmpRedirect, from: 0), .drop(.routerAdvertisement))
        var router = Fixture.plane(Fixture.configuration(configureA: { $0.router = true }))
        XCTAssertEqual(router.send(ra, from: 0), mask(1, 2))
        XCTAssertEqual(router.send(redirect, from: 0), mask(1))
        XCTAssertEqual(router.send(icmpRedirect, from: 0), mask(1))
    }

    func testNeighborDiscoverySpoofing() {
        var plane = Fixture.plane()
        func ns(_ source: IPv6Address, _ payload: [UInt8]) -> [UInt8] {
            Fixture.ipv6Frame(to: MACAddress(0x33, 0x33, 0xFF, 0, 0, 2), source, Fixture.solicited, next: 58, payload: payload)
        }
        // Ordinary NS with the port's own link-layer address, for someone else's address.
        XCTAssertEqual(plane.send(ns(Fixture.ip6A, FrameBuilder.neighborSolicitation(target: Fixture.ip6B,
                                                                                      sourceLinkLayer: Fixture.macA)), from: 0),
                       mask(1, 2))
        XCTAssertEqual(plane.send(ns(Fixture.ip6A, FrameBuilder.neighborSolicitation(target: Fixture.ip6B,
                                                                                      sourceLinkLayer: Fixture.macB)), from: 0),
                       .drop(.ndSpoofed))
        // DAD for another port's address.
        XCTAssertEqual(plane.send(ns(.unspecified, FrameBuilder.neighborSolicitation(target: Fixture.ip6B)), from: 0),
                       .drop(.ndSpoofed))
        // NA: own target only, own target link-layer address only.
        let na = { (target: IPv6Address, lla: MACAddress?) in
            Fixture.ipv6Frame(to: Fixture.macB, Fixture.ip6A, Fixture.ip6B, next: 58,
                              payload: FrameBuilder.neighborAdvertisement(target: target, targetLinkLayer: lla))
        }
        XCTAssertEqual(plane.send(na(Fixture.ip6A, Fixture.macA), from: 0), mask(1))
        XCTAssertEqual(plane.send(na(Fixture.macA.eui64LinkLocal, Fixture.extraA), from: 0), mask(1))
        XCTAssertEqual(plane.send(na(Fixture.ip6B, Fixture.macA), from: 0), .drop(.ndSpoofed))
        XCTAssertEqual(plane.send(na(Fixture.ip6A, Fixture.macB), from: 0), .drop(.ndSpoofed))
        XCTAssertEqual(plane.drops(.ndSpoofed, port: 0), 4)
    }

    func testMalformedNDOptions() {
        var plane = Fixture.plane()
        let zeroLength = FrameBuilder.neighborSolicitation(target: Fixture.ip6B, options: [1, 0, 0, 0, 0, 0, 0, 0])
        let pastEnd = FrameBuilder.neighborSolicitation(target: Fixture.ip6B, options: [1, 2, 0, 0, 0, 0, 0, 0])
        let truncatedTarget = Array(FrameBuilder.neighborSolicitation(target: Fixture.ip6B).prefix(20))
        for payload in [zeroLength, pastEnd, truncatedTarget] {
            let frame = Fixture.ipv6Frame(to: MACAddress(0x33, 0x33, 0xFF, 0, 0, 2), Fixture.ip6A, Fixture.solicited,
                                          next: 58, payload: payload)
            XCTAssertEqual(plane.send(frame, from: 0), .drop(.malformedHeader))
        }
    }
}
