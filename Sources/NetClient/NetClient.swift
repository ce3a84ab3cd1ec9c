import HostOS
import VhostUser
import Virtio
#if canImport(Glibc)
import Glibc
#endif

/// A vhost-user-net frontend with its own guest: memory in a sealed memfd shared with the
/// backend, receive and transmit rings laid out in it, and a driver that sends and receives
/// frames the way a guest's virtio-net driver does. The vhost-net tests and the NetLoad
/// benchmark drive a `VhostNetDevice` with it.
public final class NetClient {
    public enum Failure: Error, CustomStringConvertible {
        case connection(VhostUserConnectionError)
        case system(SystemError)
        case timeout(pair: Int)
        case noDescriptors
        case tooLarge(Int)
        case malformedReceive(String)

        public var description: String {
            switch self {
            case .connection(let e): "vhost-user: \(e)"
            case .system(let e): "\(e)"
            case .timeout(let p): "nothing received on queue pair \(p) within the time limit"
            case .noDescriptors: "the ring has no free descriptors"
            case .tooLarge(let n): "a \(n)-byte frame does not fit a transmit slot"
            case .malformedReceive(let why): "the device returned a malformed receive: \(why)"
            }
        }
    }

    /// Guest-physical address of the first byte of guest memory (deliberately not zero).
    public static let guestBase: UInt64 = 0x8000_0000
    /// A transmit slot: header and the largest frame.
    public static let transmitSlotBytes = 65_600

    public let frontend: VhostUserFrontend
    public let memory: GuestMemory
    public let features: UInt64
    public let config: NetConfig?
    public let queueSize: UInt16
    public let receiveBufferBytes: Int
    public let pairs: Int
    private let memfd: FileDescriptor
    private let mapping: MemoryMapping
    /// Per pair: receive ring, transmit ring.
    private var rx: [VirtqueueDriver] = []
    private var tx: [VirtqueueDriver] = []
    /// Kick and call eventfds per queue (2 per pair), owned.
    private let kicks: [Int32]
    private let calls: [Int32]
    /// Guest address of each descriptor head's buffer, per ring.
    private var rxBuffer: [[UInt64]]
    private var rxFreeBuffers: [[UInt64]]
    private var txSlotOfHead: [[Int]]
    private var txFreeSlots: [[Int]]
    private let rxArea: [UInt64]
    private let txArea: [UInt64]
    /// Ring layouts per queue (2 per pair: receive, transmit).
    private let layouts: [(descriptors: UInt64, available: UInt64, used: UInt64, end: UInt64)]

    /// The header the driver uses (12 bytes with VERSION_1 or MRG_RXBUF, else 10).
    public var headerLength: Int { features & (VirtioFeatures.version1 | NetFeatures.mergeableRxBuffers) != 0 ? 12 : 10 }
    public var mergeable: Bool { features & NetFeatures.mergeableRxBuffers != 0 }

    /// Connects to `socket`, negotiates `wanted` (default: every offload, mergeable buffers,
    /// EVENT_IDX, indirect descriptors, MQ) with what the device offers, maps the guest memory,
    /// starts `pairs` queue pairs of `queueSize`, and posts a receive buffer of
    /// `receiveBufferBytes` per receive descriptor.
    public init(socket: String, pairs: Int = 1, queueSize: UInt16 = 256, wanted: UInt64? = nil,
                receiveBufferBytes: Int = 2048, sealMemory: Bool = true) throws(Failure) {
        let allWanted = VirtioFeatures.version1 | VirtioFeatures.eventIndex | VirtioFeatures.indirectDescriptors
            | NetFeatures.mac | NetFeatures.mtu | NetFeatures.status | NetFeatures.mergeableRxBuffers | NetFeatures.csum
            | NetFeatures.guestCsum | NetFeatures.hostTSO4 | NetFeatures.hostTSO6 | NetFeatures.guestTSO4
            | NetFeatures.guestTSO6 | NetFeatures.multiQueue
        do throws(VhostUserConnectionError) {
            frontend = try VhostUserFrontend(connectingTo: socket)
            let offered = try frontend.getFeatures()
            features = offered & (wanted ?? allWanted) & ~VhostUserFeature.protocolFeatures
            try frontend.setOwner()
            let offeredProtocol = try frontend.getProtocolFeatures()
            let protocolFeatures = offeredProtocol & (VhostUserProtocolFeature.mq.mask | VhostUserProtocolFeature.replyAck.mask
                | VhostUserProtocolFeature.config.mask)
            try frontend.setProtocolFeatures(protocolFeatures)
            try frontend.setFeatures(features | VhostUserFeature.protocolFeatures)
            config = protocolFeatures & VhostUserProtocolFeature.config.mask != 0
                ? NetConfig(bytes: try frontend.getConfig(offset: 0, size: 24)) : nil
        } catch {
            throw .connection(error)
        }
        self.queueSize = queueSize
        self.pairs = max(1, pairs)
        self.receiveBufferBytes = max(64, receiveBufferBytes)
        let n = Int(queueSize)
        let ringBytes = Int(VirtqueueDriver.layout(size: queueSize, at: 0).end)
        let perPair = 2 * ringBytes + n * (self.receiveBufferBytes + 4095) / 4096 * 4096 + n * NetClient.transmitSlotBytes
        let memoryBytes = (self.pairs * perPair + (1 << 20) + 4095) & ~4095
        do {
            memfd = try FileDescriptor.memfd(name: "bulkhead-net-guest", size: memoryBytes, sealed: sealMemory)
            mapping = try MemoryMapping(fd: memfd.rawValue, offset: 0, size: UInt64(memoryBytes), shared: true)
            memory = try GuestMemory(regions: [GuestMemoryRegion(guestAddress: NetClient.guestBase, size: UInt64(memoryBytes), host: mapping.base)])
        } catch let error as SystemError {
            throw .system(error)
        } catch {
            throw .system(SystemError("guest memory layout", errno: EINVAL))
        }
        var kicks: [Int32] = [], calls: [Int32] = []
        var rxArea: [UInt64] = [], txArea: [UInt64] = []
        var layouts: [(descriptors: UInt64, available: UInt64, used: UInt64, end: UInt64)] = []
        var next = NetClient.guestBase
        let eventIndex = features & VirtioFeatures.eventIndex != 0
        for _ in 0..<self.pairs {
            for queue in 0..<2 {
                let layout = VirtqueueDriver.layout(size: queueSize, at: next)
                layouts.append(layout)
                let driver = VirtqueueDriver(memory: memory, size: queueSize, descriptors: layout.descriptors,
                                             available: layout.available, used: layout.used, eventIndex: eventIndex)
                if queue == 0 { rx.append(driver) } else { tx.append(driver) }
                next = layout.end
                do throws(SystemError) {
                    kicks.append(try EventFD().release())
                    calls.append(try EventFD(nonBlocking: true).release())
                } catch { throw .system(error) }
            }
            rxArea.append(next)
            next += UInt64(n * ((self.receiveBufferBytes + 4095) / 4096 * 4096))
            txArea.append(next)
            next += UInt64(n * NetClient.transmitSlotBytes)
        }
        self.kicks = kicks
        self.calls = calls
        self.rxArea = rxArea
        self.txArea = txArea
        self.layouts = layouts
        rxBuffer = Array(repeating: Array(repeating: 0, count: n), count: self.pairs)
        let stride = UInt64((self.receiveBufferBytes + 4095) / 4096 * 4096)
        rxFreeBuffers = rxArea.map { area in (0..<UInt64(n)).map { area + $0 * stride } }
        txSlotOfHead = Array(repeating: Array(repeating: -1, count: n), count: self.pairs)
        txFreeSlots = Array(repeating: Array((0..<n).reversed()), count: self.pairs)
        let user = UInt64(UInt(bitPattern: mapping.base))
        do throws(VhostUserConnectionError) {
            try frontend.setMemTable(regions: [(NetClient.guestBase, UInt64(memoryBytes), user, memfd.rawValue, 0)])
            for q in 0..<(2 * self.pairs) {
                let layout = layouts[q]
                let index = UInt32(q)
                func userAddress(_ gpa: UInt64) -> UInt64 { gpa - NetClient.guestBase + user }
                try frontend.setVringNum(index, size: UInt32(queueSize))
                try frontend.setVringAddr(VhostVringAddress(index: index, descriptorTable: userAddress(layout.descriptors),
                                                            usedRing: userAddress(layout.used), availableRing: userAddress(layout.available)))
                try frontend.setVringBase(index, base: 0)
                try frontend.setVringKick(index, fd: kicks[q])
                try frontend.setVringCall(index, fd: calls[q])
                try frontend.setVringEnable(index, true)
            }
        } catch {
            throw .connection(error)
        }
    }

    deinit {
        for fd in kicks + calls { _ = Glibc.close(fd) }
    }

    // MARK: Transmit

    /// Queues `frame` with `header` on pair `pair`'s transmit ring, split into descriptors of at
    /// most `segmentBytes` (the header in a descriptor of its own), optionally through an indirect
    /// table; kicks the device when it asked for kicks and `kick` is set. Returns the head.
    @discardableResult
    public func send(_ frame: [UInt8], header: VirtioNetHeader = VirtioNetHeader(), pair: Int = 0,
                     segmentBytes: Int = 65_600, kick: Bool = true) throws(Failure) -> UInt16 {
        let length = headerLength + frame.count
        guard length <= NetClient.transmitSlotBytes else { throw .tooLarge(frame.count) }
        reclaimTransmitted(pair: pair)
        guard let slot = txFreeSlots[pair].popLast() else { throw .noDescriptors }
        let address = txArea[pair] + UInt64(slot * NetClient.transmitSlotBytes)
        guard let pointer = memory.pointer(at: address, length: UInt64(length)) else { throw .tooLarge(frame.count) }
        var bytes = [UInt8](repeating: 0, count: 12)
        bytes.withUnsafeMutableBytes { header.write(to: $0) }
        pointer.copyMemory(from: bytes, byteCount: headerLength)
        frame.withUnsafeBytes { (pointer + headerLength).copyMemory(from: $0.baseAddress!, byteCount: frame.count) }
        var buffers = [VirtqueueDriver.Buffer(address: address, length: UInt32(headerLength), writable: false)]
        var offset = headerLength
        let step = max(1, segmentBytes)
        while offset < length {
            let n = min(step, length - offset)
            buffers.append(.init(address: address + UInt64(offset), length: UInt32(n), writable: false))
            offset += n
        }
        let head = try add(pair: pair, transmit: true, buffers)
        txSlotOfHead[pair][Int(head)] = slot
        if kick { self.kick(pair: pair, transmit: true) }
        return head
    }

    /// Adds any chain to a ring of pair `pair` without kicking: for tests of hostile drivers.
    public func add(pair: Int = 0, transmit: Bool, _ buffers: [VirtqueueDriver.Buffer]) throws(Failure) -> UInt16 {
        let head = transmit ? tx[pair].add(buffers) : rx[pair].add(buffers)
        guard let head else { throw .noDescriptors }
        return head
    }

    /// Publishes added chains and kicks the device if it asked for it (or when `force`).
    public func kick(pair: Int = 0, transmit: Bool = true, force: Bool = false) {
        let wanted = transmit ? tx[pair].publish() : rx[pair].publish()
        if wanted || force { _ = EventCounter.signal(kicks[2 * pair + (transmit ? 1 : 0)]) }
    }

    /// Takes back the transmit chains the device has used; returns how many.
    @discardableResult
    public func reclaimTransmitted(pair: Int = 0) -> Int {
        var count = 0
        while let used = tx[pair].popUsed() {
            count += 1
            if Int(used.head) < txSlotOfHead[pair].count, txSlotOfHead[pair][Int(used.head)] >= 0 {
                txFreeSlots[pair].append(txSlotOfHead[pair][Int(used.head)])
                txSlotOfHead[pair][Int(used.head)] = -1
            }
        }
        return count
    }

    /// Free transmit descriptors.
    public func transmitRoom(pair: Int = 0) -> Int { tx[pair].freeDescriptors }

    // MARK: Receive

    /// Posts up to `count` receive buffers (default: as many as fit) and publishes them.
    public func postReceiveBuffers(pair: Int = 0, count: Int = .max) {
        var posted = 0
        while posted < count, let buffer = rxFreeBuffers[pair].last {
            guard let head = rx[pair].add([.init(address: buffer, length: UInt32(receiveBufferBytes), writable: true)]) else { break }
            rxFreeBuffers[pair].removeLast()
            rxBuffer[pair][Int(head)] = buffer
            posted += 1
        }
        kick(pair: pair, transmit: false)
    }

    /// The next received frame on pair `pair` (its header and the frame without it), reposting
    /// the buffers it used; waits up to `timeoutMilliseconds`.
    public func receive(pair: Int = 0, timeoutMilliseconds: Int32 = 5_000) throws(Failure) -> (header: VirtioNetHeader, frame: [UInt8]) {
        let first = try waitUsed(pair: pair, timeoutMilliseconds: timeoutMilliseconds)
        var bytes = read(pair: pair, first)
        guard bytes.count >= headerLength else { throw .malformedReceive("a used length of \(first.length) is shorter than the header") }
        var padded = Array(bytes.prefix(headerLength)) + [UInt8](repeating: 0, count: 12 - headerLength)
        let header = padded.withUnsafeMutableBytes { VirtioNetHeader(parsing: UnsafeRawBufferPointer($0)) } ?? VirtioNetHeader()
        if mergeable {
            guard header.numBuffers >= 1 else { throw .malformedReceive("num_buffers 0") }
            for _ in 1..<Int(header.numBuffers) {
                let more = try waitUsed(pair: pair, timeoutMilliseconds: timeoutMilliseconds)
                bytes += read(pair: pair, more)
            }
        }
        postReceiveBuffers(pair: pair)
        padded = []
        return (header, Array(bytes.dropFirst(headerLength)))
    }

    /// Every used receive element now, without waiting (for counting drops).
    public func pendingReceives(pair: Int = 0) -> Int {
        var count = 0
        while let used = rx[pair].popUsed() { _ = read(pair: pair, used); count += 1 }
        postReceiveBuffers(pair: pair)
        return count
    }

    /// Counts the frames and bytes (without headers) in every used receive element now, without
    /// copying them, and reposts the buffers: the NetLoad benchmark's receive side. With
    /// mergeable buffers a frame's later buffers may arrive in a later call; `mergeRemaining`
    /// carries the count across calls (start it at 0 per pair).
    public func countReceived(pair: Int = 0, mergeRemaining: inout Int) -> (frames: Int, bytes: Int) {
        var frames = 0, bytes = 0, popped = 0
        while let used = rx[pair].popUsed() {
            popped += 1
            guard Int(used.head) < rxBuffer[pair].count else { continue }
            let buffer = rxBuffer[pair][Int(used.head)]
            rxFreeBuffers[pair].append(buffer)
            let length = min(Int(used.length), receiveBufferBytes)
            if mergeRemaining > 0 {
                mergeRemaining -= 1
                bytes += length
                continue
            }
            frames += 1
            bytes += max(0, length - headerLength)
            if mergeable, length >= headerLength, let pointer = memory.pointer(at: buffer + 10, length: 2) {
                let count = Int(pointer.loadUnaligned(as: UInt16.self).littleEndian)
                mergeRemaining = max(0, count - 1)
            }
        }
        if popped > 0 { postReceiveBuffers(pair: pair) }
        return (frames, bytes)
    }

    /// The bytes the device wrote into a used receive buffer, which goes back to the free list.
    private func read(pair: Int, _ used: (head: UInt16, length: UInt32)) -> [UInt8] {
        guard Int(used.head) < rxBuffer[pair].count else { return [] }
        let buffer = rxBuffer[pair][Int(used.head)]
        rxFreeBuffers[pair].append(buffer)
        let length = min(Int(used.length), receiveBufferBytes)
        guard let pointer = memory.pointer(at: buffer, length: UInt64(length)) else { return [] }
        return Array(UnsafeRawBufferPointer(start: pointer, count: length))
    }

    private func waitUsed(pair: Int, timeoutMilliseconds: Int32) throws(Failure) -> (head: UInt16, length: UInt32) {
        let deadline = monotonicNanoseconds() + UInt64(max(0, timeoutMilliseconds)) * 1_000_000
        var readable: [Bool] = []
        while true {
            if let used = rx[pair].popUsed() { return used }
            let now = monotonicNanoseconds()
            guard now < deadline else { throw .timeout(pair: pair) }
            let left = Int32(min((deadline - now) / 1_000_000 + 1, 1_000))
            if EventCounter.waitReadable([calls[2 * pair]], readable: &readable, timeoutMilliseconds: left) > 0 {
                _ = EventCounter.take(calls[2 * pair])
            }
        }
    }

    /// The call eventfd of a ring (owned by the client), for tests that count interrupts.
    public func callDescriptor(pair: Int = 0, transmit: Bool) -> Int32 { calls[2 * pair + (transmit ? 1 : 0)] }

    /// The kick eventfd of a ring (owned by the client), for tests that kick without publishing.
    public func kickDescriptor(pair: Int = 0, transmit: Bool) -> Int32 { kicks[2 * pair + (transmit ? 1 : 0)] }

    /// Guest addresses of a ring's descriptor table, available ring and used ring (for tests that
    /// rewrite descriptors or read the device's notification fields).
    public func ring(pair: Int = 0, transmit: Bool) -> (descriptors: UInt64, available: UInt64, used: UInt64) {
        let layout = layouts[2 * pair + (transmit ? 1 : 0)]
        return (layout.descriptors, layout.available, layout.used)
    }

    /// Guest address and host pointer of transmit slot `slot` of pair `pair` (for hostile tests).
    public func transmitSlot(pair: Int = 0, slot: Int) -> (address: UInt64, pointer: UnsafeMutableRawPointer)? {
        let address = txArea[pair] + UInt64(slot * NetClient.transmitSlotBytes)
        guard let pointer = memory.pointer(at: address, length: UInt64(NetClient.transmitSlotBytes)) else { return nil }
        return (address, pointer)
    }
}
