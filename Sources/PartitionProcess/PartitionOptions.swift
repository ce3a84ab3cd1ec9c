/// The command line of `bulkhead-vmm` (and `bulkhead partition`), parsed by hand: the
/// argument parser library loads Foundation's essentials on Linux, which the VMM must not map.
public struct PartitionOptions: Equatable, Sendable {
    /// Path of the host configuration (JSON).
    public var config = ""
    /// The tenant the partition belongs to.
    public var tenant = ""
    /// The partition's id.
    public var id = ""
    /// Copy the guest's serial console to standard output as well as to its log file.
    public var console = false
    /// Seconds to wait for the backends' sockets to accept a connection, 0...600.
    public var connectTimeout: Double = 20
    /// Skip the jail. For debugging only.
    public var noJail = false
    /// trace, debug, info, notice, warning, error or critical.
    public var logLevel = "info"
    /// Stop when standard input reaches end of file (`bulkhead run` passes its control socket).
    public var stopWhenStdinCloses = false

    public init() {}

    /// What parsing the command line asks for.
    public enum Parsed: Equatable, Sendable {
        case run(PartitionOptions)
        /// `--help` or `-h`: print `usage` and exit 0.
        case help
    }

    /// Why a command line was refused, in words for standard error (exit status 64, as
    /// ArgumentParser's validation errors).
    public struct UsageError: Error, Equatable, CustomStringConvertible {
        public let description: String
    }

    public static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    public static let usage = """
        USAGE: bulkhead-vmm --config <config> --tenant <tenant> --id <id> [--console] \
        [--connect-timeout <seconds>] [--no-jail] [--log-level <level>] [--stop-when-stdin-closes]

        Run one partition (a KVM guest) of a tenant, with its disks and NICs served over vhost-user.
        Exit status: 0 when the guest powered off (or SIGTERM stopped it), 3 when it reset (reboot \
        or triple fault), 1 when the partition failed.

        OPTIONS:
          --config <config>         Path of the host configuration (JSON).
          --tenant <tenant>         The tenant the partition belongs to.
          --id <id>                 The partition's id.
          --console                 Copy the guest's serial console to standard output as well as to its log file.
          --connect-timeout <s>     Seconds to wait for the block server's and the switch's sockets to accept a
                                    connection (default: 20, at most 600).
          --no-jail                 Skip the jail (namespaces, empty root, privilege drop, system-call allowlists).
                                    For debugging only.
          --log-level <level>       Log level: trace, debug, info, notice, warning, error, critical (default: info).
          --stop-when-stdin-closes  Stop when standard input reaches end of file (`bulkhead run` passes its
                                    control socket).
          -h, --help                Show this help.

        """

    /// Parses `arguments` (without the program name). Options take their value as the next
    /// argument or after `=`; each may be given once; --config, --tenant and --id are required.
    public static func parse(_ arguments: [String]) throws(UsageError) -> Parsed {
        var options = PartitionOptions()
        var seen: Set<String> = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            if argument == "--help" || argument == "-h" { return .help }
            guard argument.hasPrefix("--") else { throw UsageError(description: "unexpected argument '\(argument)'") }
            var name = argument, inline: String? = nil
            if let equals = argument.firstIndex(of: "=") {
                name = String(argument[..<equals])
                inline = String(argument[argument.index(after: equals)...])
            }
            guard seen.insert(name).inserted else { throw UsageError(description: "option '\(name)' given more than once") }
            func value() throws(UsageError) -> String {
                if let inline { return inline }
                guard index < arguments.count, !arguments[index].hasPrefix("--") else {
                    throw UsageError(description: "missing value for '\(name)'")
                }
                index += 1
                return arguments[index - 1]
            }
            func flag() throws(UsageError) -> Bool {
                guard inline == nil else { throw UsageError(description: "flag '\(name)' takes no value") }
                return true
            }
            switch name {
            case "--config": options.config = try value()
            case "--tenant": options.tenant = try value()
            case "--id": options.id = try value()
            case "--console": options.console = try flag()
            case "--no-jail": options.noJail = try flag()
            case "--stop-when-stdin-closes": options.stopWhenStdinCloses = try flag()
            case "--log-level":
                let level = try value()
                guard logLevels.contains(level) else { throw UsageError(description: "unknown log level '\(level)'") }
                options.logLevel = level
            case "--connect-timeout":
                let text = try value()
                guard let seconds = Double(text), seconds >= 0, seconds <= 600 else {
                    throw UsageError(description: "--connect-timeout must be 0...600 seconds, not '\(text)'")
                }
                options.connectTimeout = seconds
            default:
                throw UsageError(description: "unknown option '\(name)'")
            }
        }
        for required in ["--config", "--tenant", "--id"] where !seen.contains(required) {
            throw UsageError(description: "missing required option '\(required)'")
        }
        return .run(options)
    }
}
