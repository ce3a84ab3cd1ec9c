import Config
import FleetModel
import Foundation

/// This host's copy of the part of the fleet store it watches: host records and the port records
/// of its segments, by key, as the last range and the watch events since left them. Pure: the
/// agent feeds it etcd's answers and asks it for each tenant's view.
struct FleetMap: Sendable, Equatable {
    let prefix: String
    private(set) var hosts: [String: FleetHostRecord] = [:]
    private(set) var ports: [String: FleetPortRecord] = [:]
    /// Keys whose value is not a valid record: why. Their record is left out of every view.
    private(set) var malformed: [String: String] = [:]

    init(prefix: String) { self.prefix = prefix }

    /// The key prefixes an agent watches for `configuration`: the hosts, and each segment with a
    /// VNI that this host has a port in. Sorted.
    static func watchedPrefixes(prefix: String, configuration: HostConfiguration) -> [String] {
        var prefixes: Set<String> = [FleetKeys.hosts(prefix: prefix)]
        for tenant in configuration.tenants {
            for segment in tenant.segments where segment.vni != nil && tenant.ports.contains(where: { $0.segment == segment.id }) {
                prefixes.insert(FleetKeys.segment(prefix: prefix, tenant: tenant.id, segment: segment.id))
            }
        }
        return prefixes.sorted()
    }

    /// Replaces the whole map with a range's key-values (a full resync).
    mutating func replace(with pairs: [EtcdKeyValue]) {
        hosts = [:]; ports = [:]; malformed = [:]
        for pair in pairs { put(key: pair.key, value: pair.value) }
    }

    mutating func put(key: String, value: Data) {
        hosts[key] = nil; ports[key] = nil; malformed[key] = nil
        let hostsPrefix = FleetKeys.hosts(prefix: prefix)
        let portsPrefix = FleetKeys.ports(prefix: prefix)
        if key.hasPrefix(hostsPrefix) {
            let hostId = String(key.dropFirst(hostsPrefix.count))
            guard let record = try? JSONDecoder().decode(FleetHostRecord.self, from: value) else {
                malformed[key] = "key \(key): the value is not a host record"; return
            }
            guard record.hostId == hostId else {
                malformed[key] = "key \(key): the record names host '\(record.hostId)'"; return
            }
            hosts[key] = record
        } else if key.hasPrefix(portsPrefix) {
            guard let record = try? JSONDecoder().decode(FleetPortRecord.self, from: value) else {
                malformed[key] = "key \(key): the value is not a port record"; return
            }
            let expected = FleetKeys.port(prefix: prefix, tenant: record.tenant, segment: record.segment,
                                          host: record.host, port: record.port)
            guard expected == key else {
                malformed[key] = "key \(key): the record belongs under \(expected)"; return
            }
            ports[key] = record
        }
        // Other keys under the prefix are not the map's: ignored.
    }

    mutating func delete(key: String) {
        hosts[key] = nil; ports[key] = nil; malformed[key] = nil
    }

    /// The other hosts in the map, sorted.
    func remoteHosts(localHost: String) -> [String] {
        Set(hosts.values.map(\.hostId)).subtracting([localHost]).sorted()
    }

    /// The view of every tenant of `configuration` that has a segment with a VNI, and every
    /// record left out (malformed values first, then what `FleetView.build` left out).
    func views(configuration: HostConfiguration, localHost: String) -> (views: [String: FleetView], problems: [String]) {
        let hostRecords = hosts.keys.sorted().compactMap { hosts[$0] }
        let portRecords = ports.keys.sorted().compactMap { ports[$0] }
        var views: [String: FleetView] = [:]
        var problems = malformed.keys.sorted().compactMap { malformed[$0] }
        for tenant in configuration.tenants where tenant.segments.contains(where: { $0.vni != nil }) {
            let built = FleetView.build(tenant: tenant, localHost: localHost, hosts: hostRecords,
                                        ports: portRecords.filter { $0.tenant == tenant.id })
            views[tenant.id] = built.view
            problems += built.problems
        }
        return (views, problems)
    }
}
