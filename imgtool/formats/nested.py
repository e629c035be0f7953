"""Images nested in guest data: a disk whose content is itself an image file.

A container (qcow2, VMDK, ...) that is clean on the outside can carry, as its
guest data, another image header: a VMDK descriptor naming /etc/passwd, a
qcow2 with a backing file. qemu reading the disk with its declared format never
looks inside, but any later tool that probes formats (a converter, a
hypervisor opening the exported raw disk without a format) would follow it.
capture reads the first GUEST_PROBE bytes of every disk's guest data and runs
the same detectors on them (imgtool.formats.detect).

What counts as nested: every format the detectors know except a partition
table and an ISO 9660/UDF volume, which are what a disk normally starts with.
That is more than the peer refuses (it only checks what a LUKS container
holds, and would refuse only formats that can reference files); we refuse
every container format, since none of them is ordinary guest content and a
disk that really stores an image can be captured with allow_nested=True
(recorded in the disk's source). The partition-table sanity of raw files is
not applied to guest data: it identifies what a file is, and a guest owns its
own partition table.
"""

from __future__ import annotations

from imgtool.errors import UnsafeImage

from .detect import GUEST_CONTENT, describe, head_matches

GUEST_PROBE = 1 << 20  # the guest bytes capture reads for this check (all detectors need 36 KiB)
ALLOW_HINT = ("if the disk is meant to hold an image file, pass --allow-nested-image (to capture or "
              "publish); otherwise convert the inner image on a trusted machine first")


def nested_formats(guest_head: bytes) -> set[str]:
    """Image formats found at the start of a disk's guest data (empty for ordinary content)."""
    return head_matches(guest_head) - GUEST_CONTENT


def refuse_nested(guest_head: bytes, *, what: str, outer: str) -> None:
    """Raise UnsafeImage if the guest data of `what` (an `outer` disk) starts with an image header."""
    found = nested_formats(guest_head)
    if found:
        raise UnsafeImage(
            f"{what}: the guest data of this {outer} disk is itself a {describe(found)} image "
            "(a nested image, which a tool probing formats would open, with any file it names)",
            hint=ALLOW_HINT)
