# Shared helpers of Benchmarks/run-system.sh: messages, namespace and process cleanup, the
# iperf3 runs and the bookkeeping of one measurement. Sourced, not run.
# shellcheck shell=bash

PYTHON=${PYTHON:-/usr/bin/python3}
BENCH_LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

say()  { printf '%s\n' "$*" >&2; }
step() { printf '== %s\n' "$*" >&2; }
die()  { printf 'run-system: error: %s\n' "$*" >&2; exit 1; }

# Removes a named network namespace, first ending the processes still inside it (iperf3 servers
# of an earlier, aborted run: a namespace lives on while a process holds it).
netns_remove() {
    local ns=$1 pid
    [ -e "/run/netns/$ns" ] || return 0
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null || true; done
    ip netns delete "$ns" 2>/dev/null || say "warning: could not delete namespace $ns"
}

# namespace_link_attach IFNAME MAC IP: moves link IFNAME (a TAP a peer switch holds) into the
# namespace of the same name, created when missing, and gives it MAC and IP (with prefix
# length), as the Bulkhead daemon does with its TAP ports. The peers' links are named like their
# namespace, which link_counter relies on.
namespace_link_attach() {
    local ifname=$1 mac=$2 ip=$3
    [ -e "/run/netns/$ifname" ] || ip netns add "$ifname" || return 1
    ip link set "$ifname" netns "$ifname" || return 1
    ip -n "$ifname" link set lo up || return 1
    ip -n "$ifname" link set "$ifname" address "$mac" || return 1
    ip -n "$ifname" addr add "$ip" dev "$ifname" || return 1
    ip -n "$ifname" link set "$ifname" up || return 1
}

# wait_link IFNAME: waits up to 10 s until link IFNAME exists in this namespace.
wait_link() {
    local i
    for ((i = 0; i < 100; i++)); do ip link show "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}

# Ends the process whose id is in pidfile $1, if it is still running; waits up to 3 s.
kill_pidfile() {
    local file=$1 pid i
    [ -s "$file" ] || return 0
    pid=$(tr -dc 0-9 <"$file")
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || { rm -f "$file"; return 0; }
    for ((i = 0; i < 30; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$file"
}

# Waits until something listens on TCP port 5201 in namespace $1 (iperf3 -D returns before the
# server listens). Up to 5 s.
wait_iperf_server() {
    local ns=$1 i
    for ((i = 0; i < 50; i++)); do
        if ip netns exec "$ns" ss -Hltn 'sport = :5201' 2>/dev/null | grep -q .; then return 0; fi
        sleep 0.1
    done
    return 1
}

# Sums utime+stime (clock ticks) of every thread of process $1; empty when it is gone.
proc_cpu_ticks() {
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null
}

# One line per thread of process $1: "TID COMM TICKS" (utime+stime; spaces in COMM become _).
thread_ticks() {
    local t
    for t in /proc/"$1"/task/*; do
        awk -v tid="${t##*/}" '{ c = $0; sub(/^[^(]*\(/, "", c); sub(/\) [^)]*$/, "", c); gsub(/ /, "_", c)
                                 sub(/^.*\) /, ""); print tid, c, $12 + $13 }' "$t/stat" 2>/dev/null
    done
}

# thread_usage BEFORE AFTER HZ SECONDS: the CPU use of a process's threads between two
# thread_ticks listings, grouped by name (iou-wrk-123 and iou-wrk-124 are "iou-wrk"), busiest
# first, as "name:percent(threads),...". Threads that exited in between are missed (their time
# shows in the process total only), so the groups can sum to less than the process.
thread_usage() {
    awk -v hz="$3" -v w="$4" '
        NR == FNR { before[$1] = $3; next }
        { name = $2; sub(/-[0-9]+$/, "", name); d = $3 - (($1 in before) ? before[$1] : 0)
          use[name] += d; n[name]++ }
        END { for (k in use) if (use[k] > 0) printf "%.0f %s:%.0f(%d)\n", use[k], k, 100 * use[k] / hz / w, n[k] }' \
        "$1" "$2" | sort -rn | awk '{ printf "%s%s", sep, $2; sep = "," } END { print "" }'
}

# Busy and total jiffies of the whole machine, from /proc/stat's cpu line.
machine_ticks() {
    awk '/^cpu /{ idle = $5 + $6; total = 0; for (i = 2; i <= NF; i++) total += $i; print total - idle, total; exit }' /proc/stat
}

# Counters of /proc/net/snmp's Udp line in namespace $1, as "InDatagrams RcvbufErrors".
udp_counters() {
    ip netns exec "$1" awk '/^Udp:/ { if (!seen) { for (i = 1; i <= NF; i++) col[$i] = i; seen = 1 } else { print $col["InDatagrams"], $col["RcvbufErrors"]; exit } }' /proc/net/snmp
}

# TcpExt TCPOFOQueue of namespace $1 (/proc/net/netstat): segments the TCP receiver had to queue
# out of order (reordering, or a gap left by a loss).
tcp_ofo_counter() {
    ip netns exec "$1" awk '/^TcpExt:/ { if (!seen) { for (i = 1; i <= NF; i++) col[$i] = i; seen = 1 } else { print $col["TCPOFOQueue"] + 0; exit } }' /proc/net/netstat
}

# Value of /sys/class/net/IFACE/statistics/COUNTER in namespace NS ($1 $2 $3); the interfaces
# of both topologies are named like their namespace.
link_counter() {
    ip netns exec "$1" cat "/sys/class/net/$2/statistics/$3" 2>/dev/null || echo 0
}

IPERF_CLIENT_PID=""

# Ends a client run_iperf left running (the script was interrupted).
stop_iperf_client() {
    [ -n "$IPERF_CLIENT_PID" ] || return 0
    kill -TERM "$IPERF_CLIENT_PID" 2>/dev/null || true
    wait "$IPERF_CLIENT_PID" 2>/dev/null || true
    IPERF_CLIENT_PID=""
}

# run_iperf TOPOLOGY KIND ROUND NS_CLIENT NS_SERVER SWITCH_PID
#   KIND is tcp or udp64. Runs one iperf3 test of $DURATION seconds from NS_CLIENT to the server
#   in NS_SERVER at $SERVER_IP; writes the client's JSON (with the server's JSON inside, from
#   --get-server-output) to $OUT_DIR/TOPOLOGY-KIND-rROUND.json and appends a line to
#   $MEASUREMENTS (default $OUT_DIR/measurements.tsv). SWITCH_PID (or - for the kernel's bridge) is the user-space
#   process that forwards the frames: its CPU use is recorded, and its CPU time per forwarded
#   frame, where the frames forwarded are those the two namespaces' links received
#   (rx_packets: what the switch wrote into their TAPs, a GSO super-frame counting once).
run_iperf() {
    local topo=$1 kind=$2 round=$3 ns_c=$4 ns_s=$5 dpid=$6
    local base="$OUT_DIR/$topo-$kind-r$round"
    local pidfile="$WORK_DIR/iperf3-server.pid"
    local args=(-c "$SERVER_IP" -t "$DURATION" -J --get-server-output --connect-timeout 5000)
    [ "$kind" = udp64 ] && args+=(-u -l 64 -b 0)

    kill_pidfile "$pidfile"
    # -J on the server too: then --get-server-output hands back its JSON (server_output_json),
    # the receiver's own counters, instead of its text report.
    ip netns exec "$ns_s" iperf3 -s -1 -D -J --logfile "$base.server.json" -I "$pidfile" \
        || { say "iperf3 server did not start in $ns_s"; return 1; }
    wait_iperf_server "$ns_s" || { say "iperf3 server in $ns_s is not listening on :5201"; return 1; }

    local udp_before cpu_before d_before="" txd_before rxd_before ofo_before fwd_before
    udp_before=$(udp_counters "$ns_s")
    fwd_before=$(( $(link_counter "$ns_c" "$ns_c" rx_packets) + $(link_counter "$ns_s" "$ns_s" rx_packets) ))
    ofo_before=$(tcp_ofo_counter "$ns_s")
    txd_before=$(link_counter "$ns_c" "$ns_c" tx_dropped)
    rxd_before=$(link_counter "$ns_s" "$ns_s" rx_dropped)
    cpu_before=$(machine_ticks)
    [ "$dpid" != - ] && d_before=$(proc_cpu_ticks "$dpid") && thread_ticks "$dpid" >"$WORK_DIR/threads.before"

    # A top snapshot (threads) in the middle of the run: the second of two 1 s frames, so that
    # %CPU is measured over that second and not since each thread started.
    local snap_pid=""
    if [ -n "${SNAPSHOT_TOP:-}" ]; then
        ( sleep "$(awk -v d="$DURATION" 'BEGIN { print (d > 3 ? d / 2 - 0.5 : 1) }')"
          # procps-ng's top -H shows a thread group's leader with the whole process's %CPU; the
          # daemon's leader (an idle main thread) is dropped so that its busy thread is not
          # counted twice. Per-thread figures over the whole run come from /proc instead.
          top -b -H -d 1 -n 2 -w 200 2>/dev/null | awk '/^top -/{ n++ } n == 2' \
              | awk -v leader="$dpid" '$1 != leader' >"$base.top.txt" ) &
        snap_pid=$!
    fi

    # In the background, waited for with `wait`: a signal to this script (Ctrl-C, a CI job's
    # SIGTERM) then runs its trap at once instead of after the client; timeout(1) puts the
    # client in a process group of its own, where the terminal's Ctrl-C does not reach it.
    local rc=0 start end
    start=$(date +%s.%N)
    timeout $((DURATION + 30)) ip netns exec "$ns_c" iperf3 "${args[@]}" >"$base.json" 2>"$base.stderr" &
    IPERF_CLIENT_PID=$!
    wait "$IPERF_CLIENT_PID" || rc=$?
    IPERF_CLIENT_PID=""
    end=$(date +%s.%N)
    [ -n "$snap_pid" ] && wait "$snap_pid" 2>/dev/null

    local cpu_after udp_after d_after="" txd_after rxd_after ofo_after fwd_after
    cpu_after=$(machine_ticks)
    fwd_after=$(( $(link_counter "$ns_c" "$ns_c" rx_packets) + $(link_counter "$ns_s" "$ns_s" rx_packets) ))
    udp_after=$(udp_counters "$ns_s")
    ofo_after=$(tcp_ofo_counter "$ns_s")
    txd_after=$(link_counter "$ns_c" "$ns_c" tx_dropped)
    rxd_after=$(link_counter "$ns_s" "$ns_s" rx_dropped)
    [ "$dpid" != - ] && d_after=$(proc_cpu_ticks "$dpid") && thread_ticks "$dpid" >"$WORK_DIR/threads.after"
    kill_pidfile "$pidfile"

    if [ "$rc" != 0 ]; then
        say "iperf3 $kind client ($topo, round $round) failed with status $rc:"
        sed 's/^/    /' "$base.stderr" >&2
        "$PYTHON" - "$base.json" <<'PY' >&2 || true
import json, sys
try:
    print("    iperf3 says:", json.load(open(sys.argv[1])).get("error", "(no error field)"))
except Exception as e:
    print("    (no JSON from the client: %s)" % e)
PY
        return 1
    fi

    local hz wall machine_busy daemon_cpu=- daemon_threads=- ns_per_frame=- forwarded=$((fwd_after - fwd_before))
    hz=$(getconf CLK_TCK)
    wall=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
    machine_busy=$(awk -v b="$cpu_before" -v a="$cpu_after" 'BEGIN { split(b, x, " "); split(a, y, " ");
        t = y[2] - x[2]; if (t > 0) printf "%.0f", 100 * (y[1] - x[1]) / t; else print "-" }')
    if [ -n "$d_before" ] && [ -n "$d_after" ]; then
        daemon_cpu=$(awk -v b="$d_before" -v a="$d_after" -v hz="$hz" -v w="$wall" \
            'BEGIN { printf "%.0f", 100 * (a - b) / hz / w }')
        daemon_threads=$(thread_usage "$WORK_DIR/threads.before" "$WORK_DIR/threads.after" "$hz" "$wall")
        [ -n "$daemon_threads" ] || daemon_threads=-
        ns_per_frame=$(awk -v b="$d_before" -v a="$d_after" -v hz="$hz" -v f="$forwarded" \
            'BEGIN { if (f > 0) printf "%.0f", (a - b) / hz * 1e9 / f; else print "-" }')
    fi
    local metrics
    metrics=$("$PYTHON" "$BENCH_LIB/iperf_json.py" "$kind" "$base.json") \
        || { say "cannot read the iperf3 JSON of $topo $kind round $round ($base.json)"; return 1; }
    # Socket-level drops at the receiver (its UDP receive buffer overflowed), from /proc/net/snmp.
    local rcvbuf_errors
    rcvbuf_errors=$(awk -v b="$udp_before" -v a="$udp_after" 'BEGIN { split(b, x, " "); split(a, y, " "); print y[2] - x[2] }')
    # Drops on the sender's link (a TAP whose reader falls behind drops here) and the receiver's.
    printf '%s\t%s\t%s\t%s\tmachine_busy_pct=%s\tswitch_cpu_pct=%s\tswitch_threads=%s\trcvbuf_errors=%s\ttcp_ofo_queued=%s\tsender_link_tx_dropped=%s\treceiver_link_rx_dropped=%s\tforwarded_frames=%s\tswitch_cpu_ns_per_frame=%s\tswitch_process=%s\n' \
        "$round" "$topo" "$kind" "$metrics" "$machine_busy" "$daemon_cpu" "$daemon_threads" "$rcvbuf_errors" "$((ofo_after - ofo_before))" \
        "$((txd_after - txd_before))" "$((rxd_after - rxd_before))" "$forwarded" "$ns_per_frame" "${SWITCH_PROCESS:--}" >>"${MEASUREMENTS:-$OUT_DIR/measurements.tsv}"
    say "   $(printf '%-15s %-6s round %s: ' "$topo" "$kind" "$round")$("$PYTHON" "$BENCH_LIB/iperf_json.py" describe "$kind" "$metrics") (machine busy ${machine_busy}%$([ "$dpid" = - ] || echo ", ${SWITCH_PROCESS:-switch} ${daemon_cpu}%, ${ns_per_frame} ns/frame"))"
}

# wait_ready PID LOG TEXT NAME [SOCKET]: waits up to 30 s until the log LOG of process PID (NAME
# in messages) contains TEXT and, when given, SOCKET exists as a socket. Returns 0 when ready;
# 1 when the process exited first (it has been reaped); 2 when the time ran out (it still runs).
# Either failure prints the log.
wait_ready() {
    local pid=$1 log=$2 text=$3 name=$4 socket=${5:-}
    local deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
        if grep -q "$text" "$log" && { [ -z "$socket" ] || [ -S "$socket" ]; }; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            local rc=0
            wait "$pid" || rc=$?
            say "$name exited with status $rc before it was ready; its log ($log):"
            sed 's/^/    /' "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    say "$name did not log '$text' within 30 s; its log ($log):"
    sed 's/^/    /' "$log" >&2
    return 2
}
