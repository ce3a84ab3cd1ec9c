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

    func testMMIOExitsCarryAddressLengthDirectionAndData() throws {
        let kvm = try system()
        let vm = try kvm.makeMachine()
        // RAM is [0, 0x8000); 0x9000 is nothing, so accesses there exit to the VMM.
        let size = 0x8000
        let memfd = try FileDescriptor.memfd(name: "kvm-test-mmio", size: size)
        let memory = try MemoryMapping(fd: memfd.rawValue, offset: 0, size: UInt64(size), shared: true)
        // mov $0x1234,%ax; mov %ax,(0x9000); mov (0x9004),%ax; mov $0x3f8,%dx; out %al,(%dx); hlt
        let code: [UInt8] = [0xB8, 0x34, 0x12, 0xA3, 0x00, 0x90, 0xA1, 0x04, 0x90, 0xBA, 0xF8, 0x03, 0xEE, 0xF4]
        (memory.base + 0x1000).copyMemory(from: code, byteCount: code.count)
        try vm.map(slot: 0, guestAddress: 0, size: UInt64(size), host: memory.base)
        let cpu = try vm.makeCPU(id: 0)
        try cpu.setRealMode(ip: 0x1000, sp: 0x7000)

        guard case .mmio(let address, let length, let isWrite, let data) = try cpu.run() else { return XCTFail("expected an MMIO write") }
        XCTAssertEqual(address, 0x9000)
        XCTAssertEqual(length, 2)
        XCTAssertTrue(isWrite)
        XCTAssertEqual(data.loadUnaligned(as: UInt16.self), 0x1234)

        guard case .mmio(let readAddress, let readLength, let readIsWrite, let readData) = try cpu.run() else {
            return XCTFail("expected an MMIO read")
        }
        XCTAssertEqual(readAddress, 0x9004)
        XCTAssertEqual(readLength, 2)
        XCTAssertFalse(readIsWrite)
        readData.storeBytes(of: UInt16(0x5A5A), as: UInt16.self)

        guard case .io(true, 0x3F8, 1, 1, let out) = try cpu.run() else { return XCTFail("expected OUT") }
        XCTAssertEqual(out.load(as: UInt8.self), 0x5A, "the guest got what the VMM answered")
        XCTAssertEqual(try cpu.run(), .halt)
    }

    func testAVCPUTakesTheMachineSetup() throws {
        let kvm = try system()
        let supported = try kvm.supportedCPUID()
        XCTAssertTrue(supported.contains { $0.function == 1 })
        XCTAssertFalse(try kvm.msrIndexList().isEmpty)
        let vm = try kvm.makeMachine()
        try vm.setIdentityMapAddress(0xFEFF_C000)
        try vm.setTSSAddress(0xFEFF_D000)
        try vm.createInterruptController()
        try vm.createTimer()
        try vm.setInterruptLine(4, high: false)
        let cpu = try vm.makeCPU(id: 0)
        try cpu.setCPUID(CPUID.table(supported: supported, apicID: 0, vcpuCount: 1))
        try cpu.setMSRs(ModelSpecificRegister.boot)
        try cpu.resetFPU()
        try cpu.wireLocalInterrupts()
        let entry = LongModeEntry(code: .code64(selector: 0x10, privilege: 0), data: .data(selector: 0x18, privilege: 0),
                                  taskState: .taskState(selector: 0x30, base: 0x8000, limit: 0x67), gdtBase: 0x500, gdtLimit: 0x3F,
                                  cr3: 0x1000, rip: 0x10_0000, rsp: 0x8_0000, rflags: 2)
        try cpu.enterLongMode(entry)
        XCTAssertEqual(try cpu.instructionPointer(), 0x10_0000)
        XCTAssertThrowsError(try cpu.setMSRs([ModelSpecificRegister(index: 0xDEAD_0000, value: 1)])) { error in
            XCTAssertTrue("\(error)".contains("0xdead0000"), "names the MSR refused: \(error)")
        }
    }

    func testCPUIDTableCarriesTheAPICIDTheHypervisorBitAndTheKVMSignature() {
        let supported = [
            CPUIDEntry(function: 0, eax: 0xD),
            CPUIDEntry(function: 1, eax: 0x806F2, ebx: 0xFF01_0800, ecx: 0x1, edx: 0xF),
            CPUIDEntry(function: 0xB, index: 0, flags: 1, eax: 1, ebx: 1, ecx: 0x100, edx: 7),
            CPUIDEntry(function: 0xB, index: 1, flags: 1, eax: 4, ebx: 1, ecx: 0x201, edx: 7),
        ]
        let table = CPUID.table(supported: supported, apicID: 5, vcpuCount: 8)
        let leaf1 = table.first { $0.function == 1 }
        XCTAssertEqual(leaf1?.ebx, 0x0508_0800, "APIC id 5 in bits 31-24, 8 logical processors in 23-16")
        XCTAssertEqual(leaf1?.ecx, 0x8000_0001, "the hypervisor bit")
        XCTAssertEqual(table.filter { $0.function == 0xB }.map(\.edx), [5, 5], "x2APIC id in every topology subleaf")
        let signature = table.first { $0.function == 0x4000_0000 }
        XCTAssertEqual(signature?.eax, 0x4000_0001)
        XCTAssertEqual(signature.map { [$0.ebx, $0.ecx, $0.edx] }, [0x4B4D_564B, 0x564B_4D56, 0x4D], "KVMKVMKVM")
        XCTAssertTrue(table.contains { $0.function == 0x4000_0001 })
        XCTAssertEqual(table.count, supported.count + 2)
    }

    func testSegmentsEncodeAsTheirGDTDescriptors() {
        XCTAssertEqual(Segment.code64(selector: 0x10, privilege: 0).descriptor, 0x00AF_9B00_0000_FFFF)
        XCTAssertEqual(Segment.data(selector: 0x18, privilege: 0).descriptor, 0x00CF_9300_0000_FFFF)
        XCTAssertEqual(Segment.data(selector: 0x20, privilege: 3).descriptor, 0x00CF_F300_0000_FFFF)
        XCTAssertEqual(Segment.code64(selector: 0x28, privilege: 3).descriptor, 0x00AF_FB00_0000_FFFF)
        XCTAssertEqual(Segment.code64(selector: 0x28, privilege: 3).selector, 0x2B, "RPL 3")
        let tss = Segment.taskState(selector: 0x30, base: 0x1234_5678_9000, limit: 0x2068)
        XCTAssertEqual(tss.descriptor, 0x5600_8B78_9000_2068)
        XCTAssertEqual(tss.systemHigh, 0x1234)
    }
}
