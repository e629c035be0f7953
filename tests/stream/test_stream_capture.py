"""Capture back of a VM that still streams its version (no boot: a streamed VM that was never started):
`publish --os-disk vm:NAME` fetches the rest of the version first, then captures an ordinary chain, and
the new version's bytes are the VM's; capture without that step is refused with the way out."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgtool.capture.vms import capture_vm_source
from imgtool.errors import Refused
from imgtool.home import Home
from tests.conftest import require_tools
from tests.remote.registry import Registry, running
from tests.stream.test_stream_boot import user_cli
from tests.test_vm_boot import bios_image, new_cli  # noqa: F401 - bios_image is a fixture

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    require_tools("docker-registry", "qemu-img")
    with running() as reg:
        yield reg


def test_publishing_a_still_streaming_vm_hydrates_it_first(registry: Registry, bios_image: Path,  # noqa: F811
                                                           tmp_path: Path) -> None:
    publisher = new_cli(tmp_path / "publisher", "generalized")
    publisher("publish", "lab/tiny", "--version", "1.0.0", "--os-disk", str(bios_image), "--allow-identity")
    publisher("remote", "add", "origin", f"{registry.url}/capture")
    publisher("push", "lab/tiny", "origin")
    user = user_cli(tmp_path)
    user("remote", "add", "origin", f"{registry.url}/capture")
    user("trust", "policy", "origin", "any")
    user("vm", "new", "s1", "--image", "origin:lab/tiny@1.0.0", "--stream", "--hydrate", "on-demand")
    assert (user.home / "vms" / "s1" / "stream.json").exists()

    with pytest.raises(Refused, match="still streams") as refused:
        capture_vm_source(Home.at(user.home), "vm", "s1", None)
    assert "imgtool vm hydrate s1 --wait" in (refused.value.hint or "")

    user("gallery", "create", "mine")
    user("definition", "create", "mine/tiny", "--publisher", "me", "--offer", "tiny", "--sku", "g",
         "--os-type", "linux", "--os-state", "generalized")
    done = user("publish", "mine/tiny", "--version", "1.0.0", "--os-disk", "vm:s1", "--os-state", "generalized",
                "--allow-identity")
    assert "still streams its version: fetching the rest first" in done.stderr
    assert not (user.home / "vms" / "s1" / "stream.json").exists()
    exported = tmp_path / "mine.raw"
    user("version", "export", "mine/tiny@1.0.0", str(exported), "--format", "raw")
    assert subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(exported), str(bios_image)],
                          capture_output=True, check=False).returncode == 0  # the VM never wrote: the image
    assert "ok:" in user("verify", "--deep").stdout
    user("vm", "delete", "s1")
