"""VM records on disk: the receipt `vm.json`, written once by `vm new` (read by version delete and gc).

The receipt says what the VM stands on and how it was made: the version record it pins, the
definition as it was, its disks and bases, its seed. Runtime facts (pid, port, the QEMU command line
of the last start) live in `state.json` (imgtool/vm/state.py). The schema is in docs/STORE-FORMAT.md.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from imgtool.errors import Corrupt, NotFound
from imgtool.home import Home
from imgtool.names import check_name
from imgtool.records import Fields, JsonObject, build, check_record
from store import atomic

RECORD = "vm.json"
FORMAT = 1
_FIELDS = {"name", "created", "image", "version_digest", "os_state", "definition", "definition_record", "cpus",
           "memory_mib", "firmware", "arch", "disks", "base_disks", "seed", "qemu_argv", "generalized",
           "allowed_revoked", "forwards", "updated", "shares", "networks", "environment"}


@dataclass(frozen=True)
class VmDisk:
    lun: int | None  # None: the OS disk
    overlay: str  # file name in the VM folder
    base: str  # path of the read-only base the overlay stands on
    base_disk: str  # digest of that disk's manifest
    virtual_size: int

    @classmethod
    def from_json(cls, obj: JsonObject, what: str) -> VmDisk:
        f = Fields(obj, what)
        overlay = f.text("overlay")
        if "/" in overlay or overlay in ("", ".", ".."):
            raise Corrupt(f"{what}: overlay '{overlay}' is not a file name", hint="the record is damaged")
        return cls(f.opt_integer("lun"), overlay, f.text("base"), f.text("base_disk"), f.integer("virtual_size"))


@dataclass(frozen=True)
class SeedInfo:
    file: str
    digest: str
    instance_id: str
    hostname: str
    admin_user: str
    ssh_key: str | None  # the public key file given (its private half is used by vm ssh)

    @classmethod
    def from_json(cls, obj: JsonObject, what: str) -> SeedInfo:
        f = Fields(obj, what)
        return cls(f.text("file"), f.text("digest"), f.text("instance_id"), f.text("hostname"),
                   f.text("admin_user"), f.opt_text("ssh_key"))


@dataclass(frozen=True)
class Forward:
    """A TCP port forward: host 127.0.0.1:host -> guest port guest (besides SSH's)."""

    host: int
    guest: int

    def __str__(self) -> str:
        return f"127.0.0.1:{self.host}->{self.guest}"

    @classmethod
    def from_json(cls, obj: JsonObject, what: str) -> Forward:
        f = Fields(obj, what)
        return cls(f.integer("host"), f.integer("guest"))


@dataclass(frozen=True)
class ShareRecord:
    """A shared folder (vm new --share): the host folder as resolved when checked, where the guest mounts it."""

    host: str
    guest: str
    readonly: bool = False

    def __str__(self) -> str:
        return f"{self.host}:{self.guest}{':ro' if self.readonly else ''}"

    @classmethod
    def from_json(cls, obj: JsonObject, what: str) -> ShareRecord:
        f = Fields(obj, what)
        return cls(f.text("host"), f.text("guest"), f.flag("readonly"))


@dataclass(frozen=True)
class NetworkAttachment:
    """One NIC on an imgtool network (vm new --network): its MAC and guest address, fixed at vm new."""

    network: str
    mac: str
    address: str  # IPv4, inside the network's subnet
    prefix: int  # the subnet's prefix length, so the seed needs no network record

    @classmethod
    def from_json(cls, obj: JsonObject, what: str) -> NetworkAttachment:
        f = Fields(obj, what)
        return cls(f.text("network"), f.text("mac"), f.text("address"), f.integer("prefix"))


@dataclass(frozen=True)
class VmRecord:
    name: str
    created: str
    image: str  # GALLERY/DEFINITION@X.Y.Z as resolved
    version_digest: str  # the version record pinned (gc root)
    os_state: str
    definition: JsonObject  # the definition record as it was at vm new
    definition_record: str
    cpus: int
    memory_mib: int
    firmware: str
    arch: str
    disks: tuple[VmDisk, ...]
    seed: SeedInfo | None
    generalized: bool = False  # set by vm generalize: starting it would re-personalize it
    allowed_revoked: str | None = None  # made from a revoked version on purpose (--allow-revoked): its reason
    forwards: tuple[Forward, ...] = ()  # extra port forwards (vm new --forward)
    updated: str | None = None  # when vm update last changed vCPUs or memory
    shares: tuple[ShareRecord, ...] = ()  # virtio-fs shares, in tag order: imgtool:share0, ...
    networks: tuple[NetworkAttachment, ...] = ()  # one NIC each, after the user-mode one
    environment: JsonObject | None = None  # {"project", "settings"} when `imgtool up` made it (environment/plan)

    @property
    def base_disks(self) -> tuple[str, ...]:
        return tuple(sorted({d.base_disk for d in self.disks}))

    def disk(self, lun: int | None) -> VmDisk | None:
        return next((d for d in self.disks if d.lun == lun), None)

    def to_json(self) -> JsonObject:
        body = dataclasses.asdict(self)
        body["disks"] = [dataclasses.asdict(d) for d in self.disks]
        body["forwards"] = [dataclasses.asdict(f) for f in self.forwards]
        body["shares"] = [dataclasses.asdict(s) for s in self.shares]
        body["networks"] = [dataclasses.asdict(n) for n in self.networks]
        for late in ("allowed_revoked", "forwards", "updated", "shares", "networks", "environment"):
            if not body[late]:
                del body[late]  # absent unless set, like every field added after format 1
        return {"format": FORMAT, "kind": "vm", **body, "base_disks": list(self.base_disks)}

    @classmethod
    def from_json(cls, obj: object, what: str) -> VmRecord:
        f = Fields(check_record(obj, kind="vm", fmt=FORMAT, fields=_FIELDS, what=what), what)
        seed = f.obj_or_empty("seed")
        return build(what, lambda: cls(
            name=f.text("name"), created=f.text("created"), image=f.text("image"),
            version_digest=f.text("version_digest"), os_state=f.text("os_state"),
            definition=f.obj_or_empty("definition"), definition_record=f.text("definition_record"),
            cpus=f.integer("cpus"), memory_mib=f.integer("memory_mib"), firmware=f.text("firmware"),
            arch=f.text("arch"), disks=f.each("disks", VmDisk.from_json),
            seed=SeedInfo.from_json(seed, f"{what} seed") if seed else None,
            generalized=f.flag("generalized"), allowed_revoked=f.opt_text("allowed_revoked"),
            forwards=f.each("forwards", Forward.from_json) if "forwards" in f.obj else (),
            updated=f.opt_text("updated"),
            shares=f.each("shares", ShareRecord.from_json) if "shares" in f.obj else (),
            networks=f.each("networks", NetworkAttachment.from_json) if "networks" in f.obj else (),
            environment=f.obj_or_empty("environment") or None))


def record_path(home: Home, name: str) -> Path:
    return home.vms / name / RECORD


def vm_dir(home: Home, name: str) -> Path:
    return home.vms / check_name(name, "VM")


def load(home: Home, name: str) -> VmRecord:
    path = record_path(home, check_name(name, "VM"))
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotFound(f"VM '{name}' does not exist", hint="list VMs with imgtool vm list") from None
    except (OSError, ValueError) as exc:
        raise Corrupt(f"VM '{name}' has an unreadable record: {exc}",
                      hint=f"delete it with imgtool vm delete {name}") from None
    return VmRecord.from_json(obj, f"VM '{name}' record")


def load_records(home: Home) -> list[VmRecord]:
    """Every VM with a readable record (a half-made VM has none yet; vm list reports it)."""
    records: list[VmRecord] = []
    if not home.vms.is_dir():
        return records
    for path in sorted(home.vms.glob(f"*/{RECORD}")):
        try:
            records.append(load(home, path.parent.name))
        except (NotFound, Corrupt):
            continue
    return records


def save(home: Home, record: VmRecord) -> None:
    atomic.replace(record_path(home, record.name), json.dumps(record.to_json(), indent=2, sort_keys=True).encode())


def vms_on_network(home: Home, network: str) -> list[VmRecord]:
    """The VMs whose records give them a NIC on `network`."""
    return [r for r in load_records(home) if any(n.network == network for n in r.networks)]


def vms_using(home: Home, gallery: str, definition: str, version: str) -> list[str]:
    image = f"{gallery}/{definition}@{version}"
    return [r.name for r in load_records(home) if r.image == image]


def _raw_records(home: Home) -> list[tuple[str, JsonObject]]:
    """Every parseable vm.json, strict or not: what gc keeps must not depend on a record being tidy."""
    found: list[tuple[str, JsonObject]] = []
    for path in sorted(home.vms.glob(f"*/{RECORD}")) if home.vms.is_dir() else []:
        try:
            obj = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(obj, dict):
            found.append((path.parent.name, obj))
    return found


STREAM_LEASES = "stream-leases"  # store names holding a streaming VM's fetched chunks: <namespace>/<vm>/<disk>
STREAM = "stream.json"  # present while a VM streams a remote version (imgtool/stream): see is_streaming


def is_streaming(home: Home, name: str) -> bool:
    """Whether the VM stands on a remote version not all of whose chunks are local yet. Its record then
    pins the remote's version record, which the store does not hold; leases hold the chunks fetched."""
    return (home.vms / name / STREAM).exists()


def roots(home: Home) -> dict[str, str]:
    """gc/verify roots held by VMs: label -> version record digest (damaged records still hold theirs).
    A streaming VM has none yet: its stream's leases (names) hold what it fetched."""
    return {f"vm/{name}": obj["version_digest"] for name, obj in _raw_records(home)
            if isinstance(obj.get("version_digest"), str) and not is_streaming(home, name)}


def used_base_disks(home: Home) -> set[str]:
    """Disk digests whose bases some VM stands on (damaged records still hold theirs)."""
    used: set[str] = set()
    for _, obj in _raw_records(home):
        disks = obj.get("disks")
        for disk in disks if isinstance(disks, list) else []:
            if isinstance(disk, dict) and isinstance(disk.get("base_disk"), str):
                used.add(disk["base_disk"])
    return used
