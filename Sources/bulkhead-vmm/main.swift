import PartitionProcess
#if canImport(Glibc)
import Glibc
#endif

// The partition VMM as a process of its own, linked without Foundation (see PartitionProcess).
do {
    switch try PartitionOptions.parse(Array(CommandLine.arguments.dropFirst())) {
    case .help:
        PartitionProcess.write(PartitionOptions.usage, to: STDOUT_FILENO)
        exit(0)
    case .run(let options):
        exit(PartitionProcess.run(options))
    }
} catch {
    PartitionProcess.write("Error: \(error)\n\(PartitionOptions.usage)", to: STDERR_FILENO)
    exit(64)
}
