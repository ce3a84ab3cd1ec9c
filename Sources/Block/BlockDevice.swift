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
    // @unchecked Sendable: `workers` is guarded by `lock`; `rings[i]` is used by one thread at a
    // time (see `QueueRing`); everything else is immutable or Sendable.

    public let volume: VolumeFile
    public let queueCount: Int
    public let maxQueueSize: UInt16 = 1024
    let limits: BlockLimits
    let serial: [UInt8]
    let throttle: VolumeThrottle?
    let logger: Logger
    let warnings: GuestWarnings
    /// Tests only: the next worker that submits I/O fails right after (with the I/O in flight).
    let failAfterSubmitting = Atomic<Bool>(false)
    /// One ring per queue, made here (before any jail) and kept for the device's life.
    private let rings: [QueueRing]
    private let lock = Mutex<[Int: QueueWorker]>([:])

    /// Most data segments in one request (`seg_max`).
    static let segMax: UInt32 = 126
    /// Largest data segment (`size_max`): 256 KiB. It is also the unit of the IOPS limit (a
    /// larger request counts as one I/O per started 256 KiB), so an IOPS-only QoS bounds
    /// bandwidth too.
    static let sizeMax: UInt32 = 256 << 10
    /// Largest total data of one read or write: 32 MiB, our own limit whatever the driver's
    /// descriptors add up to (segMax x sizeMax = 31.5 MiB stays under it, so a driver that
    /// honours the two never meets it). Keeps one request's disk time and used length bounded.
    static let maxTransferBytes: UInt64 = 32 << 20
    /// The most descriptors one chain may have, however it is split (Linux uses seg_max + 2):
    /// without it, one request could make the worker walk an indirect table of 32768 entries.
    static let maxChainDescriptors = 2 * Int(segMax) + 4
    /// Discard and write-zeroes: at most 32 ranges of at most 2^22 sectors (2 GiB) each per request.
    static let maxRangeSectors: UInt32 = 1 << 22
    static let maxRanges: UInt32 = 32

    /// Makes the device and one restricted io_uring per queue. Call it before the process jails
    /// itself: no ring can be made afterwards.
    public init(volume: VolumeFile, queues: Int, logger: Logger) throws(SystemError) {
        self.volume = volume
        self.queueCount = max(1, queues)
        self.logger = logger
        limits = BlockLimits(
            capacitySectors: volume.sizeBytes / 512,
            maxDiscardSectors: BlockDevice.maxRangeSectors, maxDiscardSegments: BlockDevice.maxRanges,
            maxWriteZeroesSectors: BlockDevice.maxRangeSectors, maxWriteZeroesSegments: BlockDevice.maxRanges,
            readOnly: volume.volume.readOnly, segMax: BlockDevice.segMax, sizeMax: BlockDevice.sizeMax,
            maxTransferBytes: BlockDevice.maxTransferBytes)
        var serial = Array((volume.volume.serial ?? volume.volume.id).utf8.prefix(20))
        serial += Array(repeating: 0, count: 20 - serial.count)
        self.serial = serial
        throttle = volume.volume.qos.flatMap { VolumeThrottle($0, ioUnit: UInt64(BlockDevice.sizeMax)) }
        warnings = GuestWarnings(logger: logger)
        var rings: [QueueRing] = []
        for _ in 0..<queueCount {
            rings.append(try QueueRing(volume: volume, maxQueueSize: maxQueueSize, segmentsPerRequest: Int(BlockDevice.segMax)))
        }
        self.rings = rings
    }

    /// Guest-triggered warnings suppressed by the rate limit so far.
    public var suppressedWarnings: UInt64 { warnings.suppressed }

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
        config.sizeMax = BlockDevice.sizeMax
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
        guard setup.index >= 0, setup.index < rings.count else {
            // The backend checks the index against `queueCount` already.
            throw QueueIndexError(index: setup.index, queueCount: rings.count)
        }
        // The ring serves one worker at a time: the previous one stops (its I/O drained) first.
        let previous = lock.withLock { $0.removeValue(forKey: setup.index) }
        _ = previous?.stop()
        let worker = try QueueWorker(device: self, setup: setup, memory: memory, rings: rings[setup.index])
        lock.withLock { $0[setup.index] = worker }
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

/// A queue index the device does not have.
struct QueueIndexError: Error, CustomStringConvertible {
    let index: Int
    let queueCount: Int
    var description: String { "virtio-blk queue \(index) does not exist (the device has \(queueCount))" }
}

/// Per-volume QoS: token buckets for I/O operations and bytes per second, shared by the
/// volume's queues. Requests over budget wait in the available ring; they never fail.
///
/// A request starts when neither bucket is in debt, and is then charged in full, however large:
/// a 4 MiB read against a 1 MiB burst takes the byte bucket 3 MiB into debt, which the refill
/// repays before the next request starts, so the byte rate holds whatever the request size. A
/// request counts as one I/O per started `ioUnit` bytes (at least one), so an IOPS-only limit
/// also bounds bandwidth, to iops x ioUnit.
final class VolumeThrottle: Sendable {
    private let buckets: Mutex<(ios: TokenBucket?, bytes: TokenBucket?)>
    private let ioUnit: UInt64

    init?(_ qos: VolumeQoS, ioUnit: UInt64) {
        guard qos.iops != nil || qos.bytesPerSecond != nil else { return nil }
        let now = monotonicNanoseconds()
        let ios = qos.iops.map { TokenBucket(rate: $0, burst: qos.burstIOs ?? max($0 / 10, 1), now: now) }
        let bytes = qos.bytesPerSecond.map {
            TokenBucket(rate: $0, burst: qos.burstBytes ?? max($0 / 10, 1 << 20), now: now)
        }
        buckets = Mutex((ios, bytes))
        self.ioUnit = max(1, ioUnit)
    }

    /// Whether one more request may start now.
    func admits(now: UInt64) -> Bool {
        buckets.withLock { b in
            b.ios?.refill(now: now)
            b.bytes?.refill(now: now)
            return (b.ios?.canTake(1) ?? true) && (b.bytes?.canTake(1) ?? true)
        }
    }

    /// Nanoseconds until `admits` can say yes (after the refill it did).
    func nanosecondsUntilAdmitted(now: UInt64) -> UInt64 {
        buckets.withLock { b in
            max(b.ios?.nanosecondsUntil(1) ?? 0, b.bytes?.nanosecondsUntil(1) ?? 0)
        }
    }

    /// The I/O count of a request of `bytes`: one per started `ioUnit`, at least one.
    func ioCost(bytes: UInt64) -> UInt64 {
        max(1, bytes / ioUnit + (bytes % ioUnit == 0 ? 0 : 1))
    }

    /// Charges a started request in full; what the buckets do not hold becomes debt.
    func charge(bytes: UInt64) {
        let ios = ioCost(bytes: bytes)
        buckets.withLock { b in
            b.ios?.takeAllowingDebt(ios)
            b.bytes?.takeAllowingDebt(bytes)
        }
    }
}
