import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The test guest (Tests/Guest) as a partition image: built once per test process with the
/// system compiler and measured, plus what the partition tests need of the host.
struct PartitionGuestImage {
    /// The flat image (bhtest.bin).
    let path: String
    /// Its SHA-256, lower-case hex, as a partition's `image.sha256` wants it.
    let sha256: String
    /// The host's TSC frequency, passed to the guest as `tsc_mhz=`: its PIT calibration may
    /// fall back to an assumed 2000 MHz under this KVM, which would skew its timeouts.
    let tscMHz: Int?

    /// Skips the test, saying what is missing (root, /dev/kvm, the compiler, the network tools,
    /// io_uring); builds the guest once per process.
    static func require() throws -> PartitionGuestImage {
        guard getuid() == 0 else {
            throw XCTSkip("needs root: the daemon creates TAP devices and namespaces, and its partitions jail themselves (run as root, as CI does)")
        }
        guard FileManager.default.fileExists(atPath: "/dev/kvm") else {
            throw XCTSkip("needs /dev/kvm (the kvm module): a partition is a KVM guest")
        }
        let kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        guard kvm >= 0 else { throw XCTSkip("needs read-write access to /dev/kvm: \(String(cString: strerror(errno)))") }
        close(kvm)
        let compiler = ProcessInfo.processInfo.environment["CC"] ?? "gcc"
        for tool in [compiler, "objcopy", "sha256sum"] {
            let found = tool.contains("/") ? FileManager.default.isExecutableFile(atPath: tool) : Host.which(tool) != nil
            guard found else { throw XCTSkip("needs \(tool) on PATH to build and measure the test guest (gcc, binutils, coreutils)") }
        }
        try Host.requireNetworkPrivileges()
        try BlockHost.requireRoot()
        return try built.get()
    }

    /// The guest `TestGuestTools` builds, measured.
    private static let built: Result<PartitionGuestImage, DaemonFailure> = TestGuestTools.built.flatMap { image in
        guard let digest = try? sha256(of: image) else { return .failure(DaemonFailure(message: "sha256sum \(image) failed")) }
        return .success(PartitionGuestImage(path: image, sha256: digest, tscMHz: hostTSCMHz()))
    }

    static func sha256(of path: String) throws -> String {
        let result = try Host.run(["sha256sum", path])
        let digest = result.output.split(separator: " ").first.map(String.init) ?? ""
        guard result.status == 0, digest.count == 64 else { throw DaemonFailure(message: "sha256sum \(path): \(result.error)") }
        return digest
    }

    /// The TSC frequency the kernel found (the refined figure when there is one), else the
    /// "cpu MHz" of /proc/cpuinfo (a VM's TSC runs at it); nil when neither says.
    static func hostTSCMHz() -> Int? {
        func mhz(after marker: String, in line: Substring) -> Int? {
            guard let start = line.range(of: marker)?.upperBound else { return nil }
            let number = line[start...].trimmingCharacters(in: .whitespaces).prefix { $0.isNumber || $0 == "." }
            return Double(number).map { Int($0.rounded()) }
        }
        if let dmesg = try? Host.run(["dmesg"], timeout: 10), dmesg.status == 0 {
            let lines = dmesg.output.split(separator: "\n")
            if let line = lines.last(where: { $0.contains("tsc: Refined TSC clocksource calibration:") }),
               let value = mhz(after: "calibration:", in: line) { return value }
            if let line = lines.last(where: { $0.contains("tsc: Detected") && $0.contains("MHz") }),
               let value = mhz(after: "Detected", in: line) { return value }
        }
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        if let line = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix("cpu MHz") }) { return mhz(after: ":", in: line) }
        return nil
    }

    /// " tsc_mhz=N", or nothing when the host's TSC frequency is unknown (the guest calibrates).
    var tscToken: String { tscMHz.map { " tsc_mhz=\($0)" } ?? "" }
}

/// The demo topology (tenants blue and red with the same subnet, TAP ports a and b in
/// namespaces, vhost-user port vm, volume data) run by the real daemon, with partitions of the
/// test guest; optionally with packet captures on every TAP port, started before the daemon.
final class PartitionTestbed {
    /// One partition to configure.
    struct Guest {
        var tenant: String
        var id = "p"
        var cmdline: String
        var restart = "on-reboot"
        var disks = ["data"]
        var nics = ["vm"]
        /// Another image than the test guest's (path and the digest to configure).
        var image: (path: String, sha256: String)?
        var memoryMiB = 64
    }

    let daemon: RunningDaemon
    let image: PartitionGuestImage
    let guests: [Guest]
    private var captures: [String: PartitionCapture] = [:]
    private let ownNamespaces: [String]

    static let tenants = ["blue", "red"]
    static let tapPorts = ["a", "b"]

    /// The MAC of `port` of `tenant` in configs/demo.json (blue 02:00:00:00:01:0N, red
    /// 02:00:00:00:02:0N; a = 1, b = 2, vm = 3).
    static func mac(_ tenant: String, _ port: String) -> String {
        "02:00:00:00:0\(tenant == "blue" ? 1 : 2):0\(["a": 1, "b": 2, "vm": 3][port] ?? 0)"
    }

    /// Starts the daemon on the demo topology with `guests`; `extraAddresses` ("tenant/port" to
    /// CIDRs) are added to those ports' `ips`, so the daemon configures them before any partition
    /// runs. With `capture`, the TAP ports' namespaces are made here first and a capture of every
    /// frame that enters each is running before the daemon starts, so none of a guest's frames
    /// can escape it.
    init(image: PartitionGuestImage, guests: [Guest], extraAddresses: [String: [String]] = [:], capture: Bool = false,
         hostSettings: [String: Any] = [:]) throws {
        self.image = image
        self.guests = guests
        var config = try TestTopology.demo()
        config["host"] = (config["host"] as? [String: Any] ?? [:]).merging(hostSettings) { _, new in new }
        var tenants = config["tenants"] as? [[String: Any]] ?? []
        for t in tenants.indices {
            let tenant = tenants[t]["id"] as? String ?? ""
            var ports = tenants[t]["ports"] as? [[String: Any]] ?? []
            for p in ports.indices {
                let extra = extraAddresses["\(tenant)/\(ports[p]["id"] as? String ?? "")"] ?? []
                ports[p]["ips"] = (ports[p]["ips"] as? [String] ?? []) + extra
            }
            tenants[t]["ports"] = ports
            // Whatever configs/demo.json says about partitions, these are the test's.
            tenants[t]["partitions"] = guests.filter { $0.tenant == tenant }.map { guest -> [String: Any] in
                [
                    "id": guest.id, "vcpus": 1, "memoryMiB": guest.memoryMiB,
                    "image": ["path": guest.image?.path ?? image.path, "sha256": guest.image?.sha256 ?? image.sha256],
                    "cmdline": guest.cmdline + (guest.image == nil ? image.tscToken : ""),
                    "disks": guest.disks, "nics": guest.nics, "restart": guest.restart,
                ]
            }
        }
        config["tenants"] = tenants
        var namespaces: [String] = []
        var captures: [String: PartitionCapture] = [:]
        if capture {
            for tenant in Self.tenants {
                for port in Self.tapPorts {
                    let namespace = TestTopology.namespace(tenant, port)
                    _ = try? Host.run(["ip", "netns", "del", namespace])
                    let made = try Host.run(["ip", "netns", "add", namespace])
                    guard made.status == 0 else { throw DaemonFailure(message: "ip netns add \(namespace): \(made.error)") }
                    namespaces.append(namespace)
                    do {
                        captures["\(tenant)/\(port)"] = try PartitionCapture(namespace: namespace)
                    } catch {
                        Self.remove(namespaces)
                        throw error
                    }
                }
            }
        }
        do {
            daemon = try RunningDaemon(configuration: config)
        } catch {
            captures.removeAll()
            Self.remove(namespaces)
            throw error
        }
        self.captures = captures
        ownNamespaces = namespaces
    }

    deinit {
        daemon.stop()
        for capture in captures.values { _ = try? capture.stop() }
        Self.remove(ownNamespaces)
    }

    /// The daemon leaves namespaces it did not create (its TAP devices go with it).
    private static func remove(_ namespaces: [String]) {
        for namespace in namespaces { _ = try? Host.run(["ip", "netns", "del", namespace]) }
    }

    var stateDirectory: String { daemon.stateDirectory }

    // MARK: Captures

    /// Stops every capture; per "tenant/port", the source MACs of the frames that entered it.
    func stopCaptures() throws -> [String: [String]] {
        var sources: [String: [String]] = [:]
        for (key, capture) in captures { sources[key] = try capture.stop() }
        captures.removeAll()
        return sources
    }

    // MARK: Consoles

    func consolePath(_ tenant: String, _ id: String = "p") -> String {
        "\(stateDirectory)/tenants/\(tenant)/partitions/\(id)/console.log"
    }

    /// The guest's console, one array of lines per boot (each starting at "bhtest: start"; the
    /// log is appended to by every run of the partition), without the serial line's "\r".
    func consoleRuns(_ tenant: String, _ id: String = "p") -> [[String]] {
        let bytes = [UInt8](FileManager.default.contents(atPath: consolePath(tenant, id)) ?? Data())
        let lines = bytes.split(separator: UInt8(ascii: "\n"))
            .map { String(decoding: $0.filter { $0 != UInt8(ascii: "\r") }, as: UTF8.self) }
        var runs: [[String]] = []
        for line in lines {
            // A killed run may end in half a line: the next boot's first line then ends it.
            if line.hasSuffix("bhtest: start") || runs.isEmpty { runs.append([]) }
            runs[runs.count - 1].append(line.hasSuffix("bhtest: start") ? "bhtest: start" : line)
        }
        return runs
    }

    /// Waits until boot number `run` (1-based) of the partition has printed a line starting with
    /// "bhtest: <prefix>"; returns that boot's lines so far.
    @discardableResult
    func waitForConsole(_ tenant: String, _ id: String = "p", run: Int = 1, line prefix: String, timeout: TimeInterval = 60) throws -> [String] {
        var lines: [String] = []
        do {
            try BlockHost.waitFor("'bhtest: \(prefix)' from boot \(run) of \(tenant)/\(id)", timeout: timeout) {
                let runs = consoleRuns(tenant, id)
                lines = runs.count >= run ? runs[run - 1] : []
                return lines.contains { $0.hasPrefix("bhtest: " + prefix) }
            }
        } catch {
            throw DaemonFailure(message: "\(error)\n\(report(tenant, id))")
        }
        return lines
    }

    /// Waits for the verdict (PASS or FAIL, the guest's last line) of boot number `run`.
    func waitForVerdict(_ tenant: String, _ id: String = "p", run: Int = 1, timeout: TimeInterval = 90) throws -> PartitionConsole {
        var lines: [String] = []
        do {
            try BlockHost.waitFor("the verdict of boot \(run) of \(tenant)/\(id)", timeout: timeout) {
                let runs = consoleRuns(tenant, id)
                lines = runs.count >= run ? runs[run - 1] : []
                return lines.contains { $0.hasPrefix("bhtest: PASS") || $0.hasPrefix("bhtest: FAIL") }
            }
        } catch {
            throw DaemonFailure(message: "\(error)\n\(report(tenant, id))")
        }
        return PartitionConsole(lines: lines, report: report(tenant, id))
    }

    /// The partition's console (its last 60 lines) and the daemon's log lines about it.
    func report(_ tenant: String, _ id: String = "p") -> String {
        let console = consoleRuns(tenant, id).joined().suffix(60).joined(separator: "\n")
        return "--- console of \(tenant)/\(id) ---\n\(console)\n--- daemon log about it (and errors) ---\n"
            + daemon.output.split(separator: "\n").filter {
                ($0.contains("tenant.id=\(tenant)") && $0.contains("partition.id=\(id) ")) || $0.contains(" error ") || $0.contains(" critical ")
            }.suffix(40).joined(separator: "\n")
    }

    // MARK: Log

    /// The daemon's log lines (its own and its children's) about partition `id` of `tenant` that
    /// contain `text`.
    func log(_ tenant: String, _ id: String = "p", containing text: String) -> [String] {
        daemon.output.split(separator: "\n").map(String.init).filter {
            $0.contains("tenant.id=\(tenant)") && $0.contains("partition.id=\(id) ") && $0.contains(text)
        }
    }

    /// What the partition process itself logged as a warning, an error or worse.
    func partitionProblems(_ tenant: String, _ id: String = "p") -> [String] {
        log(tenant, id, containing: " bulkhead.partition:").filter {
            $0.contains(" warning bulkhead.partition:") || $0.contains(" error bulkhead.partition:") || $0.contains(" critical bulkhead.partition:")
        }
    }

    func waitForLog(_ tenant: String, _ id: String = "p", containing text: String, count: Int = 1, timeout: TimeInterval = 60) throws {
        do {
            try BlockHost.waitFor("\(count)x '\(text)' about \(tenant)/\(id) in the daemon's log", timeout: timeout) {
                log(tenant, id, containing: text).count >= count
            }
        } catch {
            throw DaemonFailure(message: "\(error)\n\(report(tenant, id))\n--- daemon log ---\n\(daemon.output.split(separator: "\n").suffix(80).joined(separator: "\n"))")
        }
    }

    // MARK: Processes

    /// Pids of live `bulkhead <subcommand>` processes of this daemon (their `--config` is the
    /// document it applied, `<stateDirectory>/applied.json`), with `--tenant`
    /// and `--id` as given; "partition" names the `bulkhead-vmm` processes the daemon spawns.
    func processes(_ subcommand: String, tenant: String? = nil, id: String? = nil) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { pid in
            // A zombie's cmdline is empty: it is not counted.
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            let arguments = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            let program = arguments.first?.split(separator: "/").last.map(String.init)
            guard (program == "bulkhead-vmm" ? "partition" : arguments.dropFirst().first) == subcommand else { return false }
            func value(_ option: String) -> String? {
                guard let i = arguments.firstIndex(of: option), i + 1 < arguments.count else { return nil }
                return arguments[i + 1]
            }
            return value("--config") == daemon.stateDirectory + "/applied.json" && (tenant == nil || value("--tenant") == tenant)
                && (id == nil || value("--id") == id)
        }.sorted()
    }

    /// The one live process of a kind, waiting up to `timeout` for it (the supervisor starts
    /// the children after the daemon says it is ready); fails with the log when there is none or
    /// several.
    func process(_ subcommand: String, tenant: String? = nil, id: String? = nil, timeout: TimeInterval = 30) throws -> Int32 {
        var pids: [Int32] = []
        do {
            try BlockHost.waitFor("one '\(subcommand)' process", timeout: timeout) {
                pids = processes(subcommand, tenant: tenant, id: id)
                return pids.count == 1
            }
        } catch {
            throw DaemonFailure(message: "expected one '\(subcommand)' process (tenant \(tenant ?? "-"), id \(id ?? "-")), found \(pids)\n"
                + daemon.output.split(separator: "\n").suffix(40).joined(separator: "\n"))
        }
        return pids[0]
    }

    /// How many mappings of guest RAM (the memfd `Machine` names "bulkhead-guest-ram") process
    /// `pid` has: a vhost-user backend maps each region of each frontend's memory table.
    static func guestMemoryMappings(of pid: Int32) -> Int {
        let maps = (try? String(contentsOfFile: "/proc/\(pid)/maps", encoding: .utf8)) ?? ""
        return maps.split(separator: "\n").filter { $0.contains("/memfd:bulkhead-guest-ram") }.count
    }

    /// The uid recorded for partition `id` of `tenant` in the state directory's jail-uids.json.
    func partitionUid(_ tenant: String, _ id: String = "p") throws -> UInt32 {
        try BlockHost.jailUid(stateDirectory: stateDirectory, tenant: "\(tenant)/\(id)")
    }
}

/// One boot's console lines.
struct PartitionConsole {
    let lines: [String]
    let report: String

    var passed: Bool { lines.first == "bhtest: start" && lines.last == "bhtest: PASS" }

    /// The first line "bhtest: <prefix>...", without "bhtest: ".
    func line(_ prefix: String) -> String? {
        lines.first { $0.hasPrefix("bhtest: " + prefix) }.map { String($0.dropFirst("bhtest: ".count)) }
    }

    func assertPassed(file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(lines.first, "bhtest: start", "the guest's first line:\n\(report)", file: file, line: line)
        XCTAssertEqual(lines.last, "bhtest: PASS", "the guest's verdict:\n\(report)", file: file, line: line)
    }

    func assertLines(_ prefixes: [String], file: StaticString = #filePath, line: UInt = #line) {
        for prefix in prefixes {
            XCTAssertNotNil(self.line(prefix), "the guest printed '\(prefix)':\n\(report)", file: file, line: line)
        }
    }
}

/// Every frame entering any interface of a network namespace, including interfaces that appear
/// after it started (tcpdump on "any" binds to no interface): started before the daemon moves a
/// TAP device in, it misses none of its frames.
final class PartitionCapture {
    private let process = Process()
    private let file: String
    private let errors: String

    init(namespace: String) throws {
        let base = NSTemporaryDirectory() + "bulkhead-partition-capture-\(UUID().uuidString)"
        file = base + ".pcap"
        errors = base + ".err"
        _ = FileManager.default.createFile(atPath: errors, contents: nil)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["ip", "netns", "exec", namespace, "tcpdump", "-i", "any", "-Q", "in", "-n", "-U", "-w", file]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errors))
        try process.run()
        // tcpdump says "listening on" once its socket is bound and its ring set up.
        try BlockHost.waitFor("tcpdump listening in \(namespace)", timeout: 15) {
            ((try? String(contentsOfFile: errors, encoding: .utf8)) ?? "").contains("listening on") || !process.isRunning
        }
        guard process.isRunning else {
            throw DaemonFailure(message: "tcpdump in \(namespace) exited: \((try? String(contentsOfFile: errors, encoding: .utf8)) ?? "")")
        }
    }

    /// Stops the capture; the source MAC of each frame it saw.
    func stop() throws -> [String] {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        defer {
            try? FileManager.default.removeItem(atPath: file)
            try? FileManager.default.removeItem(atPath: errors)
        }
        guard FileManager.default.fileExists(atPath: file) else { return [] }
        // With -e, a cooked (SLL2) capture prints "... ifindex N <source MAC> ethertype ...".
        let result = try Host.run(["tcpdump", "-e", "-n", "-r", file])
        return result.output.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard let ethertype = fields.firstIndex(of: "ethertype"), ethertype > 0 else { return "?" }
            return String(fields[ethertype - 1])
        }
    }

    deinit {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }
}
