/// The guest-physical address map of a Bulkhead machine (see the issue 9 contract): RAM from 0
/// up to 3 GiB and the rest above 4 GiB, the PCI MMIO window, the in-kernel IOAPIC and local
/// APIC, and the pages KVM itself needs below 4 GiB.
public struct GuestMemoryMap: Equatable, Sendable {
    /// RAM below 4 GiB ends here at the latest: the PCI window starts.
    public static let lowMemoryLimit: UInt64 = 0xC000_0000
    /// RAM beyond `lowMemoryLimit` continues here.
    public static let highMemoryBase: UInt64 = 0x1_0000_0000
    /// Where the PCI bus decodes BARs (attached as one MMIO handler).
    public static let pciWindow: Range<UInt64> = 0xC000_0000..<0xFEC0_0000
    public static let ioapicAddress: UInt64 = 0xFEC0_0000
    public static let localAPICAddress: UInt64 = 0xFEE0_0000
    /// KVM's identity page table (one page) and its real-mode TSS (three pages): below 4 GiB,
    /// outside RAM, the PCI window and the APICs, as QEMU places them.
    public static let identityMapAddress: UInt64 = 0xFEFF_C000
    public static let kvmTSSAddress: UInt64 = 0xFEFF_D000
    /// Guest RAM is a whole number of these (2 MiB pages map it).
    public static let ramGranule: UInt64 = 2 << 20
    /// The largest guest RAM accepted.
    public static let maximumRAM: UInt64 = 1 << 40

    /// Total guest RAM in bytes.
    public let ramSize: UInt64

    /// A map for `ramSize` bytes of RAM: a multiple of 2 MiB, at least 2 MiB, at most 1 TiB.
    public init(ramSize: UInt64) throws(MachineError) {
        guard ramSize >= GuestMemoryMap.ramGranule, ramSize <= GuestMemoryMap.maximumRAM,
              ramSize % GuestMemoryMap.ramGranule == 0
        else {
            throw .invalidConfiguration("guest RAM of \(ramSize) bytes: it must be a multiple of 2 MiB between 2 MiB and 1 TiB")
        }
        self.ramSize = ramSize
    }

    /// RAM mapped from guest-physical 0.
    public var lowRAMSize: UInt64 { min(ramSize, GuestMemoryMap.lowMemoryLimit) }
    /// RAM mapped from `highMemoryBase` (0 when all of it fits below 3 GiB).
    public var highRAMSize: UInt64 { ramSize - lowRAMSize }
}
