import Testing
@testable import Config

/// What an apply changes: the difference between two configurations, in the units the daemon
/// restarts.
@Suite struct DifferenceTests {
    private func demo() throws -> HostConfiguration {
        try HostConfiguration.load(contentsOf: repositoryFile("configs/demo.json"))
    }

    @Test func theSameConfigurationChangesNothing() throws {
        let configuration = try demo()
        let difference = ConfigurationDifference(from: configuration, to: configuration)
        #expect(difference.isEmpty)
        #expect(difference.summary.isEmpty)
    }

    @Test func aChangeToOneTenantTouchesOnlyThatTenant() throws {
        let old = try demo()
        var new = old
        // blue: a port's address changes, a volume grows; red is untouched.
        new.tenants[0].ports[1].ips = [try #require(IPPrefix("10.0.0.9/24"))]
        new.tenants[0].volumes[0].sizeBytes *= 2
        let difference = ConfigurationDifference(from: old, to: new)
        #expect(difference.changedTenants.keys.sorted() == ["blue"])
        let blue = try #require(difference.changedTenants["blue"])
        #expect(blue.switchChanged)
        #expect(blue.tapPortsDown == ["b"] && blue.tapPortsUp == ["b"], "only the changed TAP port is set up again")
        #expect(blue.vhostUserPortsDown.isEmpty && blue.vhostUserPortsUp.isEmpty)
        #expect(blue.blockServerChanged)
        #expect(blue.partitionsChanged.isEmpty && blue.partitionsAdded.isEmpty && blue.partitionsRemoved.isEmpty)
        #expect(difference.addedTenants.isEmpty && difference.removedTenants.isEmpty && difference.needsRestart.isEmpty)
    }

    @Test func anACLChangeRestartsTheSwitchButSetsUpNoPort() throws {
        let old = try demo()
        var new = old
        new.tenants[1].acl = []
        let red = try #require(ConfigurationDifference(from: old, to: new).changedTenants["red"])
        #expect(red.switchChanged && red.tapPortsUp.isEmpty && red.tapPortsDown.isEmpty && !red.blockServerChanged)
    }

    @Test func anMTUChangeSetsUpThePortsOfThatSegmentAgain() throws {
        let old = try demo()
        var new = old
        new.tenants[0].segments[0].mtu = 9000
        let blue = try #require(ConfigurationDifference(from: old, to: new).changedTenants["blue"])
        #expect(blue.tapPortsUp == ["a", "b"] && blue.vhostUserPortsUp == ["vm"])
    }

    @Test func partitionsAddedRemovedAndChanged() throws {
        let old = try demo()
        var new = old
        new.tenants[0].partitions[0].cmdline = "blk"
        new.tenants[1].partitions = []
        let difference = ConfigurationDifference(from: old, to: new)
        #expect(difference.changedTenants["blue"]?.partitionsChanged == ["guest"])
        #expect(difference.changedTenants["red"]?.partitionsRemoved == ["guest"])
        #expect(difference.changedTenants["blue"]?.switchChanged == false)
    }

    @Test func tenantsAddedAndRemoved() throws {
        let old = try demo()
        var new = old
        new.tenants[1].id = "green"
        let difference = ConfigurationDifference(from: old, to: new)
        #expect(difference.addedTenants == ["green"] && difference.removedTenants == ["red"])
        #expect(difference.changedTenants.isEmpty)
    }

    @Test func whatTheDaemonCannotChangeWhileItRunsIsNamed() throws {
        let old = try demo()
        var new = old
        new.host.stateDirectory = "/var/lib/elsewhere"
        new.host.switchSettings.workers = 3
        new.host.auditLog = "/var/log/other.log"
        let difference = ConfigurationDifference(from: old, to: new)
        // The control socket's default path is inside the state directory: it moves too.
        #expect(difference.needsRestart.map(\.path) == ["$.host.stateDirectory", "$.host.switch", "$.host.controlSocket",
                                                         "$.host.auditLog"])
        #expect(!difference.isEmpty)
    }

    @Test func principalsAndLimitsChangeWithoutRestartingAnything() throws {
        let old = try demo()
        var new = old
        new.principals.append(Principal(name: "audit", uid: 4242, role: .auditor))
        new.host.limits.services.switch = ResourceLimits(memoryMiB: 512)
        let difference = ConfigurationDifference(from: old, to: new)
        #expect(difference.principalsChanged && difference.hostLimitsChanged)
        #expect(difference.changedTenants.isEmpty && difference.needsRestart.isEmpty)
    }

    @Test func limitsResolveFromTheHostDefaults() throws {
        var configuration = try demo()
        configuration.host.limits = HostLimits(services: ServiceLimits(switch: ResourceLimits(memoryMiB: 256, pids: 64)),
                                               partitions: ResourceLimits(cpuWeight: 50), partitionOverheadMiB: 32)
        configuration.tenants[0].limits = ServiceLimits(switch: ResourceLimits(memoryMiB: 128))
        #expect(configuration.switchLimits(of: configuration.tenants[0]) == ResourceLimits(memoryMiB: 128, pids: 64))
        #expect(configuration.switchLimits(of: configuration.tenants[1]) == ResourceLimits(memoryMiB: 256, pids: 64))
        let partition = configuration.tenants[0].partitions[0]
        #expect(configuration.limits(of: partition) == ResourceLimits(memoryMiB: 64 + 32, cpuWeight: 50))
    }
}
