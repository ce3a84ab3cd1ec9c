import Config
import Switch
import Virtio
import XCTest

final class LearningTests: XCTestCase {
    let second: UInt64 = 1_000_000_000
    let learnedMAC = MACAddress(0x02, 0, 0, 0, 0xEE, 0x01)  // a's allowed MAC: not static

    func testUnknownUnicastFloodsThenLearns() {
        var plane = Fixture.plane()
        // Nobody has sent from extraA yet: flooding within the segment only.
        XCTAssertEqual(plane.send(Fixture.udp4(from: Fixture.macB, to: learnedMAC, Fixture.ipB, Fixture.ipA), from: 1),
                       mask(0, 2))
        XCTAssertEqual(plane.send(Fixture.udp4(from: learnedMAC, to: Fixture.macB), from: 0), mask(1))
        XCTAssertEqual(plane.send(Fixture.udp4(from: Fixture.macB, to: learnedMAC, Fixture.ipB, Fixture.ipA), from: 1),
                       mask(0))
        XCTAssertEqual(plane.statistics().ports[0].macLearning.learned, 1)
    }

    func testDestinationOnIngressPortIsDropped() {
        var plane = Fixture.plane()
        XCTAssertEqual(plane.send(Fixture.udp4(from: Fixture.macA, to: Fixture.macA), from: 0), .drop(.noDestination))
        _ = plane.send(Fixture.udp4(from: learnedMAC), from: 0)
        XCTAssertEqual(plane.send(Fixture.udp4(from: Fixture.macA, to: learnedMAC), from: 0), .drop(.noDestination))
        XCTAssertEqual(plane.drops(.noDestination, port: 0), 2)
    }

    func testSegmentWithOnePortHasNoDestination() {
        var plane = Fixture.plane()
        let frame = Fixture.udp4(from: Fixture.macD, to: .broadcast, Fixture.ipD, IPv4Address("10.0.1.255")!)
        XCTAssertEqual(plane.send(frame, from: 3), .drop(.noDestination))
    }

    func testAgingAndExpire() {
        var plane = Fixture.plane(Fixture.configuration(macTable: MACTableSettings(agingSeconds: 10)))
        _ = plane.send(Fixture.udp4(from: learnedMAC), from: 0, now: 1 * second)
        XCTAssertEqual(plane.lookup(mac: learnedMAC, segmentOf: 0, now: 5 * second), 0)
        // Refreshed at 8 s: still there at 15 s.
        _ = plane.send(Fixture.udp4(from: learnedMAC), from: 0, now: 8 * second)
        XCTAssertEqual(plane.lookup(mac: learnedMAC, segmentOf: 0, now: 15 * second), 0)
        // Aged out lazily on lookup.
        let toLearned = Fixture.udp4(from: Fixture.macB, to: learnedMAC, Fixture.ipB, Fixture.ipA)
        XCTAssertEqual(plane.send(toLearned, from: 1, now: 19 * second), mask(0, 2))
        XCTAssertEqual(plane.learnedEntries(port: 0), 0)
        // And by expire.
        _ = plane.send(Fixture.udp4(from: learnedMAC), from: 0, now: 20 * second)
        XCTAssertEqual(plane.statistics().segments[0].macEntries, 3 + 1)  // a, b, c static; extraA learned
        plane.expire(now: 29 * second)
        XCTAssertEqual(plane.learnedEntries(port: 0), 1)
        plane.expire(now: 31 * second)
        XCTAssertEqual(plane.learnedEntries(port: 0), 0)
        // Static entries never age.
        XCTAssertEqual(plane.lookup(mac: Fixture.macB, segmentOf: 0, now: UInt64.max), 1)
        XCTAssertEqual(plane.send(Fixture.udp4(), from: 0, now: UInt64.max), mask(1))
    }

    func testDynamicEntryMovesStaticDoesNot() {
        var config = Fixture.configuration(configureB: { $0.allowedMACs = [MACAddress(0x02, 0, 0, 0, 0xEE, 0x01)] })
        config.tenants[0].ports[2].allowedMACs = [Fixture.macA]  // c may claim a's MAC, but never move it
        var plane = Fixture.plane(config)
        _ = plane.send(Fixture.udp4(from: learnedMAC), from: 0)
        XCTAssertEqual(plane.lookup(mac: learnedMAC, segmentOf: 0, now: 2 * second), 0)
        _ = plane.send(Fixture.udp4(from: learnedMAC, to: Fixture.macA, Fixture.ipB, Fixture.ipA), from: 1)
        XCTAssertEqual(plane.lookup(mac: learnedMAC, segmentOf: 0, now: 2 * second), 1)
        XCTAssertEqual(plane.learnedEntries(port: 0), 0)
        XCTAssertEqual(plane.learnedEntries(port: 1), 1)
        _ = plane.send(Fixture.udp4(from: Fixture.macA, to: Fixture.macB, Fixture.ipC, Fixture.ipB), from: 2)
        XCTAssertEqual(plane.lookup(mac: Fixture.macA, segmentOf: 0, now: 2 * second), 0)
        XCTAssertEqual(plane.statistics().ports[2].macLearning.refused, 1)
    }

    /// 10,000 random source MACs from one port: per-port limit holds, other ports' entries survive,
    /// the table stays bounded.
    func testPerPortLimitWithManyRandomMACs() {
        var generator = SystemRandomNumberGenerator()
        let randomMACs = (0..<10_000).map { _ in
            MACAddress(rawValue: (UInt64.random(in: 0...0xFFFF_FFFF_FFFF, using: &generator) & ~0x0100_0000_0000) | 0x0200_0000_0000)
        }
        let bMACs = (1...5).map { MACAddress(0x02, 0xBB, 0, 0, 0, UInt8($0)) }
        let config = Fixture.configuration(macTable: MACTableSettings(maxEntries: 256, maxEntriesPerPort: 64, agingSeconds: 300),
                                           configureA: { $0.allowedMACs = randomMACs },
                                           configureB: { $0.allowedMACs = bMACs })
        var plane = Fixture.plane(config)
        for mac in bMACs { XCTAssertEqual(plane.send(Fixture.udp4(from: mac, to: Fixture.macC, Fixture.ipB, Fixture.ipC), from: 1), mask(2)) }
        for mac in randomMACs { _ = plane.send(Fixture.udp4(from: mac), from: 0) }
        XCTAssertEqual(plane.learnedEntries(port: 0), 64)
        let stats = plane.statistics().ports[0].macLearning
        XCTAssertEqual(stats.learned, 64)
        XCTAssertEqual(stats.refused, UInt64(Set(randomMACs).count - 64))
        for mac in bMACs { XCTAssertEqual(plane.lookup(mac: mac, segmentOf: 1, now: 2 * second), 1) }
        XCTAssertEqual(plane.statistics().segments[0].macEntries, 3 + 5 + 64)
        XCTAssertLessThanOrEqual(plane.macTableCapacity(segmentOf: 0), 1024)
    }

    func testSegmentLimitNeverEvictsOtherPorts() {
        var generator = SystemRandomNumberGenerator()
        let randomMACs = (0..<10_000).map { _ in
            MACAddress(rawValue: (UInt64.random(in: 0...0xFFFF_FFFF_FFFF, using: &generator) & ~0x0100_0000_0000) | 0x0200_0000_0000)
        }
        let bMACs = (1...5).map { MACAddress(0x02, 0xBB, 0, 0, 0, UInt8($0)) }
        let config = Fixture.configuration(macTable: MACTableSettings(maxEntries: 100, maxEntriesPerPort: 100_000, agingSeconds: 300),
                                           configureA: { $0.allowedMACs = randomMACs },
                                           configureB: { $0.allowedMACs = bMACs })
        var plane = Fixture.plane(config)
        for mac in bMACs { _ = plane.send(Fixture.udp4(from: mac, to: Fixture.macC, Fixture.ipB, Fixture.ipC), from: 1) }
        for (index, mac) in randomMACs.enumerated() { _ = plane.send(Fixture.udp4(from: mac), from: 0, now: second + UInt64(index)) }
        XCTAssertEqual(plane.learnedEntries(port: 0), 95)
        XCTAssertEqual(plane.statistics().segments[0].macEntries, 3 + 100)
        for mac in bMACs { XCTAssertEqual(plane.lookup(mac: mac, segmentOf: 1, now: 2 * second), 1) }
        // After aging, the slots come back.
        plane.expire(now: 400 * second)
        XCTAssertEqual(plane.statistics().segments[0].macEntries, 3)
        XCTAssertEqual(plane.send(Fixture.udp4(from: randomMACs[0]), from: 0, now: 401 * second), mask(1))
        XCTAssertEqual(plane.learnedEntries(port: 0), 1)
    }

    func testSegmentTableDirectly() {
        let table = SegmentTable(segments: [(MACTableSettings(maxEntries: 1000, maxEntriesPerPort: 1000, agingSeconds: 1), [])],
                                 portCount: 2, seed: 42)
        for i in 1...1000 { XCTAssertEqual(table.learn(segment: 0, mac: UInt64(i) << 8 | 0x02_0000_0000_00, port: i % 2, now: 0), .learned) }
        XCTAssertEqual(table.entryCount(segment: 0), 1000)
        XCTAssertEqual(table.learn(segment: 0, mac: 0x0200_0000_0001, port: 0, now: 0), .refused)
        for i in stride(from: 1, through: 1000, by: 3) {
            XCTAssertEqual(table.lookup(segment: 0, mac: UInt64(i) << 8 | 0x02_0000_0000_00, now: 0), i % 2)
        }
        table.expire(now: 2_000_000_000)
        XCTAssertEqual(table.entryCount(segment: 0), 0)
        XCTAssertEqual(table.learnedEntries(port: 0) + table.learnedEntries(port: 1), 0)
    }
}

final class IsolationTests: XCTestCase {
    func testTenantsWithSameSubnetAndMACsNeverMeet() {
        var plane = Fixture.plane()
        // red/x has blue/a's MAC and IP; red/y has blue/b's.
        XCTAssertEqual(plane.send(Fixture.arpFrame(), from: 0), mask(1, 2))
        XCTAssertEqual(plane.send(Fixture.arpFrame(), from: 4), mask(5))
        XCTAssertEqual(plane.send(Fixture.udp4(), from: 4), mask(5))
        XCTAssertEqual(plane.send(Fixture.udp4(), from: 0), mask(1))
        XCTAssertEqual(plane.send(Fixture.udp4(to: MACAddress(0x02, 9, 9, 9, 9, 9)), from: 4), mask(5))
        // Segments of one tenant are separate too.
        XCTAssertEqual(plane.send(Fixture.udp4(to: Fixture.macD), from: 0), mask(1, 2))
        XCTAssertEqual(plane.ports.map(\.port), ["a", "b", "c", "d", "x", "y"])
        XCTAssertEqual(plane.ports[4].interfaceName, "bh-red-x")
    }

    func testPortMask() {
        var m = PortMask()
        XCTAssertTrue(m.isEmpty)
        for port in [0, 63, 64, 200, 255, 256, -1] { m.insert(port) }
        XCTAssertEqual(m.count, 5)
        XCTAssertTrue(m.contains(255)); XCTAssertFalse(m.contains(256)); XCTAssertFalse(m.contains(1))
        var seen: [Int] = []
        m.forEach { seen.append($0) }
        XCTAssertEqual(seen, [0, 63, 64, 200, 255])
        m.remove(63)
        XCTAssertEqual(m.first, 0)
        XCTAssertEqual(m.count, 4)
    }
}
