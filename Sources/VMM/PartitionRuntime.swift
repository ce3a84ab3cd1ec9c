import Devices
import HostOS
import KVM
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// What one partition is made of, as plain values: the `bulkhead partition` command derives it
/// from the configuration (after measuring the boot files), tests and benchmarks write it directly.
public struct PartitionSpec: Sendable {
    public enum Boot: Sendable {
        /// A freestanding guest image, entered in ring 3 (see `FlatBoot`).
        case flat(image: [UInt8])
        /// A Linux bzImage and its initrd (empty: none), through the x86 boot protocol.
        case linux(kernel: [UInt8], initrd: [UInt8])
    }

    /// A virtio-net device served by a vhost-user-net backend (a switch port).
    public struct NIC: Sendable {
        public var socket: String
        /// The address the guest finds in the device's configuration: the port's configured MAC.
        public var mac: [UInt8]
        public init(socket: String, mac: [UInt8]) { self.socket = socket; self.mac = mac }
    }

    public var vcpus: Int
    public var memoryBytes: UInt64
    public var boot: Boot
    public var commandLine: String
    /// vhost-user-blk sockets, one virtio-blk device each: the disks take the first PCI slots
    /// after the host bridge, then the NICs.
    public var disks: [String]
    public var nics: [NIC]
    /// How long to wait for each backend's socket to accept (a daemon starts the block server,
    /// the switch and the partitions together).
    public var connectTimeoutMilliseconds: Int

    public init(vcpus: Int, memoryBytes: UInt64, boot: Boot, commandLine: String = "", disks: [String] = [],
                nics: [NIC] = [], connectTimeoutMilliseconds: Int = 0) {
        self.vcpus = vcpus; self.memoryBytes = memoryBytes; self.boot = boot; self.commandLine = commandLine
        self.disks = disks; self.nics = nics; self.connectTimeoutMilliseconds = connectTimeoutMilliseconds
    }
}

/// Why a partition could not be built.
public enum PartitionRuntimeError: Error, CustomStringConvertible {
    case machine(MachineError)
    case flatBoot(FlatBootError)
    case linuxBoot(LinuxBootError)
    case device(VhostUserPCIDeviceError)
    /// The PCI bus has no slot (or window space) left for another device.
    case busFull(socket: String)

    public var description: String {
        switch self {
        case .machine(let error): "\(error)"
        case .flatBoot(let error): "flat image: \(error)"
        case .linuxBoot(let error): "Linux kernel: \(error)"
        case .device(let error): "\(error)"
        case .busFull(let socket): "no PCI slot left for the device of \(socket)"
        }
    }
}

/// A partition ready to run: its machine (RAM, vCPUs, serial console, i8042, power control),
/// its loaded boot image, and a PCI bus (configuration mechanism #1, BARs in the MMIO window)
/// with one virtio-pci device per disk and NIC, each the vhost-user frontend of its backend.
///
/// Building it opens everything it will use (the VM, the backends' connections, eventfds) and
/// starts no thread, so the caller can jail the process between `init` and `start`.
public final class PartitionRuntime {
    public let machine: Machine
    public let bus: PCIBus
    /// The virtio devices, disks first, then NICs, in slot order.
    public let devices: [VhostUserPCIDevice]

    public init(kvm: borrowing KVMSystem, spec: PartitionSpec, createdAt: UInt64 = monotonicNanoseconds(),
                logger: Logger, console: @escaping @Sendable (UInt8) -> Void) throws(PartitionRuntimeError) {
        do {
            machine = try Machine(kvm: kvm, configuration: MachineConfiguration(vcpus: spec.vcpus, memoryBytes: spec.memoryBytes),
                                  createdAt: createdAt, console: console)
        } catch {
            throw .machine(error)
        }
        let entry: LongModeEntry
        switch spec.boot {
        case .flat(let image):
            do { entry = try FlatBoot.load(image: image, commandLine: spec.commandLine, into: machine) } catch { throw .flatBoot(error) }
        case .linux(let kernel, let initrd):
            do { entry = try LinuxBoot.load(kernel: kernel, initrd: initrd, commandLine: spec.commandLine, into: machine) } catch {
                throw .linuxBoot(error)
            }
        }
        do { try machine.enter(entry) } catch { throw .machine(error) }
        let bus = PCIBus()
        self.bus = bus
        do {
            try machine.attach(PCIConfigPorts(bus: bus), space: .port, base: 0xCF8, length: 8)
            try machine.attach(bus, space: .memory, base: bus.windowBase, length: bus.windowEnd - bus.windowBase)
        } catch {
            throw .machine(error)
        }
        let host = KVMVirtioHost(machine: machine)
        let deadline = monotonicNanoseconds() + UInt64(max(0, spec.connectTimeoutMilliseconds)) * 1_000_000
        var devices: [VhostUserPCIDevice] = []
        let wanted: [(socket: String, kind: VhostUserPCIDevice.Kind)] = spec.disks.map { ($0, .block) }
            + spec.nics.map { ($0.socket, .net(mac: $0.mac)) }
        for (socket, kind) in wanted {
            let device = try PartitionRuntime.connect(socket: socket, kind: kind, host: host, logger: logger, deadline: deadline)
            guard bus.add(device.makeFunction()) != nil else { throw .busFull(socket: socket) }
            devices.append(device)
        }
        self.devices = devices
    }

    /// Connects to the backend at `socket`, retrying while it is not there yet (no socket file,
    /// nobody listening) until `deadline`.
    private static func connect(socket: String, kind: VhostUserPCIDevice.Kind, host: VirtioHost, logger: Logger,
                                deadline: UInt64) throws(PartitionRuntimeError) -> VhostUserPCIDevice {
        while true {
            do {
                return try VhostUserPCIDevice(socket: socket, kind: kind, host: host, logger: logger)
            } catch .connection(_, .system(let error)) where (error.errno == ENOENT || error.errno == ECONNREFUSED)
                && monotonicNanoseconds() < deadline {
                usleep(20_000)
            } catch {
                throw .device(error)
            }
        }
    }

    // The devices stop their queues (the backends hear GET_VRING_BASE) and take their doorbells
    // and interrupts out of the VM while it still exists: the machine's bus keeps the devices
    // alive past the VM's own descriptors otherwise.
    deinit {
        for device in devices { device.reset() }
    }

    /// Starts the vCPUs; see `Machine.start(threadSetup:)`.
    public func start(threadSetup: (@Sendable () throws -> Void)? = nil) throws(MachineError) {
        try machine.start(threadSetup: threadSetup)
    }
}
