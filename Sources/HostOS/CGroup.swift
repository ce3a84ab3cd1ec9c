import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// The cgroup v2 controllers the daemon limits its children with.
public enum CGroupController: String, CaseIterable, Comparable, Sendable {
    case cpu, memory, pids

    public static func < (a: CGroupController, b: CGroupController) -> Bool { a.rawValue < b.rawValue }
}

/// The resource limits of one child's group. A nil limit is no limit: writing limits to an
/// existing group sets every file, so a limit removed from the configuration goes away too.
public struct CGroupLimits: Sendable, Equatable {
    /// memory.max, in bytes (the kernel rounds it down to whole pages). When set, memory.swap.max
    /// is 0, so the child cannot escape its limit into swap.
    public var memoryMaxBytes: UInt64?
    /// cpu.weight, 1...10000 (the kernel's default, and a nil weight's, is 100): the child's
    /// share of contended CPU time against its siblings.
    public var cpuWeight: Int?
    /// cpu.max as a percentage of one CPU per 100 ms period: 50 is half a CPU, 200 two CPUs.
    /// 1...100_000.
    public var cpuQuotaPercent: Int?
    /// pids.max: how many processes and threads the group may hold, 1 or more.
    public var pidsMax: Int?

    public init(memoryMaxBytes: UInt64? = nil, cpuWeight: Int? = nil, cpuQuotaPercent: Int? = nil, pidsMax: Int? = nil) {
        self.memoryMaxBytes = memoryMaxBytes
        self.cpuWeight = cpuWeight
        self.cpuQuotaPercent = cpuQuotaPercent
        self.pidsMax = pidsMax
    }

    /// The cpu.max period, in microseconds.
    public static let cpuPeriodMicroseconds = 100_000

    /// The controllers these limits need.
    public var controllers: Set<CGroupController> {
        var needed: Set<CGroupController> = []
        if memoryMaxBytes != nil { needed.insert(.memory) }
        if cpuWeight != nil || cpuQuotaPercent != nil { needed.insert(.cpu) }
        if pidsMax != nil { needed.insert(.pids) }
        return needed
    }

    /// Checks every value against the range the kernel accepts; returns why one is not.
    public func validate() -> String? {
        if let weight = cpuWeight, !(1...10_000).contains(weight) { return "cpuWeight \(weight) is outside 1...10000" }
        if let percent = cpuQuotaPercent, !(1...100_000).contains(percent) {
            return "cpuQuotaPercent \(percent) is outside 1...100000"
        }
        if let pids = pidsMax, pids < 1 { return "pidsMax \(pids) is below 1 (the child itself counts)" }
        return nil
    }
}

/// What the kernel counted in a group since it was made (memory.events, pids.events).
public struct CGroupEvents: Sendable, Equatable {
    /// Times the group's usage reached memory.max and the kernel reclaimed from it.
    public var memoryMax: UInt64 = 0
    /// Times the group ran out of memory (reclaim at memory.max failed).
    public var oom: UInt64 = 0
    /// Processes of the group the OOM killer killed.
    public var oomKills: UInt64 = 0
    /// Forks and clones pids.max refused.
    public var pidsMax: UInt64 = 0

    public init(memoryMax: UInt64 = 0, oom: UInt64 = 0, oomKills: UInt64 = 0, pidsMax: UInt64 = 0) {
        self.memoryMax = memoryMax
        self.oom = oom
        self.oomKills = oomKills
        self.pidsMax = pidsMax
    }
}

/// A failure to make, limit, read or remove a child's group.
public enum CGroupError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A group name that is not a plain directory name of letters, digits, '-', '_' and '.'.
    case invalidName(String, reason: String)
    /// A limit outside what the kernel accepts.
    case invalidLimit(String)
    /// A limit on a controller the daemon's tree did not enable.
    case controllerNotEnabled(CGroupController, group: String)
    /// A cgroup file or directory operation failed.
    case system(SystemError)

    public var description: String {
        switch self {
        case .invalidName(let name, let reason): "cgroup name \"\(name)\" is invalid: \(reason)"
        case .invalidLimit(let reason): "invalid cgroup limit: \(reason)"
        case .controllerNotEnabled(let controller, let group):
            "cgroup \(group): the \(controller.rawValue) controller is not enabled in the daemon's cgroup tree"
        case .system(let error): "\(error)"
        }
    }
}

/// Why the daemon runs its children without cgroup limits: exactly what is missing, and what
/// would make it work.
public enum CGroupUnavailable: Error, Sendable, Equatable, CustomStringConvertible {
    /// /proc/self/mountinfo has no cgroup2 mount: cgroup v1 only, or cgroupfs not mounted.
    case noUnifiedHierarchy
    /// /proc/self/cgroup has no "0::" line, or names a path outside the cgroup2 mount.
    case ownGroupUnknown(String)
    /// The daemon's cgroup lacks controllers; those in `boundToV1` are held by cgroup v1
    /// hierarchies (a hybrid setup), the others are not delegated by the parent.
    case controllersMissing(group: String, missing: [CGroupController], boundToV1: [CGroupController])
    /// The daemon's cgroup holds processes that are not the daemon's, so no controller can be
    /// enabled for groups below it (cgroup v2's no-internal-process rule).
    case sharedGroup(group: String, otherProcesses: [Int32], error: SystemError)
    /// A step of the set-up failed: not writable, not delegated, or refused.
    case setupFailed(step: String, error: SystemError)

    public var description: String {
        switch self {
        case .noUnifiedHierarchy:
            return "no cgroup v2 hierarchy is mounted (no cgroup2 line in /proc/self/mountinfo)"
        case .ownGroupUnknown(let why):
            return "this process's cgroup v2 group is unknown: \(why)"
        case .controllersMissing(let group, let missing, let boundToV1):
            var text = "cgroup \(group) lacks the \(missing.map(\.rawValue).joined(separator: ", ")) controller(s)"
            if !boundToV1.isEmpty {
                text += "; \(boundToV1.map(\.rawValue).joined(separator: ", ")) are bound to cgroup v1 hierarchies"
                    + " (a hybrid host: boot with systemd.unified_cgroup_hierarchy=1 or cgroup_no_v1=all)"
            }
            let notDelegated = missing.filter { !boundToV1.contains($0) }
            if !notDelegated.isEmpty {
                text += "; \(notDelegated.map(\.rawValue).joined(separator: ", ")) are not delegated to it"
                    + " (systemd: Delegate=yes in the unit)"
            }
            return text
        case .sharedGroup(let group, let others, let error):
            let shown = others.prefix(5).map(String.init).joined(separator: ", ") + (others.count > 5 ? ", ..." : "")
            return "cgroup \(group) also holds processes that are not bulkhead's (pids \(shown)), so no controller"
                + " can be enabled below it (\(error)); start bulkhead in a cgroup of its own"
                + " (systemd: Delegate=yes, or systemd-run --scope -p Delegate=yes)"
        case .setupFailed(let step, let error):
            return "cgroup set-up failed at \(step): \(error)"
        }
    }
}

/// The daemon's cgroup v2 subtree: the daemon in a leaf of its own, each child in a group of
/// its own beside it, with the memory, cpu and pids controllers enabled for those groups.
///
/// The layout is the one systemd's `Delegate=yes` expects. When the daemon's own cgroup holds
/// no other process (a systemd service, a container's init), the daemon moves itself into
/// `<own>/daemon`, enables the controllers in `<own>/cgroup.subtree_control` and puts each child
/// in `<own>/<name>`.
///
/// When other processes share the daemon's cgroup (it was started from a shell), those are not
/// the daemon's to move: it makes `<own>/bulkhead` with `daemon` and the children below it
/// instead. That needs the controllers enabled in `<own>` too, which cgroup v2 allows only where
/// `<own>` has no processes of its own, that is at the hierarchy's real root; anywhere else
/// `prepare` fails with `.sharedGroup`, naming the other processes, and changes nothing.
///
/// Call `prepare` once at start, before any child is spawned (a child spawned before would stay
/// in the daemon's group, unlimited). Where it fails, log the reason and run the children
/// without limits.
public struct CGroupTree: Sendable {
    /// The directory the children's groups are made in.
    public let root: String
    /// The leaf this process moved itself into (`<root>/daemon`).
    public let daemonGroup: String
    /// The group this process was in before `prepare` (the one `leave` returns it to).
    public let startingGroup: String
    /// The controllers enabled for the children's groups.
    public let controllers: Set<CGroupController>

    /// The controllers `prepare` enabled in `startingGroup`'s subtree_control, which `leave`
    /// disables again.
    let enabledInStartingGroup: [CGroupController]

    /// The name of the daemon's own leaf, which no child's group may take.
    public static let daemonLeaf = "daemon"
    /// The subtree made when the daemon's cgroup is shared with other processes.
    public static let sharedSubtree = "bulkhead"

    /// Finds this process's cgroup v2 group, moves this process into a leaf of its own and
    /// enables `controllers` for the children's groups (see the type's documentation for the
    /// layout). Returns why that is impossible instead: no cgroup2 mount, controllers missing or
    /// held by cgroup v1, a cgroup shared with other processes, or a write the kernel refused.
    public static func prepare(controllers: Set<CGroupController> = Set(CGroupController.allCases))
        -> Result<CGroupTree, CGroupUnavailable> {
        let mounts: String, ownLines: String
        do {
            mounts = try readText("/proc/self/mountinfo")
            ownLines = try readText("/proc/self/cgroup")
        } catch {
            return .failure(.setupFailed(step: "reading /proc/self", error: error))
        }
        guard let own = ownGroupPath(procSelfCgroup: ownLines) else {
            return .failure(.ownGroupUnknown("/proc/self/cgroup has no \"0::\" line"))
        }
        guard let mount = unifiedMount(mountinfo: mounts, ownPath: own) else {
            let anyV2 = mounts.split(separator: "\n").contains { parseMountLine($0)?.fstype == "cgroup2" }
            return .failure(anyV2 ? .ownGroupUnknown("\(own) is not below any cgroup2 mount's root") : .noUnifiedHierarchy)
        }
        let relative = own.dropFirst(mount.root == "/" ? 0 : mount.root.count)
        let group = mount.mountPoint + (relative == "/" ? "" : relative)

        let available: Set<String>
        do {
            available = Set(try readText(group + "/cgroup.controllers").split(whereSeparator: \.isWhitespace).map(String.init))
        } catch {
            return .failure(.setupFailed(step: "reading \(group)/cgroup.controllers", error: error))
        }
        let missing = controllers.filter { !available.contains($0.rawValue) }.sorted()
        if !missing.isEmpty {
            let v1 = (try? readText("/proc/cgroups")).map(controllersBoundToV1) ?? []
            return .failure(.controllersMissing(group: group, missing: missing, boundToV1: missing.filter { v1.contains($0.rawValue) }))
        }

        let others: [Int32]
        do {
            let me = getpid()
            others = try readText(group + "/cgroup.procs").split(separator: "\n").compactMap { Int32($0) }.filter { $0 != me }
        } catch {
            return .failure(.setupFailed(step: "reading \(group)/cgroup.procs", error: error))
        }
        let root = others.isEmpty ? group : group + "/" + sharedSubtree
        let daemon = root + "/" + daemonLeaf
        // Only what prepare enables is undone (by a failure here, or by leave()): a controller
        // the host had enabled already stays enabled.
        let alreadyInGroup = Set(((try? readText(group + "/cgroup.subtree_control")) ?? "")
            .split(whereSeparator: \.isWhitespace).compactMap { CGroupController(rawValue: String($0)) })
        var enabledInGroup: [CGroupController] = []

        // Back to where it started, leaving nothing behind, when a step fails.
        func undo() {
            if root == group {
                for controller in enabledInGroup { _ = try? writeText(group + "/cgroup.subtree_control", "-" + controller.rawValue) }
            }
            _ = try? writeText(group + "/cgroup.procs", "\(getpid())")
            _ = rmdir(daemon)
            if root != group {
                _ = rmdir(root)
                for controller in enabledInGroup { _ = try? writeText(group + "/cgroup.subtree_control", "-" + controller.rawValue) }
            }
        }
        var step = ""
        do {
            if root != group {
                step = "mkdir \(root)"
                try makeDirectory(root)
            }
            step = "mkdir \(daemon)"
            try makeDirectory(daemon)
            // Moves every thread of this process (cgroup.procs takes a thread group).
            step = "moving this process into \(daemon)"
            try writeText(daemon + "/cgroup.procs", "\(getpid())")
            if root != group {
                for controller in controllers.sorted() where !alreadyInGroup.contains(controller) {
                    do { try writeText(group + "/cgroup.subtree_control", "+" + controller.rawValue) } catch {
                        undo()
                        if error.errno == EBUSY { return .failure(.sharedGroup(group: group, otherProcesses: others, error: error)) }
                        return .failure(.setupFailed(step: "enabling \(controller) in \(group)/cgroup.subtree_control", error: error))
                    }
                    enabledInGroup.append(controller)
                }
            }
            for controller in controllers.sorted() {
                step = "enabling \(controller) in \(root)/cgroup.subtree_control"
                if root == group && alreadyInGroup.contains(controller) { continue }
                try writeText(root + "/cgroup.subtree_control", "+" + controller.rawValue)
                if root == group { enabledInGroup.append(controller) }
            }
        } catch {
            undo()
            return .failure(.setupFailed(step: step, error: error))
        }
        return .success(CGroupTree(root: root, daemonGroup: daemon, startingGroup: group, controllers: controllers,
                                   enabledInStartingGroup: enabledInGroup))
    }

    /// Creates the group `<root>/<name>`, or takes the existing one, and writes `limits` to it
    /// (every limit: a nil one is written as "no limit"), so calling it again on a group with
    /// processes changes their limits at run time. Lowering memory.max below what the group
    /// uses makes the kernel reclaim, and OOM-kill where it cannot.
    /// Throws `.invalidName`, `.invalidLimit`, `.controllerNotEnabled` for a limit on a
    /// controller this tree did not enable, or `.system` for a write the kernel refused.
    public func group(named name: String, limits: CGroupLimits) throws(CGroupError) -> CGroup {
        try Self.validate(name: name)
        if let reason = limits.validate() { throw .invalidLimit(reason) }
        if let controller = limits.controllers.subtracting(controllers).sorted().first {
            throw .controllerNotEnabled(controller, group: name)
        }
        let path = root + "/" + name
        do {
            try Self.makeDirectory(path)
            let descriptor = try FileDescriptor.open(path, flags: bh_O_PATH | O_DIRECTORY)
            let group = CGroup(name: name, path: path, descriptor: descriptor)
            try group.write(limits, controllers: controllers)
            return group
        } catch {
            throw .system(error)
        }
    }

    /// Removes the group `<root>/<name>`; a group that does not exist is not an error. The
    /// kernel refuses (EBUSY) while the group holds a process, a zombie not yet reaped included:
    /// reap the child first. The corresponding C function is `rmdir`.
    public func removeGroup(named name: String) throws(CGroupError) {
        try Self.validate(name: name)
        let path = root + "/" + name
        if rmdir(path) < 0 && errno != ENOENT { throw .system(SystemError("rmdir(\(path))", errno: errno)) }
    }

    /// Moves this process back to the group it was in before `prepare` and removes the daemon's
    /// leaf (and the `bulkhead` subtree, when `prepare` made one and it is empty). For a daemon
    /// started from a shell, and for tests: a systemd service's cgroup goes away with it anyway.
    public func leave() throws(CGroupError) {
        // A group with controllers enabled for its children takes no process (unless it is the
        // hierarchy's root): disable them first where the children's groups were made in it.
        if root == startingGroup { disableEnabledControllers() }
        do {
            try Self.writeText(startingGroup + "/cgroup.procs", "\(getpid())")
        } catch {
            throw .system(error)
        }
        if rmdir(daemonGroup) < 0 && errno != ENOENT { throw .system(SystemError("rmdir(\(daemonGroup))", errno: errno)) }
        if root != startingGroup {
            // Fails while a child's group remains; the controllers then stay enabled above it.
            if rmdir(root) < 0 && errno != ENOENT { throw .system(SystemError("rmdir(\(root))", errno: errno)) }
            disableEnabledControllers()
        }
    }

    private func disableEnabledControllers() {
        for controller in enabledInStartingGroup {
            _ = try? Self.writeText(startingGroup + "/cgroup.subtree_control", "-" + controller.rawValue)
        }
    }

    /// A group name: a plain directory name of letters, digits, '-', '_' and '.', not starting
    /// with '.', at most 200 bytes, and not the daemon's own leaf.
    public static func validate(name: String) throws(CGroupError) {
        if name.isEmpty { throw .invalidName(name, reason: "empty") }
        if name.utf8.count > 200 { throw .invalidName(name, reason: "longer than 200 bytes") }
        if name.hasPrefix(".") { throw .invalidName(name, reason: "starts with '.'") }
        if name == daemonLeaf { throw .invalidName(name, reason: "the daemon's own group") }
        let allowed = name.utf8.allSatisfy { c in
            (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z"))
                || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9"))
                || c == UInt8(ascii: "-") || c == UInt8(ascii: "_") || c == UInt8(ascii: ".")
        }
        if !allowed { throw .invalidName(name, reason: "only letters, digits, '-', '_' and '.' are allowed (no '/')") }
    }
}

// MARK: - Parsing what the kernel reports (pure, tested on their own)

extension CGroupTree {
    /// The cgroup v2 path in /proc/self/cgroup's "0::/path" line.
    static func ownGroupPath(procSelfCgroup text: String) -> String? {
        for line in text.split(separator: "\n") where line.hasPrefix("0::") {
            let path = line.dropFirst(3)
            // A group removed under us reads "/path (deleted)".
            guard path.hasPrefix("/"), !path.hasSuffix(" (deleted)") else { return nil }
            return String(path)
        }
        return nil
    }

    /// One /proc/self/mountinfo line's root, mount point and file system type.
    static func parseMountLine(_ line: Substring) -> (root: String, mountPoint: String, fstype: String)? {
        let fields = line.split(separator: " ", omittingEmptySubsequences: false)
        // id parent major:minor root mount-point options [optional fields...] - fstype source super-options
        guard fields.count >= 7, let separator = fields.firstIndex(of: "-"), separator >= 6,
              separator + 1 < fields.count else { return nil }
        return (unescape(fields[3]), unescape(fields[4]), String(fields[separator + 1]))
    }

    /// The cgroup2 mount whose root holds `ownPath`, /sys/fs/cgroup first (a hybrid host also
    /// mounts one at /sys/fs/cgroup/unified).
    static func unifiedMount(mountinfo text: String, ownPath: String) -> (root: String, mountPoint: String)? {
        let candidates = text.split(separator: "\n").compactMap(parseMountLine).filter { mount in
            mount.fstype == "cgroup2"
                && (mount.root == "/" || ownPath == mount.root || ownPath.hasPrefix(mount.root + "/"))
        }
        let chosen = candidates.first { $0.mountPoint == "/sys/fs/cgroup" } ?? candidates.first
        return chosen.map { ($0.root, $0.mountPoint) }
    }

    /// The controllers /proc/cgroups shows attached to a cgroup v1 hierarchy (a nonzero
    /// hierarchy id), which cgroup v2 then cannot use.
    static func controllersBoundToV1(_ text: String) -> Set<String> {
        var bound: Set<String> = []
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let fields = line.split(whereSeparator: \.isWhitespace)
            if fields.count >= 2, let hierarchy = Int(fields[1]), hierarchy != 0 { bound.insert(String(fields[0])) }
        }
        return bound
    }

    /// mountinfo escapes space, tab, newline and backslash as \ooo.
    static func unescape(_ field: Substring) -> String {
        let utf8 = Array(field.utf8)
        var bytes: [UInt8] = []
        var i = 0
        while i < utf8.count {
            if utf8[i] == UInt8(ascii: "\\"), i + 3 < utf8.count {
                let digits = utf8[(i + 1)...(i + 3)].map { Int($0) - Int(UInt8(ascii: "0")) }
                if digits.allSatisfy({ (0...7).contains($0) }), case let value = digits[0] * 64 + digits[1] * 8 + digits[2], value <= 255 {
                    bytes.append(UInt8(value))
                    i += 4
                    continue
                }
            }
            bytes.append(utf8[i])
            i += 1
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func readText(_ path: String) throws(SystemError) -> String {
        let file = try FileDescriptor.open(path, flags: O_RDONLY)
        return String(decoding: try file.readAll(limit: 1 << 20), as: UTF8.self)
    }

    /// One write(2) of `text`: a cgroup file takes a value per write.
    static func writeText(_ path: String, _ text: String) throws(SystemError) {
        let file = try FileDescriptor.open(path, flags: O_WRONLY)
        let bytes = Array(text.utf8)
        _ = try syscall("write(\(path), \"\(text)\")") { bytes.withUnsafeBytes { write(file.rawValue, $0.baseAddress, $0.count) } }
    }

    static func makeDirectory(_ path: String) throws(SystemError) {
        if mkdir(path, 0o755) < 0 && errno != EEXIST { throw SystemError("mkdir(\(path))", errno: errno) }
    }
}

/// One child's cgroup v2 group, held open: the directory descriptor `ChildProcess.spawn` starts
/// a child inside (CLONE_INTO_CGROUP), and what the kernel counts for the group.
///
/// To tell why a child died: read `oomKills()` before spawning it; when it ends killed by
/// SIGKILL and the count went up, the kernel's OOM killer killed it at the group's memory.max.
///
/// A class rather than a ~Copyable struct: the supervisor keeps one per child across restarts,
/// in optionals and closures, and reads it from the thread that reaps the child. The directory
/// descriptor is still an owned `FileDescriptor`, closed when the last reference goes. Immutable,
/// hence Sendable.
public final class CGroup: Sendable {
    /// The group's name under the daemon's tree.
    public let name: String
    /// The group's directory, e.g. /sys/fs/cgroup/system.slice/bulkhead.service/switch.
    public let path: String
    /// The group's directory opened O_PATH | O_DIRECTORY.
    public let descriptor: FileDescriptor

    init(name: String, path: String, descriptor: consuming FileDescriptor) {
        self.name = name
        self.path = path
        self.descriptor = descriptor
    }

    /// What memory.events and pids.events count; a controller not enabled counts zero.
    public func events() throws(CGroupError) -> CGroupEvents {
        var events = CGroupEvents()
        if let memory = try readOptional("memory.events") {
            let values = Self.keyedValues(memory)
            events.memoryMax = values["max"] ?? 0
            events.oom = values["oom"] ?? 0
            events.oomKills = values["oom_kill"] ?? 0
        }
        if let pids = try readOptional("pids.events") {
            events.pidsMax = Self.keyedValues(pids)["max"] ?? 0
        }
        return events
    }

    /// Processes the OOM killer killed in this group (memory.events oom_kill).
    public func oomKills() throws(CGroupError) -> UInt64 { try events().oomKills }

    /// The group's memory use in bytes (memory.current).
    public func memoryCurrent() throws(CGroupError) -> UInt64 { try readNumber("memory.current") }

    /// Processes and threads in the group (pids.current).
    public func pidsCurrent() throws(CGroupError) -> UInt64 { try readNumber("pids.current") }

    /// The processes in the group (cgroup.procs).
    public func processes() throws(CGroupError) -> [Int32] {
        try read("cgroup.procs").split(separator: "\n").compactMap { Int32($0) }
    }

    /// The limits the group's files hold now: "max" reads as nil, and cpu.weight always has a
    /// value (100 unless set).
    public func limits() throws(CGroupError) -> CGroupLimits {
        var limits = CGroupLimits()
        if let memory = try readOptional("memory.max") {
            limits.memoryMaxBytes = UInt64(memory.trimmingWhitespace)
        }
        if let weight = try readOptional("cpu.weight") { limits.cpuWeight = Int(weight.trimmingWhitespace) }
        if let max = try readOptional("cpu.max") {
            let fields = max.split(whereSeparator: \.isWhitespace)
            if fields.count == 2, let quota = Int(fields[0]), let period = Int(fields[1]), period > 0 {
                limits.cpuQuotaPercent = quota * 100 / period
            }
        }
        if let pids = try readOptional("pids.max") { limits.pidsMax = Int(pids.trimmingWhitespace) }
        return limits
    }

    /// Kills every process in the group with SIGKILL (cgroup.kill, Linux 5.14): what a child
    /// forked stays no longer than the child.
    public func killAll() throws(CGroupError) {
        do { try writeFile("cgroup.kill", "1") } catch { throw .system(error) }
    }

    /// Writes every limit of the enabled controllers.
    func write(_ limits: CGroupLimits, controllers: Set<CGroupController>) throws(SystemError) {
        if controllers.contains(.memory) {
            try writeFile("memory.max", limits.memoryMaxBytes.map(String.init) ?? "max")
            // Absent without swap accounting, where the kernel charges no swap to anyone.
            do { try writeFile("memory.swap.max", limits.memoryMaxBytes == nil ? "max" : "0") } catch where error.errno == ENOENT {}
        }
        if controllers.contains(.cpu) {
            try writeFile("cpu.weight", String(limits.cpuWeight ?? 100))
            let period = CGroupLimits.cpuPeriodMicroseconds
            // validate() keeps the percentage at 100_000 or below: no overflow.
            try writeFile("cpu.max", limits.cpuQuotaPercent.map { "\($0 * period / 100) \(period)" } ?? "max \(period)")
        }
        if controllers.contains(.pids) {
            try writeFile("pids.max", limits.pidsMax.map(String.init) ?? "max")
        }
    }

    private func open(_ file: String, _ flags: Int32) throws(SystemError) -> FileDescriptor {
        let fd = try syscall("openat(\(path)/\(file))") { openat(descriptor.rawValue, file, flags | O_CLOEXEC) }
        return FileDescriptor(taking: fd)
    }

    private func writeFile(_ file: String, _ text: String) throws(SystemError) {
        let handle = try open(file, O_WRONLY)
        let bytes = Array(text.utf8)
        _ = try syscall("write(\(path)/\(file), \"\(text)\")") { bytes.withUnsafeBytes { Glibc.write(handle.rawValue, $0.baseAddress, $0.count) } }
    }

    private func read(_ file: String) throws(CGroupError) -> String {
        do {
            let handle = try open(file, O_RDONLY)
            return String(decoding: try handle.readAll(limit: 1 << 20), as: UTF8.self)
        } catch {
            throw .system(error)
        }
    }

    /// The file's text, or nil when the file is absent (its controller is not enabled).
    private func readOptional(_ file: String) throws(CGroupError) -> String? {
        do { return try read(file) } catch .system(let error) where error.errno == ENOENT { return nil }
    }

    private func readNumber(_ file: String) throws(CGroupError) -> UInt64 {
        let text = try read(file)
        guard let value = UInt64(text.trimmingWhitespace) else {
            throw .system(SystemError("parse(\(path)/\(file): \"\(text.trimmingWhitespace)\")", errno: EINVAL))
        }
        return value
    }

    /// "key value" lines (memory.events, pids.events).
    static func keyedValues(_ text: String) -> [String: UInt64] {
        var values: [String: UInt64] = [:]
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ")
            if fields.count == 2, let value = UInt64(fields[1]) { values[String(fields[0])] = value }
        }
        return values
    }
}

extension StringProtocol {
    fileprivate var trimmingWhitespace: String {
        String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }
}
