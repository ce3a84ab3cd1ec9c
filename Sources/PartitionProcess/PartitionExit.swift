import Config
import HostOS

/// How `bulkhead-vmm` (and `bulkhead partition`) ends: its exit status tells the supervisor what the guest did, and
/// the partition's restart policy (`RestartPolicy.restarts(after:)`) decides what follows.
public enum PartitionExit {
    /// The guest powered off.
    public static let poweredOff: Int32 = 0
    /// The guest reset itself: a reboot, or a triple fault (which resets a PC).
    public static let rebooted: Int32 = 3
    /// Anything else (status 1: the VMM failed; a signal: it was killed) is a failure.

    public static func ending(_ ending: ChildProcess.Ending) -> RestartPolicy.Ending {
        switch ending {
        case .exited(status: poweredOff): .poweredOff
        case .exited(status: rebooted): .rebooted
        default: .failed
        }
    }
}
