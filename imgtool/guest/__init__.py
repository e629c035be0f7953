"""Guest file systems: read-only audit and generalization of a disk's root file system, never mounted.

`partitions` reads the partition table (pure), `fs` reaches a disk's bytes (qemu-storage-daemon's FUSE
export for anything but raw) and drives e2fsprogs' debugfs on a partition, `audit` reports identity that
must not be cloned, `generalize` removes it (offline through debugfs, online over SSH).
"""
