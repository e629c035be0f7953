"""The gallery model: galleries, image definitions, image versions (frozen records).

Mirrors Azure Compute Gallery's resources (see ../shared/REFERENCE.md): what can
change after creation is listed in UPDATABLE_*; everything else is fixed.
Pure module: records know how to validate and serialise themselves, nothing more.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from imgtool.clock import stamp
from imgtool.errors import Corrupt, InvalidArgument
from imgtool.gallery.lifecycle_model import BootCheck, CheckResult, Revocation
from imgtool.records import Fields, JsonObject, build, check_record
from imgtool.vocab import Architecture, DiskFormat, Firmware, OsState, OsType, values

FORMAT = 1
OS_TYPES = values(OsType)
OS_STATES = values(OsState)
FIRMWARES = values(Firmware)
ARCHITECTURES = values(Architecture)
DISK_FORMATS = values(DiskFormat)
UPDATABLE_DEFINITION = ("description", "recommended", "end_of_life", "release_notes_uri", "tags", "boot_check")
UPDATABLE_VERSION = ("exclude_from_latest", "end_of_life", "block_deletion_before_end_of_life", "check",
                     "revocation")


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise InvalidArgument(f"{what} '{value}' is not one of {', '.join(choices)}", hint=f"choose a valid {what}")
    return value


def check_date(value: str | None, what: str) -> str | None:
    """Accept YYYY-MM-DD or an ISO 8601 date-time; return it normalised."""
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"{what} '{value}' is not a date", hint="write YYYY-MM-DD") from None
    return parsed.date().isoformat() if len(value) == 10 else parsed.isoformat()


@dataclass(frozen=True)
class Range:
    min: int | None = None
    max: int | None = None

    def __post_init__(self) -> None:
        for bound in (self.min, self.max):
            if bound is not None and not 0 < bound < 2**31:
                raise InvalidArgument(f"recommended bound {bound} is out of range", hint="use a positive integer")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise InvalidArgument(f"recommended min {self.min} is above max {self.max}", hint="swap them")

    def contains(self, value: int) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self) -> str:
        low = "any" if self.min is None else str(self.min)
        high = "any" if self.max is None else str(self.max)
        return f"{low}..{high}"

    def to_json(self) -> JsonObject:
        return {"min": self.min, "max": self.max}

    @classmethod
    def from_json(cls, obj: JsonObject, what: str = "recommended range") -> Range:
        f = Fields(obj, what)
        return build(what, lambda: cls(f.opt_integer("min"), f.opt_integer("max")))


@dataclass(frozen=True)
class Gallery:
    name: str
    description: str = ""
    created: str = field(default_factory=stamp)
    updated: str | None = None

    FIELDS = frozenset({"name", "description", "created", "updated"})

    def to_json(self) -> JsonObject:
        return {"format": FORMAT, "kind": "gallery", "links": [], **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, obj: JsonObject) -> Gallery:
        what = "gallery record"
        f = Fields(check_record(obj, kind="gallery", fmt=FORMAT, fields=set(cls.FIELDS), what=what), what)
        return build(what, lambda: cls(f.text("name"), f.text_or("description", ""), f.text("created"),
                                       f.opt_text("updated")))


@dataclass(frozen=True)
class Definition:
    gallery: str
    name: str
    publisher: str
    offer: str
    sku: str
    os_type: str
    os_state: str
    firmware: str = "bios"
    architecture: str = "x86_64"
    vcpus: Range = Range()
    memory_mib: Range = Range()
    disallowed_disk_formats: tuple[str, ...] = ()
    description: str = ""
    eula: str = ""
    privacy_uri: str = ""
    release_notes_uri: str = ""
    end_of_life: str | None = None
    features: tuple[tuple[str, str], ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    created: str = field(default_factory=stamp)
    updated: str | None = None
    boot_check: BootCheck | None = None  # set: versions start pending until a boot check passes

    def __post_init__(self) -> None:
        for ident, what in ((self.publisher, "publisher"), (self.offer, "offer"), (self.sku, "sku")):
            if not ident or len(ident) > 128 or not ident.isprintable() or "/" in ident:
                raise InvalidArgument(f"{what} '{ident}' is not allowed",
                                      hint=f"{what} is required: 1-128 printable characters, no '/'")
        check_choice(self.os_type, OS_TYPES, "OS type")
        check_choice(self.os_state, OS_STATES, "OS state")
        check_choice(self.firmware, FIRMWARES, "firmware")
        check_choice(self.architecture, ARCHITECTURES, "architecture")
        if self.architecture == "aarch64" and self.firmware != "uefi":
            raise InvalidArgument("an aarch64 image boots with uefi firmware only (QEMU's virt machine has no BIOS)",
                                  hint="give --firmware uefi")
        for fmt in self.disallowed_disk_formats:
            check_choice(fmt, DISK_FORMATS, "disk format")

    @property
    def identifier(self) -> tuple[str, str, str]:
        return (self.publisher, self.offer, self.sku)

    def to_json(self) -> JsonObject:
        body = dataclasses.asdict(self)
        body["recommended"] = {"vcpus": self.vcpus.to_json(), "memory_mib": self.memory_mib.to_json()}
        del body["vcpus"], body["memory_mib"]
        body["disallowed_disk_formats"] = list(self.disallowed_disk_formats)
        body["features"] = dict(self.features)
        body["tags"] = dict(self.tags)
        # Absent rather than null when unset: records written before boot checks keep their exact bytes.
        body.pop("boot_check")
        if self.boot_check is not None:
            body["boot_check"] = self.boot_check.to_json()
        return {"format": FORMAT, "kind": "definition", "links": [], **body}

    @classmethod
    def from_json(cls, obj: JsonObject) -> Definition:
        names = {f.name for f in dataclasses.fields(cls)} - {"vcpus", "memory_mib"} | {"recommended"}
        what = "definition record"
        f = Fields(check_record(obj, kind="definition", fmt=FORMAT, fields=names, what=what), what)
        rec = Fields(f.obj_or_empty("recommended"), f"{what} recommended")
        return build(what, lambda: cls(
            gallery=f.text("gallery"), name=f.text("name"), publisher=f.text("publisher"), offer=f.text("offer"),
            sku=f.text("sku"), os_type=f.text("os_type"), os_state=f.text("os_state"),
            firmware=f.text_or("firmware", "bios"), architecture=f.text_or("architecture", "x86_64"),
            vcpus=Range.from_json(rec.obj_or_empty("vcpus"), f"{what} recommended vcpus"),
            memory_mib=Range.from_json(rec.obj_or_empty("memory_mib"), f"{what} recommended memory_mib"),
            disallowed_disk_formats=f.texts("disallowed_disk_formats"),
            description=f.text_or("description", ""), eula=f.text_or("eula", ""),
            privacy_uri=f.text_or("privacy_uri", ""), release_notes_uri=f.text_or("release_notes_uri", ""),
            end_of_life=f.opt_text("end_of_life"), features=f.text_map("features"), tags=f.text_map("tags"),
            created=f.text("created"), updated=f.opt_text("updated"),
            boot_check=BootCheck.from_json(f.obj_or_empty("boot_check"), f"{what} boot_check")
            if f.obj.get("boot_check") is not None else None))


@dataclass(frozen=True)
class Disk:
    """One disk of a version: lun None is the OS disk."""

    lun: int | None
    digest: str
    virtual_size: int
    source: JsonObject  # provenance: what it was captured from (kind, path/name, format, digests)

    def to_json(self) -> JsonObject:
        return {"lun": self.lun, "digest": self.digest, "virtual_size": self.virtual_size, "source": self.source}

    @classmethod
    def from_json(cls, obj: JsonObject, what: str = "disk") -> Disk:
        f = Fields(obj, what)
        return cls(f.opt_integer("lun"), f.text("digest"), f.integer("virtual_size"), f.obj_or_empty("source"))


@dataclass(frozen=True)
class PulledFrom:
    """Where a pulled version came from: its record's `provenance.pulled_from` (docs/STORE-FORMAT.md)."""

    remote: str
    url: str
    repository: str
    tag: str
    manifest: str  # the digest of the version's manifest on the remote
    pulled: str  # when

    def to_json(self) -> JsonObject:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: object, what: str) -> PulledFrom:
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(obj, dict) or set(obj) != set(names):
            found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise Corrupt(f"{what} must be an object with exactly {names} (found {found})",
                          hint="the record is damaged; run imgtool verify")
        f = Fields(obj, what)
        return cls(*(f.text(name) for name in names))


@dataclass(frozen=True)
class ImageVersion:
    gallery: str
    definition: str
    version: str
    os_state: str
    disks: tuple[Disk, ...]  # OS disk first, then data disks by LUN
    definition_record: str  # digest of the definition as it was when published
    published: str = field(default_factory=stamp)
    exclude_from_latest: bool = False
    end_of_life: str | None = None
    block_deletion_before_end_of_life: bool = False
    provenance: JsonObject = field(default_factory=dict)
    updated: str | None = None
    check: CheckResult | None = None  # None: its definition asked for no boot check
    revocation: Revocation | None = None
    # The guest audit made when publishing into a generalized definition (imgtool.guest.audit's shape
    # plus "source" and "allowed_identity"); absent from records that were not audited.
    audit: JsonObject | None = None

    @property
    def label(self) -> str:
        return f"{self.gallery}/{self.definition}@{self.version}"

    @property
    def check_state(self) -> str | None:
        return None if self.check is None else self.check.state

    @property
    def pulled_from(self) -> PulledFrom | None:
        """Where it was pulled from; None for a version published here."""
        value = self.provenance.get("pulled_from")
        return None if value is None else PulledFrom.from_json(value, f"version record {self.label} pulled_from")

    @property
    def os_disk(self) -> Disk:
        return self.disks[0]

    @property
    def data_disks(self) -> tuple[Disk, ...]:
        return self.disks[1:]

    def to_json(self) -> JsonObject:
        body = dataclasses.asdict(self)
        body["disks"] = [d.to_json() for d in self.disks]
        # Absent rather than null when unset: records written before these settings keep their exact bytes.
        for key, value in (("check", self.check), ("revocation", self.revocation)):
            body.pop(key)
            if value is not None:
                body[key] = value.to_json()
        if body["audit"] is None:
            del body["audit"]
        links = sorted({d.digest for d in self.disks} | {self.definition_record})
        return {"format": FORMAT, "kind": "version", "links": links, **body}

    @classmethod
    def from_json(cls, obj: JsonObject) -> ImageVersion:
        names = {f.name for f in dataclasses.fields(cls)}
        what = "version record"
        f = Fields(check_record(obj, kind="version", fmt=FORMAT, fields=names, what=what), what)
        disks = f.each("disks", Disk.from_json)
        if not disks:
            raise Corrupt(f"{what} has no disks", hint="the record is damaged; run imgtool verify")
        provenance = f.obj_or_empty("provenance")
        if "pulled_from" in provenance:  # a malformed origin is refused when the record is read, not when used
            PulledFrom.from_json(provenance["pulled_from"], f"{what} provenance.pulled_from")
        return cls(gallery=f.text("gallery"), definition=f.text("definition"), version=f.text("version"),
                   os_state=f.text("os_state"), disks=disks, definition_record=f.text("definition_record"),
                   published=f.text("published"), exclude_from_latest=f.flag("exclude_from_latest"),
                   end_of_life=f.opt_text("end_of_life"),
                   block_deletion_before_end_of_life=f.flag("block_deletion_before_end_of_life"),
                   provenance=provenance, updated=f.opt_text("updated"),
                   check=CheckResult.from_json(f.obj_or_empty("check"), f"{what} check")
                   if f.obj.get("check") is not None else None,
                   revocation=Revocation.from_json(f.obj_or_empty("revocation"), f"{what} revocation")
                   if f.obj.get("revocation") is not None else None,
                   audit=f.obj_or_empty("audit") or None)

    def updated_with(self, **changes: Any) -> ImageVersion:
        bad = set(changes) - set(UPDATABLE_VERSION)
        if bad:
            raise InvalidArgument(f"{', '.join(sorted(bad))} cannot change after publishing",
                                  hint=f"updatable: {', '.join(UPDATABLE_VERSION)}")
        return dataclasses.replace(self, updated=stamp(), **changes)
