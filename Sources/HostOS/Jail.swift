import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// The jail of a per-tenant child (the block server): in order, `isolate(mountPoint:)` while
/// still root and single-threaded, `dropPrivileges(uid:gid:)`, then `restrictSystemCalls(_:)`
/// before the first thread starts. Each throws, naming the step, rather than leave the process
/// half-jailed.
public enum Jail {
    /// Moves this process into new mount, network, IPC and UTS namespaces whose root is an
    /// empty, read-only tmpfs: no file of the host can be opened afterwards, no network reached,
    /// no System V IPC object of the host seen. Sockets bound and files opened before keep
    /// working: they belong to the namespaces and mounts they were created in.
    ///
    /// `mountPoint` is any existing directory: the tmpfs is mounted on it inside the new (private)
    /// mount namespace only, then becomes the root; the host never sees that mount.
    ///
    /// Refuses to run with a second thread (namespaces and the root would change for this
    /// thread only) or with a directory descriptor open (`fchdir` or `openat` through it would
    /// lead back out of the new root). Sets TZ (when unset) so that local time keeps the host's
    /// zone once /etc/localtime is out of reach. Needs CAP_SYS_ADMIN.
    /// The corresponding C functions are `unshare`, `mount` and `pivot_root`.
    public static func isolate(mountPoint: String) throws(JailError) {
        let threads = bh_thread_count()
        if threads < 0 { throw .failed(SystemError("count threads (/proc/self/task)", negated: threads)) }
        guard threads == 1 else { throw .notSingleThreaded(threads: Int(threads)) }
        var directory: Int32 = -1
        let r = bh_first_directory_fd(&directory)
        if r < 0 { throw .failed(SystemError("list open descriptors (/proc/self/fd)", negated: r)) }
        if directory >= 0 { throw .directoryOpen(fd: directory, path: linkTarget("/proc/self/fd/\(directory)")) }
        // glibc re-reads /etc/localtime for each local time unless TZ names the zone; once read
        // with TZ set, it keeps it. Without this, log timestamps would turn to UTC in the jail.
        if getenv("TZ") == nil { setenv("TZ", ":/etc/localtime", 1) }
        tzset()
        var step: UnsafePointer<CChar>? = nil
        let isolated = bh_jail_isolate(mountPoint, &step)
        if isolated < 0 { throw .failed(SystemError(stepName(step, "isolation"), negated: isolated)) }
    }

    /// Makes this process (every thread) `uid`/`gid` with no supplementary groups, no
    /// capabilities and no way to gain privileges again. Call it once everything the process
    /// needs is open: afterwards it can open no root-owned file (volume files are root's, 0600).
    public static func dropPrivileges(uid: UInt32, gid: UInt32) throws(JailError) {
        var step: UnsafePointer<CChar>? = nil
        let r = bh_jail(uid, gid, &step)
        if r < 0 { throw .failed(SystemError(stepName(step, "privilege drop"), negated: r)) }
    }

    /// What a jailed process may take from the host (see `limitResources`).
    public struct ResourceLimits: Sendable, Equatable {
        /// Tasks (threads) of the process's uid: RLIMIT_NPROC.
        public var threads: Int

        /// RLIMIT_NPROC for every jailed process. The kernel counts it over every task of the
        /// uid, not of the process: all tenants' switches share the switch uid, a tenant's block
        /// server and its VMMs share the tenant's, and io_uring's io-wq workers count too. A
        /// limit sized for one process made the kernel refuse io-wq workers once a few switches
        /// ran (seen with three daemons on one machine), and io_uring then cancelled the queued
        /// reads (ECANCELED). So the limit bounds runaway thread creation of the uid as a whole,
        /// far above what its processes use together (each 4 to 20 threads, plus io-wq
        /// workers); each child's own count is bounded by its cgroup's pids.max where cgroups
        /// are in use.
        public static let uidTasks = 1000
        /// Open descriptors: RLIMIT_NOFILE.
        public var files: Int
        /// The size no file may be grown past: RLIMIT_FSIZE.
        public var fileBytes: UInt64

        public init(threads: Int, files: Int, fileBytes: UInt64) {
            self.threads = threads
            self.files = files
            self.fileBytes = fileBytes
        }
    }

    /// Caps what the process can take from the host, soft and hard limits alike (only root
    /// could raise a hard limit again): `threads` tasks of its uid (RLIMIT_NPROC counts every
    /// thread of every process of the real uid: with a uid per tenant, this server's alone),
    /// `files` open descriptors, files grown to at most `fileBytes` (SIGXFSZ is ignored, so a
    /// write past it fails with EFBIG instead of killing the process), and no core dumps. Call
    /// it while still root, before `dropPrivileges`. The corresponding C function is `setrlimit`.
    public static func limitResources(_ limits: ResourceLimits) throws(JailError) {
        func limit(_ resource: __rlimit_resource, _ name: String, _ value: rlim_t) throws(JailError) {
            var bound = rlimit(rlim_cur: value, rlim_max: value)
            if setrlimit(__rlimit_resource_t(resource.rawValue), &bound) < 0 { throw .failed(SystemError("setrlimit(\(name), \(value))", errno: errno)) }
        }
        try limit(__RLIMIT_NPROC, "RLIMIT_NPROC", rlim_t(max(0, limits.threads)))
        try limit(RLIMIT_NOFILE, "RLIMIT_NOFILE", rlim_t(max(0, limits.files)))
        let ignored = bh_ignore_file_size_signal()
        if ignored < 0 { throw .failed(SystemError("signal(SIGXFSZ, SIG_IGN)", negated: ignored)) }
        try limit(RLIMIT_FSIZE, "RLIMIT_FSIZE", rlim_t(limits.fileBytes))
        try limit(RLIMIT_CORE, "RLIMIT_CORE", 0)
    }

    /// A seccomp-BPF allowlist: the system calls a kind of process makes once it is jailed.
    public enum SystemCallProfile: Sendable {
        /// `bulkhead block-server` serving its volumes (the list is in CLinux.c).
        case blockServer
        /// `bulkhead switch` forwarding frames (the list is in CLinux.c).
        case `switch`
        /// `bulkhead partition` running its guest (the list is in CLinux.c).
        case partition
        /// Stacked by a partition's vCPU thread on `.partition`, for the calling thread only:
        /// no new threads, no paths, no descriptor tricks.
        case vcpuThread
    }

    /// Installs `profile` on every thread (`.vcpuThread`: on the calling thread, stacked on what
    /// it has): any other system call, or one made with the arguments the profile excludes, kills
    /// the process (SECCOMP_RET_KILL_PROCESS). Threads created afterwards inherit it. Call it after `dropPrivileges` (which sets no_new_privs).
    /// The corresponding C function is `seccomp(SECCOMP_SET_MODE_FILTER)`.
    public static func restrictSystemCalls(_ profile: SystemCallProfile) throws(JailError) {
        var step: UnsafePointer<CChar>? = nil
        let r: Int32
        switch profile {
        case .blockServer: r = bh_seccomp_install(BH_SECCOMP_BLOCK_SERVER, getpid(), &step)
        case .switch: r = bh_seccomp_install(BH_SECCOMP_SWITCH, getpid(), &step)
        case .partition: r = bh_seccomp_install(BH_SECCOMP_PARTITION, getpid(), &step)
        case .vcpuThread: r = bh_seccomp_install(BH_SECCOMP_VCPU_THREAD, getpid(), &step)
        }
        if r < 0 { throw .failed(SystemError(stepName(step, "seccomp"), negated: r)) }
    }

    private static func stepName(_ step: UnsafePointer<CChar>?, _ fallback: String) -> String {
        guard let step, step.pointee != 0 else { return fallback }
        return String(cString: step)
    }

    private static func linkTarget(_ path: String) -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buffer, buffer.count - 1)
        guard n > 0 else { return "?" }
        return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// Why a jail could not be set up. The process must not go on serving.
public enum JailError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A step failed: the system call and its errno.
    case failed(SystemError)
    /// Another thread exists: it would keep the host's namespaces and root.
    case notSingleThreaded(threads: Int)
    /// A descriptor of a directory is open: it would lead out of the new root.
    case directoryOpen(fd: Int32, path: String)

    public var description: String {
        switch self {
        case .failed(let error): "jail step \(error)"
        case .notSingleThreaded(let threads):
            "jail: the process has \(threads) threads; the namespaces and the root must change while it has one"
        case .directoryOpen(let fd, let path):
            "jail: fd \(fd) is an open directory (\(path)); it would lead out of the new root, so close it first"
        }
    }
}
