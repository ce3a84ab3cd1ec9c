import ArgumentParser
import Config
import Foundation
import HostOS
import Logging
import ServiceLifecycle
import Switch
import SwitchEngine

@main
struct Bulkhead: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bulkhead",
        abstract: "Per-host dataplane for multi-tenant virtualization: tenant-segmented switch, block backend, partitions.",
        subcommands: [Run.self, Validate.self]
    )
}

struct ConfigOption: ParsableArguments {
    @Option(name: .long, help: "Path of the host configuration (JSON).")
    var config: String
}

/// Loads the configuration or prints every problem, one per line, and exits with status 1.
func loadConfiguration(_ path: String) throws -> HostConfiguration {
    do {
        return try HostConfiguration.load(contentsOf: path)
    } catch {
        var report = "\(path): invalid configuration, \(error.problems.count) problem(s):\n"
        for problem in error.problems { report += "  \(problem)\n" }
        FileHandle.standardError.write(Data(report.utf8))
        throw ExitCode(1)
    }
}

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check a host configuration; print every problem with its JSON path. Exit status 0 only when valid.")

    @OptionGroup var options: ConfigOption

    func run() throws {
        let configuration = try loadConfiguration(options.config)
        let ports = configuration.tenants.reduce(0) { $0 + $1.ports.count }
        print("\(options.config): valid (\(configuration.tenants.count) tenant(s), \(ports) port(s))")
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the daemon in the foreground until SIGTERM or SIGINT.")

    @OptionGroup var options: ConfigOption

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("unknown log level '\(logLevel)'")
        }
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "bulkhead")
        let configuration = try loadConfiguration(options.config)
        do {
            try await Daemon(configuration: configuration, logger: logger).run()
        } catch let error as DaemonError {
            logger.critical("bulkhead could not start: \(error)")
            throw ExitCode(1)
        }
    }
}
