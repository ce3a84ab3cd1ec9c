/* bhtest: Bulkhead's freestanding x86-64 test guest.
 *
 * Boot: a flat image loaded at 1 MiB and entered at its first byte in 64-bit ring 3 with IOPL 3
 * (RDI = command line, RSI = RAM size, RSP = 0x80000), as Bulkhead's VMM does; or through
 * multiboot (QEMU's -kernel), whose 32-bit entry in boot.S builds that same state. Everything
 * after boot.S runs in ring 3 and polls: no interrupts, no ring-0 code. Build with
 * `Tests/Guest/build.sh OUTDIR` (writes OUTDIR/bhtest.bin).
 *
 * Command line: space-separated tokens. An unknown or malformed token ends the run with
 * `bhtest: FAIL bad token <token>`.
 *   blk                 virtio-blk checks on the first virtio-blk device: patterns written (two
 *                       segments each) to 16 8-KiB blocks spread from the first to the last
 *                       sector, FLUSH, read back and compared; the blocks halfway between them
 *                       read as zeroes; DISCARD and WRITE_ZEROES when offered; a read past the
 *                       end fails
 *   net                 virtio-net checks on the first virtio-net device: ARP and ICMP echo with
 *                       ping=, silence from every isolated=
 *   (neither blk, net, bench= nor hostile= given: blk when a virtio-blk device is present, net
 *    when a virtio-net device is present and ping= is given)
 *   ip=A.B.C.D          the guest's address (default 10.0.0.3)
 *   ping=A.B.C.D        the peer to resolve with ARP and ping
 *   pings=N             echo requests, sent as one batch (default 4, at most 64)
 *   isolated=A.B.C.D    an address that must not answer ARP within timeout_ms (twice); repeatable
 *                       (up to 8), or comma-separated
 *   timeout_ms=N        how long to wait for each ARP reply and for all echo replies (default 1000)
 *   mac=xx:xx:xx:xx:xx:xx  the guest's MAC (default: the device's, else 52:54:00:b4:00:01)
 *   discard=zero        discarded sectors must read back as zeroes (else FAIL)
 *   msix=1              enable MSI-X with real vectors (they stay pending: IF = 0); default:
 *                       MSI-X off and every vector NO_VECTOR
 *   tsc_mhz=N           the TSC frequency; default: calibrated against PIT channel 2 (10 ms)
 *   seed=N              pattern and garbage seed (default: the TSC)
 *   bench=randread      4 KiB random reads over the whole virtio-blk device at depth qd=
 *   bench=udp           60-byte UDP frames (64 on the wire) to udp=A.B.C.D:PORT
 *     qd=N              requests in flight (default 32)
 *     count=N           requests or frames (default 10000 reads, 100000 frames)
 *     seconds=N         run for N seconds instead (both given: whichever ends first)
 *   hostile=MODE[,MODE] then a normal run; MODE is
 *     pci               garbage over the configuration space of every virtio function (all 256
 *                       bytes) and the standard header of every other function (I/O decoding
 *                       kept off), non-existent functions and reserved address bits
 *     pci-all           the same over all 256 bytes of every function (Bulkhead's host bridge;
 *                       under QEMU it may remap the chipset and kill the guest)
 *     virtio            on every virtio device: garbage over the common configuration, DRIVER_OK
 *                       without FEATURES_OK, queue sizes 3, 1000, 0, 0xFFFF, 0x8000, rings
 *                       outside RAM / in the MMIO window / unaligned / overlapping, notifications
 *                       of unconfigured queues, a doorbell storm of storm= (default 1000),
 *                       garbage into the device configuration
 *     ring              on every queue the drivers use (blk: 0; net: 0 and 1) of every virtio
 *                       device: chains with buffers outside RAM, 4 GiB lengths,
 *                       loops, next beyond the table, bad and nested indirect tables, a head
 *                       beyond the table, avail.idx far ahead, random descriptors
 *   storm=N             doorbells in hostile=virtio's storm
 *   verbose             accepted for compatibility; the guest always prints everything
 *
 * Output, on COM1, one line each, every line starting with "bhtest: " (formats are matched by
 * the tests; N decimal, X hexadecimal):
 *   bhtest: start                                  (the very first bytes)
 *   bhtest: cmdline "<command line>"
 *   bhtest: ram=N tsc_mhz=N tsc=pit|given|assumed image_end=0xX
 *   bhtest: pci BB:DD.F VVVV:DDDD class=CCCCCC [barN=0xADDR/0xSIZE]...
 *   bhtest: virtio BB:DD.F type=N common=0xX notify=0xX*N isr=0xX device=0xX msix=N
 *   bhtest: blk BB:DD.F capacity=N blk_size=N seg_max=N size_max=N features=0xX queue_size=N event_idx=0|1 msix=0|1
 *   bhtest: blk write ok requests=16 bytes=131072 segments=N first=N last=N
 *   bhtest: blk flush ok | bhtest: blk flush not-offered
 *   bhtest: blk readback ok requests=16
 *   bhtest: blk zeroes ok requests=15
 *   bhtest: blk discard ok zeroes|data-kept sector=N sectors=N | bhtest: blk discard not-offered
 *   bhtest: blk write-zeroes ok sector=N sectors=N | bhtest: blk write-zeroes not-offered
 *   bhtest: blk beyond-end ok status=IOERR|UNSUPP|garbage
 *   bhtest: blk doorbells=N requests=N suppressed=N
 *   bhtest: net BB:DD.F mac=M mac_source=device|cmdline|default ip=A features=0xX queue_size=N/N event_idx=0|1 msix=0|1
 *   bhtest: net arp A is-at M us=N
 *   bhtest: net ping A ok replies=N/N rtt_us_min=N rtt_us_max=N
 *   bhtest: net isolated A ok no-reply us=N
 *   bhtest: net doorbells=N tx=N rx=N rx_foreign=N tx_dropped=N suppressed=N answered_arp=N answered_echo=N
 *   bhtest: bench randread qd=N requests=N errors=N cycles=N seconds=N.NNN iops=N doorbells=N doorbells_per_request=N.NNN exits=N
 *   bhtest: bench udp frames=N bytes=60 cycles=N seconds=N.NNN pps=N doorbells=N doorbells_per_frame=N.NNN exits=N
 *   bhtest: hostile pci BB:DD.F writes=N full|header
 *   bhtest: hostile virtio BB:DD.F steps=N storm=N storm_us=N status=0xX
 *   bhtest: hostile ring BB:DD.F queues=N chains=N status=0xX
 *   bhtest: survived pci|pci-all|virtio|ring
 *   bhtest: exits pio=N mmio=N doorbells=N heap=N us=N
 *   bhtest: PASS | bhtest: FAIL <reason>                (the last line)
 * Before a FAIL, a line may say what went wrong: "blk <what> request N: status N (NAME), expected
 * OK", "blk readback sector N differs from what was written", "blk never-written sector N is not
 * zero", "net arp A no-reply us=N", "net ping A replies=N/N", "net isolated A answered-by M",
 * "pci BB:DD.F barN of 0xX bytes does not fit the window", "virtio BB:DD.F type=N without the
 * modern capabilities: skipped". Device numbers (BB:DD.F) are as scanned: bus 0 only; ram= is
 * the RAM size the loader passed (RSI).
 * After the last line the guest powers off: a 16-bit write of 0x2000 to port 0x604 (ACPI PM1a
 * control, SLP_EN with SLP_TYP 0), then (200 ms later) the i8042 reset (0xFE to port 0x64), then
 * a triple fault (ud2 with no IDT).
 */
#include "guest.h"

struct options options;
u64 ram_limit;
extern char _end[];

static char command_line[4096];

static bool take_ip_list(const char *text, u32 *list, int *count, int max) {
    char part[16];
    while (*text) {
        size_t n = 0;
        while (text[n] && text[n] != ',') n++;
        if (n == 0 || n >= sizeof part || *count >= max) return false;
        memcpy(part, text, n);
        part[n] = 0;
        if (!parse_ipv4(part, &list[(*count)++])) return false;
        text += n;
        if (*text == ',') text++;
    }
    return true;
}

static bool take_hostile(const char *text) {
    char part[16];
    while (*text) {
        size_t n = 0;
        while (text[n] && text[n] != ',') n++;
        if (n == 0 || n >= sizeof part) return false;
        memcpy(part, text, n);
        part[n] = 0;
        if (!memcmp(part, "pci", 4)) options.hostile_pci = true;
        else if (!memcmp(part, "pci-all", 8)) options.hostile_pci_all = true;
        else if (!memcmp(part, "virtio", 7)) options.hostile_virtio = true;
        else if (!memcmp(part, "ring", 5)) options.hostile_ring = true;
        else return false;
        text += n;
        if (*text == ',') text++;
    }
    return true;
}

static bool take_udp(const char *text) {
    char address[16];
    size_t n = 0;
    while (text[n] && text[n] != ':') n++;
    if (text[n] != ':' || n >= sizeof address) return false;
    memcpy(address, text, n);
    address[n] = 0;
    u64 port;
    if (!parse_ipv4(address, &options.udp_ip) || !parse_u64(text + n + 1, &port) || port == 0 || port > 65535) {
        return false;
    }
    options.udp_port = (u16)port;
    options.have_udp = true;
    return true;
}

/* One token; false when it is unknown or its value does not parse. */
static bool take_token(const char *token, u64 *tsc_mhz) {
    const char *value;
#define KEY(name) (starts_with(token, name "=") && (value = token + sizeof(name), true))
    if (!memcmp(token, "blk", 4)) options.blk = options.any_mode = true;
    else if (!memcmp(token, "net", 4)) options.net = options.any_mode = true;
    else if (!memcmp(token, "verbose", 8)) options.verbose = true;
    else if (KEY("ip")) return parse_ipv4(value, &options.ip);
    else if (KEY("ping")) return (options.have_ping = parse_ipv4(value, &options.ping));
    else if (KEY("pings")) return parse_u64(value, &options.pings) && options.pings > 0;
    else if (KEY("isolated")) return take_ip_list(value, options.isolated, &options.isolated_count, 8);
    else if (KEY("timeout_ms")) return parse_u64(value, &options.timeout_ms) && options.timeout_ms > 0;
    else if (KEY("mac")) return (options.have_mac = parse_mac(value, options.mac));
    else if (KEY("discard")) return (options.discard_zero = !memcmp(value, "zero", 5));
    else if (KEY("msix")) {
        u64 v;
        if (!parse_u64(value, &v) || v > 1) return false;
        options.msix = v == 1;
    } else if (KEY("tsc_mhz")) return parse_u64(value, tsc_mhz) && *tsc_mhz > 0 && *tsc_mhz < 100000;
    else if (KEY("seed")) return parse_u64(value, &options.seed);
    else if (KEY("bench")) {
        options.any_mode = true;
        if (!memcmp(value, "randread", 9)) options.bench = BENCH_RANDREAD;
        else if (!memcmp(value, "udp", 4)) options.bench = BENCH_UDP;
        else return false;
    } else if (KEY("qd")) return parse_u64(value, &options.qd) && options.qd > 0;
    else if (KEY("count")) return parse_u64(value, &options.count);
    else if (KEY("seconds")) return parse_u64(value, &options.seconds);
    else if (KEY("udp")) return take_udp(value);
    else if (KEY("hostile")) return (options.any_mode = true, take_hostile(value));
    else if (KEY("storm")) return parse_u64(value, &options.storm);
    else return false;
#undef KEY
    return true;
}

static void parse_command_line(u64 *tsc_mhz) {
    char *p = command_line;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == '\n') p++;
        if (!*p) break;
        char *token = p;
        while (*p && *p != ' ' && *p != '\t' && *p != '\n') p++;
        char saved = *p;
        *p = 0;
        if (!take_token(token, tsc_mhz)) {
            char reason[128];
            format(reason, sizeof reason, "bad token %s", token);
            finish(false, reason);
        }
        *p = saved;
    }
}

static const char *mode_name(void) {
    if (options.hostile_pci_all) return "pci-all";
    return "pci";
}

__attribute__((noreturn)) void guest_main(const char *cmdline, u64 ram_size, u64 multiboot) {
    u64 started = rdtsc();
    serial_init();
    say("start");

    /* The command line first: under QEMU it lies in the pages the allocator hands out. */
    ram_limit = ram_size < 0xC0000000ull ? ram_size : 0xC0000000ull;
    u64 image_end = (u64)_end;
    if (cmdline && (u64)cmdline < ram_limit) {
        /* A multiboot command line starts with the image's name (QEMU and GRUB both do so). */
        if (multiboot) {
            while (*cmdline && *cmdline != ' ') cmdline++;
            while (*cmdline == ' ') cmdline++;
        }
        size_t n = 0;
        while (n + 1 < sizeof command_line && cmdline[n]) {
            command_line[n] = cmdline[n];
            n++;
        }
        command_line[n] = 0;
    }
    for (char *c = command_line; *c; c++) {
        if (*c == '"' || (u8)*c < 0x20 || (u8)*c > 0x7E) *c = '?';
    }
    say("cmdline \"%s\"", command_line);

    options.ip = 0x0A000003;
    options.timeout_ms = 1000;
    u64 tsc_mhz = 0;
    parse_command_line(&tsc_mhz);

    if (ram_limit < image_end + (16ull << 20)) {
        say("ram=%llu too small (image ends at 0x%llx)", ram_size, image_end);
        finish(false, "too little RAM");
    }
    heap_init(image_end, ram_limit);

    const char *tsc_source = "given";
    if (tsc_mhz) tsc_khz = tsc_mhz * 1000;
    else if (tsc_calibrate()) tsc_source = "pit";
    else {
        tsc_khz = 2000000;
        tsc_source = "assumed";
    }
    say("ram=%llu tsc_mhz=%llu tsc=%s image_end=0x%llx", ram_size, tsc_khz / 1000, tsc_source, image_end);

    if (!pci_scan_and_assign(true)) finish(false, "pci BAR assignment failed");
    virtio_discover(true);

    if (options.hostile_pci || options.hostile_pci_all) {
        hostile_pci(options.hostile_pci_all);
        say("survived %s", mode_name());
        if (!pci_scan_and_assign(false)) finish(false, "pci BAR assignment failed after hostile pci");
        virtio_discover(false);
    }
    for (int type = VIRTIO_ID_NET; type <= VIRTIO_ID_BLK; type++) {
        for (int i = 0; options.hostile_virtio && virtio_find((u16)type, i); i++) hostile_virtio(virtio_find((u16)type, i));
    }
    if (options.hostile_virtio) say("survived virtio");
    for (int type = VIRTIO_ID_NET; type <= VIRTIO_ID_BLK; type++) {
        for (int i = 0; options.hostile_ring && virtio_find((u16)type, i); i++) hostile_ring(virtio_find((u16)type, i));
    }
    if (options.hostile_ring) say("survived ring");

    struct virtio_device *blk = virtio_find(VIRTIO_ID_BLK, 0);
    struct virtio_device *net = virtio_find(VIRTIO_ID_NET, 0);
    if (!options.any_mode) {
        options.blk = blk != NULL;
        options.net = net != NULL && options.have_ping;
    }
    const char *why = NULL;
    bool passed = true;
    if (options.blk) {
        if (!blk) finish(false, "no virtio-blk device");
        passed = blk_test(blk, &why);
    }
    if (passed && options.net) {
        if (!net) finish(false, "no virtio-net device");
        passed = net_test(net, &why);
    }
    if (passed && options.bench == BENCH_RANDREAD) {
        if (!blk) finish(false, "no virtio-blk device");
        passed = blk_bench(blk, &why);
    }
    if (passed && options.bench == BENCH_UDP) {
        if (!net) finish(false, "no virtio-net device");
        passed = net_bench(net, &why);
    }
    say("exits pio=%llu mmio=%llu doorbells=%llu heap=%llu us=%llu", exits.pio, exits.mmio, exits.doorbells,
        heap_used(), cycles_to_us(rdtsc() - started));
    finish(passed, why);
}
