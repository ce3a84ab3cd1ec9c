// ioeventfd, irqfd and MSI routing: the KVM calls behind Sources/KVM/Interrupts.swift.
#include "CKVM.h"
#include <errno.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

_Static_assert(sizeof(bh_kvm_msi_route) == 16, "bh_kvm_msi_route is four u32");

// KVM_MAX_IRQ_ROUTES, which only the kernel's own headers define (linux/kvm_host.h).
enum { max_irq_routes = 4096 };

const uint32_t BH_KVM_IRQCHIP_GSIS = 24;
const uint32_t BH_KVM_MAX_ROUTES = max_irq_routes;

static int result(long r) { return r < 0 ? -errno : (int)r; }

int bh_kvm_ioeventfd(int vm, uint64_t address, uint32_t length, int fd, int pio, int has_datamatch,
                     uint64_t datamatch, int deassign) {
    struct kvm_ioeventfd request;
    memset(&request, 0, sizeof request);
    request.addr = address;
    request.len = length;
    request.fd = fd;
    request.datamatch = has_datamatch ? datamatch : 0;
    request.flags = (pio ? KVM_IOEVENTFD_FLAG_PIO : 0) | (has_datamatch ? KVM_IOEVENTFD_FLAG_DATAMATCH : 0)
        | (deassign ? KVM_IOEVENTFD_FLAG_DEASSIGN : 0);
    return result(ioctl(vm, KVM_IOEVENTFD, &request));
}

int bh_kvm_irqfd(int vm, int fd, uint32_t gsi, int deassign) {
    struct kvm_irqfd request;
    memset(&request, 0, sizeof request);
    request.fd = (uint32_t)fd;
    request.gsi = gsi;
    request.flags = deassign ? KVM_IRQFD_FLAG_DEASSIGN : 0;
    return result(ioctl(vm, KVM_IRQFD, &request));
}

int bh_kvm_set_gsi_routing(int vm, const bh_kvm_msi_route *routes, uint32_t count) {
    // GSIs 0-15: the PIC (master pins 0-7, slave pins 8-15) and the IOAPIC pin of the same
    // number; 16-23: the IOAPIC only. What KVM_CREATE_IRQCHIP installs.
    const uint32_t defaults = 16 * 2 + 8;
    if (count > max_irq_routes - defaults) return -EINVAL;
    uint32_t total = defaults + count;
    struct kvm_irq_routing *table = calloc(1, sizeof *table + total * sizeof(struct kvm_irq_routing_entry));
    if (table == NULL) return -ENOMEM;
    uint32_t n = 0;
    for (uint32_t gsi = 0; gsi < BH_KVM_IRQCHIP_GSIS; gsi++) {
        if (gsi < 16) {
            table->entries[n].gsi = gsi;
            table->entries[n].type = KVM_IRQ_ROUTING_IRQCHIP;
            table->entries[n].u.irqchip.irqchip = gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE;
            table->entries[n].u.irqchip.pin = gsi % 8;
            n++;
        }
        table->entries[n].gsi = gsi;
        table->entries[n].type = KVM_IRQ_ROUTING_IRQCHIP;
        table->entries[n].u.irqchip.irqchip = KVM_IRQCHIP_IOAPIC;
        table->entries[n].u.irqchip.pin = gsi;
        n++;
    }
    for (uint32_t i = 0; i < count; i++) {
        if (routes[i].gsi < BH_KVM_IRQCHIP_GSIS) { free(table); return -EINVAL; }
        table->entries[n].gsi = routes[i].gsi;
        table->entries[n].type = KVM_IRQ_ROUTING_MSI;
        table->entries[n].u.msi.address_lo = routes[i].address_lo;
        table->entries[n].u.msi.address_hi = routes[i].address_hi;
        table->entries[n].u.msi.data = routes[i].data;
        n++;
    }
    table->nr = n;
    int r = result(ioctl(vm, KVM_SET_GSI_ROUTING, table));
    free(table);
    return r;
}

int bh_kvm_signal_msi(int vm, uint32_t address_lo, uint32_t address_hi, uint32_t data) {
    struct kvm_msi message;
    memset(&message, 0, sizeof message);
    message.address_lo = address_lo;
    message.address_hi = address_hi;
    message.data = data;
    return result(ioctl(vm, KVM_SIGNAL_MSI, &message));
}
