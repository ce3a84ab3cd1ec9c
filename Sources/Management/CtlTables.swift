import Config

/// `bulkhead ctl`'s human output: the API's JSON answers as aligned tables. Pure, so that what
/// an operator reads is tested.
public enum CtlTables {
    /// Rows under a header, each column as wide as its widest cell, two spaces apart.
    public static func table(_ header: [String], _ rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for row in rows {
            for (index, cell) in row.enumerated() where index < widths.count {
                widths[index] = max(widths[index], cell.count)
            }
        }
        func line(_ cells: [String]) -> String {
            var out = ""
            for (index, cell) in cells.enumerated() where index < widths.count {
                let last = index == widths.count - 1
                out += last ? cell : cell + String(repeating: " ", count: widths[index] - cell.count + 2)
            }
            return out
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n")
    }

    /// An error answer: its reason, then each problem of the configuration on its own line.
    public static func error(_ body: JSONValue?, status: Int) -> String {
        guard let error = body?["error"], let reason = error["reason"]?.stringValue else {
            return "error: the daemon answered \(status) without a reason"
        }
        var lines = ["error: \(reason)"]
        for problem in error["problems"]?.arrayElements ?? [] {
            let path = problem["path"]?.stringValue ?? "$"
            let message = problem["message"]?.stringValue ?? ""
            var position = ""
            if let line = problem["line"].map(text), let column = problem["column"].map(text) {
                position = " (line \(line), column \(column))"
            } else if let line = problem["line"].map(text) {
                position = " (line \(line))"
            }
            lines.append("  \(path)\(position): \(message)")
        }
        return lines.joined(separator: "\n")
    }

    public static func health(_ body: JSONValue) -> String {
        var who = "\(body["principal"].map(text) ?? "?") (\(body["role"].map(text) ?? "?")"
        if let tenant = body["tenant"]?.stringValue { who += ", tenant \(tenant)" }
        return "\(body["status"].map(text) ?? "?"): you are \(who))"
    }

    public static func status(_ body: JSONValue) -> String {
        var lines: [String] = []
        if let daemon = body["daemon"] {
            let cgroups = daemon["cgroups"]
            let cgroupText = cgroups?["enabled"]?.serialized() == "true"
                ? "enabled (\(cgroups?["path"].map(text) ?? ""))" : "disabled: \(cgroups?["reason"].map(text) ?? "")"
            lines.append("daemon: pid \(daemon["pid"].map(text) ?? "-"), started \(daemon["startedAt"].map(text) ?? "-")")
            lines.append("  executable sha256 \(daemon["executableSHA256"].map(text) ?? "-")")
            lines.append("  configuration sha256 \(daemon["configurationSHA256"].map(text) ?? "-")")
            lines.append("  cgroups: \(cgroupText)")
            lines.append("")
        }
        if let fleet = body["fleet"] {
            let hosts = (fleet["remoteHosts"]?.arrayElements ?? []).map(text)
            lines.append("fleet: host \(fleet["hostId"].map(text) ?? "-"), \(fleet["state"].map(text) ?? "-") since \(fleet["since"].map(text) ?? "-")"
                + (fleet["endpoint"].map { " (etcd \(text($0)))" } ?? ""))
            lines.append("  revision \(fleet["revision"].map(text) ?? "-"), lease \(fleet["lease"].map(text) ?? "-"), remote hosts: \(hosts.isEmpty ? "none" : hosts.joined(separator: ", "))")
            if let error = fleet["lastError"] { lines.append("  last error: \(text(error))") }
            for problem in (fleet["problems"]?.arrayElements ?? []) { lines.append("  left out: \(text(problem))") }
            lines.append("")
        }
        let rows = (body["children"]?.arrayElements ?? []).map { child in
            ["kind", "tenant", "id", "state", "pid", "restarts", "since", "lastExit"].map { child[$0].map(text) ?? "-" }
        }
        lines.append(table(["KIND", "TENANT", "ID", "STATE", "PID", "RESTARTS", "SINCE", "LAST EXIT"], rows))
        return lines.joined(separator: "\n")
    }

    /// `GET /v1/tenants`: one line per tenant with how many objects of each kind it has.
    public static func tenants(_ body: JSONValue) -> String {
        let rows = (body["tenants"]?.arrayElements ?? []).map { tenant in
            [tenant["id"].map(text) ?? "?"] + ["segments", "ports", "volumes", "partitions"].map {
                String(tenant[$0]?.arrayElements?.count ?? 0)
            }
        }
        return table(["TENANT", "SEGMENTS", "PORTS", "VOLUMES", "PARTITIONS"], rows)
    }

    /// One tenant: a table of each kind of its objects.
    public static func tenant(_ tenant: JSONValue) -> String {
        let id = tenant["id"].map(text) ?? "?"
        var sections = ["tenant \(id)"]
        for kind in ["segments", "ports", "volumes", "partitions"] {
            sections.append("")
            sections.append(objects(kind, [(id, tenant[kind]?.arrayElements ?? [])]))
        }
        if let acl = tenant["acl"]?.arrayElements, !acl.isEmpty {
            sections.append("")
            sections.append("acl: \(acl.count) rule(s)")
        }
        return sections.joined(separator: "\n")
    }

    /// The objects of one kind of some tenants, with a TENANT column.
    public static func objects(_ kind: String, _ byTenant: [(tenant: String, objects: [JSONValue])]) -> String {
        let columns: [(String, (JSONValue) -> String)]
        switch kind {
        case "segments":
            columns = [("ID", field("id")), ("VNI", field("vni")), ("MTU", { $0["mtu"].map(text) ?? "1500" })]
        case "ports":
            columns = [("ID", field("id")), ("KIND", { $0["kind"].map(text) ?? "tap" }), ("SEGMENT", field("segment")),
                       ("MAC", field("mac")), ("IPS", field("ips")), ("NETNS", field("netns"))]
        case "volumes":
            columns = [("ID", field("id")), ("SIZE", { $0["sizeBytes"].map(text).map(bytes) ?? "-" }),
                       ("READ-ONLY", { $0["readOnly"].map(text) ?? "false" }), ("QOS", { $0["qos"] == nil ? "-" : "yes" })]
        case "partitions":
            columns = [("ID", field("id")), ("VCPUS", field("vcpus")), ("MEMORY", { $0["memoryMiB"].map(text).map { "\($0) MiB" } ?? "-" }),
                       ("BOOT", { $0["kernel"] != nil ? "linux" : ($0["image"] != nil ? "image" : "-") }),
                       ("DISKS", field("disks")), ("NICS", field("nics")), ("RESTART", { $0["restart"].map(text) ?? "on-reboot" })]
        default:
            columns = [("ID", field("id"))]
        }
        var rows: [[String]] = []
        for (tenant, objects) in byTenant {
            for object in objects { rows.append([tenant] + columns.map { $0.1(object) }) }
        }
        return table(["TENANT"] + columns.map(\.0), rows)
    }

    /// One object: its JSON members, one per line.
    public static func object(_ object: JSONValue) -> String {
        guard case .object(let members) = object.kind else { return object.serialized(pretty: true) }
        let width = members.map(\.key.count).max() ?? 0
        return members.map { member in
            member.key + String(repeating: " ", count: width - member.key.count + 2) + text(member.value)
        }.joined(separator: "\n")
    }

    public static func counters(_ body: JSONValue) -> String {
        if body["available"]?.serialized() == "false" { return "no counters: the switch does not run" }
        let ports = (body["ports"]?.arrayElements ?? []).map { port -> [String] in
            let drops = (port["drops"].flatMap { value -> [JSONMember]? in
                if case .object(let members) = value.kind { return members }
                return nil
            } ?? []).filter { text($0.value) != "0" }.map { "\($0.key)=\(text($0.value))" }
            return [port["tenant"].map(text) ?? "?", port["port"].map(text) ?? "?", port["segment"].map(text) ?? "?",
                    port["rx"]?["frames"].map(text) ?? "0", port["rx"]?["bytes"].map(text) ?? "0",
                    port["tx"]?["frames"].map(text) ?? "0", port["tx"]?["bytes"].map(text) ?? "0",
                    drops.isEmpty ? "-" : drops.joined(separator: ",")]
        }
        let segments = (body["segments"]?.arrayElements ?? []).map {
            [$0["tenant"].map(text) ?? "?", $0["segment"].map(text) ?? "?", $0["macEntries"].map(text) ?? "0"]
        }
        return table(["TENANT", "PORT", "SEGMENT", "RX FRAMES", "RX BYTES", "TX FRAMES", "TX BYTES", "DROPS"], ports)
            + "\n\n" + table(["TENANT", "SEGMENT", "MAC ENTRIES"], segments)
    }

    public static func apply(_ body: JSONValue) -> String {
        let changes = (body["changes"]?.arrayElements ?? []).map(text)
        let dryRun = body["dryRun"]?.serialized() == "true"
        let head = dryRun ? "dry run: the configuration is valid" : "applied"
        if changes.isEmpty { return "\(head); nothing differs from the applied configuration" }
        return "\(head); \(changes.count) change(s)\(dryRun ? " would be made" : ""):\n" + changes.map { "  " + $0 }.joined(separator: "\n")
    }

    /// Audit records, one per line: the usual fields when a record has them, else its JSON.
    public static func audit(_ body: JSONValue) -> String {
        let records = body["records"]?.arrayElements ?? []
        let known = ["time", "principal", "uid", "action", "target", "outcome"]
        guard records.allSatisfy({ record in known.contains { record[$0] != nil } }) else {
            return records.map { $0.serialized() }.joined(separator: "\n")
        }
        let rows = records.map { record in known.map { record[$0].map(text) ?? "-" } }
        return table(known.map { $0.uppercased() }, rows)
    }

    // MARK: Cells

    /// A value as a cell: strings bare, arrays comma-separated, objects as compact JSON.
    public static func text(_ value: JSONValue) -> String {
        switch value.kind {
        case .string(let string): string.isEmpty ? "-" : string
        case .array(let elements): elements.isEmpty ? "-" : elements.map(text).joined(separator: ",")
        case .null: "-"
        default: value.serialized()
        }
    }

    private static func field(_ key: String) -> (JSONValue) -> String {
        { $0[key].map(text) ?? "-" }
    }

    private static func bytes(_ text: String) -> String {
        guard let value = UInt64(text) else { return text }
        for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] where value >= 1 << shift && value % (1 << shift) == 0 {
            return "\(value >> shift) \(unit)"
        }
        return "\(value) B"
    }
}
