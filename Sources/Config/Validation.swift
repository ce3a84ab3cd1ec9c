/// The rules a decoded configuration must follow beyond its shape: id syntax, ranges, uniqueness
/// and references between tenants' objects. Each problem names the JSON path it is about.
///
/// Runs on whatever decoded (`DecodedDocument`), so that one broken port does not hide problems
/// elsewhere; references to elements that failed to decode are not reported again.
struct Validator {
    struct Finding {
        var path: String
        var message: String
    }

    /// Most TAP ports the host may have, across tenants.
    static let maximumTapPorts = 256

    let document: DecodedDocument
    private(set) var problems: [Finding] = []

    /// Interface name -> the port that has it.
    private var interfaceNames: [String: String] = [:]
    /// VNI -> the segment that has it.
    private var vnis: [UInt32: String] = [:]
    /// Per tenant and segment: MAC / IP -> who uses it.
    private var segmentMACs: [String: [MACAddress: String]] = [:]
    private var segmentIPs: [String: [IPAddress: String]] = [:]
    private var tapPorts = 0
    /// "tenant index/volume" -> the partition disk that attaches it.
    private var volumeUsers: [String: (owner: String, path: String, index: Int)] = [:]
    /// "tenant index/port" -> the partition NIC that uses it.
    private var portUsers: [String: (owner: String, path: String, index: Int)] = [:]

    init(document: DecodedDocument) {
        self.document = document
    }

    mutating func validate() {
        if let host = document.host { validateHost(host) }
        validatePrincipals()
        validateTenants()
    }

    private mutating func report(_ path: String, _ message: String) {
        problems.append(Finding(path: path, message: message))
    }

    // MARK: Host

    private mutating func validateHost(_ host: HostSettings) {
        if let workers = host.switchSettings.workers {
            checkRange(workers, 1...SwitchSettings.workerLimit, path: "$.host.switch.workers", what: "workers")
        }
        let path = "$.host.stateDirectory"
        let directory = host.stateDirectory
        guard directory.hasPrefix("/") else {
            report(path, "\(quote(directory)) is not an absolute path; start it with '/'")
            return
        }
        let components = directory.split(separator: "/")
        guard !components.contains(where: { $0 == "." || $0 == ".." }) else {
            report(path, "\(quote(directory)) must not contain '.' or '..' components; write the plain absolute path")
            return
        }
        let base = "/" + components.joined(separator: "/")
        checkPath(host.controlSocket, key: "controlSocket", base: base)
        checkPath(host.auditLog, key: "auditLog", base: base)
        if let metrics = host.metrics {
            do { _ = try MetricsListenAddress.parse(metrics) } catch { report("$.host.metrics", error.reason) }
        }
        checkLimits(host.limits.services.switch, path: "$.host.limits.switch")
        checkLimits(host.limits.services.blockServer, path: "$.host.limits.blockServer")
        checkLimits(host.limits.partitions, path: "$.host.limits.partitions")
        checkRange(host.limits.partitionOverheadMiB, 0...65536, path: "$.host.limits.partitionOverheadMiB",
                   what: "partitionOverheadMiB")
        checkJailUids(host)
        if let fleet = host.fleet { validateFleet(fleet) }
    }

    private mutating func validateFleet(_ fleet: FleetSettings) {
        let path = "$.host.fleet"
        let id = fleet.hostId
        let idOK = !id.isEmpty && id.count <= 63 && id.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d || $0 == 0x2e }
            && id.utf8.first.map { $0 != 0x2d && $0 != 0x2e } == true
        if !idOK {
            report(path + ".hostId", "\(quote(id)) is not a host id: 1 to 63 of a-z, 0-9, '-' and '.', starting with a letter or digit")
        }
        switch fleet.underlayAddress {
        case .v4(let a):
            if a.rawValue == 0 || a.rawValue >> 24 == 127 || a.rawValue >> 28 >= 14 {
                report(path + ".underlayAddress", "\(a) cannot be an underlay address (unspecified, loopback, multicast or reserved)")
            }
        case .v6(let a):
            if (a.high == 0 && a.low <= 1) || a.high >> 56 == 0xFF {
                report(path + ".underlayAddress", "\(a) cannot be an underlay address (unspecified, loopback or multicast)")
            }
        }
        checkRange(fleet.underlayMTU, 1280...65535, path: path + ".underlayMTU", what: "underlay MTU")
        checkRange(fleet.leaseSeconds, FleetSettings.leaseSecondsRange, path: path + ".leaseSeconds", what: "lease TTL (seconds)")
        let etcd = fleet.etcd
        if etcd.endpoints.isEmpty { report(path + ".etcd.endpoints", "lists no endpoint; give at least one http(s)://HOST:PORT") }
        var secure = false
        for (index, endpoint) in etcd.endpoints.enumerated() {
            let endpointPath = path + ".etcd.endpoints[\(index)]"
            let scheme = endpoint.hasPrefix("https://") ? "https://" : endpoint.hasPrefix("http://") ? "http://" : nil
            guard let scheme else {
                report(endpointPath, "\(quote(endpoint)) must start with http:// or https://"); continue
            }
            if scheme == "https://" { secure = true }
            let rest = endpoint.dropFirst(scheme.count)
            let authority = rest.hasSuffix("/") ? rest.dropLast() : rest
            guard let colon = authority.lastIndex(of: ":"), !authority[..<colon].isEmpty,
                  let port = Int(authority[authority.index(after: colon)...]), (1...65535).contains(port),
                  !authority.contains("/"), !authority.contains("@"), !authority.contains("?") else {
                report(endpointPath, "\(quote(endpoint)) is not SCHEME://HOST:PORT (e.g. http://10.0.0.5:2379)"); continue
            }
        }
        if !etcd.prefix.hasPrefix("/") || etcd.prefix.hasSuffix("/") || etcd.prefix.contains("//") {
            report(path + ".etcd.prefix", "\(quote(etcd.prefix)) must start with '/' and not end with '/' (e.g. /bulkhead)")
        }
        if secure && etcd.tls == nil {
            report(path + ".etcd.tls", "https endpoints need tls.caFile (and certFile and keyFile for client certificates)")
        }
        if let tls = etcd.tls {
            if (tls.certFile == nil) != (tls.keyFile == nil) {
                report(path + ".etcd.tls", "certFile and keyFile go together: give both or neither")
            }
            for (key, file) in [("caFile", tls.caFile), ("certFile", tls.certFile), ("keyFile", tls.keyFile)] {
                if let file, !file.hasPrefix("/") { report(path + ".etcd.tls." + key, "\(quote(file)) is not an absolute path") }
            }
        }
    }

    /// Tenants' jailed processes get uids of jailUidBase ..< jailUidBase + 65536: the whole range
    /// must stay clear of ordinary accounts and of the special uids at the top.
    private mutating func checkJailUids(_ host: HostSettings) {
        let path = "$.host.jailUidBase"
        let base = host.jailUidBase
        let count = HostSettings.jailUidCount
        if base < HostSettings.lowestJailUidBase {
            report(path, "\(base) is below \(HostSettings.lowestJailUidBase): jailed processes would share uids with "
                + "accounts (65534 is nobody); use a base far from them, e.g. the default \(HostSettings.defaultJailUidBase)")
        } else if UInt64(base) + UInt64(count) > HostSettings.jailUidLimit {
            report(path, "\(base) + \(count) (the jail uid range) passes \(HostSettings.jailUidLimit) ((uid_t)-2); "
                + "use a base of at most \(HostSettings.jailUidLimit - UInt64(count))")
        }
    }

    /// A file path must lie strictly inside the state directory after resolving `.` and `..`.
    /// A file the daemon creates: an absolute path anywhere but "/" (the socket under /run, the
    /// audit log under /var/log), or a path relative to the state directory that stays inside it.
    private mutating func checkPath(_ value: String?, key: String, base: String) {
        guard let value else { return }
        let path = "$.host." + key
        guard !value.isEmpty else {
            report(path, "must not be empty; leave the key out for the default inside the state directory")
            return
        }
        if value.hasPrefix("/") {
            if Validator.normalize(value) == "/" { report(path, "\(quote(value)) names the root directory, not a file") }
            return
        }
        let resolved = Validator.normalize(base + "/" + value)
        let inside = base == "/" ? resolved != "/" : resolved.hasPrefix(base + "/")
        guard inside else {
            report(path, "\(quote(value)) resolves to \(quote(resolved)), which is outside the state directory \(quote(base)); "
                + "a relative path must stay inside it (or write an absolute path)")
            return
        }
    }

    private mutating func checkLimits(_ limits: ResourceLimits?, path: String) {
        guard let limits else { return }
        if let v = limits.memoryMiB { checkRange(v, ResourceLimits.memoryMiBRange, path: path + ".memoryMiB", what: "memoryMiB") }
        if let v = limits.cpuWeight { checkRange(v, ResourceLimits.cpuWeightRange, path: path + ".cpuWeight", what: "cpuWeight") }
        if let v = limits.cpuPercent { checkRange(v, ResourceLimits.cpuPercentRange, path: path + ".cpuPercent", what: "cpuPercent") }
        if let v = limits.pids { checkRange(v, ResourceLimits.pidsRange, path: path + ".pids", what: "pids") }
    }

    /// Resolves `.`, `..` and repeated slashes lexically; `..` at the root stays at the root.
    static func normalize(_ absolutePath: String) -> String {
        var stack: [Substring] = []
        for component in absolutePath.split(separator: "/") {
            switch component {
            case ".": continue
            case "..": _ = stack.popLast()
            default: stack.append(component)
            }
        }
        return "/" + stack.joined(separator: "/")
    }

    // MARK: Principals

    private mutating func validatePrincipals() {
        let tenantIDs = document.tenants.compactMap { $0?.id }
        var names: [String: Int] = [:]
        var uids: [UInt32: String] = [:]
        for (index, principal) in document.principals.enumerated() {
            guard let principal else { continue }
            let path = "$.principals[\(index)]"
            checkID(principal.name, path: path + ".name", what: "principal name")
            if let first = names[principal.name] {
                report(path + ".name", "duplicate principal name \(quote(principal.name)) (also $.principals[\(first)])")
            } else {
                names[principal.name] = index
            }
            if let owner = uids[principal.uid] {
                report(path + ".uid", "uid \(principal.uid) is already used by principal '\(owner)'; each uid maps to one principal")
            } else {
                uids[principal.uid] = principal.name
            }
            checkNotAJailUid(principal.uid, path: path + ".uid")
            checkPrincipalTenant(principal, path: path + ".tenant", tenantIDs: tenantIDs)
        }
    }

    /// A principal's uid must not lie in the jail uid range: a tenant's jailed processes given
    /// that uid would act as the principal towards the management API.
    private mutating func checkNotAJailUid(_ uid: UInt32, path: String) {
        guard let host = document.host, host.jailUids.contains(uid) else { return }
        report(path, "uid \(uid) lies in the jail uid range \(JailUidRecord.describe(host.jailUids)) "
            + "(host.jailUidBase + 0...\(HostSettings.jailUidCount - 1)), whose uids go to tenants' jailed processes; "
            + "a principal must not share a uid with them")
    }

    private mutating func checkPrincipalTenant(_ principal: Principal, path: String, tenantIDs: [String]) {
        let role = quote(principal.role.rawValue)
        switch principal.role {
        case .tenantAdmin, .tenantViewer:
            guard let tenant = principal.tenant else {
                report(path, "role \(role) requires \"tenant\": the id of the tenant it applies to")
                return
            }
            if !tenantIDs.contains(tenant) {
                report(path, "no tenant \(quote(tenant)); \(listing("tenants", tenantIDs))")
            }
        case .hostAdmin, .operator, .auditor:
            if principal.tenant != nil {
                report(path, "role \(role) applies to the whole host and takes no \"tenant\"; remove it or use "
                    + "\"tenant-admin\" or \"tenant-viewer\"")
            }
        }
    }

    // MARK: Tenants

    private mutating func validateTenants() {
        var tenantIDs: [String: Int] = [:]
        for (index, tenant) in document.tenants.enumerated() {
            guard let tenant else { continue }
            let path = "$.tenants[\(index)]"
            if let id = tenant.id {
                checkID(id, path: path + ".id", what: "tenant id")
                if let first = tenantIDs[id] {
                    report(path + ".id", "duplicate tenant id \(quote(id)) (also $.tenants[\(first)])")
                } else {
                    tenantIDs[id] = index
                }
            }
            validateTenant(tenant, index: index, path: path)
        }
    }

    private mutating func validateTenant(_ tenant: DecodedTenant, index: Int, path: String) {
        let name = tenant.id ?? "#\(index)"
        checkUniqueIDs(tenant.segments.map { $0?.id }, path: path + ".segments", what: "segment", tenant: name)
        checkUniqueIDs(tenant.ports.map { $0?.id }, path: path + ".ports", what: "port", tenant: name)
        checkUniqueIDs(tenant.volumes.map { $0?.id }, path: path + ".volumes", what: "volume", tenant: name)
        checkUniqueIDs(tenant.partitions.map { $0?.id }, path: path + ".partitions", what: "partition", tenant: name)
        for (i, segment) in tenant.segments.enumerated() {
            if let segment { validateSegment(segment, path: path + ".segments[\(i)]", tenant: name) }
        }
        for (i, port) in tenant.ports.enumerated() {
            if let port { validatePort(port, path: path + ".ports[\(i)]", tenantIndex: index, tenant: tenant) }
        }
        for (i, volume) in tenant.volumes.enumerated() {
            if let volume { validateVolume(volume, path: path + ".volumes[\(i)]") }
        }
        checkLimits(tenant.limits?.switch, path: path + ".limits.switch")
        checkLimits(tenant.limits?.blockServer, path: path + ".limits.blockServer")
        for (i, partition) in tenant.partitions.enumerated() {
            if let partition {
                validatePartition(partition, path: path + ".partitions[\(i)]", tenantIndex: index, tenant: tenant)
            }
        }
        for (i, rule) in tenant.acl.enumerated() {
            if let rule { validateRule(rule, path: path + ".acl[\(i)]", tenantIndex: index, tenant: tenant) }
        }
    }

    private mutating func checkUniqueIDs(_ ids: [String?], path: String, what: String, tenant: String) {
        var seen: [String: Int] = [:]
        for (index, id) in ids.enumerated() {
            guard let id else { continue }
            let idPath = path + "[\(index)].id"
            checkID(id, path: idPath, what: "\(what) id")
            if let first = seen[id] {
                report(idPath, "duplicate \(what) id \(quote(id)) in tenant \(quote(tenant)) (also \(path)[\(first)])")
            } else {
                seen[id] = index
            }
        }
    }

    // MARK: Segments

    private mutating func validateSegment(_ segment: Segment, path: String, tenant: String) {
        if let vni = segment.vni {
            if !(1...16_777_215).contains(vni) {
                report(path + ".vni", "VNI \(vni) is outside 1...16777215 (24 bits, 0 reserved)")
            } else if let owner = vnis[vni] {
                report(path + ".vni", "VNI \(vni) is already used by \(owner); each segment needs its own VNI")
            } else {
                vnis[vni] = "segment '\(segment.id)' of tenant '\(tenant)'"
            }
        }
        checkRange(segment.mtu, 576...9000, path: path + ".mtu", what: "MTU")
        if segment.vni != nil, let fleet = document.host?.fleet, segment.mtu + fleet.encapsulationOverhead > fleet.underlayMTU {
            report(path + ".mtu", "MTU \(segment.mtu) plus the VXLAN encapsulation (\(fleet.encapsulationOverhead) bytes) does not fit "
                + "the underlay MTU \(fleet.underlayMTU) ($.host.fleet.underlayMTU); use an MTU of at most "
                + "\(fleet.underlayMTU - fleet.encapsulationOverhead) or raise the underlay's")
        }
        let table = segment.macTable
        let tablePath = path + ".macTable"
        checkRange(table.maxEntries, 1...65_536, path: tablePath + ".maxEntries", what: "maxEntries")
        checkRange(table.maxEntriesPerPort, 1...max(1, table.maxEntries), path: tablePath + ".maxEntriesPerPort",
                   what: "maxEntriesPerPort (at most maxEntries)")
        checkRange(table.agingSeconds, 10...86_400, path: tablePath + ".agingSeconds", what: "agingSeconds")
    }

    // MARK: Ports

    private mutating func validatePort(_ port: Port, path: String, tenantIndex: Int, tenant: DecodedTenant) {
        let tenantName = tenant.id ?? "#\(tenantIndex)"
        // Every port, TAP or vhost-user, is a port of the one switch, which has room for 256.
        tapPorts += 1
        if tapPorts == Validator.maximumTapPorts + 1 {
            report(path, "the host has more than \(Validator.maximumTapPorts) ports (of kinds \"tap\" and \"vhost-user\" together; "
                + "the switch has room for \(Validator.maximumTapPorts)); this is number \(tapPorts)")
        }
        let segmentKnown = checkReference(port.segment, path: path + ".segment", kind: "segment", user: "a port",
                                          tenantIndex: tenantIndex, ids: \.segmentIDs)
        let owner = "port '\(port.id)' in segment '\(port.segment)' of tenant '\(tenantName)'"
        let segmentKey = "\(tenantIndex)/\(port.segment)"
        checkMAC(port.mac, path: path + ".mac", owner: owner, segmentKey: segmentKnown ? segmentKey : nil)
        for (i, mac) in port.allowedMACs.enumerated() {
            checkMAC(mac, path: path + ".allowedMACs[\(i)]", owner: owner, segmentKey: segmentKnown ? segmentKey : nil)
        }
        for (i, ip) in port.ips.enumerated() {
            checkInterfaceAddress(ip, path: path + ".ips[\(i)]", owner: owner, segmentKey: segmentKnown ? segmentKey : nil)
        }
        switch port.kind {
        case .tap:
            if let netns = port.netns, !Validator.isValidNetnsName(netns) {
                report(path + ".netns", "\(quote(netns)) is not a valid namespace name; use 1 to 64 characters: lower-case "
                    + "letters, digits, '-', '.' and '_', starting with a letter or digit")
            }
            if let tenantID = tenant.id { checkInterfaceName(port, path: path + ".ifname", tenant: tenantID) }
            checkRange(port.queues, 1...16, path: path + ".queues", what: "queues")
        case .vhostUser:
            // The guest's VMM owns the interface: there is no TAP device to name or to move.
            if port.netns != nil {
                report(path + ".netns", "a port of kind \"vhost-user\" has no TAP device to move into a namespace; "
                    + "remove \"netns\" (the tenant's VMM connects to the port's socket instead)")
            }
            if port.ifname != nil {
                report(path + ".ifname", "a port of kind \"vhost-user\" has no host interface to name; remove \"ifname\" "
                    + "(the guest names its own interface)")
            }
            checkRange(port.queues, 1...16, path: path + ".queues", what: "queues (virtio-net queue pairs)")
        }
        if let limit = port.rateLimit {
            checkPositive(limit.bitsPerSecond, path: path + ".rateLimit.bitsPerSecond")
            checkPositive(limit.burstBits, path: path + ".rateLimit.burstBits")
            checkPositive(limit.packetsPerSecond, path: path + ".rateLimit.packetsPerSecond")
            checkPositive(limit.burstPackets, path: path + ".rateLimit.burstPackets")
        }
        if let storm = port.stormControl {
            checkPositive(storm.broadcastPacketsPerSecond, path: path + ".stormControl.broadcastPacketsPerSecond")
            checkPositive(storm.multicastPacketsPerSecond, path: path + ".stormControl.multicastPacketsPerSecond")
        }
    }

    private mutating func checkInterfaceName(_ port: Port, path: String, tenant: String) {
        let name = port.interfaceName(tenant: tenant)
        let length = name.utf8.count
        if length > 15 || name.isEmpty {
            let hint = port.ifname == nil
                ? "the default interface name \(quote(name)) is \(length) bytes; Linux allows at most 15: set \"ifname\" to a shorter name"
                : "\(quote(name)) is \(length) bytes; an interface name has 1 to 15 bytes"
            report(path, hint)
            return
        }
        if name == "." || name == ".." || name.contains(where: { $0 == "/" || $0 == ":" || $0.isWhitespace }) {
            report(path, "\(quote(name)) is not a valid interface name; it must not contain '/', ':' or whitespace, "
                + "nor be '.' or '..'")
            return
        }
        if let owner = interfaceNames[name] {
            report(path, "interface name \(quote(name)) is already used by \(owner); set \"ifname\" to a name unique on the host")
        } else {
            interfaceNames[name] = "port '\(port.id)' of tenant '\(tenant)'"
        }
    }

    // MARK: Volumes and partitions

    private mutating func validateVolume(_ volume: Volume, path: String) {
        if volume.sizeBytes == 0 {
            report(path + ".sizeBytes", "must be greater than 0")
        } else if volume.sizeBytes % 512 != 0 {
            let lower = volume.sizeBytes / 512 * 512
            let suggestion = lower > 0 ? "e.g. \(lower)" : "e.g. 512"
            report(path + ".sizeBytes", "\(volume.sizeBytes) is not a multiple of 512 (the sector size); use \(suggestion)")
        }
        if let serial = volume.serial, serial.utf8.count > 20 {
            report(path + ".serial", "\(quote(serial)) is \(serial.utf8.count) bytes; a virtio-blk serial has at most 20")
        }
        if let qos = volume.qos {
            checkPositive(qos.iops, path: path + ".qos.iops")
            checkPositive(qos.burstIOs, path: path + ".qos.burstIOs")
            checkPositive(qos.bytesPerSecond, path: path + ".qos.bytesPerSecond")
            checkPositive(qos.burstBytes, path: path + ".qos.burstBytes")
        }
    }

    private mutating func validatePartition(_ partition: Partition, path: String, tenantIndex: Int, tenant: DecodedTenant) {
        checkRange(partition.vcpus, Partition.vcpuRange, path: path + ".vcpus", what: "vcpus")
        checkRange(partition.memoryMiB, Partition.memoryMiBRange, path: path + ".memoryMiB", what: "memoryMiB")
        switch partition.boot {
        case .image(let image):
            checkMeasuredFile(image, path: path + ".image")
        case .linux(let kernel, let initrd):
            checkMeasuredFile(kernel, path: path + ".kernel")
            if let initrd { checkMeasuredFile(initrd, path: path + ".initrd") }
        }
        checkCommandLine(partition.cmdline, path: path + ".cmdline")
        checkLimits(partition.limits, path: path + ".limits")
        if let memory = partition.limits?.memoryMiB, memory <= partition.memoryMiB {
            report(path + ".limits.memoryMiB", "\(memory) MiB does not hold the guest's \(partition.memoryMiB) MiB of RAM and the "
                + "VMM; give it more, or leave it out for RAM + host.limits.partitionOverheadMiB")
        }
        let owner = "partition '\(partition.id)'"
        if partition.disks.count > Partition.maximumDisks {
            report(path + ".disks", "\(partition.disks.count) disks; a partition has at most \(Partition.maximumDisks) "
                + "(one PCI slot each)")
        }
        for (i, volume) in partition.disks.enumerated() {
            let diskPath = path + ".disks[\(i)]"
            guard checkReference(volume, path: diskPath, kind: "volume", user: "a partition",
                                 tenantIndex: tenantIndex, ids: \.volumeIDs) else { continue }
            let key = "\(tenantIndex)/\(volume)"
            if let user = volumeUsers[key] {
                if user.path == path {
                    report(diskPath, "volume \(quote(volume)) is attached twice to \(owner) "
                        + "(also \(user.path).disks[\(user.index)]); attach it once")
                } else {
                    report(diskPath, "volume \(quote(volume)) is already attached to \(user.owner) "
                        + "(\(user.path).disks[\(user.index)]); a volume is attached to one partition: its vhost-user-blk "
                        + "socket serves one frontend")
                }
            } else {
                volumeUsers[key] = (owner, path, i)
            }
        }
        if partition.nics.count > Partition.maximumNICs {
            report(path + ".nics", "\(partition.nics.count) NICs; a partition has at most \(Partition.maximumNICs) "
                + "(one PCI slot each)")
        }
        for (i, portID) in partition.nics.enumerated() {
            let nicPath = path + ".nics[\(i)]"
            guard checkReference(portID, path: nicPath, kind: "port", user: "a partition NIC",
                                 tenantIndex: tenantIndex, ids: \.portIDs) else { continue }
            // A port that failed to decode was reported where it is; its kind is unknown.
            let port = tenant.ports.lazy.compactMap { $0 }.first { $0.id == portID }
            if let port, port.kind != .vhostUser {
                report(nicPath, "port \(quote(portID)) is of kind \(quote(port.kind.rawValue)); a partition's NIC must be "
                    + "a port of kind \"vhost-user\": the partition is the frontend of the virtio-net device the switch "
                    + "serves on that port's socket, while a TAP port's other end is a host interface, which no "
                    + "partition can reach")
                continue
            }
            let key = "\(tenantIndex)/\(portID)"
            if let user = portUsers[key] {
                let other = user.path == path ? "this partition's NIC" : "the NIC of \(user.owner)"
                report(nicPath, "port \(quote(portID)) is already \(other) (\(user.path).nics[\(user.index)]); a "
                    + "vhost-user port is the NIC of one partition: its socket serves one frontend")
            } else {
                portUsers[key] = (owner, path, i)
            }
        }
    }

    /// The command line reaches the guest as a NUL-terminated string in one page.
    private mutating func checkCommandLine(_ cmdline: String, path: String) {
        let length = cmdline.utf8.count
        if length > Partition.maximumCommandLineBytes {
            report(path, "the command line is \(length) bytes; at most \(Partition.maximumCommandLineBytes) are passed "
                + "to the guest")
        }
        if cmdline.utf8.contains(0) {
            report(path, "the command line contains a NUL character, which would end it early; remove it")
        }
    }

    private mutating func checkMeasuredFile(_ file: MeasuredFile, path: String) {
        if !file.path.hasPrefix("/") {
            report(path + ".path", "\(quote(file.path)) is not an absolute path; start it with '/'")
        }
        if file.sha256.utf8.count != 64 || !file.sha256.allSatisfy(\.isHexDigitASCII) {
            report(path + ".sha256", "\(quote(file.sha256)) is not a SHA-256 digest; write exactly 64 hex digits")
        }
    }

    // MARK: ACL

    private mutating func validateRule(_ rule: ACLRule, path: String, tenantIndex: Int, tenant: DecodedTenant) {
        if let port = rule.port {
            checkReference(port, path: path + ".port", kind: "port", user: "an ACL rule",
                           tenantIndex: tenantIndex, ids: \.portIDs)
        }
        if let source = rule.source, let destination = rule.destination,
           Validator.isIPv4(source.address) != Validator.isIPv4(destination.address) {
            report(path + ".destination", "source \(quote(source.description)) and destination "
                + "\(quote(destination.description)) are of different IP families; a rule matches one family")
        }
        let takesPorts = rule.protocol.number == 6 || rule.protocol.number == 17
        for (key, range) in [("sourcePort", rule.sourcePort), ("destinationPort", rule.destinationPort)] where range != nil {
            if !takesPorts {
                report(path + "." + key, "port ranges need \"protocol\": \"tcp\" or \"udp\"; this rule's protocol is "
                    + Validator.describe(rule.protocol))
            }
        }
    }

    private static func describe(_ proto: ACLProtocol) -> String {
        switch proto {
        case .any: "\"any\""
        case .tcp: "\"tcp\""
        case .udp: "\"udp\""
        case .icmp: "\"icmp\""
        case .icmpv6: "\"icmpv6\""
        case .number(let n): "\(n)"
        }
    }

    // MARK: Addresses

    /// A port's MAC must be unicast, non-zero and unique in its segment.
    private mutating func checkMAC(_ mac: MACAddress, path: String, owner: String, segmentKey: String?) {
        if mac.isZero {
            report(path, "\(quote(mac.description)) is all zeros; use a unicast address such as \"02:00:00:00:01:01\"")
            return
        }
        if mac.isBroadcast {
            report(path, "\(quote(mac.description)) is the broadcast address; use a unicast address")
            return
        }
        if mac.isMulticast {
            report(path, "\(quote(mac.description)) is a multicast address (lowest bit of the first octet set); use a "
                + "unicast address")
            return
        }
        guard let segmentKey else { return }
        if let other = segmentMACs[segmentKey]?[mac] {
            report(path, "\(quote(mac.description)) is already used by \(other)")
        } else {
            segmentMACs[segmentKey, default: [:]][mac] = owner
        }
    }

    /// An endpoint address must be a usable unicast host address, unique in its segment.
    private mutating func checkInterfaceAddress(_ prefix: IPPrefix, path: String, owner: String, segmentKey: String?) {
        let text = quote(prefix.description)
        switch prefix.address {
        case .v4(let a):
            if a.isMulticast { return report(path, "\(text) is a multicast address; a port address must be unicast") }
            if a.isUnspecified { return report(path, "\(text) is the unspecified address 0.0.0.0") }
            if a.isLoopback { return report(path, "\(text) is a loopback address (127.0.0.0/8)") }
            if a.isBroadcast { return report(path, "\(text) is the broadcast address 255.255.255.255") }
            if prefix.length < 31 {
                let hostMask = UInt32.max >> UInt32(prefix.length)
                let network = IPv4Address(rawValue: a.rawValue & ~hostMask)
                if a.rawValue & hostMask == 0 {
                    return report(path, "\(text) is the network address of \(network)/\(prefix.length); use a host address")
                }
                if a.rawValue & hostMask == hostMask {
                    return report(path, "\(text) is the broadcast address of \(network)/\(prefix.length); use a host address")
                }
            }
        case .v6(let a):
            if a.isMulticast { return report(path, "\(text) is a multicast address; a port address must be unicast") }
            if a.isUnspecified { return report(path, "\(text) is the unspecified address ::") }
            if a.isLoopback { return report(path, "\(text) is the loopback address ::1") }
        }
        guard let segmentKey else { return }
        if let other = segmentIPs[segmentKey]?[prefix.address] {
            report(path, "\(quote(prefix.address.description)) is already used by \(other)")
        } else {
            segmentIPs[segmentKey, default: [:]][prefix.address] = owner
        }
    }

    private static func isIPv4(_ address: IPAddress) -> Bool {
        if case .v4 = address { return true }
        return false
    }

    // MARK: References

    /// Checks that `name` is a `kind` of this tenant; returns whether it is. When another tenant has
    /// it, says so: objects are never shared across tenants.
    @discardableResult
    private mutating func checkReference(_ name: String, path: String, kind: String, user: String, tenantIndex: Int,
                                         ids: KeyPath<DecodedTenant, Set<String>>) -> Bool {
        guard document.tenants.indices.contains(tenantIndex), let tenant = document.tenants[tenantIndex] else { return false }
        if tenant[keyPath: ids].contains(name) { return true }
        let tenantName = tenant.id.map(quote) ?? "#\(tenantIndex)"
        let owner = document.tenants.enumerated().first { index, other in
            index != tenantIndex && other?[keyPath: ids].contains(name) == true
        }
        if let owner, let ownerID = owner.element?.id {
            report(path, "\(kind) \(quote(name)) belongs to tenant \(quote(ownerID)), not \(tenantName); "
                + "\(user) cannot use another tenant's \(kind)")
        } else {
            report(path, "no \(kind) \(quote(name)) in tenant \(tenantName); "
                + listing("its \(kind)s", tenant[keyPath: ids].sorted()))
        }
        return false
    }

    // MARK: Values

    static func isValidID(_ id: String) -> Bool {
        let bytes = Array(id.utf8)
        guard let first = bytes.first, bytes.count <= 32, isLowerAlphanumeric(first) else { return false }
        return bytes.allSatisfy { isLowerAlphanumeric($0) || $0 == UInt8(ascii: "-") }
    }

    static func isValidNetnsName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard let first = bytes.first, bytes.count <= 64, isLowerAlphanumeric(first) else { return false }
        return bytes.allSatisfy {
            isLowerAlphanumeric($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_")
        }
    }

    private static func isLowerAlphanumeric(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }

    private mutating func checkID(_ id: String, path: String, what: String) {
        guard !Validator.isValidID(id) else { return }
        report(path, "\(quote(id)) is not a valid \(what); use 1 to 32 characters: lower-case letters, digits and '-', "
            + "starting with a letter or digit")
    }

    private mutating func checkRange(_ value: Int, _ range: ClosedRange<Int>, path: String, what: String) {
        guard !range.contains(value) else { return }
        report(path, "\(what) \(value) is outside \(range.lowerBound)...\(range.upperBound)")
    }

    private mutating func checkPositive(_ value: UInt64?, path: String) {
        guard value == 0 else { return }
        report(path, "must be greater than 0; leave the key out for no limit")
    }

    private func quote(_ text: String) -> String { JSONPath.quoted(text) }

    private func listing(_ noun: String, _ items: [String]) -> String {
        items.isEmpty ? "there are no \(noun.replacing("its ", with: ""))"
            : "\(noun): " + items.map(quote).joined(separator: ", ")
    }
}
