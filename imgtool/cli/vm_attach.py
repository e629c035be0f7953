"""The parts of `vm new / update / show` about shared folders and networks."""

from pathlib import Path
from typing import Any

from imgtool.vm.record import VmRecord

SHARE_HELP = ("Share the host folder HOST_DIR with the guest at GUEST_PATH over virtio-fs, read-only with :ro "
              "(enforced on the host); repeatable.")


def parse_shares(given: list[str] | None) -> tuple[Any, ...]:
    """--share values as Shares (relative host folders from the current folder); checked later."""
    from imgtool.vm import shares

    return tuple(shares.parse_share(text, base=Path.cwd()) for text in given or [])


def attachment_fields(record: VmRecord) -> list[tuple[str, Any]]:
    """vm show's lines for shares (with the mount command a specialized guest needs) and networks."""
    from imgtool.vm import attachments

    found: list[tuple[str, Any]] = []
    for share in attachments.describe(record):
        mode = "read-only" if share["readonly"] else "read-write"
        found.append((f"share {share['tag']}", f"{share['host']} -> {share['guest']} ({mode})"))
        if record.seed is None:  # a generalized guest mounts it from its seed
            found.append(("  mount it with", share["mount_command"]))
    found += [(f"network {n.network}", f"{n.address}/{n.prefix}, MAC {n.mac}") for n in record.networks]
    if record.networks and record.seed is None:
        found.append(("  configure it with", "; ".join(
            f"sudo ip addr add {n.address}/{n.prefix} dev $(ip -o link | awk -F': ' '/{n.mac}/{{print $2}}')"
            for n in record.networks)))
    return found
