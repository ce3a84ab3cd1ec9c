#!/usr/bin/python3
"""Reads iperf3 3.x JSON for Benchmarks/run-system.sh and summarizes its measurements.

  iperf_json.py tcp FILE             one line of tab-separated key=value metrics, value= first
  iperf_json.py udp64 FILE           the same for the UDP 64-byte test
  iperf_json.py describe KIND LINE   those metrics in words, for the progress log
  iperf_json.py summarize TSV        the table and the ratio lines, from measurements.tsv
  iperf_json.py median TSV TOPO KIND [KEY]
                                     the median of KEY (default value) over TOPO's KIND rows
"""
import json
import statistics
import sys


def tcp(doc):
    end = doc["end"]
    # sum_received is the receiver's count of bytes over the receiver's duration (the client
    # fills it from the results the server sends back at the end), so bytes still queued in the
    # sender's socket buffer when the test stops are not counted.
    received = end["sum_received"]
    sent = end.get("sum_sent", {})
    return {
        "value": received["bits_per_second"],
        "sender_bps": sent.get("bits_per_second", 0),
        "retransmits": sent.get("retransmits", -1),
        "seconds": received["seconds"],
    }


def udp(doc):
    # The receiver's own view: the server runs with -J, so --get-server-output hands back its
    # JSON as server_output_json, whose end.sum (== end.sum_received there) holds:
    #   packets       the highest sequence number the receiver saw, i.e. packets sent up to the
    #                 last one that arrived;
    #   lost_packets  the gaps in the sequence minus the datagrams that arrived out of order;
    #   seconds       the receiver's measurement time.
    # packets - lost_packets is then the number of datagrams delivered to the receiving socket's
    # reader. The client's own end.sum is not used: its `packets` is the sender's count (it
    # includes datagrams sent after the last one that arrived) while its lost_packets is the
    # receiver's, so the difference mixes two views. The server's received byte count divided
    # by the 64-byte payload gives the same number; it is kept as a cross-check.
    server = doc.get("server_output_json")
    if not server:
        raise SystemExit("no server_output_json in the client's JSON (server not in -J mode?)")
    end = server["end"]
    total = end.get("sum_received") or end["sum"]
    stream = end["streams"][0]["udp"] if end.get("streams") else {}
    delivered = total["packets"] - total["lost_packets"]
    seconds = total["seconds"]
    sent = doc["end"].get("sum_sent") or doc["end"]["sum"]
    return {
        "value": delivered / seconds if seconds > 0 else 0.0,
        "delivered": delivered,
        "lost": total["lost_packets"],
        "sent": sent["packets"],
        "out_of_order": stream.get("out_of_order", 0),
        "seconds": seconds,
        "bytes_pps": total["bytes"] / 64 / seconds if seconds > 0 else 0.0,
        "sender_pps": sent["packets"] / sent["seconds"] if sent.get("seconds") else 0.0,
    }


def fmt(metrics):
    return "\t".join("%s=%s" % (k, ("%.6g" % v) if isinstance(v, float) else v) for k, v in metrics.items())


def parse(fields):
    out = {}
    for f in fields:
        if "=" in f:
            k, v = f.split("=", 1)
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


def describe(kind, line):
    m = parse(line.split("\t"))
    if kind == "tcp":
        return "%.2f Gbit/s received, %d retransmits" % (m["value"] / 1e9, m.get("retransmits", -1))
    sent = m.get("sent", 0)
    lost = m.get("lost", 0)
    loss = 100.0 * lost / (m["delivered"] + lost) if m.get("delivered", 0) + lost > 0 else 0.0
    return "%.0f kpps delivered (sender %.0f kpps, %.1f%% lost, %d out of order)" % (
        m["value"] / 1e3, m.get("sender_pps", 0) / 1e3, loss, m.get("out_of_order", 0))


# topology, table label, key in the ratio lines, required (a topology that may be skipped, with
# a message from run-system.sh, leaves its ratios out instead of failing the summary)
TOPOLOGIES = (
    ("bulkhead", "Bulkhead", None, True),
    ("linux-bridge", "Linux bridge", "linux_bridge", True),
    ("plain-forwarder", "plain fwd", "plain_forwarder", True),
    ("ovs-netdev", "OVS netdev", "ovs_netdev", False),
)
SCENARIOS = (
    # kind, table label, scale, unit, ratio key prefix
    ("tcp", "TCP throughput", 1e9, "Gbit/s", "ratio.tcp_vs_"),
    ("udp64", "UDP 64 B delivered", 1e3, "kpps", "ratio.udp64_pps_vs_"),
)
# Keys of the CPU-per-frame lines, by topology (the kernel's bridge has no process of its own).
CPU_KEYS = {"bulkhead": "switch", "plain-forwarder": "plain_forwarder", "ovs-netdev": "ovs_netdev"}


def summarize(path):
    rows = {}
    for line in open(path):
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 4:
            continue
        _round, topo, kind = parts[:3]
        rows.setdefault((topo, kind), []).append(parse(parts[3:]))

    def med(topo, kind, key="value"):
        vals = [r[key] for r in rows.get((topo, kind), []) if isinstance(r.get(key), float)]
        return statistics.median(vals) if vals else None

    present = [t for t in TOPOLOGIES if any(k[0] == t[0] for k in rows)]
    out = []
    rounds = max((len(v) for v in rows.values()), default=0)
    out.append("Median of %d round(s) per cell; the rounds rotate which topology goes first." % rounds)
    out.append("Ratios: Bulkhead / the column's peer. CPU per frame: the switch process's utime+stime")
    out.append("over the frames the two namespaces' links received (a TCP GSO super-frame counts once).")
    out.append("")
    head = "%-28s" % "scenario" + "".join(" %12s" % t[1] for t in present)
    peers = [t for t in present if t[2]]
    head += "".join(" %12s" % ("/" + t[1].split()[0]) for t in peers)
    out.append(head)
    out.append("-" * len(head))
    ratios = []
    for kind, label, scale, unit, key in SCENARIOS:
        b = med("bulkhead", kind)
        cells = ["%-28s" % ("%s (%s)" % (label, unit))]
        for t in present:
            v = med(t[0], kind)
            cells.append(" %12s" % ("%.2f" % (v / scale) if v is not None else "-"))
        for t in peers:
            p = med(t[0], kind)
            ratio = b / p if b is not None and p else None
            cells.append(" %12s" % ("%.2f" % ratio if ratio is not None else "-"))
        out.append("".join(cells))
    cpu_cells = []
    for kind, label, scale, unit, key in SCENARIOS:
        cells = ["%-28s" % ("CPU/frame, %s (ns)" % kind)]
        for t in present:
            v = med(t[0], kind, "switch_cpu_ns_per_frame")
            cells.append(" %12s" % ("%.0f" % v if v is not None else "-"))
        cpu_cells.append("".join(cells))
    out.extend(cpu_cells)
    for t in TOPOLOGIES:
        if t[2]:
            for kind, label, scale, unit, key in SCENARIOS:
                b, p = med("bulkhead", kind), med(t[0], kind)
                ratios.append((key + t[2], b / p if b is not None and p else None, t[3] or t in present))
    out.append("")
    out.append("Per run:")
    for kind, label, scale, unit, key in SCENARIOS:
        for topo, _, _, _ in TOPOLOGIES:
            for r in rows.get((topo, kind), []):
                extra = []
                if kind == "tcp":
                    extra.append("retransmits %d" % r.get("retransmits", -1))
                    extra.append("receiver out-of-order queued %s" % fmtnum(r.get("tcp_ofo_queued")))
                else:
                    d, lost = r.get("delivered", 0), r.get("lost", 0)
                    extra.append("sender %.0f kpps" % (r.get("sender_pps", 0) / 1e3))
                    extra.append("lost %.1f%%" % (100.0 * lost / (d + lost) if d + lost else 0))
                    extra.append("out-of-order %d" % r.get("out_of_order", 0))
                    extra.append("rcvbuf errors %s" % ("%d" % r["rcvbuf_errors"] if isinstance(r.get("rcvbuf_errors"), float) else "-"))
                drops = (r.get("sender_link_tx_dropped"), r.get("receiver_link_rx_dropped"))
                if any(isinstance(d, float) and d > 0 for d in drops):
                    extra.append("link drops tx %s / rx %s" % tuple(fmtnum(d) for d in drops))
                extra.append("machine busy %s%%" % fmtnum(r.get("machine_busy_pct")))
                if topo in CPU_KEYS:
                    extra.append("%s CPU %s%%, %s ns/frame over %s frames" % (
                        r.get("switch_process", "switch"), fmtnum(r.get("switch_cpu_pct")),
                        fmtnum(r.get("switch_cpu_ns_per_frame")), fmtnum(r.get("forwarded_frames"))))
                    if r.get("switch_threads") not in (None, "-"):
                        extra.append("by thread %s" % r["switch_threads"])
                out.append("  %-6s %-15s %10.2f %-6s %s" % (kind, topo, r["value"] / scale, unit, ", ".join(extra)))
    out.append("")
    missing = [k for k, r, required in ratios if r is None and required]
    for key, ratio, _ in ratios:
        if ratio is not None:
            out.append("%s=%.2f" % (key, ratio))
    for topo, key in CPU_KEYS.items():
        for kind, *_ in SCENARIOS:
            v = med(topo, kind, "switch_cpu_ns_per_frame")
            if v is not None:
                out.append("%s.cpu_ns_per_frame.%s=%.0f" % (key, kind, v))
    print("\n".join(out))
    if missing:
        print("missing measurements for: " + ", ".join(missing), file=sys.stderr)
        return 1
    return 0


def fmtnum(v):
    return "%.0f" % v if isinstance(v, float) else "-"


def main(argv):
    if len(argv) >= 3 and argv[1] in ("tcp", "udp64"):
        doc = json.load(open(argv[2]))
        if "error" in doc:
            raise SystemExit("iperf3 reported: %s" % doc["error"])
        print(fmt(tcp(doc) if argv[1] == "tcp" else udp(doc)))
        return 0
    if len(argv) == 4 and argv[1] == "describe":
        print(describe(argv[2], argv[3]))
        return 0
    if len(argv) in (5, 6) and argv[1] == "median":
        vals = []
        for line in open(argv[2]):
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 4 and parts[1] == argv[3] and parts[2] == argv[4]:
                v = parse(parts[3:]).get(argv[5] if len(argv) == 6 else "value")
                if isinstance(v, float):
                    vals.append(v)
        if not vals:
            return 1
        print("%.6g" % statistics.median(vals))
        return 0
    if len(argv) == 3 and argv[1] == "summarize":
        return summarize(argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
