/* The virtio-blk checks and the random-read benchmark. Requests are header (device-readable),
 * data, status byte (device-writable); a batch is queued and announced with one doorbell. */
#include "guest.h"

#define VIRTIO_BLK_F_SIZE_MAX (1ull << 1)
#define VIRTIO_BLK_F_SEG_MAX (1ull << 2)
#define VIRTIO_BLK_F_RO (1ull << 5)
#define VIRTIO_BLK_F_BLK_SIZE (1ull << 6)
#define VIRTIO_BLK_F_FLUSH (1ull << 9)
#define VIRTIO_BLK_F_DISCARD (1ull << 13)
#define VIRTIO_BLK_F_WRITE_ZEROES (1ull << 14)

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_DISCARD 11
#define VIRTIO_BLK_T_WRITE_ZEROES 13

#define STATUS_OK 0
#define STATUS_IOERR 1
#define STATUS_UNSUPP 2
#define STATUS_PENDING 0xFF

#define SLOTS 128
#define UNIT_SECTORS 16 /* pattern blocks are 8 KiB */
#define PATTERN_BLOCKS 16

struct blk_slot {
    u32 type;
    u32 reserved;
    u64 sector;
    u8 status;
    u8 pad[7];
    /* A discard or write-zeroes segment (struct virtio_blk_discard_write_zeroes). */
    u64 range_sector;
    u32 range_sectors;
    u32 range_flags;
};

struct blk {
    struct virtio_device *dev;
    struct virtqueue *vq;
    u64 capacity;
    u32 seg_max, size_max, max_discard_sectors, discard_alignment, max_write_zeroes_sectors;
    struct blk_slot *slots;
    u64 requests;
    int pending;
};

static const char *status_name(u8 status) {
    switch (status) {
    case STATUS_OK: return "OK";
    case STATUS_IOERR: return "IOERR";
    case STATUS_UNSUPP: return "UNSUPP";
    case STATUS_PENDING: return "none";
    default: return "garbage";
    }
}

static u64 deadline_cycles(u64 ms) { return tsc_khz ? ms_to_cycles(ms) : ms * 4000000ull; }

/* Queues one request in slot `slot`: `segments` equal data pieces of `data`. */
static bool submit(struct blk *b, int slot, u32 type, u64 sector, void *data, u32 bytes, int segments) {
    struct blk_slot *s = &b->slots[slot];
    s->type = type;
    s->reserved = 0;
    s->sector = sector;
    s->status = STATUS_PENDING;
    struct vbuf buffers[10];
    int n = 0;
    buffers[n++] = (struct vbuf){(u64)s, 16, false};
    if (type == VIRTIO_BLK_T_DISCARD || type == VIRTIO_BLK_T_WRITE_ZEROES) {
        buffers[n++] = (struct vbuf){(u64)&s->range_sector, 16, false};
    } else if (bytes) {
        if (segments < 1) segments = 1;
        if (segments > 8) segments = 8;
        u32 piece = bytes / (u32)segments;
        for (int i = 0; i < segments; i++) {
            u32 length = i + 1 == segments ? bytes - piece * (u32)i : piece;
            buffers[n++] = (struct vbuf){(u64)data + piece * (u32)i, length, type == VIRTIO_BLK_T_IN};
        }
    }
    buffers[n++] = (struct vbuf){(u64)&s->status, 1, true};
    if (!vq_add(b->vq, buffers, n, (u64)slot)) return false;
    b->requests++;
    b->pending++;
    return true;
}

/* Reaps every pending request (10 s at most); false on a timeout or a completion for no slot. */
static bool wait_all(struct blk *b, const char **why) {
    u64 start = rdtsc(), limit = deadline_cycles(10000);
    while (b->pending > 0) {
        u64 token;
        u32 length;
        if (vq_get(b->vq, &token, &length)) {
            if (token >= SLOTS) {
                *why = "blk device completed an unknown descriptor";
                return false;
            }
            b->pending--;
            continue;
        }
        if (rdtsc() - start > limit) {
            *why = "blk requests timed out";
            return false;
        }
        cpu_relax();
    }
    return true;
}

/* Runs the queued batch: one kick, then every completion; all statuses must be `expected`. */
static bool run_batch(struct blk *b, int count, u8 expected, const char *what, const char **why) {
    vq_kick(b->vq);
    if (!wait_all(b, why)) return false;
    for (int i = 0; i < count; i++) {
        if (b->slots[i].status != expected) {
            say("blk %s request %d: status %u (%s), expected %s", what, i, b->slots[i].status,
                status_name(b->slots[i].status), status_name(expected));
            *why = "blk request failed";
            return false;
        }
    }
    return true;
}

/* Sector `sector`'s contents for this run: 64 words, each a function of seed, sector and word. */
static void fill_pattern(u64 seed, u64 sector, u64 *words) {
    for (u64 w = 0; w < 64; w++) {
        u64 x = seed ^ (sector * 0x9E3779B97F4A7C15ull) ^ (w * 0xC2B2AE3D27D4EB4Full);
        words[w] = random_next(&x);
    }
}

/* The first sector of `data` (starting at `sector`) that does not hold the pattern, or -1. */
static i64 check_pattern(u64 seed, u64 sector, const u8 *data, u64 sectors) {
    u64 expected[64];
    for (u64 i = 0; i < sectors; i++) {
        fill_pattern(seed, sector + i, expected);
        if (memcmp(data + i * 512, expected, 512) != 0) return (i64)i;
    }
    return -1;
}

static i64 first_nonzero_sector(const u8 *data, u64 sectors) {
    for (u64 i = 0; i < sectors * 512; i++) {
        if (data[i]) return (i64)(i / 512);
    }
    return -1;
}

static bool blk_open(struct blk *b, struct virtio_device *dev, const char **why) {
    memset(b, 0, sizeof *b);
    b->dev = dev;
    u64 wanted = VIRTIO_BLK_F_SIZE_MAX | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_RO | VIRTIO_BLK_F_BLK_SIZE |
                 VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES | VIRTIO_F_EVENT_IDX;
    if (!virtio_negotiate(dev, wanted, why)) return false;
    virtio_configure_msix(dev, options.msix);
    if (!virtio_setup_queue(dev, 0, 256, why)) return false;
    virtio_driver_ok(dev);
    if (virtio_status(dev) & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED)) {
        *why = "blk device failed at DRIVER_OK";
        return false;
    }
    b->vq = &dev->queues[0];
    b->slots = alloc_pages(sizeof(struct blk_slot) * SLOTS);
    u64 f = dev->driver_features;
    b->capacity = virtio_config_read64(dev, 0);
    b->size_max = (f & VIRTIO_BLK_F_SIZE_MAX) ? virtio_config_read32(dev, 8) : 0;
    b->seg_max = (f & VIRTIO_BLK_F_SEG_MAX) ? virtio_config_read32(dev, 12) : 0;
    u32 block_size = (f & VIRTIO_BLK_F_BLK_SIZE) ? virtio_config_read32(dev, 20) : 512;
    if (f & VIRTIO_BLK_F_DISCARD) {
        b->max_discard_sectors = virtio_config_read32(dev, 36);
        b->discard_alignment = virtio_config_read32(dev, 44);
    }
    if (f & VIRTIO_BLK_F_WRITE_ZEROES) b->max_write_zeroes_sectors = virtio_config_read32(dev, 48);
    struct pci_function *p = dev->pci;
    say("blk %02x:%02x.%x capacity=%llu blk_size=%u seg_max=%u size_max=%u features=0x%llx queue_size=%u "
        "event_idx=%d msix=%d",
        p->bus, p->device, p->function, b->capacity, block_size, b->seg_max, b->size_max, f, b->vq->size,
        b->vq->event_idx ? 1 : 0, dev->msix_enabled ? 1 : 0);
    return true;
}

static void blk_summary(struct blk *b) {
    say("blk doorbells=%llu requests=%llu suppressed=%llu", b->vq->doorbells, b->requests, b->vq->suppressed);
}

static u64 round_up(u64 value, u64 to) { return (value + to - 1) / to * to; }

bool blk_test(struct virtio_device *dev, const char **why) {
    struct blk b;
    if (!blk_open(&b, dev, why)) return false;
    u64 f = dev->driver_features;
    if (f & VIRTIO_BLK_F_RO) {
        *why = "blk device is read-only";
        return false;
    }
    u64 units = b.capacity / UNIT_SECTORS;
    if (units < 64) {
        *why = "blk device smaller than 512 KiB";
        return false;
    }
    u64 seed = options.seed ? options.seed : rdtsc();
    u32 unit_bytes = UNIT_SECTORS * 512;

    /* Pattern blocks spread from the first to the last whole 8 KiB of the disk; the blocks
     * halfway between them are never written by any run of this guest. */
    u64 pattern[PATTERN_BLOCKS], hole[PATTERN_BLOCKS - 1];
    for (int i = 0; i < PATTERN_BLOCKS; i++) pattern[i] = (units - 1) * (u64)i / (PATTERN_BLOCKS - 1) * UNIT_SECTORS;
    for (int i = 0; i < PATTERN_BLOCKS - 1; i++) {
        hole[i] = (pattern[i] / UNIT_SECTORS + pattern[i + 1] / UNIT_SECTORS) / 2 * UNIT_SECTORS;
    }
    u8 *out = alloc_pages((u64)unit_bytes * PATTERN_BLOCKS);
    u8 *in = alloc_pages((u64)unit_bytes * PATTERN_BLOCKS);
    for (int i = 0; i < PATTERN_BLOCKS; i++) {
        for (u32 s = 0; s < UNIT_SECTORS; s++) fill_pattern(seed, pattern[i] + s, (u64 *)(out + i * unit_bytes + s * 512));
    }

    /* 1. Writes, two segments each when the device takes two. */
    int segments = (!(f & VIRTIO_BLK_F_SEG_MAX) || b.seg_max >= 2) ? 2 : 1;
    for (int i = 0; i < PATTERN_BLOCKS; i++) {
        if (!submit(&b, i, VIRTIO_BLK_T_OUT, pattern[i], out + i * unit_bytes, unit_bytes, segments)) {
            *why = "blk queue full";
            return false;
        }
    }
    if (!run_batch(&b, PATTERN_BLOCKS, STATUS_OK, "write", why)) return false;
    say("blk write ok requests=%d bytes=%u segments=%d first=%llu last=%llu", PATTERN_BLOCKS,
        unit_bytes * PATTERN_BLOCKS, segments, pattern[0], pattern[PATTERN_BLOCKS - 1]);

    /* 2. Flush. */
    if (f & VIRTIO_BLK_F_FLUSH) {
        if (!submit(&b, 0, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0) || !run_batch(&b, 1, STATUS_OK, "flush", why)) return false;
        say("blk flush ok");
    } else {
        say("blk flush not-offered");
    }

    /* 3. Read back and compare. */
    for (int i = 0; i < PATTERN_BLOCKS; i++) submit(&b, i, VIRTIO_BLK_T_IN, pattern[i], in + i * unit_bytes, unit_bytes, 1);
    if (!run_batch(&b, PATTERN_BLOCKS, STATUS_OK, "read", why)) return false;
    for (int i = 0; i < PATTERN_BLOCKS; i++) {
        i64 bad = check_pattern(seed, pattern[i], in + i * unit_bytes, UNIT_SECTORS);
        if (bad >= 0) {
            say("blk readback sector %llu differs from what was written", pattern[i] + (u64)bad);
            *why = "blk readback mismatch";
            return false;
        }
    }
    say("blk readback ok requests=%d", PATTERN_BLOCKS);

    /* 4. Never-written blocks read as zeroes. */
    memset(in, 0xA5, (u64)unit_bytes * PATTERN_BLOCKS);
    for (int i = 0; i < PATTERN_BLOCKS - 1; i++) submit(&b, i, VIRTIO_BLK_T_IN, hole[i], in + i * unit_bytes, unit_bytes, 1);
    if (!run_batch(&b, PATTERN_BLOCKS - 1, STATUS_OK, "read", why)) return false;
    for (int i = 0; i < PATTERN_BLOCKS - 1; i++) {
        i64 bad = first_nonzero_sector(in + i * unit_bytes, UNIT_SECTORS);
        if (bad >= 0) {
            say("blk never-written sector %llu is not zero", hole[i] + (u64)bad);
            *why = "blk never-written sector not zero";
            return false;
        }
    }
    say("blk zeroes ok requests=%d", PATTERN_BLOCKS - 1);

    /* 5. Discard and write-zeroes in the scratch space between pattern block 1 and the hole
     * after it: pattern in, flushed and read back, then released. */
    u64 scratch = pattern[1] + UNIT_SECTORS, scratch_end = hole[1];
    if (f & VIRTIO_BLK_F_DISCARD) {
        u64 align = b.discard_alignment > 8 ? b.discard_alignment : 8;
        u64 length = 128;
        if (b.max_discard_sectors && b.max_discard_sectors < length) length = b.max_discard_sectors;
        length = length / align * align;
        if (length == 0) length = align;
        u64 start = round_up(scratch, align);
        if (start + length > scratch_end || length > 128) {
            say("blk discard skipped: no aligned room (alignment %llu sectors)", align);
            if (options.discard_zero) {
                *why = "blk discard not checked";
                return false;
            }
        } else {
            u8 *data = alloc_pages(length * 512);
            for (u64 s = 0; s < length; s++) fill_pattern(seed, start + s, (u64 *)(data + s * 512));
            int n = 0;
            for (u64 s = 0; s < length; s += 8) submit(&b, n++, VIRTIO_BLK_T_OUT, start + s, data + s * 512, 4096, 1);
            if (!run_batch(&b, n, STATUS_OK, "write", why)) return false;
            if (f & VIRTIO_BLK_F_FLUSH) {
                submit(&b, 0, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0);
                if (!run_batch(&b, 1, STATUS_OK, "flush", why)) return false;
            }
            struct blk_slot *s = &b.slots[0];
            s->range_sector = start;
            s->range_sectors = (u32)length;
            s->range_flags = 0;
            submit(&b, 0, VIRTIO_BLK_T_DISCARD, 0, NULL, 0, 0);
            if (!run_batch(&b, 1, STATUS_OK, "discard", why)) return false;
            memset(data, 0xA5, length * 512);
            submit(&b, 0, VIRTIO_BLK_T_IN, start, data, (u32)(length * 512), 1);
            if (!run_batch(&b, 1, STATUS_OK, "read", why)) return false;
            bool zeroes = first_nonzero_sector(data, length) < 0;
            say("blk discard ok %s sector=%llu sectors=%llu", zeroes ? "zeroes" : "data-kept", start, length);
            if (!zeroes && options.discard_zero) {
                *why = "blk discarded sectors do not read as zeroes";
                return false;
            }
            scratch = start + length;
        }
    } else {
        say("blk discard not-offered");
        if (options.discard_zero) {
            *why = "blk discard not offered";
            return false;
        }
    }

    if (f & VIRTIO_BLK_F_WRITE_ZEROES) {
        u64 start = round_up(scratch, 8), length = 16;
        if (b.max_write_zeroes_sectors && b.max_write_zeroes_sectors < length) length = b.max_write_zeroes_sectors;
        if (start + length > scratch_end) {
            say("blk write-zeroes skipped: no room");
        } else {
            u8 *data = alloc_pages(length * 512);
            for (u64 s = 0; s < length; s++) fill_pattern(seed, start + s, (u64 *)(data + s * 512));
            submit(&b, 0, VIRTIO_BLK_T_OUT, start, data, (u32)(length * 512), 1);
            if (!run_batch(&b, 1, STATUS_OK, "write", why)) return false;
            struct blk_slot *s = &b.slots[0];
            s->range_sector = start;
            s->range_sectors = (u32)length;
            s->range_flags = 0;
            submit(&b, 0, VIRTIO_BLK_T_WRITE_ZEROES, 0, NULL, 0, 0);
            if (!run_batch(&b, 1, STATUS_OK, "write-zeroes", why)) return false;
            memset(data, 0xA5, length * 512);
            submit(&b, 0, VIRTIO_BLK_T_IN, start, data, (u32)(length * 512), 1);
            if (!run_batch(&b, 1, STATUS_OK, "read", why)) return false;
            if (first_nonzero_sector(data, length) >= 0) {
                *why = "blk write-zeroes left data";
                return false;
            }
            say("blk write-zeroes ok sector=%llu sectors=%llu", start, length);
        }
    } else {
        say("blk write-zeroes not-offered");
    }

    /* 6. A read that ends past the last sector fails, and nothing is read. */
    memset(in, 0xA5, unit_bytes);
    submit(&b, 0, VIRTIO_BLK_T_IN, b.capacity - UNIT_SECTORS / 2, in, unit_bytes, 1);
    vq_kick(b.vq);
    if (!wait_all(&b, why)) return false;
    if (b.slots[0].status == STATUS_OK) {
        *why = "blk read past the end succeeded";
        return false;
    }
    say("blk beyond-end ok status=%s", status_name(b.slots[0].status));

    blk_summary(&b);
    virtio_reset(dev);
    return true;
}

bool blk_bench(struct virtio_device *dev, const char **why) {
    struct blk b;
    if (!blk_open(&b, dev, why)) return false;
    u64 blocks = b.capacity / 8;
    if (blocks == 0) {
        *why = "blk device smaller than 4 KiB";
        return false;
    }
    u64 depth = options.qd ? options.qd : 32;
    u64 room = b.vq->size / 3;
    if (depth > room) depth = room;
    if (depth > SLOTS) depth = SLOTS;
    u64 count = options.count, limit = options.seconds ? options.seconds * 1000ull * tsc_khz : 0;
    if (!count && !limit) count = 10000;
    if (options.seconds && !tsc_khz) {
        *why = "bench seconds= needs a TSC frequency";
        return false;
    }
    u8 *data = alloc_pages(4096 * depth);
    u64 state = options.seed ? options.seed : rdtsc();
    struct exit_counts before = exits;
    u64 doorbells_before = b.vq->doorbells;
    u64 issued = 0, completed = 0, errors = 0;
    u64 start = rdtsc(), last_progress = start, stall = deadline_cycles(10000);
    bool issuing = true;
    for (u64 i = 0; i < depth && (!count || issued < count); i++, issued++) {
        submit(&b, (int)i, VIRTIO_BLK_T_IN, random_next(&state) % blocks * 8, data + 4096 * i, 4096, 1);
    }
    vq_kick(b.vq);
    while (completed < issued) {
        u64 token;
        u32 length;
        bool any = false;
        while (vq_get(b.vq, &token, &length)) {
            any = true;
            if (token >= depth) {
                *why = "blk device completed an unknown descriptor";
                return false;
            }
            completed++;
            b.pending--;
            if (b.slots[token].status != STATUS_OK) errors++;
            u64 now = limit ? rdtsc() : 0;
            if (issuing && ((count && issued >= count) || (limit && now - start >= limit))) issuing = false;
            if (issuing) {
                submit(&b, (int)token, VIRTIO_BLK_T_IN, random_next(&state) % blocks * 8, data + 4096 * token, 4096, 1);
                issued++;
            }
        }
        if (any) {
            vq_kick(b.vq);
            last_progress = rdtsc();
        } else if (rdtsc() - last_progress > stall) {
            *why = "blk benchmark stalled";
            return false;
        } else {
            cpu_relax();
        }
    }
    u64 cycles = rdtsc() - start;
    u64 doorbells = b.vq->doorbells - doorbells_before;
    u64 exit_count = (exits.pio - before.pio) + (exits.mmio - before.mmio);
    u64 us = cycles_to_us(cycles);
    u64 iops = us ? completed * 1000000ull / us : 0;
    u64 per = completed ? doorbells * 1000 / completed : 0;
    say("bench randread qd=%llu requests=%llu errors=%llu cycles=%llu seconds=%llu.%03llu iops=%llu doorbells=%llu "
        "doorbells_per_request=%llu.%03llu exits=%llu",
        depth, completed, errors, cycles, us / 1000000, us / 1000 % 1000, iops, doorbells, per / 1000, per % 1000,
        exit_count);
    if (errors) {
        *why = "blk benchmark requests failed";
        return false;
    }
    virtio_reset(dev);
    return true;
}
