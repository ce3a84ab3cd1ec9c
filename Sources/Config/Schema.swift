/// The keys each object of the configuration document allows and requires.
///
/// The decoder reads objects only through this table (unknown and missing keys are reported from
/// it), and a test compares it with `configs/bulkhead.schema.json`, so the two cannot drift.
public enum ConfigurationSchema {
    /// Allowed and required keys per object type, keyed by the schema's `$defs` name.
    public static let objects: [String: (allowed: Set<String>, required: Set<String>)] = [
        "HostConfiguration": (["host", "principals", "tenants"], ["host"]),
        "HostSettings": (["stateDirectory", "controlSocket", "controlSocketGroup", "auditLog", "metrics", "limits",
                          "jailUidBase", "switch", "fleet"], ["stateDirectory"]),
        "FleetSettings": (["hostId", "underlayAddress", "underlayMTU", "etcd", "leaseSeconds"],
                          ["hostId", "underlayAddress", "etcd"]),
        "EtcdSettings": (["endpoints", "prefix", "tls"], ["endpoints"]),
        "EtcdTLS": (["caFile", "certFile", "keyFile"], ["caFile"]),
        "HostLimits": (["switch", "blockServer", "partitions", "partitionOverheadMiB"], []),
        "ServiceLimits": (["switch", "blockServer"], []),
        "ResourceLimits": (["memoryMiB", "cpuWeight", "cpuPercent", "pids"], []),
        "SwitchSettings": (["workers"], []),
        "Principal": (["name", "uid", "role", "tenant"], ["name", "uid", "role"]),
        "Tenant": (["id", "segments", "ports", "volumes", "partitions", "acl", "limits"], ["id"]),
        "Segment": (["id", "vni", "mtu", "macTable"], ["id"]),
        "MACTableSettings": (["maxEntries", "maxEntriesPerPort", "agingSeconds"], []),
        "Port": (["id", "kind", "segment", "mac", "ips", "allowedMACs", "netns", "ifname", "queues",
                  "allowDHCPClient", "dhcpServer", "router", "rateLimit", "stormControl"],
                 ["id", "segment", "mac"]),
        "RateLimit": (["bitsPerSecond", "burstBits", "packetsPerSecond", "burstPackets"], []),
        "StormControl": (["broadcastPacketsPerSecond", "multicastPacketsPerSecond"], []),
        "ACLRule": (["action", "direction", "protocol", "source", "destination", "sourcePort",
                     "destinationPort", "port"], ["action"]),
        "Volume": (["id", "sizeBytes", "readOnly", "serial", "qos"], ["id", "sizeBytes"]),
        "VolumeQoS": (["iops", "burstIOs", "bytesPerSecond", "burstBytes"], []),
        "MeasuredFile": (["path", "sha256"], ["path", "sha256"]),
        // Exactly one of "image" and "kernel" (and "initrd" only with "kernel"): checked by the
        // decoder, and by the schema's oneOf and dependentRequired.
        "Partition": (["id", "vcpus", "memoryMiB", "image", "kernel", "initrd", "cmdline", "disks", "nics",
                       "restart", "limits"],
                      ["id", "vcpus", "memoryMiB"]),
    ]
}
