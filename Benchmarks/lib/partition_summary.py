#!/usr/bin/env python3
"""The partition part's bookkeeping (Benchmarks/lib/partition.sh):

  partition_summary.py check RECORD.json DIR      every partition exited 0 and its guest printed
                                                  "bhtest: PASS" (DIR/ID.console); else says why
  partition_summary.py startup-line RECORD.json LABEL   one line: the medians of one launch
  partition_summary.py guest-bench CONSOLE        the guest's "bhtest: bench" line as key=value
                                                  pairs, with the host's own window and rate
  partition_summary.py report DIR COUNT TSC_MHZ   the tables and the result lines

Records are lib/partition_launch.py's: a JSON list, one object per partition, with launch_ns
(CLOCK_MONOTONIC before execv), first_instruction_ns/_us, first_serial_ns/_us (the partition's
log), vmm_rss_kib, vmm_pss_kib, vmm_private_kib, guest_rss_kib (smaps, largest sample), status.
Console files hold "NS LINE", NS the CLOCK_MONOTONIC at which the launcher read the line.
"""
import glob
import json
import os
import re
import statistics
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def check(record, directory):
    problems, shown = [], False
    for p in load(record):
        where = "partition %s (pid %s)" % (p["id"], p.get("pid"))
        mine = []
        if p.get("status") != 0:
            mine.append("%s exited with status %s" % (where, p.get("status")))
        for key in ("launch_ns", "first_instruction_ns", "first_serial_ns"):
            if key not in p:
                mine.append("%s: no %s in its log" % (where, key))
        console = os.path.join(directory, p["id"] + ".console")
        lines = [line.split(" ", 1)[-1] for line in open(console)] if os.path.exists(console) else []
        if not any(line.startswith("bhtest: PASS") for line in lines):
            mine.append("%s: its guest did not print 'bhtest: PASS'" % where)
        problems += mine
        if mine and not shown:
            # The first failing partition's log and console tails say why.
            shown = True
            log = os.path.join(directory, p["id"] + ".log")
            for name, path in (("log", log), ("console", console)):
                if os.path.exists(path):
                    for line in open(path).read().splitlines()[-12:]:
                        print("    %s %s: %s" % (p["id"], name, line.split(" ", 1)[-1]), file=sys.stderr)
    for problem in problems:
        print("partition check: " + problem, file=sys.stderr)
    return 1 if problems else 0


def figures(p):
    """ms from launch to the first instruction and serial byte, in-process ms, memory."""
    out = {}
    if "launch_ns" in p and "first_instruction_ns" in p:
        out["fi_ms"] = (p["first_instruction_ns"] - p["launch_ns"]) / 1e6
    if "launch_ns" in p and "first_serial_ns" in p:
        out["fs_ms"] = (p["first_serial_ns"] - p["launch_ns"]) / 1e6
    if "first_instruction_us" in p:
        out["fi_in_ms"] = p["first_instruction_us"] / 1e3
    if "first_serial_us" in p:
        out["fs_in_ms"] = p["first_serial_us"] / 1e3
    for key in ("vmm_rss_kib", "vmm_pss_kib", "vmm_private_kib", "vmm_anon_kib", "guest_rss_kib"):
        if key in p:
            out[key] = float(p[key])
    return out


def median(rows, key):
    xs = [r[key] for r in rows if key in r]
    return statistics.median(xs) if xs else None


def fmt(x, digits=1):
    return "-" if x is None else "%.*f" % (digits, x)


def startup_line(record, label):
    rows = [figures(p) for p in load(record)]
    print("%s: first instruction %s ms (in-process %s), first serial byte %s ms (in-process %s), VMM Rss %s KiB"
          " (medians; first instruction max %s ms)" % (
              label, fmt(median(rows, "fi_ms"), 2), fmt(median(rows, "fi_in_ms"), 2), fmt(median(rows, "fs_ms"), 2),
              fmt(median(rows, "fs_in_ms"), 2), fmt(median(rows, "vmm_rss_kib"), 0),
              fmt(max((r["fi_ms"] for r in rows if "fi_ms" in r), default=None), 2)))
    return 0


PAIR = re.compile(r"(\w+)=([0-9.]+)")


def guest_bench(console):
    """The bench line and the line before it (the last thing the guest printed before its
    benchmark loop: "blk ... capacity=" or "net arp ... is-at"): the host's window is from the
    launcher reading the one to reading the other. It includes printing the bench line itself
    (each byte a port-I/O exit, tens of ms) and so errs low on the rate."""
    lines = []
    for raw in open(console):
        ns, _, text = raw.rstrip("\n").partition(" ")
        lines.append((int(ns), text))
    for i, (ns, text) in enumerate(lines):
        if text.startswith("bhtest: bench ") and i > 0:
            kind = text.split()[2]
            values = dict(PAIR.findall(text))
            start_ns, before = lines[i - 1]
            host_s = (ns - start_ns) / 1e9
            count = float(values["requests"] if kind == "randread" else values["frames"])
            doorbells, exits = float(values["doorbells"]), float(values["exits"])
            pairs = ["kind=%s" % kind]
            pairs += ["guest_%s=%s" % (k, v) for k, v in values.items()]
            pairs += ["host_seconds=%.3f" % host_s, "host_rate=%.0f" % (count / host_s if host_s > 0 else 0),
                      "doorbells_per_op=%.4f" % (doorbells / count if count else 0),
                      "exits_per_op=%.4f" % (exits / count if count else 0)]
            print(" ".join(pairs))
            return 0
    print("no 'bhtest: bench' line after another line in %s" % console, file=sys.stderr)
    return 1


def read_tsv(path):
    rows = []
    if not os.path.exists(path):
        return rows
    for line in open(path):
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 3:
            continue
        values = {}
        for pair in parts[-1].split():
            k, _, v = pair.partition("=")
            values[k] = v
        values["round"], values["side"] = parts[0], parts[1]
        rows.append(values)
    return rows


def num_median(rows, key):
    xs = []
    for r in rows:
        try:
            xs.append(float(r[key]))
        except (KeyError, ValueError):
            pass
    return statistics.median(xs) if xs else None


def report(directory, count, tsc):
    count = int(count)
    out = []
    say = out.append
    singles = [figures(p) for f in sorted(glob.glob(os.path.join(directory, "startup-1-r*.json"))) for p in load(f)]
    many_files = sorted(glob.glob(os.path.join(directory, "startup-%s-r*.json" % count)))
    many = [figures(p) for f in many_files for p in load(f)]
    launch_spread = []
    for f in many_files:
        launches = [p["launch_ns"] for p in load(f) if "launch_ns" in p]
        if launches:
            launch_spread.append((max(launches) - min(launches)) / 1e6)

    say("Partition start-up: `bulkhead-vmm` (as `bulkhead run` spawns it) with 1 vCPU, 64 MiB, the test guest (Tests/Guest, a flat image,")
    say("measured by sha256 at launch) and one virtio-blk disk served over vhost-user by the block server; the guest runs")
    say("bench=randread qd=1 seconds=1 so that it lives while the VMM's memory is sampled. Started by")
    say("Benchmarks/lib/partition_launch.py as `bulkhead-vmm --config F --tenant bench --id pN --console`")
    say("(jailed; config: partition-config.json): \"launch\" is its CLOCK_MONOTONIC just before execv; first instruction and")
    say("first serial byte are the partition's logged first_instruction.monotonic_ns / first_serial_byte.monotonic_ns")
    say("(first KVM_RUN; the first byte the guest writes to COM1). \"in-proc\" is the partition's own figure, from the")
    say("start of its run() (after exec, dynamic loading, the Swift runtime and argument parsing).")
    say("VMM memory: /proc/PID/smaps of the partition process while its guest runs (every %s ms), summed over every" % 200)
    say("mapping but the guest RAM (the shared memfd bulkhead-guest-ram); the largest sample. Rss counts shared library")
    say("pages in full; Pss shares them among the processes that map them; private = Private_Clean + Private_Dirty.")
    say("Kernel memory KVM allocates for the VM (page tables, vCPU state) is not in any of these.")
    say("%d partitions: all forked first, then exec'd at once (launches spread over %s ms); %d CPUs, so their" % (
        count, fmt(statistics.median(launch_spread) if launch_spread else None, 1), os.cpu_count() or 0))
    say("start-ups queue for the CPUs, and each guest that started spins its vCPU (polling driver) meanwhile.")
    header = "%-26s %11s %8s %12s %8s %10s %9s %9s %11s" % (
        "scenario", "1st instr", "in-proc", "1st serial", "in-proc", "VMM Rss", "VMM Pss", "private", "guest RAM")
    say(header)
    say("%-26s %11s %8s %12s %8s %10s %9s %9s %11s" % ("", "ms", "ms", "ms", "ms", "KiB", "KiB", "KiB", "res. KiB"))
    say("-" * len(header))

    def row(label, rows, pick):
        say("%-26s %11s %8s %12s %8s %10s %9s %9s %11s" % (
            label, fmt(pick(rows, "fi_ms"), 2), fmt(pick(rows, "fi_in_ms"), 2), fmt(pick(rows, "fs_ms"), 2),
            fmt(pick(rows, "fs_in_ms"), 2), fmt(pick(rows, "vmm_rss_kib"), 0), fmt(pick(rows, "vmm_pss_kib"), 0),
            fmt(pick(rows, "vmm_private_kib"), 0), fmt(pick(rows, "guest_rss_kib"), 0)))

    def pick_max(rows, key):
        xs = [r[key] for r in rows if key in r]
        return max(xs) if xs else None

    def pick_min(rows, key):
        xs = [r[key] for r in rows if key in r]
        return min(xs) if xs else None

    row("1 partition, median (%d)" % len(singles), singles, median)
    row("%d together, median (%d)" % (count, len(many)), many, median)
    row("%d together, min" % count, many, pick_min)
    row("%d together, max" % count, many, pick_max)
    breakdown = []
    for f in sorted(glob.glob(os.path.join(directory, "startup-1-r*.json")))[:1]:
        for p in load(f):
            breakdown = list(p.get("vmm_rss_by_file_kib", {}).items())
    if breakdown:
        say("Where the VMM's Rss is (1 partition, round 1, largest sample; KiB by mapped file, [anon] = heap, stacks):")
        for i in range(0, len(breakdown), 4):
            say("  " + ", ".join("%s %d" % kv for kv in breakdown[i:i + 4]))
    say("Goals (issue 9): first instruction within 5 ms of process start; at most 3 MiB (3072 KiB) of VMM memory per")
    say("partition (Firecracker publishes about 5 MiB and 125 ms to user space).")
    say("")

    # --- guest I/O -------------------------------------------------------------------------------
    io = read_tsv(os.path.join(directory, "io.tsv"))
    fio = [r for r in read_tsv(os.path.join(directory, "block.tsv")) if r["side"] == "fio"]
    guest_host = num_median(io, "host_rate")
    guest_tsc = num_median(io, "guest_iops")
    fio_iops = num_median(fio, "iops")
    say("Guest I/O: 4 KiB random reads at QD32 by the test guest's polling virtio-blk driver in a partition")
    say("(guest -> vhost-user -> block server, 1 queue -> io_uring, O_DIRECT) on a 1 GiB volume file, written in full")
    say("first; against fio (io_uring, O_DIRECT, randread 4k QD32, 1 job, 1 s ramp) on the same file, the server")
    say("stopped. Guest command line: bench=randread qd=32 seconds=N tsc_mhz=%s. \"host\" IOPS = the guest's request" % (tsc or "(calibrated)"))
    say("count / the host's window (the launcher's read times of the guest line printed just before the loop and of")
    say("the bench line; it includes printing the bench line, so it errs low); \"TSC\" IOPS = the guest's own figure.")
    say("The ratio uses the host-timed IOPS. Doorbells (MMIO writes to the notify BAR, ioeventfd: a VM exit, not the")
    say("VMM) and exits (every port-I/O and MMIO access the guest made in the loop, doorbells included) per request.")
    say("%-22s %11s %10s %10s %7s %11s %11s" % ("scenario", "host IOPS", "TSC IOPS", "fio IOPS", "ratio", "doorbells/r", "exits/r"))
    say("-" * 88)
    for r in sorted(io, key=lambda r: int(r["round"])):
        f = [x for x in fio if x["round"] == r["round"]]
        say("%-22s %11s %10s %10s %7s %11s %11s" % (
            "randread round %s" % r["round"], r.get("host_rate", "-"), r.get("guest_iops", "-"),
            f[0]["iops"] if f else "-", "", r.get("doorbells_per_op", "-"), r.get("exits_per_op", "-")))
    io_ratio = guest_host / fio_iops if guest_host and fio_iops else None
    say("%-22s %11s %10s %10s %7s %11s %11s" % (
        "randread median", fmt(guest_host, 0), fmt(guest_tsc, 0), fmt(fio_iops, 0), fmt(io_ratio, 2),
        fmt(num_median(io, "doorbells_per_op"), 4), fmt(num_median(io, "exits_per_op"), 4)))
    say("Goal: a ratio of 0.85 or better.")
    say("")

    # --- UDP -------------------------------------------------------------------------------------
    udp = read_tsv(os.path.join(directory, "udp.tsv"))
    say("Guest UDP: 60-byte frames (64 on the wire) from the test guest's polling virtio-net driver through the")
    say("switch (the daemon, `bulkhead run`; the partition's NIC is its vhost-user port) to the tenant's TAP port in")
    say("namespace bhb-a (10.0.0.1:9, a bound socket that never reads). Guest: bench=udp udp=10.0.0.1:9 seconds=N.")
    say("Arrived = bhb-a's rx_packets over the run (the guest's ARP request included); pps = arrived / the host's")
    say("window (as above); sent pps = the guest's own figure (TSC). Doorbells and exits per frame sent.")
    say("%-18s %10s %10s %11s %10s %12s %9s" % ("scenario", "sent", "arrived", "pps", "sent pps", "doorbells/f", "exits/f"))
    say("-" * 86)
    for r in sorted(udp, key=lambda r: int(r["round"])):
        try:
            pps = float(r["endpoint_rx_frames"]) / float(r["host_seconds"])
        except (KeyError, ValueError, ZeroDivisionError):
            pps = None
        r["endpoint_pps"] = "-" if pps is None else "%.0f" % pps
        say("%-18s %10s %10s %11s %10s %12s %9s" % (
            "udp64 round %s" % r["round"], r.get("guest_frames", "-"), r.get("endpoint_rx_frames", "-"), r["endpoint_pps"],
            r.get("guest_pps", "-"), r.get("doorbells_per_op", "-"), r.get("exits_per_op", "-")))
    udp_pps = num_median(udp, "endpoint_pps")
    say("%-18s %10s %10s %11s %10s %12s %9s" % (
        "udp64 median", "", "", fmt(udp_pps, 0), fmt(num_median(udp, "guest_pps"), 0),
        fmt(num_median(udp, "doorbells_per_op"), 4), fmt(num_median(udp, "exits_per_op"), 4)))
    say("")

    def line(key, value, digits):
        say("%s=%s" % (key, fmt(value, digits)))

    line("partition.single.first_instruction_ms", median(singles, "fi_ms"), 2)
    line("partition.single.first_serial_byte_ms", median(singles, "fs_ms"), 2)
    line("partition.single.vmm_overhead_kib", median(singles, "vmm_rss_kib"), 0)
    line("partition.single.first_instruction_inprocess_ms", median(singles, "fi_in_ms"), 2)
    line("partition.first_instruction_inprocess_ms", median(many, "fi_in_ms"), 2)
    line("partition.vmm_pss_kib", median(many, "vmm_pss_kib"), 0)
    line("partition.vmm_private_kib", median(many, "vmm_private_kib"), 0)
    line("partition.guest_randread4k_iops", guest_host, 0)
    line("partition.guest_randread4k_doorbells_per_request", num_median(io, "doorbells_per_op"), 4)
    line("partition.guest_randread4k_exits_per_request", num_median(io, "exits_per_op"), 4)
    line("partition.guest_udp64_doorbells_per_frame", num_median(udp, "doorbells_per_op"), 4)
    line("partition.guest_udp64_exits_per_frame", num_median(udp, "exits_per_op"), 4)
    line("ratio.guest_randread4k_vs_fio", io_ratio, 2)
    line("partition.guest_udp64_pps", udp_pps, 0)
    line("partition.first_instruction_ms", median(many, "fi_ms"), 2)
    line("partition.first_serial_byte_ms", median(many, "fs_ms"), 2)
    line("partition.vmm_overhead_kib", median(many, "vmm_rss_kib"), 0)
    print("\n".join(out))
    return 0


def main(argv):
    if len(argv) >= 3 and argv[0] == "check":
        return check(argv[1], argv[2])
    if len(argv) >= 3 and argv[0] == "startup-line":
        return startup_line(argv[1], argv[2])
    if len(argv) >= 2 and argv[0] == "guest-bench":
        return guest_bench(argv[1])
    if len(argv) >= 3 and argv[0] == "report":
        return report(argv[1], argv[2], argv[3] if len(argv) > 3 else "")
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
