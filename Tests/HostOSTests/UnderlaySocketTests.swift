import Glibc
import HostOS
import XCTest

/// The underlay's SO_REUSEPORT group: the steering program gives each VXLAN datagram to the
/// member of the tenant that owns its VNI, and everything else to member 0.
final class UnderlaySocketTests: XCTestCase {
    private func send(_ payload: [UInt8], to port: UInt16) throws {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let sent = payload.withUnsafeBytes { bytes in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, bytes.baseAddress, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        XCTAssertEqual(sent, payload.count)
    }

    private func vxlan(_ vni: UInt32) -> [UInt8] {
        [0x08, 0, 0, 0, UInt8(vni >> 16 & 0xFF), UInt8(vni >> 8 & 0xFF), UInt8(vni & 0xFF), 0] + Array(repeating: 0xAB, count: 60)
    }


    func testEachVNIReachesOnlyItsTenantsSocket() throws {
        // A free port: bind member 0 to an ephemeral one and reuse its number.
        var port: UInt16 = 0
        var sink: UnderlaySocket? = nil
        for candidate in UInt16(47_000)...UInt16(47_100) {
            if let socket = try? UnderlaySocket(address: "127.0.0.1", port: candidate) { sink = socket; port = candidate; break }
        }
        let member0 = try XCTUnwrap(sink, "no free UDP port in 47000...47100")
        let blue = try UnderlaySocket(address: "127.0.0.1", port: port)
        let red = try UnderlaySocket(address: "127.0.0.1", port: port)
        try member0.steer([5001: 1, 5002: 1, 6001: 2])

        for (vni, owner) in [(5001, "blue"), (5002, "blue"), (6001, "red"), (7001, "member 0")] as [(UInt32, String)] {
            for _ in 0..<20 { try send(vxlan(vni), to: port) }
            // Loopback delivers within sendto: by now every datagram is queued where it goes.
            let counts = [("member 0", member0.drain()), ("blue", blue.drain()), ("red", red.drain())]
            for (name, count) in counts {
                XCTAssertEqual(count, name == owner ? 20 : 0, "VNI \(vni): \(name) got \(count) of 20 datagrams; only \(owner) should")
            }
        }
        // Shorter than a VXLAN header: member 0.
        for _ in 0..<5 { try send([0x08, 0, 0], to: port) }
        XCTAssertEqual(member0.drain(), 5)
        XCTAssertEqual(blue.drain() + red.drain(), 0)

        // Re-steered: red's VNI moves to member 0 at once (a removed tenant).
        try blue.steer([5001: 1, 5002: 1])
        for _ in 0..<10 { try send(vxlan(6001), to: port) }
        XCTAssertEqual(member0.drain(), 10)
        XCTAssertEqual(red.drain(), 0)
    }
}
