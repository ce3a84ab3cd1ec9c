// The few calls on the log's descriptor that HostOS's FileDescriptor does not offer (one
// write(2) per record, pread, fdatasync, flock) and the wall clock. Kept here, in one place;
// they belong in HostOS when its owner takes them.
import HostOS
#if canImport(Glibc)
import Glibc
#endif

extension FileDescriptor {
    /// Writes `bytes` with one call, retrying only EINTR (nothing written); returns how many
    /// were written, which for a regular file is all unless the disk is full.
    /// The corresponding C function is `write`.
    func writeOnce(_ bytes: [UInt8]) throws(SystemError) -> Int {
        while true {
            let n = bytes.withUnsafeBytes { Glibc.write(rawValue, $0.baseAddress, $0.count) }
            if n >= 0 { return n }
            if errno == EINTR { continue }
            throw SystemError("write(fd \(rawValue))", errno: errno)
        }
    }

    /// Reads up to `count` bytes at `offset`; fewer only at the end of the file.
    /// The corresponding C function is `pread`.
    func read(count: Int, at offset: UInt64) throws(SystemError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = bytes.withUnsafeMutableBytes {
                pread(rawValue, $0.baseAddress.map { $0 + done }, count - done, off_t(offset) + off_t(done))
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError("pread(fd \(rawValue))", errno: errno)
            }
            if n == 0 { break }
            done += n
        }
        bytes.removeSubrange(done...)
        return bytes
    }

    /// Flushes the file's data (and the size that reaches it) to the disk.
    /// The corresponding C function is `fdatasync`.
    func synchronizeData() throws(SystemError) {
        while fdatasync(rawValue) < 0 {
            if errno == EINTR { continue }
            throw SystemError("fdatasync(fd \(rawValue))", errno: errno)
        }
    }

    /// Takes an exclusive lock without waiting; false when another open file holds it.
    /// The corresponding C function is `flock`.
    func lockExclusively() throws(SystemError) -> Bool {
        while flock(rawValue, LOCK_EX | LOCK_NB) < 0 {
            if errno == EINTR { continue }
            if errno == EWOULDBLOCK { return false }
            throw SystemError("flock(fd \(rawValue), LOCK_EX)", errno: errno)
        }
        return true
    }
}

/// Milliseconds since the Unix epoch, from CLOCK_REALTIME. The corresponding C function is `clock_gettime`.
func realtimeMilliseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
}
