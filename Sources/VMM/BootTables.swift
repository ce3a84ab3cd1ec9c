import KVM
import Virtio

/// The VMM's boot structures in low guest memory, shared by the flat-image and Linux loaders:
/// a GDT with ring-0 and ring-3 flat segments and a 64-bit TSS, the TSS with an I/O permission
/// bitmap that allows every port, and page tables identity-mapping the first 4 GiB with 2 MiB
/// pages (present, writable, user). All of it lies below 0x1_0000, apart from the command line
/// at 0x2_0000.
public enum BootTables {
    public static let gdtAddress: UInt64 = 0x500
    /// PML4; the PDPT follows at +0x1000 and four page directories at +0x2000..+0x5FFF.
    public static let pageTableAddress: UInt64 = 0x1000
    /// Linux's boot_params ("zero page").
    public static let zeroPageAddress: UInt64 = 0x7000
    public static let taskStateAddress: UInt64 = 0x8000
    public static let commandLineAddress: UInt64 = 0x2_0000
    /// Bytes reserved for the command line, its NUL included.
    public static let commandLineCapacity = 4096
    /// The boot structures end here; a guest image must start at or above it.
    public static let structuresEnd: UInt64 = 0x1_0000

    /// GDT selectors. Linux's 64-bit boot protocol wants __BOOT_CS 0x10 and __BOOT_DS 0x18.
    public static let kernelCode: UInt16 = 0x10
    public static let kernelData: UInt16 = 0x18
    public static let userData: UInt16 = 0x20
    public static let userCode: UInt16 = 0x28
    public static let taskState: UInt16 = 0x30
    static let gdtSize: UInt64 = 0x40

    /// 104 bytes of 64-bit TSS, an I/O permission bitmap for all 65536 ports (all zero: every
    /// port allowed) and the 0xFF byte that must end it. Under KVM's PVM flavour ring-3 port I/O
    /// is checked against this bitmap even with IOPL 3, so the flat guest needs it.
    static let taskStateSize: UInt64 = 104 + 8192 + 1

    static let fourGiB: UInt64 = 1 << 32

    /// Writes the GDT, the TSS and the identity page tables into `memory`.
    static func write(into memory: GuestMemory) throws(BootMemoryError) {
        let segments = [
            Segment.code64(selector: kernelCode, privilege: 0),
            Segment.data(selector: kernelData, privilege: 0),
            Segment.data(selector: userData, privilege: 3),
            Segment.code64(selector: userCode, privilege: 3),
        ]
        let gdt = try memory.span(at: gdtAddress, length: gdtSize)
        gdt.initializeMemory(as: UInt8.self, repeating: 0)
        for segment in segments {
            gdt.storeBytes(of: segment.descriptor.littleEndian, toByteOffset: Int(segment.selector & ~3), as: UInt64.self)
        }
        let tss = taskStateSegment
        gdt.storeBytes(of: tss.descriptor.littleEndian, toByteOffset: Int(taskState), as: UInt64.self)
        gdt.storeBytes(of: tss.systemHigh.littleEndian, toByteOffset: Int(taskState) + 8, as: UInt64.self)

        let state = try memory.span(at: taskStateAddress, length: taskStateSize)
        state.initializeMemory(as: UInt8.self, repeating: 0)
        state.storeBytes(of: UInt16(104).littleEndian, toByteOffset: 102, as: UInt16.self)  // I/O map base
        state.storeBytes(of: UInt8(0xFF), toByteOffset: Int(taskStateSize) - 1, as: UInt8.self)

        // PML4[0] -> PDPT; PDPT[0..3] -> four page directories of 512 2 MiB pages each.
        let tables = try memory.span(at: pageTableAddress, length: 6 * 0x1000)
        tables.initializeMemory(as: UInt8.self, repeating: 0)
        let table: UInt64 = 0x7  // present | writable | user
        let largePage: UInt64 = 0x87  // present | writable | user | 2 MiB
        tables.storeBytes(of: (pageTableAddress + 0x1000 | table).littleEndian, toByteOffset: 0, as: UInt64.self)
        for directory in 0..<4 {
            let address = pageTableAddress + 0x2000 + UInt64(directory) * 0x1000
            tables.storeBytes(of: (address | table).littleEndian, toByteOffset: 0x1000 + directory * 8, as: UInt64.self)
            for entry in 0..<512 {
                let page = (UInt64(directory) * 512 + UInt64(entry)) << 21
                tables.storeBytes(of: (page | largePage).littleEndian, toByteOffset: 0x2000 + directory * 0x1000 + entry * 8, as: UInt64.self)
            }
        }
    }

    static var taskStateSegment: Segment {
        Segment.taskState(selector: taskState, base: taskStateAddress, limit: UInt32(taskStateSize - 1))
    }

    /// The entry state for code at `privilege` (0: kernel segments; 3: user segments) using the
    /// tables `write` put in memory.
    static func entry(privilege: UInt8, rip: UInt64, rsp: UInt64, rflags: UInt64, rdi: UInt64 = 0, rsi: UInt64 = 0) -> LongModeEntry {
        let user = privilege == 3
        return LongModeEntry(code: .code64(selector: user ? userCode : kernelCode, privilege: privilege),
                             data: .data(selector: user ? userData : kernelData, privilege: privilege),
                             taskState: taskStateSegment, gdtBase: gdtAddress, gdtLimit: UInt16(gdtSize - 1),
                             cr3: pageTableAddress, rip: rip, rsp: rsp, rflags: rflags, rdi: rdi, rsi: rsi)
    }

    /// Writes `commandLine` and its NUL at `commandLineAddress`; `limit` is the longest accepted
    /// (without the NUL).
    static func writeCommandLine(_ commandLine: String, limit: Int, into memory: GuestMemory) throws(CommandLineError) {
        let bytes = Array(commandLine.utf8)
        if bytes.contains(0) { throw .containsNUL }
        let most = min(limit, commandLineCapacity - 1)
        if bytes.count > most { throw .tooLong(length: bytes.count, limit: most) }
        guard let target = memory.pointer(at: commandLineAddress, length: UInt64(commandLineCapacity)) else {
            throw .outsideMemory
        }
        target.initializeMemory(as: UInt8.self, repeating: 0, count: commandLineCapacity)
        bytes.withUnsafeBytes { target.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }
}

/// Why a command line cannot be passed.
public enum CommandLineError: Error, Equatable, Sendable {
    case containsNUL
    case tooLong(length: Int, limit: Int)
    case outsideMemory
}

/// A guest-physical range the loader needed is not RAM.
public struct BootMemoryError: Error, Equatable, Sendable, CustomStringConvertible {
    public let address: UInt64
    public let length: UInt64

    public var description: String {
        "guest-physical 0x\(String(address, radix: 16)) length 0x\(String(length, radix: 16)) is not in guest RAM"
    }
}

extension GuestMemory {
    /// The host bytes for guest-physical `[address, address + length)`, inside one region.
    func span(at address: UInt64, length: UInt64) throws(BootMemoryError) -> UnsafeMutableRawBufferPointer {
        guard length <= UInt64(Int.max), let start = pointer(at: address, length: length) else {
            throw BootMemoryError(address: address, length: length)
        }
        return UnsafeMutableRawBufferPointer(start: start, count: Int(length))
    }

    /// Copies `bytes[range]` to guest-physical `address`.
    func copy(_ bytes: [UInt8], _ range: Range<Int>? = nil, to address: UInt64) throws(BootMemoryError) {
        let range = range ?? bytes.indices
        guard !range.isEmpty else { return }
        let target = try span(at: address, length: UInt64(range.count))
        bytes.withUnsafeBytes { target.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[range])) }
    }
}
