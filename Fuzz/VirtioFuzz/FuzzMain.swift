// libFuzzer target for the split virtqueue and the virtio-blk request parser.
//
// Input: bytes 0..<16 choose the queue (size exponent, ring offsets, features, start index, the
// volume limits); the rest is the guest memory image (64 KiB at guest address 0x10000, zero
// padded). Each input serves the queue like the block backend does: pop, walk, parse, validate,
// push used, publish, for a bounded number of chains. Besides "never traps, never touches memory
// outside the image" (ASan), it checks the invariants the backend relies on.
import Virtio

private let imageSize = 64 * 1024
private let guestBase: UInt64 = 0x10000
// Written only from the fuzzing thread.
nonisolated(unsafe) private let image = UnsafeMutableRawPointer.allocate(byteCount: imageSize, alignment: 4096)

// libFuzzer calls the entry point from one thread only.
nonisolated(unsafe) private var chain = DescriptorChain(capacity: 64)
nonisolated(unsafe) private var request = BlockRequest(capacity: 64)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let input = UnsafeBufferPointer(start: data, count: count)
    guard input.count >= 16 else { return 0 }
    func byte(_ i: Int) -> UInt64 { UInt64(input[i]) }
    image.initializeMemory(as: UInt8.self, repeating: 0, count: imageSize)
    if input.count > 16 { image.copyMemory(from: data + 16, byteCount: min(input.count - 16, imageSize)) }

    let memory = try! GuestMemory(regions: [GuestMemoryRegion(guestAddress: guestBase, size: UInt64(imageSize), host: image)])
    // Mostly valid layouts (so the walk is reached), sometimes broken ones (so setup is exercised).
    let size = UInt16(1) << UInt16(byte(0) % 16)
    let descriptors = guestBase + (byte(1) << 8 | byte(2)) & ~0xF
    let available = guestBase + (byte(3) << 8 | byte(4)) & ~0x1
    let used = guestBase + (byte(5) << 8 | byte(6)) & ~0x3
    let features = input[7]
    let start = UInt16(byte(8) << 8 | byte(9))
    let limits = BlockLimits(capacitySectors: byte(10) << 16 | byte(11) << 8,
                             maxDiscardSectors: UInt32(byte(12)) << 4, maxDiscardSegments: UInt32(input[13] & 7),
                             maxWriteZeroesSectors: UInt32(byte(12)) << 8, maxWriteZeroesSegments: UInt32(input[14] & 3),
                             readOnly: input[15] & 1 != 0, segMax: UInt32(input[15] >> 1))

    let setup = try? SplitQueue(size: features & 0x80 != 0 ? UInt16(byte(0)) << 8 | UInt16(byte(1)) : size,
                                descriptorTable: descriptors, availableRing: available, usedRing: used,
                                memory: memory, eventIndex: features & 1 != 0, indirectDescriptors: features & 2 != 0,
                                nextAvailable: start, nextUsed: start)
    guard var queue = setup else { return 0 }

    for _ in 0..<64 {
        let head: UInt16?
        do { head = try queue.popAvailable() } catch { break }
        guard let head else { break }
        precondition(head < queue.size)
        var written: UInt32 = 0
        do {
            try queue.walk(head: head, into: &chain)
            precondition(chain.segments.count <= 2 * Int(SplitQueue.maxSize))
            var readable: UInt64 = 0
            var sawWritable = false
            for segment in chain.segments {
                precondition(segment.length > 0)
                precondition(memory.pointer(at: segment.address, length: UInt64(segment.length)) != nil)
                if segment.writable { sawWritable = true } else { precondition(!sawWritable); readable += UInt64(segment.length) }
            }
            precondition(readable == chain.readableLength)
            do {
                try BlockRequestParser.parse(chain, memory: memory, into: &request, maxRanges: 16)
                precondition(memory.pointer(at: request.statusAddress, length: 1) != nil)
                var total: UInt64 = 0
                for segment in request.data {
                    precondition(segment.length > 0)
                    precondition(memory.pointer(at: segment.address, length: UInt64(segment.length)) != nil)
                    total += UInt64(segment.length)
                }
                precondition(total == request.dataLength)
                precondition(request.ranges.count <= 16)
                let status = validate(request, limits: limits)
                if status == .ok {
                    switch request.type {
                    case .read, .write:
                        precondition(request.dataLength % 512 == 0)
                        precondition(request.sector <= limits.capacitySectors
                            && request.dataLength / 512 <= limits.capacitySectors - request.sector)
                        precondition(!(request.type == .write && limits.readOnly))
                    case .discard, .writeZeroes:
                        precondition(!limits.readOnly && !request.ranges.isEmpty)
                        for range in request.ranges {
                            precondition(range.sector <= limits.capacitySectors
                                && UInt64(range.sectorCount) <= limits.capacitySectors - range.sector)
                        }
                    case .unsupported: preconditionFailure("unsupported type validated as OK")
                    case .flush, .getID: break
                    }
                }
                memory.store(status.rawValue, at: request.statusAddress)
                written = request.type == .read ? UInt32(truncatingIfNeeded: request.dataLength) &+ 1 : 1
            } catch {
                if let status = error.status {
                    precondition(memory.pointer(at: request.statusAddress, length: 1) != nil)
                    memory.store(status.rawValue, at: request.statusAddress)
                    written = 1
                }
            }
        } catch {
            _ = error.description
        }
        queue.pushUsed(head: head, length: written)
        if Int(queue.nextUsed &- start) % 8 == 0 { _ = queue.publishUsed() }
    }
    _ = queue.publishUsed()
    queue.enableNotifications()
    _ = try? queue.popAvailable()
    queue.disableNotifications()
    return 0
}
