import Foundation
import XCTest

/// configs/demo.json names the SHA-256 of the test guest its partitions boot (deploy/demo.sh
/// builds it): a change to Tests/Guest that is not carried into the configuration would make
/// every demo partition refuse to start (measured launch), so it fails here first.
final class DemoGuestDigestTests: XCTestCase {
    func testTheDemoConfigurationNamesTheDigestOfTheTestGuestBuiltFromThisTree() throws {
        for tool in ["gcc", "objcopy"] where Host.which(tool) == nil {
            throw XCTSkip("needs \(tool) on PATH to build the test guest (gcc and binutils)")
        }
        let digest = try PartitionGuestImage.sha256(of: try TestGuestTools.built.get())

        let data = try Data(contentsOf: TestTopology.repository.appendingPathComponent("configs/demo.json"))
        let document = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let partitions = (document["tenants"] as? [[String: Any]] ?? []).flatMap { $0["partitions"] as? [[String: Any]] ?? [] }
        XCTAssertFalse(partitions.isEmpty, "the demo runs a partition in each tenant")
        for partition in partitions {
            let image = try XCTUnwrap(partition["image"] as? [String: Any], "demo partitions boot the test guest image")
            XCTAssertEqual(image["sha256"] as? String, digest,
                           "configs/demo.json: partition \(partition["id"] ?? "?") names another digest; the test guest built from this tree measures \(digest)")
        }
    }
}
