import Config

/// How one configuration differs from another, one line per changed thing: what a dry run
/// reports and what an apply changes.
public enum ConfigurationChanges {
    /// The changes that turn `old` into `new`: host settings, principals, tenants added or
    /// removed, and within a tenant kept, its segments, ports, volumes and partitions added,
    /// removed or changed, its ACL, and any other setting. Empty when they are equal.
    public static func changes(from old: HostConfiguration, to new: HostConfiguration) -> [String] {
        var lines: [String] = []
        if old.host != new.host { lines.append("host settings changed") }
        lines += compare(old.principals, new.principals, id: \.name, noun: "principal")
        lines += compare(old.tenants, new.tenants, id: \.id, noun: "tenant", describeChange: tenantChanges)
        return lines
    }

    private static func tenantChanges(_ old: Tenant, _ new: Tenant) -> [String] {
        var lines: [String] = []
        lines += compare(old.segments, new.segments, id: \.id, noun: "segment")
        lines += compare(old.ports, new.ports, id: \.id, noun: "port")
        lines += compare(old.volumes, new.volumes, id: \.id, noun: "volume")
        lines += compare(old.partitions, new.partitions, id: \.id, noun: "partition")
        if old.acl != new.acl { lines.append("acl changed") }
        // A setting this function does not list by name still shows.
        if lines.isEmpty { lines.append("settings changed") }
        return lines.map { "tenant \(new.id): \($0)" }
    }

    private static func compare<T: Equatable>(_ old: [T], _ new: [T], id: KeyPath<T, String>, noun: String,
                                              describeChange: ((T, T) -> [String])? = nil) -> [String] {
        var lines: [String] = []
        for item in old where !new.contains(where: { $0[keyPath: id] == item[keyPath: id] }) {
            lines.append("\(noun) \(item[keyPath: id]) removed")
        }
        for item in new {
            guard let before = old.first(where: { $0[keyPath: id] == item[keyPath: id] }) else {
                lines.append("\(noun) \(item[keyPath: id]) added")
                continue
            }
            guard before != item else { continue }
            lines += describeChange?(before, item) ?? ["\(noun) \(item[keyPath: id]) changed"]
        }
        return lines
    }
}
