import Observability
import Config
import XCTest

final class MetricsListenAddressTests: XCTestCase {
    func testLoopbackAndUnixSocketsAreAccepted() throws {
        XCTAssertEqual(try MetricsListenAddress.parse("127.0.0.1:9464"), .tcp(host: "127.0.0.1", port: 9464))
        XCTAssertEqual(try MetricsListenAddress.parse("127.1.2.3:1"), .tcp(host: "127.1.2.3", port: 1))
        XCTAssertEqual(try MetricsListenAddress.parse("[::1]:9464"), .tcp(host: "::1", port: 9464))
        XCTAssertEqual(try MetricsListenAddress.parse("[0:0:0:0:0:0:0:1]:65535"), .tcp(host: "::1", port: 65535))
        XCTAssertEqual(try MetricsListenAddress.parse("[0::1]:9464"), .tcp(host: "::1", port: 9464))
        XCTAssertEqual(try MetricsListenAddress.parse("unix:/run/bulkhead/metrics.sock"), .unix(path: "/run/bulkhead/metrics.sock"))
        XCTAssertEqual(try MetricsListenAddress.parse("127.0.0.1:0", allowEphemeralPort: true), .tcp(host: "127.0.0.1", port: 0))
    }

    func testDescriptionReadsBack() throws {
        for text in ["127.0.0.1:9464", "[::1]:9464", "unix:/run/bulkhead/metrics.sock"] {
            XCTAssertEqual(try MetricsListenAddress.parse(text).description, text)
        }
    }

    /// Each refusal names its reason; the address is in the description.
    func testRefusals() {
        let cases: [(String, String)] = [
            ("0.0.0.0:9464", "every interface"),
            ("10.0.0.1:9464", "only loopback"),
            ("192.168.1.1:9464", "127.0.0.0/8"),
            ("[::]:9464", "must be ::1"),
            ("[fe80::1]:9464", "must be ::1"),
            ("[::ffff:127.0.0.1]:9464", "not an IPv6 address"),
            ("localhost:9464", "host name"),
            ("metrics.example.com:9464", "host name"),
            ("127.0.0.1", "expected HOST:PORT"),
            ("127.0.0.1:", "port"),
            ("127.0.0.1:0", "from 1 to 65535"),
            ("127.0.0.1:65536", "from 1 to 65535"),
            ("127.0.0.1:99999999999999999999", "port"),
            ("127.0.0.1:+80", "port"),
            ("127.000.0.1:9464", "not an IP address"),
            ("::1:9464", "bracketed"),
            ("[::1]9464", "':PORT'"),
            ("[::1:9464", "closing"),
            ("unix:run/metrics.sock", "absolute"),
            ("unix:", "absolute"),
            ("unix:/run/../etc/metrics.sock", "'..'"),
            ("unix:/" + String(repeating: "a", count: 200), "at most 107 bytes"),
            ("", "expected HOST:PORT"),
        ]
        for (text, reason) in cases {
            XCTAssertThrowsError(try MetricsListenAddress.parse(text), text) { error in
                let description = "\(error)"
                XCTAssertTrue(description.contains(reason), "\(text): \(description)")
                XCTAssertTrue(description.contains("'\(text)'"), "\(text): \(description)")
            }
        }
    }
}
