"""pull REMOTE:G/D --all and pull REMOTE:G against a real registry and an OCI layout folder: every version
comes except the revoked ones and those the trust policy refuses (skipped, with the reason); a rerun
resumes (what is here is "present"); typos are errors, not an empty result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.cli import Cli
from tests.remote.helpers import disk_bytes, make_home, publish_bytes
from tests.remote.registry import Registry
from tests.remote.test_cli_remote import cli_for

pytestmark = pytest.mark.integration


def statuses(answer: object) -> dict[str, Any]:
    assert isinstance(answer, dict)
    return {v["ref"]: (v["status"], v["detail"]) for v in answer["versions"]}


def test_a_whole_definition_and_gallery(registry: Registry, tmp_path: Path) -> None:
    src = make_home(tmp_path / "publisher")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(1 << 20, seed=60))
    publish_bytes(src, "team/base", "1.1.0", disk_bytes(1 << 20, seed=61), exclude_from_latest=True)
    publish_bytes(src, "team/base", "1.2.0", disk_bytes(1 << 20, seed=62))
    publisher = cli_for(src.root, tmp_path)
    publisher("definition", "create", "team/web", "--publisher", "p", "--offer", "o", "--sku", "s",
              "--os-type", "linux", "--os-state", "generalized")
    publish_bytes(src, "team/web", "1.0.0", disk_bytes(1 << 20, seed=63))
    publisher("key", "generate", "release")
    publisher("key", "generate", "stranger")
    (tmp_path / "release.pub").write_text(publisher("key", "export", "release").stdout)
    publisher("remote", "add", "origin", f"{registry.url}/all")
    publisher("trust", "signing-key", "origin", "release")
    publisher("push", "team", "origin")
    publish_bytes(src, "team/web", "2.0.0", disk_bytes(1 << 20, seed=64))
    publisher("push", "team/web@2.0.0", "origin", "--sign", "stranger")  # not a key the user trusts
    publisher("version", "revoke", "team/base@1.2.0", "--reason", "broken", "--push", "origin")

    user = cli_for(tmp_path / "user", tmp_path)
    user("remote", "add", "origin", f"{registry.url}/all")
    user("trust", "add", "origin", str(tmp_path / "release.pub"))
    user("pull", "origin:team/base@1.0.0")  # one already here: the --all below resumes from it
    got = statuses(user.json("pull", "origin:team/base", "--all"))
    assert got["team/base@1.0.0"][0] == "present" and got["team/base@1.1.0"][0] == "pulled"
    assert got["team/base@1.2.0"] == ("skipped", "revoked: broken")
    versions = user.json("version", "list", "team/base")
    assert isinstance(versions, list) and [v["version"] for v in versions] == ["1.0.0", "1.1.0"]

    got = statuses(user.json("pull", "origin:team"))  # the whole gallery: base again, and web
    assert got["team/base@1.1.0"][0] == "present" and got["team/web@1.0.0"][0] == "pulled"
    assert got["team/web@2.0.0"][0] == "skipped" and "2.0.0" not in str(user.json("version", "list", "team/web"))
    text = user("pull", "origin:team").stdout
    assert "team/web@2.0.0: skipped" in text and "team/base@1.2.0: skipped (revoked: broken)" in text

    for argv, code, words in ((["pull", "origin:team/bsae", "--all"], 3, "team/bsae"),
                              (["pull", "origin:nogallery"], 3, "no definitions of gallery nogallery"),
                              (["pull", "origin:team/base@1.0.0", "--all"], 2, "names a version"),
                              (["pull", "origin:team", "--as", "x/y"], 2, "--as")):
        done = user(*argv, ok=False)
        assert done.returncode == code and words in done.stderr, done.stderr


def test_a_gallery_from_a_layout_folder(tmp_path: Path) -> None:
    src = make_home(tmp_path / "publisher")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(1 << 20, seed=65))
    publish_bytes(src, "team/base", "1.1.0", disk_bytes(1 << 20, seed=66))
    publisher = Cli(src.root)
    folder = tmp_path / "usb"
    folder.mkdir()
    publisher("remote", "add", "usb", f"oci-layout:{folder}")
    publisher("push", "team", "usb")
    user = Cli(tmp_path / "user")
    user("remote", "add", "usb", f"oci-layout:{folder}")
    user("trust", "policy", "usb", "any")
    got = statuses(user.json("pull", "usb:team"))
    assert got == {"team/base@1.0.0": ("pulled", got["team/base@1.0.0"][1]),
                   "team/base@1.1.0": ("pulled", got["team/base@1.1.0"][1])}
    assert statuses(user.json("pull", "usb:team"))["team/base@1.1.0"][0] == "present"
