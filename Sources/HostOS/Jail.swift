import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// Privilege drop for the per-tenant and per-partition children.
public enum Jail {
    /// Makes this process (every thread) `uid`/`gid` with no supplementary groups, no
    /// capabilities and no way to gain privileges again. Call it once everything the process
    /// needs is open: afterwards it can open no root-owned file (volume files are root's, 0600).
    public static func dropPrivileges(uid: UInt32, gid: UInt32) throws(SystemError) {
        var step: UnsafePointer<CChar>? = nil
        let r = bh_jail(uid, gid, &step)
        if r < 0 {
            let name = step.map { String(cString: $0) } ?? "privilege drop"
            throw SystemError(name, negated: r)
        }
    }
}
