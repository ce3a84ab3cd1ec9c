import ArgumentParser
import HostOS
import Logging
import Synchronization
import VhostNet
import VhostUser
import Virtio
#if canImport(Glibc)
import Glibc
#endif

// A vhost-user-net port without the switch: a VhostNetDevice served on --socket whose queue
// pair 0 is looped to a TAP device, the way the tests loop it (Tests/VhostNetTests). It is the
// peer NetLoad and testpmd are developed against while the switch does not serve vhost-user
// ports, and its numbers are the device's alone (no switching, no policy): label them so.
//
//   VhostTapLoop --socket PATH --tap NAME [--mac 02:00:00:00:00:01] [--mtu 1500]
//
// Creates the TAP device (IFF_VNET_HDR, offloads on) in the current namespace and prints
// "vhosttaploop ready tap=IFNAME"; the caller moves it to a namespace and configures it. Two
// threads: one drains the transmit ring into the TAP (poll(2) on the kick and change
// eventfds), one reads the TAP and delivers into the receive ring. SIGINT or SIGTERM ends it;
// the last line is "vhosttaploop counters ..." with the device's counters.

@main
struct VhostTapLoop: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A vhost-user-net device looped to a TAP device (no switch): a standalone benchmark peer.")

    @Option(help: "Where to serve vhost-user-net.")
    var socket: String
    @Option(help: "The TAP device's name.")
    var tap: String
    @Option(help: "The MAC in the device's config space.")
    var mac: String = "02:00:00:00:00:01"
    @Option(help: "The MTU in the device's config space.")
    var mtu: Int = 1500

    func run() throws {
        let parts = mac.split(separator: ":").compactMap { UInt8($0, radix: 16) }
        guard parts.count == 6 else { throw ValidationError("bad --mac") }
        let signals = SignalSet([SIGINT, SIGTERM])
        signals.block()
        var logger = Logger(label: "vhosttaploop")
        logger.logLevel = .notice
        let device = try VhostNetDevice(mac: parts, mtu: mtu, queuePairs: 1, logger: logger)
        let queue = try TapQueue(interfaceName: tap)
        let tapFD = queue.rawValue
        let backend = VhostUserBackend(path: socket, device: device, logger: logger)
        try backend.start()
        let stop = Flag()
        let pair = device.queuePairs[0]
        let transmitDone = spawn("vhostloop-tx") { guestToTap(pair: pair, tapFD: tapFD, stop: stop) }
        let receiveDone = spawn("vhostloop-rx") { tapToGuest(pair: pair, tapFD: tapFD, stop: stop) }
        // Straight to the descriptor: the caller waits for this line through a pipe.
        var ready = "vhosttaploop ready tap=\(queue.interfaceName)\n"
        ready.withUTF8 { _ = write(1, $0.baseAddress, $0.count) }
        _ = signals.wait()
        stop.set()
        transmitDone.wait()
        receiveDone.wait()
        backend.stop()
        print("vhosttaploop counters \(device.counters)")
    }
}

/// Transmit ring to TAP: what a switch worker does for the pair, with poll(2).
func guestToTap(pair: VhostNetQueuePair, tapFD: Int32, stop: Flag) {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: VhostNetQueuePair.frameBufferBytes, alignment: 64)
    defer { buffer.deallocate() }
    var kick = pair.refresh()
    var pausedUntil: UInt64?
    var readable: [Bool] = []
    func drain() {
        while let length = pair.transmit(into: buffer) { _ = write(tapFD, buffer.baseAddress, length) }
        pair.flush()
    }
    while !stop.isSet {
        var fds = [pair.changeSignal]
        let now = monotonicNanoseconds()
        if let until = pausedUntil, now >= until { pausedUntil = nil; drain() }
        if let kick, pausedUntil == nil { fds.append(kick) }
        let timeout: Int32 = pausedUntil.map { Int32(min(($0 &- now) / 1_000_000 + 1, 50)) } ?? 50
        guard EventCounter.waitReadable(fds, readable: &readable, timeoutMilliseconds: timeout) > 0 else { continue }
        if readable[0] {
            kick = pair.refresh()
            pausedUntil = nil
            drain()
        }
        if fds.count > 1, readable[1] {
            if case .at(let until) = pair.kicked(now: monotonicNanoseconds()) { pausedUntil = until }
            drain()
        }
    }
}

/// TAP to receive ring: every frame the TAP has, then one flush.
func tapToGuest(pair: VhostNetQueuePair, tapFD: Int32, stop: Flag) {
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: VhostNetQueuePair.frameBufferBytes, alignment: 64)
    defer { buffer.deallocate() }
    _ = fcntl(tapFD, F_SETFL, fcntl(tapFD, F_GETFL) | O_NONBLOCK)
    var readable: [Bool] = []
    while !stop.isSet {
        guard EventCounter.waitReadable([tapFD], readable: &readable, timeoutMilliseconds: 50) > 0 else { continue }
        var delivered = 0
        while delivered < 256 {
            let n = read(tapFD, buffer, VhostNetQueuePair.frameBufferBytes)
            guard n > 0 else { break }
            pair.deliver(UnsafeRawBufferPointer(start: buffer, count: n))
            delivered += 1
        }
        if delivered > 0 { pair.flush() }
    }
}

final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
}

/// Starts `body` on a thread named `name`; the returned semaphore is signalled when it returns.
func spawn(_ name: String, _ body: @escaping @Sendable () -> Void) -> Done {
    let done = Done()
    final class Box: @unchecked Sendable {
        // @unchecked Sendable: handed once to the new thread, which owns it from then on.
        let body: @Sendable () -> Void
        let done: Done
        let name: String
        init(_ body: @escaping @Sendable () -> Void, _ done: Done, _ name: String) { self.body = body; self.done = done; self.name = name }
    }
    var thread = pthread_t()
    let box = Unmanaged.passRetained(Box(body, done, name)).toOpaque()
    pthread_create(&thread, nil, { argument in
        let box = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue()
        setCurrentThreadName(box.name)
        box.body()
        box.done.signal()
        return nil
    }, box)
    pthread_detach(thread)
    return done
}

/// A one-shot completion.
final class Done: Sendable {
    private let finished = Mutex(false)
    func signal() { finished.withLock { $0 = true } }
    func wait() { while !finished.withLock({ $0 }) { usleep(10_000) } }
}
