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
