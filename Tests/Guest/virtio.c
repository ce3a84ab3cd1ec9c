/* virtio-pci, modern transport only (virtio 1.x, 4.1): the vendor capabilities locate the common,
 * notify, ISR and device configuration structures in the BARs pci.c assigned. Split virtqueues
 * live in the guest's own pages. The guest polls: MSI-X vectors are NO_VECTOR (or, with msix=1,
 * real vectors that stay pending because IF = 0), interrupts are suppressed in the rings, and
 * the doorbell is rung once per batch, only when the device asks for it (EVENT_IDX's avail_event,
 * or the used ring's NO_NOTIFY flag). */
#include "guest.h"

#define PCI_CAP_VENDOR 0x09
#define PCI_CAP_MSIX 0x11
#define VIRTIO_PCI_CAP_COMMON 1
#define VIRTIO_PCI_CAP_NOTIFY 2
#define VIRTIO_PCI_CAP_ISR 3
#define VIRTIO_PCI_CAP_DEVICE 4

#define MAX_DEVICES 8
static struct virtio_device devices[MAX_DEVICES];
static int device_count;

/* The address of a capability's structure when its BAR is assigned and holds it, else 0. */
static u64 structure_address(struct pci_function *pci, u8 cap, u32 *length) {
    u8 bar = pci_read8(pci, (u8)(cap + 4));
    u32 offset = pci_read32(pci, (u8)(cap + 8));
    u32 size = pci_read32(pci, (u8)(cap + 12));
    if (bar > 5 || !pci->bar[bar]) return 0;
    if ((u64)offset + size > pci->bar_size[bar]) return 0;
    *length = size;
    return pci->bar[bar] + offset;
}

bool virtio_probe(struct virtio_device *dev, struct pci_function *pci, u16 type) {
    memset(dev, 0, sizeof *dev);
    dev->pci = pci;
    dev->type = type;
    u32 length = 0;
    for (u8 cap = pci_find_capability(pci, PCI_CAP_VENDOR, 0); cap; cap = pci_find_capability(pci, PCI_CAP_VENDOR, cap)) {
        u8 kind = pci_read8(pci, (u8)(cap + 3));
        switch (kind) {
        case VIRTIO_PCI_CAP_COMMON:
            if (!dev->common) dev->common = structure_address(pci, cap, &length);
            if (dev->common && length < 0x38) dev->common = 0;
            break;
        case VIRTIO_PCI_CAP_NOTIFY:
            if (!dev->notify_base) {
                dev->notify_base = structure_address(pci, cap, &dev->notify_length);
                dev->notify_multiplier = pci_read32(pci, (u8)(cap + 16));
            }
            break;
        case VIRTIO_PCI_CAP_ISR:
            if (!dev->isr) dev->isr = structure_address(pci, cap, &length);
            break;
        case VIRTIO_PCI_CAP_DEVICE:
            if (!dev->device_config) dev->device_config = structure_address(pci, cap, &length);
            break;
        default:
            break;
        }
    }
    dev->msix_capability = pci_find_capability(pci, PCI_CAP_MSIX, 0);
    if (dev->msix_capability) dev->msix_table_size = (u16)((pci_read16(pci, (u8)(dev->msix_capability + 2)) & 0x7FF) + 1);
    return dev->common && dev->notify_base && dev->isr && dev->device_config;
}

/* Finds and probes every virtio function (modern ids 0x1040 + type, transitional ids by their
 * subsystem id) once PCI is assigned. */
int virtio_discover(bool print) {
    device_count = 0;
    for (int i = 0; i < pci_function_count && device_count < MAX_DEVICES; i++) {
        struct pci_function *pci = &pci_functions[i];
        if (pci->vendor != VIRTIO_VENDOR) continue;
        u16 type = 0;
        if (pci->device_id >= 0x1040 && pci->device_id <= 0x107F) type = (u16)(pci->device_id - 0x1040);
        else if (pci->device_id >= 0x1000 && pci->device_id <= 0x103F) type = pci_read16(pci, 0x2E);
        struct virtio_device *dev = &devices[device_count];
        if (!virtio_probe(dev, pci, type)) {
            say("virtio %02x:%02x.%x type=%u without the modern capabilities: skipped", pci->bus, pci->device,
                pci->function, type);
            continue;
        }
        device_count++;
        if (print) {
            say("virtio %02x:%02x.%x type=%u common=0x%llx notify=0x%llx*%u isr=0x%llx device=0x%llx msix=%u",
                pci->bus, pci->device, pci->function, type, dev->common, dev->notify_base, dev->notify_multiplier,
                dev->isr, dev->device_config, dev->msix_capability ? dev->msix_table_size : 0);
        }
    }
    return device_count;
}

struct virtio_device *virtio_find(u16 type, int nth) {
    for (int i = 0; i < device_count; i++) {
        if (devices[i].type == type && nth-- == 0) return &devices[i];
    }
    return NULL;
}

u8 virtio_status(struct virtio_device *dev) { return mmio_read8(dev->common + VCOMMON_STATUS); }

bool virtio_reset(struct virtio_device *dev) {
    mmio_write8(dev->common + VCOMMON_STATUS, 0);
    /* The device may take a while; a device that never comes back is reported, not waited on. */
    u64 start = rdtsc(), limit = tsc_khz ? ms_to_cycles(2000) : 4000000000ull;
    while (virtio_status(dev) != 0) {
        if (rdtsc() - start > limit) return false;
        cpu_relax();
    }
    return true;
}

static void set_status(struct virtio_device *dev, u8 bits) {
    u8 status = virtio_status(dev);
    mmio_write8(dev->common + VCOMMON_STATUS, (u8)(status | bits));
}

bool virtio_negotiate(struct virtio_device *dev, u64 wanted, const char **why) {
    if (!virtio_reset(dev)) {
        *why = "device reset did not complete";
        return false;
    }
    memset(dev->queues, 0, sizeof dev->queues);
    mmio_write8(dev->common + VCOMMON_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
    mmio_write8(dev->common + VCOMMON_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    mmio_write32(dev->common + VCOMMON_DFSELECT, 0);
    u64 offered = mmio_read32(dev->common + VCOMMON_DF);
    mmio_write32(dev->common + VCOMMON_DFSELECT, 1);
    offered |= (u64)mmio_read32(dev->common + VCOMMON_DF) << 32;
    dev->device_features = offered;
    if (!(offered & VIRTIO_F_VERSION_1)) {
        set_status(dev, VIRTIO_STATUS_FAILED);
        *why = "device does not offer VIRTIO_F_VERSION_1";
        return false;
    }
    dev->driver_features = offered & (wanted | VIRTIO_F_VERSION_1);
    mmio_write32(dev->common + VCOMMON_GFSELECT, 0);
    mmio_write32(dev->common + VCOMMON_GF, (u32)dev->driver_features);
    mmio_write32(dev->common + VCOMMON_GFSELECT, 1);
    mmio_write32(dev->common + VCOMMON_GF, (u32)(dev->driver_features >> 32));
    set_status(dev, VIRTIO_STATUS_FEATURES_OK);
    if (!(virtio_status(dev) & VIRTIO_STATUS_FEATURES_OK)) {
        set_status(dev, VIRTIO_STATUS_FAILED);
        *why = "device refused FEATURES_OK";
        return false;
    }
    dev->num_queues = mmio_read16(dev->common + VCOMMON_NUMQ);
    return true;
}

void virtio_configure_msix(struct virtio_device *dev, bool enable) {
    dev->msix_enabled = false;
    if (!dev->msix_capability) return;
    struct pci_function *pci = dev->pci;
    u8 control = (u8)(dev->msix_capability + 2);
    u16 value = pci_read16(pci, control);
    if (!enable) {
        pci_write16(pci, control, (u16)(value & ~0xC000));
        mmio_write16(dev->common + VCOMMON_MSIX, VIRTIO_NO_VECTOR);
        return;
    }
    u32 table = pci_read32(pci, (u8)(dev->msix_capability + 4));
    u8 bir = table & 7;
    if (bir > 5 || !pci->bar[bir]) return;
    u64 base = pci->bar[bir] + (table & ~7u);
    u16 entries = dev->msix_table_size < 8 ? dev->msix_table_size : 8;
    /* Ordinary fixed-delivery vectors 0x40 + n to the boot CPU: they stay pending (IF = 0), but
     * the VMM's MSI-X and irqfd path is exercised. */
    for (u16 i = 0; i < entries; i++) {
        u64 entry = base + 16ull * i;
        mmio_write32(entry + 0, 0xFEE00000);
        mmio_write32(entry + 4, 0);
        mmio_write32(entry + 8, 0x40u + i);
        mmio_write32(entry + 12, 0);
    }
    pci_write16(pci, control, (u16)((value & ~0x4000) | 0x8000));
    mmio_write16(dev->common + VCOMMON_MSIX, 0);
    dev->msix_enabled = true;
}

u16 virtio_queue_vector(struct virtio_device *dev, u16 index) {
    if (!dev->msix_enabled) return VIRTIO_NO_VECTOR;
    u16 entries = dev->msix_table_size < 8 ? dev->msix_table_size : 8;
    return (u16)(index + 1) < entries ? (u16)(index + 1) : VIRTIO_NO_VECTOR;
}

static volatile u16 *used_event(struct virtqueue *vq) { return &vq->avail->ring[vq->size]; }
static volatile u16 *avail_event(struct virtqueue *vq) { return (volatile u16 *)&vq->used->ring[vq->size]; }

bool virtio_setup_queue(struct virtio_device *dev, u16 index, u16 max_size, const char **why) {
    if (index >= dev->num_queues || index >= sizeof dev->queues / sizeof dev->queues[0]) {
        *why = "device has too few queues";
        return false;
    }
    u64 c = dev->common;
    mmio_write16(c + VCOMMON_Q_SELECT, index);
    u16 offered = mmio_read16(c + VCOMMON_Q_SIZE);
    if (offered == 0) {
        *why = "queue not available";
        return false;
    }
    u16 size = 1;
    while ((u32)size * 2 <= offered && (u32)size * 2 <= max_size) size = (u16)(size * 2);
    mmio_write16(c + VCOMMON_Q_SIZE, size);

    struct virtqueue *vq = &dev->queues[index];
    memset(vq, 0, sizeof *vq);
    vq->index = index;
    vq->size = size;
    vq->desc = alloc_pages(16ull * size);
    vq->avail = alloc_pages(6ull + 2ull * size);
    vq->used = alloc_pages(6ull + 8ull * size);
    vq->tokens = alloc_pages(8ull * size);
    vq->event_idx = (dev->driver_features & VIRTIO_F_EVENT_IDX) != 0;
    for (u16 i = 0; i < size; i++) vq->desc[i].next = (u16)(i + 1);
    vq->free_head = 0;
    vq->free_count = size;
    /* No interrupts wanted: without EVENT_IDX by the flag, with it by a used_event the used
     * index cannot reach before the next reap moves it on. */
    if (vq->event_idx) *used_event(vq) = 0x8000;
    else vq->avail->flags = VRING_AVAIL_F_NO_INTERRUPT;

    u16 vector = virtio_queue_vector(dev, index);
    mmio_write16(c + VCOMMON_Q_MSIX, vector);
    if (mmio_read16(c + VCOMMON_Q_MSIX) != vector) {
        *why = "device refused the queue's MSI-X vector";
        return false;
    }
    u64 desc = (u64)vq->desc, avail = (u64)vq->avail, used = (u64)vq->used;
    mmio_write32(c + VCOMMON_Q_DESCLO, (u32)desc);
    mmio_write32(c + VCOMMON_Q_DESCHI, (u32)(desc >> 32));
    mmio_write32(c + VCOMMON_Q_AVAILLO, (u32)avail);
    mmio_write32(c + VCOMMON_Q_AVAILHI, (u32)(avail >> 32));
    mmio_write32(c + VCOMMON_Q_USEDLO, (u32)used);
    mmio_write32(c + VCOMMON_Q_USEDHI, (u32)(used >> 32));
    u64 offset = (u64)mmio_read16(c + VCOMMON_Q_NOFF) * dev->notify_multiplier;
    if (offset + 2 > dev->notify_length) {
        *why = "queue notify offset outside the notify structure";
        return false;
    }
    vq->notify_address = dev->notify_base + offset;
    mmio_write16(c + VCOMMON_Q_ENABLE, 1);
    return true;
}

void virtio_driver_ok(struct virtio_device *dev) { set_status(dev, VIRTIO_STATUS_DRIVER_OK); }

u8 virtio_config_read8(struct virtio_device *dev, u32 offset) { return mmio_read8(dev->device_config + offset); }

u32 virtio_config_read32(struct virtio_device *dev, u32 offset) {
    return mmio_read32(dev->device_config + offset);
}

/* Both halves from one configuration generation. */
u64 virtio_config_read64(struct virtio_device *dev, u32 offset) {
    u64 value = 0;
    for (int tries = 0; tries < 16; tries++) {
        u8 generation = mmio_read8(dev->common + VCOMMON_CFGGENERATION);
        value = mmio_read32(dev->device_config + offset);
        value |= (u64)mmio_read32(dev->device_config + offset + 4) << 32;
        if (mmio_read8(dev->common + VCOMMON_CFGGENERATION) == generation) break;
    }
    return value;
}

u16 vq_free(const struct virtqueue *vq) { return vq->free_count; }

bool vq_add(struct virtqueue *vq, const struct vbuf *buffers, int count, u64 token) {
    if (count <= 0 || count > vq->free_count) return false;
    u16 head = vq->free_head, i = head, last = head;
    for (int n = 0; n < count; n++) {
        struct vring_desc *d = &vq->desc[i];
        d->addr = buffers[n].addr;
        d->len = buffers[n].len;
        d->flags = (u16)((buffers[n].writable ? VRING_DESC_F_WRITE : 0) | (n + 1 < count ? VRING_DESC_F_NEXT : 0));
        last = i;
        i = d->next; /* free-list link, which is also the chain's next */
    }
    vq->free_head = vq->desc[last].next;
    vq->free_count = (u16)(vq->free_count - count);
    vq->tokens[head] = token;
    vq->avail->ring[vq->next_avail % vq->size] = head;
    vq->next_avail++;
    return true;
}

void vq_kick(struct virtqueue *vq) {
    u16 old = vq->kicked_avail, fresh = vq->next_avail;
    if (old == fresh) return;
    barrier(); /* descriptors and ring entries before the index (x86 keeps stores in order) */
    *(volatile u16 *)&vq->avail->idx = fresh;
    mb(); /* the index must be visible before the device's suppression state is read */
    bool needed;
    if (vq->event_idx) {
        u16 event = *avail_event(vq);
        needed = (u16)(fresh - event - 1) < (u16)(fresh - old);
    } else {
        needed = !(*(volatile u16 *)&vq->used->flags & VRING_USED_F_NO_NOTIFY);
    }
    vq->kicked_avail = fresh;
    if (needed) {
        mmio_write16(vq->notify_address, vq->index);
        vq->doorbells++;
        exits.doorbells++;
    } else {
        vq->suppressed++;
    }
}

bool vq_get(struct virtqueue *vq, u64 *token, u32 *length) {
    u16 used_index = *(volatile u16 *)&vq->used->idx;
    if (used_index == vq->last_used) return false;
    barrier(); /* the entry after the index (x86 keeps loads in order) */
    struct vring_used_elem element = *(volatile struct vring_used_elem *)&vq->used->ring[vq->last_used % vq->size];
    vq->last_used++;
    if (vq->event_idx) *used_event(vq) = (u16)(vq->last_used + 0x8000);
    if (element.id >= vq->size) {
        *token = ~0ull;
        *length = 0;
        return true;
    }
    u16 head = (u16)element.id, i = head;
    u16 count = 1;
    while ((vq->desc[i].flags & VRING_DESC_F_NEXT) && count < vq->size) {
        i = vq->desc[i].next;
        count++;
    }
    vq->desc[i].next = vq->free_head;
    vq->free_head = head;
    vq->free_count = (u16)(vq->free_count + count);
    *token = vq->tokens[head];
    *length = element.len;
    return true;
}
