/// Network address value types shared by configuration, switch and drivers.

/// A 48-bit Ethernet MAC address, stored in the low 48 bits of a `UInt64`
/// (first octet most significant) so that it can be compared and hashed cheaply.
public struct MACAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let rawValue: UInt64

    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue & 0xFFFF_FFFF_FFFF }

    public init(_ b0: UInt8, _ b1: UInt8, _ b2: UInt8, _ b3: UInt8, _ b4: UInt8, _ b5: UInt8) {
        self.init(rawValue: UInt64(b0) << 40 | UInt64(b1) << 32 | UInt64(b2) << 24
            | UInt64(b3) << 16 | UInt64(b4) << 8 | UInt64(b5))
    }

    /// The six bytes, most significant (first on the wire) first.
    public var bytes: [UInt8] { (0..<6).map { UInt8(truncatingIfNeeded: rawValue >> (40 - 8 * UInt64($0))) } }

    /// Parses `aa:bb:cc:dd:ee:ff` (case-insensitive). Returns nil for anything else.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        var value: UInt64 = 0
        for part in parts {
            guard part.count == 2, part.allSatisfy(\.isHexDigitASCII), let octet = UInt8(part, radix: 16) else { return nil }
            value = value << 8 | UInt64(octet)
        }
        self.init(rawValue: value)
    }

    public static let broadcast = MACAddress(rawValue: 0xFFFF_FFFF_FFFF)
    public static let zero = MACAddress(rawValue: 0)

    /// The I/G bit: set for multicast and broadcast addresses.
    @inlinable public var isMulticast: Bool { rawValue & 0x0100_0000_0000 != 0 }
    @inlinable public var isBroadcast: Bool { rawValue == 0xFFFF_FFFF_FFFF }
    @inlinable public var isZero: Bool { rawValue == 0 }

    public var octets: [UInt8] { (0..<6).map { UInt8(truncatingIfNeeded: rawValue >> UInt64(40 - 8 * $0)) } }

    public var description: String {
        octets.map { $0 < 16 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined(separator: ":")
    }

    /// The IPv6 link-local address a stack derives from this MAC with modified EUI-64 (RFC 4291 2.5.1).
    public var eui64LinkLocal: IPv6Address {
        let o = octets
        let iid = UInt64(o[0] ^ 0x02) << 56 | UInt64(o[1]) << 48 | UInt64(o[2]) << 40 | 0xFF_FE << 24
            | UInt64(o[3]) << 16 | UInt64(o[4]) << 8 | UInt64(o[5])
        return IPv6Address(high: 0xFE80_0000_0000_0000, low: iid)
    }

    public static func < (a: MACAddress, b: MACAddress) -> Bool { a.rawValue < b.rawValue }
}

/// An IPv4 address in host byte order.
public struct IPv4Address: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Parses dotted-quad notation (`10.0.0.1`); rejects leading zeros and out-of-range octets.
    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy({ $0.isASCII && $0.isNumber }),
                  !(part.count > 1 && part.first == "0"), let octet = UInt8(part) else { return nil }
            value = value << 8 | UInt32(octet)
        }
        self.rawValue = value
    }

    public static let any = IPv4Address(rawValue: 0)
    public var isMulticast: Bool { rawValue >> 28 == 0xE }
    public var isUnspecified: Bool { rawValue == 0 }
    /// 127.0.0.0/8.
    public var isLoopback: Bool { rawValue >> 24 == 127 }
    /// The limited broadcast address 255.255.255.255.
    public var isBroadcast: Bool { rawValue == .max }
    public var description: String {
        "\(rawValue >> 24).\(rawValue >> 16 & 0xFF).\(rawValue >> 8 & 0xFF).\(rawValue & 0xFF)"
    }
    public static func < (a: IPv4Address, b: IPv4Address) -> Bool { a.rawValue < b.rawValue }
}

/// An IPv6 address as two 64-bit halves in host byte order.
public struct IPv6Address: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let high: UInt64
    public let low: UInt64
    @inlinable public init(high: UInt64, low: UInt64) { self.high = high; self.low = low }

    /// Parses RFC 4291 text form, including `::` compression and a trailing dotted quad.
    public init?(_ text: String) {
        guard !text.isEmpty, text.count <= 45 else { return nil }
        var groups: [UInt16] = []
        var tailGroups: [UInt16] = []
        var seenDoubleColon = false
        let halves = text.split(separator: "::", omittingEmptySubsequences: false).map(String.init)
        guard halves.count <= 2 else { return nil }
        func parse(_ part: String, allowV4: Bool) -> [UInt16]? {
            if part.isEmpty { return [] }
            var result: [UInt16] = []
            let fields = part.split(separator: ":", omittingEmptySubsequences: false)
            for (i, field) in fields.enumerated() {
                if allowV4, i == fields.count - 1, field.contains(".") {
                    guard let v4 = IPv4Address(String(field)) else { return nil }
                    result.append(UInt16(v4.rawValue >> 16)); result.append(UInt16(v4.rawValue & 0xFFFF))
                    continue
                }
                guard (1...4).contains(field.count), field.allSatisfy(\.isHexDigitASCII),
                      let g = UInt16(field, radix: 16) else { return nil }
                result.append(g)
            }
            return result
        }
        if halves.count == 2 {
            seenDoubleColon = true
            guard let h = parse(halves[0], allowV4: false), let t = parse(halves[1], allowV4: true) else { return nil }
            groups = h; tailGroups = t
            guard groups.count + tailGroups.count <= 7 else { return nil }
        } else {
            guard let g = parse(halves[0], allowV4: true), g.count == 8 else { return nil }
            groups = g
        }
        if seenDoubleColon {
            groups += Array(repeating: 0, count: 8 - groups.count - tailGroups.count) + tailGroups
        }
        var high: UInt64 = 0, low: UInt64 = 0
        for i in 0..<4 { high = high << 16 | UInt64(groups[i]) }
        for i in 4..<8 { low = low << 16 | UInt64(groups[i]) }
        self.init(high: high, low: low)
    }

    public static let unspecified = IPv6Address(high: 0, low: 0)
    public var isUnspecified: Bool { high == 0 && low == 0 }
    public var isMulticast: Bool { high >> 56 == 0xFF }
    public var isLinkLocal: Bool { high >> 54 == 0x3FA }  // fe80::/10
    /// `::1`.
    public var isLoopback: Bool { high == 0 && low == 1 }

    public var description: String {
        let g = (0..<8).map { i -> UInt16 in
            let word = i < 4 ? high : low
            return UInt16(truncatingIfNeeded: word >> UInt64(48 - 16 * (i % 4)))
        }
        // Compress the longest run of two or more zero groups (RFC 5952).
        var bestStart = -1, bestLen = 0, i = 0
        while i < 8 {
            if g[i] == 0 {
                var j = i
                while j < 8 && g[j] == 0 { j += 1 }
                if j - i > bestLen && j - i >= 2 { bestStart = i; bestLen = j - i }
                i = j
            } else { i += 1 }
        }
        func hex(_ r: Range<Int>) -> String { r.map { String(g[$0], radix: 16) }.joined(separator: ":") }
        if bestStart < 0 { return hex(0..<8) }
        return hex(0..<bestStart) + "::" + hex((bestStart + bestLen)..<8)
    }

    public static func < (a: IPv6Address, b: IPv6Address) -> Bool { (a.high, a.low) < (b.high, b.low) }
}

/// An IPv4 or IPv6 address.
public enum IPAddress: Hashable, Sendable, CustomStringConvertible {
    case v4(IPv4Address)
    case v6(IPv6Address)

    public init?(_ text: String) {
        if let a = IPv4Address(text) { self = .v4(a) } else if let a = IPv6Address(text) { self = .v6(a) } else { return nil }
    }
    public var description: String {
        switch self { case .v4(let a): a.description; case .v6(let a): a.description }
    }
}

/// An address with a prefix length: `10.0.0.1/24`, `fd00::1/64`. Used both for an interface
/// address (the address and its subnet) and for a prefix match (the network part only).
public struct IPPrefix: Hashable, Sendable, CustomStringConvertible {
    public let address: IPAddress
    public let length: Int

    public init?(address: IPAddress, length: Int) {
        switch address {
        case .v4: guard (0...32).contains(length) else { return nil }
        case .v6: guard (0...128).contains(length) else { return nil }
        }
        self.address = address
        self.length = length
    }

    /// Parses `ADDRESS/LENGTH`, or a bare address, which gets the full length (/32 or /128).
    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), let address = IPAddress(String(parts[0])) else { return nil }
        let full: Int
        switch address { case .v4: full = 32; case .v6: full = 128 }
        var length = full
        if parts.count == 2 {
            guard !parts[1].isEmpty, parts[1].count <= 3, parts[1].allSatisfy({ $0.isASCII && $0.isNumber }),
                  !(parts[1].count > 1 && parts[1].first == "0"), let l = Int(parts[1]) else { return nil }
            length = l
        }
        self.init(address: address, length: length)
    }

    /// Whether `other` lies inside this prefix.
    public func contains(_ other: IPAddress) -> Bool {
        switch (address, other) {
        case (.v4(let net), .v4(let a)):
            if length == 0 { return true }
            let mask: UInt32 = length == 32 ? .max : ~(UInt32.max >> UInt32(length))
            return net.rawValue & mask == a.rawValue & mask
        case (.v6(let net), .v6(let a)):
            if length == 0 { return true }
            if length <= 64 {
                let mask: UInt64 = length == 64 ? .max : ~(UInt64.max >> UInt64(length))
                return net.high & mask == a.high & mask
            }
            let mask: UInt64 = length == 128 ? .max : ~(UInt64.max >> UInt64(length - 64))
            return net.high == a.high && net.low & mask == a.low & mask
        default:
            return false
        }
    }

    public var description: String { "\(address)/\(length)" }
}

extension Character {
    /// 0-9, a-f, A-F only (`isHexDigit` also accepts full-width forms).
    var isHexDigitASCII: Bool { isASCII && isHexDigit }
}
