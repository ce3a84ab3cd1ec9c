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
/// relies on (user memory, in-kernel interrupt controller and PIT, TSS address, ioeventfd,
/// irqfd, CPUID).
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
    case mmio
    case shutdown
    case failedEntry
    case internalError
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

    /// Runs the guest until its next exit; an `.io` exit's data pointer is valid until the next
    /// `run()`. The corresponding C function is `ioctl(KVM_RUN)`.
    public func run() throws(KVMError) -> VCPUExit {
        var r: Int32
        repeat { r = bh_kvm_run(descriptor.rawValue) } while r == -EINTR
        if r < 0 { throw .failed(SystemError("ioctl(KVM_RUN)", negated: r)) }
        let reason = bh_kvm_exit_reason(shared.base)
        switch reason {
        case BH_KVM_EXIT_IO:
            var out: UInt8 = 0, size: UInt8 = 0, port: UInt16 = 0, count: UInt32 = 0, offset: UInt64 = 0
            bh_kvm_exit_io(shared.base, &out, &size, &port, &count, &offset)
            // The kernel puts the data inside the kvm_run mapping; checked, not trusted blindly.
            guard offset < UInt64(shared.size), UInt64(size) * UInt64(count) <= UInt64(shared.size) - offset else {
                return .internalError
            }
            return .io(out: out == 1, port: port, size: size, count: count, data: shared.base + Int(offset))
        case BH_KVM_EXIT_HLT: return .halt
        case BH_KVM_EXIT_MMIO: return .mmio
        case BH_KVM_EXIT_SHUTDOWN: return .shutdown
        case BH_KVM_EXIT_FAIL_ENTRY: return .failedEntry
        case BH_KVM_EXIT_INTERNAL_ERROR: return .internalError
        default: return .other(reason)
        }
    }
}
