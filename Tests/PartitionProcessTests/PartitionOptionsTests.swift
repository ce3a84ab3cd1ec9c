import PartitionProcess
import XCTest

/// bulkhead-vmm's hand-written command line parser: what `bulkhead run` passes, both value
/// spellings, defaults, and a clear refusal of everything else.
final class PartitionOptionsTests: XCTestCase {
    private func parse(_ arguments: [String]) throws -> PartitionOptions {
        guard case .run(let options) = try PartitionOptions.parse(arguments) else {
            throw XCTSkip("unreachable: parse asked for help")
        }
        return options
    }

    private func refusal(_ arguments: [String]) -> String {
        do {
            _ = try PartitionOptions.parse(arguments)
            return "accepted"
        } catch {
            return error.description
        }
    }

    func testTheDaemonsCommandLine() throws {
        let options = try parse(["--config", "/etc/b.json", "--tenant", "blue", "--id", "p",
                                 "--log-level", "debug", "--stop-when-stdin-closes"])
        var expected = PartitionOptions()
        expected.config = "/etc/b.json"
        expected.tenant = "blue"
        expected.id = "p"
        expected.logLevel = "debug"
        expected.stopWhenStdinCloses = true
        XCTAssertEqual(options, expected)
        XCTAssertEqual(expected.connectTimeout, 20)
        XCTAssertFalse(expected.noJail)
        XCTAssertFalse(expected.console)
    }

    func testEqualsSpellingAndFlags() throws {
        let options = try parse(["--config=c.json", "--tenant=t", "--id=i", "--connect-timeout=2.5", "--console", "--no-jail"])
        XCTAssertEqual(options.config, "c.json")
        XCTAssertEqual(options.connectTimeout, 2.5)
        XCTAssertTrue(options.console)
        XCTAssertTrue(options.noJail)
    }

    func testHelp() throws {
        XCTAssertEqual(try PartitionOptions.parse(["--help"]), .help)
        XCTAssertEqual(try PartitionOptions.parse(["--config", "c", "-h"]), .help)
        XCTAssertTrue(PartitionOptions.usage.contains("--stop-when-stdin-closes"))
    }

    func testRefusals() {
        let base = ["--config", "c", "--tenant", "t", "--id", "i"]
        XCTAssertEqual(refusal(["--tenant", "t", "--id", "i"]), "missing required option '--config'")
        XCTAssertEqual(refusal(base + ["--frobnicate"]), "unknown option '--frobnicate'")
        XCTAssertEqual(refusal(base + ["extra"]), "unexpected argument 'extra'")
        XCTAssertEqual(refusal(base + ["--id", "j"]), "option '--id' given more than once")
        XCTAssertEqual(refusal(["--config", "--tenant", "t", "--id", "i"]), "missing value for '--config'")
        XCTAssertEqual(refusal(base + ["--log-level", "loud"]), "unknown log level 'loud'")
        XCTAssertEqual(refusal(base + ["--connect-timeout", "601"]), "--connect-timeout must be 0...600 seconds, not '601'")
        XCTAssertEqual(refusal(base + ["--connect-timeout", "soon"]), "--connect-timeout must be 0...600 seconds, not 'soon'")
        XCTAssertEqual(refusal(base + ["--console=yes"]), "flag '--console' takes no value")
    }
}
