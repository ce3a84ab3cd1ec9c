#include "CKVM.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static const struct { int cap; const char *name; } capabilities[BH_KVM_CAP_COUNT] = {
    [BH_KVM_CAP_USER_MEMORY] = { KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY" },
    [BH_KVM_CAP_IRQCHIP] = { KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP" },
    [BH_KVM_CAP_PIT2] = { KVM_CAP_PIT2, "KVM_CAP_PIT2" },
    [BH_KVM_CAP_SET_TSS_ADDR] = { KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR" },
    [BH_KVM_CAP_IOEVENTFD] = { KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD" },
    [BH_KVM_CAP_IRQFD] = { KVM_CAP_IRQFD, "KVM_CAP_IRQFD" },
    [BH_KVM_CAP_EXT_CPUID] = { KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID" },
    [BH_KVM_CAP_SET_IDENTITY_MAP_ADDR] = { KVM_CAP_SET_IDENTITY_MAP_ADDR, "KVM_CAP_SET_IDENTITY_MAP_ADDR" },
    [BH_KVM_CAP_IMMEDIATE_EXIT] = { KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT" },
};

const uint32_t BH_KVM_EXIT_IO = KVM_EXIT_IO;
const uint32_t BH_KVM_EXIT_HLT = KVM_EXIT_HLT;
const uint32_t BH_KVM_EXIT_MMIO = KVM_EXIT_MMIO;
const uint32_t BH_KVM_EXIT_SHUTDOWN = KVM_EXIT_SHUTDOWN;
const uint32_t BH_KVM_EXIT_FAIL_ENTRY = KVM_EXIT_FAIL_ENTRY;
const uint32_t BH_KVM_EXIT_INTERNAL_ERROR = KVM_EXIT_INTERNAL_ERROR;

static int result(long r) { return r < 0 ? -errno : (int)r; }

const char *bh_kvm_capability_name(bh_kvm_capability capability) {
    return capability < BH_KVM_CAP_COUNT ? capabilities[capability].name : "?";
}

int bh_kvm_open(void) { return result(open("/dev/kvm", O_RDWR | O_CLOEXEC)); }
int bh_kvm_api_version(int kvm) { return result(ioctl(kvm, KVM_GET_API_VERSION, 0)); }

int bh_kvm_check_extension(int kvm, bh_kvm_capability capability) {
    if (capability >= BH_KVM_CAP_COUNT) return -EINVAL;
    return result(ioctl(kvm, KVM_CHECK_EXTENSION, capabilities[capability].cap));
}

int bh_kvm_create_vm(int kvm) { return result(ioctl(kvm, KVM_CREATE_VM, 0)); }
int bh_kvm_vcpu_mmap_size(int kvm) { return result(ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0)); }

int bh_kvm_set_memory_region(int vm, uint32_t slot, uint64_t gpa, uint64_t size, void *host) {
    struct kvm_userspace_memory_region region = {
        .slot = slot, .flags = 0, .guest_phys_addr = gpa, .memory_size = size,
        .userspace_addr = (uint64_t)(uintptr_t)host,
    };
    return result(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region));
}

int bh_kvm_create_vcpu(int vm, int id) {
    int fd = ioctl(vm, KVM_CREATE_VCPU, id);
    if (fd < 0) return -errno;
    // KVM_CREATE_VCPU's descriptor has no close-on-exec flag.
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) { int e = errno; close(fd); return -e; }
    return fd;
}

int bh_kvm_set_real_mode(int vcpu, uint16_t ip, uint16_t sp) {
    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) return -errno;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = sregs.es.base = sregs.ss.base = 0;
    sregs.ds.selector = sregs.es.selector = sregs.ss.selector = 0;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) return -errno;
    struct kvm_regs regs;
    memset(&regs, 0, sizeof regs);
    regs.rip = ip;
    regs.rsp = sp;
    regs.rflags = 0x2;
    return result(ioctl(vcpu, KVM_SET_REGS, &regs));
}

int bh_kvm_run(int vcpu) { return result(ioctl(vcpu, KVM_RUN, 0)); }

uint32_t bh_kvm_exit_reason(const void *run) { return ((const struct kvm_run *)run)->exit_reason; }

void bh_kvm_exit_io(const void *run, uint8_t *out, uint8_t *size, uint16_t *port, uint32_t *count, uint64_t *data_offset) {
    const struct kvm_run *r = run;
    *out = r->io.direction == KVM_EXIT_IO_OUT;
    *size = r->io.size;
    *port = r->io.port;
    *count = r->io.count;
    *data_offset = r->io.data_offset;
}
