import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// An owned file descriptor: closed exactly once, when it goes out of scope or by `close()`.
public struct FileDescriptor: ~Copyable, Sendable {
    public let rawValue: Int32

    /// Takes ownership of `rawValue`.
    public init(taking rawValue: Int32) { self.rawValue = rawValue }

    deinit { _ = Glibc.close(rawValue) }

    /// Closes the descriptor and reports a failure. The corresponding C function is `close`.
    public consuming func close() throws(SystemError) {
        let fd = rawValue
        discard self
        if Glibc.close(fd) < 0 { throw SystemError("close(\(fd))", errno: Glibc.errno) }
    }

    /// Opens `path`. The corresponding C function is `open`.
    public static func open(_ path: String, flags: Int32, mode: mode_t = 0) throws(SystemError) -> FileDescriptor {
        let fd = try syscall("open(\(path))") { Glibc.open(path, flags | O_CLOEXEC, mode) }
        return FileDescriptor(taking: fd)
    }

    /// Writes all of `bytes`, retrying short writes and EINTR.
    public func writeAll(_ bytes: UnsafeRawBufferPointer) throws(SystemError) {
        var offset = 0
        while offset < bytes.count {
            let base = bytes.baseAddress! + offset
            let n = try syscall("write(fd \(rawValue))") { Glibc.write(rawValue, base, bytes.count - offset) }
            offset += n
        }
    }

    public func writeAll(_ text: String) throws(SystemError) {
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(rawValue, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 {
                if Glibc.errno == EINTR { continue }
                throw SystemError("write(fd \(rawValue))", errno: Glibc.errno)
            }
            offset += n
        }
    }

    /// Whether the descriptor is an anonymous-inode file, as eventfds are: one whose mode has no
    /// file-type bits (not a regular file, pipe, socket or device). The corresponding C function
    /// is `fstat`.
    public var isAnonymousInode: Bool {
        var status = stat()
        return fstat(rawValue, &status) == 0 && status.st_mode & S_IFMT == 0
    }

    /// Whether the descriptor is an eventfd: an anonymous-inode file that accepts an 8-byte
    /// write. Adding 0 changes no counter, wakes no reader and never blocks, and every other
    /// anonymous-inode file (signalfd, timerfd, epoll, pidfd, io_uring, ...) refuses the write:
    /// the test works without /proc, inside a jail. The corresponding C function is `write`.
    public var isEventFD: Bool {
        guard isAnonymousInode else { return false }
        var zero: UInt64 = 0
        while true {
            let n = Glibc.write(rawValue, &zero, 8)
            if n == 8 { return true }
            if n < 0 && Glibc.errno == EINTR { continue }
            return false
        }
    }

    /// Whether the file lives in shmem (tmpfs, and memfds without MFD_HUGETLB), whose pages a
    /// hole punch turns back into zeroes rather than into SIGBUS for whoever maps them (hugetlbfs
    /// can run out of pages to fault back in). The corresponding C function is `fstatfs`.
    public var isShmem: Bool {
        bh_is_shmem(rawValue) == 1
    }

    /// Sets O_NONBLOCK on the open file description (shared with every holder of the file).
    /// The corresponding C function is `fcntl`.
    public func setNonBlocking() throws(SystemError) {
        let flags = try syscall("fcntl(fd \(rawValue), F_GETFL)") { fcntl(rawValue, F_GETFL) }
        try syscall("fcntl(fd \(rawValue), F_SETFL)") { fcntl(rawValue, F_SETFL, flags | O_NONBLOCK) }
    }

    /// Truncates the file to `length` bytes. The corresponding C function is `ftruncate`.
    public func truncate(to length: Int) throws(SystemError) {
        try syscall("ftruncate(fd \(rawValue))") { ftruncate(rawValue, off_t(length)) }
    }
}

/// An eventfd: a counter another thread can bump to wake a waiter (here: the engine's ring).
public struct EventFD: ~Copyable, Sendable {
    public let descriptor: FileDescriptor

    /// An eventfd (close-on-exec); `nonBlocking` reads of a zero counter fail with EAGAIN
    /// instead of waiting; in `semaphore` mode each read takes one from the counter instead of
    /// all of it. The corresponding C function is `eventfd`.
    public init(nonBlocking: Bool = false, semaphore: Bool = false) throws(SystemError) {
        let fd = try syscall("eventfd") { bh_eventfd(nonBlocking ? 1 : 0, semaphore ? 1 : 0) }
        descriptor = FileDescriptor(taking: fd)
    }

    public var rawValue: Int32 { descriptor.rawValue }

    /// Adds one to the counter, waking readers.
    public func signal() {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { Glibc.write(descriptor.rawValue, $0.baseAddress, 8) }
    }
}

/// CLOCK_MONOTONIC in nanoseconds.
@inline(__always)
public func monotonicNanoseconds() -> UInt64 { bh_monotonic_ns() }

/// Names the calling thread as `top -H` and `ps -L` show it (the kernel keeps 15 bytes).
public func setCurrentThreadName(_ name: String) {
    _ = bh_set_thread_name(String(name.utf8.prefix(15))!)
}

extension EventFD {
    /// Gives up ownership of the eventfd without closing it; the caller now owns the fd.
    public consuming func release() -> Int32 {
        let descriptor = self.descriptor
        return descriptor.release()
    }
}

extension FileDescriptor {
    /// Reads from the descriptor until end of file, at most `limit` bytes (a caller tells a
    /// file that is longer by asking for one byte more than it accepts).
    /// The corresponding C function is `read`.
    public func readAll(limit: Int) throws(SystemError) -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while bytes.count < limit {
            let want = min(chunk.count, limit - bytes.count)
            let n = try syscall("read(fd \(rawValue))") { chunk.withUnsafeMutableBytes { read(rawValue, $0.baseAddress, want) } }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return bytes
    }
}
