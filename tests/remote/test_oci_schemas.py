"""Every manifest, index and config imgtool writes, checked against the OCI image-spec JSON schemas.

The bytes are read where they land, not from imgtool: from the real registry's own storage (every
manifest revision of every repository, tagged or not: versions, signatures, revocation statements,
a replica and the referrers tag schema's indexes) and from an OCI layout folder's files. The schemas are Debian's
(tests/remote/oci_schemas.py), the validator is `jsonschema`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.remote import oci_schemas as oci
from tests.remote.helpers import disk_bytes, make_home, publish_bytes
from tests.remote.registry import Registry
from tests.remote.test_cli_remote import cli_for

pytestmark = pytest.mark.integration

# The wire names, as docs/STORE-FORMAT.md (Remote format) gives them.
VERSION_TYPE = "application/vnd.imgtool.version.v1+json"
CONFIG_TYPE = "application/vnd.imgtool.config.v1+json"
SIGNATURE_TYPE = "application/vnd.imgtool.signature.v1+json"
REVOCATION_TYPE = "application/vnd.imgtool.revocation.v1+json"


def stored_manifests(registry: Registry) -> dict[str, dict[str, bytes]]:
    """repository -> digest -> bytes of every manifest the registry holds, read from its storage folder."""
    root = registry.root / "data" / "docker" / "registry" / "v2"
    found: dict[str, dict[str, bytes]] = {}
    for revisions in (root / "repositories").rglob("_manifests/revisions/sha256"):
        repository = str(revisions.parent.parent.parent.relative_to(root / "repositories"))
        for link in revisions.glob("*/link"):
            digest = link.read_text().strip()
            found.setdefault(repository, {})[digest] = stored_blob(root, digest)
    return found


def stored_blob(root: Path, digest: str) -> bytes:
    hex_digest = digest.removeprefix("sha256:")
    return (root / "blobs" / "sha256" / hex_digest[:2] / hex_digest / "data").read_bytes()


def check_config(descriptor: dict[str, Any], data: bytes, what: str) -> None:
    """A config is what its descriptor says; the OCI-defined ones are checked against their schema."""
    assert len(data) == descriptor["size"] and oci_digest(data) == descriptor["digest"], what
    if descriptor["mediaType"] == oci.OCI_EMPTY:
        assert data == b"{}", f"{what}: the empty descriptor's blob must be {{}}"
    elif descriptor["mediaType"] == oci.OCI_CONFIG:
        assert not oci.problems("config-schema.json", json.loads(data)), what
    else:  # an artifact's own config: opaque to OCI; imgtool's is JSON, as its +json type says
        assert descriptor["mediaType"] == CONFIG_TYPE, f"{what}: config type {descriptor['mediaType']}"
        assert isinstance(json.loads(data), dict), what


def oci_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_repository(manifests: dict[str, bytes], read_blob: Any, repository: str) -> list[str]:
    """Validate every manifest and index of one repository; returns the artifact types seen."""
    types = []
    for digest, data in manifests.items():
        what = f"{repository}@{digest[:19]}"
        media_type = json.loads(data).get("mediaType", "(none)")
        body = oci.check_manifest_bytes(data, media_type, what)
        types.append(body.get("artifactType", media_type))
        if media_type == oci.OCI_INDEX:
            for entry in body["manifests"]:
                assert entry["digest"] in manifests, f"{what} lists a manifest the repository lacks"
            continue
        check_config(body["config"], read_blob(body["config"]["digest"]), f"{what} config")
        for layer in body["layers"]:
            assert len(read_blob(layer["digest"])) == layer["size"], f"{what} layer {layer['digest'][:19]}"
    return types


def publisher(tmp_path: Path, url: str) -> Any:
    src = make_home(tmp_path / "a")
    base = disk_bytes(2 << 20, seed=70)
    publish_bytes(src, "team/base", "1.0.0", base)
    changed = bytearray(base)
    changed[:4096] = b"v2" * 2048
    publish_bytes(src, "team/base", "1.1.0", changed)  # incremental: shares most packs with 1.0.0
    a = cli_for(src.root, tmp_path)
    a("key", "generate", "release")
    a("remote", "add", "origin", url)
    return a


def test_everything_pushed_signed_and_revoked_on_a_registry_is_valid_oci(registry: Registry,
                                                                          tmp_path: Path) -> None:
    oci.require_schemas()
    a = publisher(tmp_path, f"{registry.url}/schemas")
    a("push", "team", "origin", "--sign", "release")
    # New publishing settings: a new config and manifest under the same tag, signed again.
    a("version", "update", "team/base@1.1.0", "--exclude-from-latest")
    updated = a.json("push", "team/base@1.1.0", "origin", "--sign", "release")
    assert isinstance(updated, dict) and updated["versions"][0]["status"] == "updated"
    a("version", "revoke", "team/base@1.0.0", "--reason", "a test revocation", "--push", "origin",
      "--sign", "release")
    a("remote", "add", "mirror", f"{registry.url}/schemas-mirror")  # replication, signed for the mirror's name
    a("trust", "signing-key", "mirror", "release")
    a("version", "update", "team/base@1.1.0", "--replicate-to", "mirror")

    root = registry.root / "data" / "docker" / "registry" / "v2"
    stored = {r: m for r, m in stored_manifests(registry).items() if r.startswith("schemas")}
    assert sorted(stored) == ["schemas-mirror/team/base", "schemas/team/base"]
    mirrored = check_repository(stored["schemas-mirror/team/base"], lambda d: stored_blob(root, d), "the mirror")
    assert sorted(mirrored) == sorted([VERSION_TYPE, SIGNATURE_TYPE, oci.OCI_INDEX])
    types = check_repository(stored["schemas/team/base"], lambda d: stored_blob(root, d), "schemas/team/base")
    # Two versions and 1.1.0 updated, a signature on each manifest, one revocation, and the referrers
    # tag schema's indexes (one per signed manifest, kept as revisions when rewritten).
    assert sorted(t for t in types if t != oci.OCI_INDEX) == sorted([VERSION_TYPE] * 3 + [SIGNATURE_TYPE] * 3
                                                                     + [REVOCATION_TYPE])
    assert types.count(oci.OCI_INDEX) >= 3


def test_everything_pushed_to_an_oci_layout_folder_is_valid_oci(tmp_path: Path) -> None:
    oci.require_schemas()
    layout = tmp_path / "usb"
    a = publisher(tmp_path, f"oci-layout:{layout}")
    a("push", "team", "origin", "--sign", "release")
    a("version", "revoke", "team/base@1.0.0", "--reason", "a test revocation", "--push", "origin",
      "--sign", "release")

    [marker] = list(layout.rglob("oci-layout"))
    folder = marker.parent
    assert not oci.problems("image-layout-schema.json", json.loads(marker.read_bytes()))
    index = json.loads((folder / "index.json").read_bytes())
    assert not oci.index_problems(index), oci.index_problems(index)

    def read_blob(digest: str) -> bytes:
        return (folder / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()

    manifests = {}
    for path in (folder / "blobs" / "sha256").iterdir():
        data = path.read_bytes()
        assert oci_digest(data) == "sha256:" + path.name, f"{path} is not named by its sha256"
        try:
            body = json.loads(data)
        except ValueError:
            continue  # a pack or chunk index
        if isinstance(body, dict) and body.get("mediaType") in (oci.OCI_MANIFEST, oci.OCI_INDEX):
            manifests["sha256:" + path.name] = data
    assert {e["digest"] for e in index["manifests"]} <= set(manifests)
    types = check_repository(manifests, read_blob, str(folder))
    assert sorted(t for t in types if t != oci.OCI_INDEX) == sorted(
        [VERSION_TYPE, VERSION_TYPE, SIGNATURE_TYPE, SIGNATURE_TYPE, REVOCATION_TYPE])


# -- the validator itself: these checks can fail ------------------------------------------------------------------

GOOD: dict[str, Any] = {
    "schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "artifactType": VERSION_TYPE,
    "config": {"mediaType": CONFIG_TYPE, "digest": "sha256:" + "a" * 64, "size": 2},
    "layers": [{"mediaType": "application/vnd.imgtool.pack.v1.zstd-frames", "digest": "sha256:" + "b" * 64,
                "size": 10, "annotations": {"org.imgtool.x": "y"}}],
}


@pytest.mark.parametrize(("change", "complaint"), [
    ({"schemaVersion": 1}, "schemaVersion"),
    ({"layers": []}, "layers"),
    ({"mediaType": oci.OCI_INDEX}, "mediaType"),
    ({"artifactType": "not a media type"}, "artifactType"),
    ({"config": {"mediaType": CONFIG_TYPE, "digest": "sha256:a b", "size": 2}}, "config/digest"),
    ({"config": {"mediaType": CONFIG_TYPE, "digest": "blake3:" + "a" * 64, "size": 2}}, "config/digest"),
    ({"config": {"mediaType": CONFIG_TYPE, "digest": "sha256:" + "A" * 64, "size": 2}}, "config/digest"),
    ({"config": {"mediaType": CONFIG_TYPE, "digest": "sha256:" + "a" * 64, "size": "2"}}, "config/size"),
    ({"annotations": {"org.imgtool.n": 1}}, "annotations"),
    ({"subject": {"digest": "sha256:" + "c" * 64}}, "subject"),
])
def test_the_schema_check_refuses_what_the_spec_forbids(change: dict[str, Any], complaint: str) -> None:
    assert not oci.manifest_problems(GOOD)
    found = oci.manifest_problems({**GOOD, **change})
    assert any(p.startswith(complaint) for p in found), found


def test_the_index_check_refuses_an_entry_without_a_size_and_a_bad_artifact_type() -> None:
    entry = {"mediaType": oci.OCI_MANIFEST, "digest": "sha256:" + "d" * 64, "size": 5, "artifactType": VERSION_TYPE}
    assert not oci.index_problems({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [entry]})
    found = oci.index_problems({"schemaVersion": 2, "mediaType": oci.OCI_INDEX,
                                "manifests": [{**entry, "size": None, "artifactType": "x"}]})
    assert any(p.startswith("manifests/0/size") for p in found), found
    assert any(p.startswith("manifests/0/artifactType") for p in found), found
