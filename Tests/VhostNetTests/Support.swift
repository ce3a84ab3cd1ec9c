import Foundation
import HostOS
import Logging
import Synchronization
import VhostNet
import VhostUser
import Virtio

/// A vhost-user-net port served on a socket in a temporary directory.
final class ServedPort {
    let directory: String
    let socket: String
    let device: VhostNetDevice
    let backend: VhostUserBackend

    init(mac: [UInt8] = [0x02, 0, 0, 0, 0x01, 0x01], mtu: Int = 1500, pairs: Int = 1, logger: Logger? = nil) throws {
        directory = NSTemporaryDirectory() + "bulkhead-vhostnet-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        socket = directory + "/port.sock"
        device = try VhostNetDevice(mac: mac, mtu: mtu, queuePairs: pairs, logger: logger)
        backend = VhostUserBackend(path: socket, device: device, logger: logger)
        try backend.start()
    }

    var pair: VhostNetQueuePair { device.queuePairs[0] }

    func stop() {
        backend.stop()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// What a switch worker does for one queue pair, on a thread of its own, with poll(2) instead of
/// a ring: follows the change signal, polls the transmit kick as `kicked` says, drains
/// `transmit` into one buffer and hands each frame to `forward`, whose frames (to deliver back
/// into the same pair) are delivered and flushed per batch.
final class TestWorker: @unchecked Sendable {
    // @unchecked Sendable: `stopping` and the counters are atomics; the rest is the thread's.
    let pair: VhostNetQueuePair
    private let forward: @Sendable (UnsafeRawBufferPointer) -> [[UInt8]]
    private let stopping = Atomic<Bool>(false)
    private let done = DispatchSemaphore(value: 0)
    /// Polls that found the kick descriptor readable, frames taken.
    let kickWakeups = Atomic<Int>(0)
    let frames = Atomic<Int>(0)
    /// CPU time the thread used, in nanoseconds, when it stopped.
    let cpuNanoseconds = Atomic<UInt64>(0)

    init(pair: VhostNetQueuePair, forward: @escaping @Sendable (UnsafeRawBufferPointer) -> [[UInt8]]) {
        self.pair = pair
        self.forward = forward
        Thread { [self] in
            run()
            done.signal()
        }.start()
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        done.wait()
    }

    private func run() {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: VhostNetQueuePair.frameBufferBytes, alignment: 64)
        defer { buffer.deallocate() }
        var kick = pair.refresh()
        var pausedUntil: UInt64?
        var readable: [Bool] = []
        while !stopping.load(ordering: .relaxed) {
            var fds = [pair.changeSignal]
            let now = monotonicNanoseconds()
            if let until = pausedUntil, now >= until { pausedUntil = nil; drain(buffer) }
            if let kick, pausedUntil == nil { fds.append(kick) }
            let timeout: Int32 = pausedUntil.map { Int32(min(($0 &- now) / 1_000_000 + 1, 20)) } ?? 20
            guard EventCounter.waitReadable(fds, readable: &readable, timeoutMilliseconds: timeout) > 0 else { continue }
            if readable[0] {
                kick = pair.refresh()
                pausedUntil = nil
                drain(buffer)
            }
            if fds.count > 1, readable[1] {
                kickWakeups.add(1, ordering: .relaxed)
                if case .at(let until) = pair.kicked(now: monotonicNanoseconds()) { pausedUntil = until }
                drain(buffer)
            }
        }
        var time = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
        cpuNanoseconds.store(UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec), ordering: .relaxed)
    }

    private func drain(_ buffer: UnsafeMutableRawBufferPointer) {
        while let length = pair.transmit(into: buffer) {
            frames.add(1, ordering: .relaxed)
            for reply in forward(UnsafeRawBufferPointer(rebasing: buffer[..<length])) {
                reply.withUnsafeBytes { _ = pair.deliver($0) }
            }
        }
        pair.flush()
    }
}

/// Test frames.
enum Frames {
    static let guestMAC: [UInt8] = [0x02, 0, 0, 0, 0x01, 0x01]
    static let peerMAC: [UInt8] = [0x02, 0, 0, 0, 0x01, 0x02]

    /// An Ethernet frame of `length` bytes (at least 14) with a recognisable payload.
    static func ethernet(length: Int, seed: Int = 1, destination: [UInt8] = peerMAC, source: [UInt8] = guestMAC) -> [UInt8] {
        var frame = destination + source + [0x88, 0xB5]
        frame += (0..<max(0, length - 14)).map { UInt8(truncatingIfNeeded: $0 &* 31 ^ seed &* 7) }
        return frame
    }

    /// A virtio-net header (12 bytes) followed by `frame`: what the switch hands `deliver`.
    static func withHeader(_ frame: [UInt8], _ header: VirtioNetHeader = VirtioNetHeader()) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: VirtioNetHeader.size)
        bytes.withUnsafeMutableBytes { header.write(to: $0) }
        return bytes + frame
    }

    /// An IPv4/UDP frame whose UDP checksum field holds the pseudo-header sum (NEEDS_CSUM).
    static func udpPartialChecksum(payload: [UInt8]) -> (frame: [UInt8], csumStart: UInt16, csumOffset: UInt16) {
        let source: [UInt8] = [10, 0, 0, 1], destination: [UInt8] = [10, 0, 0, 2]
        let udpLength = 8 + payload.count
        var ip: [UInt8] = [0x45, 0, UInt8((20 + udpLength) >> 8), UInt8((20 + udpLength) & 0xFF), 0, 0, 0x40, 0, 64, 17, 0, 0]
        ip += source + destination
        let ipSum = ~fold(sum(ip))
        ip[10] = UInt8(ipSum >> 8); ip[11] = UInt8(ipSum & 0xFF)
        let pseudo = sum(source + destination) + 17 + UInt32(udpLength)
        let partial = UInt16(fold(pseudo))
        var udp: [UInt8] = [0x30, 0x39, 0x00, 0x35, UInt8(udpLength >> 8), UInt8(udpLength & 0xFF), UInt8(partial >> 8), UInt8(partial & 0xFF)]
        udp += payload
        return (peerMAC + guestMAC + [0x08, 0x00] + ip + udp, 34, 6)
    }

    static func sum(_ bytes: [UInt8]) -> UInt32 {
        var total: UInt32 = 0
        var i = 0
        while i + 1 < bytes.count { total += UInt32(bytes[i]) << 8 | UInt32(bytes[i + 1]); i += 2 }
        if i < bytes.count { total += UInt32(bytes[i]) << 8 }
        return total
    }

    static func fold(_ value: UInt32) -> UInt16 {
        var v = value
        while v >> 16 != 0 { v = (v & 0xFFFF) + (v >> 16) }
        return UInt16(v)
    }

    /// Whether the UDP checksum of a frame from `udpPartialChecksum` verifies.
    static func udpChecksumVerifies(_ frame: [UInt8]) -> Bool {
        let ip = Array(frame[14..<34])
        let udp = Array(frame[34...])
        let pseudo = sum(Array(ip[12..<20])) + 17 + UInt32(udp.count)
        return fold(pseudo + sum(udp)) == 0xFFFF
    }
}
