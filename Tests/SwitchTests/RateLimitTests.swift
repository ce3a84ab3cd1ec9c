import Config
import Metering
import Switch
import Virtio
import XCTest

final class TokenBucketTests: XCTestCase {
    let second: UInt64 = 1_000_000_000

    func testBurstThenRate() {
        var bucket = TokenBucket(rate: 1000, burst: 10, now: 0)
        for _ in 0..<10 { XCTAssertTrue(bucket.consume(1, now: 0)) }
        XCTAssertFalse(bucket.consume(1, now: 0))
        // 1000 tokens/s: one per millisecond, no fractional drift.
        XCTAssertFalse(bucket.consume(1, now: 999_999))
        XCTAssertTrue(bucket.consume(1, now: 1_000_000))
        XCTAssertFalse(bucket.consume(1, now: 1_000_000))
        // Over a second at most the rate passes (plus nothing: the bucket starts empty here).
        var passed = 0
        for step in 1...10_000 where bucket.consume(1, now: 1_000_000 + UInt64(step) * 100_000) { passed += 1 }
        XCTAssertEqual(passed, 1000)
    }

    func testRefillCapsAtBurst() {
        var bucket = TokenBucket(rate: 1_000_000, burst: 50, now: 0)
        XCTAssertTrue(bucket.consume(50, now: 0))
        bucket.refill(now: 1000 * second)
        XCTAssertEqual(bucket.available, 50)
        XCTAssertFalse(bucket.consume(51, now: 1000 * second))
        XCTAssertTrue(bucket.consume(50, now: 1000 * second))
    }

    func testNoOverflowAtExtremes() {
        var bucket = TokenBucket(rate: .max, burst: .max, now: 0)
        XCTAssertTrue(bucket.consume(1_000_000, now: .max))
        bucket.refill(now: .max)
        XCTAssertGreaterThan(bucket.available, 1_000_000_000)
        XCTAssertFalse(bucket.consume(.max, now: .max))
        var slow = TokenBucket(rate: 1, burst: 1, now: .max - 10)
        XCTAssertTrue(slow.consume(1, now: .max - 10))
        XCTAssertFalse(slow.consume(1, now: .max))
        // A clock that goes backwards refills nothing and does not trap.
        XCTAssertFalse(slow.consume(1, now: 0))
        XCTAssertFalse(slow.consume(1, now: .max))
        var zero = TokenBucket(rate: 0, burst: 2, now: 0)
        XCTAssertTrue(zero.consume(2, now: .max))
        XCTAssertFalse(zero.consume(1, now: .max))
        XCTAssertEqual(zero.nanosecondsUntil(1), .max, "a zero rate never refills")
    }

    /// A take larger than the burst runs into debt; refills repay it before anything else can
    /// be taken, so the long-run rate holds whatever the size of one take.
    func testDebtIsRepaidBeforeTheNextTake() {
        // 4 MiB/s with a 1 MiB burst; a 4 MiB take leaves 3 MiB owed.
        let mib: UInt64 = 1 << 20
        var bucket = TokenBucket(rate: 4 * mib, burst: mib, now: 0)
        XCTAssertTrue(bucket.canTake(1))
        bucket.takeAllowingDebt(4 * mib)
        XCTAssertEqual(bucket.available, 0)
        XCTAssertEqual(bucket.owed, 3 * mib)
        XCTAssertFalse(bucket.canTake(0), "nothing, not even a free take, while in debt")
        XCTAssertEqual(bucket.nanosecondsUntil(1), 750_000_239, "3 MiB plus one byte at 4 MiB/s (238.4 ns a byte), rounded up")
        bucket.refill(now: 700_000_000)
        XCTAssertFalse(bucket.canTake(1), "still owed after 0.7 s")
        bucket.refill(now: 750_000_000)
        XCTAssertEqual(bucket.owed, 0)
        XCTAssertFalse(bucket.canTake(1), "repaid, but no credit yet")
        bucket.refill(now: 1_000_000_000)
        XCTAssertEqual(bucket.available, mib, "0.25 s of refill after the debt: 1 MiB")
        // Four 4 MiB takes, each started as soon as the bucket allows: 16 MiB at 4 MiB/s with a
        // 1 MiB burst takes 2.75 s until the last starts.
        var fresh = TokenBucket(rate: 4 * mib, burst: mib, now: 0)
        var now: UInt64 = 0
        for _ in 0..<4 {
            now += fresh.nanosecondsUntil(1)
            fresh.refill(now: now)
            XCTAssertTrue(fresh.canTake(1))
            fresh.takeAllowingDebt(4 * mib)
        }
        XCTAssertEqual(Double(now) / 1e9, 2.75, accuracy: 0.001)
    }

    func testDebtSaturatesInsteadOfOverflowing() {
        var bucket = TokenBucket(rate: 1, burst: 1, now: 0)
        bucket.takeAllowingDebt(.max)
        bucket.takeAllowingDebt(.max)
        XCTAssertFalse(bucket.canTake(1))
        XCTAssertEqual(bucket.nanosecondsUntil(1), UInt64.max)
        bucket.refill(now: .max)
        XCTAssertFalse(bucket.canTake(1), "about 1.8 x 10^10 tokens owed at 1 per second")
    }
}

final class RateLimitTests: XCTestCase {
    let second: UInt64 = 1_000_000_000

    func testPacketRate() {
        var plane = Fixture.plane(Fixture.configuration(configureA: {
            $0.rateLimit = RateLimit(packetsPerSecond: 10, burstPackets: 3)
        }))
        for _ in 0..<3 { XCTAssertEqual(plane.send(Fixture.udp4(), from: 0, now: second), mask(1)) }
        XCTAssertEqual(plane.send(Fixture.udp4(), from: 0, now: second), .drop(.rateLimit))
        XCTAssertEqual(plane.send(Fixture.udp4(), from: 0, now: second + second / 10), mask(1))
        XCTAssertEqual(plane.drops(.rateLimit, port: 0), 1)
        // Other ports are not limited.
        for _ in 0..<10 { XCTAssertEqual(plane.send(Fixture.udp4(from: Fixture.macB, to: Fixture.macA, Fixture.ipB, Fixture.ipA),
                                                    from: 1, now: second), mask(0)) }
    }

    func testBitRate() {
        var plane = Fixture.plane(Fixture.configuration(configureA: {
            $0.rateLimit = RateLimit(bitsPerSecond: 8_000, burstBits: 8 * 100)
        }))
        let frame = Fixture.udp4(payload: Array(repeating: 0, count: 50 - 42 + 4))  // 54 bytes
        XCTAssertEqual(frame.count, 54)
        XCTAssertEqual(plane.send(frame, from: 0, now: second), mask(1))
        XCTAssertEqual(plane.send(frame, from: 0, now: second), .drop(.rateLimit))
        // 368 bits were left; at 8000 bit/s the 432 bits of the frame are there after 8 ms, not 7.
        XCTAssertEqual(plane.send(frame, from: 0, now: second + 7_000_000), .drop(.rateLimit))
        XCTAssertEqual(plane.send(frame, from: 0, now: second + 8_000_000), mask(1))
    }

    func testGSOFrameCountsAsItsSegments() {
        var plane = Fixture.plane(Fixture.configuration(configureA: {
            $0.rateLimit = RateLimit(packetsPerSecond: 1, burstPackets: 20)
        }))
        let gso = VirtioNetHeader(flags: VirtioNetHeader.flagNeedsCsum, gsoType: VirtioNetHeader.GSOType.tcpv4.rawValue,
                                  headerLength: 54, gsoSize: 1000, csumStart: 34, csumOffset: 16)
        let tcp = FrameBuilder.tcp(sourcePort: 1, destinationPort: 80, payload: Array(repeating: 0, count: 10_500))
        let frame = Fixture.ipv4Frame(FrameBuilder.ipv4(source: Fixture.ipA, destination: Fixture.ipB, protocol: 6, payload: tcp))
        XCTAssertEqual(plane.send(frame, from: 0, header: gso), mask(1))  // 11 packets
        XCTAssertEqual(plane.send(frame, from: 0, header: gso), .drop(.rateLimit))  // 9 left
    }

    func testStormControl() {
        var plane = Fixture.plane(Fixture.configuration(configureA: {
            $0.stormControl = StormControl(broadcastPacketsPerSecond: 2, multicastPacketsPerSecond: 1)
        }))
        let broadcast = Fixture.arpFrame()
        let multicast = Fixture.udp4(to: MACAddress(0x01, 0x00, 0x5E, 0, 0, 0xFB), Fixture.ipA, IPv4Address("224.0.0.251")!)
        XCTAssertEqual(plane.send(broadcast, from: 0, now: second), mask(1, 2))
        XCTAssertEqual(plane.send(broadcast, from: 0, now: second), mask(1, 2))
        XCTAssertEqual(plane.send(broadcast, from: 0, now: second), .drop(.stormBroadcast))
        XCTAssertEqual(plane.send(multicast, from: 0, now: second), mask(1, 2))
        XCTAssertEqual(plane.send(multicast, from: 0, now: second), .drop(.stormMulticast))
        // Unicast is not storm-controlled.
        for _ in 0..<5 { XCTAssertEqual(plane.send(Fixture.udp4(), from: 0, now: second), mask(1)) }
        XCTAssertEqual(plane.send(broadcast, from: 0, now: 2 * second), mask(1, 2))
    }
}

final class StatisticsTests: XCTestCase {
    func testCountersAndJSONShape() throws {
        var plane = Fixture.plane()
        XCTAssertEqual(plane.send(Fixture.udp4(), from: 0), mask(1))
        XCTAssertEqual(plane.send(Fixture.udp4(from: Fixture.macC), from: 0), .drop(.sourceMACSpoofed))
        plane.recordTransmitted(port: 1, bytes: 46)
        plane.recordDrop(.txError, port: 1)
        plane.recordDrop(.txError, port: 99)  // ignored

        let data = try JSONEncoder().encode(plane.statistics())
        let root = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        XCTAssertEqual(Set(root.keys), ["ports", "segments"])
        let ports = try XCTUnwrap(root["ports"] as? [[String: Any]])
        XCTAssertEqual(ports.count, 6)
        let a = ports[0]
        XCTAssertEqual(Set(a.keys), ["index", "tenant", "port", "segment", "interface", "rx", "tx", "drops", "macLearning"])
        XCTAssertEqual(a["index"] as? Int, 0)
        XCTAssertEqual(a["tenant"] as? String, "blue")
        XCTAssertEqual(a["port"] as? String, "a")
        XCTAssertEqual(a["segment"] as? String, "lan")
        XCTAssertEqual(a["interface"] as? String, "bh-blue-a")
        let rx = try XCTUnwrap(a["rx"] as? [String: Any])
        XCTAssertEqual(rx["frames"] as? Int, 2)
        XCTAssertEqual(rx["bytes"] as? Int, 2 * 46)
        let drops = try XCTUnwrap(a["drops"] as? [String: Any])
        XCTAssertEqual(Set(drops.keys), Set(DropReason.allCases.map(\.name)))
        XCTAssertEqual(drops.count, 33)
        XCTAssertEqual(drops["source-mac-spoofed"] as? Int, 1)
        XCTAssertEqual(drops["malformed-runt"] as? Int, 0)
        let learning = try XCTUnwrap(a["macLearning"] as? [String: Any])
        XCTAssertEqual(Set(learning.keys), ["learned", "refused"])
        let b = ports[1]
        XCTAssertEqual((b["tx"] as? [String: Any])?["frames"] as? Int, 1)
        XCTAssertEqual((b["tx"] as? [String: Any])?["bytes"] as? Int, 46)
        XCTAssertEqual((b["drops"] as? [String: Any])?["tx-error"] as? Int, 1)
        let segments = try XCTUnwrap(root["segments"] as? [[String: Any]])
        XCTAssertEqual(segments.count, 3)
        XCTAssertEqual(Set(segments[0].keys), ["tenant", "segment", "macEntries"])
        XCTAssertEqual(segments[0]["macEntries"] as? Int, 3)
        XCTAssertEqual(segments[2]["tenant"] as? String, "red")
        // Round trip.
        XCTAssertEqual(try JSONDecoder().decode(SwitchStatistics.self, from: data), plane.statistics())
    }

    func testDropReasonNames() {
        XCTAssertEqual(DropReason.allCases.map(\.name), [
            "malformed-runt", "malformed-giant", "malformed-header", "malformed-vnet-header", "offload-gso-mismatch",
            "offload-csum-mismatch", "offload-gso-size", "offload-hdr-len", "vlan-tagged",
            "ethertype-not-allowed", "source-mac-invalid", "source-mac-spoofed", "source-ip-spoofed", "arp-spoofed",
            "nd-spoofed", "dhcp-server", "router-advertisement", "fragment-invalid", "acl-ingress", "acl-egress",
            "rate-limit", "storm-broadcast", "storm-multicast", "no-destination", "tx-error",
            "vxlan-malformed", "vxlan-unknown-vni", "vxlan-unknown-host", "vxlan-spoofed-mac", "vxlan-spoofed-ip",
            "uplink-busy", "uplink-segmentation", "neighbor-answered",
        ])
    }
}
