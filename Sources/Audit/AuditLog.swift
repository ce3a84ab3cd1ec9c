import Dispatch
import HostOS
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Why the audit log could not be opened, read or appended to.
public enum AuditError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A system call failed.
    case system(SystemError)
    /// Another open of the log (another daemon) holds its lock.
    case locked(path: String)
    /// The log has records but its head file is gone: whether it was cut short cannot be told.
    case headMissing(path: String, lastSequence: UInt64)
    /// The head file is not a head.
    case headMalformed(path: String, reason: String)
    /// The log ends before the record the head names.
    case cutShort(path: String, logEnds: UInt64, headSays: UInt64)
    /// The log's records do not fit the head or their own hashes: the log was changed.
    case tampered(path: String, sequence: UInt64, reason: String)
    /// The log's end is not a record.
    case malformed(path: String, reason: String)
    /// The event makes a line longer than `AuditRecordCodec.maximumLineLength`.
    case recordTooLarge(bytes: Int)
    /// A write failed and could not be undone: the log refuses appends until it is reopened.
    case broken(reason: String)
    /// The whole chain was checked on open (`verifyingChain`) and found wanting.
    case verificationFailed(path: String, problem: AuditProblem)

    public var description: String {
        switch self {
        case .system(let error): "audit log: \(error)"
        case .locked(let path): "audit log \(path) is open in another process (its lock is held)"
        case .headMissing(let path, let last):
            "audit log head \(path) is missing while the log holds \(last) record(s): whether the log was cut short "
                + "cannot be told; run `bulkhead audit verify`, and move the log aside to start a new one"
        case .headMalformed(let path, let reason): "audit log head \(path) is not a head: \(reason)"
        case .cutShort(let path, let ends, let says):
            "audit log \(path) ends at record \(ends) but its head says \(says): it was cut short; "
                + "run `bulkhead audit verify` and move it aside to start a new one"
        case .tampered(let path, let sequence, let reason):
            "audit log \(path) was changed at record \(sequence): \(reason); run `bulkhead audit verify` "
                + "and move it aside to start a new one"
        case .malformed(let path, let reason): "audit log \(path): \(reason)"
        case .recordTooLarge(let bytes):
            "audit record of \(bytes) bytes is longer than the \(AuditRecordCodec.maximumLineLength) a record may have"
        case .broken(let reason): "audit log is broken: \(reason)"
        case .verificationFailed(let path, let problem):
            "audit log \(path): \(problem); run `bulkhead audit verify` and move it aside to start a new one"
        }
    }
}

/// The tamper-evident audit log: append-only JSON lines in a SHA-256 hash chain, and the chain's
/// head (last sequence and hash) in a file beside it, so a log cut short no longer matches.
///
/// `append` returns only once the record is on the disk (written with one write(2), then
/// fdatasync) and the head updated: a caller that answers after it never acknowledges an
/// unrecorded action. Usable from any thread; appends are serialised.
public final class AuditLog: Sendable {
    /// The log file.
    public let path: String
    /// The head file.
    public let headPath: String
    private let state: Mutex<State>
    /// Async appends waiting for the writer thread, and whether it is draining them.
    private let queue = Mutex(WriterQueue())
    /// The writer thread of async appends (a Dispatch thread, not a Swift concurrency one).
    private let writer = DispatchQueue(label: "bulkhead.audit-writer")

    private struct WriterQueue {
        var waiting: [(event: AuditEvent, continuation: CheckedContinuation<Result<UInt64, AuditError>, Never>)] = []
        var draining = false
    }

    /// Lines between the offsets `records(after:limit:)` remembers.
    private static let indexStride: UInt64 = 256

    private struct State: ~Copyable {
        let log: FileDescriptor
        /// Bytes of complete records in the log.
        var size: UInt64
        var sequence: UInt64
        var hash: String
        /// Whether the head file holds (sequence, hash); false after a failed head update.
        var headCurrent: Bool
        /// Why appends are refused, after a write that could not be undone.
        var broken: String?
        /// Offsets of lines 1, 1 + stride, 1 + 2 stride...; built by the first read.
        var index: [UInt64]?
    }

    /// Opens the log at `path` (created, mode 0600, when missing) and its head at `headPath`,
    /// locks the log against other writers, and checks the log's last record against the head:
    /// - the same record: continues the chain;
    /// - the head one record behind, and the last record chains onto it (a crash between the
    ///   log's write and the head's update): the head is repaired;
    /// - a partial last line (a crash during a write that was never acknowledged): cut off;
    /// - anything else: throws, naming the record. Only the tail is read here: the whole chain
    ///   is checked by `AuditLog.verify(path:headPath:)` and `bulkhead audit verify`, or here
    ///   with `verifyingChain` (which reads the whole log: about a second per 100,000 records).
    /// - Throws: `AuditError`: `.locked`, `.headMissing`, `.headMalformed`, `.cutShort`,
    ///   `.tampered`, `.malformed`, `.verificationFailed`, or `.system` naming the call.
    public init(path: String, headPath: String, verifyingChain: Bool = false) throws(AuditError) {
        self.path = path
        self.headPath = headPath
        let log = try io { () throws(SystemError) in
            try FileDescriptor.open(path, flags: O_RDWR | O_APPEND | O_CREAT | O_NOFOLLOW, mode: 0o600)
        }
        guard try io({ () throws(SystemError) in try log.lockExclusively() }) else { throw .locked(path: path) }
        let size = try io { () throws(SystemError) in try log.fileSize() }
        let tail = try Self.readTail(log: log, size: size, path: path)

        var last: AuditRecord?
        if let line = tail.lastLine {
            let decoded: (record: AuditRecord, bodyEnd: Int)
            switch AuditRecordCodec.decode(line[...]) {
            case .success(let value): decoded = value
            case .failure(let error): throw .malformed(path: path, reason: "its last line is not a record: \(error)")
            }
            guard AuditRecordCodec.sha256Hex(line[..<decoded.bodyEnd]) == decoded.record.hash else {
                throw .tampered(path: path, sequence: decoded.record.sequence,
                                reason: "the last record does not match its hash (its content was changed)")
            }
            last = decoded.record
        }

        let head: AuditHead
        var headCurrent = true
        let headBytes = try io { () throws(SystemError) in try Self.readIfPresent(headPath) }
        if let headBytes {
            switch AuditHead.decode(headBytes[...]) {
            case .success(let value): head = value
            case .failure(let error): throw .headMalformed(path: headPath, reason: "\(error)")
            }
        } else if let last {
            throw .headMissing(path: headPath, lastSequence: last.sequence)
        } else {
            head = .empty
            headCurrent = false
        }

        if verifyingChain, last != nil {
            let bytes = try io { () throws(SystemError) in try log.read(count: Int(clamping: size), at: 0) }
            if let problem = AuditVerifier.verify(log: bytes, head: headBytes).problem {
                throw .verificationFailed(path: path, problem: problem)
            }
        }

        let current: AuditHead
        if let last {
            if last.sequence == head.sequence && last.hash == head.hash {
                current = head
            } else if head.sequence < UInt64.max, last.sequence == head.sequence + 1, last.previousHash == head.hash {
                current = AuditHead(sequence: last.sequence, hash: last.hash)
                headCurrent = false
            } else if last.sequence < head.sequence {
                throw .cutShort(path: path, logEnds: last.sequence, headSays: head.sequence)
            } else if last.sequence == head.sequence {
                throw .tampered(path: path, sequence: last.sequence, reason:
                    "the last record differs from the head's (the log was cut short and rewritten)")
            } else {
                throw .tampered(path: path, sequence: last.sequence, reason:
                    "the last record does not follow the head's record \(head.sequence) (records were added or rewritten)")
            }
        } else {
            guard head == .empty else { throw .cutShort(path: path, logEnds: 0, headSays: head.sequence) }
            current = head
        }

        // Only now, with the log known good: the torn bytes were never acknowledged.
        if tail.completeEnd < size {
            try io { () throws(SystemError) in
                try log.truncate(to: Int(tail.completeEnd))
                try log.synchronizeData()
            }
        }
        if !headCurrent {
            try io { () throws(SystemError) in
                try StateFiles.writeAtomically(headPath, contents: current.encoded, mode: 0o600, durable: true)
            }
        }
        state = Mutex(State(log: log, size: tail.completeEnd, sequence: current.sequence, hash: current.hash,
                            headCurrent: true, broken: nil, index: nil))
    }

    /// Where the head of the log at `path` lives when nothing else is said: `<path>.head`.
    public static func defaultHeadPath(forLog path: String) -> String { path + ".head" }

    /// The sequence number of the last record; 0 for an empty log.
    public var lastSequence: UInt64 { state.withLock { $0.sequence } }

    /// The chain's head: the last record's sequence and hash.
    public var head: AuditHead { state.withLock { AuditHead(sequence: $0.sequence, hash: $0.hash) } }

    /// Appends `event`, time-stamped now, as the next record, and returns its sequence number
    /// once the record is on the disk and the head updated. Blocks the calling thread through
    /// the disk's flushes (milliseconds): async code calls the async overload.
    /// - Throws: `.recordTooLarge`; `.system` when a write, fdatasync or the head's update
    ///   failed (a record whose write failed is cut off again; when even that fails, or the data
    ///   could not be flushed, the log turns `.broken` and refuses further appends).
    @discardableResult
    public func append(_ event: AuditEvent) throws(AuditError) -> UInt64 {
        try appendBatch([event])[0].get()
    }

    /// Appends `event` as the synchronous `append` does, without holding a Swift concurrency
    /// thread through the disk's flushes: the log's writer thread takes the records that
    /// gathered while it flushed the previous ones and writes them with one write(2), one
    /// fdatasync and one head update (group commit), so concurrent callers share the flushes.
    /// Returns the record's sequence number once it is on the disk and the head updated.
    /// - Throws: as the synchronous `append`.
    @discardableResult
    public func append(_ event: AuditEvent) async throws(AuditError) -> UInt64 {
        let result: Result<UInt64, AuditError> = await withCheckedContinuation { continuation in
            let schedule = queue.withLock { queue in
                queue.waiting.append((event, continuation))
                defer { queue.draining = true }
                return !queue.draining
            }
            if schedule { writer.async { self.drain() } }
        }
        return try result.get()
    }

    /// The writer thread's loop: appends what is waiting, in batches, until nothing is.
    private func drain() {
        while true {
            let batch = queue.withLock { queue in
                let batch = queue.waiting
                queue.waiting.removeAll()
                if batch.isEmpty { queue.draining = false }
                return batch
            }
            if batch.isEmpty { return }
            let results = appendBatch(batch.map(\.event))
            for (waiter, result) in zip(batch, results) { waiter.continuation.resume(returning: result) }
        }
    }

    /// Appends `events` in order, written with one write(2) and one fdatasync, then the head
    /// updated once; one result per event (an event too large fails alone).
    private func appendBatch(_ events: [AuditEvent]) -> [Result<UInt64, AuditError>] {
        let path = self.path, headPath = self.headPath
        return state.withLock { state in
            do throws(AuditError) {
                if let reason = state.broken { throw .broken(reason: reason) }
                if !state.headCurrent {
                    let head = AuditHead(sequence: state.sequence, hash: state.hash)
                    try io { () throws(SystemError) in
                        try StateFiles.writeAtomically(headPath, contents: head.encoded, mode: 0o600, durable: true)
                    }
                    state.headCurrent = true
                }
                let time = AuditTime.rfc3339(millisecondsSinceEpoch: realtimeMilliseconds())
                var results: [Result<UInt64, AuditError>] = []
                var bytes: [UInt8] = []
                var starts: [UInt64] = []
                var sequence = state.sequence, hash = state.hash
                for event in events {
                    // The count comes from the file: one that says UInt64.max is refused, not trapped on.
                    let (next, exhausted) = sequence.addingReportingOverflow(1)
                    if exhausted {
                        results.append(.failure(.broken(reason: "the log's last record has the largest sequence number there is")))
                        continue
                    }
                    let body = AuditRecordCodec.body(sequence: next, time: time, event: event, previousHash: hash)
                    let (line, lineHash) = AuditRecordCodec.line(body: body)
                    guard line.count <= AuditRecordCodec.maximumLineLength + 1 else {
                        results.append(.failure(.recordTooLarge(bytes: line.count - 1)))
                        continue
                    }
                    starts.append(state.size + UInt64(bytes.count))
                    bytes += line
                    sequence = next
                    hash = lineHash
                    results.append(.success(next))
                }
                guard !bytes.isEmpty else { return results }

                let start = state.size
                do throws(SystemError) {
                    let written = try state.log.writeOnce(bytes)
                    guard written == bytes.count else {
                        throw SystemError("write(\(path)): \(written) of \(bytes.count) bytes", errno: ENOSPC)
                    }
                    try state.log.synchronizeData()
                } catch {
                    // Cut the records off again: a line that may not be on the disk must not stay
                    // in the log (its successor would chain onto it). fdatasync's failure leaves
                    // the page cache in doubt: no more appends until the log is reopened and checked.
                    do throws(SystemError) {
                        try state.log.truncate(to: Int(start))
                        try state.log.synchronizeData()
                    } catch let undo {
                        state.broken = "a failed append (\(error)) could not be cut off: \(undo)"
                        throw .system(error)
                    }
                    if error.call.hasPrefix("fdatasync") { state.broken = "\(error)" }
                    throw .system(error)
                }
                for (offset, lineStart) in starts.enumerated() where state.index != nil {
                    // Written records are numbered on from the last one, in order.
                    if (state.sequence + UInt64(offset)) % Self.indexStride == 0 { state.index?.append(lineStart) }
                }
                state.size = start + UInt64(bytes.count)
                state.sequence = sequence
                state.hash = hash
                state.headCurrent = false
                let head = AuditHead(sequence: sequence, hash: hash)
                try io { () throws(SystemError) in
                    try StateFiles.writeAtomically(headPath, contents: head.encoded, mode: 0o600, durable: true)
                }
                state.headCurrent = true
                return results
            } catch {
                return events.map { _ in .failure(error) }
            }
        }
    }

    /// Up to `limit` raw record lines (without their newlines) after record `sequence`, oldest
    /// first: records `sequence + 1`, `sequence + 2`... by their line in the log.
    /// - Throws: `.system` when reading the log fails.
    public func records(after sequence: UInt64, limit: Int) throws(AuditError) -> [String] {
        guard limit > 0 else { return [] }
        return try state.withLock { (state) throws(AuditError) -> [String] in
            guard sequence < state.sequence else { return [] }
            if state.index == nil { state.index = try Self.buildIndex(log: state.log, size: state.size) }
            let index = state.index ?? [0]
            let first = sequence + 1
            let slot = min(Int((first - 1) / Self.indexStride), index.count - 1)
            var line = UInt64(slot) * Self.indexStride + 1
            var offset = index[slot]
            var out: [String] = []
            var pending: [UInt8] = []
            while offset < state.size && out.count < limit {
                let count = Int(min(UInt64(1 << 16), state.size - offset))
                let chunk = try io { () throws(SystemError) in try state.log.read(count: count, at: offset) }
                if chunk.isEmpty { break }
                offset += UInt64(chunk.count)
                var start = chunk.startIndex
                while start < chunk.endIndex, out.count < limit {
                    guard let newline = chunk[start...].firstIndex(of: 0x0A) else {
                        if line >= first { pending.append(contentsOf: chunk[start...]) }
                        break
                    }
                    if line >= first {
                        pending.append(contentsOf: chunk[start..<newline])
                        out.append(String(decoding: pending, as: UTF8.self))
                        pending.removeAll(keepingCapacity: true)
                    }
                    line += 1
                    start = newline + 1
                }
            }
            return out
        }
    }

    /// Reads the log at `path` and the head at `headPath` and verifies the whole chain
    /// (`AuditVerifier`). The head is read before and after the log, and both again when it
    /// changed, so a writer appending meanwhile is not taken for tampering. A missing head, or
    /// none asked for (`headPath` nil), is reported as `headMissing`.
    /// `anchorPath` names a head saved earlier, away from the log (see `AuditVerifier.verify`).
    /// - Throws: `.system` when the log, the head or the anchor cannot be read.
    public static func verify(path: String, headPath: String?, anchorPath: String? = nil) throws(AuditError) -> AuditVerification {
        var anchor: [UInt8]?
        if let anchorPath {
            anchor = try io { () throws(SystemError) in try readIfPresent(anchorPath) }
            if anchor == nil { throw .system(SystemError("open(\(anchorPath))", errno: ENOENT)) }
        }
        func readHead() throws(AuditError) -> [UInt8]? {
            guard let headPath else { return nil }
            return try io { () throws(SystemError) in try readIfPresent(headPath) }
        }
        var attempts = 0
        while true {
            let before = try readHead()
            guard let log = try io({ () throws(SystemError) in try readIfPresent(path) }) else {
                throw .system(SystemError("open(\(path))", errno: ENOENT))
            }
            let after = try readHead()
            attempts += 1
            if before == after || attempts == 5 { return AuditVerifier.verify(log: log, head: after, anchor: anchor) }
        }
    }

    /// A whole file's bytes; nil when it does not exist.
    static func readIfPresent(_ path: String) throws(SystemError) -> [UInt8]? {
        let file: FileDescriptor
        do throws(SystemError) {
            file = try FileDescriptor.open(path, flags: O_RDONLY | O_NOFOLLOW)
        } catch where error.errno == ENOENT {
            return nil
        }
        let size = try file.fileSize()
        // One byte more than the size: a file that grew meanwhile is read to its end.
        return try file.readAll(limit: Int(clamping: size) &+ (1 << 20))
    }

    /// Where the log's complete records end, and the last complete line (nil when none).
    private static func readTail(log: borrowing FileDescriptor, size: UInt64, path: String) throws(AuditError)
        -> (completeEnd: UInt64, lastLine: [UInt8]?) {
        let chunk: UInt64 = 1 << 16
        // A torn line and the complete one before it fit in this much.
        let most = UInt64(2 * (AuditRecordCodec.maximumLineLength + 1))
        var start = size
        var buffer: [UInt8] = []
        while true {
            if let last = buffer.lastIndex(of: 0x0A) {
                let completeEnd = start + UInt64(last) + 1
                if size - completeEnd > UInt64(AuditRecordCodec.maximumLineLength) {
                    throw .malformed(path: path, reason: "it ends in \(size - completeEnd) bytes without a newline, "
                                     + "more than a record: not a write cut off by a crash")
                }
                if let previous = buffer[..<last].lastIndex(of: 0x0A) {
                    return (completeEnd, Array(buffer[(previous + 1)..<last]))
                }
                if start == 0 { return (completeEnd, Array(buffer[..<last])) }
            } else if start == 0 {
                guard size <= UInt64(AuditRecordCodec.maximumLineLength) else {
                    throw .malformed(path: path, reason: "\(size) bytes without a newline: not an audit log")
                }
                return (0, nil)
            }
            guard size - start < most else {
                throw .malformed(path: path, reason: "no record boundary in its last \(size - start) bytes")
            }
            let next = start - min(chunk, start)
            let count = Int(start - next)
            let bytes = try io { () throws(SystemError) in try log.read(count: count, at: next) }
            guard bytes.count == count else {
                throw .system(SystemError("pread(\(path)): the file shrank while it was read", errno: EIO))
            }
            buffer = bytes + buffer
            start = next
        }
    }

    /// The offsets of lines 1, 1 + stride, 1 + 2 stride... of the log's first `size` bytes.
    private static func buildIndex(log: borrowing FileDescriptor, size: UInt64) throws(AuditError) -> [UInt64] {
        var index: [UInt64] = [0]
        var offset: UInt64 = 0
        var line: UInt64 = 1
        while offset < size {
            let count = Int(min(UInt64(1 << 20), size - offset))
            let chunk = try io { () throws(SystemError) in try log.read(count: count, at: offset) }
            if chunk.isEmpty { break }
            for position in chunk.indices where chunk[position] == 0x0A {
                if line % indexStride == 0 { index.append(offset + UInt64(position) + 1) }
                line += 1
            }
            offset += UInt64(chunk.count)
        }
        // The last entry may point at the end (no line there yet): records() reads nothing from it.
        return index
    }
}

/// Runs `body`, turning its `SystemError` into `AuditError.system`.
private func io<T: ~Copyable>(_ body: () throws(SystemError) -> T) throws(AuditError) -> T {
    do throws(SystemError) {
        return try body()
    } catch {
        throw .system(error)
    }
}
