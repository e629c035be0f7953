"""The key and trust commands through the real command line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.cli import Cli


def test_key_and_trust_commands(tmp_path: Path) -> None:
    publisher = Cli(tmp_path / "publisher")
    user = Cli(tmp_path / "user")
    made = publisher.json("key", "generate", "release", "--expires", "2099-01-01")
    assert isinstance(made, dict) and made["key_id"].startswith("sha256:")
    assert stat.S_IMODE(os.stat(tmp_path / "publisher" / "keys" / "release.key").st_mode) == 0o600
    listed = publisher("key", "list").stdout
    assert "release" in listed and made["key_id"][:23] in listed
    exported = publisher("key", "export", "release").stdout
    assert "PRIVATE" not in exported and f"imgtool-key-id: {made['key_id']}" in exported
    private = (tmp_path / "publisher" / "keys" / "release.key").read_text()
    for args in (("key", "list"), ("key", "export", "release"), ("--json", "key", "list")):
        assert private.splitlines()[1] not in publisher(*args).stdout  # never printed
    pub = tmp_path / "release.pub"
    pub.write_text(exported)

    user("remote", "add", "origin", f"oci-layout:{tmp_path / 'layout'}")
    for argv in (["add", "orign", str(pub)], ["policy", "orign", "any"], ["signing-key", "orign", "release"]):
        typo = user("trust", *argv, ok=False)  # a misspelled remote is never trusted silently
        assert typo.returncode == 3 and "remote 'orign' does not exist" in typo.stderr, typo.stderr
        assert "did you mean 'origin'?" in typo.stderr
    assert user.json("trust", "list") == []
    refused = user("trust", "policy", "origin", "signed", ok=False)
    assert refused.returncode == 2 and "imgtool trust add origin" in refused.stderr
    assert "trusting key" in user("trust", "add", "origin", str(pub), "--gallery", "team").stdout
    again = user("trust", "add", "origin", str(pub), "--gallery", "team", ok=False)
    assert again.returncode == 4
    rows = user.json("trust", "list")
    assert rows == [{"remote": "origin", "policy": "signed", "signing_key": None, "keys": [
        {"remote": "origin", "key_id": made["key_id"], "name": "release", "gallery": "team",
         "expires": "2099-01-01T00:00:00Z", "added": rows[0]["keys"][0]["added"]}]}]  # type: ignore[index]
    assert "signed" in user("trust", "list").stdout
    refused = user("trust", "policy", "origin", "any", ok=False)
    assert refused.returncode == 5 and "trust remove origin" in refused.stderr
    assert "no longer trusting" in user("trust", "remove", "origin").stdout
    assert user("trust", "policy", "origin", "any").stdout.strip() == "origin: policy any"

    bad = tmp_path / "bad.pub"
    bad.write_text("hello\n" + exported)
    failed = user("trust", "add", "origin", str(bad), ok=False)
    assert failed.returncode == 2 and "unexpected line" in failed.stderr
    missing = user("trust", "add", "origin", str(tmp_path / "nope.pub"), ok=False)
    assert missing.returncode == 3 and "key export" in missing.stderr
