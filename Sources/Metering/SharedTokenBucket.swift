import Synchronization

/// A token bucket that several threads take from at once, without a lock: the switch's per-port
/// rate limit and storm control, shared by every packet worker that serves one of the port's
/// queues, so the port's limit holds across all of them together.
///
/// Same arithmetic as `TokenBucket` (nano-tokens, saturating products, a clock that goes
/// backwards refills nothing), in two atomic words:
/// - `credit`: nano-tokens available. Every take is one compare-and-swap that only succeeds if
///   the credit it saw covers the cost, so takes never sum to more than the credit there was.
/// - `last`: the refill clock. A refill first moves `last` forward with a compare-and-swap; only
///   the thread that moved it adds the credit earned over that interval, so no interval is paid
///   twice. Refills happen at most every `SharedTokenBuckets.refillGranularity` ns: tokens earned in the
///   last microsecond may wait for the next refill (never more than the rate), and at high frame
///   rates most takes skip the clock's compare-and-swap.
///
/// Over any interval of length T the takes of all threads together sum to at most
/// `burst + rate x T` tokens, as for one `TokenBucket`.
public final class SharedTokenBucket: Sendable {
    private let buckets: SharedTokenBuckets

    /// A full bucket whose refill clock starts at `now`.
    public init(rate: UInt64, burst: UInt64, now: UInt64 = 0) {
        buckets = SharedTokenBuckets([(rate, burst)], now: now)
    }

    /// Tokens added per second.
    public var rate: UInt64 { buckets.rate(0) }
    /// Depth of the bucket in tokens.
    public var burst: UInt64 { buckets.burst(0) }
    /// Whole tokens available (after the last refill).
    public var available: UInt64 { buckets.available(0) }

    /// Adds the credit earned since the last refill, unless another thread just did.
    public func refill(now: UInt64) { buckets.refill(0, now: now) }
    /// Takes `tokens` if they are all there; returns whether it did. Does not refill.
    public func take(_ tokens: UInt64) -> Bool { buckets.take(0, tokens) }
    /// Gives back `tokens` an earlier `take` took (the bucket never grows past its depth).
    public func giveBack(_ tokens: UInt64) { buckets.giveBack(0, tokens) }
    /// Refills, then takes `tokens` if they are all there. Returns whether it did.
    public func consume(_ tokens: UInt64, now: UInt64) -> Bool { buckets.consume(0, tokens, now: now) }
}

/// Many `SharedTokenBucket`s in one block of memory, each on a cache line of its own (no false
/// sharing between two ports' policers), addressed by index: no object and no reference count
/// per bucket on the per-frame path.
public final class SharedTokenBuckets: @unchecked Sendable {
    // @unchecked Sendable: the mutable words are atomics in memory this object owns; the
    // parameters never change after init.

    /// Refills closer together than this are left to a later take.
    public static let refillGranularity: UInt64 = 1_000

    /// Per bucket: credit, last, then the constants rate, capacity and burst; 8 words (64 bytes).
    @usableFromInline static let stride = 8
    @usableFromInline let count: Int
    @usableFromInline let words: UnsafeMutablePointer<Atomic<UInt64>>

    /// Full buckets (rate and burst in tokens) whose refill clocks start at `now`.
    public init(_ parameters: [(rate: UInt64, burst: UInt64)], now: UInt64 = 0) {
        count = parameters.count
        let total = max(1, count) * SharedTokenBuckets.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: total * 8, alignment: 64)
        words = raw.bindMemory(to: Atomic<UInt64>.self, capacity: total)
        for i in 0..<total { (words + i).initialize(to: Atomic(0)) }
        for (index, (rate, burst)) in parameters.enumerated() {
            let (capacity, overflow) = burst.multipliedReportingOverflow(by: TokenBucket.scale)
            let base = words + index * SharedTokenBuckets.stride
            base[0].store(overflow ? .max : capacity, ordering: .relaxed)
            base[1].store(now, ordering: .relaxed)
            base[2].store(rate, ordering: .relaxed)
            base[3].store(overflow ? .max : capacity, ordering: .relaxed)
            base[4].store(burst, ordering: .relaxed)
        }
    }

    deinit {
        words.deinitialize(count: max(1, count) * SharedTokenBuckets.stride)
        UnsafeMutableRawPointer(words).deallocate()
    }

    // The per-frame path (`consume`, `refill`, `take`) is @inlinable: the switch calls it from
    // another module for every policed frame.
    @inlinable @inline(__always)
    func base(_ bucket: Int) -> UnsafeMutablePointer<Atomic<UInt64>> {
        precondition(bucket >= 0 && bucket < count, "no such bucket")
        return words + bucket &* SharedTokenBuckets.stride
    }

    public func rate(_ bucket: Int) -> UInt64 { base(bucket)[2].load(ordering: .relaxed) }
    public func burst(_ bucket: Int) -> UInt64 { base(bucket)[4].load(ordering: .relaxed) }

    /// Whole tokens available in `bucket` (after its last refill).
    public func available(_ bucket: Int) -> UInt64 { base(bucket)[0].load(ordering: .relaxed) / TokenBucket.scale }

    /// Adds the credit `bucket` earned since its last refill, unless another thread just did.
    @inlinable @inline(__always)
    public func refill(_ bucket: Int, now: UInt64) {
        refill(base(bucket), now: now)
    }

    @inlinable @inline(__always)
    func refill(_ b: UnsafeMutablePointer<Atomic<UInt64>>, now: UInt64) {
        let previous = b[1].load(ordering: .relaxed)
        guard now > previous, now - previous >= SharedTokenBuckets.refillGranularity else { return }
        guard b[1].compareExchange(expected: previous, desired: now, ordering: .relaxed).exchanged else { return }
        let (earned, overflow) = (now - previous).multipliedReportingOverflow(by: b[2].load(ordering: .relaxed))
        add(b, overflow ? .max : earned)
    }

    /// Adds nano-tokens, saturating at the bucket's depth.
    @usableFromInline func add(_ b: UnsafeMutablePointer<Atomic<UInt64>>, _ nanoTokens: UInt64) {
        let capacity = b[3].load(ordering: .relaxed)
        var current = b[0].load(ordering: .relaxed)
        while true {
            let (sum, overflow) = current.addingReportingOverflow(nanoTokens)
            let next = overflow || sum > capacity ? capacity : sum
            let (exchanged, original) = b[0].compareExchange(expected: current, desired: next, ordering: .relaxed)
            if exchanged { return }
            current = original
        }
    }

    /// Takes `tokens` from `bucket` if they are all there; returns whether it did. Does not refill.
    @inlinable @inline(__always)
    public func take(_ bucket: Int, _ tokens: UInt64) -> Bool {
        take(base(bucket), tokens)
    }

    @inlinable @inline(__always)
    func take(_ b: UnsafeMutablePointer<Atomic<UInt64>>, _ tokens: UInt64) -> Bool {
        let (needed, overflow) = tokens.multipliedReportingOverflow(by: TokenBucket.scale)
        guard !overflow else { return false }
        var current = b[0].load(ordering: .relaxed)
        while current >= needed {
            let (exchanged, original) = b[0].compareExchange(expected: current, desired: current - needed,
                                                             ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// Gives back `tokens` an earlier `take` took, when a later check refused the frame (the
    /// bucket never grows past its depth).
    public func giveBack(_ bucket: Int, _ tokens: UInt64) {
        let (returned, overflow) = tokens.multipliedReportingOverflow(by: TokenBucket.scale)
        add(base(bucket), overflow ? .max : returned)
    }

    /// Refills `bucket`, then takes `tokens` if they are all there. Returns whether it did.
    @inlinable @inline(__always)
    public func consume(_ bucket: Int, _ tokens: UInt64, now: UInt64) -> Bool {
        let b = base(bucket)
        refill(b, now: now)
        return take(b, tokens)
    }
}
