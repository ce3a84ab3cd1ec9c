import Config
import HostOS
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

        var network = PortNetwork(stateDirectory: state, logger: logger)
        do {
            try network.recoverFromUncleanExit()
            try network.provision(configuration)
        } catch {
            throw DaemonError("setting up ports failed: \(error)")
        }

        let plane = ForwardingPlane(configuration: configuration)
        let taps = Dictionary(uniqueKeysWithValues: network.ports.map { ($0.interfaceName, $0) })
        guard plane.ports.allSatisfy({ taps[$0.interfaceName] != nil }) else {
            network.teardown()
            throw DaemonError("a switch port has no TAP device; this is a bug")
        }
        let statusPath = state + "/status.json"
        let counters = SwitchCounters()
        var children = [ChildSpec(
            name: "switch", metadata: [:],
            arguments: ["switch", "--config", configPath, "--log-level", logLevel],
            attach: { control, pid in
                SwitchAttachment(ports: plane.ports.map { ($0.interfaceName, taps[$0.interfaceName]!) },
                                 statusPath: statusPath, counters: counters, logger: logger).run(control, pid: pid)
            })]
        for tenant in configuration.tenants where !tenant.volumes.isEmpty {
            children.append(ChildSpec(
                name: "block server", metadata: ["tenant.id": "\(tenant.id)"],
                arguments: ["block-server", "--config", configPath, "--tenant", tenant.id, "--stop-when-stdin-closes"],
                attach: nil))
        }
        logger.info("bulkhead ready", metadata: [
            "tenants": "\(configuration.tenants.count)", "ports": "\(plane.ports.count)", "status": "\(statusPath)",
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
    let ports: [(interface: String, tap: TapPort)]
    let statusPath: String
    let counters: SwitchCounters
    let logger: Logger

    func run(_ control: borrowing UnixStream, pid: Int32) {
        defer { counters.switchEnded() }
        var logger = self.logger
        logger[metadataKey: "switch.pid"] = "\(pid)"
        do {
            for (index, port) in ports.enumerated() {
                try control.send(.port(index: index, interface: port.interface), fds: port.tap.queueFDs)
            }
            try control.send(.start)
        } catch {
            logger.error("could not hand the switch its ports", metadata: ["error": "\(error)"])
            return
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: ChildSupervisor.controlBufferBytes, alignment: 8)
        defer { buffer.deallocate() }
        var statusFailing = false
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
                let failed = !writeStatus(counters.report(statistics))
                if failed && !statusFailing {
                    logger.error("cannot write the status file", metadata: ["path": "\(statusPath)"])
                }
                statusFailing = failed
            case .port, .start:
                logger.error("the switch sent a daemon's message; stopping it", metadata: ["message": "\(message)"])
                return
            }
        }
    }

    /// Rewrites the status file; false when that failed. Counters are for operators: a failure
    /// is logged and forwarding goes on.
    private func writeStatus(_ statistics: SwitchStatistics) -> Bool {
        let status = DaemonStatus(pid: getpid(), updatedAt: Date(), switchStatistics: statistics)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        guard let data = try? encoder.encode(status) else { return false }
        return (try? StateFiles.writeAtomically(statusPath, contents: String(decoding: data, as: UTF8.self))) != nil
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
