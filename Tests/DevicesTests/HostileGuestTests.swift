import Devices
import Virtio
import XCTest

/// Garbage from a guest, everywhere: never a trap, read-only fields intact, the model's own
/// invariants kept.
final class HostileGuestTests: XCTestCase {
    /// Every aligned access of every size at every configuration offset of every slot, with
    /// all-ones, zero and random values: identity, class, header, capability list and BAR type
    /// bits read the same afterwards.
    func testWritesAllOverConfigurationSpaceLeaveReadOnlyFieldsIntact() {
        let m = Machine(queues: 4)
        let slots = [0, m.device, 7]
        func snapshot(_ device: Int) -> [UInt32] {
            // IDs, revision + class, header type, subsystem, capability pointer, interrupt pin,
            // and the capability list with every read-only field.
            var words = [0x00, 0x08, 0x0C, 0x2C, 0x34].map { m.config($0, device: device) & ($0 == 0x0C ? 0x00FF_0000 : 0xFFFF_FFFF) }
            words.append(m.config(0x3D, size: 1, device: device))
            words.append(m.config(0x06, size: 2, device: device))
            words.append(m.config(0x10, device: device) & 0xF)
            if let cap = device == m.device ? m.capability(id: 0x11) : nil {
                words.append(m.config(cap) & 0x3FFF_FFFF)
                words.append(m.config(cap + 4))
                words.append(m.config(cap + 8))
            }
            for type in [UInt8(1), 2, 3, 4] where device == m.device {
                if let cap = m.capability(id: 0x09, cfgType: type) {
                    for offset in stride(from: 0, to: 20, by: 4) { words.append(m.config(cap + offset)) }
                } else {
                    words.append(0xDEAD)
                }
            }
            return words
        }
        let before = slots.map(snapshot)
        var random = Random(seed: 0x5EED)
        for device in slots {
            for value in [0xFFFF_FFFF, 0, UInt32(truncatingIfNeeded: random.next())] as [UInt32] {
                for size in [1, 2, 4] {
                    for offset in stride(from: 0, to: 256, by: size) { m.setConfig(offset, size: size, value, device: device) }
                }
            }
        }
        // A few thousand random accesses through the ports, misaligned and odd-sized ones included.
        for _ in 0..<5000 {
            let port = UInt16(0xCF8 + random.below(8))
            let size = [1, 2, 4, 3, 8][random.below(5)]
            if random.below(3) == 0 {
                m.out(0xCF8, size: 4, Machine.address(device: slots[random.below(3)], register: random.below(256)))
            }
            if random.below(2) == 0 {
                m.out(port, size: min(size, 4), UInt32(truncatingIfNeeded: random.next()))
            } else {
                _ = m.inp(port, size: min(size, 4))
            }
        }
        m.setConfig(0x04, size: 2, 0)
        XCTAssertEqual(slots.map(snapshot), before, "read-only fields changed")
    }

    /// Random reads and writes over the whole BAR, the window around it and the config space,
    /// interleaved with sensible set-up so that the state machine is reached: the transport's
    /// invariants hold after each.
    func testRandomRegisterAccessesKeepTheTransportsInvariants() {
        for seed in 1...20 as ClosedRange<UInt64> {
            let m = Machine(queues: 3, maxQueueSize: 128)
            var random = Random(seed: seed)
            for step in 0..<3000 {
                let bar = m.function.barAddress ?? PCIBus.defaultWindowBase
                switch random.below(10) {
                case 0: m.negotiate(random.below(2) == 0 ? Machine.features : random.next())
                case 1: m.setUpQueue(UInt16(random.below(4)), size: UInt16(1) << UInt16(random.below(9)), base: random.next() & 0xFFFF_F000,
                                     vector: UInt16(random.below(5)))
                case 2: m.setStatus(UInt8(truncatingIfNeeded: random.next()))
                case 3: m.setConfig(random.below(256), size: [1, 2, 4][random.below(3)], UInt32(truncatingIfNeeded: random.next()))
                case 4: _ = m.config(random.below(256), size: [1, 2, 4][random.below(3)])
                default:
                    let offset = random.below(4) == 0 ? random.next() % 0x9000 : UInt64([0, 0x1000, 0x2000, 0x3000, 0x4000, 0x6000][random.below(6)] + random.below(0x48))
                    let size = [1, 2, 4, 8, 3][random.below(5)]
                    if random.below(2) == 0 {
                        m.write(bar &+ offset, size: min(size, 8), random.next())
                    } else {
                        _ = m.read(bar &+ offset, size: min(size, 8))
                    }
                }
                let f = m.function
                XCTAssertEqual(m.config(0x00), 0x1042_1AF4, "seed \(seed) step \(step)")
                for queue in f.queues {
                    XCTAssertTrue(queue.size >= 1 && queue.size <= 128 && queue.size & (queue.size - 1) == 0, "seed \(seed) step \(step): size \(queue.size)")
                    XCTAssertTrue(queue.vector == 0xFFFF || queue.vector < 4)
                }
                if f.status & 8 != 0 {
                    XCTAssertEqual(f.driverFeatures & ~f.info.features, 0, "accepted features were offered")
                    XCTAssertNotEqual(f.driverFeatures & VirtioFeatures.version1, 0)
                }
                if f.started { XCTAssertEqual(f.status & 0x44, 0x04, "started: DRIVER_OK, not NEEDS_RESET") }
                if let address = f.barAddress {
                    XCTAssertTrue(address >= PCIBus.defaultWindowBase && address + 0x8000 <= PCIBus.defaultWindowEnd)
                    XCTAssertEqual(m.platform.doorbells[2], address + 0x3008)
                }
            }
        }
    }

    /// A queue's frozen configuration is what the backend got, whatever the guest writes after.
    func testStartedQueuesCannotBeRewritten() {
        let m = Machine(queues: 2)
        m.negotiate()
        m.setUpQueue(0, size: 16, base: 0x10_0000)
        m.setStatus(0xF)
        let frozen = m.function.queues
        var random = Random(seed: 99)
        for _ in 0..<2000 {
            m.write(m.bar + UInt64(0x16 + 2 * random.below(14)), size: [2, 4, 8][random.below(3)], random.next())
        }
        XCTAssertEqual(m.function.queues, frozen)
        XCTAssertEqual(m.backend.started.count, 1)
    }
}
