import Virtio

/// An Intel MultiProcessor Specification 1.4 table: how a guest without ACPI (Linux here) learns
/// of every vCPU, the IOAPIC, and how the 16 ISA interrupts reach it. ISA IRQ n goes to IOAPIC
/// pin n, as KVM's default GSI routing wires them; LINT0 is ExtINT (the PIC), LINT1 NMI.
public enum MPTable {
    /// In the BIOS area (reserved in the e820 map), where a guest scans for "_MP_".
    public static let address: UInt64 = 0xF_0000
    static let localAPICVersion: UInt8 = 0x14
    static let ioapicVersion: UInt8 = 0x11

    /// The floating pointer and the configuration table for `vcpus` processors (APIC ids
    /// 0..<vcpus, 0 the bootstrap processor), checksummed.
    public static func bytes(vcpus: Int) -> [UInt8] {
        let ioapicID = UInt8(clamping: vcpus)
        var entries: [UInt8] = []
        var count: UInt16 = 0
        func append<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
            withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
        }
        for cpu in 0..<min(vcpus, 254) {
            entries += [0, UInt8(cpu), localAPICVersion, cpu == 0 ? 0x03 : 0x01]  // processor: enabled (| bootstrap)
            append(UInt32(0x600), to: &entries)  // signature: family 6
            append(UInt32(0x201), to: &entries)  // features: FPU, APIC
            entries += [UInt8](repeating: 0, count: 8)
            count += 1
        }
        entries += [1, 0] + Array("ISA   ".utf8)  // bus 0: ISA
        count += 1
        entries += [2, ioapicID, ioapicVersion, 0x01]  // IOAPIC, enabled
        append(UInt32(GuestMemoryMap.ioapicAddress), to: &entries)
        count += 1
        for irq in UInt8(0)..<16 where irq != 2 {  // 2 is the PICs' cascade
            entries += [3, 0, 0, 0, 0, irq, ioapicID, irq]  // INT, conforming, bus 0 IRQ -> IOAPIC pin
            count += 1
        }
        entries += [4, 3, 0, 0, 0, 0, 0xFF, 0]  // ExtINT -> every local APIC's LINT0
        entries += [4, 1, 0, 0, 0, 0, 0xFF, 1]  // NMI -> LINT1
        count += 2

        var table: [UInt8] = Array("PCMP".utf8)
        append(UInt16(44 + entries.count), to: &table)
        table += [4, 0]  // spec 1.4, checksum below
        table += Array("BULKHEAD".utf8) + Array("PARTITION   ".utf8)
        append(UInt32(0), to: &table)  // no OEM table
        append(UInt16(0), to: &table)
        append(count, to: &table)
        append(UInt32(GuestMemoryMap.localAPICAddress), to: &table)
        table += [0, 0, 0, 0]  // no extended table
        table += entries
        table[7] = checksum(table)

        var pointer: [UInt8] = Array("_MP_".utf8)
        append(UInt32(address + 16), to: &pointer)
        pointer += [1, 4, 0, 0, 0, 0, 0, 0]  // 16 bytes, spec 1.4, checksum, configuration table present, no IMCR
        pointer[10] = checksum(pointer)
        return pointer + table
    }

    /// The byte that makes `bytes` sum to 0 mod 256.
    static func checksum(_ bytes: [UInt8]) -> UInt8 {
        0 &- bytes.reduce(0, &+)
    }

    /// Writes the table at `address`.
    static func write(vcpus: Int, into memory: GuestMemory) throws(BootMemoryError) {
        try memory.copy(bytes(vcpus: vcpus), to: address)
    }
}
