import Virtio
import XCTest

final class BlockRequestTests: XCTestCase {
    typealias Buffer = TestDriver.Buffer

    /// Publishes `buffers` as a chain, takes it off the queue and parses it.
    func parse(_ d: TestDriver, _ buffers: [Buffer], indirect: Bool = false, maxRanges: Int = 256)
        throws -> BlockRequest {
        var q = try d.queue(indirect: indirect)
        let head = indirect ? d.makeIndirectChain(buffers) : d.makeChain(buffers)
        d.publish(head)
        let popped = try XCTUnwrap(try q.popAvailable())
        var chain = DescriptorChain()
        try q.walk(head: popped, into: &chain)
        var request = BlockRequest()
        try BlockRequestParser.parse(chain, memory: d.memory, into: &request, maxRanges: maxRanges)
        return request
    }

    func parseError(_ d: TestDriver, _ buffers: [Buffer], maxRanges: Int = 256) -> BlockRequestError? {
        do { _ = try parse(d, buffers, maxRanges: maxRanges); return nil } catch { return error as? BlockRequestError }
    }

    func header(_ d: TestDriver, type: UInt32, sector: UInt64 = 0) -> UInt64 {
        d.allocate(16, fill: TestDriver.blockHeader(type: type, sector: sector))
    }

    // MARK: Parsing

    func testRead() throws {
        let d = TestDriver()
        let h = header(d, type: 0, sector: 8), data = d.allocate(4096), s = d.allocate(1)
        let r = try parse(d, [Buffer(h, 16), Buffer(data, 4096, writable: true), Buffer(s, 1, writable: true)])
        XCTAssertEqual(r.type, .read)
        XCTAssertEqual(r.sector, 8)
        XCTAssertEqual(r.data, [BlockRequest.Segment(address: data, length: 4096)])
        XCTAssertEqual(r.dataLength, 4096)
        XCTAssertEqual(r.statusAddress, s)
    }

    func testReadWithStatusInsideTheLastDataBuffer() throws {
        let d = TestDriver()
        let h = header(d, type: 0), data = d.allocate(1025)
        let r = try parse(d, [Buffer(h, 16), Buffer(data, 1025, writable: true)])
        XCTAssertEqual(r.data, [BlockRequest.Segment(address: data, length: 1024)])
        XCTAssertEqual(r.statusAddress, data + 1024)
    }

    func testWriteWithHeaderAndDataInOneDescriptor() throws {
        let d = TestDriver()
        let both = d.allocate(16 + 512, fill: TestDriver.blockHeader(type: 1, sector: 3)), s = d.allocate(1)
        let r = try parse(d, [Buffer(both, 528), Buffer(s, 1, writable: true)])
        XCTAssertEqual(r.type, .write)
        XCTAssertEqual(r.sector, 3)
        XCTAssertEqual(r.data, [BlockRequest.Segment(address: both + 16, length: 512)])
        XCTAssertEqual(r.dataLength, 512)
    }

    func testHeaderSplitAcrossDescriptors() throws {
        let d = TestDriver()
        let bytes = TestDriver.blockHeader(type: 1, sector: 0x0102_0304_0506_0708)
        let a = d.allocate(5, fill: Array(bytes[0..<5]))
        let b = d.allocate(7, fill: Array(bytes[5..<12]))
        let c = d.allocate(4 + 100, fill: Array(bytes[12..<16]))
        let data = d.allocate(412), s = d.allocate(1)
        let r = try parse(d, [Buffer(a, 5), Buffer(b, 7), Buffer(c, 104), Buffer(data, 412), Buffer(s, 1, writable: true)])
        XCTAssertEqual(r.type, .write)
        XCTAssertEqual(r.sector, 0x0102_0304_0506_0708)
        XCTAssertEqual(r.data, [BlockRequest.Segment(address: c + 4, length: 100), BlockRequest.Segment(address: data, length: 412)])
        XCTAssertEqual(r.dataLength, 512)
    }

    func testIndirectReadOfEightSegments() throws {
        let d = TestDriver()
        let h = header(d, type: 0, sector: 1), data = d.allocate(8 * 512), s = d.allocate(1)
        let buffers = [Buffer(h, 16)] + (0..<8).map { Buffer(data + UInt64($0) * 512, 512, writable: true) }
            + [Buffer(s, 1, writable: true)]
        let r = try parse(d, buffers, indirect: true)
        XCTAssertEqual(r.data.count, 8)
        XCTAssertEqual(r.dataLength, 4096)
        XCTAssertEqual(r.statusAddress, s)
    }

    func testFlushGetIDAndUnsupported() throws {
        let d = TestDriver()
        let s = d.allocate(1)
        XCTAssertEqual(try parse(d, [Buffer(header(d, type: 4), 16), Buffer(s, 1, writable: true)]).type, .flush)
        let id = d.allocate(21)
        let r = try parse(d, [Buffer(header(d, type: 8), 16), Buffer(id, 21, writable: true)])
        XCTAssertEqual(r.type, .getID)
        XCTAssertEqual(r.dataLength, 20)
        XCTAssertEqual(r.statusAddress, id + 20)
        XCTAssertEqual(try parse(d, [Buffer(header(d, type: 99), 16), Buffer(s, 1, writable: true)]).type, .unsupported(99))
        // The reserved field is not part of the type.
        let odd = d.allocate(16, fill: TestDriver.blockHeader(type: 4, sector: 0, reserved: 0xFFFF_FFFF))
        XCTAssertEqual(try parse(d, [Buffer(odd, 16), Buffer(s, 1, writable: true)]).type, .flush)
    }

    func testDiscardRangesSplitAcrossDescriptors() throws {
        let d = TestDriver()
        let ranges = TestDriver.range(100, 8) + TestDriver.range(200, 16, flags: 1)
        let first = d.allocate(16 + 10, fill: TestDriver.blockHeader(type: 13, sector: 0) + Array(ranges[0..<10]))
        let rest = d.allocate(22, fill: Array(ranges[10...]))
        let s = d.allocate(1)
        let r = try parse(d, [Buffer(first, 26), Buffer(rest, 22), Buffer(s, 1, writable: true)])
        XCTAssertEqual(r.type, .writeZeroes)
        XCTAssertEqual(r.ranges, [DiscardRange(sector: 100, sectorCount: 8), DiscardRange(sector: 200, sectorCount: 16, flags: 1)])
        XCTAssertTrue(r.data.isEmpty)
    }

    func testParseErrors() throws {
        let d = TestDriver()
        let s = d.allocate(1)
        let short = d.allocate(15, fill: Array(TestDriver.blockHeader(type: 0, sector: 0)[0..<15]))
        XCTAssertEqual(parseError(d, [Buffer(short, 15), Buffer(s, 1, writable: true)]), .missingHeader)
        XCTAssertEqual(parseError(d, [Buffer(s, 1, writable: true)]), .missingHeader)
        XCTAssertEqual(parseError(d, [Buffer(header(d, type: 0), 16)]), .missingStatus)
        XCTAssertEqual(BlockRequestError.missingStatus.status, nil)
        XCTAssertEqual(BlockRequestError.missingHeader.status, .ioError)

        let bad = d.allocate(16 + 15, fill: TestDriver.blockHeader(type: 11, sector: 0))
        XCTAssertEqual(parseError(d, [Buffer(bad, 31), Buffer(s, 1, writable: true)]), .rangesMisaligned(length: 15))
        let many = d.allocate(16 + 48, fill: TestDriver.blockHeader(type: 11, sector: 0))
        XCTAssertEqual(parseError(d, [Buffer(many, 64), Buffer(s, 1, writable: true)], maxRanges: 2),
                       .tooManyRanges(count: 3, limit: 2))
        XCTAssertEqual(BlockRequestError.tooManyRanges(count: 3, limit: 2).status, .unsupported)
    }

    func testStatusAddressIsSetBeforeLaterErrors() throws {
        let d = TestDriver()
        let s = d.allocate(1)
        var q = try d.queue()
        d.add([Buffer(s, 1, writable: true)])
        var chain = DescriptorChain()
        try q.walk(head: try XCTUnwrap(try q.popAvailable()), into: &chain)
        var request = BlockRequest()
        XCTAssertThrowsError(try BlockRequestParser.parse(chain, memory: d.memory, into: &request))
        XCTAssertEqual(request.statusAddress, s)
    }

    // MARK: Validation

    let limits = BlockLimits(capacitySectors: 1000, maxDiscardSectors: 64, maxDiscardSegments: 2,
                             maxWriteZeroesSectors: 128, maxWriteZeroesSegments: 1, readOnly: false, segMax: 4)

    func request(_ type: BlockRequestType, sector: UInt64 = 0, length: UInt32 = 512, segments: Int = 1,
                 ranges: [DiscardRange] = []) -> BlockRequest {
        var r = BlockRequest()
        r.type = type
        r.sector = sector
        for i in 0..<segments { r.data.append(BlockRequest.Segment(address: 0x1000 * UInt64(i + 1), length: length)) }
        r.dataLength = UInt64(length) * UInt64(segments)
        r.ranges = ranges
        return r
    }

    func testReadWriteValidation() {
        XCTAssertEqual(validate(request(.read), limits: limits), .ok)
        XCTAssertEqual(validate(request(.write, sector: 999), limits: limits), .ok)
        XCTAssertEqual(validate(request(.write, sector: 1000), limits: limits), .ioError)
        XCTAssertEqual(validate(request(.read, sector: 999, length: 1024), limits: limits), .ioError)
        XCTAssertEqual(validate(request(.read, sector: 998, length: 1024), limits: limits), .ok)
        XCTAssertEqual(validate(request(.read, length: 511), limits: limits), .ioError)
        XCTAssertEqual(validate(request(.read, sector: UInt64.max), limits: limits), .ioError)
        XCTAssertEqual(validate(request(.read, sector: UInt64.max - 0), limits: BlockLimits(capacitySectors: .max)), .ioError)
        XCTAssertEqual(validate(request(.read, sector: UInt64.max - 1), limits: BlockLimits(capacitySectors: .max)), .ok)
        XCTAssertEqual(validate(request(.read, segments: 5), limits: limits), .ioError)
        XCTAssertEqual(validate(request(.read, segments: 4), limits: limits), .ok)
        XCTAssertEqual(validate(request(.read, length: 0, segments: 0), limits: limits), .ok)
    }

    /// size_max bounds each data segment, our own limit the total, whatever the segment count.
    func testSegmentSizeAndTotalLimits() {
        let bounded = BlockLimits(capacitySectors: 1 << 40, segMax: 0, sizeMax: 256 << 10, maxTransferBytes: 32 << 20)
        XCTAssertEqual(validate(request(.read, length: 256 << 10), limits: bounded), .ok)
        XCTAssertEqual(validate(request(.read, length: (256 << 10) + 512), limits: bounded), .ioError, "a segment over size_max")
        XCTAssertEqual(validate(request(.write, length: 256 << 10, segments: 128), limits: bounded), .ok, "exactly 32 MiB")
        XCTAssertEqual(validate(request(.write, length: 256 << 10, segments: 129), limits: bounded), .ioError, "over 32 MiB")
        // 126 aliased segments of 48 MiB: 6 GiB, more than a 32-bit length holds.
        var huge = request(.read, length: 48 << 20, segments: 126)
        huge.dataLength = 126 * (48 << 20)
        XCTAssertEqual(validate(huge, limits: BlockLimits(capacitySectors: 1 << 40, maxTransferBytes: 32 << 20)), .ioError)
    }

    func testReadOnlyVolume() {
        var ro = limits
        ro.readOnly = true
        XCTAssertEqual(validate(request(.read), limits: ro), .ok)
        XCTAssertEqual(validate(request(.write), limits: ro), .ioError)
        XCTAssertEqual(validate(request(.flush), limits: ro), .ok)
        XCTAssertEqual(validate(request(.discard, ranges: [DiscardRange(sector: 0, sectorCount: 1)]), limits: ro), .ioError)
        XCTAssertEqual(validate(request(.writeZeroes, ranges: [DiscardRange(sector: 0, sectorCount: 1)]), limits: ro), .ioError)
    }

    func testDiscardAndWriteZeroesValidation() {
        func check(_ type: BlockRequestType, _ ranges: [DiscardRange], _ limits: BlockLimits? = nil) -> BlockStatus {
            validate(request(type, length: 0, segments: 0, ranges: ranges), limits: limits ?? self.limits)
        }
        XCTAssertEqual(check(.discard, [DiscardRange(sector: 0, sectorCount: 64), DiscardRange(sector: 936, sectorCount: 64)]), .ok)
        XCTAssertEqual(check(.discard, [DiscardRange(sector: 0, sectorCount: 65)]), .ioError)       // over max sectors
        XCTAssertEqual(check(.discard, [DiscardRange(sector: 937, sectorCount: 64)]), .ioError)     // past the end
        XCTAssertEqual(check(.discard, [DiscardRange(sector: .max, sectorCount: 1)]), .ioError)     // overflow
        XCTAssertEqual(check(.discard, Array(repeating: DiscardRange(sector: 0, sectorCount: 1), count: 3)), .unsupported)
        XCTAssertEqual(check(.discard, []), .unsupported)
        XCTAssertEqual(check(.discard, [DiscardRange(sector: 0, sectorCount: 1, flags: 1)]), .unsupported) // unmap on discard
        XCTAssertEqual(check(.writeZeroes, [DiscardRange(sector: 0, sectorCount: 128, flags: 1)]), .ok)
        XCTAssertEqual(check(.writeZeroes, [DiscardRange(sector: 0, sectorCount: 1, flags: 2)]), .unsupported)
        XCTAssertEqual(check(.writeZeroes, [DiscardRange(sector: 0, sectorCount: 129)]), .ioError)
        XCTAssertEqual(check(.writeZeroes, Array(repeating: DiscardRange(sector: 0, sectorCount: 1), count: 2)), .unsupported)
        XCTAssertEqual(check(.discard, [DiscardRange(sector: 0, sectorCount: 1)], BlockLimits(capacitySectors: 10)), .unsupported)
        XCTAssertEqual(check(.writeZeroes, [DiscardRange(sector: 0, sectorCount: 1)], BlockLimits(capacitySectors: 10)), .unsupported)
    }

    func testOtherTypes() {
        XCTAssertEqual(validate(request(.flush, sector: .max, length: 3), limits: limits), .ok)
        XCTAssertEqual(validate(request(.getID, length: 20), limits: limits), .ok)
        XCTAssertEqual(validate(request(.getID, length: 0, segments: 0), limits: limits), .ioError)
        XCTAssertEqual(validate(request(.unsupported(7)), limits: limits), .unsupported)
    }

    func testRequestTypeRawValues() {
        for raw: UInt32 in [0, 1, 4, 8, 11, 13, 2, 10, 14, .max] {
            XCTAssertEqual(BlockRequestType(rawValue: raw).rawValue, raw)
        }
        XCTAssertEqual(BlockRequestType(rawValue: 13), .writeZeroes)
    }

    // MARK: Configuration space and features

    func testConfigSpaceBytes() {
        var c = BlockConfig(capacity: 0x0102_0304_0506_0708)
        c.sizeMax = 0x1111_1111; c.segMax = 126; c.cylinders = 0x2233; c.heads = 4; c.sectors = 5
        c.blockSize = 4096; c.physicalBlockExponent = 3; c.alignmentOffset = 1; c.minIOSize = 8; c.optimalIOSize = 256
        c.writeback = 1; c.numQueues = 4; c.maxDiscardSectors = 0xAABB_CCDD; c.maxDiscardSegments = 2
        c.discardSectorAlignment = 8; c.maxWriteZeroesSectors = 0x100; c.maxWriteZeroesSegments = 1; c.writeZeroesMayUnmap = 1
        let b = c.bytes
        XCTAssertEqual(b.count, 96)
        func le(_ offset: Int, _ count: Int) -> UInt64 {
            (0..<count).reduce(0) { $0 | UInt64(b[offset + $1]) << (8 * $1) }
        }
        XCTAssertEqual(le(0, 8), 0x0102_0304_0506_0708)
        XCTAssertEqual(le(8, 4), 0x1111_1111)
        XCTAssertEqual(le(12, 4), 126)
        XCTAssertEqual(le(16, 2), 0x2233)
        XCTAssertEqual(b[18], 4)
        XCTAssertEqual(b[19], 5)
        XCTAssertEqual(le(20, 4), 4096)
        XCTAssertEqual(b[24], 3)
        XCTAssertEqual(b[25], 1)
        XCTAssertEqual(le(26, 2), 8)
        XCTAssertEqual(le(28, 4), 256)
        XCTAssertEqual(b[32], 1)
        XCTAssertEqual(b[33], 0)
        XCTAssertEqual(le(34, 2), 4)
        XCTAssertEqual(le(36, 4), 0xAABB_CCDD)
        XCTAssertEqual(le(40, 4), 2)
        XCTAssertEqual(le(44, 4), 8)
        XCTAssertEqual(le(48, 4), 0x100)
        XCTAssertEqual(le(52, 4), 1)
        XCTAssertEqual(b[56], 1)
        XCTAssertEqual(Array(b[57...]), Array(repeating: 0, count: 39))
        XCTAssertEqual(c.bytes(offset: 20, length: 4), [0, 0x10, 0, 0])
        XCTAssertEqual(c.bytes(offset: 94, length: 4), [0, 0, 0, 0])
        XCTAssertNil(c.bytes(offset: 97, length: 1))
        XCTAssertNil(c.bytes(offset: -1, length: 1))
    }

    func testFeatureBits() {
        XCTAssertEqual(BlockFeatures.sizeMax, 1 << 1)
        XCTAssertEqual(BlockFeatures.segMax, 1 << 2)
        XCTAssertEqual(BlockFeatures.readOnly, 1 << 5)
        XCTAssertEqual(BlockFeatures.blockSize, 1 << 6)
        XCTAssertEqual(BlockFeatures.flush, 1 << 9)
        XCTAssertEqual(BlockFeatures.multiQueue, 1 << 12)
        XCTAssertEqual(BlockFeatures.discard, 1 << 13)
        XCTAssertEqual(BlockFeatures.writeZeroes, 1 << 14)
        XCTAssertEqual(VirtioFeatures.indirectDescriptors, 1 << 28)
        XCTAssertEqual(VirtioFeatures.eventIndex, 1 << 29)
        XCTAssertEqual(VirtioFeatures.version1, 1 << 32)
    }
}
