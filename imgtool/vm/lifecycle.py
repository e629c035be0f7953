"""VMs: copy-on-write overlays over a version's bases, plus a seed for generalized images.

A VM folder `<home>/vms/<name>/` holds `vm.json` (the receipt: version digest,
definition as it was, seed digest, disks; the QEMU command line of the last
start is in `state.json`), one qcow2 overlay per disk, the NoCloud seed, a UEFI
variables copy and runtime files. `vm.json` is written last: a folder without it is an
unfinished `vm new` (or `vm delete`), which gc removes. Creating a folder is
atomic, so of two `vm new` with the same name exactly one wins.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgtool import clock
from imgtool.clock import stamp
from imgtool.errors import AlreadyExists, Corrupt, InvalidArgument, NotFound, Refused
from imgtool.gallery import lookup
from imgtool.gallery.galleries import get_definition
from imgtool.gallery.model import Definition, ImageVersion, Range
from imgtool.home import Home
from imgtool.names import DefinitionRef, check_name, parse_image_ref
from imgtool.records import JsonObject
from imgtool.tools import accel, qemu_img
from imgtool.vm import attachments, bases, options, seed
from imgtool.vm import record as vmrecord
from imgtool.vm import runtime as vmrun
from imgtool.vm import state as vmstate
from imgtool.vm.record import Forward, SeedInfo, ShareRecord, VmDisk, VmRecord, load, save, vm_dir
from imgtool.vm.shares import Share
from store import atomic
from store.lock import file_lock
from store.progress import Progress

OVERLAY_FORMAT = "qcow2"
MAX_KEY_FILE = 1 << 20  # an authorized_keys line is a few KiB at most
MAX_USER_DATA = 16 << 20  # generous for cloud-config with embedded files; bounded so /dev/zero ends


@dataclass(frozen=True)
class NewVm:
    name: str
    image: str
    cpus: int | None = None
    memory_mib: int | None = None
    hostname: str | None = None
    admin_user: str | None = None
    ssh_key: Path | None = None
    user_data: Path | None = None
    ignore_recommendations: bool = False
    disk_size: int | None = None  # grow the OS disk's overlay to this many bytes (the guest grows its fs)
    forwards: tuple[Forward, ...] = ()
    allow_revoked: bool = False  # a revoked version only on purpose; recorded in the receipt
    shares: tuple[Share, ...] = ()  # checked by attachments.check_shares before anything is made
    networks: tuple[attachments.Wanted, ...] = ()  # (network, address or None): one NIC each
    environment: JsonObject | None = None  # what `imgtool up` records on the VMs it makes


def _pick(value: int | None, rng: Range, default: int) -> int:
    if value is not None:
        return value
    if rng.min is not None and default < rng.min:
        return rng.min
    if rng.max is not None and default > rng.max:
        return rng.max
    return default


def _check_resources(req: NewVm, definition: Definition, cpus: int, memory: int) -> None:
    options.check_cpus(cpus)  # what no VM can have is refused even with --ignore-recommendations
    options.check_memory(memory)
    if req.ignore_recommendations:
        return
    if not definition.vcpus.contains(cpus):
        raise Refused(f"{cpus} vCPUs is outside the definition's recommended range {definition.vcpus.describe()}",
                      hint="choose a count in the range, or pass --ignore-recommendations")
    if not definition.memory_mib.contains(memory):
        raise Refused(f"{memory} MiB of memory is outside the recommended range {definition.memory_mib.describe()} "
                      "MiB", hint="choose a size in the range, or pass --ignore-recommendations")
    if OVERLAY_FORMAT in definition.disallowed_disk_formats:
        raise Refused(f"definition {definition.gallery}/{definition.name} disallows {OVERLAY_FORMAT} disks, "
                      "and VM disks are qcow2 overlays", hint="use another definition")


def _default_key() -> Path | None:
    for name in ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"):
        candidate = Path.home() / ".ssh" / name
        if candidate.is_file():
            return candidate
    return None


def _default_user() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        return "admin"
    return user if user.isalnum() and user.islower() and user != "root" else "admin"


def _provisioning(req: NewVm, version: ImageVersion) -> seed.Provisioning | None:
    given = [flag for flag, value in (("--hostname", req.hostname), ("--admin-user", req.admin_user),
                                      ("--ssh-key", req.ssh_key), ("--user-data", req.user_data)) if value]
    if version.os_state == "specialized":
        if given:
            raise InvalidArgument(
                f"{', '.join(given)} cannot be used: {req.image} is specialized",
                hint="a specialized image keeps the source's identity (hostname, users, keys); "
                     "publish a generalized version to provision VMs")
        return None
    key_path = _key_path(req)
    keys = (_public_key(key_path),) if key_path else ()
    user_data = _read(req.user_data, "user-data", MAX_USER_DATA) if req.user_data else None
    hostname = req.hostname or req.name.replace("_", "-").replace(".", "-")[:63]
    return seed.Provisioning(seed.new_instance_id(), hostname, req.admin_user or _default_user(), keys, user_data)


def _key_path(req: NewVm) -> Path | None:
    """The public key file, absolute: the record keeps it for vm ssh/wait, which run from any folder."""
    path = req.ssh_key or _default_key()
    return None if path is None else path.expanduser().absolute()


def _public_key(path: Path) -> str:
    """The public key in `path`; a private key (the usual slip) is refused before it goes anywhere."""
    text = _read(path, "SSH public key", MAX_KEY_FILE).strip()
    if "PRIVATE KEY" in text.partition("\n")[0]:
        raise InvalidArgument(f"{path} is a private key; a VM gets only the public half",
                              hint=f"give --ssh-key {path}.pub")
    if not text.startswith(("ssh-", "ecdsa-", "sk-")):
        raise InvalidArgument(f"{path} is not an SSH public key (it should start with ssh-ed25519, ssh-rsa, ...)",
                              hint="give a .pub file, e.g. --ssh-key ~/.ssh/id_ed25519.pub")
    return text


def _read(path: Path, what: str, limit: int) -> str:
    """A small UTF-8 text file given on the command line.

    Only a regular file of at most `limit` bytes: a FIFO would block forever and /dev/zero
    would never end. Opened without blocking and checked again after opening.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {what} {path}: {exc.strerror}", hint="check the path") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidArgument(f"{what} {path} is not a regular file",
                                  hint="pass a file (not a folder, FIFO or device)")
        data = os.read(fd, limit + 1)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {what} {path}: {exc.strerror}", hint="check the file") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise InvalidArgument(f"{what} {path} is larger than {limit} bytes", hint="pass a smaller file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"{what} {path} is not UTF-8 text", hint="pass a text file") from None


def create(home: Home, req: NewVm, *, progress: Progress | None = None) -> VmRecord:
    """Make a VM from a version. On failure nothing is left but a folder gc removes."""
    version, version_digest = lookup.get_version(home, parse_image_ref(req.image))
    definition = _definition(home, version)

    def ensure_bases() -> dict[str, Path]:
        # The first VM of a version materializes its bases (the slow part); later ones only check them.
        return {d.digest: bases.ensure(home, d.digest, progress=progress) for d in version.disks}

    return _create(home, req, version, version_digest, definition, ensure_bases)


def create_streamed(home: Home, req: NewVm, version: ImageVersion, version_digest: str, definition: Definition,
                    prepare: Callable[[Path], None]) -> VmRecord:
    """Make a VM over a version whose chunks are not all local yet (imgtool/stream). Its overlays name
    the bases the version's disks will have (nothing is read now); `prepare(folder)` writes the
    stream's own files, before the record, so the VM is never seen without them."""

    def future_bases() -> dict[str, Path]:
        return {d.digest: bases.path_for(home, d.digest) for d in version.disks}

    return _create(home, req, version, version_digest, definition, future_bases, prepare=prepare)


def _create(home: Home, req: NewVm, version: ImageVersion, version_digest: str, definition: Definition,
            base_paths_for: Callable[[], dict[str, Path]], *,
            prepare: Callable[[Path], None] | None = None) -> VmRecord:
    folder = vm_dir(home, req.name)
    if version.revocation is not None and not req.allow_revoked:
        raise Refused(f"version {version.label} is revoked: {version.revocation.reason}",
                      hint="use another version, or pass --allow-revoked (recorded on the VM)")
    cpus = _pick(req.cpus, definition.vcpus, 2)
    memory = _pick(req.memory_mib, definition.memory_mib, 512)
    _check_resources(req, definition, cpus, memory)
    options.check_forwards(req.forwards)
    _check_disk_size(req, version)
    provisioning = _provisioning(req, version)
    if provisioning is not None:
        seed.validate(provisioning)
    checked_shares = attachments.check_shares(home, req.shares)
    attachments.check_networks(home, req.networks)
    home.ensure()
    with home.store.writing(), file_lock(home.vms / f".{req.name}.lock"):
        _claim(folder, req.name)
        try:
            base_paths = base_paths_for()
            if prepare is not None:
                prepare(folder)
            record = _build(home, folder, req, version, version_digest, definition, cpus, memory, provisioning,
                            base_paths, checked_shares, future=prepare is not None)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    return record


def _check_disk_size(req: NewVm, version: ImageVersion) -> None:
    if req.disk_size is not None and req.disk_size < version.os_disk.virtual_size:
        raise InvalidArgument(f"--disk-size {req.disk_size} bytes is smaller than the image's OS disk "
                              f"({version.os_disk.virtual_size} bytes); a disk only grows",
                              hint=f"give at least {-(-version.os_disk.virtual_size // (1 << 20))}M, or omit it")


def _claim(folder: Path, name: str) -> None:
    """Create the VM's folder; the caller holds the VM's name lock.

    A folder without a record is what a killed `vm new` or `vm delete` left behind (both hold
    the name lock while the folder lacks its record, and we hold it now): it is removed and
    the name reused, so the user need not run gc first.
    """
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        if (folder / vmrecord.RECORD).exists():
            raise AlreadyExists(f"VM '{name}' already exists", hint="choose another name") from None
        shutil.rmtree(folder)
        folder.mkdir(mode=0o700)


def _definition(home: Home, version: ImageVersion) -> Definition:
    """The current definition (recommendations are updatable), else the one the version was published with."""
    try:
        return get_definition(home, DefinitionRef(version.gallery, version.definition))
    except NotFound:
        return Definition.from_json(home.store.get_manifest(version.definition_record))


def _build(home: Home, folder: Path, req: NewVm, version: ImageVersion, version_digest: str,
           definition: Definition, cpus: int, memory: int, provisioning: seed.Provisioning | None,
           base_paths: dict[str, Path], shared: tuple[ShareRecord, ...], *, future: bool = False) -> VmRecord:
    disks: list[VmDisk] = []
    for disk in version.disks:
        base = base_paths[disk.digest]
        overlay = folder / ("disk-os.qcow2" if disk.lun is None else f"disk-lun{disk.lun}.qcow2")
        size = req.disk_size if disk.lun is None and req.disk_size else None
        if future:  # the base is not there yet: the overlay is made without opening it, so it needs its size
            qemu_img.create_overlay(overlay, backing=base, backing_fmt="raw", size=size or disk.virtual_size,
                                    unsafe=True)
        else:
            qemu_img.create_overlay(overlay, backing=base, backing_fmt="raw", size=size)
        os.chmod(overlay, 0o600)
        disks.append(VmDisk(disk.lun, overlay.name, str(base), disk.digest, size or disk.virtual_size))
    if definition.firmware == "uefi":
        _, vars_template = accel.ovmf_paths()
        shutil.copyfile(vars_template, folder / "ovmf-vars.fd")
        os.chmod(folder / "ovmf-vars.fd", 0o600)
    with attachments.networks_lock(home):  # addresses are chosen and saved under one hold
        nics = attachments.assign(home, req.name, req.networks)
        record = _record(req, version, version_digest, definition, cpus, memory, tuple(disks), shared, nics)
        if provisioning is not None:
            attachments.save_provisioning(folder, provisioning)
            wired = attachments.provisioning(home, record, provisioning)
            digest = seed.write_seed(folder / "seed.iso", wired)
            record = dataclasses.replace(record, seed=SeedInfo(
                "seed.iso", digest, provisioning.instance_id, provisioning.hostname, provisioning.admin_user,
                str(_key_path(req) or "") or None))
        save(home, record)  # the commit point: from here on the VM exists
    return record


def _record(req: NewVm, version: ImageVersion, version_digest: str, definition: Definition, cpus: int, memory: int,
            disks: tuple[VmDisk, ...], shared: tuple[ShareRecord, ...],
            nics: tuple[vmrecord.NetworkAttachment, ...]) -> VmRecord:
    return VmRecord(
        name=req.name, created=stamp(), image=f"{version.gallery}/{version.definition}@{version.version}",
        version_digest=version_digest, os_state=version.os_state, definition=definition.to_json(),
        definition_record=version.definition_record, cpus=cpus, memory_mib=memory, firmware=definition.firmware,
        arch=definition.architecture, disks=disks, seed=None, forwards=req.forwards,
        allowed_revoked=version.revocation.reason if version.revocation else None, shares=shared, networks=nics,
        environment=req.environment)


def advice(home: Home, record: VmRecord, req: NewVm) -> list[str]:
    """Warnings for what vm new made: a version past its end of life, a VM nobody can log in to."""
    found = []
    today = clock.today()
    version = ImageVersion.from_json(home.store.get_manifest(record.version_digest))
    definition_eol = record.definition.get("end_of_life")
    for what, eol in ((f"version {record.image}", version.end_of_life),
                      (f"definition {version.gallery}/{version.definition}", definition_eol)):
        if isinstance(eol, str) and eol[:10] < today:
            found.append(f"{what} reached its end of life on {eol[:10]}; newer versions: "
                         f"imgtool version list {version.gallery}/{version.definition}")
    if record.seed is not None and record.seed.ssh_key is None and req.user_data is None:
        found.append(f"nobody can log in to VM '{record.name}': no SSH key was given and none was found in "
                     f"~/.ssh; recreate it with --ssh-key FILE.pub (imgtool vm delete {record.name}, then vm new)")
    return found


def update(home: Home, name: str, *, cpus: int | None, memory_mib: int | None,
           ignore_recommendations: bool = False, shares: tuple[Share, ...] | None = None) -> VmRecord:
    """Change a stopped VM's vCPUs, memory (within its definition's recommendation) or shares (all of
    them: `shares` replaces the list; its seed's mounts follow at the next start)."""
    if cpus is None and memory_mib is None and shares is None:
        raise InvalidArgument("nothing to update", hint=f"give --cpus N, --memory MIB and/or --share, e.g. "
                                                        f"imgtool vm update {name} --memory 1024")
    checked = attachments.check_shares(home, shares) if shares is not None else None
    with file_lock(home.vms / f".{name}.lock"):
        record = load(home, name)
        if vmstate.is_running(home, name):
            raise Refused(f"VM '{name}' is running; vCPUs, memory and shares change while it is stopped",
                          hint=f"imgtool vm stop {name}, then update it (or: imgtool vm restart {name} after)")
        definition = _current_definition(home, record)
        new_cpus = record.cpus if cpus is None else cpus
        new_memory = record.memory_mib if memory_mib is None else memory_mib
        request = NewVm(name=name, image=record.image, ignore_recommendations=ignore_recommendations)
        if definition is not None:
            _check_resources(request, definition, new_cpus, new_memory)
        else:
            options.check_cpus(new_cpus)
            options.check_memory(new_memory)
        updated = dataclasses.replace(record, cpus=new_cpus, memory_mib=new_memory, updated=stamp(),
                                      shares=record.shares if checked is None else checked)
        save(home, updated)
    return updated


def _current_definition(home: Home, record: VmRecord) -> Definition | None:
    """The recommendation in force: the definition now, else as it was at vm new."""
    gallery, _, rest = record.image.partition("/")
    try:
        return get_definition(home, DefinitionRef(gallery, rest.partition("@")[0]))
    except NotFound:
        return Definition.from_json(record.definition) if record.definition else None


def delete(home: Home, name: str) -> list[str]:
    """Remove a VM: record first (it stops holding its version), then its files, snapshots included;
    returns the names of the snapshots that went with it (for the caller to say so)."""
    folder = vm_dir(home, name)
    if not folder.is_dir():
        load(home, name)  # raises NotFound with the usual hint
    with file_lock(home.vms / f".{name}.lock"):
        snaps = _snapshot_names(folder)
        vmrun.stop(home, name, timeout=0)
        vmrecord.record_path(home, name).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        _drop_stream_leases(home, name)
    return snaps


def _drop_stream_leases(home: Home, name: str) -> None:
    """What a streaming VM fetched is held by leases; with the VM gone, gc may take what nothing else uses."""
    for key, _digest in home.store.list_names(vmrecord.STREAM_LEASES, name):
        home.store.delete_name(vmrecord.STREAM_LEASES, name, *key)


def _snapshot_names(folder: Path) -> list[str]:
    root = folder / "snapshots"
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / "snapshot.json").is_file()) \
        if root.is_dir() else []


def list_names(home: Home) -> list[str]:
    if not home.vms.is_dir():
        return []
    return sorted(p.name for p in home.vms.iterdir() if p.is_dir() and not p.name.startswith("."))


def unfinished(home: Home) -> list[Path]:
    """VM folders without a record whose creator is gone (gc removes them)."""
    found = []
    for name in list_names(home):
        folder = home.vms / name
        if (folder / vmrecord.RECORD).exists():
            continue
        try:
            with file_lock(home.vms / f".{name}.lock", timeout=0):
                if not (folder / vmrecord.RECORD).exists():
                    found.append(folder)
        except Exception:  # held: a vm new is still running
            continue
    return found


def snapshot(home: Home, name: str, snap: str) -> dict[str, Any]:
    """Copy a stopped VM's overlays into snapshots/<snap>/ (they keep standing on the same bases)."""
    record = load(home, name)
    check_name(snap, "snapshot")
    if vmstate.is_running(home, name):
        raise Refused(f"VM '{name}' is running; a snapshot is taken of a stopped VM",
                      hint=f"stop it first: imgtool vm stop {name}")
    target = vm_dir(home, name) / "snapshots" / snap
    target.parent.mkdir(exist_ok=True, mode=0o700)
    tmp = target.parent / f"{atomic.TMP_PREFIX}{snap}"
    shutil.rmtree(tmp, ignore_errors=True)
    if target.exists():
        raise AlreadyExists(f"snapshot '{name}/{snap}' already exists", hint="choose another name")
    tmp.mkdir(mode=0o700)
    for disk in record.disks:
        shutil.copyfile(vm_dir(home, name) / disk.overlay, tmp / disk.overlay)
        os.chmod(tmp / disk.overlay, 0o600)  # like the VM's own disks: what the guest wrote is private
    info = {"name": snap, "vm": name, "created": stamp(), "disks": [dataclasses.asdict(d) for d in record.disks],
            "image": record.image}
    atomic.replace(tmp / "snapshot.json", json.dumps(info, indent=2, sort_keys=True).encode())
    os.rename(tmp, target)
    return info


def _snapshot_dir(home: Home, name: str, snap: str) -> Path:
    load(home, name)
    folder = vm_dir(home, name) / "snapshots" / check_name(snap, "snapshot")
    if not (folder / "snapshot.json").is_file():
        raise NotFound(f"snapshot '{name}/{snap}' does not exist", hint=f"imgtool vm snapshot list {name}")
    return folder


def list_snapshots(home: Home, name: str) -> list[dict[str, Any]]:
    """A VM's snapshots, oldest first: name, created, the disks' LUNs and sizes."""
    load(home, name)
    found = []
    root = vm_dir(home, name) / "snapshots"
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.name.startswith(".") or not (folder / "snapshot.json").is_file():
            continue
        try:
            info = json.loads((folder / "snapshot.json").read_text())
        except (OSError, ValueError):
            info = {}
        disks = info.get("disks") if isinstance(info.get("disks"), list) else []
        found.append({"vm": name, "name": folder.name, "ref": f"snapshot:{name}/{folder.name}",
                      "created": info.get("created"), "image": info.get("image"),
                      "disks": [{"lun": d.get("lun"), "virtual_size": d.get("virtual_size")} for d in disks
                                if isinstance(d, dict)],
                      "stored_bytes": sum(p.stat().st_size for p in folder.glob("*.qcow2"))})
    return sorted(found, key=lambda s: (str(s["created"]), s["name"]))


def delete_snapshot(home: Home, name: str, snap: str) -> None:
    folder = _snapshot_dir(home, name, snap)
    with file_lock(home.vms / f".{name}.lock"):
        doomed = folder.parent / f"{atomic.TMP_PREFIX}{snap}.deleting"
        os.rename(folder, doomed)  # gone at once; the files follow
        shutil.rmtree(doomed, ignore_errors=True)


def restore_snapshot(home: Home, name: str, snap: str) -> None:
    """Put a stopped VM's disks back as they were at the snapshot (what was written since is lost)."""
    folder = _snapshot_dir(home, name, snap)
    with file_lock(home.vms / f".{name}.lock"):
        record = load(home, name)
        if vmstate.is_running(home, name):
            raise Refused(f"VM '{name}' is running; its disks can be restored while it is stopped",
                          hint=f"imgtool vm stop {name}, then imgtool vm snapshot restore {name} {snap}")
        missing = [d.overlay for d in record.disks if not (folder / d.overlay).is_file()]
        if missing:
            raise Corrupt(f"snapshot '{name}/{snap}' lacks {', '.join(missing)}",
                          hint=f"delete it: imgtool vm snapshot delete {name} {snap}")
        staged = []
        try:
            for disk in record.disks:  # copy every disk first, then swap them in: all or nothing
                tmp = vm_dir(home, name) / f"{atomic.TMP_PREFIX}{disk.overlay}"
                shutil.copyfile(folder / disk.overlay, tmp)
                os.chmod(tmp, 0o600)
                staged.append((tmp, vm_dir(home, name) / disk.overlay))
            for tmp, target in staged:
                os.replace(tmp, target)
            save(home, _sizes_from_snapshot(record, folder))
        finally:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)


def _sizes_from_snapshot(record: VmRecord, folder: Path) -> VmRecord:
    """The receipt with each disk's size as the snapshot has it (a disk grown since shrinks back with it)."""
    try:
        info = json.loads((folder / "snapshot.json").read_text())
    except (OSError, ValueError):
        return record
    taken = {d.get("overlay"): d.get("virtual_size") for d in info.get("disks", []) if isinstance(d, dict)}
    sizes = {overlay: size for overlay, size in taken.items() if isinstance(size, int)}
    disks = tuple(dataclasses.replace(d, virtual_size=sizes.get(d.overlay, d.virtual_size)) for d in record.disks)
    return dataclasses.replace(record, disks=disks)
