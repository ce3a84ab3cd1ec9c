import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// One queue of a TAP device created with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE.
///
/// Every frame read from or written to the queue starts with a 12-byte virtio-net header
/// (TUNSETVNETHDRSZ). The device is not persistent: it disappears when its last queue closes,
/// wherever its network side has been moved.
public struct TapQueue: ~Copyable, Sendable {
    public let descriptor: FileDescriptor
    /// The interface name the kernel assigned.
    public let interfaceName: String

    public static let vnetHeaderSize: Int32 = 12

    /// Creates the device, or attaches one more queue to it. The corresponding C call is
    /// `ioctl(TUNSETIFF)` on `/dev/net/tun`.
    public init(interfaceName: String) throws(SystemError) {
        var actual = [CChar](repeating: 0, count: 16)
        let flags = bh_IFF_TAP | bh_IFF_NO_PI | bh_IFF_VNET_HDR | bh_IFF_MULTI_QUEUE
        let fd = bh_tap_open(interfaceName, flags, &actual)
        if fd < 0 { throw SystemError("ioctl(TUNSETIFF, \(interfaceName))", negated: fd) }
        let owned = FileDescriptor(taking: fd)
        var headerSize = TapQueue.vnetHeaderSize
        let r = bh_ioctl_ptr(fd, bh_TUNSETVNETHDRSZ, &headerSize)
        if r < 0 { throw SystemError("ioctl(TUNSETVNETHDRSZ, \(interfaceName))", negated: r) }
        // Checksum and TSO offloads: the kernel hands us (and accepts) GSO super-frames of up
        // to 64 KB with a partial checksum, so nothing is segmented or checksummed in userspace.
        let offloads = bh_TUN_F_CSUM | bh_TUN_F_TSO4 | bh_TUN_F_TSO6 | bh_TUN_F_TSO_ECN
        let o = bh_ioctl_int(fd, bh_TUNSETOFFLOAD, UInt(offloads))
        if o < 0 { throw SystemError("ioctl(TUNSETOFFLOAD, \(interfaceName))", negated: o) }
        descriptor = owned
        self.interfaceName = String(decoding: actual.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public var rawValue: Int32 { descriptor.rawValue }
}

/// A named network namespace under /run/netns, as `ip netns` manages them.
public enum NetworkNamespace {
    /// Whether /run/netns/`name` exists.
    public static func exists(_ name: String) -> Bool {
        access("/run/netns/\(name)", F_OK) == 0
    }

    /// Creates the namespace. Throws EEXIST when it already exists.
    public static func create(_ name: String) throws(SystemError) {
        let r = bh_netns_create(name)
        if r < 0 { throw SystemError("create network namespace \(name)", negated: r) }
    }

    /// Unmounts and removes the namespace's name. Processes still inside keep it alive.
    public static func delete(_ name: String) throws(SystemError) {
        let r = bh_netns_delete(name)
        if r < 0 { throw SystemError("delete network namespace \(name)", negated: r) }
    }

    /// Opens the namespace, for `setns` or for moving a link into it.
    public static func open(_ name: String) throws(SystemError) -> FileDescriptor {
        let fd = bh_netns_open(name)
        if fd < 0 { throw SystemError("open network namespace \(name)", negated: fd) }
        return FileDescriptor(taking: fd)
    }
}

/// The exclusive lock that keeps two daemons off one state directory.
public struct StateDirectoryLock: ~Copyable {
    public let descriptor: FileDescriptor
    public let path: String

    public enum Failure: Error, CustomStringConvertible {
        case held(path: String, holder: String)
        case system(SystemError)

        public var description: String {
            switch self {
            case .held(let path, let holder):
                "another bulkhead (\(holder)) already runs on this state directory: \(path) is locked; stop it first"
            case .system(let error): error.description
            }
        }
    }

    /// Takes the lock at `path` without waiting and writes this process's pid into it.
    public init(path: String) throws(Failure) {
        let raw = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        if raw < 0 { throw .system(SystemError("open(\(path))", errno: Glibc.errno)) }
        let fd = FileDescriptor(taking: raw)
        let r = bh_flock_exclusive(fd.rawValue)
        if r == -EWOULDBLOCK {
            var buffer = [UInt8](repeating: 0, count: 32)
            let n = pread(fd.rawValue, &buffer, 32, 0)
            let pid = n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self).trimmingWhitespace : "unknown pid"
            throw .held(path: path, holder: "pid \(pid)")
        }
        if r < 0 { throw .system(SystemError("flock(\(path))", negated: r)) }
        do {
            try fd.truncate(to: 0)
            _ = lseek(fd.rawValue, 0, SEEK_SET)
            try fd.writeAll("\(getpid())\n")
        } catch { throw .system(error) }
        descriptor = fd
        self.path = path
    }
}

extension String {
    var trimmingWhitespace: String {
        String(self.drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }
}

/// File-system helpers for the daemon's state directory.
public enum StateFiles {
    /// Creates `path` and its parents with `mode` where they are missing.
    public static func makeDirectories(_ path: String, mode: mode_t = 0o700) throws(SystemError) {
        var current = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, mode) < 0 && Glibc.errno != EEXIST {
                throw SystemError("mkdir(\(current))", errno: Glibc.errno)
            }
        }
    }

    /// Gives `path` (not following a symbolic link) to `uid` and `gid` with permission bits
    /// `mode`. The corresponding C functions are `lchown` and `chmod`.
    public static func setOwner(_ path: String, uid: UInt32, gid: UInt32, mode: mode_t) throws(SystemError) {
        if lchown(path, uid, gid) < 0 { throw SystemError("lchown(\(path), \(uid), \(gid))", errno: Glibc.errno) }
        if chmod(path, mode) < 0 { throw SystemError("chmod(\(path), \(String(mode, radix: 8)))", errno: Glibc.errno) }
    }

    /// Replaces `path` with `contents` atomically: the text goes to `path + ".tmp"` (mode `mode`,
    /// whatever the umask or a temporary file left by a crash had), then is renamed over `path`,
    /// so a reader sees the old file or the new one, never a torn one. `durable` also flushes the
    /// file before the rename and the directory after it, so a crash of the machine leaves one
    /// of the two as well (a record that must survive; not a status file rewritten every second).
    /// The corresponding C functions are `open`, `fchmod`, `write`, `fsync` and `rename`.
    public static func writeAtomically(_ path: String, contents: String, mode: mode_t = 0o644,
                                       durable: Bool = false) throws(SystemError) {
        let temporary = path + ".tmp"
        do {
            let file = try FileDescriptor.open(temporary, flags: O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, mode: mode)
            try syscall("fchmod(\(temporary))") { fchmod(file.rawValue, mode) }
            try file.writeAll(contents)
            if durable { try syscall("fsync(\(temporary))") { fsync(file.rawValue) } }
            try file.close()
        }
        try syscall("rename(\(temporary), \(path))") { rename(temporary, path) }
        guard durable else { return }
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        let parent = try FileDescriptor.open(directory, flags: O_RDONLY | O_DIRECTORY)
        try syscall("fsync(\(directory))") { fsync(parent.rawValue) }
    }

    /// Reads a whole file as UTF-8; nil when it does not exist.
    public static func read(_ path: String) throws(SystemError) -> String? {
        let raw = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        if raw < 0 {
            if Glibc.errno == ENOENT { return nil }
            throw SystemError("open(\(path))", errno: Glibc.errno)
        }
        let fd = FileDescriptor(taking: raw)
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = try syscall("read(\(path))") { Glibc.read(fd.rawValue, &chunk, chunk.count) }
            if n == 0 { break }
            result.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: result, as: UTF8.self)
    }

    /// Removes a file; a missing file is not an error.
    public static func remove(_ path: String) throws(SystemError) {
        if unlink(path) < 0 && Glibc.errno != ENOENT { throw SystemError("unlink(\(path))", errno: Glibc.errno) }
    }
}

extension TapQueue {
    /// Gives up ownership of the fd without closing it; the caller now owns `rawValue`.
    public consuming func releaseDescriptor() {
        let descriptor = self.descriptor
        descriptor.release()
    }
}

extension FileDescriptor {
    /// Gives up ownership of the fd without closing it and returns it.
    @discardableResult
    public consuming func release() -> Int32 {
        let fd = rawValue
        discard self
        return fd
    }
}

extension StateDirectoryLock {
    /// Releases the lock (closing its fd). The lock file stays; the next daemon reuses it.
    public consuming func unlock() {
        let path = self.path
        _ = path
        let descriptor = self.descriptor
        try? descriptor.close()
    }
}

/// A set of signals taken synchronously with sigwait instead of by handlers.
public struct SignalSet: Sendable {
    private let signals: [Int32]
    public init(_ signals: [Int32]) { self.signals = signals }

    private var set: sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in signals { sigaddset(&set, signal) }
        return set
    }

    /// Blocks the signals in the calling thread; threads created afterwards inherit the mask.
    public func block() {
        var set = self.set
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Waits until one of the signals arrives and returns it.
    public func wait() -> Int32 {
        var set = self.set
        var received: Int32 = 0
        while sigwait(&set, &received) != 0 {}
        return received
    }

    /// Waits at most `milliseconds` for one of the signals; returns it, or nil when the time
    /// ran out. The corresponding C function is `sigtimedwait`.
    public func wait(milliseconds: Int) -> Int32? {
        var set = self.set
        var timeout = timespec(tv_sec: milliseconds / 1000, tv_nsec: (milliseconds % 1000) * 1_000_000)
        let received = sigtimedwait(&set, nil, &timeout)
        return received > 0 ? received : nil
    }
}
