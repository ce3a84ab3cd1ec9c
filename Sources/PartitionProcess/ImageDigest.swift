import CDigest

/// SHA-256 for the measured launch, by the system's libcrypto (OpenSSL).
public enum ImageDigest {
    /// Why a digest could not be taken.
    public struct Failure: Error, CustomStringConvertible {
        public var description: String { "libcrypto's SHA-256 failed" }
    }

    /// The SHA-256 digest (32 bytes) of `bytes`.
    public static func sha256(_ bytes: [UInt8]) throws(Failure) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: 32)
        let r = bytes.withUnsafeBytes { input in
            digest.withUnsafeMutableBufferPointer { bh_sha256(input.baseAddress, input.count, $0.baseAddress) }
        }
        guard r == 0 else { throw Failure() }
        return digest
    }

    /// The digest in lower-case hex, as the configuration writes it.
    public static func sha256Hex(_ bytes: [UInt8]) throws(Failure) -> String {
        try sha256(bytes).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}
