import Config
import Switch
import Virtio
import XCTest

/// Two tenants with the same subnet and the same MACs, to prove they never meet:
/// blue/lan: a (0), b (1), c (2); blue/dmz: d (3); red/lan: x (4), y (5).
enum Fixture {
    static let macA = MACAddress(0x02, 0, 0, 0, 0, 0x0A)
    static let macB = MACAddress(0x02, 0, 0, 0, 0, 0x0B)
    static let macC = MACAddress(0x02, 0, 0, 0, 0, 0x0C)
    static let macD = MACAddress(0x02, 0, 0, 0, 0, 0x0D)
    static let extraA = MACAddress(0x02, 0, 0, 0, 0xEE, 0x01)
    static let ipA = IPv4Address("10.0.0.1")!, ipB = IPv4Address("10.0.0.2")!, ipC = IPv4Address("10.0.0.3")!
    static let ipD = IPv4Address("10.0.1.4")!
    static let ip6A = IPv6Address("fd00::1")!, ip6B = IPv6Address("fd00::2")!
    static let allNodes = IPv6Address("ff02::1")!
    static let solicited = IPv6Address("ff02::1:ff00:1")!

    static func prefix(_ text: String) -> IPPrefix { IPPrefix(text)! }

    static func port(_ id: String, _ mac: MACAddress, _ ips: [String], segment: String = "lan",
                     configure: (inout Config.Port) -> Void = { _ in }) -> Config.Port {
        var port = Config.Port(id: id, segment: segment, mac: mac, ips: ips.map(prefix))
        configure(&port)
        return port
    }

    static func configuration(blueACL: [ACLRule] = [], macTable: MACTableSettings = .init(), mtu: Int = 1500,
                              configureA: (inout Config.Port) -> Void = { _ in },
                              configureB: (inout Config.Port) -> Void = { _ in }) -> HostConfiguration {
        let blue = Tenant(
            id: "blue",
            segments: [Segment(id: "lan", mtu: mtu, macTable: macTable), Segment(id: "dmz")],
            ports: [
                port("a", macA, ["10.0.0.1/24", "fd00::1/64"]) { $0.allowedMACs = [extraA]; configureA(&$0) },
                port("b", macB, ["10.0.0.2/24", "fd00::2/64"], configure: configureB),
                port("c", macC, ["10.0.0.3/24"]),
                port("d", macD, ["10.0.1.4/24"], segment: "dmz"),
            ],
            acl: blueACL)
        let red = Tenant(
            id: "red", segments: [Segment(id: "lan")],
            ports: [port("x", macA, ["10.0.0.1/24"]), port("y", macB, ["10.0.0.2/24"])])
        return HostConfiguration(host: HostSettings(stateDirectory: "/var/lib/bulkhead"), tenants: [blue, red])
    }

    static func plane(_ configuration: HostConfiguration = configuration()) -> ForwardingPlane {
        ForwardingPlane(configuration: configuration)
    }

    // Frame shorthands.
    static func udp4(from source: MACAddress = macA, to destination: MACAddress = macB,
                     _ sourceIP: IPv4Address = ipA, _ destinationIP: IPv4Address = ipB,
                     sourcePort: UInt16 = 40_000, destinationPort: UInt16 = 53, payload: [UInt8] = [1, 2, 3, 4]) -> [UInt8] {
        FrameBuilder.ethernet(destination: destination, source: source, type: 0x0800,
                              payload: FrameBuilder.ipv4(source: sourceIP, destination: destinationIP, protocol: 17,
                                                         payload: FrameBuilder.udp(sourcePort: sourcePort,
                                                                                   destinationPort: destinationPort,
                                                                                   payload: payload)))
    }

    static func tcp4(from source: MACAddress = macA, to destination: MACAddress = macB,
                     _ sourceIP: IPv4Address = ipA, _ destinationIP: IPv4Address = ipB,
                     sourcePort: UInt16 = 40_000, destinationPort: UInt16) -> [UInt8] {
        FrameBuilder.ethernet(destination: destination, source: source, type: 0x0800,
                              payload: FrameBuilder.ipv4(source: sourceIP, destination: destinationIP, protocol: 6,
                                                         payload: FrameBuilder.tcp(sourcePort: sourcePort,
                                                                                   destinationPort: destinationPort)))
    }

    static func ipv4Frame(from source: MACAddress = macA, to destination: MACAddress = macB, _ packet: [UInt8]) -> [UInt8] {
        FrameBuilder.ethernet(destination: destination, source: source, type: 0x0800, payload: packet)
    }

    static func ipv6Frame(from source: MACAddress = macA, to destination: MACAddress = macB,
                          _ sourceIP: IPv6Address = ip6A, _ destinationIP: IPv6Address = ip6B,
                          next: UInt8, extensions: [FrameBuilder.IPv6Extension] = [], payload: [UInt8]) -> [UInt8] {
        FrameBuilder.ethernet(destination: destination, source: source, type: 0x86DD,
                              payload: FrameBuilder.ipv6(source: sourceIP, destination: destinationIP, next: next,
                                                         extensions: extensions, payload: payload))
    }

    static func arpFrame(from source: MACAddress = macA, senderMAC: MACAddress? = nil, senderIP: IPv4Address = ipA,
                         targetIP: IPv4Address = ipB) -> [UInt8] {
        FrameBuilder.ethernet(destination: .broadcast, source: source, type: 0x0806,
                              payload: FrameBuilder.arp(senderMAC: senderMAC ?? source, senderIP: senderIP, targetIP: targetIP))
    }
}

extension ForwardingPlane {
    /// Runs `frame` through the pipeline.
    mutating func send(_ frame: [UInt8], from port: Int, header: VirtioNetHeader = VirtioNetHeader(),
                       now: UInt64 = 1_000_000_000) -> Verdict {
        frame.withUnsafeBytes { process(frame: $0, header: header, ingress: port, now: now) }
    }

    func drops(_ reason: DropReason, port: Int) -> UInt64 { statistics().ports[port].drops(reason) }
}

func mask(_ ports: Int...) -> Verdict {
    var mask = PortMask()
    for port in ports { mask.insert(port) }
    return .forward(mask)
}
