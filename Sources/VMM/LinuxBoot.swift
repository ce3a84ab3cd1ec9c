import KVM
import Virtio

/// Why a Linux kernel (bzImage) cannot be booted: each names the header field or size at fault.
public enum LinuxBootError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Shorter than the boot sector and setup header the loader reads.
    case imageTooSmall(size: Int)
    /// No 0xAA55 at offset 0x1FE.
    case notABootImage(bootFlag: UInt16)
    /// No "HdrS" at offset 0x202: a kernel older than boot protocol 2.00, or not a kernel.
    case noSetupHeader
    case protocolTooOld(version: UInt16, minimum: UInt16)
    /// The setup header's declared end (0x202 + the byte at 0x201) is before the fields the
    /// loader needs, or beyond the space boot_params gives it.
    case badHeaderLength(end: Int)
    /// setup_sects says the real-mode setup is longer than the image.
    case setupBeyondImage(setupSize: Int, imageSize: Int)
    /// LOADED_HIGH is clear: a zImage, which loads at 0x10000.
    case notBzImage
    /// XLF_KERNEL_64 is clear: no 64-bit entry point.
    case no64BitEntry
    /// syssize declares more protected-mode code than the image holds, or too little to hold
    /// the 64-bit entry point.
    case kernelTruncated(declared: UInt64, present: Int)
    /// kernel_alignment is not a power of two of at least 4 KiB.
    case badAlignment(UInt64)
    /// The kernel, with the room it needs to decompress (init_size), does not fit in RAM below
    /// 3 GiB at any address it accepts.
    case kernelDoesNotFit(size: UInt64, ramTop: UInt64)
    /// No room for the initrd between the kernel's end and min(initrd_addr_max, RAM top).
    case initrdDoesNotFit(size: Int, lowest: UInt64, highest: UInt64)
    case commandLine(CommandLineError)
    case memory(BootMemoryError)

    public var description: String {
        func hex<T: BinaryInteger>(_ value: T) -> String { "0x" + String(value, radix: 16) }
        switch self {
        case .imageTooSmall(let size): return "kernel image of \(size) bytes is too small to be a bzImage"
        case .notABootImage(let flag): return "kernel image has boot flag \(hex(flag)) at 0x1FE, not 0xAA55"
        case .noSetupHeader: return "kernel image has no \"HdrS\" setup header at 0x202"
        case .protocolTooOld(let version, let minimum):
            return "kernel speaks boot protocol \(version >> 8).\(version & 0xFF), Bulkhead needs \(minimum >> 8).\(minimum & 0xFF) or later"
        case .badHeaderLength(let end): return "kernel setup header ends at \(hex(end)), outside [0x264, 0x290]"
        case .setupBeyondImage(let setup, let image): return "kernel setup_sects declares \(setup) bytes of setup in a \(image)-byte image"
        case .notBzImage: return "kernel is a zImage (LOADED_HIGH clear); only bzImage kernels boot"
        case .no64BitEntry: return "kernel has no 64-bit entry point (XLF_KERNEL_64 clear)"
        case .kernelTruncated(let declared, let present):
            return "kernel syssize declares \(declared) bytes of protected-mode code, the image holds \(present)"
        case .badAlignment(let alignment): return "kernel_alignment \(hex(alignment)) is not a power of two of at least 4 KiB"
        case .kernelDoesNotFit(let size, let top): return "kernel needs \(size) bytes from 1 MiB up, RAM below 3 GiB ends at \(hex(top))"
        case .initrdDoesNotFit(let size, let lowest, let highest):
            return "initrd of \(size) bytes does not fit between \(hex(lowest)) and \(hex(highest))"
        case .commandLine(.containsNUL): return "kernel command line contains a NUL byte"
        case .commandLine(.tooLong(let length, let limit)): return "kernel command line is \(length) bytes, the kernel takes at most \(limit)"
        case .commandLine(.outsideMemory): return "guest RAM is too small for the kernel command line"
        case .memory(let error): return "\(error)"
        }
    }
}

/// The fields of a bzImage's setup header the loader uses, validated against the image
/// (Documentation/arch/x86/boot.rst). Every offset and size comes from the image, so each is
/// checked before it is used.
public struct LinuxKernelHeader: Equatable, Sendable {
    /// The oldest boot protocol accepted: 2.12 brought xloadflags (XLF_KERNEL_64).
    public static let minimumProtocol: UInt16 = 0x020C
    static let loadedHigh: UInt8 = 0x01
    static let kernel64: UInt16 = 0x01

    public let protocolVersion: UInt16
    /// Bytes of real-mode setup (boot sector included): the protected-mode kernel follows.
    public let setupSize: Int
    /// Bytes of protected-mode kernel in the image (after the setup).
    public let kernelSize: Int
    /// End of the setup header (offset in the image and in boot_params).
    public let headerEnd: Int
    public let loadFlags: UInt8
    public let xloadFlags: UInt16
    public let relocatable: Bool
    public let kernelAlignment: UInt64
    public let preferredAddress: UInt64
    /// Bytes the kernel needs from its load address to decompress and start.
    public let initSize: UInt64
    /// Longest command line, without its NUL.
    public let commandLineLimit: Int
    /// Highest address the initrd may occupy.
    public let initrdAddressMax: UInt64

    /// Parses and checks `image`'s header.
    public init(parsing image: [UInt8]) throws(LinuxBootError) {
        // Everything read below lies before 0x290; the header may not extend past it either.
        guard image.count >= 0x290 else { throw .imageTooSmall(size: image.count) }
        func u8(_ o: Int) -> UInt8 { image[o] }
        func u16(_ o: Int) -> UInt16 { UInt16(image[o]) | UInt16(image[o + 1]) << 8 }
        func u32(_ o: Int) -> UInt32 { UInt32(u16(o)) | UInt32(u16(o + 2)) << 16 }
        func u64(_ o: Int) -> UInt64 { UInt64(u32(o)) | UInt64(u32(o + 4)) << 32 }

        let bootFlag = u16(0x1FE)
        guard bootFlag == 0xAA55 else { throw .notABootImage(bootFlag: bootFlag) }
        guard u32(0x202) == 0x5372_6448 else { throw .noSetupHeader }  // "HdrS"
        protocolVersion = u16(0x206)
        guard protocolVersion >= LinuxKernelHeader.minimumProtocol else {
            throw .protocolTooOld(version: protocolVersion, minimum: LinuxKernelHeader.minimumProtocol)
        }
        headerEnd = 0x202 + Int(u8(0x201))
        guard headerEnd >= 0x264, headerEnd <= 0x290 else { throw .badHeaderLength(end: headerEnd) }
        let sectors = u8(0x1F1) == 0 ? 4 : Int(u8(0x1F1))
        setupSize = (sectors + 1) * 512
        guard setupSize <= image.count, headerEnd <= setupSize else { throw .setupBeyondImage(setupSize: setupSize, imageSize: image.count) }
        loadFlags = u8(0x211)
        guard loadFlags & LinuxKernelHeader.loadedHigh != 0 else { throw .notBzImage }
        xloadFlags = u16(0x236)
        guard xloadFlags & LinuxKernelHeader.kernel64 != 0 else { throw .no64BitEntry }
        kernelSize = image.count - setupSize
        let declared = UInt64(u32(0x1F4)) * 16
        // The 64-bit entry point is 0x200 bytes into the protected-mode kernel.
        guard declared <= UInt64(kernelSize), declared > 0x200 else { throw .kernelTruncated(declared: declared, present: kernelSize) }
        relocatable = u8(0x234) != 0
        kernelAlignment = UInt64(u32(0x230))
        if relocatable {
            guard kernelAlignment >= 0x1000, kernelAlignment & (kernelAlignment - 1) == 0 else { throw .badAlignment(kernelAlignment) }
        }
        preferredAddress = u64(0x258)
        initSize = UInt64(u32(0x260))
        commandLineLimit = Int(u32(0x238))
        let addressMax = UInt64(u32(0x22C))
        initrdAddressMax = addressMax == 0 ? 0x37FF_FFFF : addressMax
    }

    /// Where the kernel (and an initrd of `initrdSize` bytes) go in RAM laid out as `map`: the
    /// preferred address when the kernel is relocatable and it fits, else the lowest suitably
    /// aligned address from 1 MiB; the initrd as high as allowed, page aligned.
    public func placement(in map: GuestMemoryMap, initrdSize: Int) throws(LinuxBootError) -> LinuxPlacement {
        let ramTop = map.lowRAMSize
        let needed = max(initSize, UInt64(kernelSize))
        func fits(_ address: UInt64) -> UInt64? {
            let (end, overflow) = address.addingReportingOverflow(needed)
            return !overflow && end <= ramTop ? end : nil
        }
        let oneMiB: UInt64 = 0x10_0000
        var candidates: [UInt64] = []
        if relocatable {
            if preferredAddress >= oneMiB && preferredAddress % kernelAlignment == 0 { candidates.append(preferredAddress) }
            candidates.append((oneMiB + kernelAlignment - 1) & ~(kernelAlignment - 1))
        } else {
            candidates.append(oneMiB)
        }
        guard let (address, end) = candidates.lazy.compactMap({ a in fits(a).map { (a, $0) } }).first else {
            throw .kernelDoesNotFit(size: needed, ramTop: ramTop)
        }
        var initrdAddress: UInt64?
        if initrdSize > 0 {
            let page: UInt64 = 0x1000
            let lowest = (end + page - 1) & ~(page - 1)
            // initrd_addr_max is the highest byte it may occupy (a 32-bit field: no overflow).
            let highest = min(initrdAddressMax + 1, ramTop, GuestMemoryMap.lowMemoryLimit)
            let size = UInt64(initrdSize)
            guard size <= highest, (highest - size) & ~(page - 1) >= lowest else {
                throw .initrdDoesNotFit(size: initrdSize, lowest: lowest, highest: highest)
            }
            initrdAddress = (highest - size) & ~(page - 1)
        }
        return LinuxPlacement(kernelAddress: address, kernelEnd: end, initrdAddress: initrdAddress)
    }
}

/// Where the loader puts a kernel and its initrd.
public struct LinuxPlacement: Equatable, Sendable {
    public let kernelAddress: UInt64
    /// End of the room the kernel needs (load address + max(init_size, its size)).
    public let kernelEnd: UInt64
    public let initrdAddress: UInt64?
}

/// Boots a bzImage through the 64-bit boot protocol: the protected-mode kernel at its load
/// address, boot_params (the zero page: the image's setup header, type_of_loader 0xFF, the e820
/// map, the command line and initrd pointers), an MP table listing the vCPUs, identity page
/// tables, and vCPU 0 entering at the load address + 0x200 at CPL 0 with RSI = the zero page.
public enum LinuxBoot {
    /// e820 entry types.
    static let usable: UInt32 = 1
    static let reserved: UInt32 = 2

    /// Loads into `machine`'s RAM and returns vCPU 0's entry state.
    public static func load(kernel: [UInt8], initrd: [UInt8] = [], commandLine: String, into machine: Machine) throws(LinuxBootError) -> LongModeEntry {
        try load(kernel: kernel, initrd: initrd, commandLine: commandLine, memory: machine.memory, memoryMap: machine.memoryMap,
                 vcpus: machine.configuration.vcpus)
    }

    /// Loads into any guest memory laid out as `memoryMap` (tests use plain memory).
    public static func load(kernel: [UInt8], initrd: [UInt8] = [], commandLine: String, memory: GuestMemory,
                            memoryMap: GuestMemoryMap, vcpus: Int = 1) throws(LinuxBootError) -> LongModeEntry {
        let header = try LinuxKernelHeader(parsing: kernel)
        let placement = try header.placement(in: memoryMap, initrdSize: initrd.count)
        do throws(CommandLineError) {
            try BootTables.writeCommandLine(commandLine, limit: header.commandLineLimit, into: memory)
        } catch {
            throw .commandLine(error)
        }
        do throws(BootMemoryError) {
            try BootTables.write(into: memory)
            try MPTable.write(vcpus: vcpus, into: memory)
            try memory.copy(kernel, header.setupSize..<kernel.count, to: placement.kernelAddress)
            if let initrdAddress = placement.initrdAddress { try memory.copy(initrd, to: initrdAddress) }
            try writeZeroPage(header: header, image: kernel, placement: placement, initrdSize: initrd.count,
                              memoryMap: memoryMap, memory: memory)
        } catch {
            throw .memory(error)
        }
        return BootTables.entry(privilege: 0, rip: placement.kernelAddress + 0x200, rsp: BootTables.structuresEnd,
                                rflags: 0x2, rsi: BootTables.zeroPageAddress)
    }

    /// The e820 map of `map`: conventional memory, the BIOS area reserved, RAM from 1 MiB, KVM's
    /// own pages reserved, and RAM above 4 GiB.
    public static func e820(_ map: GuestMemoryMap) -> [(address: UInt64, size: UInt64, type: UInt32)] {
        var entries: [(address: UInt64, size: UInt64, type: UInt32)] = [
            (0, 0xA_0000, usable),
            (0xF_0000, 0x1_0000, reserved),
        ]
        if map.lowRAMSize > 0x10_0000 { entries.append((0x10_0000, map.lowRAMSize - 0x10_0000, usable)) }
        entries.append((GuestMemoryMap.identityMapAddress, 0x4000, reserved))
        if map.highRAMSize > 0 { entries.append((GuestMemoryMap.highMemoryBase, map.highRAMSize, usable)) }
        return entries
    }

    private static func writeZeroPage(header: LinuxKernelHeader, image: [UInt8], placement: LinuxPlacement, initrdSize: Int,
                                      memoryMap: GuestMemoryMap, memory: GuestMemory) throws(BootMemoryError) {
        let page = try memory.span(at: BootTables.zeroPageAddress, length: 0x1000)
        page.initializeMemory(as: UInt8.self, repeating: 0)
        // The setup header goes to the same offsets in boot_params (0x1F1 up to its end).
        image.withUnsafeBytes { bytes in
            UnsafeMutableRawBufferPointer(rebasing: page[0x1F1..<header.headerEnd])
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[0x1F1..<header.headerEnd]))
        }
        func store<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            page.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
        }
        store(UInt16(0xFFFF), at: 0x1FA)  // vid_mode: normal
        store(UInt8(0xFF), at: 0x210)  // type_of_loader: undefined boot loader
        store(UInt32(truncatingIfNeeded: placement.kernelAddress), at: 0x214)  // code32_start
        store(UInt32(truncatingIfNeeded: placement.initrdAddress ?? 0), at: 0x218)  // ramdisk_image
        store(UInt32(truncatingIfNeeded: placement.initrdAddress == nil ? 0 : initrdSize), at: 0x21C)  // ramdisk_size
        store(UInt32(BootTables.commandLineAddress), at: 0x228)  // cmd_line_ptr
        let entries = e820(memoryMap)
        store(UInt8(entries.count), at: 0x1E8)  // e820_entries
        for (i, entry) in entries.enumerated() {
            let offset = 0x2D0 + i * 20
            store(entry.address, at: offset)
            store(entry.size, at: offset + 8)
            store(entry.type, at: offset + 16)
        }
    }
}
