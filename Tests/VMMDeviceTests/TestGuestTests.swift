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
    private func run(commandLine: String) throws -> (console: String, outcome: MachineOutcome?, device: VhostUserPCIDevice) {
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
        return (console.text, outcome, device)
    }

    func testGuestDrivesVirtioBlkThroughTheBlockServer() throws {
        for commandLine in ["blk discard=zero", "blk msix=1"] {
            let run = try run(commandLine: commandLine)
            XCTAssertEqual(run.outcome, .powerOff, "\(commandLine): \(run.console)")
            XCTAssertTrue(run.console.contains("bhtest: PASS"), "\(commandLine): \(run.console)")
            for line in ["blk write ok", "blk flush ok", "blk readback ok", "blk zeroes ok", "blk discard ok zeroes"] {
                XCTAssertTrue(run.console.contains("bhtest: " + line), "\(commandLine): \(line)")
            }
            print(run.console.split(separator: "\n").filter { $0.contains("virtio") || $0.contains("doorbells") }.joined(separator: "\n"))
            tearDown()
            setUp()
        }
    }

    func testHostileGuestGetsItsDeviceBrokenNotTheVMM() throws {
        let run = try run(commandLine: "hostile=pci,virtio,ring blk")
        XCTAssertEqual(run.outcome, .powerOff, run.console)
        XCTAssertTrue(run.console.contains("bhtest: hostile virtio"), run.console)
        XCTAssertTrue(run.console.contains("bhtest: PASS"), run.console)
    }
}
