import Config
import HostOS
import KVM
import Logging
import VMM
#if canImport(Glibc)
import Glibc
#endif

/// `bulkhead-vmm` (and `bulkhead partition`, which execs it): runs one partition, a KVM guest
/// whose disks and NICs are virtio-pci devices served over vhost-user by its tenant's block
/// server and the switch. `bulkhead run` starts one per configured partition; it can also run
/// alone (with `--console`, the guest's serial console is copied to the terminal).
///
/// The module loads no Foundation (nor ICU): the process's memory beyond guest RAM, and its
/// start-up time, are per partition.
///
/// Everything the process will ever open is opened first, as root and single-threaded: the boot
/// files (measured), /dev/kvm and the VM, the backends' sockets, the console log. Then the jail:
/// own namespaces with an empty root, the partition's own uid, no capabilities, the partition's
/// seccomp allowlist, and on each vCPU thread a tighter one stacked on it.
public enum PartitionProcess {
    /// Runs the partition `options` names until the guest powers off, resets, fails, or a stop
    /// signal arrives. Returns the process's exit status (see `PartitionExit`): 0 when the guest
    /// powered off (or SIGTERM stopped it), 3 when it reset, 1 when the partition failed.
    public static func run(_ options: PartitionOptions) -> Int32 {
        let started = monotonicNanoseconds()
        let level = Logger.Level(rawValue: options.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        var logger = Logger(label: "bulkhead.partition")
        let tenant = options.tenant, id = options.id, console = options.console, noJail = options.noJail
        logger[metadataKey: "tenant.id"] = "\(tenant)"
        logger[metadataKey: "partition.id"] = "\(id)"
        let configuration: HostConfiguration
        do {
            configuration = try HostConfiguration.load(contentsOf: options.config)
        } catch {
            var report = "\(options.config): invalid configuration, \(error.problems.count) problem(s):\n"
            for problem in error.problems { report += "  \(problem)\n" }
            write(report, to: STDERR_FILENO)
            return 1
        }
        guard let tenantConfig = configuration.tenant(tenant), let partition = tenantConfig.partition(id) else {
            logger.critical("no partition '\(id)' of tenant '\(tenant)' in \(options.config)")
            return 1
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
            return 1
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
            return 1
        }

        let directory = "\(state)/tenants/\(tenant)/partitions/\(id)"
        let consoleLog: ConsoleLog
        do {
            try StateFiles.makeDirectories(directory, mode: 0o700)
            consoleLog = try ConsoleLog(path: directory + "/console.log", echo: console)
        } catch {
            logger.critical("cannot open the console log in \(directory): \(error)")
            return 1
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
            connectTimeoutMilliseconds: Int(options.connectTimeout * 1000))
        let runtime: PartitionRuntime
        do {
            let kvm = try KVMSystem()
            runtime = try PartitionRuntime(kvm: kvm, spec: spec, createdAt: started, logger: logger,
                                           console: { byte in consoleLog.write(byte) })
        } catch {
            logger.critical("partition could not be built: \(error)")
            return 1
        }

        if !noJail {
            do {
                try Jail.isolate(mountPoint: directory)
                try Jail.limitResources(PartitionProcess.limits(partition))
                try Jail.dropPrivileges(uid: jailUser, gid: jailUser)
                try Jail.restrictSystemCalls(.partition)
            } catch {
                logger.critical("partition jail failed; not starting: \(error)")
                return 1
            }
        }
        if options.stopWhenStdinCloses {
            do { try Lifeline.stopWhenParentGoes() } catch {
                logger.critical("partition could not watch its standard input: \(error)")
                return 1
            }
        }
        do {
            let vcpuJail: @Sendable () throws -> Void = { () throws -> Void in try Jail.restrictSystemCalls(.vcpuThread) }
            try runtime.start(threadSetup: noJail ? nil : vcpuJail)
        } catch {
            logger.critical("partition could not start: \(error)")
            return 1
        }
        logger.info("partition running", metadata: [
            "vcpus": "\(partition.vcpus)", "memory.mib": "\(partition.memoryMiB)", "disks": "\(partition.disks.joined(separator: ","))",
            "nics": "\(partition.nics.joined(separator: ","))", "jail.uid": "\(noJail ? "none" : String(jailUser))",
        ])
        let outcome = PartitionProcess.wait(for: runtime.machine, stopSignals: stopSignals, started: started, logger: logger)
        consoleLog.flush()
        switch outcome {
        case .powerOff, .stopped:
            logger.info("partition stopped: \(outcome)")
            return PartitionExit.poweredOff
        case .reset, .shutdown:
            logger.notice("partition reset: \(outcome)")
            return PartitionExit.rebooted
        case .failed(let failure):
            logger.error("partition failed: \(failure)")
            return 1
        }
    }

    /// Writes `text` whole to `descriptor` (standard output or error), without stdio.
    public static func write(_ text: String, to descriptor: Int32) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let n = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            bytes = bytes.dropFirst(n)
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

    /// Threads and descriptors the partition may have: threads, the uid-wide bound
    /// (`Jail.ResourceLimits.uidTasks`: the tenant's block server and other VMMs share the uid);
    /// descriptors for the VM, each vCPU, the memory, the console log, and per
    /// device its socket and two eventfds per queue. Twice that, plus room for the runtime. The
    /// console log may grow to 256 MiB.
    static func limits(_ partition: Partition) -> Jail.ResourceLimits {
        let devices = partition.disks.count + partition.nics.count
        return Jail.ResourceLimits(threads: Jail.ResourceLimits.uidTasks,
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
