import Foundation
import HostOS
import KVM
import VMM
import Virtio
import XCTest

/// The Linux boot protocol: header validation against hostile images (in memory, no KVM), the
/// zero page and placement for a well-formed one, and the Debian kernel on the real /dev/kvm.
final class LinuxBootTests: XCTestCase {
    /// A minimal well-formed bzImage: 4 setup sectors, protocol 2.15, relocatable, 64-bit entry,
    /// preferred at 16 MiB, 4 KiB of "kernel" whose bytes are their offset.
    static func image(kernelBytes: Int = 0x1000, _ edit: (inout [UInt8]) -> Void = { _ in }) -> [UInt8] {
        var image = [UInt8](repeating: 0, count: 5 * 512 + kernelBytes)
        func put<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { for (i, b) in $0.enumerated() { image[offset + i] = b } }
        }
        put(UInt8(4), 0x1F1)  // setup_sects
        put(UInt32(kernelBytes / 16), 0x1F4)  // syssize
        put(UInt16(0xAA55), 0x1FE)
        put(UInt8(0x6A), 0x201)  // header ends at 0x26C
        put(UInt32(0x5372_6448), 0x202)  // "HdrS"
        put(UInt16(0x020F), 0x206)
        put(UInt8(0x01), 0x211)  // LOADED_HIGH
        put(UInt32(0x7FFF_FFFF), 0x22C)  // initrd_addr_max
        put(UInt32(0x20_0000), 0x230)  // kernel_alignment
        put(UInt8(1), 0x234)  // relocatable
        put(UInt16(0x1), 0x236)  // XLF_KERNEL_64
        put(UInt32(2047), 0x238)  // cmdline_size
        put(UInt64(0x100_0000), 0x258)  // pref_address
        put(UInt32(0x40_0000), 0x260)  // init_size
        for i in 0..<kernelBytes { image[5 * 512 + i] = UInt8(truncatingIfNeeded: i) }
        edit(&image)
        return image
    }

    static func put<T: FixedWidthInteger>(_ value: T, at offset: Int, in image: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { for (i, b) in $0.enumerated() { image[offset + i] = b } }
    }

    /// Plain (not KVM) guest memory of `mib` MiB.
    final class PlainMemory {
        let file: FileDescriptor
        let mapping: MemoryMapping
        let memory: GuestMemory
        let map: GuestMemoryMap

        init(mib: UInt64) throws {
            file = try FileDescriptor.memfd(name: "linux-boot-test", size: Int(mib << 20))
            mapping = try MemoryMapping(fd: file.rawValue, offset: 0, size: mib << 20, shared: true)
            memory = try GuestMemory(regions: [GuestMemoryRegion(guestAddress: 0, size: mib << 20, host: mapping.base)])
            map = try GuestMemoryMap(ramSize: mib << 20)
        }
    }

    private func load(_ image: [UInt8], initrd: [UInt8] = [], commandLine: String = "console=ttyS0", mib: UInt64 = 64) throws -> LongModeEntry {
        let plain = try PlainMemory(mib: mib)
        return try LinuxBoot.load(kernel: image, initrd: initrd, commandLine: commandLine, memory: plain.memory, memoryMap: plain.map)
    }

    private func assertRefused(_ image: [UInt8], initrd: [UInt8] = [], commandLine: String = "console=ttyS0", mib: UInt64 = 64,
                               _ expected: LinuxBootError, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try load(image, initrd: initrd, commandLine: commandLine, mib: mib), file: file, line: line) { error in
            XCTAssertEqual(error as? LinuxBootError, expected, "\(error)", file: file, line: line)
        }
    }

    func testAWellFormedImageIsLoadedPerTheBootProtocol() throws {
        let plain = try PlainMemory(mib: 64)
        let initrd = [UInt8](repeating: 0xA5, count: 10_000)
        let image = LinuxBootTests.image()
        let entry = try LinuxBoot.load(kernel: image, initrd: initrd, commandLine: "console=ttyS0 bh.token=xyz",
                                       memory: plain.memory, memoryMap: plain.map)
        // Relocatable with a preferred address that fits: loaded there, entered at +0x200, CPL 0.
        XCTAssertEqual(entry.rip, 0x100_0200)
        XCTAssertEqual(entry.rsi, 0x7000)
        XCTAssertEqual(entry.code.selector, 0x10)
        XCTAssertEqual(entry.data.selector, 0x18)
        XCTAssertEqual(entry.code.privilege, 0)
        XCTAssertEqual(entry.rflags & 0x200, 0, "interrupts off")
        let m = plain.memory
        XCTAssertEqual(m.load(UInt8.self, at: 0x100_0000 + 0x123), 0x23, "the protected-mode kernel at its load address")
        let zeroPage: UInt64 = 0x7000
        XCTAssertEqual(m.load(UInt32.self, at: zeroPage + 0x202), 0x5372_6448, "the setup header copied")
        XCTAssertEqual(m.load(UInt8.self, at: zeroPage + 0x210), 0xFF, "type_of_loader")
        XCTAssertEqual(m.load(UInt32.self, at: zeroPage + 0x228), 0x2_0000, "cmd_line_ptr")
        let commandLine = (0..<26).compactMap { m.load(UInt8.self, at: 0x2_0000 + UInt64($0)) }
        XCTAssertEqual(String(decoding: commandLine, as: UTF8.self), "console=ttyS0 bh.token=xyz")
        XCTAssertEqual(m.load(UInt8.self, at: 0x2_0000 + 26), 0)
        let initrdAddress = try XCTUnwrap(m.load(UInt32.self, at: zeroPage + 0x218))
        XCTAssertEqual(m.load(UInt32.self, at: zeroPage + 0x21C), 10_000)
        XCTAssertEqual(initrdAddress % 0x1000, 0)
        XCTAssertLessThanOrEqual(UInt64(initrdAddress) + 10_000, 64 << 20)
        XCTAssertGreaterThanOrEqual(UInt64(initrdAddress), 0x100_0000 + 0x40_0000, "above the kernel's init_size")
        XCTAssertEqual(m.load(UInt8.self, at: UInt64(initrdAddress) + 9_999), 0xA5)
        // e820: low memory, BIOS hole, RAM from 1 MiB to the top, KVM's pages reserved.
        XCTAssertEqual(m.load(UInt8.self, at: zeroPage + 0x1E8), 4)
        var e820: [(UInt64, UInt64, UInt32)] = []
        for i in 0..<4 {
            let at = zeroPage + 0x2D0 + UInt64(i) * 20
            e820.append((m.load(UInt64.self, at: at) ?? 0, m.load(UInt64.self, at: at + 8) ?? 0, m.load(UInt32.self, at: at + 16) ?? 0))
        }
        XCTAssertEqual(e820.map(\.0), [0, 0xF_0000, 0x10_0000, 0xFEFF_C000])
        XCTAssertEqual(e820.map(\.1), [0xA_0000, 0x1_0000, (64 << 20) - 0x10_0000, 0x4000])
        XCTAssertEqual(e820.map(\.2), [1, 2, 1, 2])
        XCTAssertEqual(m.load(UInt8.self, at: zeroPage + 0x1EF), 0, "the sentinel stays zero")
        // Identity page tables: 0 GiB-4 GiB in 2 MiB pages.
        XCTAssertEqual(m.load(UInt64.self, at: 0x1000), 0x2007)
        XCTAssertEqual(m.load(UInt64.self, at: 0x3000 + 8), 0x20_0087)
    }

    func testMPTableListsEveryVCPUAndTheIOAPIC() {
        let bytes = MPTable.bytes(vcpus: 3)
        XCTAssertEqual(Array(bytes[0..<4]), Array("_MP_".utf8))
        XCTAssertEqual(bytes[0..<16].reduce(0, &+), 0, "floating pointer checksum")
        XCTAssertEqual(Array(bytes[16..<20]), Array("PCMP".utf8))
        let length = Int(bytes[20]) | Int(bytes[21]) << 8
        XCTAssertEqual(bytes.count, 16 + length)
        XCTAssertEqual(bytes[16...].reduce(0, &+), 0, "configuration table checksum")
        let count = Int(bytes[16 + 34]) | Int(bytes[16 + 35]) << 8
        XCTAssertEqual(count, 3 + 1 + 1 + 15 + 2, "processors, ISA bus, IOAPIC, 15 ISA interrupts, LINT0/LINT1")
        XCTAssertEqual(bytes[16 + 44], 0, "a processor entry first")
        XCTAssertEqual(bytes[16 + 44 + 3], 0x03, "vCPU 0 is the enabled bootstrap processor")
        XCTAssertEqual(bytes[16 + 64 + 3], 0x01, "vCPU 1 is enabled")
    }

    func testLoadAddressFallsBackWhenThePreferredOneDoesNotFitOrIsHostile() throws {
        // Preferred address beyond RAM (and near the top of the address space): 2 MiB instead.
        let far = LinuxBootTests.image { LinuxBootTests.put(UInt64(0xFFFF_FFFF_FFE0_0000), at: 0x258, in: &$0) }
        XCTAssertEqual(try load(far).rip, 0x20_0200)
        // Not relocatable: 1 MiB.
        let fixed = LinuxBootTests.image { $0[0x234] = 0 }
        XCTAssertEqual(try load(fixed).rip, 0x10_0200)
        // Misaligned preferred address: the aligned fallback.
        let odd = LinuxBootTests.image { LinuxBootTests.put(UInt64(0x100_1000), at: 0x258, in: &$0) }
        XCTAssertEqual(try load(odd).rip, 0x20_0200)
    }

    func testHostileHeadersGetSpecificErrors() {
        let good = LinuxBootTests.image()
        assertRefused(Array(good.prefix(0x200)), .imageTooSmall(size: 0x200))
        assertRefused(LinuxBootTests.image { $0[0x1FE] = 0 }, .notABootImage(bootFlag: 0xAA00))
        assertRefused(LinuxBootTests.image { $0[0x202] = UInt8(ascii: "X") }, .noSetupHeader)
        assertRefused(LinuxBootTests.image { LinuxBootTests.put(UInt16(0x0206), at: 0x206, in: &$0) },
                      .protocolTooOld(version: 0x0206, minimum: 0x020C))
        assertRefused(LinuxBootTests.image { $0[0x201] = 0 }, .badHeaderLength(end: 0x202))
        assertRefused(LinuxBootTests.image { $0[0x201] = 0xFF }, .badHeaderLength(end: 0x301))
        assertRefused(LinuxBootTests.image { $0[0x1F1] = 200 }, .setupBeyondImage(setupSize: 201 * 512, imageSize: good.count))
        assertRefused(LinuxBootTests.image { $0[0x211] = 0 }, .notBzImage)
        assertRefused(LinuxBootTests.image { $0[0x236] = 0 }, .no64BitEntry)
        assertRefused(LinuxBootTests.image { LinuxBootTests.put(UInt32.max, at: 0x1F4, in: &$0) },
                      .kernelTruncated(declared: UInt64(UInt32.max) * 16, present: 0x1000))
        assertRefused(LinuxBootTests.image { LinuxBootTests.put(UInt32(0x10), at: 0x1F4, in: &$0) },
                      .kernelTruncated(declared: 0x100, present: 0x1000))
        assertRefused(LinuxBootTests.image { LinuxBootTests.put(UInt32(0x30_0000), at: 0x230, in: &$0) }, .badAlignment(0x30_0000))
        assertRefused(LinuxBootTests.image { LinuxBootTests.put(UInt32(0), at: 0x230, in: &$0) }, .badAlignment(0))
        assertRefused(LinuxBootTests.image { LinuxBootTests.put(UInt32.max, at: 0x260, in: &$0) },
                      .kernelDoesNotFit(size: UInt64(UInt32.max), ramTop: 64 << 20))
        assertRefused(good, initrd: [UInt8](repeating: 1, count: 64 << 20), .initrdDoesNotFit(size: 64 << 20, lowest: 0x140_0000, highest: 64 << 20))
        assertRefused(LinuxBootTests.image { LinuxBootTests.put(UInt32(0x10_0000), at: 0x22C, in: &$0) }, initrd: [1, 2, 3],
                      .initrdDoesNotFit(size: 3, lowest: 0x140_0000, highest: 0x10_0001))
        assertRefused(good, commandLine: String(repeating: "a", count: 2048), .commandLine(.tooLong(length: 2048, limit: 2047)))
        assertRefused(good, commandLine: "a\u{0}b", .commandLine(.containsNUL))
        // 2 MiB of RAM: the kernel cannot fit anywhere from 1 MiB.
        assertRefused(good, mib: 2, .kernelDoesNotFit(size: 0x40_0000, ramTop: 2 << 20))
    }

    /// Random corruption of the header and lengths: every image is loaded or refused with an
    /// error, never a trap.
    func testRandomlyCorruptedHeadersNeverTrap() throws {
        let plain = try PlainMemory(mib: 32)
        var generator = SystemRandomNumberGenerator()
        var loaded = 0, refused = 0
        let initrds = [0, 1, 4096, 5 << 20, 31 << 20, 40 << 20].map { [UInt8](repeating: 7, count: $0) }
        for _ in 0..<3000 {
            var image = LinuxBootTests.image(kernelBytes: 0x800)
            for _ in 0..<Int.random(in: 1...6, using: &generator) {
                image[Int.random(in: 0x1F1..<0x290, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            }
            if Bool.random(using: &generator) { image = Array(image.prefix(Int.random(in: 0...image.count, using: &generator))) }
            let initrd = initrds[Int.random(in: 0..<initrds.count, using: &generator)]
            do {
                _ = try LinuxBoot.load(kernel: image, initrd: initrd, commandLine: "x", memory: plain.memory, memoryMap: plain.map)
                loaded += 1
            } catch {
                refused += 1
            }
        }
        XCTAssertGreaterThan(refused, 0)
        XCTAssertGreaterThan(loaded + refused, 0)
    }

    // MARK: - The Debian kernel on KVM

    /// The newest /boot/vmlinuz-*, or a skip.
    static func debianKernel() throws -> (path: String, version: String) {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/boot")) ?? []
        let versions = names.filter { $0.hasPrefix("vmlinuz-") }.map { String($0.dropFirst("vmlinuz-".count)) }
            .sorted { $0.compare($1, options: .numeric) == .orderedAscending }
        guard let version = versions.last else {
            throw XCTSkip("needs a Linux kernel in /boot/vmlinuz-* (deploy/install-deps.sh installs linux-image-cloud-amd64)")
        }
        return ("/boot/vmlinuz-\(version)", version)
    }

    /// The Debian kernel, booted through the 64-bit protocol, prints its banner and our command
    /// line on COM1. Under KVM's PVM flavour it then stops at an instruction KVM cannot emulate
    /// (FPU setup): the machine must report that as a failure, not hang.
    func testDebianKernelPrintsItsBannerAndOurCommandLine() throws {
        let kernel = try LinuxBootTests.debianKernel()
        let kvm = try openKVM()
        let image = try [UInt8](Data(contentsOf: URL(fileURLWithPath: kernel.path)))
        let token = "bhtoken=\(UUID().uuidString.prefix(12))"
        let console = ConsoleCapture()
        let machine = try Machine(kvm: kvm, configuration: MachineConfiguration(vcpus: 2, memoryBytes: 256 << 20), console: console.sink)
        let entry = try LinuxBoot.load(kernel: image, commandLine: "earlyprintk=serial,ttyS0,115200 console=ttyS0 \(token)", into: machine)
        let started = Date()
        try machine.start(entry: entry)
        let printed = console.wait(seconds: 240) { $0.contains("Linux version") && $0.contains(token) || machineEnded(machine) }
        let afterBanner = Date().timeIntervalSince(started)
        // Then it runs on (real hardware) or stops (PVM); either way within a deadline.
        let outcome = machine.waitForOutcome(timeoutMilliseconds: 60_000)
        if outcome == nil { machine.stop() }
        let final = machine.waitForOutcome(timeoutMilliseconds: 10_000)
        print("linux.banner_seconds=\(String(format: "%.1f", afterBanner)) outcome=\(final.map { "\($0)" } ?? "none") serial_bytes=\(console.data.count)")
        print(console.text.split(separator: "\n").prefix(12).joined(separator: "\n"))
        XCTAssertTrue(printed, "no banner and token within 240 s; outcome \(String(describing: final)); serial:\n\(console.text)")
        XCTAssertTrue(console.text.contains("Linux version"))
        XCTAssertTrue(console.text.contains(token), "the command line we passed is echoed")
        // Kernels built with CONFIG_X86_MPPARSE find both vCPUs in the MP table (Debian's cloud
        // kernel is not: without ACPI it sees one).
        let config = (try? String(contentsOfFile: "/boot/config-\(kernel.version)", encoding: .utf8)) ?? ""
        if config.contains("CONFIG_X86_MPPARSE=y") && console.text.contains("smpboot: Allowing") {
            XCTAssertTrue(console.text.contains("smpboot: Allowing 2 CPUs"), "the MP table lists both vCPUs")
        }
        XCTAssertNotNil(final, "the machine ended after stop()")
        if FileManager.default.fileExists(atPath: "/sys/module/kvm_pvm"), case .failed(let failure)? = outcome {
            XCTAssertEqual(failure.exit, "KVM_EXIT_INTERNAL_ERROR")
            XCTAssertNotNil(failure.instructionPointer)
        }
    }

    /// A full boot to an initramfs shell: needs hardware virtualization (under PVM ring-0 code
    /// is emulated and the kernel stops at FPU setup).
    func testDebianKernelBootsToAnInitramfsShell() throws {
        if FileManager.default.fileExists(atPath: "/sys/module/kvm_pvm") {
            throw XCTSkip("needs hardware virtualization: this host's KVM is PVM (/sys/module/kvm_pvm), which emulates ring-0 guest code and cannot run the kernel past its FPU setup")
        }
        let kernel = try LinuxBootTests.debianKernel()
        guard FileManager.default.fileExists(atPath: "/lib/modules/\(kernel.version)/modules.dep") else {
            throw XCTSkip("needs /lib/modules/\(kernel.version) for the initramfs (linux-image-cloud-amd64)")
        }
        guard FileManager.default.isExecutableFile(atPath: "/bin/busybox") else {
            throw XCTSkip("needs a static busybox for the initramfs (busybox-static)")
        }
        let kvm = try openKVM()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bh-linux-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let token = "shell-\(UUID().uuidString.prefix(8))"
        let initScript = directory.appendingPathComponent("init.sh")
        try """
        #!/bin/sh
        export PATH=/bin
        /bin/busybox --install -s /bin
        mount -t proc proc /proc
        echo "BH-SHELL $(cat /proc/cmdline | tr ' ' '\\n' | grep ^bh.token= | cut -d= -f2) $(sh -c 'echo alive')"
        reboot -f
        sleep 1000
        """.write(to: initScript, atomically: true, encoding: .utf8)
        let initramfs = directory.appendingPathComponent("initramfs.cpio.gz").path
        let build = Process()
        build.executableURL = URL(fileURLWithPath: "/bin/bash")
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Tools/guest-initramfs.sh").path
        build.arguments = [script, kernel.version, initramfs]
        build.environment = ProcessInfo.processInfo.environment.merging(["GUEST_INIT": initScript.path]) { $1 }
        try build.run()
        build.waitUntilExit()
        XCTAssertEqual(build.terminationStatus, 0, "guest-initramfs.sh")
        let console = ConsoleCapture()
        let machine = try Machine(kvm: kvm, configuration: MachineConfiguration(vcpus: 1, memoryBytes: 512 << 20), console: console.sink)
        let entry = try LinuxBoot.load(kernel: try [UInt8](Data(contentsOf: URL(fileURLWithPath: kernel.path))),
                                       initrd: try [UInt8](Data(contentsOf: URL(fileURLWithPath: initramfs))),
                                       commandLine: "console=ttyS0 reboot=k panic=-1 rdinit=/init bh.token=\(token)", into: machine)
        try machine.start(entry: entry)
        let reached = console.wait(seconds: 60) { $0.contains("BH-SHELL \(token) alive") || machineEnded(machine) }
        let outcome = machine.waitForOutcome(timeoutMilliseconds: 30_000)
        if outcome == nil { machine.stop() }
        XCTAssertTrue(reached, "serial:\n\(console.text)")
        XCTAssertEqual(outcome, .reset, "reboot -f goes through the i8042 reset")
    }
}

private func machineEnded(_ machine: Machine) -> Bool { machine.outcome != nil }
