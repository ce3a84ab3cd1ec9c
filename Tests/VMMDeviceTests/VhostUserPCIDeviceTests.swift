import Block
import Config
import Devices
import Foundation
import HostOS
import KVM
import Logging
import VMM
import VhostNet
import VhostUser
import Virtio
import XCTest

/// The machine side without KVM: records doorbells, routes and irqfds, and plays KVM's part for
/// a doorbell write (an ioeventfd registered at the address takes it; otherwise it exits).
final class RecordingHost: VirtioHost {
    let memoryRegions: [GuestRAMRegion]
    private(set) var doorbells: [UInt64: Int32] = [:]
    private(set) var routes: [UInt32: MSIMessage] = [:]
    private(set) var irqfds: [Int32: UInt32] = [:]
    private(set) var sent: [MSIMessage] = []
    private var nextGSI: UInt32 = 24

    init(memoryRegions: [GuestRAMRegion]) { self.memoryRegions = memoryRegions }

    func addDoorbell(eventfd: Int32, address: UInt64, length: UInt32) throws(KVMError) {
        guard length == 2, doorbells[address] == nil else { throw .failed(SystemError("KVM_IOEVENTFD", errno: EEXIST)) }
        doorbells[address] = eventfd
    }

    func removeDoorbell(eventfd: Int32, address: UInt64, length: UInt32) throws(KVMError) {
        guard doorbells[address] == eventfd else { throw .failed(SystemError("KVM_IOEVENTFD deassign", errno: ENOENT)) }
        doorbells[address] = nil
    }

    func allocateInterrupt() -> UInt32? {
        defer { nextGSI += 1 }
        return nextGSI
    }

    func routeInterrupt(gsi: UInt32, message: MSIMessage) throws(KVMError) { routes[gsi] = message }

    func attachInterrupt(eventfd: Int32, gsi: UInt32) throws(KVMError) {
        guard irqfds[eventfd] == nil else { throw .failed(SystemError("KVM_IRQFD", errno: EBUSY)) }
        irqfds[eventfd] = gsi
    }

    func detachInterrupt(eventfd: Int32, gsi: UInt32) throws(KVMError) { irqfds[eventfd] = nil }

    func sendInterrupt(_ message: MSIMessage) { sent.append(message) }
}

/// Guest RAM in a memfd the test owns, at guest-physical 0, with an optional hole (where an MMIO
/// window goes): then it is two regions of the same memfd.
final class TestRAM {
    let memfd: FileDescriptor
    let mapping: MemoryMapping
    let memory: GuestMemory
    let size: UInt64
    /// (guest address, size, offset in the memfd)
    let pieces: [(UInt64, UInt64, UInt64)]

    init(size: Int = 16 << 20, hole: Range<UInt64>? = nil) throws {
        memfd = try FileDescriptor.memfd(name: "bulkhead-vmm-device-test", size: size)
        mapping = try MemoryMapping(fd: memfd.rawValue, offset: 0, size: UInt64(size), shared: true)
        self.size = UInt64(size)
        if let hole {
            pieces = [(0, hole.lowerBound, 0), (hole.upperBound, UInt64(size) - hole.upperBound, hole.upperBound)]
        } else {
            pieces = [(0, UInt64(size), 0)]
        }
        let base = mapping.base
        memory = try GuestMemory(regions: pieces.map { GuestMemoryRegion(guestAddress: $0.0, size: $0.1, host: base + Int($0.2)) })
    }

    var regions: [GuestRAMRegion] {
        pieces.map {
            GuestRAMRegion(guestAddress: $0.0, size: $0.1, userAddress: UInt64(UInt(bitPattern: mapping.base)) + $0.2,
                           memfd: memfd.rawValue, offset: $0.2)
        }
    }
}

/// A guest's virtio-pci driver over the bus models: enumeration through 0xCF8/0xCFC, the common
/// configuration through MMIO, queues laid out by `VirtqueueDriver`, polling the used ring.
final class GuestDriver {
    let bus: PCIBus
    let ports: PCIConfigPorts
    /// Where KVM's part is played by the test; nil when a real vCPU rings.
    let host: RecordingHost?
    let ram: TestRAM
    private(set) var device = 0
    private(set) var bar: UInt64 = 0
    private(set) var queue: VirtqueueDriver?

    init(bus: PCIBus, host: RecordingHost?, ram: TestRAM) {
        self.bus = bus
        ports = PCIConfigPorts(bus: bus)
        self.host = host
        self.ram = ram
    }

    private func out(_ offset: UInt64, _ size: Int, _ value: UInt32) {
        var v = value
        withUnsafeBytes(of: &v) { ports.write(offset: offset, from: UnsafeRawBufferPointer(rebasing: $0[0..<size])) }
    }

    private func inp(_ offset: UInt64, _ size: Int) -> UInt32 {
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { ports.read(offset: offset, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<size])) }
        return v
    }

    func config(_ register: Int, size: Int = 4) -> UInt32 {
        out(0, 4, 0x8000_0000 | UInt32(device) << 11 | UInt32(register & 0xFC))
        return inp(4 + UInt64(register & 3), size)
    }

    func setConfig(_ register: Int, size: Int = 4, _ value: UInt32) {
        out(0, 4, 0x8000_0000 | UInt32(device) << 11 | UInt32(register & 0xFC))
        out(4 + UInt64(register & 3), size, value)
    }

    func read(_ offset: UInt64, size: Int) -> UInt64 {
        var v: UInt64 = 0
        withUnsafeMutableBytes(of: &v) { bus.read(offset: bar + offset - bus.windowBase, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<size])) }
        return v
    }

    func write(_ offset: UInt64, size: Int, _ value: UInt64) {
        var v = value
        withUnsafeBytes(of: &v) { bus.write(offset: bar + offset - bus.windowBase, from: UnsafeRawBufferPointer(rebasing: $0[0..<size])) }
    }

    var status: UInt8 { UInt8(read(0x14, size: 1)) }

    /// Finds the first device with `deviceID`, reads its BAR and turns MSI-X on with vector 0
    /// unmasked (vector 0 to `message`).
    func probe(deviceID: UInt16) throws {
        for slot in 0..<32 {
            device = slot
            if config(0) == UInt32(deviceID) << 16 | 0x1AF4 {
                bar = UInt64(config(0x10) & ~0xF) | UInt64(config(0x14)) << 32
                var cap = Int(config(0x34, size: 1))
                while cap != 0 && config(cap, size: 1) != 0x11 { cap = Int(config(cap + 1, size: 1)) }
                XCTAssertNotEqual(cap, 0, "an MSI-X capability")
                setConfig(cap + 2, size: 2, 0x8000)
                write(0x4000, size: 8, 0xFEE0_0000)
                write(0x4008, size: 4, 0x45)
                write(0x400C, size: 4, 0)
                return
            }
        }
        XCTFail("no virtio device 0x\(String(deviceID, radix: 16))")
    }

    /// The driver's start: reset, ACKNOWLEDGE, DRIVER, features (what the device offers of
    /// `wanted`), FEATURES_OK, queue 0 at `ringBase`, DRIVER_OK. Returns the status read back.
    @discardableResult
    func start(wanted: UInt64, ringBase: UInt64 = 0x10_0000, size: UInt16 = 64, vector: UInt16 = 0, usedOverTable: Bool = false) -> UInt8 {
        write(0x14, size: 1, 0)
        write(0x14, size: 1, 1)
        write(0x14, size: 1, 3)
        write(0x00, size: 4, 0)
        var offered = read(0x04, size: 4)
        write(0x00, size: 4, 1)
        offered |= read(0x04, size: 4) << 32
        let features = offered & wanted
        write(0x08, size: 4, 0)
        write(0x0C, size: 4, features & 0xFFFF_FFFF)
        write(0x08, size: 4, 1)
        write(0x0C, size: 4, features >> 32)
        write(0x14, size: 1, 0xB)
        XCTAssertEqual(status, 0xB, "FEATURES_OK accepted")
        write(0x16, size: 2, 0)
        write(0x18, size: 2, UInt64(size))
        write(0x1A, size: 2, UInt64(vector))
        let layout = VirtqueueDriver.layout(size: size, at: ringBase)
        write(0x20, size: 8, layout.descriptors)
        write(0x28, size: 8, layout.available)
        write(0x30, size: 8, usedOverTable ? layout.descriptors + 0x100 : layout.used)
        write(0x1C, size: 2, 1)
        write(0x14, size: 1, 0xF)
        queue = VirtqueueDriver(memory: ram.memory, size: size, descriptors: layout.descriptors, available: layout.available,
                                used: layout.used, eventIndex: features & VirtioFeatures.eventIndex != 0)
        return status
    }

    /// Rings queue 0's doorbell as the CPU does: KVM hands a 2-byte write to the ioeventfd
    /// registered at the address, if any; `width` 4 is not what it was registered for, and exits.
    func ring(width: Int = 2) {
        let address = bar + 0x3000
        if width == 2, let fd = host?.doorbells[address] {
            EventCounter.signal(fd)
        } else {
            write(0x3000, size: width, 0)
        }
    }

    /// One virtio-blk request on queue 0: header at 0x80_0000, data at 0x90_0000, status byte.
    /// `ring` rings the doorbell (default: `ring(width:)`).
    func request(type: UInt32, sector: UInt64, data: [UInt8] = [], readLength: Int = 0, width: Int = 2,
                 ring doorbell: (() throws -> Void)? = nil) throws -> (status: UInt8, data: [UInt8]) {
        let memory = ram.memory
        let header: UInt64 = 0x80_0000, buffer: UInt64 = 0x90_0000, statusByte: UInt64 = 0x80_0100
        memory.store(type, at: header)
        memory.store(UInt32(0), at: header + 4)
        memory.store(sector, at: header + 8)
        memory.store(UInt8(0xFF), at: statusByte)
        var buffers = [VirtqueueDriver.Buffer(address: header, length: 16, writable: false)]
        if !data.isEmpty {
            let p = try XCTUnwrap(memory.pointer(at: buffer, length: UInt64(data.count)))
            data.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: data.count) }
            buffers.append(.init(address: buffer, length: UInt32(data.count), writable: false))
        } else if readLength > 0 {
            buffers.append(.init(address: buffer, length: UInt32(readLength), writable: true))
        }
        buffers.append(.init(address: statusByte, length: 1, writable: true))
        let head = try XCTUnwrap(queue?.add(buffers))
        if queue?.publish() == true {
            if let doorbell { try doorbell() } else { ring(width: width) }
        }
        let deadline = monotonicNanoseconds() + 10_000_000_000
        while true {
            if let used = queue?.popUsed() {
                XCTAssertEqual(used.head, head)
                break
            }
            guard monotonicNanoseconds() < deadline else {
                XCTFail("no completion within 10 s")
                return (0xFF, [])
            }
            usleep(200)
        }
        let back = readLength > 0 ? Array(UnsafeRawBufferPointer(start: memory.pointer(at: buffer, length: UInt64(readLength)), count: readLength)) : []
        return (memory.load(UInt8.self, at: statusByte) ?? 0xFF, back)
    }
}

/// `VhostUserPCIDevice` between the virtio-pci transport model and the real block server (and a
/// virtio-net port), with the test as the guest's driver.
final class VhostUserPCIDeviceTests: XCTestCase {
    private var state = ""
    private var backends: [VhostUserBackend] = []
    private let logger = Logger(label: "test")

    override func setUp() {
        state = NSTemporaryDirectory() + "bulkhead-vmm-device-\(UUID().uuidString)"
    }

    override func tearDown() {
        for backend in backends { backend.stop() }
        backends.removeAll()
        try? FileManager.default.removeItem(atPath: state)
    }

    private func serveVolume(sizeBytes: Int = 16 << 20) throws -> String {
        let store = try VolumeStore(stateDirectory: state, tenant: "blue")
        let volume = Volume(id: "data", sizeBytes: UInt64(sizeBytes))
        let device = try BlockDevice(volume: try store.open(volume), queues: 2, logger: logger)
        try StateFiles.makeDirectories(state + "/tenants/blue/vhost")
        let path = VolumeStore.socketPath(stateDirectory: state, tenant: "blue", volume: volume.id)
        let backend = VhostUserBackend(path: path, device: device, logger: logger)
        try backend.start()
        backends.append(backend)
        return path
    }

    private struct Setup {
        let ram: TestRAM
        let host: RecordingHost
        let device: VhostUserPCIDevice
        let function: VirtioPCIFunction
        let guest: GuestDriver
    }

    private func setUpBlock(socket: String) throws -> Setup {
        let ram = try TestRAM()
        let host = RecordingHost(memoryRegions: ram.regions)
        let device = try VhostUserPCIDevice(socket: socket, kind: .block, host: host, logger: logger, maxQueueSize: 128)
        let function = device.makeFunction()
        let bus = PCIBus()
        XCTAssertNotNil(bus.add(function))
        let guest = GuestDriver(bus: bus, host: host, ram: ram)
        try guest.probe(deviceID: 0x1042)
        return Setup(ram: ram, host: host, device: device, function: function, guest: guest)
    }

    private static let blockWanted = VirtioFeatures.version1 | VirtioFeatures.eventIndex | BlockFeatures.flush | BlockFeatures.segMax

    private func pattern(_ seed: Int, _ length: Int) -> [UInt8] {
        (0..<length).map { UInt8(truncatingIfNeeded: ($0 &* 131) ^ (seed &* 7) ^ ($0 >> 8)) }
    }

    func testBlockRoundTripThroughTheTransportDoorbellsAndInterrupts() throws {
        let socket = try serveVolume()
        let s = try setUpBlock(socket: socket)
        let guest = s.guest
        XCTAssertEqual(s.device.info.features & VhostUserFeature.protocolFeatures, 0, "a vhost-user bit is never offered to the guest")
        XCTAssertEqual(guest.read(0x2000, size: 8), UInt64(16 << 20) / 512, "capacity from the backend's configuration")
        XCTAssertEqual(guest.start(wanted: VhostUserPCIDeviceTests.blockWanted), 0xF)

        // The doorbell is the kick eventfd, registered where the queue's notify address is; the
        // call eventfd is attached to the GSI routed to vector 0's message.
        let kick = try XCTUnwrap(s.device.kickDescriptor(queue: 0))
        let call = try XCTUnwrap(s.device.callDescriptor(queue: 0))
        XCTAssertEqual(s.host.doorbells, [guest.bar + 0x3000: kick])
        let gsi = try XCTUnwrap(s.host.irqfds[call])
        XCTAssertEqual(s.host.routes[gsi], MSIMessage(address: 0xFEE0_0000, data: 0x45))

        let data = pattern(1, 4096)
        XCTAssertEqual(try guest.request(type: 1, sector: 8, data: data).status, 0, "write through the ioeventfd path")
        XCTAssertEqual(try guest.request(type: 4, sector: 0, width: 4).status, 0, "flush through an MMIO exit")
        let back = try guest.request(type: 0, sector: 8, readLength: 4096)
        XCTAssertEqual(back.status, 0)
        XCTAssertEqual(back.data, data)
        XCTAssertEqual(try guest.request(type: 0, sector: 100, readLength: 512).data, [UInt8](repeating: 0, count: 512))
        // The backend signalled completions on the call eventfd (KVM would have sent vector 0).
        var readable: [Bool] = []
        XCTAssertEqual(EventCounter.waitReadable([call], readable: &readable, timeoutMilliseconds: 5000), 1)

        // Masking vector 0 detaches the irqfd; unmasking attaches it again.
        guest.write(0x400C, size: 4, 1)
        XCTAssertNil(s.host.irqfds[call])
        guest.write(0x400C, size: 4, 0)
        XCTAssertEqual(s.host.irqfds[call], gsi)

        // Reset: the queue stops on the backend, the doorbell and irqfd go.
        guest.write(0x14, size: 1, 0)
        XCTAssertFalse(s.device.isRunning(queue: 0))
        XCTAssertTrue(s.host.doorbells.isEmpty)
        XCTAssertTrue(s.host.irqfds.isEmpty)
        // And it starts again, with the data still there.
        XCTAssertEqual(guest.start(wanted: VhostUserPCIDeviceTests.blockWanted, ringBase: 0x20_0000), 0xF)
        XCTAssertEqual(try guest.request(type: 0, sector: 8, readLength: 4096).data, data)
    }

    func testRingsOutsideRAMMarkTheDeviceNeedsResetAndItRecovers() throws {
        let socket = try serveVolume()
        let s = try setUpBlock(socket: socket)
        let guest = s.guest
        // Descriptor table past the end of RAM, then one that straddles it, then a misaligned one.
        for base: UInt64 in [0xF000_0000, s.ram.size - 0x400, 0x10_0008] {
            let status = guest.start(wanted: VhostUserPCIDeviceTests.blockWanted, ringBase: base)
            XCTAssertEqual(status & 0x40, 0x40, "rings at 0x\(String(base, radix: 16)): DEVICE_NEEDS_RESET")
            XCTAssertFalse(s.function.started)
            XCTAssertTrue(s.host.doorbells.isEmpty)
            XCTAssertNotNil(s.device.lastFailure)
            guest.ring(width: 4)  // a doorbell on a broken device is ignored
        }
        XCTAssertEqual(guest.start(wanted: VhostUserPCIDeviceTests.blockWanted, usedOverTable: true) & 0x40, 0x40,
                       "a used ring over the descriptor table")
        XCTAssertTrue(s.device.isConnected, "the guest's mistakes do not cost the backend connection")
        XCTAssertEqual(guest.start(wanted: VhostUserPCIDeviceTests.blockWanted), 0xF)
        XCTAssertEqual(try guest.request(type: 1, sector: 0, data: pattern(2, 512)).status, 0)
        XCTAssertEqual(try guest.request(type: 0, sector: 0, readLength: 512).data, pattern(2, 512))
    }

    func testBackendGoneMarksNeedsResetAndTheDeviceReconnects() throws {
        let socket = try serveVolume()
        let s = try setUpBlock(socket: socket)
        let guest = s.guest
        XCTAssertEqual(guest.start(wanted: VhostUserPCIDeviceTests.blockWanted), 0xF)
        XCTAssertEqual(try guest.request(type: 1, sector: 0, data: pattern(3, 512)).status, 0)
        backends.removeFirst().stop()
        // The driver's reset finds the backend gone; its next DRIVER_OK cannot connect.
        XCTAssertEqual(guest.start(wanted: VhostUserPCIDeviceTests.blockWanted) & 0x40, 0x40)
        XCTAssertFalse(s.device.isConnected)
        XCTAssertTrue(s.host.doorbells.isEmpty)
        // A new server on the same socket: the next start connects again, and the data is there.
        _ = try serveVolume()
        XCTAssertEqual(guest.start(wanted: VhostUserPCIDeviceTests.blockWanted), 0xF)
        XCTAssertTrue(s.device.isConnected)
        XCTAssertEqual(try guest.request(type: 0, sector: 0, readLength: 512).data, pattern(3, 512))
    }

    func testNetDevicePresentsTheVMMsConfigurationAndStartsBothQueues() throws {
        let directory = state + "/net"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let socket = directory + "/port.sock"
        let port = try VhostNetDevice(mac: [2, 0, 0, 0, 0, 9], logger: logger)
        let backend = VhostUserBackend(path: socket, device: port, logger: logger)
        try backend.start()
        backends.append(backend)
        let ram = try TestRAM()
        let host = RecordingHost(memoryRegions: ram.regions)
        let mac: [UInt8] = [0x52, 0x54, 0, 0x12, 0x34, 0x56]
        let device = try VhostUserPCIDevice(socket: socket, kind: .net(mac: mac), host: host, logger: logger)
        XCTAssertEqual(device.info.queueCount, 2)
        XCTAssertNotEqual(device.info.features & NetFeatures.mac, 0)
        XCTAssertNotEqual(device.info.features & NetFeatures.status, 0)
        XCTAssertEqual(device.info.features & NetFeatures.controlQueue, 0)
        let bus = PCIBus()
        bus.add(device.makeFunction())
        let guest = GuestDriver(bus: bus, host: host, ram: ram)
        try guest.probe(deviceID: 0x1041)
        XCTAssertEqual((0..<6).map { UInt8(guest.read(0x2000 + $0, size: 1)) }, mac, "the port's configured MAC, from the VMM")
        XCTAssertEqual(guest.read(0x2006, size: 2), 1, "link up")
        XCTAssertEqual(guest.read(0x2008, size: 2), 1, "one queue pair")
        // Both queues: receive at 1 MiB, transmit at 2 MiB.
        guest.write(0x14, size: 1, 0)
        guest.write(0x14, size: 1, 3)
        guest.write(0x08, size: 4, 1)
        guest.write(0x0C, size: 4, 1)
        guest.write(0x08, size: 4, 0)
        guest.write(0x0C, size: 4, UInt64(NetFeatures.mac | NetFeatures.status))
        guest.write(0x14, size: 1, 0xB)
        for queue in 0..<2 as Range<UInt64> {
            let layout = VirtqueueDriver.layout(size: 64, at: 0x10_0000 * (queue + 1))
            guest.write(0x16, size: 2, queue)
            guest.write(0x18, size: 2, 64)
            guest.write(0x20, size: 8, layout.descriptors)
            guest.write(0x28, size: 8, layout.available)
            guest.write(0x30, size: 8, layout.used)
            guest.write(0x1C, size: 2, 1)
        }
        guest.write(0x14, size: 1, 0xF)
        XCTAssertEqual(guest.status, 0xF, device.lastFailure ?? "")
        XCTAssertTrue(device.isRunning(queue: 0) && device.isRunning(queue: 1))
        XCTAssertEqual(Set(host.doorbells.keys), [guest.bar + 0x3000, guest.bar + 0x3004])
        XCTAssertTrue(host.irqfds.isEmpty, "NO_VECTOR: the call eventfds are nobody's irqfd")
    }

    /// The whole path on a real VM: a real-mode guest's 2-byte write to the queue's doorbell is
    /// taken by the ioeventfd `KVMVirtioHost` registered (no MMIO exit), the block server serves
    /// the request, and the call eventfd is an irqfd on the GSI routed to vector 0's message.
    func testKVMDoorbellReachesTheBlockServerWithoutAnExit() throws {
        guard FileManager.default.fileExists(atPath: "/dev/kvm") else { throw XCTSkip("needs /dev/kvm (the kvm module)") }
        let kvm: KVMSystem
        do { kvm = try KVMSystem() } catch {
            if case .unavailable = error { throw XCTSkip("needs access to /dev/kvm: \(error)") }
            throw error
        }
        let socket = try serveVolume()
        // The window sits below 1 MiB, where real mode reaches; RAM is around it.
        let window: Range<UInt64> = 0xE0000..<0x10_0000
        let ram = try TestRAM(hole: window)
        let vm = try kvm.makeMachine()
        for (slot, piece) in ram.pieces.enumerated() {
            try vm.map(slot: UInt32(slot), guestAddress: piece.0, size: piece.1, host: ram.mapping.base + Int(piece.2))
        }
        try vm.createInterruptController()
        let host = KVMVirtioHost(interrupts: vm.interrupts, memoryRegions: ram.regions)
        let device = try VhostUserPCIDevice(socket: socket, kind: .block, host: host, logger: logger, maxQueueSize: 128)
        let bus = PCIBus(windowBase: window.lowerBound, windowEnd: window.upperBound)
        bus.add(device.makeFunction())
        let guest = GuestDriver(bus: bus, host: nil, ram: ram)
        try guest.probe(deviceID: 0x1042)
        XCTAssertEqual(guest.bar, 0xE0000)
        XCTAssertEqual(guest.start(wanted: VhostUserPCIDeviceTests.blockWanted), 0xF, device.lastFailure ?? "")

        // mov ax, 0xE000; mov ds, ax; mov word [0x3000], 0; out 0x80, al; jmp $ (from the start at
        // each run). Not HLT: with the in-kernel irqchip a halt waits in the kernel for an interrupt.
        let code: [UInt8] = [0xB8, 0x00, 0xE0, 0x8E, 0xD8, 0xC7, 0x06, 0x00, 0x30, 0x00, 0x00, 0xE6, 0x80, 0xEB, 0xFE]
        (ram.mapping.base + 0x1000).copyMemory(from: code, byteCount: code.count)
        let cpu = try vm.makeCPU(id: 0)
        var exits = 0
        func runGuest() throws {
            try cpu.setRealMode(ip: 0x1000, sp: 0x8000)
            for _ in 0..<8 {
                switch try cpu.run() {
                case .io(out: true, port: 0x80, _, _, _): return
                case .mmio: exits += 1
                case let other: XCTFail("unexpected exit \(other)"); return
                }
            }
            XCTFail("the guest did not finish")
        }
        let data = pattern(7, 4096)
        XCTAssertEqual(try guest.request(type: 1, sector: 16, data: data, ring: runGuest).status, 0)
        let back = try guest.request(type: 0, sector: 16, readLength: 4096, ring: runGuest)
        XCTAssertEqual(back.status, 0)
        XCTAssertEqual(back.data, data)
        XCTAssertEqual(exits, 0, "the doorbell never exits to the VMM")

        // Reset removes the ioeventfd: the same write now exits (and is ignored by the stopped device).
        guest.write(0x14, size: 1, 0)
        try runGuest()
        XCTAssertEqual(exits, 1)
    }
}
