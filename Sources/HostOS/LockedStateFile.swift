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
    /// The new file is written with `replaceDurably`: a crash leaves the old text or the new one.
    /// - Throws: what `change` throws, or a `SystemError` naming the call and the file.
    /// The corresponding C functions are `flock`, `open`, `read`, `write`, `fsync` and `rename`.
    public static func update(_ path: String, mode: mode_t = 0o600, _ change: (_ current: String?) throws -> String?) throws {
        let lockPath = path + ".lock"
        let lock = try FileDescriptor.open(lockPath, flags: O_RDWR | O_CREAT | O_NOFOLLOW, mode: 0o600)
        try syscall("flock(\(lockPath), LOCK_EX)") { flock(lock.rawValue, LOCK_EX) }
        let current = try read(path)
        guard let replacement = try change(current), replacement != current else { return }
        try replaceDurably(path, contents: replacement, mode: mode)
        _ = consume lock  // unlocked as it closes, after the rename
    }

    /// Replaces `path` with `contents` so that a crash at any point leaves either the old file or
    /// the new one, never a torn one: the text goes to `path + ".tmp"` (mode `mode`, whatever
    /// the umask), is flushed to disk, renamed over `path`, and the directory flushed too.
    /// The corresponding C functions are `open`, `fchmod`, `write`, `fsync` and `rename`.
    public static func replaceDurably(_ path: String, contents: String, mode: mode_t) throws(SystemError) {
        let temporary = path + ".tmp"
        do {
            let file = try FileDescriptor.open(temporary, flags: O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, mode: mode)
            // A temporary file left by a crash keeps its old mode through O_CREAT; set it anew.
            try syscall("fchmod(\(temporary))") { fchmod(file.rawValue, mode) }
            try file.writeAll(contents)
            try syscall("fsync(\(temporary))") { fsync(file.rawValue) }
            try file.close()
        }
        try syscall("rename(\(temporary), \(path))") { rename(temporary, path) }
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        let parent = try FileDescriptor.open(directory, flags: O_RDONLY | O_DIRECTORY)
        try syscall("fsync(\(directory))") { fsync(parent.rawValue) }
    }
}
