# The lines of Benchmarks/run-system.sh about the switch itself: 1 worker against N workers,
# the time from kill -9 of the switch process to the first forwarded frame, and vhost-user port
# to TAP port frames/s. Each is taken where this bulkhead supports it and otherwise skipped with
# a message (on stderr, and as a "# ..." line in the results) that says why. Results go to
# $OUT_DIR/switch.txt. Uses the network part's variables (BIN, CONFIG, addresses). Sourced.
# shellcheck shell=bash

# switch_note TEXT: a skip or remark, in the progress log and in the results.
switch_note() {
    say "$*"
    printf '# %s\n' "$*" >>"$OUT_DIR/switch.txt"
}

# --- 1 worker against N ------------------------------------------------------------------------

# Rows of topologies bulkhead-workers1 and bulkhead-workersN, in measurements-workers.tsv (not
# in measurements.tsv: the table's Bulkhead column is the daemon with its default workers).
# Lines: switch.workersN=N (the N measured: the online CPUs), switch.workers1.tcp_gbps,
# switch.workersN.tcp_gbps, switch.workers1.udp64_kpps, switch.workersN.udp64_kpps, the queues
# each TAP port had, and ratio.switch_workersN_vs_workers1.tcp / .udp64_pps.
switch_workers_compare() {
    local n config1 configN err round tsv=$OUT_DIR/measurements-workers.tsv q1="" qN=""
    n=$(nproc)
    config1=$WORK_DIR/bench-workers1.json configN=$WORK_DIR/bench-workersN.json
    bulkhead_write_config "$config1" "$WORK_DIR/state" "$MAC_A" "$IP_A" "$MAC_B" "$IP_B" 1
    bulkhead_write_config "$configN" "$WORK_DIR/state" "$MAC_A" "$IP_A" "$MAC_B" "$IP_B" "$n"
    # TODO(issue 8, every core): host.switch.workers arrives with the switch's workers; until
    # then the daemon's strict configuration check rejects the key and this part is skipped.
    if ! err=$("$BIN" validate --config "$config1" 2>&1); then
        switch_note "SKIP switch.workers: this bulkhead rejects host.switch.workers, so 1 against $n workers is not measured ($(printf '%s' "$err" | grep -m1 -o 'unknown key[^;]*' || printf '%s' "$err" | head -n 1))"
        return 0
    fi
    if ((n < 2)); then switch_note "SKIP switch.workers: one online CPU, nothing to compare"; return 0; fi
    step "switch workers: 1 against $n, $ROUNDS round(s)"
    : >"$tsv"
    for ((round = 1; round <= ROUNDS; round++)); do
        if ((round % 2)); then
            MEASUREMENTS=$tsv measure_bulkhead "$round" bulkhead-workers1 "$config1"; q1=$BHB_QUEUES
            MEASUREMENTS=$tsv measure_bulkhead "$round" bulkhead-workersN "$configN"; qN=$BHB_QUEUES
        else
            MEASUREMENTS=$tsv measure_bulkhead "$round" bulkhead-workersN "$configN"; qN=$BHB_QUEUES
            MEASUREMENTS=$tsv measure_bulkhead "$round" bulkhead-workers1 "$config1"; q1=$BHB_QUEUES
        fi
    done
    [ "$q1" = 1 ] && [ "$qN" = "$n" ] \
        || switch_note "warning: with 1 and $n workers the TAP ports had $q1 and $qN queues (one per worker expected)"
    local t1 tN u1 uN
    t1=$("$PYTHON" "$BENCH_LIB/iperf_json.py" median "$tsv" bulkhead-workers1 tcp) || die "no 1-worker TCP measurement"
    tN=$("$PYTHON" "$BENCH_LIB/iperf_json.py" median "$tsv" bulkhead-workersN tcp) || die "no $n-worker TCP measurement"
    u1=$("$PYTHON" "$BENCH_LIB/iperf_json.py" median "$tsv" bulkhead-workers1 udp64) || die "no 1-worker UDP measurement"
    uN=$("$PYTHON" "$BENCH_LIB/iperf_json.py" median "$tsv" bulkhead-workersN udp64) || die "no $n-worker UDP measurement"
    awk -v n="$n" -v t1="$t1" -v tN="$tN" -v u1="$u1" -v uN="$uN" -v q1="$q1" -v qN="$qN" 'BEGIN {
        printf "switch.workersN=%d\n", n
        printf "switch.workers1.queues=%s\nswitch.workersN.queues=%s\n", q1, qN
        printf "switch.workers1.tcp_gbps=%.2f\nswitch.workersN.tcp_gbps=%.2f\n", t1 / 1e9, tN / 1e9
        printf "switch.workers1.udp64_kpps=%.0f\nswitch.workersN.udp64_kpps=%.0f\n", u1 / 1e3, uN / 1e3
        printf "ratio.switch_workersN_vs_workers1.tcp=%.2f\n", (t1 > 0 ? tN / t1 : 0)
        printf "ratio.switch_workersN_vs_workers1.udp64_pps=%.2f\n", (u1 > 0 ? uN / u1 : 0) }' >>"$OUT_DIR/switch.txt"
}

# --- restart after kill -9 ---------------------------------------------------------------------

PROBE_PIDS=()
probe_cleanup() {
    local p
    for p in "${PROBE_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    PROBE_PIDS=()
}

# switch.restart_ms: a probe stream (one UDP datagram every 500 us from bhb-a to bhb-b) runs
# through Bulkhead; the `bulkhead switch` process is killed with SIGKILL; the line is the time
# from the kill to the probe that ends the outage (the largest gap between arrivals that ends
# after the kill): the time to the first forwarded frame, within one probe interval. Also: the largest gap between two arrivals.
# Skipped where the switch is a thread of the daemon (no process of its own to kill).
switch_restart_measure() {
    local log="$OUT_DIR/bulkhead-restart.log" spid new_spid total=6 kill_at=1.5 out="$WORK_DIR/probe.arrivals"
    bulkhead_start "$BIN" "$CONFIG" "$log" || die "bulkhead did not start (restart measurement)"
    # TODO(issue 8, the switch process): until the daemon runs `bulkhead switch` as a child
    # there is no switch to kill without killing the daemon and its TAPs with it.
    if ! spid=$(bulkhead_switch_pid); then
        bulkhead_stop "$log" || die "bulkhead did not stop cleanly (restart measurement)"
        switch_note "SKIP switch.restart_ms: no 'bulkhead switch' process (pgrep -f 'bulkhead switch' finds none under the daemon, pid $spid): the switch is a thread of the daemon"
        return 0
    fi
    step "switch restart: kill -9 of bulkhead switch (pid $spid) under a probe stream"
    rm -f "$out" "$out.ready"
    ip netns exec bhb-b "$PYTHON" "$BENCH_LIB/udp_probe.py" receive 5301 "$total" "$out" &
    PROBE_PIDS+=($!)
    local i
    for ((i = 0; i < 50; i++)); do [ -e "$out.ready" ] && break; sleep 0.1; done
    [ -e "$out.ready" ] || die "the probe receiver in bhb-b did not start"
    ip netns exec bhb-a "$PYTHON" "$BENCH_LIB/udp_probe.py" send "$SERVER_IP" 5301 500 "$((total - 1))" &
    PROBE_PIDS+=($!)
    sleep "$kill_at"
    local kill_time
    kill_time=$EPOCHREALTIME  # a builtin, so nothing is forked between the time and the kill
    kill -KILL "$spid" || die "could not kill bulkhead switch (pid $spid)"
    for i in "${PROBE_PIDS[@]}"; do wait "$i" || die "the restart probe (pid $i) failed"; done
    PROBE_PIDS=()
    new_spid=$(bulkhead_switch_pid) || new_spid=""
    local result
    result=$("$PYTHON" "$BENCH_LIB/udp_probe.py" gap "$out" "$kill_time") || die "could not read the probe arrivals"
    cp "$out" "$OUT_DIR/restart-probe-arrivals.txt"
    bulkhead_stop "$log" || die "bulkhead did not stop cleanly after the switch restart"
    local restart gap before after
    restart=$(sed -n 's/^restart_ms=//p' <<<"$result") gap=$(sed -n 's/^largest_gap_ms=//p' <<<"$result")
    before=$(sed -n 's/^before=//p' <<<"$result") after=$(sed -n 's/^after=//p' <<<"$result")
    ((before > 0)) || die "no probe reached bhb-b before the kill: the probe stream did not run"
    [ -n "$new_spid" ] && [ "$new_spid" != "$spid" ] || die "bulkhead switch was not restarted after kill -9 (log: $log)"
    [ "$restart" != - ] || die "no probe reached bhb-b in the $(awk -v t="$total" -v k="$kill_at" 'BEGIN { print t - k }') s after kill -9 of the switch (restarted as pid $new_spid)"
    say "   switch restart: ${restart} ms from kill -9 to the first probe through (largest gap ${gap} ms; $before probes before, $after after)"
    printf 'switch.restart_ms=%s\nswitch.restart_largest_gap_ms=%s\n' "$restart" "$gap" >>"$OUT_DIR/switch.txt"
}

# --- vhost-user port to TAP port ---------------------------------------------------------------

# TODO(issue 8, vhost-user-net ports): 64- and 1500-byte frames/s from a vhost-user port (driven
# by a NetLoad frontend, like BlockLoad for block) to a TAP port, and through DPDK testpmd where
# it runs. Until a NetLoad tool exists this is skipped.
switch_vhost_user_measure() {
    # A vhost-user port and a TAP port of one tenant through the daemon (Benchmarks/lib/vhost.sh):
    # NetLoad (our frontend) both ways, and dpdk-testpmd's txonly where it runs.
    source "$REPO/Benchmarks/lib/vhost.sh"
    local netload
    netload=$(build_product NetLoad NETLOAD_BINARY)
    vhost_run "$BIN" "$netload" >>"$OUT_DIR/switch.txt"
}
