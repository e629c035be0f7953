"""A stream whose store's disk fills up (a real tmpfs, filled by a file): the chunks fetched stay in memory
and are not lost, the server says what is wrong and what to do (and would pause the VM), fetching
threads stop fetching, and once space is free the same chunks are written and leased; verify is clean.
No QEMU: the pause itself is QMP `stop`, the same seam the registry-down test drives with a real VM."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgtool.flows import sharing
from imgtool.home import Home
from imgtool.stream.hydration import Hydration
from imgtool.stream.serve import PAUSED_DISK_FULL, Supervisor, disks_of
from imgtool.vm.record import STREAM_LEASES as LEASES
from store.verify import verify
from tests.conftest import require_tools
from tests.reliability.harness import tmpfs
from tests.remote.helpers import add_remote, disk_bytes
from tests.remote.liar import Liar
from tests.stream.liar_home import serving

pytestmark = pytest.mark.integration
REPO = "team/base"
DATA = disk_bytes(4 << 20, seed=71)


@pytest.fixture(scope="module")
def liar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Liar]:
    with serving(tmp_path_factory, REPO, DATA) as server:
        yield server


def fill(folder: Path) -> Path:
    """A file that takes every free byte of the filesystem of `folder`."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\xff" * (256 << 10))
                handle.flush()
        except OSError:
            pass
    return filler


def test_a_full_store_keeps_the_fetched_chunks_pauses_and_resumes(liar: Liar, tmp_path: Path) -> None:
    require_tools("mount")
    with tmpfs(tmp_path / "small", "16m") as small:
        home = Home.at(small / "home")
        home.ensure()
        add_remote(home, "origin", liar.url)
        with sharing.judged_remote(home, f"origin:{REPO}@1.0.0") as (_r, target, puller, judged):
            disks = disks_of(puller, judged)
            sizes = {d: desc.size for d, desc in judged.manifest.packs.items()}
            hydration = Hydration(home.store, target, judged.repo, sizes, disks, lease_owner="v1")
            try:
                info = {"remote": "origin", "image": "team/base@1.0.0", "mode": "on-demand", "ref": "-", "local": "-"}
                supervisor = Supervisor(home, "v1", info, hydration, hydrate_only=False)
                for batch in hydration.batches():
                    hydration.ensure(batch)  # every chunk fetched into memory
                fetched = len(hydration.frames)
                assert fetched == hydration.counters.fetched_chunks > 0
                filler = fill(small)

                assert supervisor.keep() is False
                assert supervisor.state == PAUSED_DISK_FULL and hydration.full.is_set()
                assert supervisor.message is not None and "disk is full" in supervisor.message
                assert "free space" in supervisor.message
                assert len(hydration.frames) == fetched  # nothing fetched was lost
                waited = threading.Event()

                def fetcher() -> None:
                    hydration.flush_or_wait(threading.Event())
                    waited.set()

                waiter = threading.Thread(target=fetcher)
                waiter.start()
                assert not waited.wait(1.5)  # a fetching thread fetches nothing more while the disk is full

                filler.unlink()
                assert supervisor.keep() is True
                assert supervisor.state == "streaming" and supervisor.message is None
                waiter.join(5)
                assert waited.is_set() and not hydration.full.is_set()
                assert not hydration.frames and hydration.complete()
                assert {key for key, _ in home.store.list_names(LEASES, "v1")} == {("os",)}
                assert verify(home.store, deep=True).ok
            finally:
                hydration.close()
