import CLinux
import Config
import HostOS
#if canImport(Glibc)
import Glibc
#endif

/// One tenant's volumes on disk: raw, sparse files under
/// `<stateDirectory>/tenants/<tenant>/volumes/`, mode 0600.
///
/// Every volume file is opened relative to the tenant's volume directory with openat2 and
/// RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV: no `..`, no symlink and no mount
/// point can lead outside it, whatever sits in the directory.
public struct VolumeStore: ~Copyable {
    public let tenant: String
    public let directory: String
    private let directoryFD: FileDescriptor

    /// The directory of `tenant`'s volumes under `stateDirectory`.
    public static func directory(stateDirectory: String, tenant: String) -> String {
        "\(stateDirectory)/tenants/\(tenant)/volumes"
    }

    /// The vhost-user socket of a volume (the configuration's `Volume.vhostUserSocketPath`).
    public static func socketPath(stateDirectory: String, tenant: String, volume: String) -> String {
        Volume.vhostUserSocketPath(stateDirectory: stateDirectory, tenant: tenant, volume: volume)
    }

    /// Opens the tenant's volume directory, creating it (mode 0700) when missing.
    public init(stateDirectory: String, tenant: String) throws(SystemError) {
        self.tenant = tenant
        directory = VolumeStore.directory(stateDirectory: stateDirectory, tenant: tenant)
        try StateFiles.makeDirectories(directory, mode: 0o700)
        directoryFD = try FileDescriptor.open(directory, flags: O_RDONLY | O_DIRECTORY)
    }

    static func fileName(_ volume: String) -> String { volume + ".img" }

    /// Opens a volume file beneath the tenant's directory. `name` is a plain file name.
    func openBeneath(_ name: String, flags: Int32, mode: mode_t = 0o600) throws(SystemError) -> FileDescriptor {
        let fd = bh_openat_beneath(directoryFD.rawValue, name, flags, UInt32(mode))
        if fd < 0 { throw SystemError("openat2(\(directory)/\(name), RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)", negated: fd) }
        return FileDescriptor(taking: fd)
    }

    /// Opens an arbitrary relative path the way volume files are opened; for the isolation
    /// tests only. Returns the raw fd (the caller closes it).
    public func openForTesting(_ path: String) throws(SystemError) -> Int32 {
        try openBeneath(path, flags: O_RDONLY).release()
    }

    /// Opens `volume`, creating it at its configured size on first use: a sparse file that reads
    /// as zeroes everywhere. An existing smaller file is grown; a larger one is refused (shrinking
    /// would drop the tenant's data).
    public func open(_ volume: Volume) throws(VolumeError) -> VolumeFile {
        let name = VolumeStore.fileName(volume.id)
        let access = volume.readOnly ? O_RDONLY : O_RDWR
        let buffered: FileDescriptor
        do {
            buffered = try openBeneath(name, flags: access | O_CREAT)
        } catch {
            throw .system(volume: volume.id, error)
        }
        var info = stat()
        if fstat(buffered.rawValue, &info) < 0 {
            throw .system(volume: volume.id, SystemError("fstat(\(name))", errno: errno))
        }
        guard info.st_mode & S_IFMT == S_IFREG else { throw .notARegularFile(volume: volume.id) }
        let current = UInt64(info.st_size)
        if current > volume.sizeBytes {
            throw .largerThanConfigured(volume: volume.id, fileSize: current, configured: volume.sizeBytes)
        }
        if current < volume.sizeBytes {
            if volume.readOnly { throw .readOnlyTooSmall(volume: volume.id, fileSize: current, configured: volume.sizeBytes) }
            do { try buffered.truncate(to: Int(volume.sizeBytes)) } catch { throw .system(volume: volume.id, error) }
        }
        // O_DIRECT where the file system supports it (tmpfs does not): the page cache is not a
        // second copy of tenant data, and writes reach the device's queue at completion.
        let direct: FileDescriptor? = try? openBeneath(name, flags: access | bh_O_DIRECT)
        return VolumeFile(volume: volume, buffered: buffered, direct: direct)
    }

    /// Releases every block of a volume that is no longer configured, then removes its file.
    public func purge(volume id: String) throws(VolumeError) {
        let name = VolumeStore.fileName(id)
        do throws(SystemError) {
            let fd = try openBeneath(name, flags: O_RDWR)
            var info = stat()
            if fstat(fd.rawValue, &info) < 0 { throw SystemError("fstat(\(name))", errno: errno) }
            if info.st_size > 0 {
                let r = bh_fallocate(fd.rawValue, bh_FALLOC_PUNCH_HOLE, 0, UInt64(info.st_size))
                if r < 0 { throw SystemError("fallocate(PUNCH_HOLE, \(name))", negated: r) }
                if fsync(fd.rawValue) < 0 { throw SystemError("fsync(\(name))", errno: errno) }
            }
            if unlinkat(directoryFD.rawValue, name, 0) < 0 { throw SystemError("unlink(\(name))", errno: errno) }
        } catch {
            throw .system(volume: id, error)
        }
    }

    /// Ids of the volume files present in the directory.
    public func volumeFiles() -> [String] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasSuffix(".img") { names.append(String(name.dropLast(4))) }
        }
        return names.sorted()
    }
}

/// An open volume: its configuration and file descriptors. Closing them is this object's job.
public final class VolumeFile: Sendable {
    public let volume: Volume
    /// Buffered fd: used for requests whose buffers O_DIRECT cannot take, and where the file
    /// system has no O_DIRECT.
    public let bufferedFD: Int32
    /// O_DIRECT fd, when the file system supports it.
    public let directFD: Int32?

    init(volume: Volume, buffered: consuming FileDescriptor, direct: consuming FileDescriptor?) {
        self.volume = volume
        bufferedFD = buffered.release()
        directFD = direct?.release()
    }

    deinit {
        _ = close(bufferedFD)
        if let directFD { _ = close(directFD) }
    }

    public var sizeBytes: UInt64 { volume.sizeBytes }
}

public enum VolumeError: Error, CustomStringConvertible {
    case system(volume: String, SystemError)
    case notARegularFile(volume: String)
    case largerThanConfigured(volume: String, fileSize: UInt64, configured: UInt64)
    case readOnlyTooSmall(volume: String, fileSize: UInt64, configured: UInt64)

    public var description: String {
        switch self {
        case .system(let volume, let error): "volume \(volume): \(error)"
        case .notARegularFile(let volume): "volume \(volume): the volume path is not a regular file"
        case .largerThanConfigured(let volume, let size, let configured):
            "volume \(volume): the file holds \(size) bytes but sizeBytes is \(configured); shrinking would lose data, so it is refused (raise sizeBytes, or purge the volume)"
        case .readOnlyTooSmall(let volume, let size, let configured):
            "volume \(volume): read-only, and its file holds \(size) bytes, less than sizeBytes \(configured)"
        }
    }
}
