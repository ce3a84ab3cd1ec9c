import Config

/// One slot of a segment's MAC table.
struct MACEntry {
    static let empty = MACEntry(mac: 0, lastSeen: 0, port: -1, isStatic: false)
    var mac: UInt64
    var lastSeen: UInt64
    /// Port index, or -1 for a free slot.
    var port: Int32
    var isStatic: Bool

    init(mac: UInt64, lastSeen: UInt64, port: Int32, isStatic: Bool) {
        self.mac = mac; self.lastSeen = lastSeen; self.port = port; self.isStatic = isStatic
    }

    var isFree: Bool { port < 0 }
}

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
}

/// The MAC tables of all segments in one flat slot array: per segment a power-of-two,
/// linear-probing open-addressing table with a bounded probe window and backward-shift deletion
/// (no tombstones). Nothing allocates after `init`.
///
/// A segment's capacity is twice its entries (learned maximum plus static port MACs), rounded up
/// to a power of two, so the load factor stays at or under one half and the bounded probe window
/// rarely refuses a MAC the limits allow. Learned entries age out after `agingSeconds` (lazily on
/// lookup, and in bulk in `expire`); static entries never age or move and count against no limit.
/// A live entry of one port is never evicted for another port's MAC.
public struct SegmentTable: Sendable {
    struct Segment: Sendable {
        var base: Int
        var mask: Int
        var shift: UInt64
        var maxEntries: Int
        var maxEntriesPerPort: Int
        var agingNanoseconds: UInt64
        var dynamicCount: Int
        var staticCount: Int
    }

    /// Slots inspected from a MAC's home slot before giving up.
    public static let maxProbe = 32
    /// Largest slot count of one segment: bounds memory whatever the configuration says.
    public static let maxCapacity = 1 << 20

    var slots: [MACEntry]
    var segments: [Segment]
    /// Learned (dynamic) entries per port.
    var portEntries: [Int32]
    let seed: UInt64

    /// - Parameters:
    ///   - settings: per segment, its table settings and the static MACs of its ports.
    ///   - portCount: number of ports (indexes used in `statics` and `learn`).
    public init(segments settings: [(settings: MACTableSettings, statics: [(mac: MACAddress, port: Int)])],
                portCount: Int, seed: UInt64 = UInt64.random(in: 1 ... .max)) {
        self.seed = seed | 1
        var segments: [Segment] = []
        var total = 0
        for (config, statics) in settings {
            let wanted = max(0, min(config.maxEntries, SegmentTable.maxCapacity)) + statics.count
            var capacity = 16
            while capacity < 2 * wanted && capacity < SegmentTable.maxCapacity { capacity <<= 1 }
            let (aging, overflow) = UInt64(max(0, config.agingSeconds)).multipliedReportingOverflow(by: 1_000_000_000)
            segments.append(Segment(base: total, mask: capacity - 1,
                                    shift: UInt64(64 - capacity.trailingZeroBitCount),
                                    maxEntries: max(0, config.maxEntries),
                                    maxEntriesPerPort: max(0, config.maxEntriesPerPort),
                                    agingNanoseconds: overflow ? .max : aging, dynamicCount: 0, staticCount: 0))
            total += capacity
        }
        self.segments = segments
        self.slots = Array(repeating: .empty, count: total)
        self.portEntries = Array(repeating: 0, count: portCount)
        for (index, (_, statics)) in settings.enumerated() {
            for entry in statics { installStatic(segment: index, mac: entry.mac.rawValue, port: entry.port) }
        }
    }

    /// Number of segments.
    public var segmentCount: Int { segments.count }

    /// Entries (static and learned) in `segment`.
    public func entryCount(segment: Int) -> Int {
        segments[segment].dynamicCount + segments[segment].staticCount
    }

    /// Learned entries held by `port`.
    public func learnedEntries(port: Int) -> Int { Int(portEntries[port]) }

    /// Slots of `segment`: the bound on its memory.
    public func capacity(segment: Int) -> Int { segments[segment].mask + 1 }

    func home(_ mac: UInt64, _ segment: Segment) -> Int {
        Int(truncatingIfNeeded: (((mac &* 0x9E37_79B9_7F4A_7C15) ^ seed) &* seed) >> segment.shift) & segment.mask
    }

    func isExpired(_ entry: MACEntry, now: UInt64, aging: UInt64) -> Bool {
        !entry.isStatic && now > entry.lastSeen && now - entry.lastSeen >= aging
    }

    private mutating func installStatic(segment index: Int, mac: UInt64, port: Int) {
        let segment = segments[index]
        var position = home(mac, segment)
        for _ in 0...segment.mask {
            let slot = segment.base + position
            if slots[slot].isFree || slots[slot].mac == mac {
                if slots[slot].isFree { segments[index].staticCount += 1 }
                slots[slot] = MACEntry(mac: mac, lastSeen: 0, port: Int32(port), isStatic: true)
                return
            }
            position = (position + 1) & segment.mask
        }
    }

    /// The port `mac` was learned on (or is configured on) in `segment`; forgets an aged entry.
    public mutating func lookup(segment index: Int, mac: UInt64, now: UInt64) -> Int? {
        let segment = segments[index]
        var position = home(mac, segment)
        for _ in 0..<min(SegmentTable.maxProbe, segment.mask + 1) {
            let entry = slots[segment.base + position]
            if entry.isFree { return nil }
            if entry.mac == mac {
                if isExpired(entry, now: now, aging: segment.agingNanoseconds) {
                    remove(segment: index, position: position)
                    return nil
                }
                return Int(entry.port)
            }
            position = (position + 1) & segment.mask
        }
        return nil
    }

    /// Learns that `mac` is behind `port` in `segment` at time `now`.
    public mutating func learn(segment index: Int, mac: UInt64, port: Int, now: UInt64) -> LearnOutcome {
        let segment = segments[index]
        var position = home(mac, segment)
        var free = -1
        var reusable = -1
        for _ in 0..<min(SegmentTable.maxProbe, segment.mask + 1) {
            let slot = segment.base + position
            let entry = slots[slot]
            if entry.isFree {
                free = position
                break
            }
            if entry.mac == mac {
                if entry.isStatic { return entry.port == Int32(port) ? .refreshed : .refused }
                if entry.port == Int32(port) {
                    slots[slot].lastSeen = now
                    return .refreshed
                }
                // A dynamic entry moves to the port that now sends from it (a VM moved, a
                // failover), within the new port's limit.
                guard Int(portEntries[port]) < segment.maxEntriesPerPort else { return .refused }
                portEntries[Int(entry.port)] -= 1
                portEntries[port] += 1
                slots[slot].port = Int32(port)
                slots[slot].lastSeen = now
                return .moved
            }
            if reusable < 0 && isExpired(entry, now: now, aging: segment.agingNanoseconds) { reusable = position }
            position = (position + 1) & segment.mask
        }
        if reusable >= 0 {
            // Take over an aged entry's slot: the segment's count stays the same.
            let slot = segment.base + reusable
            let previous = Int(slots[slot].port)
            let held = Int(portEntries[port]) - (previous == port ? 1 : 0)
            guard held < segment.maxEntriesPerPort else { return .refused }
            portEntries[previous] -= 1
            portEntries[port] += 1
            slots[slot] = MACEntry(mac: mac, lastSeen: now, port: Int32(port), isStatic: false)
            return .learned
        }
        guard free >= 0, Int(portEntries[port]) < segment.maxEntriesPerPort,
              segment.dynamicCount < segment.maxEntries
        else { return .refused }
        slots[segment.base + free] = MACEntry(mac: mac, lastSeen: now, port: Int32(port), isStatic: false)
        portEntries[port] += 1
        segments[index].dynamicCount += 1
        return .learned
    }

    /// Frees the slot at `position` of `segment` and shifts back the entries of its probe run.
    mutating func remove(segment index: Int, position start: Int) {
        let segment = segments[index]
        let removed = slots[segment.base + start]
        guard !removed.isFree else { return }
        if removed.isStatic {
            segments[index].staticCount -= 1
        } else {
            segments[index].dynamicCount -= 1
            portEntries[Int(removed.port)] -= 1
        }
        var hole = start
        var next = start
        while true {
            next = (next + 1) & segment.mask
            let entry = slots[segment.base + next]
            if entry.isFree || next == start { break }
            let wanted = home(entry.mac, segment)
            // The entry may move into the hole only if its home is not cyclically in (hole, next].
            let stays = hole <= next ? (hole < wanted && wanted <= next) : (hole < wanted || wanted <= next)
            if stays { continue }
            slots[segment.base + hole] = entry
            hole = next
        }
        slots[segment.base + hole] = .empty
    }

    /// Forgets every learned entry not refreshed within its segment's aging time.
    public mutating func expire(now: UInt64) {
        for index in segments.indices {
            let segment = segments[index]
            var position = 0
            while position <= segment.mask {
                let entry = slots[segment.base + position]
                if !entry.isFree && isExpired(entry, now: now, aging: segment.agingNanoseconds) {
                    // The shift may pull another entry into this slot: look at it again.
                    remove(segment: index, position: position)
                    continue
                }
                position += 1
            }
        }
    }

    /// Forgets every learned entry of `port` (for example when the port goes away).
    public mutating func flush(port: Int) {
        for index in segments.indices {
            let segment = segments[index]
            var position = 0
            while position <= segment.mask {
                let entry = slots[segment.base + position]
                if !entry.isFree && !entry.isStatic && Int(entry.port) == port {
                    remove(segment: index, position: position)
                    continue
                }
                position += 1
            }
        }
    }
}
