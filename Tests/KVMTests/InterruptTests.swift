import HostOS
import KVM
import XCTest

/// ioeventfd, irqfd and GSI routing against the real /dev/kvm.
final class InterruptTests: XCTestCase {
    private func system() throws -> KVMSystem {
        guard FileManager.default.fileExists(atPath: "/dev/kvm") else { throw XCTSkip("needs /dev/kvm (the kvm module)") }
        do { return try KVMSystem() } catch {
            if case .unavailable = error { throw XCTSkip("needs access to /dev/kvm: \(error)") }
            throw error
        }
    }

    /// A real-mode guest writes to MMIO addresses with ioeventfds: matching writes only count on
    /// the eventfds, with no exit; a write of another width or value exits as MMIO.
    func testIOEventFDCountsMatchingWritesWithoutExits() throws {
        let kvm = try system()
        let vm = try kvm.makeMachine()
        let size = 64 << 10
        let memfd = try FileDescriptor.memfd(name: "kvm-ioeventfd-guest", size: size)
        let memory = try MemoryMapping(fd: memfd.rawValue, offset: 0, size: UInt64(size), shared: true)
        let code: [UInt8] = [
            0xB8, 0x00, 0xE0,                          // mov ax, 0xE000
            0x8E, 0xD8,                                // mov ds, ax
            0xC7, 0x06, 0x00, 0x00, 0x34, 0x12,        // mov word [0], 0x1234   -> doorbell (2 bytes)
            0xC7, 0x06, 0x00, 0x00, 0x78, 0x56,        // mov word [0], 0x5678   -> doorbell
            0xC6, 0x06, 0x00, 0x00, 0x12,              // mov byte [0], 0x12     -> 1 byte: exits
            0xC7, 0x06, 0x10, 0x00, 0x07, 0x00,        // mov word [0x10], 7     -> datamatch: counts
            0xC7, 0x06, 0x10, 0x00, 0x08, 0x00,        // mov word [0x10], 8     -> no match: exits
            0xF4,                                      // hlt
        ]
        (memory.base + 0x1000).copyMemory(from: code, byteCount: code.count)
        try vm.map(slot: 0, guestAddress: 0, size: UInt64(size), host: memory.base)
        let doorbell = try EventFD(nonBlocking: true)
        let matched = try EventFD(nonBlocking: true)
        try vm.addIOEvent(eventfd: doorbell.rawValue, address: 0xE0000, length: 2)
        try vm.addIOEvent(eventfd: matched.rawValue, address: 0xE0010, length: 2, datamatch: 7)
        XCTAssertThrowsError(try vm.addIOEvent(eventfd: doorbell.rawValue, address: 0xE0000, length: 2),
                             "the same registration twice is refused")
        XCTAssertThrowsError(try vm.addIOEvent(eventfd: doorbell.rawValue, address: 0xE0000, length: 3), "no 3-byte writes")
        XCTAssertThrowsError(try vm.addIOEvent(eventfd: doorbell.rawValue, address: 0xE0000, length: 0, datamatch: 1),
                             "datamatch needs a length")

        let cpu = try vm.makeCPU(id: 0)
        try cpu.setRealMode(ip: 0x1000, sp: 0x8000)
        var mmioExits = 0
        var halted = false
        for _ in 0..<16 where !halted {
            switch try cpu.run() {
            case .mmio: mmioExits += 1
            case .halt: halted = true
            case let other:
                XCTFail("unexpected exit \(other)")
                return
            }
        }
        XCTAssertTrue(halted)
        XCTAssertEqual(mmioExits, 2, "the byte write and the unmatched value exit; the doorbells do not")
        XCTAssertEqual(EventCounter.take(doorbell.rawValue), 2)
        XCTAssertEqual(EventCounter.take(matched.rawValue), 1)

        try vm.removeIOEvent(eventfd: doorbell.rawValue, address: 0xE0000, length: 2)
        XCTAssertThrowsError(try vm.removeIOEvent(eventfd: doorbell.rawValue, address: 0xE0000, length: 2), "already removed")
        try vm.removeIOEvent(eventfd: matched.rawValue, address: 0xE0010, length: 2, datamatch: 7)
    }

    /// MSI routes beside the irqchip's own, an irqfd on one of them, and a direct MSI.
    func testRoutingTableAndIRQFD() throws {
        let kvm = try system()
        let vm = try kvm.makeMachine()
        let call = try EventFD(nonBlocking: true)
        XCTAssertThrowsError(try vm.setRoutes([MSIRoute(gsi: 24, address: 0xFEE0_0000, data: 0x30)]),
                             "routing needs the in-kernel irqchip")
        try vm.createInterruptController()
        try vm.setRoutes([MSIRoute(gsi: 24, address: 0xFEE0_0000, data: 0x30), MSIRoute(gsi: 25, address: 0xFEE0_0000, data: 0x31)])
        XCTAssertThrowsError(try vm.setRoutes([MSIRoute(gsi: 5, address: 0xFEE0_0000, data: 0x30)]), "GSIs 0-23 are the irqchip's")
        XCTAssertThrowsError(try vm.setRoutes([MSIRoute(gsi: 30, address: 0, data: 0), MSIRoute(gsi: 30, address: 0, data: 1)]),
                             "one route per GSI")
        try vm.addIRQ(eventfd: call.rawValue, gsi: 24)
        XCTAssertThrowsError(try vm.addIRQ(eventfd: call.rawValue, gsi: 24), "an eventfd drives one irqfd")
        // A new table while the irqfd is attached: it follows its GSI's new route.
        try vm.setRoutes([MSIRoute(gsi: 24, address: 0xFEE0_0000, data: 0x40)])
        call.signal()
        try vm.removeIRQ(eventfd: call.rawValue, gsi: 24)
        try vm.addIRQ(eventfd: call.rawValue, gsi: 24)
        try vm.removeIRQ(eventfd: call.rawValue, gsi: 24)
        let cpu = try vm.makeCPU(id: 0)
        _ = cpu
        // The vCPU's local APIC is still software-disabled: the message is not accepted, and
        // that is an answer, not an error.
        XCTAssertFalse(try vm.signalMSI(address: 0xFEE0_0000, data: 0x30))
    }
}
