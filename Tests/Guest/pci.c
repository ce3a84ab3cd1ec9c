/* PCI through configuration mechanism #1 (0xCF8 address, 0xCFC data): bus 0 is scanned and every
 * memory BAR is (re)assigned in the window [0xC000_0000, 0xFEC0_0000), whatever the firmware or
 * the VMM put there, so the guest works the same after SeaBIOS, after Bulkhead's pre-assignment
 * and after its own hostile writes. Each configuration access costs two exits. */
#include "guest.h"

#define WINDOW_START 0xC0000000ull
#define WINDOW_END 0xFEC00000ull

#define PCI_COMMAND_IO 0x1
#define PCI_COMMAND_MEMORY 0x2
#define PCI_COMMAND_MASTER 0x4

struct pci_function pci_functions[PCI_MAX_FUNCTIONS];
int pci_function_count;

static u32 config_address(u8 bus, u8 device, u8 function, u8 offset) {
    return 0x80000000u | (u32)bus << 16 | (u32)device << 11 | (u32)function << 8 | (offset & 0xFC);
}

static u32 read32_at(u8 bus, u8 device, u8 function, u8 offset) {
    outl(0xCF8, config_address(bus, device, function, offset));
    return inl(0xCFC);
}

u32 pci_read32(const struct pci_function *f, u8 offset) { return read32_at(f->bus, f->device, f->function, offset); }

u16 pci_read16(const struct pci_function *f, u8 offset) {
    outl(0xCF8, config_address(f->bus, f->device, f->function, offset));
    return inw((u16)(0xCFC + (offset & 2)));
}

u8 pci_read8(const struct pci_function *f, u8 offset) {
    outl(0xCF8, config_address(f->bus, f->device, f->function, offset));
    return inb((u16)(0xCFC + (offset & 3)));
}

void pci_write32(const struct pci_function *f, u8 offset, u32 value) {
    outl(0xCF8, config_address(f->bus, f->device, f->function, offset));
    outl(0xCFC, value);
}

void pci_write16(const struct pci_function *f, u8 offset, u16 value) {
    outl(0xCF8, config_address(f->bus, f->device, f->function, offset));
    outw((u16)(0xCFC + (offset & 2)), value);
}

void pci_write8(const struct pci_function *f, u8 offset, u8 value) {
    outl(0xCF8, config_address(f->bus, f->device, f->function, offset));
    outb((u16)(0xCFC + (offset & 3)), value);
}

u8 pci_find_capability(const struct pci_function *f, u8 id, u8 start) {
    if (!(pci_read16(f, 0x06) & 0x10)) return 0;
    u8 pointer = start ? (u8)(pci_read8(f, (u8)(start + 1)) & 0xFC) : (u8)(pci_read8(f, 0x34) & 0xFC);
    /* A list longer than the space it lives in loops: stop after 48 entries. */
    for (int hops = 0; pointer >= 0x40 && hops < 48; hops++) {
        u16 header = pci_read16(f, pointer);
        if ((header & 0xFF) == id) return pointer;
        pointer = (u8)((header >> 8) & 0xFC);
    }
    return 0;
}

static u64 window_next;

/* Sizes and places the memory BARs of a type-0 function, decoding off meanwhile; I/O BARs are
 * left as they are (the guest uses none). */
static bool assign_bars(struct pci_function *f) {
    u16 command = pci_read16(f, 0x04);
    pci_write16(f, 0x04, (u16)(command & ~(PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)));
    bool fits = true, any = false;
    for (int i = 0; i < 6; i++) {
        u8 offset = (u8)(0x10 + 4 * i);
        u32 original = pci_read32(f, offset);
        if (original & 1) continue;
        bool wide = ((original >> 1) & 3) == 2 && i < 5;
        pci_write32(f, offset, 0xFFFFFFFF);
        u32 low = pci_read32(f, offset) & ~0xFu;
        u32 high = 0xFFFFFFFF;
        if (wide) {
            pci_write32(f, (u8)(offset + 4), 0xFFFFFFFF);
            high = pci_read32(f, (u8)(offset + 4));
        }
        if (low == 0 && (!wide || high == 0)) {
            /* Not implemented. */
            pci_write32(f, offset, original);
            if (wide) i++;
            continue;
        }
        u64 size = ~((u64)high << 32 | low) + 1;
        u64 align = size < 4096 ? 4096 : size;
        u64 base = (window_next + align - 1) & ~(align - 1);
        if (size == 0 || base < window_next || base > WINDOW_END || size > WINDOW_END - base) {
            say("pci %02x:%02x.%x bar%d of 0x%llx bytes does not fit the window", f->bus, f->device, f->function, i,
                size);
            pci_write32(f, offset, 0);
            if (wide) pci_write32(f, (u8)(offset + 4), 0);
            fits = false;
            if (wide) i++;
            continue;
        }
        pci_write32(f, offset, (u32)base);
        if (wide) pci_write32(f, (u8)(offset + 4), (u32)(base >> 32));
        f->bar[i] = base;
        f->bar_size[i] = size;
        window_next = base + size;
        any = true;
        if (wide) i++;
    }
    u16 enable = any ? (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER) : 0;
    pci_write16(f, 0x04, (u16)((command & ~(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)) | enable |
                               (command & PCI_COMMAND_MASTER)));
    return fits;
}

static void describe(const struct pci_function *f) {
    char text[400];
    int n = format(text, sizeof text, "pci %02x:%02x.%x %04x:%04x class=%06x", f->bus, f->device, f->function,
                   f->vendor, f->device_id, f->class_code);
    for (int i = 0; i < 6 && n < (int)sizeof text; i++) {
        if (f->bar[i]) {
            n += format(text + n, sizeof text - (size_t)n, " bar%d=0x%llx/0x%llx", i, f->bar[i], f->bar_size[i]);
        }
    }
    if (f->header_type == 1) format(text + n, sizeof text - (size_t)n, " bridge (not followed)");
    say("%s", text);
}

/* Bus 0 only: Bulkhead puts every device there, and so do QEMU's -device options without bus=. */
bool pci_scan_and_assign(bool print) {
    pci_function_count = 0;
    window_next = WINDOW_START;
    bool fits = true;
    for (u8 device = 0; device < 32; device++) {
        u32 id = read32_at(0, device, 0, 0);
        if ((id & 0xFFFF) == 0xFFFF) continue;
        u8 header = (u8)(read32_at(0, device, 0, 0x0C) >> 16);
        u8 functions = (header & 0x80) ? 8 : 1;
        for (u8 function = 0; function < functions; function++) {
            if (function > 0) {
                id = read32_at(0, device, function, 0);
                if ((id & 0xFFFF) == 0xFFFF) continue;
            }
            if (pci_function_count >= PCI_MAX_FUNCTIONS) return fits;
            struct pci_function *f = &pci_functions[pci_function_count++];
            memset(f, 0, sizeof *f);
            f->bus = 0;
            f->device = device;
            f->function = function;
            f->vendor = (u16)id;
            f->device_id = (u16)(id >> 16);
            f->class_code = read32_at(0, device, function, 0x08) >> 8;
            f->header_type = (u8)((read32_at(0, device, function, 0x0C) >> 16) & 0x7F);
            if (f->header_type == 0 && !assign_bars(f)) fits = false;
            if (print) describe(f);
        }
    }
    return fits;
}
