import Config
import Management
import XCTest

final class JSONSerializationTests: XCTestCase {
    func testRoundTripKeepsValuesAndNumbersExactly() throws {
        let text = #"{"a": [1, -0.5, 1e6, 18446744073709551615], "b": {"c": null, "d": true, "e": false}, "s": "x\"\\\/\n\t\u0001é𝄞"}"#
        let parsed = try XCTUnwrap(JSONParser.parse(text).value)
        let compact = parsed.serialized()
        XCTAssertEqual(compact, #"{"a":[1,-0.5,1e6,18446744073709551615],"b":{"c":null,"d":true,"e":false},"s":"x\"\\/\n\t\u0001é𝄞"}"#)
        for pretty in [false, true] {
            let again = try XCTUnwrap(JSONParser.parse(parsed.serialized(pretty: pretty)).value)
            XCTAssertEqual(again.serialized(), compact)
        }
    }

    func testControlCharactersAreEscaped() {
        let value = JSONValue.string("\u{0}\u{1F}\u{7F}\u{08}\u{0C}\r")
        XCTAssertEqual(value.serialized(), #""\u0000\u001F\u007F\b\f\r""#)
    }

    func testPrettyOutput() {
        let value = JSONValue.object([("ips", .array([.string("10.0.0.1/24")])), ("empty", .object([])),
                                      ("nested", .array([.object([("x", .number(1))])]))])
        XCTAssertEqual(value.serialized(pretty: true), """
            {
              "ips": ["10.0.0.1/24"],
              "empty": {},
              "nested": [
                {
                  "x": 1
                }
              ]
            }
            """)
    }

    func testIDRuleIsTheConfigurations() {
        XCTAssertTrue(HostConfiguration.isValidID("a"))
        XCTAssertTrue(HostConfiguration.isValidID("0-a"))
        XCTAssertFalse(HostConfiguration.isValidID("-a"))
        XCTAssertFalse(HostConfiguration.isValidID(""))
        XCTAssertFalse(HostConfiguration.isValidID(String(repeating: "a", count: 33)))
    }
}

final class CtlTablesTests: XCTestCase {
    func testColumnsAreAligned() {
        XCTAssertEqual(CtlTables.table(["A", "LONGER"], [["xyz", "1"], ["q", "22"]]), """
            A    LONGER
            xyz  1
            q    22
            """)
    }

    func testErrorsListEachProblemOnItsOwnLine() {
        let body = JSONParser.parse(#"{"error": {"reason": "bad", "problems": [{"path": "$.a", "line": 2, "column": 3, "message": "m1"}, {"path": "$.b", "message": "m2"}]}}"#).value
        XCTAssertEqual(CtlTables.error(body, status: 422), "error: bad\n  $.a (line 2, column 3): m1\n  $.b: m2")
        XCTAssertEqual(CtlTables.error(nil, status: 502), "error: the daemon answered 502 without a reason")
    }

    func testApplySummary() {
        let body = JSONParser.parse(#"{"dryRun": true, "applied": false, "changes": ["tenant red removed"]}"#).value!
        XCTAssertEqual(CtlTables.apply(body), "dry run: the configuration is valid; 1 change(s) would be made:\n  tenant red removed")
    }

    func testVolumeSizes() {
        let volume = JSONParser.parse(#"{"id": "d", "sizeBytes": 1073741824}"#).value!
        XCTAssertEqual(CtlTables.objects("volumes", [("blue", [volume])]), """
            TENANT  ID  SIZE   READ-ONLY  QOS
            blue    d   1 GiB  false      -
            """)
    }
}
