import Devices
import Virtio
import XCTest

/// The virtio-pci common configuration state machine, notifications and MSI-X.
final class VirtioTransportTests: XCTestCase {
    func testFeatureWordsAndNegotiation() {
        let m = Machine()
        m.setCommon(0x00, size: 4, 0)
        XCTAssertEqual(m.common(0x04, size: 4), Machine.features & 0xFFFF_FFFF)
        m.setCommon(0x00, size: 4, 1)
        XCTAssertEqual(m.common(0x04, size: 4), 1, "VERSION_1 is bit 32")
        m.setCommon(0x00, size: 4, 7)
        XCTAssertEqual(m.common(0x04, size: 4), 0, "no features past word 1")
        XCTAssertEqual(m.negotiate() & 8, 8, "offered features: FEATURES_OK accepted")
        XCTAssertEqual(m.function.driverFeatures, Machine.features)
        // Features are frozen once accepted.
        m.setCommon(0x08, size: 4, 0)
        m.setCommon(0x0C, size: 4, 0)
        XCTAssertEqual(m.function.driverFeatures, Machine.features)
    }

    func testFeaturesOKIsRefusedForUnofferedFeaturesOrWithoutVersion1() {
        let m = Machine()
        XCTAssertEqual(m.negotiate(Machine.features | NetFeatures.mac) & 8, 0, "a feature the device did not offer")
        XCTAssertEqual(m.negotiate(VirtioFeatures.eventIndex) & 8, 0, "no VERSION_1")
        XCTAssertEqual(m.negotiate(VirtioFeatures.version1) & 8, 8, "a subset with VERSION_1")
        // FEATURES_OK before DRIVER.
        m.setStatus(0)
        m.setStatus(1)
        m.setCommon(0x08, size: 4, 1)
        m.setCommon(0x0C, size: 4, 1)
        m.setStatus(1 | 8)
        XCTAssertEqual(m.status, 1)
    }

    func testStatusBitsAreNeverClearedExceptByReset() {
        let m = Machine()
        m.negotiate()
        m.setStatus(1)
        XCTAssertEqual(m.status, 0xB, "clearing DRIVER and FEATURES_OK is ignored")
        m.setStatus(0x40 | 0xB)
        XCTAssertEqual(m.status, 0xB, "DEVICE_NEEDS_RESET is the device's")
        m.setStatus(0)
        XCTAssertEqual(m.status, 0)
        // DRIVER_OK without FEATURES_OK starts nothing.
        m.setStatus(1)
        m.setStatus(3)
        m.setStatus(7)
        XCTAssertEqual(m.status, 3)
        XCTAssertTrue(m.backend.started.isEmpty)
    }

    func testQueueConfigurationIsCheckedAndFrozenOnceEnabled() {
        let m = Machine(queues: 2, maxQueueSize: 256)
        m.negotiate()
        m.setCommon(0x16, size: 2, 1)
        XCTAssertEqual(m.common(0x18, size: 2), 256, "the maximum, after reset")
        XCTAssertEqual(m.common(0x1A, size: 2), 0xFFFF)
        for bad: UInt64 in [0, 3, 100, 512, 0xFFFF] {
            m.setCommon(0x18, size: 2, bad)
            XCTAssertEqual(m.common(0x18, size: 2), 256, "size \(bad) refused")
        }
        m.setCommon(0x18, size: 2, 64)
        XCTAssertEqual(m.common(0x18, size: 2), 64)
        m.setCommon(0x1A, size: 2, 3)
        XCTAssertEqual(m.common(0x1A, size: 2), 0xFFFF, "vector 3 does not exist (3 vectors): NO_VECTOR")
        m.setCommon(0x1A, size: 2, 2)
        XCTAssertEqual(m.common(0x1A, size: 2), 2)
        m.setCommon(0x20, size: 8, 0x1234_5000)
        m.setCommon(0x2C, size: 4, 0x1)
        m.setCommon(0x28, size: 4, 0x6000)
        XCTAssertEqual(m.common(0x28, size: 8), 0x1_0000_6000, "64-bit fields in two halves")
        m.setCommon(0x1C, size: 2, 1)
        XCTAssertEqual(m.common(0x1C, size: 2), 1)
        // Frozen.
        m.setCommon(0x18, size: 2, 16)
        m.setCommon(0x1A, size: 2, 0)
        m.setCommon(0x20, size: 8, 0)
        m.setCommon(0x1C, size: 2, 0)
        XCTAssertEqual(m.common(0x18, size: 2), 64)
        XCTAssertEqual(m.common(0x1A, size: 2), 2)
        XCTAssertEqual(m.common(0x20, size: 8), 0x1234_5000)
        XCTAssertEqual(m.common(0x1C, size: 2), 1)
        // Out of range selections read as "no queue" and write nothing.
        m.setCommon(0x16, size: 2, 9)
        XCTAssertEqual(m.common(0x18, size: 2), 0)
        m.setCommon(0x18, size: 2, 16)
        m.setCommon(0x1C, size: 2, 1)
        XCTAssertEqual(m.function.queues.filter(\.enabled).count, 1)
    }

    func testDriverOKStartsTheEnabledQueuesAndDoorbellsReachTheBackend() {
        let m = Machine(queues: 2)
        m.negotiate()
        m.setUpQueue(1, size: 32, base: 0x20_0000, vector: 1)
        // A doorbell before DRIVER_OK is ignored.
        m.write(m.bar + 0x3004, size: 2, 1)
        m.setStatus(0xF)
        XCTAssertEqual(m.status, 0xF)
        XCTAssertTrue(m.function.started)
        let start = try! XCTUnwrap(m.backend.started.first)
        XCTAssertEqual(start.features, Machine.features)
        XCTAssertEqual(start.queues, [VirtioQueueConfig(index: 1, size: 32, vector: 1, descriptorTable: 0x20_0000,
                                                        driverArea: 0x20_1000, deviceArea: 0x20_2000)])
        m.write(m.bar + 0x3004, size: 2, 1)
        m.write(m.bar + 0x3000, size: 2, 0)   // queue 0 is not enabled
        m.write(m.bar + 0x3004, size: 1, 1)   // wrong width
        m.write(m.bar + 0x3006, size: 2, 1)   // between doorbells
        m.write(m.bar + 0x3008, size: 2, 2)   // past the last queue
        XCTAssertEqual(m.backend.notified, [1])
        // After DRIVER_OK every queue is frozen.
        m.setCommon(0x16, size: 2, 0)
        m.setCommon(0x1C, size: 2, 1)
        XCTAssertFalse(m.function.queues[0].enabled)
    }

    func testBackendRefusalSetsNeedsResetAndSignalsTheConfigVector() {
        let m = Machine()
        let msix = try! XCTUnwrap(m.capability(id: 0x11))
        m.setConfig(msix + 2, size: 2, 0x8000)
        m.write(m.bar + 0x4000, size: 4, 0xFEE0_0000)
        m.write(m.bar + 0x4008, size: 4, 0x41)
        m.write(m.bar + 0x400C, size: 4, 0)
        XCTAssertEqual(m.platform.routes[0], MSIMessage(address: 0xFEE0_0000, data: 0x41))
        m.negotiate()
        m.setCommon(0x10, size: 2, 0)
        XCTAssertEqual(m.common(0x10, size: 2), 0)
        m.setUpQueue(0)
        m.backend.acceptDriverOK = false
        m.setStatus(0xF)
        XCTAssertEqual(m.status & 0x40, 0x40, "DEVICE_NEEDS_RESET")
        XCTAssertFalse(m.function.started)
        XCTAssertEqual(m.platform.signals.map(\.0), [0], "a configuration change interrupt")
        XCTAssertEqual(m.read(m.bar + 0x1000, size: 1), 2, "ISR: configuration change")
        XCTAssertEqual(m.read(m.bar + 0x1000, size: 1), 0, "reading the ISR cleared it")
        m.write(m.bar + 0x3000, size: 2, 0)
        XCTAssertTrue(m.backend.notified.isEmpty, "a broken device takes no doorbells")
        // Reset and try again.
        m.backend.acceptDriverOK = true
        m.negotiate()
        m.setUpQueue(0)
        m.setStatus(0xF)
        XCTAssertEqual(m.status, 0xF)
        XCTAssertGreaterThanOrEqual(m.backend.resets, 1)
    }

    func testFailedNotifyMarksTheDeviceBroken() {
        let m = Machine()
        m.negotiate()
        m.setUpQueue(0)
        m.setStatus(0xF)
        m.backend.acceptNotify = false
        m.write(m.bar + 0x3000, size: 2, 0)
        XCTAssertEqual(m.status & 0x40, 0x40)
    }

    func testResetRestoresEveryRegisterButMSIX() {
        let m = Machine()
        let msix = try! XCTUnwrap(m.capability(id: 0x11))
        m.setConfig(msix + 2, size: 2, 0x8000)
        m.negotiate()
        m.setCommon(0x10, size: 2, 1)
        m.setUpQueue(0, size: 16, base: 0x40_0000, vector: 0)
        m.setStatus(0xF)
        m.setStatus(0)
        XCTAssertEqual(m.status, 0)
        XCTAssertEqual(m.backend.resets, 2, "one from negotiate's reset, one now")
        XCTAssertEqual(m.function.driverFeatures, 0)
        XCTAssertEqual(m.common(0x10, size: 2), 0xFFFF)
        XCTAssertEqual(m.common(0x16, size: 2), 0)
        XCTAssertEqual(m.common(0x18, size: 2), 256)
        XCTAssertEqual(m.common(0x1A, size: 2), 0xFFFF)
        XCTAssertEqual(m.common(0x1C, size: 2), 0)
        XCTAssertEqual(m.common(0x20, size: 8), 0)
        XCTAssertFalse(m.function.started)
        XCTAssertTrue(m.function.msix.enabled, "MSI-X is PCI state: a virtio reset leaves it")
    }

    func testMSIXMaskingReportsRoutesAndDeliversPendingConfigInterrupts() {
        let m = Machine()
        let msix = try! XCTUnwrap(m.capability(id: 0x11))
        for vector in 0..<3 {
            m.write(m.bar + 0x4000 + 16 * UInt64(vector), size: 8, 0xFEE0_0000)
            m.write(m.bar + 0x4008 + 16 * UInt64(vector), size: 4, 0x30 + UInt64(vector))
        }
        XCTAssertEqual(m.read(m.bar + 0x400C, size: 4), 1, "vectors start masked")
        m.write(m.bar + 0x400C, size: 4, 0xFFFF_FFFE)
        XCTAssertEqual(m.read(m.bar + 0x400C, size: 4), 0, "reserved vector control bits stay zero")
        m.write(m.bar + 0x4000, size: 4, 0xFEE0_0003)
        XCTAssertEqual(m.read(m.bar + 0x4000, size: 4), 0xFEE0_0000, "the address's low bits are reserved")
        XCTAssertTrue(m.platform.routes.isEmpty, "MSI-X is off: no routes")
        m.setConfig(msix + 2, size: 2, 0x8000)
        XCTAssertEqual(m.platform.routes, [0: MSIMessage(address: 0xFEE0_0000, data: 0x30)])
        m.write(m.bar + 0x401C, size: 4, 0)
        XCTAssertEqual(m.platform.routes[1], MSIMessage(address: 0xFEE0_0000, data: 0x31))
        // Function mask: every route goes.
        m.setConfig(msix + 2, size: 2, 0xC000)
        XCTAssertNil(m.platform.routes[0] ?? nil)
        XCTAssertNil(m.platform.routes[1] ?? nil)
        // A configuration interrupt while masked is pending, then sent on unmask.
        m.negotiate()
        m.setCommon(0x10, size: 2, 1)
        m.function.configChanged()
        XCTAssertTrue(m.platform.signals.isEmpty)
        XCTAssertEqual(m.read(m.bar + 0x6000, size: 8), 0b10, "PBA: vector 1 pending")
        m.setConfig(msix + 2, size: 2, 0x8000)
        XCTAssertEqual(m.platform.signals.map(\.0), [1])
        XCTAssertEqual(m.read(m.bar + 0x6000, size: 8), 0)
        XCTAssertEqual(m.common(0x15, size: 1), 1, "config_generation moved")
        // The table takes only aligned dwords and qwords.
        m.write(m.bar + 0x4002, size: 4, 0)
        m.write(m.bar + 0x4008, size: 2, 0)
        XCTAssertEqual(m.read(m.bar + 0x4008, size: 4), 0x30)
        XCTAssertEqual(m.read(m.bar + 0x4001, size: 4), 0xFFFF_FFFF)
    }

    func testDeviceConfigurationGoesToTheBackendWithinItsSize() {
        let m = Machine()
        XCTAssertEqual(m.read(m.bar + 0x2000, size: 4), 0x0403_0201)
        XCTAssertEqual(m.read(m.bar + 0x2016, size: 2), 0x1817)
        XCTAssertEqual(m.read(m.bar + 0x2016, size: 4), 0xFFFF_FFFF, "past the 24 bytes")
        m.write(m.bar + 0x2004, size: 2, 0xABCD)
        m.write(m.bar + 0x2017, size: 2, 0xABCD)
        XCTAssertEqual(m.backend.configWrites.map(\.0), [4])
    }
}
