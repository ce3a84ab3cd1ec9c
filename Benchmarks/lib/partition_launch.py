#!/usr/bin/env python3
"""Starts `bulkhead-vmm` (partition) processes together and records what the partition part of
Benchmarks/run-system.sh measures of them (see lib/partition.sh).

  partition_launch.py --bin BULKHEAD --config FILE --tenant T --dir DIR [--console]
                      [--sample-ms MS] [--timeout S] ID [ID ...]

For each ID, one process `BULKHEAD-VMM --config FILE --tenant T --id ID [--console]`,
all forked first and then exec'd at once. Each child takes CLOCK_MONOTONIC (time.monotonic_ns)
immediately before its execv and writes it as the first line of its stderr
(`launch.monotonic_ns=N`), so that the partition's own `first_instruction.monotonic_ns` and
`first_serial_byte.monotonic_ns` (the same clock) can be set against it: the whole start-up,
exec, dynamic loading and the runtime's initialisation included.

Every line a partition writes (stderr: its log; stdout: the guest console with --console) is
stored with the CLOCK_MONOTONIC at which this launcher read it, as "NS LINE", in DIR/ID.log and
DIR/ID.console: the host-side clock for the guest's benchmark windows.

While a guest runs (from the partition's "guest started" line to its exit), its process's
/proc/PID/smaps is read every --sample-ms (and at once when the guest has started): the resident
memory of every mapping except the guest RAM (the shared memfd `bulkhead-guest-ram`) is the
VMM's own memory; the largest sample is kept (with its rss by mapped file), and the guest RAM's
largest resident size.

Prints one JSON object per partition (a JSON list) on stdout. Exit status 0 when every
partition exited by itself within --timeout (whatever its status; the caller judges), 1 when
one had to be killed.
"""
import argparse
import json
import os
import re
import selectors
import signal
import sys
import time

GUEST_RAM = "memfd:bulkhead-guest-ram"
NUMBERS = {
    "first_instruction_ns": re.compile(r"first_instruction\.monotonic_ns=(\d+)"),
    "first_instruction_us": re.compile(r"first_instruction\.us=(\d+)"),
    "first_serial_ns": re.compile(r"first_serial_byte\.monotonic_ns=(\d+)"),
    "first_serial_us": re.compile(r"first_serial_byte\.us=(\d+)"),
    "launch_ns": re.compile(r"^launch\.monotonic_ns=(\d+)$"),
}


def read_smaps(pid):
    """kB totals of /proc/PID/smaps: rss, pss, private (clean + dirty), anonymous and swap of
    every mapping but the guest RAM, the guest RAM's own rss, and the rss by mapped file
    ("[anon]" for anonymous memory). None when the process is gone."""
    own = {"Rss": 0, "Pss": 0, "Private_Clean": 0, "Private_Dirty": 0, "Swap": 0, "Anonymous": 0}
    guest_rss = 0
    by_file = {}
    name = None
    try:
        with open("/proc/%d/smaps" % pid) as f:
            for line in f:
                head, _, rest = line.partition(" ")
                if not head.endswith(":"):
                    # A mapping's header: "start-end perms offset dev inode [path]".
                    fields = rest.split(None, 4)
                    path = fields[4].strip() if len(fields) > 4 else ""
                    name = None if GUEST_RAM in path else (os.path.basename(path) if path.startswith("/") else path or "[anon]")
                    continue
                key = head[:-1]
                if name is None:
                    if key == "Rss":
                        guest_rss += int(rest.split()[0])
                elif key in own:
                    kib = int(rest.split()[0])
                    own[key] += kib
                    if key == "Rss":
                        by_file[name] = by_file.get(name, 0) + kib
    except OSError:
        return None
    return {
        "vmm_rss_kib": own["Rss"], "vmm_pss_kib": own["Pss"],
        "vmm_private_kib": own["Private_Clean"] + own["Private_Dirty"], "vmm_anon_kib": own["Anonymous"],
        "vmm_swap_kib": own["Swap"], "guest_rss_kib": guest_rss,
        "vmm_rss_by_file_kib": dict(sorted(by_file.items(), key=lambda kv: -kv[1])[:12]),
    }


class Partition:
    def __init__(self, ident, directory, console):
        self.id = ident
        self.pid = None
        self.status = None
        self.values = {}
        self.memory = None        # the sample with the largest vmm_rss_kib
        self.guest_rss_max = None
        self.samples = 0
        self.started_seen = None  # when this launcher read "guest started"
        self.next_sample = None
        self.buffers = {}
        self.files = {"log": open(os.path.join(directory, ident + ".log"), "w")}
        if console:
            self.files["console"] = open(os.path.join(directory, ident + ".console"), "w")

    def take(self, stream, data, now):
        text = self.buffers.get(stream, b"") + data
        *lines, rest = text.split(b"\n")
        self.buffers[stream] = rest
        for raw in lines:
            self.line(stream, raw.decode("utf-8", "replace"), now)

    def line(self, stream, line, now):
        self.files[stream].write("%d %s\n" % (now, line))
        if stream != "log":
            return
        for key, pattern in NUMBERS.items():
            if key not in self.values:
                m = pattern.search(line)
                if m:
                    self.values[key] = int(m.group(1))
        if self.started_seen is None and "first_instruction.monotonic_ns=" in line:
            self.started_seen = now
            self.next_sample = now

    def finish_streams(self, now):
        for stream, rest in self.buffers.items():
            if rest:
                self.line(stream, rest.decode("utf-8", "replace"), now)
        self.buffers = {}
        for f in self.files.values():
            f.close()

    def sample(self, now, interval_ns):
        self.next_sample = now + interval_ns
        memory = read_smaps(self.pid)
        if memory is None:
            return
        self.samples += 1
        self.guest_rss_max = max(self.guest_rss_max or 0, memory["guest_rss_kib"])
        if self.memory is None or memory["vmm_rss_kib"] > self.memory["vmm_rss_kib"]:
            self.memory = memory

    def summary(self):
        out = {"id": self.id, "pid": self.pid, "status": self.status, "memory_samples": self.samples}
        out.update(self.values)
        if self.memory:
            out.update(self.memory)
            out["guest_rss_kib"] = self.guest_rss_max
        return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", required=True, help="bulkhead (its sibling bulkhead-vmm is run unless --vmm says otherwise)")
    parser.add_argument("--vmm", help="bulkhead-vmm, the partition process `bulkhead run` spawns (default: next to --bin)")
    parser.add_argument("--config", required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--console", action="store_true")
    parser.add_argument("--sample-ms", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("ids", nargs="+")
    args = parser.parse_args()

    os.makedirs(args.dir, exist_ok=True)
    partitions = [Partition(i, args.dir, args.console) for i in args.ids]
    selector = selectors.DefaultSelector()
    devnull = os.open("/dev/null", os.O_RDONLY)
    pipes = []
    for p in partitions:
        err_r, err_w = os.pipe()
        out_r, out_w = (os.pipe() if args.console else (None, os.open("/dev/null", os.O_WRONLY)))
        pipes.append((p, err_r, err_w, out_r, out_w))
    # The daemon's path: `bulkhead run` spawns bulkhead-vmm itself (`bulkhead partition` execs it).
    vmm = args.vmm or os.path.join(os.path.dirname(args.bin), "bulkhead-vmm")
    argv_base = [vmm, "--config", args.config, "--tenant", args.tenant]

    # Fork every child first; each execs at once. Pipes are close-on-exec (Python's default),
    # so a child keeps only its own two, as its stdout and stderr.
    for p, err_r, err_w, out_r, out_w in pipes:
        argv = argv_base + ["--id", p.id] + (["--console"] if args.console else [])
        pid = os.fork()
        if pid == 0:
            try:
                os.dup2(devnull, 0)
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                now = time.monotonic_ns()
                os.write(2, b"launch.monotonic_ns=%d\n" % now)
                os.execv(vmm, argv)
            except BaseException as error:
                os.write(2, b"launch: cannot exec %s: %s\n" % (vmm.encode(), str(error).encode()))
            finally:
                os._exit(127)
        p.pid = pid
    os.close(devnull)
    open_streams = 0
    for p, err_r, err_w, out_r, out_w in pipes:
        os.close(err_w)
        os.close(out_w)
        os.set_blocking(err_r, False)
        selector.register(err_r, selectors.EVENT_READ, (p, "log"))
        open_streams += 1
        if out_r is not None:
            os.set_blocking(out_r, False)
            selector.register(out_r, selectors.EVENT_READ, (p, "console"))
            open_streams += 1

    # Stopped ourselves (the benchmark was interrupted): the partitions stop with us; SIGTERM
    # makes a partition stop its guest and exit.
    def stop(signum, frame):
        for p in partitions:
            if p.status is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    interval = args.sample_ms * 1_000_000
    deadline = time.monotonic_ns() + int(args.timeout * 1e9)
    killed = False
    term_sent = None
    running = {p.pid: p for p in partitions}
    while open_streams or running:
        now = time.monotonic_ns()
        waits = [p.next_sample - now for p in running.values() if p.next_sample is not None]
        timeout = max(0.0, min([interval] + waits) / 1e9) if running else 0.2
        for key, _ in selector.select(min(timeout, 0.2)):
            p, stream = key.data
            try:
                data = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            now = time.monotonic_ns()
            if data:
                p.take(stream, data, now)
            else:
                selector.unregister(key.fd)
                os.close(key.fd)
                open_streams -= 1
        now = time.monotonic_ns()
        for p in list(running.values()):
            if p.next_sample is not None and now >= p.next_sample:
                p.sample(now, interval)
            pid, status = os.waitpid(p.pid, os.WNOHANG)
            if pid:
                p.status = os.waitstatus_to_exitcode(status)
                del running[p.pid]
        if now > deadline and (running or open_streams):
            if term_sent is None:
                killed = True
                term_sent = now
                for p in running.values():
                    os.kill(p.pid, signal.SIGTERM)
            elif now - term_sent > 5e9:
                for p in running.values():
                    os.kill(p.pid, signal.SIGKILL)
                if not running and now - term_sent > 7e9:
                    break  # a stream held open by something else: give up on it
    now = time.monotonic_ns()
    for p in partitions:
        p.finish_streams(now)
    json.dump([p.summary() for p in partitions], sys.stdout, indent=1)
    print()
    return 1 if killed else 0


if __name__ == "__main__":
    sys.exit(main())
