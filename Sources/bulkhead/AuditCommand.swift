import ArgumentParser
import Audit
import Foundation

/// `bulkhead audit`: check and read the tamper-evident audit log (the daemon writes it at
/// `host.auditLog`, default `<stateDirectory>/audit.log`, its head at `<log>.head`).
struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit", abstract: "Check and read the tamper-evident audit log.",
        subcommands: [Verify.self, Show.self])

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check the audit log's hash chain against its head.",
            discussion: """
                Reports the first record that was changed, removed, reordered or inserted, and whether the \
                log was cut short (compared with the head, kept beside the log). Exit status: 0 intact, \
                1 tampered or cut short (or no head to compare with), 2 unreadable. Keep a copy of the head \
                elsewhere and pass it as --anchor: whoever can rewrite the log can rewrite its head beside it.
                """)

        @Argument(help: "The audit log.")
        var file: String

        @Option(help: "The chain's head (default: FILE.head).")
        var head: String?

        @Flag(help: "Check the chain alone: records cut off the end of the log go unnoticed.")
        var noHead = false

        @Option(help: ArgumentHelp(
            "A head saved earlier, away from the log (a copy of FILE.head).",
            discussion: "The log must still hold the record it names, unchanged: this catches a log cut short or rewritten together with its head."))
        var anchor: String?

        func validate() throws {
            if noHead && head != nil { throw ValidationError("--head and --no-head exclude each other") }
        }

        func run() throws {
            let report: AuditVerification
            do {
                report = try AuditLog.verify(path: file, headPath: noHead ? nil : head ?? AuditLog.defaultHeadPath(forLog: file),
                                             anchorPath: anchor)
            } catch {
                FileHandle.standardError.write(Data("\(file): unreadable: \(error)\n".utf8))
                throw ExitCode(2)
            }
            if noHead, report.problem?.kind == .headMissing {
                let anchored = report.anchor.map { ", anchor matches record \($0.sequence)" } ?? ""
                print("\(file): \(report.lines) records, chain intact\(anchored) (no head: a log cut short is not detected)")
                for note in report.notes { print("note: \(note)") }
                return
            }
            print("\(file): \(report)")
            if !report.isIntact { throw ExitCode(1) }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print audit records as a table (time, principal, action, target, outcome, reason).",
            discussion: "Reads the records as they are: `bulkhead audit verify` says whether they can be trusted.")

        @Argument(help: "The audit log.")
        var file: String

        @Option(help: "Start after this record.")
        var after: UInt64 = 0

        @Option(help: "Print at most this many records.")
        var limit: Int = 100

        func validate() throws {
            guard limit > 0 else { throw ValidationError("--limit must be at least 1") }
        }

        func run() throws {
            guard let data = FileManager.default.contents(atPath: file) else {
                FileHandle.standardError.write(Data("\(file): cannot be read\n".utf8))
                throw ExitCode(2)
            }
            let bytes = [UInt8](data)
            var rows: [[String]] = [["SEQ", "TIME", "PRINCIPAL", "UID", "ACTION", "TARGET", "OUTCOME", "REASON"]]
            var lineNumber: UInt64 = 0
            var start = 0
            for index in bytes.indices where bytes[index] == 0x0A {
                defer { start = index + 1 }
                lineNumber += 1
                guard lineNumber > after else { continue }
                guard rows.count <= limit else { break }
                switch AuditRecordCodec.decode(bytes[start..<index]) {
                case .success(let decoded):
                    let record = decoded.record, event = record.event
                    rows.append([String(record.sequence), record.time, event.principal, event.uid.map { String($0) } ?? "-",
                                 event.action, event.target.isEmpty ? "-" : event.target, event.outcome.name,
                                 event.outcome.reason ?? "-"].map(printable))
                case .failure(let error):
                    rows.append(["line \(lineNumber)", "not a record: \(error)"])
                }
            }
            print(table(rows), terminator: "")
        }

        /// Control characters (a terminal's escape sequences among them) shown as escapes: a
        /// record's strings come from API callers.
        private func printable(_ text: String) -> String {
            var out = ""
            for scalar in text.unicodeScalars {
                if scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) {
                    out += "\\u{" + String(scalar.value, radix: 16) + "}"
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
            return out
        }

        /// Columns padded to their widest cell; the last one not padded.
        private func table(_ rows: [[String]]) -> String {
            var widths: [Int] = []
            for row in rows where row.count > 2 {
                for (column, cell) in row.enumerated() {
                    if column == widths.count { widths.append(0) }
                    widths[column] = max(widths[column], cell.count)
                }
            }
            var out = ""
            for row in rows {
                for (column, cell) in row.enumerated() {
                    if column == row.count - 1 {
                        out += cell
                    } else {
                        let width = column < widths.count ? widths[column] : cell.count
                        out += cell + String(repeating: " ", count: max(0, width - cell.count)) + "  "
                    }
                }
                out += "\n"
            }
            return out
        }
    }
}
