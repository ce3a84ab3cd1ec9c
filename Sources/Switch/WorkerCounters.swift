import Synchronization

/// One packet worker's per-port counters: written by that worker only, read by anyone.
///
/// Each counter is an atomic word that its single writer bumps with a relaxed load and a relaxed
/// store (plain instructions, no locked read-modify-write, no cache line shared with another
/// worker); readers load them relaxed and `SwitchState.statistics()` sums the workers. A reader
/// may see one counter of a frame before another (rx before its drop), never a torn value.
public final class WorkerCounters: @unchecked Sendable {
    // @unchecked Sendable: the storage is atomics this object owns.

    enum Field: Int {
        case rxFrames, rxBytes, txFrames, txBytes, learned, refused
    }

    static let fieldCount = 6
    /// Counters per port: the fields, then one per drop reason.
    static let stride = fieldCount + DropReason.allCases.count

    let portCount: Int
    private let storage: UnsafeMutablePointer<Atomic<UInt64>>
    private let words: Int

    init(portCount: Int) {
        self.portCount = portCount
        // Rounded up to whole 128-byte blocks (two cache lines, the adjacent-line prefetch unit),
        // so that no other object shares a line with the counters a worker writes.
        words = max(16, (portCount * WorkerCounters.stride + 15) / 16 * 16)
        let raw = UnsafeMutableRawPointer.allocate(byteCount: words * 8, alignment: 128)
        storage = raw.bindMemory(to: Atomic<UInt64>.self, capacity: words)
        for i in 0..<words { (storage + i).initialize(to: Atomic(0)) }
    }

    deinit {
        storage.deinitialize(count: words)
        UnsafeMutableRawPointer(storage).deallocate()
    }

    /// Adds `amount` to counter `index`. Only the owning worker calls this.
    @inline(__always)
    func add(_ index: Int, _ amount: UInt64 = 1) {
        let counter = storage + index
        counter.pointee.store(counter.pointee.load(ordering: .relaxed) &+ amount, ordering: .relaxed)
    }

    @inline(__always)
    static func index(port: Int, _ field: Field) -> Int { port &* stride &+ field.rawValue }

    @inline(__always)
    static func index(port: Int, drop reason: DropReason) -> Int { port &* stride &+ fieldCount &+ reason.rawValue }

    func load(_ index: Int) -> UInt64 { storage[index].load(ordering: .relaxed) }
}
