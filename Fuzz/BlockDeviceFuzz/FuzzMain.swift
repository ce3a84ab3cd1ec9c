// libFuzzer target for the whole virtio-blk device: a real `BlockDevice` with its queue worker
// thread and restricted io_uring, serving real volume files on disk, driven in-process (no
// vhost-user socket) through guest memory the harness writes like a hostile driver would.
//
// Set up once: three volumes under a temporary state directory (read-write 4 MiB, read-only
// 1 MiB, and 2 MiB with QoS), one device per volume (its rings are made once and reused), and
// 1 MiB of guest memory (a memfd) that the device sees as two 512 KiB regions at non-zero guest
// addresses with a gap between them.
//
// Input: a header, then steps until the input ends (see `Session.step`).
//   byte 0: volume (bits 0-2: 5 read-only, 6 QoS, else read-write), 0x08 no call eventfd,
//           0x10 kick eventfd in semaphore mode, 0x20 non-blocking kick eventfd, 0x40 end with
//           `reset()` rather than `stopQueue`, 0x80 ring addresses from the input (3 x u16 follow)
//   byte 1: queue size 2^(bits 0-3) (odd sizes with 0x80 in byte 0), 0x10 EVENT_IDX,
//           0x20 INDIRECT_DESC, 0x80 used.idx starts elsewhere (u16 follows)
//   bytes 2-3: the start index (avail.idx, used.idx and the queue's next available)
// Steps: descriptor, request header, discard range, indirect table, raw bytes and fills in the
// data area; append heads and publish avail.idx (or jump it by up to 1023); kick; wait for
// completions (at most 16 ms per input in all); stop and resume (where it stopped, elsewhere, or
// a second start with no stop). The queue is stopped at the end.
//
// Besides "never traps, never touches memory it must not" (ASan), it checks, and traps when
// they break: every stop returns (libFuzzer's -timeout catches a hang); used.idx never advances
// by more than the chains made available, and at a stop every chain taken was answered (bar the
// one with an out-of-range head that breaks the queue); used entries name heads inside the
// queue; the device wrote no guest memory but the used ring and buffers that descriptors it may
// have followed mark device-writable; nothing writes guest memory once the queue has stopped; no
// volume file changes size or gets blocks past its end, the read-only volume and the files next
// to the volumes never change; the worker never fails (an error or critical log line).
//
// Environment: BLOCKDEVICE_FUZZ_STATE, where the temporary state directory goes (default /tmp;
// run.sh points it into .build-fuzz, on a file system with O_DIRECT); BLOCKDEVICE_FUZZ_VERBOSE=1,
// a line per queue stop and per device warning (to see what an input does).
import Block
import CLinux
import Config
import HostOS
import Logging
import Synchronization
import VhostUser
import Virtio
#if canImport(Glibc)
import Glibc
#endif

// MARK: - Layout

/// Guest memory: one memfd, two regions with a gap between them (a buffer cannot span both).
private let regionSize: UInt64 = 512 << 10
private let regionA: UInt64 = 0x10_0000
private let regionB: UInt64 = 0x80_0000
/// The valid ring layout, at the start of region A; request data lives after it (and in B), so
/// in the valid layout no descriptor the harness can encode reaches the rings.
private let descriptorTableOffset: UInt64 = 0x0000  // 16 x 256 bytes
private let availableRingOffset: UInt64 = 0x1000    // 6 + 2 x 256 bytes
private let usedRingOffset: UInt64 = 0x2000         // 6 + 8 x 256 bytes
private let dataOffset: UInt64 = 0x4000
/// Longest time one input may spend waiting for completions.
private let waitBudgetNanoseconds: UInt64 = 16_000_000
/// Largest used length the device may report: its transfer limit plus the status byte.
private let maxUsedLength: UInt32 = 32 << 20 + 1

// MARK: - Logging

/// Renders every log line (the descriptions of guest-made errors are code the guest reaches),
/// and traps on error and critical lines: the only ones the device logs are "the worker failed"
/// and "cannot drain its ring; exiting", neither of which a guest may cause.
private struct TrappingLogHandler: LogHandler {
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var text = event.message.description
        for (key, value) in (event.metadata ?? [:]).sorted(by: { $0.key < $1.key }) { text += " \(key)=\(value)" }
        if event.level >= .error { fatalError("block device logged at \(event.level): \(text)") }
        if verbose && event.level >= .warning { print("blockdevice fuzz: device: \(text)") }
    }
}

// MARK: - The fixed world

/// A file whose size (and, when `frozen`, contents by mtime) must not change; `checkTail`:
/// nothing may be allocated past its end (a fallocate past EOF with KEEP_SIZE would not show in
/// the size).
private struct WatchedFile {
    let path: String
    let fd: Int32
    let size: Int
    let modified: timespec
    let frozen: Bool
    let checkTail: Bool
}

private final class Target: @unchecked Sendable {
    let name: String
    let device: BlockDevice
    let capacitySectors: UInt64
    init(name: String, device: BlockDevice) {
        self.name = name
        self.device = device
        capacitySectors = device.volume.sizeBytes / 512
    }
}

private final class World: @unchecked Sendable {
    let stateDirectory: String
    let targets: [Target]
    let memoryFD: FileDescriptor
    let mapping: MemoryMapping
    let memory: GuestMemory
    let watched: [WatchedFile]
    /// Guest memory as the last input left it after its final stop: nothing may change it later.
    let snapshot: UnsafeMutableRawPointer
    var snapshotValid = false
    /// Guest memory as the harness wrote it during the current input (see `Session.checkMemory`).
    let shadow: UnsafeMutableRawPointer
    let makeEventFD: @convention(c) (UInt32, Int32) -> Int32

    var host: UnsafeMutableRawPointer { mapping.base }

    init() {
        let base = getenv("BLOCKDEVICE_FUZZ_STATE").map { String(cString: $0) } ?? "/tmp"
        _ = mkdir(base, 0o700)
        var template = Array("\(base)/bulkhead-blockdevice-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { fatalError("mkdtemp under \(base): errno \(errno)") }
        stateDirectory = String(cString: made)

        // eventfd(2) is not in Swift's Glibc module; it is a plain (non-variadic) C function.
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "eventfd") else { fatalError("no eventfd in libc") }
        makeEventFD = unsafeBitCast(symbol, to: (@convention(c) (UInt32, Int32) -> Int32).self)

        let logger = Logger(label: "blockdevice-fuzz") { _ in TrappingLogHandler() }
        do {
            let store = try VolumeStore(stateDirectory: stateDirectory, tenant: "fuzz")
            // The read-only volume is made writable first, to give reads something to return.
            let seeded = try store.open(Volume(id: "ro", sizeBytes: 1 << 20))
            World.writePattern(fd: seeded.bufferedFD, bytes: 1 << 20, seed: 0x5A)
            let volumes = [
                try store.open(Volume(id: "rw", sizeBytes: 4 << 20, serial: "fuzz-serial-rw-0123456789")),
                try store.open(Volume(id: "ro", sizeBytes: 1 << 20, readOnly: true)),
                try store.open(Volume(id: "qos", sizeBytes: 2 << 20,
                                      qos: VolumeQoS(iops: 20_000, burstIOs: 8, bytesPerSecond: 64 << 20, burstBytes: 256 << 10))),
            ]
            World.writePattern(fd: volumes[0].bufferedFD, bytes: 256 << 10, seed: 0x3C)
            targets = try volumes.map { Target(name: $0.volume.id, device: try BlockDevice(volume: $0, queues: 1, logger: logger)) }

            // Files next to the volumes, which no request may reach.
            let volumeDirectory = store.directory
            World.writeFile("\(volumeDirectory)/neighbour.img", bytes: 64 << 10)
            World.writeFile("\(stateDirectory)/outside.bin", bytes: 64 << 10)
            watched = [
                World.watch("\(volumeDirectory)/rw.img", frozen: false, checkTail: true),
                World.watch("\(volumeDirectory)/qos.img", frozen: false, checkTail: true),
                World.watch("\(volumeDirectory)/ro.img", frozen: true, checkTail: true),
                World.watch("\(volumeDirectory)/neighbour.img", frozen: true, checkTail: false),
                World.watch("\(stateDirectory)/outside.bin", frozen: true, checkTail: false),
                // No file is created or removed in the volume directory.
                World.watch(volumeDirectory, frozen: true, checkTail: false),
            ]

            // Guest memory is a shmem memfd, as a frontend's is.
            let fd = bh_memfd_create("blockdevice-fuzz", 0)
            guard fd >= 0 else { fatalError("memfd_create: errno \(errno)") }
            let memoryFD = FileDescriptor(taking: fd)
            try memoryFD.truncate(to: Int(2 * regionSize))
            let mapping = try MemoryMapping(fd: fd, offset: 0, size: 2 * regionSize, shared: true)
            memory = try GuestMemory(regions: [
                GuestMemoryRegion(guestAddress: regionA, size: regionSize, host: mapping.base),
                GuestMemoryRegion(guestAddress: regionB, size: regionSize, host: mapping.base + Int(regionSize)),
            ])
            self.memoryFD = memoryFD
            self.mapping = mapping
        } catch {
            fatalError("blockdevice fuzz setup failed: \(error)")
        }
        snapshot = .allocate(byteCount: Int(2 * regionSize), alignment: 4096)
        shadow = .allocate(byteCount: Int(2 * regionSize), alignment: 4096)
        print("blockdevice fuzz: state in \(stateDirectory), volumes \(targets.map(\.name))")
    }

    /// Writes `bytes` of a pattern that differs per 512-byte sector (memset: fast at -Onone).
    private static func writePattern(fd: Int32, bytes: Int, seed: UInt8) {
        let pattern = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 512)
        defer { pattern.deallocate() }
        for sector in 0..<(bytes / 512) { memset(pattern + 512 * sector, Int32(UInt8(truncatingIfNeeded: sector &* 37) ^ seed), 512) }
        let written = pwrite(fd, pattern, bytes, 0)
        precondition(written == bytes, "seeding a volume failed: errno \(errno)")
    }

    private static func writeFile(_ path: String, bytes: Int) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        precondition(fd >= 0, "creating \(path): errno \(errno)")
        writePattern(fd: fd, bytes: bytes, seed: 0xA5)
        close(fd)
    }

    private static func watch(_ path: String, frozen: Bool, checkTail: Bool) -> WatchedFile {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        precondition(fd >= 0, "opening \(path): errno \(errno)")
        var info = stat()
        precondition(fstat(fd, &info) == 0)
        // A file system without FIEMAP keeps the size check only.
        let tail = checkTail && World.extentsPastEnd(fd: fd, size: UInt64(info.st_size)) != nil
        if checkTail && !tail { print("blockdevice fuzz: no FIEMAP for \(path); blocks past its end go unchecked") }
        return WatchedFile(path: path, fd: fd, size: Int(info.st_size), modified: info.st_mtim, frozen: frozen, checkTail: tail)
    }

    /// Traps when a watched file changed as it must not.
    func checkFiles() {
        for file in watched {
            var info = stat()
            precondition(fstat(file.fd, &info) == 0)
            precondition(Int(info.st_size) == file.size, "\(file.path) changed size: \(file.size) -> \(info.st_size)")
            if file.frozen {
                precondition(info.st_mtim.tv_sec == file.modified.tv_sec && info.st_mtim.tv_nsec == file.modified.tv_nsec,
                             "\(file.path) was modified")
            }
            if file.checkTail, let extents = World.extentsPastEnd(fd: file.fd, size: UInt64(file.size)) {
                precondition(extents == 0, "\(file.path) has \(extents) extents past its end")
            }
        }
    }

    /// FS_IOC_FIEMAP with no extent array: the number of extents from `size` on (nil when the
    /// file system has no FIEMAP).
    private static func extentsPastEnd(fd: Int32, size: UInt64) -> UInt32? {
        // struct fiemap { u64 fm_start, fm_length; u32 fm_flags, fm_mapped_extents, fm_extent_count, fm_reserved; }
        var request: (UInt64, UInt64, UInt32, UInt32, UInt32, UInt32) = (size, UInt64.max - size, 0, 0, 0, 0)
        let fsIocFiemap: UInt = 0xC020_660B  // _IOWR('f', 11, struct fiemap)
        let result = withUnsafeMutableBytes(of: &request) { bh_ioctl_ptr(fd, fsIocFiemap, $0.baseAddress) }
        return result == 0 ? request.3 : nil
    }

    /// Nothing may have written guest memory since the last input's queue stopped.
    func checkQuiet() {
        guard snapshotValid else { return }
        precondition(memcmp(snapshot, host, Int(2 * regionSize)) == 0,
                     "guest memory changed after the previous input's queue stopped: a worker outlived stopQueue")
    }

    func takeSnapshot() {
        memcpy(snapshot, host, Int(2 * regionSize))  // libc's: ASan's own memmove copies bytewise
        snapshotValid = true
    }
}

private let world = World()

/// BLOCKDEVICE_FUZZ_VERBOSE=1: a line per queue stop (for checking what a seed or crash does).
private let verbose = getenv("BLOCKDEVICE_FUZZ_VERBOSE") != nil

/// Counts for the summary printed at exit.
nonisolated(unsafe) private var totals = (inputs: 0, started: 0, answered: 0, stops: 0, brokenLayouts: 0, waitedMicroseconds: UInt64(0))

// MARK: - Input decoding

/// The input as a stream of choices; reads past the end give zeroes.
private struct Input {
    let bytes: UnsafeBufferPointer<UInt8>
    var position = 0
    var isEmpty: Bool { position >= bytes.count }

    mutating func u8() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }
    mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
    mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }
    mutating func u64() -> UInt64 { UInt64(u32()) | UInt64(u32()) << 32 }
}

// MARK: - One input

/// A guest address range [start, end).
private struct Span: Hashable {
    let start: UInt64
    let end: UInt64
    func overlaps(_ other: Span) -> Bool { start < other.end && other.start < end }
}

private struct Session {
    let target: Target
    let memory: GuestMemory
    let host: UnsafeMutableRawPointer
    /// What guest memory would hold if only the harness wrote it.
    let shadow: UnsafeMutableRawPointer
    /// The ring layout came from the input: rings may overlap each other and the data, so only
    /// the checks that hold whatever the layout are made.
    let hostile: Bool
    let size: UInt16
    let features: UInt64
    let descriptorTable: UInt64
    let availableRing: UInt64
    let usedRing: UInt64
    let kickFD: Int32
    let callFD: Int32
    let giveCall: Bool
    let endWithReset: Bool

    var running = false
    /// Next available-ring position the harness appends at, and avail.idx as published.
    var appendIndex: UInt16
    var availableIndex: UInt16
    /// Where the current run of the queue started, and what was published since.
    var cycleAvailable: UInt16
    var cycleUsed: UInt16
    var publishedInCycle = 0
    var manualUsedEvent = false
    var waited: UInt64 = 0
    var restarts = 0

    /// Every range a descriptor the device may have followed allowed it to write (the used ring
    /// included), and every indirect table such a descriptor named.
    var deviceWritable: Set<Span> = []
    var tables: Set<Span> = []
    var spansChanged = false
    /// Set when the input made the device's writes legitimately reach the rings or an indirect
    /// table (guest-directed: a read into used.idx is the guest's business), or resumed the queue
    /// somewhere else than where it stopped: from then on the used-ring and memory checks do not
    /// hold, and only "no trap, stop returns, files intact" is checked.
    var relaxed: String?

    var indirectNegotiated: Bool { features & VirtioFeatures.indirectDescriptors != 0 }
    var strict: Bool { !hostile && relaxed == nil }
    var usedRingSpan: Span { Span(start: usedRing, end: usedRing + 6 + 8 * UInt64(size)) }

    init(target: Target, world: World, input: inout Input, kickFD: Int32, callFD: Int32) {
        self.target = target
        memory = world.memory
        host = world.host
        shadow = world.shadow
        self.kickFD = kickFD
        self.callFD = callFD
        let layout = input.u8()
        let queue = input.u8()
        let start = input.u16()
        hostile = layout & 0x80 != 0
        endWithReset = layout & 0x40 != 0
        giveCall = layout & 0x08 == 0
        let exponent = queue & 0x0F
        if exponent <= 8 || !hostile {
            size = 1 << UInt16(exponent % 9)
        } else {
            size = [0, 3, 512, 1024, 2048, 0x8000, 0xFFFF][Int(exponent - 9) % 7]
        }
        var features = VirtioFeatures.version1
        if queue & 0x10 != 0 { features |= VirtioFeatures.eventIndex }
        if queue & 0x20 != 0 { features |= VirtioFeatures.indirectDescriptors }
        self.features = features
        if hostile {
            func address(_ code: UInt16) -> UInt64 {
                switch code {
                case 0xFFFF: regionA &- 16                 // below memory
                case 0xFFFE: regionB + regionSize - 8      // runs off the end of region B
                case 0xFFFD: regionA + regionSize - 2      // runs off region A into the gap
                default: (code & 0x8000 != 0 ? regionB : regionA) + UInt64(code & 0x7FFF) * 2
                }
            }
            descriptorTable = address(input.u16())
            availableRing = address(input.u16())
            usedRing = address(input.u16())
        } else {
            descriptorTable = regionA + descriptorTableOffset
            availableRing = regionA + availableRingOffset
            usedRing = regionA + usedRingOffset
        }
        let usedStart = queue & 0x80 != 0 ? input.u16() : start
        appendIndex = start
        availableIndex = start
        cycleAvailable = start
        cycleUsed = usedStart
        putInteger(start, at: availableRing &+ 2, ring: true)
        putInteger(usedStart, at: usedRing &+ 2, ring: true)
    }

    mutating func relax(_ reason: String) {
        guard relaxed == nil else { return }
        relaxed = reason
        if verbose { print("blockdevice fuzz: checks relaxed: \(reason)") }
    }

    // MARK: Queue control

    mutating func start(nextAvailable: UInt16) {
        let setup = VhostQueueSetup(index: 0, size: size, descriptorTable: descriptorTable, availableRing: availableRing,
                                    usedRing: usedRing, nextAvailable: nextAvailable, kickFD: kickFD,
                                    callFD: giveCall ? callFD : nil, features: features)
        do {
            try target.device.startQueue(setup, memory: memory)
            running = true
            totals.started += 1
        } catch {
            // Only a layout from the input may be refused.
            precondition(hostile, "startQueue refused a valid layout: \(error)")
            totals.brokenLayouts += 1
            running = false
        }
    }

    /// Stops the queue (by `stopQueue`, or by `reset` when `reset`) and checks what its run did;
    /// returns the index to resume at (nil after a reset, or when the queue never started).
    mutating func stop(reset: Bool = false) -> UInt16? {
        guard running else { return nil }
        var next: UInt16?
        if reset {
            target.device.reset()
        } else {
            next = target.device.stopQueue(0)
        }
        running = false
        totals.stops += 1
        guard strict else { return next }
        let used = usedIndex
        let answered = Int(used &- cycleUsed)
        precondition(answered <= publishedInCycle,
                     "at stop: used.idx advanced by \(answered) (\(cycleUsed) -> \(used)), only \(publishedInCycle) chains were made available")
        if let next {
            let consumed = Int(next &- cycleAvailable)
            precondition(consumed <= publishedInCycle,
                         "the device took \(consumed) chains but only \(publishedInCycle) were made available")
            // Every chain taken is answered before stop returns, except one whose head was out
            // of range: that one breaks the queue and has no head to return.
            precondition(answered <= consumed && consumed - answered <= 1,
                         "at stop: \(consumed) chains taken, \(answered) answered (used.idx \(cycleUsed) -> \(used))")
        }
        checkUsedEntries(from: cycleUsed, to: used)
        checkMemory()
        totals.answered += answered
        if verbose {
            let status = memory.load(UInt8.self, at: dataAddress(slot: 1)) ?? 0xFF
            print("blockdevice fuzz: \(target.name) queue of \(size) stopped: \(next.map { "\(Int($0 &- cycleAvailable))" } ?? "?") taken, "
                  + "\(answered) answered, used \(usedEntries(from: cycleUsed, to: used)), status byte at slot 1: \(status)")
        }
        return next
    }

    var usedIndex: UInt16 {
        let value = memory.load(UInt16.self, at: usedRing &+ 2) ?? 0
        atomicMemoryFence(ordering: .acquiring)
        return value
    }

    func usedEntries(from: UInt16, to: UInt16) -> [(head: UInt32, length: UInt32)] {
        var entries: [(head: UInt32, length: UInt32)] = []
        var position = from
        while position != to {
            let entry = usedRing + 4 + 8 * UInt64(position & (size - 1))
            entries.append((memory.load(UInt32.self, at: entry) ?? 0, memory.load(UInt32.self, at: entry + 4) ?? 0))
            position &+= 1
        }
        return entries
    }

    func checkUsedEntries(from: UInt16, to: UInt16) {
        for (position, entry) in usedEntries(from: from, to: to).enumerated() {
            precondition(entry.head < UInt32(size), "used entry \(position) names head \(entry.head), queue size \(size)")
            precondition(entry.length <= maxUsedLength, "used entry \(position) claims \(entry.length) bytes written")
        }
    }

    /// The host offset of guest range `span` (wholly inside one region).
    func hostOffset(_ address: UInt64) -> Int {
        address >= regionB ? Int(address - regionB + regionSize) : Int(address - regionA)
    }

    /// The device wrote nothing outside the used ring and the device-writable buffers of the
    /// descriptors it could have followed.
    func checkMemory() {
        var allowed = (deviceWritable.union([usedRingSpan])).map { (hostOffset($0.start), hostOffset($0.start) + Int($0.end - $0.start)) }
        allowed.sort { $0.0 < $1.0 }
        var from = 0
        for (start, end) in allowed + [(Int(2 * regionSize), Int(2 * regionSize))] {
            if start > from, memcmp(host + from, shadow + from, start - from) != 0 {
                var at = from
                while host.load(fromByteOffset: at, as: UInt8.self) == shadow.load(fromByteOffset: at, as: UInt8.self) { at += 1 }
                let guest = at < Int(regionSize) ? regionA + UInt64(at) : regionB + UInt64(at) - regionSize
                preconditionFailure("the device wrote guest memory at 0x\(String(guest, radix: 16)) that no writable descriptor allows "
                                    + "(0x\(String(shadow.load(fromByteOffset: at, as: UInt8.self), radix: 16)) -> "
                                    + "0x\(String(host.load(fromByteOffset: at, as: UInt8.self), radix: 16)))")
            }
            from = max(from, end)
        }
    }

    /// Waits (bounded by what is left of the input's budget) until every published chain is
    /// answered, or the time runs out.
    mutating func wait(milliseconds: Int) {
        guard waited < waitBudgetNanoseconds else { return }
        let begin = monotonicNanoseconds()
        let deadline = begin + min(UInt64(milliseconds) * 1_000_000, waitBudgetNanoseconds - waited)
        while running {
            if strict {
                let answered = Int(usedIndex &- cycleUsed)
                // Not all chains answered yet, but never more than were made available.
                precondition(answered <= publishedInCycle,
                             "used.idx advanced by \(answered), only \(publishedInCycle) chains were made available")
                if answered == publishedInCycle { break }
            }
            let now = monotonicNanoseconds()
            if now >= deadline { break }
            var poller = pollfd(fd: callFD, events: Int16(POLLIN), revents: 0)
            if poll(&poller, 1, 1) > 0 {
                var counter: UInt64 = 0
                _ = read(callFD, &counter, 8)
            }
        }
        waited += monotonicNanoseconds() - begin
        totals.waitedMicroseconds += (monotonicNanoseconds() - begin) / 1000
        if verbose { print("blockdevice fuzz: waited \((monotonicNanoseconds() - begin) / 1000) us: used.idx \(usedIndex), avail.idx \(availableIndex)") }
    }

    // MARK: Guest memory

    /// Where the data area's `slot` lies: 16-byte steps through region A after the rings
    /// (bit 15 clear) or through region B (bit 15 set). Slots that are multiples of 32 are
    /// sector-aligned, which O_DIRECT needs.
    func dataAddress(slot: UInt16) -> UInt64 {
        let offset = UInt64(slot & 0x7FFF) * 16
        if slot & 0x8000 != 0 { return regionB + offset % regionSize }
        return regionA + dataOffset + offset % (regionSize - dataOffset)
    }

    /// Whether the harness may write `length` bytes at `address` as data: inside memory, and in
    /// the valid layout never over the rings.
    func writable(_ address: UInt64, _ length: UInt64) -> UnsafeMutableRawPointer? {
        guard let pointer = memory.pointer(at: address, length: length) else { return nil }
        if !hostile && address < regionA + dataOffset && address &+ length > regionA { return nil }
        return pointer
    }

    /// Writes `bytes` at `address` (into the rings when `ring`, else as data) and into the shadow.
    func put(_ bytes: UnsafeRawBufferPointer, at address: UInt64, ring: Bool) {
        guard let pointer = ring ? memory.pointer(at: address, length: UInt64(bytes.count)) : writable(address, UInt64(bytes.count))
        else { return }
        pointer.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        (shadow + (pointer - host)).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
    }

    func putInteger<T: FixedWidthInteger>(_ value: T, at address: UInt64, ring: Bool) {
        withUnsafeBytes(of: value.littleEndian) { put($0, at: address, ring: ring) }
    }

    /// Records what a descriptor lets the device do: write its buffer, or (outside an indirect
    /// table) read an indirect table. What the device would refuse (outside memory) is no span.
    mutating func note(address: UInt64, length: UInt32, flags: UInt16, inTable: Bool) {
        guard length > 0, memory.pointer(at: address, length: UInt64(length)) != nil else { return }
        let span = Span(start: address, end: address + UInt64(length))
        if flags & DescriptorFlags.indirect != 0 && !inTable {
            if indirectNegotiated && tables.insert(span).inserted { spansChanged = true }
        } else if flags & DescriptorFlags.write != 0 {
            if deviceWritable.insert(span).inserted { spansChanged = true }
        }
    }

    /// After each step: reads every indirect table as it is now (its entries are descriptors the
    /// device may follow), and relaxes the checks once device writes may reach a ring or a table.
    mutating func scanDescriptors() {
        guard strict else { return }
        if indirectNegotiated {
            for table in tables {
                let entries = (table.end - table.start) / 16
                guard (table.end - table.start) % 16 == 0, entries <= UInt64(SplitQueue.maxSize) else { continue }
                guard entries <= 1024 else { return relax("an indirect table of \(entries) entries") }
                for i in 0..<entries {
                    let at = table.start + 16 * i
                    note(address: memory.load(UInt64.self, at: at) ?? 0, length: memory.load(UInt32.self, at: at + 8) ?? 0,
                         flags: memory.load(UInt16.self, at: at + 12) ?? 0, inTable: true)
                }
            }
        }
        guard spansChanged else { return }
        spansChanged = false
        let rings = Span(start: regionA, end: regionA + dataOffset)
        for span in deviceWritable {
            if span.overlaps(rings) { return relax("a writable buffer over the rings") }
            if tables.contains(where: span.overlaps) { return relax("a writable buffer over an indirect table") }
        }
    }

    func sector(_ input: inout Input) -> UInt64 {
        switch input.u8() % 4 {
        case 0: UInt64(input.u8())
        case 1: UInt64(input.u16())
        case 2: target.capacitySectors &- UInt64(input.u8())  // at and past the end
        default: input.u64()
        }
    }

    /// A descriptor's address: mostly in the data area, sometimes anywhere.
    func bufferAddress(kind: UInt8, _ input: inout Input) -> UInt64 {
        switch kind {
        case 0...4:
            return dataAddress(slot: input.u16())
        case 5:
            // Any alignment, any offset in A's data area or in B; with its length it may run off the end.
            let raw = UInt64(input.u16()) | UInt64(input.u8()) << 16
            return raw & 0x80_0000 != 0 ? regionB + raw & 0x7_FFFF : regionA + dataOffset + raw % (regionSize - dataOffset)
        case 6:
            // Edges: outside memory, region ends, the gap, wrap-around.
            let wild: [UInt64] = [0, regionA - 16, regionA + regionSize - 8, regionA + regionSize, regionB - 512,
                                  regionB + regionSize - 512, regionB + regionSize - 1, 1 << 63, UInt64.max - 15]
            return wild[Int(input.u8()) % wild.count]
        default:
            return dataAddress(slot: input.u16()) + UInt64(input.u8())
        }
    }

    func bufferLength(_ input: inout Input) -> UInt32 {
        let code = input.u16()
        switch code {
        case 0xFFFF: return UInt32.max
        case 0xFFFE: return 0x8000_0000
        default: return code & 0x8000 != 0 ? UInt32(code & 0x7FFF) * 512 : UInt32(code)
        }
    }

    /// Decodes one descriptor (flags, address, length, next) and writes it at `at`: into the
    /// descriptor table (`ring`), or into the data area (an indirect table).
    mutating func writeDescriptor(at: UInt64, ring: Bool, _ input: inout Input) {
        let control = input.u8()
        var flags = UInt16(control & 0x07)
        if control & 0x08 != 0 { flags |= 0xFFF8 }  // undefined flag bits
        let address = bufferAddress(kind: (control >> 4) & 0x07, &input)
        let length = bufferLength(&input)
        let next = UInt16(input.u8())
        var descriptor = (address.littleEndian, length.littleEndian, flags.littleEndian, next.littleEndian)
        withUnsafeBytes(of: &descriptor) { put($0, at: at, ring: ring) }
        // A table entry counts when the table is scanned; a ring entry counts now, even if it is
        // overwritten later (a chain may be in flight with it).
        if ring && !hostile { note(address: address, length: length, flags: flags, inTable: false) }
    }

    // MARK: Steps

    mutating func step(_ input: inout Input) {
        switch input.u8() % 12 {
        case 0:  // descriptor i of the table (also while its request is in flight)
            let index = UInt64(input.u8()) & (hostile ? 0xFF : UInt64(size - 1))
            writeDescriptor(at: descriptorTable &+ 16 * index, ring: true, &input)
        case 1:  // request header: type, reserved, sector
            let address = dataAddress(slot: input.u16())
            let types: [UInt32] = [0, 1, 4, 8, 11, 13, 2]
            let selector = Int(input.u8() % 8)
            let type = selector < types.count ? types[selector] : input.u32()
            var header = (type.littleEndian, UInt32(0), sector(&input).littleEndian)
            withUnsafeBytes(of: &header) { put($0, at: address, ring: false) }
        case 2:  // discard / write-zeroes range: sector, count, flags
            let address = dataAddress(slot: input.u16())
            let sector = sector(&input)
            let count: UInt32 = switch input.u8() % 4 {
            case 0: UInt32(input.u8())
            case 1: UInt32(input.u16())
            case 2: UInt32(truncatingIfNeeded: target.capacitySectors)
            default: input.u32()
            }
            let flagByte = input.u8()
            let flags = flagByte & 0x80 != 0 ? UInt32(flagByte) << 24 | UInt32(flagByte) : UInt32(flagByte & 1)
            var range = (sector.littleEndian, count.littleEndian, flags.littleEndian)
            withUnsafeBytes(of: &range) { put($0, at: address, ring: false) }
        case 3:  // append heads to the available ring (not yet published)
            let count = Int(input.u8() % 8) + 1
            for _ in 0..<count {
                let code = input.u8()
                let head: UInt16 = code < 0xF8 ? UInt16(code) & (size &- 1) : (code == 0xFF ? 0xFFFF : size &+ UInt16(code & 3))
                guard appendIndex &- availableIndex < 1024 else { break }
                putInteger(head, at: availableRing &+ 4 &+ 2 * UInt64(appendIndex & (size &- 1)), ring: true)
                appendIndex &+= 1
            }
        case 4:  // publish: avail.idx to what was appended, or a jump by up to 1023 (past the size)
            let mode = input.u8()
            let delta = mode < 0xC0 ? Int(appendIndex &- availableIndex) : Int(input.u16() % 1024)
            guard publishedInCycle + delta < 60_000 else { return }
            availableIndex &+= UInt16(delta)
            if Int(appendIndex &- availableIndex) > 1024 || delta > 0 && mode >= 0xC0 { appendIndex = availableIndex }
            publishedInCycle += delta
            if !manualUsedEvent && features & VirtioFeatures.eventIndex != 0 {
                // A driver asks for an interrupt at the next used entry.
                putInteger(usedIndex, at: availableRing &+ 4 &+ 2 * UInt64(size), ring: true)
            }
            atomicMemoryFence(ordering: .releasing)
            putInteger(availableIndex, at: availableRing &+ 2, ring: true)
        case 5:  // kick
            let code = input.u8()
            var value: UInt64 = code == 0xFF ? 0xFFFF_FFFF : UInt64(code % 4) + 1
            _ = write(kickFD, &value, 8)
        case 6:  // wait for completions, 1-8 ms (within the input's budget)
            wait(milliseconds: Int(input.u8() % 8) + 1)
        case 7:  // stop the queue and resume it: where it stopped, elsewhere, or by a second start
            let mode = input.u8() % 4
            // Each start costs a thread: a few per input find what many would, at a fraction of the time.
            guard restarts < 4 else { return }
            restarts += 1
            if mode == 3 && running {
                // The device stops the running worker itself; the new one replays the cycle.
                relax("a second start without a stop")
                start(nextAvailable: cycleAvailable)
                return
            }
            guard var next = stop() else { return }
            if mode == 2 {
                next &+= UInt16(input.u8())
                relax("resumed elsewhere than where it stopped")
            }
            cycleAvailable = next
            cycleUsed = usedIndex
            let pending = Int(availableIndex &- next)
            publishedInCycle = pending <= 60_000 ? pending : 0
            start(nextAvailable: next)
        case 8:  // poke bytes anywhere in the data area (anywhere at all with a hostile layout)
            let offset = UInt64(input.u16()) | UInt64(input.u8()) << 16
            let count = Int(input.u8() % 16) + 1
            let address = offset & 0x80_0000 != 0 ? regionB + offset & 0x7_FFFF
                : (hostile ? regionA : regionA + dataOffset) + offset & 0x7_FFFF
            var bytes: [UInt8] = []
            for _ in 0..<count { bytes.append(input.u8()) }
            bytes.withUnsafeBytes { put($0, at: address, ring: false) }
        case 9:  // avail.flags (NO_INTERRUPT) and used_event, set by hand from now on
            let flags = UInt16(input.u8() & 1)
            let usedEvent = input.u16()
            manualUsedEvent = true
            putInteger(flags, at: availableRing, ring: true)
            putInteger(usedEvent, at: availableRing &+ 4 &+ 2 * UInt64(size), ring: true)
        case 10:  // an indirect table of 1-16 descriptors in the data area
            let address = dataAddress(slot: input.u16())
            let count = UInt64(input.u8() % 16) + 1
            for i in 0..<count { writeDescriptor(at: address + 16 * i, ring: false, &input) }
        default:  // fill data with a byte
            let address = dataAddress(slot: input.u16())
            let value = input.u8()
            let length = UInt64(input.u16())
            let end = min(address + length, address < regionB ? regionA + regionSize : regionB + regionSize)
            guard end > address else { return }
            [UInt8](repeating: value, count: Int(end - address)).withUnsafeBytes { put($0, at: address, ring: false) }
        }
        scanDescriptors()
    }
}

// MARK: - Entry point

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    var input = Input(bytes: UnsafeBufferPointer(start: data, count: count))
    guard count >= 4 else { return 0 }
    let world = world
    totals.inputs += 1

    world.checkQuiet()
    memset(world.host, 0, Int(2 * regionSize))  // memset: a typed loop at -Onone costs milliseconds
    memset(world.shadow, 0, Int(2 * regionSize))

    let choice = input.bytes[0] & 0x07
    let target = world.targets[choice == 5 ? 1 : choice == 6 ? 2 : 0]
    // Fresh eventfds each input, so no count is left over: the kick one may be in semaphore mode
    // (each read takes one: a huge count is an endless stream of kicks) or non-blocking.
    let kickFlags: Int32 = 0x80000 /* EFD_CLOEXEC */ | (input.bytes[0] & 0x10 != 0 ? 1 /* EFD_SEMAPHORE */ : 0)
        | (input.bytes[0] & 0x20 != 0 ? 0x800 /* EFD_NONBLOCK */ : 0)
    let kickFD = world.makeEventFD(0, kickFlags)
    let callFD = world.makeEventFD(0, 0x80000 | 0x800)
    precondition(kickFD >= 0 && callFD >= 0, "eventfd: errno \(errno)")
    defer {
        close(kickFD)
        close(callFD)
    }

    var session = Session(target: target, world: world, input: &input, kickFD: kickFD, callFD: callFD)
    session.start(nextAvailable: session.availableIndex)
    var steps = 0
    while !input.isEmpty && steps < 512 {
        session.step(&input)
        steps += 1
    }
    _ = session.stop(reset: session.endWithReset)
    // A stopped device is quiet: nothing may write guest memory or the volumes from here on.
    world.takeSnapshot()
    world.checkFiles()
    return 0
}

@_cdecl("LLVMFuzzerInitialize")
public func initialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    _ = world
    atexit {
        print("blockdevice fuzz: \(totals.inputs) inputs, \(totals.started) queue starts, \(totals.stops) stops, "
              + "\(totals.answered) chains answered, \(totals.brokenLayouts) layouts refused, \(totals.waitedMicroseconds / 1000) ms waited")
        // Best effort: the volumes and their directory go with the process.
        let directory = world.stateDirectory
        for path in ["\(directory)/tenants/fuzz/volumes/rw.img", "\(directory)/tenants/fuzz/volumes/ro.img",
                     "\(directory)/tenants/fuzz/volumes/qos.img", "\(directory)/tenants/fuzz/volumes/neighbour.img",
                     "\(directory)/outside.bin"] { unlink(path) }
        for path in ["\(directory)/tenants/fuzz/volumes", "\(directory)/tenants/fuzz", "\(directory)/tenants", directory] { rmdir(path) }
    }
    return 0
}
