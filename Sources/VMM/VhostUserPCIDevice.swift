import Devices
import HostOS
import KVM
import Logging
import VhostUser
import Virtio

/// Why a vhost-user device could not be set up.
public enum VhostUserPCIDeviceError: Error, CustomStringConvertible {
    /// The backend could not be reached or broke the protocol while negotiating.
    case connection(socket: String, VhostUserConnectionError)
    /// An eventfd could not be made.
    case system(SystemError)
    /// The backend offers something this VMM cannot present to a guest.
    case unusableBackend(socket: String, String)

    public var description: String {
        switch self {
        case .connection(let socket, let error): "vhost-user backend \(socket): \(error)"
        case .system(let error): "\(error)"
        case .unusableBackend(let socket, let why): "vhost-user backend \(socket): \(why)"
        }
    }
}

/// The glue between a virtio-pci transport model and a vhost-user backend (our block server for
/// virtio-blk, a switch port for virtio-net): it is the transport's `VirtioBackend` and
/// `VirtioPlatform`, and the backend's frontend.
///
/// - At connect: GET_FEATURES, SET_OWNER, the protocol features (REPLY_ACK, CONFIG, MQ), the
///   queue count, and for virtio-blk the configuration (GET_CONFIG). The guest is offered the
///   backend's features that this VMM presents (a fixed list per device type, VERSION_1 required);
///   virtio-net's configuration (MAC, link status, queue pairs, MTU) is the VMM's own.
/// - At DRIVER_OK: every enabled queue's rings are checked to lie in guest RAM (else the device
///   fails: DEVICE_NEEDS_RESET), then SET_FEATURES, SET_MEM_TABLE, and per queue SET_VRING_NUM,
///   ADDR (the rings' addresses in this process), BASE 0, KICK (the eventfd registered as the
///   queue's doorbell ioeventfd), CALL (the eventfd attached as irqfd to the GSI of the queue's
///   MSI-X vector while that vector is unmasked; with NO_VECTOR nobody forwards it) and ENABLE.
/// - At reset: GET_VRING_BASE per started queue; doorbells and irqfds are removed.
/// - A failed or refused request drops the connection (the backend forgets the device) and fails
///   the device; the next DRIVER_OK after the driver's reset connects again.
///
/// Not thread-safe: called by the transport, under the VMM's device lock. A request to the backend
/// blocks the calling vCPU for at most the reply timeout.
public final class VhostUserPCIDevice: VirtioBackend, VirtioPlatform {
    public enum Kind: Sendable, Equatable {
        case block
        /// `mac` is the port's configured address; `mtu` is offered when set; `pairs` queue pairs
        /// at most (as many as the backend serves).
        case net(mac: [UInt8], mtu: UInt16? = nil, pairs: Int = 1)
    }

    /// The features this VMM presents, per device type (the backend must offer them too).
    static let commonFeatures = VirtioFeatures.version1 | VirtioFeatures.indirectDescriptors | VirtioFeatures.eventIndex
    static let blockFeatures = BlockFeatures.sizeMax | BlockFeatures.segMax | BlockFeatures.geometry | BlockFeatures.readOnly
        | BlockFeatures.blockSize | BlockFeatures.flush | BlockFeatures.topology | BlockFeatures.multiQueue
        | BlockFeatures.discard | BlockFeatures.writeZeroes
    static let netFeatures = NetFeatures.csum | NetFeatures.guestCsum | NetFeatures.guestTSO4 | NetFeatures.guestTSO6
        | NetFeatures.guestECN | NetFeatures.hostTSO4 | NetFeatures.hostTSO6 | NetFeatures.hostECN
        | NetFeatures.mergeableRxBuffers | NetFeatures.multiQueue
    /// virtio-net features the VMM provides itself (its configuration space), whatever the backend.
    static let netOwnFeatures = NetFeatures.mac | NetFeatures.status | NetFeatures.mtu

    public let socketPath: String
    public let kind: Kind
    /// What the transport presents: type, features, queues, maximum size, configuration size.
    public let info: VirtioPCIFunction.Info
    private let host: VirtioHost
    private let logger: Logger
    private let replyTimeoutMilliseconds: Int

    private var frontend: VhostUserFrontend?
    /// The backend's virtio features at the last connect (VHOST_USER_F_PROTOCOL_FEATURES included).
    private var backendFeatures: UInt64
    private var protocolFeatures: UInt64
    /// The device configuration the guest reads.
    private let config: [UInt8]
    private let signals: [QueueSignals]
    /// Per queue: its doorbell's address while the BAR is decoded.
    private var doorbells: [UInt64?]
    /// Per MSI-X vector: its message while unmasked, and its GSI once it had one.
    private var routes: [MSIMessage?]
    private var gsis: [UInt32?]
    /// Per queue, while started.
    private var running: [RunningQueue?]
    /// Why the device last failed, for the log and the tests.
    public private(set) var lastFailure: String?

    private struct RunningQueue {
        var vector: UInt16
        /// Where its doorbell is registered, if anywhere.
        var doorbell: UInt64?
        /// The GSI its call eventfd is attached to, if any.
        var gsi: UInt32?
    }

    /// A queue's kick and call eventfds, owned for the device's life.
    private final class QueueSignals {
        let kick: EventFD
        let call: EventFD
        init() throws(SystemError) {
            kick = try EventFD(nonBlocking: true)
            call = try EventFD(nonBlocking: true)
        }
    }

    /// Connects to the backend at `socket` and negotiates what the guest will be offered.
    /// `maxQueueSize` (a power of two) and `maxQueues` bound what the guest may configure.
    public init(socket: String, kind: Kind, host: VirtioHost, logger: Logger, maxQueueSize: UInt16 = 256,
                maxQueues: Int = 8, replyTimeoutMilliseconds: Int = 5_000) throws(VhostUserPCIDeviceError) {
        precondition(maxQueueSize > 0 && maxQueueSize & (maxQueueSize - 1) == 0, "queue sizes are powers of two")
        socketPath = socket
        self.kind = kind
        self.host = host
        self.logger = logger
        self.replyTimeoutMilliseconds = replyTimeoutMilliseconds
        let connection: Connection
        do {
            connection = try VhostUserPCIDevice.connect(socket, timeout: replyTimeoutMilliseconds)
        } catch {
            throw .connection(socket: socket, error)
        }
        frontend = connection.frontend
        backendFeatures = connection.features
        protocolFeatures = connection.protocolFeatures
        guard connection.features & VirtioFeatures.version1 != 0 else {
            throw .unusableBackend(socket: socket, "it does not offer VIRTIO_F_VERSION_1")
        }
        let queueLimit = min(maxQueues, VirtioPCIFunction.maximumQueues, connection.queueCount ?? Int.max)
        var features = connection.features & VhostUserPCIDevice.commonFeatures
        let queueCount: Int
        var config: [UInt8]
        switch kind {
        case .block:
            guard connection.protocolFeatures & VhostUserProtocolFeature.config.mask != 0 else {
                throw .unusableBackend(socket: socket, "it does not offer VHOST_USER_PROTOCOL_F_CONFIG, so there is no virtio-blk configuration")
            }
            do {
                config = try connection.frontend.getConfig(offset: 0, size: BlockConfig.size)
            } catch {
                throw .connection(socket: socket, error)
            }
            guard config.count == BlockConfig.size else {
                throw .unusableBackend(socket: socket, "GET_CONFIG returned \(config.count) bytes, not \(BlockConfig.size)")
            }
            features |= connection.features & VhostUserPCIDevice.blockFeatures
            if features & BlockFeatures.multiQueue != 0 {
                let offered = Int(config[34]) | Int(config[35]) << 8
                queueCount = max(1, min(offered, queueLimit))
                config[34] = UInt8(truncatingIfNeeded: queueCount)
                config[35] = UInt8(truncatingIfNeeded: queueCount >> 8)
            } else {
                queueCount = 1
            }
        case .net(let mac, let mtu, let pairs):
            guard mac.count == 6 else { throw .unusableBackend(socket: socket, "a MAC address has 6 bytes, not \(mac.count)") }
            let pairCount = max(1, min(pairs, queueLimit / 2))
            guard queueLimit >= 2 else { throw .unusableBackend(socket: socket, "it serves fewer than 2 queues") }
            features |= connection.features & VhostUserPCIDevice.netFeatures & ~NetFeatures.multiQueue
            if pairCount > 1 {
                guard connection.features & NetFeatures.multiQueue != 0 else {
                    throw .unusableBackend(socket: socket, "\(pairCount) queue pairs asked for, but it does not offer VIRTIO_NET_F_MQ")
                }
                features |= NetFeatures.multiQueue
            }
            features |= NetFeatures.mac | NetFeatures.status | (mtu == nil ? 0 : NetFeatures.mtu)
            queueCount = 2 * pairCount
            config = NetConfig(mac: mac, status: NetConfig.linkUp, maxQueuePairs: UInt16(pairCount), mtu: mtu ?? 1500).bytes
        }
        self.config = config
        info = VirtioPCIFunction.Info(type: kind == .block ? .block : .net, features: features, queueCount: queueCount,
                                      maxQueueSize: maxQueueSize, configSize: config.count)
        do throws(SystemError) {
            signals = try (0..<queueCount).map { _ throws(SystemError) in try QueueSignals() }
        } catch {
            throw .system(error)
        }
        doorbells = Array(repeating: nil, count: queueCount)
        routes = Array(repeating: nil, count: queueCount + 1)
        gsis = Array(repeating: nil, count: queueCount + 1)
        running = Array(repeating: nil, count: queueCount)
    }

    deinit {
        for queue in running.indices { stopLocally(queue) }
    }

    /// The transport for this device, to plug into the PCI bus. It keeps this device alive.
    public func makeFunction() -> VirtioPCIFunction {
        VirtioPCIFunction(info: info, backend: self, platform: self)
    }

    /// The kick eventfd of `queue` (owned by the device): what its doorbell signals.
    public func kickDescriptor(queue: Int) -> Int32? { signals.indices.contains(queue) ? signals[queue].kick.rawValue : nil }
    /// The call eventfd of `queue` (owned by the device): what the backend signals.
    public func callDescriptor(queue: Int) -> Int32? { signals.indices.contains(queue) ? signals[queue].call.rawValue : nil }
    /// Whether `queue` is started on the backend.
    public func isRunning(queue: Int) -> Bool { running.indices.contains(queue) && running[queue] != nil }
    /// Whether a backend connection is open.
    public var isConnected: Bool { frontend != nil }

    // MARK: Connection

    private struct Connection {
        let frontend: VhostUserFrontend
        let features: UInt64
        let protocolFeatures: UInt64
        let queueCount: Int?
    }

    private static func connect(_ socket: String, timeout: Int) throws(VhostUserConnectionError) -> Connection {
        let frontend = try VhostUserFrontend(connectingTo: socket, replyTimeoutMilliseconds: timeout)
        let features = try frontend.getFeatures()
        try frontend.setOwner()
        var protocolFeatures: UInt64 = 0
        if features & VhostUserFeature.protocolFeatures != 0 {
            let wanted = VhostUserProtocolFeature.replyAck.mask | VhostUserProtocolFeature.config.mask | VhostUserProtocolFeature.mq.mask
            protocolFeatures = try frontend.getProtocolFeatures() & wanted
            try frontend.setProtocolFeatures(protocolFeatures)
        }
        var queueCount: Int?
        if protocolFeatures & VhostUserProtocolFeature.mq.mask != 0 {
            queueCount = Int(clamping: try frontend.getQueueNum())
        }
        return Connection(frontend: frontend, features: features, protocolFeatures: protocolFeatures, queueCount: queueCount)
    }

    /// The open connection, or a new one that still serves what the guest was offered.
    private func connection() throws(VhostUserConnectionError) -> VhostUserFrontend? {
        if let frontend { return frontend }
        let connection = try VhostUserPCIDevice.connect(socketPath, timeout: replyTimeoutMilliseconds)
        let needed = info.features & ~(kind == .block ? 0 : VhostUserPCIDevice.netOwnFeatures)
        guard connection.features & needed == needed, (connection.queueCount ?? Int.max) >= info.queueCount else {
            lastFailure = "the backend came back offering less than the guest was offered"
            return nil
        }
        frontend = connection.frontend
        backendFeatures = connection.features
        protocolFeatures = connection.protocolFeatures
        logger.info("vhost-user backend reconnected", metadata: ["device.socket": "\(socketPath)"])
        return connection.frontend
    }

    /// Fails the device: forgets the queues here and, unless the backend was not involved
    /// (`dropConnection` false: the guest's rings were refused before any request), drops the
    /// connection, so the backend stops every queue and forgets the device.
    private func failed(_ why: String, dropConnection: Bool = true) -> Bool {
        lastFailure = why
        logger.warning("virtio device failed", metadata: ["device.socket": "\(socketPath)", "device.reason": "\(why)"])
        for queue in running.indices { stopLocally(queue) }
        if dropConnection { frontend = nil }
        return false
    }

    // MARK: VirtioBackend

    public func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        for i in data.indices {
            let at = offset + i
            data[i] = at >= 0 && at < config.count ? config[at] : 0
        }
    }

    public func writeConfig(offset: Int, from data: UnsafeRawBufferPointer) {
        // Nothing here is writable: no VIRTIO_BLK_F_CONFIG_WCE, and virtio-net's space is read-only.
    }

    /// Where `length` bytes at guest-physical `address` are in this process, when they lie in
    /// one RAM region.
    private func userAddress(_ address: UInt64, length: UInt64) -> UInt64? {
        for region in host.memoryRegions where address >= region.guestAddress {
            let offset = address - region.guestAddress
            guard offset < region.size, length <= region.size - offset else { continue }
            return region.userAddress + offset
        }
        return nil
    }

    public func driverOK(features: UInt64, queues: [VirtioQueueConfig]) -> Bool {
        for queue in running.indices { stopLocally(queue) }
        // Every ring in RAM and aligned (virtio 1.2, 2.7), before the backend hears of any.
        var addresses: [VhostVringAddress] = []
        for queue in queues {
            guard queue.index >= 0, queue.index < info.queueCount else {
                return failed("queue \(queue.index) does not exist", dropConnection: false)
            }
            let n = UInt64(queue.size)
            guard queue.descriptorTable % 16 == 0, queue.driverArea % 2 == 0, queue.deviceArea % 4 == 0,
                  let table = userAddress(queue.descriptorTable, length: 16 * n),
                  let available = userAddress(queue.driverArea, length: 6 + 2 * n),
                  let used = userAddress(queue.deviceArea, length: 6 + 8 * n)
            else {
                return failed("queue \(queue.index): rings at 0x\(String(queue.descriptorTable, radix: 16)), "
                    + "0x\(String(queue.driverArea, radix: 16)), 0x\(String(queue.deviceArea, radix: 16)) are not aligned guest RAM", dropConnection: false)
            }
            // The used ring is the device's to write: sharing memory with the table or the
            // available ring lets the device's own writes change what it reads (the backend
            // drops a frontend that asks for that; refused here, the connection stays).
            func apart(_ a: UInt64, _ aLength: UInt64, _ b: UInt64, _ bLength: UInt64) -> Bool { a + aLength <= b || b + bLength <= a }
            guard apart(queue.deviceArea, 6 + 8 * n, queue.descriptorTable, 16 * n), apart(queue.deviceArea, 6 + 8 * n, queue.driverArea, 6 + 2 * n) else {
                return failed("queue \(queue.index): the used ring overlaps the descriptor table or the available ring", dropConnection: false)
            }
            addresses.append(VhostVringAddress(index: UInt32(queue.index), descriptorTable: table, usedRing: used, availableRing: available))
        }
        do throws(VhostUserConnectionError) {
            guard let frontend = try connection() else { return failed(lastFailure ?? "no backend") }
            var backendBits = features & backendFeatures
            backendBits |= backendFeatures & VhostUserFeature.protocolFeatures
            try frontend.setFeatures(backendBits)
            try frontend.setMemTable(regions: host.memoryRegions.map { ($0.guestAddress, $0.size, $0.userAddress, $0.memfd, $0.offset) })
            for (queue, address) in zip(queues, addresses) {
                let index = UInt32(queue.index)
                let signal = signals[queue.index]
                try frontend.setVringNum(index, size: UInt32(queue.size))
                try frontend.setVringAddr(address)
                try frontend.setVringBase(index, base: 0)
                try frontend.setVringKick(index, fd: signal.kick.rawValue)
                try frontend.setVringCall(index, fd: signal.call.rawValue)
                if backendBits & VhostUserFeature.protocolFeatures != 0 { try frontend.setVringEnable(index, true) }
                running[queue.index] = RunningQueue(vector: queue.vector)
            }
        } catch {
            return failed("starting the queues: \(error)")
        }
        do throws(KVMError) {
            for queue in queues {
                try syncDoorbell(queue.index)
                try syncInterrupt(queue.index)
            }
        } catch {
            return failed("registering doorbells and interrupts: \(error)")
        }
        return true
    }

    public func reset() {
        var broken: String?
        for queue in running.indices where running[queue] != nil {
            stopLocally(queue)
            guard broken == nil, let frontend else { continue }
            do {
                _ = try frontend.getVringBase(UInt32(queue))
            } catch {
                broken = "stopping queue \(queue): \(error)"
            }
        }
        if let broken { _ = failed(broken) }
    }

    public func notify(queue: Int) -> Bool {
        guard running.indices.contains(queue), running[queue] != nil else { return true }
        return EventCounter.signal(signals[queue].kick.rawValue)
    }

    // MARK: VirtioPlatform

    public func doorbellChanged(queue: Int, address: UInt64?) -> Bool {
        guard doorbells.indices.contains(queue) else { return true }
        doorbells[queue] = address
        do {
            try syncDoorbell(queue)
            return true
        } catch {
            return failed("moving the doorbell of queue \(queue): \(error)")
        }
    }

    public func interruptRouteChanged(vector: Int, message: MSIMessage?) -> Bool {
        guard routes.indices.contains(vector) else { return true }
        routes[vector] = message
        do throws(KVMError) {
            if let message {
                guard let gsi = gsis[vector] ?? host.allocateInterrupt() else { return failed("no GSI left for vector \(vector)") }
                gsis[vector] = gsi
                try host.routeInterrupt(gsi: gsi, message: message)
            }
            for queue in running.indices where running[queue]?.vector == UInt16(vector) {
                try syncInterrupt(queue)
            }
            return true
        } catch {
            return failed("routing vector \(vector): \(error)")
        }
    }

    public func signal(vector: Int, message: MSIMessage) {
        host.sendInterrupt(message)
    }

    // MARK: Doorbells and irqfds

    /// Registers `queue`'s doorbell where it should be: at its address while it runs, nowhere else.
    private func syncDoorbell(_ queue: Int) throws(KVMError) {
        guard var state = running[queue] else { return }
        let wanted = doorbells[queue]
        guard state.doorbell != wanted else { return }
        let kick = signals[queue].kick.rawValue
        if let old = state.doorbell {
            state.doorbell = nil
            running[queue] = state
            try host.removeDoorbell(eventfd: kick, address: old, length: VirtioPCIFunction.doorbellWidth)
        }
        if let wanted {
            try host.addDoorbell(eventfd: kick, address: wanted, length: VirtioPCIFunction.doorbellWidth)
            state.doorbell = wanted
            running[queue] = state
        }
    }

    /// Attaches `queue`'s call eventfd to its vector's GSI while the vector is unmasked.
    private func syncInterrupt(_ queue: Int) throws(KVMError) {
        guard var state = running[queue] else { return }
        let vector = Int(state.vector)
        let wanted = routes.indices.contains(vector) && routes[vector] != nil ? gsis[vector] : nil
        guard state.gsi != wanted else { return }
        let call = signals[queue].call.rawValue
        if let old = state.gsi {
            state.gsi = nil
            running[queue] = state
            try host.detachInterrupt(eventfd: call, gsi: old)
        }
        if let wanted {
            try host.attachInterrupt(eventfd: call, gsi: wanted)
            state.gsi = wanted
            running[queue] = state
        }
    }

    /// Forgets `queue` here: its doorbell and irqfd go (errors only logged: the registration is
    /// gone or the VM is), the backend is not told.
    private func stopLocally(_ queue: Int) {
        guard let state = running[queue] else { return }
        running[queue] = nil
        if let doorbell = state.doorbell {
            do throws(KVMError) {
                try host.removeDoorbell(eventfd: signals[queue].kick.rawValue, address: doorbell, length: VirtioPCIFunction.doorbellWidth)
            } catch {
                logger.warning("removing a doorbell failed", metadata: ["device.socket": "\(socketPath)", "error": "\(error)"])
            }
        }
        if let gsi = state.gsi {
            do throws(KVMError) {
                try host.detachInterrupt(eventfd: signals[queue].call.rawValue, gsi: gsi)
            } catch {
                logger.warning("detaching an irqfd failed", metadata: ["device.socket": "\(socketPath)", "error": "\(error)"])
            }
        }
    }
}
