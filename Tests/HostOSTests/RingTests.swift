import Foundation
import HostOS
import URing
import XCTest

/// The io_uring wrapper on real files: batched submission, completions, and ring restrictions.
final class RingTests: XCTestCase {
    private func temporaryFile(bytes: Int) throws -> (path: String, fd: Int32) {
        let path = NSTemporaryDirectory() + "bulkhead-ring-\(UUID().uuidString)"
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(ftruncate(fd, off_t(bytes)), 0)
        return (path, fd)
    }

    private func skipWithoutIOURing() throws {
        let disabled = (try? String(contentsOfFile: "/proc/sys/kernel/io_uring_disabled", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines)
        if let disabled, disabled != "0" {
            throw XCTSkip("io_uring is disabled on this host (kernel.io_uring_disabled=\(disabled))")
        }
    }

    func testBatchedWritesAndReadsComplete() throws {
        try skipWithoutIOURing()
        let (path, fd) = try temporaryFile(bytes: 1 << 20)
        defer { close(fd); unlink(path) }
        let ring = try Ring(entries: 64)
        try ring.registerFiles([fd])
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16 * 4096, alignment: 4096)
        defer { buffer.deallocate() }
        for i in 0..<16 { memset(buffer.baseAddress! + i * 4096, Int32(i + 1), 4096) }
        for i in 0..<16 {
            try ring.prepareWrite(fd: 0, fixed: true, buffer: buffer.baseAddress! + i * 4096, length: 4096,
                                  offset: Int64(i * 8192), userData: UInt64(i))
        }
        XCTAssertEqual(try ring.submitAndWait(16), 16, "one io_uring_enter submits the whole batch")
        let completions = UnsafeMutableBufferPointer<Completion>.allocate(capacity: 32)
        defer { completions.deallocate() }
        var seen = Set<UInt64>()
        while seen.count < 16 {
            let n = ring.reap(into: completions)
            for c in completions.prefix(n) {
                XCTAssertEqual(c.res, 4096)
                seen.insert(c.user_data)
            }
            if n == 0 { try ring.submitAndWait(1) }
        }
        var check = [UInt8](repeating: 0, count: 4096)
        XCTAssertEqual(pread(fd, &check, 4096, off_t(5 * 8192)), 4096)
        XCTAssertEqual(Set(check), [6])
    }

    func testRestrictedRingRefusesOtherOperationsAndUnregisteredFiles() throws {
        try skipWithoutIOURing()
        let (path, fd) = try temporaryFile(bytes: 1 << 16)
        defer { close(fd); unlink(path) }
        let ring = try Ring(entries: 8, setup: [.disabled])
        try ring.registerFiles([fd])
        // Reads only, and only on registered files.
        try ring.restrict(to: [.read], requireFixedFiles: true)
        try ring.enable()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { buffer.deallocate() }
        let completions = UnsafeMutableBufferPointer<Completion>.allocate(capacity: 8)
        defer { completions.deallocate() }

        func run(_ prepare: () throws -> Void) throws -> Int32 {
            try prepare()
            try ring.submitAndWait(1)
            let n = ring.reap(into: completions)
            XCTAssertEqual(n, 1)
            return completions[0].res
        }
        XCTAssertEqual(try run { try ring.prepareRead(fd: 0, fixed: true, buffer: buffer.baseAddress!, length: 4096, offset: 0, userData: 1) }, 4096)
        XCTAssertEqual(try run { try ring.prepareWrite(fd: 0, fixed: true, buffer: buffer.baseAddress!, length: 4096, offset: 0, userData: 2) },
                       -EACCES, "a write is not among the allowed operations")
        XCTAssertEqual(try run { try ring.prepareRead(fd: fd, fixed: false, buffer: buffer.baseAddress!, length: 4096, offset: 0, userData: 3) },
                       -EACCES, "a read through a plain fd is refused: only registered files")
    }
}
