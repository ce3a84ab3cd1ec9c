import Virtio

/// Virtio device types (virtio 1.2, 5): the PCI device ID is 0x1040 + type.
public enum VirtioDeviceType: UInt16, Sendable {
    case net = 1
    case block = 2

    /// PCI class code (class << 16 | subclass << 8 | prog-if).
    var classCode: UInt32 {
        switch self {
        case .net: 0x02_00_00    // network controller, Ethernet
        case .block: 0x01_80_00  // mass storage controller, other
        }
    }
}

/// One virtqueue as the driver configured it, handed to the backend at DRIVER_OK. Every field is
/// the guest's: the backend checks the addresses before it uses them.
public struct VirtioQueueConfig: Sendable, Equatable {
    public let index: Int
    /// A power of two, at most the device's maximum.
    public let size: UInt16
    /// The MSI-X vector the queue signals, or `VirtioPCIFunction.noVector`.
    public let vector: UInt16
    public let descriptorTable: UInt64
    /// The available ring.
    public let driverArea: UInt64
    /// The used ring.
    public let deviceArea: UInt64

    public init(index: Int, size: UInt16, vector: UInt16, descriptorTable: UInt64, driverArea: UInt64, deviceArea: UInt64) {
        self.index = index
        self.size = size
        self.vector = vector
        self.descriptorTable = descriptorTable
        self.driverArea = driverArea
        self.deviceArea = deviceArea
    }
}

/// What serves a virtio-pci device's queues and configuration (the VMM's vhost-user glue, or a
/// test double). Called synchronously from the guest's access; none of it may call back into
/// the transport.
public protocol VirtioBackend: AnyObject {
    /// Fills `data` with the device configuration at `offset` (the access lies inside the
    /// configuration size the transport was made with).
    func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer)
    /// The driver wrote the device configuration at `offset` (inside the configuration size).
    func writeConfig(offset: Int, from data: UnsafeRawBufferPointer)
    /// The driver set DRIVER_OK with `features` (a subset of the offered ones, VERSION_1 among
    /// them) and the queues it enabled. False: the device cannot run as configured (a ring outside
    /// guest memory, a backend that refused or went away); the transport sets DEVICE_NEEDS_RESET.
    func driverOK(features: UInt64, queues: [VirtioQueueConfig]) -> Bool
    /// The driver reset the device (wrote 0 to device_status): stop every queue. Also called when
    /// nothing had been started.
    func reset()
    /// A notification for started queue `queue` that reached the VMM as an exit (not through an
    /// ioeventfd). False marks the device DEVICE_NEEDS_RESET.
    func notify(queue: Int) -> Bool
}

/// How the transport tells the platform (the KVM glue) where its doorbells are and where its
/// interrupts go, so the platform can register ioeventfds and irqfds. Called synchronously.
public protocol VirtioPlatform: AnyObject {
    /// Queue `queue`'s doorbell is now a `VirtioPCIFunction.doorbellWidth`-byte write at
    /// guest-physical `address`, or is not decoded anywhere (nil). Called for every queue when
    /// the BAR is placed, moved or stops being decoded. False marks the device DEVICE_NEEDS_RESET.
    func doorbellChanged(queue: Int, address: UInt64?) -> Bool
    /// MSI-X vector `vector` now sends `message`, or nothing (nil: MSI-X off, function or vector
    /// masked). Called only on a change. False marks the device DEVICE_NEEDS_RESET.
    func interruptRouteChanged(vector: Int, message: MSIMessage?) -> Bool
    /// Sends `message`, vector `vector`'s, now (a configuration change interrupt).
    func signal(vector: Int, message: MSIMessage)
}

/// A virtio device on the PCI bus through the virtio-pci modern transport (virtio 1.2, 4.1):
/// vendor 0x1AF4, device 0x1040 + type, revision 1, one 64-bit memory BAR (BAR 0) holding the
/// common configuration, ISR, device configuration and notification structures and the MSI-X
/// table and PBA, each described by a vendor-specific capability, plus the PCI configuration
/// access capability. A pure state machine: every register value is the guest's and is checked.
///
/// - Feature negotiation: FEATURES_OK is refused (left clear) when the driver set features the
///   device did not offer, left out VERSION_1, or skipped ACKNOWLEDGE/DRIVER.
/// - A driver never clears status bits: such a write is ignored, except 0, which resets.
/// - A queue's size, vector and addresses are frozen once it is enabled, and every queue's once
///   DRIVER_OK is set; later writes are ignored. Sizes must be powers of two up to the maximum.
/// - DRIVER_OK starts the backend with the enabled queues; a refusal sets DEVICE_NEEDS_RESET
///   and signals a configuration change.
/// - Doorbells of queues not started, out of range or of the wrong width are ignored.
public final class VirtioPCIFunction: PCIFunction {
    public static let vendorID: UInt16 = 0x1AF4
    /// VIRTIO_MSI_NO_VECTOR.
    public static let noVector: UInt16 = 0xFFFF
    /// Queues per device at most (virtio-net: 32 pairs).
    public static let maximumQueues = 64
    /// The width of a doorbell write (the queue index, without VIRTIO_F_NOTIFICATION_DATA).
    public static let doorbellWidth: UInt32 = 2

    /// device_status bits.
    public enum Status {
        public static let acknowledge: UInt8 = 1
        public static let driver: UInt8 = 2
        public static let driverOK: UInt8 = 4
        public static let featuresOK: UInt8 = 8
        public static let needsReset: UInt8 = 0x40
        public static let failed: UInt8 = 0x80
        /// The bits a driver may set.
        static let driverBits: UInt8 = acknowledge | driver | driverOK | featuresOK | failed
    }

    /// virtio_pci_cap cfg_type values.
    public enum CapabilityType {
        public static let common: UInt8 = 1
        public static let notify: UInt8 = 2
        public static let isr: UInt8 = 3
        public static let device: UInt8 = 4
        public static let pciConfig: UInt8 = 5
    }

    // BAR 0 layout: one structure per page, so each can be mapped (and trapped) on its own.
    public static let bar = 0
    public static let commonOffset: UInt64 = 0x0000
    /// Up to queue_reset (the common configuration of virtio 1.2).
    public static let commonLength: UInt64 = 0x3C
    public static let isrOffset: UInt64 = 0x1000
    public static let isrLength: UInt64 = 4
    public static let deviceOffset: UInt64 = 0x2000
    public static let notifyOffset: UInt64 = 0x3000
    public static let notifyMultiplier: UInt64 = 4
    public static let tableOffset: UInt64 = 0x4000
    public static let pendingOffset: UInt64 = 0x6000
    public static let barSize: UInt64 = 0x8000

    /// What the device is, as the VMM configured it.
    public struct Info: Sendable, Equatable {
        public var type: VirtioDeviceType
        /// Offered features; VERSION_1 is added.
        public var features: UInt64
        /// 1...`maximumQueues`.
        public var queueCount: Int
        /// A power of two, 1...32768.
        public var maxQueueSize: UInt16
        /// Bytes of device configuration, 0...256.
        public var configSize: Int

        public init(type: VirtioDeviceType, features: UInt64, queueCount: Int, maxQueueSize: UInt16, configSize: Int) {
            self.type = type
            self.features = features
            self.queueCount = queueCount
            self.maxQueueSize = maxQueueSize
            self.configSize = configSize
        }
    }

    /// One queue's registers.
    public struct QueueState: Sendable, Equatable {
        public var size: UInt16
        public var vector: UInt16 = VirtioPCIFunction.noVector
        public var enabled = false
        public var descriptorTable: UInt64 = 0
        public var driverArea: UInt64 = 0
        public var deviceArea: UInt64 = 0
    }

    public let info: Info
    public private(set) var configSpace: PCIConfigSpace
    public private(set) var msix: MSIXTable
    private let backend: VirtioBackend
    private let platform: VirtioPlatform
    /// Offsets of the MSI-X and the PCI configuration access capabilities.
    private let msixCapability: Int
    private let windowCapability: Int

    public private(set) var status: UInt8 = 0
    public private(set) var driverFeatures: UInt64 = 0
    private var deviceFeatureSelect: UInt32 = 0
    private var driverFeatureSelect: UInt32 = 0
    public private(set) var configVector: UInt16 = VirtioPCIFunction.noVector
    public private(set) var configGeneration: UInt8 = 0
    private var queueSelect: UInt16 = 0
    public private(set) var queues: [QueueState]
    public private(set) var isr: UInt8 = 0
    /// Whether the backend runs the queues (DRIVER_OK accepted, no failure since).
    public private(set) var started = false
    /// Where BAR 0 is decoded, if anywhere.
    public private(set) var barAddress: UInt64?
    private var reportedRoutes: [MSIMessage?]

    public init(info: Info, backend: VirtioBackend, platform: VirtioPlatform) {
        precondition(info.queueCount >= 1 && info.queueCount <= VirtioPCIFunction.maximumQueues, "1 to 64 queues")
        precondition(info.maxQueueSize >= 1 && info.maxQueueSize <= 32768 && info.maxQueueSize & (info.maxQueueSize - 1) == 0,
                     "the maximum queue size is a power of two up to 32768")
        precondition(info.configSize >= 0 && info.configSize <= 256, "device configuration of 0 to 256 bytes")
        var info = info
        info.features |= VirtioFeatures.version1
        self.info = info
        self.backend = backend
        self.platform = platform
        queues = Array(repeating: QueueState(size: info.maxQueueSize), count: info.queueCount)
        let msix = MSIXTable(vectorCount: info.queueCount + 1)
        self.msix = msix
        reportedRoutes = Array(repeating: nil, count: msix.vectorCount)

        var space = PCIConfigSpace(vendorID: VirtioPCIFunction.vendorID, deviceID: 0x1040 + info.type.rawValue, revision: 1,
                                   classCode: info.type.classCode, subsystemVendorID: VirtioPCIFunction.vendorID,
                                   subsystemID: 0x40)
        space.addBAR(VirtioPCIFunction.bar, PCIBar(size: VirtioPCIFunction.barSize, kind: .memory64))
        let capability = msix.capability(bar: VirtioPCIFunction.bar, tableOffset: UInt32(VirtioPCIFunction.tableOffset),
                                         pendingOffset: UInt32(VirtioPCIFunction.pendingOffset))
        msixCapability = space.addCapability(id: MSIXTable.capabilityID, body: capability.body, writableMask: capability.writable)
        func virtio(_ type: UInt8, offset: UInt64, length: UInt64, extra: UInt32? = nil, writable: Bool = false) -> Int {
            var body: [UInt8] = [extra == nil ? 16 : 20, type, UInt8(VirtioPCIFunction.bar), 0, 0, 0]
            for value in [UInt32(offset), UInt32(length)] + (extra.map { [$0] } ?? []) {
                body += (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * UInt32($0))) }
            }
            var mask = [UInt8](repeating: 0, count: body.count)
            if writable {
                // cap.bar, cap.offset, cap.length and pci_cfg_data.
                mask[2] = 0xFF
                for i in 6..<body.count { mask[i] = 0xFF }
            }
            return space.addCapability(id: 0x09, body: body, writableMask: mask)
        }
        _ = virtio(CapabilityType.common, offset: VirtioPCIFunction.commonOffset, length: VirtioPCIFunction.commonLength)
        _ = virtio(CapabilityType.notify, offset: VirtioPCIFunction.notifyOffset,
                   length: VirtioPCIFunction.notifyMultiplier * UInt64(info.queueCount), extra: UInt32(VirtioPCIFunction.notifyMultiplier))
        _ = virtio(CapabilityType.isr, offset: VirtioPCIFunction.isrOffset, length: VirtioPCIFunction.isrLength)
        if info.configSize > 0 {
            _ = virtio(CapabilityType.device, offset: VirtioPCIFunction.deviceOffset, length: UInt64(info.configSize))
        }
        windowCapability = virtio(CapabilityType.pciConfig, offset: 0, length: 0, extra: 0, writable: true)
        configSpace = space
    }

    // MARK: Configuration space

    private var windowData: Int { windowCapability + 16 }

    /// The BAR range the PCI configuration access capability selects now, if it is a valid one.
    private func windowTarget() -> (offset: UInt64, length: Int)? {
        let bar = configSpace.raw(windowCapability + 4, size: 1)
        let offset = UInt64(configSpace.raw(windowCapability + 8, size: 4))
        let length = UInt64(configSpace.raw(windowCapability + 12, size: 4))
        guard bar == UInt32(VirtioPCIFunction.bar), length == 1 || length == 2 || length == 4, offset % length == 0,
              offset + length <= VirtioPCIFunction.barSize else { return nil }
        return (offset, Int(length))
    }

    private static func overlaps(_ offset: Int, _ size: Int, _ start: Int, _ length: Int) -> Bool {
        offset < start + length && start < offset + size
    }

    public func readConfig(offset: Int, size: Int) -> UInt32 {
        guard PCIConfigSpace.isValidAccess(offset: offset, size: size) else { return 0xFFFF_FFFF }
        if VirtioPCIFunction.overlaps(offset, size, windowData, 4), let target = windowTarget() {
            var value: UInt64 = 0
            withUnsafeMutableBytes(of: &value) { readBAR(VirtioPCIFunction.bar, offset: target.offset, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<target.length])) }
            configSpace.setRaw(windowData, size: target.length, UInt32(truncatingIfNeeded: value))
        }
        return configSpace.read(offset: offset, size: size) ?? 0xFFFF_FFFF
    }

    public func writeConfig(offset: Int, size: Int, value: UInt32) {
        guard PCIConfigSpace.isValidAccess(offset: offset, size: size) else { return }
        configSpace.write(offset: offset, size: size, value: value)
        if VirtioPCIFunction.overlaps(offset, size, msixCapability + 2, 2) {
            msix.setControl(UInt16(truncatingIfNeeded: configSpace.raw(msixCapability + 2, size: 2)))
            routesChanged()
        }
        if VirtioPCIFunction.overlaps(offset, size, windowData, 4), let target = windowTarget() {
            var data = UInt64(configSpace.raw(windowData, size: target.length))
            withUnsafeBytes(of: &data) { writeBAR(VirtioPCIFunction.bar, offset: target.offset, from: UnsafeRawBufferPointer(rebasing: $0[0..<target.length])) }
        }
    }

    public func barPlaced(_ index: Int, at address: UInt64?) {
        guard index == VirtioPCIFunction.bar else { return }
        barAddress = address
        for queue in 0..<info.queueCount where !platform.doorbellChanged(queue: queue, address: doorbell(queue: queue)) {
            fail()
        }
    }

    /// Guest-physical address of queue `queue`'s doorbell, while the BAR is decoded.
    public func doorbell(queue: Int) -> UInt64? {
        guard let base = barAddress, queue >= 0, queue < info.queueCount else { return nil }
        return base + VirtioPCIFunction.notifyOffset + VirtioPCIFunction.notifyMultiplier * UInt64(queue)
    }

    // MARK: BAR 0

    private enum Region {
        case common(Int)
        case isr
        case device(Int)
        case notify(UInt64)
        case table(UInt64)
        case pending(UInt64)
    }

    private func region(_ offset: UInt64, _ count: Int) -> Region? {
        let n = UInt64(count)
        func inside(_ start: UInt64, _ length: UInt64) -> Bool { offset >= start && offset - start < length && n <= length - (offset - start) }
        if inside(VirtioPCIFunction.commonOffset, VirtioPCIFunction.commonLength) { return .common(Int(offset - VirtioPCIFunction.commonOffset)) }
        if inside(VirtioPCIFunction.isrOffset, VirtioPCIFunction.isrLength) { return .isr }
        if inside(VirtioPCIFunction.deviceOffset, UInt64(info.configSize)) { return .device(Int(offset - VirtioPCIFunction.deviceOffset)) }
        if inside(VirtioPCIFunction.notifyOffset, VirtioPCIFunction.notifyMultiplier * UInt64(info.queueCount)) {
            return .notify(offset - VirtioPCIFunction.notifyOffset)
        }
        if inside(VirtioPCIFunction.tableOffset, UInt64(msix.tableSize)) { return .table(offset - VirtioPCIFunction.tableOffset) }
        if inside(VirtioPCIFunction.pendingOffset, UInt64(msix.pendingSize)) { return .pending(offset - VirtioPCIFunction.pendingOffset) }
        return nil
    }

    public func readBAR(_ index: Int, offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        guard index == VirtioPCIFunction.bar, let region = region(offset, data.count) else {
            data.fillWithOnes()
            return
        }
        switch region {
        case .common(let at):
            guard let value = readCommon(at, data.count) else { return data.fillWithOnes() }
            data.storeLittleEndian(value)
        case .isr:
            // Reading the ISR clears it (virtio 1.2, 4.1.4.5).
            data.storeLittleEndian(offset == VirtioPCIFunction.isrOffset ? UInt64(isr) : 0)
            if offset == VirtioPCIFunction.isrOffset { isr = 0 }
        case .device(let at):
            backend.readConfig(offset: at, into: data)
        case .notify:
            data.storeLittleEndian(0)
        case .table(let at):
            msix.readTable(offset: at, into: data)
        case .pending(let at):
            msix.readPending(offset: at, into: data)
        }
    }

    public func writeBAR(_ index: Int, offset: UInt64, from data: UnsafeRawBufferPointer) {
        guard index == VirtioPCIFunction.bar, let region = region(offset, data.count) else { return }
        switch region {
        case .common(let at):
            writeCommon(at, data.count, data.littleEndianValue)
        case .isr, .pending:
            break
        case .device(let at):
            backend.writeConfig(offset: at, from: data)
        case .notify(let at):
            guard data.count == 2 || data.count == 4, at % VirtioPCIFunction.notifyMultiplier == 0 else { return }
            let queue = Int(at / VirtioPCIFunction.notifyMultiplier)
            guard started, queue < queues.count, queues[queue].enabled else { return }
            if !backend.notify(queue: queue) { fail() }
        case .table(let at):
            if msix.writeTable(offset: at, from: data) != nil { routesChanged() }
        }
    }

    // MARK: Common configuration (virtio 1.2, 4.1.4.3)

    private var selected: Int? {
        Int(queueSelect) < queues.count ? Int(queueSelect) : nil
    }

    private func readCommon(_ offset: Int, _ size: Int) -> UInt64? {
        let queue = selected.map { queues[$0] }
        switch (offset, size) {
        case (0x00, 4): return UInt64(deviceFeatureSelect)
        case (0x04, 4): return deviceFeatureSelect < 2 ? info.features >> (32 * UInt64(deviceFeatureSelect)) & 0xFFFF_FFFF : 0
        case (0x08, 4): return UInt64(driverFeatureSelect)
        case (0x0C, 4): return driverFeatureSelect < 2 ? driverFeatures >> (32 * UInt64(driverFeatureSelect)) & 0xFFFF_FFFF : 0
        case (0x10, 2): return UInt64(configVector)
        case (0x12, 2): return UInt64(queues.count)
        case (0x14, 1): return UInt64(status)
        case (0x15, 1): return UInt64(configGeneration)
        case (0x16, 2): return UInt64(queueSelect)
        case (0x18, 2): return UInt64(queue?.size ?? 0)
        case (0x1A, 2): return UInt64(queue?.vector ?? VirtioPCIFunction.noVector)
        case (0x1C, 2): return queue?.enabled == true ? 1 : 0
        case (0x1E, 2): return queue == nil ? 0 : UInt64(queueSelect)
        case (0x38, 2), (0x3A, 2): return 0  // queue_notif_config_data, queue_reset: not offered
        default:
            guard offset >= 0x20, offset < 0x38, let field = addressField(offset, size) else { return nil }
            let value: UInt64 = switch field.index {
            case 0: queue?.descriptorTable ?? 0
            case 1: queue?.driverArea ?? 0
            default: queue?.deviceArea ?? 0
            }
            return size == 8 ? value : value >> field.shift & 0xFFFF_FFFF
        }
    }

    /// Which of queue_desc, queue_driver, queue_device (0, 1, 2) an access reaches, and which half.
    private func addressField(_ offset: Int, _ size: Int) -> (index: Int, shift: UInt64)? {
        let relative = offset - 0x20
        switch size {
        case 8 where relative % 8 == 0: return (relative / 8, 0)
        case 4 where relative % 4 == 0: return (relative / 8, relative % 8 == 0 ? 0 : 32)
        default: return nil
        }
    }

    private func writeCommon(_ offset: Int, _ size: Int, _ value: UInt64) {
        switch (offset, size) {
        case (0x00, 4): deviceFeatureSelect = UInt32(truncatingIfNeeded: value)
        case (0x08, 4): driverFeatureSelect = UInt32(truncatingIfNeeded: value)
        case (0x0C, 4):
            guard status & Status.featuresOK == 0, driverFeatureSelect < 2 else { return }
            let shift = 32 * UInt64(driverFeatureSelect)
            driverFeatures = driverFeatures & ~(0xFFFF_FFFF << shift) | (value & 0xFFFF_FFFF) << shift
        case (0x10, 2): configVector = checkedVector(UInt16(truncatingIfNeeded: value))
        case (0x14, 1): writeStatus(UInt8(truncatingIfNeeded: value))
        case (0x16, 2): queueSelect = UInt16(truncatingIfNeeded: value)
        case (0x18, 2):
            guard let q = configurableQueue() else { return }
            let size = UInt16(truncatingIfNeeded: value)
            guard size >= 1, size <= info.maxQueueSize, size & (size - 1) == 0 else { return }
            queues[q].size = size
        case (0x1A, 2):
            guard let q = configurableQueue() else { return }
            queues[q].vector = checkedVector(UInt16(truncatingIfNeeded: value))
        case (0x1C, 2):
            // Only 1 enables; 0 would need VIRTIO_F_RING_RESET, which is not offered.
            guard value == 1, let q = configurableQueue() else { return }
            queues[q].enabled = true
        default:
            guard offset >= 0x20, offset < 0x38, let field = addressField(offset, size), let q = configurableQueue() else { return }
            func merged(_ old: UInt64) -> UInt64 {
                size == 8 ? value : old & ~(0xFFFF_FFFF << field.shift) | (value & 0xFFFF_FFFF) << field.shift
            }
            switch field.index {
            case 0: queues[q].descriptorTable = merged(queues[q].descriptorTable)
            case 1: queues[q].driverArea = merged(queues[q].driverArea)
            default: queues[q].deviceArea = merged(queues[q].deviceArea)
            }
        }
    }

    /// The selected queue, when its configuration may still change.
    private func configurableQueue() -> Int? {
        guard let q = selected, !queues[q].enabled, status & Status.driverOK == 0 else { return nil }
        return q
    }

    /// A vector the MSI-X table has, or NO_VECTOR (what the driver reads back when mapping failed).
    private func checkedVector(_ vector: UInt16) -> UInt16 {
        Int(vector) < msix.vectorCount ? vector : VirtioPCIFunction.noVector
    }

    private func writeStatus(_ value: UInt8) {
        if value == 0 {
            reset()
            return
        }
        let old = status & Status.driverBits
        let requested = value & Status.driverBits
        // A driver never clears a bit; only a reset does.
        guard old & ~requested == 0 else { return }
        var new = status | requested
        if requested & Status.featuresOK != 0 && old & Status.featuresOK == 0 {
            let acceptable = new & (Status.acknowledge | Status.driver) == Status.acknowledge | Status.driver
                && driverFeatures & ~info.features == 0 && driverFeatures & VirtioFeatures.version1 != 0
            if !acceptable { new &= ~(Status.featuresOK | Status.driverOK) }
        }
        if new & Status.driverOK != 0 && old & Status.driverOK == 0 {
            guard new & Status.featuresOK != 0, new & (Status.needsReset | Status.failed) == 0 else {
                status = new & ~Status.driverOK
                return
            }
            status = new
            let enabled = queues.indices.filter { queues[$0].enabled }.map { i in
                VirtioQueueConfig(index: i, size: queues[i].size, vector: queues[i].vector, descriptorTable: queues[i].descriptorTable,
                                  driverArea: queues[i].driverArea, deviceArea: queues[i].deviceArea)
            }
            if backend.driverOK(features: driverFeatures, queues: enabled) {
                started = true
            } else {
                fail()
            }
            return
        }
        status = new
    }

    /// Resets the device as a write of 0 to device_status does. MSI-X state is PCI state and stays.
    public func reset() {
        status = 0
        driverFeatures = 0
        deviceFeatureSelect = 0
        driverFeatureSelect = 0
        configVector = VirtioPCIFunction.noVector
        queueSelect = 0
        queues = Array(repeating: QueueState(size: info.maxQueueSize), count: info.queueCount)
        isr = 0
        started = false
        backend.reset()
    }

    /// The backend failed (it went away, refused a request): sets DEVICE_NEEDS_RESET and signals a
    /// configuration change, so the driver resets the device.
    public func fail() {
        started = false
        guard status & Status.needsReset == 0 else { return }
        status |= Status.needsReset
        signalConfigChange()
    }

    /// The device configuration changed: bumps config_generation and signals the driver.
    public func configChanged() {
        configGeneration &+= 1
        signalConfigChange()
    }

    private func signalConfigChange() {
        isr |= 2
        let vector = Int(configVector)
        guard msix.isUsable(vector: vector) else { return }
        if let message = msix.message(vector: vector) {
            platform.signal(vector: vector, message: message)
        } else {
            msix.setPending(vector)
        }
    }

    /// Tells the platform about every vector whose message changed, then sends what was pending.
    private func routesChanged() {
        var ok = true
        for vector in 0..<msix.vectorCount {
            let message = msix.message(vector: vector)
            guard message != reportedRoutes[vector] else { continue }
            reportedRoutes[vector] = message
            if !platform.interruptRouteChanged(vector: vector, message: message) { ok = false }
        }
        for vector in msix.takeDeliverable() {
            if let message = msix.message(vector: vector) { platform.signal(vector: vector, message: message) }
        }
        if !ok { fail() }
    }
}
