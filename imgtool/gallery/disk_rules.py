"""The rules of which disks a version gets, written once: publish follows them, its --help shows them (pure)."""

DATA_DISK_RULES = """\
Which disks a version gets (never a silent drop or swap):
- --os-disk vm:NAME, snapshot:VM/SNAP or G/D@X.Y.Z brings the source's data disks
  too, at their LUNs. Add :os (vm:NAME:os) to take its OS disk alone.
- A disk file or blake3:DIGEST is one disk.
- --data-disk LUN=SOURCE adds a disk at LUN. A multi-disk SOURCE gives its data
  disk at the same LUN (0=vm:web is web's LUN 0, never its OS disk), or the one
  selected: 0=vm:web:2, 0=snapshot:web/s1:2, 0=G/D@1.0.0:2, 0=vm:web:os.
- A --data-disk at a LUN the OS disk's source already brings is refused, unless
  --replace-data-disks says that the given disk replaces the source's."""
