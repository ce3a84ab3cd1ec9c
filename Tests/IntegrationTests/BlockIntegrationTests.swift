import BlockClient
import Foundation
import HostOS
import Synchronization
import VhostUser
import XCTest

/// The block backend as a user runs it: `bulkhead block-server` and `bulkhead run` as real
/// processes, driven by `BlockClient`, by hostile raw vhost-user clients and by QEMU.
final class BlockIntegrationTests: XCTestCase {

    // MARK: - 1. Durability

    /// Writes that completed before a FLUSH that completed survive a SIGKILL of the server.
    func testFlushedWritesSurviveAKilledServer() throws {
        try BlockHost.requireRoot()
        let state = try BlockState(tenants: ["t1": [("data", 64 << 20)]])
        let first = try BlockServerProcess(state: state, tenant: "t1")
        try first.waitFor("block server ready", timeout: 30)

        // A run-specific nonce in every block: nothing left over from another run can pass.
        let nonce = UInt64.random(in: 1...UInt64.max)
        let blocks = (64 << 20) / 4096
        let depth = 16          // writes in flight
        let flushEvery = 64     // writes between FLUSHes
        // Kill somewhere in the middle of the stream, at a point that varies between runs.
        let killAfter = Int.random(in: 1500...5000)
        let completedCount = CompletionCounter()
        let victim = first.pid
        let killer = Thread {
            let deadline = Date().addingTimeInterval(60)
            while completedCount.value < killAfter && !completedCount.cancelled && Date() < deadline { usleep(100) }
            if !completedCount.cancelled { kill(victim, SIGKILL) }
        }
        killer.start()

        enum Operation { case write(block: Int, slot: Int), flush(covers: Int) }
        let client = try BlockClient(socket: state.socket("t1", "data"), queueCount: 1, queueSize: 128)
        var freeSlots = Array(0..<depth)
        let flushSlot = depth
        var inFlight: [UInt16: Operation] = [:]
        var completed: [Int] = []      // blocks, in completion order
        var durable = 0                // completed[0..<durable] was covered by a completed FLUSH
        var flushes = 0
        var failures: [String] = []
        var next = 0, sinceFlush = 0, flushInFlight = false
        stream: while true {
            while !freeSlots.isEmpty && next < blocks {
                let slot = freeSlots.removeLast()
                let header = client.writeHeader(queue: 0, slot: slot, type: BlockClient.typeWrite, sector: UInt64(next * 8))
                let area = try client.data(queue: 0, offset: slot * 4096, length: 4096)
                BlockPattern.block(next, nonce: nonce).withUnsafeBytes { area.pointer.copyMemory(from: $0.baseAddress!, byteCount: 4096) }
                let head = try client.add(queue: 0, [
                    .init(address: header, length: 16, writable: false),
                    .init(address: area.address, length: 4096, writable: false),
                    .init(address: header + 16, length: 1, writable: true),
                ])
                inFlight[head] = .write(block: next, slot: slot)
                next += 1
                sinceFlush += 1
            }
            if sinceFlush >= flushEvery && !flushInFlight {
                // A FLUSH covers the writes that completed before it was submitted.
                let header = client.writeHeader(queue: 0, slot: flushSlot, type: BlockClient.typeFlush, sector: 0)
                let head = try client.add(queue: 0, [
                    .init(address: header, length: 16, writable: false),
                    .init(address: header + 16, length: 1, writable: true),
                ])
                inFlight[head] = .flush(covers: completed.count)
                flushInFlight = true
                sinceFlush = 0
            }
            client.kick(queue: 0)
            var used: [(head: UInt16, length: UInt32)] = []
            switch Result(catching: { () throws(BlockClient.Failure) in try client.waitUsed(queue: 0, timeoutMilliseconds: 300) }) {
            case .success(let element):
                used.append(element)
            case .failure(.timeout):
                if !first.isRunning { used = client.drainUsed(queue: 0); if used.isEmpty { break stream } }
            case .failure(let error):
                throw error
            }
            used += client.drainUsed(queue: 0)
            for element in used {
                guard let operation = inFlight.removeValue(forKey: element.head) else {
                    failures.append("used element with unknown head \(element.head)")
                    continue
                }
                switch operation {
                case .write(let block, let slot):
                    let status = client.status(queue: 0, slot: slot)
                    if status == 0 { completed.append(block) } else { failures.append("write of block \(block): status \(status)") }
                    freeSlots.append(slot)
                    completedCount.add()
                case .flush(let covers):
                    let status = client.status(queue: 0, slot: flushSlot)
                    if status == 0 { durable = max(durable, covers); flushes += 1 } else { failures.append("FLUSH: status \(status)") }
                    flushInFlight = false
                }
            }
            if next >= blocks && inFlight.isEmpty { break }
        }
        completedCount.cancel()
        print("durability: killed after \(completed.count) completed writes (threshold \(killAfter)), \(next - completed.count) submitted and not completed, \(durable) covered by the last of \(flushes) FLUSHes")
        XCTAssertEqual(failures, [], "every request completed before the kill succeeded")
        XCTAssertTrue(first.waitForExit(timeout: 10), "the server died")
        XCTAssertEqual(first.process.terminationReason, .uncaughtSignal)
        XCTAssertEqual(first.process.terminationStatus, SIGKILL, "the server was killed mid-stream, not finished:\n\(first.output)")
        XCTAssertLessThan(completed.count, blocks, "the kill landed before the stream ended")
        XCTAssertGreaterThan(durable, 0, "at least one FLUSH completed before the kill (\(flushes) did)")

        // Restart on the same state (the dead server's socket file is still there) and reconnect.
        let second = try BlockServerProcess(state: state, tenant: "t1")
        try second.waitFor("block server ready", timeout: 30)
        let reader = try BlockClient(socket: state.socket("t1", "data"), queueCount: 1)
        var lost: [Int] = []
        var lostUnflushed: [Int] = []
        for (index, block) in completed.enumerated() {
            let back = try reader.read(sector: UInt64(block * 8), length: 4096)
            if back.status != 0 || back.data != BlockPattern.block(block, nonce: nonce) {
                if index < durable { lost.append(block) } else { lostUnflushed.append(block) }
            }
        }
        XCTAssertEqual(lost, [], "\(lost.count) of \(durable) writes completed before the last completed FLUSH did not survive the kill")
        // Stronger than the virtio contract, but true for a process crash (not a power loss): a
        // completed write is in the kernel, so it survives the process.
        XCTAssertEqual(lostUnflushed, [], "completed writes after the last FLUSH were lost though only the process died")
        // A block never written reads back as zeroes (nothing else leaked into it).
        let untouched = try reader.read(sector: UInt64((blocks - 1) * 8), length: 4096)
        if next < blocks { XCTAssertEqual(untouched.data, [UInt8](repeating: 0, count: 4096)) }
        XCTAssertEqual(second.stop(), 0, "SIGTERM stops the server cleanly:\n\(second.output)")
    }

    // MARK: - 2. Supervision

    /// `bulkhead run` starts a jailed block server, restarts it after SIGKILL, and leaves none behind.
    func testDaemonRunsAJailedBlockServerAndRestartsIt() throws {
        try BlockHost.requireRoot()
        let stateDirectory = NSTemporaryDirectory() + "bulkhead-blockit-\(UUID().uuidString)"
        let daemon = try RunningDaemon(configuration: [
            "host": ["stateDirectory": stateDirectory],
            "tenants": [["id": "t1", "volumes": [["id": "v", "sizeBytes": 16 << 20]]]],
        ])
        // The children read the document the daemon applied.
        let configPath = stateDirectory + "/applied.json"
        try BlockHost.waitFor("the first block server ready", timeout: 30) { daemon.output.occurrences(of: "block server ready") >= 1 }
        let firstPIDs = BlockHost.blockServers(config: configPath, tenant: "t1")
        XCTAssertEqual(firstPIDs.count, 1, "one block server for t1:\n\(daemon.output)")
        let first = try XCTUnwrap(firstPIDs.first)
        let uid = try BlockHost.jailUid(stateDirectory: stateDirectory, tenant: "t1")
        XCTAssertEqual(uid, 900_000_000, "the only tenant has the first uid of the jail range")
        BlockHost.assertJailed(first, uid: uid)
        // Made before the jail, before any frontend connects: one restricted ring per queue
        // (the daemon starts servers with 2 queues); the jail allows no io_uring_setup later.
        XCTAssertEqual(BlockHost.descriptors(of: first, linkingTo: "anon_inode:[io_uring]"), 2,
                       "the rings exist before the first frontend connects")
        // No file can grow past the volume's 16 MiB.
        XCTAssertEqual(BlockHost.limit("Max file size", of: first), ["\(16 << 20)", "\(16 << 20)"], "RLIMIT_FSIZE")

        let socket = stateDirectory + "/tenants/t1/vhost/v.sock"
        do {
            let client = try BlockClient(socket: socket)
            XCTAssertEqual(client.capacitySectors, (16 << 20) / 512)
            XCTAssertEqual(try client.write(sector: 8, data: BlockPattern.block(1, nonce: 7)), 0)
        }

        kill(first, SIGKILL)
        try daemon.waitFor("block server exited (killed by SIGKILL", timeout: 10)
        try BlockHost.waitFor("the restarted block server ready", timeout: 30) { daemon.output.occurrences(of: "block server ready") >= 2 }
        let secondPIDs = BlockHost.blockServers(config: configPath, tenant: "t1")
        XCTAssertEqual(secondPIDs.count, 1, "exactly one block server after the restart:\n\(daemon.output)")
        let second = try XCTUnwrap(secondPIDs.first)
        XCTAssertNotEqual(second, first, "a new process")
        XCTAssertEqual(try BlockHost.jailUid(stateDirectory: stateDirectory, tenant: "t1"), uid, "the restarted server keeps the uid")
        BlockHost.assertJailed(second, uid: uid)
        do {
            let client = try BlockClient(socket: socket)
            XCTAssertEqual(try client.read(sector: 8, length: 4096).data, BlockPattern.block(1, nonce: 7),
                           "data written before the restart is there")
            let data = BlockPattern.block(2, nonce: 7)
            XCTAssertEqual(try client.write(sector: 16, data: data), 0)
            XCTAssertEqual(try client.read(sector: 16, length: 4096).data, data)
        }

        XCTAssertEqual(daemon.stop(), 0, "the daemon stops cleanly:\n\(daemon.output)")
        try BlockHost.waitFor("no block server left after the daemon stopped", timeout: 10) {
            BlockHost.blockServers(config: configPath, tenant: "t1").isEmpty
        }
        XCTAssertFalse(daemon.output.contains("block server exited (", count: 2),
                       "the shutdown did not look like a crash to the supervisor:\n\(daemon.output)")
    }

    /// A daemon that dies without its shutdown (SIGKILL, OOM kill) takes its block servers along;
    /// otherwise the orphan keeps the sockets and the next daemon's block server cannot bind.
    func testKilledDaemonLeavesNoBlockServerBehind() throws {
        try BlockHost.requireRoot()
        let stateDirectory = NSTemporaryDirectory() + "bulkhead-blockit-\(UUID().uuidString)"
        let daemon = try RunningDaemon(configuration: [
            "host": ["stateDirectory": stateDirectory],
            "tenants": [["id": "t1", "volumes": [["id": "v", "sizeBytes": 16 << 20]]]],
        ])
        // The children read the document the daemon applied.
        let configPath = stateDirectory + "/applied.json"
        try BlockHost.waitFor("the block server ready", timeout: 30) { daemon.output.occurrences(of: "block server ready") >= 1 }
        XCTAssertEqual(BlockHost.blockServers(config: configPath, tenant: "t1").count, 1)
        daemon.stop(signal: SIGKILL)
        let gone = (try? BlockHost.waitFor("the block server to go with its daemon", timeout: 5) {
            BlockHost.blockServers(config: configPath, tenant: "t1").isEmpty
        }) != nil
        if !gone {
            let orphans = BlockHost.blockServers(config: configPath, tenant: "t1")
            for pid in orphans { kill(pid, SIGKILL) }
            XCTFail("block server(s) \(orphans) outlived the SIGKILLed daemon: the stdin lifeline did not stop them")
        }
    }

    // MARK: - 3. Isolation

    /// Tenant red's jailed server holds only red's volume and can open no volume file.
    func testABlockServerCannotReachAnotherTenantsVolume() throws {
        try BlockHost.requireRoot()
        let state = try BlockState(tenants: ["red": [("r", 16 << 20)], "blue": [("b", 16 << 20)]])
        let blue = try BlockServerProcess(state: state, tenant: "blue")
        let red = try BlockServerProcess(state: state, tenant: "red")
        try blue.waitFor("block server ready", timeout: 30)
        try red.waitFor("block server ready", timeout: 30)

        let blueVolume = state.volumeFile("blue", "b")
        let redVolume = state.volumeFile("red", "r")
        for path in [blueVolume, redVolume] {
            let info = try BlockHost.owner(path)
            XCTAssertEqual(info.uid, 0, "\(path) belongs to root")
            XCTAssertEqual(info.mode, 0o600, "\(path) is 0600")
        }
        for directory in [state.directory + "/tenants/blue", state.directory + "/tenants/blue/volumes"] {
            let info = try BlockHost.owner(directory)
            XCTAssertEqual(info.uid, 0, "\(directory) belongs to root")
            XCTAssertEqual(info.mode & 0o077, 0, "\(directory) is closed to others")
        }
        // Each tenant's server has its own uid (allocated in configuration order, whichever
        // server came first): they cannot signal or trace each other.
        let blueUid = try BlockHost.jailUid(stateDirectory: state.directory, tenant: "blue")
        let redUid = try BlockHost.jailUid(stateDirectory: state.directory, tenant: "red")
        XCTAssertEqual([blueUid, redUid], [900_000_000, 900_000_001])
        XCTAssertNotEqual(blueUid, redUid)
        BlockHost.assertJailed(red.pid, uid: redUid)
        BlockHost.assertJailed(blue.pid, uid: blueUid)

        // What red holds open: its own volume, nothing of blue's.
        let held = BlockHost.openFiles(red.pid)
        XCTAssertTrue(held.contains { $0.hasPrefix(redVolume) }, "red's server holds its own volume: \(held)")
        XCTAssertFalse(held.contains { $0.contains("/tenants/blue/") }, "red's server holds nothing of blue's: \(held)")

        // Red's client sees red's volume: what it writes never appears on blue's.
        do {
            let redClient = try BlockClient(socket: state.socket("red", "r"))
            XCTAssertEqual(try redClient.write(sector: 0, data: BlockPattern.block(0, nonce: 0xEED)), 0)
            let blueClient = try BlockClient(socket: state.socket("blue", "b"))
            XCTAssertEqual(try blueClient.read(sector: 0, length: 4096).data, [UInt8](repeating: 0, count: 4096))
        }

        // The configuration cannot name a volume outside the tenant's directory.
        let escaping = state.directory + "/escape.json"
        try BlockState.write(["host": ["stateDirectory": state.directory],
                              "tenants": [["id": "t1", "volumes": [["id": "../x", "sizeBytes": 1 << 20]]]]], to: escaping)
        let validation = try Host.run([RunningDaemon.binary, "validate", "--config", escaping])
        XCTAssertNotEqual(validation.status, 0, "validate refuses the volume id '../x'")
        let said = validation.output + validation.error
        XCTAssertTrue(said.contains("tenants[0].volumes[0].id"), "the problem names its JSON path: \(said)")
        let refused = try Host.run([RunningDaemon.binary, "block-server", "--config", escaping, "--tenant", "t1"], timeout: 20)
        XCTAssertNotEqual(refused.status, 0, "block-server refuses that configuration")
        for leak in [state.directory + "/tenants/x.img", state.directory + "/tenants/t1/x.img", state.directory + "/x.img"] {
            XCTAssertFalse(FileManager.default.fileExists(atPath: leak), "\(leak) was not created")
        }

        // The servers' uids cannot open the volume files, not even their own (last: may skip).
        guard let setpriv = Host.which("setpriv") else {
            throw XCTSkip("the rest passed; the open-as-the-jail-uid check needs setpriv (util-linux)")
        }
        for path in [blueVolume, redVolume] {
            for uid in [blueUid, redUid] {
                let attempt = try Host.run([setpriv, "--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", "cat", path])
                XCTAssertNotEqual(attempt.status, 0, "uid \(uid) cannot read \(path)")
                XCTAssertTrue(attempt.error.contains("Permission denied"), "EACCES for \(path): \(attempt.error)")
            }
        }
        XCTAssertEqual(red.stop(), 0, "SIGTERM stops red's server:\n\(red.output)")
        XCTAssertEqual(blue.stop(), 0, "SIGTERM stops blue's server:\n\(blue.output)")
    }

    /// A tenant's jail uid is the one recorded for it, and stays its own when another tenant is
    /// added before it in the configuration; a damaged record stops the server, naming the file.
    func testATenantKeepsItsJailUidWhenAnotherIsAddedBeforeIt() throws {
        try BlockHost.requireRoot()
        let state = try BlockState(tenants: ["t1": [("v", 16 << 20)]])
        let uid: UInt32
        do {
            let server = try BlockServerProcess(state: state, tenant: "t1")
            try server.waitFor("block server ready", timeout: 30)
            uid = try BlockHost.jailUid(stateDirectory: state.directory, tenant: "t1")
            XCTAssertEqual(uid, 900_000_000, "the first tenant gets the lowest uid of the range")
            BlockHost.assertJailed(server.pid, uid: uid)
            XCTAssertEqual(server.stop(), 0, "SIGTERM stops the server:\n\(server.output)")
        }

        // "a0" comes before t1 now: by position t1 would have become base + 1.
        let volumes: [[String: Any]] = [["id": "v", "sizeBytes": 16 << 20]]
        try BlockState.write(["host": ["stateDirectory": state.directory],
                              "tenants": [["id": "a0", "volumes": volumes], ["id": "t1", "volumes": volumes]]], to: state.configPath)
        do {
            let t1 = try BlockServerProcess(state: state, tenant: "t1")
            let a0 = try BlockServerProcess(state: state, tenant: "a0")
            try t1.waitFor("block server ready", timeout: 30)
            try a0.waitFor("block server ready", timeout: 30)
            XCTAssertEqual(try BlockHost.jailUid(stateDirectory: state.directory, tenant: "t1"), uid, "t1 keeps its uid")
            let newcomer = try BlockHost.jailUid(stateDirectory: state.directory, tenant: "a0")
            XCTAssertEqual(newcomer, 900_000_001, "the new tenant gets the lowest uid not recorded")
            BlockHost.assertJailed(t1.pid, uid: uid)
            BlockHost.assertJailed(a0.pid, uid: newcomer)
            XCTAssertEqual(t1.stop(), 0, "SIGTERM stops t1's server:\n\(t1.output)")
            XCTAssertEqual(a0.stop(), 0, "SIGTERM stops a0's server:\n\(a0.output)")
        }

        // Edited by hand into two tenants sharing a uid: refused, not silently reallocated.
        let record = state.directory + "/jail-uids.json"
        try Data(#"{"tenants": {"a0": 900000000, "t1": 900000000}}"#.utf8).write(to: URL(fileURLWithPath: record))
        let refused = try Host.run([RunningDaemon.binary, "block-server", "--config", state.configPath, "--tenant", "t1"], timeout: 20)
        XCTAssertNotEqual(refused.status, 0, "a damaged record stops the server")
        let said = refused.output + refused.error
        XCTAssertTrue(said.contains(record) && said.contains(#"uid 900000000 is also recorded for tenant "a0""#),
                      "the error names the file and the problem: \(said)")
        XCTAssertEqual(try String(contentsOfFile: record, encoding: .utf8), #"{"tenants": {"a0": 900000000, "t1": 900000000}}"#,
                       "the record is left as it was")
    }

    /// A jail that cannot be built (here: no CAP_SYS_ADMIN for the namespaces) stops the server
    /// before it serves, with the step and errno in its log; `--no-jail` skips every layer.
    func testABlockServerThatCannotJailItselfDoesNotServe() throws {
        try BlockHost.requireRoot()
        guard let setpriv = Host.which("setpriv") else { throw XCTSkip("needs setpriv (util-linux)") }
        let state = try BlockState(tenants: ["t1": [("v", 16 << 20)]])
        let refused = try Host.run([setpriv, "--bounding-set", "-sys_admin", RunningDaemon.binary, "block-server",
                                    "--config", state.configPath, "--tenant", "t1"], timeout: 30)
        XCTAssertEqual(refused.status, 1, "the server exits instead of serving half-jailed: \(refused.error)")
        XCTAssertTrue(refused.error.contains("block server jail failed; not serving: jail step unshare(CLONE_NEWNS"),
                      "the log names the step: \(refused.error)")
        XCTAssertTrue(refused.error.contains("(errno 1)"), "and the errno (EPERM): \(refused.error)")
        XCTAssertFalse(refused.error.contains("block server ready"), refused.error)

        let unjailed = try BlockServerProcess(state: state, tenant: "t1", extraArguments: ["--no-jail"])
        try unjailed.waitFor("block server ready", timeout: 30)
        let fields = BlockHost.status("/proc/\(unjailed.pid)/status")
        XCTAssertEqual(fields["Uid"]?.split(whereSeparator: \.isWhitespace).first, "0", "--no-jail keeps root")
        XCTAssertEqual(fields["Seccomp"], "0", "--no-jail installs no filter")
        XCTAssertEqual(try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(unjailed.pid)/ns/mnt"),
                       try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/mnt"), "--no-jail keeps the mount namespace")
        let client = try BlockClient(socket: state.socket("t1", "v"))
        XCTAssertEqual(try client.write(sector: 0, data: BlockPattern.block(0, nonce: 1)), 0)
        XCTAssertEqual(unjailed.stop(), 0, "SIGTERM stops it:\n\(unjailed.output)")
    }

    // MARK: - 4. Hostile client next to a good one

    /// Malformed vhost-user messages on volume B's socket don't disturb a client of volume A.
    func testHostileClientDoesNotDisturbAnotherVolume() throws {
        let (state, server, good) = try serverWithAGoodClient()

        let sockB = state.socket("t1", "b")
        let devNull = open("/dev/null", O_RDONLY)
        defer { close(devNull) }
        let attacks: [(String, (VhostUserFrontend) throws -> Void)] = [
            ("wrong size", { try $0.sendRaw(Self.header(VhostUserRequest.setFeatures.rawValue, size: 4) + [0, 0, 0, 0]) }),
            ("missing fds", {
                let table = VhostMemoryTable(regions: [VhostMemoryRegion(guestAddress: 0, size: 0x1000, userAddress: 0, mmapOffset: 0)])
                try $0.sendRaw(VhostUserMessage.request(.setMemTable, .memoryTable(table)).encode())
            }),
            ("an fd on a request that takes none", { try $0.sendRaw(VhostUserMessage.request(.getFeatures).encode(), fds: [devNull]) }),
            ("a 1 MB size field", { try $0.sendRaw(Self.header(VhostUserRequest.setMemTable.rawValue, size: 1 << 20) + [UInt8](repeating: 0, count: 4096)) }),
            ("a 4 GB size field", { try $0.sendRaw(Self.header(VhostUserRequest.setMemTable.rawValue, size: .max)) }),
            ("an unknown request", { try $0.sendRaw(Self.header(1000, size: 0)) }),
            ("a kick for queue 200", {
                try $0.sendRaw(VhostUserMessage.request(.setVringKick, .vringFile(VhostVringFile(index: 200))).encode(), fds: [devNull])
            }),
            ("a truncated header", { try $0.sendRaw([1, 0, 0, 0, 1]); $0.shutdownWrites() }),
            ("garbage", { try $0.sendRaw((0..<512).map { UInt8(truncatingIfNeeded: $0 &* 151 &+ 7) }) }),
        ]
        let droppedBefore = server.output.occurrences(of: "vhost-user frontend dropped")
        for _ in 0..<3 {
            for (what, attack) in attacks {
                let hostile = try VhostUserFrontend(connectingTo: sockB, replyTimeoutMilliseconds: 5000)
                try attack(hostile)
                XCTAssertNoThrow(try hostile.waitForDisconnect(), "\(what): the server closes the connection")
            }
        }
        print("hostile: \(server.output.occurrences(of: "vhost-user frontend dropped") - droppedBefore) drops, \(server.output.occurrences(of: "vhost-user frontend disconnected")) disconnects, good client \(good.rounds) rounds")
        let roundsDuringAttack = good.rounds
        Thread.sleep(forTimeInterval: 0.3)
        good.stop()
        XCTAssertNil(good.failure, "the good client on volume A was unaffected")
        XCTAssertGreaterThan(good.rounds, roundsDuringAttack, "the good client kept going")
        XCTAssertTrue(server.isRunning, "the server process is alive:\n\(server.output)")
        try BlockHost.waitFor("the server logs the drops", timeout: 5) {
            server.output.occurrences(of: "vhost-user frontend dropped") - droppedBefore >= attacks.count * 3
        }

        let client = try BlockClient(socket: sockB)
        XCTAssertEqual(client.capacitySectors, (32 << 20) / 512)
        let data = BlockPattern.block(9, nonce: 3)
        XCTAssertEqual(try client.write(sector: 800, data: data), 0)
        XCTAssertEqual(try client.read(sector: 800, length: 4096).data, data, "volume B serves a well-behaved client afterwards")
        XCTAssertEqual(server.stop(), 0, "SIGTERM stops the server with a client connected:\n\(server.output)")
    }

    /// A frontend could shrink its guest memory file after SET_MEM_TABLE and point a request
    /// there (SIGBUS in the server, taking the tenant's other volumes down): memory that is not
    /// sealed against shrinking is refused, and the other volume is unaffected.
    func testShrunkGuestMemoryDoesNotKillTheServer() throws {
        let (state, server, good) = try serverWithAGoodClient()
        defer { good.stop() }

        // Guest memory the frontend could still shrink under the server's mapping (and so turn a
        // guest access into SIGBUS) is refused at SET_MEM_TABLE: the frontend is dropped.
        XCTAssertThrowsError(try BlockClient(socket: state.socket("t1", "b"), queueCount: 1, memoryBytes: 64 << 20,
                                             sealMemory: false), "an unsealed memfd must be refused")
        try BlockHost.waitFor("the server to log why", timeout: 5) { server.output.contains("F_SEAL_SHRINK") }
        XCTAssertTrue(server.isRunning, "the server survived:\n\(server.output)")
        let rounds = good.rounds
        Thread.sleep(forTimeInterval: 0.3)
        XCTAssertNil(good.failure, "the good client on volume a was unaffected")
        XCTAssertGreaterThan(good.rounds, rounds, "the good client kept going")
        let client = try BlockClient(socket: state.socket("t1", "b"))
        let data = BlockPattern.block(3, nonce: 5)
        XCTAssertEqual(try client.write(sector: 80, data: data), 0)
        XCTAssertEqual(try client.read(sector: 80, length: 4096).data, data, "volume b serves the next client")
    }

    /// Tenant t1 with volumes a and b (32 MiB each), its jailed server ready, and a well-behaved
    /// client looping on volume a that has completed its first round.
    /// The jailed server against a frontend that speaks vhost-user correctly and attacks through
    /// its virtqueue and kick descriptor: an always-readable kick costs the server process no CPU,
    /// a 6 GiB aliased read fails alone, a flood of malformed requests leaves a bounded log, and
    /// the other volume, the server's descriptors and its liveness come through unchanged.
    func testHostileVirtqueuesAgainstTheJailedServer() throws {
        try BlockHost.requireRoot()
        let state = try BlockState(tenants: ["t1": [("a", 32 << 20), ("b", 8 << 30)]])
        let server = try BlockServerProcess(state: state, tenant: "t1")
        try server.waitFor("block server ready", timeout: 30)
        let baseline = BlockHost.openDescriptors(of: server.pid)

        do {
            let hostile = try BlockClient(socket: state.socket("t1", "b"), queueSize: 256)
            // An eventfd in semaphore mode with a counter of 2^64 - 2 as the kick: always readable.
            let storm = try EventFD(nonBlocking: true, semaphore: true)
            var huge: UInt64 = .max - 1
            XCTAssertEqual(write(storm.rawValue, &huge, 8), 8)
            try hostile.frontend.setVringKick(0, fd: storm.rawValue)
            let before = BlockHost.cpuSeconds(of: server.pid)
            Thread.sleep(forTimeInterval: 3)
            let spent = BlockHost.cpuSeconds(of: server.pid) - before
            XCTAssertLessThan(spent, 0.3, "an always-readable kick cost the server \(spent) s of CPU in 3 s")

            // 126 descriptors aliasing one 48 MiB buffer: a 6 GiB read.
            let area = try hostile.data(queue: 0, offset: 0, length: 48 << 20)
            let header = hostile.writeHeader(queue: 0, slot: 0, type: BlockClient.typeRead, sector: 0)
            _ = try hostile.add(queue: 0, [.init(address: header, length: 16, writable: false)]
                + Array(repeating: .init(address: area.address, length: 48 << 20, writable: true), count: 126)
                + [.init(address: header + 16, length: 1, writable: true)])
            hostile.kick(queue: 0)
            _ = try hostile.waitUsed(queue: 0)
            XCTAssertEqual(hostile.status(queue: 0, slot: 0), 1, "IOERR for a 6 GiB read")

            // 1024 requests too short to have a header.
            for _ in 0..<8 {
                for slot in 0..<128 {
                    let h = hostile.writeHeader(queue: 0, slot: slot, type: BlockClient.typeRead, sector: 0)
                    _ = try hostile.add(queue: 0, [.init(address: h, length: 8, writable: false), .init(address: h + 16, length: 1, writable: true)])
                }
                hostile.kick(queue: 0)
                for _ in 0..<128 { _ = try hostile.waitUsed(queue: 0) }
            }
            XCTAssertLessThan(server.output.occurrences(of: "virtio-blk: malformed request"), 100,
                              "1024 malformed requests leave a bounded log")
            let data = BlockPattern.block(3, nonce: 5)
            XCTAssertEqual(try hostile.write(sector: 64, data: data), 0)
            XCTAssertEqual(try hostile.read(sector: 64, length: 4096).data, data, "the attacked queue still serves")
        }
        try server.waitFor("vhost-user frontend disconnected", timeout: 10)
        try BlockHost.waitFor("the suppressed warnings counted in the log", timeout: 10) { server.output.contains("log.suppressed") }
        try BlockHost.waitFor("the server's descriptors back to \(baseline)", timeout: 10) {
            BlockHost.openDescriptors(of: server.pid) == baseline
        }

        let good = try BlockClient(socket: state.socket("t1", "a"))
        let data = BlockPattern.block(4, nonce: 5)
        XCTAssertEqual(try good.write(sector: 8, data: data), 0)
        XCTAssertEqual(try good.read(sector: 8, length: 4096).data, data, "the other volume serves")
        XCTAssertTrue(server.isRunning, "the server is alive:\n\(server.output)")
        XCTAssertEqual(server.stop(), 0, "SIGTERM stops the server:\n\(server.output)")
    }

    private func serverWithAGoodClient() throws -> (BlockState, BlockServerProcess, GoodClientLoop) {
        try BlockHost.requireRoot()
        let state = try BlockState(tenants: ["t1": [("a", 32 << 20), ("b", 32 << 20)]])
        let server = try BlockServerProcess(state: state, tenant: "t1")
        try server.waitFor("block server ready", timeout: 30)
        let good = GoodClientLoop(socket: state.socket("t1", "a"))
        good.start()
        do {
            try BlockHost.waitFor("the good client's first round", timeout: 10) { good.rounds > 0 || good.failure != nil }
        } catch {
            good.stop()
            throw error
        }
        return (state, server, good)
    }

    private static func header(_ request: UInt32, size: UInt32) -> [UInt8] {
        var bytes: [UInt8] = []
        VhostUserHeader(request: request, flags: VhostUserHeader.version, size: size).encode(into: &bytes)
        return bytes
    }

    // MARK: - 5. QEMU as an independent frontend

    /// QEMU's vhost-user-blk-pci negotiates with the server and shows the guest the right capacity.
    func testQEMUConnectsAndSeesTheCapacity() throws {
        try BlockHost.requireRoot()
        guard let qemu = Host.which("qemu-system-x86_64") else {
            throw XCTSkip("needs qemu-system-x86_64 on PATH (deploy/install-deps.sh installs qemu-system-x86)")
        }
        let volumeBytes = 64 << 20
        let state = try BlockState(tenants: ["t1": [("disk", UInt64(volumeBytes))]])
        // trace: the backend logs each request (GET_CONFIG included) only at trace level.
        let server = try BlockServerProcess(state: state, tenant: "t1", queues: 1, logLevel: "trace")
        try server.waitFor("block server ready", timeout: 30)

        let qmpPath = state.directory + "/qmp.sock"
        let qtestPath = state.directory + "/qtest.sock"
        let vm = try QEMUProcess(qemu, arguments: [
            "-machine", "q35,accel=tcg", "-m", "128M",
            "-object", "memory-backend-memfd,id=mem,size=128M,share=on", "-numa", "node,memdev=mem",
            "-chardev", "socket,id=c0,path=\(state.socket("t1", "disk"))",
            "-device", "vhost-user-blk-pci,chardev=c0,num-queues=1",
            "-nographic", "-nodefaults", "-display", "none", "-S",
            "-qmp", "unix:\(qmpPath),server=on,wait=off",
            // qtest: the test reads the device's PCI config space the way a guest driver would.
            "-qtest", "unix:\(qtestPath),server=on,wait=off", "-qtest-log", "/dev/null",
        ], directory: state.directory)
        defer { vm.kill() }

        try server.waitFor("vhost-user frontend connected", timeout: 20)
        try server.waitFor("vhost.request=GET_CONFIG", timeout: 20)
        try BlockHost.waitFor("QEMU's QMP socket", timeout: 20) { FileManager.default.fileExists(atPath: qmpPath) || !vm.isRunning }
        Thread.sleep(forTimeInterval: 2)
        XCTAssertTrue(vm.isRunning, "QEMU is up: \(vm.errors)")
        XCTAssertFalse(vm.errors.contains("vhost-user-blk"), "no vhost-user-blk error: \(vm.errors)")
        XCTAssertFalse(server.output.contains("vhost-user frontend dropped"), "the server accepted QEMU:\n\(server.output)")

        let qmp = try LineSocket(path: qmpPath)
        XCTAssertTrue(try qmp.readLine().contains("\"QMP\""), "QMP greeting")
        try qmp.send("{\"execute\":\"qmp_capabilities\"}")
        XCTAssertTrue(try qmp.readReply().contains("\"return\""))
        try qmp.send("{\"execute\":\"query-status\"}")
        XCTAssertTrue(try qmp.readReply().contains("\"prelaunch\""), "the guest never ran")

        // The device's config space, through PCI: find the virtio device, map its device-config
        // capability's BAR, and read capacity (offset 0) and blk_size (offset 20).
        let pci = try QTestPCI(path: qtestPath)
        let device = try XCTUnwrap(try pci.findDevice(vendor: 0x1af4), "a virtio PCI device on bus 0")
        XCTAssertTrue([0x1001, 0x1042].contains(device.deviceID), "virtio-blk (device id 0x\(String(device.deviceID, radix: 16)))")
        let config = try XCTUnwrap(try pci.mapVirtioCapability(device.slot, type: 4, at: 0xE000_0000), "a device-config capability")
        let capacity = UInt64(try pci.readl(config)) | UInt64(try pci.readl(config + 4)) << 32
        XCTAssertEqual(capacity, UInt64(volumeBytes / 512), "QEMU shows the guest the volume's capacity in sectors")
        XCTAssertEqual(try pci.readl(config + 20), 512, "blk_size")

        try qmp.send("{\"execute\":\"quit\"}")
        XCTAssertTrue(vm.waitForExit(timeout: 20), "QEMU quit")
        try server.waitFor("vhost-user frontend disconnected", timeout: 10)
        XCTAssertTrue(server.isRunning, "the server keeps running after QEMU left")
        let client = try BlockClient(socket: state.socket("t1", "disk"))
        XCTAssertEqual(client.capacitySectors, UInt64(volumeBytes / 512))
        let data = BlockPattern.block(5, nonce: 11)
        XCTAssertEqual(try client.write(sector: 40, data: data), 0)
        XCTAssertEqual(try client.read(sector: 40, length: 4096).data, data, "a client is served after QEMU")
        XCTAssertEqual(server.stop(), 0, "SIGTERM stops the server with a client connected:\n\(server.output)")
        XCTAssertTrue(server.output.contains("block server stopped"))
    }
}

// MARK: - Helpers

/// Per-block contents: the block number and a run nonce up front, a pattern after.
enum BlockPattern {
    static func block(_ index: Int, nonce: UInt64) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 4096)
        withUnsafeBytes(of: UInt64(index).littleEndian) { bytes.replaceSubrange(0..<8, with: $0) }
        withUnsafeBytes(of: nonce.littleEndian) { bytes.replaceSubrange(8..<16, with: $0) }
        for i in 16..<4096 { bytes[i] = UInt8(truncatingIfNeeded: (i &* 31) ^ (index &* 7919) ^ Int(truncatingIfNeeded: nonce >> UInt64(i % 56))) }
        return bytes
    }
}

/// Completed writes, shared with the thread that kills the server; `cancel()` stops that thread.
final class CompletionCounter: Sendable {
    private let count = Atomic<Int>(0)
    private let stopped = Atomic<Bool>(false)
    func add() { count.add(1, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
    func cancel() { stopped.store(true, ordering: .sequentiallyConsistent) }
    var cancelled: Bool { stopped.load(ordering: .sequentiallyConsistent) }
}

/// A state directory and a configuration file with some tenants' volumes; removed at the end.
final class BlockState {
    let directory: String
    let configPath: String

    init(tenants: [String: [(String, UInt64)]]) throws {
        directory = NSTemporaryDirectory() + "bulkhead-blockit-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        configPath = directory + "/config.json"
        try BlockState.write([
            "host": ["stateDirectory": directory],
            "tenants": tenants.keys.sorted().map { id in
                ["id": id, "volumes": tenants[id, default: []].map { ["id": $0.0, "sizeBytes": $0.1] }] as [String: Any]
            },
        ], to: configPath)
    }

    static func write(_ configuration: [String: Any], to path: String) throws {
        let data = try JSONSerialization.data(withJSONObject: configuration, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: path))
    }

    func socket(_ tenant: String, _ volume: String) -> String { "\(directory)/tenants/\(tenant)/vhost/\(volume).sock" }
    func volumeFile(_ tenant: String, _ volume: String) -> String { "\(directory)/tenants/\(tenant)/volumes/\(volume).img" }

    deinit { try? FileManager.default.removeItem(atPath: directory) }
}

/// `bulkhead block-server` for one tenant of a `BlockState`.
final class BlockServerProcess: LoggedProcess, @unchecked Sendable {
    init(state: BlockState, tenant: String, queues: Int = 1, logLevel: String = "info", extraArguments: [String] = []) throws {
        try super.init(executable: RunningDaemon.binary, arguments: [
            "block-server", "--config", state.configPath, "--tenant", tenant, "--queues", "\(queues)", "--log-level", logLevel,
        ] + extraArguments)
    }
}

/// QEMU, its stderr in a file (QEMU's output is small; a file needs no reader).
final class QEMUProcess {
    let process = Process()
    private let errorsPath: String

    init(_ executable: String, arguments: [String], directory: String) throws {
        errorsPath = directory + "/qemu.err"
        _ = FileManager.default.createFile(atPath: errorsPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: errorsPath))
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errorsPath))
        try process.run()
    }

    var isRunning: Bool { process.isRunning }
    var errors: String { (try? String(contentsOfFile: errorsPath, encoding: .utf8)) ?? "" }

    func waitForExit(timeout: TimeInterval) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        return !process.isRunning
    }

    func kill() {
        guard process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}

/// A client that writes and reads back volume A in a loop on its own thread.
final class GoodClientLoop: Sendable {
    private let socket: String
    private let state = Mutex<(rounds: Int, failure: String?, stop: Bool, done: Bool)>((0, nil, false, false))

    init(socket: String) { self.socket = socket }

    var rounds: Int { state.withLock { $0.rounds } }
    var failure: String? { state.withLock { $0.failure } }

    func start() {
        Thread { [self] in
            defer { state.withLock { $0.done = true } }
            do {
                let client = try BlockClient(socket: socket, queueCount: 1)
                var round = 0
                while !state.withLock({ $0.stop }) {
                    let block = round % 4096
                    let data = BlockPattern.block(block, nonce: UInt64(round))
                    let status = try client.write(sector: UInt64(block * 8), data: data)
                    guard status == 0 else { throw DaemonFailure(message: "write status \(status) in round \(round)") }
                    let back = try client.read(sector: UInt64(block * 8), length: 4096)
                    guard back.status == 0, back.data == data else { throw DaemonFailure(message: "read-back mismatch in round \(round)") }
                    round += 1
                    state.withLock { $0.rounds = round }
                }
            } catch {
                state.withLock { $0.failure = "\(error)" }
            }
        }.start()
    }

    func stop() {
        state.withLock { $0.stop = true }
        let deadline = Date().addingTimeInterval(15)
        while !state.withLock({ $0.done }) && Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
    }
}

/// A line-oriented Unix stream socket (QMP, qtest).
final class LineSocket {
    private let fd: Int32
    private var buffer: [UInt8] = []

    init(path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw DaemonFailure(message: "socket: errno \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            throw DaemonFailure(message: "socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let r = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard r == 0 else {
            let error = errno
            close(fd)
            throw DaemonFailure(message: "connect(\(path)): errno \(error)")
        }
    }

    deinit { close(fd) }

    func send(_ line: String) throws {
        let bytes = Array((line + "\n").utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw DaemonFailure(message: "send: errno \(errno)") }
            sent += n
        }
    }

    func readLine(timeout: TimeInterval = 10) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: buffer[..<newline], as: UTF8.self)
                buffer.removeSubrange(...newline)
                return line
            }
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else { throw DaemonFailure(message: "no line within \(timeout) s (have: \(String(decoding: buffer, as: UTF8.self)))") }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, Int32(left * 1000) + 1) > 0 else { continue }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { throw DaemonFailure(message: "connection closed (have: \(String(decoding: buffer, as: UTF8.self)))") }
            buffer += chunk[..<n]
        }
    }

    /// The next QMP line that is a reply (events are skipped).
    func readReply() throws -> String {
        while true {
            let line = try readLine()
            if !line.contains("\"event\"") { return line }
        }
    }
}

/// PCI config space and MMIO of a QEMU through its qtest protocol (what a guest driver sees).
final class QTestPCI {
    private let socket: LineSocket

    init(path: String) throws {
        var last: Error?
        for _ in 0..<100 {
            do { socket = try LineSocket(path: path); return } catch { last = error }
            Thread.sleep(forTimeInterval: 0.1)
        }
        throw last ?? DaemonFailure(message: "no qtest socket at \(path)")
    }

    private func command(_ line: String) throws -> UInt64? {
        try socket.send(line)
        while true {
            let reply = try socket.readLine()
            if reply.hasPrefix("IRQ") { continue }
            guard reply.hasPrefix("OK") else { throw DaemonFailure(message: "qtest '\(line)': \(reply)") }
            guard let hex = reply.split(separator: " ").dropFirst().first else { return nil }
            return UInt64(hex.dropFirst(2), radix: 16)
        }
    }

    private func address(_ slot: Int, _ register: Int) -> String {
        "0x" + String(0x8000_0000 | UInt32(slot) << 11 | UInt32(register & 0xFC), radix: 16)
    }

    func configRead(_ slot: Int, _ register: Int) throws -> UInt32 {
        _ = try command("outl 0xcf8 \(address(slot, register))")
        return UInt32(truncatingIfNeeded: try command("inl 0xcfc") ?? 0)
    }

    func configWrite(_ slot: Int, _ register: Int, _ value: UInt32) throws {
        _ = try command("outl 0xcf8 \(address(slot, register))")
        _ = try command("outl 0xcfc 0x\(String(value, radix: 16))")
    }

    func readl(_ address: UInt64) throws -> UInt32 {
        UInt32(truncatingIfNeeded: try command("readl 0x\(String(address, radix: 16))") ?? 0)
    }

    /// The first function-0 device on bus 0 with `vendor`.
    func findDevice(vendor: UInt16) throws -> (slot: Int, deviceID: UInt16)? {
        for slot in 0..<32 {
            let id = try configRead(slot, 0)
            if UInt16(id & 0xFFFF) == vendor { return (slot, UInt16(id >> 16)) }
        }
        return nil
    }

    /// Finds the virtio PCI capability of `type`, maps its BAR at `base`, enables memory
    /// decoding and returns the address of the capability's structure.
    func mapVirtioCapability(_ slot: Int, type: UInt8, at base: UInt64) throws -> UInt64? {
        guard try configRead(slot, 0x04) & (1 << 20) != 0 else { return nil }  // status: capability list
        var pointer = Int(try configRead(slot, 0x34) & 0xFC)
        var seen = 0
        while pointer != 0 && seen < 48 {
            seen += 1
            let head = try configRead(slot, pointer)
            if head & 0xFF == 0x09 && UInt8(truncatingIfNeeded: head >> 24) == type {
                let bar = Int(try configRead(slot, pointer + 4) & 0xFF)
                let offset = UInt64(try configRead(slot, pointer + 8))
                guard bar < 6 else { return nil }
                let barRegister = 0x10 + 4 * bar
                let kind = try configRead(slot, barRegister)
                try configWrite(slot, barRegister, UInt32(truncatingIfNeeded: base))
                if kind & 0x6 == 0x4 { try configWrite(slot, barRegister + 4, UInt32(truncatingIfNeeded: base >> 32)) }
                let command = try configRead(slot, 0x04) & 0xFFFF
                try configWrite(slot, 0x04, command | 0x2)
                return base + offset
            }
            pointer = Int((head >> 8) & 0xFC)
        }
        return nil
    }
}

enum BlockHost {
    static func requireRoot() throws {
        guard getuid() == 0 else {
            throw XCTSkip("needs root: the block server jails itself (namespaces, its tenant's uid) and its volume files are root's (run as root, as CI does)")
        }
        if let disabled = try? String(contentsOfFile: "/proc/sys/kernel/io_uring_disabled", encoding: .utf8),
           disabled.trimmingCharacters(in: .whitespacesAndNewlines) != "0" {
            throw XCTSkip("needs io_uring (/proc/sys/kernel/io_uring_disabled is \(disabled.trimmingCharacters(in: .whitespacesAndNewlines)))")
        }
    }

    static func waitFor(_ what: String, timeout: TimeInterval, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return }
            Thread.sleep(forTimeInterval: 0.05)
        }
        if condition() { return }
        throw DaemonFailure(message: "timed out after \(timeout) s waiting for \(what)")
    }

    /// Pids of `bulkhead block-server --config <config> ... --tenant <tenant>` processes.
    static func blockServers(config: String, tenant: String) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { pid in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            let arguments = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            guard arguments.contains("block-server") else { return false }
            func value(_ option: String) -> String? {
                guard let i = arguments.firstIndex(of: option), i + 1 < arguments.count else { return nil }
                return arguments[i + 1]
            }
            return value("--config") == config && value("--tenant") == tenant
        }.sorted()
    }

    /// The fields of a /proc status file.
    static func status(_ path: String) -> [String: String] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [:] }
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            fields[String(line[..<colon])] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return fields
    }

    /// The uid (and gid) the jailed block server of `tenant` runs as with the default
    /// `host.jailUidBase`: the uid recorded for it in the state directory's `jail-uids.json`,
    /// which must be root's and 0600.
    static func jailUid(stateDirectory: String, tenant: String) throws -> UInt32 {
        let path = stateDirectory + "/jail-uids.json"
        let owner = try owner(path)
        XCTAssertEqual(owner.uid, 0, "\(path) belongs to root")
        XCTAssertEqual(owner.mode, 0o600, "\(path) is 0600")
        let record = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any]
        let uid = ((record?["tenants"] as? [String: Any])?[tenant] as? NSNumber).flatMap { UInt32(exactly: $0.uint64Value) }
        return try XCTUnwrap(uid, "a uid for tenant \(tenant) in \(path): \(record ?? [:])")
    }

    /// How many descriptors `pid` has open.
    static func openDescriptors(of pid: Int32) -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).count
    }

    /// User plus system CPU time of `pid`, in seconds (/proc/PID/stat fields 14 and 15).
    static func cpuSeconds(of pid: Int32) -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return 0 }
        // Fields after the command name (which may hold spaces) start at field 3.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// How many descriptors of `pid` are `target` (as /proc/PID/fd shows them).
    static func descriptors(of pid: Int32, linkingTo target: String) -> Int {
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
        return fds.filter { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)")) == target }.count
    }

    /// The soft and hard values of a line of /proc/PID/limits ("Max file size", ...).
    static func limit(_ name: String, of pid: Int32) -> [String] {
        let limits = ((try? String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8)) ?? "").split(separator: "\n")
        return limits.first { $0.hasPrefix(name) }.map { $0.dropFirst(name.count).split(whereSeparator: \.isWhitespace).prefix(2).map(String.init) } ?? []
    }

    /// Every thread of `pid` is uid/gid `uid` with no groups, no capabilities, NoNewPrivs and the
    /// seccomp filter; the process has namespaces of its own and an empty, read-only root, and
    /// holds no directory open.
    static func assertJailed(_ pid: Int32, uid: UInt32, file: StaticString = #filePath, line: UInt = #line) {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        XCTAssertGreaterThan(tasks.count, 1, "process \(pid) has its serving threads", file: file, line: line)
        let expected = Array(repeating: "\(uid)", count: 4)
        for task in tasks {
            let fields = status("/proc/\(pid)/task/\(task)/status")
            let ids = { (key: String) in fields[key].map { $0.split(whereSeparator: \.isWhitespace).map(String.init) } ?? [] }
            let context = "thread \(task) of \(pid) (\(fields["Name"] ?? "?"))"
            XCTAssertEqual(ids("Uid"), expected, "\(context): real, effective, saved and fs uid", file: file, line: line)
            XCTAssertEqual(ids("Gid"), expected, "\(context): gids", file: file, line: line)
            XCTAssertEqual(fields["Groups"], "", "\(context): no supplementary groups", file: file, line: line)
            for key in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
                XCTAssertEqual(fields[key].flatMap { UInt64($0, radix: 16) }, 0, "\(context): \(key)", file: file, line: line)
            }
            XCTAssertEqual(fields["NoNewPrivs"], "1", "\(context): NoNewPrivs", file: file, line: line)
            XCTAssertEqual(fields["Seccomp"], "2", "\(context): a seccomp filter (mode 2)", file: file, line: line)
        }
        for namespace in ["net", "mnt", "ipc", "uts"] {
            let own = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/\(namespace)")
            let its = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/\(namespace)")
            XCTAssertNotNil(its, "the \(namespace) namespace of \(pid) is readable", file: file, line: line)
            XCTAssertNotEqual(its, own, "process \(pid) has a \(namespace) namespace of its own", file: file, line: line)
        }
        // Resource limits: finite, soft equal to hard (the server cannot raise them), no cores.
        let limits = ((try? String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8)) ?? "").split(separator: "\n")
        for (name, bound) in [("Max processes", 1000), ("Max open files", 4096), ("Max core file size", 0)] {
            let values = limits.first { $0.hasPrefix(name) }.map { $0.dropFirst(name.count).split(whereSeparator: \.isWhitespace).prefix(2).map(String.init) } ?? []
            XCTAssertEqual(values.count, 2, "\(name) of \(pid) in /proc/\(pid)/limits", file: file, line: line)
            if values.count == 2 {
                XCTAssertEqual(values[0], values[1], "\(name) of \(pid): soft limit = hard limit", file: file, line: line)
                XCTAssertLessThanOrEqual(Int(values[1]) ?? .max, bound, "\(name) of \(pid) is at most \(bound)", file: file, line: line)
            }
        }
        let root = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/root")
        XCTAssertEqual(root, [], "the root of \(pid) is readable and empty", file: file, line: line)
        let mounts = ((try? String(contentsOfFile: "/proc/\(pid)/mountinfo", encoding: .utf8)) ?? "")
            .split(separator: "\n").map(String.init)
        XCTAssertEqual(mounts.count, 1, "one mount in the namespace of \(pid), nothing of the host's: \(mounts)", file: file, line: line)
        if let only = mounts.first {
            let fields = only.split(separator: " ").map(String.init)
            XCTAssertEqual(fields.dropFirst(4).first, "/", "the mount is the root: \(only)", file: file, line: line)
            XCTAssertTrue(only.contains(" - tmpfs "), "the root is a tmpfs: \(only)", file: file, line: line)
            let options = Set((fields.dropFirst(5).first ?? "").split(separator: ",").map(String.init))
            XCTAssertTrue(options.isSuperset(of: ["ro", "nosuid", "nodev", "noexec"]), "root mount options \(options)", file: file, line: line)
        }
        for fd in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? [] {
            var isDirectory: ObjCBool = false
            let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)")) ?? "?"
            if FileManager.default.fileExists(atPath: "/proc/\(pid)/fd/\(fd)", isDirectory: &isDirectory) {
                XCTAssertFalse(isDirectory.boolValue, "fd \(fd) of \(pid) is a directory (\(target)): a way out of the root", file: file, line: line)
            }
        }
    }

    /// Where the fds of `pid` point.
    static func openFiles(_ pid: Int32) -> [String] {
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
        return fds.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)") }
    }

    /// Owner uid and permission bits of `path`.
    static func owner(_ path: String) throws -> (uid: Int, mode: Int) {
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        return ((attributes[.ownerAccountID] as? NSNumber)?.intValue ?? -1, (attributes[.posixPermissions] as? NSNumber)?.intValue ?? -1)
    }
}

extension String {
    func occurrences(of text: String) -> Int { components(separatedBy: text).count - 1 }
    func contains(_ text: String, count: Int) -> Bool { occurrences(of: text) >= count }
}
