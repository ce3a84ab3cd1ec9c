import Foundation
import HostOS
import Logging
// ChildKind and ChildState: the same words the management API reports them in.
import ManagementModel
import ServiceLifecycle
import Synchronization

/// One child process the daemon keeps running: a tenant's switch or block server, or a partition.
struct ChildSpec: Sendable {
    /// Unique among the daemon's children: "switch/blue", "block-server/blue", "partition/blue/guest".
    let key: String
    let kind: ChildKind
    let tenant: String
    /// The partition's id; nil for the other kinds.
    var partition: String? = nil
    /// What the logs call it ("switch", "block server").
    let name: String
    /// Logged with every line about it (`tenant.id`, ...).
    let metadata: Logger.Metadata
    /// `bulkhead` subcommand and arguments (or the arguments of `executable`).
    let arguments: [String]
    /// The program to run instead of this one (`bulkhead-vmm` for a partition); nil: this executable.
    var executable: String? = nil
    /// Runs on a thread of its own from the child's start until the child's end of the control
    /// socket closes (it exited), with the daemon's end: the switch is handed its ports and sends
    /// counters here. Nil for a child that needs only the lifeline.
    let attach: (@Sendable (borrowing UnixStream, _ pid: Int32) -> Void)?
    /// Whether the child is started again after it ended this way; a child that is not stays
    /// down until it is started again (a partition whose guest powered off).
    var restartsAfter: @Sendable (ChildProcess.Ending) -> Bool = { _ in true }
    /// Runs before every start; a reason refuses the start and leaves the child down (a
    /// partition whose kernel does not match its digest).
    var preflight: (@Sendable () -> String?)? = nil
    /// The limits of its cgroup (`<tree>/<cgroupName>`), where the daemon has a cgroup tree.
    var limits = CGroupLimits()

    /// Its cgroup's name: the key with '-' for '/' ("partition-blue-guest").
    var cgroupName: String { key.replacingOccurrences(of: "/", with: "-") }

    static func key(_ kind: ChildKind, tenant: String, partition: String? = nil) -> String {
        partition.map { "\(kind.rawValue)/\(tenant)/\($0)" } ?? "\(kind.rawValue)/\(tenant)"
    }
}

/// A child's state at one moment. `phase` is never `.starting`: a child is running from its
/// spawn; `.down` is a child its restart policy or preflight keeps down (`lastExit` says which).
struct ChildSnapshot: Sendable {
    let key: String
    let kind: ChildKind
    let tenant: String
    let partition: String?
    let phase: ChildState
    let pid: Int32?
    /// Times it was started.
    let starts: Int
    /// Starts after the first.
    let restarts: Int
    /// How it last ended, in words.
    let lastExit: String?
    /// When it entered this phase.
    let since: Date
}

/// Something the daemon records in the audit log.
enum ChildEvent: Sendable {
    case started(ChildSpec, pid: Int32)
    /// It ended; `ending` nil when it could not be waited for. `requested`: it was asked to stop;
    /// `restarting`: it will be started again.
    case exited(ChildSpec, pid: Int32, ending: ChildProcess.Ending?, description: String, requested: Bool, restarting: Bool)
    /// The preflight refused to start it.
    case refused(ChildSpec, reason: String)
    /// It could not be started at all.
    case failedToStart(ChildSpec, reason: String)
}

/// Runs the daemon's children, restarts one that dies, starts and stops them on request, and
/// stops them all at shutdown. Children are added and removed while it runs (a configuration
/// change); each is supervised by a task of its own.
///
/// Each child's stdin is its end of a SOCK_SEQPACKET socket pair whose other end only this
/// process holds (close-on-exec): when the daemon dies, however it dies, the child reads end of
/// file and stops, so no child outlives it. The same socket carries the child's control messages.
///
/// A child that dies is logged with the reason (exit status, or the signal: SIGSYS is its
/// seccomp policy, SIGKILL an outside kill or the OOM killer) and restarted at once, then after
/// 0.1 s, 0.2 s, ... up to 30 s while it keeps dying; a child that ran for 30 s starts the
/// sequence again. A child whose `restartsAfter` declines the way it ended stays down.
///
/// A child asked to stop (or every child, at shutdown) gets SIGTERM, and SIGKILL if it is still
/// running `stopTimeout` later.
final class ChildSupervisor: Service, Sendable {
    let logger: Logger
    /// How long a child has to stop after SIGTERM before it is killed.
    let stopTimeout: Duration
    private let events: @Sendable (ChildEvent) -> Void
    private let executable: String
    /// The daemon's cgroup v2 tree: each child is started inside a group of its own. Nil where
    /// cgroup v2 is not delegated to the daemon (it said so at start).
    let cgroups: CGroupTree?
    private let slots = Mutex<(byKey: [String: Slot], order: [String], stopping: Bool)>(([:], [], false))
    private let newSlots: AsyncStream<Slot>
    private let newSlotsInput: AsyncStream<Slot>.Continuation

    /// Send and receive buffers of each control socket: the largest message (a statistics
    /// snapshot) must fit.
    static let controlBufferBytes = 8 << 20

    init(logger: Logger, stopTimeout: Duration = .seconds(10), cgroups: CGroupTree? = nil,
         events: @escaping @Sendable (ChildEvent) -> Void = { _ in }) {
        self.logger = logger
        self.cgroups = cgroups
        self.stopTimeout = stopTimeout
        self.events = events
        executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        (newSlots, newSlotsInput) = AsyncStream.makeStream(of: Slot.self)
    }

    /// Supervises `spec` from now on, started at once unless `start` is false. False when a
    /// child with its key exists or shutdown has begun.
    @discardableResult
    func add(_ spec: ChildSpec, start: Bool = true) -> Bool {
        let slot = Slot(spec, running: start)
        let added = slots.withLock { s -> Bool in
            guard !s.stopping, s.byKey[spec.key] == nil else { return false }
            s.byKey[spec.key] = slot
            s.order.append(spec.key)
            return true
        }
        if added { newSlotsInput.yield(slot) }
        return added
    }

    /// Stops the child and forgets it; returns when it has been reaped. False when there is none.
    @discardableResult
    func remove(_ key: String) async -> Bool {
        guard let slot = slot(key) else { return false }
        await stop(slot, removing: true)
        slots.withLock { s in
            s.byKey[key] = nil
            s.order.removeAll { $0 == key }
        }
        if let cgroups {
            do { try cgroups.removeGroup(named: slot.spec.cgroupName) } catch {
                logger.warning("could not remove the cgroup of a removed child", metadata: ["cgroup": "\(slot.spec.cgroupName)", "error": "\(error)"])
            }
        }
        return true
    }

    /// Writes new limits to a child's cgroup: a running child is held to them at once, and
    /// every later start uses them. False when there is no such child.
    @discardableResult
    func setLimits(_ key: String, _ limits: CGroupLimits) -> Bool {
        guard let slot = slot(key) else { return false }
        slot.limits = limits
        if let cgroups {
            do { _ = try cgroups.group(named: slot.spec.cgroupName, limits: limits) } catch {
                logger.error("could not change a child's cgroup limits", metadata: ["cgroup": "\(slot.spec.cgroupName)", "error": "\(error)"])
            }
        }
        return true
    }

    /// Stops the child and keeps it stopped until `start`; returns when it has been reaped.
    @discardableResult
    func stop(_ key: String) async -> Bool {
        guard let slot = slot(key) else { return false }
        await stop(slot, removing: false)
        return true
    }

    /// Starts a stopped or down child (a running one is left alone). False when there is none.
    @discardableResult
    func start(_ key: String) -> Bool {
        guard let slot = slot(key) else { return false }
        slot.want(.run)
        return true
    }

    /// Stops the child, then starts it again.
    @discardableResult
    func restart(_ key: String) async -> Bool {
        guard let slot = slot(key) else { return false }
        await stop(slot, removing: false)
        slot.want(.run)
        return true
    }

    /// Every child's state, in the order they were added.
    func states() -> [ChildSnapshot] {
        let ordered = slots.withLock { s in s.order.compactMap { s.byKey[$0] } }
        return ordered.map { $0.snapshot() }
    }

    private func slot(_ key: String) -> Slot? { slots.withLock { $0.byKey[key] } }

    private func stop(_ slot: Slot, removing: Bool) async {
        guard let pid = slot.want(removing ? .remove : .stop) else {
            await slot.waitIdle()
            return
        }
        // The forced stop: the child had `stopTimeout` to go after SIGTERM.
        let killer = Task { [stopTimeout, logger] in
            try await Task.sleep(for: stopTimeout)
            if slot.kill(pid: pid) {
                logger.error("\(slot.spec.name) did not stop within \(stopTimeout) of SIGTERM; killed it")
            }
        }
        await slot.waitIdle()
        killer.cancel()
    }

    func run() async throws {
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                for await slot in newSlots {
                    group.addTask { await self.supervise(slot) }
                }
            }
        } onGracefulShutdown: {
            let all = self.slots.withLock { s -> [Slot] in
                s.stopping = true
                return Array(s.byKey.values)
            }
            self.newSlotsInput.finish()
            // Every child at once: they stop in parallel, each killed after the timeout.
            Task {
                await withTaskGroup(of: Void.self) { group in
                    for slot in all { group.addTask { await self.stop(slot, removing: true) } }
                }
            }
        }
    }

    private func supervise(_ slot: Slot) async {
        let child = slot.spec
        var logger = self.logger
        for (key, value) in child.metadata { logger[metadataKey: key] = value }
        var backoff: Duration = .zero
        while true {
            guard await slot.waitUntilWanted() else { return }
            if let preflight = child.preflight, let refusal = preflight() {
                logger.error("\(child.name) not started: \(refusal)")
                slot.ended(description: "not started: \(refusal)", down: true)
                events(.refused(child, reason: refusal))
                continue
            }
            let started = ContinuousClock.now
            let outcome = runOnce(child, slot: slot, logger: logger)
            guard let pid = outcome.pid else {
                logger.error("\(child.name) \(outcome.description)")
                events(.failedToStart(child, reason: outcome.description))
                slot.ended(description: outcome.description, down: false)
                backoff = await pause(slot, backoff: backoff)
                continue
            }
            let ending = await outcome.ending.value
            let wanted = slot.isWanted
            let declined = wanted && ending.map { !child.restartsAfter($0) } == true
            var description = ending.map(ChildSupervisor.describe) ?? "could not be waited for"
            if ending == .killed(signal: SIGKILL), outcome.oomKilled() {
                let limit = slot.limits.memoryMaxBytes.map { " (memory.max \($0 >> 20) MiB)" } ?? ""
                description = "killed by the OOM killer: its cgroup's memory limit was reached\(limit)"
            }
            events(.exited(child, pid: pid, ending: ending, description: description, requested: !wanted,
                           restarting: wanted && !declined))
            slot.ended(description: description, down: declined)
            if !wanted {
                logger.info("\(child.name) stopped (\(description))")
                continue
            }
            if declined {
                logger.notice("\(child.name) exited (\(description)); its restart policy keeps it down")
                continue
            }
            if ContinuousClock.now - started > .seconds(30) { backoff = .zero }
            logger.error("\(child.name) exited (\(description)); restarting it", metadata: [
                "restart.after.ms": "\(backoff.components.seconds * 1000 + backoff.components.attoseconds / 1_000_000_000_000_000)",
            ])
            backoff = await pause(slot, backoff: backoff)
        }
    }

    /// Waits out `backoff` (cut short when the child is stopped meanwhile); returns the next one.
    private func pause(_ slot: Slot, backoff: Duration) async -> Duration {
        if backoff > .zero {
            slot.restarting()
            var left = backoff
            while left > .zero && slot.isWanted {
                let step = min(left, .milliseconds(50))
                try? await Task.sleep(for: step)
                left -= step
            }
        }
        return backoff == .zero ? .milliseconds(100) : min(backoff * 2, .seconds(30))
    }

    /// Starts the child once. Returns its pid and a task that ends when it has exited and its
    /// control socket is done, with how it ended; a nil pid when it never started (`description` says why).
    private func runOnce(_ child: ChildSpec, slot: Slot, logger: Logger)
        -> (pid: Int32?, ending: Task<ChildProcess.Ending?, Never>, oomKilled: @Sendable () -> Bool, description: String)
    {
        let none = Task<ChildProcess.Ending?, Never> { nil }
        let daemonEnd: Int32, childEnd: Int32
        do {
            let pair = try UnixStream.pair()
            // A statistics snapshot is one message: the buffers bound the largest.
            try pair.first.setBufferSize(ChildSupervisor.controlBufferBytes)
            try pair.second.setBufferSize(ChildSupervisor.controlBufferBytes)
            (daemonEnd, childEnd) = pair.release()
        } catch {
            return (nil, none, { false }, "could not get a control socket: \(error)")
        }
        let program = child.executable ?? executable
        // The child starts inside its group: nothing it allocates escapes the limit.
        var group: CGroup? = nil
        if let cgroups {
            do { group = try cgroups.group(named: child.cgroupName, limits: slot.limits) } catch {
                _ = close(childEnd)
                _ = close(daemonEnd)
                return (nil, none, { false }, "could not be started: its cgroup \(child.cgroupName) could not be made: \(error)")
            }
        }
        let oomKillsBefore = (try? group?.oomKills()) ?? 0
        let started: ChildProcess
        do {
            started = try ChildProcess.spawn(program, arguments: child.arguments, stdin: childEnd, cgroup: group)
        } catch {
            _ = close(childEnd)
            _ = close(daemonEnd)
            return (nil, none, { false }, "could not be started (\(program)): \(error)")
        }
        // Only the child may hold its end: the daemon's end then sees end of file when it exits.
        _ = close(childEnd)
        slot.started(started)
        events(.started(child, pid: started.pid))
        let pid = started.pid
        let ending = Task<ChildProcess.Ending?, Never> {
            // Reaped on a thread of its own (waitpid blocks).
            async let reaped: ChildProcess.Ending? = withCheckedContinuation { continuation in
                Thread {
                    setCurrentThreadName("wait-\(pid)")
                    continuation.resume(returning: try? started.wait())
                }.start()
            }
            if let attach = child.attach {
                // The thread owns the daemon's end and closes it when `attach` returns (at the
                // child's end of file, or on a failure, which makes the child stop and restart).
                await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                    Thread {
                        setCurrentThreadName("attach-\(pid)")
                        let control = UnixStream(FileDescriptor(taking: daemonEnd))
                        attach(control, pid)
                        done.resume()
                    }.start()
                }
            }
            let ended = await reaped
            if child.attach == nil { _ = close(daemonEnd) }
            return ended
        }
        // The OOM killer's SIGKILL is told from an outside one by the group's oom_kill count.
        let oomKilled: @Sendable () -> Bool = { [group] in
            guard let group, let after = try? group.oomKills() else { return false }
            return after > oomKillsBefore
        }
        return (pid, ending, oomKilled, "started")
    }

    static func describe(_ ending: ChildProcess.Ending) -> String {
        switch ending {
        case .exited(let status): "status \(status)"
        case .killed(SIGSYS): "killed by its seccomp policy: SIGSYS, a system call outside its allowlist"
        case .killed(SIGKILL): "killed by SIGKILL: from outside, or the kernel's OOM killer"
        case .killed(let signal): "killed by signal \(signal)"
        }
    }
}

/// One supervised child: what is wanted of it and where it is. A started process is held here
/// from its start until it has been reaped, so a pid is never signalled after it could have
/// been reused.
private final class Slot: Sendable {
    enum Wish { case run, stop, remove }

    private struct State {
        var wish: Wish
        var process: ChildProcess?
        var phase: ChildState
        var starts = 0
        var lastExit: String?
        var since = Date()
        /// Resumed when the wish changes (the supervising task waits for `.run`).
        var wishWaiter: CheckedContinuation<Void, Never>?
        /// Resumed when no process is running.
        var idleWaiters: [CheckedContinuation<Void, Never>] = []
    }

    let spec: ChildSpec
    private let state: Mutex<State>
    private let currentLimits: Mutex<CGroupLimits>

    init(_ spec: ChildSpec, running: Bool) {
        self.spec = spec
        state = Mutex(State(wish: running ? .run : .stop, phase: .stopped))
        currentLimits = Mutex(spec.limits)
    }

    /// The limits of its cgroup, changed at run time by an apply.
    var limits: CGroupLimits {
        get { currentLimits.withLock { $0 } }
        set { currentLimits.withLock { $0 = newValue } }
    }

    var isWanted: Bool { state.withLock { $0.wish == .run } }

    /// Sets the wish; SIGTERM to the running process when it is no longer wanted. Returns the pid signalled.
    @discardableResult
    func want(_ wish: Wish) -> Int32? {
        let (waiter, process) = state.withLock { s -> (CheckedContinuation<Void, Never>?, ChildProcess?) in
            if s.wish == .remove { return (nil, nil) }
            s.wish = wish
            let waiter = s.wishWaiter
            s.wishWaiter = nil
            return (waiter, wish == .run ? nil : s.process)
        }
        waiter?.resume()
        process?.signal(SIGTERM)
        return process?.pid
    }

    /// SIGKILL to the process if `pid` is still the one running.
    func kill(pid: Int32) -> Bool {
        state.withLock { s in
            guard let process = s.process, process.pid == pid else { return false }
            process.signal(SIGKILL)
            return true
        }
    }

    /// Waits until the child should run (true) or has been removed (false).
    func waitUntilWanted() async -> Bool {
        while true {
            let wish = state.withLock { $0.wish }
            switch wish {
            case .run: return true
            case .remove: return false
            case .stop:
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let resumeNow = state.withLock { s -> Bool in
                        if s.wish != .stop { return true }
                        s.wishWaiter = continuation
                        return false
                    }
                    if resumeNow { continuation.resume() }
                }
            }
        }
    }

    /// Returns when no process of this child is running.
    func waitIdle() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let idle = state.withLock { s -> Bool in
                if s.process == nil { return true }
                s.idleWaiters.append(continuation)
                return false
            }
            if idle { continuation.resume() }
        }
    }

    func started(_ process: ChildProcess) {
        let stopNow = state.withLock { s -> Bool in
            s.process = process
            s.phase = .running
            s.starts += 1
            s.since = Date()
            return s.wish != .run
        }
        // Stopped between the decision to start and the start.
        if stopNow { process.signal(SIGTERM) }
    }

    /// The process was reaped (or never started); `down`: its policy or preflight keeps it down.
    func ended(description: String, down: Bool) {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.process = nil
            s.lastExit = description
            s.since = Date()
            if down && s.wish == .run { s.wish = .stop }
            s.phase = down ? .down : (s.wish == .run ? .restarting : .stopped)
            defer { s.idleWaiters = [] }
            return s.idleWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func restarting() { state.withLock { $0.phase = .restarting } }

    func snapshot() -> ChildSnapshot {
        state.withLock { s in
            ChildSnapshot(key: spec.key, kind: spec.kind, tenant: spec.tenant, partition: spec.partition,
                       phase: s.process != nil ? .running : s.phase, pid: s.process?.pid,
                       starts: s.starts, restarts: max(0, s.starts - 1), lastExit: s.lastExit, since: s.since)
        }
    }
}
