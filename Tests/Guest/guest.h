/* Bulkhead test guest: shared declarations. See guest.c for what the guest does and its
 * command line. Everything here runs in ring 3 with IOPL 3, single-threaded, polling. */
#ifndef BHTEST_GUEST_H
#define BHTEST_GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;
typedef unsigned long size_t;
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)

#define barrier() __asm__ __volatile__("" ::: "memory")
/* x86 keeps stores in order and loads in order; a store followed by a load of another location
 * needs a full fence (publishing avail.idx, then reading avail_event). */
#define mb() __asm__ __volatile__("mfence" ::: "memory")

/* ---- lib.c: exits (port and MMIO accesses), counted because each one is a VM exit ---- */
struct exit_counts {
    u64 pio;        /* port accesses */
    u64 mmio;       /* MMIO accesses (doorbells included) */
    u64 doorbells;  /* virtqueue notifications */
};
extern struct exit_counts exits;

u8 inb(u16 port);
u16 inw(u16 port);
u32 inl(u16 port);
void outb(u16 port, u8 value);
void outw(u16 port, u16 value);
void outl(u16 port, u32 value);
u8 mmio_read8(u64 address);
u16 mmio_read16(u64 address);
u32 mmio_read32(u64 address);
void mmio_write8(u64 address, u8 value);
void mmio_write16(u64 address, u16 value);
void mmio_write32(u64 address, u32 value);

/* Serial console and output lines. `say` prints one line prefixed with "bhtest: ". */
void serial_init(void);
void serial_write(const char *text, size_t length);
void say(const char *format, ...) __attribute__((format(printf, 1, 2)));
int format(char *out, size_t size, const char *format, ...) __attribute__((format(printf, 3, 4)));
__attribute__((noreturn)) void finish(bool passed, const char *reason);
__attribute__((noreturn)) void power_off(void);

/* Memory and strings (the compiler may emit calls to the first four). */
void *memset(void *destination, int value, size_t length);
void *memcpy(void *destination, const void *source, size_t length);
void *memmove(void *destination, const void *source, size_t length);
int memcmp(const void *a, const void *b, size_t length);
size_t strlen(const char *text);
bool starts_with(const char *text, const char *prefix);
bool parse_u64(const char *text, u64 *value);
bool parse_ipv4(const char *text, u32 *address);
bool parse_mac(const char *text, u8 mac[6]);

/* Guest-physical memory from the end of the image up to the RAM size: zeroed pages, never freed. */
void heap_init(u64 start, u64 end);
void *alloc_pages(u64 bytes);
u64 heap_used(void);

/* Time: the TSC, calibrated against PIT channel 2 (or given by `tsc_mhz=`). */
static inline u64 rdtsc(void) {
    u32 lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}
static inline void cpu_relax(void) { __asm__ __volatile__("pause" ::: "memory"); }
extern u64 tsc_khz;
bool tsc_calibrate(void);
u64 ms_to_cycles(u64 ms);
u64 cycles_to_us(u64 cycles);

/* A small deterministic generator (xorshift64*), for patterns, offsets and garbage. */
u64 random_next(u64 *state);

/* ---- pci.c ---- */
#define PCI_MAX_FUNCTIONS 64
struct pci_function {
    u8 bus, device, function;
    u16 vendor, device_id;
    u32 class_code;        /* class << 16 | subclass << 8 | prog-if */
    u8 header_type;        /* without the multi-function bit */
    u64 bar[6];            /* assigned guest-physical address, 0 when none (I/O BARs: 0) */
    u64 bar_size[6];
};
extern struct pci_function pci_functions[PCI_MAX_FUNCTIONS];
extern int pci_function_count;

u32 pci_read32(const struct pci_function *f, u8 offset);
u16 pci_read16(const struct pci_function *f, u8 offset);
u8 pci_read8(const struct pci_function *f, u8 offset);
void pci_write32(const struct pci_function *f, u8 offset, u32 value);
void pci_write16(const struct pci_function *f, u8 offset, u16 value);
void pci_write8(const struct pci_function *f, u8 offset, u8 value);
/* Scans bus 0, assigns every memory BAR in the window and enables memory space and bus
 * mastering; prints one line per function when `print`. Returns false when a BAR did not fit. */
bool pci_scan_and_assign(bool print);
/* The offset of the first capability with `id` at or after `start` (0: from the list's head). */
u8 pci_find_capability(const struct pci_function *f, u8 id, u8 start);

/* ---- virtio.c ---- */
#define VIRTIO_VENDOR 0x1AF4
#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLK 2

#define VIRTIO_F_INDIRECT_DESC (1ull << 28)
#define VIRTIO_F_EVENT_IDX (1ull << 29)
#define VIRTIO_F_VERSION_1 (1ull << 32)
#define VIRTIO_F_ACCESS_PLATFORM (1ull << 33)

#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED 128

#define VIRTIO_NO_VECTOR 0xFFFF

/* Common configuration registers (virtio 1.x, 4.1.4.3). */
#define VCOMMON_DFSELECT 0x00
#define VCOMMON_DF 0x04
#define VCOMMON_GFSELECT 0x08
#define VCOMMON_GF 0x0C
#define VCOMMON_MSIX 0x10
#define VCOMMON_NUMQ 0x12
#define VCOMMON_STATUS 0x14
#define VCOMMON_CFGGENERATION 0x15
#define VCOMMON_Q_SELECT 0x16
#define VCOMMON_Q_SIZE 0x18
#define VCOMMON_Q_MSIX 0x1A
#define VCOMMON_Q_ENABLE 0x1C
#define VCOMMON_Q_NOFF 0x1E
#define VCOMMON_Q_DESCLO 0x20
#define VCOMMON_Q_DESCHI 0x24
#define VCOMMON_Q_AVAILLO 0x28
#define VCOMMON_Q_AVAILHI 0x2C
#define VCOMMON_Q_USEDLO 0x30
#define VCOMMON_Q_USEDHI 0x34

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4
#define VRING_AVAIL_F_NO_INTERRUPT 1
#define VRING_USED_F_NO_NOTIFY 1

struct vring_desc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
};
struct vring_avail {
    u16 flags;
    u16 idx;
    u16 ring[]; /* then used_event */
};
struct vring_used_elem {
    u32 id;
    u32 len;
};
struct vring_used {
    u16 flags;
    u16 idx;
    struct vring_used_elem ring[]; /* then avail_event */
};

/* One buffer of a chain: guest-physical address, length, device-writable or not. */
struct vbuf {
    u64 addr;
    u32 len;
    bool writable;
};

struct virtqueue {
    u16 index;
    u16 size;
    struct vring_desc *desc;
    struct vring_avail *avail;
    struct vring_used *used;
    u64 notify_address;
    bool event_idx;
    u16 free_head;
    u16 free_count;
    u16 next_avail;    /* our shadow of avail.idx */
    u16 kicked_avail;  /* avail.idx at the last kick decision */
    u16 last_used;     /* next used entry to reap */
    u64 *tokens;       /* per head descriptor */
    u64 doorbells;
    u64 suppressed;    /* kicks the device told us to skip */
};

struct virtio_device {
    struct pci_function *pci;
    u16 type;                /* VIRTIO_ID_* */
    u64 common, isr, device_config, notify_base;
    u32 notify_multiplier;
    u32 notify_length;
    u8 msix_capability;      /* 0: none */
    u16 msix_table_size;
    u64 device_features;
    u64 driver_features;
    u16 num_queues;
    bool msix_enabled;
    struct virtqueue queues[4];
};

/* Finds the modern capabilities of `pci` (false when a required one is missing). */
bool virtio_probe(struct virtio_device *dev, struct pci_function *pci, u16 type);
/* Resets the device, waiting (bounded) for the status to read 0. */
bool virtio_reset(struct virtio_device *dev);
/* Reset, ACKNOWLEDGE, DRIVER, feature negotiation (VERSION_1 required; `wanted` masks what the
 * device offers), FEATURES_OK checked. Reports the reason through `why` on failure. */
bool virtio_negotiate(struct virtio_device *dev, u64 wanted, const char **why);
/* Sets up queue `index` with at most `max_size` entries in freshly allocated memory. */
bool virtio_setup_queue(struct virtio_device *dev, u16 index, u16 max_size, const char **why);
void virtio_driver_ok(struct virtio_device *dev);
u8 virtio_status(struct virtio_device *dev);
/* MSI-X: with `msix=1` the table gets real (never delivered: IF=0) vectors, else NO_VECTOR. */
void virtio_configure_msix(struct virtio_device *dev, bool enable);
u16 virtio_queue_vector(struct virtio_device *dev, u16 index);

/* Adds a chain; returns false when the ring has too few free descriptors. No doorbell. */
bool vq_add(struct virtqueue *vq, const struct vbuf *buffers, int count, u64 token);
/* Publishes added chains and rings the doorbell once if the device asks for it. */
void vq_kick(struct virtqueue *vq);
/* Reaps one used entry: its token and written length; false when none is ready. */
bool vq_get(struct virtqueue *vq, u64 *token, u32 *length);
u16 vq_free(const struct virtqueue *vq);
u8 virtio_config_read8(struct virtio_device *dev, u32 offset);
u32 virtio_config_read32(struct virtio_device *dev, u32 offset);
u64 virtio_config_read64(struct virtio_device *dev, u32 offset);
/* Probes every virtio function on the scanned bus; returns how many have the modern layout. */
int virtio_discover(bool print);
struct virtio_device *virtio_find(u16 type, int nth);

/* ---- the tests ---- */
struct options {
    bool blk, net, verbose, msix, discard_zero, any_mode;
    u32 ip, ping, isolated[8];
    int isolated_count;
    u64 pings, timeout_ms, seed, storm;
    bool have_mac, have_ping;
    u8 mac[6];
    /* benchmarks */
    enum { BENCH_NONE, BENCH_RANDREAD, BENCH_UDP } bench;
    u64 qd, count, seconds, size;
    u32 udp_ip;
    u16 udp_port;
    bool have_udp;
    /* hostile modes */
    bool hostile_pci, hostile_pci_all, hostile_virtio, hostile_ring;
};
extern struct options options;
/* RAM the guest may use: [0, min(RAM size, 3 GiB)). */
extern u64 ram_limit;
/* The C entry, called by boot.S in ring 3. */
__attribute__((noreturn)) void guest_main(const char *cmdline, u64 ram_size, u64 multiboot);

bool blk_test(struct virtio_device *dev, const char **why);
bool blk_bench(struct virtio_device *dev, const char **why);
bool net_test(struct virtio_device *dev, const char **why);
bool net_bench(struct virtio_device *dev, const char **why);
void hostile_pci(bool all);
void hostile_virtio(struct virtio_device *dev);
void hostile_ring(struct virtio_device *dev);

#endif
