import ArgumentParser
import Block
import Config
import Foundation
import HostOS
import PartitionProcess
import Logging
import ServiceLifecycle
import VhostUser

/// `bulkhead block-server`: serves one tenant's volumes over vhost-user-blk, one socket per
/// volume. `bulkhead run` starts one per tenant; it can also run alone for another VMM.
struct BlockServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "block-server",
        abstract: "Serve one tenant's volumes over vhost-user-blk (one Unix socket per volume).")

    @OptionGroup var options: ConfigOption

    @Option(help: "The tenant whose volumes to serve.")
    var tenant: String

    @Option(help: "Queues per volume (virtio-blk multiqueue).")
    var queues: Int = 2

    @Flag(help: "Skip the jail (namespaces, empty root, privilege drop, system-call allowlist) once the volumes are open: the server keeps root's privileges. For debugging only.")
    var noJail = false

    @Option(help: "Log level.")
    var logLevel: String = "info"

    @Flag(help: "Stop when standard input reaches end of file: `bulkhead run` passes a pipe, so a block server never outlives its daemon, even one killed with SIGKILL.")
    var stopWhenStdinCloses = false

    func validate() throws {
        guard (1...16).contains(queues) else { throw ValidationError("--queues must be 1...16") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown log level '\(logLevel)'") }
    }

    func run() throws {
        bootstrapLogging(level: Logger.Level(rawValue: logLevel) ?? .info)
        var logger = Logger(label: "bulkhead.block")
        logger[metadataKey: "tenant.id"] = "\(tenant)"
        let configuration = try loadConfiguration(options.config)
        guard let tenantConfig = configuration.tenants.first(where: { $0.id == tenant }) else {
            logger.critical("no tenant '\(tenant)' in \(options.config)")
            throw ExitCode(1)
        }
        // The tenant's own uid, kept across configuration changes (recorded in the state directory).
        let jailUser: UInt32
        do {
            let record = try JailUids.allocate(configuration).record
            guard let uid = record.uid(ofTenant: tenant) else { throw JailUidsError(description: "no uid recorded for tenant '\(tenant)'") }
            jailUser = uid
        } catch {
            logger.critical("block server has no jail uid; not serving: \(error)")
            throw ExitCode(1)
        }
        let tenantRoot = "\(configuration.host.stateDirectory)/tenants/\(tenant)"
        // SIGTERM and SIGINT are taken with sigwait below; block them before any thread exists
        // so that every thread inherits the mask.
        let stopSignals = SignalSet([SIGTERM, SIGINT])
        stopSignals.block()
        let backends: [VhostUserBackend]
        do {
            let volumes = try BlockServer.openVolumes(tenant: tenantConfig, stateDirectory: configuration.host.stateDirectory, logger: logger)
            try StateFiles.makeDirectories("\(tenantRoot)/vhost", mode: 0o700)
            // The devices make every io_uring the server will use: the jail forbids new ones.
            backends = try volumes.map { file in
                let device = try BlockDevice(volume: file, queues: queues, logger: logger)
                return VhostUserBackend(path: VolumeStore.socketPath(stateDirectory: configuration.host.stateDirectory, tenant: tenantConfig.id, volume: file.volume.id),
                                        device: device, logger: logger)
            }
            for backend in backends { try backend.listen() }
        } catch {
            logger.critical("block server could not start: \(error)")
            throw ExitCode(1)
        }
        if !noJail {
            do {
                try BlockServer.jail(mountPoint: "\(tenantRoot)/vhost", user: jailUser,
                                     limits: BlockServer.limits(volumes: tenantConfig.volumes, queues: queues))
            } catch {
                logger.critical("block server jail failed; not serving: \(error)")
                throw ExitCode(1)
            }
        }
        do {
            for backend in backends { try backend.start() }
            if stopWhenStdinCloses { try Lifeline.stopWhenParentGoes() }
        } catch {
            logger.critical("block server could not start: \(error)")
            throw ExitCode(1)
        }
        logger.info("block server ready", metadata: [
            "volumes": "\(tenantConfig.volumes.map(\.id).joined(separator: ","))", "privileges.dropped": "\(!noJail)",
            "jail.uid": "\(noJail ? "none" : String(jailUser))",
        ])
        let received = stopSignals.wait()
        logger.info("block server stopping", metadata: ["signal": "\(received)"])
        for backend in backends { backend.stop() }
        logger.info("block server stopped")
    }
}

enum BlockServer {
    /// Volumes open, sockets bound, still one thread: from here on this process lives in its own
    /// mount, network, IPC and UTS namespaces with an empty, read-only root, as `user` (the
    /// tenant's own uid and gid) with no capabilities, making only the system calls of the
    /// block-server allowlist. It can open no file and reach no socket; it can signal only
    /// itself. Threads started later inherit all of it.
    static func jail(mountPoint: String, user: UInt32, limits: Jail.ResourceLimits) throws(JailError) {
        // The tmpfs of the new root is mounted on the socket directory inside the new, private
        // mount namespace only: the host keeps seeing the sockets, and after the pivot the
        // mount point is gone from this namespace with the rest of the old tree.
        try Jail.isolate(mountPoint: mountPoint)
        // A compromised server cannot take the host's pids or descriptors with it.
        try Jail.limitResources(limits)
        // Root's capabilities go (CAP_SYS_ADMIN could mount its way back out); the tenant's own
        // uid keeps tenants' servers from signalling or tracing each other.
        try Jail.dropPrivileges(uid: user, gid: user)
        try Jail.restrictSystemCalls(.blockServer)
    }

    /// Threads and descriptors a server of `volumes` volumes with `queues` queues each may have.
    /// Threads: the uid-wide bound (`Jail.ResourceLimits.uidTasks`: the tenant's VMMs share
    /// the uid). Descriptors are per volume two for the file, the listener and its connection,
    /// up to 8 memory regions, and per queue a kick, a call, a ring and a stop eventfd. The
    /// limits are twice that, plus room for the runtime. No file may grow past the largest
    /// volume (RLIMIT_FSIZE): requests are checked against their volume's size already, and
    /// this holds even if that check had a flaw.
    static func limits(volumes: [Volume], queues: Int) -> Jail.ResourceLimits {
        Jail.ResourceLimits(threads: Jail.ResourceLimits.uidTasks,
                            files: 64 + 2 * volumes.count * (12 + 4 * queues),
                            fileBytes: volumes.map(\.sizeBytes).max() ?? 0)
    }

    /// Opens (creating on first use) every volume of `tenant`.
    static func openVolumes(tenant: Tenant, stateDirectory: String, logger: Logger) throws -> [VolumeFile] {
        let store = try VolumeStore(stateDirectory: stateDirectory, tenant: tenant.id)
        var files: [VolumeFile] = []
        for volume in tenant.volumes {
            let file = try store.open(volume)
            files.append(file)
            logger.info("volume ready", metadata: [
                "volume.id": "\(volume.id)", "volume.bytes": "\(volume.sizeBytes)", "volume.readOnly": "\(volume.readOnly)",
                "volume.direct": "\(file.directFD != nil)",
                "socket": "\(VolumeStore.socketPath(stateDirectory: stateDirectory, tenant: tenant.id, volume: volume.id))",
            ])
        }
        let configured = Set(tenant.volumes.map(\.id))
        for orphan in store.volumeFiles() where !configured.contains(orphan) {
            logger.notice("volume file kept though no longer configured; `bulkhead volume purge` releases it",
                          metadata: ["volume.id": "\(orphan)"])
        }
        return files
    }
}


/// `bulkhead volume ...`: volume maintenance.
struct VolumeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "volume", abstract: "Volume maintenance.", subcommands: [Purge.self, List.self])

    struct Purge: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Release every block of a volume that is no longer in the configuration, then delete its file.")
        @OptionGroup var options: ConfigOption
        @Option var tenant: String
        @Option var volume: String

        func run() throws {
            let configuration = try loadConfiguration(options.config)
            if let t = configuration.tenants.first(where: { $0.id == tenant }), t.volumes.contains(where: { $0.id == volume }) {
                throw ValidationError("volume '\(volume)' of tenant '\(tenant)' is still configured; remove it from \(options.config) first")
            }
            let store = try VolumeStore(stateDirectory: configuration.host.stateDirectory, tenant: tenant)
            guard store.volumeFiles().contains(volume) else {
                throw ValidationError("tenant '\(tenant)' has no volume file '\(volume)'")
            }
            try store.purge(volume: volume)
            print("purged volume \(volume) of tenant \(tenant): blocks released, file removed")
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a tenant's volume files and whether they are configured.")
        @OptionGroup var options: ConfigOption
        @Option var tenant: String

        func run() throws {
            let configuration = try loadConfiguration(options.config)
            let configured = Set(configuration.tenants.first { $0.id == tenant }?.volumes.map(\.id) ?? [])
            let store = try VolumeStore(stateDirectory: configuration.host.stateDirectory, tenant: tenant)
            for id in store.volumeFiles() {
                print("\(id)\t\(configured.contains(id) ? "configured" : "not configured (purge to release)")")
            }
        }
    }
}
