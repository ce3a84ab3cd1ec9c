#if canImport(Glibc)
import Glibc
#endif

/// A file mapped into this process: unmapped exactly once, when it goes out of scope.
public struct MemoryMapping: ~Copyable, @unchecked Sendable {
    // @unchecked Sendable: the base pointer and size never change; what lives in the mapping is
    // shared memory whose users synchronise (or copy) themselves.

    /// The first mapped byte.
    public let base: UnsafeMutableRawPointer
    /// The mapped length in bytes.
    public let size: Int

    /// The system page size.
    public static let pageSize: Int = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// Maps `size` bytes of `fd` starting at `offset` (a multiple of the page size), readable
    /// and writable; `shared` mappings see and make changes visible to every other mapper.
    /// Throws EINVAL for a zero size, an unaligned offset, or a range that does not fit in
    /// `off_t`/`size_t`. The corresponding C function is `mmap`.
    public init(fd: Int32, offset: UInt64, size: UInt64, shared: Bool, writable: Bool = true) throws(SystemError) {
        let what = "mmap(fd \(fd), offset 0x\(String(offset, radix: 16)), size 0x\(String(size, radix: 16)))"
        guard size > 0, size <= UInt64(Int.max), offset <= UInt64(Int64.max),
              !offset.addingReportingOverflow(size).overflow, offset + size <= UInt64(Int64.max),
              offset % UInt64(MemoryMapping.pageSize) == 0
        else { throw SystemError(what, errno: EINVAL) }
        let protection = writable ? (PROT_READ | PROT_WRITE) : PROT_READ
        let flags = shared ? MAP_SHARED : MAP_PRIVATE
        guard let pointer = mmap(nil, Int(size), protection, flags, fd, off_t(offset)), pointer != MAP_FAILED else {
            throw SystemError(what, errno: Glibc.errno)
        }
        base = pointer
        self.size = Int(size)
    }

    deinit { _ = munmap(base, size) }

    /// Unmaps now and reports a failure. The corresponding C function is `munmap`.
    public consuming func unmap() throws(SystemError) {
        let (base, size) = (self.base, self.size)
        discard self
        if munmap(base, size) < 0 { throw SystemError("munmap(size 0x\(String(size, radix: 16)))", errno: Glibc.errno) }
    }
}
