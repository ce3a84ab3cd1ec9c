import Devices
import HostOS
import KVM
import Synchronization
import Virtio
#if canImport(Glibc)
import Glibc
#endif

/// Why a machine could not be built or started.
public enum MachineError: Error, Equatable, CustomStringConvertible {
    case invalidConfiguration(String)
    case kvm(KVMError)
    case system(SystemError)
    /// A device range that is empty, wraps, leaves the port space or overlaps another device's.
    case invalidDeviceRange(space: AddressSpace, base: UInt64, length: UInt64, reason: String)
    /// `start` was called twice.
    case alreadyStarted
    /// A vCPU thread could not be created.
    case threadCreation(Int32)

    public var description: String {
        switch self {
        case .invalidConfiguration(let why): "machine configuration: \(why)"
        case .kvm(let error): "\(error)"
        case .system(let error): "\(error)"
        case .invalidDeviceRange(let space, let base, let length, let reason):
            "device at \(space == .port ? "port" : "address") 0x\(String(base, radix: 16)) length 0x\(String(length, radix: 16)): \(reason)"
        case .alreadyStarted: "the machine is already started"
        case .threadCreation(let error): "pthread_create failed: \(String(cString: strerror(error))) (errno \(error))"
        }
    }
}

/// What the machine and its vCPUs are made of.
public struct MachineConfiguration: Equatable, Sendable {
    /// vCPUs, 1-254 (their local APIC ids are 0..<vcpus).
    public var vcpus: Int
    /// Guest RAM in bytes: a multiple of 2 MiB.
    public var memoryBytes: UInt64

    public init(vcpus: Int, memoryBytes: UInt64) {
        self.vcpus = vcpus
        self.memoryBytes = memoryBytes
    }
}

/// Why a vCPU could not go on: the exit KVM reported, with its detail.
public struct MachineFailure: Equatable, Sendable, CustomStringConvertible {
    /// The vCPU that failed.
    public let vcpu: Int
    /// What happened, by the KVM name of the exit (or the failing call).
    public let exit: String
    /// KVM_EXIT_INTERNAL_ERROR's suberror (1: an instruction KVM could not emulate).
    public let suberror: UInt32?
    /// KVM's detail words for the exit.
    public let data: [UInt64]
    /// The guest's RIP when it failed, when KVM could tell.
    public let instructionPointer: UInt64?

    public init(vcpu: Int, exit: String, suberror: UInt32? = nil, data: [UInt64] = [], instructionPointer: UInt64? = nil) {
        self.vcpu = vcpu
        self.exit = exit
        self.suberror = suberror
        self.data = data
        self.instructionPointer = instructionPointer
    }

    public var description: String {
        var text = "vCPU \(vcpu): \(exit)"
        if let suberror {
            let names: [UInt32: String] = [1: "emulation failure", 2: "simultaneous exception", 3: "delivery event", 4: "unexpected exit reason"]
            text += " suberror \(suberror)" + (names[suberror].map { " (\($0))" } ?? "")
        }
        if let rip = instructionPointer { text += " at RIP 0x\(String(rip, radix: 16))" }
        if !data.isEmpty { text += " data [" + data.map { "0x" + String($0, radix: 16) }.joined(separator: ", ") + "]" }
        return text
    }
}

/// How a machine ended.
public enum MachineOutcome: Equatable, Sendable, CustomStringConvertible {
    /// The guest powered off (SLP_EN at port 0x604).
    case powerOff
    /// The guest reset the machine (i8042 command 0xFE).
    case reset
    /// A vCPU shut down: a triple fault (KVM_EXIT_SHUTDOWN).
    case shutdown(vcpu: Int)
    /// A vCPU could not go on (emulation failure, internal error, entry failure, KVM_RUN error).
    case failed(MachineFailure)
    /// The VMM stopped it (`Machine.stop()`).
    case stopped

    public var description: String {
        switch self {
        case .powerOff: "powered off"
        case .reset: "reset"
        case .shutdown(let vcpu): "shut down (triple fault on vCPU \(vcpu))"
        case .failed(let failure): "failed: \(failure)"
        case .stopped: "stopped by the VMM"
        }
    }
}

/// A piece of guest RAM as vhost-user's SET_MEM_TABLE describes it: the backend maps `size`
/// bytes of `memfd` from `offset` and finds guest-physical `guestAddress` (and the VMM's
/// `userAddress`) at their start.
public struct GuestRAMRegion: Equatable, Sendable {
    public let guestAddress: UInt64
    public let size: UInt64
    public let userAddress: UInt64
    /// The guest RAM memfd (borrowed): a `Machine`'s is valid as long as the machine lives.
    public let memfd: Int32
    public let offset: UInt64

    public init(guestAddress: UInt64, size: UInt64, userAddress: UInt64, memfd: Int32, offset: UInt64) {
        self.guestAddress = guestAddress
        self.size = size
        self.userAddress = userAddress
        self.memfd = memfd
        self.offset = offset
    }
}

/// Counters of the exits the VMM handled (read with `Machine.statistics`).
public struct MachineStatistics: Equatable, Sendable {
    public var portExits = 0
    public var mmioExits = 0
    /// Accesses no attached device claimed (reads returned all ones, writes were dropped).
    public var unclaimedPortAccesses = 0
    public var unclaimedMemoryAccesses = 0
}

/// Monotonic timestamps of a machine's start (CLOCK_MONOTONIC, nanoseconds).
public struct MachineTimings: Equatable, Sendable {
    /// When building the machine began (or the time given to `init`).
    public let createdAt: UInt64
    /// The first KVM_RUN of vCPU 0 (the guest's first instruction follows it).
    public let firstRunAt: UInt64?
    /// The first byte the guest wrote to the serial port.
    public let firstSerialByteAt: UInt64?
}

/// A KVM virtual machine with its guest RAM, vCPU threads and port/MMIO devices: the partition
/// VMM's core.
///
/// Build it, load a guest into `memory` (`FlatBoot`, `LinuxBoot`), attach devices, `start` it
/// with the boot loader's entry state, then wait for its outcome. It comes with the PC devices
/// every guest here needs: a 16550 UART at COM1 (0x3F8, IRQ 4) whose output goes to `console`,
/// the i8042 reset path at 0x60/0x64 and the power-off register at 0x604.
///
/// Each vCPU runs on its own thread; device models see one access at a time (one bus lock).
/// Once an outcome is decided (power-off, reset, triple fault, failure, `stop()`) every vCPU
/// thread leaves KVM_RUN and ends. A started machine keeps itself alive until then: call
/// `stop()` to end it early.
public final class Machine: @unchecked Sendable {
    // @unchecked Sendable: `bus`, `stats` and `serialLineHigh` are only touched under `busLock`;
    // the vCPU threads live in `lifecycle`; the vCPUs and the VM are used through ioctls that
    // are safe from any thread (each vCPU runs only on its own thread; `requestExit` is atomic);
    // the rest is immutable, atomic or behind its own mutex.

    /// The KVM VM: for ioeventfd, irqfd, GSI routing and memory slots beyond RAM.
    public let vm: VirtualMachine
    public let memoryMap: GuestMemoryMap
    /// Guest RAM, mapped in this process (bounds-checked translation).
    public let memory: GuestMemory
    /// Guest RAM for vhost-user backends (one entry per KVM memory slot of RAM).
    public let memoryRegions: [GuestRAMRegion]

    public let configuration: MachineConfiguration

    private let memoryFile: FileDescriptor
    private let ram: MemoryMapping
    private let cpus: [VCPUSlot]
    private let createdAt: UInt64
    private let firstRunAt = Atomic<UInt64>(0)
    private let firstSerialByteAt = Timestamp()

    private let busLock = Mutex(())
    private var bus = Bus()
    private let serial: Serial8250
    private var serialLineHigh = false
    private var systemControl: SystemControl?
    private var stats = MachineStatistics()

    private let stopping = Atomic<Bool>(false)
    private let decided = Mutex<MachineOutcome?>(nil)
    private let outcomeEvent: EventFD
    private let lifecycle = Mutex<Lifecycle>(.built)

    private enum Lifecycle {
        case built
        case started([pthread_t])
        case joined
    }

    /// The ISA interrupt of COM1.
    public static let serialIRQ: UInt32 = 4
    /// COM1's ports.
    public static let serialPort: UInt16 = 0x3F8

    /// Builds the VM: RAM from a sealed memfd in KVM memory slots (below 3 GiB, the rest above
    /// 4 GiB), the in-kernel interrupt controllers and PIT, KVM's TSS and identity-map pages, and
    /// `configuration.vcpus` vCPUs with CPUID (APIC ids, hypervisor bit), boot MSRs, FPU and
    /// local APIC set up. `console` gets each byte the guest writes to COM1 (on a vCPU thread,
    /// one byte at a time). `createdAt` (CLOCK_MONOTONIC ns) is where the start-up timings
    /// count from; by default, now.
    public init(kvm: borrowing KVMSystem, configuration: MachineConfiguration,
                createdAt: UInt64 = monotonicNanoseconds(),
                console: @escaping @Sendable (UInt8) -> Void) throws(MachineError) {
        self.createdAt = createdAt
        self.configuration = configuration
        guard (1...254).contains(configuration.vcpus) else {
            throw .invalidConfiguration("\(configuration.vcpus) vCPUs: between 1 and 254")
        }
        let map = try GuestMemoryMap(ramSize: configuration.memoryBytes)
        memoryMap = map
        do {
            outcomeEvent = try EventFD(nonBlocking: true)
            memoryFile = try FileDescriptor.memfd(name: "bulkhead-guest-ram", size: Int(map.ramSize))
            try sealGuestMemoryFile(memoryFile)
            ram = try MemoryMapping(fd: memoryFile.rawValue, offset: 0, size: map.ramSize, shared: true)
        } catch let error as SystemError {
            throw .system(error)
        } catch let error as KVMError {
            throw .kvm(error)
        } catch {
            throw .invalidConfiguration("\(error)")
        }

        // One mapping of the whole file; each RAM slot is a piece of it.
        let base = ram.base
        let fd = memoryFile.rawValue
        var regions = [GuestRAMRegion(guestAddress: 0, size: map.lowRAMSize, userAddress: UInt64(UInt(bitPattern: base)),
                                      memfd: fd, offset: 0)]
        if map.highRAMSize > 0 {
            regions.append(GuestRAMRegion(guestAddress: GuestMemoryMap.highMemoryBase, size: map.highRAMSize,
                                          userAddress: UInt64(UInt(bitPattern: base)) + map.lowRAMSize,
                                          memfd: fd, offset: map.lowRAMSize))
        }
        memoryRegions = regions
        do {
            memory = try GuestMemory(regions: regions.map { region in
                GuestMemoryRegion(guestAddress: region.guestAddress, size: region.size, host: base + Int(region.offset))
            })
        } catch {
            throw .invalidConfiguration("\(error)")
        }

        let firstSerialByteAt = self.firstSerialByteAt
        serial = Serial8250(output: { byte in
            firstSerialByteAt.recordOnce()
            console(byte)
        })

        do throws(KVMError) {
            try VCPUKick.install()
            vm = try kvm.makeMachine()
            // Order matters to KVM: identity map and irqchip before vCPUs, PIT after the irqchip.
            // RAM goes in before the irqchip: the first memory slot of a VM that already has
            // one costs 4-8 ms here (against 0.1 ms), most of the machine's start-up time.
            try vm.setIdentityMapAddress(GuestMemoryMap.identityMapAddress)
            try vm.setTSSAddress(GuestMemoryMap.kvmTSSAddress)
            for (slot, region) in regions.enumerated() {
                try vm.map(slot: UInt32(slot), guestAddress: region.guestAddress, size: region.size,
                           host: ram.base + Int(region.offset))
            }
            try vm.createInterruptController()
            try vm.createTimer()
            let supported = try kvm.supportedCPUID()
            var made: [VCPUSlot] = []
            for index in 0..<configuration.vcpus {
                let cpu = try vm.makeCPU(id: Int32(index))
                try cpu.setCPUID(CPUID.table(supported: supported, apicID: UInt8(index), vcpuCount: configuration.vcpus))
                try cpu.setMSRs(ModelSpecificRegister.boot)
                try cpu.resetFPU()
                try cpu.wireLocalInterrupts()
                made.append(VCPUSlot(cpu))
            }
            cpus = made
        } catch {
            throw .kvm(error)
        }

        let control = SystemControl(onEvent: { [weak self] event in
            self?.finish(event == .powerOff ? .powerOff : .reset)
        })
        systemControl = control
        try attach(serial, space: .port, base: UInt64(Machine.serialPort), length: 8)
        try attach(control.keyboardController, space: .port, base: UInt64(SystemControl.keyboardControllerPort),
                   length: SystemControl.keyboardControllerLength)
        try attach(control.powerControl, space: .port, base: UInt64(SystemControl.powerControlPort),
                   length: SystemControl.powerControlLength)
    }

    deinit {
        // Reached only once every vCPU thread has ended (each holds the machine).
        stop()
        join()
    }

    /// Routes guest accesses to `[base, base + length)` of `space` to `device`; an access must
    /// lie inside one device's range to reach it. Throws for an empty range, one that wraps or
    /// leaves the 16-bit port space, or one that overlaps a device already attached.
    public func attach(_ device: BusDevice, space: AddressSpace, base: UInt64, length: UInt64) throws(MachineError) {
        let (end, overflow) = base.addingReportingOverflow(length)
        if length == 0 || overflow { throw .invalidDeviceRange(space: space, base: base, length: length, reason: "empty or wraps around") }
        if space == .port && end > 0x1_0000 {
            throw .invalidDeviceRange(space: space, base: base, length: length, reason: "beyond port 0xFFFF")
        }
        let problem: String? = busLock.withLock { _ in
            let existing = space == .port ? bus.ports : bus.memory
            if let other = existing.first(where: { $0.base < end && base < $0.base + $0.length }) {
                return "overlaps the device at 0x\(String(other.base, radix: 16)) length 0x\(String(other.length, radix: 16))"
            }
            let attachment = Bus.Attachment(device: device, base: base, length: length)
            if space == .port { bus.ports.append(attachment) } else { bus.memory.append(attachment) }
            return nil
        }
        if let problem { throw .invalidDeviceRange(space: space, base: base, length: length, reason: problem) }
    }

    /// Starts every vCPU on its own thread, vCPU 0 (the bootstrap processor) at `entry`; the
    /// others wait in KVM for the guest's INIT/SIPI. See `start(threadSetup:)`.
    public func start(entry: LongModeEntry, threadSetup: (@Sendable () throws -> Void)? = nil) throws(MachineError) {
        try enter(entry)
        try start(threadSetup: threadSetup)
    }

    /// Puts vCPU 0 (the bootstrap processor) at `entry`. Separate from `start` so that a jailed
    /// process sets registers before its system-call filter forbids it.
    public func enter(_ entry: LongModeEntry) throws(MachineError) {
        let problem: MachineError? = lifecycle.withLock { state in
            guard case .built = state else { return .alreadyStarted }
            do throws(KVMError) {
                try cpus[0].cpu.enterLongMode(entry)
            } catch {
                return .kvm(error)
            }
            return nil
        }
        if let problem { throw problem }
    }

    /// Starts every vCPU on its own thread, vCPU 0 where `enter` put it; the others wait in KVM
    /// for the guest's INIT/SIPI. Each thread first runs `threadSetup` (the partition process
    /// stacks the vCPU threads' own seccomp filter there); a setup that throws fails the machine
    /// before its vCPU runs any guest code.
    public func start(threadSetup: (@Sendable () throws -> Void)? = nil) throws(MachineError) {
        // The lock is held while the threads are created: a vCPU thread that decides the outcome
        // at once waits in `finish` until the list of threads to kick is complete.
        let problem: MachineError? = lifecycle.withLock { state in
            guard case .built = state else { return .alreadyStarted }
            var started: [pthread_t] = []
            defer { state = .started(started) }
            for index in cpus.indices {
                let body = ThreadBody { [self] in
                    // Named before the setup: a vCPU thread's filter may forbid renaming.
                    setCurrentThreadName("vcpu\(index)")
                    if let threadSetup {
                        do { try threadSetup() } catch {
                            finish(.failed(MachineFailure(vcpu: index, exit: "vCPU thread setup: \(error)")))
                            return
                        }
                    }
                    runVCPU(index)
                }
                let context = Unmanaged.passRetained(body).toOpaque()
                var thread = pthread_t()
                let r = pthread_create(&thread, nil, { context in
                    guard let context else { return nil }
                    Unmanaged<ThreadBody>.fromOpaque(context).takeRetainedValue().run()
                    return nil
                }, context)
                if r != 0 {
                    Unmanaged<ThreadBody>.fromOpaque(context).release()
                    return .threadCreation(r)
                }
                started.append(thread)
            }
            return nil
        }
        if let problem {
            if case .threadCreation(let r) = problem { finish(.failed(MachineFailure(vcpu: 0, exit: "pthread_create: errno \(r)"))) }
            throw problem
        }
    }

    /// Decides the outcome `.stopped` (unless one is already decided) and makes every vCPU leave
    /// the guest. Safe from any thread; does not wait (see `waitForOutcome`).
    public func stop() {
        finish(.stopped)
    }

    /// The outcome, once decided.
    public var outcome: MachineOutcome? { decided.withLock { $0 } }

    /// A descriptor that becomes readable (an eventfd) once the outcome is decided, for event
    /// loops; owned by the machine.
    public var outcomeDescriptor: Int32 { outcomeEvent.rawValue }

    /// Waits up to `timeoutMilliseconds` (forever when negative) for the outcome; nil on timeout.
    /// After an outcome, the vCPU threads are also waited for.
    public func waitForOutcome(timeoutMilliseconds: Int32 = -1) -> MachineOutcome? {
        let deadline = timeoutMilliseconds < 0 ? UInt64.max : monotonicNanoseconds() + UInt64(timeoutMilliseconds) * 1_000_000
        while outcome == nil {
            let now = monotonicNanoseconds()
            if now >= deadline { return nil }
            let left = deadline == .max ? -1 : Int32(min((deadline - now) / 1_000_000 + 1, UInt64(Int32.max)))
            var descriptor = pollfd(fd: outcomeEvent.rawValue, events: Int16(POLLIN), revents: 0)
            _ = poll(&descriptor, 1, left)
        }
        join()
        return outcome
    }

    /// Start-up timestamps.
    public var timings: MachineTimings {
        let run = firstRunAt.load(ordering: .acquiring)
        let serial = firstSerialByteAt.value.load(ordering: .acquiring)
        return MachineTimings(createdAt: createdAt, firstRunAt: run == 0 ? nil : run, firstSerialByteAt: serial == 0 ? nil : serial)
    }

    /// Exit and bus counters so far.
    public var statistics: MachineStatistics { busLock.withLock { _ in stats } }

    /// Queues bytes for the guest to read from COM1 (raising its interrupt if enabled); returns
    /// how many fitted.
    @discardableResult
    public func sendConsoleInput(_ bytes: [UInt8]) -> Int {
        busLock.withLock { _ in
            let accepted = serial.receive(bytes)
            updateSerialInterrupt()
            return accepted
        }
    }

    // MARK: - vCPU threads

    private func runVCPU(_ index: Int) {
        let slot = cpus[index]
        while !stopping.load(ordering: .acquiring) {
            if index == 0 && firstRunAt.load(ordering: .relaxed) == 0 {
                firstRunAt.store(monotonicNanoseconds(), ordering: .releasing)
            }
            let exit: VCPUExit
            do {
                exit = try slot.cpu.run()
            } catch {
                finish(.failed(MachineFailure(vcpu: index, exit: "\(error)", instructionPointer: try? slot.cpu.instructionPointer())))
                return
            }
            switch exit {
            case .io(let out, let port, let size, let count, let data):
                portIO(out: out, port: port, size: Int(size), count: Int(count), data: data)
            case .mmio(let address, let length, let isWrite, let data):
                memoryIO(address: address, buffer: UnsafeMutableRawBufferPointer(start: data, count: length), isWrite: isWrite)
            case .interrupted:
                continue
            case .shutdown:
                finish(.shutdown(vcpu: index))
            case .halt:
                // With the in-kernel local APIC KVM handles HLT itself; an exit means nothing can wake it.
                finish(.failed(MachineFailure(vcpu: index, exit: "KVM_EXIT_HLT", instructionPointer: try? slot.cpu.instructionPointer())))
            case .failedEntry(let reason):
                finish(.failed(MachineFailure(vcpu: index, exit: "KVM_EXIT_FAIL_ENTRY", data: [reason],
                                              instructionPointer: try? slot.cpu.instructionPointer())))
            case .internalError(let suberror, let data):
                finish(.failed(MachineFailure(vcpu: index, exit: "KVM_EXIT_INTERNAL_ERROR", suberror: suberror, data: data,
                                              instructionPointer: try? slot.cpu.instructionPointer())))
            case .systemEvent(let type):
                // KVM_SYSTEM_EVENT_SHUTDOWN 1, _RESET 2; anything else (a crash) is a failure.
                switch type {
                case 1: finish(.powerOff)
                case 2: finish(.reset)
                default: finish(.failed(MachineFailure(vcpu: index, exit: "KVM_EXIT_SYSTEM_EVENT", data: [UInt64(type)])))
                }
            case .malformed(let reason):
                finish(.failed(MachineFailure(vcpu: index, exit: "exit reason \(reason) with its data outside the kvm_run page")))
            case .other(let reason):
                finish(.failed(MachineFailure(vcpu: index, exit: "unhandled KVM exit reason \(reason)",
                                              instructionPointer: try? slot.cpu.instructionPointer())))
            }
        }
    }

    /// One port-I/O exit: `count` accesses of `size` bytes (string I/O repeats), in `data`.
    private func portIO(out: Bool, port: UInt16, size: Int, count: Int, data: UnsafeMutableRawPointer) {
        busLock.withLock { _ in
            stats.portExits += 1
            guard size == 1 || size == 2 || size == 4, count >= 1 else {
                stats.unclaimedPortAccesses += 1
                if !out { UnsafeMutableRawBufferPointer(start: data, count: size * count).fillWithOnes() }
                return
            }
            for i in 0..<count {
                let buffer = UnsafeMutableRawBufferPointer(start: data + i * size, count: size)
                if !Machine.dispatch(bus.ports, address: UInt64(port), buffer: buffer, isWrite: out) {
                    stats.unclaimedPortAccesses += 1
                    if !out { buffer.fillWithOnes() }
                }
            }
            updateSerialInterrupt()
        }
    }

    private func memoryIO(address: UInt64, buffer: UnsafeMutableRawBufferPointer, isWrite: Bool) {
        busLock.withLock { _ in
            stats.mmioExits += 1
            if !Machine.dispatch(bus.memory, address: address, buffer: buffer, isWrite: isWrite) {
                stats.unclaimedMemoryAccesses += 1
                if !isWrite { buffer.fillWithOnes() }
            }
        }
    }

    /// Hands the access to the device whose range holds all of it; false when none does.
    private static func dispatch(_ attachments: [Bus.Attachment], address: UInt64, buffer: UnsafeMutableRawBufferPointer,
                                 isWrite: Bool) -> Bool {
        for attachment in attachments where address >= attachment.base {
            let offset = address - attachment.base
            guard offset < attachment.length, UInt64(buffer.count) <= attachment.length - offset else { continue }
            if isWrite {
                attachment.device.write(offset: offset, from: UnsafeRawBufferPointer(buffer))
            } else {
                attachment.device.read(offset: offset, into: buffer)
            }
            return true
        }
        return false
    }

    /// Drives IRQ 4 to the UART's interrupt output when it changed. Under `busLock`.
    private func updateSerialInterrupt() {
        let high = serial.interruptAsserted
        guard high != serialLineHigh else { return }
        serialLineHigh = high
        try? vm.setInterruptLine(Machine.serialIRQ, high: high)
    }

    /// Decides the outcome (the first one wins) and makes every vCPU leave the guest: the
    /// immediate-exit flag for one about to enter KVM_RUN, the kick signal for one inside it.
    private func finish(_ outcome: MachineOutcome) {
        let first = decided.withLock { current -> Bool in
            guard current == nil else { return false }
            current = outcome
            return true
        }
        guard first else { return }
        stopping.store(true, ordering: .releasing)
        for slot in cpus { slot.cpu.requestExit() }
        // Under the lock: the threads are not joined (so their ids are valid) while kicked.
        lifecycle.withLock { state in
            guard case .started(let threads) = state else { return }
            let me = pthread_self()
            for thread in threads where pthread_equal(thread, me) == 0 { VCPUKick.send(to: thread) }
        }
        outcomeEvent.signal()
    }

    /// Waits for every vCPU thread to end (a vCPU thread that drops the last reference detaches
    /// itself instead).
    private func join() {
        let threads = lifecycle.withLock { state -> [pthread_t] in
            guard case .started(let threads) = state else { return [] }
            state = .joined
            return threads
        }
        let me = pthread_self()
        for thread in threads {
            if pthread_equal(thread, me) != 0 {
                pthread_detach(thread)
            } else {
                pthread_join(thread, nil)
            }
        }
    }
}

/// The devices on the port and memory buses, by range.
private struct Bus {
    struct Attachment {
        let device: BusDevice
        let base: UInt64
        let length: UInt64
    }

    var ports: [Attachment] = []
    var memory: [Attachment] = []
}

/// A vCPU in a class, so the machine can keep several of these ~Copyable values in an array.
private final class VCPUSlot: Sendable {
    let cpu: VirtualCPU
    init(_ cpu: consuming VirtualCPU) { self.cpu = cpu }
}

/// A time recorded once (0: not yet), shared with the serial port's output closure.
private final class Timestamp: Sendable {
    let value = Atomic<UInt64>(0)

    func recordOnce() {
        guard value.load(ordering: .relaxed) == 0 else { return }
        _ = value.compareExchange(expected: 0, desired: monotonicNanoseconds(), ordering: .releasing)
    }
}

/// The closure a vCPU thread runs, boxed for pthread_create's context pointer.
private final class ThreadBody {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}
