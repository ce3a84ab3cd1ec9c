import HostOS
import VhostUser
import Virtio
#if canImport(Glibc)
import Glibc
#endif

/// A vhost-user-blk frontend with its own guest: memory in a memfd shared with the backend,
/// split virtqueues laid out in it, and a driver that submits virtio-blk requests the way a
/// guest's driver does. The block tests and the block benchmark drive the backend with it.
public final class BlockClient {
    public enum Failure: Error, CustomStringConvertible {
        case connection(VhostUserConnectionError)
        case system(SystemError)
        case timeout(queue: Int)
        case noDescriptors
        case tooLarge(Int)

        public var description: String {
            switch self {
            case .connection(let e): "vhost-user: \(e)"
            case .system(let e): "\(e)"
            case .timeout(let q): "no completion on queue \(q) within the time limit"
            case .noDescriptors: "the queue has no free descriptors"
            case .tooLarge(let n): "a \(n)-byte buffer does not fit the client's data area"
            }
        }
    }

    /// Guest-physical address of the first byte of guest memory (deliberately not zero).
    public static let guestBase: UInt64 = 0x4000_0000

    public let frontend: VhostUserFrontend
    public let memory: GuestMemory
    public let queueSize: UInt16
    public let features: UInt64
    public let config: [UInt8]
    private let memfd: FileDescriptor
    private let mapping: MemoryMapping
    private var queues: [VirtqueueDriver] = []
    /// Kick and call eventfds per queue, owned (closed in deinit).
    private let kicks: [Int32]
    private let calls: [Int32]
    /// Per queue: a request area (16-byte header + status byte per slot) and a data area.
    private let slotBase: [UInt64]
    private let dataBase: [UInt64]
    public let dataBytesPerQueue: Int

    /// Connects to `socket`, negotiates, maps `memoryBytes` of guest memory and starts `queueCount`
    /// queues of `queueSize`. `features` defaults to everything the backend offers that this
    /// driver implements.
    /// `sealMemory: false` hands the backend a guest-memory memfd that could still shrink, which
    /// a backend must refuse (tests only).
    public init(socket: String, queueCount: Int = 1, queueSize: UInt16 = 128, memoryBytes: Int = 64 << 20,
                eventIndex: Bool = true, sealMemory: Bool = true) throws(Failure) {
        do throws(VhostUserConnectionError) {
            frontend = try VhostUserFrontend(connectingTo: socket)
            let offered = try frontend.getFeatures()
            var wanted = VirtioFeatures.version1 | VhostUserFeature.protocolFeatures | VirtioFeatures.indirectDescriptors
            wanted |= BlockFeatures.flush | BlockFeatures.blockSize | BlockFeatures.segMax | BlockFeatures.sizeMax
                | BlockFeatures.discard | BlockFeatures.writeZeroes | BlockFeatures.multiQueue | BlockFeatures.readOnly
            if eventIndex { wanted |= VirtioFeatures.eventIndex }
            features = offered & wanted
            try frontend.setOwner()
            let offeredProtocol = try frontend.getProtocolFeatures()
            try frontend.setProtocolFeatures(offeredProtocol & (VhostUserProtocolFeature.mq.mask
                | VhostUserProtocolFeature.replyAck.mask | VhostUserProtocolFeature.config.mask))
            try frontend.setFeatures(features)
            config = try frontend.getConfig(offset: 0, size: 60)
        } catch {
            throw .connection(error)
        }
        self.queueSize = queueSize
        do {
            memfd = try FileDescriptor.memfd(name: "bulkhead-test-guest", size: memoryBytes, sealed: sealMemory)
            mapping = try MemoryMapping(fd: memfd.rawValue, offset: 0, size: UInt64(memoryBytes), shared: true)
            memory = try GuestMemory(regions: [GuestMemoryRegion(guestAddress: BlockClient.guestBase, size: UInt64(memoryBytes), host: mapping.base)])
        } catch let error as SystemError {
            throw .system(error)
        } catch {
            throw .system(SystemError("guest memory layout", errno: EINVAL))
        }
        // Layout per queue: rings, then slots (32 bytes each), then data.
        let perQueue = UInt64(memoryBytes / max(1, queueCount)) & ~4095
        var slotBase: [UInt64] = [], dataBase: [UInt64] = [], kicks: [Int32] = [], calls: [Int32] = []
        var drivers: [VirtqueueDriver] = []
        var dataBytes = 0
        for q in 0..<queueCount {
            let base = BlockClient.guestBase + UInt64(q) * perQueue
            let layout = VirtqueueDriver.layout(size: queueSize, at: base)
            drivers.append(VirtqueueDriver(memory: memory, size: queueSize, descriptors: layout.descriptors,
                                           available: layout.available, used: layout.used,
                                           eventIndex: features & VirtioFeatures.eventIndex != 0))
            let slots = layout.end
            slotBase.append(slots)
            let data = (slots + 32 * UInt64(queueSize) + 4095) & ~4095
            dataBase.append(data)
            dataBytes = Int(base + perQueue - data)
            do throws(SystemError) {
                kicks.append(try EventFD().release())
                calls.append(try EventFD().release())
            } catch { throw .system(error) }
        }
        self.queues = drivers
        self.slotBase = slotBase
        self.dataBase = dataBase
        self.kicks = kicks
        self.calls = calls
        self.dataBytesPerQueue = dataBytes
        do throws(VhostUserConnectionError) {
            try frontend.setMemTable(regions: [(BlockClient.guestBase, UInt64(memoryBytes), UInt64(UInt(bitPattern: mapping.base)),
                                                memfd.rawValue, 0)])
            for q in 0..<queueCount {
                let layout = VirtqueueDriver.layout(size: queueSize, at: BlockClient.guestBase + UInt64(q) * perQueue)
                let index = UInt32(q)
                try frontend.setVringNum(index, size: UInt32(queueSize))
                // vhost-user ring addresses are in the frontend's address space.
                func user(_ gpa: UInt64) -> UInt64 { gpa - BlockClient.guestBase + UInt64(UInt(bitPattern: mapping.base)) }
                try frontend.setVringAddr(VhostVringAddress(index: index, descriptorTable: user(layout.descriptors),
                                                            usedRing: user(layout.used), availableRing: user(layout.available)))
                try frontend.setVringBase(index, base: 0)
                try frontend.setVringKick(index, fd: kicks[q])
                try frontend.setVringCall(index, fd: calls[q])
                try frontend.setVringEnable(index, true)
            }
        } catch {
            throw .connection(error)
        }
    }

    /// Sends the memory table again (the same memfd and layout), as a frontend does when its
    /// guest's memory map changes: the backend must stop its queues, with their I/O drained,
    /// before it unmaps the old table.
    public func resendMemoryTable() throws(Failure) {
        do throws(VhostUserConnectionError) {
            try frontend.setMemTable(regions: [(BlockClient.guestBase, memory.regions[0].size,
                                                UInt64(UInt(bitPattern: mapping.base)), memfd.rawValue, 0)])
        } catch {
            throw .connection(error)
        }
    }

    /// Capacity in 512-byte sectors, from the config space.
    public var capacitySectors: UInt64 {
        config.prefix(8).enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
    }

    /// The largest data segment the device takes (`size_max`; 0 when it did not offer one).
    public var sizeMax: UInt32 {
        guard features & BlockFeatures.sizeMax != 0, config.count >= 12 else { return 0 }
        return config[8..<12].enumerated().reduce(0) { $0 | UInt32($1.element) << (8 * UInt32($1.offset)) }
    }

    /// Host pointer and guest address of `length` bytes at `offset` in queue `queue`'s data area.
    public func data(queue: Int, offset: Int, length: Int) throws(Failure) -> (address: UInt64, pointer: UnsafeMutableRawPointer) {
        guard offset >= 0, length >= 0, offset + length <= dataBytesPerQueue else { throw .tooLarge(offset + length) }
        let address = dataBase[queue] + UInt64(offset)
        guard let pointer = memory.pointer(at: address, length: UInt64(length)) else { throw .tooLarge(length) }
        return (address, pointer)
    }

    /// Guest address of slot `slot`'s 16-byte request header; its status byte follows at +16.
    public func headerAddress(queue: Int, slot: Int) -> UInt64 { slotBase[queue] + 32 * UInt64(slot) }

    /// Writes a virtio-blk request header for slot `slot` and returns its address.
    public func writeHeader(queue: Int, slot: Int, type: UInt32, sector: UInt64) -> UInt64 {
        let address = headerAddress(queue: queue, slot: slot)
        memory.store(type, at: address)
        memory.store(UInt32(0), at: address + 4)
        memory.store(sector, at: address + 8)
        memory.store(UInt8(0xFF), at: address + 16)  // status: not yet written by the device
        return address
    }

    /// The status byte the device wrote for slot `slot`.
    public func status(queue: Int, slot: Int) -> UInt8 {
        memory.load(UInt8.self, at: headerAddress(queue: queue, slot: slot) + 16) ?? 0xFF
    }

    /// Adds a chain to queue `queue` without notifying the device.
    public func add(queue: Int, _ buffers: [VirtqueueDriver.Buffer]) throws(Failure) -> UInt16 {
        guard let head = queues[queue].add(buffers) else { throw .noDescriptors }
        return head
    }

    /// Publishes added chains and kicks the device if it asked for it.
    public func kick(queue: Int) {
        if queues[queue].publish() {
            var one: UInt64 = 1
            _ = Glibc.write(kicks[queue], &one, 8)
        }
    }

    /// The next used element of `queue`, waiting up to `timeoutMilliseconds` for one.
    public func waitUsed(queue: Int, timeoutMilliseconds: Int32 = 10_000) throws(Failure) -> (head: UInt16, length: UInt32) {
        while true {
            if let used = queues[queue].popUsed() { return used }
            var pfd = pollfd(fd: calls[queue], events: Int16(POLLIN), revents: 0)
            let r = poll(&pfd, 1, timeoutMilliseconds)
            if r == 0 {
                if let used = queues[queue].popUsed() { return used }
                throw .timeout(queue: queue)
            }
            if r > 0 {
                var value: UInt64 = 0
                _ = Glibc.read(calls[queue], &value, 8)
            }
        }
    }

    /// Every used element available now, without waiting.
    public func drainUsed(queue: Int) -> [(head: UInt16, length: UInt32)] {
        var result: [(head: UInt16, length: UInt32)] = []
        while let used = queues[queue].popUsed() { result.append(used) }
        return result
    }

    /// The kick eventfd of `queue` (owned by the client), for tests that kick without publishing.
    public func kickDescriptor(queue: Int) -> Int32? { kicks.indices.contains(queue) ? kicks[queue] : nil }

    /// The call eventfd of `queue`, for callers that wait on several queues.
    public func callFD(queue: Int) -> Int32 { calls[queue] }

    deinit {
        for fd in kicks + calls { _ = Glibc.close(fd) }
    }

    // MARK: One request at a time

    /// Sends one request (header, data, status) on slot 0 of `queue` and waits for it.
    /// `data` is device-readable for writes and discard/write-zeroes, device-writable otherwise.
    @discardableResult
    public func request(queue: Int = 0, type: UInt32, sector: UInt64, dataLength: Int, deviceWrites: Bool,
                        fill: ((UnsafeMutableRawBufferPointer) -> Void)? = nil) throws(Failure) -> (status: UInt8, used: UInt32, data: [UInt8]) {
        let header = writeHeader(queue: queue, slot: 0, type: type, sector: sector)
        var buffers = [VirtqueueDriver.Buffer(address: header, length: 16, writable: false)]
        let area = try data(queue: queue, offset: 0, length: max(dataLength, 1))
        if dataLength > 0 {
            fill?(UnsafeMutableRawBufferPointer(start: area.pointer, count: dataLength))
            // One descriptor per `size_max` bytes, as a driver that honours it splits.
            let segment = sizeMax > 0 ? Int(sizeMax) : dataLength
            var offset = 0
            while offset < dataLength {
                let length = min(segment, dataLength - offset)
                buffers.append(.init(address: area.address + UInt64(offset), length: UInt32(length), writable: deviceWrites))
                offset += length
            }
        }
        buffers.append(.init(address: header + 16, length: 1, writable: true))
        let head = try add(queue: queue, buffers)
        kick(queue: queue)
        let used = try waitUsed(queue: queue)
        precondition(used.head == head, "one request in flight: its head comes back")
        let bytes = deviceWrites && dataLength > 0
            ? Array(UnsafeRawBufferPointer(start: area.pointer, count: dataLength)) : []
        return (status(queue: queue, slot: 0), used.length, bytes)
    }

    public static let typeRead: UInt32 = 0
    public static let typeWrite: UInt32 = 1
    public static let typeFlush: UInt32 = 4
    public static let typeGetID: UInt32 = 8
    public static let typeDiscard: UInt32 = 11
    public static let typeWriteZeroes: UInt32 = 13

    public func read(sector: UInt64, length: Int, queue: Int = 0) throws(Failure) -> (status: UInt8, data: [UInt8]) {
        let r = try request(queue: queue, type: BlockClient.typeRead, sector: sector, dataLength: length, deviceWrites: true)
        return (r.status, r.data)
    }

    public func write(sector: UInt64, data bytes: [UInt8], queue: Int = 0) throws(Failure) -> UInt8 {
        try request(queue: queue, type: BlockClient.typeWrite, sector: sector, dataLength: bytes.count, deviceWrites: false) { buffer in
            bytes.withUnsafeBytes { buffer.copyMemory(from: $0) }
        }.status
    }

    public func flush(queue: Int = 0) throws(Failure) -> UInt8 {
        try request(queue: queue, type: BlockClient.typeFlush, sector: 0, dataLength: 0, deviceWrites: false).status
    }

    public func getID(queue: Int = 0) throws(Failure) -> (status: UInt8, id: String) {
        let r = try request(queue: queue, type: BlockClient.typeGetID, sector: 0, dataLength: 20, deviceWrites: true)
        return (r.status, String(decoding: r.data.prefix { $0 != 0 }, as: UTF8.self))
    }

    /// DISCARD or WRITE_ZEROES of `ranges` (sector, count); `unmap` sets the write-zeroes flag.
    public func release(type: UInt32, ranges: [(sector: UInt64, count: UInt32)], unmap: Bool = false, queue: Int = 0) throws(Failure) -> UInt8 {
        try request(queue: queue, type: type, sector: 0, dataLength: 16 * ranges.count, deviceWrites: false) { buffer in
            for (i, range) in ranges.enumerated() {
                buffer.storeBytes(of: range.sector.littleEndian, toByteOffset: 16 * i, as: UInt64.self)
                buffer.storeBytes(of: range.count.littleEndian, toByteOffset: 16 * i + 8, as: UInt32.self)
                buffer.storeBytes(of: UInt32(unmap ? 1 : 0).littleEndian, toByteOffset: 16 * i + 12, as: UInt32.self)
            }
        }.status
    }
}
