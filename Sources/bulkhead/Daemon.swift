import Config
import HostOS
import PartitionProcess
import Logging
import Foundation
import ServiceLifecycle
import Synchronization
import Switch
import SwitchEngine

/// A startup failure, said so that an operator knows what to fix.
struct DaemonError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// `bulkhead run`: owns the state directory and the kernel objects of the switch's ports (TAP
/// devices, namespaces), runs the jailed children (the switch, a block server per tenant with
/// volumes) under one supervisor until SIGTERM or SIGINT, then removes everything it created.
struct Daemon {
    let configuration: HostConfiguration
    let configPath: String
    /// Passed on to the children.
    let logLevel: String
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
        let jailUids: JailUidRecord
        do {
            let (record, added) = try JailUids.allocate(configuration)
            jailUids = record
            if !added.isEmpty {
                logger.info("jail uids recorded", metadata: [
                    "tenants": "\(added.joined(separator: ","))", "record": "\(JailUids.path(stateDirectory: state))",
                ])
            }
        } catch {
            throw DaemonError("\(error)")
        }

        // One TAP queue per packet worker of the switch (PortNetwork, Dataplane).
        let workers = configuration.host.switchSettings.resolvedWorkers(onlineCores: onlineProcessorCount())
        var network = PortNetwork(stateDirectory: state, logger: logger)
        do {
            try network.recoverFromUncleanExit()
            try network.provision(configuration, workers: workers)
        } catch {
            throw DaemonError("setting up ports failed: \(error)")
        }

        // Keyed by "tenant/port": a vhost-user port claims no interface name.
        var handles = Dictionary(uniqueKeysWithValues: network.ports.map { ("\($0.tenant)/\($0.port)", SwitchPortHandle.tap($0)) })
        do {
            for (key, listener) in try VhostUserSockets.listen(configuration, jailUids: jailUids, logger: logger) {
                handles[key] = .vhostUser(listener)
            }
        } catch {
            network.teardown()
            throw DaemonError("setting up vhost-user ports failed: \(error)")
        }
        let plane = ForwardingPlane(configuration: configuration)
        let switchPorts = plane.ports.compactMap { port in handles["\(port.tenant)/\(port.port)"].map { (port.interfaceName, $0) } }
        guard switchPorts.count == plane.ports.count else {
            network.teardown()
            throw DaemonError("a switch port has no TAP device or socket; this is a bug")
        }
        let status = StatusFile(path: state + "/status.json", logger: logger)
        let counters = SwitchCounters()
        var children = [ChildSpec(
            name: "switch", metadata: [:],
            arguments: ["switch", "--config", configPath, "--workers", "\(workers)", "--log-level", logLevel],
            attach: { control, pid in
                SwitchAttachment(ports: switchPorts, status: status, counters: counters, logger: logger).run(control, pid: pid)
            })]
        for tenant in configuration.tenants where !tenant.volumes.isEmpty {
            children.append(ChildSpec(
                name: "block server", metadata: ["tenant.id": "\(tenant.id)"],
                arguments: ["block-server", "--config", configPath, "--tenant", tenant.id, "--stop-when-stdin-closes"],
                attach: nil))
        }
        // Partitions last: each connects to its tenant's block server and the switch (waiting
        // for their sockets), and its restart policy decides what follows its end.
        let vmm: String
        do { vmm = try ChildProcess.sibling("bulkhead-vmm") } catch {
            network.teardown()
            throw DaemonError("cannot locate bulkhead-vmm next to bulkhead: \(error)")
        }
        for tenant in configuration.tenants {
            for partition in tenant.partitions {
                let policy = partition.restart
                children.append(ChildSpec(
                    name: "partition \(partition.id)", metadata: ["tenant.id": "\(tenant.id)", "partition.id": "\(partition.id)"],
                    arguments: ["--config", configPath, "--tenant", tenant.id, "--id", partition.id,
                                "--log-level", logLevel, "--stop-when-stdin-closes"],
                    executable: vmm,
                    attach: nil,
                    restartsAfter: { policy.restarts(after: PartitionExit.ending($0)) }))
            }
        }
        logger.info("bulkhead ready", metadata: [
            "tenants": "\(configuration.tenants.count)", "ports": "\(plane.ports.count)", "switch.workers": "\(workers)",
            "status": "\(status.path)",
        ])
        let group = ServiceGroup(
            services: [ChildSupervisor(children: children, logger: logger)],
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

/// The daemon's side of one run of the switch child: hands it every port's TAP queues (the
/// same fds each time it is restarted, so the tenant endpoints keep their links), then writes
/// the counters it reports to `status.json` until it exits.
struct SwitchAttachment {
    let ports: [(interface: String, handle: SwitchPortHandle)]
    let status: StatusFile
    let counters: SwitchCounters
    let logger: Logger

    func run(_ control: borrowing UnixStream, pid: Int32) {
        defer { counters.switchEnded() }
        var logger = self.logger
        logger[metadataKey: "switch.pid"] = "\(pid)"
        do {
            for (index, port) in ports.enumerated() {
                try control.send(.port(index: index, interface: port.interface), fds: port.handle.descriptors)
            }
            try control.send(.start)
        } catch {
            logger.error("could not hand the switch its ports", metadata: ["error": "\(error)"])
            return
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: ChildSupervisor.controlBufferBytes, alignment: 8)
        defer { buffer.deallocate() }
        while true {
            let byteCount: Int
            do { byteCount = try control.receive(into: buffer, maxFDs: 0).byteCount } catch {
                logger.error("the switch's control socket failed", metadata: ["error": "\(error)"])
                return
            }
            if byteCount == 0 { return }  // the switch exited
            let message: SwitchControlMessage
            do { message = try SwitchControlMessage.decode(UnsafeRawBufferPointer(rebasing: buffer[..<byteCount])) } catch {
                logger.error("unreadable message from the switch; stopping it", metadata: ["error": "\(error)"])
                return
            }
            switch message {
            case .ready(let workers):
                logger.info("switch forwarding", metadata: ["switch.workers": "\(workers)"])
            case .statistics(let statistics):
                status.write(counters.report(statistics))
            case .port, .start:
                logger.error("the switch sent a daemon's message; stopping it", metadata: ["message": "\(message)"])
                return
            }
        }
    }
}

/// What the daemon holds for one switch port and hands to every switch it starts.
enum SwitchPortHandle: Sendable {
    /// The TAP device's queues.
    case tap(TapPort)
    /// The vhost-user-net port's listening socket.
    case vhostUser(SharedListener)

    var descriptors: [Int32] {
        switch self {
        case .tap(let port): port.queueFDs
        case .vhostUser(let listener): [listener.rawValue]
        }
    }
}

/// The listening sockets of the vhost-user-net ports: bound by the daemon (the jailed switch
/// cannot create files) at `<stateDirectory>/tenants/<tenant>/net/<port>.sock`, mode 0660, owned
/// by root and the tenant's jail group, in a directory only root and that group can enter: the
/// daemon and the tenant's own VMM can connect, no other tenant's process can. (The status file
/// is 0600: the state directory becomes passable by anyone.)
enum VhostUserSockets {
    /// "tenant/port" to listener, for every vhost-user port.
    static func listen(_ configuration: HostConfiguration, jailUids: JailUidRecord, logger: Logger) throws -> [String: SharedListener] {
        var listeners: [String: SharedListener] = [:]
        let state = configuration.host.stateDirectory
        let served = configuration.tenants.filter { $0.ports.contains { $0.kind == .vhostUser } }
        guard !served.isEmpty else { return listeners }
        // The way in for a VMM running as the tenant's uid: the state directory and `tenants`
        // may be passed through (not listed) by anyone, a tenant's directory only by its group,
        // its `net` read by its group; everything else there stays root's.
        try StateFiles.makeDirectories("\(state)/tenants", mode: 0o700)
        try StateFiles.setOwner(state, uid: 0, gid: 0, mode: 0o711)
        try StateFiles.setOwner("\(state)/tenants", uid: 0, gid: 0, mode: 0o711)
        for tenant in served {
            let ports = tenant.ports.filter { $0.kind == .vhostUser }
            guard let group = jailUids.uid(ofTenant: tenant.id) else {
                throw DaemonError("tenant \(tenant.id) has no jail uid recorded")
            }
            let directory = "\(state)/tenants/\(tenant.id)/net"
            try StateFiles.makeDirectories(directory, mode: 0o700)
            try StateFiles.setOwner("\(state)/tenants/\(tenant.id)", uid: 0, gid: group, mode: 0o710)
            try StateFiles.setOwner(directory, uid: 0, gid: group, mode: 0o750)
            for port in ports {
                let path = port.vhostUserSocketPath(stateDirectory: state, tenant: tenant.id)
                listeners["\(tenant.id)/\(port.id)"] = try SharedListener(listeningAt: path, group: group, mode: 0o660)
                logger.info("vhost-user port ready", metadata: [
                    "tenant.id": "\(tenant.id)", "port.id": "\(port.id)", "socket": "\(path)",
                ])
            }
        }
        return listeners
    }
}

/// The switch's counters across its restarts: a restarted switch counts from zero, and the
/// daemon adds what the earlier ones had counted, so the status file's counters never go back.
final class SwitchCounters: Sendable {
    private let state = Mutex<(carried: SwitchStatistics?, last: SwitchStatistics?)>((nil, nil))

    /// Records the running switch's report; returns the totals since the daemon started.
    func report(_ statistics: SwitchStatistics) -> SwitchStatistics {
        state.withLock { s in
            s.last = statistics
            return s.carried.map { statistics.adding($0) } ?? statistics
        }
    }

    /// The running switch has exited: what it counted last is carried into the totals.
    func switchEnded() {
        state.withLock { s in
            if let last = s.last { s.carried = s.carried.map { last.adding($0) } ?? last }
            s.last = nil
        }
    }
}

extension SwitchStatistics {
    /// These counters plus `earlier`'s, port by port (the same configuration, so the same ports
    /// in the same order); gauges (MAC table entries) stay this snapshot's.
    func adding(_ earlier: SwitchStatistics) -> SwitchStatistics {
        var sum = self
        for i in sum.ports.indices where i < earlier.ports.count && earlier.ports[i].interface == sum.ports[i].interface {
            let before = earlier.ports[i]
            sum.ports[i].rx.frames &+= before.rx.frames
            sum.ports[i].rx.bytes &+= before.rx.bytes
            sum.ports[i].tx.frames &+= before.tx.frames
            sum.ports[i].tx.bytes &+= before.tx.bytes
            sum.ports[i].macLearning.learned &+= before.macLearning.learned
            sum.ports[i].macLearning.refused &+= before.macLearning.refused
            sum.ports[i].drops.merge(before.drops) { $0 &+ $1 }
        }
        return sum
    }
}
