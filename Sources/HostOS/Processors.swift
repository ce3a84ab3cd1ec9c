#if canImport(Glibc)
import Glibc
#endif

/// Cores online now (`sysconf(_SC_NPROCESSORS_ONLN)`), at least 1: the switch's default number
/// of packet workers.
public func onlineProcessorCount() -> Int {
    max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
}
