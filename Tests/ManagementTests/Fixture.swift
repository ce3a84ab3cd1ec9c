import Config
import Foundation
import ManagementModel
import Switch
import Synchronization

/// The uids of the fixture's principals (far from real accounts, below the jail uid range).
enum FixtureUID {
    static let hostAdmin: UInt32 = 0
    static let `operator`: UInt32 = 61_001
    static let blueAdmin: UInt32 = 61_002
    static let blueViewer: UInt32 = 61_003
    static let auditor: UInt32 = 61_004
    static let redAdmin: UInt32 = 61_005
    static let unknown: UInt32 = 61_009
}

/// A host with tenants blue and red, each with a segment, three ports, a volume and a
/// partition, and one principal of each role.
let fixtureDocument = """
{
  "host": {"stateDirectory": "/var/lib/bulkhead-test"},
  "principals": [
    {"name": "root", "uid": 0, "role": "host-admin"},
    {"name": "ops", "uid": 61001, "role": "operator"},
    {"name": "blue-admin", "uid": 61002, "role": "tenant-admin", "tenant": "blue"},
    {"name": "blue-viewer", "uid": 61003, "role": "tenant-viewer", "tenant": "blue"},
    {"name": "audit", "uid": 61004, "role": "auditor"},
    {"name": "red-admin", "uid": 61005, "role": "tenant-admin", "tenant": "red"}
  ],
  "tenants": [
    {
      "id": "blue",
      "segments": [{"id": "lan", "vni": 5001}],
      "ports": [
        {"id": "a", "kind": "tap", "segment": "lan", "mac": "02:00:00:00:01:01", "ips": ["10.0.0.1/24"], "netns": "blue-a"},
        {"id": "b", "kind": "tap", "segment": "lan", "mac": "02:00:00:00:01:02", "ips": ["10.0.0.2/24"]},
        {"id": "vm", "kind": "vhost-user", "segment": "lan", "mac": "02:00:00:00:01:03", "ips": ["10.0.0.3/24"]}
      ],
      "volumes": [{"id": "data", "sizeBytes": 1073741824}],
      "partitions": [{"id": "guest", "vcpus": 1, "memoryMiB": 64,
                      "image": {"path": "/srv/bhtest.bin", "sha256": "9dcc006fb4ffa6ec6e3ea1474a258f851660d0b461c68e3702ad55da9b270124"},
                      "disks": ["data"], "nics": ["vm"]}]
    },
    {
      "id": "red",
      "segments": [{"id": "secret-lan", "vni": 5002}],
      "ports": [
        {"id": "red-port", "kind": "tap", "segment": "secret-lan", "mac": "02:00:00:00:02:01", "ips": ["10.9.0.1/24"]},
        {"id": "red-vm", "kind": "vhost-user", "segment": "secret-lan", "mac": "02:00:00:00:02:03", "ips": ["10.9.0.3/24"]}
      ],
      "volumes": [{"id": "red-disk", "sizeBytes": 1073741824}],
      "partitions": [{"id": "red-guest", "vcpus": 1, "memoryMiB": 64,
                      "image": {"path": "/srv/bhtest.bin", "sha256": "9dcc006fb4ffa6ec6e3ea1474a258f851660d0b461c68e3702ad55da9b270124"},
                      "disks": ["red-disk"], "nics": ["red-vm"]}]
    }
  ]
}
"""

func fixtureConfiguration() throws -> HostConfiguration {
    try HostConfiguration.decode(fixtureDocument)
}

/// The switch's counters for every port of `configuration`, made up.
func fixtureStatistics(_ configuration: HostConfiguration) -> SwitchStatistics {
    var ports: [PortStatistics] = []
    var segments: [SegmentStatistics] = []
    for tenant in configuration.tenants {
        for port in tenant.ports {
            ports.append(PortStatistics(
                index: ports.count, tenant: tenant.id, port: port.id, segment: port.segment,
                interface: port.interfaceName(tenant: tenant.id),
                rx: TrafficCounters(frames: 10, bytes: 1000), tx: TrafficCounters(frames: 20, bytes: 2000),
                drops: ["acl": 1, "port-security": 2], macLearning: MACLearningStatistics(learned: 3, refused: 0)))
        }
        for segment in tenant.segments {
            segments.append(SegmentStatistics(tenant: tenant.id, segment: segment.id, macEntries: 4))
        }
    }
    return SwitchStatistics(ports: ports, segments: segments)
}

/// An audit log in memory: the records the server writes, as JSON lines; it can be made to fail.
final class MemoryAuditLog: Sendable {
    struct Failure: Error, CustomStringConvertible { var description: String { "disk full (test)" } }

    private let state = Mutex<(events: [APIAuditEvent], failing: Bool)>(([], false))

    var events: [APIAuditEvent] { state.withLock { $0.events } }

    func setFailing(_ failing: Bool) { state.withLock { $0.failing = failing } }

    func record(_ event: APIAuditEvent) throws {
        try state.withLock { state in
            if state.failing { throw Failure() }
            state.events.append(event)
        }
    }

    /// The records as the audit log's JSON lines (a stand-in for the Audit module's format).
    func lines() -> [String] {
        events.enumerated().map { index, event in
            let outcome: String = switch event.outcome {
            case .allowed: "allowed"
            case .denied(let why): "denied: " + why
            case .failed(let why): "failed: " + why
            }
            return JSONValue.object([("seq", .number(index + 1)), ("principal", .string(event.principal)),
                                     ("uid", .number(event.uid)), ("action", .string(event.action)),
                                     ("target", .string(event.target)), ("outcome", .string(outcome))]).serialized()
        }
    }
}
