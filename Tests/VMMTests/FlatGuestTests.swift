import Devices
import Foundation
import HostOS
import KVM
import VMM
import Synchronization
import XCTest

/// Flat ring-3 guests on the real /dev/kvm: serial output and power-off, MMIO dispatch and
/// unclaimed accesses, triple fault, stop from another thread, several vCPUs; and the start-up
/// figures (time to the first KVM_RUN and to the first serial byte, VMM memory).
final class FlatGuestTests: XCTestCase {
    /// Prints the command line (RDI), then '0' + CPL (from CS), then RSI >> 20 (RAM in MiB) as a
    /// byte, then powers off through port 0x604:
    ///     mov $0x3f8,%dx
    ///  1: mov (%rdi),%al; test %al,%al; je 2f; out %al,(%dx); inc %rdi; jmp 1b
    ///  2: mov %cs,%ax; and $3,%al; add $'0',%al; out %al,(%dx)
    ///     shr $20,%rsi; mov %sil,%al; out %al,(%dx)
    ///     mov $0x2000,%ax; mov $0x604,%dx; out %ax,(%dx)
    ///  3: jmp 3b
    static let hello: [UInt8] = [
        0x66, 0xBA, 0xF8, 0x03, 0x8A, 0x07, 0x84, 0xC0, 0x74, 0x06, 0xEE, 0x48,
        0xFF, 0xC7, 0xEB, 0xF4, 0x66, 0x8C, 0xC8, 0x24, 0x03, 0x04, 0x30, 0xEE,
        0x48, 0xC1, 0xEE, 0x14, 0x40, 0x88, 0xF0, 0xEE, 0x66, 0xB8, 0x00, 0x20,
        0x66, 0xBA, 0x04, 0x06, 0x66, 0xEF, 0xEB, 0xFE,
    ]

    /// Writes 0x12345678 to 0xC000_0000, reads 0xC000_0008 and prints its low byte; reads
    /// 0xD000_0000 (nothing there) and prints its low byte; reads port 0x3F0 (nothing there) and
    /// prints it; powers off:
    ///     mov $0xc0000000,%ebx; movl $0x12345678,(%rbx); mov 8(%rbx),%eax
    ///     mov $0x3f8,%dx; out %al,(%dx)
    ///     mov $0xd0000000,%ebx; mov (%rbx),%eax; out %al,(%dx)
    ///     mov $0x3f0,%dx; in (%dx),%al; mov $0x3f8,%dx; out %al,(%dx)
    ///     mov $0x2000,%ax; mov $0x604,%dx; out %ax,(%dx); 1: jmp 1b
    static let mmio: [UInt8] = [
        0xBB, 0x00, 0x00, 0x00, 0xC0, 0xC7, 0x03, 0x78, 0x56, 0x34, 0x12, 0x8B,
        0x43, 0x08, 0x66, 0xBA, 0xF8, 0x03, 0xEE, 0xBB, 0x00, 0x00, 0x00, 0xD0,
        0x8B, 0x03, 0xEE, 0x66, 0xBA, 0xF0, 0x03, 0xEC, 0x66, 0xBA, 0xF8, 0x03,
        0xEE, 0x66, 0xB8, 0x00, 0x20, 0x66, 0xBA, 0x04, 0x06, 0x66, 0xEF, 0xEB,
        0xFE,
    ]

    /// ud2: #UD with no IDT, a triple fault.
    static let invalidOpcode: [UInt8] = [0x0F, 0x0B]
    /// 1: jmp 1b (no exits at all).
    static let spin: [UInt8] = [0xEB, 0xFE]

    private func boot(_ image: [UInt8], commandLine: String = "", vcpus: Int = 1, memoryMiB: UInt64 = 64,
                      console: ConsoleCapture, prepare: (Machine) throws -> Void = { _ in }) throws -> Machine {
        let kvm = try openKVM()
        let machine = try Machine(kvm: kvm, configuration: MachineConfiguration(vcpus: vcpus, memoryBytes: memoryMiB << 20),
                                  console: console.sink)
        try prepare(machine)
        let entry = try FlatBoot.load(image: image, commandLine: commandLine, into: machine)
        try machine.start(entry: entry)
        return machine
    }

    func testRingThreeGuestPrintsItsCommandLineAndPowersOff() throws {
        let console = ConsoleCapture()
        let token = "bhflat-\(UUID().uuidString.prefix(8))"
        let machine = try boot(FlatGuestTests.hello, commandLine: "hello \(token)", console: console)
        let outcome = machine.waitForOutcome(timeoutMilliseconds: 20_000)
        if outcome == nil { machine.stop() }
        XCTAssertEqual(outcome, .powerOff, "serial so far: \(console.text)")
        // The command line through RDI, CPL 3, then 64 (MiB of RAM, from RSI) as a byte.
        XCTAssertEqual(console.data, Array("hello \(token)".utf8) + [UInt8(ascii: "3"), 64])
        let timings = machine.timings
        XCTAssertNotNil(timings.firstRunAt)
        XCTAssertNotNil(timings.firstSerialByteAt)
        XCTAssertEqual(machine.statistics.unclaimedPortAccesses, 0)
    }

    func testMMIOReachesTheAttachedDeviceAndUnclaimedAccessesReadAllOnes() throws {
        final class Recorder: BusDevice, @unchecked Sendable {
            // @unchecked Sendable: touched by the machine under its bus lock, read after it stopped.
            var writes: [(offset: UInt64, value: UInt64, size: Int)] = []
            func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
                data.storeLittleEndian(offset == 8 ? 0x4142_4344 : 0)
            }
            func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
                writes.append((offset, data.littleEndianValue, data.count))
            }
        }
        let recorder = Recorder()
        let console = ConsoleCapture()
        let machine = try boot(FlatGuestTests.mmio, console: console) { machine in
            try machine.attach(recorder, space: .memory, base: 0xC000_0000, length: 0x1000)
        }
        let outcome = machine.waitForOutcome(timeoutMilliseconds: 20_000)
        if outcome == nil { machine.stop() }
        XCTAssertEqual(outcome, .powerOff)
        XCTAssertEqual(console.data, [0x44, 0xFF, 0xFF], "the device's byte, then all ones from nothing in MMIO and in port space")
        XCTAssertEqual(recorder.writes.count, 1)
        XCTAssertEqual(recorder.writes.first?.offset, 0)
        XCTAssertEqual(recorder.writes.first?.value, 0x1234_5678)
        XCTAssertEqual(recorder.writes.first?.size, 4)
        let statistics = machine.statistics
        XCTAssertEqual(statistics.unclaimedMemoryAccesses, 1)
        XCTAssertEqual(statistics.unclaimedPortAccesses, 1)
        XCTAssertEqual(statistics.mmioExits, 3)
    }

    func testTripleFaultIsAShutdown() throws {
        let console = ConsoleCapture()
        let machine = try boot(FlatGuestTests.invalidOpcode, console: console)
        let outcome = machine.waitForOutcome(timeoutMilliseconds: 20_000)
        if outcome == nil { machine.stop() }
        XCTAssertEqual(outcome, .shutdown(vcpu: 0))
    }

    func testStopEndsAGuestThatNeverExits() throws {
        let console = ConsoleCapture()
        let machine = try boot(FlatGuestTests.spin, vcpus: 2, console: console)
        // Running: no outcome while it spins.
        XCTAssertNil(machine.waitForOutcome(timeoutMilliseconds: 200))
        XCTAssertNotNil(machine.timings.firstRunAt)
        let asked = monotonicNanoseconds()
        machine.stop()
        XCTAssertEqual(machine.waitForOutcome(timeoutMilliseconds: 10_000), .stopped)
        let took = Double(monotonicNanoseconds() - asked) / 1e6
        XCTAssertLessThan(took, 5_000, "both vCPU threads (one in the guest, one waiting for SIPI) ended \(took) ms after stop()")
    }

    func testStopRightAfterStartNeverHangs() throws {
        for _ in 0..<30 {
            let console = ConsoleCapture()
            let machine = try boot(FlatGuestTests.spin, vcpus: 3, memoryMiB: 4, console: console)
            machine.stop()
            XCTAssertEqual(machine.waitForOutcome(timeoutMilliseconds: 10_000), .stopped)
        }
    }

    func testTheApplicationProcessorsWaitWhileTheBootstrapProcessorPowersOff() throws {
        let console = ConsoleCapture()
        let machine = try boot(FlatGuestTests.hello, commandLine: "smp", vcpus: 4, console: console)
        let outcome = machine.waitForOutcome(timeoutMilliseconds: 20_000)
        if outcome == nil { machine.stop() }
        XCTAssertEqual(outcome, .powerOff)
        XCTAssertEqual(console.data, Array("smp3".utf8) + [64])
    }

    func testAGuestLargerThanThreeGiBGetsRAMAboveFourGiB() throws {
        let kvm = try openKVM()
        let console = ConsoleCapture()
        let machine = try Machine(kvm: kvm, configuration: MachineConfiguration(vcpus: 1, memoryBytes: 3 << 30 + 64 << 20),
                                  console: console.sink)
        XCTAssertEqual(machine.memoryRegions.map(\.guestAddress), [0, 1 << 32])
        XCTAssertEqual(machine.memoryRegions.map(\.size), [3 << 30, 64 << 20])
        XCTAssertEqual(machine.memoryRegions.map(\.offset), [0, 3 << 30])
        XCTAssertEqual(machine.memoryRegions[1].userAddress, machine.memoryRegions[0].userAddress + (3 << 30))
        XCTAssertTrue(machine.memory.store(UInt64(0xABCD), at: (1 << 32) + 8))
        XCTAssertNil(machine.memory.load(UInt8.self, at: 3 << 30), "the PCI window is not RAM")
        let entry = try FlatBoot.load(image: FlatGuestTests.hello, commandLine: "", into: machine)
        XCTAssertEqual(entry.rsi, 3 << 30 + 64 << 20)
    }

    func testConfigurationAndDeviceRangesAreChecked() throws {
        let kvm = try openKVM()
        XCTAssertThrowsError(try Machine(kvm: kvm, configuration: MachineConfiguration(vcpus: 0, memoryBytes: 64 << 20), console: { _ in }))
        XCTAssertThrowsError(try Machine(kvm: kvm, configuration: MachineConfiguration(vcpus: 1, memoryBytes: (64 << 20) + 4096), console: { _ in }))
        let machine = try Machine(kvm: kvm, configuration: MachineConfiguration(vcpus: 1, memoryBytes: 64 << 20), console: { _ in })
        final class Nothing: BusDevice {
            func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) { data.fillWithOnes() }
            func write(offset: UInt64, from data: UnsafeRawBufferPointer) {}
        }
        XCTAssertThrowsError(try machine.attach(Nothing(), space: .port, base: 0x3FC, length: 2), "overlaps COM1")
        XCTAssertThrowsError(try machine.attach(Nothing(), space: .port, base: 0xFFFF, length: 2), "past port 0xFFFF")
        XCTAssertThrowsError(try machine.attach(Nothing(), space: .memory, base: UInt64.max, length: 2), "wraps")
        XCTAssertThrowsError(try machine.attach(Nothing(), space: .memory, base: 0, length: 0), "empty")
        XCTAssertNoThrow(try machine.attach(Nothing(), space: .port, base: 0xCF8, length: 8))
        XCTAssertThrowsError(try FlatBoot.load(image: [], commandLine: "", into: machine))
        XCTAssertThrowsError(try FlatBoot.load(image: [0x90], commandLine: String(repeating: "x", count: 4096), into: machine)) { error in
            XCTAssertEqual(error as? FlatBootError, .commandLine(.tooLong(length: 4096, limit: 4095)))
        }
        XCTAssertThrowsError(try FlatBoot.load(image: [UInt8](repeating: 0x90, count: 63 << 20 + 1), commandLine: "", into: machine)) { error in
            XCTAssertEqual(error as? FlatBootError, .imageTooLarge(size: 63 << 20 + 1, room: 63 << 20))
        }
    }

    /// Start-up figures for one flat guest: from opening /dev/kvm to vCPU 0's first
    /// KVM_RUN and to the guest's first serial byte, and what the VMM adds to this process's
    /// resident memory beyond guest RAM. Printed as `partition.flat.*` lines.
    func testStartupFigures() throws {
        var firstRun: [Double] = []
        var firstSerial: [Double] = []
        var overhead: [Int] = []
        var split: [String] = []
        var steps: [[Double]] = []
        for _ in 0..<5 {
            let console = ConsoleCapture()
            _ = try openKVM()  // the skip check (FileManager) outside the figures
            let before = residentMemory()
            let created = monotonicNanoseconds()
            let kvm = try KVMSystem()
            let opened = monotonicNanoseconds()
            let machine = try Machine(kvm: kvm, configuration: MachineConfiguration(vcpus: 1, memoryBytes: 64 << 20),
                                      createdAt: created, console: console.sink)
            let built = monotonicNanoseconds()
            let entry = try FlatBoot.load(image: FlatGuestTests.hello, commandLine: "x", into: machine)
            let loaded = monotonicNanoseconds()
            try machine.start(entry: entry)
            steps.append([opened - created, built - opened, loaded - built].map { Double($0) / 1e6 })
            let outcome = machine.waitForOutcome(timeoutMilliseconds: 20_000)
            if outcome == nil { machine.stop() }
            XCTAssertEqual(outcome, .powerOff)
            let after = residentMemory()
            let timings = machine.timings
            firstRun.append(Double((timings.firstRunAt ?? created) - created) / 1e6)
            firstSerial.append(Double((timings.firstSerialByteAt ?? created) - created) / 1e6)
            // Guest RAM is the shmem part; the rest (anonymous and file pages) is the VMM's.
            overhead.append((after.anon + after.file) - (before.anon + before.file))
            split.append("anon \((after.anon - before.anon) / 1024) file \((after.file - before.file) / 1024)")
        }
        func median<T: Comparable>(_ values: [T]) -> T { values.sorted()[values.count / 2] }
        let memory = residentMemory()
        print("partition.flat.first_instruction_ms=\(String(format: "%.3f", median(firstRun))) runs=\(firstRun.map { String(format: "%.3f", $0) })")
        print("partition.flat.first_serial_byte_ms=\(String(format: "%.3f", median(firstSerial))) runs=\(firstSerial.map { String(format: "%.3f", $0) })")
        print("partition.flat.steps_ms (open+check /dev/kvm, Machine.init, FlatBoot.load): \(steps.map { $0.map { String(format: "%.3f", $0) } })")
        print("partition.flat.vmm_rss_growth_kib=\(median(overhead) / 1024) runs=\(overhead.map { $0 / 1024 }) (anon+file growth per machine: \(split))")
        print("partition.flat.process_rss_kib=\(memory.rss / 1024) rss_shmem_kib=\(memory.shmem / 1024) (the whole xctest process)")
    }
}
