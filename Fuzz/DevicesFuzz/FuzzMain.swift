// libFuzzer target for the PCI bus and the virtio-pci transport models.
//
// Input: byte 0 sets the backend's answers (bit 0: refuse DRIVER_OK, bit 1: refuse notifies,
// bit 2: the platform refuses doorbells, bit 3: it refuses routes); then operations, each an
// opcode byte and its operands (see `step`): port I/O on 0xCF8-0xCFF, MMIO anywhere in the
// window or aimed at a BAR structure, direct configuration accesses, and a driver's usual moves
// (negotiate, set up a queue) so the state machine's depths are reached. Besides "never traps"
// (and ASan), it checks after every operation the invariants the VMM relies on: read-only
// fields unchanged, queue sizes and vectors valid, features accepted only when offered with
// VERSION_1, started queues frozen as the backend got them, decoded BARs inside the window and
// apart, the platform's doorbells where the transport says.
import Devices
import Virtio

final class FuzzBackend: VirtioBackend {
    var refuseDriverOK = false
    var refuseNotify = false
    var started: [VirtioQueueConfig] = []
    let configSize: Int
    init(configSize: Int) { self.configSize = configSize }

    func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        precondition(offset >= 0 && offset + data.count <= configSize, "config read outside the configuration")
        for i in data.indices { data[i] = UInt8(truncatingIfNeeded: offset + i) }
    }

    func writeConfig(offset: Int, from data: UnsafeRawBufferPointer) {
        precondition(offset >= 0 && offset + data.count <= configSize, "config write outside the configuration")
    }

    func driverOK(features: UInt64, queues: [VirtioQueueConfig]) -> Bool {
        started = refuseDriverOK ? [] : queues
        return !refuseDriverOK
    }

    func reset() { started = [] }

    func notify(queue: Int) -> Bool {
        precondition(started.contains { $0.index == queue }, "a doorbell for a queue that was not started reached the backend")
        return !refuseNotify
    }
}

final class FuzzPlatform: VirtioPlatform {
    var refuseDoorbells = false
    var refuseRoutes = false
    var doorbells: [Int: UInt64] = [:]
    let window: Range<UInt64>
    init(window: Range<UInt64>) { self.window = window }

    func doorbellChanged(queue: Int, address: UInt64?) -> Bool {
        if let address { precondition(window.contains(address) && address % 4 == 0, "doorbell outside the window") }
        doorbells[queue] = address
        return !refuseDoorbells
    }

    func interruptRouteChanged(vector: Int, message: MSIMessage?) -> Bool { !refuseRoutes }

    func signal(vector: Int, message: MSIMessage) {}
}

struct Input {
    let bytes: UnsafeBufferPointer<UInt8>
    var at = 1
    var atEnd: Bool { at >= bytes.count }
    mutating func byte() -> UInt8 {
        defer { at += 1 }
        return at < bytes.count ? bytes[at] : 0
    }
    mutating func value(_ count: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<count { v |= UInt64(byte()) << (8 * UInt64(i)) }
        return v
    }
}

func read(_ device: BusDevice, _ offset: UInt64, _ size: Int) -> UInt64 {
    var v: UInt64 = 0
    withUnsafeMutableBytes(of: &v) { device.read(offset: offset, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<size])) }
    return v
}

func write(_ device: BusDevice, _ offset: UInt64, _ size: Int, _ value: UInt64) {
    var v = value
    withUnsafeBytes(of: &v) { device.write(offset: offset, from: UnsafeRawBufferPointer(rebasing: $0[0..<size])) }
}

let sizes = [1, 2, 4, 8, 3, 0, 5, 16]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    guard count >= 1 else { return 0 }
    var input = Input(bytes: UnsafeBufferPointer(start: data, count: count))
    let bus = PCIBus()
    let ports = PCIConfigPorts(bus: bus)
    let window = bus.windowBase..<bus.windowEnd
    let backends = [FuzzBackend(configSize: 60), FuzzBackend(configSize: 24)]
    let platforms = [FuzzPlatform(window: window), FuzzPlatform(window: window)]
    let infos = [
        VirtioPCIFunction.Info(type: .block, features: VirtioFeatures.version1 | VirtioFeatures.eventIndex | BlockFeatures.flush,
                               queueCount: 3, maxQueueSize: 64, configSize: 60),
        VirtioPCIFunction.Info(type: .net, features: NetFeatures.mac | NetFeatures.mergeableRxBuffers,
                               queueCount: 2, maxQueueSize: 256, configSize: 24),
    ]
    let functions = (0..<2).map { VirtioPCIFunction(info: infos[$0], backend: backends[$0], platform: platforms[$0]) }
    let slots = functions.map { bus.add($0)! }
    let answers = data[0]
    for backend in backends {
        backend.refuseDriverOK = answers & 1 != 0
        backend.refuseNotify = answers & 2 != 0
    }
    for platform in platforms {
        platform.refuseDoorbells = answers & 4 != 0
        platform.refuseRoutes = answers & 8 != 0
    }
    let identity = [0, 1, 2].map { device in [0x00, 0x08, 0x0C, 0x2C, 0x34, 0x3C].map { bus.readConfig(bus: 0, device: UInt8(device), function: 0, offset: $0, size: 4) & ($0 == 0x0C ? 0x00FF_0000 : $0 == 0x3C ? 0xFFFF_FF00 : 0xFFFF_FFFF) } }
    let capabilities = functions.map { f in (0x40..<0x100).map { f.configSpace.raw($0, size: 1) } }

    var steps = 0
    while !input.atEnd && steps < 500 {
        steps += 1
        let which = Int(input.byte() & 1)
        let f = functions[which]
        let bar = f.barAddress ?? bus.windowBase
        switch input.byte() % 12 {
        case 0:
            write(ports, 0, 4, input.value(4))
        case 1:
            let lane = UInt64(input.byte() % 8), size = sizes[Int(input.byte() % 8)]
            if size >= 1 && size <= 8 {
                if input.byte() & 1 == 0 { _ = read(ports, lane, size) } else { write(ports, lane, size, input.value(4)) }
            }
        case 2, 3:
            // Aimed at one of the BAR's structures.
            let base: UInt64 = [0, 0x1000, 0x2000, 0x3000, 0x4000, 0x6000][Int(input.byte() % 6)]
            let offset = base + input.value(1) % 0x80
            let size = sizes[Int(input.byte() % 8)]
            guard size >= 1 && size <= 8 else { continue }
            if input.byte() & 1 == 0 { _ = read(bus, bar &+ offset &- bus.windowBase, size) } else { write(bus, bar &+ offset &- bus.windowBase, size, input.value(8)) }
        case 4:
            let offset = input.value(4)
            let size = sizes[Int(input.byte() % 8)]
            guard size >= 1 && size <= 8 else { continue }
            if input.byte() & 1 == 0 { _ = read(bus, offset, size) } else { write(bus, offset, size, input.value(8)) }
        case 5:
            let device = UInt8(input.byte() % 34), offset = Int(input.byte()), size = sizes[Int(input.byte() % 8)]
            if input.byte() & 1 == 0 {
                _ = bus.readConfig(bus: input.byte() % 2, device: device, function: input.byte() % 2, offset: offset, size: size)
            } else {
                bus.writeConfig(bus: 0, device: device, function: 0, offset: offset, size: size, value: UInt32(truncatingIfNeeded: input.value(4)))
            }
        case 6:
            // A driver's negotiation: reset, ACK, DRIVER, features, FEATURES_OK.
            let common = bar &- bus.windowBase
            let features = input.byte() & 1 == 0 ? f.info.features : input.value(8)
            for (offset, size, value) in [(0x14, 1, 0), (0x14, 1, 1), (0x14, 1, 3), (0x08, 4, 0), (0x0C, 4, features & 0xFFFF_FFFF),
                                          (0x08, 4, 1), (0x0C, 4, features >> 32), (0x14, 1, 0xB)] as [(UInt64, Int, UInt64)] {
                write(bus, common &+ offset, size, value)
            }
        case 7:
            // A queue set-up, enabled.
            let common = bar &- bus.windowBase
            let queue = UInt64(input.byte() % 4), size = UInt64(1) << UInt64(input.byte() % 10)
            for (offset, width, value) in [(0x16, 2, queue), (0x18, 2, size), (0x1A, 2, UInt64(input.byte() % 5)), (0x20, 8, input.value(8)),
                                           (0x28, 8, input.value(8)), (0x30, 8, input.value(8)), (0x1C, 2, 1)] as [(UInt64, Int, UInt64)] {
                write(bus, common &+ offset, width, value)
            }
        case 8:
            write(bus, bar &+ 0x14 &- bus.windowBase, 1, UInt64(input.byte()))
        case 9:
            if input.byte() & 1 == 0 { f.fail() } else { f.configChanged() }
        case 10:
            // MSI-X on/off and masks, through configuration space.
            bus.writeConfig(bus: 0, device: UInt8(slots[which]), function: 0, offset: 0x42, size: 2, value: UInt32(input.byte() & 0xC0) << 8)
        default:
            // A doorbell for a queue.
            write(bus, bar &+ 0x3000 &+ UInt64(input.byte() % 16) &- bus.windowBase, sizes[Int(input.byte() % 4)], UInt64(input.byte()))
        }

        // Invariants.
        for device in 0..<3 {
            let now = [0x00, 0x08, 0x0C, 0x2C, 0x34, 0x3C].map { bus.readConfig(bus: 0, device: UInt8(device), function: 0, offset: $0, size: 4) & ($0 == 0x0C ? 0x00FF_0000 : $0 == 0x3C ? 0xFFFF_FF00 : 0xFFFF_FFFF) }
            precondition(now == identity[device], "read-only header fields changed on device \(device)")
        }
        for (i, f) in functions.enumerated() {
            let space = f.configSpace
            precondition(space.raw(0x10, size: 4) & 0xF == 0x4, "BAR type bits changed")
            let accessWindow = pciConfigCapability(space)
            for offset in 0x40..<0x100 {
                let mask: UInt32 = offset == 0x43 ? 0x3F : 0xFF  // MSI-X control's enable and mask bits
                let before = capabilities[i][offset - 0x40], after = space.raw(offset, size: 1)
                // The PCI configuration access capability's bar/offset/length/data are writable.
                if offset >= accessWindow + 4 && offset < accessWindow + 20 { continue }
                precondition(before & mask == after & mask, "read-only capability byte 0x\(String(offset, radix: 16)) changed")
            }
            for queue in f.queues {
                precondition(queue.size >= 1 && queue.size <= f.info.maxQueueSize && queue.size & (queue.size - 1) == 0, "bad queue size")
                precondition(queue.vector == VirtioPCIFunction.noVector || Int(queue.vector) < f.msix.vectorCount, "bad vector")
            }
            if f.status & VirtioPCIFunction.Status.featuresOK != 0 {
                precondition(f.driverFeatures & ~f.info.features == 0 && f.driverFeatures & VirtioFeatures.version1 != 0,
                             "FEATURES_OK with features not offered")
            }
            if f.started {
                precondition(f.status & (VirtioPCIFunction.Status.driverOK | VirtioPCIFunction.Status.needsReset) == VirtioPCIFunction.Status.driverOK)
                for queue in backends[i].started {
                    let state = f.queues[queue.index]
                    precondition(state.enabled && state.size == queue.size && state.vector == queue.vector
                                 && state.descriptorTable == queue.descriptorTable && state.driverArea == queue.driverArea
                                 && state.deviceArea == queue.deviceArea, "a started queue changed")
                }
            }
            for queue in 0..<f.info.queueCount {
                precondition(platforms[i].doorbells[queue] == f.doorbell(queue: queue), "the platform's doorbell is stale")
            }
        }
        let decoded = bus.decoded
        for (i, a) in decoded.enumerated() {
            precondition(a.address >= bus.windowBase && a.address + a.size <= bus.windowEnd, "a BAR decoded outside the window")
            for b in decoded[(i + 1)...] { precondition(a.address + a.size <= b.address || b.address + b.size <= a.address, "overlapping BARs decoded") }
        }
    }
    return 0
}

/// Offset of the PCI configuration access capability (vendor capability with cfg_type 5).
func pciConfigCapability(_ space: PCIConfigSpace) -> Int {
    var offset = Int(space.raw(0x34, size: 1))
    var seen = 0
    while offset != 0 && seen < 64 {
        if space.raw(offset, size: 1) == 0x09 && space.raw(offset + 3, size: 1) == 5 { return offset }
        offset = Int(space.raw(offset + 1, size: 1))
        seen += 1
    }
    return -100
}
