"""Lifting a revocation with a signed statement, across a real distribution registry.

The publisher revokes a version and pushes the statement; later it lifts the revocation (version
unrevoke --push): the remote's `latest` may pick the version again, pulls accept it, and remote sync
lifts the user's copy. A lift signed by a key the user does not trust is ignored; a revocation made
after a lift wins again. Which statement decides is the latest, a revocation winning a tie.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgtool.gallery import revocation
from imgtool.home import Home
from imgtool.trust.revocations import Revoked, latest
from tests.cli import Cli
from tests.conftest import require_tools
from tests.remote.helpers import disk_bytes, make_home, publish_bytes
from tests.remote.registry import Registry, running
from tests.test_lifecycle_remote import cli_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    require_tools("docker-registry")
    with running() as reg:
        yield reg


def remote_versions(cli: Cli) -> dict[str, Any]:
    found = cli.json("remote", "versions", "origin:team/base")
    assert isinstance(found, dict)
    return found


def local_revocation(cli: Cli, ref: str) -> object:
    shown = cli.json("version", "show", ref)
    assert isinstance(shown, dict)
    return shown.get("revocation")


def test_a_lifted_revocation_travels(registry: Registry, tmp_path: Path) -> None:
    src = make_home(tmp_path / "publisher")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(1 << 20, seed=51))
    publish_bytes(src, "team/base", "1.1.0", disk_bytes(1 << 20, seed=52))
    publisher = cli_for(src.root, tmp_path)
    publisher("key", "generate", "release")
    publisher("key", "generate", "stranger")
    (tmp_path / "release.pub").write_text(publisher("key", "export", "release").stdout)
    publisher("remote", "add", "origin", f"{registry.url}/unrevoke")
    publisher("trust", "signing-key", "origin", "release")
    publisher("push", "team", "origin")

    user = cli_for(tmp_path / "user-home", tmp_path)
    user("remote", "add", "origin", f"{registry.url}/unrevoke")
    user("trust", "add", "origin", str(tmp_path / "release.pub"))
    user("pull", "origin:team/base@1.1.0")

    # Revoked an hour ago (time is a parameter), pushed now: the lift made now is later.
    revocation.revoke(src, "team/base@1.1.0", "CVE-2026-9999", now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    publisher("version", "revoke", "team/base@1.1.0", "--push", "origin")
    assert remote_versions(user)["latest"] == "1.0.0"
    user("remote", "sync", "origin")
    assert local_revocation(user, "team/base@1.1.0") is not None
    assert user("pull", "origin:team/base@1.1.0", ok=False).returncode == 5

    # A lift signed by a key the user does not trust changes nothing there.
    done = publisher("version", "unrevoke", "team/base@1.1.0", "--reason", "false alarm", "--push", "origin",
                     "--sign", "stranger")
    assert "lifted the revocation of team/base@1.1.0" in done.stdout and "lifting attached on origin" in done.stdout
    assert local_revocation(publisher, "team/base@1.1.0") is None
    assert remote_versions(user)["latest"] == "1.0.0"
    synced = user.json("remote", "sync", "origin")
    assert isinstance(synced, list) and any("not a key trusted" in why for item in synced for why in item["ignored"])
    assert local_revocation(user, "team/base@1.1.0") is not None

    # Lifted here already: --push alone sends the statement, signed by the remote's key.
    again = publisher.json("version", "unrevoke", "team/base@1.1.0", "--reason", "false alarm", "--push", "origin")
    assert isinstance(again, dict) and again["lifted"] is None and again["pushed"][0]["remote"] == "origin"
    listed = remote_versions(user)
    assert listed["latest"] == "1.1.0"
    assert {v["version"]: v for v in listed["versions"]}["1.1.0"]["revoked"] is None
    synced = user.json("remote", "sync", "origin")
    assert isinstance(synced, list) and [item["lifted"] for item in synced] == ["false alarm"]
    assert local_revocation(user, "team/base@1.1.0") is None
    assert "revocation lifted" not in user("remote", "sync", "origin").stdout  # nothing left to lift
    assert user.json("pull", "origin:team/base@1.1.0")["status"] == "present"  # type: ignore[index]

    # Revoked again after the lift: the newest statement decides (a tie goes to the revocation).
    publisher("version", "revoke", "team/base@1.1.0", "--reason", "really this time", "--push", "origin")
    assert remote_versions(user)["latest"] == "1.0.0"
    user("remote", "sync", "origin")
    assert local_revocation(user, "team/base@1.1.0") is not None

    refused = publisher("version", "unrevoke", "team/base@1.0.0", "--reason", "x", ok=False)
    assert refused.returncode == 5 and "is not revoked" in refused.stderr
    still = publisher("version", "revoke", "team/base@1.1.0", "--push", "origin")  # statements already there
    assert still.returncode == 0
    assert Home.at(src.root).store.get_name("versions", "team", "base", "1.1.0") is not None


def test_which_statement_decides() -> None:
    key = "sha256:" + "a" * 64
    revoke = Revoked("bad", "2026-01-01T00:00:00Z", key)
    lift_same_second = Revoked("fine", "2026-01-01T00:00:00Z", key, lifted=True)
    lift_later = Revoked("fine", "2026-01-02T00:00:00Z", key, lifted=True)
    revoke_later = Revoked("bad again", "2026-01-03T00:00:00Z", key)
    assert latest([]) is None
    assert latest([lift_same_second, revoke]) is revoke and latest([revoke, lift_same_second]) is revoke
    assert latest([revoke, lift_later]) is lift_later and latest([lift_later, revoke]) is lift_later
    assert latest([lift_later, revoke_later, revoke]) is revoke_later
