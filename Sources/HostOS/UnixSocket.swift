import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// Builds a `sockaddr_un` for `path`; nil when the path does not fit (108 bytes with its NUL).
private func unixAddress(_ path: String) -> sockaddr_un? {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    let capacity = MemoryLayout.size(ofValue: address.sun_path)
    guard !bytes.isEmpty, bytes.count < capacity, !bytes.contains(0) else { return nil }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    return address
}

private func withSockaddr<R>(_ address: inout sockaddr_un, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
    withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
}

private func newStreamSocket(_ what: String) throws(SystemError) -> FileDescriptor {
    let fd = try syscall("socket(AF_UNIX, \(what))") {
        socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    }
    return FileDescriptor(taking: fd)
}

/// A listening Unix stream socket bound to a path in the file system.
///
/// The socket file is created with mode 0600 (only the owner may connect) and removed again
/// when the listener goes away.
public struct UnixListener: ~Copyable, Sendable {
    public let descriptor: FileDescriptor
    public let path: String
    /// Whether going away removes the socket file (not for a listener another process bound).
    private let removesFile: Bool

    /// Binds and listens at `path`. A stale socket left there by an earlier process (nobody
    /// accepts on it) is removed first; a socket someone still listens on is EADDRINUSE, and
    /// any other kind of file is EEXIST: neither is ever deleted.
    /// The corresponding C functions are `socket`, `bind` and `listen`.
    public init(listeningAt path: String, backlog: Int32 = 4) throws(SystemError) {
        descriptor = try UnixListener.bindListening(path, backlog: backlog)
        self.path = path
        removesFile = true
    }

    /// A listening socket another process bound at `path` and handed over (the daemon binds
    /// the switch's vhost-user sockets); its file stays when this value goes away.
    public init(adopting descriptor: consuming FileDescriptor, path: String) {
        self.descriptor = descriptor
        self.path = path
        removesFile = false
    }

    /// The socket behind `init(listeningAt:backlog:)`, mode 0600.
    static func bindListening(_ path: String, backlog: Int32) throws(SystemError) -> FileDescriptor {
        guard var address = unixAddress(path) else { throw SystemError("bind(\(path)): path too long or empty", errno: ENAMETOOLONG) }
        var status = stat()
        if lstat(path, &status) == 0 {
            guard status.st_mode & S_IFMT == S_IFSOCK else { throw SystemError("bind(\(path)): not a socket", errno: EEXIST) }
            let probe = try newStreamSocket("probe \(path)")
            let connected = withSockaddr(&address) { Glibc.connect(probe.rawValue, $0, $1) }
            let probeErrno = Glibc.errno
            if connected == 0 { throw SystemError("bind(\(path)): another process listens there", errno: EADDRINUSE) }
            guard probeErrno == ECONNREFUSED else { throw SystemError("connect(\(path)) (stale socket probe)", errno: probeErrno) }
            try syscall("unlink(\(path))") { unlink(path) }
        }
        let socket = try newStreamSocket("listen \(path)")
        // bind creates the file with the process umask; restrict it before anyone can connect.
        let oldMask = umask(0o177)
        let bound = withSockaddr(&address) { bind(socket.rawValue, $0, $1) }
        let bindErrno = Glibc.errno
        umask(oldMask)
        if bound < 0 { throw SystemError("bind(\(path))", errno: bindErrno) }
        try syscall("chmod(\(path))") { chmod(path, 0o600) }
        try syscall("listen(\(path))") { listen(socket.rawValue, backlog) }
        return socket
    }

    deinit { if removesFile { _ = unlink(path) } }

    /// Waits for the next connection. The corresponding C function is `accept4`.
    public func accept() throws(SystemError) -> UnixStream {
        let fd = descriptor.rawValue
        let accepted = try syscall("accept4(\(path))") { bh_accept_cloexec(fd) }
        return UnixStream(FileDescriptor(taking: accepted))
    }

    /// Makes a blocked `accept` return (with EINVAL) and refuses further connections; safe to
    /// call from another thread. The corresponding C function is `shutdown`.
    public func shutdown() {
        _ = Glibc.shutdown(descriptor.rawValue, Int32(SHUT_RDWR))
    }
}

/// A listening socket that one process binds and another accepts on: the daemon (root) binds
/// a vhost-user-net port's socket, gives its group to the tenant, and hands the descriptor to the
/// jailed switch, which cannot create files. Closed, and its file removed, when released.
public final class SharedListener: Sendable {
    public let rawValue: Int32
    public let path: String

    /// Binds and listens at `path` (see `UnixListener.init(listeningAt:backlog:)` for stale
    /// sockets), then gives the file to root and `group` with `mode` (0660: root and the group
    /// may connect). The corresponding C functions are `bind`, `listen`, `chown` and `chmod`.
    public init(listeningAt path: String, group: UInt32, mode: mode_t, backlog: Int32 = 4) throws(SystemError) {
        let socket = try UnixListener.bindListening(path, backlog: backlog)
        do {
            try syscall("chown(\(path), 0, \(group))") { chown(path, 0, group) }
            try syscall("chmod(\(path))") { chmod(path, mode) }
        } catch {
            _ = unlink(path)
            throw error
        }
        rawValue = socket.release()
        self.path = path
    }

    deinit {
        _ = unlink(path)
        _ = Glibc.close(rawValue)
    }
}

/// File descriptors received over a socket, owned until taken: any not taken are closed when
/// this value goes away, so none leak on error paths.
public struct ReceivedDescriptors: ~Copyable, Sendable {
    private var descriptors: [Int32]

    public init() { descriptors = [] }

    init(raw: [Int32]) { descriptors = raw }

    deinit { for fd in descriptors where fd >= 0 { _ = Glibc.close(fd) } }

    /// How many descriptors arrived (taken ones included).
    public var count: Int { descriptors.count }

    /// Takes ownership of descriptor `index`; nil when out of range or already taken.
    public mutating func take(_ index: Int) -> FileDescriptor? {
        guard descriptors.indices.contains(index), descriptors[index] >= 0 else { return nil }
        let fd = descriptors[index]
        descriptors[index] = -1
        return FileDescriptor(taking: fd)
    }

    /// Moves every descriptor of `other` to the end of this collection.
    public mutating func append(contentsOf other: consuming ReceivedDescriptors) {
        descriptors += other.descriptors
        other.descriptors = []
    }
}

/// What one `recvmsg` delivered: `byteCount` bytes (0 at end of stream) and the descriptors
/// that came with them.
public struct ReceivedMessage: ~Copyable, Sendable {
    public let byteCount: Int
    public var descriptors: ReceivedDescriptors

    /// Ends this value, keeping its descriptors.
    public consuming func takeDescriptors() -> ReceivedDescriptors { descriptors }
}

/// Two connected sockets (`UnixStream.pair()`).
public struct UnixStreamPair: ~Copyable, Sendable {
    public var first: UnixStream
    public var second: UnixStream

    /// Gives up ownership of both descriptors without closing them; the caller now owns them.
    public consuming func release() -> (first: Int32, second: Int32) {
        (first.descriptor.release(), second.descriptor.release())
    }
}

/// A connected Unix stream socket that can carry file descriptors (SCM_RIGHTS).
public struct UnixStream: ~Copyable, Sendable {
    public let descriptor: FileDescriptor

    public init(_ descriptor: consuming FileDescriptor) { self.descriptor = descriptor }

    /// Connects to the listener at `path`. The corresponding C function is `connect`.
    public static func connect(to path: String) throws(SystemError) -> UnixStream {
        guard var address = unixAddress(path) else { throw SystemError("connect(\(path)): path too long or empty", errno: ENAMETOOLONG) }
        let socket = try newStreamSocket("connect \(path)")
        let fd = socket.rawValue
        try syscall("connect(\(path))") { withSockaddr(&address) { Glibc.connect(fd, $0, $1) } }
        return UnixStream(socket)
    }

    /// A connected pair of SOCK_SEQPACKET sockets (close-on-exec): each send arrives as one
    /// message, descriptors included, and a peer that exits, however it exits, is seen as end
    /// of stream. The daemon talks to each child over one, passed as the child's stdin.
    /// The corresponding C function is `socketpair`.
    public static func pair() throws(SystemError) -> UnixStreamPair {
        var fds: [Int32] = [-1, -1]
        try syscall("socketpair(AF_UNIX, SOCK_SEQPACKET)") {
            socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds)
        }
        return UnixStreamPair(first: UnixStream(FileDescriptor(taking: fds[0])), second: UnixStream(FileDescriptor(taking: fds[1])))
    }

    /// Sizes the socket's send and receive buffers to `bytes`, past the system's default maximum
    /// (needs CAP_NET_ADMIN). On a SOCK_SEQPACKET socket this bounds the largest message.
    /// The corresponding C function is `setsockopt(SO_SNDBUFFORCE, SO_RCVBUFFORCE)`.
    public func setBufferSize(_ bytes: Int) throws(SystemError) {
        var value = Int32(clamping: bytes)
        for (option, name) in [(SO_SNDBUFFORCE, "SO_SNDBUFFORCE"), (SO_RCVBUFFORCE, "SO_RCVBUFFORCE")] {
            try syscall("setsockopt(fd \(rawValue), \(name))") {
                setsockopt(rawValue, SOL_SOCKET, option, &value, socklen_t(MemoryLayout<Int32>.size))
            }
        }
    }

    public var rawValue: Int32 { descriptor.rawValue }

    /// A second descriptor for the same socket (close-on-exec), for a thread that sends while
    /// another receives. The corresponding C function is `fcntl(F_DUPFD_CLOEXEC)`.
    public func duplicate() throws(SystemError) -> UnixStream {
        let fd = rawValue
        let copy = try syscall("fcntl(fd \(fd), F_DUPFD_CLOEXEC)") { fcntl(fd, F_DUPFD_CLOEXEC, 0) }
        return UnixStream(FileDescriptor(taking: copy))
    }

    /// Bounds how long a receive waits; a receive that times out throws EAGAIN.
    /// The corresponding C function is `setsockopt(SO_RCVTIMEO)`.
    public func setReceiveTimeout(milliseconds: Int) throws(SystemError) {
        var value = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
        try syscall("setsockopt(fd \(rawValue), SO_RCVTIMEO)") {
            setsockopt(rawValue, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    /// Waits until a receive would not block (bytes, end of stream, a hang-up or an error are
    /// pending) or CLOCK_MONOTONIC reaches `deadline` nanoseconds (`monotonicNanoseconds()`; a
    /// deadline already past only checks); returns false when the deadline came first. An
    /// interrupted wait resumes with the time that is left. The corresponding C function is `poll`.
    public func waitReadable(until deadline: UInt64) throws(SystemError) -> Bool {
        let fd = rawValue
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let ready = try syscall("poll(fd \(fd))") { () -> Int32 in
            let now = monotonicNanoseconds()
            // Rounded up: a wait never ends before its deadline.
            let left = now < deadline ? Int32(clamping: (deadline - now) / 1_000_000 + ((deadline - now) % 1_000_000 == 0 ? 0 : 1)) : 0
            return poll(&entry, 1, left)
        }
        return ready > 0
    }

    /// Makes blocked receives on this socket return end-of-stream; safe from another thread.
    /// The corresponding C function is `shutdown`.
    public func shutdown() {
        UnixStream.shutdown(descriptor: rawValue)
    }

    /// Tells the peer no more bytes will come (it reads end-of-stream); receiving still works.
    /// The corresponding C function is `shutdown(SHUT_WR)`.
    public func shutdownWrites() {
        _ = Glibc.shutdown(rawValue, Int32(SHUT_WR))
    }

    /// `shutdown` on a socket this caller does not own, for waking the thread that does; the
    /// caller must make sure the number is still that socket (not closed and reused).
    public static func shutdown(descriptor: Int32) {
        _ = Glibc.shutdown(descriptor, Int32(SHUT_RDWR))
    }

    /// Sends all of `bytes`, with `fds` (borrowed; the receiver gets duplicates) attached to the
    /// first byte. The corresponding C function is `sendmsg`.
    public func send(_ bytes: [UInt8], fds: [Int32] = []) throws(SystemError) {
        precondition(!bytes.isEmpty || fds.isEmpty, "descriptors need at least one byte to travel with")
        let fd = rawValue
        let controlSize = fds.isEmpty ? 0 : ControlMessage.space(forDescriptors: fds.count)
        let control = UnsafeMutableRawBufferPointer.allocate(byteCount: max(controlSize, 1), alignment: MemoryLayout<Int>.alignment)
        defer { control.deallocate() }
        control.initializeMemory(as: UInt8.self, repeating: 0)
        if !fds.isEmpty { ControlMessage.encodeRights(fds, into: control) }
        let data = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 8)
        defer { data.deallocate() }
        data.copyBytes(from: bytes)
        var sent = 0
        while sent < bytes.count {
            var iov = iovec(iov_base: data.baseAddress! + sent, iov_len: bytes.count - sent)
            var header = msghdr()
            header.msg_iovlen = 1
            if sent == 0 && !fds.isEmpty {
                header.msg_control = control.baseAddress
                header.msg_controllen = controlSize
            }
            let n = try syscall("sendmsg(fd \(fd))") {
                withUnsafeMutablePointer(to: &iov) { iovPointer in
                    header.msg_iov = iovPointer
                    return sendmsg(fd, &header, Int32(MSG_NOSIGNAL))
                }
            }
            sent += n
        }
    }

    /// Receives up to `buffer.count` bytes and at most `maxFDs` descriptors (close-on-exec) in
    /// one `recvmsg`. Control data the kernel had to truncate (more descriptors than `maxFDs`,
    /// MSG_CTRUNC) is an error (EMSGSIZE); the descriptors that did arrive are closed.
    /// The corresponding C function is `recvmsg`.
    public func receive(into buffer: UnsafeMutableRawBufferPointer, maxFDs: Int) throws(SystemError) -> ReceivedMessage {
        precondition(maxFDs >= 0 && maxFDs <= 253, "SCM_MAX_FD is 253")
        let fd = rawValue
        let controlSize = maxFDs == 0 ? 0 : ControlMessage.space(forDescriptors: maxFDs)
        let control = UnsafeMutableRawBufferPointer.allocate(byteCount: max(controlSize, 1), alignment: MemoryLayout<Int>.alignment)
        defer { control.deallocate() }
        control.initializeMemory(as: UInt8.self, repeating: 0)
        var iov = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
        var header = msghdr()
        header.msg_iovlen = 1
        header.msg_control = controlSize == 0 ? nil : control.baseAddress
        header.msg_controllen = controlSize
        let n = try syscall("recvmsg(fd \(fd))") {
            withUnsafeMutablePointer(to: &iov) { iovPointer in
                header.msg_iov = iovPointer
                return recvmsg(fd, &header, Int32(MSG_CMSG_CLOEXEC))
            }
        }
        let controlLength = min(header.msg_controllen, controlSize)
        let descriptors = ReceivedDescriptors(raw: ControlMessage.decodeRights(UnsafeRawBufferPointer(rebasing: control[0..<controlLength])))
        if header.msg_flags & Int32(MSG_CTRUNC) != 0 {
            throw SystemError("recvmsg(fd \(fd)): control data truncated (MSG_CTRUNC, more than \(maxFDs) descriptors)", errno: EMSGSIZE)
        }
        return ReceivedMessage(byteCount: n, descriptors: descriptors)
    }
}

/// The `cmsghdr` layout, computed the way glibc's CMSG_* macros do (they are macros, so Swift
/// cannot import them): headers and data are aligned to `size_t`.
enum ControlMessage {
    static let headerSize = MemoryLayout<cmsghdr>.size
    static let lengthOffset = MemoryLayout<cmsghdr>.offset(of: \.cmsg_len)!
    static let levelOffset = MemoryLayout<cmsghdr>.offset(of: \.cmsg_level)!
    static let typeOffset = MemoryLayout<cmsghdr>.offset(of: \.cmsg_type)!

    /// CMSG_ALIGN
    static func align(_ length: Int) -> Int {
        let a = MemoryLayout<Int>.size
        return (length + a - 1) & ~(a - 1)
    }

    /// CMSG_SPACE(count * sizeof(int))
    static func space(forDescriptors count: Int) -> Int {
        align(headerSize) + align(count * MemoryLayout<Int32>.size)
    }

    /// One SCM_RIGHTS message carrying `fds`; `control` is `space(forDescriptors:)` bytes.
    static func encodeRights(_ fds: [Int32], into raw: UnsafeMutableRawBufferPointer) {
        do {
            raw.storeBytes(of: align(headerSize) + fds.count * MemoryLayout<Int32>.size, toByteOffset: lengthOffset, as: Int.self)
            raw.storeBytes(of: SOL_SOCKET, toByteOffset: levelOffset, as: Int32.self)
            raw.storeBytes(of: Int32(SCM_RIGHTS), toByteOffset: typeOffset, as: Int32.self)
            for (i, fd) in fds.enumerated() {
                raw.storeBytes(of: fd, toByteOffset: align(headerSize) + i * MemoryLayout<Int32>.size, as: Int32.self)
            }
        }
    }

    /// Every descriptor in every SCM_RIGHTS message of `control` (CMSG_FIRSTHDR/CMSG_NXTHDR),
    /// each length checked against the buffer.
    static func decodeRights(_ raw: UnsafeRawBufferPointer) -> [Int32] {
        var result: [Int32] = []
        do {
            var offset = 0
            while raw.count - offset >= headerSize {
                let length = raw.loadUnaligned(fromByteOffset: offset + lengthOffset, as: Int.self)
                guard length >= headerSize, length <= raw.count - offset else { break }
                let level = raw.loadUnaligned(fromByteOffset: offset + levelOffset, as: Int32.self)
                let type = raw.loadUnaligned(fromByteOffset: offset + typeOffset, as: Int32.self)
                let dataStart = offset + align(headerSize)
                if level == SOL_SOCKET, type == Int32(SCM_RIGHTS), length >= align(headerSize) {
                    let count = (length - align(headerSize)) / MemoryLayout<Int32>.size
                    for i in 0..<count {
                        result.append(raw.loadUnaligned(fromByteOffset: dataStart + i * MemoryLayout<Int32>.size, as: Int32.self))
                    }
                }
                offset += align(length)
            }
        }
        return result
    }
}

extension FileDescriptor {
    /// An anonymous, zero-filled, close-on-exec memory file of `size` bytes (guest RAM, test
    /// memory), sealed against shrinking and growing. The corresponding C functions are `memfd_create` and `ftruncate`.
    /// `sealed: false` leaves it resizable (tests of backends that must refuse such memory);
    /// `hugetlb: true` takes it from hugetlbfs (MFD_HUGETLB; `size` a multiple of the huge page).
    public static func memfd(name: String, size: Int, sealed: Bool = true, hugetlb: Bool = false) throws(SystemError) -> FileDescriptor {
        let fd = try syscall("memfd_create(\(name))") { bh_memfd_create(name, hugetlb ? 1 : 0) }
        let owned = FileDescriptor(taking: fd)
        try owned.truncate(to: size)
        // Sealed at its size: whoever the fd is shared with can rely on it never shrinking.
        let r = sealed ? bh_memfd_seal_size(fd) : 0
        if r < 0 { throw SystemError("fcntl(F_ADD_SEALS, \(name))", negated: r) }
        return owned
    }

    /// The file's size in bytes. The corresponding C function is `fstat`.
    public func fileSize() throws(SystemError) -> UInt64 {
        var status = stat()
        try syscall("fstat(fd \(rawValue))") { fstat(rawValue, &status) }
        return UInt64(max(0, status.st_size))
    }
}

extension FileDescriptor {
    /// Whether the file is sealed against shrinking (F_SEAL_SHRINK): a mapping of it can never
    /// fault with SIGBUS because the other side truncated it.
    public var isSealedAgainstShrinking: Bool { bh_is_sealed_against_shrinking(rawValue) == 1 }
}
