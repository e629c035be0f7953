"""The Debian 12 image streamed from a real registry to SSH (issue 21), one boot under TCG:

`vm new --stream --hydrate on-demand --start --wait` from a version this home never pulled reaches SSH
with the seeded key while fetching only part of the version; `vm hydrate --wait` then fetches the rest,
the version gets its local name, and its bytes equal the image's (`qemu-img compare`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli import Cli
from tests.conftest import require_tools
from tests.realguest.test_debian import ADMIN, WAIT, key, ssh  # noqa: F401 - key is a fixture
from tests.remote.registry import Registry, running

pytestmark = [pytest.mark.realguest, pytest.mark.integration, pytest.mark.boot]


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    require_tools("docker-registry")
    with running() as reg:
        yield reg


def test_debian_streams_to_ssh_then_hydrates_to_the_same_bytes(registry: Registry, image: Path,
                                                               key: Path, tmp_path: Path) -> None:  # noqa: F811
    publisher = Cli(tmp_path / "publisher", env={"IMGTOOL_ACCEL": "tcg"})
    publisher("gallery", "create", "lab")
    publisher("definition", "create", "lab/deb", "--publisher", "debian", "--offer", "debian-12", "--sku", "g",
              "--os-type", "linux", "--os-state", "generalized", "--min-memory", "512")
    publisher("publish", "lab/deb", "--version", "1.0.0", "--os-disk", str(image))
    publisher("remote", "add", "origin", f"{registry.url}/deb")
    publisher("push", "lab/deb", "origin")

    user = Cli(tmp_path / "user", env={"IMGTOOL_ACCEL": "tcg", "REGISTRY_AUTH_FILE": ""})
    user("remote", "add", "origin", f"{registry.url}/deb")
    user("trust", "policy", "origin", "any")
    try:
        user("vm", "new", "streamed", "--image", "origin:lab/deb@1.0.0", "--stream", "--hydrate", "on-demand",
             "--admin-user", ADMIN, "--ssh-key", f"{key}.pub", "--memory", "1024", "--start", "--wait",
             "--wait-timeout", WAIT)
        assert ssh(user, "streamed", "hostname", key=key).strip() == "streamed"
        shown = user.json("vm", "show", "streamed")
        assert isinstance(shown, dict)
        hydration = shown["hydration"]
        assert hydration["state"] == "streaming"
        assert 0 < hydration["bytes_fetched"] < hydration["bytes_total"]  # on demand: what the boot read
        print(f"\nstreamed: {hydration['bytes_fetched']:,} of {hydration['bytes_total']:,} chunk bytes before SSH")

        done = user.json("vm", "hydrate", "streamed", "--wait")
        assert isinstance(done, dict) and done["hydration"]["state"] == "complete"
        exported = tmp_path / "hydrated.raw"
        user("version", "export", "lab/deb@1.0.0", str(exported), "--format", "raw")
        assert subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(exported), str(image)],
                              capture_output=True, check=False, timeout=300).returncode == 0
        assert "ok:" in user("verify", "--deep").stdout
    finally:
        user("vm", "delete", "streamed", ok=False)
