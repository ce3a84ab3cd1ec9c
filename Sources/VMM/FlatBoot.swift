import KVM
import Virtio

/// Why a flat image cannot be booted.
public enum FlatBootError: Error, Equatable, Sendable, CustomStringConvertible {
    case emptyImage
    /// The image does not fit between its load address and the end of RAM below 3 GiB.
    case imageTooLarge(size: Int, room: UInt64)
    case commandLine(CommandLineError)
    case memory(BootMemoryError)

    public var description: String {
        switch self {
        case .emptyImage: "the flat image is empty"
        case .imageTooLarge(let size, let room): "the flat image (\(size) bytes) does not fit in the \(room) bytes of RAM above 1 MiB"
        case .commandLine(.containsNUL): "the command line contains a NUL byte"
        case .commandLine(.tooLong(let length, let limit)): "the command line is \(length) bytes, at most \(limit) fit"
        case .commandLine(.outsideMemory): "guest RAM is too small for the command line"
        case .memory(let error): "\(error)"
        }
    }
}

/// Boots a small freestanding guest per the issue 9 contract: the raw image at 1 MiB, entered
/// at its first byte in 64-bit mode at CPL 3 (IOPL 3, interrupts off), RDI = the command line,
/// RSI = the RAM size, RSP = 0x8_0000, page tables identity-mapping 4 GiB with the user bit.
public enum FlatBoot {
    public static let loadAddress: UInt64 = 0x10_0000
    public static let stackTop: UInt64 = 0x8_0000
    /// RFLAGS at entry: IOPL 3 and the always-one bit; IF clear (the guest polls).
    public static let entryFlags: UInt64 = 0x3002
    /// Longest command line, without its NUL.
    public static let maximumCommandLineLength = 4095

    /// Loads `image` and `commandLine` into `machine`'s RAM and returns vCPU 0's entry state.
    public static func load(image: [UInt8], commandLine: String, into machine: Machine) throws(FlatBootError) -> LongModeEntry {
        try load(image: image, commandLine: commandLine, memory: machine.memory, memoryMap: machine.memoryMap)
    }

    /// Loads into any guest memory laid out as `memoryMap` (tests use plain memory).
    public static func load(image: [UInt8], commandLine: String, memory: GuestMemory, memoryMap: GuestMemoryMap) throws(FlatBootError) -> LongModeEntry {
        guard !image.isEmpty else { throw .emptyImage }
        let room = memoryMap.lowRAMSize > loadAddress ? memoryMap.lowRAMSize - loadAddress : 0
        guard UInt64(image.count) <= room else { throw .imageTooLarge(size: image.count, room: room) }
        do throws(BootMemoryError) {
            try BootTables.write(into: memory)
            try memory.copy(image, to: loadAddress)
        } catch {
            throw .memory(error)
        }
        do throws(CommandLineError) {
            try BootTables.writeCommandLine(commandLine, limit: maximumCommandLineLength, into: memory)
        } catch {
            throw .commandLine(error)
        }
        return BootTables.entry(privilege: 3, rip: loadAddress, rsp: stackTop, rflags: entryFlags,
                                rdi: BootTables.commandLineAddress, rsi: memoryMap.ramSize)
    }
}
