"""Lifecycle across a real distribution registry: boot-check state and revocation travel to other stores.

A publisher pushes signed versions; a user who trusts the publisher's key pulls one and makes a VM from
it. The remote's `latest` obeys the publisher's boot checks; a revocation pushed as a signed statement
makes pulls refuse the version and `remote sync` marks the user's copy (and so its VM) revoked. A
statement signed by a key the user does not trust is reported and ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgtool.home import Home
from tests.cli import Cli
from tests.conftest import require_tools
from tests.remote.helpers import disk_bytes, make_home, publish_bytes
from tests.remote.registry import Registry, running

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    require_tools("docker-registry", "qemu-img")
    with running() as reg:
        yield reg


def cli_for(root: Path, tmp_path: Path) -> Cli:
    return Cli(root, env={"HOME": str(tmp_path / "user"), "XDG_RUNTIME_DIR": str(tmp_path / "run"),
                          "REGISTRY_AUTH_FILE": ""})


def listing(cli: Cli) -> dict[str, Any]:
    found = cli.json("remote", "versions", "origin:team/base")
    assert isinstance(found, dict)
    return found


def names(cli: Cli) -> list[str]:
    return ["/".join(key) for key, _ in Home.at(cli.home).store.all_names()]


def test_check_state_and_signed_revocations_reach_other_stores(registry: Registry, tmp_path: Path) -> None:
    src = make_home(tmp_path / "publisher")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(1 << 20, seed=7))
    publish_bytes(src, "team/base", "1.1.0", disk_bytes(1 << 20, seed=8))
    publisher = cli_for(src.root, tmp_path)
    publisher("key", "generate", "release")
    publisher("key", "generate", "stranger")
    pub = tmp_path / "release.pub"
    pub.write_text(publisher("key", "export", "release").stdout)
    publisher("remote", "add", "origin", f"{registry.url}/lifecycle")
    publisher("definition", "update", "team/base", "--require-boot-check", "--boot-check", "console:READY")
    publish_bytes(src, "team/base", "1.2.0", disk_bytes(1 << 20, seed=9))  # pending its boot check
    publisher("push", "team/base", "origin", "--sign", "release")

    user = cli_for(tmp_path / "user-home", tmp_path)
    user("remote", "add", "origin", f"{registry.url}/lifecycle")
    user("trust", "add", "origin", str(pub))
    found = listing(user)
    assert found["latest"] == "1.1.0"
    pending = {v["version"]: v for v in found["versions"]}["1.2.0"]
    assert pending["check"] == "pending" and pending["revoked"] is None

    publisher("version", "update", "team/base@1.2.0", "--promote")
    pushed = publisher.json("push", "team/base@1.2.0", "origin", "--sign", "release")
    assert isinstance(pushed, dict) and pushed["versions"][0]["status"] == "updated"
    assert listing(user)["latest"] == "1.2.0"

    user("pull", "origin:team/base@1.2.0")
    user("vm", "new", "web", "--image", "team/base@1.2.0")

    # A revocation signed by a key the user does not trust is seen and ignored.
    publisher("version", "revoke", "team/base@1.0.0", "--reason", "not really", "--push", "origin",
              "--sign", "stranger")
    assert listing(user)["latest"] == "1.2.0"
    user("pull", "origin:team/base@1.0.0")

    publisher("version", "revoke", "team/base@1.2.0", "--reason", "CVE-2026-1234 in openssl", "--push", "origin",
              "--sign", "release")
    found = listing(user)
    assert found["latest"] == "1.1.0"
    by_version = {v["version"]: v for v in found["versions"]}
    assert by_version["1.2.0"]["revoked"] == "CVE-2026-1234 in openssl" and by_version["1.0.0"]["revoked"] is None

    # Pulls refuse it, in a store that does not have it and in one that does (whose copy it marks).
    other = cli_for(tmp_path / "other-home", tmp_path)
    other("remote", "add", "origin", f"{registry.url}/lifecycle")
    other("trust", "add", "origin", str(pub))
    refused = other("vm", "new", "fresh", "--image", "origin:team/base@1.2.0", ok=False)
    assert refused.returncode == 5 and "revoked" in refused.stderr
    assert not any(n.startswith("versions/") for n in names(other))
    other("pull", "origin:team/base@1.0.0")  # the untrusted statement does not stop the other version

    assert "revoked" not in user("vm", "list").stdout
    synced = user.json("remote", "sync", "origin")
    assert isinstance(synced, list)
    marked = {s["ref"]: s for s in synced}
    assert marked["team/base@1.2.0"]["revoked"]["reason"] == "CVE-2026-1234 in openssl"
    assert marked["team/base@1.2.0"]["revoked"] == user.json("vm", "show", "web")["revoked"]  # type: ignore[index]
    assert marked["team/base@1.2.0"]["vms"] == ["web"]
    assert marked["team/base@1.0.0"]["revoked"] is None
    assert "not a key trusted" in marked["team/base@1.0.0"]["ignored"][0]
    flagged = user("vm", "list").stdout
    assert "web: revoked since " in flagged and ": CVE-2026-1234 in openssl" in flagged
    # A later pull of a revoked version marks the local copy too: a third store that pulled it before.
    third = cli_for(tmp_path / "third-home", tmp_path)
    third("remote", "add", "origin", f"{registry.url}/lifecycle")
    third("trust", "add", "origin", str(pub))
    third("pull", "origin:team/base@1.1.0")
    publisher("trust", "signing-key", "origin", "release")  # the remote's default key signs it
    publisher("version", "revoke", "team/base@1.1.0", "--reason", "bad openssl too", "--push", "origin")
    again = third("pull", "origin:team/base@1.1.0", ok=False)
    assert again.returncode == 5 and "revoked: bad openssl too" in again.stderr
    assert "marked revoked here: team/base@1.1.0" in again.stderr
    marked_copy = third.json("version", "show", "team/base@1.1.0")
    assert isinstance(marked_copy, dict) and marked_copy["revocation"]["reason"] == "bad openssl too"
    shown = user.json("version", "show", "team/base@1.2.0")
    assert isinstance(shown, dict) and shown["revocation"]["reason"] == "CVE-2026-1234 in openssl"
    local = user("vm", "new", "web2", "--image", "team/base@1.2.0", ok=False)
    assert local.returncode == 5 and "revoked" in local.stderr
    shown_local = user.json("version", "show", "team/base@1.0.0")
    assert isinstance(shown_local, dict) and "revocation" not in shown_local
