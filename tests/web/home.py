"""A home with everything the web view shows, built through imgtool's library in a few seconds (no QEMU):
galleries and definitions with hostile text, versions from `blake3:` disks, a revoked one, a failed boot
check with a console tail, a replication that completed (to an OCI layout) and one that failed, a
version pulled back from that layout with a trusted signature, and (when qemu-img is there) a VM and a
version captured from it."""

from __future__ import annotations

import shutil
from pathlib import Path

from imgtool.flows import replication, sharing
from imgtool.gallery import galleries
from imgtool.gallery.lifecycle_model import BootCheck, CheckResult
from imgtool.gallery.model import Definition
from imgtool.gallery.revocation import revoke
from imgtool.gallery.version_changes import update_version
from imgtool.home import Home
from imgtool.remote import remotes
from imgtool.trust.homes import keyring, trust_store
from tests.remote.helpers import changed, disk_bytes, publish_bytes

XSS_NAME_TEXT = "<script>alert('desc')</script><img src=x onerror=alert('onerror')>"
XSS_GALLERY = "<script>alert('gallery')</script>"
XSS_REASON = "<img src=x onerror=alert('reason')> CVE-2026-0001"
XSS_CONSOLE = "READY? no\n<script>alert('console')</script>\n<img src=x onerror=alert('tail')>"
HOSTILE = (XSS_NAME_TEXT, XSS_GALLERY, XSS_REASON, XSS_CONSOLE)


PLAIN = {XSS_GALLERY: "The team's images", XSS_NAME_TEXT: "Debian 12 base image for the team's services",
         XSS_REASON: "CVE-2026-0001 in openssl", XSS_CONSOLE: "SeaBIOS\nBooting from Hard Disk...\nno READY line"}


def build(root: Path, layout: Path, *, with_vm: bool, hostile: bool = True) -> Home:
    """The home; hostile=False writes plain text where the tests put hostile text (for screenshots)."""

    def text(value: str) -> str:
        return value if hostile else PLAIN[value]

    home = Home.at(root)
    galleries.create_gallery(home, "team", text(XSS_GALLERY))
    galleries.create_definition(home, Definition(
        "team", "base", "acme", "base", "v1", "linux", "specialized", description=text(XSS_NAME_TEXT),
        release_notes_uri="javascript:alert('notes')" if hostile else "https://example.invalid/notes"))
    galleries.create_definition(home, Definition(
        "team", "checked", "acme", "checked", "v1", "linux", "generalized", description="needs a boot check",
        boot_check=BootCheck.parse("console:READY", 60)))
    first = disk_bytes(2 << 20, seed=1)
    publish_bytes(home, "team/base", "1.0.0", first)
    publish_bytes(home, "team/base", "1.1.0", changed(first, 0.25, seed=2))
    publish_bytes(home, "team/base", "1.2.0", changed(first, 0.5, seed=3))
    revoke(home, "team/base@1.1.0", text(XSS_REASON))
    publish_bytes(home, "team/checked", "1.0.0", disk_bytes(1 << 20, seed=4))
    update_version(home, "team/checked@1.0.0", check=CheckResult(
        "failed", kind="console:READY", when="2026-01-02T03:04:05Z", duration_ms=60000,
        detail="no READY within 60s", console_tail=text(XSS_CONSOLE)))
    _profile(home, "team/checked@1.0.0")
    _share(home, layout)
    if with_vm:
        _vm(home, hostile)
    return home


def _profile(home: Home, ref: str) -> None:
    """A boot profile as a passing check records one: the OS disk's chunks 1 then 0."""
    from imgtool.gallery import lookup
    from imgtool.vm import boot_profile

    v, _ = lookup.get_version(home, ref)
    order = boot_profile.DiskOrder("os", v.disks[0].digest, (1, 0))
    boot_profile.save(home.store, v.gallery, v.definition, v.version, boot_profile.BootProfile(None, (order,)))


def _share(home: Home, layout: Path) -> None:
    keyring(home).generate("release")
    remotes.add(home, "mirror", f"oci-layout:{layout}")
    trust = trust_store(home)
    trust.add("mirror", keyring(home).public("release"))
    trust.set_signing_key("mirror", "release")
    replication.set_targets(home, "team/base@1.0.0", add=["mirror"])
    replication.replicate(home, "team/base@1.0.0")
    remotes.add(home, "down", "http://127.0.0.1:9/nothing")  # loopback, and nothing listens there
    trust.set_policy("down", "any")
    replication.set_targets(home, "team/base@1.2.0", add=["down"])
    replication.replicate(home, "team/base@1.2.0")
    sharing.pull_ref(home, "mirror:team/base@1.0.0", as_ref="pulled/base")


def _vm(home: Home, hostile: bool) -> None:
    from imgtool.flows.publishing import publish_version as publish
    from imgtool.gallery.image_versions import PublishRequest
    from imgtool.names import DefinitionRef, Version
    from imgtool.vm import lifecycle

    lifecycle.create(home, lifecycle.NewVm(name="web1", image="team/base@1.2.0", cpus=1, memory_mib=256))
    publish(home, PublishRequest(DefinitionRef("team", "base"), Version.parse("2.0.0"), os_disk="vm:web1",
                                 os_state="specialized"))
    serial = home.vms / "web1" / "serial.log"
    serial.write_text("booting\n\x1b[1mbold\x1b[0m line\n" + ("<script>alert('serial')</script>\n" if hostile else "")
                      + "READY\n")


def has_qemu_img() -> bool:
    return shutil.which("qemu-img") is not None
