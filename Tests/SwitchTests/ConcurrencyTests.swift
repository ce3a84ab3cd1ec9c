import Config
import Dispatch
import Metering
import Switch
import Synchronization
import Virtio
import XCTest

/// Several packet workers on one switch at once: shared MAC tables and policers, per-worker
/// counters.
private let second: UInt64 = 1_000_000_000

final class ConcurrencyTests: XCTestCase {

    /// Runs `body(thread)` on `threads` threads at once and waits for all.
    private func together(_ threads: Int, _ body: @escaping @Sendable (Int) -> Void) {
        DispatchQueue.concurrentPerform(iterations: threads, execute: body)
    }

    /// Two threads draining one bucket get no more than its depth together, however they race.
    func testTwoThreadsShareOneBucketsLimit() {
        for _ in 0..<20 {
            let bucket = SharedTokenBucket(rate: 0, burst: 10_000)
            let taken = Atomic<Int>(0)
            together(2) { _ in
                var mine = 0
                for _ in 0..<20_000 where bucket.consume(1, now: 5) { mine += 1 }
                taken.add(mine, ordering: .relaxed)
            }
            XCTAssertEqual(taken.load(ordering: .relaxed), 10_000)
        }
    }

    /// With refills racing too (both threads move the clock), the total stays within
    /// burst + rate x elapsed.
    func testRefillsAreNotPaidTwice() {
        let rate: UInt64 = 1_000_000  // one token a microsecond
        let bucket = SharedTokenBucket(rate: rate, burst: 100, now: 0)
        let taken = Atomic<Int>(0)
        let end: UInt64 = 10_000_000  // 10 ms of simulated time
        together(2) { thread in
            var mine = 0
            var now: UInt64 = UInt64(thread) * 7
            while now <= end {
                if bucket.consume(1, now: now) { mine += 1 }
                now += 50
            }
            taken.add(mine, ordering: .relaxed)
        }
        let limit = 100 + Int(rate / 1000 * end / 1_000_000)  // burst + 10,000
        XCTAssertLessThanOrEqual(taken.load(ordering: .relaxed), limit)
        XCTAssertGreaterThan(taken.load(ordering: .relaxed), limit * 9 / 10, "refills were lost")
    }

    /// A port's rate limit holds across two workers sending its frames at once.
    func testPortRateLimitHoldsAcrossWorkers() {
        let plane = Fixture.plane(Fixture.configuration(configureA: {
            $0.rateLimit = RateLimit(packetsPerSecond: 1, burstPackets: 500)
        }))
        let workers = [plane, plane.makeWorker()]
        let frame = Fixture.udp4()
        let forwarded = Atomic<Int>(0)
        together(2) { thread in
            var mine = 0
            for _ in 0..<2_000 {
                let verdict = frame.withUnsafeBytes {
                    workers[thread].process(frame: $0, header: VirtioNetHeader(), ingress: 0, now: second)
                }
                if case .forward = verdict { mine += 1 }
            }
            forwarded.add(mine, ordering: .relaxed)
        }
        XCTAssertEqual(forwarded.load(ordering: .relaxed), 500)
        let a = plane.statistics().ports[0]
        XCTAssertEqual(a.rx.frames, 4_000, "every worker's frames are counted")
        XCTAssertEqual(a.drops(.rateLimit), 3_500)
    }

    /// A MAC learned by one worker is what every other worker forwards to, while both learn and
    /// look up at once; counters of both workers add up.
    func testLearningIsSeenByEveryWorker() {
        let macs = (1...40).map { MACAddress(0x02, 0xAA, 0, 0, 0, UInt8($0)) }
        let plane = Fixture.plane(Fixture.configuration(configureA: { $0.allowedMACs = macs }))
        let workers = [plane, plane.makeWorker()]
        let misdirected = Atomic<Int>(0)
        together(2) { thread in
            let worker = workers[thread]
            for round in 0..<200 {
                for (index, mac) in macs.enumerated() where index % 2 == thread {
                    // This worker learns its half of a's MACs...
                    _ = Fixture.udp4(from: mac).withUnsafeBytes {
                        worker.process(frame: $0, header: VirtioNetHeader(), ingress: 0, now: second + UInt64(round))
                    }
                }
                // ...and sends from b to every MAC: to a when learned, else flooded in the segment,
                // never anywhere else.
                for mac in macs {
                    let verdict = Fixture.udp4(from: Fixture.macB, to: mac, Fixture.ipB, Fixture.ipA).withUnsafeBytes {
                        worker.process(frame: $0, header: VirtioNetHeader(), ingress: 1, now: second + UInt64(round))
                    }
                    if verdict != mask(0) && verdict != mask(0, 2) { misdirected.add(1, ordering: .relaxed) }
                }
            }
        }
        XCTAssertEqual(misdirected.load(ordering: .relaxed), 0)
        // Afterwards each worker finds every MAC, whichever worker learned it.
        for worker in workers {
            for mac in macs {
                XCTAssertEqual(worker.lookup(mac: mac, segmentOf: 0, now: 2 * second), 0)
                XCTAssertEqual(Fixture.udp4(from: Fixture.macB, to: mac, Fixture.ipB, Fixture.ipA).withUnsafeBytes {
                    worker.process(frame: $0, header: VirtioNetHeader(), ingress: 1, now: 2 * second)
                }, mask(0))
            }
        }
        XCTAssertEqual(plane.learnedEntries(port: 0), macs.count)
        let stats = plane.statistics()
        XCTAssertEqual(stats.ports[0].macLearning.learned, UInt64(macs.count), "each MAC learned once")
        XCTAssertEqual(stats.ports[0].rx.frames, 200 * 40)
        XCTAssertEqual(stats.ports[1].rx.frames, 2 * 200 * 40 + 2 * 40)
        XCTAssertEqual(stats.segments[0].macEntries, 3 + macs.count)
    }

    /// Expiry on one thread while workers learn and look up: the table's counts stay exact and
    /// static entries are never lost.
    func testExpireWhileWorkersForward() {
        let macs = (1...60).map { MACAddress(0x02, 0xAB, 0, 0, 0, UInt8($0)) }
        let plane = Fixture.plane(Fixture.configuration(macTable: MACTableSettings(maxEntries: 4096, maxEntriesPerPort: 64,
                                                                                   agingSeconds: 10),
                                                        configureA: { $0.allowedMACs = macs }))
        let workers = [plane, plane.makeWorker()]
        let lostStatic = Atomic<Int>(0)
        together(3) { thread in
            if thread == 2 {
                // The aging thread: every "second" of simulated time.
                for tick in 0..<2_000 { plane.expire(now: UInt64(tick) * 50_000_000) }
                return
            }
            let worker = workers[thread]
            for step in 0..<2_000 {
                let now = UInt64(step) * 50_000_000
                let mac = macs[(step * 7 + thread) % macs.count]
                _ = Fixture.udp4(from: mac).withUnsafeBytes {
                    worker.process(frame: $0, header: VirtioNetHeader(), ingress: 0, now: now)
                }
                if worker.lookup(mac: Fixture.macB, segmentOf: 0, now: now) != 1 { lostStatic.add(1, ordering: .relaxed) }
            }
        }
        XCTAssertEqual(lostStatic.load(ordering: .relaxed), 0)
        plane.expire(now: .max)
        XCTAssertEqual(plane.learnedEntries(port: 0), 0)
        XCTAssertEqual(plane.statistics().segments[0].macEntries, 3)
    }
}
