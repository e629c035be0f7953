"""The closed sets of imgtool's vocabulary, each defined once (pure module).

Members are strings (StrEnum), so records and JSON keep plain values and comparisons with what a user
typed work unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class DiskFormat(StrEnum):
    """Image formats imgtool captures (qemu-img names; vpc is VHD)."""

    RAW = "raw"
    QCOW2 = "qcow2"
    VMDK = "vmdk"
    VPC = "vpc"
    VHDX = "vhdx"


class Architecture(StrEnum):
    X86_64 = "x86_64"
    AARCH64 = "aarch64"


class Firmware(StrEnum):
    BIOS = "bios"
    UEFI = "uefi"


class OsType(StrEnum):
    LINUX = "linux"
    WINDOWS = "windows"


class OsState(StrEnum):
    GENERALIZED = "generalized"
    SPECIALIZED = "specialized"


def values(enum: type[StrEnum]) -> tuple[str, ...]:
    return tuple(member.value for member in enum)


# sun_path holds 108 bytes including the terminating NUL: the longest unix socket path any tool accepts.
MAX_SOCKET_PATH = 107


class TrustPolicy(StrEnum):
    """A remote's trust policy (imgtool.trust.policy says what each means)."""

    SIGNED = "signed"
    ANY = "any"
    UNSET = "unset"


class RemoteKind(StrEnum):
    REGISTRY = "registry"
    LAYOUT = "oci-layout"


class ReplicationState(StrEnum):
    """A version's state at one replication target (docs/STORE-FORMAT.md, Home files)."""

    PENDING = "pending"
    REPLICATING = "replicating"
    COMPLETED = "completed"
    FAILED = "failed"


class PushStatus(StrEnum):
    """What a push did with one version."""

    PUSHED = "pushed"
    PRESENT = "present"  # the remote had this manifest already
    UPDATED = "updated"  # the tag named other bytes of the same version (its revocation or check changed)


class PullStatus(StrEnum):
    """What a pull did with one version (`skipped` and `failed` only in `pull --all`'s outcomes)."""

    PULLED = "pulled"
    PRESENT = "present"
    SKIPPED = "skipped"
    FAILED = "failed"


class SourceKind(StrEnum):
    """What a capture or publish source names (imgtool.capture.sources)."""

    FILE = "file"
    DIGEST = "digest"
    VERSION = "version"
    VM = "vm"
    SNAPSHOT = "snapshot"
