import Benchmark
import Foundation
import Virtio

// Device-side request intake micro-benchmarks: pop a chain from a split virtqueue, walk and
// validate its descriptors, parse and validate the virtio-blk request, push and publish the used
// entry. No I/O. One iteration is 1M requests (scalingFactor .mega), so `throughput` reads
// directly in millions of requests per second.
//
// Short mode for CI (about 1 s per benchmark):
//   BLOCK_BENCH_SHORT=1 swift package --scratch-path .build-bench --disable-sandbox benchmark --target BlockBenchmarks
// Allocations: "Malloc (total)" must read 0 after warm-up (threshold below).

private func configuration() -> Benchmark.Configuration {
    let short = ProcessInfo.processInfo.environment["BLOCK_BENCH_SHORT"] != nil
    return Benchmark.Configuration(
        metrics: [.throughput, .wallClock, .mallocCountTotal],
        warmupIterations: 1,
        scalingFactor: .mega,
        maxDuration: short ? .seconds(1) : .seconds(5),
        maxIterations: short ? 3 : 50,
        thresholds: [.mallocCountTotal: .init(absolute: [.p0: 0, .p50: 0, .p100: 0])]
    )
}

/// A queue of 256 in one 1 MiB guest memory region, with one request chain laid out once; the
/// driver side republishes the same head, so every iteration sees a fresh available entry.
private final class Fixture {
    static let base: UInt64 = 0x1_0000_0000
    let host = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 4096)
    let memory: GuestMemory
    let size: UInt16 = 256
    let descriptors = Fixture.base
    let available = Fixture.base + 0x10000
    let used = Fixture.base + 0x20000
    var availableIndex: UInt16 = 0

    init(indirect: Bool) {
        host.initializeMemory(as: UInt8.self, repeating: 0, count: 1 << 20)
        memory = try! GuestMemory(regions: [GuestMemoryRegion(guestAddress: Fixture.base, size: 1 << 20, host: host)])
        let header = Fixture.base + 0x30000, data = Fixture.base + 0x40000, status = Fixture.base + 0x31000
        memory.store(UInt32(0), at: header)       // VIRTIO_BLK_T_IN
        memory.store(UInt64(8), at: header + 8)   // sector 8
        if indirect {
            let table = Fixture.base + 0x32000
            var entries: [(UInt64, UInt32, UInt16)] = [(header, 16, 0)]
            for i in 0..<8 { entries.append((data + UInt64(i) * 512, 512, DescriptorFlags.write)) }
            entries.append((status, 1, DescriptorFlags.write))
            for (i, e) in entries.enumerated() {
                let last = i == entries.count - 1
                descriptor(table, UInt16(i), e.0, e.1, e.2 | (last ? 0 : DescriptorFlags.next), UInt16(i + 1))
            }
            descriptor(descriptors, 0, table, UInt32(16 * entries.count), DescriptorFlags.indirect, 0)
        } else {
            descriptor(descriptors, 0, header, 16, DescriptorFlags.next, 1)
            descriptor(descriptors, 1, data, 4096, DescriptorFlags.write | DescriptorFlags.next, 2)
            descriptor(descriptors, 2, status, 1, DescriptorFlags.write, 0)
        }
    }

    deinit { host.deallocate() }

    func descriptor(_ table: UInt64, _ index: UInt16, _ address: UInt64, _ length: UInt32, _ flags: UInt16, _ next: UInt16) {
        let at = table + 16 * UInt64(index)
        memory.store(address, at: at)
        memory.store(length, at: at + 8)
        memory.store(flags, at: at + 12)
        memory.store(next, at: at + 14)
    }

    /// The driver publishes head 0 once more.
    @inline(__always)
    func publish() {
        memory.store(UInt16(0), at: available + 4 + 2 * UInt64(availableIndex & (size - 1)))
        availableIndex &+= 1
        memory.store(availableIndex, at: available + 2)
    }

    func queue(indirect: Bool) -> SplitQueue {
        try! SplitQueue(size: size, descriptorTable: descriptors, availableRing: available, usedRing: used,
                        memory: memory, eventIndex: true, indirectDescriptors: indirect)
    }
}

private func intake(_ benchmark: Benchmark, indirect: Bool, expectedSegments: Int) {
    let fixture = Fixture(indirect: indirect)
    var queue = fixture.queue(indirect: indirect)
    var chain = DescriptorChain(capacity: 16)
    var request = BlockRequest(capacity: 16)
    let limits = BlockLimits(capacitySectors: 1 << 21, segMax: 126)

    @inline(__always)
    func one() -> BlockStatus {
        fixture.publish()
        guard let head = try? queue.popAvailable(), (try? queue.walk(head: head, into: &chain)) != nil,
              (try? BlockRequestParser.parse(chain, memory: fixture.memory, into: &request)) != nil
        else { fatalError("benchmark chain was refused") }
        let status = validate(request, limits: limits)
        queue.pushUsed(head: head, length: UInt32(truncatingIfNeeded: request.dataLength) &+ 1)
        _ = queue.publishUsed()
        return status
    }
    // Warm up: storage grows to its final capacity here, not in the measurement.
    for _ in 0..<1000 { _ = one() }
    guard one() == .ok, request.data.count == expectedSegments, request.dataLength == 4096 else {
        fatalError("benchmark request did not parse as a 4 KiB read of \(expectedSegments) segment(s)")
    }

    benchmark.startMeasurement()
    for _ in benchmark.scaledIterations {
        blackHole(one())
    }
    benchmark.stopMeasurement()
}

let benchmarks: @Sendable () -> Void = {
    Benchmark("Descriptor walk + request parse, 4 KiB read (3 descriptors)", configuration: configuration()) { benchmark in
        intake(benchmark, indirect: false, expectedSegments: 1)
    }
    Benchmark("Descriptor walk + request parse, 4 KiB read, indirect 8 segments", configuration: configuration()) { benchmark in
        intake(benchmark, indirect: true, expectedSegments: 8)
    }
}
