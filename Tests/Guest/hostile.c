/* Hostile modes, for the VMM's attack tests: the guest misuses PCI configuration space, the
 * virtio-pci registers and the virtqueues, then says it survived and (if it still can) runs the
 * normal checks. Nothing here checks an outcome: the VMM's side decides what should have
 * happened (an access ignored, a device marked broken, never a crash or a stall). */
#include "guest.h"

static u64 rng;

static u64 next(void) { return random_next(&rng); }

static void seed(void) {
    if (!rng) rng = options.seed ? options.seed : rdtsc() | 1;
}

/* Garbage into one function's configuration space from `first` to `last` (dword offsets):
 * every dword random, then all ones, then random-width writes at random offsets in range, then
 * every dword read back. */
static u64 garble_function(const struct pci_function *f, u8 first, u8 last, bool io_decode_off) {
    u64 writes = 0;
    for (u32 offset = first; offset <= last; offset += 4) {
        u32 value = (u32)next();
        if (offset == 4 && io_decode_off) value &= ~1u;
        pci_write32(f, (u8)offset, value);
        writes++;
    }
    for (u32 offset = first; offset <= last; offset += 4) {
        u32 value = 0xFFFFFFFF;
        if (offset == 4 && io_decode_off) value &= ~1u;
        pci_write32(f, (u8)offset, value);
        writes++;
    }
    for (int i = 0; i < 128; i++) {
        u64 r = next();
        u8 offset = (u8)(first + (r % (u64)(last + 4 - first)));
        if (offset >= 4 && offset < 6 && io_decode_off) continue;
        switch ((r >> 16) % 3) {
        case 0: pci_write8(f, offset, (u8)(r >> 24)); break;
        case 1: pci_write16(f, (u8)(offset & ~1), (u16)(r >> 24)); break;
        default: pci_write32(f, (u8)(offset & ~3), (u32)(r >> 24)); break;
        }
        writes++;
    }
    for (u32 offset = 0; offset < 256; offset += 4) (void)pci_read32(f, (u8)offset);
    return writes;
}

/* Every function: a virtio function (and with `all`, every function) over its whole 256 bytes;
 * other functions over the standard header with I/O decoding kept off, so that QEMU's chipset
 * (whose registers past 0x40 remap memory, and whose I/O BARs could land on 0xCF8) keeps the
 * guest alive. Bulkhead's host bridge is a model of the VMM: attack it with hostile=pci-all. */
void hostile_pci(bool all) {
    seed();
    for (int i = 0; i < pci_function_count; i++) {
        struct pci_function *f = &pci_functions[i];
        bool full = all || f->vendor == VIRTIO_VENDOR;
        u64 writes = garble_function(f, full ? 0 : 4, full ? 0xFC : 0x3C, !full);
        say("hostile pci %02x:%02x.%x writes=%llu %s", f->bus, f->device, f->function, writes, full ? "full" : "header");
    }
    /* Functions that do not exist, and configuration addresses with reserved bits. */
    struct pci_function ghost = {.bus = 0, .device = 31, .function = 7};
    pci_write32(&ghost, 0x10, 0xDEADBEEF);
    ghost.bus = 255;
    pci_write32(&ghost, 0x04, 0xFFFFFFFF);
    outl(0xCF8, 0x7FFFFFFF);
    outl(0xCFC, 0xFFFFFFFF);
    outl(0xCF8, 0x80000003);
    (void)inl(0xCFC);
    (void)inw(0xCFE);
    (void)inb(0xCFF);
    outl(0xCF8, 0);
}

/* Waits a little for whatever the device does with what it was given. */
static void settle(u64 ms) {
    u64 start = rdtsc(), limit = tsc_khz ? ms_to_cycles(ms) : ms * 4000000ull;
    while (rdtsc() - start < limit) cpu_relax();
}

static void status(struct virtio_device *dev, u8 value) { mmio_write8(dev->common + VCOMMON_STATUS, value); }

static void notify(struct virtio_device *dev, u16 queue) {
    mmio_write16(dev->notify_base, queue);
    exits.doorbells++;
}

/* Queue 0 of size `size` at the given addresses, enabled; no checks. */
static void raw_queue(struct virtio_device *dev, u16 size, u64 desc, u64 avail, u64 used) {
    u64 c = dev->common;
    mmio_write16(c + VCOMMON_Q_SELECT, 0);
    mmio_write16(c + VCOMMON_Q_SIZE, size);
    mmio_write16(c + VCOMMON_Q_MSIX, VIRTIO_NO_VECTOR);
    mmio_write32(c + VCOMMON_Q_DESCLO, (u32)desc);
    mmio_write32(c + VCOMMON_Q_DESCHI, (u32)(desc >> 32));
    mmio_write32(c + VCOMMON_Q_AVAILLO, (u32)avail);
    mmio_write32(c + VCOMMON_Q_AVAILHI, (u32)(avail >> 32));
    mmio_write32(c + VCOMMON_Q_USEDLO, (u32)used);
    mmio_write32(c + VCOMMON_Q_USEDHI, (u32)(used >> 32));
    mmio_write16(c + VCOMMON_Q_ENABLE, 1);
}

/* ACKNOWLEDGE, DRIVER, the device's own features accepted, FEATURES_OK. */
static void accept_features(struct virtio_device *dev) {
    const char *why;
    virtio_negotiate(dev, ~0ull & ~VIRTIO_F_ACCESS_PLATFORM, &why);
}

void hostile_virtio(struct virtio_device *dev) {
    seed();
    struct pci_function *p = dev->pci;
    u64 c = dev->common;
    u64 steps = 0;
    u8 *pages = alloc_pages(3 * 4096);
    u64 desc = (u64)pages, avail = desc + 4096, used = desc + 8192;

    /* 1. Garbage over the common configuration, every width, with queue_select roaming. */
    virtio_reset(dev);
    for (int round = 0; round < 4; round++) {
        for (u32 offset = 0; offset < 0x40; offset++) {
            u64 r = next();
            switch ((r >> 8) % 3) {
            case 0: mmio_write8(c + offset, (u8)(r >> 32)); break;
            case 1: if (!(offset & 1)) mmio_write16(c + offset, (u16)(r >> 32)); break;
            default: if (!(offset & 3)) mmio_write32(c + offset, (u32)(r >> 32)); break;
            }
            (void)mmio_read8(c + offset);
        }
    }
    steps++;
    /* Unaligned and 64-bit-sized pieces of the 64-bit queue address registers. */
    mmio_write16(c + VCOMMON_Q_DESCLO + 1, 0xFFFF);
    mmio_write32(c + VCOMMON_Q_DESCLO + 2, 0xFFFFFFFF);
    *(volatile u64 *)(c + VCOMMON_Q_DESCLO) = 0xFFFFFFFFFFFFFFFFull;
    exits.mmio++;
    (void)mmio_read32(c + 0x3C);
    (void)mmio_read32(c + 0x1000 - 4);
    steps++;

    /* 2. DRIVER_OK without FEATURES_OK, then notifications. */
    virtio_reset(dev);
    status(dev, VIRTIO_STATUS_ACKNOWLEDGE);
    status(dev, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    raw_queue(dev, 16, desc, avail, used);
    status(dev, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_DRIVER_OK);
    notify(dev, 0);
    notify(dev, 1);
    settle(20);
    steps++;

    /* 3. Queue sizes that are no power of two, zero, or larger than offered. */
    static const u16 sizes[] = {3, 1000, 0, 0xFFFF, 0x8000};
    for (u32 i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        accept_features(dev);
        raw_queue(dev, sizes[i], desc, avail, used);
        status(dev, virtio_status(dev) | VIRTIO_STATUS_DRIVER_OK);
        notify(dev, 0);
        settle(10);
        steps++;
    }

    /* 4. Rings outside RAM, in the MMIO window, unaligned, and overlapping each other. */
    u64 outside[][3] = {
        {ram_limit + 0x1000, ram_limit + 0x2000, ram_limit + 0x3000},
        {0xFFFFFFFFFFFFF000ull, 0xFFFFFFFFFFFFF800ull, 0xFFFFFFFFFFFFFC00ull},
        {0xC0000000ull, 0xC0001000ull, 0xC0002000ull},
        {desc | 1, avail | 1, used | 2},
        {desc, desc, desc},
        {desc, avail, avail},
        {ram_limit - 64, avail, used},
    };
    for (u32 i = 0; i < sizeof outside / sizeof outside[0]; i++) {
        accept_features(dev);
        memset(pages, 0, 3 * 4096);
        /* An available ring that claims work, so that the device looks at the ring. */
        ((struct vring_avail *)avail)->idx = 1;
        raw_queue(dev, 16, outside[i][0], outside[i][1], outside[i][2]);
        status(dev, virtio_status(dev) | VIRTIO_STATUS_DRIVER_OK);
        notify(dev, 0);
        settle(10);
        steps++;
    }

    /* 5. Notifications for queues that were never configured, at odd widths and offsets. */
    accept_features(dev);
    status(dev, virtio_status(dev) | VIRTIO_STATUS_DRIVER_OK);
    for (u32 q = 0; q < (u32)dev->num_queues + 8; q++) notify(dev, (u16)q);
    notify(dev, 0xFFFF);
    mmio_write32(dev->notify_base, 0xFFFFFFFF);
    mmio_write8(dev->notify_base + 1, 0xFF);
    if (dev->notify_length > 2) mmio_write16(dev->notify_base + dev->notify_length - 2, 0);
    steps++;

    /* 6. A doorbell storm on a configured, empty queue. */
    accept_features(dev);
    memset(pages, 0, 3 * 4096);
    raw_queue(dev, 16, desc, avail, used);
    status(dev, virtio_status(dev) | VIRTIO_STATUS_DRIVER_OK);
    u64 storm = options.storm ? options.storm : 1000;
    u64 start = rdtsc();
    for (u64 i = 0; i < storm; i++) notify(dev, 0);
    u64 storm_us = cycles_to_us(rdtsc() - start);
    steps++;

    /* 7. ISR reads (they clear it) and garbage into the device configuration. */
    for (int i = 0; i < 4; i++) (void)mmio_read8(dev->isr);
    for (u32 offset = 0; offset < 64; offset += 4) mmio_write32(dev->device_config + offset, (u32)next());
    steps++;

    virtio_reset(dev);
    say("hostile virtio %02x:%02x.%x steps=%llu storm=%llu storm_us=%llu status=0x%x", p->bus, p->device, p->function,
        steps, storm, storm_us, virtio_status(dev));
}

/* Garbage chains in a properly set-up queue: the device (or its vhost-user backend) parses them. */
void hostile_ring(struct virtio_device *dev) {
    seed();
    struct pci_function *p = dev->pci;
    const char *why = NULL;
    u64 chains = 0;
    /* Every queue the guest's drivers use: a block device's request queue, a network device's
     * receive and transmit queues (the backend parses transmit chains as soon as they come). */
    u16 queues = dev->type == VIRTIO_ID_NET ? 2 : 1;
    for (int step = 0; step < 9 * queues; step++) {
        int kind = step % 9;
        u16 target = (u16)(step / 9);
        bool ready = virtio_negotiate(dev, VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX | (1ull << 9) | (1ull << 13), &why);
        for (u16 q = 0; ready && q <= target; q++) ready = virtio_setup_queue(dev, q, 16, &why);
        if (!ready) {
            say("hostile ring %02x:%02x.%x setup failed: %s", p->bus, p->device, p->function, why);
            return;
        }
        virtio_driver_ok(dev);
        struct virtqueue *vq = &dev->queues[target];
        struct vring_desc *d = vq->desc;
        u8 *page = alloc_pages(4096);
        u16 head = 0;
        switch (kind) {
        case 0: /* a buffer outside RAM */
            d[0] = (struct vring_desc){ram_limit + 0x10000, 4096, VRING_DESC_F_NEXT, 1};
            d[1] = (struct vring_desc){(u64)page, 1, VRING_DESC_F_WRITE, 0};
            break;
        case 1: /* a 4 GiB length */
            d[0] = (struct vring_desc){(u64)page, 0xFFFFFFFF, VRING_DESC_F_NEXT, 1};
            d[1] = (struct vring_desc){(u64)page, 0xFFFFFFFF, VRING_DESC_F_WRITE, 0};
            break;
        case 2: /* a chain that loops */
            d[0] = (struct vring_desc){(u64)page, 16, VRING_DESC_F_NEXT, 1};
            d[1] = (struct vring_desc){(u64)page + 16, 16, VRING_DESC_F_NEXT, 0};
            break;
        case 3: /* next beyond the table */
            d[0] = (struct vring_desc){(u64)page, 16, VRING_DESC_F_NEXT, 0xFFFF};
            break;
        case 4: /* an indirect table outside RAM, of a length that is no multiple of 16 */
            d[0] = (struct vring_desc){ram_limit + 0x20000, 17, VRING_DESC_F_INDIRECT, 0};
            break;
        case 5: { /* an indirect table that nests another and loops */
            struct vring_desc *table = (struct vring_desc *)page;
            table[0] = (struct vring_desc){(u64)page, 64, VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT, 1};
            table[1] = (struct vring_desc){(u64)page + 512, 16, VRING_DESC_F_NEXT, 0};
            d[0] = (struct vring_desc){(u64)page, 64, VRING_DESC_F_INDIRECT, 0};
            break;
        }
        case 6: /* a head index beyond the table */
            head = 0xBEEF;
            break;
        case 7: /* an available index far ahead of the ring */
            d[0] = (struct vring_desc){(u64)page, 16, 0, 0};
            vq->avail->ring[0] = 0;
            *(volatile u16 *)&vq->avail->idx = 1000;
            mmio_write16(vq->notify_address, target);
            exits.doorbells++;
            chains++;
            settle(20);
            virtio_reset(dev);
            continue;
        default: /* random descriptors everywhere */
            for (u16 i = 0; i < vq->size; i++) {
                u64 r = next();
                d[i] = (struct vring_desc){next(), (u32)r, (u16)(r >> 32), (u16)(r >> 48)};
            }
            break;
        }
        if (kind == 8) {
            for (u16 i = 0; i < vq->size; i++) vq->avail->ring[i] = (u16)next();
            *(volatile u16 *)&vq->avail->idx = vq->size;
        } else {
            vq->avail->ring[0] = head;
            *(volatile u16 *)&vq->avail->idx = 1;
        }
        mb();
        mmio_write16(vq->notify_address, target);
        exits.doorbells++;
        chains++;
        settle(20);
        virtio_reset(dev);
    }
    say("hostile ring %02x:%02x.%x queues=%u chains=%llu status=0x%x", p->bus, p->device, p->function, queues, chains,
        virtio_status(dev));
}
