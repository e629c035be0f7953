"""Hydration against a registry that lies (tests/remote/liar.py), no QEMU: the version is judged as pull
judges it, a chunk that fails its check is never served or stored, a registry that fails is an error for
that read alone (then the same read works), concurrent misses share one fetch, fetched chunks are
leased (verify clean, gc keeps them), and a full hydration leaves pull nothing to fetch."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgtool.errors import ImgtoolError
from imgtool.flows import sharing
from imgtool.garbage import gc
from imgtool.home import Home
from imgtool.stream.hydration import DiskSource, Hydration
from imgtool.stream.serve import disks_of
from imgtool.vm.record import STREAM_LEASES as LEASES
from store.verify import verify
from tests.cli import Cli
from tests.remote.helpers import disk_bytes
from tests.remote.liar import Liar
from tests.stream.liar_home import serving, user_home
from tests.trust.forge import Forged

pytestmark = pytest.mark.integration
REPO = "team/base"
DATA = disk_bytes(3 << 20, seed=61)
CHUNK = 128 << 10


@pytest.fixture(scope="module")
def liar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Liar]:
    with serving(tmp_path_factory, REPO, DATA) as server:
        yield server


@pytest.fixture
def home(liar: Liar, tmp_path: Path) -> Iterator[Home]:
    yield from user_home(liar, tmp_path)


def pack_path(liar: Liar) -> str:
    return f"/v2/{REPO}/blobs/{next(iter(Forged.of(liar, REPO, '1.0.0').packs()))}"


class Opened:
    def __init__(self, home: Home) -> None:
        self.home = home

    def __enter__(self) -> tuple[Hydration, DiskSource]:
        self.context = sharing.judged_remote(self.home, f"origin:{REPO}@1.0.0")
        _remote, target, puller, judged = self.context.__enter__()
        disks = disks_of(puller, judged)
        sizes = {d: desc.size for d, desc in judged.manifest.packs.items()}
        self.hydration = Hydration(self.home.store, target, judged.repo, sizes, disks, lease_owner="t1")
        return self.hydration, DiskSource(self.hydration, disks[0])

    def __exit__(self, *exc: object) -> None:
        self.hydration.close()
        self.context.__exit__(None, None, None)


def test_reads_straddling_chunks_equal_the_version(home: Home) -> None:
    with Opened(home) as (hydration, disk):
        for offset, length in ((0, 512), (CHUNK - 100, 300), (3 * CHUNK + 7, 2 * CHUNK), (len(DATA) - 512, 512)):
            assert disk.read(offset, length) == bytes(DATA[offset:offset + length])
        assert disk.read(3 * CHUNK, CHUNK) == bytes(CHUNK)  # a zero chunk: never fetched
        assert hydration.counters.fetched_chunks > 0


def test_a_chunk_failing_its_check_is_never_served_or_stored(home: Home, liar: Liar) -> None:
    with Opened(home) as (hydration, disk):
        liar.lie("wrong-bytes", path=pack_path(liar))
        with pytest.raises(ImgtoolError):
            disk.read(0, 4096)
        assert not hydration.memory and not hydration.frames
        hydration.keep()
        assert hydration.store.reload_index().locations == {}  # nothing was stored
        liar.lies.clear()
        assert disk.read(0, 4096) == bytes(DATA[:4096])  # the next read fetches it again, honestly


def test_a_failing_registry_fails_that_read_alone(home: Home, liar: Liar) -> None:
    with Opened(home) as (_hydration, disk):
        liar.lie("status", path=pack_path(liar), status=404)
        with pytest.raises(ImgtoolError):
            disk.read(CHUNK, 512)
        liar.lies.clear()
        assert disk.read(CHUNK, 512) == bytes(DATA[CHUNK:CHUNK + 512])


def test_concurrent_misses_on_one_chunk_share_one_fetch(home: Home, liar: Liar) -> None:
    with Opened(home) as (_hydration, disk):
        before = sum(1 for r in liar.requests if r.path == pack_path(liar))
        results: list[bytes] = []
        threads = [threading.Thread(target=lambda: results.append(disk.read(5 * CHUNK, 4096))) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert results == [bytes(DATA[5 * CHUNK:5 * CHUNK + 4096])] * 8
        assert sum(1 for r in liar.requests if r.path == pack_path(liar)) - before == 1


def test_a_read_over_missing_chunks_fetches_them_in_one_request_without_read_ahead(home: Home,
                                                                                   liar: Liar) -> None:
    """With a boot profile there is no read-ahead, yet a guest's 1 MiB read of remote data must not pay a
    round trip per 128 KiB chunk: the read's own chunks go in the miss's request."""
    with Opened(home) as (hydration, _disk):
        disk = DiskSource(hydration, hydration.disks[0], read_ahead=0)
        before = sum(1 for r in liar.requests if r.path == pack_path(liar))
        assert disk.read(4 * CHUNK, 6 * CHUNK) == bytes(DATA[4 * CHUNK:10 * CHUNK])  # chunks 4-9, none zero
        assert sum(1 for r in liar.requests if r.path == pack_path(liar)) - before == 1
        assert hydration.counters.fetched_chunks == 6  # and nothing past the read


def test_fetched_chunks_are_leased_and_hydration_leaves_pull_nothing(home: Home, tmp_path: Path) -> None:
    # The lease's VM: gc drops the leases of a VM that has no record.
    Cli(home.root, env={"HOME": str(tmp_path / "h"), "REGISTRY_AUTH_FILE": ""})(
        "vm", "new", "t1", "--image", f"origin:{REPO}@1.0.0", "--stream", "--hydrate", "on-demand")
    with Opened(home) as (hydration, disk):
        disk.read(0, 2 * CHUNK)
        hydration.keep()
        leased = home.store.list_names(LEASES)
        assert [key for key, _ in leased] == [("t1", "os")]
        gc(home, dry_run=False, capture_retention=0)  # the lease keeps them
        assert verify(home.store, deep=True).ok
        assert hydration.is_local(next(iter(disk.chunks.values())))
        for batch in hydration.batches():
            hydration.ensure(batch, wait=batch[0])
        hydration.keep()
        assert hydration.complete()
        pulled = sharing.pull_ref(home, f"origin:{REPO}@1.0.0")
        assert pulled.status == "pulled" and pulled.chunks_fetched == 0
        hydration.drop_leases()
        assert home.store.list_names(LEASES) == []
        assert verify(home.store, deep=True).ok


def test_vm_hydrate_without_a_running_vm_names_the_version_as_pull(home: Home, tmp_path: Path) -> None:
    cli = Cli(home.root, env={"HOME": str(tmp_path / "h"), "REGISTRY_AUTH_FILE": ""})
    cli("vm", "new", "s", "--image", f"origin:{REPO}@1.0.0", "--stream", "--hydrate", "on-demand")
    shown = cli.json("vm", "show", "s")
    assert isinstance(shown, dict) and shown["hydration"]["state"] == "starting" and shown["state"] == "stopped"
    assert verify(home.store).ok  # a streaming VM pins nothing the store lacks
    done = cli.json("vm", "hydrate", "s", "--wait")
    assert isinstance(done, dict) and done["hydration"]["state"] == "complete"
    assert done["hydration"]["bytes_local"] == done["hydration"]["bytes_total"] > 0
    version = cli.json("version", "show", f"{REPO}@1.0.0")
    assert isinstance(version, dict) and version["provenance"]["pulled_from"]["remote"] == "origin"
    record = cli.json("vm", "show", "s")
    assert isinstance(record, dict) and record["version_digest"] == version["record"]
    assert home.store.list_names(LEASES) == [] and verify(home.store, deep=True).ok
    cli("vm", "delete", "s")
