import Foundation
import HostOS
import KVM
import VMM
import Synchronization
import XCTest

/// /dev/kvm for a test, or a skip saying what is missing.
func openKVM() throws -> KVMSystem {
    guard FileManager.default.fileExists(atPath: "/dev/kvm") else { throw XCTSkip("needs /dev/kvm (the kvm module)") }
    do { return try KVMSystem() } catch {
        if case .unavailable = error { throw XCTSkip("needs access to /dev/kvm: \(error)") }
        throw error
    }
}

/// Collects what a guest writes on its serial port (written on vCPU threads, read by the test).
final class ConsoleCapture: Sendable {
    private let bytes = Mutex<[UInt8]>([])

    var sink: @Sendable (UInt8) -> Void { { [self] byte in bytes.withLock { $0.append(byte) } } }
    var data: [UInt8] { bytes.withLock { $0 } }
    var text: String { String(decoding: data, as: UTF8.self) }

    /// Waits until `condition` holds for the text so far, or `seconds` pass; returns whether it held.
    func wait(seconds: Double, until condition: (String) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition(text) { return true }
            usleep(5_000)
        }
        return condition(text)
    }
}

/// Bytes of resident memory (VmRSS) and of resident shared memory (RssShmem: guest RAM the
/// guest or the VMM touched) of this process, from /proc/self/status.
func residentMemory() -> (rss: Int, shmem: Int, anon: Int, file: Int) {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return (0, 0, 0, 0) }
    func kib(_ key: String) -> Int {
        for line in status.split(separator: "\n") where line.hasPrefix(key + ":") {
            return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
        }
        return 0
    }
    return (kib("VmRSS") * 1024, kib("RssShmem") * 1024, kib("RssAnon") * 1024, kib("RssFile") * 1024)
}
