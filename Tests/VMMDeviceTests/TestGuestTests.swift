import Block
import Config
import Devices
import Foundation
import HostOS
import KVM
import Logging
import Synchronization
import VMM
import VhostUser
import XCTest

/// The test guest (Tests/Guest) on a real `Machine` with the PCI bus, a virtio-blk device whose
/// queues the block server serves over vhost-user, doorbells as ioeventfds and MSI-X through
/// irqfds: the wiring the partition command does, end to end.
final class TestGuestTests: XCTestCase {
    private var state = ""
    private var backends: [VhostUserBackend] = []
    private let logger = Logger(label: "test")

    override func setUp() {
        state = NSTemporaryDirectory() + "bulkhead-vmm-guest-\(UUID().uuidString)"
    }

    override func tearDown() {
        for backend in backends { backend.stop() }
        backends.removeAll()
        try? FileManager.default.removeItem(atPath: state)
    }

    private static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// Builds the guest once per process: nil when gcc or objcopy is missing.
    private static let image: Result<[UInt8], Error> = Result {
        let directory = NSTemporaryDirectory() + "bulkhead-vmm-test-guest-\(getpid())"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = [repository.appendingPathComponent("Tests/Guest/build.sh").path, directory]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw XCTSkip("Tests/Guest/build.sh failed (\(process.terminationStatus))") }
        return try [UInt8](Data(contentsOf: URL(fileURLWithPath: directory + "/bhtest.bin")))
    }

    private final class Console: Sendable {
        private let bytes = Mutex<[UInt8]>([])
        var sink: @Sendable (UInt8) -> Void { { [self] byte in bytes.withLock { $0.append(byte) } } }
        var text: String { String(decoding: bytes.withLock { $0 }, as: UTF8.self) }
    }

    /// Boots the guest with `commandLine` and a virtio-blk device on a fresh 16 MiB volume; returns
    /// its console and outcome.
    private func run(commandLine: String) throws -> (console: String, outcome: MachineOutcome?, statistics: MachineStatistics) {
        guard FileManager.default.fileExists(atPath: "/dev/kvm") else { throw XCTSkip("needs /dev/kvm (the kvm module)") }
        for tool in ["gcc", "objcopy"] where !FileManager.default.isExecutableFile(atPath: "/usr/bin/" + tool) {
            throw XCTSkip("needs \(tool) to build the test guest (gcc and binutils)")
        }
        let image = try TestGuestTests.image.get()
        let kvm: KVMSystem
        do { kvm = try KVMSystem() } catch {
            if case .unavailable = error { throw XCTSkip("needs access to /dev/kvm: \(error)") }
            throw error
        }

        let store = try VolumeStore(stateDirectory: state, tenant: "blue")
        let volume = Volume(id: "data", sizeBytes: 16 << 20)
        let blockDevice = try BlockDevice(volume: try store.open(volume), queues: 1, logger: logger)
        try StateFiles.makeDirectories(state + "/tenants/blue/vhost")
        let socket = VolumeStore.socketPath(stateDirectory: state, tenant: "blue", volume: volume.id)
        let backend = VhostUserBackend(path: socket, device: blockDevice, logger: logger)
        try backend.start()
        backends.append(backend)

        let console = Console()
        let machine = try Machine(kvm: kvm, configuration: MachineConfiguration(vcpus: 1, memoryBytes: 64 << 20), console: console.sink)
        let bus = PCIBus()
        let host = KVMVirtioHost(machine: machine)
        let device = try VhostUserPCIDevice(socket: socket, kind: .block, host: host, logger: logger)
        XCTAssertNotNil(bus.add(device.makeFunction()))
        try machine.attach(PCIConfigPorts(bus: bus), space: .port, base: 0xCF8, length: 8)
        try machine.attach(bus, space: .memory, base: bus.windowBase, length: bus.windowEnd - bus.windowBase)
        let entry = try FlatBoot.load(image: image, commandLine: commandLine, into: machine)
        try machine.start(entry: entry)
        let outcome = machine.waitForOutcome(timeoutMilliseconds: 120_000)
        if outcome == nil { machine.stop() }
        _ = machine.waitForOutcome(timeoutMilliseconds: 10_000)
        return (console.text, outcome, machine.statistics)
    }

    func testGuestDrivesVirtioBlkThroughTheBlockServer() throws {
        for commandLine in ["blk discard=zero", "blk msix=1"] {
            let run = try run(commandLine: commandLine)
            XCTAssertEqual(run.outcome, .powerOff, "\(commandLine): \(run.console)")
            XCTAssertTrue(run.console.contains("bhtest: PASS"), "\(commandLine): \(run.console)")
            for line in ["blk write ok", "blk flush ok", "blk readback ok", "blk zeroes ok", "blk discard ok zeroes"] {
                XCTAssertTrue(run.console.contains("bhtest: " + line), "\(commandLine): \(line)")
            }
            // The guest counts its MMIO accesses, doorbells among them; the VMM saw all but the
            // doorbells, which the ioeventfds took.
            let counts = try XCTUnwrap(TestGuestTests.exitCounts(run.console), run.console)
            XCTAssertGreaterThan(counts.doorbells, 0)
            XCTAssertEqual(run.statistics.mmioExits, counts.mmio - counts.doorbells, "doorbells never exit to the VMM")
            tearDown()
            setUp()
        }
    }

    /// `bhtest: exits pio=N mmio=N doorbells=N ...`: the MMIO accesses and doorbells the guest made.
    static func exitCounts(_ console: String) -> (mmio: Int, doorbells: Int)? {
        guard let line = console.split(separator: "\n").first(where: { $0.hasPrefix("bhtest: exits ") }) else { return nil }
        var fields: [String: Int] = [:]
        for token in line.split(separator: " ") {
            let parts = token.split(separator: "=")
            if parts.count == 2, let value = Int(parts[1]) { fields[String(parts[0])] = value }
        }
        guard let mmio = fields["mmio"], let doorbells = fields["doorbells"] else { return nil }
        return (mmio, doorbells)
    }

    /// 4 KiB random reads at depth 32 for two seconds: the figure, and that the doorbells stayed
    /// in the kernel. Not a benchmark gate (the volume is a small file in the page cache).
    func testRandomReadsAtDepth32() throws {
        let run = try run(commandLine: "bench=randread qd=32 seconds=2")
        XCTAssertEqual(run.outcome, .powerOff, run.console)
        let bench = try XCTUnwrap(run.console.split(separator: "\n").first { $0.hasPrefix("bhtest: bench randread") }, run.console)
        print(bench)
        XCTAssertTrue(bench.contains(" errors=0 "), String(bench))
        let counts = try XCTUnwrap(TestGuestTests.exitCounts(run.console))
        XCTAssertEqual(run.statistics.mmioExits, counts.mmio - counts.doorbells)
    }

    func testHostileGuestGetsItsDeviceBrokenNotTheVMM() throws {
        let run = try run(commandLine: "hostile=pci,virtio,ring blk")
        XCTAssertEqual(run.outcome, .powerOff, run.console)
        XCTAssertTrue(run.console.contains("bhtest: hostile virtio"), run.console)
        XCTAssertTrue(run.console.contains("bhtest: PASS"), run.console)
    }
}
