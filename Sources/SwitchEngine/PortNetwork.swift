import Config
import HostOS
import Logging
import Netlink
#if canImport(Glibc)
import Glibc
#endif

/// A TAP port's kernel side as the daemon set it up: its queues (owned here; closing the last
/// one removes the device) and where its network side lives.
public final class TapPort: Sendable {
    public let tenant: String
    public let port: String
    public let interfaceName: String
    public let namespace: String?
    private let queues: TapQueues

    fileprivate init(tenant: String, port: String, interfaceName: String, namespace: String?, queues: TapQueues) {
        self.tenant = tenant; self.port = port; self.interfaceName = interfaceName
        self.namespace = namespace; self.queues = queues
    }

    /// The queues' raw fds, for the dataplane's ring. Valid while this object lives.
    public var queueFDs: [Int32] { queues.rawValues }
}

/// Owns the queue fds of one TAP device.
final class TapQueues: Sendable {
    let rawValues: [Int32]
    init(_ rawValues: [Int32]) { self.rawValues = rawValues }
    deinit { for fd in rawValues { _ = close(fd) } }
}

/// Creates and removes what the switch's TAP ports need in the kernel: network namespaces,
/// TAP devices (moved into their namespace, given their MAC, MTU and addresses, brought up).
///
/// Namespaces this daemon created are recorded in a journal in the state directory, so that a
/// daemon that died without cleaning up has them removed by the next start.
public struct PortNetwork: ~Copyable {
    private let journalPath: String
    private let logger: Logger
    /// Namespaces created by this daemon, in creation order.
    private var createdNamespaces: [String] = []
    public private(set) var ports: [TapPort] = []

    public init(stateDirectory: String, logger: Logger) {
        journalPath = stateDirectory + "/namespaces.created"
        self.logger = logger
    }

    /// Removes namespaces that a previous daemon on this state directory created and did not remove
    /// (it crashed or was killed). Call while holding the state directory lock.
    public func recoverFromUncleanExit() throws(SystemError) {
        guard let journal = try StateFiles.read(journalPath) else { return }
        for name in journal.split(separator: "\n").map(String.init) where !name.isEmpty {
            if NetworkNamespace.exists(name) {
                logger.warning("removing network namespace left by an earlier run", metadata: ["netns": "\(name)"])
                try NetworkNamespace.delete(name)
            }
        }
        try StateFiles.remove(journalPath)
    }

    /// Sets up every TAP port of `configuration`, each with `max(port.queues, workers)` queues:
    /// one per packet worker, so that no two workers share a queue (`Dataplane`), or more when
    /// the port asks for more (worker `w` then reads queues `w, w + workers, ...`). On failure,
    /// what was already set up is removed before the error is thrown.
    public mutating func provision(_ configuration: HostConfiguration, workers: Int = 1) throws {
        do {
            for tenant in configuration.tenants { try provision(tenant, workers: workers) }
        } catch {
            teardown()
            throw error
        }
    }

    /// Sets up the TAP ports of `tenant` (those of `only`, when given) that are not set up yet.
    /// On failure, the ports this call set up are removed before the error is thrown.
    public mutating func provision(_ tenant: Tenant, only: Set<String>? = nil, workers: Int = 1) throws {
        let host = try RouteSocket()
        let mtus = Dictionary(tenant.segments.map { ($0.id, $0.mtu) }, uniquingKeysWith: { first, _ in first })
        var added: Set<String> = []
        do {
            for port in tenant.ports where port.kind == .tap && (only?.contains(port.id) ?? true) {
                guard !ports.contains(where: { $0.tenant == tenant.id && $0.port == port.id }) else { continue }
                try provision(port, tenant: tenant.id, mtu: mtus[port.segment] ?? 1500, queues: max(port.queues, workers),
                              host: host)
                added.insert(port.id)
            }
        } catch {
            remove(tenant: tenant.id, ports: added)
            throw error
        }
    }

    /// Removes TAP ports of `tenant` (every one when `ports` is nil): their devices go once the
    /// switch that held their queues has stopped, and a namespace this daemon created goes with
    /// the last of its ports.
    public mutating func remove(tenant: String, ports removed: Set<String>? = nil) {
        let leaving = ports.filter { $0.tenant == tenant && (removed?.contains($0.port) ?? true) }
        ports.removeAll { port in leaving.contains { $0 === port } }
        let stillUsed = Set(ports.compactMap(\.namespace))
        for name in Set(leaving.compactMap(\.namespace)) where createdNamespaces.contains(name) && !stillUsed.contains(name) {
            do {
                try NetworkNamespace.delete(name)
                createdNamespaces.removeAll { $0 == name }
                try StateFiles.writeAtomically(journalPath, contents: createdNamespaces.joined(separator: "\n") + "\n", mode: 0o600)
                logger.info("removed network namespace", metadata: ["netns": "\(name)"])
            } catch {
                logger.error("could not remove network namespace", metadata: ["netns": "\(name)", "error": "\(error)"])
            }
        }
        for port in leaving {
            logger.info("port removed", metadata: ["tenant.id": "\(tenant)", "port.id": "\(port.port)", "port.interface": "\(port.interfaceName)"])
        }
    }

    private mutating func provision(_ port: Port, tenant: String, mtu: Int, queues: Int, host: borrowing RouteSocket) throws {
        let name = port.interfaceName(tenant: tenant)
        // TUNSETIFF on an existing multiqueue TAP would attach to it; refuse to touch a device
        // that is not ours.
        if (try? host.index(of: name)) != nil {
            throw ProvisioningError.interfaceExists(name)
        }
        var fds: [Int32] = []
        var owned: TapQueues?
        defer { if owned == nil { for fd in fds { _ = close(fd) } } }
        for _ in 0..<max(1, queues) {
            let queue = try TapQueue(interfaceName: name)
            fds.append(queue.rawValue)
            discardOwnership(of: queue)
        }
        owned = TapQueues(fds)
        let tap = TapPort(tenant: tenant, port: port.id, interfaceName: name, namespace: port.netns, queues: owned!)
        ports.append(tap)

        try host.configure(name, mac: port.mac, mtu: mtu, up: false)
        if let netnsName = port.netns {
            if !NetworkNamespace.exists(netnsName) {
                try NetworkNamespace.create(netnsName)
                createdNamespaces.append(netnsName)
                try StateFiles.writeAtomically(journalPath, contents: createdNamespaces.joined(separator: "\n") + "\n", mode: 0o600)
                logger.info("created network namespace", metadata: ["netns": "\(netnsName)"])
            }
            let namespace = try NetworkNamespace.open(netnsName)
            try host.move(name, to: namespace)
            let inside = try RouteSocket(namespace: namespace)
            try inside.configure("lo", up: true)
            try configureAddresses(port, interface: name, socket: inside)
        } else {
            try configureAddresses(port, interface: name, socket: host)
        }
        logger.info("port ready", metadata: [
            "tenant.id": "\(tenant)", "port.id": "\(port.id)", "port.interface": "\(name)",
            "port.netns": "\(port.netns ?? "-")", "port.queues": "\(fds.count)",
        ])
    }

    private func configureAddresses(_ port: Port, interface: String, socket: borrowing RouteSocket) throws {
        for address in port.ips { try socket.addAddress(address, to: interface) }
        try socket.configure(interface, up: true)
    }

    /// Closes every TAP device (the kernel removes them) and removes the namespaces this daemon
    /// created. Safe to call more than once.
    public mutating func teardown() {
        ports.removeAll()
        for name in createdNamespaces.reversed() {
            do {
                try NetworkNamespace.delete(name)
                logger.info("removed network namespace", metadata: ["netns": "\(name)"])
            } catch {
                logger.error("could not remove network namespace", metadata: ["netns": "\(name)", "error": "\(error)"])
            }
        }
        createdNamespaces.removeAll()
        do { try StateFiles.remove(journalPath) } catch {
            logger.error("could not remove namespace journal", metadata: ["error": "\(error)"])
        }
    }
}

public enum ProvisioningError: Error, CustomStringConvertible {
    case interfaceExists(String)

    public var description: String {
        switch self {
        case .interfaceExists(let name):
            "a network interface named \(name) already exists; remove it or set the port's ifname"
        }
    }
}

/// Hands a queue's fd over to a `TapQueues` without closing it.
private func discardOwnership(of queue: consuming TapQueue) {
    queue.releaseDescriptor()
}
