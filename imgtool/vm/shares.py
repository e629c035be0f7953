"""Shared folders (virtio-fs) as data: the share a user types, and the argv of virtiofsd and QEMU (pure module).

A share is HOST_DIR:GUEST_PATH[:ro]. Each runs one virtiofsd (QEMU 7.2's, /usr/lib/qemu/virtiofsd) on
a unix socket in the VM's private folder; QEMU reaches it through a `vhost-user-fs-pci` device, and
the guest mounts it by tag (`mount -t virtiofs TAG PATH`). virtio-fs needs the guest RAM on a shared
memory backend: `memory_argv` replaces nothing in imgtool.tools.qemu's argv, it adds the backend and
a NUMA node using it, for the same `-m` size.

Why virtiofsd is started through `unshare ... sh -c SCRIPT`: this virtiofsd has no read-only option
(`-o ro` and `-o readonly` are refused as unknown), so a read-only share is enforced on the host by
giving virtiofsd a private mount namespace in which the shared folder is a read-only bind mount
before it starts: every write the guest asks for fails with EROFS there, whatever the guest mounts
it as, and the host's mount table is untouched. virtiofsd's own sandbox (`-o sandbox=namespace`:
mount, pid and net namespaces, pivot_root into the folder, capabilities dropped) needs
CAP_SYS_ADMIN; run by a user other than root it gets it inside a user namespace of its own
(`--user --map-root-user`), so files it creates belong to that user on the host. As root no user
namespace is used: it would leave virtiofsd unable to override permissions on files of other users.

The listening socket is made by imgtool and handed over with `--fd`: virtiofsd's own `--socket-path`
writes a pid file under /run/virtiofsd, which only root may, and QEMU can connect as soon as the
socket exists instead of racing virtiofsd's start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from imgtool.errors import InvalidArgument
from imgtool.tools.qemu import escape
from imgtool.vocab import MAX_SOCKET_PATH

VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
MEMORY_ID = "mem0"  # the shared RAM backend's id
MAX_TAG = 36  # bytes of the virtio-fs config space's tag field
# Top-level folders a share must not hide in the guest: mounting over them breaks the system.
SYSTEM_PATHS = frozenset({"/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
                          "/root", "/run", "/sbin", "/sys", "/tmp", "/usr", "/var"})
_GUEST_PATH = re.compile(r"/[A-Za-z0-9._@+-]+(?:/[A-Za-z0-9._@+-]+)*")
RULE = "HOST_DIR:GUEST_PATH or HOST_DIR:GUEST_PATH:ro, e.g. ./src:/srv/src:ro"

# $1: ro|rw, $2: the folder; the rest is virtiofsd's argv. The bind mount happens in the namespace
# unshare made for this process only.
WRAPPER = 'if [ "$1" = ro ]; then mount --bind -o ro -- "$2" "$2" || exit 1; fi; shift 2; exec "$@"'


@dataclass(frozen=True)
class Share:
    """One shared folder: `host` is absolute (resolved by imgtool.vm.share_check before use)."""

    host: Path
    guest: str
    readonly: bool = False

    def __str__(self) -> str:
        return f"{self.host}:{self.guest}{':ro' if self.readonly else ''}"


def parse_share(text: str, *, base: Path) -> Share:
    """HOST_DIR:GUEST_PATH[:ro|:rw] -> a Share; a relative HOST_DIR is taken from `base`.

    The last colon (after an optional :ro/:rw) separates the guest path, so a host path may hold colons.
    """
    body, readonly = text, False
    for suffix, mode in ((":ro", True), (":rw", False)):
        if body.endswith(suffix):
            body, readonly = body[: -len(suffix)], mode
            break
    host, sep, guest = body.rpartition(":")
    if not sep or not host or not guest:
        raise InvalidArgument(f"share '{text}' is not {RULE}", hint="give the host folder and where the guest sees it")
    if "\0" in host or "\n" in host:
        raise InvalidArgument(f"share '{text}': the host path holds a NUL or newline", hint="rename the folder")
    return Share(base / host if not Path(host).is_absolute() else Path(host), check_guest_path(guest), readonly)


def check_guest_path(guest: str) -> str:
    """An absolute, normalized guest path a mount table can hold, not hiding a system folder."""
    if not _GUEST_PATH.fullmatch(guest) or any(part in (".", "..") for part in guest.split("/")):
        raise InvalidArgument(f"guest path '{guest}' is not a plain absolute path",
                              hint="use letters, digits and . _ @ + - between slashes, e.g. /srv/src")
    if str(PurePosixPath(guest)) in SYSTEM_PATHS:
        raise InvalidArgument(f"guest path '{guest}' would hide a system folder of the guest",
                              hint="mount below it instead, e.g. /srv/share or /mnt/share")
    return guest


def check_shares(shares: tuple[Share, ...]) -> tuple[Share, ...]:
    """No guest path twice, none inside another (the second mount would hide or be hidden)."""
    for i, one in enumerate(shares):
        for other in shares[i + 1 :]:
            a, b = PurePosixPath(one.guest), PurePosixPath(other.guest)
            if a == b or a.is_relative_to(b) or b.is_relative_to(a):
                raise InvalidArgument(f"shares '{one}' and '{other}' mount at overlapping guest paths",
                                      hint="give each share its own guest folder, side by side")
    return shares


TAG_PREFIX = "imgtool:"


def tag(index: int) -> str:
    """The virtio-fs tag of a VM's share number `index` (its position in the VM record).

    Why the colon: cloud-init's `mounts` (22.4, Debian 12's) drops an entry whose device is neither a
    path, a block device it can find, nor `HOST:PATH` (its test for a network file system), so a
    plain tag such as `share0` never reaches fstab; `imgtool:share0` passes as a network source and
    the guest's mount takes it as the tag, byte for byte.
    """
    return f"{TAG_PREFIX}share{index}"


def virtiofsd_argv(share: Share, *, fd: int, unprivileged: bool, virtiofsd: str = VIRTIOFSD) -> list[str]:
    """The command that serves `share` on the listening socket `fd` (see the module docstring)."""
    namespaces = ["--user", "--map-root-user"] if unprivileged else []
    return [
        "unshare", *namespaces, "--mount", "--propagation", "private", "--",
        "sh", "-c", WRAPPER, "sh", "ro" if share.readonly else "rw", str(share.host),
        virtiofsd,
        f"--fd={fd}",
        "-o", f"source={share.host}",
        "-o", "sandbox=namespace",
        "-o", "cache=auto",
        "-o", "log_level=warn",
    ]  # fmt: skip


def memory_argv(memory_mib: int) -> list[str]:
    """Guest RAM on a shared memfd, which vhost-user devices need to reach it (same size as `-m`)."""
    return [
        "-object", f"memory-backend-memfd,id={MEMORY_ID},size={memory_mib}M,share=on",
        "-numa", f"node,memdev={MEMORY_ID}",
    ]  # fmt: skip


def device_argv(index: int, socket: Path) -> list[str]:
    """The chardev and vhost-user-fs device of share number `index`, whose virtiofsd listens on `socket`."""
    if len(str(socket).encode()) > MAX_SOCKET_PATH or "\n" in str(socket):
        raise InvalidArgument(f"share socket path {socket} is longer than {MAX_SOCKET_PATH} bytes or holds a newline",
                              hint="use a shorter --home or TMPDIR")
    if len(tag(index).encode()) > MAX_TAG:
        raise InvalidArgument(f"too many shares ({index + 1})", hint="share fewer folders")
    return [
        "-chardev", f"socket,id=fs{index},path={escape(socket)}",
        "-device", f"vhost-user-fs-pci,chardev=fs{index},tag={tag(index)}",
    ]  # fmt: skip


def mount_command(index: int, share: Share) -> str:
    """The one command that mounts share `index` in a guest (for specialized images: vm show prints it)."""
    options = " -o ro" if share.readonly else ""
    return f"sudo mkdir -p {share.guest} && sudo mount -t virtiofs{options} {tag(index)} {share.guest}"


def cloud_init_mount(index: int, share: Share) -> list[str]:
    """Share `index` as a cloud-init `mounts` entry (fstab fields) for generalized images' seeds.

    nofail: a guest without virtiofs support still boots; ro as well in the guest, so writes fail
    at once there rather than at the host.
    """
    options = "defaults,nofail" + (",ro" if share.readonly else "")
    return [tag(index), share.guest, "virtiofs", options, "0", "0"]
