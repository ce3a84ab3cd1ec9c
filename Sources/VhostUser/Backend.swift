import HostOS
#if canImport(Glibc)
import Glibc
#endif
import Logging
import Metering
import Synchronization
import Virtio

/// Everything a device needs to serve one split virtqueue.
public struct VhostQueueSetup: Sendable, Equatable {
    public let index: Int
    public let size: UInt16
    /// Guest-physical addresses, translated from the frontend's user addresses through the
    /// memory table.
    public let descriptorTable: UInt64
    public let availableRing: UInt64
    public let usedRing: UInt64
    /// Where to resume in the available ring (SET_VRING_BASE, or where the last stop left off).
    public let nextAvailable: UInt16
    /// Borrowed: valid until `stopQueue` or `reset` for this queue returns.
    public let kickFD: Int32
    /// Borrowed like `kickFD`; nil when the frontend wants no interrupts.
    public let callFD: Int32?
    /// The negotiated virtio feature bits (without VHOST_USER_F_PROTOCOL_FEATURES).
    public let features: UInt64

    /// The memberwise initializer, public so a device can be driven without a vhost-user
    /// connection (the block device fuzz target does).
    public init(index: Int, size: UInt16, descriptorTable: UInt64, availableRing: UInt64, usedRing: UInt64,
                nextAvailable: UInt16, kickFD: Int32, callFD: Int32?, features: UInt64) {
        self.index = index
        self.size = size
        self.descriptorTable = descriptorTable
        self.availableRing = availableRing
        self.usedRing = usedRing
        self.nextAvailable = nextAvailable
        self.kickFD = kickFD
        self.callFD = callFD
        self.features = features
    }
}

/// A virtio device served over vhost-user. The backend calls it from its connection thread only.
public protocol VhostUserDevice: AnyObject, Sendable {
    /// The virtio feature bits the device offers (the backend adds VHOST_USER_F_PROTOCOL_FEATURES).
    var deviceFeatures: UInt64 { get }
    /// Protocol features the device wants offered; the backend offers those of them it
    /// implements (MQ, REPLY_ACK, CONFIG).
    var protocolFeatures: UInt64 { get }
    var queueCount: Int { get }
    var maxQueueSize: UInt16 { get }
    /// `size` bytes of config space from `offset` (the backend checked offset + size <= 256).
    func readConfig(offset: Int, size: Int) -> [UInt8]
    /// The queue is fully set up and enabled: begin serving it.
    func startQueue(_ setup: VhostQueueSetup, memory: GuestMemory) throws
    /// Stop serving, wait until its worker is idle, return the next available index.
    func stopQueue(_ index: Int) -> UInt16
    /// The current `GuestMemory` is about to be unmapped (running queues were stopped first).
    func memoryWillChange()
    /// The frontend is gone: stop everything, forget all queue state.
    func reset()
}

/// Virtio feature bits with a meaning for vhost-user itself.
public enum VhostUserFeature {
    /// VHOST_USER_F_PROTOCOL_FEATURES: the protocol-feature messages exist, rings start disabled.
    public static let protocolFeatures: UInt64 = 1 << 30
}

/// VHOST_USER_PROTOCOL_F_*: each case's raw value is its bit number.
public enum VhostUserProtocolFeature: UInt64, Sendable, CaseIterable {
    case mq = 0
    case logShmfd = 1
    case rarp = 2
    case replyAck = 3
    case netMTU = 4
    case backendRequest = 5
    case crossEndian = 6
    case cryptoSession = 7
    case pagefault = 8
    case config = 9
    case backendSendFD = 10
    case hostNotifier = 11
    case inflightShmfd = 12
    case resetDevice = 13
    case inbandNotifications = 14
    case configureMemSlots = 15
    case status = 16
    case xenMmap = 17
    case sharedObject = 18
    case deviceState = 19

    /// The feature's bit in a protocol-feature word.
    public var mask: UInt64 { 1 << rawValue }

    /// The ones this backend implements; a device's other bits are never offered.
    public static let supported: UInt64 = mq.mask | replyAck.mask | config.mask
}

/// A vhost-user backend server: listens on a Unix socket, serves one frontend at a time, and
/// hands fully set-up queues to a device.
///
/// A frontend that breaks the protocol (malformed message, wrong descriptors, out-of-range
/// index, bad memory table, unknown request) is dropped: the reason is logged, the device
/// reset, every descriptor and mapping of that connection released, and the next frontend
/// accepted.
public final class VhostUserBackend: Sendable {
    public let path: String
    private let makeDevice: @Sendable () -> any VhostUserDevice
    private let logger: Logger?
    /// How long the rest of a message may take once its first byte has arrived.
    private let messageTimeoutMilliseconds: Int
    private let control = Mutex(Control())

    private struct Control {
        var bound: ListenerBox?
        var listener: Int32?
        var connection: Int32?
        var stopping = false
        var serving = false
    }

    /// Serves `device` to every frontend in turn. See the designated initializer for
    /// `messageTimeout`.
    public convenience init(path: String, device: any VhostUserDevice, logger: Logger? = nil,
                            messageTimeout: Duration = .seconds(5)) {
        self.init(path: path, logger: logger, messageTimeout: messageTimeout, makeDevice: { device })
    }

    /// Queue starts a frontend may cause per second on this socket, over all its connections,
    /// after a burst of `queueStartBurst`. Each start costs the server a worker thread and its
    /// set-up, a message costs the frontend a few microseconds: a frontend that restarts queues
    /// in a loop (SET_VRING_KICK after SET_VRING_KICK, or reconnecting) is slowed to this rate
    /// instead of turning its messages into the server's CPU time. QEMU's start-up, SeaBIOS's
    /// probe included, makes a handful.
    public static let queueStartsPerSecond: UInt64 = 200
    public static let queueStartBurst: UInt64 = 100
    private let queueStarts: Mutex<TokenBucket>

    /// Waits, on the connection's thread, until one more queue start is within the rate.
    private func paceQueueStart() {
        let wait = queueStarts.withLock { bucket -> UInt64 in
            bucket.refill(now: monotonicNanoseconds())
            let wait = bucket.nanosecondsUntil(1)
            bucket.takeAllowingDebt(1)
            return wait
        }
        guard wait > 0 else { return }
        sleepNanoseconds(min(wait, 10_000_000_000))
    }

    /// Serves a fresh device from `makeDevice` to each frontend.
    ///
    /// A frontend may stay idle between messages for as long as it likes, but once a message's
    /// first byte has arrived the rest of it must follow within `messageTimeout`; a message
    /// that stalls half-sent ends the connection (and releases the descriptors it brought).
    public init(path: String, logger: Logger? = nil, messageTimeout: Duration = .seconds(5),
                makeDevice: @escaping @Sendable () -> any VhostUserDevice) {
        self.path = path
        self.logger = logger
        let (seconds, attoseconds) = messageTimeout.components
        let (whole, overflow) = max(0, seconds).multipliedReportingOverflow(by: 1000)
        let (total, late) = whole.addingReportingOverflow(max(0, attoseconds) / 1_000_000_000_000_000)
        messageTimeoutMilliseconds = overflow || late ? Int.max : Int(total)
        self.makeDevice = makeDevice
        queueStarts = Mutex(TokenBucket(rate: VhostUserBackend.queueStartsPerSecond, burst: VhostUserBackend.queueStartBurst,
                                        now: monotonicNanoseconds()))
    }

    /// Listens at `path` and serves frontends on the calling thread until `stop()`.
    public func run() throws(SystemError) {
        let listener = try UnixListener(listeningAt: path)
        serve(listener)
    }

    /// Binds and listens at `path` without serving yet: a process can bind with privileges it
    /// then drops, and start serving afterwards.
    public func listen() throws(SystemError) {
        let box = ListenerBox(try UnixListener(listeningAt: path))
        control.withLock { $0.bound = box }
    }

    /// Serves on `listener`, a socket already bound and listening (handed over by a process that
    /// may create files where this one cannot), once `start()` is called.
    public func adopt(_ listener: consuming UnixListener) {
        let box = ListenerBox(listener)
        control.withLock { $0.bound = box }
    }

    /// Listens at `path` (unless `listen()` or `adopt(_:)` already did; frontends may connect once this
    /// returns) and serves on a new thread.
    public func start() throws(SystemError) {
        let bound = control.withLock { state -> ListenerBox? in
            defer { state.bound = nil }
            return state.bound
        }
        let box: ListenerBox
        if let bound { box = bound } else { box = ListenerBox(try UnixListener(listeningAt: path)) }
        control.withLock { $0.serving = true }
        do {
            try HostThread.start(name: "vhost-user") { [self] in serve(box.listener) }
        } catch {
            control.withLock { $0.serving = false }
            throw error
        }
    }

    /// Stops accepting, ends the current connection (the device is reset) and waits until the
    /// serving thread is done. Do not call from a device callback.
    public func stop() {
        control.withLock { state in
            state.stopping = true
            if let fd = state.listener { UnixStream.shutdown(descriptor: fd) }
            if let fd = state.connection { UnixStream.shutdown(descriptor: fd) }
        }
        while control.withLock({ $0.serving }) { sleepNanoseconds(2_000_000) }
    }

    private final class ListenerBox: Sendable {
        let listener: UnixListener
        init(_ listener: consuming UnixListener) { self.listener = listener }
    }

    private func serve(_ listener: borrowing UnixListener) {
        let proceed = control.withLock { state -> Bool in
            state.serving = !state.stopping
            if state.serving { state.listener = listener.descriptor.rawValue }
            return state.serving
        }
        defer { control.withLock { $0.listener = nil; $0.serving = false } }
        guard proceed else { return }
        logger?.info("vhost-user backend listening", metadata: ["vhost.socket": "\(path)"])
        while !control.withLock({ $0.stopping }) {
            do {
                admit(try listener.accept())
            } catch {
                if control.withLock({ $0.stopping }) { break }
                logger?.info("vhost-user accept failed", metadata: ["vhost.socket": "\(path)", "vhost.error": "\(error)"])
                if error.errno == EBADF || error.errno == EINVAL { break }
                sleepNanoseconds(50_000_000)
            }
        }
        logger?.info("vhost-user backend stopped", metadata: ["vhost.socket": "\(path)"])
    }

    private func admit(_ stream: consuming UnixStream) {
        let admitted = control.withLock { state -> Bool in
            if state.stopping { return false }
            state.connection = stream.rawValue
            return true
        }
        if admitted { serveConnection(stream) }
        // Forget the raw fd before it closes, so `stop()` never shuts down a reused number.
        control.withLock { $0.connection = nil }
        _ = consume stream
    }

    private func serveConnection(_ stream: borrowing UnixStream) {
        let session = Session(device: makeDevice(), logger: logger, socketPath: path, pace: { [self] in paceQueueStart() })
        logger?.info("vhost-user frontend connected", metadata: ["vhost.socket": "\(path)"])
        defer { session.close() }
        while true {
            do throws(VhostUserConnectionError) {
                guard var raw = try MessageChannel.read(from: stream, stallTimeoutMilliseconds: messageTimeoutMilliseconds) else {
                    logger?.info("vhost-user frontend disconnected", metadata: ["vhost.socket": "\(path)"])
                    return
                }
                let message: VhostUserMessage
                do { message = try VhostUserMessage.decode(raw.bytes, descriptorCount: raw.descriptors.count) } catch {
                    throw .message(error)
                }
                try session.handle(message, descriptors: &raw.descriptors, stream: stream)
            } catch {
                logger?.info("vhost-user frontend dropped", metadata: ["vhost.socket": "\(path)", "vhost.reason": "\(error)"])
                return
            }
        }
    }
}

/// A refusal that does not end the connection: answered with a failing REPLY_ACK when one was
/// asked for, otherwise only logged.
struct Refusal: Error, CustomStringConvertible {
    let description: String
}

/// A mapped memory-table region; unmapped when the last reference goes.
final class MappedRegion {
    let region: VhostMemoryRegion
    let mapping: MemoryMapping
    let host: UnsafeMutableRawPointer

    init(region: VhostMemoryRegion, mapping: consuming MemoryMapping, delta: Int) {
        self.region = region
        host = mapping.base + delta
        self.mapping = mapping
    }
}

/// One queue's state as the frontend has set it up.
final class QueueState {
    let index: Int
    var size: UInt16?
    var address: VhostVringAddress?
    var base: UInt16 = 0
    var kick: FileDescriptor?
    var call: FileDescriptor?
    /// SET_VRING_ENABLE's last value; nil when never sent.
    var enabled: Bool?
    var running = false

    init(index: Int) { self.index = index }
}

/// The protocol state of one frontend connection. Used only by the connection's thread.
final class Session {
    let device: any VhostUserDevice
    let logger: Logger?
    let socketPath: String
    var ackedFeatures: UInt64 = 0
    var protocolFeatures: UInt64 = 0
    var regions: [MappedRegion] = []
    var table: VhostMemoryTable?
    var memory = GuestMemory()
    var queues: [QueueState]

    /// Called before each queue start; waits while the frontend is over its rate.
    let pace: () -> Void

    init(device: any VhostUserDevice, logger: Logger?, socketPath: String, pace: @escaping () -> Void = {}) {
        self.device = device
        self.logger = logger
        self.socketPath = socketPath
        self.pace = pace
        queues = (0..<max(0, device.queueCount)).map { QueueState(index: $0) }
    }

    var offeredFeatures: UInt64 { device.deviceFeatures | VhostUserFeature.protocolFeatures }
    var offeredProtocolFeatures: UInt64 { device.protocolFeatures & VhostUserProtocolFeature.supported }
    var protocolFeaturesNegotiated: Bool { ackedFeatures & VhostUserFeature.protocolFeatures != 0 }

    /// Stops every running queue, resets the device, then releases descriptors and mappings.
    func close() {
        for queue in queues where queue.running {
            queue.base = device.stopQueue(queue.index)
            queue.running = false
        }
        device.reset()
        queues = []
        regions = []
        memory = GuestMemory()
    }

    func handle(_ message: VhostUserMessage, descriptors: inout ReceivedDescriptors,
                stream: borrowing UnixStream) throws(VhostUserConnectionError) {
        let request = message.request
        logger?.trace("vhost-user request", metadata: ["vhost.request": "\(request)"])
        var failed = false
        do {
            if let reply = try perform(message, descriptors: &descriptors) {
                try MessageChannel.write(.reply(to: request, reply), to: stream)
            }
        } catch let error as VhostUserError {
            throw .message(error)
        } catch let error as VhostUserConnectionError {
            throw error
        } catch let error as SystemError {
            throw .system(error)  // fstat or mmap of a memory-table region
        } catch let refusal as Refusal {
            failed = true
            logger?.info("vhost-user request refused", metadata: ["vhost.socket": "\(socketPath)", "vhost.reason": "\(refusal)"])
        } catch {
            throw .message(.device("\(request): \(error)"))
        }
        if message.needsReply, !request.hasReply, protocolFeatures & VhostUserProtocolFeature.replyAck.mask != 0 {
            try MessageChannel.write(.reply(to: request, .u64(failed ? 1 : 0)), to: stream)
        }
    }

    private func queue(_ request: VhostUserRequest, _ index: UInt32) throws(VhostUserError) -> QueueState {
        guard Int(index) < queues.count else { throw .queueIndex(request, index: index, queueCount: queues.count) }
        return queues[Int(index)]
    }

    /// Applies one request; returns the reply payload for requests that have one.
    private func perform(_ message: VhostUserMessage, descriptors: inout ReceivedDescriptors) throws -> VhostUserPayload? {
        let request = message.request
        switch (request, message.payload) {
        case (.setOwner, _):
            return nil
        case (.resetOwner, _):
            for queue in queues where queue.running { stop(queue) }
            queues = queues.map { QueueState(index: $0.index) }
            ackedFeatures = 0
            return nil
        case (.getFeatures, _):
            return .u64(offeredFeatures)
        case (.setFeatures, .u64(let features)):
            guard features & ~offeredFeatures == 0 else {
                throw VhostUserError.featuresNotOffered(request, requested: features, offered: offeredFeatures)
            }
            let changed = features != ackedFeatures
            ackedFeatures = features
            if changed {
                for queue in queues where queue.running {
                    stop(queue)
                    try startIfReady(queue)
                }
            }
            return nil
        case (.getProtocolFeatures, _):
            return .u64(offeredProtocolFeatures)
        case (.setProtocolFeatures, .u64(let features)):
            guard features & ~offeredProtocolFeatures == 0 else {
                throw VhostUserError.featuresNotOffered(request, requested: features, offered: offeredProtocolFeatures)
            }
            protocolFeatures = features
            return nil
        case (.getQueueNum, _):
            return .u64(UInt64(queues.count))
        case (.setMemTable, .memoryTable(let newTable)):
            try setMemoryTable(newTable, descriptors: &descriptors)
            return nil
        case (.setVringNum, .vringState(let state)):
            let queue = try queue(request, state.index)
            guard state.num > 0, state.num <= UInt32(device.maxQueueSize), state.num & (state.num - 1) == 0 else {
                throw VhostUserError.queueSize(index: state.index, size: state.num, maximum: device.maxQueueSize)
            }
            try reconfigure(queue) { queue.size = UInt16(state.num) }
            return nil
        case (.setVringAddr, .vringAddress(let address)):
            let queue = try queue(request, address.index)
            _ = try translate(address, request: request)
            try reconfigure(queue) { queue.address = address }
            return nil
        case (.setVringBase, .vringState(let state)):
            let queue = try queue(request, state.index)
            guard state.num <= UInt32(UInt16.max) else { throw VhostUserError.queueBase(index: state.index, base: state.num) }
            try reconfigure(queue) { queue.base = UInt16(state.num) }
            return nil
        case (.getVringBase, .vringState(let state)):
            let queue = try queue(request, state.index)
            if queue.running { stop(queue) }
            // The ring is stopped until the next SET_VRING_KICK.
            queue.kick = nil
            return .vringState(VhostVringState(index: state.index, num: UInt32(queue.base)))
        case (.setVringKick, .vringFile(let file)):
            let queue = try queue(request, file.index)
            guard !file.noDescriptor, let fd = descriptors.take(0) else {
                throw Refusal(description: "SET_VRING_KICK: queue \(file.index) without a kick descriptor (polling mode is not supported)")
            }
            // The worker reads kicks: a regular file would read as an endless stream of them, and
            // a signalfd would read this process's own signals.
            guard fd.isEventFD else { throw VhostUserError.notAnEventFD(request, index: file.index) }
            if queue.running { stop(queue) }
            queue.kick = consume fd  // closes the one it replaces
            try startIfReady(queue)
            return nil
        case (.setVringCall, .vringFile(let file)):
            let queue = try queue(request, file.index)
            var call: FileDescriptor? = nil
            if !file.noDescriptor, let fd = descriptors.take(0) {
                // The worker writes interrupts: a full pipe, or an eventfd whose counter the
                // frontend set near its maximum, must not block it. QEMU's eventfds are
                // non-blocking already; KVM's irqfd ignores the flag.
                guard fd.isEventFD else { throw VhostUserError.notAnEventFD(request, index: file.index) }
                try fd.setNonBlocking()
                call = consume fd
            }
            if queue.running { stop(queue) }
            queue.call = call
            try startIfReady(queue)
            return nil
        case (.setVringErr, .vringFile(let file)):
            _ = try queue(request, file.index)
            // Errors are not reported through it; the descriptor is closed right away.
            _ = descriptors.take(0)
            return nil
        case (.setVringEnable, .vringState(let state)):
            let queue = try queue(request, state.index)
            guard state.num <= 1 else { throw VhostUserError.reservedBits(request, value: UInt64(state.num)) }
            try reconfigure(queue) { queue.enabled = state.num == 1 }
            return nil
        case (.getConfig, .config(let window)):
            guard protocolFeatures & VhostUserProtocolFeature.config.mask != 0 else { throw VhostUserError.unsupportedRequest(request) }
            var bytes = device.readConfig(offset: Int(window.offset), size: window.bytes.count)
            if bytes.count != window.bytes.count {
                bytes = Array(bytes.prefix(window.bytes.count)) + [UInt8](repeating: 0, count: max(0, window.bytes.count - bytes.count))
            }
            return .config(VhostConfigSpace(offset: window.offset, flags: window.flags, bytes: bytes))
        case (.setConfig, _):
            throw Refusal(description: "SET_CONFIG: the config space is read-only")
        default:
            // Requests whose protocol feature this backend never offers (logging, inflight,
            // memory slots, status, ...): a frontend sending them broke the negotiation.
            throw VhostUserError.unsupportedRequest(request)
        }
    }

    /// Stops `queue` when it runs, applies `change`, and starts it again when it is ready.
    private func reconfigure(_ queue: QueueState, _ change: () -> Void) throws {
        if queue.running { stop(queue) }
        change()
        try startIfReady(queue)
    }

    private func stop(_ queue: QueueState) {
        queue.base = device.stopQueue(queue.index)
        queue.running = false
    }

    private func translate(_ address: VhostVringAddress, request: VhostUserRequest) throws(VhostUserError) -> (descriptors: UInt64, available: UInt64, used: UInt64) {
        guard let table else { throw .unmappedAddress(request, what: "ring (no memory table yet)", address: address.descriptorTable) }
        guard let d = table.guestAddress(ofUserAddress: address.descriptorTable) else {
            throw .unmappedAddress(request, what: "descriptor table", address: address.descriptorTable)
        }
        guard let a = table.guestAddress(ofUserAddress: address.availableRing) else {
            throw .unmappedAddress(request, what: "available ring", address: address.availableRing)
        }
        guard let u = table.guestAddress(ofUserAddress: address.usedRing) else {
            throw .unmappedAddress(request, what: "used ring", address: address.usedRing)
        }
        return (d, a, u)
    }

    /// Starts the queue once it has a size, addresses, a kick descriptor and memory, and is
    /// enabled (with PROTOCOL_FEATURES negotiated rings start disabled; without, enabled).
    private func startIfReady(_ queue: QueueState) throws {
        guard !queue.running, let size = queue.size, let address = queue.address, let kick = queue.kick?.rawValue,
              table != nil, queue.enabled ?? !protocolFeaturesNegotiated
        else { return }
        let ring = try translate(address, request: .setVringAddr)
        let setup = VhostQueueSetup(
            index: queue.index, size: size, descriptorTable: ring.descriptors, availableRing: ring.available,
            usedRing: ring.used, nextAvailable: queue.base, kickFD: kick, callFD: queue.call?.rawValue,
            features: ackedFeatures & ~VhostUserFeature.protocolFeatures)
        pace()
        try device.startQueue(setup, memory: memory)
        queue.running = true
        logger?.debug("vhost-user queue started", metadata: ["vhost.socket": "\(socketPath)", "vhost.queue": "\(queue.index)"])
    }

    /// Maps every region of `newTable` (shared, read-write), then swaps it in: running queues
    /// are stopped, the device told, the old mappings released, and the queues restarted.
    private func setMemoryTable(_ newTable: VhostMemoryTable, descriptors: inout ReceivedDescriptors) throws {
        var mapped: [MappedRegion] = []
        for (index, region) in newTable.regions.enumerated() {
            guard let fd = descriptors.take(index) else { throw VhostUserError.memoryTable("region \(index) has no descriptor") }
            // A file the frontend can still shrink could turn a guest access into SIGBUS and
            // take this whole process down: only memfds sealed against shrinking are mapped
            // (QEMU's memory-backend-memfd seals by default).
            guard fd.isSealedAgainstShrinking else {
                throw VhostUserError.memoryTable("region \(index): the memory fd is not a memfd sealed against shrinking (F_SEAL_SHRINK)")
            }
            // A hugetlb memfd can lose pages to a hole punch even when sealed against shrinking,
            // and faulting them back in can fail (SIGBUS) when the huge page pool is empty. A
            // shmem page that is punched out reads back as zeroes.
            guard fd.isShmem else {
                throw VhostUserError.memoryTable("region \(index): the memory fd is not in shmem (a hugetlbfs memfd can lose pages under this process); use a memfd without MFD_HUGETLB")
            }
            // A region past the end of its file would raise SIGBUS when the guest points there.
            let fileSize = try fd.fileSize()
            guard region.mmapOffset + region.size <= fileSize else {
                throw VhostUserError.memoryTable("region \(index): mmap_offset 0x\(String(region.mmapOffset, radix: 16)) + size 0x\(String(region.size, radix: 16)) exceeds the file's 0x\(String(fileSize, radix: 16)) bytes")
            }
            let page = UInt64(MemoryMapping.pageSize)
            let alignedOffset = region.mmapOffset & ~(page - 1)
            let delta = region.mmapOffset - alignedOffset
            let mapping = try MemoryMapping(fd: fd.rawValue, offset: alignedOffset, size: region.size + delta, shared: true)
            mapped.append(MappedRegion(region: region, mapping: mapping, delta: Int(delta)))
        }
        let newMemory: GuestMemory
        do {
            newMemory = try GuestMemory(regions: mapped.map {
                GuestMemoryRegion(guestAddress: $0.region.guestAddress, size: $0.region.size, host: $0.host)
            })
        } catch {
            throw VhostUserError.memoryTable("\(error)")
        }
        let wasRunning = queues.filter(\.running)
        for queue in wasRunning { stop(queue) }
        device.memoryWillChange()
        memory = newMemory
        table = newTable
        regions = mapped  // the old mappings are unmapped here
        for queue in queues { try startIfReady(queue) }
    }
}
