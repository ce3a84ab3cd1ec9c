#!/usr/bin/python3
"""Reads iperf3 3.x JSON for Benchmarks/run-system.sh and summarizes its measurements.

  iperf_json.py tcp FILE             one line of tab-separated key=value metrics, value= first
  iperf_json.py udp64 FILE           the same for the UDP 64-byte test
  iperf_json.py describe KIND LINE   those metrics in words, for the progress log
  iperf_json.py summarize TSV        the table and the ratio lines, from measurements.tsv
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


TOPOLOGIES = ("bulkhead", "linux-bridge")
SCENARIOS = (
    # kind, table label, scale, unit, ratio key
    ("tcp", "TCP throughput", 1e9, "Gbit/s", "ratio.tcp_vs_linux_bridge"),
    ("udp64", "UDP 64 B delivered", 1e3, "kpps", "ratio.udp64_pps_vs_linux_bridge"),
)


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

    out = []
    rounds = max((len(v) for v in rows.values()), default=0)
    out.append("Median of %d round(s) per cell; the rounds alternate which topology goes first." % rounds)
    out.append("")
    out.append("%-28s %14s %14s %7s" % ("scenario", "Bulkhead", "Linux bridge", "ratio"))
    out.append("%-28s %14s %14s %7s" % ("-" * 28, "-" * 14, "-" * 14, "-" * 7))
    ratios = []
    for kind, label, scale, unit, key in SCENARIOS:
        b, l = med("bulkhead", kind), med("linux-bridge", kind)
        ratio = b / l if b is not None and l else None
        out.append("%-28s %14s %14s %7s" % (
            "%s (%s)" % (label, unit),
            "%.2f" % (b / scale) if b is not None else "-",
            "%.2f" % (l / scale) if l is not None else "-",
            "%.2f" % ratio if ratio is not None else "-"))
        ratios.append((key, ratio))
    out.append("")
    out.append("Per run:")
    for kind, label, scale, unit, key in SCENARIOS:
        for topo in TOPOLOGIES:
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
                if topo == "bulkhead":
                    extra.append("daemon CPU %s%%" % fmtnum(r.get("daemon_cpu_pct")))
                    if r.get("daemon_threads") not in (None, "-"):
                        extra.append("by thread %s" % r["daemon_threads"])
                out.append("  %-6s %-13s %10.2f %-6s %s" % (kind, topo, r["value"] / scale, unit, ", ".join(extra)))
    out.append("")
    missing = [k for k, r in ratios if r is None]
    for key, ratio in ratios:
        if ratio is not None:
            out.append("%s=%.2f" % (key, ratio))
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
    if len(argv) == 3 and argv[1] == "summarize":
        return summarize(argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
