// TEMPORARY stub with the agreed interface (helper "etcd" writes the real one); removed at merge.
import Config
import FleetModel
import Logging

public final class FleetAgent: Sendable {
    let settings: FleetSettings
    public init(settings: FleetSettings, logger: Logger) throws { self.settings = settings }
    public func start(configuration: HostConfiguration, onViews: @escaping @Sendable ([String: FleetView]) -> Void) {}
    public func update(configuration: HostConfiguration) async {}
    public func status() -> FleetStatus { FleetStatus(hostId: settings.hostId, state: "connecting", since: "") }
    public func stop() async {}
}
