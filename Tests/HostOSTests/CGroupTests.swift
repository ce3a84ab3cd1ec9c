import Foundation
@testable import HostOS
import XCTest

/// The daemon's cgroup v2 tree and children spawned into it, on this host's real cgroupfs.
///
/// The tests that limit memory, CPU or pids need a cgroup v2 hierarchy with those controllers
/// (`CGroupTree.prepare()` succeeds) and skip, with its reason, where there is none: a hybrid host
/// like this project's machines keeps them in cgroup v1. The placement tests need only a
/// writable cgroup2 mount, which a hybrid host has too (`/sys/fs/cgroup/unified`). Each test
/// moves this process back where it was and removes its groups.
final class CGroupTests: XCTestCase {
    private static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    /// Builds Tests/Tools/cgroup-probe.c once per test run, or takes the one built already at
    /// $BULKHEAD_CGROUP_PROBE (a guest without a compiler: Tests/Tools/cgroup-vm-tests.sh).
    private static let probe: Result<String, Error> = Result {
        if let prebuilt = ProcessInfo.processInfo.environment["BULKHEAD_CGROUP_PROBE"] { return prebuilt }
        let output = NSTemporaryDirectory() + "bulkhead-cgroup-probe-\(getpid())"
        let cc = Process()
        cc.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        cc.arguments = ["cc", "-O1", "-o", output, repository.appendingPathComponent("Tests/Tools/cgroup-probe.c").path]
        try cc.run()
        cc.waitUntilExit()
        guard cc.terminationStatus == 0 else { throw XCTSkip("needs a C compiler (cc) to build the cgroup probe") }
        return output
    }

    /// A group name no other test run uses.
    private func unique(_ name: String) -> String { "bh-test-\(name)-\(getpid())" }

    /// The tree with `controllers`, or a skip that says why there is none here.
    private func preparedTree(_ controllers: Set<CGroupController> = Set(CGroupController.allCases)) throws -> CGroupTree {
        guard getuid() == 0 else { throw XCTSkip("needs root to write cgroupfs") }
        switch CGroupTree.prepare(controllers: controllers) {
        case .success(let tree): return tree
        case .failure(let reason): throw XCTSkip("no usable cgroup v2 tree here: \(reason)")
        }
    }

    // MARK: - Limits held by the kernel (need memory, cpu and pids controllers)

    /// A child that allocates without bound is OOM-killed at its group's memory.max while a child
    /// in a sibling group goes on answering.
    func testARunawayChildIsKilledAtItsMemoryLimitWhileItsSiblingKeepsServing() throws {
        let tree = try preparedTree()
        defer { XCTAssertNoThrow(try tree.leave()) }
        let probe = try Self.probe.get()
        let hogName = unique("hog"), echoName = unique("echo")
        let hogGroup = try tree.group(named: hogName, limits: CGroupLimits(memoryMaxBytes: 32 << 20))
        let echoGroup = try tree.group(named: echoName, limits: CGroupLimits(memoryMaxBytes: 64 << 20))
        defer {
            XCTAssertNoThrow(try tree.removeGroup(named: hogName))
            XCTAssertNoThrow(try tree.removeGroup(named: echoName))
        }

        let echo = try Channel()
        let echoChild = try ChildProcess.spawn(probe, arguments: ["echo"], stdin: echo.childEnd, cgroup: echoGroup)
        echo.closeChildEnd()
        defer { echoChild.signal(SIGKILL); _ = try? echoChild.wait() }
        XCTAssertEqual(try echo.ask("before\n"), "before\n")

        XCTAssertEqual(try hogGroup.oomKills(), 0)
        let hogStdin = try Channel()
        let started = ContinuousClock.now
        let hog = try ChildProcess.spawn(probe, arguments: ["hog"], stdin: hogStdin.childEnd, cgroup: hogGroup)
        // The hog gives up by itself (exit 3) at 512 MiB: a limit that does not hold fails the
        // test instead of taking the host's memory.
        let ending = try hog.wait()
        let elapsed = ContinuousClock.now - started
        XCTAssertEqual(ending, .killed(signal: SIGKILL), "the hog must die by the OOM killer's SIGKILL")
        XCTAssertEqual(try hogGroup.oomKills(), 1)
        XCTAssertGreaterThanOrEqual(try hogGroup.events().oom, 1)
        print("cgroup: the 32 MiB hog was OOM-killed \(elapsed) after its start")

        XCTAssertEqual(try echo.ask("after\n"), "after\n", "the sibling keeps answering after the hog died")
        XCTAssertEqual(try echoGroup.oomKills(), 0)
        XCTAssertLessThan(try echoGroup.memoryCurrent(), 64 << 20)
    }

    /// pids.max holds a fork loop: the child gets pidsMax - 1 children, then EAGAIN.
    func testPidsMaxHoldsAForkLoop() throws {
        let tree = try preparedTree()
        defer { XCTAssertNoThrow(try tree.leave()) }
        let probe = try Self.probe.get()
        let name = unique("forkloop")
        let group = try tree.group(named: name, limits: CGroupLimits(pidsMax: 8))
        let channel = try Channel()
        let child = try ChildProcess.spawn(probe, arguments: ["forkloop"], stdin: channel.childEnd, cgroup: group)
        channel.closeChildEnd()
        defer {
            child.signal(SIGKILL)
            _ = try? child.wait()
            // cgroup.kill takes the grandchildren too; init reaps them, then the group can go.
            try? group.killAll()
            waitUntil(seconds: 10) { (try? group.processes().isEmpty) ?? true }
            XCTAssertNoThrow(try tree.removeGroup(named: name))
        }
        let report = try channel.readLine()
        XCTAssertEqual(report, "7 \(EAGAIN)\n", "7 children (8 with the loop itself), then EAGAIN")
        XCTAssertEqual(try group.pidsCurrent(), 8)
        XCTAssertGreaterThanOrEqual(try group.events().pidsMax, 1)
    }

    /// Limits are written, read back, and changed in place on a group with a live process.
    func testLimitsAreWrittenReadBackAndUpdatedInPlace() throws {
        let tree = try preparedTree()
        defer { XCTAssertNoThrow(try tree.leave()) }
        let probe = try Self.probe.get()
        let name = unique("limits")
        let first = CGroupLimits(memoryMaxBytes: 48 << 20, cpuWeight: 300, cpuQuotaPercent: 150, pidsMax: 20)
        let group = try tree.group(named: name, limits: first)
        defer { XCTAssertNoThrow(try tree.removeGroup(named: name)) }
        XCTAssertEqual(try group.limits(), first)
        XCTAssertEqual(try String(contentsOfFile: group.path + "/cpu.max", encoding: .utf8), "150000 100000\n")
        if FileManager.default.fileExists(atPath: group.path + "/memory.swap.max") {
            XCTAssertEqual(try String(contentsOfFile: group.path + "/memory.swap.max", encoding: .utf8), "0\n")
        }

        let channel = try Channel()
        let child = try ChildProcess.spawn(probe, arguments: ["echo"], stdin: channel.childEnd, cgroup: group)
        channel.closeChildEnd()
        defer { child.signal(SIGKILL); _ = try? child.wait() }
        XCTAssertEqual(try channel.ask("x\n"), "x\n")

        // The same group again, other limits: the running child stays, its limits change.
        let second = CGroupLimits(memoryMaxBytes: nil, cpuWeight: 50, cpuQuotaPercent: nil, pidsMax: 5)
        let again = try tree.group(named: name, limits: second)
        XCTAssertEqual(try again.limits(), second)
        XCTAssertEqual(try String(contentsOfFile: group.path + "/cpu.max", encoding: .utf8), "max 100000\n")
        XCTAssertEqual(try group.processes(), [child.pid])
        XCTAssertEqual(try channel.ask("y\n"), "y\n")
        // No limit at all: every file back to the kernel's default.
        XCTAssertEqual(try tree.group(named: name, limits: CGroupLimits()).limits(), CGroupLimits(cpuWeight: 100))
    }

    // MARK: - Placement (needs only a writable cgroup2 mount)

    /// CLONE_INTO_CGROUP: the child is in its group when it first runs, not moved there later.
    func testAChildStartsInsideItsGroup() throws {
        let tree = try preparedTree([])
        defer { XCTAssertNoThrow(try tree.leave()) }
        let probe = try Self.probe.get()
        let name = unique("placement")
        // As the supervisor holds it: a group, or nil where the host has no cgroup tree.
        let group: CGroup? = try tree.group(named: name, limits: CGroupLimits())
        defer { XCTAssertNoThrow(try tree.removeGroup(named: name)) }

        let channel = try Channel()
        let child = try ChildProcess.spawn(probe, arguments: ["cgroup"], stdin: channel.childEnd, cgroup: group)
        channel.closeChildEnd()
        let line = try channel.readLine()
        XCTAssertEqual(try child.wait(), .exited(status: 0))
        XCTAssertTrue(line.hasPrefix("0::/") && line.hasSuffix("/\(name)\n"), "the child reads its own group: \(line)")
        let relative = String(line.dropFirst(3).dropLast())
        let path = group?.path ?? "none"
        XCTAssertTrue(path.hasSuffix(relative), "\(relative) is \(path)")
        XCTAssertEqual(try group?.processes(), [])

        // This process itself now lives in the daemon's leaf.
        let own = try String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)
        XCTAssertTrue(own.contains("0::") && own.split(separator: "\n").contains { $0.hasPrefix("0::") && $0.hasSuffix("/daemon") }, own)
    }

    /// The cgroup spawn path hands the child exactly what posix_spawn does: descriptors 0-2 only
    /// (a descriptor without close-on-exec included), the caller's signal mask, and ignored
    /// signals still ignored.
    func testSpawningIntoAGroupKeepsPosixSpawnSemantics() throws {
        let tree = try preparedTree([])
        defer { XCTAssertNoThrow(try tree.leave()) }
        let probe = try Self.probe.get()
        let name = unique("semantics")
        let group = try tree.group(named: name, limits: CGroupLimits())
        defer { XCTAssertNoThrow(try tree.removeGroup(named: name)) }

        // A descriptor some library left without close-on-exec, a blocked and an ignored signal.
        let leaked = dup(2)
        defer { close(leaked) }
        var usr1 = sigset_t(), previousMask = sigset_t()
        sigemptyset(&usr1)
        sigaddset(&usr1, SIGUSR1)
        pthread_sigmask(SIG_BLOCK, &usr1, &previousMask)
        defer { pthread_sigmask(SIG_SETMASK, &previousMask, nil) }
        let previousUSR2 = signal(SIGUSR2, SIG_IGN)
        defer { signal(SIGUSR2, previousUSR2) }

        func state(inGroup: Bool) throws -> String {
            let channel = try Channel()
            let child = inGroup
                ? try ChildProcess.spawn(probe, arguments: ["state"], stdin: channel.childEnd, cgroup: group)
                : try ChildProcess.spawn(probe, arguments: ["state"], stdin: channel.childEnd, cgroup: nil)
            channel.closeChildEnd()
            let text = try channel.readAll()
            XCTAssertEqual(try child.wait(), .exited(status: 0))
            return text
        }
        let spawned = try state(inGroup: false), cloned = try state(inGroup: true)
        XCTAssertEqual(cloned, spawned)
        XCTAssertTrue(cloned.hasPrefix("fds: 0 1 2\n"), cloned)
        let mask = (try? XCTUnwrap(cloned.split(separator: "\n").first { $0.hasPrefix("SigBlk:") })) ?? ""
        let ignored = (try? XCTUnwrap(cloned.split(separator: "\n").first { $0.hasPrefix("SigIgn:") })) ?? ""
        let blockedBits = UInt64(mask.dropFirst(7).trimmingCharacters(in: .whitespaces), radix: 16) ?? 0
        let ignoredBits = UInt64(ignored.dropFirst(7).trimmingCharacters(in: .whitespaces), radix: 16) ?? 0
        XCTAssertNotEqual(blockedBits & (1 << (UInt64(SIGUSR1) - 1)), 0, "SIGUSR1 stays blocked: \(mask)")
        XCTAssertNotEqual(ignoredBits & (1 << (UInt64(SIGUSR2) - 1)), 0, "SIGUSR2 stays ignored: \(ignored)")
    }

    /// A failed execve is thrown by spawn, and the failed child is reaped, not left in the group.
    func testAFailedExecIsThrownAndLeavesNothingInTheGroup() throws {
        let tree = try preparedTree([])
        defer { XCTAssertNoThrow(try tree.leave()) }
        let name = unique("noexec")
        let group = try tree.group(named: name, limits: CGroupLimits())
        defer { XCTAssertNoThrow(try tree.removeGroup(named: name)) }
        XCTAssertThrowsError(try ChildProcess.spawn("/nonexistent/bulkhead-child", arguments: [], stdin: 0, cgroup: group)) { error in
            XCTAssertEqual((error as? SystemError)?.errno, ENOENT, "\(error)")
        }
        XCTAssertEqual(try group.processes(), [])
    }

    /// A limit on a controller the tree did not enable is refused, not silently dropped.
    func testALimitOnAControllerNotEnabledIsRefused() throws {
        let tree = try preparedTree([])
        defer { XCTAssertNoThrow(try tree.leave()) }
        do {
            _ = try tree.group(named: unique("refused"), limits: CGroupLimits(memoryMaxBytes: 1 << 30))
            XCTFail("a memory limit without the memory controller must be refused")
        } catch {
            XCTAssertEqual(error, .controllerNotEnabled(.memory, group: unique("refused")))
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: tree.root + "/" + unique("refused")))
    }

    // MARK: - What this host offers, named

    /// Where prepare fails it names what is missing: on a hybrid host, the controllers cgroup v1
    /// holds. Where it succeeds, the layout is the one the documentation promises.
    func testPrepareNamesWhatIsMissingOrMakesTheDelegatedLayout() throws {
        guard getuid() == 0 else { throw XCTSkip("needs root to write cgroupfs") }
        let v1 = CGroupTree.controllersBoundToV1((try? String(contentsOfFile: "/proc/cgroups", encoding: .utf8)) ?? "")
        switch CGroupTree.prepare() {
        case .success(let tree):
            defer { XCTAssertNoThrow(try tree.leave()) }
            XCTAssertTrue(v1.isDisjoint(with: ["memory", "cpu", "pids"]))
            XCTAssertEqual(tree.daemonGroup, tree.root + "/daemon")
            let procs = try String(contentsOfFile: tree.daemonGroup + "/cgroup.procs", encoding: .utf8)
            XCTAssertTrue(procs.split(separator: "\n").contains("\(getpid())"), procs)
            let enabled = try String(contentsOfFile: tree.root + "/cgroup.subtree_control", encoding: .utf8)
            for controller in ["memory", "cpu", "pids"] { XCTAssertTrue(enabled.contains(controller), enabled) }
        case .failure(let reason):
            print("cgroup: prepare() here: \(reason)")
            let boundHere = CGroupController.allCases.filter { v1.contains($0.rawValue) }
            if !boundHere.isEmpty {
                guard case .controllersMissing(_, let missing, let boundToV1) = reason else {
                    return XCTFail("controllers in cgroup v1 must be named: \(reason)")
                }
                XCTAssertEqual(boundToV1, boundHere)
                XCTAssertEqual(Set(missing).intersection(boundHere), Set(boundHere))
                XCTAssertTrue(reason.description.contains("cgroup v1"), reason.description)
            }
            // Nothing moved: this process is where it started.
            let own = try String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)
            XCTAssertFalse(own.contains("/daemon\n"), own)
        }
    }

    // MARK: - Parsing and validation (no cgroupfs needed)

    func testParsesTheHostsCgroupAndMountTables() {
        let hybrid = "4:memory:/process_api/530e\n1:cpu:/\n0::/\n"
        XCTAssertEqual(CGroupTree.ownGroupPath(procSelfCgroup: hybrid), "/")
        XCTAssertEqual(CGroupTree.ownGroupPath(procSelfCgroup: "0::/system.slice/bulkhead.service\n"), "/system.slice/bulkhead.service")
        XCTAssertNil(CGroupTree.ownGroupPath(procSelfCgroup: "4:memory:/\n"))
        XCTAssertNil(CGroupTree.ownGroupPath(procSelfCgroup: "0::/gone (deleted)\n"))

        let mountinfo = """
        30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
        40 30 0:35 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
        41 30 0:36 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
        """
        XCTAssertTrue(CGroupTree.unifiedMount(mountinfo: mountinfo, ownPath: "/").map { $0 == ("/", "/sys/fs/cgroup/unified") } ?? false)
        let both = mountinfo + "\n50 25 0:40 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
        XCTAssertTrue(CGroupTree.unifiedMount(mountinfo: both, ownPath: "/a").map { $0 == ("/", "/sys/fs/cgroup") } ?? false)
        // A container's view: the mount's root is its own group, with a space escaped.
        let container = "60 50 0:41 /docker/a\\040b /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
        XCTAssertTrue(CGroupTree.unifiedMount(mountinfo: container, ownPath: "/docker/a b/x").map { $0 == ("/docker/a b", "/sys/fs/cgroup") } ?? false)
        XCTAssertNil(CGroupTree.unifiedMount(mountinfo: container, ownPath: "/elsewhere"))
        XCTAssertNil(CGroupTree.unifiedMount(mountinfo: "41 30 0:36 / /sys/fs/cgroup/memory rw - cgroup cgroup rw\n", ownPath: "/"))
        XCTAssertNil(CGroupTree.parseMountLine("garbage"))
        XCTAssertEqual(CGroupTree.unescape("a\\134b\\0"), "a\\b\\0")

        let procCgroups = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t1\t1\nmemory\t4\t59\t1\nhugetlb\t0\t1\t1\n"
        XCTAssertEqual(CGroupTree.controllersBoundToV1(procCgroups), ["cpu", "memory"])
        XCTAssertEqual(CGroup.keyedValues("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\nbad\n"),
                       ["low": 0, "high": 0, "max": 12, "oom": 1, "oom_kill": 1])
    }

    func testNamesAndLimitsAreValidatedBeforeAnythingIsWritten() {
        for bad in ["", "..", ".", "a/b", "../x", "daemon", ".hidden", "a b", "x\0y", String(repeating: "a", count: 201)] {
            XCTAssertThrowsError(try CGroupTree.validate(name: bad), "\(bad.debugDescription) must be refused")
        }
        for good in ["switch-blue", "block-blue", "partition-blue-guest", "a.b_c"] {
            XCTAssertNoThrow(try CGroupTree.validate(name: good))
        }
        XCTAssertNotNil(CGroupLimits(cpuWeight: 0).validate())
        XCTAssertNotNil(CGroupLimits(cpuWeight: 10_001).validate())
        XCTAssertNotNil(CGroupLimits(cpuQuotaPercent: 0).validate())
        XCTAssertNotNil(CGroupLimits(cpuQuotaPercent: Int.max).validate())
        XCTAssertNotNil(CGroupLimits(pidsMax: 0).validate())
        XCTAssertNil(CGroupLimits(memoryMaxBytes: 1 << 30, cpuWeight: 1, cpuQuotaPercent: 200, pidsMax: 1).validate())
        XCTAssertEqual(CGroupLimits(memoryMaxBytes: 1, cpuQuotaPercent: 5).controllers, [.memory, .cpu])
    }

    // MARK: - Helpers

    private func waitUntil(seconds: Double, _ condition: () -> Bool) {
        let deadline = Date().addingTimeInterval(seconds)
        while !condition() && Date() < deadline { usleep(10_000) }
    }
}

/// A socket pair: the child's end becomes its stdin (read and written), the test keeps the other.
private final class Channel {
    let testEnd: Int32
    private(set) var childEnd: Int32

    init() throws {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw SystemError("socketpair", errno: errno)
        }
        testEnd = fds[0]
        childEnd = fds[1]
    }

    deinit {
        close(testEnd)
        closeChildEnd()
    }

    func closeChildEnd() {
        if childEnd >= 0 { close(childEnd) }
        childEnd = -1
    }

    /// Sends `line`, returns the line that comes back.
    func ask(_ line: String) throws -> String {
        let bytes = Array(line.utf8)
        guard write(testEnd, bytes, bytes.count) == bytes.count else { throw SystemError("write", errno: errno) }
        return try readLine()
    }

    /// One line, waiting at most `seconds`.
    func readLine(seconds: Double = 10) throws -> String {
        var line: [UInt8] = []
        let deadline = Date().addingTimeInterval(seconds)
        while line.last != UInt8(ascii: "\n") {
            guard let byte = try readByte(until: deadline) else { break }
            line.append(byte)
        }
        return String(decoding: line, as: UTF8.self)
    }

    /// Everything until end of file, waiting at most `seconds`.
    func readAll(seconds: Double = 10) throws -> String {
        var bytes: [UInt8] = []
        let deadline = Date().addingTimeInterval(seconds)
        while let byte = try readByte(until: deadline) { bytes.append(byte) }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// A byte, nil at end of file; throws at the deadline.
    private func readByte(until deadline: Date) throws -> UInt8? {
        while true {
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { throw SystemError("read (no answer before the deadline)", errno: ETIMEDOUT) }
            var poller = pollfd(fd: testEnd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&poller, 1, Int32(left * 1000) + 1)
            if ready < 0 && errno != EINTR { throw SystemError("poll", errno: errno) }
            if ready <= 0 { continue }
            var byte: UInt8 = 0
            let n = read(testEnd, &byte, 1)
            if n == 1 { return byte }
            if n == 0 { return nil }
            if errno != EINTR && errno != EAGAIN { throw SystemError("read", errno: errno) }
        }
    }
}
