"""oras-py, a second independent OCI client, against the real registry: it lists and pulls what imgtool
pushed (and the disk is rebuilt from its files by a decoder written from docs/STORE-FORMAT.md, not
imgtool's), and what oras pushes that is not an imgtool version is refused by imgtool, store unchanged.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import blake3
import oras.client
import oras.oci
import pytest
import zstandard

from tests.cli import Cli
from tests.remote.helpers import disk_bytes, make_home, publish_bytes
from tests.remote.registry import Registry
from tests.remote.test_cli_remote import cli_for

pytestmark = pytest.mark.integration

INDEX_TYPE = "application/vnd.imgtool.chunk-index.v1"
PACK_TYPE = "application/vnd.imgtool.pack.v1.zstd-frames"
VERSION_TYPE = "application/vnd.imgtool.version.v1+json"
_HEAD = struct.Struct("<8sQIII")  # docs/STORE-FORMAT.md, Chunk index blobs
_ENTRY = struct.Struct("<Q32sIQII")


def rebuild(index: bytes, blobs: dict[str, bytes]) -> bytes:
    """A disk from its chunk index and packs, per docs/STORE-FORMAT.md; unlisted chunks are zero."""
    magic, virtual_size, chunk_size, pack_count, entry_count = _HEAD.unpack_from(index)
    assert magic == b"IMGRIDX1"
    packs = ["sha256:" + index[_HEAD.size + 32 * i:_HEAD.size + 32 * (i + 1)].hex() for i in range(pack_count)]
    disk = bytearray(virtual_size)
    base = _HEAD.size + 32 * pack_count
    for i in range(entry_count):
        chunk, digest, ordinal, offset, clen, rawlen = _ENTRY.unpack_from(index, base + i * _ENTRY.size)
        raw = zstandard.ZstdDecompressor().decompress(blobs[packs[ordinal]][offset:offset + clen])
        assert len(raw) == rawlen and blake3.blake3(raw).digest() == digest, f"chunk {chunk}"
        disk[chunk * chunk_size:chunk * chunk_size + rawlen] = raw
    return bytes(disk)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def client(registry: Registry) -> oras.client.OrasClient:
    return oras.client.OrasClient(hostname=registry.host, insecure=True)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` with the sha256 of its bytes (what "unchanged" is measured by)."""
    return {str(p.relative_to(root)): sha256(p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def pushed(registry: Registry, tmp_path: Path) -> tuple[Cli, dict[str, bytes]]:
    """Two versions of team/base pushed signed to REGISTRY/oras by the CLI; their disks' bytes."""
    src = make_home(tmp_path / "a")
    disks = {"1.0.0": bytes(disk_bytes(3 << 20, seed=80))}
    changed = bytearray(disks["1.0.0"])
    changed[1 << 20:(1 << 20) + 8192] = b"v1.1" * 2048
    disks["1.1.0"] = bytes(changed)
    for version, data in disks.items():
        publish_bytes(src, "team/base", version, data)
    a = cli_for(src.root, tmp_path)
    a("key", "generate", "release")
    a("remote", "add", "origin", f"{registry.url}/oras")
    a("push", "team", "origin", "--sign", "release")
    return a, disks


def test_oras_lists_and_pulls_an_imgtool_version(registry: Registry, pushed: tuple[Cli, dict[str, bytes]],
                                                  tmp_path: Path) -> None:
    _, disks = pushed
    oc = client(registry)
    repo = f"{registry.host}/oras/team/base"
    tags = oc.get_tags(repo)
    versions = sorted(t for t in tags if not t.startswith("sha256-"))
    assert versions == ["1.0.0", "1.1.0"]
    assert len([t for t in tags if t.startswith("sha256-")]) == 2  # the signatures' referrers tag schema

    for version, data in disks.items():
        manifest = oc.get_manifest(f"{repo}:{version}")
        assert manifest["artifactType"] == VERSION_TYPE
        files = [Path(f) for f in oc.pull(target=f"{repo}:{version}", outdir=str(tmp_path / version))]
        assert len(files) == len(manifest["layers"])
        blobs = {}
        for layer, file in zip(manifest["layers"], files, strict=True):
            body = file.read_bytes()
            assert (sha256(body), len(body)) == (layer["digest"], layer["size"])  # oras-py checks neither
            blobs[layer["digest"]] = body
        [index] = [layer for layer in manifest["layers"] if layer["mediaType"] == INDEX_TYPE]
        assert {layer["mediaType"] for layer in manifest["layers"]} == {INDEX_TYPE, PACK_TYPE}
        assert rebuild(blobs[index["digest"]], blobs) == data

        config = Path(oc.download_blob(repo, manifest["config"]["digest"], str(tmp_path / f"{version}.json")))
        assert sha256(config.read_bytes()) == manifest["config"]["digest"]
        record = json.loads(config.read_bytes())
        assert record["kind"] == "imgtool-version-config" and record["version"]["version"] == version


def oras_push(registry: Registry, target: str, folder: Path, **kwargs: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    notes = folder / "notes.txt"
    notes.write_text("not a disk image\n")
    response = client(registry).push(target=f"{registry.host}/{target}", files=[str(notes)],
                                     disable_path_validation=True, quiet=True, **kwargs)
    assert response.status_code == 201


def refused(cli: Cli, code: int, *args: str) -> str:
    """Run a command that must fail cleanly: exit `code`, one error and a hint, no traceback."""
    done = cli(*args, ok=False)
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.startswith("imgtool: error: ") and "\n  hint: " in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr


def test_an_oras_artifact_is_refused_and_the_store_is_unchanged(registry: Registry,
                                                                pushed: tuple[Cli, dict[str, bytes]],
                                                                tmp_path: Path) -> None:
    oras_push(registry, "oras/team/base:2.0.0", tmp_path / "o")  # beside imgtool's versions
    oras_push(registry, "oras/team/notes:1.0.0", tmp_path / "o")  # a repository of its own
    b = cli_for(tmp_path / "b", tmp_path)
    b("remote", "add", "origin", f"{registry.url}/oras")
    b("trust", "policy", "origin", "any")
    before = snapshot(b.home)

    message = refused(b, 2, "pull", "origin:team/base@2.0.0")
    assert "is not an imgtool version (no artifact type; config type 'application/vnd.unknown.config" in message
    assert "is not an imgtool version" in refused(b, 2, "pull", "origin:team/notes@1.0.0")
    assert "1.0.0 is not an imgtool version" in refused(b, 2, "remote", "versions", "origin:team/notes")
    assert "1.0.0 is not an imgtool version" in refused(b, 2, "pull", "origin:team/notes")
    assert snapshot(b.home) == before

    listed = b.json("remote", "versions", "origin:team/base")
    assert isinstance(listed, dict)
    assert [v["version"] for v in listed["versions"]] == ["1.0.0", "1.1.0"]  # the oras tag is not a version
    assert listed["latest"] == "1.1.0"


def test_an_oras_artifact_dressed_as_an_imgtool_version_is_refused(registry: Registry, tmp_path: Path) -> None:
    """The artifact type says imgtool version; the config and layers say otherwise: refused, not guessed at."""
    oc = client(registry)
    container = oc.get_container(f"{registry.host}/oras/team/fake:1.0.0")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a disk image\n")
    layer = oras.oci.NewLayer(str(notes), media_type=INDEX_TYPE)
    assert oc.upload_blob(str(notes), container, layer).status_code == 201
    config, _ = oras.oci.ManifestConfig()
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    assert oc.upload_blob(str(empty), container, config).status_code == 201
    manifest = {**oras.oci.NewManifest(), "artifactType": VERSION_TYPE, "config": config, "layers": [layer]}
    assert oc.upload_manifest(manifest, container).status_code == 201

    b = cli_for(tmp_path / "b", tmp_path)
    b("remote", "add", "origin", f"{registry.url}/oras")
    b("trust", "policy", "origin", "any")
    before = snapshot(b.home)
    message = refused(b, 6, "pull", "origin:team/fake@1.0.0")
    assert "unknown or oversized config" in message
    assert snapshot(b.home) == before
