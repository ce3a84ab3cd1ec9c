#if canImport(Glibc)
import Glibc
#endif

extension HostConfiguration {
    /// Largest configuration file `load(contentsOf:)` reads.
    public static let maximumFileSize = 16 << 20

    /// Reads, decodes and validates the configuration file at `path`.
    ///
    /// - Throws: `ConfigurationError` with every problem found: the file cannot be read or is not
    ///   UTF-8, is not JSON, does not have the document's shape, or breaks a rule of `Validation.swift`.
    public static func load(contentsOf path: String) throws(ConfigurationError) -> HostConfiguration {
        // Read with plain system calls, not Foundation: the partition VMM loads this module and
        // must not map Foundation. (Nor HostOS: the fuzz targets build this module alone.)
        let data: [UInt8]
        switch readFile(path, limit: maximumFileSize + 1) {
        case .success(let bytes):
            data = bytes
        case .failure(let reason):
            throw ConfigurationError(file: path, problems: [
                ConfigurationProblem(path: "$", message: "cannot read the file: \(reason)")])
        }
        guard data.count <= maximumFileSize else {
            throw ConfigurationError(file: path, problems: [
                ConfigurationProblem(path: "$", message: "the file is more than \(maximumFileSize) bytes; at most \(maximumFileSize) are read")])
        }
        guard let text = String(validating: data, as: UTF8.self) else {
            throw ConfigurationError(file: path, problems: [
                ConfigurationProblem(path: "$", message: "the file is not valid UTF-8")])
        }
        return try decode(text, file: path)
    }

    private struct ReadFailure: Error, CustomStringConvertible {
        let description: String
    }

    /// At most `limit` bytes of the file at `path`; a failure says which call failed and why.
    private static func readFile(_ path: String, limit: Int) -> Result<[UInt8], ReadFailure> {
        func failure(_ call: String) -> Result<[UInt8], ReadFailure> {
            let code = errno
            return .failure(ReadFailure(description: "\(call) failed: \(String(cString: strerror(code))) (errno \(code))"))
        }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { return failure("open(\(path))") }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while bytes.count < limit {
            let want = min(chunk.count, limit - bytes.count)
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, want) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { return failure("read(\(path))") }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return .success(bytes)
    }

    /// Decodes and validates a configuration document.
    ///
    /// Every problem is collected in one pass: decoding continues after an error with the sibling
    /// values, then the cross-reference rules run on everything that decoded.
    ///
    /// - Parameter file: the file name to put in the error, if the text came from one.
    /// - Throws: `ConfigurationError` listing every problem, sorted by position.
    public static func decode(_ text: String, file: String? = nil) throws(ConfigurationError) -> HostConfiguration {
        let parsed = JSONParser.parse(text)
        guard let root = parsed.value else {
            throw ConfigurationError(file: file, problems: parsed.problems)
        }
        let context = DecodingContext(root: root)
        context.problems = parsed.problems
        let document = DocumentDecoder(context: context).decodeDocument(root)
        var validator = Validator(document: document)
        validator.validate()
        for problem in validator.problems {
            context.report(problem.path, problem.message)
        }
        guard context.problems.isEmpty, let configuration = document.configuration else {
            if context.problems.isEmpty {
                // Every element that fails to decode reports why, so this is a bug, not bad input.
                context.report("$", "the document could not be decoded")
            }
            throw ConfigurationError(file: file, problems: context.problems)
        }
        return configuration
    }
}

// MARK: - Decoded document

/// The document as far as it decoded. Arrays keep one entry per JSON element (nil where the
/// element did not decode), so that indices in paths stay those of the file.
struct DecodedDocument {
    var host: HostSettings?
    var principals: [Principal?] = []
    var tenants: [DecodedTenant?] = []

    /// The typed configuration, when every part decoded.
    var configuration: HostConfiguration? {
        guard let host, let principals = allDecoded(principals),
              let tenants = allDecoded(tenants) else { return nil }
        var result: [Tenant] = []
        for tenant in tenants {
            guard let built = tenant.tenant else { return nil }
            result.append(built)
        }
        return HostConfiguration(host: host, principals: principals, tenants: result)
    }
}

struct DecodedTenant {
    var id: String?
    var segments: [Segment?] = []
    var ports: [Port?] = []
    var volumes: [Volume?] = []
    var partitions: [Partition?] = []
    var acl: [ACLRule?] = []
    var limits: ServiceLimits?
    /// Ids written in the file, including those of elements that did not decode, so that a
    /// reference to them is not reported a second time as unknown.
    var segmentIDs: Set<String> = []
    var portIDs: Set<String> = []
    var volumeIDs: Set<String> = []

    var tenant: Tenant? {
        guard let id, let segments = allDecoded(segments), let ports = allDecoded(ports),
              let volumes = allDecoded(volumes), let partitions = allDecoded(partitions),
              let acl = allDecoded(acl) else { return nil }
        return Tenant(id: id, segments: segments, ports: ports, volumes: volumes, partitions: partitions, acl: acl,
                      limits: limits)
    }
}

/// The elements, if none is nil.
func allDecoded<T>(_ elements: [T?]) -> [T]? {
    let present = elements.compactMap { $0 }
    return present.count == elements.count ? present : nil
}

// MARK: - Context

/// Problems found so far and the position of every value in the document.
final class DecodingContext {
    var problems: [ConfigurationProblem] = []
    private var positions: [String: SourcePosition] = [:]

    init(root: JSONValue) {
        record(root, path: "$")
    }

    private func record(_ value: JSONValue, path: String) {
        positions[path] = value.position
        switch value.kind {
        case .array(let elements):
            for (index, element) in elements.enumerated() { record(element, path: JSONPath.element(path, index)) }
        case .object(let members):
            for member in members { record(member.value, path: JSONPath.member(path, member.key)) }
        default:
            break
        }
    }

    /// The position of the value at `path`, or of the nearest enclosing value that exists.
    func position(of path: String) -> SourcePosition? {
        var current: String? = path
        while let candidate = current {
            if let position = positions[candidate] { return position }
            current = JSONPath.parent(of: candidate)
        }
        return nil
    }

    func report(_ path: String, _ message: String, at position: SourcePosition? = nil) {
        let where_ = position ?? self.position(of: path)
        problems.append(ConfigurationProblem(path: path, line: where_?.line, column: where_?.column, message: message))
    }
}

// MARK: - Objects

/// Reads one JSON object of a type listed in `ConfigurationSchema`. Unknown and missing keys are
/// reported when it is created; `isValid` turns false when any member fails to decode.
final class ObjectReader {
    let context: DecodingContext
    let path: String
    let type: String
    private(set) var isValid = true
    private var members: [String: JSONValue] = [:]
    private let allowed: Set<String>
    private let required: Set<String>

    init(context: DecodingContext, members list: [JSONMember], path: String, type: String) {
        self.context = context
        self.path = path
        self.type = type
        let keys = ConfigurationSchema.objects[type]
        assert(keys != nil, "\(type) is not in ConfigurationSchema.objects")
        allowed = keys?.allowed ?? []
        required = keys?.required ?? []
        for member in list { members[member.key] = member.value }
        checkKeys(list)
    }

    private func checkKeys(_ list: [JSONMember]) {
        let allowedList = allowed.sorted().joined(separator: ", ")
        for member in list where !allowed.contains(member.key) {
            var message = "unknown key \(JSONPath.quoted(member.key)) in \(type); allowed keys: \(allowedList)"
            if let near = allowed.first(where: { $0.lowercased() == member.key.lowercased() }) {
                message += " (did you mean \"\(near)\"?)"
            }
            context.report(JSONPath.member(path, member.key), message, at: member.keyPosition)
        }
        for key in required.sorted() where members[key] == nil {
            isValid = false
            context.report(JSONPath.member(path, key), "missing required key \"\(key)\" in \(type)")
        }
    }

    /// A required member; nil when missing (already reported) or invalid.
    func required<T>(_ key: String, _ decode: (JSONValue, String) -> T?) -> T? {
        assert(required.contains(key), "\(type).\(key) is not required in ConfigurationSchema")
        guard let value = members[key] else { return nil }
        return decoded(key, value, decode)
    }

    /// An optional member; nil when absent or invalid.
    func optional<T>(_ key: String, _ decode: (JSONValue, String) -> T?) -> T? {
        assert(allowed.contains(key) && !required.contains(key), "\(type).\(key) is not optional in ConfigurationSchema")
        guard let value = members[key] else { return nil }
        return decoded(key, value, decode)
    }

    /// An optional member with a default; the default also stands in when the value is invalid.
    func optional<T>(_ key: String, default defaultValue: T, _ decode: (JSONValue, String) -> T?) -> T {
        optional(key, decode) ?? defaultValue
    }

    /// An optional array whose elements must all decode for the object to be valid.
    func list<T>(_ key: String, _ decode: (JSONValue, String) -> T?) -> [T] {
        let elements = self.elements(key, decode)
        guard let all = allDecoded(elements) else {
            isValid = false
            return elements.compactMap { $0 }
        }
        return all
    }

    /// An optional array, one entry per element (nil where an element did not decode).
    func elements<T>(_ key: String, _ decode: (JSONValue, String) -> T?) -> [T?] {
        optional(key) { value, path in context.array(value, path, decode) } ?? []
    }

    /// The raw member, for callers that need to look at the JSON itself.
    func raw(_ key: String) -> JSONValue? { members[key] }

    private func decoded<T>(_ key: String, _ value: JSONValue, _ decode: (JSONValue, String) -> T?) -> T? {
        let result = decode(value, JSONPath.member(path, key))
        if result == nil { isValid = false }
        return result
    }
}

// MARK: - Scalars

extension DecodingContext {
    func object(_ value: JSONValue, _ path: String, type: String) -> ObjectReader? {
        guard case .object(let members) = value.kind else {
            report(path, "expected an object (\(type)), found \(value.typeDescription)")
            return nil
        }
        return ObjectReader(context: self, members: members, path: path, type: type)
    }

    /// An array of elements decoded one by one; nil when the value is not an array.
    func array<T>(_ value: JSONValue, _ path: String, _ decode: (JSONValue, String) -> T?) -> [T?]? {
        guard case .array(let elements) = value.kind else {
            report(path, "expected an array, found \(value.typeDescription)")
            return nil
        }
        return elements.enumerated().map { index, element in decode(element, JSONPath.element(path, index)) }
    }

    func string(_ value: JSONValue, _ path: String) -> String? {
        guard case .string(let text) = value.kind else {
            report(path, "expected a string, found \(value.typeDescription)")
            return nil
        }
        return text
    }

    func bool(_ value: JSONValue, _ path: String) -> Bool? {
        guard case .bool(let flag) = value.kind else {
            report(path, "expected true or false, found \(value.typeDescription)")
            return nil
        }
        return flag
    }

    /// An exact integer that fits in `T`; fractions and exponents are rejected.
    func integer<T: FixedWidthInteger>(_ value: JSONValue, _ path: String, as type: T.Type = T.self) -> T? {
        guard case .number(let text) = value.kind else {
            report(path, "expected an integer, found \(value.typeDescription)")
            return nil
        }
        guard !text.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }) else {
            report(path, "expected an integer, found \(text)")
            return nil
        }
        guard let number = T(text) else {
            report(path, "\(text) is out of range; expected an integer in \(T.min)...\(T.max)")
            return nil
        }
        return number
    }

    func int(_ value: JSONValue, _ path: String) -> Int? { integer(value, path) }
    func uint32(_ value: JSONValue, _ path: String) -> UInt32? { integer(value, path) }
    func uint64(_ value: JSONValue, _ path: String) -> UInt64? { integer(value, path) }

    /// A value of a string enum; the message lists the valid values.
    func enumeration<E: RawRepresentable & CaseIterable>(_ value: JSONValue, _ path: String, _ what: String) -> E?
    where E.RawValue == String {
        guard let text = string(value, path) else { return nil }
        guard let result = E(rawValue: text) else {
            let valid = E.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")
            report(path, "\(JSONPath.quoted(text)) is not a valid \(what); valid values: \(valid)")
            return nil
        }
        return result
    }

    func mac(_ value: JSONValue, _ path: String) -> MACAddress? {
        guard let text = string(value, path) else { return nil }
        guard let mac = MACAddress(text) else {
            report(path, "\(JSONPath.quoted(text)) is not a MAC address; write six hex octets such as \"02:00:00:00:01:01\"")
            return nil
        }
        return mac
    }

    func prefix(_ value: JSONValue, _ path: String) -> IPPrefix? {
        guard let text = string(value, path) else { return nil }
        guard let prefix = IPPrefix(text) else {
            report(path, "\(JSONPath.quoted(text)) is not an IP address or prefix; write e.g. \"10.0.0.1/24\" or \"fd00::1/64\"")
            return nil
        }
        return prefix
    }

    /// `"tcp"`, `"udp"`, `"icmp"`, `"icmpv6"`, `"any"` or an IP protocol number 0...255.
    func aclProtocol(_ value: JSONValue, _ path: String) -> ACLProtocol? {
        let names = "\"any\", \"tcp\", \"udp\", \"icmp\", \"icmpv6\" or a protocol number 0...255"
        switch value.kind {
        case .string(let text):
            guard let result = ACLProtocol(text) else {
                report(path, "\(JSONPath.quoted(text)) is not a protocol; use \(names)")
                return nil
            }
            return result
        case .number:
            guard let number: UInt8 = integer(value, path) else { return nil }
            return .number(number)
        default:
            report(path, "expected a protocol (\(names)), found \(value.typeDescription)")
            return nil
        }
    }

    /// A port number (`22`) or a range (`"1000-2000"`).
    func portRange(_ value: JSONValue, _ path: String) -> PortRange? {
        switch value.kind {
        case .number:
            guard let port: UInt16 = integer(value, path) else { return nil }
            return PortRange(lower: port, upper: port)
        case .string(let text):
            let bounds = text.split(separator: "-", omittingEmptySubsequences: false)
            let numbers = bounds.map { bound -> UInt16? in
                guard !bound.isEmpty, bound.count <= 5, bound.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
                return UInt16(bound)
            }
            guard (1...2).contains(numbers.count), let lower = numbers.first ?? nil, let upper = numbers.last ?? nil else {
                report(path, "\(JSONPath.quoted(text)) is not a port range; write a port (22) or a range (\"1000-2000\") of ports 0...65535")
                return nil
            }
            guard let range = PortRange(lower: lower, upper: upper) else {
                report(path, "\(JSONPath.quoted(text)): the lower bound \(lower) is greater than the upper bound \(upper)")
                return nil
            }
            return range
        default:
            report(path, "expected a port (22) or a port range (\"1000-2000\"), found \(value.typeDescription)")
            return nil
        }
    }
}

// MARK: - Document

/// Turns the JSON tree into model values, one decoder per object type of `ConfigurationSchema`.
struct DocumentDecoder {
    let context: DecodingContext

    func decodeDocument(_ root: JSONValue) -> DecodedDocument {
        var document = DecodedDocument()
        guard let reader = context.object(root, "$", type: "HostConfiguration") else { return document }
        document.host = reader.required("host", hostSettings)
        document.principals = reader.elements("principals", principal)
        document.tenants = reader.elements("tenants", tenant)
        return document
    }

    func hostSettings(_ value: JSONValue, _ path: String) -> HostSettings? {
        guard let r = context.object(value, path, type: "HostSettings") else { return nil }
        let stateDirectory = r.required("stateDirectory", context.string)
        let controlSocket = r.optional("controlSocket", context.string)
        let controlSocketGroup = r.optional("controlSocketGroup", context.uint32)
        let auditLog = r.optional("auditLog", context.string)
        let metrics = r.optional("metrics", context.string)
        let limits = r.optional("limits", default: HostLimits(), hostLimits)
        let jailUidBase = r.optional("jailUidBase", context.uint32)
        let switchSettings = r.optional("switch", default: SwitchSettings(), switchSettings)
        let fleet = r.optional("fleet", fleetSettings)
        guard r.isValid, let stateDirectory else { return nil }
        return HostSettings(stateDirectory: stateDirectory, controlSocket: controlSocket,
                            controlSocketGroup: controlSocketGroup, auditLog: auditLog, metrics: metrics, limits: limits,
                            jailUidBase: jailUidBase ?? HostSettings.defaultJailUidBase, switchSettings: switchSettings,
                            fleet: fleet)
    }

    func fleetSettings(_ value: JSONValue, _ path: String) -> FleetSettings? {
        guard let r = context.object(value, path, type: "FleetSettings") else { return nil }
        let hostId = r.required("hostId", context.string)
        let underlay = r.required("underlayAddress", context.string)
        let underlayMTU = r.optional("underlayMTU", default: 1500, context.int)
        let etcd = r.required("etcd", etcdSettings)
        let lease = r.optional("leaseSeconds", default: FleetSettings.defaultLeaseSeconds, context.int)
        guard r.isValid, let hostId, let underlay, let etcd else { return nil }
        guard let address = IPAddress(underlay) else {
            context.report(path + ".underlayAddress", "\"\(underlay)\" is not an IPv4 or IPv6 address")
            return nil
        }
        return FleetSettings(hostId: hostId, underlayAddress: address, underlayMTU: underlayMTU, etcd: etcd,
                             leaseSeconds: lease)
    }

    func etcdSettings(_ value: JSONValue, _ path: String) -> EtcdSettings? {
        guard let r = context.object(value, path, type: "EtcdSettings") else { return nil }
        let endpoints = r.required("endpoints") { value, path in allDecoded(context.array(value, path, context.string) ?? [nil]) }
        let prefix = r.optional("prefix", default: EtcdSettings.defaultPrefix, context.string)
        let tls = r.optional("tls", etcdTLS)
        guard r.isValid, let endpoints else { return nil }
        return EtcdSettings(endpoints: endpoints, prefix: prefix, tls: tls)
    }

    func etcdTLS(_ value: JSONValue, _ path: String) -> EtcdTLS? {
        guard let r = context.object(value, path, type: "EtcdTLS") else { return nil }
        let ca = r.required("caFile", context.string)
        let cert = r.optional("certFile", context.string)
        let key = r.optional("keyFile", context.string)
        guard r.isValid, let ca else { return nil }
        return EtcdTLS(caFile: ca, certFile: cert, keyFile: key)
    }

    func hostLimits(_ value: JSONValue, _ path: String) -> HostLimits? {
        guard let r = context.object(value, path, type: "HostLimits") else { return nil }
        let services = ServiceLimits(switch: r.optional("switch", resourceLimits),
                                     blockServer: r.optional("blockServer", resourceLimits))
        let partitions = r.optional("partitions", resourceLimits)
        let overhead = r.optional("partitionOverheadMiB", default: HostLimits.defaultPartitionOverheadMiB, context.int)
        guard r.isValid else { return nil }
        return HostLimits(services: services, partitions: partitions, partitionOverheadMiB: overhead)
    }

    func serviceLimits(_ value: JSONValue, _ path: String) -> ServiceLimits? {
        guard let r = context.object(value, path, type: "ServiceLimits") else { return nil }
        let limits = ServiceLimits(switch: r.optional("switch", resourceLimits),
                                   blockServer: r.optional("blockServer", resourceLimits))
        return r.isValid ? limits : nil
    }

    func resourceLimits(_ value: JSONValue, _ path: String) -> ResourceLimits? {
        guard let r = context.object(value, path, type: "ResourceLimits") else { return nil }
        let limits = ResourceLimits(memoryMiB: r.optional("memoryMiB", context.int), cpuWeight: r.optional("cpuWeight", context.int),
                                    cpuPercent: r.optional("cpuPercent", context.int), pids: r.optional("pids", context.int))
        return r.isValid ? limits : nil
    }

    func switchSettings(_ value: JSONValue, _ path: String) -> SwitchSettings? {
        guard let r = context.object(value, path, type: "SwitchSettings") else { return nil }
        let workers = r.optional("workers", context.int)
        guard r.isValid else { return nil }
        return SwitchSettings(workers: workers)
    }

    func principal(_ value: JSONValue, _ path: String) -> Principal? {
        guard let r = context.object(value, path, type: "Principal") else { return nil }
        let name = r.required("name", context.string)
        let uid = r.required("uid", context.uint32)
        let role: Role? = r.required("role") { context.enumeration($0, $1, "role") }
        let tenant = r.optional("tenant", context.string)
        guard r.isValid, let name, let uid, let role else { return nil }
        return Principal(name: name, uid: uid, role: role, tenant: tenant)
    }

    func tenant(_ value: JSONValue, _ path: String) -> DecodedTenant? {
        guard let r = context.object(value, path, type: "Tenant") else { return nil }
        var tenant = DecodedTenant()
        tenant.id = r.required("id", context.string)
        tenant.segments = r.elements("segments", segment)
        tenant.ports = r.elements("ports", port)
        tenant.volumes = r.elements("volumes", volume)
        tenant.partitions = r.elements("partitions", partition)
        tenant.acl = r.elements("acl", aclRule)
        tenant.limits = r.optional("limits", serviceLimits)
        tenant.segmentIDs = declaredIDs(r.raw("segments"))
        tenant.portIDs = declaredIDs(r.raw("ports"))
        tenant.volumeIDs = declaredIDs(r.raw("volumes"))
        return tenant
    }

    /// The string `id` of every object in an array, whether or not the object decoded.
    private func declaredIDs(_ value: JSONValue?) -> Set<String> {
        guard let value, case .array(let elements) = value.kind else { return [] }
        var ids: Set<String> = []
        for element in elements {
            guard case .object(let members) = element.kind,
                  let id = members.first(where: { $0.key == "id" }),
                  case .string(let text) = id.value.kind else { continue }
            ids.insert(text)
        }
        return ids
    }

    func segment(_ value: JSONValue, _ path: String) -> Segment? {
        guard let r = context.object(value, path, type: "Segment") else { return nil }
        let id = r.required("id", context.string)
        let vni = r.optional("vni", context.uint32)
        let mtu = r.optional("mtu", default: 1500, context.int)
        let macTable = r.optional("macTable", default: MACTableSettings(), macTableSettings)
        guard r.isValid, let id else { return nil }
        return Segment(id: id, vni: vni, mtu: mtu, macTable: macTable)
    }

    func macTableSettings(_ value: JSONValue, _ path: String) -> MACTableSettings? {
        guard let r = context.object(value, path, type: "MACTableSettings") else { return nil }
        let defaults = MACTableSettings()
        let maxEntries = r.optional("maxEntries", default: defaults.maxEntries, context.int)
        let perPort = r.optional("maxEntriesPerPort", default: defaults.maxEntriesPerPort, context.int)
        let aging = r.optional("agingSeconds", default: defaults.agingSeconds, context.int)
        guard r.isValid else { return nil }
        return MACTableSettings(maxEntries: maxEntries, maxEntriesPerPort: perPort, agingSeconds: aging)
    }

    func port(_ value: JSONValue, _ path: String) -> Port? {
        guard let r = context.object(value, path, type: "Port") else { return nil }
        let id = r.required("id", context.string)
        let kind: PortKind = r.optional("kind", default: .tap) { context.enumeration($0, $1, "port kind") }
        let segment = r.required("segment", context.string)
        let mac = r.required("mac", context.mac)
        let ips = r.list("ips", context.prefix)
        let allowedMACs = r.list("allowedMACs", context.mac)
        let netns = r.optional("netns", context.string)
        let ifname = r.optional("ifname", context.string)
        let queues = r.optional("queues", default: 1, context.int)
        let dhcpClient = r.optional("allowDHCPClient", default: false, context.bool)
        let dhcpServer = r.optional("dhcpServer", default: false, context.bool)
        let router = r.optional("router", default: false, context.bool)
        let rateLimit = r.optional("rateLimit", self.rateLimit)
        let stormControl = r.optional("stormControl", self.stormControl)
        guard r.isValid, let id, let segment, let mac else { return nil }
        return Port(id: id, kind: kind, segment: segment, mac: mac, ips: ips, allowedMACs: allowedMACs,
                    netns: netns, ifname: ifname, queues: queues, allowDHCPClient: dhcpClient,
                    dhcpServer: dhcpServer, router: router, rateLimit: rateLimit, stormControl: stormControl)
    }

    func rateLimit(_ value: JSONValue, _ path: String) -> RateLimit? {
        guard let r = context.object(value, path, type: "RateLimit") else { return nil }
        let limit = RateLimit(bitsPerSecond: r.optional("bitsPerSecond", context.uint64),
                              burstBits: r.optional("burstBits", context.uint64),
                              packetsPerSecond: r.optional("packetsPerSecond", context.uint64),
                              burstPackets: r.optional("burstPackets", context.uint64))
        return r.isValid ? limit : nil
    }

    func stormControl(_ value: JSONValue, _ path: String) -> StormControl? {
        guard let r = context.object(value, path, type: "StormControl") else { return nil }
        let control = StormControl(broadcastPacketsPerSecond: r.optional("broadcastPacketsPerSecond", context.uint64),
                                   multicastPacketsPerSecond: r.optional("multicastPacketsPerSecond", context.uint64))
        return r.isValid ? control : nil
    }

    func aclRule(_ value: JSONValue, _ path: String) -> ACLRule? {
        guard let r = context.object(value, path, type: "ACLRule") else { return nil }
        let action: ACLAction? = r.required("action") { context.enumeration($0, $1, "ACL action") }
        let direction: ACLDirection = r.optional("direction", default: .both) { context.enumeration($0, $1, "ACL direction") }
        let proto = r.optional("protocol", default: .any, context.aclProtocol)
        let source = r.optional("source", context.prefix)
        let destination = r.optional("destination", context.prefix)
        let sourcePort = r.optional("sourcePort", context.portRange)
        let destinationPort = r.optional("destinationPort", context.portRange)
        let port = r.optional("port", context.string)
        guard r.isValid, let action else { return nil }
        return ACLRule(action: action, direction: direction, protocol: proto, source: source, destination: destination,
                       sourcePort: sourcePort, destinationPort: destinationPort, port: port)
    }

    func volume(_ value: JSONValue, _ path: String) -> Volume? {
        guard let r = context.object(value, path, type: "Volume") else { return nil }
        let id = r.required("id", context.string)
        let size = r.required("sizeBytes", context.uint64)
        let readOnly = r.optional("readOnly", default: false, context.bool)
        let serial = r.optional("serial", context.string)
        let qos = r.optional("qos", volumeQoS)
        guard r.isValid, let id, let size else { return nil }
        return Volume(id: id, sizeBytes: size, readOnly: readOnly, serial: serial, qos: qos)
    }

    func volumeQoS(_ value: JSONValue, _ path: String) -> VolumeQoS? {
        guard let r = context.object(value, path, type: "VolumeQoS") else { return nil }
        let qos = VolumeQoS(iops: r.optional("iops", context.uint64), burstIOs: r.optional("burstIOs", context.uint64),
                            bytesPerSecond: r.optional("bytesPerSecond", context.uint64),
                            burstBytes: r.optional("burstBytes", context.uint64))
        return r.isValid ? qos : nil
    }

    func measuredFile(_ value: JSONValue, _ path: String) -> MeasuredFile? {
        guard let r = context.object(value, path, type: "MeasuredFile") else { return nil }
        let filePath = r.required("path", context.string)
        // The model holds lower-case hex; upper-case input is accepted and folded.
        let sha256 = r.required("sha256", context.string)?.lowercased()
        guard r.isValid, let filePath, let sha256 else { return nil }
        return MeasuredFile(path: filePath, sha256: sha256)
    }

    func partition(_ value: JSONValue, _ path: String) -> Partition? {
        guard let r = context.object(value, path, type: "Partition") else { return nil }
        let id = r.required("id", context.string)
        let vcpus = r.required("vcpus", context.int)
        let memory = r.required("memoryMiB", context.int)
        let image = r.optional("image", measuredFile)
        let kernel = r.optional("kernel", measuredFile)
        let initrd = r.optional("initrd", measuredFile)
        let cmdline = r.optional("cmdline", default: "", context.string)
        let disks = r.list("disks", context.string)
        let nics = r.list("nics", context.string)
        let restart: RestartPolicy = r.optional("restart", default: .onReboot) {
            context.enumeration($0, $1, "restart policy")
        }
        let limits = r.optional("limits", resourceLimits)
        let boot = partitionBoot(r, path: path, image: image, kernel: kernel, initrd: initrd)
        guard r.isValid, let id, let vcpus, let memory, let boot else { return nil }
        return Partition(id: id, vcpus: vcpus, memoryMiB: memory, boot: boot, cmdline: cmdline,
                         disks: disks, nics: nics, restart: restart, limits: limits)
    }

    /// The boot the partition's keys ask for: exactly one of `image` and `kernel`, and `initrd`
    /// only with `kernel`. Nil when they break that rule (reported here) or did not decode
    /// (reported where they failed).
    private func partitionBoot(_ r: ObjectReader, path: String, image: MeasuredFile?, kernel: MeasuredFile?,
                               initrd: MeasuredFile?) -> PartitionBoot? {
        let hasImage = r.raw("image") != nil
        let hasKernel = r.raw("kernel") != nil
        switch (hasImage, hasKernel) {
        case (true, true):
            context.report(JSONPath.member(path, "image"), "a partition boots either an \"image\" (a flat image) or a "
                + "\"kernel\" (a Linux bzImage), not both; remove one of them")
            return nil
        case (false, false):
            context.report(path, "a partition needs \"image\" (a flat image for a freestanding guest) or \"kernel\" "
                + "(a Linux bzImage, with an optional \"initrd\"); it has neither")
            return nil
        case (true, false):
            if r.raw("initrd") != nil {
                context.report(JSONPath.member(path, "initrd"), "\"initrd\" goes with a Linux \"kernel\"; a flat "
                    + "\"image\" has no initial ramdisk: remove \"initrd\" or boot a \"kernel\"")
                return nil
            }
            return image.map(PartitionBoot.image)
        case (false, true):
            return kernel.map { PartitionBoot.linux(kernel: $0, initrd: initrd) }
        }
    }
}
