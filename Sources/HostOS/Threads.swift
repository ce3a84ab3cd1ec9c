import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// Threads without Foundation: a process that must not load Foundation (the partition VMM)
/// still needs a few long-lived helper threads.
public enum HostThread {
    private final class Start {
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) { self.name = name; self.body = body }
    }

    /// Runs `body` on a new detached thread named `name` (see `setCurrentThreadName`).
    /// The corresponding C function is `pthread_create`.
    public static func start(name: String, _ body: @escaping @Sendable () -> Void) throws(SystemError) {
        let context = Unmanaged.passRetained(Start(name: name, body: body)).toOpaque()
        var thread = pthread_t()
        let r = pthread_create(&thread, nil, { context in
            guard let context else { return nil }
            let start = Unmanaged<Start>.fromOpaque(context).takeRetainedValue()
            setCurrentThreadName(start.name)
            start.body()
            return nil
        }, context)
        if r != 0 {
            Unmanaged<Start>.fromOpaque(context).release()
            throw SystemError("pthread_create(\(name))", errno: r)
        }
        pthread_detach(thread)
    }
}

/// Sleeps the calling thread for `nanoseconds`, resuming after signals.
/// The corresponding C function is `nanosleep`.
public func sleepNanoseconds(_ nanoseconds: UInt64) {
    var request = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
    var remaining = timespec()
    while nanosleep(&request, &remaining) < 0 && errno == EINTR { request = remaining }
}

/// The child's side of a lifeline: standard input is the parent's end of a socket or pipe that
/// only the parent holds.
public enum Lifeline {
    /// Sends this process SIGTERM when standard input (its end of the control socket, or a
    /// pipe) reaches end of file, so a child never outlives its daemon however the daemon died.
    /// Messages on it are read and dropped here; a child that needs them reads them before
    /// calling this.
    public static func stopWhenParentGoes() throws(SystemError) {
        try HostThread.start(name: "parent-watch") {
            // Whole messages: a SOCK_SEQPACKET read shorter than the message discards the rest.
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = read(STDIN_FILENO, &buffer, buffer.count)
                if n == 0 || (n < 0 && errno != EINTR) { break }
            }
            kill(getpid(), SIGTERM)
        }
    }
}
