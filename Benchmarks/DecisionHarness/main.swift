// Standalone forwarding-decision harness: CPU time of this thread (CLOCK_THREAD_CPUTIME_ID) per
// decision, so a loaded machine does not distort the figure the way wall-clock time would.
// Built by run.sh with `swiftc -O -wmo` against the Switch sources, same topology and frames as
// Benchmarks/SwitchBenchmarks.
import Config
import Glibc
import Switch
import Virtio

let macs = (1...4).map { MACAddress(0x02, 0, 0, 0, 0, UInt8($0)) }

func host() -> HostConfiguration {
    let ports = (0..<4).map { index in
        Port(id: "p\(index)", segment: "lan", mac: macs[index],
             ips: [IPPrefix("10.0.0.\(index + 1)/24")!, IPPrefix("fd00::\(index + 1)/64")!],
             allowedMACs: [MACAddress(0x02, 0, 0, 0, 0xEE, UInt8(index))],
             rateLimit: RateLimit(bitsPerSecond: 1_000_000_000_000, packetsPerSecond: 1_000_000_000_000),
             stormControl: StormControl(broadcastPacketsPerSecond: 1_000_000_000_000,
                                        multicastPacketsPerSecond: 1_000_000_000_000))
    }
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

func udpUnicast() -> [UInt8] {
    var frame = macs[1].octets + macs[0].octets + [0x08, 0x00]
    frame += [0x45, 0, 0, 50, 0x12, 0x34, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]
    frame += [0x9C, 0x40, 0x13, 0x88, 0, 30, 0, 0] + Array(repeating: 0xAB, count: 22)
    return frame
}

func arpBroadcast() -> [UInt8] {
    var frame = MACAddress.broadcast.octets + macs[0].octets + [0x08, 0x06]
    frame += [0, 1, 0x08, 0x00, 6, 4, 0, 1] + macs[0].octets + [10, 0, 0, 1] + [0, 0, 0, 0, 0, 0] + [10, 0, 0, 2]
    return frame + Array(repeating: 0, count: 64 - frame.count)
}

func threadCPU() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

@inline(never) func sink(_ verdict: Verdict) -> Int {
    if case .forward(let mask) = verdict { return mask.count }
    return -1
}

/// Best ns/decision over `rounds` rounds of `count` decisions.
func measure(_ bytes: [UInt8], expecting expected: Int, count: Int, rounds: Int) -> Double {
    let plane = ForwardingPlane(configuration: host())
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
    defer { buffer.deallocate() }
    buffer.copyBytes(from: bytes)
    let frame = UnsafeRawBufferPointer(buffer)
    let header = VirtioNetHeader()
    var now: UInt64 = 1_000_000_000
    for _ in 0..<1000 {
        now &+= 100
        _ = plane.process(frame: frame, header: header, ingress: 0, now: now)
    }
    guard sink(plane.process(frame: frame, header: header, ingress: 0, now: now)) == expected else {
        fatalError("frame not forwarded to \(expected) port(s)")
    }
    var best = Double.infinity
    var check = 0
    for _ in 0..<rounds {
        let start = threadCPU()
        for _ in 0..<count {
            now &+= 100
            check &+= sink(plane.process(frame: frame, header: header, ingress: 0, now: now))
        }
        let elapsed = threadCPU() - start
        best = min(best, Double(elapsed) / Double(count))
    }
    precondition(check == expected * count * rounds)
    return best
}

let args = CommandLine.arguments
let millions = args.count > 1 ? Int(args[1]) ?? 10 : 10
let rounds = args.count > 2 ? Int(args[2]) ?? 5 : 5
let label = args.count > 3 ? args[3] : "build"
let only = args.count > 4 ? args[4] : "both"
let unicast = only == "arp" ? .nan : measure(udpUnicast(), expecting: 1, count: millions * 1_000_000, rounds: rounds)
let arp = only == "unicast" ? .nan : measure(arpBroadcast(), expecting: 3, count: millions * 1_000_000, rounds: rounds)
func fmt(_ x: Double) -> String { x.isNaN ? "-" : String(Int((x * 100).rounded())) .withDecimal }
extension String {
    var withDecimal: String { count > 2 ? String(dropLast(2)) + "." + suffix(2) : "0." + self }
}
print("\(label) unicast: \(fmt(unicast)) ns/decision \(fmt(1000 / unicast)) M/s; broadcast ARP: \(fmt(arp)) ns/decision \(fmt(1000 / arp)) M/s")
