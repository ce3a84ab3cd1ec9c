/// Splits a byte stream of concatenated JSON objects (etcd's gateway streams one object per watch
/// or keep-alive response, newline-delimited, but chunk boundaries fall anywhere) into whole objects.
///
/// Only the nesting of `{}`/`[]` and strings is tracked; each object's content is left to the JSON
/// decoder. Bytes between objects (newlines, spaces) are skipped.
struct JSONObjectStream {
    /// An object larger than this is a broken or hostile stream: `append` throws.
    let limit: Int
    private var buffer: [UInt8] = []
    private var depth = 0
    private var inString = false
    private var escaped = false
    /// Where the object being scanned starts in `buffer` (nil between objects).
    private var start: Int?
    private var scanned = 0

    struct TooLarge: Error, CustomStringConvertible {
        let limit: Int
        var description: String { "a streamed JSON object exceeds \(limit) bytes" }
    }

    init(limit: Int = 64 << 20) { self.limit = limit }

    /// Adds `bytes` and returns every object completed by them, in order.
    mutating func append<Bytes: Sequence>(_ bytes: Bytes) throws -> [[UInt8]] where Bytes.Element == UInt8 {
        buffer.append(contentsOf: bytes)
        var objects: [[UInt8]] = []
        var index = scanned
        while index < buffer.count {
            let byte = buffer[index]
            if let open = start {
                if inString {
                    if escaped { escaped = false }
                    else if byte == UInt8(ascii: "\\") { escaped = true }
                    else if byte == UInt8(ascii: "\"") { inString = false }
                } else if byte == UInt8(ascii: "\"") {
                    inString = true
                } else if byte == UInt8(ascii: "{") || byte == UInt8(ascii: "[") {
                    depth += 1
                } else if byte == UInt8(ascii: "}") || byte == UInt8(ascii: "]") {
                    depth -= 1
                    if depth == 0 {
                        objects.append(Array(buffer[open...index]))
                        start = nil
                    }
                }
            } else if byte == UInt8(ascii: "{") {
                start = index
                depth = 1
            }
            index += 1
        }
        // Drop what is consumed: everything before the open object, or all when none is open.
        if let open = start {
            if open > 0 { buffer.removeFirst(open); start = 0 }
        } else {
            buffer.removeAll(keepingCapacity: true)
        }
        scanned = buffer.count
        if buffer.count > limit { throw TooLarge(limit: limit) }
        return objects
    }
}
