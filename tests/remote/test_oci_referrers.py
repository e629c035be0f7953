"""Referrers both ways: the native API (`GET /v2/<name>/referrers/<digest>`) on the spec-written test
registry (tests/remote/spec_registry.py), and the referrers tag schema on distribution 2.8, which has
no API. In each, the other path is taken away afterwards, and what imgtool decides shows which path it
used: signatures still verify and revocations still count, or the version is refused as unsigned.
A referrer that oras-py attaches (not imgtool's) is listed by the API and skipped by imgtool.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import oras.client
import oras.oci
import pytest

from imgtool.remote.connect import close
from tests.cli import Cli
from tests.remote import oci_schemas as oci
from tests.remote.helpers import add_remote, disk_bytes, make_home, publish_bytes
from tests.remote.registry import Registry
from tests.remote.spec_registry import SpecRegistry
from tests.remote.spec_registry import running as spec_running
from tests.remote.test_cli_remote import cli_for

pytestmark = pytest.mark.integration

SIGNATURE_TYPE = "application/vnd.imgtool.signature.v1+json"
REVOCATION_TYPE = "application/vnd.imgtool.revocation.v1+json"


@pytest.fixture
def spec() -> Iterator[SpecRegistry]:
    with spec_running() as server:
        yield server


def publish_signed_and_revoke(tmp_path: Path, url: str) -> tuple[Path, dict[str, str]]:
    """Push team/base 1.0.0 and 1.1.0 signed by `release`, then revoke 1.0.0 there; the public key and
    the versions' manifest digests."""
    src = make_home(tmp_path / "publisher")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(1 << 20, seed=90))
    publish_bytes(src, "team/base", "1.1.0", disk_bytes(1 << 20, seed=91))
    a = cli_for(src.root, tmp_path)
    a("key", "generate", "release")
    public = tmp_path / "release.pub"
    public.write_text(a("key", "export", "release").stdout)
    a("remote", "add", "origin", url)
    pushed = a.json("push", "team", "origin", "--sign", "release")
    assert isinstance(pushed, dict)
    digests = {v["ref"].rsplit("@", 1)[1]: v["manifest"] for v in pushed["versions"]}
    a("version", "revoke", "team/base@1.0.0", "--reason", "CVE-2026-0001", "--push", "origin", "--sign", "release")
    return public, digests


def consumer(tmp_path: Path, name: str, url: str, public: Path) -> Cli:
    cli = cli_for(tmp_path / name, tmp_path)
    cli("remote", "add", "origin", url)
    cli("trust", "add", "origin", str(public))
    return cli


def check_consumer_sees_signatures_and_revocation(cli: Cli) -> None:
    listed = cli.json("remote", "versions", "origin:team/base")
    assert isinstance(listed, dict)
    assert {v["version"]: v["revoked"] for v in listed["versions"]} == {"1.0.0": "CVE-2026-0001", "1.1.0": None}
    assert listed["latest"] == "1.1.0"
    done = cli("pull", "origin:team/base@1.1.0")
    assert "unverified" not in done.stderr and "warning" not in done.stderr, done.stderr
    revoked = cli("pull", "origin:team/base@1.0.0", ok=False)
    assert revoked.returncode == 5 and "revoked: CVE-2026-0001" in revoked.stderr


def test_the_referrers_api_is_used_where_the_registry_has_it(spec: SpecRegistry, tmp_path: Path) -> None:
    url = f"{spec.url}/api"
    public, digests = publish_signed_and_revoke(tmp_path, url)
    repo = spec.repository("api/team/base")
    home = make_home(tmp_path / "probe")
    _, target = add_remote(home, "probe", url)
    try:
        assert target.supports_referrers_api("api/team/base")
        assert target.supports_referrers_api("api/team/other")  # the API answers for any repository
    finally:
        close(target)

    # The API lists the signature of each version and the revocation of 1.0.0, with their artifact types.
    for version, digest in digests.items():
        answer = httpx.get(f"{spec.url}/v2/api/team/base/referrers/{digest}")
        index = oci.check_manifest_bytes(answer.content, answer.headers["content-type"], f"referrers of {version}")
        types = sorted(m["artifactType"] for m in index["manifests"])
        assert types == sorted([SIGNATURE_TYPE] + ([REVOCATION_TYPE] if version == "1.0.0" else []))
    # Every referrer PUT was answered with OCI-Subject, so no referrers tag index was written: what a
    # consumer finds below it finds through the API, the only path there is.
    assert sorted(repo.tags) == ["1.0.0", "1.1.0"]
    assert not spec.requested("PUT", r"/manifests/sha256-")

    # oras attaches an artifact of its own to 1.1.0: the API lists it beside the signature; imgtool skips it.
    subject = httpx.get(f"{spec.url}/v2/api/team/base/manifests/1.1.0", headers={"Accept": oci.OCI_MANIFEST})
    sbom = tmp_path / "sbom.json"
    sbom.write_text('{"sbom": "not an imgtool signature"}')
    oras.client.OrasClient(hostname=spec.host, insecure=True).push(
        target=f"{spec.host}/api/team/base:sbom", files=[str(sbom)], disable_path_validation=True, quiet=True,
        subject=oras.oci.Subject(oci.OCI_MANIFEST, digests["1.1.0"], len(subject.content)))
    assert len(httpx.get(f"{spec.url}/v2/api/team/base/referrers/{digests['1.1.0']}").json()["manifests"]) == 2

    before = len(spec.seen)
    check_consumer_sees_signatures_and_revocation(consumer(tmp_path, "user", url, public))
    asked = {s.path for s in spec.seen[before:] if "/referrers/" in s.path}
    assert {f"/v2/api/team/base/referrers/{d}" for d in digests.values()} <= asked


def test_the_tag_schema_is_used_on_distribution(registry: Registry, tmp_path: Path) -> None:
    url = f"{registry.url}/tagschema"
    public, digests = publish_signed_and_revoke(tmp_path, url)
    home = make_home(tmp_path / "probe")
    _, target = add_remote(home, "probe", url)
    try:
        assert not target.supports_referrers_api("tagschema/team/base")
    finally:
        close(target)
    base = f"{registry.url}/v2/tagschema/team/base"
    assert httpx.get(f"{base}/referrers/{digests['1.1.0']}").status_code == 404  # distribution 2.8 has no API

    accept = {"Accept": oci.OCI_INDEX}
    for version, digest in digests.items():
        answer = httpx.get(f"{base}/manifests/sha256-{digest.removeprefix('sha256:')}", headers=accept)
        index = oci.check_manifest_bytes(answer.content, answer.headers["content-type"], f"tag index of {version}")
        types = sorted(m["artifactType"] for m in index["manifests"])
        assert types == sorted([SIGNATURE_TYPE] + ([REVOCATION_TYPE] if version == "1.0.0" else []))
        for entry in index["manifests"]:
            referrer = httpx.get(f"{base}/manifests/{entry['digest']}", headers={"Accept": oci.OCI_MANIFEST})
            assert json.loads(referrer.content)["subject"]["digest"] == digest
    check_consumer_sees_signatures_and_revocation(consumer(tmp_path, "user", url, public))

    # Take the tag index of 1.1.0 away: its signature cannot be found any more, so the pull is refused.
    tag = f"sha256-{digests['1.1.0'].removeprefix('sha256:')}"
    held = httpx.head(f"{base}/manifests/{tag}", headers=accept).headers["docker-content-digest"]
    assert httpx.delete(f"{base}/manifests/{held}").status_code == 202
    late = consumer(tmp_path, "late", url, public)
    refused = late("pull", "origin:team/base@1.1.0", ok=False)
    assert refused.returncode == 5 and "imgtool: error:" in refused.stderr, refused.stderr


def test_the_spec_registry_keeps_the_rules_it_is_trusted_for(spec: SpecRegistry) -> None:
    """The test server itself: digests checked, blobs required, referrers listed and filtered per the spec."""
    base = f"{spec.url}/v2/x/repo"
    session = httpx.post(f"{base}/blobs/uploads/")
    assert session.status_code == 202
    wrong = httpx.put(f"{spec.url}{session.headers['location']}?digest=sha256:{'0' * 64}", content=b"{}")
    assert wrong.status_code == 400 and b"DIGEST_INVALID" in wrong.content
    empty_digest = oci_digest(b"{}")
    session = httpx.post(f"{base}/blobs/uploads/")
    assert httpx.put(f"{spec.url}{session.headers['location']}?digest={empty_digest}", content=b"{}").status_code == 201

    def manifest(artifact_type: str, layer: str, subject: str | None = None) -> bytes:
        body: dict[str, object] = {
            "schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "artifactType": artifact_type,
            "config": {"mediaType": oci.OCI_EMPTY, "digest": empty_digest, "size": 2},
            "layers": [{"mediaType": oci.OCI_EMPTY, "digest": layer, "size": 2}]}
        if subject is not None:
            body["subject"] = {"mediaType": oci.OCI_MANIFEST, "digest": subject, "size": 1}
        return json.dumps(body).encode()

    headers = {"Content-Type": oci.OCI_MANIFEST}
    missing = httpx.put(f"{base}/manifests/v1", content=manifest("a/b", "sha256:" + "1" * 64), headers=headers)
    assert missing.status_code == 400 and b"MANIFEST_BLOB_UNKNOWN" in missing.content
    subject = manifest("a/subject", empty_digest)
    assert httpx.put(f"{base}/manifests/v1", content=subject, headers=headers).status_code == 201
    for kind in ("a/one", "a/two"):
        put = httpx.put(f"{base}/manifests/{oci_digest(manifest(kind, empty_digest, oci_digest(subject)))}",
                        content=manifest(kind, empty_digest, oci_digest(subject)), headers=headers)
        assert put.status_code == 201 and put.headers["oci-subject"] == oci_digest(subject)

    listed = httpx.get(f"{base}/referrers/{oci_digest(subject)}")
    assert sorted(m["artifactType"] for m in listed.json()["manifests"]) == ["a/one", "a/two"]
    filtered = httpx.get(f"{base}/referrers/{oci_digest(subject)}", params={"artifactType": "a/two"})
    assert [m["artifactType"] for m in filtered.json()["manifests"]] == ["a/two"]
    assert filtered.headers["oci-filters-applied"] == "artifactType"
    nothing = httpx.get(f"{base}/referrers/sha256:{'2' * 64}")
    assert nothing.status_code == 200 and nothing.json()["manifests"] == []


def oci_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
