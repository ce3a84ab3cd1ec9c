/// The partition VMM: a KVM virtual machine with its guest memory, vCPU threads and device
/// models, whose virtio devices are served over vhost-user by the block servers and the switch.
/// (`bulkhead partition` runs one; the configuration calls it a partition.)
public enum VMM {}
