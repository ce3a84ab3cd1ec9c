import Config
import HostOS
import Logging
import Metering
import Synchronization
import VhostUser
import Virtio

/// A virtio-blk device served over vhost-user: one volume, up to `queueCount` queues, each
/// served by a `QueueWorker` thread with its own io_uring.
public final class BlockDevice: VhostUserDevice, @unchecked Sendable {
    // @unchecked Sendable: `workers` is guarded by `lock`; everything else is immutable.

    public let volume: VolumeFile
    public let queueCount: Int
    public let maxQueueSize: UInt16 = 1024
    let limits: BlockLimits
    let serial: [UInt8]
    let throttle: VolumeThrottle?
    let logger: Logger
    private let lock = Mutex<[Int: QueueWorker]>([:])

    /// Largest data transfer per request: `segMax` segments.
    static let segMax: UInt32 = 126
    /// Discard and write-zeroes: at most 32 ranges of at most 2^22 sectors (2 GiB) each per request.
    static let maxRangeSectors: UInt32 = 1 << 22
    static let maxRanges: UInt32 = 32

    public init(volume: VolumeFile, queues: Int, logger: Logger) {
        self.volume = volume
        self.queueCount = max(1, queues)
        self.logger = logger
        limits = BlockLimits(
            capacitySectors: volume.sizeBytes / 512,
            maxDiscardSectors: BlockDevice.maxRangeSectors, maxDiscardSegments: BlockDevice.maxRanges,
            maxWriteZeroesSectors: BlockDevice.maxRangeSectors, maxWriteZeroesSegments: BlockDevice.maxRanges,
            readOnly: volume.volume.readOnly, segMax: BlockDevice.segMax)
        var serial = Array((volume.volume.serial ?? volume.volume.id).utf8.prefix(20))
        serial += Array(repeating: 0, count: 20 - serial.count)
        self.serial = serial
        throttle = volume.volume.qos.flatMap(VolumeThrottle.init)
    }

    public var deviceFeatures: UInt64 {
        var features = BlockFeatures.sizeMax | BlockFeatures.segMax | BlockFeatures.blockSize | BlockFeatures.flush
            | BlockFeatures.discard | BlockFeatures.writeZeroes | BlockFeatures.multiQueue
            | VirtioFeatures.eventIndex | VirtioFeatures.indirectDescriptors | VirtioFeatures.version1
        if volume.volume.readOnly { features |= BlockFeatures.readOnly }
        return features
    }

    public var protocolFeatures: UInt64 {
        VhostUserProtocolFeature.mq.mask | VhostUserProtocolFeature.replyAck.mask | VhostUserProtocolFeature.config.mask
    }

    /// The virtio-blk configuration space (virtio 1.2, 5.2.4).
    public var configSpace: [UInt8] {
        var config = BlockConfig(capacity: limits.capacitySectors)
        config.sizeMax = 1 << 20
        config.segMax = BlockDevice.segMax
        config.blockSize = 512
        config.numQueues = UInt16(queueCount)
        config.maxDiscardSectors = limits.maxDiscardSectors
        config.maxDiscardSegments = limits.maxDiscardSegments
        config.discardSectorAlignment = 8
        config.maxWriteZeroesSectors = limits.maxWriteZeroesSectors
        config.maxWriteZeroesSegments = limits.maxWriteZeroesSegments
        config.writeZeroesMayUnmap = 1
        return config.bytes
    }

    public func readConfig(offset: Int, size: Int) -> [UInt8] {
        logger.debug("virtio-blk config read", metadata: [
            "volume.id": "\(volume.volume.id)", "config.offset": "\(offset)", "config.size": "\(size)",
            "volume.capacitySectors": "\(limits.capacitySectors)",
        ])
        let space = configSpace
        return (0..<max(0, size)).map { i in
            let at = offset + i
            return at >= 0 && at < space.count ? space[at] : 0
        }
    }

    public func startQueue(_ setup: VhostQueueSetup, memory: GuestMemory) throws {
        let worker = try QueueWorker(device: self, setup: setup, memory: memory)
        let previous = lock.withLock { workers -> QueueWorker? in
            let old = workers[setup.index]
            workers[setup.index] = worker
            return old
        }
        _ = previous?.stop()
        worker.start()
        logger.info("virtio-blk queue started", metadata: [
            "volume.id": "\(volume.volume.id)", "queue.index": "\(setup.index)", "queue.size": "\(setup.size)",
        ])
    }

    public func stopQueue(_ index: Int) -> UInt16 {
        let worker = lock.withLock { $0.removeValue(forKey: index) }
        return worker?.stop() ?? 0
    }

    public func memoryWillChange() {}

    public func reset() {
        let all = lock.withLock { workers -> [QueueWorker] in
            let list = Array(workers.values)
            workers.removeAll()
            return list
        }
        for worker in all { _ = worker.stop() }
    }
}

/// Per-volume QoS: token buckets for I/O operations and bytes per second, shared by the
/// volume's queues. Requests over budget wait in the available ring; they never fail.
final class VolumeThrottle: Sendable {
    private let buckets: Mutex<(ios: TokenBucket?, bytes: TokenBucket?)>

    init?(_ qos: VolumeQoS) {
        guard qos.iops != nil || qos.bytesPerSecond != nil else { return nil }
        let now = monotonicNanoseconds()
        let ios = qos.iops.map { TokenBucket(rate: $0, burst: qos.burstIOs ?? max($0 / 10, 1), now: now) }
        let bytes = qos.bytesPerSecond.map {
            TokenBucket(rate: $0, burst: qos.burstBytes ?? max($0 / 10, 1 << 20), now: now)
        }
        buckets = Mutex((ios, bytes))
    }

    /// Whether one more request may start now.
    func admits(now: UInt64) -> Bool {
        buckets.withLock { b in
            b.ios?.refill(now: now)
            b.bytes?.refill(now: now)
            return (b.ios?.canTake(1) ?? true) && (b.bytes.map { $0.available > 0 } ?? true)
        }
    }

    /// Charges a started request; it may take the byte bucket to zero, never below.
    func charge(bytes: UInt64) {
        buckets.withLock { b in
            b.ios?.take(1)
            b.bytes?.take(bytes)
        }
    }
}
