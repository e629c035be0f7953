"""imgtool pull against a registry that lies (tests/remote/liar.py): every lie refused with a clear
message (never an internal error), nothing named locally, memory and time bounded by limits.

The liar holds a real version pushed by imgtool; transport lies spoil the answers on the way out,
content lies are forged with the real format code (tests/trust/forge.py) so that only the lie is
wrong. The figures in docs/RELIABILITY.md ("Hostile registries") come from this file.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imgtool.flows import sharing
from imgtool.home import Home
from imgtool.remote import format as fmt
from imgtool.remote import registry, remotes
from imgtool.remote.errors import RemoteFailed
from imgtool.trust.homes import trust_store
from tests.cli import Cli
from tests.remote.helpers import disk_bytes, make_home, publish_bytes
from tests.remote.liar import Liar
from tests.remote.liar import running as liar_running
from tests.trust.forge import Forged, disk_digest

REPO = "team/base"


@pytest.fixture(scope="module")
def liar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Liar]:
    with liar_running() as server:
        src = make_home(tmp_path_factory.mktemp("publisher"))
        publish_bytes(src, "team/base", "1.0.0", disk_bytes(2 << 20, seed=51))
        remotes.add(src, "liar", server.url)
        sharing.push_source(src, "team/base@1.0.0", "liar")
        yield server


@pytest.fixture
def user(liar: Liar, tmp_path: Path) -> Iterator[Cli]:
    liar.lies.clear()
    cli = Cli(tmp_path / "user", env={"HOME": str(tmp_path / "h"), "REGISTRY_AUTH_FILE": "",
                                      "XDG_RUNTIME_DIR": str(tmp_path / "run")})
    cli("remote", "add", "origin", liar.url)
    cli("trust", "policy", "origin", "any")  # signatures are tests/trust/test_signed_remote.py's subject
    yield cli
    liar.lies.clear()


def refused(user: Cli, ref: str, *needles: str, codes: tuple[int, ...] = (2, 5, 6, 12)) -> str:
    done = user("pull", ref, ok=False)
    assert done.returncode in codes, (done.returncode, done.stderr)
    assert done.stderr.startswith("imgtool: error: ") and "internal error" not in done.stderr, done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr
    store = Home.at(user.home).store
    assert [key for key, _ in store.all_names()] == [], "a refused pull named something"
    return done.stderr


def pack_of(liar: Liar) -> str:
    return next(iter(Forged.of(liar, REPO, "1.0.0").packs()))


def test_the_honest_answer_pulls(user: Cli) -> None:
    assert user.json("pull", "origin:team/base@1.0.0")["status"] == "pulled"  # type: ignore[index]


# -- transport lies ---------------------------------------------------------------------------------------------------

def test_wrong_bytes_for_a_pack(user: Cli, liar: Liar) -> None:
    liar.lie("wrong-bytes", path=f"/v2/{REPO}/blobs/{pack_of(liar)}")
    refused(user, "origin:team/base@1.0.0", "chunk")  # the first chunk's frame fails before the pack's sha256


def test_wrong_bytes_for_the_config(user: Cli, liar: Liar) -> None:
    config = Forged.of(liar, REPO, "1.0.0").manifest["config"]["digest"]
    liar.lie("wrong-bytes", path=f"/v2/{REPO}/blobs/{config}")
    refused(user, "origin:team/base@1.0.0", "does not match")


@pytest.mark.parametrize("lie", ["huge-manifest", "huge-length", "endless"])
def test_a_manifest_past_the_size_limit(user: Cli, liar: Liar, lie: str) -> None:
    """Above 4 MiB, a Content-Length that says so, or a body that never ends: all stop at the limit."""
    liar.lie(lie, path=f"/v2/{REPO}/manifests/1.0.0")
    refused(user, "origin:team/base@1.0.0", "limit")


def test_a_connection_reset_mid_body_every_time(user: Cli, liar: Liar) -> None:
    liar.lie("truncate", path=f"/v2/{REPO}/blobs/{pack_of(liar)}")
    refused(user, "origin:team/base@1.0.0")


def test_a_reset_once_is_retried(user: Cli, liar: Liar) -> None:
    lie = liar.lie("truncate", path=f"/v2/{REPO}/blobs/{pack_of(liar)}", times=1)
    assert user.json("pull", "origin:team/base@1.0.0")["status"] == "pulled"  # type: ignore[index]
    assert lie.used == 1


def test_429_with_retry_after_is_honoured(user: Cli, liar: Liar) -> None:
    lie = liar.lie("status", path=f"/v2/{REPO}/manifests/1.0.0", status=429, times=2,
                   headers={"Retry-After": "1"}, body=b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}')
    assert user.json("pull", "origin:team/base@1.0.0")["status"] == "pulled"  # type: ignore[index]
    assert lie.used == 2


def test_disk_full_on_the_registry(user: Cli, liar: Liar) -> None:
    body = b'{"errors":[{"code":"UNKNOWN","message":"unknown error","detail":"write: no space left on device"}]}'
    liar.lie("status", path=f"/v2/{REPO}/blobs/.*", status=500, body=body)
    refused(user, "origin:team/base@1.0.0", "500")


def test_credentials_never_follow_a_redirect_to_another_host(liar: Liar, tmp_path: Path) -> None:
    liar.credentials = ("alice", "s3cret-pass")
    try:
        liar.lies.clear()
        cli = Cli(tmp_path / "user", env={"HOME": str(tmp_path / "h"), "REGISTRY_AUTH_FILE": ""})
        cli("remote", "add", "origin", liar.url)
        cli("trust", "policy", "origin", "any")
        env = {"IMGTOOL_HOME": str(cli.home), "HOME": str(tmp_path / "h"), "REGISTRY_AUTH_FILE": "",
               "PATH": "/usr/bin:/bin"}
        subprocess.run([sys.executable, "-m", "imgtool", "remote", "login", "origin", "--username", "alice",
                        "--password-stdin"], input="s3cret-pass\n", env=env, text=True, check=True, timeout=60,
                       capture_output=True)
        liar.lie("redirect", path=f"/v2/{REPO}/blobs/{pack_of(liar)}")
        before = len(liar.seen(liar.elsewhere_port))
        cli("pull", "origin:team/base@1.0.0")
        elsewhere = liar.seen(liar.elsewhere_port)[before:]
        assert elsewhere and not any(s.authorized for s in elsewhere)
        assert any(s.authorized for s in liar.seen() if s.port != liar.elsewhere_port)
    finally:
        liar.credentials = None


# -- content lies -----------------------------------------------------------------------------------------------------

def forge(liar: Liar, tag: str, change: Callable[[Forged], None]) -> None:
    """Version 1.0.0 re-published as `tag` (its record says `tag` too), with one lie in it."""
    forged = Forged.of(liar, REPO, "1.0.0")
    body = forged.config()
    body["version"]["version"] = tag
    forged.set_config(body)
    change(forged)
    forged.publish(tag)


def test_a_version_record_that_disagrees_with_its_tag(user: Cli, liar: Liar) -> None:
    liar.repo(REPO).tags["7.0.0"] = liar.repo(REPO).tags["1.0.0"]
    refused(user, "origin:team/base@7.0.0", "holds version team/base@1.0.0")


def _index_change(change: Callable[[fmt.DiskIndex], fmt.DiskIndex]) -> Callable[[Forged], None]:
    def apply(forged: Forged) -> None:
        forged.set_index(change(forged.index()))
    return apply


def _entry(index: fmt.DiskIndex, number: int, **changes: object) -> fmt.DiskIndex:
    entries = list(index.entries)
    entries[number] = dataclasses.replace(entries[number], **changes)  # type: ignore[arg-type]
    return dataclasses.replace(index, entries=entries)


def test_an_index_entry_outside_its_pack(user: Cli, liar: Liar) -> None:
    forge(liar, "7.0.1", _index_change(lambda i: _entry(i, 0, offset=10**9)))
    refused(user, "origin:team/base@7.0.1", "malformed")


def test_overlapping_index_entries(user: Cli, liar: Liar) -> None:
    forge(liar, "7.0.2", _index_change(lambda i: _entry(i, 1, offset=i.entries[0].offset + 1)))
    refused(user, "origin:team/base@7.0.2", "malformed")


def test_a_chunk_whose_blake3_does_not_match(user: Cli, liar: Liar) -> None:
    def corrupt(forged: Forged) -> None:
        old = next(iter(forged.packs()))
        entry = forged.index().entries[0]
        data = bytearray(forged.blob(old))
        data[entry.offset + entry.clen // 2] ^= 0x55  # inside the first chunk's frame
        forged.replace_pack(old, bytes(data))  # a pack that is its own sha256: only the chunk lies
    forge(liar, "7.0.3", corrupt)
    refused(user, "origin:team/base@7.0.3", "chunk")


def _config_change(change: Callable[[dict[str, object]], None]) -> Callable[[Forged], None]:
    def apply(forged: Forged) -> None:
        body = forged.config()
        change(body)
        forged.set_config(body)
    return apply


def test_config_names_that_traverse_paths(user: Cli, liar: Liar) -> None:
    def traverse(body: dict[str, object]) -> None:
        version = body["version"]
        assert isinstance(version, dict)
        version["gallery"] = "../../etc"
    forge(liar, "7.0.4", _config_change(traverse))
    refused(user, "origin:team/base@7.0.4", "is not GALLERY/DEFINITION")


def test_an_absurd_virtual_size(user: Cli, liar: Liar) -> None:
    """A consistent lie: the index, the disk digest and the version record all claim 2**62 bytes."""
    def absurd(forged: Forged) -> None:
        index = dataclasses.replace(forged.index(), virtual_size=2**62)
        forged.set_index(index)
        body = forged.config()
        version = body["version"]
        assert isinstance(version, dict)
        version["disks"][0]["virtual_size"] = 2**62
        version["disks"][0]["digest"] = disk_digest(index)
        forged.set_config(body)
    forge(liar, "7.0.5", absurd)
    refused(user, "origin:team/base@7.0.5", "size")


def test_absurd_descriptor_counts(user: Cli, liar: Liar) -> None:
    def many(forged: Forged) -> None:
        layer = forged.manifest["layers"][-1]
        forged.manifest["layers"] = forged.manifest["layers"] + [layer] * (fmt.MAX_LAYERS + 1)
    forge(liar, "7.0.6", many)
    refused(user, "origin:team/base@7.0.6", "layer")


def test_a_manifest_whose_bytes_are_not_its_digest(user: Cli, liar: Liar) -> None:
    digest = liar.repo(REPO).tags["1.0.0"]
    media, data = liar.repo(REPO).manifests[digest]
    liar.repo(REPO).manifests[digest] = (media, json.dumps(json.loads(data), indent=1).encode())
    try:
        refused(user, f"origin:team/base@1.0.0@{digest}", "pinned")
    finally:
        liar.repo(REPO).manifests[digest] = (media, data)


def test_a_very_slow_body_is_cut_off(liar: Liar, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One byte every 0.2 s for a 1 MB manifest: the body deadline (here 1 s + size at 1 MiB/s) cuts it."""
    monkeypatch.setattr(registry, "BODY_GRACE", 1.0)
    monkeypatch.setattr(registry, "BODY_MIN_RATE", 1 << 20)
    liar.lies.clear()
    home = Home.at(tmp_path / "user")
    remotes.add(home, "origin", liar.url)
    trust_store(home).set_policy("origin", "any")
    liar.lie("slow", path=f"/v2/{REPO}/manifests/1.0.0", limit=10**6, delay=0.2)
    with pytest.raises(RemoteFailed, match="took longer than"):
        sharing.pull_ref(home, "origin:team/base@1.0.0")
    assert home.store.all_names() == []
    liar.lies.clear()
