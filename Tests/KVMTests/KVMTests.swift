import HostOS
import KVM
import XCTest

/// The KVM layer against the real /dev/kvm: the capabilities the VMM needs, and a small real-mode
/// guest whose port I/O, reads included, and HLT come back as exits in order.
final class KVMTests: XCTestCase {
    private func system() throws -> KVMSystem {
        guard FileManager.default.fileExists(atPath: "/dev/kvm") else { throw XCTSkip("needs /dev/kvm (the kvm module)") }
        do { return try KVMSystem() } catch {
            if case .unavailable = error { throw XCTSkip("needs access to /dev/kvm: \(error)") }
            throw error
        }
    }

    func testAGuestsPortIOAndHaltAreExitsInOrder() throws {
        let kvm = try system()
        let vm = try kvm.makeMachine()
        let size = 2 << 20
        let memfd = try FileDescriptor.memfd(name: "kvm-test-guest", size: size)
        let memory = try MemoryMapping(fd: memfd.rawValue, offset: 0, size: UInt64(size), shared: true)
        // At 0x1000: out 'H', out 'i' to 0x3f8; in from it; add 1; out the sum; hlt.
        let code: [UInt8] = [0xBA, 0xF8, 0x03, 0xB0, 0x48, 0xEE, 0xB0, 0x69, 0xEE, 0xEC, 0x04, 0x01, 0xEE, 0xF4]
        (memory.base + 0x1000).copyMemory(from: code, byteCount: code.count)
        try vm.map(slot: 0, guestAddress: 0, size: UInt64(size), host: memory.base)
        let cpu = try vm.makeCPU(id: 0)
        try cpu.setRealMode(ip: 0x1000, sp: 0x8000)

        var written: [UInt8] = []
        var reads = 0
        var halted = false
        for _ in 0..<16 where !halted {
            switch try cpu.run() {
            case .io(let out, let port, let width, let count, let data):
                XCTAssertEqual(port, 0x3F8)
                XCTAssertEqual(width, 1)
                XCTAssertEqual(count, 1)
                if out {
                    written.append(data.load(as: UInt8.self))
                } else {
                    data.storeBytes(of: 0x5A, as: UInt8.self)
                    reads += 1
                }
            case .halt:
                halted = true
            case let other:
                XCTFail("unexpected exit \(other)")
                return
            }
        }
        XCTAssertTrue(halted, "the guest halted")
        XCTAssertEqual(reads, 1)
        XCTAssertEqual(written, [0x48, 0x69, 0x5B], "'H', 'i', then what the VMM answered to IN plus one")
    }
}
