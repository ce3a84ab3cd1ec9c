import ArgumentParser
import BlockClient
import HostOS
import Synchronization
import Virtio
#if canImport(Glibc)
import Glibc
#endif

// Closed-loop block load through Bulkhead's vhost-user-blk backend, the way fio drives a file:
// `depth` random requests in flight per queue, each completion resubmitted at once.
//
//   swift build -c release --product BlockLoad
//   BlockLoad --socket PATH --queues 1 --depth 32 --block-size 4096 --pattern randread --seconds 10 \
//             [--range-bytes B] [--server-pid P]
//
// One thread per queue; each owns its queue of the one BlockClient connection (BlockClient keeps
// per-queue state only, so threads on different queues share nothing but the connection's
// immutable parts). A thread reaps every used element there is, resubmits them all, then
// publishes once and kicks once (if the device asked for a kick); with nothing used it sleeps in
// poll(2) on the queue's call eventfd. The first `--warmup` seconds are not counted.
//
// CPU per I/O = (this process's CPU from getrusage + the server's utime+stime from
// /proc/PID/stat, over the measured window) / I/Os. The last line of the output is
//   blockload iops=N cpu_us_per_io=X client_cpu_s=C server_cpu_s=S [more key=value pairs]

enum Pattern: String, ExpressibleByArgument, CaseIterable {
    case randread, randwrite
}

@main
struct BlockLoad: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Closed-loop random I/O through a vhost-user-blk socket; IOPS and CPU per I/O.")

    @Option(help: "The vhost-user-blk socket of the volume.")
    var socket: String
    @Option(help: "Queues to use (the server needs at least as many), one thread each.")
    var queues: Int = 1
    @Option(help: "Requests in flight per queue.")
    var depth: Int = 32
    @Option(help: "Bytes per request (a multiple of 512).")
    var blockSize: Int = 4096
    @Option(help: "randread or randwrite.")
    var pattern: Pattern = .randread
    @Option(help: "Measured seconds (after the warm-up).")
    var seconds: Double = 10
    @Option(help: "Seconds of load before measuring.")
    var warmup: Double = 1
    @Option(help: "Offsets fall in the first B bytes of the volume (default: all of it).")
    var rangeBytes: UInt64?
    @Option(help: "The server's process id, for its CPU time (/proc/PID/stat).")
    var serverPid: Int32?
    @Option(help: "Virtqueue size (descriptors); each request takes 3.")
    var queueSize: Int?

    func validate() throws {
        guard (1...64).contains(queues) else { throw ValidationError("--queues must be 1...64") }
        guard (1...4096).contains(depth) else { throw ValidationError("--depth must be 1...4096") }
        guard blockSize > 0, blockSize % 512 == 0, blockSize <= 1 << 20 else {
            throw ValidationError("--block-size must be a multiple of 512, at most 1 MiB")
        }
        guard seconds > 0, warmup >= 0 else { throw ValidationError("--seconds must be > 0, --warmup >= 0") }
        if let q = queueSize {
            guard q >= 3 * depth, q <= 32768, q & (q - 1) == 0 else {
                throw ValidationError("--queue-size must be a power of two, at least 3 × --depth, at most 32768")
            }
        }
        if let pid = serverPid, ProcessCPU.seconds(pid: pid) == nil {
            throw ValidationError("no process \(pid) (cannot read /proc/\(pid)/stat)")
        }
    }

    func run() throws {
        var size = 128
        while size < 3 * depth { size <<= 1 }
        if let queueSize { size = queueSize }
        // Rings, slots and `depth` data buffers per queue, with room to spare.
        let perQueue = (depth * blockSize + 2 * 1024 * 1024 + 64 * size + 4095) & ~4095
        let memoryBytes = max(64 << 20, queues * perQueue)

        let client: BlockClient
        do {
            client = try BlockClient(socket: socket, queueCount: queues, queueSize: UInt16(size), memoryBytes: memoryBytes)
        } catch {
            throw failure("cannot connect to \(socket): \(error)")
        }
        let capacity = client.capacitySectors * 512
        let range = rangeBytes ?? capacity
        guard range <= capacity else { throw failure("--range-bytes \(range) exceeds the volume's \(capacity) bytes") }
        let blocks = range / UInt64(blockSize)
        guard blocks > 0 else { throw failure("the range (\(range) bytes) holds no \(blockSize)-byte block") }
        guard client.dataBytesPerQueue >= depth * blockSize else {
            throw failure("guest memory too small: \(client.dataBytesPerQueue) bytes of data per queue")
        }

        let stop = StopFlag()
        let loads = (0..<queues).map {
            QueueLoad(client: client, queue: $0, depth: depth, blockSize: blockSize, blocks: blocks,
                      write: pattern == .randwrite, queueSize: size, stop: stop)
        }
        var threads: [pthread_t] = []
        for load in loads {
            var thread = pthread_t()
            let rc = pthread_create(&thread, nil, { argument in
                let load = Unmanaged<QueueLoad>.fromOpaque(argument!).takeRetainedValue()
                load.run()
                return nil
            }, Unmanaged.passRetained(load).toOpaque())
            guard rc == 0 else { stop.set(); throw failure("pthread_create: \(String(cString: strerror(rc)))") }
            threads.append(thread)
        }

        func snapshot() -> Snapshot {
            Snapshot(time: monotonicNanoseconds(),
                     ios: loads.reduce(0) { $0 + $1.completed.load(ordering: .relaxed) },
                     latency: loads.reduce(0) { $0 + $1.latencyNanoseconds.load(ordering: .relaxed) },
                     batches: loads.reduce(0) { $0 + $1.batches.load(ordering: .relaxed) },
                     waits: loads.reduce(0) { $0 + $1.waits.load(ordering: .relaxed) },
                     client: ProcessCPU.selfSeconds(),
                     server: serverPid.flatMap { ProcessCPU.seconds(pid: $0) })
        }
        func sleepWatching(_ duration: Double) {
            let end = monotonicNanoseconds() + UInt64(duration * 1e9)
            while !stop.isSet, monotonicNanoseconds() < end { usleep(50_000) }
        }

        sleepWatching(warmup)
        let before = snapshot()
        sleepWatching(seconds)
        let after = snapshot()
        stop.set()
        for thread in threads { pthread_join(thread, nil) }
        if let message = loads.lazy.compactMap({ $0.failure }).first { throw failure(message) }

        let elapsed = Double(after.time - before.time) / 1e9
        let ios = after.ios - before.ios
        guard ios > 0 else { throw failure("no request completed in the measured \(elapsed) s") }
        let iops = Double(ios) / elapsed
        let mibs = iops * Double(blockSize) / 1_048_576
        let latency = Double(after.latency - before.latency) / Double(ios) / 1000
        let clientCPU = after.client - before.client
        var serverCPU: Double?
        if let a = after.server, let b = before.server { serverCPU = a - b }
        let cpuPerIO = (clientCPU + (serverCPU ?? 0)) / Double(ios) * 1e6
        let perBatch = Double(ios) / Double(max(1, after.batches - before.batches))
        let waitsPerIO = Double(after.waits - before.waits) / Double(ios)

        print("blockload: \(pattern.rawValue) bs=\(blockSize) queues=\(queues) depth=\(depth) over \(fixed(elapsed, 2)) s"
            + " (after \(fixed(warmup, 1)) s warm-up), \(range >> 20) MiB range")
        print("blockload: \(ios) I/Os, \(Int(iops.rounded())) IOPS, \(fixed(mibs, 1)) MiB/s, mean latency \(fixed(latency, 1)) µs")
        print("blockload: CPU client \(fixed(clientCPU, 3)) s, server "
            + (serverCPU.map { "\(fixed($0, 3)) s" } ?? "not measured (no --server-pid)")
            + ", \(fixed(cpuPerIO, 2)) µs per I/O")
        print("blockload: \(fixed(perBatch, 1)) completions per reaped batch (one publish + kick each), "
            + "\(fixed(waitsPerIO, 3)) sleeps in poll per I/O")
        print("blockload iops=\(Int(iops.rounded())) cpu_us_per_io=\(fixed(cpuPerIO, 2)) client_cpu_s=\(fixed(clientCPU, 3))"
            + " server_cpu_s=\(serverCPU.map { fixed($0, 3) } ?? "na") mib_s=\(fixed(mibs, 1)) mean_lat_us=\(fixed(latency, 1))"
            + " ios=\(ios) seconds=\(fixed(elapsed, 3)) ios_per_batch=\(fixed(perBatch, 1))")
    }

    private func failure(_ message: String) -> ExitCode {
        FileHandleStderr.write("blockload: error: \(message)\n")
        return ExitCode.failure
    }
}

private struct Snapshot {
    var time: UInt64
    var ios: UInt64
    var latency: UInt64
    var batches: UInt64
    var waits: UInt64
    var client: Double
    var server: Double?
}

private func fixed(_ value: Double, _ digits: Int) -> String {
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let rounded = (value * scale).rounded() / scale
    var text = "\(rounded)"
    if text.contains("e") { return text }
    let parts = text.split(separator: ".", omittingEmptySubsequences: false)
    let fraction = parts.count > 1 ? String(parts[1]) : ""
    text = String(parts[0])
    if digits > 0 { text += "." + String((fraction + String(repeating: "0", count: digits)).prefix(digits)) }
    return text
}

private enum FileHandleStderr {
    static func write(_ text: String) {
        var text = text
        text.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    }
}

/// CPU time of this process (all threads) and of another process (all threads, including those
/// that have exited, e.g. io_uring workers).
enum ProcessCPU {
    static func selfSeconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
        return seconds(usage.ru_utime) + seconds(usage.ru_stime)
    }

    /// utime + stime from /proc/PID/stat (fields 14 and 15), in seconds; nil when unreadable.
    static func seconds(pid: Int32) -> Double? {
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        // The command name (field 2) may contain spaces and parentheses: fields follow the last ')'.
        guard let close = buffer[..<n].lastIndex(of: UInt8(ascii: ")")) else { return nil }
        let fields = buffer[(close + 1)..<n].split(separator: UInt8(ascii: " "))
        // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
        guard fields.count > 12, let utime = Double(String(decoding: fields[11], as: UTF8.self)),
              let stime = Double(String(decoding: fields[12], as: UTF8.self)) else { return nil }
        return (utime + stime) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}

/// Tells the queue threads to stop (the measurement is over, or one of them failed).
final class StopFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    func set() { flag.store(true, ordering: .releasing) }
    var isSet: Bool { flag.load(ordering: .acquiring) }
}

/// One queue's closed loop. Runs on its own thread; `completed`, `latencyNanoseconds` (atomics)
/// and `failure` (read after the thread is joined) are what other threads look at.
final class QueueLoad {
    let client: BlockClient
    let queue: Int
    let depth: Int
    let blockSize: Int
    let blocks: UInt64
    let write: Bool
    let stop: StopFlag
    let completed = Atomic<UInt64>(0)
    let latencyNanoseconds = Atomic<UInt64>(0)
    /// Batches reaped (each: one publish and at most one kick) and sleeps in poll.
    let batches = Atomic<UInt64>(0)
    let waits = Atomic<UInt64>(0)
    private(set) var failure: String?

    /// Slot of each chain head in flight (-1: none), submission time of each slot.
    private var slotOfHead: [Int]
    private var submittedAt: [UInt64]
    private var random: UInt64

    init(client: BlockClient, queue: Int, depth: Int, blockSize: Int, blocks: UInt64, write: Bool, queueSize: Int, stop: StopFlag) {
        self.client = client
        self.queue = queue
        self.depth = depth
        self.blockSize = blockSize
        self.blocks = blocks
        self.write = write
        self.stop = stop
        slotOfHead = Array(repeating: -1, count: queueSize)
        submittedAt = Array(repeating: 0, count: depth)
        random = 0x9E37_79B9_7F4A_7C15 &* UInt64(queue + 1) | 1
    }

    /// xorshift64*: cheap, and each queue has its own sequence.
    private func nextBlock() -> UInt64 {
        random ^= random >> 12
        random ^= random << 25
        random ^= random >> 27
        return (random &* 0x2545_F491_4F6C_DD1D) % blocks
    }

    private func submit(slot: Int, at now: UInt64) throws {
        let sector = nextBlock() * UInt64(blockSize / 512)
        let header = client.writeHeader(queue: queue, slot: slot,
                                        type: write ? BlockClient.typeWrite : BlockClient.typeRead, sector: sector)
        let area = try client.data(queue: queue, offset: slot * blockSize, length: blockSize)
        let head = try client.add(queue: queue, [
            .init(address: header, length: 16, writable: false),
            .init(address: area.address, length: UInt32(blockSize), writable: !write),
            .init(address: header + 16, length: 1, writable: true),
        ])
        guard Int(head) < slotOfHead.count, slotOfHead[Int(head)] < 0 else {
            throw LoadFailure("descriptor head \(head) handed out twice")
        }
        slotOfHead[Int(head)] = slot
        submittedAt[slot] = now
    }

    func run() {
        setCurrentThreadName("blockload-q\(queue)")
        do {
            try loop()
        } catch {
            failure = "queue \(queue): \(error)"
            stop.set()
        }
    }

    private func loop() throws {
        if write {
            // Non-zero data, written once: the device reads it for every write.
            let area = try client.data(queue: queue, offset: 0, length: depth * blockSize)
            for i in 0..<(depth * blockSize) { area.pointer.storeBytes(of: UInt8(truncatingIfNeeded: i &* 31 &+ 7) | 1, toByteOffset: i, as: UInt8.self) }
        }
        let expectedLength = UInt32(write ? 1 : blockSize + 1)
        let callFD = client.callFD(queue: queue)
        var inFlight = 0
        var now = monotonicNanoseconds()
        for slot in 0..<depth { try submit(slot: slot, at: now) }
        inFlight = depth
        client.kick(queue: queue)
        var lastProgress = now
        var stopping = false
        var finished = [Int](repeating: 0, count: depth)
        var finishedCount = 0

        while inFlight > 0 {
            if !stopping && stop.isSet { stopping = true }
            let used = client.drainUsed(queue: queue)
            if used.isEmpty {
                var pfd = pollfd(fd: callFD, events: Int16(POLLIN), revents: 0)
                let r = poll(&pfd, 1, 100)
                waits.add(1, ordering: .relaxed)
                if r > 0 {
                    var value: UInt64 = 0
                    _ = read(callFD, &value, 8)
                } else if r < 0 && errno != EINTR {
                    throw LoadFailure("poll on the call eventfd: \(String(cString: strerror(errno)))")
                } else if monotonicNanoseconds() - lastProgress > 10_000_000_000 {
                    throw LoadFailure("no completion within 10 s (\(inFlight) requests in flight)")
                }
                continue
            }
            now = monotonicNanoseconds()
            lastProgress = now
            var latency: UInt64 = 0
            guard used.count <= depth else { throw LoadFailure("\(used.count) completions with \(depth) requests in flight") }
            for element in used {
                let head = Int(element.head)
                guard head < slotOfHead.count, slotOfHead[head] >= 0 else {
                    throw LoadFailure("the device returned head \(head), which is not in flight")
                }
                let slot = slotOfHead[head]
                slotOfHead[head] = -1
                let status = client.status(queue: queue, slot: slot)
                guard status == 0 else {
                    throw LoadFailure("request failed with virtio-blk status \(status) (slot \(slot))")
                }
                guard element.length == expectedLength else {
                    throw LoadFailure("used length \(element.length), expected \(expectedLength)")
                }
                latency &+= now &- submittedAt[slot]
                finished[finishedCount] = slot
                finishedCount += 1
            }
            // Resubmit only after every head of the batch is accounted for: drainUsed already
            // freed their descriptors, so a new chain may start at a head not yet looked at.
            if stopping {
                inFlight -= finishedCount
            } else {
                for i in 0..<finishedCount { try submit(slot: finished[i], at: now) }
                client.kick(queue: queue)
            }
            finishedCount = 0
            completed.add(UInt64(used.count), ordering: .relaxed)
            batches.add(1, ordering: .relaxed)
            latencyNanoseconds.add(latency, ordering: .relaxed)
        }
    }
}

struct LoadFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
