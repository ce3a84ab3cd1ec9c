import Config
import Synchronization

/// What learning a source MAC did.
public enum LearnOutcome: Equatable, Sendable {
    /// The entry existed on this port (or is the port's static MAC); its age was reset.
    case refreshed
    /// A new entry.
    case learned
    /// A dynamic entry moved from another port.
    case moved
    /// Not learned: the port's or the segment's limit, or no free slot within the probe window.
    case refused
    /// Not learned now: another worker is changing this segment's table. Nobody waits for it;
    /// the next frame from the MAC tries again (until then, frames to it flood the segment).
    case busy
}

/// The MAC tables of all segments in one flat slot array, shared by every packet worker: per
/// segment a power-of-two, linear-probing open-addressing table with a bounded probe window and
/// backward-shift deletion (no tombstones). Nothing allocates after `init`.
///
/// A segment's capacity is twice its entries (learned maximum plus static port MACs), rounded up
/// to a power of two, so the load factor stays at or under one half and the bounded probe window
/// rarely refuses a MAC the limits allow. Learned entries age out after `agingSeconds` (lazily on
/// lookup, and in bulk in `expire`); static entries never age or move and count against no limit.
/// A live entry of one port is never evicted for another port's MAC.
///
/// Concurrency (many workers, no lock on the per-frame path):
/// - A slot is two atomic words: `key` (MAC in bits 0...47, port + 1 in bits 48...56, bit 57 for
///   a static entry; 0 for a free slot) and `lastSeen`. A MAC and its port are one word, so a
///   reader always sees a pairing that some writer stored; and a table holds only its segment's
///   ports, so no race can send a frame out of its segment.
/// - Lookups and refreshes (a known MAC seen again on its port: nearly every frame) take no lock.
///   A refresh stores `lastSeen` only when it is `refreshInterval` old (at most a second), so a
///   MAC seen by several workers does not bounce its cache line on every frame; an entry may
///   therefore age out up to `refreshInterval` early.
/// - Changes to a segment's slots (a new MAC, a move, removal of aged entries) are made by one
///   thread at a time, the one that wins the segment's lock with a single try: a worker that loses
///   does not wait (`busy`). New MACs are rare, as port security lets a port send only from its
///   own MACs. A change stores `lastSeen` before `key` (release), and readers load `key`
///   (acquire) before `lastSeen`.
/// - While a removal shifts entries back, a lock-free reader may miss an entry for a moment:
///   the frame floods its segment, as for an unknown MAC. A refresh that races with a removal may
///   stamp `lastSeen` on the slot's next occupant, which then lives up to one aging time longer.
public final class SegmentTable: @unchecked Sendable {
    // @unchecked Sendable: the slots and counters are atomics in memory this object owns; the
    // rest is immutable after init.

    struct Segment: Sendable {
        var base: Int
        var mask: Int
        var probe: Int
        var shift: UInt64
        var maxEntries: Int
        var maxEntriesPerPort: Int
        var agingNanoseconds: UInt64
        var refreshNanoseconds: UInt64
    }

    /// Slots inspected from a MAC's home slot before giving up.
    public static let maxProbe = 32
    /// Largest slot count of one segment: bounds memory whatever the configuration says.
    public static let maxCapacity = 1 << 20
    /// Ports a table can name (the key word has 9 bits for port + 1).
    public static let maxPorts = 256

    static let macMask: UInt64 = 0xFFFF_FFFF_FFFF
    static let portShift: UInt64 = 48
    static let staticBit: UInt64 = 1 << 57

    let segments: [Segment]
    /// Two words per slot: key at 2i, lastSeen at 2i + 1.
    private let slots: UnsafeMutablePointer<Atomic<UInt64>>
    private let slotCount: Int
    /// Per segment, a cache line of its own: [lock, dynamic count, static count].
    private let segmentState: UnsafeMutablePointer<Atomic<UInt64>>
    /// Learned (dynamic) entries per port.
    private let portEntries: UnsafeMutablePointer<Atomic<Int64>>
    private let portCount: Int
    let seed: UInt64

    private static let stateStride = 8

    /// - Parameters:
    ///   - settings: per segment, its table settings and the static MACs of its ports.
    ///   - portCount: number of ports (indexes used in `statics` and `learn`), at most 256.
    public init(segments settings: [(settings: MACTableSettings, statics: [(mac: MACAddress, port: Int)])],
                portCount: Int, seed: UInt64 = UInt64.random(in: 1 ... .max)) {
        precondition(portCount >= 0 && portCount <= SegmentTable.maxPorts, "a MAC table names at most 256 ports")
        self.seed = seed | 1
        var segments: [Segment] = []
        var total = 0
        for (config, statics) in settings {
            let wanted = max(0, min(config.maxEntries, SegmentTable.maxCapacity)) + statics.count
            var capacity = 16
            while capacity < 2 * wanted && capacity < SegmentTable.maxCapacity { capacity <<= 1 }
            let (aging, overflow) = UInt64(max(0, config.agingSeconds)).multipliedReportingOverflow(by: 1_000_000_000)
            let agingNanoseconds = overflow ? UInt64.max : aging
            segments.append(Segment(base: total, mask: capacity - 1, probe: min(SegmentTable.maxProbe, capacity),
                                    shift: UInt64(64 - capacity.trailingZeroBitCount),
                                    maxEntries: max(0, config.maxEntries),
                                    maxEntriesPerPort: max(0, config.maxEntriesPerPort),
                                    agingNanoseconds: agingNanoseconds,
                                    refreshNanoseconds: min(agingNanoseconds / 8, 1_000_000_000)))
            total += capacity
        }
        self.segments = segments
        slotCount = total
        slots = .allocate(capacity: max(1, 2 * total))
        for i in 0..<max(1, 2 * total) { (slots + i).initialize(to: Atomic(0)) }
        let stateWords = max(1, segments.count * SegmentTable.stateStride)
        segmentState = .allocate(capacity: stateWords)
        for i in 0..<stateWords { (segmentState + i).initialize(to: Atomic(0)) }
        self.portCount = portCount
        portEntries = .allocate(capacity: max(1, portCount))
        for i in 0..<max(1, portCount) { (portEntries + i).initialize(to: Atomic(0)) }
        for (index, (_, statics)) in settings.enumerated() {
            for entry in statics { installStatic(segment: index, mac: entry.mac.rawValue, port: entry.port) }
        }
    }

    deinit {
        slots.deinitialize(count: max(1, 2 * slotCount)).deallocate()
        segmentState.deinitialize(count: max(1, segments.count * SegmentTable.stateStride)).deallocate()
        portEntries.deinitialize(count: max(1, portCount)).deallocate()
    }

    // MARK: Slot and counter access

    @inline(__always) private func key(_ slot: Int) -> UnsafeMutablePointer<Atomic<UInt64>> { slots + 2 &* slot }
    @inline(__always) private func lastSeen(_ slot: Int) -> UnsafeMutablePointer<Atomic<UInt64>> { slots + (2 &* slot &+ 1) }
    @inline(__always) private func lock(_ segment: Int) -> UnsafeMutablePointer<Atomic<UInt64>> {
        segmentState + segment &* SegmentTable.stateStride
    }
    @inline(__always) private func dynamicCount(_ segment: Int) -> UnsafeMutablePointer<Atomic<UInt64>> {
        segmentState + (segment &* SegmentTable.stateStride &+ 1)
    }
    @inline(__always) private func staticCount(_ segment: Int) -> UnsafeMutablePointer<Atomic<UInt64>> {
        segmentState + (segment &* SegmentTable.stateStride &+ 2)
    }

    @inline(__always) static func word(mac: UInt64, port: Int, isStatic: Bool) -> UInt64 {
        (mac & macMask) | UInt64(port + 1) << portShift | (isStatic ? staticBit : 0)
    }
    @inline(__always) static func port(of word: UInt64) -> Int { Int(truncatingIfNeeded: (word >> portShift) & 0x1FF) - 1 }

    /// One try at the segment's lock; a loser never waits.
    private func tryLock(_ segment: Int) -> Bool {
        lock(segment).pointee.compareExchange(expected: 0, desired: 1, ordering: .acquiring).exchanged
    }
    private func unlock(_ segment: Int) { lock(segment).pointee.store(0, ordering: .releasing) }

    /// Number of segments.
    public var segmentCount: Int { segments.count }

    /// Entries (static and learned) in `segment`.
    public func entryCount(segment: Int) -> Int {
        Int(dynamicCount(segment).pointee.load(ordering: .relaxed) + staticCount(segment).pointee.load(ordering: .relaxed))
    }

    /// Learned entries held by `port`.
    public func learnedEntries(port: Int) -> Int { Int(portEntries[port].load(ordering: .relaxed)) }

    /// Slots of `segment`: the bound on its memory.
    public func capacity(segment: Int) -> Int { segments[segment].mask + 1 }

    @inline(__always)
    func home(_ mac: UInt64, _ segment: Segment) -> Int {
        Int(truncatingIfNeeded: (((mac &* 0x9E37_79B9_7F4A_7C15) ^ seed) &* seed) >> segment.shift) & segment.mask
    }

    @inline(__always)
    static func isExpired(lastSeen: UInt64, now: UInt64, aging: UInt64) -> Bool {
        now > lastSeen && now - lastSeen >= aging
    }

    private func installStatic(segment index: Int, mac: UInt64, port: Int) {
        let segment = segments[index]
        var position = home(mac, segment)
        for _ in 0...segment.mask {
            let slot = segment.base + position
            let word = key(slot).pointee.load(ordering: .relaxed)
            if word == 0 || word & SegmentTable.macMask == mac {
                if word == 0 { staticCount(index).pointee.add(1, ordering: .relaxed) }
                key(slot).pointee.store(SegmentTable.word(mac: mac, port: port, isStatic: true), ordering: .releasing)
                return
            }
            position = (position + 1) & segment.mask
        }
    }

    // MARK: Lock-free reads

    /// The port `mac` was learned on (or is configured on) in `segment`. An aged entry counts as
    /// absent (and is removed, when the segment's lock is free).
    @inline(__always)
    public func lookup(segment index: Int, mac: UInt64, now: UInt64) -> Int? {
        let segment = segments[index]
        var position = home(mac, segment)
        for _ in 0..<segment.probe {
            let slot = segment.base &+ position
            let word = key(slot).pointee.load(ordering: .acquiring)
            if word == 0 { return nil }
            if word & SegmentTable.macMask == mac {
                if word & SegmentTable.staticBit == 0,
                   SegmentTable.isExpired(lastSeen: lastSeen(slot).pointee.load(ordering: .relaxed), now: now,
                                          aging: segment.agingNanoseconds) {
                    removeIfExpired(segment: index, mac: mac, now: now)
                    return nil
                }
                return SegmentTable.port(of: word)
            }
            position = (position &+ 1) & segment.mask
        }
        return nil
    }

    /// Learns that `mac` is behind `port` in `segment` at time `now`.
    @inline(__always)
    public func learn(segment index: Int, mac: UInt64, port: Int, now: UInt64) -> LearnOutcome {
        let segment = segments[index]
        // Lock-free: the MAC is already known on this port (or statically anywhere).
        var position = home(mac, segment)
        for _ in 0..<segment.probe {
            let slot = segment.base &+ position
            let word = key(slot).pointee.load(ordering: .acquiring)
            if word == 0 { break }
            if word & SegmentTable.macMask == mac {
                let samePort = SegmentTable.port(of: word) == port
                if word & SegmentTable.staticBit != 0 { return samePort ? .refreshed : .refused }
                guard samePort else { break }
                let seen = lastSeen(slot).pointee.load(ordering: .relaxed)
                if SegmentTable.isExpired(lastSeen: seen, now: now, aging: segment.agingNanoseconds) { break }
                if now > seen && now - seen >= segment.refreshNanoseconds {
                    lastSeen(slot).pointee.store(now, ordering: .relaxed)
                }
                return .refreshed
            }
            position = (position &+ 1) & segment.mask
        }
        guard tryLock(index) else { return .busy }
        defer { unlock(index) }
        return learnLocked(segment: index, mac: mac, port: port, now: now)
    }

    // MARK: Changes (under the segment's lock)

    private func learnLocked(segment index: Int, mac: UInt64, port: Int, now: UInt64) -> LearnOutcome {
        let segment = segments[index]
        var position = home(mac, segment)
        var free = -1
        var reusable = -1
        for _ in 0..<segment.probe {
            let slot = segment.base + position
            let word = key(slot).pointee.load(ordering: .relaxed)
            if word == 0 {
                free = position
                break
            }
            let seen = lastSeen(slot).pointee.load(ordering: .relaxed)
            if word & SegmentTable.macMask == mac {
                let previous = SegmentTable.port(of: word)
                if word & SegmentTable.staticBit != 0 { return previous == port ? .refreshed : .refused }
                if previous == port {
                    lastSeen(slot).pointee.store(now, ordering: .relaxed)
                    return .refreshed
                }
                // A dynamic entry moves to the port that now sends from it (a VM moved, a
                // failover), within the new port's limit.
                guard learnedEntries(port: port) < segment.maxEntriesPerPort else { return .refused }
                portEntries[previous].subtract(1, ordering: .relaxed)
                portEntries[port].add(1, ordering: .relaxed)
                lastSeen(slot).pointee.store(now, ordering: .relaxed)
                key(slot).pointee.store(SegmentTable.word(mac: mac, port: port, isStatic: false), ordering: .releasing)
                return .moved
            }
            if reusable < 0 && word & SegmentTable.staticBit == 0
                && SegmentTable.isExpired(lastSeen: seen, now: now, aging: segment.agingNanoseconds) {
                reusable = position
            }
            position = (position + 1) & segment.mask
        }
        if reusable >= 0 {
            // Take over an aged entry's slot: the segment's count stays the same.
            let slot = segment.base + reusable
            let previous = SegmentTable.port(of: key(slot).pointee.load(ordering: .relaxed))
            let held = learnedEntries(port: port) - (previous == port ? 1 : 0)
            guard held < segment.maxEntriesPerPort else { return .refused }
            portEntries[previous].subtract(1, ordering: .relaxed)
            portEntries[port].add(1, ordering: .relaxed)
            lastSeen(slot).pointee.store(now, ordering: .relaxed)
            key(slot).pointee.store(SegmentTable.word(mac: mac, port: port, isStatic: false), ordering: .releasing)
            return .learned
        }
        guard free >= 0, learnedEntries(port: port) < segment.maxEntriesPerPort,
              Int(dynamicCount(index).pointee.load(ordering: .relaxed)) < segment.maxEntries
        else { return .refused }
        let slot = segment.base + free
        lastSeen(slot).pointee.store(now, ordering: .relaxed)
        key(slot).pointee.store(SegmentTable.word(mac: mac, port: port, isStatic: false), ordering: .releasing)
        portEntries[port].add(1, ordering: .relaxed)
        dynamicCount(index).pointee.add(1, ordering: .relaxed)
        return .learned
    }

    /// Removes `mac`'s entry if it has aged, when the segment's lock is free (else a later
    /// lookup or `expire` does).
    private func removeIfExpired(segment index: Int, mac: UInt64, now: UInt64) {
        guard tryLock(index) else { return }
        defer { unlock(index) }
        let segment = segments[index]
        var position = home(mac, segment)
        for _ in 0..<segment.probe {
            let slot = segment.base + position
            let word = key(slot).pointee.load(ordering: .relaxed)
            if word == 0 { return }
            if word & SegmentTable.macMask == mac {
                if word & SegmentTable.staticBit == 0,
                   SegmentTable.isExpired(lastSeen: lastSeen(slot).pointee.load(ordering: .relaxed), now: now,
                                          aging: segment.agingNanoseconds) {
                    remove(segment: index, position: position)
                }
                return
            }
            position = (position + 1) & segment.mask
        }
    }

    /// Frees the slot at `position` of `segment` and shifts back the entries of its probe run.
    /// The caller holds the segment's lock.
    private func remove(segment index: Int, position start: Int) {
        let segment = segments[index]
        let removed = key(segment.base + start).pointee.load(ordering: .relaxed)
        guard removed != 0 else { return }
        if removed & SegmentTable.staticBit != 0 {
            staticCount(index).pointee.subtract(1, ordering: .relaxed)
        } else {
            dynamicCount(index).pointee.subtract(1, ordering: .relaxed)
            portEntries[SegmentTable.port(of: removed)].subtract(1, ordering: .relaxed)
        }
        var hole = start
        var next = start
        while true {
            next = (next + 1) & segment.mask
            let word = key(segment.base + next).pointee.load(ordering: .relaxed)
            if word == 0 || next == start { break }
            let wanted = home(word & SegmentTable.macMask, segment)
            // The entry may move into the hole only if its home is not cyclically in (hole, next].
            let stays = hole <= next ? (hole < wanted && wanted <= next) : (hole < wanted || wanted <= next)
            if stays { continue }
            lastSeen(segment.base + hole).pointee.store(lastSeen(segment.base + next).pointee.load(ordering: .relaxed),
                                                         ordering: .relaxed)
            key(segment.base + hole).pointee.store(word, ordering: .releasing)
            hole = next
        }
        key(segment.base + hole).pointee.store(0, ordering: .releasing)
    }

    /// Removes, under the segment's lock, every entry `matches` selects. Returns false when the
    /// lock was taken (nothing changed).
    private func removeAll(segment index: Int, where matches: (UInt64, UInt64) -> Bool) -> Bool {
        guard tryLock(index) else { return false }
        defer { unlock(index) }
        let segment = segments[index]
        var position = 0
        while position <= segment.mask {
            let slot = segment.base + position
            let word = key(slot).pointee.load(ordering: .relaxed)
            if word != 0 && matches(word, lastSeen(slot).pointee.load(ordering: .relaxed)) {
                // The shift may pull another entry into this slot: look at it again.
                remove(segment: index, position: position)
                continue
            }
            position += 1
        }
        return true
    }

    /// Forgets every learned entry not refreshed within its segment's aging time. Safe from any
    /// thread while workers forward; a segment whose lock is held at that moment is left for the
    /// next call.
    public func expire(now: UInt64) {
        for index in segments.indices {
            let segment = segments[index]
            let aging = segment.agingNanoseconds
            // A lock-free look first: the lock is taken only where something has aged.
            var found = false
            for slot in segment.base...(segment.base + segment.mask) {
                let word = key(slot).pointee.load(ordering: .relaxed)
                if word != 0 && word & SegmentTable.staticBit == 0
                    && SegmentTable.isExpired(lastSeen: lastSeen(slot).pointee.load(ordering: .relaxed), now: now, aging: aging) {
                    found = true
                    break
                }
            }
            guard found else { continue }
            _ = removeAll(segment: index) { word, seen in
                word & SegmentTable.staticBit == 0 && SegmentTable.isExpired(lastSeen: seen, now: now, aging: aging)
            }
        }
    }

    /// Forgets every learned entry of `port` (for example when the port goes away). Retries a
    /// segment whose lock another thread holds.
    public func flush(port: Int) {
        for index in segments.indices {
            while !removeAll(segment: index, where: { word, _ in
                word & SegmentTable.staticBit == 0 && SegmentTable.port(of: word) == port
            }) {}
        }
    }
}
