"""What people read from the remote commands, through the real command line and a real registry (issue 19,
"Confusing output"): a typo is named as one, push --sign says it signed, `latest` that passes over a newer
unsigned version says so, and remote versions' candidates have the shape of version resolve's."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli import Cli
from tests.remote.helpers import disk_bytes, make_home, publish_bytes
from tests.remote.registry import Registry

pytestmark = pytest.mark.integration


def cli_for(home_root: Path, tmp_path: Path) -> Cli:
    return Cli(home_root, env={"HOME": str(tmp_path / "user"), "XDG_RUNTIME_DIR": str(tmp_path / "run"),
                               "REGISTRY_AUTH_FILE": ""})


def test_typos_and_passed_over_versions_are_named(registry: Registry, tmp_path: Path) -> None:
    src = make_home(tmp_path / "a")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(1 << 20, seed=60))
    publish_bytes(src, "team/base", "1.1.0", disk_bytes(1 << 20, seed=61))
    a = cli_for(src.root, tmp_path)
    a("remote", "add", "origin", f"{registry.url}/wording")
    a("key", "generate", "release")
    pub = tmp_path / "release.pub"
    pub.write_text(a("key", "export", "release").stdout)
    signed = a("push", "team/base@1.0.0", "origin", "--sign", "release").stdout
    assert "signed team/base@1.0.0 on origin (key sha256:" in signed
    again = a("push", "team/base@1.0.0", "origin", "--sign", "release").stdout
    assert "team/base@1.0.0 was already signed on origin with key release" in again
    unsigned = a.json("push", "team/base@1.1.0", "origin")
    assert unsigned["versions"][0]["signed_by"] == []  # type: ignore[index]

    b = cli_for(tmp_path / "b", tmp_path)
    b("remote", "add", "origin", f"{registry.url}/wording")
    b("trust", "add", "origin", str(pub))
    typo = b("pull", "origin:team/bsae", ok=False)
    assert typo.returncode == 3 and "origin has no definition team/bsae" in typo.stderr
    assert "check the spelling" in typo.stderr and "latest can pick" not in typo.stderr
    missing = b("pull", "origin:team/base@9.9.9", ok=False)
    assert missing.returncode == 3 and "origin:team/base@9.9.9 does not exist" in missing.stderr
    assert "imgtool remote versions origin:team/base\n" in missing.stderr and "\u2026" not in missing.stderr

    pulled = b("--json", "pull", "origin:team/base@latest")
    assert '"tag": "1.0.0"' in pulled.stdout
    assert "origin:team/base@latest is 1.0.0, not the newer 1.1.0: " in pulled.stderr
    assert "imgtool: warning:" in pulled.stderr

    resolved = b.json("version", "resolve", "team/base")
    listed = b.json("remote", "versions", "origin:team/base")
    local_keys = {k for c in resolved["candidates"] for k in c}  # type: ignore[index]
    remote_keys = {k for c in listed["candidates"] for k in c}  # type: ignore[index]
    assert local_keys == remote_keys == {"ref", "gallery", "definition", "version", "latest", "reason"}
    refs = [c["ref"] for c in listed["candidates"]]  # type: ignore[index]
    assert refs == ["origin:team/base@1.1.0", "origin:team/base@1.0.0"]
    assert [c["latest"] for c in listed["candidates"]] == [False, True]  # type: ignore[index]


def test_vm_new_from_a_remote_version_works_offline_from_the_local_copy(own_registry: Registry,
                                                                        tmp_path: Path) -> None:
    from tests.conftest import require_tools
    from tests.reliability.harness import fake_ssh_key

    require_tools("qemu-img")
    src = make_home(tmp_path / "a")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(1 << 20, seed=62))
    a = cli_for(src.root, tmp_path)
    a("remote", "add", "origin", f"{own_registry.url}/offline")
    a("push", "team", "origin")
    b = cli_for(tmp_path / "b", tmp_path)
    b("remote", "add", "origin", f"{own_registry.url}/offline")
    b("trust", "policy", "origin", "any")
    manifest = b.json("pull", "origin:team/base@1.0.0")["manifest"]  # type: ignore[index]
    key = tmp_path / "id.pub"
    key.write_text(fake_ssh_key() + "\n")
    own_registry.stop()

    made = b("vm", "new", "web", "--image", "origin:team/base@1.0.0", "--ssh-key", str(key))
    assert "could not be reached" in made.stderr and "using the copy of team/base@1.0.0" in made.stderr
    assert manifest[:19] in made.stderr
    assert b.json("vm", "show", "web")["image"] == "team/base@1.0.0"  # type: ignore[index]
    pinned = b("vm", "new", "pin", "--image", f"origin:team/base@1.0.0@{manifest}", "--ssh-key", str(key))
    assert pinned.returncode == 0
    other = "sha256:" + "0" * 64
    for image in ("origin:team/base@latest", f"origin:team/base@1.0.0@{other}", "origin:team/other@1.0.0"):
        refused = b("vm", "new", "x", "--image", image, "--ssh-key", str(key), ok=False)
        assert refused.returncode == 12 and "could not be reached" in refused.stderr, (image, refused.stderr)
