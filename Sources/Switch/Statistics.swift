/// A snapshot of the switch's counters, as the status file shows it.
public struct SwitchStatistics: Codable, Sendable, Equatable {
    public var ports: [PortStatistics]
    public var segments: [SegmentStatistics]
    /// The VXLAN uplink (port "uplink", index `ForwardingPlane.uplinkPort`), when a segment has a
    /// VNI: rx counts datagrams taken from the underlay (inner frame bytes), tx datagrams sent
    /// (one per host a frame was replicated to, or per segment sent), drops by reason.
    public var uplink: PortStatistics?

    public init(ports: [PortStatistics], segments: [SegmentStatistics], uplink: PortStatistics? = nil) {
        self.ports = ports; self.segments = segments; self.uplink = uplink
    }
}

public struct TrafficCounters: Codable, Sendable, Equatable {
    public var frames: UInt64
    public var bytes: UInt64
    public init(frames: UInt64 = 0, bytes: UInt64 = 0) { self.frames = frames; self.bytes = bytes }
}

public struct MACLearningStatistics: Codable, Sendable, Equatable {
    /// MACs learned (new or moved to this port) since start.
    public var learned: UInt64
    /// MACs not learned because of the port's or the segment's limit.
    public var refused: UInt64
    public init(learned: UInt64 = 0, refused: UInt64 = 0) { self.learned = learned; self.refused = refused }
}

public struct PortStatistics: Codable, Sendable, Equatable {
    public var index: Int
    public var tenant: String
    public var port: String
    public var segment: String
    public var interface: String
    /// Every frame the port sent into the switch, dropped ones included.
    public var rx: TrafficCounters
    /// Frames the engine wrote to the port.
    public var tx: TrafficCounters
    /// Drops by `DropReason.name`; every reason is present.
    public var drops: [String: UInt64]
    public var macLearning: MACLearningStatistics

    public init(index: Int, tenant: String, port: String, segment: String, interface: String,
                rx: TrafficCounters, tx: TrafficCounters, drops: [String: UInt64], macLearning: MACLearningStatistics) {
        self.index = index; self.tenant = tenant; self.port = port; self.segment = segment
        self.interface = interface; self.rx = rx; self.tx = tx; self.drops = drops; self.macLearning = macLearning
    }

    /// The drops counted for `reason`.
    public func drops(_ reason: DropReason) -> UInt64 { drops[reason.name] ?? 0 }
}

public struct SegmentStatistics: Codable, Sendable, Equatable {
    public var tenant: String
    public var segment: String
    /// Entries in the segment's MAC table: the ports' static MACs plus learned ones.
    public var macEntries: Int
    public init(tenant: String, segment: String, macEntries: Int) {
        self.tenant = tenant; self.segment = segment; self.macEntries = macEntries
    }
}
