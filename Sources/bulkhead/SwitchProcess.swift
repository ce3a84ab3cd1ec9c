import ArgumentParser
import Config
import FleetModel
import Foundation
import HostOS
import Logging
import Switch
import SwitchEngine
import VhostNet
import VhostUser

/// `bulkhead switch`: the tenant-segmented switch as a jailed process of its own. `bulkhead run`
/// starts it with one end of a socket pair as its stdin and hands it every port's TAP queues over
/// that socket (see `SwitchControlMessage`); it cannot create a TAP device, reach netlink or open
/// a file. It carries every tenant's frames, so it runs with a uid no tenant's process has, no
/// capabilities, its own namespaces, an empty root and the switch's system-call allowlist.
struct SwitchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switch",
        abstract: "Forward frames between the ports of the configuration (started by `bulkhead run`, which passes the TAP queues on stdin).")

    @OptionGroup var options: ConfigOption

    @Flag(help: "Skip the jail (namespaces, empty root, privilege drop, system-call allowlist). For debugging only.")
    var noJail = false

    @Option(help: "The tenant whose ports this switch serves (the daemon runs one switch per tenant); all tenants when left out.")
    var tenant: String?

    @Option(help: "Packet worker threads (the daemon passes host.switch.workers, resolved; each TAP port has a queue per worker).")
    var workers: Int = 1

    @Option(help: "Log level.")
    var logLevel: String = "info"

    func validate() throws {
        guard (1...256).contains(workers) else { throw ValidationError("--workers must be 1...256") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown log level '\(logLevel)'") }
    }

    func run() throws {
        bootstrapLogging(level: Logger.Level(rawValue: logLevel) ?? .info)
        let logger = Logger(label: "bulkhead.switch")
        var configuration = try loadConfiguration(options.config)
        if let tenant {
            // One tenant's switch sees only that tenant's ports: a switch compromised by a
            // hostile frame holds no other tenant's queues.
            guard configuration.tenants.contains(where: { $0.id == tenant }) else {
                logger.critical("no tenant \(tenant) in \(options.config); not forwarding")
                throw ExitCode(1)
            }
            configuration.tenants.removeAll { $0.id != tenant }
        }
        guard let jailUser = configuration.host.switchJailUid else {
            logger.critical("the configuration's jail uid range is empty; not forwarding")
            throw ExitCode(1)
        }
        // SIGTERM and SIGINT are taken with sigwait below; blocked before any thread exists so
        // that every thread inherits the mask.
        let stopSignals = SignalSet([SIGTERM, SIGINT])
        stopSignals.block()
        // The daemon's socket; it stays fd 0, owned by this process until it exits.
        let control = UnixStream(FileDescriptor(taking: STDIN_FILENO))
        let plane = ForwardingPlane(configuration: configuration)
        let dataplane: Dataplane
        let queues: ReceivedQueues
        var backends: [VhostUserBackend] = []
        do {
            queues = try SwitchProcess.receivePorts(from: control, plane: plane)
            var attachments: [PortAttachment] = []
            for (index, port) in plane.ports.enumerated() {
                switch port.configuration.kind {
                case .tap:
                    attachments.append(.tap(queues: queues.byPort[index]))
                case .vhostUser:
                    let (device, backend) = try SwitchProcess.vhostUserPort(port, configuration: configuration,
                                                                           listener: queues.takeListener(port: index),
                                                                           logger: logger)
                    attachments.append(.vhostUser(device))
                    backends.append(backend)
                }
            }
            if let view = queues.fleet {
                let problems = plane.updateFleet(view)
                if !problems.isEmpty { logger.warning("fleet view records left out", metadata: ["problems": "\(problems)"]) }
            }
            if plane.hasUplink && queues.uplink == nil {
                logger.warning("the tenant has segments with a VNI but the daemon sent no uplink: they stay on this host")
            }
            dataplane = try Dataplane(plane: plane, ports: attachments, uplink: plane.hasUplink ? queues.uplink : nil,
                                      options: .init(workers: workers), logger: logger)
        } catch {
            logger.critical("switch could not start: \(error)")
            throw ExitCode(1)
        }
        if !noJail {
            do {
                let mountPoint = configuration.host.stateDirectory + "/switch" + (tenant.map { "/" + $0 } ?? "")
                try StateFiles.makeDirectories(mountPoint, mode: 0o700)
                try SwitchProcess.jail(mountPoint: mountPoint, user: jailUser,
                                       limits: SwitchProcess.limits(queues: queues.count, vhostUserPorts: backends.count,
                                                                    workers: workers))
            } catch {
                logger.critical("switch jail failed; not forwarding: \(error)")
                throw ExitCode(1)
            }
        }
        dataplane.start()
        do {
            for backend in backends { try backend.start() }
            try control.send(.ready(workers: workers))
            try control.send(.statistics(dataplane.statistics()))
        } catch {
            logger.critical("the daemon's control socket failed: \(error)")
            throw ExitCode(1)
        }
        logger.info("switch ready", metadata: [
            "ports": "\(plane.ports.count)", "queues": "\(queues.count)", "switch.workers": "\(workers)", "privileges.dropped": "\(!noJail)",
            "jail.uid": "\(noJail ? "none" : String(jailUser))",
        ])
        // The control socket is stdin: a reader thread applies the daemon's `.fleet` messages,
        // and its end of file means the daemon is gone (SIGTERM to this process).
        try SwitchProcess.readControl(plane: plane, logger: logger)
        // The main thread waits for a stop signal and, once a second, sends the daemon the
        // counters (packet threads never encode or write anything). A failed send means the
        // daemon is gone: the watcher's SIGTERM follows.
        var received: Int32? = nil
        while received == nil {
            received = stopSignals.wait(milliseconds: 1000)
            if received == nil { try? control.send(.statistics(dataplane.statistics())) }
        }
        logger.info("switch stopping", metadata: ["signal": "\(received ?? 0)"])
        for backend in backends { backend.stop() }
        dataplane.stop()
        withExtendedLifetime(queues) {}
        logger.info("switch stopped")
    }
}

/// The descriptors the switch received, per port: a TAP port's queues, a vhost-user port's
/// listening socket. Closed when this is released, except listeners taken by their backend.
final class ReceivedQueues: @unchecked Sendable {
    // @unchecked Sendable: used by the main thread only, before any other thread exists.
    private(set) var byPort: [[Int32]]
    /// The tenant's VXLAN socket, and the fleet view that came before start.
    let uplink: Int32?
    let fleet: FleetView?
    init(_ byPort: [[Int32]], uplink: Int32? = nil, fleet: FleetView? = nil) {
        self.byPort = byPort; self.uplink = uplink; self.fleet = fleet
    }
    var count: Int { byPort.reduce(0) { $0 + $1.count } + (uplink == nil ? 0 : 1) }

    /// Hands over the listening socket of vhost-user port `port` (its only descriptor).
    func takeListener(port: Int) throws -> FileDescriptor {
        guard byPort[port].count == 1 else {
            throw SwitchControlError("vhost-user port \(port) came with \(byPort[port].count) descriptors, not its listening socket")
        }
        defer { byPort[port] = [] }
        return FileDescriptor(taking: byPort[port][0])
    }

    deinit {
        for fd in byPort.joined() { _ = close(fd) }
        if let uplink { _ = close(uplink) }
    }
}

enum SwitchProcess {
    /// How long the daemon may take to send every port.
    static let portsDeadline: UInt64 = 10_000_000_000

    /// Reads `.port` messages until `.start`: every port of `plane`, each once, under the
    /// interface name the configuration gives it, with at least one queue fd.
    static func receivePorts(from control: borrowing UnixStream, plane: ForwardingPlane) throws -> ReceivedQueues {
        var byPort: [[Int32]?] = Array(repeating: nil, count: plane.ports.count)
        var uplink: Int32? = nil
        var fleet: FleetView? = nil
        var received: ReceivedQueues? = nil
        defer {
            // On failure, whatever arrived is closed.
            if received == nil {
                for fd in byPort.compactMap({ $0 }).joined() { _ = close(fd) }
                if let uplink { _ = close(uplink) }
            }
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 8)
        defer { buffer.deallocate() }
        let deadline = monotonicNanoseconds() + portsDeadline
        while true {
            guard try control.waitReadable(until: deadline) else {
                throw SwitchControlError("the daemon sent no start within \(portsDeadline / 1_000_000_000) s")
            }
            var message = try control.receive(into: buffer, maxFDs: 253)
            var fds: [Int32] = []
            while let fd = message.descriptors.take(fds.count) { fds.append(fd.release()) }
            guard message.byteCount > 0 else { throw SwitchControlError("the daemon closed the control socket before start") }
            let decoded: SwitchControlMessage
            do { decoded = try SwitchControlMessage.decode(UnsafeRawBufferPointer(rebasing: buffer[..<message.byteCount])) } catch {
                for fd in fds { _ = close(fd) }
                throw SwitchControlError("unreadable control message: \(error)")
            }
            switch decoded {
            case .uplink:
                guard fds.count == 1, uplink == nil else {
                    for fd in fds { _ = close(fd) }
                    throw SwitchControlError("uplink message with \(fds.count) fds (or a second one)")
                }
                uplink = fds[0]
            case .fleet(let view):
                for fd in fds { _ = close(fd) }
                fleet = view
            case .port(let index, let interface):
                guard plane.ports.indices.contains(index), plane.ports[index].interfaceName == interface,
                      byPort[index] == nil, !fds.isEmpty else {
                    for fd in fds { _ = close(fd) }
                    throw SwitchControlError("port message for index \(index) (\(interface)) with \(fds.count) fds does not match the configuration")
                }
                byPort[index] = fds
            case .start:
                for fd in fds { _ = close(fd) }
                let missing = byPort.indices.filter { byPort[$0] == nil }
                guard missing.isEmpty else {
                    throw SwitchControlError("start before the queues of port(s) \(missing.map { plane.ports[$0].interfaceName })")
                }
                received = ReceivedQueues(byPort.map { $0 ?? [] }, uplink: uplink, fleet: fleet)
                return received!
            case .ready, .statistics:
                for fd in fds { _ = close(fd) }
                throw SwitchControlError("unexpected control message from the daemon: \(decoded)")
            }
        }
    }

    /// Starts the control reader: a thread that reads the daemon's messages after start and
    /// applies each `.fleet` (`ForwardingPlane.updateFleet`: compiled on this thread, swapped in
    /// for the workers); end of file (or a read error) means the daemon is gone: SIGTERM to this
    /// process, which the main thread's sigwait takes. It replaces `Lifeline.stopWhenParentGoes`,
    /// whose reader would swallow the messages; it makes the same system calls (read, kill) plus
    /// what decoding allocates.
    static func readControl(plane: ForwardingPlane, logger: Logger) throws(SystemError) {
        try HostThread.start(name: "switch-control") {
            // Whole messages: a SOCK_SEQPACKET read shorter than the message discards the rest.
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: SwitchControlMessage.maxSize, alignment: 8)
            defer { buffer.deallocate() }
            while true {
                let n = read(STDIN_FILENO, buffer.baseAddress, buffer.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                guard let message = try? SwitchControlMessage.decode(UnsafeRawBufferPointer(rebasing: buffer[..<n])) else {
                    logger.error("unreadable control message from the daemon; ignored", metadata: ["bytes": "\(n)"])
                    continue
                }
                switch message {
                case .fleet(let view):
                    let problems = plane.updateFleet(view)
                    logger.info("fleet view applied", metadata: [
                        "segments": "\(view.segments.count)",
                        "hosts": "\(Set(view.segments.flatMap { $0.hosts.map(\.id) }).sorted())",
                        "problems": "\(problems)",
                    ])
                default:
                    logger.error("unexpected control message after start; ignored", metadata: ["message": "\(message)"])
                }
            }
            kill(getpid(), SIGTERM)
        }
    }

    /// The device and backend of a vhost-user-net port, serving on the socket the daemon bound.
    /// The device is served by the packet workers; the backend's connection thread starts after
    /// the jail.
    static func vhostUserPort(_ port: PortDescriptor, configuration: HostConfiguration, listener: consuming FileDescriptor,
                              logger: Logger) throws -> (VhostNetDevice, VhostUserBackend) {
        let path = port.configuration.vhostUserSocketPath(stateDirectory: configuration.host.stateDirectory, tenant: port.tenant)
        let mtu = configuration.tenants.first { $0.id == port.tenant }?.segments.first { $0.id == port.segment }?.mtu ?? 1500
        var portLogger = logger
        portLogger[metadataKey: "tenant.id"] = "\(port.tenant)"
        portLogger[metadataKey: "port.id"] = "\(port.port)"
        let device = try VhostNetDevice(mac: port.mac.octets, mtu: mtu, queuePairs: max(1, port.configuration.queues),
                                        logger: portLogger)
        let backend = VhostUserBackend(path: path, device: device, logger: portLogger)
        backend.adopt(UnixListener(adopting: listener, path: path))
        return (device, backend)
    }

    /// Queues received, rings made, still one thread: from here on this process lives in its own
    /// namespaces with an empty, read-only root, as the switch's uid with no capabilities, making
    /// only the switch allowlist's system calls. Threads started later inherit all of it.
    static func jail(mountPoint: String, user: UInt32, limits: Jail.ResourceLimits) throws(JailError) {
        try Jail.isolate(mountPoint: mountPoint)
        try Jail.limitResources(limits)
        try Jail.dropPrivileges(uid: user, gid: user)
        try Jail.restrictSystemCalls(.switch)
    }

    /// Threads: the uid-wide bound (`Jail.ResourceLimits.uidTasks`; every tenant's switch has
    /// this uid). Descriptors: the TAP queues, a ring and a wake-up
    /// eventfd per worker, the control socket and the standard streams, and per vhost-user port
    /// its listener, a connection, up to 8 guest memory regions and per queue pair (at most 16)
    /// a change eventfd and two kick and two call eventfds (a copy of a kick each); twice that
    /// plus room. The switch writes no file; its log (stderr) may be one, so file size is
    /// capped, not zero.
    static func limits(queues: Int, vhostUserPorts: Int, workers: Int) -> Jail.ResourceLimits {
        Jail.ResourceLimits(threads: Jail.ResourceLimits.uidTasks,
                            files: 64 + 2 * (queues + 2 * workers + 4 + vhostUserPorts * (10 + 16 * 7)),
                            fileBytes: 1 << 30)
    }
}
