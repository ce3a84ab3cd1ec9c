#if canImport(Glibc)
import Glibc
#endif

/// Reads and writes of eventfds a peer hands over (a vhost-user frontend's kick and call
/// descriptors), without blocking: the peer can read or saturate the counter at any time, so a
/// blocking call could hang the thread that serves every port.
public enum EventCounter {
    /// Adds one to the counter of eventfd `fd` (borrowed). False when the write failed; EAGAIN
    /// (a saturated counter: the reader has a wake-up pending already) counts as success.
    /// The corresponding C function is `write`.
    @discardableResult
    public static func signal(_ fd: Int32) -> Bool {
        var one: UInt64 = 1
        while true {
            let n = withUnsafeBytes(of: &one) { Glibc.write(fd, $0.baseAddress, 8) }
            if n == 8 { return true }
            if n < 0 && Glibc.errno == EINTR { continue }
            return n < 0 && Glibc.errno == EAGAIN
        }
    }

    /// Takes the counter of eventfd `fd` (borrowed), which must be non-blocking: its value, 0 when
    /// it was 0 (EAGAIN), nil when the read failed otherwise. In semaphore mode a read takes 1.
    /// The corresponding C function is `read`.
    public static func take(_ fd: Int32) -> UInt64? {
        var value: UInt64 = 0
        while true {
            let n = withUnsafeMutableBytes(of: &value) { Glibc.read(fd, $0.baseAddress, 8) }
            if n == 8 { return value }
            if n < 0 && Glibc.errno == EINTR { continue }
            if n < 0 && Glibc.errno == EAGAIN { return 0 }
            return nil
        }
    }

    /// Waits until one of `fds` (borrowed) is readable or `timeoutMilliseconds` pass (-1: no
    /// limit); sets `readable[i]` for each readable (or failed) one. Returns how many are.
    /// For test harnesses and tools that serve a few ports without a ring. The corresponding
    /// C function is `poll`.
    public static func waitReadable(_ fds: [Int32], readable: inout [Bool], timeoutMilliseconds: Int32) -> Int {
        var entries = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        readable = Array(repeating: false, count: fds.count)
        let count = entries.withUnsafeMutableBufferPointer { poll($0.baseAddress, nfds_t($0.count), timeoutMilliseconds) }
        guard count > 0 else { return 0 }
        for i in entries.indices where entries[i].revents != 0 { readable[i] = true }
        return Int(count)
    }
}

extension FileDescriptor {
    /// A second descriptor for the same open file (close-on-exec), owned by the caller: keeps the
    /// file open however long the peer keeps the original. The corresponding C function is `fcntl`
    /// (F_DUPFD_CLOEXEC).
    public static func duplicate(_ fd: Int32) throws(SystemError) -> FileDescriptor {
        let copy = try syscall("fcntl(fd \(fd), F_DUPFD_CLOEXEC)") { fcntl(fd, F_DUPFD_CLOEXEC, 0) }
        return FileDescriptor(taking: copy)
    }
}
