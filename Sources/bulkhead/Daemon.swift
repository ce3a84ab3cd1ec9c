import Config
import HostOS
import Logging
import ServiceLifecycle
import Switch
import SwitchEngine

/// A startup failure, said so that an operator knows what to fix.
struct DaemonError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The supervisor: owns the state directory, the kernel objects of the switch's ports, and the
/// dataplane thread; runs until SIGTERM or SIGINT, then removes everything it created.
struct Daemon {
    let configuration: HostConfiguration
    let configPath: String
    let logger: Logger

    func run() async throws {
        let state = configuration.host.stateDirectory
        do { try StateFiles.makeDirectories(state) } catch {
            throw DaemonError("cannot create state directory \(state): \(error)")
        }
        let lock: StateDirectoryLock
        do { lock = try StateDirectoryLock(path: state + "/bulkhead.lock") } catch {
            throw DaemonError("\(error)")
        }
        // Every tenant's jail uid is recorded before any block server starts (each also reads it).
        do {
            let added = try JailUids.allocate(configuration).added
            if !added.isEmpty {
                logger.info("jail uids recorded", metadata: [
                    "tenants": "\(added.joined(separator: ","))", "record": "\(JailUids.path(stateDirectory: state))",
                ])
            }
        } catch {
            throw DaemonError("\(error)")
        }

        let workers = configuration.host.switchSettings.resolvedWorkers(onlineCores: onlineProcessorCount())
        var network = PortNetwork(stateDirectory: state, logger: logger)
        do {
            try network.recoverFromUncleanExit()
            try network.provision(configuration, workers: workers)
        } catch {
            throw DaemonError("setting up ports failed: \(error)")
        }

        let plane = ForwardingPlane(configuration: configuration)
        let names = plane.ports.map(\.interfaceName)
        precondition(names == network.ports.map(\.interfaceName), "switch ports and TAP devices are in the same order")

        let dataplane: Dataplane
        do {
            dataplane = try Dataplane(
                plane: plane, queues: network.ports.map(\.queueFDs),
                options: .init(workers: workers), logger: logger)
        } catch {
            network.teardown()
            throw DaemonError("starting the switch failed: \(error)")
        }
        dataplane.start()
        logger.info("bulkhead ready", metadata: [
            "tenants": "\(configuration.tenants.count)", "ports": "\(names.count)", "switch.workers": "\(workers)",
            "status": "\(state)/status.json",
        ])

        let blockServers = BlockServerSupervisor(
            tenants: configuration.tenants.filter { !$0.volumes.isEmpty }.map(\.id),
            configPath: configPath, logger: logger)
        let group = ServiceGroup(
            services: [SwitchService(dataplane: dataplane, status: StatusFile(path: state + "/status.json", logger: logger)),
                       blockServers],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger)
        do {
            try await group.run()
        } catch {
            logger.error("service group failed", metadata: ["error": "\(error)"])
        }
        network.teardown()
        lock.unlock()
        logger.info("bulkhead stopped; every link and namespace it created is removed")
    }
}

/// Keeps the dataplane running until graceful shutdown, then stops its threads. Writes the
/// status file once a second (here, not on a packet thread).
struct SwitchService: Service {
    let dataplane: Dataplane
    let status: StatusFile

    func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            status.write(dataplane.statistics())
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(1)) }
        }
        dataplane.stop()
        status.write(dataplane.statistics())
    }
}
