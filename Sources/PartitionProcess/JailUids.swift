import Config
import HostOS

/// The state directory's jail uid record (`jail-uids.json`, see `JailUidRecord`), read and
/// extended under its lock by the code paths that run as root before anything is jailed:
/// `bulkhead run` before it starts block servers, and `bulkhead block-server` (which may run
/// alone) before its jail. Whichever comes first records a uid for every configured tenant, in
/// configuration order; the other finds them recorded.
public enum JailUids {
    public static func path(stateDirectory: String) -> String { stateDirectory + "/" + JailUidRecord.fileName }

    /// Every tenant, then every partition (`JailUidRecord.partitionKey`), in configuration order.
    public static func keys(_ configuration: HostConfiguration) -> [String] {
        configuration.tenants.map(\.id) + configuration.tenants.flatMap { tenant in
            tenant.partitions.map { JailUidRecord.partitionKey(tenant: tenant.id, partition: $0.id) }
        }
    }

    /// Gives every tenant and partition of `configuration` without a uid the lowest unrecorded uid of
    /// `host.tenantJailUids` (the jail range less the switch's uid), writes the record back (mode 0600, atomically) when that added any, and
    /// returns the record and the tenants added.
    /// - Throws: `JailUidsError` naming the file: it cannot be read or written, is damaged or
    ///   edited into something unusable, or the range is full.
    public static func allocate(_ configuration: HostConfiguration) throws(JailUidsError) -> (record: JailUidRecord, added: [String]) {
        let state = configuration.host.stateDirectory
        let path = path(stateDirectory: state)
        let range = configuration.host.tenantJailUids
        var record = JailUidRecord()
        var added: [String] = []
        do {
            try StateFiles.makeDirectories(state)
            try StateFiles.update(path, mode: 0o600) { current in
                if let current { record = try JailUidRecord(decoding: current, range: range, file: path) }
                do throws(JailUidRecordError) { added = try record.allocate(keys(configuration), in: range) } catch {
                    throw JailUidRecordError(file: path, problems: error.problems)
                }
                return added.isEmpty && current != nil ? nil : record.encoded()
            }
        } catch let error as JailUidRecordError {
            throw JailUidsError(description: error.description)
        } catch {
            throw JailUidsError(description: "cannot update the jail uid record \(path): \(error)")
        }
        return (record, added)
    }
}

/// Why the jail uid record could not be used; says which file and what is wrong with it.
public struct JailUidsError: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}
