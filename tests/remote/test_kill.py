"""kill -9 during push and pull, at exact points (the k-th request, or b body bytes into a blob).

After every kill: the remote has no tag whose blobs are missing; the local store is `verify --deep`
clean and names no partial version; the re-run completes and moves only what is still missing.
Default run: 30 points each way; IMGTOOL_CAMPAIGN=1: 100.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from imgtool.gallery.galleries import VERSIONS
from imgtool.home import Home
from imgtool.remote import format as fmt
from imgtool.remote import remotes
from imgtool.remote.knowledge import version_tags
from imgtool.remote.registry import RegistryClient
from store.packs import ChunkIndex
from store.verify import verify
from tests.reliability.harness import Zygote
from tests.remote.helpers import accept_unsigned, changed, disk_bytes, exported, make_home, publish_bytes
from tests.remote.proxy import Switch, proxy
from tests.remote.registry import Registry

pytestmark = pytest.mark.integration
POINTS = 100 if os.environ.get("IMGTOOL_CAMPAIGN") == "1" else 30


class Runner:
    def __init__(self, zygote: Zygote, switch: Switch) -> None:
        self.zygote, self.switch = zygote, switch

    def __call__(self, home: Path, *args: str, at_request: int | None = None,
                 at_byte: int | None = None) -> tuple[int, str, str]:
        """Run imgtool --json ARGS; with a kill point, the proxy SIGKILLs it there. Returns (status, out, err)."""
        argv = ["--json", *args]
        self.switch.arm(at_request=at_request, at_byte=at_byte)
        pid, files = self.zygote.spawn(argv, home=home)
        self.switch.aim(pid)
        done = self.zygote.wait(pid, files, argv)
        self.switch.reset()
        return done.status, done.stdout, done.stderr

    def measure(self, home: Path, *args: str) -> tuple[int, int]:
        """(requests, body bytes) of one complete run."""
        argv = ["--json", *args]
        self.switch.arm()
        pid, files = self.zygote.spawn(argv, home=home)
        self.switch.aim(pid)
        done = self.zygote.wait(pid, files, argv)
        assert done.status == 0, done.stderr
        counts = self.switch.requests, self.switch.bytes
        self.switch.reset()
        return counts


def points(requests: int, size: int) -> list[tuple[int | None, int | None]]:
    """Half at request counts, half at byte offsets, spread over the whole transfer."""
    by_request = [(1 + i * (requests - 1) // max(POINTS // 2 - 1, 1), None) for i in range(POINTS // 2)]
    by_byte = [(None, 1 + i * (size - 1) // (POINTS - POINTS // 2)) for i in range(POINTS - POINTS // 2)]
    return [*by_request, *by_byte]


def source_home(root: Path) -> tuple[Home, bytearray]:
    home = make_home(root)
    from imgtool.gallery.galleries import create_definition
    from imgtool.gallery.model import Definition

    create_definition(home, Definition("team", "extra", "acme", "extra", "v1", "linux", "generalized"))
    v1 = disk_bytes(1 << 20, seed=40)
    v2 = changed(v1, 0.2, seed=41)
    publish_bytes(home, "team/base", "1.0.0", v1)
    publish_bytes(home, "team/base", "2.0.0", v2)
    publish_bytes(home, "team/extra", "1.0.0", changed(v1, 0.1, seed=42))  # shares chunks: mounts
    return home, v2


def linked(registry: Registry, repo: str) -> set[str]:
    """The blobs linked into a repository, from the registry's own storage."""
    layers = registry.root / "data/docker/registry/v2/repositories" / repo / "_layers/sha256"
    return {"sha256:" + p.name for p in layers.iterdir()} if layers.is_dir() else set()


def check_remote(client: RegistryClient, repos: list[str]) -> list[str]:
    """Every tag's manifest names only blobs that are in its repository."""
    tagged = []
    for repo in repos:
        for tag in version_tags(client.tags(repo)):
            fetched = client.get_manifest(repo, tag)
            manifest = fmt.parse_manifest(fetched.data, fetched.digest, tag)
            for blob in [manifest.config, *manifest.indexes, *manifest.packs.values()]:
                assert client.blob_size(repo, blob.digest) is not None, f"{repo}:{tag} misses {blob.digest}"
            tagged.append(f"{repo}:{tag}")
    return tagged


def test_kill_during_push(registry: Registry, zygote: Zygote, tmp_path: Path) -> None:
    src, _ = source_home(tmp_path / "src")
    direct = RegistryClient(registry.url, label="direct", credentials=None)
    with proxy(registry.url) as (url, switch):
        run = Runner(zygote, switch)
        # Warm the local index cache first: the killed pushes run with it warm too.
        remotes.add(src, "warm", f"{url}/killpush-warm")
        assert run(src.root, "push", "team", "warm")[0] == 0
        remotes.add(src, "measure", f"{url}/killpush-measure")
        total_requests, total_bytes = run.measure(src.root, "push", "team", "measure")
        assert total_requests >= POINTS // 2

        for number, (at_request, at_byte) in enumerate(points(total_requests, total_bytes)):
            prefix = f"killpush{number}"
            remotes.add(src, f"k{number}", f"{url}/{prefix}")
            repos = [f"{prefix}/team/base", f"{prefix}/team/extra"]
            status, _out, err = run(src.root, "push", "team", f"k{number}", at_request=at_request, at_byte=at_byte)
            assert status == -9, f"point {number} did not kill: {err}"
            check_remote(direct, repos)
            before = {repo: linked(registry, repo) for repo in repos}
            status, out, err = run(src.root, "push", "team", f"k{number}")
            assert status == 0, err
            results = json.loads(out)["versions"]
            assert len(check_remote(direct, repos)) == 3
            # Packs no repository held before the re-run are uploaded exactly once (then mounted where
            # else they are needed); packs some repository held are never uploaded again.
            present = set().union(*before.values())
            missing = set()
            for repo in repos:
                for tag in version_tags(direct.tags(repo)):
                    fetched = direct.get_manifest(repo, tag)
                    manifest = fmt.parse_manifest(fetched.data, fetched.digest, tag)
                    missing |= {p for p in manifest.packs if p not in present}
            uploaded = sum(r["packs_uploaded"] for r in results)
            assert uploaded == len(missing), f"point {number}: uploaded {uploaded} packs, {len(missing)} were missing"
    direct.close()


def test_kill_during_pull(registry: Registry, zygote: Zygote, tmp_path: Path) -> None:
    src, v2 = source_home(tmp_path / "src")
    wanted = set(src.store.get_disk(
        json.loads(json.dumps(src.store.get_manifest(src.store.get_name(VERSIONS, "team", "base", "2.0.0") or "")))
        ["disks"][0]["digest"]).chunks.values())
    with proxy(registry.url) as (url, switch):
        run = Runner(zygote, switch)
        remotes.add(src, "origin", f"{url}/killpull")
        assert run(src.root, "push", "team", "origin")[0] == 0
        probe = make_home(tmp_path / "probe", gallery_name="other")
        remotes.add(probe, "origin", f"{url}/killpull")
        accept_unsigned(probe, "origin")
        total_requests, total_bytes = run.measure(probe.root, "pull", "origin:team/base@2.0.0")

        for number, (at_request, at_byte) in enumerate(points(total_requests, total_bytes)):
            home = Home.at(tmp_path / f"dst{number}")
            remotes.add(home, "origin", f"{url}/killpull")
            accept_unsigned(home, "origin")
            status, _out, err = run(home.root, "pull", "origin:team/base@2.0.0", at_request=at_request,
                                    at_byte=at_byte)
            assert status == -9, f"point {number} did not kill: {err}"
            report = verify(home.store, deep=True)
            assert report.ok, report.problems
            assert home.store.get_name(VERSIONS, "team", "base", "2.0.0") is None
            have = ChunkIndex.load(home.store.layout)
            still_missing = {c for c in wanted if bytes.fromhex(c) not in have}
            status, out, err = run(home.root, "pull", "origin:team/base@2.0.0")
            assert status == 0, err
            assert json.loads(out)["chunks_fetched"] == len(still_missing)
            assert exported(home, "team/base@2.0.0", tmp_path / f"out{number}.raw") == bytes(v2)
            assert verify(home.store, deep=True).ok
