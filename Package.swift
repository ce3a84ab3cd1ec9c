// swift-tools-version:6.1
import PackageDescription

// libnl's headers live under /usr/include/libnl3 on Debian.
let libnlInclude: [CSetting] = [.unsafeFlags(["-I/usr/include/libnl3"])]

let package = Package(
    name: "Bulkhead",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "bulkhead", targets: ["bulkhead"]),
        .executable(name: "bulkhead-vmm", targets: ["bulkhead-vmm"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        // The management API's server (Hummingbird) and `bulkhead ctl`'s client (SwiftNIO's HTTP/1.1).
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
        // The fleet agent's etcd client (etcd's JSON gRPC gateway).
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
    ],
    targets: [
        // C shims: constants, struct mirrors and wrappers Swift cannot import directly.
        .target(name: "CLinux"),
        .target(name: "CURing", linkerSettings: [.linkedLibrary("uring")]),
        .target(name: "CKVM"),
        // SHA-256 from the system's libcrypto: the partition's measured launch.
        .target(name: "CDigest", linkerSettings: [.linkedLibrary("crypto")]),
        .target(name: "CNetlink", cSettings: libnlInclude,
                linkerSettings: [.linkedLibrary("nl-route-3"), .linkedLibrary("nl-3")]),

        // The only Swift modules that make syscalls.
        .target(name: "HostOS", dependencies: ["CLinux"]),
        .target(name: "URing", dependencies: ["CURing", "HostOS"]),
        .target(name: "Netlink", dependencies: ["CNetlink", "HostOS", "Config"]),
        // The KVM API: the host's capabilities, VMs, memory slots, vCPUs (the partitions' VMM).
        .target(name: "KVM", dependencies: ["CKVM", "HostOS"]),
        // The partition VMM: guest memory, vCPU threads, boot loaders, and the device models
        // wired to KVM (exits, ioeventfd, irqfd) and to their vhost-user backends.
        .target(name: "VMM", dependencies: ["KVM", "Devices", "VhostUser", "Virtio", "HostOS",
                                                  .product(name: "Logging", package: "swift-log")]),

        // Pure Swift, no syscalls: fuzzable.
        .target(name: "Virtio"),
        .target(name: "Config"),
        // The fleet map's records and each tenant switch's view of it (pure: built from etcd's records).
        .target(name: "FleetModel", dependencies: ["Config"]),
        // The fleet agent: this host's records in etcd under a lease, and the fleet map watched from it.
        .target(name: "Fleet", dependencies: [
            "Config", "FleetModel",
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The VMM's device models (PCI, virtio-pci, serial, i8042): pure state machines, fuzzable.
        .target(name: "Devices", dependencies: ["Virtio"]),
        // Token buckets, shared by the switch's rate limits and the block backend's QoS.
        .target(name: "Metering"),
        .target(name: "Switch", dependencies: ["Virtio", "Config", "Metering", "FleetModel"]),

        // vhost-user protocol: message codec, backend server, frontend client.
        .target(name: "VhostUser", dependencies: ["Virtio", "HostOS", "Metering", .product(name: "Logging", package: "swift-log")]),

        // A vhost-user-blk frontend with its own test guest: drives the backend in tests and benchmarks.
        .target(name: "BlockClient", dependencies: ["VhostUser", "Virtio", "HostOS"]),

        // virtio-net over vhost-user: the device a vhost-user port is, served by the switch's workers.
        .target(name: "VhostNet", dependencies: ["VhostUser", "Virtio", "HostOS", .product(name: "Logging", package: "swift-log")]),
        // A vhost-user-net frontend with its own test guest: drives a VhostNet device in tests and benchmarks.
        .target(name: "NetClient", dependencies: ["VhostUser", "Virtio", "HostOS"]),

        // Block backend: tenant-confined volumes, io_uring engine, virtio-blk over vhost-user.
        .target(name: "Block", dependencies: [
            "Config", "Virtio", "VhostUser", "HostOS", "URing", "Metering",
            .product(name: "Logging", package: "swift-log"),
        ]),

        // The switch's port drivers and engine loop (io_uring; TAP and vhost-user-net ports).
        .target(name: "SwitchEngine", dependencies: [
            "Switch", "Config", "FleetModel", "Virtio", "HostOS", "URing", "Netlink", "VhostNet",
            .product(name: "Logging", package: "swift-log"),
        ]),

        // One partition's process: the VMM, its measured launch and its jail. Loads no
        // Foundation (nor ICU): its memory and start-up are paid per partition.
        .target(name: "PartitionProcess", dependencies: ["CDigest", "Config", "HostOS", "KVM", "VMM",
                                                         .product(name: "Logging", package: "swift-log")]),
        // The tamper-evident audit log: a SHA-256 hash chain of JSON lines, its head beside it.
        // The record codec and the verifier are pure (fuzzed); AuditLog writes through HostOS.
        .target(name: "Audit", dependencies: ["CDigest", "HostOS"]),
        // Linked with the Swift runtime inside (-static-stdlib): fewer mappings and relocations per
        // partition (measured with Benchmarks/run-system.sh --partition-only: less Rss, earlier start).
        .executableTarget(name: "bulkhead-vmm", dependencies: ["PartitionProcess"],
                          linkerSettings: [.unsafeFlags(["-static-stdlib"])]),

        // The management API's requests, answers and authorization: pure, fuzzed (Fuzz/APIFuzz).
        .target(name: "ManagementModel", dependencies: ["Config", "FleetModel", "Switch"]),
        // The management API's server on the control socket (Hummingbird) and its client.
        .target(name: "Management", dependencies: [
            "ManagementModel", "Config", "Switch", "HostOS",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        // The Prometheus endpoint: the daemon's counters as text exposition, served over loopback or a Unix socket.
        .target(name: "Observability", dependencies: [
            "Config", "Switch", "HostOS",
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HummingbirdCore", package: "hummingbird"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Logging", package: "swift-log"),
        ]),

        .executableTarget(name: "bulkhead", dependencies: [
            "Fleet", "FleetModel", "Config", "ManagementModel", "Management", "Switch", "SwitchEngine", "HostOS", "Netlink", "Block", "VhostUser",
            "VhostNet", "VMM", "PartitionProcess", "URing", "Audit", "Observability",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "UnixSignals", package: "swift-service-lifecycle"),
        ]),

        .testTarget(name: "ConfigTests", dependencies: ["Config", "FleetModel"]),
        .testTarget(name: "FleetTests", dependencies: ["Fleet", "FleetModel", "Config",
                                                     .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "AuditTests", dependencies: ["Audit", "HostOS"]),
        .testTarget(name: "ManagementTests", dependencies: ["ManagementModel", "Management", "Config", "Switch", "HostOS",
                                                          .product(name: "Logging", package: "swift-log"),
                                                          .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")]),
        .testTarget(name: "ObservabilityTests", dependencies: ["Observability", "Switch",
                                                             .product(name: "Logging", package: "swift-log"),
                                                             .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")]),
        // bulkhead-vmm's command line.
        .testTarget(name: "PartitionProcessTests", dependencies: ["PartitionProcess"]),
        .testTarget(name: "SwitchTests", dependencies: ["Switch", "Config", "Virtio", "Metering", "FleetModel"]),
        .testTarget(name: "HostOSTests", dependencies: ["HostOS", "URing", "Netlink"]),
        .testTarget(name: "VirtioTests", dependencies: ["Virtio"]),
        .testTarget(name: "KVMTests", dependencies: ["KVM", "HostOS"]),
        .testTarget(name: "VMMTests", dependencies: ["VMM", "KVM", "Devices", "HostOS", "Virtio"]),
        // PCI bus, virtio-pci transport and MSI-X models in memory.
        .testTarget(name: "DevicesTests", dependencies: ["Devices", "Virtio"]),
        // The virtio-pci <-> vhost-user glue against the real block server and a vhost-user-net port.
        .testTarget(name: "VMMDeviceTests", dependencies: ["VMM", "Devices", "KVM", "Block", "Config", "VhostUser",
                                                           "VhostNet", "Virtio", "HostOS",
                                                           .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "VhostUserTests", dependencies: ["VhostUser", "Virtio", "HostOS"]),
        .testTarget(name: "BlockTests", dependencies: ["Block", "BlockClient", "VhostUser", "Virtio", "HostOS", "Config",
                                                     .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "VhostNetTests", dependencies: ["VhostNet", "NetClient", "VhostUser", "Virtio", "HostOS",
                                                        .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "IntegrationTests", dependencies: ["Config", "bulkhead", "BlockClient", "NetClient", "Virtio", "HostOS",
                                                             "Switch", "SwitchEngine", "FleetModel", "URing",
                                                             .product(name: "Logging", package: "swift-log")]),

        .executableTarget(
            name: "SwitchBenchmarks",
            dependencies: ["Switch", "Config", .product(name: "Benchmark", package: "benchmark")],
            path: "Benchmarks/SwitchBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "BlockBenchmarks",
            dependencies: ["Virtio", .product(name: "Benchmark", package: "benchmark")],
            path: "Benchmarks/BlockBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        // Closed-loop random I/O through a vhost-user-blk socket (Benchmarks/run-system.sh's block part).
        // Frames per second through a vhost-user-net socket (Benchmarks/lib/vhost.sh).
        .executableTarget(name: "NetLoad", dependencies: ["NetClient", "Virtio", "HostOS", .product(name: "ArgumentParser", package: "swift-argument-parser")], path: "Benchmarks/NetLoad"),
        // A standalone vhost-user-net port looped to a TAP device: NetLoad's and testpmd's peer
        // where the switch does not serve the socket (Benchmarks/lib/vhost.sh).
        .executableTarget(name: "VhostTapLoop", dependencies: ["VhostNet", "VhostUser", "Virtio", "HostOS", .product(name: "ArgumentParser", package: "swift-argument-parser"), .product(name: "Logging", package: "swift-log")], path: "Benchmarks/VhostTapLoop"),
        .executableTarget(name: "BlockLoad", dependencies: ["BlockClient", "Virtio", "HostOS", .product(name: "ArgumentParser", package: "swift-argument-parser")], path: "Benchmarks/BlockLoad"),
    ],
    swiftLanguageModes: [.v6]
)
