/// A token bucket in integer arithmetic on CLOCK_MONOTONIC nanoseconds.
///
/// Credit is kept in nano-tokens (tokens x 10^9) so that refilling is `elapsed_ns x rate` with no
/// division and no rounding drift. Every product saturates instead of overflowing, so any `now`
/// (including jumps of UInt64-scale) is safe; a clock that goes backwards refills nothing.
/// The depth is clamped to about 1.8 x 10^10 tokens (UInt64.max nano-tokens).
public struct TokenBucket: Sendable, Equatable {
    @usableFromInline static let scale: UInt64 = 1_000_000_000

    /// Tokens added per second.
    public let rate: UInt64
    /// Depth of the bucket in tokens.
    public let burst: UInt64
    @usableFromInline let capacity: UInt64
    @usableFromInline var credit: UInt64
    @usableFromInline var last: UInt64

    /// A full bucket whose refill clock starts at `now`.
    public init(rate: UInt64, burst: UInt64, now: UInt64 = 0) {
        self.rate = rate
        self.burst = burst
        let (capacity, overflow) = burst.multipliedReportingOverflow(by: TokenBucket.scale)
        self.capacity = overflow ? .max : capacity
        self.credit = self.capacity
        self.last = now
    }

    /// Whole tokens available now (after the last refill).
    public var available: UInt64 { credit / TokenBucket.scale }

    /// Adds the credit earned since the last refill.
    @inlinable public mutating func refill(now: UInt64) {
        guard now > last else { return }
        let elapsed = now - last
        last = now
        let (earned, overflow) = elapsed.multipliedReportingOverflow(by: rate)
        let (sum, overflow2) = credit.addingReportingOverflow(earned)
        credit = overflow || overflow2 || sum > capacity ? capacity : sum
    }

    /// Whether `tokens` could be taken without refilling.
    @inlinable public func canTake(_ tokens: UInt64) -> Bool {
        let (needed, overflow) = tokens.multipliedReportingOverflow(by: TokenBucket.scale)
        return !overflow && needed <= credit
    }

    /// Takes `tokens`; the caller checked `canTake`. Takes what is left when there is less.
    @inlinable public mutating func take(_ tokens: UInt64) {
        let (needed, overflow) = tokens.multipliedReportingOverflow(by: TokenBucket.scale)
        credit = overflow || needed > credit ? 0 : credit - needed
    }

    /// Refills, then takes `tokens` if they are all there. Returns whether it did.
    @inlinable public mutating func consume(_ tokens: UInt64, now: UInt64) -> Bool {
        refill(now: now)
        guard canTake(tokens) else { return false }
        take(tokens)
        return true
    }
}
