"""A boot profile end to end with real QEMU (TCG) and a real registry: `publish --check` of the tiny image
records the chunks its boot read first, the push attaches the profile to the version's manifest, and
a VM streamed from that version on demand prefetches exactly those chunks (its stream log and status
say so) and still reaches READY with the version's bytes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgtool.home import Home
from imgtool.vm import boot_profile
from tests.conftest import require_tools
from tests.remote.registry import Registry, running
from tests.stream.test_stream_boot import user_cli
from tests.test_vm_boot import bios_image, new_cli, ready  # noqa: F401 - bios_image is a fixture

pytestmark = [pytest.mark.integration, pytest.mark.boot]


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    require_tools("docker-registry", "qemu-img", "qemu-system-x86_64")
    with running() as reg:
        yield reg


def test_a_checked_version_streams_its_boot_profile_first(registry: Registry, bios_image: Path,  # noqa: F811
                                                          tmp_path: Path) -> None:
    publisher = new_cli(tmp_path / "publisher", "generalized", "--require-boot-check", "--boot-check", "console:READY")
    publisher("publish", "lab/tiny", "--version", "1.0.0", "--os-disk", str(bios_image), "--allow-identity", "--check")
    store = Home.at(publisher.home).store
    profile = boot_profile.load(store, "lab", "tiny", "1.0.0")
    assert profile is not None and [d.disk for d in profile.disks] == ["os"]
    order = profile.disks[0].chunks
    disk = store.get_disk(profile.disks[0].digest)
    assert 0 < len(order) < len(disk.chunks)  # a boot reads some of the disk, not all of it
    assert order[0] == 0  # the firmware reads the boot sector first

    publisher("remote", "add", "origin", f"{registry.url}/profile")
    publisher("trust", "policy", "origin", "any")
    publisher("push", "lab/tiny", "origin")
    user = user_cli(tmp_path)
    user("remote", "add", "origin", f"{registry.url}/profile")
    user("trust", "policy", "origin", "any")
    # No --stream: a remote image streams by default when the VM starts.
    user("vm", "new", "p1", "--image", "origin:lab/tiny@1.0.0", "--hydrate", "on-demand", "--memory", "256", "--start")
    assert (user.home / "vms" / "p1" / "stream.json").exists()
    assert ready(user, "p1")["hostname"] == "p1"
    shown = user.json("vm", "show", "p1")
    assert isinstance(shown, dict)
    hydration = shown["hydration"]
    assert hydration["profile_chunks"] == len(order) == hydration["prefetched_chunks"]
    assert hydration["bytes_fetched"] < hydration["bytes_total"]  # on demand: the profile and the misses
    log = (user.home / "vms" / "p1" / "stream.log").read_text()
    assert f"{len(order)} chunks" in log and "boot profile prefetched" in log and "ignored" not in log

    done = user.json("vm", "hydrate", "p1", "--wait")
    assert isinstance(done, dict) and done["hydration"]["state"] == "complete"
    pulled = boot_profile.load(Home.at(user.home).store, "lab", "tiny", "1.0.0")
    assert pulled is not None and pulled.disks == profile.disks  # naming the version (a pull) kept the profile
    exported = tmp_path / "hydrated.raw"
    user("version", "export", "lab/tiny@1.0.0", str(exported), "--format", "raw")
    assert subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(exported), str(bios_image)],
                          capture_output=True, check=False).returncode == 0
    user("vm", "delete", "p1")
