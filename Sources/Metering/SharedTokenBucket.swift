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
///   twice. Refills happen at most every `refillGranularity` nanoseconds: tokens earned in the
///   last microsecond may wait for the next refill (never more than the rate), and at high frame
///   rates most takes skip the clock's compare-and-swap.
///
/// Over any interval of length T the takes of all threads together sum to at most
/// `burst + rate x T` tokens, as for one `TokenBucket`.
public final class SharedTokenBucket: Sendable {
    /// Tokens added per second.
    public let rate: UInt64
    /// Depth of the bucket in tokens.
    public let burst: UInt64
    private let capacity: UInt64
    private let credit: Atomic<UInt64>
    private let last: Atomic<UInt64>

    /// Refills closer together than this are left to a later take.
    public static let refillGranularity: UInt64 = 1_000

    /// A full bucket whose refill clock starts at `now`.
    public init(rate: UInt64, burst: UInt64, now: UInt64 = 0) {
        self.rate = rate
        self.burst = burst
        let (capacity, overflow) = burst.multipliedReportingOverflow(by: TokenBucket.scale)
        self.capacity = overflow ? .max : capacity
        credit = Atomic(self.capacity)
        last = Atomic(now)
    }

    /// Whole tokens available (after the last refill).
    public var available: UInt64 { credit.load(ordering: .relaxed) / TokenBucket.scale }

    /// Adds the credit earned since the last refill, unless another thread just did.
    @inline(__always)
    public func refill(now: UInt64) {
        let previous = last.load(ordering: .relaxed)
        guard now > previous, now - previous >= SharedTokenBucket.refillGranularity else { return }
        guard last.compareExchange(expected: previous, desired: now, ordering: .relaxed).exchanged else { return }
        let (earned, overflow) = (now - previous).multipliedReportingOverflow(by: rate)
        var current = credit.load(ordering: .relaxed)
        while true {
            let (sum, overflow2) = current.addingReportingOverflow(earned)
            let next = overflow || overflow2 || sum > capacity ? capacity : sum
            let (exchanged, original) = credit.compareExchange(expected: current, desired: next, ordering: .relaxed)
            if exchanged { return }
            current = original
        }
    }

    /// Takes `tokens` if they are all there; returns whether it did. Does not refill.
    @inline(__always)
    public func take(_ tokens: UInt64) -> Bool {
        let (needed, overflow) = tokens.multipliedReportingOverflow(by: TokenBucket.scale)
        guard !overflow else { return false }
        var current = credit.load(ordering: .relaxed)
        while current >= needed {
            let (exchanged, original) = credit.compareExchange(expected: current, desired: current - needed,
                                                               ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// Gives back `tokens` an earlier `take` took, when a later check refused the frame (the
    /// bucket never grows past its depth).
    public func giveBack(_ tokens: UInt64) {
        let (returned, overflow) = tokens.multipliedReportingOverflow(by: TokenBucket.scale)
        var current = credit.load(ordering: .relaxed)
        while true {
            let (sum, overflow2) = current.addingReportingOverflow(returned)
            let next = overflow || overflow2 || sum > capacity ? capacity : sum
            let (exchanged, original) = credit.compareExchange(expected: current, desired: next, ordering: .relaxed)
            if exchanged { return }
            current = original
        }
    }

    /// Refills, then takes `tokens` if they are all there. Returns whether it did.
    @inline(__always)
    public func consume(_ tokens: UInt64, now: UInt64) -> Bool {
        refill(now: now)
        return take(tokens)
    }
}
