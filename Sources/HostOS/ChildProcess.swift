import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// A child process started with nothing of this process's but what it is handed: its stdin, the
/// standard output and error it inherits, and the caller's environment. Every other descriptor is
/// closed in the child, so a jailed child holds no channel back into its parent that the parent
/// did not give it (Foundation's `Process` leaves one of its own sockets open in each child).
public struct ChildProcess: Sendable {
    public let pid: Int32

    /// How a child ended.
    public enum Ending: Sendable, Equatable {
        case exited(status: Int32)
        case killed(signal: Int32)
    }

    /// Starts `executable` with `arguments` (argv[1...]) and `stdin` as its standard input.
    ///
    /// With a `cgroup`, the child starts inside that group (clone3 with CLONE_INTO_CGROUP): it is
    /// charged to the group's limits from its first instruction, before it could allocate
    /// anything outside them, and no window exists in which it runs unlimited. The child sees
    /// the same descriptors, signal mask and dispositions either way. A failed `execve` (a
    /// missing or non-executable file) is thrown here in both cases.
    ///
    /// The corresponding C functions are `posix_spawn` and, with a cgroup, `clone3` and `execve`.
    public static func spawn(_ executable: String, arguments: [String], stdin: Int32,
                             cgroup: CGroup? = nil) throws(SystemError) -> ChildProcess {
        try spawn(executable, arguments: arguments, stdin: stdin, cgroupDescriptor: cgroup?.descriptor.rawValue)
    }

    private static func spawn(_ executable: String, arguments: [String], stdin: Int32,
                              cgroupDescriptor: Int32?) throws(SystemError) -> ChildProcess {
        let argv = ([executable] + arguments).map { strdup($0) }
        defer { for pointer in argv { free(pointer) } }
        var pid: Int32 = 0
        if let cgroupDescriptor {
            let r = (argv + [nil]).withUnsafeBufferPointer { bh_spawn_in_cgroup(executable, $0.baseAddress, stdin, cgroupDescriptor, &pid) }
            if r < 0 { throw SystemError("clone3(CLONE_INTO_CGROUP)+execve(\(executable))", negated: r) }
        } else {
            let r = (argv + [nil]).withUnsafeBufferPointer { bh_spawn(executable, $0.baseAddress, stdin, &pid) }
            if r < 0 { throw SystemError("posix_spawn(\(executable))", negated: r) }
        }
        return ChildProcess(pid: pid)
    }

    /// Waits until the child ends and reaps it. Blocks the calling thread.
    /// The corresponding C function is `waitpid`.
    public func wait() throws(SystemError) -> Ending {
        var exited: Int32 = 0, code: Int32 = 0
        let r = bh_wait_child(pid, &exited, &code)
        if r < 0 { throw SystemError("waitpid(\(pid))", negated: r) }
        return exited == 1 ? .exited(status: code) : .killed(signal: code)
    }

    /// Sends `signal` to the child. The corresponding C function is `kill`.
    public func signal(_ signal: Int32) {
        _ = kill(pid, signal)
    }
}

extension ChildProcess {
    /// The path of executable `name` in the directory of this process's own executable
    /// (`/proc/self/exe`): how `bulkhead` finds `bulkhead-vmm`. The corresponding C function is
    /// `readlink`.
    public static func sibling(_ name: String) throws(SystemError) -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = try syscall("readlink(/proc/self/exe)") { readlink("/proc/self/exe", &buffer, buffer.count - 1) }
        let own = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard let slash = own.lastIndex(of: "/") else { return name }
        return String(own[...slash]) + name
    }

    /// Replaces this process with `executable`, passing `arguments` (argv[1...]) and the
    /// environment; returns only by throwing. The corresponding C function is `execv`.
    public static func exec(_ executable: String, arguments: [String]) throws(SystemError) -> Never {
        let argv = ([executable] + arguments).map { strdup($0) }
        defer { for pointer in argv { free(pointer) } }
        _ = (argv + [nil]).withUnsafeBufferPointer { execv(executable, $0.baseAddress!) }
        throw SystemError("execv(\(executable))", errno: errno)
    }
}
