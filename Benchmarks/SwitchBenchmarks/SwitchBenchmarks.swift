import Benchmark
import Config
import Foundation
import Switch
import Virtio

// Forwarding-decision micro-benchmarks: the ingress pipeline alone (no I/O) on prepared frames,
// with port security and ACLs in force. One iteration is 1M decisions (scalingFactor .mega), so
// `throughput` reads directly in millions of decisions per second.
//
// Short mode for CI (about 1 s per benchmark):
//   SWITCH_BENCH_SHORT=1 swift package --scratch-path .build-bench --disable-sandbox benchmark --filter "Forwarding.*"
// Allocations: "Malloc (total)" must read 0; the threshold below declares it for baseline
// comparisons (`benchmark baseline check`, `benchmark thresholds check`).

private func configuration() -> Benchmark.Configuration {
    let short = ProcessInfo.processInfo.environment["SWITCH_BENCH_SHORT"] != nil
    return Benchmark.Configuration(
    metrics: [.throughput, .wallClock, .mallocCountTotal],
    warmupIterations: 1,
    scalingFactor: .mega,
    maxDuration: short ? .seconds(1) : .seconds(5),
    maxIterations: short ? 3 : 50,
    // After warm-up a decision allocates nothing: any malloc in a million decisions is a regression.
    thresholds: [.mallocCountTotal: .init(absolute: [.p0: 0, .p50: 0, .p100: 0])]
    )
}

private enum Topology {
    static let macs = (1...4).map { MACAddress(0x02, 0, 0, 0, 0, UInt8($0)) }

    static func host() -> HostConfiguration {
        let ports = (0..<4).map { index in
            Port(id: "p\(index)", segment: "lan", mac: macs[index],
                 ips: [IPPrefix("10.0.0.\(index + 1)/24")!, IPPrefix("fd00::\(index + 1)/64")!],
                 allowedMACs: [MACAddress(0x02, 0, 0, 0, 0xEE, UInt8(index))],
                 rateLimit: RateLimit(bitsPerSecond: 1_000_000_000_000, packetsPerSecond: 1_000_000_000_000),
                 stormControl: StormControl(broadcastPacketsPerSecond: 1_000_000_000_000,
                                            multicastPacketsPerSecond: 1_000_000_000_000))
        }
        // Rules that do not match the benchmark traffic, so every one is evaluated, in and out.
        let acl = [
            ACLRule(action: .deny, protocol: .tcp, destinationPort: PortRange(lower: 22, upper: 22)),
            ACLRule(action: .deny, protocol: .udp, destinationPort: PortRange(lower: 1900, upper: 1900)),
            ACLRule(action: .deny, direction: .egress, source: IPPrefix("192.168.0.0/16")),
            ACLRule(action: .deny, direction: .ingress, protocol: .udp, destination: IPPrefix("10.0.1.0/24"),
                    destinationPort: PortRange(lower: 1, upper: 1024)),
        ]
        let tenant = Tenant(id: "bench", segments: [Segment(id: "lan")], ports: ports, acl: acl)
        return HostConfiguration(host: HostSettings(stateDirectory: "/var/lib/bulkhead"), tenants: [tenant])
    }

    /// 64 bytes: Ethernet (14) + IPv4 (20) + UDP (8) + 22 bytes of payload, port 0 to port 1.
    static func udpUnicast() -> [UInt8] {
        var frame = macs[1].octets + macs[0].octets + [0x08, 0x00]
        frame += [0x45, 0, 0, 50, 0x12, 0x34, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]
        frame += [0x9C, 0x40, 0x13, 0x88, 0, 30, 0, 0] + Array(repeating: 0xAB, count: 22)
        return frame
    }

    /// 64 bytes: a broadcast ARP request from port 0 (42 bytes padded to 64).
    static func arpBroadcast() -> [UInt8] {
        var frame = MACAddress.broadcast.octets + macs[0].octets + [0x08, 0x06]
        frame += [0, 1, 0x08, 0x00, 6, 4, 0, 1] + macs[0].octets + [10, 0, 0, 1] + [0, 0, 0, 0, 0, 0] + [10, 0, 0, 2]
        return frame + Array(repeating: 0, count: 64 - frame.count)
    }
}

private func decisions(_ benchmark: Benchmark, frame bytes: [UInt8], expecting expected: Int) {
    let plane = ForwardingPlane(configuration: Topology.host())
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
    defer { buffer.deallocate() }
    buffer.copyBytes(from: bytes)
    let frame = UnsafeRawBufferPointer(buffer)
    let header = VirtioNetHeader()
    var now: UInt64 = 1_000_000_000
    // Warm up: first-time learning and lazy initialisation happen here, not in the measurement.
    for _ in 0..<1000 {
        now &+= 100
        _ = plane.process(frame: frame, header: header, ingress: 0, now: now)
    }
    guard case .forward(let mask) = plane.process(frame: frame, header: header, ingress: 0, now: now),
          mask.count == expected
    else { fatalError("benchmark frame was not forwarded to \(expected) port(s)") }

    benchmark.startMeasurement()
    for _ in benchmark.scaledIterations {
        now &+= 100
        blackHole(plane.process(frame: frame, header: header, ingress: 0, now: now))
    }
    benchmark.stopMeasurement()
}

let benchmarks: @Sendable () -> Void = {
    Benchmark("Forwarding decision, 64-byte IPv4/UDP unicast", configuration: configuration()) { benchmark in
        decisions(benchmark, frame: Topology.udpUnicast(), expecting: 1)
    }
    Benchmark("Forwarding decision, 64-byte broadcast ARP", configuration: configuration()) { benchmark in
        decisions(benchmark, frame: Topology.arpBroadcast(), expecting: 3)
    }
}
