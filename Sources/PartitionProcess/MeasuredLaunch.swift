import Config
import HostOS
#if canImport(Glibc)
import Glibc
#endif

/// Platform integrity: a partition boots only what measures as its configuration says.
///
/// A file is read once, whole, into memory, and the digest is taken over exactly the bytes that
/// are then loaded into the guest: no second read that a writer of the file could race.
struct MeasuredImage {
    let path: String
    let bytes: [UInt8]

    /// Reads `file.path` (at most `limit` bytes) and checks its SHA-256 against `file.sha256`.
    /// - Throws: `MeasurementError` naming the file: it cannot be read, is larger than `limit`,
    ///   or measures to another digest.
    static func load(_ file: MeasuredFile, limit: Int) throws(MeasurementError) -> MeasuredImage {
        let bytes: [UInt8]
        do { bytes = try readWhole(file.path, limit: limit) } catch let error as MeasurementError {
            throw error
        } catch {
            throw MeasurementError(path: file.path, reason: "cannot be read: \(error)")
        }
        let digest: String
        do { digest = try ImageDigest.sha256Hex(bytes) } catch {
            throw MeasurementError(path: file.path, reason: "cannot be measured: \(error)")
        }
        guard digest == file.sha256.lowercased() else {
            throw MeasurementError(path: file.path, reason: "measures sha256 \(digest), but the configuration expects \(file.sha256); the partition is not started")
        }
        return MeasuredImage(path: file.path, bytes: bytes)
    }

    private static func readWhole(_ path: String, limit: Int) throws -> [UInt8] {
        let fd = try FileDescriptor.open(path, flags: O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        var info = stat()
        guard fstat(fd.rawValue, &info) == 0 else { throw SystemError("fstat(\(path))", errno: errno) }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw MeasurementError(path: path, reason: "is not a regular file") }
        guard info.st_size <= limit else {
            throw MeasurementError(path: path, reason: "is \(info.st_size) bytes, more than the \(limit) this partition can load")
        }
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size))
        var filled = 0
        while filled < bytes.count {
            let n = bytes.withUnsafeMutableBytes { read(fd.rawValue, $0.baseAddress! + filled, $0.count - filled) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw SystemError("read(\(path))", errno: errno) }
            if n == 0 { throw MeasurementError(path: path, reason: "shrank while it was read") }
            filled += n
        }
        return bytes
    }
}

/// Why a partition's boot file was refused.
struct MeasurementError: Error, CustomStringConvertible {
    let path: String
    let reason: String
    var description: String { "\(path) \(reason)" }
}
