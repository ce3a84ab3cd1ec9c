/// One PCI function on the bus: its configuration space and the memory BARs it decodes.
///
/// The bus calls these with checked values only: `readConfig`/`writeConfig` with a naturally
/// aligned access inside the 256 bytes, `readBAR`/`writeBAR` with an access of 1-8 bytes that
/// lies wholly inside BAR `index` (offset from the BAR's start).
public protocol PCIFunction: AnyObject {
    /// The configuration space as it is now (the bus reads BAR sizes and addresses and the command
    /// register from it).
    var configSpace: PCIConfigSpace { get }
    func readConfig(offset: Int, size: Int) -> UInt32
    func writeConfig(offset: Int, size: Int, value: UInt32)
    func readBAR(_ index: Int, offset: UInt64, into data: UnsafeMutableRawBufferPointer)
    func writeBAR(_ index: Int, offset: UInt64, from data: UnsafeRawBufferPointer)
    /// The bus decodes BAR `index` at guest-physical `address` from now on, or no longer (nil):
    /// the guest moved it, switched memory decoding, or moved it outside the window.
    func barPlaced(_ index: Int, at address: UInt64?)
}

extension PCIFunction {
    public func readBAR(_ index: Int, offset: UInt64, into data: UnsafeMutableRawBufferPointer) { data.fillWithOnes() }
    public func writeBAR(_ index: Int, offset: UInt64, from data: UnsafeRawBufferPointer) {}
    public func barPlaced(_ index: Int, at address: UInt64?) {}
}

/// The host bridge at 00.0: a function with no BARs, there so guests that look for one (Linux's
/// configuration mechanism probe checks for a host bridge class) find it.
public final class PCIHostBridge: PCIFunction {
    public private(set) var configSpace: PCIConfigSpace

    /// Red Hat's vendor ID and the ID QEMU uses for its generic PCIe host bridge: no guest driver
    /// binds quirks to it. Class 06.00.00: host bridge.
    public init(vendorID: UInt16 = 0x1B36, deviceID: UInt16 = 0x0008) {
        configSpace = PCIConfigSpace(vendorID: vendorID, deviceID: deviceID, revision: 0, classCode: 0x06_00_00,
                                     subsystemVendorID: vendorID, subsystemID: 0x1100)
    }

    public func readConfig(offset: Int, size: Int) -> UInt32 {
        configSpace.read(offset: offset, size: size) ?? 0xFFFF_FFFF
    }

    public func writeConfig(offset: Int, size: Int, value: UInt32) {
        configSpace.write(offset: offset, size: size, value: value)
    }
}

/// A PCI bus 0 with up to 32 single-function devices (device numbers 0-31, function 0), and the
/// MMIO window its memory BARs are decoded in.
///
/// It is the `BusDevice` for the whole window (offset = guest-physical address - `windowBase`):
/// an access goes to the BAR that wholly contains it, when that BAR's function has memory decoding
/// on, the BAR lies inside the window and overlaps no BAR decoded before it (lower device number,
/// then lower BAR index first); everything else reads all ones and writes nothing.
/// Configuration space is reached through `PCIConfigPorts` (mechanism #1) or `readConfig`/
/// `writeConfig`.
///
/// Not thread-safe: the VMM serializes every access to the bus and to its `PCIConfigPorts`
/// (one lock for both).
public final class PCIBus: BusDevice {
    /// The contract's window: [0xC000_0000, 0xFEC0_0000).
    public static let defaultWindowBase: UInt64 = 0xC000_0000
    public static let defaultWindowEnd: UInt64 = 0xFEC0_0000
    public static let deviceCount = 32

    public let windowBase: UInt64
    public let windowEnd: UInt64
    private var devices: [PCIFunction?] = Array(repeating: nil, count: PCIBus.deviceCount)
    /// Where pre-assignment puts the next BAR.
    private var nextBARAddress: UInt64

    /// One decoded BAR.
    public struct Decoded: Sendable, Equatable {
        public let device: Int
        public let bar: Int
        public let address: UInt64
        public let size: UInt64
    }
    /// The BARs decoded now, in decode priority order.
    public private(set) var decoded: [Decoded] = []

    /// A bus with a host bridge at device 0.
    public init(windowBase: UInt64 = PCIBus.defaultWindowBase, windowEnd: UInt64 = PCIBus.defaultWindowEnd) {
        precondition(windowBase < windowEnd, "empty MMIO window")
        self.windowBase = windowBase
        self.windowEnd = windowEnd
        nextBARAddress = windowBase
        devices[0] = PCIHostBridge()
    }

    /// Plugs `function` in at `device` (default: the lowest free number) and assigns its BARs
    /// upward in the window, aligned to their sizes, with memory decoding and bus mastering on, as
    /// firmware does. Returns the device number, or nil when the slot is taken, the bus is full or
    /// the BARs do not fit.
    @discardableResult
    public func add(_ function: PCIFunction, device: Int? = nil) -> Int? {
        guard let slot = device ?? devices.firstIndex(where: { $0 == nil }),
              slot >= 0, slot < PCIBus.deviceCount, devices[slot] == nil else { return nil }
        var next = nextBARAddress
        var assignments: [(Int, UInt64)] = []
        for (index, bar) in function.configSpace.bars.enumerated() {
            guard let bar else { continue }
            let alignment = max(bar.size, 4096)
            let (aligned, overflow) = next.addingReportingOverflow(alignment - 1)
            guard !overflow else { return nil }
            let address = aligned & ~(alignment - 1)
            guard address <= windowEnd, bar.size <= windowEnd - address else { return nil }
            assignments.append((index, address))
            next = address + bar.size
        }
        nextBARAddress = next
        devices[slot] = function
        for (index, address) in assignments {
            let offset = PCIConfigSpace.barOffset + 4 * index
            function.writeConfig(offset: offset, size: 4, value: UInt32(truncatingIfNeeded: address))
            if function.configSpace.bars[index]?.kind == .memory64 {
                function.writeConfig(offset: offset + 4, size: 4, value: UInt32(truncatingIfNeeded: address >> 32))
            }
        }
        let command = function.configSpace.command | PCIConfigSpace.commandMemorySpace | PCIConfigSpace.commandBusMaster
        function.writeConfig(offset: PCIConfigSpace.commandOffset, size: 2, value: UInt32(command))
        updateDecoding()
        return slot
    }

    /// The function at `device` (function 0), if any.
    public func function(device: Int) -> PCIFunction? {
        guard device >= 0, device < PCIBus.deviceCount else { return nil }
        return devices[device]
    }

    // MARK: Configuration space

    /// A configuration read: all ones where no function answers (another bus, another function
    /// number, an empty slot) or the access is not naturally aligned inside 256 bytes.
    public func readConfig(bus: UInt8, device: UInt8, function: UInt8, offset: Int, size: Int) -> UInt32 {
        let ones: UInt32 = size >= 4 ? 0xFFFF_FFFF : (1 << (8 * UInt32(max(0, size)))) - 1
        guard bus == 0, function == 0, PCIConfigSpace.isValidAccess(offset: offset, size: size),
              let target = self.function(device: Int(device)) else { return ones }
        return target.readConfig(offset: offset, size: size)
    }

    /// A configuration write; ignored where no function answers.
    public func writeConfig(bus: UInt8, device: UInt8, function: UInt8, offset: Int, size: Int, value: UInt32) {
        guard bus == 0, function == 0, PCIConfigSpace.isValidAccess(offset: offset, size: size),
              let target = self.function(device: Int(device)) else { return }
        target.writeConfig(offset: offset, size: size, value: value)
        // Any write may have moved a BAR or switched decoding (cheap: a few functions).
        updateDecoding()
    }

    /// Recomputes which BARs are decoded where and tells each function whose placement changed.
    public func updateDecoding() {
        var now: [Decoded] = []
        for (device, function) in devices.enumerated() {
            guard let function else { continue }
            let space = function.configSpace
            guard space.memorySpaceEnabled else { continue }
            for (index, bar) in space.bars.enumerated() {
                guard let bar, let address = space.barAddress(index) else { continue }
                guard address >= windowBase, address <= windowEnd, bar.size <= windowEnd - address else { continue }
                let overlaps = now.contains { address < $0.address + $0.size && $0.address < address + bar.size }
                if overlaps { continue }
                now.append(Decoded(device: device, bar: index, address: address, size: bar.size))
            }
        }
        let before = decoded
        decoded = now
        for old in before where !now.contains(where: { $0.device == old.device && $0.bar == old.bar && $0.address == old.address }) {
            if !now.contains(where: { $0.device == old.device && $0.bar == old.bar }) {
                devices[old.device]?.barPlaced(old.bar, at: nil)
            }
        }
        for new in now where !before.contains(new) {
            devices[new.device]?.barPlaced(new.bar, at: new.address)
        }
    }

    // MARK: The MMIO window (BusDevice)

    private func route(offset: UInt64, count: Int) -> (PCIFunction, Int, UInt64)? {
        guard count >= 1, count <= 8, offset < windowEnd - windowBase else { return nil }
        let address = windowBase + offset
        for entry in decoded where address >= entry.address {
            let inside = address - entry.address
            guard inside < entry.size, UInt64(count) <= entry.size - inside else { continue }
            guard let function = devices[entry.device] else { return nil }
            return (function, entry.bar, inside)
        }
        return nil
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        guard let (function, bar, inside) = route(offset: offset, count: data.count) else {
            data.fillWithOnes()
            return
        }
        function.readBAR(bar, offset: inside, into: data)
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        guard let (function, bar, inside) = route(offset: offset, count: data.count) else { return }
        function.writeBAR(bar, offset: inside, from: data)
    }
}

/// PCI configuration mechanism #1: the `BusDevice` for ports 0xCF8-0xCFF (offset 0 = 0xCF8).
///
/// 0xCF8 is the 32-bit address register (bit 31 enable, bus 23:16, device 15:11, function 10:8,
/// register 7:2), read back as written with the reserved bits clear; only 32-bit accesses reach
/// it. 0xCFC-0xCFF is the data window: a 1-byte access at 0xCFC + n, a 2-byte one at 0xCFC or
/// 0xCFE, a 4-byte one at 0xCFC reaches the register plus n. With the enable bit clear, or for
/// any other access, reads are all ones and writes do nothing.
public final class PCIConfigPorts: BusDevice {
    public let bus: PCIBus
    public private(set) var address: UInt32 = 0

    public init(bus: PCIBus) { self.bus = bus }

    /// The enable bit, bus, device, function and register bits: what the address register keeps.
    static let addressMask: UInt32 = 0x80FF_FFFC

    private func target(offset: UInt64, size: Int) -> (bus: UInt8, device: UInt8, function: UInt8, register: Int)? {
        guard address & 0x8000_0000 != 0, offset >= 4, offset < 8 else { return nil }
        let lane = Int(offset - 4)
        guard size == 1 || (size == 2 && lane % 2 == 0) || (size == 4 && lane == 0) else { return nil }
        return (UInt8(truncatingIfNeeded: address >> 16), UInt8(truncatingIfNeeded: address >> 11) & 0x1F,
                UInt8(truncatingIfNeeded: address >> 8) & 0x7, Int(address & 0xFC) + lane)
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        if offset == 0, data.count == 4 {
            data.storeLittleEndian(UInt64(address))
            return
        }
        guard let t = target(offset: offset, size: data.count) else {
            data.fillWithOnes()
            return
        }
        let value = bus.readConfig(bus: t.bus, device: t.device, function: t.function, offset: t.register, size: data.count)
        data.storeLittleEndian(UInt64(value))
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        if offset == 0, data.count == 4 {
            address = UInt32(truncatingIfNeeded: data.littleEndianValue) & PCIConfigPorts.addressMask
            return
        }
        guard let t = target(offset: offset, size: data.count) else { return }
        bus.writeConfig(bus: t.bus, device: t.device, function: t.function, offset: t.register, size: data.count,
                        value: UInt32(truncatingIfNeeded: data.littleEndianValue))
    }
}
