import Switch
import XCTest

final class VXLANTests: XCTestCase {
    func testHeaderBytesFollowRFC7348() {
        var bytes = [UInt8](repeating: 0xEE, count: 10)
        bytes.withUnsafeMutableBytes { VXLAN.writeHeader(vni: 0x12_3456, into: $0.baseAddress! + 1) }
        XCTAssertEqual(bytes, [0xEE, 0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0, 0xEE])
        XCTAssertEqual(VXLAN.udpPort, 4789)
        XCTAssertEqual(VXLAN.headerLength, 8)
    }

    func testHeaderKeepsOnlyTwentyFourBitsOfTheVNI() {
        var bytes = [UInt8](repeating: 0, count: 8)
        bytes.withUnsafeMutableBytes { VXLAN.writeHeader(vni: 0xAB00_0001, into: $0.baseAddress!) }
        XCTAssertEqual(bytes, [0x08, 0, 0, 0, 0, 0, 0x01, 0])
    }

    func testVNIRoundTrips() {
        for vni: UInt32 in [0, 1, 42, 0x00_FFFF, 0x10_0000, 0xFF_FFFF] {
            var bytes = [UInt8](repeating: 0, count: 8 + 14)
            bytes.withUnsafeMutableBytes { VXLAN.writeHeader(vni: vni, into: $0.baseAddress!) }
            XCTAssertEqual(bytes.withUnsafeBytes { VXLAN.vni(of: $0) }, vni)
        }
    }

    func testVNIRequiresTheIFlagAndEightBytes() {
        let clear: [UInt8] = [0x00, 0, 0, 0, 0, 0, 1, 0]
        XCTAssertNil(clear.withUnsafeBytes { VXLAN.vni(of: $0) })
        let otherFlags: [UInt8] = [0xF7, 0xFF, 0xFF, 0xFF, 0, 0, 1, 0xFF]
        XCTAssertNil(otherFlags.withUnsafeBytes { VXLAN.vni(of: $0) })
        let short: [UInt8] = [0x08, 0, 0, 0, 0, 0, 1]
        XCTAssertNil(short.withUnsafeBytes { VXLAN.vni(of: $0) })
        XCTAssertNil([UInt8]().withUnsafeBytes { VXLAN.vni(of: $0) })
    }

    func testReservedBitsAreIgnoredOnReceipt() {
        let bytes: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x01, 0x02, 0xFF]
        XCTAssertEqual(bytes.withUnsafeBytes { VXLAN.vni(of: $0) }, 0x0102)
    }
}
