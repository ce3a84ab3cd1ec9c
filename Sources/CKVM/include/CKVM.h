#ifndef BULKHEAD_CKVM_H
#define BULKHEAD_CKVM_H
// The KVM API (linux/kvm.h) for Swift: its requests are function-like macros and ioctl is
// variadic, so each call the VMM makes is a small function here. Every function returns the
// result or -errno.
#include <stdint.h>

/// Capabilities the VMM checks at start (KVM_CAP_*), for bh_kvm_check_extension.
typedef enum {
    BH_KVM_CAP_USER_MEMORY = 0,
    BH_KVM_CAP_IRQCHIP,
    BH_KVM_CAP_PIT2,
    BH_KVM_CAP_SET_TSS_ADDR,
    BH_KVM_CAP_IOEVENTFD,
    BH_KVM_CAP_IRQFD,
    BH_KVM_CAP_EXT_CPUID,
    BH_KVM_CAP_SET_IDENTITY_MAP_ADDR,
    BH_KVM_CAP_IMMEDIATE_EXIT,
    BH_KVM_CAP_COUNT
} bh_kvm_capability;

/// The name of a capability, as linux/kvm.h spells it.
const char *bh_kvm_capability_name(bh_kvm_capability capability);

int bh_kvm_open(void);
int bh_kvm_api_version(int kvm);
int bh_kvm_check_extension(int kvm, bh_kvm_capability capability);
int bh_kvm_create_vm(int kvm);
int bh_kvm_vcpu_mmap_size(int kvm);
/// KVM_SET_USER_MEMORY_REGION: guest physical [gpa, gpa + size) is host memory at `host`.
int bh_kvm_set_memory_region(int vm, uint32_t slot, uint64_t gpa, uint64_t size, void *host);
int bh_kvm_create_vcpu(int vm, int id);
/// Puts the vCPU in real mode at CS:IP = 0:`ip`, with flags 0x2 and the stack at `sp`.
int bh_kvm_set_real_mode(int vcpu, uint16_t ip, uint16_t sp);
/// KVM_RUN; returns 0 or -errno (-EINTR when a signal interrupted it).
int bh_kvm_run(int vcpu);

// ---- VM and vCPU setup for a real machine (CKVMSetup.c) ----

/// KVM_CREATE_IRQCHIP: the in-kernel PIC pair, IOAPIC and a local APIC per vCPU (before vCPUs).
int bh_kvm_create_irqchip(int vm);
/// KVM_CREATE_PIT2: the in-kernel i8254 PIT (and port 0x61), after the irqchip.
int bh_kvm_create_pit2(int vm);
/// KVM_SET_TSS_ADDR: three pages of guest-physical space KVM may use (outside RAM).
int bh_kvm_set_tss_addr(int vm, uint64_t address);
/// KVM_SET_IDENTITY_MAP_ADDR: one page of guest-physical space KVM may use (before vCPUs).
int bh_kvm_set_identity_map_addr(int vm, uint64_t address);
/// KVM_IRQ_LINE: drives input `irq` of the in-kernel PIC and IOAPIC to `level`.
int bh_kvm_irq_line(int vm, uint32_t irq, int level);

/// One CPUID leaf (struct kvm_cpuid_entry2 without its padding).
typedef struct {
    uint32_t function;
    uint32_t index;
    uint32_t flags;
    uint32_t eax, ebx, ecx, edx;
} bh_cpuid_entry;
/// KVM_GET_SUPPORTED_CPUID into `entries` (room for `capacity`): the count, or -E2BIG when
/// `capacity` is too small.
int bh_kvm_get_supported_cpuid(int kvm, bh_cpuid_entry *entries, int capacity);
/// KVM_SET_CPUID2 with `count` entries.
int bh_kvm_set_cpuid(int vcpu, const bh_cpuid_entry *entries, int count);
/// The KVM_CPUID_FLAG_SIGNIFCANT_INDEX flag of a CPUID entry.
extern const uint32_t BH_KVM_CPUID_FLAG_SIGNIFICANT_INDEX;

/// One model-specific register value.
typedef struct {
    uint32_t index;
    uint64_t data;
} bh_msr_entry;
/// KVM_GET_MSR_INDEX_LIST into `indices`: the count, or -E2BIG when `capacity` is too small.
int bh_kvm_get_msr_index_list(int kvm, uint32_t *indices, int capacity);
/// KVM_SET_MSRS: how many were set (in order; the first one refused stops it) or -errno.
int bh_kvm_set_msrs(int vcpu, const bh_msr_entry *entries, int count);

/// KVM_SET_FPU with the x87 and SSE control words of a processor after reset (FCW 0x37f,
/// MXCSR 0x1f80), everything else zero.
int bh_kvm_set_fpu_defaults(int vcpu);
/// KVM_GET_LAPIC/KVM_SET_LAPIC: LVT LINT0 in ExtINT mode (the PIC's output) and LINT1 in NMI
/// mode, as a BIOS leaves them for the virtual-wire mode.
int bh_kvm_set_lapic_lint(int vcpu);

/// The hidden part of a segment register (struct kvm_segment).
typedef struct {
    uint64_t base;
    uint32_t limit;
    uint16_t selector;
    uint8_t type, present, dpl, db, s, l, g, avl, unusable;
} bh_segment;

/// The state KVM_SET_SREGS/KVM_SET_REGS load for a 64-bit entry; general registers not named
/// here are zero.
typedef struct {
    bh_segment cs, ds, es, fs, gs, ss, tr, ldt;
    uint64_t gdt_base, idt_base;
    uint16_t gdt_limit, idt_limit;
    uint64_t cr0, cr3, cr4, efer;
    uint64_t rip, rsp, rflags, rdi, rsi;
} bh_cpu_entry_state;
/// Loads `state` (KVM_GET_SREGS first, so the APIC base and pending interrupts are kept).
int bh_kvm_set_entry_state(int vcpu, const bh_cpu_entry_state *state);
/// KVM_GET_REGS' RIP.
int bh_kvm_get_rip(int vcpu, uint64_t *rip);

/// Exit reasons beyond those below that the VMM tells apart.
extern const uint32_t BH_KVM_EXIT_INTR;
extern const uint32_t BH_KVM_EXIT_SYSTEM_EVENT;
/// For an MMIO exit: guest-physical address, length (1-8), direction and where in the kvm_run
/// page the data is (offset from `run`).
void bh_kvm_exit_mmio(const void *run, uint64_t *address, uint32_t *length, uint8_t *is_write, uint64_t *data_offset);
/// For KVM_EXIT_INTERNAL_ERROR: the suberror and up to `capacity` data words; returns how many.
int bh_kvm_exit_internal(const void *run, uint32_t *suberror, uint64_t *data, int capacity);
/// For KVM_EXIT_FAIL_ENTRY: the hardware's entry failure reason.
uint64_t bh_kvm_exit_fail_entry(const void *run);
/// For KVM_EXIT_SYSTEM_EVENT: the event type.
uint32_t bh_kvm_exit_system_event(const void *run);
/// Sets kvm_run.immediate_exit (atomically, for another thread to make KVM_RUN return EINTR).
void bh_kvm_set_immediate_exit(void *run, uint8_t value);

/// Installs (once per process) an empty handler without SA_RESTART for the signal that kicks
/// vCPU threads out of KVM_RUN, and returns that signal's number.
int bh_kvm_kick_signal(void);
/// Sends the kick signal to `thread` (a pthread_t); 0 or -errno.
int bh_kvm_kick_thread(unsigned long thread);

/// Adds F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL to a memfd: no sharer can resize it or add
/// seals (F_SEAL_WRITE would fault the VMM's own writes). 0 or -errno.
int bh_memfd_seal_for_guest(int fd);

/// Exit reasons of struct kvm_run (KVM_EXIT_*) that the VMM tells apart.
extern const uint32_t BH_KVM_EXIT_IO;
extern const uint32_t BH_KVM_EXIT_HLT;
extern const uint32_t BH_KVM_EXIT_MMIO;
extern const uint32_t BH_KVM_EXIT_SHUTDOWN;
extern const uint32_t BH_KVM_EXIT_FAIL_ENTRY;
extern const uint32_t BH_KVM_EXIT_INTERNAL_ERROR;

/// The exit of the last KVM_RUN, read from the vCPU's shared kvm_run page.
uint32_t bh_kvm_exit_reason(const void *run);
/// For a port-I/O exit: direction (1 out, 0 in), access size, port, count, and where in the
/// kvm_run page the data is (offset from `run`).
void bh_kvm_exit_io(const void *run, uint8_t *out, uint8_t *size, uint16_t *port, uint32_t *count, uint64_t *data_offset);
#endif

// ioeventfd, irqfd and MSI routing
// (after the main include guard, with its own, so declarations added above it never touch it)
#ifndef BULKHEAD_CKVM_INTERRUPTS_H
#define BULKHEAD_CKVM_INTERRUPTS_H
#include <stdint.h>

/// One MSI route of a GSI routing table: GSI `gsi` sends `data` to `address_hi:address_lo`.
typedef struct {
    uint32_t gsi;
    uint32_t address_lo;
    uint32_t address_hi;
    uint32_t data;
} bh_kvm_msi_route;

/// GSIs below this one keep the in-kernel irqchip's default routes (PIC and IOAPIC pins).
extern const uint32_t BH_KVM_IRQCHIP_GSIS;
/// The most routes a table may hold (KVM_MAX_IRQ_ROUTES).
extern const uint32_t BH_KVM_MAX_ROUTES;

/// KVM_IOEVENTFD: a guest write of `length` bytes (1, 2, 4 or 8; 0: any) at `address` (memory,
/// or a port when `pio`) signals eventfd `fd` instead of exiting; with `has_datamatch`, only a
/// write of `datamatch`. `deassign` removes the registration with the same values.
int bh_kvm_ioeventfd(int vm, uint64_t address, uint32_t length, int fd, int pio, int has_datamatch,
                     uint64_t datamatch, int deassign);
/// KVM_IRQFD: a signal of eventfd `fd` raises GSI `gsi` (as its route says); `deassign` removes it.
int bh_kvm_irqfd(int vm, int fd, uint32_t gsi, int deassign);
/// KVM_SET_GSI_ROUTING: the irqchip's default routes for GSIs 0-23 (which the table replaces,
/// so they are written again) plus `count` MSI routes (GSIs from BH_KVM_IRQCHIP_GSIS up).
int bh_kvm_set_gsi_routing(int vm, const bh_kvm_msi_route *routes, uint32_t count);
/// KVM_SIGNAL_MSI: sends one message now. Returns >0 delivered, 0 blocked by the guest, or -errno.
int bh_kvm_signal_msi(int vm, uint32_t address_lo, uint32_t address_hi, uint32_t data);
#endif
