import CKVM

/// A segment register's hidden part, and the GDT descriptor that holds the same values, so the
/// state KVM loads and the table the guest may reload from never disagree.
public struct Segment: Equatable, Sendable {
    public var base: UInt64
    public var limit: UInt32
    public var selector: UInt16
    /// Descriptor type: for code/data (`system` false) 0xB = execute/read, accessed; 0x3 =
    /// read/write, accessed; for system segments 0xB = busy 64-bit TSS.
    public var type: UInt8
    public var privilege: UInt8
    /// False for TSS and LDT descriptors.
    public var codeOrData: Bool
    public var longMode: Bool
    public var defaultSize32: Bool
    public var granularity4K: Bool
    public var usable: Bool

    public init(base: UInt64 = 0, limit: UInt32, selector: UInt16, type: UInt8, privilege: UInt8, codeOrData: Bool = true,
                longMode: Bool = false, defaultSize32: Bool = false, granularity4K: Bool = false, usable: Bool = true) {
        self.base = base
        self.limit = limit
        self.selector = selector
        self.type = type
        self.privilege = privilege
        self.codeOrData = codeOrData
        self.longMode = longMode
        self.defaultSize32 = defaultSize32
        self.granularity4K = granularity4K
        self.usable = usable
    }

    /// A flat 64-bit code segment at privilege `privilege` (selector's RPL = privilege).
    public static func code64(selector: UInt16, privilege: UInt8) -> Segment {
        Segment(limit: 0xFFFF_FFFF, selector: selector | UInt16(privilege), type: 0xB, privilege: privilege,
                longMode: true, granularity4K: true)
    }

    /// A flat read/write data segment at privilege `privilege`.
    public static func data(selector: UInt16, privilege: UInt8) -> Segment {
        Segment(limit: 0xFFFF_FFFF, selector: selector | UInt16(privilege), type: 0x3, privilege: privilege,
                defaultSize32: true, granularity4K: true)
    }

    /// A busy 64-bit TSS of `limit + 1` bytes at `base`.
    public static func taskState(selector: UInt16, base: UInt64, limit: UInt32) -> Segment {
        Segment(base: base, limit: limit, selector: selector, type: 0xB, privilege: 0, codeOrData: false)
    }

    /// No LDT.
    public static let unusableLDT = Segment(limit: 0, selector: 0, type: 0x2, privilege: 0, codeOrData: false, usable: false)

    /// The 8-byte GDT descriptor (for a TSS, the low half of its 16 bytes; `systemHigh` is the
    /// other half). The limit is stored in 4 KiB units when `granularity4K`.
    public var descriptor: UInt64 {
        let rawLimit = granularity4K ? UInt64(limit >> 12) : UInt64(limit & 0xF_FFFF)
        var d = rawLimit & 0xFFFF
        d |= (base & 0xFF_FFFF) << 16
        d |= UInt64(type & 0xF) << 40
        d |= (codeOrData ? 1 : 0) << 44
        d |= UInt64(privilege & 3) << 45
        d |= 1 << 47  // present
        d |= ((rawLimit >> 16) & 0xF) << 48
        d |= (longMode ? 1 : 0) << 53
        d |= (defaultSize32 ? 1 : 0) << 54
        d |= (granularity4K ? 1 : 0) << 55
        d |= ((base >> 24) & 0xFF) << 56
        return d
    }

    /// The upper 8 bytes of a 16-byte system descriptor: base bits 32-63.
    public var systemHigh: UInt64 { base >> 32 }

    var kvm: bh_segment {
        bh_segment(base: base, limit: limit, selector: selector, type: type, present: usable ? 1 : 0, dpl: privilege,
                   db: defaultSize32 ? 1 : 0, s: codeOrData ? 1 : 0, l: longMode ? 1 : 0, g: granularity4K ? 1 : 0,
                   avl: 0, unusable: usable ? 0 : 1)
    }
}

/// Everything a vCPU needs to start executing 64-bit code: segments, descriptor tables,
/// control registers, and the few general registers a boot protocol passes values in.
public struct LongModeEntry: Equatable, Sendable {
    public var code: Segment
    public var data: Segment
    public var taskState: Segment
    public var gdtBase: UInt64
    public var gdtLimit: UInt16
    public var cr3: UInt64
    public var rip: UInt64
    public var rsp: UInt64
    public var rflags: UInt64
    public var rdi: UInt64
    public var rsi: UInt64

    /// CR0: PE | MP | ET | NE | WP | PG.
    public static let cr0: UInt64 = 0x8001_0033
    /// CR4: PAE | OSFXSR | OSXMMEXCPT (SSE usable).
    public static let cr4: UInt64 = 0x620
    /// EFER: LME | LMA.
    public static let efer: UInt64 = 0x500

    public init(code: Segment, data: Segment, taskState: Segment, gdtBase: UInt64, gdtLimit: UInt16, cr3: UInt64,
                rip: UInt64, rsp: UInt64, rflags: UInt64, rdi: UInt64 = 0, rsi: UInt64 = 0) {
        self.code = code
        self.data = data
        self.taskState = taskState
        self.gdtBase = gdtBase
        self.gdtLimit = gdtLimit
        self.cr3 = cr3
        self.rip = rip
        self.rsp = rsp
        self.rflags = rflags
        self.rdi = rdi
        self.rsi = rsi
    }

    var kvm: bh_cpu_entry_state {
        let d = data.kvm
        // No IDT (limit 0): an exception before the guest installs one is a triple fault.
        return bh_cpu_entry_state(cs: code.kvm, ds: d, es: d, fs: d, gs: d, ss: d, tr: taskState.kvm, ldt: Segment.unusableLDT.kvm,
                                  gdt_base: gdtBase, idt_base: 0, gdt_limit: gdtLimit, idt_limit: 0,
                                  cr0: LongModeEntry.cr0, cr3: cr3, cr4: LongModeEntry.cr4, efer: LongModeEntry.efer,
                                  rip: rip, rsp: rsp, rflags: rflags, rdi: rdi, rsi: rsi)
    }
}

/// One CPUID leaf as KVM reports and takes it.
public struct CPUIDEntry: Equatable, Sendable {
    public var function: UInt32
    public var index: UInt32
    public var flags: UInt32
    public var eax: UInt32
    public var ebx: UInt32
    public var ecx: UInt32
    public var edx: UInt32

    public init(function: UInt32, index: UInt32 = 0, flags: UInt32 = 0, eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) {
        self.function = function
        self.index = index
        self.flags = flags
        self.eax = eax
        self.ebx = ebx
        self.ecx = ecx
        self.edx = edx
    }

    init(_ e: bh_cpuid_entry) {
        self.init(function: e.function, index: e.index, flags: e.flags, eax: e.eax, ebx: e.ebx, ecx: e.ecx, edx: e.edx)
    }

    var kvm: bh_cpuid_entry { bh_cpuid_entry(function: function, index: index, flags: flags, eax: eax, ebx: ebx, ecx: ecx, edx: edx) }
}

/// What each vCPU's CPUID says, derived from what KVM supports.
public enum CPUID {
    /// "KVMKVMKVM\0\0\0" in EBX, ECX, EDX of leaf 0x4000_0000.
    public static let kvmSignature: (ebx: UInt32, ecx: UInt32, edx: UInt32) = (0x4B4D_564B, 0x564B_4D56, 0x0000_004D)
    /// CPUID.1:ECX bit 31: running under a hypervisor.
    public static let hypervisorBit: UInt32 = 1 << 31

    /// `supported` (KVM_GET_SUPPORTED_CPUID) for the vCPU whose local APIC id is `apicID`, in a
    /// machine of `vcpuCount` vCPUs: the APIC id in leaf 1 and in the x2APIC topology leaves, the
    /// hypervisor bit, and the KVM signature leaf (added when KVM did not list it).
    public static func table(supported: [CPUIDEntry], apicID: UInt8, vcpuCount: Int) -> [CPUIDEntry] {
        var table = supported
        let logical = UInt32(min(max(vcpuCount, 1), 255))
        var hasSignature = false
        var hasFeatures = false
        for i in table.indices {
            switch table[i].function {
            case 1:
                table[i].ebx = (table[i].ebx & 0x0000_FFFF) | (logical << 16) | (UInt32(apicID) << 24)
                table[i].ecx |= hypervisorBit
            case 0xB, 0x1F:
                table[i].edx = UInt32(apicID)
            case 0x4000_0000:
                hasSignature = true
                table[i].eax = max(table[i].eax, 0x4000_0001)
                (table[i].ebx, table[i].ecx, table[i].edx) = kvmSignature
            case 0x4000_0001:
                hasFeatures = true
            default:
                break
            }
        }
        if !hasSignature {
            table.append(CPUIDEntry(function: 0x4000_0000, eax: 0x4000_0001, ebx: kvmSignature.ebx, ecx: kvmSignature.ecx, edx: kvmSignature.edx))
        }
        if !hasFeatures { table.append(CPUIDEntry(function: 0x4000_0001)) }
        return table
    }
}

/// A model-specific register and the value a vCPU starts with.
public struct ModelSpecificRegister: Equatable, Sendable {
    public var index: UInt32
    public var value: UInt64

    public init(index: UInt32, value: UInt64) {
        self.index = index
        self.value = value
    }

    /// What a Linux guest expects at entry (as a firmware leaves them): SYSENTER and SYSCALL
    /// MSRs and KERNEL_GS_BASE cleared, the TSC at 0, fast strings enabled in MISC_ENABLE and
    /// write-back as the default memory type with MTRRs enabled.
    public static let boot: [ModelSpecificRegister] = [
        .init(index: 0x174, value: 0),  // IA32_SYSENTER_CS
        .init(index: 0x175, value: 0),  // IA32_SYSENTER_ESP
        .init(index: 0x176, value: 0),  // IA32_SYSENTER_EIP
        .init(index: 0xC000_0081, value: 0),  // STAR
        .init(index: 0xC000_0082, value: 0),  // LSTAR
        .init(index: 0xC000_0083, value: 0),  // CSTAR
        .init(index: 0xC000_0084, value: 0),  // SFMASK
        .init(index: 0xC000_0102, value: 0),  // KERNEL_GS_BASE
        .init(index: 0x10, value: 0),  // IA32_TSC
        .init(index: 0x1A0, value: 1),  // IA32_MISC_ENABLE: fast strings
        .init(index: 0x2FF, value: 0x806),  // IA32_MTRR_DEF_TYPE: enabled, write-back
    ]
}
