/* The test guest's small runtime: counted port and MMIO accessors, the COM1 console and a line
 * formatter, memory and string helpers, a page allocator, TSC calibration and power-off. */
#include "guest.h"
#include <stdarg.h>

struct exit_counts exits;

/* ---- Port and MMIO accesses: each one leaves the guest, so each one is counted. ---- */

u8 inb(u16 port) {
    u8 value;
    exits.pio++;
    __asm__ __volatile__("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}
u16 inw(u16 port) {
    u16 value;
    exits.pio++;
    __asm__ __volatile__("inw %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}
u32 inl(u16 port) {
    u32 value;
    exits.pio++;
    __asm__ __volatile__("inl %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}
void outb(u16 port, u8 value) {
    exits.pio++;
    __asm__ __volatile__("outb %0, %1" ::"a"(value), "Nd"(port));
}
void outw(u16 port, u16 value) {
    exits.pio++;
    __asm__ __volatile__("outw %0, %1" ::"a"(value), "Nd"(port));
}
void outl(u16 port, u32 value) {
    exits.pio++;
    __asm__ __volatile__("outl %0, %1" ::"a"(value), "Nd"(port));
}

/* MMIO through volatile pointers of the access's exact width (the device decodes the width). */
u8 mmio_read8(u64 address) {
    exits.mmio++;
    return *(volatile u8 *)address;
}
u16 mmio_read16(u64 address) {
    exits.mmio++;
    return *(volatile u16 *)address;
}
u32 mmio_read32(u64 address) {
    exits.mmio++;
    return *(volatile u32 *)address;
}
void mmio_write8(u64 address, u8 value) {
    exits.mmio++;
    *(volatile u8 *)address = value;
}
void mmio_write16(u64 address, u16 value) {
    exits.mmio++;
    *(volatile u16 *)address = value;
}
void mmio_write32(u64 address, u32 value) {
    exits.mmio++;
    *(volatile u32 *)address = value;
}

/* ---- Memory and strings ---- */

void *memset(void *destination, int value, size_t length) {
    void *d = destination;
    __asm__ __volatile__("rep stosb" : "+D"(d), "+c"(length) : "a"(value) : "memory");
    return destination;
}
void *memcpy(void *destination, const void *source, size_t length) {
    void *d = destination;
    __asm__ __volatile__("rep movsb" : "+D"(d), "+S"(source), "+c"(length) : : "memory");
    return destination;
}
void *memmove(void *destination, const void *source, size_t length) {
    u8 *d = destination;
    const u8 *s = source;
    if (d <= s || d >= s + length) return memcpy(destination, source, length);
    while (length--) d[length] = s[length];
    return destination;
}
int memcmp(const void *a, const void *b, size_t length) {
    const u8 *x = a, *y = b;
    for (size_t i = 0; i < length; i++) {
        if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
    }
    return 0;
}
size_t strlen(const char *text) {
    size_t n = 0;
    while (text[n]) n++;
    return n;
}
bool starts_with(const char *text, const char *prefix) {
    while (*prefix) {
        if (*text++ != *prefix++) return false;
    }
    return true;
}

/* Decimal, or hexadecimal after 0x; the whole string must be the number and fit in 64 bits. */
bool parse_u64(const char *text, u64 *value) {
    u64 v = 0;
    u64 base = 10;
    if (text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
        base = 16;
        text += 2;
    }
    if (!*text) return false;
    for (; *text; text++) {
        u64 digit;
        char c = *text;
        if (c >= '0' && c <= '9') digit = (u64)(c - '0');
        else if (base == 16 && c >= 'a' && c <= 'f') digit = (u64)(c - 'a' + 10);
        else if (base == 16 && c >= 'A' && c <= 'F') digit = (u64)(c - 'A' + 10);
        else return false;
        if (v > (~0ull - digit) / base) return false;
        v = v * base + digit;
    }
    *value = v;
    return true;
}

/* Dotted quad into a host-order u32 (10.0.0.1 -> 0x0A000001). */
bool parse_ipv4(const char *text, u32 *address) {
    u32 result = 0;
    for (int part = 0; part < 4; part++) {
        u32 v = 0;
        int digits = 0;
        while (*text >= '0' && *text <= '9') {
            v = v * 10 + (u32)(*text++ - '0');
            if (++digits > 3 || v > 255) return false;
        }
        if (digits == 0) return false;
        result = result << 8 | v;
        if (part < 3 && *text++ != '.') return false;
    }
    if (*text) return false;
    *address = result;
    return true;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

bool parse_mac(const char *text, u8 mac[6]) {
    for (int i = 0; i < 6; i++) {
        int hi = hex_digit(text[0]), lo = hi < 0 ? -1 : hex_digit(text[1]);
        if (lo < 0) return false;
        mac[i] = (u8)(hi << 4 | lo);
        text += 2;
        if (i < 5 && *text++ != ':') return false;
    }
    return *text == 0;
}

/* ---- Pages from the end of the image to the end of RAM ---- */

static u64 heap_start, heap_next, heap_end;

void heap_init(u64 start, u64 end) {
    heap_start = heap_next = (start + 4095) & ~4095ull;
    heap_end = end;
}

/* Zeroed, page-aligned, never freed; running out ends the run (the checks size their memory). */
void *alloc_pages(u64 bytes) {
    u64 size = (bytes + 4095) & ~4095ull;
    if (size < bytes || heap_next > heap_end || size > heap_end - heap_next) {
        finish(false, "out of guest memory");
    }
    void *p = (void *)heap_next;
    heap_next += size;
    memset(p, 0, size);
    return p;
}

u64 heap_used(void) { return heap_next - heap_start; }

/* ---- COM1 ---- */

#define COM1 0x3F8
static bool serial_fifo;

/* Enables the 16550 FIFO when there is one: then one LSR poll covers 16 bytes, not one, and
 * every port access is an exit. */
void serial_init(void) {
    outb(COM1 + 2, 0x07);
    serial_fifo = (inb(COM1 + 2) & 0xC0) == 0xC0;
}

void serial_write(const char *text, size_t length) {
    while (length > 0) {
        /* THRE: the holding register (or the whole FIFO) is empty. Bounded, so that a console
         * that never says so slows the guest down but does not hang it. */
        for (u32 tries = 0; !(inb(COM1 + 5) & 0x20) && tries < 100000; tries++) cpu_relax();
        size_t burst = serial_fifo ? 16 : 1;
        if (burst > length) burst = length;
        for (size_t i = 0; i < burst; i++) outb(COM1, (u8)text[i]);
        text += burst;
        length -= burst;
    }
}

/* ---- A printf subset: %s %c %d %i %u %x %X %p %%, with l/ll, width, 0 and - flags ---- */

struct sink {
    char *out;
    size_t size, used;
};

static void put(struct sink *s, char c) {
    if (s->used + 1 < s->size) s->out[s->used] = c;
    s->used++;
}

static void put_number(struct sink *s, u64 value, unsigned base, bool upper, bool negative, int width, char pad,
                       bool left) {
    char digits[24];
    int n = 0;
    const char *set = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    do {
        digits[n++] = set[value % base];
        value /= base;
    } while (value);
    int length = n + (negative ? 1 : 0);
    if (negative && pad == '0') put(s, '-');
    if (!left) {
        for (int i = length; i < width; i++) put(s, pad);
    }
    if (negative && pad != '0') put(s, '-');
    while (n) put(s, digits[--n]);
    if (left) {
        for (int i = length; i < width; i++) put(s, ' ');
    }
}

static int vformat(char *out, size_t size, const char *f, va_list args) {
    struct sink s = {out, size, 0};
    for (; *f; f++) {
        if (*f != '%') {
            put(&s, *f);
            continue;
        }
        f++;
        bool left = false;
        char pad = ' ';
        int width = 0, longs = 0;
        if (*f == '-') {
            left = true;
            f++;
        }
        if (*f == '0') {
            pad = '0';
            f++;
        }
        while (*f >= '0' && *f <= '9') width = width * 10 + (*f++ - '0');
        while (*f == 'l') {
            longs++;
            f++;
        }
        switch (*f) {
        case 'd':
        case 'i': {
            i64 v = longs ? va_arg(args, i64) : va_arg(args, int);
            u64 magnitude = v < 0 ? (u64)0 - (u64)v : (u64)v;
            put_number(&s, magnitude, 10, false, v < 0, width, pad, left);
            break;
        }
        case 'u':
        case 'x':
        case 'X': {
            u64 v = longs ? va_arg(args, u64) : va_arg(args, unsigned);
            put_number(&s, v, *f == 'u' ? 10 : 16, *f == 'X', false, width, pad, left);
            break;
        }
        case 'p':
            put(&s, '0');
            put(&s, 'x');
            put_number(&s, (u64)va_arg(args, void *), 16, false, false, width, pad, left);
            break;
        case 's': {
            const char *text = va_arg(args, const char *);
            if (!text) text = "(null)";
            size_t length = strlen(text);
            if (!left) {
                for (size_t i = length; i < (size_t)width; i++) put(&s, ' ');
            }
            while (*text) put(&s, *text++);
            if (left) {
                for (size_t i = length; i < (size_t)width; i++) put(&s, ' ');
            }
            break;
        }
        case 'c':
            put(&s, (char)va_arg(args, int));
            break;
        case '%':
            put(&s, '%');
            break;
        default:
            put(&s, '?');
            if (!*f) f--;
            break;
        }
    }
    if (size) out[s.used < size ? s.used : size - 1] = 0;
    return (int)s.used;
}

int format(char *out, size_t size, const char *f, ...) {
    va_list args;
    va_start(args, f);
    int n = vformat(out, size, f, args);
    va_end(args);
    return n;
}

void say(const char *f, ...) {
    char line[512];
    memcpy(line, "bhtest: ", 8);
    va_list args;
    va_start(args, f);
    int n = vformat(line + 8, sizeof line - 9, f, args);
    va_end(args);
    size_t length = 8 + ((size_t)n < sizeof line - 10 ? (size_t)n : sizeof line - 10);
    line[length++] = '\n';
    serial_write(line, length);
}

/* ---- Time ---- */

u64 tsc_khz;

/* PIT channel 2 in mode 0 counts 10 ms (11932 ticks of 1.193182 MHz) with its gate on; OUT2
 * (port 0x61 bit 5) goes high at zero. Each poll of port 0x61 is an exit, so under Bulkhead's
 * KVM it is coarse (about 100 us); 10 ms keeps the error near 1%. */
bool tsc_calibrate(void) {
    const u32 latch = 11932;
    u8 saved = inb(0x61);
    outb(0x61, (u8)((saved & ~0x02) | 0x01)); /* gate 2 on, speaker off */
    outb(0x43, 0xB0);                          /* channel 2, lobyte/hibyte, mode 0, binary */
    outb(0x42, (u8)(latch & 0xFF));
    outb(0x42, (u8)(latch >> 8));
    u64 start = rdtsc();
    u64 polls = 0;
    while (!(inb(0x61) & 0x20)) {
        if (++polls > 5000000) break;
    }
    u64 end = rdtsc();
    outb(0x61, saved);
    if (polls == 0 || polls > 5000000) return false;
    u64 khz = (end - start) / 10;
    if (khz < 100000 || khz > 20000000) return false;
    tsc_khz = khz;
    return true;
}

u64 ms_to_cycles(u64 ms) { return ms * tsc_khz; }
u64 cycles_to_us(u64 cycles) { return tsc_khz ? cycles * 1000 / tsc_khz : 0; }

u64 random_next(u64 *state) {
    u64 x = *state ? *state : 0x9E3779B97F4A7C15ull;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* ---- The end ---- */

/* ACPI soft-off (SLP_EN with SLP_TYP 0 at the PM1a control register, 0x604 on Bulkhead and on
 * QEMU's q35), then the i8042 reset line, then a fault: ring 3 cannot hlt, and a fault with no
 * IDT is a triple fault, which both VMMs report as a shutdown. */
void power_off(void) {
    outw(0x604, 0x2000);
    u64 wait = tsc_khz ? 200 * tsc_khz : 400000000ull;
    u64 start = rdtsc();
    while (rdtsc() - start < wait) cpu_relax();
    outb(0x64, 0xFE);
    start = rdtsc();
    while (rdtsc() - start < wait) cpu_relax();
    for (;;) __asm__ __volatile__("ud2");
}

void finish(bool passed, const char *reason) {
    if (passed) say("PASS");
    else say("FAIL %s", reason ? reason : "unknown");
    power_off();
}
