import HostOS
import Logging
import VhostUser
import Virtio

/// A virtio-net device served over vhost-user: one switch port of kind "vhost-user".
///
/// The device moves no frame itself. Its `queuePairs` are served by the switch's worker threads
/// (see `VhostNetQueuePair`); the `VhostUserBackend` that serves the device on the port's socket
/// calls the `VhostUserDevice` methods below from its connection thread, which start and stop
/// the rings under the pairs' locks. Queue 2k is pair k's receive ring, 2k + 1 its transmit ring.
///
/// Guest memory, kick and call descriptors come through the backend, which maps only sealed
/// shmem memfds and takes only eventfds; the backend also paces queue starts and drops a
/// frontend that breaks the protocol.
public final class VhostNetDevice: VhostUserDevice, Sendable {
    public let mac: [UInt8]
    public let mtu: UInt16
    public let queuePairs: [VhostNetQueuePair]
    public let maxQueueSize: UInt16 = 1024
    private let logger: Logger?

    /// A device with `queuePairs` pairs (1...16) and the port's MAC and MTU, offered to the
    /// driver in the config space.
    public init(mac: [UInt8], mtu: Int = 1500, queuePairs: Int = 1, logger: Logger? = nil) throws(SystemError) {
        self.mac = Array((mac + [UInt8](repeating: 0, count: 6)).prefix(6))
        self.mtu = UInt16(clamping: max(68, mtu))
        var pairs: [VhostNetQueuePair] = []
        for index in 0..<min(max(1, queuePairs), 16) { pairs.append(try VhostNetQueuePair(index: index)) }
        self.queuePairs = pairs
        self.logger = logger
    }

    public var queueCount: Int { 2 * queuePairs.count }

    /// VERSION_1, the MAC, MTU and link status in the config space, mergeable receive buffers,
    /// checksum and TCP segmentation offload both ways, EVENT_IDX, indirect descriptors, and MQ
    /// when there is more than one pair (virtio requires a control queue with MQ: the frontend
    /// serves it, as QEMU and DPDK's virtio_user do).
    public var deviceFeatures: UInt64 {
        var features = VirtioFeatures.version1 | VirtioFeatures.eventIndex | VirtioFeatures.indirectDescriptors
            | NetFeatures.mac | NetFeatures.mtu | NetFeatures.status | NetFeatures.mergeableRxBuffers
            | NetFeatures.csum | NetFeatures.guestCsum | NetFeatures.hostTSO4 | NetFeatures.hostTSO6
            | NetFeatures.guestTSO4 | NetFeatures.guestTSO6
        if queuePairs.count > 1 { features |= NetFeatures.multiQueue }
        return features
    }

    public var protocolFeatures: UInt64 {
        VhostUserProtocolFeature.mq.mask | VhostUserProtocolFeature.replyAck.mask | VhostUserProtocolFeature.config.mask
    }

    public var config: NetConfig {
        NetConfig(mac: mac, status: NetConfig.linkUp, maxQueuePairs: UInt16(queuePairs.count), mtu: mtu)
    }

    public func readConfig(offset: Int, size: Int) -> [UInt8] {
        let space = config.bytes
        return (0..<max(0, size)).map { i in
            let at = offset + i
            return at >= 0 && at < space.count ? space[at] : 0
        }
    }

    public func startQueue(_ setup: VhostQueueSetup, memory: GuestMemory) throws {
        guard setup.index >= 0, setup.index < queueCount else {
            throw VhostNetQueueIndexError(index: setup.index, queueCount: queueCount)
        }
        try queuePairs[setup.index / 2].start(setup, memory: memory)
        logger?.info("virtio-net queue started", metadata: [
            "queue.index": "\(setup.index)", "queue.size": "\(setup.size)",
            "queue.features": "0x\(String(setup.features, radix: 16))",
        ])
    }

    public func stopQueue(_ index: Int) -> UInt16 {
        guard index >= 0, index < queueCount else { return 0 }
        return queuePairs[index / 2].stop(queue: index)
    }

    /// The backend stopped every running ring before it calls this: no pair holds the memory.
    public func memoryWillChange() {}

    public func reset() {
        for index in 0..<queueCount { _ = stopQueue(index) }
    }

    /// The sum of the pairs' counters.
    public var counters: VhostNetCounters {
        queuePairs.reduce(VhostNetCounters()) { $0 + $1.counters }
    }
}

/// A queue index the device does not have.
struct VhostNetQueueIndexError: Error, CustomStringConvertible {
    let index: Int
    let queueCount: Int
    var description: String { "virtio-net queue \(index) does not exist (the device has \(queueCount))" }
}
