import ArgumentParser
import HostOS
import NetClient
import Virtio
#if canImport(Glibc)
import Glibc
#endif

// Frames per second through a vhost-user-net socket, one direction at a time, driven by our own
// frontend (NetClient) with its own memfd guest.
//
//   swift build -c release --product NetLoad
//   NetLoad --socket PATH --direction guest-to-switch --frame-bytes 64 --seconds 5 \
//           --dst-mac MAC --src-ip A --dst-ip B [--peer-counter FILE] [--server-pid P]
//   NetLoad --socket PATH --direction switch-to-guest --seconds 5 [--peer-counter FILE]
//
// guest-to-switch: one IPv4/UDP frame of --frame-bytes (Ethernet header to payload, no FCS:
// "64-byte frames" are 64 bytes here, as in testpmd's --txpkts) is written once into guest
// memory; the loop adds it to the transmit ring as often as there are free descriptors, up to
// --batch at a time, publishes and kicks once per batch (only when the device asks: EVENT_IDX
// when it is negotiated), and reclaims what the device used. With a full ring and nothing used it
// sleeps in poll(2) on the transmit call eventfd. Counted: frames the device took (used).
//
// switch-to-guest: every receive descriptor gets a buffer; the loop counts used buffers (frames,
// with mergeable buffers by num_buffers) without copying them and reposts them, sleeping in
// poll(2) on the receive call eventfd when nothing came. Something else sends (a generator
// behind the switch's other port).
//
// --peer-counter FILE: an integer file read at the start and the end of the measured window,
// e.g. /sys/class/net/IF/statistics/rx_packets of the TAP port (run NetLoad under
// `ip netns exec NS` so that /sys shows that namespace): its rate is the peer's view, printed as
// peer_pps. The first --warmup seconds are not counted. The last line of the output is
//   netload direction=D frame_bytes=N pps=X frames=N seconds=S peer_pps=X [more key=value pairs]

enum Direction: String, ExpressibleByArgument, CaseIterable {
    case guestToSwitch = "guest-to-switch"
    case switchToGuest = "switch-to-guest"
}

@main
struct NetLoad: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Frames per second through a vhost-user-net socket, one direction at a time.")

    @Option(help: "The vhost-user-net socket of the port.")
    var socket: String
    @Option(help: "guest-to-switch (transmit as fast as possible) or switch-to-guest (receive and count).")
    var direction: Direction
    @Option(help: "Frame length without FCS (guest-to-switch), 60...1514.")
    var frameBytes: Int = 64
    @Option(help: "Measured seconds (after the warm-up).")
    var seconds: Double = 5
    @Option(help: "Seconds before measuring.")
    var warmup: Double = 1
    @Option(help: "Frames added per publish and kick (guest-to-switch).")
    var batch: Int = 32
    @Option(help: "Virtqueue size (descriptors).")
    var queueSize: Int = 256
    @Option(help: "Destination MAC of the frames sent (the peer's), aa:bb:cc:dd:ee:ff.")
    var dstMAC: String = "ff:ff:ff:ff:ff:ff"
    @Option(help: "Source MAC (default: the MAC in the device's config space).")
    var srcMAC: String?
    @Option(help: "Source IPv4 address of the frames sent (the port's address).")
    var srcIP: String = "10.0.0.2"
    @Option(help: "Destination IPv4 address of the frames sent (the peer's).")
    var dstIP: String = "10.0.0.1"
    @Option(help: "UDP destination port of the frames sent.")
    var dstPort: Int = 9
    @Option(help: "An integer file sampled at the start and end of the measured window (the peer's counter).")
    var peerCounter: String?
    @Option(help: "The server's process id, for its CPU time (/proc/PID/stat).")
    var serverPid: Int32?
    @Option(help: "Negotiate EVENT_IDX (default on).")
    var eventIndex: Bool = true

    func validate() throws {
        guard (60...1514).contains(frameBytes) else { throw ValidationError("--frame-bytes must be 60...1514") }
        guard seconds > 0, warmup >= 0 else { throw ValidationError("--seconds must be > 0, --warmup >= 0") }
        guard (1...4096).contains(batch) else { throw ValidationError("--batch must be 1...4096") }
        guard (16...1024).contains(queueSize), queueSize & (queueSize - 1) == 0 else {
            throw ValidationError("--queue-size must be a power of two, 16...1024")
        }
        guard parseMAC(dstMAC) != nil, srcMAC.map({ parseMAC($0) != nil }) ?? true else { throw ValidationError("bad MAC address") }
        guard parseIPv4(srcIP) != nil, parseIPv4(dstIP) != nil else { throw ValidationError("bad IPv4 address") }
        guard (1...65535).contains(dstPort) else { throw ValidationError("--dst-port must be 1...65535") }
        if let file = peerCounter, readCounter(file) == nil { throw ValidationError("cannot read an integer from \(file)") }
    }

    func run() throws {
        var wanted = VirtioFeatures.version1 | VirtioFeatures.indirectDescriptors | NetFeatures.mac | NetFeatures.mtu
            | NetFeatures.status | NetFeatures.mergeableRxBuffers
        if eventIndex { wanted |= VirtioFeatures.eventIndex }
        let client: NetClient
        do {
            client = try NetClient(socket: socket, pairs: 1, queueSize: UInt16(queueSize), wanted: wanted, receiveBufferBytes: 2048)
        } catch {
            throw failure("cannot connect to \(socket): \(error)")
        }
        let source = srcMAC.flatMap(parseMAC) ?? client.config?.mac ?? [0x02, 0, 0, 0, 0, 1]
        client.postReceiveBuffers()

        let window = Window(warmup: warmup, seconds: seconds, peerCounter: peerCounter, serverPid: serverPid)
        let result: Counted
        switch direction {
        case .guestToSwitch:
            guard let frame = udpFrame(length: frameBytes, source: source) else { throw failure("cannot build the frame") }
            result = try transmit(client, frame: frame, window: window)
        case .switchToGuest:
            result = receive(client, window: window)
        }
        let report = window.report
        guard report.elapsed > 0 else { throw failure("the measured window is empty") }
        let pps = Double(result.frames) / report.elapsed
        let peerPPS = report.peerDelta.map { Double($0) / report.elapsed }
        let cpu = report.clientCPU + (report.serverCPU ?? 0)
        let cpuPerFrame = result.frames > 0 ? cpu / Double(result.frames) * 1e9 : 0
        let negotiated = "0x" + String(client.features, radix: 16)
        print("netload: \(direction.rawValue) over \(fixed(report.elapsed, 2)) s (after \(fixed(warmup, 1)) s warm-up), "
            + "features \(negotiated), queue size \(queueSize)")
        print("netload: \(result.frames) frames, \(Int(pps.rounded())) frames/s, \(fixed(Double(result.bytes) * 8 / report.elapsed / 1e9, 3)) Gbit/s"
            + (peerPPS.map { ", peer counted \(Int($0.rounded())) frames/s" } ?? ""))
        print("netload: \(fixed(Double(result.frames) / Double(max(1, result.batches)), 1)) frames per batch, "
            + "\(fixed(Double(result.waits) / Double(max(1, result.frames)), 4)) sleeps in poll per frame")
        print("netload direction=\(direction.rawValue) frame_bytes=\(direction == .guestToSwitch ? frameBytes : result.meanFrameBytes)"
            + " pps=\(Int(pps.rounded())) frames=\(result.frames) seconds=\(fixed(report.elapsed, 3))"
            + " peer_pps=\(peerPPS.map { String(Int($0.rounded())) } ?? "na")"
            + " client_cpu_s=\(fixed(report.clientCPU, 3)) server_cpu_s=\(report.serverCPU.map { fixed($0, 3) } ?? "na")"
            + " cpu_ns_per_frame=\(fixed(cpuPerFrame, 1)) event_idx=\(client.features & VirtioFeatures.eventIndex != 0 ? 1 : 0)")
    }

    /// The transmit loop (see the top of the file).
    private func transmit(_ client: NetClient, frame: [UInt8], window: Window) throws -> Counted {
        guard let slot = client.transmitSlot(pair: 0, slot: 0) else { throw failure("no transmit slot") }
        let headerLength = client.headerLength
        // A zero header: no offload asked for; then the frame.
        slot.pointer.initializeMemory(as: UInt8.self, repeating: 0, count: headerLength)
        frame.withUnsafeBytes { (slot.pointer + headerLength).copyMemory(from: $0.baseAddress!, byteCount: frame.count) }
        let chain = [VirtqueueDriver.Buffer(address: slot.address, length: UInt32(headerLength + frame.count), writable: false)]
        let callFD = client.callDescriptor(pair: 0, transmit: true)
        var counted = Counted()
        var readable: [Bool] = []
        window.start()
        while !window.finished(frames: &counted) {
            var added = 0
            while added < batch, client.transmitRoom(pair: 0) > 0 {
                do { _ = try client.add(pair: 0, transmit: true, chain) } catch { break }
                added += 1
            }
            if added > 0 {
                client.kick(pair: 0, transmit: true)
                counted.batches += 1
            }
            let used = client.reclaimTransmitted(pair: 0)
            counted.frames += UInt64(used)
            counted.bytes += UInt64(used * frame.count)
            if added == 0, used == 0 {
                counted.waits += 1
                if EventCounter.waitReadable([callFD], readable: &readable, timeoutMilliseconds: 10) > 0 {
                    _ = EventCounter.take(callFD)
                }
            }
        }
        return counted
    }

    /// The receive loop (see the top of the file).
    private func receive(_ client: NetClient, window: Window) -> Counted {
        let callFD = client.callDescriptor(pair: 0, transmit: false)
        var counted = Counted()
        var readable: [Bool] = []
        var mergeRemaining = 0
        window.start()
        while !window.finished(frames: &counted) {
            let got = client.countReceived(pair: 0, mergeRemaining: &mergeRemaining)
            counted.frames += UInt64(got.frames)
            counted.bytes += UInt64(got.bytes)
            if got.frames > 0 {
                counted.batches += 1
            } else {
                counted.waits += 1
                if EventCounter.waitReadable([callFD], readable: &readable, timeoutMilliseconds: 10) > 0 {
                    _ = EventCounter.take(callFD)
                }
            }
        }
        return counted
    }

    /// An Ethernet/IPv4/UDP frame of `length` bytes with valid IPv4 and UDP checksums.
    private func udpFrame(length: Int, source: [UInt8]) -> [UInt8]? {
        guard let destinationMAC = parseMAC(dstMAC), let sourceIP = parseIPv4(srcIP), let destinationIP = parseIPv4(dstIP),
              length >= 42 else { return nil }
        let ipLength = length - 14, udpLength = ipLength - 20
        var ip: [UInt8] = [0x45, 0, UInt8(ipLength >> 8), UInt8(ipLength & 0xFF), 0, 0, 0x40, 0, 64, 17, 0, 0]
        ip += sourceIP + destinationIP
        let ipSum = ~fold(sum(ip))
        ip[10] = UInt8(ipSum >> 8)
        ip[11] = UInt8(ipSum & 0xFF)
        var udp: [UInt8] = [0x9C, 0x40, UInt8(dstPort >> 8), UInt8(dstPort & 0xFF), UInt8(udpLength >> 8), UInt8(udpLength & 0xFF), 0, 0]
        udp += (0..<(udpLength - 8)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
        var udpSum = ~fold(sum(sourceIP + destinationIP) + 17 + UInt32(udpLength) + sum(udp))
        if udpSum == 0 { udpSum = 0xFFFF }
        udp[6] = UInt8(udpSum >> 8)
        udp[7] = UInt8(udpSum & 0xFF)
        return destinationMAC + source + [0x08, 0x00] + ip + udp
    }

    private func failure(_ message: String) -> ExitCode {
        var text = "netload: error: \(message)\n"
        text.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
        return ExitCode.failure
    }
}

/// What a loop counted in the measured window.
struct Counted {
    var frames: UInt64 = 0
    var bytes: UInt64 = 0
    var batches: UInt64 = 0
    var waits: UInt64 = 0

    var meanFrameBytes: Int { frames > 0 ? Int(bytes / frames) : 0 }
}

/// The warm-up and the measured window: resets the counts when the warm-up ends, samples the
/// peer counter and CPU times at both ends.
final class Window {
    let peerCounter: String?
    let serverPid: Int32?
    private var measuring = false
    private var startTime: UInt64 = 0
    private var endTime: UInt64 = 0
    private var peerStart: UInt64?
    private var peerEnd: UInt64?
    private var clientStart = 0.0, clientEnd = 0.0
    private var serverStart: Double?, serverEnd: Double?
    private let warmup: Double, seconds: Double
    private var begun: UInt64 = 0

    init(warmup: Double, seconds: Double, peerCounter: String?, serverPid: Int32?) {
        self.warmup = warmup
        self.seconds = seconds
        self.peerCounter = peerCounter
        self.serverPid = serverPid
    }

    func start() { begun = monotonicNanoseconds() }

    /// Checks the clock (the vDSO's, cheap enough per loop round): starts the window after the
    /// warm-up (zeroing the counts), true once it is over.
    func finished(frames: inout Counted) -> Bool {
        let now = monotonicNanoseconds()
        if !measuring {
            guard now &- begun >= UInt64(warmup * 1e9) else { return false }
            measuring = true
            frames = Counted()
            startTime = monotonicNanoseconds()
            peerStart = peerCounter.flatMap(readCounter)
            clientStart = ProcessCPU.selfSeconds()
            serverStart = serverPid.flatMap { ProcessCPU.seconds(pid: $0) }
            return false
        }
        guard now &- startTime >= UInt64(seconds * 1e9) else { return false }
        endTime = now
        peerEnd = peerCounter.flatMap(readCounter)
        clientEnd = ProcessCPU.selfSeconds()
        serverEnd = serverPid.flatMap { ProcessCPU.seconds(pid: $0) }
        return true
    }

    var report: (elapsed: Double, peerDelta: UInt64?, clientCPU: Double, serverCPU: Double?) {
        var peer: UInt64?
        if let a = peerStart, let b = peerEnd, b >= a { peer = b - a }
        var server: Double?
        if let a = serverStart, let b = serverEnd { server = b - a }
        return (Double(endTime &- startTime) / 1e9, peer, clientEnd - clientStart, server)
    }
}

/// An unsigned integer from a file such as /sys/class/net/IF/statistics/rx_packets.
func readCounter(_ path: String) -> UInt64? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 64)
    let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    guard n > 0 else { return nil }
    let digits = buffer[..<n].prefix { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
    return digits.isEmpty ? nil : UInt64(String(decoding: digits, as: UTF8.self))
}

func parseMAC(_ text: String) -> [UInt8]? {
    let parts = text.split(separator: ":")
    guard parts.count == 6 else { return nil }
    let bytes = parts.compactMap { $0.count <= 2 ? UInt8($0, radix: 16) : nil }
    return bytes.count == 6 ? bytes : nil
}

func parseIPv4(_ text: String) -> [UInt8]? {
    let parts = text.split(separator: ".", omittingEmptySubsequences: false)
    guard parts.count == 4 else { return nil }
    let bytes = parts.compactMap { UInt8($0) }
    return bytes.count == 4 ? bytes : nil
}

func sum(_ bytes: [UInt8]) -> UInt32 {
    var total: UInt32 = 0
    var i = 0
    while i + 1 < bytes.count { total &+= UInt32(bytes[i]) << 8 | UInt32(bytes[i + 1]); i += 2 }
    if i < bytes.count { total &+= UInt32(bytes[i]) << 8 }
    return total
}

func fold(_ value: UInt32) -> UInt16 {
    var v = value
    while v >> 16 != 0 { v = (v & 0xFFFF) &+ (v >> 16) }
    return UInt16(v)
}

func fixed(_ value: Double, _ digits: Int) -> String {
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

/// CPU time of this process and of another one (utime + stime from /proc/PID/stat).
enum ProcessCPU {
    static func selfSeconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
        return seconds(usage.ru_utime) + seconds(usage.ru_stime)
    }

    static func seconds(pid: Int32) -> Double? {
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0, let close = buffer[..<n].lastIndex(of: UInt8(ascii: ")")) else { return nil }
        let fields = buffer[(close + 1)..<n].split(separator: UInt8(ascii: " "))
        guard fields.count > 12, let utime = Double(String(decoding: fields[11], as: UTF8.self)),
              let stime = Double(String(decoding: fields[12], as: UTF8.self)) else { return nil }
        return (utime + stime) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}
