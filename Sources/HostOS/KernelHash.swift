import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// SHA-256 by the kernel's crypto API (AF_ALG), so that a process needs no crypto library (and
/// no Foundation, which swift-crypto imports). Needs a socket: call before a seccomp jail.
public enum KernelSHA256 {
    /// Whether `digest` found no AF_ALG sha256 and used `SHA256` (plain Swift) instead.
    public enum Source: Sendable, Equatable { case kernel, swift }

    /// The SHA-256 digest (32 bytes) of `bytes`, by the kernel's AF_ALG interface where the
    /// kernel has it, else by `SHA256` (kernels built without CONFIG_CRYPTO_USER_API_HASH, as
    /// this project's PVM hosts are).
    /// - Throws: `SystemError` when AF_ALG is there but fails.
    public static func digest(_ bytes: [UInt8]) throws(SystemError) -> (digest: [UInt8], source: Source) {
        do {
            return (try kernelDigest(bytes), .kernel)
        } catch {
            guard error.errno == EAFNOSUPPORT || error.errno == ENOENT else { throw error }
            return (SHA256.digest(bytes), .swift)
        }
    }

    /// The SHA-256 digest (32 bytes) of `bytes` by the kernel's AF_ALG interface.
    /// - Throws: `SystemError`; `socket(AF_ALG)` fails with EAFNOSUPPORT where the kernel was
    ///   built without CONFIG_CRYPTO_USER_API_HASH, `bind` with ENOENT without sha256.
    public static func kernelDigest(_ bytes: [UInt8]) throws(SystemError) -> [UInt8] {
        let r = bh_alg_hash_open("sha256")
        if r < 0 {
            let what = r == -EAFNOSUPPORT ? "socket(AF_ALG): the kernel has no AF_ALG hash interface (CONFIG_CRYPTO_USER_API_HASH)"
                : "AF_ALG hash sha256"
            throw SystemError(what, negated: r)
        }
        let operation = FileDescriptor(taking: r)
        // Every chunk but the last goes with MSG_MORE; the last send finishes the hash.
        let chunk = 1 << 16
        var offset = 0
        while offset < bytes.count {
            let length = min(chunk, bytes.count - offset)
            let flags = offset + length < bytes.count ? bh_MSG_MORE : 0
            let sent = bytes.withUnsafeBytes { send(operation.rawValue, $0.baseAddress! + offset, length, flags) }
            if sent < 0 {
                if errno == EINTR { continue }
                throw SystemError("send(AF_ALG sha256)", errno: errno)
            }
            offset += sent
        }
        var digest = [UInt8](repeating: 0, count: 32)
        let n = try syscall("read(AF_ALG sha256)") { digest.withUnsafeMutableBytes { read(operation.rawValue, $0.baseAddress, 32) } }
        guard n == 32 else { throw SystemError("read(AF_ALG sha256): \(n) bytes", errno: EIO) }
        return digest
    }

    /// `digest(bytes)` in lowercase hexadecimal.
    public static func hexDigest(_ bytes: [UInt8]) throws(SystemError) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var text: [UInt8] = []
        text.reserveCapacity(64)
        for byte in try digest(bytes).digest {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: text, as: UTF8.self)
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
