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
        // One byte past the size it had: a file that grew since fstat is refused, not truncated.
        let bytes = try fd.readAll(limit: Int(info.st_size) + 1)
        guard bytes.count == Int(info.st_size) else {
            throw MeasurementError(path: path, reason: "changed size while it was read")
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

/// The daemon's measurement before it starts a partition: the audit log records the digest of
/// every boot file, and a mismatch refuses the start. (The VMM measures again the bytes it
/// actually loads, so a file swapped after this check is refused there.)
public enum LaunchMeasurement {
    public struct Report: Sendable {
        /// Path to measured SHA-256 (hex) of each boot file that could be read.
        public var digests: [(path: String, sha256: String)] = []
        /// Why the launch is refused; nil when every file matches its configured digest.
        public var refusal: String?
    }

    /// Measures `partition`'s image, or kernel and initrd, against the configuration's digests.
    public static func measure(_ partition: Partition) -> Report {
        var report = Report()
        for file in partition.measuredFiles {
            do {
                let image = try MeasuredImage.load(file, limit: Int(clamping: partition.memoryBytes))
                report.digests.append((image.path, file.sha256.lowercased()))
            } catch {
                report.refusal = error.description
                return report
            }
        }
        return report
    }
}
