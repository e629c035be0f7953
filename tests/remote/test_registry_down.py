"""The registry stops in the middle of a transfer: one clear error, nothing lost, the re-run completes."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgtool.gallery.galleries import VERSIONS
from imgtool.remote import remotes
from imgtool.remote.registry import RegistryClient
from store.verify import verify
from tests.cli import Cli
from tests.remote.helpers import accept_unsigned, disk_bytes, exported, make_home, publish_bytes
from tests.remote.proxy import proxy
from tests.remote.registry import Registry
from tests.remote.test_kill import check_remote

pytestmark = pytest.mark.integration


def test_registry_stopped_mid_push_and_mid_pull(own_registry: Registry, tmp_path: Path) -> None:
    src = make_home(tmp_path / "a")
    data = disk_bytes(4 << 20, seed=50)
    publish_bytes(src, "team/base", "1.0.0", data)
    with proxy(own_registry.url) as (url, switch):
        remotes.add(src, "origin", url)
        a = Cli(src.root)
        switch.action = own_registry.stop
        switch.arm(at_byte=1 << 20)
        failed = a("push", "team", "origin", ok=False)
        assert failed.returncode == 12, failed.stderr
        assert failed.stderr.startswith("imgtool: error: origin") and "Traceback" not in failed.stderr
        assert "Error" not in failed.stderr.splitlines()[0]  # words, not an exception class
        own_registry.start()  # same port, same storage
        switch.reset()
        direct = RegistryClient(own_registry.url, label="direct", credentials=None)
        assert check_remote(direct, ["team/base"]) == []  # no tag, so nothing half-named
        a("push", "team", "origin")
        assert check_remote(direct, ["team/base"]) == ["team/base:1.0.0"]

        dst = make_home(tmp_path / "b", gallery_name="x")
        remotes.add(dst, "origin", url)
        accept_unsigned(dst, "origin")
        b = Cli(dst.root)
        switch.arm(at_byte=1 << 20)
        failed = b("pull", "origin:team/base@1.0.0", ok=False)
        assert failed.returncode == 12 and "Traceback" not in failed.stderr
        assert dst.store.get_name(VERSIONS, "team", "base", "1.0.0") is None
        assert verify(dst.store, deep=True).ok
        own_registry.start()
        switch.reset()
        b("pull", "origin:team/base@1.0.0")
        assert exported(dst, "team/base@1.0.0", tmp_path / "b.raw") == bytes(data)
        direct.close()
