import CKVM
import HostOS
#if canImport(Glibc)
import Glibc
#endif

/// An MSI route of the GSI routing table: raising GSI `gsi` sends the message `data` to `address`.
public struct MSIRoute: Sendable, Equatable, Hashable {
    public var gsi: UInt32
    public var address: UInt64
    public var data: UInt32

    public init(gsi: UInt32, address: UInt64, data: UInt32) {
        self.gsi = gsi
        self.address = address
        self.data = data
    }
}

/// The doorbell and interrupt ioctls of one VM: ioeventfd (a guest write signals an eventfd
/// inside the kernel instead of exiting), irqfd (an eventfd signal raises a GSI), the GSI routing
/// table with MSI routes, and MSIs sent directly.
///
/// A borrowed view of the VM's descriptor (copyable, so device glue can keep it): it is valid
/// while the `VirtualMachine` it came from lives, which the VMM guarantees by owning both the VM
/// and its devices. The eventfds passed in are borrowed too; KVM keeps its own reference to each
/// until it is removed, so remove a registration before closing its eventfd.
public struct VirtualMachineInterrupts: Sendable {
    let vm: Int32

    /// GSIs below this one are the in-kernel irqchip's (PIC and IOAPIC pins); MSI routes use the
    /// ones from here up.
    public static let firstMSIGSI = BH_KVM_IRQCHIP_GSIS
    /// The most MSI routes one table can hold beside the irqchip's 40 default entries.
    public static let maximumMSIRoutes = Int(BH_KVM_MAX_ROUTES) - 40

    private static func invalid(_ call: String) -> KVMError { .failed(SystemError(call, errno: EINVAL)) }

    private func ioeventfd(_ eventfd: Int32, address: UInt64, length: UInt32, datamatch: UInt64?, port: Bool, remove: Bool) throws(KVMError) {
        let call = "ioctl(KVM_IOEVENTFD, \(remove ? "deassign " : "")\(port ? "port" : "address") 0x\(String(address, radix: 16)), length \(length))"
        guard [0, 1, 2, 4, 8].contains(length), datamatch == nil || length != 0,
              !address.addingReportingOverflow(UInt64(length)).overflow, !port || address + UInt64(length) <= 0x1_0000
        else { throw VirtualMachineInterrupts.invalid(call) }
        let r = bh_kvm_ioeventfd(vm, address, length, eventfd, port ? 1 : 0, datamatch == nil ? 0 : 1, datamatch ?? 0, remove ? 1 : 0)
        if r < 0 { throw .failed(SystemError(call, negated: r)) }
    }

    /// From now on a guest write of `length` bytes (1, 2, 4 or 8; 0: any width) at guest-physical
    /// `address` (or at port `address` when `port`) adds one to `eventfd` (borrowed) instead of
    /// exiting to the VMM; with `datamatch`, only a write of that value does. Writes that do not
    /// match still exit. The corresponding C function is `ioctl(KVM_IOEVENTFD)`.
    public func addIOEvent(eventfd: Int32, address: UInt64, length: UInt32, datamatch: UInt64? = nil, port: Bool = false) throws(KVMError) {
        try ioeventfd(eventfd, address: address, length: length, datamatch: datamatch, port: port, remove: false)
    }

    /// Removes the registration `addIOEvent` made with the same arguments.
    /// The corresponding C function is `ioctl(KVM_IOEVENTFD)` with `KVM_IOEVENTFD_FLAG_DEASSIGN`.
    public func removeIOEvent(eventfd: Int32, address: UInt64, length: UInt32, datamatch: UInt64? = nil, port: Bool = false) throws(KVMError) {
        try ioeventfd(eventfd, address: address, length: length, datamatch: datamatch, port: port, remove: true)
    }

    /// From now on a signal of `eventfd` (borrowed) raises GSI `gsi` as the routing table says
    /// (an MSI route sends its message). If the eventfd is already signalled, the interrupt is
    /// raised at once. The corresponding C function is `ioctl(KVM_IRQFD)`.
    public func addIRQ(eventfd: Int32, gsi: UInt32) throws(KVMError) {
        let r = bh_kvm_irqfd(vm, eventfd, gsi, 0)
        if r < 0 { throw .failed(SystemError("ioctl(KVM_IRQFD, gsi \(gsi))", negated: r)) }
    }

    /// Removes the irqfd `addIRQ` made. The corresponding C function is `ioctl(KVM_IRQFD)` with
    /// `KVM_IRQFD_FLAG_DEASSIGN`.
    public func removeIRQ(eventfd: Int32, gsi: UInt32) throws(KVMError) {
        let r = bh_kvm_irqfd(vm, eventfd, gsi, 1)
        if r < 0 { throw .failed(SystemError("ioctl(KVM_IRQFD, deassign gsi \(gsi))", negated: r)) }
    }

    /// Replaces the GSI routing table with the in-kernel irqchip's default routes for GSIs 0-23
    /// (kept, since the table replaces them too) and `routes`, whose GSIs must be at least
    /// `firstMSIGSI` and distinct. Irqfds follow their GSI's new route. Needs the in-kernel irqchip.
    /// The corresponding C function is `ioctl(KVM_SET_GSI_ROUTING)`.
    public func setRoutes(_ routes: [MSIRoute]) throws(KVMError) {
        let call = "ioctl(KVM_SET_GSI_ROUTING, \(routes.count) MSI routes)"
        guard routes.count <= VirtualMachineInterrupts.maximumMSIRoutes,
              routes.allSatisfy({ $0.gsi >= VirtualMachineInterrupts.firstMSIGSI }),
              Set(routes.map(\.gsi)).count == routes.count else { throw VirtualMachineInterrupts.invalid(call) }
        let entries = routes.map {
            bh_kvm_msi_route(gsi: $0.gsi, address_lo: UInt32(truncatingIfNeeded: $0.address),
                             address_hi: UInt32(truncatingIfNeeded: $0.address >> 32), data: $0.data)
        }
        let r = entries.withUnsafeBufferPointer { bh_kvm_set_gsi_routing(vm, $0.baseAddress, UInt32($0.count)) }
        if r < 0 { throw .failed(SystemError(call, negated: r)) }
    }

    /// Sends the MSI `data` to `address` now. Returns false when the guest blocked it (no local
    /// APIC accepted it). The corresponding C function is `ioctl(KVM_SIGNAL_MSI)`.
    @discardableResult
    public func signal(address: UInt64, data: UInt32) throws(KVMError) -> Bool {
        let r = bh_kvm_signal_msi(vm, UInt32(truncatingIfNeeded: address), UInt32(truncatingIfNeeded: address >> 32), data)
        // The ioctl returns -1 itself when no local APIC took the message: errno reads EPERM.
        if r == -EPERM { return false }
        if r < 0 { throw .failed(SystemError("ioctl(KVM_SIGNAL_MSI)", negated: r)) }
        return r > 0
    }
}

extension VirtualMachine {
    /// The VM's doorbell and interrupt ioctls, as a view valid while this VM lives.
    public var interrupts: VirtualMachineInterrupts { VirtualMachineInterrupts(vm: descriptor.rawValue) }

    /// See `VirtualMachineInterrupts.addIOEvent`.
    public func addIOEvent(eventfd: Int32, address: UInt64, length: UInt32, datamatch: UInt64? = nil, port: Bool = false) throws(KVMError) {
        try interrupts.addIOEvent(eventfd: eventfd, address: address, length: length, datamatch: datamatch, port: port)
    }

    /// See `VirtualMachineInterrupts.removeIOEvent`.
    public func removeIOEvent(eventfd: Int32, address: UInt64, length: UInt32, datamatch: UInt64? = nil, port: Bool = false) throws(KVMError) {
        try interrupts.removeIOEvent(eventfd: eventfd, address: address, length: length, datamatch: datamatch, port: port)
    }

    /// See `VirtualMachineInterrupts.addIRQ`.
    public func addIRQ(eventfd: Int32, gsi: UInt32) throws(KVMError) {
        try interrupts.addIRQ(eventfd: eventfd, gsi: gsi)
    }

    /// See `VirtualMachineInterrupts.removeIRQ`.
    public func removeIRQ(eventfd: Int32, gsi: UInt32) throws(KVMError) {
        try interrupts.removeIRQ(eventfd: eventfd, gsi: gsi)
    }

    /// See `VirtualMachineInterrupts.setRoutes`.
    public func setRoutes(_ routes: [MSIRoute]) throws(KVMError) {
        try interrupts.setRoutes(routes)
    }

    /// See `VirtualMachineInterrupts.signal`.
    @discardableResult
    public func signalMSI(address: UInt64, data: UInt32) throws(KVMError) -> Bool {
        try interrupts.signal(address: address, data: data)
    }
}
