import Devices
import Virtio
import XCTest

/// A backend that records what the transport asks of it.
final class RecordingBackend: VirtioBackend {
    var config: [UInt8] = (0..<24).map { UInt8($0 + 1) }
    var acceptDriverOK = true
    var acceptNotify = true
    private(set) var started: [(features: UInt64, queues: [VirtioQueueConfig])] = []
    private(set) var resets = 0
    private(set) var notified: [Int] = []
    private(set) var configWrites: [(Int, [UInt8])] = []

    func readConfig(offset: Int, into data: UnsafeMutableRawBufferPointer) {
        precondition(offset >= 0 && offset + data.count <= config.count, "the transport checks the range")
        for i in data.indices { data[i] = config[offset + i] }
    }

    func writeConfig(offset: Int, from data: UnsafeRawBufferPointer) {
        precondition(offset >= 0 && offset + data.count <= config.count, "the transport checks the range")
        configWrites.append((offset, Array(data)))
    }

    func driverOK(features: UInt64, queues: [VirtioQueueConfig]) -> Bool {
        started.append((features, queues))
        return acceptDriverOK
    }

    func reset() { resets += 1 }

    func notify(queue: Int) -> Bool {
        notified.append(queue)
        return acceptNotify
    }
}

/// A platform that records doorbell addresses, routes and signals.
final class RecordingPlatform: VirtioPlatform {
    var doorbells: [Int: UInt64] = [:]
    var routes: [Int: MSIMessage] = [:]
    private(set) var routeChanges = 0
    private(set) var signals: [(Int, MSIMessage)] = []

    func doorbellChanged(queue: Int, address: UInt64?) -> Bool {
        doorbells[queue] = address
        return true
    }

    func interruptRouteChanged(vector: Int, message: MSIMessage?) -> Bool {
        routes[vector] = message
        routeChanges += 1
        return true
    }

    func signal(vector: Int, message: MSIMessage) { signals.append((vector, message)) }
}

/// A bus with one virtio device, and the accesses a guest driver makes: port I/O on 0xCF8-0xCFF
/// and MMIO in the window.
final class Machine {
    let bus = PCIBus()
    let ports: PCIConfigPorts
    let backend = RecordingBackend()
    let platform = RecordingPlatform()
    let function: VirtioPCIFunction
    let device: Int

    static let features = VirtioFeatures.version1 | VirtioFeatures.eventIndex | BlockFeatures.flush

    init(queues: Int = 2, maxQueueSize: UInt16 = 256) {
        ports = PCIConfigPorts(bus: bus)
        function = VirtioPCIFunction(info: .init(type: .block, features: Machine.features, queueCount: queues,
                                                  maxQueueSize: maxQueueSize, configSize: 24),
                                     backend: backend, platform: platform)
        device = bus.add(function)!
    }

    // Port I/O, as `in`/`out` instructions do.
    func out(_ port: UInt16, size: Int, _ value: UInt32) {
        var v = value
        withUnsafeBytes(of: &v) { ports.write(offset: UInt64(port) - 0xCF8, from: UnsafeRawBufferPointer(rebasing: $0[0..<size])) }
    }

    func inp(_ port: UInt16, size: Int) -> UInt32 {
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { ports.read(offset: UInt64(port) - 0xCF8, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<size])) }
        return v
    }

    static func address(device: Int, register: Int, bus: Int = 0, function: Int = 0) -> UInt32 {
        0x8000_0000 | UInt32(bus) << 16 | UInt32(device) << 11 | UInt32(function) << 8 | UInt32(register & 0xFC)
    }

    /// A configuration read the way drivers make one: address, then the data port lane.
    func config(_ register: Int, size: Int = 4, device: Int? = nil) -> UInt32 {
        out(0xCF8, size: 4, Machine.address(device: device ?? self.device, register: register))
        return inp(0xCFC + UInt16(register & 3), size: size)
    }

    func setConfig(_ register: Int, size: Int = 4, _ value: UInt32, device: Int? = nil) {
        out(0xCF8, size: 4, Machine.address(device: device ?? self.device, register: register))
        out(0xCFC + UInt16(register & 3), size: size, value)
    }

    func read(_ address: UInt64, size: Int) -> UInt64 {
        var v: UInt64 = 0
        withUnsafeMutableBytes(of: &v) { bus.read(offset: address &- bus.windowBase, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<size])) }
        return v
    }

    func write(_ address: UInt64, size: Int, _ value: UInt64) {
        var v = value
        withUnsafeBytes(of: &v) { bus.write(offset: address &- bus.windowBase, from: UnsafeRawBufferPointer(rebasing: $0[0..<size])) }
    }

    /// BAR 0's address as the guest reads it from configuration space.
    var bar: UInt64 { UInt64(config(0x10) & ~0xF) | UInt64(config(0x14)) << 32 }

    func common(_ offset: UInt64, size: Int) -> UInt64 { read(bar + offset, size: size) }
    func setCommon(_ offset: UInt64, size: Int, _ value: UInt64) { write(bar + offset, size: size, value) }

    var status: UInt8 { UInt8(common(0x14, size: 1)) }
    func setStatus(_ value: UInt8) { setCommon(0x14, size: 1, UInt64(value)) }

    /// ACKNOWLEDGE, DRIVER, the features, FEATURES_OK: what every driver does first. Returns the status.
    @discardableResult
    func negotiate(_ features: UInt64 = Machine.features) -> UInt8 {
        setStatus(0)
        setStatus(1)
        setStatus(3)
        setCommon(0x08, size: 4, 0)
        setCommon(0x0C, size: 4, features & 0xFFFF_FFFF)
        setCommon(0x08, size: 4, 1)
        setCommon(0x0C, size: 4, features >> 32)
        setStatus(0x0B)
        return status
    }

    /// Configures and enables queue `queue` with rings at `base`.
    func setUpQueue(_ queue: UInt16, size: UInt16 = 16, base: UInt64 = 0x10_0000, vector: UInt16 = 0xFFFF) {
        setCommon(0x16, size: 2, UInt64(queue))
        setCommon(0x18, size: 2, UInt64(size))
        setCommon(0x1A, size: 2, UInt64(vector))
        setCommon(0x20, size: 4, base & 0xFFFF_FFFF)
        setCommon(0x24, size: 4, base >> 32)
        setCommon(0x28, size: 8, base + 0x1000)
        setCommon(0x30, size: 8, base + 0x2000)
        setCommon(0x1C, size: 2, 1)
    }

    /// Offset of the first capability with `id` (and, for vendor capabilities, `cfgType`),
    /// walking the list as a driver does.
    func capability(id: UInt8, cfgType: UInt8? = nil) -> Int? {
        guard config(0x06, size: 2) & 0x10 != 0 else { return nil }
        var offset = Int(config(0x34, size: 1)) & 0xFC
        var seen = 0
        while offset != 0 && seen < 48 {
            let header = config(offset, size: 4)
            if UInt8(header & 0xFF) == id && (cfgType == nil || UInt8(header >> 24) == cfgType) { return offset }
            offset = Int(header >> 8 & 0xFC)
            seen += 1
        }
        return nil
    }
}

/// A small deterministic generator for the hostile-access tests (xorshift64*).
struct Random {
    var state: UInt64
    init(seed: UInt64) { state = seed | 1 }
    mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}
