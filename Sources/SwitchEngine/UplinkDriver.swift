import Foundation
import HostOS
import Switch
import URing
import Virtio

/// One packet worker's means to send on the VXLAN uplink socket: preallocated send slots (a
/// msghdr, two iovecs, the destination sockaddr, the VXLAN header and a UDP_SEGMENT control
/// message each) and segmentation buffers for GSO / NEEDS_CSUM frames. Nothing allocates per
/// frame: with no free slot or buffer the frame (for that host) is a counted drop.
///
/// A plain frame is sent from the worker's frame buffer itself (iovecs: the slot's VXLAN header,
/// then the frame), so the buffer stays busy until the send completes. A GSO or NEEDS_CSUM frame
/// is laid out once by `Segmentation` into a segmentation buffer (each packet behind 8 bytes of
/// room for its VXLAN header), and sent to each host in as few sendmsgs as UDP GSO allows: one
/// per up to 64 equal packets whose datagrams stay under 64 KB, the kernel cutting them at the
/// `UDP_SEGMENT` size.
///
/// Used by its worker's thread only.
final class UplinkSender {
    static let slotCount = 256
    static let slotSize = 256
    static let scratchCount = 16
    /// A 64 KB TSO frame cut into its smallest segments, each with headers and headroom, fits.
    static let scratchSize = 256 << 10
    /// UDP payload bytes one UDP GSO sendmsg may carry (IPv4's 65507 less room for options).
    static let gsoBudget = 65_000
    /// The kernel's UDP_MAX_SEGMENTS on older kernels.
    static let gsoMaxSegments = 64

    // Offsets in a slot.
    private static let headerOffset = 0        // msghdr (56 bytes)
    private static let iovecOffset = 64        // two iovecs (32 bytes)
    private static let addressOffset = 96      // sockaddr_in6 (28 bytes)
    private static let vxlanOffset = 128       // VXLAN header (8 bytes)
    private static let controlOffset = 144     // cmsg with a UInt16 (24 bytes)

    let socketSlot: Int32
    /// AF_INET or AF_INET6: the uplink socket's family.
    let family: Int32
    private let slots: UnsafeMutableRawPointer
    private var freeSlots: [Int32]
    /// Per slot: what it holds busy (a frame buffer >= 0, a segmentation buffer -1 - index) and
    /// the inner bytes and datagrams it sends.
    private var slotOwner: [Int32]
    private var slotBytes: [Int32]
    private var slotDatagrams: [Int32]
    private let scratch: UnsafeMutableRawPointer
    private var freeScratch: [Int32]
    private var scratchPending: [Int32]

    init(socketSlot: Int32, family: Int32) throws(SystemError) {
        self.socketSlot = socketSlot
        self.family = family
        let slotBytesTotal = UplinkSender.slotCount * UplinkSender.slotSize
        let scratchBytes = UplinkSender.scratchCount * UplinkSender.scratchSize
        guard let memory = mmap(nil, slotBytesTotal + scratchBytes, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0), memory != MAP_FAILED else {
            throw SystemError("mmap(uplink send slots)", errno: errno)
        }
        slots = memory
        scratch = memory + slotBytesTotal
        freeSlots = (0..<Int32(UplinkSender.slotCount)).reversed()
        slotOwner = Array(repeating: 0, count: UplinkSender.slotCount)
        slotBytes = Array(repeating: 0, count: UplinkSender.slotCount)
        slotDatagrams = Array(repeating: 0, count: UplinkSender.slotCount)
        freeScratch = (0..<Int32(UplinkSender.scratchCount)).reversed()
        scratchPending = Array(repeating: 0, count: UplinkSender.scratchCount)
    }

    deinit {
        munmap(slots, UplinkSender.slotCount * UplinkSender.slotSize + UplinkSender.scratchCount * UplinkSender.scratchSize)
    }

    /// The socket's family, read once before the jail (getsockname).
    static func family(of socket: Int32) -> Int32 {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let r = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(socket, $0, &length) }
        }
        return r == 0 ? Int32(storage.ss_family) : AF_INET
    }

    /// Writes `address`:4789 as a sockaddr of the socket's family at `into`; returns its length,
    /// or nil when an IPv4 socket is asked for an IPv6 host.
    static func writeAddress(_ address: UnderlayAddress, family: Int32, into: UnsafeMutableRawPointer) -> socklen_t? {
        let port = VXLAN.udpPort.bigEndian
        if family == AF_INET6 {
            var a = sockaddr_in6()
            a.sin6_family = sa_family_t(AF_INET6)
            a.sin6_port = port
            let high = address.isIPv6 ? address.high : 0
            let low = address.isIPv6 ? address.low : 0xFFFF_0000_0000 | UInt64(address.ipv4)
            withUnsafeMutableBytes(of: &a.sin6_addr) { bytes in
                bytes.storeBytes(of: high.bigEndian, toByteOffset: 0, as: UInt64.self)
                bytes.storeBytes(of: low.bigEndian, toByteOffset: 8, as: UInt64.self)
            }
            into.storeBytes(of: a, as: sockaddr_in6.self)
            return socklen_t(MemoryLayout<sockaddr_in6>.size)
        }
        guard !address.isIPv6 else { return nil }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port
        a.sin_addr.s_addr = address.ipv4.bigEndian
        into.storeBytes(of: a, as: sockaddr_in.self)
        return socklen_t(MemoryLayout<sockaddr_in>.size)
    }

    /// The source of a received datagram (sockaddr at `name`, `length` bytes), if IP.
    static func readAddress(_ name: UnsafeRawPointer, length: Int) -> UnderlayAddress? {
        let family = Int32(name.load(as: sa_family_t.self))
        if family == AF_INET, length >= MemoryLayout<sockaddr_in>.size {
            let a = name.loadUnaligned(as: sockaddr_in.self)
            return UnderlayAddress(ipv4: UInt32(bigEndian: a.sin_addr.s_addr))
        }
        if family == AF_INET6, length >= MemoryLayout<sockaddr_in6>.size {
            let high = UInt64(bigEndian: name.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
            let low = UInt64(bigEndian: name.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
            return UnderlayAddress(ipv6High: high, low: low)
        }
        return nil
    }

    /// A plain frame (`frame`, in frame buffer `buffer`) to one host: returns whether a send was
    /// queued (then the buffer must wait for its completion).
    func sendPlain(frame: UnsafeRawBufferPointer, buffer: Int, vni: UInt32, to address: UnderlayAddress,
                   ring: borrowing Ring, userData: (Int32) -> UInt64) throws(SystemError) -> SendOutcome {
        guard let slot = freeSlots.popLast() else { return .busy }
        let base = slots + Int(slot) * UplinkSender.slotSize
        guard let nameLength = UplinkSender.writeAddress(address, family: family, into: base + UplinkSender.addressOffset) else {
            freeSlots.append(slot)
            return .unreachable
        }
        VXLAN.writeHeader(vni: vni, into: base + UplinkSender.vxlanOffset)
        let iov = (base + UplinkSender.iovecOffset).bindMemory(to: iovec.self, capacity: 2)
        iov[0] = iovec(iov_base: base + UplinkSender.vxlanOffset, iov_len: VXLAN.headerLength)
        iov[1] = iovec(iov_base: UnsafeMutableRawPointer(mutating: frame.baseAddress), iov_len: frame.count)
        fillHeader(base, nameLength: nameLength, iovecs: 2, control: false)
        slotOwner[Int(slot)] = Int32(buffer)
        slotBytes[Int(slot)] = Int32(frame.count)
        slotDatagrams[Int(slot)] = 1
        try ring.prepareSendmsg(fd: socketSlot, fixed: true, message: base, userData: userData(slot))
        return .queued
    }

    enum SendOutcome { case queued, busy, unreachable }

    /// A free segmentation buffer, or nil.
    func takeScratch() -> (index: Int32, memory: UnsafeMutableRawBufferPointer)? {
        guard let index = freeScratch.popLast() else { return nil }
        return (index, UnsafeMutableRawBufferPointer(start: scratch + Int(index) * UplinkSender.scratchSize,
                                                     count: UplinkSender.scratchSize))
    }

    /// Gives back a segmentation buffer no send uses (nothing was queued from it).
    func releaseScratchIfIdle(_ index: Int32) {
        if scratchPending[Int(index)] == 0 { freeScratch.append(index) }
    }

    /// The packets `layout` describes in segmentation buffer `index` (VXLAN headers already
    /// written in each packet's headroom) to one host. Returns the sends it could not queue
    /// (no free slot) as a count of datagrams lost, or nil when the host is unreachable.
    func sendLaidOut(scratch index: Int32, layout: SegmentLayout, to address: UnderlayAddress, ring: borrowing Ring,
                     userData: (Int32) -> UInt64) throws(SystemError) -> Int? {
        let memory = scratch + Int(index) * UplinkSender.scratchSize
        // UDP GSO needs equal packets back to back; otherwise (or one packet) one sendmsg each.
        let contiguous = layout.count > 1 && layout.stride == layout.length && layout.length > 0
        let perSend = contiguous
            ? layout.packetsPerSend(maximumBytes: UplinkSender.gsoBudget, maximumSegments: UplinkSender.gsoMaxSegments) : 1
        var first = 0
        var lost = 0
        while first < layout.count {
            let count = min(perSend, layout.count - first)
            let last = first + count - 1
            let bytes = (count - 1) * layout.length + (last == layout.count - 1 ? layout.lastLength : layout.length)
            guard let slot = freeSlots.popLast() else {
                lost += count
                first += count
                continue
            }
            let base = slots + Int(slot) * UplinkSender.slotSize
            guard let nameLength = UplinkSender.writeAddress(address, family: family, into: base + UplinkSender.addressOffset) else {
                freeSlots.append(slot)
                return nil
            }
            let iov = (base + UplinkSender.iovecOffset).bindMemory(to: iovec.self, capacity: 2)
            iov[0] = iovec(iov_base: memory + first * layout.stride, iov_len: bytes)
            let gso = count > 1
            if gso {
                let control = base + UplinkSender.controlOffset
                let header = control.bindMemory(to: cmsghdr.self, capacity: 1)
                header.pointee.cmsg_len = MemoryLayout<cmsghdr>.size + 2
                header.pointee.cmsg_level = Int32(IPPROTO_UDP)
                header.pointee.cmsg_type = 103  // UDP_SEGMENT
                (control + MemoryLayout<cmsghdr>.size).storeBytes(of: UInt16(layout.length), as: UInt16.self)
            }
            fillHeader(base, nameLength: nameLength, iovecs: 1, control: gso)
            slotOwner[Int(slot)] = -1 - index
            slotBytes[Int(slot)] = Int32(bytes - count * VXLAN.headerLength)
            slotDatagrams[Int(slot)] = Int32(count)
            scratchPending[Int(index)] += 1
            try ring.prepareSendmsg(fd: socketSlot, fixed: true, message: base, userData: userData(slot))
            first += count
        }
        return lost
    }

    private func fillHeader(_ base: UnsafeMutableRawPointer, nameLength: socklen_t, iovecs: Int, control: Bool) {
        var message = msghdr()
        message.msg_name = base + UplinkSender.addressOffset
        message.msg_namelen = nameLength
        message.msg_iov = (base + UplinkSender.iovecOffset).assumingMemoryBound(to: iovec.self)
        message.msg_iovlen = iovecs
        if control {
            message.msg_control = base + UplinkSender.controlOffset
            message.msg_controllen = 24  // CMSG_SPACE(sizeof(uint16_t))
        }
        base.storeBytes(of: message, as: msghdr.self)
    }

    /// A send completed: frees its slot. Returns the frame buffer it held busy (to release when
    /// no other write holds it), its inner bytes and datagrams.
    func completed(slot: Int32) -> (buffer: Int?, bytes: Int, datagrams: Int) {
        guard slot >= 0 && Int(slot) < UplinkSender.slotCount else { return (nil, 0, 0) }
        freeSlots.append(slot)
        let owner = slotOwner[Int(slot)]
        let result = (Int(slotBytes[Int(slot)]), Int(slotDatagrams[Int(slot)]))
        if owner >= 0 { return (Int(owner), result.0, result.1) }
        let index = Int(-1 - owner)
        scratchPending[index] -= 1
        if scratchPending[index] == 0 { freeScratch.append(Int32(index)) }
        return (nil, result.0, result.1)
    }
}

/// The receive side's per-buffer msghdrs for the uplink socket: one per frame buffer of the
/// uplink's queue, each naming its buffer at offset 4 (so that the 8-byte VXLAN header ends
/// where the virtio-net header does, and the inner frame lands where a TAP read puts a frame).
final class UplinkReceiver {
    static let entrySize = 256
    private static let iovecOffset = 64
    private static let nameOffset = 128
    /// Where a datagram starts in its frame buffer.
    static let datagramOffset = VirtioNetHeader.size - VXLAN.headerLength

    private let memory: UnsafeMutableRawPointer
    let count: Int

    init(count: Int) throws(SystemError) {
        self.count = count
        guard let memory = mmap(nil, max(1, count) * UplinkReceiver.entrySize, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), memory != MAP_FAILED else {
            throw SystemError("mmap(uplink receive headers)", errno: errno)
        }
        self.memory = memory
    }

    deinit { munmap(memory, max(1, count) * UplinkReceiver.entrySize) }

    /// Resets entry `entry` to receive into `buffer` (`capacity` bytes) and returns its msghdr.
    func prepare(entry: Int, buffer: UnsafeMutableRawPointer, capacity: Int) -> UnsafeMutableRawPointer {
        let base = memory + entry * UplinkReceiver.entrySize
        let iov = (base + UplinkReceiver.iovecOffset).bindMemory(to: iovec.self, capacity: 1)
        iov[0] = iovec(iov_base: buffer + UplinkReceiver.datagramOffset, iov_len: capacity - UplinkReceiver.datagramOffset)
        var message = msghdr()
        message.msg_name = base + UplinkReceiver.nameOffset
        message.msg_namelen = socklen_t(MemoryLayout<sockaddr_storage>.size)
        message.msg_iov = iov
        message.msg_iovlen = 1
        base.storeBytes(of: message, as: msghdr.self)
        return base
    }

    /// The source address and flags the kernel wrote for entry `entry`.
    func received(entry: Int) -> (source: UnderlayAddress?, truncated: Bool) {
        let base = memory + entry * UplinkReceiver.entrySize
        let message = base.load(as: msghdr.self)
        let source = UplinkSender.readAddress(base + UplinkReceiver.nameOffset, length: Int(message.msg_namelen))
        return (source, message.msg_flags & Int32(MSG_TRUNC) != 0)
    }
}
