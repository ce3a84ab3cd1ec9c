import Foundation

// The JSON of etcd's gRPC gateway (v3 API). The gateway writes int64 fields as strings and leaves
// out fields holding their zero value (false, 0, empty), so every field is optional and integers
// are read from either form.

/// An int64 the gateway writes as a string ("12") or, from some versions, as a number.
struct GatewayInt64: Codable, Sendable, Equatable {
    var value: Int64

    init(_ value: Int64) { self.value = value }

    init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let text = try? container.decode(String.self), let value = Int64(text) {
            self.value = value
        } else {
            self.value = try container.decode(Int64.self)
        }
    }

    func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(String(value))
    }
}

extension Optional where Wrapped == GatewayInt64 {
    var int64: Int64 { self?.value ?? 0 }
}

struct ResponseHeader: Decodable, Sendable {
    var revision: GatewayInt64?
}

/// A key and its value, both base64 in the gateway's JSON.
struct GatewayKeyValue: Decodable, Sendable {
    var key: String?
    var value: String?
    var mod_revision: GatewayInt64?
}

/// The gateway's error body (`{"error": ..., "message": ..., "code": grpcCode}`) and a stream's
/// error object (`{"error": {"grpc_code":..., "message": ...}}`).
struct GatewayError: Decodable, Sendable {
    var message: String?
    var code: Int?

    private enum Keys: String, CodingKey { case error, message, code, grpc_code }

    init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: Keys.self)
        if let nested = try? container.nestedContainer(keyedBy: Keys.self, forKey: .error) {
            message = try? nested.decode(String.self, forKey: .message)
            code = (try? nested.decode(Int.self, forKey: .grpc_code)) ?? (try? nested.decode(Int.self, forKey: .code))
        } else {
            message = (try? container.decode(String.self, forKey: .message)) ?? (try? container.decode(String.self, forKey: .error))
            code = try? container.decode(Int.self, forKey: .code)
        }
    }
}

struct RangeRequest: Encodable {
    var key: String
    var range_end: String
    var revision: GatewayInt64?
}

struct RangeResponse: Decodable {
    var header: ResponseHeader?
    var kvs: [GatewayKeyValue]?
    var more: Bool?
}

struct PutRequest: Encodable {
    var key: String
    var value: String
    var lease: GatewayInt64
}

struct DeleteRangeRequest: Encodable {
    var key: String
}

struct CompactionRequest: Encodable {
    var revision: GatewayInt64
}

struct LeaseGrantRequest: Encodable {
    var TTL: GatewayInt64
}

struct LeaseGrantResponse: Decodable {
    var ID: GatewayInt64?
    var TTL: GatewayInt64?
    var error: String?
}

struct LeaseIDRequest: Encodable {
    var ID: GatewayInt64
}

struct LeaseKeepAliveResponse: Decodable {
    var ID: GatewayInt64?
    var TTL: GatewayInt64?
}

/// One object of a streamed response: `{"result": ...}` or `{"error": ...}`.
struct StreamedResult<Result: Decodable>: Decodable {
    var result: Result?
}

struct WatchCreateRequest: Encodable {
    struct Create: Encodable {
        var key: String
        var range_end: String
        var start_revision: GatewayInt64
    }
    var create_request: Create
}

struct WatchResponse: Decodable, Sendable {
    struct Event: Decodable, Sendable {
        /// "PUT" (left out: the zero value) or "DELETE"; 0 or 1 from gateways that write enums as numbers.
        var type: EventType?
        var kv: GatewayKeyValue?
    }

    enum EventType: Decodable, Sendable, Equatable {
        case put, delete, unknown

        init(from decoder: Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let text = try? container.decode(String.self) {
                self = text == "PUT" ? .put : text == "DELETE" ? .delete : .unknown
            } else if let number = try? container.decode(Int.self) {
                self = number == 0 ? .put : number == 1 ? .delete : .unknown
            } else {
                self = .unknown
            }
        }
    }

    var header: ResponseHeader?
    var watch_id: GatewayInt64?
    var created: Bool?
    var canceled: Bool?
    var compact_revision: GatewayInt64?
    var cancel_reason: String?
    var events: [Event]?
}

enum Base64 {
    static func encode(_ text: String) -> String { Data(text.utf8).base64EncodedString() }

    static func decode(_ text: String?) -> Data? {
        guard let text else { return Data() }
        return Data(base64Encoded: text)
    }

    /// The end of the key range holding every key that starts with `prefix`: the prefix with its
    /// last byte that is not 0xff incremented (etcd's "prefix end"); "\0" (every key) when none.
    static func prefixEnd(_ prefix: String) -> String {
        var bytes = Array(prefix.utf8)
        while let last = bytes.last {
            if last < 0xff {
                bytes[bytes.count - 1] = last + 1
                return Data(bytes).base64EncodedString()
            }
            bytes.removeLast()
        }
        return Data([0]).base64EncodedString()
    }
}
