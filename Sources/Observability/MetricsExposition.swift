import Prometheus
import Switch

/// Renders a `MetricsSnapshot` as Prometheus text exposition (format 0.0.4) with
/// swift-prometheus's `PrometheusCollectorRegistry`.
///
/// Each scrape fills a fresh registry: the snapshot's values are totals, so every counter is
/// created at zero and incremented once by its total, which the registry renders as a
/// `counter` (a gauge set to the total would be typed `gauge`, and resetting a long-lived
/// counter would let a concurrent scrape see it drop). A fresh registry also forgets a port,
/// volume or partition removed from the configuration instead of exposing it frozen forever.
public enum MetricsExposition {
    /// The `Content-Type` of the text format.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    /// The exposition of `snapshot`, as UTF-8 bytes.
    public static func render(_ snapshot: MetricsSnapshot) -> [UInt8] {
        let registry = PrometheusCollectorRegistry()
        if let statistics = snapshot.switchStatistics {
            addSwitch(statistics, to: registry)
        }
        addPartitions(snapshot.partitions, to: registry)
        addChildren(snapshot.children, to: registry)
        if let volumes = snapshot.volumes {
            addVolumes(volumes, to: registry)
        }
        if let records = snapshot.auditRecordsWritten {
            registry.counter(.auditRecords, [], records)
        }
        if let applies = snapshot.configurationApplies {
            registry.counter(.applies, [], applies.attempts)
            registry.counter(.applyFailures, [], applies.failures)
        }
        if let fleet = snapshot.fleet {
            registry.gauge(.fleetConnected, [], fleet.connected ? 1 : 0)
            registry.gauge(.fleetRemoteHosts, [], Int64(fleet.remoteHosts))
            registry.counter(.underlayUnknownVNI, [], fleet.unknownVNIDatagrams)
        }
        return registry.emitToBuffer()
    }

    /// The exposition of `snapshot` as a string.
    public static func renderText(_ snapshot: MetricsSnapshot) -> String {
        String(decoding: render(snapshot), as: UTF8.self)
    }

    private static func addSwitch(_ statistics: SwitchStatistics, to registry: PrometheusCollectorRegistry) {
        // Segment totals are the sums of their ports' counters, keyed by tenant and segment.
        var segments: [SegmentKey: SegmentTotals] = [:]
        for port in statistics.ports {
            let labels = [("tenant", port.tenant), ("segment", port.segment), ("port", port.port), ("interface", port.interface)]
            registry.counter(.portRxFrames, labels, port.rx.frames)
            registry.counter(.portRxBytes, labels, port.rx.bytes)
            registry.counter(.portTxFrames, labels, port.tx.frames)
            registry.counter(.portTxBytes, labels, port.tx.bytes)
            registry.counter(.portMACLearned, labels, port.macLearning.learned)
            registry.counter(.portMACRefused, labels, port.macLearning.refused)
            // Sorted so that the exposition of one snapshot is the same every time.
            for (reason, count) in port.drops.sorted(by: { $0.key < $1.key }) {
                registry.counter(.portDrops, labels + [("reason", reason)], count)
            }
            let key = SegmentKey(tenant: port.tenant, segment: port.segment)
            segments[key, default: SegmentTotals()].add(port)
        }
        for segment in statistics.segments {
            let labels = [("tenant", segment.tenant), ("segment", segment.segment)]
            registry.gauge(.segmentMACEntries, labels, Int64(clamping: segment.macEntries))
        }
        for (key, totals) in segments.sorted(by: { ($0.key.tenant, $0.key.segment) < ($1.key.tenant, $1.key.segment) }) {
            let labels = [("tenant", key.tenant), ("segment", key.segment)]
            registry.counter(.segmentRxFrames, labels, totals.rx.frames)
            registry.counter(.segmentRxBytes, labels, totals.rx.bytes)
            registry.counter(.segmentTxFrames, labels, totals.tx.frames)
            registry.counter(.segmentTxBytes, labels, totals.tx.bytes)
            for (reason, count) in totals.drops.sorted(by: { $0.key < $1.key }) {
                registry.counter(.segmentDrops, labels + [("reason", reason)], count)
            }
        }
    }

    private static func addPartitions(_ partitions: [PartitionMetrics], to registry: PrometheusCollectorRegistry) {
        for partition in partitions {
            let labels = [("tenant", partition.tenant), ("partition", partition.id)]
            registry.gauge(.partitionState, labels + [("state", partition.state)], 1)
            registry.counter(.partitionStarts, labels, partition.starts)
            registry.counter(.partitionRestarts, labels, partition.restarts)
        }
    }

    private static func addChildren(_ children: [ChildMetrics], to registry: PrometheusCollectorRegistry) {
        for child in children {
            var labels = [("kind", child.kind)]
            if let tenant = child.tenant { labels.append(("tenant", tenant)) }
            if let partition = child.partition { labels.append(("partition", partition)) }
            registry.gauge(.childUp, labels, child.up ? 1 : 0)
            registry.counter(.childRestarts, labels, child.restarts)
        }
    }

    private static func addVolumes(_ volumes: [VolumeMetrics], to registry: PrometheusCollectorRegistry) {
        for volume in volumes {
            let labels = [("tenant", volume.tenant), ("volume", volume.volume)]
            registry.counter(.volumeRequests, labels + [("op", "read")], volume.reads)
            registry.counter(.volumeRequests, labels + [("op", "write")], volume.writes)
            registry.counter(.volumeRequests, labels + [("op", "flush")], volume.flushes)
            registry.counter(.volumeBytes, labels + [("op", "read")], volume.readBytes)
            registry.counter(.volumeBytes, labels + [("op", "write")], volume.writtenBytes)
            registry.counter(.volumeErrors, labels, volume.errors)
            registry.counter(.volumeThrottled, labels, volume.throttled)
        }
    }

    private struct SegmentKey: Hashable {
        var tenant: String
        var segment: String
    }

    private struct SegmentTotals {
        var rx = TrafficCounters()
        var tx = TrafficCounters()
        var drops: [String: UInt64] = [:]

        /// Sums saturate: a sum past 2^64 stays at the maximum instead of wrapping to a small
        /// number a scraper would read as a counter reset.
        mutating func add(_ port: PortStatistics) {
            rx.frames = rx.frames.saturatingAdd(port.rx.frames)
            rx.bytes = rx.bytes.saturatingAdd(port.rx.bytes)
            tx.frames = tx.frames.saturatingAdd(port.tx.frames)
            tx.bytes = tx.bytes.saturatingAdd(port.tx.bytes)
            drops.merge(port.drops) { $0.saturatingAdd($1) }
        }
    }
}

/// The metrics the endpoint exposes: each name with its help text, in one place (the registry
/// traps on one name registered with two help texts or two types).
public struct MetricFamily: Sendable, Hashable {
    public let name: String
    public let help: String

    init(name: String, help: String) {
        self.name = name; self.help = help
    }

    /// The registry's form: the whole name as `metricName` (no namespace, subsystem or unit
    /// to join) and the help text.
    var descriptor: MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    static let portRxFrames = MetricFamily(name: "bulkhead_port_rx_frames_total",
                                           help: "Frames the port sent into the switch, dropped ones included.")
    static let portRxBytes = MetricFamily(name: "bulkhead_port_rx_bytes_total",
                                          help: "Bytes of the frames the port sent into the switch, dropped ones included.")
    static let portTxFrames = MetricFamily(name: "bulkhead_port_tx_frames_total",
                                           help: "Frames the switch wrote to the port.")
    static let portTxBytes = MetricFamily(name: "bulkhead_port_tx_bytes_total",
                                          help: "Bytes of the frames the switch wrote to the port.")
    static let portDrops = MetricFamily(name: "bulkhead_port_drops_total",
                                        help: "Frames from the port that the switch dropped, by reason.")
    static let portMACLearned = MetricFamily(name: "bulkhead_port_mac_learned_total",
                                             help: "MAC addresses learned on the port (new or moved to it).")
    static let portMACRefused = MetricFamily(name: "bulkhead_port_mac_refused_total",
                                             help: "MAC addresses not learned on the port because of the port's or the segment's limit.")
    static let segmentMACEntries = MetricFamily(name: "bulkhead_segment_mac_entries",
                                                help: "Entries in the segment's MAC table: static MACs plus learned ones.")
    static let segmentRxFrames = MetricFamily(name: "bulkhead_segment_rx_frames_total",
                                              help: "Frames the segment's ports sent into the switch.")
    static let segmentRxBytes = MetricFamily(name: "bulkhead_segment_rx_bytes_total",
                                             help: "Bytes of the frames the segment's ports sent into the switch.")
    static let segmentTxFrames = MetricFamily(name: "bulkhead_segment_tx_frames_total",
                                              help: "Frames the switch wrote to the segment's ports.")
    static let segmentTxBytes = MetricFamily(name: "bulkhead_segment_tx_bytes_total",
                                             help: "Bytes of the frames the switch wrote to the segment's ports.")
    static let segmentDrops = MetricFamily(name: "bulkhead_segment_drops_total",
                                           help: "Frames from the segment's ports that the switch dropped, by reason.")
    static let partitionState = MetricFamily(name: "bulkhead_partition_state",
                                             help: "1 for the partition's current state (label state).")
    static let partitionStarts = MetricFamily(name: "bulkhead_partition_starts_total",
                                              help: "Times the partition's VMM was started.")
    static let partitionRestarts = MetricFamily(name: "bulkhead_partition_restarts_total",
                                                help: "Times the partition's VMM was started again after it ended.")
    static let childUp = MetricFamily(name: "bulkhead_child_up",
                                      help: "1 when the supervised child process is running, else 0.")
    static let childRestarts = MetricFamily(name: "bulkhead_child_restarts_total",
                                            help: "Times the supervisor restarted the child process after it ended.")
    static let volumeRequests = MetricFamily(name: "bulkhead_volume_requests_total",
                                             help: "Completed requests on the volume, by operation.")
    static let volumeBytes = MetricFamily(name: "bulkhead_volume_bytes_total",
                                          help: "Bytes read from or written to the volume, by operation.")
    static let volumeErrors = MetricFamily(name: "bulkhead_volume_errors_total",
                                           help: "Requests on the volume answered with an error status.")
    static let volumeThrottled = MetricFamily(name: "bulkhead_volume_throttled_total",
                                              help: "Requests on the volume delayed by its QoS limit.")
    static let auditRecords = MetricFamily(name: "bulkhead_audit_records_total",
                                           help: "Records appended to the audit log.")
    static let applies = MetricFamily(name: "bulkhead_config_applies_total",
                                      help: "Configuration applies attempted (API or SIGHUP).")
    static let applyFailures = MetricFamily(name: "bulkhead_config_apply_failures_total",
                                            help: "Configuration applies that changed nothing: invalid, unauthorised or failed.")
    static let fleetConnected = MetricFamily(name: "bulkhead_fleet_connected",
                                             help: "1 while the fleet map (etcd) answers; 0 while the host forwards with its last map.")
    static let fleetRemoteHosts = MetricFamily(name: "bulkhead_fleet_remote_hosts",
                                               help: "Other hosts in the fleet map.")
    static let underlayUnknownVNI = MetricFamily(name: "bulkhead_underlay_unknown_vni_datagrams_total",
                                                 help: "VXLAN datagrams whose VNI no tenant of this host has, dropped.")

    /// Every family the endpoint may expose.
    public static let all: [MetricFamily] = [
        portRxFrames, portRxBytes, portTxFrames, portTxBytes, portDrops, portMACLearned, portMACRefused,
        segmentMACEntries, segmentRxFrames, segmentRxBytes, segmentTxFrames, segmentTxBytes, segmentDrops,
        partitionState, partitionStarts, partitionRestarts, childUp, childRestarts,
        volumeRequests, volumeBytes, volumeErrors, volumeThrottled, auditRecords, applies, applyFailures,
        fleetConnected, fleetRemoteHosts, underlayUnknownVNI,
    ]
}

private extension PrometheusCollectorRegistry {
    /// A counter at `total`. Totals past Int64.max (the registry's integer) are held there.
    func counter(_ family: MetricFamily, _ labels: [(String, String)], _ total: UInt64) {
        // The same labels twice (a snapshot listing one port twice) would add up: make that a
        // fresh value instead by resetting first.
        let counter = makeCounter(descriptor: family.descriptor, labels: labels)
        counter.reset()
        counter.increment(by: Int64(clamping: total))
    }

    func gauge(_ family: MetricFamily, _ labels: [(String, String)], _ value: Int64) {
        makeGauge(descriptor: family.descriptor, labels: labels).set(value)
    }
}

private extension UInt64 {
    func saturatingAdd(_ other: UInt64) -> UInt64 {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? .max : sum
    }
}
