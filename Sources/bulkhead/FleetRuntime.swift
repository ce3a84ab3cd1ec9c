import Config
import Fleet
import FleetModel
import Foundation
import HostOS
import Logging
import SwitchEngine
import Synchronization

/// The daemon's part in a fleet (`host.fleet`): the underlay sockets, the fleet agent, and the
/// delivery of each tenant's view of the fleet map to that tenant's switch.
///
/// Underlay: every tenant with a segment that has a VNI gets a UDP socket of its own on
/// `underlayAddress:4789`, all in one SO_REUSEPORT group whose steering program sends each
/// datagram to the socket of the tenant that owns its VNI (`UnderlaySocket.steer`). Member 0
/// belongs to the daemon and takes what no tenant owns, which it counts and discards. A switch
/// thus never sees another tenant's underlay traffic, and the VXLAN port stays the standard one.
/// Sockets are kept for the daemon's life (a restarted switch is handed the same one), so a
/// member's index never changes.
final class FleetRuntime: Sendable {
    let settings: FleetSettings
    private let agent: FleetAgent
    private let logger: Logger
    private let sink: UnderlaySocket
    private let state = Mutex(State())
    private let unknown = Atomic<UInt64>(0)
    private let stopping = Atomic<Bool>(false)

    private struct State {
        /// Members 1... of the group, in the order they were bound, and the tenant of each.
        var sockets: [UnderlaySocket] = []
        var owners: [String] = []
        var views: [String: FleetView] = [:]
        /// Each running switch's control socket (a duplicate), to send it new views.
        var links: [String: SwitchLink] = [:]
    }

    init(settings: FleetSettings, logger: Logger) throws {
        self.settings = settings
        self.logger = logger
        do {
            sink = try UnderlaySocket(address: settings.underlayAddress.description, port: 4789, receiveBufferBytes: 256 << 10)
        } catch {
            throw DaemonError("the VXLAN port \(settings.underlayAddress):4789 cannot be bound (is the underlay address configured on this host, "
                + "in the daemon's network namespace, and the port free?): \(error)")
        }
        do { agent = try FleetAgent(settings: settings, logger: logger) } catch {
            throw DaemonError("the fleet agent cannot start: \(error)")
        }
        // Member 0 is drained and counted until `stop()`.
        Thread.detachNewThread { [self] in
            setCurrentThreadName("bulkhead-underlay")
            while !stopping.load(ordering: .relaxed) {
                if sink.waitReadable(milliseconds: 500) {
                    unknown.add(UInt64(sink.drain()), ordering: .relaxed)
                }
            }
        }
    }

    /// Datagrams dropped because no tenant of this host has their VNI (or they were too short).
    var unknownVNIDatagrams: UInt64 { unknown.load(ordering: .relaxed) }

    /// The tenant's underlay socket, bound on first use; nil when the tenant has no segment with
    /// a VNI (its switch gets no uplink).
    func socket(for tenant: Tenant) throws -> UnderlaySocket? {
        guard tenant.segments.contains(where: { $0.vni != nil }) else { return nil }
        return try state.withLock { state throws -> UnderlaySocket in
            if let index = state.owners.firstIndex(of: tenant.id) { return state.sockets[index] }
            let socket = try UnderlaySocket(address: settings.underlayAddress.description, port: 4789)
            state.sockets.append(socket)
            state.owners.append(tenant.id)
            return socket
        }
    }

    /// Points every VNI of `configuration` at its tenant's socket (binding the sockets that are
    /// missing). A VNI of a removed tenant goes back to member 0. Before a tenant's switch starts.
    func steer(_ configuration: HostConfiguration) throws {
        for tenant in configuration.tenants { _ = try socket(for: tenant) }
        let destinations = state.withLock { state in
            var destinations: [UInt32: Int] = [:]
            for tenant in configuration.tenants {
                guard let index = state.owners.firstIndex(of: tenant.id) else { continue }
                for segment in tenant.segments { if let vni = segment.vni { destinations[vni] = index + 1 } }
            }
            return destinations
        }
        try sink.steer(destinations)
        logger.debug("underlay steering set", metadata: ["vnis": "\(destinations.count)"])
    }

    /// Registers this host and `configuration`'s ports in the fleet map and starts following it.
    func start(configuration: HostConfiguration) {
        for tenant in configuration.tenants where tenant.segments.contains(where: { $0.vni != nil }) {
            state.withLock { $0.views[tenant.id] = FleetView.empty(for: tenant) }
        }
        agent.start(configuration: configuration) { [self] views in deliver(views) }
    }

    /// A new configuration was applied.
    func update(configuration: HostConfiguration) async {
        try? steer(configuration)
        await agent.update(configuration: configuration)
    }

    func status() -> FleetStatus { agent.status() }

    func stop() async {
        stopping.store(true, ordering: .relaxed)
        await agent.stop()
    }

    /// Stores the views and sends each changed one to its tenant's running switch.
    private func deliver(_ views: [String: FleetView]) {
        state.withLock { state in
            for (tenant, view) in views where state.views[tenant] != view {
                state.views[tenant] = view
                if let link = state.links[tenant] { link.send(view, logger: logger) }
            }
        }
    }

    /// The tenant's switch is starting on `control`: sends it its socket (`.uplink`) and its
    /// current view, then every later view until `detach`. Returns the link to detach, or nil
    /// when the tenant has no uplink.
    func attach(tenant: Tenant, control: borrowing UnixStream) throws -> SwitchLink? {
        guard let socket = try socket(for: tenant) else { return nil }
        try control.send(.uplink, fds: [socket.rawValue])
        let link = SwitchLink(try control.duplicate())
        // Under the lock: no view can be delivered between the first one and the registration.
        try state.withLock { state throws in
            let view = state.views[tenant.id] ?? FleetView.empty(for: tenant)
            try link.stream.send(.fleet(view))
            state.links[tenant.id] = link
        }
        return link
    }

    /// The switch that `link` talks to has ended.
    func detach(tenant: String, link: SwitchLink) {
        state.withLock { state in
            if state.links[tenant] === link { state.links[tenant] = nil }
        }
    }
}

/// A second descriptor of a running switch's control socket: the daemon sends new fleet views
/// on it while the switch's attachment thread receives on the first.
final class SwitchLink: Sendable {
    let stream: UnixStream
    init(_ stream: consuming UnixStream) { self.stream = stream }

    func send(_ view: FleetView, logger: Logger) {
        do { try stream.send(.fleet(view)) } catch {
            // The switch is gone or going: its restart gets the current view.
            logger.warning("could not send the fleet view to a switch", metadata: ["error": "\(error)"])
        }
    }
}
