import Config

/// A prefix as two masked 64-bit halves; an IPv4 prefix sits in the low 32 bits of `low`.
struct CompiledPrefix: Sendable {
    var high: UInt64 = 0
    var low: UInt64 = 0
    var maskHigh: UInt64 = 0
    var maskLow: UInt64 = 0

    init() {}

    init(_ prefix: IPPrefix) {
        switch prefix.address {
        case .v4(let address):
            let mask: UInt32 = prefix.length == 0 ? 0 : prefix.length >= 32 ? .max : ~(UInt32.max >> UInt32(prefix.length))
            maskLow = UInt64(mask)
            low = UInt64(address.rawValue & mask)
        case .v6(let address):
            let length = prefix.length
            maskHigh = length == 0 ? 0 : length >= 64 ? .max : ~(UInt64.max >> UInt64(length))
            maskLow = length <= 64 ? 0 : length == 128 ? .max : ~(UInt64.max >> UInt64(length - 64))
            high = address.high & maskHigh
            low = address.low & maskLow
        }
    }

    func contains(high addressHigh: UInt64, low addressLow: UInt64) -> Bool {
        addressHigh & maskHigh == high && addressLow & maskLow == low
    }
}

/// One ACL rule with every string resolved: the flat form the data path evaluates.
struct CompiledRule: Sendable {
    var deny: Bool
    var ingress: Bool
    var egress: Bool
    /// IP protocol number, or -1 for any.
    var proto: Int16
    /// 0: either family; 4 or 6; 255: never matches (prefixes of different families).
    var family: UInt8
    var source: CompiledPrefix
    var destination: CompiledPrefix
    var hasPortRanges: Bool
    var sourcePortLower: UInt16 = 0
    var sourcePortUpper: UInt16 = .max
    var destinationPortLower: UInt16 = 0
    var destinationPortUpper: UInt16 = .max
    /// Port index the rule is limited to; -1: every port; -2: a port that does not exist (never matches).
    var port: Int32
}

/// The IP packet fields an ACL rule looks at.
struct ACLPacket {
    var family: UInt8
    var proto: UInt8
    var sourceHigh: UInt64
    var sourceLow: UInt64
    var destinationHigh: UInt64
    var destinationLow: UInt64
    var hasPorts: Bool
    var isNonFirstFragment: Bool
    var sourcePort: UInt16
    var destinationPort: UInt16
}

/// The tenants' ACLs compiled at init into one flat rule array, a run per tenant and direction;
/// evaluation reads only scalars.
///
/// First match wins; no match allows. A rule with port ranges applies only to TCP and UDP; a
/// non-first fragment carries no ports, so such a rule never matches it when it allows and always
/// matches it (given prefixes, and for IPv4 the protocol) when it denies: a fragment cannot slip
/// past a deny-by-port rule. The protocol of an IPv4 fragment is part of the reassembly key (RFC
/// 791), so a fragment labelled UDP never joins a TCP datagram and the label can be trusted. An
/// IPv6 receiver reassembles on addresses and identification alone and ignores a later fragment's
/// next header (RFC 8200 4.5), so a deny-by-port rule takes every non-first IPv6 fragment whatever
/// it claims. Other rules may go by the claim: the parser keeps later IPv6 fragments out of the
/// first fragment's headers, so a lying fragment only adds payload to a datagram whose first
/// fragment the ACL judged.
struct AccessControl: Sendable {
    /// Every tenant's rules, each direction's in its own run (in the ACL's order): a rule for both
    /// directions is in both runs, so evaluation never looks at a rule of the other direction.
    var rules: [CompiledRule] = []
    /// Run of tenant t's ingress rules at 2t, of its egress rules at 2t + 1.
    var runs: [Range<Int>] = []
    var hasIngressRules: [Bool] = []
    var hasEgressRules: [Bool] = []

    init(tenants: [Tenant], portIndex: (_ tenant: Int, _ port: String) -> Int?) {
        for (tenantIndex, tenant) in tenants.enumerated() {
            var compiledRules: [CompiledRule] = []
            for rule in tenant.acl {
                var family: UInt8 = 0
                for prefix in [rule.source, rule.destination].compactMap({ $0 }) {
                    let prefixFamily: UInt8
                    switch prefix.address { case .v4: prefixFamily = 4; case .v6: prefixFamily = 6 }
                    family = family == 0 || family == prefixFamily ? prefixFamily : 255
                }
                var port: Int32 = -1
                if let name = rule.port { port = portIndex(tenantIndex, name).map { Int32($0) } ?? -2 }
                var compiled = CompiledRule(
                    deny: rule.action == .deny,
                    ingress: rule.direction != .egress, egress: rule.direction != .ingress,
                    proto: rule.protocol.number.map { Int16($0) } ?? -1, family: family,
                    source: rule.source.map(CompiledPrefix.init) ?? CompiledPrefix(),
                    destination: rule.destination.map(CompiledPrefix.init) ?? CompiledPrefix(),
                    hasPortRanges: rule.sourcePort != nil || rule.destinationPort != nil, port: port)
                if let range = rule.sourcePort {
                    compiled.sourcePortLower = range.lower; compiled.sourcePortUpper = range.upper
                }
                if let range = rule.destinationPort {
                    compiled.destinationPortLower = range.lower; compiled.destinationPortUpper = range.upper
                }
                compiledRules.append(compiled)
            }
            for egress in [false, true] {
                let start = rules.count
                rules += compiledRules.filter { egress ? $0.egress : $0.ingress }
                runs.append(start..<rules.count)
            }
            hasIngressRules.append(!runs[2 * tenantIndex].isEmpty)
            hasEgressRules.append(!runs[2 * tenantIndex + 1].isEmpty)
        }
    }

    /// Whether `tenant`'s ACL allows `packet` at `port` in the given direction.
    func allows(tenant: Int, port: Int, egress: Bool, packet: ACLPacket) -> Bool {
        let run = runs[2 * tenant + (egress ? 1 : 0)]
        return rules.withUnsafeBufferPointer { rules in
            // The runs are made at init from this array: checked once here, not per rule.
            precondition(run.lowerBound >= 0 && run.upperBound <= rules.count)
            guard let first = rules.baseAddress else { return true }  // no rules at all
            let port = Int32(truncatingIfNeeded: port)
            let proto = Int16(packet.proto)
            let isNonFirstIPv6Fragment = packet.isNonFirstFragment && packet.family == 6
            let isTCPOrUDP = packet.proto == Wire.protoTCP || packet.proto == Wire.protoUDP
            for index in run {
                // Fields read in place: a copy of the whole rule per rule costs more than the test.
                let rule = first + index
                if rule.pointee.port != -1 && rule.pointee.port != port { continue }
                if rule.pointee.family != 0 && rule.pointee.family != packet.family { continue }
                let deny = rule.pointee.deny
                let hasPortRanges = rule.pointee.hasPortRanges
                let ignoresClaimedProtocol = deny && hasPortRanges && isNonFirstIPv6Fragment
                if rule.pointee.proto >= 0 && rule.pointee.proto != proto && !ignoresClaimedProtocol { continue }
                if !rule.pointee.source.contains(high: packet.sourceHigh, low: packet.sourceLow) { continue }
                if !rule.pointee.destination.contains(high: packet.destinationHigh, low: packet.destinationLow) { continue }
                if hasPortRanges {
                    guard isTCPOrUDP || ignoresClaimedProtocol else { continue }
                    if packet.isNonFirstFragment {
                        if !deny { continue }
                    } else {
                        guard packet.hasPorts,
                              packet.sourcePort >= rule.pointee.sourcePortLower,
                              packet.sourcePort <= rule.pointee.sourcePortUpper,
                              packet.destinationPort >= rule.pointee.destinationPortLower,
                              packet.destinationPort <= rule.pointee.destinationPortUpper
                        else { continue }
                    }
                }
                return !deny
            }
            return true
        }
    }
}
