// VM and vCPU setup for a real machine: in-kernel irqchip and PIT, CPUID, MSRs, FPU, local
// APIC, 64-bit entry state; exit data; the signal that kicks vCPU threads out of KVM_RUN.
#define _GNU_SOURCE
#include "CKVM.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

_Static_assert(sizeof(((struct kvm_run *)0)->mmio.data) == 8, "kvm_run.mmio.data is 8 bytes");

const uint32_t BH_KVM_EXIT_INTR = KVM_EXIT_INTR;
const uint32_t BH_KVM_EXIT_SYSTEM_EVENT = KVM_EXIT_SYSTEM_EVENT;
const uint32_t BH_KVM_CPUID_FLAG_SIGNIFICANT_INDEX = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;

static int result(long r) { return r < 0 ? -errno : (int)r; }

int bh_kvm_create_irqchip(int vm) { return result(ioctl(vm, KVM_CREATE_IRQCHIP, 0)); }

int bh_kvm_create_pit2(int vm) {
    struct kvm_pit_config config;
    memset(&config, 0, sizeof config);
    return result(ioctl(vm, KVM_CREATE_PIT2, &config));
}

int bh_kvm_set_tss_addr(int vm, uint64_t address) {
    return result(ioctl(vm, KVM_SET_TSS_ADDR, (unsigned long)address));
}

int bh_kvm_set_identity_map_addr(int vm, uint64_t address) {
    __u64 value = address;
    return result(ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &value));
}

int bh_kvm_irq_line(int vm, uint32_t irq, int level) {
    struct kvm_irq_level line = { .irq = irq, .level = level ? 1 : 0 };
    return result(ioctl(vm, KVM_IRQ_LINE, &line));
}

int bh_kvm_get_supported_cpuid(int kvm, bh_cpuid_entry *entries, int capacity) {
    if (capacity <= 0 || capacity > 4096) return -EINVAL;
    struct kvm_cpuid2 *cpuid = calloc(1, sizeof *cpuid + (size_t)capacity * sizeof(struct kvm_cpuid_entry2));
    if (!cpuid) return -ENOMEM;
    cpuid->nent = (__u32)capacity;
    int r = result(ioctl(kvm, KVM_GET_SUPPORTED_CPUID, cpuid));
    if (r >= 0) {
        int count = cpuid->nent <= (__u32)capacity ? (int)cpuid->nent : capacity;
        for (int i = 0; i < count; i++) {
            const struct kvm_cpuid_entry2 *e = &cpuid->entries[i];
            entries[i] = (bh_cpuid_entry){ e->function, e->index, e->flags, e->eax, e->ebx, e->ecx, e->edx };
        }
        r = count;
    }
    free(cpuid);
    return r;
}

int bh_kvm_set_cpuid(int vcpu, const bh_cpuid_entry *entries, int count) {
    if (count < 0 || count > 4096) return -EINVAL;
    struct kvm_cpuid2 *cpuid = calloc(1, sizeof *cpuid + (size_t)count * sizeof(struct kvm_cpuid_entry2));
    if (!cpuid) return -ENOMEM;
    cpuid->nent = (__u32)count;
    for (int i = 0; i < count; i++) {
        struct kvm_cpuid_entry2 *e = &cpuid->entries[i];
        e->function = entries[i].function;
        e->index = entries[i].index;
        e->flags = entries[i].flags;
        e->eax = entries[i].eax;
        e->ebx = entries[i].ebx;
        e->ecx = entries[i].ecx;
        e->edx = entries[i].edx;
    }
    int r = result(ioctl(vcpu, KVM_SET_CPUID2, cpuid));
    free(cpuid);
    return r;
}

int bh_kvm_get_msr_index_list(int kvm, uint32_t *indices, int capacity) {
    if (capacity <= 0 || capacity > 65536) return -EINVAL;
    struct kvm_msr_list *list = calloc(1, sizeof *list + (size_t)capacity * sizeof(__u32));
    if (!list) return -ENOMEM;
    list->nmsrs = (__u32)capacity;
    int r = result(ioctl(kvm, KVM_GET_MSR_INDEX_LIST, list));
    if (r >= 0) {
        int count = list->nmsrs <= (__u32)capacity ? (int)list->nmsrs : capacity;
        memcpy(indices, list->indices, (size_t)count * sizeof(__u32));
        r = count;
    }
    free(list);
    return r;
}

int bh_kvm_set_msrs(int vcpu, const bh_msr_entry *entries, int count) {
    if (count < 0 || count > 1024) return -EINVAL;
    struct kvm_msrs *msrs = calloc(1, sizeof *msrs + (size_t)count * sizeof(struct kvm_msr_entry));
    if (!msrs) return -ENOMEM;
    msrs->nmsrs = (__u32)count;
    for (int i = 0; i < count; i++) {
        msrs->entries[i].index = entries[i].index;
        msrs->entries[i].data = entries[i].data;
    }
    int r = result(ioctl(vcpu, KVM_SET_MSRS, msrs));
    free(msrs);
    return r;
}

int bh_kvm_set_fpu_defaults(int vcpu) {
    struct kvm_fpu fpu;
    memset(&fpu, 0, sizeof fpu);
    fpu.fcw = 0x37f;
    fpu.mxcsr = 0x1f80;
    return result(ioctl(vcpu, KVM_SET_FPU, &fpu));
}

// Local APIC register offsets and LVT delivery modes (Intel SDM vol. 3, 11.5.1).
enum { APIC_LVT_LINT0 = 0x350, APIC_LVT_LINT1 = 0x360, APIC_MODE_NMI = 0x4, APIC_MODE_EXTINT = 0x7 };

static void set_delivery_mode(struct kvm_lapic_state *lapic, int reg, uint32_t mode) {
    uint32_t value;
    memcpy(&value, lapic->regs + reg, sizeof value);
    value = (value & ~0x700u) | (mode << 8);
    memcpy(lapic->regs + reg, &value, sizeof value);
}

int bh_kvm_set_lapic_lint(int vcpu) {
    struct kvm_lapic_state lapic;
    if (ioctl(vcpu, KVM_GET_LAPIC, &lapic) < 0) return -errno;
    set_delivery_mode(&lapic, APIC_LVT_LINT0, APIC_MODE_EXTINT);
    set_delivery_mode(&lapic, APIC_LVT_LINT1, APIC_MODE_NMI);
    return result(ioctl(vcpu, KVM_SET_LAPIC, &lapic));
}

static void set_segment(struct kvm_segment *to, const bh_segment *from) {
    memset(to, 0, sizeof *to);
    to->base = from->base;
    to->limit = from->limit;
    to->selector = from->selector;
    to->type = from->type;
    to->present = from->present;
    to->dpl = from->dpl;
    to->db = from->db;
    to->s = from->s;
    to->l = from->l;
    to->g = from->g;
    to->avl = from->avl;
    to->unusable = from->unusable;
}

int bh_kvm_set_entry_state(int vcpu, const bh_cpu_entry_state *state) {
    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) return -errno;
    set_segment(&sregs.cs, &state->cs);
    set_segment(&sregs.ds, &state->ds);
    set_segment(&sregs.es, &state->es);
    set_segment(&sregs.fs, &state->fs);
    set_segment(&sregs.gs, &state->gs);
    set_segment(&sregs.ss, &state->ss);
    set_segment(&sregs.tr, &state->tr);
    set_segment(&sregs.ldt, &state->ldt);
    sregs.gdt.base = state->gdt_base;
    sregs.gdt.limit = state->gdt_limit;
    sregs.idt.base = state->idt_base;
    sregs.idt.limit = state->idt_limit;
    sregs.cr0 = state->cr0;
    sregs.cr3 = state->cr3;
    sregs.cr4 = state->cr4;
    sregs.efer = state->efer;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) return -errno;
    struct kvm_regs regs;
    memset(&regs, 0, sizeof regs);
    regs.rip = state->rip;
    regs.rsp = state->rsp;
    regs.rflags = state->rflags;
    regs.rdi = state->rdi;
    regs.rsi = state->rsi;
    return result(ioctl(vcpu, KVM_SET_REGS, &regs));
}

int bh_kvm_get_rip(int vcpu, uint64_t *rip) {
    struct kvm_regs regs;
    if (ioctl(vcpu, KVM_GET_REGS, &regs) < 0) return -errno;
    *rip = regs.rip;
    return 0;
}

void bh_kvm_exit_mmio(const void *run, uint64_t *address, uint32_t *length, uint8_t *is_write, uint64_t *data_offset) {
    const struct kvm_run *r = run;
    *address = r->mmio.phys_addr;
    *length = r->mmio.len;
    *is_write = r->mmio.is_write ? 1 : 0;
    *data_offset = offsetof(struct kvm_run, mmio.data);
}

int bh_kvm_exit_internal(const void *run, uint32_t *suberror, uint64_t *data, int capacity) {
    const struct kvm_run *r = run;
    *suberror = r->internal.suberror;
    int max = (int)(sizeof r->internal.data / sizeof r->internal.data[0]);
    int n = r->internal.ndata < (__u32)max ? (int)r->internal.ndata : max;
    if (n > capacity) n = capacity;
    for (int i = 0; i < n; i++) data[i] = r->internal.data[i];
    return n;
}

uint64_t bh_kvm_exit_fail_entry(const void *run) {
    return ((const struct kvm_run *)run)->fail_entry.hardware_entry_failure_reason;
}

uint32_t bh_kvm_exit_system_event(const void *run) {
    return ((const struct kvm_run *)run)->system_event.type;
}

void bh_kvm_set_immediate_exit(void *run, uint8_t value) {
    __atomic_store_n(&((struct kvm_run *)run)->immediate_exit, value, __ATOMIC_SEQ_CST);
}

// SIGRTMIN + 6: glibc keeps the first realtime signals for itself; nothing else here uses this one.
static int kick_signal;
static pthread_once_t kick_once = PTHREAD_ONCE_INIT;

static void on_kick(int signal) { (void)signal; }

static void install_kick(void) {
    int signal = SIGRTMIN + 6;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_kick;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
    if (sigaction(signal, &action, NULL) == 0) kick_signal = signal;
}

int bh_kvm_kick_signal(void) {
    pthread_once(&kick_once, install_kick);
    return kick_signal > 0 ? kick_signal : -EINVAL;
}

int bh_kvm_kick_thread(unsigned long thread) {
    int signal = bh_kvm_kick_signal();
    if (signal < 0) return signal;
    return -pthread_kill((pthread_t)thread, signal);
}

int bh_memfd_seal_for_guest(int fd) {
    return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0 ? -errno : 0;
}
