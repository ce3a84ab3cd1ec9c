import HostOS
import XCTest

/// The measured launch's SHA-256: FIPS 180-4's examples and a few lengths around the padding
/// boundaries, in plain Swift and (where the kernel has AF_ALG) by the kernel.
final class SHA256Tests: XCTestCase {
    private static func hex(_ bytes: [UInt8]) -> String {
        bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    /// Known answers: FIPS 180-4 examples, and "a" repeated a million times.
    private static let vectors: [(input: [UInt8], digest: String)] = [
        ([], "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        (Array("abc".utf8), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        (Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8),
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
        (Array("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu".utf8),
         "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"),
        ([UInt8](repeating: 0x61, count: 1_000_000), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
    ]

    func testSwiftImplementationMatchesKnownAnswers() {
        for (input, digest) in Self.vectors {
            XCTAssertEqual(Self.hex(SHA256.digest(input)), digest, "\(input.count) bytes")
        }
    }

    func testDigestMatchesKnownAnswers() throws {
        for (input, digest) in Self.vectors {
            XCTAssertEqual(Self.hex(try KernelSHA256.digest(input).digest), digest, "\(input.count) bytes")
            XCTAssertEqual(try KernelSHA256.hexDigest(input), digest)
        }
    }

    /// The kernel's and the Swift digests agree on every length around the 55/56/64-byte
    /// padding boundaries and across AF_ALG's 64 KiB send chunks.
    func testKernelAndSwiftAgree() throws {
        var missing = false
        do { _ = try KernelSHA256.kernelDigest([]) } catch { missing = error.errno == EAFNOSUPPORT }
        if missing { throw XCTSkip("the kernel has no AF_ALG hash interface (CONFIG_CRYPTO_USER_API_HASH)") }
        var generator = SystemRandomNumberGenerator()
        for length in Array(50...130) + [65_535, 65_536, 65_537, 200_001] {
            let input = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            XCTAssertEqual(try KernelSHA256.kernelDigest(input), SHA256.digest(input), "\(length) bytes")
        }
    }
}
