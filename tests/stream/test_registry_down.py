"""A streamed VM needs its registry until hydration ends, and says so: with the real registry stopped,
`vm hydrate` (like `vm start`) fails with what failed and what to do, leaves no local name and no
lease behind it; with the registry back, the same command hydrates and names the version."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from imgtool.flows import sharing
from imgtool.home import Home
from imgtool.remote import remotes
from imgtool.vm.record import STREAM_LEASES
from tests.cli import Cli
from tests.conftest import require_tools
from tests.remote.helpers import disk_bytes, make_home, publish_bytes
from tests.remote.registry import Registry, running

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    require_tools("docker-registry", "qemu-img")
    with running() as reg:
        yield reg


def test_hydration_needs_the_registry_and_says_so(registry: Registry, tmp_path: Path) -> None:
    src = make_home(tmp_path / "publisher")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(4 << 20, seed=71))
    remotes.add(src, "origin", f"{registry.url}/down")
    sharing.push_source(src, "team/base@1.0.0", "origin")
    user = Cli(tmp_path / "user", env={"HOME": str(tmp_path / "h"), "REGISTRY_AUTH_FILE": ""})
    user("remote", "add", "origin", f"{registry.url}/down")
    user("trust", "policy", "origin", "any")
    user("vm", "new", "s", "--image", "origin:team/base@1.0.0", "--stream", "--hydrate", "on-demand")
    registry.stop()
    try:
        failed = user("vm", "hydrate", "s", "--wait", ok=False)
    finally:
        registry.start()
    assert failed.returncode != 0 and failed.stderr.startswith("imgtool: error: "), failed.stderr
    assert "stream server of VM 's' did not start" in failed.stderr and "Traceback" not in failed.stderr
    store = Home.at(user.home).store
    assert store.get_name("versions", "team", "base", "1.0.0") is None
    done = user.json("vm", "hydrate", "s", "--wait")
    assert isinstance(done, dict) and done["hydration"]["state"] == "complete"
    refused = user("vm", "new", "t", "--image", "origin:team/base@1.0.0", "--no-stream", "--hydrate", "on-demand",
                   ok=False)
    assert refused.returncode == 2 and "--hydrate applies to a streamed VM" in refused.stderr, refused.stderr
    publish_bytes(src, "team/base", "1.1.0", disk_bytes(4 << 20, seed=72))
    sharing.push_source(src, "team/base@1.1.0", "origin")
    user("vm", "new", "t", "--image", "origin:team/base@1.1.0")  # not starting: pulled first, not streamed
    assert not (user.home / "vms" / "t" / "stream.json").exists()
    assert store.get_name("versions", "team", "base", "1.1.0") is not None
    assert store.get_name("versions", "team", "base", "1.0.0") is not None
    assert store.list_names(STREAM_LEASES) == []
    assert "ok:" in user("verify", "--deep").stdout
