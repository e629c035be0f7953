"""Homes with published versions for the remote tests (no QEMU: disks are ingested from bytes)."""

from __future__ import annotations

import random
from pathlib import Path

from imgtool.flows.publishing import publish_version as publish
from imgtool.gallery import galleries as gallery
from imgtool.gallery.image_versions import PublishRequest, export
from imgtool.gallery.model import Definition
from imgtool.home import Home
from imgtool.names import DefinitionRef, Version
from imgtool.oci.target import Target
from imgtool.remote import remotes
from imgtool.remote.connect import open_target
from imgtool.trust.homes import trust_store
from store.ingest import ingest

CHUNK = 128 << 10


def disk_bytes(size: int, seed: int) -> bytearray:
    """Half random, half repetitive (compressible) chunks, with a few all-zero chunks."""
    rng = random.Random(seed)
    data = bytearray()
    for i in range(size // CHUNK):
        if i % 7 == 3:
            data += bytes(CHUNK)
        elif i % 2:
            data += rng.randbytes(CHUNK)
        else:
            data += (f"chunk {i} seed {seed} ".encode() * (CHUNK // 16 + 1))[:CHUNK]
    return data


def changed(data: bytearray, fraction: float, seed: int) -> bytearray:
    """A copy with `fraction` of its chunks rewritten."""
    rng = random.Random(seed)
    out = bytearray(data)
    count = len(data) // CHUNK
    for i in rng.sample(range(count), max(1, int(count * fraction))):
        out[i * CHUNK:(i + 1) * CHUNK] = rng.randbytes(CHUNK)
    return out


def make_home(root: Path, *, gallery_name: str = "team", definition: str = "base") -> Home:
    home = Home.at(root)
    gallery.create_gallery(home, gallery_name, "the team's images")
    gallery.create_definition(home, Definition(gallery_name, definition, "acme", definition, "v1", "linux",
                                               "generalized", description="a base image"))
    return home


def publish_bytes(home: Home, ref: str, version: str, data: bytes | bytearray, **settings: object) -> None:
    """Publish `data` as a version's OS disk. These bytes hold no guest OS the audit could read, so a
    generalized definition takes them only with the override (recorded on the version); tests of the
    audit gate itself live in tests/test_guest_offline.py."""
    settings.setdefault("allow_unaudited", True)
    with home.store.writing():
        disk = ingest(home.store, virtual_size=len(data), read=lambda o, n: bytes(data[o:o + n]),
                      indexes=range(-(-len(data) // CHUNK))).digest
    g, d = ref.split("/")
    publish(home, PublishRequest(DefinitionRef(g, d), Version.parse(version), os_disk=disk,
                                 **settings))  # type: ignore[arg-type]


def exported(home: Home, ref: str, out: Path) -> bytes:
    export(home, ref, out, fmt="raw")
    return out.read_bytes()


def accept_unsigned(home: Home, name: str) -> None:
    """`imgtool trust policy NAME any`: these tests move unsigned versions (tests/trust covers signed ones)."""
    trust_store(home).set_policy(name, "any")


def add_remote(home: Home, name: str, url: str) -> tuple[remotes.Remote, Target]:
    remote = remotes.add(home, name, url)
    accept_unsigned(home, name)
    return remote, open_target(home, remote)
