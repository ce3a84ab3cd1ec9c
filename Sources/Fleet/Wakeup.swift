import Synchronization

/// Wakes one waiting task early: a signal sent while nobody waits is kept for the next wait.
final class Wakeup: Sendable {
    private struct State {
        var pending = false
        var waiter: (id: UInt64, continuation: CheckedContinuation<Void, Never>)?
        var nextId: UInt64 = 0
    }

    private let state = Mutex(State())

    func signal() {
        let continuation = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard let waiter = state.waiter else { state.pending = true; return nil }
            state.waiter = nil
            return waiter.continuation
        }
        continuation?.resume()
    }

    /// Returns when signalled (or a signal is pending), after `timeout`, or when the task is cancelled.
    func wait(timeout: Duration) async {
        let pending = state.withLock { state in
            defer { state.pending = false }
            return state.pending
        }
        if pending || timeout <= .zero { return }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await Task.sleep(for: timeout) }
            group.addTask { await self.waitForSignal() }
            await group.next()
            group.cancelAll()
        }
    }

    private func waitForSignal() async {
        let id = state.withLock { state in
            state.nextId += 1
            return state.nextId
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    // Cancelled before the handler could find a waiter to resume: do not wait (and
                    // leave a pending signal to the next wait).
                    if Task.isCancelled { return true }
                    if state.pending {
                        state.pending = false
                        return true
                    }
                    state.waiter = (id, continuation)
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let continuation = state.withLock { state -> CheckedContinuation<Void, Never>? in
                guard let waiter = state.waiter, waiter.id == id else { return nil }
                state.waiter = nil
                return waiter.continuation
            }
            continuation?.resume()
        }
    }
}

/// Retry delays after failures: 0.2 s, doubling, at most 2 s; back to 0.2 s after a success.
struct Backoff {
    static let first: Duration = .milliseconds(200)
    static let limit: Duration = .seconds(2)
    private var delay = Backoff.first

    mutating func next() -> Duration {
        defer { delay = min(delay * 2, Backoff.limit) }
        return delay
    }

    mutating func reset() { delay = Backoff.first }
}
