import ArgumentParser
import Config
import Foundation
import HostOS
import KVM
import Logging
import VMM

/// `bulkhead partition`: runs one partition, a KVM guest whose disks and NICs are virtio-pci
/// devices served over vhost-user by its tenant's block server and the switch. `bulkhead run`
/// starts one per configured partition; it can also run alone (with `--console`, the guest's
/// serial console is copied to the terminal).
///
/// Everything the process will ever open is opened first, as root and single-threaded: the boot
/// files (measured), /dev/kvm and the VM, the backends' sockets, the console log. Then the jail:
/// own namespaces with an empty root, the partition's own uid, no capabilities, the partition's
/// seccomp allowlist, and on each vCPU thread a tighter one stacked on it.
struct PartitionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "partition",
        abstract: "Run one partition (a KVM guest) of a tenant, with its disks and NICs served over vhost-user.",
        discussion: """
            Exit status: 0 when the guest powered off (or SIGTERM stopped it), 3 when it reset \
            (reboot or triple fault), 1 when the partition failed.
            """)

    @OptionGroup var options: ConfigOption

    @Option(help: "The tenant the partition belongs to.")
    var tenant: String

    @Option(help: "The partition's id.")
    var id: String

    @Flag(help: "Copy the guest's serial console to standard output as well as to its log file.")
    var console = false

    @Option(help: "Seconds to wait for the block server's and the switch's sockets to accept a connection.")
    var connectTimeout: Double = 20

    @Flag(help: "Skip the jail (namespaces, empty root, privilege drop, system-call allowlists). For debugging only.")
    var noJail = false

    @Option(help: "Log level.")
    var logLevel: String = "info"

    @Flag(help: "Stop when standard input reaches end of file (`bulkhead run` passes its control socket).")
    var stopWhenStdinCloses = false

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown log level '\(logLevel)'") }
        guard connectTimeout >= 0 && connectTimeout <= 600 else { throw ValidationError("--connect-timeout must be 0...600 seconds") }
    }

    func run() throws {
        let started = monotonicNanoseconds()
        bootstrapLogging(level: Logger.Level(rawValue: logLevel) ?? .info)
        var logger = Logger(label: "bulkhead.partition")
        logger[metadataKey: "tenant.id"] = "\(tenant)"
        logger[metadataKey: "partition.id"] = "\(id)"
        let configuration = try loadConfiguration(options.config)
        guard let tenantConfig = configuration.tenant(tenant), let partition = tenantConfig.partition(id) else {
            logger.critical("no partition '\(id)' of tenant '\(tenant)' in \(options.config)")
            throw ExitCode(1)
        }
        let state = configuration.host.stateDirectory
        let jailUser: UInt32
        do {
            let record = try JailUids.allocate(configuration).record
            guard let uid = record.uid(ofPartition: id, tenant: tenant) else {
                throw JailUidsError(description: "no uid recorded for partition '\(tenant)/\(id)'")
            }
            jailUser = uid
        } catch {
            logger.critical("partition has no jail uid; not starting: \(error)")
            throw ExitCode(1)
        }

        // Measured launch: what the guest boots is what the configuration names, byte for byte.
        let boot: PartitionSpec.Boot
        do {
            let limit = Int(clamping: partition.memoryBytes)
            switch partition.boot {
            case .image(let file):
                boot = .flat(image: try MeasuredImage.load(file, limit: limit).bytes)
            case .linux(let kernel, let initrd):
                boot = .linux(kernel: try MeasuredImage.load(kernel, limit: limit).bytes,
                              initrd: try initrd.map { try MeasuredImage.load($0, limit: limit).bytes } ?? [])
            }
        } catch {
            logger.critical("measured launch refused: \(error)")
            throw ExitCode(1)
        }

        let directory = "\(state)/tenants/\(tenant)/partitions/\(id)"
        let consoleLog: ConsoleLog
        do {
            try StateFiles.makeDirectories(directory, mode: 0o700)
            consoleLog = try ConsoleLog(path: directory + "/console.log", echo: console)
        } catch {
            logger.critical("cannot open the console log in \(directory): \(error)")
            throw ExitCode(1)
        }

        // SIGTERM and SIGINT are taken with sigtimedwait below: blocked before any thread exists.
        let stopSignals = SignalSet([SIGTERM, SIGINT])
        stopSignals.block()

        let spec = PartitionSpec(
            vcpus: partition.vcpus, memoryBytes: partition.memoryBytes, boot: boot, commandLine: partition.cmdline,
            disks: tenantConfig.volumes(of: partition).map { $0.vhostUserSocketPath(stateDirectory: state, tenant: tenant) },
            nics: tenantConfig.ports(of: partition).map {
                PartitionSpec.NIC(socket: $0.vhostUserSocketPath(stateDirectory: state, tenant: tenant), mac: $0.mac.bytes)
            },
            connectTimeoutMilliseconds: Int(connectTimeout * 1000))
        let runtime: PartitionRuntime
        do {
            let kvm = try KVMSystem()
            runtime = try PartitionRuntime(kvm: kvm, spec: spec, createdAt: started, logger: logger,
                                           console: { byte in consoleLog.write(byte) })
        } catch {
            logger.critical("partition could not be built: \(error)")
            throw ExitCode(1)
        }

        if !noJail {
            do {
                try Jail.isolate(mountPoint: directory)
                try Jail.limitResources(PartitionCommand.limits(partition))
                try Jail.dropPrivileges(uid: jailUser, gid: jailUser)
                try Jail.restrictSystemCalls(.partition)
            } catch {
                logger.critical("partition jail failed; not starting: \(error)")
                throw ExitCode(1)
            }
        }
        if stopWhenStdinCloses { ChildSupervisor.stopWhenParentGoes() }
        do {
            let vcpuJail: @Sendable () throws -> Void = { () throws -> Void in try Jail.restrictSystemCalls(.vcpuThread) }
            try runtime.start(threadSetup: noJail ? nil : vcpuJail)
        } catch {
            logger.critical("partition could not start: \(error)")
            throw ExitCode(1)
        }
        logger.info("partition running", metadata: [
            "vcpus": "\(partition.vcpus)", "memory.mib": "\(partition.memoryMiB)", "disks": "\(partition.disks.joined(separator: ","))",
            "nics": "\(partition.nics.joined(separator: ","))", "jail.uid": "\(noJail ? "none" : String(jailUser))",
        ])
        let outcome = PartitionCommand.wait(for: runtime.machine, stopSignals: stopSignals, started: started, logger: logger)
        consoleLog.flush()
        switch outcome {
        case .powerOff, .stopped:
            logger.info("partition stopped: \(outcome)")
        case .reset, .shutdown:
            logger.notice("partition reset: \(outcome)")
            throw ExitCode(PartitionExit.rebooted)
        case .failed(let failure):
            logger.error("partition failed: \(failure)")
            throw ExitCode(1)
        }
    }

    /// Runs until the guest decides the outcome or a stop signal arrives (then stops the guest).
    /// Logs the start-up figures once known: from process start to the guest's first
    /// instruction and to its first serial byte.
    static func wait(for machine: Machine, stopSignals: SignalSet, started: UInt64, logger: Logger) -> MachineOutcome {
        var reportedRun = false, reportedSerial = false
        while true {
            if let signal = stopSignals.wait(milliseconds: 20) {
                logger.info("partition stopping", metadata: ["signal": "\(signal)"])
                machine.stop()
            }
            let timings = machine.timings
            if !reportedRun, let run = timings.firstRunAt {
                reportedRun = true
                logger.info("guest started", metadata: [
                    "first_instruction.us": "\((run &- started) / 1000)", "first_instruction.monotonic_ns": "\(run)",
                ])
            }
            if !reportedSerial, let serial = timings.firstSerialByteAt {
                reportedSerial = true
                logger.info("guest console", metadata: [
                    "first_serial_byte.us": "\((serial &- started) / 1000)", "first_serial_byte.monotonic_ns": "\(serial)",
                ])
            }
            if let outcome = machine.waitForOutcome(timeoutMilliseconds: 0) { return outcome }
        }
    }

    /// Threads and descriptors the partition may have: a main thread, the stdin watcher, one
    /// thread per vCPU; descriptors for the VM, each vCPU, the memory, the console log, and per
    /// device its socket and two eventfds per queue. Twice that, plus room for the runtime. The
    /// console log may grow to 256 MiB.
    static func limits(_ partition: Partition) -> Jail.ResourceLimits {
        let devices = partition.disks.count + partition.nics.count
        return Jail.ResourceLimits(threads: 16 + 2 * partition.vcpus,
                                   files: 64 + 2 * (partition.vcpus + devices * (1 + 2 * 16)),
                                   fileBytes: 256 << 20)
    }
}

/// The guest's serial console: appended to its log file a line at a time (and copied to
/// standard output when run alone). Called by vCPU threads under the machine's device lock.
final class ConsoleLog: @unchecked Sendable {
    // @unchecked Sendable: `pending` is touched only under the machine's device lock (the
    // serial model's output) and, after the vCPUs stopped, by `flush`.
    private let file: FileDescriptor
    private let echo: Bool
    private var pending: [UInt8] = []

    init(path: String, echo: Bool) throws(SystemError) {
        file = try FileDescriptor.open(path, flags: O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, mode: 0o600)
        self.echo = echo
        pending.reserveCapacity(256)
    }

    func write(_ byte: UInt8) {
        pending.append(byte)
        if byte == 0x0A || pending.count >= 256 { flush() }
    }

    func flush() {
        guard !pending.isEmpty else { return }
        pending.withUnsafeBytes { bytes in
            try? file.writeAll(bytes)
            if echo { _ = Glibc.write(STDOUT_FILENO, bytes.baseAddress, bytes.count) }
        }
        pending.removeAll(keepingCapacity: true)
    }
}
