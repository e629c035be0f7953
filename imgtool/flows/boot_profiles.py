"""A version's boot profile on a registry: attached to its manifest by push, found by pull and streaming.

The profile travels as a referrer of the version's manifest (artifact type and layer media type
`application/vnd.imgtool.boot-profile.v1+json`), its body bound to that manifest's digest. It is not
signed: it is only an ordering hint, checked strictly against the version it claims to be about
(imgtool/vm/boot_profile.check), so the worst a forged one can do is make a stream fetch chunks in a
useless order. A bad one is skipped with a warning, never fatal.
"""

from __future__ import annotations

import logging

from imgtool.errors import ImgtoolError
from imgtool.gallery.model import ImageVersion
from imgtool.home import Home
from imgtool.oci import referrers
from imgtool.oci.descriptor import Descriptor
from imgtool.oci.target import Target
from imgtool.vm import boot_profile
from imgtool.vm.boot_profile import MEDIA_TYPE, BootProfile, DiskChunks

log = logging.getLogger("imgtool.boot_profile")


def attach(home: Home, target: Target, repo: str, subject: Descriptor, version: ImageVersion) -> bool:
    """Attach the local version's profile, bound to `subject` (its pushed manifest); False if it has none."""
    try:
        profile = boot_profile.load(home.store, version.gallery, version.definition, version.version)
        if profile is None:
            return False
        # A name left from a deleted version of the same number would be about other disks.
        boot_profile.check(profile, subject=None, disks=disk_chunks(home, version), what="the local boot profile")
    except ImgtoolError as exc:
        log.warning("the boot profile of %s is not pushed: %s", version.label, exc.message)
        return False
    blob = profile.bound_to(subject.digest).encode()
    layer = Descriptor.of(MEDIA_TYPE, blob)
    manifest = referrers.referrer_manifest(subject, MEDIA_TYPE, layer, {})
    referrers.attach(target, repo, manifest, blob, artifact_type=MEDIA_TYPE)
    return True


def has(home: Home, version: ImageVersion) -> bool:
    return home.store.get_name(boot_profile.NAMESPACE, version.gallery, version.definition, version.version) is not None


def find(target: Target, repo: str, subject: str, disks: DiskChunks) -> tuple[BootProfile | None, list[str]]:
    """The first profile of `subject` that is about exactly this version (its disks and chunks), and why
    each other one was skipped. Finding never fails: a registry that lies about referrers gives no profile."""
    skipped: list[str] = []
    try:
        found = referrers.find(target, repo, subject, artifact_type=MEDIA_TYPE)
    except ImgtoolError as exc:
        return None, [f"no boot profile used: {exc.message}"]
    for referrer in found:
        what = f"boot profile {referrer.digest[:19]}…"
        try:
            layer = referrers.only_layer(referrer, media_type=MEDIA_TYPE, limit=boot_profile.MAX_BYTES)
            data = referrers.read_blob(target, repo, layer)
            if data is None:
                continue
            profile = boot_profile.parse(data, what=what)
            boot_profile.check(profile, subject=subject, disks=disks, what=what)
        except ImgtoolError as exc:
            skipped.append(f"{what} ignored: {exc.message}")
            continue
        return profile, skipped
    return None, skipped


def disk_chunks(home: Home, version: ImageVersion) -> DiskChunks:
    """What a profile of `version` may name: per disk label, its manifest digest and non-zero chunks."""
    found = {}
    for disk in version.disks:
        manifest = home.store.get_disk(disk.digest)
        found[boot_profile.disk_label(disk.lun)] = (disk.digest, frozenset(manifest.chunks))
    return found


def keep_pulled(home: Home, target: Target, repo: str, subject: str, local: ImageVersion) -> None:
    """After a pull stored the disks: keep the remote's profile of this manifest with the local version."""
    profile, skipped = find(target, repo, subject, disk_chunks(home, local))
    for why in skipped:
        log.warning("%s", why)
    if profile is not None:
        boot_profile.save(home.store, local.gallery, local.definition, local.version, profile)

