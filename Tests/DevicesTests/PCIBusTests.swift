import Devices
import Virtio
import XCTest

/// Configuration mechanism #1, BAR sizing and placement, capability lists.
final class PCIBusTests: XCTestCase {
    func testAddressRegisterKeepsOnlyItsBitsAndOnlyDwordAccessesReachIt() {
        let m = Machine()
        m.out(0xCF8, size: 4, 0xFFFF_FFFF)
        XCTAssertEqual(m.inp(0xCF8, size: 4), 0x80FF_FFFC, "reserved bits 30:24 and 1:0 read as zero")
        // Linux's probe: a byte write to 0xCFB, then the dword test.
        m.out(0xCF8, size: 4, 0x8000_0000)
        m.out(0xCFB, size: 1, 0x01)
        m.out(0xCF8, size: 2, 0x1234)
        XCTAssertEqual(m.inp(0xCF8, size: 4), 0x8000_0000, "byte and word writes do not reach the address register")
        XCTAssertEqual(m.inp(0xCF8, size: 1), 0xFF)
        XCTAssertEqual(m.inp(0xCF9, size: 2), 0xFFFF)
    }

    func testHostBridgeAndEmptySlotsThroughTheDataWindow() {
        let m = Machine()
        XCTAssertEqual(m.config(0x00, device: 0), 0x0008_1B36, "host bridge vendor and device ID")
        XCTAssertEqual(m.config(0x08, device: 0) >> 8, 0x06_00_00, "class: host bridge")
        XCTAssertEqual(m.config(0x00, device: 5), 0xFFFF_FFFF, "an empty slot")
        m.out(0xCF8, size: 4, Machine.address(device: 0, register: 0, bus: 1))
        XCTAssertEqual(m.inp(0xCFC, size: 4), 0xFFFF_FFFF, "another bus")
        m.out(0xCF8, size: 4, Machine.address(device: m.device, register: 0, function: 3))
        XCTAssertEqual(m.inp(0xCFC, size: 4), 0xFFFF_FFFF, "another function")
        // Byte and word lanes.
        m.out(0xCF8, size: 4, Machine.address(device: m.device, register: 0))
        XCTAssertEqual(m.inp(0xCFC, size: 1), 0xF4)
        XCTAssertEqual(m.inp(0xCFD, size: 1), 0x1A)
        XCTAssertEqual(m.inp(0xCFE, size: 2), 0x1042, "virtio-blk: 0x1040 + 2")
        XCTAssertEqual(m.inp(0xCFF, size: 1), 0x10)
        XCTAssertEqual(m.inp(0xCFD, size: 2), 0xFFFF, "a misaligned word is not decoded")
        XCTAssertEqual(m.inp(0xCFE, size: 4), 0xFFFF_FFFF, "nor a dword off lane 0")
        // Enable bit clear: nothing answers.
        m.out(0xCF8, size: 4, Machine.address(device: m.device, register: 0) & 0x7FFF_FFFF)
        XCTAssertEqual(m.inp(0xCFC, size: 4), 0xFFFF_FFFF)
        m.out(0xCFC, size: 2, 0)
        XCTAssertEqual(m.config(0x04, size: 2) & 2, 2, "a write with the enable bit clear changed nothing")
    }

    func testVirtioIdentity() {
        let m = Machine()
        XCTAssertEqual(m.config(0x00), 0x1042_1AF4)
        XCTAssertEqual(m.config(0x08) & 0xFF, 1, "revision 1: a modern device")
        XCTAssertEqual(m.config(0x08) >> 8, 0x01_80_00)
        XCTAssertEqual(m.config(0x2C), 0x0040_1AF4, "subsystem")
        XCTAssertEqual(m.config(0x0E, size: 1), 0, "type 0 header, single function")
        XCTAssertEqual(m.config(0x3D, size: 1), 0, "no INTx pin: MSI-X only")
    }

    func testBARSizingAndRelocation() {
        let m = Machine()
        XCTAssertEqual(m.bar, PCIBus.defaultWindowBase, "pre-assigned at the window's base")
        XCTAssertEqual(m.config(0x10) & 0xF, 0x4, "64-bit, non-prefetchable memory")
        XCTAssertEqual(m.config(0x04, size: 2) & 0x6, 0x6, "memory decoding and bus mastering on")
        XCTAssertEqual(m.platform.doorbells[0], PCIBus.defaultWindowBase + 0x3000)
        XCTAssertEqual(m.platform.doorbells[1], PCIBus.defaultWindowBase + 0x3004)

        // Sizing as Linux does it: decoding off, all ones, read back, restore.
        m.setConfig(0x04, size: 2, 0)
        XCTAssertNil(m.platform.doorbells[0], "no decoding, no doorbell")
        XCTAssertEqual(m.read(PCIBus.defaultWindowBase, size: 4), 0xFFFF_FFFF, "nothing decodes there now")
        m.setConfig(0x10, 0xFFFF_FFFF)
        m.setConfig(0x14, 0xFFFF_FFFF)
        XCTAssertEqual(m.config(0x10), 0xFFFF_8004, "32 KiB, the type bits kept")
        XCTAssertEqual(m.config(0x14), 0xFFFF_FFFF)
        for register in [0x18, 0x1C, 0x20, 0x24, 0x30] {
            m.setConfig(register, 0xFFFF_FFFF)
            XCTAssertEqual(m.config(register), 0, "BAR or ROM at 0x\(String(register, radix: 16)) is not implemented")
        }
        // Move it, turn decoding back on.
        m.setConfig(0x10, 0xD000_0000)
        m.setConfig(0x14, 0)
        m.setConfig(0x04, size: 2, 0x6)
        XCTAssertEqual(m.bar, 0xD000_0000)
        XCTAssertEqual(m.platform.doorbells[1], 0xD000_3004, "the doorbells moved with the BAR")
        XCTAssertEqual(m.common(0x12, size: 2), 2, "num_queues at the new place")
        XCTAssertEqual(m.read(PCIBus.defaultWindowBase + 0x12, size: 2), 0xFFFF, "nothing at the old one")
        // Byte writes: the low byte is type and size bits (read-only); the next one holds bit 15,
        // the lowest address bit of a 32 KiB BAR.
        m.setConfig(0x10, size: 1, 0xFF)
        XCTAssertEqual(m.config(0x10), 0xD000_0004)
        m.setConfig(0x11, size: 1, 0xFF)
        XCTAssertEqual(m.config(0x10), 0xD000_8004)
        m.setConfig(0x11, size: 1, 0)
        XCTAssertEqual(m.bar, 0xD000_0000)
        // Above 4 GiB is outside the window: not decoded.
        m.setConfig(0x14, 1)
        XCTAssertNil(m.platform.doorbells[0])
        XCTAssertEqual(m.bus.decoded.count, 0)
        m.setConfig(0x14, 0)
        XCTAssertEqual(m.platform.doorbells[0], 0xD000_3000)
        // Up to the window's end is inside; the IOAPIC's page is not.
        m.setConfig(0x10, 0xFEBF_8000)
        XCTAssertEqual(m.bus.decoded.count, 1)
        m.setConfig(0x10, 0xFEC0_0000)
        XCTAssertEqual(m.bus.decoded.count, 0)
        m.setConfig(0x10, 0xFEBF_C123)
        XCTAssertEqual(m.bar, 0xFEBF_8000, "the BAR is aligned to its size")
    }

    func testOverlappingBARsDecodeOnlyTheFirst() {
        let m = Machine()
        let second = VirtioPCIFunction(info: .init(type: .net, features: 0, queueCount: 2, maxQueueSize: 64, configSize: 8),
                                       backend: RecordingBackend(), platform: RecordingPlatform())
        let slot = try! XCTUnwrap(m.bus.add(second))
        XCTAssertEqual(m.bus.decoded.count, 2)
        m.setConfig(0x10, UInt32(truncatingIfNeeded: m.bar) + 0x1000, device: slot)
        XCTAssertEqual(m.bus.decoded.map(\.device), [m.device], "the overlapping BAR is not decoded")
        XCTAssertEqual(m.common(0x12, size: 2), 2, "the first device still answers")
    }

    func testCapabilityWalkFindsEveryVirtioStructure() {
        let m = Machine(queues: 3)
        let msix = try! XCTUnwrap(m.capability(id: 0x11))
        XCTAssertEqual(m.config(msix + 2, size: 2) & 0x7FF, 3, "table size 4 (3 queues + configuration)")
        XCTAssertEqual(m.config(msix + 4), 0x4000, "table at 0x4000 in BAR 0")
        XCTAssertEqual(m.config(msix + 8), 0x6000, "PBA at 0x6000 in BAR 0")
        var expected: [UInt8: (offset: UInt32, length: UInt32)] = [1: (0, 0x3C), 2: (0x3000, 12), 3: (0x1000, 4), 4: (0x2000, 24)]
        for type in [UInt8(1), 2, 3, 4] {
            let cap = try! XCTUnwrap(m.capability(id: 0x09, cfgType: type), "cfg_type \(type)")
            XCTAssertEqual(m.config(cap + 4, size: 1), 0, "in BAR 0")
            XCTAssertEqual(m.config(cap + 8), expected[type]!.offset)
            XCTAssertEqual(m.config(cap + 12), expected[type]!.length)
            XCTAssertEqual(m.config(cap + 2, size: 1), type == 2 ? 20 : 16, "cap_len")
            if type == 2 { XCTAssertEqual(m.config(cap + 16), 4, "notify_off_multiplier") }
            expected[type] = nil
        }
        XCTAssertNotNil(m.capability(id: 0x09, cfgType: 5), "the PCI configuration access capability")
        for queue in 0..<3 {
            m.setCommon(0x16, size: 2, UInt64(queue))
            XCTAssertEqual(m.common(0x1E, size: 2), UInt64(queue), "queue_notify_off")
        }
    }

    func testConfigurationAccessWindowReachesTheBAR() {
        let m = Machine(queues: 3)
        let cap = try! XCTUnwrap(m.capability(id: 0x09, cfgType: 5))
        m.setConfig(cap + 4, size: 1, 0)       // BAR 0
        m.setConfig(cap + 8, 0x12)             // num_queues
        m.setConfig(cap + 12, 2)
        XCTAssertEqual(m.config(cap + 16, size: 2), 3)
        // Write queue_select through the window, read it back through MMIO.
        m.setConfig(cap + 8, 0x16)
        m.setConfig(cap + 16, size: 2, 2)
        XCTAssertEqual(m.common(0x16, size: 2), 2)
        // A misaligned or oversized window does nothing.
        m.setConfig(cap + 8, 0x17)
        m.setConfig(cap + 16, size: 2, 1)
        XCTAssertEqual(m.common(0x16, size: 2), 2)
        m.setConfig(cap + 8, 0xFFFF_FFFE)
        m.setConfig(cap + 16, size: 2, 1)
        _ = m.config(cap + 16)
    }
}
