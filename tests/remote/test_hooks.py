"""The points the signing flows build on: the push hook, the pull check, and referrers (API or tag-schema fallback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgtool.errors import Refused
from imgtool.oci import referrers
from imgtool.oci.descriptor import Descriptor
from imgtool.oci.media import OCI_MANIFEST as MANIFEST_TYPE
from imgtool.oci.target import Target
from imgtool.remote.pull import Checked, Checking, pull
from imgtool.remote.push import Pushed, push
from store.verify import verify
from tests.remote.helpers import add_remote, disk_bytes, make_home, publish_bytes
from tests.remote.registry import Registry

pytestmark = pytest.mark.integration
SIG_TYPE = "application/vnd.example.signature.v1"


def put_referrer(target: Target, repo: str, subject: Descriptor, blob: bytes) -> Descriptor:
    manifest = referrers.referrer_manifest(subject, SIG_TYPE, Descriptor.of(SIG_TYPE, blob), {})
    return referrers.attach(target, repo, manifest, blob, artifact_type=SIG_TYPE)


@pytest.mark.parametrize("kind", ["registry", "layout"])
def test_hooks_see_the_manifest_before_any_name_and_referrers_travel(registry: Registry, tmp_path: Path,
                                                                     kind: str) -> None:
    src = make_home(tmp_path / "a")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(1 << 20, seed=70))
    url = f"{registry.url}/hooks" if kind == "registry" else f"oci-layout:{tmp_path / 'layout'}"
    remote, target = add_remote(src, "origin", url)
    seen: list[Pushed] = []

    def sign(event: Pushed) -> None:
        assert "1.0.0" not in event.target.tags(event.repository)  # before the tag
        put_referrer(event.target, event.repository, event.manifest, b"signature-bytes")
        seen.append(event)

    [pushed] = push(src, remote, target, "team", hook=sign)
    assert seen[0].manifest.digest == pushed.manifest
    found = referrers.listed(target, pushed.repository, pushed.manifest, artifact_type=SIG_TYPE)
    assert len(found) == 1
    again = put_referrer(target, pushed.repository, seen[0].manifest, b"signature-bytes")
    assert [d.digest for d in referrers.listed(target, pushed.repository, pushed.manifest)] == [again.digest]
    assert referrers.fallback_tag(pushed.manifest) in target.tags(pushed.repository)  # neither has the referrers API

    dst = make_home(tmp_path / "b", gallery_name="x")
    remote_b, target_b = add_remote(dst, "origin", url)

    def refuse(event: Checking) -> Checked:
        raise Refused("no trusted signature", hint="trust a key")
    with pytest.raises(Refused):
        pull(dst, remote_b, target_b, "team/base@1.0.0", check=refuse)
    assert dst.store.get_name("versions", "team", "base", "1.0.0") is None
    assert dst.store.get_name("definitions", "team", "base") is None
    assert verify(dst.store).ok

    kept: list[str] = []

    def accept(event: Checking) -> Checked:
        sigs = referrers.listed(event.target, event.repository, event.fetched.digest, artifact_type=SIG_TYPE)
        assert event.version.version == "1.0.0"
        return Checked(keep=lambda local: kept.extend([local.label, *(d.digest for d in sigs)]))
    pull(dst, remote_b, target_b, "team/base@1.0.0", check=accept)
    assert kept == ["team/base@1.0.0", again.digest]


def test_subject_descriptor_shape() -> None:
    subject = Descriptor(MANIFEST_TYPE, "sha256:" + "a" * 64, 10)
    assert subject.to_json() == {"mediaType": MANIFEST_TYPE, "digest": "sha256:" + "a" * 64, "size": 10}
