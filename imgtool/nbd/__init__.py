"""A read-only NBD server (fixed newstyle, the subset QEMU's client needs) on a Unix socket."""
