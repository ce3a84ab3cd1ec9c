// libFuzzer target for the management API's request decoding and authorization.
//
// Input: byte 0 picks the caller (bits 0-2: one of the principals, or an unknown uid) and the
// method (bits 3-5); bit 6 says a query follows the path. Then the path, a newline, the query
// (if any), a newline, and the body. Besides "does not crash" (ASan, Swift's checks), it checks:
// a refused request is a 4xx with a reason; a decision never lets a tenant's principal at
// another tenant; an allowed read's answer is JSON that parses back, and what blue's principals
// are answered never names one of red's objects.
import Config
import ManagementModel
import Switch

private let document = """
{
  "host": {"stateDirectory": "/var/lib/bh"},
  "principals": [
    {"name": "root", "uid": 0, "role": "host-admin"},
    {"name": "ops", "uid": 1, "role": "operator"},
    {"name": "blue-admin", "uid": 2, "role": "tenant-admin", "tenant": "blue"},
    {"name": "blue-viewer", "uid": 3, "role": "tenant-viewer", "tenant": "blue"},
    {"name": "audit", "uid": 4, "role": "auditor"}
  ],
  "tenants": [
    {"id": "blue", "segments": [{"id": "lan"}],
     "ports": [{"id": "a", "segment": "lan", "mac": "02:00:00:00:01:01", "ips": ["10.0.0.1/24"]}],
     "volumes": [{"id": "data", "sizeBytes": 1048576}],
     "partitions": [{"id": "guest", "vcpus": 1, "memoryMiB": 64,
                     "image": {"path": "/srv/g.bin", "sha256": "9dcc006fb4ffa6ec6e3ea1474a258f851660d0b461c68e3702ad55da9b270124"},
                     "disks": ["data"]}]},
    {"id": "red", "segments": [{"id": "red-lan"}],
     "ports": [{"id": "red-port", "segment": "red-lan", "mac": "02:00:00:00:02:01"}],
     "volumes": [{"id": "red-disk", "sizeBytes": 1048576}]}
  ]
}
"""

nonisolated(unsafe) private var snapshot: ManagementSnapshot?

private func makeSnapshot() -> ManagementSnapshot {
    guard let configuration = try? HostConfiguration.decode(document) else { fatalError("the fuzz target's configuration is invalid") }
    let port = { (tenant: String, id: String, segment: String) in
        PortStatistics(index: 0, tenant: tenant, port: id, segment: segment, interface: "bh-\(tenant)-\(id)",
                       rx: TrafficCounters(frames: 1, bytes: 60), tx: TrafficCounters(), drops: ["acl": 1],
                       macLearning: MACLearningStatistics())
    }
    let statistics = SwitchStatistics(ports: [port("blue", "a", "lan"), port("red", "red-port", "red-lan")],
                                      segments: [SegmentStatistics(tenant: "blue", segment: "lan", macEntries: 1),
                                                 SegmentStatistics(tenant: "red", segment: "red-lan", macEntries: 1)])
    let status = HostStatus(
        daemon: DaemonStatus(pid: 1, startedAt: "t", executableSHA256: "e", configurationSHA256: "c", cgroups: .enabled(path: "/sys/fs/cgroup/bh")),
        children: [ChildStatus(kind: .switch, state: .running), ChildStatus(kind: .blockServer, tenant: "red", state: .down),
                   ChildStatus(kind: .partition, tenant: "blue", id: "guest", state: .running, pid: 7)])
    return ManagementSnapshot(configuration: configuration, configurationText: document, status: status, statistics: statistics)
}

private let methods = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "get", ""]
private let uids: [UInt32] = [0, 1, 2, 3, 4, 5, 0xFFFF_FFFF, 900_000_000]
private let redNames = ["red-port", "red-disk", "red-lan"]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    if snapshot == nil { snapshot = makeSnapshot() }
    guard let snapshot else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let control = bytes[0]
    let uid = uids[Int(control & 7)]
    let method = methods[Int((control >> 3) & 7)]
    var rest = bytes.dropFirst()
    func line() -> String {
        let end = rest.firstIndex(of: 0x0A) ?? rest.endIndex
        let text = String(decoding: rest[rest.startIndex..<end], as: UTF8.self)
        rest = end < rest.endIndex ? rest[rest.index(after: end)...] : rest[end...]
        return text
    }
    let path = line()
    let query: String? = control & 0x40 != 0 ? line() : nil
    let body = Array(rest)

    let request: APIRequest
    switch APIRequest.parse(method: method, path: path, query: query, body: body) {
    case .failure(let error):
        precondition((400..<500).contains(error.status) && !error.reason.isEmpty, "decoding gave \(error)")
        precondition(JSONParser.parse(error.body.serialized()).value != nil, "an error body is not JSON")
        return 0
    case .success(let decoded):
        request = decoded
    }

    switch Authorization.decide(uid: uid, request: request, configuration: snapshot.configuration) {
    case .denied(_, let error):
        precondition(error.status == 403 || error.status == 404, "a refusal is 403 or 404, not \(error.status)")
    case .allowed(let principal, let scope):
        if case .tenant(let own) = scope {
            precondition(principal.tenant == own, "a tenant's principal got another scope")
            if let tenant = request.tenant { precondition(tenant == own, "\(principal.name) let at tenant \(tenant)") }
        }
        switch request {
        case .partition, .audit:
            break
        case .apply(let text, let dryRun):
            // The document goes to the configuration's decoder, as the daemon's apply does.
            let outcome: ApplyOutcome
            do {
                let configuration = try HostConfiguration.decode(text)
                outcome = .applied(changes: ConfigurationChanges.changes(from: snapshot.configuration, to: configuration))
            } catch {
                outcome = .invalid(error)
            }
            switch APIResponder.applyAnswer(outcome, dryRun: dryRun) {
            case .success(let answer): precondition(JSONParser.parse(answer.serialized()).value != nil)
            case .failure(let error): precondition(error.status == 422 && !error.problems.isEmpty, "\(error)")
            }
        default:
            let answer = APIResponder.read(request, caller: principal, scope: scope, snapshot: snapshot)
            let text: String
            switch answer {
            case .success(let body): text = body.serialized(pretty: control & 0x80 != 0)
            case .failure(let error):
                precondition(error.status == 404, "a read gave \(error)")
                text = error.body.serialized()
            }
            precondition(JSONParser.parse(text).value != nil, "an answer is not JSON: \(text)")
            if scope == .tenant("blue") {
                for name in redNames { precondition(!text.contains(name), "blue's principal was shown \(name): \(text)") }
            }
        }
    }
    return 0
}
