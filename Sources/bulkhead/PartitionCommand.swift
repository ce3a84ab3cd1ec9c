import ArgumentParser
import Foundation
import HostOS
#if canImport(Glibc)
import Glibc
#endif

/// `bulkhead partition`: runs one partition by replacing this process with `bulkhead-vmm`
/// (next to this executable) and the same arguments, so there is one code path, and the
/// partition's process maps no Foundation (see `PartitionProcess`). `bulkhead run` spawns
/// `bulkhead-vmm` directly.
struct PartitionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "partition",
        abstract: "Run one partition (a KVM guest) of a tenant, with its disks and NICs served over vhost-user.",
        discussion: """
            Runs `bulkhead-vmm` with the same arguments (see `bulkhead-vmm --help`): --config, --tenant, \
            --id, --console, --connect-timeout, --no-jail, --log-level, --stop-when-stdin-closes. \
            Exit status: 0 when the guest powered off (or SIGTERM stopped it), 3 when it reset \
            (reboot or triple fault), 1 when the partition failed.
            """)

    @Argument(parsing: .captureForPassthrough, help: "The arguments of bulkhead-vmm.")
    var arguments: [String] = []

    func run() throws {
        do {
            try ChildProcess.exec(try ChildProcess.sibling("bulkhead-vmm"), arguments: arguments)
        } catch {
            FileHandle.standardError.write(Data("bulkhead partition: cannot run bulkhead-vmm: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}
