import XCTest
@testable import VhostUser

final class MessageTests: XCTestCase {
    private let region = VhostMemoryRegion(guestAddress: 0x1000, size: 0x10000, userAddress: 0x7f00_0000_0000, mmapOffset: 0)

    private func roundTrip(_ message: VhostUserMessage, fds: Int = 0, direction: VhostUserMessage.Direction = .request,
                           file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(try VhostUserMessage.decode(message.encode(), descriptorCount: fds, direction: direction), message, file: file, line: line)
        // What the channel admits from the header alone covers every message that decodes.
        let bytes = message.encode()
        let limits = try? VhostUserMessage.limits(of: VhostUserHeader(decoding: bytes), direction: direction)
        XCTAssertEqual(limits?.payloadSize, bytes.count - VhostUserHeader.size, file: file, line: line)
        XCTAssertLessThanOrEqual(fds, limits?.descriptors ?? -1, file: file, line: line)
    }

    private func assertDecode(_ bytes: [UInt8], fds: Int = 0, direction: VhostUserMessage.Direction = .request, throws expected: VhostUserError,
                              file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try VhostUserMessage.decode(bytes, descriptorCount: fds, direction: direction), file: file, line: line) { error in
            XCTAssertEqual(error as? VhostUserError, expected, file: file, line: line)
            XCTAssertFalse("\(error)".isEmpty)
        }
    }

    /// A message with a raw header, for sizes the encoder would never produce.
    private func raw(_ request: UInt32, flags: UInt32 = 1, size: UInt32? = nil, payload: [UInt8] = []) -> [UInt8] {
        var bytes: [UInt8] = []
        VhostUserHeader(request: request, flags: flags, size: size ?? UInt32(payload.count)).encode(into: &bytes)
        return bytes + payload
    }

    func testRequestNumbersMatchTheSpecification() {
        XCTAssertEqual(VhostUserRequest.getFeatures.rawValue, 1)
        XCTAssertEqual(VhostUserRequest.setMemTable.rawValue, 5)
        XCTAssertEqual(VhostUserRequest.setVringErr.rawValue, 14)
        XCTAssertEqual(VhostUserRequest.setVringEnable.rawValue, 18)
        XCTAssertEqual(VhostUserRequest.getConfig.rawValue, 24)
        XCTAssertEqual(VhostUserRequest.setConfig.rawValue, 25)
        XCTAssertEqual(VhostUserRequest.getInflightFD.rawValue, 31)
        XCTAssertEqual(VhostUserRequest.setInflightFD.rawValue, 32)
        XCTAssertEqual(VhostUserRequest.getMaxMemSlots.rawValue, 36)
        XCTAssertEqual(VhostUserRequest.addMemReg.rawValue, 37)
        XCTAssertEqual(VhostUserRequest.remMemReg.rawValue, 38)
        XCTAssertEqual(VhostUserRequest.setStatus.rawValue, 39)
        XCTAssertEqual(VhostUserRequest.getStatus.rawValue, 40)
        XCTAssertEqual("\(VhostUserRequest.setMemTable)", "SET_MEM_TABLE")
    }

    func testHeaderLayoutIsLittleEndian() {
        let bytes = VhostUserMessage.request(.setFeatures, .u64(0x0102_0304_0506_0708), needReply: true).encode()
        XCTAssertEqual(bytes, [2, 0, 0, 0, 0x09, 0, 0, 0, 8, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1])
    }

    func testRoundTrips() {
        roundTrip(.request(.getFeatures))
        roundTrip(.request(.setFeatures, .u64(1 << 30 | 1 << 32)))
        roundTrip(.request(.setOwner, needReply: true))
        roundTrip(.request(.setVringNum, .vringState(VhostVringState(index: 1, num: 256))))
        roundTrip(.request(.setVringAddr, .vringAddress(VhostVringAddress(index: 0, flags: 1, descriptorTable: 1, usedRing: 2, availableRing: 3, log: 4))))
        roundTrip(.request(.setVringKick, .vringFile(VhostVringFile(index: 3))), fds: 1)
        roundTrip(.request(.setVringCall, .vringFile(VhostVringFile(index: 3, noDescriptor: true))), fds: 0)
        roundTrip(.request(.setMemTable, .memoryTable(VhostMemoryTable(regions: Array(repeating: region, count: 8)))), fds: 8)
        roundTrip(.request(.addMemReg, .memoryRegion(region)), fds: 1)
        roundTrip(.request(.remMemReg, .memoryRegion(region)), fds: 0)
        roundTrip(.request(.setLogBase, .log(VhostLogArea(mmapSize: 4096, mmapOffset: 0))), fds: 1)
        roundTrip(.request(.getConfig, .config(VhostConfigSpace(offset: 8, bytes: [0, 0, 0, 0]))))
        roundTrip(.request(.setConfig, .config(VhostConfigSpace(offset: 0, flags: 1, bytes: Array(repeating: 7, count: 256)))))
        roundTrip(.request(.setInflightFD, .inflight(VhostInflightArea(mmapSize: 4096, mmapOffset: 0, queueCount: 2, queueSize: 128))), fds: 1)
        roundTrip(.reply(to: .getFeatures, .u64(42)), direction: .reply(to: .getFeatures))
        roundTrip(.reply(to: .getVringBase, .vringState(VhostVringState(index: 0, num: 17))), direction: .reply(to: .getVringBase))
        roundTrip(.reply(to: .getConfig, .config(VhostConfigSpace(offset: 0, bytes: [1, 2, 3]))), direction: .reply(to: .getConfig))
        roundTrip(.reply(to: .setMemTable, .u64(0)), direction: .reply(to: .setMemTable))
    }

    func testMemoryTableWireSize() {
        let bytes = VhostUserMessage.request(.setMemTable, .memoryTable(VhostMemoryTable(regions: [region, region]))).encode()
        XCTAssertEqual(bytes.count, 12 + 8 + 2 * 32)
    }

    func testUserAddressTranslation() {
        let table = VhostMemoryTable(regions: [region, VhostMemoryRegion(guestAddress: 0x100000, size: 0x1000, userAddress: 0x5000, mmapOffset: 0)])
        XCTAssertEqual(table.guestAddress(ofUserAddress: 0x7f00_0000_0010), 0x1010)
        XCTAssertEqual(table.guestAddress(ofUserAddress: 0x5fff), 0x100fff)
        XCTAssertNil(table.guestAddress(ofUserAddress: 0x6000))
        XCTAssertNil(table.guestAddress(ofUserAddress: 0x7f00_0001_0000))
    }

    // MARK: - every decode error

    func testTruncatedHeader() {
        assertDecode([1, 0, 0, 0, 1], throws: .truncatedHeader(got: 5))
        assertDecode([], throws: .truncatedHeader(got: 0))
    }

    func testAbsurdSizeRejectedFromTheHeaderAlone() {
        XCTAssertThrowsError(try VhostUserHeader(decoding: raw(1, size: 1 << 20))) {
            XCTAssertEqual($0 as? VhostUserError, .payloadTooLarge(1 << 20, limit: 4096))
        }
        assertDecode(raw(5, size: 0xffff_ffff), throws: .payloadTooLarge(0xffff_ffff, limit: 4096))
    }

    func testLimitsFromTheHeaderAlone() throws {
        func limits(_ request: VhostUserRequest, size: UInt32, direction: VhostUserMessage.Direction = .request) throws -> VhostUserMessageLimits {
            try VhostUserMessage.limits(of: VhostUserHeader(request: request.rawValue, flags: 1, size: size), direction: direction)
        }
        func allowance(_ request: VhostUserRequest, size: UInt32 = 0) throws -> Int { try limits(request, size: size).descriptors }
        XCTAssertEqual(try allowance(.setMemTable, size: 264), 8)
        XCTAssertEqual(try allowance(.setVringKick, size: 8), 1)
        XCTAssertEqual(try allowance(.setVringCall, size: 8), 1)
        XCTAssertEqual(try allowance(.setVringErr, size: 8), 1)
        XCTAssertEqual(try allowance(.addMemReg, size: 40), 1)
        XCTAssertEqual(try allowance(.remMemReg, size: 40), 1)
        XCTAssertEqual(try allowance(.setLogBase, size: 16), 1)
        XCTAssertEqual(try allowance(.setInflightFD, size: 24), 1)
        XCTAssertEqual(try allowance(.getFeatures), 0)
        XCTAssertEqual(try allowance(.setConfig, size: 268), 0)
        XCTAssertEqual(try limits(.getInflightFD, size: 24, direction: .reply(to: .getInflightFD)).descriptors, 1)
        XCTAssertEqual(try limits(.setMemTable, size: 8, direction: .reply(to: .setMemTable)).descriptors, 0)
        // Every request's largest payload is what decode accepts at most.
        XCTAssertEqual(try limits(.setMemTable, size: 264).payloadSize, 264)
        for (request, largest) in [(VhostUserRequest.setMemTable, 264), (.getConfig, 268), (.setFeatures, 8), (.getFeatures, 0),
                                   (.setVringAddr, 40), (.addMemReg, 40), (.setInflightFD, 24)] {
            XCTAssertThrowsError(try limits(request, size: UInt32(largest + 1))) {
                XCTAssertEqual($0 as? VhostUserError, .payloadSize(request, expected: "at most \(largest)", got: largest + 1))
            }
        }
        XCTAssertThrowsError(try limits(.iotlbMessage, size: 8)) { XCTAssertEqual($0 as? VhostUserError, .unsupportedRequest(.iotlbMessage)) }
        XCTAssertThrowsError(try VhostUserMessage.limits(of: VhostUserHeader(request: 1000, flags: 1, size: 0))) {
            XCTAssertEqual($0 as? VhostUserError, .unknownRequest(1000))
        }
        XCTAssertThrowsError(try limits(.getQueueNum, size: 8, direction: .reply(to: .getFeatures))) {
            XCTAssertEqual($0 as? VhostUserError, .unexpectedReply(expected: .getFeatures, got: VhostUserRequest.getQueueNum.rawValue))
        }
        XCTAssertEqual(VhostUserError.excessDescriptors(.setVringKick, allowed: 1, received: 2).description,
                       "SET_VRING_KICK: at least 2 file descriptors in one message, the request carries at most 1")
    }

    func testUnknownAndUnsupportedRequests() {
        assertDecode(raw(0), throws: .unknownRequest(0))
        assertDecode(raw(1000), throws: .unknownRequest(1000))
        assertDecode(raw(VhostUserRequest.iotlbMessage.rawValue, payload: Array(repeating: 0, count: 32)), throws: .unsupportedRequest(.iotlbMessage))
    }

    func testFlags() {
        assertDecode(raw(1, flags: 2), throws: .badFlags(.getFeatures, flags: 2))
        assertDecode(raw(1, flags: 1 | 4), throws: .badFlags(.getFeatures, flags: 5))
        assertDecode(raw(1, flags: 1 | 0x100), throws: .badFlags(.getFeatures, flags: 0x101))
        // A reply must carry exactly version | REPLY.
        assertDecode(raw(1, flags: 1, payload: Array(repeating: 0, count: 8)), direction: .reply(to: .getFeatures), throws: .badFlags(.getFeatures, flags: 1))
        assertDecode(raw(2, flags: 5, payload: Array(repeating: 0, count: 8)), direction: .reply(to: .getFeatures), throws: .unexpectedReply(expected: .getFeatures, got: 2))
    }

    func testLengthMismatch() {
        assertDecode(raw(2, size: 8, payload: [1, 2, 3, 4]), throws: .lengthMismatch(.setFeatures, header: 8, got: 4))
    }

    func testPayloadSizes() {
        assertDecode(raw(1, payload: [0]), throws: .payloadSize(.getFeatures, expected: "0", got: 1))
        assertDecode(raw(2, payload: [0, 0, 0, 0]), throws: .payloadSize(.setFeatures, expected: "8", got: 4))
        assertDecode(raw(8, payload: Array(repeating: 0, count: 12)), throws: .payloadSize(.setVringNum, expected: "8", got: 12))
        assertDecode(raw(9, payload: Array(repeating: 0, count: 32)), throws: .payloadSize(.setVringAddr, expected: "40", got: 32))
        assertDecode(raw(5, payload: [1, 0, 0]), throws: .payloadSize(.setMemTable, expected: "8 + 32 * nregions", got: 3))
        assertDecode(raw(24, payload: [0, 0, 0, 0]), throws: .payloadSize(.getConfig, expected: "12 + size", got: 4))
        // A memory table claiming 2 regions but carrying 1.
        var table = VhostUserMessage.request(.setMemTable, .memoryTable(VhostMemoryTable(regions: [region]))).encode()
        table[12] = 2
        assertDecode(table, fds: 2, throws: .payloadSize(.setMemTable, expected: "72", got: 40))
        // A config window whose size field disagrees with the payload.
        var config = VhostUserMessage.request(.getConfig, .config(VhostConfigSpace(offset: 0, bytes: [0, 0]))).encode()
        config[16] = 4
        assertDecode(config, throws: .payloadSize(.getConfig, expected: "16", got: 14))
    }

    func testDescriptorCounts() {
        let kick = VhostUserMessage.request(.setVringKick, .vringFile(VhostVringFile(index: 0))).encode()
        assertDecode(kick, fds: 0, throws: .descriptorCount(.setVringKick, expected: 1, got: 0))
        assertDecode(kick, fds: 2, throws: .descriptorCount(.setVringKick, expected: 1, got: 2))
        let noFD = VhostUserMessage.request(.setVringCall, .vringFile(VhostVringFile(index: 0, noDescriptor: true))).encode()
        assertDecode(noFD, fds: 1, throws: .descriptorCount(.setVringCall, expected: 0, got: 1))
        let table = VhostUserMessage.request(.setMemTable, .memoryTable(VhostMemoryTable(regions: [region, region]))).encode()
        assertDecode(table, fds: 1, throws: .descriptorCount(.setMemTable, expected: 2, got: 1))
        assertDecode(table, fds: 3, throws: .descriptorCount(.setMemTable, expected: 2, got: 3))
        assertDecode(VhostUserMessage.request(.getFeatures).encode(), fds: 1, throws: .descriptorCount(.getFeatures, expected: 0, got: 1))
        assertDecode(VhostUserMessage.request(.remMemReg, .memoryRegion(region)).encode(), fds: 2, throws: .descriptorCount(.remMemReg, expected: 1, got: 2))
    }

    func testVringFileReservedBits() {
        assertDecode(raw(12, payload: [0, 0x02, 0, 0, 0, 0, 0, 0]), fds: 1, throws: .reservedBits(.setVringKick, value: 0x200))
    }

    func testRegionCounts() {
        var zero = raw(5, payload: [0, 0, 0, 0, 0, 0, 0, 0])
        assertDecode(zero, throws: .regionCount(.setMemTable, 0))
        zero = raw(5, payload: [9, 0, 0, 0, 0, 0, 0, 0] + Array(repeating: 1, count: 9 * 32))
        assertDecode(zero, fds: 8, throws: .regionCount(.setMemTable, 9))
        assertDecode(raw(5, payload: [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]), throws: .regionCount(.setMemTable, 0xffff_ffff))
    }

    func testRegionValidation() {
        func table(_ r: VhostMemoryRegion) -> [UInt8] {
            VhostUserMessage.request(.setMemTable, .memoryTable(VhostMemoryTable(regions: [region, r]))).encode()
        }
        assertDecode(table(VhostMemoryRegion(guestAddress: 0, size: 0, userAddress: 0, mmapOffset: 0)), fds: 2, throws: .emptyRegion(.setMemTable, index: 1))
        assertDecode(table(VhostMemoryRegion(guestAddress: .max - 10, size: 0x1000, userAddress: 0, mmapOffset: 0)), fds: 2,
                     throws: .regionOverflow(.setMemTable, index: 1, field: "guest_phys_addr"))
        assertDecode(table(VhostMemoryRegion(guestAddress: 0, size: 0x1000, userAddress: .max, mmapOffset: 0)), fds: 2,
                     throws: .regionOverflow(.setMemTable, index: 1, field: "userspace_addr"))
        assertDecode(table(VhostMemoryRegion(guestAddress: 0, size: .max, userAddress: 0, mmapOffset: 1)), fds: 2,
                     throws: .regionOverflow(.setMemTable, index: 1, field: "mmap_offset"))
        assertDecode(VhostUserMessage.request(.addMemReg, .memoryRegion(VhostMemoryRegion(guestAddress: 0, size: 0, userAddress: 0, mmapOffset: 0))).encode(),
                     fds: 1, throws: .emptyRegion(.addMemReg, index: 0))
    }

    func testConfigRange() {
        assertDecode(VhostUserMessage.request(.getConfig, .config(VhostConfigSpace(offset: 250, bytes: Array(repeating: 0, count: 8)))).encode(),
                     throws: .configRange(.getConfig, offset: 250, size: 8))
        assertDecode(raw(24, payload: [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]), throws: .configRange(.getConfig, offset: 0, size: 0xffff_ffff))
        assertDecode(raw(24, payload: [0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 0, 0, 0, 0]), throws: .configRange(.getConfig, offset: 0xffff_ffff, size: 1))
    }

    func testErrorsNameTheRequestAndTheExpectation() {
        let error = VhostUserError.descriptorCount(.setMemTable, expected: 2, got: 1)
        XCTAssertEqual(error.description, "SET_MEM_TABLE: 1 file descriptors, expected 2")
        XCTAssertTrue(VhostUserError.payloadSize(.setFeatures, expected: "8", got: 4).description.contains("SET_FEATURES"))
    }
}
