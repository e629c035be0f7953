"""The seams to external programs: every subprocess (run), qemu-img, qemu-nbd and the NBD client, guest
reads, QMP, the accelerator probe, loopback ports, and the pure QEMU argv builder."""
