#if canImport(Glibc)
import Glibc
#endif

/// A failed system call: which call, on what, and the errno it returned.
public struct SystemError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The call and its subject, e.g. `open(/dev/net/tun)`.
    public let call: String
    public let errno: Int32

    public init(_ call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }

    /// Builds an error from a `-errno` return value.
    public init(_ call: String, negated result: Int32) {
        self.init(call, errno: -result)
    }

    public var description: String {
        "\(call) failed: \(String(cString: strerror(errno))) (errno \(errno))"
    }
}

/// Retries `body` while it fails with EINTR; returns its result or throws the errno it set.
@discardableResult
@inline(__always)
func syscall<T: FixedWidthInteger>(_ call: @autoclosure () -> String, _ body: () -> T) throws(SystemError) -> T {
    while true {
        let result = body()
        if result >= 0 { return result }
        let err = Glibc.errno
        if err == EINTR { continue }
        throw SystemError(call(), errno: err)
    }
}
