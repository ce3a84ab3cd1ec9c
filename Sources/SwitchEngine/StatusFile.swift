import FleetModel
import Foundation
import HostOS
import Logging
import Switch

/// What `<stateDirectory>/status.json` holds.
public struct DaemonStatus: Codable, Sendable {
    public var pid: Int32
    public var updatedAt: Date
    public var switchStatistics: SwitchStatistics
    /// The host's place in the fleet map; absent when the host runs alone.
    public var fleet: FleetStatus?

    enum CodingKeys: String, CodingKey {
        case pid, updatedAt, fleet
        case switchStatistics = "switch"
    }
}

/// Rewrites the daemon's status file from a control thread (never a packet worker: it encodes
/// JSON and writes a file). A failure is logged once until it works again and changes nothing
/// else: counters are for operators, frames are for tenants.
public final class StatusFile: @unchecked Sendable {
    // @unchecked Sendable: `failing` is touched only by the one task that calls `write`.
    public let path: String
    private let logger: Logger
    private var failing = false
    /// Read on every write, when set: the fleet status the file shows.
    public var fleetStatus: (@Sendable () -> FleetStatus?)?

    public init(path: String, logger: Logger) {
        self.path = path
        self.logger = logger
    }

    public func write(_ statistics: SwitchStatistics) {
        let status = DaemonStatus(pid: getpid(), updatedAt: Date(), switchStatistics: statistics, fleet: fleetStatus?())
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        do {
            let data = try encoder.encode(status)
            try StateFiles.writeAtomically(path, contents: String(decoding: data, as: UTF8.self), mode: 0o600)
            failing = false
        } catch {
            if !failing {
                logger.error("cannot write the status file", metadata: ["path": "\(path)", "error": "\(error)"])
            }
            failing = true
        }
    }
}
