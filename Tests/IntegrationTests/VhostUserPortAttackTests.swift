import Foundation
import HostOS
import NetClient
import Virtio
import XCTest

/// A hostile frontend on blue's vhost-user-net port, against the jailed switch of the demo
/// topology: what it sends is checked like a TAP port's frames, hostile rings cost it its own
/// frames only, a kick storm does not cost the switch a core, and nothing reaches red.
final class VhostUserPortAttackTests: XCTestCase {
    private func ns(_ tenant: String, _ port: String) -> String { TestTopology.namespace(tenant, port) }
    private func ifname(_ tenant: String, _ port: String) -> String { TestTopology.interface(tenant, port) }

    private static let blueVM: [UInt8] = [0x02, 0, 0, 0, 0x01, 0x03]
    private static let redVM: [UInt8] = [0x02, 0, 0, 0, 0x02, 0x03]
    private static let blueA: [UInt8] = [0x02, 0, 0, 0, 0x01, 0x01]

    /// The demo, which has a vhost-user port `vm` (10.0.0.3) in each tenant.
    private func daemonWithVMPorts() throws -> RunningDaemon {
        try Host.requireNetworkPrivileges()
        let daemon = try RunningDaemon(configuration: try TestTopology.demo())
        try daemon.waitForForwarding()
        return daemon
    }

    /// An Ethernet + IPv4 + UDP frame (checksums zero: the receiver does not need them for
    /// counting, and the switch does not look at them).
    private static func udp(from source: [UInt8], to destination: [UInt8], sourceIP: [UInt8], destinationIP: [UInt8],
                            payload: Int = 18) -> [UInt8] {
        let udpLength = 8 + payload
        let ipLength = 20 + udpLength
        var frame = destination + source + [0x08, 0x00]
        frame += [0x45, 0, UInt8(ipLength >> 8), UInt8(ipLength & 0xFF), 0, 0, 0x40, 0, 64, 17, 0, 0] + sourceIP + destinationIP
        frame += [0x30, 0x39, 0x30, 0x39, UInt8(udpLength >> 8), UInt8(udpLength & 0xFF), 0, 0]
        frame += [UInt8](repeating: 0x5A, count: payload)
        return frame
    }

    /// An ARP request for `target` from `mac`/`ip`.
    private static func arpRequest(from mac: [UInt8], ip: [UInt8], for target: [UInt8]) -> [UInt8] {
        [UInt8](repeating: 0xFF, count: 6) + mac + [0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1] + mac + ip
            + [UInt8](repeating: 0, count: 6) + target
    }

    func testTheGuestsARPIsAnsweredByItsTenantAndItsLiesAreDropped() throws {
        let daemon = try daemonWithVMPorts()
        let intoRed = try ["a", "b", ].map {
            try Capture(namespace: ns("red", $0), interface: ifname("red", $0), filter: "ether src 02:00:00:00:01:03")
        }
        let spoofedIntoBlue = try Capture(namespace: ns("blue", "b"), interface: ifname("blue", "b"),
                                          filter: "ether src 02:00:00:00:02:03 or src host 10.0.0.99")
        let client = try NetClient(socket: daemon.stateDirectory + "/tenants/blue/net/vm.sock")
        client.postReceiveBuffers()

        // A real exchange: blue-a's kernel answers the guest's ARP request through the switch.
        try client.send(Self.arpRequest(from: Self.blueVM, ip: [10, 0, 0, 3], for: [10, 0, 0, 1]))
        var reply: [UInt8]? = nil
        let deadline = Date().addingTimeInterval(5)
        while reply == nil, Date() < deadline {
            let received = try client.receive(timeoutMilliseconds: 2_000).frame
            if received.count >= 42, Array(received[12..<14]) == [0x08, 0x06], received[21] == 2 { reply = received }
        }
        let answer = try XCTUnwrap(reply, "blue-a answered the guest's ARP request")
        XCTAssertEqual(Array(answer[0..<6]), Self.blueVM, "the reply is addressed to the guest")
        XCTAssertEqual(Array(answer[22..<28]), Self.blueA, "blue-a's MAC, not red-a's (same address)")

        // Lies: red's MAC as the source, an address that is not the port's, a frame straight to
        // red's vm MAC (unknown in blue's segment: flooded in blue only).
        for _ in 0..<5 {
            try client.send(Self.udp(from: Self.redVM, to: Self.blueA, sourceIP: [10, 0, 0, 3], destinationIP: [10, 0, 0, 1]))
            try client.send(Self.udp(from: Self.blueVM, to: Self.blueA, sourceIP: [10, 0, 0, 99], destinationIP: [10, 0, 0, 1]))
            try client.send(Self.udp(from: Self.blueVM, to: Self.redVM, sourceIP: [10, 0, 0, 3], destinationIP: [10, 0, 0, 2]))
            client.reclaimTransmitted()
            Thread.sleep(forTimeInterval: 0.02)
        }
        try BlockHost.waitFor("the drops counted on blue/vm", timeout: 5) {
            let drops = (try? daemon.portStatus(tenant: "blue", port: "vm", fresh: false))?["drops"] as? [String: Any]
            return ((drops?["source-mac-spoofed"] as? NSNumber)?.intValue ?? 0) >= 5
                && ((drops?["source-ip-spoofed"] as? NSNumber)?.intValue ?? 0) >= 5
        }
        XCTAssertEqual(try spoofedIntoBlue.stop(), 0, "spoofed frames were dropped at the port")
        XCTAssertEqual(try intoRed.map { try $0.stop() }, [0, 0], "nothing of blue's guest reached red")
        XCTAssertEqual(daemon.stop(), 0, daemon.output)
    }

    /// blue's socket lets in a process of blue's uid (its VMM, unprivileged) and refuses red's.
    func testOnlyTheTenantsOwnUidReachesItsPort() throws {
        let daemon = try daemonWithVMPorts()
        let socket = daemon.stateDirectory + "/tenants/blue/net/vm.sock"
        func connect(as uid: UInt32) throws -> Host.Result {
            try Host.run(["python3", "-c", """
                import os, socket
                os.setgroups([]); os.setgid(\(uid)); os.setuid(\(uid))
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect("\(socket)"); print("connected")
                except OSError as e:
                    print("refused", e.errno)
                """])
        }
        let blue = try BlockHost.jailUid(stateDirectory: daemon.stateDirectory, tenant: "blue")
        let red = try BlockHost.jailUid(stateDirectory: daemon.stateDirectory, tenant: "red")
        XCTAssertEqual(try connect(as: blue).output.trimmingCharacters(in: .whitespacesAndNewlines), "connected")
        XCTAssertEqual(try connect(as: red).output.trimmingCharacters(in: .whitespacesAndNewlines), "refused \(EACCES)")
        XCTAssertEqual(try connect(as: 65534).output.trimmingCharacters(in: .whitespacesAndNewlines), "refused \(EACCES)",
                       "nobody")
        XCTAssertEqual(try BlockHost.owner(daemon.stateDirectory + "/status.json").mode, 0o600,
                       "the state directory can be passed through: the status file is root's alone")
        XCTAssertEqual(daemon.stop(), 0, daemon.output)
    }

    func testHostileRingsAndAKickStormCostTheSwitchNothing() throws {
        let daemon = try daemonWithVMPorts()
        let switchPID = try XCTUnwrap(SwitchHost.switches(of: daemon, tenant: "blue").first)
        let client = try NetClient(socket: daemon.stateDirectory + "/tenants/blue/net/vm.sock")
        client.postReceiveBuffers()

        // Hostile transmit chains: a descriptor outside guest memory, a writable descriptor,
        // an 80 KB frame made of one page aliased, a loop through an indirect table that is not
        // in memory. Each costs the guest its frame, counted by the device; the next good frame passes.
        let slot = try XCTUnwrap(client.transmitSlot(slot: 0))
        let hostile: [[VirtqueueDriver.Buffer]] = [
            [.init(address: 0x10, length: 1500, writable: false)],
            [.init(address: slot.address, length: 1500, writable: true)],
            Array(repeating: .init(address: slot.address, length: 4096, writable: false), count: 20),
            [.init(address: 0xFFFF_FFFF_0000, length: 16 * 8, writable: false, indirect: true)],
        ]
        for chain in hostile {
            _ = try client.add(transmit: true, chain)
            client.kick(force: true)
        }
        // blue-b must still get the guest's good frames.
        let capture = try Capture(namespace: ns("blue", "b"), interface: ifname("blue", "b"), filter: "ether src 02:00:00:00:01:03 and udp")
        for _ in 0..<5 {
            try client.send(Self.udp(from: Self.blueVM, to: [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], sourceIP: [10, 0, 0, 3],
                                     destinationIP: [10, 0, 0, 255]))
            Thread.sleep(forTimeInterval: 0.02)
            client.reclaimTransmitted()
        }
        Thread.sleep(forTimeInterval: 0.5)
        XCTAssertEqual(try capture.stop(), 5, "the guest's good frames after its hostile ones reach blue-b")

        // A kick storm: the guest kicks as fast as it can with nothing in its ring.
        let kick = client.kickDescriptor(transmit: true)
        let before = BlockHost.cpuSeconds(of: switchPID)
        let end = Date().addingTimeInterval(2)
        var kicks = 0
        while Date() < end {
            for _ in 0..<1000 { _ = EventCounter.signal(kick) }
            kicks += 1000
        }
        let spent = BlockHost.cpuSeconds(of: switchPID) - before
        print("kick storm: \(kicks) kicks in 2 s, the switch spent \(spent) s of CPU")
        XCTAssertLessThan(spent, 0.5, "a kick storm must not cost the switch a core (\(kicks) kicks in 2 s)")

        // Everything else keeps working, in the same switch process.
        XCTAssertEqual(SwitchHost.switches(of: daemon, tenant: "blue"), [switchPID], "the switch survived:\n\(daemon.output)")
        for tenant in ["blue", "red"] {
            let ping = try Host.inNamespace(ns(tenant, "a"), ["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.0.0.2"])
            XCTAssertEqual(ping.status, 0, "\(tenant): \(ping.output)")
        }
        XCTAssertEqual(daemon.stop(), 0, daemon.output)
    }
}
