import Observability
import Switch
import XCTest

final class MetricsExpositionTests: XCTestCase {
    private func port(_ tenant: String, _ port: String, segment: String = "lan", interface: String,
                      rx: (UInt64, UInt64), tx: (UInt64, UInt64), drops: [DropReason: UInt64] = [:]) -> PortStatistics {
        // Every reason is present, as the switch reports it.
        var all = Dictionary(uniqueKeysWithValues: DropReason.allCases.map { ($0.name, UInt64(0)) })
        for (reason, count) in drops { all[reason.name] = count }
        return PortStatistics(index: 0, tenant: tenant, port: port, segment: segment, interface: interface,
                              rx: TrafficCounters(frames: rx.0, bytes: rx.1), tx: TrafficCounters(frames: tx.0, bytes: tx.1),
                              drops: all, macLearning: MACLearningStatistics(learned: 3, refused: 1))
    }

    private func sampleSnapshot() -> MetricsSnapshot {
        let statistics = SwitchStatistics(
            ports: [
                port("blue", "a", interface: "bh-blue-a", rx: (10, 1000), tx: (20, 2000), drops: [.sourceMACSpoofed: 4, .rateLimit: 2]),
                port("blue", "b", interface: "bh-blue-b", rx: (5, 500), tx: (7, 700), drops: [.sourceMACSpoofed: 1]),
                port("red", "a", interface: "bh-red-a", rx: (1, 64), tx: (0, 0)),
            ],
            segments: [SegmentStatistics(tenant: "blue", segment: "lan", macEntries: 4),
                       SegmentStatistics(tenant: "red", segment: "lan", macEntries: 1)])
        return MetricsSnapshot(
            switchStatistics: statistics,
            partitions: [PartitionMetrics(tenant: "blue", id: "guest", state: "running", starts: 3, restarts: 2)],
            children: [ChildMetrics(kind: "switch", restarts: 1, up: true),
                       ChildMetrics(kind: "block-server", tenant: "blue", restarts: 0, up: false),
                       ChildMetrics(kind: "partition", tenant: "blue", partition: "guest", restarts: 2, up: true)],
            volumes: [VolumeMetrics(tenant: "blue", volume: "data", reads: 11, readBytes: 4096 * 11, writes: 5,
                                    writtenBytes: 4096 * 5, flushes: 2, errors: 1, throttled: 9)],
            auditRecordsWritten: 42,
            configurationApplies: ApplyMetrics(attempts: 6, failures: 2),
            fleet: FleetMetrics(connected: true, remoteHosts: 1, unknownVNIDatagrams: 3))
    }

    func testPortCountersCarryTheirLabelsAndAreCounters() throws {
        let exposition = try Exposition(MetricsExposition.renderText(sampleSnapshot()))
        let blueA = ["tenant": "blue", "segment": "lan", "port": "a", "interface": "bh-blue-a"]
        XCTAssertEqual(exposition.value("bulkhead_port_rx_frames_total", blueA), 10)
        XCTAssertEqual(exposition.value("bulkhead_port_rx_bytes_total", blueA), 1000)
        XCTAssertEqual(exposition.value("bulkhead_port_tx_frames_total", blueA), 20)
        XCTAssertEqual(exposition.value("bulkhead_port_tx_bytes_total", blueA), 2000)
        XCTAssertEqual(exposition.value("bulkhead_port_mac_learned_total", blueA), 3)
        XCTAssertEqual(exposition.value("bulkhead_port_mac_refused_total", blueA), 1)
        XCTAssertEqual(exposition.samples("bulkhead_port_rx_frames_total").count, 3)
        for name in ["bulkhead_port_rx_frames_total", "bulkhead_port_drops_total", "bulkhead_segment_drops_total",
                     "bulkhead_partition_restarts_total", "bulkhead_audit_records_total", "bulkhead_volume_requests_total"] {
            XCTAssertEqual(exposition.types[name], "counter", name)
            XCTAssertNotNil(exposition.helps[name], name)
        }
        XCTAssertEqual(exposition.types["bulkhead_segment_mac_entries"], "gauge")
        XCTAssertEqual(exposition.types["bulkhead_child_up"], "gauge")
    }

    func testDropsByEveryReason() throws {
        let exposition = try Exposition(MetricsExposition.renderText(sampleSnapshot()))
        let blueA = ["tenant": "blue", "segment": "lan", "port": "a", "interface": "bh-blue-a"]
        let drops = exposition.samples("bulkhead_port_drops_total", blueA)
        XCTAssertEqual(Set(drops.compactMap { $0.labels["reason"] }), Set(DropReason.allCases.map(\.name)))
        XCTAssertEqual(exposition.value("bulkhead_port_drops_total", blueA.merging(["reason": "source-mac-spoofed"]) { $1 }), 4)
        XCTAssertEqual(exposition.value("bulkhead_port_drops_total", blueA.merging(["reason": "rate-limit"]) { $1 }), 2)
        XCTAssertEqual(exposition.value("bulkhead_port_drops_total", blueA.merging(["reason": "acl-ingress"]) { $1 }), 0)
    }

    func testSegmentsSumTheirPortsAndKeepTenantsApart() throws {
        let exposition = try Exposition(MetricsExposition.renderText(sampleSnapshot()))
        let blue = ["tenant": "blue", "segment": "lan"]
        let red = ["tenant": "red", "segment": "lan"]
        XCTAssertEqual(exposition.value("bulkhead_segment_rx_frames_total", blue), 15)
        XCTAssertEqual(exposition.value("bulkhead_segment_tx_bytes_total", blue), 2700)
        XCTAssertEqual(exposition.value("bulkhead_segment_rx_frames_total", red), 1)
        XCTAssertEqual(exposition.value("bulkhead_segment_drops_total", blue.merging(["reason": "source-mac-spoofed"]) { $1 }), 5)
        XCTAssertEqual(exposition.value("bulkhead_segment_mac_entries", blue), 4)
        XCTAssertEqual(exposition.value("bulkhead_segment_mac_entries", red), 1)
    }

    func testPartitionsChildrenVolumesAuditAndApplies() throws {
        let exposition = try Exposition(MetricsExposition.renderText(sampleSnapshot()))
        let guest = ["tenant": "blue", "partition": "guest"]
        XCTAssertEqual(exposition.value("bulkhead_partition_state", guest.merging(["state": "running"]) { $1 }), 1)
        XCTAssertEqual(exposition.value("bulkhead_partition_starts_total", guest), 3)
        XCTAssertEqual(exposition.value("bulkhead_partition_restarts_total", guest), 2)
        XCTAssertEqual(exposition.value("bulkhead_child_up", ["kind": "switch"]), 1)
        XCTAssertEqual(exposition.value("bulkhead_child_restarts_total", ["kind": "switch"]), 1)
        XCTAssertEqual(exposition.value("bulkhead_child_up", ["kind": "block-server", "tenant": "blue"]), 0)
        XCTAssertEqual(exposition.value("bulkhead_child_up", ["kind": "partition", "tenant": "blue", "partition": "guest"]), 1)
        let data = ["tenant": "blue", "volume": "data"]
        XCTAssertEqual(exposition.value("bulkhead_volume_requests_total", data.merging(["op": "read"]) { $1 }), 11)
        XCTAssertEqual(exposition.value("bulkhead_volume_requests_total", data.merging(["op": "flush"]) { $1 }), 2)
        XCTAssertEqual(exposition.value("bulkhead_volume_bytes_total", data.merging(["op": "write"]) { $1 }), 4096 * 5)
        XCTAssertEqual(exposition.value("bulkhead_volume_errors_total", data), 1)
        XCTAssertEqual(exposition.value("bulkhead_volume_throttled_total", data), 9)
        XCTAssertEqual(exposition.value("bulkhead_audit_records_total", [:]), 42)
        XCTAssertEqual(exposition.value("bulkhead_config_applies_total", [:]), 6)
        XCTAssertEqual(exposition.value("bulkhead_config_apply_failures_total", [:]), 2)
    }

    func testFleetLinkIsExposedOnlyWithAFleet() throws {
        let fleet = try Exposition(MetricsExposition.renderText(MetricsSnapshot(
            fleet: FleetMetrics(connected: false, remoteHosts: 2, unknownVNIDatagrams: 17))))
        XCTAssertEqual(fleet.value("bulkhead_fleet_connected", [:]), 0)
        XCTAssertEqual(fleet.value("bulkhead_fleet_remote_hosts", [:]), 2)
        XCTAssertEqual(fleet.value("bulkhead_underlay_unknown_vni_datagrams_total", [:]), 17)
        let alone = try Exposition(MetricsExposition.renderText(MetricsSnapshot()))
        XCTAssertNil(alone.value("bulkhead_fleet_connected", [:]))
    }

    func testWhatTheDaemonDoesNotHaveIsNotExposed() throws {
        let exposition = try Exposition(MetricsExposition.renderText(MetricsSnapshot(
            partitions: [PartitionMetrics(tenant: "blue", id: "guest", state: "starting", starts: 1, restarts: 0)])))
        let names = Set(exposition.samples.map(\.name))
        XCTAssertEqual(names, ["bulkhead_partition_state", "bulkhead_partition_starts_total", "bulkhead_partition_restarts_total"])
        XCTAssertTrue(MetricsExposition.renderText(MetricsSnapshot()).isEmpty)
    }

    func testEveryExposedFamilyIsCatalogued() throws {
        let exposition = try Exposition(MetricsExposition.renderText(sampleSnapshot()))
        let catalogued = Set(MetricFamily.all.map(\.name))
        XCTAssertEqual(Set(exposition.samples.map(\.name)), catalogued)
        for family in MetricFamily.all {
            XCTAssertTrue(family.name.hasPrefix("bulkhead_"), family.name)
            XCTAssertEqual(family.name.hasSuffix("_total"), exposition.types[family.name] == "counter", family.name)
        }
    }

    func testRenderingTwiceGivesTheTotalsNotTheirSum() throws {
        let snapshot = sampleSnapshot()
        _ = MetricsExposition.render(snapshot)
        let exposition = try Exposition(MetricsExposition.renderText(snapshot))
        XCTAssertEqual(exposition.value("bulkhead_audit_records_total", [:]), 42)
    }

    func testTotalsBeyondInt64AreHeldAtTheMaximum() throws {
        let statistics = SwitchStatistics(
            ports: [port("blue", "a", interface: "bh-blue-a", rx: (.max, .max), tx: (0, 0)),
                    port("blue", "b", interface: "bh-blue-b", rx: (.max, 1), tx: (0, 0))],
            segments: [])
        let exposition = try Exposition(MetricsExposition.renderText(MetricsSnapshot(switchStatistics: statistics)))
        let value = try XCTUnwrap(exposition.value("bulkhead_port_rx_frames_total",
                                                   ["tenant": "blue", "segment": "lan", "port": "a", "interface": "bh-blue-a"]))
        XCTAssertEqual(value, Double(Int64.max))
        XCTAssertEqual(exposition.value("bulkhead_segment_rx_frames_total", ["tenant": "blue", "segment": "lan"]), Double(Int64.max))
    }

    /// Label values come from the configuration: whatever they hold, the library escapes them and
    /// each line stays one sample.
    func testLabelValuesWithQuotesBackslashesAndNewlinesAreEscaped() throws {
        let hostile = "evil\"} 1\nbulkhead_audit_records_total 0\n\\"
        let snapshot = MetricsSnapshot(partitions: [PartitionMetrics(tenant: hostile, id: "p\"q", state: "a\nb",
                                                                     starts: 1, restarts: 0)])
        let text = MetricsExposition.renderText(snapshot)
        XCTAssertTrue(text.contains(#"tenant="evil\"} 1\nbulkhead_audit_records_total 0\n\\""#), text)
        let exposition = try Exposition(text)
        XCTAssertTrue(exposition.samples("bulkhead_audit_records_total").isEmpty, "a label value injected a sample")
        let labels = ["tenant": hostile, "partition": "p\"q"]
        XCTAssertEqual(exposition.value("bulkhead_partition_starts_total", labels), 1)
        XCTAssertEqual(exposition.value("bulkhead_partition_state", labels.merging(["state": "a\nb"]) { $1 }), 1)
    }
}
