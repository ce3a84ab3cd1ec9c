/// A token bucket in integer arithmetic on CLOCK_MONOTONIC nanoseconds.
///
/// Credit is kept in nano-tokens (tokens x 10^9) so that refilling is `elapsed_ns x rate` with no
/// division and no rounding drift. Every product saturates instead of overflowing, so any `now`
/// (including jumps of UInt64-scale) is safe; a clock that goes backwards refills nothing.
/// The depth is clamped to about 1.8 x 10^10 tokens (UInt64.max nano-tokens).
///
/// A cost larger than the bucket can ever hold (a 4 MiB request against a 1 MiB burst) is taken
/// with `takeAllowingDebt`: the balance goes below zero, refills repay the debt first, and
/// nothing can be taken until it is repaid. The long-run rate holds whatever the cost of one take.
public struct TokenBucket: Sendable, Equatable {
    @usableFromInline static let scale: UInt64 = 1_000_000_000

    /// Tokens added per second.
    public let rate: UInt64
    /// Depth of the bucket in tokens.
    public let burst: UInt64
    @usableFromInline let capacity: UInt64
    @usableFromInline var credit: UInt64
    /// Nano-tokens owed by `takeAllowingDebt`; non-zero only while `credit` is zero.
    @usableFromInline var debt: UInt64 = 0
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

    /// Whole tokens available now (after the last refill); 0 while in debt.
    public var available: UInt64 { credit / TokenBucket.scale }

    /// Whole tokens owed (rounded up) after the last refill.
    public var owed: UInt64 { debt / TokenBucket.scale + (debt % TokenBucket.scale == 0 ? 0 : 1) }

    /// Adds the credit earned since the last refill.
    @inlinable public mutating func refill(now: UInt64) {
        guard now > last else { return }
        let elapsed = now - last
        last = now
        var (earned, overflow) = elapsed.multipliedReportingOverflow(by: rate)
        if debt > 0 {
            // Earned credit repays the debt first.
            if overflow || earned >= debt {
                earned = overflow ? .max : earned - debt
                debt = 0
                overflow = false
            } else {
                debt -= earned
                return
            }
        }
        let (sum, overflow2) = credit.addingReportingOverflow(earned)
        credit = overflow || overflow2 || sum > capacity ? capacity : sum
    }

    /// Whether `tokens` could be taken without refilling (never while a debt is unpaid).
    @inlinable public func canTake(_ tokens: UInt64) -> Bool {
        let (needed, overflow) = tokens.multipliedReportingOverflow(by: TokenBucket.scale)
        return debt == 0 && !overflow && needed <= credit
    }

    /// Takes `tokens`; the caller checked `canTake`. Takes what is left when there is less.
    @inlinable public mutating func take(_ tokens: UInt64) {
        let (needed, overflow) = tokens.multipliedReportingOverflow(by: TokenBucket.scale)
        credit = overflow || needed > credit ? 0 : credit - needed
    }

    /// Takes `tokens` whatever the balance: what the credit does not cover becomes debt, which
    /// later refills repay before anything can be taken again (saturating at UInt64.max
    /// nano-tokens, about 1.8 x 10^10 tokens).
    @inlinable public mutating func takeAllowingDebt(_ tokens: UInt64) {
        let (needed, overflow) = tokens.multipliedReportingOverflow(by: TokenBucket.scale)
        if !overflow && needed <= credit {
            credit -= needed
            return
        }
        let shortfall = overflow ? UInt64.max : needed - credit
        credit = 0
        let (total, overflow2) = debt.addingReportingOverflow(shortfall)
        debt = overflow2 ? .max : total
    }

    /// Nanoseconds from the last refill until `tokens` can be taken (0 when they can now);
    /// UInt64.max when the rate is 0 and they never can.
    @inlinable public func nanosecondsUntil(_ tokens: UInt64) -> UInt64 {
        let (needed, overflow) = tokens.multipliedReportingOverflow(by: TokenBucket.scale)
        if !overflow && debt == 0 && needed <= credit { return 0 }
        guard rate > 0 else { return .max }
        // Credit to earn: the debt, then what `tokens` needs beyond the current credit.
        let missing = overflow ? UInt64.max : needed - min(needed, credit)
        let (total, overflow2) = debt.addingReportingOverflow(missing)
        let nanoTokens = overflow2 ? UInt64.max : total
        // elapsed_ns x rate = nano-tokens earned: round up so the wait is long enough.
        return nanoTokens / rate + (nanoTokens % rate == 0 ? 0 : 1)
    }

    /// Refills, then takes `tokens` if they are all there. Returns whether it did.
    @inlinable public mutating func consume(_ tokens: UInt64, now: UInt64) -> Bool {
        refill(now: now)
        guard canTake(tokens) else { return false }
        take(tokens)
        return true
    }
}
