import Virtio
import XCTest

final class SplitQueueTests: XCTestCase {
    typealias Buffer = TestDriver.Buffer

    func walk(_ queue: SplitQueue, _ head: UInt16) throws(ChainError) -> DescriptorChain {
        var chain = DescriptorChain()
        try queue.walk(head: head, into: &chain)
        return chain
    }

    func chainError(_ queue: SplitQueue, _ head: UInt16) -> ChainError? {
        do { _ = try walk(queue, head); return nil } catch { return error }
    }

    // MARK: Setup

    func testSetupRejectsBadSizesAndLayouts() {
        let d = TestDriver()
        func make(size: UInt16 = 16, desc: UInt64? = nil, avail: UInt64? = nil, used: UInt64? = nil) -> SplitQueue.SetupError? {
            do {
                _ = try SplitQueue(size: size, descriptorTable: desc ?? d.descriptorTable, availableRing: avail ?? d.availableRing,
                                   usedRing: used ?? d.usedRing, memory: d.memory, eventIndex: false)
                return nil
            } catch { return error }
        }
        XCTAssertNil(make())
        XCTAssertEqual(make(size: 0), .invalidSize(0))
        XCTAssertEqual(make(size: 12), .invalidSize(12))
        XCTAssertEqual(make(size: 65535), .invalidSize(65535))
        XCTAssertEqual(make(size: 32768, desc: TestDriver.base + 0x80010),
                       .outsideMemory(.descriptorTable, address: TestDriver.base + 0x80010, length: 16 * 32768))
        XCTAssertEqual(make(desc: d.descriptorTable + 8), .misaligned(.descriptorTable, address: d.descriptorTable + 8))
        XCTAssertEqual(make(avail: d.availableRing + 1), .misaligned(.availableRing, address: d.availableRing + 1))
        XCTAssertEqual(make(used: d.usedRing + 2), .misaligned(.usedRing, address: d.usedRing + 2))
        XCTAssertEqual(make(desc: 0), .outsideMemory(.descriptorTable, address: 0, length: 256))
        let end = TestDriver.base + UInt64(TestDriver.memorySize)
        XCTAssertEqual(make(avail: end - 36), .outsideMemory(.availableRing, address: end - 36, length: 38))
        XCTAssertEqual(make(used: end - 132), .outsideMemory(.usedRing, address: end - 132, length: 134))
        XCTAssertEqual(make(used: UInt64.max - 3), .outsideMemory(.usedRing, address: UInt64.max - 3, length: 134))
        XCTAssertNil(make(avail: end - 38))
    }

    /// A used ring over the available ring (its flags over avail.idx: the device's own
    /// notification writes then move the index it polls, forever) or over the descriptor table.
    func testSetupRejectsAUsedRingThatOverlapsWhatTheDriverWrites() {
        let d = TestDriver()
        func make(used: UInt64) -> SplitQueue.SetupError? {
            do {
                _ = try SplitQueue(size: 16, descriptorTable: d.descriptorTable, availableRing: d.availableRing,
                                   usedRing: used, memory: d.memory, eventIndex: false)
                return nil
            } catch { return error }
        }
        let overAvailableIndex = (d.availableRing + 2 + 3) & ~3  // 4-aligned, inside avail's 38 bytes
        XCTAssertEqual(make(used: overAvailableIndex), .overlapping(.availableRing))
        XCTAssertEqual(make(used: d.descriptorTable), .overlapping(.descriptorTable))
        XCTAssertEqual(make(used: d.descriptorTable + 16 * 16 - 4), .overlapping(.descriptorTable), "its last bytes")
        XCTAssertNil(make(used: d.usedRing))
    }

    // MARK: Available ring

    func testNormalChainIsWalkedInOrder() throws {
        let d = TestDriver()
        var q = try d.queue()
        XCTAssertNil(try q.popAvailable())
        let header = d.allocate(16), data = d.allocate(4096), status = d.allocate(1)
        let head = d.add([Buffer(header, 16), Buffer(data, 4096, writable: true), Buffer(status, 1, writable: true)])
        XCTAssertEqual(try q.popAvailable(), head)
        XCTAssertNil(try q.popAvailable())
        XCTAssertEqual(q.nextAvailable, 1)
        let chain = try walk(q, head)
        XCTAssertEqual(chain.head, head)
        XCTAssertEqual(Array(chain.readable), [ChainSegment(address: header, length: 16, writable: false)])
        XCTAssertEqual(Array(chain.writable), [ChainSegment(address: data, length: 4096, writable: true),
                                               ChainSegment(address: status, length: 1, writable: true)])
        XCTAssertEqual(chain.readableLength, 16)
        XCTAssertEqual(chain.writableLength, 4097)
    }

    func testZeroLengthDescriptorsAreSkipped() throws {
        let d = TestDriver()
        let q = try d.queue()
        let a = d.allocate(8)
        // A zero-length descriptor at an address outside memory is not a buffer at all.
        let head = d.add([Buffer(a, 8), Buffer(0, 0), Buffer(a, 0, writable: true), Buffer(a, 8, writable: true)])
        let chain = try walk(q, head)
        XCTAssertEqual(chain.segments.count, 2)
        XCTAssertEqual(chain.readableLength, 8)
        XCTAssertEqual(chain.writableLength, 8)
    }

    func testChainStorageIsReused() throws {
        let d = TestDriver()
        let q = try d.queue()
        let a = d.allocate(64)
        let h1 = d.add((0..<8).map { _ in Buffer(a, 8) })
        let h2 = d.add([Buffer(a, 4, writable: true)])
        var chain = DescriptorChain(capacity: 8)
        try q.walk(head: h1, into: &chain)
        XCTAssertEqual(chain.segments.count, 8)
        try q.walk(head: h2, into: &chain)
        XCTAssertEqual(chain.segments.count, 1)
        XCTAssertEqual(chain.readable.count, 0)
        XCTAssertEqual(chain.writableLength, 4)
        XCTAssertGreaterThanOrEqual(chain.segments.capacity, 8)
    }

    func testAvailableIndexJumpIsAQueueError() throws {
        let d = TestDriver()
        var q = try d.queue()
        d.store(UInt16(17), at: d.availableRing + 2)
        XCTAssertThrowsError(try q.popAvailable()) {
            XCTAssertEqual($0 as? QueueError, .availableIndexJumped(from: 0, to: 17, size: 16))
        }
        XCTAssertEqual(q.nextAvailable, 0)
        // Exactly `size` ahead is a full ring, not an error.
        d.store(UInt16(16), at: d.availableRing + 2)
        XCTAssertEqual(try q.popAvailable(), 0)
    }

    func testHeadOutOfRangeIsAQueueError() throws {
        let d = TestDriver()
        var q = try d.queue()
        d.publish(16)
        d.publish(3)
        XCTAssertThrowsError(try q.popAvailable()) {
            XCTAssertEqual($0 as? QueueError, .headOutOfRange(16, size: 16))
        }
        // The broken entry is consumed; the next one is served.
        XCTAssertEqual(try q.popAvailable(), 3)
    }

    func testAvailableIndexWrapsAround() throws {
        let d = TestDriver(size: 4, startIndex: 65534)
        var q = try d.queue()
        let a = d.allocate(8)
        var heads: [UInt16] = []
        for _ in 0..<4 { heads.append(d.add([Buffer(a, 8, writable: true)])) }
        XCTAssertEqual(d.availableIndex, 2)
        var popped: [UInt16] = []
        while let head = try q.popAvailable() { popped.append(head) }
        XCTAssertEqual(popped, heads)
        XCTAssertEqual(q.nextAvailable, 2)
    }

    // MARK: Chain errors

    func testIndexOutOfRange() throws {
        let d = TestDriver()
        let q = try d.queue()
        XCTAssertEqual(chainError(q, 16), .indexOutOfRange(16))
        d.setDescriptor(0, address: d.allocate(8), length: 8, flags: DescriptorFlags.next, next: 40)
        XCTAssertEqual(chainError(q, 0), .indexOutOfRange(40))
    }

    func testLoopsEndAsTooLong() throws {
        let d = TestDriver()
        let q = try d.queue()
        let a = d.allocate(8)
        d.setDescriptor(0, address: a, length: 8, flags: DescriptorFlags.next, next: 1)
        d.setDescriptor(1, address: a, length: 8, flags: DescriptorFlags.next, next: 0)
        XCTAssertEqual(chainError(q, 0), .tooLong(limit: 16))
        // A self-loop of zero-length descriptors too.
        d.setDescriptor(2, address: 0, length: 0, flags: DescriptorFlags.next, next: 2)
        XCTAssertEqual(chainError(q, 2), .tooLong(limit: 16))
        // Exactly `size` descriptors is fine.
        for i in 0..<16 { d.setDescriptor(UInt16(i), address: a, length: 1, flags: i == 15 ? 0 : DescriptorFlags.next, next: UInt16(i + 1)) }
        XCTAssertEqual(try walk(q, 0).segments.count, 16)
        // A device's own cap counts every descriptor walked.
        var chain = DescriptorChain()
        XCTAssertNoThrow(try q.walk(head: 0, into: &chain, maxDescriptors: 16))
        XCTAssertThrowsError(try q.walk(head: 0, into: &chain, maxDescriptors: 15)) { error in
            XCTAssertEqual(error as? ChainError, .tooLong(limit: 15))
        }
    }

    func testBufferOutsideMemory() throws {
        let d = TestDriver()
        let q = try d.queue()
        let end = TestDriver.base + UInt64(TestDriver.memorySize)
        let cases: [(UInt64, UInt32)] = [(0, 1), (end, 1), (end - 4, 5), (UInt64.max, 1), (UInt64.max - 2, 0xFFFF_FFFF),
                                          (TestDriver.base - 1, 2)]
        for (address, length) in cases {
            d.setDescriptor(0, address: address, length: length, flags: 0)
            XCTAssertEqual(chainError(q, 0), .bufferOutsideMemory(address: address, length: length))
        }
        d.setDescriptor(0, address: end - 4, length: 4, flags: 0)
        XCTAssertNil(chainError(q, 0))
    }

    func testReadableAfterWritable() throws {
        let d = TestDriver()
        let q = try d.queue()
        let a = d.allocate(8)
        let head = d.makeChain([Buffer(a, 8), Buffer(a, 8, writable: true), Buffer(a, 8)])
        XCTAssertEqual(chainError(q, head), .readableAfterWritable)
    }

    // MARK: Indirect

    func testIndirectChain() throws {
        let d = TestDriver()
        let q = try d.queue(indirect: true)
        let h = d.allocate(16), data = d.allocate(8 * 512), s = d.allocate(1)
        let buffers = [Buffer(h, 16)] + (0..<8).map { Buffer(data + UInt64($0) * 512, 512) } + [Buffer(s, 1, writable: true)]
        let head = d.makeIndirectChain(buffers)
        let chain = try walk(q, head)
        XCTAssertEqual(chain.segments.count, 10)
        XCTAssertEqual(chain.readableLength, 16 + 4096)
        XCTAssertEqual(chain.writable.first, ChainSegment(address: s, length: 1, writable: true))
    }

    func testDirectDescriptorsBeforeAnIndirectOne() throws {
        let d = TestDriver()
        let q = try d.queue(indirect: true)
        let a = d.allocate(16)
        let inner = d.makeIndirectChain([Buffer(a, 4), Buffer(a, 1, writable: true)])
        d.setDescriptor(5, address: a, length: 16, flags: DescriptorFlags.next, next: inner)
        let chain = try walk(q, 5)
        XCTAssertEqual(chain.segments.map(\.length), [16, 4, 1])
    }

    func testIndirectErrors() throws {
        let d = TestDriver()
        let plain = try d.queue()
        let q = try d.queue(indirect: true)
        let a = d.allocate(8)
        let head = d.makeIndirectChain([Buffer(a, 8)])
        XCTAssertEqual(chainError(plain, head), .indirectNotNegotiated)
        XCTAssertNil(chainError(q, head))

        let table = d.allocate(64)
        for length: UInt32 in [0, 15, 17, 32768 * 16 + 16] {
            d.setDescriptor(0, address: table, length: length, flags: DescriptorFlags.indirect)
            XCTAssertEqual(chainError(q, 0), .indirectTableInvalid(address: table, length: length))
        }
        d.setDescriptor(0, address: 0x10, length: 32, flags: DescriptorFlags.indirect)
        XCTAssertEqual(chainError(q, 0), .indirectTableInvalid(address: 0x10, length: 32))

        // Nested indirect.
        d.setDescriptor(0, address: table, length: 32, flags: DescriptorFlags.indirect)
        d.setDescriptor(0, address: a, length: 8, flags: DescriptorFlags.next, next: 1, table: table)
        d.setDescriptor(1, address: table, length: 16, flags: DescriptorFlags.indirect, table: table)
        XCTAssertEqual(chainError(q, 0), .indirectNested)
        // Index beyond the table's length.
        d.setDescriptor(1, address: a, length: 8, flags: DescriptorFlags.next, next: 2, table: table)
        XCTAssertEqual(chainError(q, 0), .indexOutOfRange(2))
        // A loop inside the table.
        d.setDescriptor(1, address: a, length: 8, flags: DescriptorFlags.next, next: 0, table: table)
        XCTAssertEqual(chainError(q, 0), .tooLong(limit: 2))
        // Buffer outside memory inside the table.
        d.setDescriptor(1, address: 4, length: 8, flags: 0, table: table)
        XCTAssertEqual(chainError(q, 0), .bufferOutsideMemory(address: 4, length: 8))
        // Readable after writable inside the table.
        d.setDescriptor(0, address: a, length: 8, flags: DescriptorFlags.next | DescriptorFlags.write, next: 1, table: table)
        d.setDescriptor(1, address: a, length: 8, flags: 0, table: table)
        XCTAssertEqual(chainError(q, 0), .readableAfterWritable)
    }

    // MARK: Used ring and notifications

    func testUsedRingPublication() throws {
        let d = TestDriver()
        var q = try d.queue()
        XCTAssertFalse(q.publishUsed(), "nothing pushed, nothing to notify")
        q.pushUsed(head: 3, length: 513)
        q.pushUsed(head: 7, length: 1)
        XCTAssertEqual(d.usedIndex, 0, "not visible before publishUsed")
        XCTAssertTrue(q.publishUsed())
        XCTAssertEqual(d.usedIndex, 2)
        XCTAssertEqual(d.usedEntry(0).id, 3)
        XCTAssertEqual(d.usedEntry(0).length, 513)
        XCTAssertEqual(d.usedEntry(1).id, 7)
        d.availableFlags = SplitQueue.availableNoInterrupt
        q.pushUsed(head: 1, length: 0)
        XCTAssertFalse(q.publishUsed())
        XCTAssertEqual(d.usedIndex, 3)
    }

    func testUsedRingWrapsAround() throws {
        let d = TestDriver(size: 4, startIndex: 65533)
        var q = try d.queue()
        for i in 0..<4 { q.pushUsed(head: UInt16(i), length: UInt32(i)) }
        XCTAssertTrue(q.publishUsed())
        XCTAssertEqual(d.usedIndex, 1)
        XCTAssertEqual(q.nextUsed, 1)
        XCTAssertEqual(d.usedEntry(0).id, 3) // position 65533 + 3 = 0 (mod 2^16)
        XCTAssertEqual(d.usedEntry(65535).length, 2)
    }

    func testNotificationSuppressionWithoutEventIndex() throws {
        let d = TestDriver()
        var q = try d.queue()
        q.disableNotifications()
        XCTAssertEqual(d.usedFlags, SplitQueue.usedNoNotify)
        q.enableNotifications()
        XCTAssertEqual(d.usedFlags, 0)
    }

    func testEventIndexNotifications() throws {
        let d = TestDriver()
        var q = try d.queue(eventIndex: true)
        // used_event = 0: the driver wants an interrupt once entry 0 is used.
        d.usedEvent = 0
        q.pushUsed(head: 0, length: 0)
        XCTAssertTrue(q.publishUsed())
        // used_event still 0: crossing from 1 to 2 does not pass it.
        q.pushUsed(head: 1, length: 0)
        XCTAssertFalse(q.publishUsed())
        // Driver asks for an interrupt after entry 4; a batch 2..<5 crosses it.
        d.usedEvent = 4
        for h in 2..<4 { q.pushUsed(head: UInt16(h), length: 0) }
        XCTAssertFalse(q.publishUsed())
        q.pushUsed(head: 4, length: 0)
        XCTAssertTrue(q.publishUsed())
        // The flag is ignored with EVENT_IDX.
        d.availableFlags = SplitQueue.availableNoInterrupt
        d.usedEvent = 5
        q.pushUsed(head: 5, length: 0)
        XCTAssertTrue(q.publishUsed())
    }

    func testEventIndexWrapAround() throws {
        XCTAssertTrue(SplitQueue.needsEvent(event: 65535, new: 1, old: 65534))
        XCTAssertTrue(SplitQueue.needsEvent(event: 0, new: 1, old: 65535))
        XCTAssertFalse(SplitQueue.needsEvent(event: 1, new: 1, old: 65535))
        XCTAssertFalse(SplitQueue.needsEvent(event: 65533, new: 1, old: 65534))
        let d = TestDriver(size: 4, startIndex: 65535)
        var q = try d.queue(eventIndex: true)
        d.usedEvent = 0
        q.pushUsed(head: 0, length: 0)
        XCTAssertFalse(q.publishUsed()) // 65535 -> 0 does not use entry 0
        q.pushUsed(head: 1, length: 0)
        XCTAssertTrue(q.publishUsed()) // 0 -> 1 uses entry 0
    }

    func testEnableNotificationsWritesAvailableEventAndCatchesTheRace() throws {
        let d = TestDriver()
        var q = try d.queue(eventIndex: true)
        let a = d.allocate(8)
        d.add([Buffer(a, 8, writable: true)])
        XCTAssertNotNil(try q.popAvailable())
        XCTAssertNil(try q.popAvailable())
        // The driver publishes just before the device re-enables notifications.
        d.add([Buffer(a, 8, writable: true)])
        q.enableNotifications()
        XCTAssertEqual(d.availableEvent, 1)
        XCTAssertEqual(d.usedFlags, 0)
        XCTAssertNotNil(try q.popAvailable(), "the re-check after enabling sees the chain")
        q.disableNotifications()
        XCTAssertEqual(d.usedFlags, 0, "with EVENT_IDX the flag stays 0")
    }

    func testGuestChangingTheRingAfterValidationCannotTrap() throws {
        let d = TestDriver(size: 2)
        var q = try d.queue()
        let a = d.allocate(8)
        let head = d.add([Buffer(a, 8)])
        XCTAssertEqual(try q.popAvailable(), head)
        var chain = DescriptorChain()
        try q.walk(head: head, into: &chain)
        // The guest rewrites the descriptor after the walk: the chain keeps the validated copy.
        d.setDescriptor(head, address: 0, length: 0xFFFF_FFFF, flags: 0)
        XCTAssertEqual(chain.segments, [ChainSegment(address: a, length: 8, writable: false)])
    }

    func testErrorDescriptionsNameWhatFailed() {
        XCTAssertTrue(ChainError.bufferOutsideMemory(address: 0x1000, length: 4).description.contains("0x1000"))
        XCTAssertTrue(QueueError.headOutOfRange(9, size: 8).description.contains("9"))
        XCTAssertTrue(SplitQueue.SetupError.invalidSize(3).description.contains("3"))
    }
}
