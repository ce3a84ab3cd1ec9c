import HostOS
import Logging
import Metering
import Synchronization

/// Warnings a guest can trigger (a malformed chain, a request the device refuses), rate limited
/// per device: a driver that sends a bad request every microsecond must not fill the host's
/// disk with log lines. Up to `burst` warnings are logged at once and `perSecond` after that;
/// the rest are counted, and the count of those suppressed rides on the next warning logged
/// (`log.suppressed`) and stays readable in `suppressed`.
final class GuestWarnings: Sendable {
    private struct State {
        var bucket: TokenBucket
        var pending: UInt64 = 0
        var suppressedTotal: UInt64 = 0
    }

    private let state: Mutex<State>
    private let logger: Logger

    init(logger: Logger, perSecond: UInt64 = 10, burst: UInt64 = 20, now: UInt64 = monotonicNanoseconds()) {
        self.logger = logger
        state = Mutex(State(bucket: TokenBucket(rate: perSecond, burst: burst, now: now)))
    }

    /// Every warning suppressed so far.
    var suppressed: UInt64 { state.withLock { $0.suppressedTotal } }

    /// Logs `message` at warning level unless the rate is exceeded, in which case it is counted.
    func warn(_ message: @autoclosure () -> Logger.Message, metadata: @autoclosure () -> Logger.Metadata,
              now: UInt64 = monotonicNanoseconds()) {
        let skipped: UInt64? = state.withLock { s in
            guard s.bucket.consume(1, now: now) else {
                s.pending &+= 1
                s.suppressedTotal &+= 1
                return nil
            }
            defer { s.pending = 0 }
            return s.pending
        }
        guard let skipped else { return }
        var fields = metadata()
        if skipped > 0 { fields["log.suppressed"] = "\(skipped)" }
        logger.warning(message(), metadata: fields)
    }

    /// Logs how many warnings were suppressed since the last one logged, if any (when a queue
    /// stops, so a flood that ended is still accounted for).
    func flush(metadata: Logger.Metadata) {
        let skipped = state.withLock { s -> UInt64 in
            defer { s.pending = 0 }
            return s.pending
        }
        guard skipped > 0 else { return }
        var fields = metadata
        fields["log.suppressed"] = "\(skipped)"
        logger.warning("virtio-blk: guest-triggered warnings suppressed by the rate limit", metadata: fields)
    }
}
