import Testing
@testable import Config

@Suite struct AddressTests {
    @Test func macAddresses() {
        #expect(MACAddress("02:00:00:00:01:0A")?.description == "02:00:00:00:01:0a")
        #expect(MACAddress("ff:ff:ff:ff:ff:ff") == .broadcast)
        for bad in ["", "02:00:00:00:01", "02:00:00:00:01:01:01", "2:00:00:00:01:01", "02-00-00-00-01-01",
                    "+2:00:00:00:01:01", "02:00:00:00:01:-1", "02:00:00:00:01:0g", "02:00:00:00:01:", "０2:00:00:00:01:01"] {
            #expect(MACAddress(bad) == nil, "\(bad)")
        }
        #expect(MACAddress("01:00:5e:00:00:01")?.isMulticast == true)
        #expect(MACAddress("02:00:00:00:00:01")?.isMulticast == false)
    }

    @Test func ipv4Addresses() {
        #expect(IPv4Address("10.0.0.1")?.rawValue == 0x0A00_0001)
        #expect(IPv4Address("255.255.255.255")?.isBroadcast == true)
        #expect(IPv4Address("127.1.2.3")?.isLoopback == true)
        for bad in ["010.0.0.1", "10.0.0.01", "10.0.0.256", "10.0.0", "10.0.0.1.2", "10..0.1", "+1.0.0.1", "1.0.0.1 ", "0x1.0.0.1"] {
            #expect(IPv4Address(bad) == nil, "\(bad)")
        }
        #expect(IPv4Address("0.0.0.0")?.isUnspecified == true)
    }

    @Test func ipv6Addresses() {
        #expect(IPv6Address("::") == .unspecified)
        #expect(IPv6Address("::1")?.isLoopback == true)
        #expect(IPv6Address("fd00::1")?.description == "fd00::1")
        #expect(IPv6Address("1::") == IPv6Address(high: 0x0001_0000_0000_0000, low: 0))
        #expect(IPv6Address("1:2:3:4:5:6:7::") == IPv6Address(high: 0x0001_0002_0003_0004, low: 0x0005_0006_0007_0000))
        #expect(IPv6Address("::ffff:10.0.0.1") == IPv6Address(high: 0, low: 0x0000_FFFF_0A00_0001))
        #expect(IPv6Address("2001:DB8:0:0:1:0:0:1")?.description == "2001:db8::1:0:0:1")
        #expect(IPv6Address("fe80::1")?.isLinkLocal == true)
        for bad in [":", ":::", "1::2::3", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7", ":1:2:3:4:5:6:7", "1:2:3:4:5:6:7:",
                    "12345::", "g::", "::+1", "::-1", "1:2:3:4:5:6:7:8::", "::1.2.3.4:5", "1.2.3.4", "fe80::1%eth0", ""] {
            #expect(IPv6Address(bad) == nil, "\(bad)")
        }
    }

    @Test func prefixes() {
        #expect(IPPrefix("10.0.0.1")?.length == 32)
        #expect(IPPrefix("fd00::1")?.length == 128)
        #expect(IPPrefix("10.0.0.1/24")?.description == "10.0.0.1/24")
        #expect(IPPrefix("::/0")?.length == 0)
        for bad in ["10.0.0.1/33", "fd00::/129", "10.0.0.1/", "/24", "10.0.0.1/024", "10.0.0.1/-1", "10.0.0.1/24/1", "10.0.0.1/+8"] {
            #expect(IPPrefix(bad) == nil, "\(bad)")
        }
        let net = IPPrefix("10.0.0.0/24")
        #expect(net?.contains(.v4(IPv4Address(rawValue: 0x0A00_00FF))) == true)
        #expect(net?.contains(.v4(IPv4Address(rawValue: 0x0A00_0100))) == false)
        #expect(IPPrefix("fd00::/64")?.contains(.v4(IPv4Address(rawValue: 1))) == false)
    }
}
