import CKVM
import HostOS
#if canImport(Glibc)
import Glibc
#endif

/// What is missing on a host that cannot run partitions, said so an operator knows what to fix.
public enum KVMError: Error, Equatable, Sendable, CustomStringConvertible {
    /// /dev/kvm cannot be opened (no module, no permission, no device).
    case unavailable(SystemError)
    /// The kernel speaks another KVM API version than 12, the stable one.
    case apiVersion(Int32)
    /// Capabilities the VMM needs and the kernel does not offer, by their linux/kvm.h names.
    case missingCapabilities([String])
    /// An ioctl failed.
    case failed(SystemError)

    public var description: String {
        switch self {
        case .unavailable(let error): "KVM is not available: \(error); load the kvm module and give this process /dev/kvm"
        case .apiVersion(let version): "KVM API version \(version), but Bulkhead needs 12"
        case .missingCapabilities(let names): "KVM lacks \(names.joined(separator: ", ")), which partitions need"
        case .failed(let error): "KVM: \(error)"
        }
    }
}

/// The host's KVM: /dev/kvm, checked at open for the API version and every capability the VMM
/// relies on (user memory, in-kernel interrupt controller and PIT, TSS and identity-map
/// addresses, ioeventfd, irqfd, CPUID, immediate exit).
public struct KVMSystem: ~Copyable, Sendable {
    let descriptor: FileDescriptor

    public init() throws(KVMError) {
        let fd = bh_kvm_open()
        guard fd >= 0 else { throw .unavailable(SystemError("open(/dev/kvm)", negated: fd)) }
        if let problem = KVMSystem.check(fd) {
            _ = close(fd)
            throw problem
        }
        descriptor = FileDescriptor(taking: fd)
    }

    /// The first reason `/dev/kvm` (open as `fd`) cannot serve the VMM, if any.
    private static func check(_ fd: Int32) -> KVMError? {
        let version = bh_kvm_api_version(fd)
        guard version == 12 else { return .apiVersion(version) }
        var missing: [String] = []
        for raw in 0..<BH_KVM_CAP_COUNT.rawValue {
            let capability = bh_kvm_capability(rawValue: raw)
            if bh_kvm_check_extension(fd, capability) <= 0 { missing.append(String(cString: bh_kvm_capability_name(capability))) }
        }
        return missing.isEmpty ? nil : .missingCapabilities(missing)
    }

    /// A new, empty virtual machine. The corresponding C function is `ioctl(KVM_CREATE_VM)`.
    public func makeMachine() throws(KVMError) -> VirtualMachine {
        let vm = bh_kvm_create_vm(descriptor.rawValue)
        guard vm >= 0 else { throw .failed(SystemError("ioctl(KVM_CREATE_VM)", negated: vm)) }
        let runSize = bh_kvm_vcpu_mmap_size(descriptor.rawValue)
        guard runSize > 0 else {
            _ = close(vm)
            throw .failed(SystemError("ioctl(KVM_GET_VCPU_MMAP_SIZE)", negated: runSize))
        }
        return VirtualMachine(descriptor: FileDescriptor(taking: vm), runSize: Int(runSize))
    }

    /// The CPUID leaves KVM can give a guest on this host.
    /// The corresponding C function is `ioctl(KVM_GET_SUPPORTED_CPUID)`.
    public func supportedCPUID() throws(KVMError) -> [CPUIDEntry] {
        var capacity = 256
        while true {
            var entries = [bh_cpuid_entry](repeating: bh_cpuid_entry(), count: capacity)
            let n = bh_kvm_get_supported_cpuid(descriptor.rawValue, &entries, Int32(capacity))
            if n == -E2BIG && capacity < 4096 {
                capacity *= 4
                continue
            }
            if n < 0 { throw .failed(SystemError("ioctl(KVM_GET_SUPPORTED_CPUID)", negated: n)) }
            return entries.prefix(Int(n)).map(CPUIDEntry.init)
        }
    }

    /// The MSRs KVM saves and restores for a guest on this host.
    /// The corresponding C function is `ioctl(KVM_GET_MSR_INDEX_LIST)`.
    public func msrIndexList() throws(KVMError) -> [UInt32] {
        var capacity = 256
        while true {
            var indices = [UInt32](repeating: 0, count: capacity)
            let n = bh_kvm_get_msr_index_list(descriptor.rawValue, &indices, Int32(capacity))
            if n == -E2BIG && capacity < 65536 {
                capacity *= 4
                continue
            }
            if n < 0 { throw .failed(SystemError("ioctl(KVM_GET_MSR_INDEX_LIST)", negated: n)) }
            return Array(indices.prefix(Int(n)))
        }
    }
}

/// One KVM virtual machine: its memory slots and vCPUs.
public struct VirtualMachine: ~Copyable, Sendable {
    let descriptor: FileDescriptor
    let runSize: Int

    /// Maps `size` bytes of host memory at `host` (which must stay mapped as long as the VM
    /// exists) at guest physical address `guestAddress`, as memory slot `slot`.
    /// The corresponding C function is `ioctl(KVM_SET_USER_MEMORY_REGION)`.
    public func map(slot: UInt32, guestAddress: UInt64, size: UInt64, host: UnsafeMutableRawPointer) throws(KVMError) {
        let r = bh_kvm_set_memory_region(descriptor.rawValue, slot, guestAddress, size, host)
        if r < 0 { throw .failed(SystemError("ioctl(KVM_SET_USER_MEMORY_REGION, slot \(slot))", negated: r)) }
    }

    /// Creates the in-kernel interrupt controllers (two 8259 PICs, an IOAPIC, a local APIC per
    /// vCPU); before any vCPU. The corresponding C function is `ioctl(KVM_CREATE_IRQCHIP)`.
    public func createInterruptController() throws(KVMError) {
        let r = bh_kvm_create_irqchip(descriptor.rawValue)
        if r < 0 { throw .failed(SystemError("ioctl(KVM_CREATE_IRQCHIP)", negated: r)) }
    }

    /// Creates the in-kernel i8254 PIT (ports 0x40-0x43 and 0x61); after the interrupt
    /// controller. The corresponding C function is `ioctl(KVM_CREATE_PIT2)`.
    public func createTimer() throws(KVMError) {
        let r = bh_kvm_create_pit2(descriptor.rawValue)
        if r < 0 { throw .failed(SystemError("ioctl(KVM_CREATE_PIT2)", negated: r)) }
    }

    /// Gives KVM three pages of guest-physical space at `address` (below 4 GiB, outside RAM and
    /// device windows) for the TSS it needs to run real-mode code.
    /// The corresponding C function is `ioctl(KVM_SET_TSS_ADDR)`.
    public func setTSSAddress(_ address: UInt64) throws(KVMError) {
        let r = bh_kvm_set_tss_addr(descriptor.rawValue, address)
        if r < 0 { throw .failed(SystemError("ioctl(KVM_SET_TSS_ADDR, 0x\(String(address, radix: 16)))", negated: r)) }
    }

    /// Gives KVM one page of guest-physical space at `address` for its identity page table;
    /// before any vCPU. The corresponding C function is `ioctl(KVM_SET_IDENTITY_MAP_ADDR)`.
    public func setIdentityMapAddress(_ address: UInt64) throws(KVMError) {
        let r = bh_kvm_set_identity_map_addr(descriptor.rawValue, address)
        if r < 0 { throw .failed(SystemError("ioctl(KVM_SET_IDENTITY_MAP_ADDR, 0x\(String(address, radix: 16)))", negated: r)) }
    }

    /// Drives input `irq` of the in-kernel PICs and IOAPIC high or low (a level-triggered ISA
    /// device such as the serial port). The corresponding C function is `ioctl(KVM_IRQ_LINE)`.
    public func setInterruptLine(_ irq: UInt32, high: Bool) throws(KVMError) {
        let r = bh_kvm_irq_line(descriptor.rawValue, irq, high ? 1 : 0)
        if r < 0 { throw .failed(SystemError("ioctl(KVM_IRQ_LINE, \(irq))", negated: r)) }
    }

    /// vCPU `id`, with its shared kvm_run page mapped.
    /// The corresponding C functions are `ioctl(KVM_CREATE_VCPU)` and `mmap`.
    public func makeCPU(id: Int32) throws(KVMError) -> VirtualCPU {
        let fd = bh_kvm_create_vcpu(descriptor.rawValue, id)
        guard fd >= 0 else { throw .failed(SystemError("ioctl(KVM_CREATE_VCPU, \(id))", negated: fd)) }
        let descriptor = FileDescriptor(taking: fd)
        do {
            let run = try MemoryMapping(fd: fd, offset: 0, size: UInt64(runSize), shared: true)
            return VirtualCPU(descriptor: descriptor, shared: run)
        } catch {
            throw .failed(error)
        }
    }
}

/// Why a vCPU left the guest.
public enum VCPUExit: Equatable {
    /// Port I/O: `out` is true for a write; `data` holds `size * count` bytes (the guest's, for a
    /// write; to be filled in, for a read).
    case io(out: Bool, port: UInt16, size: UInt8, count: UInt32, data: UnsafeMutableRawPointer)
    case halt
    /// A guest-physical access outside every memory slot: `length` (1-8) bytes at `address`, in
    /// `data` (the guest's, for a write; to be filled in, for a read).
    case mmio(address: UInt64, length: Int, isWrite: Bool, data: UnsafeMutableRawPointer)
    /// The guest triple-faulted (or otherwise shut down the processor).
    case shutdown
    /// The processor refused to enter the guest; `reason` is the hardware's.
    case failedEntry(reason: UInt64)
    /// KVM could not handle the exit: `suberror` 1 is an instruction it could not emulate; `data`
    /// is KVM's detail for it.
    case internalError(suberror: UInt32, data: [UInt64])
    /// KVM_RUN returned before or while running the guest because a signal arrived or
    /// `requestExit()` was called.
    case interrupted
    /// A system event (KVM_EXIT_SYSTEM_EVENT) of this type.
    case systemEvent(UInt32)
    /// An I/O or MMIO exit whose data would lie outside the kvm_run mapping (or is longer than 8
    /// bytes for MMIO): never expected from the kernel, refused rather than trusted.
    case malformed(reason: UInt32)
    case other(UInt32)
}

/// One virtual CPU, run by one thread.
public struct VirtualCPU: ~Copyable, Sendable {
    let descriptor: FileDescriptor
    let shared: MemoryMapping

    /// Starts the vCPU in real mode at 0:`ip` with the stack at 0:`sp`.
    public func setRealMode(ip: UInt16, sp: UInt16) throws(KVMError) {
        let r = bh_kvm_set_real_mode(descriptor.rawValue, ip, sp)
        if r < 0 { throw .failed(SystemError("ioctl(KVM_SET_SREGS/KVM_SET_REGS)", negated: r)) }
    }

    /// Loads the CPUID table the guest sees. The corresponding C function is `ioctl(KVM_SET_CPUID2)`.
    public func setCPUID(_ table: [CPUIDEntry]) throws(KVMError) {
        let entries = table.map(\.kvm)
        let r = bh_kvm_set_cpuid(descriptor.rawValue, entries, Int32(entries.count))
        if r < 0 { throw .failed(SystemError("ioctl(KVM_SET_CPUID2, \(entries.count) entries)", negated: r)) }
    }

    /// Sets MSRs; throws naming the first one KVM refused.
    /// The corresponding C function is `ioctl(KVM_SET_MSRS)`.
    public func setMSRs(_ registers: [ModelSpecificRegister]) throws(KVMError) {
        let entries = registers.map { bh_msr_entry(index: $0.index, data: $0.value) }
        let r = bh_kvm_set_msrs(descriptor.rawValue, entries, Int32(entries.count))
        if r < 0 { throw .failed(SystemError("ioctl(KVM_SET_MSRS)", negated: r)) }
        if Int(r) < registers.count {
            throw .failed(SystemError("ioctl(KVM_SET_MSRS): MSR 0x\(String(registers[Int(r)].index, radix: 16)) refused", errno: EINVAL))
        }
    }

    /// Puts the x87 and SSE units in their reset state (FCW 0x37f, MXCSR 0x1f80).
    /// The corresponding C function is `ioctl(KVM_SET_FPU)`.
    public func resetFPU() throws(KVMError) {
        let r = bh_kvm_set_fpu_defaults(descriptor.rawValue)
        if r < 0 { throw .failed(SystemError("ioctl(KVM_SET_FPU)", negated: r)) }
    }

    /// Wires the local APIC's LINT0 to the PIC (ExtINT) and LINT1 to NMI, as firmware does.
    /// Needs the in-kernel interrupt controller. The corresponding C functions are
    /// `ioctl(KVM_GET_LAPIC)` and `ioctl(KVM_SET_LAPIC)`.
    public func wireLocalInterrupts() throws(KVMError) {
        let r = bh_kvm_set_lapic_lint(descriptor.rawValue)
        if r < 0 { throw .failed(SystemError("ioctl(KVM_SET_LAPIC)", negated: r)) }
    }

    /// Loads a 64-bit entry state: segments, GDT, no IDT, paging on, and the named registers
    /// (the rest zero). The corresponding C functions are `ioctl(KVM_SET_SREGS)` and `ioctl(KVM_SET_REGS)`.
    public func enterLongMode(_ entry: LongModeEntry) throws(KVMError) {
        var state = entry.kvm
        let r = bh_kvm_set_entry_state(descriptor.rawValue, &state)
        if r < 0 { throw .failed(SystemError("ioctl(KVM_SET_SREGS/KVM_SET_REGS)", negated: r)) }
    }

    /// The guest's instruction pointer. The corresponding C function is `ioctl(KVM_GET_REGS)`.
    public func instructionPointer() throws(KVMError) -> UInt64 {
        var rip: UInt64 = 0
        let r = bh_kvm_get_rip(descriptor.rawValue, &rip)
        if r < 0 { throw .failed(SystemError("ioctl(KVM_GET_REGS)", negated: r)) }
        return rip
    }

    /// Makes the next (or current, together with a signal to the running thread) `run()` return
    /// `.interrupted` without entering the guest. Safe from any thread.
    public func requestExit() {
        bh_kvm_set_immediate_exit(shared.base, 1)
    }

    /// Runs the guest until its next exit; an `.io` or `.mmio` exit's data pointer is valid until
    /// the next `run()`. A signal (see `VCPUKick`) or `requestExit()` makes it return
    /// `.interrupted`. The corresponding C function is `ioctl(KVM_RUN)`.
    public func run() throws(KVMError) -> VCPUExit {
        let r = bh_kvm_run(descriptor.rawValue)
        if r == -EINTR { return .interrupted }
        if r < 0 { throw .failed(SystemError("ioctl(KVM_RUN)", negated: r)) }
        let reason = bh_kvm_exit_reason(shared.base)
        switch reason {
        case BH_KVM_EXIT_IO:
            var out: UInt8 = 0, size: UInt8 = 0, port: UInt16 = 0, count: UInt32 = 0, offset: UInt64 = 0
            bh_kvm_exit_io(shared.base, &out, &size, &port, &count, &offset)
            // The kernel puts the data inside the kvm_run mapping; checked, not trusted blindly.
            guard offset < UInt64(shared.size), UInt64(size) * UInt64(count) <= UInt64(shared.size) - offset else {
                return .malformed(reason: reason)
            }
            return .io(out: out == 1, port: port, size: size, count: count, data: shared.base + Int(offset))
        case BH_KVM_EXIT_MMIO:
            var address: UInt64 = 0, length: UInt32 = 0, isWrite: UInt8 = 0, offset: UInt64 = 0
            bh_kvm_exit_mmio(shared.base, &address, &length, &isWrite, &offset)
            guard length <= 8, offset < UInt64(shared.size), UInt64(length) <= UInt64(shared.size) - offset else {
                return .malformed(reason: reason)
            }
            return .mmio(address: address, length: Int(length), isWrite: isWrite == 1, data: shared.base + Int(offset))
        case BH_KVM_EXIT_HLT: return .halt
        case BH_KVM_EXIT_SHUTDOWN: return .shutdown
        case BH_KVM_EXIT_FAIL_ENTRY: return .failedEntry(reason: bh_kvm_exit_fail_entry(shared.base))
        case BH_KVM_EXIT_INTERNAL_ERROR:
            var suberror: UInt32 = 0
            var data = [UInt64](repeating: 0, count: 16)
            let n = bh_kvm_exit_internal(shared.base, &suberror, &data, Int32(data.count))
            return .internalError(suberror: suberror, data: Array(data.prefix(Int(max(0, n)))))
        case BH_KVM_EXIT_INTR: return .interrupted
        case BH_KVM_EXIT_SYSTEM_EVENT: return .systemEvent(bh_kvm_exit_system_event(shared.base))
        default: return .other(reason)
        }
    }
}

/// The signal that kicks a vCPU thread out of KVM_RUN: installed once per process with an empty
/// handler and without SA_RESTART, so a blocked or running KVM_RUN returns EINTR.
public enum VCPUKick {
    /// Installs the handler (idempotent); call before starting vCPU threads.
    /// The corresponding C function is `sigaction`.
    public static func install() throws(KVMError) {
        let r = bh_kvm_kick_signal()
        if r < 0 { throw .failed(SystemError("sigaction(kick signal)", negated: r)) }
    }

    /// Sends the kick to `thread`, a vCPU thread not yet joined.
    /// The corresponding C function is `pthread_kill`.
    public static func send(to thread: pthread_t) {
        _ = bh_kvm_kick_thread(UInt(thread))
    }
}

/// Seals a guest-memory memfd against resizing and further seals (F_SEAL_SHRINK | F_SEAL_GROW |
/// F_SEAL_SEAL), so a vhost-user backend sharing it can neither shrink it under the VMM nor
/// seal it against the VMM's writes. The corresponding C function is `fcntl(F_ADD_SEALS)`.
public func sealGuestMemoryFile(_ descriptor: borrowing FileDescriptor) throws(KVMError) {
    let r = bh_memfd_seal_for_guest(descriptor.rawValue)
    if r < 0 { throw .failed(SystemError("fcntl(F_ADD_SEALS, guest memory)", negated: r)) }
}
