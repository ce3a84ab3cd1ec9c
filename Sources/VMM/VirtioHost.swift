import Devices
import HostOS
import KVM
import Synchronization

/// The machine side of virtio devices whose queues are served outside the VMM: guest RAM to share
/// with the backends, doorbells (ioeventfds) and interrupts (MSI routes and irqfds). `KVMVirtioHost`
/// is the real one; tests use their own.
public protocol VirtioHost: AnyObject {
    /// Guest RAM, every region of it.
    var memoryRegions: [GuestRAMRegion] { get }
    /// A `length`-byte guest write at `address` signals `eventfd` (borrowed) from now on.
    func addDoorbell(eventfd: Int32, address: UInt64, length: UInt32) throws(KVMError)
    func removeDoorbell(eventfd: Int32, address: UInt64, length: UInt32) throws(KVMError)
    /// A GSI of the caller's own for one MSI-X vector, nil when none is left. Never given back: a
    /// machine has a few devices with a few vectors each.
    func allocateInterrupt() -> UInt32?
    /// GSI `gsi` (from `allocateInterrupt`) sends `message` from now on.
    func routeInterrupt(gsi: UInt32, message: MSIMessage) throws(KVMError)
    /// A signal of `eventfd` (borrowed) raises GSI `gsi` from now on; one signalled before is
    /// delivered at once.
    func attachInterrupt(eventfd: Int32, gsi: UInt32) throws(KVMError)
    func detachInterrupt(eventfd: Int32, gsi: UInt32) throws(KVMError)
    /// Sends `message` now.
    func sendInterrupt(_ message: MSIMessage)
}

/// `VirtioHost` on a KVM virtual machine: ioeventfds, irqfds and one GSI routing table with an MSI
/// route per allocated GSI (the irqchip's own routes for GSIs 0-23 kept).
public final class KVMVirtioHost: VirtioHost, @unchecked Sendable {
    // @unchecked Sendable: the routing table and the next GSI live in `table`, a Mutex; the rest
    // is immutable, and the ioctls are safe from any thread.
    public let memoryRegions: [GuestRAMRegion]
    private let interrupts: VirtualMachineInterrupts
    private let table = Mutex(Table())

    private struct Table {
        var routes: [UInt32: MSIMessage] = [:]
        var nextGSI = VirtualMachineInterrupts.firstMSIGSI
    }

    /// `interrupts` must stay valid (its VM alive) as long as this host and its devices are used.
    public init(interrupts: VirtualMachineInterrupts, memoryRegions: [GuestRAMRegion]) {
        self.interrupts = interrupts
        self.memoryRegions = memoryRegions
    }

    /// The host for `machine`'s devices: its VM and all of its RAM. The machine must outlive them.
    public convenience init(machine: Machine) {
        self.init(interrupts: machine.vm.interrupts, memoryRegions: machine.memoryRegions)
    }

    public func addDoorbell(eventfd: Int32, address: UInt64, length: UInt32) throws(KVMError) {
        try interrupts.addIOEvent(eventfd: eventfd, address: address, length: length)
    }

    public func removeDoorbell(eventfd: Int32, address: UInt64, length: UInt32) throws(KVMError) {
        try interrupts.removeIOEvent(eventfd: eventfd, address: address, length: length)
    }

    public func allocateInterrupt() -> UInt32? {
        table.withLock { table in
            guard Int(table.nextGSI - VirtualMachineInterrupts.firstMSIGSI) < VirtualMachineInterrupts.maximumMSIRoutes else { return nil }
            defer { table.nextGSI += 1 }
            return table.nextGSI
        }
    }

    public func routeInterrupt(gsi: UInt32, message: MSIMessage) throws(KVMError) {
        try table.withLock { (table: inout Table) throws(KVMError) in
            guard table.routes[gsi] != message else { return }
            let previous = table.routes[gsi]
            table.routes[gsi] = message
            do throws(KVMError) {
                try interrupts.setRoutes(table.routes.map { MSIRoute(gsi: $0.key, address: $0.value.address, data: $0.value.data) })
            } catch {
                table.routes[gsi] = previous
                throw error
            }
        }
    }

    public func attachInterrupt(eventfd: Int32, gsi: UInt32) throws(KVMError) {
        try interrupts.addIRQ(eventfd: eventfd, gsi: gsi)
    }

    public func detachInterrupt(eventfd: Int32, gsi: UInt32) throws(KVMError) {
        try interrupts.removeIRQ(eventfd: eventfd, gsi: gsi)
    }

    public func sendInterrupt(_ message: MSIMessage) {
        // Not delivered (a masked local APIC) or failed: a configuration interrupt is advisory,
        // the driver also sees DEVICE_NEEDS_RESET when it reads the status.
        _ = try? interrupts.signal(address: message.address, data: message.data)
    }
}
