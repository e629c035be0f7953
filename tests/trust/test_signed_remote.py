"""Signed versions end to end through the real command line and a real distribution 2.8 registry.

A publisher signs what it pushes; a user who trusts the publisher's key pulls only versions that
key signed for that exact name and digest; everything else is refused with the key ids found, and
nothing is stored or named.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgtool.clock import now
from imgtool.home import Home
from imgtool.oci import media
from imgtool.oci.descriptor import Descriptor
from imgtool.trust import referrers
from imgtool.trust import signatures as sig
from imgtool.trust.keys import KeyRing
from tests.cli import Cli
from tests.conftest import require_tools
from tests.remote.helpers import disk_bytes, make_home, publish_bytes
from tests.remote.registry import Registry, running
from tests.trust.oci import Adapter, Client

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    require_tools("docker-registry")
    with running() as reg:
        yield reg


def cli_for(root: Path, tmp_path: Path) -> Cli:
    return Cli(root, env={"HOME": str(tmp_path / "user"), "XDG_RUNTIME_DIR": str(tmp_path / "run"),
                          "REGISTRY_AUTH_FILE": ""})


@dataclass
class World:
    registry: Registry
    prefix: str
    publisher: Cli
    user: Cli
    pub_key: Path
    tmp: Path

    @property
    def url(self) -> str:
        return f"{self.registry.url}/{self.prefix}"

    def user_names(self) -> list[str]:
        """Every name in the user's store (galleries, definitions, versions, signatures)."""
        store = Home.at(self.user.home).store
        return ["/".join(key) for key, _ in store.all_names()]


@pytest.fixture
def world(registry: Registry, tmp_path: Path, request: pytest.FixtureRequest) -> World:
    prefix = request.node.name.replace("_", "-").lower()[:40].strip("-")
    src = make_home(tmp_path / "publisher")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(1 << 20, seed=41))
    publisher = cli_for(src.root, tmp_path)
    publisher("key", "generate", "release")
    pub = tmp_path / "release.pub"
    pub.write_text(publisher("key", "export", "release").stdout)
    publisher("remote", "add", "origin", f"{registry.url}/{prefix}")
    user = cli_for(tmp_path / "user-home", tmp_path)
    user("remote", "add", "origin", f"{registry.url}/{prefix}")
    return World(registry, prefix, publisher, user, pub, tmp_path)


def test_signed_push_verified_pull_and_offline_verify(world: World) -> None:
    pushed = world.publisher.json("push", "team/base@1.0.0", "origin", "--sign", "release")
    digest = pushed["versions"][0]["manifest"]  # type: ignore[index]
    world.user("trust", "add", "origin", str(world.pub_key))
    pulled = world.user("--json", "pull", "origin:team/base@1.0.0")
    assert json.loads(pulled.stdout)["manifest"] == digest and "warning" not in pulled.stderr
    assert "signatures/team/base/1.0.0" in world.user_names()
    verified = world.user.json("version", "verify", "team/base@1.0.0")
    key_id = world.publisher.json("key", "list")[0]["key_id"]  # type: ignore[index]
    assert verified == {"ref": "team/base@1.0.0", "gallery": "team", "definition": "base", "version": "1.0.0",
                        "remote": "origin", "manifest": digest, "policy": "signed", "verified_by": [key_id]}
    # A cache hit is judged again: the pull of a present version checks the remote's signature too.
    again = world.user.json("pull", "origin:team/base@1.0.0")
    assert again["status"] == "present"  # type: ignore[index]
    # Pinned references: the right digest works, any other is an error, never a fallback.
    world.user("pull", f"origin:team/base@1.0.0@{digest}")
    wrong = world.user("pull", "origin:team/base@1.0.0@sha256:" + "0" * 64, ok=False)
    assert wrong.returncode == 5 and "pinned to" in wrong.stderr
    assert world.user("verify", "--deep").returncode == 0
    world.user("gc")  # the signature set is a named root: gc keeps it
    assert world.user.json("version", "verify", "team/base@1.0.0")["policy"] == "signed"  # type: ignore[index]
    # Trust withdrawn: the local copy is refused offline as well.
    world.user("trust", "remove", "origin")
    refused = world.user("version", "verify", "team/base@1.0.0", ok=False)
    assert refused.returncode == 5 and "no trust policy" in refused.stderr


def assert_refused_and_nothing_named(world: World, ref: str, *needles: str) -> str:
    before = world.user_names()
    refused = world.user("pull", ref, ok=False)
    assert refused.returncode == 5, refused.stderr
    assert "Traceback" not in refused.stderr
    for needle in needles:
        assert needle in refused.stderr, refused.stderr
    assert world.user_names() == before
    assert world.user("verify").returncode == 0
    return refused.stderr


def test_unsigned_is_refused_and_nothing_is_stored(world: World) -> None:
    world.publisher("push", "team/base@1.0.0", "origin")
    world.user("trust", "add", "origin", str(world.pub_key))
    assert_refused_and_nothing_named(world, "origin:team/base@1.0.0", "is not signed", "nothing was stored")
    assert world.user("gallery", "list").stdout.strip() == "(none)"


def test_no_policy_is_refused_and_any_warns(world: World) -> None:
    world.publisher("push", "team/base@1.0.0", "origin")
    assert_refused_and_nothing_named(world, "origin:team/base@1.0.0", "no trust policy", "trust policy origin any")
    world.user("trust", "policy", "origin", "any")
    pulled = world.user("pull", "origin:team/base@1.0.0")
    assert "imgtool: warning:" in pulled.stderr and "unverified" in pulled.stderr
    verified = world.user("version", "verify", "team/base@1.0.0")
    assert "not verified" in verified.stdout and "warning" in verified.stderr


def test_wrong_key_is_refused_naming_the_key_found(world: World) -> None:
    world.publisher("key", "generate", "intruder")
    pushed = world.publisher.json("push", "team/base@1.0.0", "origin", "--sign", "intruder")
    assert pushed["versions"][0]["status"] == "pushed"  # type: ignore[index]
    world.user("trust", "add", "origin", str(world.pub_key))
    keys = world.publisher.json("key", "list")
    assert isinstance(keys, list)
    intruder = next(k["key_id"] for k in keys if k["name"] == "intruder")
    assert_refused_and_nothing_named(world, "origin:team/base@1.0.0", intruder[:23], "not a trusted key")


def test_a_signature_for_another_repository_is_refused(world: World) -> None:
    """skopeo copies the version to another prefix (same digest); its signature is copied along; the
    signed name is the old repository, so a user of the copy refuses it."""
    require_tools("skopeo")
    pushed = world.publisher.json("push", "team/base@1.0.0", "origin", "--sign", "release")
    digest = pushed["versions"][0]["manifest"]  # type: ignore[index]
    host = world.registry.host
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                    f"docker://{host}/{world.prefix}/team/base:1.0.0", f"docker://{host}/copy-{world.prefix}/team/base:1.0.0"],
                   check=True, capture_output=True, timeout=120)
    adapter = Adapter(Client(host))
    assert referrers.copy_all(adapter, f"{world.prefix}/team/base", adapter, f"copy-{world.prefix}/team/base",
                              digest) == 1
    world.user("remote", "add", "copy", f"{world.registry.url}/copy-{world.prefix}")
    world.user("trust", "add", "copy", str(world.pub_key))
    assert_refused_and_nothing_named(world, "copy:team/base@1.0.0", "signs another name")


def test_a_signature_over_another_digest_is_refused(world: World) -> None:
    pushed = world.publisher.json("push", "team/base@1.0.0", "origin")
    digest = pushed["versions"][0]["manifest"]  # type: ignore[index]
    key = KeyRing(world.publisher.home / "keys").load("release")
    name = sig.SignedName(world.registry.host, f"{world.prefix}/team/base", "team", "base", "1.0.0")
    envelope = sig.sign(key, name, "sha256:" + "ab" * 32, signed_at=now())
    adapter = Adapter(Client(world.registry.host))
    manifest = adapter.get_manifest(f"{world.prefix}/team/base", digest).data
    assert manifest is not None
    subject = Descriptor(media.OCI_MANIFEST, digest, len(manifest))
    referrers.attach(adapter, f"{world.prefix}/team/base",
                     referrers.make(envelope, subject, key_id=key.public.key_id, created=now()))
    world.user("trust", "add", "origin", str(world.pub_key))
    assert_refused_and_nothing_named(world, "origin:team/base@1.0.0", "signs another manifest")


def test_default_signing_key_and_signing_on_push_onwards(world: World, registry: Registry) -> None:
    world.publisher("trust", "signing-key", "origin", "release")
    world.publisher("push", "team/base@1.0.0", "origin")  # no --sign: the remote's default key signs
    world.user("trust", "add", "origin", str(world.pub_key))
    world.user("pull", "origin:team/base@1.0.0")
    # The user pushes the verified version on to another repository, signing it with their own key.
    world.user("key", "generate", "relay")
    relay = world.tmp / "relay.pub"
    relay.write_text(world.user("key", "export", "relay").stdout)
    world.user("remote", "add", "onward", f"{registry.url}/onward-{world.prefix}")
    world.user("push", "team/base@1.0.0", "onward", "--sign", "relay")
    third = cli_for(world.tmp / "third", world.tmp)
    third("remote", "add", "onward", f"{registry.url}/onward-{world.prefix}")
    third("trust", "add", "onward", str(relay))
    third("pull", "onward:team/base@1.0.0")
    assert third.json("version", "verify", "team/base@1.0.0")["policy"] == "signed"  # type: ignore[index]



def test_latest_is_the_highest_verified_version(world: World) -> None:
    src = Home.at(world.publisher.home)
    publish_bytes(src, "team/base", "1.1.0", disk_bytes(1 << 20, seed=42))
    world.publisher("push", "team/base@1.0.0", "origin", "--sign", "release")
    world.publisher("push", "team/base@1.1.0", "origin")  # unsigned, and higher
    world.user("trust", "add", "origin", str(world.pub_key))
    listed = world.user.json("remote", "versions", "origin:team/base", "--explain")
    assert listed["latest"] == "1.0.0"  # type: ignore[index]
    reasons = {c["version"]: c["reason"] for c in listed["candidates"]}  # type: ignore[index]
    assert reasons["1.1.0"].startswith("dropped: not verified") and "is not signed" in reasons["1.1.0"]

    pulled = world.user.json("pull", "origin:team/base")
    assert pulled["tag"] == "1.0.0"  # type: ignore[index]


def test_a_long_refusal_reaches_remote_versions_whole(world: World) -> None:
    src = Home.at(world.publisher.home)
    publish_bytes(src, "team/base", "1.1.0", disk_bytes(1 << 20, seed=42))
    for key in ("stranger", "intruder"):  # two untrusted signatures make a refusal longer than 160 characters
        world.publisher("key", "generate", key)
        world.publisher("push", "team/base@1.1.0", "origin", "--sign", key)
    world.user("trust", "add", "origin", str(world.pub_key))
    why = world.user("pull", "origin:team/base@1.1.0", ok=False).stderr.split("error: ")[1].splitlines()[0]
    listed = world.user.json("remote", "versions", "origin:team/base", "--explain")
    reasons = {c["version"]: c["reason"] for c in listed["candidates"]}  # type: ignore[index]
    assert len(why) > 160 and reasons["1.1.0"] == f"dropped: not verified: {why}"


def test_vm_new_reverifies_from_the_store(world: World) -> None:
    """Pulled under `any`, then the publisher's key is trusted: vm new refuses the unchecked copy until
    a pull (a cache hit) verifies it and keeps its signatures; then vm new works, offline checks included."""
    require_tools("qemu-img")
    world.publisher("push", "team/base@1.0.0", "origin", "--sign", "release")
    world.user("trust", "policy", "origin", "any")
    world.user("pull", "origin:team/base@1.0.0")
    world.user("trust", "remove", "origin")
    world.user("trust", "add", "origin", str(world.pub_key))
    key = world.tmp / "id.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC5mZXhhbXBsZWtleWZvcnRlc3RzMDAwMDAwMDAw test\n")
    vm = ("vm", "new", "box", "--image", "team/base@1.0.0", "--ssh-key", str(key), "--admin-user", "dev")
    refused = world.user(*vm, ok=False)
    assert refused.returncode == 5 and "pulled without signature checks" in refused.stderr, refused.stderr
    assert world.user.json("pull", "origin:team/base@1.0.0")["status"] == "present"  # type: ignore[index]
    world.user(*vm)
    assert world.user.json("version", "verify", "team/base@1.0.0")["policy"] == "signed"  # type: ignore[index]
    world.user("trust", "remove", "origin")
    again = world.user("vm", "new", "box2", "--image", "team/base@1.0.0", "--ssh-key", str(key), ok=False)
    assert again.returncode == 5 and "no trust policy" in again.stderr


def test_replication_signs_each_target_for_its_own_name(world: World) -> None:
    world.publisher("remote", "add", "mirror", f"{world.registry.url}/mirror-{world.prefix}")
    world.publisher("trust", "signing-key", "mirror", "release")
    world.publisher("version", "update", "team/base@1.0.0", "--replicate-to", "mirror")
    world.publisher("replicate")
    world.user("remote", "add", "mirror", f"{world.registry.url}/mirror-{world.prefix}")
    world.user("trust", "add", "mirror", str(world.pub_key))
    world.user("pull", "mirror:team/base@1.0.0")
    assert world.user.json("version", "verify", "team/base@1.0.0")["remote"] == "mirror"  # type: ignore[index]


def test_version_verify_catches_a_tampered_local_copy(world: World) -> None:
    world.publisher("push", "team/base@1.0.0", "origin", "--sign", "release")
    world.user("trust", "add", "origin", str(world.pub_key))
    world.user("pull", "origin:team/base@1.0.0")
    store = Home.at(world.user.home).store
    original = store.get_name("signatures", "team", "base", "1.0.0")
    assert original is not None
    stored = store.get_manifest(original)

    def with_set(changed: dict[str, object]) -> subprocess.CompletedProcess[str]:
        store.set_name("signatures", "team", "base", "1.0.0", target=store.put_manifest({**stored, **changed}))
        return world.user("version", "verify", "team/base@1.0.0", ok=False)

    config = json.loads(base64.b64decode(stored["config"]))
    config["version"]["disks"][0]["virtual_size"] += 1
    other_config = base64.b64encode(json.dumps(config).encode()).decode()
    assert with_set({"config": other_config}).returncode == 6
    assert with_set({"manifest": base64.b64encode(b"{}").decode()}).returncode == 6
    referrer = dict(stored["referrers"][0])
    envelope = json.loads(base64.b64decode(referrer["envelope"]))
    envelope["sig"] = base64.b64encode(bytes(64)).decode()
    referrer["envelope"] = base64.b64encode(json.dumps(envelope).encode()).decode()
    forged = with_set({"referrers": [referrer]})
    assert forged.returncode == 5 and "bad signature" in forged.stderr
    store.set_name("signatures", "team", "base", "1.0.0", target=original)
    assert world.user("version", "verify", "team/base@1.0.0").returncode == 0


def test_signing_a_version_already_pushed(world: World) -> None:
    world.publisher("push", "team/base@1.0.0", "origin")
    world.user("trust", "add", "origin", str(world.pub_key))
    assert "is not signed" in world.user("pull", "origin:team/base@1.0.0", ok=False).stderr
    again = world.publisher.json("push", "team/base@1.0.0", "origin", "--sign", "release")
    assert again["versions"][0]["status"] == "present"  # type: ignore[index]
    digest = again["versions"][0]["manifest"]  # type: ignore[index]
    world.publisher("push", "team/base@1.0.0", "origin", "--sign", "release")  # signed once, not twice
    adapter = Adapter(Client(world.registry.host))
    assert len(referrers.find(adapter, f"{world.prefix}/team/base", digest)) == 1
    world.user("pull", "origin:team/base@1.0.0")


def test_signed_versions_through_an_oci_layout_folder(world: World) -> None:
    layout = world.tmp / "usb"
    world.publisher("remote", "add", "usb", f"oci-layout:{layout}")
    world.publisher("push", "team/base@1.0.0", "usb", "--sign", "release")
    world.user("remote", "add", "usb", f"oci-layout:{layout}")
    world.user("trust", "add", "usb", str(world.pub_key))
    world.user("pull", "usb:team/base@1.0.0")
    assert world.user.json("version", "verify", "team/base@1.0.0")["remote"] == "usb"  # type: ignore[index]


def test_signing_follows_the_remote_for_every_way_a_version_reaches_it(world: World, registry: Registry) -> None:
    """The README's sharing section: a remote added --sign-with KEY gets every version signed, pushed or
    replicated by publish --replicate-to; a teammate whose policy requires that key pulls them."""
    url = f"{registry.url}/follows-{world.prefix}"
    world.publisher("remote", "add", "team-remote", url, "--sign-with", "release")
    disk = world.tmp / "v2.raw"
    disk.write_bytes(bytes(disk_bytes(1 << 20, seed=43)))
    world.publisher("publish", "team/base", "--version", "1.2.0", "--os-disk", str(disk), "--allow-unaudited",
                    "--replicate-to", "team-remote")
    world.publisher("push", "team/base@1.0.0", "team-remote")
    teammate = cli_for(world.tmp / "teammate", world.tmp)
    teammate("remote", "add", "team-remote", url)
    teammate("trust", "add", "team-remote", str(world.pub_key))
    assert teammate.json("pull", "team-remote:team/base@latest")["tag"] == "1.2.0"  # type: ignore[index]
    teammate("pull", "team-remote:team/base@1.0.0")
    for version in ("1.0.0", "1.2.0"):
        verified = teammate.json("version", "verify", f"team/base@{version}")
        assert verified["policy"] == "signed"  # type: ignore[index]
    missing = world.publisher("remote", "add", "other", url, "--sign-with", "nobody", ok=False)
    assert missing.returncode == 3 and "other" not in world.publisher("remote", "list").stdout
