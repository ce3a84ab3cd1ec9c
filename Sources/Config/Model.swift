/// The host configuration: one JSON document per host.
///
/// These types are the validated, typed form of that document. They are produced only by
/// `HostConfiguration.load(...)`/`decode(...)` (see `Decoding.swift`), which checks every rule
/// listed in `Validation.swift` and reports every problem with its JSON path.
public struct HostConfiguration: Sendable, Equatable {
    public var host: HostSettings
    public var principals: [Principal]
    public var tenants: [Tenant]

    public init(host: HostSettings, principals: [Principal] = [], tenants: [Tenant] = []) {
        self.host = host
        self.principals = principals
        self.tenants = tenants
    }
}

public struct HostSettings: Sendable, Equatable {
    /// Absolute path of the directory that holds the daemon's lock, status and tenant data.
    public var stateDirectory: String
    /// Path of the management API's Unix socket; default `<stateDirectory>/control.sock`.
    public var controlSocket: String?
    /// The group (gid) the management socket belongs to (mode 0660); default 0. Being able to
    /// connect grants nothing by itself: every call is authorised by the caller's uid.
    public var controlSocketGroup: UInt32?
    /// Path of the audit log; default `<stateDirectory>/audit.log`. Its chain's head is kept
    /// beside it, in `<auditLog>.head`.
    public var auditLog: String?
    /// Where the Prometheus endpoint listens: "127.0.0.1:PORT", "[::1]:PORT" or "unix:/path";
    /// nil for none.
    public var metrics: String?
    /// Default resource limits of the jailed children (`host.limits`).
    public var limits: HostLimits
    /// First uid (and gid) of the tenants' jailed processes. Each tenant is given a uid of
    /// `jailUids` once and keeps it (recorded in `<stateDirectory>/jail-uids.json`, see
    /// `JailUidRecord`), so no two tenants' servers share a uid (and can signal or trace each
    /// other), and adding, removing or reordering tenants changes no tenant's uid.
    public var jailUidBase: UInt32
    /// The switch's engine settings (`host.switch`).
    public var switchSettings: SwitchSettings
    /// This host's place in a fleet (`host.fleet`); nil: the host runs alone.
    public var fleet: FleetSettings?

    /// Far above the uids of accounts and of the usual subordinate-uid ranges of containers.
    public static let defaultJailUidBase: UInt32 = 900_000_000
    /// The jail uids must stay above the range of ordinary accounts (and 65534, nobody)...
    public static let lowestJailUidBase: UInt32 = 65_536
    /// ...and below 4294967294 ((uid_t)-2, the NFS "nobody"; (uid_t)-1 means "no change").
    public static let jailUidLimit: UInt64 = 4_294_967_294
    /// How many uids the jail range holds: tenants that ever had a uid, removed ones included.
    public static let jailUidCount: UInt32 = 65_536

    /// The uids tenants' jailed processes may be given: `jailUidBase ..< jailUidBase + jailUidCount`
    /// (validation keeps it below `jailUidLimit`; beyond that it is cut short, never wrapped).
    public var jailUids: Range<UInt32> {
        let end = min(UInt64(jailUidBase) + UInt64(HostSettings.jailUidCount), HostSettings.jailUidLimit)
        return jailUidBase ..< UInt32(max(end, UInt64(jailUidBase)))
    }

    /// The uids tenants are given: every uid of `jailUids` but the last, which is the switch's.
    public var tenantJailUids: Range<UInt32> {
        jailUids.isEmpty ? jailUids : jailUids.lowerBound ..< jailUids.upperBound - 1
    }

    /// The uid (and gid) of the jailed switch process: the last of `jailUids`, never a tenant's.
    /// The switch carries every tenant's frames; sharing a uid with one tenant's block server or
    /// VMM would let that tenant's compromised process signal or trace it. Nil when the range is
    /// empty (an invalid configuration).
    public var switchJailUid: UInt32? {
        jailUids.isEmpty ? nil : jailUids.upperBound - 1
    }

    public init(stateDirectory: String, controlSocket: String? = nil, controlSocketGroup: UInt32? = nil,
                auditLog: String? = nil, metrics: String? = nil, limits: HostLimits = .init(),
                jailUidBase: UInt32 = HostSettings.defaultJailUidBase, switchSettings: SwitchSettings = .init(),
                fleet: FleetSettings? = nil) {
        self.fleet = fleet
        self.stateDirectory = stateDirectory
        self.controlSocket = controlSocket
        self.controlSocketGroup = controlSocketGroup
        self.auditLog = auditLog
        self.metrics = metrics
        self.limits = limits
        self.jailUidBase = jailUidBase
        self.switchSettings = switchSettings
    }
}

/// How the switch runs on this host (`host.switch`).
public struct SwitchSettings: Sendable, Equatable {
    /// Packet worker threads, each with its own ring and one queue of every TAP port; nil for
    /// one per online core (the engine resolves it with `resolvedWorkers(onlineCores:)`).
    public var workers: Int?

    /// The most workers a switch runs (one queue per worker on each TAP port; the kernel allows
    /// 256 queues per TAP device).
    public static let workerLimit = 256

    public init(workers: Int? = nil) {
        self.workers = workers
    }

    /// `workers`, or `onlineCores` clamped to 1...workerLimit when it is not set.
    public func resolvedWorkers(onlineCores: Int) -> Int {
        workers ?? min(max(1, onlineCores), SwitchSettings.workerLimit)
    }
}

public enum Role: String, Sendable, Equatable, CaseIterable {
    /// Everything on the host.
    case hostAdmin = "host-admin"
    /// Status and lifecycle of every partition; no configuration or policy changes.
    case `operator` = "operator"
    /// Everything within one tenant (requires `tenant`).
    case tenantAdmin = "tenant-admin"
    /// Read-only access to one tenant's state (requires `tenant`).
    case tenantViewer = "tenant-viewer"
    /// Reads and verifies the audit log, nothing else.
    case auditor = "auditor"
}

public struct Principal: Sendable, Equatable {
    public var name: String
    public var uid: UInt32
    public var role: Role
    public var tenant: String?

    public init(name: String, uid: UInt32, role: Role, tenant: String? = nil) {
        self.name = name; self.uid = uid; self.role = role; self.tenant = tenant
    }
}

public struct Tenant: Sendable, Equatable {
    public var id: String
    public var segments: [Segment]
    public var ports: [Port]
    public var volumes: [Volume]
    public var partitions: [Partition]
    /// Stateless rules, first match wins. A packet that matches no rule is allowed.
    public var acl: [ACLRule]
    /// Resource limits of the tenant's switch and block server, over `host.limits`.
    public var limits: ServiceLimits?

    public init(id: String, segments: [Segment] = [], ports: [Port] = [], volumes: [Volume] = [],
                partitions: [Partition] = [], acl: [ACLRule] = [], limits: ServiceLimits? = nil) {
        self.id = id; self.segments = segments; self.ports = ports; self.volumes = volumes
        self.partitions = partitions; self.acl = acl; self.limits = limits
    }
}

/// A layer-2 broadcast domain of one tenant.
public struct Segment: Sendable, Equatable {
    public var id: String
    /// VXLAN network identifier (1...16777215) for the uplink; unique across tenants.
    public var vni: UInt32?
    /// Largest IP packet (without Ethernet header) a port of this segment may send, unless the
    /// frame is a GSO super-frame announced in its virtio-net header.
    public var mtu: Int
    public var macTable: MACTableSettings

    public init(id: String, vni: UInt32? = nil, mtu: Int = 1500, macTable: MACTableSettings = .init()) {
        self.id = id; self.vni = vni; self.mtu = mtu; self.macTable = macTable
    }
}

public struct MACTableSettings: Sendable, Equatable {
    /// Learned entries the segment holds at most.
    public var maxEntries: Int
    /// Learned entries one port may hold at most.
    public var maxEntriesPerPort: Int
    /// Seconds after which an entry that was not refreshed is forgotten.
    public var agingSeconds: Int

    public init(maxEntries: Int = 4096, maxEntriesPerPort: Int = 64, agingSeconds: Int = 300) {
        self.maxEntries = maxEntries; self.maxEntriesPerPort = maxEntriesPerPort; self.agingSeconds = agingSeconds
    }
}

public enum PortKind: String, Sendable, Equatable, CaseIterable {
    /// A TAP device whose network side lives in a network namespace (or the host's).
    case tap
    /// A virtio-net device served over vhost-user on `Port.vhostUserSocketPath`: the tenant's VMM
    /// (a partition, QEMU, DPDK) connects to it. No TAP device, no namespace.
    case vhostUser = "vhost-user"
}

public struct Port: Sendable, Equatable {
    public var id: String
    public var kind: PortKind
    public var segment: String
    /// The MAC address the endpoint uses; also set on the TAP device's network side.
    public var mac: MACAddress
    /// The endpoint's addresses, with their subnet length (`10.0.0.1/24`). Port security allows
    /// exactly these as source addresses (plus the IPv6 link-local address derived from `mac`).
    public var ips: [IPPrefix]
    /// Further source MACs the endpoint may use.
    public var allowedMACs: [MACAddress]
    /// Network namespace that receives the TAP device's network side; created when missing.
    /// Nil keeps the device in the daemon's namespace.
    public var netns: String?
    /// Interface name; default `bh-<tenant>-<port>` (at most 15 bytes).
    public var ifname: String?
    /// Number of TAP queues (multiqueue), or of virtio-net queue pairs the vhost-user device
    /// offers (`max_virtqueue_pairs`); default 1.
    public var queues: Int
    /// The endpoint may send DHCP discover/request from 0.0.0.0.
    public var allowDHCPClient: Bool
    /// The endpoint may send DHCP and DHCPv6 server messages.
    public var dhcpServer: Bool
    /// The endpoint may send IPv6 router advertisements and redirects, and ICMP redirects.
    public var router: Bool
    public var rateLimit: RateLimit?
    public var stormControl: StormControl?

    public init(id: String, kind: PortKind = .tap, segment: String, mac: MACAddress, ips: [IPPrefix] = [],
                allowedMACs: [MACAddress] = [], netns: String? = nil, ifname: String? = nil, queues: Int = 1,
                allowDHCPClient: Bool = false, dhcpServer: Bool = false, router: Bool = false,
                rateLimit: RateLimit? = nil, stormControl: StormControl? = nil) {
        self.id = id; self.kind = kind; self.segment = segment; self.mac = mac; self.ips = ips
        self.allowedMACs = allowedMACs; self.netns = netns; self.ifname = ifname; self.queues = queues
        self.allowDHCPClient = allowDHCPClient; self.dhcpServer = dhcpServer; self.router = router
        self.rateLimit = rateLimit; self.stormControl = stormControl
    }

    /// The interface name of this port's TAP device.
    public func interfaceName(tenant: String) -> String { ifname ?? "bh-\(tenant)-\(id)" }

    /// The vhost-user socket a port of kind `vhostUser` is served on.
    public static func vhostUserSocketPath(stateDirectory: String, tenant: String, port: String) -> String {
        "\(stateDirectory)/tenants/\(tenant)/net/\(port).sock"
    }

    /// This port's vhost-user socket (meaningful for kind `vhostUser`).
    public func vhostUserSocketPath(stateDirectory: String, tenant: String) -> String {
        Port.vhostUserSocketPath(stateDirectory: stateDirectory, tenant: tenant, port: id)
    }
}

/// Token buckets on what a port sends into the switch. Absent fields are unlimited.
public struct RateLimit: Sendable, Equatable {
    public var bitsPerSecond: UInt64?
    /// Bucket depth in bits; see `effectiveBurstBits` for the default.
    public var burstBits: UInt64?
    public var packetsPerSecond: UInt64?
    public var burstPackets: UInt64?

    public init(bitsPerSecond: UInt64? = nil, burstBits: UInt64? = nil, packetsPerSecond: UInt64? = nil,
                burstPackets: UInt64? = nil) {
        self.bitsPerSecond = bitsPerSecond; self.burstBits = burstBits
        self.packetsPerSecond = packetsPerSecond; self.burstPackets = burstPackets
    }

    /// Burst in bits when none is configured: 10 ms of the rate, but at least two 64 KB GSO frames.
    public var effectiveBurstBits: UInt64? {
        guard let rate = bitsPerSecond else { return nil }
        return burstBits ?? max(rate / 100, 2 * 65_536 * 8)
    }

    /// Burst in packets when none is configured: 10 ms of the rate, but at least 64 packets.
    public var effectiveBurstPackets: UInt64? {
        guard let rate = packetsPerSecond else { return nil }
        return burstPackets ?? max(rate / 100, 64)
    }
}

/// Limits on broadcast and multicast frames a port sends, in packets per second.
public struct StormControl: Sendable, Equatable {
    public var broadcastPacketsPerSecond: UInt64?
    public var multicastPacketsPerSecond: UInt64?

    public init(broadcastPacketsPerSecond: UInt64? = nil, multicastPacketsPerSecond: UInt64? = nil) {
        self.broadcastPacketsPerSecond = broadcastPacketsPerSecond
        self.multicastPacketsPerSecond = multicastPacketsPerSecond
    }
}

public enum ACLAction: String, Sendable, Equatable, CaseIterable { case allow, deny }

/// `ingress`: frames a port sends into the switch; `egress`: frames the switch delivers to a port.
public enum ACLDirection: String, Sendable, Equatable, CaseIterable { case ingress, egress, both }

public enum ACLProtocol: Sendable, Equatable {
    case any
    case tcp
    case udp
    case icmp
    case icmpv6
    /// Any other IP protocol number.
    case number(UInt8)

    public init?(_ text: String) {
        switch text {
        case "any": self = .any
        case "tcp": self = .tcp
        case "udp": self = .udp
        case "icmp": self = .icmp
        case "icmpv6": self = .icmpv6
        default: return nil
        }
    }

    /// The IP protocol number, or nil for `any`.
    public var number: UInt8? {
        switch self {
        case .any: nil
        case .tcp: 6
        case .udp: 17
        case .icmp: 1
        case .icmpv6: 58
        case .number(let n): n
        }
    }
}

/// An inclusive range of TCP/UDP ports; JSON `22` or `"1000-2000"`.
public struct PortRange: Sendable, Equatable {
    public var lower: UInt16
    public var upper: UInt16
    public init?(lower: UInt16, upper: UInt16) {
        guard lower <= upper else { return nil }
        self.lower = lower; self.upper = upper
    }
    @inlinable public func contains(_ port: UInt16) -> Bool { port >= lower && port <= upper }
}

public struct ACLRule: Sendable, Equatable {
    public var action: ACLAction
    public var direction: ACLDirection
    public var `protocol`: ACLProtocol
    public var source: IPPrefix?
    public var destination: IPPrefix?
    public var sourcePort: PortRange?
    public var destinationPort: PortRange?
    /// Limits the rule to the port with this id; nil applies it to every port of the tenant.
    public var port: String?

    public init(action: ACLAction, direction: ACLDirection = .both, protocol: ACLProtocol = .any,
                source: IPPrefix? = nil, destination: IPPrefix? = nil, sourcePort: PortRange? = nil,
                destinationPort: PortRange? = nil, port: String? = nil) {
        self.action = action; self.direction = direction; self.protocol = `protocol`; self.source = source
        self.destination = destination; self.sourcePort = sourcePort; self.destinationPort = destinationPort
        self.port = port
    }
}

/// A block volume of a tenant, served by the tenant's block server over vhost-user-blk.
public struct Volume: Sendable, Equatable {
    public var id: String
    public var sizeBytes: UInt64
    public var readOnly: Bool
    /// Serial number returned by virtio-blk GET_ID (at most 20 bytes); default the volume id.
    public var serial: String?
    public var qos: VolumeQoS?

    public init(id: String, sizeBytes: UInt64, readOnly: Bool = false, serial: String? = nil, qos: VolumeQoS? = nil) {
        self.id = id; self.sizeBytes = sizeBytes; self.readOnly = readOnly; self.serial = serial; self.qos = qos
    }

    /// The vhost-user-blk socket the tenant's block server serves a volume on.
    public static func vhostUserSocketPath(stateDirectory: String, tenant: String, volume: String) -> String {
        "\(stateDirectory)/tenants/\(tenant)/vhost/\(volume).sock"
    }

    /// This volume's vhost-user-blk socket: a partition that attaches it connects there.
    public func vhostUserSocketPath(stateDirectory: String, tenant: String) -> String {
        Volume.vhostUserSocketPath(stateDirectory: stateDirectory, tenant: tenant, volume: id)
    }
}

public struct VolumeQoS: Sendable, Equatable {
    public var iops: UInt64?
    public var burstIOs: UInt64?
    public var bytesPerSecond: UInt64?
    public var burstBytes: UInt64?

    public init(iops: UInt64? = nil, burstIOs: UInt64? = nil, bytesPerSecond: UInt64? = nil, burstBytes: UInt64? = nil) {
        self.iops = iops; self.burstIOs = burstIOs; self.bytesPerSecond = bytesPerSecond; self.burstBytes = burstBytes
    }
}

/// A file the daemon opens for a partition, and the digest it must have: the partition boots
/// only what its configuration measured.
public struct MeasuredFile: Sendable, Equatable {
    /// Absolute path on the host.
    public var path: String
    /// Lower-case hex SHA-256 the file must measure to.
    public var sha256: String
    public init(path: String, sha256: String) { self.path = path; self.sha256 = sha256 }
}

/// A guest virtual machine of a tenant, run by its own `bulkhead partition` process.
public struct Partition: Sendable, Equatable {
    public var id: String
    public var vcpus: Int
    public var memoryMiB: Int
    /// What the partition boots: a flat image or a Linux kernel.
    public var boot: PartitionBoot
    /// The guest's command line: passed to a Linux kernel through the boot protocol, and to a
    /// flat image in RDI (at most `maximumCommandLineBytes` bytes, no NUL).
    public var cmdline: String
    /// Ids of the tenant's volumes, one virtio-blk device each, in PCI slot order (read-only
    /// where the volume is). A volume is attached to at most one partition: its vhost-user-blk
    /// socket serves one frontend.
    public var disks: [String]
    /// Ids of the tenant's ports of kind `vhostUser`, one virtio-net device each, in PCI slot
    /// order. A port is the NIC of at most one partition.
    public var nics: [String]
    public var restart: RestartPolicy
    /// Resource limits of the partition's VMM process, over `host.limits.partitions`.
    public var limits: ResourceLimits?

    /// The vCPUs a partition may have.
    public static let vcpuRange = 1...64
    /// The guest RAM a partition may have, in MiB (16 MiB to 1 TiB).
    public static let memoryMiBRange = 16...1_048_576
    /// The longest command line, in bytes without its terminating NUL: one 4 KiB page with the
    /// NUL. A Linux kernel may take less (its header's `cmdline_size`, 2047 on x86), which the
    /// boot loader checks against the kernel it loads.
    public static let maximumCommandLineBytes = 4095
    /// Disks per partition: with `maximumNICs` and the host bridge, they fit one PCI bus's 32 slots.
    public static let maximumDisks = 16
    /// NICs per partition.
    public static let maximumNICs = 8

    public init(id: String, vcpus: Int, memoryMiB: Int, boot: PartitionBoot, cmdline: String = "",
                disks: [String] = [], nics: [String] = [], restart: RestartPolicy = .onReboot,
                limits: ResourceLimits? = nil) {
        self.id = id; self.vcpus = vcpus; self.memoryMiB = memoryMiB; self.boot = boot; self.cmdline = cmdline
        self.disks = disks; self.nics = nics; self.restart = restart; self.limits = limits
    }

    /// Guest RAM in bytes.
    public var memoryBytes: UInt64 { UInt64(max(0, memoryMiB)) << 20 }

    /// Every file the partition boots from (the image, or the kernel and its initrd): what the
    /// partition process opens and measures before it enters its jail.
    public var measuredFiles: [MeasuredFile] {
        switch boot {
        case .image(let image): [image]
        case .linux(let kernel, let initrd): [kernel] + (initrd.map { [$0] } ?? [])
        }
    }
}

/// How a partition boots.
public enum PartitionBoot: Sendable, Equatable {
    /// A flat binary for a small freestanding guest, loaded at 1 MiB and entered in 64-bit mode
    /// at ring 3 (JSON `image`).
    case image(MeasuredFile)
    /// A Linux bzImage, booted through the x86 boot protocol's 64-bit entry, with an optional
    /// initial ramdisk (JSON `kernel` and `initrd`).
    case linux(kernel: MeasuredFile, initrd: MeasuredFile?)
}

/// When the daemon starts a partition's process again after it ended (JSON `restart`).
public enum RestartPolicy: String, Sendable, Equatable, CaseIterable {
    /// The partition process is not restarted, whatever ends it.
    case never
    /// The default: restarted when the guest reboots (or resets, or triple faults) or the VMM
    /// fails (exits with an error, crashes, is killed), not when the guest powers off.
    case onReboot = "on-reboot"
    /// Restarted whatever ends it, a guest power-off included.
    case always

    /// How a partition process ended, as far as its restart policy cares.
    public enum Ending: Sendable, Equatable, CaseIterable {
        /// The guest powered off: it is done.
        case poweredOff
        /// The guest asked for a reset (a reboot, or a triple fault, which resets a PC).
        case rebooted
        /// The partition process failed: an error, a crash, a signal.
        case failed
    }

    /// Whether a partition process that ended so is started again.
    public func restarts(after ending: Ending) -> Bool {
        switch self {
        case .never: false
        case .onReboot: ending != .poweredOff
        case .always: true
        }
    }
}

// MARK: - Lookups

extension HostConfiguration {
    /// The tenant with this id.
    public func tenant(_ id: String) -> Tenant? {
        tenants.first { $0.id == id }
    }

    /// The partition `id` of tenant `tenant`.
    public func partition(tenant: String, id: String) -> Partition? {
        self.tenant(tenant)?.partition(id)
    }
}

extension Tenant {
    public func segment(_ id: String) -> Segment? { segments.first { $0.id == id } }
    public func port(_ id: String) -> Port? { ports.first { $0.id == id } }
    public func volume(_ id: String) -> Volume? { volumes.first { $0.id == id } }
    public func partition(_ id: String) -> Partition? { partitions.first { $0.id == id } }

    /// The volumes `partition` attaches, in its `disks` order (validation guarantees they exist).
    public func volumes(of partition: Partition) -> [Volume] {
        partition.disks.compactMap(volume)
    }

    /// The vhost-user ports that are `partition`'s NICs, in its `nics` order (validation
    /// guarantees they exist and are of kind `vhostUser`).
    public func ports(of partition: Partition) -> [Port] {
        partition.nics.compactMap(port).filter { $0.kind == .vhostUser }
    }

    /// The partition that attaches volume `id`, if one does.
    public func partition(attachingVolume id: String) -> Partition? {
        partitions.first { $0.disks.contains(id) }
    }

    /// The partition whose NIC port `id` is, if one is.
    public func partition(usingPort id: String) -> Partition? {
        partitions.first { $0.nics.contains(id) }
    }
}
