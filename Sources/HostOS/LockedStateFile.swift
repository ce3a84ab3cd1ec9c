#if canImport(Glibc)
import Glibc
#endif

extension StateFiles {
    /// Reads the file at `path` (nil when it does not exist), passes it to `change`, and replaces
    /// the file with what `change` returns (nil or the same text: left alone), all while holding
    /// an exclusive lock on `path + ".lock"`: processes that update one file this way (the
    /// daemon and a block server started alone) take turns, each seeing the other's result. The
    /// lock is waited for and released on return.
    ///
    /// The new file is written with `writeAtomically(durable: true)`: a crash leaves the old text
    /// or the new one.
    /// - Throws: what `change` throws, or a `SystemError` naming the call and the file.
    /// The corresponding C functions are `flock`, `open`, `read`, `write`, `fsync` and `rename`.
    public static func update(_ path: String, mode: mode_t = 0o600, _ change: (_ current: String?) throws -> String?) throws {
        let lockPath = path + ".lock"
        let lock = try FileDescriptor.open(lockPath, flags: O_RDWR | O_CREAT | O_NOFOLLOW, mode: 0o600)
        try syscall("flock(\(lockPath), LOCK_EX)") { flock(lock.rawValue, LOCK_EX) }
        let current = try read(path)
        guard let replacement = try change(current), replacement != current else { return }
        try writeAtomically(path, contents: replacement, mode: mode, durable: true)
        _ = consume lock  // unlocked as it closes, after the rename
    }
}
