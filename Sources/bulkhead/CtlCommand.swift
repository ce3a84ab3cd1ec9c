import ArgumentParser
import Config
import Foundation
import Management

/// `bulkhead ctl`: every operation of the management API from the command line.
struct CtlCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ctl",
        abstract: "Manage the running daemon through its control socket (human tables, or --json for the API's bodies).",
        discussion: """
            Exit status: 0 on success, 1 when the daemon refuses the call or it fails, 2 when the \
            control socket cannot be reached.
            """,
        subcommands: [Health.self, Status.self, Tenants.self, TenantShow.self, Segments.self, Ports.self, Volumes.self,
                      Partitions.self, Counters.self, PartitionLifecycle.self, ConfigShow.self, Apply.self, Audit.self]
    )

    @OptionGroup var options: CtlOptions
}

struct CtlOptions: ParsableArguments {
    @Option(help: "The control socket (default: $BULKHEAD_SOCKET, else /run/bulkhead/control.sock, where deploy/host.json puts it).")
    var socket: String?

    @Flag(help: "Print the API's JSON body instead of a table.")
    var json = false

    static let defaultSocket = "/run/bulkhead/control.sock"

    var socketPath: String {
        socket ?? ProcessInfo.processInfo.environment["BULKHEAD_SOCKET"].flatMap { $0.isEmpty ? nil : $0 } ?? CtlOptions.defaultSocket
    }

    /// Makes one call; prints the answer as a table (`human`) or its JSON body; exits 1 on a
    /// refusal or failure, 2 when the socket cannot be reached.
    func call(_ method: String, _ target: String, body: [UInt8]? = nil,
              human: @escaping @Sendable (JSONValue) -> String) throws {
        let client = ManagementClient(socketPath: socketPath)
        let json = self.json
        try runAsync {
            let answer: ManagementClient.Answer
            do {
                answer = try await client.call(method, target, body: body)
            } catch {
                FileHandle.standardError.write(Data("bulkhead ctl: \(error)\n".utf8))
                throw ExitCode(2)
            }
            let parsed = answer.json
            guard (200..<300).contains(answer.status) else {
                if json {
                    FileHandle.standardOutput.write(Data(answer.body))
                } else {
                    FileHandle.standardError.write(Data((CtlTables.error(parsed, status: answer.status) + "\n").utf8))
                }
                throw ExitCode(1)
            }
            if json {
                FileHandle.standardOutput.write(Data(answer.body))
            } else if let parsed {
                print(human(parsed))
            } else {
                FileHandle.standardError.write(Data("bulkhead ctl: the daemon's answer is not JSON\n".utf8))
                throw ExitCode(1)
            }
        }
    }
}

/// `T` or `T/P` arguments: checked here so that a typo is an argument error, not a call.
private func checkID(_ id: String, _ what: String) throws {
    guard HostConfiguration.isValidID(id) else {
        throw ValidationError("'\(id)' is not a valid \(what) id (1 to 32 of a-z, 0-9 and '-', starting with a letter or digit)")
    }
}

extension CtlCommand {
    struct Health: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Check that the daemon answers, and who you are to it.")
        @OptionGroup var options: CtlOptions
        func run() throws { try options.call("GET", "/v1/health", human: CtlTables.health) }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The daemon and every process it runs.")
        @OptionGroup var options: CtlOptions
        func run() throws { try options.call("GET", "/v1/status", human: CtlTables.status) }
    }

    struct Tenants: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The tenants you may see.")
        @OptionGroup var options: CtlOptions
        func run() throws { try options.call("GET", "/v1/tenants", human: CtlTables.tenants) }
    }

    struct TenantShow: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "tenant", abstract: "One tenant and its objects.")
        @OptionGroup var options: CtlOptions
        @Argument(help: "The tenant's id.") var tenant: String
        func validate() throws { try checkID(tenant, "tenant") }
        func run() throws { try options.call("GET", "/v1/tenants/\(tenant)", human: CtlTables.tenant) }
    }

    /// `segments`, `ports`, `volumes`, `partitions`: of one tenant, or of every tenant you see;
    /// with an id, that one object.
    struct ObjectListing: ParsableArguments {
        @Option(help: "Only this tenant's.") var tenant: String?
        @Argument(help: "Show this object (needs --tenant).") var id: String?

        func validate() throws {
            if let tenant { try checkID(tenant, "tenant") }
            if let id {
                guard tenant != nil else { throw ValidationError("showing one object needs --tenant") }
                try checkID(id, "object")
            }
        }

        func run(_ kind: String, options: CtlOptions) throws {
            switch (tenant, id) {
            case (let tenant?, let id?):
                try options.call("GET", "/v1/tenants/\(tenant)/\(kind)/\(id)", human: CtlTables.object)
            case (let tenant?, nil):
                try options.call("GET", "/v1/tenants/\(tenant)/\(kind)") { body in
                    CtlTables.objects(kind, [(tenant, body[kind]?.arrayElements ?? [])])
                }
            case (nil, _):
                // The tenants' objects are in their listing: one call for every tenant you see.
                if options.json {
                    try options.call("GET", "/v1/tenants") { $0.serialized(pretty: true) }
                    return
                }
                try options.call("GET", "/v1/tenants") { body in
                    CtlTables.objects(kind, (body["tenants"]?.arrayElements ?? []).map { tenant in
                        (tenant["id"]?.stringValue ?? "?", tenant[kind]?.arrayElements ?? [])
                    })
                }
            }
        }
    }

    struct Segments: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Segments (--tenant T [ID] for one tenant's, or one).")
        @OptionGroup var options: CtlOptions
        @OptionGroup var listing: ObjectListing
        func run() throws { try listing.run("segments", options: options) }
    }

    struct Ports: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Ports (--tenant T [ID] for one tenant's, or one).")
        @OptionGroup var options: CtlOptions
        @OptionGroup var listing: ObjectListing
        func run() throws { try listing.run("ports", options: options) }
    }

    struct Volumes: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Volumes (--tenant T [ID] for one tenant's, or one).")
        @OptionGroup var options: CtlOptions
        @OptionGroup var listing: ObjectListing
        func run() throws { try listing.run("volumes", options: options) }
    }

    struct Partitions: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Partitions (--tenant T [ID] for one tenant's, or one).")
        @OptionGroup var options: CtlOptions
        @OptionGroup var listing: ObjectListing
        func run() throws { try listing.run("partitions", options: options) }
    }

    struct Counters: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The switch's port and segment counters.")
        @OptionGroup var options: CtlOptions
        @Option(help: "Only this tenant's.") var tenant: String?
        func validate() throws { if let tenant { try checkID(tenant, "tenant") } }
        func run() throws {
            try options.call("GET", "/v1/counters" + (tenant.map { "?tenant=\($0)" } ?? ""), human: CtlTables.counters)
        }
    }

    struct PartitionLifecycle: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "partition", abstract: "Start, stop or restart a partition.")
        @OptionGroup var options: CtlOptions
        @Argument(help: "start, stop or restart.") var action: String
        @Argument(help: "TENANT/PARTITION") var target: String

        func validate() throws {
            guard ["start", "stop", "restart"].contains(action) else {
                throw ValidationError("the action is start, stop or restart, not '\(action)'")
            }
            let parts = target.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 2 else { throw ValidationError("name the partition as TENANT/PARTITION, e.g. blue/guest") }
            try checkID(parts[0], "tenant")
            try checkID(parts[1], "partition")
        }

        func run() throws {
            let parts = target.split(separator: "/").map(String.init)
            let action = self.action
            let target = self.target
            try options.call("POST", "/v1/tenants/\(parts[0])/partitions/\(parts[1])/\(action)") { _ in "\(action) \(target): done" }
        }
    }

    struct ConfigShow: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "config", abstract: "The applied configuration document.")
        @OptionGroup var options: CtlOptions
        func run() throws { try options.call("GET", "/v1/configuration") { $0.serialized(pretty: true) } }
    }

    struct Apply: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate a configuration file and apply what differs from the running one.")
        @OptionGroup var options: CtlOptions
        @Flag(help: "Only validate and show the difference; change nothing.") var dryRun = false
        @Argument(help: "The configuration file (JSON).") var file: String

        func run() throws {
            guard let data = FileManager.default.contents(atPath: file) else {
                FileHandle.standardError.write(Data("bulkhead ctl: cannot read \(file)\n".utf8))
                throw ExitCode(1)
            }
            try options.call("PUT", "/v1/configuration" + (dryRun ? "?dryRun=true" : ""), body: Array(data),
                             human: CtlTables.apply)
        }
    }

    struct Audit: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Read the audit log.")
        @OptionGroup var options: CtlOptions
        @Option(help: "Only records after this record number.") var after: UInt64 = 0
        @Option(help: "At most this many records (1...1000).") var limit: Int = 100
        func validate() throws {
            guard (1...1000).contains(limit) else { throw ValidationError("--limit is 1...1000") }
        }
        func run() throws { try options.call("GET", "/v1/audit?after=\(after)&limit=\(limit)", human: CtlTables.audit) }
    }
}
