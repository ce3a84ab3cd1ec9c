import ArgumentParser
import Config
import Foundation
import HostOS
import Logging
import ServiceLifecycle
import Synchronization
import Switch
import SwitchEngine

// The root command is synchronous on purpose: the process starts with one thread, so a child
// mode (the block server) can drop privileges for the whole process before any other thread
// exists. Async work runs in `runAsync`.
@main
struct Bulkhead: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bulkhead",
        abstract: "Per-host dataplane for multi-tenant virtualization: tenant-segmented switch, block backend, partitions.",
        subcommands: [Run.self, Validate.self, SwitchCommand.self, BlockServerCommand.self, PartitionCommand.self, VolumeCommand.self,
                      AuditCommand.self, CtlCommand.self]
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
        reportInvalid(path, error)
        throw ExitCode(1)
    }
}

/// Loads the configuration and its text (the daemon audits the text's digest and hands the
/// text to its children), or prints every problem and exits with status 1.
func loadConfigurationText(_ path: String) throws -> (HostConfiguration, String) {
    let text: String
    do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
        FileHandle.standardError.write(Data("\(path): cannot read the configuration: \(error)\n".utf8))
        throw ExitCode(1)
    }
    do {
        return (try HostConfiguration.decode(text, file: path), text)
    } catch {
        reportInvalid(path, error)
        throw ExitCode(1)
    }
}

private func reportInvalid(_ path: String, _ error: ConfigurationError) {
    var report = "\(path): invalid configuration, \(error.problems.count) problem(s):\n"
    for problem in error.problems { report += "  \(problem)\n" }
    FileHandle.standardError.write(Data(report.utf8))
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

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the daemon in the foreground until SIGTERM or SIGINT; SIGHUP applies the configuration file again.")

    @OptionGroup var options: ConfigOption

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("unknown log level '\(logLevel)'")
        }
    }

    func run() throws {
        bootstrapLogging(level: Logger.Level(rawValue: logLevel) ?? .info)
        let logger = Logger(label: "bulkhead")
        let (configuration, text) = try loadConfigurationText(options.config)
        let configPath = options.config
        let logLevel = self.logLevel
        try runAsync {
            do {
                try await Daemon(configuration: configuration, configurationText: text, configPath: configPath,
                                 logLevel: logLevel, logger: logger).run()
            } catch let error as DaemonError {
                logger.critical("bulkhead could not start: \(error)")
                throw ExitCode(1)
            }
        }
    }
}

/// Logs to standard error at `level` and above.
func bootstrapLogging(level: Logger.Level) {
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = level
        return handler
    }
}

/// Runs `body` as a task and blocks the calling (main) thread until it finishes.
func runAsync(_ body: @escaping @Sendable () async throws -> Void) throws {
    let outcome = Mutex<Result<Void, any Error>?>(nil)
    let done = DispatchSemaphore(value: 0)
    Task {
        let result: Result<Void, any Error>
        do { try await body(); result = .success(()) } catch { result = .failure(error) }
        outcome.withLock { $0 = result }
        done.signal()
    }
    done.wait()
    try outcome.withLock { $0 }?.get()
}
