import BlockClient
import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Partitions run by the real daemon on the demo topology: `bulkhead run` starts the switch, a
/// block server per tenant and one jailed `bulkhead partition` per configured partition, each
/// booting the test guest (Tests/Guest) with the tenant's volume `data` as its disk and the
/// tenant's vhost-user port `vm` as its NIC.
final class PartitionIntegrationTests: XCTestCase {
    private typealias Guest = PartitionTestbed.Guest

    /// The guest's checks in both tenants (the same subnet, the same addresses): its disk checks
    /// pass, it resolves 10.0.0.1 to its own tenant's endpoint and pings it, an address only the
    /// other tenant has stays silent, and captures started before the daemon see none of its
    /// frames in the other tenant. It powers off and the default restart policy keeps it down.
    func testTheGuestPassesInBothTenantsAndTheTenantsStayApart() throws {
        let image = try PartitionGuestImage.require()
        let other = ["blue": "red", "red": "blue"]
        // An address only the other tenant has: red-a has 10.0.0.77, blue-a 10.0.0.78.
        let foreignAddress = ["blue": "10.0.0.77", "red": "10.0.0.78"]
        let bed = try PartitionTestbed(image: image, guests: PartitionTestbed.tenants.map { tenant in
            Guest(tenant: tenant, cmdline: "blk net discard=zero ip=10.0.0.3 ping=10.0.0.1 isolated=\(foreignAddress[tenant]!) timeout_ms=500")
        }, extraAddresses: ["red/a": ["10.0.0.77/24"], "blue/a": ["10.0.0.78/24"]], capture: true)

        for tenant in PartitionTestbed.tenants {
            let run = try bed.waitForVerdict(tenant)
            run.assertPassed()
            run.assertLines(TestGuestTools.blockChecks + [
                "net arp 10.0.0.1 is-at \(PartitionTestbed.mac(tenant, "a")) ",
                "net ping 10.0.0.1 ok replies=4/4 ",
                "net isolated \(foreignAddress[tenant]!) ok no-reply ",
            ])
            let nic = try XCTUnwrap(run.line("net 00:"), run.report)
            XCTAssertTrue(nic.contains(" mac=\(PartitionTestbed.mac(tenant, "vm")) mac_source=device ip=10.0.0.3 "),
                          "the NIC has the port's MAC from its configuration space: \(nic)")
            XCTAssertEqual(run.line("net doorbells=").flatMap { $0.value(of: "rx_foreign") }, 0, "nothing foreign reached the guest:\n\(run.report)")
            print("partition \(tenant): PASS; \(run.line("net ping ") ?? ""); \(run.line("exits ") ?? "")")
        }
        for tenant in PartitionTestbed.tenants {
            // Powered off, so the default policy (on-reboot) keeps it down.
            try bed.waitForLog(tenant, containing: "partition stopped: powered off")
            try bed.waitForLog(tenant, containing: "partition p exited (status 0); its restart policy keeps it down")
            XCTAssertEqual(bed.log(tenant, containing: "partition running").count, 1, "one start only:\n\(bed.report(tenant))")
            XCTAssertEqual(bed.log(tenant, containing: "restarting it"), [], "not restarted")
            XCTAssertEqual(bed.processes("partition", tenant: tenant), [], "no partition process of \(tenant) left")
            XCTAssertEqual(bed.partitionProblems(tenant), [], "the partition of \(tenant) logged no problem")
            let timings = (bed.log(tenant, containing: "guest started") + bed.log(tenant, containing: "guest console")).flatMap {
                $0.split(separator: " ").filter { $0.hasPrefix("first_instruction.us=") || $0.hasPrefix("first_serial_byte.us=") }
            }
            print("partition \(tenant): from process start: \(timings.joined(separator: " "))")
        }
        // The silent addresses are real: each answers in its own tenant.
        for tenant in PartitionTestbed.tenants {
            let address = foreignAddress[other[tenant]!]!
            let ping = try Host.inNamespace(TestTopology.namespace(tenant, "b"), ["ping", "-c", "1", "-W", "2", address])
            XCTAssertEqual(ping.status, 0, "\(tenant)-b reaches \(address) in its own tenant: \(ping.output)\(ping.error)")
        }

        let sources = try bed.stopCaptures()
        for tenant in PartitionTestbed.tenants {
            let ownGuest = PartitionTestbed.mac(tenant, "vm"), foreignGuest = PartitionTestbed.mac(other[tenant]!, "vm")
            // The capture works: the tenant's own guest's echo requests reached its a endpoint.
            XCTAssertGreaterThanOrEqual(sources["\(tenant)/a"]?.filter { $0 == ownGuest }.count ?? 0, 4,
                                        "\(tenant)-a's capture saw its own guest's frames: \(sources["\(tenant)/a"] ?? [])")
            for port in PartitionTestbed.tapPorts {
                let seen = sources["\(tenant)/\(port)"] ?? []
                XCTAssertFalse(seen.contains(foreignGuest), "frames of \(other[tenant]!)'s guest reached \(tenant)-\(port): \(seen)")
                XCTAssertFalse(seen.contains { $0.hasPrefix("02:00:00:00:0\(other[tenant] == "blue" ? 1 : 2):") },
                               "frames from \(other[tenant]!) reached \(tenant)-\(port): \(seen)")
            }
            print("partition \(tenant): captured in \(tenant)'s namespaces: " + PartitionTestbed.tapPorts.map { port in
                let seen = sources["\(tenant)/\(port)"] ?? []
                return "\(port): \(seen.count) frames, \(seen.filter { $0 == ownGuest }.count) from its guest, \(seen.filter { $0 == foreignGuest }.count) from the other's"
            }.joined(separator: "; "))
        }
        XCTAssertEqual(bed.daemon.stop(), 0, bed.daemon.output)
    }

    /// kill -9 of a partition mid-run: the supervisor logs it and restarts it (a kill is a
    /// failure, and on-reboot restarts failures), the new guest passes, neither the block server
    /// nor the switch keeps a mapping of the dead guest's memory, and the switch port forwards.
    func testAKilledPartitionIsRestartedAndLeavesNoStaleMapping() throws {
        let image = try PartitionGuestImage.require()
        // The random-read benchmark after the checks keeps the guest running for 3 s.
        let bed = try PartitionTestbed(image: image, guests: [
            Guest(tenant: "blue", cmdline: "blk net discard=zero ping=10.0.0.1 timeout_ms=500 bench=randread seconds=3"),
        ])
        let switchPID = try bed.process("switch", tenant: "blue")
        let blockServer = try bed.process("block-server", tenant: "blue")

        try bed.waitForConsole("blue", run: 1, line: "net ping 10.0.0.1 ok")
        let first = try bed.process("partition", tenant: "blue", id: "p")
        let ownMappings = PartitionTestbed.guestMemoryMappings(of: first)
        let blockMappings = PartitionTestbed.guestMemoryMappings(of: blockServer)
        let switchMappings = PartitionTestbed.guestMemoryMappings(of: switchPID)
        XCTAssertGreaterThan(ownMappings, 0, "the partition maps its guest RAM memfd (else the name to count is wrong)")
        XCTAssertGreaterThan(blockMappings, 0, "the block server maps the live guest's memory")
        XCTAssertGreaterThan(switchMappings, 0, "the switch maps the live guest's memory")

        XCTAssertEqual(kill(first, SIGKILL), 0)
        try bed.waitForLog("blue", containing: "partition p exited (killed by SIGKILL")
        XCTAssertTrue(bed.log("blue", containing: "partition p exited (killed by SIGKILL").first?.contains("restarting it") == true,
                      "the supervisor restarts it:\n\(bed.report("blue"))")

        try bed.waitForConsole("blue", run: 2, line: "net ping 10.0.0.1 ok")
        let second = try bed.process("partition", tenant: "blue", id: "p")
        XCTAssertNotEqual(second, first, "a new partition process")
        XCTAssertEqual(PartitionTestbed.guestMemoryMappings(of: blockServer), blockMappings,
                       "the block server maps the new guest's memory only, nothing of the killed one")
        XCTAssertEqual(PartitionTestbed.guestMemoryMappings(of: switchPID), switchMappings,
                       "the switch maps the new guest's memory only, nothing of the killed one")

        let run = try bed.waitForVerdict("blue", run: 2)
        run.assertPassed()
        run.assertLines(TestGuestTools.blockChecks + ["net arp 10.0.0.1 is-at 02:00:00:00:01:01 ", "net ping 10.0.0.1 ok replies=4/4 "])
        XCTAssertEqual(run.line("bench randread ").flatMap { $0.value(of: "errors") }, 0, run.report)
        try bed.waitForLog("blue", containing: "partition p exited (status 0); its restart policy keeps it down")
        XCTAssertEqual(bed.log("blue", containing: "partition running").count, 2, "started twice:\n\(bed.report("blue"))")
        XCTAssertEqual(bed.partitionProblems("blue"), [], "the partition logged no problem")

        try BlockHost.waitFor("the backends to unmap the last guest's memory", timeout: 10) {
            PartitionTestbed.guestMemoryMappings(of: blockServer) == 0 && PartitionTestbed.guestMemoryMappings(of: switchPID) == 0
        }
        XCTAssertEqual(bed.processes("switch", tenant: "blue"), [switchPID], "the switch was not restarted")
        XCTAssertEqual(bed.processes("block-server", tenant: "blue"), [blockServer], "the block server was not restarted")
        let ping = try Host.inNamespace(TestTopology.namespace("blue", "a"), ["ping", "-c", "2", "-W", "2", "10.0.0.2"])
        XCTAssertEqual(ping.status, 0, "blue-a still reaches blue-b: \(ping.output)\n\(bed.report("blue"))")
        print("partition kill: mappings while live: partition \(ownMappings), block server \(blockMappings), switch \(switchMappings); after: 0")
        XCTAssertEqual(bed.daemon.stop(), 0, bed.daemon.output)
    }

    /// The jail of running partitions, read back from /proc: the partition's own uid (not root,
    /// not its tenant's block server's, not the other partition's), no capabilities,
    /// NoNewPrivs, a seccomp filter and a tighter one stacked on the vCPU thread, namespaces of
    /// its own and an empty root, and nothing of any tenant's files held open but its console.
    func testARunningPartitionIsJailed() throws {
        let image = try PartitionGuestImage.require()
        let bed = try PartitionTestbed(image: image, guests: PartitionTestbed.tenants.map {
            Guest(tenant: $0, cmdline: "blk bench=randread seconds=5")
        })
        var uids: [String: UInt32] = [:]
        var netNamespaces: [String: String] = [:]
        for tenant in PartitionTestbed.tenants {
            try bed.waitForConsole(tenant, line: "blk readback ok")
            let pid = try bed.process("partition", tenant: tenant, id: "p")
            let uid = try bed.partitionUid(tenant)
            uids[tenant] = uid
            XCTAssertNotEqual(uid, 0)
            let tenantUid = try BlockHost.jailUid(stateDirectory: bed.stateDirectory, tenant: tenant)
            XCTAssertNotEqual(uid, tenantUid, "the partition does not share its tenant's block server's uid")
            let blockServer = try bed.process("block-server", tenant: tenant)
            XCTAssertEqual(BlockHost.status("/proc/\(blockServer)/status")["Uid"]?.split(whereSeparator: \.isWhitespace).first.map(String.init),
                           "\(tenantUid)", "the block server runs as its tenant's uid")
            BlockHost.assertJailed(pid, uid: uid)

            // The VMM maps no Foundation and no ICU: its memory and start-up are per partition.
            let maps = String(decoding: FileManager.default.contents(atPath: "/proc/\(pid)/maps") ?? Data(), as: UTF8.self)
            XCTAssertTrue(maps.contains("bulkhead-vmm"), "the partition process is bulkhead-vmm")
            for library in ["Foundation", "libicu"] {
                XCTAssertFalse(maps.contains(library), "the partition of \(tenant) maps \(library)")
            }

            // The vCPU thread runs under the process's filter and one of its own on top.
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
            let main = BlockHost.status("/proc/\(pid)/task/\(pid)/status")
            let vcpu = tasks.map { BlockHost.status("/proc/\(pid)/task/\($0)/status") }.first { $0["Name"] == "vcpu0" }
            let vcpuFilters = try XCTUnwrap(vcpu?["Seccomp_filters"].flatMap { Int($0) }, "a thread named vcpu0 with Seccomp_filters: \(tasks)")
            let mainFilters = try XCTUnwrap(main["Seccomp_filters"].flatMap { Int($0) }, "Seccomp_filters of the main thread: \(main)")
            XCTAssertGreaterThanOrEqual(mainFilters, 1, "the process-wide filter")
            XCTAssertGreaterThan(vcpuFilters, mainFilters, "the vCPU thread's tighter filter is stacked on the process's")

            // What it holds open: KVM objects, its memory, sockets and eventfds, its console log;
            // no volume, nothing of another tenant or partition, no directory.
            let console = bed.consolePath(tenant)
            let held = BlockHost.openFiles(pid)
            for target in held where target.hasPrefix("/") && target != console {
                XCTAssertTrue(target.hasPrefix("/memfd:bulkhead-guest-ram") || target == "/dev/null" || target == "/dev/kvm",
                              "the partition of \(tenant) holds \(target) open: \(held)")
            }
            XCTAssertTrue(held.contains(console), "the partition of \(tenant) writes its console log: \(held)")
            XCTAssertTrue(held.contains("anon_inode:kvm-vm"), "the partition of \(tenant) holds its VM: \(held)")
            print("partition \(tenant) (jailed) pid \(pid) uid \(uid), seccomp filters \(mainFilters) (vcpu0 \(vcpuFilters)), holds: "
                  + Dictionary(grouping: held) { $0.hasPrefix("socket:") ? "socket" : $0 }.map { "\($0.key) x\($0.value.count)" }.sorted().joined(separator: ", "))
            netNamespaces[tenant] = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/net")
        }
        XCTAssertNotEqual(uids["blue"], uids["red"], "each partition has a uid of its own")
        XCTAssertNotEqual(netNamespaces["blue"], netNamespaces["red"], "each partition has a network namespace of its own")

        for tenant in PartitionTestbed.tenants {
            let run = try bed.waitForVerdict(tenant)
            run.assertPassed()
            XCTAssertEqual(run.line("bench randread ").flatMap { $0.value(of: "errors") }, 0, run.report)
            XCTAssertEqual(bed.partitionProblems(tenant), [], "the jailed partition of \(tenant) logged no problem")
            print("partition \(tenant) (jailed): \(run.line("bench randread ") ?? "")")
        }

        // Even outside its empty root, a partition's uid reaches no volume and no socket, its
        // tenant's included (last: may skip).
        guard let setpriv = Host.which("setpriv") else {
            throw XCTSkip("the rest passed; the open-as-the-partition-uid check needs setpriv (util-linux)")
        }
        for (tenant, uid) in uids {
            for owner in PartitionTestbed.tenants {
                for path in ["\(bed.stateDirectory)/tenants/\(owner)/volumes/data.img", "\(bed.stateDirectory)/tenants/\(owner)/vhost/data.sock",
                             "\(bed.stateDirectory)/tenants/\(owner)/net/vm.sock"] {
                    XCTAssertTrue(FileManager.default.fileExists(atPath: path), "\(path) exists")
                    let attempt = try Host.run([setpriv, "--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", "cat", path])
                    XCTAssertNotEqual(attempt.status, 0, "the uid of \(tenant)'s partition cannot open \(path)")
                    XCTAssertTrue(attempt.error.contains("Permission denied"), "EACCES for \(path): \(attempt.error)")
                }
            }
        }
        XCTAssertEqual(bed.daemon.stop(), 0, bed.daemon.output)
    }

    /// A hostile guest (garbage over every function's configuration space, the virtio registers
    /// and its rings) in blue, a normal one in red at the same time: blue's partition survives and
    /// powers off, red's passes, and the switch and both block servers keep serving.
    func testAHostileGuestHarmsNeitherItsVMMNorTheBackendsNorTheOtherTenant() throws {
        let image = try PartitionGuestImage.require()
        let bed = try PartitionTestbed(image: image, guests: [
            Guest(tenant: "blue", cmdline: "hostile=pci-all,virtio,ring blk net ping=10.0.0.1 timeout_ms=500", restart: "never"),
            Guest(tenant: "red", cmdline: "blk net discard=zero ping=10.0.0.1 timeout_ms=500"),
        ])
        let switches = try PartitionTestbed.tenants.map { try bed.process("switch", tenant: $0) }
        let blockServers = try PartitionTestbed.tenants.map { try bed.process("block-server", tenant: $0) }

        let hostile = try bed.waitForVerdict("blue", timeout: 180)
        hostile.assertLines(["hostile pci 00:", "survived pci-all", "hostile virtio 00:", "survived virtio", "hostile ring 00:", "survived ring",
                             "blk readback ok", "net ping 10.0.0.1 ok replies=4/4 "])
        try bed.waitForLog("blue", containing: "partition p exited (")
        let ending = bed.log("blue", containing: "partition p exited (").first ?? ""
        XCTAssertTrue(ending.contains("exited (status 0)"), "the hostile guest's partition powered off, not killed or failed: \(ending)\n\(hostile.report)")
        XCTAssertEqual(bed.log("blue", containing: "partition failed"), [], "the VMM did not fail:\n\(hostile.report)")
        hostile.assertPassed()
        print("partition hostile: \(hostile.lines.filter { $0.hasPrefix("bhtest: hostile") || $0.hasPrefix("bhtest: survived") }.joined(separator: "; "))")

        // The VMM refused the rings it could not hand to a backend: the device failed, not the VMM.
        let refusals = bed.partitionProblems("blue")
        for socket in ["/tenants/blue/net/vm.sock", "/tenants/blue/vhost/data.sock"] {
            XCTAssertTrue(refusals.contains { $0.contains("virtio device failed") && $0.contains(socket) },
                          "the VMM marked the device on \(socket) failed at least once:\n\(refusals.joined(separator: "\n"))")
        }
        // The block server refused the garbage chains (a warning, the queue stopped) and served on.
        let blockRefusals = bed.daemon.output.split(separator: "\n").filter { $0.contains(" warning bulkhead.block:") && $0.contains("tenant.id=blue") }
        for refusal in ["is not inside guest memory", "(or loops)", "descriptor index 65535 is out of range", "indirect descriptor inside an indirect table",
                        "available index jumped"] {
            XCTAssertTrue(blockRefusals.contains { $0.contains(refusal) }, "blue's block server refused a chain ('\(refusal)'):\n\(blockRefusals.joined(separator: "\n"))")
        }
        print("partition hostile: the VMM failed a device \(refusals.count) times, the block server refused \(blockRefusals.count) chains or queues")
        let red = try bed.waitForVerdict("red")
        red.assertPassed()
        red.assertLines(TestGuestTools.blockChecks + ["net arp 10.0.0.1 is-at 02:00:00:00:02:01 ", "net ping 10.0.0.1 ok replies=4/4 "])

        // The backends are the same processes and still serve.
        XCTAssertEqual(try PartitionTestbed.tenants.map { try bed.process("switch", tenant: $0) }, switches,
                       "no switch was restarted:\n\(bed.daemon.output)")
        XCTAssertEqual(try PartitionTestbed.tenants.map { try bed.process("block-server", tenant: $0) }, blockServers,
                       "no block server was restarted:\n\(bed.daemon.output)")
        XCTAssertFalse(bed.daemon.output.contains("switch exited ("), bed.daemon.output)
        XCTAssertFalse(bed.daemon.output.contains("block server exited ("), bed.daemon.output)
        let ping = try Host.inNamespace(TestTopology.namespace("blue", "a"), ["ping", "-c", "2", "-W", "2", "10.0.0.2"])
        XCTAssertEqual(ping.status, 0, "blue-a still reaches blue-b through the switch: \(ping.output)")
        // blue's volume socket serves a new frontend once the hostile partition is gone.
        let socket = bed.stateDirectory + "/tenants/blue/vhost/data.sock"
        let client = try BlockClient(socket: socket)
        let data = [UInt8]((0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        XCTAssertEqual(try client.write(sector: 2048, data: data), 0, "blue's block server still writes")
        XCTAssertEqual(try client.read(sector: 2048, length: 4096).data, data, "blue's block server still reads")
        XCTAssertEqual(bed.daemon.stop(), 0, bed.daemon.output)
    }

    /// Measured launch: a partition whose image does not measure to its configured digest is
    /// refused, the log naming the file, and the daemon runs the rest (another partition of the
    /// same tenant passes).
    func testAPartitionWhoseImageDoesNotMatchItsDigestIsRefused() throws {
        let image = try PartitionGuestImage.require()
        let directory = NSTemporaryDirectory() + "bulkhead-partition-tampered-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // The guest with one byte changed after it was measured.
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: image.path)))
        bytes[bytes.count / 2] ^= 0x01
        let tampered = directory + "/bhtest-tampered.bin"
        try Data(bytes).write(to: URL(fileURLWithPath: tampered))
        let actual = try PartitionGuestImage.sha256(of: tampered)
        XCTAssertNotEqual(actual, image.sha256)

        let bed = try PartitionTestbed(image: image, guests: [
            Guest(tenant: "blue", cmdline: "blk net discard=zero ping=10.0.0.1 timeout_ms=500"),
            Guest(tenant: "blue", id: "tampered", cmdline: "blk", restart: "never", disks: [], nics: [],
                  image: (tampered, image.sha256)),
        ])
        try bed.waitForLog("blue", "tampered", containing: "measured launch refused")
        let refusal = bed.log("blue", "tampered", containing: "measured launch refused").first ?? ""
        XCTAssertTrue(refusal.contains(tampered), "the refusal names the file: \(refusal)")
        XCTAssertTrue(refusal.contains(actual) && refusal.contains(image.sha256), "and both digests: \(refusal)")
        // The daemon measures before it starts the VMM: no process is started for it at all.
        try bed.waitForLog("blue", "tampered", containing: "partition tampered not started: measured launch refused")
        XCTAssertEqual(bed.processes("partition", tenant: "blue", id: "tampered"), [], "no VMM runs for it")
        XCTAssertFalse(FileManager.default.fileExists(atPath: bed.consolePath("blue", "tampered")), "no guest ran: no console log")
        XCTAssertEqual(bed.log("blue", "tampered", containing: "partition running"), [])

        let run = try bed.waitForVerdict("blue")
        run.assertPassed()
        run.assertLines(TestGuestTools.blockChecks + ["net ping 10.0.0.1 ok replies=4/4 "])
        XCTAssertEqual(bed.partitionProblems("blue"), [], "the good partition logged no problem")
        XCTAssertTrue(bed.daemon.isRunning, bed.daemon.output)
        let ping = try Host.inNamespace(TestTopology.namespace("red", "a"), ["ping", "-c", "1", "-W", "2", "10.0.0.2"])
        XCTAssertEqual(ping.status, 0, "red-a still reaches red-b: \(ping.output)")
        XCTAssertEqual(bed.daemon.stop(), 0, bed.daemon.output)
    }
}
