"""A content-addressed, write-once store of chunks, manifests and names.

It knows nothing of galleries, VMs or QEMU: it stores bytes and manifests by
BLAKE3 digest, keeps atomically-updated names, and collects garbage from the
roots it is given.
"""
