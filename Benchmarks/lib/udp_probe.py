#!/usr/bin/python3
"""A steady UDP probe stream, for Benchmarks/run-system.sh's switch restart time.

  udp_probe.py receive PORT SECONDS OUT     records the arrival time (CLOCK_REALTIME, seconds)
                                            of every probe for SECONDS, one per line, to OUT;
                                            writes OUT.ready once it listens
  udp_probe.py send HOST PORT INTERVAL_US SECONDS
                                            one small datagram every INTERVAL_US microseconds
  udp_probe.py gap OUT KILL_TIME            from the arrivals in OUT and the time of a kill
                                            (CLOCK_REALTIME, seconds, as bash's $EPOCHREALTIME):
                                            restart_ms (kill to the probe that ends the largest
                                            gap ending after the kill), largest_gap_ms (between
                                            any two arrivals),
                                            before (probes before the kill), after (after it)

The receiver's and the sender's clocks are one (namespaces share CLOCK_REALTIME), so the first
probe to arrive after the outage bounds the time from the kill to the first forwarded frame from
above by at most one interval: probes sent while the switch was down wait in the sender's TAP
queue (or are dropped when it is full) and the restarted switch forwards the first of them at once.
"""
import socket
import sys
import time


def receive(port, seconds, out):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind(("0.0.0.0", port))
    s.settimeout(0.05)
    open(out + ".ready", "w").close()
    arrivals = []
    end = time.time() + seconds
    while time.time() < end:
        try:
            s.recv(64)
        except socket.timeout:
            continue
        arrivals.append(time.time())
    with open(out, "w") as f:
        f.write("".join("%.6f\n" % t for t in arrivals))


def send(host, port, interval_us, seconds):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    interval = interval_us / 1e6
    start = time.monotonic()
    n = 0
    while True:
        due = start + n * interval
        now = time.monotonic()
        if now - start >= seconds:
            break
        if due > now:
            time.sleep(due - now)
        try:
            s.sendto(b"probe %d" % n, (host, port))
        except OSError:
            pass  # no route or a full queue while the switch is down: the next probe goes on
        n += 1


def gap(out, kill):
    arrivals = [float(line) for line in open(out) if line.strip()]
    before = [t for t in arrivals if t < kill]
    after = [t for t in arrivals if t >= kill]
    gaps = [(b - a, b) for a, b in zip(arrivals, arrivals[1:])]
    # Probes still pass in the moment between the timestamp and the kill's effect, so the first
    # arrival after the kill can precede the outage: the outage is the largest gap that ends
    # after the kill, and the restart is the arrival that ends it.
    outage = max((g for g in gaps if g[1] >= kill), default=None)
    if outage is None and after:
        outage = (after[0] - kill, after[0])  # the kill fell into the last gap before the first arrival
    print("restart_ms=%s" % ("%.1f" % ((outage[1] - kill) * 1e3) if outage else "-"))
    print("largest_gap_ms=%s" % ("%.1f" % (max(g[0] for g in gaps) * 1e3) if gaps else "-"))
    print("before=%d" % len(before))
    print("after=%d" % len(after))


def main(argv):
    if len(argv) == 5 and argv[1] == "receive":
        receive(int(argv[2]), float(argv[3]), argv[4])
    elif len(argv) == 6 and argv[1] == "send":
        send(argv[2], int(argv[3]), float(argv[4]), float(argv[5]))
    elif len(argv) == 4 and argv[1] == "gap":
        gap(argv[2], float(argv[3]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
